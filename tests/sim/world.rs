//! The simulated world: the event queue in virtual time, one seeded generator, and the run's
//! two phases; the parts it drives live beside it (`config`, `network`, `disk`, `cluster`,
//! `workload`, `checkers`), in the shape of TigerBeetle's VOPR.
//!
//! A run has two phases:
//! 1. chaos (`Config::chaos` long): clients issue random operations on a few keys; the network
//!    delays (a base latency plus a rare long tail, so messages overtake each other), loses and
//!    duplicates messages; partitions (symmetric and one-way) come and heal; replicas crash and
//!    restart, and up to F crash for good (at most F are down at any moment);
//! 2. settling: every link heals, loss and duplication stop, every replica that is down for a
//!    restart comes back, clients finish what they started and issue no more; one barrier write
//!    per key follows (see `Config::barrier`). Every command must then commit and execute at
//!    every live replica within `Config::settle_max`.
//!
//! Liveness is demanded of everything, permanent crashes included: an instance whose leader
//! crashed for good (mid-instance, or while it was recovering another) is taken over by
//! recovery (see `epaxos_kv::core::recovery`), and a leader that restarts resumes its uncommitted
//! instances from its disk.
//!
//! Every random draw comes from `Sim::rng` (or a generator forked or seeded from the seed) in
//! an order fixed by the event queue: a seed replays exactly, and moving code between these
//! modules must not reorder draws (`SIM_HASHES=1` shows it did not).

use std::cmp::Ordering;
use std::collections::{BTreeMap, BinaryHeap, HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use epaxos_kv::core::command::{Command, Op, OpResult};
use epaxos_kv::core::ids::{ClientId, Incarnation, InstanceId, ReplicaId};
use epaxos_kv::core::instance::Instance;
use epaxos_kv::core::membership::Membership;
use epaxos_kv::core::message::{Message, ShowDeps};
use epaxos_kv::core::node::{Node, Restored};
use epaxos_kv::core::replica::{Options, Replica, ReplyError, Seal, Token};
use epaxos_kv::core::testkit::Links;

use super::checkers::observer::Observer;
use super::checkers::{Check, Violation};
use super::cluster::{Fault, Life, SCRIPTED};
use super::config::{Action, Config};
use super::rng::Rng;
use super::trace::{Trace, What};
use super::workload::{session_id, Client, HistOp};

/// How often each replica's timer fires.
pub(super) const TICK: Duration = Duration::from_millis(10);
/// How often the settling phase looks for quiescence.
pub(super) const CHECK_EVERY: Duration = Duration::from_millis(50);
/// Most events one run may process: a simulator needs a step limit too.
pub(super) const EVENTS_MAX: u64 = 50_000_000;

/// How many trace events a failure report shows.
pub(super) const REPORT_EVENTS: usize = 40;

/// What a run measured.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub events: u64,
    pub delivered: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub ops_done: u64,
    pub ops_open: u64,
    pub retries: u64,
    pub fast: u64,
    pub slow: u64,
    /// Instances decided by a recovery: with their command, and as no-ops.
    pub recovered: u64,
    pub recovered_nop: u64,
    pub instances: usize,
    pub component_max: usize,
    pub sim_time: Duration,
    /// From healing to quiescence.
    pub settle_time: Option<Duration>,
    pub wall: Duration,
    pub inconclusive_keys: usize,
    /// Restarts performed, torn crashes among the crashes before them, and own uncommitted
    /// instances the restarted replicas resumed from their disks.
    pub restarts: u64,
    pub torn: u64,
    pub resumed: u64,
    /// Records written to the replicas' disks.
    pub records: u64,
    /// Checkpoints stored, crashes between storing one and cutting the log, and restarts from a
    /// checkpoint (with the log beside it).
    pub checkpoints: u64,
    pub checkpoint_crashes: u64,
    pub checkpoint_restarts: u64,
    /// Wipes performed (the replica rejoined from a peer's snapshot), and wipes skipped (see
    /// `Config::wipes`).
    pub wipes: u64,
    pub wipes_skipped: u64,
    /// Wipes of a replica removed meanwhile (it refused to start), and of a spare still
    /// knocking (it knocks afresh).
    pub wipes_removed: u64,
    pub wipes_knocking: u64,
    /// Instances executed (and reported) by replicas after they rejoined, and restarts of
    /// replicas that had rejoined (from the snapshot's checkpoint and what they logged since).
    pub executed_after_rejoin: u64,
    pub restarts_after_rejoin: u64,
    /// Snapshots installed by replicas that the others' garbage collection left behind (see
    /// `Sim::catch_up`).
    pub catch_ups: u64,
    /// Live replicas that rejoined and, at the end of the run, have still not learnt every
    /// instance below their horizons committed (see `Sim::abstaining`).
    pub still_abstaining: u64,
    /// The store digest of every live replica at the end of the run.
    pub final_digests: Vec<u64>,
    /// Sessions removed by executed expiries (summed over replicas), client answers "session
    /// expired" (the session renewed), and late retries sent after a sleep.
    pub sessions_expired: u64,
    pub expired_answers: u64,
    pub late_retries: u64,
    /// Membership changes: refused when asked, answered executed (success), answered stale.
    pub changes_refused: u64,
    pub changes_executed: u64,
    pub changes_stale: u64,
    /// The epoch every live replica ended in (checked equal, see `check_configurations`).
    pub final_epoch: u64,
    /// Spares that joined once a change added them (see `Sim::try_join`).
    pub joins: u64,
}

