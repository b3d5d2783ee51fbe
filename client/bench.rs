//! `client bench`: a closed-loop load generator, for our replicas or for etcd.
//!
//! `--concurrency` workers each own a session and keep exactly one request outstanding: send,
//! wait for the answer, send the next. Latencies go into per-worker HdrHistograms, merged at the
//! end and once a second (the progress line, and the per-second series of `--json` and
//! `--plot`). `bench sweep` runs one such bench per concurrency level and draws throughput
//! against latency; `bench chart` draws that curve from saved `--json` lines (`bench/compare.sh`
//! uses it). How requests are sent, retried and spread is in `bench_target`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::{Args, Subcommand, ValueEnum};
use epaxos_kv::core::command::{KEY_BYTES_MAX, VALUE_BYTES_MAX};
use hdrhistogram::Histogram;
use rand::distr::Alphanumeric;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio::task::JoinSet;

use crate::bench_target::{avoidance, Backend, Op, Targets, Worker};
use crate::cluster::{Cluster, TargetMode};
use crate::plot::{self, Point, Second};

/// The system under load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum System {
    /// Our replicas, from --config.
    Epaxos,
    /// etcd members (v3 API, plaintext), from --endpoints.
    Etcd,
}

/// What every bench run takes.
#[derive(Debug, Clone, Args)]
pub struct LoadArgs {
    /// How long to issue requests, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Number of distinct keys (key-000000000000 ...).
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    /// Percentage of requests that are PUTs; the rest are GETs (linearizable on etcd too).
    #[arg(long = "write-pct", default_value_t = 50,
          value_parser = clap::value_parser!(u8).range(0..=100))]
    pub write_pct: u8,
    /// Percentage of requests on one hot key (key number 0); the rest pick a key uniformly.
    #[arg(long = "conflict-pct", default_value_t = 0,
          value_parser = clap::value_parser!(u8).range(0..=100))]
    pub conflict_pct: u8,
    /// Size of each written value, in bytes.
    #[arg(long = "value-size", default_value_t = 16)]
    pub value_size: usize,
    /// Size of each key, in bytes ("key-" and a zero-padded number).
    #[arg(long = "key-size", default_value_t = 16)]
    pub key_size: usize,
    /// The system to load: our replicas (--config) or etcd (--endpoints).
    #[arg(long, value_enum, default_value_t = System::Epaxos)]
    pub system: System,
    /// With --system etcd: the members' client URLs, host:port,host:port,... (plaintext).
    /// --target single uses the first (or --replica N, counted from 0).
    #[arg(long)]
    pub endpoints: Option<String>,
    /// Time allowed for each attempt, in milliseconds (the bench's own; --timeout-ms does not
    /// apply). Short, so that a round-robin worker soon moves on from a slow replica.
    #[arg(long = "attempt-timeout-ms", default_value_t = 1000)]
    pub attempt_timeout_ms: u64,
    /// After the deadline, how long to wait for outstanding requests, in milliseconds
    /// (default: the attempt timeout plus 1500).
    #[arg(long = "drain-ms")]
    pub drain_ms: Option<u64>,
    /// A name for this run in --json output and charts (default: the system's name).
    #[arg(long)]
    pub label: Option<String>,
    /// Round-robin workers keep sending to a replica that times out (no avoidance): only to
    /// show what the avoidance is for (tests/bench.rs).
    #[arg(long = "no-avoid", hide = true)]
    pub no_avoid: bool,
}

/// Options of `client bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// Boxed: a sweep's options would make every `client` command as large as they are.
    #[command(subcommand)]
    pub command: Option<Box<BenchCommand>>,
    #[command(flatten)]
    pub load: LoadArgs,
    /// Closed-loop workers, each with its own session and one request outstanding.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Print one JSON line with the results on stdout, with a per-second series (progress still
    /// goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// No progress line each second.
    #[arg(long)]
    pub quiet: bool,
    /// Draw throughput and p50/p99 latency over time into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
}

