//! Garbage collection and checkpoints: dropping executed instances from memory, what a
//! checkpoint or snapshot holds, and the retention past which a lagging member is left behind.
//!
//! **The rule.** Per row, an instance may be dropped once it is executed here and
//! - executed at every peer (nobody can need its Commit again), or
//! - executed at a majority, this replica included, and past the *retention*: at least
//!   `retention_instances` more slots of the row executed by that majority beyond it, or
//!   more than `retention_bytes` held beyond it (below). A member that lags further, down or
//!   cut off, no longer holds the survivors' memory and log hostage.
//!
//! **Which bytes.** Per row, the key and value bytes (`Op::size_bytes`, what the batch and
//! pending budgets count) of the commands of the instances this replica still holds in memory
//! between its collected prefix and the highest executed prefix of a majority it has seen
//! (`Retained`): exactly what the retention keeps for the lagging member and nobody else.
//! Instances not yet executed at a majority are not counted (they cannot be collected
//! anyway). When that passes `retention_bytes`, the oldest of them are collected until it no
//! longer does. The sum is kept as the prefixes move, so a tick costs only the slots that
//! moved, not the whole retention.
//!
//! Each replica applies the rule alone, from the executed prefixes its peers' Watermarks
//! reported; no agreement is needed, because what makes dropping safe is a property of the
//! instance (executed at a majority), not of who dropped it: any quorum that could take such
//! an instance over meets a member of that majority, which either still holds it committed
//! (and says so) or dropped it too (and ignores the Recover), so a collected instance is never
//! decided again. If a majority is down, nothing executes at a majority: nothing is collected
//! past the members that are down (and nothing commits either).
//!
//! **Telling the lagging member.** Every Watermark carries the sender's collected prefix. A
//! member that finds a peer collected slots it has not executed (`check_left_behind`) cannot
//! get those Commits from that peer any more: it stops taking part (the node gates every
//! input, `Node::catching_up`), and the shell fetches the snapshot of that peer (the same
//! `Snapshot` call and fence as a rejoin: only the incarnation the peer records is served)
//! and installs it (`Node::install_caught_up`).
//!
//! **Why installing is safe without horizons.** A rejoin needs horizons because its data was
//! lost with the promises in it. A left-behind member lost nothing: it keeps every instance
//! record it holds above the snapshot's collected prefix (its promises, its votes, the
//! undecided instances of its own row, which it goes on leading at the same ballots), and
//! takes the snapshot's decided instances over its own undecided copies (a decided value is
//! final). What it drops is below the snapshot's collected prefix: decided and executed at a
//! majority, so the promises it made there can no longer matter (nobody decides those
//! instances again, see above). Its key/value state and exactly-once session table come with
//! the snapshot's checkpoint; the decided instances of its own that the source had not
//! executed execute again on top of it, in the same deterministic order as everywhere.
//!
//! **Ordering against what was collected.** Recovery's Validate cannot see a collected
//! instance X, so an instance Y recovered afterwards may commit without X in its deps while X
//! does not have Y in its own (`recovering::validate_conflicts`). That is harmless where X
//! executed before Y was committed: every member that executed X orders it first whatever the
//! deps say. A member left behind has not executed X; it must not execute Y before it has X
//! in its state, which the snapshot gives it. So a replica that receives a Watermark from a
//! peer it collected past answers with its own Watermark at once, not with Commits (the peer
//! learns it is behind before it could learn Y from this replica), and the left-behind member
//! stops at the first Watermark that shows it. What remains is a window in which it could
//! learn Y from live traffic, or from a peer that did not collect past it, before any such
//! Watermark, and execute Y before X. With N = 3 we believe this cannot arise (sketch, not a
//! proof: Y reaches Validate only through a survivor M that pre-accepted Y with its leader's
//! deps, so before it saw X; X's quorum of two holds M or the third replica, Y's leader,
//! and whichever it holds saw both, so X's deps cover Y or Y's cover X). With N ≥ 5 it takes
//! a recovery by a
//! quorum that all collected X, racing the member's return; the simulator's execution-order
//! check holds every replica's execution (before and after its snapshot) to one order per
//! key, and found no such run in thousands of seeds with a retention of 2 instances, but it
//! is not proved impossible.
//!
//! **Epochs.** Whose execution counts is decided per instance, by its own epoch (`epoch`): it
//! may be collected once a slow quorum *of its epoch's members* executed it, since only those
//! members' quorums can decide it again; and without the retention once, besides, every member
//! of the current configuration executed it. Ranking every peer against the current
//! configuration, as this module first did, went wrong after a removal: a 3-member epoch-0
//! instance executed by the removed member and this one only was collected against the
//! 2-member epoch 1's quorum (seed 13649 of `random_seeds_with_removals`; the sabotage
//! `collect_by_current_epoch`). A removed member does not count among "every member": down for
//! good it would otherwise hold every instance it did not execute in memory up to the
//! retention, and alive it never executes what is ordered after its removal. One that is
//! alive and behind is in the position of a member left behind (above): the first Watermark
//! showing a collection past it sends it to a snapshot, where it learns it was removed.
//! A row's slots are walked in order, each ranked by the epoch of the instance held there (one
//! not held by the current configuration's, as `deciding` does); whether a slot was executed
//! at a quorum of its epoch only turns from no to yes, so the walk resumes where it stopped
//! (`Retained::end`). A wiped peer's prefixes drop to zero when it rejoins, but a slot once
//! executed at a quorum stays safe to collect: the new incarnation votes on nothing below its
//! horizons (`rejoin`).

