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
//! - **added** (fresh, in a configuration past epoch 0): as fresh, nobody knew it and with it
//!   a majority answered, but it starts from the snapshot of the peer that executed most, with
//!   zero horizons (it never voted, so it has nothing to abstain from). `config.json` holds
//!   epoch 0 only: the configurations decided since, and the commands before this replica was
//!   added, exist only in its peers' state. A replica empty in epoch 0 would act in a
//!   configuration the cluster left.

use std::collections::BTreeMap;

use crate::core::epoch::Configuration;
use crate::core::ids::{Incarnation, ReplicaId};
use crate::core::limits::MEMBERS_EVER_MAX;

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

/// A malformed answer to a Join, or one from a replica that is not a member.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MalformedAnswer {
    /// Its per-row vectors differ in length, cover fewer rows than the configuration's, or
    /// more than any configuration can have.
    #[error(
        "join answer from {peer} has {rows} rows, not between {needed} and {MEMBERS_EVER_MAX}"
    )]
    Rows {
        peer: ReplicaId,
        rows: usize,
        needed: usize,
    },
    /// The peer is not a member of the configuration the joiner asks (or is the joiner).
    #[error("join answer from {peer}, not a member of {configuration} other than this replica")]
    NotMember {
        peer: ReplicaId,
        configuration: Configuration,
    },
}

/// The answers collected by a joining replica, keyed by the members of the configuration it
/// joins (not by a count: ids are never reused, so an added member has an id above epoch 0's).
#[derive(Debug, Clone)]
pub struct Joiner {
    me: ReplicaId,
    /// An earlier join of this data directory did not finish: it is a rejoin whatever the
    /// peers answer.
    interrupted: bool,
    /// Whom to ask and whose answers count toward the decision.
    configuration: Configuration,
    answers: BTreeMap<ReplicaId, JoinAnswer>,
}

impl Joiner {
    /// Replica `me` of epoch 0's `n` starts joining.
    pub fn new(me: ReplicaId, n: usize, interrupted: bool) -> Joiner {
        Joiner::of(me, Configuration::initial(n), interrupted)
    }

    /// Replica `me` starts joining the members of `configuration` (`me` may be one of them,
    /// or an added replica not yet counted).
    pub fn of(me: ReplicaId, configuration: Configuration, interrupted: bool) -> Joiner {
        Joiner {
            me,
            interrupted,
            configuration,
            answers: BTreeMap::new(),
        }
    }

    /// Peers still to ask: the members but this replica that have not answered.
    pub fn missing(&self) -> Vec<ReplicaId> {
        self.others()
            .filter(|p| !self.answers.contains_key(p))
            .collect()
    }

