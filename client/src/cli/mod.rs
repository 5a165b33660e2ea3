//! Command-line parsing and dispatch.
//!
//! Exit codes: 0 success, 1 other errors, 2 usage, 3 not found, 4 conflict
//! (exists, not empty, precondition), 5 authentication or permission,
//! 6 unavailable (retry later), 7 corrupt data or server error.

mod cluster;
mod dev;
mod mount;
mod native;
mod transfer;

use std::process::ExitCode;

use cairn_client::http::RetryPolicy;
use cairn_client::{ClientError, HttpClient, RemotePath};
use cairn_proto::api::{EntryKind, Stat};
use cairn_proto::{ErrorCode, FilePath, ShareName};
use clap::{Parser, Subcommand};
use futures::TryStreamExt;

#[derive(Debug, Parser)]
#[command(
    name = "cairn",
    version,
    about = "Cairn client: files in a continuously available store"
)]
pub struct Args {
    /// Server URL, or several nodes' URLs separated by commas
    /// (requests fail over between them).
    #[arg(
        long,
        global = true,
        env = "CAIRN_URL",
        default_value = "http://127.0.0.1:8080"
    )]
    url: String,
    /// More node URLs, comma-separated (`cairn dev` sets this); the client
    /// also learns every member from the first node that answers.
    #[arg(long, global = true, env = "CAIRN_NODES")]
    node_urls: Option<String>,
    /// How long to keep retrying on other nodes when a node is down or
    /// answers 503, in seconds.
    #[arg(long, global = true, env = "CAIRN_RETRY_SECS", default_value_t = 30)]
    retry_secs: u64,
    /// Bearer token for the share.
    #[arg(long, global = true, env = "CAIRN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Share that REMOTE paths live in.
    #[arg(long, global = true, env = "CAIRN_SHARE", default_value = "default")]
    share: String,
    /// The nodes' QUIC addresses (`host:port`, comma-separated): with
    /// `--ca`, file commands use the native protocol (`cairn dev` sets both).
    #[arg(long, global = true, env = "CAIRN_QUIC")]
    quic: Option<String>,
    /// The cluster CA certificate the native protocol trusts.
    #[arg(long, global = true, env = "CAIRN_CA")]
    ca: Option<std::path::PathBuf>,
    /// Use the HTTP API even when the native protocol is configured.
    #[arg(long, global = true)]
    http: bool,
    /// Print results as JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Upload a local file (`-` for stdin) to REMOTE.
    Put { local: String, remote: String },
    /// Download REMOTE to LOCAL, or to stdout without LOCAL (or with `-`).
    Get {
        remote: String,
        local: Option<String>,
    },
    /// List a directory (the share's root by default).
    Ls { remote: Option<String> },
    /// Show a file's or directory's attributes.
    Stat { remote: String },
    /// Remove a file or an empty directory.
    Rm { remote: String },
    /// Create a directory (and missing parents).
    Mkdir { remote: String },
    /// Move or rename within the share.
    Mv {
        from: String,
        to: String,
        /// Fail instead of replacing an existing destination.
        #[arg(long)]
        no_replace: bool,
    },
    /// Run a local development cluster in the foreground.
    Dev(dev::DevArgs),
    /// Mount a share as a local file system (FUSE).
    Mount(mount::MountArgs),
    /// Unmount a share mounted with `cairn mount`.
    Umount(mount::UmountArgs),
    /// The cluster: status and membership.
    #[command(subcommand)]
    Cluster(cluster::ClusterCommand),
}

pub async fn run(args: Args) -> ExitCode {
    let json = args.json;
    match execute(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if json {
                let body = serde_json::json!({ "error": e.code().map(|c| c.as_str()).unwrap_or("client"), "message": e.to_string() });
                eprintln!("{body}");
            } else {
                eprintln!("cairn: {e}");
            }
            ExitCode::from(exit_code(&e))
        }
    }
}

fn exit_code(e: &ClientError) -> u8 {
    match e.code() {
        Some(ErrorCode::NotFound) => 3,
        Some(
            ErrorCode::AlreadyExists
            | ErrorCode::NotEmpty
            | ErrorCode::IsDirectory
            | ErrorCode::NotDirectory
            | ErrorCode::IsSymlink
            | ErrorCode::PreconditionFailed,
        ) => 4,
        Some(ErrorCode::Unauthorized | ErrorCode::Forbidden) => 5,
        Some(ErrorCode::Unavailable) => 6,
        Some(ErrorCode::Corrupt | ErrorCode::Internal | ErrorCode::InsufficientStorage) => 7,
        Some(_) => 1,
        None if e.is_retryable() => 6,
        None if matches!(e, ClientError::Invalid(_)) => 2,
        None => 1,
    }
}

