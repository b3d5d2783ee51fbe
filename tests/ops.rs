//! What an operator relies on, on real replica processes: health (gRPC and the metrics port's
//! `/health`), the metrics port's paths, and a fast, clear refusal without a majority.

mod common;

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use common::*;
use tonic_health::pb::health_check_response::ServingStatus;

/// One HTTP/1.0 GET against `addr`: (status code, body).
fn http_get(addr: &str, path: &str) -> (u16, String) {
    let mut s = std::net::TcpStream::connect(addr).expect("connect to the metrics port");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    write!(s, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").expect("write");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read");
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {text:?}"));
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (code, body)
}

async fn grpc_health(cluster: &Cluster, i: usize, service: &str) -> i32 {
    let channel = cluster.channel(i).await.expect("connect");
    tonic_health::pb::health_client::HealthClient::new(channel)
        .check(tonic_health::pb::HealthCheckRequest {
            service: service.into(),
        })
        .await
        .expect("health check")
        .into_inner()
        .status
}

/// Waits (bounded) until replica `i`'s `/health` answers `code`; returns the body.
async fn wait_health(cluster: &Cluster, i: usize, code: u16, within: Duration) -> String {
    let deadline = Instant::now() + within;
    loop {
        let (got, body) = http_get(&cluster.metrics[i], "/health");
        if got == code {
            return body;
        }
        assert!(
            Instant::now() < deadline,
            "replica {i}'s /health still {got} ({body:?}) after {within:?}, expected {code}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_port_serves_metrics_and_health_and_nothing_else() {
    let cluster = Cluster::start(3, &["--insecure"]).await;
    let addr = &cluster.metrics[0];
    let (code, body) = http_get(addr, "/metrics");
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("# HELP epaxos_proposals_total"), "{body}");
    let (code, body) = http_get(addr, "/health");
    assert_eq!(code, 200, "{body}");
    let (code, body) = http_get(addr, "/");
    assert_eq!(code, 404, "{body}");
    let (code, _) = http_get(addr, "/metricsfoo");
    assert_eq!(code, 404);
    assert_eq!(
        grpc_health(&cluster, 0, "epaxos.v1.Kv").await,
        ServingStatus::Serving as i32
    );
}

/// Two of three down: the survivor says so on both health endpoints within the suspicion
/// timeout, refuses a proposal at once with the reason, and serves again once a peer is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_without_a_majority_reports_unhealthy_and_refuses_at_once() {
    let mut cluster = Cluster::start(3, &["--insecure"]).await;
    wait_health(&cluster, 0, 200, Duration::from_secs(10)).await;
    cluster.kill(1);
    cluster.kill(2);
    // Suspicion takes 3 s without a message; allow for a slow CI machine.
    let body = wait_health(&cluster, 0, 503, Duration::from_secs(20)).await;
    assert!(body.contains("no majority"), "{body}");
    assert!(body.contains("1 of 3"), "{body}");
    for service in ["", "epaxos.v1.Kv"] {
        assert_eq!(
            grpc_health(&cluster, 0, service).await,
            ServingStatus::NotServing as i32,
            "service {service:?}"
        );
    }
    let metrics = http_get(&cluster.metrics[0], "/metrics").1;
    assert!(metrics.contains("epaxos_serving 0"), "{metrics}");

    // One attempt tells the client, at once.
    let mut c = cluster.client(0).await.expect("connect");
    let started = Instant::now();
    let err = Session::new()
        .call(&mut c, put("k", "v"))
        .await
        .expect_err("no majority: refused");
    assert_eq!(err.code(), tonic::Code::Unavailable, "{err}");
    assert!(err.message().contains("no majority"), "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "refusal took {:?}",
        started.elapsed()
    );

    // The bundled client says the same in one line, well before its 5 s attempt timeout.
    let started = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_client"))
        .args(["--config"])
        .arg(&cluster.config)
        .args(["--insecure", "--replica", "0", "put", "k", "v"])
        .output()
        .expect("run client");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains("no majority"), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "client took {:?}: {stderr}",
        started.elapsed()
    );

    cluster.restart(1).await;
    wait_health(&cluster, 0, 200, Duration::from_secs(20)).await;
    assert_eq!(
        grpc_health(&cluster, 0, "epaxos.v1.Kv").await,
        ServingStatus::Serving as i32
    );
    let r = Session::new()
        .call(&mut c, put("k", "v"))
        .await
        .expect("a majority again: served");
    assert!(r.success);
}
