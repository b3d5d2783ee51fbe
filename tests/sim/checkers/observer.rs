//! The safety checks on what the cores report: agreement, visibility, execution order and
//! exactly-once execution. The observer sees every `Ready` of every replica and every restart;
//! it records what it needs when it sees a commit (garbage collection may drop an instance from
//! the table soon after it executes) and never trusts the core's own bookkeeping.
//!
//! A restarted replica executes its committed instances again from scratch, and `restore` does
//! not report that replay: the observer closes the replica's execution sequence at the restart
//! (it stays in the order check as an earlier incarnation's) and starts a new one with what
//! executes afterwards; the replayed set and the key/value store's counter are checked against
//! each other at once.
//!
//! A replica restored from a checkpoint does not execute again what the checkpoint covers (the
//! instances below its `gc_prefix` and those in its `executed_above`): the observer counts them
//! as executed (and committed) in the new incarnation, their requests as applied (the store's
//! counter comes back from the checkpoint), and checks that they are among what the replica had
//! executed before.
//!
//! A replica that lost its disk and rejoined (see `Sim::wipe`) starts from a peer's snapshot: its
//! old incarnation's execution sequence stays in the order check like a restarted one's, and the
//! new incarnation counts as executed (and committed) exactly what the snapshot covers (the
//! peer's `gc_prefix` and `executed_above`) and what restoring it executed. The snapshot must
//! cover exactly what the peer had executed, and the new replica's state must be the peer's.

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;

use epaxos_kv::core::command::{interferes, Command, Op};
use epaxos_kv::core::epoch::Epoch;
use epaxos_kv::core::ids::{ClientId, InstanceId, ReplicaId, RequestId};
use epaxos_kv::core::instance::{Instance, Status};
use epaxos_kv::core::message::{Commands, ShowDeps};
use epaxos_kv::core::replica::Replica;

use super::{Check, Violation};

/// What was decided for an instance, as first seen committed.
#[derive(Debug, Clone)]
struct Decided {
    commands: Commands,
    deps: Vec<InstanceId>,
    seen_at: usize,
}

/// Statistics about the committed dependency graph.
#[derive(Debug, Default, Clone, Copy)]
pub struct GraphStats {
    pub instances: usize,
    pub component_max: usize,
}

#[derive(Debug)]
pub struct Observer {
    decided: BTreeMap<InstanceId, Decided>,
    /// Whether replicas drop executed instances (`Options::gc_executed`): an instance missing
    /// from the table right after it executed is then no surprise.
    gc: bool,
    /// Per replica, since its last restart: instances in execution order.
    executed: Vec<Vec<InstanceId>>,
    /// Execution sequences of earlier incarnations: (replica, restarts before it, sequence).
    incarnations: Vec<(usize, u32, Vec<InstanceId>)>,
    /// Per replica: how each of its incarnations after the first began ("restart" or
    /// "rejoin"); `restarts[r]` is its length.
    began: Vec<Vec<&'static str>>,
    restarts: Vec<u32>,
    /// Per replica, in its current incarnation: instances executed (replayed ones included),
    /// instances committed.
    executed_set: Vec<HashSet<InstanceId>>,
    committed: Vec<HashSet<InstanceId>>,
    /// Per replica: the (client, request) pairs executed there, and the core's counter so far.
    applied: Vec<HashSet<(ClientId, RequestId)>>,
    kv_executed: Vec<u64>,
    /// Per replica: its store's count of requests refused as expired, as last seen.
    kv_refused: Vec<u64>,
    /// Commands refused as expired, by instance (the same at every replica: the refusal is
    /// decided by the execution order): a replica restored from a checkpoint or a snapshot
    /// counts them as not applied, so that the request may still execute once later.
    refused_in: HashSet<(InstanceId, ClientId, RequestId)>,
    violations: Vec<Violation>,
    /// A clock of commit and execution events, for the exemption in `check_visibility`.
    clock: u64,
    /// Per instance: when it was first committed anywhere.
    first_commit: HashMap<InstanceId, u64>,
    /// Per instance: the replicas that executed it, and when the last of all `n` did.
    executed_by: HashMap<InstanceId, (u64, Option<u64>)>,
    /// Per instance: when some replica first dropped it from memory.
    collected_at: HashMap<InstanceId, u64>,
    /// Per instance: its epoch, from its first commit seen.
    epochs: HashMap<InstanceId, Epoch>,
    n: usize,
}

impl Observer {
    /// `n` replicas in epoch 0 (the majority collection is checked against), `total` with the
    /// spares a change may add (see `Config::spares`).
    pub fn new(n: usize, total: usize, gc: bool) -> Observer {
        Observer {
            decided: BTreeMap::new(),
            gc,
            executed: vec![Vec::new(); total],
            incarnations: Vec::new(),
            began: vec![Vec::new(); total],
            restarts: vec![0; total],
            executed_set: vec![HashSet::new(); total],
            committed: vec![HashSet::new(); total],
            applied: vec![HashSet::new(); total],
            kv_executed: vec![0; total],
            kv_refused: vec![0; total],
            refused_in: HashSet::new(),
            violations: Vec::new(),
            clock: 0,
            first_commit: HashMap::new(),
            executed_by: HashMap::new(),
            collected_at: HashMap::new(),
            epochs: HashMap::new(),
            n,
        }
    }

