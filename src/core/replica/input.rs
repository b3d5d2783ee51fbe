//! Peer input that no correct peer can send: rejected before it changes anything
//! ([`Reject`]), or refused as contradicting what this replica knows ([`Contradiction`]).

use super::{Contradiction, Reject, Replica};
use crate::core::deps::Deps;
use crate::core::ids::{Ballot, InstanceId, ReplicaId, SLOT_LIMIT};
use crate::core::message::{Commands, Message};

impl Replica {
    /// Refuses a message that cannot exist: a sender outside the cluster (or this replica), any
    /// replica id outside the cluster, a slot at or above [`SLOT_LIMIT`], an instance of this
    /// replica's own row it never created, an instance depending on itself, a ballot its sender
    /// cannot hold (see [`Reject::Ballot`]), or an implausible count. `wire` already refuses
    /// replica ids outside the cluster; the core checks everything again because it is also fed
    /// directly (simulator, tests) and because the rest needs its state (its next slot).
    pub(super) fn check_input(&self, from: ReplicaId, msg: &Message) -> Result<(), Reject> {
        // Ids are checked against every row known here (epoch 0's ids and those added since).
        let (n, me) = (self.rows(), self.opts.id);
        if from.index() >= n || from == me {
            return Err(Reject::Sender);
        }
        let own_row_known = self.knows_own_row();
        let id_ok = |id: InstanceId| {
            if id.replica.index() >= n {
                Err(Reject::UnknownReplica)
            } else if id.slot >= SLOT_LIMIT {
                Err(Reject::ImplausibleSlot)
            } else if own_row_known && self.never_created(id) {
                Err(Reject::UnknownOwnInstance)
            } else {
                Ok(())
            }
        };
        // Round 0 is the instance's original leader's: no other replica ever holds it.
        let ballot_ok = |id: InstanceId, b: Ballot| {
            if b.replica.index() >= n {
                Err(Reject::UnknownReplica)
            } else if b.round == 0 && b.replica != id.replica {
                Err(Reject::Ballot)
            } else {
                Ok(())
            }
        };
        let deps_ok = |id: InstanceId, deps: &Deps| {
            deps.iter().try_for_each(|d| id_ok(*d))?;
            if deps.contains(id) {
                return Err(Reject::SelfDependency);
            }
            Ok(())
        };
        // A boundary's ballot names a replica known here; its ends (a seal, or a boundary) one
        // entry per row known at most, each one past a slot: at most `SLOT_LIMIT`.
        let boundary_ballot_ok = |b: Ballot| {
            if b.replica.index() >= n {
                Err(Reject::UnknownReplica)
            } else {
                Ok(())
            }
        };
        let ends_ok = |ends: &[u64]| {
            if ends.len() > n {
                Err(Reject::UnknownReplica)
            } else if ends.iter().any(|e| *e > SLOT_LIMIT) {
                Err(Reject::ImplausibleSlot)
            } else {
                Ok(())
            }
        };
        // Phase messages come from the ballot's owner; recovery never uses round 0.
        let sent_by_owner = |id: InstanceId, b: Ballot, recovery: bool| {
            if self.owns(id, b, from) && !(recovery && b.round == 0) {
                Ok(())
            } else {
                Err(Reject::Ballot)
            }
        };
        if let Some(id) = msg.instance() {
            id_ok(id)?;
        }
        match msg {
            Message::PreAccept {
                instance,
                ballot,
                deps,
                ..
            }
            | Message::Accept {
                instance,
                ballot,
                deps,
                ..
            } => {
                ballot_ok(*instance, *ballot)?;
                deps_ok(*instance, deps)?;
                sent_by_owner(*instance, *ballot, false)
            }
            Message::PreAcceptOk {
                instance,
                ballot,
                deps,
            }
            | Message::Commit {
                instance,
                ballot,
                deps,
                ..
            } => {
                ballot_ok(*instance, *ballot)?;
                deps_ok(*instance, deps)
            }
            Message::AcceptOk { instance, ballot } => ballot_ok(*instance, *ballot),
            Message::Nack { instance, promised } => ballot_ok(*instance, *promised),
            Message::CommitRequest { instances } => instances.iter().try_for_each(|i| id_ok(*i)),
            Message::Watermark {
                committed_prefix,
                executed_prefix,
                collected_prefix,
            } => {
                if committed_prefix.len() > n
                    || executed_prefix.len() > n
                    || collected_prefix.len() > n
                {
                    return Err(Reject::UnknownReplica);
                }
                // A prefix is one past a slot: at most `SLOT_LIMIT`.
                if committed_prefix
                    .iter()
                    .chain(executed_prefix)
                    .chain(collected_prefix)
                    .any(|p| *p > SLOT_LIMIT)
                {
                    return Err(Reject::ImplausibleSlot);
                }
                Ok(())
            }
            Message::Recover {
                instance, ballot, ..
            } => {
                ballot_ok(*instance, *ballot)?;
                sent_by_owner(*instance, *ballot, true)
            }
            Message::RecoverOk {
                instance,
                ballot,
                reply,
            } => {
                ballot_ok(*instance, *ballot)?;
                if let Some(ab) = reply.accepted_ballot {
                    ballot_ok(*instance, ab)?;
                    // The sender promised `ballot`, at or above anything it accepted.
                    if ab > *ballot {
                        return Err(Reject::Ballot);
                    }
                }
                deps_ok(*instance, &reply.deps)?;
                if let Some(init) = &reply.init_deps {
                    deps_ok(*instance, init)?;
                }
                Ok(())
            }
            Message::Validate {
                instance,
                ballot,
                deps,
                ..
            } => {
                ballot_ok(*instance, *ballot)?;
                deps_ok(*instance, deps)?;
                sent_by_owner(*instance, *ballot, true)
            }
            Message::ValidateOk {
                instance,
                ballot,
                conflicts,
            } => {
                ballot_ok(*instance, *ballot)?;
                for (other, _) in conflicts {
                    id_ok(*other)?;
                    if other == instance {
                        return Err(Reject::SelfDependency);
                    }
                }
                Ok(())
            }
            Message::Waiting { matching, .. } => {
                if *matching as usize > n {
                    return Err(Reject::ImplausibleCount);
                }
                Ok(())
            }
            Message::BoundaryPrepare { ballot, .. }
            | Message::BoundaryNack {
                promised: ballot, ..
            }
            | Message::BoundaryAccepted { ballot, .. } => boundary_ballot_ok(*ballot),
            Message::BoundaryPromise {
                ballot,
                ends,
                accepted,
                ..
            } => {
                boundary_ballot_ok(*ballot)?;
                ends_ok(ends)?;
                if let Some((b, ends)) = accepted {
                    boundary_ballot_ok(*b)?;
                    ends_ok(ends)?;
                }
                Ok(())
            }
            Message::BoundaryAccept { ballot, ends, .. } => {
                boundary_ballot_ok(*ballot)?;
                ends_ok(ends)
            }
            Message::BoundaryDecided { ends, .. } => ends_ok(ends),
        }
    }

