//! Membership changes (issue 15, docs/membership.md): proposing one (`Op::Reconfigure`) and
//! executing it. A change interferes with every command (`deps::ConflictKey::Cluster`), so it
//! executes at the same point of every replica's order and every replica moves to the next
//! epoch at the same point of its state. Executed in the epoch it was proposed in, it makes the
//! next one; executed later (another change got in first), it changes nothing and answers
//! `success: false`: the caller retries against the new configuration.

use std::collections::BTreeSet;

use bytes::Bytes;

use super::{Replica, Time};
use crate::core::checkpoint::Configurations;
use crate::core::command::{Command, OpResult};
use crate::core::epoch::{Change, ChangeError, Configuration, Epoch, Member};
use crate::core::ids::ReplicaId;
use crate::core::instance::Status;

/// Why a membership change was refused before it entered the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReconfigureRefusal {
    /// Another change was proposed here or is known here and has not executed: one at a time.
    #[error("another membership change is in progress; retry once it is done")]
    InFlight,
    /// The new configuration would not have a live majority (as this replica sees its peers).
    #[error(
        "the new configuration {members:?} would have no live majority (live: {live:?}); start \
         the new member first, or restore the dead ones"
    )]
    NoLiveMajority {
        members: Vec<ReplicaId>,
        live: Vec<ReplicaId>,
    },
    /// Remove of an id that is not a member.
    #[error("{0} is not a member")]
    UnknownMember(ReplicaId),
    /// Add of an id that is or was a member: ids are never reused.
    #[error("id {0} is or was a member: ids are never reused; pick a fresh one")]
    DuplicateMember(ReplicaId),
    /// The id is beyond any id the cluster can hand out.
    #[error("the id is not below the most ids ever handed out")]
    TooMany,
    /// Removing the last member.
    #[error("removing the last member would leave no configuration")]
    LastMember,
    /// An address out of bounds.
    #[error("{0}")]
    Malformed(ChangeError),
    /// This replica was removed: it proposes nothing.
    #[error("this replica was removed from the configuration")]
    Removed,
    /// This replica has not joined yet.
    #[error("replica is joining the cluster; try another replica")]
    Joining,
    /// This replica installs a snapshot first.
    #[error("replica is catching up from a peer's snapshot; try another replica")]
    CatchingUp,
    /// The proposal queue is full.
    #[error("the proposal queue is full")]
    Overloaded,
}

/// A configuration decided here, for the shell to make durable before it carries out anything
/// else of the `Ready` that holds it (see `node::Ready::configuration`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decided {
    pub configuration: Configuration,
    /// The addresses of the members a change added (epoch 0's come from `config.json`).
    pub members: Vec<Member>,
    /// Every id that is or was a member: none of them is ever added again.
    pub ever: Vec<ReplicaId>,
}

/// The new epoch a change's answer carries in `OpResult::value` (8 bytes, big-endian).
pub fn epoch_of_result(result: &OpResult) -> Option<Epoch> {
    let bytes: [u8; 8] = result.value.as_ref().try_into().ok()?;
    Some(Epoch(u64::from_be_bytes(bytes)))
}

impl Replica {
    /// This replica executed a change that removed it: it leads nothing new and takes no
    /// client request; it still answers peers on the instances of the epochs it was in.
    pub fn removed(&self) -> bool {
        self.ever.contains(&self.opts.id) && !self.configuration().is_member(self.opts.id)
    }

    /// Every id that is or was a member here.
    pub fn members_ever(&self) -> &BTreeSet<ReplicaId> {
        &self.ever
    }

    /// The addresses of the members changes added (epoch 0's are `config.json`'s).
    pub fn member_addresses(&self) -> Vec<Member> {
        self.addresses.values().cloned().collect()
    }

    /// Whether a change is proposed here or known here and not executed.
    fn change_in_flight(&self) -> bool {
        let reconfigures = |cmds: &[Command]| cmds.iter().any(|c| c.op.is_reconfigure());
        self.pending.iter().any(|c| c.op.is_reconfigure())
            || self
                .instances
                .values()
                .any(|i| i.status != Status::Executed && reconfigures(&i.commands))
    }