    /// Replica `r` dropped `ids` from memory (garbage collection). Only what a majority of the
    /// instance's epoch executed may be collected (see `epaxos_kv::core::replica::collect`): a
    /// collected instance is never decided again, because every quorum of its epoch meets a
    /// member that executed it. `members_of` gives an epoch's members as `r` knows them.
    pub fn on_collected(
        &mut self,
        r: usize,
        ids: &[InstanceId],
        members_of: impl Fn(Epoch) -> Option<Vec<usize>>,
    ) {
        for &id in ids {
            self.clock += 1;
            self.collected_at.entry(id).or_insert(self.clock);
            let epoch = self.epochs.get(&id).copied().unwrap_or_default();
            let members = members_of(epoch).unwrap_or_else(|| (0..self.n).collect());
            let mask = self.executed_by.get(&id).map_or(0, |(mask, _)| *mask);
            let executed: Vec<usize> = members
                .iter()
                .copied()
                .filter(|m| mask & (1 << m) != 0)
                .collect();
            if executed.len() <= members.len() / 2 {
                self.report(
                    Check::Invariant,
                    format!(
                        "r{r} collected {id} of {epoch}, executed only at {executed:?} of its \
                         members {members:?} (a majority of the instance's epoch must have \
                         executed what is collected)"
                    ),
                    vec![id],
                );
            }
        }
    }

    /// Every instance committed somewhere: its commands and deps.
    pub fn decided(&self) -> impl Iterator<Item = (InstanceId, &[Command], &[InstanceId])> {
        self.decided
            .iter()
            .map(|(id, d)| (*id, d.commands.as_slice(), d.deps.as_slice()))
    }

    pub fn take_violations(&mut self) -> Vec<Violation> {
        std::mem::take(&mut self.violations)
    }

    fn report(&mut self, check: Check, detail: String, instances: Vec<InstanceId>) {
        // One report per check is enough to explain a run; the rest would be echoes.
        if self.violations.iter().all(|v| v.check != check) {
            self.violations.push(Violation {
                check,
                detail,
                instances,
            });
        }
    }

    pub fn executed_at(&self, r: usize) -> &HashSet<InstanceId> {
        &self.executed_set[r]
    }

    /// What replica `r` holds committed in its current incarnation (what a checkpoint or a
    /// snapshot covers included).
    pub fn committed_at(&self, r: usize) -> &HashSet<InstanceId> {
        &self.committed[r]
    }

    /// Agreement: `id` became committed at replica `r`, which holds it as `inst` (from its
    /// table, or from the record it just persisted if it dropped it already); compare it with
    /// every earlier commit.
    pub fn on_commit(&mut self, r: usize, id: InstanceId, inst: Option<&Instance>) {
        self.clock += 1;
        self.first_commit.entry(id).or_insert(self.clock);
        let Some(inst) = inst else {
            self.report(
                Check::Agreement,
                format!("r{r} reported {id} committed but does not know it"),
                vec![id],
            );
            return;
        };
        if !inst.status.is_decided() {
            self.report(
                Check::Agreement,
                format!(
                    "r{r} reported {id} committed but holds it {:?}",
                    inst.status
                ),
                vec![id],
            );
            return;
        }
        self.committed[r].insert(id);
        self.epochs.entry(id).or_insert(inst.epoch);
        self.compare(r, id, &inst.commands, inst.deps.as_slice());
    }

