//! Sealing an old epoch, learning its boundary, and covering it (issue 15; the long form is
//! "The epoch boundary" in `docs/membership.md`).
//!
//! The danger: an old-epoch instance `y` and a new-epoch instance `x` that interfere may be
//! decided by quorums of two configurations that do not meet, so neither depends on the other
//! and replicas may execute them in two orders. Three rules prevent it:
//!
//! 1. **Sealing** (`seal_epoch`, when a replica executes the change that ends epoch `e`): it
//!    records, durably (`Ready::sealed`, given back at start), `sealed[r]`: one past the highest
//!    slot of row `r` of an epoch-`e` instance it holds (or held: committed, collected, its own
//!    next slot). From then on it votes on no epoch-`e` instance `(r, k)` with
//!    `k >= sealed[r]`: no PreAcceptOk, no AcceptOk for a command, no Validate record; it
//!    answers a Nack instead (`refuse_above_seal`). It still answers Recover and accepts
//!    no-ops, so every old instance can finish.
//! 2. **The boundary** (`SealQuery` / `Sealed`): before it starts any instance of `e+1`
//!    (`may_start_instances`) the replica learns the seals of a majority `S` of `e`'s members;
//!    `B[r]` is their maximum.
//! 3. **Covering**: every epoch-`e+1` instance's deps, initial ones at the leader and those any
//!    replica computes when it votes, cover every row `r` up to `B[r]` (the rejoin horizons'
//!    rule, `cover_up_to`), until this replica knows row `r` committed up to `B[r]`.
//!
//! *Why it is safe.* An epoch-`e` instance `y = (r, k)` that commits with a command was voted for
//! by a majority of `e` (a fast quorum is one too), which meets `S` in some `s`. If `s` voted
//! before sealing, it held `y` then, so `k < sealed_s[r] <= B[r]`; after sealing it refused unless
//! `k < sealed_s[r]`. So `k < B[r]`: every new-epoch instance `x` depends on `y` (through the
//! cover while `y` is not known committed here, through the conflict index once it is, as for
//! any committed instance), and the two are never left unordered. Instances of `e` above `B` end
//! as no-ops; their leaders propose the commands again (`commands_changed`), in `e+1` once they
//! executed the change, and the session table absorbs a command that also survived elsewhere.
//!
//! *Retirement.* Row `r`'s cover stops once this replica knows the row committed up to `B[r]`:
//! from then on its conflict index holds every instance there with its commands, so the deps it
//! computes name the interfering ones anyway. Each replica decides that for itself; different
//! replicas may also learn different `B`s (other majorities): each satisfies the claim above.
//!
//! *Why only instances held, not slots named in deps.* The claim needs `sealed_s` to exceed every
//! instance `s` voted on, which it held. Slots named only in deps may be of the new epoch (a
//! replica that sealed earlier votes on old instances with new ones in their deps): a boundary
//! above a row's first new-epoch slot would make that row's leader's new instances depend on
//! themselves. At sealing a replica holds no instance of `e+1` (it refused every message of an
//! epoch it had not learnt).
//!
//! *Liveness.* A replica that has not executed the change yet answers a `SealQuery` with its
//! Watermark, so the asker sends it the Commits it lacks (the change among them); queries are
//! resent with a doubling interval, capped at `retry_max`. A recovery that would accept a
//! command above a replica's seal gets a Nack from it: such an instance can only have been
//! decided by replicas whose seals lie above it, so it finishes once enough of those answer.
//!
//! *A known liveness gap* (seed 1459 of `random_seeds_with_removals`): when the old epoch loses
//! `f` members, an instance `y` above the survivors' seals but held by one of them (pre-accepted
//! before it sealed) may be stuck. Epoch 0 = {r0..r4}; r1 dies; r4 leads `y` = 4.13, r0
//! pre-accepts it, then everyone but r1 seals and r2, r3 refuse `y`; r4 dies. `y` may have
//! committed on the fast path with {r4, r0, r1} (the survivors cannot tell r1 never heard of
//! it), so recovery must not make it a no-op; but its Accept needs r2 or r3, which refuse above
//! their seals. Letting a sealed replica vote below the boundary *it learnt* (not only below its
//! own seal) is not safe in general: replicas learn `B` from different majorities, and another
//! replica's `B'` from {r1, r2, r3} (had r1 sealed without `y`) would not cover `y`, whose
//! commit would then rest on r2's post-seal vote. It is safe only when every majority of the old
//! epoch holds a member whose seal lies above `y` (or that holds `y` and has not sealed), which
//! the survivors here cannot know. Left open: the test stays ignored.

use std::time::Duration;

use super::{Replica, Time};
use crate::core::deps::Deps;
use crate::core::epoch::{Configuration, Epoch};
use crate::core::ids::{Ballot, InstanceId, ReplicaId, SLOT_LIMIT};
use crate::core::limits::SEALS_KEPT_MAX;
use crate::core::message::Message;

/// A replica's seal of an epoch: per row, one past the highest slot of an instance of that
/// epoch it held when it left the epoch. What the shell stores (see `Ready::sealed`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seal {
    pub epoch: Epoch,
    pub ends: Vec<u64>,
}

