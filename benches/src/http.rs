//! HTTP API benchmarks, each against a baseline measured in the same run on
//! the same disk: `dd conv=fsync` for large PUTs, nginx for GETs, a
//! write+fsync+rename+fsync-dir loop for small PUTs. Prints a table and
//! writes JSON.
//!
//!     cargo build --release --bins && target/release/cairn-bench-http [--quick]

#[path = "common.rs"]
#[allow(dead_code)]
mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use cairn_tests::{Server, ServerOptions, random_bytes};
use clap::Parser;
use common::{dd_mib_s, mib_s, streamed_get};
use futures::StreamExt;
use reqwest::{Client, header};
use serde::Serialize;

#[derive(Parser)]
#[command(about = "Cairn HTTP benchmarks with same-run baselines")]
struct Args {
    /// Smaller sizes, for a quick check (the figures are not the targets').
    #[arg(long)]
    quick: bool,
    /// Where data, the nginx root and the baseline files go (same disk).
    #[arg(long, default_value = "/var/tmp/cairn-bench")]
    dir: PathBuf,
    /// JSON results file.
    #[arg(long, default_value = "target/bench/http.json")]
    out: PathBuf,
}

#[derive(Serialize)]
struct Row {
    name: String,
    cairn: f64,
    baseline: f64,
    baseline_name: String,
    unit: String,
    ratio: f64,
    target: String,
}

#[derive(Serialize)]
struct Report {
    benchmark: &'static str,
    quick: bool,
    rows: Vec<Row>,
    peak_rss_mib: f64,
    rss_target_mib: f64,
}

