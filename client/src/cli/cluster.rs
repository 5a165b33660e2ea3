//! `cairn cluster`: the cluster's status and membership.

use std::time::{Duration, Instant};

use cairn_client::{ClientError, HttpClient};
use reqwest::Method;
use serde_json::Value;

use super::Output;

#[derive(Debug, clap::Subcommand)]
pub enum ClusterCommand {
    /// Nodes, roles, leader, term, commit index, lag and under-replicated
    /// chunks, as the first node that answers sees them.
    Status,
    /// Add the node listening at URL (started with a `[cluster]` table but
    /// no `initial_members`): it catches up as a learner, then votes.
    Add {
        /// The new node's HTTP URL.
        #[arg(value_name = "URL")]
        node_url: String,
        /// Admin token of the cluster (`admin_token` in its configuration).
        #[arg(long, env = "CAIRN_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: String,
    },
    /// Remove node ID: no new data is placed on it, its chunks are copied
    /// to the remaining nodes, and only then does it leave.
    Remove {
        id: u64,
        #[arg(long, env = "CAIRN_ADMIN_TOKEN", hide_env_values = true)]
        admin_token: String,
        /// How long to wait for re-replication, in seconds.
        #[arg(long, default_value_t = 3600)]
        timeout_secs: u64,
    },
}

pub async fn run(client: &HttpClient, cmd: ClusterCommand, out: Output) -> Result<(), ClientError> {
    match cmd {
        ClusterCommand::Status => {
            let status = client.cluster_status().await?;
            if out.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&status).unwrap_or_default()
                );
            } else {
                print_status(&status);
            }
            Ok(())
        }
        ClusterCommand::Add {
            node_url,
            admin_token,
        } => {
            let joiner = client
                .call_node(&node_url, Method::GET, "/cluster/status", None, None)
                .await?;
            let me = &joiner["self"];
            let body = serde_json::json!({
                "id": joiner["node"],
                "quic": me["quic"],
                "http": me["http"],
                "witness": me["witness"].as_bool().unwrap_or(false),
            });
            let status = on_leader(
                client,
                Method::POST,
                "/cluster/nodes",
                &admin_token,
                Some(&body),
            )
            .await?;
            finish(&status, out);
            Ok(())
        }
        ClusterCommand::Remove {
            id,
            admin_token,
            timeout_secs,
        } => {
            remove(
                client,
                id,
                &admin_token,
                Duration::from_secs(timeout_secs),
                out,
            )
            .await
        }
    }
}

