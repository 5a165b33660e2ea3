//! The transports alone, with no storage behind them: 1 GiB sent from one
//! end of a loopback connection to the other, over QUIC with the settings
//! nodes and clients use, and over plain TCP as the HTTP API is served.
//!
//! Both ends run in this process, so its CPU time over a transfer is what
//! the transport costs both ends together. The native protocol cannot
//! outrun its transport: where QUIC moves bytes at a fraction of TCP's
//! speed for a multiple of its CPU on this machine, that fraction bounds
//! what a native read or write can reach against HTTP.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::FuturesUnordered;
use serde::Serialize;

use crate::common::median;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Size of each answer, as a native read's: one 4 MiB chunk.
const ANSWER_BYTES: usize = 4 << 20;
/// Answers in flight at once on the QUIC connection, as the client keeps.
const IN_FLIGHT: usize = 4;
const ALPN: &[u8] = b"cairn-bench-transport";

#[derive(Serialize)]
pub struct Transport {
    pub mib: u64,
    pub quic_mib_s: f64,
    pub tcp_mib_s: f64,
    pub ratio: f64,
    /// CPU seconds both ends spent per GiB moved.
    pub quic_cpu_s_per_gib: f64,
    pub tcp_cpu_s_per_gib: f64,
}

/// Moves `mib` MiB each way and compares; medians of `rounds`.
pub async fn compare(mib: u64, rounds: usize) -> anyhow::Result<Transport> {
    let answers = (mib << 20) as usize / ANSWER_BYTES;
    let payload = Bytes::from(cairn_tests::random_bytes(ANSWER_BYTES, 5));
    let mut quic = Vec::new();
    let mut tcp = Vec::new();
    for _ in 0..rounds {
        quic.push(measured(quic_transfer(payload.clone(), answers)).await?);
        tcp.push(measured(tcp_transfer(payload.clone(), answers)).await?);
    }
    let gib = (answers * ANSWER_BYTES) as f64 / f64::from(1u32 << 30);
    let secs = |v: &[Usage]| median(v.iter().map(|u| u.wall).collect());
    let cpu = |v: &[Usage]| median(v.iter().map(|u| u.cpu).collect()) / gib;
    let mib_s = |s: f64| gib * 1024.0 / s;
    let (quic_mib_s, tcp_mib_s) = (mib_s(secs(&quic)), mib_s(secs(&tcp)));
    Ok(Transport {
        mib,
        quic_mib_s,
        tcp_mib_s,
        ratio: quic_mib_s / tcp_mib_s,
        quic_cpu_s_per_gib: cpu(&quic),
        tcp_cpu_s_per_gib: cpu(&tcp),
    })
}

/// Wall and CPU seconds (all of this process's threads) of one transfer.
struct Usage {
    wall: f64,
    cpu: f64,
}

async fn measured(
    transfer: impl std::future::Future<Output = anyhow::Result<()>>,
) -> anyhow::Result<Usage> {
    let (cpu0, t0) = (process_cpu()?, Instant::now());
    transfer.await?;
    let (wall, cpu1) = (t0.elapsed().as_secs_f64(), process_cpu()?);
    Ok(Usage {
        wall,
        cpu: cpu1 - cpu0,
    })
}

/// User plus system CPU seconds of this process so far, from
/// `/proc/self/stat` (in clock ticks: 100 a second on Linux).
fn process_cpu() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // The command name may hold spaces; the fields after it do not.
    let after = stat.rsplit_once(')').context("odd /proc/self/stat")?.1;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| -> anyhow::Result<f64> {
        Ok(fields
            .get(i)
            .context("short /proc/self/stat")?
            .parse::<f64>()?)
    };
    // utime and stime are fields 14 and 15; `after` starts at field 3.
    Ok((ticks(11)? + ticks(12)?) / 100.0)
}

/// `answers` answers of `payload`, each on its own stream asked for by a
/// one-byte request, [`IN_FLIGHT`] at a time: a native read's shape.
async fn quic_transfer(payload: Bytes, answers: usize) -> anyhow::Result<()> {
    let (server_cfg, client_cfg) = cairn_quic::self_signed(ALPN, Duration::from_secs(10))?;
    let server = cairn_quic::endpoint(([127, 0, 0, 1], 0).into(), Some(server_cfg), None)?;
    let addr: SocketAddr = server.local_addr()?;
    let serving = tokio::spawn(async move {
        let conn = server.accept().await.context("no connection")?.await?;
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            let payload = payload.clone();
            tokio::spawn(async move {
                let _ = recv.read_to_end(16).await;
                let _ = send.write_chunk(payload).await;
                let _ = send.finish();
            });
        }
        server.wait_idle().await;
        Ok::<_, anyhow::Error>(())
    });
    let mut client = cairn_quic::endpoint(([127, 0, 0, 1], 0).into(), None, None)?;
    client.set_default_client_config(client_cfg);
    let conn = client.connect(addr, "localhost")?.await?;
    let mut in_flight = FuturesUnordered::new();
    let (mut asked, mut received) = (0, 0);
    while asked < answers || !in_flight.is_empty() {
        while asked < answers && in_flight.len() < IN_FLIGHT {
            in_flight.push(ask(conn.clone()));
            asked += 1;
        }
        received += in_flight.next().await.context("no answer")??;
    }
    conn.close(0u32.into(), b"done");
    client.wait_idle().await;
    serving.await??;
    anyhow::ensure!(
        received == answers * ANSWER_BYTES,
        "QUIC moved {received} bytes"
    );
    Ok(())
}

/// Asks for one answer and reads it; its length.
async fn ask(conn: quinn::Connection) -> anyhow::Result<usize> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&[1]).await?;
    send.finish()?;
    let mut n = 0;
    while let Some(c) = recv.read_chunk(usize::MAX, true).await? {
        n += c.bytes.len();
    }
    Ok(n)
}

/// The same bytes down one TCP connection, read in 1 MiB buffers.
async fn tcp_transfer(payload: Bytes, answers: usize) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let serving = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await?;
        for _ in 0..answers {
            s.write_all(&payload).await?;
        }
        s.shutdown().await?;
        Ok::<_, anyhow::Error>(())
    });
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let mut buf = vec![0u8; 1 << 20];
    let mut received = 0usize;
    loop {
        let n = s.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        received += n;
    }
    serving.await??;
    anyhow::ensure!(
        received == answers * ANSWER_BYTES,
        "TCP moved {received} bytes"
    );
    Ok(())
}
