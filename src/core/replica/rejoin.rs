//! Rejoin: a replica that lost its data directory.
//!
//! A replica that comes back without its data may have voted (pre-accepted, accepted,
//! promised) on instances it no longer remembers, and those votes may have counted. Its new
//! incarnation therefore:
//! - announces itself to every peer (`peer_rejoined` there), which from then on refuses the
//!   old incarnation; every vote of the old one that ever counted was counted by some peer
//!   before that moment, for an instance that peer knew, so below the highest slot any peer
//!   knew per row (the `horizons`) lie all the instances the old incarnation may have voted
//!   on, its own row's instances included; "knew" counts slots named only in dependencies
//!   (see `peer_rejoined`): peers may have to settle those too;
//! - starts from a peer's snapshot (`snapshot`) with its next own slot at its row's horizon;
//! - abstains below the horizons (`abstains`): it learns Commits there but never answers
//!   PreAccept, Accept, Recover or Validate, nor recovers; peers decide those instances
//!   without it, as if it were down;
//! - above the horizons it takes part normally, but until it has learnt a row committed up
//!   to its horizon it makes every dependency set it computes cover that row up to the
//!   horizon (`add_horizon_deps`): an old instance its predecessor saw and it did not may
//!   interfere, and without that cover two interfering instances, one old and one new, could
//!   each commit without the other in its deps (their quorums may meet only at this replica).
//!

use super::recoveries::RecoveryPhase;
use super::Replica;
use crate::core::deps::Deps;
use crate::core::ids::{InstanceId, ReplicaId, SLOT_LIMIT};
use crate::core::instance::Phase;
use crate::core::limits::MEMBERS_EVER_MAX;
use crate::core::per_row::PerRow;

impl Replica {
    /// Sets the horizons a rejoined replica keeps (durable in its data directory: they apply
    /// after a restart too). Its own row continues at its horizon.
    pub fn set_horizons(&mut self, mut horizons: Vec<u64>) {
        // Fewer than epoch 0's rows are not horizons. More than known here (a peer knew an id
        // a configuration added) grow the tables; a row known here but not in them has none.
        if horizons.len() < self.opts.n || horizons.len() > MEMBERS_EVER_MAX {
            return;
        }
        self.grow_rows(horizons.len());
        horizons.resize(self.rows(), 0);
        let Some(horizons) = PerRow::from_vec(horizons, self.rows()) else {
            return;
        };
        self.next_slot = self.next_slot.max(horizons[self.opts.id]);
        self.horizons = horizons;
    }

    /// Per row: how far the row reached anywhere when this replica rejoined (zeros if never).
    pub fn horizons(&self) -> &[u64] {
        self.horizons.as_slice()
    }

    /// The next slot of this replica's own row.
    pub fn next_slot(&self) -> u64 {
        self.next_slot
    }

    /// Whether this replica, having rejoined, still abstains somewhere: some row is not known
    /// committed up to its horizon. Until then it counts against the failures the cluster
    /// tolerates, like a replica that is down (below the horizons it does not vote).
    pub fn abstaining(&self) -> bool {
        self.horizons
            .iter()
            .zip(&self.committed_prefix)
            .any(|(h, c)| c < h)
    }

    /// Whether this replica must not vote on `id`: below its row's horizon and not known
    /// committed here (a decided value is a fact anyone may repeat).
    pub(super) fn abstains(&self, id: InstanceId) -> bool {
        id.slot < self.horizons[id.replica]
            && !self
                .instances
                .get(&id)
                .is_some_and(|i| i.status.is_decided())
    }

    /// Covers every row up to its horizon until this replica learnt it committed that far.
    pub(super) fn add_horizon_deps(&self, deps: &mut Deps) {
        self.cover_up_to(self.horizons.as_slice(), deps);
    }

    /// Makes `deps` cover every row `r` up to `ends[r]` (one past a slot) until this replica
    /// learnt the row committed that far: the one "cover every row up to a vector" rule, for
    /// the horizons here and for an old epoch's boundary (`seal`).
    pub(super) fn cover_up_to(&self, ends: &[u64], deps: &mut Deps) {
        let cover = ends
            .iter()
            .zip(self.committed_prefix.rows())
            .filter(|(h, (_, committed))| **h > 0 && **committed < **h)
            .map(|(h, (row, _))| InstanceId::new(row, h - 1));
        for id in cover {
            deps.raise(id);
        }
    }

