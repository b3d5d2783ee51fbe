//! The protocol core: one replica's whole EPaxos* state machine, with no I/O.
//!
//! Inputs, each with the current time as a value:
//! - [`Replica::propose`]: a client command (with an opaque token naming whom to answer);
//! - [`Replica::handle`]: a message from a peer;
//! - [`Replica::flush`]: start instances from the pending proposals (the runtime calls it after
//!   draining a burst of inputs, which is what batches proposals into one instance);
//! - [`Replica::tick`]: timers (resending to silent peers, fetching missing commits).
//!
//! Outputs collect in a [`Ready`] that the runtime drains with [`Replica::take_ready`] and
//! carries out: send the messages, answer the clients.
//!
//! Recovery of instances whose leader died (EPaxos* explicit prepare) lives in `recovery`
//! (its rules) and in the "recovery" section below (its bookkeeping).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use crate::core::checkpoint::Checkpoint;
use crate::core::command::{Command, OpResult};
use crate::core::deps::{covers, keys_of, ConflictIndex, ConflictKey};
use crate::core::execute::{self, Node, Outcome};
use crate::core::ids::{Ballot, ClientId, InstanceId, ReplicaId, RequestId, SLOT_LIMIT};
use crate::core::instance::{Instance, Leading, Phase, Status};
use crate::core::kv::{self, Applied, KvStore};
use crate::core::limits;
use crate::core::message::{Commands, Message, RecoverReply};
use crate::core::quorum;
use crate::core::recovery::{self, AfterValidate, Awaited, Decision};

/// Time as a value: the runtime's monotonic clock since its start; the simulator's virtual one.
pub type Time = Duration;

/// Opaque to the core: the runtime's name for a waiting client.
pub type Token = u64;

/// Tunables, validated at start.
#[derive(Debug, Clone)]
pub struct Options {
    pub id: ReplicaId,
    pub n: usize,
    /// Send PreAccept and Accept only to as many peers as the quorum needs.
    pub thrifty: bool,
    /// Most commands batched into one instance.
    pub batch_max: usize,
    /// Most key and value bytes batched into one instance (one larger command still goes
    /// alone): keeps messages well under the transport's limit.
    pub batch_bytes_max: usize,
    /// Most proposals waiting for an instance; beyond it proposals are refused.
    pub pending_max: usize,
    /// Most bytes of commands waiting for an instance.
    pub pending_bytes_max: usize,
    /// Most instances this replica leads at once that are not committed yet. Bounds the work in
    /// flight and, under conflicts, how large dependency components grow.
    pub inflight_max: usize,
    /// First wait before resending to peers that did not answer; doubles up to `retry_max`.
    pub retry: Duration,
    pub retry_max: Duration,
    /// How long an execution may wait on a dependency before asking peers for its Commit.
    pub fetch_after: Duration,
    /// How long an execution may wait on an uncommitted dependency before this replica takes
    /// it over (recovery); later attempts back off exponentially.
    pub recover_after: Duration,
    /// How often to send peers a Watermark (anti-entropy for lost or missed commits; also the
    /// heartbeat).
    pub watermark_every: Duration,
    /// A peer not heard from for this long is suspected (see `Replica::is_suspected`).
    pub suspect_after: Duration,
    /// Most Commits sent in answer to one Watermark.
    pub watermark_commits_max: usize,
    /// While a peer reported more committed than this replica knows (by more than
    /// `watermark_commits_max` slots: it was down, or partitioned, for a while), it sends that
    /// peer a Watermark this often instead of every `watermark_every`, pulling the Commits it
    /// lacks at up to `watermark_commits_max` per round trip.
    pub catch_up_every: Duration,
    /// Drop instances from memory once they are executed here and every peer reported them
    /// committed (through Watermarks): nobody can need their Commit from us any more. Off by
    /// default so that tests can inspect every instance; the replica binary turns it on.
    pub gc_executed: bool,
    /// Deliberate bugs, for tests that show the simulator's checks catch them. All off in
    /// production; nothing outside tests sets them.
    pub sabotage: Sabotage,
}

/// Deliberate protocol bugs that tests plant to show that each safety or liveness check can
/// fail. Every flag defaults to off.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sabotage {
    /// Compute no dependencies (visibility and execution order break).
    pub forget_deps: bool,
    /// Execute a strongly connected component in reverse `InstanceId` order.
    pub reverse_component_order: bool,
    /// On Commit, keep this replica's own deps instead of the decided ones (agreement breaks).
    pub keep_own_deps_on_commit: bool,
    /// Apply every command, retries included (exactly-once breaks).
    pub skip_dedup: bool,
    /// Answer GETs from local state when proposed, without consensus (linearizability breaks).
    pub local_reads: bool,
    /// Never resend and never fetch missing commits (liveness breaks under message loss).
    pub no_retransmit: bool,
    /// Recovery commits a no-op unless it finds the instance committed (agreement breaks: a
    /// command committed outside the recovery's quorum loses its instance).
    pub recovery_always_nop: bool,
    /// Recovery accepts a possibly fast-committed command without Validate (visibility breaks:
    /// the command may never have been committed, and a conflicting one went ahead without it).
    pub recovery_skips_validate: bool,
    /// A replica that lost its data rejoins without horizons: it votes as if its old
    /// incarnation never voted (agreement breaks).
    pub rejoin_without_horizons: bool,
    /// Watermarks claim every row committed and executed far beyond anything proposed (a
    /// lying peer: "I executed everything").
    pub forge_watermarks: bool,
    /// Accept any Watermark, however impossible (peers then drop from memory what the liar
    /// still needs, and it never gets those Commits again: liveness breaks).
    pub trust_watermarks: bool,
}

impl Options {
    /// Defaults for replica `id` of `n`.
    pub fn new(id: ReplicaId, n: usize) -> Self {
        Options {
            id,
            n,
            thrifty: false,
            batch_max: limits::BATCH_MAX,
            batch_bytes_max: limits::BATCH_BYTES_MAX,
            pending_max: limits::PENDING_MAX,
            pending_bytes_max: limits::PENDING_BYTES_MAX,
            inflight_max: limits::INFLIGHT_MAX,
            retry: Duration::from_millis(200),
            retry_max: Duration::from_secs(2),
            fetch_after: Duration::from_millis(300),
            recover_after: limits::RECOVER_AFTER,
            watermark_every: limits::HEARTBEAT,
            suspect_after: limits::SUSPECT_AFTER,
            watermark_commits_max: limits::WATERMARK_COMMITS_MAX,
            catch_up_every: Duration::from_millis(10),
            gc_executed: false,
            sabotage: Sabotage::default(),
        }
    }

    /// Checks the relations between the tunables.
    pub fn validate(&self) -> Result<(), OptionsError> {
        if self.n == 0 || self.id.index() >= self.n {
            return Err(OptionsError::Id(self.id, self.n));
        }
        // Quorums are sized for N = 2F+1; with N even they need not intersect.
        if self.n.is_multiple_of(2) {
            return Err(OptionsError::Even(self.n));
        }
        for (name, v) in [
            ("batch_max", self.batch_max),
            ("batch_bytes_max", self.batch_bytes_max),
            ("pending_max", self.pending_max),
            ("pending_bytes_max", self.pending_bytes_max),
            ("inflight_max", self.inflight_max),
        ] {
            if v == 0 {
                return Err(OptionsError::Zero(name));
            }
        }
        if self.retry.is_zero()
            || self.retry > self.retry_max
            || self.fetch_after.is_zero()
            || self.recover_after.is_zero()
            || self.watermark_every.is_zero()
            || self.catch_up_every.is_zero()
            || self.suspect_after <= self.watermark_every
        {
            return Err(OptionsError::Timers);
        }
        Ok(())
    }
}

/// Invalid [`Options`].
#[derive(Debug, thiserror::Error)]
pub enum OptionsError {
    #[error("replica id {0} is not in a cluster of {1}")]
    Id(ReplicaId, usize),
    #[error("a cluster of {0} replicas: the number of replicas must be odd (quorums need not intersect otherwise)")]
    Even(usize),
    #[error("{0} must be at least 1")]
    Zero(&'static str),
    #[error(
        "timers must be positive, retry must not exceed retry_max, and suspect_after must \
         exceed watermark_every"
    )]
    Timers,
}

/// A message to send to some peers. The runtime encodes it once for all of them.
#[derive(Debug, Clone)]
#[must_use]
pub struct Outgoing {
    pub to: Vec<ReplicaId>,
    pub msg: Message,
}

/// An answer for a waiting client.
#[derive(Debug, Clone)]
#[must_use]
pub struct Reply {
    pub token: Token,
    pub result: Result<OpResult, ReplyError>,
}

/// Why a proposal got no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplyError {
    /// The session had already moved past this request number.
    #[error("request is older than the session's last executed request")]
    Stale,
    /// The request id was already used by this client for a different command (which
    /// executed): nothing was executed for this one.
    #[error(
        "request id already used by this client for a different command; nothing was \
         executed: send the command with a new request id"
    )]
    Reused,
}

/// A peer message refused, never applied: it could not come from a correct peer, or it
/// contradicts what this replica knows for certain. The runtime counts them per peer and kind
/// (`epaxos_peer_contradictions_total`); a correct cluster never produces one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub peer: ReplicaId,
    pub kind: Contradiction,
}

/// What was wrong with a [`Refused`] message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Contradiction {
    /// A ballot at the largest round: no ballot lies above it, so promising it would make the
    /// next takeover's ballot wrap around to round 0 (below promises already made durable).
    BallotOverflow,
    /// A Commit of an instance committed here with other commands or deps, or with other
    /// (non-empty) commands than the instance holds here: only its leader puts commands in an
    /// instance, so every non-empty value of it carries the same ones.
    CommitDiffers,
    /// A Commit of a slot of this replica's own row that it never proposed.
    CommitUnproposed,
    /// A Watermark claiming more than its sender can have: a row executed beyond where it is
    /// committed, or this replica's own row committed beyond the slots it ever proposed.
    WatermarkBeyond,
}

impl Contradiction {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Contradiction::BallotOverflow => "ballot_overflow",
            Contradiction::CommitDiffers => "commit_differs",
            Contradiction::CommitUnproposed => "commit_unproposed",
            Contradiction::WatermarkBeyond => "watermark_beyond",
        }
    }
}

/// The proposal queue is full.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("replica overloaded: {0} proposals already waiting")]
pub struct Overloaded(pub usize);

/// An instance became committed here.
#[derive(Debug, Clone)]
pub struct Committed {
    pub instance: InstanceId,
    /// For instances this replica led: which path decided it and how long it took.
    pub led: Option<(Path, Duration)>,
    pub commands: usize,
}

/// How a led instance was decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    Fast,
    Slow,
    /// Decided by this replica's recovery of another leader's (or its own) instance.
    Recovered,
}

/// Why a peer message was refused before it could change anything: it names a replica,
/// instance, ballot or dependency that cannot exist (see [`Replica::handle`]). The runtime
/// counts them (`epaxos_peer_rejected_total{peer,reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Reject {
    /// The sender is this replica itself or not in the cluster.
    Sender,
    /// A replica id (an instance's row, a ballot's owner, a dependency's row) outside the
    /// cluster, or a Watermark with more rows than the cluster has.
    UnknownReplica,
    /// A slot at or above [`SLOT_LIMIT`].
    ImplausibleSlot,
    /// An instance of this replica's own row that it never created (at or past its next slot):
    /// every instance of a row starts at its leader, so no peer can know of one (unless this
    /// replica rejoined after losing its data: then its old incarnation may have created it).
    UnknownOwnInstance,
    /// Dependencies (or Validate conflicts) that name the instance itself.
    SelfDependency,
    /// A ballot that cannot exist here: a phase or recovery message at a ballot its sender does
    /// not own, round 0 (the original leader's) naming another replica than the instance's
    /// leader, a recovery at round 0, or an accepted ballot above the promise it came with.
    Ballot,
    /// A Waiting message claiming more matching pre-accepts than there are replicas.
    ImplausibleCount,
}

impl Reject {
    /// The `reason` label of `epaxos_peer_rejected_total`.
    pub fn label(self) -> &'static str {
        match self {
            Reject::Sender => "sender",
            Reject::UnknownReplica => "unknown_replica",
            Reject::ImplausibleSlot => "implausible_slot",
            Reject::UnknownOwnInstance => "unknown_own_instance",
            Reject::SelfDependency => "self_dependency",
            Reject::Ballot => "ballot",
            Reject::ImplausibleCount => "implausible_count",
        }
    }
}

/// A peer message refused by [`Replica::handle`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub from: ReplicaId,
    /// The message's type ([`Message::kind`]).
    pub kind: &'static str,
    pub reason: Reject,
}

/// Everything the runtime must carry out after feeding inputs, in this order: make `persist`
/// durable first, then send `messages` and `replies` (they may reveal what `persist` holds).
#[derive(Debug, Default)]
#[must_use]
pub struct Ready {
    /// Instance states to make durable, in order (a later entry for the same instance
    /// supersedes an earlier one). Executed is never written: it is re-derived on restart.
    pub persist: Vec<(InstanceId, Instance)>,
    pub messages: Vec<Outgoing>,
    pub replies: Vec<Reply>,
    pub committed: Vec<Committed>,
    /// Instances executed, in execution order.
    pub executed: Vec<InstanceId>,
    /// Sizes of the batches started (one entry per new instance).
    pub batches: Vec<usize>,
    /// Recoveries started (each attempt counts).
    pub recoveries_started: u64,
    /// Peer messages refused (see [`Refused`]).
    pub refused: Vec<Refused>,
    /// Peer messages refused as impossible (nothing else came of them).
    pub rejected: Vec<Rejected>,
}

/// A dependency that execution waits for.
#[derive(Debug)]
struct Waiting {
    /// Committed instances whose execution waits for it.
    roots: BTreeSet<InstanceId>,
    next_fetch: Time,
    backoff: Duration,
    fetches: u32,
    /// When to take the dependency over if it is still uncommitted, and the wait after that.
    recover_at: Time,
    recover_backoff: Duration,
}

/// A recovery this replica runs (see `recovery` for the rules).
struct Recovery {
    ballot: Ballot,
    started_at: Time,
    phase: RecoveryPhase,
}

enum RecoveryPhase {
    /// Waiting for RecoverOks (ours included).
    Recovering {
        replies: Vec<(ReplicaId, RecoverReply)>,
    },
    /// Waiting for the ValidateOks of the whole quorum.
    Validating {
        quorum: Vec<ReplicaId>,
        commands: Commands,
        deps: Vec<InstanceId>,
        matching: usize,
        replies: Vec<(ReplicaId, Vec<(InstanceId, bool)>)>,
    },
    /// Waiting for `awaited` to commit here.
    Waiting {
        quorum: Vec<ReplicaId>,
        commands: Commands,
        deps: Vec<InstanceId>,
        awaited: Vec<InstanceId>,
    },
}

