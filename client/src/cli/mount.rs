//! `cairn mount` and `cairn umount`: the FUSE mount is served by
//! `cairn-mount` (also installed as `mount.cairn` for /etc/fstab); these
//! commands run it with the CLI's settings.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

#[derive(Debug, clap::Args)]
pub struct MountArgs {
    /// `[URL|SEED-LIST] MOUNTPOINT`: the cluster as `cairn://host:port,.../share`
    /// or the nodes' QUIC addresses (comma-separated; default: `CAIRN_QUIC`),
    /// then where to mount. (One list, not two arguments: clap would give a
    /// lone MOUNTPOINT to the optional first one.)
    #[arg(value_name = "[URL|SEED-LIST] MOUNTPOINT", required = true, num_args = 1..=2)]
    places: Vec<String>,
    /// Stay in the foreground (logs on stderr) until unmounted or signalled.
    #[arg(long)]
    foreground: bool,
    /// Let other users use the mount.
    #[arg(long)]
    allow_other: bool,
    /// Seconds a call waits for the cluster before failing with EIO.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Serve mount metrics (Prometheus text) on this address.
    #[arg(long)]
    metrics_listen: Option<String>,
    /// More mount options, as in fstab (`uid=33,gid=33,ro`).
    #[arg(short = 'o', long = "options")]
    options: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct UmountArgs {
    mountpoint: PathBuf,
    /// Detach now even if files are open (they stay usable until closed).
    #[arg(long)]
    lazy: bool,
}

/// The `cairn-mount` program: next to this `cairn`, else on the PATH.
pub fn mount_binary() -> PathBuf {
    if let Ok(exe) = std::env::current_exe() {
        let sibling = exe.with_file_name("cairn-mount");
        if sibling.exists() {
            return sibling;
        }
    }
    PathBuf::from("cairn-mount")
}

/// The `cairn-mount` command line for a mount of `share`.
pub fn command(
    source: &str,
    share: &str,
    mountpoint: &Path,
    ca: Option<&Path>,
    options: &[String],
) -> std::process::Command {
    let source = if source.starts_with("cairn://") {
        source.to_owned()
    } else {
        format!("cairn://{source}/{share}")
    };
    let mut opts = options.to_vec();
    if let Some(ca) = ca {
        opts.push(format!("ca={}", ca.display()));
    }
    let mut cmd = std::process::Command::new(mount_binary());
    cmd.arg(source).arg(mountpoint);
    if !opts.is_empty() {
        cmd.arg("-o").arg(opts.join(","));
    }
    cmd
}

pub fn mount(
    args: MountArgs,
    quic: Option<&str>,
    share: &str,
    ca: Option<&Path>,
) -> anyhow::Result<()> {
    let (given, mountpoint) = match args.places.as_slice() {
        [m] => (None, PathBuf::from(m)),
        [s, m] => (Some(s.as_str()), PathBuf::from(m)),
        _ => bail!("give [URL|SEED-LIST] MOUNTPOINT"),
    };
    let Some(source) = given.or(quic) else {
        bail!("no cluster to mount: give cairn://HOST:PORT,.../SHARE or set CAIRN_QUIC");
    };
    let mut options = vec![format!("timeout={}", args.timeout)];
    if args.allow_other {
        options.push("allow_other".into());
    }
    if let Some(m) = &args.metrics_listen {
        options.push(format!("metrics={m}"));
    }
    if let Some(o) = &args.options {
        options.push(o.clone());
    }
    let mut cmd = command(source, share, &mountpoint, ca, &options);
    if args.foreground {
        cmd.arg("--foreground");
    }
    let status = cmd
        .status()
        .with_context(|| format!("running {}", mount_binary().display()))?;
    if !status.success() {
        bail!("cairn-mount failed ({status})");
    }
    Ok(())
}

pub fn umount(args: UmountArgs) -> anyhow::Result<()> {
    use rustix::mount::{UnmountFlags, unmount};
    let flags = if args.lazy {
        UnmountFlags::DETACH
    } else {
        UnmountFlags::empty()
    };
    unmount(&args.mountpoint, flags).map_err(|e| {
        if e == rustix::io::Errno::BUSY {
            anyhow::anyhow!(
                "{} is busy (files are open); --lazy detaches it now",
                args.mountpoint.display()
            )
        } else {
            anyhow::anyhow!("unmounting {}: {e}", args.mountpoint.display())
        }
    })
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        mount: super::MountArgs,
    }

    #[test]
    fn the_cluster_is_optional_before_the_mount_point() {
        let one = Cli::try_parse_from(["cairn", "/mnt/cairn"]).unwrap();
        assert_eq!(one.mount.places, ["/mnt/cairn"]);
        let two = Cli::try_parse_from(["cairn", "cairn://a:1/s", "/mnt/cairn", "--timeout", "5"])
            .unwrap();
        assert_eq!(two.mount.places, ["cairn://a:1/s", "/mnt/cairn"]);
        assert!(Cli::try_parse_from(["cairn"]).is_err());
        assert!(Cli::try_parse_from(["cairn", "a", "b", "c"]).is_err());
    }
}