/// `bench sweep` and `bench chart`.
#[derive(Debug, Clone, Subcommand)]
pub enum BenchCommand {
    /// Runs one bench per concurrency level and draws the throughput-vs-latency curve.
    Sweep(SweepArgs),
    /// Draws the throughput-vs-latency chart of saved `bench --json` lines, one curve per label.
    Chart(ChartArgs),
}

/// Options of `client bench sweep`.
#[derive(Debug, Clone, Args)]
pub struct SweepArgs {
    /// The concurrency levels, run in this order.
    #[arg(long, value_delimiter = ',', default_value = "1,4,16,64,256")]
    pub concurrency: Vec<usize>,
    #[command(flatten)]
    pub load: LoadArgs,
    /// One JSON line per level on stdout.
    #[arg(long)]
    pub json: bool,
    /// Draw the throughput-vs-latency curve into this SVG file.
    #[arg(long, value_name = "FILE.svg")]
    pub plot: Option<PathBuf>,
}

/// Options of `client bench chart`.
#[derive(Debug, Clone, Args)]
pub struct ChartArgs {
    /// Files of `bench --json` lines (or `-` for stdin); lines with the same label form a curve.
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
    /// The SVG file to write.
    #[arg(long, value_name = "FILE.svg")]
    pub out: PathBuf,
    /// The chart's title.
    #[arg(long, default_value = "throughput vs latency")]
    pub title: String,
}

/// What `client` itself knows that the bench needs: where the cluster is and how to reach it.
pub struct Setup {
    pub config: PathBuf,
    pub target: TargetMode,
    pub replica: Option<u32>,
    pub insecure: bool,
    pub retries: u32,
}

/// Everything a worker needs, shared read-only.
struct Plan {
    keys: u64,
    key_digits: usize,
    write_pct: u8,
    conflict_pct: u8,
    value_size: usize,
}

impl Plan {
    /// Checks the load options and derives the key format.
    fn new(load: &LoadArgs) -> Result<Plan> {
        if !(load.duration.is_finite() && load.duration > 0.0 && load.duration < 1e7) {
            bail!(
                "--duration must be a positive number of seconds, not {}",
                load.duration
            );
        }
        if load.keys == 0 {
            bail!("--keys must be at least 1");
        }
        if load.attempt_timeout_ms == 0 {
            bail!("--attempt-timeout-ms must be at least 1");
        }
        if load.value_size > VALUE_BYTES_MAX {
            bail!(
                "--value-size {} exceeds the limit of {VALUE_BYTES_MAX} bytes",
                load.value_size
            );
        }
        if load.key_size > KEY_BYTES_MAX {
            bail!(
                "--key-size {} exceeds the limit of {KEY_BYTES_MAX} bytes",
                load.key_size
            );
        }
        let needed = (load.keys - 1).to_string().len();
        let key_digits = load.key_size.saturating_sub("key-".len());
        if key_digits < needed {
            bail!(
                "--key-size {} is too small for --keys {}: need at least {} bytes",
                load.key_size,
                load.keys,
                needed + "key-".len()
            );
        }
        Ok(Plan {
            keys: load.keys,
            key_digits,
            write_pct: load.write_pct,
            conflict_pct: load.conflict_pct,
            value_size: load.value_size,
        })
    }

    fn key(&self, i: u64) -> Bytes {
        Bytes::from(format!("key-{i:0w$}", w = self.key_digits))
    }

    fn next_op(&self, rng: &mut impl Rng, values: &[Bytes]) -> Op {
        let hot = rng.random_range(0..100u8) < self.conflict_pct;
        let key = self.key(if hot {
            0
        } else {
            rng.random_range(0..self.keys)
        });
        if rng.random_range(0..100u8) < self.write_pct {
            let value = values[rng.random_range(0..values.len())].clone();
            Op::Put { key, value }
        } else {
            Op::Get { key }
        }
    }
}

/// Latency histogram in microseconds, 1 us to 1 hour, 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant histogram bounds are valid")
}

