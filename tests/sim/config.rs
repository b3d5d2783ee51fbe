//! What a seed chooses: the sizes, options and fault probabilities of a run (`Config`), and the
//! steps of a scripted scenario (`Action`).
//!
//! `Config::random` draws every field from the seed in a fixed order (new fields are drawn
//! last, so that the seeds of earlier versions keep their configurations); `Config::scripted`
//! is a quiet cluster whose script says what happens.

use std::fmt;
use std::time::Duration;

use epaxos_kv::core::command::Op;
use epaxos_kv::core::quorum;
use epaxos_kv::core::replica::Sabotage;

use super::rng::Rng;

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
    /// With `gc_executed`: `Options::retention_instances` of every replica (how far behind a
    /// majority a replica may fall before the others collect past it; it then catches up by
    /// snapshot, see `Sim::catch_up`).
    pub retention_instances: u64,
    /// With `gc_executed`: `Options::retention_bytes` of every replica (the same bound in key
    /// and value bytes; not drawn, so random runs are as before).
    pub retention_bytes: u64,
    /// Probability that a replica crashes between storing a checkpoint and cutting its log
    /// (during chaos, when one more replica may go down): the new checkpoint then sits beside
    /// the old, uncut log.
    pub checkpoint_crash: f64,
    /// A simulator-side sabotage: the disk silently loses every fifth record, so that replicas
    /// send what they did not persist (to show that `Check::Durability` can fail).
    pub sabotage_disk: bool,
    /// A simulator-side sabotage: the network garbles every twentieth message it delivers into
    /// one that names a replica that does not exist, which the receiver rejects as impossible
    /// (to show that `Check::Invariant` fails: correct replicas send nothing impossible).
    pub sabotage_garble: bool,
    /// Replicas that lose their disk and rejoin during chaos (see `Sim::wipe`); a wipe is
    /// skipped when some other replica is down at its time, when the replica crashed for good,
    /// or when counting it as a failure until it catches up would leave no room for the
    /// permanent crashes still to come.
    pub wipes: usize,
    /// Membership changes during chaos, each removing one member at a random moment (asked of
    /// a random live member): a member crashed for good if there is one, else any member
    /// while no permanent crash is still to come (skipped otherwise, and traced). 0 in
    /// `Config::random`; `random_seeds_with_removals` sets it.
    pub removals: usize,
    /// Replicas beyond epoch 0's `n` (ids `n..n + spares`) that start with a new data
    /// directory and knock (Join) until a change adds them (`Action::Reconfigure` with
    /// `Change::Add`; see `Sim::try_join`).
    pub spares: usize,
    /// How many times, at random moments, a random live member asks to add the lowest spare
    /// not yet added (`random_seeds_with_changes` sets it).
    pub adds: usize,
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
            sabotage_garble: false,
            // Drawn after everything above, for the same reason.
            checkpoint_every: r.range(2, 50),
            checkpoint_crash: *r.pick(&[0.0, 0.05, 0.2]),
            // Drawn after everything above, for the same reason.
            wipes: usize::from(r.chance(0.15)),
            removals: 0,
            spares: 0,
            adds: 0,
            sabotage_rejoin_without_horizons: false,
            // Drawn after everything above, for the same reason.
            session_ttl: ms(r.range(200, 2000)),
            skew_max: *r.pick(&[ms(0), ms(20), ms(300)]),
            sleep_chance: *r.pick(&[0.0, 0.02, 0.1]),
            // Drawn after everything above, for the same reason. Small enough, in half the
            // runs, for the others to collect past a replica that is down or cut off (it then
            // catches up by snapshot).
            retention_instances: if r.chance(0.5) {
                r.range(2, 20)
            } else {
                epaxos_kv::core::limits::RETENTION_INSTANCES
            },
            retention_bytes: epaxos_kv::core::limits::RETENTION_BYTES,
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
            retention_instances: epaxos_kv::core::limits::RETENTION_INSTANCES,
            retention_bytes: epaxos_kv::core::limits::RETENTION_BYTES,
            checkpoint_crash: 0.0,
            sabotage_disk: false,
            sabotage_garble: false,
            wipes: 0,
            removals: 0,
            spares: 0,
            adds: 0,
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
            // A random run of that test: it replays one seed like `random_seeds`.
            Some(
                test @ ("random_seeds_with_a_small_retention"
                | "random_seeds_with_removals"
                | "random_seeds_with_changes"),
            ) => {
                format!(
                "SIM_SEED={} cargo test --release --test simulation {test} -- --exact --nocapture",
                self.seed
            )
            }
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
        if self.removals > 0 {
            write!(f, " removals={}", self.removals)?;
        }
        if self.spares > 0 {
            write!(f, " spares={} adds={}", self.spares, self.adds)?;
        }
        if self.gc_executed && self.checkpoint_every > 0 {
            write!(
                f,
                " checkpoint_every={} checkpoint_crash={}%",
                self.checkpoint_every,
                self.checkpoint_crash * 100.0
            )?;
        }
        if self.gc_executed {
            write!(f, " retention={}", self.retention_instances)?;
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
        if self.sabotage_garble {
            write!(f, " sabotage_garble")?;
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
    /// An admin asks replica `replica` for a membership change (`Node::propose_reconfigure`).
    Reconfigure {
        replica: usize,
        change: epaxos_kv::core::epoch::Change,
    },
    /// Lose the next message of this type from `from` to `to`.
    DropNext {
        from: usize,
        to: usize,
        kind: &'static str,
    },
}
