//! The node: one replica's protocol core ([`Replica`]) together with what decides whether and
//! how it takes part: its membership (joining, or joined with rejoin horizons), its peers'
//! incarnations (the fence against a peer that lost its data), installing a snapshot, and when
//! to checkpoint.
//!
//! Like [`Replica`] it is sans-IO: inputs go in with `now`, outputs come out in [`Ready`], and
//! the runtime and the simulator drive this same code. The shell carries a `Ready` out in the
//! order its fields are listed: make `peers`, `install` and `membership` durable, send the
//! core's early messages (`replica::Ready::early`), make `core.persist` durable and say so
//! ([`Node::persisted`]), then send `joins`, the core's other messages and replies.

use crate::core::checkpoint::Checkpoint;
use crate::core::command::Command;
use crate::core::epoch::Change;
use crate::core::epoch::{Configuration, Epoch};
use crate::core::ids::{ClientId, Incarnation, InstanceId, ReplicaId, RequestId};
use crate::core::instance::Instance;
use crate::core::limits::MEMBERS_EVER_MAX;
use crate::core::membership::{JoinAnswer, Membership};
use crate::core::message::Message;
use crate::core::replica::{
    self, Decided, Options, Overloaded, ReconfigureRefusal, Replica, Seal, Time, Token,
};

/// Why the node refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// This replica's data directory is new and it has not joined yet.
    #[error("replica is joining the cluster (its data directory is new); try another replica")]
    Joining,
    /// The proposal queue is full.
    #[error(transparent)]
    Overloaded(#[from] Overloaded),
    /// A Join naming this replica itself, or without an incarnation.
    #[error("join from this replica's own id, or without an incarnation")]
    BadJoin,
    /// Peers collected instances this replica has not executed: it installs a snapshot first.
    #[error(
        "replica is catching up from a peer's snapshot (it was left behind); try another replica"
    )]
    CatchingUp,
    /// A snapshot asked by an incarnation that has not joined here.
    #[error("snapshot only for a replica that joined with this incarnation")]
    NotJoined,
    /// This replica executed a change that removed it: ask the current members.
    #[error("replica was removed from the cluster; the current members are {members:?}")]
    Removed { members: Vec<ReplicaId> },
}

/// An encoded checkpoint and the instance records beside it: a checkpoint to write (the
/// records are the new log), a snapshot for a joining peer, or a snapshot installed here.
#[derive(Debug)]
#[must_use]
pub struct Image {
    pub checkpoint: Vec<u8>,
    pub records: Vec<(InstanceId, Instance)>,
}

/// A batch refused because it came from another incarnation than the one recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RefusedPeer {
    pub peer: ReplicaId,
    pub incarnation: Incarnation,
    pub recorded: Incarnation,
}

/// Everything to carry out, in this order: make `peers`, `install` and `membership` durable;
/// send the first `core.early` of `core.messages`; make `core.persist` durable and call
/// [`Node::persisted`]; then send `joins` and the rest of `core`.
#[derive(Debug, Default)]
#[must_use]
pub struct Ready {
    /// Each peer's incarnation changed: store the whole table durably (a Join's answer, and
    /// every vote that counts a first-seen peer, depend on it).
    pub peers: Option<Vec<Option<Incarnation>>>,
    /// A snapshot was installed: store it as this replica's checkpoint and log (before
    /// `membership` says it joined).
    pub install: Option<Image>,
    /// The membership changed: store it.
    pub membership: Option<Membership>,
    /// A membership change executed here: the configuration (epoch, members, the addresses of
    /// the members changes added, the ids ever members) this replica now acts in. **The shell
    /// makes it durable (the metadata record) before it carries out anything else of this
    /// `Ready`** (before `install`, `membership`, the core's messages and replies): a replica
    /// must never act in an epoch that a restart would not give back through
    /// `Restored::configuration`.
    pub configuration: Option<Decided>,
    /// Answers to Joins, by the token the shell gave each.
    pub joins: Vec<(Token, Result<JoinAnswer, Refusal>)>,
    /// Batches refused since the last `Ready` (for logs and metrics).
    pub refused: Vec<RefusedPeer>,
    /// The protocol core's outputs.
    pub core: replica::Ready,
}

/// What a node starts from: what its data directory holds.
#[derive(Debug)]
pub struct Restored {
    pub membership: Membership,
    /// The configuration the metadata record holds, if a change ever executed here (`None`:
    /// epoch 0, `config.json`'s). Re-executing the log rebuilds the configurations too; this
    /// one wins if the log ends before the change that made it (its record was lost with the
    /// crash after the metadata was written).
    pub configuration: Option<Decided>,
    /// Each peer's incarnation as recorded (`None`: not seen yet).
    pub peers: Vec<Option<Incarnation>>,
    pub checkpoint: Option<Checkpoint>,
    pub records: Vec<(InstanceId, Instance)>,
    /// The seals stored from `replica::Ready::sealed` (empty if none): a restarted replica
    /// still refuses the votes they refuse (see `replica::seal`).
    pub sealed: Vec<Seal>,
}

/// A replica's core, its membership, its peers' incarnations and its checkpoint cadence.
pub struct Node {
    replica: Replica,
    membership: Membership,
    peers: Vec<Option<Incarnation>>,
    /// Checkpoint each time this many more instances were collected (0: never).
    checkpoint_every: u64,
    /// `replica.collected()` when the last checkpoint started.
    checkpointed_at: u64,
    /// A checkpoint is being written (the shell says when it is done).
    checkpointing: bool,
    /// Ids beyond every configuration known here that asked to Join since the start (an added
    /// replica waits this way): a change adding one of them counts it live. At most
    /// `MEMBERS_EVER_MAX` entries.
    knocking: std::collections::BTreeSet<ReplicaId>,
    out: Ready,
}

impl Node {
    /// The node restored from its data directory at time `now`. A joined replica restores its
    /// core from the checkpoint and log and keeps its horizons; a joining one starts empty and
    /// takes part in nothing until it has joined.
    pub fn new(opts: Options, checkpoint_every: u64, now: Time, restored: Restored) -> Node {
        let n = opts.n;
        let replica = match &restored.membership {
            Membership::Joined { horizons } => {
                let mut r = Replica::restore_from(opts, now, restored.checkpoint, restored.records);
                r.set_horizons(horizons.clone());
                r
            }
            Membership::Joining => Replica::new(opts),
        };
        let mut replica = replica;
        if let Some(decided) = restored.configuration {
            replica.adopt_decided(decided);
        }
        replica.restore_seals(restored.sealed);
        // One entry per row known (epoch 0's ids, and any a grown checkpoint or record holds):
        // an entry once recorded is never cut off, or its fence would be lost.
        let mut peers = restored.peers;
        let rows = n.max(replica.rows()).max(peers.len().min(MEMBERS_EVER_MAX));
        peers.resize(rows, None);
        Node {
            checkpointed_at: replica.collected(),
            replica,
            membership: restored.membership,
            peers,
            checkpoint_every,
            checkpointing: false,
            knocking: std::collections::BTreeSet::new(),
            out: Ready::default(),
        }
    }

    // ---- getters ------------------------------------------------------------------------

    /// The protocol core, to read.
    pub fn replica(&self) -> &Replica {
        &self.replica
    }

    /// The current epoch and its members here (epoch 0, `config.json`'s ids, until a change
    /// executes; see `core::epoch`).
    pub fn configuration(&self) -> &Configuration {
        self.replica.configuration()
    }

    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    /// Whether this replica has not joined yet (it takes part in nothing).
    pub fn joining(&self) -> bool {
        self.membership == Membership::Joining
    }

