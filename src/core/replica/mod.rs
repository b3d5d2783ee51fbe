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
//! carries out: send the messages that may leave at once, make the records durable, tell the
//! core ([`Replica::persisted`]), send the rest, answer the clients.
//!
//! Recovery of instances whose leader died (EPaxos* explicit prepare) lives in `recovery`
//! (its rules) and in `recovering` (its bookkeeping).
//!
//! The files split the replica by role and phase: `leader` (PreAccept/Accept/Commit of the
//! instances it leads), `acceptor` (answering them), `commit` (the one commit path),
//! `execution` and `collect` (execution, watermarks, garbage collection, checkpoints),
//! `reconfigure` (membership changes), `recovering` (taking over stuck instances), `rejoin`
//! (horizons after a lost disk), `seal` (an old epoch's seal and boundary after a membership
//! change), `input` (what peer input is impossible), `send` (message builders); the stateful
//! parts are nouns:
//! `waiting` (what execution waits for), `recoveries` (recoveries in progress), and the
//! inputs and outputs: `options`, `ready`.

mod acceptor;
mod collect;
mod commit;
mod execution;
mod input;
mod invariants;
mod leader;
mod options;
mod ready;
mod reconfigure;
mod recoveries;
mod recovering;
mod rejoin;
mod seal;
mod send;
#[cfg(test)]
mod tests;
mod waiting;

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::Duration;

use crate::core::checkpoint::Checkpoint;
use crate::core::command::{Command, Op, OpResult};
use crate::core::deps::ConflictIndex;
use crate::core::epoch::{Configuration, Epoch};
use crate::core::execute;
use crate::core::ids::{Ballot, ClientId, InstanceId, ReplicaId, RequestId};
use crate::core::instance::{Instance, Leading, Phase, Status};
use crate::core::kv::{self, KvStore};
use crate::core::limits;
use crate::core::message::Message;
use crate::core::per_row::PerRow;

pub use options::{Options, OptionsError, Sabotage};
pub use ready::{
    Committed, Contradiction, Outgoing, Overloaded, Path, Ready, Refused, Reject, Rejected, Reply,
    ReplyError,
};
pub use reconfigure::{epoch_of_result, Decided, ReconfigureRefusal};
use recoveries::{EpochUnknown, Recovery};
pub use seal::Seal;
use waiting::Waiting;

/// Time as a value: the runtime's monotonic clock since its start; the simulator's virtual one.
pub type Time = Duration;

/// Opaque to the core: the runtime's name for a waiting client.
pub type Token = u64;

