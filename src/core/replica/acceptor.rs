//! The acceptor's side: answering PreAccept and Accept, learning Commits and Watermarks,
//! answering requests for Commits.

use super::{Contradiction, Replica, Time};
use crate::core::deps::Deps;
use crate::core::epoch::Epoch;
use crate::core::ids::{Ballot, InstanceId, ReplicaId};
use crate::core::instance::{Instance, Status};
use crate::core::message::{Commands, Message};

impl Replica {
    /// Whether `from` may send phase messages for `id` at `ballot`: it owns the ballot, and
    /// round 0 belongs to the instance's own leader.
    pub(super) fn owns(&self, id: InstanceId, ballot: Ballot, from: ReplicaId) -> bool {
        ballot.replica == from && (ballot.round > 0 || id.replica == from)
    }

    pub(super) fn handle_pre_accept(
        &mut self,
        from: ReplicaId,
        id: InstanceId,
        epoch: Epoch,
        ballot: Ballot,
        commands: Commands,
        init_deps: Deps,
    ) {
        if self.forgotten(id) {
            return; // executed and committed everywhere: a stale resend
        }
        if self.abstains(id) {
            return; // not ours to vote on (see `rejoin`)
        }
        let decided = self
            .instances
            .get(&id)
            .is_some_and(|i| i.status.is_decided());
        if !decided && self.above_seal(id, self.epoch_of(id, epoch)) {
            self.refuse_above_seal(from, id, ballot);
            return; // an old epoch's instance above what this replica sealed (see `seal`)
        }
        if let Some(inst) = self.instances.get(&id) {
            if ballot < inst.ballot {
                let promised = inst.ballot;
                self.nack(from, id, promised);
                return;
            }
            match inst.status {
                // A resent PreAccept: answer what we answered before.
                Status::PreAccepted if ballot == inst.ballot => {
                    let deps = inst.deps.clone();
                    self.send(
                        vec![from],
                        Message::PreAcceptOk {
                            instance: id,
                            ballot,
                            deps,
                        },
                    );
                    return;
                }
                Status::Committed | Status::Executed => {
                    self.send_commit(from, id);
                    return;
                }
                // Accepted already (the leader moved on) or a higher ballot's PreAccept: the
                // stale PreAccept changes nothing; recovery settles the instance.
                _ => return,
            }
        }
        let mut deps = init_deps.clone();
        if !self.opts.sabotage.forget_deps() {
            self.index.collect(id, &commands, false, &mut deps);
            self.add_horizon_deps(&mut deps);
            self.add_boundary_deps(epoch, &mut deps);
        }
        self.index.record(id, &commands);
        self.instances.insert(
            id,
            Instance {
                epoch,
                status: Status::PreAccepted,
                ballot,
                accepted_ballot: None,
                commands,
                deps: deps.clone(),
                init_deps: Some(init_deps),
            },
        );
        self.save(id);
        let answer = Message::PreAcceptOk {
            instance: id,
            ballot,
            deps,
        };
        // The answer is a vote: it leaves only once its record is durable (not early, unlike
        // the leader's PreAccept). A voter that crashed after answering and lost the record
        // could vote again with other deps, and the leader may have counted the first vote
        // in a fast quorum that recovery must find.
        if self.opts.sabotage.answer_before_durable() {
            self.send_early(vec![from], answer);
        } else {
            self.send(vec![from], answer);
        }
    }

