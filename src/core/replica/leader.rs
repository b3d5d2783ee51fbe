//! The command leader's side: starting instances from pending proposals, PreAccept and the
//! fast-path decision, Accept, committing what it led, resends and nacks.

use std::sync::Arc;

use super::{Path, Replica, Time};
use crate::core::command::Command;
use crate::core::deps::Deps;
use crate::core::ids::{Ballot, InstanceId, ReplicaId};
use crate::core::instance::{Instance, Leading, Phase, Status};
use crate::core::message::{Commands, Message};

impl Replica {
    /// Starts an instance in the next slot of this replica's row and sends its PreAccept.
    ///
    /// The PreAccept leaves *before* the instance's record is durable (`send_early`: the shell
    /// sends it, then syncs), so the network and the peers' syncs overlap this replica's own.
    /// What a crash at each moment loses, and why nothing breaks:
    /// - after the PreAccept left, before the record is durable: the restarted leader knows
    ///   nothing of slot k, while peers may hold it pre-accepted at ballot 0. Nothing about k
    ///   was decided or revealed beyond the PreAccept: the leader's own vote counts only in
    ///   decisions it makes on peers' answers, which it handles after this step's sync, and
    ///   every output of a decision (Accept, Commit, execution, reply) waits for its own record,
    ///   which the log orders after this one. So k is settled by recovery at a higher ballot
    ///   (no-op, or what a recoverer elsewhere already chose); the restart never proposes
    ///   another command in k at ballot 0 (see [`Replica::skip_unsynced_slots`]), and it bounds
    ///   the slots at stake: new instances start only within `OWN_SLOTS_UNSYNCED_MAX` of the
    ///   last durable one (`flush`).
    /// - after the record is durable: as with a record synced before sending; the restarted
    ///   leader resumes k at ballot 0 with exactly what it sent (see `restore`).
    ///
    /// Nothing else leaves early. A voter's answer reveals its vote, which must survive it
    /// (`handle_pre_accept`, `handle_accept`). The Accept waits for its record: sent early and
    /// lost, the restarted leader would resume k from its PreAccepted record and could choose
    /// other deps at the same ballot 0. The Commit waits for the commit record too (see
    /// `commit_led`).
    pub(super) fn start_instance(&mut self, now: Time) {
        let id = InstanceId::new(self.opts.id, self.next_slot);
        self.next_slot += 1;
        let mut take = 0;
        let mut bytes = 0;
        for cmd in self.pending.iter().take(self.opts.batch_max) {
            bytes += cmd.op.size_bytes();
            if take > 0 && bytes > self.opts.batch_bytes_max {
                break;
            }
            take += 1;
        }
        // Stamped now, once: every replica then sees the same time (see `session`).
        let wall_ms = self.wall_ms;
        let commands: Vec<Command> = self
            .pending
            .drain(..take)
            .map(|cmd| Command {
                time_ms: wall_ms,
                ..cmd
            })
            .collect();
        self.pending_bytes -= commands.iter().map(|c| c.op.size_bytes()).sum::<usize>();
        let mut deps = Deps::new();
        if !self.opts.sabotage.forget_deps() {
            self.index.collect(id, &commands, true, &mut deps);
            self.add_horizon_deps(&mut deps);
            self.add_boundary_deps(self.configuration().epoch(), &mut deps);
        }
        self.index.record(id, &commands);
        let commands: Commands = Arc::new(commands);
        let ballot = Ballot::initial(self.opts.id);
        self.instances.insert(
            id,
            Instance {
                epoch: self.configuration().epoch(),
                status: Status::PreAccepted,
                ballot,
                accepted_ballot: None,
                commands: commands.clone(),
                deps: deps.clone(),
                init_deps: Some(deps.clone()),
            },
        );
        self.save(id);
        self.ready.batches.push(commands.len());
        let asked = self.targets(now, id, self.fast_quorum_of(id) - 1);
        self.leading.insert(
            id,
            Leading {
                phase: Phase::PreAccepting {
                    replies: Vec::new(),
                },
                asked: asked.clone(),
                started_at: now,
                sent_at: now,
                retry_after: self.opts.retry,
                recovery: false,
            },
        );
        self.send_early(
            asked,
            Message::PreAccept {
                instance: id,
                epoch: self.configuration().epoch(),
                ballot,
                commands,
                deps,
            },
        );
        self.decide_pre_accept(now, id, false);
    }

