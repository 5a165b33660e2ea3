//! Prometheus metrics, served at `/metrics`.

use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub method: String,
    pub status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    pub method: String,
}

/// A native-protocol request: its operation and how it ended ("ok" or
/// the error code). Static names: counting a request allocates nothing.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NativeLabels {
    pub op: &'static str,
    pub result: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabel {
    pub op: &'static str,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0002, 2.0, 18))
}

pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<RequestLabels, Counter>,
    pub http_seconds: HistogramFamily<MethodLabel>,
    pub http_bytes_in: Counter,
    pub http_bytes_out: Counter,
    pub native_requests: Family<NativeLabels, Counter>,
    pub native_seconds: HistogramFamily<OpLabel>,
    pub uploads_in_flight: Gauge,
    pub native_request_buffer_bytes: Gauge,
    pub chunk_writes: Counter,
    pub chunk_dedup_hits: Counter,
    pub chunk_bytes_written: Counter,
    pub chunk_reads: Counter,
    pub chunk_corrupt: Counter,
    pub meta_groups: Counter,
    pub meta_commands: Counter,
    pub meta_group_size: Histogram,
    pub meta_commit_seconds: Histogram,
    pub meta_reads_leased: Counter,
    pub meta_read_rounds: Counter,
    pub gc_runs: Counter,
    pub gc_chunks_deleted: Counter,
    pub disk_total_bytes: Gauge,
    pub disk_free_bytes: Gauge,
}

impl Metrics {
    pub fn new() -> Self {
        let mut m = Self {
            registry: Registry::with_prefix("cairn"),
            http_requests: Family::default(),
            http_seconds: Family::new_with_constructor(latency_histogram),
            http_bytes_in: Counter::default(),
            http_bytes_out: Counter::default(),
            native_requests: Family::default(),
            native_seconds: Family::new_with_constructor(latency_histogram),
            uploads_in_flight: Gauge::default(),
            native_request_buffer_bytes: Gauge::default(),
            chunk_writes: Counter::default(),
            chunk_dedup_hits: Counter::default(),
            chunk_bytes_written: Counter::default(),
            chunk_reads: Counter::default(),
            chunk_corrupt: Counter::default(),
            meta_groups: Counter::default(),
            meta_commands: Counter::default(),
            meta_group_size: Histogram::new(exponential_buckets(1.0, 2.0, 11)),
            meta_commit_seconds: latency_histogram(),
            meta_reads_leased: Counter::default(),
            meta_read_rounds: Counter::default(),
            gc_runs: Counter::default(),
            gc_chunks_deleted: Counter::default(),
            disk_total_bytes: Gauge::default(),
            disk_free_bytes: Gauge::default(),
        };
        m.register();
        m
    }

    fn register(&mut self) {
        let r = &mut self.registry;
        r.register(
            "http_requests",
            "HTTP requests by method and status",
            self.http_requests.clone(),
        );
        r.register(
            "http_request_seconds",
            "HTTP request latency to response headers",
            self.http_seconds.clone(),
        );
        r.register(
            "http_received_bytes",
            "Upload body bytes received",
            self.http_bytes_in.clone(),
        );
        r.register(
            "http_sent_bytes",
            "Download body bytes sent",
            self.http_bytes_out.clone(),
        );
        r.register(
            "native_requests",
            "Native-protocol requests by operation and result",
            self.native_requests.clone(),
        );
        r.register(
            "native_request_seconds",
            "Native-protocol request latency, from decoding to the answer",
            self.native_seconds.clone(),
        );
        r.register(
            "native_request_buffer_bytes",
            "Bytes of native-protocol request frames being received or served",
            self.native_request_buffer_bytes.clone(),
        );
        r.register(
            "uploads_in_flight",
            "Uploads being received",
            self.uploads_in_flight.clone(),
        );
        r.register(
            "chunk_writes",
            "Chunks written to the local chunk store",
            self.chunk_writes.clone(),
        );
        r.register(
            "chunk_dedup_hits",
            "Chunks already present when written",
            self.chunk_dedup_hits.clone(),
        );
        r.register(
            "chunk_written_bytes",
            "Bytes of new chunks written",
            self.chunk_bytes_written.clone(),
        );
        r.register(
            "chunk_reads",
            "Chunks read and verified",
            self.chunk_reads.clone(),
        );
        r.register(
            "chunk_corrupt",
            "Chunk reads that failed their BLAKE3 check",
            self.chunk_corrupt.clone(),
        );
        r.register(
            "meta_commit_groups",
            "Log entries this node appended for commands as leader (group commits)",
            self.meta_groups.clone(),
        );
        r.register(
            "meta_commands",
            "Metadata commands this node committed as leader",
            self.meta_commands.clone(),
        );
        r.register(
            "meta_reads_leased",
            "Read barriers this node confirmed as leader under its read lease",
            self.meta_reads_leased.clone(),
        );
        r.register(
            "meta_read_rounds",
            "Heartbeat rounds this node ran as leader to confirm reads",
            self.meta_read_rounds.clone(),
        );
        r.register(
            "meta_group_commands",
            "Commands per log entry (group commit)",
            self.meta_group_size.clone(),
        );
        r.register(
            "meta_commit_seconds",
            "Time from handing an entry to Raft to its being applied",
            self.meta_commit_seconds.clone(),
        );
        r.register("gc_runs", "Garbage collection passes", self.gc_runs.clone());
        r.register(
            "gc_deleted_chunks",
            "Unreferenced chunks deleted",
            self.gc_chunks_deleted.clone(),
        );
        r.register(
            "disk_total_bytes",
            "Size of the file system holding this node's chunks",
            self.disk_total_bytes.clone(),
        );
        r.register(
            "disk_free_bytes",
            "Room left there for chunks: free space less the metadata reserve (0: new copies are refused)",
            self.disk_free_bytes.clone(),
        );
    }

    /// Sets the disk gauges (read when `/metrics` is scraped).
    pub fn disk(&self, total: u64, room: u64) {
        self.disk_total_bytes
            .set(i64::try_from(total).unwrap_or(i64::MAX));
        self.disk_free_bytes
            .set(i64::try_from(room).unwrap_or(i64::MAX));
    }

    pub fn meta_group(&self, commands: usize, took: Duration) {
        self.meta_groups.inc();
        self.meta_commands.inc_by(commands as u64);
        self.meta_group_size.observe(commands as f64);
        self.meta_commit_seconds.observe(took.as_secs_f64());
    }

    pub fn native_request(&self, op: &'static str, result: &'static str, took: Duration) {
        self.native_requests
            .get_or_create(&NativeLabels { op, result })
            .inc();
        self.native_seconds
            .get_or_create(&OpLabel { op })
            .observe(took.as_secs_f64());
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::warn!(error = %e, "metrics encoding failed");
        }
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