impl Seal {
    /// Whether a vote on `id` (an instance of this seal's epoch) is refused: at or above the
    /// row's end (a row the seal lacks had no instance of the epoch here).
    fn refuses(&self, id: InstanceId) -> bool {
        id.slot >= self.ends.get(id.replica.index()).copied().unwrap_or(0)
    }
}

/// The seals this replica keeps and the boundary it learns.
#[derive(Debug, Default)]
pub(super) struct Seals {
    /// Oldest first, epochs increasing, at most `SEALS_KEPT_MAX`.
    kept: Vec<Seal>,
    /// The boundary of the last epoch this replica left.
    boundary: Option<Boundary>,
}

/// Learning (then knowing) the boundary of an epoch this replica left.
#[derive(Debug)]
struct Boundary {
    /// The epoch left: its members are asked.
    epoch: Epoch,
    /// Members' seals received (this replica's own first, if it is a member).
    answers: Vec<(ReplicaId, Vec<u64>)>,
    /// `B`: per row, the maximum of a majority's seals; `None` while learnt.
    known: Option<Vec<u64>>,
    /// When to ask again those that did not answer (`None`: at the next tick, which sets it).
    ask_at: Option<Time>,
    /// The wait before the next query after that (doubles, capped at `retry_max`).
    backoff: Duration,
}

impl Seals {
    /// The seal that applies to an instance of `epoch`: `Some(None)` if the epoch is older than
    /// every seal kept (refuse all but no-ops), `None` if none applies (a current epoch).
    fn of(&self, epoch: Epoch) -> Option<Option<&Seal>> {
        let oldest = self.kept.first()?;
        if epoch < oldest.epoch {
            return Some(None);
        }
        self.kept.iter().find(|s| s.epoch == epoch).map(Some)
    }
}

impl Replica {
    /// This replica executed the change from `old` to `new`: seals `old`'s epoch (if it is a
    /// member of it: only members vote there) and starts learning its boundary. New instances
    /// wait for the boundary (`may_start_instances`). Called once per change, by its execution
    /// (core15's `Reconfigure`; the tests call it directly until then).
    #[allow(dead_code)]
    pub(crate) fn seal_epoch(&mut self, old: &Configuration, new: &Configuration) {
        debug_assert!(
            new.epoch() > old.epoch(),
            "sealing {old} for {new}, not a later epoch"
        );
        let me = self.opts.id;
        let epoch = old.epoch();
        let mut answers = Vec::new();
        if old.is_member(me) {
            let ends = match self.seals.kept.iter().find(|s| s.epoch == epoch) {
                Some(seal) => seal.ends.clone(), // sealed before a restart: keep it
                None => {
                    let ends = self.reach_of(epoch);
                    self.seals.kept.push(Seal {
                        epoch,
                        ends: ends.clone(),
                    });
                    if self.seals.kept.len() > SEALS_KEPT_MAX {
                        self.seals.kept.remove(0);
                    }
                    self.ready.sealed = Some(self.seals.kept.clone());
                    ends
                }
            };
            answers.push((me, ends));
        }
        self.seals.boundary = Some(Boundary {
            epoch,
            answers,
            known: None,
            ask_at: None,
            backoff: self.opts.retry,
        });
        self.settle_boundary();
        if self
            .seals
            .boundary
            .as_ref()
            .is_some_and(|b| b.known.is_none())
        {
            self.ask_seals();
        }
    }

    /// Whether this replica may start instances: it knows the boundary of the last epoch it
    /// left (or never left one). While false, proposals wait (`flush` starts none).
    pub(crate) fn may_start_instances(&self) -> bool {
        self.seals
            .boundary
            .as_ref()
            .is_none_or(|b| b.known.is_some())
    }

    /// The boundary of the last epoch left, once known: per row, one past the highest slot an
    /// instance of that epoch can have committed a command at.
    pub fn boundary(&self) -> Option<(Epoch, &[u64])> {
        let b = self.seals.boundary.as_ref()?;
        Some((b.epoch, b.known.as_deref()?))
    }

    /// The seals kept, oldest first.
    pub fn seals(&self) -> &[Seal] {
        &self.seals.kept
    }

    /// Takes back the seals stored before a restart (`node::Restored::sealed`): votes above
    /// them stay refused, and the boundary of the newest is learnt again (it is not stored).
    pub fn restore_seals(&mut self, mut seals: Vec<Seal>) {
        seals.sort_by_key(|s| s.epoch);
        seals.dedup_by_key(|s| s.epoch);
        let drop = seals.len().saturating_sub(SEALS_KEPT_MAX);
        seals.drain(..drop);
        let Some(newest) = seals.last() else {
            return;
        };
        let me = self.opts.id;
        // A later boundary being learnt already (of an epoch this replica was added in, see
        // `learn_last_boundary`) stays.
        if self
            .seals
            .boundary
            .as_ref()
            .is_none_or(|b| b.epoch <= newest.epoch)
        {
            self.seals.boundary = Some(Boundary {
                epoch: newest.epoch,
                answers: vec![(me, newest.ends.clone())],
                known: None,
                ask_at: None,
                backoff: self.opts.retry,
            });
        }
        self.seals.kept = seals;
        self.settle_boundary();
    }