    /// Replica `r` restarted as `replica`: it replayed its disk. What it holds committed must
    /// agree with every commit seen; it must have executed again everything it had executed
    /// before (whose state had digest `digest_before`), reaching the same state if nothing
    /// more; the requests its replay applied must be exactly those of the instances it executed
    /// again; its execution sequence starts anew.
    ///
    /// `checkpoint`, when the replica restored from one: its `gc_prefix` and `executed_above`.
    pub fn on_restart(
        &mut self,
        r: usize,
        replica: &Replica,
        digest_before: u64,
        checkpoint: Option<(Vec<u64>, Vec<InstanceId>)>,
    ) {
        self.new_incarnation(r, "restart");
        self.refused_in
            .extend(replica.replayed_refusals().iter().copied());
        let mut held: Vec<(InstanceId, &Instance)> = replica
            .instances()
            .filter(|(_, i)| i.status.is_decided())
            .map(|(id, i)| (*id, i))
            .collect();
        held.sort_by_key(|(id, _)| *id);
        self.committed[r] = held.iter().map(|(id, _)| *id).collect();
        let before = std::mem::take(&mut self.executed_set[r]);
        self.applied[r].clear();
        if let Some((gc_prefix, executed_above)) = checkpoint {
            let below = gc_prefix.iter().enumerate().flat_map(|(row, &end)| {
                (0..end).map(move |slot| InstanceId::new(ReplicaId(row as u32), slot))
            });
            let mut unknown = Vec::new();
            for id in below.chain(executed_above) {
                if !before.contains(&id) {
                    unknown.push(id);
                }
                self.executed_set[r].insert(id);
                self.committed[r].insert(id);
                if let Some(d) = self.decided.get(&id) {
                    for pair in requests_of(&self.refused_in, id, &d.commands) {
                        self.applied[r].insert(pair);
                    }
                }
            }
            unknown.sort_unstable();
            if let Some(&first) = unknown.first() {
                self.report(
                    Check::ExactlyOnce,
                    format!(
                        "r{r} restarted from a checkpoint that covers {} instances it had not \
                         executed: {}",
                        unknown.len(),
                        ShowDeps(Some(&unknown[..unknown.len().min(8)]))
                    ),
                    vec![first],
                );
            }
        }
        for (id, inst) in &held {
            self.compare(r, *id, &inst.commands, inst.deps.as_slice());
            if inst.status == Status::Executed {
                self.mark_executed(r, *id);
            }
        }
        let mut forgotten: Vec<InstanceId> = before
            .iter()
            .filter(|id| !self.executed_set[r].contains(*id))
            .copied()
            .collect();
        forgotten.sort_unstable();
        if let Some(&first) = forgotten.first() {
            self.report(
                Check::Durability,
                format!(
                    "r{r} restarted and did not execute again {} of the instances it had \
                     executed: {}",
                    forgotten.len(),
                    ShowDeps(Some(&forgotten[..forgotten.len().min(8)]))
                ),
                vec![first],
            );
        } else if before.len() == self.executed_set[r].len()
            && replica.kv().digest() != digest_before
        {
            self.report(
                Check::Convergence,
                format!(
                    "r{r} restarted and executed the same {} instances again, but its state \
                     differs from before the crash (digest {:#x} vs {digest_before:#x})",
                    before.len(),
                    replica.kv().digest()
                ),
                Vec::new(),
            );
        }
        let actual = replica.kv().executed();
        let expected = self.applied[r].len() as u64;
        self.kv_executed[r] = actual;
        self.kv_refused[r] = replica.kv().refused_expired();
        if !applied_matches(actual, replica.kv().refused_expired(), expected) {
            self.report(
                Check::ExactlyOnce,
                format!(
                    "r{r} restarted and executed {} instances again, holding {expected} \
                     distinct requests, but applied {actual}",
                    self.executed_set[r].len()
                ),
                Vec::new(),
            );
        }
    }

    /// Closes `r`'s execution sequence (it stays in the order check as an earlier
    /// incarnation's) and starts a new one.
    fn new_incarnation(&mut self, r: usize, how: &'static str) {
        let old = std::mem::take(&mut self.executed[r]);
        self.incarnations.push((r, self.restarts[r], old));
        self.restarts[r] += 1;
        self.began[r].push(how);
    }

    /// Replica `r` lost its disk and rejoined as `replica`, from a snapshot of replica `source`
    /// (whose store had digest `source_digest`) whose checkpoint has `gc_prefix` and
    /// `executed_above` (`checkpoint`). What `r` executed before no longer applies: its new
    /// incarnation counts as executed (and committed) what the snapshot covers and what
    /// restoring it executed, and as applied their requests. The snapshot must cover exactly
    /// what `source` had executed (ExactlyOnce: otherwise the new replica would execute some
    /// instance again, or never); what `r` holds committed must agree with every commit seen; if
    /// it executed exactly what `source` did, its state must be `source`'s (Convergence).
    pub fn on_rejoin(
        &mut self,
        r: usize,
        replica: &Replica,
        source: usize,
        source_digest: u64,
        checkpoint: (Vec<u64>, Vec<InstanceId>),
    ) {
        self.new_incarnation(r, "rejoin");
        self.refused_in
            .extend(replica.replayed_refusals().iter().copied());
        let mut held: Vec<(InstanceId, &Instance)> = replica
            .instances()
            .filter(|(_, i)| i.status.is_decided())
            .map(|(id, i)| (*id, i))
            .collect();
        held.sort_by_key(|(id, _)| *id);
        self.committed[r] = held.iter().map(|(id, _)| *id).collect();
        self.executed_set[r].clear();
        self.applied[r].clear();
        let (gc_prefix, executed_above) = checkpoint;
        let below = gc_prefix.iter().enumerate().flat_map(|(row, &end)| {
            (0..end).map(move |slot| InstanceId::new(ReplicaId(row as u32), slot))
        });
        let mut not_executed = Vec::new();
        for id in below.chain(executed_above) {
            if !self.executed_set[source].contains(&id) {
                not_executed.push(id);
            }
            self.mark_executed(r, id);
            self.committed[r].insert(id);
        }
        for (id, inst) in &held {
            self.compare(r, *id, &inst.commands, inst.deps.as_slice());
            if inst.status == Status::Executed {
                self.mark_executed(r, *id);
            }
        }
        not_executed.sort_unstable();
        if let Some(&first) = not_executed.first() {
            self.report(
                Check::ExactlyOnce,
                format!(
                    "r{r} rejoined from r{source}'s snapshot, which covers {} instances \
                     r{source} had not executed: {}",
                    not_executed.len(),
                    ShowDeps(Some(&not_executed[..not_executed.len().min(8)]))
                ),
                vec![first],
            );
        }
        let mut left_out: Vec<InstanceId> = self.executed_set[source]
            .iter()
            .filter(|id| !self.executed_set[r].contains(*id))
            .copied()
            .collect();
        left_out.sort_unstable();
        if let Some(&first) = left_out.first() {
            self.report(
                Check::ExactlyOnce,
                format!(
                    "r{r} rejoined from r{source}'s snapshot, which leaves out {} instances \
                     r{source} had executed (their effects are in its state, and r{r} would \
                     execute them again): {}",
                    left_out.len(),
                    ShowDeps(Some(&left_out[..left_out.len().min(8)]))
                ),
                vec![first],
            );
        } else if self.executed_set[r].len() == self.executed_set[source].len()
            && replica.kv().digest() != source_digest
        {
            self.report(
                Check::Convergence,
                format!(
                    "r{r} rejoined from r{source}'s snapshot and holds the same {} instances \
                     executed, but its state differs from r{source}'s (digest {:#x} vs \
                     {source_digest:#x})",
                    self.executed_set[r].len(),
                    replica.kv().digest()
                ),
                Vec::new(),
            );
        }
        let actual = replica.kv().executed();
        let expected = self.applied[r].len() as u64;
        self.kv_executed[r] = actual;
        self.kv_refused[r] = replica.kv().refused_expired();
        if !applied_matches(actual, replica.kv().refused_expired(), expected) {
            self.report(
                Check::ExactlyOnce,
                format!(
                    "r{r} rejoined from r{source}'s snapshot holding {} instances executed, \
                     with {expected} distinct requests, but its store applied {actual}",
                    self.executed_set[r].len()
                ),
                Vec::new(),
            );
        }
    }

