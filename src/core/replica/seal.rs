//! Sealing an old epoch, deciding its boundary, and covering it (issue 15; the long form is
//! "The epoch boundary" in `docs/membership.md`).
//!
//! The danger: an old-epoch instance `y` and a new-epoch instance `x` that interfere may be
//! decided by quorums of two configurations that do not meet, so neither depends on the other
//! and replicas may execute them in two orders. Three rules prevent it:
//!
//! 1. **Sealing** (`seal_epoch`, when a replica executes the change that ends epoch `e`): it
//!    records, durably (`Ready::sealed`, given back at start), `sealed[r]`: one past the highest
//!    slot of row `r` of an epoch-`e` instance it holds (or held: committed, collected, its own
//!    next slot). From then on it votes on no epoch-`e` instance `(r, k)` with
//!    `k >= max(sealed[r], B[r])` (`B` the decided boundary below, once it knows it): no
//!    PreAcceptOk, no AcceptOk for a command, no Validate record; it answers a Nack instead
//!    (`refuse_above_seal`). It still answers Recover and accepts no-ops, so every old
//!    instance can finish.
//! 2. **The boundary, decided once** (`BoundaryPrepare` ... `BoundaryDecided`): `B` is chosen
//!    by single-decree Paxos whose acceptors are `e`'s members, and whose proposers are all
//!    that need `B` (members of `e`, and members the change added). Ballots are (round,
//!    replica). Phase 1: an acceptor that sealed `e` promises the ballot (stored before the
//!    answer leaves) and answers its seal and the value it accepted last; one that did not
//!    seal yet answers its Watermark (the asker sends the Commits it lacks, the change among
//!    them). With a majority of promises the proposer proposes the value accepted at the
//!    highest ballot, if any, else the per-row maximum of the majority's seals. Phase 2: a
//!    majority accepting it decides it; the proposer tells the old and new members
//!    (`BoundaryDecided`), and an acceptor that knows the decision answers any later round
//!    with it. Before it knows `B` a replica starts no instance of `e+1`
//!    (`may_start_instances`).
//! 3. **Covering**: every epoch-`e+1` instance's deps, initial ones at the leader and those any
//!    replica computes when it votes, cover every row `r` up to `B[r]` (the rejoin horizons'
//!    rule, `cover_up_to`), until this replica knows row `r` committed up to `B[r]`.
//!
//! *Why one `B`.* Every value Paxos accepts is either the maximum of some majority's seals or
//! a value accepted before (by induction: so computed), and once a majority accepted a value
//! at ballot `b`, every higher round's phase 1 meets that majority and proposes it again. So
//! every replica that knows `B` knows the same `B`, computed from the seals of some majority
//! `S` of `e`. Reading `B` from *some* majority, as this module first did, gave no such thing:
//! r1 may seal holding `y` and r2 without it; a reader of {r1, r2} gets a `B` above `y`, a
//! reader of {r0, r2} one below (`two_learners_of_different_majorities` in the tests).
//!
//! *Why it is safe.* An epoch-`e` instance `y = (r, k)` that commits with a command was voted
//! for by a majority `Q` of `e` (a fast quorum is one too). If some vote in `Q` was given
//! because `k < B[r]` (a sealed voter that knows `B`), then `k < B[r]`. Otherwise every vote in
//! `Q` was given before its voter sealed or below its own seal, and `Q` meets `S` in some `s`:
//! if `s` voted before sealing, it held `y` then, so `k < sealed_s[r] <= B[r]`; after sealing
//! it voted only if `k < sealed_s[r]`. So `k < B[r]` in every case: every new-epoch instance
//! `x` depends on `y` (through the cover while `y` is not known committed here, through the
//! conflict index once it is, as for any committed instance), and the two are never left
//! unordered. Voting below a `B` merely read would break the first case: the reader's `B` may
//! lie above `y` while another replica's does not, and that one's `x` would not cover `y`
//! (the sabotage `vote_below_read_boundary`). Instances of `e` at or above `B` end as no-ops;
//! their leaders propose the commands again (`commands_changed`), in `e+1` once they executed
//! the change, and the session table absorbs a command that also survived elsewhere.
//!
//! *Retirement.* Row `r`'s cover stops once this replica knows the row committed up to `B[r]`:
//! from then on its conflict index holds every instance there with its commands, so the deps it
//! computes name the interfering ones anyway.
//!
//! *Why only instances held, not slots named in deps.* The claim needs `sealed_s` to exceed every
//! instance `s` voted on, which it held. Slots named only in deps may be of the new epoch (a
//! replica that sealed earlier votes on old instances with new ones in their deps): a boundary
//! above a row's first new-epoch slot would make that row's leader's new instances depend on
//! themselves. At sealing a replica holds no instance of `e+1` (it refused every message of an
//! epoch it had not learnt).
//!
//! *Liveness.* An old instance `y` above the survivors' seals but held by one of them (seed
//! 1459 of `random_seeds_with_removals`: r4 leads `y`, r0 alone pre-accepts it, everyone but
//! the dead r1 seals, r2 and r3 without `y`, r4 dies) may have committed on the fast path with
//! {r4, r0, r1} as far as the survivors can tell, so recovery must accept its command; with
//! votes only below their own seals r2 and r3 refused it forever. Every majority of the
//! survivors' promises holds r0's seal, so `B` lies above `y`, and r2 and r3 now vote on it.
//! The other way round (seed 6324 of `random_seeds_with_changes`): if `B` was decided without
//! r0 (cut off meanwhile), `y` lies above it, so it cannot have committed a command (see "Why
//! it is safe"); a recovery that knows `B` ends it as a no-op (`above_decided_boundary`), where
//! the answers alone would have it validate a possible fast path forever, refused by every
//! survivor sealed below `y`. Paxos rounds: an acceptor's Nack (a higher promise) ends the round; the next starts after a
//! doubling backoff, capped at `retry_max`, above every round seen; a due round still under
//! way is asked again of those that did not answer. The decision's broadcast ends everyone's
//! rounds. A member that never executed the change seals once a snapshot brings it past it
//! (`seal_missed_boundary`).
//!
//! *Durability.* The promise, the value accepted and the decision live in the seal
//! (`Seal::promised`, `accepted`, `decided`), stored through `Ready::sealed` before anything of
//! that `Ready` leaves.
//!
//! *A wiped acceptor is fenced.* A replica that lost its disk forgot its promises and what it
//! accepted; were it to seal an epoch again (a snapshot bringing it past a change late, or
//! executing again a change its old incarnation executed) it would promise afresh, and a new
//! majority with it could decide a second boundary while the first is forgotten (the usual
//! Paxos caveat on lost acceptor state; in the tests,
//! `sabotage_a_wiped_acceptor_that_promised_afresh_decides_a_second_boundary`). The rule
//! (`fence_rejoined`): a replica that rejoined in the configuration of epoch `F` is an
//! acceptor only for the boundaries of epochs `F` and later. For every older epoch it answers
//! a Prepare or Accept only with a decided boundary it learnt (a fact anyone may repeat), else
//! not at all; it still proposes (it learns `B` like an added member). The fence is a stored
//! seal of epoch `F - 1` that has promised the top round (`FENCE_ROUND`), which no round can
//! exceed, and no epoch older than a seal kept is sealed again (`seal_epoch`); so it survives
//! restarts in the seals' own record.
//!
//! Why `F` itself needs no fence: the join settles on the newest configuration its peers know
//! and a rejoin waits for every member of it. Had the old incarnation promised in a round of
//! `F`'s boundary other than its own, a member of `F` would have sealed `F`, so executed the
//! change ending it, and the join would have settled on the later epoch. Its own round's
//! promise is harmless: with no other sealed member no value was accepted anywhere.
//!
//! Why it is safe: the safety argument above needs only that `S`, the majority whose seals
//! make `B`, be acceptors that kept their state; a fenced replica is in no `S`. Its votes on
//! old instances do not matter either: any majority `Q` that voted meets `S` in a member that
//! kept its seal. Why it is live: the other members of the epoch are a majority of it whenever
//! the wiped one counts as a failure (n = 3, one wiped: the two others decide `B`), as the
//! horizons ask of instance votes (`rejoin`); a wipe while the boundary of `F - 1` is not
//! decided counts against that epoch's F too (a two-member epoch has none: the simulator
//! skips such a wipe, as it skips one beyond F).

use std::time::Duration;

use super::{Replica, Time};
use crate::core::deps::Deps;
use crate::core::epoch::{Configuration, Epoch};
use crate::core::ids::{Ballot, InstanceId, ReplicaId, SLOT_LIMIT};
use crate::core::limits::SEALS_KEPT_MAX;
use crate::core::message::Message;

/// The promise of a fenced acceptor (see the module doc, "A wiped acceptor is fenced"): the top
/// round, above every ballot a proposer can use, so it takes part in no round; never sent.
const FENCE_ROUND: u32 = u32::MAX;

/// A replica's seal of an epoch: per row, one past the highest slot of an instance of that
/// epoch it held when it left the epoch; and its part, as an acceptor, in deciding the epoch's
/// boundary. What the shell stores (see `Ready::sealed`) before any answer revealing it leaves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seal {
    pub epoch: Epoch,
    pub ends: Vec<u64>,
    /// The highest boundary ballot promised: no Prepare or Accept below it is answered.
    pub promised: Option<Ballot>,
    /// The boundary accepted last, with its ballot.
    pub accepted: Option<(Ballot, Vec<u64>)>,
    /// The decided boundary, once known here.
    pub decided: Option<Vec<u64>>,
}

impl Seal {
    /// A seal of `epoch` at `ends`, nothing promised, accepted or decided yet.
    pub fn new(epoch: Epoch, ends: Vec<u64>) -> Self {
        Seal {
            epoch,
            ends,
            promised: None,
            accepted: None,
            decided: None,
        }
    }

    /// Whether this seal is a wiped replica's fence: it promised the top round, no Prepare or
    /// Accept gets an answer but the decided boundary.
    pub fn fenced(&self) -> bool {
        self.promised.is_some_and(|p| p.round == FENCE_ROUND)
    }

    /// Whether a vote on `id` (an instance of this seal's epoch) is refused: at or above both
    /// the row's end and the decided boundary's (a row either lacks had no instance there).
    fn refuses(&self, id: InstanceId) -> bool {
        let row = id.replica.index();
        let end = self.ends.get(row).copied().unwrap_or(0);
        let decided = self.decided.as_ref().and_then(|d| d.get(row).copied());
        id.slot >= end.max(decided.unwrap_or(0))
    }
}

