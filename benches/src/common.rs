//! Baselines both benchmark programs measure.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::bail;
use bytes::Bytes;

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
