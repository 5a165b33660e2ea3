//! Mount-side metrics: calls, errors and time per operation, bytes moved,
//! served as Prometheus text on `--metrics-listen`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[derive(Default)]
struct Op {
    calls: u64,
    errors: u64,
    micros: u64,
}

#[derive(Default)]
pub struct Metrics {
    ops: Mutex<BTreeMap<&'static str, Op>>,
    read_bytes: AtomicU64,
    written_bytes: AtomicU64,
}

impl Metrics {
    pub fn record(&self, op: &'static str, took: Duration, failed: bool) {
        if let Ok(mut ops) = self.ops.lock() {
            let o = ops.entry(op).or_default();
            o.calls += 1;
            o.errors += u64::from(failed);
            o.micros += took.as_micros() as u64;
        }
    }

    pub fn add_read(&self, n: usize) {
        self.read_bytes.fetch_add(n as u64, Ordering::Relaxed);
    }

    pub fn add_written(&self, n: usize) {
        self.written_bytes.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Calls of `op` so far (tests, and the metrics page).
    pub fn calls(&self, op: &str) -> u64 {
        self.ops
            .lock()
            .ok()
            .and_then(|o| o.get(op).map(|o| o.calls))
            .unwrap_or(0)
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "# TYPE cairn_mount_ops_total counter");
        let _ = writeln!(out, "# TYPE cairn_mount_op_errors_total counter");
        let _ = writeln!(out, "# TYPE cairn_mount_op_seconds_total counter");
        if let Ok(ops) = self.ops.lock() {
            for (name, o) in ops.iter() {
                let _ = writeln!(out, "cairn_mount_ops_total{{op=\"{name}\"}} {}", o.calls);
                let _ = writeln!(
                    out,
                    "cairn_mount_op_errors_total{{op=\"{name}\"}} {}",
                    o.errors
                );
                let _ = writeln!(
                    out,
                    "cairn_mount_op_seconds_total{{op=\"{name}\"}} {:.6}",
                    o.micros as f64 / 1e6
                );
            }
        }
        let _ = writeln!(out, "# TYPE cairn_mount_read_bytes_total counter");
        let _ = writeln!(
            out,
            "cairn_mount_read_bytes_total {}",
            self.read_bytes.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# TYPE cairn_mount_written_bytes_total counter");
        let _ = writeln!(
            out,
            "cairn_mount_written_bytes_total {}",
            self.written_bytes.load(Ordering::Relaxed)
        );
        out
    }

    /// Answers every HTTP request on `listener` with the metrics page.
    pub async fn serve(self: std::sync::Arc<Self>, listener: tokio::net::TcpListener) {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                continue;
            };
            let me = std::sync::Arc::clone(&self);
            tokio::spawn(async move {
                // The request itself does not matter; read its head (bounded).
                let mut buf = [0u8; 4096];
                let _ = tokio::time::timeout(Duration::from_secs(5), sock.read(&mut buf)).await;
                let body = me.render();
                let head = format!(
                    "HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                    body.len()
                );
                let _ = sock.write_all(head.as_bytes()).await;
                let _ = sock.write_all(body.as_bytes()).await;
            });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_calls_errors_and_bytes() {
        let m = Metrics::default();
        m.record("read", Duration::from_millis(2), false);
        m.record("read", Duration::from_millis(3), true);
        m.add_read(10);
        let text = m.render();
        assert!(
            text.contains("cairn_mount_ops_total{op=\"read\"} 2"),
            "{text}"
        );
        assert!(text.contains("cairn_mount_op_errors_total{op=\"read\"} 1"));
        assert!(text.contains("cairn_mount_read_bytes_total 10"));
        assert_eq!(m.calls("read"), 2);
    }
}
