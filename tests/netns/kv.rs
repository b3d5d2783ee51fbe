//! A replica per namespace of a [`Net`], the test's view of them (from the initial namespace,
//! through the bridge), and client load from the clients' namespace that remembers every
//! acknowledged write.

use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use epaxos_kv::proto::kv_client::KvClient;
use epaxos_kv::proto::{self, operation::Kind};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use super::{in_namespace, Net};

pub const CLUSTER_NAME: &str = "test";
const CLIENT_PORT: u16 = 7070;
const PEER_PORT: u16 = 7170;
const METRICS_PORT: u16 = 9070;

/// Faster failure detection than the defaults and a short Propose wait, so that partitions
/// show within a test's budget and a cut-off replica answers DEADLINE_EXCEEDED soon.
pub const FLAGS: &[&str] = &[
    "--heartbeat-ms",
    "200",
    "--suspect-after-ms",
    "1000",
    "--propose-timeout-ms",
    "2000",
];

/// The host name of replica `i` when the config names hosts.
pub fn host_name(i: usize) -> String {
    format!("h{i}.kv.test")
}

/// Replicas on the hosts of a [`Net`].
pub struct NetCluster {
    pub net: Net,
    pub dir: PathBuf,
    pub config: PathBuf,
    pub n: usize,
    flags: Vec<String>,
    pids: Vec<Option<u32>>,
    tls: TlsFiles,
}

/// What a client needs to speak TLS to the replicas.
#[derive(Clone)]
pub struct TlsFiles {
    ca: Vec<u8>,
    cert: Vec<u8>,
    key: Vec<u8>,
}

impl TlsFiles {
    /// An endpoint for replica `i` at `ip`, checking the certificate names replica `i`.
    pub fn endpoint(&self, i: usize, ip: Ipv4Addr) -> Endpoint {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca))
            .identity(Identity::from_pem(&self.cert, &self.key))
            .domain_name(format!("replica-{i}.{CLUSTER_NAME}"));
        Channel::from_shared(format!("https://{ip}:{CLIENT_PORT}"))
            .expect("valid uri")
            .tls_config(tls)
            .expect("tls config")
            .connect_timeout(Duration::from_secs(1))
            .tcp_nodelay(true)
            // A path cut without a reset is noticed and the connection redialed.
            .http2_keep_alive_interval(Duration::from_secs(1))
            .keep_alive_timeout(Duration::from_secs(2))
            .keep_alive_while_idle(true)
    }
}

impl NetCluster {
    /// `n` replicas on `n` hosts. With `names`, the config advertises host names (resolved
    /// through each namespace's /etc/hosts) and the replicas listen on the wildcard address.
    pub async fn start(n: usize, names: bool, extra_flags: &[&str]) -> NetCluster {
        let net = Net::new(n);
        let dir = std::env::temp_dir().join(format!("epaxos-{}", net.prefix));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create test dir");
        if names {
            let entries: Vec<(String, Ipv4Addr)> = net
                .hosts
                .iter()
                .enumerate()
                .map(|(i, h)| (host_name(i), h.ip))
                .collect();
            net.write_hosts(&entries);
        }
        let entries: Vec<String> = net
            .hosts
            .iter()
            .enumerate()
            .map(|(i, h)| {
                let host = if names {
                    host_name(i)
                } else {
                    h.ip.to_string()
                };
                let listen = if names {
                    format!(
                        r#", "listen": {{"addr": "0.0.0.0:{CLIENT_PORT}", "peer_addr": "0.0.0.0:{PEER_PORT}", "metrics_addr": "0.0.0.0:{METRICS_PORT}"}}"#
                    )
                } else {
                    String::new()
                };
                format!(
                    r#"{{"id": {i}, "addr": "{host}:{CLIENT_PORT}", "peer_addr": "{host}:{PEER_PORT}", "metrics_addr": "{host}:{METRICS_PORT}"{listen}}}"#
                )
            })
            .collect();
        let config = dir.join("config.json");
        std::fs::write(
            &config,
            format!(
                r#"{{"replicas": [{}], "tls": {{"cluster_name": "{CLUSTER_NAME}", "cert_dir": "certs"}}}}"#,
                entries.join(", ")
            ),
        )
        .expect("write config");
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_replica"))
            .arg("certs")
            .arg("--config")
            .arg(&config)
            .output()
            .expect("run replica certs");
        assert!(
            out.status.success(),
            "replica certs: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let read = |name: &str| {
            let p = dir.join("certs").join(name);
            std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        };
        let tls = TlsFiles {
            ca: read("ca.pem"),
            cert: read("client.pem"),
            key: read("client.key"),
        };
        let mut flags: Vec<String> = FLAGS.iter().map(|f| f.to_string()).collect();
        flags.extend(extra_flags.iter().map(|f| f.to_string()));
        let mut c = NetCluster {
            net,
            dir,
            config,
            n,
            flags,
            pids: vec![None; n],
            tls,
        };
        for i in 0..n {
            c.spawn(i);
        }
        for i in 0..n {
            c.wait_up(i, Duration::from_secs(30)).await;
        }
        c
    }

