//! Names and attributes: lookup, getattr, setattr, mkdir, symlink,
//! readlink, unlink, rmdir, rename, directory listings.

use std::time::{SystemTime, UNIX_EPOCH};

use cairn_client::OpenOptions;
use cairn_proto::api::EntryKind;
use cairn_proto::wire::{Attr, Disposition, access};
use fuser::{Errno, FileAttr, FileHandle, FileType, Generation, INodeNo, RenameFlags, TimeOrNow};

use super::Shared;
use crate::attr::{file_type, to_fuse};
use crate::errno::errno;
use crate::inodes::ROOT;

/// One entry of a listing, as readdir returns it.
pub struct DirEntry {
    pub ino: u64,
    pub kind: FileType,
    pub name: String,
    /// What the listing said of it (none for `.` and `..`), for readdirplus.
    pub attr: Option<Attr>,
}

/// What a setattr asks to change.
pub struct AttrChange {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub mtime: Option<TimeOrNow>,
}

/// Attributes for the kernel, remembering the name it will know them by.
pub fn entry(s: &Shared, parent: u64, name: &str, a: &Attr) -> Result<FileAttr, Errno> {
    let mut t = s.inodes.lock().map_err(|_| Errno::EIO)?;
    let ino = t.fuse_ino(a.inode);
    t.remember(ino.0, parent, name, a.kind);
    Ok(to_fuse(ino, a, s.owner))
}

fn attr_of(s: &Shared, a: &Attr) -> Result<FileAttr, Errno> {
    let t = s.inodes.lock().map_err(|_| Errno::EIO)?;
    Ok(to_fuse(t.fuse_ino(a.inode), a, s.owner))
}

pub async fn lookup(s: &Shared, parent: u64, name: &str) -> Result<FileAttr, Errno> {
    let path = s.child_path(parent, name)?;
    let a = s.client.metadata(&path).await.map_err(|e| errno(&e))?;
    let a = as_this_mount_sees(s, a).await?;
    let fa = entry(s, parent, name, &a)?;
    s.dir_attrs.put(fa.ino.0, &a);
    Ok(fa)
}

/// `a` (the cluster's view) or, when this mount has the file open, the
/// view of its handles: their unflushed writes count. The kernel takes a
/// lookup's size as the file's, so the cluster's could shrink a file a
/// program is still writing.
pub async fn as_this_mount_sees(s: &Shared, a: Attr) -> Result<Attr, Errno> {
    if a.kind != EntryKind::File {
        return Ok(a);
    }
    let ino = s.inodes.lock().map_err(|_| Errno::EIO)?.fuse_ino(a.inode).0;
    let Some(f) = s.any_open(ino) else {
        return Ok(a);
    };
    let mut seen = handle_view(s, ino, &f).await?;
    seen.name = a.name;
    Ok(seen)
}

/// What open handle `f` of `ino` sees: the open's answer while it is
/// fresh and the only handle changed nothing, else the node's view after
/// every descriptor's writes are in.
async fn handle_view(
    s: &Shared,
    ino: u64,
    f: &std::sync::Arc<super::OpenFile>,
) -> Result<Attr, Errno> {
    if let Some(a) = s.sole_open(ino).and_then(|only| only.opened_attr(s.ttl)) {
        return Ok(a);
    }
    s.settle(ino, Some(f)).await?;
    f.file.metadata().await.map_err(|e| errno(&e))
}

pub async fn getattr(s: &Shared, ino: u64, fh: Option<FileHandle>) -> Result<FileAttr, Errno> {
    // An open handle sees its own unflushed writes: the size the kernel
    // must not shrink below.
    let open = match fh {
        Some(fh) => s.open_file(fh).ok(),
        None => None,
    }
    .or_else(|| s.any_open(ino));
    if let Some(f) = open {
        return attr_of(s, &handle_view(s, ino, &f).await?);
    }
    if let Some(a) = s.dir_attrs.get(ino) {
        return attr_of(s, &a);
    }
    let path = s.path(ino)?;
    let a = s.client.metadata(&path).await.map_err(|e| errno(&e))?;
    s.dir_attrs.put(ino, &a);
    attr_of(s, &a)
}

fn ns(t: TimeOrNow) -> i64 {
    let t = match t {
        TimeOrNow::SpecificTime(t) => t,
        TimeOrNow::Now => SystemTime::now(),
    };
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_nanos()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_nanos()).unwrap_or(i64::MAX),
    }
}

