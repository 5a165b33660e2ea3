//! Native-protocol benchmarks on a 3-node cluster on loopback, each with
//! its baseline measured in the same run:
//!
//! - sequential write and read of a 1 GiB file through the native protocol
//!   vs the HTTP API (same cluster, same node), medians of three rounds.
//!   Target: >= 1.0 x HTTP.
//! - 4 KiB random reads at queue depth 32 on a cached 64 MiB file, through
//!   one handle: operations per second and p50/p99 latency, next to HTTP
//!   range GETs at the same depth.
//! - client-visible stall across a kill -9 of the node the client is
//!   connected to, with an open handle being written and flushed, 20
//!   kills: p50, p99, max. Target: p99 < 1.5 s.
//! - lock handoff: how soon a blocking byte-range lock request is granted
//!   once its holder unlocks (two sessions on one node), next to flock(2)
//!   between two open files on the local disk.
//! - the transports alone (no storage, no protocol): 1 GiB over one QUIC
//!   connection with the nodes' settings vs one plain TCP connection, with
//!   the CPU both ends spent: the ceiling the first comparison lives under.
//!
//! ```sh
//! cargo build --release --bins && target/release/cairn-bench-native [--quick]
//! target/release/cairn-bench-native --locks-only   # the lock handoffs alone
//! ```

#[path = "common.rs"]
#[allow(dead_code)]
mod common;
mod transport;

use std::fs;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use cairn_client::native::Source;
use cairn_client::{Client, OpenOptions};
use cairn_tests::ServerOptions;
use cairn_tests::cluster::{Cluster, ClusterOptions};
use cairn_tests::random_bytes;
use clap::Parser;
use common::{mib_s, percentile, stall_ms, streamed_get, summarize, timed_put};
use rustix::fs::FlockOperation;
use serde::Serialize;

#[derive(Parser)]
#[command(about = "Cairn native-protocol benchmarks with same-run baselines")]
struct Args {
    /// 256 MiB once, 2 s of random reads and 5 kills (not the targets').
    #[arg(long)]
    quick: bool,
    /// Only the transports-alone comparison (printed, no JSON written).
    #[arg(long)]
    transport_only: bool,
    /// Only the lock handoffs (printed, no JSON written).
    #[arg(long)]
    locks_only: bool,
    #[arg(long, default_value = "target/bench/native.json")]
    out: PathBuf,
}

#[derive(Serialize)]
struct Transfer {
    mib: u64,
    native_write_mib_s: f64,
    http_write_mib_s: f64,
    write_ratio: f64,
    native_read_mib_s: f64,
    http_read_mib_s: f64,
    read_ratio: f64,
    target: &'static str,
    /// Each round's figures; the ones above are their medians, and the
    /// ratios the medians of each round's ratio.
    rounds: Vec<RoundFigures>,
}

