//! Baselines both benchmark programs measure.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::bail;
use bytes::Bytes;

/// Runs a benchmark's async body on a multi-threaded runtime, with the
/// allocator tuned first as the cairn binaries do (the in-process client
/// moves 4 MiB buffers).
pub fn run_main<F: std::future::Future<Output = anyhow::Result<()>>>(
    body: impl FnOnce() -> F,
) -> anyhow::Result<()> {
    cairn_client::tune_allocator();
    // CAIRN_LOG=cairn_client=debug shows the client's failovers step by
    // step, with times, beside the bench's own lines.
    if let Ok(filter) = std::env::var("CAIRN_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .init();
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(body())
}

pub fn mib_s(bytes: u64, secs: f64) -> f64 {
    bytes as f64 / secs / 1048576.0
}

/// `dd bs=4M conv=fsync` of `bytes` zeros into `path` (then removed).
pub fn dd_mib_s(path: &Path, bytes: u64) -> anyhow::Result<f64> {
    let started = Instant::now();
    let status = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", path.display()))
        .args(["bs=4M", &format!("count={}", bytes >> 22), "conv=fsync"])
        .stderr(Stdio::null())
        .status()?;
    if !status.success() {
        bail!("dd failed");
    }
    let secs = started.elapsed().as_secs_f64();
    std::fs::remove_file(path)?;
    Ok(mib_s(bytes, secs))
}

/// One streamed PUT of `data` (1 MiB blocks, length announced); seconds.
pub async fn timed_put(
    client: &reqwest::Client,
    url: &str,
    auth: &str,
    data: Bytes,
) -> anyhow::Result<f64> {
    let len = data.len();
    let blocks: Vec<Bytes> = (0..len)
        .step_by(1 << 20)
        .map(|o| data.slice(o..(o + (1 << 20)).min(len)))
        .collect();
    let body = reqwest::Body::wrap_stream(futures::stream::iter(
        blocks.into_iter().map(Ok::<_, std::io::Error>),
    ));
    let started = Instant::now();
    let r = client
        .put(url)
        .header("Authorization", auth)
        .header("Content-Length", len)
        .body(body)
        .send()
        .await?;
    if !r.status().is_success() {
        bail!("PUT {url}: {}", r.status());
    }
    Ok(started.elapsed().as_secs_f64())
}

/// A streamed GET (with `auth` as the Authorization header, if any); the
/// byte count of the body. A non-2xx status is an error.
pub async fn streamed_get(
    client: &reqwest::Client,
    url: &str,
    auth: Option<&str>,
) -> anyhow::Result<u64> {
    let mut rb = client.get(url);
    if let Some(a) = auth {
        rb = rb.header("Authorization", a);
    }
    let r = rb.send().await?;
    if !r.status().is_success() {
        bail!("GET {url}: {}", r.status());
    }
    let mut body = r.bytes_stream();
    let mut n = 0u64;
    while let Some(b) = futures::StreamExt::next(&mut body).await {
        n += b?.len() as u64;
    }
    Ok(n)
}

/// The value at fraction `p` of `sorted` (nearest rank), 0 when empty.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted
        .get(((sorted.len().max(1) - 1) as f64 * p).round() as usize)
        .copied()
        .unwrap_or(0.0)
}

/// The middle value of `values` (the upper one of an even count).
pub fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// (p50, p99, max) of `values`.
pub fn summarize(values: &[f64]) -> (f64, f64, f64) {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let max = sorted.last().copied().unwrap_or(0.0);
    (percentile(&sorted, 0.5), percentile(&sorted, 0.99), max)
}

/// Milliseconds from `killed_at` until `first_after` reports the first
/// completion after it; kill `k` fails after 60 s without one.
pub async fn stall_ms(
    k: usize,
    killed_at: Instant,
    first_after: impl Fn() -> Option<Instant>,
) -> anyhow::Result<f64> {
    loop {
        if let Some(t) = first_after() {
            return Ok(t.duration_since(killed_at).as_secs_f64() * 1000.0);
        }
        if killed_at.elapsed() > std::time::Duration::from_secs(60) {
            bail!("kill {k}: no write completed within 60 s");
        }
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
    }
}
