//! The range arithmetic of POSIX locks: what one owner holds after it sets
//! a range, as fcntl(2) defines it.

use cairn_proto::wire::LockKind;

use crate::meta::records::LockRecord;

/// `[start, end)` held shared or exclusive; `end = u64::MAX` is "to the
/// end of any file".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Span {
    pub start: u64,
    pub end: u64,
    pub exclusive: bool,
}

impl Span {
    pub fn of(offset: u64, lock: &LockRecord) -> Self {
        Self {
            start: offset,
            end: lock.end(offset),
            exclusive: lock.exclusive,
        }
    }

    pub fn record(&self) -> LockRecord {
        let len = if self.end == u64::MAX {
            0
        } else {
            self.end - self.start
        };
        LockRecord {
            len,
            exclusive: self.exclusive,
        }
    }
}

/// An owner's spans after setting `wanted` (its kind ignored) to `kind`:
/// the parts of `held` outside `wanted` stay, `wanted` is added unless
/// unlocked, and spans of one kind that overlap or touch become one. The
/// result is sorted by start and holds no two spans that overlap.
pub fn set(held: &[Span], wanted: Span, kind: LockKind) -> Vec<Span> {
    let mut pieces = Vec::with_capacity(held.len() + 2);
    for s in held {
        if s.start < wanted.start {
            pieces.push(Span {
                end: s.end.min(wanted.start),
                ..*s
            });
        }
        if s.end > wanted.end {
            pieces.push(Span {
                start: s.start.max(wanted.end),
                ..*s
            });
        }
    }
    match kind {
        LockKind::Unlocked => {}
        LockKind::Shared | LockKind::Exclusive => pieces.push(Span {
            exclusive: kind == LockKind::Exclusive,
            ..wanted
        }),
    }
    pieces.sort_by_key(|s| s.start);
    let mut out: Vec<Span> = Vec::with_capacity(pieces.len());
    for p in pieces {
        match out.last_mut() {
            Some(last) if last.exclusive == p.exclusive && p.start <= last.end => {
                last.end = last.end.max(p.end);
            }
            _ => out.push(p),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sp(start: u64, end: u64, exclusive: bool) -> Span {
        Span {
            start,
            end,
            exclusive,
        }
    }

    const R: bool = false;
    const W: bool = true;
    const ALL: u64 = u64::MAX;

    #[test]
    fn extending_a_lock_replaces_it_with_the_longer_one() {
        let held = [sp(0, 100, W)];
        assert_eq!(
            set(&held, sp(0, 200, R), LockKind::Exclusive),
            [sp(0, 200, W)]
        );
        assert_eq!(
            set(&held, sp(0, 50, R), LockKind::Exclusive),
            [sp(0, 100, W)]
        );
    }

    #[test]
    fn unlocking_the_middle_leaves_both_ends() {
        let held = [sp(0, 100, W)];
        assert_eq!(
            set(&held, sp(40, 60, R), LockKind::Unlocked),
            [sp(0, 40, W), sp(60, 100, W)]
        );
        assert_eq!(set(&held, sp(0, ALL, R), LockKind::Unlocked), []);
    }

    #[test]
    fn changing_the_kind_of_a_part_splits_the_range() {
        let held = [sp(0, 100, W)];
        assert_eq!(
            set(&held, sp(20, 30, R), LockKind::Shared),
            [sp(0, 20, W), sp(20, 30, R), sp(30, 100, W)]
        );
    }

    #[test]
    fn touching_ranges_of_one_kind_merge_and_of_two_kinds_do_not() {
        let held = [sp(0, 10, R), sp(20, 30, W)];
        assert_eq!(
            set(&held, sp(10, 20, R), LockKind::Shared),
            [sp(0, 20, R), sp(20, 30, W)]
        );
        assert_eq!(
            set(&held, sp(10, 20, R), LockKind::Exclusive),
            [sp(0, 10, R), sp(10, 30, W)]
        );
    }

    #[test]
    fn a_range_to_the_end_swallows_everything_after_it() {
        let held = [sp(0, 10, W), sp(50, 60, R), sp(100, ALL, W)];
        assert_eq!(
            set(&held, sp(5, ALL, R), LockKind::Shared),
            [sp(0, 5, W), sp(5, ALL, R)]
        );
    }

    #[test]
    fn unlocking_what_is_not_held_changes_nothing() {
        let held = [sp(0, 10, W)];
        assert_eq!(set(&held, sp(20, 30, R), LockKind::Unlocked), held);
        assert_eq!(set(&[], sp(20, 30, R), LockKind::Unlocked), []);
    }

    #[test]
    fn records_keep_to_the_end_as_len_zero() {
        assert_eq!(
            sp(5, ALL, W).record(),
            LockRecord {
                len: 0,
                exclusive: true
            }
        );
        assert_eq!(
            Span::of(
                5,
                &LockRecord {
                    len: 0,
                    exclusive: true
                }
            ),
            sp(5, ALL, W)
        );
        assert_eq!(sp(5, 15, R).record().len, 10);
    }
}
