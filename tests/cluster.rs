//! End-to-end tests on real replica processes over real sockets.

mod common;

use common::*;
use epaxos_kv::proto;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn put_then_get_on_every_replica() {
    let cluster = Cluster::start(3, &[]).await;
    let mut s = Session::new();
    let mut c0 = cluster.client(0).await.expect("connect");
    let r = s.call(&mut c0, put("alpha", "one")).await.expect("put");
    assert!(r.success);
    assert!(!r.found, "alpha did not exist before");
    for i in 0..3 {
        let mut c = cluster.client(i).await.expect("connect");
        let r = s.call(&mut c, get("alpha")).await.expect("get");
        assert!(r.found, "replica {i} sees the acknowledged put");
        assert_eq!(&r.value[..], b"one");
    }
    let r = s.call(&mut c0, get("missing")).await.expect("get");
    assert!(!r.found);
    cluster.converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cas_and_delete_semantics() {
    let cluster = Cluster::start(3, &[]).await;
    let mut s = Session::new();
    let mut c = cluster.client(1).await.expect("connect");
    let r = s.call(&mut c, cas("k", None, "v1")).await.expect("cas");
    assert!(r.success, "cas on an absent key expecting absence succeeds");
    let r = s.call(&mut c, cas("k", None, "v2")).await.expect("cas");
    assert!(!r.success, "cas expecting absence fails on a present key");
    assert_eq!(&r.value[..], b"v1");
    let r = s
        .call(&mut c, cas("k", Some("wrong"), "v2"))
        .await
        .expect("cas");
    assert!(!r.success);
    let r = s
        .call(&mut c, cas("k", Some("v1"), "v2"))
        .await
        .expect("cas");
    assert!(r.success);
    let r = s.call(&mut c, delete("k")).await.expect("delete");
    assert!(r.found);
    let r = s.call(&mut c, delete("k")).await.expect("delete");
    assert!(!r.found);
    let r = s.call(&mut c, get("k")).await.expect("get");
    assert!(!r.found);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retried_request_executes_once_with_same_answer() {
    let cluster = Cluster::start(3, &[]).await;
    let mut c0 = cluster.client(0).await.expect("connect");
    let mut c2 = cluster.client(2).await.expect("connect");
    let id = rand::random::<u64>();
    let req = |op| proto::ProposeRequest {
        client_id: id,
        request_id: 1,
        op: Some(op),
        retry: false,
    };
    // The same request (a CAS that only the first execution can win) at two replicas.
    let first = c0
        .propose(req(cas("once", None, "x")))
        .await
        .expect("first")
        .into_inner();
    let retry = c2
        .propose(req(cas("once", None, "x")))
        .await
        .expect("retry")
        .into_inner();
    assert_eq!(
        first.result, retry.result,
        "a retry gets the original answer"
    );
    assert!(first.result.expect("result").success);
    cluster.converged().await;
    for i in 0..3 {
        assert_eq!(
            cluster.status(i).await.executed,
            1,
            "replica {i} executed it once"
        );
    }
}

/// A PUT reusing the (client_id, request_id) of an executed GET once got the GET's answer with
/// success and was never applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_request_id_for_another_command_is_refused_and_changes_nothing() {
    let cluster = Cluster::start(3, &[]).await;
    let mut c0 = cluster.client(0).await.expect("connect");
    let mut c1 = cluster.client(1).await.expect("connect");
    let id = rand::random::<u64>();
    let req = |op| proto::ProposeRequest {
        client_id: id,
        request_id: 1,
        op: Some(op),
        retry: false,
    };
    let first = c0
        .propose(req(get("reused")))
        .await
        .expect("get")
        .into_inner();
    assert!(!first.result.expect("result").found);
    for c in [&mut c0, &mut c1] {
        let err = c
            .propose(req(put("reused", "v")))
            .await
            .expect_err("a different command under a used request id");
        assert_eq!(err.code(), tonic::Code::FailedPrecondition, "{err:?}");
        assert!(
            err.message().contains("different command"),
            "{}",
            err.message()
        );
    }
    // The real retry still gets its answer, and the data was left alone.
    let retry = c1
        .propose(req(get("reused")))
        .await
        .expect("retry")
        .into_inner();
    assert!(!retry.result.expect("result").found);
    let r = Session::new()
        .call(&mut c0, get("reused"))
        .await
        .expect("get");
    assert!(!r.found, "the refused PUT was not applied");
    cluster.converged().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors() {
    let cluster = Cluster::start(3, &[]).await;
    let mut c = cluster.client(0).await.expect("connect");
    let big = "k".repeat(epaxos_kv::core::command::KEY_BYTES_MAX + 1);
    let err = Session::new()
        .call(&mut c, get(&big))
        .await
        .expect_err("oversized key");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    assert!(err.message().contains("key is"), "{}", err.message());
    let err = c
        .propose(proto::ProposeRequest {
            client_id: 1,
            request_id: 1,
            op: None,
            retry: false,
        })
        .await
        .expect_err("no op");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    let err = c
        .propose(proto::ProposeRequest {
            client_id: 1,
            request_id: 0,
            op: Some(get("k")),
            retry: false,
        })
        .await
        .expect_err("request id 0");
    assert_eq!(err.code(), tonic::Code::InvalidArgument);
    // The replica is still fine.
    let r = Session::new()
        .call(&mut c, put("k", "v"))
        .await
        .expect("put");
    assert!(r.success);
}

/// Concurrent sessions on conflicting and non-conflicting keys, at one replica or spread over
/// all; every reply checked against a per-session model, then digests compared.
async fn concurrent_load(n: usize, round_robin: bool, flags: &[&str]) {
    let cluster = Cluster::start(n, flags).await;
    let mut tasks = Vec::new();
    const SESSIONS: usize = 24;
    const OPS: usize = 60;
    for w in 0..SESSIONS {
        let mut clients = Vec::new();
        for i in 0..n {
            clients.push(cluster.client(i).await.expect("connect"));
        }
        tasks.push(tokio::spawn(async move {
            let mut s = Session::new();
            // Each session owns a private key (its model is exact) and shares a hot key.
            let own = format!("own-{w}");
            let mut expect: Option<String> = None;
            for k in 0..OPS {
                let target = if round_robin {
                    (w + k) % clients.len()
                } else {
                    0
                };
                let c = &mut clients[target];
                match k % 5 {
                    0 | 1 => {
                        let v = format!("{w}-{k}");
                        let r = s.call(c, put(&own, &v)).await.expect("put");
                        assert_eq!(r.found, expect.is_some());
                        expect = Some(v);
                    }
                    2 => {
                        let r = s.call(c, get(&own)).await.expect("get");
                        assert_eq!(r.found, expect.is_some(), "session {w} op {k}");
                        if let Some(v) = &expect {
                            assert_eq!(&r.value[..], v.as_bytes(), "session {w} op {k}");
                        }
                    }
                    3 => {
                        // The hot key: increments by CAS, retried until it wins.
                        loop {
                            let cur = s.call(c, get("hot")).await.expect("get hot");
                            let n: u64 = if cur.found {
                                std::str::from_utf8(&cur.value)
                                    .expect("utf8")
                                    .parse()
                                    .expect("number")
                            } else {
                                0
                            };
                            let exp = if cur.found { Some(n.to_string()) } else { None };
                            let r = s
                                .call(c, cas("hot", exp.as_deref(), &(n + 1).to_string()))
                                .await
                                .expect("cas hot");
                            if r.success {
                                break;
                            }
                        }
                    }
                    _ => {
                        let r = s.call(c, delete(&own)).await.expect("delete");
                        assert_eq!(r.found, expect.is_some());
                        expect = None;
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await.expect("session task");
    }
    cluster.converged().await;
    // Every successful CAS incremented the hot key exactly once.
    let mut c = cluster.client(n - 1).await.expect("connect");
    let r = Session::new()
        .call(&mut c, get("hot"))
        .await
        .expect("get hot");
    let incs = SESSIONS * OPS.div_ceil(5);
    assert_eq!(
        std::str::from_utf8(&r.value).expect("utf8"),
        incs.to_string()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_single_target_concurrent() {
    concurrent_load(3, false, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_round_robin_concurrent() {
    concurrent_load(3, true, &[]).await;
}

/// `--worker-threads 1`: everything on one runtime thread (plus blocking ones) still serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_on_one_worker_thread_each() {
    concurrent_load(3, true, &["--worker-threads", "1"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_replicas_round_robin_concurrent() {
    concurrent_load(5, true, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_replicas_thrifty_round_robin() {
    concurrent_load(5, true, &["--thrifty"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seven_replicas_agree() {
    let cluster = Cluster::start(7, &[]).await;
    let mut s = Session::new();
    for i in 0..7 {
        let mut c = cluster.client(i).await.expect("connect");
        let r = s
            .call(&mut c, put("seven", &i.to_string()))
            .await
            .expect("put");
        assert_eq!(r.found, i > 0);
        let r = s.call(&mut c, get("seven")).await.expect("get");
        assert_eq!(
            &r.value[..],
            i.to_string().as_bytes(),
            "replica {i} reads its own write"
        );
    }
    cluster.converged().await;
}

/// Starts `replica` on a config text and returns its exit status and stderr.
fn replica_exit(config: &str, id: &str) -> (bool, String) {
    let path = std::env::temp_dir().join(format!("epaxos-badcfg-{}.json", rand::random::<u64>()));
    std::fs::write(&path, config).expect("write config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_replica"))
        .arg("--config")
        .arg(&path)
        .arg("--id")
        .arg(id)
        .output()
        .expect("run replica");
    let _ = std::fs::remove_file(&path);
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_config_stops_the_replica_with_a_named_problem() {
    let ok_entry = r#"{"id": 0, "addr": "127.0.0.1:1", "peer_addr": "127.0.0.1:3", "metrics_addr": "127.0.0.1:2"}"#;
    let cases = [
        ("{ not json".to_string(), "0", "invalid config file"),
        (
            format!(r#"{{"replicas": [{ok_entry}]}}"#),
            "3",
            "replica id 3 is not in the config",
        ),
        (
            format!(r#"{{"replicas": [{ok_entry}, {ok_entry}]}}"#),
            "0",
            "duplicate replica id 0",
        ),
        (
            r#"{"replicas": [{"id": 0, "addr": "127.0.0.1:1", "peer_addr": "127.0.0.1:3"}]}"#
                .to_string(),
            "0",
            "metrics_addr",
        ),
        // A config from before the client and peer listeners were split.
        (
            r#"{"replicas": [{"id": 0, "addr": "127.0.0.1:1", "metrics_addr": "127.0.0.1:2"}]}"#
                .to_string(),
            "0",
            "replica 0: missing field \"peer_addr\"",
        ),
    ];
    for (config, id, want) in cases {
        let (success, stderr) = replica_exit(&config, id);
        assert!(!success, "replica must refuse {config}");
        assert!(
            stderr.contains(want),
            "for {config}: want {want:?} in {stderr}"
        );
    }
}

/// Fetches a replica's `/metrics` text over plain HTTP/1.0.
fn scrape(addr: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect to metrics");
    s.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .expect("timeout");
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .expect("write");
    let mut body = String::new();
    s.read_to_string(&mut body).expect("read metrics");
    body
}

fn metric(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_from_a_peer_is_counted_and_dropped() {
    let cluster = Cluster::start(3, &[]).await;
    let mut c = cluster.client(0).await.expect("connect");
    // Speaking as replica 1 takes its certificate and its incarnation (a batch without one is
    // refused whole).
    let mut peer = cluster
        .peer_client(0, Some("replica-1"))
        .await
        .expect("connect to the peer listener");
    let incarnation = cluster.incarnation(1);
    let batches = vec![
        proto::PeerBatch {
            from: 1,
            messages: vec![bytes::Bytes::from_static(&[0xff, 0xff, 0xff, 0x0f, 0x01])],
            incarnation,
        },
        proto::PeerBatch {
            from: 99,
            messages: vec![],
            incarnation,
        },
    ];
    // The stream is closed by the replica after the batch claiming another sender than the
    // certificate names.
    let resp = peer
        .dispatch(tokio_stream::iter(batches))
        .await
        .expect("dispatch call");
    let mut inbound = resp.into_inner();
    let end = tokio::time::timeout(std::time::Duration::from_secs(10), inbound.message()).await;
    assert!(
        matches!(end, Ok(Ok(None)) | Ok(Err(_))),
        "stream closed: {end:?}"
    );
    // The replica still works and counted the malformed message.
    let r = Session::new()
        .call(&mut c, put("after", "garbage"))
        .await
        .expect("put");
    assert!(r.success);
    let text = scrape(&cluster.metrics[0]);
    assert_eq!(
        metric(&text, "epaxos_wire_errors_total{peer=\"1\"}"),
        1.0,
        "{text}"
    );
    assert!(metric(&text, "epaxos_messages_sent_total") > 0.0);
    assert!(metric(&text, "epaxos_commits_total") >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_all_under_load_then_restart_loses_no_acknowledged_write() {
    kill_all_under_load_and_restart(&[], KillAt::Load).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_all_with_frequent_checkpoints_loses_nothing() {
    let cluster =
        kill_all_under_load_and_restart(&["--checkpoint-every", "20"], KillAt::AfterCheckpoint)
            .await;
    for i in 0..3 {
        let dir = cluster.dir.join(format!("replica-{i}"));
        assert!(dir.join("checkpoint").exists(), "replica {i} checkpointed");
        assert!(
            cluster.log(i).contains("checkpoint written"),
            "{}",
            cluster.log(i)
        );
    }
}

/// SIGKILL of every replica while one of them is writing a checkpoint (its temporary checkpoint
/// or log file exists): after the restart nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_a_checkpoint_loses_nothing() {
    let cluster =
        kill_all_under_load_and_restart(&["--checkpoint-every", "20"], KillAt::DuringCheckpoint)
            .await;
    assert!(
        (0..3).any(|i| cluster.log(i).contains("checkpoint written")),
        "checkpoints happened"
    );
}

/// SIGKILL of the replica every client talks to while 16 sessions load it: its own log holds
/// the commit record of every write it acknowledged. The log writer thread syncs while the
/// event loop goes on; a reply must still leave only once the group holding its commit record
/// is written and synced. A reply released when the records are merely handed to the writer
/// (still in the process's memory, which SIGKILL loses, unlike written pages) fails this.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_under_load_the_log_holds_every_write_the_replica_acknowledged() {
    use epaxos_kv::core::command::Op;
    use epaxos_kv::core::instance::Status;
    use epaxos_kv::server::storage::{Log, Sync};
    use std::sync::{Arc, Mutex};
    let mut cluster = Cluster::start(3, &[]).await;
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    // The session whose reply makes the 2,000th acknowledged write kills the replica at once,
    // so the kill lands while the groups after that reply's are still on their way.
    let pid = cluster.pid(0).expect("replica 0 runs") as libc::pid_t;
    let killed = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for w in 0..16 {
        let mut c = cluster.client(0).await.expect("connect");
        let (acked, killed) = (acked.clone(), killed.clone());
        tasks.push(tokio::spawn(async move {
            let mut s = Session::new();
            for k in 0.. {
                let (key, value) = (format!("w{w}-{}", k % 50), format!("{w}-{k}"));
                match s.call(&mut c, put(&key, &value)).await {
                    Ok(_) => {
                        let n = {
                            let mut acked = acked.lock().expect("lock");
                            acked.push((key, value));
                            acked.len()
                        };
                        if n >= 2000 && !killed.swap(true, std::sync::atomic::Ordering::SeqCst) {
                            // SAFETY: kill(2) on the pid of a child this test started.
                            unsafe { libc::kill(pid, libc::SIGKILL) };
                        }
                    }
                    Err(_) => break, // the replica was killed
                }
            }
        }));
    }
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    for t in tasks {
        tokio::time::timeout_at(deadline.into(), t)
            .await
            .expect("load made no progress, or the kill did not stop it")
            .expect("load task");
    }
    cluster.kill(0); // reaps it
    let acked: Vec<(String, String)> = acked.lock().expect("lock").clone();
    let (_, recovered) = Log::open(&cluster.dir.join("replica-0"), 3, Sync::Fsync)
        .expect("the killed replica's log opens");
    let mut committed = std::collections::HashSet::new();
    for (_, inst) in &recovered.records {
        if inst.status != Status::Committed {
            continue;
        }
        for cmd in inst.commands.iter() {
            if let Op::Put { key, value } = &cmd.op {
                committed.insert((key.clone(), value.clone()));
            }
        }
    }
    let lost: Vec<_> = acked
        .iter()
        .filter(|(k, v)| !committed.contains(&(b(k), b(v))))
        .collect();
    assert!(
        lost.is_empty(),
        "{} of {} acknowledged writes have no commit record in the log of the replica that \
         acknowledged them, e.g. {:?}",
        lost.len(),
        acked.len(),
        &lost[..lost.len().min(5)]
    );
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum KillAt {
    /// Once 300 writes are acknowledged.
    Load,
    /// Once every replica has written a checkpoint.
    AfterCheckpoint,
    /// While a replica's checkpoint is being written (large values make that take a while);
    /// rounds of load and kill repeat until a kill leaves a temporary file behind.
    DuringCheckpoint,
}

/// The temporary files of a checkpoint in progress in replica `i`'s data directory.
fn checkpoint_in_progress(cluster: &Cluster, i: usize) -> bool {
    let dir = cluster.dir.join(format!("replica-{i}"));
    ["checkpoint.tmp", "instances.log.tmp"]
        .iter()
        .any(|f| dir.join(f).exists())
}

/// Load from 16 sessions, SIGKILL of every replica mid-load (see `KillAt`), restart of all:
/// every acknowledged write is read back through consensus and the replicas converge.
async fn kill_all_under_load_and_restart(flags: &[&str], at: KillAt) -> Cluster {
    use std::sync::{Arc, Mutex};
    let mut cluster = Cluster::start(3, flags).await;
    let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
    let padding = if at == KillAt::DuringCheckpoint {
        "x".repeat(4096)
    } else {
        String::new()
    };
    const ROUNDS: usize = 8;
    let mut caught = false;
    for round in 0..ROUNDS {
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = Vec::new();
        for w in 0..16 {
            let mut clients = Vec::new();
            for i in 0..3 {
                clients.push(cluster.client(i).await.expect("connect"));
            }
            let (acked, stop, padding) = (acked.clone(), stop.clone(), padding.clone());
            tasks.push(tokio::spawn(async move {
                let mut s = Session::new();
                for k in 0.. {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    // Values grow across rounds ("w-round*1e6+k"): later writes, later values.
                    let seq = round * 1_000_000 + k;
                    let key = format!("w{w}-{}", k % 50);
                    let value = format!("{w}-{seq}-{padding}");
                    let c = &mut clients[(w + k) % 3];
                    match s.call(c, put(&key, &value)).await {
                        Ok(_) => acked.lock().expect("lock").push((key, value)),
                        Err(_) => break, // the cluster was killed
                    }
                }
            }));
        }
        // Kill everything while the load runs, at the chosen moment.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let start = acked.lock().expect("lock").len();
        loop {
            let enough = acked.lock().expect("lock").len() >= start + 300;
            let ready = match at {
                KillAt::Load => enough,
                KillAt::AfterCheckpoint => {
                    enough && (0..3).all(|i| cluster.log(i).contains("checkpoint written"))
                }
                KillAt::DuringCheckpoint => (0..3).any(|i| checkpoint_in_progress(&cluster, i)),
            };
            if ready {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "load made no progress (or no checkpoint started)"
            );
            let poll = if at == KillAt::DuringCheckpoint {
                1
            } else {
                20
            };
            tokio::time::sleep(std::time::Duration::from_millis(poll)).await;
        }
        for i in 0..3 {
            cluster.kill(i);
        }
        caught = (0..3).any(|i| checkpoint_in_progress(&cluster, i));
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for t in tasks {
            t.await.expect("load task");
        }
        for i in 0..3 {
            cluster.restart(i).await;
        }
        if at != KillAt::DuringCheckpoint || caught {
            if caught {
                eprintln!("round {round}: the kill landed while a checkpoint was being written");
            }
            break;
        }
    }
    assert!(
        at != KillAt::DuringCheckpoint || caught,
        "no kill in {ROUNDS} rounds landed while a checkpoint was being written"
    );
    // The last acknowledged value of every key is what a read through consensus returns.
    let mut last = std::collections::HashMap::new();
    for (k, v) in acked.lock().expect("lock").iter() {
        last.insert(k.clone(), v.clone());
    }
    let mut s = Session::new();
    let mut c = cluster.client(1).await.expect("connect");
    for (k, v) in &last {
        let r = s.call(&mut c, get(k)).await.expect("get after restart");
        assert!(r.found, "acknowledged key {k} lost");
        // A write may have executed after its ack was lost to the kill, so the value can be
        // newer than the last acknowledged one, never older: values are "w-seq-..." with seq
        // growing.
        let got = std::str::from_utf8(&r.value).expect("utf8");
        let seq = |x: &str| x.split('-').nth(1).and_then(|n| n.parse::<u64>().ok());
        assert!(
            seq(got) >= seq(v),
            "key {k}: read {} older than acknowledged {}",
            &got[..got.len().min(40)],
            &v[..v.len().min(40)]
        );
    }
    cluster.converged().await;
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn torn_log_tail_is_cut_and_mid_log_damage_refuses_to_start() {
    let mut cluster = Cluster::start(3, &[]).await;
    let mut s = Session::new();
    let mut c = cluster.client(0).await.expect("connect");
    for k in 0..20 {
        s.call(&mut c, put(&format!("k{k}"), "v"))
            .await
            .expect("put");
    }
    cluster.converged().await;
    let log = cluster.dir.join("replica-2").join("instances.log");
    // A torn tail: half a record of garbage after the last good one.
    cluster.kill(2);
    let good = std::fs::read(&log).expect("read log");
    let mut torn = good.clone();
    torn.extend_from_slice(&[40, 0, 0, 0, 1, 2, 3, 4, 5, 6]);
    std::fs::write(&log, &torn).expect("write");
    cluster.restart(2).await;
    assert!(
        cluster.log(2).contains("cut a torn tail"),
        "{}",
        cluster.log(2)
    );
    // The good records stay and the garbage is gone; the restarted replica may have appended
    // since (it settles the slots it skips at a restart: `Replica::skip_unsynced_slots`). The
    // log's preallocated zeros after the records do not count as records.
    let records_only =
        |b: &[u8]| b[..b.iter().rposition(|x| *x != 0).map_or(0, |i| i + 1)].to_vec();
    let good_records = records_only(&good);
    let after = std::fs::read(&log).expect("read");
    assert_eq!(
        &after[..good_records.len()],
        &good_records[..],
        "the good records stay"
    );
    assert_ne!(
        after.get(good.len()..torn.len()),
        Some(&torn[good.len()..]),
        "the torn tail is cut"
    );
    let digest = cluster.converged().await;
    // Damage inside the first record: the replica must refuse to start and say why.
    cluster.kill(2);
    let mut bad = good.clone();
    bad[10] ^= 0xff;
    std::fs::write(&log, &bad).expect("write");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_replica"))
        .arg("--config")
        .arg(&cluster.config)
        .args(["--id", "2", "--data-dir"])
        .arg(cluster.dir.join("replica-2"))
        .output()
        .expect("run replica");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("corrupt record at byte 0"), "{stderr}");
    // Restored from the good copy, it rejoins with the same state.
    std::fs::write(&log, &good).expect("write");
    cluster.restart(2).await;
    assert_eq!(cluster.converged().await, digest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_reflection_serve_generic_grpc_tools() {
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let cluster = Cluster::start(3, &[]).await;
    let channel = cluster.channel(0).await.expect("connect");
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel.clone());
    let status = health
        .check(tonic_health::pb::HealthCheckRequest {
            service: "epaxos.v1.Kv".into(),
        })
        .await
        .expect("health check")
        .into_inner()
        .status;
    assert_eq!(
        status,
        tonic_health::pb::health_check_response::ServingStatus::Serving as i32
    );
    let mut reflection = ServerReflectionClient::new(channel);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut replies = reflection
        .server_reflection_info(tokio_stream::iter(vec![request]))
        .await
        .expect("reflection")
        .into_inner();
    let reply = replies.message().await.expect("reply").expect("one reply");
    let Some(MessageResponse::ListServicesResponse(list)) = reply.message_response else {
        panic!("unexpected reflection reply {reply:?}");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    assert!(names.iter().any(|n| n == "epaxos.v1.Kv"), "{names:?}");
    assert!(
        names.iter().any(|n| n == "grpc.health.v1.Health"),
        "{names:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_peer_becomes_suspected_in_metrics() {
    let mut cluster = Cluster::start(3, &[]).await;
    cluster.kill(2);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let text = scrape(&cluster.metrics[0]);
        if metric(&text, "epaxos_peer_suspected{peer=\"2\"}") == 1.0 {
            assert_eq!(
                metric(&text, "epaxos_peer_suspected{peer=\"1\"}"),
                0.0,
                "{text}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "peer 2 never suspected:\n{text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    // The two survivors still commit (a majority), and suspicion clears when 2 is back.
    let mut c = cluster.client(0).await.expect("connect");
    let r = Session::new()
        .call(&mut c, put("k", "v"))
        .await
        .expect("put");
    assert!(r.success);
    cluster.restart(2).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while metric(
        &scrape(&cluster.metrics[0]),
        "epaxos_peer_suspected{peer=\"2\"}",
    ) != 0.0
    {
        assert!(
            std::time::Instant::now() < deadline,
            "suspicion never cleared"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}

/// A replica restarted on an empty data directory is another incarnation: it may have forgotten
/// promises and votes, so its peers refuse it (it never votes again as if it had not), say why
/// in their metrics and its log, and the others keep serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_wiped_replica_rejoins_from_a_snapshot_and_votes_again() {
    // Checkpoints and garbage collection every few instances: what replica 2 executed before
    // the wipe is dropped on its peers, so only a snapshot can bring it back.
    let mut cluster = Cluster::start(3, &["--checkpoint-every", "20"]).await;
    let mut c0 = cluster.client(0).await.expect("connect");
    let mut s = Session::new();
    let mut written = Vec::new();
    for i in 0..200 {
        let key = format!("before{i}");
        let r = s
            .call(&mut c0, put(&key, &format!("v{i}")))
            .await
            .expect("put");
        assert!(r.success);
        written.push((key, format!("v{i}")));
    }
    // Wait until the peers dropped instances (so a fetch of every Commit cannot work).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    while metric(&scrape(&cluster.metrics[0]), "epaxos_checkpoints_total") < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint on replica 0:\n{}",
            cluster.log_tail(0, 30)
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    cluster.kill(2);
    std::fs::remove_dir_all(cluster.dir.join("replica-2")).expect("wipe replica 2");
    for i in 0..50 {
        let key = format!("down{i}");
        let r = s
            .call(&mut c0, put(&key, &format!("w{i}")))
            .await
            .expect("put");
        assert!(r.success);
        written.push((key, format!("w{i}")));
    }
    // `restart` waits until it has joined.
    cluster.restart(2).await;
    let log2 = cluster.log(2);
    assert!(
        log2.contains("rejoined the cluster from a peer's snapshot"),
        "replica 2 did not rejoin by snapshot:\n{log2}"
    );
    assert_eq!(
        metric(&scrape(&cluster.metrics[2]), "epaxos_rejoins_total"),
        1.0
    );
    assert!(cluster
        .log(0)
        .contains("peer rejoins with a new data directory"));
    cluster
        .converged_among(&[0, 1, 2], std::time::Duration::from_secs(30))
        .await;

    // Replica 2 now votes: with replica 0 gone, 1 and 2 are the majority that commits.
    cluster.kill(0);
    let mut c2 = cluster.client(2).await.expect("connect");
    let mut s2 = Session::new();
    for i in 0..20 {
        let key = format!("after{i}");
        let r = s2
            .call(&mut c2, put(&key, &format!("x{i}")))
            .await
            .expect("put with 0 down");
        assert!(r.success);
        written.push((key, format!("x{i}")));
    }
    for (key, value) in &written {
        let r = s2.call(&mut c2, get(key)).await.expect("get");
        assert!(r.found, "{key} lost");
        assert_eq!(r.value, b(value), "{key}");
    }
    // Restarted on its disk, the rejoined replica stays what it became (no second join).
    cluster.restart(2).await;
    cluster.restart(0).await;
    cluster
        .converged_among(&[0, 1, 2], std::time::Duration::from_secs(30))
        .await;
    assert_eq!(
        metric(&scrape(&cluster.metrics[2]), "epaxos_rejoins_total"),
        0.0,
        "a restart on its data directory is not a rejoin"
    );
}

/// Kills a replica process started outside the `Cluster` when the test ends, however it ends.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_old_incarnation_still_running_is_refused_once_a_new_one_joined() {
    let cluster = Cluster::start(3, &[]).await;
    let mut c0 = cluster.client(0).await.expect("connect");
    let mut s = Session::new();
    for i in 0..20 {
        let r = s
            .call(&mut c0, put(&format!("k{i}"), "v"))
            .await
            .expect("put");
        assert!(r.success);
    }
    // A machine believed dead was only cut off: replica 2 keeps running while a replacement
    // starts on an empty data directory (here on other ports, so both can run).
    let ports = free_ports(3);
    let (addr, metrics_addr, peer_addr) = (
        format!("127.0.0.1:{}", ports[0]),
        format!("127.0.0.1:{}", ports[1]),
        format!("127.0.0.1:{}", ports[2]),
    );
    let config = std::fs::read_to_string(&cluster.config)
        .expect("read config")
        .replace(&cluster.addrs[2], &addr)
        .replace(&cluster.peers[2], &peer_addr)
        .replace(&cluster.metrics[2], &metrics_addr);
    let config_path = cluster.dir.join("config-replacement.json");
    std::fs::write(&config_path, config).expect("write config");
    let log_path = cluster.dir.join("replacement.log");
    let log = std::fs::File::create(&log_path).expect("log file");
    let _replacement = KillOnDrop(
        std::process::Command::new(env!("CARGO_BIN_EXE_replica"))
            .arg("--config")
            .arg(&config_path)
            .args(["--id", "2", "--data-dir"])
            .arg(cluster.dir.join("replica-2-replacement"))
            .env("RUST_LOG", "info")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn the replacement"),
    );
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let replacement_log = std::fs::read_to_string(&log_path).unwrap_or_default();
        let refused = metric(
            &scrape(&cluster.metrics[0]),
            "epaxos_peer_refused_total{peer=\"2\"}",
        ) >= 1.0
            && metric(
                &scrape(&cluster.metrics[1]),
                "epaxos_peer_refused_total{peer=\"2\"}",
            ) >= 1.0;
        if replacement_log.contains("rejoined the cluster from a peer's snapshot")
            && refused
            && cluster.log(2).contains("peer refuses this replica")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the old incarnation was not refused; replacement log:\n{replacement_log}\nold r2 \
             log:\n{}\nr0 log:\n{}",
            cluster.log_tail(2, 20),
            cluster.log_tail(0, 20)
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    // Replicas 0 and 1 are a majority and keep serving; the old incarnation's votes no longer
    // count anywhere.
    let r = s
        .call(&mut c0, put("after", "replacement"))
        .await
        .expect("put");
    assert!(r.success);
    let r = s.call(&mut c0, get("k7")).await.expect("get");
    assert!(r.found);
}