/// The result of one run.
/// Tokens from here up are admin calls (membership changes), not clients'.
pub(super) const ADMIN_TOKENS: Token = 1 << 62;

#[derive(Debug)]
pub struct Outcome {
    pub config: Config,
    pub violations: Vec<Violation>,
    pub stats: Stats,
    pub trace_hash: u64,
    /// A reproduction to print when the run failed; empty otherwise.
    pub report: String,
}

impl Outcome {
    pub fn failed(&self, check: Check) -> bool {
        self.violations.iter().any(|v| v.check == check)
    }
}

#[derive(Debug)]
pub(super) enum Event {
    Deliver {
        from: usize,
        to: usize,
        msg: Message,
        /// The sender's `generation` when it sent: a wipe fences the older ones.
        generation: u64,
    },
    /// A replica's timer, for one incarnation (a restart starts a new chain of ticks).
    Tick(usize, u64),
    ClientNext(usize),
    /// A client wakes from a sleep longer than the TTL: a late retry, then its next request.
    ClientWake(usize),
    Request {
        replica: usize,
        token: Token,
        cmd: Command,
    },
    Response {
        client: usize,
        /// The session the request was sent in (a client renews its session on expiry).
        session: ClientId,
        request: u64,
        result: Result<OpResult, ReplyError>,
    },
    ClientTimeout {
        client: usize,
        request: u64,
        attempt: u32,
    },
    Fault(Fault),
    Script(Action),
    EndChaos,
    Check,
    Deadline,
}

pub(super) struct Scheduled {
    pub(super) at: Duration,
    pub(super) seq: u64,
    pub(super) event: Event,
}

