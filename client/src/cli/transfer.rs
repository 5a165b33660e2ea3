//! `cairn put` and `cairn get`: streaming transfers with progress bars and an
//! end-to-end BLAKE3 check of downloads against the ETag.

use std::path::Path;
use std::time::Duration;

use cairn_client::http::body_stream;
use cairn_client::{ClientError, HttpClient, RemotePath};
use futures::StreamExt;
use indicatif::{ProgressBar, ProgressStyle};
use tokio::io::AsyncWriteExt;
use tokio_util::io::ReaderStream;

use super::Output;

/// Transfers at least this large get a progress bar.
const PROGRESS_BYTES_MIN: u64 = 4 << 20;
/// Read size for uploads.
const READ_BLOCK_BYTES: usize = 256 << 10;

pub(super) fn progress(len: Option<u64>) -> ProgressBar {
    match len {
        Some(n) if n >= PROGRESS_BYTES_MIN => {
            let bar = ProgressBar::new(n);
            let style = ProgressStyle::with_template(
                "{bar:40} {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        }
        _ => ProgressBar::hidden(),
    }
}

pub async fn put(
    client: &HttpClient,
    local: &str,
    remote: &RemotePath,
    out: Output,
) -> Result<(), ClientError> {
    let result = if local == "-" {
        // Standard input cannot be replayed: one attempt.
        let stream = ReaderStream::with_capacity(tokio::io::stdin(), READ_BLOCK_BYTES);
        client.put_stream(remote, None, stream).await
    } else {
        let len = tokio::fs::metadata(local)
            .await
            .map_err(|e| io_context(e, local))?
            .len();
        let bar = progress(Some(len));
        let (reset, count) = (bar.clone(), bar.clone());
        let result = client
            .put_file(
                remote,
                Path::new(local),
                move || reset.set_position(0),
                move |n| count.inc(n),
            )
            .await;
        bar.finish_and_clear();
        result
    };
    let w = result?;
    if out.json {
        println!("{}", serde_json::to_string(&w).unwrap_or_default());
    }
    Ok(())
}

pub async fn get(
    client: &HttpClient,
    remote: &RemotePath,
    local: Option<&str>,
    out: Output,
) -> Result<(), ClientError> {
    let resp = client.get(remote).await?;
    let expected = resp
        .headers()
        .get(reqwest::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(|s| s.trim_matches('"').to_owned());
    let bar = progress(resp.content_length());
    let mut hasher = blake3::Hasher::new();
    let mut body = std::pin::pin!(body_stream(resp));
    let mut download = match local {
        Some(path) => Some(Download::create(path).await?),
        None => None,
    };
    let mut stdout = tokio::io::stdout();
    let sink: &mut (dyn tokio::io::AsyncWrite + Unpin) = match &mut download {
        Some(d) => &mut d.file,
        None => &mut stdout,
    };
    let result = async {
        let mut size = 0u64;
        while let Some(block) = body.next().await {
            let block = block?;
            hasher.update(&block);
            sink.write_all(&block).await?;
            bar.inc(block.len() as u64);
            size += block.len() as u64;
        }
        sink.flush().await?;
        Ok::<u64, ClientError>(size)
    }
    .await;
    bar.finish_and_clear();
    let actual = hasher.finalize().to_hex().to_string();
    let result = result.and_then(|size| match &expected {
        Some(e) if *e != actual => Err(ClientError::Integrity {
            expected: e.clone(),
            actual: actual.clone(),
        }),
        _ => Ok(size),
    });
    match (result, download, local) {
        (Ok(size), Some(download), Some(path)) => {
            download.finish().await?;
            if out.json {
                println!(
                    "{}",
                    serde_json::json!({ "path": path, "size": size, "etag": actual })
                );
            }
            Ok(())
        }
        (Ok(_), _, _) => Ok(()),
        (Err(e), download, _) => {
            if let Some(download) = download {
                download.abandon().await;
            }
            Err(e)
        }
    }
}

/// Where a download to a local path lands. A regular file (or a new name)
/// is written beside its name (`NAME.cairn-part`) and renamed into place
/// once complete and verified, so a failed download leaves what was there.
/// Anything else that exists (a device such as `/dev/null`, a FIFO, a
/// terminal) is written in place: renaming over it would replace the
/// special file with a regular one.
pub(super) struct Download {
    /// What the download is written to.
    pub(super) file: tokio::fs::File,
    path: String,
    /// The name of `file`, when it is not `path` itself.
    part: Option<String>,
}

impl Download {
    pub(super) async fn create(path: &str) -> Result<Self, ClientError> {
        let special = tokio::fs::metadata(path)
            .await
            .is_ok_and(|m| !m.is_file() && !m.is_dir());
        let part = (!special).then(|| format!("{path}.cairn-part"));
        let opened = match &part {
            Some(part) => tokio::fs::File::create(part).await,
            None => tokio::fs::OpenOptions::new().write(true).open(path).await,
        };
        let file = opened.map_err(|e| io_context(e, part.as_deref().unwrap_or(path)))?;
        Ok(Self {
            file,
            path: path.to_owned(),
            part,
        })
    }

    /// Makes the complete download the file at its path, durably.
    pub(super) async fn finish(mut self) -> Result<(), ClientError> {
        self.file
            .flush()
            .await
            .map_err(|e| io_context(e, &self.path))?;
        let Some(part) = self.part else {
            return Ok(());
        };
        self.file
            .sync_all()
            .await
            .map_err(|e| io_context(e, &part))?;
        drop(self.file);
        tokio::fs::rename(&part, &self.path)
            .await
            .map_err(|e| io_context(e, &self.path))
    }

    /// Removes what a failed download wrote, if it was not written in place.
    pub(super) async fn abandon(self) {
        drop(self.file);
        if let Some(part) = self.part {
            let _ = tokio::fs::remove_file(part).await;
        }
    }
}

pub(super) fn io_context(e: std::io::Error, path: &str) -> ClientError {
    ClientError::Io(std::io::Error::new(
        e.kind(),
        format!("{}: {e}", Path::new(path).display()),
    ))
}
