//! The simulated world: replicas of the real core, a network, clients and faults, all driven
//! by one event queue in virtual time and one seeded generator.
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
//! The crash model keeps exactly what the real replica persists. Each replica has a disk: every
//! `Ready.persist` record it produced, in order (what the runtime appends and syncs before it
//! sends anything of that `Ready`). A crash happens between steps, after a `Ready` was carried
//! out whole, or, when torn, during the next step: that step's messages and replies never leave
//! and only a prefix of its records reaches the disk (the log's torn tail is cut at a record
//! boundary). With `gc_executed`, a replica also checkpoints like the runtime (see
//! `Config::checkpoint_every`): the disk keeps the encoded checkpoint, then its records are
//! replaced by the live ones; a crash may hit between the two (`Config::checkpoint_crash`,
//! `Action::CrashAtCheckpoint`), leaving the new checkpoint beside the old, uncut log. A restart
//! replaces the replica by `Replica::restore_from` of its disk (checkpoint, if any, and
//! records). Messages that
//! reach a replica while it is down are lost. The simulator also checks, for every message a
//! replica sends, that the state it reveals is on the replica's disk (`Check::Durability`).
//!
//! A replica may also lose its disk and rejoin (`Config::wipes`, `Action::Wipe`; see
//! `Sim::wipe`), as the runtime does it: every peer fences its old incarnation (what that sent
//! and is still in flight is refused) and reports how far each row reaches; it starts from the
//! snapshot of the peer that executed most, and abstains below those horizons (across later
//! restarts too). Until it has learnt everything below its horizons committed, it counts against
//! the F failures like a replica that is down.
//!
//! Liveness is demanded of everything, permanent crashes included: an instance whose leader
//! crashed for good (mid-instance, or while it was recovering another) is taken over by
//! recovery (see `epaxos_kv::core::recovery`), and a leader that restarts resumes its uncommitted
//! instances from its disk.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap, HashMap};
use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use epaxos_kv::core::checkpoint::Checkpoint;
use epaxos_kv::core::command::{Command, Op, OpResult};
use epaxos_kv::core::ids::{ClientId, Incarnation, InstanceId, ReplicaId, RequestId};
use epaxos_kv::core::instance::{Instance, Status};
use epaxos_kv::core::membership::{JoinDecision, Joiner, Membership};
use epaxos_kv::core::message::{Message, ShowDeps};
use epaxos_kv::core::node::{Node, Restored};
use epaxos_kv::core::quorum;
use epaxos_kv::core::replica::{Options, Path, Ready, Replica, ReplyError, Sabotage, Token};

use super::linearizability::{self, Entry, RegOp, RegResult, Value, Verdict};
use super::observer::Observer;
use super::rng::Rng;
use super::trace::{Trace, What};
use super::{Check, Violation};

/// How often each replica's timer fires.
const TICK: Duration = Duration::from_millis(10);
/// How often the settling phase looks for quiescence.
const CHECK_EVERY: Duration = Duration::from_millis(50);
/// Most events one run may process: a simulator needs a step limit too.
const EVENTS_MAX: u64 = 50_000_000;
/// How many operations of a non-linearizable key's history a failure report shows.
const HISTORY_SHOWN: usize = 60;
/// How many trace events a failure report shows.
const REPORT_EVENTS: usize = 40;

/// Everything that shapes a run. `Config::random(seed)` derives one from a seed.
#[derive(Debug, Clone)]
pub struct Config {
    pub seed: u64,
    pub n: usize,
    pub thrifty: bool,
    pub batch_max: usize,
    /// `Options::inflight_max`: small values queue proposals and grow batches.
    pub inflight_max: usize,
    /// `Options::retry` and `Options::fetch_after` of every replica.
    pub retry: Duration,
    pub fetch_after: Duration,
    /// Client sessions (besides one barrier session per key).
    pub clients: usize,
    pub keys: usize,
    /// Whether clients issue random operations during chaos (scripted runs say false).
    pub random_ops: bool,
    /// Longest pause of a client between two operations.
    pub think_max: Duration,
    /// How long a client waits for an answer before retrying (doubling, up to 4 times this).
    pub client_timeout: Duration,
    /// Length of the faulty phase.
    pub chaos: Duration,
    /// How long after healing everything must have committed and executed everywhere.
    pub settle_max: Duration,
    /// Replica-to-replica latency: uniform in `latency_min..=latency_max`, plus with
    /// probability `tail_chance` up to `tail_max` more.
    pub latency_min: Duration,
    pub latency_max: Duration,
    pub tail_chance: f64,
    pub tail_max: Duration,
    /// Probability that a message (or a client request or reply) is lost, or duplicated.
    pub loss: f64,
    pub dup: f64,
    /// Whether random partitions come and go during chaos.
    pub partitions: bool,
    /// Replicas that crash for good during chaos, at most F.
    pub crashes: usize,
    /// Crash-restart cycles planned during chaos (one may be skipped when it would take more
    /// than F replicas down at once, counting the permanent crashes still to come).
    pub restarts: usize,
    /// Whether some of those crashes are torn: they lose the replica's next step whole (its
    /// messages and replies) and keep only a prefix of that step's records.
    pub torn: bool,
    /// `Options::gc_executed` of every replica.
    pub gc_executed: bool,
    /// With `gc_executed`: like the runtime, a replica checkpoints once `collected()` has grown
    /// this much since its last checkpoint (0: never), and cuts its log to the live records.
    pub checkpoint_every: u64,
    /// Probability that a replica crashes between storing a checkpoint and cutting its log
    /// (during chaos, when one more replica may go down): the new checkpoint then sits beside
    /// the old, uncut log.
    pub checkpoint_crash: f64,
    /// A simulator-side sabotage: the disk silently loses every fifth record, so that replicas
    /// send what they did not persist (to show that `Check::Durability` can fail).
    pub sabotage_disk: bool,
    /// Replicas that lose their disk and rejoin during chaos (see `Sim::wipe`); a wipe is
    /// skipped when some other replica is down at its time, when the replica crashed for good,
    /// or when counting it as a failure until it catches up would leave no room for the
    /// permanent crashes still to come.
    pub wipes: usize,
    /// A simulator-side sabotage: a wiped replica rejoins without horizons (it votes as if its
    /// old incarnation never voted), to show that the checks catch an unsafe rejoin.
    pub sabotage_rejoin_without_horizons: bool,
    /// After healing, one write per key from a fresh session (a CAS that fails, so that the
    /// state stays as chaos left it). Its deps reach every earlier instance on the key, so every
    /// replica fetches any Commit it lost. The core resends a
    /// Commit only when execution waits on it: without this barrier, a Commit lost for the last
    /// instance of a key would leave that replica behind forever (reported as a core gap).
    pub barrier: bool,
    pub sabotage: Sabotage,
    /// Plant the sabotage at this replica only (all of them when `None`).
    pub sabotage_only: Option<usize>,
    /// The test that built this configuration by hand, to name in the replay command; `None`
    /// for `Config::random(seed)`, which `SIM_SEED` replays.
    pub scenario: Option<&'static str>,
    /// `Options::session_ttl` of every replica: short, so that sessions expire within a run.
    pub session_ttl: Duration,
    /// Each replica's wall clock is the simulated time plus a skew drawn in
    /// `-skew_max..=skew_max` (commands are stamped with it, expiries proposed by it).
    pub skew_max: Duration,
    /// Probability that a client, after an answer, goes idle for longer than the TTL (two to
    /// three TTLs plus the largest skew): its session expires meanwhile, and on waking it sends
    /// a late retry of its last request (answered as before, or refused as expired: never
    /// executed again) and then its next request (refused as expired: it starts a new session).
    pub sleep_chance: f64,
}

