//! Test harness: starts real `cairn-server` processes on free ports, with
//! their own data directories, and stops, kills or restarts them.
//!
//! Every server logs JSON to a file; when a [`Server`] is dropped (or
//! [`Server::check_log`] is called) the test fails on any ERROR line that the
//! test did not declare expected.

use std::fs;
use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

pub mod cluster;
pub mod hold;
pub mod mount;
pub mod netns;
pub mod powerloss;

/// How long a server may take to start listening.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// The directory holding the workspace's binaries (`target/release`).
pub fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("CAIRN_BIN_DIR") {
        return PathBuf::from(dir);
    }
    // Test binaries live in target/<profile>/deps; the binaries one up.
    let exe = std::env::current_exe().unwrap_or_default();
    let mut dir = exe.parent().map(Path::to_path_buf).unwrap_or_default();
    if dir.ends_with("deps") {
        dir.pop();
    }
    dir
}

/// Path of a workspace binary, failing clearly if it was not built.
pub fn binary(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: build it first (cargo build --release --bins)",
        path.display()
    );
    path
}

/// Options for a test server.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    pub gc_grace_secs: u64,
    pub gc_interval_secs: u64,
    pub upload_bytes_max: u64,
    pub free_bytes_min: u64,
    pub body_idle_timeout_secs: u64,
    /// Substrings of ERROR messages this test provokes on purpose.
    pub allowed_errors: Vec<String>,
    /// Use this data directory instead of a fresh temporary one.
    pub data_dir: Option<PathBuf>,
    /// `CAIRN_LOG` filter for the server.
    pub log_filter: String,
    /// More top-level config lines, e.g. `download_buffer_bytes_max = 4194304`.
    pub extra_config: String,
    /// Run on this test host (network namespace) instead of loopback.
    pub host: Option<netns::Host>,
    /// Use these tokens (read-write, read-only, other share) instead of
    /// fresh random ones: the nodes of a cluster share them.
    pub tokens: Option<[String; 3]>,
    pub node_id: u64,
    /// Listen on this HTTP port instead of a free one.
    pub http_port: u16,
    /// The `[cluster]` table, for a node of a [`cluster::Cluster`].
    pub cluster_config: String,
    /// A command the server runs under (e.g. strace for power-loss tests).
    pub wrapper: Vec<String>,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            gc_grace_secs: 3600,
            gc_interval_secs: 3600,
            upload_bytes_max: 1 << 40,
            free_bytes_min: 16 << 20,
            body_idle_timeout_secs: 30,
            allowed_errors: Vec::new(),
            data_dir: None,
            log_filter: "info,cairn_server=debug".into(),
            extra_config: String::new(),
            host: None,
            tokens: None,
            node_id: 1,
            http_port: 0,
            cluster_config: String::new(),
            wrapper: Vec::new(),
        }
    }
}

/// A running (or stopped) `cairn-server` process.
pub struct Server {
    pub url: String,
    pub addr: SocketAddr,
    pub token: String,
    pub read_token: String,
    pub other_token: String,
    pub data_dir: PathBuf,
    pub options: ServerOptions,
    dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    child: Option<Child>,
    log: PathBuf,
    /// Bytes of the log already checked, across restarts.
    checked: u64,
}

impl Server {
    pub fn start() -> Self {
        Self::start_with(ServerOptions::default())
    }

    pub fn start_with(options: ServerOptions) -> Self {
        let mut server = Self::launch(options);
        server.wait_started().expect("start cairn-server");
        server
    }

    /// Starts the process without waiting for it to listen: nodes of a
    /// cluster are started together, as none is ready before a majority is.
    pub fn launch(options: ServerOptions) -> Self {
        let tmp = tempfile::Builder::new()
            .prefix("cairn-test-")
            .tempdir()
            .expect("temp dir");
        let dir = tmp.path().to_path_buf();
        let data_dir = options.data_dir.clone().unwrap_or_else(|| dir.join("data"));
        let [token, read_token, other_token] = options.tokens.clone().unwrap_or_else(|| {
            [
                format!("rw-{:032x}", rand::random::<u128>()),
                format!("ro-{:032x}", rand::random::<u128>()),
                format!("ot-{:032x}", rand::random::<u128>()),
            ]
        });
        let ip = options
            .host
            .as_ref()
            .map_or(std::net::Ipv4Addr::LOCALHOST, |h| h.ip);
        let mut server = Self {
            url: String::new(),
            addr: SocketAddr::from((ip, options.http_port)),
            token,
            read_token,
            other_token,
            data_dir,
            options,
            dir,
            _tmp: Some(tmp),
            child: None,
            log: PathBuf::new(),
            checked: 0,
        };
        server.log = server.dir.join("server.log");
        server.launch_process().expect("start cairn-server");
        server
    }