pub async fn setattr(
    s: &Shared,
    ino: u64,
    fh: Option<FileHandle>,
    c: AttrChange,
) -> Result<FileAttr, Errno> {
    // Cairn keeps no owners: only the mapped owner can be "set".
    if c.uid.is_some_and(|u| u != s.owner.uid) || c.gid.is_some_and(|g| g != s.owner.gid) {
        return Err(Errno::EPERM);
    }
    let kind = s.inodes.lock().map_err(|_| Errno::EIO)?.kind(ino);
    let mut mode = c.mode.map(|m| m & 0o7777);
    let mtime = c.mtime.map(ns);
    if kind == Some(EntryKind::Symlink) {
        // A link's own mode means nothing on Linux (lchmod does not exist).
        mode = None;
    }
    if c.size.is_none() && mode.is_none() && mtime.is_none() {
        return getattr(s, ino, None).await;
    }
    // Directories and links have no handles: they change by path.
    if matches!(kind, Some(EntryKind::Directory | EntryKind::Symlink)) {
        s.dir_attrs.forget(ino);
        if c.size.is_some() {
            return Err(match kind {
                Some(EntryKind::Directory) => Errno::EISDIR,
                _ => Errno::EINVAL,
            });
        }
        let path = s.path(ino)?;
        let a = s
            .client
            .set_attr(&path, mode, mtime)
            .await
            .map_err(|e| errno(&e))?;
        return attr_of(s, &a);
    }
    let held = match fh {
        Some(fh) => s.open_file(fh).ok().filter(|f| f.writable),
        None => None,
    }
    .or_else(|| s.writable_open(ino));
    let (file, temporary) = match held {
        Some(f) => (f, false),
        None => {
            let path = s.path(ino)?;
            let opts = OpenOptions {
                access: access::READ | access::WRITE,
                ..OpenOptions::read().with(Disposition::Open)
            };
            let file = s.client.open(&path, opts).await.map_err(|e| errno(&e))?;
            (
                std::sync::Arc::new(super::OpenFile::new(file, ino, true, false)),
                true,
            )
        }
    };
    // Queued writes first: a truncation lands after them, as the program
    // made it.
    file.changed();
    s.settle(ino, Some(&file)).await?;
    let result = async {
        let mut a = None;
        if let Some(size) = c.size {
            a = Some(file.file.set_len(size).await?);
        }
        if mode.is_some() || mtime.is_some() {
            a = Some(file.file.set_attr(mode, mtime).await?);
        }
        match a {
            Some(a) => Ok(a),
            None => file.file.metadata().await,
        }
    }
    .await;
    if temporary && let Err(e) = file.file.close_shared().await {
        tracing::warn!(error = %e, "closing a setattr handle failed");
    }
    let a = result.map_err(|e| errno(&e))?;
    attr_of(s, &a)
}

pub async fn mkdir(s: &Shared, parent: u64, name: &str, mode: u32) -> Result<FileAttr, Errno> {
    let path = s.child_path(parent, name)?;
    s.dir_attrs.forget(parent);
    // The protocol's mkdir also makes missing parents and accepts an
    // existing directory; POSIX wants EEXIST.
    match s.client.metadata(&path).await {
        Ok(_) => return Err(Errno::EEXIST),
        Err(e) if errno(&e) == Errno::ENOENT => {}
        Err(e) => return Err(errno(&e)),
    }
    s.client
        .create_dir_mode(&path, mode & 0o7777)
        .await
        .map_err(|e| errno(&e))?;
    let a = s.client.metadata(&path).await.map_err(|e| errno(&e))?;
    entry(s, parent, name, &a)
}

/// Makes a symbolic link; the kernel resolves it, Cairn only stores it.
pub async fn symlink(s: &Shared, parent: u64, name: &str, target: &str) -> Result<FileAttr, Errno> {
    let path = s.child_path(parent, name)?;
    s.dir_attrs.forget(parent);
    let a = s
        .client
        .symlink(&path, target)
        .await
        .map_err(|e| errno(&e))?;
    entry(s, parent, name, &a)
}

pub async fn readlink(s: &Shared, ino: u64) -> Result<String, Errno> {
    let path = s.path(ino)?;
    s.client.read_link(&path).await.map_err(|e| errno(&e))
}

pub async fn remove(s: &Shared, parent: u64, name: &str, dir: bool) -> Result<(), Errno> {
    let path = s.child_path(parent, name)?;
    s.dir_attrs.forget(parent);
    let a = s.client.metadata(&path).await.map_err(|e| errno(&e))?;
    match (a.kind, dir) {
        (EntryKind::Directory, false) => return Err(Errno::EISDIR),
        (EntryKind::File | EntryKind::Symlink, true) => return Err(Errno::ENOTDIR),
        _ => {}
    }
    s.client.remove(&path).await.map_err(|e| errno(&e))?;
    if let Ok(mut t) = s.inodes.lock() {
        t.unlinked(parent, name);
    }
    Ok(())
}