impl Config {
    /// The configuration a random run derives from its seed.
    pub fn random(seed: u64) -> Config {
        let mut r = Rng::new(seed ^ 0x0c0f_f1ee_5eed_5a17);
        let ms = Duration::from_millis;
        let n = *r.pick(&[3, 5]);
        let f = quorum::max_failures(n) as u64;
        Config {
            seed,
            n,
            thrifty: r.chance(0.4),
            batch_max: *r.pick(&[1, 4, 1024]),
            inflight_max: *r.pick(&[2, 256]),
            retry: *r.pick(&[ms(50), ms(200)]),
            fetch_after: *r.pick(&[ms(100), ms(300)]),
            clients: r.range(2, 12) as usize,
            keys: *r.pick(&[1, 2, 3, 4, 8]),
            random_ops: true,
            think_max: *r.pick(&[ms(0), ms(5), ms(30)]),
            client_timeout: *r.pick(&[ms(300), ms(1000)]),
            chaos: ms(r.range(1000, 6000)),
            settle_max: Duration::from_secs(30),
            latency_min: ms(1),
            latency_max: *r.pick(&[ms(2), ms(10), ms(40)]),
            tail_chance: *r.pick(&[0.0, 0.01, 0.05]),
            tail_max: ms(200),
            loss: *r.pick(&[0.0, 0.01, 0.05, 0.2]),
            dup: *r.pick(&[0.0, 0.02, 0.1]),
            partitions: r.chance(0.5),
            crashes: if r.chance(0.2) {
                r.range(1, f) as usize
            } else {
                0
            },
            barrier: true,
            sabotage: Sabotage::default(),
            sabotage_only: None,
            scenario: None,
            // Drawn last: the draws above keep the configurations of earlier versions.
            restarts: if r.chance(0.4) {
                r.range(1, 6) as usize
            } else {
                0
            },
            torn: r.chance(0.5),
            gc_executed: r.chance(0.3),
            sabotage_disk: false,
            // Drawn after everything above, for the same reason.
            checkpoint_every: r.range(2, 50),
            checkpoint_crash: *r.pick(&[0.0, 0.05, 0.2]),
            // Drawn after everything above, for the same reason.
            wipes: usize::from(r.chance(0.15)),
            sabotage_rejoin_without_horizons: false,
            // Drawn after everything above, for the same reason.
            session_ttl: ms(r.range(200, 2000)),
            skew_max: *r.pick(&[ms(0), ms(20), ms(300)]),
            sleep_chance: *r.pick(&[0.0, 0.02, 0.1]),
        }
    }

    /// A quiet network for scripted scenarios: 1 ms on every link, nothing lost, no random
    /// traffic or faults; the script says what happens. Settling starts at `chaos`. `scenario`
    /// names the test, for the replay command.
    pub fn scripted(
        scenario: &'static str,
        n: usize,
        clients: usize,
        keys: usize,
        chaos: Duration,
    ) -> Config {
        let ms = Duration::from_millis;
        Config {
            seed: 1,
            n,
            thrifty: false,
            batch_max: 1024,
            inflight_max: 256,
            retry: ms(200),
            fetch_after: ms(300),
            clients,
            keys,
            random_ops: false,
            think_max: ms(0),
            client_timeout: ms(500),
            chaos,
            settle_max: Duration::from_secs(30),
            latency_min: ms(1),
            latency_max: ms(1),
            tail_chance: 0.0,
            tail_max: ms(0),
            loss: 0.0,
            dup: 0.0,
            partitions: false,
            crashes: 0,
            restarts: 0,
            torn: false,
            gc_executed: false,
            checkpoint_every: 0,
            checkpoint_crash: 0.0,
            sabotage_disk: false,
            wipes: 0,
            sabotage_rejoin_without_horizons: false,
            barrier: true,
            sabotage: Sabotage::default(),
            sabotage_only: None,
            scenario: Some(scenario),
            session_ttl: Duration::from_secs(60),
            skew_max: ms(0),
            sleep_chance: 0.0,
        }
    }
}

impl Config {
    /// The command that replays a run of this configuration.
    pub fn replay(&self) -> String {
        match self.scenario {
            Some(test) => format!("cargo test --release --test simulation {test} -- --nocapture"),
            None => format!(
                "{}SIM_SEED={} cargo test --release --test simulation random_seeds -- --nocapture",
                if self.barrier { "" } else { "SIM_BARRIER=0 " },
                self.seed
            ),
        }
    }
}

impl fmt::Display for Config {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "n={} thrifty={} batch_max={} inflight_max={} retry={:?} fetch_after={:?} clients={} keys={} \
             think_max={:?} client_timeout={:?} chaos={:?} latency={:?}..{:?} tail={}%<{:?} \
             loss={}% dup={}% partitions={} crashes={} restarts={} torn={} wipes={} \
             gc_executed={} barrier={}",
            self.n,
            self.thrifty,
            self.batch_max,
            self.inflight_max,
            self.retry,
            self.fetch_after,
            self.clients,
            self.keys,
            self.think_max,
            self.client_timeout,
            self.chaos,
            self.latency_min,
            self.latency_max,
            self.tail_chance * 100.0,
            self.tail_max,
            self.loss * 100.0,
            self.dup * 100.0,
            self.partitions,
            self.crashes,
            self.restarts,
            self.torn,
            self.wipes,
            self.gc_executed,
            self.barrier,
        )?;
        if self.gc_executed && self.checkpoint_every > 0 {
            write!(
                f,
                " checkpoint_every={} checkpoint_crash={}%",
                self.checkpoint_every,
                self.checkpoint_crash * 100.0
            )?;
        }
        write!(
            f,
            " session_ttl={:?} skew_max={:?} sleep={}%",
            self.session_ttl,
            self.skew_max,
            self.sleep_chance * 100.0
        )?;
        if self.sabotage_disk {
            write!(f, " sabotage_disk")?;
        }
        if self.sabotage_rejoin_without_horizons {
            write!(f, " sabotage_rejoin_without_horizons")?;
        }
        if self.sabotage != Sabotage::default() {
            write!(f, " sabotage={:?}", self.sabotage)?;
            if let Some(r) = self.sabotage_only {
                write!(f, " (at r{r} only)")?;
            }
        }
        Ok(())
    }
}

/// A step of a scripted scenario.
#[derive(Debug, Clone)]
pub enum Action {
    /// Client `client` (idle) sends `op` to `replica`; it retries on timeout like any client.
    Op {
        client: usize,
        replica: usize,
        op: Op,
    },
    /// Cut every link between different groups, both ways.
    Partition(Vec<Vec<usize>>),
    /// Cut the link from `from` to `to` only.
    Cut { from: usize, to: usize },
    /// Restore every link.
    HealLinks,
    /// Replica `r` stops for good.
    Crash(usize),
    /// Replica `r` crashes between two steps (everything it produced so far is on its disk and
    /// was carried out); a `Restart` brings it back.
    CrashForRestart(usize),
    /// Replica `r` crashes during its next step: that step's messages and replies are lost, and
    /// only a prefix of its records reaches the disk.
    CrashTorn(usize),
    /// Replica `r`, down after `CrashForRestart`, `CrashTorn` or `CrashAtCheckpoint`, restarts
    /// from its disk.
    Restart(usize),
    /// Replica `r` crashes at its next checkpoint, between storing the checkpoint and cutting
    /// its log (needs `gc_executed` and `checkpoint_every`).
    CrashAtCheckpoint(usize),
    /// Replica `r` loses its disk and rejoins (see `Sim::wipe`): needs every other replica
    /// alive, and `r` not crashed for good (skipped otherwise, and traced).
    Wipe(usize),
    /// Lose the next message of this type from `from` to `to`.
    DropNext {
        from: usize,
        to: usize,
        kind: &'static str,
    },
}

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
    /// Instances executed (and reported) by replicas after they rejoined, and restarts of
    /// replicas that had rejoined (from the snapshot's checkpoint and what they logged since).
    pub executed_after_rejoin: u64,
    pub restarts_after_rejoin: u64,
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
}

/// The result of one run.
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
enum Fault {
    /// Cut these links (one way each).
    Cut(Vec<(usize, usize)>, String),
    HealLinks,
    /// A crash for good.
    Crash(usize),
    /// Crash-restart cycle `cycle` takes replica `r` down (torn or not)...
    Down {
        r: usize,
        cycle: u64,
        torn: bool,
    },
    /// ... and brings it back, unless it was skipped or `r` crashed for good meanwhile.
    Restart {
        r: usize,
        cycle: u64,
    },
    /// Replica `r` loses its disk and rejoins.
    Wipe(usize),
}

/// Where a replica stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Life {
    Up,
    /// Crashes during its next step (see `Action::CrashTorn`), for cycle `.0`.
    Torn(u64),
    /// Down until the restart of cycle `.0`.
    Down(u64),
    /// Crashed for good.
    Dead,
}

/// The cycle of scripted crashes: `Action::Restart` restarts whatever cycle took it down.
const SCRIPTED: u64 = u64::MAX;
/// Crashes between a checkpoint and the log cut get cycles from here on (the planned
/// crash-restart cycles are numbered from 0).
const CHECKPOINT_CYCLES: u64 = 1 << 32;

