//! A real FUSE mount of a test cluster: `cairn-mount --foreground` as a
//! child process, unmounted (SIGTERM) when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::binary;
use crate::cluster::Cluster;
use crate::netns::Host;

pub struct Mount {
    pub path: PathBuf,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Mount {
    /// Mounts the cluster's share `default` on a new temporary directory,
    /// with `options` (fstab style) added.
    pub fn start(c: &Cluster, options: &str) -> Self {
        Self::launch(c, options, Command::new(binary("cairn-mount")))
    }

    /// [`Mount::start`] with the daemon on `host`'s network (it keeps this
    /// process's mount namespace, so the mount is visible here).
    pub fn start_on(c: &Cluster, host: &Host, options: &str) -> Self {
        Self::launch(c, options, host.command(binary("cairn-mount")))
    }

    fn launch(c: &Cluster, options: &str, mut command: Command) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let path = dir.path().join("mnt");
        std::fs::create_dir(&path).expect("mount point");
        let log = dir.path().join("mount.log");
        let source = format!("cairn://{}/default", c.quic_addrs().join(","));
        let mut opts = format!("ca={},log={}", c.ca_pem().display(), log.display());
        if !options.is_empty() {
            opts.push(',');
            opts.push_str(options);
        }
        let child = command
            .arg(&source)
            .arg(&path)
            .arg("-o")
            .arg(&opts)
            .arg("--foreground")
            .env("CAIRN_TOKEN", c.token())
            .stdin(Stdio::null())
            .spawn()
            .expect("starting cairn-mount");
        let mut m = Self {
            path,
            child,
            log,
            _dir: dir,
        };
        m.wait_mounted(Duration::from_secs(30));
        m
    }

    fn wait_mounted(&mut self, within: Duration) {
        let started = Instant::now();
        while started.elapsed() < within {
            if is_mounted(&self.path) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("cairn-mount exited ({status}): {}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("no mount after {within:?}: {}", self.log_text());
    }

    pub fn join(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM, then waits for the daemon to unmount and exit.
    pub fn stop(&mut self) -> Option<i32> {
        crate::signal(self.child.id(), rustix::process::Signal::TERM);
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(20) {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        None
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.stop();
        }
        if is_mounted(&self.path) {
            let _ = rustix::mount::unmount(&self.path, rustix::mount::UnmountFlags::DETACH);
        }
    }
}

/// True if `path` is a mount point (`mountpoint -q`).
pub fn is_mounted(path: &Path) -> bool {
    Command::new("mountpoint")
        .arg("-q")
        .arg(path)
        .status()
        .is_ok_and(|s| s.success())
}

/// Writes `mib` MiB of a seeded pattern to `path` (on a mount) in 1 MiB
/// writes, with an fsync after every `sync_every` of them and a pause of
/// `pace` after each; every call must succeed. The data, and when each
/// write (with its fsync, if any) returned.
pub fn write_pattern(
    path: &Path,
    mib: usize,
    seed: u64,
    sync_every: usize,
    pace: Duration,
) -> (Vec<u8>, Vec<Instant>) {
    use std::io::Write;
    let data = crate::random_bytes(mib << 20, seed);
    let mut f = std::fs::File::create(path).expect("creating the file");
    let mut done = Vec::with_capacity(mib + 1);
    for (i, piece) in data.chunks(1 << 20).enumerate() {
        f.write_all(piece)
            .unwrap_or_else(|e| panic!("write {i} failed: {e}"));
        if i % sync_every == sync_every - 1 {
            f.sync_all()
                .unwrap_or_else(|e| panic!("fsync after {i} failed: {e}"));
        }
        done.push(Instant::now());
        if !pace.is_zero() {
            std::thread::sleep(pace);
        }
    }
    f.sync_all().expect("the last fsync");
    done.push(Instant::now());
    (data, done)
}