    /// Starts learning the boundary of the epoch before the current one if nothing here learns
    /// it yet: the case of a member that change added (restored from a peer's snapshot, or
    /// from its own disk after a restart). It never was a member of that epoch, so it holds no
    /// seal of it and never voted there; but the new epoch's instances it leads must still
    /// cover `B` (rule 3), so it leads none before it learnt `B` from a majority of that
    /// epoch's members. It votes meanwhile: the leaders' initial deps carry the cover.
    pub(crate) fn learn_last_boundary(&mut self) {
        let current = self.configuration().epoch();
        let Some(left) = current.0.checked_sub(1).map(Epoch) else {
            return; // epoch 0: no boundary
        };
        if self
            .seals
            .boundary
            .as_ref()
            .is_some_and(|b| b.epoch >= left)
            || self.configuration_of(left).is_none()
        {
            return;
        }
        self.seals.boundary = Some(Boundary {
            epoch: left,
            answers: Vec::new(),
            known: None,
            ask_at: None,
            backoff: self.opts.retry,
        });
        self.ask_seals();
    }

    /// After a peer's snapshot brought this replica past a change it never executed (it was
    /// left behind, `Node::install_caught_up`): if it was a member of the epoch that change
    /// ended and holds no seal of it, it seals it now with what it holds. Sealing late is as
    /// safe as sealing when executing the change: a seal bounds only the votes given from then
    /// on, and every vote given before is for an instance held here (catching up keeps them).
    /// Without it, that epoch's other members could wait forever for its `Sealed`: they learn
    /// `B` from a majority of the epoch, and it answers a `SealQuery` only with a seal (seed
    /// 758 of `random_seeds_with_changes`: the epoch's two members, one of them this).
    pub(crate) fn seal_missed_boundary(&mut self) {
        let current = self.configuration().clone();
        let Some(left) = current.epoch().0.checked_sub(1).map(Epoch) else {
            return; // epoch 0: no boundary
        };
        let Some(old) = self.configuration_of(left).cloned() else {
            return;
        };
        if !old.is_member(self.opts.id) || self.seals.kept.iter().any(|s| s.epoch == left) {
            return;
        }
        self.seal_epoch(&old, &current);
    }

    /// Per row, one past the highest slot of an instance of `epoch` (or older) held here, or
    /// held once (committed, collected; this replica's own next slot).
    #[allow(dead_code)]
    fn reach_of(&self, epoch: Epoch) -> Vec<u64> {
        let mut ends = self.committed_end.clone();
        for (end, gc) in ends.iter_mut().zip(&self.gc_prefix) {
            *end = (*end).max(*gc);
        }
        let me = self.opts.id;
        ends[me] = ends[me].max(self.next_slot);
        for (id, inst) in &self.instances {
            if inst.epoch <= epoch {
                ends[id.replica] = ends[id.replica].max(id.slot + 1);
            }
        }
        ends.into_vec()
    }

    /// Whether this replica refuses to vote on `id`, an instance of `epoch`, with a command:
    /// the epoch is sealed here and `id` lies above the seal (see the module doc).
    pub(super) fn above_seal(&self, id: InstanceId, epoch: Epoch) -> bool {
        if self.opts.sabotage.vote_above_seal() {
            return false;
        }
        match self.seals.of(epoch) {
            None => false,
            Some(None) => true,
            Some(Some(seal)) => seal.refuses(id),
        }
    }

    /// The epoch `id` belongs to as far as this replica knows: its own record's, else `named`
    /// (what the message says).
    pub(super) fn epoch_of(&self, id: InstanceId, named: Epoch) -> Epoch {
        self.instances.get(&id).map_or(named, |i| i.epoch)
    }

    /// Refuses a vote above this replica's seal: a Nack at a ballot above the one asked, so the
    /// leader (or recoverer) stops and the instance ends by recovery (a no-op, unless enough
    /// replicas whose seals lie above it decide otherwise). The promise is not recorded: this
    /// replica votes on the instance's commands at no ballot anyway.
    pub(super) fn refuse_above_seal(&mut self, from: ReplicaId, id: InstanceId, ballot: Ballot) {
        self.ready.votes_refused_above_seal += 1;
        let Some(round) = ballot.round.checked_add(1).filter(|r| *r < u32::MAX) else {
            return; // a top-round ballot gets silence: the receiver would refuse the Nack
        };
        let promised = Ballot {
            round,
            replica: self.opts.id,
        };
        self.nack(from, id, promised);
    }