    fn others(&self) -> impl Iterator<Item = ReplicaId> + '_ {
        let me = self.me;
        self.configuration
            .members()
            .iter()
            .copied()
            .filter(move |p| *p != me)
    }

    /// Records `peer`'s answer. A peer that learnt a later configuration may report more rows
    /// than this one knows (they count toward the horizons); never fewer.
    pub fn answered(&mut self, peer: ReplicaId, answer: JoinAnswer) -> Result<(), MalformedAnswer> {
        if peer == self.me || !self.configuration.is_member(peer) {
            return Err(MalformedAnswer::NotMember {
                peer,
                configuration: self.configuration.clone(),
            });
        }
        let needed = self.configuration.rows();
        let rows = answer.row_ends.len().min(answer.executed_prefix.len());
        if answer.row_ends.len() != answer.executed_prefix.len()
            || rows < needed
            || rows > MEMBERS_EVER_MAX
        {
            return Err(MalformedAnswer::Rows { peer, rows, needed });
        }
        self.answers.insert(peer, answer);
        Ok(())
    }

    /// Whether some peer knew an earlier incarnation (or the last join was interrupted): then
    /// every peer must answer.
    pub fn rejoin(&self) -> bool {
        self.interrupted || self.answers.values().any(|a| a.previous.is_some())
    }

    /// The decision, once the answers suffice: fresh once the members that answered (with
    /// this replica, if it is one) make a majority of the configuration (from a snapshot with
    /// zero horizons past epoch 0: see the module doc); a rejoin once every other member
    /// answered.
    pub fn decision(&self) -> Option<JoinDecision> {
        if !self.rejoin() {
            let me = usize::from(self.configuration.is_member(self.me));
            if self.answers.len() + me < self.configuration.slow_quorum() {
                return None;
            }
            if self.configuration.epoch().0 == 0 {
                return Some(JoinDecision::Fresh);
            }
            return Some(JoinDecision::Rejoin {
                horizons: vec![0; self.rows()],
                sources: self.sources(),
            });
        }
        if self.others().any(|p| !self.answers.contains_key(&p)) {
            return None;
        }
        let mut horizons = vec![0; self.rows()];
        for a in self.answers.values() {
            for (h, e) in horizons.iter_mut().zip(&a.row_ends) {
                *h = (*h).max(*e);
            }
        }
        Some(JoinDecision::Rejoin {
            horizons,
            sources: self.sources(),
        })
    }

    /// The rows the answers cover (a peer that learnt a later configuration may know more).
    fn rows(&self) -> usize {
        self.answers
            .values()
            .map(|a| a.row_ends.len())
            .max()
            .unwrap_or(0)
            .max(self.configuration.rows())
    }

    /// The peers to take a snapshot from, best first (most executed); joining ones have none.
    fn sources(&self) -> Vec<ReplicaId> {
        let mut ranked: Vec<(u64, ReplicaId)> = self
            .answers
            .iter()
            .filter(|(_, a)| !a.joining)
            .map(|(p, a)| (a.executed_prefix.iter().sum(), *p))
            .collect();
        ranked.sort_unstable_by(|a, b| b.cmp(a));
        ranked.into_iter().map(|(_, p)| p).collect()
    }

    /// No snapshot could be had from any source: ask everyone again (their state moved on).
    pub fn restart(&mut self) {
        self.answers.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::epoch::Epoch;

    fn answer(previous: u64, row_ends: Vec<u64>, executed: Vec<u64>) -> JoinAnswer {
        JoinAnswer {
            previous: Incarnation::new(previous),
            row_ends,
            executed_prefix: executed,
            joining: false,
        }
    }

    #[test]
    fn an_added_replica_takes_a_snapshot_with_zero_horizons_once_a_majority_answered() {
        // Epoch 1 added replica 3 to 0, 1, 2: four members, a majority is three.
        let four = Configuration::new(Epoch(1), (0..4).map(ReplicaId).collect()).expect("valid");
        let mut j = Joiner::of(ReplicaId(3), four, false);
        j.answered(ReplicaId(0), answer(0, vec![9, 4, 7, 0], vec![8, 4, 7, 0]))
            .expect("well formed");
        assert_eq!(
            j.decision(),
            None,
            "one answer and itself: not three of four"
        );
        // Not every member needs to answer (2 may be down): nobody knew it, it never voted.
        j.answered(ReplicaId(1), answer(0, vec![9, 5, 7, 0], vec![9, 5, 7, 0]))
            .expect("well formed");
        let decided = Some(JoinDecision::Rejoin {
            horizons: vec![0, 0, 0, 0],
            sources: vec![ReplicaId(1), ReplicaId(0)],
        });
        assert_eq!(j.decision(), decided);
        let mut idle = answer(0, vec![9, 5, 7, 0], vec![0, 0, 0, 0]);
        idle.joining = true;
        j.answered(ReplicaId(2), idle).expect("well formed");
        assert_eq!(
            j.decision(),
            decided,
            "from a snapshot (the configurations since epoch 0 are only in the peers' state), r1 \
             executed most, r2 is joining itself and has none to give"
        );
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
        assert!(matches!(
            j.answered(ReplicaId(1), answer(0, vec![1, 1], vec![1, 1])),
            Err(MalformedAnswer::Rows {
                rows: 2,
                needed: 3,
                ..
            })
        ));
        assert!(matches!(
            j.answered(ReplicaId(3), answer(0, vec![1; 4], vec![1; 4])),
            Err(MalformedAnswer::NotMember { .. })
        ));
        assert_eq!(j.decision(), None);
    }

    /// The joiner is keyed by the members, not by a count: replica 3, added in epoch 1 to
    /// {0,1,2}, asks the three others, is fresh once with itself they make a majority of four
    /// (3), and a rejoin of it waits for all three and takes horizons over four rows.
    #[test]
    fn an_added_id_joins_the_members_of_its_configuration() {
        let e1 = Configuration::new(Epoch(1), (0..4).map(ReplicaId).collect()).expect("valid");
        let mut j = Joiner::of(ReplicaId(3), e1.clone(), false);
        assert_eq!(j.missing(), vec![ReplicaId(0), ReplicaId(1), ReplicaId(2)]);
        j.answered(ReplicaId(0), answer(0, vec![5, 3, 0, 0], vec![5, 3, 0, 0]))
            .expect("well formed");
        assert_eq!(j.decision(), None, "2 of 4 is no majority");
        j.answered(ReplicaId(2), answer(0, vec![5, 3, 1, 0], vec![5, 3, 1, 0]))
            .expect("well formed");
        assert_eq!(
            j.decision(),
            Some(JoinDecision::Rejoin {
                horizons: vec![0, 0, 0, 0],
                sources: vec![ReplicaId(2), ReplicaId(0)],
            }),
            "past epoch 0, fresh means from a snapshot"
        );
        assert_eq!(j.missing(), vec![ReplicaId(1)]);

        let mut j = Joiner::of(ReplicaId(3), e1, false);
        j.answered(ReplicaId(0), answer(9, vec![5, 3, 0, 2], vec![5, 3, 0, 1]))
            .expect("well formed");
        j.answered(ReplicaId(1), answer(0, vec![4, 4, 0, 1], vec![4, 4, 0, 1]))
            .expect("well formed");
        assert_eq!(j.decision(), None, "a rejoin needs every other member");
        // A peer that already learnt a later configuration (id 4 added) reports five rows.
        j.answered(
            ReplicaId(2),
            answer(0, vec![1, 1, 7, 0, 3], vec![1, 1, 7, 0, 3]),
        )
        .expect("more rows than the joiner knows are fine");
        assert_eq!(
            j.decision(),
            Some(JoinDecision::Rejoin {
                horizons: vec![5, 4, 7, 2, 3],
                sources: vec![ReplicaId(2), ReplicaId(1), ReplicaId(0)],
            }),
            "r2 executed 12, r1 9, r0 9 (ties by id, highest first)"
        );
    }

    /// Epoch 0's joiner counts a majority as `n - f`, as every configuration does: with 4
    /// replicas, 2 answers and the joiner make 3.
    #[test]
    fn a_fresh_join_needs_a_majority_of_an_even_cluster_too() {
        let mut j = Joiner::new(ReplicaId(0), 4, false);
        j.answered(ReplicaId(1), answer(0, vec![0; 4], vec![0; 4]))
            .expect("well formed");
        assert_eq!(j.decision(), None, "2 of 4 is no majority");
        j.answered(ReplicaId(3), answer(0, vec![0; 4], vec![0; 4]))
            .expect("well formed");
        assert_eq!(j.decision(), Some(JoinDecision::Fresh));
    }
}
