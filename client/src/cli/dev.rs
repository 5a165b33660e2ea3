//! `cairn dev`: a local cluster in the foreground, for development and the
//! quick start. It starts `cairn-server` processes on loopback under `--dir`
//! (certificates, one directory per node), creates the share `default` with
//! dev tokens, and writes `DIR/env` and `DIR/nodes.json` for scripts.

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
    /// Number of nodes (1 runs a single node without replication).
    #[arg(long, default_value_t = 3)]
    nodes: u32,
    /// Where the cluster keeps its data, configuration and env file.
    #[arg(long, default_value = "./cairn-dev")]
    dir: PathBuf,
    /// HTTP port of the first node; node N listens on this port + N - 1.
    #[arg(long, default_value_t = 8080)]
    http_port: u16,
    /// Node-to-node QUIC port of the first node (default: HTTP port + 100).
    #[arg(long)]
    quic_port: Option<u16>,
    /// The cairn-server binary (default: next to this cairn, then PATH).
    #[arg(long, env = "CAIRN_SERVER_BIN")]
    server_bin: Option<PathBuf>,
    /// Also mount the share `default` here (FUSE), until the cluster stops.
    #[arg(long)]
    mount: Option<PathBuf>,
}

/// One node of the dev cluster.
struct DevNode {
    id: u32,
    dir: PathBuf,
    http: String,
    quic: String,
    child: Child,
}

pub async fn run(args: DevArgs) -> anyhow::Result<()> {
    if args.nodes == 0 || args.nodes > 9 {
        bail!("--nodes must be between 1 and 9");
    }
    if args.mount.is_some() && args.nodes < 2 {
        bail!("--mount needs the native protocol, which a cluster of 2 or more nodes serves");
    }
    std::fs::create_dir_all(&args.dir)
        .with_context(|| format!("creating {}", args.dir.display()))?;
    let dir = args.dir.canonicalize()?;
    let env_file = dir.join("env");
    let _ = std::fs::remove_file(&env_file);
    let _ = std::fs::remove_file(dir.join("nodes.json"));
    let token = read_or_create_secret(&dir.join("token"))?;
    let read_token = read_or_create_secret(&dir.join("read-token"))?;
    let admin_token = read_or_create_secret(&dir.join("admin-token"))?;
    let bin = server_binary(args.server_bin)?;
    let quic_port = args.quic_port.unwrap_or(args.http_port.saturating_add(100));
    let members: Vec<Member> = (1..=args.nodes)
        .map(|id| {
            let offset = u16::try_from(id - 1).unwrap_or(0);
            Member {
                id,
                http: format!("http://127.0.0.1:{}", args.http_port.saturating_add(offset)),
                http_port: args.http_port.saturating_add(offset),
                quic: format!("127.0.0.1:{}", quic_port.saturating_add(offset)),
            }
        })
        .collect();
    if args.nodes > 1 {
        make_certificates(&bin, &dir, args.nodes).await?;
    }

    let mut nodes = Vec::new();
    for m in &members {
        let node_dir = dir.join(format!("node-{}", m.id));
        std::fs::create_dir_all(&node_dir)?;
        let config = node_dir.join("cairn.toml");
        let cluster = (args.nodes > 1).then_some(members.as_slice());
        let secrets = [token.as_str(), read_token.as_str(), admin_token.as_str()];
        std::fs::write(&config, node_config(&node_dir, m, cluster, secrets))?;
        let ready = node_dir.join("ready.json");
        let _ = std::fs::remove_file(&ready);
        let child = Command::new(&bin)
            .arg("--config")
            .arg(&config)
            .arg("--ready-file")
            .arg(&ready)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        nodes.push(DevNode {
            id: m.id,
            dir: node_dir,
            http: m.http.clone(),
            quic: m.quic.clone(),
            child,
        });
    }
    for n in &mut nodes {
        let ready = n.dir.join("ready.json");
        wait_ready(&mut n.child, &ready, &n.http)
            .await
            .with_context(|| format!("node {}", n.id))?;
    }
    write_nodes_json(&dir, &nodes)?;

    let all: Vec<&str> = nodes.iter().map(|n| n.http.as_str()).collect();
    let mut env = format!(
        "export CAIRN_URL={}\nexport CAIRN_NODES={}\nexport CAIRN_TOKEN={token}\nexport CAIRN_READ_TOKEN={read_token}\nexport CAIRN_ADMIN_TOKEN={admin_token}\nexport CAIRN_SHARE=default\n",
        nodes[0].http,
        all.join(",")
    );
    if args.nodes > 1 {
        // The native protocol: the nodes' QUIC ports and the CA to trust.
        let quic: Vec<&str> = nodes.iter().map(|n| n.quic.as_str()).collect();
        let ca = dir.join("tls").join("ca").join("ca.pem");
        env.push_str(&format!(
            "export CAIRN_QUIC={}\nexport CAIRN_CA={}\n",
            quic.join(","),
            ca.display()
        ));
    }
    let tmp = dir.join("env.tmp");
    std::fs::write(&tmp, env)?;
    std::fs::rename(&tmp, &env_file)?;
    print_summary(&dir, &nodes, &token, &read_token);
    if let Some(at) = &args.mount {
        let quic: Vec<&str> = nodes.iter().map(|n| n.quic.as_str()).collect();
        mount_share(&dir, at, &quic.join(","), &token)?;
    }

    let result = supervise(&mut nodes, args.mount.as_deref()).await;
    let _ = std::fs::remove_file(&env_file);
    result
}