impl PartialEq for Scheduled {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scheduled {
    /// Reversed: `BinaryHeap` pops the earliest event, ties in scheduling order.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

/// A simulated cluster and its clients.
pub struct Sim {
    pub(super) cfg: Config,
    pub(super) now: Duration,
    pub(super) rng: Rng,
    pub(super) queue: BinaryHeap<Scheduled>,
    pub(super) seq: u64,
    /// Each replica's node: the production code for its core, membership, peers' incarnations
    /// and checkpoint cadence.
    pub(super) nodes: Vec<Node>,
    /// Each replica's options, to restore it with.
    pub(super) opts: Vec<Options>,
    pub(super) life: Vec<Life>,
    /// Bumped by every restart and rejoin: ticks of an earlier incarnation stop.
    pub(super) incarnation: Vec<u64>,
    /// Bumped by every wipe: the peers refuse what an earlier generation sent (the runtime's
    /// incarnation fence; a restart keeps its generation, its messages still count).
    pub(super) generation: Vec<u64>,
    /// Per replica: the horizons it rejoined with, durable beside its disk (the runtime's
    /// `Membership::Joined`); a restart sets them again. `None`: it never lost its disk.
    pub(super) horizons: Vec<Option<Vec<u64>>>,
    /// Per replica: known to have learnt every instance below its horizons committed (it
    /// abstains on nothing any more; see `abstaining`).
    pub(super) caught_up: Vec<bool>,
    /// Per replica that rejoined, per row: the first slot not known committed there (how far
    /// `abstaining` has looked).
    pub(super) learnt: Vec<Vec<u64>>,
    /// Per replica: every record it persisted since its last log cut, in order (the log a
    /// restart replays), and its last checkpoint, encoded.
    pub(super) disk: Vec<Vec<(InstanceId, Instance)>>,
    pub(super) checkpoint: Vec<Option<Vec<u8>>>,
    /// Per replica: its peers' incarnations and its membership as last stored (what a restart
    /// reads besides the log and the checkpoint).
    pub(super) peers_disk: Vec<Vec<Option<Incarnation>>>,
    pub(super) membership_disk: Vec<Membership>,
    /// Per replica: the seals of the epochs it left, as last stored (`Ready::sealed`).
    pub(super) sealed_disk: Vec<Vec<Seal>>,
    /// Per replica: a scripted crash waits for its next checkpoint.
    pub(super) crash_at_checkpoint: Vec<bool>,
    /// Decides the crashes between checkpoint and log cut, apart from `rng` so that the other
    /// draws of a run stay what they were before checkpoints existed.
    pub(super) checkpoint_rng: Rng,
    /// Per replica, per instance: the last record on its disk (what a message may reveal).
    pub(super) durable: Vec<HashMap<InstanceId, Instance>>,
    /// Every instance whose first PreAccept left early (before its record was durable), over
    /// the whole run: one sent twice is a slot used again (see `Sim::send_early`).
    pub(super) started: HashSet<InstanceId>,
    /// Per replica: the digest of its store after its last `Ready` carried out (a torn crash
    /// loses what the step it interrupts executed).
    pub(super) digest: Vec<u64>,
    /// Permanent crashes scheduled that have not happened yet: a restart cycle keeps room for
    /// them under the limit of F replicas down.
    pub(super) crashes_ahead: usize,
    /// Which links are cut (the shared in-memory network's, `core::testkit`).
    pub(super) links: Links,
    /// Per replica, per row: how far the observer was told it collected (see
    /// `Observer::on_collected`).
    pub(super) collected_seen: Vec<Vec<u64>>,
    pub(super) loss: f64,
    pub(super) dup: f64,
    pub(super) settling: bool,
    pub(super) healed_at: Duration,
    pub(super) keys: Vec<Bytes>,
    pub(super) clients: Vec<Client>,
    pub(super) tokens: BTreeMap<Token, (usize, u64, ClientId)>,
    /// Tokens of the admin calls (membership changes) waiting for their answer.
    pub(super) admin_tokens: std::collections::BTreeSet<Token>,
    /// Each replica's durable configuration record (the metadata record of the runtime):
    /// written first of every `Ready` that carries one, given back at a restart.
    pub(super) configuration_disk: Vec<Option<epaxos_kv::core::replica::Decided>>,
    /// Per replica: how far its wall clock is off the simulated time, in milliseconds.
    pub(super) skew_ms: Vec<i64>,
    pub(super) next_token: Token,
    pub(super) history: Vec<HistOp>,
    /// Logical clock of the history: orders invocations and returns strictly.
    pub(super) stamp: u64,
    pub(super) observer: Observer,
    pub(super) trace: Trace,
    pub(super) stats: Stats,
    pub(super) drop_next: Vec<(usize, usize, &'static str)>,
    pub(super) violations: Vec<Violation>,
    pub(super) done: bool,
    pub(super) ticks: Vec<u64>,
}

impl Sim {
    /// A random run of `cfg`.
    pub fn new(cfg: Config) -> Sim {
        Sim::scripted(cfg, Vec::new())
    }

