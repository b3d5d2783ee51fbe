//! What execution waits for: an uncommitted dependency, its fetches and its takeover.

use std::collections::BTreeSet;
use std::time::Duration;

use super::Time;
use crate::core::ids::InstanceId;

/// A dependency that execution waits for.
#[derive(Debug)]
pub(super) struct Waiting {
    /// Committed instances whose execution waits for it.
    pub(super) roots: BTreeSet<InstanceId>,
    pub(super) next_fetch: Time,
    pub(super) backoff: Duration,
    pub(super) fetches: u32,
    /// When to take the dependency over if it is still uncommitted, and the wait after that.
    pub(super) recover_at: Time,
    pub(super) recover_backoff: Duration,
}
