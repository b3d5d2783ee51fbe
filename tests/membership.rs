//! The configuration on real processes (issue 15, operator side): what `client member list`,
//! `client status` and the metrics say about the epoch and its members, and who may make the
//! admin calls (`MemberAdd`, `MemberRemove`) on the client listener.
//!
//! Under a client writing throughout: removing a live member; growing 3 → 5 by adding replicas
//! started with their addresses on the command line (not in config.json), then shrinking back
//! to 3; replacing a dead member by a new replica on a new address.

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{get, metric_sum, output_within, put, scrape_metrics, Cluster, Session, CLUSTER_NAME};
use epaxos_kv::proto;
use epaxos_kv::proto::kv_client::KvClient;
use prost::Message as _;

/// `<magic: 8> | length: u32 | crc32c: u32 | proto::Metadata`.
const RECORD_AT: usize = 16;

/// `client ARGS` with `--config config`, bounded in time: (exit code, stdout, stderr).
fn run_client(config: &std::path::Path, args: &[&str]) -> (Option<i32>, String, String) {
    output_within(
        std::process::Command::new(env!("CARGO_BIN_EXE_client"))
            .arg("--config")
            .arg(config)
            .args(args),
        Duration::from_secs(20),
    )
}

/// `client member list` until `want` holds of its lines (bounded: reachability follows the
/// replicas' suspicion timeout), returning them.
fn member_list_until(cluster: &Cluster, want: impl Fn(&[String]) -> bool) -> Vec<String> {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (code, out, err) = run_client(&cluster.config, &["member", "list"]);
        assert_eq!(code, Some(0), "{out}{err}");
        let lines: Vec<String> = out.lines().map(str::to_string).collect();
        if want(&lines) {
            return lines;
        }
        assert!(
            Instant::now() < deadline,
            "member list never matched: {out}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_list_status_and_metrics_show_epoch_zero_and_config_json_replicas() {
    let mut cluster = Cluster::start(3, &[]).await;
    let expected: Vec<String> = (0..3)
        .map(|i| {
            format!(
                "{i} {} {} member reachable",
                cluster.peers[i], cluster.addrs[i]
            )
        })
        .collect();
    member_list_until(&cluster, |lines| lines == expected);

    let (code, out, err) = run_client(&cluster.config, &["-w", "json", "member", "list"]);
    assert_eq!(code, Some(0), "{out}{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).expect("one JSON document");
    assert_eq!(doc["epoch"], "0");
    assert_eq!(doc["members"].as_array().map(Vec::len), Some(3), "{doc}");
    assert_eq!(doc["members"][1]["peer_addr"], cluster.peers[1].as_str());

    // Status: the epoch and the members with their addresses, in every output format.
    for i in 0..3 {
        let s = cluster.status(i).await;
        assert_eq!(s.epoch, 0);
        let members: Vec<(u32, String, String)> = s
            .members
            .iter()
            .map(|m| (m.id, m.peer_addr.clone(), m.client_addr.clone()))
            .collect();
        let want: Vec<(u32, String, String)> = (0..3)
            .map(|j| (j as u32, cluster.peers[j].clone(), cluster.addrs[j].clone()))
            .collect();
        assert_eq!(members, want, "replica {i}");
    }
    let (_, out, err) = run_client(&cluster.config, &["status"]);
    assert_eq!(
        out.lines()
            .filter(|l| l.ends_with("epoch=0 members=0,1,2"))
            .count(),
        3,
        "{out}{err}"
    );
    let (_, out, _) = run_client(&cluster.config, &["-w", "json", "status"]);
    let doc: serde_json::Value = serde_json::from_str(&out).expect("one JSON document");
    for r in doc["replicas"].as_array().expect("replicas") {
        assert_eq!(r["epoch"], "0", "{r}");
        assert_eq!(r["members"].as_array().map(Vec::len), Some(3), "{r}");
    }
    let (_, out, _) = run_client(&cluster.config, &["-w", "table", "status"]);
    let header = out.lines().next().expect("a header");
    assert!(
        header.contains("EPOCH") && header.contains("MEMBERS"),
        "{out}"
    );
    assert!(
        out.lines()
            .nth(1)
            .is_some_and(|l| l.trim_end().ends_with("0  0,1,2")),
        "{out}"
    );

    // Metrics.
    for i in 0..3 {
        let text = scrape_metrics(&cluster.metrics[i]).expect("scrape");
        assert!(text.lines().any(|l| l == "epaxos_epoch 0"), "{text}");
        assert!(text.lines().any(|l| l == "epaxos_members 3"), "{text}");
    }

    // A member down stays a member, unreachable.
    cluster.kill(2);
    let lines = member_list_until(&cluster, |lines| {
        lines.len() == 3 && lines[2].ends_with("member unreachable")
    });
    assert_eq!(lines[..2], expected[..2]);
    let (_, out, _) = run_client(&cluster.config, &["-w", "table", "member", "list"]);
    assert!(out.contains("epoch: 0 (as replica"), "{out}");
}

/// A call to MemberRemove of replica 9 (never a member: refused by the core once the call is
/// authorised) on replica 0, presenting `identity` (a file name of the certificate directory,
/// e.g. "client"), or no certificate.
async fn remove_as(cluster: &Cluster, identity: Option<&str>) -> tonic::Status {
    let channel = cluster
        .endpoint(0, &cluster.addrs[0], identity)
        .connect()
        .await
        .expect("the client listener takes callers with or without a certificate");
    let mut client = KvClient::new(channel);
    client
        .member_remove(proto::MemberRemoveRequest { id: 9 })
        .await
        .expect_err("replica 9 is not a member")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_calls_need_the_cluster_client_certificate() {
    let cluster = Cluster::start(3, &[]).await;
    // Without a certificate: data calls work as before, admin calls are refused.
    let channel = cluster
        .endpoint(0, &cluster.addrs[0], None)
        .connect()
        .await
        .expect("connect without a certificate");
    let r = Session::new()
        .call(&mut KvClient::new(channel), put("k", "v"))
        .await
        .expect("a put without a client certificate");
    assert!(r.success);
    let refused = remove_as(&cluster, None).await;
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(
        refused
            .message()
            .contains("no client certificate was presented")
            && refused
                .message()
                .contains(&format!("client.{CLUSTER_NAME}")),
        "{refused:?}"
    );
    // A replica's certificate is the cluster CA's, but does not name the client.
    let refused = remove_as(&cluster, Some("replica-1")).await;
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("does not name"), "{refused:?}");
    let text = scrape_metrics(&cluster.metrics[0]).expect("scrape");
    assert_eq!(
        metric_sum(&text, "epaxos_admin_refused_total"),
        2.0,
        "{text}"
    );
    assert_eq!(
        metric_sum(
            &text,
            "epaxos_client_requests_total{method=\"MemberRemove\",code=\"PERMISSION_DENIED\"}"
        ),
        2.0,
        "{text}"
    );

    // The client certificate passes; the core refuses a change that cannot be, naming the
    // members.
    let answered = remove_as(&cluster, Some("client")).await;
    assert_eq!(
        answered.code(),
        tonic::Code::InvalidArgument,
        "{answered:?}"
    );
    assert!(
        answered.message().contains("cannot remove replica 9")
            && answered.message().contains("is not a member")
            && answered
                .message()
                .contains("the current members are 0, 1, 2"),
        "{answered:?}"
    );
    // So does the bundled client, which presents it; without it, it is refused.
    let (code, out, err) = run_client(&cluster.config, &["member", "remove", "9"]);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(err.contains("InvalidArgument"), "{err}");
    // Adding a replica that was never started (never asked to Join): refused, saying what to
    // do, nothing changed.
    let (code, out, err) = run_client(
        &cluster.config,
        &["member", "add", "3", "127.0.0.1:1", "127.0.0.1:2"],
    );
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(
        err.contains("FailedPrecondition")
            && err.contains("cannot add replica 3")
            && err.contains("start replica 3 first")
            && err.contains("the current members are 0, 1, 2"),
        "{err}"
    );
    // An id that is a member already: the core's refusal.
    let (code, out, err) = run_client(
        &cluster.config,
        &["member", "add", "1", "127.0.0.1:1", "127.0.0.1:2"],
    );
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(
        err.contains("InvalidArgument") && err.contains("ids are never reused"),
        "{err}"
    );
    let (code, _, err) = run_client(&cluster.config, &["member", "add", "3", "nohost", "x:1"]);
    assert_eq!(code, Some(2));
    assert!(
        err.contains("InvalidArgument") && err.contains("peer_addr"),
        "{err}"
    );
    std::fs::remove_file(cluster.dir.join("certs/client.pem")).expect("remove client.pem");
    let (code, out, err) = run_client(&cluster.config, &["member", "remove", "2"]);
    assert_eq!(code, Some(2), "{out}{err}");
    assert!(err.contains("PermissionDenied"), "{err}");
    // Nothing changed.
    let channel = cluster
        .endpoint(1, &cluster.addrs[1], None)
        .connect()
        .await
        .expect("connect without a certificate");
    let s = KvClient::new(channel)
        .status(proto::StatusRequest {})
        .await
        .expect("status")
        .into_inner();
    assert_eq!((s.epoch, s.members.len()), (0, 3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_insecure_anyone_may_make_admin_calls() {
    let cluster = Cluster::start(3, &["--insecure"]).await;
    let answered = remove_as(&cluster, None).await;
    assert_eq!(
        answered.code(),
        tonic::Code::InvalidArgument,
        "{answered:?}"
    );
    let text = scrape_metrics(&cluster.metrics[0]).expect("scrape");
    assert_eq!(
        metric_sum(&text, "epaxos_admin_refused_total"),
        0.0,
        "{text}"
    );
}

/// Data directories that recorded a later epoch than config.json's (as a decided change
/// leaves them, here the removal of replica 2, written by hand in every record as if the logs
/// had lost the change) start in that epoch: replica 2 says so once with both, shows it in
/// Status, member list and metrics, and, not being a member of it, refuses client requests
/// naming the members.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_data_directory_with_a_later_epoch_wins_over_config_json() {
    let mut cluster = Cluster::start(3, &[]).await;
    for i in 0..3 {
        cluster.kill(i);
    }
    let members: Vec<proto::metadata::Member> = (0..2)
        .map(|i| proto::metadata::Member {
            id: i as u32,
            peer_addr: cluster.peers[i].clone(),
            client_addr: cluster.addrs[i].clone(),
        })
        .collect();
    for i in 0..3 {
        rewrite_metadata(&cluster, i, |record| {
            record.epoch = 1;
            record.members = members.clone();
        });
    }
    for i in 0..3 {
        cluster.restart(i).await;
    }

    let log = cluster.log(2);
    let told: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("the data directory's configuration wins over config.json's"))
        .collect();
    assert_eq!(told.len(), 1, "{log}");
    assert!(
        told[0].contains("data directory: epoch 1: 0 (peer")
            && told[0].contains("config.json: epoch 0: 0 (peer"),
        "{}",
        told[0]
    );
    let s = cluster.status(2).await;
    assert_eq!(s.epoch, 1);
    assert_eq!(s.members.iter().map(|m| m.id).collect::<Vec<_>>(), [0, 1]);
    let text = scrape_metrics(&cluster.metrics[2]).expect("scrape");
    assert!(text.lines().any(|l| l == "epaxos_epoch 1"), "{text}");
    assert!(text.lines().any(|l| l == "epaxos_members 2"), "{text}");

    let mut c2 = cluster.client(2).await.expect("connect");
    let refused = Session::new()
        .call(&mut c2, put("k", "v"))
        .await
        .expect_err("not a member");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("replica 2 is not a member")
            && refused
                .message()
                .contains(&format!("0 (peer {}", cluster.peers[0]))
            && refused
                .message()
                .contains(&format!("1 (peer {}", cluster.peers[1])),
        "{refused:?}"
    );
    // The members serve; member list takes the highest epoch reported.
    let mut c0 = cluster.client(0).await.expect("connect");
    assert!(
        Session::new()
            .call(&mut c0, put("k", "v"))
            .await
            .expect("put")
            .success
    );
    let lines = member_list_until(&cluster, |lines| lines.len() == 3);
    assert!(
        lines[0].starts_with("0 ") && lines[0].ends_with(" member reachable"),
        "{lines:?}"
    );
    assert!(
        lines[1].starts_with("1 ") && lines[1].ends_with(" member reachable"),
        "{lines:?}"
    );
    assert_eq!(
        lines[2],
        format!("2 - {} not-member reachable", cluster.addrs[2]),
        "{lines:?}"
    );
}

/// Rewrites replica `i`'s metadata record with `change` (the record's CRC made anew).
fn rewrite_metadata(cluster: &Cluster, i: usize, change: impl FnOnce(&mut proto::Metadata)) {
    let path = cluster.dir.join(format!("replica-{i}/metadata"));
    let bytes = std::fs::read(&path).expect("read metadata");
    let mut record = proto::Metadata::decode(&bytes[RECORD_AT..]).expect("decode metadata");
    change(&mut record);
    let payload = record.encode_to_vec();
    let mut out = bytes[..8].to_vec();
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
    std::fs::write(&path, out).expect("write metadata");
}

/// A configuration that added a member (epoch 1: config.json's 0, 1, 2 and a replica 3 at an
/// address config.json does not have), recorded in every data directory as a decided change
/// leaves it, with the row it added (cluster size 4): the replicas restart with config.json
/// unchanged, dial replica 3 where the record says, take Dispatch from its certificate (and
/// still refuse one never a member), show it in Status, member list and metrics, and serve.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_shell_follows_a_recorded_configuration_that_added_a_member() {
    let mut cluster = Cluster::start(3, &[]).await;
    let mut c0 = cluster.client(0).await.expect("connect");
    let mut session = Session::new();
    assert!(
        session
            .call(&mut c0, put("before", "grow"))
            .await
            .expect("put")
            .success
    );
    // Certificates for replicas 3 and 4 from the same CA: a config naming them, in the same
    // directory (certificates are made for the ids a config lists).
    let ports = common::free_ports(6);
    let at = |i: usize| format!("127.0.0.1:{}", ports[i]);
    let (peer3, client3) = (at(0), at(1));
    let mut doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&cluster.config).expect("read config"))
            .expect("config is JSON");
    let replicas = doc["replicas"].as_array_mut().expect("replicas");
    for (id, addr, peer_addr, metrics_addr) in [(3, 1, 0, 2), (4, 3, 4, 5)] {
        replicas.push(serde_json::json!({
            "id": id, "addr": at(addr), "peer_addr": at(peer_addr),
            "metrics_addr": at(metrics_addr),
        }));
    }
    let five = cluster.dir.join("five.json");
    std::fs::write(&five, doc.to_string()).expect("write five.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_replica"))
        .arg("certs")
        .arg("--config")
        .arg(&five)
        .output()
        .expect("run replica certs");
    assert!(out.status.success(), "{out:?}");
    // Replica 3's peer address: a listener that shows who dials it.
    let listener = std::net::TcpListener::bind(&peer3).expect("bind replica 3's peer address");
    listener.set_nonblocking(true).expect("nonblocking");

    for i in 0..3 {
        cluster.kill(i);
    }
    for i in 0..3 {
        rewrite_metadata(&cluster, i, |record| {
            record.epoch = 1;
            record.members = (0..3)
                .map(|j| proto::metadata::Member {
                    id: j as u32,
                    peer_addr: cluster.peers[j].clone(),
                    client_addr: cluster.addrs[j].clone(),
                })
                .chain([proto::metadata::Member {
                    id: 3,
                    peer_addr: peer3.clone(),
                    client_addr: client3.clone(),
                }])
                .collect();
            record.cluster_size = 4;
            record.peer_incarnations.resize(4, 0);
            if let Some(proto::metadata::Membership::Joined(j)) = &mut record.membership {
                j.horizons.resize(4, 0);
            }
        });
    }
    for i in 0..3 {
        cluster.restart(i).await;
    }

    // Dialed at the recorded address.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match listener.accept() {
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                assert!(
                    Instant::now() < deadline,
                    "nobody dialed replica 3 at {peer3}"
                );
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(e) => panic!("accept: {e}"),
        }
    }
    for i in 0..3 {
        let log = cluster.log(i);
        let linked: Vec<&str> = log
            .lines()
            .filter(|l| l.contains("peer links follow the configuration"))
            .collect();
        let last = linked
            .last()
            .unwrap_or_else(|| panic!("replica {i}: {log}"));
        assert!(
            last.contains("epoch 1:") && last.contains(&format!("3 (peer {peer3}")),
            "replica {i}: {last}"
        );
        let others: Vec<u32> = (0..4).filter(|j| *j != i as u32).collect();
        assert!(
            last.contains(&format!("started={others:?}")),
            "replica {i}: {last}"
        );
        let text = scrape_metrics(&cluster.metrics[i]).expect("scrape");
        assert!(text.lines().any(|l| l == "epaxos_epoch 1"), "{text}");
        assert!(text.lines().any(|l| l == "epaxos_members 4"), "{text}");
        assert!(
            text.lines()
                .any(|l| l.starts_with("epaxos_peer_connected{peer=\"3\"}")),
            "{text}"
        );
        let s = cluster.status(i).await;
        assert_eq!(s.epoch, 1);
        assert_eq!(
            s.members.iter().map(|m| m.id).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        assert_eq!(s.members[3].peer_addr, peer3);
        // Never heard: suspected once the suspicion timeout passed.
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let s = cluster.status(i).await;
            if s.peers_suspected == [3] {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "replica 3 never suspected: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    // Replica 3's certificate may open a Dispatch stream (it is a member); replica 4's, never
    // a member, is refused as before.
    let mut as3 = cluster
        .peer_client(0, Some("replica-3"))
        .await
        .expect("connect as replica 3");
    let (batches, rx) = tokio::sync::mpsc::channel(1);
    batches
        .send(proto::PeerBatch {
            from: 3,
            messages: vec![],
            incarnation: 4242,
        })
        .await
        .expect("queue a batch");
    let mut stream = as3
        .dispatch(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("replica 3 may dispatch")
        .into_inner();
    let open = tokio::time::timeout(Duration::from_secs(2), stream.message()).await;
    assert!(open.is_err(), "the stream stays open: {open:?}");
    drop(batches);
    let mut as4 = cluster
        .peer_client(0, Some("replica-4"))
        .await
        .expect("connect as replica 4");
    let refused = as4
        .dispatch(tokio_stream::iter(vec![proto::PeerBatch {
            from: 4,
            messages: vec![],
            incarnation: 4242,
        }]))
        .await
        .expect_err("replica 4 was never a member");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    assert!(
        refused.message().contains("names no replica"),
        "{refused:?}"
    );

    // member list: the four members, 3 unreachable.
    let lines = member_list_until(&cluster, |lines| {
        lines.len() == 4 && lines[..3].iter().all(|l| l.ends_with(" member reachable"))
    });
    assert_eq!(
        lines[3],
        format!("3 {peer3} {client3} member unreachable"),
        "{lines:?}"
    );

    // Reads and writes, on every replica, and what was written before is there.
    for i in 0..3 {
        let mut c = cluster.client(i).await.expect("connect");
        let key = format!("after-{i}");
        assert!(
            session
                .call(&mut c, put(&key, "grow"))
                .await
                .expect("put")
                .success
        );
        let r = session
            .call(&mut c, common::get("before"))
            .await
            .expect("get");
        assert_eq!(&r.value[..], b"grow", "{r:?}");
    }
}

/// Replica `i`'s members as its metadata record holds them: the epoch and the members with
/// their addresses (`moved`: replica 1's client address, if it is not config.json's).
fn record_members(
    cluster: &Cluster,
    epoch: u64,
    ids: &[usize],
    moved: &str,
) -> impl FnOnce(&mut proto::Metadata) {
    let members: Vec<proto::metadata::Member> = ids
        .iter()
        .map(|j| proto::metadata::Member {
            id: *j as u32,
            peer_addr: cluster.peers[*j].clone(),
            client_addr: if *j == 1 {
                moved.to_string()
            } else {
                cluster.addrs[*j].clone()
            },
        })
        .collect();
    move |record: &mut proto::Metadata| {
        record.epoch = epoch;
        record.members = members;
    }
}

/// A replica started on an empty data directory with a stale config.json learns the cluster's
/// configuration from its peers' Join answers: it adopts a later one it is a member of (said
/// once with both, made durable), and refuses to start, naming the members, if it is not one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_replica_with_a_stale_config_json_learns_the_configuration_from_its_peers() {
    let mut cluster = Cluster::start(3, &[]).await;
    // The cluster acts in epoch 1: the same replicas, replica 1 reached by clients at an
    // address config.json does not have (what a decided configuration records).
    let moved = format!("127.0.0.1:{}", common::free_ports(1)[0]);
    // Replicas 0 and 1 record replica 2's incarnation first (a write led by it), so that the
    // wiped replica 2 rejoins from a snapshot, which carries the core's epoch 1: a fresh join
    // (peers that never heard it) would leave its core in epoch 0, which no change in any log
    // moves on, as the epoch here is written by hand rather than decided.
    let mut c2 = cluster.client(2).await.expect("connect");
    assert!(
        Session::new()
            .call(&mut c2, put("from-2", "x"))
            .await
            .expect("put")
            .success
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    while !(0..2).all(|i| {
        let path = cluster.dir.join(format!("replica-{i}/metadata"));
        std::fs::read(&path).ok().is_some_and(|bytes| {
            bytes.len() > RECORD_AT
                && proto::Metadata::decode(&bytes[RECORD_AT..])
                    .is_ok_and(|r| r.peer_incarnations.get(2).is_some_and(|p| *p != 0))
        })
    }) {
        assert!(
            Instant::now() < deadline,
            "replica 2's incarnation not recorded in 20 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 0..2 {
        cluster.kill(i);
        rewrite_metadata(&cluster, i, record_members(&cluster, 1, &[0, 1, 2], &moved));
        cluster.restart(i).await;
    }
    cluster.kill(2);
    std::fs::remove_dir_all(cluster.dir.join("replica-2")).expect("wipe replica 2");
    cluster.restart(2).await;
    let log = cluster.log(2);
    let told: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("config.json is older than the cluster's configuration"))
        .collect();
    assert_eq!(told.len(), 1, "{log}");
    assert!(
        told[0].contains("started_with=epoch 0: 0 (peer") && told[0].contains("cluster=epoch 1:"),
        "{}",
        told[0]
    );
    let s = cluster.status(2).await;
    assert_eq!(s.epoch, 1);
    assert_eq!(s.members[1].client_addr, moved, "{s:?}");
    let path = cluster.dir.join("replica-2/metadata");
    let record = proto::Metadata::decode(&std::fs::read(&path).expect("metadata")[RECORD_AT..])
        .expect("decode");
    assert_eq!(record.epoch, 1, "made durable");
    let mut c2 = cluster.client(2).await.expect("connect");
    assert!(
        Session::new()
            .call(&mut c2, put("adopted", "yes"))
            .await
            .expect("put")
            .success
    );

    // Epoch 2 removed replica 2: started empty with config.json, it refuses to start.
    for i in 0..2 {
        cluster.kill(i);
        rewrite_metadata(&cluster, i, record_members(&cluster, 2, &[0, 1], &moved));
        cluster.restart(i).await;
    }
    cluster.kill(2);
    std::fs::remove_dir_all(cluster.dir.join("replica-2")).expect("wipe replica 2");
    let mut replica = std::process::Command::new(env!("CARGO_BIN_EXE_replica"));
    replica
        .arg("--config")
        .arg(&cluster.config)
        .args(["--id", "2", "--data-dir"])
        .arg(cluster.dir.join("replica-2"))
        .env("RUST_LOG", "info");
    let (code, _, said) =
        tokio::task::spawn_blocking(move || output_within(&mut replica, Duration::from_secs(30)))
            .await
            .expect("replica thread");
    assert_ne!(code, Some(0), "{said}");
    assert!(
        said.contains("replica 2 is not a member of the cluster's configuration, epoch 2: 0 (peer")
            && said.contains(&format!("1 (peer {}, client {moved})", cluster.peers[1])),
        "{said}"
    );
}

/// Status of replica `i` until `want` holds of it (bounded), returning it.
async fn status_until(
    cluster: &Cluster,
    i: usize,
    what: &str,
    want: impl Fn(&proto::StatusReply) -> bool,
) -> proto::StatusReply {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = cluster.try_status(i, Duration::from_secs(3)).await;
        match s {
            Ok(s) if want(&s) => return s,
            _ => assert!(
                Instant::now() < deadline,
                "replica {i}: {what} not within 20 s: {s:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Ids of a Status's members.
fn ids(s: &proto::StatusReply) -> Vec<u32> {
    s.members.iter().map(|m| m.id).collect()
}

/// Removing a live member while a client writes (issue 15): `client member remove 2` (with the
/// client certificate) answers epoch 1 with members 0 and 1; writes at 0 and 1 keep being
/// acknowledged; replica 2 then refuses clients naming the members; 0 and 1 converge and hold
/// every acknowledged write; a restarted replica 0 comes back in epoch 1 and serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_live_member_under_load_makes_epoch_1_without_it() {
    let mut cluster = Cluster::start(3, &[]).await;
    // The writer: one session per replica 0 and 1, alternating; every acknowledged write kept.
    let load = Load::start(&cluster, &[0, 1], "w").await;
    load.wait_more(30, "before the change").await;

    assert_eq!(
        member(&cluster, &["remove", "2"]).await,
        change_output(&cluster, 1, &[0, 1])
    );
    for i in 0..2 {
        let s = status_until(&cluster, i, "epoch 1", |s| s.epoch == 1).await;
        assert_eq!(ids(&s), [0, 1], "replica {i}");
    }
    let after = load.count();
    load.wait_more(30, "after the change").await;

    // Replica 2 executed the change too: it refuses clients, naming the members.
    let s2 = status_until(&cluster, 2, "epoch 1", |s| s.epoch == 1).await;
    assert_eq!(ids(&s2), [0, 1]);
    refuses_naming(&cluster, 2, &[0, 1]).await;

    let (acked, failed) = stop_and_converge(&cluster, load, &[0, 1]).await;
    read_back(&cluster, 0, &acked).await;
    eprintln!(
        "acknowledged writes: {} ({} during or after the change), failed: {failed}",
        acked.len(),
        acked.len() - after
    );

    // The records hold the change and the seal of epoch 0 (what a restart gives the core).
    for i in 0..3 {
        let path = cluster.dir.join(format!("replica-{i}/metadata"));
        let bytes = std::fs::read(&path).expect("read metadata");
        let record = proto::Metadata::decode(&bytes[RECORD_AT..]).expect("decode metadata");
        assert_eq!(record.epoch, 1, "replica {i}");
        assert_eq!(
            record.members.iter().map(|m| m.id).collect::<Vec<_>>(),
            [0, 1],
            "replica {i}"
        );
        assert_eq!(record.ever, [0, 1, 2], "replica {i}");
        assert!(
            record
                .seals
                .iter()
                .any(|s| s.epoch == 0 && !s.ends.is_empty()),
            "replica {i}: {:?}",
            record.seals
        );
    }

    // A restart of replica 0 comes back in epoch 1 and serves.
    cluster.restart(0).await;
    let s0 = status_until(&cluster, 0, "epoch 1 after a restart", |s| s.epoch == 1).await;
    assert_eq!(ids(&s0), [0, 1]);
    let mut c0 = cluster.client(0).await.expect("connect 0");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut session = Session::new();
    loop {
        match session.call(&mut c0, put("after", "restart")).await {
            Ok(r) if r.success => break,
            other => assert!(
                Instant::now() < deadline,
                "no write after the restart within 20 s: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    cluster
        .converged_among(&[0, 1], Duration::from_secs(20))
        .await;
}

/// A change that would leave no live majority is refused, naming the members; removing the
/// dead member instead works, and the survivors serve in epoch 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_a_dead_member_works_and_a_change_without_a_live_majority_is_refused() {
    let mut cluster = Cluster::start(3, &[]).await;
    kill_until_suspected(&mut cluster, 1).await;
    let channel = cluster
        .endpoint(0, &cluster.addrs[0], Some("client"))
        .connect()
        .await
        .expect("connect with the client certificate");
    let mut admin = KvClient::new(channel);
    // {0, 1} with 1 dead has no live majority.
    let refused = admin
        .member_remove(proto::MemberRemoveRequest { id: 2 })
        .await
        .expect_err("no live majority");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    assert!(
        refused.message().contains("cannot remove replica 2")
            && refused.message().contains("no live majority")
            && refused
                .message()
                .contains("the current members are 0, 1, 2"),
        "{refused:?}"
    );
    // {0, 2}: both live.
    let reply = admin
        .member_remove(proto::MemberRemoveRequest { id: 1 })
        .await
        .expect("removing the dead member")
        .into_inner();
    assert_eq!(reply.epoch, 1);
    assert_eq!(
        reply.members.iter().map(|m| m.id).collect::<Vec<_>>(),
        [0, 2]
    );
    let s2 = status_until(&cluster, 2, "epoch 1", |s| s.epoch == 1).await;
    assert_eq!(ids(&s2), [0, 2]);
    let mut session = Session::new();
    for (i, c) in [0, 2].into_iter().enumerate() {
        let mut client = cluster.client(c).await.expect("connect");
        let r = Session::new()
            .call(&mut client, put(&format!("k{i}"), "v"))
            .await
            .expect("a write in epoch 1");
        assert!(r.success);
    }
    let mut c0 = cluster.client(0).await.expect("connect");
    let r = session.call(&mut c0, get("k1")).await.expect("read");
    assert_eq!((r.found, r.value.as_ref()), (true, &b"v"[..]));
    cluster
        .converged_among(&[0, 2], Duration::from_secs(20))
        .await;
}

/// A client writing throughout a test: one session per target replica, alternating, each
/// acknowledged write kept (key, value).
struct Load {
    acked: Arc<Mutex<Vec<(String, String)>>>,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<u64>,
}

impl Load {
    /// Starts writing keys `<prefix><i>` at the replicas `at`, in turn.
    async fn start(cluster: &Cluster, at: &[usize], prefix: &str) -> Load {
        let mut clients = Vec::new();
        for &i in at {
            clients.push(cluster.client(i).await.expect("connect"));
        }
        let acked: Arc<Mutex<Vec<(String, String)>>> = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let prefix = prefix.to_string();
        let task = {
            let (acked, stop) = (acked.clone(), stop.clone());
            tokio::spawn(async move {
                let mut sessions: Vec<Session> = clients.iter().map(|_| Session::new()).collect();
                let mut failed = 0u64;
                for i in 0u64.. {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    let at = i as usize % clients.len();
                    let (key, value) = (format!("{prefix}{i}"), format!("v{i}"));
                    let call = sessions[at].call(&mut clients[at], put(&key, &value));
                    match tokio::time::timeout(Duration::from_secs(10), call).await {
                        Ok(Ok(r)) if r.success => {
                            acked.lock().expect("not poisoned").push((key, value));
                        }
                        _ => {
                            failed += 1;
                            // Backoff before the next write.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
                failed
            })
        };
        Load { acked, stop, task }
    }

    fn count(&self) -> usize {
        self.acked.lock().expect("not poisoned").len()
    }

    /// Waits (bounded) until `more` further writes were acknowledged.
    async fn wait_more(&self, more: usize, what: &str) {
        let want = self.count() + more;
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.count() < want {
            assert!(
                Instant::now() < deadline,
                "{what}: fewer than {more} more writes acknowledged within 30 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Stops writing: the acknowledged writes and the number of failed attempts.
    async fn stop(self) -> (Vec<(String, String)>, u64) {
        self.stop.store(true, Ordering::Relaxed);
        let failed = tokio::time::timeout(Duration::from_secs(30), self.task)
            .await
            .expect("the writer stops")
            .expect("writer task");
        let acked = self.acked.lock().expect("not poisoned").clone();
        (acked, failed)
    }
}

/// Every write of `acked` reads back at replica `i`.
async fn read_back(cluster: &Cluster, i: usize, acked: &[(String, String)]) {
    let mut c = cluster.client(i).await.expect("connect");
    let mut reader = Session::new();
    for (key, value) in acked {
        let r = reader.call(&mut c, get(key)).await.expect("read");
        assert_eq!(
            (r.found, r.value.as_ref()),
            (true, value.as_bytes()),
            "{key} at replica {i}"
        );
    }
}

/// `client ARGS` (with `--config` config.json) off the async runtime: (exit code, stdout,
/// stderr).
async fn client(cluster: &Cluster, args: &[&str]) -> (Option<i32>, String, String) {
    let config = cluster.config.clone();
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        run_client(&config, &args)
    })
    .await
    .expect("client thread")
}

/// `client member ARGS` off the async runtime, expected to succeed: its output.
async fn member(cluster: &Cluster, args: &[&str]) -> String {
    let mut all = vec!["member"];
    all.extend(args);
    let (code, out, err) = client(cluster, &all).await;
    assert_eq!(code, Some(0), "member {args:?}: {out}{err}");
    out
}

/// What `client member add|remove` prints for `epoch` with the members `ids`.
fn change_output(cluster: &Cluster, epoch: u64, ids: &[usize]) -> String {
    let mut out = format!("epoch {epoch}\n");
    for &i in ids {
        out.push_str(&format!("{i} {} {}\n", cluster.peers[i], cluster.addrs[i]));
    }
    out
}

/// `client member add ID` of a replica started by `Cluster::start_added`.
async fn add(cluster: &Cluster, id: usize) -> String {
    let (peer, client) = (cluster.peers[id].clone(), cluster.addrs[id].clone());
    member(cluster, &["add", &id.to_string(), &peer, &client]).await
}

/// A write at replica `i`, retried (bounded) until it is acknowledged: how long that took.
async fn first_write(cluster: &Cluster, i: usize, key: &str) -> Duration {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(20);
    let mut session = Session::new();
    loop {
        if let Ok(mut c) = cluster.client(i).await {
            match session.call(&mut c, put(key, "x")).await {
                Ok(r) if r.success => return started.elapsed(),
                other => assert!(
                    Instant::now() < deadline,
                    "replica {i}: no write within 20 s: {other:?}\n{}",
                    cluster.log_tail(i, 30)
                ),
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A started replica that was not added yet says so: in its log, in Status (joining, not
/// serving, the members without it, health "not a member yet"), and to clients.
async fn not_a_member_yet(cluster: &Cluster, id: usize, members: &[u32]) {
    let s = cluster.status(id).await;
    assert!(s.joining && !s.serving, "{s:?}");
    assert!(s.health.contains("not a member yet"), "{s:?}");
    assert_eq!(ids(&s), members);
    let log = cluster.log(id);
    assert!(
        log.contains("is not a member of the configuration it knows"),
        "{log}"
    );
    let mut c = cluster.client(id).await.expect("connect");
    let refused = Session::new()
        .call(&mut c, put("k", "v"))
        .await
        .expect_err("not a member");
    assert!(
        matches!(
            refused.code(),
            tonic::Code::FailedPrecondition | tonic::Code::Unavailable
        ),
        "{refused:?}"
    );
}

/// A removed replica refuses writes, naming the members (and not itself).
async fn refuses_naming(cluster: &Cluster, id: usize, members: &[usize]) {
    let mut c = cluster.client(id).await.expect("connect");
    let refused = Session::new()
        .call(&mut c, put("k", "v"))
        .await
        .expect_err("removed");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    let message = refused.message();
    assert!(
        message.contains(&format!("replica {id} is not a member")),
        "{refused:?}"
    );
    for &m in members {
        assert!(
            message.contains(&format!("{m} (peer {}", cluster.peers[m])),
            "{refused:?}"
        );
    }
    assert!(!message.contains(&format!("{id} (peer")), "{refused:?}");
}

/// Stops `load` and waits (bounded) until the replicas `members` converge to one digest: the
/// acknowledged writes and the failed attempts.
async fn stop_and_converge(
    cluster: &Cluster,
    load: Load,
    members: &[usize],
) -> (Vec<(String, String)>, u64) {
    let (acked, failed) = load.stop().await;
    cluster
        .converged_among(members, Duration::from_secs(30))
        .await;
    (acked, failed)
}

/// Kills replica `id` for good and waits (bounded) until replica 0 suspects it.
async fn kill_until_suspected(cluster: &mut Cluster, id: usize) {
    cluster.kill(id);
    status_until(cluster, 0, &format!("replica {id} suspected"), |s| {
        s.peers_suspected.contains(&(id as u32))
    })
    .await;
}

/// How an added replica came in: its id, and from `member add` returning, how long until it
/// joined (votes) and until it served its first write.
struct Added {
    id: usize,
    joined: Duration,
    served: Duration,
}

/// Starts the next added replica (`Cluster::start_added`), checks that it says it is not a
/// member yet, adds it with `client member add`, which must answer `epoch` with `members` (it
/// included), and waits (bounded) until it joined that epoch and served a write.
async fn add_and_join(cluster: &mut Cluster, epoch: u64, members: &[usize]) -> Added {
    let id = cluster.start_added().await;
    assert_eq!(
        members.last(),
        Some(&id),
        "the added replica takes the next id"
    );
    // It knows only config.json's epoch 0 until it is added.
    not_a_member_yet(cluster, id, &[0, 1, 2]).await;
    assert_eq!(
        add(cluster, id).await,
        change_output(cluster, epoch, members)
    );
    let added = Instant::now();
    let s = status_until(cluster, id, &format!("joined epoch {epoch}"), |s| {
        !s.joining && s.epoch == epoch
    })
    .await;
    let joined = added.elapsed();
    let want: Vec<u32> = members.iter().map(|&m| m as u32).collect();
    assert_eq!(ids(&s), want);
    first_write(cluster, id, &format!("at-{id}")).await;
    Added {
        id,
        joined,
        served: added.elapsed(),
    }
}

/// Growing 3 → 5 and shrinking back to 3 while a client writes (issue 15): replicas 3 and 4,
/// not in config.json, are started with their addresses on the command line, say they are not
/// members, and are added one at a time (`client member add`, epochs 1 and 2); each joins from a
/// peer's snapshot and takes writes; the five converge to one digest and every acknowledged
/// write reads back at each. Then `member remove 4` and `member remove 3` (epochs 3 and 4): the
/// removed replicas refuse writes naming 0, 1, 2, and the three converge with every write.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn growing_3_to_5_and_shrinking_back_under_load() {
    let mut cluster = Cluster::start(3, &[]).await;
    let load = Load::start(&cluster, &[0, 1], "grow").await;
    load.wait_more(20, "before the changes").await;

    add_and_join(&mut cluster, 1, &[0, 1, 2, 3]).await;
    load.wait_more(20, "after adding 3").await;
    add_and_join(&mut cluster, 2, &[0, 1, 2, 3, 4]).await;
    load.wait_more(20, "after adding 4").await;
    let all = [0, 1, 2, 3, 4];
    let (grown, failed) = stop_and_converge(&cluster, load, &all).await;
    for i in all {
        let s = cluster.status(i).await;
        assert_eq!((s.epoch, ids(&s)), (2, vec![0, 1, 2, 3, 4]), "replica {i}");
        read_back(&cluster, i, &grown).await;
    }
    // `client status` (config.json lists 0, 1, 2) covers the added members too: five replicas
    // serving, one digest.
    let config = cluster.config.clone();
    let (code, out, err) = tokio::task::spawn_blocking(move || run_client(&config, &["status"]))
        .await
        .expect("client thread");
    assert_eq!(code, Some(0), "{out}{err}");
    for i in all {
        assert_eq!(
            out.lines()
                .filter(
                    |l| l.starts_with(&format!("{i} {} up serving", cluster.addrs[i]))
                        && l.ends_with("epoch=2 members=0,1,2,3,4")
                )
                .count(),
            1,
            "replica {i}: {out}"
        );
    }
    eprintln!(
        "grow 3 -> 5: {} writes acknowledged, {failed} failed attempts",
        grown.len()
    );

    // Shrink back to 3, removing the added replicas, under a new writer.
    let load = Load::start(&cluster, &[0, 1, 2], "shrink").await;
    load.wait_more(20, "before shrinking").await;
    assert_eq!(
        member(&cluster, &["remove", "4"]).await,
        change_output(&cluster, 3, &[0, 1, 2, 3])
    );
    load.wait_more(20, "after removing 4").await;
    assert_eq!(
        member(&cluster, &["remove", "3"]).await,
        change_output(&cluster, 4, &[0, 1, 2])
    );
    load.wait_more(20, "after removing 3").await;
    let (shrunk, failed) = stop_and_converge(&cluster, load, &[0, 1, 2]).await;
    status_until(&cluster, 3, "epoch 4", |s| s.epoch == 4).await;
    refuses_naming(&cluster, 3, &[0, 1, 2]).await;
    status_until(&cluster, 4, "removed", |s| s.epoch >= 3).await;
    refuses_naming(&cluster, 4, &[0, 1, 2]).await;
    for i in 0..3 {
        read_back(&cluster, i, &grown).await;
        read_back(&cluster, i, &shrunk).await;
    }
    eprintln!(
        "shrink 5 -> 3: {} writes acknowledged, {failed} failed attempts",
        shrunk.len()
    );
}

/// Replacing a dead member while a client writes (issue 15): replica 2 is killed for good and
/// removed (epoch 1: 0, 1); replica 3 is started on new addresses and added (epoch 2: 0, 1, 3);
/// the cluster keeps completing requests, replica 3 joins, serves writes, and converges with
/// every acknowledged write. Prints how long the replacement took from `member add` returning
/// to joining (voting) and to its first write served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replacing_a_dead_member_by_a_new_replica_under_load() {
    let mut cluster = Cluster::start(3, &[]).await;
    let load = Load::start(&cluster, &[0, 1], "rep").await;
    load.wait_more(20, "before the kill").await;
    kill_until_suspected(&mut cluster, 2).await;
    assert_eq!(
        member(&cluster, &["remove", "2"]).await,
        change_output(&cluster, 1, &[0, 1])
    );
    load.wait_more(20, "after removing 2").await;

    let Added {
        id: three,
        joined,
        served,
    } = add_and_join(&mut cluster, 2, &[0, 1, 3]).await;
    eprintln!(
        "replacement: `member add` returned -> replica 3 joined (votes) in {} ms, first write \
         served at it in {} ms",
        joined.as_millis(),
        served.as_millis()
    );
    load.wait_more(20, "after adding 3").await;
    let (acked, failed) = stop_and_converge(&cluster, load, &[0, 1, 3]).await;
    read_back(&cluster, three, &acked).await;
    read_back(&cluster, 0, &acked).await;
    eprintln!(
        "replace: {} writes acknowledged, {failed} failed attempts",
        acked.len()
    );

    // The added replica restarts like any other, without its flags (its data directory kept
    // its addresses and recorded the configuration), in epoch 2, and serves.
    cluster.drop_own_flags(three);
    cluster.restart(three).await;
    let s = status_until(&cluster, three, "epoch 2 after a restart", |s| s.epoch == 2).await;
    assert_eq!(ids(&s), [0, 1, 3]);
    first_write(&cluster, three, "after-restart").await;
    cluster
        .converged_among(&[0, 1, 3], Duration::from_secs(30))
        .await;
}

/// A client given the old config.json follows the members (issue 15): after growing 3 → 5 and
/// shrinking back to 3 by removing two of config.json's replicas (members 0, 3, 4; replica 1
/// removed and still running, so refusing clients; replica 2 removed and dead), `client put`
/// and `get` (round-robin, and at `--replica 3`, which config.json does not list), `member
/// list` and a short round-robin `client bench` complete against the current members only,
/// without an error; `client status` judges the members only (exit 0); a removed replica named
/// with `--replica` is refused by the client; and endpoints naming no reachable replica get a
/// clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_config_json_reaches_the_current_members() {
    let mut cluster = Cluster::start(3, &[]).await;
    add_and_join(&mut cluster, 1, &[0, 1, 2, 3]).await;
    add_and_join(&mut cluster, 2, &[0, 1, 2, 3, 4]).await;
    assert_eq!(
        member(&cluster, &["remove", "1"]).await,
        change_output(&cluster, 3, &[0, 2, 3, 4])
    );
    assert_eq!(
        member(&cluster, &["remove", "2"]).await,
        change_output(&cluster, 4, &[0, 3, 4])
    );
    status_until(&cluster, 1, "removed", |s| s.epoch >= 3).await;
    refuses_naming(&cluster, 1, &[0, 2, 3, 4]).await;
    cluster.kill(2);

    // Without following the members a round-robin client would hit replica 1 (refused) or 2
    // (dead) two times in three: here every command completes at once.
    for i in 0..6 {
        let (k, v) = (format!("old-config-{i}"), format!("v{i}"));
        let (code, out, err) = client(&cluster, &["--target", "round-robin", "put", &k, &v]).await;
        assert_eq!((code, out.as_str()), (Some(0), "OK\n"), "put {k}: {err}");
        let (code, out, err) = client(&cluster, &["--target", "round-robin", "get", &k]).await;
        assert_eq!((code, out), (Some(0), format!("{v}\n")), "get {k}: {err}");
    }
    let (code, out, err) = client(
        &cluster,
        &["-w", "json", "--replica", "3", "get", "old-config-0"],
    )
    .await;
    assert_eq!(code, Some(0), "{out}{err}");
    let doc: serde_json::Value = serde_json::from_str(&out).expect("json");
    assert_eq!(doc["value"], "v0", "{doc}");
    assert_eq!(doc["replica"], 3, "answered by replica 3: {doc}");
    let (code, _, err) = client(&cluster, &["--replica", "1", "get", "old-config-0"]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("replica 1 is not a member"), "{err}");

    // member list: the members with their own addresses, config.json's others as not members.
    let out = member(&cluster, &["list"]).await;
    let lines: Vec<&str> = out.lines().collect();
    let line =
        |i: usize, what: &str| format!("{i} {} {} {what}", cluster.peers[i], cluster.addrs[i]);
    assert_eq!(
        lines,
        [
            line(0, "member reachable"),
            format!("1 - {} not-member reachable", cluster.addrs[1]),
            format!("2 - {} not-member unreachable", cluster.addrs[2]),
            line(3, "member reachable"),
            line(4, "member reachable"),
        ],
        "{out}"
    );

    // A short round-robin bench: every request answered, by the three members only.
    let (code, out, err) = client(
        &cluster,
        &[
            "--target",
            "round-robin",
            "bench",
            "--duration",
            "2",
            "--concurrency",
            "6",
            "--quiet",
            "--json",
        ],
    )
    .await;
    assert_eq!(code, Some(0), "{out}{err}");
    let doc: serde_json::Value = serde_json::from_str(out.trim()).expect("bench json");
    assert_eq!(doc["errors"], 0, "{doc}");
    let by = doc["ops_by_replica"].as_array().expect("ops_by_replica");
    assert_eq!(by.len(), 3, "the three members: {doc}");
    assert!(by.iter().all(|n| n.as_u64() > Some(0)), "{doc}");

    // status: the members answer, serve and agree; config.json's others are shown, not judged.
    cluster
        .converged_among(&[0, 3, 4], Duration::from_secs(30))
        .await;
    let (code, out, err) = client(&cluster, &["status"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    for i in [0, 3, 4] {
        let prefix = format!("{i} {} up serving", cluster.addrs[i]);
        assert!(out.lines().any(|l| l.starts_with(&prefix)), "{i}: {out}");
    }
    assert!(
        out.lines()
            .any(|l| l.starts_with(&format!("2 {} DOWN", cluster.addrs[2]))),
        "{out}"
    );
    let last = out.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("digests agree: all 3 up replicas")
            && last.ends_with("; not members of epoch 4, not judged: 1, 2"),
        "{out}"
    );
    // A member config.json does not list, asked alone.
    let (code, out, err) = client(&cluster, &["status", "--replica", "4"]).await;
    assert_eq!(code, Some(0), "{out}{err}");
    assert!(
        out.starts_with(&format!("4 {} up serving", cluster.addrs[4])),
        "{out}"
    );

    // Endpoints naming no reachable replica: a clear error, at once.
    let dead = cluster.addrs[2].clone();
    let (code, _, err) = client(&cluster, &["--endpoints", &dead, "put", "k", "v"]).await;
    assert_eq!(code, Some(2), "{err}");
    assert!(
        err.contains("no replica answered, so no current member is known")
            && err.contains(&dead)
            && err.contains("--endpoints"),
        "{err}"
    );
}

/// Adding a member while another is down: the new configuration {0, 1, 2, 3} has a live
/// majority (0, 1 and the new 3), and the added replica joins once that majority answered: its
/// Join asked again after it adopted epoch 1 is a retry of the same incarnation, not a rejoin
/// that would wait for every member (replica 2 too, down).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_a_member_while_another_is_down_joins_with_a_majority() {
    let mut cluster = Cluster::start(3, &[]).await;
    let load = Load::start(&cluster, &[0, 1], "down").await;
    load.wait_more(20, "before the kill").await;
    kill_until_suspected(&mut cluster, 2).await;
    // 2 is down: the new configuration's live majority is 0, 1 and the new 3.
    let three = add_and_join(&mut cluster, 1, &[0, 1, 2, 3]).await.id;
    load.wait_more(20, "after adding 3").await;
    let (acked, _failed) = stop_and_converge(&cluster, load, &[0, 1, 3]).await;
    read_back(&cluster, three, &acked).await;
}
