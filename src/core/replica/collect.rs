//! Garbage collection and checkpoints: dropping instances executed here and committed
//! everywhere, and what a checkpoint or snapshot holds.

use super::Replica;
use crate::core::ids::{InstanceId, ReplicaId};
use crate::core::instance::{Instance, Status};

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
        );
        (encoded, live)
    }

    /// Whether `id` was dropped from memory (see `gc_prefix`).
    pub(super) fn forgotten(&self, id: InstanceId) -> bool {
        id.slot < self.gc_prefix[id.replica]
    }

    /// Drops the instances that are executed here and at every peer.
    pub(super) fn collect_garbage(&mut self) {
        for row in (0..self.opts.n as u32).map(ReplicaId) {
            // Executed everywhere, not just committed: recovery's Validate cannot see forgotten
            // instances, and ignoring them is safe only if every replica executed them before
            // anything recovered after them (see `recovery`).
            let mut limit = self.executed_prefix[row].min(self.committed_prefix[row]);
            for (peer, prefixes) in self.peer_executed.rows() {
                if peer != self.opts.id {
                    limit = limit.min(prefixes[row]);
                }
            }
            for slot in self.gc_prefix[row]..limit {
                let id = InstanceId::new(row, slot);
                debug_assert!(
                    self.instances
                        .get(&id)
                        .is_none_or(|i| i.status == Status::Executed),
                    "{id} collected before it executed"
                );
                self.instances.remove(&id);
            }
            self.gc_prefix[row] = self.gc_prefix[row].max(limit);
        }
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
