//! Crash safety and clean shutdown: `kill -9` in the middle of a stream of
//! uploads, SIGTERM in the middle of one, and full disks.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_client::native::Source;
use cairn_proto::ErrorCode;
use cairn_tests::cluster::{Cluster, ClusterOptions};
use cairn_tests::{Server, ServerOptions, random_bytes};
use futures::StreamExt;
use reqwest::{Client, StatusCode, header};

const CHUNK: usize = 4 << 20;

#[derive(Default)]
struct Log {
    /// Uploads that got a 2xx: path -> content hash.
    acked: BTreeMap<String, blake3::Hash>,
    /// Uploads whose outcome is unknown (error, no answer): path -> hash.
    unknown: BTreeMap<String, blake3::Hash>,
    /// Content by hash, to compute which chunks must exist.
    contents: BTreeMap<String, Vec<u8>>,
}

fn client() -> Client {
    Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// Uploads until the server goes away, recording what was acknowledged.
async fn uploader(s_url: String, auth: String, worker: u64, log: Arc<Mutex<Log>>) {
    let c = client();
    for i in 0u64.. {
        let size = match i % 4 {
            0 => 1000,
            1 => 70_000,
            2 => (5 << 20) + 17,
            _ => 9 << 20,
        };
        let data = random_bytes(size, worker * 1_000_000 + i);
        let path = format!("crash/w{worker}-{i}");
        let hash = blake3::hash(&data);
        let result = c
            .put(format!("{s_url}/v1/default/{path}"))
            .header(header::AUTHORIZATION, &auth)
            .body(data.clone())
            .send()
            .await;
        let mut log = log.lock().unwrap();
        log.contents.insert(path.clone(), data);
        match result {
            Ok(r) if r.status().is_success() => {
                log.acked.insert(path, hash);
            }
            Ok(r) => panic!("unexpected status {} for {path}", r.status()),
            Err(_) => {
                log.unknown.insert(path, hash);
                return;
            }
        }
    }
}

async fn get_hash(s: &Server, path: &str) -> Option<blake3::Hash> {
    let r = client()
        .get(s.object_url(path))
        .header(header::AUTHORIZATION, s.auth())
        .send()
        .await
        .unwrap();
    if r.status() == StatusCode::NOT_FOUND {
        return None;
    }
    assert_eq!(r.status(), StatusCode::OK, "{path}");
    Some(blake3::hash(&r.bytes().await.unwrap()))
}

async fn listed(s: &Server, dir: &str) -> Vec<String> {
    let r = client()
        .get(format!("{}?list&limit=10000", s.object_url(dir)))
        .header(header::AUTHORIZATION, s.auth())
        .send()
        .await
        .unwrap();
    if r.status() == StatusCode::NOT_FOUND {
        return Vec::new();
    }
    let v: serde_json::Value = r.json().await.unwrap();
    v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| format!("{dir}/{}", e["name"].as_str().unwrap()))
        .collect()
}