/// One worker's counters, behind a mutex that only the once-a-second reporter contends for.
struct Stats {
    total: Histogram<u64>,
    interval: Histogram<u64>,
    ops: u64,
    errors: u64,
    /// Retries of requests (answered or not).
    retries: u64,
    errors_by_kind: BTreeMap<String, u64>,
    /// Answers per replica index.
    by_replica: Vec<u64>,
    /// Whether a request is outstanding (for counting the ones cut off at the end).
    busy: bool,
    first_error: Option<String>,
}

impl Stats {
    fn new(n: usize) -> Stats {
        Stats {
            total: histogram(),
            interval: histogram(),
            ops: 0,
            errors: 0,
            retries: 0,
            errors_by_kind: BTreeMap::new(),
            by_replica: vec![0; n],
            busy: false,
            first_error: None,
        }
    }
}

fn lock(m: &Mutex<Stats>) -> MutexGuard<'_, Stats> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

async fn worker(
    targets: Arc<Targets>,
    plan: Arc<Plan>,
    stats: Arc<Mutex<Stats>>,
    start: usize,
    deadline: Instant,
) {
    let mut rng = SmallRng::from_rng(&mut rand::rng());
    // A few values per worker, reused: generating them per request would cost more than
    // sending 1 MiB values does.
    let values: Vec<Bytes> = (0..8)
        .map(|_| {
            let v: Vec<u8> = (&mut rng)
                .sample_iter(Alphanumeric)
                .take(plan.value_size)
                .collect();
            Bytes::from(v)
        })
        .collect();
    let mut session = Worker::new(start);
    while Instant::now() < deadline {
        let op = plan.next_op(&mut rng, &values);
        lock(&stats).busy = true;
        let began = Instant::now();
        let result = targets.call(&mut session, &op, deadline, &mut rng).await;
        let us = began.elapsed().as_micros().try_into().unwrap_or(u64::MAX);
        let mut s = lock(&stats);
        s.busy = false;
        match result {
            Ok(ok) => {
                s.ops += 1;
                s.retries += u64::from(ok.attempts - 1);
                s.total.saturating_record(us);
                s.interval.saturating_record(us);
                if let Some(c) = s.by_replica.get_mut(ok.replica) {
                    *c += 1;
                }
            }
            Err(fail) => {
                s.errors += 1;
                s.retries += u64::from(fail.attempts - 1);
                let mut kind = fail.kind;
                if fail.stopped {
                    kind.push_str(" (not retried: deadline)");
                }
                *s.errors_by_kind.entry(kind).or_default() += 1;
                if s.first_error.is_none() {
                    s.first_error = Some(if fail.attempts == 1 {
                        fail.message
                    } else {
                        format!(
                            "gave up after {} attempts; last error: {}",
                            fail.attempts, fail.message
                        )
                    });
                }
            }
        }
    }
}

/// Collects one `Second` a second (and the last partial one when `done` is notified), printing a
/// progress line for each unless `quiet`.
async fn reporter(
    workers: Arc<Vec<Arc<Mutex<Stats>>>>,
    start: Instant,
    done: Arc<Notify>,
    quiet: bool,
) -> Vec<Second> {
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::from_std(start) + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let mut interval = histogram();
    let (mut last_ops, mut last_errors, mut last_at) = (0u64, 0u64, start);
    let mut series = Vec::new();
    loop {
        let last = tokio::select! {
            _ = tick.tick() => false,
            _ = done.notified() => true,
        };
        interval.reset();
        let (mut ops, mut errors) = (0u64, 0u64);
        for w in workers.iter() {
            let mut s = lock(w);
            ops += s.ops;
            errors += s.errors;
            // Both histograms have the same bounds, so adding cannot fail.
            let _ = interval.add(&s.interval);
            s.interval.reset();
        }
        let now = Instant::now();
        let secs = (now - last_at).as_secs_f64();
        let q = |q: f64| {
            if interval.is_empty() {
                0.0
            } else {
                interval.value_at_quantile(q) as f64 / 1e3
            }
        };
        // A last sliver (the drain after the deadline) says little: keep it only if it is long
        // enough to mean something.
        if !last || secs >= 0.25 {
            let second = Second {
                t_s: (now - start).as_secs_f64(),
                ops: ops - last_ops,
                errors: errors - last_errors,
                ops_per_sec: (ops - last_ops) as f64 / secs.max(1e-9),
                p50_ms: q(0.5),
                p99_ms: q(0.99),
            };
            if !quiet && !last {
                eprintln!(
                    "[{:>5.1}s] {:>9.0} ops/s  errors {:>5}  p50 {:>7.2} ms  p99 {:>7.2} ms  total ops {}",
                    second.t_s, second.ops_per_sec, second.errors, second.p50_ms, second.p99_ms, ops,
                );
            }
            series.push(second);
        }
        if last {
            return series;
        }
        (last_ops, last_errors, last_at) = (ops, errors, now);
    }
}

