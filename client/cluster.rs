//! The client's view of the cluster: one gRPC channel per replica, and which replica a request
//! goes to.

use std::error::Error as _;
use std::path::Path;
use std::time::Duration;

use anyhow::{anyhow, bail, Context, Result};
use clap::ValueEnum;
use epaxos_kv::proto::kv_client::KvClient;
use epaxos_kv::proto::{Member, StatusRequest};
use epaxos_kv::server::backoff::Avoidance;
use epaxos_kv::server::config::{Config, HostPort};
use epaxos_kv::server::tls;
use tonic::transport::{Channel, Endpoint};

/// The hint for a connection that broke off the way a TLS/plaintext mismatch does. Under TLS
/// 1.3 a replica that requires a client certificate and got none may also just close the
/// connection (its alert races with the client's first request), so that case is named too.
const TLS_HINT: &str = "a plaintext client against a TLS replica? replicas serve TLS unless \
                        started with --insecure; without --insecure the client speaks TLS with \
                        the CA named by config.json; a replica with tls.client_ca also requires \
                        a client certificate (client.pem and client.key in the certificate \
                        directory)";

/// How requests are spread over the replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TargetMode {
    /// Every request goes to one replica (the first, or `--replica ID`); retries too.
    Single,
    /// Successive requests go to successive replicas; a retry goes to the next replica.
    /// Replicas that just answered UNAVAILABLE (for example refused the connection) or did not
    /// answer in time (cut off by the network) are skipped for a second.
    RoundRobin,
}

impl TargetMode {
    pub fn name(self) -> &'static str {
        match self {
            TargetMode::Single => "single",
            TargetMode::RoundRobin => "round-robin",
        }
    }
}

/// One lazily connected channel per replica. Channels multiplex any number of concurrent
/// requests over one HTTP/2 connection; clients are cheap clones of them.
///
/// The replicas are those of the configuration file (or `--endpoints`) at first; once
/// [`crate::endpoints::sync`] heard the cluster's configuration, its current members (ids need
/// not be contiguous after changes: index `idx` is replica `id(idx)`).
pub struct Cluster {
    /// The replica id at each index.
    ids: Vec<u32>,
    /// Where each replica's client listener is reached. A host name is resolved by the channel
    /// on each (re)connect, so a replica that moved is found at its new address.
    addrs: Vec<HostPort>,
    clients: Vec<KvClient<Channel>>,
    /// Which replicas round-robin traffic avoids for now, because they refused a connection,
    /// said they are unavailable or did not answer in time (see [`DOWN_FOR`]).
    down: Avoidance,
    /// How to reach a member the cluster added (not in config.json): see
    /// [`Cluster::member_client`]. The CA is the cluster's (config.json's certificate
    /// directory) and each replica is checked under its own name in that cluster, so a member
    /// learnt from a replica's Status, or an address config.json names that another cluster
    /// now uses, is never talked to unless it proves it is that replica of this cluster.
    /// (`--insecure` has no such check: plaintext trusts whoever answers.)
    tls: Option<tonic::transport::ClientTlsConfig>,
    cluster_name: String,
    connect_timeout: Duration,
}

/// How long round-robin requests avoid a replica that answered UNAVAILABLE or timed out, at
/// least: twice the attempt timeout if that is longer, so that the one probe let through
/// (see [`Cluster::try_use`]) has its answer, or its timeout, before the next one goes. It does
/// not grow with further failures: a one-shot command makes a few attempts at most.
/// (With 1 s for both, under a cut-off replica every other second lost nearly all its
/// throughput, measured with bench/netns-partition.sh.)
const DOWN_FOR: Duration = Duration::from_secs(3);

impl Cluster {
    /// Loads and validates the config file, and prepares (without dialing) a channel to each
    /// replica.
    pub fn load(path: &Path, connect_timeout: Duration, insecure: bool) -> Result<Cluster> {
        // The error names the file and the problem (and already includes its cause).
        let config = Config::load(path).map_err(|e| anyhow!("{e}"))?;
        Cluster::new(&config, connect_timeout, insecure)
    }