#[tokio::test]
async fn kill_9_during_uploads_loses_nothing_acknowledged() {
    let mut s = Server::start_with(ServerOptions {
        gc_grace_secs: 2,
        gc_interval_secs: 1,
        ..Default::default()
    });
    let log = Arc::new(Mutex::new(Log::default()));
    for round in 0..3u64 {
        tracing::info!("--- round {round}: uploads, then kill -9");
        let tasks: Vec<_> = (0..6)
            .map(|w| {
                tokio::spawn(uploader(
                    s.url.clone(),
                    s.auth(),
                    round * 100 + w,
                    Arc::clone(&log),
                ))
            })
            .collect();
        tokio::time::sleep(Duration::from_millis(1500 + 500 * round)).await;
        s.kill9();
        for t in tasks {
            t.await.unwrap();
        }
        s.restart();

        let (acked, unknown, contents) = {
            let log = log.lock().unwrap();
            (log.acked.clone(), log.unknown.clone(), log.contents.clone())
        };
        assert!(
            !acked.is_empty(),
            "some uploads were acknowledged before the kill"
        );
        for (path, hash) in &acked {
            assert_eq!(
                get_hash(&s, path).await,
                Some(*hash),
                "acknowledged upload {path} lost or damaged"
            );
        }
        let mut visible_unknown = 0;
        for (path, hash) in &unknown {
            if let Some(got) = get_hash(&s, path).await {
                assert_eq!(got, *hash, "{path} is visible but not whole");
                visible_unknown += 1;
            }
        }
        for path in listed(&s, "crash").await {
            assert!(
                acked.contains_key(&path) || unknown.contains_key(&path),
                "{path} was never uploaded"
            );
        }
        println!(
            "round {round}: {} acked, {} unknown ({visible_unknown} visible)",
            acked.len(),
            unknown.len()
        );

        tracing::info!("--- orphaned chunks are reclaimed, referenced ones kept");
        let mut want = BTreeSet::new();
        for path in listed(&s, "crash").await {
            let data = &contents[&path];
            if data.len() > 64 * 1024 {
                want.extend(
                    data.chunks(CHUNK)
                        .map(|c| blake3::hash(c).to_hex().to_string()),
                );
            }
        }
        let deadline = Instant::now() + Duration::from_secs(30);
        let on_disk = loop {
            let on_disk: BTreeSet<String> = s
                .chunk_paths()
                .iter()
                .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
                .collect();
            if on_disk == want || Instant::now() > deadline {
                break on_disk;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        };
        assert_eq!(
            on_disk, want,
            "chunk files on disk are exactly those referenced"
        );
        s.check_log();
    }
}

#[tokio::test]
async fn sigterm_lets_in_flight_uploads_finish() {
    let mut s = Server::start();
    let data = random_bytes(12 << 20, 77);
    let blocks: Vec<Bytes> = data.chunks(1 << 20).map(Bytes::copy_from_slice).collect();
    // A slow upload: one MiB every 100 ms.
    let stream = futures::stream::iter(blocks).then(|b| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        Ok::<_, std::io::Error>(b)
    });
    let c = client();
    let req = c
        .put(s.object_url("slow.bin"))
        .header(header::AUTHORIZATION, s.auth())
        .header(header::CONTENT_LENGTH, data.len())
        .body(reqwest::Body::wrap_stream(stream))
        .send();
    let upload = tokio::spawn(req);
    tokio::time::sleep(Duration::from_millis(400)).await;
    let pid = s.pid().unwrap();
    let stopper = std::thread::spawn(move || {
        cairn_tests::signal(pid, rustix::process::Signal::TERM);
    });
    stopper.join().unwrap();
    let resp = upload
        .await
        .unwrap()
        .expect("the in-flight upload gets an answer");
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(s.stop(), Some(0), "clean exit after SIGTERM");
    s.restart();
    let got = c
        .get(s.object_url("slow.bin"))
        .header(header::AUTHORIZATION, s.auth())
        .send()
        .await
        .unwrap();
    assert_eq!(got.bytes().await.unwrap(), data);
}