/// What one run measured.
struct Summary {
    concurrency: usize,
    elapsed: Duration,
    ops: u64,
    errors: u64,
    retries: u64,
    cut_off: usize,
    total: Histogram<u64>,
    by_kind: BTreeMap<String, u64>,
    by_replica: Vec<u64>,
    first_error: Option<String>,
    series: Vec<Second>,
}

impl Summary {
    fn ops_per_sec(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn ms(&self, q: f64) -> f64 {
        if self.total.is_empty() {
            0.0
        } else {
            self.total.value_at_quantile(q) as f64 / 1e3
        }
    }

    fn min_ms(&self) -> f64 {
        if self.total.is_empty() {
            0.0
        } else {
            self.total.min() as f64 / 1e3
        }
    }

    fn point(&self) -> Point {
        Point {
            ops_per_sec: self.ops_per_sec(),
            p50_ms: self.ms(0.5),
            p99_ms: self.ms(0.99),
            tag: format!("c{}", self.concurrency),
        }
    }
}

/// Builds the targets of the chosen system, and checks that at least one answers.
async fn targets(setup: &Setup, load: &LoadArgs, plan: &Plan) -> Result<Arc<Targets>> {
    let attempt_timeout = Duration::from_millis(load.attempt_timeout_ms);
    let (backend, names) = match load.system {
        System::Epaxos => {
            if load.endpoints.is_some() {
                bail!("--endpoints applies to --system etcd; our replicas come from --config");
            }
            let cluster = Arc::new(Cluster::load(
                &setup.config,
                attempt_timeout,
                setup.insecure,
            )?);
            // The current members, not only config.json's replicas (see endpoints.rs).
            let sync_timeout = attempt_timeout.max(Duration::from_secs(3));
            let cluster =
                crate::endpoints::sync(cluster, sync_timeout, Some(crate::endpoints::GRACE))
                    .await?
                    .cluster;
            let names = (0..cluster.n())
                .map(|i| format!("replica {} at {}", cluster.id(i), cluster.addr(i)))
                .collect();
            (Backend::Ours(cluster), names)
        }
        System::Etcd => {
            let Some(endpoints) = &load.endpoints else {
                bail!("--system etcd needs --endpoints host:port[,host:port...]");
            };
            let clients = crate::etcd::connect(endpoints, attempt_timeout)?;
            let names = clients
                .iter()
                .map(|(n, _)| format!("etcd at {n}"))
                .collect();
            (
                Backend::Etcd(clients.into_iter().map(|(_, c)| c).collect()),
                names,
            )
        }
    };
    let n: usize = match &backend {
        Backend::Ours(c) => c.n(),
        Backend::Etcd(c) => c.len(),
    };
    let single = match (setup.target, setup.replica, &backend) {
        (TargetMode::Single, Some(id), Backend::Ours(c)) => c.check_replica(id)?,
        (TargetMode::Single, Some(id), _) if id as usize >= n => bail!(
            "--replica {id}: there are only {n} targets (ids 0..={})",
            n - 1
        ),
        (TargetMode::Single, Some(id), _) => id as usize,
        (TargetMode::Single, None, _) => 0,
        (TargetMode::RoundRobin, Some(_), _) => {
            bail!("--replica applies only to --target single")
        }
        (TargetMode::RoundRobin, None, _) => 0,
    };
    let targets = Arc::new(Targets {
        backend,
        names,
        mode: setup.target,
        single,
        attempt_timeout,
        retries: setup.retries,
        avoid: avoidance(n, attempt_timeout),
        avoiding: !load.no_avoid,
    });
    // Probe first, so that a missing cluster is an error rather than a run of failures.
    let probe_timeout = attempt_timeout.max(Duration::from_secs(3));
    let which: Vec<usize> = match setup.target {
        TargetMode::Single => vec![single],
        TargetMode::RoundRobin => (0..n).collect(),
    };
    let mut problems = Vec::new();
    for &r in &which {
        if let Err(e) = targets.probe(r, plan.key(0), probe_timeout).await {
            problems.push(e);
        }
    }
    if problems.len() == which.len() {
        bail!("cannot reach the targets: {}", problems.join("; "));
    }
    for p in &problems {
        eprintln!("warning: {p}; round-robin workers will avoid it while it does not answer");
    }
    Ok(targets)
}

/// Runs `concurrency` workers for the duration and collects what they measured.
async fn run_load(
    targets: Arc<Targets>,
    plan: Arc<Plan>,
    load: &LoadArgs,
    concurrency: usize,
    quiet: bool,
) -> Result<Summary> {
    if concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let duration = Duration::from_secs_f64(load.duration);
    let drain = Duration::from_millis(
        load.drain_ms
            .unwrap_or(load.attempt_timeout_ms.saturating_add(1500)),
    );
    let n = targets.n();
    let stats: Arc<Vec<Arc<Mutex<Stats>>>> = Arc::new(
        (0..concurrency)
            .map(|_| Arc::new(Mutex::new(Stats::new(n))))
            .collect(),
    );
    let start = Instant::now();
    let deadline = start + duration;
    let done = Arc::new(Notify::new());
    let progress = tokio::spawn(reporter(stats.clone(), start, done.clone(), quiet));
    let mut set = JoinSet::new();
    for (i, s) in stats.iter().enumerate() {
        // Round-robin workers start at successive replicas so that the load is spread from the
        // first request on.
        set.spawn(worker(
            targets.clone(),
            plan.clone(),
            s.clone(),
            i % n,
            deadline,
        ));
    }
    let drain_deadline = tokio::time::Instant::from_std(deadline + drain);
    let mut cut_off = 0usize;
    loop {
        match tokio::time::timeout_at(drain_deadline, set.join_next()).await {
            Ok(None) => break,
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) => bail!("a bench worker failed: {e}"),
            Err(_) => {
                cut_off = stats.iter().filter(|s| lock(s).busy).count();
                set.abort_all();
                break;
            }
        }
    }
    let elapsed = start.elapsed();
    done.notify_one();
    let series = progress.await.context("the progress reporter failed")?;

