//! A cluster of real `cairn-server` processes: N nodes with a fresh
//! cluster CA, on loopback or on test hosts (network namespaces), which a
//! test can kill, pause, restart and partition.

use std::net::{Ipv4Addr, TcpListener, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::netns::Host;
use crate::{Server, ServerOptions, binary};

/// Options for every node of a cluster.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    pub server: ServerOptions,
    /// More lines for each node's `[cluster]` table.
    pub cluster_extra: String,
    /// Indexes of the nodes that are witnesses (metadata only).
    pub witnesses: Vec<usize>,
    /// Run every node under strace, logging to `DIR/node-N.TID` (see
    /// [`crate::powerloss`]).
    pub strace_dir: Option<std::path::PathBuf>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            server: ServerOptions {
                // openraft logs failed RPCs to a killed or cut-off peer as
                // errors; those are what these tests cause on purpose.
                allowed_errors: vec!["openraft::".into()],
                ..ServerOptions::default()
            },
            cluster_extra: String::new(),
            witnesses: Vec::new(),
            strace_dir: None,
        }
    }
}

/// Where one node listens.
#[derive(Clone, Debug)]
struct Addrs {
    ip: Ipv4Addr,
    http_port: u16,
    quic_port: u16,
}

impl Addrs {
    fn http(&self) -> String {
        format!("http://{}:{}", self.ip, self.http_port)
    }

    fn quic(&self) -> String {
        format!("{}:{}", self.ip, self.quic_port)
    }
}

/// One cluster at a time per test binary: three nodes with 250 ms election
/// timeouts already share two cores with the test's own load.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

pub struct Cluster {
    pub nodes: Vec<Server>,
    /// Held for the cluster's life (dropped after the nodes are killed).
    _turn: std::sync::MutexGuard<'static, ()>,
    /// On test hosts: the host the test's own requests come from (the
    /// nodes' addresses exist only inside the namespaces).
    pub client_host: Option<Host>,
    addrs: Vec<Addrs>,
    options: ClusterOptions,
    tls: tempfile::TempDir,
}

/// A port free for both TCP and UDP on loopback, outside the ephemeral
/// range (so outgoing connections cannot take it meanwhile).
fn free_port_pair() -> (u16, u16) {
    loop {
        let base = 12_000 + (rand::random::<u16>() % 18_000);
        let (http, quic) = (base, base + 1);
        if TcpListener::bind((Ipv4Addr::LOCALHOST, http)).is_ok()
            && UdpSocket::bind((Ipv4Addr::LOCALHOST, quic)).is_ok()
        {
            return (http, quic);
        }
    }
}

