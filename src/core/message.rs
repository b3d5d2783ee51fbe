//! The protocol's messages between replicas, as the core sees them. `wire` converts them to and
//! from the protobuf contract.

use std::fmt;
use std::sync::Arc;

use crate::core::command::Command;
use crate::core::deps::Deps;
use crate::core::epoch::Epoch;
use crate::core::ids::{Ballot, InstanceId};
use crate::core::instance::Status;

/// A batch of commands decided together in one instance. Shared, never copied, between the
/// instance table and the messages that carry it.
pub type Commands = Arc<Vec<Command>>;

/// One protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Phase 1: the leader proposes `commands` with its initial dependencies.
    PreAccept {
        instance: InstanceId,
        /// The instance's epoch: whose votes count for it.
        epoch: Epoch,
        ballot: Ballot,
        commands: Commands,
        deps: Deps,
    },
    /// The leader's deps plus the interfering instances the sender knows.
    PreAcceptOk {
        instance: InstanceId,
        ballot: Ballot,
        deps: Deps,
    },
    /// Phase 2 (slow path): accept these final dependencies.
    Accept {
        instance: InstanceId,
        /// The instance's epoch: whose votes count for it.
        epoch: Epoch,
        ballot: Ballot,
        commands: Commands,
        deps: Deps,
    },
    /// The sender accepted at `ballot`.
    AcceptOk {
        instance: InstanceId,
        ballot: Ballot,
    },
    /// The instance is decided.
    Commit {
        instance: InstanceId,
        /// The instance's epoch: whose votes count for it.
        epoch: Epoch,
        ballot: Ballot,
        commands: Commands,
        deps: Deps,
    },
    /// The sender has promised `promised`, higher than the rejected message's ballot.
    Nack {
        instance: InstanceId,
        promised: Ballot,
    },
    /// Send me Commit for those of these instances you know to be committed.
    CommitRequest { instances: Vec<InstanceId> },
    /// Per row, the first slot the sender does not know to be committed (anti-entropy), the
    /// first it has not executed (garbage collection), and the first it still holds (below it
    /// everything was collected: a receiver that has not executed that far installs a
    /// snapshot; empty from a peer that never collects past anyone, i.e. all zeros).
    Watermark {
        committed_prefix: Vec<u64>,
        executed_prefix: Vec<u64>,
        collected_prefix: Vec<u64>,
    },
    /// Recovery: the sender takes the instance over at `ballot`.
    Recover {
        instance: InstanceId,
        /// The instance's epoch: whose votes count for it.
        epoch: Epoch,
        ballot: Ballot,
    },
    /// What the sender knows of the instance, having promised `ballot`.
    RecoverOk {
        instance: InstanceId,
        ballot: Ballot,
        reply: RecoverReply,
    },
    /// Recovery checks whether `commands` with `deps` may have been committed on the fast path.
    Validate {
        instance: InstanceId,
        /// The instance's epoch, as an answer revealed it or the recoverer holds it (see
        /// `RecoverReply::epoch`): which seal the receiver checks the vote against.
        epoch: Epoch,
        ballot: Ballot,
        commands: Commands,
        deps: Deps,
    },
    /// The interfering instances the sender knows that `deps` do not cover and that do not
    /// depend on the instance, each with whether it is committed at the sender.
    ValidateOk {
        instance: InstanceId,
        ballot: Ballot,
        conflicts: Vec<(InstanceId, bool)>,
    },
    /// The sender's recovery of `instance` waits, with `matching` pre-accepts that matched.
    Waiting { instance: InstanceId, matching: u32 },
    /// Phase 1 of deciding `epoch`'s boundary (single-decree Paxos among the epoch's members,
    /// see `replica::seal`): the sender asks for a promise at `ballot`.
    BoundaryPrepare { epoch: Epoch, ballot: Ballot },
    /// The sender, a member that sealed `epoch`, promises `ballot`: its seal (per row, one past
    /// the highest slot of that epoch it held when it sealed) and what it accepted last.
    BoundaryPromise {
        epoch: Epoch,
        ballot: Ballot,
        ends: Vec<u64>,
        accepted: Option<(Ballot, Vec<u64>)>,
    },
    /// The sender refuses a boundary Prepare or Accept below `promised`.
    BoundaryNack { epoch: Epoch, promised: Ballot },
    /// Phase 2: accept `ends` as `epoch`'s boundary at `ballot`.
    BoundaryAccept {
        epoch: Epoch,
        ballot: Ballot,
        ends: Vec<u64>,
    },
    /// The sender accepted the boundary proposed at `ballot`.
    BoundaryAccepted { epoch: Epoch, ballot: Ballot },
    /// `epoch`'s boundary is decided: `ends`.
    BoundaryDecided { epoch: Epoch, ends: Vec<u64> },
}

/// A replica's state of an instance, as a RecoverOk carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoverReply {
    /// `Initial`, `PreAccepted`, `Accepted` or `Committed` (never `Executed`).
    pub status: Status,
    pub accepted_ballot: Option<Ballot>,
    /// Empty: unknown (status `Initial`) or a no-op (accepted or committed).
    pub commands: Commands,
    pub deps: Deps,
    pub init_deps: Option<Deps>,
    /// The instance's epoch, where the sender holds its commands as its leader fixed them
    /// (pre-accepted, accepted or committed with a command: every holder names the same);
    /// `None` where it holds nothing or a no-op, whose epoch may be a recoverer's guess. A
    /// recoverer that does not know the epoch learns it here (`replica::recovering`).
    pub epoch: Option<Epoch>,
}

