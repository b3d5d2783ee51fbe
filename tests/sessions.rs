//! Session expiry on real processes: a session idle past the replicas' TTL is expired through
//! the replicated expiry, its late retry is refused with a clear error and not executed, and
//! the replicas agree.

mod common;

use std::time::{Duration, Instant};

use common::*;
use epaxos_kv::proto;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_late_retry_of_an_expired_session_is_refused_and_never_executed() {
    let cluster = Cluster::start(3, &["--session-ttl-ms", "300"]).await;
    let mut c0 = cluster.client(0).await.expect("connect");
    let mut c1 = cluster.client(1).await.expect("connect");
    let id = rand::random::<u64>() | 1;
    let req = |request_id, op, retry| proto::ProposeRequest {
        client_id: id,
        request_id,
        op: Some(op),
        retry,
    };
    // A CAS that only its first execution can win: a second execution would fail it, or a
    // later write would make it visible.
    let first = c0
        .propose(req(1, cas("k", None, "once"), false))
        .await
        .expect("first attempt")
        .into_inner();
    assert!(first.result.expect("result").success);
    // Wait (bounded) until every replica executed the session's expiry.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let expired: Vec<f64> = cluster
            .metrics
            .iter()
            .map(|m| {
                scrape_metrics(m).map_or(0.0, |t| metric_sum(&t, "epaxos_sessions_expired_total"))
            })
            .collect();
        if expired.iter().all(|e| *e >= 1.0) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the session did not expire everywhere: {expired:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // The late retry, at another replica: refused, with a clear error.
    let late = c1
        .propose(req(1, cas("k", None, "once"), true))
        .await
        .expect_err("a late retry of an expired session is refused");
    assert_eq!(late.code(), tonic::Code::FailedPrecondition, "{late:?}");
    assert!(
        late.message().starts_with("session expired"),
        "{}",
        late.message()
    );
    // So is the session's next request: nothing of it executes.
    let next = c1
        .propose(req(2, put("k", "overwritten"), false))
        .await
        .expect_err("the next request of an expired session is refused");
    assert_eq!(next.code(), tonic::Code::FailedPrecondition, "{next:?}");
    let digest = cluster.converged().await;
    let mut s = Session::new();
    let r = s.call(&mut c0, get("k")).await.expect("get");
    assert_eq!(r.value, b("once"), "written once, never overwritten");
    assert_eq!(cluster.converged().await, digest);
    for m in &cluster.metrics {
        let t = scrape_metrics(m).expect("metrics");
        assert!(
            metric_sum(&t, "epaxos_session_expired_refusals_total") >= 2.0,
            "every replica counts both refusals"
        );
    }
}

/// The bundled client's first request of a session, refused by a dead replica (the connection
/// could not be made, so nothing was sent), goes to the next replica as a first attempt, not
/// as a retry: a retry of a first request finds no session and would be refused as expired.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_request_refused_by_a_dead_replica_is_sent_again_as_a_first_attempt() {
    let mut cluster = Cluster::start(3, &[]).await;
    cluster.kill(0);
    let config = cluster.config.clone();
    let run = tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_client"))
            .arg("--config")
            .arg(&config)
            .args(["--target", "round-robin", "put", "after-kill", "v"])
            .output()
            .expect("run the client")
    });
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the client finished within 60 s")
        .expect("client task");
    assert!(
        out.status.success(),
        "put with replica 0 down failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut c1 = cluster.client(1).await.expect("connect");
    let read = Session::new()
        .call(&mut c1, get("after-kill"))
        .await
        .expect("read back");
    assert_eq!(read.value, b("v"));
}
