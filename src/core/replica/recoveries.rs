//! Recoveries in progress: the ballot, when it started, and which phase it is in.

use super::Time;
use crate::core::deps::Deps;
use crate::core::ids::{Ballot, InstanceId, ReplicaId};
use crate::core::message::{Commands, RecoverReply};

/// A recovery this replica runs (see `recovery` for the rules).
pub(super) struct Recovery {
    pub(super) ballot: Ballot,
    pub(super) started_at: Time,
    pub(super) phase: RecoveryPhase,
}

pub(super) enum RecoveryPhase {
    /// Waiting for RecoverOks (ours included).
    Recovering {
        replies: Vec<(ReplicaId, RecoverReply)>,
    },
    /// Waiting for the ValidateOks of the whole quorum.
    Validating {
        quorum: Vec<ReplicaId>,
        commands: Commands,
        deps: Deps,
        matching: usize,
        replies: Vec<(ReplicaId, Vec<(InstanceId, bool)>)>,
    },
    /// Waiting for `awaited` to commit here.
    Waiting {
        quorum: Vec<ReplicaId>,
        commands: Commands,
        deps: Deps,
        awaited: Vec<InstanceId>,
    },
}
