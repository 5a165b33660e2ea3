//! Cluster benchmarks, each against a baseline measured in the same run:
//!
//! - failover stall: under steady writes from four clients (the `cairn`
//!   client library, which fails over between nodes), `kill -9` of the
//!   leader, 20 times; the stall is the time from the kill until a write
//!   started after it succeeds. p50, p99, max. Target: p99 < 1 s,
//!   max < 2 s.
//! - replicated 1 GiB PUT on 3 local nodes vs a single-node PUT and vs
//!   dd conv=fsync / 3 (three copies share one disk here). Target:
//!   >= 0.8 x dd/3.
//!
//!     cargo build --release --bins && target/release/cairn-bench-cluster [--quick]

#[path = "common.rs"]
#[allow(dead_code)]
mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_client::http::RetryPolicy;
use cairn_client::{HttpClient, RemotePath};
use cairn_proto::ShareName;
use cairn_tests::cluster::{Cluster, ClusterOptions};
use cairn_tests::{Server, ServerOptions, random_bytes};
use clap::Parser;
use common::{dd_mib_s, mib_s, stall_ms, summarize, timed_put};
use serde::Serialize;

#[derive(Parser)]
#[command(about = "Cairn cluster benchmarks with same-run baselines")]
struct Args {
    /// 5 kills and 256 MiB instead of 20 and 1 GiB (not the targets').
    #[arg(long)]
    quick: bool,
    /// Where dd writes its baseline file (the disk the nodes use).
    #[arg(long, default_value = "/var/tmp/cairn-bench-cluster")]
    dir: PathBuf,
    #[arg(long, default_value = "target/bench/cluster.json")]
    out: PathBuf,
}

#[derive(Serialize)]
struct Stall {
    kills: usize,
    p50_ms: f64,
    p99_ms: f64,
    max_ms: f64,
    all_ms: Vec<f64>,
    target: &'static str,
}

#[derive(Serialize)]
struct Put {
    mib: u64,
    replicated_mib_s: f64,
    single_node_mib_s: f64,
    dd_mib_s: f64,
    ratio_to_dd_over_3: f64,
    ratio_to_single_node: f64,
    target: &'static str,
}

#[derive(Serialize)]
struct Report {
    benchmark: &'static str,
    quick: bool,
    failover_stall: Stall,
    replicated_put: Put,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = fs::remove_dir_all(&args.dir);
    fs::create_dir_all(&args.dir)?;
    let (kills, mib) = if args.quick { (5, 256) } else { (20, 1024) };

    eprintln!("--- failover stall: {kills} leader kills under steady writes");
    let failover_stall = failover(kills).await?;
    eprintln!("--- replicated PUT of {mib} MiB vs single node vs dd / 3");
    let replicated_put = put(&args.dir, mib).await?;

    println!(
        "{:<28} {:>10} {:>10} {:>10}   target",
        "failover stall", "p50 ms", "p99 ms", "max ms"
    );
    println!(
        "{:<28} {:>10.0} {:>10.0} {:>10.0}   {}",
        format!("{kills} kill -9 of the leader"),
        failover_stall.p50_ms,
        failover_stall.p99_ms,
        failover_stall.max_ms,
        failover_stall.target
    );
    println!(
        "{:<28} {:>10} {:>10} {:>10} {:>10} {:>8}   target",
        "PUT MiB/s", "3 nodes", "1 node", "dd", "dd / 3", "ratio"
    );
    let p = &replicated_put;
    println!(
        "{:<28} {:>10.1} {:>10.1} {:>10.1} {:>10.1} {:>8.2}   {}",
        format!("{mib} MiB"),
        p.replicated_mib_s,
        p.single_node_mib_s,
        p.dd_mib_s,
        p.dd_mib_s / 3.0,
        p.ratio_to_dd_over_3,
        p.target
    );
    let report = Report {
        benchmark: "cluster",
        quick: args.quick,
        failover_stall,
        replicated_put,
    };
    if let Some(parent) = args.out.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::write(&args.out, serde_json::to_string_pretty(&report)?)?;
    eprintln!("wrote {}", args.out.display());
    let _ = fs::remove_dir_all(&args.dir);
    Ok(())
}