    /// A run of `cfg` with `script` steps at the given times.
    pub fn scripted(cfg: Config, script: Vec<(Duration, Action)>) -> Sim {
        let n = cfg.n;
        // Epoch 0's replicas, then the spares a change may add (see `Config::spares`).
        let total = n + cfg.spares;
        let opts: Vec<Options> = (0..total)
            .map(|i| {
                let mut o = Options::new(ReplicaId(i as u32), n);
                o.thrifty = cfg.thrifty;
                o.batch_max = cfg.batch_max;
                o.inflight_max = cfg.inflight_max;
                o.retry = cfg.retry;
                o.retry_max = o.retry_max.max(cfg.retry);
                o.fetch_after = cfg.fetch_after;
                o.gc_executed = cfg.gc_executed;
                o.retention_instances = cfg.retention_instances;
                o.retention_bytes = cfg.retention_bytes;
                o.session_ttl = cfg.session_ttl;
                if cfg.sabotage_only.is_none_or(|r| r == i) {
                    o.sabotage = cfg.sabotage.clone();
                }
                o.sabotage.rejoin_without_horizons = cfg.sabotage_rejoin_without_horizons;
                o
            })
            .collect();
        let joined = Membership::Joined {
            horizons: vec![0; n],
        };
        let membership = |i: usize| {
            if i < n {
                joined.clone()
            } else {
                Membership::Joining
            }
        };
        let nodes: Vec<Node> = opts
            .iter()
            .enumerate()
            .map(|(i, o)| {
                Node::new(
                    o.clone(),
                    cfg.checkpoint_every,
                    Duration::ZERO,
                    Restored {
                        membership: membership(i),
                        configuration: None,
                        peers: vec![None; n],
                        checkpoint: None,
                        records: Vec::new(),
                        sealed: Vec::new(),
                    },
                )
            })
            .collect();
        let digest = nodes.iter().map(|r| r.replica().kv().digest()).collect();
        let keys: Vec<Bytes> = (0..cfg.keys)
            .map(|k| Bytes::from(format!("k{k}")))
            .collect();
        let clients = (0..cfg.clients + cfg.keys)
            .map(|c| Client {
                id: session_id(c, 0),
                next_request: 1,
                current: None,
                last_seen: BTreeMap::new(),
                answers: BTreeMap::new(),
                sessions: 0,
                last_done: None,
            })
            .collect();
        // Apart from `rng`, so that the other draws of a run stay what they were.
        let mut skew_rng = Rng::new(cfg.seed ^ 0x5c3e_0c10_c4ab_1e55);
        let skew_max = cfg.skew_max.as_millis() as u64;
        let skew_ms = (0..total)
            .map(|_| skew_rng.range(0, 2 * skew_max) as i64 - skew_max as i64)
            .collect();
        let mut sim = Sim {
            rng: Rng::new(cfg.seed),
            now: Duration::ZERO,
            queue: BinaryHeap::new(),
            seq: 0,
            nodes,
            opts,
            life: vec![Life::Up; total],
            incarnation: vec![0; total],
            generation: vec![0; total],
            horizons: vec![None; total],
            caught_up: vec![true; total],
            learnt: vec![vec![0; total]; total],
            disk: vec![Vec::new(); total],
            checkpoint: vec![None; total],
            peers_disk: vec![vec![None; n]; total],
            membership_disk: (0..total).map(membership).collect(),
            sealed_disk: vec![Vec::new(); total],
            crash_at_checkpoint: vec![false; total],
            checkpoint_rng: Rng::new(cfg.seed ^ 0xc4ec_4b01_47c0_ffee),
            durable: vec![HashMap::new(); total],
            started: HashSet::new(),
            digest,
            crashes_ahead: 0,
            links: Links::new(total),
            collected_seen: vec![vec![0; total]; total],
            loss: cfg.loss,
            dup: cfg.dup,
            settling: false,
            healed_at: cfg.chaos,
            keys,
            clients,
            tokens: BTreeMap::new(),
            admin_tokens: std::collections::BTreeSet::new(),
            configuration_disk: vec![None; total],
            skew_ms,
            next_token: 1,
            history: Vec::new(),
            stamp: 0,
            observer: Observer::new(n, total, cfg.gc_executed),
            trace: Trace::default(),
            stats: Stats::default(),
            drop_next: Vec::new(),
            violations: Vec::new(),
            done: false,
            ticks: vec![0; total],
            cfg,
        };
        for (at, action) in script {
            sim.schedule_at(at, Event::Script(action));
        }
        sim
    }