    /// Queues a membership change, proposed in the current epoch (see
    /// `Node::propose_reconfigure`, which refuses it first where this replica cannot propose).
    /// `knocking`: ids not yet members that asked to join lately (an added member is live if it
    /// is among them: it cannot send protocol messages before it is a member).
    pub fn propose_reconfigure(
        &mut self,
        token: super::Token,
        change: Change,
        now: Time,
        knocking: &BTreeSet<ReplicaId>,
    ) -> Result<(), ReconfigureRefusal> {
        if self.removed() {
            return Err(ReconfigureRefusal::Removed);
        }
        let current = self.configuration().clone();
        let next = change.apply(&current, &self.ever).map_err(|e| match e {
            ChangeError::IdTooLarge(_) => ReconfigureRefusal::TooMany,
            ChangeError::Duplicate(id) => ReconfigureRefusal::DuplicateMember(id),
            ChangeError::NotMember(id) => ReconfigureRefusal::UnknownMember(id),
            ChangeError::LastMember => ReconfigureRefusal::LastMember,
            other => ReconfigureRefusal::Malformed(other),
        })?;
        if self.change_in_flight() {
            return Err(ReconfigureRefusal::InFlight);
        }
        let me = self.opts.id;
        let live: Vec<ReplicaId> = next
            .members()
            .iter()
            .copied()
            .filter(|m| {
                *m == me
                    || if current.is_member(*m) {
                        !self.is_suspected(*m, now)
                    } else {
                        knocking.contains(m)
                    }
            })
            .collect();
        if live.len() < next.slow_quorum() {
            return Err(ReconfigureRefusal::NoLiveMajority {
                members: next.members().to_vec(),
                live,
            });
        }
        let cmd = Command::reconfigure(me, change, current.epoch());
        self.propose(token, cmd)
            .map_err(|_| ReconfigureRefusal::Overloaded)
    }

    /// A message of an epoch above this replica's came from `from`: ask it for the Commits this
    /// replica misses (a Watermark, answered with them), at most once per `catch_up_every`.
    pub(crate) fn behind_epoch(&mut self, now: Time, from: ReplicaId) {
        if now < self.next_catch_up {
            return;
        }
        self.next_catch_up = now + self.opts.catch_up_every;
        let msg = self.watermark();
        self.send(vec![from], msg);
    }

    /// Executes a change proposed in `epoch`: the answer to its caller.
    pub(super) fn execute_reconfigure(&mut self, change: &Change, epoch: Epoch) -> OpResult {
        let current = self.configuration().clone();
        let stale = OpResult {
            found: false,
            value: Bytes::copy_from_slice(&current.epoch().0.to_be_bytes()),
            success: false,
        };
        if epoch != current.epoch() {
            return stale;
        }
        let Ok(next) = change.apply(&current, &self.ever) else {
            // Checked where it was proposed against the same epoch, so only a replica that
            // proposed against a configuration it did not know fully gets here.
            return stale;
        };
        // The boundary first: nothing of the new epoch happens before the old one is sealed.
        self.seal_epoch(&current, &next);
        if let Change::Add(m) = change {
            self.addresses.insert(m.id, m.clone());
        }
        let adopted = self.adopt_configuration(next.clone());
        debug_assert!(adopted, "the next epoch of the current one");
        self.ever.extend(next.members().iter().copied());
        if self.removed() {
            // Proposals waiting here will never start: their clients time out and retry
            // elsewhere (the shell refuses new ones, naming the members). A change proposed
            // here too: it waited (for the boundary, say) while another replica's change that
            // removes this one executed; its admin's call times out, and `member list` says
            // what was decided (seed 3175 of `random_seeds_with_changes` kept one forever).
            self.pending.clear();
            self.pending_bytes = 0;
        }
        self.ready.configuration = Some(self.decided());
        OpResult {
            found: true,
            value: Bytes::copy_from_slice(&next.epoch().0.to_be_bytes()),
            success: true,
        }
    }

    /// The current configuration with what the shell stores beside it.
    pub fn decided(&self) -> Decided {
        let configuration = self.configuration().clone();
        Decided {
            members: self
                .addresses
                .values()
                .filter(|m| configuration.is_member(m.id))
                .cloned()
                .collect(),
            ever: self.ever.iter().copied().collect(),
            configuration,
        }
    }

    /// What a checkpoint keeps of the configurations (see `checkpoint::Configurations`).
    pub(super) fn configurations_for_checkpoint(&self) -> Configurations {
        Configurations {
            epochs: self.configurations.clone(),
            ever: self.ever.iter().copied().collect(),
            addresses: self.addresses.values().cloned().collect(),
        }
    }

    /// Takes the configurations a checkpoint went through (restore, snapshot install); an
    /// older checkpoint without them leaves epoch 0.
    pub(super) fn restore_configurations(&mut self, c: Configurations) {
        if !c.epochs.is_empty() {
            let rows = c.epochs.iter().map(|e| e.rows()).max().unwrap_or(0);
            self.configurations = c.epochs;
            self.grow_rows(rows);
        }
        self.ever.extend(c.ever);
        for m in c.addresses {
            self.addresses.insert(m.id, m);
        }
    }

