//! Simulated storage: what each replica's disk holds, written like the runtime writes it.
//!
//! The crash model keeps exactly what the real replica persists. Each replica has a disk: every
//! `Ready.persist` record it produced, in order (what the runtime appends and syncs before it
//! sends anything of that `Ready` but its early messages, `Ready::early`). A crash happens
//! between steps, after a `Ready` was carried out whole, or, when torn, during the next step,
//! in the window where its records are written but not yet synced: that step's early messages
//! (new instances' PreAccepts) have left, its other messages and replies never leave, and only
//! a prefix of its records reaches the disk (the log's torn tail is cut at a record boundary). With `gc_executed`, a replica also checkpoints like the runtime (see
//! `Config::checkpoint_every`): the disk keeps the encoded checkpoint, then its records are
//! replaced by the live ones; a crash may hit between the two (`Config::checkpoint_crash`,
//! `Action::CrashAtCheckpoint`), leaving the new checkpoint beside the old, uncut log.
//! `Config::sabotage_disk` makes the disk lose records, to show that `Check::Durability` fails.

use std::time::Duration;

use epaxos_kv::core::ids::{Ballot, InstanceId, ReplicaId};
use epaxos_kv::core::instance::{Instance, Status};
use epaxos_kv::core::message::Message;
use epaxos_kv::core::quorum;
use epaxos_kv::core::replica::{Outgoing, Ready};
use epaxos_kv::core::testkit::envelopes;

use super::cluster::{Fault, Life, CHECKPOINT_CYCLES, SCRIPTED};
use super::trace::What;
use super::world::{Event, Sim};

impl Sim {
    /// Like the runtime after carrying out a `Ready`: when the node says a checkpoint is due
    /// (`Node::poll_checkpoint`), store it, then replace the log by the live records (at once:
    /// the runtime does it on another thread while the node goes on). A crash may hit between
    /// the two: the new checkpoint then sits beside the old, uncut log, and the replica is down.
    pub(super) fn maybe_checkpoint(&mut self, r: usize) {
        let Some(job) = self.nodes[r].poll_checkpoint() else {
            return;
        };
        self.nodes[r].checkpoint_written();
        let (bytes, live) = (job.checkpoint, job.records);
        let collected = self.nodes[r].replica().collected();
        self.stats.checkpoints += 1;
        let size = bytes.len();
        self.checkpoint[r] = Some(bytes);
        let crash = if std::mem::take(&mut self.crash_at_checkpoint[r]) {
            Some(SCRIPTED)
        } else {
            let down = self.impaired_except(r);
            let f = quorum::max_failures(self.cfg.n);
            let room = !self.settling && down + self.crashes_ahead < f;
            (room && self.checkpoint_rng.chance(self.cfg.checkpoint_crash))
                .then_some(CHECKPOINT_CYCLES + self.stats.checkpoint_crashes)
        };
        if let Some(cycle) = crash {
            self.life[r] = Life::Down(cycle);
            self.stats.checkpoint_crashes += 1;
            self.trace.record(
                self.now,
                What::Fault(format!(
                    "r{r} crashes after storing a checkpoint ({collected} collected, {size} \
                     bytes) and before cutting its log of {} records to {}",
                    self.disk[r].len(),
                    live.len()
                )),
            );
            if cycle != SCRIPTED {
                let down = *self.checkpoint_rng.pick(&[1, 5, 40, 300]);
                let down = self.checkpoint_rng.range(down / 2, down);
                let back = (self.now + Duration::from_millis(down)).min(self.cfg.chaos);
                self.schedule_at(back, Event::Fault(Fault::Restart { r, cycle }));
            }
            return;
        }
        self.trace.record(
            self.now,
            What::Fault(format!(
                "r{r} checkpoints ({collected} collected, {size} bytes) and cuts its log of {} \
                 records to {}",
                self.disk[r].len(),
                live.len()
            )),
        );
        for (id, inst) in &live {
            self.durable[r].insert(*id, inst.clone());
        }
        self.disk[r] = live;
    }

    /// Appends `records` to `r`'s disk.
    pub(super) fn write_disk(&mut self, r: usize, records: &[(InstanceId, Instance)]) {
        for (id, inst) in records {
            self.stats.records += 1;
            if self.cfg.sabotage_disk && self.stats.records.is_multiple_of(5) {
                continue;
            }
            self.durable[r].insert(*id, inst.clone());
            self.disk[r].push((*id, inst.clone()));
        }
    }

    /// The torn crash of `r`: `ready` is lost but for a prefix of its records, which reached
    /// the disk before the crash (the log cuts a torn tail at a record boundary).
    pub(super) fn torn_crash(&mut self, r: usize, cycle: u64, ready: Ready) {
        let total = ready.persist.len();
        let kept = self.rng.range(0, total as u64) as usize;
        self.write_disk(r, &ready.persist[..kept]);
        self.life[r] = Life::Down(cycle);
        self.stats.torn += 1;
        self.trace.record(
            self.now,
            What::Fault(format!(
                "r{r} crashes mid-step: {kept} of {total} records reached its disk; {} messages \
                 and {} replies lost",
                ready.messages.len(),
                ready.replies.len()
            )),
        );
    }
}

impl Sim {
    /// Sends what `r` may send before this step's records (`persist`) are written and synced,
    /// like the runtime does: a new instance's first PreAccept (see `replica::leader`). It is
    /// checked exactly: it is a PreAccept at ballot 0 of an instance of `r`'s own row whose
    /// record (with the same commands and initial deps) is in `persist`, and it is the first
    /// ever sent for that instance (a restart must never start a slot again: see
    /// `Replica::skip_unsynced_slots`). Any other message sent early must already be durable,
    /// like every message (`check_durable`, against the disk before this step's records).
    pub(super) fn send_early(
        &mut self,
        r: usize,
        persist: &[(InstanceId, Instance)],
        early: Vec<Outgoing>,
    ) {
        for out in &early {
            match &out.msg {
                Message::PreAccept {
                    instance,
                    ballot,
                    commands,
                    deps,
                    epoch,
                } if instance.replica.index() == r
                    && *ballot == Ballot::initial(instance.replica)
                    && persist.iter().any(|(id, i)| {
                        id == instance
                            && i.status == Status::PreAccepted
                            && i.ballot == *ballot
                            && i.init_deps.as_ref() == Some(deps)
                            && i.epoch == *epoch
                            && *i.commands == **commands
                    }) =>
                {
                    if !self.started.insert(*instance) {
                        self.durability_violation(
                            format!(
                                "r{r} started {instance} again at ballot 0: a PreAccept for it \
                                 left early before, and a crash lost its record"
                            ),
                            *instance,
                        );
                    }
                }
                msg => self.check_durable(r, msg),
            }
        }
        for envelope in envelopes(ReplicaId(r as u32), early) {
            self.send(envelope);
        }
    }
}