#[derive(Serialize)]
struct RandomReads {
    queue_depth: usize,
    native_ops_s: f64,
    native_p50_us: f64,
    native_p99_us: f64,
    http_ops_s: f64,
    http_p50_us: f64,
    http_p99_us: f64,
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
struct LockHandoff {
    handoffs: usize,
    /// From the holder sending its unlock to the waiter holding the lock.
    native_p50_ms: f64,
    native_p99_ms: f64,
    native_max_ms: f64,
    /// From `flock(LOCK_UN)` to the other open file's blocked
    /// `flock(LOCK_EX)` returning, on the local disk.
    local_p50_ms: f64,
    local_p99_ms: f64,
}

#[derive(Serialize)]
struct Report {
    benchmark: &'static str,
    quick: bool,
    transfer: Transfer,
    random_reads: RandomReads,
    lock_handoff: LockHandoff,
    failover_stall: Stall,
    transport: transport::Transport,
}

fn options() -> ClusterOptions {
    ClusterOptions {
        server: ServerOptions {
            log_filter: "info".into(),
            ..ClusterOptions::default().server
        },
        ..ClusterOptions::default()
    }
}

fn main() -> anyhow::Result<()> {
    common::run_main(run)
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let (mib, rounds, read_secs, kills, handoffs) = if args.quick {
        (256, 1, 2, 5, 5)
    } else {
        (1024, ROUNDS, 10, 20, 20)
    };
    if args.locks_only {
        let c = Cluster::start(3, options());
        let leader = c.wait_leader(Duration::from_secs(30)).await?;
        print_lock_handoff(
            handoffs,
            &lock_handoff(&c, (leader + 1) % 3, handoffs).await?,
        );
        return Ok(());
    }
    eprintln!("--- the transports alone: {mib} MiB over QUIC vs TCP, {rounds} rounds");
    let transport = transport::compare(mib, rounds).await?;
    if args.transport_only {
        print_transport(mib, &transport);
        return Ok(());
    }
    let c = Cluster::start(3, options());
    let leader = c.wait_leader(Duration::from_secs(30)).await?;
    // Through a follower, as most clients are: any node serves.
    let via = (leader + 1) % 3;
    eprintln!("--- sequential {mib} MiB: native vs HTTP, {rounds} rounds");
    let transfer = transfer(&c, via, mib, rounds).await?;
    eprintln!("--- 4 KiB random reads, queue depth 32, {read_secs} s each");
    let random_reads = random_reads(&c, via, Duration::from_secs(read_secs)).await?;
    eprintln!("--- lock handoff between two sessions, {handoffs} times");
    let lock_handoff = lock_handoff(&c, via, handoffs).await?;
    drop(c);
    eprintln!("--- stall across {kills} kills of the connected node");
    let failover_stall = stall(kills).await?;

    println!(
        "{:<30} {:>10} {:>10} {:>8}   target",
        "sequential MiB/s", "native", "HTTP", "ratio"
    );
    let t = &transfer;
    println!(
        "{:<30} {:>10.1} {:>10.1} {:>8.2}   {}",
        format!("write {mib} MiB"),
        t.native_write_mib_s,
        t.http_write_mib_s,
        t.write_ratio,
        t.target
    );
    println!(
        "{:<30} {:>10.1} {:>10.1} {:>8.2}   {}",
        format!("read {mib} MiB"),
        t.native_read_mib_s,
        t.http_read_mib_s,
        t.read_ratio,
        t.target
    );
    let r = &random_reads;
    println!(
        "{:<30} {:>10} {:>10} {:>10}",
        "4 KiB random reads, QD 32", "ops/s", "p50 us", "p99 us"
    );
    println!(
        "{:<30} {:>10.0} {:>10.0} {:>10.0}",
        "native (one handle)", r.native_ops_s, r.native_p50_us, r.native_p99_us
    );
    println!(
        "{:<30} {:>10.0} {:>10.0} {:>10.0}",
        "HTTP range GET", r.http_ops_s, r.http_p50_us, r.http_p99_us
    );
    print_lock_handoff(handoffs, &lock_handoff);
    let s = &failover_stall;
    println!(
        "{:<30} {:>10} {:>10} {:>10}   target",
        "failover stall", "p50 ms", "p99 ms", "max ms"
    );
    println!(
        "{:<30} {:>10.0} {:>10.0} {:>10.0}   {}",
        format!("{kills} kill -9, connected node"),
        s.p50_ms,
        s.p99_ms,
        s.max_ms,
        s.target
    );
    print_transport(mib, &transport);
    let report = Report {
        benchmark: "native",
        quick: args.quick,
        transfer,
        random_reads,
        lock_handoff,
        failover_stall,
        transport,
    };
    if let Some(parent) = args.out.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::write(&args.out, serde_json::to_string_pretty(&report)?)?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

fn print_lock_handoff(handoffs: usize, l: &LockHandoff) {
    println!(
        "{:<30} {:>10} {:>10} {:>10}",
        "lock handoff", "p50 ms", "p99 ms", "max ms"
    );
    println!(
        "{:<30} {:>10.1} {:>10.1} {:>10.1}",
        format!("native, {handoffs} handoffs"),
        l.native_p50_ms,
        l.native_p99_ms,
        l.native_max_ms
    );
    println!(
        "{:<30} {:>10.3} {:>10.3}",
        "flock(2), local disk", l.local_p50_ms, l.local_p99_ms
    );
}

fn print_transport(mib: u64, x: &transport::Transport) {
    println!(
        "{:<30} {:>10} {:>10} {:>8}",
        "transport alone", "QUIC", "TCP", "ratio"
    );
    println!(
        "{:<30} {:>10.1} {:>10.1} {:>8.2}",
        format!("{mib} MiB, MiB/s"),
        x.quic_mib_s,
        x.tcp_mib_s,
        x.ratio
    );
    println!(
        "{:<30} {:>10.2} {:>10.2}",
        "CPU s per GiB, both ends", x.quic_cpu_s_per_gib, x.tcp_cpu_s_per_gib
    );
}

/// Rounds of the sequential comparison: one machine hiccup moves a single
/// pair of 1 GiB transfers by 20% or more, so the figures are the medians
/// of three, with the order of native and HTTP swapped each round (the
/// later of two writes shares the disks with the first one's settling).
const ROUNDS: usize = 3;

async fn transfer(c: &Cluster, via: usize, mib: u64, rounds: usize) -> anyhow::Result<Transfer> {
    let bytes = mib << 20;
    let http = reqwest::Client::new();
    let client = Client::connect(c.native_config(Some(via))).await?;
    let mut all = Vec::new();
    for round in 0..rounds {
        let one = Round {
            c,
            via,
            http: &http,
            client: &client,
            bytes,
            round,
        };
        let r = one.run(round % 2 == 1).await?;
        eprintln!(
            "round {}: write native {:.1} / HTTP {:.1} MiB/s = {:.2}, read native {:.1} / HTTP {:.1} MiB/s = {:.2}",
            round + 1,
            r.native_write_mib_s,
            r.http_write_mib_s,
            r.native_write_mib_s / r.http_write_mib_s,
            r.native_read_mib_s,
            r.http_read_mib_s,
            r.native_read_mib_s / r.http_read_mib_s,
        );
        all.push(r);
    }
    client.logoff().await?;
    let median = |f: fn(&RoundFigures) -> f64| common::median(all.iter().map(f).collect());
    // The ratios are the medians of each round's own ratio: a pair ran
    // side by side, on the same state of the machine. A ratio of the
    // medians could pair one round's native figure with another's HTTP.
    let (nw, hw) = (
        median(|r| r.native_write_mib_s),
        median(|r| r.http_write_mib_s),
    );
    let (nr, hr) = (
        median(|r| r.native_read_mib_s),
        median(|r| r.http_read_mib_s),
    );
    let write_ratio = median(|r| r.native_write_mib_s / r.http_write_mib_s);
    let read_ratio = median(|r| r.native_read_mib_s / r.http_read_mib_s);
    Ok(Transfer {
        mib,
        native_write_mib_s: nw,
        http_write_mib_s: hw,
        write_ratio,
        native_read_mib_s: nr,
        http_read_mib_s: hr,
        read_ratio,
        target: ">= 1.0 x HTTP",
        rounds: all,
    })
}

/// One round's figures, MiB/s.
#[derive(Serialize)]
struct RoundFigures {
    native_first: bool,
    native_write_mib_s: f64,
    http_write_mib_s: f64,
    native_read_mib_s: f64,
    http_read_mib_s: f64,
}

struct Round<'a> {
    c: &'a Cluster,
    via: usize,
    http: &'a reqwest::Client,
    client: &'a Client,
    bytes: u64,
    round: usize,
}

impl Round<'_> {
    /// Writes a fresh file each way, reads each back, deletes both.
    async fn run(&self, native_first: bool) -> anyhow::Result<RoundFigures> {
        let name = format!("native-{}.bin", self.round);
        let url = format!(
            "{}/v1/default/http-{}.bin",
            self.c.http(self.via),
            self.round
        );
        // Different bytes each time: the nodes deduplicate chunks, so a
        // write of bytes already stored would skip the disks (until
        // 2026-11-27 the native write did, and its figures were too high).
        let seed = 42 + 2 * self.round as u64;
        let http_data = Bytes::from(random_bytes(self.bytes as usize, seed));
        let native_data = Bytes::from(random_bytes(self.bytes as usize, seed + 1));
        let (native_write, http_write) = if native_first {
            let n = self.native_put(&name, native_data).await?;
            (n, self.http_put(&url, http_data).await?)
        } else {
            let h = self.http_put(&url, http_data).await?;
            (self.native_put(&name, native_data).await?, h)
        };
        let (native_read, http_read) = if native_first {
            let n = self.native_get(&name).await?;
            (n, self.http_get(&url).await?)
        } else {
            let h = self.http_get(&url).await?;
            (self.native_get(&name).await?, h)
        };
        self.client.remove(&name).await?;
        self.http
            .delete(&url)
            .header("Authorization", self.c.auth())
            .send()
            .await?
            .error_for_status()?;
        let b = self.bytes;
        Ok(RoundFigures {
            native_first,
            native_write_mib_s: mib_s(b, native_write),
            http_write_mib_s: mib_s(b, http_write),
            native_read_mib_s: mib_s(b, native_read),
            http_read_mib_s: mib_s(b, http_read),
        })
    }

