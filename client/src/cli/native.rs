//! The file commands over the native protocol (the default when `CAIRN_QUIC`
//! and `CAIRN_CA` are set): one session, which survives node failures.

use cairn_client::native::{Source, Target};
use cairn_client::{Client, ClientError, NativeConfig};
use cairn_proto::ErrorCode;
use cairn_proto::api::{Stat, WriteResult};
use cairn_proto::wire::Attr;

use super::transfer::{Download, io_context, progress};
use super::{Command, Output, format_time};

/// Runs `cmd` natively; `None` for commands that only HTTP offers.
pub async fn run(cfg: NativeConfig, cmd: &Command, out: Output) -> Option<Result<(), ClientError>> {
    if matches!(
        cmd,
        Command::Dev(_) | Command::Cluster(_) | Command::Mount(_) | Command::Umount(_)
    ) {
        return None;
    }
    Some(
        async {
            let client = Client::connect(cfg).await?;
            let result = execute(&client, cmd, out).await;
            // Ending the session now frees its replay table; if the cluster is
            // unreachable the session simply expires.
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), client.logoff()).await;
            result
        }
        .await,
    )
}

fn clean(p: &str) -> String {
    p.trim_matches('/').to_owned()
}

async fn execute(client: &Client, cmd: &Command, out: Output) -> Result<(), ClientError> {
    match cmd {
        Command::Put { local, remote } => put(client, local, &clean(remote), out).await,
        Command::Get { remote, local } => {
            get(client, &clean(remote), super::local_path(local), out).await
        }
        Command::Ls { remote } => {
            let dir = clean(remote.as_deref().unwrap_or(""));
            for a in client.read_dir(&dir).await? {
                if out.json {
                    println!(
                        "{}",
                        serde_json::to_string(&stat_of(&a)).unwrap_or_default()
                    );
                } else {
                    println!(
                        "{:>12}  {}  {}{}",
                        a.size,
                        format_time(a.mtime_ns),
                        a.name,
                        super::kind_suffix(a.kind)
                    );
                }
            }
            Ok(())
        }
        Command::Stat { remote } => {
            let a = client.metadata(&clean(remote)).await?;
            out.stat(&stat_of(&a));
            Ok(())
        }
        Command::Rm { remote } => client.remove(&clean(remote)).await,
        Command::Mkdir { remote } => {
            let path = clean(remote);
            client.create_dir(&path).await?;
            out.write_result(&WriteResult {
                path,
                created: true,
                etag: None,
                size: 0,
            });
            Ok(())
        }
        Command::Mv {
            from,
            to,
            no_replace,
        } => {
            let (from, to) = (clean(from), clean(to));
            if let Some((parent, _)) = to.rsplit_once('/') {
                mkdir_p(client, parent).await?;
            }
            client.rename(&from, &to, !no_replace).await?;
            let a = client.metadata(&to).await?;
            out.write_result(&WriteResult {
                path: to,
                created: true,
                etag: a.etag.map(hex),
                size: a.size,
            });
            Ok(())
        }
        Command::Dev(_) | Command::Cluster(_) | Command::Mount(_) | Command::Umount(_) => Ok(()),
    }
}

/// Creates `dir` and its missing parents; an existing one is fine.
async fn mkdir_p(client: &Client, dir: &str) -> Result<(), ClientError> {
    match client.create_dir(dir).await {
        Err(e) if e.code() == Some(ErrorCode::AlreadyExists) => Ok(()),
        r => r,
    }
}

async fn put(client: &Client, local: &str, remote: &str, out: Output) -> Result<(), ClientError> {
    if let Some((parent, _)) = remote.rsplit_once('/') {
        mkdir_p(client, parent).await?;
    }
    let attr = if local == "-" {
        let mut stdin = tokio::io::stdin();
        client.put(remote, &mut stdin, &|_| {}).await?
    } else {
        let f = std::fs::File::open(local).map_err(|e| io_context(e, local))?;
        let meta = f.metadata().map_err(|e| io_context(e, local))?;
        if meta.is_dir() {
            let e = std::io::Error::from(std::io::ErrorKind::IsADirectory);
            return Err(io_context(e, local));
        }
        let bar = progress(Some(meta.len()));
        let count = bar.clone();
        let progress = move |n| count.inc(n);
        let result = client.put_from(remote, Source::File(f), &progress).await;
        bar.finish_and_clear();
        result?
    };
    // Closing settled the ETag to the BLAKE3 of the content.
    let settled = client.metadata(remote).await.unwrap_or(attr);
    out.write_result(&WriteResult {
        path: remote.to_owned(),
        created: true,
        etag: settled.etag.map(hex),
        size: settled.size,
    });
    Ok(())
}

/// A download's error, naming where it was writing when writing failed
/// (the only local I/O a download does).
fn local_context(e: ClientError, what: &str) -> ClientError {
    match e {
        ClientError::Io(e) => io_context(e, what),
        e => e,
    }
}

async fn get(
    client: &Client,
    remote: &str,
    local: Option<&str>,
    out: Output,
) -> Result<(), ClientError> {
    let size = client.metadata(remote).await?.size;
    let bar = progress(Some(size));
    let count = bar.clone();
    let progress = move |n| count.inc(n);
    let result = match local {
        Some(path) => {
            let d = Download::create(path).await?;
            // Written through a second handle of the same open file: the
            // answers go out of their own buffers, not through tokio's.
            let target = match d.file.try_clone().await {
                Ok(f) => f.into_std().await,
                Err(e) => {
                    d.abandon().await;
                    return Err(io_context(e, path));
                }
            };
            match client
                .get_into(remote, Target::File(target), &progress)
                .await
            {
                Ok(n) => d.finish().await.map(|()| n),
                Err(e) => {
                    d.abandon().await;
                    Err(local_context(e, path))
                }
            }
        }
        None => {
            use std::os::fd::AsFd;
            let stdout = std::io::stdout().as_fd().try_clone_to_owned()?;
            let target = Target::File(std::fs::File::from(stdout));
            let got = client.get_into(remote, target, &progress).await;
            got.map_err(|e| local_context(e, "stdout"))
        }
    };
    bar.finish_and_clear();
    let n = result?;
    if out.json
        && let Some(path) = local
    {
        println!("{}", serde_json::json!({ "path": path, "size": n }));
    }
    Ok(())
}

fn hex(e: [u8; 32]) -> String {
    cairn_proto::ContentHash(e).to_hex()
}

fn stat_of(a: &Attr) -> Stat {
    Stat {
        name: a.name.clone(),
        kind: a.kind,
        inode: a.inode,
        size: a.size,
        mode: a.mode,
        nlink: a.nlink,
        mtime_ns: a.mtime_ns,
        ctime_ns: a.ctime_ns,
        etag: a.etag.map(hex),
        content_type: None,
    }
}