fn row(
    name: &str,
    cairn: f64,
    baseline: f64,
    baseline_name: &str,
    unit: &str,
    target: &str,
) -> Row {
    Row {
        name: name.into(),
        cairn,
        baseline,
        baseline_name: baseline_name.into(),
        unit: unit.into(),
        ratio: if baseline > 0.0 {
            cairn / baseline
        } else {
            0.0
        },
        target: target.into(),
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = fs::remove_dir_all(&args.dir);
    fs::create_dir_all(&args.dir)?;
    let big = if args.quick { 256u64 << 20 } else { 1 << 30 };
    let small_count = if args.quick { 2000 } else { 20_000 };
    let rss_size = if args.quick { 1u64 << 30 } else { 4 << 30 };

    let server = Server::start_with(ServerOptions {
        data_dir: Some(args.dir.join("cairn")),
        log_filter: "info".into(),
        ..Default::default()
    });
    let nginx_root = args.dir.join("www");
    fs::create_dir_all(nginx_root.join("small"))?;
    let nginx = Nginx::start(&args.dir, &nginx_root)?;
    let c = Client::builder().pool_max_idle_per_host(64).build()?;
    let mut rows = Vec::new();

    eprintln!(
        "--- large PUT: {} MiB through HTTP vs dd conv=fsync",
        big >> 20
    );
    let data = Bytes::from(random_bytes(big as usize, 42));
    // The disk's speed drifts: measure the baseline before and after, and
    // compare with the mean.
    let dd_before = dd_mib_s(&args.dir.join("dd.bin"), big)?;
    let put = timed_put(&c, &server, "big.bin", data.clone()).await?;
    let dd = (dd_before + dd_mib_s(&args.dir.join("dd.bin"), big)?) / 2.0;
    rows.push(row(
        &format!("PUT {} MiB", big >> 20),
        big as f64 / put / 1048576.0,
        dd,
        "dd bs=4M conv=fsync",
        "MiB/s",
        ">= 0.8",
    ));

    eprintln!("--- large GET: HTTP (BLAKE3-verified) vs nginx, same page cache");
    fs::write(nginx_root.join("big.bin"), &data)?;
    drop(data);
    // Best of three runs each (after a warm-up), alternating, so a noisy
    // moment does not decide the ratio.
    let _ = timed_get(&c, &format!("{}/big.bin", nginx.url), None).await?;
    let (mut ng, mut ca) = (f64::MAX, f64::MAX);
    for _ in 0..3 {
        ng = ng.min(timed_get(&c, &format!("{}/big.bin", nginx.url), None).await?);
        ca = ca.min(timed_get(&c, &server.object_url("big.bin"), Some(&server.auth())).await?);
    }
    rows.push(row(
        &format!("GET {} MiB", big >> 20),
        mib_s(big, ca),
        mib_s(big, ng),
        "nginx sendfile",
        "MiB/s",
        ">= 0.7",
    ));

    eprintln!("--- {small_count} x 4 KiB PUT, 32 clients vs write+fsync+rename+fsync-dir loop");
    let baseline_count = small_count.min(3000);
    let base_before = small_file_baseline(&args.dir.join("baseline-1"), baseline_count)?;
    let cairn_puts = small_puts(&c, &server, small_count).await?;
    let base =
        (base_before + small_file_baseline(&args.dir.join("baseline-2"), baseline_count)?) / 2.0;
    rows.push(row(
        "4 KiB PUT x32",
        cairn_puts,
        base,
        "fsync+rename loop",
        "files/s",
        ">= 4.0",
    ));

    eprintln!("--- 4 KiB GET, 32 clients vs nginx");
    for i in 0..1000 {
        fs::write(
            nginx_root.join(format!("small/{i:05}")),
            random_bytes(4096, 1_000_000 + i),
        )?;
    }
    let ng_gets = small_gets(
        &c,
        |i| format!("{}/small/{:05}", nginx.url, i % 1000),
        None,
        small_count,
    )
    .await?;
    let ca_gets = small_gets(
        &c,
        |i| server.object_url(&format!("small/{:05}", i % 1000)),
        Some(server.auth()),
        small_count,
    )
    .await?;
    rows.push(row(
        "4 KiB GET x32",
        ca_gets,
        ng_gets,
        "nginx",
        "req/s",
        ">= 0.3",
    ));
    drop(server);

    eprintln!("--- peak RSS: {} GiB upload then download", rss_size >> 30);
    let rss_server = Server::start_with(ServerOptions {
        data_dir: Some(args.dir.join("cairn-rss")),
        log_filter: "info".into(),
        ..Default::default()
    });
    streamed_put(&c, &rss_server, "huge.bin", rss_size).await?;
    let _ = timed_get(
        &c,
        &rss_server.object_url("huge.bin"),
        Some(&rss_server.auth()),
    )
    .await?;
    let peak = peak_rss_mib(rss_server.pid().context("server pid")?)?;
    drop(rss_server);
    drop(nginx);

    print_table(&rows, peak);
    let report = Report {
        benchmark: "http",
        quick: args.quick,
        rows,
        peak_rss_mib: peak,
        rss_target_mib: 128.0,
    };
    if let Some(parent) = args.out.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::write(&args.out, serde_json::to_string_pretty(&report)?)?;
    eprintln!("wrote {}", args.out.display());
    let _ = fs::remove_dir_all(&args.dir);
    Ok(())
}

fn print_table(rows: &[Row], peak: f64) {
    println!(
        "{:<16} {:>12} {:>12} {:<22} {:>8} {:>8}",
        "benchmark", "cairn", "baseline", "baseline is", "ratio", "target"
    );
    for r in rows {
        println!(
            "{:<16} {:>12.1} {:>12.1} {:<22} {:>8.2} {:>8}   ({})",
            r.name, r.cairn, r.baseline, r.baseline_name, r.ratio, r.target, r.unit
        );
    }
    println!(
        "{:<16} {:>12.1} {:>12} {:<22} {:>8} {:>8}   (MiB)",
        "peak RSS", peak, "-", "-", "-", "<= 128"
    );
}

async fn timed_put(c: &Client, s: &Server, path: &str, data: Bytes) -> anyhow::Result<f64> {
    common::timed_put(c, &s.object_url(path), &s.auth(), data).await
}

/// Uploads `len` bytes generated on the fly (for the RSS run).
async fn streamed_put(c: &Client, s: &Server, path: &str, len: u64) -> anyhow::Result<()> {
    const BLOCK: u64 = 1 << 20;
    let stream = futures::stream::iter(0..len / BLOCK)
        .map(|i| Ok::<_, std::io::Error>(Bytes::from(random_bytes(BLOCK as usize, 7_000 + i))));
    let r = c
        .put(s.object_url(path))
        .header(header::AUTHORIZATION, s.auth())
        .header(header::CONTENT_LENGTH, len / BLOCK * BLOCK)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("PUT {path}: {}", r.status());
    }
    Ok(())
}