    fn config_text(&self, port: u16) -> String {
        let o = &self.options;
        format!(
            r#"node_id = {node_id}
data_dir = "{data}"
http_listen = "{ip}:{port}"
log_format = "json"
gc_grace_secs = {grace}
gc_interval_secs = {interval}
upload_bytes_max = {max}
free_bytes_min = {free}
body_idle_timeout_secs = {idle}
shutdown_grace_secs = 20
{extra}

[[shares]]
name = "default"
tokens = [
  {{ token = "{rw}", access = "read_write" }},
  {{ token = "{ro}", access = "read" }},
]

[[shares]]
name = "other"
tokens = [{{ token = "{ot}", access = "read_write" }}]

{cluster}
"#,
            node_id = o.node_id,
            cluster = o.cluster_config,
            data = self.data_dir.display(),
            grace = o.gc_grace_secs,
            interval = o.gc_interval_secs,
            max = o.upload_bytes_max,
            free = o.free_bytes_min,
            idle = o.body_idle_timeout_secs,
            rw = self.token,
            ro = self.read_token,
            ot = self.other_token,
            extra = o.extra_config,
            ip = o
                .host
                .as_ref()
                .map_or("127.0.0.1".to_owned(), |h| h.ip.to_string()),
        )
    }

    fn spawn(&mut self) -> anyhow::Result<()> {
        self.launch_process()?;
        self.wait_started()
    }

    fn launch_process(&mut self) -> anyhow::Result<()> {
        // Restarts reuse the port, so clients keep their URL.
        let port = self.addr.port();
        let config = self.dir.join("cairn.toml");
        fs::write(&config, self.config_text(port))?;
        let ready = self.dir.join("ready.json");
        let _ = fs::remove_file(&ready);
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let (program, prefix) = match self.options.wrapper.split_first() {
            Some((first, rest)) => (PathBuf::from(first), rest.to_vec()),
            None => (binary("cairn-server"), Vec::new()),
        };
        let mut command = match &self.options.host {
            Some(host) => host.command(&program),
            None => Command::new(&program),
        };
        if !prefix.is_empty() {
            command.args(&prefix).arg(binary("cairn-server"));
        }
        let child = command
            .arg("--config")
            .arg(&config)
            .arg("--ready-file")
            .arg(&ready)
            .env("CAIRN_LOG", &self.options.log_filter)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .context("spawning cairn-server")?;
        self.child = Some(child);
        Ok(())
    }

    /// Waits until the server has written its ready file and listens.
    pub fn wait_started(&mut self) -> anyhow::Result<()> {
        let ready = self.dir.join("ready.json");
        let started = Instant::now();
        loop {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                bail!(
                    "cairn-server exited at startup with {status}:\n{}",
                    self.log_text()
                );
            }
            if let Ok(text) = fs::read_to_string(&ready) {
                let v: serde_json::Value = serde_json::from_str(&text)?;
                let addr: SocketAddr = v["http"].as_str().unwrap_or_default().parse()?;
                // A server on a test host is out of this process's network;
                // its ready file (written after bind) is the signal.
                if self.options.host.is_some() || TcpStream::connect(addr).is_ok() {
                    self.addr = addr;
                    self.url = format!("http://{addr}");
                    return Ok(());
                }
            }
            if started.elapsed() > START_TIMEOUT {
                bail!("cairn-server did not start in time:\n{}", self.log_text());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// `kill -9`: no chance to flush or clean up.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// `kill -9` of the server when it runs under a wrapper (strace): the
    /// server itself dies at once, then the wrapper is reaped.
    pub fn kill9_wrapped(&mut self) {
        if let Some(pid) = self.pid() {
            let children =
                fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
            for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                signal(child, rustix::process::Signal::KILL);
            }
        }
        if let Some(mut child) = self.child.take()
            && exit_within(&mut child, Duration::from_secs(30)).is_none()
        {
            let _ = child.wait();
        }
    }

    /// SIGTERM, then waits for a clean exit; returns the exit code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut child = self.child.take()?;
        signal(child.id(), rustix::process::Signal::TERM);
        match exit_within(&mut child, Duration::from_secs(60)) {
            Some(status) => status.code(),
            None => {
                let _ = child.wait();
                panic!("cairn-server did not stop within 60 s of SIGTERM");
            }
        }
    }

