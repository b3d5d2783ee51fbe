//! Quorum sizes for N = 2F+1 replicas, the command leader included.
//!
//! EPaxos* (Ryabinin, Gotsman, Sutra, OPODIS'25, section 4): with f tolerated failures and
//! e = ceil((f+1)/2), the fast path needs n - e = F + floor((F+1)/2) replicas (leader included)
//! reporting exactly the leader's initial dependencies; the slow path needs n - f = F + 1.

/// Failures tolerated by `n` replicas: F with N = 2F+1 (N even rounds down).
pub fn max_failures(n: usize) -> usize {
    (n.max(1) - 1) / 2
}

/// Replicas (leader included) that must accept for the slow path: F + 1.
pub fn slow_quorum(n: usize) -> usize {
    max_failures(n) + 1
}

/// Replicas (leader included) that must report the leader's initial deps for the fast path:
/// F + floor((F+1)/2). For N = 1 the leader alone decides.
pub fn fast_quorum(n: usize) -> usize {
    let f = max_failures(n);
    // floor((F+1)/2) == ceil(F/2)
    (f + f.div_ceil(2)).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quorum_table() {
        // (N, F, slow, fast) as in shared/EPAXOS-NOTES.md section 2, "optimized" column.
        for (n, f, slow, fast) in [
            (1, 0, 1, 1),
            (3, 1, 2, 2),
            (5, 2, 3, 3),
            (7, 3, 4, 5),
            (9, 4, 5, 6),
        ] {
            assert_eq!(max_failures(n), f, "F for N={n}");
            assert_eq!(slow_quorum(n), slow, "slow quorum for N={n}");
            assert_eq!(fast_quorum(n), fast, "fast quorum for N={n}");
            // Any fast quorum and any slow quorum intersect, and two fast quorums intersect in
            // at least a majority of a slow quorum minus one (what recovery relies on).
            assert!(fast + slow > n, "fast and slow quorums intersect for N={n}");
        }
    }
}
