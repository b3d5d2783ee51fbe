//! One instance's state at one replica: what every replica keeps about it (status, ballots,
//! commands, deps, initial deps) and what its leader additionally keeps while deciding it.
//!
//! The life of an instance `L.i`:
//! 1. Leader L takes a batch of pending proposals, computes initial deps and sends PreAccept
//!    (status PreAccepted everywhere it arrives).
//! 2. Each replica answers PreAcceptOk with the initial deps plus the interfering instances it
//!    knows. If a fast quorum (leader included) answers exactly the initial deps, L commits them
//!    (fast path). Otherwise, once a slow quorum answered, L sends Accept with the union (status
//!    Accepted) and commits after a slow quorum of AcceptOks (slow path).
//! 3. Commit goes to every replica (status Committed). An instance executes (status Executed)
//!    once every instance reachable through its deps is committed; see `execute`.

use std::time::Duration;

use crate::core::deps::Deps;
use crate::core::epoch::Epoch;
use crate::core::ids::{Ballot, InstanceId, ReplicaId};
use crate::core::message::Commands;

/// Where an instance stands at one replica. Ordered: an instance only moves forward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    /// Known only through recovery: a promised ballot and, after a Validate, the command and
    /// initial deps a recoverer proposed. Not a vote for anything.
    Initial,
    PreAccepted,
    Accepted,
    Committed,
    Executed,
}

impl Status {
    /// Committed or executed: the command and deps are final.
    pub fn is_decided(self) -> bool {
        self >= Status::Committed
    }
}

/// What every replica keeps about an instance it has heard of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    /// The epoch its leader was in when it started it: whose votes count for it, for its whole
    /// life (see `epoch`).
    pub epoch: Epoch,
    pub status: Status,
    /// The highest ballot this replica has taken part in for the instance (`bal`).
    pub ballot: Ballot,
    /// The ballot of the last Accept this replica accepted (`abal`); `None` if it never
    /// accepted. Kept apart from `ballot`: recovery must pick the value accepted at the highest
    /// *accepted* ballot, and one ballot variable is the bug of the original EPaxos recovery.
    pub accepted_ballot: Option<Ballot>,
    pub commands: Commands,
    /// The current dependencies: final once the status is Committed.
    pub deps: Deps,
    /// The leader's initial dependencies (what the fast path compares against, and what
    /// EPaxos* recovery needs); `None` where neither its PreAccept nor a Validate arrived.
    pub init_deps: Option<Deps>,
}

impl Instance {
    /// What a replica knows of an instance it never heard of but is asked to recover: nothing
    /// but the original leader's ballot and the epoch the recoverer names.
    pub fn unknown(id: InstanceId, epoch: Epoch) -> Instance {
        Instance {
            epoch,
            status: Status::Initial,
            ballot: Ballot::initial(id.replica),
            accepted_ballot: None,
            commands: Commands::default(),
            deps: Deps::new(),
            init_deps: None,
        }
    }

    /// Whether the recorded epoch is the one its leader fixed: the record holds the commands
    /// the leader sent (pre-accepted, or accepted or committed with a command). A record that
    /// holds nothing (`Initial`) or a no-op may carry the epoch a recoverer guessed for an
    /// instance it knew only as a dependency (see `replica::recovering`).
    pub fn epoch_fixed(&self) -> bool {
        self.status >= Status::PreAccepted && !self.commands.is_empty()
    }

    /// Committed (or accepted) as a no-op by recovery: no command.
    pub fn is_nop(&self) -> bool {
        self.status >= Status::Accepted && self.commands.is_empty()
    }
}

/// Phase of an instance at its leader, while it is being decided.
#[derive(Debug, Clone)]
pub enum Phase {
    /// Waiting for PreAcceptOks: (replica, deps) per answer.
    PreAccepting { replies: Vec<(ReplicaId, Deps)> },
    /// Waiting for AcceptOks.
    Accepting { acks: Vec<ReplicaId> },
}

/// What the leader keeps about an instance it leads until it is committed.
#[derive(Debug, Clone)]
pub struct Leading {
    pub phase: Phase,
    /// The peers the current phase's message went to (thrifty mode asks only some).
    pub asked: Vec<ReplicaId>,
    pub started_at: Duration,
    /// When the current phase's message was last sent.
    pub sent_at: Duration,
    /// How long to wait before resending to peers that did not answer (doubles each time).
    pub retry_after: Duration,
    /// Led by this replica's recovery (at a ballot above round 0), not as original leader.
    pub recovery: bool,
}

impl Leading {
    /// Whether `peer` answered in the current phase.
    pub fn has_answered(&self, peer: ReplicaId) -> bool {
        match &self.phase {
            Phase::PreAccepting { replies } => replies.iter().any(|(r, _)| *r == peer),
            Phase::Accepting { acks } => acks.contains(&peer),
        }
    }
}