    /// SIGSTOP: the process freezes (a long GC pause, a hung VM).
    pub fn pause(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, rustix::process::Signal::STOP);
        }
    }

    /// SIGCONT after [`Self::pause`].
    pub fn resume(&self) {
        if let Some(pid) = self.pid() {
            signal(pid, rustix::process::Signal::CONT);
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// Starts the process again without waiting (see [`Self::launch`]).
    pub fn relaunch(&mut self) {
        assert!(self.child.is_none(), "relaunch a stopped or killed server");
        self.launch_process().expect("relaunch cairn-server");
    }

    /// Starts the server again on the same data directory and port.
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "restart a stopped or killed server");
        self.spawn().expect("restart cairn-server");
    }

    pub fn log_text(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Fails on ERROR lines not declared in `allowed_errors`.
    pub fn check_log(&mut self) {
        let Ok(file) = fs::File::open(&self.log) else {
            return;
        };
        let mut offset = 0u64;
        let mut bad = Vec::new();
        for line in BufReader::new(file).lines().map_while(Result::ok) {
            offset += line.len() as u64 + 1;
            if offset <= self.checked {
                continue;
            }
            if is_unexpected_error(&line, &self.options.allowed_errors) {
                bad.push(line);
            }
        }
        self.checked = offset;
        assert!(
            bad.is_empty(),
            "cairn-server logged unexpected errors:\n{}",
            bad.join("\n")
        );
    }

    /// `Authorization` header value for the read-write token.
    pub fn auth(&self) -> String {
        format!("Bearer {}", self.token)
    }

    /// URL of `path` in the `default` share.
    pub fn object_url(&self, path: &str) -> String {
        format!("{}/v1/default/{}", self.url, path.trim_start_matches('/'))
    }

    /// Number of chunk files on disk.
    pub fn chunk_files(&self) -> usize {
        let root = self.data_dir.join("chunks");
        let Ok(dirs) = fs::read_dir(&root) else {
            return 0;
        };
        dirs.filter_map(Result::ok)
            .filter(|d| d.file_name().len() == 2)
            .map(|d| fs::read_dir(d.path()).map(|e| e.count()).unwrap_or(0))
            .sum()
    }

    /// Paths of the chunk files on disk.
    pub fn chunk_paths(&self) -> Vec<PathBuf> {
        let root = self.data_dir.join("chunks");
        let mut out = Vec::new();
        for d in fs::read_dir(&root)
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
        {
            if d.file_name().len() == 2 {
                out.extend(
                    fs::read_dir(d.path())
                        .into_iter()
                        .flatten()
                        .filter_map(Result::ok)
                        .map(|e| e.path()),
                );
            }
        }
        out
    }
}

fn is_unexpected_error(line: &str, allowed: &[String]) -> bool {
    let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
        // Not JSON: a panic message or a crash; treat panics as errors.
        return line.contains("panicked at");
    };
    if v["level"].as_str() != Some("ERROR") {
        return false;
    }
    !allowed.iter().any(|a| line.contains(a.as_str()))
}

/// Sends `sig` to process `pid`.
pub fn signal(pid: u32, sig: rustix::process::Signal) {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw);
    if let Some(pid) = pid {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
        if !std::thread::panicking() {
            self.check_log();
        }
    }
}

/// Deterministic pseudo-random bytes (fast, seedable) for test files.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while out.len() < len {
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let v = x.wrapping_mul(0x2545_F491_4F6C_DD1D);
        let take = (len - out.len()).min(8);
        out.extend_from_slice(&v.to_le_bytes()[..take]);
    }
    out
}

/// The workspace root (for scripts under tests/scripts).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}

/// Runs a script and fails the test with its output if it fails.
pub fn run_script(cmd: &mut Command) {
    let out = cmd.output().expect("run script");
    let text = format!(
        "stdout:\n{}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "script failed ({}):\n{text}",
        out.status
    );
    println!("{text}");
}

/// `cairn get REMOTE FIFO` (through `run`, which runs the CLI with the
/// arguments given and returns its output) with a reader on the FIFO: the
/// `len` bytes it read. Panics unless the CLI succeeded and the FIFO is
/// still one afterwards (a download renamed over it would have replaced
/// it, as one once replaced /dev/null).
pub fn get_into_fifo(
    run: impl Fn(&[&str]) -> std::process::Output,
    remote: &str,
    len: usize,
) -> Vec<u8> {
    use std::io::Read;
    use std::os::unix::fs::FileTypeExt;
    let dir = tempfile::tempdir().expect("temporary directory");
    let fifo = dir.path().join("pipe");
    let made = Command::new("mkfifo").arg(&fifo).status();
    assert!(made.is_ok_and(|s| s.success()), "mkfifo failed");
    // Opened for reading and writing, which does not wait for a writer.
    let mut pipe = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&fifo)
        .expect("open the FIFO");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut got = vec![0u8; len];
        let _ = tx.send(pipe.read_exact(&mut got).map(|()| got));
    });
    let out = run(&["get", remote, &fifo.display().to_string()]);
    assert!(
        out.status.success(),
        "cairn get into a FIFO failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got = rx
        .recv_timeout(Duration::from_secs(30))
        .expect("nothing arrived through the FIFO")
        .expect("read from the FIFO");
    let kind = fs::symlink_metadata(&fifo)
        .expect("stat the FIFO")
        .file_type();
    assert!(kind.is_fifo(), "the FIFO was replaced: {kind:?}");
    got
}

/// The exit status of `child` once it has exited, if it does within
/// `limit`; `None` if it is still running then, after a `kill -9` (not yet
/// reaped: `wait` for it).
pub fn exit_within(
    child: &mut std::process::Child,
    limit: Duration,
) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
