//! Property test: a small cluster of real `Replica` cores, driven by normal proposals and
//! deliveries interleaved with well-formed but adversarial peer messages (any type, any sender,
//! instances in and out of range, ballots at the extremes, dependencies on rows and slots that
//! do not exist, replays of real messages to anyone from anyone, duplicates, contradicting
//! values). After every step every replica's `check_invariants` holds, and nothing panicked.
//!
//! For every injected message the test also decides, with its own rules, whether the message
//! names something that cannot exist (a replica outside the cluster, a slot beyond
//! `SLOT_LIMIT`, an instance of the receiver's own row it never created, an instance depending
//! on itself, a ballot its sender cannot hold, an impossible count). Such a message must be
//! reported in `Ready::rejected` and change nothing: no output, the same instances, the same
//! key/value state. Any other message must not be rejected.
//!
//! `PROPTEST_CASES` sets how many cases run (default 1024, about a second in release);
//! `PROPTEST_RNG_SEED` picks other cases than the fixed default seed.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use epaxos_kv::core::command::{Command, Op};
use epaxos_kv::core::deps::Deps;
use epaxos_kv::core::epoch::Epoch;
use epaxos_kv::core::ids::{Ballot, ClientId, InstanceId, ReplicaId, RequestId, SLOT_LIMIT};
use epaxos_kv::core::instance::{Instance, Status};
use epaxos_kv::core::message::{Message, RecoverReply};
use epaxos_kv::core::replica::{Options, Ready, Reject, Replica};
use proptest::prelude::*;
use proptest::test_runner::RngSeed;

/// Most messages kept in flight: a step limit for the harness.
const NET_MAX: usize = 512;

/// A message on its way.
#[derive(Debug, Clone)]
struct InFlight {
    from: ReplicaId,
    to: ReplicaId,
    msg: Message,
}

/// What the replicas can be made to do.
#[derive(Debug, Clone)]
enum Step {
    /// A client command at a replica (proposed and flushed).
    Propose {
        at: usize,
        client: u64,
        key: u8,
        write: bool,
    },
    /// Deliver the `pick`-th message in flight.
    Deliver { pick: usize },
    /// Deliver it and keep a copy in flight (a duplicate).
    Duplicate { pick: usize },
    /// Lose it.
    Drop { pick: usize },
    /// Time passes at a replica, which fires its timers.
    Tick { at: usize, ms: u64 },
    /// A real message sent so far, replayed to any replica as if from any sender.
    Replay { pick: usize, to: u32, from: u32 },
    /// A message made up from adversarial parts.
    Inject { to: u32, from: u32, msg: Made },
}

/// An instance id as a choice: a real row or one outside the cluster, a small slot or an
/// extreme one.
#[derive(Debug, Clone, Copy)]
struct IdChoice {
    row: u32,
    slot: u64,
}

#[derive(Debug, Clone, Copy)]
struct BallotChoice {
    round: u32,
    replica: u32,
}

/// The parts of an injected message; `kind` picks which message they make.
#[derive(Debug, Clone)]
struct Made {
    kind: u8,
    instance: IdChoice,
    ballot: BallotChoice,
    other_ballot: Option<BallotChoice>,
    deps: Vec<IdChoice>,
    self_dep: bool,
    keys: Vec<(u8, bool)>,
    prefix: Vec<u64>,
    matching: u32,
    status: u8,
}

fn row() -> impl Strategy<Value = u32> {
    prop_oneof![
        8 => 0u32..5,
        1 => 5u32..8,
        1 => Just(u32::MAX),
    ]
}

fn slot() -> impl Strategy<Value = u64> {
    prop_oneof![
        8 => 0u64..6,
        1 => Just(SLOT_LIMIT - 1),
        1 => Just(SLOT_LIMIT),
        1 => Just(u64::MAX),
    ]
}

fn id_choice() -> impl Strategy<Value = IdChoice> {
    (row(), slot()).prop_map(|(row, slot)| IdChoice { row, slot })
}

fn ballot_choice() -> impl Strategy<Value = BallotChoice> {
    let round = prop_oneof![
        4 => 0u32..3,
        1 => Just(u32::MAX - 1),
        1 => Just(u32::MAX),
    ];
    (round, row()).prop_map(|(round, replica)| BallotChoice { round, replica })
}

/// A Watermark entry: one past a slot.
fn prefix() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => 0u64..6,
        1 => Just(SLOT_LIMIT),
        1 => Just(SLOT_LIMIT + 1),
        1 => Just(u64::MAX),
    ]
}

