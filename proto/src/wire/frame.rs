//! Framing: `len u32 | kind u16 | payload | crc32c u32`, little-endian.
//!
//! `len` counts everything after itself (kind, payload and checksum), so a
//! reader knows how much to wait for before it can check anything. The
//! CRC32C (Castagnoli) covers `kind` and `payload`: QUIC already protects
//! the bytes on the wire, the checksum catches what happens either side of
//! it (a bad buffer, a bug in a proxy, a torn write to a capture file).

/// Bytes a frame adds to its payload: length, kind, checksum.
pub const FRAME_OVERHEAD: usize = 4 + 2 + 4;

/// Largest payload a frame may carry: a 4 MiB write or read plus headers.
pub const FRAME_PAYLOAD_MAX: usize = 4 * 1024 * 1024 + 64 * 1024;

use bytes::Bytes;

/// CRC32C (Castagnoli, iSCSI) of `parts` one after the other.
pub fn crc32c(parts: &[&[u8]]) -> u32 {
    let mut d = Crc32c::new();
    for p in parts {
        d.update(p);
    }
    d.finish()
}

/// A CRC32C worked out piece by piece, as bytes arrive.
#[derive(Clone)]
pub struct Crc32c(crc_fast::Digest);

impl Crc32c {
    pub fn new() -> Self {
        Self(crc_fast::Digest::new(crc_fast::CrcAlgorithm::Crc32Iscsi))
    }

    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    pub fn finish(&self) -> u32 {
        // A 32-bit CRC's value fits in 32 bits.
        self.0.finalize() as u32
    }
}

impl Default for Crc32c {
    fn default() -> Self {
        Self::new()
    }
}

/// One decoded frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub kind: u16,
    pub payload: Bytes,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("frame length {0} is below the minimum of 6")]
    TooShort(u32),
    #[error("frame payload of {0} bytes is over the limit of {FRAME_PAYLOAD_MAX}")]
    TooLarge(usize),
    #[error("frame checksum mismatch: computed {computed:#010x}, frame says {stated:#010x}")]
    Checksum { computed: u32, stated: u32 },
}

/// Appends `kind` and `payload` to `out` as one frame.
pub fn encode_frame(kind: u16, payload: &[u8], out: &mut Vec<u8>) -> Result<(), FrameError> {
    if payload.len() > FRAME_PAYLOAD_MAX {
        return Err(FrameError::TooLarge(payload.len()));
    }
    // Fits: FRAME_PAYLOAD_MAX + 6 is far below u32::MAX.
    let len = (payload.len() + 6) as u32;
    out.reserve(FRAME_OVERHEAD + payload.len());
    out.extend_from_slice(&len.to_le_bytes());
    let kind = kind.to_le_bytes();
    out.extend_from_slice(&kind);
    out.extend_from_slice(payload);
    let crc = crc32c(&[&kind, payload]);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// A frame under construction: room for the length, then `kind`; append
/// the payload, then [`finish_frame`]. Building the payload in place saves
/// copying a 4 MiB read or write from a payload buffer into the frame.
pub fn start_frame(kind: u16, payload_capacity: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(FRAME_OVERHEAD + payload_capacity);
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&kind.to_le_bytes());
    out
}

/// Checks the payload appended since [`start_frame`], fills in the length
/// and appends the checksum.
pub fn finish_frame(out: &mut Vec<u8>) -> Result<(), FrameError> {
    let payload_len = out.len().saturating_sub(6);
    if out.len() < 6 {
        return Err(FrameError::TooShort(out.len() as u32));
    }
    if payload_len > FRAME_PAYLOAD_MAX {
        return Err(FrameError::TooLarge(payload_len));
    }
    let crc = crc32c(&[&out[4..]]);
    let len = (payload_len + 6) as u32;
    out[..4].copy_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(())
}