    pub(super) fn schedule_at(&mut self, at: Duration, event: Event) {
        self.seq += 1;
        self.queue.push(Scheduled {
            at,
            seq: self.seq,
            event,
        });
    }

    pub(super) fn schedule(&mut self, after: Duration, event: Event) {
        self.schedule_at(self.now + after, event);
    }

    /// Runs to quiescence after settling, or to the liveness deadline, and checks everything.
    pub fn run(mut self) -> Outcome {
        let wall = Instant::now();
        self.start();
        while let Some(s) = self.queue.pop() {
            self.now = s.at;
            self.stats.events += 1;
            self.handle(s.event);
            if self.done {
                break;
            }
            if self.stats.events >= EVENTS_MAX {
                self.violations.push(Violation {
                    check: Check::Liveness,
                    detail: format!("no quiescence within {EVENTS_MAX} events"),
                    instances: Vec::new(),
                });
                break;
            }
        }
        self.finish(wall)
    }

    pub(super) fn start(&mut self) {
        let n = self.cfg.n;
        for r in 0..self.nodes.len() {
            // Staggered so that the replicas' timers do not fire in lockstep.
            self.schedule_at(Duration::from_micros(1 + 997 * r as u64), Event::Tick(r, 0));
        }
        if self.cfg.random_ops {
            for c in 0..self.cfg.clients {
                let at = Duration::from_micros(self.rng.range(0, 5_000));
                self.schedule_at(at, Event::ClientNext(c));
            }
        }
        let mut faults = self.rng.fork();
        if self.cfg.partitions {
            self.plan_partitions(&mut faults);
        }
        let mut order: Vec<usize> = (0..n).collect();
        for i in (1..n).rev() {
            order.swap(i, faults.index(i + 1));
        }
        let chaos_ms = self.cfg.chaos.as_millis() as u64;
        for &r in order.iter().take(self.cfg.crashes) {
            let at = Duration::from_millis(faults.range(100, chaos_ms.max(101)));
            self.schedule_at(at, Event::Fault(Fault::Crash(r)));
        }
        self.crashes_ahead = self.cfg.crashes;
        for cycle in 0..self.cfg.restarts as u64 {
            let r = faults.index(n);
            let at = faults.range(50, chaos_ms.max(51));
            // From a blink (messages sent before the crash still arrive after the restart) to
            // well past the clients' timeouts.
            let down = *faults.pick(&[1, 5, 40, 300, 1500]);
            let down = faults.range(down / 2, down);
            let torn = self.cfg.torn && faults.chance(0.5);
            self.schedule_at(
                Duration::from_millis(at),
                Event::Fault(Fault::Down { r, cycle, torn }),
            );
            let back = Duration::from_millis(at + down).min(self.cfg.chaos);
            self.schedule_at(back, Event::Fault(Fault::Restart { r, cycle }));
        }
        // Drawn after the faults above, which stay what they were before wipes existed.
        for _ in 0..self.cfg.wipes {
            // Spares too (none unless a membership runner plants them: the draw is unchanged).
            let r = faults.index(self.nodes.len());
            let at = faults.range(50, chaos_ms.max(51));
            self.schedule_at(Duration::from_millis(at), Event::Fault(Fault::Wipe(r)));
        }
        // Drawn after everything above, for the same reason.
        for _ in 0..self.cfg.removals {
            let at = faults.range(100, chaos_ms.max(101));
            self.schedule_at(Duration::from_millis(at), Event::Fault(Fault::Remove));
        }
        // Drawn after everything above, for the same reason.
        for _ in 0..self.cfg.adds {
            let at = faults.range(100, chaos_ms.max(101));
            self.schedule_at(Duration::from_millis(at), Event::Fault(Fault::Add));
        }
        self.schedule_at(self.cfg.chaos, Event::EndChaos);
    }

