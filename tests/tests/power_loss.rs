//! Power loss of the whole cluster at once: every node runs under strace,
//! all three are killed together, every file each one wrote is cut back to
//! its last synced length (what the page cache would have lost), and the
//! cluster restarts. Everything acknowledged is there, whole, on every node.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_tests::cluster::{Cluster, ClusterOptions};
use cairn_tests::powerloss::cut_to_synced;
use cairn_tests::random_bytes;

/// Path -> the content hashes it may hold (one once acknowledged).
type Log = Arc<Mutex<BTreeMap<String, BTreeSet<String>>>>;

async fn uploader(c: Arc<(String, String)>, id: u64, log: Log, stop: Arc<AtomicBool>) {
    let (base, auth) = (&c.0, &c.1);
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let size = [3_000, 300_000, 5 << 20][(i % 3) as usize];
        let data = random_bytes(size, id * 10_000 + i);
        let hash = blake3::hash(&data).to_hex().to_string();
        let path = format!("u{id}/f{}", i % 15);
        let ok = http
            .put(format!("{base}/v1/default/{path}"))
            .header("Authorization", auth)
            .body(data)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        let mut log = log.lock().unwrap();
        // "" stands for "absent", possible until a write is acknowledged.
        let states = log
            .entry(path)
            .or_insert_with(|| BTreeSet::from([String::new()]));
        if ok {
            states.clear();
        }
        states.insert(hash);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cluster_power_loss_keeps_everything_acknowledged() {
    let traces = tempfile::tempdir().unwrap();
    let options = ClusterOptions {
        strace_dir: Some(traces.path().to_path_buf()),
        ..ClusterOptions::default()
    };
    let mut c = Cluster::start(3, options);
    c.wait_leader(Duration::from_secs(30)).await.unwrap();
    let log: Log = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..3)
        .map(|id| {
            let target = Arc::new((c.http(id as usize), c.auth()));
            tokio::spawn(uploader(target, id, Arc::clone(&log), Arc::clone(&stop)))
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(6)).await;

    // The power goes out everywhere at once, mid-load.
    for n in &mut c.nodes {
        n.kill9_wrapped();
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    let mut dropped = 0;
    for (i, n) in c.nodes.iter().enumerate() {
        let prefix = traces.path().join(format!("node-{}", i + 1));
        let cut = cut_to_synced(&prefix, &n.data_dir).unwrap();
        eprintln!(
            "node {}: {} files cut, {} unsynced bytes dropped",
            i + 1,
            cut.files_cut,
            cut.bytes_dropped
        );
        for (path, synced, len) in &cut.details {
            eprintln!("  {}: {len} -> {synced} bytes", path.display());
        }
        dropped += cut.bytes_dropped;
    }
    assert!(
        dropped > 0,
        "the power cut dropped nothing: the trace saw no writes"
    );

    // Power back: the nodes start (without strace) and elect a leader.
    for n in &mut c.nodes {
        n.options.wrapper.clear();
        n.relaunch();
    }
    for n in &mut c.nodes {
        n.wait_started().unwrap();
    }
    c.wait_leader(Duration::from_secs(30)).await.unwrap();
    c.wait_converged(Duration::from_secs(30)).await.unwrap();

    let log = std::mem::take(&mut *log.lock().unwrap());
    let acked = log.values().filter(|s| !s.contains("")).count();
    assert!(acked >= 10, "only {acked} paths had an acknowledged write");
    let http = reqwest::Client::new();
    for (path, states) in &log {
        for i in 0..3 {
            let resp = http
                .get(format!("{}/v1/default/{path}", c.http(i)))
                .header("Authorization", c.auth())
                .send()
                .await
                .unwrap();
            let status = resp.status();
            let body = resp.bytes().await.unwrap();
            if status == reqwest::StatusCode::NOT_FOUND {
                assert!(states.contains(""), "{path} lost on node {i}: {states:?}");
                continue;
            }
            assert!(status.is_success(), "GET {path} on node {i}: {status}");
            let hash = blake3::hash(&body).to_hex().to_string();
            assert!(
                states.contains(&hash),
                "{path} on node {i}: content {hash} not in {states:?}"
            );
        }
    }
}
