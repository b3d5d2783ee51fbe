//! Failover on real replica processes: a minority of replicas, including the one the clients
//! talk to, is SIGKILLed under load. Clients fail over to the next replica, retrying with the same
//! (client_id, request_id); the survivors must keep committing (which needs the recovery of the
//! dead replicas' in-flight instances), lose no acknowledged write and agree; the killed replicas
//! then restart and catch up. Also: the client binary names a missing majority instead of
//! hanging.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use epaxos_kv::proto::{self, kv_client::KvClient};
use tonic::transport::Channel;

/// Time allowed for one attempt of a request before the client fails over.
const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(1500);
/// Faster failure detection than the defaults (1 s heartbeat, 3 s suspicion), so that whatever
/// waits on suspecting the dead replicas happens within the test's budget.
const FLAGS: &[&str] = &["--heartbeat-ms", "200", "--suspect-after-ms", "1000"];
/// Requests acknowledged before the kill.
const BEFORE_KILL: u64 = 300;
/// Requests that must complete after the kill, in total and per session.
const AFTER_KILL: u64 = 200;
const AFTER_KILL_PER_SESSION: u64 = 3;

/// A client session that sends each request to its current target and, when an attempt times
/// out or the replica is unreachable, sends the same request (same client id and request id) to
/// the next replica, which becomes the target.
struct FailoverSession {
    client_id: u64,
    next: u64,
    clients: Vec<(usize, KvClient<Channel>)>,
    /// Index into `clients`.
    target: usize,
    failovers: u64,
}

impl FailoverSession {
    fn new(clients: Vec<(usize, KvClient<Channel>)>) -> FailoverSession {
        FailoverSession {
            client_id: rand::random::<u64>() | 1,
            next: 1,
            clients,
            target: 0,
            failovers: 0,
        }
    }

