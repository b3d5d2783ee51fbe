//! Deterministic simulation of the EPaxos* core (issue 4).
//!
//! The real `Replica` core runs N=3 or N=5 times in one thread, fed by a simulated network and
//! simulated clients; every source of chance is one seeded generator, so a seed replays
//! exactly. Every run checks agreement, visibility, execution order and convergence,
//! linearizability of what clients saw, liveness after healing, and exactly-once execution
//! (see `sim::Check`).
//!
//! - `cargo test --release --test simulation`: the scripted scenarios, the planted bugs
//!   (`PLANTED`), and `DEFAULT_SEEDS` random seeds;
//! - `SIM_SEEDS=20000 cargo test --release --test simulation random_seeds -- --nocapture`: more
//!   seeds (`SIM_SEED_BASE` moves the first one);
//! - `SIM_SEED=1234 cargo test --release --test simulation random_seeds -- --nocapture`: replays
//!   seed 1234 alone and prints its configuration, statistics and trace hash.
//!
//! `SIM_HASHES=1` (with `--nocapture`) prints every random seed's and scripted scenario's trace
//! hash, one per line: a refactoring that must not change behaviour shows identical lists.
//!
//! `SIM_BARRIER=0` runs the random seeds without the settling barrier (see `Config::barrier`).
//!
//! A failing seed prints its configuration, the violations, the last events touching the
//! instances involved, and the command that replays it; `SIM_TRACE=1` with `SIM_SEED` prints
//! the whole trace of the run to stderr.
//!
//! Replicas crash and restart from their disks (exactly the records the core asked to persist;
//! see `sim::disk`), and some crash for good: liveness is demanded of everything all the same
//! (recovery takes over a dead leader's instances; see `sim::world`). With `gc_executed`,
//! replicas also checkpoint and cut their logs like the runtime, and some crash between storing
//! the checkpoint and cutting the log; they restart from the checkpoint and the log beside it.
//! In some seeds a replica loses its disk and rejoins like the runtime does it (fenced by every
//! peer, from a peer's snapshot, abstaining below the horizons the peers report; see
//! `Sim::wipe`).

mod sim;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use epaxos_kv::core::command::Op;
use sim::{Action, Check, Config, Outcome, Sim, Violation};

/// Random seeds a plain `cargo test` runs: about 25 s in release on two cores.
const DEFAULT_SEEDS: u64 = 3000;

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    match v.parse() {
        Ok(n) => Some(n),
        Err(_) => panic!("{name}={v:?} is not a number"),
    }
}

/// Runs one simulation. A panic (in the core or the simulator) becomes a failed outcome that
/// names the seed, rather than a bare panic that does not say how to replay it.
fn run_one(cfg: Config) -> Outcome {
    let attempt =
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| Sim::new(cfg.clone()).run()));
    attempt.unwrap_or_else(|payload| {
        let what = payload
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| payload.downcast_ref::<&str>().copied())
            .unwrap_or("a non-string panic");
        let seed = cfg.seed;
        let report = format!(
            "simulation seed {seed} PANICKED: {what}\nconfig: {cfg}\nreplay: {}\n",
            cfg.replay()
        );
        Outcome {
            violations: vec![Violation {
                check: Check::Invariant,
                detail: format!("panicked: {what}"),
                instances: Vec::new(),
            }],
            stats: Default::default(),
            trace_hash: 0,
            report,
            config: cfg,
        }
    })
}

/// Runs `seeds` on every core; returns the outcomes in seed order.
fn run_seeds(seeds: Vec<u64>, make: impl Fn(u64) -> Config + Sync) -> Vec<Outcome> {
    let workers = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(seeds.len().max(1));
    let next = AtomicU64::new(0);
    let results = Mutex::new(Vec::with_capacity(seeds.len()));
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(&seed) = seeds.get(i) else {
                    return;
                };
                let outcome = run_one(make(seed));
                results
                    .lock()
                    .expect("a worker panicked while holding the results")
                    .push((i, outcome));
            });
        }
    });
    let mut results = results
        .into_inner()
        .expect("a worker panicked while holding the results");
    results.sort_by_key(|(i, _)| *i);
    results.into_iter().map(|(_, o)| o).collect()
}

#[test]
fn random_seeds() {
    let seeds: Vec<u64> = match env_u64("SIM_SEED") {
        Some(seed) => vec![seed],
        None => {
            let base = env_u64("SIM_SEED_BASE").unwrap_or(0);
            let count = env_u64("SIM_SEEDS").unwrap_or(DEFAULT_SEEDS);
            (base..base + count).collect()
        }
    };
    let single = seeds.len() == 1;
    // SIM_BARRIER=0 leaves out the settling barrier: commits lost during chaos must then reach
    // every replica by the core's own means (see `Config::barrier`).
    let barrier = env_u64("SIM_BARRIER") != Some(0);
    let started = Instant::now();
    let outcomes = run_seeds(seeds.clone(), |seed| Config {
        barrier,
        ..Config::random(seed)
    });
    let wall = started.elapsed();

    let delivered: u64 = outcomes.iter().map(|o| o.stats.delivered).sum();
    let ops: u64 = outcomes.iter().map(|o| o.stats.ops_done).sum();
    let busiest = outcomes.iter().max_by_key(|o| o.stats.component_max);
    let slowest = outcomes
        .iter()
        .filter_map(|o| Some((o.stats.settle_time?, o.config.seed)))
        .max();
    let inconclusive: usize = outcomes.iter().map(|o| o.stats.inconclusive_keys).sum();
    let cpu: Duration = outcomes.iter().map(|o| o.stats.wall).sum();
    let sum = |f: fn(&Outcome) -> u64| outcomes.iter().map(f).sum::<u64>();
    let count = |f: fn(&Outcome) -> bool| outcomes.iter().filter(|o| f(o)).count();
    println!(
        "simulated {} seeds ({}..={}) in {wall:.1?} wall ({cpu:.1?} over all workers): {delivered} \
         messages delivered ({:.0}/s of wall time), {ops} client operations; longest dependency \
         component {} (seed {}); slowest settling after heal {:?} (seed {}); {inconclusive} \
         keys inconclusive; {} restarts in {} seeds ({} after torn crashes, {} instances \
         resumed), {} records persisted; {} seeds with permanent crashes, {} with gc_executed; \
         {} checkpoints, {} crashes between checkpoint and log cut, {} restarts from a checkpoint; \
         {} wipes (rejoins) in {} seeds, {} skipped (a peer down, or no room for one more \
         failure), {} instances executed after a rejoin, {} restarts after a rejoin, {} rejoined \
         replicas still abstaining at the end; {} sessions expired (summed over replicas), {} \
         requests answered \"session expired\", {} late retries after a sleep; {} snapshots \
         installed by replicas left behind by the others' collection, in {} seeds",
        seeds.len(),
        seeds.first().copied().unwrap_or(0),
        seeds.last().copied().unwrap_or(0),
        delivered as f64 / wall.as_secs_f64(),
        busiest.map_or(0, |o| o.stats.component_max),
        busiest.map_or(0, |o| o.config.seed),
        slowest.map_or(Duration::ZERO, |s| s.0),
        slowest.map_or(0, |s| s.1),
        sum(|o| o.stats.restarts),
        count(|o| o.stats.restarts > 0),
        sum(|o| o.stats.torn),
        sum(|o| o.stats.resumed),
        sum(|o| o.stats.records),
        count(|o| o.config.crashes > 0),
        count(|o| o.config.gc_executed),
        sum(|o| o.stats.checkpoints),
        sum(|o| o.stats.checkpoint_crashes),
        sum(|o| o.stats.checkpoint_restarts),
        sum(|o| o.stats.wipes),
        count(|o| o.stats.wipes > 0),
        sum(|o| o.stats.wipes_skipped),
        sum(|o| o.stats.executed_after_rejoin),
        sum(|o| o.stats.restarts_after_rejoin),
        sum(|o| o.stats.still_abstaining),
        sum(|o| o.stats.sessions_expired),
        sum(|o| o.stats.expired_answers),
        sum(|o| o.stats.late_retries),
        sum(|o| o.stats.catch_ups),
        count(|o| o.stats.catch_ups > 0),
    );
    if env_u64("SIM_HASHES").is_some() {
        for o in &outcomes {
            println!("seed {} trace hash {:#018x}", o.config.seed, o.trace_hash);
        }
    }
    if single {
        let o = &outcomes[0];
        println!("config: {}", o.config);
        println!("stats: {:?}", o.stats);
        println!("trace hash: {:#018x}", o.trace_hash);
    }
    let failed: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| !o.violations.is_empty())
        .collect();
    for o in &failed {
        let checks: Vec<Check> = o.violations.iter().map(|v| v.check).collect();
        eprintln!("seed {} failed {checks:?}", o.config.seed);
    }
    for o in failed.iter().take(3) {
        eprintln!("{}", o.report);
    }
    assert!(
        failed.is_empty(),
        "{} of {} seeds failed: {:?}",
        failed.len(),
        outcomes.len(),
        failed.iter().map(|o| o.config.seed).collect::<Vec<_>>()
    );
}

#[test]
fn same_seed_same_trace() {
    // Seeds with crashes, partitions, loss and duplication among them. Each run builds its own
    // replicas, whose HashMaps get fresh random hash keys: equal hashes show that no HashMap
    // iteration order leaks into the simulated schedule.
    let pick = |want: fn(&Config) -> bool| (0..100).find(|s| want(&Config::random(*s)));
    let seeds: Vec<u64> = [
        pick(|c| c.crashes > 0),
        pick(|c| c.partitions && c.loss > 0.0 && c.dup > 0.0),
        pick(|c| c.restarts > 0 && c.torn && c.loss > 0.0),
        pick(|c| c.restarts > 0 && c.gc_executed && c.checkpoint_crash > 0.0),
        pick(|c| c.wipes > 0 && c.gc_executed),
    ]
    .into_iter()
    .flatten()
    .collect();
    assert!(seeds.len() == 5, "the seed filters found too few seeds");
    for seed in seeds {
        let a = Sim::new(Config::random(seed)).run();
        let b = Sim::new(Config::random(seed)).run();
        assert_eq!(
            a.trace_hash, b.trace_hash,
            "seed {seed}: two runs diverged ({})",
            a.config
        );
        assert_eq!(a.stats.delivered, b.stats.delivered, "seed {seed}");
        assert_eq!(a.stats.sim_time, b.stats.sim_time, "seed {seed}");
        assert_eq!(a.stats.restarts, b.stats.restarts, "seed {seed}");
        assert_eq!(a.stats.wipes, b.stats.wipes, "seed {seed}");
        assert!(a.stats.delivered > 0, "seed {seed} did nothing");
    }
    let (zero, one) = (
        Sim::new(Config::random(0)).run(),
        Sim::new(Config::random(1)).run(),
    );
    assert_ne!(
        zero.trace_hash, one.trace_hash,
        "different seeds, different traces"
    );
}

