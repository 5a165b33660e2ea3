//! Protocol attributes as FUSE attributes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use cairn_proto::api::EntryKind;
use cairn_proto::wire::Attr;
use fuser::{FileAttr, FileType, INodeNo};

/// The block size reported to programs (`st_blksize`): large, so that `cp`
/// and friends move data in large requests.
pub const BLOCK_SIZE: u32 = 1 << 20;

/// Who the files appear to belong to (Cairn stores no owners).
#[derive(Clone, Copy, Debug)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
}

pub fn time(ns: i64) -> SystemTime {
    if ns >= 0 {
        UNIX_EPOCH + Duration::from_nanos(ns as u64)
    } else {
        UNIX_EPOCH - Duration::from_nanos(ns.unsigned_abs())
    }
}

pub fn file_type(kind: EntryKind) -> FileType {
    match kind {
        EntryKind::Directory => FileType::Directory,
        EntryKind::File => FileType::RegularFile,
        EntryKind::Symlink => FileType::Symlink,
    }
}

pub fn to_fuse(ino: INodeNo, a: &Attr, owner: Owner) -> FileAttr {
    FileAttr {
        ino,
        size: a.size,
        blocks: a.size.div_ceil(512),
        atime: time(a.mtime_ns),
        mtime: time(a.mtime_ns),
        ctime: time(a.ctime_ns),
        crtime: time(a.ctime_ns),
        kind: file_type(a.kind),
        perm: (a.mode & 0o7777) as u16,
        // Directories: at least 2 (itself and its name), as tools expect.
        nlink: match a.kind {
            EntryKind::Directory => a.nlink.max(2),
            EntryKind::File | EntryKind::Symlink => a.nlink,
        },
        uid: owner.uid,
        gid: owner.gid,
        rdev: 0,
        blksize: BLOCK_SIZE,
        flags: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_map_and_times_round() {
        let a = Attr {
            name: "f".into(),
            kind: EntryKind::File,
            inode: 9,
            size: 1025,
            mode: 0o100644,
            nlink: 1,
            mtime_ns: 1_500_000_000,
            ctime_ns: -1,
            etag: None,
        };
        let f = to_fuse(INodeNo(9), &a, Owner { uid: 5, gid: 6 });
        assert_eq!(
            (f.size, f.blocks, f.perm, f.uid, f.gid),
            (1025, 3, 0o644, 5, 6)
        );
        assert_eq!(f.kind, FileType::RegularFile);
        assert_eq!(
            f.mtime.duration_since(UNIX_EPOCH).unwrap(),
            Duration::from_millis(1500)
        );
        assert!(f.ctime < UNIX_EPOCH);
    }
}