/// The seals this replica keeps and the boundary it learns.
#[derive(Debug, Default)]
pub(super) struct Seals {
    /// Oldest first, epochs increasing, at most `SEALS_KEPT_MAX`.
    kept: Vec<Seal>,
    /// The boundary of the last epoch this replica left.
    boundary: Option<Boundary>,
}

/// Learning (then knowing) the boundary of an epoch this replica left, as a proposer.
#[derive(Debug)]
struct Boundary {
    /// The epoch left: its members are the acceptors.
    epoch: Epoch,
    /// `B`, once decided: per row, one past the highest slot an instance of the epoch can have
    /// committed a command at.
    known: Option<Vec<u64>>,
    /// The round under way (`None`: none, the next due tick starts one).
    round: Option<Round>,
    /// The highest round seen, this replica's or another's (a Nack's): the next one is above.
    highest_round: u32,
    /// When to start the next round (`None`: at the next tick, which sets it).
    ask_at: Option<Time>,
    /// The wait before the next round after that (doubles, capped at `retry_max`).
    backoff: Duration,
}

/// One round of the boundary's Paxos, at `ballot`.
#[derive(Debug)]
struct Round {
    ballot: Ballot,
    phase: Phase,
}

/// A boundary accepted, with the ballot it was accepted at.
type Accepted = Option<(Ballot, Vec<u64>)>;

#[derive(Debug)]
enum Phase {
    /// Promises received: from whom, its seal, what it accepted last.
    Prepare(Vec<(ReplicaId, Vec<u64>, Accepted)>),
    /// The value proposed, and who accepted it.
    Accept(Vec<u64>, Vec<ReplicaId>),
}

/// An acceptor's answer to a boundary Prepare or Accept.
enum Answer {
    Promise(Vec<u64>, Option<(Ballot, Vec<u64>)>),
    Accepted,
    Nack(Ballot),
    Decided(Vec<u64>),
    /// The epoch is not sealed here (not left yet, or its seal was dropped long ago).
    NotSealed,
    /// This replica lost its disk since it may have promised there, and knows no decision:
    /// no answer (see the module doc, "A wiped acceptor is fenced").
    Fenced,
}

impl Seals {
    /// The seal that applies to an instance of `epoch`: `Some(None)` if the epoch is older than
    /// every seal kept (refuse all but no-ops), `None` if none applies (a current epoch).
    fn of(&self, epoch: Epoch) -> Option<Option<&Seal>> {
        let oldest = self.kept.first()?;
        if epoch < oldest.epoch {
            return Some(None);
        }
        self.kept.iter().find(|s| s.epoch == epoch).map(Some)
    }

    fn kept_mut(&mut self, epoch: Epoch) -> Option<&mut Seal> {
        self.kept.iter_mut().find(|s| s.epoch == epoch)
    }
}

impl Boundary {
    fn new(epoch: Epoch, known: Option<Vec<u64>>, backoff: Duration) -> Self {
        Boundary {
            epoch,
            known,
            round: None,
            highest_round: 0,
            ask_at: None,
            backoff,
        }
    }
}

impl Replica {
    /// This replica executed the change from `old` to `new`: seals `old`'s epoch (if it is a
    /// member of it: only members vote there) and starts deciding its boundary. New instances
    /// wait for the boundary (`may_start_instances`). Called once per change, by its execution.
    pub(crate) fn seal_epoch(&mut self, old: &Configuration, new: &Configuration) {
        debug_assert!(
            new.epoch() > old.epoch(),
            "sealing {old} for {new}, not a later epoch"
        );
        let epoch = old.epoch();
        // A seal of a later epoch kept already (a wiped replica's fence, see the module doc):
        // this one is not sealed afresh, its acceptor state may have been lost.
        let moved_on = self.seals.kept.last().is_some_and(|s| s.epoch > epoch);
        if old.is_member(self.opts.id) && !moved_on && self.seals.kept_mut(epoch).is_none() {
            // (Sealed before a restart: the stored seal stays.)
            let ends = self.reach_of(epoch);
            self.seals.kept.push(Seal::new(epoch, ends));
            if self.seals.kept.len() > SEALS_KEPT_MAX {
                self.seals.kept.remove(0);
            }
            self.persist_seals();
        }
        let known = self.seals.kept_mut(epoch).and_then(|s| s.decided.clone());
        let undecided = known.is_none();
        self.seals.boundary = Some(Boundary::new(epoch, known, self.opts.retry));
        if undecided {
            self.propose_boundary();
        }
    }

    /// Whether this replica may start instances: it knows the boundary of the last epoch it
    /// left (or never left one). While false, proposals wait (`flush` starts none).
    pub(crate) fn may_start_instances(&self) -> bool {
        self.seals
            .boundary
            .as_ref()
            .is_none_or(|b| b.known.is_some())
    }

    /// The decided boundary of the last epoch left, once known: per row, one past the highest
    /// slot an instance of that epoch can have committed a command at.
    pub fn boundary(&self) -> Option<(Epoch, &[u64])> {
        let b = self.seals.boundary.as_ref()?;
        Some((b.epoch, b.known.as_deref()?))
    }

    /// Every per-row vector of the boundaries known here: the seals' ends, the values accepted,
    /// the decided boundaries (a rejoining peer's horizons cover them, see `peer_rejoined`).
    pub(super) fn boundary_vectors(&self) -> Vec<&[u64]> {
        let mut all: Vec<&[u64]> = Vec::new();
        for seal in &self.seals.kept {
            all.push(&seal.ends);
            if let Some((_, accepted)) = &seal.accepted {
                all.push(accepted);
            }
            if let Some(decided) = &seal.decided {
                all.push(decided);
            }
        }
        if let Some(boundary) = &self.seals.boundary {
            if let Some(known) = boundary.known.as_deref() {
                all.push(known);
            }
            // A round under way: the seals and values promised to it (a wiped peer's old
            // incarnation among them, seed 11652 of `random_seeds_with_changes`: its promise
            // reached this proposer before the rejoin, and the boundary decided from it lay
            // above the new incarnation's horizon, which then started that slot again).
            match boundary.round.as_ref().map(|r| &r.phase) {
                Some(Phase::Prepare(promises)) => {
                    for (_, ends, accepted) in promises {
                        all.push(ends);
                        if let Some((_, value)) = accepted {
                            all.push(value);
                        }
                    }
                }
                Some(Phase::Accept(value, _)) => all.push(value),
                None => {}
            }
        }
        all
    }

    /// The seals kept, oldest first.
    pub fn seals(&self) -> &[Seal] {
        &self.seals.kept
    }

    /// Takes back the seals stored before a restart (`node::Restored::sealed`): votes above
    /// them stay refused, promises stay kept, and the boundary of the newest is known again if
    /// it was decided (else decided again, from the next tick on).
    ///
    /// Restoring re-executes the log, whose changes seal their epochs afresh (a new seal, a
    /// promise of this replica's own first round): the stored seal of an epoch wins, and only
    /// a seal of an epoch above every stored one (its change executed, its seal not stored
    /// before the crash) is kept from re-execution. What goes to the disk is that merge, never
    /// the fresh seals alone: they would overwrite the promise, the accepted value and the
    /// decision stored (seed 788 of `random_seeds_with_changes`: a restarted acceptor forgot
    /// the decided boundary, and with its peer fenced after a wipe nobody decided it again).
    pub fn restore_seals(&mut self, mut seals: Vec<Seal>) {
        seals.sort_by_key(|s| s.epoch);
        seals.dedup_by_key(|s| s.epoch);
        let stored = seals.clone();
        let newest_stored = seals.last().map(|s| s.epoch);
        for fresh in std::mem::take(&mut self.seals.kept) {
            if newest_stored.is_none_or(|n| fresh.epoch > n) {
                seals.push(fresh);
            }
        }
        let drop = seals.len().saturating_sub(SEALS_KEPT_MAX);
        seals.drain(..drop);
        self.ready.sealed = (seals != stored).then(|| seals.clone());
        let Some(newest) = seals.last() else {
            return;
        };
        // A later boundary being learnt already (of an epoch this replica was added in, see
        // `learn_last_boundary`) stays.
        if self
            .seals
            .boundary
            .as_ref()
            .is_none_or(|b| b.epoch <= newest.epoch)
        {
            self.seals.boundary = Some(Boundary::new(
                newest.epoch,
                newest.decided.clone(),
                self.opts.retry,
            ));
        }
        self.seals.kept = seals;
    }

    /// This replica lost its disk and rejoined in the configuration of epoch `joined_in`: it is
    /// no acceptor of any older epoch's boundary (see the module doc, "A wiped acceptor is
    /// fenced"). Stored as a seal of the epoch before, promised at the top round, with nothing
    /// held (it votes on that epoch's instances only below the decided boundary), replacing
    /// the seals a snapshot cannot bring (it brings none). Called once, by the rejoin.
    pub(crate) fn fence_rejoined(&mut self, joined_in: Epoch) {
        if self.opts.sabotage.promise_again_after_wipe() {
            return;
        }
        let Some(before) = joined_in.0.checked_sub(1).map(Epoch) else {
            return; // epoch 0: no boundary was ever decided, nothing to fence
        };
        let decided = self
            .seals
            .boundary
            .as_ref()
            .filter(|b| b.epoch == before)
            .and_then(|b| b.known.clone());
        let fence = Seal {
            epoch: before,
            ends: vec![0; self.rows()],
            promised: Some(Ballot {
                round: FENCE_ROUND,
                replica: self.opts.id,
            }),
            accepted: None,
            decided,
        };
        self.seals.kept.retain(|s| s.epoch > before);
        self.seals.kept.insert(0, fence);
        self.persist_seals();
    }

    /// Starts learning the boundary of the epoch before the current one if nothing here learns
    /// it yet: the case of a member that change added (restored from a peer's snapshot, or
    /// from its own disk after a restart). It never was a member of that epoch, so it holds no
    /// seal of it and never voted there; but the new epoch's instances it leads must still
    /// cover `B` (rule 3), so it leads none before it knows the decided `B` (it proposes, as
    /// anyone who needs `B` does; an acceptor that knows the decision answers with it). It
    /// votes meanwhile: the leaders' initial deps carry the cover.
    pub(crate) fn learn_last_boundary(&mut self) {
        let current = self.configuration().epoch();
        let Some(left) = current.0.checked_sub(1).map(Epoch) else {
            return; // epoch 0: no boundary
        };
        if self
            .seals
            .boundary
            .as_ref()
            .is_some_and(|b| b.epoch >= left)
            || self.configuration_of(left).is_none()
        {
            return;
        }
        self.seals.boundary = Some(Boundary::new(left, None, self.opts.retry));
        self.propose_boundary();
    }

