//! Linearizability of the client-observed history, key by key (a key/value store is a set of
//! independent registers, so checking each key alone is enough: P-compositionality).
//!
//! The search is Wing & Gong's, with Lowe's memoization as in Porcupine: repeatedly pick an
//! operation that may take effect next (one invoked before every pending operation returned),
//! apply it to the register model, and backtrack when its result does not match. A state
//! (set of operations linearized, register value) is explored once.
//!
//! An operation whose outcome the client never learned may have taken effect at any point after
//! its invocation, or never: it returns at infinity and any result is accepted.

use std::collections::{BTreeMap, HashSet};

/// A register value, interned: values are unique per write, so an id names one.
pub type Value = u32;

/// One operation on a register, with what its client saw.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegOp {
    Get,
    Put(Value),
    Delete,
    Cas { expected: Option<Value>, new: Value },
}

/// What the client was told.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegResult {
    pub found: bool,
    /// The value read (GET) or found (CAS); `None` when nothing was found.
    pub value: Option<Value>,
    pub success: bool,
}

/// One operation of the history.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Index in the caller's history, to name it in reports.
    pub id: usize,
    pub call: u64,
    /// `u64::MAX` when the client never learned the outcome.
    pub ret: u64,
    pub op: RegOp,
    /// `None` when the client never learned the outcome.
    pub result: Option<RegResult>,
}

/// The register model: applies `op` to `state`; returns the new state and whether `result` is
/// what this op returns from `state`.
fn step(state: Option<Value>, op: &RegOp, result: Option<&RegResult>) -> (Option<Value>, bool) {
    let (next, expect) = match op {
        // As `KvStore` answers: a GET succeeds when it finds the key.
        RegOp::Get => (
            state,
            RegResult {
                found: state.is_some(),
                value: state,
                success: state.is_some(),
            },
        ),
        RegOp::Put(v) => (
            Some(*v),
            RegResult {
                found: state.is_some(),
                value: None,
                success: true,
            },
        ),
        RegOp::Delete => (
            None,
            RegResult {
                found: state.is_some(),
                value: None,
                success: state.is_some(),
            },
        ),
        RegOp::Cas { expected, new } => {
            let success = state == *expected;
            (
                if success { Some(*new) } else { state },
                RegResult {
                    found: state.is_some(),
                    value: state,
                    success,
                },
            )
        }
    };
    (next, result.is_none_or(|r| *r == expect))
}

/// How the search for one key ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No order explains the history. Holds the operations of the longest prefix the search
    /// could linearize, plus the first operations it could not place, for the report.
    Violation {
        stuck_at: Vec<usize>,
    },
    /// The search gave up after `STATES_MAX` states: neither proven nor refuted.
    Inconclusive,
}

/// Most states the search explores for one key before giving up.
const STATES_MAX: usize = 2_000_000;

/// Checks one key's history, starting from an absent value.
pub fn check_register(mut ops: Vec<Entry>) -> Verdict {
    ops.sort_by_key(|e| (e.call, e.id));
    let n = ops.len();
    let words = n.div_ceil(64);
    let mut done = vec![0u64; words];
    let is_done = |done: &[u64], i: usize| done[i / 64] >> (i % 64) & 1 == 1;
    let must_finish = ops.iter().filter(|e| e.ret != u64::MAX).count();
    let mut finished = 0usize;
    let mut state: Option<Value> = None;
    let mut seen: HashSet<(Vec<u64>, Option<Value>)> = HashSet::new();
    // The explicit search stack: (op linearized at this depth, register state before it).
    let mut path: Vec<(usize, Option<Value>)> = Vec::new();
    // Where to resume trying candidates at each depth.
    let mut resume_from = 0usize;
    let mut deepest: Vec<usize> = Vec::new();
    loop {
        if finished == must_finish {
            return Verdict::Linearizable;
        }
        // Candidates: ops not done, invoked before the earliest return among ops not done.
        let first = (0..n).find(|&i| !is_done(&done, i)).unwrap_or(n);
        let mut min_ret = u64::MAX;
        let mut picked = None;
        let mut i = first;
        while i < n && ops[i].call < min_ret {
            if !is_done(&done, i) {
                if i >= resume_from {
                    let (next, ok) = step(state, &ops[i].op, ops[i].result.as_ref());
                    if ok {
                        done[i / 64] |= 1 << (i % 64);
                        if seen.insert((done.clone(), next)) {
                            picked = Some((i, next));
                            break;
                        }
                        done[i / 64] &= !(1 << (i % 64));
                    }
                }
                // Sorted by call and every return is later than its call: only the ops before
                // a candidate can bound it.
                min_ret = min_ret.min(ops[i].ret);
            }
            i += 1;
        }
        match picked {
            Some((i, next)) => {
                path.push((i, state));
                state = next;
                if ops[i].ret != u64::MAX {
                    finished += 1;
                }
                resume_from = 0;
                if path.len() > deepest.len() {
                    deepest = path.iter().map(|(j, _)| ops[*j].id).collect();
                }
                if seen.len() > STATES_MAX {
                    return Verdict::Inconclusive;
                }
            }
            None => {
                // Backtrack: undo the last choice and try the next candidate at that depth.
                let Some((i, before)) = path.pop() else {
                    let unplaced: Vec<usize> = ops
                        .iter()
                        .filter(|e| e.ret != u64::MAX && !deepest.contains(&e.id))
                        .map(|e| e.id)
                        .take(3)
                        .collect();
                    let mut stuck_at = deepest;
                    stuck_at.extend(unplaced);
                    return Verdict::Violation { stuck_at };
                };
                done[i / 64] &= !(1 << (i % 64));
                if ops[i].ret != u64::MAX {
                    finished -= 1;
                }
                state = before;
                resume_from = i + 1;
            }
        }
    }
}

