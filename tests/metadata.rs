//! The metadata record on real replica processes: a data directory of an earlier version (the
//! `incarnation`, `peers` and `membership` text files, written here by hand) starts as the same
//! replica and is rewritten as one record by the next change; a damaged record refuses to start.

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::*;
use epaxos_kv::proto;
use prost::Message as _;

/// `<magic: 8> | length: u32 | crc32c: u32 | proto::Metadata`.
const RECORD_AT: usize = 16;

fn read_record(dir: &std::path::Path) -> proto::Metadata {
    let bytes = std::fs::read(dir.join("metadata")).expect("read metadata");
    proto::Metadata::decode(&bytes[RECORD_AT..]).expect("decode metadata")
}

/// Turns replica `dir`'s record into the three text files an earlier version wrote.
fn write_legacy_files(dir: &std::path::Path) -> proto::Metadata {
    let m = read_record(dir);
    std::fs::write(dir.join("incarnation"), format!("{}\n", m.incarnation)).expect("write");
    let peers: String = m
        .peer_incarnations
        .iter()
        .enumerate()
        .filter(|(_, inc)| **inc != 0)
        .map(|(id, inc)| format!("{id} {inc}\n"))
        .collect();
    std::fs::write(dir.join("peers"), peers).expect("write");
    let horizons = match &m.membership {
        Some(proto::metadata::Membership::Joined(j)) => &j.horizons,
        other => panic!("replica not joined: {other:?}"),
    };
    let words: Vec<String> = horizons.iter().map(u64::to_string).collect();
    std::fs::write(
        dir.join("membership"),
        format!("joined {}\n", words.join(" ")),
    )
    .expect("write");
    std::fs::remove_file(dir.join("metadata")).expect("remove the record");
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_versions_data_directory_starts_as_the_same_replica_and_is_rewritten() {
    let mut cluster = Cluster::start(3, &["--insecure"]).await;
    let mut c0 = cluster.client(0).await.expect("connect");
    let mut s = Session::new();
    s.call(&mut c0, put("kept", "v")).await.expect("put");
    cluster.kill(0);
    let dir0 = cluster.dir.join("replica-0");
    let before = write_legacy_files(&dir0);
    cluster.restart(0).await;

    // The same incarnation: the peers, which recorded it, still accept replica 0.
    let mut c0 = cluster.client(0).await.expect("connect");
    let r = s.call(&mut c0, get("kept")).await.expect("get");
    assert_eq!(&r.value[..], b"v", "the data is there");
    for i in [1, 2] {
        let st = cluster.status(i).await;
        assert!(st.peers_refused.is_empty(), "replica {i} refuses: {st:?}");
    }
    assert!(dir0.join("incarnation").exists(), "nothing changed yet");

    // A change: replica 1 loses its data and rejoins as a new incarnation, which replica 0
    // records, as one record that replaces the text files.
    cluster.kill(1);
    std::fs::remove_dir_all(cluster.dir.join("replica-1")).expect("wipe replica 1");
    cluster.restart(1).await;
    let deadline = Instant::now() + Duration::from_secs(20);
    while !dir0.join("metadata").exists() {
        assert!(
            Instant::now() < deadline,
            "replica 0 wrote no record:\n{}",
            cluster.log_tail(0, 30)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for name in ["incarnation", "peers", "membership"] {
        assert!(!dir0.join(name).exists(), "{name} left behind");
    }
    let after = read_record(&dir0);
    assert_eq!(
        after.incarnation, before.incarnation,
        "its own incarnation kept"
    );
    assert_eq!(after.replica, 0);
    assert_eq!(after.cluster_size, 3);
    let new1 = read_record(&cluster.dir.join("replica-1")).incarnation;
    assert_ne!(
        new1, before.peer_incarnations[1],
        "replica 1 is a new incarnation"
    );
    assert_eq!(
        after.peer_incarnations[1], new1,
        "and replica 0 recorded it"
    );

    // Replica 0 restarts from the record and serves.
    cluster.restart(0).await;
    let mut c0 = cluster.client(0).await.expect("connect");
    let r = s.call(&mut c0, get("kept")).await.expect("get");
    assert_eq!(&r.value[..], b"v");
    cluster
        .converged_among(&[0, 1, 2], Duration::from_secs(30))
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_metadata_record_refuses_to_start() {
    let mut cluster = Cluster::start(3, &["--insecure"]).await;
    cluster.kill(2);
    let dir2 = cluster.dir.join("replica-2");
    let mut bytes = std::fs::read(dir2.join("metadata")).expect("read");
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(dir2.join("metadata"), &bytes).expect("damage");
    let (code, _, err) = output_within(
        Command::new(env!("CARGO_BIN_EXE_replica"))
            .args(["--config"])
            .arg(&cluster.config)
            .args(["--id", "2", "--insecure", "--data-dir"])
            .arg(&dir2),
        Duration::from_secs(20),
    );
    assert_ne!(code, Some(0), "refused: {err}");
    assert!(
        err.contains("metadata") && err.contains("checksum mismatch"),
        "names the file and the damage: {err}"
    );
    assert_eq!(
        std::fs::read(dir2.join("metadata")).expect("read"),
        bytes,
        "and leaves it as it was (no fresh start)"
    );
}