    /// `insecure`: plaintext (the replicas run `--insecure`); otherwise TLS with the CA (and
    /// the client certificate, if any) the configuration names.
    pub fn new(config: &Config, connect_timeout: Duration, insecure: bool) -> Result<Cluster> {
        let tls = if insecure {
            None
        } else {
            Some(tls::client_config(&config.tls).map_err(|e| anyhow!("{e}"))?)
        };
        let mut cluster = Cluster {
            ids: Vec::with_capacity(config.n()),
            addrs: Vec::with_capacity(config.n()),
            clients: Vec::with_capacity(config.n()),
            down: Avoidance::new(0, DOWN_FOR, DOWN_FOR, DOWN_FOR),
            tls,
            cluster_name: config.tls.cluster_name.clone(),
            connect_timeout,
        };
        for r in &config.replicas {
            let client = cluster.channel(r.id.0, &r.addr)?;
            cluster.ids.push(r.id.0);
            cluster.addrs.push(r.addr.clone());
            cluster.clients.push(client);
        }
        cluster.down = cluster.avoidance();
        Ok(cluster)
    }

    /// Round-robin's avoidance of this cluster's replicas (see [`DOWN_FOR`]).
    fn avoidance(&self) -> Avoidance {
        let down_for = DOWN_FOR.max(self.connect_timeout.saturating_mul(2));
        Avoidance::new(self.ids.len(), down_for, down_for, down_for)
    }

    /// A lazily connected channel to replica `id` at `addr`, checked under its own name.
    fn channel(&self, id: u32, addr: &HostPort) -> Result<KvClient<Channel>> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = Endpoint::from_shared(format!("{scheme}://{addr}"))
            .with_context(|| format!("replica {id}: bad address {addr}"))?
            .connect_timeout(self.connect_timeout)
            .tcp_nodelay(true);
        if let Some(tls) = &self.tls {
            let name = tls::replica_name(&self.cluster_name, id);
            endpoint = endpoint
                .tls_config(tls.clone().domain_name(name))
                .with_context(|| format!("replica {id}: TLS settings"))?;
        }
        Ok(KvClient::new(endpoint.connect_lazy()))
    }

    /// A client for replica `id` at `addr`, a member that a change added (config.json does not
    /// list it; a member's Status names it), checked under its own name like the others.
    pub fn member_client(&self, id: u32, addr: &str) -> Result<KvClient<Channel>> {
        let addr = HostPort::parse(addr).map_err(|e| anyhow!("replica {id}: {addr}: {e}"))?;
        self.channel(id, &addr)
    }

    /// The same cluster over `members` (a configuration a replica reported), in id order. A
    /// member this cluster already has keeps its address and channel (the one config.json or
    /// `--endpoints` gave: it may be a name, or reachable only so from here); one it does not
    /// have is reached at the client address the configuration records for it.
    pub fn with_members(&self, members: &[Member]) -> Result<Cluster> {
        let mut members: Vec<&Member> = members.iter().collect();
        members.sort_by_key(|m| m.id);
        let mut out = Cluster {
            ids: Vec::with_capacity(members.len()),
            addrs: Vec::with_capacity(members.len()),
            clients: Vec::with_capacity(members.len()),
            down: Avoidance::new(0, DOWN_FOR, DOWN_FOR, DOWN_FOR),
            tls: self.tls.clone(),
            cluster_name: self.cluster_name.clone(),
            connect_timeout: self.connect_timeout,
        };
        for m in members {
            let (addr, client) = match self.index_of(m.id) {
                Some(idx) => (self.addrs[idx].clone(), self.clients[idx].clone()),
                None => {
                    let addr = HostPort::parse(&m.client_addr)
                        .map_err(|e| anyhow!("replica {}: {}: {e}", m.id, m.client_addr))?;
                    let client = out.channel(m.id, &addr)?;
                    (addr, client)
                }
            };
            out.ids.push(m.id);
            out.addrs.push(addr);
            out.clients.push(client);
        }
        out.down = out.avoidance();
        Ok(out)
    }

    /// The index of replica `id`, if this cluster has it.
    pub fn index_of(&self, id: u32) -> Option<usize> {
        self.ids.iter().position(|&i| i == id)
    }

    /// The id of replica `idx`.
    pub fn id(&self, idx: usize) -> u32 {
        self.ids[idx]
    }

    /// Notes that replica `idx` is unreachable or shutting down: round-robin requests skip it
    /// for a while.
    pub fn mark_down(&self, idx: usize) {
        self.down.failed(idx);
    }

    /// Notes that replica `idx` answered: round-robin traffic goes to it again at once.
    pub fn mark_up(&self, idx: usize) {
        self.down.succeeded(idx);
    }

    /// Whether round-robin may send a request to `idx` now: it is not marked down, or its mark
    /// ran out and this caller wins the single probe let through per `DOWN_FOR` (everyone else
    /// keeps skipping it until the probe's answer clears the mark, or its failure marks the
    /// replica down again; see [`Avoidance`]).
    pub fn try_use(&self, idx: usize) -> bool {
        self.down.usable(idx)
    }

    /// Number of replicas.
    pub fn n(&self) -> usize {
        self.clients.len()
    }

    /// The address of replica `idx`.
    pub fn addr(&self, idx: usize) -> &HostPort {
        &self.addrs[idx]
    }

    /// A client for replica `idx` (a cheap clone sharing the replica's channel).
    pub fn client(&self, idx: usize) -> KvClient<Channel> {
        self.clients[idx].clone()
    }

    /// Checks that `--replica` names a replica of this cluster (the config's, or the current
    /// members once synced) and returns its index.
    pub fn check_replica(&self, id: u32) -> Result<usize> {
        match self.index_of(id) {
            Some(idx) => Ok(idx),
            None => bail!(
                "--replica {id}: replica {id} is not a member of the cluster (the members are {})",
                self.ids
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }

    /// Asks replica `idx` for its status (which also opens the connection), within `timeout`.
    pub async fn probe(&self, idx: usize, timeout: Duration) -> Result<()> {
        let mut client = self.client(idx);
        let mut req = tonic::Request::new(StatusRequest {});
        req.set_timeout(timeout);
        match tokio::time::timeout(timeout, client.status(req)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(status)) if !is_local_timeout(&status) => {
                if status.code() == tonic::Code::Unavailable {
                    self.mark_down(idx);
                }
                bail!(
                    "replica {} at {}: {}",
                    self.id(idx),
                    self.addr(idx),
                    describe_status(&status)
                )
            }
            _ => bail!(
                "replica {} at {}: no answer within {} ms",
                self.id(idx),
                self.addr(idx),
                timeout.as_millis()
            ),
        }
    }
}