// ---- scripted scenarios ------------------------------------------------------------------------

fn ms(v: u64) -> Duration {
    Duration::from_millis(v)
}

fn key(k: usize) -> Bytes {
    Bytes::from(format!("k{k}"))
}

fn put(k: usize, v: &str) -> Op {
    Op::Put {
        key: key(k),
        value: Bytes::copy_from_slice(v.as_bytes()),
    }
}

fn get(k: usize) -> Op {
    Op::Get { key: key(k) }
}

fn op(client: usize, replica: usize, op: Op) -> Action {
    Action::Op {
        client,
        replica,
        op,
    }
}

/// Runs a scenario and fails with its report if any check failed.
fn clean(cfg: Config, script: Vec<(Duration, Action)>) -> Outcome {
    let o = Sim::scripted(cfg, script).run();
    assert!(o.violations.is_empty(), "{}", o.report);
    if env_u64("SIM_HASHES").is_some() {
        println!(
            "scenario {} trace hash {:#018x}",
            o.config.scenario.unwrap_or("?"),
            o.trace_hash
        );
    }
    o
}

#[test]
fn scenario_minority_side_stalls_then_commits_after_heal() {
    let cfg = Config::scripted(
        "scenario_minority_side_stalls_then_commits_after_heal",
        5,
        2,
        1,
        ms(1_000),
    );
    let o = clean(
        cfg,
        vec![
            (ms(0), Action::Partition(vec![vec![0, 1], vec![2, 3, 4]])),
            (ms(5), op(0, 0, put(0, "minority"))),
            (ms(5), op(1, 3, put(0, "majority"))),
            (ms(600), Action::HealLinks),
        ],
    );
    assert_eq!(o.stats.ops_done, 3, "both writes and the barrier complete");
    assert!(
        o.stats.retries >= 1,
        "the minority's client timed out meanwhile"
    );
}

#[test]
fn scenario_one_way_cut_leader_hears_nobody() {
    // r0's messages go out but no answer comes back: its client retries elsewhere.
    let cfg = Config::scripted(
        "scenario_one_way_cut_leader_hears_nobody",
        3,
        1,
        1,
        ms(2_000),
    );
    let mut script = vec![(ms(0), Action::Cut { from: 1, to: 0 })];
    script.push((ms(0), Action::Cut { from: 2, to: 0 }));
    script.push((ms(5), op(0, 0, put(0, "v"))));
    let o = clean(cfg, script);
    assert!(o.stats.retries >= 1, "the client had to retry");
}

#[test]
fn scenario_lost_commit_fetched_when_a_later_command_needs_it() {
    let cfg = Config::scripted(
        "scenario_lost_commit_fetched_when_a_later_command_needs_it",
        3,
        2,
        1,
        ms(1_000),
    );
    let o = clean(
        cfg,
        vec![
            (
                ms(0),
                Action::DropNext {
                    from: 0,
                    to: 2,
                    kind: "Commit",
                },
            ),
            (ms(1), op(0, 0, put(0, "first"))),
            (ms(100), op(1, 2, get(0))),
        ],
    );
    assert_eq!(o.stats.ops_done, 3);
}

#[test]
fn scenario_client_retries_at_another_replica_while_the_first_still_runs() {
    // r0 cannot reach anyone until 700 ms; the client gives up on it after 500 ms and retries
    // at a random replica. Both instances of the request commit; it executes once.
    let cfg = Config::scripted(
        "scenario_client_retries_at_another_replica_while_the_first_still_runs",
        3,
        1,
        1,
        ms(2_000),
    );
    let o = clean(
        cfg,
        vec![
            (ms(0), Action::Partition(vec![vec![0], vec![1, 2]])),
            (
                ms(1),
                op(
                    0,
                    0,
                    Op::Cas {
                        key: key(0),
                        expected: None,
                        new: Bytes::from_static(b"once"),
                    },
                ),
            ),
            (ms(700), Action::HealLinks),
        ],
    );
    assert!(o.stats.retries >= 1);
}

#[test]
fn scenario_concurrent_conflicting_writes_from_every_replica() {
    let n = 5;
    let cfg = Config::scripted(
        "scenario_concurrent_conflicting_writes_from_every_replica",
        n,
        n,
        1,
        ms(500),
    );
    let script = (0..n)
        .map(|r| (ms(1), op(r, r, put(0, &format!("from-{r}")))))
        .collect();
    let o = clean(cfg, script);
    assert!(o.stats.slow > 0, "conflicts force some slow paths");
}

#[test]
fn scenario_crashed_leader_after_commit_the_rest_goes_on() {
    let cfg = Config::scripted(
        "scenario_crashed_leader_after_commit_the_rest_goes_on",
        5,
        2,
        2,
        ms(1_000),
    );
    let o = clean(
        cfg,
        vec![
            (ms(1), op(0, 0, put(0, "before-crash"))),
            (ms(50), Action::Crash(0)),
            (ms(60), op(0, 1, get(0))),
            (ms(60), op(1, 2, put(1, "other"))),
        ],
    );
    assert_eq!(o.stats.ops_open, 0);
}

/// 0.0 reaches r1 only, then r0 crashes for good: r1 pre-accepted exactly the initial deps, so
/// the command may have been committed on the fast path; recovery validates it and commits it
/// with its command, and the client (which retries at another replica) gets its answer once.
#[test]
fn scenario_crashed_leader_instance_is_recovered_with_its_command() {
    let mut cfg = Config::scripted(
        "scenario_crashed_leader_instance_is_recovered_with_its_command",
        3,
        2,
        2,
        ms(1_000),
    );
    cfg.settle_max = ms(10_000);
    let o = clean(
        cfg,
        vec![
            (ms(0), Action::Cut { from: 0, to: 2 }),
            (ms(0), Action::Cut { from: 1, to: 0 }),
            (ms(1), op(0, 0, put(0, "orphan"))),
            (ms(3), Action::Crash(0)),
            (ms(10), op(1, 1, put(1, "elsewhere"))),
        ],
    );
    assert_eq!(o.stats.ops_open, 0, "every client got its answer");
    assert!(
        o.stats.recovered >= 1,
        "0.0 was recovered with its command: {:?}",
        o.stats
    );
}

/// 0.0 (a write on k0) reaches r1 only, after r1 pre-accepted r2's write 2.0 on k0 that r0 did
/// not know: r1's deps differ from the initial ones, so no fast path can have committed 0.0,
/// and recovery commits a no-op. The orphan's client retries and its write executes once.
/// (The orphan is its session's second request: a retry of a session's first request finds no
/// session and is refused as expired, its outcome unknown; see `session`.)
#[test]
fn scenario_crashed_leader_instance_is_recovered_as_a_nop() {
    let mut cfg = Config::scripted(
        "scenario_crashed_leader_instance_is_recovered_as_a_nop",
        3,
        2,
        1,
        ms(1_000),
    );
    cfg.settle_max = ms(10_000);
    let o = clean(
        cfg,
        vec![
            (ms(0), op(0, 1, get(1))),
            (ms(20), Action::Cut { from: 0, to: 2 }),
            (ms(20), Action::Cut { from: 2, to: 0 }),
            (ms(20), Action::Cut { from: 1, to: 0 }),
            (ms(21), op(1, 2, put(0, "first"))),
            (ms(60), op(0, 0, put(0, "orphan"))),
            (ms(63), Action::Crash(0)),
        ],
    );
    assert_eq!(o.stats.ops_open, 0, "every client got its answer");
    assert!(
        o.stats.recovered_nop >= 1,
        "0.0 was recovered as a no-op: {:?}",
        o.stats
    );
}

/// The Commit of the last instance on a key is lost and nothing depends on it: the Watermark
/// anti-entropy still brings it to the replica that missed it.
#[test]
fn scenario_last_commit_lost_replica_catches_up_without_barrier() {
    let mut cfg = Config::scripted(
        "scenario_last_commit_lost_replica_catches_up_without_barrier",
        3,
        1,
        1,
        ms(100),
    );
    cfg.barrier = false;
    cfg.settle_max = ms(10_000);
    clean(
        cfg,
        vec![
            (
                ms(0),
                Action::DropNext {
                    from: 0,
                    to: 2,
                    kind: "Commit",
                },
            ),
            (ms(1), op(0, 0, put(0, "last"))),
        ],
    );
}

// ---- crashes and restarts ----------------------------------------------------------------------

/// r0 persists 0.0 and sends its PreAccept; the answers never reach r0, and it crashes before
/// any does. Restarted from its disk, it resends the PreAccept at the same ballot and 0.0
/// commits: liveness demands that it execute everywhere (no exemption without a permanent
/// crash).
#[test]
fn scenario_leader_crashes_after_persisting_pre_accept_restarts_and_commits() {
    let cfg = Config::scripted(
        "scenario_leader_crashes_after_persisting_pre_accept_restarts_and_commits",
        3,
        1,
        1,
        ms(1_000),
    );
    let o = clean(
        cfg,
        vec![
            (ms(0), Action::Cut { from: 1, to: 0 }),
            (ms(0), Action::Cut { from: 2, to: 0 }),
            (ms(1), op(0, 0, put(0, "resumed"))),
            (ms(20), Action::CrashForRestart(0)),
            (ms(30), Action::HealLinks),
            (ms(40), Action::Restart(0)),
        ],
    );
    assert_eq!(o.stats.restarts, 1);
    assert_eq!(o.stats.resumed, 1, "r0 resumed 0.0 from its disk");
    assert_eq!(o.stats.ops_open, 0);
}

