//! `client bench`: a closed-loop load generator.
//!
//! `--concurrency` workers each own a session and keep exactly one request outstanding: send,
//! wait for the answer, send the next. Latencies go into per-worker HdrHistograms, merged at the
//! end and, for the progress line, once a second.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use clap::Args;
use epaxos_kv::core::command::{KEY_BYTES_MAX, VALUE_BYTES_MAX};
use epaxos_kv::proto::{operation, Get, Operation, Put};
use hdrhistogram::Histogram;
use rand::distr::Alphanumeric;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::task::JoinSet;

use crate::cluster::{Cluster, Picker, TargetMode};
use crate::session::{execute, RetryPolicy, Session};

/// Options of `client bench`.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    /// How long to issue requests, in seconds.
    #[arg(long, default_value_t = 10.0)]
    pub duration: f64,
    /// Closed-loop workers, each with its own session and one request outstanding.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Number of distinct keys (key-000000000000 ...).
    #[arg(long, default_value_t = 100_000)]
    pub keys: u64,
    /// Percentage of requests that are PUTs; the rest are GETs.
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
    /// Print one JSON line with the results on stdout (progress still goes to stderr).
    #[arg(long)]
    pub json: bool,
    /// No progress line each second.
    #[arg(long)]
    pub quiet: bool,
    /// After the deadline, how long to wait for outstanding requests, in milliseconds
    /// (default: --timeout-ms plus 1500).
    #[arg(long = "drain-ms")]
    pub drain_ms: Option<u64>,
}

/// Everything a worker needs, shared read-only.
struct Plan {
    keys: u64,
    key_digits: usize,
    write_pct: u8,
    conflict_pct: u8,
    value_size: usize,
    mode: TargetMode,
    start_replica: usize,
    policy: RetryPolicy,
}

impl Plan {
    fn key(&self, i: u64) -> Bytes {
        Bytes::from(format!("key-{i:0w$}", w = self.key_digits))
    }

    fn next_op(&self, rng: &mut impl Rng, values: &[Bytes]) -> Operation {
        let hot = rng.random_range(0..100u8) < self.conflict_pct;
        let key = self.key(if hot {
            0
        } else {
            rng.random_range(0..self.keys)
        });
        let kind = if rng.random_range(0..100u8) < self.write_pct {
            let value = values[rng.random_range(0..values.len())].clone();
            operation::Kind::Put(Put { key, value })
        } else {
            operation::Kind::Get(Get { key })
        };
        Operation { kind: Some(kind) }
    }
}

/// Latency histogram in microseconds, 1 us to 1 hour, 3 significant digits.
fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("constant histogram bounds are valid")
}

/// One worker's counters, behind a mutex that only the progress reporter contends for.
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
    cluster: Arc<Cluster>,
    plan: Arc<Plan>,
    stats: Arc<Mutex<Stats>>,
    index: usize,
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
    let mut session = Session::new();
    // Round-robin workers start at successive replicas so that the load is spread from the
    // first request on; single-mode workers all use the one replica.
    let start = match plan.mode {
        TargetMode::Single => plan.start_replica,
        TargetMode::RoundRobin => plan.start_replica + index,
    };
    let mut picker = Picker::new(plan.mode, cluster.n(), start);
    while Instant::now() < deadline {
        let op = plan.next_op(&mut rng, &values);
        lock(&stats).busy = true;
        let start = Instant::now();
        let result = execute(
            &cluster,
            &mut session,
            &mut picker,
            op,
            &plan.policy,
            Some(deadline),
            &mut rng,
        )
        .await;
        let us = start.elapsed().as_micros().try_into().unwrap_or(u64::MAX);
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
                let mut kind = fail.last.kind();
                if fail.stopped {
                    kind.push_str(" (not retried: deadline)");
                }
                *s.errors_by_kind.entry(kind).or_default() += 1;
                if s.first_error.is_none() {
                    s.first_error = Some(fail.to_string());
                }
            }
        }
    }
}

