//! Which replica ids the peer listener takes calls from, shared lock-free between the event loop
//! (which changes them as configurations are applied) and the gRPC handlers (which read them for
//! every call and every batch).
//!
//! Two things: the ids that are or were members of a configuration this replica acted in (a
//! certificate, a Join or a Dispatch batch naming any other id is refused, as an id beyond
//! config.json's was before issue 15), and the rows the core knows (`Node::rows`: what wire
//! messages are decoded against). A removed member stays known: it may still answer for the
//! instances of the epoch it was removed in, and its fence must keep holding.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::core::ids::ReplicaId;
use crate::core::limits::MEMBERS_EVER_MAX;
use crate::server::members::Members;

// One bit per id that can ever be handed out.
const _: () = assert!(MEMBERS_EVER_MAX <= 64);

/// The ids the peer listener knows, and the rows messages are decoded against.
#[derive(Debug)]
pub struct PeerIds {
    /// Bit `i`: replica `i` is or was a member.
    ever: AtomicU64,
    /// `Node::rows()` as the event loop last saw it.
    rows: AtomicUsize,
}

impl PeerIds {
    /// The ids of `members` and every id below `rows`, the rows known (config.json's ids, and
    /// those of the configurations learnt since: the record keeps only the current one, so a
    /// member removed before a restart is still known through its row and can learn it was
    /// removed).
    pub fn new(members: &Members, rows: usize) -> PeerIds {
        let below = match rows.min(MEMBERS_EVER_MAX) {
            64 => u64::MAX,
            r => (1u64 << r) - 1,
        };
        let ids = PeerIds {
            ever: AtomicU64::new(below),
            rows: AtomicUsize::new(rows),
        };
        ids.admit(members);
        ids
    }

    /// Adds the members of a configuration being applied (nobody is ever taken out).
    pub fn admit(&self, members: &Members) {
        let bits = members
            .members()
            .iter()
            .filter(|m| m.id.index() < MEMBERS_EVER_MAX)
            .fold(0u64, |bits, m| bits | 1 << m.id.0);
        self.ever.fetch_or(bits, Ordering::Relaxed);
    }

    /// Whether `id` is or was a member of a configuration applied here.
    pub fn was_member(&self, id: u32) -> bool {
        (id as usize) < MEMBERS_EVER_MAX && self.ever.load(Ordering::Relaxed) & (1 << id) != 0
    }

    /// The ids that are or were members, in order.
    pub fn ever(&self) -> Vec<ReplicaId> {
        (0..MEMBERS_EVER_MAX as u32)
            .filter(|id| self.was_member(*id))
            .map(ReplicaId)
            .collect()
    }

    /// The rows wire messages are decoded against (see `core::wire::decode`).
    pub fn rows(&self) -> usize {
        self.rows.load(Ordering::Relaxed)
    }

    pub fn set_rows(&self, rows: usize) {
        self.rows.store(rows, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(epoch: u64, ids: &[u32]) -> Members {
        Members::new(
            epoch,
            ids.iter()
                .map(|id| {
                    Members::member_from_parts(
                        *id,
                        &format!("127.0.0.1:{}", 7170 + id),
                        &format!("127.0.0.1:{}", 7070 + id),
                    )
                    .expect("valid addresses")
                })
                .collect(),
        )
        .expect("valid members")
    }

    #[test]
    fn ids_that_were_members_stay_known_and_others_are_not() {
        let ids = PeerIds::new(&members(2, &[0, 1]), 3);
        assert!(
            ids.was_member(2),
            "below the rows known: config.json's, or removed since"
        );
        assert!(!ids.was_member(3), "never a member");
        assert!(
            !ids.was_member(64) && !ids.was_member(u32::MAX),
            "impossible ids"
        );
        // 2 replaced by 63 (the highest id there can be).
        ids.admit(&members(1, &[0, 1, 63]));
        assert!(ids.was_member(63));
        assert!(ids.was_member(2), "a removed member stays known");
        assert_eq!(ids.ever(), [0, 1, 2, 63].map(ReplicaId));
        ids.set_rows(64);
        assert_eq!(ids.rows(), 64);
        assert_eq!(
            PeerIds::new(&members(0, &[0]), 64).ever().len(),
            64,
            "every id there can be"
        );
    }
}
