//! The file system: FUSE calls in, native-protocol requests out.
//!
//! Each method copies what it needs from the kernel's request, moves the
//! reply into a task on the mount's runtime and returns, so slow calls
//! (a failover in progress) never hold up others.

mod entries;
mod files;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use cairn_client::{Client, File};
use cairn_proto::wire::HandleId;
use fuser::{
    Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, IoctlFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyIoctl, ReplyLock, ReplyOpen,
    ReplyStatfs, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

use crate::attr::Owner;
use crate::dirattrs::DirAttrs;
use crate::inodes::Inodes;
use crate::metrics::Metrics;
use crate::writeback::WriteBehind;

/// The unit of statfs sizes (`f_frsize`).
const STATFS_FRAGMENT: u64 = 4096;

/// How long the kernel may cache attributes and names.
const ATTR_TTL: Duration = Duration::from_secs(1);

/// What the mount keeps for one open file.
pub(crate) struct OpenFile {
    pub file: File,
    pub ino: u64,
    /// Open for writing (setattr needs such a handle).
    pub writable: bool,
    /// Opened with O_APPEND: writes go out one at a time, never queued.
    pub append: bool,
    /// Writes answered but still on their way to the cluster.
    pub writes: WriteBehind,
    /// When the open answered, while nothing was changed through this
    /// handle since: its attributes are then still the open's answer.
    opened: Mutex<Option<Instant>>,
}

impl OpenFile {
    pub fn new(file: File, ino: u64, writable: bool, append: bool) -> Self {
        Self {
            file,
            ino,
            writable,
            append,
            writes: WriteBehind::default(),
            opened: Mutex::new(Some(Instant::now())),
        }
    }

    /// The open's attributes, if this handle changed nothing since and
    /// they are younger than `ttl` (the kernel caches attributes that long
    /// anyway). Spares the cluster the getattr that follows every
    /// `open(O_CREAT|O_TRUNC)`: the kernel drops its cached attributes then.
    pub fn opened_attr(&self, ttl: Duration) -> Option<cairn_proto::wire::Attr> {
        let opened = (*self.opened.lock().ok()?)?;
        (opened.elapsed() < ttl).then(|| self.file.opened_attr().clone())
    }

    /// Something (a write, a truncate, a mode or time) changed the file
    /// through this handle: its attributes must come from the cluster.
    pub fn changed(&self) {
        if let Ok(mut o) = self.opened.lock() {
            *o = None;
        }
    }
}

/// State shared by every task of the mount.
pub(crate) struct Shared {
    pub client: Client,
    pub inodes: Mutex<Inodes>,
    pub files: Mutex<HashMap<u64, Arc<OpenFile>>>,
    pub dirs: Mutex<HashMap<u64, Arc<Vec<entries::DirEntry>>>>,
    /// Directories' attributes, for getattr within the TTL.
    pub dir_attrs: DirAttrs,
    pub next_fh: AtomicU64,
    pub owner: Owner,
    /// How long the kernel may cache attributes and names.
    pub ttl: Duration,
    pub metrics: Arc<Metrics>,
    pub notifier: OnceLock<fuser::Notifier>,
    /// Which open file each lock owner's locks on a file go through.
    pub lock_routes: crate::locks::Routes,
}

impl Shared {
    pub fn fh(&self) -> u64 {
        self.next_fh.fetch_add(1, Ordering::Relaxed)
    }

    pub fn open_file(&self, fh: FileHandle) -> Result<Arc<OpenFile>, Errno> {
        self.files
            .lock()
            .map_err(|_| Errno::EIO)?
            .get(&fh.0)
            .cloned()
            .ok_or(Errno::EBADF)
    }

    /// True while `f` is one of the mount's open files (not released).
    pub fn is_open(&self, f: &Arc<OpenFile>) -> bool {
        self.files
            .lock()
            .is_ok_and(|files| files.values().any(|o| Arc::ptr_eq(o, f)))
    }

    /// Every open handle of `ino`.
    pub fn open_of(&self, ino: u64) -> Vec<Arc<OpenFile>> {
        let Ok(files) = self.files.lock() else {
            return Vec::new();
        };
        files.values().filter(|f| f.ino == ino).cloned().collect()
    }

    /// Some open handle of `ino` (its view includes unflushed writes).
    pub fn any_open(&self, ino: u64) -> Option<Arc<OpenFile>> {
        let files = self.files.lock().ok()?;
        files.values().find(|f| f.ino == ino).cloned()
    }

    /// The only open handle of `ino` on this mount, if there is one.
    pub fn sole_open(&self, ino: u64) -> Option<Arc<OpenFile>> {
        let files = self.files.lock().ok()?;
        let mut of_ino = files.values().filter(|f| f.ino == ino);
        match (of_ino.next(), of_ino.next()) {
            (Some(f), None) => Some(Arc::clone(f)),
            _ => None,
        }
    }

    /// An open handle of `ino` that may write.
    pub fn writable_open(&self, ino: u64) -> Option<Arc<OpenFile>> {
        let files = self.files.lock().ok()?;
        files.values().find(|f| f.ino == ino && f.writable).cloned()
    }

    /// Makes what every handle of `ino` wrote visible through `through`,
    /// as POSIX wants after write(2) returns: waits for queued writes, and
    /// flushes other handles' writes (the cluster shows a handle its own
    /// unflushed writes only). Costs nothing when no other handle wrote.
    pub async fn settle(&self, ino: u64, through: Option<&Arc<OpenFile>>) -> Result<(), Errno> {
        if let Some(t) = through {
            t.writes.wait().await;
        }
        self.settle_others(ino, through).await
    }

    /// [`Shared::settle`] without waiting for `through`'s own queue. Before
    /// a write too: the cluster applies each handle's unflushed writes at
    /// its flush, so another handle's earlier writes must be flushed first
    /// or they would land over this later one.
    pub async fn settle_others(
        &self,
        ino: u64,
        through: Option<&Arc<OpenFile>>,
    ) -> Result<(), Errno> {
        let others: Vec<Arc<OpenFile>> = match self.files.lock() {
            Ok(f) => f
                .values()
                .filter(|f| f.ino == ino && !through.is_some_and(|t| Arc::ptr_eq(t, f)))
                .cloned()
                .collect(),
            Err(_) => return Err(Errno::EIO),
        };
        for f in others {
            f.writes.wait().await;
            if f.writable {
                f.file.sync().await.map_err(|e| crate::errno::errno(&e))?;
            }
        }
        Ok(())
    }

    /// Makes every open file's writes durable (before an unmount).
    pub async fn flush_all(&self) {
        let open: Vec<Arc<OpenFile>> = match self.files.lock() {
            Ok(f) => f.values().cloned().collect(),
            Err(_) => return,
        };
        for f in open {
            f.writes.wait().await;
            if let Err(e) = f.file.flush().await {
                tracing::warn!(handle = %f.file.handle(), error = %e, "flush at unmount failed");
            }
        }
    }

    /// The FUSE inode that protocol handle `h` has open.
    pub fn ino_of_handle(&self, h: HandleId) -> Option<u64> {
        let files = self.files.lock().ok()?;
        files.values().find(|f| f.file.handle() == h).map(|f| f.ino)
    }

    pub fn path(&self, ino: u64) -> Result<String, Errno> {
        self.inodes
            .lock()
            .map_err(|_| Errno::EIO)?
            .path(ino)
            .ok_or(Errno::ESTALE)
    }

    pub fn child_path(&self, parent: u64, name: &str) -> Result<String, Errno> {
        self.inodes
            .lock()
            .map_err(|_| Errno::EIO)?
            .child_path(parent, name)
            .ok_or(Errno::ESTALE)
    }
}

/// The mount's file system.
pub struct CairnFs {
    shared: Arc<Shared>,
    rt: tokio::runtime::Handle,
}

impl CairnFs {
    /// A file system over `client`'s session, whose share root is Cairn
    /// inode `root`; its tasks run on `rt`.
    pub fn new(
        client: Client,
        root: u64,
        owner: Owner,
        metrics: Arc<Metrics>,
        rt: tokio::runtime::Handle,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                client,
                inodes: Mutex::new(Inodes::new(root)),
                files: Mutex::new(HashMap::new()),
                lock_routes: crate::locks::Routes::default(),
                dirs: Mutex::new(HashMap::new()),
                dir_attrs: DirAttrs::new(ATTR_TTL),
                next_fh: AtomicU64::new(1),
                owner,
                ttl: ATTR_TTL,
                metrics,
                notifier: OnceLock::new(),
            }),
            rt,
        }
    }

    /// Flushes every open file: what an unmount does before it goes.
    pub fn flusher(
        &self,
    ) -> impl Fn() -> std::pin::Pin<Box<dyn Future<Output = ()> + Send>> + use<> {
        let shared = Arc::clone(&self.shared);
        move || {
            let shared = Arc::clone(&shared);
            Box::pin(async move { shared.flush_all().await })
        }
    }

    /// Where lease breaks send page-cache invalidations; set once mounted.
    pub fn notifier_slot(&self) -> Arc<dyn Fn(fuser::Notifier) + Send + Sync> {
        let shared = Arc::clone(&self.shared);
        Arc::new(move |n| {
            let _ = shared.notifier.set(n);
        })
    }

    /// Invalidates the kernel's cache of a file whose read lease another
    /// client's open broke, until the mount is gone.
    pub fn watch_leases(&self) {
        let shared = Arc::clone(&self.shared);
        self.rt.spawn(async move {
            let mut breaks = shared.client.lease_breaks();
            loop {
                match breaks.recv().await {
                    Ok(b) => {
                        if let (Some(ino), Some(n)) =
                            (shared.ino_of_handle(b.handle), shared.notifier.get())
                            && let Err(e) = n.inval_inode(INodeNo(ino), 0, 0)
                        {
                            tracing::debug!(error = %e, "cache invalidation failed");
                        }
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        tracing::warn!(
                            missed = n,
                            "lease breaks missed; caches may be stale until they expire"
                        );
                    }
                    Err(_) => return,
                }
            }
        });
    }

    /// The listing opendir took for directory handle `fh`.
    fn listing(&self, fh: FileHandle) -> Option<Arc<Vec<entries::DirEntry>>> {
        self.shared
            .dirs
            .lock()
            .ok()
            .and_then(|d| d.get(&fh.0).cloned())
    }

    /// Runs one call's work on the runtime; `op` names it in metrics.
    fn run<F>(&self, op: &'static str, work: impl FnOnce(Arc<Shared>) -> F + Send + 'static)
    where
        F: Future<Output = Result<(), Errno>> + Send + 'static,
    {
        let shared = Arc::clone(&self.shared);
        self.rt.spawn(async move {
            let started = Instant::now();
            let metrics = Arc::clone(&shared.metrics);
            let r = work(shared).await;
            metrics.record(op, started.elapsed(), r.is_err());
        });
    }
}

