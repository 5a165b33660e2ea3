//! Where a download's bytes go. A writer gets each 4 MiB answer copied
//! into it (tokio's files and stdout copy into a buffer of their own before
//! a blocking thread writes it); a local file is written from the answer's
//! own buffer.

use std::sync::Arc;

use bytes::Bytes;
use tokio::io::{AsyncWrite, AsyncWriteExt};

use crate::ClientError;

/// What [`Client::get_into`](super::Client::get_into) writes to.
pub enum Target<'a> {
    /// Any writer; flushed at the end.
    Writer(&'a mut (dyn AsyncWrite + Unpin + Send)),
    /// A local file (or a pipe, a device, stdout) at its current position,
    /// written on a blocking thread. Not synced: that is the caller's.
    File(std::fs::File),
}

/// A [`Target`] being written.
pub(super) enum Out<'a> {
    Writer(&'a mut (dyn AsyncWrite + Unpin + Send)),
    File(Arc<std::fs::File>),
}

impl<'a> From<Target<'a>> for Out<'a> {
    fn from(t: Target<'a>) -> Self {
        match t {
            Target::Writer(w) => Self::Writer(w),
            Target::File(f) => Self::File(Arc::new(f)),
        }
    }
}

impl Out<'_> {
    pub(super) async fn write(&mut self, data: Bytes) -> Result<(), ClientError> {
        match self {
            Self::Writer(w) => Ok(w.write_all(&data).await?),
            Self::File(f) => {
                use std::io::Write;
                let f = Arc::clone(f);
                let wrote = tokio::task::spawn_blocking(move || (&*f).write_all(&data));
                wrote
                    .await
                    .map_err(|e| ClientError::Io(std::io::Error::other(e)))?
                    .map_err(ClientError::Io)
            }
        }
    }

    pub(super) async fn flush(&mut self) -> Result<(), ClientError> {
        match self {
            Self::Writer(w) => Ok(w.flush().await?),
            // Written straight to the file: nothing is held back.
            Self::File(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn both_targets_receive_the_pieces_in_order() {
        let pieces = [Bytes::from_static(b"abc"), Bytes::from_static(b"defgh")];
        let mut v: Vec<u8> = Vec::new();
        let mut out = Out::from(Target::Writer(&mut v));
        for p in &pieces {
            out.write(p.clone()).await.unwrap();
        }
        out.flush().await.unwrap();
        assert_eq!(v, b"abcdefgh");

        let f = tempfile::NamedTempFile::new().unwrap();
        let mut out = Out::from(Target::File(f.reopen().unwrap()));
        for p in &pieces {
            out.write(p.clone()).await.unwrap();
        }
        out.flush().await.unwrap();
        assert_eq!(std::fs::read(f.path()).unwrap(), b"abcdefgh");
    }
}
