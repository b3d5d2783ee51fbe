//! What this replica can check alone after any step.

use std::collections::HashSet;

use super::Replica;
use crate::core::instance::Status;

impl Replica {
    /// Checks the invariants this replica can check alone. For tests and the simulator.
    pub fn check_invariants(&self) -> Result<(), String> {
        let pending_bytes: usize = self.pending.iter().map(|c| c.op.size_bytes()).sum();
        if pending_bytes != self.pending_bytes {
            return Err(format!(
                "pending commands hold {pending_bytes} bytes, counted {}",
                self.pending_bytes
            ));
        }
        let mut unexecuted = 0;
        for (id, inst) in &self.instances {
            if inst.status == Status::Committed {
                unexecuted += 1;
            }
            if let Some(ab) = inst.accepted_ballot {
                if ab > inst.ballot {
                    return Err(format!(
                        "{id}: accepted ballot {ab} above ballot {}",
                        inst.ballot
                    ));
                }
            }
            if inst.deps.contains(id) {
                return Err(format!("{id} depends on itself"));
            }
        }
        if unexecuted != self.unexecuted {
            return Err(format!(
                "unexecuted counter {} but {unexecuted} committed instances wait",
                self.unexecuted
            ));
        }
        let leading: HashSet<_> = self.leading.keys().collect();
        for id in leading {
            if self.instances.get(id).is_none_or(|i| i.status.is_decided()) {
                return Err(format!("leading {id} which is decided or unknown"));
            }
        }
        Ok(())
    }
}
