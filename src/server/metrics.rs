//! The replica's Prometheus metrics: names, descriptions, and cached handles for the hot path.

use metrics::{counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use metrics::{Counter, Gauge, Histogram, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};

use crate::core::message::Message;
use crate::core::replica::Path;
use crate::server::config::REPLICAS_MAX;

/// Message types, in the order of [`kind_index`].
pub const KINDS: [&str; 19] = [
    "PreAccept",
    "PreAcceptOk",
    "Accept",
    "AcceptOk",
    "Commit",
    "Nack",
    "CommitRequest",
    "Watermark",
    "Recover",
    "RecoverOk",
    "Validate",
    "ValidateOk",
    "Waiting",
    "BoundaryPrepare",
    "BoundaryPromise",
    "BoundaryNack",
    "BoundaryAccept",
    "BoundaryAccepted",
    "BoundaryDecided",
];

/// Peer ids as label values (labels must be `'static` to stay allocation-free).
const PEERS: [&str; REPLICAS_MAX] = [
    "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14",
];

/// The position of a message's type in [`KINDS`].
pub fn kind_index(m: &Message) -> usize {
    match m {
        Message::PreAccept { .. } => 0,
        Message::PreAcceptOk { .. } => 1,
        Message::Accept { .. } => 2,
        Message::AcceptOk { .. } => 3,
        Message::Commit { .. } => 4,
        Message::Nack { .. } => 5,
        Message::CommitRequest { .. } => 6,
        Message::Watermark { .. } => 7,
        Message::Recover { .. } => 8,
        Message::RecoverOk { .. } => 9,
        Message::Validate { .. } => 10,
        Message::ValidateOk { .. } => 11,
        Message::Waiting { .. } => 12,
        Message::BoundaryPrepare { .. } => 13,
        Message::BoundaryPromise { .. } => 14,
        Message::BoundaryNack { .. } => 15,
        Message::BoundaryAccept { .. } => 16,
        Message::BoundaryAccepted { .. } => 17,
        Message::BoundaryDecided { .. } => 18,
    }
}

/// Installs the process-wide recorder and returns the handle that renders it (served by
/// `server::http`). Call once per process, inside a tokio runtime: it starts the upkeep task
/// that keeps histograms' buckets drained.
pub fn install() -> Result<PrometheusHandle, metrics_exporter_prometheus::BuildError> {
    // Seconds; covers loopback round trips (tens of microseconds) to stalled instances.
    const LATENCY_BUCKETS: [f64; 16] = [
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
        5.0, 10.0,
    ];
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Suffix("_seconds".into()),
            &LATENCY_BUCKETS,
        )?
        .set_buckets_for_metric(
            metrics_exporter_prometheus::Matcher::Full("epaxos_batch_size".into()),
            &[
                1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0,
            ],
        )?
        .install_recorder()?;
    let upkeep = handle.clone();
    tokio::spawn(async move {
        let mut every = tokio::time::interval(UPKEEP_EVERY);
        loop {
            every.tick().await;
            upkeep.run_upkeep();
        }
    });
    describe();
    Ok(handle)
}

/// How often the recorder's histograms are drained into their buckets (as the exporter's own
/// listener does).
const UPKEEP_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