use super::Replica;
use crate::core::epoch::Configuration;
use crate::core::ids::{InstanceId, ReplicaId};
use crate::core::instance::{Instance, Status};

/// One row's byte retention: the bytes (see the module's doc) of the instances in memory
/// between the collected prefix and `end`, the highest majority-executed prefix seen.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(super) struct Retained {
    end: u64,
    bytes: u64,
}

/// What an instance weighs in the byte retention: its commands' key and value bytes.
fn weight(inst: &Instance) -> u64 {
    inst.commands.iter().map(|c| c.op.size_bytes() as u64).sum()
}

impl Replica {
    /// Instances dropped from memory so far, all rows: the runtime checkpoints when this has
    /// grown enough since its last checkpoint.
    pub fn collected(&self) -> u64 {
        self.gc_prefix.iter().sum()
    }

    /// An encoded checkpoint of the current state (see `checkpoint`), and the instance states
    /// the log must keep beside it (every instance still in memory), in `InstanceId` order.
    pub fn checkpoint(&self) -> (Vec<u8>, Vec<(InstanceId, Instance)>) {
        let mut live: Vec<(InstanceId, Instance)> = self
            .instances
            .iter()
            .map(|(id, inst)| (*id, inst.clone()))
            .collect();
        live.sort_unstable_by_key(|(id, _)| *id);
        let executed_above: Vec<InstanceId> = live
            .iter()
            .filter(|(_, i)| i.status == Status::Executed)
            .map(|(id, _)| *id)
            .collect();
        let encoded = crate::core::checkpoint::encode(
            &self.kv,
            &self.index,
            self.gc_prefix.as_slice(),
            &executed_above,
            self.next_slot,
            &self.configurations_for_checkpoint(),
        );
        (encoded, live)
    }

    /// Whether `id` was dropped from memory (see `gc_prefix`).
    pub(super) fn forgotten(&self, id: InstanceId) -> bool {
        id.slot < self.gc_prefix[id.replica]
    }

    /// Drops the instances that are executed here and at every peer, or at a majority with the
    /// retention beyond them (see the module's doc).
    pub(super) fn collect_garbage(&mut self) {
        for row in (0..self.rows() as u32).map(ReplicaId) {
            let (everyone, majority) = self.executed_bounds(row);
            self.count_retained(row, majority);
            let limit = everyone
                .max(majority.saturating_sub(self.opts.retention_instances))
                .max(self.bytes_limit(row, majority));
            for slot in self.gc_prefix[row]..limit {
                let id = InstanceId::new(row, slot);
                debug_assert!(
                    self.instances
                        .get(&id)
                        .is_none_or(|i| i.status == Status::Executed),
                    "{id} collected before it executed"
                );
                if let Some(inst) = self.instances.remove(&id) {
                    if slot < self.retained[row].end {
                        self.retained[row].bytes -= weight(&inst);
                    }
                }
            }
            self.gc_prefix[row] = self.gc_prefix[row].max(limit);
        }
    }