/// Completed writes: (started, finished).
type Done = Arc<Mutex<Vec<(Instant, Instant)>>>;

async fn writer(client: HttpClient, id: usize, done: Done, stop: Arc<AtomicBool>) {
    let share = ShareName::parse("default").unwrap_or_else(|_| unreachable!());
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let Ok(target) = RemotePath::parse(&share, &format!("stall/{id}/{}", i % 50)) else {
            continue;
        };
        let started = Instant::now();
        let body = Bytes::from(format!("write {i} of client {id}"));
        if client.put_bytes(&target, body).await.is_ok() {
            done.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push((started, Instant::now()));
        }
    }
}

async fn failover(kills: usize) -> anyhow::Result<Stall> {
    let options = ClusterOptions {
        server: ServerOptions {
            log_filter: "info".into(),
            ..ClusterOptions::default().server
        },
        ..ClusterOptions::default()
    };
    let mut c = Cluster::start(3, options);
    c.wait_leader(Duration::from_secs(30)).await?;
    let done: Done = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut writers = Vec::new();
    for id in 0..4 {
        let client =
            HttpClient::new(&c.urls(), Some(c.nodes[0].token.clone()))?.with_retry(RetryPolicy {
                deadline: Duration::from_secs(30),
                backoff_initial: Duration::from_millis(20),
                backoff_max: Duration::from_millis(200),
            });
        writers.push(tokio::spawn(writer(
            client,
            id,
            Arc::clone(&done),
            Arc::clone(&stop),
        )));
    }
    let mut stalls = Vec::new();
    for k in 0..kills {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let leader = c.wait_leader(Duration::from_secs(30)).await?;
        let killed_at = Instant::now();
        c.nodes[leader].kill9();
        let stall = stall_ms(k, killed_at, || {
            done.lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .filter(|(s, _)| *s >= killed_at)
                .map(|(_, e)| *e)
                .min()
        })
        .await?;
        eprintln!(
            "kill {k}: node {} was leader, writes resumed after {:.0} ms",
            leader + 1,
            stall
        );
        stalls.push(stall);
        c.nodes[leader].restart();
        c.wait_converged(Duration::from_secs(30)).await?;
    }
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        let _ = w.await;
    }
    let (p50_ms, p99_ms, max_ms) = summarize(&stalls);
    Ok(Stall {
        kills,
        p50_ms,
        p99_ms,
        max_ms,
        all_ms: stalls,
        target: "p99 < 1000 ms, max < 2000 ms",
    })
}

async fn put(dir: &Path, mib: u64) -> anyhow::Result<Put> {
    let bytes = mib << 20;
    let data = Bytes::from(random_bytes(bytes as usize, 42));
    let http = reqwest::Client::new();
    let dd = (dd_mib_s(&dir.join("dd.bin"), bytes)? + dd_mib_s(&dir.join("dd.bin"), bytes)?) / 2.0;

    let single = Server::start_with(ServerOptions {
        log_filter: "info".into(),
        ..Default::default()
    });
    let single_secs = timed_put(
        &http,
        &format!("{}/v1/default/big.bin", single.url),
        &single.auth(),
        data.clone(),
    )
    .await?;
    drop(single);

    let options = ClusterOptions {
        server: ServerOptions {
            log_filter: "info".into(),
            ..ClusterOptions::default().server
        },
        ..ClusterOptions::default()
    };
    let c = Cluster::start(3, options);
    let leader = c.wait_leader(Duration::from_secs(30)).await?;
    // Through a follower: the path most clients take (any node serves).
    let via = (leader + 1) % 3;
    let replicated_secs = timed_put(
        &http,
        &format!("{}/v1/default/big.bin", c.http(via)),
        &c.auth(),
        data,
    )
    .await?;
    let replicated = mib_s(bytes, replicated_secs);
    let single = mib_s(bytes, single_secs);
    Ok(Put {
        mib,
        replicated_mib_s: replicated,
        single_node_mib_s: single,
        dd_mib_s: dd,
        ratio_to_dd_over_3: replicated / (dd / 3.0),
        ratio_to_single_node: replicated / single,
        target: ">= 0.8 x dd / 3",
    })
}
