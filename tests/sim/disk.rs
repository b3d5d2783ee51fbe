//! Simulated storage: what each replica's disk holds, written like the runtime writes it.
//!
//! The crash model keeps exactly what the real replica persists. Each replica has a disk: every
//! `Ready.persist` record it produced, in order (what the runtime appends and syncs before it
//! sends anything of that `Ready`). A crash happens between steps, after a `Ready` was carried
//! out whole, or, when torn, during the next step: that step's messages and replies never leave
//! and only a prefix of its records reaches the disk (the log's torn tail is cut at a record
//! boundary). With `gc_executed`, a replica also checkpoints like the runtime (see
//! `Config::checkpoint_every`): the disk keeps the encoded checkpoint, then its records are
//! replaced by the live ones; a crash may hit between the two (`Config::checkpoint_crash`,
//! `Action::CrashAtCheckpoint`), leaving the new checkpoint beside the old, uncut log.
//! `Config::sabotage_disk` makes the disk lose records, to show that `Check::Durability` fails.

use std::time::Duration;

use epaxos_kv::core::ids::InstanceId;
use epaxos_kv::core::instance::Instance;
use epaxos_kv::core::quorum;
use epaxos_kv::core::replica::Ready;

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