/// Chooses the replica of each request and of each retry, for one session.
#[derive(Debug, Clone)]
pub struct Picker {
    mode: TargetMode,
    n: usize,
    next: usize,
}

impl Picker {
    /// In single mode every request goes to `start`; in round-robin mode the first request goes
    /// to `start` and each following one to the next replica.
    pub fn new(mode: TargetMode, n: usize, start: usize) -> Picker {
        Picker {
            mode,
            n,
            next: start % n.max(1),
        }
    }

    /// The picker of a command: in single mode at `--replica ID` (which must be a member) or
    /// the first member; in round-robin mode from a random member, so that repeated one-shot
    /// commands spread out.
    pub fn choose(cluster: &Cluster, mode: TargetMode, replica: Option<u32>) -> Result<Picker> {
        let start = match (mode, replica) {
            (TargetMode::Single, Some(id)) => cluster.check_replica(id)?,
            (TargetMode::Single, None) => 0,
            (TargetMode::RoundRobin, Some(_)) => {
                bail!("--replica applies only to --target single")
            }
            (TargetMode::RoundRobin, None) => rand::random_range(0..cluster.n().max(1)),
        };
        Ok(Picker::new(mode, cluster.n(), start))
    }

    /// The replica for a new request. Round-robin skips replicas recently marked down (unless
    /// all are).
    pub fn first(&mut self, cluster: &Cluster) -> usize {
        match self.mode {
            TargetMode::Single => self.next,
            TargetMode::RoundRobin => {
                let r = self.up_from(self.next, cluster);
                self.next = (self.next + 1) % self.n;
                r
            }
        }
    }

    /// The replica for a retry of a request last sent to `prev`: the same one in single mode,
    /// the next one not marked down in round-robin mode.
    pub fn retry(&self, prev: usize, cluster: &Cluster) -> usize {
        match self.mode {
            TargetMode::Single => prev,
            TargetMode::RoundRobin => self.up_from((prev + 1) % self.n, cluster),
        }
    }

    /// The first replica from `start` on (cyclically) that may be used (see
    /// [`Cluster::try_use`]), or `start` if none may.
    fn up_from(&self, start: usize, cluster: &Cluster) -> usize {
        (0..self.n)
            .map(|i| (start + i) % self.n)
            .find(|&r| cluster.try_use(r))
            .unwrap_or(start)
    }
}