    /// Peer `peer` joined with a new data directory: forget what its old incarnation reported
    /// (garbage collection waits for the new one's progress) and answer how far each row
    /// reaches here: one past the highest slot known, committed or not, forgotten included, the
    /// next slot for this replica's own row, **and every slot named here only as a dependency**
    /// (in an instance's deps or initial deps, in a PreAcceptOk or RecoverOk this replica holds
    /// while it leads or recovers, in a conflict a ValidateOk reported, in an instance it waits
    /// for), **and every boundary known here** (its seals' ends, the boundaries it accepted or
    /// knows decided).
    ///
    /// Why the dependencies: a replica's answers carry its own instances in their deps, also
    /// ones whose PreAccepts reached nobody (lost, cut off). If the old incarnation of `peer`
    /// did that and then lost its data, a peer here knows such a slot (peer, k) only as a
    /// dependency: a Commit covering it makes every replica that executes it wait for (peer, k),
    /// take it over and commit a no-op there. A horizon that stopped below k would let the new
    /// incarnation start its own row there and give k a command of its own at ballot 0 while
    /// peers decide k without it: two values for one slot, and its refusal of that no-op's
    /// Commit (`CommitUnproposed`) is what shows it. Counting what deps name keeps every slot
    /// any peer may need below the horizon, where peers decide it and the new incarnation only
    /// learns it.
    ///
    /// Why the boundaries: an old-epoch instance the old incarnation voted on may be known now
    /// only through an epoch's boundary (`seal`): the member whose seal raised `B` above it may
    /// have been removed since, and only the members of the configuration the rejoin joins
    /// answer. Every such instance that committed a command lies below `B` (the boundary's
    /// claim), so a horizon at or above `B` keeps the new incarnation from answering for it.
    pub fn peer_rejoined(&mut self, peer: ReplicaId) -> Vec<u64> {
        if let Some(p) = self.peer_committed.get_mut(peer) {
            p.iter_mut().for_each(|s| *s = 0);
        }
        if let Some(p) = self.peer_executed.get_mut(peer) {
            p.iter_mut().for_each(|s| *s = 0);
        }
        self.row_reach()
    }

    /// Per row, how far it reaches here: what `peer_rejoined` answers (see there), read only.
    pub fn row_reach(&self) -> Vec<u64> {
        let mut ends = self.committed_end.clone();
        for (end, gc) in ends.iter_mut().zip(&self.gc_prefix) {
            *end = (*end).max(*gc);
        }
        let me = self.opts.id;
        ends[me] = ends[me].max(self.next_slot);
        let mut reach = |id: &InstanceId| {
            if let Some(end) = ends.get_mut(id.replica) {
                *end = (*end).max(id.slot + 1);
            }
        };
        for (id, inst) in &self.instances {
            reach(id);
            inst.deps.iter().for_each(&mut reach);
            if let Some(init) = &inst.init_deps {
                init.iter().for_each(&mut reach);
            }
        }
        for lead in self.leading.values() {
            if let Phase::PreAccepting { replies } = &lead.phase {
                replies
                    .iter()
                    .flat_map(|(_, d)| d.iter())
                    .for_each(&mut reach);
            }
        }
        for recovery in self.recovering.values() {
            match &recovery.phase {
                RecoveryPhase::Recovering { replies } => {
                    for (_, r) in replies {
                        r.deps.iter().for_each(&mut reach);
                        if let Some(init) = &r.init_deps {
                            init.iter().for_each(&mut reach);
                        }
                    }
                }
                RecoveryPhase::Validating { deps, replies, .. } => {
                    deps.iter().for_each(&mut reach);
                    replies
                        .iter()
                        .flat_map(|(_, c)| c.iter().map(|(id, _)| id))
                        .for_each(&mut reach);
                }
                RecoveryPhase::Waiting { deps, awaited, .. } => {
                    deps.iter().chain(awaited).for_each(&mut reach);
                }
            }
        }
        self.waiting.keys().for_each(&mut reach);
        let mut ends = ends.into_vec();
        for boundary in self.boundary_vectors() {
            for (end, b) in ends.iter_mut().zip(boundary) {
                *end = (*end).max((*b).min(SLOT_LIMIT));
            }
        }
        ends
    }
}