/// r0 crashes in the step that starts 0.0: its PreAccept never leaves, and its record reaches
/// the disk or not (the torn tail of the log). Either way the write gets done: resumed from the
/// disk, or retried by the client (it is the session's second request: see the no-op scenario).
#[test]
fn scenario_torn_crash_loses_the_step_and_keeps_a_prefix_of_its_records() {
    let (mut resumed, mut lost) = (0, 0);
    for seed in 1..=12 {
        let mut cfg = Config::scripted(
            "scenario_torn_crash_loses_the_step_and_keeps_a_prefix_of_its_records",
            3,
            1,
            1,
            ms(1_000),
        );
        cfg.seed = seed;
        let o = clean(
            cfg,
            vec![
                (ms(0), op(0, 1, get(0))),
                // Nothing but the client's request reaches r0: that is the step it crashes in.
                (ms(20), Action::Cut { from: 1, to: 0 }),
                (ms(20), Action::Cut { from: 2, to: 0 }),
                (ms(21), Action::CrashTorn(0)),
                (ms(21), op(0, 0, put(0, "torn"))),
                (ms(60), Action::HealLinks),
                (ms(70), Action::Restart(0)),
            ],
        );
        assert_eq!((o.stats.torn, o.stats.restarts), (1, 1), "seed {seed}");
        assert_eq!(o.stats.ops_open, 0, "seed {seed}");
        match o.stats.resumed {
            0 => lost += 1,
            _ => resumed += 1,
        }
    }
    assert!(resumed > 0 && lost > 0, "{resumed} resumed, {lost} lost");
}

/// r0 starts an instance in a torn step: its PreAccept leaves early (before the record is
/// synced, as the runtime sends it), and in some seeds the crash loses the record. The
/// restarted r0 then takes a new write: it must start it in a fresh slot, never in the one its
/// lost PreAccept used (see `Replica::skip_unsynced_slots`), and the lost instance is settled by
/// recovery. Runs seeds 1 to 12 with `plant` planted; returns the first outcome that failed a
/// check, or the last.
fn torn_start_scenario(name: &'static str, plant: fn(&mut Config)) -> (Outcome, u64) {
    let mut lost = 0;
    let mut last = None;
    for seed in 1..=12 {
        let mut cfg = Config::scripted(name, 3, 2, 1, ms(1_000));
        cfg.seed = seed;
        plant(&mut cfg);
        let o = Sim::scripted(
            cfg,
            vec![
                (ms(0), op(0, 1, get(0))),
                // Nothing but the client's request reaches r0: that is the step it crashes in;
                // what it sends early still reaches r1 and r2.
                (ms(20), Action::Cut { from: 1, to: 0 }),
                (ms(20), Action::Cut { from: 2, to: 0 }),
                (ms(21), Action::CrashTorn(0)),
                (ms(21), op(0, 0, put(0, "torn"))),
                (ms(60), Action::HealLinks),
                (ms(70), Action::Restart(0)),
                (ms(100), op(1, 0, put(0, "after"))),
            ],
        )
        .run();
        if o.stats.resumed == 0 {
            lost += 1;
        }
        if !o.violations.is_empty() {
            return (o, lost);
        }
        last = Some(o);
    }
    (last.expect("twelve runs"), lost)
}

#[test]
fn scenario_a_slot_whose_record_a_torn_crash_lost_is_never_started_again() {
    let (o, lost) = torn_start_scenario(
        "scenario_a_slot_whose_record_a_torn_crash_lost_is_never_started_again",
        |_| {},
    );
    assert!(o.violations.is_empty(), "{}", o.report);
    assert!(
        lost > 0,
        "no run lost the record: the scenario tests nothing"
    );
    assert_eq!(o.stats.ops_open, 0, "{:?}", o.stats);
}

/// Every replica crashes at once and restarts from its disk: the writes acknowledged before
/// are all there (reads after the restart must see them: linearizability).
#[test]
fn scenario_all_replicas_crash_and_restart_no_acknowledged_write_is_lost() {
    let n = 3;
    let cfg = Config::scripted(
        "scenario_all_replicas_crash_and_restart_no_acknowledged_write_is_lost",
        n,
        3,
        2,
        ms(1_000),
    );
    let mut script = vec![
        (ms(1), op(0, 0, put(0, "a"))),
        (ms(1), op(1, 1, put(1, "b"))),
        (ms(1), op(2, 2, put(0, "c"))),
    ];
    for r in 0..n {
        script.push((ms(100), Action::CrashForRestart(r)));
        script.push((ms(150 + 10 * r as u64), Action::Restart(r)));
    }
    script.extend([
        (ms(300), op(0, 1, get(0))),
        (ms(300), op(1, 2, get(1))),
        (ms(300), op(2, 0, get(0))),
    ]);
    let o = clean(cfg, script);
    assert_eq!(o.stats.restarts, n as u64);
    assert_eq!(o.stats.ops_done, 6 + 2, "six operations and two barriers");
}

/// Every replica crashes at once under load (torn crashes in odd runs: each loses the step it
/// was in) and restarts: nothing acknowledged is lost and everything commits afterwards.
#[test]
fn scenario_all_replicas_crash_under_load_and_restart() {
    let n = 5;
    for seed in 1..=6 {
        let mut cfg = Config::scripted(
            "scenario_all_replicas_crash_under_load_and_restart",
            n,
            6,
            2,
            ms(1_500),
        );
        cfg.seed = seed;
        cfg.random_ops = true;
        cfg.think_max = ms(5);
        cfg.inflight_max = 4;
        cfg.batch_max = 4;
        let mut script = Vec::new();
        for r in 0..n {
            let crash = if seed % 2 == 1 {
                Action::CrashTorn(r)
            } else {
                Action::CrashForRestart(r)
            };
            script.push((ms(300), crash));
            script.push((ms(350 + 7 * r as u64), Action::Restart(r)));
        }
        let o = clean(cfg, script);
        assert_eq!(o.stats.restarts, n as u64, "seed {seed}");
        assert!(o.stats.ops_done > 20, "seed {seed}: {:?}", o.stats);
    }
}

/// A replica crashes between storing a checkpoint and cutting its log (so the new checkpoint sits
/// beside the old log, whose covered records the restore must skip), then restarts: every
/// acknowledged write is still there (the reads after the restart see them: linearizability),
/// and every replica ends with the same state.
#[test]
fn scenario_crash_between_checkpoint_and_log_cut_restart_no_acknowledged_write_lost() {
    let n = 3;
    let mut cfg = Config::scripted(
        "scenario_crash_between_checkpoint_and_log_cut_restart_no_acknowledged_write_lost",
        n,
        16,
        3,
        ms(3_500),
    );
    cfg.gc_executed = true;
    cfg.checkpoint_every = 3;
    // Replicas collect what every peer has committed, learnt from Watermarks (one a second):
    // writes before the first Watermark make every replica checkpoint and cut its log once;
    // writes after it fill the cut logs again, and r0 crashes at its next checkpoint, which
    // covers records its uncut log still holds.
    let mut script = Vec::new();
    for c in 0..12 {
        let at = if c < 6 { 1 } else { 1_100 } + 60 * (c % 6) as u64;
        script.push((ms(at), op(c, c % n, put(c % 3, &format!("w{c}")))));
    }
    script.push((ms(1_050), Action::CrashAtCheckpoint(0)));
    script.push((ms(2_500), Action::Restart(0)));
    for (i, c) in (12..16).enumerate() {
        script.push((ms(2_700 + i as u64), op(c, 0, get(i % 3))));
    }
    let o = clean(cfg, script);
    assert_eq!(o.stats.checkpoint_crashes, 1, "{:?}", o.stats);
    assert_eq!(o.stats.restarts, 1, "{:?}", o.stats);
    assert_eq!(o.stats.checkpoint_restarts, 1, "{:?}", o.stats);
    assert!(o.stats.checkpoints >= 2, "{:?}", o.stats);
    assert_eq!(
        o.stats.ops_done,
        16 + 3,
        "sixteen operations and three barriers"
    );
    let d = &o.stats.final_digests;
    assert!(
        d.len() == n && d.iter().all(|x| *x == d[0]),
        "digests differ: {d:x?}"
    );
}

// ---- a replica loses its disk and rejoins ------------------------------------------------------

/// Replica 2 of 3 loses its disk in the middle of a steady load (random operations from six
/// clients, at a different moment in each run, so that its own instances are caught in
/// different phases; with and without garbage collection and checkpoints) and rejoins from a
/// peer's snapshot: every check holds, it executes new commands afterwards, and every replica
/// ends with the same state.
#[test]
fn scenario_replica_loses_its_disk_under_load_and_rejoins() {
    let n = 3;
    for seed in 1..=8u64 {
        let mut cfg = Config::scripted(
            "scenario_replica_loses_its_disk_under_load_and_rejoins",
            n,
            6,
            3,
            ms(2_500),
        );
        cfg.seed = seed;
        cfg.random_ops = true;
        cfg.think_max = ms(5);
        cfg.inflight_max = 4;
        cfg.batch_max = 4;
        cfg.gc_executed = seed % 2 == 0;
        cfg.checkpoint_every = 3;
        // After the first Watermarks (one a second), so that with garbage collection the
        // snapshot's checkpoint covers collected instances.
        let wipe_at = 1_200 + 7 * seed;
        let o = clean(cfg, vec![(ms(wipe_at), Action::Wipe(2))]);
        assert_eq!(o.stats.wipes, 1, "seed {seed}: {:?}", o.stats);
        assert!(
            o.stats.executed_after_rejoin > 20,
            "seed {seed}: r2 executes new commands after it rejoined: {:?}",
            o.stats
        );
        assert!(o.stats.ops_done > 50, "seed {seed}: {:?}", o.stats);
        let d = &o.stats.final_digests;
        assert!(
            d.len() == n && d.iter().all(|x| *x == d[0]),
            "seed {seed}: digests differ: {d:x?}"
        );
    }
}