    /// After a peer's snapshot brought this replica past a change it never executed (it was
    /// left behind, `Node::install_caught_up`): if it was a member of the epoch that change
    /// ended and holds no seal of it, it seals it now with what it holds. Sealing late is as
    /// safe as sealing when executing the change: a seal bounds only the votes given from then
    /// on, and every vote given before is for an instance held here (catching up keeps them).
    /// Without it, that epoch's other members could wait forever for its promise: the boundary
    /// needs a majority of the epoch's acceptors, and only a sealed one promises (seed 758 of
    /// `random_seeds_with_changes`: the epoch's two members, one of them this).
    pub(crate) fn seal_missed_boundary(&mut self) {
        let current = self.configuration().clone();
        let Some(left) = current.epoch().0.checked_sub(1).map(Epoch) else {
            return; // epoch 0: no boundary
        };
        let Some(old) = self.configuration_of(left).cloned() else {
            return;
        };
        if !old.is_member(self.opts.id) || self.seals.kept.iter().any(|s| s.epoch == left) {
            return;
        }
        self.seal_epoch(&old, &current);
    }

    /// Per row, one past the highest slot of an instance of `epoch` (or older) held here, or
    /// held once (committed, collected; this replica's own next slot).
    fn reach_of(&self, epoch: Epoch) -> Vec<u64> {
        let mut ends = self.committed_end.clone();
        for (end, gc) in ends.iter_mut().zip(&self.gc_prefix) {
            *end = (*end).max(*gc);
        }
        let me = self.opts.id;
        ends[me] = ends[me].max(self.next_slot);
        for (id, inst) in &self.instances {
            if inst.epoch <= epoch {
                ends[id.replica] = ends[id.replica].max(id.slot + 1);
            }
        }
        ends.into_vec()
    }

    /// Whether this replica refuses to vote on `id`, an instance of `epoch`, with a command:
    /// the epoch is sealed here and `id` lies at or above both the seal and the decided
    /// boundary (see the module doc).
    pub(super) fn above_seal(&self, id: InstanceId, epoch: Epoch) -> bool {
        if self.opts.sabotage.vote_above_seal() {
            return false;
        }
        match self.seals.of(epoch) {
            None => false,
            Some(None) => true,
            Some(Some(seal)) => seal.refuses(id),
        }
    }

    /// Whether `id`, an instance held here of an epoch whose decided boundary this replica
    /// knows, lies at or above that boundary. No such instance committed a command: every one
    /// that did lies below `B` (the module doc's "Why it is safe"), so its recovery ends it as
    /// a no-op (`apply_decision`), which sealed replicas accept. Without this, an instance
    /// pre-accepted only by a survivor and members now dead (a fast quorum as far as the
    /// survivors can tell) would be validated forever, its Validate refused by every survivor
    /// sealed below it.
    pub(super) fn above_decided_boundary(&self, id: InstanceId) -> bool {
        if self.opts.sabotage.keep_recovering_above_boundary() {
            return false;
        }
        let Some(epoch) = self.instances.get(&id).map(|i| i.epoch) else {
            return false; // nothing held: the answers decide as usual
        };
        let decided = match &self.seals.boundary {
            Some(b) if b.epoch == epoch && b.known.is_some() => b.known.as_deref(),
            _ => self
                .seals
                .kept
                .iter()
                .find(|s| s.epoch == epoch)
                .and_then(|s| s.decided.as_deref()),
        };
        decided.is_some_and(|b| id.slot >= b.get(id.replica.index()).copied().unwrap_or(0))
    }

    /// The epoch `id` belongs to as far as this replica knows: its own record's where its
    /// leader fixed it, else `named` (what the message says; a record holding no command may
    /// carry a recoverer's guess, see `recovering`).
    pub(super) fn epoch_of(&self, id: InstanceId, named: Epoch) -> Epoch {
        self.instances
            .get(&id)
            .filter(|i| i.epoch_fixed())
            .map_or(named, |i| i.epoch)
    }

    /// Refuses a vote above this replica's seal: a Nack at a ballot above the one asked, so the
    /// leader (or recoverer) stops and the instance ends by recovery (a no-op, unless enough
    /// replicas whose seals lie above it decide otherwise). The promise is not recorded: this
    /// replica votes on the instance's commands at no ballot anyway.
    pub(super) fn refuse_above_seal(&mut self, from: ReplicaId, id: InstanceId, ballot: Ballot) {
        self.ready.votes_refused_above_seal += 1;
        let Some(round) = ballot.round.checked_add(1).filter(|r| *r < u32::MAX) else {
            return; // a top-round ballot gets silence: the receiver would refuse the Nack
        };
        let promised = Ballot {
            round,
            replica: self.opts.id,
        };
        self.nack(from, id, promised);
    }

    /// Covers, in the deps of an instance of `epoch`, the boundary of an older epoch this
    /// replica left: `B` once decided, its own seal while it learns `B` (it only votes then: it
    /// starts nothing before `B` is known).
    pub(super) fn add_boundary_deps(&self, epoch: Epoch, deps: &mut Deps) {
        if self.opts.sabotage.omit_boundary_deps() {
            return;
        }
        let Some(b) = &self.seals.boundary else {
            return;
        };
        if epoch <= b.epoch {
            return; // an instance of the epoch left, or older: no boundary to cover
        }
        let ends = b.known.as_deref().or_else(|| {
            self.seals
                .kept
                .iter()
                .find(|s| s.epoch == b.epoch)
                .map(|s| s.ends.as_slice())
        });
        if let Some(ends) = ends {
            self.cover_up_to(ends, deps);
        }
    }

    /// The seals and this replica's acceptor state changed: the shell stores them before any
    /// message of this `Ready` leaves (Paxos's promises and accepted values must survive).
    fn persist_seals(&mut self) {
        self.ready.sealed = Some(self.seals.kept.clone());
    }

    /// The acceptor's phase 1: promise `ballot` unless a higher one was promised.
    fn promise_boundary(&mut self, epoch: Epoch, ballot: Ballot) -> Answer {
        // (A boundary merely read, under the sabotage, is this replica's alone.)
        let read_only = self.opts.sabotage.vote_below_read_boundary();
        let Some(seal) = self.seals.kept_mut(epoch) else {
            return Answer::NotSealed;
        };
        if let Some(decided) = seal.decided.as_ref().filter(|_| !read_only) {
            return Answer::Decided(decided.clone());
        }
        if seal.fenced() {
            return Answer::Fenced;
        }
        match seal.promised {
            Some(p) if p > ballot => return Answer::Nack(p),
            Some(p) if p == ballot => {}
            _ => {
                seal.promised = Some(ballot);
                let answer = Answer::Promise(seal.ends.clone(), seal.accepted.clone());
                self.persist_seals();
                return answer;
            }
        }
        Answer::Promise(seal.ends.clone(), seal.accepted.clone())
    }

    /// The acceptor's phase 2: accept `ends` at `ballot` unless a higher ballot was promised.
    fn accept_boundary(&mut self, epoch: Epoch, ballot: Ballot, ends: Vec<u64>) -> Answer {
        let read_only = self.opts.sabotage.vote_below_read_boundary();
        let Some(seal) = self.seals.kept_mut(epoch) else {
            return Answer::NotSealed;
        };
        if let Some(decided) = seal.decided.as_ref().filter(|_| !read_only) {
            return Answer::Decided(decided.clone());
        }
        if seal.fenced() {
            return Answer::Fenced;
        }
        if let Some(p) = seal.promised.filter(|p| *p > ballot) {
            return Answer::Nack(p);
        }
        if seal
            .accepted
            .as_ref()
            .is_some_and(|(b, e)| *b == ballot && *e == ends)
        {
            return Answer::Accepted; // a duplicate
        }
        seal.promised = Some(ballot);
        seal.accepted = Some((ballot, ends));
        self.persist_seals();
        Answer::Accepted
    }

    /// Sends an acceptor's answer to `to` (nothing for an epoch not sealed here but one left
    /// long ago: that boundary was decided long ago too).
    fn answer_boundary(&mut self, to: ReplicaId, epoch: Epoch, ballot: Ballot, answer: Answer) {
        let msg = match answer {
            Answer::Promise(ends, accepted) => Message::BoundaryPromise {
                epoch,
                ballot,
                ends,
                accepted,
            },
            Answer::Accepted => Message::BoundaryAccepted { epoch, ballot },
            Answer::Nack(promised) => Message::BoundaryNack { epoch, promised },
            Answer::Decided(ends) => Message::BoundaryDecided { epoch, ends },
            Answer::NotSealed if epoch >= self.configuration().epoch() => {
                // Not left yet here: the asker executed a change this replica has not. Its
                // Watermark makes the asker send the Commits it lacks; it seals once it
                // executes the change, and answers the next round.
                self.watermark()
            }
            Answer::NotSealed | Answer::Fenced => return,
        };
        self.send(vec![to], msg);
    }

    /// A peer asks this replica, as an acceptor of `epoch`'s boundary, for a promise.
    pub(super) fn handle_boundary_prepare(
        &mut self,
        from: ReplicaId,
        epoch: Epoch,
        ballot: Ballot,
    ) {
        let answer = self.promise_boundary(epoch, ballot);
        self.answer_boundary(from, epoch, ballot, answer);
    }

    /// A peer asks this replica, as an acceptor of `epoch`'s boundary, to accept `ends`.
    pub(super) fn handle_boundary_accept(
        &mut self,
        from: ReplicaId,
        epoch: Epoch,
        ballot: Ballot,
        ends: Vec<u64>,
    ) {
        let answer = self.accept_boundary(epoch, ballot, ends);
        self.answer_boundary(from, epoch, ballot, answer);
    }

    /// Whether `from` is an acceptor of `epoch` (a member of it) and `epoch`'s boundary is
    /// what this replica is deciding now, at `ballot`'s round.
    fn in_round(&self, from: ReplicaId, epoch: Epoch, ballot: Ballot) -> bool {
        let member = self
            .configuration_of(epoch)
            .is_some_and(|c| c.is_member(from));
        member
            && self.seals.boundary.as_ref().is_some_and(|b| {
                b.epoch == epoch
                    && b.known.is_none()
                    && b.round.as_ref().is_some_and(|r| r.ballot == ballot)
            })
    }

