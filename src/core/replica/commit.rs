//! The one commit path: every instance that becomes committed here, led, learnt or recovered,
//! goes through `commit_here`, then `on_committed` starts its execution.

use std::collections::HashMap;
use std::time::Duration;

use super::{Committed, Path, Replica, Time};
use crate::core::command::Command;
use crate::core::deps::Deps;
use crate::core::epoch::Epoch;
use crate::core::ids::{Ballot, InstanceId, ReplicaId};
use crate::core::instance::{Instance, Status};
use crate::core::limits;
use crate::core::message::Commands;

impl Replica {
    /// Commits `id` here with a decided value (decided as its leader, learnt from a Commit, or
    /// found by recovery): the one commit path.
    // The decided value's parts and where it came from; the epoch is only read for an
    // instance learnt here for the first time.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn commit_here(
        &mut self,
        now: Time,
        id: InstanceId,
        epoch: Epoch,
        ballot: Ballot,
        commands: Commands,
        deps: Deps,
        led: Option<(Path, Duration)>,
    ) {
        match self.instances.get_mut(&id) {
            Some(inst) if inst.status.is_decided() => return,
            Some(inst) => {
                if !commands.is_empty() && !inst.epoch_fixed() {
                    // A command's Commit names the epoch its leader fixed; the record may hold
                    // a recoverer's guess (`recovering`).
                    inst.epoch = epoch;
                }
                inst.status = Status::Committed;
                inst.ballot = inst.ballot.max(ballot);
                let old = std::mem::replace(&mut inst.commands, commands.clone());
                if !self.opts.sabotage.keep_own_deps_on_commit() {
                    inst.deps = deps;
                }
                self.commands_changed(id, &old);
            }
            None => {
                self.index.record(id, &commands);
                self.instances.insert(
                    id,
                    Instance {
                        epoch,
                        status: Status::Committed,
                        ballot,
                        accepted_ballot: None,
                        commands: commands.clone(),
                        init_deps: None,
                        deps,
                    },
                );
            }
        }
        self.leading.remove(&id);
        self.recovering.remove(&id);
        self.announced.remove(&id);
        self.save(id);
        self.committed_count += 1;
        self.unexecuted += 1;
        self.ready.committed.push(Committed {
            instance: id,
            led,
            commands: commands.len(),
        });
        self.on_committed(now, id);
    }

    /// The commands of `id` were `old` and are now whatever the instance holds: a command
    /// learnt goes into the conflict index; a command replaced by a no-op is proposed again for
    /// the clients waiting here (exactly-once execution absorbs a command that also survives
    /// elsewhere).
    pub(super) fn commands_changed(&mut self, id: InstanceId, old: &Commands) {
        let Some(inst) = self.instances.get(&id) else {
            panic!("the commands of {id} changed, but it is not in the table");
        };
        if old.is_empty() && !inst.commands.is_empty() {
            let commands = inst.commands.clone();
            self.index.record(id, &commands);
        } else if !old.is_empty() && inst.commands.is_empty() && !self.removed() {
            // (A removed replica starts no instance: its clients time out and retry elsewhere.)
            for cmd in old.iter() {
                if self.clients.contains_key(&(cmd.client, cmd.request)) {
                    self.pending_bytes += cmd.op.size_bytes();
                    // A second copy: the first may yet be decided and executed (this replica
                    // saw it replaced by a no-op in a recovery that may lose), so it is a
                    // retry, which never starts a session again once that one expired.
                    self.pending.push_back(Command {
                        retry: true,
                        ..cmd.clone()
                    });
                }
            }
        }
    }

    /// Needs the slots of `row` from `from` up to `covered` that are not decided here, at most
    /// `OWN_SLOTS_UNSYNCED_MAX` of them from `from` on: they are fetched, then recovered, at
    /// once rather than one after another. A restarted leader leaves a run that long of slots
    /// nobody may know (see `skip_unsynced_slots`); if it cannot settle them itself (cut off,
    /// wiped), the peers that find them in the way would otherwise pay a recovery timeout for
    /// each in turn.
    fn need_gaps(&mut self, now: Time, row: ReplicaId, from: u64, covered: u64) {
        let last = covered.min(from + limits::OWN_SLOTS_UNSYNCED_MAX - 1);
        for slot in from..=last {
            let id = InstanceId::new(row, slot);
            if !self
                .instances
                .get(&id)
                .is_some_and(|i| i.status.is_decided())
            {
                self.need(now, id);
            }
        }
    }

    /// Moves the committed prefix and end of `id`'s row past `id` where it can.
    pub(super) fn advance_prefix(&mut self, id: InstanceId) {
        let row = id.replica;
        self.committed_end[row] = self.committed_end[row].max(id.slot + 1);
        let mut p = self.committed_prefix[row];
        while self
            .instances
            .get(&InstanceId::new(id.replica, p))
            .is_some_and(|i| i.status.is_decided())
        {
            p += 1;
        }
        self.committed_prefix[row] = p;
    }

    /// `id` became committed: try to execute it and whatever waited for it.
    pub(super) fn on_committed(&mut self, now: Time, id: InstanceId) {
        self.recheck_waiting(now, id);
        self.advance_prefix(id);
        if let Some(inst) = self.instances.get(&id) {
            self.to_execute.insert(id, &inst.commands);
        }
        let mut roots = vec![id];
        if let Some(w) = self.waiting.remove(&id) {
            roots.extend(w.roots);
        }
        // Instances that waited for this row's committed prefix to pass a slot it now passed.
        let row = id.replica;
        let passed = self.committed_prefix[row];
        let still = self.prefix_waiters[row].split_off(&passed);
        for (_, waiters) in std::mem::replace(&mut self.prefix_waiters[row], still) {
            roots.extend(waiters);
        }
        if let Some((&covered, _)) = self.prefix_waiters[row].last_key_value() {
            // Some still wait for this row: its next gaps are needed (fetched, then recovered).
            self.need_gaps(now, row, passed, covered);
        }
        // Instances found blocked during this pass, with what blocks them: a root among them
        // is registered without walking the graph again.
        let mut blocked_now: HashMap<InstanceId, InstanceId> = HashMap::new();
        for root in roots {
            if let Some(missing) = blocked_now.get(&root) {
                self.wait_for(now, *missing, root);
                continue;
            }
            // A root whose own deps cover an uncommitted slot waits, without a walk, until its
            // row's committed prefix passes the covered slot (and the gap is fetched or
            // recovered meanwhile): a replica catching up (restarted, or after a partition)
            // would otherwise walk, or requeue, its whole blocked backlog for every commit.
            let gap = self.instances.get(&root).and_then(|i| {
                i.deps.iter().find_map(|d| {
                    let p = self.committed_prefix[d.replica];
                    (p <= d.slot).then_some((InstanceId::new(d.replica, p), *d))
                })
            });
            if let Some((gap, covered)) = gap {
                self.prefix_waiters[covered.replica]
                    .entry(covered.slot)
                    .or_default()
                    .push(root);
                self.need_gaps(now, covered.replica, gap.slot, covered.slot);
                continue;
            }
            if let Some((missing, waiting)) = self.try_execute(root) {
                self.wait_for(now, missing, root);
                for w in waiting {
                    blocked_now.insert(w, missing);
                }
            }
        }
    }
}