pub async fn rename(
    s: &Shared,
    (parent, name): (u64, &str),
    (new_parent, new_name): (u64, &str),
    flags: RenameFlags,
) -> Result<(), Errno> {
    if flags.contains(RenameFlags::RENAME_EXCHANGE) || flags.contains(RenameFlags::RENAME_WHITEOUT)
    {
        return Err(Errno::EINVAL);
    }
    let from = s.child_path(parent, name)?;
    let to = s.child_path(new_parent, new_name)?;
    if from == to {
        return Ok(());
    }
    let replace = !flags.contains(RenameFlags::RENAME_NOREPLACE);
    s.dir_attrs.forget(parent);
    s.dir_attrs.forget(new_parent);
    let source = s.client.metadata(&from).await.map_err(|e| errno(&e))?;
    if replace {
        check_replace(s, &source, &to).await?;
    }
    s.client
        .rename(&from, &to, replace)
        .await
        .map_err(|e| errno(&e))?;
    if let Ok(mut t) = s.inodes.lock() {
        t.renamed(parent, name, new_parent, new_name);
    }
    Ok(())
}

/// POSIX's rules for what a rename may replace.
async fn check_replace(s: &Shared, source: &Attr, to: &str) -> Result<(), Errno> {
    let target = match s.client.metadata(to).await {
        Ok(t) => t,
        Err(e) if errno(&e) == Errno::ENOENT => return Ok(()),
        Err(e) => return Err(errno(&e)),
    };
    match (source.kind, target.kind) {
        (EntryKind::File | EntryKind::Symlink, EntryKind::Directory) => Err(Errno::EISDIR),
        (EntryKind::Directory, EntryKind::File | EntryKind::Symlink) => Err(Errno::ENOTDIR),
        (EntryKind::Directory, EntryKind::Directory) => {
            let inside = s.client.read_dir(to).await.map_err(|e| errno(&e))?;
            if inside.is_empty() {
                Ok(())
            } else {
                Err(Errno::ENOTEMPTY)
            }
        }
        (EntryKind::File | EntryKind::Symlink, EntryKind::File | EntryKind::Symlink) => Ok(()),
    }
}

/// One page of a readdirplus: the names with their attributes, from the
/// listing taken at opendir (files this mount has open: as its handles
/// see them). Each entry given counts as a lookup of it, as the kernel
/// counts it; `.` and `..` do not (the kernel skips their attributes).
pub async fn readdirplus(
    s: &Shared,
    dir: u64,
    listing: &[DirEntry],
    offset: usize,
    reply: &mut fuser::ReplyDirectoryPlus,
) -> Result<(), Errno> {
    for (i, e) in listing.iter().enumerate().skip(offset) {
        let next = (i + 1) as u64;
        let Some(a) = &e.attr else {
            let dot = dot_attr(e.ino, s.owner);
            if reply.add(INodeNo(e.ino), next, &e.name, &s.ttl, &dot, Generation(0)) {
                break;
            }
            continue;
        };
        let a = as_this_mount_sees(s, a.clone()).await?;
        let fa = to_fuse(INodeNo(e.ino), &a, s.owner);
        if reply.add(INodeNo(e.ino), next, &e.name, &s.ttl, &fa, Generation(0)) {
            break;
        }
        s.inodes
            .lock()
            .map_err(|_| Errno::EIO)?
            .remember(e.ino, dir, &e.name, a.kind);
    }
    Ok(())
}

/// Attributes for `.` and `..` in a readdirplus (the kernel ignores them).
fn dot_attr(ino: u64, owner: crate::attr::Owner) -> FileAttr {
    let a = Attr {
        name: String::new(),
        kind: EntryKind::Directory,
        inode: ino,
        size: 0,
        mode: 0o755,
        nlink: 2,
        mtime_ns: 0,
        ctime_ns: 0,
        etag: None,
    };
    to_fuse(INodeNo(ino), &a, owner)
}

/// Lists a directory once, at opendir; readdir serves pages of it.
pub async fn opendir(s: &Shared, ino: u64) -> Result<u64, Errno> {
    let path = s.path(ino)?;
    let listed = s.client.read_dir(&path).await.map_err(|e| errno(&e))?;
    // ".." only needs some inode number: the kernel resolves it itself.
    let parent = ROOT;
    let t = s.inodes.lock().map_err(|_| Errno::EIO)?;
    let mut entries = Vec::with_capacity(listed.len() + 2);
    entries.push(DirEntry {
        ino,
        kind: FileType::Directory,
        name: ".".into(),
        attr: None,
    });
    entries.push(DirEntry {
        ino: parent,
        kind: FileType::Directory,
        name: "..".into(),
        attr: None,
    });
    entries.extend(listed.into_iter().map(|a| DirEntry {
        ino: t.fuse_ino(a.inode).0,
        kind: file_type(a.kind),
        name: a.name.clone(),
        attr: Some(a),
    }));
    drop(t);
    let fh = s.fh();
    s.dirs
        .lock()
        .map_err(|_| Errno::EIO)?
        .insert(fh, std::sync::Arc::new(entries));
    Ok(fh)
}