    /// Takes a configuration the shell kept (see `node::Restored::configuration`) if it is
    /// newer than what the log rebuilt: the next epoch only (the log holds every change before
    /// the last; a record that skips one is refused, keeping what the log says).
    pub(crate) fn adopt_decided(&mut self, decided: Decided) -> bool {
        self.ever.extend(decided.ever.iter().copied());
        for m in &decided.members {
            self.addresses.entry(m.id).or_insert_with(|| m.clone());
        }
        if decided.configuration.epoch() <= self.configuration().epoch() {
            return false;
        }
        let (current, next) = (self.configuration().clone(), decided.configuration.clone());
        self.seal_epoch(&current, &next);
        self.ever.extend(next.members().iter().copied());
        self.adopt_configuration(next)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;
    use std::time::Duration;

    use super::*;
    use crate::core::command::Op;
    use crate::core::ids::{ClientId, RequestId};
    use crate::core::replica::{Options, Reply, Token};
    use crate::core::testkit::Network;

    fn cluster(n: usize) -> Vec<Replica> {
        (0..n as u32)
            .map(|i| Replica::new(Options::new(ReplicaId(i), n)))
            .collect()
    }

    fn put(client: u64, key: &'static str) -> Command {
        Command::new(
            ClientId(client),
            RequestId(1),
            Op::Put {
                key: Bytes::from_static(key.as_bytes()),
                value: Bytes::from_static(b"v"),
            },
        )
    }

    fn ids(v: &[u32]) -> Vec<ReplicaId> {
        v.iter().copied().map(ReplicaId).collect()
    }

    fn member(id: u32) -> Member {
        Member {
            id: ReplicaId(id),
            peer_addr: format!("10.0.0.{id}:7000"),
            client_addr: format!("10.0.0.{id}:8000"),
        }
    }

    /// Delivers every message until quiet (except to or from the replicas in `down`, and to
    /// ids with no replica here); returns the replies by token, with every configuration
    /// each replica decided.
    fn settle(
        rs: &mut [Replica],
        now: Time,
        down: &[u32],
    ) -> (Vec<(Token, OpResult)>, Vec<Vec<Decided>>) {
        let mut net = Network::new(rs.len() + 8);
        let mut replies = Vec::new();
        let mut decided = vec![Vec::new(); rs.len()];
        for _ in 0..1000 {
            for r in rs.iter_mut() {
                r.flush(now);
                let mut ready = r.take_ready();
                for Reply { token, result } in ready.replies.drain(..) {
                    replies.push((token, result.expect("no reply error here")));
                }
                if let Some(d) = ready.configuration.take() {
                    decided[r.id().index()].push(d);
                }
                if !down.contains(&r.id().0) {
                    net.send(r.id(), ready.messages);
                }
            }
            if net.is_empty() {
                return (replies, decided);
            }
            for e in net.drain() {
                if e.to.index() < rs.len() && !down.contains(&e.to.0) {
                    rs[e.to.index()].handle(now, e.from, e.msg);
                }
            }
        }
        panic!("messages kept flowing");
    }

    const NOW: Time = Duration::ZERO;

    #[test]
    fn removing_a_live_member_makes_the_next_epoch_everywhere_and_the_removed_one_stops() {
        let mut rs = cluster(3);
        let none = BTreeSet::new();
        rs[0]
            .propose_reconfigure(7, Change::Remove(ReplicaId(2)), NOW, &none)
            .expect("a live majority of {0,1}");
        let (replies, decided) = settle(&mut rs, NOW, &[]);
        assert_eq!(replies.len(), 1);
        assert_eq!(replies[0].0, 7);
        assert!(replies[0].1.success);
        assert_eq!(epoch_of_result(&replies[0].1), Some(Epoch(1)));
        for (r, d) in rs.iter().zip(&decided) {
            assert_eq!(r.configuration().epoch(), Epoch(1), "{}", r.id());
            assert_eq!(r.configuration().members(), ids(&[0, 1]).as_slice());
            assert_eq!(d.len(), 1, "handed to the shell once at {}", r.id());
            assert_eq!(d[0].configuration, *r.configuration());
            assert_eq!(d[0].ever, ids(&[0, 1, 2]));
            assert!(
                r.configuration_of(Epoch(0)).is_some(),
                "old epochs stay known"
            );
        }
        assert!(rs[2].removed() && !rs[0].removed() && !rs[1].removed());
        // A new instance belongs to epoch 1 and asks only its members: r2 takes no part.
        rs[0].propose(8, put(1, "a")).expect("room");
        rs[2]
            .propose(9, put(2, "b"))
            .expect("queued, never started");
        rs[0].flush(NOW);
        let ready = rs[0].take_ready();
        let started: Vec<_> = ready.persist.iter().map(|(id, i)| (*id, i.epoch)).collect();
        assert_eq!(started.len(), 1);
        assert_eq!(started[0].1, Epoch(1));
        for out in &ready.messages {
            assert!(
                !out.to.contains(&ReplicaId(2))
                    || !matches!(out.msg, crate::core::message::Message::PreAccept { .. })
            );
        }
        rs[2].flush(NOW);
        assert!(
            rs[2].take_ready().persist.is_empty(),
            "a removed replica leads nothing"
        );
        let mut net = Network::new(3);
        net.send(ReplicaId(0), ready.messages);
        for e in net.drain() {
            rs[e.to.index()].handle(NOW, e.from, e.msg);
        }
        let (replies, _) = settle(&mut rs, NOW, &[2]);
        assert_eq!(replies.iter().map(|r| r.0).collect::<Vec<_>>(), vec![8]);
        assert_eq!(rs[0].kv().digest(), rs[1].kv().digest());
    }

    /// A restart gives the configurations back: from the checkpoint (the change collected
    /// with it) or from executing the log again; an older checkpoint without them is epoch 0.
    #[test]
    fn a_restart_keeps_every_epoch_from_the_checkpoint_or_the_log() {
        let mut rs = cluster(3);
        let knocking: BTreeSet<ReplicaId> = [ReplicaId(3)].into();
        rs[0]
            .propose_reconfigure(1, Change::Add(member(3)), NOW, &knocking)
            .expect("proposed");
        settle(&mut rs, NOW, &[]);
        rs[0]
            .propose_reconfigure(2, Change::Remove(ReplicaId(2)), NOW, &BTreeSet::new())
            .expect("{0, 1, 3}: 0 and 1 alone are a live majority");
        settle(&mut rs, NOW, &[]);
        let want = rs[1].configuration().clone();
        assert_eq!(want.members(), ids(&[0, 1, 3]).as_slice());
        let (encoded, records) = rs[1].checkpoint();
        let cp = crate::core::checkpoint::Checkpoint::decode(&encoded, 3).expect("decodes");
        assert_eq!(cp.configurations.epochs.len(), 3);
        assert_eq!(cp.configurations.addresses, vec![member(3)]);
        let from_checkpoint =
            Replica::restore_from(rs[1].options().clone(), NOW, Some(cp), Vec::new());
        let from_log = Replica::restore(rs[1].options().clone(), NOW, records);
        for back in [&from_checkpoint, &from_log] {
            assert_eq!(*back.configuration(), want);
            assert_eq!(
                back.configuration_of(Epoch(0)),
                rs[1].configuration_of(Epoch(0))
            );
            assert_eq!(back.members_ever(), rs[1].members_ever());
            assert_eq!(back.member_addresses(), vec![member(3)]);
        }
        // A removed replica restarted from its log is still removed.
        let (_, records) = rs[2].checkpoint();
        assert!(Replica::restore(rs[2].options().clone(), NOW, records).removed());
    }

    /// Two changes proposed in epoch 0 at two replicas: one executes first everywhere and
    /// makes epoch 1, the other executes as stale (`success: false`) everywhere alike.
    #[test]
    fn of_two_concurrent_changes_the_second_is_stale_everywhere() {
        let mut rs = cluster(3);
        let none = BTreeSet::new();
        rs[0]
            .propose_reconfigure(1, Change::Remove(ReplicaId(2)), NOW, &none)
            .expect("proposed");
        rs[1]
            .propose_reconfigure(2, Change::Add(member(3)), NOW, &none)
            .expect("proposed");
        let (mut replies, _) = settle(&mut rs, NOW, &[]);
        replies.sort_by_key(|r| r.0);
        assert_eq!(replies.len(), 2);
        assert_eq!(
            replies.iter().filter(|r| r.1.success).count(),
            1,
            "exactly one change made epoch 1: {replies:?}"
        );
        let first = rs[0].configuration().clone();
        assert_eq!(first.epoch(), Epoch(1));
        for r in &rs {
            assert_eq!(*r.configuration(), first, "one order at {}", r.id());
        }
    }

    #[test]
    fn an_added_member_counts_in_the_new_quorums_and_its_addresses_are_known() {
        let mut rs = cluster(3);
        let knocking: BTreeSet<ReplicaId> = [ReplicaId(3)].into();
        rs[1]
            .propose_reconfigure(4, Change::Add(member(3)), NOW, &knocking)
            .expect("proposed");
        let (replies, decided) = settle(&mut rs, NOW, &[]);
        assert_eq!(epoch_of_result(&replies[0].1), Some(Epoch(1)));
        assert_eq!(decided[0][0].members, vec![member(3)]);
        for r in &rs {
            assert_eq!(r.configuration().members(), ids(&[0, 1, 2, 3]).as_slice());
            assert_eq!(r.rows(), 4);
        }
        // Four members: fast and slow quorums of 3; replica 3 does not run here, and the
        // three others still commit (3 of 4).
        rs[0].propose(5, put(1, "k")).expect("room");
        let (replies, _) = settle(&mut rs, NOW, &[]);
        assert_eq!(replies.iter().map(|r| r.0).collect::<Vec<_>>(), vec![5]);
        let id = InstanceIdExt::own(&rs[0]);
        assert_eq!(rs[0].instance(id).map(|i| i.epoch), Some(Epoch(1)));
        // Two of four are not a quorum: with r2 down too, nothing commits.
        rs[0].propose(6, put(2, "k")).expect("room");
        let (replies, _) = settle(&mut rs, NOW, &[2]);
        assert!(replies.is_empty(), "2 of 4 members are no quorum");
    }

    /// The latest instance of replica `r`'s own row.
    trait InstanceIdExt {
        fn own(&self) -> crate::core::ids::InstanceId;
    }
    impl InstanceIdExt for Replica {
        fn own(&self) -> crate::core::ids::InstanceId {
            crate::core::ids::InstanceId::new(self.id(), self.next_slot - 1)
        }
    }

    #[test]
    fn changes_are_refused_before_consensus_when_they_cannot_apply() {
        let mut rs = cluster(3);
        let none = BTreeSet::new();
        let r = &mut rs[0];
        assert_eq!(
            r.propose_reconfigure(1, Change::Remove(ReplicaId(5)), NOW, &none),
            Err(ReconfigureRefusal::UnknownMember(ReplicaId(5)))
        );
        assert_eq!(
            r.propose_reconfigure(1, Change::Add(member(1)), NOW, &none),
            Err(ReconfigureRefusal::DuplicateMember(ReplicaId(1)))
        );
        assert_eq!(
            r.propose_reconfigure(1, Change::Add(member(64)), NOW, &none),
            Err(ReconfigureRefusal::TooMany)
        );
        let mut bad = member(3);
        bad.peer_addr = "x".repeat(crate::core::limits::ADDRESS_BYTES_MAX + 1);
        assert!(matches!(
            r.propose_reconfigure(1, Change::Add(bad), NOW, &none),
            Err(ReconfigureRefusal::Malformed(ChangeError::Address(_)))
        ));
        // Nobody heard from for longer than `suspect_after`: {0, 1} has no live majority.
        let late = r.options().suspect_after * 2;
        assert_eq!(
            r.propose_reconfigure(1, Change::Remove(ReplicaId(2)), late, &none),
            Err(ReconfigureRefusal::NoLiveMajority {
                members: ids(&[0, 1]),
                live: ids(&[0]),
            })
        );
        r.propose_reconfigure(1, Change::Remove(ReplicaId(2)), NOW, &none)
            .expect("proposed");
        assert_eq!(
            r.propose_reconfigure(2, Change::Remove(ReplicaId(1)), NOW, &none),
            Err(ReconfigureRefusal::InFlight),
            "one change at a time"
        );
        settle(&mut rs, NOW, &[]);
        // Ids are never reused, and the last member stays.
        assert_eq!(
            rs[0].propose_reconfigure(3, Change::Add(member(2)), NOW, &none),
            Err(ReconfigureRefusal::DuplicateMember(ReplicaId(2)))
        );
        assert_eq!(
            rs[2].propose_reconfigure(3, Change::Remove(ReplicaId(0)), NOW, &none),
            Err(ReconfigureRefusal::Removed)
        );
        rs[0]
            .propose_reconfigure(3, Change::Remove(ReplicaId(1)), NOW, &none)
            .expect("{0} alone is a live majority of itself");
        settle(&mut rs, NOW, &[]);
        assert_eq!(rs[0].configuration().members(), ids(&[0]).as_slice());
        assert_eq!(
            rs[0].propose_reconfigure(4, Change::Remove(ReplicaId(0)), NOW, &none),
            Err(ReconfigureRefusal::LastMember)
        );
    }
}
