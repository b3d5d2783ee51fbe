//! `client`: the command-line client and load generator of the EPaxos* key/value store.
//!
//! It speaks only the client contract, `proto/client.proto` (`Kv.Propose`, `Kv.Status`, and the
//! admin calls `Kv.MemberAdd`, `Kv.MemberRemove`), over TLS by default (see `Cluster::new`).

mod bench;
mod bench_target;
mod cluster;
mod endpoints;
mod etcd;
mod member;
mod oneshot;
mod plot;
mod session;
mod status;

use std::io::{IsTerminal, Read};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::cluster::{Cluster, TargetMode};
use crate::oneshot::Request;
use crate::session::RetryPolicy;

/// The most an admin call waits for the replicas' Status while learning the current members
/// (the call itself may take longer: `--timeout-ms`).
const SYNC_TIMEOUT: Duration = Duration::from_secs(5);

/// How results are printed (`-w`, as etcdctl's `--write-out`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Plain text: values as they are, one line per answer.
    Simple,
    /// One JSON document on stdout; 64-bit numbers as strings (the protobuf JSON mapping), so
    /// that tools reading them as doubles (jq) do not round them.
    Json,
    /// An aligned table with a header.
    Table,
}

#[derive(Debug, Parser)]
#[command(
    name = "client",
    version = epaxos_kv::VERSION_LONG,
    about = "Client and load generator for the EPaxos* replicated key/value store",
    after_help = "Where the cluster is: --endpoints (or EPAXOS_ENDPOINTS), else --config (or \
                  EPAXOS_CONFIG), else ./config.json.\n\
                  Exit status: 0 on success; 1 when `get` finds no key, `cas` does not swap, \
                  or `status` finds a replica unreachable, not serving, fenced out, or digests \
                  differing; 2 on errors."
)]
struct Cli {
    /// Cluster configuration file [env: EPAXOS_CONFIG] [default: config.json]. With
    /// --endpoints it is only read for the TLS settings.
    #[arg(long, global = true, env = "EPAXOS_CONFIG", hide_env = true)]
    config: Option<PathBuf>,
    /// The replicas' client addresses, host:port,... in replica id order (replica i is the
    /// i-th) [env: EPAXOS_ENDPOINTS]. Replaces the config's addresses.
    #[arg(
        long,
        global = true,
        env = "EPAXOS_ENDPOINTS",
        hide_env = true,
        value_delimiter = ','
    )]
    endpoints: Vec<String>,
    /// Plaintext, no TLS: only for replicas started with --insecure.
    #[arg(long, global = true)]
    insecure: bool,
    /// Output format.
    #[arg(short = 'w', long = "write-out", global = true, value_enum, default_value_t = Format::Simple)]
    write_out: Format,
    /// Request options given before the command (kept for scripts; `COMMAND --help` lists them).
    #[command(flatten)]
    early: EarlyRequestArgs,
    #[command(subcommand)]
    command: Command,
}

/// How a key/value request is sent: where, how long each attempt may take, how often it is
/// retried.
#[derive(Debug, Clone, Args)]
struct RequestArgs {
    /// Where requests go: `single` (one replica: the first, or --replica) or `round-robin`
    /// (successive requests to successive replicas; a retry goes to the next replica)
    /// [default: single].
    #[arg(long, value_enum)]
    target: Option<TargetMode>,
    /// The replica id for --target single (default: the first replica).
    #[arg(long)]
    replica: Option<u32>,
    /// Time allowed for each attempt of a request, in milliseconds [default: 5000].
    #[arg(long = "timeout-ms")]
    timeout_ms: Option<u64>,
    /// How many times a request that timed out or failed transiently (DEADLINE_EXCEEDED,
    /// UNAVAILABLE, RESOURCE_EXHAUSTED, or the connection broke) is sent again, with the same
    /// request id, after a backoff (20 ms doubling up to 500 ms, with jitter) [default: 3].
    #[arg(long)]
    retries: Option<u32>,
}

/// The same options before the command name (`client --target round-robin get k`), hidden
/// from help; the command's own take precedence.
#[derive(Debug, Clone, Args)]
struct EarlyRequestArgs {
    #[arg(long = "target", id = "early_target", value_enum, hide = true)]
    target: Option<TargetMode>,
    #[arg(long = "replica", id = "early_replica", hide = true)]
    replica: Option<u32>,
    #[arg(long = "timeout-ms", id = "early_timeout_ms", hide = true)]
    timeout_ms: Option<u64>,
    #[arg(long = "retries", id = "early_retries", hide = true)]
    retries: Option<u32>,
}