fn describe() {
    describe_gauge!(
        "epaxos_build_info",
        "Always 1; the labels say which build runs (version, git commit)."
    );
    describe_gauge!(
        "epaxos_serving",
        "1 while this replica can serve (joined, caught up, a majority heard from within the \
         suspicion timeout); 0 otherwise, with the reason at /health."
    );
    describe_gauge!(
        "epaxos_durable",
        "1 with --sync fsync (every acknowledged change is synced), 0 with --sync none."
    );
    describe_histogram!(
        "epaxos_fsync_seconds",
        Unit::Seconds,
        "Group commits: one log write and sync by the log writer thread, covering every \
         event-loop iteration's records queued when it started (count: syncs)."
    );
    describe_counter!(
        "epaxos_persisted_records_total",
        "Instance records appended to the log."
    );
    describe_counter!(
        "epaxos_checkpoints_total",
        "Checkpoints written (the log cut to what is still in memory)."
    );
    describe_histogram!(
        "epaxos_checkpoint_seconds",
        Unit::Seconds,
        "Time to write a checkpoint and the new log, from start to rename."
    );
    describe_gauge!(
        "epaxos_log_bytes",
        Unit::Bytes,
        "Size of the instance log now (it grows until the next checkpoint cuts it)."
    );
    describe_counter!(
        "epaxos_connections_refused_total",
        "Connections closed at once because the listener held its maximum, by listener."
    );
    describe_counter!(
        "epaxos_sessions_expired_total",
        "Client sessions removed by replicated expiries executed here (idle past the TTL)."
    );
    describe_counter!(
        "epaxos_session_expired_refusals_total",
        "Requests refused because their session had expired (late retries; outcome unknown)."
    );
    describe_gauge!(
        "epaxos_sessions",
        "Client sessions in the exactly-once table."
    );
    describe_gauge!(
        "epaxos_session_table_bytes",
        "Estimated bytes held by the exactly-once session table and its index."
    );
    describe_counter!(
        "epaxos_membership_calls_refused_total",
        "Join and Snapshot calls refused by their admission bound (RESOURCE_EXHAUSTED), by call."
    );
    describe_counter!(
        "epaxos_client_requests_total",
        "Client calls answered, by method (Propose, Status) and gRPC code (OK, UNAVAILABLE, ...)."
    );
    describe_histogram!(
        "epaxos_peer_rtt_seconds",
        Unit::Seconds,
        "Protocol round trip to a peer: a PreAccept or Accept sent until its answer arrived \
         (queueing and the peer's sync included), by peer."
    );
    describe_gauge!(
        "epaxos_peer_last_heard_seconds",
        Unit::Seconds,
        "Seconds since anything was heard from a peer (since start if never), by peer."
    );
    for (name, what) in HIGH_WATER_NAMES {
        describe_gauge!(
            name,
            format!("Highest {what} seen by the event loop since the previous scrape.")
        );
    }
    describe_counter!(
        "epaxos_messages_sent_total",
        "Protocol messages sent, by type and peer."
    );
    describe_counter!(
        "epaxos_messages_received_total",
        "Protocol messages received, by type and peer."
    );
    describe_counter!(
        "epaxos_proposals_total",
        "Client proposals accepted into the queue."
    );
    describe_counter!(
        "epaxos_proposals_rejected_total",
        "Client proposals refused (invalid or overloaded), by reason."
    );
    describe_counter!("epaxos_batches_total", "Instances started by this replica.");
    describe_counter!(
        "epaxos_recoveries_started_total",
        "Recovery attempts (explicit prepare) started here, each retry counted."
    );
    describe_counter!(
        "epaxos_recovered_total",
        "Instances decided by a recovery run here, by outcome (command or nop)."
    );
    describe_histogram!("epaxos_batch_size", "Commands per instance started here.");
    describe_counter!(
        "epaxos_commits_total",
        "Instances led here and committed, by path (fast or slow)."
    );
    describe_counter!(
        "epaxos_committed_instances_total",
        "Instances committed, all rows."
    );
    describe_counter!("epaxos_executed_instances_total", "Instances executed.");
    describe_counter!(
        "epaxos_executed_commands_total",
        "Commands executed (duplicates included)."
    );
    describe_gauge!(
        "epaxos_waiting_instances",
        "Committed instances waiting for their dependencies to execute."
    );
    describe_gauge!("epaxos_big_channel_depth", "Events queued in bigChannel.");
    describe_gauge!(
        "epaxos_pending_proposals",
        "Proposals waiting for an instance."
    );
    describe_gauge!(
        "epaxos_inflight_instances",
        "Instances led here, not yet committed."
    );
    describe_histogram!(
        "epaxos_commit_latency_seconds",
        Unit::Seconds,
        "From PreAccept to commit, instances led here, by path (fast or slow)."
    );
    describe_histogram!(
        "epaxos_execution_latency_seconds",
        Unit::Seconds,
        "From a proposal's arrival to its reply (after execution)."
    );
    describe_counter!(
        "epaxos_peer_queue_dropped_total",
        "Messages dropped because a peer's queue was full (resent by the protocol)."
    );
    describe_counter!(
        "epaxos_wire_errors_total",
        "Peer messages that failed to decode, by peer."
    );
    describe_gauge!(
        "epaxos_peer_connected",
        "1 while the outbound stream to a peer is open."
    );
    describe_gauge!(
        "epaxos_peer_suspected",
        "1 while nothing was heard from a peer for the suspicion timeout (heartbeat: Watermark)."
    );
    describe_gauge!(
        "epaxos_joining",
        "1 while this replica (new data directory) waits to join its cluster."
    );
    describe_gauge!(
        "epaxos_abstaining",
        "1 while a rejoined replica has not learnt every row committed up to its horizons (it \
         counts against the tolerated failures until then)."
    );
    describe_gauge!(
        "epaxos_catching_up",
        "1 while this replica, left behind by its peers' garbage collection (they collected \
         instances it had not executed), fetches and installs a peer's snapshot."
    );
    describe_counter!(
        "epaxos_catch_ups_total",
        "Snapshots installed after peers collected instances this replica had not executed."
    );
    describe_gauge!(
        "epaxos_instances_in_memory",
        "Instances held in memory (garbage collection drops those executed everywhere, or at a \
         majority beyond the retention)."
    );
    describe_counter!(
        "epaxos_rejoins_total",
        "Times this replica rejoined from a peer's snapshot after losing its data."
    );
    describe_counter!(
        "epaxos_peer_rejoined_total",
        "Peers that rejoined with a new data directory (their old incarnation is refused)."
    );
    describe_counter!(
        "epaxos_snapshots_sent_total",
        "Snapshots sent to joining peers."
    );
    describe_counter!(
        "epaxos_request_bytes_refused_total",
        "Client requests refused (RESOURCE_EXHAUSTED) because the request bytes held at once \
         would exceed --request-bytes-max."
    );
    describe_counter!(
        "epaxos_peer_rejected_total",
        "Peer messages refused because they name a replica, instance, ballot or dependency that \
         cannot exist, by peer and reason (nothing else came of them)."
    );
    describe_counter!(
        "epaxos_peer_refused_total",
        "Peer streams refused because they came from a replaced incarnation."
    );
    describe_gauge!(
        "epaxos_storage_blocked",
        "1 while the data directory is full or read-only: nothing that needs a write is \
         acknowledged until a retry (every second) succeeds."
    );
    describe_counter!(
        "epaxos_peer_identity_refused_total",
        "Peer calls refused because the caller's certificate names no replica, or another \
         replica than the call claims (PERMISSION_DENIED)."
    );
    describe_gauge!(
        "epaxos_epoch",
        "The epoch of the configuration this replica acts in (0: config.json's replicas; each \
         membership change makes the next)."
    );
    describe_gauge!(
        "epaxos_members",
        "Members of the configuration this replica acts in."
    );
    describe_counter!(
        "epaxos_admin_refused_total",
        "Admin calls (MemberAdd, MemberRemove) refused with PERMISSION_DENIED: the caller \
         presented no client certificate of the cluster CA naming client.<cluster_name>."
    );
    describe_gauge!(
        "epaxos_insecure",
        "1 with --insecure (plaintext, nobody authenticated), 0 with TLS."
    );
    describe_gauge!(
        "epaxos_tls_cert_expiry_seconds",
        Unit::Seconds,
        "Seconds until this replica's certificate (cert=\"replica\") and the cluster CA \
         (cert=\"ca\") expire."
    );
    describe_counter!(
        "epaxos_peer_contradictions_total",
        "Peer messages refused, never applied, because no correct peer could send them or they \
         contradict what this replica knows (kind: ballot_overflow, commit_differs, commit_unproposed, \
         watermark_beyond, not_member, unknown_epoch). A correct cluster never counts one."
    );
}

