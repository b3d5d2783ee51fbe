//! Helpers shared by the fuzz targets: well-formed templates that an input can patch (so that
//! the fuzzer reaches deep into validation and the core without a stored corpus), and a core
//! with some state to feed.
//!
//! Input convention of the targets: the first byte chooses a mode. Below 128 it picks a
//! template (modulo the number of templates) and the rest of the input is a list of patches
//! (`position`, `value` byte pairs, and a final byte that may truncate) applied to the
//! template's encoding; from 128 up the rest of the input is used as raw bytes.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use epaxos_kv::core::command::{Command, Op};
use epaxos_kv::core::deps::Deps;
use epaxos_kv::core::epoch::Epoch;
use epaxos_kv::core::ids::{Ballot, ClientId, InstanceId, ReplicaId, RequestId};
use epaxos_kv::core::instance::{Instance, Status};
use epaxos_kv::core::message::{Message, RecoverReply};
use epaxos_kv::core::replica::{Options, Replica};

/// Cluster size the targets decode for.
pub const N: usize = 3;

/// The input split into its mode and the rest: `Some(template)` for a template, `None` raw.
pub fn mode(data: &[u8]) -> Option<(Option<usize>, &[u8])> {
    let (&first, rest) = data.split_first()?;
    Some(((first < 128).then_some(first as usize), rest))
}

/// Applies `patches` (pairs of position, value; an odd last byte truncates) to `bytes`.
pub fn patch(mut bytes: Vec<u8>, patches: &[u8]) -> Vec<u8> {
    let mut pairs = patches.chunks_exact(2);
    for p in pairs.by_ref() {
        if bytes.is_empty() {
            bytes.push(p[1]);
            continue;
        }
        let at = p[0] as usize % (bytes.len() + 1);
        if at == bytes.len() {
            bytes.push(p[1]);
        } else {
            bytes[at] = p[1];
        }
    }
    if let [cut] = pairs.remainder() {
        let keep = *cut as usize % (bytes.len() + 1);
        bytes.truncate(keep);
    }
    bytes
}

pub fn id(row: u32, slot: u64) -> InstanceId {
    InstanceId::new(ReplicaId(row), slot)
}

pub fn ballot(round: u32, replica: u32) -> Ballot {
    Ballot {
        round,
        replica: ReplicaId(replica),
    }
}

pub fn commands() -> Arc<Vec<Command>> {
    Arc::new(vec![
        Command {
            client: ClientId(7),
            request: RequestId(1),
            op: Op::Put {
                key: Bytes::from_static(b"k"),
                value: Bytes::from_static(b"v"),
            }, time_ms: 0, retry: false, },
        Command {
            client: ClientId(8),
            request: RequestId(2),
            op: Op::Cas {
                key: Bytes::from_static(b"k"),
                expected: Some(Bytes::from_static(b"v")),
                new: Bytes::from_static(b"w"),
            }, time_ms: 0, retry: false, },
    ])
}

/// One message of every type, about instances the core from [`core_with_state`] knows.
pub fn message_templates() -> Vec<Message> {
    let deps = Deps::from([id(0, 0), id(2, 1)]);
    vec![
        Message::PreAccept {
            instance: id(1, 0),
            epoch: Epoch(0),
            ballot: ballot(0, 1),
            commands: commands(),
            deps: deps.clone(),
        },
        Message::PreAcceptOk {
            instance: id(0, 0),
            ballot: ballot(0, 0),
            deps: deps.clone(),
        },
        Message::Accept {
            instance: id(1, 1),
            epoch: Epoch(0),
            ballot: ballot(0, 1),
            commands: commands(),
            deps: deps.clone(),
        },
        Message::AcceptOk {
            instance: id(0, 0),
            ballot: ballot(0, 0),
        },
        Message::Commit {
            instance: id(2, 0),
            epoch: Epoch(0),
            ballot: ballot(1, 2),
            commands: commands(),
            deps: Deps::from([id(0, 0)]),
        },
        Message::Nack {
            instance: id(0, 0),
            promised: ballot(3, 1),
        },
        Message::CommitRequest {
            instances: vec![id(0, 0), id(1, 0)],
        },
        Message::Watermark {
            committed_prefix: vec![1, 0, 2],
            executed_prefix: vec![1, 0, 0],
            collected_prefix: vec![0, 0, 0],
        },
        Message::Recover {
            instance: id(1, 0),
            epoch: Epoch(0),
            ballot: ballot(2, 1),
        },
        Message::RecoverOk {
            instance: id(2, 3),
            ballot: ballot(1, 0),
            reply: RecoverReply {
                status: Status::PreAccepted,
                accepted_ballot: Some(ballot(0, 2)),
                commands: commands(),
                deps: deps.clone(),
                init_deps: Some(Deps::from([id(0, 0)])),
            },
        },
        Message::Validate {
            instance: id(2, 3),
            ballot: ballot(1, 1),
            commands: commands(),
            deps: deps.clone(),
        },
        Message::ValidateOk {
            instance: id(2, 3),
            ballot: ballot(1, 0),
            conflicts: vec![(id(1, 0), true)],
        },
        Message::Waiting {
            instance: id(2, 3),
            matching: 1,
        },
    ]
}

/// Log records of every status.
pub fn record_templates() -> Vec<(InstanceId, Instance)> {
    let inst = |status, b: Ballot, ab: Option<Ballot>, init: Option<Deps>| Instance {
        status,
        ballot: b,
        accepted_ballot: ab,
        commands: commands(),
        deps: Deps::from([id(2, 0)]),
        init_deps: init,
        epoch: Epoch(0),
    };
    vec![
        (
            id(0, 0),
            inst(Status::PreAccepted, ballot(0, 0), None, Some(Deps::new())),
        ),
        (
            id(0, 1),
            inst(Status::Accepted, ballot(0, 0), Some(ballot(0, 0)), None),
        ),
        (
            id(1, 0),
            inst(Status::Committed, ballot(2, 2), Some(ballot(1, 0)), None),
        ),
        (
            id(2, 5),
            inst(Status::Initial, ballot(4, 0), None, Some(Deps::from([id(0, 1)]))),
        ),
    ]
}

/// Replica 0 of [`N`] with some history: its own instance 0.0 in flight, 2.3 pre-accepted from
/// replica 2, 1.0 committed, and a recovery of 2.3 under way (ballot 1.0).
pub fn core_with_state() -> Replica {
    let mut r = Replica::new(Options::new(ReplicaId(0), N));
    let t = Duration::ZERO;
    let _ = r.propose(
        1,
        Command {
            client: ClientId(1),
            request: RequestId(1),
            op: Op::Put {
                key: Bytes::from_static(b"k"),
                value: Bytes::from_static(b"x"),
            }, time_ms: 0, retry: false, },
    );
    r.flush(t);
    r.handle(
        t,
        ReplicaId(2),
        Message::PreAccept {
            instance: id(2, 3),
            epoch: Epoch(0),
            ballot: ballot(0, 2),
            commands: commands(),
            deps: Deps::new(),
        },
    );
    r.handle(
        t,
        ReplicaId(1),
        Message::Commit {
            instance: id(1, 0),
            epoch: Epoch(0),
            ballot: ballot(0, 1),
            commands: commands(),
            deps: Deps::from([id(0, 0)]),
        },
    );
    // Long enough for 2.3 to be a straggler taken over by recovery.
    for ms in [1_000, 2_100, 4_200] {
        r.tick(Duration::from_millis(ms));
    }
    let _ = r.take_ready();
    r
}