/// A small tmpfs, unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl Tmpfs {
    /// On a new temporary directory.
    fn mount(size: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut fs = Self::mount_on(dir.path(), size);
        fs._dir = Some(dir);
        fs
    }

    /// Over `path`, hiding what it holds until dropped.
    fn mount_on(path: &Path, size: &str) -> Self {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(path)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(
            ok,
            "mounting a tmpfs failed: this test needs root (CI runs as root)"
        );
        Self {
            path: path.to_owned(),
            _dir: None,
        }
    }

    fn free_bytes(&self) -> u64 {
        let st = rustix::fs::statvfs(&self.path).unwrap();
        st.f_bavail * st.f_frsize
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

#[tokio::test]
async fn full_disk_gives_507_and_keeps_data() {
    let fs = Tmpfs::mount("160m");
    let s = Server::start_with(ServerOptions {
        data_dir: Some(fs.path.join("data")),
        free_bytes_min: 16 << 20,
        gc_grace_secs: 1,
        gc_interval_secs: 1,
        ..Default::default()
    });
    let c = client();
    let put = |path: &str, body: reqwest::Body| {
        c.put(s.object_url(path))
            .header(header::AUTHORIZATION, s.auth())
            .body(body)
            .send()
    };
    let first = random_bytes(40 << 20, 1);
    assert_eq!(
        put("a", first.clone().into()).await.unwrap().status(),
        StatusCode::CREATED
    );
    // Announced: refused up front.
    let r = put("b", random_bytes(100 << 20, 2).into()).await.unwrap();
    assert_eq!(r.status(), StatusCode::INSUFFICIENT_STORAGE);
    // Streamed without a length (chunked, from a pipe): refused when the
    // reserve is reached. curl reads the early answer while still sending.
    let out = Command::new("bash")
        .arg("-c")
        .arg(format!(
            "head -c 125829120 /dev/urandom | curl -s -o /dev/null -w '%{{http_code}}' -H 'Authorization: {}' -T - {}",
            s.auth(),
            s.object_url("c")
        ))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "507");
    let got = c
        .get(s.object_url("a"))
        .header(header::AUTHORIZATION, s.auth())
        .send()
        .await
        .unwrap();
    assert_eq!(got.bytes().await.unwrap(), first);
    for p in ["b", "c"] {
        let r = c
            .get(s.object_url(p))
            .header(header::AUTHORIZATION, s.auth())
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NOT_FOUND);
    }
    // Small files and metadata still work, and space comes back after delete.
    assert_eq!(
        put("small", "tiny".into()).await.unwrap().status(),
        StatusCode::CREATED
    );
    c.delete(s.object_url("a"))
        .header(header::AUTHORIZATION, s.auth())
        .send()
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let r = put("b", random_bytes(60 << 20, 3).into()).await.unwrap();
        if r.status() == StatusCode::CREATED {
            break;
        }
        assert_eq!(r.status(), StatusCode::INSUFFICIENT_STORAGE);
        assert!(Instant::now() < deadline, "space was not reclaimed");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    drop(s);
}

