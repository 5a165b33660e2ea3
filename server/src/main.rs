//! `cairn-server`: parse the command line, set up logging, run the node.

use std::process::ExitCode;

use cairn_server::cluster::tls;
use cairn_server::config::{Cli, Config, LogFormat, TlsTool, Tool};
use clap::Parser;
use tokio::signal::unix::{SignalKind, signal};
use tokio_util::sync::CancellationToken;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    tune_allocator();
    let mut cli = Cli::parse();
    if let Some(tool) = cli.command.take() {
        return run_tool(tool);
    }
    let config = match Config::load(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cairn-server: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging(config.log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cairn-server: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(on_signal(shutdown.clone()));
        cairn_server::node::run(config, shutdown).await
    });
    // Requests that outlived the shutdown grace period are abandoned here;
    // everything they were told had succeeded is already durable.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "node stopped with an error");
            ExitCode::FAILURE
        }
    }
}

fn run_tool(tool: Tool) -> ExitCode {
    let result = match tool {
        Tool::Tls(TlsTool::Init { dir }) => tls::init_ca(&dir).map(|()| {
            println!("created a cluster CA in {}", dir.display());
        }),
        Tool::Tls(TlsTool::Issue { ca_dir, out, name }) => {
            tls::issue(&ca_dir, &out, &name).map(|()| {
                println!("issued a certificate for {name} in {}", out.display());
            })
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cairn-server: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The log filter without `CAIRN_LOG`. openraft narrates every election
/// and replication step at info; and while a peer is unreachable its
/// replication logs each failed heartbeat, eight lines every 150 ms, which
/// buried everything else through a partition (and would fill a disk over
/// a long one). The transport logs a peer's going and coming once each
/// instead ("peer unreachable", "peer reachable again").
const DEFAULT_LOG: &str = "info,openraft=warn,openraft::replication=off,openraft::engine::handler::replication_handler=off";

fn init_logging(format: LogFormat) {
    let filter =
        EnvFilter::try_from_env("CAIRN_LOG").unwrap_or_else(|_| EnvFilter::new(DEFAULT_LOG));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init(),
    }
}

/// Cancels `shutdown` on SIGTERM or SIGINT.
async fn on_signal(shutdown: CancellationToken) {
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::warn!("cannot install signal handlers; stop the server with SIGKILL");
        return;
    };
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM received"),
        _ = int.recv() => tracing::info!("SIGINT received"),
    }
    shutdown.cancel();
}

/// Keeps 4 MiB chunk buffers in glibc's heap instead of a fresh `mmap` per
/// buffer (a thousand page faults each, the memory given back at `free`);
/// the trim threshold still returns a free heap top past 256 MiB.
fn tune_allocator() {
    // The workspace denies unsafe code; mallopt has no safe wrapper.
    #[allow(unsafe_code)]
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; it is called
    // before the process starts any thread.
    unsafe {
        // 32 MiB is glibc's largest mmap threshold on 64-bit systems.
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 << 20);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A directive `EnvFilter::new` cannot parse is dropped without a word.
    #[test]
    fn the_default_log_filter_parses() {
        EnvFilter::builder()
            .parse(DEFAULT_LOG)
            .expect("every directive parses");
    }
}