struct Member {
    id: u32,
    http: String,
    http_port: u16,
    quic: String,
}

fn print_summary(dir: &Path, nodes: &[DevNode], token: &str, read_token: &str) {
    println!("Cairn dev cluster: {} node(s)", nodes.len());
    for n in nodes {
        println!(
            "  node {}   {}   quic {}   pid {}   data {}",
            n.id,
            n.http,
            n.quic,
            n.child.id().unwrap_or(0),
            n.dir.join("data").display()
        );
    }
    println!("  share    default");
    println!("  token    {token}   (read-write; read-only: {read_token})");
    println!("  env      source {}", dir.join("env").display());
    println!("  nodes    {}", dir.join("nodes.json").display());
    println!(
        "Try: curl -H \"Authorization: Bearer $CAIRN_TOKEN\" -T README.md $CAIRN_URL/v1/default/README.md"
    );
    println!("Ctrl-C stops the cluster.");
}

/// `DIR/nodes.json`: what scripts need to find (and kill) a node.
fn write_nodes_json(dir: &Path, nodes: &[DevNode]) -> anyhow::Result<()> {
    let list: Vec<serde_json::Value> = nodes
        .iter()
        .map(|n| {
            serde_json::json!({
                "id": n.id,
                "pid": n.child.id(),
                "http": n.http,
                "quic": n.quic,
                "data_dir": n.dir.join("data"),
                "config": n.dir.join("cairn.toml"),
            })
        })
        .collect();
    let body = serde_json::to_string_pretty(&serde_json::json!({ "nodes": list }))?;
    let tmp = dir.join("nodes.json.tmp");
    std::fs::write(&tmp, body)?;
    std::fs::rename(&tmp, dir.join("nodes.json"))?;
    Ok(())
}

/// A cluster CA under `DIR/tls/ca` and a certificate per node, made once
/// and kept across restarts.
async fn make_certificates(bin: &Path, dir: &Path, nodes: u32) -> anyhow::Result<()> {
    let ca = dir.join("tls").join("ca");
    if !ca.join("ca-key.pem").exists() {
        run_tool(bin, &["tls", "init", "--dir"], &[&ca]).await?;
    }
    for id in 1..=nodes {
        let out = dir.join(format!("node-{id}")).join("tls");
        if !out.join("node.pem").exists() {
            let name = format!("node-{id}");
            let status = Command::new(bin)
                .args(["tls", "issue", "--ca-dir"])
                .arg(&ca)
                .arg("--out")
                .arg(&out)
                .args(["--name", &name])
                .stdout(Stdio::null())
                .status()
                .await?;
            if !status.success() {
                bail!("cairn-server tls issue failed for {name}");
            }
        }
    }
    Ok(())
}

