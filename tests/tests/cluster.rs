//! Replication and failover on real 3- and 4-node clusters on loopback:
//! any node serves any request, a killed leader is replaced while clients
//! carry on, nothing acknowledged is lost, lost and corrupt copies are
//! repaired, nodes join, drain and leave, a witness holds metadata only.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_client::http::RetryPolicy;
use cairn_client::{HttpClient, RemotePath};
use cairn_proto::ShareName;
use cairn_tests::cluster::{Cluster, ClusterOptions};
use cairn_tests::{ServerOptions, random_bytes};
use reqwest::StatusCode;

const MIB: usize = 1 << 20;

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

async fn put(c: &Cluster, node: usize, path: &str, data: &[u8]) -> StatusCode {
    http()
        .put(format!("{}/v1/default/{path}", c.http(node)))
        .header("Authorization", c.auth())
        .body(data.to_vec())
        .send()
        .await
        .map_or(StatusCode::SERVICE_UNAVAILABLE, |r| r.status())
}

async fn get(c: &Cluster, node: usize, path: &str) -> (StatusCode, Vec<u8>) {
    let resp = http()
        .get(format!("{}/v1/default/{path}", c.http(node)))
        .header("Authorization", c.auth())
        .send()
        .await
        .unwrap();
    let status = resp.status();
    (status, resp.bytes().await.unwrap().to_vec())
}

/// Chunk files on node `i` named `hash`.
fn holds_chunk(c: &Cluster, i: usize, hash: &str) -> bool {
    c.nodes[i]
        .chunk_paths()
        .iter()
        .any(|p| p.file_name().and_then(|n| n.to_str()) == Some(hash))
}

