//! `cairn dev`: a local cluster in the foreground, for development and the
//! quick start. It starts `cairn-server` processes under `--dir`, creates the
//! share `default` with a dev token, and writes `DIR/env` for scripts.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};

/// How long a node may take to come up.
const START_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, clap::Args)]
pub struct DevArgs {
    /// Number of nodes. One until replication lands.
    #[arg(long, default_value_t = 1)]
    nodes: u32,
    /// Where the cluster keeps its data, configuration and env file.
    #[arg(long, default_value = "./cairn-dev")]
    dir: PathBuf,
    /// HTTP port of the first node.
    #[arg(long, default_value_t = 8080)]
    http_port: u16,
    /// The cairn-server binary (default: next to this cairn, then PATH).
    #[arg(long, env = "CAIRN_SERVER_BIN")]
    server_bin: Option<PathBuf>,
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    if args.nodes != 1 {
        bail!(
            "--nodes {}: this build runs single-node clusters only (multi-node needs replication)",
            args.nodes
        );
    }
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let dir = args.dir.canonicalize()?;
    let env_file = dir.join("env");
    let _ = std::fs::remove_file(&env_file);
    let token = read_or_create_secret(&dir.join("token"))?;
    let read_token = read_or_create_secret(&dir.join("read-token"))?;
    let node_dir = dir.join("node-1");
    std::fs::create_dir_all(&node_dir)?;
    let config = node_dir.join("cairn.toml");
    std::fs::write(
        &config,
        node_config(&node_dir, args.http_port, &token, &read_token),
    )?;

    let bin = server_binary(args.server_bin)?;
    let ready = node_dir.join("ready.json");
    let _ = std::fs::remove_file(&ready);
    let mut child = Command::new(&bin)
        .arg("--config")
        .arg(&config)
        .arg("--ready-file")
        .arg(&ready)
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let url = format!("http://127.0.0.1:{}", args.http_port);
    wait_ready(&mut child, &ready, &url).await?;

    let env = format!(
        "export CAIRN_URL={url}\nexport CAIRN_TOKEN={token}\nexport CAIRN_READ_TOKEN={read_token}\nexport CAIRN_SHARE=default\n"
    );
    let tmp = dir.join("env.tmp");
    std::fs::write(&tmp, env)?;
    std::fs::rename(&tmp, &env_file)?;
    println!("Cairn dev cluster: 1 node");
    println!(
        "  node 1   {url}   (data in {})",
        node_dir.join("data").display()
    );
    println!("  share    default");
    println!("  token    {token}   (read-write; read-only: {read_token})");
    println!("  env      source {}", env_file.display());
    println!(
        "Try: curl -H \"Authorization: Bearer $CAIRN_TOKEN\" -T README.md $CAIRN_URL/v1/default/README.md"
    );
    println!("Ctrl-C stops the cluster.");

    let status = supervise(&mut child).await?;
    let _ = std::fs::remove_file(&env_file);
    if !status.success() {
        bail!("node 1 exited with {status}");
    }
    Ok(())
}

fn node_config(node_dir: &Path, port: u16, token: &str, read_token: &str) -> String {
    format!(
        r#"# Written by `cairn dev`; rewritten at every start.
node_id = 1
data_dir = "{data}"
http_listen = "127.0.0.1:{port}"
free_bytes_min = 67108864

[[shares]]
name = "default"
tokens = [
  {{ token = "{token}", access = "read_write" }},
  {{ token = "{read_token}", access = "read" }},
]
"#,
        data = node_dir.join("data").display()
    )
}

/// A dev secret kept across restarts so scripts keep working.
fn read_or_create_secret(path: &Path) -> anyhow::Result<String> {
    if let Ok(s) = std::fs::read_to_string(path) {
        let s = s.trim();
        if s.len() >= 16 {
            return Ok(s.to_owned());
        }
    }
    let secret = format!("dev-{:032x}", rand::random::<u128>());
    std::fs::write(path, &secret)?;
    Ok(secret)
}

fn server_binary(explicit: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p);
    }
    let sibling = std::env::current_exe()?.with_file_name("cairn-server");
    if sibling.exists() {
        return Ok(sibling);
    }
    Ok(PathBuf::from("cairn-server"))
}

async fn wait_ready(child: &mut Child, ready: &Path, url: &str) -> anyhow::Result<()> {
    let started = Instant::now();
    let http = reqwest::Client::new();
    while started.elapsed() < START_TIMEOUT {
        if let Some(status) = child.try_wait()? {
            bail!("cairn-server exited during startup with {status}; see its log above");
        }
        if ready.exists()
            && let Ok(r) = http.get(format!("{url}/health")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!(
        "cairn-server did not become healthy within {} s",
        START_TIMEOUT.as_secs()
    )
}

/// Waits for the node to exit, passing SIGTERM/SIGINT on to it.
async fn supervise(child: &mut Child) -> anyhow::Result<std::process::ExitStatus> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        status = child.wait() => return Ok(status?),
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    eprintln!("cairn dev: stopping");
    if let Some(pid) = child
        .id()
        .and_then(|p| rustix::process::Pid::from_raw(p as i32))
    {
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }
    match tokio::time::timeout(Duration::from_secs(40), child.wait()).await {
        Ok(status) => Ok(status?),
        Err(_) => {
            child.kill().await?;
            Ok(child.wait().await?)
        }
    }
}