    /// An acceptor's promise (a peer's, or this replica's own).
    pub(super) fn handle_boundary_promise(
        &mut self,
        from: ReplicaId,
        epoch: Epoch,
        ballot: Ballot,
        ends: Vec<u64>,
        accepted: Option<(Ballot, Vec<u64>)>,
    ) {
        if !self.in_round(from, epoch, ballot) {
            return; // another epoch, round or phase, or not an acceptor's: no part of it
        }
        let rows = self.rows();
        let Some(majority) = self.configuration_of(epoch).map(|c| c.slow_quorum()) else {
            return;
        };
        let Some(Round {
            phase: Phase::Prepare(promises),
            ..
        }) = self.seals.boundary.as_mut().and_then(|b| b.round.as_mut())
        else {
            return; // phase 2 already
        };
        if promises.iter().any(|(r, ..)| *r == from) {
            return; // a duplicate
        }
        promises.push((from, ends, accepted));
        if promises.len() < majority {
            return;
        }
        // Paxos: the value accepted at the highest ballot, if any; else today's read, the
        // per-row maximum of the majority's seals.
        let value = match promises
            .iter()
            .filter_map(|(_, _, a)| a.as_ref())
            .max_by_key(|(b, _)| *b)
        {
            Some((_, value)) => value.clone(),
            None => {
                let mut bound = vec![0; rows];
                for (_, ends, _) in promises.iter() {
                    for (row, end) in ends.iter().enumerate().take(rows) {
                        bound[row] = bound[row].max((*end).min(SLOT_LIMIT));
                    }
                }
                bound
            }
        };
        if self.opts.sabotage.vote_below_read_boundary() {
            self.boundary_decided(epoch, value, false);
            return;
        }
        if let Some(round) = self.seals.boundary.as_mut().and_then(|b| b.round.as_mut()) {
            round.phase = Phase::Accept(value.clone(), Vec::new());
        }
        let me = self.opts.id;
        let acceptors = self.acceptors_but_me(epoch);
        self.send(
            acceptors,
            Message::BoundaryAccept {
                epoch,
                ballot,
                ends: value.clone(),
            },
        );
        if self.is_member_of(epoch) {
            match self.accept_boundary(epoch, ballot, value) {
                Answer::Accepted => self.handle_boundary_accepted(me, epoch, ballot),
                Answer::Nack(promised) => self.handle_boundary_nack(epoch, promised),
                Answer::Decided(ends) => self.handle_boundary_decided(epoch, ends),
                Answer::Promise(..) | Answer::NotSealed | Answer::Fenced => {}
            }
        }
    }

    /// An acceptor accepted this replica's proposal at `ballot`.
    pub(super) fn handle_boundary_accepted(
        &mut self,
        from: ReplicaId,
        epoch: Epoch,
        ballot: Ballot,
    ) {
        if !self.in_round(from, epoch, ballot) {
            return;
        }
        let Some(majority) = self.configuration_of(epoch).map(|c| c.slow_quorum()) else {
            return;
        };
        let Some(Round {
            phase: Phase::Accept(value, accepted),
            ..
        }) = self.seals.boundary.as_mut().and_then(|b| b.round.as_mut())
        else {
            return;
        };
        if accepted.contains(&from) {
            return;
        }
        accepted.push(from);
        if accepted.len() >= majority {
            let value = value.clone();
            self.boundary_decided(epoch, value, true);
        }
    }

    /// An acceptor promised a higher ballot: this round is over; the next one, at the next due
    /// tick (after the backoff), goes above it.
    pub(super) fn handle_boundary_nack(&mut self, epoch: Epoch, promised: Ballot) {
        let Some(b) = self.seals.boundary.as_mut() else {
            return;
        };
        if b.epoch != epoch || b.known.is_some() {
            return;
        }
        b.highest_round = b.highest_round.max(promised.round);
        if b.round.as_ref().is_some_and(|r| r.ballot < promised) {
            b.round = None;
        }
    }

    /// `epoch`'s boundary is decided (a peer says so; peers are authenticated): recorded in this
    /// replica's seal of it, if any, and known if it is the one learnt here.
    pub(super) fn handle_boundary_decided(&mut self, epoch: Epoch, ends: Vec<u64>) {
        self.boundary_decided(epoch, ends, false);
    }

    /// Records `epoch`'s decided boundary; `tell`: this replica decided it (a majority
    /// accepted its proposal) and tells the epoch's and the current configuration's members.
    fn boundary_decided(&mut self, epoch: Epoch, mut ends: Vec<u64>, tell: bool) {
        ends.resize(self.rows().max(ends.len()), 0);
        if let Some(seal) = self.seals.kept_mut(epoch) {
            if seal.decided.is_none() {
                seal.decided = Some(ends.clone());
                self.persist_seals();
            }
        }
        if let Some(b) = self.seals.boundary.as_mut() {
            if b.epoch == epoch && b.known.is_none() {
                b.known = Some(ends.clone());
                b.round = None;
            }
        }
        if tell {
            let me = self.opts.id;
            let mut to = self.acceptors_but_me(epoch);
            to.extend(self.configuration().members().iter().copied());
            to.sort_unstable();
            to.dedup();
            to.retain(|r| *r != me);
            self.send(to, Message::BoundaryDecided { epoch, ends });
        }
    }

    /// Starts the next round for the boundary being learnt, above every round seen: Prepare
    /// to the epoch's members, this replica's own promise at once if it is one.
    fn propose_boundary(&mut self) {
        let me = self.opts.id;
        let own_promise = self.seals.boundary.as_ref().and_then(|b| {
            let seal = self.seals.kept.iter().find(|s| s.epoch == b.epoch)?;
            seal.promised.filter(|_| !seal.fenced()).map(|p| p.round)
        });
        let Some(b) = self.seals.boundary.as_mut() else {
            return;
        };
        // Above this replica's own promise too (kept across a restart).
        b.highest_round = b.highest_round.max(own_promise.unwrap_or(0));
        if b.known.is_some() {
            return;
        }
        let Some(round) = b.highest_round.checked_add(1).filter(|r| *r < u32::MAX) else {
            return; // no round above a top one: only impossible input gets here
        };
        b.highest_round = round;
        let ballot = Ballot { round, replica: me };
        b.round = Some(Round {
            ballot,
            phase: Phase::Prepare(Vec::new()),
        });
        let epoch = b.epoch;
        if self.configuration_of(epoch).is_none() {
            return; // an epoch not known here (a restart before its configuration came back)
        }
        let acceptors = self.acceptors_but_me(epoch);
        self.send(acceptors, Message::BoundaryPrepare { epoch, ballot });
        if self.is_member_of(epoch) {
            match self.promise_boundary(epoch, ballot) {
                Answer::Promise(ends, accepted) => {
                    self.handle_boundary_promise(me, epoch, ballot, ends, accepted)
                }
                Answer::Nack(promised) => self.handle_boundary_nack(epoch, promised),
                Answer::Decided(ends) => self.handle_boundary_decided(epoch, ends),
                Answer::Accepted | Answer::NotSealed | Answer::Fenced => {}
            }
        }
    }

    /// The members of `epoch` other than this replica: the boundary's other acceptors.
    fn acceptors_but_me(&self, epoch: Epoch) -> Vec<ReplicaId> {
        let me = self.opts.id;
        self.configuration_of(epoch).map_or_else(Vec::new, |c| {
            c.members().iter().copied().filter(|m| *m != me).collect()
        })
    }

    fn is_member_of(&self, epoch: Epoch) -> bool {
        self.configuration_of(epoch)
            .is_some_and(|c| c.is_member(self.opts.id))
    }