fn made() -> impl Strategy<Value = Made> {
    (
        (
            0u8..19,
            id_choice(),
            ballot_choice(),
            proptest::option::of(ballot_choice()),
        ),
        (
            proptest::collection::vec(id_choice(), 0..3),
            proptest::bool::weighted(0.1),
            proptest::collection::vec((0u8..3, any::<bool>()), 0..3),
            proptest::collection::vec(prefix(), 0..7),
            prop_oneof![0u32..4, Just(u32::MAX)],
            0u8..4,
        ),
    )
        .prop_map(
            |(
                (kind, instance, ballot, other_ballot),
                (deps, self_dep, keys, prefix, matching, status),
            )| {
                Made {
                    kind,
                    instance,
                    ballot,
                    other_ballot,
                    deps,
                    self_dep,
                    keys,
                    prefix,
                    matching,
                    status,
                }
            },
        )
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (0usize..5, 1u64..4, 0u8..3, any::<bool>())
            .prop_map(|(at, client, key, write)| Step::Propose { at, client, key, write }),
        6 => any::<usize>().prop_map(|pick| Step::Deliver { pick }),
        1 => any::<usize>().prop_map(|pick| Step::Duplicate { pick }),
        1 => any::<usize>().prop_map(|pick| Step::Drop { pick }),
        2 => (0usize..5, prop_oneof![1u64..50, Just(1_500u64)])
            .prop_map(|(at, ms)| Step::Tick { at, ms }),
        2 => (any::<usize>(), 0u32..6, 0u32..6)
            .prop_map(|(pick, to, from)| Step::Replay { pick, to, from }),
        4 => (0u32..5, prop_oneof![4 => 0u32..5, 1 => 5u32..7], made())
            .prop_map(|(to, from, msg)| Step::Inject { to, from, msg }),
    ]
}

fn id_of(c: IdChoice) -> InstanceId {
    InstanceId::new(ReplicaId(c.row), c.slot)
}

fn ballot_of(c: BallotChoice) -> Ballot {
    Ballot {
        round: c.round,
        replica: ReplicaId(c.replica),
    }
}

fn command(client: u64, request: u64, key: u8, write: bool) -> Command {
    let key = Bytes::from(vec![b'k', b'0' + key]);
    Command {
        client: ClientId(client),
        request: RequestId(request),
        op: if write {
            Op::Put {
                key,
                value: Bytes::from_static(b"v"),
            }
        } else {
            Op::Get { key }
        },
        time_ms: 0,
        retry: false,
    }
}

impl Made {
    fn build(&self, next_request: &mut u64) -> Message {
        let instance = id_of(self.instance);
        let ballot = ballot_of(self.ballot);
        let mut raw: Vec<InstanceId> = self.deps.iter().map(|d| id_of(*d)).collect();
        if self.self_dep {
            raw.push(instance);
        }
        // One entry per row, sorted: the only shape `Deps` has.
        let deps: Deps = raw.into_iter().collect();
        let commands = Arc::new(
            self.keys
                .iter()
                .map(|(k, w)| {
                    *next_request += 1;
                    command(100, *next_request, *k, *w)
                })
                .collect::<Vec<_>>(),
        );
        match self.kind {
            0 => Message::PreAccept {
                epoch: Epoch(0),
                instance,
                ballot,
                commands,
                deps,
            },
            1 => Message::PreAcceptOk {
                instance,
                ballot,
                deps,
            },
            2 => Message::Accept {
                epoch: Epoch(0),
                instance,
                ballot,
                commands,
                deps,
            },
            3 => Message::AcceptOk { instance, ballot },
            4 => Message::Commit {
                epoch: Epoch(0),
                instance,
                ballot,
                commands,
                deps,
            },
            5 => Message::Nack {
                instance,
                promised: ballot,
            },
            6 => Message::CommitRequest {
                instances: deps.as_slice().to_vec(),
            },
            7 => Message::Watermark {
                committed_prefix: self.prefix.clone(),
                executed_prefix: self.prefix.iter().map(|p| p / 2).collect(),
                collected_prefix: vec![],
            },
            8 => Message::Recover {
                epoch: Epoch(0),
                instance,
                ballot,
            },
            9 => Message::RecoverOk {
                instance,
                ballot,
                reply: RecoverReply {
                    status: [
                        Status::Initial,
                        Status::PreAccepted,
                        Status::Accepted,
                        Status::Committed,
                    ][self.status as usize % 4],
                    accepted_ballot: self.other_ballot.map(ballot_of),
                    commands,
                    deps: deps.clone(),
                    init_deps: if self.status.is_multiple_of(2) {
                        Some(deps)
                    } else {
                        None
                    },
                    epoch: None,
                },
            },
            10 => Message::Validate {
                instance,
                epoch: Epoch(0),
                ballot,
                commands,
                deps,
            },
            11 => Message::ValidateOk {
                instance,
                ballot,
                conflicts: deps.iter().map(|d| (*d, d.slot % 2 == 0)).collect(),
            },
            12 => Message::Waiting {
                instance,
                matching: self.matching,
            },
            13 => Message::BoundaryPrepare {
                epoch: Epoch(0),
                ballot,
            },
            14 => Message::BoundaryPromise {
                epoch: Epoch(0),
                ballot,
                ends: self.prefix.clone(),
                accepted: self
                    .other_ballot
                    .map(|b| (ballot_of(b), self.prefix.iter().map(|p| p / 2).collect())),
            },
            15 => Message::BoundaryNack {
                epoch: Epoch(0),
                promised: ballot,
            },
            16 => Message::BoundaryAccept {
                epoch: Epoch(0),
                ballot,
                ends: self.prefix.clone(),
            },
            17 => Message::BoundaryAccepted {
                epoch: Epoch(0),
                ballot,
            },
            _ => Message::BoundaryDecided {
                epoch: Epoch(0),
                ends: self.prefix.clone(),
            },
        }
    }
}