    async fn http_put(&self, url: &str, data: Bytes) -> anyhow::Result<f64> {
        timed_put(self.http, url, &self.c.auth(), data).await
    }

    async fn native_put(&self, name: &str, data: Bytes) -> anyhow::Result<f64> {
        let started = Instant::now();
        // From memory without a copy, as reqwest sends the HTTP body.
        self.client
            .put_from(name, Source::Bytes(data), &|_| {})
            .await?;
        Ok(started.elapsed().as_secs_f64())
    }

    async fn http_get(&self, url: &str) -> anyhow::Result<f64> {
        let started = Instant::now();
        let n = streamed_get(self.http, url, Some(&self.c.auth())).await?;
        anyhow::ensure!(n == self.bytes, "HTTP GET returned {n} bytes");
        Ok(started.elapsed().as_secs_f64())
    }

    async fn native_get(&self, name: &str) -> anyhow::Result<f64> {
        let started = Instant::now();
        let n = self
            .client
            .get(name, &mut tokio::io::sink(), &|_| {})
            .await?;
        anyhow::ensure!(n == self.bytes, "native read returned {n} bytes");
        Ok(started.elapsed().as_secs_f64())
    }
}

const QD: usize = 32;
const FILE_MIB: u64 = 64;

/// (ops/s, sorted latencies in µs) of `QD` workers calling `op` for `time`.
async fn closed_loop<F, Fut>(time: Duration, op: F) -> anyhow::Result<(f64, Vec<f64>)>
where
    F: Fn(u64) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<()>> + Send,
{
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let mut workers = Vec::new();
    for w in 0..QD {
        let (op, stop) = (op.clone(), Arc::clone(&stop));
        workers.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut x = (w as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
            while !stop.load(Ordering::Relaxed) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                let off = (x % ((FILE_MIB << 20) / 4096)) * 4096;
                let t = Instant::now();
                op(off).await?;
                lat.push(t.elapsed().as_secs_f64() * 1e6);
            }
            Ok::<_, anyhow::Error>(lat)
        }));
    }
    tokio::time::sleep(time).await;
    stop.store(true, Ordering::Relaxed);
    let mut all = Vec::new();
    for w in workers {
        all.extend(w.await??);
    }
    let secs = started.elapsed().as_secs_f64();
    all.sort_by(f64::total_cmp);
    Ok((all.len() as f64 / secs, all))
}