/// The configuration this replica acts in: `epaxos_epoch` and `epaxos_members`.
pub fn configuration(members: &crate::server::members::Members) {
    gauge!("epaxos_epoch").set(members.epoch() as f64);
    gauge!("epaxos_members").set(members.members().len() as f64);
}

/// Counts (and reports) a peer message the core refused (see `replica::Refused`).
pub fn contradiction(r: crate::core::replica::Refused) {
    counter!("epaxos_peer_contradictions_total", "peer" => peer_label(r.peer.0),
        "kind" => r.kind.label())
    .increment(1);
    tracing::warn!(peer = %r.peer, kind = r.kind.label(),
        "refused a peer message that no correct peer sends or that contradicts what this \
         replica knows; not applied");
}

/// What the event loop's high-water marks are named and measure, in [`HighWater`]'s order.
const HIGH_WATER_NAMES: [(&str, &str); 4] = [
    (
        "epaxos_big_channel_depth_max",
        "number of events queued in bigChannel",
    ),
    (
        "epaxos_pending_proposals_max",
        "number of proposals waiting for an instance",
    ),
    (
        "epaxos_inflight_instances_max",
        "number of instances led here not yet committed",
    ),
    (
        "epaxos_waiting_instances_max",
        "number of committed instances waiting for their dependencies",
    ),
];