#[derive(Debug)]
enum Event {
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

struct Scheduled {
    at: Duration,
    seq: u64,
    event: Event,
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

/// A client session's request in flight.
#[derive(Debug)]
struct Current {
    request: u64,
    cmd: Command,
    hist: usize,
    attempt: u32,
    /// The replica the last attempt went to.
    replica: usize,
}

#[derive(Debug)]
struct Client {
    id: ClientId,
    next_request: u64,
    current: Option<Current>,
    /// The last value this client saw per key (CAS expects it).
    last_seen: BTreeMap<Bytes, Option<Bytes>>,
    /// Results received per session and request: retries must all be answered alike.
    answers: BTreeMap<(ClientId, u64), OpResult>,
    /// Sessions this client started (its id is derived from it).
    sessions: u64,
    /// The last request answered, for a late retry after a sleep.
    last_done: Option<Command>,
}

/// One operation of the client-observed history.
#[derive(Debug)]
struct HistOp {
    client: usize,
    op: Op,
    call: u64,
    ret: Option<u64>,
    result: Option<OpResult>,
}

/// The id of client `c`'s `session`-th session (a client starts a new one when its session
/// expired): distinct for every client and session, never 0.
fn session_id(c: usize, session: u64) -> ClientId {
    ClientId(((c as u64 + 1) << 32) | session)
}

/// Where every replica's wall clock starts (Unix milliseconds, late 2023): the runtime's clock
/// is far from 0, and 0 means "no clock" to the core.
const EPOCH_MS: u64 = 1_700_000_000_000;

/// The incarnation of a replica's `generation`-th data directory (wipes bump it).
fn incarnation_of(generation: u64) -> Incarnation {
    Incarnation::new(generation + 1).expect("one more than a count is never zero")
}

/// A simulated cluster and its clients.
pub struct Sim {
    cfg: Config,
    now: Duration,
    rng: Rng,
    queue: BinaryHeap<Scheduled>,
    seq: u64,
    /// Each replica's node: the production code for its core, membership, peers' incarnations
    /// and checkpoint cadence.
    nodes: Vec<Node>,
    /// Each replica's options, to restore it with.
    opts: Vec<Options>,
    life: Vec<Life>,
    /// Bumped by every restart and rejoin: ticks of an earlier incarnation stop.
    incarnation: Vec<u64>,
    /// Bumped by every wipe: the peers refuse what an earlier generation sent (the runtime's
    /// incarnation fence; a restart keeps its generation, its messages still count).
    generation: Vec<u64>,
    /// Per replica: the horizons it rejoined with, durable beside its disk (the runtime's
    /// `Membership::Joined`); a restart sets them again. `None`: it never lost its disk.
    horizons: Vec<Option<Vec<u64>>>,
    /// Per replica: known to have learnt every instance below its horizons committed (it
    /// abstains on nothing any more; see `abstaining`).
    caught_up: Vec<bool>,
    /// Per replica that rejoined, per row: the first slot not known committed there (how far
    /// `abstaining` has looked).
    learnt: Vec<Vec<u64>>,
    /// Per replica: every record it persisted since its last log cut, in order (the log a
    /// restart replays), and its last checkpoint, encoded.
    disk: Vec<Vec<(InstanceId, Instance)>>,
    checkpoint: Vec<Option<Vec<u8>>>,
    /// Per replica: its peers' incarnations and its membership as last stored (what a restart
    /// reads besides the log and the checkpoint).
    peers_disk: Vec<Vec<Option<Incarnation>>>,
    membership_disk: Vec<Membership>,
    /// Per replica: a scripted crash waits for its next checkpoint.
    crash_at_checkpoint: Vec<bool>,
    /// Decides the crashes between checkpoint and log cut, apart from `rng` so that the other
    /// draws of a run stay what they were before checkpoints existed.
    checkpoint_rng: Rng,
    /// Per replica, per instance: the last record on its disk (what a message may reveal).
    durable: Vec<HashMap<InstanceId, Instance>>,
    /// Per replica: the digest of its store after its last `Ready` carried out (a torn crash
    /// loses what the step it interrupts executed).
    digest: Vec<u64>,
    /// Permanent crashes scheduled that have not happened yet: a restart cycle keeps room for
    /// them under the limit of F replicas down.
    crashes_ahead: usize,
    /// `blocked[from][to]`: the link is cut.
    blocked: Vec<Vec<bool>>,
    loss: f64,
    dup: f64,
    settling: bool,
    healed_at: Duration,
    keys: Vec<Bytes>,
    clients: Vec<Client>,
    tokens: BTreeMap<Token, (usize, u64, ClientId)>,
    /// Per replica: how far its wall clock is off the simulated time, in milliseconds.
    skew_ms: Vec<i64>,
    next_token: Token,
    history: Vec<HistOp>,
    /// Logical clock of the history: orders invocations and returns strictly.
    stamp: u64,
    observer: Observer,
    trace: Trace,
    stats: Stats,
    drop_next: Vec<(usize, usize, &'static str)>,
    violations: Vec<Violation>,
    done: bool,
    ticks: Vec<u64>,
}

impl Sim {
    /// A random run of `cfg`.
    pub fn new(cfg: Config) -> Sim {
        Sim::scripted(cfg, Vec::new())
    }