async fn random_reads(c: &Cluster, via: usize, time: Duration) -> anyhow::Result<RandomReads> {
    let data = Bytes::from(random_bytes((FILE_MIB << 20) as usize, 9));
    let http = reqwest::Client::new();
    let url = format!("{}/v1/default/random.bin", c.http(via));
    timed_put(&http, &url, &c.auth(), data).await?;
    let client = Client::connect(c.native_config(Some(via))).await?;
    let file = Arc::new(client.open("random.bin", OpenOptions::read()).await?);
    // Warm the caches (page cache, and any chunk cache) with one pass.
    let mut sink = tokio::io::sink();
    client.get("random.bin", &mut sink, &|_| {}).await?;
    let (native_ops, native_lat) = closed_loop(time, {
        let file = Arc::clone(&file);
        move |off| {
            let file = Arc::clone(&file);
            async move {
                let d = file.read_at(off, 4096).await?;
                anyhow::ensure!(d.len() == 4096, "short read");
                Ok(())
            }
        }
    })
    .await?;
    let auth = c.auth();
    let (http_ops, http_lat) = closed_loop(time, move |off| {
        let (http, url, auth) = (http.clone(), url.clone(), auth.clone());
        async move {
            let r = http
                .get(&url)
                .header("Authorization", &auth)
                .header("Range", format!("bytes={off}-{}", off + 4095))
                .send()
                .await?;
            let b = r.bytes().await?;
            anyhow::ensure!(b.len() == 4096, "short range");
            Ok(())
        }
    })
    .await?;
    Ok(RandomReads {
        queue_depth: QD,
        native_ops_s: native_ops,
        native_p50_us: percentile(&native_lat, 0.5),
        native_p99_us: percentile(&native_lat, 0.99),
        http_ops_s: http_ops,
        http_p50_us: percentile(&http_lat, 0.5),
        http_p99_us: percentile(&http_lat, 0.99),
    })
}