/// Prints one progress line a second to stderr until `done`.
async fn reporter(workers: Arc<Vec<Arc<Mutex<Stats>>>>, start: Instant, done: Arc<AtomicBool>) {
    let mut tick = tokio::time::interval_at(
        tokio::time::Instant::from_std(start) + Duration::from_secs(1),
        Duration::from_secs(1),
    );
    let mut interval = histogram();
    let (mut last_ops, mut last_errors, mut last_at) = (0u64, 0u64, start);
    loop {
        tick.tick().await;
        if done.load(Ordering::Relaxed) {
            return;
        }
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
        let secs = (now - last_at).as_secs_f64().max(1e-9);
        let ms = |q: f64| interval.value_at_quantile(q) as f64 / 1e3;
        eprintln!(
            "[{:>5.1}s] {:>9.0} ops/s  errors {:>5}  p50 {:>7.2} ms  p99 {:>7.2} ms  total ops {}",
            (now - start).as_secs_f64(),
            (ops - last_ops) as f64 / secs,
            errors - last_errors,
            ms(0.5),
            ms(0.99),
            ops,
        );
        (last_ops, last_errors, last_at) = (ops, errors, now);
    }
}

/// Runs the benchmark and prints its results.
pub async fn run(
    cluster: Arc<Cluster>,
    mode: TargetMode,
    start_replica: usize,
    policy: RetryPolicy,
    args: BenchArgs,
) -> Result<()> {
    if !(args.duration.is_finite() && args.duration > 0.0 && args.duration < 1e7) {
        bail!(
            "--duration must be a positive number of seconds, not {}",
            args.duration
        );
    }
    if args.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    if args.keys == 0 {
        bail!("--keys must be at least 1");
    }
    if args.value_size > VALUE_BYTES_MAX {
        bail!(
            "--value-size {} exceeds the limit of {VALUE_BYTES_MAX} bytes",
            args.value_size
        );
    }
    if args.key_size > KEY_BYTES_MAX {
        bail!(
            "--key-size {} exceeds the limit of {KEY_BYTES_MAX} bytes",
            args.key_size
        );
    }
    let needed = (args.keys - 1).to_string().len();
    let key_digits = args.key_size.saturating_sub("key-".len());
    if key_digits < needed {
        bail!(
            "--key-size {} is too small for --keys {}: need at least {} bytes",
            args.key_size,
            args.keys,
            needed + "key-".len()
        );
    }

    // Connect first, so that a missing cluster is an error rather than a run of failures.
    let targets: Vec<usize> = match mode {
        TargetMode::Single => vec![start_replica],
        TargetMode::RoundRobin => (0..cluster.n()).collect(),
    };
    let probe_timeout = policy.timeout.min(Duration::from_secs(3));
    let mut reachable = 0;
    let mut problems = Vec::new();
    for &t in &targets {
        match cluster.probe(t, probe_timeout).await {
            Ok(()) => reachable += 1,
            Err(e) => problems.push(format!("{e:#}")),
        }
    }
    if reachable == 0 {
        bail!("cannot reach the cluster: {}", problems.join("; "));
    }
    for p in &problems {
        eprintln!("warning: {p}; its requests will be retried at the next replica");
    }

    let plan = Arc::new(Plan {
        keys: args.keys,
        key_digits,
        write_pct: args.write_pct,
        conflict_pct: args.conflict_pct,
        value_size: args.value_size,
        mode,
        start_replica,
        policy: policy.clone(),
    });
    let duration = Duration::from_secs_f64(args.duration);
    let drain = Duration::from_millis(
        args.drain_ms
            .unwrap_or_else(|| policy.timeout.as_millis() as u64 + 1500),
    );
    let stats: Arc<Vec<Arc<Mutex<Stats>>>> = Arc::new(
        (0..args.concurrency)
            .map(|_| Arc::new(Mutex::new(Stats::new(cluster.n()))))
            .collect(),
    );

    if !args.json {
        println!(
            "bench: {} s, target {}{}, concurrency {}, keys {} ({} B), writes {}%, \
             conflicts {}%, values {} B, timeout {} ms, retries {}",
            args.duration,
            mode.name(),
            match mode {
                TargetMode::Single => format!(" (replica {start_replica})"),
                TargetMode::RoundRobin => format!(" ({} replicas)", cluster.n()),
            },
            args.concurrency,
            args.keys,
            args.key_size,
            args.write_pct,
            args.conflict_pct,
            args.value_size,
            policy.timeout.as_millis(),
            policy.retries,
        );
    }

    let start = Instant::now();
    let deadline = start + duration;
    let done = Arc::new(AtomicBool::new(false));
    let progress =
        (!args.quiet).then(|| tokio::spawn(reporter(stats.clone(), start, done.clone())));
    let mut set = JoinSet::new();
    for (i, s) in stats.iter().enumerate() {
        set.spawn(worker(
            cluster.clone(),
            plan.clone(),
            s.clone(),
            i,
            deadline,
        ));
    }
    let drain_deadline = tokio::time::Instant::from_std(deadline + drain);
    let mut cut_off = 0usize;
    loop {
        match tokio::time::timeout_at(drain_deadline, set.join_next()).await {
            Ok(None) => break,
            Ok(Some(Ok(()))) => {}
            Ok(Some(Err(e))) => {
                bail!("a bench worker failed: {e}");
            }
            Err(_) => {
                cut_off = stats.iter().filter(|s| lock(s).busy).count();
                set.abort_all();
                break;
            }
        }
    }
    let elapsed = start.elapsed();
    done.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        p.abort();
    }

    let mut total = histogram();
    let (mut ops, mut errors, mut retries) = (0u64, 0u64, 0u64);
    let mut by_kind: BTreeMap<String, u64> = BTreeMap::new();
    let mut by_replica = vec![0u64; cluster.n()];
    let mut first_error = None;
    for s in stats.iter() {
        let s = lock(s);
        total.add(&s.total).context("merging latency histograms")?;
        ops += s.ops;
        errors += s.errors;
        retries += s.retries;
        for (k, v) in &s.errors_by_kind {
            *by_kind.entry(k.clone()).or_default() += v;
        }
        for (a, b) in by_replica.iter_mut().zip(&s.by_replica) {
            *a += b;
        }
        if first_error.is_none() {
            first_error.clone_from(&s.first_error);
        }
    }
    let secs = elapsed.as_secs_f64();
    let ops_per_sec = ops as f64 / secs;
    let ms = |q: f64| {
        if total.is_empty() {
            0.0
        } else {
            total.value_at_quantile(q) as f64 / 1e3
        }
    };
    let max_ms = total.max() as f64 / 1e3;
    let mean_ms = total.mean() / 1e3;

    if args.json {
        let line = json!({
            "ops": ops,
            "errors": errors,
            "ops_per_sec": ops_per_sec,
            "p50_ms": ms(0.5),
            "p90_ms": ms(0.9),
            "p99_ms": ms(0.99),
            "p999_ms": ms(0.999),
            "max_ms": max_ms,
            "mean_ms": mean_ms,
            "retries": retries,
            "cut_off": cut_off,
            "errors_by_kind": by_kind,
            "ops_by_replica": by_replica,
            "elapsed_s": secs,
            "duration_s": args.duration,
            "target": mode.name(),
            "concurrency": args.concurrency,
            "keys": args.keys,
            "key_size": args.key_size,
            "write_pct": args.write_pct,
            "conflict_pct": args.conflict_pct,
            "value_size": args.value_size,
            "timeout_ms": policy.timeout.as_millis() as u64,
        });
        println!("{line}");
    } else {
        println!(
            "ops {ops} in {secs:.2} s: {ops_per_sec:.1} ops/s; errors {errors}; retries {retries}"
        );
        println!(
            "latency ms: p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  mean {:.3}",
            ms(0.5),
            ms(0.9),
            ms(0.99),
            ms(0.999),
            max_ms,
            mean_ms
        );
        let shares: Vec<String> = by_replica
            .iter()
            .enumerate()
            .map(|(i, c)| format!("r{i} {c}"))
            .collect();
        println!("answers by replica: {}", shares.join(", "));
        if !by_kind.is_empty() {
            let kinds: Vec<String> = by_kind.iter().map(|(k, v)| format!("{k} {v}")).collect();
            println!("errors by kind: {}", kinds.join(", "));
        }
        if cut_off > 0 {
            println!(
                "{cut_off} requests were still outstanding {} ms after the deadline and were abandoned",
                drain.as_millis()
            );
        }
    }
    if let Some(e) = first_error {
        eprintln!("first error: {e}");
    }
    Ok(())
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
            mode: TargetMode::Single,
            start_replica: 0,
            policy: RetryPolicy::new(Duration::from_secs(1), 0),
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
            match all_hot_writes.next_op(&mut rng, &values).kind {
                Some(operation::Kind::Put(p)) => assert_eq!(&p.key[..], b"key-000000000000"),
                other => panic!("{other:?}"),
            }
        }
        let reads = plan(0, 0);
        for _ in 0..100 {
            assert!(matches!(
                reads.next_op(&mut rng, &values).kind,
                Some(operation::Kind::Get(_))
            ));
        }
    }
}