/// One replica's protocol state.
pub struct Replica {
    opts: Options,
    fast_quorum: usize,
    slow_quorum: usize,
    instances: HashMap<InstanceId, Instance>,
    index: ConflictIndex,
    kv: KvStore,
    next_slot: u64,
    pending: VecDeque<Command>,
    /// Bytes of the commands in `pending`.
    pending_bytes: usize,
    /// Instances this replica leads that are not committed yet (ordered for determinism).
    leading: BTreeMap<InstanceId, Leading>,
    /// Clients waiting here, by request: a retry of a request that is still pending or in
    /// flight here joins the waiting list instead of starting another instance (which, under a
    /// storm of retries, would snowball); the first execution of the request answers them all.
    /// Each waiting client comes with the fingerprint of its command: a different command
    /// reusing the request id is answered `Reused`, not with the other command's result.
    clients: HashMap<(ClientId, RequestId), Vec<(Token, u64)>>,
    /// Some client gave up since the last flush (see `forget`): pending commands nobody waits
    /// for any more are dropped at the next one.
    forgotten: bool,
    /// Uncommitted dependencies that block execution, ordered for deterministic fetching.
    waiting: BTreeMap<InstanceId, Waiting>,
    /// Per row: committed instances waiting for the row's committed prefix to pass a slot
    /// (their deps cover it), by that slot.
    prefix_waiters: Vec<BTreeMap<u64, Vec<InstanceId>>>,
    committed_count: u64,
    unexecuted: u64,
    /// The committed instances not executed yet, by key: where execution finds edges.
    to_execute: execute::Unexecuted,
    /// Per row: the first slot not known to be committed here.
    committed_prefix: Vec<u64>,
    /// Per row: one past the highest slot committed here.
    committed_end: Vec<u64>,
    /// Per row: the first slot not executed here.
    executed_prefix: Vec<u64>,
    /// Per peer, per row: the committed prefix it last reported.
    peer_committed: Vec<Vec<u64>>,
    /// Per peer, per row: the executed prefix it last reported.
    peer_executed: Vec<Vec<u64>>,
    /// Recoveries this replica runs.
    recovering: BTreeMap<InstanceId, Recovery>,
    /// Per uncommitted instance: the highest matching count a recoverer of it announced in a
    /// Waiting message (breaks waiting cycles, see `recovery`). Dropped at commit.
    announced: HashMap<InstanceId, u32>,
    /// Per row: slots below this were dropped from memory (all executed here, all committed
    /// everywhere). A dependency on one of them counts as executed.
    gc_prefix: Vec<u64>,
    /// Per row: how far the row reached anywhere when this replica joined with a new data
    /// directory (all zeros for a replica that never lost its data). Below it, an earlier
    /// incarnation may have voted and forgotten: see `rejoin`.
    horizons: Vec<u64>,
    next_watermark: Time,
    /// When this replica, if it is behind a peer, may next pull Commits from it.
    next_catch_up: Time,
    /// Per peer: when a message from it last arrived (starts at 0, the replica's start).
    last_heard: Vec<Time>,
    ready: Ready,
}

impl Replica {
    /// A fresh replica. Panics on invalid options: validate them first.
    pub fn new(opts: Options) -> Replica {
        opts.validate()
            .expect("options are validated by the caller");
        Replica {
            fast_quorum: quorum::fast_quorum(opts.n),
            slow_quorum: quorum::slow_quorum(opts.n),
            index: ConflictIndex::new(opts.n),
            instances: HashMap::new(),
            kv: KvStore::new(),
            next_slot: 0,
            pending: VecDeque::new(),
            pending_bytes: 0,
            leading: BTreeMap::new(),
            clients: HashMap::new(),
            forgotten: false,
            waiting: BTreeMap::new(),
            prefix_waiters: vec![BTreeMap::new(); opts.n],
            committed_count: 0,
            unexecuted: 0,
            to_execute: execute::Unexecuted::new(opts.n),
            committed_prefix: vec![0; opts.n],
            committed_end: vec![0; opts.n],
            executed_prefix: vec![0; opts.n],
            peer_committed: vec![vec![0; opts.n]; opts.n],
            peer_executed: vec![vec![0; opts.n]; opts.n],
            recovering: BTreeMap::new(),
            announced: HashMap::new(),
            gc_prefix: vec![0; opts.n],
            horizons: vec![0; opts.n],
            next_watermark: Duration::ZERO,
            next_catch_up: Duration::ZERO,
            last_heard: vec![Duration::ZERO; opts.n],
            ready: Ready::default(),
            opts,
        }
    }

    /// Rebuilds a replica from its durable log (instance states in the order they were
    /// written; the last one of an instance wins) and resumes: committed instances execute again
    /// from an empty key/value state, which rebuilds it exactly (execution is deterministic), and
    /// the instances this replica leads that were not committed resend their current phase at
    /// the same ballot with the same values (safe: what it sends is what it made durable before
    /// sending the first time). Clients that were waiting are gone; they retry.
    pub fn restore(
        opts: Options,
        now: Time,
        records: impl IntoIterator<Item = (InstanceId, Instance)>,
    ) -> Replica {
        Replica::restore_from(opts, now, None, records)
    }

    /// [`Replica::restore`] on top of a checkpoint: the log records of instances the checkpoint
    /// covers are skipped, and those it lists as executed are not executed again.
    pub fn restore_from(
        opts: Options,
        now: Time,
        checkpoint: Option<Checkpoint>,
        records: impl IntoIterator<Item = (InstanceId, Instance)>,
    ) -> Replica {
        let mut r = Replica::new(opts);
        let me = r.opts.id;
        let mut executed_above = HashSet::new();
        if let Some(c) = checkpoint {
            r.kv = c.kv;
            r.index = c.index;
            r.next_slot = c.next_slot;
            r.committed_count = c.gc_prefix.iter().sum();
            r.executed_prefix = c.gc_prefix.clone();
            r.committed_prefix = c.gc_prefix.clone();
            r.committed_end = c.gc_prefix.clone();
            r.gc_prefix = c.gc_prefix;
            executed_above = c.executed_above.into_iter().collect();
        }
        for (id, inst) in records {
            if id.replica.index() >= r.opts.n || r.forgotten(id) {
                continue;
            }
            r.index.record(id, &inst.commands);
            r.instances.insert(id, inst);
        }
        let mut ids: Vec<InstanceId> = r.instances.keys().copied().collect();
        ids.sort_unstable();
        r.next_slot = ids
            .iter()
            .filter(|i| i.replica == me)
            .map(|i| i.slot + 1)
            .max()
            .unwrap_or(0)
            .max(r.next_slot);
        for id in &ids {
            let inst = r.instances.get_mut(id).expect("ids come from the table");
            if inst.status.is_decided() && executed_above.contains(id) {
                inst.status = Status::Executed;
                r.committed_count += 1;
                r.advance_prefix(*id);
                r.advance_executed(*id);
            } else if inst.status.is_decided() {
                inst.status = Status::Committed;
                // Every committed instance goes into the execution index and the committed
                // prefix before anything executes: edges are looked up there.
                let commands = inst.commands.clone();
                r.to_execute.insert(*id, &commands);
                r.committed_count += 1;
                r.unexecuted += 1;
                r.advance_prefix(*id);
            } else if id.replica == me && inst.ballot == Ballot::initial(me) {
                let (phase, msg) = match inst.status {
                    Status::PreAccepted => (
                        Phase::PreAccepting {
                            replies: Vec::new(),
                        },
                        Message::PreAccept {
                            instance: *id,
                            ballot: inst.ballot,
                            commands: inst.commands.clone(),
                            deps: inst.init_deps.clone().unwrap_or_default(),
                        },
                    ),
                    _ => (
                        Phase::Accepting { acks: Vec::new() },
                        Message::Accept {
                            instance: *id,
                            ballot: inst.ballot,
                            commands: inst.commands.clone(),
                            deps: inst.deps.clone(),
                        },
                    ),
                };
                let peers = r.peers();
                r.leading.insert(
                    *id,
                    Leading {
                        phase,
                        asked: peers.clone(),
                        started_at: now,
                        sent_at: now,
                        retry_after: r.opts.retry,
                        recovery: false,
                    },
                );
                r.send(peers, msg);
            }
        }
        for id in ids {
            if r.instances[&id].status == Status::Committed {
                r.on_committed(now, id);
            }
        }
        // Re-execution answers nobody: those clients are gone.
        r.ready.replies.clear();
        r.ready.executed.clear();
        r
    }

    // ---- getters ------------------------------------------------------------------------

    pub fn id(&self) -> ReplicaId {
        self.opts.id
    }
    pub fn options(&self) -> &Options {
        &self.opts
    }
    pub fn kv(&self) -> &KvStore {
        &self.kv
    }
    pub fn instance(&self, id: InstanceId) -> Option<&Instance> {
        self.instances.get(&id)
    }
    pub fn instances(&self) -> impl Iterator<Item = (&InstanceId, &Instance)> {
        self.instances.iter()
    }
    /// Instances committed here so far.
    pub fn committed_count(&self) -> u64 {
        self.committed_count
    }
    /// Committed instances not executed yet.
    pub fn unexecuted(&self) -> u64 {
        self.unexecuted
    }
    /// Proposals waiting for an instance.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }
    /// Instances this replica leads that are not committed.
    pub fn inflight(&self) -> usize {
        self.leading.len()
    }

    /// Drains the outputs accumulated since the last call.
    pub fn take_ready(&mut self) -> Ready {
        std::mem::take(&mut self.ready)
    }

    // ---- inputs -------------------------------------------------------------------------

