//! Recovery bookkeeping (EPaxos* explicit prepare): taking over stuck instances, Recover,
//! Validate and Waiting. The rules and why each is safe live in `core::recovery`.
//!
//! **An instance whose epoch the recoverer does not know** (issue 15, `docs/membership.md`).
//! An instance's quorums are its own epoch's (`epoch`), but a replica that knows an instance
//! only as a dependency (a Commit's deps, the boundary's cover) holds no epoch for it, and
//! counting its current epoch's members may miss every holder of a command a quorum of an
//! older epoch committed (the sabotage `recover_unknown_in_current_epoch`; with one change at
//! a time the quorums meet, but the current epoch's sizes read the answers wrongly: a fast path
//! of {r1, r2} among three looks like a lone pre-accept among four, a no-op). So:
//! - a RecoverOk names the epoch where its sender holds the instance's commands as its leader
//!   fixed them (`Instance::epoch_fixed`; every holder names the same); a record holding
//!   nothing or a no-op may carry a recoverer's guess, and names none;
//! - a recoverer without a fixed epoch asks the members of every epoch the instance may be of
//!   (`candidate_epochs`) and, until an answer reveals the epoch, waits for a quorum of *each*:
//!   whichever the epoch, its quorum answered, and as no answer holds a command, the rules
//!   end in a no-op, accepted by a quorum of each too (a later recovery may count any one of
//!   them). An answer that reveals the epoch makes its quorums rule from then on; a recoverer
//!   not a member of it stops and leaves the instance to the members;
//! - the epoch a record without a command names, and the one a Recover names for it, is the
//!   newest candidate, never below the true one (a seal counts the slot of every record of
//!   its epoch or older); a command's Accept, Commit or Validate, whose senders learnt the
//!   epoch from a holder, sets it.

use std::collections::{BTreeMap, HashMap};

use super::recoveries::{EpochUnknown, Recovery, RecoveryPhase};
use super::{Path, Replica, Time};
use crate::core::deps::{keys_of, ConflictKey, Deps};
use crate::core::epoch::Epoch;
use crate::core::ids::{Ballot, InstanceId, ReplicaId};
use crate::core::instance::{Instance, Leading, Phase, Status};
use crate::core::message::{Commands, Message, RecoverReply};
use crate::core::recovery::{self, AfterValidate, Awaited, Decision};

impl Replica {
    /// `e` of EPaxos* for `id`: how many members of its epoch the fast path may miss.
    pub(super) fn e(&self, id: InstanceId) -> usize {
        let c = self.deciding(id);
        c.len() - c.fast_quorum()
    }

    /// `f` for `id`: how many members of its epoch may fail.
    fn f(&self, id: InstanceId) -> usize {
        let c = self.deciding(id);
        c.len() - c.slow_quorum()
    }

    /// Takes over the needed instances that stayed uncommitted past their recovery time (and
    /// that no recovery of ours is already carrying to a decision in an Accept phase).
    pub(super) fn recover_stuck(&mut self, now: Time) {
        let cap = self.opts.recover_after * 8;
        let mut due = Vec::new();
        for (id, w) in self.waiting.iter_mut() {
            if now < w.recover_at || self.leading.contains_key(id) {
                continue; // not due, or our own Accept phase carries it already
            }
            w.recover_backoff = (w.recover_backoff * 2).min(cap);
            w.recover_at = now + w.recover_backoff;
            due.push(*id);
        }
        for id in due {
            self.start_recovery(now, id);
        }
        // An instance that left the table (collected) needs no epoch any more.
        let instances = &self.instances;
        self.unknown_epochs
            .retain(|id, _| instances.contains_key(id));
    }