    pub(super) fn handle(&mut self, event: Event) {
        match event {
            Event::Deliver {
                from,
                to,
                msg,
                generation,
            } => self.on_deliver(from, to, msg, generation),
            Event::Tick(r, incarnation) => self.on_tick(r, incarnation),
            Event::ClientNext(c) => {
                if !self.settling && self.clients[c].current.is_none() {
                    let op = self.random_op(c);
                    self.start_op(c, op, None);
                }
            }
            Event::Request {
                replica,
                token,
                cmd,
            } => {
                if !self.alive(replica) {
                    self.lost_request(replica, token);
                    return;
                }
                if self.nodes[replica].propose(token, cmd).is_err() {
                    self.lost_request(replica, token);
                    return;
                }
                self.after_input(replica);
            }
            Event::Response {
                client,
                session,
                request,
                result,
            } => self.on_response(client, session, request, result),
            Event::ClientWake(c) => self.on_wake(c),
            Event::ClientTimeout {
                client,
                request,
                attempt,
            } => {
                let retry = self.clients[client]
                    .current
                    .as_ref()
                    .is_some_and(|c| c.request == request && c.attempt == attempt);
                if retry {
                    self.stats.retries += 1;
                    self.send_attempt(client, None);
                }
            }
            Event::Fault(f) => self.on_fault(f),
            Event::Script(a) => self.on_action(a),
            Event::EndChaos => self.end_chaos(),
            Event::Check => {
                if self.quiescent() {
                    self.stats.settle_time = Some(self.now - self.healed_at);
                    self.done = true;
                } else {
                    self.schedule(CHECK_EVERY, Event::Check);
                }
            }
            Event::Deadline => {
                let gaps = self.liveness_gaps();
                if !gaps.is_empty() {
                    let instances = gaps.iter().filter_map(|(i, _)| *i).take(4).collect();
                    let shown: Vec<&str> = gaps.iter().take(8).map(|(_, s)| s.as_str()).collect();
                    self.violations.push(Violation {
                        check: Check::Liveness,
                        detail: format!(
                            "{} things still undone {:?} after healing: {}",
                            gaps.len(),
                            self.cfg.settle_max,
                            shown.join("; ")
                        ),
                        instances,
                    });
                }
                self.done = true;
            }
        }
    }

    pub(super) fn on_action(&mut self, a: Action) {
        match a {
            Action::Op {
                client,
                replica,
                op,
            } => self.start_op(client, op, Some(replica)),
            Action::Partition(groups) => {
                self.links.partition(&groups);
                self.trace
                    .record(self.now, What::Fault(format!("partition {groups:?}")));
            }
            Action::Cut { from, to } => {
                self.links.cut(from, to);
                self.trace
                    .record(self.now, What::Fault(format!("cut r{from} -> r{to}")));
            }
            Action::HealLinks => self.heal_links(),
            Action::Crash(r) => self.crash(r),
            Action::CrashForRestart(r) => self.go_down(r, SCRIPTED, false),
            Action::CrashTorn(r) => self.go_down(r, SCRIPTED, true),
            Action::Restart(r) => {
                if matches!(self.life[r], Life::Down(_) | Life::Torn(_)) {
                    self.restart(r);
                }
            }
            Action::DropNext { from, to, kind } => self.drop_next.push((from, to, kind)),
            Action::Reconfigure { replica, change } => {
                if !self.alive(replica) {
                    self.stats.changes_refused += 1;
                    return;
                }
                // Unique: one per change asked (a count of those still waiting would repeat).
                let asked = self.stats.changes_executed
                    + self.stats.changes_stale
                    + self.admin_tokens.len() as u64;
                let token = ADMIN_TOKENS + asked + self.stats.changes_refused;
                match self.nodes[replica].propose_reconfigure(token, change, self.now) {
                    Ok(()) => {
                        self.admin_tokens.insert(token);
                    }
                    Err(_) => self.stats.changes_refused += 1,
                }
                self.after_input(replica);
            }
            Action::CrashAtCheckpoint(r) => self.crash_at_checkpoint[r] = true,
            Action::Wipe(r) => self.wipe(r),
        }
    }

