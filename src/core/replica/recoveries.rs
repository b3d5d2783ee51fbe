//! Recoveries in progress: the ballot, when it started, and which phase it is in.

use super::Time;
use crate::core::deps::Deps;
use crate::core::epoch::Epoch;
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

/// A recovery of an instance this replica knows only as a dependency, so without its epoch:
/// every epoch it may be of was asked, and until an answer reveals which (a holder of its
/// commands names it), a quorum of each must answer and accept (see `recovering`).
pub(super) struct EpochUnknown {
    /// The epochs the instance may be of, oldest first.
    pub(super) candidates: Vec<Epoch>,
    /// Every epoch this replica's recoveries of the instance asked (the candidates of earlier
    /// attempts too): their members' answers may still come, and are no contradiction.
    pub(super) asked: Vec<Epoch>,
    /// The epoch an answer revealed: from then on its quorums alone count.
    pub(super) revealed: Option<Epoch>,
}