    /// `id` is executed at `r` since its rejoin or restart (its effects are in the snapshot's
    /// state, or restoring executed it): its requests count as applied there, and `r` as one
    /// of the replicas that executed it. Restoring may execute an instance for the first time
    /// anywhere (a torn crash lost the step that executed it, but not its commit record): the
    /// replica then counts towards the majority that lets it and its peers collect it.
    fn mark_executed(&mut self, r: usize, id: InstanceId) {
        if !self.executed_set[r].insert(id) {
            return;
        }
        if let Some(d) = self.decided.get(&id) {
            for pair in requests_of(&self.refused_in, id, &d.commands) {
                self.applied[r].insert(pair);
            }
        }
        self.clock += 1;
        let (mask, everywhere) = self.executed_by.entry(id).or_default();
        *mask |= 1 << r;
        if everywhere.is_none() && mask.count_ones() as usize == self.n {
            *everywhere = Some(self.clock);
        }
    }

    fn compare(&mut self, r: usize, id: InstanceId, commands: &Commands, deps: &[InstanceId]) {
        match self.decided.get(&id) {
            None => {
                self.decided.insert(
                    id,
                    Decided {
                        commands: commands.clone(),
                        deps: deps.to_vec(),
                        seen_at: r,
                    },
                );
            }
            Some(d) => {
                let same_commands =
                    std::sync::Arc::ptr_eq(&d.commands, commands) || *d.commands == **commands;
                if !same_commands || d.deps != deps {
                    let detail =
                        format!(
                        "{id} committed at r{} with deps {} and {} commands, at r{r} with deps \
                         {} and {} commands{}",
                        d.seen_at,
                        ShowDeps(Some(&d.deps)),
                        d.commands.len(),
                        ShowDeps(Some(deps)),
                        commands.len(),
                        if same_commands { "" } else { " (commands differ)" }
                    );
                    self.report(Check::Agreement, detail, vec![id]);
                }
            }
        }
    }