/// One replica's protocol state.
pub struct Replica {
    opts: Options,
    /// The configuration of each epoch this replica knows, oldest first (epoch `k` at index
    /// `k`; today only epoch 0). Every instance's quorums and "is the sender a member?" come
    /// from its own epoch's entry, never from the current one (see `epoch`).
    configurations: Vec<Configuration>,
    /// Every id that is or was a member (ids are never reused: an Add of one is refused).
    ever: std::collections::BTreeSet<ReplicaId>,
    /// The addresses of the members changes added, by id (opaque; for the shell).
    addresses: BTreeMap<ReplicaId, crate::core::epoch::Member>,
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
    prefix_waiters: PerRow<BTreeMap<u64, Vec<InstanceId>>>,
    committed_count: u64,
    unexecuted: u64,
    /// The committed instances not executed yet, by key: where execution finds edges.
    to_execute: execute::Unexecuted,
    /// Per row: the first slot not known to be committed here.
    committed_prefix: PerRow<u64>,
    /// Per row: one past the highest slot committed here.
    committed_end: PerRow<u64>,
    /// Per row: the first slot not executed here.
    executed_prefix: PerRow<u64>,
    /// Per peer, per row: the committed prefix it last reported.
    peer_committed: PerRow<PerRow<u64>>,
    /// Per peer, per row: the executed prefix it last reported.
    peer_executed: PerRow<PerRow<u64>>,
    /// Recoveries this replica runs.
    recovering: BTreeMap<InstanceId, Recovery>,
    /// Instances this replica recovered without knowing their epoch (known only as a
    /// dependency): the epochs asked, and the one an answer revealed (see `recovering`).
    /// Dropped once the instance leaves the table.
    unknown_epochs: BTreeMap<InstanceId, EpochUnknown>,
    /// Per uncommitted instance: the highest matching count a recoverer of it announced in a
    /// Waiting message (breaks waiting cycles, see `recovery`). Dropped at commit.
    announced: HashMap<InstanceId, u32>,
    /// Per row: slots below this were dropped from memory (all executed here, all committed
    /// everywhere). A dependency on one of them counts as executed.
    gc_prefix: PerRow<u64>,
    /// Per row: the bytes the retention holds (see `collect`).
    retained: PerRow<collect::Retained>,
    /// Per row: how far the row reached anywhere when this replica joined with a new data
    /// directory (all zeros for a replica that never lost its data). Below it, an earlier
    /// incarnation may have voted and forgotten: see `rejoin`.
    horizons: PerRow<u64>,
    /// The seals of epochs this replica left and the boundary it learns (see `seal`).
    seals: seal::Seals,
    /// A peer that collected instances this replica has not executed (see `collect`): this
    /// replica takes part in nothing more until it installed a snapshot (from that peer).
    left_behind: Option<ReplicaId>,
    next_watermark: Time,
    /// When this replica, if it is behind a peer, may next pull Commits from it.
    next_catch_up: Time,
    /// Per peer: when a message from it last arrived (starts at 0, the replica's start).
    last_heard: PerRow<Time>,
    /// The wall clock (Unix milliseconds) the shell last reported; 0: none yet. Stamped on the
    /// commands this replica takes into instances; decides which expiries to propose.
    wall_ms: u64,
    /// Sessions whose expiry this replica proposed and has not seen executed, with when:
    /// not proposed again meanwhile (one whose instance became a no-op is, after a TTL).
    expiring: BTreeMap<ClientId, Time>,
    /// What restoring from the log refused as expired while it executed again (for checks).
    replayed_refusals: Vec<(InstanceId, ClientId, RequestId)>,
    /// Own row: every slot below this has its record durable, or was skipped at a restart
    /// (see [`Replica::skip_unsynced_slots`]). New instances start only below this plus
    /// `OWN_SLOTS_UNSYNCED_MAX`: that bounds what a crash can lose of slots peers saw.
    durable_slot_end: u64,
    /// `next_slot` when the runtime last took the outputs: their records cover every slot
    /// below it, so once it says they are durable ([`Replica::persisted`]) so are those slots.
    taken_slot_end: u64,
    /// Messages that may leave before this `Ready`'s records are durable (see `Ready::early`),
    /// put at the front of `ready.messages` when it is taken.
    early: Vec<Outgoing>,
    ready: Ready,
}

