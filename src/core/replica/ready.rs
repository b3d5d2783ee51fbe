//! What the core hands the runtime: messages, replies, commits, refusals and rejections.

use std::time::Duration;

use super::{Seal, Token};
use crate::core::command::OpResult;
use crate::core::ids::{ClientId, InstanceId, ReplicaId, RequestId};
use crate::core::instance::Instance;
use crate::core::message::Message;

/// A message to send to some peers. The runtime encodes it once for all of them.
#[derive(Debug, Clone)]
#[must_use]
pub struct Outgoing {
    pub to: Vec<ReplicaId>,
    pub msg: Message,
}

/// An answer for a waiting client.
#[derive(Debug, Clone)]
#[must_use]
pub struct Reply {
    pub token: Token,
    pub result: Result<OpResult, ReplyError>,
}

/// Why a proposal got no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// The session had already moved past this request number.
    #[error("request is older than the session's last executed request")]
    Stale,
    /// The request id was already used by this client for a different command (which
    /// executed): nothing was executed for this one.
    #[error(
        "request id already used by this client for a different command; nothing was \
         executed: send the command with a new request id"
    )]
    Reused,
    /// The session expired (idle too long) and this request cannot start a new one: whether
    /// an earlier attempt of it executed is unknown, and it was not executed now.
    #[error(
        "{prefix}: the outcome of request {0} is unknown (an earlier attempt may have executed); \
         it was not executed now; start a new session (a new client_id)",
        prefix = crate::core::session::EXPIRED_PREFIX
    )]
    Expired(u64),
    /// A retry of a compare-and-set that executed and failed; the value it found was too
    /// large to keep for a retry.
    #[error(
        "request {0} executed once already: the compare-and-set failed, and the value it found \
         was too large to keep for a retry; read the key to learn it"
    )]
    ResultNotKept(u64),
}

/// A peer message refused, never applied: it could not come from a correct peer, or it
/// contradicts what this replica knows for certain. The runtime counts them per peer and kind
/// (`epaxos_peer_contradictions_total`); a correct cluster never produces one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub peer: ReplicaId,
    pub kind: Contradiction,
}

/// What was wrong with a [`Refused`] message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Contradiction {
    /// A ballot at the largest round: no ballot lies above it, so promising it would make the
    /// next takeover's ballot wrap around to round 0 (below promises already made durable).
    BallotOverflow,
    /// A Commit of an instance committed here with other commands or deps, or with other
    /// (non-empty) commands than the instance holds here: only its leader puts commands in an
    /// instance, so every non-empty value of it carries the same ones.
    CommitDiffers,
    /// A Commit of a slot of this replica's own row that it never proposed, received after it
    /// rejoined with a new data directory (before, such a message is a
    /// [`Reject::UnknownOwnInstance`]; see `never_created` in `input`).
    CommitUnproposed,
    /// A Watermark claiming more than its sender can have: a row executed beyond where it is
    /// committed, or this replica's own row committed beyond the slots it ever proposed.
    WatermarkBeyond,
    /// A vote (PreAcceptOk, AcceptOk, RecoverOk, ValidateOk) on an instance from a replica that
    /// is not a member of the instance's epoch, or a PreAccept led by one: its quorums count
    /// only that epoch's members (see `epoch`).
    NotMember,
    /// A message naming an epoch this replica does not know. Not produced since changes are
    /// decided: an epoch above the current one means this replica is behind (it pulls the
    /// Commits it misses, see `reconfigure::behind_epoch`), and every epoch below is known.
    UnknownEpoch,
}

impl Contradiction {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Contradiction::BallotOverflow => "ballot_overflow",
            Contradiction::CommitDiffers => "commit_differs",
            Contradiction::CommitUnproposed => "commit_unproposed",
            Contradiction::WatermarkBeyond => "watermark_beyond",
            Contradiction::NotMember => "not_member",
            Contradiction::UnknownEpoch => "unknown_epoch",
        }
    }
}

/// A proposal refused before it entered the protocol (RESOURCE_EXHAUSTED).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Overloaded {
    /// The proposal queue is full.
    #[error("replica overloaded: {0} proposals already waiting")]
    Proposals(usize),
    /// The request would open a session, and the session table is full.
    #[error(
        "replica holds {0} client sessions, its limit: no new session until idle ones expire; \
         retry later or use an existing session"
    )]
    Sessions(usize),
}

/// An instance became committed here.
#[derive(Debug, Clone)]
pub struct Committed {
    pub instance: InstanceId,
    /// For instances this replica led: which path decided it and how long it took.
    pub led: Option<(Path, Duration)>,
    pub commands: usize,
}

/// How a led instance was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    Fast,
    Slow,
    /// Decided by this replica's recovery of another leader's (or its own) instance.
    Recovered,
}

