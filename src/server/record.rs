//! The log record's bytes, encoded by hand: exactly what prost writes for the
//! `InstanceRecord` that [`wire::record_to_proto`] builds (a proptest below checks the bytes
//! against prost's for arbitrary instances), without building that message first.
//!
//! Why not prost: the writer encodes every instance state the core persists, two or more per
//! instance and each with all its commands. Through prost that is a tree of owned messages
//! (a `proto::Command` and an `Operation` per command, a `Vec` per dependency list, a
//! reference count taken on every key and value) that is built, measured level by level
//! (prost asks each nested message its length once per level above it) and dropped again.
//! Here each length is computed once from the instance itself and the bytes go straight into
//! the writer's buffer: framing the records cost replica 0 about 3.5k instructions per
//! command through prost and 1.6k this way (callgrind, c16 round-robin, issue 14). The rare
//! record holding a membership change goes through prost (see [`encode`]).

use prost::Message as _;

use crate::core::command::{Command, Op};
use crate::core::ids::{Ballot, InstanceId};
use crate::core::instance::{Instance, Status};
use crate::core::wire;

/// Appends the protobuf encoding of `id`'s record `inst` to `buf`: the same bytes as
/// `wire::record_to_proto(id, inst).encode(buf)`.
pub fn encode(buf: &mut Vec<u8>, id: InstanceId, inst: &Instance) {
    // A membership change's command nests a `Reconfigure` with addresses: rare (one per
    // change), so it keeps the one encoder that knows it rather than a second copy here.
    if inst
        .commands
        .iter()
        .any(|c| matches!(c.op, Op::Reconfigure { .. }))
    {
        wire::record_to_proto(id, inst)
            .encode(buf)
            .expect("a Vec grows to take any message");
        return;
    }
    message(buf, 1, instance_id_len(id));
    instance_id(buf, id);
    uint(buf, 2, status_number(inst.status));
    message(buf, 3, ballot_len(inst.ballot));
    ballot(buf, inst.ballot);
    if let Some(b) = inst.accepted_ballot {
        message(buf, 4, ballot_len(b));
        ballot(buf, b);
    }
    for c in inst.commands.iter() {
        command(buf, c);
    }
    for d in inst.deps.as_slice() {
        message(buf, 6, instance_id_len(*d));
        instance_id(buf, *d);
    }
    for d in inst.init_deps.as_ref().map_or(&[][..], |d| d.as_slice()) {
        message(buf, 7, instance_id_len(*d));
        instance_id(buf, *d);
    }
    uint(buf, 8, u64::from(inst.init_deps.is_some()));
    uint(buf, 9, inst.epoch.0);
}

/// The stored number of a status (`InstanceStatus` in the proto): executed is stored as
/// committed, as `wire` does.
fn status_number(s: Status) -> u64 {
    match s {
        Status::Initial => 0,
        Status::PreAccepted => 1,
        Status::Accepted => 2,
        Status::Committed | Status::Executed => 3,
    }
}

fn instance_id_len(id: InstanceId) -> usize {
    uint_len(1, u64::from(id.replica.0)) + uint_len(2, id.slot)
}

fn instance_id(buf: &mut Vec<u8>, id: InstanceId) {
    uint(buf, 1, u64::from(id.replica.0));
    uint(buf, 2, id.slot);
}

fn ballot_len(b: Ballot) -> usize {
    uint_len(1, u64::from(b.round)) + uint_len(2, u64::from(b.replica.0))
}

fn ballot(buf: &mut Vec<u8>, b: Ballot) {
    uint(buf, 1, u64::from(b.round));
    uint(buf, 2, u64::from(b.replica.0));
}