/// A frame whose payload is `prefix`, `bulk`, `suffix` in that order, as
/// three pieces to send one after the other: `bulk` (a 4 MiB read or
/// write) is neither copied nor moved, only checksummed.
pub fn encode_frame_around(
    kind: u16,
    prefix: &[u8],
    bulk: Bytes,
    suffix: &[u8],
) -> Result<[Bytes; 3], FrameError> {
    let payload_len = prefix.len() + bulk.len() + suffix.len();
    if payload_len > FRAME_PAYLOAD_MAX {
        return Err(FrameError::TooLarge(payload_len));
    }
    let mut head = start_frame(kind, prefix.len());
    head.extend_from_slice(prefix);
    head[..4].copy_from_slice(&((payload_len + 6) as u32).to_le_bytes());
    let crc = crc32c(&[&head[4..], &bulk, suffix]);
    let mut tail = Vec::with_capacity(suffix.len() + 4);
    tail.extend_from_slice(suffix);
    tail.extend_from_slice(&crc.to_le_bytes());
    Ok([Bytes::from(head), bulk, Bytes::from(tail)])
}

/// Decodes the frame at the start of `buf`. `Ok(None)` means more bytes are
/// needed; `Ok(Some((frame, used)))` says how many bytes it took. A length
/// over the limit is refused before the rest is awaited, so a peer cannot
/// make a reader buffer gigabytes.
pub fn decode_frame(buf: &[u8]) -> Result<Option<(Frame, usize)>, FrameError> {
    Ok(check_frame(buf)?.map(|c| {
        let frame = Frame {
            kind: c.kind,
            payload: Bytes::copy_from_slice(&buf[c.payload]),
        };
        (frame, c.used)
    }))
}

/// [`decode_frame`] for a buffer the caller owns: the payload is a view of
/// `buf`, not a copy.
pub fn decode_frame_bytes(buf: &Bytes) -> Result<Option<(Frame, usize)>, FrameError> {
    Ok(check_frame(buf)?.map(|c| {
        let frame = Frame {
            kind: c.kind,
            payload: buf.slice(c.payload),
        };
        (frame, c.used)
    }))
}

/// [`decode_frame_bytes`] for a frame whose reader worked out `crc`, the
/// CRC32C of its kind and payload, while the bytes arrived: they are not
/// read again to check it (a 4 MiB answer read once more from memory).
pub fn decode_frame_bytes_summed(
    buf: &Bytes,
    crc: u32,
) -> Result<Option<(Frame, usize)>, FrameError> {
    Ok(check_frame_with(buf, Some(crc))?.map(|c| {
        let frame = Frame {
            kind: c.kind,
            payload: buf.slice(c.payload),
        };
        (frame, c.used)
    }))
}

/// Where a checked frame's parts lie in its buffer.
struct Checked {
    kind: u16,
    payload: std::ops::Range<usize>,
    used: usize,
}

fn check_frame(buf: &[u8]) -> Result<Option<Checked>, FrameError> {
    check_frame_with(buf, None)
}

