//! The replicas and their lifecycle: each is a production `Node` (core, membership, peers'
//! incarnations, checkpoint cadence) whose outputs are carried out like the runtime does it
//! (`after_input`); crash (between steps, torn, for good), restart from the disk, wipe and
//! rejoin, and the count of failures against F.
//!
//! A restart replaces the replica by `Node::new` of its disk (checkpoint, if any, and records).
//! Messages that reach a replica while it is down are lost.
//!
//! A replica may also lose its disk and rejoin (`Config::wipes`, `Action::Wipe`; see
//! `Sim::wipe`), as the runtime does it: every peer fences its old incarnation (what that sent
//! and is still in flight is refused) and reports how far each row reaches; it starts from the
//! snapshot of the peer that executed most, and abstains below those horizons (across later
//! restarts too). Until it has learnt everything below its horizons committed, it counts against
//! the F failures like a replica that is down.

use std::collections::HashMap;
use std::fmt;

use epaxos_kv::core::checkpoint::Checkpoint;
use epaxos_kv::core::ids::{Incarnation, InstanceId, ReplicaId};
use epaxos_kv::core::membership::{JoinDecision, Joiner, Membership};
use epaxos_kv::core::node::{Node, Restored};
use epaxos_kv::core::quorum;
use epaxos_kv::core::replica::Path;
use epaxos_kv::core::testkit::envelopes;

use super::checkers::{Check, Violation};
use super::trace::What;
use super::world::{Event, Sim, TICK};

#[derive(Debug)]
pub(super) enum Fault {
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
    /// A random live member asks for the removal of a member (see `Config::removals`).
    Remove,
    /// A random live member asks to add the lowest spare not added yet (see `Config::adds`).
    Add,
}

/// Where a replica stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Life {
    Up,
    /// Crashes during its next step (see `Action::CrashTorn`), for cycle `.0`.
    Torn(u64),
    /// Down until the restart of cycle `.0`.
    Down(u64),
    /// Crashed for good.
    Dead,
}

/// The cycle of scripted crashes: `Action::Restart` restarts whatever cycle took it down.
pub(super) const SCRIPTED: u64 = u64::MAX;
/// Crashes between a checkpoint and the log cut get cycles from here on (the planned
/// crash-restart cycles are numbered from 0).
pub(super) const CHECKPOINT_CYCLES: u64 = 1 << 32;

/// Where every replica's wall clock starts (Unix milliseconds, late 2023): the runtime's clock
/// is far from 0, and 0 means "no clock" to the core.
pub(super) const EPOCH_MS: u64 = 1_700_000_000_000;

/// The incarnation of a replica's `generation`-th data directory (wipes bump it).
pub(super) fn incarnation_of(generation: u64) -> Incarnation {
    Incarnation::new(generation + 1).expect("one more than a count is never zero")
}

/// A list of replicas, as `r0, r2`.
pub(super) struct ShowReplicas<'a>(&'a [usize]);

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

impl Sim {
    pub(super) fn on_tick(&mut self, r: usize, incarnation: u64) {
        if !self.alive(r) || incarnation != self.incarnation[r] {
            return;
        }
        self.set_wall_clock(r);
        self.ticks[r] += 1;
        if self.nodes[r].joining() {
            // A spare knocks every 10 ticks until a change adds it (see `try_join`).
            if self.ticks[r].is_multiple_of(10) {
                self.try_join(r);
            }
            self.schedule(TICK, Event::Tick(r, incarnation));
            return;
        }
        self.nodes[r].tick(self.now);
        self.after_input(r);
        // The full check walks every instance: every 10th tick keeps it affordable (every step
        // gets the cheap one, see `after_input`).
        if self.ticks[r].is_multiple_of(10) {
            self.check_invariants(r);
        }
        self.schedule(TICK, Event::Tick(r, incarnation));
    }

    /// Replica `r`'s wall clock: the simulated time, skewed (see `Config::skew_max`).
    pub(super) fn set_wall_clock(&mut self, r: usize) {
        let wall = (EPOCH_MS + self.now.as_millis() as u64).saturating_add_signed(self.skew_ms[r]);
        self.nodes[r].set_wall_clock_ms(wall);
    }