    /// Per row: the prefix that every current member executed (within the next), and the
    /// prefix whose every instance a quorum of its own epoch executed (see the module's doc,
    /// "Epochs"); neither above what this replica executed itself.
    fn executed_bounds(&self, row: ReplicaId) -> (u64, u64) {
        let mine = self.executed_prefix[row].min(self.committed_prefix[row]);
        let gc = self.gc_prefix[row];
        let everyone = self
            .executed_among(self.configuration(), row, mine)
            .0
            .min(mine)
            .max(gc);
        if self.opts.sabotage.collect_without_majority() {
            return (everyone, mine.max(gc));
        }
        if self.opts.sabotage.collect_by_current_epoch() {
            let mut peers: Vec<u64> = (self.peer_executed.rows())
                .filter(|(p, _)| *p != self.opts.id)
                .map(|(_, prefixes)| prefixes[row])
                .collect();
            peers.sort_unstable_by(|a, b| b.cmp(a));
            let i = self.configuration().slow_quorum().saturating_sub(2);
            return (everyone, peers.get(i).map_or(mine, |p| (*p).min(mine)));
        }
        // Per epoch known: the prefix of `row` a quorum of its members executed.
        let quorums: Vec<u64> = (self.configurations.iter())
            .map(|c| self.executed_among(c, row, mine).1)
            .collect();
        let current = *quorums.last().expect("a replica always knows epoch 0");
        // Whether a slot was executed at a quorum of its epoch only turns from no to yes, so
        // the walk resumes where the last one stopped (`Retained::end`).
        let mut majority = self.retained[row].end.min(mine).max(gc);
        while majority < mine {
            // An instance not held is decided under the current configuration (`deciding`).
            let quorum = (self.instances.get(&InstanceId::new(row, majority)))
                .and_then(|i| usize::try_from(i.epoch.0).ok())
                .and_then(|e| quorums.get(e).copied())
                .unwrap_or(current);
            if majority >= quorum {
                break;
            }
            majority += 1;
        }
        // Every current member, and a quorum of the instance's own epoch (a removed member
        // need not have executed it, but the quorums that may still decide it meet one that
        // did: see the module's doc).
        (everyone.min(majority), majority)
    }

    /// Among the members of `config`: the prefix of `row` executed at all of them, and at a
    /// slow quorum of them (this replica's own prefix is `mine`, whether it is a member or
    /// not; a member not heard from counts as having executed nothing).
    fn executed_among(&self, config: &Configuration, row: ReplicaId, mine: u64) -> (u64, u64) {
        let mut prefixes: Vec<u64> = config
            .members()
            .iter()
            .map(|&m| {
                if m == self.opts.id {
                    mine
                } else {
                    self.peer_executed.get(m).map_or(0, |p| p[row])
                }
            })
            .collect();
        prefixes.sort_unstable_by(|a, b| b.cmp(a));
        let all = prefixes.last().copied().unwrap_or(0);
        let quorum = prefixes
            .get(config.slow_quorum().saturating_sub(1))
            .copied()
            .unwrap_or(0);
        (all, quorum)
    }

    /// Brings `row`'s byte retention up to `majority`: counts the instances in memory that a
    /// majority executed since the last call (each slot once).
    fn count_retained(&mut self, row: ReplicaId, majority: u64) {
        let gc = self.gc_prefix[row];
        let retained = &mut self.retained[row];
        if retained.end <= gc {
            // Everything counted was collected (or nothing was counted yet, as after a
            // restore from a checkpoint).
            debug_assert_eq!(retained.bytes, 0, "{row}: collected bytes still counted");
            *retained = Retained { end: gc, bytes: 0 };
        }
        for slot in retained.end..majority {
            if let Some(inst) = self.instances.get(&InstanceId::new(row, slot)) {
                retained.bytes += weight(inst);
            }
        }
        retained.end = retained.end.max(majority);
    }