    /// A run of `cfg` with `script` steps at the given times.
    pub fn scripted(cfg: Config, script: Vec<(Duration, Action)>) -> Sim {
        let n = cfg.n;
        let opts: Vec<Options> = (0..n)
            .map(|i| {
                let mut o = Options::new(ReplicaId(i as u32), n);
                o.thrifty = cfg.thrifty;
                o.batch_max = cfg.batch_max;
                o.inflight_max = cfg.inflight_max;
                o.retry = cfg.retry;
                o.retry_max = o.retry_max.max(cfg.retry);
                o.fetch_after = cfg.fetch_after;
                o.gc_executed = cfg.gc_executed;
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
        let nodes: Vec<Node> = opts
            .iter()
            .map(|o| {
                Node::new(
                    o.clone(),
                    cfg.checkpoint_every,
                    Duration::ZERO,
                    Restored {
                        membership: joined.clone(),
                        peers: vec![None; n],
                        checkpoint: None,
                        records: Vec::new(),
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
        let skew_ms = (0..n)
            .map(|_| skew_rng.range(0, 2 * skew_max) as i64 - skew_max as i64)
            .collect();
        let mut sim = Sim {
            rng: Rng::new(cfg.seed),
            now: Duration::ZERO,
            queue: BinaryHeap::new(),
            seq: 0,
            nodes,
            opts,
            life: vec![Life::Up; n],
            incarnation: vec![0; n],
            generation: vec![0; n],
            horizons: vec![None; n],
            caught_up: vec![true; n],
            learnt: vec![vec![0; n]; n],
            disk: vec![Vec::new(); n],
            checkpoint: vec![None; n],
            peers_disk: vec![vec![None; n]; n],
            membership_disk: vec![joined; n],
            crash_at_checkpoint: vec![false; n],
            checkpoint_rng: Rng::new(cfg.seed ^ 0xc4ec_4b01_47c0_ffee),
            durable: vec![HashMap::new(); n],
            digest,
            crashes_ahead: 0,
            blocked: vec![vec![false; n]; n],
            loss: cfg.loss,
            dup: cfg.dup,
            settling: false,
            healed_at: cfg.chaos,
            keys,
            clients,
            tokens: BTreeMap::new(),
            skew_ms,
            next_token: 1,
            history: Vec::new(),
            stamp: 0,
            observer: Observer::new(n, cfg.gc_executed),
            trace: Trace::default(),
            stats: Stats::default(),
            drop_next: Vec::new(),
            violations: Vec::new(),
            done: false,
            ticks: vec![0; n],
            cfg,
        };
        for (at, action) in script {
            sim.schedule_at(at, Event::Script(action));
        }
        sim
    }

    fn schedule_at(&mut self, at: Duration, event: Event) {
        self.seq += 1;
        self.queue.push(Scheduled {
            at,
            seq: self.seq,
            event,
        });
    }

    fn schedule(&mut self, after: Duration, event: Event) {
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

    fn start(&mut self) {
        let n = self.cfg.n;
        for r in 0..n {
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
            let r = faults.index(n);
            let at = faults.range(50, chaos_ms.max(51));
            self.schedule_at(Duration::from_millis(at), Event::Fault(Fault::Wipe(r)));
        }
        self.schedule_at(self.cfg.chaos, Event::EndChaos);
    }

    /// Partitions, one at a time, each healing before the next.
    fn plan_partitions(&mut self, rng: &mut Rng) {
        let n = self.cfg.n;
        let chaos = self.cfg.chaos.as_millis() as u64;
        let mut t = rng.range(50, 400);
        while t < chaos {
            let (cut, what) = match rng.below(3) {
                0 => {
                    let r = rng.index(n);
                    let cut = (0..n)
                        .filter(|&o| o != r)
                        .flat_map(|o| [(r, o), (o, r)])
                        .collect();
                    (cut, format!("isolate r{r}"))
                }
                1 => {
                    let side: Vec<bool> = (0..n).map(|_| rng.chance(0.5)).collect();
                    let cut = (0..n)
                        .flat_map(|a| (0..n).map(move |b| (a, b)))
                        .filter(|&(a, b)| side[a] != side[b])
                        .collect();
                    (cut, format!("split {side:?}"))
                }
                _ => {
                    let mut cut = Vec::new();
                    for _ in 0..rng.range(1, n as u64) {
                        let a = rng.index(n);
                        let b = (a + 1 + rng.index(n - 1)) % n;
                        cut.push((a, b));
                    }
                    let what = format!("one-way cuts {cut:?}");
                    (cut, what)
                }
            };
            let dur = rng.range(30, 700);
            self.schedule_at(
                Duration::from_millis(t),
                Event::Fault(Fault::Cut(cut, what)),
            );
            let heal = (t + dur).min(chaos);
            self.schedule_at(Duration::from_millis(heal), Event::Fault(Fault::HealLinks));
            t = heal + rng.range(50, 500);
        }
    }

    fn handle(&mut self, event: Event) {
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

    fn lost_request(&mut self, replica: usize, token: Token) {
        if let Some(&(client, request, _)) = self.tokens.get(&token) {
            self.trace.record(
                self.now,
                What::RequestLost {
                    client,
                    request,
                    replica,
                },
            );
        }
    }

    fn on_deliver(&mut self, from: usize, to: usize, msg: Message, generation: u64) {
        let why = if !self.alive(to) {
            Some("crashed")
        } else if !self.nodes[to].would_hear(ReplicaId(from as u32), incarnation_of(generation)) {
            // Sent by an incarnation that lost its disk: every peer refuses it since the wipe.
            Some("old incarnation")
        } else if self.blocked[from][to] {
            Some("partition")
        } else {
            None
        };
        let (kind, instance) = (msg.kind(), msg.instance());
        if let Some(why) = why {
            self.drop_message(from, to, kind, instance, why);
            return;
        }
        self.stats.delivered += 1;
        self.trace.mix_message(&msg);
        self.trace.record(
            self.now,
            What::Deliver {
                from,
                to,
                kind,
                instance,
                deps: msg.deps().map_or(0, |d| d.len()),
            },
        );
        let peer = ReplicaId(from as u32);
        let heard = self.nodes[to].hear(peer, incarnation_of(generation));
        assert!(heard, "would_hear said it would");
        self.nodes[to].handle(self.now, peer, msg);
        self.after_input(to);
    }

    fn on_tick(&mut self, r: usize, incarnation: u64) {
        if !self.alive(r) || incarnation != self.incarnation[r] {
            return;
        }
        self.set_wall_clock(r);
        self.nodes[r].tick(self.now);
        self.after_input(r);
        self.ticks[r] += 1;
        // The full check walks every instance: every 10th tick keeps it affordable (every step
        // gets the cheap one, see `after_input`).
        if self.ticks[r].is_multiple_of(10) {
            self.check_invariants(r);
        }
        self.schedule(TICK, Event::Tick(r, incarnation));
    }

    /// Replica `r`'s wall clock: the simulated time, skewed (see `Config::skew_max`).
    fn set_wall_clock(&mut self, r: usize) {
        let wall = (EPOCH_MS + self.now.as_millis() as u64).saturating_add_signed(self.skew_ms[r]);
        self.nodes[r].set_wall_clock_ms(wall);
    }

    fn check_invariants(&mut self, r: usize) {
        if let Err(e) = self.nodes[r].check_invariants() {
            self.invariant_broken(r, e);
        }
    }

    fn invariant_broken(&mut self, r: usize, e: String) {
        if self.violations.iter().all(|v| v.check != Check::Invariant) {
            self.violations.push(Violation {
                check: Check::Invariant,
                detail: format!("r{r} at {:?}: {e}", self.now),
                instances: Vec::new(),
            });
        }
    }

    /// After any input: flush (start instances from what was proposed), then carry out the
    /// replica's outputs and show them to the observer.
    ///
    /// Like the runtime, the replica's records reach its disk before anything else of the
    /// `Ready` is carried out; a torn crash (see `Life::Torn`) happens here instead.
    fn after_input(&mut self, r: usize) {
        self.set_wall_clock(r);
        self.nodes[r].flush(self.now);
        // After every step: a broken invariant is caught at the step that broke it.
        if let Err(e) = self.nodes[r].check_step_invariants() {
            self.invariant_broken(r, e);
        }
        let node_ready = self.nodes[r].take_ready();
        // What the node stores besides instance records comes first (see `node::Ready`).
        if let Some(peers) = node_ready.peers {
            self.peers_disk[r] = peers;
        }
        assert!(
            node_ready.install.is_none() && node_ready.membership.is_none(),
            "joins happen only in `wipe`"
        );
        let ready = node_ready.core;
        // Every message of a simulated run is one a real cluster can send: none may be refused
        // as impossible (see `Replica::handle`).
        if let Some(rej) = ready.rejected.first() {
            if self.violations.iter().all(|v| v.check != Check::Invariant) {
                self.violations.push(Violation {
                    check: Check::Invariant,
                    detail: format!("r{r} at {:?} rejected a real message: {rej:?}", self.now),
                    instances: Vec::new(),
                });
            }
        }
        if let Life::Torn(cycle) = self.life[r] {
            self.torn_crash(r, cycle, ready);
            return;
        }
        self.write_disk(r, &ready.persist);
        self.digest[r] = self.nodes[r].replica().kv().digest();
        // Every replica here is correct: refusing one of their messages as impossible or
        // contradictory is a false alarm (it would drop a message the protocol needs).
        for refused in &ready.refused {
            self.violations.push(Violation {
                check: Check::Refusal,
                detail: format!(
                    "r{r} at {:?} refused a message of correct peer {} as {}",
                    self.now,
                    refused.peer,
                    refused.kind.label()
                ),
                instances: Vec::new(),
            });
        }
        for out in ready.messages {
            self.check_durable(r, &out.msg);
            for to in out.to {
                self.send(r, to.index(), out.msg.clone());
            }
        }
        for c in &ready.committed {
            match c.led {
                Some((Path::Fast, _)) => self.stats.fast += 1,
                Some((Path::Slow, _)) => self.stats.slow += 1,
                Some((Path::Recovered, _)) if c.commands == 0 => self.stats.recovered_nop += 1,
                Some((Path::Recovered, _)) => self.stats.recovered += 1,
                None => {}
            }
            let id = c.instance;
            let durable = self.durable[r].get(&id);
            if !durable.is_some_and(|i| i.status.is_decided()) {
                self.durability_violation(
                    format!(
                        "r{r} reported {id} committed, but its disk holds it {}",
                        durable.map_or("nowhere".to_string(), |i| format!("{:?}", i.status))
                    ),
                    id,
                );
            }
            // Garbage collection may have dropped it already (in the same step): the record
            // just persisted says what was committed.
            let inst = self.nodes[r]
                .replica()
                .instance(id)
                .or_else(|| self.durable[r].get(&id));
            let deps = inst.map(|i| i.deps.clone()).unwrap_or_default();
            self.observer.on_commit(r, id, inst);
            self.trace.mix(&[r as u64, id.slot]);
            self.trace.record(
                self.now,
                What::Commit {
                    replica: r,
                    instance: id,
                    deps,
                },
            );
        }
        self.stats.sessions_expired += ready.sessions_expired;
        if !self.caught_up[r] {
            self.abstaining(r);
        }
        if !ready.executed.is_empty() {
            if self.horizons[r].is_some() {
                self.stats.executed_after_rejoin += ready.executed.len() as u64;
            }
            for &instance in &ready.executed {
                self.trace.record(
                    self.now,
                    What::Execute {
                        replica: r,
                        instance,
                    },
                );
            }
            self.observer.on_executed(
                r,
                self.nodes[r].replica(),
                &ready.executed,
                &ready.refused_expired,
            );
        }
        for reply in ready.replies {
            let Some(&(client, request, session)) = self.tokens.get(&reply.token) else {
                self.violations.push(Violation {
                    check: Check::ExactlyOnce,
                    detail: format!("r{r} answered unknown token {}", reply.token),
                    instances: Vec::new(),
                });
                continue;
            };
            if self.rng.chance(self.loss) {
                continue;
            }
            let after = self.client_latency();
            self.schedule(
                after,
                Event::Response {
                    client,
                    session,
                    request,
                    result: reply.result,
                },
            );
        }
        self.maybe_checkpoint(r);
    }

    /// Like the runtime after carrying out a `Ready`: when the node says a checkpoint is due
    /// (`Node::poll_checkpoint`), store it, then replace the log by the live records (at once:
    /// the runtime does it on another thread while the node goes on). A crash may hit between
    /// the two: the new checkpoint then sits beside the old, uncut log, and the replica is down.
    fn maybe_checkpoint(&mut self, r: usize) {
        let Some(job) = self.nodes[r].poll_checkpoint() else {
            return;
        };
        self.nodes[r].checkpoint_written();
        let (bytes, live) = (job.checkpoint, job.records);
        let collected = self.nodes[r].replica().collected();
        self.stats.checkpoints += 1;
        let size = bytes.len();
        self.checkpoint[r] = Some(bytes);
        let crash = if std::mem::take(&mut self.crash_at_checkpoint[r]) {
            Some(SCRIPTED)
        } else {
            let down = self.impaired_except(r);
            let f = quorum::max_failures(self.cfg.n);
            let room = !self.settling && down + self.crashes_ahead < f;
            (room && self.checkpoint_rng.chance(self.cfg.checkpoint_crash))
                .then_some(CHECKPOINT_CYCLES + self.stats.checkpoint_crashes)
        };
        if let Some(cycle) = crash {
            self.life[r] = Life::Down(cycle);
            self.stats.checkpoint_crashes += 1;
            self.trace.record(
                self.now,
                What::Fault(format!(
                    "r{r} crashes after storing a checkpoint ({collected} collected, {size} \
                     bytes) and before cutting its log of {} records to {}",
                    self.disk[r].len(),
                    live.len()
                )),
            );
            if cycle != SCRIPTED {
                let down = *self.checkpoint_rng.pick(&[1, 5, 40, 300]);
                let down = self.checkpoint_rng.range(down / 2, down);
                let back = (self.now + Duration::from_millis(down)).min(self.cfg.chaos);
                self.schedule_at(back, Event::Fault(Fault::Restart { r, cycle }));
            }
            return;
        }
        self.trace.record(
            self.now,
            What::Fault(format!(
                "r{r} checkpoints ({collected} collected, {size} bytes) and cuts its log of {} \
                 records to {}",
                self.disk[r].len(),
                live.len()
            )),
        );
        for (id, inst) in &live {
            self.durable[r].insert(*id, inst.clone());
        }
        self.disk[r] = live;
    }

    /// Appends `records` to `r`'s disk.
    fn write_disk(&mut self, r: usize, records: &[(InstanceId, Instance)]) {
        for (id, inst) in records {
            self.stats.records += 1;
            if self.cfg.sabotage_disk && self.stats.records.is_multiple_of(5) {
                continue;
            }
            self.durable[r].insert(*id, inst.clone());
            self.disk[r].push((*id, inst.clone()));
        }
    }

    /// Persist before send: what `msg` (sent by `r`) reveals of its instance must be on `r`'s
    /// disk, or a crash right after sending could make `r` contradict it.
    fn check_durable(&mut self, r: usize, msg: &Message) {
        let Some(id) = msg.instance() else {
            return;
        };
        let rec = self.durable[r].get(&id);
        let fine = match (msg, rec) {
            (
                Message::Nack { .. }
                | Message::CommitRequest { .. }
                | Message::Watermark { .. }
                | Message::Waiting { .. },
                _,
            ) => true,
            (_, None) => false,
            (Message::PreAccept { ballot, deps, .. }, Some(i)) => {
                i.ballot > *ballot
                    || (i.ballot == *ballot
                        && (i.status != Status::PreAccepted || i.init_deps.as_ref() == Some(deps)))
            }
            (Message::PreAcceptOk { ballot, deps, .. }, Some(i)) => {
                i.ballot > *ballot
                    || (i.ballot == *ballot && (i.status != Status::PreAccepted || i.deps == *deps))
            }
            (Message::Accept { ballot, deps, .. }, Some(i)) => {
                i.status.is_decided()
                    || i.accepted_ballot > Some(*ballot)
                    || (i.accepted_ballot == Some(*ballot) && i.deps == *deps)
            }
            (Message::AcceptOk { ballot, .. }, Some(i)) => {
                i.status.is_decided() || i.accepted_ballot >= Some(*ballot)
            }
            (Message::Commit { deps, commands, .. }, Some(i)) => {
                i.status.is_decided() && i.deps == *deps && *i.commands == **commands
            }
            // A promise (and what a Validate left) must be durable before it is revealed.
            (Message::Recover { ballot, .. } | Message::ValidateOk { ballot, .. }, Some(i)) => {
                i.status.is_decided() || i.ballot >= *ballot
            }
            (Message::Validate { ballot, deps, .. }, Some(i)) => {
                i.status.is_decided()
                    || i.ballot > *ballot
                    || (i.ballot == *ballot && i.init_deps.as_ref() == Some(deps))
            }
            (Message::RecoverOk { ballot, reply, .. }, Some(i)) => {
                i.status.is_decided()
                    || i.ballot > *ballot
                    || (i.ballot == *ballot
                        && i.status == reply.status
                        && i.accepted_ballot == reply.accepted_ballot
                        && i.deps == reply.deps)
            }
        };
        if !fine {
            let held = rec.map_or("nothing".to_string(), |i| {
                format!(
                    "{:?} at ballot {} (accepted at {:?}) with deps {}",
                    i.status,
                    i.ballot,
                    i.accepted_ballot.map(|b| b.to_string()),
                    ShowDeps(Some(&i.deps))
                )
            });
            self.durability_violation(
                format!(
                    "r{r} sent {} {id} (ballot {:?}, deps {}) but its disk holds {held}",
                    msg.kind(),
                    msg.ballot().map(|b| b.to_string()),
                    ShowDeps(msg.deps())
                ),
                id,
            );
        }
    }

    fn durability_violation(&mut self, detail: String, id: InstanceId) {
        if self.violations.iter().all(|v| v.check != Check::Durability) {
            self.violations.push(Violation {
                check: Check::Durability,
                detail,
                instances: vec![id],
            });
        }
    }

    fn latency(&mut self) -> Duration {
        let lo = self.cfg.latency_min.as_micros() as u64;
        let hi = self.cfg.latency_max.as_micros() as u64;
        let mut us = self.rng.range(lo, hi.max(lo));
        if self.rng.chance(self.cfg.tail_chance) {
            us += self.rng.range(0, self.cfg.tail_max.as_micros() as u64);
        }
        Duration::from_micros(us)
    }

    fn client_latency(&mut self) -> Duration {
        if self.cfg.latency_min == self.cfg.latency_max {
            return self.cfg.latency_min;
        }
        Duration::from_micros(self.rng.range(200, 2_000))
    }

    /// Counts and traces a message that will not arrive.
    fn drop_message(
        &mut self,
        from: usize,
        to: usize,
        kind: &'static str,
        instance: Option<InstanceId>,
        why: &'static str,
    ) {
        self.stats.dropped += 1;
        self.trace.record(
            self.now,
            What::Drop {
                from,
                to,
                kind,
                instance,
                why,
            },
        );
    }

    fn send(&mut self, from: usize, to: usize, msg: Message) {
        let kind = msg.kind();
        let instance = msg.instance();
        if let Some(pos) = self
            .drop_next
            .iter()
            .position(|&(f, t, k)| (f, t, k) == (from, to, kind))
        {
            self.drop_next.remove(pos);
            self.drop_message(from, to, kind, instance, "scripted");
            return;
        }
        if self.rng.chance(self.loss) {
            self.drop_message(from, to, kind, instance, "loss");
            return;
        }
        if self.rng.chance(self.dup) {
            self.stats.duplicated += 1;
            self.trace.record(
                self.now,
                What::Duplicate {
                    from,
                    to,
                    kind,
                    instance,
                },
            );
            let after = self.latency();
            self.schedule(
                after,
                Event::Deliver {
                    from,
                    to,
                    msg: msg.clone(),
                    generation: self.generation[from],
                },
            );
        }
        let after = self.latency();
        let generation = self.generation[from];
        self.schedule(
            after,
            Event::Deliver {
                from,
                to,
                msg,
                generation,
            },
        );
    }

    // ---- clients ----------------------------------------------------------------------------

    fn random_op(&mut self, c: usize) -> Op {
        let key = self.keys[self.rng.index(self.keys.len())].clone();
        let fresh = Bytes::from(format!("{}.{}", c, self.clients[c].next_request));
        match self.rng.below(100) {
            0..35 => Op::Get { key },
            35..65 => Op::Put { key, value: fresh },
            65..75 => Op::Delete { key },
            _ => {
                let expected = if self.rng.chance(0.8) {
                    self.clients[c].last_seen.get(&key).cloned().flatten()
                } else {
                    None
                };
                Op::Cas {
                    key,
                    expected,
                    new: fresh,
                }
            }
        }
    }

    fn start_op(&mut self, c: usize, op: Op, replica: Option<usize>) {
        let client = &mut self.clients[c];
        assert!(
            client.current.is_none(),
            "client {c} has a request in flight already"
        );
        let request = client.next_request;
        client.next_request += 1;
        let cmd = Command::new(client.id, RequestId(request), op.clone());
        self.stamp += 1;
        self.history.push(HistOp {
            client: c,
            op,
            call: self.stamp,
            ret: None,
            result: None,
        });
        self.clients[c].current = Some(Current {
            request,
            cmd,
            hist: self.history.len() - 1,
            attempt: 0,
            replica: 0,
        });
        self.send_attempt(c, replica);
    }

    /// Sends the client's current request to `replica`, or for a first attempt to a random
    /// replica; a retry goes to the same replica once in a while (the first retry only), and
    /// otherwise to the next one, so that a client finds a live replica within F+1 retries.
    fn send_attempt(&mut self, c: usize, replica: Option<usize>) {
        let n = self.cfg.n;
        let token = self.next_token;
        self.next_token += 1;
        let same = self.rng.chance(0.3);
        let first = self.rng.index(n);
        let Some(cur) = self.clients[c].current.as_mut() else {
            return;
        };
        cur.replica = match (replica, cur.attempt) {
            (Some(r), _) => r,
            (None, 0) => first,
            (None, 1) if same => cur.replica,
            (None, _) => (cur.replica + 1) % n,
        };
        // Every attempt after the first may follow one that executed.
        cur.cmd.retry = cur.attempt > 0;
        cur.attempt += 1;
        let (request, attempt, cmd, replica) =
            (cur.request, cur.attempt, cur.cmd.clone(), cur.replica);
        self.tokens.insert(token, (c, request, cmd.client));
        self.trace.record(
            self.now,
            What::Request {
                client: c,
                request,
                replica,
                op: format!("{:?}", cmd.op),
                attempt,
            },
        );
        if self.rng.chance(self.loss) {
            self.trace.record(
                self.now,
                What::RequestLost {
                    client: c,
                    request,
                    replica,
                },
            );
        } else {
            let after = self.client_latency();
            self.schedule(
                after,
                Event::Request {
                    replica,
                    token,
                    cmd,
                },
            );
        }
        let backoff = self.cfg.client_timeout * (1 << (attempt - 1).min(2));
        self.schedule(
            backoff,
            Event::ClientTimeout {
                client: c,
                request,
                attempt,
            },
        );
    }

    fn on_response(
        &mut self,
        c: usize,
        session: ClientId,
        request: u64,
        result: Result<OpResult, ReplyError>,
    ) {
        let is_current = self.clients[c].id == session
            && self.clients[c]
                .current
                .as_ref()
                .is_some_and(|cur| cur.request == request);
        let result = match result {
            Ok(r) => r,
            Err(ReplyError::Expired(_)) => {
                // The session expired: whether the request executed is unknown (an earlier
                // attempt may have, before the expiry), like a request never answered. The
                // history keeps it open; the client goes on in a new session.
                self.stats.expired_answers += 1;
                self.trace.record(
                    self.now,
                    What::Reply {
                        client: c,
                        request,
                        result: "session expired".into(),
                    },
                );
                if is_current {
                    let client = &mut self.clients[c];
                    client.current = None;
                    client.sessions += 1;
                    client.id = session_id(c, client.sessions);
                    client.next_request = 1;
                    client.last_done = None;
                    self.schedule_next_op(c);
                }
                return;
            }
            Err(ReplyError::ResultNotKept(_)) => {
                // Simulated values are far below the bound: every result is kept.
                self.violations.push(Violation {
                    check: Check::ExactlyOnce,
                    detail: format!(
                        "client {c}'s request {request} was answered ResultNotKept, but every \
                         simulated result is small enough to keep"
                    ),
                    instances: Vec::new(),
                });
                return;
            }
            Err(ReplyError::Stale) => {
                // Only a request older than the session's last executed one is stale; a
                // session never moves past its current request.
                if is_current {
                    self.violations.push(Violation {
                        check: Check::ExactlyOnce,
                        detail: format!(
                            "client {c}'s current request {request} was answered Stale"
                        ),
                        instances: Vec::new(),
                    });
                }
                return;
            }
            Err(ReplyError::Reused) => {
                // Simulated clients send one command per request id (retries included).
                self.violations.push(Violation {
                    check: Check::ExactlyOnce,
                    detail: format!(
                        "client {c}'s request {request} was answered Reused, but the client \
                         never reused it"
                    ),
                    instances: Vec::new(),
                });
                return;
            }
        };
        self.trace.record(
            self.now,
            What::Reply {
                client: c,
                request,
                result: format!("{result:?}"),
            },
        );
        let client = &mut self.clients[c];
        if let Some(before) = client.answers.get(&(session, request)) {
            if *before != result {
                let detail =
                    format!("client {c} request {request} answered {before:?} and {result:?}");
                self.violations.push(Violation {
                    check: Check::ExactlyOnce,
                    detail,
                    instances: Vec::new(),
                });
            }
        } else {
            client.answers.insert((session, request), result.clone());
        }
        if !is_current {
            return;
        }
        let Some(cur) = client.current.take() else {
            return;
        };
        let key = cur.cmd.op.key().cloned().unwrap_or_default();
        let seen = match &cur.cmd.op {
            Op::Get { .. } => result.found.then(|| result.value.clone()),
            Op::Put { value, .. } => Some(value.clone()),
            Op::Delete { .. } => None,
            Op::Cas { new, .. } if result.success => Some(new.clone()),
            Op::Cas { .. } => result.found.then(|| result.value.clone()),
            Op::Expire { .. } => None,
        };
        client.last_seen.insert(key, seen);
        self.stamp += 1;
        client.last_done = Some(cur.cmd.clone());
        let h = &mut self.history[cur.hist];
        h.ret = Some(self.stamp);
        h.result = Some(result);
        self.stats.ops_done += 1;
        self.schedule_next_op(c);
    }

    /// A random client's next operation after a pause: usually a short think, sometimes a
    /// sleep long enough for its session to expire (see `Config::sleep_chance`).
    fn schedule_next_op(&mut self, c: usize) {
        if !self.cfg.random_ops || self.settling || c >= self.cfg.clients {
            return;
        }
        if self.rng.chance(self.cfg.sleep_chance) {
            let ttl = self.cfg.session_ttl.as_micros() as u64;
            let skew = self.cfg.skew_max.as_micros() as u64;
            let sleep = self.rng.range(2 * ttl, 3 * ttl) + 2 * skew;
            self.schedule(Duration::from_micros(sleep), Event::ClientWake(c));
            return;
        }
        let think = self.rng.range(0, self.cfg.think_max.as_micros() as u64);
        self.schedule(Duration::from_micros(think), Event::ClientNext(c));
    }

    /// A client wakes after a sleep: it sends a late retry of its last answered request (the
    /// same command, marked a retry) to a random replica, then goes on with its next request.
    /// The retry must get the original answer or "session expired", never execute again.
    fn on_wake(&mut self, c: usize) {
        if let Some(cmd) = self.clients[c].last_done.clone() {
            let cmd = Command { retry: true, ..cmd };
            let replica = self.rng.index(self.cfg.n);
            let token = self.next_token;
            self.next_token += 1;
            self.tokens.insert(token, (c, cmd.request.0, cmd.client));
            self.stats.late_retries += 1;
            self.trace.record(
                self.now,
                What::Request {
                    client: c,
                    request: cmd.request.0,
                    replica,
                    op: format!("late retry {:?}", cmd.op),
                    attempt: 0,
                },
            );
            let after = self.client_latency();
            self.schedule(
                after,
                Event::Request {
                    replica,
                    token,
                    cmd,
                },
            );
        }
        let think = self.rng.range(0, 5_000);
        self.schedule(Duration::from_micros(think), Event::ClientNext(c));
    }

    // ---- faults -----------------------------------------------------------------------------

    fn on_fault(&mut self, f: Fault) {
        match f {
            Fault::Cut(links, what) => {
                if self.settling {
                    return;
                }
                for (a, b) in links {
                    self.blocked[a][b] = true;
                }
                self.trace.record(self.now, What::Fault(what));
            }
            Fault::HealLinks => self.heal_links(),
            Fault::Crash(r) => {
                self.crashes_ahead -= 1;
                self.crash(r);
            }
            Fault::Down { r, cycle, torn } => {
                let down = self.impaired_except(r);
                let f = quorum::max_failures(self.cfg.n);
                if self.settling || self.life[r] != Life::Up || down + self.crashes_ahead >= f {
                    return; // skipped: it would take too many replicas down
                }
                self.go_down(r, cycle, torn);
            }
            Fault::Restart { r, cycle } => {
                if matches!(self.life[r], Life::Down(c) | Life::Torn(c) if c == cycle) {
                    self.restart(r);
                }
            }
            Fault::Wipe(r) => self.wipe(r),
        }
    }

    /// A crash that a restart can undo: between steps, or torn (during the next step).
    fn go_down(&mut self, r: usize, cycle: u64, torn: bool) {
        if torn {
            self.life[r] = Life::Torn(cycle);
            self.trace.record(
                self.now,
                What::Fault(format!("r{r} crashes in its next step")),
            );
        } else {
            self.life[r] = Life::Down(cycle);
            self.trace
                .record(self.now, What::Fault(format!("crash r{r} (to restart)")));
        }
    }

    /// The torn crash of `r`: `ready` is lost but for a prefix of its records, which reached
    /// the disk before the crash (the log cuts a torn tail at a record boundary).
    fn torn_crash(&mut self, r: usize, cycle: u64, ready: Ready) {
        let total = ready.persist.len();
        let kept = self.rng.range(0, total as u64) as usize;
        self.write_disk(r, &ready.persist[..kept]);
        self.life[r] = Life::Down(cycle);
        self.stats.torn += 1;
        self.trace.record(
            self.now,
            What::Fault(format!(
                "r{r} crashes mid-step: {kept} of {total} records reached its disk; {} messages \
                 and {} replies lost",
                ready.messages.len(),
                ready.replies.len()
            )),
        );
    }

    /// Replaces `r` by what its disk restores, and carries out what the restored replica
    /// sends (its uncommitted instances resumed).
    fn restart(&mut self, r: usize) {
        let records = self.disk[r].clone();
        let checkpoint = self.checkpoint[r].as_ref().map(|b| {
            Checkpoint::decode(b, self.cfg.n).expect("a checkpoint the core encoded decodes")
        });
        let covered = checkpoint
            .as_ref()
            .map(|c| (c.gc_prefix.clone(), c.executed_above.clone()));
        if checkpoint.is_some() {
            self.stats.checkpoint_restarts += 1;
        }
        // Like the runtime: the node starts from everything the disk holds (a replica that
        // rejoined keeps its horizons across restarts: they are in its stored membership).
        if self.horizons[r].is_some() {
            self.stats.restarts_after_rejoin += 1;
        }
        self.nodes[r] = Node::new(
            self.opts[r].clone(),
            self.cfg.checkpoint_every,
            self.now,
            Restored {
                membership: self.membership_disk[r].clone(),
                peers: self.peers_disk[r].clone(),
                checkpoint,
                records,
            },
        );
        self.life[r] = Life::Up;
        self.incarnation[r] += 1;
        self.stats.restarts += 1;
        let resumed = self.nodes[r].replica().inflight();
        self.stats.resumed += resumed as u64;
        self.trace.record(
            self.now,
            What::Fault(format!(
                "restart r{r} from {}{} records: {} instances, {} executed again, {resumed} \
                 resumed",
                covered
                    .as_ref()
                    .map_or(String::new(), |(prefix, _)| format!(
                        "a checkpoint (collected {}) and ",
                        prefix.iter().sum::<u64>()
                    )),
                self.disk[r].len(),
                self.nodes[r].replica().instances().count(),
                self.nodes[r].replica().kv().executed(),
            )),
        );
        self.observer
            .on_restart(r, self.nodes[r].replica(), self.digest[r], covered);
        self.check_invariants(r);
        self.after_input(r);
        let incarnation = self.incarnation[r];
        self.schedule(TICK, Event::Tick(r, incarnation));
    }

    /// Replica `r` loses its disk and rejoins, as the runtime does it (`answer_join`, `join`,
    /// `install`), atomically: every other replica fences `r`'s old incarnation (what it sent
    /// and is still in flight is refused from now on, see `on_deliver`) and answers how far each
    /// row reaches (`peer_rejoined`); the horizons are the per-row maximum. `r` then starts from
    /// a snapshot of the peer that executed most (its checkpoint, with `r`'s next slot at its
    /// row's horizon, and the decided instances beside it), keeps the horizons, and discards
    /// what restoring produced (re-execution answers nobody). Its disk becomes exactly that
    /// checkpoint and those records; clients waiting on the old incarnation get no answer.
    ///
    /// A rejoin waits for every peer: skipped (and traced) when another replica is down, or when
    /// `r` crashed for good. `r` itself may be up or down for a restart. It is skipped too when
    /// there is no room for one more failure (see `abstaining`): other replicas abstaining, and
    /// permanent crashes still to come, would then exceed F.
    fn wipe(&mut self, r: usize) {
        let n = self.cfg.n;
        let down: Vec<usize> = (0..n).filter(|&p| p != r && !self.alive(p)).collect();
        // Until it has caught up to its horizons, the rejoined replica counts as a failure (see
        // `abstaining`): keep room for the permanent crashes still to come.
        let f = quorum::max_failures(n);
        let impaired = self.impaired_except(r);
        if self.life[r] == Life::Dead || !down.is_empty() || impaired + self.crashes_ahead >= f {
            self.stats.wipes_skipped += 1;
            let why = if self.life[r] == Life::Dead {
                "it crashed for good".to_string()
            } else if !down.is_empty() {
                format!("{} down", ShowReplicas(&down))
            } else {
                format!(
                    "it counts as a failure until it catches up, and {impaired} other replicas \
                     abstain and {} permanent crashes are ahead (F = {f})",
                    self.crashes_ahead
                )
            };
            self.trace.record(
                self.now,
                What::Fault(format!("wipe of r{r} skipped: {why}")),
            );
            return;
        }
        // The new incarnation asks every peer to Join: each fences the old one (durably) and
        // reports its row ends; what the sent answers decide is the production `Joiner`'s.
        self.generation[r] += 1;
        let me = ReplicaId(r as u32);
        let new_incarnation = incarnation_of(self.generation[r]);
        let mut joiner = Joiner::new(me, n, false);
        for p in (0..n).filter(|&p| p != r) {
            self.nodes[p].answer_join(0, me, Some(new_incarnation));
            let ready = self.nodes[p].take_ready();
            assert!(
                ready.core.persist.is_empty() && ready.core.messages.is_empty(),
                "answering a Join changes no instance"
            );
            if let Some(peers) = ready.peers {
                self.peers_disk[p] = peers;
            }
            let answer = ready
                .joins
                .into_iter()
                .next()
                .and_then(|(_, a)| a.ok())
                .expect("a well-formed Join is answered");
            joiner
                .answered(ReplicaId(p as u32), answer)
                .expect("answers are for this cluster size");
        }
        let mut node = Node::new(
            self.opts[r].clone(),
            self.cfg.checkpoint_every,
            self.now,
            Restored {
                membership: Membership::Joining,
                peers: vec![None; n],
                checkpoint: None,
                records: Vec::new(),
            },
        );
        let (s, horizons, covered) = match joiner.decision() {
            Some(JoinDecision::Rejoin { horizons, sources }) => {
                // The snapshot comes from the best source (the peer that executed most).
                let s = sources[0].index();
                let image = self.nodes[s]
                    .snapshot_for(me, Some(new_incarnation))
                    .expect("the source answered this incarnation's Join");
                let (encoded, records) = (image.checkpoint, image.records);
                let checkpoint =
                    Checkpoint::decode(&encoded, n).expect("a snapshot the core encoded decodes");
                let covered = (
                    checkpoint.gc_prefix.clone(),
                    checkpoint.executed_above.clone(),
                );
                node.join_from_snapshot(self.now, horizons.clone(), checkpoint, records);
                (s, horizons, covered)
            }
            // No peer ever heard of it: it starts empty, like a new replica.
            Some(JoinDecision::Fresh) => {
                node.join_fresh();
                (r, vec![0; n], (vec![0; n], Vec::new()))
            }
            None => unreachable!("every peer answered"),
        };
        // Carried out like the runtime's `install`: the snapshot becomes its checkpoint and
        // log, then its membership is stored; re-execution on restore answered nobody.
        let ready = node.take_ready();
        let installed = match ready.membership {
            Some(Membership::Joined { horizons }) => horizons,
            other => unreachable!("a join ends joined, not {other:?}"),
        };
        self.membership_disk[r] = Membership::Joined {
            horizons: installed.clone(),
        };
        self.peers_disk[r] = vec![None; n];
        match ready.install {
            Some(install) => {
                self.durable[r] = install.records.iter().cloned().collect();
                self.disk[r] = install.records;
                self.checkpoint[r] = Some(install.checkpoint);
            }
            None => {
                self.durable[r] = HashMap::new();
                self.disk[r] = Vec::new();
                self.checkpoint[r] = None;
            }
        }
        self.horizons[r] = Some(installed);
        self.caught_up[r] = false;
        self.learnt[r].fill(0);
        self.nodes[r] = node;
        self.digest[r] = self.nodes[r].replica().kv().digest();
        self.life[r] = Life::Up;
        self.incarnation[r] += 1;
        self.stats.wipes += 1;
        self.trace.record(
            self.now,
            What::Fault(format!(
                "wipe r{r}: it rejoins from r{s}'s snapshot ({} records, collected {}, {} \
                 executed) with horizons {horizons:?}{}",
                self.disk[r].len(),
                covered.0.iter().sum::<u64>(),
                self.nodes[r].replica().kv().executed(),
                if self.cfg.sabotage_rejoin_without_horizons {
                    " (sabotage: installs none)"
                } else {
                    ""
                }
            )),
        );
        let source_digest = self.nodes[s].replica().kv().digest();
        self.observer
            .on_rejoin(r, self.nodes[r].replica(), s, source_digest, covered);
        self.check_invariants(r);
        self.after_input(r);
        let incarnation = self.incarnation[r];
        self.schedule(TICK, Event::Tick(r, incarnation));
    }

    fn heal_links(&mut self) {
        for row in &mut self.blocked {
            row.fill(false);
        }
        self.trace
            .record(self.now, What::Fault("heal links".into()));
    }

    fn crash(&mut self, r: usize) {
        self.life[r] = Life::Dead;
        let down = self.impaired_except(r) + 1;
        assert!(
            down <= quorum::max_failures(self.cfg.n),
            "at most F replicas may be down (or abstaining after a rejoin) when one crashes for \
             good"
        );
        self.trace
            .record(self.now, What::Fault(format!("crash r{r} for good")));
    }

    fn on_action(&mut self, a: Action) {
        match a {
            Action::Op {
                client,
                replica,
                op,
            } => self.start_op(client, op, Some(replica)),
            Action::Partition(groups) => {
                let n = self.cfg.n;
                let group_of = |r: usize| groups.iter().position(|g| g.contains(&r));
                for a in 0..n {
                    for b in 0..n {
                        if group_of(a) != group_of(b) {
                            self.blocked[a][b] = true;
                        }
                    }
                }
                self.trace
                    .record(self.now, What::Fault(format!("partition {groups:?}")));
            }
            Action::Cut { from, to } => {
                self.blocked[from][to] = true;
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
            Action::CrashAtCheckpoint(r) => self.crash_at_checkpoint[r] = true,
            Action::Wipe(r) => self.wipe(r),
        }
    }

    fn end_chaos(&mut self) {
        self.heal_links();
        for r in 0..self.cfg.n {
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

    // ---- liveness ---------------------------------------------------------------------------

    /// Whether `r` is running (a torn crash waits for its next step).
    fn alive(&self, r: usize) -> bool {
        matches!(self.life[r], Life::Up | Life::Torn(_))
    }

    /// Whether `r` rejoined and still abstains on some instance: below its horizons, not known
    /// committed there. Its peers decide those without it, as if it were down: until it has
    /// learnt them all committed, it counts against the F failures the cluster tolerates (a
    /// permanent crash meanwhile could leave an instance that only the crashed replica and
    /// the wiped one's old incarnation knew, which nobody can decide safely any more).
    fn abstaining(&mut self, r: usize) -> bool {
        if self.caught_up[r] {
            return false;
        }
        let Some(horizons) = &self.horizons[r] else {
            return false;
        };
        let committed = self.observer.committed_at(r);
        let mut behind = false;
        for (row, &h) in horizons.iter().enumerate() {
            let next = &mut self.learnt[r][row];
            while *next < h && committed.contains(&InstanceId::new(ReplicaId(row as u32), *next)) {
                *next += 1;
            }
            behind |= *next < h;
        }
        if !behind {
            self.caught_up[r] = true;
            self.trace.record(
                self.now,
                What::Fault(format!(
                    "r{r} learnt everything below its horizons committed: it abstains no more"
                )),
            );
        }
        behind
    }

    /// Replicas other than `r` that are down, or abstain after a rejoin: what counts against
    /// the F failures.
    fn impaired_except(&mut self, r: usize) -> usize {
        (0..self.cfg.n)
            .filter(|&p| p != r)
            .filter(|&p| self.life[p] != Life::Up || self.abstaining(p))
            .count()
    }

    fn live(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.cfg.n).filter(|r| self.alive(*r))
    }

    /// Cheap test first: anything pending means not quiescent.
    fn quiescent(&self) -> bool {
        if self.life.iter().all(|l| *l == Life::Up) {
            let busy = self.clients.iter().any(|c| c.current.is_some())
                || self.live().any(|r| {
                    let rep = self.nodes[r].replica();
                    rep.pending() > 0 || rep.inflight() > 0 || rep.unexecuted() > 0
                });
            if busy {
                return false;
            }
        }
        self.liveness_gaps().is_empty()
    }

    /// What is not done yet: client requests unanswered, instances not executed at some live
    /// replica. Nothing is exempt: with at most F replicas down, recovery must finish whatever
    /// a dead leader left.
    fn liveness_gaps(&self) -> Vec<(Option<InstanceId>, String)> {
        // Every instance known: from the live replicas' tables and from every commit seen
        // (garbage collection drops executed instances).
        let mut known: BTreeSet<InstanceId> = BTreeSet::new();
        for r in self.live() {
            known.extend(self.nodes[r].replica().instances().map(|(id, _)| *id));
        }
        known.extend(self.observer.decided().map(|(id, _, _)| id));
        let mut gaps = Vec::new();
        for (c, client) in self.clients.iter().enumerate() {
            if let Some(cur) = &client.current {
                gaps.push((
                    None,
                    format!("client {c} request {} unanswered", cur.request),
                ));
            }
        }
        for r in self.live() {
            if self.nodes[r].replica().pending() > 0 {
                gaps.push((None, format!("r{r} has proposals pending")));
            }
        }
        for id in &known {
            for r in self.live() {
                if !self.observer.executed_at(r).contains(id) {
                    let status = self.nodes[r].replica().instance(*id).map(|i| i.status);
                    let status = status.map_or("unknown".to_string(), |s| format!("{s:?}"));
                    gaps.push((Some(*id), format!("{id} is {status} at r{r}")));
                }
            }
        }
        gaps
    }

    // ---- the end ----------------------------------------------------------------------------

    fn finish(mut self, wall: Instant) -> Outcome {
        for r in 0..self.cfg.n {
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

    /// Live replicas that executed the same instances must hold the same state.
    fn check_convergence(&mut self) {
        let live: Vec<usize> = self.live().collect();
        for (i, &a) in live.iter().enumerate() {
            for &b in &live[i + 1..] {
                let (ea, eb) = (self.observer.executed_at(a), self.observer.executed_at(b));
                if ea != eb {
                    continue;
                }
                let (da, db) = (
                    self.nodes[a].replica().kv().digest(),
                    self.nodes[b].replica().kv().digest(),
                );
                if da != db {
                    self.violations.push(Violation {
                        check: Check::Convergence,
                        detail: format!(
                            "r{a} and r{b} executed the same {} instances but their states \
                             differ (digest {da:#x} vs {db:#x})",
                            ea.len()
                        ),
                        instances: Vec::new(),
                    });
                    return;
                }
                let sessions = |r: usize| self.nodes[r].replica().kv().sessions();
                let (sa, sb) = (sessions(a), sessions(b));
                if sa.digest() != sb.digest() {
                    self.violations.push(Violation {
                        check: Check::Convergence,
                        detail: format!(
                            "r{a} and r{b} executed the same {} instances but their session \
                             tables differ ({} vs {} sessions)",
                            ea.len(),
                            sa.len(),
                            sb.len()
                        ),
                        instances: Vec::new(),
                    });
                    return;
                }
            }
        }
    }

    fn check_linearizability(&mut self) {
        let mut values: BTreeMap<Bytes, Value> = BTreeMap::new();
        let mut intern = |b: &Bytes| {
            let next = values.len() as Value;
            *values.entry(b.clone()).or_insert(next)
        };
        let mut by_key: BTreeMap<Bytes, Vec<Entry>> = BTreeMap::new();
        for (i, h) in self.history.iter().enumerate() {
            let (key, op) = match &h.op {
                Op::Get { key } => (key, RegOp::Get),
                Op::Put { key, value } => (key, RegOp::Put(intern(value))),
                Op::Delete { key } => (key, RegOp::Delete),
                Op::Cas { key, expected, new } => (
                    key,
                    RegOp::Cas {
                        expected: expected.as_ref().map(&mut intern),
                        new: intern(new),
                    },
                ),
                // Clients never send expiries: the history holds client requests only.
                Op::Expire { .. } => continue,
            };
            let result = h.result.as_ref().map(|r| RegResult {
                found: r.found,
                value: match &h.op {
                    Op::Get { .. } | Op::Cas { .. } if r.found => Some(intern(&r.value)),
                    _ => None,
                },
                success: r.success,
            });
            by_key.entry(key.clone()).or_default().push(Entry {
                id: i,
                call: h.call,
                ret: h.ret.unwrap_or(u64::MAX),
                op,
                result,
            });
        }
        let (bad, inconclusive) = linearizability::check_all(by_key);
        self.stats.inconclusive_keys = inconclusive;
        if let Some((key, Verdict::Violation { stuck_at })) = bad.into_iter().next() {
            let show = |i: usize| {
                let h = &self.history[i];
                format!(
                    "[{}..{}] client {} {:?} -> {:?}",
                    h.call,
                    h.ret.map_or("?".into(), |r| r.to_string()),
                    h.client,
                    h.op,
                    h.result
                )
            };
            let stuck: Vec<String> = stuck_at
                .iter()
                .rev()
                .take(6)
                .rev()
                .map(|&i| show(i))
                .collect();
            let whole: Vec<String> = (0..self.history.len())
                .filter(|&i| self.history[i].op.key() == Some(&key))
                .take(HISTORY_SHOWN)
                .map(show)
                .collect();
            self.violations.push(Violation {
                check: Check::Linearizability,
                detail: format!(
                    "history of key {} is not linearizable; the search got stuck around:\n      \
                     {}\n    the key's history ([call..return] in logical time):\n      {}",
                    String::from_utf8_lossy(&key),
                    stuck.join("\n      "),
                    whole.join("\n      ")
                ),
                instances: Vec::new(),
            });
        }
    }

    fn report(&self, violations: &[Violation]) -> String {
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

/// A list of replicas, as `r0, r2`.
struct ShowReplicas<'a>(&'a [usize]);

impl fmt::Display for ShowReplicas<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, r) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "r{r}")?;
        }
        Ok(())
    }
}