    /// After any input: flush (start instances from what was proposed), then carry out the
    /// replica's outputs and show them to the observer.
    ///
    /// Like the runtime, the replica's records reach its disk before anything else of the
    /// `Ready` is carried out; a torn crash (see `Life::Torn`) happens here instead.
    pub(super) fn after_input(&mut self, r: usize) {
        self.set_wall_clock(r);
        self.nodes[r].flush(self.now);
        // After every step: a broken invariant is caught at the step that broke it.
        if let Err(e) = self.nodes[r].check_step_invariants() {
            self.invariant_broken(r, e);
        }
        let node_ready = self.nodes[r].take_ready();
        // A configuration decided here is stored before anything else of the `Ready` (see
        // `node::Ready::configuration`).
        if let Some(decided) = node_ready.configuration {
            self.configuration_disk[r] = Some(decided);
        }
        // What the node stores besides instance records comes first (see `node::Ready`).
        if let Some(peers) = node_ready.peers {
            self.peers_disk[r] = peers;
        }
        // Seals are stored before any message of the Ready leaves (see `replica::Ready`).
        if let Some(sealed) = &node_ready.core.sealed {
            self.sealed_disk[r] = sealed.clone();
        }
        assert!(
            node_ready.membership.is_none(),
            "joins happen only in `wipe`"
        );
        // A snapshot installed by a replica left behind (see `catch_up`): like the runtime, it
        // becomes its checkpoint and log.
        if let Some(install) = node_ready.install {
            self.durable[r] = install.records.iter().cloned().collect();
            self.disk[r] = install.records;
            self.checkpoint[r] = Some(install.checkpoint);
        }
        let mut ready = node_ready.core;
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
        // Like the runtime: the early messages leave, then the records are written and synced
        // (a torn crash hits in between), then the node learns they are durable.
        let early: Vec<_> = ready.messages.drain(..ready.early).collect();
        self.send_early(r, &ready.persist, early);
        if let Life::Torn(cycle) = self.life[r] {
            self.torn_crash(r, cycle, ready);
            return;
        }
        self.write_disk(r, &ready.persist);
        self.nodes[r].persisted();
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
        for out in &ready.messages {
            self.check_durable(r, &out.msg);
        }
        for envelope in envelopes(ReplicaId(r as u32), ready.messages) {
            self.send(envelope);
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
            let deps = inst.map(|i| i.deps.as_slice().to_vec()).unwrap_or_default();
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
            if self.admin_tokens.remove(&reply.token) {
                match &reply.result {
                    Ok(r) if r.success => self.stats.changes_executed += 1,
                    _ => self.stats.changes_stale += 1,
                }
                continue;
            }
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
        self.report_collected(r);
        self.maybe_checkpoint(r);
        if self.nodes[r].catching_up().is_some() {
            self.catch_up(r);
        }
    }

    /// Tells the observer what `r` dropped from memory since the last step.
    fn report_collected(&mut self, r: usize) {
        let now: Vec<u64> = self.nodes[r].replica().collected_prefix().to_vec();
        let mut ids = Vec::new();
        for (row, (&seen, &end)) in self.collected_seen[r].iter().zip(&now).enumerate() {
            ids.extend((seen..end).map(|slot| InstanceId::new(ReplicaId(row as u32), slot)));
        }
        for (seen, end) in self.collected_seen[r].iter_mut().zip(&now) {
            *seen = (*seen).max(*end);
        }
        if !ids.is_empty() {
            let replica = self.nodes[r].replica();
            self.observer.on_collected(r, &ids, |epoch| {
                let config = replica.configuration_of(epoch)?;
                Some(config.members().iter().map(|m| m.index()).collect())
            });
        }
    }

    /// Replica `r` found that a peer collected instances it has not executed
    /// (`Node::catching_up`): as the runtime does it (`join::catch_up`, then
    /// `Node::install_caught_up`), it fetches the snapshot of that peer, or else of another
    /// live one it can reach that is not catching up itself, and installs it. Atomic here; if
    /// no peer can give one now, it tries again after its next input (its ticks go on).
    pub(super) fn catch_up(&mut self, r: usize) {
        let Some(source) = self.nodes[r].catching_up() else {
            return;
        };
        if !self.alive(r) {
            return;
        }
        let n = self.nodes.len();
        let me = ReplicaId(r as u32);
        let incarnation = incarnation_of(self.generation[r]);
        let mut order = vec![source.index()];
        order.extend((0..n).filter(|&p| p != r && p != source.index()));
        for s in order {
            if !self.alive(s)
                || self.links.is_cut(s, r)
                || self.links.is_cut(r, s)
                || self.nodes[s].catching_up().is_some()
            {
                continue;
            }
            let Ok(image) = self.nodes[s].snapshot_for(me, Some(incarnation)) else {
                continue;
            };
            let checkpoint = Checkpoint::decode(&image.checkpoint, self.cfg.n)
                .expect("a snapshot the core encoded decodes");
            let covered = (
                checkpoint.gc_prefix.clone(),
                checkpoint.executed_above.clone(),
            );
            let executed_before = self.nodes[r].replica().kv().executed();
            self.nodes[r].install_caught_up(self.now, checkpoint, image.records);
            self.stats.catch_ups += 1;
            self.trace.record(
                self.now,
                What::Fault(format!(
                    "r{r} was left behind by {source}'s garbage collection: it installs \
                     r{s}'s snapshot (collected {}, {} executed; it had executed \
                     {executed_before})",
                    covered.0.iter().sum::<u64>(),
                    self.nodes[r].replica().kv().executed(),
                )),
            );
            let source_digest = self.nodes[s].replica().kv().digest();
            self.observer
                .on_rejoin(r, self.nodes[r].replica(), s, source_digest, covered);
            self.check_invariants(r);
            self.after_input(r);
            return;
        }
    }

    pub(super) fn on_fault(&mut self, f: Fault) {
        match f {
            Fault::Cut(links, what) => {
                if self.settling {
                    return;
                }
                for (a, b) in links {
                    self.links.cut(a, b);
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
            Fault::Remove => self.remove_a_member(),
            Fault::Add => self.add_a_member(),
        }
    }

    /// A random live member asks for the removal of a member of its configuration: one crashed
    /// for good if there is one (the usual reason), else any member while no permanent crash is
    /// still to come (a crash after the removal of a live member could leave no majority).
    fn remove_a_member(&mut self) {
        if self.settling {
            return;
        }
        let askers: Vec<usize> = (0..self.cfg.n)
            .filter(|r| self.alive(*r) && !self.nodes[*r].removed())
            .collect();
        if askers.is_empty() {
            return;
        }
        let asker = askers[self.rng.index(askers.len())];
        let members: Vec<usize> = self.nodes[asker]
            .configuration()
            .members()
            .iter()
            .map(|m| m.index())
            .collect();
        let dead: Vec<usize> = members
            .iter()
            .copied()
            .filter(|m| self.life[*m] == Life::Dead)
            .collect();
        let target = if let Some(&d) = dead.first() {
            d
        } else if self.crashes_ahead == 0 && members.len() > 2 {
            members[self.rng.index(members.len())]
        } else {
            self.trace.record(
                self.now,
                What::Fault("removal skipped (a permanent crash is still to come)".into()),
            );
            return;
        };
        self.trace.record(
            self.now,
            What::Fault(format!("r{asker} asked to remove r{target}")),
        );
        let id = ReplicaId(target as u32);
        self.on_action(super::Action::Reconfigure {
            replica: asker,
            change: epaxos_kv::core::epoch::Change::Remove(id),
        });
    }

    /// A random live member (joined, not removed) asks to add the lowest spare that is not
    /// and never was a member as far as it knows (see `Config::adds`).
    fn add_a_member(&mut self) {
        if self.settling {
            return;
        }
        let askers: Vec<usize> = self.live().filter(|r| !self.nodes[*r].removed()).collect();
        if askers.is_empty() {
            return;
        }
        let asker = askers[self.rng.index(askers.len())];
        let ever = self.nodes[asker].replica().members_ever();
        let Some(target) =
            (self.cfg.n..self.nodes.len()).find(|s| !ever.contains(&ReplicaId(*s as u32)))
        else {
            return;
        };
        self.trace.record(
            self.now,
            What::Fault(format!("r{asker} asked to add r{target}")),
        );
        let id = target as u32;
        self.on_action(super::Action::Reconfigure {
            replica: asker,
            change: epaxos_kv::core::epoch::Change::Add(epaxos_kv::core::epoch::Member {
                id: ReplicaId(id),
                peer_addr: format!("sim-{id}:1"),
                client_addr: format!("sim-{id}:2"),
            }),
        });
    }

    /// A crash that a restart can undo: between steps, or torn (during the next step).
    pub(super) fn go_down(&mut self, r: usize, cycle: u64, torn: bool) {
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

    /// Replaces `r` by what its disk restores, and carries out what the restored replica
    /// sends (its uncommitted instances resumed).
    pub(super) fn restart(&mut self, r: usize) {
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
                configuration: self.configuration_disk[r].clone(),
                peers: self.peers_disk[r].clone(),
                checkpoint,
                records,
                sealed: self.sealed_disk[r].clone(),
            },
        );
        self.nodes[r].restarted(self.now);
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
    /// and is still in flight is refused from now on, see `on_deliver`) and the members of the
    /// configuration it joins answer how far each row reaches (`peer_rejoined`); the horizons
    /// are the per-row maximum. `r` then starts from a snapshot of the peer that executed most
    /// (its checkpoint, with `r`'s next slot at its row's horizon, and the decided instances
    /// beside it), keeps the horizons, and discards what restoring produced (re-execution
    /// answers nobody). Its disk becomes exactly that checkpoint and those records, and the
    /// fence of its older epochs' boundaries (`replica::seal`); clients waiting on the old
    /// incarnation get no answer.
    ///
    /// Across membership changes, as the runtime's join climbs to the later configuration a
    /// peer names: `r` joins the newest configuration among the live members. If it is not a
    /// member of it (removed meanwhile) it refuses to start, as the runtime does, and stays
    /// down for good. A spare still knocking (not added yet) just knocks on as a new
    /// incarnation.
    ///
    /// A rejoin waits for every member: skipped (and traced) when another replica is down, or
    /// when `r` crashed for good, or a member of the configuration it joins has not joined or
    /// not learnt it yet. `r` itself may be up or down for a restart. It is skipped too when
    /// there is no room for one more failure (see `abstaining`; the smallest F of epoch 0 and
    /// the configurations the live replicas act in): other replicas abstaining, and permanent
    /// crashes still to come, would then exceed F.
    pub(super) fn wipe(&mut self, r: usize) {
        use epaxos_kv::core::epoch::{Configuration, Epoch};
        let n = self.cfg.n;
        let total = self.nodes.len();
        if self.alive(r) && self.nodes[r].joining() {
            // Nothing on its disk but its address: a new incarnation knocks from now on.
            self.generation[r] += 1;
            self.incarnation[r] += 1;
            self.stats.wipes_knocking += 1;
            self.trace.record(
                self.now,
                What::Fault(format!(
                    "wipe r{r}, a spare not added yet: it knocks afresh"
                )),
            );
            let incarnation = self.incarnation[r];
            self.schedule(TICK, Event::Tick(r, incarnation));
            return;
        }
        let down: Vec<usize> = (0..total).filter(|&p| p != r && !self.alive(p)).collect();
        let live: Vec<usize> = self.live().filter(|&p| p != r).collect();
        let newest: Option<Configuration> = live
            .iter()
            .map(|&p| self.nodes[p].configuration().clone())
            .max_by_key(|c| c.epoch());
        // Until it has caught up to its horizons, the rejoined replica counts as a failure (see
        // `abstaining`): keep room for the permanent crashes still to come.
        let f = live
            .iter()
            .map(|&p| self.nodes[p].configuration().max_failures())
            .chain([quorum::max_failures(n)])
            .min()
            .unwrap_or(0);
        // The boundary of the epoch before the newest, while some live member does not know it
        // decided: the rejoined replica is fenced there (`replica::seal`), so it counts as a
        // failure of that epoch too.
        let me = ReplicaId(r as u32);
        let previous = newest.as_ref().and_then(|c| {
            let before = Epoch(c.epoch().0.checked_sub(1)?);
            let undecided = live.iter().any(|&p| {
                c.is_member(ReplicaId(p as u32))
                    && self.nodes[p].replica().boundary().map(|b| b.0) != Some(before)
            });
            let config = live
                .iter()
                .find_map(|&p| self.nodes[p].replica().configuration_of(before).cloned())?;
            (undecided && config.is_member(me)).then_some(config)
        });
        let f = f.min(previous.map_or(usize::MAX, |c| c.max_failures()));
        // Every epoch `r` was a member of: an instance of it still undecided is recovered by
        // that epoch's members only, and the rejoined replica abstains below its horizons, so
        // the wipe is a failure of each (a 2-member epoch has F = 0: wiping one of its members
        // leaves its undecided instances without a quorum for good, seed 3210).
        let f = newest.as_ref().map_or(f, |c| {
            let holder = live
                .iter()
                .copied()
                .find(|&p| self.nodes[p].configuration().epoch() == c.epoch());
            (0..=c.epoch().0)
                .filter_map(|e| {
                    holder.and_then(|p| self.nodes[p].replica().configuration_of(Epoch(e)).cloned())
                })
                .filter(|config| config.is_member(me))
                .map(|config| config.max_failures())
                .fold(f, usize::min)
        });
        // A removal still to come (asked or not) shrinks the configuration it rejoins, and with
        // it F, while the rejoined replica may still abstain.
        let f = newest.as_ref().map_or(f, |c| {
            let ever = live
                .iter()
                .map(|&p| self.nodes[p].replica().members_ever().len())
                .max()
                .unwrap_or(0);
            let removed = ever.saturating_sub(c.len());
            let pending = self.cfg.removals.saturating_sub(removed);
            let smallest = c.len().saturating_sub(pending).max(1);
            f.min((smallest - 1) / 2)
        });
        let impaired = self.impaired_except(r);
        let unready: Vec<usize> = newest.as_ref().map_or_else(Vec::new, |c| {
            c.members()
                .iter()
                .map(|m| m.index())
                .filter(|&p| p != r && (self.nodes[p].joining() || self.nodes[p].rows() < c.rows()))
                .collect()
        });
        // A removed replica still running is asked nothing by the join, but may know more of a
        // row than the members (an instance of the old incarnation's that only it holds): the
        // new incarnation would use such a slot of its own row again, or vote where the old
        // one did, and the removed replica refuse its Commits. Not simulated (see the runner).
        let reach = |ps: &mut dyn Iterator<Item = usize>| {
            let mut ends: Vec<u64> = Vec::new();
            for p in ps {
                let reach = self.nodes[p].replica().row_reach();
                if ends.len() < reach.len() {
                    ends.resize(reach.len(), 0);
                }
                for (e, x) in ends.iter_mut().zip(reach) {
                    *e = (*e).max(x);
                }
            }
            ends
        };
        let (members, removed): (Vec<usize>, Vec<usize>) = live.iter().partition(|&&p| {
            newest
                .as_ref()
                .is_some_and(|c| c.is_member(ReplicaId(p as u32)))
        });
        let known = reach(&mut members.into_iter());
        let beyond: Vec<usize> = removed
            .into_iter()
            .filter(|&p| {
                let theirs = reach(&mut std::iter::once(p));
                theirs
                    .iter()
                    .enumerate()
                    .any(|(row, e)| *e > known.get(row).copied().unwrap_or(0))
            })
            .collect();
        let skip = if self.life[r] == Life::Dead {
            Some("it crashed for good".to_string())
        } else if !down.is_empty() {
            Some(format!("{} down", ShowReplicas(&down)))
        } else if impaired + self.crashes_ahead >= f {
            Some(format!(
                "it counts as a failure until it catches up, and {impaired} other replicas \
                 abstain and {} permanent crashes are ahead (F = {f})",
                self.crashes_ahead
            ))
        } else if !beyond.is_empty() {
            Some(format!(
                "{} (removed, still running) know rows further than the members",
                ShowReplicas(&beyond)
            ))
        } else if !unready.is_empty() {
            Some(format!(
                "{} of the configuration it would join not joined or behind",
                ShowReplicas(&unready)
            ))
        } else {
            None
        };
        let (Some(newest), None) = (newest, skip.as_ref()) else {
            self.stats.wipes_skipped += 1;
            let why = skip.unwrap_or_else(|| "no live peer".to_string());
            self.trace.record(
                self.now,
                What::Fault(format!("wipe of r{r} skipped: {why}")),
            );
            return;
        };
        self.generation[r] += 1;
        if !newest.is_member(me) {
            // Removed meanwhile: the runtime's join learns the configuration that has no place
            // for it and refuses to start. Nothing it voted on is voted on again.
            self.life[r] = Life::Dead;
            self.incarnation[r] += 1;
            self.stats.wipes_removed += 1;
            self.trace.record(
                self.now,
                What::Fault(format!(
                    "wipe r{r}: its peers act in {newest}, which it is not a member of: it \
                     refuses to start"
                )),
            );
            return;
        }
        // The new incarnation asks every member to Join: each fences the old one (durably) and
        // reports its row ends; what the sent answers decide is the production `Joiner`'s.
        let new_incarnation = incarnation_of(self.generation[r]);
        let mut joiner = Joiner::of(me, newest.clone(), false);
        for p in newest
            .members()
            .iter()
            .map(|m| m.index())
            .filter(|&p| p != r)
        {
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
                .expect("answers of members over the rows of the configuration");
        }
        // The live replicas outside it (removed, still running) fence the old incarnation too,
        // as in the runtime those the join asked before it learnt the later configuration do
        // (it asks `config.json`'s first); their answers do not count.
        for p in live
            .iter()
            .copied()
            .filter(|&p| !newest.is_member(ReplicaId(p as u32)))
        {
            self.nodes[p].answer_join(0, me, Some(new_incarnation));
            let ready = self.nodes[p].take_ready();
            assert!(
                ready.core.persist.is_empty() && ready.core.messages.is_empty(),
                "answering a Join changes no instance"
            );
            if let Some(peers) = ready.peers {
                self.peers_disk[p] = peers;
            }
        }
        let mut node = Node::new(
            self.opts[r].clone(),
            self.cfg.checkpoint_every,
            self.now,
            Restored {
                membership: Membership::Joining,
                configuration: None,
                peers: vec![None; n],
                checkpoint: None,
                records: Vec::new(),
                sealed: Vec::new(),
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
                node.join_from_snapshot(
                    self.now,
                    newest.epoch(),
                    horizons.clone(),
                    checkpoint,
                    records,
                );
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
        // Its fence of the older epochs' boundaries, if any (see `Node::join_from_snapshot`).
        self.sealed_disk[r] = ready.core.sealed.clone().unwrap_or_default();
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
        // The new incarnation continues its row at its horizon: what the old one sent early at
        // or above it reached no peer (the horizon is the furthest any peer saw), so a slot
        // there may be started again; below it, never.
        let own_horizon = installed[r];
        self.started
            .retain(|id| id.replica.index() != r || id.slot < own_horizon);
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

    pub(super) fn crash(&mut self, r: usize) {
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

    /// Whether `r` is running (a torn crash waits for its next step).
    pub(super) fn alive(&self, r: usize) -> bool {
        matches!(self.life[r], Life::Up | Life::Torn(_))
    }

    /// Whether `r` rejoined and still abstains on some instance: below its horizons, not known
    /// committed there. Its peers decide those without it, as if it were down: until it has
    /// learnt them all committed, it counts against the F failures the cluster tolerates (a
    /// permanent crash meanwhile could leave an instance that only the crashed replica and
    /// the wiped one's old incarnation knew, which nobody can decide safely any more).
    pub(super) fn abstaining(&mut self, r: usize) -> bool {
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
    pub(super) fn impaired_except(&mut self, r: usize) -> usize {
        (0..self.nodes.len())
            .filter(|&p| p != r)
            .filter(|&p| self.life[p] != Life::Up || self.abstaining(p))
            .count()
    }

    /// Replicas running that joined (a spare knocking to be added takes part in nothing).
    pub(super) fn live(&self) -> impl Iterator<Item = usize> + '_ {
        (0..self.nodes.len()).filter(|r| self.alive(*r) && !self.nodes[*r].joining())
    }

    /// Spare `r` (an id beyond epoch 0's, see `Config::spares`) asks every replica it reaches
    /// to Join, as the runtime's joiner does: those that know no configuration with its id
    /// refuse (and remember it knocked, so a change adding it counts it live). Once replicas
    /// that know it answer and make, with it, a majority of the newest configuration among
    /// them (the runtime's JoinReply carries it), the production `Joiner` decides, and `r`
    /// installs the snapshot of the best source (`Node::join_from_snapshot`) and takes part.
    /// Atomic here, like `wipe`; peers are asked only when the answers suffice, so a spare's
    /// incarnation is recorded by its peers only by the join that succeeds.
    pub(super) fn try_join(&mut self, r: usize) {
        use epaxos_kv::core::epoch::Configuration;
        let me = ReplicaId(r as u32);
        let incarnation = incarnation_of(self.generation[r]);
        let reachable: Vec<usize> = (0..self.nodes.len())
            .filter(|&p| {
                p != r
                    && self.alive(p)
                    && !self.nodes[p].joining()
                    && !self.links.is_cut(p, r)
                    && !self.links.is_cut(r, p)
            })
            .collect();
        let knowing: Vec<usize> = reachable
            .iter()
            .copied()
            .filter(|&p| self.nodes[p].rows() > r)
            .collect();
        let newest: Option<Configuration> = knowing
            .iter()
            .map(|&p| self.nodes[p].configuration().clone())
            .max_by_key(|c| c.epoch());
        let ready = newest.as_ref().is_some_and(|c| {
            c.is_member(me)
                && knowing
                    .iter()
                    .filter(|&&p| {
                        // A peer that has not learnt every row of `c` (a later add) gives an
                        // answer the Joiner refuses (the runtime asks it again): not counted.
                        c.is_member(ReplicaId(p as u32)) && self.nodes[p].rows() >= c.rows()
                    })
                    .count()
                    + 1
                    >= c.slow_quorum()
        });
        let Some(configuration) = newest.filter(|_| ready) else {
            // Knock: refused by those that do not know it yet.
            for &p in reachable.iter().filter(|p| !knowing.contains(p)) {
                self.nodes[p].answer_join(0, me, Some(incarnation));
                let answer = self.nodes[p].take_ready();
                assert!(
                    answer.peers.is_none() && answer.core.messages.is_empty(),
                    "a refused Join changes nothing but the knocking set"
                );
            }
            return;
        };
        let mut joiner = Joiner::of(me, configuration.clone(), false);
        for &p in &knowing {
            let id = ReplicaId(p as u32);
            self.nodes[p].answer_join(0, me, Some(incarnation));
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
                .expect("a replica that knows the row answers");
            if configuration.is_member(id) && answer.row_ends.len() >= configuration.rows() {
                joiner
                    .answered(id, answer)
                    .expect("answers of members over the rows known");
            }
        }
        let Some(JoinDecision::Rejoin { horizons, sources }) = joiner.decision() else {
            unreachable!(
                "a majority answered and nobody knew it: {:?}",
                joiner.decision()
            );
        };
        let s = sources[0].index();
        let image = self.nodes[s]
            .snapshot_for(me, Some(incarnation))
            .expect("the source answered this incarnation's Join");
        let checkpoint = Checkpoint::decode(&image.checkpoint, self.cfg.n)
            .expect("a snapshot the core encoded decodes");
        let covered = (
            checkpoint.gc_prefix.clone(),
            checkpoint.executed_above.clone(),
        );
        self.nodes[r].join_from_snapshot(
            self.now,
            configuration.epoch(),
            horizons,
            checkpoint,
            image.records,
        );
        let ready = self.nodes[r].take_ready();
        let installed = match ready.membership {
            Some(Membership::Joined { horizons }) => horizons,
            other => unreachable!("a join ends joined, not {other:?}"),
        };
        self.membership_disk[r] = Membership::Joined {
            horizons: installed.clone(),
        };
        let install = ready.install.expect("a join from a snapshot installs it");
        self.durable[r] = install.records.iter().cloned().collect();
        self.disk[r] = install.records;
        self.checkpoint[r] = Some(install.checkpoint);
        self.horizons[r] = Some(installed);
        self.digest[r] = self.nodes[r].replica().kv().digest();
        self.stats.joins += 1;
        self.trace.record(
            self.now,
            What::Fault(format!(
                "r{r} was added: it joins {configuration} from r{s}'s snapshot ({} records, {} \
                 executed)",
                self.disk[r].len(),
                self.nodes[r].replica().kv().executed(),
            )),
        );
        let source_digest = self.nodes[s].replica().kv().digest();
        self.observer
            .on_rejoin(r, self.nodes[r].replica(), s, source_digest, covered);
        self.check_invariants(r);
        self.after_input(r);
    }
}