/// r2 is down (crashed, disk kept) or cut off for about three seconds under load while r0 and
/// r1 collect past it under a retention of 5 instances per row; when it returns, the first
/// Watermark of a survivor tells it that survivor collected what it never executed, and it
/// catches up from a snapshot (keeping its own records above it). `plant` may plant a bug
/// (see `PLANTED`).
fn left_behind_scenario(name: &'static str, seed: u64, plant: fn(&mut Config)) -> Outcome {
    let mut cfg = Config::scripted(name, 3, 6, 3, ms(4_500));
    cfg.seed = seed;
    cfg.random_ops = true;
    cfg.think_max = ms(5);
    cfg.inflight_max = 4;
    cfg.batch_max = 4;
    cfg.gc_executed = true;
    cfg.checkpoint_every = 3;
    cfg.retention_instances = 5;
    plant(&mut cfg);
    let away = ms(300 + 11 * seed);
    // Long enough for the survivors to recover r2's instances in flight and go on well past
    // the retention.
    let back = ms(3_300 + 13 * seed);
    let script = if seed.is_multiple_of(2) {
        vec![
            (away, Action::CrashForRestart(2)),
            (back, Action::Restart(2)),
        ]
    } else {
        vec![
            (away, Action::Partition(vec![vec![0, 1], vec![2]])),
            (back, Action::HealLinks),
        ]
    };
    Sim::scripted(cfg, script).run()
}

/// The survivors collect past a member that is away for long (crashed or cut off), and it
/// catches up by snapshot when it returns: every check holds, and every replica ends with the
/// same state.
#[test]
fn scenario_member_away_past_the_retention_catches_up_by_snapshot() {
    let name = "scenario_member_away_past_the_retention_catches_up_by_snapshot";
    for seed in 1..=6u64 {
        let o = left_behind_scenario(name, seed, |_| {});
        assert!(o.violations.is_empty(), "seed {seed}: {}", o.report);
        assert!(
            o.stats.catch_ups >= 1,
            "seed {seed}: r2 installed a snapshot: {:?}",
            o.stats
        );
        assert!(o.stats.ops_done > 50, "seed {seed}: {:?}", o.stats);
        assert_eq!(o.stats.ops_open, 0, "seed {seed}: {:?}", o.stats);
        let d = &o.stats.final_digests;
        assert!(
            d.len() == 3 && d.iter().all(|x| *x == d[0]),
            "seed {seed}: digests differ: {d:x?}"
        );
    }
}

/// The same story with the retention in bytes only (the count retention far away): the
/// survivors collect past r2 once more than 64 key and value bytes of a row wait for it, and it
/// catches up by snapshot.
#[test]
fn scenario_member_away_past_the_byte_retention_catches_up_by_snapshot() {
    let name = "scenario_member_away_past_the_byte_retention_catches_up_by_snapshot";
    for seed in 1..=4u64 {
        let o = left_behind_scenario(name, seed, |c| {
            c.retention_instances = 1_000_000;
            c.retention_bytes = 64;
        });
        assert!(o.violations.is_empty(), "seed {seed}: {}", o.report);
        assert!(
            o.stats.catch_ups >= 1,
            "seed {seed}: r2 installed a snapshot: {:?}",
            o.stats
        );
        assert_eq!(o.stats.ops_open, 0, "seed {seed}: {:?}", o.stats);
        let d = &o.stats.final_digests;
        assert!(
            d.len() == 3 && d.iter().all(|x| *x == d[0]),
            "seed {seed}: digests differ: {d:x?}"
        );
    }
}

/// Random seeds (3 and 5 replicas, every fault) with garbage collection on and a retention of
/// 2 to 19 instances: the others collect past any replica that is down or cut off for a
/// moment, and it catches up by snapshot. Every check holds, and a collected instance was
/// executed by a majority (see `Observer::on_collected`).
#[test]
fn random_seeds_with_a_small_retention() {
    // `SIM_SEED=S` replays one seed (with `SIM_TRACE=1`, traced), as in `random_seeds`.
    let single = env_u64("SIM_SEED");
    let list: Vec<u64> = match single {
        Some(seed) => vec![seed],
        None => (0..env_u64("SIM_SEEDS").unwrap_or(400)).collect(),
    };
    let seeds = list.len() as u64;
    let outcomes = run_seeds(list, |seed| {
        let mut cfg = Config::random(seed);
        cfg.scenario = Some("random_seeds_with_a_small_retention");
        cfg.gc_executed = true;
        cfg.retention_instances = 2 + seed % 18;
        cfg
    });
    let catch_ups: u64 = outcomes.iter().map(|o| o.stats.catch_ups).sum();
    println!("{seeds} seeds, {catch_ups} snapshots installed by replicas left behind");
    assert_every_seed_passes(&outcomes);
    assert!(
        single.is_some() || catch_ups >= seeds / 20,
        "too few catch-ups to test anything"
    );
}

/// Random seeds with membership changes (issue 15): one or two removals at random moments
/// (one with 3 replicas), a permanent crash's victim first, among every fault, one wipe
/// included (a replica loses its disk and rejoins the newest configuration, or refuses to
/// start if it was removed; see `Sim::wipe` for when a wipe is skipped). Every check holds, and
/// every live member ends in one configuration (see `Sim::check_configurations`).
///
/// Seed 1459 failed Liveness until the boundary was decided by Paxos (see `replica::seal`,
/// "Liveness"): r4 leads 4.13 in epoch 0, r0 pre-accepts it before sealing, r2 and r3 seal
/// below it; r1 and r4 then crash for good. 4.13 may have committed on the fast path with
/// {r4, r0, r1} as far as {r0, r2, r3} know, so recovery must accept its command; r2 and r3
/// refused it above their own seals. Every majority of the survivors' promises holds r0's seal,
/// so the decided boundary lies above 4.13, and r2 and r3 now vote on it. Seeds 0..2000 pass.
///
/// Seed 13649 failed Invariant ("r4 collected 4.9, executed at only 2 of 5 replicas", after
/// r3 and r1 were removed) while collection ranked every peer against the current epoch's
/// quorum; it now ranks the members of each instance's own epoch, which the observer checks
/// too (`replica::collect`, "Epochs"). Seeds 0..20,000 pass (217 s on two shared cores).
#[test]
fn random_seeds_with_removals() {
    // `SIM_SEED=S` replays one seed (with `SIM_TRACE=1`, traced), as in `random_seeds`.
    let single = env_u64("SIM_SEED");
    let list: Vec<u64> = match single {
        Some(seed) => vec![seed],
        None => (0..env_u64("SIM_SEEDS").unwrap_or(300)).collect(),
    };
    let started = Instant::now();
    let outcomes = run_seeds(list.clone(), |seed| random_removals(seed, |_| {}));
    let executed: u64 = outcomes.iter().map(|o| o.stats.changes_executed).sum();
    let stale: u64 = outcomes.iter().map(|o| o.stats.changes_stale).sum();
    let refused: u64 = outcomes.iter().map(|o| o.stats.changes_refused).sum();
    println!(
        "{} seeds with removals in {:.1?}: {executed} changes executed, {stale} stale, \
         {refused} refused; {}",
        list.len(),
        started.elapsed(),
        wipe_stats(&outcomes)
    );
    let failed: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| !o.violations.is_empty())
        .collect();
    for o in &failed {
        let checks: Vec<Check> = o.violations.iter().map(|v| v.check).collect();
        eprintln!("seed {} failed {checks:?}", o.config.seed);
    }
    if let Some(o) = failed.first() {
        panic!(
            "{} of {} seeds failed: {:?}\n{}",
            failed.len(),
            outcomes.len(),
            failed.iter().map(|o| o.config.seed).collect::<Vec<_>>(),
            o.report
        );
    }
    assert!(
        single.is_some() || executed >= list.len() as u64 / 2,
        "too few changes executed to test anything"
    );
}

/// What the wipes of a membership runner did: rejoins (in how many seeds), of replicas
/// removed meanwhile, of spares not added yet, skipped.
fn wipe_stats(outcomes: &[Outcome]) -> String {
    let sum = |f: fn(&Outcome) -> u64| outcomes.iter().map(f).sum::<u64>();
    format!(
        "{} wipes (rejoins) in {} seeds, {} of a removed replica (it refused to start), {} of a \
         spare not added yet, {} skipped",
        sum(|o| o.stats.wipes),
        outcomes.iter().filter(|o| o.stats.wipes > 0).count(),
        sum(|o| o.stats.wipes_removed),
        sum(|o| o.stats.wipes_knocking),
        sum(|o| o.stats.wipes_skipped),
    )
}

/// `Config::random(seed)` with one or two removals (one with 3 replicas) and one wipe.
fn random_removals(seed: u64, plant: fn(&mut Config)) -> Config {
    let mut cfg = Config::random(seed);
    cfg.scenario = Some("random_seeds_with_removals");
    cfg.wipes = 1;
    cfg.removals = if cfg.n == 5 {
        1 + (seed % 2) as usize
    } else {
        1
    };
    plant(&mut cfg);
    cfg
}