/// Queue depths as high-water marks: the event loop raises them every iteration, a scrape
/// reads and resets them. (A point sample of a queue that drains in microseconds reads 0.)
pub struct HighWater([AtomicU64; 4]);

/// The process's high-water marks (one event loop per process).
pub static HIGH_WATER: HighWater = HighWater([const { AtomicU64::new(0) }; 4]);

impl HighWater {
    /// Raises the marks to the depths now: bigChannel, pending, in flight, waiting.
    pub fn observe(&self, depths: [u64; 4]) {
        for (mark, d) in self.0.iter().zip(depths) {
            mark.fetch_max(d, Ordering::Relaxed);
        }
    }

    /// Exports the marks and starts the next interval (called before rendering a scrape).
    pub fn export(&self) {
        for (mark, (name, _)) in self.0.iter().zip(HIGH_WATER_NAMES) {
            gauge!(name).set(mark.swap(0, Ordering::Relaxed) as f64);
        }
    }
}

/// The per-peer series [`register_peer`] creates.
const REJECTS: [crate::core::replica::Reject; 7] = {
    use crate::core::replica::Reject;
    [
        Reject::Sender,
        Reject::UnknownReplica,
        Reject::ImplausibleSlot,
        Reject::UnknownOwnInstance,
        Reject::SelfDependency,
        Reject::Ballot,
        Reject::ImplausibleCount,
    ]
};
const CONTRADICTIONS: [crate::core::replica::Contradiction; 6] = {
    use crate::core::replica::Contradiction;
    [
        Contradiction::BallotOverflow,
        Contradiction::CommitDiffers,
        Contradiction::CommitUnproposed,
        Contradiction::WatermarkBeyond,
        Contradiction::NotMember,
        Contradiction::UnknownEpoch,
    ]
};

/// Creates every labelled series a dashboard or alert may ask for at 0, so that it exists
/// from the start rather than from its first event. Per-peer series come with each peer's
/// link (see [`register_peer`]).
pub fn register_all() {
    gauge!("epaxos_build_info", "version" => env!("CARGO_PKG_VERSION"),
        "commit" => crate::GIT_COMMIT)
    .set(1.0);
    for name in [
        "epaxos_rejoins_total",
        "epaxos_catch_ups_total",
        "epaxos_snapshots_sent_total",
        "epaxos_peer_identity_refused_total",
        "epaxos_admin_refused_total",
        "epaxos_checkpoints_total",
        "epaxos_persisted_records_total",
    ] {
        counter!(name).absolute(0);
    }
    for g in [
        "epaxos_storage_blocked",
        "epaxos_joining",
        "epaxos_abstaining",
        "epaxos_catching_up",
        "epaxos_instances_in_memory",
        "epaxos_log_bytes",
    ] {
        gauge!(g).increment(0.0);
    }
    for call in ["join", "snapshot"] {
        counter!("epaxos_membership_calls_refused_total", "call" => call).absolute(0);
    }
    counter!("epaxos_sessions_expired_total").absolute(0);
    counter!("epaxos_session_expired_refusals_total").absolute(0);
    gauge!("epaxos_sessions").set(0.0);
    gauge!("epaxos_session_table_bytes").set(0.0);
    // The client listener is the one capped (`--client-connections-max`).
    counter!("epaxos_connections_refused_total", "listener" => "client").absolute(0);
    for method in ["Propose", "Status", "MemberAdd", "MemberRemove"] {
        for code in CLIENT_CODES {
            counter!("epaxos_client_requests_total", "method" => method, "code" => code_label(code))
                .absolute(0);
        }
    }
    HIGH_WATER.export();
}

/// Creates peer `p`'s series at 0: when a link to it starts (it is a member of the
/// configuration this replica acts in).
pub fn register_peer(p: u32) {
    let peer = peer_label(p);
    for name in [
        "epaxos_wire_errors_total",
        "epaxos_peer_refused_total",
        "epaxos_peer_rejoined_total",
    ] {
        counter!(name, "peer" => peer).absolute(0);
    }
    gauge!("epaxos_peer_connected", "peer" => peer).increment(0.0);
    for r in REJECTS {
        counter!("epaxos_peer_rejected_total", "peer" => peer, "reason" => r.label()).absolute(0);
    }
    for k in CONTRADICTIONS {
        counter!("epaxos_peer_contradictions_total", "peer" => peer, "kind" => k.label())
            .absolute(0);
    }
}