    /// How far `row` must be collected to bring its byte retention within `retention_bytes`:
    /// the oldest instances go first, never past `majority`.
    fn bytes_limit(&self, row: ReplicaId, majority: u64) -> u64 {
        let mut bytes = self.retained[row].bytes;
        let mut slot = self.gc_prefix[row];
        while bytes > self.opts.retention_bytes && slot < majority {
            if let Some(inst) = self.instances.get(&InstanceId::new(row, slot)) {
                bytes -= weight(inst);
            }
            slot += 1;
        }
        slot
    }

    /// Per row: the bytes the retention holds here (see the module's doc).
    pub fn retained_bytes(&self) -> Vec<u64> {
        self.retained.iter().map(|r| r.bytes).collect()
    }

    /// A peer's Watermark says it collected (per row) below `collected`: if that passes what
    /// this replica executed, the Commits it lacks may be gone everywhere it could ask, and
    /// it must install a snapshot (of `from`, which holds everything below). Returns whether
    /// this replica is now left behind.
    pub(super) fn check_left_behind(&mut self, from: ReplicaId, collected: &[u64]) -> bool {
        if self.left_behind.is_some() {
            return true;
        }
        if self.opts.sabotage.ignore_collected() {
            return false;
        }
        if collected
            .iter()
            .zip(self.executed_prefix.iter())
            .any(|(c, e)| c > e)
        {
            self.left_behind = Some(from);
            return true;
        }
        false
    }

    /// The peer whose collection passed this replica's execution, if one did: this replica
    /// must install its snapshot before it takes part again (see the module's doc).
    pub fn left_behind(&self) -> Option<ReplicaId> {
        self.left_behind
    }

    /// Instances held in memory (what garbage collection bounds).
    pub fn instances_in_memory(&self) -> usize {
        self.instances.len()
    }

    /// Per row: below this, instances were dropped from memory here.
    pub fn collected_prefix(&self) -> &[u64] {
        self.gc_prefix.as_slice()
    }

    /// Per row: the executed prefix here.
    pub fn executed_prefix(&self) -> &[u64] {
        self.executed_prefix.as_slice()
    }

