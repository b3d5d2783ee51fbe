//! The two hooks the epoch boundary plugs into (docs/membership.md, "The epoch boundary").
//! Placeholders with trivial bodies: branch `seal15` replaces this file with `seal.rs`, which
//! seals the old epoch and holds new instances back until the boundary is known.

use super::Replica;
use crate::core::epoch::Configuration;

impl Replica {
    /// Called when this replica executes the change from `old` to `new`, before anything of
    /// `new` happens here. Placeholder: seals nothing (seal15).
    pub(crate) fn seal_epoch(&mut self, _old: &Configuration, _new: &Configuration) {}

    /// Whether this replica may start instances in its current epoch now (proposals wait
    /// queued while not). Placeholder: always (seal15).
    pub(crate) fn may_start_instances(&self) -> bool {
        true
    }
}
