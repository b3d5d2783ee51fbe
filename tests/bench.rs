//! `client bench` on real processes: a round-robin bench keeps going while one replica of three
//! is paused (SIGSTOP), because its workers avoid a replica that times out instead of each
//! waiting on it for a full timeout every third request.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::Cluster;
use serde_json::Value;

/// Runs `client ARGS` to completion (killed after `limit`) and parses its JSON line.
async fn bench(args: Vec<String>, limit: Duration) -> Value {
    tokio::task::spawn_blocking(move || {
        let mut child = Command::new(env!("CARGO_BIN_EXE_client"))
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start the client");
        let start = Instant::now();
        loop {
            if child.try_wait().expect("poll the client").is_some() {
                break;
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                panic!("client {args:?} still running after {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let out = child.wait_with_output().expect("client output");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "client {args:?}: {}\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
    })
    .await
    .expect("client runner")
}

/// Sends `signal` to `pid` with kill(1).
fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill {signal} {pid}");
}

/// Resumes the paused replica however the test ends, so that the cluster's drop can stop it.
struct Resume(u32);

impl Drop for Resume {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-CONT", &self.0.to_string()])
            .status();
    }
}

fn ops_per_sec(v: &Value) -> f64 {
    v["ops_per_sec"].as_f64().expect("ops_per_sec")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn round_robin_bench_keeps_going_while_a_replica_is_paused() {
    let cluster = Cluster::start(3, &["--insecure"]).await;
    let config = cluster.config.to_string_lossy().into_owned();
    let args = |extra: &[&str]| -> Vec<String> {
        [
            "--config",
            &config,
            "--insecure",
            "--target",
            "round-robin",
            "bench",
            "--duration",
            "4",
            "--concurrency",
            "16",
            "--write-pct",
            "50",
            "--attempt-timeout-ms",
            "300",
            "--quiet",
            "--json",
        ]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .collect()
    };
    let limit = Duration::from_secs(60);
    let before = bench(args(&[]), limit).await;
    let base = ops_per_sec(&before);
    assert!(base > 50.0, "the healthy cluster serves: {before}");
    assert_eq!(before["errors"], 0, "{before}");
    assert!(
        before["series"].as_array().map(Vec::len).unwrap_or(0) >= 3,
        "a per-second series: {before}"
    );

    let pid = cluster.pid(2).expect("replica 2 runs");
    signal(pid, "-STOP");
    let resume = Resume(pid);
    let paused = bench(args(&[]), limit).await;
    // Without avoidance: every worker waits on the paused replica every third request.
    let naive = bench(args(&["--no-avoid"]), limit).await;
    drop(resume);

    let during = ops_per_sec(&paused);
    let without = ops_per_sec(&naive);
    eprintln!("round-robin ops/s: {base:.0} healthy, {during:.0} with replica 2 paused, {without:.0} paused and no avoidance");
    assert!(
        during > 0.4 * base,
        "throughput with a paused replica fell from {base:.0} to {during:.0} ops/s: {paused}"
    );
    // The paused replica answered nothing, the others the rest.
    let by = paused["ops_by_replica"].as_array().expect("ops_by_replica");
    assert_eq!(by[2], 0, "{paused}");
    // Every second after the first kept serving (no stall while the replica is avoided).
    let series = paused["series"].as_array().expect("series");
    for s in series.iter().skip(1).take(3) {
        assert!(
            s["ops"].as_u64().unwrap_or(0) > 0,
            "a second without answers: {paused}"
        );
    }
    // And the avoidance is what makes the difference: without it the same bench collapses.
    assert!(
        without < 0.5 * during,
        "without avoidance {without:.0} ops/s, with it {during:.0}: the test would not catch its absence"
    );
    // The resumed replica catches up with the others.
    cluster.converged().await;
}
