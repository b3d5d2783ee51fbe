//! Transport security on real processes, real sockets and real TLS: who can reach the peer API,
//! what a certificate lets its holder claim, what clients need, and what reflection shows.

mod common;

use std::time::Duration;

use common::{metric_sum, output_within, put, scrape_metrics, Cluster, Session};
use epaxos_kv::proto;

/// `client ARGS` against the cluster's config, bounded in time: (exit code, stdout, stderr).
fn run_client(cluster: &Cluster, args: &[&str]) -> (Option<i32>, String, String) {
    output_within(
        std::process::Command::new(env!("CARGO_BIN_EXE_client"))
            .arg("--config")
            .arg(&cluster.config)
            .args(["--timeout-ms", "2000", "--retries", "0"])
            .args(args),
        Duration::from_secs(20),
    )
}

fn metrics(cluster: &Cluster, i: usize) -> String {
    scrape_metrics(&cluster.metrics[i]).expect("scrape metrics")
}

/// Nothing was fenced anywhere, and the cluster serves through every replica and converges.
async fn still_serving_unfenced(cluster: &Cluster) {
    for i in 0..cluster.addrs.len() {
        let text = metrics(cluster, i);
        assert_eq!(
            metric_sum(&text, "epaxos_peer_refused_total"),
            0.0,
            "replica {i} refused a peer incarnation"
        );
        let mut c = cluster.client(i).await.expect("connect");
        let r = Session::new()
            .call(&mut c, put(&format!("after-{i}"), "v"))
            .await
            .expect("put");
        assert!(r.success);
    }
    cluster.converged().await;
}