async fn run_tool(bin: &Path, args: &[&str], paths: &[&Path]) -> anyhow::Result<()> {
    let status = Command::new(bin)
        .args(args)
        .args(paths)
        .stdout(Stdio::null())
        .status()
        .await
        .with_context(|| format!("running {}", bin.display()))?;
    if !status.success() {
        bail!("{} {} failed", bin.display(), args.join(" "));
    }
    Ok(())
}

fn node_config(
    node_dir: &Path,
    me: &Member,
    cluster: Option<&[Member]>,
    [token, read_token, admin_token]: [&str; 3],
) -> String {
    let mut config = format!(
        r#"# Written by `cairn dev`; rewritten at every start.
node_id = {id}
data_dir = "{data}"
http_listen = "127.0.0.1:{port}"
free_bytes_min = 67108864
admin_token = "{admin_token}"

[[shares]]
name = "default"
tokens = [
  {{ token = "{token}", access = "read_write" }},
  {{ token = "{read_token}", access = "read" }},
]
"#,
        id = me.id,
        data = node_dir.join("data").display(),
        port = me.http_port,
    );
    if let Some(members) = cluster {
        config.push_str(&format!(
            "\n[cluster]\nquic_listen = \"{quic}\"\ntls_dir = \"{tls}\"\n",
            quic = me.quic,
            tls = node_dir.join("tls").display()
        ));
        for m in members {
            config.push_str(&format!(
                "\n[[cluster.initial_members]]\nid = {}\nquic = \"{}\"\nhttp = \"{}\"\n",
                m.id, m.quic, m.http
            ));
        }
    }
    config
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

/// Runs until SIGTERM/SIGINT, then stops every node. A node that dies
/// meanwhile (killed to watch the cluster carry on, say) is reported, and
/// the others keep running.
async fn supervise(nodes: &mut [DevNode], mounted: Option<&Path>) -> anyhow::Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut exited = vec![false; nodes.len()];
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        for (n, done) in nodes.iter_mut().zip(exited.iter_mut()) {
            if !*done && let Some(status) = n.child.try_wait()? {
                *done = true;
                eprintln!(
                    "cairn dev: node {} exited ({status}); the others carry on",
                    n.id
                );
            }
        }
        if exited.iter().all(|d| *d) {
            bail!("every node has exited");
        }
    }
    eprintln!("cairn dev: stopping");
    if let Some(at) = mounted {
        // Before the nodes: the mount logs its session off on the way out.
        unmount_share(at).await;
    }
    for n in nodes.iter() {
        if let Some(pid) = n
            .child
            .id()
            .and_then(|p| rustix::process::Pid::from_raw(p as i32))
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
    }
    for n in nodes.iter_mut() {
        if tokio::time::timeout(Duration::from_secs(40), n.child.wait())
            .await
            .is_err()
        {
            n.child.kill().await?;
        }
    }
    Ok(())
}

/// Mounts the share `default` at `at` (the mount runs on in the
/// background until unmounted).
fn mount_share(dir: &Path, at: &Path, quic: &str, token: &str) -> anyhow::Result<()> {
    std::fs::create_dir_all(at).with_context(|| format!("creating {}", at.display()))?;
    let ca = dir.join("tls").join("ca").join("ca.pem");
    let log = format!("log={}", dir.join("mount.log").display());
    let status = super::mount::command(quic, "default", at, Some(&ca), &[log])
        .env("CAIRN_TOKEN", token)
        .status()
        .context("running cairn-mount")?;
    if !status.success() {
        bail!(
            "mounting {} failed ({status}); see {}",
            at.display(),
            dir.join("mount.log").display()
        );
    }
    println!("Mounted share default at {}", at.display());
    Ok(())
}

/// Unmounts `at`, detaching it if files are still open, and waits a moment
/// for the mount to log off.
async fn unmount_share(at: &Path) {
    use rustix::mount::{UnmountFlags, unmount};
    if unmount(at, UnmountFlags::empty()).is_err() {
        let _ = unmount(at, UnmountFlags::DETACH);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
}
