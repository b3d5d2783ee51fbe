//! Test harness: a cluster of real `replica` processes on ephemeral loopback ports, and a small
//! gRPC client over the public contract. Every process is killed when the cluster drops.
//!
//! Clusters run with TLS (certificates made once per cluster by `replica certs`, in
//! `<dir>/certs`) unless started with `--insecure`, which the harness then uses too.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use bytes::Bytes;
use epaxos_kv::proto::kv_client::KvClient;
use epaxos_kv::proto::peer_client::PeerClient;
use epaxos_kv::proto::{self, operation::Kind};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// The cluster name the harness writes into its configs (`tls.cluster_name`).
pub const CLUSTER_NAME: &str = "test";

/// A running cluster.
pub struct Cluster {
    pub dir: PathBuf,
    pub config: PathBuf,
    /// Client listeners.
    pub addrs: Vec<String>,
    /// Peer listeners.
    pub peers: Vec<String>,
    pub metrics: Vec<String>,
    /// TLS on (no `--insecure` among the flags).
    pub tls: bool,
    flags: Vec<String>,
    /// Per replica, the flags only it starts with (an added replica's addresses).
    own_flags: Vec<Vec<String>>,
    children: Vec<Option<Child>>,
}

/// Every port `free_ports` handed out in this test process: never handed out again.
static HANDED_OUT: std::sync::Mutex<std::collections::BTreeSet<u16>> =
    std::sync::Mutex::new(std::collections::BTreeSet::new());

/// Reserves `count` distinct free loopback ports, drawn at random below the kernel's ephemeral
/// range: an outgoing connection (the replicas dial each other while they start) never takes
/// one of those, which with ports from the ephemeral range happened between this reservation
/// and the replica's bind. The listeners are dropped just before the replicas bind; a port is
/// handed out at most once per test process (`HANDED_OUT`), so a test running at the same time
/// cannot pick it in between (that happened: "Address already in use" at a replica's start).
pub fn free_ports(count: usize) -> Vec<u16> {
    let ephemeral_low: u16 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|t| t.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let (low, high) = (10_000u16, ephemeral_low.clamp(10_001, 32768));
    let mut listeners: Vec<TcpListener> = Vec::with_capacity(count);
    let mut attempts = 0;
    while listeners.len() < count {
        attempts += 1;
        assert!(attempts < 10_000, "no free loopback ports in {low}..{high}");
        let port = low + (rand::random::<u16>() % (high - low));
        let mut handed = HANDED_OUT
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if handed.contains(&port) {
            continue;
        }
        if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
            handed.insert(port);
            listeners.push(l);
        }
    }
    listeners
        .iter()
        .map(|l| l.local_addr().expect("local addr").port())
        .collect()
}

impl Cluster {
    /// Starts `n` replicas with extra flags and waits until each answers Status.
    pub async fn start(n: usize, flags: &[&str]) -> Cluster {
        Cluster::start_with_tls(n, flags, "").await
    }

    /// Like `start`, with `tls_extra` (JSON members, e.g. `"client_ca": "certs/ca.pem"`) added
    /// to the config's `tls` section.
    pub async fn start_with_tls(n: usize, flags: &[&str], tls_extra: &str) -> Cluster {
        let dir = std::env::temp_dir().join(format!(
            "epaxos-test-{}-{}",
            std::process::id(),
            rand_suffix()
        ));
        std::fs::create_dir_all(&dir).expect("create test dir");
        let ports = free_ports(3 * n);
        let addrs: Vec<String> = (0..n).map(|i| format!("127.0.0.1:{}", ports[i])).collect();
        let metrics: Vec<String> = (0..n)
            .map(|i| format!("127.0.0.1:{}", ports[n + i]))
            .collect();
        let peers: Vec<String> = (0..n)
            .map(|i| format!("127.0.0.1:{}", ports[2 * n + i]))
            .collect();
        let entries: Vec<String> = (0..n)
            .map(|i| {
                format!(
                    r#"{{"id": {i}, "addr": "{}", "peer_addr": "{}", "metrics_addr": "{}"}}"#,
                    addrs[i], peers[i], metrics[i]
                )
            })
            .collect();
        let config = dir.join("config.json");
        std::fs::write(
            &config,
            format!(
                r#"{{"replicas": [{}], "tls": {{"cluster_name": "{CLUSTER_NAME}", "cert_dir": "certs"{}}}}}"#,
                entries.join(", "),
                if tls_extra.is_empty() {
                    String::new()
                } else {
                    format!(", {tls_extra}")
                }
            ),
        )
        .expect("write config");
        let tls = !flags.contains(&"--insecure");
        let mut cluster = Cluster {
            dir,
            config,
            addrs,
            peers,
            metrics,
            tls,
            flags: flags.iter().map(|f| f.to_string()).collect(),
            own_flags: vec![Vec::new(); n],
            children: Vec::new(),
        };
        if tls {
            cluster.make_certs();
        }
        for i in 0..n {
            let child = cluster.spawn(i);
            cluster.children.push(Some(child));
        }
        for i in 0..n {
            cluster.wait_up(i).await;
        }
        cluster
    }