    /// Queues a client command. It starts in an instance at the next [`Replica::flush`].
    pub fn propose(&mut self, token: Token, cmd: Command) -> Result<(), Overloaded> {
        let full_bytes = self.pending_bytes + cmd.op.size_bytes() > self.opts.pending_bytes_max;
        if self.pending.len() >= self.opts.pending_max || (full_bytes && !self.pending.is_empty()) {
            return Err(Overloaded(self.pending.len()));
        }
        if self.opts.sabotage.local_reads {
            if let crate::core::command::Op::Get { key } = &cmd.op {
                let result = match self.kv.get(key) {
                    Some(v) => OpResult {
                        found: true,
                        value: v.clone(),
                        success: true,
                    },
                    None => OpResult::default(),
                };
                self.ready.replies.push(Reply {
                    token,
                    result: Ok(result),
                });
                return Ok(());
            }
        }
        let print = kv::fingerprint(&cmd.op);
        match self.clients.entry((cmd.client, cmd.request)) {
            std::collections::hash_map::Entry::Occupied(mut e) => e.get_mut().push((token, print)),
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(vec![(token, print)]);
                self.pending_bytes += cmd.op.size_bytes();
                self.pending.push_back(cmd);
            }
        }
        Ok(())
    }

    /// The client behind `token`, which proposed `(client, request)`, gave up (its call timed
    /// out): nobody is answered for it any more. A command still pending with nobody else
    /// waiting for it is dropped when the next batch is formed, before it was ever proposed
    /// (the client was told it may retry with the same ids); one already in an instance goes
    /// on and executes once, answering nobody here.
    pub fn forget(&mut self, token: Token, client: ClientId, request: RequestId) {
        let key = (client, request);
        let Some(tokens) = self.clients.get_mut(&key) else {
            return;
        };
        tokens.retain(|(t, _)| *t != token);
        if tokens.is_empty() {
            self.clients.remove(&key);
            self.forgotten = true;
        }
    }

    /// Starts instances from the pending proposals, up to `batch_max` commands each, while
    /// fewer than `inflight_max` instances are in flight.
    pub fn flush(&mut self, now: Time) {
        if std::mem::take(&mut self.forgotten) {
            // Commands whose clients all gave up before they were proposed (see `forget`).
            let clients = &self.clients;
            self.pending
                .retain(|cmd| clients.contains_key(&(cmd.client, cmd.request)));
            self.pending_bytes = self.pending.iter().map(|c| c.op.size_bytes()).sum();
        }
        while !self.pending.is_empty() && self.leading.len() < self.opts.inflight_max {
            self.start_instance(now);
        }
    }

    /// Handles one message from peer `from`. A message that names a replica, instance, ballot
    /// or dependency that cannot exist (see [`Reject`]) changes nothing, not even when the
    /// sender was last heard: it is only reported in [`Ready::rejected`].
    pub fn handle(&mut self, now: Time, from: ReplicaId, msg: Message) {
        if let Err(reason) = self.check_input(from, &msg) {
            self.ready.rejected.push(Rejected {
                from,
                kind: msg.kind(),
                reason,
            });
            return;
        }
        self.last_heard[from.index()] = now;
        if msg.ballot().is_some_and(|b| b.round == u32::MAX) {
            // Honest ballots grow by one round per takeover and never get near the top; a
            // ballot there leaves no successor for the next takeover (see `next_ballot`).
            self.refuse(from, Contradiction::BallotOverflow);
            return;
        }
        match msg {
            Message::PreAccept {
                instance,
                ballot,
                commands,
                deps,
            } => self.handle_pre_accept(from, instance, ballot, commands, deps),
            Message::PreAcceptOk {
                instance,
                ballot,
                deps,
            } => self.handle_pre_accept_ok(now, from, instance, ballot, deps),
            Message::Accept {
                instance,
                ballot,
                commands,
                deps,
            } => self.handle_accept(from, instance, ballot, commands, deps),
            Message::AcceptOk { instance, ballot } => {
                self.handle_accept_ok(now, from, instance, ballot)
            }
            Message::Commit {
                instance,
                ballot,
                commands,
                deps,
            } => self.handle_commit(now, from, instance, ballot, commands, deps),
            Message::Nack { instance, promised } => self.handle_nack(now, instance, promised),
            Message::CommitRequest { instances } => self.handle_commit_request(from, instances),
            Message::Watermark {
                committed_prefix,
                executed_prefix,
            } => self.handle_watermark(from, committed_prefix, executed_prefix),
            Message::Recover { instance, ballot } => {
                self.handle_recover(now, from, instance, ballot)
            }
            Message::RecoverOk {
                instance,
                ballot,
                reply,
            } => self.handle_recover_ok(now, from, instance, ballot, reply),
            Message::Validate {
                instance,
                ballot,
                commands,
                deps,
            } => self.handle_validate(from, instance, ballot, commands, deps),
            Message::ValidateOk {
                instance,
                ballot,
                conflicts,
            } => self.handle_validate_ok(now, from, instance, ballot, conflicts),
            Message::Waiting { instance, matching } => self.handle_waiting(now, instance, matching),
        }
    }

    /// Refuses a message that cannot exist: a sender outside the cluster (or this replica), any
    /// replica id outside the cluster, a slot at or above [`SLOT_LIMIT`], an instance of this
    /// replica's own row it never created, an instance depending on itself, a ballot its sender
    /// cannot hold (see [`Reject::Ballot`]), or an implausible count. `wire` already refuses
    /// replica ids outside the cluster; the core checks everything again because it is also fed
    /// directly (simulator, tests) and because the rest needs its state (its next slot).
    fn check_input(&self, from: ReplicaId, msg: &Message) -> Result<(), Reject> {
        let (n, me) = (self.opts.n, self.opts.id);
        if from.index() >= n || from == me {
            return Err(Reject::Sender);
        }
        // A replica that rejoined after losing its data may hear of slots of its own row that
        // its old incarnation created and no peer knew but as a dependency: horizons do not
        // cover those, so there its own row beyond its next slot is no proof of anything.
        let own_row_known = self.horizons.iter().all(|h| *h == 0);
        let id_ok = |id: InstanceId| {
            if id.replica.index() >= n {
                Err(Reject::UnknownReplica)
            } else if id.slot >= SLOT_LIMIT {
                Err(Reject::ImplausibleSlot)
            } else if own_row_known && id.replica == me && id.slot >= self.next_slot {
                Err(Reject::UnknownOwnInstance)
            } else {
                Ok(())
            }
        };
        // Round 0 is the instance's original leader's: no other replica ever holds it.
        let ballot_ok = |id: InstanceId, b: Ballot| {
            if b.replica.index() >= n {
                Err(Reject::UnknownReplica)
            } else if b.round == 0 && b.replica != id.replica {
                Err(Reject::Ballot)
            } else {
                Ok(())
            }
        };
        let deps_ok = |id: InstanceId, deps: &[InstanceId]| {
            deps.iter().try_for_each(|d| id_ok(*d))?;
            if deps.contains(&id) {
                return Err(Reject::SelfDependency);
            }
            Ok(())
        };
        // Phase messages come from the ballot's owner; recovery never uses round 0.
        let sent_by_owner = |id: InstanceId, b: Ballot, recovery: bool| {
            if self.owns(id, b, from) && !(recovery && b.round == 0) {
                Ok(())
            } else {
                Err(Reject::Ballot)
            }
        };
        if let Some(id) = msg.instance() {
            id_ok(id)?;
        }
        match msg {
            Message::PreAccept {
                instance,
                ballot,
                deps,
                ..
            }
            | Message::Accept {
                instance,
                ballot,
                deps,
                ..
            } => {
                ballot_ok(*instance, *ballot)?;
                deps_ok(*instance, deps)?;
                sent_by_owner(*instance, *ballot, false)
            }
            Message::PreAcceptOk {
                instance,
                ballot,
                deps,
            }
            | Message::Commit {
                instance,
                ballot,
                deps,
                ..
            } => {
                ballot_ok(*instance, *ballot)?;
                deps_ok(*instance, deps)
            }
            Message::AcceptOk { instance, ballot } => ballot_ok(*instance, *ballot),
            Message::Nack { instance, promised } => ballot_ok(*instance, *promised),
            Message::CommitRequest { instances } => instances.iter().try_for_each(|i| id_ok(*i)),
            Message::Watermark {
                committed_prefix,
                executed_prefix,
            } => {
                if committed_prefix.len() > n || executed_prefix.len() > n {
                    return Err(Reject::UnknownReplica);
                }
                // A prefix is one past a slot: at most `SLOT_LIMIT`.
                if committed_prefix
                    .iter()
                    .chain(executed_prefix)
                    .any(|p| *p > SLOT_LIMIT)
                {
                    return Err(Reject::ImplausibleSlot);
                }
                Ok(())
            }
            Message::Recover { instance, ballot } => {
                ballot_ok(*instance, *ballot)?;
                sent_by_owner(*instance, *ballot, true)
            }
            Message::RecoverOk {
                instance,
                ballot,
                reply,
            } => {
                ballot_ok(*instance, *ballot)?;
                if let Some(ab) = reply.accepted_ballot {
                    ballot_ok(*instance, ab)?;
                    // The sender promised `ballot`, at or above anything it accepted.
                    if ab > *ballot {
                        return Err(Reject::Ballot);
                    }
                }
                deps_ok(*instance, &reply.deps)?;
                if let Some(init) = &reply.init_deps {
                    deps_ok(*instance, init)?;
                }
                Ok(())
            }
            Message::Validate {
                instance,
                ballot,
                deps,
                ..
            } => {
                ballot_ok(*instance, *ballot)?;
                deps_ok(*instance, deps)?;
                sent_by_owner(*instance, *ballot, true)
            }
            Message::ValidateOk {
                instance,
                ballot,
                conflicts,
            } => {
                ballot_ok(*instance, *ballot)?;
                for (other, _) in conflicts {
                    id_ok(*other)?;
                    if other == instance {
                        return Err(Reject::SelfDependency);
                    }
                }
                Ok(())
            }
            Message::Waiting { matching, .. } => {
                if *matching as usize > n {
                    return Err(Reject::ImplausibleCount);
                }
                Ok(())
            }
        }
    }

    /// Fires due timers: resends to peers that did not answer (falling back to the slow path
    /// when a slow quorum answered but the fast one did not come), and asks peers for the
    /// Commit of dependencies that execution has waited on for too long.
    pub fn tick(&mut self, now: Time) {
        if self.opts.sabotage.no_retransmit {
            return;
        }
        let due: Vec<InstanceId> = self
            .leading
            .iter()
            .filter(|(_, l)| now >= l.sent_at + l.retry_after)
            .map(|(id, _)| *id)
            .collect();
        for id in due {
            self.on_retry_timeout(now, id);
        }
        self.fetch_missing(now);
        self.recover_stuck(now);
        if self.opts.gc_executed {
            self.collect_garbage();
        }
        if now >= self.next_watermark {
            self.next_watermark = now + self.opts.watermark_every;
            self.need_stragglers(now);
            let msg = Message::Watermark {
                committed_prefix: self.committed_prefix.clone(),
                executed_prefix: self.executed_prefix.clone(),
            };
            self.send(self.peers(), msg);
        } else if now >= self.next_catch_up {
            self.catch_up(now);
        }
    }

    /// Pulls Commits from the peer that is furthest ahead of this replica, if one is ahead by
    /// more than one Watermark's answer: a replica that was down for long catches up at a round
    /// trip per `watermark_commits_max` Commits instead of that many per `watermark_every`.
    fn catch_up(&mut self, now: Time) {
        let behind = |reported: &Vec<u64>| -> u64 {
            reported
                .iter()
                .zip(&self.committed_prefix)
                .map(|(theirs, mine)| theirs.saturating_sub(*mine))
                .sum()
        };
        let ahead = self
            .peers()
            .into_iter()
            .map(|p| (behind(&self.peer_committed[p.index()]), p))
            .max();
        if let Some((lag, peer)) = ahead {
            if lag > self.opts.watermark_commits_max as u64 {
                self.next_catch_up = now + self.opts.catch_up_every;
                let msg = Message::Watermark {
                    committed_prefix: self.committed_prefix.clone(),
                    executed_prefix: self.executed_prefix.clone(),
                };
                self.send(vec![peer], msg);
            }
        }
    }

    // ---- leader side ----------------------------------------------------------------------

    fn start_instance(&mut self, now: Time) {
        let id = InstanceId::new(self.opts.id, self.next_slot);
        self.next_slot += 1;
        let mut take = 0;
        let mut bytes = 0;
        for cmd in self.pending.iter().take(self.opts.batch_max) {
            bytes += cmd.op.size_bytes();
            if take > 0 && bytes > self.opts.batch_bytes_max {
                break;
            }
            take += 1;
        }
        let commands: Vec<Command> = self.pending.drain(..take).collect();
        self.pending_bytes -= commands.iter().map(|c| c.op.size_bytes()).sum::<usize>();
        let mut deps = Vec::new();
        if !self.opts.sabotage.forget_deps {
            self.index.collect(id, &commands, true, &mut deps);
            self.add_horizon_deps(&mut deps);
        }
        self.index.record(id, &commands);
        let commands: Commands = Arc::new(commands);
        let ballot = Ballot::initial(self.opts.id);
        self.instances.insert(
            id,
            Instance {
                status: Status::PreAccepted,
                ballot,
                accepted_ballot: None,
                commands: commands.clone(),
                deps: deps.clone(),
                init_deps: Some(deps.clone()),
            },
        );
        self.save(id);
        self.ready.batches.push(commands.len());
        let asked = self.targets(now, self.fast_quorum - 1);
        self.leading.insert(
            id,
            Leading {
                phase: Phase::PreAccepting {
                    replies: Vec::new(),
                },
                asked: asked.clone(),
                started_at: now,
                sent_at: now,
                retry_after: self.opts.retry,
                recovery: false,
            },
        );
        self.send(
            asked,
            Message::PreAccept {
                instance: id,
                ballot,
                commands,
                deps,
            },
        );
        self.decide_pre_accept(now, id, false);
    }

    /// Peers to ask in a phase that needs `needed` answers besides the leader's: all peers, or
    /// in thrifty mode just `needed` of them (the next ids after ours, a fixed choice).
    /// In thrifty mode, peers not suspected come first (then the next ids after ours), so a
    /// dead peer does not cost every instance a resend timeout.
    fn targets(&self, now: Time, needed: usize) -> Vec<ReplicaId> {
        let n = self.opts.n as u32;
        let count = if self.opts.thrifty {
            needed
        } else {
            self.opts.n - 1
        };
        let mut peers: Vec<ReplicaId> = (1..n)
            .map(|k| ReplicaId((self.opts.id.0 + k) % n))
            .collect();
        // Stable: keeps the id order among peers alike.
        peers.sort_by_key(|p| self.is_suspected(*p, now));
        peers.truncate(count);
        peers
    }

    /// Whether nothing was heard from `peer` for `suspect_after`. Every peer sends at least a
    /// Watermark each `watermark_every`, which serves as the heartbeat.
    pub fn is_suspected(&self, peer: ReplicaId, now: Time) -> bool {
        self.last_heard
            .get(peer.index())
            .is_some_and(|heard| now.saturating_sub(*heard) > self.opts.suspect_after)
    }

    fn handle_pre_accept_ok(
        &mut self,
        now: Time,
        from: ReplicaId,
        id: InstanceId,
        ballot: Ballot,
        deps: Vec<InstanceId>,
    ) {
        let Some(inst) = self.instances.get(&id) else {
            return;
        };
        if inst.ballot != ballot {
            return;
        }
        let Some(lead) = self.leading.get_mut(&id) else {
            return; // decided already: a late or duplicated answer
        };
        let Phase::PreAccepting { replies } = &mut lead.phase else {
            return;
        };
        if replies.iter().any(|(r, _)| *r == from) {
            return;
        }
        replies.push((from, deps));
        self.decide_pre_accept(now, id, false);
    }

    /// The EPaxos* fast-path rule: commit the initial deps once a fast quorum (leader included)
    /// reported exactly them. Otherwise go to the slow path with the union of all answers once a
    /// slow quorum answered and either the fast path can no longer happen or `timed_out`.
    fn decide_pre_accept(&mut self, now: Time, id: InstanceId, timed_out: bool) {
        let (Some(inst), Some(lead)) = (self.instances.get(&id), self.leading.get(&id)) else {
            return;
        };
        let Phase::PreAccepting { replies } = &lead.phase else {
            return;
        };
        let init_deps = inst.init_deps.clone().unwrap_or_default();
        let matching = 1 + replies.iter().filter(|(_, d)| *d == init_deps).count();
        let answered = 1 + replies.len();
        // A suspected peer is not waited for: with a dead peer, an instance whose fast path
        // failed would otherwise wait for the resend timer before taking the slow path.
        let unanswered = lead
            .asked
            .iter()
            .filter(|p| !lead.has_answered(**p) && !self.is_suspected(**p, now))
            .count();
        if matching >= self.fast_quorum {
            self.commit_led(now, id, init_deps, Path::Fast);
            return;
        }
        let fast_possible = matching + unanswered >= self.fast_quorum;
        if answered >= self.slow_quorum && (!fast_possible || timed_out) {
            let mut union = init_deps;
            for (_, d) in replies {
                union.extend_from_slice(d);
            }
            crate::core::deps::normalize(&mut union);
            self.start_accept(now, id, union);
        }
    }

    fn start_accept(&mut self, now: Time, id: InstanceId, deps: Vec<InstanceId>) {
        let asked = self.targets(now, self.slow_quorum - 1);
        let inst = self
            .instances
            .get_mut(&id)
            .expect("a led instance is in the table");
        inst.status = Status::Accepted;
        inst.accepted_ballot = Some(inst.ballot);
        inst.deps = deps.clone();
        let msg = Message::Accept {
            instance: id,
            ballot: inst.ballot,
            commands: inst.commands.clone(),
            deps,
        };
        self.save(id);
        let lead = self
            .leading
            .get_mut(&id)
            .expect("start_accept on a led instance");
        lead.phase = Phase::Accepting { acks: Vec::new() };
        lead.asked = asked.clone();
        lead.sent_at = now;
        lead.retry_after = self.opts.retry;
        self.send(asked, msg);
        self.decide_accept(now, id);
    }

    fn handle_accept_ok(&mut self, now: Time, from: ReplicaId, id: InstanceId, ballot: Ballot) {
        let Some(inst) = self.instances.get(&id) else {
            return;
        };
        if inst.ballot != ballot {
            return;
        }
        let Some(lead) = self.leading.get_mut(&id) else {
            return;
        };
        let Phase::Accepting { acks } = &mut lead.phase else {
            return;
        };
        if !acks.contains(&from) {
            acks.push(from);
            self.decide_accept(now, id);
        }
    }

    fn decide_accept(&mut self, now: Time, id: InstanceId) {
        let Some(lead) = self.leading.get(&id) else {
            return;
        };
        if let Phase::Accepting { acks } = &lead.phase {
            if 1 + acks.len() >= self.slow_quorum {
                let path = if lead.recovery {
                    Path::Recovered
                } else {
                    Path::Slow
                };
                let deps = self.instances[&id].deps.clone();
                self.commit_led(now, id, deps, path);
            }
        }
    }

    fn commit_led(&mut self, now: Time, id: InstanceId, deps: Vec<InstanceId>, path: Path) {
        let lead = self
            .leading
            .remove(&id)
            .expect("only led instances are committed by their leader");
        let inst = self
            .instances
            .get_mut(&id)
            .expect("a led instance is in the table");
        inst.deps = deps.clone();
        inst.status = Status::Committed;
        let msg = Message::Commit {
            instance: id,
            ballot: inst.ballot,
            commands: inst.commands.clone(),
            deps,
        };
        let commands = inst.commands.len();
        self.save(id);
        self.send(self.peers(), msg);
        self.announced.remove(&id);
        self.committed_count += 1;
        self.unexecuted += 1;
        self.ready.committed.push(Committed {
            instance: id,
            led: Some((path, now.saturating_sub(lead.started_at))),
            commands,
        });
        self.on_committed(now, id);
    }

    fn on_retry_timeout(&mut self, now: Time, id: InstanceId) {
        let Some(lead) = self.leading.get(&id) else {
            return;
        };
        if let Phase::PreAccepting { replies } = &lead.phase {
            if 1 + replies.len() >= self.slow_quorum {
                // A slow quorum answered but the fast quorum did not come in time.
                self.decide_pre_accept(now, id, true);
                return;
            }
        }
        // Resend to every peer that has not answered, not just the ones first asked: in thrifty
        // mode a silent peer would otherwise stall the instance.
        let silent: Vec<ReplicaId> = self
            .peers()
            .into_iter()
            .filter(|p| !lead.has_answered(*p))
            .collect();
        let inst = &self.instances[&id];
        let msg = match &lead.phase {
            Phase::PreAccepting { .. } => Message::PreAccept {
                instance: id,
                ballot: inst.ballot,
                commands: inst.commands.clone(),
                deps: inst.init_deps.clone().unwrap_or_default(),
            },
            Phase::Accepting { .. } => Message::Accept {
                instance: id,
                ballot: inst.ballot,
                commands: inst.commands.clone(),
                deps: inst.deps.clone(),
            },
        };
        let retry_max = self.opts.retry_max;
        let lead = self.leading.get_mut(&id).expect("checked above");
        lead.asked = silent.clone();
        lead.sent_at = now;
        lead.retry_after = (lead.retry_after * 2).min(retry_max);
        self.send(silent, msg);
    }

    fn handle_nack(&mut self, now: Time, id: InstanceId, promised: Ballot) {
        if let Some(inst) = self.instances.get_mut(&id) {
            if promised > inst.ballot && !inst.status.is_decided() {
                // Another replica took the instance over: stop leading (or recovering) it. Its
                // clients get their answer once it is committed and executed (or, if it ends
                // as a no-op, once their commands are proposed again). Not made durable: a
                // promise forgotten only lets this replica accept what it would have anyway.
                inst.ballot = promised;
                self.leading.remove(&id);
                self.recovering.remove(&id);
                self.postpone_recovery(now, id);
            }
        }
    }

    // ---- acceptor side ----------------------------------------------------------------------

    /// Whether `from` may send phase messages for `id` at `ballot`: it owns the ballot, and
    /// round 0 belongs to the instance's own leader.
    fn owns(&self, id: InstanceId, ballot: Ballot, from: ReplicaId) -> bool {
        ballot.replica == from && (ballot.round > 0 || id.replica == from)
    }

    fn handle_pre_accept(
        &mut self,
        from: ReplicaId,
        id: InstanceId,
        ballot: Ballot,
        commands: Commands,
        init_deps: Vec<InstanceId>,
    ) {
        if self.forgotten(id) {
            return; // executed and committed everywhere: a stale resend
        }
        if self.abstains(id) {
            return;
        }
        if let Some(inst) = self.instances.get(&id) {
            if ballot < inst.ballot {
                let promised = inst.ballot;
                self.nack(from, id, promised);
                return;
            }
            match inst.status {
                // A resent PreAccept: answer what we answered before.
                Status::PreAccepted if ballot == inst.ballot => {
                    let deps = inst.deps.clone();
                    self.send(
                        vec![from],
                        Message::PreAcceptOk {
                            instance: id,
                            ballot,
                            deps,
                        },
                    );
                    return;
                }
                Status::Committed | Status::Executed => {
                    self.send_commit(from, id);
                    return;
                }
                // Accepted already (the leader moved on) or a higher ballot's PreAccept:
                // recovery's business, a later issue.
                _ => return,
            }
        }
        let mut deps = init_deps.clone();
        if !self.opts.sabotage.forget_deps {
            self.index.collect(id, &commands, false, &mut deps);
            self.add_horizon_deps(&mut deps);
        }
        self.index.record(id, &commands);
        self.instances.insert(
            id,
            Instance {
                status: Status::PreAccepted,
                ballot,
                accepted_ballot: None,
                commands,
                deps: deps.clone(),
                init_deps: Some(init_deps),
            },
        );
        self.save(id);
        self.send(
            vec![from],
            Message::PreAcceptOk {
                instance: id,
                ballot,
                deps,
            },
        );
    }

    fn handle_accept(
        &mut self,
        from: ReplicaId,
        id: InstanceId,
        ballot: Ballot,
        commands: Commands,
        deps: Vec<InstanceId>,
    ) {
        if self.forgotten(id) || self.abstains(id) {
            return;
        }
        match self.instances.get_mut(&id) {
            Some(inst) if inst.status.is_decided() => {
                self.send_commit(from, id);
                return;
            }
            Some(inst) if ballot < inst.ballot => {
                let promised = inst.ballot;
                self.nack(from, id, promised);
                return;
            }
            Some(inst) => {
                let raised = ballot > inst.ballot;
                inst.status = Status::Accepted;
                inst.ballot = ballot;
                inst.accepted_ballot = Some(ballot);
                inst.deps = deps;
                let old = std::mem::replace(&mut inst.commands, commands);
                if raised {
                    // Someone else took the instance over.
                    self.leading.remove(&id);
                    self.recovering.remove(&id);
                }
                self.commands_changed(id, &old);
            }
            None => {
                self.index.record(id, &commands);
                self.instances.insert(
                    id,
                    Instance {
                        status: Status::Accepted,
                        ballot,
                        accepted_ballot: Some(ballot),
                        commands,
                        // We never saw the PreAccept; the initial deps are unknown here.
                        init_deps: None,
                        deps,
                    },
                );
            }
        }
        self.save(id);
        self.send(
            vec![from],
            Message::AcceptOk {
                instance: id,
                ballot,
            },
        );
    }

    fn handle_commit(
        &mut self,
        now: Time,
        from: ReplicaId,
        id: InstanceId,
        ballot: Ballot,
        commands: Commands,
        deps: Vec<InstanceId>,
    ) {
        if self.forgotten(id) {
            return;
        }
        if let Some(kind) = self.commit_contradiction(id, &commands, &deps) {
            self.refuse(from, kind);
            return;
        }
        self.commit_here(now, id, ballot, commands, deps, None);
    }

    /// Whether a Commit of `id` contradicts what this replica knows for certain (see
    /// [`Contradiction`]). Agreement makes every correct Commit of an instance carry the one
    /// decided value, and only an instance's leader puts commands in it (recovery carries them
    /// on or decides a no-op), so none of these can come from a correct peer.
    fn commit_contradiction(
        &self,
        id: InstanceId,
        commands: &Commands,
        deps: &[InstanceId],
    ) -> Option<Contradiction> {
        if id.replica == self.opts.id && id.slot >= self.next_slot {
            return Some(Contradiction::CommitUnproposed);
        }
        let inst = self.instances.get(&id)?;
        let differs = if inst.status.is_decided() {
            inst.commands != *commands || inst.deps != deps
        } else {
            !inst.commands.is_empty() && !commands.is_empty() && inst.commands != *commands
        };
        differs.then_some(Contradiction::CommitDiffers)
    }

    /// Whether a Watermark claims more than its sender can have (see
    /// [`Contradiction::WatermarkBeyond`]). Claims about other rows cannot be checked here:
    /// the sender may know commits this replica has not seen yet.
    fn watermark_contradiction(&self, committed: &[u64], executed: &[u64]) -> bool {
        if self.opts.sabotage.trust_watermarks {
            return false;
        }
        let me = self.opts.id.index();
        executed.iter().zip(committed).any(|(e, c)| e > c)
            || committed.get(me).is_some_and(|c| *c > self.next_slot)
            || executed.get(me).is_some_and(|e| *e > self.next_slot)
    }

    /// Commits `id` here with a decided value (from a Commit, or found by recovery).
    fn commit_here(
        &mut self,
        now: Time,
        id: InstanceId,
        ballot: Ballot,
        commands: Commands,
        deps: Vec<InstanceId>,
        led: Option<(Path, Duration)>,
    ) {
        match self.instances.get_mut(&id) {
            Some(inst) if inst.status.is_decided() => return,
            Some(inst) => {
                inst.status = Status::Committed;
                inst.ballot = inst.ballot.max(ballot);
                let old = std::mem::replace(&mut inst.commands, commands.clone());
                if !self.opts.sabotage.keep_own_deps_on_commit {
                    inst.deps = deps;
                }
                self.commands_changed(id, &old);
            }
            None => {
                self.index.record(id, &commands);
                self.instances.insert(
                    id,
                    Instance {
                        status: Status::Committed,
                        ballot,
                        accepted_ballot: None,
                        commands: commands.clone(),
                        init_deps: None,
                        deps,
                    },
                );
            }
        }
        self.leading.remove(&id);
        self.recovering.remove(&id);
        self.announced.remove(&id);
        self.save(id);
        self.committed_count += 1;
        self.unexecuted += 1;
        self.ready.committed.push(Committed {
            instance: id,
            led,
            commands: commands.len(),
        });
        self.on_committed(now, id);
    }

    /// The commands of `id` were `old` and are now whatever the instance holds: a command
    /// learnt goes into the conflict index; a command replaced by a no-op is proposed again for
    /// the clients waiting here (exactly-once execution absorbs a command that also survives
    /// elsewhere).
    fn commands_changed(&mut self, id: InstanceId, old: &Commands) {
        let Some(inst) = self.instances.get(&id) else {
            return;
        };
        if old.is_empty() && !inst.commands.is_empty() {
            let commands = inst.commands.clone();
            self.index.record(id, &commands);
        } else if !old.is_empty() && inst.commands.is_empty() {
            for cmd in old.iter() {
                if self.clients.contains_key(&(cmd.client, cmd.request)) {
                    self.pending_bytes += cmd.op.size_bytes();
                    self.pending.push_back(cmd.clone());
                }
            }
        }
    }

    /// Answers a Watermark with the Commits the sender lacks, lowest slots first, at most
    /// `watermark_commits_max`.
    fn handle_watermark(&mut self, from: ReplicaId, prefix: Vec<u64>, executed: Vec<u64>) {
        if self.watermark_contradiction(&prefix, &executed) {
            self.refuse(from, Contradiction::WatermarkBeyond);
            return;
        }
        if let Some(known) = self.peer_committed.get_mut(from.index()) {
            for (k, p) in known.iter_mut().zip(&prefix) {
                *k = (*k).max(*p);
            }
        }
        if let Some(known) = self.peer_executed.get_mut(from.index()) {
            for (k, p) in known.iter_mut().zip(&executed) {
                *k = (*k).max(*p);
            }
        }
        let mut budget = self.opts.watermark_commits_max;
        // Slots looked at, sent or not: bounds the work one Watermark can cause.
        let mut scan = 16 * self.opts.watermark_commits_max;
        for (row, start) in prefix.into_iter().enumerate().take(self.opts.n) {
            let row_id = ReplicaId(row as u32);
            let mut slot = start;
            while slot < self.committed_end[row] && budget > 0 && scan > 0 {
                scan -= 1;
                let id = InstanceId::new(row_id, slot);
                if self
                    .instances
                    .get(&id)
                    .is_some_and(|i| i.status.is_decided())
                {
                    self.send_commit(from, id);
                    budget -= 1;
                }
                slot += 1;
            }
        }
    }

    /// Moves the committed prefix and end of `id`'s row past `id` where it can.
    fn advance_prefix(&mut self, id: InstanceId) {
        let row = id.replica.index();
        self.committed_end[row] = self.committed_end[row].max(id.slot + 1);
        let mut p = self.committed_prefix[row];
        while self
            .instances
            .get(&InstanceId::new(id.replica, p))
            .is_some_and(|i| i.status.is_decided())
        {
            p += 1;
        }
        self.committed_prefix[row] = p;
    }

    fn handle_commit_request(&mut self, from: ReplicaId, ids: Vec<InstanceId>) {
        for id in ids {
            if self
                .instances
                .get(&id)
                .is_some_and(|i| i.status.is_decided())
            {
                self.send_commit(from, id);
            }
        }
    }

    fn send_commit(&mut self, to: ReplicaId, id: InstanceId) {
        let inst = &self.instances[&id];
        let msg = Message::Commit {
            instance: id,
            ballot: inst.ballot,
            commands: inst.commands.clone(),
            deps: inst.deps.clone(),
        };
        self.send(vec![to], msg);
    }

    // ---- execution ----------------------------------------------------------------------

    /// `id` became committed: try to execute it and whatever waited for it.
    fn on_committed(&mut self, now: Time, id: InstanceId) {
        self.recheck_waiting(now, id);
        self.advance_prefix(id);
        if let Some(inst) = self.instances.get(&id) {
            self.to_execute.insert(id, &inst.commands);
        }
        let mut roots = vec![id];
        if let Some(w) = self.waiting.remove(&id) {
            roots.extend(w.roots);
        }
        // Instances that waited for this row's committed prefix to pass a slot it now passed.
        let row = id.replica.index();
        let passed = self.committed_prefix[row];
        let still = self.prefix_waiters[row].split_off(&passed);
        for (_, waiters) in std::mem::replace(&mut self.prefix_waiters[row], still) {
            roots.extend(waiters);
        }
        if !self.prefix_waiters[row].is_empty() {
            // Some still wait for this row: its next gap is needed (fetched, then recovered).
            self.need(now, InstanceId::new(id.replica, passed));
        }
        // Instances found blocked during this pass, with what blocks them: a root among them
        // is registered without walking the graph again.
        let mut blocked_now: HashMap<InstanceId, InstanceId> = HashMap::new();
        for root in roots {
            if let Some(missing) = blocked_now.get(&root) {
                self.wait_for(now, *missing, root);
                continue;
            }
            // A root whose own deps cover an uncommitted slot waits, without a walk, until its
            // row's committed prefix passes the covered slot (and the gap is fetched or
            // recovered meanwhile): a replica catching up (restarted, or after a partition)
            // would otherwise walk, or requeue, its whole blocked backlog for every commit.
            let gap = self.instances.get(&root).and_then(|i| {
                i.deps.iter().find_map(|d| {
                    let p = self.committed_prefix[d.replica.index()];
                    (p <= d.slot).then_some((InstanceId::new(d.replica, p), *d))
                })
            });
            if let Some((gap, covered)) = gap {
                self.prefix_waiters[covered.replica.index()]
                    .entry(covered.slot)
                    .or_default()
                    .push(root);
                self.need(now, gap);
                continue;
            }
            if let Some((missing, waiting)) = self.try_execute(root) {
                self.wait_for(now, missing, root);
                for w in waiting {
                    blocked_now.insert(w, missing);
                }
            }
        }
    }

    fn wait_for(&mut self, now: Time, missing: InstanceId, root: InstanceId) {
        let w = self.need(now, missing);
        w.roots.insert(root);
    }

    /// Registers that this replica needs `id` committed: it fetches its Commit after
    /// `fetch_after` and takes it over after `recover_after` (staggered by replica id, so that
    /// replicas needing the same instance do not all start at once).
    fn need(&mut self, now: Time, id: InstanceId) -> &mut Waiting {
        let stagger = self.opts.retry * self.opts.id.0;
        let (fetch_after, recover_after) = (self.opts.fetch_after, self.opts.recover_after);
        self.waiting.entry(id).or_insert_with(|| Waiting {
            roots: BTreeSet::new(),
            next_fetch: now + fetch_after,
            backoff: fetch_after,
            fetches: 0,
            recover_at: now + recover_after + stagger,
            recover_backoff: recover_after,
        })
    }

    /// Executes what can run from `root`. Returns what blocks the rest, if anything.
    fn try_execute(&mut self, root: InstanceId) -> Option<(InstanceId, Vec<InstanceId>)> {
        let mut components = Vec::new();
        let instances = &self.instances;
        let to_execute = &self.to_execute;
        let committed_prefix = &self.committed_prefix;
        let outcome = execute::order(
            root,
            |id| match instances.get(&id) {
                Some(i) if i.status == Status::Executed => Node::Done,
                Some(i) if i.status == Status::Committed => {
                    let mut edges = to_execute.edges(id, &i.commands, &i.deps);
                    edges.extend(execute::gaps(&i.deps, committed_prefix));
                    Node::Ready(edges)
                }
                None if id.slot < self.gc_prefix[id.replica.index()] => Node::Done,
                _ => Node::Missing,
            },
            &mut components,
        );
        for mut component in components {
            if self.opts.sabotage.reverse_component_order {
                component.reverse();
            }
            for id in component {
                self.execute_instance(id);
            }
        }
        match outcome {
            Outcome::Complete => None,
            Outcome::Blocked { missing, waiting } => Some((missing, waiting)),
        }
    }

    fn execute_instance(&mut self, id: InstanceId) {
        let inst = self
            .instances
            .get_mut(&id)
            .expect("executed instances come from the table");
        debug_assert_eq!(inst.status, Status::Committed, "{id} executes once");
        inst.status = Status::Executed;
        let commands = inst.commands.clone();
        self.to_execute.remove(id);
        for cmd in commands.iter() {
            let applied = if self.opts.sabotage.skip_dedup {
                self.kv.apply_without_dedup(cmd)
            } else {
                self.kv.apply(cmd)
            };
            if let Some(tokens) = self.clients.remove(&(cmd.client, cmd.request)) {
                let print = kv::fingerprint(&cmd.op);
                let result = reply_of_applied(applied);
                for (token, theirs) in tokens {
                    // A client that joined this request's waiting list with another command
                    // gets what that command would get now (its retry's answer, or Reused).
                    let result = if theirs == print {
                        result.clone()
                    } else {
                        reply_of_applied(self.kv.peek(cmd.client, cmd.request, theirs))
                    };
                    self.ready.replies.push(Reply { token, result });
                }
            }
        }
        self.unexecuted -= 1;
        self.ready.executed.push(id);
        self.advance_executed(id);
    }

    /// Moves the executed prefix of `id`'s row forward where it can.
    fn advance_executed(&mut self, id: InstanceId) {
        let row = id.replica.index();
        let mut p = self.executed_prefix[row];
        while self
            .instances
            .get(&InstanceId::new(id.replica, p))
            .is_some_and(|i| i.status == Status::Executed)
        {
            p += 1;
        }
        self.executed_prefix[row] = p;
    }

    /// Instances dropped from memory so far, all rows: the runtime checkpoints when this has
    /// grown enough since its last checkpoint.
    pub fn collected(&self) -> u64 {
        self.gc_prefix.iter().sum()
    }

    /// An encoded checkpoint of the current state (see `checkpoint`), and the instance states
    /// the log must keep beside it (every instance still in memory), in `InstanceId` order.
    pub fn checkpoint(&self) -> (Vec<u8>, Vec<(InstanceId, Instance)>) {
        let mut live: Vec<(InstanceId, Instance)> = self
            .instances
            .iter()
            .map(|(id, inst)| (*id, inst.clone()))
            .collect();
        live.sort_unstable_by_key(|(id, _)| *id);
        let executed_above: Vec<InstanceId> = live
            .iter()
            .filter(|(_, i)| i.status == Status::Executed)
            .map(|(id, _)| *id)
            .collect();
        let encoded = crate::core::checkpoint::encode(
            &self.kv,
            &self.index,
            &self.gc_prefix,
            &executed_above,
            self.next_slot,
        );
        (encoded, live)
    }

    /// Whether `id` was dropped from memory (see `gc_prefix`).
    fn forgotten(&self, id: InstanceId) -> bool {
        id.slot < self.gc_prefix[id.replica.index()]
    }

    /// Drops the instances that are executed here and at every peer.
    fn collect_garbage(&mut self) {
        for row in 0..self.opts.n {
            // Executed everywhere, not just committed: recovery's Validate cannot see forgotten
            // instances, and ignoring them is safe only if every replica executed them before
            // anything recovered after them (see `recovery`).
            let mut limit = self.executed_prefix[row].min(self.committed_prefix[row]);
            for (peer, prefixes) in self.peer_executed.iter().enumerate() {
                if peer != self.opts.id.index() {
                    limit = limit.min(prefixes[row]);
                }
            }
            let row_id = ReplicaId(row as u32);
            for slot in self.gc_prefix[row]..limit {
                let id = InstanceId::new(row_id, slot);
                debug_assert!(
                    self.instances
                        .get(&id)
                        .is_none_or(|i| i.status == Status::Executed),
                    "{id} collected before it executed"
                );
                self.instances.remove(&id);
            }
            self.gc_prefix[row] = self.gc_prefix[row].max(limit);
        }
    }

    /// Asks peers for the Commit of dependencies execution has waited on past `fetch_after`:
    /// first the dependency's own leader, then everyone, with exponential backoff.
    fn fetch_missing(&mut self, now: Time) {
        let me = self.opts.id;
        let peers = self.peers();
        let mut asks: BTreeMap<ReplicaId, Vec<InstanceId>> = BTreeMap::new();
        for (id, w) in self.waiting.iter_mut() {
            if now < w.next_fetch || self.leading.contains_key(id) {
                continue;
            }
            if id.replica != me {
                asks.entry(id.replica).or_default().push(*id);
            }
            if w.fetches > 0 || id.replica == me {
                for p in &peers {
                    if *p != id.replica {
                        asks.entry(*p).or_default().push(*id);
                    }
                }
            }
            w.fetches += 1;
            w.backoff = (w.backoff * 2).min(self.opts.retry_max);
            w.next_fetch = now + w.backoff;
        }
        for (to, instances) in asks {
            self.send(vec![to], Message::CommitRequest { instances });
        }
    }

    // ---- recovery (rules and their safety: see `recovery`) -----------------------------------

    /// `e` of EPaxos*: how many replicas the fast path may miss.
    fn e(&self) -> usize {
        self.opts.n - self.fast_quorum
    }

    /// `f`: how many replicas may fail.
    fn f(&self) -> usize {
        self.opts.n - self.slow_quorum
    }

    /// Takes over the needed instances that stayed uncommitted past their recovery time (and
    /// that no recovery of ours is already carrying to a decision in an Accept phase).
    fn recover_stuck(&mut self, now: Time) {
        let cap = self.opts.recover_after * 8;
        let mut due = Vec::new();
        for (id, w) in self.waiting.iter_mut() {
            if now < w.recover_at || self.leading.contains_key(id) {
                continue;
            }
            w.recover_backoff = (w.recover_backoff * 2).min(cap);
            w.recover_at = now + w.recover_backoff;
            due.push(*id);
        }
        for id in due {
            self.start_recovery(now, id);
        }
    }

    /// Every uncommitted instance known here is eventually needed, even if nothing waits for
    /// it: otherwise the pre-accept of a leader that died before anyone depended on it would
    /// stay uncommitted forever (and hold back the committed prefix, so garbage collection).
    fn need_stragglers(&mut self, now: Time) {
        let stragglers: Vec<InstanceId> = self
            .instances
            .iter()
            .filter(|(id, i)| {
                !i.status.is_decided()
                    && !self.leading.contains_key(id)
                    && !self.waiting.contains_key(id)
            })
            .map(|(id, _)| *id)
            .collect();
        for id in stragglers {
            self.need(now, id);
        }
    }

    /// Another replica works on `id`: leave it time before trying ourselves.
    fn postpone_recovery(&mut self, now: Time, id: InstanceId) {
        if let Some(w) = self.waiting.get_mut(&id) {
            w.recover_at = w.recover_at.max(now + w.recover_backoff);
        }
    }

    /// Step 1: promise a ballot above any seen here and ask everyone for their state.
    fn start_recovery(&mut self, now: Time, id: InstanceId) {
        // Below a horizon this replica's own answer is not a vote it may give: peers recover.
        if self.forgotten(id) || self.abstains(id) {
            return;
        }
        let me = self.opts.id;
        let inst = self
            .instances
            .entry(id)
            .or_insert_with(|| Instance::unknown(id));
        if inst.status.is_decided() {
            return;
        }
        let Some(ballot) = next_ballot(inst.ballot, me) else {
            // Only a promise from before ballots at the top round were refused can get here:
            // leave the instance to whoever holds that ballot rather than wrap below it.
            return;
        };
        inst.ballot = ballot;
        let mine = reply_of(inst);
        self.save(id);
        self.leading.remove(&id);
        self.recovering.insert(
            id,
            Recovery {
                ballot,
                started_at: now,
                phase: RecoveryPhase::Recovering {
                    replies: vec![(me, mine)],
                },
            },
        );
        self.ready.recoveries_started += 1;
        self.send(
            self.peers(),
            Message::Recover {
                instance: id,
                ballot,
            },
        );
    }

    fn handle_recover(&mut self, now: Time, from: ReplicaId, id: InstanceId, ballot: Ballot) {
        if self.forgotten(id) || self.abstains(id) {
            return;
        }
        let inst = self
            .instances
            .entry(id)
            .or_insert_with(|| Instance::unknown(id));
        if inst.status.is_decided() {
            self.send_commit(from, id);
            return;
        }
        if ballot < inst.ballot {
            let promised = inst.ballot;
            self.nack(from, id, promised);
            return;
        }
        let raised = ballot > inst.ballot;
        inst.ballot = ballot;
        let reply = reply_of(inst);
        // Saved even when not raised: a Nack may have raised the ballot in memory only.
        self.save(id);
        if raised {
            // The original leader (or an earlier recoverer) stops: from now on it ignores the
            // answers of its lower ballot, so it can no longer commit on the fast path.
            self.leading.remove(&id);
            self.recovering.remove(&id);
            self.postpone_recovery(now, id);
        }
        self.send(
            vec![from],
            Message::RecoverOk {
                instance: id,
                ballot,
                reply,
            },
        );
    }

    fn handle_recover_ok(
        &mut self,
        now: Time,
        from: ReplicaId,
        id: InstanceId,
        ballot: Ballot,
        reply: RecoverReply,
    ) {
        let e = self.e();
        let slow_quorum = self.slow_quorum;
        let Some(rec) = self.recovering.get_mut(&id) else {
            return;
        };
        if rec.ballot != ballot {
            return;
        }
        match &mut rec.phase {
            RecoveryPhase::Recovering { replies } => {
                if replies.iter().any(|(r, _)| *r == from) {
                    return;
                }
                replies.push((from, reply));
                if replies.len() >= slow_quorum {
                    let decision = recovery::decide(id.replica, e, replies);
                    let quorum: Vec<ReplicaId> = replies.iter().map(|(r, _)| *r).collect();
                    self.apply_decision(now, id, decision, quorum);
                }
            }
            RecoveryPhase::Waiting { quorum, .. } if !quorum.contains(&from) => {
                // A late answer from outside the quorum can settle a waiting recovery.
                let decision = if reply.status.is_decided() {
                    Decision::Commit(reply.commands, reply.deps)
                } else if reply.status == Status::Accepted {
                    Decision::Accept(reply.commands, reply.deps)
                } else if from == id.replica {
                    Decision::Nop
                } else {
                    return;
                };
                self.apply_decision(now, id, decision, Vec::new());
            }
            _ => {}
        }
    }

    fn apply_decision(
        &mut self,
        now: Time,
        id: InstanceId,
        decision: Decision,
        quorum: Vec<ReplicaId>,
    ) {
        let decision = match decision {
            Decision::Commit(..) => decision,
            _ if self.opts.sabotage.recovery_always_nop => Decision::Nop,
            Decision::Validate { commands, deps, .. }
                if self.opts.sabotage.recovery_skips_validate =>
            {
                Decision::Accept(commands, deps)
            }
            _ => decision,
        };
        match decision {
            Decision::Commit(commands, deps) => self.recovered_commit(now, id, commands, deps),
            Decision::Accept(commands, deps) => self.recovery_accept(now, id, commands, deps),
            Decision::Nop => self.recovery_accept(now, id, Commands::default(), Vec::new()),
            Decision::Validate {
                commands,
                deps,
                matching,
            } => {
                let me = self.opts.id;
                let Some(rec) = self.recovering.get(&id) else {
                    return;
                };
                let ballot = rec.ballot;
                self.apply_validate(id, &commands, &deps);
                self.save(id);
                let mine = self.validate_conflicts(id, &commands, &deps);
                let others: Vec<ReplicaId> = quorum.iter().copied().filter(|r| *r != me).collect();
                if let Some(rec) = self.recovering.get_mut(&id) {
                    rec.phase = RecoveryPhase::Validating {
                        quorum,
                        commands: commands.clone(),
                        deps: deps.clone(),
                        matching,
                        replies: vec![(me, mine)],
                    };
                }
                self.send(
                    others,
                    Message::Validate {
                        instance: id,
                        ballot,
                        commands,
                        deps,
                    },
                );
                self.check_validated(now, id);
            }
        }
    }

    /// Recovery found the instance committed: commit it here and tell everyone.
    fn recovered_commit(
        &mut self,
        now: Time,
        id: InstanceId,
        commands: Commands,
        deps: Vec<InstanceId>,
    ) {
        let Some(rec) = self.recovering.remove(&id) else {
            return;
        };
        let took = now.saturating_sub(rec.started_at);
        self.commit_here(
            now,
            id,
            rec.ballot,
            commands,
            deps,
            Some((Path::Recovered, took)),
        );
        if let Some(inst) = self.instances.get(&id) {
            if inst.status.is_decided() {
                self.send_commit_to_all(id);
            }
        }
    }

    /// Phase 2 at the recovery ballot with the chosen value (a no-op when `commands` is empty).
    fn recovery_accept(
        &mut self,
        now: Time,
        id: InstanceId,
        commands: Commands,
        deps: Vec<InstanceId>,
    ) {
        let Some(rec) = self.recovering.remove(&id) else {
            return;
        };
        let Some(inst) = self.instances.get_mut(&id) else {
            return;
        };
        if inst.status.is_decided() || inst.ballot != rec.ballot {
            return;
        }
        let old = std::mem::replace(&mut inst.commands, commands);
        self.commands_changed(id, &old);
        self.leading.insert(
            id,
            Leading {
                phase: Phase::Accepting { acks: Vec::new() },
                asked: Vec::new(),
                started_at: rec.started_at,
                sent_at: now,
                retry_after: self.opts.retry,
                recovery: true,
            },
        );
        self.start_accept(now, id, deps);
    }

    /// What a Validate leaves at a replica of the quorum: the command and initial deps the
    /// recoverer proposes, as if its PreAccept had arrived (later recoveries of other
    /// instances then see it in their own Validate).
    fn apply_validate(&mut self, id: InstanceId, commands: &Commands, deps: &[InstanceId]) {
        let Some(inst) = self.instances.get_mut(&id) else {
            return;
        };
        if inst.status >= Status::Accepted {
            return;
        }
        let old = std::mem::replace(&mut inst.commands, commands.clone());
        inst.init_deps = Some(deps.to_vec());
        self.commands_changed(id, &old);
    }

    /// The instances known here that interfere with `commands`, that `deps` do not cover and
    /// that do not depend on `id` (by their committed deps, or by the initial deps their
    /// leader proposed if they are not committed), each with whether it is committed here.
    /// Instances never pre-accepted or validated here (initial deps unknown) are skipped, and
    /// so are forgotten ones, which every replica executed (see `collect_garbage`).
    fn validate_conflicts(
        &self,
        id: InstanceId,
        commands: &Commands,
        deps: &[InstanceId],
    ) -> Vec<(InstanceId, bool)> {
        let keys: HashMap<ConflictKey, bool> = keys_of(commands).into_iter().collect();
        let interferes = |other: &Commands| {
            keys_of(other)
                .into_iter()
                .any(|(k, w)| keys.get(&k).is_some_and(|mine| *mine || w))
        };
        let mut found = Vec::new();
        for (other, inst) in &self.instances {
            if *other == id || covers(deps, *other) || inst.commands.is_empty() {
                continue;
            }
            let (their_deps, committed) = if inst.status.is_decided() {
                (&inst.deps, true)
            } else if let Some(init) = &inst.init_deps {
                (init, false)
            } else {
                continue;
            };
            if !covers(their_deps, id) && interferes(&inst.commands) {
                found.push((*other, committed));
            }
        }
        found.sort_unstable();
        found
    }

    fn handle_validate(
        &mut self,
        from: ReplicaId,
        id: InstanceId,
        ballot: Ballot,
        commands: Commands,
        deps: Vec<InstanceId>,
    ) {
        if self.forgotten(id) || self.abstains(id) {
            return;
        }
        let Some(inst) = self.instances.get(&id) else {
            return;
        };
        if inst.status.is_decided() {
            self.send_commit(from, id);
            return;
        }
        if ballot != inst.ballot {
            if ballot < inst.ballot {
                let promised = inst.ballot;
                self.nack(from, id, promised);
            }
            return;
        }
        self.apply_validate(id, &commands, &deps);
        self.save(id);
        let conflicts = self.validate_conflicts(id, &commands, &deps);
        self.send(
            vec![from],
            Message::ValidateOk {
                instance: id,
                ballot,
                conflicts,
            },
        );
    }

    fn handle_validate_ok(
        &mut self,
        now: Time,
        from: ReplicaId,
        id: InstanceId,
        ballot: Ballot,
        conflicts: Vec<(InstanceId, bool)>,
    ) {
        let Some(rec) = self.recovering.get_mut(&id) else {
            return;
        };
        if rec.ballot != ballot {
            return;
        }
        if let RecoveryPhase::Validating {
            quorum, replies, ..
        } = &mut rec.phase
        {
            if quorum.contains(&from) && !replies.iter().any(|(r, _)| *r == from) {
                replies.push((from, conflicts));
            }
        }
        self.check_validated(now, id);
    }

    /// Step 3, once the whole quorum answered Validate.
    fn check_validated(&mut self, now: Time, id: InstanceId) {
        let e = self.e();
        let Some(rec) = self.recovering.get_mut(&id) else {
            return;
        };
        let RecoveryPhase::Validating {
            quorum,
            commands,
            deps,
            matching,
            replies,
        } = &rec.phase
        else {
            return;
        };
        if replies.len() < quorum.len() {
            return;
        }
        let mut union: BTreeMap<InstanceId, bool> = BTreeMap::new();
        for (_, found) in replies {
            for (other, committed) in found {
                *union.entry(*other).or_default() |= *committed;
            }
        }
        let union: Vec<(InstanceId, bool)> = union.into_iter().collect();
        let (commands, deps, quorum) = (commands.clone(), deps.clone(), quorum.clone());
        match recovery::after_validate(e, &quorum, *matching, &union) {
            AfterValidate::Accept => self.recovery_accept(now, id, commands, deps),
            AfterValidate::Nop => self.recovery_accept(now, id, Commands::default(), Vec::new()),
            AfterValidate::Wait(awaited) => {
                let matching = *matching as u32;
                rec.phase = RecoveryPhase::Waiting {
                    quorum,
                    commands,
                    deps,
                    awaited: awaited.clone(),
                };
                self.send(
                    self.peers(),
                    Message::Waiting {
                        instance: id,
                        matching,
                    },
                );
                self.handle_waiting(now, id, matching);
                for other in awaited {
                    if !self
                        .instances
                        .get(&other)
                        .is_some_and(|i| i.status.is_decided())
                    {
                        self.need(now, other);
                    }
                }
                self.check_waiting(now, id);
            }
        }
    }

    /// A recoverer of `id` waits with `matching` matching pre-accepts.
    fn handle_waiting(&mut self, now: Time, id: InstanceId, matching: u32) {
        const ANNOUNCED_MAX: usize = 1 << 16;
        if self
            .instances
            .get(&id)
            .is_some_and(|i| i.status.is_decided())
            || self.forgotten(id)
            || (self.announced.len() >= ANNOUNCED_MAX && !self.announced.contains_key(&id))
        {
            return;
        }
        let m = self.announced.entry(id).or_default();
        *m = (*m).max(matching);
        self.recheck_waiting(now, id);
    }

    /// Re-evaluates the waiting recoveries that await `changed`.
    fn recheck_waiting(&mut self, now: Time, changed: InstanceId) {
        let ids: Vec<InstanceId> = self
            .recovering
            .iter()
            .filter(|(_, r)| {
                matches!(&r.phase, RecoveryPhase::Waiting { awaited, .. } if awaited.contains(&changed))
            })
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            self.check_waiting(now, id);
        }
    }

    fn check_waiting(&mut self, now: Time, id: InstanceId) {
        let Some(rec) = self.recovering.get(&id) else {
            return;
        };
        let RecoveryPhase::Waiting {
            commands,
            deps,
            awaited,
            ..
        } = &rec.phase
        else {
            return;
        };
        let states: Vec<Awaited> = awaited
            .iter()
            .map(|other| match self.instances.get(other) {
                Some(i) if i.status.is_decided() => {
                    if i.commands.is_empty() || covers(&i.deps, id) {
                        Awaited::Harmless
                    } else {
                        Awaited::Conflicting
                    }
                }
                // Executed everywhere: ordered before anything recovered now.
                None if self.forgotten(*other) => Awaited::Harmless,
                _ => Awaited::Open {
                    waiting_matching: self.announced.get(other).copied().unwrap_or(0),
                },
            })
            .collect();
        let (commands, deps) = (commands.clone(), deps.clone());
        match recovery::after_waiting(self.opts.n, self.f(), self.e(), &states) {
            Some(Decision::Accept(..)) => self.recovery_accept(now, id, commands, deps),
            Some(_) => self.recovery_accept(now, id, Commands::default(), Vec::new()),
            None => {}
        }
    }

    // ---- rejoin (a replica that lost its data directory) ----------------------------------------
    //
    // A replica that comes back without its data may have voted (pre-accepted, accepted,
    // promised) on instances it no longer remembers, and those votes may have counted. Its new
    // incarnation therefore:
    // - announces itself to every peer (`peer_rejoined` there), which from then on refuses the
    //   old incarnation; every vote of the old one that ever counted was counted by some peer
    //   before that moment, for an instance that peer knew, so below the highest slot any peer
    //   knew per row (the `horizons`) lie all the instances the old incarnation may have voted
    //   on, its own row's instances included;
    // - starts from a peer's snapshot (`snapshot`) with its next own slot at its row's horizon;
    // - abstains below the horizons (`abstains`): it learns Commits there but never answers
    //   PreAccept, Accept, Recover or Validate, nor recovers; peers decide those instances
    //   without it, as if it were down;
    // - above the horizons it takes part normally, but until it has learnt a row committed up
    //   to its horizon it makes every dependency set it computes cover that row up to the
    //   horizon (`add_horizon_deps`): an old instance its predecessor saw and it did not may
    //   interfere, and without that cover two interfering instances, one old and one new, could
    //   each commit without the other in its deps (their quorums may meet only at this replica).

    /// Sets the horizons a rejoined replica keeps (durable in its data directory: they apply
    /// after a restart too). Its own row continues at its horizon.
    pub fn set_horizons(&mut self, horizons: Vec<u64>) {
        if horizons.len() != self.opts.n {
            return;
        }
        self.next_slot = self.next_slot.max(horizons[self.opts.id.index()]);
        self.horizons = horizons;
    }

    /// Whether this replica, having rejoined, still abstains somewhere: some row is not known
    /// committed up to its horizon. Until then it counts against the failures the cluster
    /// tolerates, like a replica that is down (below the horizons it does not vote).
    pub fn abstaining(&self) -> bool {
        self.horizons
            .iter()
            .zip(&self.committed_prefix)
            .any(|(h, c)| c < h)
    }

    /// Whether this replica must not vote on `id`: below its row's horizon and not known
    /// committed here (a decided value is a fact anyone may repeat).
    fn abstains(&self, id: InstanceId) -> bool {
        id.slot < self.horizons[id.replica.index()]
            && !self
                .instances
                .get(&id)
                .is_some_and(|i| i.status.is_decided())
    }

    /// Covers every row up to its horizon until this replica learnt it committed that far.
    fn add_horizon_deps(&self, deps: &mut Vec<InstanceId>) {
        let cover: Vec<InstanceId> = self
            .horizons
            .iter()
            .enumerate()
            .filter(|(row, h)| **h > 0 && self.committed_prefix[*row] < **h)
            .map(|(row, h)| InstanceId::new(ReplicaId(row as u32), h - 1))
            .collect();
        if !cover.is_empty() {
            *deps = crate::core::deps::union(deps, &cover);
        }
    }

    /// Peer `peer` joined with a new data directory: forget what its old incarnation reported
    /// (garbage collection waits for the new one's progress) and answer how far each row
    /// reaches here (one past the highest slot known, committed or not, forgotten included; the
    /// next slot for this replica's own row).
    pub fn peer_rejoined(&mut self, peer: ReplicaId) -> Vec<u64> {
        if let Some(p) = self.peer_committed.get_mut(peer.index()) {
            p.iter_mut().for_each(|s| *s = 0);
        }
        if let Some(p) = self.peer_executed.get_mut(peer.index()) {
            p.iter_mut().for_each(|s| *s = 0);
        }
        let mut ends: Vec<u64> = (0..self.opts.n)
            .map(|row| self.committed_end[row].max(self.gc_prefix[row]))
            .collect();
        ends[self.opts.id.index()] = ends[self.opts.id.index()].max(self.next_slot);
        for id in self.instances.keys() {
            let end = &mut ends[id.replica.index()];
            *end = (*end).max(id.slot + 1);
        }
        ends
    }

    /// Per row: the executed prefix here.
    pub fn executed_prefix(&self) -> &[u64] {
        &self.executed_prefix
    }

    /// What a joining peer starts from: an encoded checkpoint of the current state and the
    /// decided instances still in memory. Undecided ones stay out: their votes here are not the
    /// joiner's (it abstains on them anyway).
    pub fn snapshot(&self) -> (Vec<u8>, Vec<(InstanceId, Instance)>) {
        let (encoded, mut live) = self.checkpoint();
        live.retain(|(_, i)| i.status.is_decided());
        (encoded, live)
    }

    fn send_commit_to_all(&mut self, id: InstanceId) {
        for peer in self.peers() {
            self.send_commit(peer, id);
        }
    }

    // ---- helpers ----------------------------------------------------------------------------

    /// Queues the current state of `id` for the durable log.
    fn save(&mut self, id: InstanceId) {
        if let Some(inst) = self.instances.get(&id) {
            self.ready.persist.push((id, inst.clone()));
        }
    }

    fn peers(&self) -> Vec<ReplicaId> {
        (0..self.opts.n as u32)
            .map(ReplicaId)
            .filter(|r| *r != self.opts.id)
            .collect()
    }

    /// Tells `to` that this replica promised `promised` for `id`, above its message's ballot.
    /// Counts a refused peer message (see [`Refused`]).
    fn refuse(&mut self, peer: ReplicaId, kind: Contradiction) {
        self.ready.refused.push(Refused { peer, kind });
    }

    fn nack(&mut self, to: ReplicaId, id: InstanceId, promised: Ballot) {
        self.send(
            vec![to],
            Message::Nack {
                instance: id,
                promised,
            },
        );
    }

    fn send(&mut self, to: Vec<ReplicaId>, msg: Message) {
        let msg = match msg {
            Message::Watermark { .. } if self.opts.sabotage.forge_watermarks => {
                // Far beyond anything proposed, yet below `SLOT_LIMIT` (which `check_input`
                // rejects as impossible before any comparison): a lie only a replica that
                // knows the row can catch.
                let everything = vec![crate::core::ids::SLOT_LIMIT - 1; self.opts.n];
                Message::Watermark {
                    committed_prefix: everything.clone(),
                    executed_prefix: everything,
                }
            }
            msg => msg,
        };
        if !to.is_empty() {
            self.ready.messages.push(Outgoing { to, msg });
        }
    }

    /// Checks the invariants this replica can check alone. For tests and the simulator.
    pub fn check_invariants(&self) -> Result<(), String> {
        let pending_bytes: usize = self.pending.iter().map(|c| c.op.size_bytes()).sum();
        if pending_bytes != self.pending_bytes {
            return Err(format!(
                "pending commands hold {pending_bytes} bytes, counted {}",
                self.pending_bytes
            ));
        }
        let mut unexecuted = 0;
        for (id, inst) in &self.instances {
            if inst.status == Status::Committed {
                unexecuted += 1;
            }
            if let Some(ab) = inst.accepted_ballot {
                if ab > inst.ballot {
                    return Err(format!(
                        "{id}: accepted ballot {ab} above ballot {}",
                        inst.ballot
                    ));
                }
            }
            if inst.deps.contains(id) {
                return Err(format!("{id} depends on itself"));
            }
        }
        if unexecuted != self.unexecuted {
            return Err(format!(
                "unexecuted counter {} but {unexecuted} committed instances wait",
                self.unexecuted
            ));
        }
        let leading: HashSet<_> = self.leading.keys().collect();
        for id in leading {
            if self.instances.get(id).is_none_or(|i| i.status.is_decided()) {
                return Err(format!("leading {id} which is decided or unknown"));
            }
        }
        Ok(())
    }
}