fn run_tool(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(binary("cairn-server")).args(args).output()?;
    if !out.status.success() {
        bail!(
            "cairn-server {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

impl Cluster {
    /// `n` nodes on loopback.
    pub fn start(n: usize, options: ClusterOptions) -> Self {
        let addrs = (0..n)
            .map(|_| {
                let (http_port, quic_port) = free_port_pair();
                Addrs {
                    ip: Ipv4Addr::LOCALHOST,
                    http_port,
                    quic_port,
                }
            })
            .collect();
        Self::start_at(addrs, None, options).expect("start cluster")
    }

    /// One node per test host; requests from the test go out from
    /// `client` (a host of the same network).
    pub fn start_on(hosts: &[Host], client: &Host, options: ClusterOptions) -> Self {
        let addrs = hosts
            .iter()
            .map(|h| Addrs {
                ip: h.ip,
                http_port: 8080,
                quic_port: 7080,
            })
            .collect();
        let mut c = Self::start_at(addrs, Some(hosts), options).expect("start cluster");
        c.client_host = Some(client.clone());
        c
    }

    fn start_at(
        addrs: Vec<Addrs>,
        hosts: Option<&[Host]>,
        options: ClusterOptions,
    ) -> anyhow::Result<Self> {
        let tls = tempfile::Builder::new().prefix("cairn-tls-").tempdir()?;
        let ca = tls.path().join("ca");
        run_tool(&["tls", "init", "--dir", &ca.display().to_string()])?;
        let tokens = [
            format!("rw-{:032x}", rand::random::<u128>()),
            format!("ro-{:032x}", rand::random::<u128>()),
            format!("ot-{:032x}", rand::random::<u128>()),
        ];
        let turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let mut cluster = Self {
            nodes: Vec::new(),
            _turn: turn,
            client_host: None,
            addrs,
            options,
            tls,
        };
        let members = cluster.members_toml(cluster.addrs.len());
        for i in 0..cluster.addrs.len() {
            let host = hosts.map(|h| h[i].clone());
            let node = cluster.launch_node(i, &members, host, tokens.clone())?;
            cluster.nodes.push(node);
        }
        for node in &mut cluster.nodes {
            node.wait_started()?;
        }
        Ok(cluster)
    }

    fn members_toml(&self, count: usize) -> String {
        self.addrs[..count]
            .iter()
            .enumerate()
            .map(|(i, a)| {
                format!(
                    "[[cluster.initial_members]]\nid = {}\nquic = \"{}\"\nhttp = \"{}\"\nwitness = {}\n",
                    i + 1,
                    a.quic(),
                    a.http(),
                    self.options.witnesses.contains(&i),
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn launch_node(
        &self,
        i: usize,
        members: &str,
        host: Option<Host>,
        tokens: [String; 3],
    ) -> anyhow::Result<Server> {
        let a = &self.addrs[i];
        let tls_dir = self.tls.path().join(format!("node-{}", i + 1));
        run_tool(&[
            "tls",
            "issue",
            "--ca-dir",
            &self.tls.path().join("ca").display().to_string(),
            "--out",
            &tls_dir.display().to_string(),
            "--name",
            &format!("node-{}", i + 1),
        ])?;
        let cluster_config = format!(
            "[cluster]\nquic_listen = \"{quic}\"\ntls_dir = \"{tls}\"\nadvertise_http = \"{http}\"\nwitness = {witness}\n{extra}\n{members}",
            witness = self.options.witnesses.contains(&i),
            quic = a.quic(),
            tls = tls_dir.display(),
            http = a.http(),
            extra = self.options.cluster_extra,
        );
        let wrapper = match &self.options.strace_dir {
            Some(dir) => crate::powerloss::strace_wrapper(&dir.join(format!("node-{}", i + 1))),
            None => Vec::new(),
        };
        let options = ServerOptions {
            wrapper,
            node_id: (i + 1) as u64,
            http_port: a.http_port,
            tokens: Some(tokens),
            host,
            cluster_config,
            ..self.options.server.clone()
        };
        Ok(Server::launch(options))
    }

    /// Starts one more node on loopback, not in the initial membership: it
    /// waits to be added (`cairn cluster add`). Returns its index.
    pub fn launch_joiner(&mut self) -> usize {
        let (http_port, quic_port) = free_port_pair();
        self.addrs.push(Addrs {
            ip: Ipv4Addr::LOCALHOST,
            http_port,
            quic_port,
        });
        let i = self.addrs.len() - 1;
        let tokens = [
            self.nodes[0].token.clone(),
            self.nodes[0].read_token.clone(),
            self.nodes[0].other_token.clone(),
        ];
        let mut node = self
            .launch_node(i, "", None, tokens)
            .expect("launch a joining node");
        node.wait_started().expect("joining node starts");
        self.nodes.push(node);
        i
    }

    /// The HTTP URL of node `i` (0-based), and its QUIC address.
    pub fn http(&self, i: usize) -> String {
        self.addrs[i].http()
    }

    pub fn quic(&self, i: usize) -> String {
        self.addrs[i].quic()
    }

    /// Every node's URL, comma-separated (the client's node list).
    pub fn urls(&self) -> String {
        (0..self.addrs.len())
            .map(|i| self.http(i))
            .collect::<Vec<_>>()
            .join(",")
    }

    pub fn auth(&self) -> String {
        self.nodes[0].auth()
    }

    /// The read-write share token itself.
    pub fn token(&self) -> String {
        self.auth().trim_start_matches("Bearer ").to_owned()
    }

    /// The cluster CA certificate native-protocol clients trust.
    pub fn ca_pem(&self) -> std::path::PathBuf {
        self.tls.path().join("ca").join("ca.pem")
    }

    /// Every node's QUIC address, in node order.
    pub fn quic_addrs(&self) -> Vec<String> {
        (0..self.addrs.len()).map(|i| self.quic(i)).collect()
    }

    /// A native-protocol client configuration for the default share,
    /// trying node `first` first.
    pub fn native_config(&self, first: Option<usize>) -> cairn_client::NativeConfig {
        let mut nodes = self.quic_addrs();
        if let Some(i) = first {
            nodes.rotate_left(i);
        }
        cairn_client::NativeConfig::new(nodes, self.ca_pem(), self.token(), "default".into())
    }

    /// What a `cairn-hold` process opens `path` with through this
    /// cluster (`first` tried first): read access, shared with every
    /// kind of access, no lease, opened or created.
    pub fn hold_spec(&self, first: Option<usize>, path: &str) -> crate::hold::HoldSpec {
        let cfg = self.native_config(first);
        crate::hold::HoldSpec {
            nodes: cfg.nodes,
            ca: cfg.ca,
            token: cfg.token,
            share: cfg.share,
            path: path.into(),
            disposition: cairn_proto::wire::Disposition::OpenOrCreate,
            access: cairn_proto::wire::access::READ,
            share_access: cairn_proto::wire::access::READ
                | cairn_proto::wire::access::WRITE
                | cairn_proto::wire::access::DELETE,
            lease: cairn_proto::wire::lease::NONE,
            write_bytes: 0,
            flush: false,
        }
    }

    /// The node (index) whose QUIC address is `addr`.
    pub fn node_at(&self, addr: &str) -> Option<usize> {
        (0..self.addrs.len()).find(|&i| self.quic(i) == addr)
    }

    /// `GET /cluster/status` from node `i`, if it answers within 2 s.
    pub async fn status(&self, i: usize) -> Option<Value> {
        let url = format!("{}/cluster/status", self.http(i));
        let (status, body) = self
            .request("GET", &url, None, Duration::from_secs(2))
            .await;
        if status != 200 {
            return None;
        }
        serde_json::from_slice(&body).ok()
    }

    /// An HTTP request with the read-write token, from the test process or,
    /// on test hosts, with curl from the client host. Returns the status
    /// (0 when there was no answer in time) and the body.
    pub async fn request(
        &self,
        method: &str,
        url: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> (u16, Vec<u8>) {
        let auth = self.auth();
        match &self.client_host {
            None => {
                let Ok(client) = reqwest::Client::builder().timeout(timeout).build() else {
                    return (0, Vec::new());
                };
                let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap_or_default();
                let mut rb = client.request(method, url).header("Authorization", auth);
                if let Some(b) = body {
                    rb = rb.body(b);
                }
                match rb.send().await {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        (
                            status,
                            resp.bytes().await.map(|b| b.to_vec()).unwrap_or_default(),
                        )
                    }
                    Err(_) => (0, Vec::new()),
                }
            }
            Some(host) => curl(host, method, url, &auth, body, timeout).await,
        }
    }

    /// The leader that the running nodes agree on (a majority of them
    /// naming it), as a node index.
    pub async fn leader(&self) -> Option<usize> {
        let mut votes = std::collections::BTreeMap::new();
        for i in 0..self.nodes.len() {
            if !self.nodes[i].is_running() {
                continue;
            }
            if let Some(l) = self.status(i).await.and_then(|s| s["leader"].as_u64()) {
                *votes.entry(l).or_insert(0usize) += 1;
            }
        }
        let running = self.nodes.iter().filter(|n| n.is_running()).count();
        votes
            .into_iter()
            .find(|(_, v)| *v * 2 > running)
            .and_then(|(id, _)| usize::try_from(id).ok())
            .map(|id| id - 1)
    }

    /// Waits until the running nodes agree on a leader.
    pub async fn wait_leader(&self, within: Duration) -> anyhow::Result<usize> {
        let started = Instant::now();
        loop {
            if let Some(l) = self.leader().await
                && self.nodes[l].is_running()
            {
                return Ok(l);
            }
            if started.elapsed() > within {
                bail!("no agreed leader within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until every running node has applied the same log index
    /// (and so holds the same metadata).
    pub async fn wait_converged(&self, within: Duration) -> anyhow::Result<u64> {
        let started = Instant::now();
        loop {
            let mut applied = Vec::new();
            for i in 0..self.nodes.len() {
                if self.nodes[i].is_running() {
                    let s = self.status(i).await;
                    applied.push(s.and_then(|s| {
                        s["nodes"].as_array().and_then(|nodes| {
                            nodes
                                .iter()
                                .find(|n| n["id"].as_u64() == Some(i as u64 + 1))
                                .and_then(|n| n["applied_index"].as_u64())
                        })
                    }));
                }
            }
            if let Some(Some(first)) = applied.first()
                && applied.iter().all(|a| *a == Some(*first))
            {
                return Ok(*first);
            }
            if started.elapsed() > within {
                bail!("nodes did not converge within {within:?}: applied {applied:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last `lines` log lines of every node, for failure messages.
    /// The value of `series` (a metric's name, with its labels if any) in
    /// node `i`'s `/metrics`; `None` if it has no such series (yet).
    pub async fn metric(&self, i: usize, series: &str) -> Option<u64> {
        let url = format!("{}/metrics", self.http(i));
        let (_, body) = self
            .request("GET", &url, None, Duration::from_secs(5))
            .await;
        String::from_utf8_lossy(&body)
            .lines()
            .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
    }

    pub fn logs(&self, lines: usize) -> String {
        let mut out = String::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let text = n.log_text();
            let all: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- node {} ---\n", i + 1));
            for l in &all[all.len().saturating_sub(lines)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }

    /// Runs the `cairn` CLI against the cluster; returns stdout.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(binary("cairn"))
            .args(args)
            .env("CAIRN_URL", self.urls())
            .env("CAIRN_TOKEN", &self.nodes[0].token)
            .output()
            .context("running cairn")?;
        if !out.status.success() {
            bail!(
                "cairn {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// One request with curl on `host`: (status, body); status 0 on no answer.
async fn curl(
    host: &Host,
    method: &str,
    url: &str,
    auth: &str,
    body: Option<Vec<u8>>,
    timeout: Duration,
) -> (u16, Vec<u8>) {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(_) => return (0, Vec::new()),
    };
    let out = dir.path().join("body");
    let mut cmd = tokio::process::Command::from(host.command("curl"));
    cmd.args(["-s", "-X", method, "-w", "%{http_code}", "-o"])
        .arg(&out)
        .args(["--max-time", &format!("{:.1}", timeout.as_secs_f64())])
        .args(["-H", &format!("Authorization: {auth}")]);
    if let Some(b) = body {
        let input = dir.path().join("input");
        if std::fs::write(&input, b).is_err() {
            return (0, Vec::new());
        }
        cmd.arg("--data-binary")
            .arg(format!("@{}", input.display()));
    }
    let Ok(output) = cmd.arg(url).output().await else {
        return (0, Vec::new());
    };
    let status = String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or(0);
    (status, std::fs::read(&out).unwrap_or_default())
}