    pub(super) fn end_chaos(&mut self) {
        self.heal_links();
        for r in 0..self.nodes.len() {
            if matches!(self.life[r], Life::Down(_) | Life::Torn(_)) {
                self.restart(r);
            }
        }
        self.loss = 0.0;
        self.dup = 0.0;
        self.settling = true;
        self.healed_at = self.now;
        self.trace
            .record(self.now, What::Fault("end of chaos: settling".into()));
        if self.cfg.barrier {
            for k in 0..self.keys.len() {
                let c = self.cfg.clients + k;
                // A write for the deps, but one that never succeeds: it leaves the state as
                // chaos left it, so that the convergence check still compares that.
                let op = Op::Cas {
                    key: self.keys[k].clone(),
                    expected: Some(Bytes::from_static(b"never written")),
                    new: Bytes::from(format!("barrier.{k}")),
                };
                self.start_op(c, op, None);
            }
        }
        self.schedule(CHECK_EVERY, Event::Check);
        self.schedule(self.cfg.settle_max, Event::Deadline);
    }

    pub(super) fn finish(mut self, wall: Instant) -> Outcome {
        for r in 0..self.nodes.len() {
            self.check_invariants(r);
            if self.alive(r) && self.abstaining(r) {
                self.stats.still_abstaining += 1;
            }
        }
        let replicas: Vec<&Replica> = self.nodes.iter().map(Node::replica).collect();
        let graph = self.observer.finish(&replicas);
        self.stats.instances = graph.instances;
        self.stats.component_max = graph.component_max;
        self.check_convergence();
        self.check_configurations();
        self.stats.final_digests = self
            .live()
            .map(|r| self.nodes[r].replica().kv().digest())
            .collect();
        self.check_linearizability();
        self.stats.sim_time = self.now;
        self.stats.ops_open = self.history.iter().filter(|h| h.ret.is_none()).count() as u64;
        self.stats.wall = wall.elapsed();
        let mut violations = self.observer.take_violations();
        violations.append(&mut self.violations);
        violations.sort_by_key(|v| v.check);
        if std::env::var_os("SIM_TRACE").is_some() {
            for e in self.trace.tail(&[], usize::MAX) {
                eprintln!("{:>12.3?} {}", e.at, e.what);
            }
        }
        let report = if violations.is_empty() {
            String::new()
        } else {
            self.report(&violations)
        };
        Outcome {
            violations,
            stats: self.stats.clone(),
            trace_hash: self.trace.hash(),
            report,
            config: self.cfg,
        }
    }

    pub(super) fn report(&self, violations: &[Violation]) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let seed = self.cfg.seed;
        let _ = writeln!(out, "simulation seed {seed} FAILED");
        let _ = writeln!(out, "config: {}", self.cfg);
        for v in violations {
            let _ = writeln!(out, "  {v}");
        }
        let instances: Vec<InstanceId> = violations
            .iter()
            .flat_map(|v| v.instances.iter().copied())
            .take(6)
            .collect();
        let _ = writeln!(
            out,
            "last events{}:",
            if instances.is_empty() {
                String::new()
            } else {
                format!(" touching {}", ShowDeps(Some(&instances)))
            }
        );
        for e in self.trace.tail(&instances, REPORT_EVENTS) {
            let _ = writeln!(out, "  {:>12.3?} {}", e.at, e.what);
        }
        let _ = writeln!(out, "replay: {}", self.cfg.replay());
        out
    }
}
