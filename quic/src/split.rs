//! Sends that the kernel takes, so path MTU discovery can reach 64 KiB.
//!
//! quinn hands its socket up to ten packets of the path MTU in one
//! segmentation-offload (GSO) send, and the kernel refuses a send over
//! 65,507 bytes. On loopback and jumbo-frame links the MTU can be far above
//! the 6,550 bytes that ten such packets allow, and every packet costs quinn
//! its framing, loss tracking and an AEAD call. This socket splits a batch
//! that is too large into sends the kernel takes, so the MTU can go as high
//! as the path carries.

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};

/// Most payload bytes one UDP send may carry: a 64 KiB IPv4 packet less its
/// IP and UDP headers. It bounds a GSO batch as well as a single datagram.
pub const SEND_BYTES_MAX: usize = 65_507;

/// Splits oversized GSO batches of the socket it wraps.
#[derive(Debug)]
pub struct SplitSends {
    inner: Arc<dyn AsyncUdpSocket>,
}

impl SplitSends {
    /// Wraps `socket` for `runtime`.
    pub fn wrap(
        runtime: &Arc<dyn quinn::Runtime>,
        socket: std::net::UdpSocket,
    ) -> io::Result<Arc<dyn AsyncUdpSocket>> {
        let inner = runtime.wrap_udp_socket(socket)?;
        Ok(Arc::new(Self { inner }))
    }
}

impl AsyncUdpSocket for SplitSends {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        let Some(segment) = transmit.segment_size else {
            return self.inner.try_send(transmit);
        };
        if transmit.contents.len() <= SEND_BYTES_MAX || segment == 0 {
            return self.inner.try_send(transmit);
        }
        let per_send = (SEND_BYTES_MAX / segment).max(1) * segment;
        for (i, part) in transmit.contents.chunks(per_send).enumerate() {
            let sub = Transmit {
                destination: transmit.destination,
                ecn: transmit.ecn,
                contents: part,
                segment_size: (part.len() > segment).then_some(segment),
                src_ip: transmit.src_ip,
            };
            match self.inner.try_send(&sub) {
                Ok(()) => {}
                // Nothing went out yet: quinn waits and sends it all again.
                Err(e) if i == 0 => return Err(e),
                // Part of the batch went out. Asking for a retry would send
                // that part twice; the rest is dropped like a full queue on
                // the wire drops it, and QUIC's loss recovery resends it.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        self.inner.poll_recv(cx, bufs, meta)
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Ten 60,000-byte datagrams in one transmit, as quinn hands them over
    /// at a 60,000-byte MTU: 600 KB, far over what one send may carry.
    #[tokio::test]
    async fn a_batch_over_64_kib_arrives_as_every_datagram_in_it() {
        let runtime = quinn::default_runtime().unwrap();
        let to = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let big = 16 << 20;
        rustix::net::sockopt::set_socket_recv_buffer_size_force(&to, big)
            .or_else(|_| rustix::net::sockopt::set_socket_recv_buffer_size(&to, big))
            .unwrap();
        to.set_read_timeout(Some(std::time::Duration::from_secs(5)))
            .unwrap();
        let from = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let socket = SplitSends::wrap(&runtime, from).unwrap();
        if socket.max_transmit_segments() < 10 {
            // No segmentation offload here: quinn sends one packet at a time
            // and there is nothing to split.
            eprintln!("skipped: this kernel has no UDP segmentation offload");
            return;
        }
        let segment = 60_000;
        let contents: Vec<u8> = (0..10 * segment).map(|i| (i / segment) as u8).collect();
        let transmit = Transmit {
            destination: to.local_addr().unwrap(),
            ecn: None,
            contents: &contents,
            segment_size: Some(segment),
            src_ip: None,
        };
        let mut poller = socket.clone().create_io_poller();
        loop {
            std::future::poll_fn(|cx| poller.as_mut().poll_writable(cx))
                .await
                .unwrap();
            match socket.try_send(&transmit) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                sent => break sent.unwrap(),
            }
        }
        let mut buf = vec![0u8; 65_536];
        for i in 0..10u8 {
            let n = to.recv(&mut buf).expect("every datagram arrives");
            assert_eq!(n, segment, "datagram {i}");
            assert!(buf[..n].iter().all(|&b| b == i), "datagram {i} content");
        }
    }
}
