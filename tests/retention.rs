//! Retention on real processes: with one replica of three killed, the survivors' memory and
//! data directory stay bounded under load (they collect past the dead member once a majority
//! executed `--retention-instances` beyond it), and the killed replica, restarted on its data
//! directory, catches up by a peer's snapshot; all three then hold one state and no
//! acknowledged write is lost.

mod common;

use std::time::{Duration, Instant};

use common::{get, metric_sum, put, scrape_metrics, Cluster, Session};

/// Per row, instances a peer may lag behind a majority before the others collect past it.
const RETENTION: u64 = 300;
/// Writer sessions, each with its own keys (so the last value it was told is the key's).
const SESSIONS: usize = 10;
const KEYS_PER_SESSION: usize = 5;
/// Puts per session in each phase: 1,500 instances a phase (one command an instance), about
/// 750 in each survivor's row, well past the retention.
const PUTS_PER_PHASE: usize = 150;

fn key(session: usize, k: usize) -> String {
    format!("s{session}-k{k}")
}

/// Runs one phase of puts through replicas 0 and 1 (sessions alternate); returns, per session,
/// the last value acknowledged for each of its keys.
async fn load(cluster: &Cluster, phase: usize) -> Vec<Vec<String>> {
    let mut tasks = Vec::new();
    for s in 0..SESSIONS {
        let mut client = cluster.client(s % 2).await.expect("connect to a survivor");
        tasks.push(tokio::spawn(async move {
            let mut session = Session::new();
            let mut last = vec![String::new(); KEYS_PER_SESSION];
            for i in 0..PUTS_PER_PHASE {
                let k = i % KEYS_PER_SESSION;
                let value = format!("p{phase}-s{s}-{i}");
                session
                    .call(&mut client, put(&key(s, k), &value))
                    .await
                    .unwrap_or_else(|e| panic!("put {i} of session {s} in phase {phase}: {e}"));
                last[k] = value;
            }
            last
        }));
    }
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.expect("writer task"));
    }
    out
}

fn metric(cluster: &Cluster, i: usize, name: &str) -> f64 {
    let text = scrape_metrics(&cluster.metrics[i]).expect("scrape");
    metric_sum(&text, name)
}

/// Bytes of every file in replica `i`'s data directory.
fn data_bytes(cluster: &Cluster, i: usize) -> u64 {
    let dir = cluster.dir.join(format!("replica-{i}"));
    // Up to each file's last non-zero byte: the log keeps a segment of zeros written ahead of
    // its records (preallocation, up to `LOG_SEGMENT_BYTES`), which is not data held.
    std::fs::read_dir(&dir)
        .expect("read the data directory")
        .filter_map(|e| e.ok())
        .filter(|e| e.metadata().is_ok_and(|m| m.is_file()))
        .filter_map(|e| std::fs::read(e.path()).ok())
        .map(|bytes| {
            bytes
                .iter()
                .rposition(|b| *b != 0)
                .map_or(0, |p| p as u64 + 1)
        })
        .sum()
}

/// Waits (bounded) until both survivors hold at most `bound` instances in memory; returns
/// their counts.
async fn survivors_bounded(cluster: &Cluster, bound: f64) -> [f64; 2] {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let held = [0, 1].map(|i| metric(cluster, i, "epaxos_instances_in_memory"));
        if held.iter().all(|h| *h <= bound) {
            return held;
        }
        assert!(
            Instant::now() < deadline,
            "survivors still hold {held:?} instances in memory (bound {bound}); logs:\n{}\n{}",
            cluster.log_tail(0, 20),
            cluster.log_tail(1, 20)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survivors_stay_bounded_with_a_member_down_and_it_catches_up_by_snapshot() {
    let retention = RETENTION.to_string();
    let mut cluster = Cluster::start(
        3,
        &[
            "--insecure",
            "--batch-max",
            "1",
            "--retention-instances",
            &retention,
            "--checkpoint-every",
            "200",
            "--heartbeat-ms",
            "200",
            "--suspect-after-ms",
            "1000",
        ],
    )
    .await;
    cluster.kill(2);

    // Two rows take the load: each survivor keeps about the retention of each, plus what is
    // in flight; without the retention both would hold every instance of the run.
    let bound = (2 * RETENTION + 200) as f64;
    let _ = load(&cluster, 0).await;
    let after_first = survivors_bounded(&cluster, bound).await;
    let bytes_first = [data_bytes(&cluster, 0), data_bytes(&cluster, 1)];
    let last = load(&cluster, 1).await;
    let after_second = survivors_bounded(&cluster, bound).await;
    let bytes_second = [data_bytes(&cluster, 0), data_bytes(&cluster, 1)];
    for i in 0..2 {
        // The key set is fixed, so the checkpoint does not grow; the log is cut at every
        // checkpoint. Twice the load may not double the data.
        assert!(
            bytes_second[i] < bytes_first[i] + bytes_first[i] / 2 + 256 * 1024,
            "replica {i}'s data directory grew with the load: {} then {} bytes",
            bytes_first[i],
            bytes_second[i]
        );
    }
    println!(
        "survivors with r2 down: instances in memory {after_first:?} after 1,500 puts, \
         {after_second:?} after 3,000; data bytes {bytes_first:?} then {bytes_second:?}"
    );

    // The killed replica returns on its data directory: the survivors collected what it never
    // executed, so it catches up by snapshot.
    cluster.restart(2).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while metric(&cluster, 2, "epaxos_catch_ups_total") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "replica 2 did not install a snapshot; log:\n{}",
            cluster.log_tail(2, 30)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        cluster.log(2).contains("caught up from a peer's snapshot"),
        "{}",
        cluster.log_tail(2, 30)
    );
    let digest = cluster.converged().await;
    println!("all three converged on digest {digest:#x}");

    // No acknowledged write is lost: the last value of every key, read at every replica.
    for r in 0..3 {
        let mut client = cluster.client(r).await.expect("connect");
        let mut session = Session::new();
        for (s, values) in last.iter().enumerate() {
            for (k, value) in values.iter().enumerate() {
                let got = session
                    .call(&mut client, get(&key(s, k)))
                    .await
                    .unwrap_or_else(|e| panic!("get {} at replica {r}: {e}", key(s, k)));
                assert!(got.found, "{} lost at replica {r}", key(s, k));
                assert_eq!(got.value, value.as_bytes(), "{} at replica {r}", key(s, k));
            }
        }
    }
}
