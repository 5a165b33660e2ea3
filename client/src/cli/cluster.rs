//! `cairn cluster`: the cluster's status and membership.

use cairn_client::{ClientError, HttpClient};
use serde_json::Value;

use super::Output;

#[derive(Debug, clap::Subcommand)]
pub enum ClusterCommand {
    /// Nodes, roles, leader, term, commit index, lag and under-replicated
    /// chunks, as the first node that answers sees them.
    Status,
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
    }
}

fn field(v: &Value, key: &str) -> String {
    match v.get(key) {
        None | Some(Value::Null) => "-".into(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
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
        "{:>4}  {:<8} {:<12} {:>9} {:>5} {:>8}  {:<26} QUIC",
        "ID", "MEMBER", "ROLE", "APPLIED", "LAG", "UNDER", "HTTP"
    );
    let empty = Vec::new();
    for n in s.get("nodes").and_then(|n| n.as_array()).unwrap_or(&empty) {
        println!(
            "{:>4}  {:<8} {:<12} {:>9} {:>5} {:>8}  {:<26} {}",
            field(n, "id"),
            field(n, "membership"),
            field(n, "role"),
            field(n, "applied_index"),
            field(n, "lag"),
            field(n, "under_replicated"),
            field(n, "http"),
            field(n, "quic"),
        );
    }
}
