//! `mount.cairn SOURCE MOUNTPOINT [-o OPTIONS] [--foreground]`: mounts a
//! Cairn share (see `cairn_fuse::options` for SOURCE and OPTIONS). Called
//! by mount(8) for `cairn` entries in /etc/fstab, and by `cairn mount`.
//! Without `--foreground` it returns once the mount is up and keeps
//! serving it in the background; SIGTERM unmounts it cleanly.

use std::process::{ExitCode, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cairn_client::{Client, NativeConfig};
use cairn_fuse::metrics::Metrics;
use cairn_fuse::{CairnFs, MountOptions};

/// How long mounting may wait for a first node to answer.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// How long an unmounted daemon tries to end its session before exiting.
const LOGOFF_TIMEOUT: Duration = Duration::from_secs(5);

struct Args {
    source: String,
    mountpoint: String,
    options: String,
    foreground: bool,
    /// Started by [`daemonize`]: once mounted, stderr (a pipe to a parent
    /// that has exited) must go elsewhere.
    daemon_child: bool,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut positional = Vec::new();
    let mut options = Vec::new();
    let mut foreground = false;
    let mut daemon_child = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "-o" => options.push(args.next().context("-o needs a value")?),
            "--foreground" => foreground = true,
            DAEMON_CHILD_FLAG => {
                foreground = true;
                daemon_child = true;
            }
            "--metrics-listen" => {
                options.push(format!(
                    "metrics={}",
                    args.next().context("--metrics-listen needs an address")?
                ));
            }
            // mount(8)'s sloppy, no-mtab and verbose flags.
            "-s" | "-n" | "-v" => {}
            "-h" | "--help" => {
                println!(
                    "usage: mount.cairn cairn://HOST:PORT[,HOST:PORT...]/SHARE MOUNTPOINT [-o OPTIONS] [--foreground] [--metrics-listen ADDR]"
                );
                std::process::exit(0);
            }
            s if s.starts_with('-') => bail!("unknown flag {s}"),
            _ => positional.push(a),
        }
    }
    let [source, mountpoint] = <[String; 2]>::try_from(positional)
        .map_err(|_| anyhow::anyhow!("expected SOURCE and MOUNTPOINT (see --help)"))?;
    Ok(Args {
        source,
        mountpoint,
        options: options.join(","),
        foreground,
        daemon_child,
    })
}

fn main() -> ExitCode {
    cairn_client::tune_allocator();
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mount.cairn: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let args = parse_args()?;
    let opts = MountOptions::parse(&args.source, &args.mountpoint, &args.options)?;
    if !opts.mountpoint.is_dir() {
        bail!(
            "mount point {} is not a directory",
            opts.mountpoint.display()
        );
    }
    if cairn_fuse::fs::is_mounted(&opts.mountpoint) {
        bail!("{} is already a mount point", opts.mountpoint.display());
    }
    if !args.foreground {
        return daemonize(&opts);
    }
    init_tracing(&opts, args.daemon_child)?;
    serve(&opts, args.daemon_child)
}

fn init_tracing(opts: &MountOptions, daemon_child: bool) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    match &opts.log {
        Some(path) => {
            let file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("log file {}", path.display()))?;
            builder.with_ansi(false).with_writer(Arc::new(file)).init();
        }
        // A daemon's stderr becomes a file once mounted: no colours.
        None => builder
            .with_ansi(!daemon_child)
            .with_writer(std::io::stderr)
            .init(),
    }
    Ok(())
}

/// Marks the daemon [`daemonize`] starts (not for people to type).
const DAEMON_CHILD_FLAG: &str = "--daemon-child";

/// Where a daemonized mount without `log=` writes its log.
const DAEMON_LOG: &str = "/var/log/cairn-mount.log";

/// Points the daemon's stderr away from the pipe its starter read until
/// the mount was up: that process has exited, and a write to a pipe
/// nobody reads fails, which made the next log line abort the daemon. To
/// the `log=` file (so panics land there too), else [`DAEMON_LOG`], else
/// /dev/null.
fn detach_stderr(opts: &MountOptions) {
    let open = |p: &std::path::Path| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
    };
    let target = opts
        .log
        .as_deref()
        .map(open)
        .unwrap_or_else(|| open(std::path::Path::new(DAEMON_LOG)))
        .or_else(|_| std::fs::OpenOptions::new().write(true).open("/dev/null"));
    match target.map(|f| rustix::stdio::dup2_stderr(&f)) {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(error = %e, "cannot redirect stderr"),
        Err(e) => tracing::warn!(error = %e, "no file to redirect stderr to"),
    }
}