    fn spawn(&self, i: usize) -> Child {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("replica-{i}.log")))
            .expect("open log file");
        Command::new(env!("CARGO_BIN_EXE_replica"))
            .arg("--config")
            .arg(&self.config)
            .arg("--id")
            .arg(i.to_string())
            .arg("--data-dir")
            .arg(self.dir.join(format!("replica-{i}")))
            .args(&self.flags)
            .args(&self.own_flags[i])
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn replica")
    }

    /// Starts a replica being added (issue 15): the next id, not in config.json, on fresh
    /// ports given on its command line (`--peer-addr`, `--client-addr`, `--metrics-addr`),
    /// with its certificate made first (`replica certs --id`). It is not a member: it asks the
    /// members to Join until `client member add` adds it. Waits (bounded) until it answers
    /// Status; returns its id.
    pub async fn start_added(&mut self) -> usize {
        let id = self.addrs.len();
        let ports = free_ports(3);
        let (client, peer, metrics) = (
            format!("127.0.0.1:{}", ports[0]),
            format!("127.0.0.1:{}", ports[1]),
            format!("127.0.0.1:{}", ports[2]),
        );
        if self.tls {
            let out = Command::new(env!("CARGO_BIN_EXE_replica"))
                .arg("certs")
                .arg("--config")
                .arg(&self.config)
                .args(["--id", &id.to_string(), "--peer-addr", &peer])
                .args(["--client-addr", &client])
                .output()
                .expect("run replica certs --id");
            assert!(
                out.status.success(),
                "replica certs --id {id} failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        self.own_flags.push(vec![
            "--peer-addr".into(),
            peer.clone(),
            "--client-addr".into(),
            client.clone(),
            "--metrics-addr".into(),
            metrics.clone(),
        ]);
        self.addrs.push(client);
        self.peers.push(peer);
        self.metrics.push(metrics);
        let child = self.spawn(id);
        self.children.push(Some(child));
        self.wait_answering(id).await;
        id
    }

    /// Replica `i` starts without its own flags from now on (an added replica restarted
    /// without its addresses: its data directory kept them).
    pub fn drop_own_flags(&mut self, i: usize) {
        self.own_flags[i].clear();
    }

    /// Waits (bounded) until replica `i` answers Status (joined or not).
    pub async fn wait_answering(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.try_status(i, Duration::from_secs(2)).await.is_err() {
            assert!(
                Instant::now() < deadline,
                "replica {i} does not answer; log:\n{}",
                self.log(i)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (bounded) until replica `i` answers Status and has joined its cluster.
    pub async fn wait_up(&self, i: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Ok(mut c) = self.client(i).await {
                if c.status(proto::StatusRequest {})
                    .await
                    .is_ok_and(|s| !s.into_inner().joining)
                {
                    return;
                }
            }
            assert!(
                Instant::now() < deadline,
                "replica {i} did not come up; log:\n{}",
                self.log(i)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.dir.join(format!("replica-{i}.log"))).unwrap_or_default()
    }

    /// Runs `replica certs` on the cluster's config (creates what is missing in `<dir>/certs`).
    pub fn make_certs(&self) {
        let out = Command::new(env!("CARGO_BIN_EXE_replica"))
            .arg("certs")
            .arg("--config")
            .arg(&self.config)
            .output()
            .expect("run replica certs");
        assert!(
            out.status.success(),
            "replica certs failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A file of the cluster's certificate directory.
    pub fn cert_file(&self, name: &str) -> Vec<u8> {
        let path = self.dir.join("certs").join(name);
        std::fs::read(&path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
    }

    /// An endpoint for `addr` (a listener of replica `i`): TLS trusting the cluster CA and
    /// checking replica `i`'s name, presenting `identity` (the files `<name>.pem` and
    /// `<name>.key` of the certificate directory, e.g. "client" or "replica-1") if given; or
    /// plaintext when the cluster runs `--insecure`.
    pub fn endpoint(&self, i: usize, addr: &str, identity: Option<&str>) -> Endpoint {
        let plain = Channel::from_shared(format!("http://{addr}")).expect("valid uri");
        let ep = if self.tls {
            let mut tls = ClientTlsConfig::new()
                .ca_certificate(Certificate::from_pem(self.cert_file("ca.pem")))
                .domain_name(format!("replica-{i}.{CLUSTER_NAME}"));
            if let Some(name) = identity {
                tls = tls.identity(Identity::from_pem(
                    self.cert_file(&format!("{name}.pem")),
                    self.cert_file(&format!("{name}.key")),
                ));
            }
            Channel::from_shared(format!("https://{addr}"))
                .expect("valid uri")
                .tls_config(tls)
                .expect("tls config")
        } else {
            plain
        };
        ep.connect_timeout(Duration::from_secs(2))
            .timeout(Duration::from_secs(15))
    }

    /// A connected channel to replica `i`'s client listener (with the client certificate).
    pub async fn channel(&self, i: usize) -> Result<Channel, tonic::transport::Error> {
        self.endpoint(i, &self.addrs[i], Some("client"))
            .connect()
            .await
    }

    pub async fn client(&self, i: usize) -> Result<KvClient<Channel>, tonic::transport::Error> {
        Ok(KvClient::new(self.channel(i).await?))
    }

    /// A client of replica `i`'s peer listener presenting `identity` (see `endpoint`).
    pub async fn peer_client(
        &self,
        i: usize,
        identity: Option<&str>,
    ) -> Result<PeerClient<Channel>, tonic::transport::Error> {
        let ch = self.endpoint(i, &self.peers[i], identity).connect().await?;
        Ok(PeerClient::new(ch))
    }

    pub async fn status(&self, i: usize) -> proto::StatusReply {
        let mut c = self.client(i).await.expect("connect");
        c.status(proto::StatusRequest {})
            .await
            .expect("status")
            .into_inner()
    }

    /// Waits (bounded) until all replicas report the same digest and executed count, and
    /// returns the digest.
    pub async fn converged(&self) -> u64 {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let mut s = Vec::new();
            for i in 0..self.addrs.len() {
                s.push(self.status(i).await);
            }
            let same = s.windows(2).all(|w| {
                w[0].digest == w[1].digest && w[0].executed == w[1].executed && w[0].waiting == 0
            }) && s[s.len() - 1].waiting == 0;
            if same {
                return s[0].digest;
            }
            assert!(
                Instant::now() < deadline,
                "replicas did not converge: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Starts replica `i` again on its data directory and waits until it answers.
    pub async fn restart(&mut self, i: usize) {
        self.kill(i);
        let child = self.spawn(i);
        self.children[i] = Some(child);
        self.wait_up(i).await;
    }

    /// Replica `i`'s incarnation, from its metadata record (`<magic: 8> | length: u32 |
    /// crc32c: u32 | proto::Metadata`, see `storage.rs`).
    pub fn incarnation(&self, i: usize) -> u64 {
        use prost::Message as _;
        let path = self.dir.join(format!("replica-{i}/metadata"));
        let bytes = std::fs::read(&path).expect("replica's metadata record");
        proto::Metadata::decode(bytes.get(16..).expect("longer than its header"))
            .expect("a metadata record")
            .incarnation
    }

    /// Replica `i`'s process id, while it runs.
    pub fn pid(&self, i: usize) -> Option<u32> {
        self.children[i].as_ref().map(|c| c.id())
    }

    /// SIGKILLs replica `i` (no clean shutdown).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn rand_suffix() -> u64 {
    rand::random::<u64>()
}

pub fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

pub fn get(key: &str) -> proto::Operation {
    proto::Operation {
        kind: Some(Kind::Get(proto::Get { key: b(key) })),
    }
}

pub fn put(key: &str, value: &str) -> proto::Operation {
    proto::Operation {
        kind: Some(Kind::Put(proto::Put {
            key: b(key),
            value: b(value),
        })),
    }
}

pub fn delete(key: &str) -> proto::Operation {
    proto::Operation {
        kind: Some(Kind::Delete(proto::Delete { key: b(key) })),
    }
}

pub fn cas(key: &str, expected: Option<&str>, new: &str) -> proto::Operation {
    proto::Operation {
        kind: Some(Kind::Cas(proto::Cas {
            key: b(key),
            expected: expected.map(b),
            new_value: b(new),
        })),
    }
}

/// A client session: one request in flight, numbered from 1.
pub struct Session {
    pub id: u64,
    pub next: u64,
}

impl Session {
    pub fn new() -> Session {
        Session {
            id: rand::random(),
            next: 1,
        }
    }

    /// Sends `op` as the next request to `client`.
    pub async fn call(
        &mut self,
        client: &mut KvClient<Channel>,
        op: proto::Operation,
    ) -> Result<proto::OpResult, tonic::Status> {
        let req = proto::ProposeRequest {
            client_id: self.id,
            request_id: self.next,
            op: Some(op),
            retry: false,
        };
        self.next += 1;
        let reply = client.propose(req).await?.into_inner();
        Ok(reply.result.unwrap_or_default())
    }
}

// ---------------------------------------------------------------------------------------------
// Helpers for tests where some replicas are down.

impl Cluster {
    /// Replica `i`'s Status within `timeout`, or why not.
    pub async fn try_status(
        &self,
        i: usize,
        timeout: Duration,
    ) -> Result<proto::StatusReply, String> {
        let call = async {
            let mut c = self.client(i).await.map_err(|e| format!("connect: {e}"))?;
            c.status(proto::StatusRequest {})
                .await
                .map(|r| r.into_inner())
                .map_err(|e| format!("status: {e}"))
        };
        match tokio::time::timeout(timeout, call).await {
            Ok(r) => r,
            Err(_) => Err(format!("no status answer within {timeout:?}")),
        }
    }

    /// Like `converged`, over the replicas `ids` only (for example the survivors of a kill),
    /// waiting at most `timeout`: they report the same digest and executed count and nothing
    /// waiting. Returns the digest.
    pub async fn converged_among(&self, ids: &[usize], timeout: Duration) -> u64 {
        assert!(!ids.is_empty(), "converged_among needs replicas");
        let deadline = Instant::now() + timeout;
        loop {
            let mut s = Vec::new();
            for &i in ids {
                s.push(self.try_status(i, Duration::from_secs(3)).await);
            }
            let ok: Vec<&proto::StatusReply> = s.iter().filter_map(|r| r.as_ref().ok()).collect();
            if ok.len() == ids.len()
                && ok.iter().all(|r| {
                    r.digest == ok[0].digest && r.executed == ok[0].executed && r.waiting == 0
                })
            {
                return ok[0].digest;
            }
            assert!(
                Instant::now() < deadline,
                "replicas {ids:?} did not converge within {timeout:?}: {s:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last `lines` lines of replica `i`'s log.
    pub fn log_tail(&self, i: usize, lines: usize) -> String {
        let log = self.log(i);
        let all: Vec<&str> = log.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

/// Runs `command` to its end with stdout and stderr captured, bounded in time: one that runs
/// longer than `limit` is killed and fails the test, showing what it wrote to stderr. (exit
/// code, stdout, stderr; the code is None when a signal ended it)
pub fn output_within(
    command: &mut std::process::Command,
    limit: Duration,
) -> (Option<i32>, String, String) {
    let mut child = command
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn");
    let deadline = std::time::Instant::now() + limit;
    loop {
        match child.try_wait().expect("wait for the child") {
            Some(_) => break,
            None if std::time::Instant::now() > deadline => {
                let _ = child.kill();
                let said = child
                    .wait_with_output()
                    .map(|o| String::from_utf8_lossy(&o.stderr).into_owned())
                    .unwrap_or_default();
                panic!("{command:?} did not finish within {limit:?}; its stderr: {said}");
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    }
    let out = child.wait_with_output().expect("the child's output");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Fetches the Prometheus text of `/metrics` at `addr` over plain HTTP/1.0, with bounded connect,
/// write and read times.
pub fn scrape_metrics(addr: &str) -> Result<String, String> {
    use std::io::{Read, Write};
    let sock: std::net::SocketAddr = addr.parse().map_err(|e| format!("{addr}: {e}"))?;
    let mut s = std::net::TcpStream::connect_timeout(&sock, Duration::from_secs(2))
        .map_err(|e| format!("connect to {addr}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .and_then(|()| s.set_write_timeout(Some(Duration::from_secs(5))))
        .map_err(|e| format!("{addr}: {e}"))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .map_err(|e| format!("write to {addr}: {e}"))?;
    let mut body = String::new();
    s.read_to_string(&mut body)
        .map_err(|e| format!("read from {addr}: {e}"))?;
    Ok(body)
}

/// The sum of every sample whose line starts with `prefix` (a metric name, optionally with
/// labels), 0 when there is none.
pub fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}
