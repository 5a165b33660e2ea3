//! `Range: bytes=…` parsing (RFC 9110 §14), for one range.
//!
//! A request with several ranges is served whole (200), which the RFC allows;
//! a syntactically bad header is ignored the same way.

/// An inclusive byte range within a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ByteRange {
    pub start: u64,
    pub end: u64,
}

impl ByteRange {
    /// Never zero: a range holds at least one byte.
    pub fn len(&self) -> u64 {
        self.end - self.start + 1
    }

    pub fn is_empty(&self) -> bool {
        false
    }
}

/// What a Range header asks of a file of `size` bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeRequest {
    /// No usable single range: serve the whole file.
    Full,
    Partial(ByteRange),
    /// A well-formed range that lies outside the file: 416.
    Unsatisfiable,
}

pub fn parse_range(header: Option<&str>, size: u64) -> RangeRequest {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return RangeRequest::Full;
    };
    if spec.contains(',') {
        return RangeRequest::Full;
    }
    let Some((first, last)) = spec.trim().split_once('-') else {
        return RangeRequest::Full;
    };
    let parse = |s: &str| -> Option<u64> {
        let s = s.trim();
        if s.is_empty() || !s.bytes().all(|b| b.is_ascii_digit()) {
            None
        } else {
            s.parse().ok()
        }
    };
    match (first.trim().is_empty(), parse(first), parse(last)) {
        // bytes=-N: the last N bytes.
        (true, _, Some(n)) => {
            if n == 0 || size == 0 {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Partial(ByteRange {
                    start: size.saturating_sub(n),
                    end: size - 1,
                })
            }
        }
        (false, Some(start), None) if last.trim().is_empty() => {
            if start >= size {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Partial(ByteRange {
                    start,
                    end: size - 1,
                })
            }
        }
        (false, Some(start), Some(end)) if start <= end => {
            if start >= size {
                RangeRequest::Unsatisfiable
            } else {
                RangeRequest::Partial(ByteRange {
                    start,
                    end: end.min(size - 1),
                })
            }
        }
        _ => RangeRequest::Full,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(h: &str, size: u64) -> RangeRequest {
        parse_range(Some(h), size)
    }

    fn part(start: u64, end: u64) -> RangeRequest {
        RangeRequest::Partial(ByteRange { start, end })
    }

    #[test]
    fn forms() {
        assert_eq!(p("bytes=0-9", 100), part(0, 9));
        assert_eq!(p("bytes=90-200", 100), part(90, 99));
        assert_eq!(p("bytes=95-", 100), part(95, 99));
        assert_eq!(p("bytes=-10", 100), part(90, 99));
        assert_eq!(p("bytes=-500", 100), part(0, 99));
        assert_eq!(p("bytes=100-", 100), RangeRequest::Unsatisfiable);
        assert_eq!(p("bytes=100-200", 100), RangeRequest::Unsatisfiable);
        assert_eq!(p("bytes=-0", 100), RangeRequest::Unsatisfiable);
        assert_eq!(p("bytes=0-0", 0), RangeRequest::Unsatisfiable);
        assert_eq!(p("bytes=5-2", 100), RangeRequest::Full);
        assert_eq!(p("bytes=0-1,5-6", 100), RangeRequest::Full);
        assert_eq!(p("items=0-1", 100), RangeRequest::Full);
        assert_eq!(p("bytes=a-b", 100), RangeRequest::Full);
        assert_eq!(p("bytes=+1-2", 100), RangeRequest::Full);
        assert_eq!(parse_range(None, 100), RangeRequest::Full);
    }

    proptest! {
        #[test]
        fn partial_ranges_lie_inside_the_file(h in "bytes=[0-9]{0,4}-[0-9]{0,4}", size in 0u64..5000) {
            if let RangeRequest::Partial(r) = parse_range(Some(&h), size) {
                prop_assert!(r.start <= r.end && r.end < size);
            }
        }

        #[test]
        fn never_panics(h in any::<String>(), size in any::<u64>()) {
            let _ = parse_range(Some(&h), size);
        }
    }
}