/// Checks the frame at the start of `buf` against its checksum: `summed`
/// if the caller worked it out already, else computed here.
fn check_frame_with(buf: &[u8], summed: Option<u32>) -> Result<Option<Checked>, FrameError> {
    let Some(len_bytes) = buf.get(..4) else {
        return Ok(None);
    };
    let len = u32::from_le_bytes([len_bytes[0], len_bytes[1], len_bytes[2], len_bytes[3]]);
    if len < 6 {
        return Err(FrameError::TooShort(len));
    }
    let payload_len = len as usize - 6;
    if payload_len > FRAME_PAYLOAD_MAX {
        return Err(FrameError::TooLarge(payload_len));
    }
    let total = 4 + len as usize;
    let Some(body) = buf.get(4..total) else {
        return Ok(None);
    };
    let (kind, rest) = body.split_at(2);
    let (payload, crc) = rest.split_at(payload_len);
    let stated = u32::from_le_bytes([crc[0], crc[1], crc[2], crc[3]]);
    let computed = summed.unwrap_or_else(|| crc32c(&[kind, payload]));
    if computed != stated {
        return Err(FrameError::Checksum { computed, stated });
    }
    Ok(Some(Checked {
        kind: u16::from_le_bytes([kind[0], kind[1]]),
        payload: 6..6 + payload_len,
        used: total,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn layout_is_pinned() {
        let mut out = Vec::new();
        encode_frame(0x0102, b"ab", &mut out).unwrap();
        let crc = crc32c(&[&[0x02, 0x01, b'a', b'b']]);
        let mut expected = vec![8, 0, 0, 0, 0x02, 0x01, b'a', b'b'];
        expected.extend_from_slice(&crc.to_le_bytes());
        assert_eq!(out, expected);
    }

    #[test]
    fn the_checksum_is_crc32c() {
        // The catalogue's check value of CRC-32/ISCSI, so a client in another
        // language can test its own CRC against it.
        assert_eq!(crc32c(&[b"123456789"]), 0xe306_9283);
        assert_eq!(crc32c(&[b"1234", b"", b"56789"]), 0xe306_9283);
        assert_eq!(crc32c(&[]), 0);
    }

    #[test]
    fn a_checksum_summed_on_arrival_is_checked_like_one_computed() {
        let mut out = Vec::new();
        encode_frame(7, b"hello", &mut out).unwrap();
        let buf = Bytes::from(out);
        let mut sum = Crc32c::new();
        for piece in buf[4..buf.len() - 4].chunks(3) {
            sum.update(piece);
        }
        let (frame, used) = decode_frame_bytes_summed(&buf, sum.finish())
            .unwrap()
            .unwrap();
        assert_eq!(
            (frame.kind, &frame.payload[..], used),
            (7, &b"hello"[..], buf.len())
        );
        let wrong = sum.finish() ^ 1;
        assert!(matches!(
            decode_frame_bytes_summed(&buf, wrong),
            Err(FrameError::Checksum { .. })
        ));
    }

    #[test]
    fn damage_is_detected() {
        let mut out = Vec::new();
        encode_frame(7, b"hello", &mut out).unwrap();
        for i in 4..out.len() {
            let mut bad = out.clone();
            bad[i] ^= 0x40;
            assert!(
                matches!(decode_frame(&bad), Err(FrameError::Checksum { .. })),
                "flip at byte {i} went unnoticed"
            );
        }
    }

    #[test]
    fn oversize_lengths_are_refused_before_the_body() {
        let len = (FRAME_PAYLOAD_MAX as u32 + 7).to_le_bytes();
        assert!(matches!(decode_frame(&len), Err(FrameError::TooLarge(_))));
        assert!(matches!(
            decode_frame(&[5, 0, 0, 0]),
            Err(FrameError::TooShort(5))
        ));
        assert!(encode_frame(1, &vec![0; FRAME_PAYLOAD_MAX + 1], &mut Vec::new()).is_err());
    }

    #[test]
    fn built_in_place_equals_encoded() {
        let mut a = Vec::new();
        encode_frame(0x8011, b"payload", &mut a).unwrap();
        let mut b = start_frame(0x8011, 7);
        b.extend_from_slice(b"payload");
        finish_frame(&mut b).unwrap();
        assert_eq!(a, b);
        let mut big = start_frame(1, 0);
        big.resize(6 + FRAME_PAYLOAD_MAX + 1, 0);
        assert!(matches!(
            finish_frame(&mut big),
            Err(FrameError::TooLarge(_))
        ));
    }

    proptest! {
        #[test]
        fn frames_round_trip_and_need_every_byte(kind in any::<u16>(), payload in proptest::collection::vec(any::<u8>(), 0..300), tail in proptest::collection::vec(any::<u8>(), 0..8)) {
            let mut buf = Vec::new();
            encode_frame(kind, &payload, &mut buf).unwrap();
            let n = buf.len();
            for cut in 0..n {
                prop_assert_eq!(decode_frame(&buf[..cut]).unwrap(), None);
            }
            buf.extend_from_slice(&tail);
            let (frame, used) = decode_frame(&buf).unwrap().unwrap();
            prop_assert_eq!(used, n);
            prop_assert_eq!(frame, Frame { kind, payload: payload.into() });
        }

        #[test]
        fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_frame(&bytes);
        }
    }
}