/// The test's own statement of what cannot exist, written apart from the core's: the reason a
/// message from `from` to replica `to` (of `n`, whose own row reaches `next_slot`) must be
/// rejected, if any.
fn impossible(
    n: usize,
    to: ReplicaId,
    next_slot: u64,
    from: ReplicaId,
    msg: &Message,
) -> Option<Reject> {
    if from.index() >= n || from == to {
        return Some(Reject::Sender);
    }
    let bad_id = |id: &InstanceId| {
        if id.replica.index() >= n {
            Some(Reject::UnknownReplica)
        } else if id.slot >= SLOT_LIMIT {
            Some(Reject::ImplausibleSlot)
        } else if id.replica == to && id.slot >= next_slot {
            Some(Reject::UnknownOwnInstance)
        } else {
            None
        }
    };
    let bad_ballot = |id: &InstanceId, b: &Ballot| {
        if b.replica.index() >= n {
            Some(Reject::UnknownReplica)
        } else if b.round == 0 && b.replica != id.replica {
            Some(Reject::Ballot)
        } else {
            None
        }
    };
    // A boundary's ballot (any round: it names no instance) and its per-row ends.
    let bad_boundary_ballot =
        |b: &Ballot| (b.replica.index() >= n).then_some(Reject::UnknownReplica);
    let bad_ends = |ends: &[u64]| {
        if ends.len() > n {
            Some(Reject::UnknownReplica)
        } else if ends.iter().any(|e| *e > SLOT_LIMIT) {
            Some(Reject::ImplausibleSlot)
        } else {
            None
        }
    };
    let bad_deps = |id: &InstanceId, deps: &Deps| {
        deps.iter()
            .find_map(bad_id)
            .or_else(|| deps.contains(*id).then_some(Reject::SelfDependency))
    };
    if let Some(r) = msg.instance().as_ref().and_then(bad_id) {
        return Some(r);
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
        } => bad_ballot(instance, ballot)
            .or_else(|| bad_deps(instance, deps))
            .or_else(|| {
                // Only the ballot's owner runs a phase; round 0 only for its own instance.
                let owner =
                    ballot.replica == from && (ballot.round > 0 || instance.replica == from);
                (!owner).then_some(Reject::Ballot)
            }),
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
        } => bad_ballot(instance, ballot).or_else(|| bad_deps(instance, deps)),
        Message::AcceptOk { instance, ballot } => bad_ballot(instance, ballot),
        Message::Nack { instance, promised } => bad_ballot(instance, promised),
        Message::CommitRequest { instances } => instances.iter().find_map(bad_id),
        Message::Watermark {
            committed_prefix,
            executed_prefix,
            collected_prefix,
        } => {
            if committed_prefix.len() > n || executed_prefix.len() > n || collected_prefix.len() > n
            {
                Some(Reject::UnknownReplica)
            } else if committed_prefix
                .iter()
                .chain(executed_prefix)
                .chain(collected_prefix)
                .any(|p| *p > SLOT_LIMIT)
            {
                Some(Reject::ImplausibleSlot)
            } else {
                None
            }
        }
        Message::Recover {
            instance, ballot, ..
        } => bad_ballot(instance, ballot)
            .or_else(|| (ballot.round == 0 || ballot.replica != from).then_some(Reject::Ballot)),
        Message::RecoverOk {
            instance,
            ballot,
            reply,
        } => bad_ballot(instance, ballot)
            .or_else(|| {
                reply.accepted_ballot.and_then(|ab| {
                    bad_ballot(instance, &ab).or_else(|| (ab > *ballot).then_some(Reject::Ballot))
                })
            })
            .or_else(|| bad_deps(instance, &reply.deps))
            .or_else(|| reply.init_deps.as_ref().and_then(|d| bad_deps(instance, d))),
        Message::Validate {
            instance,
            ballot,
            deps,
            ..
        } => bad_ballot(instance, ballot)
            .or_else(|| bad_deps(instance, deps))
            .or_else(|| (ballot.round == 0 || ballot.replica != from).then_some(Reject::Ballot)),
        Message::ValidateOk {
            instance,
            ballot,
            conflicts,
        } => bad_ballot(instance, ballot).or_else(|| {
            conflicts.iter().find_map(|(c, _)| {
                bad_id(c).or_else(|| (c == instance).then_some(Reject::SelfDependency))
            })
        }),
        Message::Waiting { matching, .. } => {
            (*matching as usize > n).then_some(Reject::ImplausibleCount)
        }
        Message::BoundaryPrepare { ballot, .. }
        | Message::BoundaryNack {
            promised: ballot, ..
        }
        | Message::BoundaryAccepted { ballot, .. } => bad_boundary_ballot(ballot),
        Message::BoundaryPromise {
            ballot,
            ends,
            accepted,
            ..
        } => bad_boundary_ballot(ballot)
            .or_else(|| bad_ends(ends))
            .or_else(|| {
                accepted
                    .as_ref()
                    .and_then(|(b, ends)| bad_boundary_ballot(b).or_else(|| bad_ends(ends)))
            }),
        Message::BoundaryAccept { ballot, ends, .. } => {
            bad_boundary_ballot(ballot).or_else(|| bad_ends(ends))
        }
        Message::BoundaryDecided { ends, .. } => bad_ends(ends),
    }
}