/// The leader's HTTP URL, from the first node that knows it (a node
/// still waiting to join knows none).
async fn leader_url(client: &HttpClient) -> Result<String, ClientError> {
    client.cluster_status().await?;
    // An election may be under way: ask again for a while.
    let started = Instant::now();
    loop {
        if let Some(url) = find_leader(client).await {
            return Ok(url);
        }
        if started.elapsed() > LEADER_WAIT {
            return Err(ClientError::Invalid(
                "no node knows a leader; is a majority of the cluster up?".into(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Sends a membership change to the leader, again to the new one if the
/// leader it found is gone or steps down meanwhile.
async fn on_leader(
    client: &HttpClient,
    method: Method,
    path: &str,
    token: &str,
    body: Option<&Value>,
) -> Result<Value, ClientError> {
    let started = Instant::now();
    loop {
        let leader = leader_url(client).await?;
        match client
            .call_node(&leader, method.clone(), path, Some(token), body)
            .await
        {
            Err(e) if e.is_retryable() && started.elapsed() < LEADER_WAIT => {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            result => return result,
        }
    }
}

/// How long membership commands wait for the cluster to have a leader.
const LEADER_WAIT: Duration = Duration::from_secs(30);

async fn find_leader(client: &HttpClient) -> Option<String> {
    for base in client.nodes() {
        let Ok(status) = client
            .call_node(&base, Method::GET, "/cluster/status", None, None)
            .await
        else {
            continue;
        };
        let leader = status["leader"].as_u64();
        let url = status["nodes"]
            .as_array()
            .and_then(|nodes| nodes.iter().find(|n| n["id"].as_u64() == leader))
            .and_then(|n| n["http"].as_str());
        if let Some(url) = url {
            return Some(url.to_owned());
        }
    }
    None
}

async fn remove(
    client: &HttpClient,
    id: u64,
    token: &str,
    timeout: Duration,
    out: Output,
) -> Result<(), ClientError> {
    let path = format!("/cluster/nodes/{id}/drain");
    let status = on_leader(client, Method::POST, &path, token, None).await?;
    // Every other data node must finish two repair passes after the drain
    // (one may have started before it) with nothing left to copy.
    let start_passes = passes(&status, id);
    eprintln!("node {id} draining: waiting for its chunks to be re-replicated");
    let started = Instant::now();
    loop {
        let status = client.cluster_status().await?;
        if repaired_since(&status, id, &start_passes) {
            break;
        }
        if started.elapsed() > timeout {
            return Err(ClientError::Invalid(format!(
                "node {id} is still needed: re-replication did not finish within {} s",
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    let path = format!("/cluster/nodes/{id}");
    let status = on_leader(client, Method::DELETE, &path, token, None).await?;
    finish(&status, out);
    Ok(())
}

/// Repair passes per node (other than `except`), as `status` reports them.
fn passes(status: &Value, except: u64) -> Vec<(u64, Option<u64>)> {
    status["nodes"]
        .as_array()
        .map(|nodes| {
            nodes
                .iter()
                .filter(|n| n["id"].as_u64() != Some(except) && n["membership"] != "witness")
                .map(|n| (n["id"].as_u64().unwrap_or(0), n["repair_passes"].as_u64()))
                .collect()
        })
        .unwrap_or_default()
}

fn repaired_since(status: &Value, except: u64, start: &[(u64, Option<u64>)]) -> bool {
    let now = passes(status, except);
    let nodes = status["nodes"].as_array().cloned().unwrap_or_default();
    now.iter().all(|(id, p)| {
        let before = start
            .iter()
            .find(|(i, _)| i == id)
            .and_then(|(_, p)| *p)
            .unwrap_or(0);
        let under = nodes
            .iter()
            .find(|n| n["id"].as_u64() == Some(*id))
            .and_then(|n| n["under_replicated"].as_u64());
        p.is_some_and(|p| p >= before + 2) && under == Some(0)
    })
}

fn finish(status: &Value, out: Output) {
    if out.json {
        println!(
            "{}",
            serde_json::to_string_pretty(status).unwrap_or_default()
        );
    } else {
        print_status(status);
    }
}

fn field(v: &Value, key: &str) -> String {
    match v.get(key) {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// "FREE/TOTAL" of a node's chunk disk, FREE being the room left for
/// chunks above the metadata reserve.
fn disk_free(n: &Value) -> String {
    match (
        n["disk_free_bytes"].as_u64(),
        n["disk_total_bytes"].as_u64(),
    ) {
        (Some(free), Some(total)) => format!("{}/{}", bytes(free), bytes(total)),
        _ => "-".into(),
    }
}

/// Bytes in binary units, three significant digits at most (`57.9G`).
fn bytes(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "K", "M", "G", "T", "P"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 || value >= 100.0 {
        format!("{value:.0}{}", UNITS[unit])
    } else {
        format!("{value:.1}{}", UNITS[unit])
    }
}

fn print_status(s: &Value) {
    println!(
        "leader {}   term {}   commit index {}   under-replicated chunks {}   (answered by node {})",
        field(s, "leader"),
        field(s, "term"),
        field(s, "commit_index"),
        field(s, "under_replicated"),
        field(s, "node"),
    );
    println!(
        "{:>4}  {:<8} {:<12} {:>9} {:>5} {:>8} {:>15}  {:<26} QUIC",
        "ID", "MEMBER", "ROLE", "APPLIED", "LAG", "UNDER", "FREE", "HTTP"
    );
    let empty = Vec::new();
    for n in s.get("nodes").and_then(|n| n.as_array()).unwrap_or(&empty) {
        let member = if n["draining"].as_bool() == Some(true) {
            format!("{}*", field(n, "membership"))
        } else {
            field(n, "membership")
        };
        println!(
            "{:>4}  {:<8} {:<12} {:>9} {:>5} {:>8} {:>15}  {:<26} {}",
            field(n, "id"),
            member,
            field(n, "role"),
            field(n, "applied_index"),
            field(n, "lag"),
            field(n, "under_replicated"),
            disk_free(n),
            field(n, "http"),
            field(n, "quic"),
        );
    }
    if s["nodes"]
        .as_array()
        .is_some_and(|n| n.iter().any(|n| n["draining"].as_bool() == Some(true)))
    {
        println!("(* draining: being removed, its data moving to the other nodes)");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_counts_read_at_a_glance() {
        assert_eq!(bytes(0), "0B");
        assert_eq!(bytes(1023), "1023B");
        assert_eq!(bytes(48 << 20), "48.0M");
        assert_eq!(bytes(62_200_000_000), "57.9G");
        assert_eq!(bytes(252 << 30), "252G");
        let n = serde_json::json!({"disk_free_bytes": 0, "disk_total_bytes": 50331648u64});
        assert_eq!(disk_free(&n), "0B/48.0M");
        assert_eq!(disk_free(&serde_json::json!({})), "-");
    }
}
