//! Partitions, with network namespaces: the tooling against a real server,
//! then a 3-node cluster whose leader or a follower is cut off from the
//! others, and a flapping link. The minority refuses writes, the majority
//! carries on, and after healing every node converges. (Needs root, as CI
//! has.)

#![allow(clippy::unwrap_used)]

use std::process::Output;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_tests::cluster::{Cluster, ClusterOptions};
use cairn_tests::hold::{HoldSpec, Holder};
use cairn_tests::mount::{Mount, write_pattern};
use cairn_tests::netns::Network;
use cairn_tests::{Server, ServerOptions};

fn curl(net: &Network, from: usize, args: &[&str]) -> Output {
    net.hosts[from]
        .command("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn cut_and_heal_a_link_between_test_hosts() {
    let net = Network::create(3).unwrap();
    let s = Server::start_with(ServerOptions {
        host: Some(net.hosts[0].clone()),
        ..Default::default()
    });
    let health = format!("{}/health", s.url);
    // The status code; with curl's exit code and error when there is none
    // (a failure names which of timing out or being refused it was).
    let ok = |from: usize| {
        let out = curl(&net, from, &["-S", "--max-time", "5", &health]);
        let code = String::from_utf8_lossy(&out.stdout).into_owned();
        if code == "000" {
            let err = String::from_utf8_lossy(&out.stderr);
            return format!("000 (curl exit {:?}: {})", out.status.code(), err.trim());
        }
        code
    };

    tracing::info!("--- every host reaches the server");
    assert_eq!(ok(1), "200");
    assert_eq!(ok(2), "200");
    let auth = format!("Authorization: Bearer {}", s.token);
    let put = curl(
        &net,
        1,
        &[
            "--max-time",
            "5",
            "-X",
            "PUT",
            "-H",
            &auth,
            "--data-binary",
            "over the wire",
            &s.object_url("x.txt"),
        ],
    );
    assert_eq!(String::from_utf8_lossy(&put.stdout), "201");

    tracing::info!("--- cut host 1 off: it times out, host 2 is unaffected");
    net.cut(0, 1).unwrap();
    let cut = curl(&net, 1, &["--max-time", "2", &health]);
    assert_eq!(
        cut.status.code(),
        Some(28),
        "a dropped link times out (curl exit 28)"
    );
    assert_eq!(ok(2), "200");

    tracing::info!("--- isolate the server's host, then heal everything");
    net.isolate(0).unwrap();
    assert_eq!(
        curl(&net, 2, &["--max-time", "2", &health]).status.code(),
        Some(28)
    );
    net.heal().unwrap();
    assert_eq!(ok(1), "200");
    assert_eq!(ok(2), "200");

    tracing::info!("--- 20% packet loss: TCP retransmits, requests still succeed");
    net.lossy(0, 20).unwrap();
    for _ in 0..5 {
        assert_eq!(ok(1), "200");
    }
    net.heal().unwrap();
}

/// A cluster of three nodes on hosts 0..3 of a 4-host network; host 3 is
/// where the test's requests come from.
fn partitioned_cluster(net: &Network) -> Cluster {
    let options = ClusterOptions {
        // Refusals come quickly enough to assert on.
        cluster_extra: "write_timeout_secs = 3\nread_timeout_secs = 2\n".into(),
        ..ClusterOptions::default()
    };
    Cluster::start_on(&net.hosts[..3], &net.hosts[3], options)
}

async fn put(c: &Cluster, node: usize, path: &str, body: &[u8]) -> u16 {
    let url = format!("{}/v1/default/{path}", c.http(node));
    c.request("PUT", &url, Some(body.to_vec()), Duration::from_secs(10))
        .await
        .0
}

async fn get(c: &Cluster, node: usize, path: &str) -> (u16, Vec<u8>) {
    let url = format!("{}/v1/default/{path}", c.http(node));
    c.request("GET", &url, None, Duration::from_secs(10)).await
}

/// Waits until node `i` names another node as the leader and that node
/// agrees it leads.
async fn wait_follows(c: &Cluster, i: usize) {
    let started = Instant::now();
    loop {
        let seen = c.status(i).await.and_then(|s| s["leader"].as_u64());
        if let Some(l) = seen
            && l as usize - 1 != i
            && c.status(l as usize - 1)
                .await
                .and_then(|s| s["leader"].as_u64())
                == Some(l)
        {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "node {i} sees leader {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_isolated_leader_is_fenced_and_steps_down() {
    let net = Network::create(4).unwrap();
    let c = partitioned_cluster(&net);
    let old = c.wait_leader(Duration::from_secs(20)).await.unwrap();
    assert_eq!(put(&c, old, "p/before.txt", b"before").await, 201);

    // The leader loses both followers; the client still reaches everyone.
    let followers: Vec<usize> = (0..3).filter(|&i| i != old).collect();
    for &f in &followers {
        net.cut(old, f).unwrap();
    }
    // The minority refuses writes (503, retryable): nothing it cannot
    // replicate is acknowledged.
    assert_eq!(put(&c, old, "p/minority.txt", b"lost").await, 503);
    // The majority elects a new leader and carries on.
    let started = Instant::now();
    let new = loop {
        let s = c.status(followers[0]).await;
        if let Some(l) = s.and_then(|s| s["leader"].as_u64())
            && l as usize - 1 != old
        {
            break l as usize - 1;
        }
        assert!(started.elapsed() < Duration::from_secs(15), "no new leader");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        put(&c, followers[1], "p/majority.txt", b"during").await,
        201
    );
    // Reads on the minority cannot be confirmed linearizable: refused.
    assert_eq!(get(&c, old, "p/before.txt").await.0, 503);

    net.heal().unwrap();
    // The old leader follows (the majority's leader, or one elected after
    // the heal: either way not itself).
    wait_follows(&c, old).await;
    assert_ne!(new, old);
    c.wait_converged(Duration::from_secs(20)).await.unwrap();
    for i in 0..3 {
        assert_eq!(
            get(&c, i, "p/majority.txt").await,
            (200, b"during".to_vec())
        );
        assert_eq!(get(&c, i, "p/before.txt").await, (200, b"before".to_vec()));
        assert_eq!(
            get(&c, i, "p/minority.txt").await.0,
            404,
            "node {i}: a refused write appeared"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_isolated_follower_refuses_then_catches_up() {
    let net = Network::create(4).unwrap();
    let c = partitioned_cluster(&net);
    let leader = c.wait_leader(Duration::from_secs(20)).await.unwrap();
    let f = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    net.cut(f, leader).unwrap();
    net.cut(f, other).unwrap();
    assert_eq!(put(&c, leader, "q/a.txt", b"a").await, 201);
    assert_eq!(put(&c, other, "q/b.txt", b"b").await, 201);
    assert_eq!(put(&c, f, "q/c.txt", b"c").await, 503);
    assert_eq!(get(&c, f, "q/a.txt").await.0, 503);
    net.heal().unwrap();
    c.wait_converged(Duration::from_secs(20)).await.unwrap();
    assert_eq!(get(&c, f, "q/a.txt").await, (200, b"a".to_vec()));
    assert_eq!(get(&c, f, "q/b.txt").await, (200, b"b".to_vec()));
    assert_eq!(get(&c, f, "q/c.txt").await.0, 404);
}

/// A client holds a file open, exclusively and idle, through a follower
/// that is then cut off from the other two. The follower still answers
/// the client's keep-alives, but cannot renew its session; it closes the
/// client's connection, the client resumes on the majority, and its
/// handle outlives the handle timeout many times over.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_idle_client_of_a_cut_off_node_keeps_its_handle() {
    let net = Network::create(4).unwrap();
    let options = ClusterOptions {
        // Handles of a session unrenewed for 15 s are closed; the cut-off
        // node closes its connections after 7.5 s without a renewal.
        cluster_extra: "handle_timeout_secs = 12\nwrite_timeout_secs = 2\nread_timeout_secs = 2\n"
            .into(),
        ..ClusterOptions::default()
    };
    let c = Cluster::start_on(&net.hosts[..3], &net.hosts[3], options);
    let leader = c.wait_leader(Duration::from_secs(20)).await.unwrap();
    let f = (leader + 1) % 3;
    let other = (leader + 2) % 3;
    let exclusive = |first| HoldSpec {
        share_access: 0,
        ..c.hold_spec(Some(first), "held.bin")
    };
    let held = Holder::start_on(&exclusive(f), Some(&net.hosts[3])).unwrap();
    assert_eq!(held.node, c.quic(f), "the holder is on the follower");
    net.cut(f, leader).unwrap();
    net.cut(f, other).unwrap();
    // Twice the handle timeout: a session left on the cut-off node would
    // have been expired, and its handle closed, by now.
    tokio::time::sleep(Duration::from_secs(25)).await;
    let refused = Holder::start_on(&exclusive(other), Some(&net.hosts[3]))
        .err()
        .expect("a second exclusive open got the file: the first handle was closed");
    assert!(
        refused.to_string().contains("sharing_violation"),
        "{refused}"
    );
    net.heal().unwrap();
    c.wait_converged(Duration::from_secs(30)).await.unwrap();
    held.vanish();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flapping_link_loses_nothing_acknowledged() {
    let net = Network::create(4).unwrap();
    let c = partitioned_cluster(&net);
    c.wait_leader(Duration::from_secs(20)).await.unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(Vec::new()));
    let writer = {
        let (stop, acked) = (Arc::clone(&stop), Arc::clone(&acked));
        let urls: Vec<String> = (0..3).map(|i| c.http(i)).collect();
        let c = &c;
        async move {
            let mut i = 0usize;
            while !stop.load(Ordering::Relaxed) {
                i += 1;
                let body = format!("value {i}").into_bytes();
                let path = format!("flap/{}", i % 20);
                let url = format!("{}/v1/default/{path}", urls[i % 3]);
                let (status, _) = c
                    .request("PUT", &url, Some(body.clone()), Duration::from_secs(5))
                    .await;
                // A refused or timed-out write has an unknown outcome: it
                // may still be applied (never reordered before a later
                // acknowledged one: one writer, one request at a time).
                let ok = status == 201 || status == 200;
                acked.lock().unwrap().push((path, body, ok));
            }
        }
    };
    let flapper = async {
        for round in 0..12 {
            let leader = c.leader().await.unwrap_or(round % 3);
            let f = (leader + 1 + round % 2) % 3;
            net.cut(leader, f).unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
            net.heal().unwrap();
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        stop.store(true, Ordering::Relaxed);
    };
    tokio::join!(writer, flapper);
    c.wait_converged(Duration::from_secs(30)).await.unwrap();
    // Each path holds its last acknowledged value, or a value written
    // after it whose outcome the writer never learned; the same on every
    // node.
    let mut allowed: std::collections::BTreeMap<String, Vec<Option<Vec<u8>>>> =
        std::collections::BTreeMap::new();
    let attempts = std::mem::take(&mut *acked.lock().unwrap());
    let acks = attempts.iter().filter(|a| a.2).count();
    assert!(acks >= 20, "too few writes acknowledged: {acks}");
    for (path, body, ok) in attempts {
        let states = allowed.entry(path).or_insert_with(|| vec![None]);
        if ok {
            *states = vec![Some(body)];
        } else {
            states.push(Some(body));
        }
    }
    for (path, states) in &allowed {
        let first = get(&c, 0, path).await;
        let seen = match first.0 {
            200 => Some(first.1.clone()),
            404 => None,
            other => panic!("GET {path}: {other}"),
        };
        assert!(
            states.contains(&seen),
            "{path}: {seen:?} is not one of {states:?}"
        );
        for i in 1..3 {
            assert_eq!(
                get(&c, i, path).await,
                first,
                "{path}: node {i} differs from node 0"
            );
        }
    }
}

/// Which link a partition test cuts.
#[derive(Clone, Copy, Debug)]
enum Cut {
    /// The mount's node from both other nodes: the mount still reaches
    /// it, and it still answers, but it cannot store or commit anything.
    NodeFromCluster,
    /// The mount from its node: the cluster is whole.
    MountFromNode,
}

/// A mount (on the leader, where mounts put their sessions) writes a file
/// with fsyncs while `cut` is made. Every call must succeed, none may
/// wait `stall_max` or more, and the bytes must come back right, through
/// the mount during the cut and from every node after it. Then, with the
/// cut still in place and the writer done, opening and reading the file
/// must never take `idle_max` (an idle mount that prefers the leader
/// checks every few seconds whether to move back to it).
async fn mount_carries_on(cut: Cut, name: &str, stall_max: Duration, idle_max: Duration) {
    let net = Network::create(4).unwrap();
    // The default timeouts: how long a cut-off node takes to refuse is
    // part of what the mount's users wait.
    let c = Cluster::start_on(&net.hosts[..3], &net.hosts[3], ClusterOptions::default());
    let leader = c.wait_leader(Duration::from_secs(20)).await.unwrap();
    let m = Mount::start_on(&c, &net.hosts[3], "");
    let path = m.join(name);
    let writer = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || {
            write_pattern(&path, 160, 11, 4, Duration::from_millis(40))
        })
    };
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let node = serving_node(&c).await;
    eprintln!("{cut:?}: the leader is node {leader}, the mount writes through node {node}");
    // Before the rules go in: the first one already cuts, and the rest
    // take a while on a busy machine.
    let cut_at = Instant::now();
    match cut {
        Cut::NodeFromCluster => {
            for f in (0..3).filter(|&i| i != node) {
                net.cut(node, f).unwrap();
            }
        }
        Cut::MountFromNode => net.cut(node, 3).unwrap(),
    }
    let finished = tokio::time::timeout(Duration::from_secs(45), writer).await;
    let Ok(Ok((data, done))) = finished else {
        panic!(
            "{cut:?}: the writer failed or still waits {:?} after the cut; mount log:\n{}",
            cut_at.elapsed(),
            m.log_text()
        );
    };
    let after = done.iter().filter(|t| **t > cut_at).count();
    assert!(
        after >= 40,
        "{cut:?}: only {after} writes came after the cut: the test proves nothing"
    );
    let stall = done
        .windows(2)
        .filter(|w| w[1] > cut_at)
        .map(|w| w[1].duration_since(w[0].max(cut_at)))
        .max()
        .unwrap_or_default();
    let idle = {
        let path = path.clone();
        tokio::task::spawn_blocking(move || slowest_open_and_read(&path, Duration::from_secs(12)))
            .await
            .unwrap()
    };
    eprintln!(
        "{cut:?}: {after} writes after the cut, the longest wait {stall:?}; the slowest idle open and read {idle:?}"
    );
    assert!(
        stall < stall_max,
        "{cut:?}: the mount's calls waited {stall:?}"
    );
    assert!(
        idle < idle_max,
        "{cut:?}: an open and read of an idle mount took {idle:?}; mount log:\n{}",
        m.log_text()
    );
    assert!(
        std::fs::read(&path).unwrap() == data,
        "{cut:?}: the mount reads back other bytes"
    );
    net.heal().unwrap();
    c.wait_converged(Duration::from_secs(30)).await.unwrap();
    for i in 0..3 {
        let (status, body) = get(&c, i, name).await;
        assert_eq!(status, 200, "node {i}");
        assert!(body == data, "{cut:?}: node {i} holds other bytes");
    }
}

/// The node whose count of native writes grows: the one a writing
/// mount's session is on.
async fn serving_node(c: &Cluster) -> usize {
    let series = "cairn_native_requests_total{op=\"write\",result=\"ok\"}";
    let count = |i| async move { c.metric(i, series).await.unwrap_or(0) };
    let started = Instant::now();
    loop {
        let mut before = Vec::new();
        for i in 0..3 {
            before.push(count(i).await);
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        for (i, b) in before.into_iter().enumerate() {
            if count(i).await > b {
                return i;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no node serves the mount's writes"
        );
    }
}

/// The longest of opening `path` and reading its first 4 KiB, done every
/// 100 ms for `time`.
fn slowest_open_and_read(path: &std::path::Path, time: Duration) -> Duration {
    use std::io::Read;
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    while started.elapsed() < time {
        let t = Instant::now();
        let mut head = vec![0u8; 4096];
        std::fs::File::open(path)
            .and_then(|mut f| f.read_exact(&mut head))
            .unwrap_or_else(|e| panic!("open and read failed: {e}"));
        slowest = slowest.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(100));
    }
    slowest
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mount_whose_node_is_cut_off_carries_on_through_the_majority() {
    // The node refuses once its prober has given up on the peers (~4 s).
    mount_carries_on(
        Cut::NodeFromCluster,
        "cut-off.bin",
        Duration::from_secs(15),
        Duration::from_secs(1),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_mount_cut_off_from_its_node_carries_on_through_another() {
    // Silence is noticed a second after the last datagram.
    mount_carries_on(
        Cut::MountFromNode,
        "cut-link.bin",
        Duration::from_secs(10),
        Duration::from_secs(1),
    )
    .await;
}
