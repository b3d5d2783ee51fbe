//! Whether a replica takes part, and how a replica with a new data directory gets to.
//!
//! A replica whose data directory is new asks every peer to `Join` before it takes part in
//! anything, and decides from their answers ([`Joiner`]):
//! - **fresh**: no peer that answered ever knew an incarnation of it, and with it they make a
//!   majority. It starts empty (a new cluster, or a replica added before it ever spoke). A peer
//!   that did know an old incarnation but is down now still refuses this one when it comes
//!   back (the incarnation fence), so nothing the old one voted on is voted on again.
//! - **rejoin**: some peer knew an incarnation of it (its data was lost, or an earlier join was
//!   interrupted). It waits until *every* peer answered: each answer fences the old incarnation
//!   at that peer and tells how far each row reaches there, and the per-row maximum (the
//!   *horizons*) bounds every instance the old incarnation may have voted on only if it comes
//!   from all peers. It then starts from the snapshot of the peer that executed most and
//!   abstains below the horizons (see `Replica::set_horizons`).

use crate::core::ids::{Incarnation, ReplicaId};
use crate::core::quorum;

/// Whether a replica takes part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Membership {
    /// Its data directory is new and it has not finished joining (or was interrupted doing so):
    /// it takes part in nothing until it has.
    Joining,
    /// It takes part; below `horizons` (per row) it abstains, because an earlier incarnation
    /// that lost its data may have voted there (all zeros for a replica that never lost data).
    Joined { horizons: Vec<u64> },
}

/// A peer's answer to a Join.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinAnswer {
    /// The incarnation of the joiner that the peer knew before this Join, if any.
    pub previous: Option<Incarnation>,
    /// Per row: one past the highest slot known at the peer (committed or not, collected
    /// ones included; its own next slot for its own row).
    pub row_ends: Vec<u64>,
    /// Per row: the peer's executed prefix (the joiner takes its snapshot from the peer that
    /// executed most).
    pub executed_prefix: Vec<u64>,
    /// The peer is joining itself (it has no snapshot to give).
    pub joining: bool,
}

/// What the answers decided.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JoinDecision {
    /// Nobody knew this replica: it starts empty.
    Fresh,
    /// It lost its data: start from a snapshot of one of `sources` (best first: most executed)
    /// and abstain below `horizons`.
    Rejoin {
        horizons: Vec<u64>,
        sources: Vec<ReplicaId>,
    },
}

/// A malformed answer to a Join.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("join answer from {peer} has {rows} rows, not {n}")]
pub struct MalformedAnswer {
    pub peer: ReplicaId,
    pub rows: usize,
    pub n: usize,
}

/// The answers collected by a joining replica.
#[derive(Debug, Clone)]
pub struct Joiner {
    me: ReplicaId,
    /// An earlier join of this data directory did not finish: it is a rejoin whatever the
    /// peers answer.
    interrupted: bool,
    answers: Vec<Option<JoinAnswer>>,
}

impl Joiner {
    /// Replica `me` of `n` starts joining.
    pub fn new(me: ReplicaId, n: usize, interrupted: bool) -> Joiner {
        Joiner {
            me,
            interrupted,
            answers: vec![None; n],
        }
    }

    /// Peers still to ask.
    pub fn missing(&self) -> Vec<ReplicaId> {
        (0..self.answers.len())
            .map(|p| ReplicaId(p as u32))
            .filter(|&p| p != self.me && self.answers[p.index()].is_none())
            .collect()
    }

    /// Records `peer`'s answer.
    pub fn answered(&mut self, peer: ReplicaId, answer: JoinAnswer) -> Result<(), MalformedAnswer> {
        let n = self.answers.len();
        let rows = answer.row_ends.len().min(answer.executed_prefix.len());
        if answer.row_ends.len() != n || answer.executed_prefix.len() != n || peer.index() >= n {
            return Err(MalformedAnswer { peer, rows, n });
        }
        self.answers[peer.index()] = Some(answer);
        Ok(())
    }

    /// Whether some peer knew an earlier incarnation (or the last join was interrupted): then
    /// every peer must answer.
    pub fn rejoin(&self) -> bool {
        self.interrupted || self.answers.iter().flatten().any(|a| a.previous.is_some())
    }