/// The gRPC codes a client call is answered with, pre-registered at 0.
const CLIENT_CODES: [tonic::Code; 7] = [
    tonic::Code::Ok,
    tonic::Code::InvalidArgument,
    tonic::Code::FailedPrecondition,
    tonic::Code::ResourceExhausted,
    tonic::Code::Unavailable,
    tonic::Code::DeadlineExceeded,
    tonic::Code::Internal,
];

/// The gRPC code's canonical name, as a label value.
pub fn code_label(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Counts a client call's outcome (`epaxos_client_requests_total{method,code}`).
pub fn client_request<T>(method: &'static str, result: &Result<T, tonic::Status>) {
    // The common case, a Propose answered OK, keeps its handle: looking a labelled counter up
    // in the registry costs ~1.35k instructions, 2% of a command's (callgrind, issue 14).
    static PROPOSE_OK: OnceLock<Counter> = OnceLock::new();
    let code = match result {
        Ok(_) if method == "Propose" => {
            PROPOSE_OK
                .get_or_init(|| {
                    counter!("epaxos_client_requests_total", "method" => "Propose",
                        "code" => code_label(tonic::Code::Ok))
                })
                .increment(1);
            return;
        }
        Ok(_) => tonic::Code::Ok,
        Err(s) => s.code(),
    };
    counter!("epaxos_client_requests_total", "method" => method, "code" => code_label(code))
        .increment(1);
}

/// The standard process metrics (`process_*`, as Prometheus client libraries export them),
/// read from `/proc` at each scrape and rendered as exposition text (a float counter for CPU
/// seconds, which the `metrics` crate's integer counters cannot hold). Empty where `/proc`
/// is missing.
pub fn process_text(started_unix_seconds: f64) -> String {
    // USER_HZ: /proc reports times in 1/100 s on every Linux architecture (a fixed ABI).
    const TICKS_PER_SECOND: f64 = 100.0;
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
        out.push_str(&format!(
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"
        ));
    };
    // Fields after the parenthesised command name (which may hold spaces): state is the 3rd
    // field of the line, utime the 14th and stime the 15th.
    let cpu = std::fs::read_to_string("/proc/self/stat")
        .ok()
        .and_then(|s| {
            let rest = s.rsplit_once(')')?.1;
            let f: Vec<&str> = rest.split_whitespace().collect();
            let utime: f64 = f.get(11)?.parse().ok()?;
            let stime: f64 = f.get(12)?.parse().ok()?;
            Some((utime + stime) / TICKS_PER_SECOND)
        });
    if let Some(cpu) = cpu {
        metric(
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            cpu,
        );
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = |field: &str| -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(field))?;
        let v: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(v * 1024.0)
    };
    if let Some(rss) = kib("VmRSS:") {
        metric(
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            rss,
        );
    }
    if let Some(vm) = kib("VmSize:") {
        metric(
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            vm,
        );
    }
    if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
        metric(
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            dir.count() as f64,
        );
    }
    let max_fds = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            let line = l.lines().find(|l| l.starts_with("Max open files"))?;
            line.split_whitespace().nth(3)?.parse::<f64>().ok()
        });
    if let Some(max) = max_fds {
        metric(
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            max,
        );
    }
    metric(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        started_unix_seconds,
    );
    out
}

/// Label value for a peer id.
pub fn peer_label(id: u32) -> &'static str {
    PEERS.get(id as usize).copied().unwrap_or("other")
}

/// Handles the event loop updates for every batch of work: looked up once, not per message.
pub struct LoopMetrics {
    sent: Vec<[Counter; KINDS.len()]>,
    received: Vec<[Counter; KINDS.len()]>,
    pub dropped: Vec<Counter>,
    /// Per peer: 1 while suspected (nothing heard for `suspect_after`), else 0.
    pub suspected: Vec<Gauge>,
    /// Per peer: seconds since anything was heard from it.
    pub last_heard: Vec<Gauge>,
    /// Per peer: PreAccept / Accept round trips.
    pub rtt: Vec<Histogram>,
    pub proposals: Counter,
    pub rejected_overloaded: Counter,
    pub batches: Counter,
    pub batch_size: Histogram,
    pub fast: Counter,
    pub slow: Counter,
    pub recoveries_started: Counter,
    pub recovered_command: Counter,
    pub recovered_nop: Counter,
    pub committed: Counter,
    pub executed_instances: Counter,
    pub executed_commands: Counter,
    pub waiting: Gauge,
    pub big_channel: Gauge,
    pub pending: Gauge,
    pub inflight: Gauge,
    pub commit_latency_fast: Histogram,
    pub commit_latency_slow: Histogram,
    pub execution_latency: Histogram,
    pub sessions_expired: Counter,
    pub session_expired_refusals: Counter,
}

