//! The client request path: `ProposeRequest` bytes -> `wire::command_from_request` (validation)
//! -> a command proposed to a core and executed by the state machine. Must never panic; an
//! accepted command passes `Op::validate` and converts back to the same operation.
#![no_main]

use std::time::Duration;

use bytes::Bytes;
use epaxos_kv::core::kv::KvStore;
use epaxos_kv::core::replica::{Options, Replica};
use epaxos_kv::core::{ids::ReplicaId, wire};
use epaxos_kv::proto;
use epaxos_kv_fuzz::{mode, patch};
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

fn templates() -> Vec<proto::ProposeRequest> {
    use proto::operation::Kind;
    let op = |kind| Some(proto::Operation { kind: Some(kind) });
    let key = Bytes::from_static(b"key");
    vec![
        proto::ProposeRequest {
            client_id: 1,
            request_id: 1,
            retry: false,
            op: op(Kind::Get(proto::Get { key: key.clone() })),
        },
        proto::ProposeRequest {
            client_id: 2,
            request_id: 9,
            retry: false,
            op: op(Kind::Put(proto::Put {
                key: key.clone(),
                value: Bytes::from_static(b"value"),
            })),
        },
        proto::ProposeRequest {
            client_id: 3,
            request_id: 2,
            retry: false,
            op: op(Kind::Delete(proto::Delete { key: key.clone() })),
        },
        proto::ProposeRequest {
            client_id: u64::MAX,
            request_id: u64::MAX,
            retry: false,
            op: op(Kind::Cas(proto::Cas {
                key,
                expected: Some(Bytes::from_static(b"old")),
                new_value: Bytes::from_static(b"new"),
            })),
        },
    ]
}

fuzz_target!(|data: &[u8]| {
    let Some((template, rest)) = mode(data) else {
        return;
    };
    let bytes = match template {
        Some(t) => {
            let all = templates();
            patch(all[t % all.len()].encode_to_vec(), rest)
        }
        None => rest.to_vec(),
    };
    let Ok(req) = proto::ProposeRequest::decode(bytes.as_slice()) else {
        return;
    };
    let Ok(cmd) = wire::command_from_request(req) else {
        return;
    };
    assert!(cmd.op.validate().is_ok(), "an accepted command is valid");
    let again = wire::op_from_proto(Some(wire::op_to_proto(&cmd.op)));
    assert_eq!(again.ok().as_ref(), Some(&cmd.op), "the operation round-trips");
    // Executed by the state machine, twice (the retry gets the same answer)...
    let mut kv = KvStore::new();
    let first = kv.apply(&cmd, ReplicaId(0));
    let second = kv.apply(&cmd, ReplicaId(0));
    assert_eq!(first.result(), second.result(), "a retry gets the original answer");
    // ... and proposed to a core.
    let mut core = Replica::new(Options::new(ReplicaId(0), 3));
    if core.propose(1, cmd).is_ok() {
        core.flush(Duration::ZERO);
    }
    let _ = core.take_ready();
    if let Err(e) = core.check_invariants() {
        panic!("invariant broken: {e}");
    }
});
