//! The runtime: the thin async shell around the protocol core.
//!
//! - gRPC handlers decode and validate, then push one [`Event`] into `bigChannel` (bounded).
//! - One event loop task owns the [`Replica`] and nothing else touches it: it takes an event,
//!   drains whatever else is already queued (up to [`DRAIN_MAX`]), stamps `now`, feeds the core,
//!   calls `flush` (which is what batches the drained proposals into one instance) and then
//!   carries out the core's [`Ready`] in order: encode each message once and hand the bytes to
//!   each addressee's bounded queue, answer clients, update metrics.
//! - One link task per peer (see `transport`) writes that peer's queue onto its stream.
//!
//! No locks guard protocol state: it lives on one task.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::core::command::{Command, OpResult};
use crate::core::ids::{ClientId, Incarnation, InstanceId, ReplicaId, RequestId};
use crate::core::instance::Instance;
use crate::core::membership::{JoinAnswer, Membership};
use crate::core::message::{Message, Show, ShowDeps};
use crate::core::node::{self, Node, Refusal, Restored};
use crate::core::replica::{Options, Path, Ready, ReplyError, Token};
use crate::core::wire;
use crate::proto::kv_server::{Kv, KvServer};
use crate::proto::peer_server::{Peer, PeerServer};
use crate::proto::{self, DispatchAck, PeerBatch, ProposeReply, ProposeRequest};
use crate::server::config::{Config, HostPort};
use crate::server::health::{self, Health};
use crate::server::metrics::LoopMetrics;
use crate::server::queue::{byte_queue, ByteSender};
use crate::server::storage::{self, Log, StorageError, Sync};
use crate::server::{admission, incoming, join, tls, transport};

/// How long a stopping replica waits for in-flight calls.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

use crate::core::limits::{self, DRAIN_MAX};
/// How often a write the data directory refused for lack of space (or a read-only remount) is
/// tried again; see [`until_written`].
const STORAGE_RETRY: Duration = Duration::from_secs(1);

/// Tunables of the shell.
#[derive(Debug, Clone)]
pub struct RuntimeOptions {
    pub core: Options,
    /// How often the core's timers are checked.
    pub tick: Duration,
    /// How long a client's Propose may wait for its command to execute.
    pub propose_timeout: Duration,
    /// Capacity of bigChannel, in events.
    pub big_channel_max: usize,
    /// bigChannel's capacity in bytes (client commands and peer message batches).
    pub big_channel_bytes_max: usize,
    /// Capacity of each peer's outbound queue, in messages.
    pub peer_queue_max: usize,
    /// Capacity of each peer's outbound queue, in bytes.
    pub peer_queue_bytes_max: usize,
    /// Most bytes of client request bodies held at once (all client connections).
    pub request_bytes_max: usize,
    /// Most client connections held at once.
    pub client_connections_max: usize,
    /// Where the durable log lives.
    pub data_dir: std::path::PathBuf,
    /// Whether the log is synced before messages that depend on it leave.
    pub sync: Sync,
    /// Checkpoint (and cut the log) each time this many more instances were dropped from
    /// memory (executed here, committed everywhere).
    pub checkpoint_every: u64,
    /// Plaintext listeners and peer links, no authentication (`--insecure`).
    pub insecure: bool,
}

/// Invalid [`RuntimeOptions`].
#[derive(Debug, thiserror::Error)]
pub enum RuntimeOptionsError {
    #[error(transparent)]
    Core(#[from] crate::core::replica::OptionsError),
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    #[error("the tick and the propose timeout must be positive")]
    Timers,
    #[error("the drain limit ({DRAIN_MAX}) exceeds bigChannel's capacity ({0})")]
    BigChannel(usize),
    #[error("{name} is {value} bytes; it must be between {min} (the largest {what}) and {max}")]
    Bytes {
        name: &'static str,
        value: usize,
        min: usize,
        max: usize,
        what: &'static str,
    },
}

impl RuntimeOptions {
    /// Checks the shell's options and the core's, and the relations between them.
    pub fn validate(&self) -> Result<(), RuntimeOptionsError> {
        self.core.validate()?;
        for (name, v) in [
            ("checkpoint_every", self.checkpoint_every as usize),
            ("big_channel_max", self.big_channel_max),
            ("peer_queue_max", self.peer_queue_max),
            ("client_connections_max", self.client_connections_max),
        ] {
            if v == 0 {
                return Err(RuntimeOptionsError::Zero(name));
            }
        }
        if self.tick.is_zero() || self.propose_timeout.is_zero() {
            return Err(RuntimeOptionsError::Timers);
        }
        if self.big_channel_max < DRAIN_MAX {
            return Err(RuntimeOptionsError::BigChannel(self.big_channel_max));
        }
        // Each byte budget admits at least one item of the largest size (or nothing of that
        // size would ever pass), and the semaphores count in u32.
        let u32_max = u32::MAX as usize;
        for (name, value, min, what) in [
            (
                "big_channel_bytes_max",
                self.big_channel_bytes_max,
                limits::COMMAND_BYTES_MAX,
                "command",
            ),
            (
                "pending_bytes_max",
                self.core.pending_bytes_max,
                limits::COMMAND_BYTES_MAX,
                "command",
            ),
            (
                "request_bytes_max",
                self.request_bytes_max,
                limits::CLIENT_GRPC_MESSAGE_BYTES_MAX,
                "client request",
            ),
            (
                "peer_queue_bytes_max",
                self.peer_queue_bytes_max,
                limits::MESSAGE_BYTES_MAX,
                "peer message",
            ),
        ] {
            if value < min || value > u32_max {
                return Err(RuntimeOptionsError::Bytes {
                    name,
                    value,
                    min,
                    max: u32_max,
                    what,
                });
            }
        }
        Ok(())
    }