/// Whether a replica refused a request because it is not a member of the configuration it acts
/// in (removed: FAILED_PRECONDITION, naming the members; `runtime/service.rs` words it). Nothing
/// of the request entered the protocol there, so it may go to a member under the same id.
pub fn is_removed_refusal(status: &tonic::Status) -> bool {
    status.code() == tonic::Code::FailedPrecondition
        && status
            .message()
            .contains("is not a member of the cluster's configuration")
}

/// Whether tonic itself gave up waiting: its channel enforces the request's grpc-timeout and
/// then reports CANCELLED "Timeout expired", usually just before our own timer fires.
pub fn is_local_timeout(status: &tonic::Status) -> bool {
    if status.code() != tonic::Code::Cancelled {
        return false;
    }
    let mut source = status.source();
    while let Some(e) = source {
        if e.is::<tonic::TimeoutExpired>() {
            return true;
        }
        source = e.source();
    }
    status.message() == tonic::TimeoutExpired(()).to_string()
}

/// A gRPC status as one line: its code, its message and the causes tonic attaches (for example
/// "Unavailable: tcp connect error: Connection refused (os error 111)").
pub fn describe_status(status: &tonic::Status) -> String {
    let mut out = format!("{:?}", status.code());
    let mut seen = String::new();
    if !status.message().is_empty() {
        out.push_str(": ");
        out.push_str(status.message());
        seen.push_str(status.message());
    }
    let mut source = status.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !text.is_empty() && !seen.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
            seen.push_str(&text);
        }
        source = e.source();
    }
    if status.code() == tonic::Code::Unavailable && seen.contains("onnection refused") {
        out.push_str(" (is the replica running?)");
    } else if let Some(hint) = tls_hint(&seen) {
        out.push_str(" (");
        out.push_str(hint);
        out.push(')');
    }
    out
}

/// What a transport error that looks like a TLS mismatch probably means.
fn tls_hint(text: &str) -> Option<&'static str> {
    let t = text.to_ascii_lowercase();
    if t.contains("certificaterequired") || t.contains("certificate required") {
        Some(
            "the replica requires a client certificate: put client.pem and client.key in the \
              configuration's certificate directory",
        )
    } else if t.contains("invalid peer certificate") || t.contains("unknownissuer") {
        Some(
            "the replica's certificate is not signed by the configured CA, or does not name \
              the replica",
        )
    } else if t.contains("corrupt message") || t.contains("invalidcontenttype") {
        Some(
            "TLS against a plaintext replica? does it run with --insecure? then pass --insecure \
              too",
        )
    } else if t.contains("connection reset")
        || t.contains("frame with invalid size")
        || t.contains("broken pipe")
        || t.contains("connection closed")
        || t.contains("protocol error")
    {
        Some(TLS_HINT)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cluster() -> Cluster {
        let text = r#"{"replicas": [
            {"id": 0, "addr": "127.0.0.1:1", "peer_addr": "127.0.0.1:7", "metrics_addr": "127.0.0.1:2"},
            {"id": 1, "addr": "127.0.0.1:3", "peer_addr": "127.0.0.1:8", "metrics_addr": "127.0.0.1:4"},
            {"id": 2, "addr": "127.0.0.1:5", "peer_addr": "127.0.0.1:9", "metrics_addr": "127.0.0.1:6"}]}"#;
        let config = Config::parse(text).expect("valid config");
        Cluster::new(&config, Duration::from_secs(1), true).expect("cluster")
    }

    #[tokio::test]
    async fn picker_single_stays() {
        let c = cluster();
        c.mark_down(2);
        let mut p = Picker::new(TargetMode::Single, 3, 2);
        assert_eq!([p.first(&c), p.first(&c), p.retry(2, &c)], [2, 2, 2]);
    }

    #[tokio::test]
    async fn picker_round_robin_rotates_and_skips_down_replicas() {
        let c = cluster();
        let mut p = Picker::new(TargetMode::RoundRobin, 3, 1);
        let got: Vec<usize> = (0..4).map(|_| p.first(&c)).collect();
        assert_eq!(got, [1, 2, 0, 1]);
        assert_eq!(p.retry(2, &c), 0);
        c.mark_down(0);
        assert_eq!(p.retry(2, &c), 1);
        let got: Vec<usize> = (0..3).map(|_| p.first(&c)).collect();
        assert_eq!(got, [2, 1, 1]);
        c.mark_down(1);
        c.mark_down(2);
        assert_eq!(p.first(&c), 2, "all down: plain rotation");
    }
}