/// The scenario in which a forgotten vote matters. r1 commits 1.0 (a write on k0) on the fast
/// path; its Commit to r0 is lost, so r0 holds 1.0 only pre-accepted. r0 then commits 0.0 (a
/// write on k0, deps {1.0}) on the fast path with the fast quorum {r0, r2}: its PreAccept and
/// its Commit to r1 are lost, so only r0 and r2 know 0.0; r0 cannot execute it (1.0 is not
/// committed there). 0.1 (deps {0.0, 1.0}) commits at every replica, so r1 needs 0.0. r0 is cut
/// off, and r2 loses its disk and rejoins: from r1's snapshot (r1 executed most), which knows
/// nothing of 0.0. Only the horizons (row 0 reaches slot 2 at r0 and r1) keep the new r2 from
/// voting on 0.0: a recovery of 0.0 by {r1, r2} would see nobody who pre-accepted it and commit a
/// no-op.
/// `plant` may plant a bug (see `PLANTED`; the clean scenarios plant none).
/// With `restart`, the new r2 also crashes and restarts from its disk before the recovery: its
/// horizons must survive that (the runtime stores them beside its data).
fn forgotten_vote_scenario(name: &'static str, plant: fn(&mut Config), restart: bool) -> Outcome {
    let mut cfg = Config::scripted(name, 3, 3, 1, ms(1_500));
    plant(&mut cfg);
    cfg.settle_max = ms(10_000);
    let mut script = vec![
        (
            ms(0),
            Action::DropNext {
                from: 1,
                to: 0,
                kind: "Commit",
            },
        ),
        (
            ms(0),
            Action::DropNext {
                from: 0,
                to: 1,
                kind: "PreAccept",
            },
        ),
        (
            ms(0),
            Action::DropNext {
                from: 0,
                to: 1,
                kind: "Commit",
            },
        ),
        (ms(1), op(0, 1, put(0, "b"))),
        (ms(10), op(1, 0, put(0, "a"))),
        (ms(20), op(2, 0, put(0, "a2"))),
        (ms(30), Action::Partition(vec![vec![0], vec![1, 2]])),
        (ms(40), Action::Wipe(2)),
    ];
    if restart {
        script.push((ms(100), Action::CrashForRestart(2)));
        script.push((ms(200), Action::Restart(2)));
    }
    Sim::scripted(cfg, script).run()
}

/// With its horizons, the rejoined r2 abstains on 0.0: the recovery of 0.0 waits until r0 is
/// reachable again, and finds it committed.
#[test]
fn scenario_rejoined_replica_does_not_vote_on_what_it_forgot() {
    let o = forgotten_vote_scenario(
        "scenario_rejoined_replica_does_not_vote_on_what_it_forgot",
        |_| {},
        false,
    );
    assert!(o.violations.is_empty(), "{}", o.report);
    assert_eq!(o.stats.wipes, 1, "{:?}", o.stats);
    assert!(
        o.stats.fast >= 3,
        "1.0, 0.0 and 0.1 took the fast path: {:?}",
        o.stats
    );
    assert_eq!(o.stats.ops_open, 0, "{:?}", o.stats);
    assert_eq!(
        o.stats.recovered_nop, 0,
        "0.0 keeps its command: {:?}",
        o.stats
    );
}

/// The same, with the rejoined r2 crashing and restarting from its disk before the recovery of
/// 0.0 asks it: restored, it still abstains on 0.0.
#[test]
fn scenario_rejoined_replica_keeps_its_horizons_across_a_restart() {
    let o = forgotten_vote_scenario(
        "scenario_rejoined_replica_keeps_its_horizons_across_a_restart",
        |_| {},
        true,
    );
    assert!(o.violations.is_empty(), "{}", o.report);
    assert_eq!((o.stats.wipes, o.stats.restarts), (1, 1), "{:?}", o.stats);
    assert_eq!(
        o.stats.checkpoint_restarts, 1,
        "from the snapshot's checkpoint: {:?}",
        o.stats
    );
    assert_eq!(o.stats.ops_open, 0, "{:?}", o.stats);
    assert_eq!(
        o.stats.recovered_nop,
        epaxos_kv::core::limits::OWN_SLOTS_UNSYNCED_MAX,
        "0.0 keeps its command: the no-ops are the slots r2's restart skipped \
         (`Replica::skip_unsynced_slots`), nothing else: {:?}",
        o.stats
    );
}

// ---- each check can fail: the planted bugs ------------------------------------------------------

/// A bug planted on purpose, to show that the check meant to catch it does.
struct Planted {
    /// Switches the bug on (a `Sabotage` switch of the core, built only with the `sabotage`
    /// feature, or a simulator-side one of `Config`), and shapes the runs so that it shows.
    plant: fn(&mut Config),
    /// Where it runs.
    runs: Runs,
    /// What must report it.
    expect: Expect,
}