impl Message {
    /// The message's type, for metrics and traces.
    pub fn kind(&self) -> &'static str {
        match self {
            Message::PreAccept { .. } => "PreAccept",
            Message::PreAcceptOk { .. } => "PreAcceptOk",
            Message::Accept { .. } => "Accept",
            Message::AcceptOk { .. } => "AcceptOk",
            Message::Commit { .. } => "Commit",
            Message::Nack { .. } => "Nack",
            Message::CommitRequest { .. } => "CommitRequest",
            Message::Watermark { .. } => "Watermark",
            Message::Recover { .. } => "Recover",
            Message::RecoverOk { .. } => "RecoverOk",
            Message::Validate { .. } => "Validate",
            Message::ValidateOk { .. } => "ValidateOk",
            Message::Waiting { .. } => "Waiting",
            Message::BoundaryPrepare { .. } => "BoundaryPrepare",
            Message::BoundaryPromise { .. } => "BoundaryPromise",
            Message::BoundaryNack { .. } => "BoundaryNack",
            Message::BoundaryAccept { .. } => "BoundaryAccept",
            Message::BoundaryAccepted { .. } => "BoundaryAccepted",
            Message::BoundaryDecided { .. } => "BoundaryDecided",
        }
    }

    /// The instance the message is about, if it is about one.
    pub fn instance(&self) -> Option<InstanceId> {
        match self {
            Message::PreAccept { instance, .. }
            | Message::PreAcceptOk { instance, .. }
            | Message::Accept { instance, .. }
            | Message::AcceptOk { instance, .. }
            | Message::Commit { instance, .. }
            | Message::Nack { instance, .. }
            | Message::Recover { instance, .. }
            | Message::RecoverOk { instance, .. }
            | Message::Validate { instance, .. }
            | Message::ValidateOk { instance, .. }
            | Message::Waiting { instance, .. } => Some(*instance),
            Message::CommitRequest { .. }
            | Message::Watermark { .. }
            | Message::BoundaryPrepare { .. }
            | Message::BoundaryPromise { .. }
            | Message::BoundaryNack { .. }
            | Message::BoundaryAccept { .. }
            | Message::BoundaryAccepted { .. }
            | Message::BoundaryDecided { .. } => None,
        }
    }

    /// The ballot the message carries, if any.
    pub fn ballot(&self) -> Option<Ballot> {
        match self {
            Message::PreAccept { ballot, .. }
            | Message::PreAcceptOk { ballot, .. }
            | Message::Accept { ballot, .. }
            | Message::AcceptOk { ballot, .. }
            | Message::Commit { ballot, .. }
            | Message::Recover { ballot, .. }
            | Message::RecoverOk { ballot, .. }
            | Message::Validate { ballot, .. }
            | Message::ValidateOk { ballot, .. } => Some(*ballot),
            Message::Nack { promised, .. } => Some(*promised),
            Message::CommitRequest { .. }
            | Message::Watermark { .. }
            | Message::Waiting { .. }
            | Message::BoundaryPrepare { .. }
            | Message::BoundaryPromise { .. }
            | Message::BoundaryNack { .. }
            | Message::BoundaryAccept { .. }
            | Message::BoundaryAccepted { .. }
            | Message::BoundaryDecided { .. } => None,
        }
    }

    /// The epoch of the instance the message is about, where the message names it (the phase
    /// messages that may create the instance at the receiver, Commit, Recover and Validate,
    /// and a RecoverOk from a holder of the instance's commands).
    pub fn epoch(&self) -> Option<Epoch> {
        match self {
            Message::PreAccept { epoch, .. }
            | Message::Accept { epoch, .. }
            | Message::Commit { epoch, .. }
            | Message::Recover { epoch, .. }
            | Message::Validate { epoch, .. } => Some(*epoch),
            Message::RecoverOk { reply, .. } => reply.epoch,
            _ => None,
        }
    }

    /// The dependencies the message carries, if any.
    pub fn deps(&self) -> Option<&Deps> {
        match self {
            Message::PreAccept { deps, .. }
            | Message::PreAcceptOk { deps, .. }
            | Message::Accept { deps, .. }
            | Message::Commit { deps, .. }
            | Message::Validate { deps, .. } => Some(deps),
            Message::RecoverOk { reply, .. } => Some(&reply.deps),
            _ => None,
        }
    }
}

/// Shows an optional value as itself or `-`, for traces.
pub struct Show<T>(pub Option<T>);

impl<T: fmt::Display> fmt::Display for Show<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// Shows a dependency list (a [`Deps`], or any list of instances) as `[0.1,2.7]`, for traces.
pub struct ShowDeps<D>(pub Option<D>);

impl<'a, D: IntoIterator<Item = &'a InstanceId> + Copy> fmt::Display for ShowDeps<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(deps) = self.0 else {
            return f.write_str("-");
        };
        f.write_str("[")?;
        for (i, d) in deps.into_iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            d.fmt(f)?;
        }
        f.write_str("]")
    }
}