    /// The decision, once the answers suffice.
    pub fn decision(&self) -> Option<JoinDecision> {
        let n = self.answers.len();
        let answered: Vec<(usize, &JoinAnswer)> = self
            .answers
            .iter()
            .enumerate()
            .filter_map(|(p, a)| a.as_ref().map(|a| (p, a)))
            .collect();
        if !self.rejoin() {
            return (answered.len() + 1 >= quorum::slow_quorum(n)).then_some(JoinDecision::Fresh);
        }
        if answered.len() + 1 < n {
            return None;
        }
        let mut horizons = vec![0; n];
        for (_, a) in &answered {
            for (h, e) in horizons.iter_mut().zip(&a.row_ends) {
                *h = (*h).max(*e);
            }
        }
        let mut ranked: Vec<(u64, ReplicaId)> = answered
            .iter()
            .filter(|(_, a)| !a.joining)
            .map(|(p, a)| (a.executed_prefix.iter().sum(), ReplicaId(*p as u32)))
            .collect();
        ranked.sort_unstable_by(|a, b| b.cmp(a));
        Some(JoinDecision::Rejoin {
            horizons,
            sources: ranked.into_iter().map(|(_, p)| p).collect(),
        })
    }

    /// No snapshot could be had from any source: ask everyone again (their state moved on).
    pub fn restart(&mut self) {
        self.answers.iter_mut().for_each(|a| *a = None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn answer(previous: u64, row_ends: Vec<u64>, executed: Vec<u64>) -> JoinAnswer {
        JoinAnswer {
            previous: Incarnation::new(previous),
            row_ends,
            executed_prefix: executed,
            joining: false,
        }
    }

    #[test]
    fn a_new_replica_is_fresh_once_a_majority_knew_nothing_of_it() {
        let mut j = Joiner::new(ReplicaId(2), 3, false);
        assert_eq!(j.decision(), None, "alone it is no majority");
        assert_eq!(j.missing(), vec![ReplicaId(0), ReplicaId(1)]);
        j.answered(ReplicaId(0), answer(0, vec![5, 3, 0], vec![5, 3, 0]))
            .expect("well formed");
        assert_eq!(j.decision(), Some(JoinDecision::Fresh));
    }

    #[test]
    fn a_replica_some_peer_knew_waits_for_every_peer_and_takes_the_row_maxima() {
        let mut j = Joiner::new(ReplicaId(2), 3, false);
        j.answered(ReplicaId(0), answer(7, vec![5, 3, 9], vec![4, 3, 8]))
            .expect("well formed");
        assert!(j.rejoin());
        assert_eq!(j.decision(), None, "r1 has not answered");
        j.answered(ReplicaId(1), answer(0, vec![6, 2, 4], vec![5, 2, 4]))
            .expect("well formed");
        assert_eq!(
            j.decision(),
            Some(JoinDecision::Rejoin {
                horizons: vec![6, 3, 9],
                sources: vec![ReplicaId(0), ReplicaId(1)],
            }),
            "r0 executed 15, r1 11"
        );
    }

    #[test]
    fn an_interrupted_join_is_a_rejoin_and_joining_peers_give_no_snapshot() {
        let mut j = Joiner::new(ReplicaId(0), 3, true);
        j.answered(ReplicaId(1), answer(0, vec![1, 1, 1], vec![1, 1, 1]))
            .expect("well formed");
        assert_eq!(j.decision(), None, "a rejoin needs every peer");
        let mut joining = answer(0, vec![2, 0, 0], vec![0, 0, 0]);
        joining.joining = true;
        j.answered(ReplicaId(2), joining).expect("well formed");
        assert_eq!(
            j.decision(),
            Some(JoinDecision::Rejoin {
                horizons: vec![2, 1, 1],
                sources: vec![ReplicaId(1)],
            })
        );
        j.restart();
        assert_eq!(j.missing(), vec![ReplicaId(1), ReplicaId(2)]);
    }

    #[test]
    fn answers_for_another_cluster_size_are_refused() {
        let mut j = Joiner::new(ReplicaId(0), 3, false);
        assert!(j
            .answered(ReplicaId(1), answer(0, vec![1, 1], vec![1, 1, 1]))
            .is_err());
        assert_eq!(j.decision(), None);
    }
}