/// Field 5 of the record, a `Command`: client_id 1, request_id 2, op 3 (an `Operation`),
/// time_ms 4, retry 5, expire 6 (an `ExpireSession`). Each length is computed once.
fn command(buf: &mut Vec<u8>, c: &Command) {
    let op = op_body_len(&c.op).map(|body| (body, message_len(1, body)));
    let expire = match c.op {
        Op::Expire { idle_since_ms } => Some((idle_since_ms, uint_len(1, idle_since_ms))),
        _ => None,
    };
    let len = uint_len(1, c.client.0)
        + uint_len(2, c.request.0)
        + op.map_or(0, |(_, operation)| message_len(3, operation))
        + uint_len(4, c.time_ms)
        + uint_len(5, u64::from(c.retry))
        + expire.map_or(0, |(_, body)| message_len(6, body));
    message(buf, 5, len);
    uint(buf, 1, c.client.0);
    uint(buf, 2, c.request.0);
    if let Some((body, operation_len)) = op {
        message(buf, 3, operation_len);
        operation(buf, &c.op, body);
    }
    uint(buf, 4, c.time_ms);
    uint(buf, 5, u64::from(c.retry));
    if let Some((idle_since_ms, body)) = expire {
        message(buf, 6, body);
        uint(buf, 1, idle_since_ms);
    }
}

/// The length of the message inside the `Operation`'s oneof (get 1, put 2, delete 3, cas 4,
/// each a message of bytes fields); `None` for the operations that are not one (an expiry is
/// field 6 of the command instead).
fn op_body_len(op: &Op) -> Option<usize> {
    Some(match op {
        Op::Get { key } | Op::Delete { key } => bytes_len(1, key),
        Op::Put { key, value } => bytes_len(1, key) + bytes_len(2, value),
        Op::Cas { key, expected, new } => {
            bytes_len(1, key)
                // `optional`: present whenever set, even empty.
                + expected.as_ref().map_or(0, |e| message_len(2, e.len()))
                + bytes_len(3, new)
        }
        Op::Expire { .. } | Op::Reconfigure { .. } => return None,
    })
}

/// The `Operation` of a client operation whose inner message is `body` bytes long.
fn operation(buf: &mut Vec<u8>, op: &Op, body: usize) {
    match op {
        Op::Get { key } => {
            message(buf, 1, body);
            bytes(buf, 1, key);
        }
        Op::Put { key, value } => {
            message(buf, 2, body);
            bytes(buf, 1, key);
            bytes(buf, 2, value);
        }
        Op::Delete { key } => {
            message(buf, 3, body);
            bytes(buf, 1, key);
        }
        Op::Cas { key, expected, new } => {
            message(buf, 4, body);
            bytes(buf, 1, key);
            if let Some(e) = expected {
                message(buf, 2, e.len());
                buf.extend_from_slice(e);
            }
            bytes(buf, 3, new);
        }
        Op::Expire { .. } | Op::Reconfigure { .. } => {}
    }
}

/// Wire type 0 (varint) and 2 (length-delimited).
const VARINT: u32 = 0;
const LEN: u32 = 2;

fn varint_len(v: u64) -> usize {
    // 7 bits a byte; 0 still takes one.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn varint(buf: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn key(buf: &mut Vec<u8>, field: u32, wire_type: u32) {
    varint(buf, u64::from(field << 3 | wire_type));
}

fn key_len(field: u32) -> usize {
    varint_len(u64::from(field << 3))
}

/// A proto3 scalar: written only when not 0 (bools and enums as 0 or 1 and their number).
fn uint_len(field: u32, v: u64) -> usize {
    if v == 0 {
        0
    } else {
        key_len(field) + varint_len(v)
    }
}

fn uint(buf: &mut Vec<u8>, field: u32, v: u64) {
    if v != 0 {
        key(buf, field, VARINT);
        varint(buf, v);
    }
}

/// A proto3 `bytes` field: written only when not empty.
fn bytes_len(field: u32, b: &[u8]) -> usize {
    if b.is_empty() {
        0
    } else {
        message_len(field, b.len())
    }
}

fn bytes(buf: &mut Vec<u8>, field: u32, b: &[u8]) {
    if !b.is_empty() {
        message(buf, field, b.len());
        buf.extend_from_slice(b);
    }
}

/// A present length-delimited field of `len` bytes: key, length, body.
fn message_len(field: u32, len: usize) -> usize {
    key_len(field) + varint_len(len as u64) + len
}