    /// The peer to install a snapshot from, if peers collected instances this replica has not
    /// executed (see `replica::collect`): it takes part in nothing until it has.
    pub fn catching_up(&self) -> Option<ReplicaId> {
        if self.joining() {
            return None;
        }
        self.replica.left_behind()
    }

    /// Whether the core takes inputs: joined and not catching up.
    fn active(&self) -> bool {
        !self.joining() && self.replica.left_behind().is_none()
    }

    /// How many rows this replica knows: one past the highest id of every configuration it
    /// has learnt (epoch 0's `n` until a change adds an id). What `wire` checks ids against.
    pub fn rows(&self) -> usize {
        self.replica.rows()
    }

    /// `peer`'s entry in the incarnation table, if it is a row known here (the table grows to
    /// the rows known: an id a configuration added can join and be heard).
    fn peer_slot(&mut self, peer: ReplicaId) -> Option<&mut Option<Incarnation>> {
        let rows = self.replica.rows();
        if peer.index() >= rows {
            return None;
        }
        if self.peers.len() < rows {
            self.peers.resize(rows, None);
        }
        self.peers.get_mut(peer.index())
    }

    /// The incarnation recorded for `peer`, if any.
    pub fn peer_incarnation(&self, peer: ReplicaId) -> Option<Incarnation> {
        self.peers.get(peer.index()).copied().flatten()
    }

    /// Whether a batch from `peer`'s incarnation `incarnation` would be heard: it is the one
    /// recorded, or none is recorded yet. Changes nothing (see [`Node::hear`]).
    pub fn would_hear(&self, peer: ReplicaId, incarnation: Incarnation) -> bool {
        peer.index() < self.replica.rows()
            && self
                .peer_incarnation(peer)
                .is_none_or(|recorded| recorded == incarnation)
    }

    // ---- inputs -------------------------------------------------------------------------

    /// Whether this replica executed a change that removed it (it leads nothing new, refuses
    /// clients with [`Refusal::Removed`], still answers peers on old instances).
    pub fn removed(&self) -> bool {
        self.replica.removed()
    }

    /// The current configuration with the added members' addresses (see [`Decided`]).
    pub fn configuration_members(&self) -> Decided {
        self.replica.decided()
    }

    /// A membership change asked by an admin call (`token` is answered like a client, with
    /// the new epoch in `OpResult::value`, see `replica::epoch_of_result`), or why not now.
    pub fn propose_reconfigure(
        &mut self,
        token: Token,
        change: Change,
        now: Time,
    ) -> Result<(), ReconfigureRefusal> {
        if self.joining() {
            return Err(ReconfigureRefusal::Joining);
        }
        if self.catching_up().is_some() {
            return Err(ReconfigureRefusal::CatchingUp);
        }
        self.replica
            .propose_reconfigure(token, change, now, &self.knocking)
    }

    /// A client's command. Refused while joining, or when the proposal queue is full.
    pub fn propose(&mut self, token: Token, cmd: Command) -> Result<(), Refusal> {
        if self.joining() {
            return Err(Refusal::Joining);
        }
        if self.removed() {
            return Err(Refusal::Removed {
                members: self.configuration().members().to_vec(),
            });
        }
        if self.catching_up().is_some() {
            return Err(Refusal::CatchingUp);
        }
        Ok(self.replica.propose(token, cmd)?)
    }

    /// The client behind `token` gave up: see [`Replica::forget`].
    pub fn forget(&mut self, token: Token, cmd: (ClientId, RequestId)) {
        self.replica.forget(token, cmd.0, cmd.1);
    }

    /// A batch arrives from `peer`'s incarnation `incarnation`: whether its messages may be
    /// handled. Only the incarnation recorded for the peer is heard (the first one seen is
    /// recorded, durably through `Ready::peers`): a replica that lost its data may have
    /// forgotten promises and votes, so only the incarnation that joined in its place is.
    pub fn hear(&mut self, peer: ReplicaId, incarnation: Incarnation) -> bool {
        let Some(slot) = self.peer_slot(peer) else {
            return false;
        };
        match *slot {
            Some(recorded) if recorded == incarnation => true,
            Some(recorded) => {
                self.out.refused.push(RefusedPeer {
                    peer,
                    incarnation,
                    recorded,
                });
                false
            }
            None => {
                *slot = Some(incarnation);
                self.out.peers = Some(self.peers.clone());
                true
            }
        }
    }

    /// A protocol message from `peer` (heard: see [`Node::hear`]). Dropped while joining: the
    /// peers resend what matters once this replica has joined.
    pub fn handle(&mut self, now: Time, peer: ReplicaId, msg: Message) {
        if self.active() {
            self.replica.handle(now, peer, msg);
        }
    }

    /// A message from `peer` named a row this replica does not know (the shell's decoding
    /// refused it, `wire::WireError::UnknownReplica`): `peer` executed a change adding an id
    /// that this replica has not executed yet. It asks `peer` for the Commits it misses (the
    /// change among them; at most once per `catch_up_every`), after which it knows the row.
    pub fn peer_knows_more_rows(&mut self, now: Time, peer: ReplicaId) {
        if self.active() && peer.index() < self.replica.rows() {
            self.replica.behind_epoch(now, peer);
        }
    }

    /// The wall clock, in Unix milliseconds: see [`Replica::set_wall_clock_ms`].
    pub fn set_wall_clock_ms(&mut self, wall_ms: u64) {
        self.replica.set_wall_clock_ms(wall_ms);
    }

    /// Time passes (the core's timers: resends, recoveries, heartbeats).
    pub fn tick(&mut self, now: Time) {
        if self.active() {
            self.replica.tick(now);
        }
    }

    /// This node runs on a data directory that an earlier run of this replica used (a restart,
    /// after a crash or not): the shell calls it right after [`Node::new`]. The earlier run may
    /// have sent PreAccepts whose records never reached the disk; their slots are skipped (see
    /// [`Replica::skip_unsynced_slots`]). Nothing to do for a replica still joining: it
    /// continues its row where the peers' horizons say.
    pub fn restarted(&mut self, now: Time) {
        if !self.joining() {
            self.replica.skip_unsynced_slots(now);
        }
    }

    /// The records of every `Ready` taken so far are durable: see [`Replica::persisted`].
    pub fn persisted(&mut self) {
        self.replica.persisted();
    }

    /// The records of every `Ready` up to one whose `core.slot_end` was `slot_end` are
    /// durable: see [`Replica::persisted_through`].
    pub fn persisted_through(&mut self, slot_end: u64) {
        self.replica.persisted_through(slot_end);
    }

    /// Starts instances from what was proposed since the last flush.
    pub fn flush(&mut self, now: Time) {
        if self.active() {
            self.replica.flush(now);
        }
    }

    /// Peer `from` joins with a new data directory as incarnation `incarnation`: from now on
    /// only that incarnation is heard (durable before the answer leaves: see `Ready::joins`),
    /// and the answer tells how far each row reaches here.
    pub fn answer_join(&mut self, token: Token, from: ReplicaId, incarnation: Option<Incarnation>) {
        let answer = self.join_answer(from, incarnation);
        self.out.joins.push((token, answer));
    }

