//! An answer frame received as pieces (QUIC stream chunks), read where it
//! lies: a read's data is handed on as views of the pieces instead of
//! being copied into one buffer first (a tenth of a downloading client's
//! CPU was that copy).

use bytes::{Bytes, BytesMut};

use super::frame::{FRAME_PAYLOAD_MAX, FrameError};

/// The kind of a `Response::Data` frame.
const DATA_KIND: u16 = 0x8011;

/// One frame's bytes, in the pieces they arrived in.
#[derive(Default, Debug)]
pub struct Rope {
    pieces: Vec<Bytes>,
    len: usize,
}

impl Rope {
    pub fn push(&mut self, piece: Bytes) {
        if !piece.is_empty() {
            self.len += piece.len();
            self.pieces.push(piece);
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `[start, end)` as views of the pieces (clipped to the rope).
    pub fn slices(&self, start: usize, end: usize) -> Vec<Bytes> {
        let mut out = Vec::new();
        let mut at = 0;
        for p in &self.pieces {
            let (from, to) = (start.max(at), end.min(at + p.len()));
            if from < to {
                out.push(p.slice(from - at..to - at));
            }
            at += p.len();
            if at >= end {
                break;
            }
        }
        out
    }

    /// `[start, end)` copied: for the few bytes of a header.
    pub fn copy(&self, start: usize, end: usize) -> Vec<u8> {
        self.slices(start, end).concat()
    }

    /// The whole frame in one buffer: the piece itself when there is one.
    pub fn join(self) -> Bytes {
        if self.pieces.len() == 1 {
            return self.pieces.into_iter().next().unwrap_or_default();
        }
        let mut out = BytesMut::with_capacity(self.len);
        for p in &self.pieces {
            out.extend_from_slice(p);
        }
        out.freeze()
    }
}

/// A read's answer as views of the frame's pieces.
#[derive(Debug)]
pub struct DataPieces {
    pub data: Vec<Bytes>,
    pub eof: bool,
}

impl DataPieces {
    pub fn len(&self) -> usize {
        self.data.iter().map(Bytes::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The data of `frame` when it is a well-formed `Response::Data` whose
/// checksum, `crc` (summed over its kind and payload as it arrived), is
/// the one it states. `Ok(None)` for any other frame, and for one that is
/// not well formed: decoding it whole gives the precise error.
pub fn data_answer(frame: &Rope, crc: u32) -> Result<Option<DataPieces>, FrameError> {
    let head = frame.copy(0, 16);
    let (Some(len), Some(kind)) = (head.first_chunk::<4>(), head.get(4..6)) else {
        return Ok(None);
    };
    let total = 4 + u32::from_le_bytes(*len) as usize;
    if u16::from_le_bytes([kind[0], kind[1]]) != DATA_KIND || total != frame.len() {
        return Ok(None);
    }
    let Some((data_len, varint)) = varint(&head[6..]) else {
        return Ok(None);
    };
    let start = 6 + varint;
    let Some(end) = usize::try_from(data_len)
        .ok()
        .filter(|n| *n <= FRAME_PAYLOAD_MAX)
        .map(|n| start + n)
    else {
        return Ok(None);
    };
    if end + 1 + 4 != total {
        return Ok(None);
    }
    let eof = match frame.copy(end, end + 1)[..] {
        [0] => false,
        [1] => true,
        _ => return Ok(None),
    };
    let stated = frame.copy(total - 4, total);
    let stated = u32::from_le_bytes([stated[0], stated[1], stated[2], stated[3]]);
    if stated != crc {
        return Err(FrameError::Checksum {
            computed: crc,
            stated,
        });
    }
    Ok(Some(DataPieces {
        data: frame.slices(start, end),
        eof,
    }))
}

/// A LEB128 varint (postcard's `u64`) at the start of `b`, and its length.
fn varint(b: &[u8]) -> Option<(u64, usize)> {
    let mut v = 0u64;
    for (i, byte) in b.iter().take(10).enumerate() {
        // The tenth byte holds the top bit alone; more is not a u64.
        if i == 9 && *byte > 1 {
            return None;
        }
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((v, i + 1));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Data, Response, crc32c};
    use proptest::prelude::*;

    fn rope_of(frame: &[u8], cuts: &[usize]) -> Rope {
        let mut rope = Rope::default();
        let mut at = 0;
        for &c in cuts.iter().chain(std::iter::once(&frame.len())) {
            let c = c.clamp(at, frame.len());
            rope.push(Bytes::copy_from_slice(&frame[at..c]));
            at = c;
        }
        rope
    }

    fn frame_of(resp: &Response) -> Vec<u8> {
        resp.encode_chunks().unwrap().concat()
    }

    fn summed(frame: &[u8]) -> u32 {
        crc32c(&[&frame[4..frame.len() - 4]])
    }

    proptest! {
        /// However the frame is cut, the data comes back whole and equal.
        #[test]
        fn data_answers_read_from_any_pieces(
            data in proptest::collection::vec(any::<u8>(), 0..3000),
            eof in any::<bool>(),
            mut cuts in proptest::collection::vec(0usize..3100, 0..8),
        ) {
            cuts.sort_unstable();
            let resp = Response::Data(Data { data: Bytes::from(data.clone()), eof });
            let frame = frame_of(&resp);
            let rope = rope_of(&frame, &cuts);
            let got = data_answer(&rope, summed(&frame)).unwrap().unwrap();
            prop_assert_eq!(got.data.concat(), data);
            prop_assert_eq!(got.eof, eof);
            prop_assert_eq!(rope.join(), Bytes::from(frame));
        }
    }

    #[test]
    fn varints_past_u64_are_refused() {
        assert_eq!(varint(&[0x80, 0x01]), Some((128, 2)));
        let mut max = vec![0xff; 9];
        max.push(0x01);
        assert_eq!(varint(&max), Some((u64::MAX, 10)));
        max[9] = 0x02;
        assert_eq!(varint(&max), None);
    }

    #[test]
    fn other_answers_and_damaged_ones_are_left_to_the_whole_decoder() {
        let frame = frame_of(&Response::Done);
        assert!(
            data_answer(&rope_of(&frame, &[3]), summed(&frame))
                .unwrap()
                .is_none()
        );
        let data = Response::Data(Data {
            data: Bytes::from_static(b"abcdef"),
            eof: true,
        });
        let frame = frame_of(&data);
        let short = &frame[..frame.len() - 1];
        assert!(
            data_answer(&rope_of(short, &[]), 0).unwrap().is_none(),
            "truncated"
        );
        let mut bad_eof = frame.clone();
        let at = bad_eof.len() - 5;
        bad_eof[at] = 7;
        assert!(
            data_answer(&rope_of(&bad_eof, &[]), summed(&bad_eof))
                .unwrap()
                .is_none()
        );
        let err = data_answer(&rope_of(&frame, &[9]), summed(&frame) ^ 1).unwrap_err();
        assert!(matches!(err, FrameError::Checksum { .. }), "{err}");
    }
}
