//! The protocol's messages between replicas, as the core sees them. `wire` converts them to and
//! from the protobuf contract.

use std::fmt;
use std::sync::Arc;

use crate::command::Command;
use crate::ids::{Ballot, InstanceId};

/// A batch of commands decided together in one instance. Shared, never copied, between the
/// instance table and the messages that carry it.
pub type Commands = Arc<Vec<Command>>;

/// One protocol message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// Phase 1: the leader proposes `commands` with its initial dependencies.
    PreAccept {
        instance: InstanceId,
        ballot: Ballot,
        commands: Commands,
        deps: Vec<InstanceId>,
    },
    /// The leader's deps plus the interfering instances the sender knows.
    PreAcceptOk {
        instance: InstanceId,
        ballot: Ballot,
        deps: Vec<InstanceId>,
    },
    /// Phase 2 (slow path): accept these final dependencies.
    Accept {
        instance: InstanceId,
        ballot: Ballot,
        commands: Commands,
        deps: Vec<InstanceId>,
    },
    /// The sender accepted at `ballot`.
    AcceptOk {
        instance: InstanceId,
        ballot: Ballot,
    },
    /// The instance is decided.
    Commit {
        instance: InstanceId,
        ballot: Ballot,
        commands: Commands,
        deps: Vec<InstanceId>,
    },
    /// The sender has promised `promised`, higher than the rejected message's ballot.
    Nack {
        instance: InstanceId,
        promised: Ballot,
    },
    /// Send me Commit for those of these instances you know to be committed.
    CommitRequest { instances: Vec<InstanceId> },
    /// Per row, the first slot the sender does not know to be committed (anti-entropy).
    Watermark { committed_prefix: Vec<u64> },
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
            | Message::Nack { instance, .. } => Some(*instance),
            Message::CommitRequest { .. } | Message::Watermark { .. } => None,
        }
    }

    /// The ballot the message carries, if any.
    pub fn ballot(&self) -> Option<Ballot> {
        match self {
            Message::PreAccept { ballot, .. }
            | Message::PreAcceptOk { ballot, .. }
            | Message::Accept { ballot, .. }
            | Message::AcceptOk { ballot, .. }
            | Message::Commit { ballot, .. } => Some(*ballot),
            Message::Nack { promised, .. } => Some(*promised),
            Message::CommitRequest { .. } | Message::Watermark { .. } => None,
        }
    }

    /// The dependencies the message carries, if any.
    pub fn deps(&self) -> Option<&[InstanceId]> {
        match self {
            Message::PreAccept { deps, .. }
            | Message::PreAcceptOk { deps, .. }
            | Message::Accept { deps, .. }
            | Message::Commit { deps, .. } => Some(deps),
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

/// Shows a dependency list as `[0.1,2.7]`, for traces.
pub struct ShowDeps<'a>(pub Option<&'a [InstanceId]>);

impl fmt::Display for ShowDeps<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Some(deps) = self.0 else {
            return f.write_str("-");
        };
        f.write_str("[")?;
        for (i, d) in deps.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            d.fmt(f)?;
        }
        f.write_str("]")
    }
}