    /// Peers to ask in a phase that needs `needed` answers besides the leader's: all peers, or
    /// in thrifty mode just `needed` of them (the next ids after ours, a fixed choice).
    /// In thrifty mode, peers not suspected come first (then the next ids after ours), so a
    /// dead peer does not cost every instance a resend timeout.
    /// Only members of `id`'s epoch are asked: nobody else's answer is a vote.
    fn targets(&self, now: Time, id: InstanceId, needed: usize) -> Vec<ReplicaId> {
        let mut peers = self.voters(id);
        // While the epoch is unknown (a recovery's no-op), every epoch's quorum must accept.
        let count = if self.opts.thrifty && self.unrevealed(id).is_none() {
            needed
        } else {
            peers.len()
        };
        // Stable: keeps the id order among peers alike.
        peers.sort_by_key(|p| self.is_suspected(*p, now));
        peers.truncate(count);
        peers
    }

    /// Whether nothing was heard from `peer` for `suspect_after`. Every peer sends at least a
    /// Watermark each `watermark_every`, which serves as the heartbeat.
    pub fn is_suspected(&self, peer: ReplicaId, now: Time) -> bool {
        self.last_heard
            .get(peer)
            .is_some_and(|heard| now.saturating_sub(*heard) > self.opts.suspect_after)
    }

    pub(super) fn handle_pre_accept_ok(
        &mut self,
        now: Time,
        from: ReplicaId,
        id: InstanceId,
        ballot: Ballot,
        deps: Deps,
    ) {
        let Some(inst) = self.instances.get(&id) else {
            return;
        };
        if inst.ballot != ballot {
            return;
        }
        let Some(lead) = self.leading.get_mut(&id) else {
            return; // decided already: a late or duplicated answer
        };
        let Phase::PreAccepting { replies } = &mut lead.phase else {
            return;
        };
        if replies.iter().any(|(r, _)| *r == from) {
            return;
        }
        replies.push((from, deps));
        self.decide_pre_accept(now, id, false);
    }

    /// The EPaxos* fast-path rule: commit the initial deps once a fast quorum (leader included)
    /// reported exactly them. Otherwise go to the slow path with the union of all answers once a
    /// slow quorum answered and either the fast path can no longer happen or `timed_out`.
    ///
    /// The leader's own vote is its PreAccepted record, which may not be durable yet when the
    /// instance starts (its PreAccept left early: see `start_instance`). Counting it at once is
    /// still counting a durable vote: nothing this decision produces leaves before the next
    /// sync, which covers that record (the Accept or the Commit is a later record of the same
    /// log, and the shell sends only `Ready::early` before syncing).
    fn decide_pre_accept(&mut self, now: Time, id: InstanceId, timed_out: bool) {
        // Callers decide only an instance they lead, in the PreAccept phase.
        let (Some(inst), Some(lead)) = (self.instances.get(&id), self.leading.get(&id)) else {
            panic!("deciding the PreAccept of {id}, which is not led here");
        };
        let Phase::PreAccepting { replies } = &lead.phase else {
            panic!("deciding the PreAccept of {id}, which is past that phase");
        };
        let init_deps = inst.init_deps.clone().unwrap_or_default();
        let matching = 1 + replies.iter().filter(|(_, d)| *d == init_deps).count();
        let answered = 1 + replies.len();
        // A suspected peer is not waited for: with a dead peer, an instance whose fast path
        // failed would otherwise wait for the resend timer before taking the slow path.
        let unanswered = lead
            .asked
            .iter()
            .filter(|p| !lead.has_answered(**p) && !self.is_suspected(**p, now))
            .count();
        let (fast_quorum, slow_quorum) = (self.fast_quorum_of(id), self.slow_quorum_of(id));
        if matching >= fast_quorum {
            self.commit_led(now, id, init_deps, Path::Fast);
            return;
        }
        let fast_possible = matching + unanswered >= fast_quorum;
        if answered >= slow_quorum && (!fast_possible || timed_out) {
            let mut union = init_deps;
            for (_, d) in replies {
                union.union_with(d);
            }
            self.start_accept(now, id, union);
        }
    }

    pub(super) fn start_accept(&mut self, now: Time, id: InstanceId, deps: Deps) {
        let asked = self.targets(now, id, self.slow_quorum_of(id) - 1);
        let inst = self
            .instances
            .get_mut(&id)
            .expect("a led instance is in the table");
        inst.status = Status::Accepted;
        inst.accepted_ballot = Some(inst.ballot);
        inst.deps = deps.clone();
        let msg = Message::Accept {
            instance: id,
            epoch: inst.epoch,
            ballot: inst.ballot,
            commands: inst.commands.clone(),
            deps,
        };
        self.save(id);
        let lead = self
            .leading
            .get_mut(&id)
            .expect("start_accept on a led instance");
        lead.phase = Phase::Accepting { acks: Vec::new() };
        lead.asked = asked.clone();
        lead.sent_at = now;
        lead.retry_after = self.opts.retry;
        self.send(asked, msg);
        self.decide_accept(now, id);
    }

