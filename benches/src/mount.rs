//! FUSE mount benchmarks on a 3-node cluster on loopback, with fio on the
//! local disk and the native client measured in the same run:
//!
//! - sequential write and read, 1 MiB blocks (fio); target: the mount
//!   >= 0.7 x the native client;
//! - 4 KiB random reads and writes, 16 at a time (fio, 16 jobs);
//! - file create+close and stat rates (8 threads); target: >= 1,000
//!   creates/s on the 3-node dev cluster.
//!
//!     cargo build --release --bins && target/release/cairn-bench-mount [--quick]

#[path = "common.rs"]
#[allow(dead_code)]
mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use cairn_client::{Client, OpenOptions};
use cairn_tests::cluster::{Cluster, ClusterOptions};
use cairn_tests::mount::Mount;
use cairn_tests::random_bytes;
use clap::Parser;
use common::mib_s;
use serde::Serialize;

#[derive(Parser)]
#[command(about = "Cairn FUSE mount benchmarks with same-run baselines")]
struct Args {
    /// Smaller files and fewer of them (not the targets').
    #[arg(long)]
    quick: bool,
    #[arg(long, default_value = "target/bench/mount.json")]
    out: PathBuf,
}

#[derive(Serialize, Default)]
struct Row {
    name: String,
    mount: f64,
    local: f64,
    native: Option<f64>,
    unit: &'static str,
    target: &'static str,
}

#[derive(Serialize)]
struct Report {
    benchmark: &'static str,
    quick: bool,
    rows: Vec<Row>,
}

/// fio's figure for one job: MiB/s (`bw`) or operations/s (`iops`).
fn fio(dir: &Path, name: &str, args: &str, field: &str) -> anyhow::Result<f64> {
    let out = Command::new("fio")
        .arg(format!("--name={name}"))
        .arg(format!("--directory={}", dir.display()))
        .args(args.split_whitespace())
        .arg("--output-format=json")
        .arg("--group_reporting")
        .output()
        .context("running fio")?;
    if !out.status.success() {
        bail!("fio {name}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let job = &v["jobs"][0];
    let side = if args.contains("write") {
        "write"
    } else {
        "read"
    };
    let x = job[side][field].as_f64().unwrap_or(0.0);
    Ok(if field == "bw" { x / 1024.0 } else { x })
}

/// Files created (and closed) per second, `threads` at a time, in `dir`
/// (each thread in a directory of its own, as mdtest does: the kernel
/// serializes creates within one directory); then stats of them per
/// second (after the kernel's attribute cache expired).
fn metadata_rates(dir: &Path, files: usize, threads: usize) -> anyhow::Result<(f64, f64)> {
    let dir = Arc::new(dir.join("meta"));
    for t in 0..threads {
        fs::create_dir_all(dir.join(format!("t{t}")))?;
    }
    let run = |op: &(dyn Fn(&Path, usize) -> std::io::Result<()> + Sync)| -> anyhow::Result<f64> {
        let started = Instant::now();
        std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|t| {
                    let dir = Arc::clone(&dir);
                    scope.spawn(move || -> std::io::Result<()> {
                        for i in (t..files).step_by(threads) {
                            op(&dir, i)?;
                        }
                        Ok(())
                    })
                })
                .collect();
            for w in workers {
                w.join().map_err(|_| anyhow::anyhow!("worker panicked"))??;
            }
            anyhow::Ok(())
        })?;
        Ok(files as f64 / started.elapsed().as_secs_f64())
    };
    let name = move |d: &Path, i: usize| d.join(format!("t{}/f{i}", i % threads));
    let creates = run(&|d, i| fs::File::create(name(d, i)).map(drop))?;
    std::thread::sleep(Duration::from_millis(1100));
    let stats = run(&|d, i| fs::metadata(name(d, i)).map(drop))?;
    Ok((creates, stats))
}

fn main() -> anyhow::Result<()> {
    common::run_main(run)
}