/// A name from the kernel as UTF-8 (Cairn names are UTF-8).
fn utf8(name: &OsStr) -> Result<String, Errno> {
    name.to_str().map(str::to_owned).ok_or(Errno::EINVAL)
}

/// Answers `reply` with `result`'s error, passing the error on for metrics.
macro_rules! answer {
    ($reply:expr, $result:expr, |$v:ident| $ok:expr) => {
        match $result {
            Ok($v) => {
                $ok;
                Ok(())
            }
            Err(e) => {
                $reply.error(e);
                Err(e)
            }
        }
    };
}

impl Filesystem for CairnFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(1 << 20);
        // Read-ahead requests are background requests, and the kernel's
        // default of 12 in flight (congested at 9) left a sequential reader
        // waiting on round trips with a core idle: 64 keeps the 8 MiB
        // read-ahead window's 1 MiB reads all in flight (dd of 1 GiB from a
        // dev cluster: 342 -> 410 MB/s).
        let _ = config.set_max_background(64);
        let _ = config.set_congestion_threshold(48);
        if let Err(max) = config.set_max_readahead(1 << 20) {
            let _ = config.set_max_readahead(max);
        }
        let want = InitFlags::FUSE_POSIX_LOCKS
            | InitFlags::FUSE_FLOCK_LOCKS
            | InitFlags::FUSE_ATOMIC_O_TRUNC
            | InitFlags::FUSE_PARALLEL_DIROPS
            // Listings carry attributes (`ls -l`, `find`, rsync: no lookup
            // per name); the kernel uses them when they pay.
            | InitFlags::FUSE_DO_READDIRPLUS
            | InitFlags::FUSE_READDIRPLUS_AUTO;
        let _ = config.add_capabilities(want & config.capabilities());
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let name = utf8(name);
        self.run("lookup", move |s| async move {
            let r = async { entries::lookup(&s, parent.0, &name?).await }.await;
            answer!(reply, r, |a| reply.entry(&s.ttl, &a, Generation(0)))
        });
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        if let Ok(mut t) = self.shared.inodes.lock() {
            t.forget(ino.0, nlookup);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, fh: Option<FileHandle>, reply: ReplyAttr) {
        self.run("getattr", move |s| async move {
            let r = entries::getattr(&s, ino.0, fh).await;
            answer!(reply, r, |a| reply.attr(&s.ttl, &a))
        });
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<std::time::SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<std::time::SystemTime>,
        _chgtime: Option<std::time::SystemTime>,
        _bkuptime: Option<std::time::SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let change = entries::AttrChange {
            mode,
            uid,
            gid,
            size,
            mtime,
        };
        self.run("setattr", move |s| async move {
            let r = entries::setattr(&s, ino.0, fh, change).await;
            answer!(reply, r, |a| reply.attr(&s.ttl, &a))
        });
    }

    fn mknod(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        let name = utf8(name);
        self.run("mknod", move |s| async move {
            let r = async {
                let name = name?;
                // Regular files only: no devices, fifos or sockets.
                if !matches!(mode & libc::S_IFMT, 0 | libc::S_IFREG) {
                    return Err(Errno::EPERM);
                }
                files::mknod(&s, parent.0, &name, mode & !umask).await
            }
            .await;
            answer!(reply, r, |a| reply.entry(&s.ttl, &a, Generation(0)))
        });
    }

    fn mkdir(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let name = utf8(name);
        self.run("mkdir", move |s| async move {
            let r = async { entries::mkdir(&s, parent.0, &name?, mode & !umask).await }.await;
            answer!(reply, r, |a| reply.entry(&s.ttl, &a, Generation(0)))
        });
    }

    fn symlink(
        &self,
        _req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let name = utf8(link_name);
        // Targets are stored as UTF-8 text, as names are.
        let target = utf8(target.as_os_str());
        self.run("symlink", move |s| async move {
            let r = async { entries::symlink(&s, parent.0, &name?, &target?).await }.await;
            answer!(reply, r, |a| reply.entry(&s.ttl, &a, Generation(0)))
        });
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        self.run("readlink", move |s| async move {
            let r = entries::readlink(&s, ino.0).await;
            answer!(reply, r, |t| reply.data(t.as_bytes()))
        });
    }

    fn link(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _newparent: INodeNo,
        _newname: &OsStr,
        reply: ReplyEntry,
    ) {
        // No hard links: one name per file. (Programs such as git try a
        // link first and fall back to a rename on EPERM.)
        reply.error(Errno::EPERM);
    }

    fn ioctl(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _flags: IoctlFlags,
        _cmd: u32,
        _in_data: &[u8],
        _out_size: u32,
        reply: ReplyIoctl,
    ) {
        // No ioctls: ENOTTY, as a local file system answers a terminal
        // request on a regular file. Python asks whether each file it opens
        // is a terminal; fuser's default answered ENOSYS (which the kernel
        // does not remember for ioctls) and logged a warning for each.
        reply.error(Errno::ENOTTY);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = utf8(name);
        self.run("unlink", move |s| async move {
            let r = async { entries::remove(&s, parent.0, &name?, false).await }.await;
            answer!(reply, r, |_v| reply.ok())
        });
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let name = utf8(name);
        self.run("rmdir", move |s| async move {
            let r = async { entries::remove(&s, parent.0, &name?, true).await }.await;
            answer!(reply, r, |_v| reply.ok())
        });
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let names = utf8(name).and_then(|a| Ok((a, utf8(newname)?)));
        self.run("rename", move |s| async move {
            let r = async {
                let (from, to) = names?;
                entries::rename(&s, (parent.0, &from), (newparent.0, &to), flags).await
            }
            .await;
            answer!(reply, r, |_v| reply.ok())
        });
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        self.run("open", move |s| async move {
            let r = files::open(&s, ino.0, flags.0).await;
            answer!(reply, r, |v| reply.opened(FileHandle(v.0), v.1))
        });
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let name = utf8(name);
        self.run("create", move |s| async move {
            let r = async { files::create(&s, parent.0, &name?, mode & !umask, flags).await }.await;
            answer!(reply, r, |v| reply.created(
                &s.ttl,
                &v.0,
                Generation(0),
                FileHandle(v.1),
                v.2
            ))
        });
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        self.run("read", move |s| async move {
            let r = files::read(&s, fh, offset, size).await;
            answer!(reply, r, |d| reply.data(&d))
        });
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let data = bytes::Bytes::copy_from_slice(data);
        self.run("write", move |s| async move {
            let r = files::write(&s, fh, offset, data).await;
            answer!(reply, r, |n| reply.written(n))
        });
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        self.run("flush", move |s| async move {
            let r = files::flush(&s, fh, Some(lock_owner.0)).await;
            answer!(reply, r, |_v| reply.ok())
        });
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        self.run("fsync", move |s| async move {
            let r = files::flush(&s, fh, None).await;
            answer!(reply, r, |_v| reply.ok())
        });
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.run("release", move |s| async move {
            let r = files::release(&s, fh).await;
            answer!(reply, r, |_v| reply.ok())
        });
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        self.run("opendir", move |s| async move {
            let r = entries::opendir(&s, ino.0).await;
            answer!(reply, r, |fh| reply
                .opened(FileHandle(fh), FopenFlags::empty()))
        });
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let listing = self.listing(fh);
        let Some(listing) = listing else {
            reply.error(Errno::EBADF);
            return;
        };
        for (i, e) in listing.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(e.ino), (i + 1) as u64, e.kind, &e.name) {
                break;
            }
        }
        reply.ok();
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let listing = self.listing(fh);
        self.run("readdirplus", move |s| async move {
            let r = match listing {
                Some(l) => entries::readdirplus(&s, ino.0, &l, offset as usize, &mut reply).await,
                None => Err(Errno::EBADF),
            };
            answer!(reply, r, |_v| reply.ok())
        });
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        if let Ok(mut d) = self.shared.dirs.lock() {
            d.remove(&fh.0);
        }
        reply.ok();
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        self.run("statfs", move |s| async move {
            let r = s
                .client
                .fs_stats()
                .await
                .map_err(|e| crate::errno::errno(&e));
            answer!(reply, r, |st| {
                // Sizes in 4 KiB fragments; programs move data in 1 MiB
                // blocks. Inodes are not a limit: numbers never run out
                // before the disk does.
                let blocks = st.total_bytes / STATFS_FRAGMENT;
                let free = st.free_bytes / STATFS_FRAGMENT;
                reply.statfs(
                    blocks,
                    free,
                    free,
                    1 << 40,
                    1 << 40,
                    crate::attr::BLOCK_SIZE,
                    255,
                    STATFS_FRAGMENT as u32,
                );
            })
        });
    }

    fn getlk(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        pid: u32,
        reply: ReplyLock,
    ) {
        let wanted = crate::locks::Wanted {
            owner: lock_owner.0,
            start,
            end,
            typ,
        };
        self.run("getlk", move |s| async move {
            let r = crate::locks::test(&s, fh, wanted).await;
            answer!(reply, r, |v| match v {
                Some((start, end, typ)) => reply.locked(start, end, typ, 0),
                None => reply.locked(start, end, libc::F_UNLCK, pid),
            })
        });
    }

    fn setlk(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        lock_owner: LockOwner,
        start: u64,
        end: u64,
        typ: i32,
        _pid: u32,
        sleep: bool,
        reply: ReplyEmpty,
    ) {
        let wanted = crate::locks::Wanted {
            owner: lock_owner.0,
            start,
            end,
            typ,
        };
        let tid = req.pid();
        self.run("setlk", move |s| async move {
            let r = crate::locks::set(&s, fh, wanted, sleep, tid).await;
            answer!(reply, r, |_v| reply.ok())
        });
    }
}

/// True if `path` is a mount point now (per /proc/self/mountinfo).
pub fn is_mounted(path: &Path) -> bool {
    let Ok(path) = path.canonicalize() else {
        return false;
    };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    info.lines().any(|l| {
        l.split(' ')
            .nth(4)
            .is_some_and(|m| Path::new(&unescape(m)) == path)
    })
}

/// mountinfo escapes spaces and friends as octal (`\040`).
fn unescape(s: &str) -> String {
    let mut out = Vec::with_capacity(s.len());
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 4 <= b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