async fn execute(args: Args) -> Result<(), ClientError> {
    match args.command {
        Command::Dev(dev_args) => {
            return dev::run(dev_args)
                .await
                .map_err(|e| ClientError::Invalid(format!("dev: {e:#}")));
        }
        Command::Mount(m) => {
            return mount::mount(m, args.quic.as_deref(), &args.share, args.ca.as_deref())
                .map_err(|e| ClientError::Invalid(format!("mount: {e:#}")));
        }
        Command::Umount(u) => {
            return mount::umount(u).map_err(|e| ClientError::Invalid(format!("umount: {e:#}")));
        }
        _ => {}
    }
    let share =
        ShareName::parse(&args.share).map_err(|e| ClientError::Invalid(format!("--share: {e}")))?;
    let urls = match &args.node_urls {
        Some(more) => format!("{},{more}", args.url),
        None => args.url.clone(),
    };
    let client = HttpClient::new(&urls, args.token.clone())?.with_retry(RetryPolicy {
        deadline: std::time::Duration::from_secs(args.retry_secs),
        ..RetryPolicy::default()
    });
    let remote = |p: &str| RemotePath::parse(&share, p);
    let out = Output { json: args.json };
    if let Some(native) = native_config(&args)?
        && let Some(result) = native::run(native, &args.command, out).await
    {
        return result;
    }
    match args.command {
        Command::Put { local, remote: r } => {
            transfer::put(&client, &local, &remote(&r)?, out).await
        }
        Command::Get { remote: r, local } => {
            transfer::get(&client, &remote(&r)?, local_path(&local), out).await
        }
        Command::Ls { remote: r } => ls(&client, &remote(r.as_deref().unwrap_or(""))?, out).await,
        Command::Stat { remote: r } => {
            let stat = client.stat(&remote(&r)?).await?;
            out.stat(&stat);
            Ok(())
        }
        Command::Rm { remote: r } => client.delete(&remote(&r)?).await,
        Command::Mkdir { remote: r } => client
            .mkdir(&remote(&r)?)
            .await
            .map(|w| out.write_result(&w)),
        Command::Mv {
            from,
            to,
            no_replace,
        } => {
            let to = FilePath::parse(to.trim_matches('/'))
                .map_err(|e| ClientError::Invalid(format!("'{to}': {e}")))?;
            client
                .rename(&remote(&from)?, &to, !no_replace)
                .await
                .map(|w| out.write_result(&w))
        }
        Command::Cluster(c) => cluster::run(&client, c, out).await,
        Command::Dev(_) | Command::Mount(_) | Command::Umount(_) => Ok(()),
    }
}

/// The native protocol's settings, when it is configured and not refused.
fn native_config(args: &Args) -> Result<Option<cairn_client::NativeConfig>, ClientError> {
    let (Some(quic), Some(ca), false) = (&args.quic, &args.ca, args.http) else {
        return Ok(None);
    };
    let token = args
        .token
        .clone()
        .ok_or_else(|| ClientError::Invalid("the native protocol needs --token".into()))?;
    let nodes = quic
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
        .collect();
    let mut cfg = cairn_client::NativeConfig::new(nodes, ca.clone(), token, args.share.clone());
    cfg.failover_timeout = std::time::Duration::from_secs(args.retry_secs.max(1) * 2);
    Ok(Some(cfg))
}

async fn ls(client: &HttpClient, dir: &RemotePath, out: Output) -> Result<(), ClientError> {
    let mut entries = std::pin::pin!(client.list_all(dir));
    while let Some(stat) = entries.try_next().await? {
        if out.json {
            println!("{}", serde_json::to_string(&stat).unwrap_or_default());
        } else {
            println!(
                "{:>12}  {}  {}{}",
                stat.size,
                format_time(stat.mtime_ns),
                stat.name,
                kind_suffix(stat.kind)
            );
        }
    }
    Ok(())
}

/// What `ls -F` puts after a name: `/` for directories, `@` for links.
pub(super) fn kind_suffix(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::File => "",
        EntryKind::Directory => "/",
        EntryKind::Symlink => "@",
    }
}

pub(super) fn format_time(ns: i64) -> String {
    let secs = ns.div_euclid(1_000_000_000);
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(secs.max(0).unsigned_abs());
    httpdate::fmt_http_date(t)
}

/// Human or JSON output.
#[derive(Clone, Copy)]
pub struct Output {
    pub json: bool,
}

impl Output {
    pub(super) fn stat(&self, s: &Stat) {
        if self.json {
            println!("{}", serde_json::to_string_pretty(s).unwrap_or_default());
            return;
        }
        let kind = match s.kind {
            EntryKind::File => "file",
            EntryKind::Directory => "directory",
            EntryKind::Symlink => "symlink",
        };
        println!("name:     {}", s.name);
        println!("kind:     {kind}");
        println!("size:     {}", s.size);
        println!("mode:     {:o}", s.mode);
        println!("nlink:    {}", s.nlink);
        println!("inode:    {}", s.inode);
        println!("modified: {}", format_time(s.mtime_ns));
        if let Some(e) = &s.etag {
            println!("etag:     {e}");
        }
        if let Some(t) = &s.content_type {
            println!("type:     {t}");
        }
    }

    pub(super) fn write_result(&self, w: &cairn_proto::api::WriteResult) {
        if self.json {
            println!("{}", serde_json::to_string(w).unwrap_or_default());
        }
    }
}

/// A download's destination: `None` (stdout) without one or for `-`, as
/// `put` reads stdin for `-`.
fn local_path(local: &Option<String>) -> Option<&str> {
    local.as_deref().filter(|l| *l != "-")
}

#[cfg(test)]
mod local_path_tests {
    #[test]
    fn a_dash_is_stdout() {
        assert_eq!(super::local_path(&Some("-".into())), None);
        assert_eq!(super::local_path(&None), None);
        assert_eq!(super::local_path(&Some("f".into())), Some("f"));
    }
}