    /// Covers, in the deps of an instance of `epoch`, the boundary of an older epoch this
    /// replica left: `B` once known, its own seal while it learns `B` (it only votes then: it
    /// starts nothing before `B` is known).
    pub(super) fn add_boundary_deps(&self, epoch: Epoch, deps: &mut Deps) {
        if self.opts.sabotage.omit_boundary_deps() {
            return;
        }
        let Some(b) = &self.seals.boundary else {
            return;
        };
        if epoch <= b.epoch {
            return; // an instance of the epoch left, or older: no boundary to cover
        }
        let me = self.opts.id;
        let ends = b.known.as_deref().or_else(|| {
            b.answers
                .iter()
                .find(|(r, _)| *r == me)
                .map(|(_, ends)| ends.as_slice())
        });
        if let Some(ends) = ends {
            self.cover_up_to(ends, deps);
        }
    }

    /// A peer asks for this replica's seal of `epoch`.
    pub(super) fn handle_seal_query(&mut self, from: ReplicaId, epoch: Epoch) {
        if let Some(seal) = self.seals.kept.iter().find(|s| s.epoch == epoch) {
            let msg = Message::Sealed {
                epoch,
                ends: seal.ends.clone(),
            };
            self.send(vec![from], msg);
        } else if epoch >= self.configuration().epoch() {
            // Not left yet here: the asker executed a change this replica has not. Its
            // Watermark makes the asker send the Commits it lacks; it seals once it executes
            // the change, and answers the next query.
            let msg = self.watermark();
            self.send(vec![from], msg);
        }
        // An epoch whose seal was dropped long ago: that boundary was learnt long ago too.
    }

    /// A peer's seal of `epoch`: counted towards the boundary if it is what is being learnt and
    /// the peer a member of the epoch.
    pub(super) fn handle_sealed(&mut self, from: ReplicaId, epoch: Epoch, ends: Vec<u64>) {
        let member = self
            .configuration_of(epoch)
            .is_some_and(|c| c.is_member(from));
        let Some(b) = &mut self.seals.boundary else {
            return;
        };
        if b.epoch != epoch || b.known.is_some() || !member {
            return; // not learnt here (now), or not a member's: no part of the boundary
        }
        if b.answers.iter().any(|(r, _)| *r == from) {
            return; // a duplicate
        }
        b.answers.push((from, ends));
        self.settle_boundary();
    }

    /// Resends the query to the members that did not answer, when due (see the module doc).
    pub(super) fn tick_boundary(&mut self, now: Time) {
        let retry_max = self.opts.retry_max;
        let Some(b) = &mut self.seals.boundary else {
            return;
        };
        if b.known.is_some() {
            return;
        }
        match b.ask_at {
            None => b.ask_at = Some(now + b.backoff),
            Some(at) if now >= at => {
                b.backoff = (b.backoff * 2).min(retry_max);
                b.ask_at = Some(now + b.backoff);
                self.ask_seals();
            }
            Some(_) => {}
        }
    }

    /// Asks the members of the epoch left that have not answered for their seals.
    fn ask_seals(&mut self) {
        let Some(b) = &self.seals.boundary else {
            return;
        };
        let Some(config) = self.configuration_of(b.epoch) else {
            return; // an epoch not known here (a restart before its configuration came back)
        };
        let me = self.opts.id;
        let asked: Vec<ReplicaId> = config
            .members()
            .iter()
            .copied()
            .filter(|m| *m != me && !b.answers.iter().any(|(r, _)| r == m))
            .collect();
        let epoch = b.epoch;
        if !asked.is_empty() {
            self.send(asked, Message::SealQuery { epoch });
        }
    }