    /// Executes `op` as the next request. Returns `None` if `give_up()` became true before an
    /// answer came (the request may or may not execute later).
    async fn call(
        &mut self,
        op: proto::Operation,
        give_up: impl Fn() -> bool,
    ) -> Option<proto::OpResult> {
        let request_id = self.next;
        self.next += 1;
        loop {
            let req = proto::ProposeRequest {
                client_id: self.client_id,
                request_id,
                op: Some(op.clone()),
                retry: false,
            };
            let (replica, client) = &mut self.clients[self.target];
            match tokio::time::timeout(ATTEMPT_TIMEOUT, client.propose(req)).await {
                Ok(Ok(reply)) => return Some(reply.into_inner().result.unwrap_or_default()),
                Ok(Err(status)) => {
                    // These would be bugs, not failures to fail over from.
                    assert!(
                        !matches!(
                            status.code(),
                            tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition
                        ),
                        "replica {replica} rejected request {request_id} of session {:x}: {status:?}",
                        self.client_id
                    );
                }
                Err(_) => {}
            }
            self.failovers += 1;
            self.target = (self.target + 1) % self.clients.len();
            if give_up() {
                return None;
            }
            // Connection refused comes back at once: do not spin on a dead replica.
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

/// What the load shares with the test while it runs.
#[derive(Default)]
struct Progress {
    /// Requests answered.
    done: AtomicU64,
    /// Set right after the kill.
    killed: AtomicBool,
    /// When the kill happened (set just before `killed`).
    killed_at: std::sync::OnceLock<Instant>,
    /// Per session, milliseconds from the kill to its first answer after it (u64::MAX: none).
    first_after_kill_ms: Vec<AtomicU64>,
    /// Requests answered after `killed` was set, per session.
    after_kill: Vec<AtomicU64>,
    stop: AtomicBool,
}

/// What one session reports when it stops.
#[derive(Debug, Default)]
struct SessionReport {
    /// Own key -> sequence number of the last acknowledged PUT (values are "w-seq").
    acked: HashMap<String, u64>,
    /// Hot-key CAS increments acknowledged as successful.
    cas_won: u64,
    /// Hot-key CAS requests abandoned at the stop (they may still execute).
    cas_unknown: u64,
    /// PUTs acknowledged per hot key.
    hot_puts: [u64; 3],
    failovers: u64,
}

const COUNTER: &str = "hot-counter";

fn hot_key(k: u64) -> String {
    format!("hot-{}", k % 3)
}

fn seq_of(value: &[u8]) -> Option<(usize, u64)> {
    let s = std::str::from_utf8(value).ok()?;
    let (w, k) = s.split_once('-')?;
    Some((w.parse().ok()?, k.parse().ok()?))
}

/// One closed-loop session: PUTs of unique values to its own keys, and every fourth request a
/// hot-key operation shared with the other sessions (a CAS increment of a counter, or a PUT).
async fn session(
    w: usize,
    clients: Vec<(usize, KvClient<Channel>)>,
    progress: Arc<Progress>,
) -> SessionReport {
    let mut s = FailoverSession::new(clients);
    let mut report = SessionReport::default();
    let stopped = || progress.stop.load(Ordering::Relaxed);
    let answered = |p: &Progress| {
        p.done.fetch_add(1, Ordering::Relaxed);
        if p.killed.load(Ordering::Acquire) && p.after_kill[w].fetch_add(1, Ordering::Relaxed) == 0
        {
            let ms = p
                .killed_at
                .get()
                .map_or(0, |t| t.elapsed().as_millis() as u64);
            p.first_after_kill_ms[w].store(ms, Ordering::Relaxed);
        }
    };
    for k in 0u64.. {
        if stopped() {
            break;
        }
        let value = format!("{w}-{k}");
        if k % 4 != 3 {
            let key = format!("s{w}-{}", k % 8);
            let Some(r) = s.call(put(&key, &value), stopped).await else {
                break;
            };
            assert!(r.success, "put {key}={value}: {r:?}");
            answered(&progress);
            report.acked.insert(key, k);
        } else if (k / 4) % 2 == 0 {
            let Some(cur) = s.call(get(COUNTER), stopped).await else {
                break;
            };
            answered(&progress);
            let n: u64 = if cur.found {
                std::str::from_utf8(&cur.value)
                    .expect("counter is utf8")
                    .parse()
                    .expect("counter is a number")
            } else {
                0
            };
            let expected = cur.found.then(|| n.to_string());
            let op = cas(COUNTER, expected.as_deref(), &(n + 1).to_string());
            let Some(r) = s.call(op, stopped).await else {
                report.cas_unknown += 1;
                break;
            };
            answered(&progress);
            if r.success {
                report.cas_won += 1;
            }
        } else {
            let Some(r) = s.call(put(&hot_key(k), &value), stopped).await else {
                break;
            };
            assert!(r.success, "put hot: {r:?}");
            answered(&progress);
            report.hot_puts[(k % 3) as usize] += 1;
        }
    }
    report.failovers = s.failovers;
    report
}

/// Reads `key` through consensus, failing over among the reader's replicas until `deadline`.
async fn read(reader: &mut FailoverSession, key: &str, deadline: Instant) -> proto::OpResult {
    match reader.call(get(key), || Instant::now() >= deadline).await {
        Some(r) => r,
        None => panic!("reading {key} did not finish by the deadline"),
    }
}

/// Waits (at most `timeout`) until `cond` holds; on timeout panics with `what` and `diag()`.
async fn wait_for(
    timeout: Duration,
    what: &str,
    mut cond: impl FnMut() -> bool,
    diag: impl std::future::Future<Output = String>,
) {
    let deadline = Instant::now() + timeout;
    while !cond() {
        if Instant::now() >= deadline {
            panic!("{what}: not within {timeout:?}\n{}", diag.await);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Status, a few metrics and the log tail of each of `ids`, for failure messages.
async fn diagnose(cluster: &Cluster, ids: &[usize]) -> String {
    let mut out = String::new();
    for &i in ids {
        let status = cluster.try_status(i, Duration::from_secs(2)).await;
        out.push_str(&format!("--- replica {i}: {status:?}\n"));
        let addr = cluster.metrics[i].clone();
        if let Ok(Ok(text)) = tokio::task::spawn_blocking(move || scrape_metrics(&addr)).await {
            for name in [
                "epaxos_recovered_total",
                "epaxos_waiting_instances",
                "epaxos_inflight_instances",
                "epaxos_pending_proposals",
                "epaxos_committed_instances_total",
            ] {
                out.push_str(&format!("{name} = {}\n", metric_sum(&text, name) + 0.0));
            }
        }
        out.push_str(&cluster.log_tail(i, 30));
        out.push('\n');
    }
    out
}

/// Sum of `epaxos_recovered_total` over `ids`; unreachable replicas count 0.
async fn recovered_total(cluster: &Cluster, ids: &[usize]) -> f64 {
    let mut sum = 0.0;
    for &i in ids {
        let addr = cluster.metrics[i].clone();
        if let Ok(Ok(text)) = tokio::task::spawn_blocking(move || scrape_metrics(&addr)).await {
            sum += metric_sum(&text, "epaxos_recovered_total");
        }
    }
    sum
}

/// The scenario: `sessions` clients targeting replica 0 of an `n`-replica cluster, SIGKILL of
/// `victims` (which include 0) under load, then the checks described at the top of the file.
async fn kill_minority_under_load(n: usize, victims: &[usize], sessions: usize) {
    assert!(victims.contains(&0) && 2 * victims.len() < n);
    let survivors: Vec<usize> = (0..n).filter(|i| !victims.contains(i)).collect();
    let mut cluster = Cluster::start(n, FLAGS).await;
    let progress = Arc::new(Progress {
        after_kill: (0..sessions).map(|_| AtomicU64::new(0)).collect(),
        first_after_kill_ms: (0..sessions).map(|_| AtomicU64::new(u64::MAX)).collect(),
        ..Progress::default()
    });
    let mut tasks = Vec::new();
    for w in 0..sessions {
        let mut clients = Vec::new();
        for i in 0..n {
            clients.push((i, cluster.client(i).await.expect("connect")));
        }
        tasks.push(tokio::spawn(session(w, clients, progress.clone())));
    }

    // Load first, then the kill.
    let p = progress.clone();
    wait_for(
        Duration::from_secs(15),
        &format!("{BEFORE_KILL} requests before the kill"),
        || p.done.load(Ordering::Relaxed) >= BEFORE_KILL || tasks.iter().any(|t| t.is_finished()),
        diagnose(&cluster, &(0..n).collect::<Vec<_>>()),
    )
    .await;
    assert!(
        !tasks.iter().any(|t| t.is_finished()),
        "a session stopped before the kill (see its panic above)"
    );
    let recovered_before = recovered_total(&cluster, &survivors).await;
    for &v in victims {
        cluster.kill(v);
    }
    let _ = progress.killed_at.set(Instant::now());
    progress.killed.store(true, Ordering::Release);
    let done_at_kill = progress.done.load(Ordering::Relaxed);

    // The clients keep completing requests: every session, and a minimum in total.
    let p = progress.clone();
    let after = move || {
        p.after_kill
            .iter()
            .map(|a| a.load(Ordering::Relaxed))
            .collect::<Vec<_>>()
    };
    let a = after.clone();
    wait_for(
        Duration::from_secs(20),
        &format!(
            "after the kill of {victims:?}, {AFTER_KILL} requests and \
             {AFTER_KILL_PER_SESSION} per session"
        ),
        || {
            let v = a();
            (v.iter().sum::<u64>() >= AFTER_KILL && v.iter().all(|&c| c >= AFTER_KILL_PER_SESSION))
                || tasks.iter().any(|t| t.is_finished())
        },
        async {
            format!(
                "completions after the kill per session: {:?}\n{}",
                after(),
                diagnose(&cluster, &survivors).await
            )
        },
    )
    .await;
    let resumed_ms = progress
        .first_after_kill_ms
        .iter()
        .map(|m| m.load(Ordering::Relaxed))
        .max()
        .unwrap_or(0);
    progress.stop.store(true, Ordering::Relaxed);
    let mut reports = Vec::new();
    for t in tasks {
        let r = tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .expect("sessions stop within 10 s of the stop flag")
            .expect("session task (see its panic above)");
        reports.push(r);
    }
    let recovered = recovered_total(&cluster, &survivors).await - recovered_before;
    eprintln!(
        "n={n} victims={victims:?}: {done_at_kill} requests before the kill, {:?} per session \
         after it (every session answered again within {resumed_ms} ms), failovers {:?}, \
         epaxos_recovered_total on survivors +{recovered}",
        after(),
        reports.iter().map(|r| r.failovers).collect::<Vec<_>>(),
    );

    // No acknowledged write is lost: read back through consensus at the survivors.
    let mut clients = Vec::new();
    for &i in &survivors {
        clients.push((i, cluster.client(i).await.expect("connect to a survivor")));
    }
    let mut reader = FailoverSession::new(clients);
    let read_deadline = Instant::now() + Duration::from_secs(20);
    for (w, r) in reports.iter().enumerate() {
        for (key, &seq) in &r.acked {
            let got = read(&mut reader, key, read_deadline).await;
            assert!(got.found, "acknowledged key {key} (value {w}-{seq}) lost");
            let (gw, gseq) = seq_of(&got.value).expect("values are w-seq");
            assert!(
                gw == w && gseq >= seq,
                "key {key}: read {gw}-{gseq}, older than the acknowledged {w}-{seq}"
            );
        }
    }
    for k in 0..3 {
        let key = hot_key(k);
        let got = read(&mut reader, &key, read_deadline).await;
        if reports.iter().any(|r| r.hot_puts[k as usize] > 0) {
            assert!(got.found, "acknowledged puts to {key} lost");
        }
        if got.found {
            // Which session's put is last is up to the order; it must be one of theirs.
            assert!(
                seq_of(&got.value).is_some_and(|(w, _)| w < sessions),
                "{key} holds a value nobody wrote: {got:?}"
            );
        }
    }
    // Each successful CAS incremented the counter exactly once (retries after failover
    // included); abandoned ones may or may not have executed.
    let won: u64 = reports.iter().map(|r| r.cas_won).sum();
    let unknown: u64 = reports.iter().map(|r| r.cas_unknown).sum();
    let got = read(&mut reader, COUNTER, read_deadline).await;
    let counter: u64 = if got.found {
        std::str::from_utf8(&got.value)
            .expect("utf8")
            .parse()
            .expect("number")
    } else {
        0
    };
    assert!(
        won <= counter && counter <= won + unknown,
        "counter is {counter}; acknowledged increments {won}, abandoned {unknown}"
    );

    // The survivors agree.
    let digest = cluster
        .converged_among(&survivors, Duration::from_secs(30))
        .await;

    // The killed replicas come back and catch up.
    for &v in victims {
        cluster.restart(v).await;
    }
    let all: Vec<usize> = (0..n).collect();
    let caught_up = cluster.converged_among(&all, Duration::from_secs(60)).await;
    eprintln!("survivors' digest {digest:x}; after the restart {caught_up:x}");
    // The restarted replica 0 serves again.
    let mut c = cluster.client(0).await.expect("connect to restarted 0");
    let r = tokio::time::timeout(
        Duration::from_secs(10),
        Session::new().call(&mut c, put("after-restart", "x")),
    )
    .await
    .expect("a put at the restarted replica 0 answers within 10 s")
    .expect("put at the restarted replica 0");
    assert!(r.success);
    cluster.converged_among(&all, Duration::from_secs(30)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_kill_one_including_the_clients_target() {
    kill_minority_under_load(3, &[0], 8).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_replicas_kill_two_including_the_clients_target() {
    kill_minority_under_load(5, &[0, 1], 10).await;
}

/// Runs the client binary with `args`, at most `limit`; returns (exit code, stdout, stderr,
/// elapsed).
async fn run_client(args: Vec<String>, limit: Duration) -> (Option<i32>, String, String, Duration) {
    tokio::task::spawn_blocking(move || {
        let start = Instant::now();
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_client"))
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn client");
        loop {
            if child.try_wait().expect("poll client").is_some() {
                break;
            }
            if start.elapsed() > limit {
                let _ = child.kill();
                let out = child.wait_with_output().expect("client output");
                panic!(
                    "client {args:?} still running after {limit:?}; stderr so far: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let elapsed = start.elapsed();
        let out = child.wait_with_output().expect("client output");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
            elapsed,
        )
    })
    .await
    .expect("client runner")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_says_no_majority_instead_of_hanging() {
    let mut cluster = Cluster::start(3, &[]).await;
    let config = cluster.config.to_string_lossy().into_owned();
    let args = |extra: &[&str]| -> Vec<String> {
        ["--config", &config, "--timeout-ms", "500", "--retries", "2"]
            .iter()
            .chain(extra)
            .map(|s| s.to_string())
            .collect()
    };
    let (code, out, err, _) = run_client(args(&["put", "k", "v"]), Duration::from_secs(15)).await;
    assert_eq!(code, Some(0), "put with all replicas up: {out} {err}");
    assert_eq!(out.trim(), "OK");

    cluster.kill(1);
    cluster.kill(2);
    for extra in [
        &["put", "k", "w"][..],
        &["--target", "round-robin", "get", "k"][..],
    ] {
        // 3 attempts of 500 ms, backoffs and a status probe: well under 10 s.
        let (code, out, err, elapsed) = run_client(args(extra), Duration::from_secs(10)).await;
        assert_eq!(
            code,
            Some(2),
            "{extra:?} without a majority exits with status 2; stdout {out:?} stderr {err:?}"
        );
        assert!(out.is_empty(), "{extra:?}: nothing on stdout: {out:?}");
        for want in [
            "no reply",
            "only 1 of 3 replicas answer",
            "is a majority of the cluster up?",
        ] {
            assert!(err.contains(want), "{extra:?}: want {want:?} in {err:?}");
        }
        assert!(
            elapsed < Duration::from_secs(8),
            "{extra:?} took {elapsed:?}"
        );
    }
}