/// What must not change when a message is rejected.
#[derive(Debug, PartialEq)]
struct Fingerprint {
    instances: Vec<(InstanceId, Instance)>,
    digest: u64,
    executed: u64,
    committed: u64,
    unexecuted: u64,
    pending: usize,
    inflight: usize,
}

fn fingerprint(r: &Replica) -> Fingerprint {
    let mut instances: Vec<(InstanceId, Instance)> =
        r.instances().map(|(id, i)| (*id, i.clone())).collect();
    instances.sort_unstable_by_key(|(id, _)| *id);
    Fingerprint {
        instances,
        digest: r.kv().digest(),
        executed: r.kv().executed(),
        committed: r.committed_count(),
        unexecuted: r.unexecuted(),
        pending: r.pending(),
        inflight: r.inflight(),
    }
}

/// One past the highest slot of its own row that `r` created (garbage collection is off, so
/// every instance it created is still in its table).
fn next_slot(r: &Replica) -> u64 {
    r.instances()
        .filter(|(id, _)| id.replica == r.id())
        .map(|(id, _)| id.slot + 1)
        .max()
        .unwrap_or(0)
}

struct Cluster {
    n: usize,
    now: Vec<Duration>,
    replicas: Vec<Replica>,
    net: VecDeque<InFlight>,
    /// Every message sent so far (for replays), bounded.
    history: Vec<InFlight>,
    next_request: u64,
    rejected: usize,
    /// A made-up message was accepted: replicas may now hold state no real run produces, and
    /// their answers may name what the addressee never created.
    forged: bool,
}

impl Cluster {
    fn new(n: usize) -> Cluster {
        Cluster {
            n,
            now: vec![Duration::ZERO; n],
            replicas: (0..n)
                .map(|i| Replica::new(Options::new(ReplicaId(i as u32), n)))
                .collect(),
            net: VecDeque::new(),
            history: Vec::new(),
            next_request: 0,
            rejected: 0,
            forged: false,
        }
    }

    /// Takes replica `r`'s outputs; its messages go on the network.
    fn collect(&mut self, r: usize) -> Vec<epaxos_kv::core::replica::Rejected> {
        let ready: Ready = self.replicas[r].take_ready();
        for out in ready.messages {
            for to in out.to {
                let m = InFlight {
                    from: ReplicaId(r as u32),
                    to,
                    msg: out.msg.clone(),
                };
                if self.history.len() < NET_MAX {
                    self.history.push(m.clone());
                }
                if self.net.len() < NET_MAX {
                    self.net.push_back(m);
                }
            }
        }
        ready.rejected
    }

    fn deliver(&mut self, m: InFlight) -> Result<(), TestCaseError> {
        let to = m.to.index();
        if to >= self.n {
            return Ok(());
        }
        let now = self.now[to];
        self.replicas[to].handle(now, m.from, m.msg);
        self.replicas[to].flush(now);
        let rejected = self.collect(to);
        // Messages of an honest run are never rejected.
        prop_assert!(
            self.forged || rejected.is_empty(),
            "a real message was rejected: {rejected:?}"
        );
        Ok(())
    }