    pub fn new(core: Options) -> Self {
        RuntimeOptions {
            core,
            tick: limits::TICK,
            propose_timeout: limits::PROPOSE_TIMEOUT,
            big_channel_max: limits::BIG_CHANNEL_MAX,
            big_channel_bytes_max: limits::BIG_CHANNEL_BYTES_MAX,
            peer_queue_max: limits::PEER_QUEUE_MAX,
            peer_queue_bytes_max: limits::PEER_QUEUE_BYTES_MAX,
            request_bytes_max: limits::CLIENT_REQUEST_BYTES_MAX,
            client_connections_max: limits::CLIENT_CONNECTIONS_MAX,
            data_dir: std::path::PathBuf::from("data"),
            sync: Sync::Fsync,
            checkpoint_every: limits::CHECKPOINT_EVERY,
            insecure: false,
        }
    }
}

/// Why the replica could not run.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The data directory was written by a cluster of another size than the config's.
    #[error(
        "{dir}: this data directory belongs to a cluster of {recorded} replicas, but the \
         configuration lists {configured}; the cluster size cannot change on existing data \
         (use the old configuration, or start every replica on an empty data directory)"
    )]
    ClusterSize {
        dir: String,
        recorded: usize,
        configured: usize,
    },
    /// The metrics endpoint could not start (address in use?).
    #[error("cannot start metrics endpoint on {0}: {1}")]
    Metrics(SocketAddr, String),
    /// The gRPC server's address could not be bound (in use?).
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    /// A listen address (a host name) could not be resolved, or bound at none of its
    /// addresses.
    #[error("cannot listen on {0}: {1}")]
    Listen(String, String),
    /// The gRPC server failed.
    #[error("gRPC server on {0}: {1}")]
    Server(SocketAddr, tonic::transport::Error),
    /// The reflection service could not be built.
    #[error("reflection: {0}")]
    Reflection(String),
    /// Certificates missing or unusable.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// tonic refused the TLS settings.
    #[error("TLS settings of the {0} listener: {1}")]
    TlsConfig(&'static str, tonic::transport::Error),
    /// Invalid options.
    #[error(transparent)]
    Options(#[from] RuntimeOptionsError),
    /// The durable log could not be opened or written.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The thread writing a checkpoint failed.
    #[error("checkpoint writer failed: {0}")]
    CheckpointTask(String),
}

/// What the handlers put into bigChannel.
pub enum Event {
    /// A client's command and where its answer goes.
    Propose {
        cmd: Command,
        reply: oneshot::Sender<Result<OpResult, Status>>,
        at: Instant,
        /// Its share of bigChannel's byte budget, returned once the event is handled.
        budget: OwnedSemaphorePermit,
    },
    /// Messages from one peer (sent by its incarnation `incarnation`), decoded and validated.
    Peer {
        from: ReplicaId,
        incarnation: Incarnation,
        messages: Vec<Message>,
        /// Its share of bigChannel's byte budget, returned once the event is handled.
        budget: OwnedSemaphorePermit,
    },
    /// A status query.
    Status {
        reply: oneshot::Sender<proto::StatusReply>,
    },
    /// A peer with a new data directory announces itself (see `join`).
    Join {
        from: ReplicaId,
        incarnation: Option<Incarnation>,
        reply: oneshot::Sender<Result<proto::JoinReply, Status>>,
    },
    /// A joining peer asks for a snapshot: the encoded `proto::Snapshot`.
    Snapshot {
        from: ReplicaId,
        incarnation: Option<Incarnation>,
        reply: oneshot::Sender<Result<Vec<u8>, Status>>,
    },
    /// This replica's own join is decided.
    Joined(Box<join::Joined>),
    /// The snapshot this replica, left behind by its peers' collection, fetched.
    CaughtUp(Box<join::Snapshot>),
}

/// Where a listen address binds now: itself if an IP literal, else the first address its name
/// resolves to (`listen_addr`), or each in turn until one binds (`bind`).
async fn listen_addr(addr: &HostPort) -> Result<SocketAddr, RuntimeError> {
    let found = transport::resolve(addr)
        .await
        .map_err(|e| RuntimeError::Listen(addr.to_string(), e.to_string()))?;
    Ok(found[0])
}

async fn bind(
    addr: &HostPort,
) -> Result<(tonic::transport::server::TcpIncoming, SocketAddr), RuntimeError> {
    let found = transport::resolve(addr)
        .await
        .map_err(|e| RuntimeError::Listen(addr.to_string(), e.to_string()))?;
    let mut errors = Vec::new();
    for sa in &found {
        match tonic::transport::server::TcpIncoming::bind(*sa) {
            Ok(incoming) => return Ok((incoming, *sa)),
            Err(e) if addr.socket_addr().is_some() => return Err(RuntimeError::Bind(*sa, e)),
            Err(e) => errors.push(format!("{sa}: {e}")),
        }
    }
    Err(RuntimeError::Listen(addr.to_string(), errors.join("; ")))
}

/// Runs replica `id` of `config` until `shutdown` completes.
pub async fn serve(
    config: Config,
    id: ReplicaId,
    opts: RuntimeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RuntimeError> {
    opts.validate()?;
    let new_dir = storage::is_new(&opts.data_dir);
    let me = config.replicas[id.index()].clone();
    // Certificates first: a replica that cannot serve securely says so before anything else.
    let security = if opts.insecure {
        None
    } else {
        Some(tls::load_replica(&config, id)?)
    };
    // A listen address that is a name binds where it resolves now (the first that binds).
    let metrics_at = listen_addr(&me.listen.metrics_addr).await?;
    let metrics_handle = crate::server::metrics::install()
        .map_err(|e| RuntimeError::Metrics(metrics_at, e.to_string()))?;
    crate::server::metrics::register_all(config.n(), id.0);
    let metrics_listener = std::net::TcpListener::bind(metrics_at)
        .and_then(|l| {
            l.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(l)
        })
        .map_err(|e| RuntimeError::Metrics(metrics_at, e.to_string()))?;
    match &security {
        None => {
            tracing::warn!(
                "--insecure: plaintext listeners and peer links, nobody is authenticated; \
                 anyone who reaches the peer address can speak as any replica"
            );
            metrics::gauge!("epaxos_insecure").set(1.0);
        }
        Some(t) => {
            metrics::gauge!("epaxos_insecure").set(0.0);
            tls::export_expiry(t.own_expiry, t.ca_expiry);
        }
    }
    let dialer = security
        .as_ref()
        .map_or_else(tls::PeerDialer::insecure, |t| t.dialer.clone());
    // Bound before anything dials out: the addresses are ours (or the start fails clearly)
    // before the peer links and the join take ephemeral ports of their own.
    let (client_incoming, client_at) = bind(&me.listen.addr).await?;
    let client_incoming = client_incoming.with_nodelay(Some(true));
    let (peer_incoming, peer_at) = bind(&me.listen.peer_addr).await?;
    let peer_incoming = peer_incoming.with_nodelay(Some(true));
    check_cluster_size(&opts.data_dir, config.n())?;
    let (log, recovered) = Log::open(&opts.data_dir, config.n(), opts.sync)?;
    if recovered.truncated_bytes > 0 {
        tracing::warn!(dir = %opts.data_dir.display(), bytes = recovered.truncated_bytes,
            "cut a torn tail off the log (a crash interrupted the last append)");
    }
    let durable = opts.sync == Sync::Fsync;
    metrics::gauge!("epaxos_durable").set(if durable { 1.0 } else { 0.0 });
    let restored = recovered.records.len();
    let metadata = storage::Metadata::open(&opts.data_dir, id, config.n())?;
    let (incarnation, peers) = (metadata.incarnation, metadata.peers.clone());
    // What each peer's Dispatch streams are checked against (0: none recorded yet); the event
    // loop updates it from what the node records.
    let accepted: Arc<Vec<AtomicU64>> = Arc::new(
        peers
            .iter()
            .map(|p| AtomicU64::new(p.map_or(0, Incarnation::get)))
            .collect(),
    );
    let membership = metadata.membership.clone();

    let (health, health_rx) = health::Publisher::new(if membership == Membership::Joining {
        Health::Joining
    } else {
        Health::Serving
    });
    tokio::spawn(crate::server::http::serve(
        metrics_listener,
        metrics_handle,
        health_rx.clone(),
    ));
    let (big_tx, big_rx) = mpsc::channel::<Event>(opts.big_channel_max);
    let mut peer_queues: Vec<Option<ByteSender>> = vec![None; config.n()];
    for peer in &config.replicas {
        if peer.id == id {
            continue;
        }
        let (tx, rx) = byte_queue(opts.peer_queue_max, opts.peer_queue_bytes_max);
        peer_queues[peer.id.index()] = Some(tx);
        tokio::spawn(transport::run_link(
            id,
            incarnation,
            peer.id,
            peer.peer_addr.clone(),
            dialer.clone(),
            rx,
        ));
    }

    if membership == Membership::Joining {
        // Whatever an interrupted join left is replaced by the snapshot it takes now.
        let interrupted = !new_dir;
        tracing::info!(interrupted, "new data directory: joining the cluster first");
        let config = config.clone();
        let big = big_tx.clone();
        let dialer = dialer.clone();
        tokio::spawn(async move {
            let joined = join::run(&config, id, incarnation, interrupted, &dialer).await;
            let _ = big.send(Event::Joined(Box::new(joined))).await;
        });
    }
    let node = Node::new(
        opts.core.clone(),
        opts.checkpoint_every,
        Duration::ZERO,
        Restored {
            membership,
            peers,
            checkpoint: recovered.checkpoint,
            records: recovered.records,
        },
    );
    if !node.joining() {
        tracing::info!(
            records = restored,
            committed = node.replica().committed_count(),
            executed = node.replica().kv().executed(),
            "restored from the log"
        );
    }
    let mut event_loop = tokio::spawn(run_loop(
        node,
        big_rx,
        peer_queues,
        LoopSetup {
            tick: opts.tick,
            propose_timeout: opts.propose_timeout,
            log,
            metadata,
            accepted: accepted.clone(),
            health,
            catch_up: CatchUpContext {
                config: Arc::new(config.clone()),
                me: id,
                incarnation,
                dialer: dialer.clone(),
                big: big_tx.downgrade(),
            },
        },
    ));

    let budget = Arc::new(Semaphore::new(opts.big_channel_bytes_max));
    let started = Instant::now();
    let refused_at_ms: Arc<Vec<AtomicU64>> =
        Arc::new((0..config.n()).map(|_| AtomicU64::new(0)).collect());
    let client_service = ClientService {
        id,
        big: big_tx.clone(),
        budget: budget.clone(),
        propose_timeout: opts.propose_timeout,
        health: health_rx.clone(),
        started,
        data_dir: opts.data_dir.clone(),
        refused_at_ms: refused_at_ms.clone(),
    };
    let cluster_name = security.as_ref().map(|_| config.tls.cluster_name.clone());
    let peer_service = PeerService {
        n: config.n(),
        big: big_tx,
        budget,
        budget_max: opts.big_channel_bytes_max,
        accepted,
        refused_at_ms,
        started,
        auth: Arc::new(tls::PeerAuth::new(cluster_name, config.n())),
        joins: Arc::new(admission::PerPeerRate::new(
            config.n(),
            limits::JOIN_INTERVAL_MIN,
        )),
        snapshots: admission::Snapshots::new(limits::SNAPSHOTS_IN_FLIGHT_MAX),
    };
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    // gRPC health follows what the event loop assesses (see `server::health`).
    tokio::spawn(health::report_grpc(
        health_rx,
        health_reporter,
        <KvServer<ClientService> as tonic::server::NamedService>::NAME,
    ));
    // Reflection describes the client contract only (client.proto and health).
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::CLIENT_FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| RuntimeError::Reflection(e.to_string()))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::CLIENT_FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| RuntimeError::Reflection(e.to_string()))?;

    tracing::info!(replica = %id, addr = %me.addr, peer_addr = %me.peer_addr,
        metrics = %me.metrics_addr, listen = %client_at, listen_peer = %peer_at,
        listen_metrics = %metrics_at, n = config.n(), thrifty = opts.core.thrifty, durable,
        tls = security.is_some(), "replica serving");
    // Listeners are bound: under systemd (Type=notify) `systemctl start` returns now.
    crate::server::notify::ready(&format!("replica {} serving on {}", id.0, me.addr));
    // Peers keep their Dispatch streams open forever, so a graceful stop waits at most
    // SHUTDOWN_GRACE for in-flight calls and then ends the servers.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        // An error means the sender is gone, which only happens after it sent.
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let client_incoming =
        incoming::Capped::new(client_incoming, opts.client_connections_max, "client");
    let mut client_server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .max_concurrent_streams(limits::CLIENT_STREAMS_PER_CONNECTION_MAX)
        .initial_connection_window_size(limits::CLIENT_CONNECTION_WINDOW_BYTES)
        .initial_stream_window_size(limits::CLIENT_STREAM_WINDOW_BYTES)
        .concurrency_limit_per_connection(limits::CLIENT_STREAMS_PER_CONNECTION_MAX as usize)
        .http2_keepalive_interval(Some(limits::CLIENT_KEEPALIVE))
        .http2_keepalive_timeout(Some(limits::CLIENT_KEEPALIVE_TIMEOUT));
    let mut peer_server = tonic::transport::Server::builder().tcp_nodelay(true);
    if let Some(t) = security {
        client_server = client_server
            .tls_config(t.client)
            .map_err(|e| RuntimeError::TlsConfig("client", e))?;
        peer_server = peer_server
            .tls_config(t.peer)
            .map_err(|e| RuntimeError::TlsConfig("peer", e))?;
    }
    let client_server = client_server
        .layer(admission::RequestBytesLayer::new(opts.request_bytes_max))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            KvServer::new(client_service)
                .max_decoding_message_size(limits::CLIENT_GRPC_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(limits::CLIENT_GRPC_MESSAGE_BYTES_MAX),
        )
        .serve_with_incoming_shutdown(client_incoming, stopped(stop_rx.clone()));
    let peer_server = peer_server
        .add_service(
            PeerServer::new(peer_service)
                .max_decoding_message_size(limits::PEER_GRPC_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(limits::PEER_GRPC_MESSAGE_BYTES_MAX),
        )
        .serve_with_incoming_shutdown(peer_incoming, stopped(stop_rx.clone()));
    let result = tokio::select! {
        r = client_server => r.map_err(|e| RuntimeError::Server(client_at, e)),
        r = peer_server => r.map_err(|e| RuntimeError::Server(peer_at, e)),
        r = &mut event_loop => match r {
            Ok(Err(e)) => Err(e),
            _ => Ok(()),
        },
        _ = async {
            stopped(stop_rx.clone()).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => Ok(()),
    };
    event_loop.abort();
    result
}

/// A checkpoint being written off the event loop.
struct Writing {
    job: tokio::task::JoinHandle<Result<storage::PreparedLog, StorageError>>,
    started: Instant,
    /// Time the event loop spent encoding it.
    encode: Duration,
    bytes: usize,
    live: usize,
}

/// A client waiting for its command: where the answer goes and when the proposal arrived.
struct Waiter {
    reply: oneshot::Sender<Result<OpResult, Status>>,
    at: Instant,
    /// The command's session and request (what the node needs to forget it).
    request: (ClientId, RequestId),
}

/// A Join the node answered, waiting for the record of the new incarnation to be durable.
struct PendingJoin {
    from: ReplicaId,
    incarnation: Option<Incarnation>,
    reply: oneshot::Sender<Result<proto::JoinReply, Status>>,
}

/// What the event loop needs besides the node and its channels.
/// What fetching a snapshot needs when peers left this replica behind (see `join::catch_up`).
#[derive(Clone)]
struct CatchUpContext {
    config: Arc<Config>,
    me: ReplicaId,
    incarnation: Incarnation,
    dialer: tls::PeerDialer,
    /// Weak: the event loop must not keep its own channel open (it ends when the channel does).
    big: mpsc::WeakSender<Event>,
}

struct LoopSetup {
    catch_up: CatchUpContext,
    tick: Duration,
    propose_timeout: Duration,
    log: Log,
    metadata: storage::Metadata,
    accepted: Arc<Vec<AtomicU64>>,
    health: health::Publisher,
}

/// The single-threaded event loop's state: the node and what the shell needs to carry out its
/// outputs.
struct EventLoop {
    node: Node,
    me: ReplicaId,
    start: Instant,
    peers: Vec<Option<ByteSender>>,
    /// By token, which grows with arrival: the oldest first, for `forget_given_up`.
    waiting: BTreeMap<Token, Waiter>,
    /// How long a client's call waits (after that, the service has answered it).
    propose_timeout: Duration,
    /// Joins answered by the node, waiting for its record of the new incarnation to be durable.
    joins: HashMap<Token, PendingJoin>,
    next_token: Token,
    m: LoopMetrics,
    log: Log,
    metadata: storage::Metadata,
    /// Per peer: the incarnation the node recorded, for the Dispatch readers (which close a
    /// stream from another incarnation at once).
    accepted: Arc<Vec<AtomicU64>>,
    /// What `epaxos_abstaining` last reported.
    abstaining: bool,
    health: health::Publisher,
    /// Per peer: when anything was last heard from it (start, if never).
    heard: Vec<Instant>,
    /// PreAccepts and Accepts sent, by peer and instance, waiting for their answer: the
    /// per-peer round trip (`epaxos_peer_rtt_seconds`). Bounded; entries older than
    /// `RTT_FORGET_AFTER` are dropped at each tick.
    rtt_sent: HashMap<(ReplicaId, InstanceId), Instant>,
    /// Fetching a snapshot after peers left this replica behind: how, and the fetch running.
    catch_up: CatchUpContext,
    catch_up_started: Option<tokio::task::JoinHandle<()>>,
    /// A checkpoint is being written: a snapshot to install waits in `deferred_install`.
    checkpoint_writing: bool,
    deferred_install: Option<Box<join::Snapshot>>,
}

/// Round trips measured at once, at most (beyond, a send is not timed).
const RTT_PENDING_MAX: usize = 4096;
/// A round trip not answered within this is forgotten (the peer is down or the answer lost).
const RTT_FORGET_AFTER: Duration = Duration::from_secs(10);

/// Runs the event loop that owns all protocol state until bigChannel closes.
async fn run_loop(
    node: Node,
    mut big: mpsc::Receiver<Event>,
    peers: Vec<Option<ByteSender>>,
    setup: LoopSetup,
) -> Result<(), RuntimeError> {
    let fsync_latency = metrics::histogram!("epaxos_fsync_seconds");
    let persisted = metrics::counter!("epaxos_persisted_records_total");
    let checkpoints = metrics::counter!("epaxos_checkpoints_total");
    let checkpoint_latency = metrics::histogram!("epaxos_checkpoint_seconds");
    let log_bytes = metrics::gauge!("epaxos_log_bytes");
    let joining_gauge = metrics::gauge!("epaxos_joining");
    let abstaining_gauge = metrics::gauge!("epaxos_abstaining");
    let catching_up_gauge = metrics::gauge!("epaxos_catching_up");
    let instances_gauge = metrics::gauge!("epaxos_instances_in_memory");
    let LoopSetup {
        tick,
        propose_timeout,
        log,
        metadata,
        accepted,
        health,
        catch_up,
    } = setup;
    let mut el = EventLoop {
        catch_up,
        catch_up_started: None,
        checkpoint_writing: false,
        deferred_install: None,
        abstaining: false,
        heard: vec![Instant::now(); peers.len()],
        rtt_sent: HashMap::new(),
        me: node.replica().id(),
        m: LoopMetrics::new(peers.len()),
        node,
        start: Instant::now(),
        peers,
        waiting: BTreeMap::new(),
        propose_timeout,
        joins: HashMap::new(),
        next_token: 0,
        log,
        metadata,
        accepted,
        health,
    };
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A checkpoint being written on a blocking thread (see `Log::start_checkpoint`), and the
    // records appended to the old log since it started, which the new log must get too.
    let mut writing: Option<Writing> = None;
    let mut since: Vec<(InstanceId, Instance)> = Vec::new();
    loop {
        tokio::select! {
            done = async { (&mut writing.as_mut().expect("branch enabled only while writing").job).await },
                if writing.is_some() =>
            {
                let w = writing.take().expect("branch enabled only while writing");
                let finishing = Instant::now();
                let written = done
                    .map_err(|e| RuntimeError::CheckpointTask(e.to_string()))?
                    .and_then(|prepared| {
                        let log = &mut el.log;
                        tokio::task::block_in_place(|| log.finish_checkpoint(prepared, &since))
                    });
                el.node.checkpoint_written();
                if let Err(e) = written {
                    if !e.is_out_of_space() {
                        tracing::error!(error = %e, "cannot checkpoint; stopping the replica");
                        return Err(e.into());
                    }
                    // The old log is still whole and in place: go on with it, try again later.
                    el.log.abandon_checkpoint();
                    since = Vec::new();
                    tracing::warn!(error = %e,
                        "cannot write a checkpoint (data directory full or read-only); the log \
                         is kept as it is and the next checkpoint tries again");
                    continue;
                }
                let stall = w.encode + finishing.elapsed();
                checkpoints.increment(1);
                checkpoint_latency.record(w.started.elapsed().as_secs_f64());
                log_bytes.set(el.log.len_bytes() as f64);
                tracing::info!(
                    bytes = w.bytes,
                    live = w.live,
                    appended_meanwhile = since.len(),
                    ms = w.started.elapsed().as_millis() as u64,
                    event_loop_ms = stall.as_millis() as u64,
                    "checkpoint written, log cut"
                );
                since = Vec::new();
            }
            ev = big.recv() => match ev {
                Some(ev) => el.handle(ev),
                None => return Ok(()),
            },
            _ = ticker.tick() => {
                let now = el.start.elapsed();
                el.node.set_wall_clock_ms(wall_clock_ms());
                el.node.tick(now);
                el.forget_given_up();
                let sessions = el.node.replica().kv().sessions();
                metrics::gauge!("epaxos_sessions").set(sessions.len() as f64);
                metrics::gauge!("epaxos_session_table_bytes").set(sessions.size_bytes() as f64);
                for (p, g) in el.m.suspected.iter().enumerate() {
                    let peer = ReplicaId(p as u32);
                    if peer != el.me {
                        g.set(if el.node.replica().is_suspected(peer, now) { 1.0 } else { 0.0 });
                        el.m.last_heard[p].set(el.heard[p].elapsed().as_secs_f64());
                    }
                }
                el.rtt_sent.retain(|_, sent| sent.elapsed() < RTT_FORGET_AFTER);
            }
        }
        crate::server::metrics::HIGH_WATER.observe([big.len() as u64 + 1, 0, 0, 0]);
        for _ in 0..DRAIN_MAX {
            match big.try_recv() {
                Ok(ev) => el.handle(ev),
                Err(_) => break,
            }
        }
        el.node.set_wall_clock_ms(wall_clock_ms());
        el.node.flush(el.start.elapsed());
        let mut ready = el.node.take_ready();
        el.persist_node(&ready).await?;
        if !ready.core.persist.is_empty() {
            // Group commit: one write and one sync for everything this iteration changed,
            // before any message or reply that depends on it leaves.
            let started = Instant::now();
            let records = std::mem::take(&mut ready.core.persist);
            let log = &mut el.log;
            until_written(|| log.append(&records))
                .await
                .inspect_err(|e| {
                    tracing::error!(error = %e, "cannot persist; stopping the replica");
                })?;
            fsync_latency.record(started.elapsed().as_secs_f64());
            persisted.increment(records.len() as u64);
            log_bytes.set(el.log.len_bytes() as f64);
            if writing.is_some() {
                since.extend(records);
            }
        }
        el.carry_out(ready);
        el.checkpoint_writing = writing.is_some();
        if !el.checkpoint_writing {
            if let Some(snapshot) = el.deferred_install.take() {
                el.install_caught_up(el.start.elapsed(), *snapshot);
            }
        }
        el.start_catch_up();
        joining_gauge.set(if el.node.joining() { 1.0 } else { 0.0 });
        catching_up_gauge.set(if el.node.catching_up().is_some() {
            1.0
        } else {
            0.0
        });
        instances_gauge.set(el.node.replica().instances_in_memory() as f64);
        el.report_abstaining(&abstaining_gauge);
        el.health.publish(el.health());
        if writing.is_none() {
            let started = Instant::now();
            if let Some(job) = el.node.poll_checkpoint() {
                // The node encoded it (that reads the live state, so it happens here); the
                // writing and syncing happen on a blocking thread while the loop goes on.
                let encode = started.elapsed();
                let (bytes, live) = (job.checkpoint.len(), job.records.len());
                let work = el.log.start_checkpoint(job.checkpoint, job.records);
                writing = Some(Writing {
                    job: tokio::task::spawn_blocking(work),
                    started,
                    encode,
                    bytes,
                    live,
                });
            }
        }
        el.m.big_channel.set(big.len() as f64);
        el.m.waiting.set(el.node.replica().unexecuted() as f64);
        el.m.pending.set(el.node.replica().pending() as f64);
        el.m.inflight.set(el.node.replica().inflight() as f64);
        crate::server::metrics::HIGH_WATER.observe([
            big.len() as u64,
            el.node.replica().pending() as u64,
            el.node.replica().inflight() as u64,
            el.node.replica().unexecuted(),
        ]);
    }
}

/// Runs `write` (a blocking write to the data directory; it leaves the files as they were when
/// it fails) until it succeeds. While the data directory is full or read-only the event loop
/// waits here: nothing that needs the write is acknowledged (clients and peers queue, then
/// time out), one error line says why, and one line says when the replica serves again. Any
/// other error is returned: the replica stops.
async fn until_written<T>(
    mut write: impl FnMut() -> Result<T, StorageError>,
) -> Result<T, StorageError> {
    let mut blocked_since: Option<Instant> = None;
    loop {
        match tokio::task::block_in_place(&mut write) {
            Ok(v) => {
                if let Some(since) = blocked_since {
                    metrics::gauge!("epaxos_storage_blocked").set(0.0);
                    tracing::info!(
                        blocked_ms = since.elapsed().as_millis() as u64,
                        "data directory writable again: serving"
                    );
                }
                return Ok(v);
            }
            Err(e) if e.is_out_of_space() => {
                if blocked_since.is_none() {
                    blocked_since = Some(Instant::now());
                    metrics::gauge!("epaxos_storage_blocked").set(1.0);
                    tracing::error!(error = %e,
                        "cannot write the data directory (full or read-only): acknowledging \
                         nothing that needs a write until it can; retrying every second");
                }
                tokio::time::sleep(STORAGE_RETRY).await;
            }
            Err(e) => return Err(e),
        }
    }
}

impl EventLoop {
    fn handle(&mut self, ev: Event) {
        let now = self.start.elapsed();
        match ev {
            Event::Propose { cmd, reply, at, .. } => {
                let token = self.next_token;
                self.next_token += 1;
                let request = (cmd.client, cmd.request);
                tracing::debug!(client = cmd.client.0, request = cmd.request.0, "proposal");
                match self.node.propose(token, cmd) {
                    Ok(()) => {
                        self.m.proposals.increment(1);
                        self.waiting.insert(token, Waiter { reply, at, request });
                    }
                    Err(e @ (Refusal::Joining | Refusal::CatchingUp)) => {
                        let _ = reply.send(Err(Status::unavailable(e.to_string())));
                    }
                    Err(e) => {
                        self.m.rejected_overloaded.increment(1);
                        let _ = reply.send(Err(Status::resource_exhausted(e.to_string())));
                    }
                }
            }
            Event::Peer {
                from,
                incarnation,
                messages,
                ..
            } => {
                if !self.node.hear(from, incarnation) {
                    return;
                }
                if let Some(h) = self.heard.get_mut(from.index()) {
                    *h = Instant::now();
                }
                for msg in messages {
                    self.m.received(from.0, &msg);
                    if let (Message::PreAcceptOk { .. } | Message::AcceptOk { .. }, Some(i)) =
                        (&msg, msg.instance())
                    {
                        if let Some(sent) = self.rtt_sent.remove(&(from, i)) {
                            if let Some(h) = self.m.rtt.get(from.index()) {
                                h.record(sent.elapsed().as_secs_f64());
                            }
                        }
                    }
                    tracing::debug!(dir = "recv", kind = msg.kind(), from = %from, to = %self.me,
                        instance = %Show(msg.instance()), ballot = %Show(msg.ballot()),
                        deps = %ShowDeps(msg.deps()));
                    self.node.handle(now, from, msg);
                }
            }
            Event::Status { reply } => {
                let core = self.node.replica();
                let _ = reply.send(proto::StatusReply {
                    id: self.me.0,
                    executed: core.kv().executed(),
                    digest: core.kv().digest(),
                    committed: core.committed_count(),
                    keys: core.kv().len() as u64,
                    waiting: core.unexecuted(),
                    joining: self.node.joining(),
                    abstaining: core.abstaining(),
                    peers_heard: (0..self.peers.len() as u32)
                        .filter(|p| *p != self.me.0 && !core.is_suspected(ReplicaId(*p), now))
                        .collect(),
                    peers_suspected: (0..self.peers.len() as u32)
                        .filter(|p| *p != self.me.0 && core.is_suspected(ReplicaId(*p), now))
                        .collect(),
                    // The service fills in what it holds (see `ClientService::status_call`).
                    ..Default::default()
                });
            }
            Event::Join {
                from,
                incarnation,
                reply,
            } => {
                let token = self.next_token;
                self.next_token += 1;
                self.joins.insert(
                    token,
                    PendingJoin {
                        from,
                        incarnation,
                        reply,
                    },
                );
                self.node.answer_join(token, from, incarnation);
            }
            Event::Snapshot {
                from,
                incarnation,
                reply,
            } => {
                let started = Instant::now();
                let result = match self.node.snapshot_for(from, incarnation) {
                    Ok(node::Image {
                        checkpoint,
                        records,
                    }) => {
                        let snapshot = proto::Snapshot {
                            checkpoint: checkpoint.into(),
                            records: records
                                .iter()
                                .map(|(id, inst)| wire::record_to_proto(*id, inst))
                                .collect(),
                        };
                        let bytes = prost::Message::encode_to_vec(&snapshot);
                        tracing::info!(peer = %from, bytes = bytes.len(), records = records.len(),
                            ms = started.elapsed().as_millis() as u64,
                            "snapshot taken for a joining peer");
                        metrics::counter!("epaxos_snapshots_sent_total").increment(1);
                        Ok(bytes)
                    }
                    Err(e @ Refusal::Joining) => Err(Status::unavailable(e.to_string())),
                    Err(e) => Err(Status::failed_precondition(e.to_string())),
                };
                let _ = reply.send(result);
            }
            Event::Joined(joined) => match *joined {
                join::Joined::Fresh => {
                    tracing::info!("joined the cluster as a new replica");
                    self.node.join_fresh();
                }
                join::Joined::Rejoin { horizons, snapshot } => {
                    let join::Snapshot {
                        from,
                        checkpoint,
                        records,
                    } = *snapshot;
                    self.node
                        .join_from_snapshot(now, horizons.clone(), checkpoint, records);
                    let core = self.node.replica();
                    tracing::info!(%from, keys = core.kv().len(),
                        committed = core.committed_count(), executed = core.kv().executed(),
                        horizons = ?horizons, "rejoined the cluster from a peer's snapshot");
                    metrics::counter!("epaxos_rejoins_total").increment(1);
                }
            },
            Event::CaughtUp(snapshot) => {
                if self.checkpoint_writing {
                    // Installing rewrites the checkpoint and the log: after the one being
                    // written (the loop installs it then).
                    self.deferred_install = Some(snapshot);
                } else {
                    self.install_caught_up(now, *snapshot);
                }
            }
        }
    }

    /// Installs the snapshot of a replica left behind (see `Node::install_caught_up`).
    fn install_caught_up(&mut self, now: Duration, snapshot: join::Snapshot) {
        self.catch_up_started = None;
        let join::Snapshot {
            from,
            checkpoint,
            records,
        } = snapshot;
        let collected = checkpoint.gc_prefix.clone();
        self.node.install_caught_up(now, checkpoint, records);
        let core = self.node.replica();
        tracing::info!(%from, collected = ?collected, keys = core.kv().len(),
            executed = core.kv().executed(),
            "caught up from a peer's snapshot: peers had collected instances this replica had \
             not executed while it was down or cut off");
        metrics::counter!("epaxos_catch_ups_total").increment(1);
    }

    /// Starts fetching a snapshot if the node was left behind and no fetch runs yet.
    fn start_catch_up(&mut self) {
        let Some(source) = self.node.catching_up() else {
            return;
        };
        if self.catch_up_started.is_some() {
            return;
        }
        tracing::warn!(%source,
            "left behind: a peer collected instances this replica has not executed; fetching \
             a snapshot (no client requests meanwhile)");
        let ctx = self.catch_up.clone();
        let handle = tokio::spawn(async move {
            let snapshot =
                join::catch_up(&ctx.config, ctx.me, ctx.incarnation, source, &ctx.dialer).await;
            if let Some(big) = ctx.big.upgrade() {
                let _ = big.send(Event::CaughtUp(Box::new(snapshot))).await;
            }
        });
        self.catch_up_started = Some(handle);
    }

    /// Makes durable what the node itself must store (see `node::Ready`: peers' incarnations,
    /// an installed snapshot, the membership), before anything of `ready` is carried out.
    async fn persist_node(&mut self, ready: &node::Ready) -> Result<(), RuntimeError> {
        if ready.peers.is_none() && ready.install.is_none() && ready.membership.is_none() {
            return Ok(());
        }
        let (log, metadata) = (&mut self.log, &mut self.metadata);
        until_written(|| -> Result<(), StorageError> {
            if let Some(peers) = &ready.peers {
                metadata.store_peers(peers)?;
            }
            if let Some(installed) = &ready.install {
                // The records go into the current log first: a crash after the new checkpoint
                // is in place but before the log is replaced then restores the checkpoint with
                // every record beside it (the snapshot's decided instances are in no log yet).
                log.append(&installed.records)?;
                log.checkpoint(&installed.checkpoint, &installed.records)?;
            }
            if let Some(membership) = &ready.membership {
                metadata.store_membership(membership)?;
            }
            Ok(())
        })
        .await
        .inspect_err(|e| tracing::error!(error = %e, "cannot persist; stopping the replica"))?;
        if let Some(peers) = &ready.peers {
            for (a, p) in self.accepted.iter().zip(peers) {
                a.store(p.map_or(0, Incarnation::get), Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// Forgets the clients whose calls the service has given up on (their `propose_timeout`
    /// passed): nothing of them stays in this table or in the node's.
    fn forget_given_up(&mut self) {
        while let Some(entry) = self.waiting.first_entry() {
            if entry.get().at.elapsed() < self.propose_timeout && !entry.get().reply.is_closed() {
                break;
            }
            let (token, w) = entry.remove_entry();
            self.node.forget(token, w.request);
        }
    }

    /// Whether this replica can serve now (see `server::health`): a peer counts as reachable
    /// while the core does not suspect it.
    fn health(&self) -> Health {
        let now = self.start.elapsed();
        let core = self.node.replica();
        let n = self.peers.len();
        let reachable = (0..n as u32)
            .map(ReplicaId)
            .filter(|p| *p == self.me || !core.is_suspected(*p, now))
            .count();
        // Catching up from a snapshot serves nothing, like joining.
        let joining = self.node.joining() || self.node.catching_up().is_some();
        Health::assess(joining, core.abstaining(), reachable, n)
    }

    /// Logs and exports a change of `abstaining` (see `Replica::abstaining`).
    fn report_abstaining(&mut self, gauge: &metrics::Gauge) {
        let abstaining = self.node.replica().abstaining();
        if abstaining == self.abstaining {
            return;
        }
        if abstaining {
            tracing::warn!(
                "abstaining below the rejoin horizons until every row is known committed up \
                 to them: until then this replica counts as a failure"
            );
        } else {
            tracing::info!("caught up to the rejoin horizons: votes on everything again");
        }
        self.abstaining = abstaining;
        gauge.set(if abstaining { 1.0 } else { 0.0 });
    }

    /// Carries out the node's outputs once what they depend on is durable.
    fn carry_out(&mut self, ready: node::Ready) {
        for (token, answer) in ready.joins {
            let Some(PendingJoin {
                from,
                incarnation,
                reply,
            }) = self.joins.remove(&token)
            else {
                continue;
            };
            if let Ok(JoinAnswer {
                previous: Some(old),
                ..
            }) = &answer
            {
                if Some(*old) != incarnation {
                    tracing::warn!(peer = %from, %old, new = ?incarnation.map(Incarnation::get),
                        "peer rejoins with a new data directory: its old incarnation is refused \
                         from now on");
                    metrics::counter!("epaxos_peer_rejoined_total",
                        "peer" => crate::server::metrics::peer_label(from.0))
                    .increment(1);
                }
            }
            let _ = reply.send(answer.map(join_reply).map_err(|e| match e {
                Refusal::BadJoin => Status::invalid_argument(e.to_string()),
                _ => Status::unavailable(e.to_string()),
            }));
        }
        for r in ready.refused {
            // The Dispatch reader closes such a stream too; these were queued before it did.
            tracing::debug!(peer = %r.peer, incarnation = %r.incarnation, recorded = %r.recorded,
                "batch from a replaced incarnation refused");
        }
        self.carry_out_core(ready.core);
    }

    /// Carries out the protocol core's outputs.
    fn carry_out_core(&mut self, ready: Ready) {
        let m = &self.m;
        for out in ready.messages {
            let bytes = wire::encode(&out.msg);
            let timed = match (&out.msg, out.msg.instance()) {
                (Message::PreAccept { .. } | Message::Accept { .. }, Some(i)) => Some(i),
                _ => None,
            };
            for to in out.to {
                m.sent(to.0, &out.msg);
                if let Some(i) = timed {
                    if self.rtt_sent.len() < RTT_PENDING_MAX {
                        self.rtt_sent.insert((to, i), Instant::now());
                    }
                }
                tracing::debug!(dir = "send", kind = out.msg.kind(), from = %self.me, to = %to,
                    instance = %Show(out.msg.instance()), ballot = %Show(out.msg.ballot()),
                    deps = %ShowDeps(out.msg.deps()));
                let Some(Some(q)) = self.peers.get(to.index()) else {
                    continue;
                };
                if q.try_send(bytes.clone()).is_err() {
                    m.dropped[to.index()].increment(1);
                }
            }
        }
        for batch in ready.batches {
            tracing::debug!(commands = batch, "instance started (batch size)");
            m.batches.increment(1);
            m.batch_size.record(batch as f64);
        }
        m.recoveries_started.increment(ready.recoveries_started);
        ready
            .refused
            .into_iter()
            .for_each(crate::server::metrics::contradiction);
        for r in ready.rejected {
            metrics::counter!("epaxos_peer_rejected_total",
                "peer" => crate::server::metrics::peer_label(r.from.0), "reason" => r.reason.label())
            .increment(1);
            tracing::debug!(from = %r.from, kind = r.kind, reason = r.reason.label(),
                "refused a peer message naming what cannot exist");
        }
        for c in ready.committed {
            m.committed.increment(1);
            if let Some((path, latency)) = c.led {
                m.commit(path, c.commands);
                if path == Path::Recovered {
                    tracing::info!(
                        instance = %c.instance,
                        outcome = if c.commands == 0 { "nop" } else { "command" },
                        took_ms = latency.as_millis() as u64,
                        "recovered instance"
                    );
                } else if path == Path::Fast {
                    m.commit_latency_fast.record(latency.as_secs_f64());
                } else {
                    m.commit_latency_slow.record(latency.as_secs_f64());
                }
            }
        }
        m.executed_instances.increment(ready.executed.len() as u64);
        // Sessions: expired here, and commands refused because theirs had (every replica
        // counts the same refusals, whether or not the client waits here).
        metrics::counter!("epaxos_sessions_expired_total").increment(ready.sessions_expired);
        metrics::counter!("epaxos_session_expired_refusals_total")
            .increment(ready.refused_expired.len() as u64);
        for reply in ready.replies {
            m.executed_commands.increment(1);
            if let Some(Waiter {
                reply: tx,
                at,
                request: (client, request),
            }) = self.waiting.remove(&reply.token)
            {
                m.execution_latency.record(at.elapsed().as_secs_f64());
                tracing::debug!(
                    client = client.0,
                    request = request.0,
                    us = at.elapsed().as_micros() as u64,
                    ok = reply.result.is_ok(),
                    "reply"
                );
                let _ = tx.send(reply.result.map_err(|e| match e {
                    ReplyError::Stale
                    | ReplyError::Reused
                    | ReplyError::Expired(_)
                    | ReplyError::ResultNotKept(_) => Status::failed_precondition(e.to_string()),
                }));
            }
        }
    }
}

/// The client service (client listener): translates calls into events.
struct ClientService {
    id: ReplicaId,
    big: mpsc::Sender<Event>,
    /// bigChannel's byte budget (see `limits::BIG_CHANNEL_BYTES_MAX`).
    budget: Arc<Semaphore>,
    propose_timeout: Duration,
    /// What the event loop last assessed: without a majority a proposal is refused at once
    /// (it could not commit), rather than after `propose_timeout`.
    health: watch::Receiver<Health>,
    /// When the service started (Status: uptime).
    started: Instant,
    data_dir: std::path::PathBuf,
    /// Per peer: when (ms since `started`, 0: never) a stream of a replaced incarnation of it
    /// was last refused; shared with the peer service.
    refused_at_ms: Arc<Vec<AtomicU64>>,
}

/// A refusal of a replaced incarnation this recent shows in Status (`peers_refused`).
const REFUSED_RECENT_MS: u64 = 60_000;

/// The peer service (peer listener): checks who is speaking, then translates calls into events.
struct PeerService {
    n: usize,
    big: mpsc::Sender<Event>,
    /// bigChannel's byte budget (see `limits::BIG_CHANNEL_BYTES_MAX`).
    budget: Arc<Semaphore>,
    /// The budget's size: a peer batch larger than it takes all of it (and so still passes).
    budget_max: usize,
    /// Per peer: the incarnation its Dispatch streams must carry (0: none recorded yet); kept
    /// by the event loop, which holds the durable record.
    accepted: Arc<Vec<AtomicU64>>,
    /// Per peer: when a replaced incarnation of it was last refused (see `ClientService`).
    refused_at_ms: Arc<Vec<AtomicU64>>,
    started: Instant,
    /// Who the caller's certificate names; refuses calls that claim another replica.
    auth: Arc<tls::PeerAuth>,
    /// Joins per peer at a bounded rate, snapshots one at a time.
    joins: Arc<admission::PerPeerRate>,
    snapshots: admission::Snapshots,
}

#[tonic::async_trait]
impl Kv for ClientService {
    async fn propose(
        &self,
        request: Request<ProposeRequest>,
    ) -> Result<Response<ProposeReply>, Status> {
        let result = self.propose_call(request).await;
        crate::server::metrics::client_request("Propose", &result);
        result
    }

    async fn status(
        &self,
        request: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusReply>, Status> {
        let result = self.status_call(request).await;
        crate::server::metrics::client_request("Status", &result);
        result
    }
}

impl ClientService {
    async fn propose_call(
        &self,
        request: Request<ProposeRequest>,
    ) -> Result<Response<ProposeReply>, Status> {
        let cmd = wire::command_from_request(request.into_inner())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let health = *self.health.borrow();
        if let Health::NoMajority { .. } = health {
            return Err(Status::unavailable(format!(
                "replica {} cannot serve: {health}; try a replica in the majority",
                self.id.0
            )));
        }
        // A full replica says so at once rather than queueing the caller.
        let overloaded = || {
            metrics::counter!("epaxos_proposals_rejected_total", "reason" => "overloaded")
                .increment(1);
            Status::resource_exhausted("replica overloaded; retry later")
        };
        let size = u32::try_from(cmd.op.size_bytes()).map_err(|_| overloaded())?;
        let budget = self
            .budget
            .clone()
            .try_acquire_many_owned(size.max(1))
            .map_err(|_| overloaded())?;
        let (tx, rx) = oneshot::channel();
        let event = Event::Propose {
            cmd,
            reply: tx,
            at: Instant::now(),
            budget,
        };
        let deadline = tokio::time::Instant::now() + self.propose_timeout;
        match self.big.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => return Err(overloaded()),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(Status::unavailable("replica is shutting down"))
            }
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(Ok(result))) => Ok(Response::new(ProposeReply {
                result: Some(wire::result_to_proto(&result)),
                replica: self.id.0,
            })),
            Ok(Ok(Err(status))) => Err(status),
            // The event loop dropped the waiter while it runs: it forgot the client once the
            // propose timeout passed (`forget_given_up`), just before this timer fired.
            Ok(Err(_)) if !self.big.is_closed() => Err(Status::deadline_exceeded(
                "command did not execute in time; retry with the same client_id and request_id",
            )),
            // The replica stopped with the command in progress: ABORTED, not UNAVAILABLE,
            // which a client may take as "never executed" (see client.proto).
            Ok(Err(_)) => Err(Status::aborted(
                "replica stopped while the command was in progress; its outcome is unknown: \
                 retry with the same client_id and request_id",
            )),
            Err(_) => Err(Status::deadline_exceeded(
                "command did not execute in time; retry with the same client_id and request_id",
            )),
        }
    }

    async fn status_call(
        &self,
        _request: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusReply>, Status> {
        let (tx, rx) = oneshot::channel();
        self.big
            .send(Event::Status { reply: tx })
            .await
            .map_err(|_| Status::unavailable("replica is shutting down"))?;
        let mut s = match tokio::time::timeout(Duration::from_secs(5), rx).await {
            Ok(Ok(s)) => s,
            _ => return Err(Status::unavailable("replica did not answer in time")),
        };
        let health = *self.health.borrow();
        s.serving = health.can_serve();
        s.health = health.to_string();
        s.version = crate::VERSION_LONG.to_string();
        s.uptime_ms = self.started.elapsed().as_millis() as u64;
        let dir = self.data_dir.clone();
        s.data_bytes = tokio::task::spawn_blocking(move || dir_bytes(&dir))
            .await
            .unwrap_or(0);
        s.peers_refused = (0..self.refused_at_ms.len())
            .filter(|p| {
                let at = self.refused_at_ms[*p].load(Ordering::Relaxed);
                at != 0 && self.started.elapsed().as_millis() as u64 <= at + REFUSED_RECENT_MS
            })
            .map(|p| p as u32)
            .collect();
        Ok(Response::new(s))
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn join(
        &self,
        request: Request<proto::JoinRequest>,
    ) -> Result<Response<proto::JoinReply>, Status> {
        let identity = self.auth.identify(&request, "Join")?;
        let remote = request.remote_addr();
        let req = request.into_inner();
        self.auth.check(identity, req.from, remote, "Join")?;
        if req.from as usize >= self.n {
            return Err(Status::invalid_argument(format!(
                "replica {} is not in the configuration",
                req.from
            )));
        }
        if !self.joins.admit(req.from as usize, Instant::now()) {
            metrics::counter!("epaxos_membership_calls_refused_total", "call" => "join")
                .increment(1);
            return Err(Status::resource_exhausted(
                "joins from this replica come too often; retry later",
            ));
        }
        let (tx, rx) = oneshot::channel();
        self.big
            .send(Event::Join {
                from: ReplicaId(req.from),
                incarnation: Incarnation::new(req.incarnation),
                reply: tx,
            })
            .await
            .map_err(|_| Status::unavailable("replica is shutting down"))?;
        match tokio::time::timeout(Duration::from_secs(5), rx).await {
            Ok(Ok(r)) => r.map(Response::new),
            _ => Err(Status::unavailable("replica did not answer in time")),
        }
    }

    type SnapshotStream = ReceiverStream<Result<proto::SnapshotChunk, Status>>;

    async fn snapshot(
        &self,
        request: Request<proto::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let identity = self.auth.identify(&request, "Snapshot")?;
        let remote = request.remote_addr();
        let req = request.into_inner();
        self.auth.check(identity, req.from, remote, "Snapshot")?;
        let Some(slot) = self.snapshots.try_start() else {
            metrics::counter!("epaxos_membership_calls_refused_total", "call" => "snapshot")
                .increment(1);
            return Err(Status::resource_exhausted(
                "a snapshot is being sent already; retry later",
            ));
        };
        let (tx, rx) = oneshot::channel();
        // The node gives it only to a peer that joined as this incarnation.
        self.big
            .send(Event::Snapshot {
                from: ReplicaId(req.from),
                incarnation: Incarnation::new(req.incarnation),
                reply: tx,
            })
            .await
            .map_err(|_| Status::unavailable("replica is shutting down"))?;
        let bytes = match tokio::time::timeout(Duration::from_secs(60), rx).await {
            Ok(Ok(r)) => r?,
            _ => return Err(Status::unavailable("replica did not answer in time")),
        };
        // Bounded: the sender waits for the joiner to take each chunk.
        let (chunks, out) = mpsc::channel(4);
        let bytes = Bytes::from(bytes);
        tokio::spawn(async move {
            // The slot (and the encoded state) is held until the stream ends or its reader
            // stalls: then it is abandoned.
            let _slot = slot;
            let mut at = 0;
            while at < bytes.len() {
                let end = (at + limits::SNAPSHOT_CHUNK_BYTES).min(bytes.len());
                let chunk = proto::SnapshotChunk {
                    data: bytes.slice(at..end),
                };
                at = end;
                match tokio::time::timeout(limits::SNAPSHOT_CHUNK_TIMEOUT, chunks.send(Ok(chunk)))
                    .await
                {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break,
                    Err(_) => {
                        tracing::warn!("snapshot reader stalled; abandoning the stream");
                        break;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(out)))
    }

    type DispatchStream = ReceiverStream<Result<DispatchAck, Status>>;

    async fn dispatch(
        &self,
        request: Request<tonic::Streaming<PeerBatch>>,
    ) -> Result<Response<Self::DispatchStream>, Status> {
        // Who may write this stream is settled once, from the certificate.
        let identity = self.auth.identify(&request, "Dispatch")?;
        let remote = request.remote_addr();
        let mut inbound = request.into_inner();
        // The response stream stays open (and empty) while `keep_open` lives in the reader.
        let (keep_open, rx) = mpsc::channel(1);
        let big = self.big.clone();
        let n = self.n;
        let accepted = self.accepted.clone();
        let (refused_at_ms, started) = (self.refused_at_ms.clone(), self.started);
        let budget = self.budget.clone();
        let budget_max = self.budget_max;
        let auth = self.auth.clone();
        tokio::spawn(async move {
            loop {
                let batch = match inbound.message().await {
                    Ok(Some(b)) => b,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "peer stream ended");
                        break;
                    }
                };
                // A batch claiming another replica than the certificate names changes nothing
                // and ends the stream.
                if let Err(status) = auth.check(identity, batch.from, remote, "Dispatch") {
                    let _ = keep_open.send(Err(status)).await;
                    break;
                }
                if batch.from as usize >= n {
                    tracing::warn!(
                        from = batch.from,
                        "batch from a replica not in the config; closing stream"
                    );
                    break;
                }
                let from = ReplicaId(batch.from);
                let incarnation = match check_incarnation(&accepted, from, batch.incarnation) {
                    Ok(i) => i,
                    Err(status) => {
                        if let Some(at) = refused_at_ms.get(from.index()) {
                            at.store(started.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
                        }
                        let _ = keep_open.send(Err(status)).await;
                        break;
                    }
                };
                let mut messages = Vec::with_capacity(batch.messages.len());
                for bytes in &batch.messages {
                    match wire::decode(bytes, n) {
                        Ok(m) => messages.push(m),
                        Err(e) => {
                            metrics::counter!("epaxos_wire_errors_total",
                                "peer" => crate::server::metrics::peer_label(from.0))
                            .increment(1);
                            tracing::warn!(%from, error = %e, "dropping malformed peer message");
                        }
                    }
                }
                // Backpressure: a full bigChannel (in events or in bytes) slows the peer's
                // stream down.
                let size: usize = batch.messages.iter().map(|m| m.len()).sum();
                let size = u32::try_from(size.clamp(1, budget_max))
                    .expect("the byte budget fits a u32 (checked by RuntimeOptions::validate)");
                let Ok(budget) = budget.clone().acquire_many_owned(size).await else {
                    break;
                };
                let event = Event::Peer {
                    from,
                    incarnation,
                    messages,
                    budget,
                };
                if big.send(event).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

/// Refuses a data directory whose metadata records another number of replicas than `n` (the
/// log and checkpoint would otherwise be reported as corrupt, since their records are checked
/// against `n`).
fn check_cluster_size(dir: &std::path::Path, n: usize) -> Result<(), RuntimeError> {
    match storage::recorded_cluster_size(dir)? {
        Some(recorded) if recorded != n => Err(RuntimeError::ClusterSize {
            dir: dir.display().to_string(),
            recorded,
            configured: n,
        }),
        _ => Ok(()),
    }
}

/// Bytes in the files of `dir` and its subdirectories (0 for what cannot be read).
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Closes a stream whose batches carry no incarnation, or another one than the node recorded
/// for their sender. The node decides (`Node::hear`, in order with Joins, recording a first
/// one); this is its decision mirrored, so that a replaced incarnation learns at once that it
/// is refused.
fn check_incarnation(
    accepted: &[AtomicU64],
    from: ReplicaId,
    incarnation: u64,
) -> Result<Incarnation, Status> {
    let refuse = |why: String| {
        metrics::counter!("epaxos_peer_refused_total", "peer" => crate::server::metrics::peer_label(from.0))
            .increment(1);
        Err(Status::failed_precondition(why))
    };
    let Some(incarnation) = Incarnation::new(incarnation) else {
        metrics::counter!("epaxos_wire_errors_total", "peer" => crate::server::metrics::peer_label(from.0))
            .increment(1);
        tracing::warn!(%from, "peer batch without an incarnation; closing stream");
        return refuse("batch without an incarnation".to_string());
    };
    let recorded = accepted
        .get(from.index())
        .map_or(0, |a| a.load(Ordering::Relaxed));
    if recorded != 0 && recorded != incarnation.get() {
        tracing::error!(%from, %incarnation, recorded,
            "batch from a replaced incarnation of a peer (it lost its data and another \
             incarnation joined in its place): refused");
        return refuse(format!(
            "{from} is incarnation {incarnation} but {recorded} joined in its place: an \
             incarnation that lost its data directory may have forgotten promises; restart the \
             replica on an empty data directory to join again"
        ));
    }
    Ok(incarnation)
}

/// A Join's answer on the wire.
fn join_reply(a: JoinAnswer) -> proto::JoinReply {
    proto::JoinReply {
        previous_incarnation: a.previous.map_or(0, Incarnation::get),
        row_ends: a.row_ends,
        executed_prefix: a.executed_prefix,
        joining: a.joining,
    }
}

/// The wall clock in Unix milliseconds, for the core (which reads no clock): commands are
/// stamped with it and sessions expire by it (see `core::session`). A clock before the epoch
/// reads as 0, which the core takes for "no clock" and then proposes no expiry.
fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_are_validated_together_with_the_core_s() {
        let ok = RuntimeOptions::new(Options::new(ReplicaId(0), 3));
        assert!(ok.validate().is_ok(), "the defaults are valid");
        let mut o = ok.clone();
        o.checkpoint_every = 0;
        assert!(matches!(
            o.validate(),
            Err(RuntimeOptionsError::Zero("checkpoint_every"))
        ));
        let mut o = ok.clone();
        o.big_channel_max = DRAIN_MAX - 1;
        assert!(matches!(
            o.validate(),
            Err(RuntimeOptionsError::BigChannel(_))
        ));
        let mut o = ok.clone();
        o.core.batch_max = 0;
        assert!(matches!(o.validate(), Err(RuntimeOptionsError::Core(_))));
        let mut o = ok.clone();
        o.propose_timeout = Duration::ZERO;
        assert!(matches!(o.validate(), Err(RuntimeOptionsError::Timers)));
        // Each byte budget admits one item of the largest size and fits a u32 semaphore.
        let mut o = ok.clone();
        o.request_bytes_max = limits::CLIENT_GRPC_MESSAGE_BYTES_MAX - 1;
        assert!(matches!(
            o.validate(),
            Err(RuntimeOptionsError::Bytes {
                name: "request_bytes_max",
                ..
            })
        ));
        let mut o = ok.clone();
        o.core.pending_bytes_max = limits::COMMAND_BYTES_MAX - 1;
        assert!(matches!(
            o.validate(),
            Err(RuntimeOptionsError::Bytes {
                name: "pending_bytes_max",
                ..
            })
        ));
        let mut o = ok.clone();
        o.peer_queue_bytes_max = limits::MESSAGE_BYTES_MAX - 1;
        assert!(o.validate().is_err());
        let mut o = ok;
        o.big_channel_bytes_max = u32::MAX as usize + 1;
        assert!(o.validate().is_err());
    }
}