/// Where a planted bug runs.
enum Runs {
    /// Random seeds `0..n`, each `Config::random(seed)` with the bug planted.
    Seeds(u64),
    /// These random seeds with removals, as `random_seeds_with_removals` runs them.
    SeedsWithRemovals(std::ops::Range<u64>),
    /// One scripted scenario, given the test's name and the plant.
    Scenario(fn(&'static str, fn(&mut Config)) -> Outcome),
}

/// What a planted bug must make the checks report.
enum Expect {
    /// Each of these checks fails in at least one run: the named check, not just any.
    Caught(&'static [Check]),
    /// Every run fails this check and no other: the replicas refuse the bug's messages, and
    /// nothing else goes wrong.
    RefusedHarmlessly(Check),
}

/// Declares the table of planted bugs and one test per entry, named after it (so that
/// `cargo test --release --test simulation <name>` runs and replays one).
macro_rules! planted_bugs {
    ($($name:ident: $entry:expr,)+) => {
        /// Every planted bug (listed in the README's testing section).
        const PLANTED: &[(&str, Planted)] = &[$((stringify!($name), $entry),)+];

        $(
            #[test]
            fn $name() {
                let name = stringify!($name);
                let planted = PLANTED
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, p)| p)
                    .expect("the macro put every entry in the table");
                catch(name, planted);
            }
        )+
    };
}

planted_bugs! {
    // Replicas that sealed epoch 0 vote on r3's epoch-0 write above their seals: it commits
    // beside r0's epoch-2 write on the same key, their quorums disjoint, neither seeing the
    // other (see `old_write_after_the_seal_scenario`).
    sabotage_vote_above_seal_breaks_visibility: Planted {
        plant: |c| c.sabotage.vote_above_seal = true,
        runs: Runs::Scenario(old_write_after_the_seal_scenario),
        expect: Expect::Caught(&[Check::Visibility]),
    },
    sabotage_count_removed_votes_breaks_visibility: Planted {
        plant: |c| c.sabotage.count_removed_votes = true,
        runs: Runs::Scenario(removed_votes_scenario),
        expect: Expect::Caught(&[Check::Visibility]),
    },
    // An old-epoch instance decided under the current epoch's configuration: asked of and
    // counted among the new members only, whose quorums need not meet the old epoch's.
    sabotage_quorum_of_current_epoch_is_caught: Planted {
        // (Without the runner's wipe: the seeds keep the schedules they were picked by.)
        plant: |c| {
            c.sabotage.quorum_of_current_epoch = true;
            c.wipes = 0;
        },
        // Caught by Visibility in seed 979 of the first 3,000 (the first such seed; 961 before
        // collection counted each instance's own epoch), and by Refusal (a vote of a non-member
        // counted where the receiver holds the instance in its own epoch) in most.
        runs: Runs::SeedsWithRemovals(970..990),
        expect: Expect::Caught(&[Check::Visibility, Check::Refusal]),
    },
    sabotage_forget_deps_breaks_visibility: Planted {
        plant: |c| {
            c.sabotage.forget_deps = true;
            c.crashes = 0;
        },
        runs: Runs::Seeds(20),
        expect: Expect::Caught(&[Check::Visibility]),
    },
    sabotage_reverse_component_order_at_one_replica_breaks_execution_order: Planted {
        plant: |c| {
            c.sabotage.reverse_component_order = true;
            // Applied everywhere, a reversed order is still one order; at one replica it is not.
            c.sabotage_only = Some(0);
            c.crashes = 0;
            c.keys = 1;
        },
        runs: Runs::Seeds(40),
        expect: Expect::Caught(&[Check::ExecutionOrder, Check::Convergence]),
    },
    sabotage_keep_own_deps_on_commit_breaks_agreement: Planted {
        plant: |c| {
            c.sabotage.keep_own_deps_on_commit = true;
            c.keys = 1;
        },
        runs: Runs::Seeds(20),
        expect: Expect::Caught(&[Check::Agreement]),
    },
    sabotage_recovery_always_nop_breaks_agreement: Planted {
        plant: |c| {
            c.sabotage.recovery_always_nop = true;
            c.crashes = c.crashes.max(1);
        },
        runs: Runs::Seeds(200),
        expect: Expect::Caught(&[Check::Agreement]),
    },
    sabotage_recovery_skips_validate_breaks_visibility: Planted {
        plant: |c| {
            c.sabotage.recovery_skips_validate = true;
            // Sessions never expire within these runs: the seeds that catch the sabotage are
            // those found before sessions expired.
            c.session_ttl = Duration::from_secs(3600);
            c.sleep_chance = 0.0;
            c.crashes = c.crashes.max(1);
            c.keys = 1;
        },
        runs: Runs::Seeds(400),
        expect: Expect::Caught(&[Check::Visibility]),
    },
    sabotage_skip_dedup_breaks_exactly_once: Planted {
        plant: |c| {
            c.sabotage.skip_dedup = true;
            // Retries come from lost requests and replies.
            c.loss = 0.2;
        },
        runs: Runs::Seeds(20),
        expect: Expect::Caught(&[Check::ExactlyOnce]),
    },
    // Sessions expired by each replica's own clock, straight from its table, instead of
    // through a replicated expiry: replicas drop a session at different points of the
    // execution order, so a request of a sleeping client executes at some replicas and is
    // refused at others.
    sabotage_expiring_sessions_locally_breaks_convergence: Planted {
        plant: |c| {
            c.sabotage.expire_locally = true;
            c.sleep_chance = 0.1;
            c.skew_max = ms(300);
            c.crashes = 0;
        },
        runs: Runs::Seeds(40),
        expect: Expect::Caught(&[Check::Convergence]),
    },
    // A late retry whose session expired taken for a new session: the request executes again.
    sabotage_late_retry_starting_a_session_breaks_exactly_once: Planted {
        plant: |c| {
            c.sabotage.retry_starts_session = true;
            c.sleep_chance = 0.1;
        },
        runs: Runs::Seeds(40),
        expect: Expect::Caught(&[Check::ExactlyOnce]),
    },
    sabotage_local_reads_break_linearizability: Planted {
        plant: |c| {
            c.sabotage.local_reads = true;
            c.latency_max = ms(40);
            c.crashes = 0;
        },
        runs: Runs::Seeds(40),
        expect: Expect::Caught(&[Check::Linearizability]),
    },
    sabotage_no_retransmit_breaks_liveness: Planted {
        plant: |c| {
            c.sabotage.no_retransmit = true;
            c.loss = 0.05;
            c.crashes = 0;
            c.settle_max = Duration::from_secs(10);
        },
        runs: Runs::Seeds(20),
        expect: Expect::Caught(&[Check::Liveness]),
    },
    // A replica that lies in its Watermarks ("I executed everything") is refused by every peer
    // (each knows how far its own row reaches): every other check still holds.
    sabotage_forged_watermarks_are_refused_and_change_nothing: Planted {
        plant: |c| {
            c.sabotage.forge_watermarks = true;
            c.sabotage_only = Some(0);
            c.gc_executed = true;
            c.loss = c.loss.max(0.05);
        },
        runs: Runs::Seeds(30),
        expect: Expect::RefusedHarmlessly(Check::Refusal),
    },
    // The same lies, believed: peers drop from memory what the liars still need and never send
    // them those Commits again.
    sabotage_trusted_forged_watermarks_break_liveness: Planted {
        plant: |c| {
            c.sabotage.forge_watermarks = true;
            c.sabotage.trust_watermarks = true;
            c.gc_executed = true;
            c.loss = c.loss.max(0.05);
            c.crashes = 0;
            c.settle_max = Duration::from_secs(10);
        },
        runs: Runs::Seeds(30),
        expect: Expect::Caught(&[Check::Liveness]),
    },
    // Correct replicas send nothing impossible: a message the receiver rejects as such is a bug.
    sabotage_network_garbling_messages_breaks_invariant: Planted {
        plant: |c| c.sabotage_garble = true,
        runs: Runs::Seeds(5),
        expect: Expect::Caught(&[Check::Invariant]),
    },
    sabotage_disk_losing_records_breaks_durability: Planted {
        plant: |c| c.sabotage_disk = true,
        runs: Runs::Seeds(10),
        expect: Expect::Caught(&[Check::Durability]),
    },
    // The forgotten-vote scenario, but r2 rejoins without horizons: it answers the recovery of
    // 0.0 as if it had never seen it, and 0.0, committed with its command at r0, is committed
    // as a no-op elsewhere.
    sabotage_rejoin_without_horizons_breaks_agreement: Planted {
        plant: |c| c.sabotage_rejoin_without_horizons = true,
        runs: Runs::Scenario(|name, plant| forgotten_vote_scenario(name, plant, false)),
        expect: Expect::Caught(&[Check::Agreement]),
    },
    // A member back after the others collected past it ignores that and goes on from its own
    // stale state instead of installing a snapshot: it waits forever for Commits nobody holds
    // any more.
    sabotage_member_left_behind_ignoring_the_collection_breaks_liveness: Planted {
        plant: |c| {
            c.sabotage.ignore_collected = true;
            c.sabotage_only = Some(2);
        },
        runs: Runs::Scenario(|name, plant| left_behind_scenario(name, 1, plant)),
        expect: Expect::Caught(&[Check::Liveness]),
    },
    // A replica collects what it executed past the retention without waiting for a majority to
    // have executed it: the observer checks a majority executed every collected instance (the
    // consequence, rarer: a recovery decides a collected instance again, breaking Agreement).
    sabotage_collecting_what_no_majority_executed_is_caught: Planted {
        plant: |c| {
            c.gc_executed = true;
            c.retention_instances = 2;
            c.sabotage.collect_without_majority = true;
        },
        runs: Runs::Seeds(20),
        expect: Expect::Caught(&[Check::Invariant]),
    },
    // Collection ranks every peer's executed prefix, removed members included, against the
    // current configuration's quorum (the rule before epochs): after a removal, an old
    // instance is collected once the removed member and this replica executed it, too few of
    // its own epoch's members (seed 13649 of `random_seeds_with_removals` with the default
    // retention; with a retention of 2 instances, some seeds).
    sabotage_collecting_by_the_current_epoch_is_caught: Planted {
        // (Without the runner's wipe: the seeds keep the schedules they were picked by.)
        plant: |c| {
            c.gc_executed = true;
            c.retention_instances = 2;
            c.sabotage.collect_by_current_epoch = true;
            c.wipes = 0;
        },
        // (Seed 43 catches it; seed 8 did before recoveries of instances of an unknown epoch
        // asked every epoch they may be of, which moved the schedules.)
        runs: Runs::SeedsWithRemovals(0..100),
        expect: Expect::Caught(&[Check::Invariant]),
    },
    // Recovery of an instance the recoverer does not hold counts its own current epoch's
    // members instead of every candidate epoch's: seed 5128 of `random_seeds_with_changes`
    // (r1 fast-commits 1.22 in epoch 0 with {r1, r3, r4} and is wiped; r0, in the 4-member
    // epoch 1, recovers it from {r0, r2, r4}, reads r4's lone pre-accept as no fast path, and
    // commits a no-op where r1 had committed the command).
    sabotage_recovering_an_unknown_instance_in_the_current_epoch_breaks_agreement: Planted {
        plant: |c| c.sabotage.recover_unknown_in_current_epoch = true,
        runs: Runs::Scenario(|name, plant| {
            let mut cfg = random_changes(5128, plant);
            cfg.scenario = Some(name);
            run_one(cfg)
        }),
        expect: Expect::Caught(&[Check::Agreement]),
    },
    // A voter answers a PreAccept before its record is durable (like the leader's own early
    // PreAccept): the answer reveals a vote a crash can lose.
    sabotage_voter_answering_before_its_record_is_durable_breaks_durability: Planted {
        plant: |c| c.sabotage.answer_before_durable = true,
        runs: Runs::Seeds(5),
        expect: Expect::Caught(&[Check::Durability]),
    },
    // A restart that does not skip the slots its previous run may have started without their
    // records reaching the disk: a torn crash lost the record of a slot whose PreAccept left,
    // and the restarted leader starts another command in it at ballot 0 (which the peers'
    // votes for the lost command then commit beside it: agreement breaks).
    sabotage_restart_reusing_a_slot_it_sent_early_breaks_durability: Planted {
        plant: |c| c.sabotage.reuse_unsynced_slots = true,
        runs: Runs::Scenario(|name, plant| torn_start_scenario(name, plant).0),
        expect: Expect::Caught(&[Check::Durability, Check::Agreement]),
    },
    // The same in random runs (torn crashes under load): the reuse is caught (what it does,
    // two commands committed in one instance, shows in the scenario above).
    sabotage_restart_reusing_slots_in_random_runs_breaks_durability: Planted {
        plant: |c| {
            c.sabotage.reuse_unsynced_slots = true;
            c.torn = true;
            c.restarts = c.restarts.max(2);
        },
        runs: Runs::Seeds(100),
        expect: Expect::Caught(&[Check::Durability]),
    },
    sabotage_rejoin_without_horizons_in_random_runs_breaks_agreement: Planted {
        plant: |c| {
            c.wipes = 1;
            c.sabotage_rejoin_without_horizons = true;
            c.crashes = 0;
        },
        runs: Runs::Seeds(200),
        expect: Expect::Caught(&[Check::Agreement]),
    },
}

/// The test driver of the table: runs `planted` and asserts that the check it names reports
/// the bug (`Expect::Caught`: in at least one run each, printing the first report), or that
/// every run reports it and nothing else (`Expect::RefusedHarmlessly`).
fn catch(name: &'static str, planted: &Planted) {
    let outcomes = match planted.runs {
        Runs::Seeds(seeds) => run_seeds((0..seeds).collect(), |seed| {
            let mut cfg = Config::random(seed);
            cfg.scenario = Some(name);
            (planted.plant)(&mut cfg);
            cfg
        }),
        Runs::SeedsWithRemovals(ref seeds) => run_seeds(seeds.clone().collect(), |seed| {
            let mut cfg = random_removals(seed, planted.plant);
            cfg.scenario = Some(name);
            cfg
        }),
        Runs::Scenario(run) => vec![run(name, planted.plant)],
    };
    assert!(
        outcomes.iter().any(|o| o.stats.delivered > 0),
        "{name}: the runs did nothing"
    );
    match planted.expect {
        Expect::Caught(checks) => {
            for check in checks {
                match outcomes.iter().find(|o| o.failed(*check)) {
                    Some(o) => println!(
                        "{name}: seed {} caught by {check:?}:\n{}",
                        o.config.seed, o.report
                    ),
                    None => panic!(
                        "{name}: none of {} runs reported {check:?}; they reported {:?}",
                        outcomes.len(),
                        outcomes
                            .iter()
                            .flat_map(|o| o.violations.iter().map(|v| v.check))
                            .collect::<std::collections::BTreeSet<_>>()
                    ),
                }
            }
        }
        Expect::RefusedHarmlessly(check) => {
            for o in &outcomes {
                assert!(
                    o.failed(check),
                    "{name}: seed {} did not report {check:?}",
                    o.config.seed
                );
                let others: Vec<_> = o.violations.iter().filter(|v| v.check != check).collect();
                assert!(others.is_empty(), "{name}: {others:?}\n{}", o.report);
            }
        }
    }
}

/// Every check has a planted bug that it catches, and the README lists every planted bug.
#[test]
fn every_check_has_a_planted_bug_and_the_readme_lists_them() {
    let caught: std::collections::BTreeSet<Check> = PLANTED
        .iter()
        .flat_map(|(_, p)| match p.expect {
            Expect::Caught(checks) => checks.to_vec(),
            Expect::RefusedHarmlessly(check) => vec![check],
        })
        .collect();
    for check in Check::ALL {
        assert!(
            caught.contains(&check),
            "no planted bug shows that {check:?} can fail"
        );
    }
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md"))
        .expect("README.md is in the crate's directory");
    for (name, _) in PLANTED {
        assert!(
            readme.contains(&format!("`{name}`")),
            "the README's testing section does not list `{name}`"
        );
    }
}

// ---- membership changes (issue 15) ------------------------------------------------------------

/// A scripted run under random load with membership changes in `script` (besides its faults).
fn membership_scenario(
    name: &'static str,
    n: usize,
    script: Vec<(Duration, Action)>,
    plant: fn(&mut Config),
) -> Outcome {
    let mut cfg = Config::scripted(name, n, 6, 3, ms(3_000));
    cfg.random_ops = true;
    cfg.think_max = ms(5);
    cfg.settle_max = ms(20_000);
    plant(&mut cfg);
    Sim::scripted(cfg, script).run()
}

fn remove(replica: usize, id: u32) -> Action {
    Action::Reconfigure {
        replica,
        change: epaxos_kv::core::epoch::Change::Remove(epaxos_kv::core::ids::ReplicaId(id)),
    }
}

/// r2 crashes for good, then r0 removes it: the change executes everywhere alive, the two
/// survivors go on in epoch 1 under its quorums (both of them), every check holds.
#[test]
fn scenario_membership_remove_a_dead_member_under_load() {
    let o = membership_scenario(
        "scenario_membership_remove_a_dead_member_under_load",
        3,
        vec![(ms(300), Action::Crash(2)), (ms(900), remove(0, 2))],
        |_| {},
    );
    assert!(o.violations.is_empty(), "{}", o.report);
    assert_eq!(o.stats.changes_executed, 1, "{:?}", o.stats);
    assert_eq!(o.stats.final_epoch, 1);
    assert!(o.stats.ops_done > 0, "{:?}", o.stats);
}

/// A live member is removed under load: it stops leading, its clients go elsewhere, the two
/// others end in epoch 1 with every check holding.
#[test]
fn scenario_membership_remove_a_live_member_under_load() {
    let o = membership_scenario(
        "scenario_membership_remove_a_live_member_under_load",
        3,
        vec![(ms(400), remove(1, 1))],
        |_| {},
    );
    assert!(o.violations.is_empty(), "{}", o.report);
    assert_eq!(o.stats.changes_executed, 1, "{:?}", o.stats);
    assert_eq!(o.stats.final_epoch, 1);
    assert!(o.stats.ops_done > 0, "{:?}", o.stats);
}

/// 5 → 4 → 3 under load, one change at a time (the second is asked once the first is done),
/// with a crash and restart of a member in between: it comes back in the epoch it stored.
#[test]
fn scenario_membership_shrink_five_to_three_with_a_restart() {
    let o = membership_scenario(
        "scenario_membership_shrink_five_to_three_with_a_restart",
        5,
        vec![
            (ms(300), remove(0, 4)),
            (ms(900), Action::CrashForRestart(1)),
            (ms(1_200), Action::Restart(1)),
            (ms(1_800), remove(2, 3)),
        ],
        |_| {},
    );
    assert!(o.violations.is_empty(), "{}", o.report);
    assert_eq!(o.stats.changes_executed, 2, "{:?}", o.stats);
    assert_eq!(o.stats.final_epoch, 2);
    assert!(o.stats.ops_done > 0, "{:?}", o.stats);
}

/// Two changes asked at once at two replicas: one executes, the other is stale everywhere
/// alike (or refused as in flight where the first was already known).
#[test]
fn scenario_membership_two_concurrent_changes_one_wins() {
    let o = membership_scenario(
        "scenario_membership_two_concurrent_changes_one_wins",
        5,
        vec![(ms(500), remove(0, 4)), (ms(500), remove(1, 3))],
        |_| {},
    );
    assert!(o.violations.is_empty(), "{}", o.report);
    assert_eq!(o.stats.changes_executed, 1, "{:?}", o.stats);
    assert_eq!(o.stats.changes_stale + o.stats.changes_refused, 1);
    assert_eq!(o.stats.final_epoch, 1);
}

/// 5 → 3 by removing r4 then r3 (both stay up), then a partition {0,3} {2,4} {1} while r0 and
/// r2 write one key: epoch 2's members {0,1,2} cannot commit either write until it heals (two
/// of three needed, each side has one). Counting the removed replicas' votes (the sabotage)
/// lets r0 commit with r3 and r2 with r4, neither seeing the other.
fn removed_votes_scenario(name: &'static str, plant: fn(&mut Config)) -> Outcome {
    let mut cfg = Config::scripted(name, 5, 2, 1, ms(2_500));
    plant(&mut cfg);
    cfg.settle_max = ms(20_000);
    let script = vec![
        (ms(100), remove(0, 4)),
        (ms(700), remove(1, 3)),
        (
            ms(1_200),
            Action::Partition(vec![vec![0, 3], vec![2, 4], vec![1]]),
        ),
        (ms(1_300), op(0, 0, put(0, "from-r0"))),
        (ms(1_300), op(1, 2, put(0, "from-r2"))),
        (ms(2_200), Action::HealLinks),
    ];
    Sim::scripted(cfg, script).run()
}

/// Without the sabotage the scenario above is clean: the two writes wait for the heal.
#[test]
fn scenario_membership_removed_replicas_do_not_vote() {
    let o = removed_votes_scenario("scenario_membership_removed_replicas_do_not_vote", |_| {});
    assert!(o.violations.is_empty(), "{}", o.report);
    assert_eq!(o.stats.changes_executed, 2, "{:?}", o.stats);
    assert_eq!(o.stats.final_epoch, 2);
    // A client whose first request timed out during the partition may retry it elsewhere and
    // be told its session expired (outcome unknown, see `session`): answered either way.
    assert!(
        o.stats.ops_done + o.stats.expired_answers >= 2,
        "{:?}",
        o.stats
    );
}

/// The epoch boundary's first rule (`seal.rs`), under a 5 → 3 shrink: r3 is cut off while r0
/// removes r4 (epoch 1, {r0..r3}) and r1 removes r3 (epoch 2, {r0, r1, r2}), so r3 still leads
/// in epoch 0. Then the cluster splits {r0, r1} | {r2, r3, r4}, and at once r3 writes key 0 in
/// epoch 0 (asking r2 and r4, both sealed) while r0 writes it in epoch 2 (r0 and r1 are a
/// quorum there). Epoch 0's and epoch 2's quorums need not meet: only the seals keep r3's
/// write from committing unseen by r0's. A sealed replica that votes above its seal (the
/// sabotage) lets both commit, neither reaching the other.
fn old_write_after_the_seal_scenario(name: &'static str, plant: fn(&mut Config)) -> Outcome {
    let mut cfg = Config::scripted(name, 5, 2, 1, ms(2_500));
    plant(&mut cfg);
    cfg.settle_max = ms(20_000);
    let script = vec![
        (ms(50), Action::Partition(vec![vec![0, 1, 2, 4], vec![3]])),
        (ms(100), remove(0, 4)),
        (ms(600), remove(1, 3)),
        (ms(1_200), Action::HealLinks),
        (
            ms(1_200),
            Action::Partition(vec![vec![0, 1], vec![2, 3, 4]]),
        ),
        (ms(1_200), op(0, 3, put(0, "old-epoch"))),
        (ms(1_200), op(1, 0, put(0, "new-epoch"))),
        (ms(2_200), Action::HealLinks),
    ];
    Sim::scripted(cfg, script).run()
}

/// Without the sabotage the scenario above is clean: the sealed replicas refuse r3's write
/// above their seals, so it ends as a no-op (its client is answered when it retries).
#[test]
fn scenario_membership_sealed_replicas_refuse_old_writes_above_the_seal() {
    let o = old_write_after_the_seal_scenario(
        "scenario_membership_sealed_replicas_refuse_old_writes_above_the_seal",
        |_| {},
    );
    assert!(o.violations.is_empty(), "{}", o.report);
    assert_eq!(o.stats.changes_executed, 2, "{:?}", o.stats);
    assert_eq!(o.stats.final_epoch, 2);
    assert!(
        o.stats.recovered_nop >= 1,
        "r3's write ended a no-op: {:?}",
        o.stats
    );
}

// ---- adding members (issue 15) ----------------------------------------------------------------

fn add(replica: usize, id: u32) -> Action {
    Action::Reconfigure {
        replica,
        change: epaxos_kv::core::epoch::Change::Add(epaxos_kv::core::epoch::Member {
            id: epaxos_kv::core::ids::ReplicaId(id),
            peer_addr: format!("sim-{id}:1"),
            client_addr: format!("sim-{id}:2"),
        }),
    }
}

/// A scripted run under random load with `spares` replicas beyond epoch 0's `n` that knock
/// until a change in `script` adds them (see `Sim::try_join`).
fn adding_scenario(
    name: &'static str,
    n: usize,
    spares: usize,
    script: Vec<(Duration, Action)>,
    plant: fn(&mut Config),
) -> Outcome {
    let mut cfg = Config::scripted(name, n, 6, 3, ms(3_000));
    cfg.random_ops = true;
    cfg.think_max = ms(5);
    cfg.settle_max = ms(20_000);
    cfg.spares = spares;
    plant(&mut cfg);
    Sim::scripted(cfg, script).run()
}

/// 3 → 5 under load, one change at a time: r3 and r4 start empty and knock; each joins from a
/// peer's snapshot once its change executed there, votes, and leads once it learnt the
/// boundary. Every check holds and all five end in epoch 2.
#[test]
fn scenario_membership_grow_three_to_five_under_load() {
    let o = adding_scenario(
        "scenario_membership_grow_three_to_five_under_load",
        3,
        2,
        vec![(ms(300), add(0, 3)), (ms(1_200), add(1, 4))],
        |_| {},
    );
    assert!(o.violations.is_empty(), "{}", o.report);
    assert_eq!(o.stats.changes_executed, 2, "{:?}", o.stats);
    assert_eq!(o.stats.joins, 2, "{:?}", o.stats);
    assert_eq!(o.stats.final_epoch, 2);
    assert_eq!(o.stats.final_digests.len(), 5, "{:?}", o.stats);
    assert!(o.stats.ops_done > 0, "{:?}", o.stats);
}

/// Replace a dead member: r2 crashes for good, r0 removes it (epoch 1, {r0, r1}), then r1
/// adds r3 (epoch 2, {r0, r1, r3}); r3 joins and the three go on under load.
#[test]
fn scenario_membership_replace_a_dead_member_under_load() {
    let o = adding_scenario(
        "scenario_membership_replace_a_dead_member_under_load",
        3,
        1,
        vec![
            (ms(300), Action::Crash(2)),
            (ms(700), remove(0, 2)),
            (ms(1_500), add(1, 3)),
        ],
        |_| {},
    );
    assert!(o.violations.is_empty(), "{}", o.report);
    assert_eq!(o.stats.changes_executed, 2, "{:?}", o.stats);
    assert_eq!(o.stats.joins, 1, "{:?}", o.stats);
    assert_eq!(o.stats.final_epoch, 2);
    assert!(o.stats.ops_done > 0, "{:?}", o.stats);
}

/// r0 adds r3 while r2 is cut off ({r0, r1, r3} | {r2}): the change executes at r0 and r1,
/// r3 joins among them; r2 learns epoch 1 after the heal and all four end in it.
#[test]
fn scenario_membership_add_during_a_partition() {
    let o = adding_scenario(
        "scenario_membership_add_during_a_partition",
        3,
        1,
        vec![
            (ms(200), Action::Partition(vec![vec![0, 1, 3], vec![2]])),
            (ms(400), add(0, 3)),
            (ms(2_000), Action::HealLinks),
        ],
        |_| {},
    );
    assert!(o.violations.is_empty(), "{}", o.report);
    assert_eq!(o.stats.changes_executed, 1, "{:?}", o.stats);
    assert_eq!(o.stats.joins, 1, "{:?}", o.stats);
    assert_eq!(o.stats.final_epoch, 1);
    assert_eq!(o.stats.final_digests.len(), 4, "{:?}", o.stats);
}

/// r0 proposes adding r3 and crashes right after (its PreAccept may be out): the change is
/// recovered by r1 and r2 (with its command or as a no-op). r0 restarts later. Every check
/// holds; r3 joined if and only if the change executed.
#[test]
fn scenario_membership_add_with_the_proposer_crashing() {
    let o = adding_scenario(
        "scenario_membership_add_with_the_proposer_crashing",
        3,
        1,
        vec![
            (ms(400), add(0, 3)),
            (ms(401), Action::CrashForRestart(0)),
            (ms(1_500), Action::Restart(0)),
        ],
        |_| {},
    );
    assert!(o.violations.is_empty(), "{}", o.report);
    let epoch = o.stats.final_epoch;
    assert!(epoch <= 1, "{:?}", o.stats);
    assert_eq!(o.stats.joins, epoch, "{:?}", o.stats);
}

/// Random seeds with membership changes both ways (issue 15): one or two spares (ids beyond
/// epoch 0's) knock from the start; at random moments random live members ask to add the next
/// spare (once or twice) and to remove a member (once; a permanent crash's victim first), among
/// loss, partitions, crashes, torn crashes, restarts and one wipe (a member, a removed replica
/// or a spare, before or after it was added, loses its disk: see `Sim::wipe`). Every check
/// holds, and every live member ends in one configuration.
///
/// Until the boundary was decided by Paxos (`replica::seal`), 11 of seeds 0..2,000 failed
/// Liveness (340, 606, 792, 1201, 1218, 1240, 1484, 1558, 1616, 1763, 1856; 1201 the gap of
/// seed 1459 of `random_seeds_with_removals`), and 62 of 0..20,000; with it (and a removed
/// replica dropping the changes waiting there, seed 3175), seeds 0..2,000 passed and 2 of
/// 0..20,000 failed Liveness (6324 and 8029: an old instance above the decided boundary was
/// validated forever; see `changes_regression_seeds`); with its recovery ending it as a no-op,
/// seeds 0..20,000 pass (350 s on two shared cores). The default 300 seeds take about 3 s.
#[test]
fn random_seeds_with_changes() {
    // `SIM_SEED=S` replays one seed (with `SIM_TRACE=1`, traced), as in `random_seeds`.
    let single = env_u64("SIM_SEED");
    let list: Vec<u64> = match single {
        Some(seed) => vec![seed],
        None => (0..env_u64("SIM_SEEDS").unwrap_or(CHANGES_SEEDS)).collect(),
    };
    let started = Instant::now();
    let outcomes = run_seeds(list.clone(), |seed| random_changes(seed, |_| {}));
    let executed: u64 = outcomes.iter().map(|o| o.stats.changes_executed).sum();
    let joins: u64 = outcomes.iter().map(|o| o.stats.joins).sum();
    println!(
        "{} seeds with changes in {:.1?}: {executed} changes executed, {joins} members added \
         and joined; {}",
        list.len(),
        started.elapsed(),
        wipe_stats(&outcomes)
    );
    let failed: Vec<&Outcome> = outcomes
        .iter()
        .filter(|o| !o.violations.is_empty())
        .collect();
    for o in &failed {
        let checks: Vec<Check> = o.violations.iter().map(|v| v.check).collect();
        eprintln!("seed {} failed {checks:?}", o.config.seed);
    }
    if let Some(o) = failed.first() {
        panic!(
            "{} of {} seeds failed: {:?}\n{}",
            failed.len(),
            outcomes.len(),
            failed.iter().map(|o| o.config.seed).collect::<Vec<_>>(),
            o.report
        );
    }
    assert!(
        single.is_some() || joins >= list.len() as u64 / 4,
        "too few members added to test anything"
    );
}

/// Seeds of `random_seeds_with_changes` that once failed, kept passing. 758: r0, left behind
/// by its peers' collection across the add of r3, caught up from a snapshot in epoch 2 without
/// ever executing the change, so it held no seal of epoch 1, whose only other member r1 then
/// waited forever for its `Sealed` (fixed by `seal_missed_boundary`; before that, r0 could not
/// even read its peers' Watermarks naming r3's row: fixed by cutting them to the rows known).
/// 1398: a replica stayed in epoch 0 (fixed by pulling Commits on a message naming an unknown
/// row). 1439: repeated admin tokens. 18: a restart dropped its log's records of an added row.
/// 9273: a restart panicked (index out of bounds) on a record whose deps named an added row its
/// log held no record of (the rows now grow to cover deps too). 4217: the simulator's join
/// counted a peer that had not learnt a later add, whose answer the Joiner refuses. 340, 792,
/// 1201: Liveness at the epoch boundary, fixed by deciding it by Paxos (`replica::seal`); and
/// seed 1459 of `random_seeds_with_removals`, the same gap. 3175: a change proposed at a
/// replica waited there (for the boundary) while another's change removing it executed, and
/// stayed pending forever (a removed replica now drops every proposal waiting). 6324, 8029: an
/// epoch-0 instance pre-accepted only by its dead leader and one survivor, above the decided
/// boundary (decided while that survivor was cut off), validated forever, the sealed survivors
/// refusing its Validate; everything executed after it waited (its recovery now ends it as a
/// no-op: `Replica::above_decided_boundary`).
#[test]
fn changes_regression_seeds() {
    let list = vec![
        18, 340, 758, 792, 1201, 1398, 1439, 3175, 4217, 6324, 8029, 9273,
    ];
    // Replayed as they failed: without the wipe the runners now add.
    let mut outcomes = run_seeds(list, |seed| random_changes(seed, |c| c.wipes = 0));
    outcomes.extend(run_seeds(vec![1459], |seed| {
        random_removals(seed, |c| c.wipes = 0)
    }));
    assert_every_seed_passes(&outcomes);
}

/// Panics with the first failing seed's report.
fn assert_every_seed_passes(outcomes: &[Outcome]) {
    if let Some(o) = outcomes.iter().find(|o| !o.violations.is_empty()) {
        panic!("seed {} failed:\n{}", o.config.seed, o.report);
    }
}

/// Seeds of the membership runners that failed once wipes ran across changes, kept passing.
/// `random_seeds_with_changes`: 242, the wiped r0's new incarnation used again slots of its
/// row that only a removed replica still running held (the wipe now waits until no removed
/// replica knows a row further than the members); 629, 646, 846, a rejoined member fenced in
/// a two-member epoch whose boundary was not decided yet, which then never was (the wipe
/// counts against that epoch's F); 788, a restart's log re-execution sealed afresh and
/// overwrote the stored decision (`Replica::restore_seals`); 1554, the old incarnation's
/// PreAccept, still in flight, reached a removed replica the join did not ask, whose seal then
/// raised the boundary above the new incarnation's first slot (every live replica fences it
/// now). `random_seeds_with_removals`: 371 and 839, a removal executed after the wipe left a
/// two-member configuration with the rejoined member still abstaining (a removal to come
/// counts against F). 788 and 1554 rejoin; the others now skip their wipe (traced), which
/// keeps those skip rules in place. Once recovery counted each instance's own epoch: 5128,
/// an instance fast-committed by a wiped leader and recovered as a no-op under the
/// recoverer's smaller current epoch (Agreement; fixed by that); 3210, a wipe of one member of
/// a finished two-member epoch with an instance of it undecided (the wipe now counts against
/// the F of every epoch the replica was a member of); 11652, promises of the old incarnation
/// reached boundary proposers just before the wipe, the boundary decided from them lay above
/// the new incarnation's horizon (horizons now cover the rounds under way).
#[test]
fn wipes_regression_seeds() {
    let mut outcomes = run_seeds(
        vec![242, 629, 646, 788, 846, 1554, 3210, 5128, 11652],
        |seed| random_changes(seed, |_| {}),
    );
    outcomes.extend(run_seeds(vec![371, 839], |seed| {
        random_removals(seed, |_| {})
    }));
    assert_every_seed_passes(&outcomes);
    assert!(
        outcomes.iter().any(|o| o.stats.wipes > 0),
        "the seeds no longer wipe anything"
    );
}

/// Random seeds `random_seeds_with_changes` runs by default.
const CHANGES_SEEDS: u64 = 300;

/// `Config::random(seed)` with one or two spares, as many adds, one removal, and one wipe.
fn random_changes(seed: u64, plant: fn(&mut Config)) -> Config {
    let mut cfg = Config::random(seed);
    cfg.scenario = Some("random_seeds_with_changes");
    cfg.wipes = 1;
    cfg.spares = 1 + (seed % 2) as usize;
    cfg.adds = cfg.spares;
    cfg.removals = 1;
    plant(&mut cfg);
    cfg
}