    fn join_answer(
        &mut self,
        from: ReplicaId,
        incarnation: Option<Incarnation>,
    ) -> Result<JoinAnswer, Refusal> {
        let me = self.replica.id();
        let (Some(incarnation), true) = (incarnation, from != me) else {
            return Err(Refusal::BadJoin);
        };
        let Some(slot) = self.peer_slot(from) else {
            if from.index() < MEMBERS_EVER_MAX {
                // Not a member of anything known here: perhaps a replica started to be added.
                self.knocking.insert(from);
            }
            return Err(Refusal::BadJoin);
        };
        // The same incarnation asking again (its join retried, or restarted after adopting a
        // later configuration) is no earlier incarnation: it took part in nothing yet (a
        // joining replica does not vote, and one whose join was interrupted says so itself),
        // so it must not be taken for a rejoin that waits for every member.
        let previous = slot.filter(|p| *p != incarnation);
        if *slot != Some(incarnation) {
            *slot = Some(incarnation);
            self.out.peers = Some(self.peers.clone());
        }
        let row_ends = self.replica.peer_rejoined(from);
        Ok(JoinAnswer {
            previous,
            row_ends,
            executed_prefix: self.replica.executed_prefix().to_vec(),
            joining: self.joining(),
        })
    }

    /// What a joining peer (`from`, incarnation `incarnation`, whose Join was answered here)
    /// starts from: an encoded checkpoint and the decided instances beside it.
    pub fn snapshot_for(
        &self,
        from: ReplicaId,
        incarnation: Option<Incarnation>,
    ) -> Result<Image, Refusal> {
        if self.joining() {
            return Err(Refusal::Joining);
        }
        match incarnation {
            Some(i) if self.peer_incarnation(from) == Some(i) => {
                let (checkpoint, records) = self.replica.snapshot();
                Ok(Image {
                    checkpoint,
                    records,
                })
            }
            _ => Err(Refusal::NotJoined),
        }
    }

    /// Nobody knew this replica: it joins empty and takes part from now on.
    pub fn join_fresh(&mut self) {
        let rows = self.replica.rows();
        self.set_membership(Membership::Joined {
            horizons: vec![0; rows],
        });
    }

    /// This replica lost its data: it starts from a peer's snapshot (`checkpoint` and the
    /// decided `records` beside it), continues its own row at its horizon, abstains below
    /// `horizons`, and takes part from now on. Re-executing the snapshot answers nobody, so
    /// what restoring produced is discarded. `joined_in`: the epoch of the configuration whose
    /// members answered the join; a rejoin (some horizon above 0) is no acceptor of an older
    /// epoch's boundary (`replica::seal`, "A wiped acceptor is fenced"; stored through
    /// `Ready::sealed`). An added member's first join (zero horizons) never voted: no fence.
    pub fn join_from_snapshot(
        &mut self,
        now: Time,
        joined_in: Epoch,
        horizons: Vec<u64>,
        mut checkpoint: Checkpoint,
        records: Vec<(InstanceId, Instance)>,
    ) {
        let opts = self.replica.options().clone();
        // The peer's next slot is its own row's; ours continues at our row's horizon.
        checkpoint.next_slot = horizons.get(opts.id.index()).copied().unwrap_or(0);
        let encoded = checkpoint.encode();
        let installed = if opts.sabotage.rejoin_without_horizons() {
            vec![0; opts.n]
        } else {
            horizons
        };
        let mut replica = Replica::restore_from(opts, now, Some(checkpoint), records.clone());
        replica.set_horizons(installed.clone());
        drop(replica.take_ready());
        if installed.iter().any(|h| *h > 0) {
            replica.fence_rejoined(joined_in);
        }
        self.checkpointed_at = replica.collected();
        self.replica = replica;
        self.out.install = Some(Image {
            checkpoint: encoded,
            records,
        });
        self.set_membership(Membership::Joined {
            horizons: installed,
        });
    }

    /// This replica was left behind (see [`Node::catching_up`]) and received the snapshot of a
    /// peer (`checkpoint` and the decided `records` beside it): it continues from it, keeping
    /// every instance of its own above the snapshot's collected prefix that the snapshot does
    /// not hold decided (its promises and votes: nothing it voted on is forgotten, so no
    /// horizons are needed), its own row's next slot and its horizons. Written as its new
    /// checkpoint and log through `Ready::install`. Why this is safe: `replica::collect`.
    pub fn install_caught_up(
        &mut self,
        now: Time,
        mut checkpoint: Checkpoint,
        records: Vec<(InstanceId, Instance)>,
    ) {
        if self.catching_up().is_none() {
            return; // installed already (or never needed): a late snapshot changes nothing
        }
        let opts = self.replica.options().clone();
        let me = opts.id.index();
        let decided: std::collections::HashSet<InstanceId> =
            records.iter().map(|(id, _)| *id).collect();
        let collected = checkpoint.gc_prefix.clone();
        let mut kept: Vec<(InstanceId, Instance)> = self
            .replica
            .instances()
            .filter(|(id, _)| {
                // A row the snapshot does not hold (added since it was taken) is all above it.
                id.slot >= collected.get(id.replica.index()).copied().unwrap_or(0)
                    && !decided.contains(id)
            })
            .map(|(id, inst)| (*id, inst.clone()))
            .collect();
        kept.sort_unstable_by_key(|(id, _)| *id);
        kept.extend(records);
        checkpoint.next_slot = self
            .replica
            .next_slot()
            .max(collected.get(me).copied().unwrap_or(0));
        let encoded = checkpoint.encode();
        let horizons = self.replica.horizons().to_vec();
        let seals = self.replica.seals().to_vec();
        let mut replica = Replica::restore_from(opts, now, Some(checkpoint), kept.clone());
        replica.set_horizons(horizons);
        // Its seals stay (they are stored apart from the log); the boundary is learnt again.
        replica.restore_seals(seals);
        // A change the snapshot brought and this replica never executed: seal what it left.
        replica.seal_missed_boundary();
        // Its outputs (the resends of the instances of its own it goes on leading) stay.
        self.checkpointed_at = replica.collected();
        self.replica = replica;
        self.out.install = Some(Image {
            checkpoint: encoded,
            records: kept,
        });
    }

    fn set_membership(&mut self, membership: Membership) {
        self.membership = membership.clone();
        self.out.membership = Some(membership);
    }

    // ---- checkpoints --------------------------------------------------------------------

    /// A checkpoint to write now, if `checkpoint_every` more instances were collected since the
    /// last one and none is being written. Encoding reads the live state, so it happens here;
    /// the shell writes it (and then the new log) and calls [`Node::checkpoint_written`].
    pub fn poll_checkpoint(&mut self) -> Option<Image> {
        let every = self.checkpoint_every;
        let collected = self.replica.collected();
        if every == 0
            || !self.replica.options().gc_executed
            || self.checkpointing
            || self.catching_up().is_some()
            || collected < self.checkpointed_at + every
        {
            return None;
        }
        let (checkpoint, live) = self.replica.checkpoint();
        self.checkpointed_at = collected;
        self.checkpointing = true;
        Some(Image {
            checkpoint,
            records: live,
        })
    }

    /// The checkpoint from [`Node::poll_checkpoint`] is written (or was abandoned).
    pub fn checkpoint_written(&mut self) {
        self.checkpointing = false;
    }

    // ---- outputs ------------------------------------------------------------------------

    /// Drains what to carry out.
    pub fn take_ready(&mut self) -> Ready {
        let mut ready = std::mem::take(&mut self.out);
        ready.core = self.replica.take_ready();
        ready.configuration = ready.core.configuration.take();
        ready
    }