/// Whatever a call without an acceptable certificate got: a transport error at connect, or an
/// error status.
fn refused<T: std::fmt::Debug>(r: Result<T, tonic::Status>, what: &str) -> tonic::Status {
    match r {
        Ok(v) => panic!("{what} was accepted: {v:?}"),
        Err(s) => s,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_without_a_certificate_cannot_reach_the_peer_api() {
    let cluster = Cluster::start(3, &[]).await;
    // TLS 1.3 reports a missing client certificate after the client's side of the handshake:
    // either the connection or the first call fails.
    for i in 0..3 {
        let Ok(mut peer) = cluster.peer_client(i, None).await else {
            continue;
        };
        let join = peer
            .join(proto::JoinRequest {
                from: 1,
                incarnation: 12345,
            })
            .await;
        refused(join, "Join without a certificate");
        let snapshot = peer
            .snapshot(proto::SnapshotRequest {
                from: 1,
                incarnation: 12345,
            })
            .await;
        refused(snapshot, "Snapshot without a certificate");
        let batch = proto::PeerBatch {
            from: 1,
            messages: vec![],
            incarnation: 12345,
        };
        let dispatch = peer.dispatch(tokio_stream::iter(vec![batch])).await;
        refused(dispatch, "Dispatch without a certificate");
    }
    // Plaintext on the peer port is no better.
    let plain = tonic::transport::Channel::from_shared(format!("http://{}", cluster.peers[0]))
        .expect("uri")
        .connect_timeout(Duration::from_secs(2))
        .timeout(Duration::from_secs(5))
        .connect()
        .await;
    if let Ok(ch) = plain {
        let join = proto::peer_client::PeerClient::new(ch)
            .join(proto::JoinRequest {
                from: 1,
                incarnation: 12345,
            })
            .await;
        refused(join, "plaintext Join");
    }
    still_serving_unfenced(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_certificate_cannot_speak_as_another_replica() {
    let cluster = Cluster::start(3, &[]).await;
    let mut peer = cluster
        .peer_client(0, Some("replica-1"))
        .await
        .expect("replica 1's certificate opens the peer listener");
    let join = peer
        .join(proto::JoinRequest {
            from: 2,
            incarnation: 12345,
        })
        .await;
    let status = refused(join, "Join as replica 2 with replica 1's certificate");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(
        status
            .message()
            .contains("certificate of replica 1 cannot speak as replica 2"),
        "{status:?}"
    );
    let snapshot = peer
        .snapshot(proto::SnapshotRequest {
            from: 2,
            incarnation: 12345,
        })
        .await;
    let status = refused(snapshot, "Snapshot as replica 2");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    // A batch posing as replica 2, with replica 2's real incarnation: refused before anything
    // reaches the event loop.
    let incarnation = cluster.incarnation(2);
    let batch = proto::PeerBatch {
        from: 2,
        messages: vec![],
        incarnation,
    };
    let mut stream = peer
        .dispatch(tokio_stream::iter(vec![batch]))
        .await
        .expect("the stream opens (the certificate names a replica)")
        .into_inner();
    let end = tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("the replica ends the stream");
    let status = refused(end, "a batch as replica 2");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    let text = metrics(&cluster, 0);
    assert_eq!(
        metric_sum(&text, "epaxos_peer_identity_refused_total"),
        3.0,
        "{text}"
    );
    // Logged once for the connection, not once per call.
    let lines = cluster.log(0).matches("peer call refused").count();
    assert_eq!(lines, 1, "{}", cluster.log(0));
    // The other way round: a dialer checks the name in the answering replica's certificate, so
    // replica 1 cannot pass for replica 2 either (its certificate names only itself).
    let posing = cluster.endpoint(2, &cluster.peers[1], Some("replica-0"));
    match posing.connect().await {
        Ok(_) => panic!("replica 1's peer listener passed for replica 2"),
        Err(e) => {
            let mut chain = format!("{e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                chain.push_str(&format!(": {s}"));
                source = s.source();
            }
            assert!(chain.contains("not valid for name"), "{chain}");
        }
    }
    still_serving_unfenced(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_cannot_reach_the_peer_api() {
    let cluster = Cluster::start(3, &[]).await;
    let mut peer = cluster
        .peer_client(0, Some("client"))
        .await
        .expect("the client certificate is from the cluster CA");
    let join = peer
        .join(proto::JoinRequest {
            from: 1,
            incarnation: 12345,
        })
        .await;
    let status = refused(join, "Join with a client certificate");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(status.message().contains("names no replica"), "{status:?}");
    let dispatch = peer
        .dispatch(tokio_stream::iter(Vec::<proto::PeerBatch>::new()))
        .await;
    let status = refused(dispatch, "Dispatch with a client certificate");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    let snapshot = peer
        .snapshot(proto::SnapshotRequest {
            from: 1,
            incarnation: 1,
        })
        .await;
    let status = refused(snapshot, "Snapshot with a client certificate");
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    assert!(metric_sum(&metrics(&cluster, 0), "epaxos_peer_identity_refused_total") >= 3.0);
    still_serving_unfenced(&cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_client_is_refused_with_a_clear_error() {
    let cluster = Cluster::start(3, &[]).await;
    let (code, _, err) = run_client(&cluster, &["--insecure", "put", "k", "v"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("replica 0") && err.contains("TLS"),
        "a plaintext client gets an error naming the replica and TLS: {err}"
    );
    // The replica is unharmed.
    let (code, out, err) = run_client(&cluster, &["put", "k", "v"]);
    assert_eq!(code, Some(0), "{out}{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bundled_client_works_with_generated_certificates() {
    let cluster = Cluster::start(3, &[]).await;
    let (code, out, err) = run_client(&cluster, &["put", "hello", "world"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, out, err) = run_client(&cluster, &["--target", "round-robin", "get", "hello"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(out.trim(), "world");
    // `status` fails while digests differ: the third replica may still be executing the put.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (code, out, err) = run_client(&cluster, &["status"]);
        if code == Some(0) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "status never agreed: {out}{err}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Keys are private to their owner; certificates are not overwritten by a second run.
    use std::os::unix::fs::PermissionsExt;
    let certs = cluster.dir.join("certs");
    for name in ["ca.key", "replica-0.key", "client.key"] {
        let mode = std::fs::metadata(certs.join(name))
            .expect("key file")
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{name}");
    }
    let dir_mode = std::fs::metadata(&certs).expect("dir").permissions().mode();
    assert_eq!(dir_mode & 0o077, 0, "certificate directory private");
    let before = cluster.cert_file("replica-1.pem");
    cluster.make_certs();
    assert_eq!(
        cluster.cert_file("replica-1.pem"),
        before,
        "not overwritten"
    );
    // Expiry and mode are visible.
    let text = metrics(&cluster, 0);
    let days = metric_sum(&text, "epaxos_tls_cert_expiry_seconds{cert=\"replica\"}") / 86_400.0;
    assert!(days > 800.0 && days < 830.0, "{text}");
    let days = metric_sum(&text, "epaxos_tls_cert_expiry_seconds{cert=\"ca\"}") / 86_400.0;
    assert!(days > 3600.0, "{text}");
    assert_eq!(metric_sum(&text, "epaxos_insecure "), 0.0, "{text}");
    assert!(text.contains("epaxos_insecure 0"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_client_ca_requires_client_certificates() {
    let cluster = Cluster::start_with_tls(3, &[], r#""client_ca": "certs/ca.pem""#).await;
    // Without a certificate: refused (at the handshake, or on the first call).
    let refused_call = match cluster.endpoint(0, &cluster.addrs[0], None).connect().await {
        Err(_) => true,
        Ok(ch) => proto::kv_client::KvClient::new(ch)
            .status(proto::StatusRequest {})
            .await
            .is_err(),
    };
    assert!(refused_call, "a client without a certificate was served");
    // The bundled client presents the generated client certificate.
    let (code, out, err) = run_client(&cluster, &["put", "k", "v"]);
    assert_eq!(
        code,
        Some(0),
        "{out}{err}\nreplica 0's log:\n{}",
        cluster.log_tail(0, 30)
    );
    // Without it, the bundled client says what is missing.
    std::fs::remove_file(cluster.dir.join("certs/client.pem")).expect("remove client.pem");
    let (code, _, err) = run_client(&cluster, &["get", "k"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("client certificate"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reflection_on_the_client_port_lists_only_client_services() {
    use tonic_reflection::pb::v1::{
        server_reflection_client::ServerReflectionClient,
        server_reflection_request::MessageRequest, server_reflection_response::MessageResponse,
        ServerReflectionRequest,
    };
    let cluster = Cluster::start(3, &[]).await;
    let channel = cluster.channel(0).await.expect("connect");
    let mut reflection = ServerReflectionClient::new(channel);
    let requests = vec![
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        },
        ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::FileContainingSymbol(
                "epaxos.v1.Peer".into(),
            )),
        },
    ];
    let mut replies = reflection
        .server_reflection_info(tokio_stream::iter(requests))
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
    let allowed = [
        "epaxos.v1.Kv",
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.reflection.v1alpha.ServerReflection",
    ];
    for n in &names {
        assert!(
            allowed.contains(&n.as_str()),
            "{n} listed on the client port: {names:?}"
        );
    }
    assert!(!names.iter().any(|n| n.contains("Peer")), "{names:?}");
    // The peer service is not described on the client port: an error reply, or the stream
    // ends with NOT_FOUND.
    match replies.message().await {
        Ok(Some(reply)) => assert!(
            matches!(
                reply.message_response,
                Some(MessageResponse::ErrorResponse(_))
            ),
            "epaxos.v1.Peer described on the client port: {reply:?}"
        ),
        Ok(None) => {}
        Err(status) => assert_eq!(status.code(), tonic::Code::NotFound, "{status:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn insecure_is_explicit_and_visible() {
    let cluster = Cluster::start(3, &["--insecure"]).await;
    let text = metrics(&cluster, 0);
    assert!(text.contains("epaxos_insecure 1"), "{text}");
    assert!(cluster.log(0).contains("--insecure"), "{}", cluster.log(0));
    let (code, out, err) = run_client(&cluster, &["--insecure", "put", "k", "v"]);
    assert_eq!(code, Some(0), "{out}{err}");
    // A TLS client (the default) against plaintext replicas fails and says why.
    let (code, _, err) = run_client(&cluster, &["get", "k"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--insecure"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_restarted_with_a_renewed_certificate_rejoins_without_data_loss() {
    let mut cluster = Cluster::start(3, &[]).await;
    let mut c = cluster.client(0).await.expect("connect");
    let mut s = Session::new();
    for i in 0..20 {
        assert!(
            s.call(&mut c, put(&format!("k{i}"), "v"))
                .await
                .expect("put")
                .success
        );
    }
    let digest = cluster.converged().await;
    cluster.kill(2);
    let certs = cluster.dir.join("certs");
    let old = cluster.cert_file("replica-2.pem");
    std::fs::remove_file(certs.join("replica-2.pem")).expect("remove cert");
    std::fs::remove_file(certs.join("replica-2.key")).expect("remove key");
    cluster.make_certs();
    assert_ne!(cluster.cert_file("replica-2.pem"), old, "renewed");
    cluster.restart(2).await;
    assert_eq!(cluster.converged().await, digest);
    assert!(
        cluster.log(2).contains("restored from the log"),
        "{}",
        cluster.log(2)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_connections_is_capped_and_the_replica_keeps_serving() {
    use std::io::Read;
    let cluster = Cluster::start(3, &["--client-connections-max", "4"]).await;
    // Four raw connections take every slot (they never finish a TLS handshake).
    let held: Vec<std::net::TcpStream> = (0..4)
        .map(|_| std::net::TcpStream::connect(&cluster.addrs[0]).expect("connect"))
        .collect();
    // Wait (bounded) until the replica has accepted them all, then one more is closed at once.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let mut extra = std::net::TcpStream::connect(&cluster.addrs[0]).expect("connect");
        extra
            .set_read_timeout(Some(Duration::from_secs(2)))
            .expect("timeout");
        let mut buf = [0u8; 1];
        // Closed by the replica: end of stream or a reset, not a read timeout.
        let closed = match extra.read(&mut buf) {
            Ok(0) => true,
            Err(e) => {
                e.kind() != std::io::ErrorKind::WouldBlock
                    && e.kind() != std::io::ErrorKind::TimedOut
            }
            Ok(_) => false,
        };
        if closed {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "a fifth connection was never refused"
        );
    }
    let refused = metric_sum(&metrics(&cluster, 0), "epaxos_connections_refused_total");
    assert!(refused >= 1.0, "refusals counted: {refused}");
    // Other replicas serve meanwhile; once the flood ends, this one serves again.
    still_serving_unfenced_except(&cluster, 0).await;
    drop(held);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(mut c) = cluster.client(0).await {
            if Session::new()
                .call(&mut c, put("after", "flood"))
                .await
                .is_ok()
            {
                break;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "replica 0 never served again after the flood"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Replicas other than `skip` serve a write.
async fn still_serving_unfenced_except(cluster: &Cluster, skip: usize) {
    for i in (0..cluster.addrs.len()).filter(|&i| i != skip) {
        let mut c = cluster.client(i).await.expect("connect");
        let reply = Session::new()
            .call(&mut c, put(&format!("during-{i}"), "v"))
            .await
            .expect("served during the flood");
        assert!(reply.success);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_from_one_replica_are_rate_limited() {
    let cluster = Cluster::start(3, &[]).await;
    // Replica 1 joins replica 0 again as the incarnation it already is: nothing is fenced.
    let incarnation = cluster.incarnation(1);
    let peer = cluster
        .peer_client(0, Some("replica-1"))
        .await
        .expect("replica 1's certificate opens the peer listener");
    let mut refused_once = false;
    // Many Joins at once: some are answered, the rest refused, none fences anyone.
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..20 {
        let mut peer = peer.clone();
        burst.spawn(async move {
            peer.join(proto::JoinRequest {
                from: 1,
                incarnation,
            })
            .await
        });
    }
    while let Some(result) = burst.join_next().await {
        if let Err(status) = result.expect("the call's task ran") {
            assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
            refused_once = true;
        }
    }
    assert!(refused_once, "a burst of Joins is not all admitted");
    let counted = metric_sum(
        &metrics(&cluster, 0),
        "epaxos_membership_calls_refused_total",
    );
    assert!(counted >= 1.0, "refusals counted: {counted}");
    still_serving_unfenced(&cluster).await;
}