    pub(super) fn handle_accept(
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
        let decided = self
            .instances
            .get(&id)
            .is_some_and(|i| i.status.is_decided());
        if !decided && !commands.is_empty() && self.above_seal(id, self.epoch_of(id, epoch)) {
            // A command above this replica's seal (see `seal`); a no-op is always accepted, so
            // old instances can finish.
            self.refuse_above_seal(from, id, ballot);
            return;
        }
        match self.instances.get_mut(&id) {
            Some(inst) if inst.status.is_decided() => {
                self.send_commit(from, id);
                return;
            }
            Some(inst) if ballot < inst.ballot => {
                let promised = inst.ballot;
                self.nack(from, id, promised);
                return;
            }
            Some(inst) => {
                let raised = ballot > inst.ballot;
                if !commands.is_empty() && !inst.epoch_fixed() {
                    // A command's Accept names the epoch its leader fixed (`recovering`); the
                    // record may hold a recoverer's guess.
                    inst.epoch = epoch;
                }
                inst.status = Status::Accepted;
                inst.ballot = ballot;
                inst.accepted_ballot = Some(ballot);
                inst.deps = deps;
                let old = std::mem::replace(&mut inst.commands, commands);
                if raised {
                    // Someone else took the instance over.
                    self.leading.remove(&id);
                    self.recovering.remove(&id);
                }
                self.commands_changed(id, &old);
            }
            None => {
                self.index.record(id, &commands);
                self.instances.insert(
                    id,
                    Instance {
                        epoch,
                        status: Status::Accepted,
                        ballot,
                        accepted_ballot: Some(ballot),
                        commands,
                        // We never saw the PreAccept; the initial deps are unknown here.
                        init_deps: None,
                        deps,
                    },
                );
            }
        }
        self.save(id);
        self.send(
            vec![from],
            Message::AcceptOk {
                instance: id,
                ballot,
            },
        );
    }

    // The Commit's fields as they come (the epoch is the eighth); a struct for them would be
    // `Message::Commit` again.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn handle_commit(
        &mut self,
        now: Time,
        from: ReplicaId,
        id: InstanceId,
        epoch: Epoch,
        ballot: Ballot,
        commands: Commands,
        deps: Deps,
    ) {
        if self.forgotten(id) {
            return; // executed here and everywhere: a stale resend
        }
        if let Some(kind) = self.commit_contradiction(id, &commands, &deps) {
            self.refuse(from, kind);
            return;
        }
        self.commit_here(now, id, epoch, ballot, commands, deps, None);
    }

    /// Answers a Watermark with the Commits the sender lacks, lowest slots first, at most
    /// `watermark_commits_max`.
    pub(super) fn handle_watermark(
        &mut self,
        from: ReplicaId,
        prefix: Vec<u64>,
        executed: Vec<u64>,
        collected: Vec<u64>,
    ) {
        if self.watermark_contradiction(&prefix, &executed) {
            self.refuse(from, Contradiction::WatermarkBeyond);
            return;
        }
        if self.check_left_behind(from, &collected) {
            return; // nothing more until a snapshot is installed
        }
        if let Some(known) = self.peer_committed.get_mut(from) {
            for (k, p) in known.iter_mut().zip(&prefix) {
                *k = (*k).max(*p);
            }
        }
        if let Some(known) = self.peer_executed.get_mut(from) {
            for (k, p) in known.iter_mut().zip(&executed) {
                *k = (*k).max(*p);
            }
        }
        if executed
            .iter()
            .zip(&self.gc_prefix)
            .any(|(e, collected)| e < collected)
        {
            // The sender is left behind: it needs a snapshot, not the Commits above what it
            // lacks (executing those first could order them before what it lacks; see
            // `collect`). Tell it at once.
            let msg = self.watermark();
            self.send(vec![from], msg);
            return;
        }
        let mut budget = self.opts.watermark_commits_max;
        // Slots looked at, sent or not: bounds the work one Watermark can cause.
        let mut scan = 16 * self.opts.watermark_commits_max;
        for (row_id, start) in (0..self.rows() as u32).map(ReplicaId).zip(prefix) {
            let mut slot = start;
            while slot < self.committed_end[row_id] && budget > 0 && scan > 0 {
                scan -= 1;
                let id = InstanceId::new(row_id, slot);
                if self
                    .instances
                    .get(&id)
                    .is_some_and(|i| i.status.is_decided())
                {
                    self.send_commit(from, id);
                    budget -= 1;
                }
                slot += 1;
            }
        }
    }

    pub(super) fn handle_commit_request(&mut self, from: ReplicaId, ids: Vec<InstanceId>) {
        for id in ids {
            if self
                .instances
                .get(&id)
                .is_some_and(|i| i.status.is_decided())
            {
                self.send_commit(from, id);
            }
        }
    }
}