/// Two of three nodes run out of chunk space. They refuse copies before
/// eating into their reserve (what metadata commits need), and an upload
/// that cannot get its two copies fails at once as "insufficient storage"
/// (HTTP 507, and the native protocol's code), where it used to be
/// "unavailable", which clients retry: a native upload spun for two
/// minutes, sending its chunks again and again, before failing. A full
/// node reports the copies it lacks and its repairer stops fetching them
/// (each would be refused) until a later pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn peers_out_of_space_refuse_copies_and_uploads_fail_at_once() {
    const RESERVE: u64 = 16 << 20;
    let mut c = Cluster::start(
        3,
        ClusterOptions {
            server: ServerOptions {
                free_bytes_min: RESERVE,
                allowed_errors: vec!["openraft::".into()],
                ..Default::default()
            },
            cluster_extra: "repair_interval_secs = 1".into(),
            ..ClusterOptions::default()
        },
    );
    c.wait_leader(Duration::from_secs(30)).await.unwrap();
    // Nodes 2 and 3 get small chunk disks: room for eight and twelve
    // 4 MiB chunks past the reserve. Metadata stays on the big disk.
    let mut disks = Vec::new();
    for (i, size) in [(1, "48m"), (2, "64m")] {
        c.nodes[i].stop();
        disks.push(Tmpfs::mount_on(&c.nodes[i].data_dir.join("chunks"), size));
        c.nodes[i].restart();
    }
    c.wait_converged(Duration::from_secs(30)).await.unwrap();
    // Node 1 sends copies to a restarted node only once it answers probes
    // again (writes skip a suspect node): until then node 3 would fill
    // first. Probes seen well after the restart came from the new process.
    let restarted = Instant::now();
    let deadline = restarted + Duration::from_secs(30);
    loop {
        let status = c.status(0).await.unwrap_or_default();
        let fresh = status["nodes"].as_array().is_some_and(|nodes| {
            nodes.len() == 3
                && nodes
                    .iter()
                    .all(|n| n["last_seen_ms"].as_u64().is_some_and(|ms| ms < 1_000))
        });
        if fresh && restarted.elapsed() > Duration::from_millis(1_500) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "node 1 does not hear the others: {status}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let http = client();
    let put = |path: String, body: Vec<u8>| {
        http.put(format!("{}/v1/default/{path}", c.http(0)))
            .header(header::AUTHORIZATION, c.auth())
            .body(body)
            .send()
    };
    let mut stored = Vec::new();
    let refused = loop {
        let body = random_bytes(8 << 20, stored.len() as u64);
        let r = put(format!("f{}", stored.len()), body.clone())
            .await
            .unwrap();
        if r.status() != StatusCode::CREATED {
            break r;
        }
        stored.push(body);
        assert!(
            stored.len() <= 6,
            "the small disks took more than they hold"
        );
    };
    assert_eq!(refused.status(), StatusCode::INSUFFICIENT_STORAGE);
    assert!(!stored.is_empty(), "nothing fit before the disks were full");
    let native = cairn_client::Client::connect(c.native_config(Some(0)))
        .await
        .unwrap();
    let err = native
        .put_from(
            "native.bin",
            Source::Bytes(Bytes::from(random_bytes(8 << 20, 99))),
            &|_| {},
        )
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::InsufficientStorage), "{err}");
    let left: Vec<String> = native
        .read_dir("")
        .await
        .unwrap()
        .into_iter()
        .map(|a| a.name)
        .filter(|n| !n.starts_with('f'))
        .collect();
    assert!(left.is_empty(), "the failed upload left {left:?} behind");
    for (i, disk) in disks.iter().enumerate() {
        assert!(
            disk.free_bytes() >= RESERVE,
            "node {} ate into its reserve: {} bytes free",
            i + 2,
            disk.free_bytes()
        );
    }
    // Metadata still commits (a small file lives inside it), and what was
    // stored before reads back whole.
    assert_eq!(
        put("small".into(), b"tiny".to_vec())
            .await
            .unwrap()
            .status(),
        StatusCode::CREATED
    );
    for (i, body) in stored.iter().enumerate() {
        let got = http
            .get(format!("{}/v1/default/f{i}", c.http(1)))
            .header(header::AUTHORIZATION, c.auth())
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert!(got == *body, "f{i} changed");
    }
    // Node 2 filled first: the uploads after that were stored on nodes 1
    // and 3 only. It says so, and its repair passes do not fetch copy
    // after copy only to refuse each.
    let deadline = Instant::now() + Duration::from_secs(20);
    let waits = "repair waits for the next pass";
    while !c.nodes[1].log_text().contains(waits) {
        assert!(
            Instant::now() < deadline,
            "no repair pass met the full disk"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = c.status(1).await.unwrap();
    assert!(
        status["under_replicated"].as_u64().unwrap_or(0) > 0,
        "{status}"
    );
    // `cluster status` shows which disk is full: no room for another
    // chunk on node 2, plenty on node 1.
    let room = |id: u64| {
        status["nodes"]
            .as_array()
            .and_then(|nodes| nodes.iter().find(|n| n["id"].as_u64() == Some(id)))
            .and_then(|n| n["disk_free_bytes"].as_u64())
    };
    assert!(room(2).is_some_and(|r| r < CHUNK as u64), "{status}");
    assert!(room(1).is_some_and(|r| r > 64 << 20), "{status}");
    // And its metrics, for alerts.
    let gauge = c.metric(1, "cairn_disk_free_bytes").await;
    assert!(gauge.is_some_and(|r| r < CHUNK as u64), "{gauge:?}");
    assert!(
        !c.nodes[1]
            .log_text()
            .contains("cannot repair a missing chunk copy"),
        "a repair pass kept fetching copies it had no room for"
    );
    // Servers first, then their disks, then their directories.
    for node in &mut c.nodes {
        node.kill9();
    }
    drop(disks);
    drop(c);
}
