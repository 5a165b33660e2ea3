//! Leases on real 3-node clusters: a second client's open breaks the first
//! one's lease (which flushes what it kept, then acknowledges), also when
//! the holder has just lost its node; a holder that never answers loses
//! its lease at the break timeout.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use cairn_client::{Client, OpenOptions};
use cairn_proto::wire::{Disposition, LeaseBreak, lease};
use cairn_tests::cluster::{Cluster, ClusterOptions};
use cairn_tests::hold::{HoldSpec, Holder};
use cairn_tests::random_bytes;
use tokio::sync::broadcast;

/// Well under the default break timeout (35 s): an open that returns
/// sooner was let through by an acknowledgement, not by the timeout.
const ACKED_WITHIN: Duration = Duration::from_secs(15);

async fn client(c: &Cluster, first: usize) -> Client {
    Client::connect(c.native_config(Some(first))).await.unwrap()
}

async fn next_break(rx: &mut broadcast::Receiver<LeaseBreak>) -> LeaseBreak {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a lease break within 10 s")
        .unwrap()
}

fn writer() -> OpenOptions {
    OpenOptions::create().with(Disposition::OpenOrCreate)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_second_client_opening_for_write_breaks_the_lease() {
    let c = Cluster::start(3, ClusterOptions::default());
    c.wait_leader(Duration::from_secs(20)).await.unwrap();
    let a = client(&c, 0).await;
    let b = client(&c, 1).await;
    let mut breaks = a.lease_breaks();

    // Alone on the file: a read-write lease; its writes stay unflushed.
    let fa = a
        .open("leased.bin", writer().lease(lease::READ_WRITE))
        .await
        .unwrap();
    assert_eq!(fa.lease(), lease::READ_WRITE);
    let data = random_bytes(3 << 20, 7);
    fa.write_at(0, Bytes::from(data.clone())).await.unwrap();

    // Another client opens it for writing: the holder flushes and gives
    // the lease up before that open returns, so the opener sees the data.
    let started = Instant::now();
    let fb = b
        .open("leased.bin", writer().lease(lease::READ))
        .await
        .unwrap();
    assert!(
        started.elapsed() < ACKED_WITHIN,
        "the open waited for the break timeout ({:?}): the holder never acknowledged",
        started.elapsed()
    );
    let got = next_break(&mut breaks).await;
    assert_eq!(
        (got.handle, got.from, got.to),
        (fa.handle(), lease::READ_WRITE, lease::NONE)
    );
    assert_eq!(fa.lease(), lease::NONE);
    assert_eq!(fb.lease(), lease::NONE, "another writer is open beside it");
    assert_eq!(fb.read_at(0, data.len()).await.unwrap(), data);
    fb.close().await.unwrap();
    fa.close().await.unwrap();

    // Readers share read leases; a writer from a third session breaks them
    // all, but not the lease of another handle of its own session.
    let ra = a
        .open("leased.bin", OpenOptions::read().lease(lease::READ))
        .await
        .unwrap();
    let rb = b
        .open("leased.bin", OpenOptions::read().lease(lease::READ))
        .await
        .unwrap();
    assert_eq!((ra.lease(), rb.lease()), (lease::READ, lease::READ));
    let mut b_breaks = b.lease_breaks();
    let wb = b.open("leased.bin", writer()).await.unwrap();
    let got = next_break(&mut breaks).await;
    assert_eq!((got.handle, got.to), (ra.handle(), lease::NONE));
    assert_eq!(ra.lease(), lease::NONE);
    assert_eq!(rb.lease(), lease::READ, "same session: no conflict");
    assert!(b_breaks.try_recv().is_err());
    // A new reader from a's session gets no lease beside b's writer.
    let ra2 = a
        .open("leased.bin", OpenOptions::read().lease(lease::READ))
        .await
        .unwrap();
    assert_eq!(ra2.lease(), lease::NONE);
    for f in [ra, rb, wb, ra2] {
        f.close().await.unwrap();
    }
    // Everything closed: the whole lease again.
    let again = b
        .open("leased.bin", writer().lease(lease::READ_WRITE))
        .await
        .unwrap();
    assert_eq!(again.lease(), lease::READ_WRITE);
    again.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_break_reaches_a_holder_whose_node_died() {
    let mut c = Cluster::start(3, ClusterOptions::default());
    c.wait_leader(Duration::from_secs(20)).await.unwrap();
    let a = client(&c, 0).await;
    let mut breaks = a.lease_breaks();
    let fa = a
        .open("moved.bin", writer().lease(lease::READ_WRITE))
        .await
        .unwrap();
    let data = random_bytes(1 << 20, 9);
    fa.write_at(0, Bytes::from(data.clone())).await.unwrap();
    fa.flush().await.unwrap();
    c.nodes[0].kill9();
    // The holder reconnects elsewhere (its session and lease are
    // replicated) and hears of the break there.
    let b = client(&c, 1).await;
    let started = Instant::now();
    let fb = b.open("moved.bin", writer()).await.unwrap();
    assert!(
        started.elapsed() < ACKED_WITHIN,
        "the break was not acknowledged ({:?})",
        started.elapsed()
    );
    let got = next_break(&mut breaks).await;
    assert_eq!((got.handle, got.to), (fa.handle(), lease::NONE));
    assert_eq!(fb.read_at(0, data.len()).await.unwrap(), data);
    fb.close().await.unwrap();
    fa.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_holder_that_never_answers_loses_the_lease_at_the_timeout() {
    let c = Cluster::start(
        3,
        ClusterOptions {
            cluster_extra: "lease_break_timeout_secs = 2".into(),
            ..ClusterOptions::default()
        },
    );
    c.wait_leader(Duration::from_secs(20)).await.unwrap();
    // A client that goes away without closing: its session and its
    // lease stay until the handle timeout, with nobody to answer.
    let gone = Holder::start(&HoldSpec {
        lease: lease::READ,
        ..c.hold_spec(Some(0), "abandoned.bin")
    })
    .unwrap();
    assert_eq!(gone.lease, lease::READ);
    gone.vanish();
    let b = client(&c, 1).await;
    let started = Instant::now();
    let fb = b
        .open("abandoned.bin", writer().lease(lease::READ_WRITE))
        .await
        .unwrap();
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(1900) && waited < Duration::from_secs(15),
        "the open waited {waited:?}, not the 2 s break timeout"
    );
    // The abandoned reader is still open (without its lease now): reads
    // may be cached beside it, writes may not.
    assert_eq!(fb.lease(), lease::READ);
    fb.write_at(0, Bytes::from_static(b"mine now"))
        .await
        .unwrap();
    fb.close().await.unwrap();
}