    /// When due, until the boundary is decided: asks again the acceptors that did not answer
    /// the round under way, or starts a higher round if a Nack ended it (see the module doc).
    pub(super) fn tick_boundary(&mut self, now: Time) {
        let retry_max = self.opts.retry_max;
        let Some(b) = &mut self.seals.boundary else {
            return;
        };
        if b.known.is_some() {
            return;
        }
        match b.ask_at {
            None => b.ask_at = Some(now + b.backoff),
            Some(at) if now >= at => {
                b.backoff = (b.backoff * 2).min(retry_max);
                b.ask_at = Some(now + b.backoff);
                let epoch = b.epoch;
                let again = b.round.as_ref().map(|r| match &r.phase {
                    Phase::Prepare(promises) => {
                        let answered: Vec<_> = promises.iter().map(|(p, ..)| *p).collect();
                        (
                            answered,
                            Message::BoundaryPrepare {
                                epoch,
                                ballot: r.ballot,
                            },
                        )
                    }
                    Phase::Accept(value, accepted) => (
                        accepted.clone(),
                        Message::BoundaryAccept {
                            epoch,
                            ballot: r.ballot,
                            ends: value.clone(),
                        },
                    ),
                });
                match again {
                    None => self.propose_boundary(),
                    Some((answered, msg)) => {
                        let mut to = self.acceptors_but_me(epoch);
                        to.retain(|a| !answered.contains(a));
                        self.send(to, msg);
                    }
                }
            }
            Some(_) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use bytes::Bytes;

    use super::super::tests::settle;
    use super::super::{Options, Outgoing, Replica, Time};
    use super::Seal;
    use crate::core::command::{Command, Op};
    use crate::core::deps::Deps;
    use crate::core::epoch::{Configuration, Epoch};
    use crate::core::ids::{Ballot, ClientId, InstanceId, ReplicaId, RequestId};
    use crate::core::membership::Membership;
    use crate::core::message::{Commands, Message};
    use crate::core::node::{Node, Restored};

    const T: Time = Duration::ZERO;

    fn r(i: u32) -> ReplicaId {
        ReplicaId(i)
    }

    fn id(row: u32, slot: u64) -> InstanceId {
        InstanceId::new(r(row), slot)
    }

    fn cluster(n: usize) -> Vec<Replica> {
        (0..n as u32)
            .map(|i| Replica::new(Options::new(r(i), n)))
            .collect()
    }

    fn put(client: u64, key: &'static str) -> Command {
        Command {
            client: ClientId(client),
            request: RequestId(1),
            op: Op::Put {
                key: Bytes::from_static(key.as_bytes()),
                value: Bytes::from_static(b"v"),
            },
            time_ms: 0,
            retry: false,
        }
    }

    fn commands(client: u64, key: &'static str) -> Commands {
        Arc::new(vec![put(client, key)])
    }

    fn ids(v: &[u32]) -> Vec<ReplicaId> {
        v.iter().copied().map(ReplicaId).collect()
    }

    /// `replica` executes the change from epoch 0 (ids 0..3) to `next` (epoch 1): it adopts it
    /// and seals epoch 0, as executing a `Reconfigure` does.
    fn change(replica: &mut Replica, next: &[u32]) {
        let old = Configuration::initial(3);
        let new = Configuration::new(Epoch(1), ids(next)).expect("valid");
        assert!(replica.adopt_configuration(new.clone()));
        replica.seal_epoch(&old, &new);
    }

    /// Hands `out` (sent by `from`) to the replicas of `rs` that `pass` lets through; what goes
    /// to an id beyond `rs` (a replica simulated by hand) comes back.
    fn deliver(
        rs: &mut [Replica],
        from: ReplicaId,
        out: Vec<Outgoing>,
        pass: impl Fn(ReplicaId, &Message) -> bool,
    ) -> Vec<(ReplicaId, Message)> {
        let mut beyond = Vec::new();
        for o in out {
            for to in o.to {
                if to.index() >= rs.len() {
                    beyond.push((to, o.msg.clone()));
                } else if pass(to, &o.msg) {
                    rs[to.index()].handle(T, from, o.msg.clone());
                }
            }
        }
        beyond
    }

    /// r0 proposes a put on "k"; its PreAccepts reach no replica in `rs`, and each one sent
    /// beyond them (to an id with no replica here, an empty table that adds no deps) comes
    /// back as a PreAcceptOk with the leader's own deps.
    fn propose_answered_beyond(rs: &mut [Replica]) {
        rs[0].propose(2, put(2, "k")).expect("room");
        rs[0].flush(T);
        let out = rs[0].take_ready().messages;
        for (to, msg) in deliver(rs, r(0), out, |_, _| false) {
            if let Message::PreAccept {
                instance,
                ballot,
                deps,
                ..
            } = msg
            {
                let ok = Message::PreAcceptOk {
                    instance,
                    ballot,
                    deps,
                };
                rs[0].handle(T, to, ok);
            }
        }
    }

    fn pre_accept(instance: InstanceId, epoch: u64, cmds: Commands) -> Message {
        Message::PreAccept {
            instance,
            epoch: Epoch(epoch),
            ballot: Ballot::initial(instance.replica),
            commands: cmds,
            deps: Deps::new(),
        }
    }

    fn accept(instance: InstanceId, ballot: Ballot, cmds: Commands) -> Message {
        Message::Accept {
            instance,
            epoch: Epoch(0),
            ballot,
            commands: cmds,
            deps: Deps::new(),
        }
    }

    /// The one message `replica` answered with, to whom.
    fn answer(replica: &mut Replica) -> (Vec<ReplicaId>, Message) {
        let mut out = replica.take_ready().messages;
        assert_eq!(out.len(), 1, "one answer: {out:?}");
        let o = out.remove(0);
        (o.to, o.msg)
    }

    /// Whether two committed instances are ordered by their deps (one covers the other): the
    /// simulator's Visibility check for one pair of interfering commands.
    fn ordered(a: (InstanceId, &Deps), b: (InstanceId, &Deps)) -> bool {
        a.1.covers(b.0) || b.1.covers(a.0)
    }

    #[test]
    fn a_sealed_replica_refuses_votes_above_its_seal_but_answers_recover_and_no_ops() {
        let mut rs = cluster(3);
        // r0 leads 0.0; only r1 hears its PreAccept: r1 holds 0.0 when it seals.
        rs[0].propose(1, put(1, "a")).expect("room");
        rs[0].flush(T);
        let out = rs[0].take_ready().messages;
        deliver(&mut rs, r(0), out, |to, _| to == r(1));
        let _ = rs[1].take_ready();
        change(&mut rs[1], &[0, 1, 2]);
        let ready = rs[1].take_ready();
        // With its own promise to its first boundary round (it proposes at once).
        let seal = Seal {
            promised: Some(Ballot {
                round: 1,
                replica: r(1),
            }),
            ..Seal::new(Epoch(0), vec![1, 0, 0])
        };
        assert_eq!(ready.sealed, Some(vec![seal]), "the seal goes to the disk");
        assert!(
            !rs[1].may_start_instances(),
            "the boundary is not known yet"
        );

        // Above the seal: a PreAccept of 0.1 gets a Nack above its ballot, and leaves nothing.
        rs[1].handle(T, r(0), pre_accept(id(0, 1), 0, commands(2, "b")));
        let nack = Message::Nack {
            instance: id(0, 1),
            promised: Ballot {
                round: 1,
                replica: r(1),
            },
        };
        assert_eq!(answer(&mut rs[1]), (vec![r(0)], nack));
        assert!(rs[1].instance(id(0, 1)).is_none());
        // A recoverer's Accept of a command there too (a Nack above its ballot)...
        let b = Ballot {
            round: 1,
            replica: r(2),
        };
        rs[1].handle(T, r(2), accept(id(0, 1), b, commands(2, "b")));
        assert!(matches!(
            answer(&mut rs[1]),
            (_, Message::Nack { promised, .. }) if promised.round == 2
        ));
        // ... but a no-op there is accepted: old instances always finish.
        rs[1].handle(T, r(2), accept(id(0, 1), b, Commands::default()));
        assert_eq!(
            answer(&mut rs[1]),
            (
                vec![r(2)],
                Message::AcceptOk {
                    instance: id(0, 1),
                    ballot: b
                }
            )
        );
        // Recover is answered above the seal; the Validate that follows (a command) is not.
        rs[1].handle(
            T,
            r(2),
            Message::Recover {
                instance: id(2, 0),
                epoch: Epoch(0),
                ballot: b,
            },
        );
        assert!(matches!(answer(&mut rs[1]), (_, Message::RecoverOk { .. })));
        rs[1].handle(
            T,
            r(2),
            Message::Validate {
                instance: id(2, 0),
                epoch: Epoch(0),
                ballot: b,
                commands: commands(3, "c"),
                deps: Deps::new(),
            },
        );
        assert!(matches!(answer(&mut rs[1]), (_, Message::Nack { .. })));
        assert!(rs[1]
            .instance(id(2, 0))
            .expect("promised")
            .commands
            .is_empty());
        // Below the seal votes go on: 0.0's Accept.
        rs[1].handle(
            T,
            r(0),
            accept(id(0, 0), Ballot::initial(r(0)), commands(1, "a")),
        );
        assert!(matches!(answer(&mut rs[1]), (_, Message::AcceptOk { .. })));
        // And the new epoch's instances are voted on.
        rs[1].handle(T, r(2), pre_accept(id(2, 1), 1, commands(4, "d")));
        assert!(matches!(
            answer(&mut rs[1]),
            (_, Message::PreAcceptOk { .. })
        ));
        assert_eq!(rs[1].take_ready().votes_refused_above_seal, 0);
    }

    #[test]
    fn a_restarted_replica_keeps_its_seal_and_learns_the_boundary_again() {
        let mut rs = cluster(3);
        change(&mut rs[1], &[0, 1, 2]);
        let sealed = rs[1].take_ready().sealed.expect("sealed");
        // The restart: the node gets its seals back from the disk (`Restored::sealed`).
        let mut node = Node::new(
            Options::new(r(1), 3),
            0,
            T,
            Restored {
                membership: Membership::Joined {
                    horizons: vec![0; 3],
                },
                configuration: None,
                peers: vec![None; 3],
                checkpoint: None,
                records: Vec::new(),
                sealed,
            },
        );
        assert_eq!(node.replica().seals()[0].ends, vec![0, 0, 0]);
        node.handle(T, r(0), pre_accept(id(0, 0), 0, commands(1, "a")));
        let out = node.take_ready().core.messages;
        assert!(
            matches!(
                out.as_slice(),
                [Outgoing {
                    msg: Message::Nack { .. },
                    ..
                }]
            ),
            "still refused after the restart: {out:?}"
        );
        assert!(
            node.replica().boundary().is_none(),
            "asked again, not stored"
        );
    }

    #[test]
    fn the_boundary_waits_for_a_majority_of_the_old_epochs_members_to_accept_it() {
        let mut rs = cluster(3);
        // r1 leads 1.0 and 1.1, which only r2 hears.
        let mut out = Vec::new();
        for c in 1..=2 {
            rs[1].propose(c, put(c, "a")).expect("room");
            rs[1].flush(T);
            out.extend(rs[1].take_ready().messages);
        }
        deliver(&mut rs, r(1), out, |to, _| to == r(2));
        let _ = rs[2].take_ready();
        // r0 executes the change; epoch 1 adds id 3.
        change(&mut rs[0], &[0, 1, 2, 3]);
        rs[0].propose(9, put(9, "z")).expect("room");
        rs[0].flush(T);
        let ready = rs[0].take_ready();
        assert!(
            ready.batches.is_empty(),
            "nothing starts before the boundary"
        );
        let first = Ballot {
            round: 1,
            replica: r(0),
        };
        let prepare = Message::BoundaryPrepare {
            epoch: Epoch(0),
            ballot: first,
        };
        assert!(ready
            .messages
            .iter()
            .any(|o| o.msg == prepare && o.to == ids(&[1, 2])));
        // r2 has not executed the change: it answers with its Watermark, not a promise.
        rs[2].handle(T, r(0), prepare);
        assert!(matches!(answer(&mut rs[2]), (_, Message::Watermark { .. })));
        // A promise from id 3, not a member of epoch 0, does not count.
        rs[0].handle(
            T,
            r(3),
            Message::BoundaryPromise {
                epoch: Epoch(0),
                ballot: first,
                ends: vec![0, 9, 0, 0],
                accepted: None,
            },
        );
        assert!(!rs[0].may_start_instances());
        assert!(rs[0].take_ready().messages.is_empty(), "no phase 2");
        // r2 executes the change (its own round goes nowhere here). r0 asks again after its
        // backoff; r2 promised its own round, above r0's: a Nack ends r0's round.
        change(&mut rs[2], &[0, 1, 2, 3]);
        let _ = rs[2].take_ready();
        rs[0].tick(T); // sets the next round's time
        let _ = rs[0].take_ready();
        let soon = Duration::from_secs(1);
        rs[0].tick(soon);
        let out = rs[0].take_ready().messages;
        let again = Message::BoundaryPrepare {
            epoch: Epoch(0),
            ballot: first,
        };
        assert!(out.iter().any(|o| o.msg == again && o.to == ids(&[1, 2])));
        rs[2].handle(soon, r(0), again);
        let (_, nack) = answer(&mut rs[2]);
        assert!(matches!(nack, Message::BoundaryNack { promised, .. } if promised.replica == r(2)));
        rs[0].handle(soon, r(2), nack);
        // The next round, above r2's, gets r2's promise.
        let later = Duration::from_secs(3);
        rs[0].tick(later);
        let out = rs[0].take_ready().messages;
        let second = Ballot {
            round: 2,
            replica: r(0),
        };
        let prepare = Message::BoundaryPrepare {
            epoch: Epoch(0),
            ballot: second,
        };
        assert!(out.iter().any(|o| o.msg == prepare && o.to == ids(&[1, 2])));
        rs[2].handle(later, r(0), prepare);
        let (to, promise) = answer(&mut rs[2]);
        assert_eq!(to, vec![r(0)]);
        assert!(
            rs[2].take_ready().sealed.is_none(),
            "the promise was stored with the answer's Ready"
        );
        rs[0].handle(later, r(2), promise);
        // r0 and r2 promised, a majority of epoch 0: the maximum of their seals is proposed,
        // but a value read is not a value decided.
        assert!(!rs[0].may_start_instances());
        let (to, accept) = answer(&mut rs[0]);
        assert_eq!(to, ids(&[1, 2]));
        assert_eq!(
            accept,
            Message::BoundaryAccept {
                epoch: Epoch(0),
                ballot: second,
                ends: vec![0, 2, 0, 0],
            }
        );
        rs[2].handle(later, r(0), accept);
        let (_, accepted) = answer(&mut rs[2]);
        rs[0].handle(later, r(2), accepted);
        assert!(rs[0].may_start_instances());
        assert_eq!(rs[0].boundary(), Some((Epoch(0), [0, 2, 0, 0].as_slice())));
        // Decided: r0 tells epoch 0's and epoch 1's members, and starts the proposal.
        rs[0].flush(later);
        let ready = rs[0].take_ready();
        assert_eq!(ready.batches, vec![1], "the proposal starts now");
        assert!(ready.messages.iter().any(|o| o.msg
            == Message::BoundaryDecided {
                epoch: Epoch(0),
                ends: vec![0, 2, 0, 0],
            }
            && o.to == ids(&[1, 2, 3])));
    }

    /// r1, a member of epoch 0 that sealed it, restarts from what it stored last.
    fn restarted(sealed: Option<Vec<Seal>>) -> Node {
        let sealed = sealed.expect("stored");
        Node::new(
            Options::new(r(1), 3),
            0,
            T,
            Restored {
                membership: Membership::Joined {
                    horizons: vec![0; 3],
                },
                configuration: None,
                peers: vec![None; 3],
                checkpoint: None,
                records: Vec::new(),
                sealed,
            },
        )
    }

    #[test]
    fn a_restarted_acceptor_keeps_its_promise_and_what_it_accepted() {
        let mut rs = cluster(3);
        change(&mut rs[1], &[0, 1, 2]);
        let high = Ballot {
            round: 5,
            replica: r(2),
        };
        rs[1].handle(
            T,
            r(2),
            Message::BoundaryAccept {
                epoch: Epoch(0),
                ballot: high,
                ends: vec![3, 0, 0],
            },
        );
        let ready = rs[1].take_ready();
        assert!(matches!(
            ready.messages.last(),
            Some(Outgoing {
                msg: Message::BoundaryAccepted { .. },
                ..
            })
        ));
        let mut node = restarted(ready.sealed);
        // A lower ballot is refused with the promise...
        let low = Ballot {
            round: 3,
            replica: r(0),
        };
        node.handle(
            T,
            r(0),
            Message::BoundaryPrepare {
                epoch: Epoch(0),
                ballot: low,
            },
        );
        let out = node.take_ready().core.messages;
        assert_eq!(
            out.iter().map(|o| o.msg.clone()).collect::<Vec<_>>(),
            vec![Message::BoundaryNack {
                epoch: Epoch(0),
                promised: high,
            }]
        );
        // ... and a higher one learns what was accepted.
        let higher = Ballot {
            round: 6,
            replica: r(0),
        };
        node.handle(
            T,
            r(0),
            Message::BoundaryPrepare {
                epoch: Epoch(0),
                ballot: higher,
            },
        );
        let out = node.take_ready().core.messages;
        assert_eq!(
            out.iter().map(|o| o.msg.clone()).collect::<Vec<_>>(),
            vec![Message::BoundaryPromise {
                epoch: Epoch(0),
                ballot: higher,
                ends: vec![0, 0, 0],
                accepted: Some((high, vec![3, 0, 0])),
            }]
        );
    }

    #[test]
    fn a_restarted_replica_knows_the_decided_boundary_and_votes_below_it() {
        let mut rs = cluster(3);
        change(&mut rs[1], &[0, 1, 2]);
        let _ = rs[1].take_ready();
        rs[1].handle(
            T,
            r(2),
            Message::BoundaryDecided {
                epoch: Epoch(0),
                ends: vec![2, 0, 0],
            },
        );
        assert_eq!(rs[1].boundary(), Some((Epoch(0), [2, 0, 0].as_slice())));
        let mut node = restarted(rs[1].take_ready().sealed);
        assert_eq!(
            node.replica().boundary(),
            Some((Epoch(0), [2, 0, 0].as_slice()))
        );
        // Its own seal is empty, the decided boundary holds 0.0 and 0.1: it votes there...
        node.handle(T, r(0), pre_accept(id(0, 1), 0, commands(1, "a")));
        let out = node.take_ready().core.messages;
        assert!(
            matches!(
                out.as_slice(),
                [Outgoing {
                    msg: Message::PreAcceptOk { .. },
                    ..
                }]
            ),
            "{out:?}"
        );
        // ... and not above it.
        node.handle(T, r(0), pre_accept(id(0, 2), 0, commands(2, "b")));
        let out = node.take_ready().core.messages;
        assert!(
            matches!(
                out.as_slice(),
                [Outgoing {
                    msg: Message::Nack { .. },
                    ..
                }]
            ),
            "{out:?}"
        );
    }

    /// The counter-example to a boundary merely read (the module doc): {r0, r1, r2} becomes
    /// {r0, r1, r3}. r1 leads the old-epoch write `y` = 1.0 and seals holding it; r2 seals
    /// without it. r2 proposes a boundary and reads the majority {r2, r1} (`B` holds `y`); r0
    /// then reads {r0, r2} (`B'` does not). Then `y`'s PreAccept reaches r2, and r0 leads the
    /// new-epoch write `x` = 0.0 on the same key that r3 (by hand, empty) alone answers.
    /// Returns r0's and r2's boundaries, whether `y` committed, and whether `x` and `y` are
    /// ordered.
    fn two_learners_of_different_majorities(
        read_is_enough: bool,
    ) -> (Vec<u64>, Vec<u64>, bool, bool) {
        let mut rs = cluster(3);
        if read_is_enough {
            #[cfg(feature = "sabotage")]
            {
                for r in rs.iter_mut() {
                    r.opts.sabotage.vote_below_read_boundary = true;
                }
            }
        }
        let y = id(1, 0);
        rs[1].propose(1, put(1, "k")).expect("room");
        rs[1].flush(T);
        let y_pre_accepts = rs[1].take_ready().messages;
        change(&mut rs[1], &[0, 1, 3]);
        let _ = rs[1].take_ready(); // r1's own round reaches nobody
                                    // r2 reads {r2, r1}; its Accept (if it sends one) reaches nobody.
        change(&mut rs[2], &[0, 1, 3]);
        let out = rs[2].take_ready().messages;
        deliver(&mut rs, r(2), out, |to, _| to == r(1));
        let out = rs[1].take_ready().messages;
        deliver(&mut rs, r(1), out, |to, _| to == r(2));
        let _ = rs[2].take_ready();
        // r0: its first round meets r2's higher promise; its second reads {r0, r2}.
        change(&mut rs[0], &[0, 1, 3]);
        for step in 0..4 {
            let now = Duration::from_secs(step);
            rs[0].tick(now);
            let out = rs[0].take_ready().messages;
            deliver(&mut rs, r(0), out, |to, _| to == r(2));
            let out = rs[2].take_ready().messages;
            deliver(&mut rs, r(2), out, |to, _| to == r(0));
        }
        let b0 = rs[0].boundary().expect("r0 learnt one").1.to_vec();
        let b2 = rs[2].boundary().expect("r2 learnt one").1.to_vec();
        // y's PreAccept reaches r2; the answers and Commit go where they go, but to r0.
        deliver(&mut rs, r(1), y_pre_accepts, |to, _| to == r(2));
        settle(&mut rs, T, |_, to| to == r(0));
        let y_inst = rs[1].instance(y).expect("led");
        let y_committed = y_inst.status.is_decided() && !y_inst.commands.is_empty();
        let y_deps = y_inst.deps.clone();
        // x: r0's PreAccept reaches only r3, whose empty table adds nothing.
        propose_answered_beyond(&mut rs);
        let x = id(0, 0);
        let x_inst = rs[0].instance(x).expect("led");
        assert!(x_inst.status.is_decided(), "x commits with r0 and r3");
        let ordered = ordered((x, &x_inst.deps), (y, &y_deps));
        (b0, b2, y_committed, ordered)
    }

    #[test]
    fn two_proposers_reading_different_majorities_decide_one_boundary() {
        let (b0, b2, y_committed, ordered) = two_learners_of_different_majorities(false);
        assert_eq!(b0, b2, "one boundary for everyone");
        assert_eq!(b0, vec![0, 1, 0, 0], "r2's accepted value won r0's round");
        assert!(y_committed, "r2 voted on y, below the decided boundary");
        assert!(ordered, "x covers the decided boundary, so y");
    }

    #[cfg(feature = "sabotage")]
    #[test]
    fn sabotage_voting_below_a_boundary_merely_read_leaves_old_and_new_unordered() {
        let (b0, b2, y_committed, ordered) = two_learners_of_different_majorities(true);
        assert_eq!((b0, b2), (vec![0, 0, 0, 0], vec![0, 1, 0, 0]), "two reads");
        assert!(y_committed, "r2 voted on y below the boundary it read");
        assert!(
            !ordered,
            "the Visibility check fails: x and y interfere, neither sees the other"
        );
    }

    /// A wiped acceptor (the module doc's "A wiped acceptor is fenced"), by hand. r0 leads
    /// `y` = 0.0, which r1 alone hears; r0 and r1 seal holding it. r1's round gets r0's
    /// promise and decides `V1` = [1, 0, 0] with r0's accept; its Decided reaches nobody. r1
    /// loses its disk and rejoins in epoch 1 (empty: its peers' snapshot lacks `y`), then seals
    /// epoch 0 late, as a snapshot bringing it past the change makes it (`seal_missed_boundary`).
    /// r2, sealed without `y`, proposes while cut off from r0, then with r0 reachable. Returns
    /// `V1`, r2's boundary while cut off from r0, and r2's once r0 answers.
    fn wiped_acceptor(promise_afresh: bool) -> (Vec<u64>, Option<Vec<u64>>, Option<Vec<u64>>) {
        let mut rs = cluster(3);
        rs[0].propose(1, put(1, "a")).expect("room");
        rs[0].flush(T);
        let out = rs[0].take_ready().messages;
        deliver(&mut rs, r(0), out, |to, _| to == r(1));
        let _ = rs[1].take_ready();
        change(&mut rs[0], &[0, 1, 2]);
        let _ = rs[0].take_ready(); // r0's own round reaches nobody
        change(&mut rs[1], &[0, 1, 2]);
        // r1's round, with r0 only: promise, accept, decided at r1.
        for _ in 0..3 {
            let out = rs[1].take_ready().messages;
            deliver(&mut rs, r(1), out, |to, _| to == r(0));
            let out = rs[0].take_ready().messages;
            deliver(&mut rs, r(0), out, |to, _| to == r(1));
        }
        let v1 = rs[1].boundary().expect("r1 decided").1.to_vec();
        let _ = rs[1].take_ready(); // the Decided is lost with r1's disk

        // r1 rejoins in epoch 1 (as `Node::join_from_snapshot` does), then seals epoch 0 late.
        let mut wiped = Replica::new(Options::new(r(1), 3));
        #[cfg(feature = "sabotage")]
        {
            wiped.opts.sabotage.promise_again_after_wipe = promise_afresh;
        }
        #[cfg(not(feature = "sabotage"))]
        let _ = promise_afresh;
        let e1 = Configuration::new(Epoch(1), ids(&[0, 1, 2])).expect("valid");
        assert!(wiped.adopt_configuration(e1));
        wiped.fence_rejoined(Epoch(1));
        wiped.seal_missed_boundary();
        let _ = wiped.take_ready();
        rs[1] = wiped;

        // r2 proposes; r0 is cut off.
        change(&mut rs[2], &[0, 1, 2]);
        for _ in 0..3 {
            let out = rs[2].take_ready().messages;
            deliver(&mut rs, r(2), out, |to, _| to == r(1));
            let out = rs[1].take_ready().messages;
            deliver(&mut rs, r(1), out, |to, _| to == r(2));
        }
        let cut_off = rs[2].boundary().map(|b| b.1.to_vec());
        // r0 reachable again: r2's rounds go on (ticks), everyone talks.
        for step in 1..8 {
            let now = Duration::from_secs(step);
            rs[2].tick(now);
            settle(&mut rs, now, |_, _| false);
        }
        let healed = rs[2].boundary().map(|b| b.1.to_vec());
        (v1, cut_off, healed)
    }

    #[test]
    fn a_wiped_acceptor_is_fenced_and_the_two_others_decide_the_first_boundary() {
        let (v1, cut_off, healed) = wiped_acceptor(false);
        assert_eq!(v1, vec![1, 0, 0], "r1 and r0 decided a boundary holding y");
        assert_eq!(
            cut_off, None,
            "the rejoined r1 promises nothing in epoch 0: r2 alone is no majority"
        );
        assert_eq!(
            healed,
            Some(v1),
            "r0 and r2, a majority of three without the wiped r1, decide B: the one decided"
        );
    }

    #[cfg(feature = "sabotage")]
    #[test]
    fn sabotage_a_wiped_acceptor_that_promised_afresh_decides_a_second_boundary() {
        let (v1, cut_off, _) = wiped_acceptor(true);
        assert_eq!(v1, vec![1, 0, 0]);
        assert_eq!(
            cut_off,
            Some(vec![0, 0, 0]),
            "r2 and the wiped r1 decide a second boundary, below y: an old instance that \
             may have committed would be left unordered against new ones"
        );
    }

    /// A restart re-executes the log: its change seals epoch 0 afresh (a new promise, nothing
    /// accepted or decided). The stored seal must win, on the disk too (seed 788 of
    /// `random_seeds_with_changes`: the fresh seal overwrote the stored decision).
    #[test]
    fn a_restart_keeps_the_stored_seal_over_the_one_its_log_makes_again() {
        let mut rs = cluster(3);
        let stored = Seal {
            promised: Some(Ballot {
                round: 3,
                replica: r(2),
            }),
            accepted: Some((
                Ballot {
                    round: 3,
                    replica: r(2),
                },
                vec![2, 0, 0],
            )),
            decided: Some(vec![2, 0, 0]),
            ..Seal::new(Epoch(0), vec![2, 0, 0])
        };
        change(&mut rs[1], &[0, 1, 2]); // what re-executing the change does
        rs[1].restore_seals(vec![stored.clone()]);
        assert_eq!(rs[1].seals(), [stored].as_slice());
        assert_eq!(
            rs[1].take_ready().sealed,
            None,
            "nothing overwrites the stored seal"
        );
        assert_eq!(rs[1].boundary(), Some((Epoch(0), [2, 0, 0].as_slice())));
        // A seal of a later epoch than any stored (its change executed, the seal not stored
        // before the crash) is kept, and stored. (`change` made epoch 1 already.)
        let e1 = Configuration::new(Epoch(1), ids(&[0, 1, 2])).expect("valid");
        let e2 = Configuration::new(Epoch(2), ids(&[0, 1, 2])).expect("valid");
        assert!(rs[1].adopt_configuration(e2.clone()));
        rs[1].seal_epoch(&e1, &e2);
        let fresh = rs[1].seals().to_vec();
        let stored = fresh[..1].to_vec();
        rs[1].restore_seals(stored);
        assert_eq!(rs[1].seals(), fresh.as_slice());
        assert_eq!(rs[1].take_ready().sealed, Some(fresh));
    }

    /// Seed 1459 of `random_seeds_with_removals`, by hand: epoch 0 = {r0..r4} removes r1 (dead
    /// from the start). r4 leads `y` = 4.0, which r0 alone pre-accepts; r0, r2, r3 and r4
    /// seal (r2 and r3 without `y`), then r4 dies. `y` may have committed on the fast path
    /// with {r4, r0, r1} as far as the survivors know, so recovery must accept its command;
    /// with the decided boundary (r0's seal holds `y`) r2 and r3 vote on it, and it commits.
    #[test]
    fn an_old_instance_above_the_survivors_seals_but_below_the_decided_boundary_is_decided() {
        let mut rs = cluster(5);
        let dead = |from: ReplicaId, to: ReplicaId| from == r(1) || to == r(1);
        rs[4].propose(1, put(1, "k")).expect("room");
        rs[4].flush(T);
        let out = rs[4].take_ready().messages;
        deliver(&mut rs, r(4), out, |to, _| to == r(0));
        let _ = rs[0].take_ready(); // its PreAcceptOk is lost
        let y = id(4, 0);
        let old = Configuration::initial(5);
        let new = Configuration::new(Epoch(1), ids(&[0, 2, 3, 4])).expect("valid");
        for i in [0, 2, 3, 4] {
            assert!(rs[i].adopt_configuration(new.clone()));
            rs[i].seal_epoch(&old, &new);
        }
        assert_eq!(rs[2].seals()[0].ends[4], 0, "r2 sealed without y");
        let gone = |from: ReplicaId, to: ReplicaId| dead(from, to) || from == r(4) || to == r(4);
        let mut now = T;
        for step in 1..=100u64 {
            now = Duration::from_millis(100 * step);
            for r in rs.iter_mut() {
                r.tick(now);
            }
            settle(&mut rs, now, gone);
        }
        assert_eq!(
            rs[2].boundary(),
            Some((Epoch(0), [0, 0, 0, 0, 1].as_slice()))
        );
        for i in [0, 2, 3] {
            let inst = rs[i].instance(y).expect("held");
            assert!(inst.status.is_decided(), "r{i} at {now:?}: {inst:?}");
            assert_eq!(inst.commands, commands(1, "k"), "y's command, not a no-op");
        }
    }

    /// Seed 6324 of `random_seeds_with_changes`, by hand: r2 leads `y` = 2.0, r0 alone
    /// pre-accepts it; the change removing r2 executes; r1, r3 and r4 (sealed without `y`)
    /// decide `B` while r0 is cut off, so `y` lies above `B`; then r3 dies too and r0 comes
    /// back. {r2, r0, r3} may have been `y`'s fast quorum as far as r0, r1 and r4 can tell, so
    /// the answers alone say Validate, which r1 and r4 refuse above their seals. Returns, after
    /// 10 s of ticks, how r0, r1 and r4 hold `y` (`None`: not decided).
    fn old_instance_above_the_decided_boundary(keep_recovering: bool) -> Vec<Option<Commands>> {
        let mut rs = cluster(5);
        if keep_recovering {
            #[cfg(feature = "sabotage")]
            for r in rs.iter_mut() {
                r.opts.sabotage.keep_recovering_above_boundary = true;
            }
        }
        rs[2].propose(1, put(1, "k")).expect("room");
        rs[2].flush(T);
        let out = rs[2].take_ready().messages;
        deliver(&mut rs, r(2), out, |to, _| to == r(0));
        let _ = rs[0].take_ready(); // its PreAcceptOk is lost
        let y = id(2, 0);
        let old = Configuration::initial(5);
        let new = Configuration::new(Epoch(1), ids(&[0, 1, 3, 4])).expect("valid");
        for i in [0, 1, 3, 4] {
            assert!(rs[i].adopt_configuration(new.clone()));
            rs[i].seal_epoch(&old, &new);
        }
        assert_eq!(rs[0].seals()[0].ends[2], 1, "r0 sealed holding y");
        let mut now = T;
        let mut run = |rs: &mut Vec<Replica>, steps: u64, cut: &dyn Fn(ReplicaId) -> bool| {
            for _ in 0..steps {
                now += Duration::from_millis(100);
                for r in rs.iter_mut() {
                    r.tick(now);
                }
                settle(rs, now, |from, to| cut(from) || cut(to));
            }
        };
        run(&mut rs, 20, &|x| x == r(0) || x == r(2));
        assert_eq!(
            rs[1].boundary(),
            Some((Epoch(0), [0, 0, 0, 0, 0].as_slice())),
            "decided by r1, r3 and r4, without r0's seal"
        );
        run(&mut rs, 100, &|x| x == r(2) || x == r(3));
        assert_eq!(rs[0].boundary(), rs[1].boundary(), "r0 learnt the decision");
        [0, 1, 4]
            .iter()
            .map(|i| {
                rs[*i]
                    .instance(y)
                    .filter(|inst| inst.status.is_decided())
                    .map(|inst| inst.commands.clone())
            })
            .collect()
    }

    #[test]
    fn an_old_instance_above_the_decided_boundary_is_recovered_as_a_no_op() {
        let held = old_instance_above_the_decided_boundary(false);
        assert_eq!(
            held,
            vec![Some(Commands::default()); 3],
            "y ends as a no-op"
        );
    }

    #[cfg(feature = "sabotage")]
    #[test]
    fn sabotage_recovery_that_follows_the_answers_above_the_boundary_never_ends() {
        let held = old_instance_above_the_decided_boundary(true);
        assert_eq!(held[0], None, "r0 still recovering y: {held:?}");
    }

    /// The danger of `docs/membership.md`: {r0, r1, r2} becomes {r0, r1, r3}. r1 leads an
    /// old-epoch write `y` = 1.0 that r2 alone hears and commits with r1 (r0 never hears of it);
    /// then r0 leads a new-epoch write `x` = 0.0 on the same key that r3 (simulated by hand,
    /// empty) alone answers. Returns whether `x` and `y` are ordered, and `x`'s deps.
    fn new_epoch_write_after_an_unseen_old_one(omit_boundary: bool) -> (bool, Deps) {
        let mut rs = cluster(3);
        if omit_boundary {
            #[cfg(feature = "sabotage")]
            {
                rs[0].opts.sabotage.omit_boundary_deps = true;
            }
        }
        rs[1].propose(1, put(1, "k")).expect("room");
        settle(&mut rs, T, |_, to| to == r(0));
        let y = id(1, 0);
        let y_deps = rs[1].instance(y).expect("led").deps.clone();
        assert!(rs[1].instance(y).expect("led").status.is_decided());
        // Everyone executes the change (r2 is about to die); r0 learns B from r1.
        for r in rs.iter_mut() {
            change(r, &[0, 1, 3]);
        }
        settle(&mut rs, T, |from, to| from == r(2) || to == r(2));
        assert_eq!(rs[0].boundary(), Some((Epoch(0), [0, 1, 0, 0].as_slice())));
        // x: r0's PreAccept reaches only r3, whose empty table adds nothing.
        propose_answered_beyond(&mut rs);
        let x = id(0, 0);
        let inst = rs[0].instance(x).expect("led");
        assert!(inst.status.is_decided(), "x commits with r0 and r3");
        assert_eq!(inst.epoch, Epoch(1));
        let x_deps = inst.deps.clone();
        (ordered((x, &x_deps), (y, &y_deps)), x_deps)
    }

    #[test]
    fn new_epoch_deps_cover_the_boundary() {
        let (ordered, deps) = new_epoch_write_after_an_unseen_old_one(false);
        assert!(ordered, "x depends on y through the boundary");
        assert_eq!(deps, Deps::from([id(1, 0)]));
    }

    #[cfg(feature = "sabotage")]
    #[test]
    fn sabotage_new_epoch_deps_that_omit_the_boundary_leave_old_and_new_unordered() {
        let (ordered, deps) = new_epoch_write_after_an_unseen_old_one(true);
        assert!(deps.is_empty());
        assert!(
            !ordered,
            "the Visibility check fails: x and y interfere, neither sees the other"
        );
    }

    #[test]
    fn the_cover_retires_once_the_boundary_is_known_committed() {
        let (_, _) = new_epoch_write_after_an_unseen_old_one(false);
        let mut rs = cluster(3);
        rs[1].propose(1, put(1, "k")).expect("room");
        settle(&mut rs, T, |_, to| to == r(0));
        for r in rs.iter_mut() {
            change(r, &[0, 1, 2]);
        }
        settle(&mut rs, T, |_, _| false);
        // r0 learns 1.0's Commit (a watermark round): the cover is moot from then on.
        let later = Duration::from_secs(1);
        for r in rs.iter_mut() {
            r.tick(later);
        }
        settle(&mut rs, later, |_, _| false);
        rs[0].propose(2, put(2, "other")).expect("room");
        rs[0].flush(later);
        let led = rs[0].instance(id(0, 0)).expect("led");
        assert_eq!(
            led.deps,
            Deps::new(),
            "another key, and row 1 known committed"
        );
    }

    /// A sealed replica that votes above its seal: r0 and r2 executed the change to
    /// {r0, r1, r3} and r0 knows B (nothing of row 1); r1 has not, and leads an old-epoch write
    /// `y` = 1.0 that asks r2. Meanwhile r0 leads the new-epoch write `x` = 0.0 on the same key,
    /// which r3 (by hand) answers. Returns whether `y` committed with its command, and whether
    /// `x` and `y` are ordered if it did.
    fn old_write_after_the_seal(vote_above_seal: bool) -> (bool, bool) {
        let mut rs = cluster(3);
        if vote_above_seal {
            #[cfg(feature = "sabotage")]
            {
                rs[2].opts.sabotage.vote_above_seal = true;
            }
        }
        change(&mut rs[0], &[0, 1, 3]);
        change(&mut rs[2], &[0, 1, 3]);
        settle(&mut rs, T, |from, to| from == r(1) || to == r(1));
        assert_eq!(rs[0].boundary(), Some((Epoch(0), [0, 0, 0, 0].as_slice())));
        rs[1].propose(1, put(1, "k")).expect("room");
        settle(&mut rs, T, |from, to| from == r(0) || to == r(0));
        let y = id(1, 0);
        propose_answered_beyond(&mut rs);
        let x = id(0, 0);
        let x_inst = rs[0].instance(x).expect("led");
        assert!(x_inst.status.is_decided());
        let y_inst = rs[1].instance(y).expect("led");
        let y_committed = y_inst.status.is_decided() && !y_inst.commands.is_empty();
        (y_committed, ordered((x, &x_inst.deps), (y, &y_inst.deps)))
    }

    #[test]
    fn an_old_instance_above_the_boundary_cannot_commit_its_command() {
        let (y_committed, _) = old_write_after_the_seal(false);
        assert!(
            !y_committed,
            "r2 refused: y cannot reach a quorum of epoch 0"
        );
    }

    #[cfg(feature = "sabotage")]
    #[test]
    fn sabotage_a_sealed_replica_that_votes_above_its_seal_leaves_old_and_new_unordered() {
        let (y_committed, ordered) = old_write_after_the_seal(true);
        assert!(
            y_committed,
            "r2 voted above its seal: y committed with r1 and r2"
        );
        assert!(
            !ordered,
            "the Visibility check fails: x and y interfere, neither sees the other"
        );
    }

    /// The leader of a refused instance stops (the Nack), the instance ends as a no-op by
    /// recovery, and its command is proposed again, in the new epoch once the leader executed
    /// the change: executed once, answered once.
    #[test]
    fn a_refused_command_is_proposed_again_in_the_new_epoch_and_executes_once() {
        let mut rs = cluster(3);
        // The session's first request executes before the change (a first request whose
        // instance became a no-op is answered `Expired`: see `session`).
        rs[0].propose(6, put(1, "a")).expect("room");
        settle(&mut rs, T, |_, _| false);
        let _ = rs[0].take_ready();
        change(&mut rs[1], &[0, 1, 2]);
        change(&mut rs[2], &[0, 1, 2]);
        settle(&mut rs, T, |from, to| from == r(0) || to == r(0));
        let second = Command {
            request: RequestId(2),
            ..put(1, "b")
        };
        rs[0].propose(7, second).expect("room");
        settle(&mut rs, T, |_, _| false);
        let first = id(0, 1);
        assert!(
            !rs[0].leading.contains_key(&first),
            "the Nacks stopped the leader"
        );
        assert!(!rs[0].instance(first).expect("held").status.is_decided());
        let mut replies = Vec::new();
        let mut now = T;
        for step in 1..=200u64 {
            now = Duration::from_millis(100 * step);
            if step == 100 {
                change(&mut rs[0], &[0, 1, 2]);
            }
            for r in rs.iter_mut() {
                r.tick(now);
            }
            let mut net = crate::core::testkit::Network::new(3);
            for _ in 0..100 {
                for r in rs.iter_mut() {
                    r.flush(now);
                    let ready = r.take_ready();
                    if r.id() == ReplicaId(0) {
                        replies.extend(ready.replies.iter().map(|x| (x.token, x.result.clone())));
                    }
                    net.send(r.id(), ready.messages);
                }
                if net.is_empty() {
                    break;
                }
                for e in net.drain() {
                    rs[e.to.index()].handle(now, e.from, e.msg);
                }
            }
        }
        let _ = now;
        // Every try in epoch 0 (after 0.0, the first request) ended a no-op; the one with the
        // command is of epoch 1.
        let mut own: Vec<_> = rs[0]
            .instances()
            .filter(|(i, _)| i.replica == r(0))
            .map(|(i, inst)| {
                (
                    *i,
                    inst.epoch,
                    inst.status.is_decided(),
                    inst.commands.len(),
                )
            })
            .collect();
        own.sort_unstable();
        assert!(own.iter().all(|(_, _, decided, _)| *decided), "{own:?}");
        let with_command: Vec<_> = own.iter().skip(1).filter(|(.., c)| *c > 0).collect();
        assert_eq!(with_command.len(), 1, "{own:?}");
        assert_eq!(with_command[0].1, Epoch(1), "{own:?}");
        assert!(own.len() >= 3, "{own:?}");
        assert_eq!(replies.len(), 1, "answered once: {replies:?}");
        assert_eq!(replies[0].0, 7);
        assert!(replies[0].1.is_ok(), "{replies:?}");
        for r in &rs {
            assert_eq!(
                r.kv().executed(),
                2,
                "{} executed both once: {own:?}",
                r.id()
            );
        }
    }
}