async fn timed_get(c: &Client, url: &str, auth: Option<&str>) -> anyhow::Result<f64> {
    let started = Instant::now();
    let n = streamed_get(c, url, auth).await?;
    if n == 0 {
        bail!("GET {url}: empty body");
    }
    Ok(started.elapsed().as_secs_f64())
}

/// The baseline a small-file PUT must beat: one durable file at a time.
fn small_file_baseline(dir: &Path, count: usize) -> anyhow::Result<f64> {
    fs::create_dir_all(dir)?;
    let data = random_bytes(4096, 5);
    let d = fs::File::open(dir)?;
    let started = Instant::now();
    for i in 0..count {
        let tmp = dir.join(format!("{i}.tmp"));
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&data)?;
        f.sync_all()?;
        fs::rename(&tmp, dir.join(i.to_string()))?;
        d.sync_all()?;
    }
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

async fn small_puts(c: &Client, s: &Server, count: usize) -> anyhow::Result<f64> {
    let started = Instant::now();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..count)
        .map(|i| {
            let rb = c
                .put(s.object_url(&format!("small/{i:05}")))
                .header(header::AUTHORIZATION, s.auth())
                .body(random_bytes(4096, 1_000_000 + i as u64));
            async move {
                let r = rb.send().await?;
                if !r.status().is_success() {
                    bail!("small PUT: {}", r.status());
                }
                Ok(())
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

async fn small_gets(
    c: &Client,
    url: impl Fn(usize) -> String,
    auth: Option<String>,
    count: usize,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let results: Vec<anyhow::Result<()>> = futures::stream::iter(0..count)
        .map(|i| {
            let mut rb = c.get(url(i));
            if let Some(a) = &auth {
                rb = rb.header(header::AUTHORIZATION, a);
            }
            async move {
                let r = rb.send().await?;
                if !r.status().is_success() {
                    bail!("small GET: {}", r.status());
                }
                let body = r.bytes().await?;
                if body.len() != 4096 {
                    bail!("small GET: {} bytes", body.len());
                }
                Ok(())
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    results.into_iter().collect::<anyhow::Result<Vec<()>>>()?;
    Ok(count as f64 / started.elapsed().as_secs_f64())
}

fn peak_rss_mib(pid: u32) -> anyhow::Result<f64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("VmHWM missing")?;
    Ok(kb / 1024.0)
}

/// nginx on a free loopback port, serving `root`.
struct Nginx {
    child: Child,
    url: String,
}

impl Nginx {
    fn start(dir: &Path, root: &Path) -> anyhow::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let prefix = dir.join("nginx");
        fs::create_dir_all(prefix.join("logs"))?;
        let conf = prefix.join("nginx.conf");
        fs::write(
            &conf,
            format!(
                "daemon off;\nuser root;\nworker_processes 2;\npid {p}/nginx.pid;\nerror_log {p}/logs/error.log;\n\
                 events {{ worker_connections 1024; }}\n\
                 http {{ access_log off; sendfile on; tcp_nopush on; keepalive_requests 100000;\n\
                 client_body_temp_path {p}/body; proxy_temp_path {p}/proxy; fastcgi_temp_path {p}/fcgi; uwsgi_temp_path {p}/uwsgi; scgi_temp_path {p}/scgi;\n\
                 server {{ listen 127.0.0.1:{port}; root {root}; }} }}\n",
                p = prefix.display(),
                root = root.display()
            ),
        )?;
        let child = Command::new("nginx")
            .arg("-c")
            .arg(&conf)
            .arg("-p")
            .arg(&prefix)
            .stderr(Stdio::null())
            .spawn()
            .context("starting nginx (apt-get install nginx)")?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if Instant::now() > deadline {
                bail!("nginx did not start");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self {
            child,
            url: format!("http://127.0.0.1:{port}"),
        })
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM, not SIGKILL: the master must take its workers down with it.
        cairn_tests::signal(self.child.id(), rustix::process::Signal::TERM);
        let _ = self.child.wait();
    }
}