    pub fn tls(&self) -> TlsFiles {
        self.tls.clone()
    }

    pub fn data_dir(&self, i: usize) -> PathBuf {
        self.dir.join(format!("replica-{i}"))
    }

    fn spawn(&mut self, i: usize) {
        let mut args = vec![
            "--config".to_string(),
            self.config.display().to_string(),
            "--id".to_string(),
            i.to_string(),
            "--data-dir".to_string(),
            self.data_dir(i).display().to_string(),
        ];
        args.extend(self.flags.iter().cloned());
        let host = self.net.hosts[i].clone();
        let log = self.log_path(i);
        let pid = self
            .net
            .spawn(&host, Path::new(env!("CARGO_BIN_EXE_replica")), &args, &log);
        self.pids[i] = Some(pid);
    }

    /// SIGKILLs replica `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(pid) = self.pids[i].take() {
            self.net.kill(pid);
        }
    }

    /// Starts replica `i` again (on its data directory) and waits until it serves.
    pub async fn restart(&mut self, i: usize) {
        self.kill(i);
        self.spawn(i);
        self.wait_up(i, Duration::from_secs(30)).await;
    }

    fn log_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("replica-{i}.log"))
    }

    pub fn log(&self, i: usize) -> String {
        std::fs::read_to_string(self.log_path(i)).unwrap_or_default()
    }

    /// The last lines of every replica's log, for failure messages.
    pub fn logs(&self) -> String {
        (0..self.n)
            .map(|i| {
                let log = self.log(i);
                let lines: Vec<&str> = log.lines().collect();
                format!(
                    "--- replica {i}:\n{}",
                    lines[lines.len().saturating_sub(15)..].join("\n")
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A client of replica `i` from the test's own (initial) namespace, through the bridge.
    pub fn client(&self, i: usize) -> KvClient<Channel> {
        KvClient::new(
            self.tls
                .endpoint(i, self.net.hosts[i].ip)
                .timeout(Duration::from_secs(5))
                .connect_lazy(),
        )
    }

    /// Replica `i`'s Status within `timeout`, or why not.
    pub async fn status(&self, i: usize, timeout: Duration) -> Result<proto::StatusReply, String> {
        let mut c = self.client(i);
        match tokio::time::timeout(timeout, c.status(proto::StatusRequest {})).await {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(s)) => Err(format!("{:?}: {}", s.code(), s.message())),
            Err(_) => Err(format!("no answer within {timeout:?}")),
        }
    }

    /// Waits (bounded) until replica `i` answers Status and has joined.
    pub async fn wait_up(&self, i: usize, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        loop {
            if self
                .status(i, Duration::from_secs(2))
                .await
                .is_ok_and(|s| !s.joining)
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "replica {i} did not come up in {timeout:?}; log:\n{}",
                self.log(i)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits (bounded) until every replica reports the same digest and executed count with
    /// nothing waiting; returns the digest.
    pub async fn converged(&self, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let mut s = Vec::new();
            for i in 0..self.n {
                s.push(self.status(i, Duration::from_secs(2)).await);
            }
            let ok: Vec<&proto::StatusReply> = s.iter().filter_map(|r| r.as_ref().ok()).collect();
            if ok.len() == self.n
                && ok.iter().all(|r| {
                    r.digest == ok[0].digest && r.executed == ok[0].executed && r.waiting == 0
                })
            {
                return ok[0].digest;
            }
            assert!(
                Instant::now() < deadline,
                "replicas did not converge within {timeout:?}: {s:?}\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Reads every key of `reports` through every replica (GETs are commands: they execute
    /// where they are proposed) and checks each holds its last acknowledged value, or the
    /// value of a write sent after it whose answer never came.
    pub async fn check_reads(&self, reports: &[SessionReport]) -> usize {
        let mut checked = 0;
        for i in 0..self.n {
            let mut client = self.client(i);
            let session = rand::random::<u64>() | 1;
            let mut request = 0;
            for r in reports {
                for (key, state) in &r.keys {
                    request += 1;
                    let req = proto::ProposeRequest {
                        client_id: session,
                        request_id: request,
                        op: Some(get(key)),
                        retry: false,
                    };
                    let reply = tokio::time::timeout(Duration::from_secs(10), client.propose(req))
                        .await
                        .unwrap_or_else(|_| panic!("replica {i}: GET {key} timed out"))
                        .unwrap_or_else(|e| panic!("replica {i}: GET {key}: {e}"))
                        .into_inner();
                    let result = reply.result.unwrap_or_default();
                    let got: Option<u64> = result
                        .found
                        .then(|| String::from_utf8_lossy(&result.value).parse().ok())
                        .flatten();
                    let fine = match (got, state.acked) {
                        // An unanswered write may execute after a later acknowledged one.
                        (Some(v), Some(a)) => v == a || state.unknown.contains(&v),
                        (Some(v), None) => state.unknown.contains(&v),
                        (None, None) => true,
                        (None, Some(_)) => false,
                    };
                    assert!(
                        fine,
                        "replica {i}: {key} reads {got:?}; acknowledged {:?}, unanswered {:?}",
                        state.acked, state.unknown
                    );
                    checked += 1;
                }
            }
        }
        checked
    }

    /// Prometheus text of replica `i` (from the initial namespace).
    pub fn metrics(&self, i: usize) -> Result<String, String> {
        let addr = format!("{}:{METRICS_PORT}", self.net.hosts[i].ip);
        crate::common::scrape_metrics(&addr)
    }
}

impl Drop for NetCluster {
    fn drop(&mut self) {
        for i in 0..self.n {
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        // The net (namespaces, bridge, /etc/netns) goes when the field drops after this.
    }
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

pub fn get(key: &str) -> proto::Operation {
    proto::Operation {
        kind: Some(Kind::Get(proto::Get { key: b(key) })),
    }
}

fn put(key: &str, value: &str) -> proto::Operation {
    proto::Operation {
        kind: Some(Kind::Put(proto::Put {
            key: b(key),
            value: b(value),
        })),
    }
}

/// How a session picks replicas (as the bundled client's `--target`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// Every attempt to this replica.
    Single(usize),
    /// Each request to the next replica, starting here; a retry to the next one too.
    RoundRobin(usize),
}

/// Per key of a session: the last acknowledged value, and values written after it whose
/// answer never came (they may or may not have executed).
#[derive(Debug, Default, Clone)]
pub struct KeyState {
    pub acked: Option<u64>,
    pub unknown: Vec<u64>,
}

#[derive(Debug, Default)]
pub struct SessionReport {
    pub target: Option<Target>,
    pub keys: HashMap<String, KeyState>,
    pub acks: u64,
    /// Requests given up after the retry budget.
    pub abandoned: u64,
}

/// What the load shares with the test while it runs.
pub struct Stats {
    pub acks: AtomicU64,
    /// Per session: acknowledged requests, and failed attempts.
    pub session_acks: Vec<AtomicU64>,
    pub session_errors: Vec<AtomicU64>,
    /// Failed attempts by kind (gRPC code, or `timeout`).
    pub errors: Mutex<BTreeMap<String, u64>>,
    stop: AtomicBool,
}

impl Stats {
    pub fn acks(&self) -> u64 {
        self.acks.load(Ordering::Relaxed)
    }
    pub fn session_acks(&self, s: usize) -> u64 {
        self.session_acks[s].load(Ordering::Relaxed)
    }
    pub fn session_errors(&self, s: usize) -> u64 {
        self.session_errors[s].load(Ordering::Relaxed)
    }
    pub fn errors(&self) -> BTreeMap<String, u64> {
        self.errors.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

/// Client sessions running in the clients' namespace.
pub struct Load {
    pub stats: Arc<Stats>,
    handle: Option<std::thread::JoinHandle<Vec<SessionReport>>>,
}

/// Time one attempt may take before the session retries.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_millis(2500);
/// Attempts per request (the retry budget), then the request is abandoned.
pub const ATTEMPTS_MAX: u32 = 4;

impl Load {
    /// Starts one closed-loop session per entry of `targets`, each writing its own 8 keys.
    pub fn start(c: &NetCluster, targets: Vec<Target>) -> Load {
        let stats = Arc::new(Stats {
            acks: AtomicU64::new(0),
            session_acks: targets.iter().map(|_| AtomicU64::new(0)).collect(),
            session_errors: targets.iter().map(|_| AtomicU64::new(0)).collect(),
            errors: Mutex::new(BTreeMap::new()),
            stop: AtomicBool::new(false),
        });
        let ips: Vec<Ipv4Addr> = c.net.hosts.iter().map(|h| h.ip).collect();
        let tls = c.tls();
        let shared = stats.clone();
        let handle = in_namespace(&c.net.client, move || async move {
            let clients: Vec<KvClient<Channel>> = ips
                .iter()
                .enumerate()
                .map(|(i, ip)| KvClient::new(tls.endpoint(i, *ip).connect_lazy()))
                .collect();
            let tasks: Vec<_> = targets
                .into_iter()
                .enumerate()
                .map(|(w, t)| tokio::spawn(session(w, t, clients.clone(), shared.clone())))
                .collect();
            let mut reports = Vec::new();
            for t in tasks {
                reports.push(t.await.expect("session task"));
            }
            reports
        });
        Load {
            stats,
            handle: Some(handle),
        }
    }

    /// Waits (bounded) until `cond(stats)` holds; panics with `what` otherwise.
    pub async fn wait(&self, what: &str, timeout: Duration, cond: impl Fn(&Stats) -> bool) {
        let deadline = Instant::now() + timeout;
        while !cond(&self.stats) {
            assert!(
                Instant::now() < deadline,
                "{what}: not within {timeout:?} (acks {}, errors {:?})",
                self.stats.acks(),
                self.stats.errors()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the sessions (each finishes or abandons its request in flight) and returns their
    /// reports.
    pub fn stop(mut self) -> Vec<SessionReport> {
        self.stats.stop.store(true, Ordering::Relaxed);
        let handle = self.handle.take().expect("stopped once");
        // Each session stops within one attempt's time after the flag.
        let deadline = Instant::now() + ATTEMPT_TIMEOUT * 4;
        while !handle.is_finished() {
            assert!(Instant::now() < deadline, "client sessions did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
        handle.join().expect("load thread")
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        // A test that panicked: let the thread end by itself (it stops within seconds).
        self.stats.stop.store(true, Ordering::Relaxed);
    }
}

async fn session(
    w: usize,
    target: Target,
    clients: Vec<KvClient<Channel>>,
    stats: Arc<Stats>,
) -> SessionReport {
    let n = clients.len();
    let mut report = SessionReport {
        target: Some(target),
        ..SessionReport::default()
    };
    let mut client_id = rand::random::<u64>() | 1;
    let mut request_id = 0u64;
    let mut next = match target {
        Target::Single(r) | Target::RoundRobin(r) => r,
    };
    let stopped = || stats.stop.load(Ordering::Relaxed);
    for seq in 1u64.. {
        if stopped() {
            break;
        }
        let key = format!("w{w}-k{}", seq % 8);
        let value = seq.to_string();
        request_id += 1;
        let mut replica = next;
        if let Target::RoundRobin(_) = target {
            next = (next + 1) % n;
        }
        let mut acked = false;
        for attempt in 1..=ATTEMPTS_MAX {
            let req = proto::ProposeRequest {
                client_id,
                request_id,
                op: Some(put(&key, &value)),
                retry: false,
            };
            let mut client = clients[replica].clone();
            let kind = match tokio::time::timeout(ATTEMPT_TIMEOUT, client.propose(req)).await {
                Ok(Ok(r)) => {
                    let result = r.into_inner().result.unwrap_or_default();
                    assert!(result.success, "put {key}={value}: {result:?}");
                    acked = true;
                    break;
                }
                Ok(Err(s)) => {
                    assert!(
                        !matches!(
                            s.code(),
                            tonic::Code::InvalidArgument | tonic::Code::FailedPrecondition
                        ),
                        "session {w}: a bug, not a failure: {s:?}"
                    );
                    format!("{:?}", s.code())
                }
                Err(_) => "timeout".to_string(),
            };
            stats.session_errors[w].fetch_add(1, Ordering::Relaxed);
            if let Ok(mut e) = stats.errors.lock() {
                *e.entry(kind).or_default() += 1;
            }
            if stopped() || attempt == ATTEMPTS_MAX {
                break;
            }
            if let Target::RoundRobin(_) = target {
                replica = (replica + 1) % n;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let state = report.keys.entry(key).or_default();
        if acked {
            state.acked = Some(seq);
            report.acks += 1;
            stats.acks.fetch_add(1, Ordering::Relaxed);
            stats.session_acks[w].fetch_add(1, Ordering::Relaxed);
        } else {
            // The request may still execute somewhere: go on under a new session, so that a
            // late execution of this one cannot be mistaken for a retry of the next.
            state.unknown.push(seq);
            report.abandoned += 1;
            client_id = rand::random::<u64>() | 1;
            request_id = 0;
        }
    }
    report
}