/// Starts this program again in the foreground, detached, and returns once
/// its mount is up (or with its error).
fn daemonize(opts: &MountOptions) -> anyhow::Result<()> {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().context("finding mount.cairn itself")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(std::env::args().skip(1))
        .arg(DAEMON_CHILD_FLAG)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    // Its own process group: the terminal's Ctrl-C is not for the daemon.
    cmd.process_group(0);
    let mut child = cmd.spawn().context("starting the mount daemon")?;
    let deadline = Instant::now() + CONNECT_TIMEOUT + Duration::from_secs(15);
    while Instant::now() < deadline {
        if cairn_fuse::fs::is_mounted(&opts.mountpoint) {
            return Ok(());
        }
        if let Some(status) = child.try_wait()? {
            let mut err = String::new();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            bail!("the mount daemon exited ({status}): {}", err.trim());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    bail!(
        "no mount at {} after {:?}",
        opts.mountpoint.display(),
        deadline.elapsed()
    )
}

fn serve(opts: &MountOptions, daemon_child: bool) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .thread_name("cairn-mount")
        .build()?;
    let token = opts.resolve_token()?;
    let ca = opts.resolve_ca()?;
    let mut cfg = NativeConfig::new(opts.nodes.clone(), ca, token, opts.share.clone());
    cfg.failover_timeout = opts.timeout;
    // A mount is metadata-heavy: on the leader, lookups, creates and
    // closes skip a forward between nodes.
    cfg.prefer_leader = !opts.any_node;
    let (client, root) = rt.block_on(async {
        let client = tokio::time::timeout(CONNECT_TIMEOUT, Client::connect(cfg))
            .await
            .map_err(|_| {
                anyhow::anyhow!(
                    "no node of {} answered within {CONNECT_TIMEOUT:?}",
                    opts.nodes.join(",")
                )
            })?
            .with_context(|| format!("cannot reach the cluster at {}", opts.nodes.join(",")))?;
        let root = client
            .metadata("")
            .await
            .context("reading the share's root")?;
        anyhow::Ok((client, root.inode))
    })?;
    let metrics = Arc::new(Metrics::default());
    if let Some(addr) = opts.metrics {
        let listener = rt
            .block_on(tokio::net::TcpListener::bind(addr))
            .with_context(|| format!("metrics listener {addr}"))?;
        rt.spawn(Arc::clone(&metrics).serve(listener));
    }
    let owner = cairn_fuse::attr::Owner {
        uid: opts
            .uid
            .unwrap_or_else(|| rustix::process::geteuid().as_raw()),
        gid: opts
            .gid
            .unwrap_or_else(|| rustix::process::getegid().as_raw()),
    };
    let fs = CairnFs::new(client.clone(), root, owner, metrics, rt.handle().clone());
    let slot = fs.notifier_slot();
    let flush_all = fs.flusher();
    fs.watch_leases();
    let mut config = fuser::Config::default();
    config.mount_options = vec![
        fuser::MountOption::FSName(format!("cairn:{}", opts.share)),
        fuser::MountOption::Subtype("cairn".into()),
        fuser::MountOption::DefaultPermissions,
        if opts.read_only {
            fuser::MountOption::RO
        } else {
            fuser::MountOption::RW
        },
    ];
    if opts.allow_other {
        config.acl = fuser::SessionACL::All;
    }
    config.n_threads = Some(2);
    let session = fuser::Session::new(fs, &opts.mountpoint, &config)
        .with_context(|| format!("mounting {}", opts.mountpoint.display()))?;
    slot(session.notifier());
    let background = session.spawn()?;
    if let Err(e) = raise_readahead(&opts.mountpoint) {
        tracing::warn!(error = %e, "cannot raise the mount's read-ahead; sequential reads stay slower");
    }
    tracing::info!(mountpoint = %opts.mountpoint.display(), nodes = %opts.nodes.join(","), share = %opts.share, "mounted");
    if daemon_child {
        detach_stderr(opts);
    }
    let stop = rt.block_on(wait_for_stop(&background));
    if stop {
        // What programs wrote is made durable before the mount goes.
        let flushed =
            rt.block_on(async { tokio::time::timeout(Duration::from_secs(20), flush_all()).await });
        if flushed.is_err() {
            tracing::warn!("open files not flushed within 20 s");
        }
        unmount(&opts.mountpoint, background);
    } else {
        let _ = background.join();
    }
    rt.block_on(async {
        // Not for the whole failover timeout: a cluster gone for good
        // would keep the daemon of an unmounted share alive that long.
        match tokio::time::timeout(LOGOFF_TIMEOUT, client.logoff()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "logoff failed; the session expires by itself");
            }
            Err(_) => {
                tracing::warn!("no logoff within {LOGOFF_TIMEOUT:?}; the session expires by itself")
            }
        }
    });
    tracing::info!("unmounted");
    Ok(())
}

