//! `replica --config config.json --id N`: one EPaxos* key/value replica.
//! `replica certs --config config.json`: creates the cluster's missing TLS certificates.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use tracing_subscriber::EnvFilter;

use epaxos_kv::core::limits;
use epaxos_kv::core::replica::Options;
use epaxos_kv::server::config::Config;
use epaxos_kv::server::runtime::{self, RuntimeOptions};
use epaxos_kv::server::storage::Sync;
use epaxos_kv::server::{added, certs};

/// One replica of the EPaxos* key/value service.
#[derive(Parser, Debug)]
#[command(
    version = epaxos_kv::VERSION_LONG,
    about,
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct Args {
    #[command(subcommand)]
    command: Option<Sub>,
    /// Cluster configuration file.
    #[arg(long, default_value = "config.json")]
    config: String,
    /// Log lines as text, or as one JSON object per line (for log collectors). The level comes
    /// from RUST_LOG (default info; `RUST_LOG=epaxos_kv=debug` traces every message).
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// This replica's id in the configuration.
    #[arg(long, required = true)]
    id: Option<u32>,
    /// Where peers reach this replica: only for a replica being added (an id not in
    /// config.json), with --client-addr and --metrics-addr; kept in its data directory for
    /// later starts.
    #[arg(long)]
    peer_addr: Option<String>,
    /// Where clients reach this replica (an added replica only, see --peer-addr).
    #[arg(long)]
    client_addr: Option<String>,
    /// Where Prometheus reaches this replica's /metrics (an added replica only, see
    /// --peer-addr).
    #[arg(long)]
    metrics_addr: Option<String>,
    /// Plaintext listeners and peer links, nobody authenticated (every replica and client of
    /// the cluster must then run with --insecure). For experiments only; the default is TLS.
    #[arg(long)]
    insecure: bool,
    /// Thrifty mode: send PreAccept and Accept only to as many peers as the quorum needs.
    #[arg(long)]
    thrifty: bool,
    /// Most commands batched into one instance.
    #[arg(long, default_value_t = limits::BATCH_MAX)]
    batch_max: usize,
    /// Most uncommitted instances this replica leads at once. Proposals that arrive meanwhile
    /// wait and go out together: a low limit makes batches, not queues.
    #[arg(long, default_value_t = limits::INFLIGHT_MAX)]
    inflight_max: usize,
    /// Most client proposals waiting for an instance before new ones are refused.
    #[arg(long, default_value_t = limits::PENDING_MAX)]
    pending_max: usize,
    /// How long a client's Propose may wait for its command to execute, in milliseconds.
    #[arg(long, default_value_t = limits::PROPOSE_TIMEOUT.as_millis() as u64)]
    propose_timeout_ms: u64,
    /// Where this replica keeps its durable log (default: data/replica-<id>).
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// `fsync`: sync the log before any reply or message that depends on it (durable).
    /// `none`: never sync (survives a clean stop, not a crash); for experiments.
    #[arg(long, value_enum, default_value_t = SyncArg::Fsync)]
    sync: SyncArg,
    /// Write a checkpoint and cut the log each time this many more instances have been
    /// executed here and committed everywhere.
    #[arg(long, default_value_t = limits::CHECKPOINT_EVERY)]
    checkpoint_every: u64,
    /// Per row, how many instances a peer may fall behind what a majority executed before
    /// garbage collection stops waiting for it (a member down for longer catches up by
    /// snapshot when it returns). Bounds memory and disk with a member down. Default:
    /// 20,000 with 3 replicas; off with 5 or more, where one window of the catch-up is not
    /// yet proved safe (README, "retention"): set it there only knowingly.
    #[arg(long)]
    retention_instances: Option<u64>,
    /// The same retention in bytes: per row, the key and value bytes of the instances kept
    /// beyond what a majority executed for a member that has not; past either bound garbage
    /// collection stops waiting for it. Default: 256 MiB with 3 replicas; off with 5 or more,
    /// like --retention-instances.
    #[arg(long)]
    retention_bytes: Option<u64>,
    /// How often to send each peer a Watermark, which is also the heartbeat, in milliseconds.
    #[arg(long, default_value_t = limits::HEARTBEAT.as_millis() as u64)]
    heartbeat_ms: u64,
    /// Suspect a peer after this long without any message from it, in milliseconds (must
    /// exceed --heartbeat-ms).
    #[arg(long, default_value_t = limits::SUSPECT_AFTER.as_millis() as u64)]
    suspect_after_ms: u64,
    /// Take over (recover) an instance that execution has waited on for this long while it
    /// stays uncommitted, in milliseconds; later attempts back off.
    #[arg(long, default_value_t = limits::RECOVER_AFTER.as_millis() as u64)]
    recover_after_ms: u64,
    /// Most client connections held at once; one more is closed at once
    /// (epaxos_connections_refused_total).
    #[arg(long, default_value_t = limits::CLIENT_CONNECTIONS_MAX)]
    client_connections_max: usize,
    /// Most bytes of client commands waiting for an instance before new ones are refused.
    #[arg(long, default_value_t = limits::PENDING_BYTES_MAX)]
    pending_bytes_max: usize,
    /// bigChannel's capacity in bytes (client commands and peer message batches); a client
    /// proposal that does not fit is refused at once.
    #[arg(long, default_value_t = limits::BIG_CHANNEL_BYTES_MAX)]
    big_channel_bytes_max: usize,
    /// Capacity of each peer's outbound queue in bytes; past it messages are dropped and
    /// counted (the protocol resends what matters).
    #[arg(long, default_value_t = limits::PEER_QUEUE_BYTES_MAX)]
    peer_queue_bytes_max: usize,
    /// Most bytes of client request bodies held at once across all client connections; a
    /// request that does not fit is refused at once (RESOURCE_EXHAUSTED).
    #[arg(long, default_value_t = limits::CLIENT_REQUEST_BYTES_MAX)]
    request_bytes_max: usize,
    /// Expire a client session idle this long, in milliseconds; its late retries are then
    /// refused ("session expired") instead of answered. Replicas may differ: each only proposes
    /// expiries by it; whether one takes effect is decided alike everywhere.
    #[arg(long, default_value_t = limits::SESSION_TTL.as_millis() as u64)]
    session_ttl_ms: u64,
    /// Most client sessions held; a request that would open one more is refused
    /// (RESOURCE_EXHAUSTED) until idle sessions expire.
    #[arg(long, default_value_t = limits::SESSIONS_MAX)]
    sessions_max: usize,
    /// Threads running the replica's tasks (default: one per core). The protocol runs on one
    /// task whatever this is; fewer threads mean fewer cross-thread wake-ups per command, which
    /// on a machine shared with other processes (or replicas) costs less CPU (README,
    /// Benchmarks).
    #[arg(long, value_parser = clap::value_parser!(u16).range(1..=1024))]
    worker_threads: Option<u16>,
}