/// Checks every key; returns the keys (by name) whose history is not linearizable, with the
/// verdict, and how many keys were inconclusive.
pub fn check_all<K: Ord + Clone>(by_key: BTreeMap<K, Vec<Entry>>) -> (Vec<(K, Verdict)>, usize) {
    let mut bad = Vec::new();
    let mut inconclusive = 0;
    for (key, ops) in by_key {
        match check_register(ops) {
            Verdict::Linearizable => {}
            Verdict::Inconclusive => inconclusive += 1,
            v @ Verdict::Violation { .. } => bad.push((key, v)),
        }
    }
    (bad, inconclusive)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e(id: usize, call: u64, ret: u64, op: RegOp, result: Option<RegResult>) -> Entry {
        Entry {
            id,
            call,
            ret,
            op,
            result,
        }
    }
    fn read(v: Option<Value>) -> Option<RegResult> {
        Some(RegResult {
            found: v.is_some(),
            value: v,
            success: v.is_some(),
        })
    }
    fn wrote(found: bool) -> Option<RegResult> {
        Some(RegResult {
            found,
            value: None,
            success: true,
        })
    }

    #[test]
    fn sequential_history_is_linearizable() {
        let h = vec![
            e(0, 0, 1, RegOp::Put(1), wrote(false)),
            e(1, 2, 3, RegOp::Get, read(Some(1))),
            e(
                2,
                4,
                5,
                RegOp::Delete,
                Some(RegResult {
                    found: true,
                    value: None,
                    success: true,
                }),
            ),
            e(3, 6, 7, RegOp::Get, read(None)),
        ];
        assert_eq!(check_register(h), Verdict::Linearizable);
    }

    #[test]
    fn stale_read_after_a_completed_write_is_not() {
        let h = vec![
            e(0, 0, 1, RegOp::Put(1), wrote(false)),
            e(1, 2, 3, RegOp::Put(2), wrote(true)),
            e(2, 4, 5, RegOp::Get, read(Some(1))),
        ];
        assert!(matches!(check_register(h), Verdict::Violation { .. }));
    }

    #[test]
    fn concurrent_ops_may_take_either_order() {
        // The read overlaps both writes, so it may see either.
        let h = vec![
            e(0, 0, 10, RegOp::Put(1), wrote(false)),
            e(1, 1, 11, RegOp::Put(2), wrote(true)),
            e(2, 2, 12, RegOp::Get, read(Some(1))),
        ];
        assert_eq!(check_register(h), Verdict::Linearizable);
    }

    #[test]
    fn unknown_outcome_may_or_may_not_have_happened() {
        let took_effect = vec![
            e(0, 0, u64::MAX, RegOp::Put(1), None),
            e(1, 5, 6, RegOp::Get, read(Some(1))),
        ];
        assert_eq!(check_register(took_effect), Verdict::Linearizable);
        let did_not = vec![
            e(0, 0, u64::MAX, RegOp::Put(1), None),
            e(1, 5, 6, RegOp::Get, read(None)),
        ];
        assert_eq!(check_register(did_not), Verdict::Linearizable);
        // But it cannot take effect before it was invoked.
        let too_early = vec![
            e(0, 5, u64::MAX, RegOp::Put(1), None),
            e(1, 0, 1, RegOp::Get, read(Some(1))),
        ];
        assert!(matches!(
            check_register(too_early),
            Verdict::Violation { .. }
        ));
    }

    #[test]
    fn cas_outcomes_follow_the_register() {
        let ok = vec![
            e(0, 0, 1, RegOp::Put(1), wrote(false)),
            e(
                1,
                2,
                3,
                RegOp::Cas {
                    expected: Some(1),
                    new: 2,
                },
                Some(RegResult {
                    found: true,
                    value: Some(1),
                    success: true,
                }),
            ),
            e(2, 4, 5, RegOp::Get, read(Some(2))),
        ];
        assert_eq!(check_register(ok), Verdict::Linearizable);
        // Two CASes from absence cannot both succeed.
        let both = vec![
            e(
                0,
                0,
                10,
                RegOp::Cas {
                    expected: None,
                    new: 1,
                },
                Some(RegResult {
                    found: false,
                    value: None,
                    success: true,
                }),
            ),
            e(
                1,
                0,
                10,
                RegOp::Cas {
                    expected: None,
                    new: 2,
                },
                Some(RegResult {
                    found: false,
                    value: None,
                    success: true,
                }),
            ),
        ];
        assert!(matches!(check_register(both), Verdict::Violation { .. }));
    }
}