/// Read-ahead the kernel keeps for the mount, in KiB.
const READ_AHEAD_KIB: u32 = 8 << 10;

/// The kernel gives a FUSE mount 128 KiB of read-ahead (the FUSE_INIT
/// answer can only lower it), so a sequential reader's requests were
/// 128 KiB, about one round trip each. The mount's backing device info
/// takes more (as root): then the kernel keeps several 1 MiB reads in
/// flight.
fn raise_readahead(mountpoint: &std::path::Path) -> std::io::Result<()> {
    let dev = mount_device(mountpoint)?;
    std::fs::write(
        format!("/sys/class/bdi/{dev}/read_ahead_kb"),
        READ_AHEAD_KIB.to_string(),
    )
}

/// The mount's device number (`major:minor`), from /proc/self/mountinfo.
fn mount_device(mountpoint: &std::path::Path) -> std::io::Result<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    // Fields: id, parent, major:minor, root, mount point (spaces as \040).
    let want = mountpoint.to_string_lossy().replace(' ', "\\040");
    info.lines()
        .rev()
        .find_map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f.get(4) == Some(&want.as_str())).then(|| f.get(2).map(|d| d.to_string()))
        })
        .flatten()
        .ok_or_else(|| std::io::Error::other(format!("{want} is not in /proc/self/mountinfo")))
}

/// Waits for SIGTERM or SIGINT (true) or an unmount from outside (false).
async fn wait_for_stop(bg: &fuser::BackgroundSession) -> bool {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        return false;
    };
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = term.recv() => return true,
            _ = int.recv() => return true,
            _ = tick.tick() => if bg.guard.is_finished() { return false },
        }
    }
}

/// Unmounts. With files still open, detaches the mount and aborts its FUSE
/// connection (their descriptors then fail with ENOTCONN): the daemon
/// exits rather than wait for programs to close them.
fn unmount(path: &std::path::Path, bg: fuser::BackgroundSession) {
    use rustix::mount::{UnmountFlags, unmount};
    // The connection's number in /sys/fs/fuse/connections is the minor
    // device number of the mount. Not from a stat of the mount point: that
    // is a call into this file system, which blocks for the whole timeout
    // when the cluster is gone.
    let connection = mount_device(path)
        .ok()
        .and_then(|d| d.split(':').nth(1).map(str::to_string));
    if let Err(e) = unmount(path, UnmountFlags::empty()) {
        tracing::warn!(error = %e, "busy; detaching the mount");
        if let Err(e) = unmount(path, UnmountFlags::DETACH) {
            tracing::warn!(error = %e, "could not unmount");
        }
        if let Some(n) = connection {
            // The control file system is not mounted everywhere.
            if !std::path::Path::new("/sys/fs/fuse/connections/")
                .join(&n)
                .exists()
            {
                let _ = rustix::mount::mount(
                    "fusectl",
                    "/sys/fs/fuse/connections",
                    "fusectl",
                    rustix::mount::MountFlags::empty(),
                    None,
                );
            }
            let abort = format!("/sys/fs/fuse/connections/{n}/abort");
            if let Err(e) = std::fs::write(&abort, b"1") {
                tracing::warn!(error = %e, path = %abort, "could not abort the FUSE connection");
            }
        }
    }
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = done_tx.send(bg.join());
    });
    match done_rx.recv_timeout(Duration::from_secs(10)) {
        Ok(Err(e)) => tracing::warn!(error = %e, "the FUSE session ended with an error"),
        Ok(Ok(())) => {}
        Err(_) => tracing::warn!("the FUSE session did not end within 10 s; exiting anyway"),
    }
}