impl RequestArgs {
    /// These, completed by what was given before the command.
    fn or(self, early: &EarlyRequestArgs) -> RequestArgs {
        RequestArgs {
            target: self.target.or(early.target),
            replica: self.replica.or(early.replica),
            timeout_ms: self.timeout_ms.or(early.timeout_ms),
            retries: self.retries.or(early.retries),
        }
    }
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the value of KEY ("not found" on stderr and exit status 1 when absent).
    Get {
        /// The key to read.
        key: String,
        #[command(flatten)]
        request: RequestArgs,
    },
    /// Set KEY to VALUE (read from stdin when not given); prints OK.
    Put {
        /// The key to write.
        key: String,
        /// The value to store; without it, standard input is read to its end.
        value: Option<String>,
        #[command(flatten)]
        request: RequestArgs,
    },
    /// Remove KEY; prints whether it existed.
    Delete {
        /// The key to remove.
        key: String,
        #[command(flatten)]
        request: RequestArgs,
    },
    /// Compare-and-swap: `cas KEY EXPECTED NEW` sets KEY to NEW if it holds EXPECTED;
    /// `cas --expect-absent KEY NEW` sets it if it is absent. Prints whether the swap happened
    /// and otherwise the current value (exit status 1 when it did not).
    Cas {
        /// The key must be absent (instead of holding EXPECTED); give only KEY and NEW.
        #[arg(long = "expect-absent")]
        expect_absent: bool,
        /// The key to update.
        key: String,
        /// EXPECTED NEW, or just NEW with --expect-absent.
        #[arg(value_name = "EXPECTED|NEW", num_args = 1..=2, required = true)]
        values: Vec<String>,
        #[command(flatten)]
        request: RequestArgs,
    },
    /// Closed-loop load on our replicas or on etcd: throughput, latency histogram and
    /// percentiles; `bench sweep` and `bench chart` draw throughput against latency.
    Bench(bench::BenchArgs),
    /// Each replica's version, uptime, data size, health, peers, progress and state digest,
    /// and whether the digests agree.
    Status {
        /// Query only this replica.
        #[arg(long)]
        replica: Option<u32>,
        /// Same as `-w json` (kept for scripts).
        #[arg(long, hide = true)]
        json: bool,
        /// How long to wait for each replica, in milliseconds.
        #[arg(long = "status-timeout-ms", default_value_t = 1000)]
        status_timeout_ms: u64,
    },
    /// The cluster's configuration (`member list`) and the admin calls that change it
    /// (`member add`, `member remove`; they need the cluster's client certificate).
    #[command(subcommand)]
    Member(MemberCommand),
}

#[derive(Debug, Subcommand)]
enum MemberCommand {
    /// One line per member: id, peer address, client address, whether it is a member of the
    /// current epoch, whether it is reachable (it answered, or the replica reporting the
    /// configuration hears it). Replicas of the client's configuration that are not members
    /// are listed too. `-w table` and `-w json` add the epoch.
    List {
        /// How long to wait for each replica, in milliseconds.
        #[arg(long = "status-timeout-ms", default_value_t = 1000)]
        status_timeout_ms: u64,
    },
    /// Adds replica ID (started first, empty, with these addresses) in a new epoch; prints the
    /// new configuration once the change executed. Admin: needs the cluster's client
    /// certificate (client.pem, made by `replica certs`).
    Add {
        /// The new member's id: never used before in this cluster.
        id: u32,
        /// Where its peers reach it (host:port).
        peer_addr: String,
        /// Where clients reach it (host:port).
        client_addr: String,
        /// How long to wait for the change to execute, in milliseconds.
        #[arg(long = "timeout-ms", default_value_t = 30_000)]
        timeout_ms: u64,
    },
    /// Removes member ID (live or dead) in a new epoch; as `add`.
    Remove {
        /// The member to remove.
        id: u32,
        /// How long to wait for the change to execute, in milliseconds.
        #[arg(long = "timeout-ms", default_value_t = 30_000)]
        timeout_ms: u64,
    },
}

fn main() -> ExitCode {
    // An internal error still prints one line, never a backtrace (whatever RUST_BACKTRACE
    // says). SIGPIPE stays ignored (a replica closing a socket must not kill the client), so a
    // closed stdout (`client status | head -1`) shows up as a write error: println! panics
    // with it, and that ends the client quietly, as the error path below does.
    std::panic::set_hook(Box::new(|info| {
        let text = info.to_string();
        if text.contains("failed printing to stdout") {
            std::process::exit(0);
        }
        eprintln!("error: internal error (a bug): {}", text.replace('\n', " "));
    }));
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(code) => code,
        Err(e) if closed_stdout(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::from(2)
        }
    }
}

