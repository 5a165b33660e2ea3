//! A real FUSE mount of a test cluster: `cairn-mount --foreground` as a
//! child process, unmounted (SIGTERM) when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::binary;
use crate::cluster::Cluster;

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
        let child = Command::new(binary("cairn-mount"))
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