    /// Feeds a made-up or replayed message and checks the rejection rule.
    fn inject(&mut self, to: usize, from: ReplicaId, msg: Message) -> Result<(), TestCaseError> {
        let r = &mut self.replicas[to];
        let expected = impossible(self.n, r.id(), next_slot(r), from, &msg);
        let before = fingerprint(r);
        let kind = msg.kind();
        let now = self.now[to];
        r.handle(now, from, msg.clone());
        let ready = r.take_ready();
        match expected {
            Some(reason) => {
                self.rejected += 1;
                prop_assert_eq!(
                    ready.rejected.len(),
                    1,
                    "{:?} should be rejected: {:?}",
                    reason,
                    msg
                );
                prop_assert_eq!(ready.rejected[0].reason, reason, "{:?}", msg);
                prop_assert_eq!(ready.rejected[0].kind, kind);
                prop_assert!(
                    ready.messages.is_empty()
                        && ready.persist.is_empty()
                        && ready.committed.is_empty()
                        && ready.executed.is_empty()
                        && ready.replies.is_empty(),
                    "a rejected {:?} had effects: {:?}",
                    msg,
                    ready
                );
                prop_assert_eq!(
                    &fingerprint(&self.replicas[to]),
                    &before,
                    "{:?} changed state",
                    msg
                );
            }
            None => {
                self.forged = true;
                prop_assert!(
                    ready.rejected.is_empty(),
                    "{:?} rejected, but it can exist: {:?}",
                    msg,
                    ready.rejected
                );
                // Put the outputs back through the network as usual.
                for out in ready.messages {
                    for dest in out.to {
                        if self.net.len() < NET_MAX {
                            self.net.push_back(InFlight {
                                from: ReplicaId(to as u32),
                                to: dest,
                                msg: out.msg.clone(),
                            });
                        }
                    }
                }
                self.replicas[to].flush(now);
                let _ = self.collect(to);
            }
        }
        Ok(())
    }

    fn run(&mut self, step: Step) -> Result<(), TestCaseError> {
        let n = self.n;
        match step {
            Step::Propose {
                at,
                client,
                key,
                write,
            } => {
                let at = at % n;
                self.next_request += 1;
                let cmd = command(client, self.next_request, key, write);
                // A full queue is an answer, not a failure.
                let _ = self.replicas[at].propose(self.next_request, cmd);
                self.replicas[at].flush(self.now[at]);
                let _ = self.collect(at);
            }
            Step::Deliver { pick } | Step::Duplicate { pick } | Step::Drop { pick } => {
                if self.net.is_empty() {
                    return Ok(());
                }
                let i = pick % self.net.len();
                let m = match step {
                    Step::Duplicate { .. } => self.net[i].clone(),
                    _ => self.net.remove(i).expect("index within the queue"),
                };
                if !matches!(step, Step::Drop { .. }) {
                    self.deliver(m)?;
                }
            }
            Step::Tick { at, ms } => {
                let at = at % n;
                self.now[at] += Duration::from_millis(ms);
                self.replicas[at].tick(self.now[at]);
                self.replicas[at].flush(self.now[at]);
                let _ = self.collect(at);
            }
            Step::Replay { pick, to, from } => {
                if self.history.is_empty() {
                    return Ok(());
                }
                let m = self.history[pick % self.history.len()].clone();
                self.inject(to as usize % n, ReplicaId(from), m.msg)?;
            }
            Step::Inject { to, from, msg } => {
                let msg = msg.build(&mut self.next_request);
                self.inject(to as usize % n, ReplicaId(from), msg)?;
            }
        }
        for r in &self.replicas {
            if let Err(e) = r.check_invariants() {
                return Err(TestCaseError::fail(format!("{}: {e}", r.id())));
            }
        }
        Ok(())
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        // Deterministic: the same cases on every run, unless `PROPTEST_RNG_SEED` picks others
        // (`PROPTEST_CASES` sets how many; the default config reads both).
        rng_seed: if std::env::var_os("PROPTEST_RNG_SEED").is_some() {
            ProptestConfig::default().rng_seed
        } else {
            RngSeed::Fixed(0x0e9a_c05e)
        },
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(1024),
        // A failure is shrunk to a short sequence, within bounds that keep CI quick.
        max_shrink_iters: 2_000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Adversarial peer messages interleaved with normal traffic never panic a core, never
    /// break `check_invariants`, and those naming what cannot exist are rejected without effect.
    #[test]
    fn adversarial_peer_messages_keep_invariants(
        n in prop_oneof![Just(3usize), Just(5usize)],
        steps in proptest::collection::vec(step(), 1..80),
    ) {
        let mut c = Cluster::new(n);
        for s in steps {
            c.run(s)?;
        }
        // Then the network drains: the real traffic still never trips an invariant.
        let mut budget = 4 * NET_MAX;
        while let Some(m) = c.net.pop_front() {
            if budget == 0 {
                break;
            }
            budget -= 1;
            c.deliver(m)?;
            for r in &c.replicas {
                prop_assert!(r.check_invariants().is_ok(), "{}: {:?}", r.id(), r.check_invariants());
            }
        }
    }
}

/// The generator does reach the rejection path (the property above is not vacuous).
#[test]
fn the_generator_produces_rejected_and_accepted_messages() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, TestRunner};
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        proptest::test_runner::TestRng::deterministic_rng(
            proptest::test_runner::RngAlgorithm::ChaCha,
        ),
    );
    let mut c = Cluster::new(3);
    let mut injected = 0;
    for _ in 0..400 {
        let s = step().new_tree(&mut runner).expect("a step").current();
        if matches!(s, Step::Inject { .. } | Step::Replay { .. }) {
            injected += 1;
        }
        c.run(s).expect("the property holds");
    }
    assert!(
        c.rejected > 10,
        "only {} of {injected} injected messages rejected",
        c.rejected
    );
    assert!(c.rejected < injected, "every injected message was rejected");
}

