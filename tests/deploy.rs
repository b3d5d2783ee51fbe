//! Deployment: the replica tells systemd it is ready (`Type=notify`) once it serves, and the
//! shipped example config and systemd unit are what the guide says they are.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use epaxos_kv::server::config::Config;

/// A replica started with `$NOTIFY_SOCKET` sends `READY=1` there, and it does serve by then.
#[tokio::test]
async fn the_replica_notifies_systemd_once_it_serves() {
    let dir = std::env::temp_dir().join(format!("epaxos-notify-{}", rand::random::<u64>()));
    std::fs::create_dir_all(&dir).expect("dir");
    let ports = common::free_ports(3);
    let config = dir.join("config.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"replicas": [{{"id": 0, "addr": "127.0.0.1:{}", "peer_addr": "127.0.0.1:{}", "metrics_addr": "127.0.0.1:{}"}}]}}"#,
            ports[0], ports[1], ports[2]
        ),
    )
    .expect("config");
    let socket_path = dir.join("notify");
    let socket = UnixDatagram::bind(&socket_path).expect("bind notify socket");
    socket
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let mut child = Command::new(env!("CARGO_BIN_EXE_replica"))
        .arg("--config")
        .arg(&config)
        .args(["--id", "0", "--insecure", "--data-dir"])
        .arg(dir.join("replica-0"))
        .env("NOTIFY_SOCKET", &socket_path)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn replica");
    let started = Instant::now();
    let mut buf = [0u8; 512];
    let got = socket.recv(&mut buf);
    let ready_after = started.elapsed();
    // Serving already: a Status call answers at once.
    let addr = format!("http://127.0.0.1:{}", ports[0]);
    let status = async {
        let mut c = epaxos_kv::proto::kv_client::KvClient::connect(addr).await?;
        c.status(epaxos_kv::proto::StatusRequest {}).await?;
        Ok::<(), Box<dyn std::error::Error>>(())
    };
    let answered = tokio::time::timeout(Duration::from_secs(5), status).await;
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    let n = got.expect("a datagram on NOTIFY_SOCKET within 20 s");
    let text = String::from_utf8_lossy(&buf[..n]);
    assert!(text.starts_with("READY=1\n"), "{text:?}");
    assert!(
        text.contains("STATUS=replica 0 serving on 127.0.0.1:"),
        "{text:?}"
    );
    assert!(
        matches!(answered, Ok(Ok(()))),
        "ready after {ready_after:?} but Status failed: {answered:?}"
    );
}

/// deploy/config.example.json is a valid three-host configuration that listens on every
/// interface and advertises host names.
#[test]
fn the_example_config_is_valid() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/config.example.json");
    let c = Config::load(path).expect("deploy/config.example.json is valid");
    assert_eq!(c.n(), 3);
    for r in &c.replicas {
        assert!(r.listen.addr.is_wildcard(), "{r:?}");
        assert!(
            r.addr.socket_addr().is_none(),
            "advertises a host name: {r:?}"
        );
    }
}

/// The unit waits for readiness, restarts, raises the file limit and is hardened.
#[test]
fn the_systemd_unit_has_what_the_guide_says() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/epaxos-replica.service");
    let unit = std::fs::read_to_string(path).expect("read the unit");
    for line in [
        "Type=notify",
        "Restart=on-failure",
        "LimitNOFILE=",
        "NoNewPrivileges=true",
        "ProtectSystem=strict",
        "ExecStart=/usr/local/bin/replica --config /etc/epaxos/config.json",
    ] {
        assert!(unit.contains(line), "{path} lacks {line:?}");
    }
}