impl LoopMetrics {
    pub fn new(n: usize) -> Self {
        let per_peer = |name: &'static str| -> Vec<[Counter; KINDS.len()]> {
            (0..n as u32)
                .map(|p| KINDS.map(|k| counter!(name, "type" => k, "peer" => peer_label(p))))
                .collect()
        };
        LoopMetrics {
            sent: per_peer("epaxos_messages_sent_total"),
            received: per_peer("epaxos_messages_received_total"),
            dropped: (0..n as u32)
                .map(|p| counter!("epaxos_peer_queue_dropped_total", "peer" => peer_label(p)))
                .collect(),
            suspected: (0..n as u32)
                .map(|p| gauge!("epaxos_peer_suspected", "peer" => peer_label(p)))
                .collect(),
            last_heard: (0..n as u32)
                .map(|p| gauge!("epaxos_peer_last_heard_seconds", "peer" => peer_label(p)))
                .collect(),
            rtt: (0..n as u32)
                .map(|p| histogram!("epaxos_peer_rtt_seconds", "peer" => peer_label(p)))
                .collect(),
            proposals: counter!("epaxos_proposals_total"),
            rejected_overloaded: counter!("epaxos_proposals_rejected_total", "reason" => "overloaded"),
            batches: counter!("epaxos_batches_total"),
            batch_size: histogram!("epaxos_batch_size"),
            fast: counter!("epaxos_commits_total", "path" => "fast"),
            slow: counter!("epaxos_commits_total", "path" => "slow"),
            recoveries_started: counter!("epaxos_recoveries_started_total"),
            recovered_command: counter!("epaxos_recovered_total", "outcome" => "command"),
            recovered_nop: counter!("epaxos_recovered_total", "outcome" => "nop"),
            committed: counter!("epaxos_committed_instances_total"),
            executed_instances: counter!("epaxos_executed_instances_total"),
            executed_commands: counter!("epaxos_executed_commands_total"),
            waiting: gauge!("epaxos_waiting_instances"),
            big_channel: gauge!("epaxos_big_channel_depth"),
            pending: gauge!("epaxos_pending_proposals"),
            inflight: gauge!("epaxos_inflight_instances"),
            commit_latency_fast: histogram!("epaxos_commit_latency_seconds", "path" => "fast"),
            commit_latency_slow: histogram!("epaxos_commit_latency_seconds", "path" => "slow"),
            execution_latency: histogram!("epaxos_execution_latency_seconds"),
            sessions_expired: counter!("epaxos_sessions_expired_total"),
            session_expired_refusals: counter!("epaxos_session_expired_refusals_total"),
        }
    }

    /// Adds the per-peer handles of ids up to `rows` (a configuration added them).
    pub fn grow(&mut self, rows: usize) {
        for p in self.sent.len() as u32..rows as u32 {
            let peer = peer_label(p);
            self.sent.push(
                KINDS.map(|k| counter!("epaxos_messages_sent_total", "type" => k, "peer" => peer)),
            );
            self.received.push(
                KINDS.map(
                    |k| counter!("epaxos_messages_received_total", "type" => k, "peer" => peer),
                ),
            );
            self.dropped
                .push(counter!("epaxos_peer_queue_dropped_total", "peer" => peer));
            self.suspected
                .push(gauge!("epaxos_peer_suspected", "peer" => peer));
            self.last_heard
                .push(gauge!("epaxos_peer_last_heard_seconds", "peer" => peer));
            self.rtt
                .push(histogram!("epaxos_peer_rtt_seconds", "peer" => peer));
        }
    }

    pub fn sent(&self, peer: u32, m: &Message) {
        if let Some(c) = self.sent.get(peer as usize) {
            c[kind_index(m)].increment(1);
        }
    }

    pub fn received(&self, peer: u32, m: &Message) {
        if let Some(c) = self.received.get(peer as usize) {
            c[kind_index(m)].increment(1);
        }
    }

    /// An instance decided by this replica, as leader or recoverer (`commands` 0: a no-op).
    pub fn commit(&self, path: Path, commands: usize) {
        match path {
            Path::Fast => self.fast.increment(1),
            Path::Slow => self.slow.increment(1),
            Path::Recovered if commands == 0 => self.recovered_nop.increment(1),
            Path::Recovered => self.recovered_command.increment(1),
        }
    }
}