    let mut summary = Summary {
        concurrency,
        elapsed,
        ops: 0,
        errors: 0,
        retries: 0,
        cut_off,
        total: histogram(),
        by_kind: BTreeMap::new(),
        by_replica: vec![0; n],
        first_error: None,
        series,
    };
    for s in stats.iter() {
        let s = lock(s);
        summary
            .total
            .add(&s.total)
            .context("merging latency histograms")?;
        summary.ops += s.ops;
        summary.errors += s.errors;
        summary.retries += s.retries;
        for (k, v) in &s.errors_by_kind {
            *summary.by_kind.entry(k.clone()).or_default() += v;
        }
        for (a, b) in summary.by_replica.iter_mut().zip(&s.by_replica) {
            *a += b;
        }
        if summary.first_error.is_none() {
            summary.first_error.clone_from(&s.first_error);
        }
    }
    Ok(summary)
}

/// Ten latency buckets, log-spaced from the fastest to the slowest answer (linear ones, as `hey`
/// draws, put nearly everything in the first bar once the tail is long): (upper bound in ms,
/// count).
fn buckets(h: &Histogram<u64>) -> Vec<(f64, u64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let (lo, hi) = (h.min().max(1) as f64, h.max().max(1) as f64);
    let n = if hi > lo { 10 } else { 1 };
    let bounds: Vec<f64> = (1..=n)
        .map(|i| lo * (hi / lo).powf(i as f64 / n as f64))
        .collect();
    let mut counts = vec![0u64; n];
    for v in h.iter_recorded() {
        let x = v.value_iterated_to() as f64;
        let i = bounds
            .iter()
            .position(|b| x <= b * (1.0 + 1e-9))
            .unwrap_or(n - 1);
        counts[i] += v.count_at_value();
    }
    bounds.into_iter().map(|b| b / 1e3).zip(counts).collect()
}

