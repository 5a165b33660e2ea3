//! Open files: open, create, read, write, flush, fsync, release.
//!
//! A FUSE file handle is a durable protocol handle. Writes are answered
//! once queued and go to the cluster behind the program's back (see
//! `writeback`; the client keeps them until a flush covers them, so a
//! failover loses none); `flush` (every close(2)) and `fsync` return once
//! they are durable on the cluster.

use std::sync::Arc;

use bytes::Bytes;
use cairn_client::OpenOptions;
use cairn_proto::wire::{Disposition, access, lease};
use fuser::{Errno, FileAttr, FileHandle, FopenFlags};

use super::{OpenFile, Shared};
use crate::errno::errno;

/// What an open(2) asks for, as protocol options.
fn options(flags: i32, disposition: Disposition) -> OpenOptions {
    let access = match flags & libc::O_ACCMODE {
        libc::O_WRONLY => access::WRITE,
        libc::O_RDWR => access::READ | access::WRITE,
        _ => access::READ,
    };
    OpenOptions {
        disposition,
        access,
        // POSIX has no share modes: let every other open do anything.
        share_access: access::READ | access::WRITE | access::DELETE,
        append: flags & libc::O_APPEND != 0,
        // A read lease keeps the page cache across opens until another
        // client writes.
        lease: lease::READ,
        ..OpenOptions::read()
    }
}

/// Registers an opened file; returns its FUSE handle and open flags.
/// Keeps `file` as an open file of `ino`; `shared` if another handle of
/// `ino` was open on the mount when the open was asked.
fn register(
    s: &Shared,
    file: cairn_client::File,
    ino: u64,
    flags: i32,
    shared: bool,
) -> Result<(u64, FopenFlags), Errno> {
    let keep = if file.lease() & lease::READ != 0 {
        FopenFlags::FOPEN_KEEP_CACHE
    } else {
        FopenFlags::empty()
    };
    let fh = s.fh();
    let writable = flags & libc::O_ACCMODE != libc::O_RDONLY;
    let append = flags & libc::O_APPEND != 0;
    let open = Arc::new(OpenFile::new(file, ino, writable, append));
    let mut files = s.files.lock().map_err(|_| Errno::EIO)?;
    if shared || files.values().any(|f| f.ino == ino) {
        // Another handle here may hold (or have held, until its close)
        // writes the cluster did not show this open: attributes come from
        // the cluster, after them.
        open.changed();
    }
    files.insert(fh, open);
    Ok((fh, keep))
}

pub async fn open(s: &Shared, ino: u64, flags: i32) -> Result<(u64, FopenFlags), Errno> {
    let path = s.path(ino)?;
    let disposition = if flags & libc::O_TRUNC != 0 && flags & libc::O_ACCMODE != libc::O_RDONLY {
        Disposition::Overwrite
    } else {
        Disposition::Open
    };
    let shared = s.any_open(ino).is_some();
    let file = s
        .client
        .open(&path, options(flags, disposition))
        .await
        .map_err(|e| errno(&e))?;
    // Close-to-open: the kernel may still hold this file's attributes
    // from before another client's last close (for up to the TTL), and
    // reads stop at the size it holds. Dropping them makes its next look
    // ask, and this handle answers with what the open just returned.
    // Attributes only: no page or inode lock is taken, so this cannot
    // wait on the open the kernel is making.
    if let Some(n) = s.notifier.get()
        && let Err(e) = n.inval_inode(fuser::INodeNo(ino), -1, 0)
    {
        tracing::debug!(ino, error = %e, "attribute invalidation at open failed");
    }
    register(s, file, ino, flags, shared)
}

pub async fn create(
    s: &Shared,
    parent: u64,
    name: &str,
    mode: u32,
    flags: i32,
) -> Result<(FileAttr, u64, FopenFlags), Errno> {
    let path = s.child_path(parent, name)?;
    let disposition = if flags & libc::O_EXCL != 0 {
        Disposition::CreateNew
    } else if flags & libc::O_TRUNC != 0 {
        Disposition::Create
    } else {
        Disposition::OpenOrCreate
    };
    let opts = OpenOptions {
        mode: mode & 0o7777,
        ..options(flags, disposition)
    };
    let file = s.client.open(&path, opts).await.map_err(|e| errno(&e))?;
    if file.created() {
        s.dir_attrs.created_in(parent, file.opened_attr());
    }
    let attr = super::entries::entry(s, parent, name, file.opened_attr())?;
    let (fh, flags) = register(s, file, attr.ino.0, flags, false)?;
    Ok((attr, fh, flags))
}

/// mknod of a regular file: create it, empty.
pub async fn mknod(s: &Shared, parent: u64, name: &str, mode: u32) -> Result<FileAttr, Errno> {
    let path = s.child_path(parent, name)?;
    let opts = OpenOptions {
        mode: mode & 0o7777,
        ..options(libc::O_WRONLY, Disposition::CreateNew)
    };
    let file = s.client.open(&path, opts).await.map_err(|e| errno(&e))?;
    if file.created() {
        s.dir_attrs.created_in(parent, file.opened_attr());
    }
    let attr = super::entries::entry(s, parent, name, file.opened_attr())?;
    file.close().await.map_err(|e| errno(&e))?;
    Ok(attr)
}

pub async fn read(s: &Shared, fh: FileHandle, offset: u64, size: u32) -> Result<Bytes, Errno> {
    let f = s.open_file(fh)?;
    s.settle(f.ino, Some(&f)).await?;
    let data = f
        .file
        .read_at(offset, size as usize)
        .await
        .map_err(|e| errno(&e))?;
    s.metrics.add_read(data.len());
    Ok(data)
}

pub async fn write(s: &Shared, fh: FileHandle, offset: u64, data: Bytes) -> Result<u32, Errno> {
    let f = s.open_file(fh)?;
    let n = u32::try_from(data.len()).map_err(|_| Errno::EINVAL)?;
    f.changed();
    s.settle_others(f.ino, Some(&f)).await?;
    if f.append {
        f.file.write_at(offset, data).await.map_err(|e| errno(&e))?;
    } else {
        crate::writeback::queue(&f, offset, data).await?;
    }
    s.metrics.add_written(n as usize);
    Ok(n)
}

/// Makes the handle's writes durable; at a close(2) (`owner` given) also
/// releases that lock owner's locks, as POSIX wants.
pub async fn flush(s: &Shared, fh: FileHandle, owner: Option<u64>) -> Result<(), Errno> {
    let f = s.open_file(fh)?;
    let queued = f.writes.drain().await;
    let synced = f.file.sync().await.map_err(|e| errno(&e));
    // The locks go whatever the flush's outcome, as close(2) drops them.
    if let Some(owner) = owner {
        crate::locks::release_owner(s, &f, owner).await;
    }
    synced?;
    queued
}

pub async fn release(s: &Shared, fh: FileHandle) -> Result<(), Errno> {
    let f = s
        .files
        .lock()
        .map_err(|_| Errno::EIO)?
        .remove(&fh.0)
        .ok_or(Errno::EBADF)?;
    // Its handle's close drops the locks set through it (a BSD lock goes
    // here, at the open file's last close): what the file's other
    // descriptors wrote goes first, for the next holder to read.
    let held = s.lock_routes.forget(fh.0, &f);
    let queued = f.writes.drain().await;
    if held {
        crate::locks::flush_file(s, f.ino).await;
    }
    f.file.close_shared().await.map_err(|e| errno(&e))?;
    queued
}
