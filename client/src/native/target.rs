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
    /// Writes `pieces` one after the other: to a file with as few system
    /// calls as they allow (a 4 MiB answer arrives in some 64 pieces).
    pub(super) async fn write(&mut self, pieces: Vec<Bytes>) -> Result<(), ClientError> {
        match self {
            Self::Writer(w) => {
                for p in &pieces {
                    w.write_all(p).await?;
                }
                Ok(())
            }
            Self::File(f) => {
                let f = Arc::clone(f);
                let wrote = tokio::task::spawn_blocking(move || write_pieces(&f, &pieces));
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

/// Slices one `writev` takes at most (Linux's IOV_MAX).
const SLICES_PER_CALL: usize = 1024;

/// Writes all of `pieces` in order with `writev`, however much each call
/// takes.
fn write_pieces(mut f: &std::fs::File, pieces: &[Bytes]) -> std::io::Result<()> {
    use std::io::{ErrorKind, IoSlice, Write};
    // Piece `i`, from byte `off` of it, is the next to go.
    let (mut i, mut off) = (0, 0);
    loop {
        while i < pieces.len() && off == pieces[i].len() {
            (i, off) = (i + 1, 0);
        }
        if i == pieces.len() {
            return Ok(());
        }
        let slices: Vec<IoSlice<'_>> = std::iter::once(&pieces[i][off..])
            .chain(pieces[i + 1..].iter().map(|p| &p[..]))
            .take(SLICES_PER_CALL)
            .map(IoSlice::new)
            .collect();
        let mut n = match f.write_vectored(&slices) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        while n > 0 {
            let left = pieces[i].len() - off;
            if n < left {
                off += n;
                break;
            }
            n -= left;
            (i, off) = (i + 1, 0);
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
        out.write(pieces.to_vec()).await.unwrap();
        out.flush().await.unwrap();
        assert_eq!(v, b"abcdefgh");

        let f = tempfile::NamedTempFile::new().unwrap();
        let mut out = Out::from(Target::File(f.reopen().unwrap()));
        out.write(pieces.to_vec()).await.unwrap();
        out.write(vec![Bytes::new(), Bytes::from_static(b"ij")])
            .await
            .unwrap();
        out.flush().await.unwrap();
        assert_eq!(std::fs::read(f.path()).unwrap(), b"abcdefghij");
    }

    #[test]
    fn pieces_go_out_whole_past_one_call_and_through_a_pipe() {
        // More pieces than one writev takes, through a pipe that takes
        // at most 64 KiB per call while the other end drains it.
        let pieces: Vec<Bytes> = (0..3000u32)
            .map(|i| Bytes::from(vec![(i % 251) as u8; 1 + (i as usize % 97)]))
            .collect();
        let expected = pieces.concat();
        let (reader, writer) = std::io::pipe().unwrap();
        let drain = std::thread::spawn(move || {
            let mut got = Vec::new();
            std::io::Read::read_to_end(&mut &reader, &mut got).unwrap();
            got
        });
        let file = std::fs::File::from(std::os::fd::OwnedFd::from(writer));
        write_pieces(&file, &pieces).unwrap();
        drop(file);
        assert!(drain.join().unwrap() == expected);
    }
}