/// What a RecoverOk tells of an instance.
/// The ballot `me` takes an instance over with, above `promised`: the next round. `None` at the
/// top round; never wraps (a wrapped ballot would sit below promises already made durable).
fn next_ballot(promised: Ballot, me: ReplicaId) -> Option<Ballot> {
    Some(Ballot {
        round: promised.round.checked_add(1)?,
        replica: me,
    })
}

/// What a client is told about its command's application.
fn reply_of_applied(applied: Applied) -> Result<OpResult, ReplyError> {
    match applied {
        Applied::Executed(r) | Applied::Duplicate(r) => Ok(r),
        Applied::Stale => Err(ReplyError::Stale),
        Applied::Reused => Err(ReplyError::Reused),
    }
}

fn reply_of(inst: &Instance) -> RecoverReply {
    RecoverReply {
        status: inst.status.min(Status::Committed),
        accepted_ballot: inst.accepted_ballot,
        commands: inst.commands.clone(),
        deps: inst.deps.clone(),
        init_deps: inst.init_deps.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::command::Op;
    use crate::core::ids::{ClientId, RequestId};
    use bytes::Bytes;

    fn cluster(n: usize) -> Vec<Replica> {
        (0..n as u32)
            .map(|i| Replica::new(Options::new(ReplicaId(i), n)))
            .collect()
    }

    /// Options of replica `i` of 3 with memory GC on.
    fn gc_options(i: u32) -> Options {
        let mut o = Options::new(ReplicaId(i), 3);
        o.gc_executed = true;
        o
    }

    fn put(client: u64, key: &'static str) -> Command {
        Command {
            client: ClientId(client),
            request: RequestId(1),
            op: Op::Put {
                key: Bytes::from_static(key.as_bytes()),
                value: Bytes::from_static(b"v"),
            },
        }
    }

    /// Delivers every pending message until quiet, except those `drop` refuses.
    fn settle(rs: &mut [Replica], now: Time, drop: impl Fn(ReplicaId, ReplicaId) -> bool) {
        for _ in 0..1000 {
            let mut sent = Vec::new();
            for r in rs.iter_mut() {
                r.flush(now);
                let from = r.id();
                for out in r.take_ready().messages {
                    for to in out.to {
                        sent.push((from, to, out.msg.clone()));
                    }
                }
            }
            if sent.is_empty() {
                return;
            }
            for (from, to, msg) in sent {
                if !drop(from, to) {
                    rs[to.index()].handle(now, from, msg);
                }
            }
        }
        panic!("messages kept flowing");
    }

    #[test]
    fn a_replica_that_missed_an_instance_learns_it_from_a_watermark() {
        let mut rs = cluster(3);
        rs[0].propose(1, put(1, "a")).expect("room");
        // r2 hears nothing: r0 and r1 form the fast quorum and commit without it.
        settle(&mut rs, Duration::ZERO, |_, to| to == ReplicaId(2));
        assert_eq!(rs[0].kv().executed(), 1);
        assert_eq!(rs[2].kv().executed(), 0);
        // The next watermark round (at each replica's first tick) carries it over.
        let t = Duration::from_millis(10);
        for r in rs.iter_mut() {
            r.tick(t);
        }
        settle(&mut rs, t, |_, _| false);
        assert_eq!(rs[2].kv().executed(), 1, "r2 caught up");
        assert_eq!(rs[2].kv().digest(), rs[0].kv().digest());
        assert_eq!(rs[2].committed_prefix, vec![1, 0, 0]);
    }

    #[test]
    fn executed_instances_committed_everywhere_are_dropped_and_stay_executed() {
        let mut rs: Vec<Replica> = (0..3u32).map(|i| Replica::new(gc_options(i))).collect();
        rs[0].propose(1, put(1, "a")).expect("room");
        settle(&mut rs, Duration::ZERO, |_, _| false);
        let first = InstanceId::new(ReplicaId(0), 0);
        let commit = Message::Commit {
            instance: first,
            ballot: Ballot::initial(ReplicaId(0)),
            commands: rs[0].instance(first).expect("known").commands.clone(),
            deps: vec![],
        };
        // Two watermark rounds: everyone learns that everyone committed 0.0.
        for round in 1..=2u64 {
            let t = Duration::from_secs(round);
            for r in rs.iter_mut() {
                r.tick(t);
            }
            settle(&mut rs, t, |_, _| false);
        }
        for r in rs.iter_mut() {
            r.tick(Duration::from_secs(3));
            let _ = r.take_ready();
            assert!(r.instance(first).is_none(), "{} dropped 0.0", r.id());
        }
        // A late duplicate Commit does not execute it again.
        let t = Duration::from_secs(3);
        rs[1].handle(t, ReplicaId(0), commit);
        assert_eq!(rs[1].kv().executed(), 1);
        // A new write on the same key depends on the dropped instance and still executes.
        rs[2].propose(2, put(2, "a")).expect("room");
        settle(&mut rs, t, |_, _| false);
        let second = InstanceId::new(ReplicaId(2), 0);
        assert_eq!(rs[2].instance(second).expect("kept").deps, vec![first]);
        for r in &rs {
            assert_eq!(r.kv().executed(), 2, "{} executed both", r.id());
            r.check_invariants().expect("invariants");
        }
    }

    #[test]
    fn restore_from_a_checkpoint_keeps_state_and_skips_covered_instances() {
        let mut rs: Vec<Replica> = (0..3u32).map(|i| Replica::new(gc_options(i))).collect();
        for k in 0..6u64 {
            rs[(k % 3) as usize]
                .propose(k, put(k + 1, ["a", "b"][k as usize % 2]))
                .expect("room");
            settle(&mut rs, Duration::ZERO, |_, _| false);
        }
        for round in 1..=3u64 {
            let t = Duration::from_secs(round);
            for r in rs.iter_mut() {
                r.tick(t);
            }
            settle(&mut rs, t, |_, _| false);
        }
        assert!(rs[0].collected() > 0, "some instances were dropped");
        let (encoded, live) = rs[0].checkpoint();
        let cp = Checkpoint::decode(&encoded, 3).expect("decodes");
        let digest = rs[0].kv().digest();
        let mut back = Replica::restore_from(gc_options(0), Duration::from_secs(4), Some(cp), live);
        let _ = back.take_ready();
        assert_eq!(back.kv().digest(), digest);
        assert_eq!(back.kv().executed(), 6, "nothing executed twice");
        assert_eq!(back.next_slot, rs[0].next_slot);
        back.check_invariants().expect("invariants");
        rs[0] = back;
        rs[0].propose(9, put(9, "a")).expect("room");
        settle(&mut rs, Duration::from_secs(4), |_, _| false);
        for r in &rs {
            assert_eq!(r.kv().executed(), 7, "{} executed the new write", r.id());
        }
        assert_eq!(rs[0].kv().digest(), rs[1].kv().digest());
    }

    /// A crash in the middle of a checkpoint leaves the new checkpoint beside the old, uncut
    /// log (the log is replaced second). Replaying the old log on top of the checkpoint must
    /// skip what the checkpoint covers and execute nothing twice.
    #[test]
    fn crash_between_checkpoint_and_log_cut_restores_the_same_state() {
        let mut rs: Vec<Replica> = (0..3u32).map(|i| Replica::new(gc_options(i))).collect();
        let mut disk: Vec<(InstanceId, Instance)> = Vec::new();
        for k in 0..8u64 {
            rs[(k % 3) as usize]
                .propose(k, put(k + 1, ["a", "b", "c"][k as usize % 3]))
                .expect("room");
            // Collect replica 0's log as the runtime would write it.
            for _ in 0..100 {
                let mut sent = Vec::new();
                for r in rs.iter_mut() {
                    r.flush(Duration::ZERO);
                    let from = r.id();
                    let ready = r.take_ready();
                    if from == ReplicaId(0) {
                        disk.extend(ready.persist);
                    }
                    for out in ready.messages {
                        for to in out.to {
                            sent.push((from, to, out.msg.clone()));
                        }
                    }
                }
                if sent.is_empty() {
                    break;
                }
                for (from, to, msg) in sent {
                    rs[to.index()].handle(Duration::ZERO, from, msg);
                }
            }
        }
        for round in 1..=3u64 {
            let t = Duration::from_secs(round);
            for r in rs.iter_mut() {
                r.tick(t);
            }
            settle(&mut rs, t, |_, _| false);
        }
        assert!(rs[0].collected() > 0);
        let (encoded, _live) = rs[0].checkpoint();
        let cp = Checkpoint::decode(&encoded, 3).expect("decodes");
        let back = Replica::restore_from(gc_options(0), Duration::from_secs(5), Some(cp), disk);
        assert_eq!(back.kv().digest(), rs[0].kv().digest());
        assert_eq!(back.kv().executed(), rs[0].kv().executed());
        back.check_invariants().expect("invariants");
    }

    #[test]
    fn a_rejoined_replica_abstains_below_its_horizons_and_covers_them_in_deps() {
        let mut r = Replica::new(Options::new(ReplicaId(2), 3));
        r.set_horizons(vec![5, 0, 3]);
        let now = Duration::ZERO;
        let (r0, b0) = (ReplicaId(0), Ballot::initial(ReplicaId(0)));
        let commands: Commands = Arc::new(vec![put(1, "k")]);
        // Below the horizon: no vote of any kind, nothing kept.
        for msg in [
            Message::PreAccept {
                instance: InstanceId::new(r0, 4),
                ballot: b0,
                commands: commands.clone(),
                deps: vec![],
            },
            Message::Accept {
                instance: InstanceId::new(r0, 3),
                ballot: b0,
                commands: commands.clone(),
                deps: vec![],
            },
            Message::Recover {
                instance: InstanceId::new(r0, 2),
                ballot: Ballot {
                    round: 1,
                    replica: r0,
                },
            },
        ] {
            r.handle(now, r0, msg);
        }
        let ready = r.take_ready();
        assert!(ready.messages.is_empty(), "{:?}", ready.messages);
        assert!(ready.persist.is_empty());
        // A Commit below the horizon is a fact: learnt.
        r.handle(
            now,
            r0,
            Message::Commit {
                instance: InstanceId::new(r0, 0),
                ballot: b0,
                commands: commands.clone(),
                deps: vec![],
            },
        );
        assert!(r.instance(InstanceId::new(r0, 0)).is_some());
        let _ = r.take_ready();
        // At the horizon it votes, with deps covering every row up to its horizon (the old
        // instances it never saw may interfere).
        r.handle(
            now,
            r0,
            Message::PreAccept {
                instance: InstanceId::new(r0, 5),
                ballot: b0,
                commands: Arc::new(vec![put(2, "other")]),
                deps: vec![],
            },
        );
        let ready = r.take_ready();
        match &ready.messages[..] {
            [Outgoing {
                msg: Message::PreAcceptOk { deps, .. },
                ..
            }] => assert_eq!(
                deps,
                &vec![InstanceId::new(r0, 4), InstanceId::new(ReplicaId(2), 2)]
            ),
            other => panic!("expected one PreAcceptOk, got {other:?}"),
        }
        // Its own row continues at its horizon.
        r.propose(0, put(3, "mine")).expect("room");
        r.flush(now);
        let ready = r.take_ready();
        assert!(ready
            .persist
            .iter()
            .any(|(id, _)| *id == InstanceId::new(ReplicaId(2), 3)));
    }

    #[test]
    fn a_peer_that_rejoins_learns_how_far_each_row_reaches() {
        let mut rs = cluster(3);
        rs[0].propose(0, put(1, "a")).expect("room");
        rs[0].flush(Duration::ZERO);
        rs[1].propose(0, put(2, "b")).expect("room");
        rs[1].flush(Duration::ZERO);
        settle(&mut rs, Duration::ZERO, |_, _| false);
        // Replica 0 also knows an uncommitted instance of row 1 nobody else has.
        rs[0].handle(
            Duration::ZERO,
            ReplicaId(1),
            Message::PreAccept {
                instance: InstanceId::new(ReplicaId(1), 7),
                ballot: Ballot::initial(ReplicaId(1)),
                commands: Arc::new(vec![put(3, "c")]),
                deps: vec![],
            },
        );
        assert_eq!(rs[0].peer_rejoined(ReplicaId(2)), vec![1, 8, 0]);
        assert!(rs[0].peer_executed[2].iter().all(|s| *s == 0));
    }

    #[test]
    fn a_replica_far_behind_pulls_commits_between_watermarks() {
        let mut rs: Vec<Replica> = (0..3)
            .map(|i| {
                let mut o = Options::new(ReplicaId(i), 3);
                o.watermark_commits_max = 4;
                Replica::new(o)
            })
            .collect();
        let zero = Duration::ZERO;
        for k in 0..20 {
            rs[0].propose(k, put(k + 1, "k")).expect("room");
            rs[0].flush(zero);
            settle(&mut rs, zero, |_, to| to == ReplicaId(2));
        }
        assert_eq!(rs[2].committed_count(), 0, "replica 2 missed everything");
        rs[0].tick(zero);
        let watermark = rs[0]
            .take_ready()
            .messages
            .into_iter()
            .find(|o| matches!(o.msg, Message::Watermark { .. }))
            .expect("a periodic watermark");
        rs[2].handle(zero, ReplicaId(0), watermark.msg);
        rs[2].tick(zero); // its own periodic Watermark
        let _ = rs[2].take_ready();
        // Well before the next periodic Watermark, it pulls from the peer that is ahead.
        rs[2].tick(Duration::from_millis(10));
        let pulls: Vec<Outgoing> = rs[2]
            .take_ready()
            .messages
            .into_iter()
            .filter(|o| matches!(o.msg, Message::Watermark { .. }))
            .collect();
        assert_eq!(pulls.len(), 1, "{pulls:?}");
        assert_eq!(pulls[0].to, vec![ReplicaId(0)]);
        // Not again before `catch_up_every`.
        rs[2].tick(Duration::from_millis(15));
        assert!(!rs[2]
            .take_ready()
            .messages
            .iter()
            .any(|o| matches!(o.msg, Message::Watermark { .. })));
    }

    #[test]
    fn thrifty_leader_skips_a_suspected_peer() {
        let mut o = Options::new(ReplicaId(0), 3);
        o.thrifty = true;
        let mut r0 = Replica::new(o);
        // Before anything is suspected, thrifty asks the next id: r1.
        r0.propose(1, put(1, "a")).expect("room");
        r0.flush(Duration::ZERO);
        let first: Vec<_> = r0.take_ready().messages;
        assert_eq!(first[0].to, vec![ReplicaId(1)]);
        // r2 keeps talking (its Watermarks are the heartbeat); r1 goes silent.
        let t = Duration::from_secs(5);
        r0.handle(
            t,
            ReplicaId(2),
            Message::Watermark {
                committed_prefix: vec![0, 0, 0],
                executed_prefix: vec![0, 0, 0],
            },
        );
        assert!(r0.is_suspected(ReplicaId(1), t));
        assert!(!r0.is_suspected(ReplicaId(2), t));
        r0.propose(2, put(2, "b")).expect("room");
        r0.flush(t);
        let ready = r0.take_ready();
        let pre_accept = ready
            .messages
            .iter()
            .find(|m| matches!(m.msg, Message::PreAccept { .. }))
            .expect("a PreAccept");
        assert_eq!(pre_accept.to, vec![ReplicaId(2)], "the live peer is asked");
    }

    #[test]
    fn restore_rebuilds_state_and_resumes_led_instances() {
        let mut rs = cluster(3);
        rs[0].propose(1, put(1, "a")).expect("room");
        settle(&mut rs, Duration::ZERO, |_, _| false);
        // r1 leads an instance that reaches nobody before it "crashes".
        rs[1].propose(2, put(2, "b")).expect("room");
        rs[1].flush(Duration::ZERO);
        let log: Vec<_> = rs[1].take_ready().persist;
        let mut earlier: Vec<(InstanceId, Instance)> = rs[1]
            .instances()
            .filter(|(id, _)| id.replica == ReplicaId(0))
            .map(|(id, i)| (*id, i.clone()))
            .collect();
        earlier.extend(log);
        rs[1] = Replica::restore(Options::new(ReplicaId(1), 3), Duration::ZERO, earlier);
        assert_eq!(rs[1].kv().executed(), 1, "the committed instance ran again");
        assert_eq!(
            rs[1].inflight(),
            1,
            "the uncommitted own instance is led again"
        );
        settle(&mut rs, Duration::ZERO, |_, _| false);
        for r in &rs {
            assert_eq!(r.kv().executed(), 2, "{} executed both", r.id());
        }
        assert_eq!(rs[1].next_slot, 1, "slots are not reused");
    }

    /// A Recover at the top ballot round is refused and counted; a takeover never computes a
    /// ballot that wrapped below a promise (it once lowered (4294967295, 2) to (0, 1)).
    #[test]
    fn ballots_never_wrap_at_the_top_round() {
        let mut rs = cluster(3);
        let id = InstanceId::new(ReplicaId(0), 0);
        rs[0].propose(1, put(1, "a")).expect("room");
        // The PreAccepts arrive, no answer does: 0.0 stays pre-accepted at r1.
        settle(&mut rs, Duration::ZERO, |_, to| to == ReplicaId(0));
        let before = rs[1].instance(id).expect("pre-accepted").ballot;
        let top = Ballot {
            round: u32::MAX,
            replica: ReplicaId(2),
        };
        rs[1].handle(
            Duration::ZERO,
            ReplicaId(2),
            Message::Recover {
                instance: id,
                ballot: top,
            },
        );
        let ready = rs[1].take_ready();
        assert_eq!(
            ready.refused,
            vec![Refused {
                peer: ReplicaId(2),
                kind: Contradiction::BallotOverflow
            }]
        );
        assert!(ready.messages.is_empty(), "no RecoverOk at the top ballot");
        assert!(ready.persist.is_empty(), "no promise made durable");
        assert_eq!(rs[1].instance(id).expect("known").ballot, before);
        // r1 takes the instance over itself later: one round above what it promised.
        let later = Duration::from_secs(30);
        for t in 1..=30 {
            rs[1].tick(Duration::from_secs(t));
        }
        let ballot = rs[1].instance(id).expect("known").ballot;
        assert!(ballot > before, "{ballot} above {before}");
        assert_eq!(ballot.replica, ReplicaId(1));
        drop(rs[1].take_ready());

        // A promise at the top round already on disk (written before such ballots were
        // refused): no takeover wraps below it, the instance is left to its holder.
        let (_, mut inst) = rs[1]
            .instances()
            .find(|(i, _)| **i == id)
            .map(|(i, x)| (*i, x.clone()))
            .expect("known");
        inst.ballot = top;
        let mut r = Replica::restore(Options::new(ReplicaId(1), 3), later, vec![(id, inst)]);
        for t in 31..=90 {
            r.tick(Duration::from_secs(t));
        }
        assert_eq!(r.instance(id).expect("kept").ballot, top, "never lowered");
        let ready = r.take_ready();
        assert!(
            !ready
                .messages
                .iter()
                .any(|o| matches!(o.msg, Message::Recover { .. })),
            "no Recover at a wrapped ballot"
        );
        assert!(ready.persist.iter().all(|(_, i)| i.ballot >= top));
    }

    /// A different command under a request id already used (executed, or waiting here) is
    /// answered `Reused`, never with the other command's result, and changes nothing.
    #[test]
    fn a_reused_request_id_is_answered_reused_and_not_applied() {
        /// Delivers every message until quiet; the replies each replica gave, by token.
        fn run(rs: &mut [Replica]) -> Vec<Vec<(Token, Result<OpResult, ReplyError>)>> {
            let mut replies = vec![Vec::new(); rs.len()];
            for _ in 0..100 {
                let mut sent = Vec::new();
                for r in rs.iter_mut() {
                    r.flush(Duration::ZERO);
                    let from = r.id();
                    let ready = r.take_ready();
                    replies[from.index()]
                        .extend(ready.replies.into_iter().map(|x| (x.token, x.result)));
                    for out in ready.messages {
                        for to in out.to {
                            sent.push((from, to, out.msg.clone()));
                        }
                    }
                }
                if sent.is_empty() {
                    break;
                }
                for (from, to, msg) in sent {
                    rs[to.index()].handle(Duration::ZERO, from, msg);
                }
            }
            for r in replies.iter_mut() {
                r.sort_by_key(|(t, _)| *t);
            }
            replies
        }
        let mut rs = cluster(3);
        let get = Command {
            client: ClientId(5),
            request: RequestId(1),
            op: Op::Get {
                key: Bytes::from_static(b"k"),
            },
        };
        let put = Command {
            op: Op::Put {
                key: Bytes::from_static(b"k"),
                value: Bytes::from_static(b"v"),
            },
            ..get.clone()
        };
        // Both proposed at r0 before anything runs: the PUT joins the GET's waiting list.
        rs[0].propose(1, get.clone()).expect("room");
        rs[0].propose(2, put.clone()).expect("room");
        assert_eq!(
            run(&mut rs)[0],
            vec![(1, Ok(OpResult::default())), (2, Err(ReplyError::Reused))]
        );
        // Proposed on its own later, at another replica: executed as Reused, nothing applied.
        rs[1].propose(3, put.clone()).expect("room");
        assert_eq!(run(&mut rs)[1], vec![(3, Err(ReplyError::Reused))]);
        for r in &rs {
            assert_eq!(r.kv().get(b"k"), None, "{} left the data alone", r.id());
            assert_eq!(r.kv().executed(), 1, "{}", r.id());
        }
        // The real retry is still answered.
        rs[2].propose(4, get).expect("room");
        assert_eq!(run(&mut rs)[2], vec![(4, Ok(OpResult::default()))]);
    }

    /// Commits that no correct peer can send are refused, counted and never applied: another
    /// value for an instance committed here (a forged Commit once changed a value everywhere),
    /// other commands than the instance holds, a slot of this replica's row it never proposed.
    #[test]
    fn commits_that_contradict_what_a_replica_knows_are_refused() {
        let mut rs = cluster(3);
        rs[0].propose(1, put(1, "a")).expect("room");
        settle(&mut rs, Duration::ZERO, |_, _| false);
        let id = InstanceId::new(ReplicaId(0), 0);
        let committed = rs[1].instance(id).expect("committed").clone();
        assert!(committed.status.is_decided());
        let other_cmds: Commands = Arc::new(vec![Command {
            op: Op::Put {
                key: Bytes::from_static(b"a"),
                value: Bytes::from_static(b"forged"),
            },
            ..put(1, "a")
        }]);
        let digest = rs[1].kv().digest();
        let commit = |instance, commands: &Commands, deps: Vec<InstanceId>| Message::Commit {
            instance,
            ballot: Ballot::initial(instance.replica),
            commands: commands.clone(),
            deps,
        };
        let cases = [
            (
                commit(
                    id,
                    &committed.commands,
                    vec![InstanceId::new(ReplicaId(2), 7)],
                ),
                Contradiction::CommitDiffers,
            ),
            (
                commit(id, &other_cmds, committed.deps.clone()),
                Contradiction::CommitDiffers,
            ),
            (
                commit(id, &Commands::default(), committed.deps.clone()),
                Contradiction::CommitDiffers,
            ),
            (
                commit(InstanceId::new(ReplicaId(1), 0), &other_cmds, vec![]),
                Contradiction::CommitUnproposed,
            ),
        ];
        for (msg, kind) in cases {
            rs[1].handle(Duration::ZERO, ReplicaId(2), msg.clone());
            let ready = rs[1].take_ready();
            // An own-row slot never created is rejected as impossible before it is compared.
            if ready.rejected.is_empty() {
                assert_eq!(
                    ready.refused,
                    vec![Refused {
                        peer: ReplicaId(2),
                        kind
                    }],
                    "{msg:?}"
                );
            } else {
                assert!(ready.refused.is_empty(), "{msg:?}");
            }
            assert!(
                ready.persist.is_empty() && ready.committed.is_empty(),
                "{msg:?}"
            );
        }
        assert_eq!(
            rs[1].instance(id).expect("kept"),
            &committed,
            "value unchanged"
        );
        assert!(rs[1].instance(InstanceId::new(ReplicaId(1), 0)).is_none());
        assert_eq!(rs[1].kv().digest(), digest, "nothing applied");
        // The same Commit again is no contradiction.
        rs[1].handle(
            Duration::ZERO,
            ReplicaId(2),
            commit(id, &committed.commands, committed.deps.clone()),
        );
        assert!(rs[1].take_ready().refused.is_empty());

        // Not committed here yet: other commands are refused; a no-op (what recovery may
        // decide) and the instance's own commands with any deps are not.
        let mut rs = cluster(3);
        rs[0].propose(1, put(1, "b")).expect("room");
        settle(&mut rs, Duration::ZERO, |_, to| to == ReplicaId(0));
        let id = InstanceId::new(ReplicaId(0), 0);
        let held = rs[1].instance(id).expect("pre-accepted").clone();
        assert!(!held.status.is_decided());
        rs[1].handle(
            Duration::ZERO,
            ReplicaId(2),
            commit(id, &other_cmds, vec![]),
        );
        assert_eq!(
            rs[1].take_ready().refused,
            vec![Refused {
                peer: ReplicaId(2),
                kind: Contradiction::CommitDiffers
            }]
        );
        assert_eq!(rs[1].instance(id).expect("kept"), &held);
        rs[1].handle(
            Duration::ZERO,
            ReplicaId(2),
            commit(id, &Commands::default(), vec![]),
        );
        let ready = rs[1].take_ready();
        assert!(ready.refused.is_empty());
        assert_eq!(ready.committed.len(), 1, "a recovered no-op commits");
    }

    /// A Watermark claiming more than its sender can have is refused and counted, and peers
    /// then keep what the sender still needs (a forged "replica 2 executed everything" once let
    /// survivors drop it).
    #[test]
    fn a_watermark_beyond_what_its_sender_can_have_is_refused() {
        let mut rs: Vec<Replica> = (0..3).map(|i| Replica::new(gc_options(i))).collect();
        rs[0].propose(1, put(1, "a")).expect("room");
        // r2 hears nothing: it still needs 0.0.
        settle(&mut rs, Duration::ZERO, |_, to| to == ReplicaId(2));
        let id = InstanceId::new(ReplicaId(0), 0);
        let forged = [
            // Row 0 executed beyond where it is committed.
            (vec![0, 0, 0], vec![1, 0, 0]),
            // "Everything", including r0's own row beyond what r0 ever proposed.
            (vec![u64::MAX; 3], vec![u64::MAX; 3]),
            (vec![5, 0, 0], vec![5, 0, 0]),
        ];
        for (committed_prefix, executed_prefix) in forged {
            let msg = Message::Watermark {
                committed_prefix,
                executed_prefix,
            };
            rs[0].handle(Duration::ZERO, ReplicaId(2), msg.clone());
            let ready = rs[0].take_ready();
            // Slots beyond any row are rejected as impossible before they are compared.
            if ready.rejected.is_empty() {
                assert_eq!(
                    ready.refused,
                    vec![Refused {
                        peer: ReplicaId(2),
                        kind: Contradiction::WatermarkBeyond
                    }],
                    "{msg:?}"
                );
            }
            assert!(ready.messages.is_empty(), "not answered: {msg:?}");
        }
        // r1 reports honestly; r0 may not drop 0.0, which r2 has not executed.
        rs[0].handle(
            Duration::ZERO,
            ReplicaId(1),
            Message::Watermark {
                committed_prefix: vec![1, 0, 0],
                executed_prefix: vec![1, 0, 0],
            },
        );
        assert!(rs[0].take_ready().refused.is_empty(), "honest");
        rs[0].tick(Duration::from_millis(1));
        assert!(rs[0].instance(id).is_some(), "kept for r2");
        assert_eq!(rs[0].collected(), 0);
        // r2 still gets it.
        for r in rs.iter_mut() {
            r.tick(Duration::from_millis(2));
        }
        settle(&mut rs, Duration::from_millis(2), |_, _| false);
        assert_eq!(rs[2].kv().executed(), 1, "r2 caught up");
    }
}