/// How long a waiter sits in a blocking lock request before it holds.
const HANDOFF_WAITING: Duration = Duration::from_millis(300);

/// Two sessions pass an exclusive lock back and forth `n` times. Each
/// time the waiter asks (blocking) while the other holds, and the holder
/// unlocks once the waiter has waited [`HANDOFF_WAITING`]: the figure is
/// from the unlock being sent to the waiter's lock returning.
async fn lock_handoff(c: &Cluster, via: usize, n: usize) -> anyhow::Result<LockHandoff> {
    let a = Client::connect(c.native_config(Some(via))).await?;
    let b = Client::connect(c.native_config(Some(via))).await?;
    let open = OpenOptions::create().with(cairn_proto::wire::Disposition::OpenOrCreate);
    let files = [
        a.open("lock-handoff", open).await?,
        b.open("lock-handoff", open).await?,
    ];
    files[0].lock(0, 1, true, Duration::ZERO).await?;
    let mut native = Vec::with_capacity(n);
    for i in 0..n {
        let (holder, waiter) = (&files[i % 2], &files[(i + 1) % 2]);
        let waits = async {
            waiter.lock(0, 1, true, Duration::from_secs(10)).await?;
            anyhow::Ok(Instant::now())
        };
        let unlocks = async {
            tokio::time::sleep(HANDOFF_WAITING).await;
            let sent = Instant::now();
            holder.unlock(0, 1).await?;
            anyhow::Ok(sent)
        };
        let (held, sent) = tokio::try_join!(waits, unlocks)?;
        native.push(held.saturating_duration_since(sent).as_secs_f64() * 1e3);
    }
    for f in files {
        f.close().await?;
    }
    let local = tokio::task::spawn_blocking(move || local_handoffs(n)).await??;
    native.sort_by(f64::total_cmp);
    Ok(LockHandoff {
        handoffs: n,
        native_p50_ms: percentile(&native, 0.5),
        native_p99_ms: percentile(&native, 0.99),
        native_max_ms: native.last().copied().unwrap_or(0.0),
        local_p50_ms: percentile(&local, 0.5),
        local_p99_ms: percentile(&local, 0.99),
    })
}

