//! Conversions between the protobuf contract and the core's types. Everything that arrives from
//! the network is validated here; a malformed message becomes a [`WireError`], never a panic.

use std::sync::Arc;

use bytes::Bytes;

use crate::core::command::{Command, CommandError, Op, OpResult, RECONFIGURE_CLIENT};
use crate::core::deps::Deps;
use crate::core::epoch::{Change, Epoch, Member};
use crate::core::ids::{Ballot, ClientId, InstanceId, ReplicaId, RequestId, SLOT_LIMIT};
use crate::core::instance::{Instance, Status};
use crate::core::limits::MEMBERS_EVER_MAX;
use crate::core::message::{Message, RecoverReply};
use crate::proto;

/// Why a message from the network was refused.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// A required field is missing.
    #[error("missing field {0}")]
    Missing(&'static str),
    /// A replica id this replica has not heard of: at or beyond the rows it knows (epoch 0's
    /// ids and those of every configuration learnt since). It may be an id a configuration
    /// this replica has not learnt yet added, so it is refused, not taken for garbage.
    #[error("replica {id} is not among the {rows} rows this replica knows")]
    UnknownReplica { id: u32, rows: usize },
    /// A checkpoint with fewer rows than this replica's configuration needs: taken by a
    /// replica that knew fewer ids, it cannot be the state of this replica's epoch.
    #[error("the checkpoint has {rows} rows, fewer than the {needed} this replica's configuration needs")]
    TooFewRows { rows: usize, needed: usize },
    /// A replica id no configuration can hold (at or beyond `MEMBERS_EVER_MAX`): garbage.
    #[error("replica {0} is beyond any id ever handed out ({MEMBERS_EVER_MAX})")]
    ImpossibleReplica(u32),
    /// The bytes do not decode.
    #[error("cannot decode: {0}")]
    Decode(#[from] prost::DecodeError),
    /// A command breaks the limits.
    #[error(transparent)]
    Command(#[from] CommandError),
    /// Well-formed, but names what cannot exist (a slot beyond any row, an instance depending
    /// on itself, an accepted ballot above the ballot).
    #[error("impossible: {0}")]
    Impossible(&'static str),
}

/// Converts a client operation. Keys and values are copied out of the decode buffer: a `Bytes`
/// slice would otherwise pin the whole received gRPC message (a batch of many peer messages)
/// for as long as the instance or the conflict index keeps the key.
pub fn op_from_proto(op: Option<proto::Operation>) -> Result<Op, CommandError> {
    use proto::operation::Kind;
    let own = |b: Bytes| Bytes::copy_from_slice(&b);
    let op = match op.and_then(|o| o.kind).ok_or(CommandError::Missing)? {
        Kind::Get(g) => Op::Get { key: own(g.key) },
        Kind::Put(p) => Op::Put {
            key: own(p.key),
            value: own(p.value),
        },
        Kind::Delete(d) => Op::Delete { key: own(d.key) },
        Kind::Cas(c) => Op::Cas {
            key: own(c.key),
            expected: c.expected.map(own),
            new: own(c.new_value),
        },
    };
    op.validate()?;
    Ok(op)
}

/// Converts a core operation to the contract. A session expiry is not an operation of the
/// client contract (nor is a membership change): it travels beside it (see
/// `commands_to_proto`); asked for one, this gives
/// an empty operation.
pub fn op_to_proto(op: &Op) -> proto::Operation {
    use proto::operation::Kind;
    let kind = match op {
        Op::Expire { .. } | Op::Reconfigure { .. } => return proto::Operation { kind: None },
        Op::Get { key } => Kind::Get(proto::Get { key: key.clone() }),
        Op::Put { key, value } => Kind::Put(proto::Put {
            key: key.clone(),
            value: value.clone(),
        }),
        Op::Delete { key } => Kind::Delete(proto::Delete { key: key.clone() }),
        Op::Cas { key, expected, new } => Kind::Cas(proto::Cas {
            key: key.clone(),
            expected: expected.clone(),
            new_value: new.clone(),
        }),
    };
    proto::Operation { kind: Some(kind) }
}

/// Converts a client request into a command.
pub fn command_from_request(req: proto::ProposeRequest) -> Result<Command, CommandError> {
    if req.request_id == 0 {
        return Err(CommandError::ZeroRequestId);
    }
    if ClientId(req.client_id) == RECONFIGURE_CLIENT {
        return Err(CommandError::ReservedClient);
    }
    Ok(Command {
        client: ClientId(req.client_id),
        request: RequestId(req.request_id),
        op: op_from_proto(req.op)?,
        time_ms: 0,
        retry: req.retry,
    })
}

pub fn result_to_proto(r: &OpResult) -> proto::OpResult {
    proto::OpResult {
        found: r.found,
        value: r.value.clone(),
        success: r.success,
    }
}

/// Encodes a peer message once; the bytes go to every addressee.
pub fn encode(msg: &Message) -> Bytes {
    use prost::Message as _;
    Bytes::from(message_to_proto(msg).encode_to_vec())
}

/// Decodes and validates one peer message for a replica that knows `rows` rows (see
/// [`message_from_proto`]).
///
/// Decoded from the `Bytes` it arrived in, not from a byte slice: prost then takes the keys and
/// values as slices of it (no copy), and [`op_from_proto`] makes the one copy that owns them;
/// from a slice, each would be copied twice.
pub fn decode(bytes: &Bytes, rows: usize) -> Result<Message, WireError> {
    use prost::Message as _;
    message_from_proto(proto::PeerMessage::decode(bytes.clone())?, rows)
}

fn id_to_proto(id: InstanceId) -> proto::InstanceId {
    proto::InstanceId {
        replica: id.replica.0,
        slot: id.slot,
    }
}

fn ballot_to_proto(b: Ballot) -> proto::Ballot {
    proto::Ballot {
        round: b.round,
        replica: b.replica.0,
    }
}

fn commands_to_proto(cmds: &[Command]) -> Vec<proto::Command> {
    cmds.iter()
        .map(|c| {
            let (op, expire, reconfigure) = match c.op {
                Op::Expire { idle_since_ms } => {
                    (None, Some(proto::ExpireSession { idle_since_ms }), None)
                }
                Op::Reconfigure { ref change, epoch } => {
                    (None, None, Some(reconfigure_to_proto(change, epoch)))
                }
                ref op => (Some(op_to_proto(op)), None, None),
            };
            proto::Command {
                client_id: c.client.0,
                request_id: c.request.0,
                op,
                time_ms: c.time_ms,
                retry: c.retry,
                expire,
                reconfigure,
            }
        })
        .collect()
}

fn ids_to_proto(ids: &[InstanceId]) -> Vec<proto::InstanceId> {
    ids.iter().map(|d| id_to_proto(*d)).collect()
}

fn deps_to_proto(deps: &Deps) -> Vec<proto::InstanceId> {
    ids_to_proto(deps.as_slice())
}

/// Converts a core message to the contract.
pub fn message_to_proto(msg: &Message) -> proto::PeerMessage {
    use proto::peer_message::Kind;
    let kind = match msg {
        Message::PreAccept {
            instance,
            epoch,
            ballot,
            commands,
            deps,
        } => Kind::PreAccept(proto::PreAccept {
            instance: Some(id_to_proto(*instance)),
            ballot: Some(ballot_to_proto(*ballot)),
            commands: commands_to_proto(commands),
            deps: deps_to_proto(deps),
            epoch: epoch.0,
        }),
        Message::PreAcceptOk {
            instance,
            ballot,
            deps,
        } => Kind::PreAcceptOk(proto::PreAcceptOk {
            instance: Some(id_to_proto(*instance)),
            ballot: Some(ballot_to_proto(*ballot)),
            deps: deps_to_proto(deps),
        }),
        Message::Accept {
            instance,
            epoch,
            ballot,
            commands,
            deps,
        } => Kind::Accept(proto::Accept {
            instance: Some(id_to_proto(*instance)),
            ballot: Some(ballot_to_proto(*ballot)),
            commands: commands_to_proto(commands),
            deps: deps_to_proto(deps),
            epoch: epoch.0,
        }),
        Message::AcceptOk { instance, ballot } => Kind::AcceptOk(proto::AcceptOk {
            instance: Some(id_to_proto(*instance)),
            ballot: Some(ballot_to_proto(*ballot)),
        }),
        Message::Commit {
            instance,
            epoch,
            ballot,
            commands,
            deps,
        } => Kind::Commit(proto::Commit {
            instance: Some(id_to_proto(*instance)),
            ballot: Some(ballot_to_proto(*ballot)),
            commands: commands_to_proto(commands),
            deps: deps_to_proto(deps),
            epoch: epoch.0,
        }),
        Message::Nack { instance, promised } => Kind::Nack(proto::Nack {
            instance: Some(id_to_proto(*instance)),
            promised: Some(ballot_to_proto(*promised)),
        }),
        Message::CommitRequest { instances } => Kind::CommitRequest(proto::CommitRequest {
            instances: ids_to_proto(instances),
        }),
        Message::Watermark {
            committed_prefix,
            executed_prefix,
            collected_prefix,
        } => Kind::Watermark(proto::Watermark {
            committed_prefix: committed_prefix.clone(),
            executed_prefix: executed_prefix.clone(),
            collected_prefix: collected_prefix.clone(),
        }),
        Message::Recover {
            instance,
            epoch,
            ballot,
        } => Kind::Recover(proto::Recover {
            instance: Some(id_to_proto(*instance)),
            ballot: Some(ballot_to_proto(*ballot)),
            epoch: epoch.0,
        }),
        Message::RecoverOk {
            instance,
            ballot,
            reply,
        } => Kind::RecoverOk(proto::RecoverOk {
            instance: Some(id_to_proto(*instance)),
            ballot: Some(ballot_to_proto(*ballot)),
            status: status_to_proto(reply.status),
            accepted_ballot: reply.accepted_ballot.map(ballot_to_proto),
            commands: commands_to_proto(&reply.commands),
            deps: deps_to_proto(&reply.deps),
            init_known: reply.init_deps.is_some(),
            init_deps: reply
                .init_deps
                .as_ref()
                .map(deps_to_proto)
                .unwrap_or_default(),
            epoch_known: reply.epoch.is_some(),
            epoch: reply.epoch.map_or(0, |e| e.0),
        }),
        Message::Validate {
            instance,
            epoch,
            ballot,
            commands,
            deps,
        } => Kind::Validate(proto::Validate {
            instance: Some(id_to_proto(*instance)),
            ballot: Some(ballot_to_proto(*ballot)),
            commands: commands_to_proto(commands),
            deps: deps_to_proto(deps),
            epoch: epoch.0,
        }),
        Message::ValidateOk {
            instance,
            ballot,
            conflicts,
        } => Kind::ValidateOk(proto::ValidateOk {
            instance: Some(id_to_proto(*instance)),
            ballot: Some(ballot_to_proto(*ballot)),
            conflicts: conflicts
                .iter()
                .map(|(id, committed)| proto::Conflict {
                    instance: Some(id_to_proto(*id)),
                    committed: *committed,
                })
                .collect(),
        }),
        Message::BoundaryPrepare { epoch, ballot } => {
            Kind::BoundaryPrepare(proto::BoundaryPrepare {
                epoch: epoch.0,
                ballot: Some(ballot_to_proto(*ballot)),
            })
        }
        Message::BoundaryPromise {
            epoch,
            ballot,
            ends,
            accepted,
        } => Kind::BoundaryPromise(proto::BoundaryPromise {
            epoch: epoch.0,
            ballot: Some(ballot_to_proto(*ballot)),
            ends: ends.clone(),
            accepted_ballot: accepted.as_ref().map(|(b, _)| ballot_to_proto(*b)),
            accepted_ends: accepted
                .as_ref()
                .map(|(_, ends)| ends.clone())
                .unwrap_or_default(),
        }),
        Message::BoundaryNack { epoch, promised } => Kind::BoundaryNack(proto::BoundaryNack {
            epoch: epoch.0,
            promised: Some(ballot_to_proto(*promised)),
        }),
        Message::BoundaryAccept {
            epoch,
            ballot,
            ends,
        } => Kind::BoundaryAccept(proto::BoundaryAccept {
            epoch: epoch.0,
            ballot: Some(ballot_to_proto(*ballot)),
            ends: ends.clone(),
        }),
        Message::BoundaryAccepted { epoch, ballot } => {
            Kind::BoundaryAccepted(proto::BoundaryAccepted {
                epoch: epoch.0,
                ballot: Some(ballot_to_proto(*ballot)),
            })
        }
        Message::BoundaryDecided { epoch, ends } => Kind::BoundaryDecided(proto::BoundaryDecided {
            epoch: epoch.0,
            ends: ends.clone(),
        }),
        Message::Waiting { instance, matching } => Kind::Waiting(proto::Waiting {
            instance: Some(id_to_proto(*instance)),
            matching: *matching,
        }),
    };
    proto::PeerMessage { kind: Some(kind) }
}

/// `id` if it is one of the `rows` rows known (`rows` is at most `MEMBERS_EVER_MAX`).
pub(crate) fn replica(id: u32, rows: usize) -> Result<ReplicaId, WireError> {
    if (id as usize) < rows {
        Ok(ReplicaId(id))
    } else {
        Err(not_known(id, rows))
    }
}

/// Why `id`, at or beyond the `rows` known, is refused: not heard of yet, or never possible.
fn not_known(id: u32, rows: usize) -> WireError {
    if (id as usize) < MEMBERS_EVER_MAX {
        WireError::UnknownReplica { id, rows }
    } else {
        WireError::ImpossibleReplica(id)
    }
}

fn id_from(p: Option<proto::InstanceId>, n: usize) -> Result<InstanceId, WireError> {
    let p = p.ok_or(WireError::Missing("instance"))?;
    if p.slot >= SLOT_LIMIT {
        return Err(WireError::Impossible("a slot beyond any row"));
    }
    Ok(InstanceId::new(replica(p.replica, n)?, p.slot))
}

/// A seal's or boundary's per-row ends: one entry per row known at most, as a Watermark (the
/// core checks the slots).
fn ends_from(ends: Vec<u64>, n: usize) -> Result<Vec<u64>, WireError> {
    if ends.len() > n {
        return Err(not_known(
            u32::try_from(ends.len() - 1).unwrap_or(u32::MAX),
            n,
        ));
    }
    Ok(ends)
}

fn ballot_from(p: Option<proto::Ballot>, n: usize) -> Result<Ballot, WireError> {
    let p = p.ok_or(WireError::Missing("ballot"))?;
    Ok(Ballot {
        round: p.round,
        replica: replica(p.replica, n)?,
    })
}

/// A peer's (or a record's) deps in any order, with repeated rows, are normalized, not refused:
/// `q.s` means "row `q` up to `s`", so a lower entry of a row says nothing the highest does not,
/// and order carries no meaning. The normalized set means exactly what was sent, and only that
/// shape exists in the core (see `Deps`). Ids outside the cluster or beyond any row are refused.
fn deps_from(p: Vec<proto::InstanceId>, n: usize) -> Result<Deps, WireError> {
    p.into_iter().map(|d| id_from(Some(d), n)).collect()
}

fn commands_from(p: Vec<proto::Command>) -> Result<Arc<Vec<Command>>, WireError> {
    let cmds = p
        .into_iter()
        .map(|c| {
            // An expiry is a replica's (request 0, no operation); a client's request is not.
            let op = match (c.expire, c.reconfigure, c.op) {
                (Some(e), None, None) if c.request_id == 0 => Op::Expire {
                    idle_since_ms: e.idle_since_ms,
                },
                (None, Some(r), None)
                    if c.request_id != 0 && ClientId(c.client_id) == RECONFIGURE_CLIENT =>
                {
                    reconfigure_from_proto(r)?
                }
                (None, None, op) if c.request_id != 0 => op_from_proto(op)?,
                (None, Some(_), _) => {
                    return Err(WireError::Impossible(
                        "a membership change with an operation, request 0 or a client's id",
                    ))
                }
                _ => return Err(CommandError::MisplacedExpiry.into()),
            };
            Ok(Command {
                client: ClientId(c.client_id),
                request: RequestId(c.request_id),
                op,
                time_ms: c.time_ms,
                retry: c.retry,
            })
        })
        .collect::<Result<Vec<_>, WireError>>()?;
    Ok(Arc::new(cmds))
}

fn reconfigure_to_proto(change: &Change, epoch: Epoch) -> proto::Reconfigure {
    use proto::reconfigure::Change as P;
    proto::Reconfigure {
        epoch: epoch.0,
        change: Some(match change {
            Change::Add(m) => P::Add(proto::ReconfigureMember {
                id: m.id.0,
                peer_addr: m.peer_addr.clone(),
                client_addr: m.client_addr.clone(),
            }),
            Change::Remove(id) => P::Remove(id.0),
        }),
    }
}

/// A membership change from a peer or a record, within its bounds (`Change::validate`).
fn reconfigure_from_proto(r: proto::Reconfigure) -> Result<Op, WireError> {
    use proto::reconfigure::Change as P;
    let change = match r.change.ok_or(WireError::Missing("membership change"))? {
        P::Add(m) => Change::Add(Member {
            id: ReplicaId(m.id),
            peer_addr: m.peer_addr,
            client_addr: m.client_addr,
        }),
        P::Remove(id) => Change::Remove(ReplicaId(id)),
    };
    let op = Op::Reconfigure {
        change,
        epoch: Epoch(r.epoch),
    };
    op.validate()?;
    Ok(op)
}

/// Converts and validates a peer message for a replica that knows `rows` rows: one past the
/// highest id of every configuration it has learnt (`Node::rows`; epoch 0's `n` until a change
/// adds an id). Every replica id in it must be below `rows`.
pub fn message_from_proto(p: proto::PeerMessage, rows: usize) -> Result<Message, WireError> {
    let n = rows;
    use proto::peer_message::Kind;
    Ok(match p.kind.ok_or(WireError::Missing("kind"))? {
        Kind::PreAccept(m) => Message::PreAccept {
            instance: id_from(m.instance, n)?,
            epoch: Epoch(m.epoch),
            ballot: ballot_from(m.ballot, n)?,
            commands: commands_from(m.commands)?,
            deps: deps_from(m.deps, n)?,
        },
        Kind::PreAcceptOk(m) => Message::PreAcceptOk {
            instance: id_from(m.instance, n)?,
            ballot: ballot_from(m.ballot, n)?,
            deps: deps_from(m.deps, n)?,
        },
        Kind::Accept(m) => Message::Accept {
            instance: id_from(m.instance, n)?,
            epoch: Epoch(m.epoch),
            ballot: ballot_from(m.ballot, n)?,
            commands: commands_from(m.commands)?,
            deps: deps_from(m.deps, n)?,
        },
        Kind::AcceptOk(m) => Message::AcceptOk {
            instance: id_from(m.instance, n)?,
            ballot: ballot_from(m.ballot, n)?,
        },
        Kind::Commit(m) => Message::Commit {
            instance: id_from(m.instance, n)?,
            epoch: Epoch(m.epoch),
            ballot: ballot_from(m.ballot, n)?,
            commands: commands_from(m.commands)?,
            deps: deps_from(m.deps, n)?,
        },
        Kind::Nack(m) => Message::Nack {
            instance: id_from(m.instance, n)?,
            promised: ballot_from(m.promised, n)?,
        },
        // A list of instances, not deps: several slots of one row are several requests.
        Kind::CommitRequest(m) => Message::CommitRequest {
            instances: m
                .instances
                .into_iter()
                .map(|i| id_from(Some(i), n))
                .collect::<Result<Vec<_>, _>>()?,
        },
        Kind::Watermark(mut m) => {
            let rows = m
                .committed_prefix
                .len()
                .max(m.executed_prefix.len())
                .max(m.collected_prefix.len());
            if rows > MEMBERS_EVER_MAX {
                return Err(not_known(u32::try_from(rows - 1).unwrap_or(u32::MAX), n));
            }
            // A peer that executed an add reports rows this replica has not learnt: they are
            // cut off and the rest counts. A replica behind an add must still read its peers'
            // collected prefixes: left behind by their collection, it learns so only from a
            // Watermark and catches up by snapshot, which brings the change (refusing the
            // whole Watermark left it waiting forever for Commits nobody holds any more).
            for prefix in [
                &mut m.committed_prefix,
                &mut m.executed_prefix,
                &mut m.collected_prefix,
            ] {
                prefix.truncate(n);
            }
            Message::Watermark {
                committed_prefix: m.committed_prefix,
                executed_prefix: m.executed_prefix,
                collected_prefix: m.collected_prefix,
            }
        }
        Kind::BoundaryPrepare(m) => Message::BoundaryPrepare {
            epoch: Epoch(m.epoch),
            ballot: ballot_from(m.ballot, n)?,
        },
        Kind::BoundaryPromise(m) => Message::BoundaryPromise {
            epoch: Epoch(m.epoch),
            ballot: ballot_from(m.ballot, n)?,
            ends: ends_from(m.ends, n)?,
            accepted: match m.accepted_ballot {
                Some(b) => Some((ballot_from(Some(b), n)?, ends_from(m.accepted_ends, n)?)),
                None => None,
            },
        },
        Kind::BoundaryNack(m) => Message::BoundaryNack {
            epoch: Epoch(m.epoch),
            promised: ballot_from(m.promised, n)?,
        },
        Kind::BoundaryAccept(m) => Message::BoundaryAccept {
            epoch: Epoch(m.epoch),
            ballot: ballot_from(m.ballot, n)?,
            ends: ends_from(m.ends, n)?,
        },
        Kind::BoundaryAccepted(m) => Message::BoundaryAccepted {
            epoch: Epoch(m.epoch),
            ballot: ballot_from(m.ballot, n)?,
        },
        Kind::BoundaryDecided(m) => Message::BoundaryDecided {
            epoch: Epoch(m.epoch),
            ends: ends_from(m.ends, n)?,
        },
        Kind::Recover(m) => Message::Recover {
            instance: id_from(m.instance, n)?,
            epoch: Epoch(m.epoch),
            ballot: ballot_from(m.ballot, n)?,
        },
        Kind::RecoverOk(m) => {
            let status = status_from_proto(m.status)?;
            // Only a holder of the commands names the epoch (`RecoverReply::epoch`).
            let epoch = match (m.epoch_known, m.epoch) {
                (false, 0) => None,
                (false, _) => return Err(WireError::Impossible("an epoch not marked known")),
                (true, _) if status == Status::Initial || m.commands.is_empty() => {
                    return Err(WireError::Impossible("an epoch named without the commands"))
                }
                (true, e) => Some(Epoch(e)),
            };
            Message::RecoverOk {
                instance: id_from(m.instance, n)?,
                ballot: ballot_from(m.ballot, n)?,
                reply: RecoverReply {
                    status,
                    accepted_ballot: m
                        .accepted_ballot
                        .map(|b| ballot_from(Some(b), n))
                        .transpose()?,
                    commands: commands_from(m.commands)?,
                    deps: deps_from(m.deps, n)?,
                    init_deps: if m.init_known {
                        Some(deps_from(m.init_deps, n)?)
                    } else {
                        None
                    },
                    epoch,
                },
            }
        }
        Kind::Validate(m) => Message::Validate {
            instance: id_from(m.instance, n)?,
            epoch: Epoch(m.epoch),
            ballot: ballot_from(m.ballot, n)?,
            commands: commands_from(m.commands)?,
            deps: deps_from(m.deps, n)?,
        },
        Kind::ValidateOk(m) => Message::ValidateOk {
            instance: id_from(m.instance, n)?,
            ballot: ballot_from(m.ballot, n)?,
            conflicts: m
                .conflicts
                .into_iter()
                .map(|c| Ok((id_from(c.instance, n)?, c.committed)))
                .collect::<Result<Vec<_>, WireError>>()?,
        },
        Kind::Waiting(m) => Message::Waiting {
            instance: id_from(m.instance, n)?,
            matching: m.matching,
        },
    })
}

/// The stored and sent form of a status: executed is committed there (execution is each
/// replica's own business and is redone from the log).
fn status_to_proto(s: Status) -> i32 {
    use proto::InstanceStatus as P;
    let p = match s {
        Status::Initial => P::Initial,
        Status::PreAccepted => P::PreAccepted,
        Status::Accepted => P::Accepted,
        Status::Committed | Status::Executed => P::Committed,
    };
    p as i32
}

fn status_from_proto(s: i32) -> Result<Status, WireError> {
    use proto::InstanceStatus as P;
    Ok(
        match P::try_from(s).map_err(|_| WireError::Missing("status"))? {
            P::Initial => Status::Initial,
            P::PreAccepted => Status::PreAccepted,
            P::Accepted => Status::Accepted,
            P::Committed => Status::Committed,
        },
    )
}

/// Encodes an instance's state for the durable log.
pub fn record_to_proto(id: InstanceId, inst: &Instance) -> proto::InstanceRecord {
    proto::InstanceRecord {
        instance: Some(id_to_proto(id)),
        status: status_to_proto(inst.status),
        ballot: Some(ballot_to_proto(inst.ballot)),
        accepted_ballot: inst.accepted_ballot.map(ballot_to_proto),
        commands: commands_to_proto(&inst.commands),
        deps: deps_to_proto(&inst.deps),
        init_deps: inst
            .init_deps
            .as_ref()
            .map(deps_to_proto)
            .unwrap_or_default(),
        init_known: inst.init_deps.is_some(),
        epoch: inst.epoch.0,
    }
}

/// Decodes and validates a durable log record for a replica that knows `rows` rows (see
/// [`message_from_proto`]).
pub fn record_from_proto(
    p: proto::InstanceRecord,
    rows: usize,
) -> Result<(InstanceId, Instance), WireError> {
    let n = rows;
    let status = status_from_proto(p.status)?;
    let accepted_ballot = match p.accepted_ballot {
        Some(b) => Some(ballot_from(Some(b), n)?),
        None => None,
    };
    let id = id_from(p.instance, n)?;
    let inst = Instance {
        // An earlier version's record has none: epoch 0, the only epoch it knew.
        epoch: Epoch(p.epoch),
        status,
        ballot: ballot_from(p.ballot, n)?,
        accepted_ballot,
        commands: commands_from(p.commands)?,
        deps: deps_from(p.deps, n)?,
        init_deps: if p.init_known || status == Status::PreAccepted {
            Some(deps_from(p.init_deps, n)?)
        } else {
            None
        },
    };
    // What the core never writes (its `check_invariants`): replaying it would break them.
    if inst.deps.contains(id) || inst.init_deps.as_ref().is_some_and(|d| d.contains(id)) {
        return Err(WireError::Impossible("an instance depending on itself"));
    }
    if inst.accepted_ballot.is_some_and(|ab| ab > inst.ballot) {
        return Err(WireError::Impossible("an accepted ballot above the ballot"));
    }
    Ok((id, inst))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_status_keeps_the_numbers_of_the_old_uint32() {
        let old = [
            (Status::Initial, 0),
            (Status::PreAccepted, 1),
            (Status::Accepted, 2),
            (Status::Committed, 3),
            (Status::Executed, 3),
        ];
        for (status, number) in old {
            assert_eq!(status_to_proto(status), number, "{status:?}");
            let back = status_from_proto(number).expect("a known number");
            assert_eq!(back, status.min(Status::Committed), "{number}");
        }
        assert!(status_from_proto(4).is_err(), "no status 4");
        // A record written when the field was a uint32: field 2, varint 2.
        let legacy = [0x10, 0x02];
        let record =
            <proto::InstanceRecord as prost::Message>::decode(&legacy[..]).expect("decodes");
        assert_eq!(
            status_from_proto(record.status).ok(),
            Some(Status::Accepted)
        );
    }

    #[test]
    fn messages_round_trip() {
        let cmds = Arc::new(vec![Command {
            client: ClientId(9),
            request: RequestId(3),
            op: Op::Cas {
                key: Bytes::from_static(b"k"),
                expected: None,
                new: Bytes::from_static(b"v"),
            },
            time_ms: 0,
            retry: false,
        }]);
        let id = InstanceId::new(ReplicaId(2), 17);
        let b = Ballot::initial(ReplicaId(2));
        let deps = Deps::from([
            InstanceId::new(ReplicaId(0), 1),
            InstanceId::new(ReplicaId(1), 4),
        ]);
        let msgs = vec![
            Message::PreAccept {
                epoch: Epoch(3),
                instance: id,
                ballot: b,
                commands: cmds.clone(),
                deps: deps.clone(),
            },
            Message::PreAcceptOk {
                instance: id,
                ballot: b,
                deps: deps.clone(),
            },
            Message::Accept {
                epoch: Epoch(4),
                instance: id,
                ballot: b,
                commands: cmds.clone(),
                deps: deps.clone(),
            },
            Message::AcceptOk {
                instance: id,
                ballot: b,
            },
            Message::Commit {
                epoch: Epoch(5),
                instance: id,
                ballot: b,
                commands: cmds.clone(),
                deps: deps.clone(),
            },
            Message::Nack {
                instance: id,
                promised: b,
            },
            Message::CommitRequest {
                instances: deps.as_slice().to_vec(),
            },
            Message::Watermark {
                committed_prefix: vec![3, 0, 9],
                executed_prefix: vec![1, 0, 2],
                collected_prefix: vec![1, 0, 0],
            },
            Message::Recover {
                epoch: Epoch(6),
                instance: id,
                ballot: b,
            },
            Message::RecoverOk {
                instance: id,
                ballot: b,
                reply: RecoverReply {
                    status: Status::PreAccepted,
                    accepted_ballot: Some(b),
                    commands: cmds.clone(),
                    deps: deps.clone(),
                    init_deps: Some(Deps::new()),
                    epoch: Some(Epoch(2)),
                },
            },
            Message::RecoverOk {
                instance: id,
                ballot: b,
                reply: RecoverReply {
                    status: Status::Initial,
                    accepted_ballot: None,
                    commands: Arc::new(vec![]),
                    deps: Deps::new(),
                    init_deps: None,
                    epoch: None,
                },
            },
            Message::Validate {
                instance: id,
                epoch: Epoch(3),
                ballot: b,
                commands: cmds.clone(),
                deps: deps.clone(),
            },
            Message::ValidateOk {
                instance: id,
                ballot: b,
                conflicts: vec![(id, true)],
            },
            Message::Waiting {
                instance: id,
                matching: 2,
            },
            Message::BoundaryPrepare {
                epoch: Epoch(4),
                ballot: b,
            },
            Message::BoundaryPromise {
                epoch: Epoch(4),
                ballot: b,
                ends: vec![7, 0, 3],
                accepted: None,
            },
            Message::BoundaryPromise {
                epoch: Epoch(4),
                ballot: b,
                ends: vec![7, 0, 3],
                accepted: Some((Ballot::initial(ReplicaId(2)), vec![8, 0, 3])),
            },
            Message::BoundaryNack {
                epoch: Epoch(4),
                promised: b,
            },
            Message::BoundaryAccept {
                epoch: Epoch(4),
                ballot: b,
                ends: vec![8, 0, 3],
            },
            Message::BoundaryAccepted {
                epoch: Epoch(4),
                ballot: b,
            },
            Message::BoundaryDecided {
                epoch: Epoch(4),
                ends: vec![8, 0, 3],
            },
        ];
        for m in msgs {
            assert_eq!(decode(&encode(&m), 3).expect("decodes"), m);
        }
    }

    /// A decoded message owns its keys and values: none is a slice of the bytes it arrived
    /// in (which hold a whole batch of messages, pinned for as long as the store keeps one).
    #[test]
    fn decoded_keys_and_values_do_not_pin_the_received_bytes() {
        let cmds = Arc::new(vec![Command {
            client: ClientId(9),
            request: RequestId(3),
            op: Op::Put {
                key: Bytes::from_static(b"a-key-of-some-length"),
                value: Bytes::from_static(b"a-value-of-some-length"),
            },
            time_ms: 0,
            retry: false,
        }]);
        let m = Message::PreAccept {
            epoch: Epoch(0),
            instance: InstanceId::new(ReplicaId(1), 4),
            ballot: Ballot::initial(ReplicaId(1)),
            commands: cmds,
            deps: Deps::new(),
        };
        let received = encode(&m);
        let decoded = decode(&received, 3).expect("decodes");
        assert_eq!(decoded, m);
        let Message::PreAccept { commands, .. } = decoded else {
            panic!("a PreAccept decodes as one");
        };
        let Op::Put { key, value } = &commands[0].op else {
            panic!("a Put decodes as one");
        };
        let inside = |b: &Bytes| received.as_ptr_range().contains(&b.as_ptr());
        assert!(
            !inside(key) && !inside(value),
            "copied out of the received bytes"
        );
    }

    #[test]
    fn a_seal_or_boundary_with_more_rows_than_known_is_refused() {
        let b = Ballot::initial(ReplicaId(1));
        let wide = vec![1, 2, 3, 4];
        let made = |ends: Vec<u64>| {
            vec![
                Message::BoundaryPromise {
                    epoch: Epoch(1),
                    ballot: b,
                    ends: ends.clone(),
                    accepted: None,
                },
                Message::BoundaryPromise {
                    epoch: Epoch(1),
                    ballot: b,
                    ends: vec![0],
                    accepted: Some((b, ends.clone())),
                },
                Message::BoundaryAccept {
                    epoch: Epoch(1),
                    ballot: b,
                    ends: ends.clone(),
                },
                Message::BoundaryDecided {
                    epoch: Epoch(1),
                    ends,
                },
            ]
        };
        for m in made(wide) {
            assert!(
                matches!(
                    decode(&encode(&m), 3),
                    Err(WireError::UnknownReplica { .. })
                ),
                "{m:?}"
            );
            assert_eq!(decode(&encode(&m), 4).expect("row 3 known"), m);
        }
        for garbage in made(vec![0; MEMBERS_EVER_MAX + 1]) {
            assert!(
                matches!(
                    decode(&encode(&garbage), 3),
                    Err(WireError::ImpossibleReplica(_))
                ),
                "{garbage:?}"
            );
        }
        // A ballot naming a replica that does not exist, or none at all.
        let stranger = Message::BoundaryPrepare {
            epoch: Epoch(1),
            ballot: Ballot::initial(ReplicaId(7)),
        };
        assert!(decode(&encode(&stranger), 3).is_err());
        let bare = proto::PeerMessage {
            kind: Some(proto::peer_message::Kind::BoundaryAccepted(
                proto::BoundaryAccepted {
                    epoch: 1,
                    ballot: None,
                },
            )),
        };
        let bytes = Bytes::from(prost::Message::encode_to_vec(&bare));
        assert!(matches!(
            decode(&bytes, 3),
            Err(WireError::Missing("ballot"))
        ));
    }

    #[test]
    fn a_record_keeps_its_epoch_and_an_earlier_versions_record_is_epoch_zero() {
        let id = InstanceId::new(ReplicaId(1), 4);
        let mut inst = Instance::unknown(id, Epoch(2));
        inst.status = Status::PreAccepted;
        inst.init_deps = Some(Deps::new());
        let (_, back) = record_from_proto(record_to_proto(id, &inst), 3).expect("valid");
        assert_eq!(back, inst);
        // What an earlier version wrote has no epoch field: it decodes as epoch 0.
        let mut old = record_to_proto(id, &inst);
        old.epoch = 0;
        let (_, back) = record_from_proto(old, 3).expect("valid");
        assert_eq!(back.epoch, Epoch(0));
        // And an earlier version's message too.
        let mut p = message_to_proto(&Message::Recover {
            instance: id,
            epoch: Epoch(5),
            ballot: Ballot {
                round: 1,
                replica: ReplicaId(0),
            },
        });
        if let Some(proto::peer_message::Kind::Recover(r)) = &mut p.kind {
            r.epoch = 0;
        }
        assert_eq!(
            message_from_proto(p, 3).expect("valid").epoch(),
            Some(Epoch(0))
        );
    }

    /// A peer's deps out of order and with repeated rows are normalized, not refused (see
    /// `deps_from`): the same set, so the fast-path comparison sees what the peer meant.
    #[test]
    fn unsorted_or_repeated_peer_deps_are_normalized() {
        let raw = |r: u32, s: u64| proto::InstanceId {
            replica: r,
            slot: s,
        };
        let p = proto::PeerMessage {
            kind: Some(proto::peer_message::Kind::PreAcceptOk(proto::PreAcceptOk {
                instance: Some(raw(1, 0)),
                ballot: Some(ballot_to_proto(Ballot::initial(ReplicaId(1)))),
                deps: vec![raw(2, 1), raw(0, 3), raw(2, 5), raw(0, 1), raw(2, 5)],
            })),
        };
        let Message::PreAcceptOk { deps, .. } = message_from_proto(p, 3).expect("valid") else {
            panic!("a PreAcceptOk decodes as one");
        };
        let expected = [
            InstanceId::new(ReplicaId(0), 3),
            InstanceId::new(ReplicaId(2), 5),
        ];
        assert_eq!(deps.as_slice(), expected);
        // A durable record too: what the log holds goes through the same conversion.
        let mut record = record_to_proto(
            InstanceId::new(ReplicaId(1), 0),
            &Instance::unknown(InstanceId::new(ReplicaId(1), 0), Epoch(0)),
        );
        record.deps = vec![raw(2, 5), raw(0, 1), raw(0, 3)];
        let (_, inst) = record_from_proto(record, 3).expect("valid");
        assert_eq!(inst.deps.as_slice(), expected);
        // Normalizing never hides an id outside the cluster.
        let bad = proto::PeerMessage {
            kind: Some(proto::peer_message::Kind::PreAcceptOk(proto::PreAcceptOk {
                instance: Some(raw(1, 0)),
                ballot: Some(ballot_to_proto(Ballot::initial(ReplicaId(1)))),
                deps: vec![raw(0, 3), raw(7, 1)],
            })),
        };
        assert!(matches!(
            message_from_proto(bad, 3),
            Err(WireError::UnknownReplica { id: 7, rows: 3 })
        ));
    }

    /// Found by fuzzing (`peer_message`): CommitRequest went through the deps normalization,
    /// which keeps one slot per row, so asking for 2.1 and 2.3 in one request asked for 2.3 only.
    #[test]
    fn a_commit_request_keeps_every_instance_it_asks_for() {
        let m = Message::CommitRequest {
            instances: vec![
                InstanceId::new(ReplicaId(2), 1),
                InstanceId::new(ReplicaId(2), 3),
                InstanceId::new(ReplicaId(0), 0),
            ],
        };
        assert_eq!(decode(&encode(&m), 3).expect("decodes"), m);
    }

    /// Found by fuzzing (`storage`): a log record whose instance depends on itself (or whose
    /// accepted ballot is above its ballot) was replayed, and the restored core broke
    /// `check_invariants`; such a record is now refused, so the log refuses to start.
    #[test]
    fn a_record_that_cannot_exist_is_refused() {
        let id = InstanceId::new(ReplicaId(1), 4);
        let good = Instance {
            epoch: Epoch(0),
            status: Status::Committed,
            ballot: Ballot::initial(ReplicaId(1)),
            accepted_ballot: None,
            commands: Arc::new(vec![]),
            deps: Deps::from([InstanceId::new(ReplicaId(1), 3)]),
            init_deps: None,
        };
        assert!(record_from_proto(record_to_proto(id, &good), 3).is_ok());
        let mut own = good.clone();
        own.deps = Deps::from([id]);
        let mut own_init = good.clone();
        own_init.init_deps = Some(Deps::from([id]));
        let mut above = good.clone();
        above.accepted_ballot = Some(Ballot {
            round: 1,
            replica: ReplicaId(0),
        });
        let far = (InstanceId::new(ReplicaId(1), SLOT_LIMIT), good.clone());
        for (id, inst) in [(id, own), (id, own_init), (id, above), far] {
            assert!(matches!(
                record_from_proto(record_to_proto(id, &inst), 3),
                Err(WireError::Impossible(_))
            ));
        }
        // And on the wire: a slot beyond any row.
        let m = Message::AcceptOk {
            instance: InstanceId::new(ReplicaId(1), u64::MAX),
            ballot: Ballot::initial(ReplicaId(1)),
        };
        assert!(matches!(
            decode(&encode(&m), 3),
            Err(WireError::Impossible(_))
        ));
    }

    /// A membership change travels and is stored whole; one with an operation beside it, a
    /// client's id, request 0, no change, or an address beyond its bound is refused.
    #[test]
    fn membership_changes_round_trip_and_garbage_is_refused() {
        let add = Command::reconfigure(
            ReplicaId(1),
            Change::Add(Member {
                id: ReplicaId(4),
                peer_addr: "h4:7000".into(),
                client_addr: "h4:8000".into(),
            }),
            Epoch(2),
        );
        let remove = Command::reconfigure(ReplicaId(0), Change::Remove(ReplicaId(0)), Epoch(0));
        let wire = commands_to_proto(&[add.clone(), remove.clone()]);
        let back = commands_from(wire.clone()).expect("valid");
        assert_eq!(*back, vec![add, remove]);
        let refused = |c: proto::Command| commands_from(vec![c]).is_err();
        let mut with_op = wire[0].clone();
        with_op.op = Some(op_to_proto(&Op::Get {
            key: Bytes::from_static(b"k"),
        }));
        assert!(refused(with_op), "an operation beside it");
        let mut client = wire[0].clone();
        client.client_id = 5;
        assert!(refused(client), "a client's id");
        let mut zero = wire[0].clone();
        zero.request_id = 0;
        assert!(refused(zero), "request 0");
        let mut empty = wire[0].clone();
        empty.reconfigure = Some(proto::Reconfigure {
            epoch: 0,
            change: None,
        });
        assert!(refused(empty), "no change");
        let mut long = wire[0].clone();
        long.reconfigure = Some(proto::Reconfigure {
            epoch: 0,
            change: Some(proto::reconfigure::Change::Add(proto::ReconfigureMember {
                id: 4,
                peer_addr: "x".repeat(crate::core::limits::ADDRESS_BYTES_MAX + 1),
                client_addr: "h:1".into(),
            })),
        });
        assert!(refused(long), "an address too long");
        let mut far = wire[1].clone();
        far.reconfigure = Some(proto::Reconfigure {
            epoch: 0,
            change: Some(proto::reconfigure::Change::Remove(MEMBERS_EVER_MAX as u32)),
        });
        assert!(refused(far), "an id no configuration can hold");
        let client_request = proto::ProposeRequest {
            client_id: RECONFIGURE_CLIENT.0,
            request_id: 1,
            ..Default::default()
        };
        assert_eq!(
            command_from_request(client_request).err(),
            Some(CommandError::ReservedClient)
        );
    }

    #[test]
    fn garbage_and_bad_ids_are_errors() {
        assert!(decode(&Bytes::from_static(&[0xff, 0xff, 0xff, 0x01]), 3).is_err());
        let m = Message::AcceptOk {
            instance: InstanceId::new(ReplicaId(7), 1),
            ballot: Ballot::initial(ReplicaId(0)),
        };
        assert!(matches!(
            decode(&encode(&m), 3),
            Err(WireError::UnknownReplica { id: 7, rows: 3 })
        ));
        assert!(matches!(
            decode(&Bytes::new(), 3),
            Err(WireError::Missing("kind"))
        ));
    }

    /// A RecoverOk names an epoch only with the commands its leader fixed it with: an epoch
    /// from a replica that holds nothing (or a no-op), or one not marked known, is garbage.
    #[test]
    fn a_recover_ok_names_an_epoch_only_with_commands() {
        use proto::peer_message::Kind;
        let id = InstanceId::new(ReplicaId(1), 4);
        let held = Message::RecoverOk {
            instance: id,
            ballot: Ballot::initial(ReplicaId(0)),
            reply: RecoverReply {
                status: Status::Accepted,
                accepted_ballot: Some(Ballot::initial(ReplicaId(0))),
                commands: Arc::new(vec![Command {
                    client: ClientId(1),
                    request: RequestId(1),
                    op: Op::Delete {
                        key: Bytes::from_static(b"k"),
                    },
                    time_ms: 0,
                    retry: false,
                }]),
                deps: Deps::new(),
                init_deps: None,
                epoch: Some(Epoch(0)),
            },
        };
        assert_eq!(decode(&encode(&held), 3).expect("decodes"), held);
        let tampered = |change: &dyn Fn(&mut proto::RecoverOk)| {
            let mut p = message_to_proto(&held);
            let Some(Kind::RecoverOk(m)) = p.kind.as_mut() else {
                panic!("a RecoverOk encodes as one");
            };
            change(m);
            message_from_proto(p, 3)
        };
        assert!(matches!(
            tampered(&|m| m.commands.clear()),
            Err(WireError::Impossible(_))
        ));
        assert!(matches!(
            tampered(&|m| m.status = proto::InstanceStatus::Initial as i32),
            Err(WireError::Impossible(_))
        ));
        assert!(matches!(
            tampered(&|m| {
                m.epoch_known = false;
                m.epoch = 2;
            }),
            Err(WireError::Impossible(_))
        ));
        let Ok(Message::RecoverOk { reply, .. }) = tampered(&|m| m.epoch_known = false) else {
            panic!("a RecoverOk without an epoch decodes");
        };
        assert_eq!(reply.epoch, None);
    }

    /// Ids are checked against the rows the replica knows, not epoch 0's size: once a
    /// configuration added id 3, its messages, ballots, deps and records decode; an id never
    /// heard of is still refused (UnknownReplica, with the rows known), and one no
    /// configuration can hold is garbage (ImpossibleReplica).
    #[test]
    fn ids_are_checked_against_the_rows_known() {
        let added = ReplicaId(3);
        let m = Message::Commit {
            instance: InstanceId::new(added, 0),
            epoch: Epoch(1),
            ballot: Ballot::initial(added),
            commands: Arc::new(vec![]),
            deps: Deps::from([InstanceId::new(ReplicaId(0), 2)]),
        };
        assert!(matches!(
            decode(&encode(&m), 3),
            Err(WireError::UnknownReplica { id: 3, rows: 3 })
        ));
        assert_eq!(decode(&encode(&m), 4).expect("row 3 is known"), m);
        let far = MEMBERS_EVER_MAX as u32;
        for id in [far, u32::MAX] {
            let m = Message::AcceptOk {
                instance: InstanceId::new(ReplicaId(0), 1),
                ballot: Ballot {
                    round: 1,
                    replica: ReplicaId(id),
                },
            };
            assert!(matches!(
                decode(&encode(&m), MEMBERS_EVER_MAX),
                Err(WireError::ImpossibleReplica(i)) if i == id
            ));
        }
        let watermark = |rows: usize| Message::Watermark {
            committed_prefix: vec![0; rows],
            executed_prefix: vec![],
            collected_prefix: vec![],
        };
        assert!(decode(&encode(&watermark(4)), 4).is_ok());
        assert_eq!(
            decode(&encode(&watermark(4)), 3).expect("an added row is cut off"),
            watermark(3),
            "a Watermark from a peer that executed an add is read for the rows known here"
        );
        assert!(matches!(
            decode(&encode(&watermark(MEMBERS_EVER_MAX + 1)), 3),
            Err(WireError::ImpossibleReplica(_))
        ));
        // The log's records alike: a record of the added row replays once the row is known.
        let id = InstanceId::new(added, 0);
        let record = record_to_proto(id, &Instance::unknown(id, Epoch(1)));
        assert!(matches!(
            record_from_proto(record.clone(), 3),
            Err(WireError::UnknownReplica { id: 3, rows: 3 })
        ));
        assert!(record_from_proto(record, 4).is_ok());
    }
}