impl Replica {
    /// A fresh replica. Panics on invalid options: validate them first.
    pub fn new(opts: Options) -> Replica {
        opts.validate()
            .expect("options are validated by the caller");
        // An added member (an id beyond epoch 0's) has its own row from the start.
        let rows = opts.n.max(opts.id.index() + 1);
        let mut r = Replica {
            configurations: vec![Configuration::initial(opts.n)],
            ever: Configuration::initial(opts.n)
                .members()
                .iter()
                .copied()
                .collect(),
            addresses: BTreeMap::new(),
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
            prefix_waiters: PerRow::new(opts.n, BTreeMap::new()),
            committed_count: 0,
            unexecuted: 0,
            to_execute: execute::Unexecuted::new(opts.n),
            committed_prefix: PerRow::new(opts.n, 0),
            committed_end: PerRow::new(opts.n, 0),
            executed_prefix: PerRow::new(opts.n, 0),
            peer_committed: PerRow::new(opts.n, PerRow::new(opts.n, 0)),
            peer_executed: PerRow::new(opts.n, PerRow::new(opts.n, 0)),
            recovering: BTreeMap::new(),
            unknown_epochs: BTreeMap::new(),
            announced: HashMap::new(),
            gc_prefix: PerRow::new(opts.n, 0),
            retained: PerRow::new(opts.n, collect::Retained::default()),
            horizons: PerRow::new(opts.n, 0),
            seals: seal::Seals::default(),
            left_behind: None,
            next_watermark: Duration::ZERO,
            next_catch_up: Duration::ZERO,
            last_heard: PerRow::new(opts.n, Duration::ZERO),
            wall_ms: 0,
            expiring: BTreeMap::new(),
            replayed_refusals: Vec::new(),
            durable_slot_end: 0,
            taken_slot_end: 0,
            early: Vec::new(),
            ready: Ready::default(),
            opts,
        };
        r.grow_rows(rows);
        r
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
            // A checkpoint taken after a configuration added ids has their rows too.
            r.grow_rows(c.rows());
            r.restore_configurations(c.configurations);
            r.kv = c.kv;
            r.index = c.index;
            r.next_slot = c.next_slot;
            let gc_prefix = PerRow::from_vec(c.gc_prefix, r.rows()).expect(
                "a checkpoint has at least epoch 0's rows: decoding (with opts.n) checks it",
            );
            r.committed_count = gc_prefix.iter().sum();
            r.executed_prefix = gc_prefix.clone();
            r.committed_prefix = gc_prefix.clone();
            r.committed_end = gc_prefix.clone();
            r.gc_prefix = gc_prefix;
            executed_above = c.executed_above.into_iter().collect();
        }
        // A log written after a change added ids holds instances of their rows, and deps naming
        // them (the record of such an instance may be cut off with a checkpoint while a later
        // one's deps still name it), and the change that made them rows executes only below:
        // the rows grow first.
        let records: Vec<(InstanceId, Instance)> = records.into_iter().collect();
        let rows = records
            .iter()
            .flat_map(|(id, inst)| std::iter::once(*id).chain(inst.deps.iter().copied()))
            .map(|id| id.replica.index() + 1)
            .filter(|rows| *rows <= crate::core::limits::MEMBERS_EVER_MAX)
            .max()
            .unwrap_or(0);
        r.grow_rows(rows);
        for (id, inst) in records {
            if id.replica.index() >= r.rows() || r.forgotten(id) {
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
        let mut resumed = Vec::new();
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
                            epoch: inst.epoch,
                            ballot: inst.ballot,
                            commands: inst.commands.clone(),
                            deps: inst.init_deps.clone().unwrap_or_default(),
                        },
                    ),
                    _ => (
                        Phase::Accepting { acks: Vec::new() },
                        Message::Accept {
                            instance: *id,
                            epoch: inst.epoch,
                            ballot: inst.ballot,
                            commands: inst.commands.clone(),
                            deps: inst.deps.clone(),
                        },
                    ),
                };
                r.leading.insert(
                    *id,
                    Leading {
                        phase,
                        asked: Vec::new(),
                        started_at: now,
                        sent_at: now,
                        retry_after: r.opts.retry,
                        recovery: false,
                    },
                );
                resumed.push((*id, msg));
            }
        }
        for id in ids {
            if r.instances[&id].status == Status::Committed {
                r.on_committed(now, id);
            }
        }
        // Resent once the log's membership changes are executed again: only the members of
        // each instance's epoch are asked (a removed replica's answer is no vote).
        for (id, msg) in resumed {
            let voters = r.voters(id);
            if let Some(lead) = r.leading.get_mut(&id) {
                lead.asked = voters.clone();
            }
            r.send(voters, msg);
        }
        // A member added by the last change holds no seal of the epoch it ended: it still
        // learns that boundary before it leads (see `seal`).
        r.learn_last_boundary();
        // Re-execution answers nobody: those clients are gone.
        r.ready.replies.clear();
        r.ready.executed.clear();
        r.replayed_refusals = std::mem::take(&mut r.ready.refused_expired);
        // Everything restored is durable (or, after a snapshot, becomes so before anything of
        // this replica's leaves: see `node::Ready::install`).
        r.durable_slot_end = r.next_slot;
        r.taken_slot_end = r.next_slot;
        r
    }

    /// After a crash (a restart from this replica's own disk): skips the slots of its own row
    /// that its previous run may have started without their records reaching the disk, and
    /// has them settled by recovery.
    ///
    /// Why: a new instance's first PreAccept leaves before its record is durable (see
    /// `leader`). A crash in between loses the record while peers may hold the instance
    /// pre-accepted at ballot 0. Proposing another command in that slot at ballot 0 would then
    /// make two values at one ballot: a peer answers a PreAccept at the ballot it pre-accepted
    /// with its vote for the first command (see `handle_pre_accept`), which the leader would
    /// count for the second. The previous run started slots only below the end of what it
    /// knew durable plus `OWN_SLOTS_UNSYNCED_MAX`, and what it knew durable is on the disk; so
    /// past the end of the disk's own slots (`next_slot` as restored) plus that window, no
    /// slot was ever used. The skipped slots are needed at once, so this replica takes them
    /// over (recovery, at a ballot above 0): a lost instance was decided nowhere, since its
    /// leader's vote and every decision of it are revealed only after its record is durable,
    /// so recovery ends it as a no-op (EPaxos*: its coordinator is in the recovery's quorum)
    /// or with what a recoverer elsewhere already settled.
    pub fn skip_unsynced_slots(&mut self, now: Time) {
        if self.opts.sabotage.reuse_unsynced_slots() {
            return;
        }
        let from = self.next_slot;
        self.next_slot += limits::OWN_SLOTS_UNSYNCED_MAX;
        self.durable_slot_end = self.next_slot;
        self.taken_slot_end = self.next_slot;
        let me = self.opts.id;
        for slot in from..self.next_slot {
            let id = InstanceId::new(me, slot);
            if !self.instances.contains_key(&id) {
                self.need(now, id).recover_at = now;
            }
        }
    }

    /// The records of every `Ready` taken so far are durable (the shell synced them): the own
    /// slots they hold no longer count against `OWN_SLOTS_UNSYNCED_MAX`. The runtime calls it
    /// after each sync, before the next `flush`.
    pub fn persisted(&mut self) {
        self.durable_slot_end = self.durable_slot_end.max(self.taken_slot_end);
    }

    /// The records of every `Ready` up to one whose `slot_end` was `slot_end` are durable,
    /// later ones perhaps not (a shell that syncs in a pipeline): only the own slots those
    /// records hold stop counting against `OWN_SLOTS_UNSYNCED_MAX`. Claiming more would let a
    /// crash lose records of slots past the window a restart skips.
    pub fn persisted_through(&mut self, slot_end: u64) {
        self.durable_slot_end = self.durable_slot_end.max(slot_end.min(self.taken_slot_end));
    }

    pub fn id(&self) -> ReplicaId {
        self.opts.id
    }

    pub fn options(&self) -> &Options {
        &self.opts
    }

    /// The current epoch and its members here.
    pub fn configuration(&self) -> &Configuration {
        self.configurations
            .last()
            .expect("a replica always knows epoch 0")
    }

    /// The configuration of `epoch`, if this replica knows it.
    pub fn configuration_of(&self, epoch: Epoch) -> Option<&Configuration> {
        usize::try_from(epoch.0)
            .ok()
            .and_then(|e| self.configurations.get(e))
    }

    /// The configuration whose quorums decide `id`: its own epoch's (an instance not in the
    /// table: the current one's). While a recovery here does not know `id`'s epoch, its record
    /// names the newest it may be of, and `votes_on`, `voters` and `quorums_answered` count
    /// every candidate instead (see `recovering`).
    fn deciding(&self, id: InstanceId) -> &Configuration {
        if self.opts.sabotage.quorum_of_current_epoch() {
            return self.configuration();
        }
        self.instances
            .get(&id)
            .and_then(|inst| self.configuration_of(inst.epoch))
            .unwrap_or_else(|| self.configuration())
    }

    /// Members (leader included) that must report the initial deps for `id`'s fast path.
    fn fast_quorum_of(&self, id: InstanceId) -> usize {
        self.deciding(id).fast_quorum()
    }

    /// Members (leader included) that must accept for `id`'s slow path.
    fn slow_quorum_of(&self, id: InstanceId) -> usize {
        self.deciding(id).slow_quorum()
    }

    /// The members of `id`'s epoch but this replica, the ids after this one's first (wrapping
    /// around): whom to ask for votes on it.
    fn voters(&self, id: InstanceId) -> Vec<ReplicaId> {
        let me = self.opts.id;
        if self.opts.sabotage.count_removed_votes() {
            return self.peers();
        }
        let union;
        let members = match self.unrevealed(id) {
            Some(candidates) => {
                union = self.members_of(candidates);
                union.as_slice()
            }
            None => self.deciding(id).members(),
        };
        let after = members.partition_point(|m| *m <= me);
        members[after..]
            .iter()
            .chain(&members[..after])
            .copied()
            .filter(|m| *m != me)
            .collect()
    }

    /// Takes `next` as the configuration of the epoch after the current one; `false` (and
    /// nothing changes) if it is not the next epoch. Only what consensus decided may come here:
    /// the tests call it directly today; executing a `Reconfigure` will (issue 15, step 2).
    /// Every per-row table grows to the new configuration's highest id (see `PerRow`).
    #[allow(dead_code)]
    pub(crate) fn adopt_configuration(&mut self, next: Configuration) -> bool {
        if next.epoch().0 != self.configuration().epoch().0 + 1 {
            return false;
        }
        let rows = next.rows();
        self.configurations.push(next);
        self.grow_rows(rows);
        true
    }

    /// Grows every per-row table to `rows` rows (ids never shrink, see `PerRow`).
    fn grow_rows(&mut self, rows: usize) {
        if rows <= self.rows() {
            return;
        }
        self.index.grow(rows);
        self.to_execute.grow(rows);
        self.prefix_waiters.grow(rows, BTreeMap::new());
        self.committed_prefix.grow(rows, 0);
        self.committed_end.grow(rows, 0);
        self.executed_prefix.grow(rows, 0);
        self.gc_prefix.grow(rows, 0);
        self.retained.grow(rows, collect::Retained::default());
        self.horizons.grow(rows, 0);
        // A new row's peer starts heard now-or-never alike: as if at the replica's start.
        self.last_heard.grow(rows, Duration::ZERO);
        for table in [&mut self.peer_committed, &mut self.peer_executed] {
            for peer in table.iter_mut() {
                peer.grow(rows, 0);
            }
            table.grow(rows, PerRow::new(rows, 0));
        }
    }

    /// How many rows the per-row tables hold: one past the highest id of any configuration
    /// known here.
    pub(crate) fn rows(&self) -> usize {
        self.committed_prefix.len()
    }

    /// Whether `from`'s answer may count as a vote on `id`: it is a member of `id`'s epoch. A
    /// non-member's answer is never a vote (a quorum of a configuration counts its members).
    /// While `id`'s epoch is unknown here (a recovery of an instance known only as a
    /// dependency), a member of any epoch it may be of.
    fn votes_on(&self, id: InstanceId, from: ReplicaId) -> bool {
        if self.opts.sabotage.count_removed_votes() {
            return true;
        }
        match self.unrevealed(id) {
            Some(candidates) => candidates
                .iter()
                .any(|e| self.configuration_of(*e).is_some_and(|c| c.is_member(from))),
            None => self.deciding(id).is_member(from),
        }
    }

    /// Whether `answered` (this replica included if it counts) make a slow quorum for `id`:
    /// of its epoch; while the epoch is unknown here, of *every* epoch it may be of, so that
    /// whichever it is, a quorum of it answered (see `recovering`).
    fn quorums_answered(&self, id: InstanceId, answered: &[ReplicaId]) -> bool {
        let Some(candidates) = self.unrevealed(id) else {
            return answered.len() >= self.slow_quorum_of(id);
        };
        candidates.iter().all(|e| {
            self.configuration_of(*e).is_some_and(|c| {
                answered.iter().filter(|r| c.is_member(**r)).count() >= c.slow_quorum()
            })
        })
    }

    /// The epochs `id` may be of, while a recovery of it here has not learnt which.
    fn unrevealed(&self, id: InstanceId) -> Option<&[Epoch]> {
        self.unknown_epochs
            .get(&id)
            .filter(|u| u.revealed.is_none())
            .map(|u| u.candidates.as_slice())
    }

    /// The members of any of `epochs`, sorted.
    fn members_of(&self, epochs: &[Epoch]) -> Vec<ReplicaId> {
        let mut members: Vec<ReplicaId> = epochs
            .iter()
            .filter_map(|e| self.configuration_of(*e))
            .flat_map(|c| c.members().iter().copied())
            .collect();
        members.sort_unstable();
        members.dedup();
        members
    }

    /// Commands that restoring this replica refused as expired while it executed its log
    /// again (for the simulator's exactly-once check).
    pub fn replayed_refusals(&self) -> &[(InstanceId, ClientId, RequestId)] {
        &self.replayed_refusals
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
        self.taken_slot_end = self.next_slot;
        let mut ready = std::mem::take(&mut self.ready);
        ready.slot_end = self.taken_slot_end;
        if !self.early.is_empty() {
            ready.early = self.early.len();
            let later = std::mem::replace(&mut ready.messages, std::mem::take(&mut self.early));
            ready.messages.extend(later);
        }
        ready
    }

    /// The wall clock, in Unix milliseconds, as the shell reads it (the core reads no clock):
    /// stamped on the commands this replica takes into instances from now on, and what it
    /// proposes session expiries by. The simulator gives each replica its own skewed clock.
    pub fn set_wall_clock_ms(&mut self, wall_ms: u64) {
        self.wall_ms = wall_ms;
    }

    /// Queues a client command. It starts in an instance at the next [`Replica::flush`].
    pub fn propose(&mut self, token: Token, cmd: Command) -> Result<(), Overloaded> {
        let queued = self.queue_proposal(token, cmd);
        self.debug_check_invariants();
        queued
    }

    fn queue_proposal(&mut self, token: Token, cmd: Command) -> Result<(), Overloaded> {
        let full_bytes = self.pending_bytes + cmd.op.size_bytes() > self.opts.pending_bytes_max;
        if self.pending.len() >= self.opts.pending_max || (full_bytes && !self.pending.is_empty()) {
            return Err(Overloaded::Proposals(self.pending.len()));
        }
        // A request that would open a session while the table is full. Refused here, before
        // consensus, so the decision may differ between replicas; a session's own requests
        // are never refused for it.
        let sessions = self.kv.sessions();
        if cmd.request == RequestId(1)
            && !cmd.op.is_reconfigure()
            && sessions.len() >= self.opts.sessions_max
            && sessions.get(&cmd.client).is_none()
        {
            return Err(Overloaded::Sessions(sessions.len()));
        }
        if self.opts.sabotage.local_reads() {
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
            self.pending.retain(|cmd| {
                matches!(cmd.op, Op::Expire { .. })
                    || clients.contains_key(&(cmd.client, cmd.request))
            });
            self.pending_bytes = self.pending.iter().map(|c| c.op.size_bytes()).sum();
        }
        // After a change, nothing starts before the old epoch's boundary is known (see `seal`).
        while !self.pending.is_empty()
            && self.may_start_instances()
            && !self.removed()
            && self.leading.len() < self.opts.inflight_max
            && self.next_slot < self.durable_slot_end + limits::OWN_SLOTS_UNSYNCED_MAX
        {
            self.start_instance(now);
        }
        self.debug_check_invariants();
    }

    /// Handles one message from peer `from`. A message that names a replica, instance, ballot
    /// or dependency that cannot exist (see [`Reject`]) changes nothing, not even when the
    /// sender was last heard: it is only reported in [`Ready::rejected`].
    pub fn handle(&mut self, now: Time, from: ReplicaId, msg: Message) {
        self.dispatch(now, from, msg);
        self.debug_check_invariants();
    }

    fn dispatch(&mut self, now: Time, from: ReplicaId, msg: Message) {
        if let Err(reason) = self.check_input(from, &msg) {
            self.ready.rejected.push(Rejected {
                from,
                kind: msg.kind(),
                reason,
            });
            return;
        }
        self.last_heard[from] = now;
        if msg.ballot().is_some_and(|b| b.round == u32::MAX) {
            // Honest ballots grow by one round per takeover and never get near the top; a
            // ballot there leaves no successor for the next takeover (see `next_ballot`).
            self.refuse(from, Contradiction::BallotOverflow);
            return;
        }
        if msg
            .epoch()
            .is_some_and(|e| e > self.configuration().epoch())
        {
            // A peer acts in an epoch this replica has not reached: it is behind (the change
            // is committed somewhere and not executed here), not lied to. It drops the message
            // (the peer resends) and pulls the Commits it misses from that peer.
            if let Message::RecoverOk { instance, .. } = &msg {
                // A holder names an epoch this replica has not learnt for an instance it
                // recovers: its candidates missed it (`recovering`). The recovery ends; it
                // starts again, knowing more, once due.
                self.recovering.remove(instance);
            }
            self.behind_epoch(now, from);
            return;
        }
        if let Some(contradiction) = self.membership_contradiction(from, &msg) {
            self.refuse(from, contradiction);
            return;
        }
        match msg {
            Message::PreAccept {
                instance,
                epoch,
                ballot,
                commands,
                deps,
            } => self.handle_pre_accept(from, instance, epoch, ballot, commands, deps),
            Message::PreAcceptOk {
                instance,
                ballot,
                deps,
            } => self.handle_pre_accept_ok(now, from, instance, ballot, deps),
            Message::Accept {
                instance,
                epoch,
                ballot,
                commands,
                deps,
            } => self.handle_accept(from, instance, epoch, ballot, commands, deps),
            Message::AcceptOk { instance, ballot } => {
                self.handle_accept_ok(now, from, instance, ballot)
            }
            Message::Commit {
                instance,
                epoch,
                ballot,
                commands,
                deps,
            } => self.handle_commit(now, from, instance, epoch, ballot, commands, deps),
            Message::Nack { instance, promised } => self.handle_nack(now, instance, promised),
            Message::CommitRequest { instances } => self.handle_commit_request(from, instances),
            Message::Watermark {
                committed_prefix,
                executed_prefix,
                collected_prefix,
            } => self.handle_watermark(from, committed_prefix, executed_prefix, collected_prefix),
            Message::Recover {
                instance,
                epoch,
                ballot,
            } => self.handle_recover(now, from, instance, epoch, ballot),
            Message::RecoverOk {
                instance,
                ballot,
                reply,
            } => self.handle_recover_ok(now, from, instance, ballot, reply),
            Message::Validate {
                instance,
                epoch,
                ballot,
                commands,
                deps,
            } => self.handle_validate(from, instance, epoch, ballot, commands, deps),
            Message::ValidateOk {
                instance,
                ballot,
                conflicts,
            } => self.handle_validate_ok(now, from, instance, ballot, conflicts),
            Message::Waiting { instance, matching } => self.handle_waiting(now, instance, matching),
            Message::BoundaryPrepare { epoch, ballot } => {
                self.handle_boundary_prepare(from, epoch, ballot)
            }
            Message::BoundaryPromise {
                epoch,
                ballot,
                ends,
                accepted,
            } => self.handle_boundary_promise(from, epoch, ballot, ends, accepted),
            Message::BoundaryNack { epoch, promised } => self.handle_boundary_nack(epoch, promised),
            Message::BoundaryAccept {
                epoch,
                ballot,
                ends,
            } => self.handle_boundary_accept(from, epoch, ballot, ends),
            Message::BoundaryAccepted { epoch, ballot } => {
                self.handle_boundary_accepted(from, epoch, ballot)
            }
            Message::BoundaryDecided { epoch, ends } => self.handle_boundary_decided(epoch, ends),
        }
    }

    /// Fires due timers: resends to peers that did not answer (falling back to the slow path
    /// when a slow quorum answered but the fast one did not come), and asks peers for the
    /// Commit of dependencies that execution has waited on for too long.
    pub fn tick(&mut self, now: Time) {
        self.fire_timers(now);
        self.debug_check_invariants();
    }

    fn fire_timers(&mut self, now: Time) {
        if self.opts.sabotage.no_retransmit() {
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
        self.tick_boundary(now);
        self.propose_expiries(now);
        if self.opts.gc_executed {
            self.collect_garbage();
        }
        if now >= self.next_watermark {
            self.next_watermark = now + self.opts.watermark_every;
            self.need_stragglers(now);
            let msg = self.watermark();
            self.send(self.peers(), msg);
        } else if now >= self.next_catch_up {
            self.catch_up(now);
        }
    }

    /// Proposes the expiry of sessions idle for the TTL by this replica's wall clock: those whose
    /// last command it led, and those any replica led idle for twice the TTL (their leader may
    /// be gone). At most `EXPIRIES_PER_TICK_MAX` per tick and `EXPIRIES_IN_FLIGHT_MAX` unseen;
    /// the expiries wait with the client proposals and batch with them. Whether an expiry
    /// removes the session is decided when it executes, alike everywhere (see `session`).
    fn propose_expiries(&mut self, now: Time) {
        if self.removed() {
            return; // it starts no instance any more: the members expire sessions
        }
        let ttl = self.opts.session_ttl.as_millis() as u64;
        let (Some(own_since), true) = (self.wall_ms.checked_sub(ttl), self.wall_ms > 0) else {
            return; // no wall clock yet, or not one TTL past the epoch
        };
        let any_since = own_since.saturating_sub(ttl);
        // An expiry not seen executed after a TTL (its instance became a no-op) may go again.
        let session_ttl = self.opts.session_ttl;
        self.expiring
            .retain(|_, at| now.saturating_sub(*at) < session_ttl);
        let room = limits::EXPIRIES_IN_FLIGHT_MAX.saturating_sub(self.expiring.len());
        let room = room
            .min(limits::EXPIRIES_PER_TICK_MAX)
            .min(self.opts.pending_max.saturating_sub(self.pending.len()));
        if room == 0 {
            return;
        }
        let expiring = &self.expiring;
        let idle =
            self.kv
                .sessions()
                .idle(self.opts.id, self.opts.n, own_since, any_since, room, |c| {
                    expiring.contains_key(&c)
                });
        for client in idle {
            if self.opts.sabotage.expire_locally() {
                self.kv.forget_session_locally(client);
                continue;
            }
            self.expiring.insert(client, now);
            self.pending.push_back(Command::expire(client, own_since));
        }
    }

    /// Pulls Commits from the peer that is furthest ahead of this replica, if one is ahead by
    /// more than one Watermark's answer: a replica that was down for long catches up at a round
    /// trip per `watermark_commits_max` Commits instead of that many per `watermark_every`.
    fn catch_up(&mut self, now: Time) {
        let behind = |reported: &PerRow<u64>| -> u64 {
            reported
                .iter()
                .zip(&self.committed_prefix)
                .map(|(theirs, mine)| theirs.saturating_sub(*mine))
                .sum()
        };
        let ahead = self
            .peers()
            .into_iter()
            .map(|p| (behind(&self.peer_committed[p]), p))
            .max();
        if let Some((lag, peer)) = ahead {
            if lag > self.opts.watermark_commits_max as u64 {
                self.next_catch_up = now + self.opts.catch_up_every;
                let msg = self.watermark();
                self.send(vec![peer], msg);
            }
        }
    }
}