    /// What a joining peer starts from: an encoded checkpoint of the current state and the
    /// decided instances still in memory. Undecided ones stay out: their votes here are not the
    /// joiner's (it abstains on them anyway).
    pub fn snapshot(&self) -> (Vec<u8>, Vec<(InstanceId, Instance)>) {
        let (encoded, mut live) = self.checkpoint();
        live.retain(|(_, i)| i.status.is_decided());
        (encoded, live)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::Bytes;

    use super::super::{Options, Time};
    use super::*;
    use crate::core::command::{Command, Op};
    use crate::core::ids::{ClientId, RequestId};

    /// Three replicas collecting garbage with the given retentions.
    fn cluster(instances: u64, bytes: u64) -> Vec<Replica> {
        (0..3)
            .map(|i| {
                let mut o = Options::new(ReplicaId(i), 3);
                o.gc_executed = true;
                o.retention_instances = instances;
                o.retention_bytes = bytes;
                Replica::new(o)
            })
            .collect()
    }

    /// A put of `value_bytes` bytes to a key of 2 bytes: 2 + `value_bytes` in the retention.
    fn put(client: u64, value_bytes: usize) -> Command {
        Command::new(
            ClientId(client),
            RequestId(1),
            Op::Put {
                key: Bytes::from(format!("k{}", client % 10)),
                value: Bytes::from(vec![b'v'; value_bytes]),
            },
        )
    }

    /// Delivers everything but what goes to or from r2 (down) until quiet.
    fn settle_without_r2(rs: &mut [Replica], now: Time) {
        let r2 = ReplicaId(2);
        super::super::tests::settle(rs, now, |from, to| from == r2 || to == r2);
    }

    /// `puts` puts of `value_bytes` through r0 with r2 down, then Watermarks for a while (so
    /// that r0 and r1 learn each other's executed prefixes).
    fn load(rs: &mut [Replica], puts: u64, value_bytes: usize) {
        load_from(rs, Duration::ZERO, 1..=puts, value_bytes);
    }

    /// `load` from time `now` with one put from each client in `clients`; returns the time
    /// it ends at.
    fn load_from(
        rs: &mut [Replica],
        mut now: Time,
        clients: std::ops::RangeInclusive<u64>,
        value_bytes: usize,
    ) -> Time {
        for client in clients {
            rs[0]
                .propose(client, put(client, value_bytes))
                .expect("room");
            settle_without_r2(rs, now);
        }
        for _ in 0..3 {
            now += Duration::from_secs(2);
            for r in rs.iter_mut() {
                r.tick(now);
            }
            settle_without_r2(rs, now);
        }
        now
    }

    #[test]
    fn the_byte_retention_collects_the_oldest_past_a_member_down() {
        // 102 bytes an instance: 3 fit in 350 bytes, a fourth would not.
        let mut rs = cluster(1000, 350);
        load(&mut rs, 10, 100);
        for r in &rs[..2] {
            assert_eq!(r.kv().executed(), 10);
            assert_eq!(
                r.collected_prefix(),
                &[7, 0, 0],
                "a majority executed r0's row up to 10: all but the last 3 collected"
            );
            assert_eq!(r.retained_bytes(), [306, 0, 0]);
            assert_eq!(r.instances_in_memory(), 3);
        }
    }

    #[test]
    fn whichever_retention_is_passed_first_collects() {
        let mut by_count = cluster(2, 1 << 20);
        load(&mut by_count, 10, 100);
        assert_eq!(by_count[0].collected_prefix(), &[8, 0, 0]);
        assert_eq!(by_count[0].retained_bytes(), [204, 0, 0]);
        // Neither passed: only what every member executed goes (nothing: r2 executed none).
        let mut patient = cluster(1000, 1 << 20);
        load(&mut patient, 10, 100);
        assert_eq!(patient[0].collected_prefix(), &[0, 0, 0]);
        assert_eq!(patient[0].retained_bytes(), [1020, 0, 0]);
    }

    #[test]
    fn an_instance_larger_than_the_byte_retention_is_collected_once_a_majority_executed_it() {
        let mut rs = cluster(1000, 50);
        load(&mut rs, 4, 100);
        assert_eq!(rs[0].collected_prefix(), &[4, 0, 0]);
        assert_eq!(rs[0].retained_bytes(), [0, 0, 0]);
        assert_eq!(rs[0].instances_in_memory(), 0);
    }

    /// A member down for good holds what it did not execute in memory (up to the retention)
    /// only while it is a member: once removed, the survivors collect everything both of them
    /// executed, the old epoch's instances (a quorum of epoch 0, {r0, r1}, executed them) and
    /// the new epoch's.
    #[test]
    fn removing_a_member_down_for_good_lets_the_survivors_collect_what_they_executed() {
        let mut rs = cluster(1000, 1 << 20);
        let now = load_from(&mut rs, Duration::ZERO, 1..=10, 100);
        assert_eq!(rs[0].collected_prefix(), &[0, 0, 0], "r2 executed nothing");
        rs[0]
            .propose_reconfigure(
                99,
                crate::core::epoch::Change::Remove(ReplicaId(2)),
                now,
                &Default::default(),
            )
            .expect("{r0, r1} is a live majority of epoch 1");
        load_from(&mut rs, now, 11..=15, 100);
        for r in &rs[..2] {
            assert_eq!(r.configuration().members(), &[ReplicaId(0), ReplicaId(1)]);
            assert_eq!(r.kv().executed(), 15, "every put at {}", r.id());
            assert_eq!(
                r.instances_in_memory(),
                0,
                "{}: collected up to {:?}",
                r.id(),
                r.collected_prefix()
            );
            assert_eq!(r.retained_bytes().iter().sum::<u64>(), 0);
        }
    }
}