/// The histogram with bars, as `hey` and etcd's benchmark print it.
fn histogram_text(h: &Histogram<u64>) -> String {
    let b = buckets(h);
    let top = b.iter().map(|(_, c)| *c).max().unwrap_or(0).max(1);
    let mut out = String::from("latency histogram (ms; each bucket up to its bound):\n");
    for (bound, count) in b {
        let bar = "■".repeat(((count as f64 / top as f64) * 40.0).round() as usize);
        out.push_str(&format!("  {bound:>10.3} [{count:>9}] |{bar}\n"));
    }
    out
}

fn summary_json(s: &Summary, load: &LoadArgs, setup: &Setup) -> Value {
    let buckets: Vec<Value> = buckets(&s.total)
        .into_iter()
        .map(|(le, count)| json!({"le_ms": le, "count": count}))
        .collect();
    json!({
        "label": label(load),
        "system": match load.system { System::Epaxos => "epaxos", System::Etcd => "etcd" },
        "ops": s.ops,
        "errors": s.errors,
        "ops_per_sec": s.ops_per_sec(),
        "min_ms": s.min_ms(),
        "mean_ms": s.total.mean() / 1e3,
        "stddev_ms": s.total.stdev() / 1e3,
        "p50_ms": s.ms(0.5),
        "p90_ms": s.ms(0.9),
        "p99_ms": s.ms(0.99),
        "p999_ms": s.ms(0.999),
        "max_ms": s.total.max() as f64 / 1e3,
        "retries": s.retries,
        "cut_off": s.cut_off,
        "errors_by_kind": s.by_kind,
        "ops_by_replica": s.by_replica,
        "histogram": buckets,
        "series": s.series,
        "elapsed_s": s.elapsed.as_secs_f64(),
        "duration_s": load.duration,
        "target": setup.target.name(),
        "concurrency": s.concurrency,
        "keys": load.keys,
        "key_size": load.key_size,
        "write_pct": load.write_pct,
        "conflict_pct": load.conflict_pct,
        "value_size": load.value_size,
        "attempt_timeout_ms": load.attempt_timeout_ms,
    })
}

fn label(load: &LoadArgs) -> String {
    load.label.clone().unwrap_or_else(|| {
        match load.system {
            System::Epaxos => "epaxos",
            System::Etcd => "etcd",
        }
        .to_string()
    })
}

