//! Where an upload's bytes come from, cut into the blocks each write
//! carries. A reader's bytes are copied into each block; bytes in memory
//! and local files are not copied on the way (a profile of `cairn put`
//! found a tenth of the client's CPU in `tokio::fs::File` copying from its
//! own buffer into the block).

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::ClientError;

/// What [`Client::put_from`](super::Client::put_from) uploads.
pub enum Source<'a> {
    /// Whatever a reader yields until its end, copied into blocks.
    Reader(&'a mut (dyn AsyncRead + Unpin + Send)),
    /// Bytes in memory, sent as views of their buffer.
    Bytes(Bytes),
    /// A local file from its current position to its end, each block read
    /// straight into its buffer on a blocking thread.
    File(std::fs::File),
}

/// A [`Source`] being cut into blocks.
pub(super) enum Blocks<'a> {
    Reader(&'a mut (dyn AsyncRead + Unpin + Send)),
    Bytes(Bytes),
    File(Arc<std::fs::File>),
}

impl<'a> From<Source<'a>> for Blocks<'a> {
    fn from(s: Source<'a>) -> Self {
        match s {
            Source::Reader(r) => Self::Reader(r),
            Source::Bytes(b) => Self::Bytes(b),
            Source::File(f) => Self::File(Arc::new(f)),
        }
    }
}

impl Blocks<'_> {
    /// The next block of at most `max` bytes; empty at the end.
    pub(super) async fn next(&mut self, max: usize) -> Result<Bytes, ClientError> {
        match self {
            Self::Reader(r) => read_block(&mut **r, max).await,
            Self::Bytes(b) => Ok(b.split_to(max.min(b.len()))),
            Self::File(file) => read_file_block(Arc::clone(file), max).await,
        }
    }
}

/// Reads until `max` bytes or the end.
async fn read_block(
    reader: &mut (dyn AsyncRead + Unpin + Send),
    max: usize,
) -> Result<Bytes, ClientError> {
    // Into spare capacity: no zeroing of 4 MiB first.
    let mut buf = BytesMut::with_capacity(max);
    while buf.len() < max {
        let left = (max - buf.len()) as u64;
        if (&mut *reader).take(left).read_buf(&mut buf).await? == 0 {
            break;
        }
    }
    Ok(buf.freeze())
}

/// The next `max` bytes of `file`, fewer only at its end.
async fn read_file_block(file: Arc<std::fs::File>, max: usize) -> Result<Bytes, ClientError> {
    use std::io::Read;
    let read = tokio::task::spawn_blocking(move || {
        // read_to_end fills spare capacity without zeroing it first: a
        // zeroed block cost as much as the copy this path saves.
        let mut buf = Vec::with_capacity(max);
        (&*file).take(max as u64).read_to_end(&mut buf)?;
        Ok(Bytes::from(buf))
    });
    read.await
        .map_err(|e| ClientError::Io(std::io::Error::other(e)))?
        .map_err(ClientError::Io)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    async fn all_blocks(mut b: Blocks<'_>, max: usize) -> Vec<Bytes> {
        let mut out = Vec::new();
        loop {
            let block = b.next(max).await.unwrap();
            if block.is_empty() {
                return out;
            }
            out.push(block);
        }
    }

    #[tokio::test]
    async fn every_source_cuts_the_same_blocks() {
        let data: Vec<u8> = (0..10_000u32).map(|i| (i * 7) as u8).collect();
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(&data).unwrap();
        let from_file = Source::File(f.reopen().unwrap());
        let mut cursor = std::io::Cursor::new(data.clone());
        let sources = [
            Source::Bytes(Bytes::from(data.clone())),
            from_file,
            Source::Reader(&mut cursor),
        ];
        for s in sources {
            let blocks = all_blocks(s.into(), 4096).await;
            let lens: Vec<usize> = blocks.iter().map(Bytes::len).collect();
            assert_eq!(lens, [4096, 4096, 1808]);
            assert_eq!(blocks.concat(), data);
        }
    }

    #[tokio::test]
    async fn an_empty_file_gives_no_block() {
        let f = tempfile::NamedTempFile::new().unwrap();
        let blocks = all_blocks(Source::File(f.reopen().unwrap()).into(), 4096).await;
        assert!(blocks.is_empty());
    }
}
