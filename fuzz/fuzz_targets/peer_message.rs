//! Peer input end to end: `PeerBatch` / `PeerMessage` bytes -> `wire` decoding and validation ->
//! the core's handler (a replica with some history), with its timers firing in between. Must
//! never panic; every accepted message leaves `check_invariants` true, and whatever the core
//! sends in answer encodes and decodes back to itself.
#![no_main]

use std::time::Duration;

use epaxos_kv::core::ids::ReplicaId;
use epaxos_kv::core::wire;
use epaxos_kv::proto;
use epaxos_kv_fuzz::{core_with_state, message_templates, mode, patch, N};
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

fuzz_target!(|data: &[u8]| {
    let Some((template, rest)) = mode(data) else {
        return;
    };
    let (from, messages) = match template {
        Some(t) => {
            let templates = message_templates();
            let msg = &templates[t % templates.len()];
            let from = 1 + (t / templates.len()) as u32 % 2;
            (from, vec![patch(wire::encode(msg).to_vec(), rest)])
        }
        None => match proto::PeerBatch::decode(rest) {
            Ok(b) => (b.from, b.messages.iter().map(|m| m.to_vec()).collect()),
            Err(_) => (1, vec![rest.to_vec()]),
        },
    };
    // The runtime closes a stream whose batch names a replica outside the cluster.
    if from as usize >= N {
        return;
    }
    let mut core = core_with_state();
    let mut now = Duration::from_secs(5);
    for bytes in messages {
        let Ok(msg) = wire::decode(&bytes, N) else {
            continue;
        };
        core.handle(now, ReplicaId(from), msg);
        core.flush(now);
        now += Duration::from_millis(700);
        core.tick(now);
        let ready = core.take_ready();
        for out in ready.messages {
            let back = wire::decode(&wire::encode(&out.msg), N);
            assert_eq!(back.ok().as_ref(), Some(&out.msg), "what the core sends decodes");
        }
        if let Err(e) = core.check_invariants() {
            panic!("invariant broken: {e}");
        }
    }
});