// ---- regressions: one per kind of impossible input the property test found harmful ----------

fn get(client: u64, request: u64) -> Command {
    command(client, request, 0, false)
}

/// Delivers every message until quiet (every replica flushed), at time `now`.
fn settle(rs: &mut [Replica], now: Duration) {
    for _ in 0..1000 {
        let mut sent = Vec::new();
        for r in rs.iter_mut() {
            r.flush(now);
            let from = r.id();
            let ready = r.take_ready();
            assert!(ready.rejected.is_empty(), "{:?}", ready.rejected);
            for out in ready.messages {
                for to in out.to {
                    sent.push((from, to, out.msg.clone()));
                }
            }
        }
        if sent.is_empty() {
            return;
        }
        for (from, to, msg) in sent {
            rs[to.index()].handle(now, from, msg);
        }
    }
    panic!("messages kept flowing");
}

fn cluster(n: usize) -> Vec<Replica> {
    (0..n as u32)
        .map(|i| Replica::new(Options::new(ReplicaId(i), n)))
        .collect()
}

/// Feeds `msg` from `from` to `r` and expects it rejected for `reason`, with no other output and
/// no change.
fn assert_rejected(r: &mut Replica, from: u32, msg: Message, reason: Reject) {
    let before = fingerprint(r);
    let kind = msg.kind();
    r.handle(Duration::from_secs(1), ReplicaId(from), msg);
    let ready = r.take_ready();
    assert_eq!(ready.rejected.len(), 1, "not rejected: {ready:?}");
    assert_eq!(ready.rejected[0].reason, reason);
    assert_eq!(ready.rejected[0].kind, kind);
    assert_eq!(ready.rejected[0].from, ReplicaId(from));
    assert!(ready.messages.is_empty() && ready.persist.is_empty() && ready.committed.is_empty());
    assert_eq!(fingerprint(r), before);
    r.check_invariants().expect("invariants hold");
}

fn id(row: u32, slot: u64) -> InstanceId {
    InstanceId::new(ReplicaId(row), slot)
}

fn commit(instance: InstanceId, ballot: Ballot, deps: Deps) -> Message {
    Message::Commit {
        epoch: Epoch(0),
        instance,
        ballot,
        commands: Arc::new(vec![get(7, 1)]),
        deps,
    }
}

/// Was: index out of bounds (the committed prefix of row 7 of 3) — a panic of the event loop.
#[test]
fn a_dependency_on_a_row_outside_the_cluster_is_rejected() {
    let mut rs = cluster(3);
    let msg = commit(
        id(1, 0),
        Ballot::initial(ReplicaId(1)),
        Deps::from([id(7, 0)]),
    );
    assert_rejected(&mut rs[0], 1, msg, Reject::UnknownReplica);
    let msg = Message::CommitRequest {
        instances: vec![id(3, 0)],
    };
    assert_rejected(&mut rs[0], 1, msg, Reject::UnknownReplica);
    let msg = Message::Watermark {
        committed_prefix: vec![0; 4],
        executed_prefix: vec![],
        collected_prefix: vec![],
    };
    assert_rejected(&mut rs[0], 1, msg, Reject::UnknownReplica);
}

/// Was: kept, and written to the log, which then refused to replay (a ballot of replica 9).
#[test]
fn a_ballot_of_a_replica_outside_the_cluster_is_rejected() {
    let mut rs = cluster(3);
    let ballot = Ballot {
        round: 2,
        replica: ReplicaId(9),
    };
    assert_rejected(
        &mut rs[0],
        1,
        commit(id(1, 0), ballot, Deps::new()),
        Reject::UnknownReplica,
    );
    let msg = Message::Nack {
        instance: id(2, 0),
        promised: ballot,
    };
    assert_rejected(&mut rs[0], 1, msg, Reject::UnknownReplica);
}