#[derive(Debug, clap::Subcommand)]
enum Sub {
    /// Creates what is missing of the cluster CA, each replica's certificate and a client
    /// certificate, in the configuration's `tls.cert_dir` (default data/certs; keys 0600).
    /// Never overwrites a file: run it again after adding a replica.
    Certs {
        /// Cluster configuration file.
        #[arg(long, default_value = "config.json")]
        config: String,
        /// Also the certificate of replica ID, being added (not in config.json), reached at
        /// --peer-addr and --client-addr.
        #[arg(long, requires_all = ["peer_addr", "client_addr"])]
        id: Option<u32>,
        /// The added replica's peer address (with --id).
        #[arg(long, requires = "id")]
        peer_addr: Option<String>,
        /// The added replica's client address (with --id).
        #[arg(long, requires = "id")]
        client_addr: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum SyncArg {
    Fsync,
    None,
}

/// mimalloc instead of glibc malloc: with allocations on the peer and gRPC threads freed on the
/// event loop's thread, glibc's per-thread arenas kept the resident memory of a long run
/// growing; see the issue notes for the side-by-side soak figures.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// A retention flag's value: as given (with a warning above 3 replicas), else its default with
/// 3 replicas and off (`u64::MAX`) with more, where only what every peer executed is collected
/// (the old rule: memory grows while a member is down, but no catch-up window exists).
fn retention(flag: &str, given: Option<u64>, n: usize, default: u64) -> u64 {
    match given {
        Some(r) => {
            if n > 3 {
                tracing::warn!(
                    flag,
                    value = r,
                    replicas = n,
                    "a retention with more than 3 replicas: a member returning past the \
                     retention may, in a window not yet proved closed, execute a recovered \
                     instance out of order (README, retention)"
                );
            }
            r
        }
        None if n > 3 => u64::MAX,
        None => default,
    }
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // One process-wide TLS provider (ring), whatever else the dependency tree enables.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match args.log_format {
        LogFormat::Text => logs
            .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
            .init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
    if let Some(Sub::Certs {
        config,
        id,
        peer_addr,
        client_addr,
    }) = &args.command
    {
        let mut config = Config::load(config).context("loading the cluster configuration")?;
        if let Some(id) = *id {
            // An added replica's entry, for its certificate only (see `server::added`).
            let given = added::Given {
                peer_addr: peer_addr.clone(),
                client_addr: client_addr.clone(),
                metrics_addr: Some("127.0.0.1:1".into()),
            };
            let nowhere = std::path::Path::new("/nonexistent-epaxos-certs");
            let (entry, added) = added::own_entry(&config, id, &given, nowhere)
                .map_err(anyhow::Error::msg)
                .context("checking --id")?;
            if added {
                config.replicas.push(entry);
            }
        }
        let created = certs::ensure(&config).context("creating certificates")?;
        for path in &created {
            println!("created {}", path.display());
        }
        if created.is_empty() {
            println!("certificates complete in {}", config.tls.cert_dir.display());
        }
        return Ok(());
    }
    let Some(id) = args.id else {
        anyhow::bail!("--id is required");
    };
    let config = Config::load(&args.config).context("loading the cluster configuration")?;
    let data_dir: std::path::PathBuf = args
        .data_dir
        .clone()
        .unwrap_or_else(|| format!("data/replica-{id}").into());
    let given = added::Given {
        peer_addr: args.peer_addr.clone(),
        client_addr: args.client_addr.clone(),
        metrics_addr: args.metrics_addr.clone(),
    };
    let (entry, is_added) = added::own_entry(&config, id, &given, &data_dir)
        .map_err(anyhow::Error::msg)
        .context("checking --id")?;
    let me = entry.id;
    // An added replica's core starts with epoch 0's rows like any other; it learns the
    // configurations that added it from its peers (see `server::join`).
    let mut core = Options::new(me, config.n());
    core.thrifty = args.thrifty;
    core.batch_max = args.batch_max;
    core.inflight_max = args.inflight_max;
    core.pending_max = args.pending_max;
    core.pending_bytes_max = args.pending_bytes_max;
    core.gc_executed = true;
    core.retention_instances = retention(
        "--retention-instances",
        args.retention_instances,
        config.n(),
        limits::RETENTION_INSTANCES,
    );
    core.retention_bytes = retention(
        "--retention-bytes",
        args.retention_bytes,
        config.n(),
        limits::RETENTION_BYTES,
    );
    core.watermark_every = Duration::from_millis(args.heartbeat_ms);
    core.suspect_after = Duration::from_millis(args.suspect_after_ms);
    core.recover_after = Duration::from_millis(args.recover_after_ms);
    core.session_ttl = Duration::from_millis(args.session_ttl_ms);
    core.sessions_max = args.sessions_max;
    let mut opts = RuntimeOptions::new(core);
    opts.propose_timeout = Duration::from_millis(args.propose_timeout_ms);
    opts.client_connections_max = args.client_connections_max;
    opts.big_channel_bytes_max = args.big_channel_bytes_max;
    opts.peer_queue_bytes_max = args.peer_queue_bytes_max;
    opts.request_bytes_max = args.request_bytes_max;
    opts.checkpoint_every = args.checkpoint_every;
    opts.insecure = args.insecure;
    opts.data_dir = data_dir;
    opts.sync = match args.sync {
        SyncArg::Fsync => Sync::Fsync,
        SyncArg::None => {
            tracing::warn!(
                "--sync none: the log is not synced; a crash can lose acknowledged writes"
            );
            Sync::None
        }
    };
    opts.validate().context("checking the options")?;
    if is_added {
        added::keep(&opts.data_dir, &entry)
            .map_err(anyhow::Error::msg)
            .context("keeping the added replica's addresses")?;
    }
    // What runs, from where, with what: the first line an operator looks for.
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        commit = epaxos_kv::GIT_COMMIT,
        config = %args.config,
        data_dir = %opts.data_dir.display(),
        id,
        n = config.n(),
        addr = %entry.addr,
        peer_addr = %entry.peer_addr,
        metrics_addr = %entry.metrics_addr,
        durability = if opts.sync == Sync::Fsync { "fsync" } else { "none (not crash-safe)" },
        tls = !opts.insecure,
        cert_dir = %config.tls.cert_dir.display(),
        thrifty = args.thrifty,
        added = is_added,
        "starting replica"
    );

    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = args.worker_threads {
        rt.worker_threads(usize::from(n));
    }
    let rt = rt
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let result = rt.block_on(async move {
        runtime::serve(config, entry, opts, shutdown_signal())
            .await
            .with_context(|| format!("replica {id}"))
    });
    // Peer links and open streams are abandoned, not awaited.
    rt.shutdown_timeout(Duration::from_millis(100));
    result
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {},
            _ = term.recv() => {},
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
    tracing::info!("shutting down");
}
