//! `client`: the command-line client and load generator of the EPaxos* key/value store.
//!
//! It speaks only the client contract, `proto/client.proto` (`Kv.Propose`, `Kv.Status`), over
//! TLS by default (see `Cluster::new`).

mod bench;
mod bench_target;
mod cluster;
mod etcd;
mod oneshot;
mod plot;
mod session;
mod status;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::{Parser, Subcommand};

use crate::cluster::{Cluster, Picker, TargetMode};
use crate::oneshot::Request;
use crate::session::RetryPolicy;

#[derive(Debug, Parser)]
#[command(
    name = "client",
    version,
    about = "Client and load generator for the EPaxos* replicated key/value store",
    after_help = "Exit status: 0 on success; 1 when `get` finds no key, `cas` does not swap, \
                  or `status` finds a replica down or digests differing; 2 on errors."
)]
struct Cli {
    /// Cluster configuration file.
    #[arg(long, global = true, default_value = "config.json")]
    config: PathBuf,
    /// Where requests go: `single` (one replica: the first, or --replica) or `round-robin`
    /// (successive requests to successive replicas; a retry goes to the next replica).
    #[arg(long, global = true, value_enum, default_value_t = TargetMode::Single)]
    target: TargetMode,
    /// The replica id for --target single (default: the first replica). With `status`: query
    /// only this replica.
    #[arg(long, global = true)]
    replica: Option<u32>,
    /// Time allowed for each attempt of a request, in milliseconds.
    #[arg(long = "timeout-ms", global = true, default_value_t = 5000)]
    timeout_ms: u64,
    /// How many times a request that timed out or failed transiently (DEADLINE_EXCEEDED,
    /// UNAVAILABLE, RESOURCE_EXHAUSTED, or the connection broke) is sent again, with the same
    /// request id, after a backoff (20 ms doubling up to 500 ms, with jitter).
    #[arg(long, global = true, default_value_t = 3)]
    retries: u32,
    /// Plaintext, no TLS: only for replicas started with --insecure.
    #[arg(long, global = true)]
    insecure: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Print the value of KEY (`(not found)` and exit status 1 when absent).
    Get {
        /// The key to read.
        key: String,
    },
    /// Set KEY to VALUE; prints OK.
    Put {
        /// The key to write.
        key: String,
        /// The value to store.
        value: String,
    },
    /// Remove KEY; prints whether it existed.
    Delete {
        /// The key to remove.
        key: String,
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
    },
    /// Closed-loop load on our replicas or on etcd: throughput, latency histogram and
    /// percentiles; `bench sweep` and `bench chart` draw throughput against latency.
    Bench(bench::BenchArgs),
    /// Each replica's progress and state digest, and whether the digests agree.
    Status {
        /// One JSON array on stdout instead of a table.
        #[arg(long)]
        json: bool,
        /// How long to wait for each replica, in milliseconds.
        #[arg(long = "status-timeout-ms", default_value_t = 1000)]
        status_timeout_ms: u64,
    },
}

fn main() -> ExitCode {
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
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli) -> Result<ExitCode> {
    if cli.timeout_ms == 0 {
        bail!("--timeout-ms must be at least 1");
    }
    let timeout = Duration::from_millis(cli.timeout_ms);
    if cli.insecure {
        eprintln!("warning: --insecure: plaintext, the replicas are not authenticated");
    }

    if let Command::Status {
        json,
        status_timeout_ms,
    } = cli.command
    {
        let t = Duration::from_millis(status_timeout_ms.max(1));
        let cluster = Arc::new(Cluster::load(&cli.config, t, cli.insecure)?);
        let which = match cli.replica {
            Some(id) => vec![cluster.check_replica(id)?],
            None => (0..cluster.n()).collect(),
        };
        return status::run(cluster, which, t, json).await;
    }

    if let Command::Bench(args) = cli.command {
        // The bench builds its own targets: it may load etcd rather than the config's cluster.
        let setup = bench::Setup {
            config: cli.config,
            target: cli.target,
            replica: cli.replica,
            insecure: cli.insecure,
            retries: cli.retries,
        };
        bench::main(setup, args).await?;
        return Ok(ExitCode::SUCCESS);
    }

    let cluster = Arc::new(Cluster::load(&cli.config, timeout, cli.insecure)?);
    let start = match (cli.target, cli.replica) {
        (TargetMode::Single, Some(id)) => cluster.check_replica(id)?,
        (TargetMode::Single, None) => 0,
        (TargetMode::RoundRobin, Some(_)) => {
            bail!("--replica applies only to --target single")
        }
        // One-shot commands start at a random replica, so that repeated calls spread out.
        (TargetMode::RoundRobin, None) => rand::random_range(0..cluster.n()),
    };
    let policy = RetryPolicy::new(timeout, cli.retries);
    let request = match cli.command {
        Command::Get { key } => Request::Get { key },
        Command::Put { key, value } => Request::Put { key, value },
        Command::Delete { key } => Request::Delete { key },
        Command::Cas {
            expect_absent,
            key,
            values,
        } => cas_request(expect_absent, key, values)?,
        Command::Bench(_) => unreachable!("handled above"),
        Command::Status { .. } => unreachable!("handled above"),
    };
    let picker = Picker::new(cli.target, cluster.n(), start);
    oneshot::run(cluster, picker, cli.target, &policy, request).await
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