/// Was: `slot + 1` overflowed at `u64::MAX` (a panic in debug builds, a wrapped committed end in
/// release ones).
#[test]
fn a_slot_beyond_any_row_is_rejected() {
    let mut rs = cluster(3);
    for slot in [SLOT_LIMIT, u64::MAX] {
        let msg = commit(id(1, slot), Ballot::initial(ReplicaId(1)), Deps::new());
        assert_rejected(&mut rs[0], 1, msg, Reject::ImplausibleSlot);
        let msg = commit(
            id(1, 0),
            Ballot::initial(ReplicaId(1)),
            Deps::from([id(2, slot)]),
        );
        assert_rejected(&mut rs[0], 1, msg, Reject::ImplausibleSlot);
    }
    // Was: a Watermark reporting u64::MAX for two rows overflowed the sum in `catch_up` (a
    // panic in debug builds).
    let msg = Message::Watermark {
        committed_prefix: vec![u64::MAX, u64::MAX, 0],
        executed_prefix: vec![0; 3],
        collected_prefix: vec![],
    };
    assert_rejected(&mut rs[0], 1, msg, Reject::ImplausibleSlot);
    // Just below the limit is a slot like any other.
    let msg = commit(
        id(1, SLOT_LIMIT - 1),
        Ballot::initial(ReplicaId(1)),
        Deps::new(),
    );
    rs[0].handle(Duration::from_secs(1), ReplicaId(1), msg);
    assert!(rs[0].take_ready().rejected.is_empty());
    rs[0].check_invariants().expect("invariants hold");
}

/// Was: r1 committed and executed a "1.0" it never created; its next proposal then took slot 0
/// again and overwrote it (the unexecuted counter and the table disagreed). A promise for such
/// an instance was likewise overwritten by the replica's own initial ballot.
#[test]
fn an_instance_of_the_own_row_never_created_is_rejected() {
    let mut rs = cluster(3);
    let msg = commit(id(1, 0), Ballot::initial(ReplicaId(1)), Deps::new());
    assert_rejected(&mut rs[1], 0, msg, Reject::UnknownOwnInstance);
    let msg = Message::Recover {
        epoch: Epoch(0),
        instance: id(1, 0),
        ballot: Ballot {
            round: 1,
            replica: ReplicaId(0),
        },
    };
    assert_rejected(&mut rs[1], 0, msg, Reject::UnknownOwnInstance);
    // Nor as a dependency.
    let msg = commit(
        id(0, 0),
        Ballot::initial(ReplicaId(0)),
        Deps::from([id(1, 0)]),
    );
    assert_rejected(&mut rs[1], 0, msg, Reject::UnknownOwnInstance);
    // Once r1 created 1.0 itself, the same ids are ordinary.
    rs[1].propose(1, get(1, 1)).expect("room");
    settle(&mut rs, Duration::from_secs(1));
    for r in &rs {
        r.check_invariants().expect("invariants hold");
        assert_eq!(r.kv().executed(), 1);
    }
    let msg = Message::CommitRequest {
        instances: vec![id(1, 0)],
    };
    rs[1].handle(Duration::from_secs(1), ReplicaId(0), msg);
    let ready = rs[1].take_ready();
    assert!(ready.rejected.is_empty());
    assert_eq!(ready.messages.len(), 1, "r1 answers with the Commit of 1.0");
}

/// Was: "1.0 depends on itself" (`check_invariants`).
#[test]
fn an_instance_depending_on_itself_is_rejected() {
    let mut rs = cluster(3);
    let msg = Message::PreAccept {
        epoch: Epoch(0),
        instance: id(1, 0),
        ballot: Ballot::initial(ReplicaId(1)),
        commands: Arc::new(vec![get(7, 1)]),
        deps: Deps::from([id(1, 0)]),
    };
    assert_rejected(&mut rs[0], 1, msg, Reject::SelfDependency);
    let msg = Message::ValidateOk {
        instance: id(0, 0),
        ballot: Ballot {
            round: 1,
            replica: ReplicaId(0),
        },
        conflicts: vec![(id(0, 0), true)],
    };
    rs[0].propose(1, get(1, 1)).expect("room");
    rs[0].flush(Duration::ZERO);
    let _ = rs[0].take_ready();
    assert_rejected(&mut rs[0], 1, msg, Reject::SelfDependency);
}