    /// Exactly once: replica `r` executed `ids` (in order) in one step, refusing `refused` as
    /// expired. Every command of them whose (client, request) is new at `r` must have executed,
    /// unless the replica refused it as expired (its outcome is then unknown to the client, and
    /// the request may still execute later, once), and nothing else may have executed: a
    /// request executed at `r` before and executed again (a late retry of an expired session
    /// taken for a new session) is caught here. Session expiries are no requests.
    pub fn on_executed(
        &mut self,
        r: usize,
        replica: &Replica,
        ids: &[InstanceId],
        refused: &[(InstanceId, ClientId, RequestId)],
    ) {
        let refused_now = replica.kv().refused_expired();
        if refused_now - self.kv_refused[r] != refused.len() as u64 {
            self.report(
                Check::ExactlyOnce,
                format!(
                    "r{r} reported {} refusals as expired, its store counted {}",
                    refused.len(),
                    refused_now - self.kv_refused[r]
                ),
                ids.to_vec(),
            );
        }
        self.refused_in.extend(refused.iter().copied());
        let mut refused: Vec<(InstanceId, ClientId, RequestId)> = refused.to_vec();
        let mut fresh = 0u64;
        // Requests of this step executed here before (retries), with their retry flags.
        let mut seen_before = Vec::new();
        for &id in ids {
            self.clock += 1;
            let (mask, everywhere) = self.executed_by.entry(id).or_default();
            *mask |= 1 << r;
            if everywhere.is_none() && mask.count_ones() as usize == self.n {
                *everywhere = Some(self.clock);
            }
            if !self.executed_set[r].insert(id) {
                self.report(
                    Check::ExactlyOnce,
                    format!("r{r} executed instance {id} twice"),
                    vec![id],
                );
            }
            self.executed[r].push(id);
            match replica.instance(id) {
                Some(inst) if inst.status != Status::Executed => self.report(
                    Check::ExactlyOnce,
                    format!("r{r} reported {id} executed but holds it {:?}", inst.status),
                    vec![id],
                ),
                Some(_) => {}
                None if self.gc => {} // executed, then dropped in the same step
                None => self.report(
                    Check::ExactlyOnce,
                    format!("r{r} executed {id} which it does not know"),
                    vec![id],
                ),
            }
            if !self.committed[r].contains(&id) {
                self.report(
                    Check::ExactlyOnce,
                    format!("r{r} executed {id} which it never reported committed"),
                    vec![id],
                );
            }
            let Some(d) = self.decided.get(&id) else {
                continue;
            };
            for c in d.commands.clone().iter().filter(|c| is_request(c)) {
                let pair = (c.client, c.request);
                if let Some(i) = refused.iter().position(|p| *p == (id, c.client, c.request)) {
                    refused.swap_remove(i);
                    continue;
                }
                if self.applied[r].insert(pair) {
                    fresh += 1;
                } else {
                    seen_before.push((pair, c.retry));
                }
            }
        }
        if let Some(p) = refused.first() {
            self.report(
                Check::ExactlyOnce,
                format!("r{r} refused {p:?} as expired, but executed no such command"),
                ids.to_vec(),
            );
        }
        self.kv_refused[r] = replica.kv().refused_expired();
        let expected = self.kv_executed[r] + fresh;
        let actual = replica.kv().executed();
        self.kv_executed[r] = actual;
        if actual != expected {
            let what = if actual > expected {
                "applied a retried request again"
            } else {
                "skipped a request it had never applied (it took it for stale)"
            };
            self.report(
                Check::ExactlyOnce,
                format!(
                    "r{r} {what}: executing {} applied {} commands, {fresh} of them new \
                     (requests executed here before, with their retry flags: {seen_before:?})",
                    ShowDeps(Some(ids)),
                    actual - (expected - fresh)
                ),
                ids.to_vec(),
            );
        }
    }

    /// The end-of-run checks: every decided instance held alike everywhere, visibility over the
    /// committed graph, and the same order of interfering instances at every replica.
    pub fn finish(&mut self, replicas: &[&Replica]) -> GraphStats {
        for (r, replica) in replicas.iter().enumerate() {
            let mut held: Vec<_> = replica
                .instances()
                .filter(|(_, i)| i.status.is_decided())
                .map(|(id, i)| (*id, i.commands.clone(), i.deps.clone()))
                .collect();
            held.sort_by_key(|(id, _, _)| *id);
            for (id, commands, deps) in held {
                self.compare(r, id, &commands, deps.as_slice());
            }
        }
        let graph = Graph::new(&self.decided);
        self.check_visibility(&graph);
        self.check_execution_order();
        graph.stats()
    }

    fn check_visibility(&mut self, g: &Graph) {
        for (key, members) in g.by_key() {
            // Members in emission order (dependencies first). Consecutive writes must be
            // connected; a read must reach the write before it and be reached by the write after
            // it. Transitivity then connects every interfering pair.
            let mut last_write: Option<usize> = None;
            let mut reads_since: Vec<usize> = Vec::new();
            for &(v, write) in &members {
                if write {
                    if let Some(w) = last_write {
                        self.expect_reach(g, v, w, &key);
                    }
                    for &rd in &reads_since {
                        self.expect_reach(g, v, rd, &key);
                    }
                    reads_since.clear();
                    last_write = Some(v);
                } else {
                    if let Some(w) = last_write {
                        self.expect_reach(g, v, w, &key);
                    }
                    reads_since.push(v);
                }
            }
        }
    }

    fn expect_reach(&mut self, g: &Graph, from: usize, to: usize, key: &Conflict) {
        let (a, b) = (g.ids[from], g.ids[to]);
        assert!(
            interferes(g.rep_command(from, key), g.rep_command(to, key)),
            "the checker grouped non-interfering {a} and {b} under {key}"
        );
        // Executed at every replica before the other was committed anywhere: every replica
        // orders them alike whatever the deps say. Recovery may then commit the later one
        // without the earlier in its deps, when the earlier was dropped from memory (garbage
        // collection waits for execution everywhere; see `epaxos_kv::core::recovery`). Or
        // dropped from memory somewhere before the other was committed anywhere, past a
        // replica left behind (see `epaxos_kv::core::replica::collect`): every replica that
        // did not execute it installs a snapshot holding it before it executes anything
        // else; the execution-order check holds every replica (and each of its earlier
        // incarnations) to that.
        let before = |x: InstanceId, y: InstanceId| {
            let everywhere = self.executed_by.get(&x).and_then(|(_, at)| *at);
            let collected = self.collected_at.get(&x).copied();
            let committed = self.first_commit.get(&y);
            let first = match (everywhere, collected) {
                (Some(e), Some(c)) => Some(e.min(c)),
                (e, c) => e.or(c),
            };
            matches!((first, committed), (Some(e), Some(c)) if e < *c)
        };
        if before(a, b) || before(b, a) {
            return;
        }
        if g.reaches(from, to) == Reach::No && g.reaches(to, from) == Reach::No {
            self.report(
                Check::Visibility,
                format!(
                    "{a} and {b} interfere ({key}) and are committed, but neither reaches the \
                     other: {a} deps {}, {b} deps {}",
                    ShowDeps(Some(&g.deps_of(from))),
                    ShowDeps(Some(&g.deps_of(to)))
                ),
                vec![a, b],
            );
        }
    }