fn print_summary(s: &Summary, targets: &Targets, drain_ms: u64) {
    println!(
        "ops {} in {:.2} s: {:.1} ops/s; errors {}; retries {}",
        s.ops,
        s.elapsed.as_secs_f64(),
        s.ops_per_sec(),
        s.errors,
        s.retries
    );
    print!("{}", histogram_text(&s.total));
    println!(
        "latency ms: min {:.3}  mean {:.3}  stddev {:.3}  max {:.3}",
        s.min_ms(),
        s.total.mean() / 1e3,
        s.total.stdev() / 1e3,
        s.total.max() as f64 / 1e3
    );
    println!(
        "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}",
        s.ms(0.5),
        s.ms(0.9),
        s.ms(0.99),
        s.ms(0.999)
    );
    let shares: Vec<String> = s
        .by_replica
        .iter()
        .enumerate()
        .map(|(i, c)| format!("{} {c}", targets.names[i]))
        .collect();
    println!("answers by target: {}", shares.join(", "));
    if !s.by_kind.is_empty() {
        let kinds: Vec<String> = s.by_kind.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!("errors by kind: {}", kinds.join(", "));
    }
    if s.cut_off > 0 {
        println!(
            "{} requests were still outstanding {drain_ms} ms after the deadline and were abandoned",
            s.cut_off
        );
    }
}

/// Runs `client bench` (one run, a sweep, or a chart).
pub async fn main(setup: Setup, args: BenchArgs) -> Result<()> {
    match args.command.map(|c| *c) {
        Some(BenchCommand::Chart(c)) => chart(&c),
        Some(BenchCommand::Sweep(s)) => sweep(&setup, &s).await,
        None => {
            let plan = Arc::new(Plan::new(&args.load)?);
            if args.concurrency == 0 {
                bail!("--concurrency must be at least 1");
            }
            let targets = targets(&setup, &args.load, &plan).await?;
            let load = &args.load;
            if !args.json {
                println!(
                    "bench: {} s, {} target {}, {} targets, concurrency {}, keys {} ({} B), \
                     writes {}%, conflicts {}%, values {} B, attempt timeout {} ms, retries {}",
                    load.duration,
                    label(load),
                    setup.target.name(),
                    targets.n(),
                    args.concurrency,
                    load.keys,
                    load.key_size,
                    load.write_pct,
                    load.conflict_pct,
                    load.value_size,
                    load.attempt_timeout_ms,
                    setup.retries,
                );
            }
            let s = run_load(targets.clone(), plan, load, args.concurrency, args.quiet).await?;
            if args.json {
                println!("{}", summary_json(&s, load, &setup));
            } else {
                let drain = load
                    .drain_ms
                    .unwrap_or(load.attempt_timeout_ms.saturating_add(1500));
                print_summary(&s, &targets, drain);
            }
            if let Some(e) = &s.first_error {
                eprintln!("first error: {e}");
            }
            if let Some(path) = &args.plot {
                let title = format!(
                    "{}, {}, concurrency {}, {}% writes",
                    label(load),
                    setup.target.name(),
                    args.concurrency,
                    load.write_pct
                );
                plot::timeline(path, &title, &s.series)?;
                eprintln!("wrote {}", path.display());
            }
            Ok(())
        }
    }
}

/// `bench sweep`: one run per level, a table (or JSON lines), and the curve.
async fn sweep(setup: &Setup, args: &SweepArgs) -> Result<()> {
    if args.concurrency.is_empty() || args.concurrency.contains(&0) {
        bail!("--concurrency needs levels of at least 1, e.g. 1,4,16,64,256");
    }
    let plan = Arc::new(Plan::new(&args.load)?);
    let targets = targets(setup, &args.load, &plan).await?;
    if !args.json {
        println!(
            "sweep: {} target {}, {} s per level, writes {}%",
            label(&args.load),
            setup.target.name(),
            args.load.duration,
            args.load.write_pct
        );
        println!(
            "{:>11} {:>11} {:>9} {:>9} {:>9} {:>8}",
            "concurrency", "ops/s", "p50 ms", "p99 ms", "p99.9 ms", "errors"
        );
    }
    let mut points = Vec::new();
    for &c in &args.concurrency {
        let s = run_load(targets.clone(), plan.clone(), &args.load, c, true).await?;
        if args.json {
            println!("{}", summary_json(&s, &args.load, setup));
        } else {
            println!(
                "{:>11} {:>11.0} {:>9.3} {:>9.3} {:>9.3} {:>8}",
                c,
                s.ops_per_sec(),
                s.ms(0.5),
                s.ms(0.99),
                s.ms(0.999),
                s.errors
            );
        }
        points.push(s.point());
    }
    if let Some(path) = &args.plot {
        let title = format!(
            "{}, {}, {}% writes: throughput vs latency",
            label(&args.load),
            setup.target.name(),
            args.load.write_pct
        );
        plot::curves(path, &title, &[(label(&args.load), points)])?;
        eprintln!("wrote {}", path.display());
    }
    Ok(())
}

