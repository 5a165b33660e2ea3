//! Opens one file through a native session (and writes to it, flushed
//! or not, if asked), prints `held lease N node ADDR`, and holds it
//! (answering lease breaks) until killed. See `cairn_tests::hold`.

use anyhow::Context;
use cairn_client::{Client, NativeConfig, OpenOptions};
use cairn_tests::hold::HoldSpec;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let arg = std::env::args()
        .nth(1)
        .context("usage: cairn-hold SPEC-JSON")?;
    let spec: HoldSpec = serde_json::from_str(&arg)?;
    let cfg = NativeConfig::new(spec.nodes, spec.ca, spec.token, spec.share);
    let client = Client::connect(cfg).await?;
    let opts = OpenOptions {
        access: spec.access,
        share_access: spec.share_access,
        ..OpenOptions::read().with(spec.disposition).lease(spec.lease)
    };
    let file = client.open(&spec.path, opts).await?;
    let piece = bytes::Bytes::from(vec![0x5a; 1 << 20]);
    let mut written = 0;
    while written < spec.write_bytes {
        let n = (spec.write_bytes - written).min(piece.len());
        file.write_at(written as u64, piece.slice(..n)).await?;
        written += n;
    }
    if spec.flush {
        file.flush().await?;
    }
    println!(
        "held lease {} node {}",
        file.lease(),
        client.current_node().await
    );
    std::future::pending::<()>().await;
    drop(file);
    Ok(())
}