    fn check_execution_order(&mut self) {
        // Every execution sequence: each replica's current one and those of its earlier
        // incarnations (an incarnation must agree with the replica's later ones too).
        let mut seqs: Vec<(usize, u32, &[InstanceId])> = self
            .incarnations
            .iter()
            .map(|(r, i, s)| (*r, *i, s.as_slice()))
            .collect();
        for (r, s) in self.executed.iter().enumerate() {
            seqs.push((r, self.restarts[r], s.as_slice()));
        }
        let name = |(r, i): (usize, u32)| {
            if self.restarts[r] == 0 {
                format!("r{r}")
            } else if i == 0 {
                format!("r{r} (before its first {})", self.began[r][0])
            } else {
                format!("r{r} (after {} {i})", self.began[r][i as usize - 1])
            }
        };
        // Per conflict key, per sequence: the instances touching it in execution order, as
        // (instance, writes it).
        let mut per_key: BTreeMap<Conflict, Vec<Vec<(InstanceId, bool)>>> = BTreeMap::new();
        let n = seqs.len();
        for (r, &(_, _, order)) in seqs.iter().enumerate() {
            for id in order {
                let Some(d) = self.decided.get(id) else {
                    continue;
                };
                for (key, write) in keys_of(&d.commands) {
                    per_key.entry(key).or_insert_with(|| vec![Vec::new(); n])[r].push((*id, write));
                }
            }
        }
        let mut found = None;
        'keys: for (key, seqs) in &per_key {
            for r1 in 0..n {
                for r2 in r1 + 1..n {
                    if let Some(d) = order_difference(&seqs[r1], &seqs[r2]) {
                        found = Some((key.clone(), r1, r2, d));
                        break 'keys;
                    }
                }
            }
        }
        if let Some((key, s1, s2, (a, b))) = found {
            let (n1, n2) = (
                name((seqs[s1].0, seqs[s1].1)),
                name((seqs[s2].0, seqs[s2].1)),
            );
            self.report(
                Check::ExecutionOrder,
                format!(
                    "{n1} and {n2} execute {a} and {b}, which interfere ({key}), in different \
                     orders"
                ),
                vec![a, b],
            );
        }
    }
}

/// What two commands can conflict on: `interferes` says two commands conflict when their
/// operations touch one key and one of them writes, or when they come from one client session.
/// Grouping instances by these lets the checks look at conflicting pairs only.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Conflict {
    Key(Bytes),
    Session(ClientId),
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Conflict::Key(k) => write!(f, "key {}", String::from_utf8_lossy(k)),
            Conflict::Session(c) => write!(f, "session {}", c.0),
        }
    }
}

/// What a batch conflicts on, each with whether the batch writes it (a session is always
/// written: all its commands conflict).
pub fn keys_of(commands: &[Command]) -> Vec<(Conflict, bool)> {
    let mut keys: BTreeMap<Conflict, bool> = BTreeMap::new();
    for c in commands {
        if let Some(key) = c.op.key() {
            *keys.entry(Conflict::Key(key.clone())).or_default() |= c.op.is_write();
        }
        keys.insert(Conflict::Session(c.client), true);
    }
    keys.into_iter().collect()
}