/// Ballots no replica can hold: round 0 of another replica than the instance's leader, a
/// recovery at round 0, a phase message at another replica's ballot, an accepted ballot above
/// the promise it comes with.
#[test]
fn a_ballot_that_cannot_exist_is_rejected() {
    let mut rs = cluster(3);
    let not_leaders = Ballot::initial(ReplicaId(2));
    assert_rejected(
        &mut rs[0],
        1,
        commit(id(1, 0), not_leaders, Deps::new()),
        Reject::Ballot,
    );
    let msg = Message::Recover {
        epoch: Epoch(0),
        instance: id(2, 0),
        ballot: Ballot::initial(ReplicaId(1)),
    };
    assert_rejected(&mut rs[0], 1, msg, Reject::Ballot);
    let msg = Message::Accept {
        epoch: Epoch(0),
        instance: id(2, 0),
        ballot: Ballot {
            round: 3,
            replica: ReplicaId(2),
        },
        commands: Arc::new(vec![]),
        deps: Deps::new(),
    };
    assert_rejected(&mut rs[0], 1, msg, Reject::Ballot);
    let msg = Message::RecoverOk {
        instance: id(2, 0),
        ballot: Ballot {
            round: 1,
            replica: ReplicaId(0),
        },
        reply: RecoverReply {
            status: Status::Accepted,
            accepted_ballot: Some(Ballot {
                round: 5,
                replica: ReplicaId(1),
            }),
            commands: Arc::new(vec![]),
            deps: Deps::new(),
            init_deps: None,
            epoch: None,
        },
    };
    assert_rejected(&mut rs[0], 1, msg, Reject::Ballot);
}

/// A Waiting message can only count up to N matching pre-accepts.
#[test]
fn an_impossible_count_is_rejected() {
    let mut rs = cluster(3);
    let msg = Message::Waiting {
        instance: id(2, 0),
        matching: 4,
    };
    assert_rejected(&mut rs[0], 1, msg, Reject::ImplausibleCount);
}

/// A message "from" this replica itself or from outside the cluster is rejected, and does not
/// count as having heard from anyone (the failure detector is not fooled).
#[test]
fn a_message_from_no_peer_is_rejected_and_not_heard() {
    let mut rs = cluster(3);
    let later = Duration::from_secs(10);
    assert!(rs[0].is_suspected(ReplicaId(1), later));
    for from in [0, 3, u32::MAX] {
        let msg = Message::Watermark {
            committed_prefix: vec![0; 3],
            executed_prefix: vec![0; 3],
            collected_prefix: vec![],
        };
        assert_rejected(&mut rs[0], from, msg, Reject::Sender);
    }
    // A rejected message from a real peer does not refresh it either.
    rs[0].handle(
        later,
        ReplicaId(1),
        Message::Waiting {
            instance: id(2, 0),
            matching: 9,
        },
    );
    assert_eq!(rs[0].take_ready().rejected.len(), 1);
    assert!(rs[0].is_suspected(ReplicaId(1), later + Duration::from_millis(1)));
}

/// Ids are checked against the rows a replica knows (issue 15: a configuration may add ids
/// above epoch 0's). An id a later configuration may add but this replica has not heard of
/// is refused on the wire (`UnknownReplica`, naming the rows known) and by the core fed
/// directly (`Reject::UnknownReplica`, or `Reject::Sender` as the sender), without effect; an
/// id no configuration can hold is garbage on the wire (`ImpossibleReplica`); the same message
/// decodes for a replica that knows the row.
#[test]
fn an_id_not_yet_known_is_refused_on_the_wire_and_by_the_core() {
    use epaxos_kv::core::limits::MEMBERS_EVER_MAX;
    use epaxos_kv::core::wire::{decode, encode, WireError};
    let mut rs = cluster(3);
    let added = commit(id(3, 0), Ballot::initial(ReplicaId(3)), Deps::new());
    assert!(matches!(
        decode(&encode(&added), 3),
        Err(WireError::UnknownReplica { id: 3, rows: 3 })
    ));
    assert_eq!(decode(&encode(&added), 4).expect("row 3 known"), added);
    assert_rejected(&mut rs[0], 1, added.clone(), Reject::UnknownReplica);
    assert_rejected(&mut rs[0], 3, added, Reject::Sender);
    let dep_on_added = commit(
        id(1, 0),
        Ballot::initial(ReplicaId(1)),
        Deps::from([id(3, 0)]),
    );
    assert!(matches!(
        decode(&encode(&dep_on_added), 3),
        Err(WireError::UnknownReplica { id: 3, rows: 3 })
    ));
    assert_rejected(&mut rs[0], 1, dep_on_added, Reject::UnknownReplica);
    for far in [MEMBERS_EVER_MAX as u32, u32::MAX] {
        let msg = Message::Nack {
            instance: id(2, 0),
            promised: Ballot {
                round: 2,
                replica: ReplicaId(far),
            },
        };
        assert!(matches!(
            decode(&encode(&msg), MEMBERS_EVER_MAX),
            Err(WireError::ImpossibleReplica(i)) if i == far
        ));
        assert_rejected(&mut rs[0], 1, msg, Reject::UnknownReplica);
    }
    rs[0].check_invariants().expect("invariants hold");
}
