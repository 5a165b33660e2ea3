//! `cairn`: the command-line client, and `cairn dev` for a local cluster.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    cairn_client::tune_allocator();
    let args = cli::Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("cairn: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(cli::run(args))
}