    /// The core's invariants (see [`Replica::check_invariants`]) and the node's own.
    pub fn check_invariants(&self) -> Result<(), String> {
        self.check_node_invariants()?;
        self.replica.check_invariants()
    }

    /// The cheap check for every step (see [`Replica::check_step_invariants`]).
    pub fn check_step_invariants(&self) -> Result<(), String> {
        self.check_node_invariants()?;
        self.replica.check_step_invariants()
    }

    fn check_node_invariants(&self) -> Result<(), String> {
        if self.peer_incarnation(self.replica.id()).is_some() {
            return Err("a replica recorded an incarnation of itself as a peer".to_string());
        }
        if self.joining() && self.replica.inflight() + self.replica.pending() > 0 {
            return Err("a joining replica has proposals".to_string());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::command::Op;
    use crate::core::ids::{ClientId, RequestId};
    use bytes::Bytes;
    use std::time::Duration;

    fn inc(n: u64) -> Incarnation {
        Incarnation::new(n).expect("nonzero")
    }

    fn opts(id: u32) -> Options {
        let mut o = Options::new(ReplicaId(id), 3);
        o.gc_executed = true;
        o
    }

    fn node(id: u32, membership: Membership) -> Node {
        Node::new(
            opts(id),
            2,
            Duration::ZERO,
            Restored {
                membership,
                configuration: None,
                peers: vec![None; 3],
                checkpoint: None,
                records: Vec::new(),
                sealed: Vec::new(),
            },
        )
    }

    fn joined(id: u32) -> Node {
        node(
            id,
            Membership::Joined {
                horizons: vec![0; 3],
            },
        )
    }

    fn put(client: u64) -> Command {
        Command {
            client: ClientId(client),
            request: RequestId(1),
            op: Op::Put {
                key: Bytes::from_static(b"k"),
                value: Bytes::from_static(b"v"),
            },
            time_ms: 0,
            retry: false,
        }
    }

    #[test]
    fn a_joining_node_takes_part_in_nothing() {
        let mut n = node(0, Membership::Joining);
        assert_eq!(n.propose(1, put(1)), Err(Refusal::Joining));
        n.tick(Duration::from_secs(10));
        n.flush(Duration::from_secs(10));
        let r = n.take_ready();
        assert!(r.core.messages.is_empty() && r.core.persist.is_empty());
        assert_eq!(
            n.snapshot_for(ReplicaId(1), Some(inc(5))).err(),
            Some(Refusal::Joining)
        );
        n.join_fresh();
        let r = n.take_ready();
        assert_eq!(
            r.membership,
            Some(Membership::Joined {
                horizons: vec![0; 3]
            })
        );
        assert!(n.propose(1, put(1)).is_ok(), "joined: it takes proposals");
    }

    /// The node's side of membership changes: refused while joining; a removed replica refuses
    /// clients naming the current members; a restart takes the configuration the shell kept
    /// when the log ends before the change; an id asking to Join before it is known counts
    /// live for the change that adds it.
    #[test]
    fn membership_changes_at_the_node() {
        use crate::core::epoch::{Change, Epoch, Member};
        let mut joining = node(0, Membership::Joining);
        assert_eq!(
            joining.propose_reconfigure(1, Change::Remove(ReplicaId(2)), Duration::ZERO),
            Err(ReconfigureRefusal::Joining)
        );
        // Replica 3 asked to Join before it is known: it counts live for the change adding it.
        let mut knocked = joined(0);
        knocked.answer_join(9, ReplicaId(3), Some(inc(3)));
        let _ = knocked.take_ready();
        let m3 = Member {
            id: ReplicaId(3),
            peer_addr: "h3:1".into(),
            client_addr: "h3:2".into(),
        };
        let late = knocked.replica().options().suspect_after * 2;
        knocked.tick(late);
        let _ = knocked.take_ready();
        assert_eq!(
            knocked.propose_reconfigure(1, Change::Add(m3), late),
            Err(ReconfigureRefusal::NoLiveMajority {
                members: vec![ReplicaId(0), ReplicaId(1), ReplicaId(2), ReplicaId(3)],
                live: vec![ReplicaId(0), ReplicaId(3)],
            }),
            "1 and 2 are suspected, 3 knocked"
        );
        let mut nodes = vec![joined(0), joined(1), joined(2)];
        let now = Duration::ZERO;
        nodes[1]
            .propose_reconfigure(5, Change::Remove(ReplicaId(0)), now)
            .expect("{1, 2} live");
        assert_eq!(settle(&mut nodes, now), vec![5]);
        assert!(nodes[0].removed() && !nodes[1].removed());
        assert_eq!(
            nodes[0].propose(1, put(1)),
            Err(Refusal::Removed {
                members: vec![ReplicaId(1), ReplicaId(2)]
            })
        );
        // The shell kept epoch 1 but the log lost the change: the record wins at the restart.
        let decided = nodes[1].configuration_members();
        assert_eq!(decided.configuration.epoch(), Epoch(1));
        let back = Node::new(
            opts(1),
            0,
            now,
            Restored {
                membership: Membership::Joined {
                    horizons: vec![0; 3],
                },
                configuration: Some(decided.clone()),
                peers: vec![None; 3],
                checkpoint: None,
                records: Vec::new(),
                sealed: Vec::new(),
            },
        );
        assert_eq!(*back.configuration(), decided.configuration);
        assert_eq!(back.configuration_members(), decided);
    }

    #[test]
    fn the_first_incarnation_heard_is_recorded_and_another_is_refused() {
        let mut n = joined(0);
        assert!(n.hear(ReplicaId(1), inc(7)));
        assert_eq!(
            n.take_ready().peers,
            Some(vec![None, Some(inc(7)), None]),
            "recorded durably"
        );
        assert!(n.hear(ReplicaId(1), inc(7)));
        assert!(n.take_ready().peers.is_none(), "nothing new to record");
        assert!(!n.would_hear(ReplicaId(1), inc(8)));
        assert!(!n.hear(ReplicaId(1), inc(8)));
        assert_eq!(
            n.take_ready().refused,
            vec![RefusedPeer {
                peer: ReplicaId(1),
                incarnation: inc(8),
                recorded: inc(7)
            }]
        );
        assert!(!n.hear(ReplicaId(9), inc(1)), "no such replica");
    }

    #[test]
    fn a_join_fences_the_old_incarnation_and_its_answer_waits_for_the_record() {
        let mut n = joined(0);
        assert!(n.hear(ReplicaId(2), inc(3)));
        let _ = n.take_ready();
        n.answer_join(40, ReplicaId(2), Some(inc(4)));
        let r = n.take_ready();
        assert_eq!(r.peers, Some(vec![None, None, Some(inc(4))]));
        let (token, answer) = &r.joins[0];
        assert_eq!(*token, 40);
        let answer = answer.as_ref().expect("answered");
        assert_eq!(answer.previous, Some(inc(3)));
        assert_eq!(answer.row_ends.len(), 3);
        // The same incarnation asking again (a retried join) is no earlier one: not a rejoin.
        n.answer_join(41, ReplicaId(2), Some(inc(4)));
        let r = n.take_ready();
        assert_eq!(r.peers, None, "nothing new to record");
        let again = r.joins[0].1.as_ref().expect("answered");
        assert_eq!(again.previous, None, "a retry of the same join");
        assert!(
            !n.hear(ReplicaId(2), inc(3)),
            "the old incarnation is fenced"
        );
        assert!(n.hear(ReplicaId(2), inc(4)));
        assert!(n.snapshot_for(ReplicaId(2), Some(inc(4))).is_ok());
        assert_eq!(
            n.snapshot_for(ReplicaId(2), Some(inc(3))).err(),
            Some(Refusal::NotJoined)
        );
        n.answer_join(41, ReplicaId(0), Some(inc(9)));
        n.answer_join(42, ReplicaId(1), None);
        let r = n.take_ready();
        assert_eq!(r.joins[0].1, Err(Refusal::BadJoin), "its own id");
        assert_eq!(r.joins[1].1, Err(Refusal::BadJoin), "no incarnation");
        assert!(r.peers.is_none());
    }

    /// The incarnation table is keyed by the rows known, not epoch 0's size: before a
    /// configuration adds id 3, its Join and batches are refused; after, it joins (its
    /// incarnation recorded, the answer over four rows) and is heard, and a restart keeps
    /// its entry.
    #[test]
    fn an_added_id_joins_and_is_heard_once_its_row_is_known() {
        let mut n = joined(0);
        assert_eq!(n.rows(), 3);
        n.answer_join(50, ReplicaId(3), Some(inc(5)));
        assert!(!n.hear(ReplicaId(3), inc(5)), "id 3 is not known yet");
        let r = n.take_ready();
        assert_eq!(r.joins[0].1, Err(Refusal::BadJoin));
        assert!(r.peers.is_none());
        let e1 = Configuration::new(
            crate::core::epoch::Epoch(1),
            (0..4).map(ReplicaId).collect(),
        )
        .expect("valid");
        assert!(n.replica.adopt_configuration(e1));
        assert_eq!(n.rows(), 4);
        n.answer_join(51, ReplicaId(3), Some(inc(5)));
        let r = n.take_ready();
        let answer = r.joins[0].1.as_ref().expect("answered");
        assert_eq!(answer.previous, None, "a fresh id");
        assert_eq!(answer.row_ends.len(), 4, "every row known");
        assert_eq!(r.peers, Some(vec![None, None, None, Some(inc(5))]));
        assert!(n.hear(ReplicaId(3), inc(5)));
        assert!(!n.hear(ReplicaId(3), inc(6)), "fenced like any peer");
        assert!(!n.hear(ReplicaId(4), inc(1)), "id 4 is not known");
        // The recorded table comes back longer than epoch 0's size: nothing is cut off.
        let back = Node::new(
            opts(0),
            2,
            Duration::ZERO,
            Restored {
                membership: Membership::Joined {
                    horizons: vec![0; 3],
                },
                peers: vec![None, None, None, Some(inc(5))],
                configuration: None,
                checkpoint: None,
                records: Vec::new(),
                sealed: Vec::new(),
            },
        );
        assert_eq!(back.peer_incarnation(ReplicaId(3)), Some(inc(5)));
        assert!(!back.would_hear(ReplicaId(3), inc(6)), "the fence survives");
    }

    #[test]
    fn a_snapshot_is_installed_with_the_row_continuing_at_its_horizon() {
        let source = joined(1);
        let (encoded, records) = source.replica().snapshot();
        let checkpoint = Checkpoint::decode(&encoded, 3).expect("decodes");
        let mut n = node(0, Membership::Joining);
        n.join_from_snapshot(
            Duration::ZERO,
            Epoch(0),
            vec![12, 3, 0],
            checkpoint,
            records,
        );
        let r = n.take_ready();
        assert!(r.install.is_some(), "written as its checkpoint and log");
        assert_eq!(
            r.membership,
            Some(Membership::Joined {
                horizons: vec![12, 3, 0]
            })
        );
        assert!(n.replica().abstaining(), "rows 0 and 1 not known committed");
        n.propose(1, put(1)).expect("takes part");
        n.flush(Duration::ZERO);
        let r = n.take_ready();
        assert_eq!(r.core.persist[0].0, InstanceId::new(ReplicaId(0), 12));
    }

    /// Delivers every message until none is left, hearing each sender's incarnation `id + 1`;
    /// returns the tokens answered.
    fn settle(nodes: &mut [Node], now: Time) -> Vec<Token> {
        settle_without(nodes, now, None)
    }

    /// [`settle`] with replica `down` cut off: what it sends and what is sent to it is lost.
    fn settle_without(nodes: &mut [Node], now: Time, down: Option<usize>) -> Vec<Token> {
        let mut answered = Vec::new();
        for _ in 0..100 {
            let mut sent = false;
            for from in 0..nodes.len() {
                nodes[from].flush(now);
                let ready = nodes[from].take_ready();
                answered.extend(ready.core.replies.iter().map(|r| r.token));
                if down == Some(from) {
                    continue;
                }
                for out in ready.core.messages {
                    for to in out.to {
                        // (An id beyond `nodes`: a member no test node plays.)
                        if down == Some(to.index()) || to.index() >= nodes.len() {
                            continue;
                        }
                        sent = true;
                        let peer = ReplicaId(from as u32);
                        let node = &mut nodes[to.index()];
                        assert!(node.hear(peer, inc(from as u64 + 1)));
                        node.handle(now, peer, out.msg.clone());
                        node.flush(now);
                    }
                }
            }
            if !sent {
                return answered;
            }
        }
        panic!("messages still flow after 100 rounds");
    }

    #[test]
    fn a_client_that_gave_up_leaves_nothing_behind() {
        let mut opts = opts(0);
        opts.inflight_max = 1;
        opts.batch_max = 1;
        let restored = || Restored {
            membership: Membership::Joined {
                horizons: vec![0; 3],
            },
            peers: vec![None; 3],
            configuration: None,
            checkpoint: None,
            records: Vec::new(),
            sealed: Vec::new(),
        };
        let mut nodes = vec![
            Node::new(opts, 0, Duration::ZERO, restored()),
            joined(1),
            joined(2),
        ];
        let now = Duration::ZERO;
        // Token 1 goes alone into the one instance allowed in flight; 2 and 3 wait.
        for token in 1..=3 {
            nodes[0].propose(token, put(token)).expect("room");
        }
        nodes[0].flush(now);
        assert_eq!(nodes[0].replica().pending(), 2);
        // Clients 1 (in flight) and 2 (pending) give up; 3 still waits.
        nodes[0].forget(1, (ClientId(1), RequestId(1)));
        nodes[0].forget(2, (ClientId(2), RequestId(1)));
        nodes[0].flush(now);
        assert_eq!(
            nodes[0].replica().pending(),
            1,
            "client 2's command dropped"
        );
        let answered = settle(&mut nodes, now);
        assert_eq!(
            answered,
            vec![3],
            "only the client still waiting is answered"
        );
        let kv = nodes[0].replica().kv();
        assert_eq!(
            kv.executed(),
            2,
            "client 1's command executed anyway, 2's never"
        );
        assert_eq!(nodes[0].replica().pending(), 0);
    }

    /// A node of replica 0 restored from `records` (no checkpoint).
    fn restored(o: Options, records: Vec<(InstanceId, Instance)>) -> Node {
        Node::new(
            o,
            0,
            Duration::ZERO,
            Restored {
                membership: Membership::Joined {
                    horizons: vec![0; 3],
                },
                peers: vec![None; 3],
                configuration: None,
                checkpoint: None,
                records,
                sealed: Vec::new(),
            },
        )
    }

    /// A shell that syncs in a pipeline says how far its disk got with the `slot_end` of the
    /// last `Ready` it made durable: later Readies' slots still count against the window.
    #[test]
    fn persisted_through_frees_only_the_slots_of_the_readies_made_durable() {
        use crate::core::limits::OWN_SLOTS_UNSYNCED_MAX as WINDOW;
        let mut o = opts(0);
        o.inflight_max = 100;
        o.batch_max = 1;
        let mut n = restored(o, Vec::new());
        for client in 1..=3 * WINDOW {
            n.propose(client, put(client)).expect("room");
        }
        n.flush(Duration::ZERO);
        let first = n.take_ready();
        assert_eq!(first.core.persist.len() as u64, WINDOW);
        assert_eq!(first.core.slot_end, WINDOW);
        // The first Ready is durable: its window frees, and the next Ready is taken.
        n.persisted_through(first.core.slot_end);
        n.flush(Duration::ZERO);
        let second = n.take_ready();
        assert_eq!(second.core.persist.len() as u64, WINDOW);
        assert_eq!(second.core.slot_end, 2 * WINDOW);
        // The disk reports the first again (the second is still being written): nothing new.
        n.persisted_through(first.core.slot_end);
        n.flush(Duration::ZERO);
        assert!(
            n.take_ready().core.persist.is_empty(),
            "second not durable yet"
        );
        // A mark beyond what was taken claims no more than was taken.
        n.persisted_through(u64::MAX);
        n.flush(Duration::ZERO);
        let third = n.take_ready();
        assert_eq!(third.core.persist.len() as u64, WINDOW);
        assert_eq!(third.core.slot_end, 3 * WINDOW);
    }

    #[test]
    fn new_instances_stay_within_the_unsynced_window_and_a_restart_skips_it() {
        use crate::core::limits::OWN_SLOTS_UNSYNCED_MAX as WINDOW;
        let mut o = opts(0);
        o.inflight_max = 100;
        o.batch_max = 1;
        let mut n = restored(o.clone(), Vec::new());
        for client in 1..=WINDOW + 4 {
            n.propose(client, put(client)).expect("room");
        }
        n.flush(Duration::ZERO);
        let first = n.take_ready();
        assert_eq!(first.core.persist.len() as u64, WINDOW);
        assert_eq!(
            first.core.early as u64, WINDOW,
            "one early PreAccept per instance"
        );
        assert!(first.core.messages[..first.core.early]
            .iter()
            .all(|o| matches!(o.msg, Message::PreAccept { .. })));
        n.flush(Duration::ZERO);
        assert!(
            n.take_ready().core.persist.is_empty(),
            "no more before those records are known durable"
        );
        n.persisted();
        n.flush(Duration::ZERO);
        let second = n.take_ready();
        assert_eq!(second.core.persist.len(), 4, "the rest once they are");
        assert_eq!(second.core.slot_end, WINDOW + 4);
        // A crash loses the second batch of records (its PreAccepts had left): the restart
        // skips a whole window past what the disk holds and has the skipped slots recovered.
        let mut back = restored(o, first.core.persist);
        back.restarted(Duration::ZERO);
        let _ = back.take_ready();
        back.propose(99, put(99)).expect("room");
        back.flush(Duration::ZERO);
        let ready = back.take_ready();
        assert_eq!(
            ready.core.persist[0].0,
            InstanceId::new(ReplicaId(0), 2 * WINDOW),
            "never a slot the lost PreAccepts used"
        );
        back.tick(Duration::ZERO);
        let recovering: Vec<u64> = back
            .take_ready()
            .core
            .messages
            .iter()
            .filter_map(|o| match o.msg {
                Message::Recover { instance, .. } => Some(instance.slot),
                _ => None,
            })
            .collect();
        assert_eq!(recovering, (WINDOW..2 * WINDOW).collect::<Vec<u64>>());
    }

    #[test]
    fn pending_commands_are_bounded_in_bytes_too() {
        let mut o = opts(0);
        o.pending_bytes_max = 3;
        let mut n = Node::new(
            o,
            0,
            Duration::ZERO,
            Restored {
                membership: Membership::Joined {
                    horizons: vec![0; 3],
                },
                peers: vec![None; 3],
                configuration: None,
                checkpoint: None,
                records: Vec::new(),
                sealed: Vec::new(),
            },
        );
        // Each put is 2 bytes ("k" and "v"): the first always fits, the second would make 4.
        n.propose(1, put(1))
            .expect("an empty queue takes any command");
        assert!(matches!(n.propose(2, put(2)), Err(Refusal::Overloaded(_))));
        n.flush(Duration::ZERO);
        n.check_invariants().expect("byte count kept");
        n.propose(3, put(3))
            .expect("room again once the batch left");
    }

    #[test]
    fn checkpoints_follow_the_collected_count_one_at_a_time() {
        let mut nodes: Vec<Node> = (0..3).map(joined).collect();
        assert!(
            nodes[0].poll_checkpoint().is_none(),
            "nothing collected yet"
        );
        let mut now = Duration::ZERO;
        for client in 1..=6 {
            nodes[0].propose(client, put(client)).expect("room");
            nodes[0].flush(now);
            let _ = settle(&mut nodes, now);
        }
        // Watermarks tell each replica what the others executed; then it collects.
        for _ in 0..3 {
            now += Duration::from_secs(2);
            for n in nodes.iter_mut() {
                n.tick(now);
            }
            let _ = settle(&mut nodes, now);
        }
        let collected = nodes[0].replica().collected();
        assert!(collected >= 2, "collected {collected}");
        let job = nodes[0].poll_checkpoint().expect("2 more collected");
        assert!(!job.checkpoint.is_empty());
        assert!(
            job.records.len() < 6,
            "the collected instances left the log"
        );
        assert!(
            nodes[0].poll_checkpoint().is_none(),
            "one checkpoint at a time"
        );
        nodes[0].checkpoint_written();
        assert!(
            nodes[0].poll_checkpoint().is_none(),
            "nothing collected since"
        );
        let mut never = joined(0);
        never.checkpoint_every = 0;
        assert!(never.poll_checkpoint().is_none());
    }

    fn put_key(client: u64, key: &str) -> Command {
        let mut cmd = put(client);
        cmd.op = Op::Put {
            key: Bytes::copy_from_slice(key.as_bytes()),
            value: Bytes::from_static(b"v"),
        };
        cmd
    }

    /// Three nodes with a retention of `retention` instances per row.
    fn retaining(retention: u64) -> Vec<Node> {
        (0..3)
            .map(|id| {
                let mut o = opts(id);
                o.retention_instances = retention;
                Node::new(
                    o,
                    4,
                    Duration::ZERO,
                    Restored {
                        membership: Membership::Joined {
                            horizons: vec![0; 3],
                        },
                        peers: vec![None; 3],
                        configuration: None,
                        checkpoint: None,
                        records: Vec::new(),
                        sealed: Vec::new(),
                    },
                )
            })
            .collect()
    }

    /// Runs `puts` puts through r0 with r2 cut off, then lets Watermarks flow for a while.
    fn load_without_r2(nodes: &mut [Node], puts: u64, mut now: Time) -> Time {
        for client in 1..=puts {
            nodes[0]
                .propose(client, put_key(client, &format!("k{client}")))
                .expect("room");
            nodes[0].flush(now);
            let _ = settle_without(nodes, now, Some(2));
        }
        for _ in 0..3 {
            now += Duration::from_secs(2);
            for n in nodes.iter_mut() {
                n.tick(now);
            }
            let _ = settle_without(nodes, now, Some(2));
        }
        now
    }

    #[test]
    fn survivors_collect_past_a_member_down_beyond_the_retention_only() {
        let mut nodes = retaining(3);
        let now = load_without_r2(&mut nodes, 10, Duration::ZERO);
        for n in &nodes[..2] {
            assert_eq!(n.replica().kv().executed(), 10);
            assert_eq!(
                n.replica().collected_prefix(),
                &[7, 0, 0],
                "a majority executed r0's row up to 10: all but the last 3 collected"
            );
            assert_eq!(n.replica().instances_in_memory(), 3);
        }
        // Without the retention rule nothing would be collected: r2 executed nothing.
        let mut patient = retaining(1000);
        let _ = load_without_r2(&mut patient, 10, now);
        assert_eq!(patient[0].replica().collected_prefix(), &[0, 0, 0]);
    }

    #[test]
    fn a_member_left_behind_installs_a_snapshot_and_keeps_its_own_votes() {
        let mut nodes = retaining(3);
        // r2 pre-accepts an instance of its own that nobody else sees before it is cut off.
        nodes[2].propose(100, put_key(100, "mine")).expect("room");
        nodes[2].flush(Duration::ZERO);
        let own = nodes[2].take_ready();
        assert_eq!(own.core.persist.len(), 1);
        let mut now = load_without_r2(&mut nodes, 10, Duration::ZERO);
        assert!(nodes[2].catching_up().is_none(), "it has heard nothing yet");
        // r2 returns: r0's Watermark says r0 collected what r2 never executed.
        now += Duration::from_secs(2);
        nodes[0].tick(now);
        let ready = nodes[0].take_ready();
        for out in ready.core.messages {
            if out.to.contains(&ReplicaId(2)) {
                assert!(nodes[2].hear(ReplicaId(0), inc(1)));
                nodes[2].handle(now, ReplicaId(0), out.msg.clone());
            }
        }
        assert_eq!(nodes[2].catching_up(), Some(ReplicaId(0)));
        assert_eq!(
            nodes[2].propose(101, put_key(101, "x")),
            Err(Refusal::CatchingUp)
        );
        assert!(nodes[2].poll_checkpoint().is_none());
        let _ = nodes[2].take_ready();
        // The shell fetches r0's snapshot (fenced by the incarnation r0 recorded for r2).
        assert!(nodes[0].hear(ReplicaId(2), inc(3)));
        let image = nodes[0]
            .snapshot_for(ReplicaId(2), Some(inc(3)))
            .expect("r2's incarnation is the one r0 records");
        let checkpoint = Checkpoint::decode(&image.checkpoint, 3).expect("decodes");
        nodes[2].install_caught_up(now, checkpoint, image.records);
        assert!(nodes[2].catching_up().is_none());
        let r = nodes[2].take_ready();
        let installed = r.install.expect("written as its checkpoint and log");
        assert!(r.membership.is_none(), "its membership does not change");
        let mine = InstanceId::new(ReplicaId(2), 0);
        assert!(
            installed.records.iter().any(|(id, _)| *id == mine),
            "its own pre-accepted instance is kept"
        );
        assert!(
            r.core
                .messages
                .iter()
                .any(|o| matches!(o.msg, Message::PreAccept { instance, .. } if instance == mine)),
            "and it goes on leading it"
        );
        assert_eq!(
            nodes[2].replica().kv().digest(),
            nodes[0].replica().kv().digest()
        );
        // From then on it takes part: its own instance commits and executes everywhere.
        for n in nodes.iter_mut() {
            n.tick(now);
        }
        for out in r.core.messages {
            for to in out.to {
                nodes[to.index()].handle(now, ReplicaId(2), out.msg.clone());
            }
        }
        let _ = settle(&mut nodes, now);
        for n in &nodes {
            n.check_invariants().expect("invariants");
            assert_eq!(n.replica().kv().executed(), 11);
        }
        assert_eq!(
            nodes[2].replica().kv().digest(),
            nodes[1].replica().kv().digest()
        );
    }

    #[test]
    #[cfg(feature = "sabotage")]
    fn a_member_that_ignores_being_left_behind_never_catches_up() {
        let mut nodes = retaining(3);
        let mut o = opts(2);
        o.retention_instances = 3;
        o.sabotage.ignore_collected = true;
        nodes[2] = Node::new(
            o,
            4,
            Duration::ZERO,
            Restored {
                membership: Membership::Joined {
                    horizons: vec![0; 3],
                },
                peers: vec![None; 3],
                configuration: None,
                checkpoint: None,
                records: Vec::new(),
                sealed: Vec::new(),
            },
        );
        let mut now = load_without_r2(&mut nodes, 10, Duration::ZERO);
        for _ in 0..5 {
            now += Duration::from_secs(2);
            for n in nodes.iter_mut() {
                n.tick(now);
            }
            let _ = settle(&mut nodes, now);
        }
        assert!(nodes[2].catching_up().is_none());
        assert!(
            nodes[2].replica().kv().executed() < 10,
            "the Commits it lacks are gone: it never executes them"
        );
    }

    // ---- an added member (issue 15) -----------------------------------------------------

    /// The Joins of replica 3's incarnation `inc` answered by the members of `nodes[0]`'s
    /// configuration (the shell's JoinReply carries it), and the snapshot the `Joiner`'s
    /// decision names, installed into a new joining node.
    fn join_added(nodes: &mut [Node], incarnation: u64, now: Time) -> Node {
        use crate::core::membership::{JoinDecision, Joiner};
        let me = ReplicaId(3);
        let configuration = nodes[0].configuration().clone();
        let mut joiner = Joiner::of(me, configuration.clone(), false);
        for p in configuration.members().iter().filter(|p| **p != me) {
            nodes[p.index()].answer_join(1, me, Some(inc(incarnation)));
            let ready = nodes[p.index()].take_ready();
            let answer = ready.joins[0].1.clone().expect("a member answers");
            joiner.answered(*p, answer).expect("well formed");
        }
        let Some(JoinDecision::Rejoin { horizons, sources }) = joiner.decision() else {
            panic!("every member answered: {:?}", joiner.decision());
        };
        let image = nodes[sources[0].index()]
            .snapshot_for(me, Some(inc(incarnation)))
            .expect("the source answered this incarnation's Join");
        let checkpoint = Checkpoint::decode(&image.checkpoint, 3).expect("decodes");
        let mut added = node(3, Membership::Joining);
        added.join_from_snapshot(
            now,
            configuration.epoch(),
            horizons,
            checkpoint,
            image.records,
        );
        added
    }

    /// Whether `n` sent a PreAccept of an instance of its own.
    fn leads(ready: &Ready, me: u32) -> bool {
        ready.core.messages.iter().any(|o| {
            matches!(o.msg, Message::PreAccept { instance, .. } if instance.replica == ReplicaId(me))
        })
    }

    /// The add path of `docs/membership.md`: replica 3 (an id beyond epoch 0's three) knocks
    /// and is refused; a change adds it; it joins from a peer's snapshot in epoch 1, votes at
    /// once (with r2 down, epoch 1's quorum of three needs it), and leads nothing before it
    /// learnt the boundary of epoch 0 from a majority of epoch 0's members.
    #[test]
    fn an_added_member_votes_at_once_and_leads_once_it_learnt_the_boundary() {
        use crate::core::epoch::{Change, Epoch, Member};
        let mut nodes = vec![joined(0), joined(1), joined(2)];
        let now = Duration::ZERO;
        nodes[0].propose(10, put(10)).expect("room");
        assert_eq!(settle(&mut nodes, now), vec![10]);
        // Not a member yet: refused, and remembered as knocking.
        nodes[0].answer_join(1, ReplicaId(3), Some(inc(4)));
        assert_eq!(nodes[0].take_ready().joins[0].1, Err(Refusal::BadJoin));
        let m3 = Member {
            id: ReplicaId(3),
            peer_addr: "h3:1".into(),
            client_addr: "h3:2".into(),
        };
        nodes[0]
            .propose_reconfigure(11, Change::Add(m3), now)
            .expect("0, 1, 2 live and 3 knocking");
        assert_eq!(settle(&mut nodes, now), vec![11]);
        let mut added = join_added(&mut nodes, 4, now);
        let r = added.take_ready();
        assert!(
            r.install.is_some(),
            "the snapshot is its checkpoint and log"
        );
        assert_eq!(
            r.membership,
            Some(Membership::Joined {
                horizons: vec![0; 4]
            })
        );
        assert_eq!(added.configuration().epoch(), Epoch(1));
        assert_eq!(
            added.replica().kv().executed(),
            nodes[0].replica().kv().executed()
        );
        assert_eq!(
            added.replica().kv().digest(),
            nodes[0].replica().kv().digest()
        );
        assert!(
            added.replica().seals().is_empty(),
            "never a member of epoch 0"
        );
        assert!(!added.replica().may_start_instances());
        // Its own proposal waits for the boundary.
        added
            .propose(12, put(12))
            .expect("joined: it takes proposals");
        added.flush(now);
        assert!(
            !leads(&added.take_ready(), 3),
            "nothing led before B is known"
        );
        nodes.push(added);
        // r2 is down: epoch 1 = {0, 1, 2, 3} needs three, so r0's write commits only with r3's
        // vote; r3 learns B from r0 and r1 (two of epoch 0's three) on its next query.
        nodes[0].propose(13, put(13)).expect("room");
        let later = Duration::from_secs(1);
        nodes[3].tick(now);
        nodes[3].tick(later);
        let mut answered = settle_without(&mut nodes, later, Some(2));
        answered.sort_unstable();
        assert_eq!(answered, vec![12, 13], "both writes commit without r2");
        assert_eq!(nodes[3].replica().boundary().map(|b| b.0), Some(Epoch(0)));
        assert!(nodes[3].replica().may_start_instances());
        let own = InstanceId::new(ReplicaId(3), 0);
        let inst = nodes[0].replica().instance(own).expect("r3 led it");
        assert_eq!(inst.epoch, Epoch(1));
        for n in &nodes {
            n.check_invariants().expect("invariants");
        }
        assert_eq!(
            nodes[3].replica().kv().digest(),
            nodes[0].replica().kv().digest()
        );
    }

    /// An added member restarts from its own disk (the installed snapshot as its checkpoint,
    /// no seal): it comes back in epoch 1, votes, and learns the boundary again before it leads.
    /// Wiped later, its new incarnation rejoins (every member answers, horizons from their row
    /// ends) and again leads only once it learnt the boundary, continuing its row at its
    /// horizon.
    #[test]
    fn an_added_member_restarted_or_wiped_learns_the_boundary_again() {
        use crate::core::epoch::{Change, Epoch, Member};
        let mut nodes = vec![joined(0), joined(1), joined(2)];
        let now = Duration::ZERO;
        nodes[0].answer_join(1, ReplicaId(3), Some(inc(4)));
        let _ = nodes[0].take_ready();
        let m3 = Member {
            id: ReplicaId(3),
            peer_addr: "h3:1".into(),
            client_addr: "h3:2".into(),
        };
        nodes[0]
            .propose_reconfigure(11, Change::Add(m3), now)
            .expect("live");
        assert_eq!(settle(&mut nodes, now), vec![11]);
        let mut added = join_added(&mut nodes, 4, now);
        let disk = added.take_ready().install.expect("installed");
        // The restart, from that disk.
        let mut back = Node::new(
            opts(3),
            2,
            now,
            Restored {
                membership: Membership::Joined {
                    horizons: vec![0; 4],
                },
                configuration: None,
                peers: vec![None; 4],
                checkpoint: Some(Checkpoint::decode(&disk.checkpoint, 3).expect("decodes")),
                records: disk.records,
                sealed: Vec::new(),
            },
        );
        back.restarted(now);
        assert_eq!(back.configuration().epoch(), Epoch(1));
        assert!(!back.replica().may_start_instances(), "B is learnt again");
        back.propose(12, put(12)).expect("room");
        back.flush(now);
        let r = back.take_ready();
        assert!(!leads(&r, 3));
        nodes.push(back);
        // Its query goes out (restoring sent it); the answers let it lead.
        for out in r.core.messages {
            for to in out.to {
                assert!(nodes[to.index()].hear(ReplicaId(3), inc(4)));
                nodes[to.index()].handle(now, ReplicaId(3), out.msg.clone());
            }
        }
        assert_eq!(settle(&mut nodes, now), vec![12]);
        assert!(nodes[3].replica().may_start_instances());
        let row_end = nodes[0]
            .replica()
            .instances()
            .filter(|(id, _)| id.replica == ReplicaId(3))
            .map(|(id, _)| id.slot + 1)
            .max()
            .expect("r3 led an instance");
        // Wiped: a new incarnation; every member knew the old one.
        let mut fresh = join_added(&mut nodes, 5, now);
        let r = fresh.take_ready();
        let Some(Membership::Joined { horizons }) = r.membership else {
            panic!("joined");
        };
        assert!(horizons[3] >= row_end, "its row continues at its horizon");
        assert!(!fresh.replica().may_start_instances());
        fresh.propose(14, put(14)).expect("room");
        fresh.flush(now);
        assert!(!leads(&fresh.take_ready(), 3));
        nodes[3] = fresh;
        let later = Duration::from_secs(1);
        nodes[3].tick(now);
        nodes[3].tick(later);
        // The peers hear only the new incarnation from now on.
        // Time passes: the slots the restart skipped end as no-ops by recovery.
        let mut answered = Vec::new();
        for step in 0..2_000u64 {
            let later = later + Duration::from_millis(10 * (step / 10));
            if step % 10 == 0 {
                for n in nodes.iter_mut() {
                    n.tick(later);
                }
            }
            let mut sent = false;
            for from in 0..nodes.len() {
                nodes[from].flush(later);
                let ready = nodes[from].take_ready();
                answered.extend(ready.core.replies.iter().map(|r| r.token));
                for out in ready.core.messages {
                    for to in out.to {
                        sent = true;
                        let peer = ReplicaId(from as u32);
                        let i = if from == 3 { 5 } else { from as u64 + 1 };
                        assert!(nodes[to.index()].hear(peer, inc(i)));
                        nodes[to.index()].handle(later, peer, out.msg.clone());
                    }
                }
            }
            if !sent && !answered.is_empty() {
                break;
            }
        }
        assert_eq!(answered, vec![14]);
        let led = InstanceId::new(ReplicaId(3), horizons[3]);
        assert!(
            nodes[0].replica().instance(led).is_some(),
            "led at its horizon"
        );
        for n in &nodes {
            n.check_invariants().expect("invariants");
        }
    }
}