/// The key and length of a length-delimited field; the caller writes its `len` bytes next.
fn message(buf: &mut Vec<u8>, field: u32, len: usize) {
    key(buf, field, LEN);
    varint(buf, len as u64);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use proptest::prelude::*;

    use super::*;
    use crate::core::deps::Deps;
    use crate::core::epoch::{Change, Epoch};
    use crate::core::ids::{ClientId, ReplicaId, RequestId};

    fn prost_bytes(id: InstanceId, inst: &Instance) -> Vec<u8> {
        wire::record_to_proto(id, inst).encode_to_vec()
    }

    fn hand_bytes(id: InstanceId, inst: &Instance) -> Vec<u8> {
        let mut buf = Vec::new();
        encode(&mut buf, id, inst);
        buf
    }

    /// Numbers near the varint length boundaries (and 0, which proto3 leaves out).
    fn number() -> impl Strategy<Value = u64> {
        prop_oneof![
            Just(0u64),
            1u64..300,
            (0u32..64).prop_map(|b| 1u64 << b),
            (1u32..64).prop_map(|b| (1u64 << b) - 1),
            any::<u64>(),
        ]
    }

    fn small() -> impl Strategy<Value = u32> {
        prop_oneof![Just(0u32), 1u32..200, any::<u32>()]
    }

    /// Empty, short, and longer than one varint byte of length (128+).
    fn payload() -> impl Strategy<Value = Bytes> {
        prop_oneof![
            Just(Bytes::new()),
            proptest::collection::vec(any::<u8>(), 1..20).prop_map(Bytes::from),
            proptest::collection::vec(any::<u8>(), 120..300).prop_map(Bytes::from),
        ]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            payload().prop_map(|key| Op::Get { key }),
            (payload(), payload()).prop_map(|(key, value)| Op::Put { key, value }),
            payload().prop_map(|key| Op::Delete { key }),
            (payload(), proptest::option::of(payload()), payload())
                .prop_map(|(key, expected, new)| Op::Cas { key, expected, new }),
            number().prop_map(|idle_since_ms| Op::Expire { idle_since_ms }),
        ]
    }

    fn command() -> impl Strategy<Value = Command> {
        (number(), number(), op(), number(), any::<bool>()).prop_map(
            |(client, request, op, time_ms, retry)| Command {
                client: ClientId(client),
                request: RequestId(request),
                op,
                time_ms,
                retry,
            },
        )
    }

    fn instance_id() -> impl Strategy<Value = InstanceId> {
        (small(), number()).prop_map(|(r, slot)| InstanceId::new(ReplicaId(r), slot))
    }

    fn ballot() -> impl Strategy<Value = Ballot> {
        (small(), small()).prop_map(|(round, r)| Ballot {
            round,
            replica: ReplicaId(r),
        })
    }

    fn deps() -> impl Strategy<Value = Deps> {
        proptest::collection::vec(instance_id(), 0..6).prop_map(|ids| ids.into_iter().collect())
    }

    fn status() -> impl Strategy<Value = Status> {
        prop_oneof![
            Just(Status::Initial),
            Just(Status::PreAccepted),
            Just(Status::Accepted),
            Just(Status::Committed),
            Just(Status::Executed),
        ]
    }

    fn instance() -> impl Strategy<Value = Instance> {
        (
            number(),
            status(),
            ballot(),
            proptest::option::of(ballot()),
            proptest::collection::vec(command(), 0..8),
            deps(),
            proptest::option::of(deps()),
        )
            .prop_map(
                |(epoch, status, ballot, accepted_ballot, commands, deps, init_deps)| Instance {
                    epoch: Epoch(epoch),
                    status,
                    ballot,
                    accepted_ballot,
                    commands: Arc::new(commands),
                    deps,
                    init_deps,
                },
            )
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

        /// The hand-written bytes are prost's, byte for byte, so the log reads back (and an
        /// older or newer replica reads it) exactly as before.
        #[test]
        fn the_bytes_are_prosts(id in instance_id(), inst in instance()) {
            prop_assert_eq!(hand_bytes(id, &inst), prost_bytes(id, &inst));
        }
    }

    #[test]
    fn a_membership_change_goes_through_prost() {
        let inst = Instance {
            epoch: Epoch(2),
            status: Status::Committed,
            ballot: Ballot::initial(ReplicaId(1)),
            accepted_ballot: None,
            commands: Arc::new(vec![Command::reconfigure(
                ReplicaId(1),
                Change::Remove(ReplicaId(2)),
                Epoch(2),
            )]),
            deps: Deps::default(),
            init_deps: None,
        };
        let id = InstanceId::new(ReplicaId(1), 7);
        assert_eq!(hand_bytes(id, &inst), prost_bytes(id, &inst));
    }
}