    /// Every uncommitted instance known here is eventually needed, even if nothing waits for
    /// it: otherwise the pre-accept of a leader that died before anyone depended on it would
    /// stay uncommitted forever (and hold back the committed prefix, so garbage collection).
    pub(super) fn need_stragglers(&mut self, now: Time) {
        let stragglers: Vec<InstanceId> = self
            .instances
            .iter()
            .filter(|(id, i)| {
                !i.status.is_decided()
                    && !self.leading.contains_key(id)
                    && !self.waiting.contains_key(id)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in stragglers {
            self.need(now, id);
        }
    }

    /// Another replica works on `id`: leave it time before trying ourselves.
    pub(super) fn postpone_recovery(&mut self, now: Time, id: InstanceId) {
        if let Some(w) = self.waiting.get_mut(&id) {
            w.recover_at = w.recover_at.max(now + w.recover_backoff);
        }
    }

    /// Step 1: promise a ballot above any seen here and ask everyone for their state.
    fn start_recovery(&mut self, now: Time, id: InstanceId) {
        // Below a horizon this replica's own answer is not a vote it may give: peers recover.
        if self.forgotten(id) || self.abstains(id) {
            return;
        }
        let me = self.opts.id;
        let current = self.configuration().epoch();
        let held = self.instances.get(&id);
        if held.is_some_and(|i| i.status.is_decided()) {
            return; // committed since it was needed: nothing to recover
        }
        let revealed = self.unknown_epochs.get(&id).and_then(|u| u.revealed);
        let candidates = match held {
            // Its leader fixed the epoch, or an answer to an earlier recovery revealed it.
            Some(i) if i.epoch_fixed() || revealed == Some(i.epoch) => vec![i.epoch],
            // The sabotage: the epoch a recoverer that never held it guessed, its own current.
            _ if self.opts.sabotage.recover_unknown_in_current_epoch() => {
                vec![held.map_or(current, |i| i.epoch)]
            }
            _ => self.candidate_epochs(id),
        };
        // A recoverer counts its own answer (and, in the Accept phase it may lead, itself) as
        // a vote: only a member of the instance's epoch may recover it. Members do (an
        // instance's epoch always has a live majority to make progress at all). While the
        // epoch is unknown, a member of one it may be of (it stops if another is revealed).
        let member = |e: &Epoch| self.configuration_of(*e).is_some_and(|c| c.is_member(me));
        let Some(&newest) = candidates.last() else {
            return; // of no epoch this replica knows its leader was a member of
        };
        if !candidates.iter().any(member) {
            return;
        }
        if candidates.len() > 1 {
            let asked = self.unknown_epochs.remove(&id).map(|u| u.asked);
            let mut asked = asked.unwrap_or_default();
            asked.extend(candidates.iter().copied());
            asked.sort_unstable();
            asked.dedup();
            self.unknown_epochs.insert(
                id,
                EpochUnknown {
                    candidates,
                    asked,
                    revealed: None,
                },
            );
        }
        // The record's epoch, unless its leader fixed it, is the newest it may be of: never
        // below the true one (a seal counts the record's slot in the epochs at or above it).
        let inst = self
            .instances
            .entry(id)
            .or_insert_with(|| Instance::unknown(id, newest));
        if !inst.epoch_fixed() {
            inst.epoch = newest;
        }
        let Some(ballot) = next_ballot(inst.ballot, me) else {
            // Only a promise from before ballots at the top round were refused can get here:
            // leave the instance to whoever holds that ballot rather than wrap below it.
            return;
        };
        inst.ballot = ballot;
        let epoch = inst.epoch;
        let mine = reply_of(inst);
        self.save(id);
        self.leading.remove(&id);
        self.recovering.insert(
            id,
            Recovery {
                ballot,
                started_at: now,
                phase: RecoveryPhase::Recovering {
                    replies: vec![(me, mine)],
                },
            },
        );
        self.ready.recoveries_started += 1;
        // Only the members of the instance's epoch (of every epoch it may be of, while that
        // is unknown): nobody else's answer counts.
        let asked = self
            .peers()
            .into_iter()
            .filter(|p| self.votes_on(id, *p))
            .collect();
        self.send(
            asked,
            Message::Recover {
                instance: id,
                epoch,
                ballot,
            },
        );
    }

    pub(super) fn handle_recover(
        &mut self,
        now: Time,
        from: ReplicaId,
        id: InstanceId,
        epoch: Epoch,
        ballot: Ballot,
    ) {
        if self.forgotten(id) || self.abstains(id) {
            return; // executed everywhere (a stale message), or not ours to vote on (`rejoin`)
        }
        let inst = self
            .instances
            .entry(id)
            .or_insert_with(|| Instance::unknown(id, epoch));
        if inst.status.is_decided() {
            self.send_commit(from, id);
            return;
        }
        if ballot < inst.ballot {
            let promised = inst.ballot;
            self.nack(from, id, promised);
            return;
        }
        let raised = ballot > inst.ballot;
        inst.ballot = ballot;
        let reply = reply_of(inst);
        // Saved even when not raised: a Nack may have raised the ballot in memory only.
        self.save(id);
        if raised {
            // The original leader (or an earlier recoverer) stops: from now on it ignores the
            // answers of its lower ballot, so it can no longer commit on the fast path.
            self.leading.remove(&id);
            self.recovering.remove(&id);
            self.postpone_recovery(now, id);
        }
        self.send(
            vec![from],
            Message::RecoverOk {
                instance: id,
                ballot,
                reply,
            },
        );
    }

    pub(super) fn handle_recover_ok(
        &mut self,
        now: Time,
        from: ReplicaId,
        id: InstanceId,
        ballot: Ballot,
        reply: RecoverReply,
    ) {
        let Some(rec) = self.recovering.get(&id) else {
            return; // a late answer: the recovery ended (decided, or taken over by another)
        };
        if rec.ballot != ballot {
            return; // an answer to an earlier recovery of ours at a lower ballot
        }
        if let (Some(epoch), RecoveryPhase::Recovering { .. }) = (reply.epoch, &rec.phase) {
            if self.unrevealed(id).is_some() && !self.reveal(now, id, epoch) {
                return; // an epoch this replica is not a member of: the recovery stopped
            }
        }
        if !self.votes_on(id, from) {
            return; // asked while the epoch was unknown; not a member of the one revealed
        }
        let e = self.e(id);
        let Some(rec) = self.recovering.get_mut(&id) else {
            return;
        };
        match &mut rec.phase {
            RecoveryPhase::Recovering { replies } => {
                if replies.iter().any(|(r, _)| *r == from) {
                    return; // a duplicate
                }
                replies.push((from, reply));
                let quorum: Vec<ReplicaId> = replies.iter().map(|(r, _)| *r).collect();
                if self.quorums_answered(id, &quorum) {
                    let Some(RecoveryPhase::Recovering { replies }) =
                        self.recovering.get(&id).map(|r| &r.phase)
                    else {
                        return;
                    };
                    // Unrevealed, no answer holds a command: the rules end in a no-op.
                    let decision = recovery::decide(id.replica, e, replies);
                    self.apply_decision(now, id, decision, quorum);
                }
            }
            RecoveryPhase::Waiting { quorum, .. } if !quorum.contains(&from) => {
                // A late answer from outside the quorum can settle a waiting recovery.
                let decision = if reply.status.is_decided() {
                    Decision::Commit(reply.commands, reply.deps)
                } else if reply.status == Status::Accepted {
                    Decision::Accept(reply.commands, reply.deps)
                } else if from == id.replica {
                    Decision::Nop
                } else {
                    return; // a pre-accept or nothing: tells nothing the quorum did not
                };
                self.apply_decision(now, id, decision, Vec::new());
            }
            // Late (Validating) or duplicate (Waiting, from the quorum) answers.
            _ => {}
        }
    }

    /// An answer to the recovery of `id` revealed its epoch: from now on that epoch's quorums
    /// count, and the answers of others are dropped. `false` if the recovery stopped: this
    /// replica is not a member of that epoch, so it cannot vote there (its members recover).
    fn reveal(&mut self, now: Time, id: InstanceId, epoch: Epoch) -> bool {
        let me = self.opts.id;
        let Some(config) = self.configuration_of(epoch).cloned() else {
            return false; // unreachable: an epoch above this replica's is dropped on arrival
        };
        if let Some(unknown) = self.unknown_epochs.get_mut(&id) {
            unknown.revealed = Some(epoch);
        }
        if let Some(inst) = self.instances.get_mut(&id) {
            inst.epoch = epoch; // a guess until now (`start_recovery`)
        }
        self.save(id);
        if !config.is_member(me) {
            self.recovering.remove(&id);
            self.postpone_recovery(now, id);
            return false;
        }
        if let Some(Recovery {
            phase: RecoveryPhase::Recovering { replies },
            ..
        }) = self.recovering.get_mut(&id)
        {
            replies.retain(|(r, _)| config.is_member(*r));
        }
        true
    }

    /// The epochs `id`, an instance this replica holds no fixed epoch for (it knows it only as
    /// a dependency), may be of *with a command*, oldest first:
    /// - those its leader was a member of (only members lead);
    /// - at most the epoch a record held names (an upper bound, see `start_recovery`);
    /// - for each epoch `x` whose decided boundary `B_x` is known here: below `B_x[r]`, `x` or
    ///   older (at sealing `x` no replica held an instance of a later epoch); at or above it,
    ///   later than `x`. An instance of `x` or older there may exist, but only as a no-op: one
    ///   of `x` by `seal`'s "Why it is safe"; one of an older `x'` because `B_x'[r] <= B_x[r]`
    ///   (a member of the majority that decided `B_x` executed the change ending `x` before
    ///   sealing, and that change's deps cover `B_x'`). Whatever the recovery decides for it
    ///   then (a no-op, as nobody among the candidates' quorums holds a command), agrees;
    /// - between the epochs of the row's instances held around it (a row's epochs only grow
    ///   with its slots).
    fn candidate_epochs(&self, id: InstanceId) -> Vec<Epoch> {
        let mut hi = self.configuration().epoch();
        let mut lo = Epoch(0);
        if let Some(inst) = self.instances.get(&id) {
            hi = hi.min(inst.epoch);
        }
        let row = id.replica.index();
        let decided = self
            .seals()
            .iter()
            .filter_map(|s| Some((s.epoch, s.decided.as_deref()?)))
            .chain(self.boundary());
        // Above a boundary: later, unless nothing later is left (a no-op of that epoch, say
        // one this replica recovered before the change: its record names that epoch).
        let mut above = Epoch(0);
        for (x, b) in decided {
            if id.slot < b.get(row).copied().unwrap_or(0) {
                hi = hi.min(x);
            } else {
                above = above.max(Epoch(x.0 + 1));
            }
        }
        let led_by = |e: &Epoch| {
            self.configuration_of(*e)
                .is_some_and(|c| c.is_member(id.replica))
        };
        let select = |lo: Epoch, hi: Epoch| -> Vec<Epoch> {
            let with_commands: Vec<Epoch> =
                (lo.max(above).0..=hi.0).map(Epoch).filter(led_by).collect();
            if !with_commands.is_empty() {
                return with_commands;
            }
            (lo.0..=hi.0).map(Epoch).filter(led_by).collect()
        };
        let candidates = select(lo, hi);
        if candidates.len() > 1 {
            // Only then the walk over the table (recoveries of instances known only as
            // dependencies, after a change).
            for (other, inst) in &self.instances {
                if other.replica != id.replica || !inst.epoch_fixed() {
                    continue;
                }
                if other.slot < id.slot {
                    lo = lo.max(inst.epoch);
                } else if other.slot > id.slot {
                    hi = hi.min(inst.epoch);
                }
            }
            return select(lo, hi);
        }
        candidates
    }

    fn apply_decision(
        &mut self,
        now: Time,
        id: InstanceId,
        decision: Decision,
        quorum: Vec<ReplicaId>,
    ) {
        let decision = match decision {
            Decision::Commit(..) => decision,
            _ if self.opts.sabotage.recovery_always_nop() => Decision::Nop,
            // At or above the decided boundary of the epoch it belongs to, the instance cannot
            // have committed a command (see `seal`'s "Why it is safe"), whatever pre-accepts
            // the answers show: the sealed replicas would refuse a Validate or an Accept of
            // its command forever (seed 6324 of `random_seeds_with_changes`).
            _ if self.above_decided_boundary(id) => Decision::Nop,
            Decision::Validate { commands, deps, .. }
                if self.opts.sabotage.recovery_skips_validate() =>
            {
                Decision::Accept(commands, deps)
            }
            _ => decision,
        };
        match decision {
            Decision::Commit(commands, deps) => self.recovered_commit(now, id, commands, deps),
            Decision::Accept(commands, deps) => self.recovery_accept(now, id, commands, deps),
            Decision::Nop => self.recovery_accept(now, id, Commands::default(), Deps::new()),
            Decision::Validate {
                commands,
                deps,
                matching,
            } => {
                let me = self.opts.id;
                // Own bookkeeping: decisions are applied only to a recovery in progress.
                let Some(rec) = self.recovering.get(&id) else {
                    panic!("validating {id}, which no recovery of ours carries");
                };
                let ballot = rec.ballot;
                let epoch = self.deciding(id).epoch();
                self.apply_validate(id, &commands, &deps);
                self.save(id);
                let mine = self.validate_conflicts(id, &commands, &deps);
                let others: Vec<ReplicaId> = quorum.iter().copied().filter(|r| *r != me).collect();
                if let Some(rec) = self.recovering.get_mut(&id) {
                    rec.phase = RecoveryPhase::Validating {
                        quorum,
                        commands: commands.clone(),
                        deps: deps.clone(),
                        matching,
                        replies: vec![(me, mine)],
                    };
                }
                self.send(
                    others,
                    Message::Validate {
                        instance: id,
                        epoch,
                        ballot,
                        commands,
                        deps,
                    },
                );
                self.check_validated(now, id);
            }
        }
    }

    /// Recovery found the instance committed: commit it here and tell everyone.
    fn recovered_commit(&mut self, now: Time, id: InstanceId, commands: Commands, deps: Deps) {
        // Own bookkeeping: decisions are applied only to a recovery in progress.
        let Some(rec) = self.recovering.remove(&id) else {
            panic!("committing {id} as recovered, but no recovery of ours carries it");
        };
        let took = now.saturating_sub(rec.started_at);
        let epoch = self.deciding(id).epoch();
        self.commit_here(
            now,
            id,
            epoch,
            rec.ballot,
            commands,
            deps,
            Some((Path::Recovered, took)),
        );
        // `commit_here` leaves the instance in the table, decided.
        self.send_commit_to_all(id);
    }

    /// Phase 2 at the recovery ballot with the chosen value (a no-op when `commands` is empty).
    fn recovery_accept(&mut self, now: Time, id: InstanceId, commands: Commands, deps: Deps) {
        // Own bookkeeping (see `check_invariants`): every caller holds a recovery in progress,
        // whose instance is in the table, undecided, at the recovery's ballot.
        let Some(rec) = self.recovering.remove(&id) else {
            panic!("accepting {id} by recovery, but no recovery of ours carries it");
        };
        let Some(inst) = self.instances.get_mut(&id) else {
            panic!(
                "recovering {id} at {}, which is not in the table",
                rec.ballot
            );
        };
        assert!(
            !inst.status.is_decided(),
            "recovering {id} at {}, which is decided",
            rec.ballot
        );
        assert_eq!(
            inst.ballot, rec.ballot,
            "recovering {id}: the promise moved on without ending the recovery"
        );
        let old = std::mem::replace(&mut inst.commands, commands);
        self.commands_changed(id, &old);
        self.leading.insert(
            id,
            Leading {
                phase: Phase::Accepting { acks: Vec::new() },
                asked: Vec::new(),
                started_at: rec.started_at,
                sent_at: now,
                retry_after: self.opts.retry,
                recovery: true,
            },
        );
        self.start_accept(now, id, deps);
    }

    /// What a Validate leaves at a replica of the quorum: the command and initial deps the
    /// recoverer proposes, as if its PreAccept had arrived (later recoveries of other
    /// instances then see it in their own Validate).
    fn apply_validate(&mut self, id: InstanceId, commands: &Commands, deps: &Deps) {
        // Own bookkeeping: both callers found the instance in the table.
        let Some(inst) = self.instances.get_mut(&id) else {
            panic!("applying a Validate of {id}, which is not in the table");
        };
        if inst.status >= Status::Accepted {
            return; // a duplicated Validate arriving after the Accept at its ballot
        }
        let old = std::mem::replace(&mut inst.commands, commands.clone());
        inst.init_deps = Some(deps.clone());
        self.commands_changed(id, &old);
    }

    /// The instances known here that interfere with `commands`, that `deps` do not cover and
    /// that do not depend on `id` (by their committed deps, or by the initial deps their
    /// leader proposed if they are not committed), each with whether it is committed here.
    /// Instances never pre-accepted or validated here (initial deps unknown) are skipped, and
    /// so are forgotten ones, which every replica executed (see `collect_garbage`).
    fn validate_conflicts(
        &self,
        id: InstanceId,
        commands: &Commands,
        deps: &Deps,
    ) -> Vec<(InstanceId, bool)> {
        let keys: HashMap<ConflictKey, bool> = keys_of(commands).into_iter().collect();
        let interferes = |other: &Commands| {
            keys_of(other)
                .into_iter()
                .any(|(k, w)| keys.get(&k).is_some_and(|mine| *mine || w))
        };
        let mut found = Vec::new();
        for (other, inst) in &self.instances {
            if *other == id || deps.covers(*other) || inst.commands.is_empty() {
                continue;
            }
            let (their_deps, committed) = if inst.status.is_decided() {
                (&inst.deps, true)
            } else if let Some(init) = &inst.init_deps {
                (init, false)
            } else {
                continue;
            };
            if !their_deps.covers(id) && interferes(&inst.commands) {
                found.push((*other, committed));
            }
        }
        found.sort_unstable();
        found
    }

    pub(super) fn handle_validate(
        &mut self,
        from: ReplicaId,
        id: InstanceId,
        epoch: Epoch,
        ballot: Ballot,
        commands: Commands,
        deps: Deps,
    ) {
        if self.forgotten(id) || self.abstains(id) {
            return; // executed everywhere (a stale message), or not ours to vote on (`rejoin`)
        }
        let Some(inst) = self.instances.get(&id) else {
            // Validate goes to those that promised (and saved) the ballot; a replica with a new
            // data directory may yet get one sent to its old incarnation.
            return;
        };
        if inst.status.is_decided() {
            self.send_commit(from, id);
            return;
        }
        if ballot != inst.ballot {
            if ballot < inst.ballot {
                let promised = inst.ballot;
                self.nack(from, id, promised);
            }
            // Above our promise: as above, only a message to an old incarnation.
            return;
        }
        // The recoverer learnt the epoch from a holder of the commands (or holds them): a
        // record that holds no command here may carry a guess.
        let epoch = self.epoch_of(id, epoch);
        if !commands.is_empty() && self.above_seal(id, epoch) {
            // Its record would be a vote for a command above this replica's seal (`seal`).
            self.refuse_above_seal(from, id, ballot);
            return;
        }
        if let Some(inst) = self.instances.get_mut(&id) {
            inst.epoch = epoch;
        }
        self.apply_validate(id, &commands, &deps);
        self.save(id);
        let conflicts = self.validate_conflicts(id, &commands, &deps);
        self.send(
            vec![from],
            Message::ValidateOk {
                instance: id,
                ballot,
                conflicts,
            },
        );
    }

    pub(super) fn handle_validate_ok(
        &mut self,
        now: Time,
        from: ReplicaId,
        id: InstanceId,
        ballot: Ballot,
        conflicts: Vec<(InstanceId, bool)>,
    ) {
        let Some(rec) = self.recovering.get_mut(&id) else {
            return; // a late answer: the recovery ended
        };
        if rec.ballot != ballot {
            return; // an answer to an earlier recovery of ours
        }
        if let RecoveryPhase::Validating {
            quorum, replies, ..
        } = &mut rec.phase
        {
            if quorum.contains(&from) && !replies.iter().any(|(r, _)| *r == from) {
                replies.push((from, conflicts));
            }
        }
        self.check_validated(now, id);
    }

    /// Step 3, once the whole quorum answered Validate.
    fn check_validated(&mut self, now: Time, id: InstanceId) {
        let e = self.e(id);
        let Some(rec) = self.recovering.get_mut(&id) else {
            return; // a ValidateOk after the recovery ended
        };
        let RecoveryPhase::Validating {
            quorum,
            commands,
            deps,
            matching,
            replies,
        } = &rec.phase
        else {
            return; // a late ValidateOk: the recovery moved on to Waiting
        };
        if replies.len() < quorum.len() {
            return; // more answers to come
        }
        let mut union: BTreeMap<InstanceId, bool> = BTreeMap::new();
        for (_, found) in replies {
            for (other, committed) in found {
                *union.entry(*other).or_default() |= *committed;
            }
        }
        let union: Vec<(InstanceId, bool)> = union.into_iter().collect();
        let (commands, deps, quorum) = (commands.clone(), deps.clone(), quorum.clone());
        match recovery::after_validate(e, &quorum, *matching, &union) {
            AfterValidate::Accept => self.recovery_accept(now, id, commands, deps),
            AfterValidate::Nop => self.recovery_accept(now, id, Commands::default(), Deps::new()),
            AfterValidate::Wait(awaited) => {
                let matching = *matching as u32;
                rec.phase = RecoveryPhase::Waiting {
                    quorum,
                    commands,
                    deps,
                    awaited: awaited.clone(),
                };
                self.send(
                    self.peers(),
                    Message::Waiting {
                        instance: id,
                        matching,
                    },
                );
                self.handle_waiting(now, id, matching);
                for other in awaited {
                    if !self
                        .instances
                        .get(&other)
                        .is_some_and(|i| i.status.is_decided())
                    {
                        self.need(now, other);
                    }
                }
                self.check_waiting(now, id);
            }
        }
    }

    /// A recoverer of `id` waits with `matching` matching pre-accepts.
    pub(super) fn handle_waiting(&mut self, now: Time, id: InstanceId, matching: u32) {
        const ANNOUNCED_MAX: usize = 1 << 16;
        if self
            .instances
            .get(&id)
            .is_some_and(|i| i.status.is_decided())
            || self.forgotten(id)
            || (self.announced.len() >= ANNOUNCED_MAX && !self.announced.contains_key(&id))
        {
            return; // decided or forgotten: nothing waits on it; or the table is full
        }
        let m = self.announced.entry(id).or_default();
        *m = (*m).max(matching);
        self.recheck_waiting(now, id);
    }

    /// Re-evaluates the waiting recoveries that await `changed`.
    pub(super) fn recheck_waiting(&mut self, now: Time, changed: InstanceId) {
        let ids: Vec<InstanceId> = self
            .recovering
            .iter()
            .filter(|(_, r)| {
                matches!(&r.phase, RecoveryPhase::Waiting { awaited, .. } if awaited.contains(&changed))
            })
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.check_waiting(now, id);
        }
    }

    fn check_waiting(&mut self, now: Time, id: InstanceId) {
        // Re-evaluated after other steps of the same input, which may have ended the recovery
        // (a commit of an awaited instance can settle it) or not yet put it in Waiting.
        let Some(rec) = self.recovering.get(&id) else {
            return;
        };
        let RecoveryPhase::Waiting {
            commands,
            deps,
            awaited,
            ..
        } = &rec.phase
        else {
            return;
        };
        let states: Vec<Awaited> = awaited
            .iter()
            .map(|other| match self.instances.get(other) {
                Some(i) if i.status.is_decided() => {
                    if i.commands.is_empty() || i.deps.covers(id) {
                        Awaited::Harmless
                    } else {
                        Awaited::Conflicting
                    }
                }
                // Executed everywhere: ordered before anything recovered now.
                None if self.forgotten(*other) => Awaited::Harmless,
                _ => Awaited::Open {
                    waiting_matching: self.announced.get(other).copied().unwrap_or(0),
                },
            })
            .collect();
        let (commands, deps) = (commands.clone(), deps.clone());
        let n = self.deciding(id).len();
        match recovery::after_waiting(n, self.f(id), self.e(id), &states) {
            Some(Decision::Accept(..)) => self.recovery_accept(now, id, commands, deps),
            Some(_) => self.recovery_accept(now, id, Commands::default(), Deps::new()),
            None => {}
        }
    }
}

/// The ballot `me` takes an instance over with, above `promised`: the next round. `None` at the
/// top round; never wraps (a wrapped ballot would sit below promises already made durable).
pub(super) fn next_ballot(promised: Ballot, me: ReplicaId) -> Option<Ballot> {
    Some(Ballot {
        round: promised.round.checked_add(1)?,
        replica: me,
    })
}

/// What a RecoverOk tells of an instance.
fn reply_of(inst: &Instance) -> RecoverReply {
    RecoverReply {
        status: inst.status.min(Status::Committed),
        accepted_ballot: inst.accepted_ballot,
        commands: inst.commands.clone(),
        deps: inst.deps.clone(),
        init_deps: inst.init_deps.clone(),
        epoch: inst.epoch_fixed().then_some(inst.epoch),
    }
}
