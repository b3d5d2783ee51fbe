//! The data directory readers: bytes written into a fresh data directory's files -> the log and
//! checkpoint readers (`Log::open`: framing, checksums, torn tails, record and checkpoint
//! decoding) -> replay into a core (`Replica::restore_from`); also the metadata record and the
//! membership, peer incarnation and incarnation files of earlier versions. Must return an error or a state whose invariants hold,
//! never panic.
//!
//! Modes (first byte, modulo 9): 0 the log as raw bytes; 1 the log as records framed with
//! correct checksums (each chunk: a length byte, then that many payload bytes); 2 template
//! records, one of them patched, framed; 3 the checkpoint file raw; 4 the checkpoint payload
//! framed; 5 a real checkpoint patched, framed, with a template log; 6 `membership`;
//! 7 `peers`; 8 `metadata` or `incarnation`.
#![no_main]

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use epaxos_kv::core::checkpoint::Checkpoint;
use epaxos_kv::core::ids::ReplicaId;
use epaxos_kv::core::replica::{Options, Replica};
use epaxos_kv::core::wire;
use epaxos_kv::server::storage::{Log, Metadata, Sync};
use epaxos_kv_fuzz::{core_with_state, patch, record_templates, N};
use libfuzzer_sys::fuzz_target;
use prost::Message as _;

fn dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        std::env::temp_dir().join(format!("epaxos-fuzz-storage-{}", std::process::id()))
    })
}

fn frame(out: &mut Vec<u8>, payload: &[u8]) {
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
    out.extend_from_slice(payload);
}

/// The metadata (record or earlier text files) opens to a well-formed state, or is refused.
fn check_metadata(d: &Path) {
    if let Ok(m) = Metadata::open(d, ReplicaId(0), N) {
        assert_eq!(m.peers.len(), N, "one entry per replica");
    }
}

fn framed_templates(patched: Option<(usize, &[u8])>) -> Vec<u8> {
    let mut log = Vec::new();
    for (i, (id, inst)) in record_templates().iter().enumerate() {
        let mut payload = wire::record_to_proto(*id, inst).encode_to_vec();
        if let Some((which, patches)) = patched {
            if which % record_templates().len() == i {
                payload = patch(payload, patches);
            }
        }
        frame(&mut log, &payload);
    }
    log
}

fn write(name: &str, bytes: &[u8]) {
    std::fs::write(dir().join(name), bytes).expect("the fuzzer's own temp dir is writable");
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let d = dir();
    let _ = std::fs::remove_dir_all(d);
    std::fs::create_dir_all(d).expect("the fuzzer's own temp dir");
    match first % 9 {
        0 => write("instances.log", rest),
        1 => {
            let mut log = Vec::new();
            let mut at = rest;
            while let Some((&len, tail)) = at.split_first() {
                let take = (len as usize).min(tail.len());
                frame(&mut log, &tail[..take]);
                at = &tail[take..];
            }
            write("instances.log", &log);
        }
        2 => {
            let which = rest.first().copied().unwrap_or(0) as usize;
            let patches = rest.get(1..).unwrap_or_default();
            write("instances.log", &framed_templates(Some((which, patches))));
        }
        3 => write("checkpoint", rest),
        4 => {
            let mut c = Vec::new();
            frame(&mut c, rest);
            write("checkpoint", &c);
        }
        5 => {
            let (encoded, _) = core_with_state().checkpoint();
            let mut c = Vec::new();
            frame(&mut c, &patch(encoded, rest));
            write("checkpoint", &c);
            write("instances.log", &framed_templates(None));
        }
        6 => {
            write("incarnation", b"5\n");
            write("membership", rest);
            check_metadata(d);
            return;
        }
        7 => {
            write("incarnation", b"5\n");
            write("peers", rest);
            check_metadata(d);
            return;
        }
        _ => {
            // The metadata record (even first byte), or an earlier version's incarnation file.
            match rest.split_first() {
                Some((b, record)) if b % 2 == 0 => write("metadata", record),
                _ => write("incarnation", rest),
            }
            check_metadata(d);
            return;
        }
    }
    let Ok((_log, recovered)) = Log::open(d, N, Sync::None) else {
        return;
    };
    if let Some(c) = &recovered.checkpoint {
        // A checkpoint read back encodes and decodes to the same thing.
        let again = Checkpoint::decode(&c.encode(), N);
        assert!(again.is_ok(), "a decoded checkpoint re-encodes");
    }
    let mut core = Replica::restore_from(
        Options::new(ReplicaId(0), N),
        Duration::ZERO,
        recovered.checkpoint,
        recovered.records,
    );
    if let Err(e) = core.check_invariants() {
        panic!("invariant broken after replay: {e}");
    }
    core.tick(Duration::from_secs(2));
    let _ = core.take_ready();
    if let Err(e) = core.check_invariants() {
        panic!("invariant broken after replay and a tick: {e}");
    }
});