    /// Whether `msg` contradicts the membership of the epoch it concerns (see `epoch`): it names
    /// an epoch this replica has not learnt, or it is a vote (or a PreAccept) from a replica
    /// that is not a member of the instance's epoch. A vote is checked against the epoch of
    /// the instance as this replica holds it (a vote on an instance it does not hold is
    /// dropped by its handler anyway); a PreAccept against the epoch it names, since only a
    /// member of an epoch leads instances in it.
    pub(super) fn membership_contradiction(
        &self,
        from: ReplicaId,
        msg: &Message,
    ) -> Option<Contradiction> {
        if let Some(epoch) = msg.epoch() {
            let Some(config) = self.configuration_of(epoch) else {
                return Some(Contradiction::UnknownEpoch);
            };
            if matches!(msg, Message::PreAccept { .. }) && !config.is_member(from) {
                return Some(Contradiction::NotMember);
            }
        }
        let vote = matches!(
            msg,
            Message::PreAcceptOk { .. }
                | Message::AcceptOk { .. }
                | Message::RecoverOk { .. }
                | Message::ValidateOk { .. }
        );
        let id = msg.instance()?;
        // Judged only where it would count (a recovery or a phase led here): a late answer to
        // a recovery that asked every epoch an instance might be of, or one reaching a
        // replica that restarted since, counts nowhere (see `recovering`).
        let counted = match msg {
            Message::RecoverOk { .. } | Message::ValidateOk { .. } => {
                self.recovering.contains_key(&id)
            }
            _ => self.leading.contains_key(&id),
        };
        let asked = self.unknown_epochs.get(&id).is_some_and(|u| {
            u.asked
                .iter()
                .any(|e| self.configuration_of(*e).is_some_and(|c| c.is_member(from)))
        });
        if vote && counted && !asked && !self.votes_on(id, from) {
            return Some(Contradiction::NotMember);
        }
        None
    }

