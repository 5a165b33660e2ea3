//! Where a connection's server-pushed notices go.

use std::sync::atomic::{AtomicUsize, Ordering};

use cairn_proto::wire::Notice;

/// A client connection's notice channel: a QUIC unidirectional stream per
/// notice, or a queue (the in-memory transport of the protocol tests).
#[derive(Clone, Debug)]
pub enum NoticeSink {
    Quic(quinn::Connection),
    Memory {
        id: usize,
        queue: tokio::sync::mpsc::Sender<Notice>,
    },
}

static MEMORY_IDS: AtomicUsize = AtomicUsize::new(1 << 48);

impl NoticeSink {
    /// A queue of at most `depth` notices, and its receiving end.
    pub fn memory(depth: usize) -> (Self, tokio::sync::mpsc::Receiver<Notice>) {
        let (queue, rx) = tokio::sync::mpsc::channel(depth);
        let id = MEMORY_IDS.fetch_add(1, Ordering::Relaxed);
        (Self::Memory { id, queue }, rx)
    }

    /// Tells connections apart (a reconnect is a new one).
    pub fn id(&self) -> usize {
        match self {
            Self::Quic(c) => c.stable_id(),
            Self::Memory { id, .. } => *id,
        }
    }

    /// The connection has a session: it may use its whole flow-control
    /// window (see `cluster::tls::UNPROVEN_CONNECTION_WINDOW`).
    pub fn session_bound(&self) {
        if let Self::Quic(conn) = self {
            crate::cluster::tls::open_window(conn);
        }
    }

    /// Closes the connection with application error `code`. The in-memory
    /// transport's connection belongs to its test, which ends it itself.
    pub fn close(&self, code: u32, reason: &str) {
        if let Self::Quic(conn) = self {
            conn.close(code.into(), reason.as_bytes());
        }
    }

    pub async fn push(&self, notice: &Notice) -> Result<(), String> {
        match self {
            Self::Quic(conn) => {
                let bytes = notice.encode().map_err(|e| e.to_string())?;
                let mut stream = conn.open_uni().await.map_err(|e| e.to_string())?;
                stream.write_all(&bytes).await.map_err(|e| e.to_string())?;
                stream.finish().map_err(|e| e.to_string())?;
                Ok(())
            }
            Self::Memory { queue, .. } => queue
                .send(notice.clone())
                .await
                .map_err(|_| "the connection is gone".to_owned()),
        }
    }
}