/// `bench chart`: curves from saved JSON lines, grouped by label, in order of appearance.
fn chart(args: &ChartArgs) -> Result<()> {
    let mut curves: Vec<(String, Vec<Point>)> = Vec::new();
    for path in &args.inputs {
        let text = read_input(path)?;
        for (no, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let v: Value = serde_json::from_str(line)
                .with_context(|| format!("{}:{}: not a JSON line", path.display(), no + 1))?;
            let num = |k: &str| {
                v.get(k)
                    .and_then(Value::as_f64)
                    .with_context(|| format!("{}:{}: no number \"{k}\"", path.display(), no + 1))
            };
            let point = Point {
                ops_per_sec: num("ops_per_sec")?,
                p50_ms: num("p50_ms")?,
                p99_ms: num("p99_ms")?,
                tag: format!("c{}", num("concurrency")?),
            };
            let label = v
                .get("label")
                .and_then(Value::as_str)
                .unwrap_or("unlabelled")
                .to_string();
            match curves.iter_mut().find(|(l, _)| *l == label) {
                Some((_, pts)) => pts.push(point),
                None => curves.push((label, vec![point])),
            }
        }
    }
    if curves.is_empty() {
        bail!("no JSON lines to draw");
    }
    plot::curves(&args.out, &args.title, &curves)?;
    eprintln!("wrote {}", args.out.display());
    Ok(())
}

fn read_input(path: &Path) -> Result<String> {
    if path == Path::new("-") {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut s).context("reading stdin")?;
        Ok(s)
    } else {
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(write_pct: u8, conflict_pct: u8) -> Plan {
        Plan {
            keys: 1000,
            key_digits: 12,
            write_pct,
            conflict_pct,
            value_size: 16,
        }
    }

    #[test]
    fn keys_are_16_bytes() {
        let p = plan(0, 0);
        assert_eq!(&p.key(7)[..], b"key-000000000007");
    }

    #[test]
    fn mix_follows_percentages() {
        let mut rng = SmallRng::seed_from_u64(1);
        let values = vec![Bytes::from_static(b"0123456789abcdef")];
        let all_hot_writes = plan(100, 100);
        for _ in 0..100 {
            match all_hot_writes.next_op(&mut rng, &values) {
                Op::Put { key, .. } => assert_eq!(&key[..], b"key-000000000000"),
                other => panic!("{other:?}"),
            }
        }
        let reads = plan(0, 0);
        for _ in 0..100 {
            assert!(matches!(reads.next_op(&mut rng, &values), Op::Get { .. }));
        }
    }

    #[test]
    fn histogram_buckets_cover_every_answer_and_span_min_to_max() {
        let mut h = histogram();
        for us in [100u64, 150, 200, 1000, 5000, 100_000] {
            h.record(us).expect("in range");
        }
        let b = buckets(&h);
        assert_eq!(b.len(), 10);
        assert_eq!(b.iter().map(|(_, c)| c).sum::<u64>(), 6);
        assert!(b[0].1 >= 1, "the fastest lands in the first bucket: {b:?}");
        assert_eq!(b[9].1, 1, "the slowest in the last: {b:?}");
        assert!((b[9].0 - 100.0).abs() < 0.2, "last bound is the max: {b:?}");
        let text = histogram_text(&h);
        assert_eq!(text.lines().count(), 11, "{text}");
        assert!(text.contains("■"), "{text}");
        let mut one = histogram();
        one.record(500).expect("in range");
        assert_eq!(buckets(&one).len(), 1);
        assert!(buckets(&histogram()).is_empty());
    }
}