fn chunk_hashes(data: &[u8]) -> Vec<String> {
    data.chunks(4 * MIB)
        .map(|c| blake3::hash(c).to_hex().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_replicate_and_any_node_serves_them() {
    let mut c = Cluster::start(3, ClusterOptions::default());
    c.wait_leader(Duration::from_secs(20)).await.unwrap();
    let big = random_bytes(9 * MIB, 1);
    let small = b"hello, cluster".to_vec();
    // Written through each node in turn: followers forward to the leader.
    assert_eq!(put(&c, 0, "a/big.bin", &big).await, StatusCode::CREATED);
    assert_eq!(put(&c, 1, "a/small.txt", &small).await, StatusCode::CREATED);
    assert_eq!(put(&c, 2, "b/other.txt", b"x").await, StatusCode::CREATED);
    for node in 0..3 {
        assert_eq!(
            get(&c, node, "a/big.bin").await,
            (StatusCode::OK, big.clone())
        );
        assert_eq!(
            get(&c, node, "a/small.txt").await,
            (StatusCode::OK, small.clone())
        );
        // Every chunk is on every node (3 replicas): acknowledged at 2,
        // the third copy follows in the background or by repair.
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    for hash in chunk_hashes(&big) {
        while !(0..3).all(|i| holds_chunk(&c, i, &hash)) {
            assert!(Instant::now() < deadline, "chunk {hash} not on all 3 nodes");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Kill the leader: a new one is elected, writes and reads go on.
    let leader = c.wait_leader(Duration::from_secs(10)).await.unwrap();
    c.nodes[leader].kill9();
    let other = (leader + 1) % 3;
    let started = Instant::now();
    loop {
        if put(&c, other, "a/after.txt", b"after").await == StatusCode::CREATED {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no write accepted after the leader died"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        get(&c, other, "a/big.bin").await,
        (StatusCode::OK, big.clone())
    );

    // The old leader comes back as a follower and catches up.
    c.nodes[leader].restart();
    let applied = c.wait_converged(Duration::from_secs(20)).await.unwrap();
    assert!(applied > 0);
    assert_eq!(
        get(&c, leader, "a/after.txt").await,
        (StatusCode::OK, b"after".to_vec())
    );
    let new_leader = c.wait_leader(Duration::from_secs(10)).await.unwrap();
    assert_ne!(
        new_leader, leader,
        "the restarted node took over without an election"
    );
}

/// What a client knows about one path: the states it may be in.
#[derive(Clone, Debug, Default)]
struct PathState {
    /// Content hashes it may hold (`None`: absent). One element once an
    /// operation on it was acknowledged.
    possible: BTreeSet<Option<String>>,
}

#[derive(Default)]
struct History {
    paths: BTreeMap<String, PathState>,
    acked: u64,
    unknown: u64,
    violations: Vec<String>,
}

fn client(c: &Cluster) -> HttpClient {
    HttpClient::new(&c.urls(), Some(c.nodes[0].token.clone()))
        .unwrap()
        .with_retry(RetryPolicy {
            deadline: Duration::from_secs(15),
            ..RetryPolicy::default()
        })
}

/// One client's loop: uploads, overwrites, deletes and verified reads of
/// its own paths, recording what was acknowledged.
async fn worker(
    client: HttpClient,
    id: u64,
    history: Arc<Mutex<History>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
) {
    let share = ShareName::parse("default").unwrap();
    let mut i = 0u64;
    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
        i += 1;
        let path = format!("w{id}/f{}", i % 12);
        let target = RemotePath::parse(&share, &path).unwrap();
        let op = (i * 7 + id) % 10;
        let prior = history
            .lock()
            .unwrap()
            .paths
            .get(&path)
            .cloned()
            .unwrap_or_else(|| PathState {
                possible: BTreeSet::from([None]),
            });
        if op < 5 {
            let size = match i % 3 {
                0 => 2000,
                1 => 300_000,
                _ => 5 * MIB,
            };
            let data = random_bytes(size, id * 1_000_000 + i);
            let hash = blake3::hash(&data).to_hex().to_string();
            let result = client.put_bytes(&target, Bytes::from(data)).await;
            let mut h = history.lock().unwrap();
            let st = h.paths.entry(path).or_insert(prior);
            match result {
                Ok(_) => {
                    st.possible = BTreeSet::from([Some(hash)]);
                    h.acked += 1;
                }
                Err(_) => {
                    st.possible.insert(Some(hash));
                    h.unknown += 1;
                }
            }
        } else if op < 7 {
            let result = client.delete(&target).await;
            let mut h = history.lock().unwrap();
            let st = h.paths.entry(path).or_insert(prior);
            match result {
                Ok(()) => {
                    st.possible = BTreeSet::from([None]);
                    h.acked += 1;
                }
                Err(e) if e.code() == Some(cairn_proto::ErrorCode::NotFound) => {
                    st.possible = BTreeSet::from([None]);
                }
                Err(_) => {
                    st.possible.insert(None);
                    h.unknown += 1;
                }
            }
        } else {
            let seen = match client.get(&target).await {
                Ok(resp) => match resp.bytes().await {
                    Ok(b) => Some(Some(blake3::hash(&b).to_hex().to_string())),
                    Err(_) => None,
                },
                Err(e) if e.code() == Some(cairn_proto::ErrorCode::NotFound) => Some(None),
                Err(_) => None,
            };
            if let Some(seen) = seen {
                let mut h = history.lock().unwrap();
                let st = h.paths.entry(path.clone()).or_insert(prior);
                if st.possible.contains(&seen) {
                    // A linearizable read settles an unknown outcome.
                    st.possible = BTreeSet::from([seen]);
                } else {
                    let msg = format!(
                        "read {path}: saw {seen:?}, expected one of {:?}",
                        st.possible
                    );
                    h.violations.push(msg);
                }
            }
        }
    }
}

/// `?list` of a directory on node `i`: name -> (etag, size).
async fn listing(c: &Cluster, i: usize, dir: &str) -> BTreeMap<String, (String, u64)> {
    let url = format!("{}/v1/default/{dir}?list&limit=10000", c.http(i));
    let resp = http()
        .get(url)
        .header("Authorization", c.auth())
        .send()
        .await
        .unwrap();
    if resp.status() == StatusCode::NOT_FOUND {
        return BTreeMap::new();
    }
    let v: serde_json::Value = resp.json().await.unwrap();
    v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_owned(),
                (
                    e["etag"].as_str().unwrap_or("").to_owned(),
                    e["size"].as_u64().unwrap(),
                ),
            )
        })
        .collect()
}

/// A counter from node `i`'s `/metrics`.
async fn counter(c: &Cluster, i: usize, name: &str) -> u64 {
    c.metric(i, name)
        .await
        .unwrap_or_else(|| panic!("no {name} on node {}", i + 1))
}

/// Every read sees the write acknowledged just before it through another
/// node, and a leader its followers answer confirms those reads under its
/// read lease instead of a heartbeat round each.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reads_see_the_last_write_and_a_steady_leader_confirms_them_by_lease() {
    let c = Cluster::start(3, ClusterOptions::default());
    let leader = c.wait_leader(Duration::from_secs(20)).await.unwrap();
    assert_eq!(put(&c, leader, "l/x.txt", b"v").await, StatusCode::CREATED);
    let leased = counter(&c, leader, "cairn_meta_reads_leased_total").await;
    let rounds = counter(&c, leader, "cairn_meta_read_rounds_total").await;
    for i in 0..30 {
        let (writer, reader) = (i % 3, (i + 1) % 3);
        let value = format!("v{i}").into_bytes();
        assert!(put(&c, writer, "l/x.txt", &value).await.is_success());
        assert_eq!(get(&c, reader, "l/x.txt").await, (StatusCode::OK, value));
    }
    let leased = counter(&c, leader, "cairn_meta_reads_leased_total").await - leased;
    let rounds = counter(&c, leader, "cairn_meta_read_rounds_total").await - rounds;
    // 30 reads, on every node (followers ask the leader): all but the odd
    // one that finds the lease lapsing are confirmed under it.
    assert!(
        leased >= 25,
        "{leased} reads under the lease, {rounds} rounds"
    );
    assert!(rounds <= 5, "{rounds} heartbeat rounds for 30 reads");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn leader_kill_loop_loses_nothing_acknowledged() {
    const KILLS: usize = 20;
    const WORKERS: u64 = 4;
    let mut c = Cluster::start(3, ClusterOptions::default());
    c.wait_leader(Duration::from_secs(20)).await.unwrap();
    let history = Arc::new(Mutex::new(History::default()));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..WORKERS)
        .map(|id| {
            tokio::spawn(worker(
                client(&c),
                id,
                Arc::clone(&history),
                Arc::clone(&stop),
            ))
        })
        .collect();
    for kill in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(700)).await;
        let leader = c.wait_leader(Duration::from_secs(20)).await.unwrap();
        c.nodes[leader].kill9();
        c.wait_leader(Duration::from_secs(20))
            .await
            .unwrap_or_else(|e| panic!("kill {kill}: {e}"));
        tokio::time::sleep(Duration::from_millis(300)).await;
        c.nodes[leader].restart();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    c.wait_converged(Duration::from_secs(30)).await.unwrap();

    // Should a read have failed, show where that chunk's copies are.
    for (i, n) in c.nodes.iter().enumerate() {
        for line in n.log_text().lines().filter(|l| l.contains("is missing")) {
            let hash = line
                .split("chunk ")
                .nth(1)
                .and_then(|t| t.split(' ').next())
                .unwrap_or("");
            let holders: Vec<usize> = (0..3)
                .filter(|&j| holds_chunk(&c, j, hash))
                .map(|j| j + 1)
                .collect();
            eprintln!("node {}: {line}\n  copies now on nodes {holders:?}", i + 1);
        }
    }
    let h = std::mem::take(&mut *history.lock().unwrap());
    assert!(
        h.violations.is_empty(),
        "reads broke linearizability:\n{}",
        h.violations.join("\n")
    );
    assert!(
        h.acked > 100,
        "only {} operations were acknowledged",
        h.acked
    );
    eprintln!(
        "{} acknowledged, {} unknown outcomes, {} paths",
        h.acked,
        h.unknown,
        h.paths.len()
    );
    // Every node holds the same metadata...
    for w in 0..WORKERS {
        let dir = format!("w{w}");
        let first = listing(&c, 0, &dir).await;
        for i in 1..3 {
            assert_eq!(
                listing(&c, i, &dir).await,
                first,
                "node {i} differs in {dir}"
            );
        }
    }
    // ...and every path is in a state the client's log allows, with whole
    // content (BLAKE3 checked) from every node.
    for (path, st) in &h.paths {
        for i in 0..3 {
            let (status, body) = get(&c, i, path).await;
            let seen = match status {
                StatusCode::OK => Some(blake3::hash(&body).to_hex().to_string()),
                StatusCode::NOT_FOUND => None,
                other => panic!("GET {path} from node {i}: {other}"),
            };
            assert!(
                st.possible.contains(&seen),
                "{path} on node {i}: {seen:?} not in {:?}",
                st.possible
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lost_node_is_repaired_onto_a_new_one() {
    let options = with_admin_token("dead_after_secs = 3\nrepair_interval_secs = 1\n");
    let mut c = Cluster::start(3, options);
    c.wait_leader(Duration::from_secs(20)).await.unwrap();
    let data = random_bytes(13 * MIB, 7);
    assert_eq!(
        put(&c, 0, "keep/data.bin", &data).await,
        StatusCode::CREATED
    );
    let hashes = chunk_hashes(&data);

    // Node 3 is lost for good; a fourth node joins.
    c.nodes[2].kill9();
    let joiner = c.launch_joiner();
    if let Err(e) = c.cli(&["cluster", "add", &c.http(joiner), "--admin-token", ADMIN]) {
        panic!(
            "{e}\n{:?}\n{:?}\n{}",
            c.status(0).await,
            c.status(1).await,
            c.logs(20)
        );
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let copies_ok = hashes
            .iter()
            .all(|h| [0, 1, joiner].iter().all(|&i| holds_chunk(&c, i, h)));
        let status = c.status(0).await.unwrap();
        if copies_ok && status["under_replicated"].as_u64() == Some(0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "copies not back to 3: {status}\n{}",
            c.logs(40)
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let status = c.status(joiner).await.unwrap();
    let member = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"].as_u64() == Some(joiner as u64 + 1))
        .unwrap()
        .clone();
    assert_eq!(member["membership"], "voter", "{status}");
    assert_eq!(
        get(&c, joiner, "keep/data.bin").await,
        (StatusCode::OK, data)
    );
}

/// A node killed and started again is known as such from the first packet
/// a peer sends it: its new process resets the connections the old one
/// left (the reset key comes from the node's private key, which outlives
/// the process), so peers dial it afresh at once. Before, they waited out
/// two missed probes, about four seconds in which writes skipped the node.
/// A restart slower than a peer's silence timeout (1 s) is noticed by the
/// silence instead, and the peer dials again a second later.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peers_dial_a_restarted_node_at_once() {
    let mut c = Cluster::start(3, ClusterOptions::default());
    let leader = c.wait_leader(Duration::from_secs(20)).await.unwrap();
    c.wait_converged(Duration::from_secs(20)).await.unwrap();
    let victim = (leader + 1) % 3;
    // Only what the peers log from here on counts (a peer dialed before
    // it listened, as the cluster formed, is "reachable again" too).
    let logged: Vec<usize> = (0..3).map(|i| c.nodes[i].log_text().len()).collect();
    c.nodes[victim].kill9();
    c.nodes[victim].restart();
    let said = [
        "peer restarted; dialing its new process",
        "peer reachable again; dialed it afresh",
    ];
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(0..3).filter(|&i| i != victim).any(|i| {
        let log = c.nodes[i].log_text();
        let since = log.get(logged[i]..).unwrap_or_default();
        said.iter().any(|s| since.contains(s))
    }) {
        assert!(
            Instant::now() < deadline,
            "no peer dialed the restarted node again:\n{}",
            c.logs(30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // It serves again, and a write through it reaches the others.
    let data = random_bytes(5 * MIB, 11);
    assert_eq!(
        put(&c, victim, "after.bin", &data).await,
        StatusCode::CREATED
    );
    assert_eq!(get(&c, leader, "after.bin").await, (StatusCode::OK, data));
}

/// A node reading a chunk it lacks asks its peers; one killed a moment
/// ago (not yet suspect) no longer holds the read until the prober gives
/// up on it: after 250 ms without an answer the next peer is asked too.
/// This read took 6.2 s before, 0.9 s now.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_read_of_a_missing_chunk_does_not_wait_on_a_peer_just_killed() {
    // No repair pass during the test: the restarted node must lack the
    // chunks when it is read through.
    let options = ClusterOptions {
        cluster_extra: "repair_interval_secs = 3600\n".into(),
        ..ClusterOptions::default()
    };
    let mut c = Cluster::start(3, options);
    let leader = c.wait_leader(Duration::from_secs(20)).await.unwrap();
    let (other, lacking) = ((leader + 1) % 3, (leader + 2) % 3);
    // Written while `lacking` is down: its chunks are on the other two.
    c.nodes[lacking].kill9();
    let data = random_bytes(24 * MIB, 21);
    assert_eq!(
        put(&c, leader, "spread.bin", &data).await,
        StatusCode::CREATED
    );
    c.nodes[lacking].restart();
    c.wait_converged(Duration::from_secs(20)).await.unwrap();
    // Each of the six chunks is asked of `other` or the leader first, by
    // placement; `other` now dies without a word.
    c.nodes[other].kill9();
    let started = Instant::now();
    let (status, got) = get(&c, lacking, "spread.bin").await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::OK);
    assert!(got == data, "the file read back changed");
    assert!(
        took < Duration::from_secs(4),
        "the read waited {took:?} on the dead peer"
    );
}

const ADMIN: &str = "admin-token-for-tests-0123456789";

/// Options for a cluster whose membership the test changes: `extra` for
/// the `[cluster]` table, and the admin token.
fn with_admin_token(extra: &str) -> ClusterOptions {
    let defaults = ClusterOptions::default();
    ClusterOptions {
        cluster_extra: extra.into(),
        server: ServerOptions {
            extra_config: format!("admin_token = \"{ADMIN}\""),
            ..defaults.server.clone()
        },
        ..defaults
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn removed_node_leaves_only_after_its_data_moved() {
    // Two copies on three nodes: the removed node holds chunks that
    // exist on only one other node until the drain copies them.
    let options = with_admin_token("replicas = 2\nrepair_interval_secs = 1\n");
    let mut c = Cluster::start(3, options);
    c.wait_leader(Duration::from_secs(20)).await.unwrap();
    let data = random_bytes(40 * MIB, 9);
    assert_eq!(put(&c, 0, "d/data.bin", &data).await, StatusCode::CREATED);
    let hashes = chunk_hashes(&data);
    assert!(
        hashes.iter().any(|h| holds_chunk(&c, 2, h)),
        "node 3 holds none of the chunks"
    );

    if let Err(e) = c.cli(&[
        "cluster",
        "remove",
        "3",
        "--admin-token",
        ADMIN,
        "--timeout-secs",
        "60",
    ]) {
        panic!("{e}\n{}\n{}", c.status(0).await.unwrap(), c.logs(30));
    }
    let status = c.status(0).await.unwrap();
    let ids: Vec<u64> = status["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["id"].as_u64().unwrap())
        .collect();
    assert_eq!(ids, vec![1, 2], "{status}");
    // Node 3 can go: every chunk now has its two copies on nodes 1 and 2.
    c.nodes[2].kill9();
    for h in &hashes {
        assert!(
            holds_chunk(&c, 0, h) && holds_chunk(&c, 1, h),
            "chunk {h} lost a copy"
        );
    }
    assert_eq!(get(&c, 1, "d/data.bin").await, (StatusCode::OK, data));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scrubber_replaces_a_corrupt_copy() {
    let options = ClusterOptions {
        cluster_extra: "scrub_interval_secs = 1\n".into(),
        witnesses: Vec::new(),
        strace_dir: None,
        server: ServerOptions {
            allowed_errors: vec!["openraft::".into(), "corrupt".into()],
            ..ClusterOptions::default().server
        },
    };
    let c = Cluster::start(3, options);
    c.wait_leader(Duration::from_secs(20)).await.unwrap();
    let data = random_bytes(6 * MIB, 3);
    assert_eq!(put(&c, 0, "s/data.bin", &data).await, StatusCode::CREATED);
    let hash = chunk_hashes(&data)[0].clone();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !holds_chunk(&c, 1, &hash) {
        assert!(Instant::now() < deadline);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let path: PathBuf = c.nodes[1]
        .chunk_paths()
        .into_iter()
        .find(|p| p.file_name().and_then(|n| n.to_str()) == Some(hash.as_str()))
        .unwrap();
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[1000] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();

    // Nobody reads it: the scrubber alone finds and replaces the bad copy.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(b) = std::fs::read(&path)
            && blake3::hash(&b).to_hex().as_str() == hash
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the corrupt copy was not replaced"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        get(&c, 1, "s/data.bin").await,
        (StatusCode::OK, data.clone())
    );

    // Corrupt it again and read through that node at once: the read is
    // served from a good copy, never the bad bytes.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[2000] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    assert_eq!(get(&c, 1, "s/data.bin").await, (StatusCode::OK, data));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_witness_votes_but_holds_no_chunks() {
    let options = ClusterOptions {
        witnesses: vec![2],
        // Two data nodes: until the lost one is declared dead, a chunk
        // cannot get its two copies.
        cluster_extra: "dead_after_secs = 3\n".into(),
        ..ClusterOptions::default()
    };
    let mut c = Cluster::start(3, options);
    c.wait_leader(Duration::from_secs(20)).await.unwrap();
    let data = random_bytes(9 * MIB, 11);
    assert_eq!(put(&c, 2, "w/data.bin", &data).await, StatusCode::CREATED);
    assert_eq!(
        get(&c, 2, "w/data.bin").await,
        (StatusCode::OK, data.clone())
    );
    assert!(
        c.nodes[2].chunk_paths().is_empty(),
        "the witness stored chunks"
    );
    // One data node down: the witness keeps the majority, writes go on.
    c.nodes[1].kill9();
    let started = Instant::now();
    while put(&c, 0, "w/after.bin", &data[..5 * MIB]).await != StatusCode::CREATED {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "no write with one data node and the witness"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(get(&c, 2, "w/data.bin").await, (StatusCode::OK, data));
    assert!(
        c.nodes[2].chunk_paths().is_empty(),
        "the witness stored chunks"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_without_a_majority_refuses_with_retry_after() {
    let options = ClusterOptions {
        cluster_extra: "write_timeout_secs = 2\nread_timeout_secs = 2\n".into(),
        ..ClusterOptions::default()
    };
    let mut c = Cluster::start(3, options);
    c.wait_leader(Duration::from_secs(20)).await.unwrap();
    assert_eq!(
        put(&c, 0, "m/before.txt", b"before").await,
        StatusCode::CREATED
    );
    c.nodes[1].kill9();
    c.nodes[2].kill9();
    let resp = http()
        .put(format!("{}/v1/default/m/alone.txt", c.http(0)))
        .header("Authorization", c.auth())
        .body("alone")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        resp.headers().contains_key("retry-after"),
        "{:?}",
        resp.headers()
    );
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "unavailable", "{body}");
    // A majority again: the same write goes through. (The refused one had
    // an unknown outcome for the client: it may have been appended before
    // the leader noticed it was alone, and then committed now.)
    c.nodes[1].restart();
    let started = Instant::now();
    while !put(&c, 0, "m/alone.txt", b"alone").await.is_success() {
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "writes did not resume\n{}",
            c.logs(25)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        get(&c, 1, "m/before.txt").await,
        (StatusCode::OK, b"before".to_vec())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_node_catches_up_from_a_snapshot() {
    // A snapshot every 20 entries, 2 kept behind it: the log a new
    // node would need is long gone.
    let options = with_admin_token("snapshot_logs = 20\nrepair_interval_secs = 1\n");
    let mut c = Cluster::start(3, options);
    c.wait_leader(Duration::from_secs(20)).await.unwrap();
    let big = random_bytes(5 * MIB, 21);
    assert_eq!(put(&c, 0, "snap/big.bin", &big).await, StatusCode::CREATED);
    for i in 0..80 {
        let body = format!("file {i}");
        assert_eq!(
            put(&c, i % 3, &format!("snap/f{i}.txt"), body.as_bytes()).await,
            StatusCode::CREATED
        );
    }
    let joiner = c.launch_joiner();
    c.cli(&["cluster", "add", &c.http(joiner), "--admin-token", ADMIN])
        .unwrap();
    c.wait_converged(Duration::from_secs(30)).await.unwrap();
    let log = c.nodes[joiner].log_text();
    assert!(
        log.contains("installed a snapshot"),
        "the new node did not get a snapshot"
    );
    for i in 0..80 {
        let (status, body) = get(&c, joiner, &format!("snap/f{i}.txt")).await;
        assert_eq!(
            (status, body),
            (StatusCode::OK, format!("file {i}").into_bytes())
        );
    }
    assert_eq!(get(&c, joiner, "snap/big.bin").await, (StatusCode::OK, big));
    // The same metadata everywhere.
    let first = listing(&c, 0, "snap").await;
    assert_eq!(first.len(), 81);
    assert_eq!(listing(&c, joiner, "snap").await, first);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_paused_leader_is_replaced_and_steps_down_when_resumed() {
    let c = Cluster::start(3, ClusterOptions::default());
    let leader = c.wait_leader(Duration::from_secs(20)).await.unwrap();
    // A long stall (GC pause, a frozen VM): the process is alive but silent.
    c.nodes[leader].pause();
    let other = (leader + 1) % 3;
    let started = Instant::now();
    while put(&c, other, "pause/during.txt", b"during").await != StatusCode::CREATED {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no write while the leader was paused"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    c.nodes[leader].resume();
    // It wakes up believing it leads; it learns otherwise and follows.
    let started = Instant::now();
    loop {
        let s = c.status(leader).await;
        if let Some(l) = s.as_ref().and_then(|s| s["leader"].as_u64())
            && l as usize - 1 != leader
        {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the resumed leader did not step down: {s:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    c.wait_converged(Duration::from_secs(20)).await.unwrap();
    assert_eq!(
        get(&c, leader, "pause/during.txt").await,
        (StatusCode::OK, b"during".to_vec())
    );
}

/// A token one node has just installed is honoured at once by a node that
/// has not heard of it yet, over HTTP and the native protocol alike: a
/// follower that lags (here frozen while the token was committed) looks
/// again once it has caught up instead of answering "unknown token". The
/// race first showed as a 401 from a follower right after a cluster
/// formed, before it had applied the configured tokens.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_token_just_installed_elsewhere_is_honoured_by_a_lagging_node() {
    let mut c = Cluster::start(3, ClusterOptions::default());
    let leader = c.wait_leader(Duration::from_secs(20)).await.unwrap();
    assert_eq!(put(&c, leader, "t/x.txt", b"x").await, StatusCode::CREATED);
    let (lagging, installer) = ((leader + 1) % 3, (leader + 2) % 3);

    let fresh_token = |c: &mut Cluster| {
        // The installer's configuration lists a new read-only token: it
        // commits it as it starts (and revokes the one it replaced).
        c.nodes[installer].stop();
        c.nodes[lagging].pause();
        let token = format!("ro-{:032x}", rand::random::<u128>());
        c.nodes[installer].read_token = token.clone();
        c.nodes[installer].relaunch();
        c.nodes[installer].wait_started().unwrap();
        // Frozen past the peers' 1 s silence limit, the node is given up
        // on: woken, it hears of the token only when the leader dials it
        // again, a second later. Woken sooner, it would read the token from
        // appends already queued on its socket within milliseconds, before
        // a native session (handshake, negotiate: ~17 ms) could ask.
        std::thread::sleep(Duration::from_millis(1500));
        c.nodes[lagging].resume();
        token
    };

    let token = fresh_token(&mut c);
    let resp = http()
        .get(format!("{}/v1/default/t/x.txt", c.http(lagging)))
        .header("Authorization", format!("Bearer {token}"))
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        StatusCode::OK,
        "HTTP through the lagging node"
    );
    assert_eq!(resp.bytes().await.unwrap().as_ref(), b"x");

    let token = fresh_token(&mut c);
    let cfg =
        cairn_client::NativeConfig::new(vec![c.quic(lagging)], c.ca_pem(), token, "default".into());
    let native = cairn_client::Client::connect(cfg)
        .await
        .expect("a native session through the lagging node");
    assert_eq!(native.metadata("t/x.txt").await.unwrap().size, 1);
}