    /// Takes the boundary as known once a majority of the epoch's members answered.
    fn settle_boundary(&mut self) {
        let rows = self.rows();
        let Some(epoch) = self.seals.boundary.as_ref().map(|b| b.epoch) else {
            return;
        };
        let Some(majority) = self.configuration_of(epoch).map(|c| c.slow_quorum()) else {
            return;
        };
        let Some(b) = &mut self.seals.boundary else {
            return;
        };
        if b.known.is_some() || b.answers.len() < majority {
            return;
        }
        let mut bound = vec![0; rows];
        for (_, ends) in &b.answers {
            for (row, end) in ends.iter().enumerate().take(rows) {
                bound[row] = bound[row].max((*end).min(SLOT_LIMIT));
            }
        }
        b.known = Some(bound);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;

    use super::super::tests::settle;
    use super::super::{Options, Outgoing, Replica, Time};
    use super::Seal;
    use crate::core::command::{Command, Op};
    use crate::core::deps::Deps;
    use crate::core::epoch::{Configuration, Epoch};
    use crate::core::ids::{Ballot, ClientId, InstanceId, ReplicaId, RequestId};
    use crate::core::membership::Membership;
    use crate::core::message::{Commands, Message};
    use crate::core::node::{Node, Restored};

    const T: Time = Duration::ZERO;

    fn r(i: u32) -> ReplicaId {
        ReplicaId(i)
    }

    fn id(row: u32, slot: u64) -> InstanceId {
        InstanceId::new(r(row), slot)
    }

    fn cluster(n: usize) -> Vec<Replica> {
        (0..n as u32)
            .map(|i| Replica::new(Options::new(r(i), n)))
            .collect()
    }

    fn put(client: u64, key: &'static str) -> Command {
        Command {
            client: ClientId(client),
            request: RequestId(1),
            op: Op::Put {
                key: Bytes::from_static(key.as_bytes()),
                value: Bytes::from_static(b"v"),
            },
            time_ms: 0,
            retry: false,
        }
    }

    fn commands(client: u64, key: &'static str) -> Commands {
        Arc::new(vec![put(client, key)])
    }

    fn ids(v: &[u32]) -> Vec<ReplicaId> {
        v.iter().copied().map(ReplicaId).collect()
    }

    /// `replica` executes the change from epoch 0 (ids 0..3) to `next` (epoch 1): it adopts it
    /// and seals epoch 0, as executing a `Reconfigure` does.
    fn change(replica: &mut Replica, next: &[u32]) {
        let old = Configuration::initial(3);
        let new = Configuration::new(Epoch(1), ids(next)).expect("valid");
        assert!(replica.adopt_configuration(new.clone()));
        replica.seal_epoch(&old, &new);
    }

    /// Hands `out` (sent by `from`) to the replicas of `rs` that `pass` lets through; what goes
    /// to an id beyond `rs` (a replica simulated by hand) comes back.
    fn deliver(
        rs: &mut [Replica],
        from: ReplicaId,
        out: Vec<Outgoing>,
        pass: impl Fn(ReplicaId, &Message) -> bool,
    ) -> Vec<(ReplicaId, Message)> {
        let mut beyond = Vec::new();
        for o in out {
            for to in o.to {
                if to.index() >= rs.len() {
                    beyond.push((to, o.msg.clone()));
                } else if pass(to, &o.msg) {
                    rs[to.index()].handle(T, from, o.msg.clone());
                }
            }
        }
        beyond
    }

    fn pre_accept(instance: InstanceId, epoch: u64, cmds: Commands) -> Message {
        Message::PreAccept {
            instance,
            epoch: Epoch(epoch),
            ballot: Ballot::initial(instance.replica),
            commands: cmds,
            deps: Deps::new(),
        }
    }

    fn accept(instance: InstanceId, ballot: Ballot, cmds: Commands) -> Message {
        Message::Accept {
            instance,
            epoch: Epoch(0),
            ballot,
            commands: cmds,
            deps: Deps::new(),
        }
    }

    /// The one message `replica` answered with, to whom.
    fn answer(replica: &mut Replica) -> (Vec<ReplicaId>, Message) {
        let mut out = replica.take_ready().messages;
        assert_eq!(out.len(), 1, "one answer: {out:?}");
        let o = out.remove(0);
        (o.to, o.msg)
    }

    /// Whether two committed instances are ordered by their deps (one covers the other): the
    /// simulator's Visibility check for one pair of interfering commands.
    fn ordered(a: (InstanceId, &Deps), b: (InstanceId, &Deps)) -> bool {
        a.1.covers(b.0) || b.1.covers(a.0)
    }

    #[test]
    fn a_sealed_replica_refuses_votes_above_its_seal_but_answers_recover_and_no_ops() {
        let mut rs = cluster(3);
        // r0 leads 0.0; only r1 hears its PreAccept: r1 holds 0.0 when it seals.
        rs[0].propose(1, put(1, "a")).expect("room");
        rs[0].flush(T);
        let out = rs[0].take_ready().messages;
        deliver(&mut rs, r(0), out, |to, _| to == r(1));
        let _ = rs[1].take_ready();
        change(&mut rs[1], &[0, 1, 2]);
        let ready = rs[1].take_ready();
        let seal = Seal {
            epoch: Epoch(0),
            ends: vec![1, 0, 0],
        };
        assert_eq!(ready.sealed, Some(vec![seal]), "the seal goes to the disk");
        assert!(
            !rs[1].may_start_instances(),
            "the boundary is not known yet"
        );

        // Above the seal: a PreAccept of 0.1 gets a Nack above its ballot, and leaves nothing.
        rs[1].handle(T, r(0), pre_accept(id(0, 1), 0, commands(2, "b")));
        let nack = Message::Nack {
            instance: id(0, 1),
            promised: Ballot {
                round: 1,
                replica: r(1),
            },
        };
        assert_eq!(answer(&mut rs[1]), (vec![r(0)], nack));
        assert!(rs[1].instance(id(0, 1)).is_none());
        // A recoverer's Accept of a command there too (a Nack above its ballot)...
        let b = Ballot {
            round: 1,
            replica: r(2),
        };
        rs[1].handle(T, r(2), accept(id(0, 1), b, commands(2, "b")));
        assert!(matches!(
            answer(&mut rs[1]),
            (_, Message::Nack { promised, .. }) if promised.round == 2
        ));
        // ... but a no-op there is accepted: old instances always finish.
        rs[1].handle(T, r(2), accept(id(0, 1), b, Commands::default()));
        assert_eq!(
            answer(&mut rs[1]),
            (
                vec![r(2)],
                Message::AcceptOk {
                    instance: id(0, 1),
                    ballot: b
                }
            )
        );
        // Recover is answered above the seal; the Validate that follows (a command) is not.
        rs[1].handle(
            T,
            r(2),
            Message::Recover {
                instance: id(2, 0),
                epoch: Epoch(0),
                ballot: b,
            },
        );
        assert!(matches!(answer(&mut rs[1]), (_, Message::RecoverOk { .. })));
        rs[1].handle(
            T,
            r(2),
            Message::Validate {
                instance: id(2, 0),
                ballot: b,
                commands: commands(3, "c"),
                deps: Deps::new(),
            },
        );
        assert!(matches!(answer(&mut rs[1]), (_, Message::Nack { .. })));
        assert!(rs[1]
            .instance(id(2, 0))
            .expect("promised")
            .commands
            .is_empty());
        // Below the seal votes go on: 0.0's Accept.
        rs[1].handle(
            T,
            r(0),
            accept(id(0, 0), Ballot::initial(r(0)), commands(1, "a")),
        );
        assert!(matches!(answer(&mut rs[1]), (_, Message::AcceptOk { .. })));
        // And the new epoch's instances are voted on.
        rs[1].handle(T, r(2), pre_accept(id(2, 1), 1, commands(4, "d")));
        assert!(matches!(
            answer(&mut rs[1]),
            (_, Message::PreAcceptOk { .. })
        ));
        assert_eq!(rs[1].take_ready().votes_refused_above_seal, 0);
    }

    #[test]
    fn a_restarted_replica_keeps_its_seal_and_learns_the_boundary_again() {
        let mut rs = cluster(3);
        change(&mut rs[1], &[0, 1, 2]);
        let sealed = rs[1].take_ready().sealed.expect("sealed");
        // The restart: the node gets its seals back from the disk (`Restored::sealed`).
        let mut node = Node::new(
            Options::new(r(1), 3),
            0,
            T,
            Restored {
                membership: Membership::Joined {
                    horizons: vec![0; 3],
                },
                configuration: None,
                peers: vec![None; 3],
                checkpoint: None,
                records: Vec::new(),
                sealed,
            },
        );
        assert_eq!(node.replica().seals()[0].ends, vec![0, 0, 0]);
        node.handle(T, r(0), pre_accept(id(0, 0), 0, commands(1, "a")));
        let out = node.take_ready().core.messages;
        assert!(
            matches!(
                out.as_slice(),
                [Outgoing {
                    msg: Message::Nack { .. },
                    ..
                }]
            ),
            "still refused after the restart: {out:?}"
        );
        assert!(
            node.replica().boundary().is_none(),
            "asked again, not stored"
        );
    }

    #[test]
    fn the_boundary_waits_for_a_majority_of_the_old_epochs_members() {
        let mut rs = cluster(3);
        // r1 leads 1.0 and 1.1, which only r2 hears.
        let mut out = Vec::new();
        for c in 1..=2 {
            rs[1].propose(c, put(c, "a")).expect("room");
            rs[1].flush(T);
            out.extend(rs[1].take_ready().messages);
        }
        deliver(&mut rs, r(1), out, |to, _| to == r(2));
        let _ = rs[2].take_ready();
        // r0 executes the change; epoch 1 adds id 3.
        change(&mut rs[0], &[0, 1, 2, 3]);
        rs[0].propose(9, put(9, "z")).expect("room");
        rs[0].flush(T);
        let ready = rs[0].take_ready();
        assert!(
            ready.batches.is_empty(),
            "nothing starts before the boundary"
        );
        let query = Message::SealQuery { epoch: Epoch(0) };
        assert!(ready
            .messages
            .iter()
            .any(|o| o.msg == query && o.to == ids(&[1, 2])));
        // r2 has not executed the change: it answers with its Watermark, not a seal.
        rs[2].handle(T, r(0), query.clone());
        assert!(matches!(answer(&mut rs[2]), (_, Message::Watermark { .. })));
        // A seal from id 3, not a member of epoch 0, does not count.
        rs[0].handle(
            T,
            r(3),
            Message::Sealed {
                epoch: Epoch(0),
                ends: vec![0, 9, 0, 0],
            },
        );
        assert!(!rs[0].may_start_instances());
        // r2 executes the change; r0 asks again after its backoff and gets the seal.
        change(&mut rs[2], &[0, 1, 2, 3]);
        let _ = rs[2].take_ready();
        rs[0].tick(T); // sets the next query's time
        let _ = rs[0].take_ready();
        let later = Duration::from_secs(1);
        rs[0].tick(later);
        let out = rs[0].take_ready().messages;
        assert!(out.iter().any(|o| o.msg == query && o.to == ids(&[1, 2])));
        rs[2].handle(later, r(0), query);
        let (to, sealed) = answer(&mut rs[2]);
        assert_eq!(to, vec![r(0)]);
        rs[0].handle(later, r(2), sealed);
        // r0 and r2: a majority of epoch 0. B is the maximum of their seals.
        assert!(rs[0].may_start_instances());
        assert_eq!(rs[0].boundary(), Some((Epoch(0), [0, 2, 0, 0].as_slice())));
        rs[0].flush(later);
        assert_eq!(
            rs[0].take_ready().batches,
            vec![1],
            "the proposal starts now"
        );
    }

    /// The danger of `docs/membership.md`: {r0, r1, r2} becomes {r0, r1, r3}. r1 leads an
    /// old-epoch write `y` = 1.0 that r2 alone hears and commits with r1 (r0 never hears of it);
    /// then r0 leads a new-epoch write `x` = 0.0 on the same key that r3 (simulated by hand,
    /// empty) alone answers. Returns whether `x` and `y` are ordered, and `x`'s deps.
    fn new_epoch_write_after_an_unseen_old_one(omit_boundary: bool) -> (bool, Deps) {
        let mut rs = cluster(3);
        if omit_boundary {
            #[cfg(feature = "sabotage")]
            {
                rs[0].opts.sabotage.omit_boundary_deps = true;
            }
        }
        rs[1].propose(1, put(1, "k")).expect("room");
        settle(&mut rs, T, |_, to| to == r(0));
        let y = id(1, 0);
        let y_deps = rs[1].instance(y).expect("led").deps.clone();
        assert!(rs[1].instance(y).expect("led").status.is_decided());
        // Everyone executes the change (r2 is about to die); r0 learns B from r1.
        for r in rs.iter_mut() {
            change(r, &[0, 1, 3]);
        }
        settle(&mut rs, T, |from, to| from == r(2) || to == r(2));
        assert_eq!(rs[0].boundary(), Some((Epoch(0), [0, 1, 0, 0].as_slice())));
        // x: r0's PreAccept reaches only r3, whose empty table adds nothing.
        rs[0].propose(2, put(2, "k")).expect("room");
        rs[0].flush(T);
        let out = rs[0].take_ready().messages;
        let x = id(0, 0);
        for (to, msg) in deliver(&mut rs, r(0), out, |_, _| false) {
            if let Message::PreAccept {
                instance,
                ballot,
                deps,
                ..
            } = msg
            {
                rs[0].handle(
                    T,
                    to,
                    Message::PreAcceptOk {
                        instance,
                        ballot,
                        deps,
                    },
                );
            }
        }
        let inst = rs[0].instance(x).expect("led");
        assert!(inst.status.is_decided(), "x commits with r0 and r3");
        assert_eq!(inst.epoch, Epoch(1));
        let x_deps = inst.deps.clone();
        (ordered((x, &x_deps), (y, &y_deps)), x_deps)
    }

    #[test]
    fn new_epoch_deps_cover_the_boundary() {
        let (ordered, deps) = new_epoch_write_after_an_unseen_old_one(false);
        assert!(ordered, "x depends on y through the boundary");
        assert_eq!(deps, Deps::from([id(1, 0)]));
    }

    #[cfg(feature = "sabotage")]
    #[test]
    fn sabotage_new_epoch_deps_that_omit_the_boundary_leave_old_and_new_unordered() {
        let (ordered, deps) = new_epoch_write_after_an_unseen_old_one(true);
        assert!(deps.is_empty());
        assert!(
            !ordered,
            "the Visibility check fails: x and y interfere, neither sees the other"
        );
    }

    #[test]
    fn the_cover_retires_once_the_boundary_is_known_committed() {
        let (_, _) = new_epoch_write_after_an_unseen_old_one(false);
        let mut rs = cluster(3);
        rs[1].propose(1, put(1, "k")).expect("room");
        settle(&mut rs, T, |_, to| to == r(0));
        for r in rs.iter_mut() {
            change(r, &[0, 1, 2]);
        }
        settle(&mut rs, T, |_, _| false);
        // r0 learns 1.0's Commit (a watermark round): the cover is moot from then on.
        let later = Duration::from_secs(1);
        for r in rs.iter_mut() {
            r.tick(later);
        }
        settle(&mut rs, later, |_, _| false);
        rs[0].propose(2, put(2, "other")).expect("room");
        rs[0].flush(later);
        let led = rs[0].instance(id(0, 0)).expect("led");
        assert_eq!(
            led.deps,
            Deps::new(),
            "another key, and row 1 known committed"
        );
    }

    /// A sealed replica that votes above its seal: r0 and r2 executed the change to
    /// {r0, r1, r3} and r0 knows B (nothing of row 1); r1 has not, and leads an old-epoch write
    /// `y` = 1.0 that asks r2. Meanwhile r0 leads the new-epoch write `x` = 0.0 on the same key,
    /// which r3 (by hand) answers. Returns whether `y` committed with its command, and whether
    /// `x` and `y` are ordered if it did.
    fn old_write_after_the_seal(vote_above_seal: bool) -> (bool, bool) {
        let mut rs = cluster(3);
        if vote_above_seal {
            #[cfg(feature = "sabotage")]
            {
                rs[2].opts.sabotage.vote_above_seal = true;
            }
        }
        change(&mut rs[0], &[0, 1, 3]);
        change(&mut rs[2], &[0, 1, 3]);
        settle(&mut rs, T, |from, to| from == r(1) || to == r(1));
        assert_eq!(rs[0].boundary(), Some((Epoch(0), [0, 0, 0, 0].as_slice())));
        rs[1].propose(1, put(1, "k")).expect("room");
        settle(&mut rs, T, |from, to| from == r(0) || to == r(0));
        let y = id(1, 0);
        rs[0].propose(2, put(2, "k")).expect("room");
        rs[0].flush(T);
        let out = rs[0].take_ready().messages;
        for (to, msg) in deliver(&mut rs, r(0), out, |_, _| false) {
            if let Message::PreAccept {
                instance,
                ballot,
                deps,
                ..
            } = msg
            {
                let ok = Message::PreAcceptOk {
                    instance,
                    ballot,
                    deps,
                };
                rs[0].handle(T, to, ok);
            }
        }
        let x = id(0, 0);
        let x_inst = rs[0].instance(x).expect("led");
        assert!(x_inst.status.is_decided());
        let y_inst = rs[1].instance(y).expect("led");
        let y_committed = y_inst.status.is_decided() && !y_inst.commands.is_empty();
        (y_committed, ordered((x, &x_inst.deps), (y, &y_inst.deps)))
    }

    #[test]
    fn an_old_instance_above_the_boundary_cannot_commit_its_command() {
        let (y_committed, _) = old_write_after_the_seal(false);
        assert!(
            !y_committed,
            "r2 refused: y cannot reach a quorum of epoch 0"
        );
    }

    #[cfg(feature = "sabotage")]
    #[test]
    fn sabotage_a_sealed_replica_that_votes_above_its_seal_leaves_old_and_new_unordered() {
        let (y_committed, ordered) = old_write_after_the_seal(true);
        assert!(
            y_committed,
            "r2 voted above its seal: y committed with r1 and r2"
        );
        assert!(
            !ordered,
            "the Visibility check fails: x and y interfere, neither sees the other"
        );
    }

    /// The leader of a refused instance stops (the Nack), the instance ends as a no-op by
    /// recovery, and its command is proposed again, in the new epoch once the leader executed
    /// the change: executed once, answered once.
    #[test]
    fn a_refused_command_is_proposed_again_in_the_new_epoch_and_executes_once() {
        let mut rs = cluster(3);
        // The session's first request executes before the change (a first request whose
        // instance became a no-op is answered `Expired`: see `session`).
        rs[0].propose(6, put(1, "a")).expect("room");
        settle(&mut rs, T, |_, _| false);
        let _ = rs[0].take_ready();
        change(&mut rs[1], &[0, 1, 2]);
        change(&mut rs[2], &[0, 1, 2]);
        settle(&mut rs, T, |from, to| from == r(0) || to == r(0));
        let second = Command {
            request: RequestId(2),
            ..put(1, "b")
        };
        rs[0].propose(7, second).expect("room");
        settle(&mut rs, T, |_, _| false);
        let first = id(0, 1);
        assert!(
            !rs[0].leading.contains_key(&first),
            "the Nacks stopped the leader"
        );
        assert!(!rs[0].instance(first).expect("held").status.is_decided());
        let mut replies = Vec::new();
        let mut now = T;
        for step in 1..=200u64 {
            now = Duration::from_millis(100 * step);
            if step == 100 {
                change(&mut rs[0], &[0, 1, 2]);
            }
            for r in rs.iter_mut() {
                r.tick(now);
            }
            let mut net = crate::core::testkit::Network::new(3);
            for _ in 0..100 {
                for r in rs.iter_mut() {
                    r.flush(now);
                    let ready = r.take_ready();
                    if r.id() == ReplicaId(0) {
                        replies.extend(ready.replies.iter().map(|x| (x.token, x.result.clone())));
                    }
                    net.send(r.id(), ready.messages);
                }
                if net.is_empty() {
                    break;
                }
                for e in net.drain() {
                    rs[e.to.index()].handle(now, e.from, e.msg);
                }
            }
        }
        let _ = now;
        // Every try in epoch 0 (after 0.0, the first request) ended a no-op; the one with the
        // command is of epoch 1.
        let mut own: Vec<_> = rs[0]
            .instances()
            .filter(|(i, _)| i.replica == r(0))
            .map(|(i, inst)| {
                (
                    *i,
                    inst.epoch,
                    inst.status.is_decided(),
                    inst.commands.len(),
                )
            })
            .collect();
        own.sort_unstable();
        assert!(own.iter().all(|(_, _, decided, _)| *decided), "{own:?}");
        let with_command: Vec<_> = own.iter().skip(1).filter(|(.., c)| *c > 0).collect();
        assert_eq!(with_command.len(), 1, "{own:?}");
        assert_eq!(with_command[0].1, Epoch(1), "{own:?}");
        assert!(own.len() >= 3, "{own:?}");
        assert_eq!(replies.len(), 1, "answered once: {replies:?}");
        assert_eq!(replies[0].0, 7);
        assert!(replies[0].1.is_ok(), "{replies:?}");
        for r in &rs {
            assert_eq!(
                r.kv().executed(),
                2,
                "{} executed both once: {own:?}",
                r.id()
            );
        }
    }
}
