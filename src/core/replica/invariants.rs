//! What this replica can check alone after any step.

use super::Replica;
use crate::core::ids::InstanceId;
use crate::core::instance::{Instance, Status};

impl Replica {
    /// After every input in debug builds (compiled out of release ones): a broken invariant is
    /// a bug in this core, stopped at the step that broke it rather than where it shows.
    pub(super) fn debug_check_invariants(&self) {
        if cfg!(debug_assertions) {
            if let Err(e) = self.check_step_invariants() {
                panic!("replica {}: invariant broken: {e}", self.opts.id);
            }
        }
    }

    /// Checks the invariants this replica can check alone. For tests and the simulator. Walks
    /// every instance: [`Replica::check_step_invariants`] is the cheap check for every step.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.check_step_invariants()?;
        self.kv.sessions().check()?;
        let mut unexecuted = 0;
        for (id, inst) in &self.instances {
            if inst.status == Status::Committed {
                unexecuted += 1;
            }
            check_instance(*id, inst)?;
        }
        // A recovery in progress ends when its instance commits or its promise moves on
        // (`recovery_accept` relies on it).
        for (id, rec) in &self.recovering {
            match self.instances.get(id) {
                None => return Err(format!("recovering {id}, which is not in the table")),
                Some(i) if i.status.is_decided() => {
                    return Err(format!("recovering {id}, which is decided"))
                }
                Some(i) if i.ballot != rec.ballot => {
                    return Err(format!(
                        "recovering {id} at {} but its ballot is {}",
                        rec.ballot, i.ballot
                    ))
                }
                Some(_) => {}
            }
        }
        if unexecuted != self.unexecuted {
            return Err(format!(
                "unexecuted counter {} but {unexecuted} committed instances wait",
                self.unexecuted
            ));
        }
        Ok(())
    }

    /// What can be checked after every step at a cost bounded by the step's own work: the
    /// pending queue and the led instances (both bounded by limits), and every instance that
    /// changed since the last [`Replica::take_ready`] (each change is saved, see `save`).
    pub fn check_step_invariants(&self) -> Result<(), String> {
        let pending_bytes: usize = self.pending.iter().map(|c| c.op.size_bytes()).sum();
        if pending_bytes != self.pending_bytes {
            return Err(format!(
                "pending commands hold {pending_bytes} bytes, counted {}",
                self.pending_bytes
            ));
        }
        for id in self.leading.keys() {
            if self.instances.get(id).is_none_or(|i| i.status.is_decided()) {
                return Err(format!("leading {id} which is decided or unknown"));
            }
        }
        for (id, _) in &self.ready.persist {
            if let Some(inst) = self.instances.get(id) {
                check_instance(*id, inst)?;
            }
        }
        Ok(())
    }
}

/// What holds of every instance on its own.
fn check_instance(id: InstanceId, inst: &Instance) -> Result<(), String> {
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
    Ok(())
}
