//! The checks of every run, and where each is made: per step (`Replica` invariants, persist
//! before send), per commit and execution (`observer`: agreement, visibility, execution order,
//! exactly-once), and at the end (convergence, linearizability of the client history,
//! liveness after healing).
//!
//! A sabotage test (see `tests/simulation.rs`) names the `Check` that must catch its planted
//! bug: each check here has at least one bug it is shown to catch.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

use bytes::Bytes;
use epaxos_kv::core::command::Op;
use epaxos_kv::core::ids::InstanceId;
use epaxos_kv::core::instance::Status;
use epaxos_kv::core::message::{Message, ShowDeps};

use self::linearizability::{Entry, RegOp, RegResult, Value, Verdict};
use super::cluster::Life;
use super::world::Sim;

pub mod linearizability;
pub mod observer;

/// The checks a run can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Check {
    /// Two replicas committed different (commands, deps) for one instance.
    Agreement,
    /// Two interfering committed instances, neither reaching the other.
    Visibility,
    /// Interfering instances executed in different orders at two replicas.
    ExecutionOrder,
    /// Replicas that executed the same instances hold different states.
    Convergence,
    /// The client-observed history of some key is not linearizable.
    Linearizability,
    /// After healing, some command did not commit and execute everywhere within the budget.
    Liveness,
    /// A request applied twice, or a new one skipped, or one request answered two ways.
    ExactlyOnce,
    /// A replica sent (or reported committed) a state of an instance that its disk does not
    /// hold: a crash right after could make it contradict itself.
    Durability,
    /// `Replica::check_invariants` failed, or the run panicked.
    Invariant,
    /// A replica refused a peer's message as impossible or contradicting what it knows
    /// (`Ready::refused`): between correct replicas a false alarm that drops a needed message.
    Refusal,
}

impl Check {
    /// Every check, for tests that go through them all.
    pub const ALL: [Check; 10] = [
        Check::Agreement,
        Check::Visibility,
        Check::ExecutionOrder,
        Check::Convergence,
        Check::Linearizability,
        Check::Liveness,
        Check::ExactlyOnce,
        Check::Durability,
        Check::Invariant,
        Check::Refusal,
    ];
}

/// One failed check, with what it found and the instances involved (to pick trace events).
#[derive(Debug, Clone)]
pub struct Violation {
    pub check: Check,
    pub detail: String,
    pub instances: Vec<InstanceId>,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:?}] {}", self.check, self.detail)
    }
}

/// How many operations of a non-linearizable key's history a failure report shows.
pub(super) const HISTORY_SHOWN: usize = 60;

impl Sim {
    pub(super) fn check_invariants(&mut self, r: usize) {
        if let Err(e) = self.nodes[r].check_invariants() {
            self.invariant_broken(r, e);
        }
    }

    pub(super) fn invariant_broken(&mut self, r: usize, e: String) {
        if self.violations.iter().all(|v| v.check != Check::Invariant) {
            self.violations.push(Violation {
                check: Check::Invariant,
                detail: format!("r{r} at {:?}: {e}", self.now),
                instances: Vec::new(),
            });
        }
    }

    /// Persist before send: what `msg` (sent by `r`) reveals of its instance must be on `r`'s
    /// disk, or a crash right after sending could make `r` contradict it.
    pub(super) fn check_durable(&mut self, r: usize, msg: &Message) {
        let Some(id) = msg.instance() else {
            return;
        };
        let rec = self.durable[r].get(&id);
        let fine = match (msg, rec) {
            (
                Message::Nack { .. }
                | Message::CommitRequest { .. }
                | Message::Watermark { .. }
                | Message::Waiting { .. }
                | Message::BoundaryPrepare { .. }
                | Message::BoundaryPromise { .. }
                | Message::BoundaryNack { .. }
                | Message::BoundaryAccept { .. }
                | Message::BoundaryAccepted { .. }
                | Message::BoundaryDecided { .. },
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

    pub(super) fn durability_violation(&mut self, detail: String, id: InstanceId) {
        if self.violations.iter().all(|v| v.check != Check::Durability) {
            self.violations.push(Violation {
                check: Check::Durability,
                detail,
                instances: vec![id],
            });
        }
    }

    /// Cheap test first: anything pending means not quiescent.
    pub(super) fn quiescent(&self) -> bool {
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
    pub(super) fn liveness_gaps(&self) -> Vec<(Option<InstanceId>, String)> {
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
            let replica = self.nodes[r].replica();
            if replica.pending() > 0 {
                // Why nothing starts: a removed replica, or a boundary not known yet.
                gaps.push((
                    None,
                    format!(
                        "r{r} has proposals pending (epoch {}, removed {}, boundary known {:?}, \
                         sealed {:?})",
                        replica.configuration().epoch(),
                        replica.removed(),
                        replica.boundary().map(|b| b.0),
                        replica.seals().iter().map(|s| s.epoch).collect::<Vec<_>>(),
                    ),
                ));
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

    /// Live replicas that executed the same instances must hold the same state.
    /// Every live replica ends in one configuration (membership changes executed at the same
    /// point everywhere), unless it was removed: a removed replica may stop short of the last
    /// change.
    pub(super) fn check_configurations(&mut self) {
        let live: Vec<usize> = self.live().filter(|r| !self.nodes[*r].removed()).collect();
        let Some(&first) = live.first() else {
            return;
        };
        let want = self.nodes[first].configuration().clone();
        self.stats.final_epoch = want.epoch().0;
        for &r in &live[1..] {
            let got = self.nodes[r].configuration();
            if *got != want {
                self.violations.push(Violation {
                    check: Check::Convergence,
                    detail: format!("r{first} ended in {want}, r{r} in {got}"),
                    instances: Vec::new(),
                });
            }
        }
    }

    pub(super) fn check_convergence(&mut self) {
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

    pub(super) fn check_linearizability(&mut self) {
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
                Op::Expire { .. } | Op::Reconfigure { .. } => continue,
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
}