    /// Whether a Commit of `id` contradicts what this replica knows for certain (see
    /// [`Contradiction`]). Agreement makes every correct Commit of an instance carry the one
    /// decided value, and only an instance's leader puts commands in it (recovery carries them
    /// on or decides a no-op), so none of these can come from a correct peer.
    pub(super) fn commit_contradiction(
        &self,
        id: InstanceId,
        commands: &Commands,
        deps: &Deps,
    ) -> Option<Contradiction> {
        if self.never_created(id) {
            // Reached only after a rejoin: before, `check_input` rejected it as
            // `UnknownOwnInstance`.
            debug_assert!(!self.knows_own_row(), "{id} passed check_input");
            return Some(Contradiction::CommitUnproposed);
        }
        let inst = self.instances.get(&id)?;
        let differs = if inst.status.is_decided() {
            inst.commands != *commands || inst.deps != *deps
        } else {
            !inst.commands.is_empty() && !commands.is_empty() && inst.commands != *commands
        };
        differs.then_some(Contradiction::CommitDiffers)
    }

    /// Whether `id` is a slot of this replica's own row at or past its next slot: one it never
    /// created. One situation, two names by what this replica can know:
    /// - it never lost its data ([`Replica::knows_own_row`]): no correct peer can name such a
    ///   slot in anything, and every message that does is rejected
    ///   ([`Reject::UnknownOwnInstance`]);
    /// - it rejoined: its old incarnation may have created such slots that no peer knew at
    ///   its Join (the horizons cover every slot a peer knew, as a dependency too: see
    ///   `peer_rejoined`), so naming one proves nothing; only a Commit of one is refused
    ///   ([`Contradiction::CommitUnproposed`]), since committing it here would put a decided
    ///   value in a slot this replica gives its own next commands.
    fn never_created(&self, id: InstanceId) -> bool {
        id.replica == self.opts.id && id.slot >= self.next_slot
    }

    /// Whether this replica knows every slot its row ever had: it never lost its data (no
    /// horizons), so its next slot is past all of them.
    fn knows_own_row(&self) -> bool {
        self.horizons.iter().all(|h| *h == 0)
    }

    /// Whether a Watermark claims more than its sender can have (see
    /// [`Contradiction::WatermarkBeyond`]). Claims about other rows cannot be checked here:
    /// the sender may know commits this replica has not seen yet.
    pub(super) fn watermark_contradiction(&self, committed: &[u64], executed: &[u64]) -> bool {
        if self.opts.sabotage.trust_watermarks() {
            return false;
        }
        let me = self.opts.id.index();
        executed.iter().zip(committed).any(|(e, c)| e > c)
            || committed.get(me).is_some_and(|c| *c > self.next_slot)
            || executed.get(me).is_some_and(|e| *e > self.next_slot)
    }
}