/// Two replicas' executions of one conflict key, each as (instance, writes). Restricted to the
/// instances both executed, the writes must come in one order and each read between the same
/// writes.
/// Returns an interfering pair ordered differently, if any.
fn order_difference(
    a: &[(InstanceId, bool)],
    b: &[(InstanceId, bool)],
) -> Option<(InstanceId, InstanceId)> {
    let in_b: HashSet<InstanceId> = b.iter().map(|(i, _)| *i).collect();
    let in_a: HashSet<InstanceId> = a.iter().map(|(i, _)| *i).collect();
    // For each common instance: its write index (writes) or the last write before it (reads).
    let shape = |seq: &[(InstanceId, bool)], other: &HashSet<InstanceId>| {
        let mut writes = Vec::new();
        let mut read_after: BTreeMap<InstanceId, Option<InstanceId>> = BTreeMap::new();
        for (id, write) in seq.iter().filter(|(i, _)| other.contains(i)) {
            if *write {
                writes.push(*id);
            } else {
                read_after.insert(*id, writes.last().copied());
            }
        }
        (writes, read_after)
    };
    let (wa, ra) = shape(a, &in_b);
    let (wb, rb) = shape(b, &in_a);
    if let Some(pos) = wa.iter().zip(&wb).position(|(x, y)| x != y) {
        return Some((wa[pos], wb[pos]));
    }
    for (read, before_a) in &ra {
        let before_b = rb.get(read).copied().flatten();
        if *before_a != before_b {
            let w = before_a.or(before_b).expect("one of them is a write");
            return Some((*read, w));
        }
    }
    None
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reach {
    Yes,
    No,
    /// The search ran into an instance that is not committed: its deps are not final.
    Unknown,
}

/// An instance touching a key: (slot, whether it writes the key, its vertex).
type Member = (u64, bool, usize);

/// The committed dependency graph, condensed by Tarjan's algorithm (written here again, on an
/// explicit stack, so that the check does not lean on the core's `execute::order`).
struct Graph {
    ids: Vec<InstanceId>,
    commands: Vec<Commands>,
    succ: Vec<Vec<usize>>,
    /// Whether the instance has a dependency that is not committed anywhere.
    open: Vec<bool>,
    /// Per component: whether it reaches an open instance (itself included). Through the
    /// unknown deps of an open instance, anything may be reachable.
    comp_open: Vec<bool>,
    comp: Vec<usize>,
    comp_sizes: Vec<usize>,
}

impl Graph {
    /// Edges follow what a dependency means (see `epaxos_kv::core::deps`): `q.s` in the deps of `v`
    /// covers every instance of row `q` up to slot `s`, and `v` has an edge to each of those that
    /// interferes with it. This is the definition itself, every covered interfering instance,
    /// not the executor's shortcut through the latest one per key (which leans on the chain
    /// each leader builds), so the checks also test that shortcut.
    fn new(decided: &BTreeMap<InstanceId, Decided>) -> Graph {
        let ids: Vec<InstanceId> = decided.keys().copied().collect();
        // Per conflict key and row: the decided instances touching it, (slot, writes, vertex).
        let mut members: HashMap<(Conflict, u32), Vec<Member>> = HashMap::new();
        // Per row: the first slot not decided anywhere.
        let mut prefix: BTreeMap<u32, u64> = BTreeMap::new();
        for (v, (id, d)) in decided.iter().enumerate() {
            for (key, write) in keys_of(&d.commands) {
                members
                    .entry((key, id.replica.0))
                    .or_default()
                    .push((id.slot, write, v));
            }
        }
        for id in &ids {
            let p = prefix.entry(id.replica.0).or_insert(0);
            if *p == id.slot {
                *p += 1;
            }
        }
        let mut succ = Vec::with_capacity(ids.len());
        let mut open = Vec::with_capacity(ids.len());
        let mut commands = Vec::with_capacity(ids.len());
        for (v, d) in decided.values().enumerate() {
            let mut s = Vec::new();
            let mut o = false;
            for dep in &d.deps {
                o |= prefix.get(&dep.replica.0).copied().unwrap_or(0) <= dep.slot;
            }
            for (key, write) in keys_of(&d.commands) {
                for dep in &d.deps {
                    let Some(list) = members.get(&(key.clone(), dep.replica.0)) else {
                        continue;
                    };
                    for &(slot, w_write, w) in list {
                        if slot <= dep.slot && w != v && (write || w_write) {
                            s.push(w);
                        }
                    }
                }
            }
            s.sort_unstable();
            s.dedup();
            succ.push(s);
            open.push(o);
            commands.push(d.commands.clone());
        }
        let (comp, comp_sizes) = tarjan(&succ);
        let mut members: Vec<Vec<usize>> = vec![Vec::new(); comp_sizes.len()];
        for (v, &c) in comp.iter().enumerate() {
            members[c].push(v);
        }
        // Components in emission order: whatever a component reaches was numbered before it.
        let mut comp_open = vec![false; comp_sizes.len()];
        for (c, vs) in members.iter().enumerate() {
            comp_open[c] = vs
                .iter()
                .any(|&v| open[v] || succ[v].iter().any(|&w| comp[w] != c && comp_open[comp[w]]));
        }
        Graph {
            ids,
            commands,
            succ,
            open,
            comp_open,
            comp,
            comp_sizes,
        }
    }

    fn stats(&self) -> GraphStats {
        GraphStats {
            instances: self.ids.len(),
            component_max: self.comp_sizes.iter().copied().max().unwrap_or(0),
        }
    }

    fn deps_of(&self, v: usize) -> Vec<InstanceId> {
        self.succ[v].iter().map(|&j| self.ids[j]).collect()
    }

    /// A command of `v` conflicting on `key`, a write if it has one: what `interferes`
    /// compares.
    fn rep_command(&self, v: usize, key: &Conflict) -> &Command {
        let on_key = || {
            self.commands[v].iter().filter(move |c| match key {
                Conflict::Key(k) => c.op.key() == Some(k),
                Conflict::Session(s) => c.client == *s,
            })
        };
        on_key()
            .find(|c| c.op.is_write())
            .or_else(|| on_key().next())
            .expect("a member of a key's list touches the key")
    }

    /// Per key: the instances touching it, in component emission order (dependencies first),
    /// with whether they write it.
    fn by_key(&self) -> BTreeMap<Conflict, Vec<(usize, bool)>> {
        let mut out: BTreeMap<Conflict, Vec<(usize, bool)>> = BTreeMap::new();
        for v in 0..self.ids.len() {
            for (key, write) in keys_of(&self.commands[v]) {
                out.entry(key).or_default().push((v, write));
            }
        }
        for members in out.values_mut() {
            members.sort_by_key(|(v, _)| (self.comp[*v], *v));
        }
        out
    }

    /// Whether `to` is reachable from `from`. Components are numbered in emission order, so
    /// anything that reaches `to` through known deps has a component number at least `to`'s:
    /// the rest is pruned, unless it reaches an open instance, whose unknown deps might lead to
    /// `to`.
    fn reaches(&self, from: usize, to: usize) -> Reach {
        if self.comp[from] == self.comp[to] {
            return Reach::Yes;
        }
        let floor = self.comp[to];
        let mut seen = HashSet::new();
        let mut stack = vec![from];
        let mut open = false;
        while let Some(v) = stack.pop() {
            if v == to {
                return Reach::Yes;
            }
            if !seen.insert(v) {
                continue;
            }
            open |= self.open[v];
            for &w in &self.succ[v] {
                if self.comp[w] >= floor {
                    stack.push(w);
                } else {
                    open |= self.comp_open[self.comp[w]];
                }
            }
        }
        if open {
            Reach::Unknown
        } else {
            Reach::No
        }
    }
}

/// Tarjan's strongly connected components. Returns each vertex's component number (in
/// emission order: a component is numbered after every component it reaches) and the sizes.
fn tarjan(succ: &[Vec<usize>]) -> (Vec<usize>, Vec<usize>) {
    const UNSEEN: usize = usize::MAX;
    let n = succ.len();
    let mut index = vec![UNSEEN; n];
    let mut low = vec![0; n];
    let mut on_stack = vec![false; n];
    let mut comp = vec![UNSEEN; n];
    let mut sizes = Vec::new();
    let mut stack = Vec::new();
    let mut next = 0;
    for root in 0..n {
        if index[root] != UNSEEN {
            continue;
        }
        let mut calls: Vec<(usize, usize)> = vec![(root, 0)];
        index[root] = next;
        low[root] = next;
        next += 1;
        stack.push(root);
        on_stack[root] = true;
        while let Some(&mut (v, ref mut i)) = calls.last_mut() {
            if let Some(&w) = succ[v].get(*i) {
                *i += 1;
                if index[w] == UNSEEN {
                    index[w] = next;
                    low[w] = next;
                    next += 1;
                    stack.push(w);
                    on_stack[w] = true;
                    calls.push((w, 0));
                } else if on_stack[w] {
                    low[v] = low[v].min(index[w]);
                }
                continue;
            }
            calls.pop();
            if low[v] == index[v] {
                let c = sizes.len();
                let mut size = 0;
                while let Some(u) = stack.pop() {
                    on_stack[u] = false;
                    comp[u] = c;
                    size += 1;
                    if u == v {
                        break;
                    }
                }
                sizes.push(size);
            }
            if let Some(&(p, _)) = calls.last() {
                low[p] = low[p].min(low[v]);
            }
        }
    }
    (comp, sizes)
}

/// Whether a command is a client's request (a session expiry is a replica's, never answered).
fn is_request(c: &Command) -> bool {
    !matches!(c.op, Op::Expire { .. } | Op::Reconfigure { .. })
}

/// The requests instance `id` applies: its commands but session expiries and those refused as
/// expired (`refused_in`).
fn requests_of(
    refused_in: &HashSet<(InstanceId, ClientId, RequestId)>,
    id: InstanceId,
    commands: &[Command],
) -> Vec<(ClientId, RequestId)> {
    commands
        .iter()
        .filter(|c| is_request(c) && !refused_in.contains(&(id, c.client, c.request)))
        .map(|c| (c.client, c.request))
        .collect()
}

/// After a restart or rejoin: the store applied `actual` requests, and the executed instances
/// hold `expected` distinct ones that were not refused as expired (`_refused` refusals in all).
fn applied_matches(actual: u64, _refused: u64, expected: u64) -> bool {
    actual == expected
}

#[cfg(test)]
mod tests {
    use super::*;
    use epaxos_kv::core::ids::ReplicaId;

    fn id(r: u32, s: u64) -> InstanceId {
        InstanceId::new(ReplicaId(r), s)
    }

    #[test]
    fn tarjan_numbers_components_dependencies_first() {
        // 0 -> 1 -> 2 -> 1, 3 alone.
        let succ = vec![vec![1], vec![2], vec![1], vec![]];
        let (comp, sizes) = tarjan(&succ);
        assert_eq!(comp[1], comp[2]);
        assert!(comp[0] > comp[1]);
        assert_eq!(sizes.iter().copied().max(), Some(2));
    }

    #[test]
    fn order_difference_ignores_reads_among_themselves() {
        let (w1, r1, r2, w2) = (id(0, 1), id(1, 1), id(2, 1), id(0, 2));
        let a = [(w1, true), (r1, false), (r2, false), (w2, true)];
        let b = [(w1, true), (r2, false), (r1, false), (w2, true)];
        assert_eq!(order_difference(&a, &b), None);
        let c = [(w1, true), (r2, false), (w2, true), (r1, false)];
        assert!(order_difference(&a, &c).is_some());
        let d = [(w2, true), (w1, true)];
        assert!(order_difference(&a, &d).is_some());
    }
}