/// The baseline: the same handoffs with flock(2) between two open files
/// of one local file (in the working directory: the benchmark's disk),
/// sorted, in ms.
fn local_handoffs(n: usize) -> anyhow::Result<Vec<f64>> {
    let dir = tempfile::tempdir_in(".")?;
    let path = dir.path().join("lock-handoff");
    let open = || {
        fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
    };
    let files = [Arc::new(open()?), Arc::new(open()?)];
    let flock = |f: &fs::File, op| rustix::fs::flock(f, op).map_err(std::io::Error::from);
    flock(&files[0], FlockOperation::LockExclusive)?;
    let mut times = Vec::with_capacity(n);
    for i in 0..n {
        let waiter = Arc::clone(&files[(i + 1) % 2]);
        let waits = std::thread::spawn(move || {
            flock(&waiter, FlockOperation::LockExclusive).map(|()| Instant::now())
        });
        std::thread::sleep(Duration::from_millis(50));
        let sent = Instant::now();
        flock(&files[i % 2], FlockOperation::Unlock)?;
        let held = waits
            .join()
            .map_err(|_| anyhow::anyhow!("a flock waiter panicked"))??;
        times.push(held.saturating_duration_since(sent).as_secs_f64() * 1e3);
    }
    times.sort_by(f64::total_cmp);
    Ok(times)
}

/// One client writes 64 KiB and flushes, over and over, through one open
/// handle; the node it is connected to is killed. The stall is the time
/// from the kill until the first write+flush begun after it completes.
async fn stall(kills: usize) -> anyhow::Result<Stall> {
    let mut c = Cluster::start(3, options());
    c.wait_leader(Duration::from_secs(30)).await?;
    let client = Client::connect(c.native_config(Some(0))).await?;
    let file = Arc::new(client.open("stall.bin", OpenOptions::create()).await?);
    // (started, done) of each write+flush.
    let done = Arc::new(std::sync::Mutex::new(Vec::<(Instant, Instant)>::new()));
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (file, done, stop) = (Arc::clone(&file), Arc::clone(&done), Arc::clone(&stop));
        tokio::spawn(async move {
            let block = Bytes::from(vec![7u8; 64 << 10]);
            let mut off = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let started = Instant::now();
                file.write_at(off % (256 << 20), block.clone()).await?;
                file.flush().await?;
                off += block.len() as u64;
                done.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push((started, Instant::now()));
            }
            Ok::<_, cairn_client::ClientError>(())
        })
    };
    let mut stalls = Vec::new();
    for k in 0..kills {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let victim = c
            .node_at(&client.current_node().await)
            .context("connected node unknown")?;
        let killed_at = Instant::now();
        c.nodes[victim].kill9();
        // The first write+flush begun after the kill: one already under
        // way may have had its answer on the wire as the node died, and
        // its completion says nothing of the stall (run 26 counted one
        // such as a stall of 0 ms).
        let stall = stall_ms(k, killed_at, || {
            done.lock()
                .unwrap_or_else(|e| e.into_inner())
                .iter()
                .find(|(started, _)| *started > killed_at)
                .map(|(_, done)| *done)
        })
        .await?;
        eprintln!(
            "kill {k}: node {} (connected), writes resumed after {:.0} ms",
            victim + 1,
            stall
        );
        stalls.push(stall);
        c.nodes[victim].restart();
        c.wait_converged(Duration::from_secs(30)).await?;
    }
    stop.store(true, Ordering::Relaxed);
    writer.await??;
    let (p50_ms, p99_ms, max_ms) = summarize(&stalls);
    Ok(Stall {
        kills,
        p50_ms,
        p99_ms,
        max_ms,
        all_ms: stalls,
        target: "p99 < 1500 ms",
    })
}