    pub(super) fn handle_accept_ok(
        &mut self,
        now: Time,
        from: ReplicaId,
        id: InstanceId,
        ballot: Ballot,
    ) {
        let Some(inst) = self.instances.get(&id) else {
            return;
        };
        if inst.ballot != ballot {
            return;
        }
        let Some(lead) = self.leading.get_mut(&id) else {
            return;
        };
        let Phase::Accepting { acks } = &mut lead.phase else {
            return;
        };
        if !acks.contains(&from) {
            acks.push(from);
            self.decide_accept(now, id);
        }
    }

    fn decide_accept(&mut self, now: Time, id: InstanceId) {
        let Some(lead) = self.leading.get(&id) else {
            panic!("deciding the Accept of {id}, which is not led here");
        };
        if let Phase::Accepting { acks } = &lead.phase {
            let mut answered = acks.clone();
            answered.push(self.opts.id);
            if self.quorums_answered(id, &answered) {
                let path = if lead.recovery {
                    Path::Recovered
                } else {
                    Path::Slow
                };
                let deps = self.instances[&id].deps.clone();
                self.commit_led(now, id, deps, path);
            }
        }
    }

    /// Commits an instance this replica decided as its leader (or recoverer). Its Commit,
    /// execution and replies wait for the commit record to be durable here, although a
    /// quorum's durable votes already fix the outcome: EPaxos* recovery reads a coordinator's
    /// answer as proof of what it did. A coordinator in the recovery's quorum that reports the
    /// instance only pre-accepted makes it a no-op ("initial coordinator in Q"), and Validate
    /// reasons the same way about the coordinators of conflicting instances. A leader that had
    /// replied before its commit record was durable and then crashed would restart with the
    /// instance pre-accepted and give exactly that answer: the command its client saw executed
    /// would become a no-op. Replying earlier needs a restarted coordinator to stop answering
    /// as one for its undecided instances, a change to the recovery rules.
    fn commit_led(&mut self, now: Time, id: InstanceId, deps: Deps, path: Path) {
        let lead = self
            .leading
            .remove(&id)
            .expect("only led instances are committed by their leader");
        let inst = self
            .instances
            .get_mut(&id)
            .expect("a led instance is in the table");
        // The leader's own copy takes the decided deps here (commit_here's sabotage switch is
        // about Commits learnt from peers).
        inst.deps = deps.clone();
        let (epoch, ballot, commands) = (inst.epoch, inst.ballot, inst.commands.clone());
        let msg = Message::Commit {
            instance: id,
            epoch,
            ballot,
            commands: commands.clone(),
            deps: deps.clone(),
        };
        self.send(self.peers(), msg);
        let led = Some((path, now.saturating_sub(lead.started_at)));
        self.commit_here(now, id, epoch, ballot, commands, deps, led);
    }

    pub(super) fn on_retry_timeout(&mut self, now: Time, id: InstanceId) {
        let Some(lead) = self.leading.get(&id) else {
            return;
        };
        if let Phase::PreAccepting { replies } = &lead.phase {
            if 1 + replies.len() >= self.slow_quorum_of(id) {
                // A slow quorum answered but the fast quorum did not come in time.
                self.decide_pre_accept(now, id, true);
                return;
            }
        }
        // Resend to every peer that has not answered, not just the ones first asked: in thrifty
        // mode a silent peer would otherwise stall the instance.
        let silent: Vec<ReplicaId> = self
            .peers()
            .into_iter()
            .filter(|p| self.votes_on(id, *p) && !lead.has_answered(*p))
            .collect();
        let inst = &self.instances[&id];
        let msg = match &lead.phase {
            Phase::PreAccepting { .. } => Message::PreAccept {
                instance: id,
                epoch: inst.epoch,
                ballot: inst.ballot,
                commands: inst.commands.clone(),
                deps: inst.init_deps.clone().unwrap_or_default(),
            },
            Phase::Accepting { .. } => Message::Accept {
                instance: id,
                epoch: inst.epoch,
                ballot: inst.ballot,
                commands: inst.commands.clone(),
                deps: inst.deps.clone(),
            },
        };
        let retry_max = self.opts.retry_max;
        let lead = self.leading.get_mut(&id).expect("checked above");
        lead.asked = silent.clone();
        lead.sent_at = now;
        lead.retry_after = (lead.retry_after * 2).min(retry_max);
        self.send(silent, msg);
    }

    pub(super) fn handle_nack(&mut self, now: Time, id: InstanceId, promised: Ballot) {
        if let Some(inst) = self.instances.get_mut(&id) {
            if promised > inst.ballot && !inst.status.is_decided() {
                // Another replica took the instance over: stop leading (or recovering) it. Its
                // clients get their answer once it is committed and executed (or, if it ends
                // as a no-op, once their commands are proposed again). Not made durable: a
                // promise forgotten only lets this replica accept what it would have anyway.
                inst.ballot = promised;
                self.leading.remove(&id);
                self.recovering.remove(&id);
                self.postpone_recovery(now, id);
            }
        }
    }
}