async fn run() -> anyhow::Result<()> {
    let args = Args::parse();
    let (size_mib, files) = if args.quick {
        (256u64, 500)
    } else {
        (1024, 3000)
    };
    let c = Cluster::start(3, ClusterOptions::default());
    c.wait_leader(Duration::from_secs(30)).await?;
    let m = Mount::start(&c, "");
    let local = tempfile::tempdir_in(std::env::current_dir()?)?;
    let mut rows = Vec::new();

    eprintln!("--- sequential {size_mib} MiB, 1 MiB blocks");
    let seq_w = format!("--rw=write --bs=1m --size={size_mib}m --ioengine=psync --end_fsync=1");
    let seq_r = format!("--rw=read --bs=1m --size={size_mib}m --ioengine=psync --invalidate=1");
    let (native_w, native_r) = native_sequential(&c, size_mib).await?;
    rows.push(Row {
        name: format!("sequential write {size_mib} MiB"),
        mount: fio(&m.path, "seq", &seq_w, "bw")?,
        local: fio(local.path(), "seq", &seq_w, "bw")?,
        native: Some(native_w),
        unit: "MiB/s",
        target: "mount >= 0.7 x native",
    });
    rows.push(Row {
        name: format!("sequential read {size_mib} MiB"),
        mount: fio(&m.path, "seq", &seq_r, "bw")?,
        local: fio(local.path(), "seq", &seq_r, "bw")?,
        native: Some(native_r),
        unit: "MiB/s",
        target: "mount >= 0.7 x native",
    });

    eprintln!("--- 4 KiB random, 16 jobs");
    let rand = |rw: &str| {
        format!(
            "--rw={rw} --bs=4k --size=4m --numjobs=16 --ioengine=psync --time_based --runtime=5 --invalidate=1"
        )
    };
    for rw in ["randread", "randwrite"] {
        rows.push(Row {
            name: format!("4 KiB {rw}, 16 jobs"),
            mount: fio(&m.path, rw, &rand(rw), "iops")?,
            local: fio(local.path(), rw, &rand(rw), "iops")?,
            native: None,
            unit: "ops/s",
            target: "",
        });
    }

    eprintln!("--- {files} creates and stats, 8 threads");
    let (mc, ms) = metadata_rates(&m.path, files, 8)?;
    let (lc, ls) = metadata_rates(local.path(), files, 8)?;
    rows.push(Row {
        name: "create+close, 8 dirs".into(),
        mount: mc,
        local: lc,
        native: None,
        unit: "files/s",
        target: ">= 1000/s",
    });
    rows.push(Row {
        name: "stat, 8 dirs".into(),
        mount: ms,
        local: ls,
        native: None,
        unit: "files/s",
        target: "",
    });

    println!(
        "{:<30} {:>10} {:>10} {:>10} {:>8}   target",
        "", "mount", "local", "native", "unit"
    );
    for r in &rows {
        let native = r.native.map_or("-".into(), |n| format!("{n:.1}"));
        println!(
            "{:<30} {:>10.1} {:>10.1} {:>10} {:>8}   {}",
            r.name, r.mount, r.local, native, r.unit, r.target
        );
    }
    let report = Report {
        benchmark: "mount",
        quick: args.quick,
        rows,
    };
    if let Some(parent) = args.out.parent() {
        fs::create_dir_all(parent)?;
    }
    fs::write(&args.out, serde_json::to_string_pretty(&report)?)?;
    eprintln!("wrote {}", args.out.display());
    drop(m);
    Ok(())
}

/// The native client's sequential write (flushed) and read, 1 MiB at a
/// time through one handle, as fio does on the mount.
async fn native_sequential(c: &Cluster, mib: u64) -> anyhow::Result<(f64, f64)> {
    let client = Client::connect(c.native_config(None)).await?;
    let base = random_bytes(1 << 20, 5);
    let file = client.open("native-seq.bin", OpenOptions::create()).await?;
    let started = Instant::now();
    for i in 0..mib {
        file.write_at(i << 20, stamped(&base, i)).await?;
    }
    file.flush().await?;
    let write = mib_s(mib << 20, started.elapsed().as_secs_f64());
    file.close().await?;
    let file = client.open("native-seq.bin", OpenOptions::read()).await?;
    let started = Instant::now();
    for i in 0..mib {
        let d = file.read_at(i << 20, 1 << 20).await?;
        if d.len() != 1 << 20 {
            bail!("short read at MiB {i}");
        }
    }
    let read = mib_s(mib << 20, started.elapsed().as_secs_f64());
    file.close().await?;
    client.logoff().await?;
    Ok((write, read))
}

/// `base` with block number `i` written into each 4 KiB of it, as fio
/// scrambles its buffers: every block differs, so the chunk store cannot
/// skip storing one it already has (a repeated block made the native
/// figures a measure of deduplication, and its reads of one cached chunk).
fn stamped(base: &[u8], i: u64) -> Bytes {
    let mut block = base.to_vec();
    for sector in block.chunks_mut(4096) {
        sector[..8].copy_from_slice(&i.to_le_bytes());
    }
    Bytes::from(block)
}