/// Why a peer message was refused before it could change anything: it names a replica,
/// instance, ballot or dependency that cannot exist (see [`Replica::handle`]). The runtime
/// counts them (`epaxos_peer_rejected_total{peer,reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reject {
    /// The sender is this replica itself or not in the cluster.
    Sender,
    /// A replica id (an instance's row, a ballot's owner, a dependency's row) outside the
    /// cluster, or a Watermark with more rows than the cluster has.
    UnknownReplica,
    /// A slot at or above [`SLOT_LIMIT`].
    ImplausibleSlot,
    /// An instance of this replica's own row that it never created (at or past its next slot),
    /// while it never lost its data: every instance of a row starts at its leader, so no peer
    /// can know of one. After a rejoin its old incarnation may have created it: then only a
    /// Commit of one is refused, as [`Contradiction::CommitUnproposed`].
    UnknownOwnInstance,
    /// Dependencies (or Validate conflicts) that name the instance itself.
    SelfDependency,
    /// A ballot that cannot exist here: a phase or recovery message at a ballot its sender does
    /// not own, round 0 (the original leader's) naming another replica than the instance's
    /// leader, a recovery at round 0, or an accepted ballot above the promise it came with.
    Ballot,
    /// A Waiting message claiming more matching pre-accepts than there are replicas.
    ImplausibleCount,
}

impl Reject {
    /// The `reason` label of `epaxos_peer_rejected_total`.
    pub fn label(self) -> &'static str {
        match self {
            Reject::Sender => "sender",
            Reject::UnknownReplica => "unknown_replica",
            Reject::ImplausibleSlot => "implausible_slot",
            Reject::UnknownOwnInstance => "unknown_own_instance",
            Reject::SelfDependency => "self_dependency",
            Reject::Ballot => "ballot",
            Reject::ImplausibleCount => "implausible_count",
        }
    }
}

/// A peer message refused by [`Replica::handle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub from: ReplicaId,
    /// The message's type ([`Message::kind`]).
    pub kind: &'static str,
    pub reason: Reject,
}

/// Everything the runtime must carry out after feeding inputs, in this order: make `sealed`
/// durable, send the first
/// `early` of `messages` (they may leave before `persist` is durable), make `persist` durable,
/// tell the core ([`Replica::persisted`](super::Replica::persisted)), then send the other
/// `messages` and the `replies` (they may reveal what `persist` holds). A shell that sends
/// everything after the sync is correct too, only slower (raft-rs keeps the same two kinds of
/// messages apart: `messages` and `persisted_messages`).
#[derive(Debug, Default)]
#[must_use]
pub struct Ready {
    /// This replica sealed an epoch, or its part in deciding a boundary changed (a promise, an
    /// accepted value, the decision: see `seal`): store these seals (every one kept, replacing
    /// those stored) before any message of this `Ready` leaves, early ones included, and give
    /// them back at start (`node::Restored::sealed`): a restarted replica must still refuse the
    /// votes its seals refuse and keep its promises (its Paxos answers reveal them).
    pub sealed: Option<Vec<Seal>>,
    /// Instance states to make durable, in order (a later entry for the same instance
    /// supersedes an earlier one). Executed is never written: it is re-derived on restart.
    pub persist: Vec<(InstanceId, Instance)>,
    pub messages: Vec<Outgoing>,
    /// How many of `messages`, from the front, may leave before `persist` is durable: the
    /// first PreAccept of each instance started in this `Ready` (why that is safe: `leader`).
    /// Everything else a replica sends reveals state that must survive a crash first.
    pub early: usize,
    /// Own slots below this have their records in `persist` of this or an earlier `Ready`: a
    /// shell that syncs Readies in a pipeline says how far its disk got with
    /// [`Replica::persisted_through`](super::Replica::persisted_through).
    pub slot_end: u64,
    pub replies: Vec<Reply>,
    pub committed: Vec<Committed>,
    /// Instances executed, in execution order.
    pub executed: Vec<InstanceId>,
    /// Sizes of the batches started (one entry per new instance).
    pub batches: Vec<usize>,
    /// Recoveries started (each attempt counts).
    pub recoveries_started: u64,
    /// Votes refused because the instance lies above this replica's seal of its epoch.
    pub votes_refused_above_seal: u64,
    /// Peer messages refused (see [`Refused`]).
    pub refused: Vec<Refused>,
    /// Peer messages refused as impossible (nothing else came of them).
    pub rejected: Vec<Rejected>,
    /// Sessions removed by expiries executed here.
    pub sessions_expired: u64,
    /// Commands refused as expired (`ReplyError::Expired`), with their instance, in execution
    /// order, whether or not a client waits for them here.
    pub refused_expired: Vec<(InstanceId, ClientId, RequestId)>,
    /// A membership change executed here: the configuration it made (taken into
    /// `node::Ready::configuration`, where the shell's duty is written).
    pub configuration: Option<super::Decided>,
}