/// Whether `e` is a write to a stdout whose reader went away (`| head`): not worth a word.
fn closed_stdout(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

/// The error chain on one line.
fn one_line(e: &anyhow::Error) -> String {
    format!("{e:#}").replace('\n', " ")
}

/// Where the cluster is: `--endpoints`, else the config file.
fn load_cluster(cli: &Cli, timeout: Duration) -> Result<Cluster> {
    let explicit = cli.config.clone();
    let path = explicit
        .clone()
        .unwrap_or_else(|| PathBuf::from("config.json"));
    if !cli.endpoints.is_empty() {
        // The config (if there is one) only brings the TLS settings.
        let base = if path.exists() {
            Some(load_config(&path)?)
        } else if explicit.is_some() {
            bail!("config file {} does not exist", path.display());
        } else {
            None
        };
        let config = endpoints_config(&cli.endpoints, base)?;
        return Cluster::new(&config, timeout, cli.insecure);
    }
    if !path.exists() {
        let from = if std::env::var_os("EPAXOS_CONFIG").is_some() {
            "named by EPAXOS_CONFIG"
        } else if explicit.is_some() {
            "named by --config"
        } else {
            "the default"
        };
        bail!(
            "no cluster configuration: {} ({from}) does not exist; point at one with --config \
             FILE or EPAXOS_CONFIG=FILE, or name the replicas with --endpoints \
             host:port,... or EPAXOS_ENDPOINTS",
            path.display()
        );
    }
    Cluster::new(&load_config(&path)?, timeout, cli.insecure)
}

fn load_config(path: &std::path::Path) -> Result<epaxos_kv::server::config::Config> {
    // The error names the file and the problem (and already includes its cause).
    epaxos_kv::server::config::Config::load(path).map_err(|e| anyhow::anyhow!("{e}"))
}

/// A configuration whose replicas are `endpoints` (replica i at the i-th), with the TLS
/// settings of `base` or the defaults (taken from the current directory).
fn endpoints_config(
    endpoints: &[String],
    base: Option<epaxos_kv::server::config::Config>,
) -> Result<epaxos_kv::server::config::Config> {
    use epaxos_kv::server::config::{Config, HostPort, TlsSettings};
    let mut addrs = Vec::with_capacity(endpoints.len());
    for (i, e) in endpoints.iter().map(|e| e.trim()).enumerate() {
        if e.is_empty() {
            bail!("--endpoints: entry {} is empty", i + 1);
        }
        // A name stays a name: the client resolves it on each connect.
        addrs.push(HostPort::parse(e).map_err(|why| anyhow::anyhow!("--endpoints: {e}: {why}"))?);
    }
    let tls = base.map_or_else(TlsSettings::defaults, |c| c.tls);
    Ok(Config::for_client(addrs, tls))
}

async fn run(cli: Cli) -> Result<ExitCode> {
    if cli.insecure {
        eprintln!("warning: --insecure: plaintext, the replicas are not authenticated");
    }
    let format = cli.write_out;
    if let Command::Bench(args) = &cli.command {
        // The bench builds its own targets (it may load etcd rather than the config's
        // cluster) from the config file; the request options come before `bench`.
        let setup = bench::Setup {
            config: cli
                .config
                .clone()
                .unwrap_or_else(|| PathBuf::from("config.json")),
            target: cli.early.target.unwrap_or(TargetMode::Single),
            replica: cli.early.replica,
            insecure: cli.insecure,
            retries: cli.early.retries.unwrap_or(3),
        };
        let mut args = args.clone();
        args.json |= format == Format::Json;
        bench::main(setup, args).await?;
        return Ok(ExitCode::SUCCESS);
    }
    let (request, command) = match &cli.command {
        Command::Status {
            replica,
            json,
            status_timeout_ms,
        } => {
            let t = Duration::from_millis((*status_timeout_ms).max(1));
            let mut cluster = Arc::new(load_cluster(&cli, t)?);
            let replica = replica.or(cli.early.replica);
            if let Some(id) = replica.filter(|&id| cluster.index_of(id).is_none()) {
                // Not a configured replica: perhaps a member a change added.
                cluster = endpoints::sync(cluster, t, None).await?.cluster;
                cluster.check_replica(id)?;
            }
            let which = match replica {
                Some(id) => vec![cluster.check_replica(id)?],
                None => (0..cluster.n()).collect(),
            };
            let format = if *json { Format::Json } else { format };
            return status::run(cluster, which, t, format).await;
        }
        Command::Member(m) => {
            let (change, ms) = match m {
                MemberCommand::List { status_timeout_ms } => {
                    let t = Duration::from_millis((*status_timeout_ms).max(1));
                    let cluster = Arc::new(load_cluster(&cli, t)?);
                    return member::list(cluster, t, format).await;
                }
                MemberCommand::Add {
                    id,
                    peer_addr,
                    client_addr,
                    timeout_ms,
                } => (
                    member::Change::Add {
                        id: *id,
                        peer_addr: peer_addr.clone(),
                        client_addr: client_addr.clone(),
                    },
                    timeout_ms,
                ),
                MemberCommand::Remove { id, timeout_ms } => {
                    (member::Change::Remove { id: *id }, timeout_ms)
                }
            };
            let t = Duration::from_millis((*ms).max(1));
            let cluster = Arc::new(load_cluster(&cli, t)?);
            let cluster = endpoints::sync(cluster, t.min(SYNC_TIMEOUT), Some(endpoints::GRACE))
                .await?
                .cluster;
            return member::change(cluster, change, t, format).await;
        }
        Command::Get { key, request } => (request, Request::Get { key: key.clone() }),
        Command::Put {
            key,
            value,
            request,
        } => {
            let value = match value {
                Some(v) => v.clone().into_bytes(),
                None => read_stdin_value()?,
            };
            (
                request,
                Request::Put {
                    key: key.clone(),
                    value,
                },
            )
        }
        Command::Delete { key, request } => (request, Request::Delete { key: key.clone() }),
        Command::Cas {
            expect_absent,
            key,
            values,
            request,
        } => (
            request,
            cas_request(*expect_absent, key.clone(), values.clone())?,
        ),
        Command::Bench(_) => unreachable!("handled above"),
    };
    let request_args = request.clone().or(&cli.early);
    let timeout_ms = request_args.timeout_ms.unwrap_or(5000);
    if timeout_ms == 0 {
        bail!("--timeout-ms must be at least 1");
    }
    let timeout = Duration::from_millis(timeout_ms);
    let target = request_args.target.unwrap_or(TargetMode::Single);
    if target == TargetMode::RoundRobin && request_args.replica.is_some() {
        bail!("--replica applies only to --target single");
    }
    // A bad request is named before any replica is asked.
    command.validate()?;
    let cluster = Arc::new(load_cluster(&cli, timeout)?);
    // The current members, not only the configured replicas (see endpoints.rs).
    let cluster = endpoints::sync(cluster, timeout, Some(endpoints::GRACE))
        .await?
        .cluster;
    let policy = RetryPolicy::new(timeout, request_args.retries.unwrap_or(3));
    oneshot::run(
        cluster,
        target,
        request_args.replica,
        &policy,
        command,
        format,
    )
    .await
}

/// `put KEY` without a value: standard input to its end, at most one value's worth.
fn read_stdin_value() -> Result<Vec<u8>> {
    use epaxos_kv::core::command::VALUE_BYTES_MAX;
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprintln!("(reading the value from standard input; end it with Ctrl-D)");
    }
    let mut value = Vec::new();
    stdin
        .lock()
        .take(VALUE_BYTES_MAX as u64 + 1)
        .read_to_end(&mut value)
        .context("cannot read the value from standard input")?;
    if value.len() > VALUE_BYTES_MAX {
        bail!("the value on standard input is over {VALUE_BYTES_MAX} bytes, the most allowed");
    }
    Ok(value)
}

/// Reads `cas [--expect-absent] KEY EXPECTED NEW` / `KEY NEW`.
fn cas_request(expect_absent: bool, key: String, values: Vec<String>) -> Result<Request> {
    let mut it = values.into_iter();
    match (expect_absent, it.next(), it.next()) {
        (false, Some(expected), Some(new)) => Ok(Request::Cas {
            key,
            expected: Some(expected),
            new,
        }),
        (true, Some(new), None) => Ok(Request::Cas {
            key,
            expected: None,
            new,
        }),
        (false, _, _) => {
            bail!("cas needs KEY EXPECTED NEW (or --expect-absent KEY NEW)")
        }
        (true, _, _) => bail!("cas --expect-absent takes KEY NEW only (no EXPECTED)"),
    }
}
