//! Scenario tests of the protocol core through its public API: replicas driven by hand, every
//! message delivered (or dropped, or delayed) explicitly by the test on the in-memory network
//! every test of the core shares (`core::testkit`), time advanced as a value.
//!
//! Each test tells one story of an instance's life; the deterministic simulator
//! (`tests/simulation.rs`) covers the random interleavings.

use std::time::Duration;

use bytes::Bytes;
use epaxos_kv::core::command::{Command, Op, OpResult};
use epaxos_kv::core::ids::{ClientId, InstanceId, ReplicaId, RequestId};
use epaxos_kv::core::instance::Status;
use epaxos_kv::core::message::Message;
use epaxos_kv::core::quorum;
use epaxos_kv::core::replica::{Committed, Options, Path, Replica, Reply, Token};
use epaxos_kv::core::testkit::{Envelope, Network};

/// What a replica produced besides messages, accumulated over the test.
#[derive(Debug, Default)]
struct Outputs {
    replies: Vec<Reply>,
    committed: Vec<Committed>,
    executed: Vec<InstanceId>,
    batches: Vec<usize>,
}

/// A hand-driven cluster: nothing moves unless the test says so.
struct Cluster {
    now: Duration,
    replicas: Vec<Replica>,
    outputs: Vec<Outputs>,
    /// The shared in-memory network of the core's tests (`core::testkit`).
    net: Network,
}

/// Most messages a test may deliver in one `deliver_all`: a test driver needs a step limit too.
const DELIVERIES_MAX: usize = 10_000;

impl Cluster {
    fn new(n: usize) -> Cluster {
        Cluster::with(n, |_| {})
    }

    fn with(n: usize, tune: impl Fn(&mut Options)) -> Cluster {
        let replicas = (0..n)
            .map(|i| {
                let mut opts = Options::new(ReplicaId(i as u32), n);
                tune(&mut opts);
                Replica::new(opts)
            })
            .collect();
        Cluster {
            now: Duration::ZERO,
            replicas,
            outputs: (0..n).map(|_| Outputs::default()).collect(),
            net: Network::new(n),
        }
    }

    fn advance(&mut self, by: Duration) {
        self.now += by;
    }

    /// Proposes at replica `r` without flushing.
    fn propose(&mut self, r: usize, token: Token, cmd: Command) {
        self.replicas[r]
            .propose(token, cmd)
            .expect("the proposal queue is far from full");
    }

    /// Flushes replica `r`: its pending proposals start instances.
    fn flush(&mut self, r: usize) {
        self.replicas[r].flush(self.now);
        self.collect(r);
    }

    /// Proposes and flushes at once: one proposal, one instance.
    fn submit(&mut self, r: usize, token: Token, cmd: Command) {
        self.propose(r, token, cmd);
        self.flush(r);
    }

    fn tick(&mut self, r: usize) {
        self.replicas[r].tick(self.now);
        self.collect(r);
    }

    /// Drains replica `r`'s outputs: messages go on the network, the rest into `outputs`.
    fn collect(&mut self, r: usize) {
        let ready = self.replicas[r].take_ready();
        self.net.send(ReplicaId(r as u32), ready.messages);
        let o = &mut self.outputs[r];
        o.replies.extend(ready.replies);
        o.committed.extend(ready.committed);
        o.executed.extend(ready.executed);
        o.batches.extend(ready.batches);
    }

    fn deliver(&mut self, m: Envelope) {
        let to = m.to.index();
        self.replicas[to].handle(self.now, m.from, m.msg);
        self.replicas[to].flush(self.now);
        self.collect(to);
    }

    /// Removes and returns the first in-flight message matching `pick`.
    fn take(&mut self, pick: impl Fn(&Envelope) -> bool) -> Option<Envelope> {
        self.net.take(pick)
    }

    /// Delivers the first in-flight message matching `pick`; panics if there is none.
    fn deliver_one(&mut self, what: &str, pick: impl Fn(&Envelope) -> bool) {
        let m = self
            .take(pick)
            .unwrap_or_else(|| panic!("no in-flight message is {what}: {:?}", self.net));
        self.deliver(m);
    }

    /// Drops every in-flight message matching `pick`; returns how many.
    fn drop_where(&mut self, pick: impl Fn(&Envelope) -> bool) -> usize {
        self.net.drop_where(pick)
    }

    /// Delivers everything in flight, and what that produces, in FIFO order.
    fn deliver_all(&mut self) {
        self.deliver_all_but(|_| false);
    }

    /// Like `deliver_all`, but drops the messages matching `lose` instead of delivering them.
    fn deliver_all_but(&mut self, lose: impl Fn(&Envelope) -> bool) {
        for _ in 0..DELIVERIES_MAX {
            let Some(m) = self.net.pop() else {
                return;
            };
            if !lose(&m) {
                self.deliver(m);
            }
        }
        panic!("the network did not go quiet within {DELIVERIES_MAX} deliveries");
    }

    fn committed(&self, r: usize, id: InstanceId) -> &Committed {
        self.outputs[r]
            .committed
            .iter()
            .find(|c| c.instance == id)
            .unwrap_or_else(|| panic!("{id} not committed at r{r}"))
    }

    fn status(&self, r: usize, id: InstanceId) -> Option<Status> {
        self.replicas[r].instance(id).map(|i| i.status)
    }

    fn reply(&self, r: usize, token: Token) -> &OpResult {
        let reply = self.outputs[r]
            .replies
            .iter()
            .find(|rep| rep.token == token)
            .unwrap_or_else(|| panic!("no reply for token {token} at r{r}"));
        reply.result.as_ref().expect("an Ok result")
    }

    fn check_invariants(&self) {
        for r in &self.replicas {
            if let Err(e) = r.check_invariants() {
                panic!("{}: {e}", r.id());
            }
        }
    }
}

fn id(r: u32, slot: u64) -> InstanceId {
    InstanceId::new(ReplicaId(r), slot)
}

fn b(s: &str) -> Bytes {
    Bytes::copy_from_slice(s.as_bytes())
}

fn cmd(client: u64, request: u64, op: Op) -> Command {
    Command {
        client: ClientId(client),
        request: RequestId(request),
        op,
        time_ms: 0,
        retry: false,
    }
}

fn put(client: u64, key: &str, value: &str) -> Command {
    cmd(
        client,
        1,
        Op::Put {
            key: b(key),
            value: b(value),
        },
    )
}

fn get(client: u64, request: u64, key: &str) -> Command {
    cmd(client, request, Op::Get { key: b(key) })
}

fn is_kind(m: &Envelope, kind: &str) -> bool {
    m.msg.kind() == kind
}

fn link(m: &Envelope, from: u32, to: u32) -> bool {
    m.from == ReplicaId(from) && m.to == ReplicaId(to)
}

#[test]
fn no_conflict_commits_on_the_fast_path() {
    for n in [3, 5] {
        let mut c = Cluster::new(n);
        // Every replica leads one write, each on its own key: nothing interferes.
        for r in 0..n {
            c.submit(r, r as u64, put(r as u64, &format!("k{r}"), "v"));
        }
        c.deliver_all();
        for r in 0..n {
            let led = c.committed(r, id(r as u32, 0)).led;
            assert!(
                matches!(led, Some((Path::Fast, _))),
                "N={n}: r{r}'s instance was decided by {led:?}"
            );
            assert!(c.reply(r, r as u64).success);
            for other in 0..n {
                assert_eq!(
                    c.status(other, id(r as u32, 0)),
                    Some(Status::Executed),
                    "N={n}: {} at r{other}",
                    id(r as u32, 0)
                );
            }
        }
        c.check_invariants();
    }
}

#[test]
fn conflicting_concurrent_proposals_force_the_slow_path() {
    let mut c = Cluster::new(3);
    c.submit(0, 1, put(1, "k", "from-0"));
    c.submit(1, 2, put(2, "k", "from-1"));
    // r1 sees 0.0 after proposing 1.0, and r2 sees 1.0 before 0.0: both answer 0.0 with a
    // dependency on 1.0 that the leader's initial deps lack, so 0.0 cannot go fast.
    c.deliver_one("PreAccept 0.0 to r1", |m| {
        is_kind(m, "PreAccept") && link(m, 0, 1)
    });
    c.deliver_one("PreAccept 1.0 to r2", |m| {
        is_kind(m, "PreAccept") && link(m, 1, 2)
    });
    c.deliver_one("PreAccept 0.0 to r2", |m| {
        is_kind(m, "PreAccept") && link(m, 0, 2)
    });
    c.deliver_all();
    let led = c.committed(0, id(0, 0)).led;
    assert!(
        matches!(led, Some((Path::Slow, _))),
        "0.0 decided by {led:?}"
    );
    let deps = &c.replicas[2].instance(id(0, 0)).expect("r2 knows 0.0").deps;
    assert_eq!(
        deps.as_slice(),
        [id(1, 0)],
        "the slow path commits the union"
    );
    // Both writes executed in the same order everywhere: 1.0 first, as 0.0 depends on it.
    for r in 0..3 {
        assert_eq!(c.replicas[r].kv().get(b"k"), Some(&b("from-0")), "r{r}");
    }
    c.check_invariants();
}

#[test]
fn thrifty_mode_sends_preaccept_to_fast_quorum_minus_one_and_accept_to_slow_quorum_minus_one() {
    // N=7 tells the two apart: fast quorum 5 (4 peers), slow quorum 4 (3 peers).
    let n = 7;
    let (fast, slow) = (quorum::fast_quorum(n), quorum::slow_quorum(n));
    assert_ne!(fast, slow, "N={n} must tell the two quorums apart");
    let mut c = Cluster::with(n, |o| o.thrifty = true);
    c.submit(1, 1, put(1, "k", "a"));
    c.submit(0, 2, put(2, "k", "b"));
    let preaccepts_from_0 = c
        .net
        .in_flight()
        .filter(|m| is_kind(m, "PreAccept") && m.from == ReplicaId(0))
        .count();
    assert_eq!(preaccepts_from_0, fast - 1);
    // r0's peers all hear of 1.0 first, so they answer 0.0 with a dependency its leader did not
    // know: 0.0 goes to the slow path. Hold back r0's Accepts to count them.
    while let Some(m) = c.take(|m| m.from == ReplicaId(1)) {
        c.deliver(m);
    }
    while let Some(m) = c.take(|m| !(is_kind(m, "Accept") && m.from == ReplicaId(0))) {
        c.deliver(m);
    }
    let accepts_from_0 = c
        .net
        .in_flight()
        .filter(|m| is_kind(m, "Accept") && m.from == ReplicaId(0))
        .count();
    assert_eq!(accepts_from_0, slow - 1);
    c.deliver_all();
    assert!(matches!(
        c.committed(0, id(0, 0)).led,
        Some((Path::Slow, _))
    ));
    c.check_invariants();
}

#[test]
fn a_silent_peer_in_thrifty_mode_is_covered_by_retransmission_on_tick() {
    let mut c = Cluster::with(3, |o| o.thrifty = true);
    c.submit(0, 1, put(1, "k", "v"));
    // Thrifty N=3 asks one peer, r1, which is silent.
    let asked: Vec<_> = c.net.in_flight().map(|m| m.to).collect();
    assert_eq!(asked, vec![ReplicaId(1)]);
    assert_eq!(c.drop_where(|m| m.to == ReplicaId(1)), 1);
    // Before the retry timer nothing is resent.
    c.advance(Duration::from_millis(100));
    c.tick(0);
    assert!(!c.net.in_flight().any(|m| is_kind(m, "PreAccept")));
    // After it, r0 asks every peer that did not answer: r2 answers for the silent r1.
    c.advance(Duration::from_millis(150));
    c.tick(0);
    assert!(
        c.net
            .in_flight()
            .any(|m| is_kind(m, "PreAccept") && m.to == ReplicaId(2)),
        "retransmission reaches r2: {:?}",
        c.net
    );
    c.deliver_all_but(|m| m.to == ReplicaId(1));
    assert!(c.committed(0, id(0, 0)).led.is_some());
    assert!(c.reply(0, 1).success);
}

#[test]
fn retransmitted_preaccept_gets_the_same_answer() {
    let mut c = Cluster::new(3);
    c.submit(0, 1, put(1, "k", "v"));
    let first = c
        .take(|m| is_kind(m, "PreAccept") && m.to == ReplicaId(1))
        .expect("PreAccept to r1");
    c.drop_where(|_| true);
    c.deliver(first.clone());
    let answer = |c: &mut Cluster| match c.take(|m| is_kind(m, "PreAcceptOk")) {
        Some(Envelope {
            msg: Message::PreAcceptOk { deps, .. },
            ..
        }) => deps,
        other => panic!("expected a PreAcceptOk, got {other:?}"),
    };
    let deps_first = answer(&mut c);
    // r1 learns of an interfering instance before the PreAccept comes again.
    c.submit(2, 2, put(2, "k", "w"));
    c.deliver_one("PreAccept 2.0 to r1", |m| {
        is_kind(m, "PreAccept") && link(m, 2, 1)
    });
    c.drop_where(|_| true);
    c.deliver(first);
    let deps_again = answer(&mut c);
    assert_eq!(
        deps_first, deps_again,
        "a resent PreAccept is answered alike"
    );
    assert!(deps_again.is_empty());
}

#[test]
fn commit_arrives_before_preaccept() {
    let mut c = Cluster::new(3);
    c.submit(0, 1, put(1, "k", "v"));
    let late = c
        .take(|m| is_kind(m, "PreAccept") && m.to == ReplicaId(2))
        .expect("PreAccept to r2");
    // r1 answers, r0 commits on the fast path; the Commit overtakes the PreAccept to r2.
    c.deliver_all();
    assert_eq!(c.status(2, id(0, 0)), Some(Status::Executed));
    assert_eq!(c.replicas[2].kv().get(b"k"), Some(&b("v")));
    // The PreAccept arrives at last: r2 answers with the Commit, not a vote, and changes nothing.
    c.deliver(late);
    let answer = c
        .take(|m| link(m, 2, 0))
        .expect("r2 answers the late PreAccept");
    assert!(is_kind(&answer, "Commit"), "got {answer:?}");
    assert_eq!(c.status(2, id(0, 0)), Some(Status::Executed));
    c.deliver(answer);
    assert_eq!(c.outputs[0].executed, vec![id(0, 0)], "executes once");
    c.check_invariants();
}

#[test]
fn lost_commit_is_fetched_via_commit_request_after_fetch_after() {
    let mut c = Cluster::new(3);
    let fetch_after = c.replicas[2].options().fetch_after;
    c.submit(0, 1, put(1, "k", "v"));
    // r2 hears nothing of 0.0 at all.
    c.deliver_all_but(|m| m.to == ReplicaId(2));
    assert_eq!(c.status(0, id(0, 0)), Some(Status::Executed));
    assert_eq!(c.status(2, id(0, 0)), None);
    // r1 reads k: its instance depends on 0.0, and r2 learns that dependency only from 1.0.
    c.submit(1, 2, get(2, 1, "k"));
    c.deliver_all();
    assert_eq!(c.status(2, id(1, 0)), Some(Status::Committed));
    assert!(c.outputs[2].executed.is_empty(), "1.0 waits for 0.0");
    // Before fetch_after, r2 asks nobody.
    c.advance(fetch_after / 2);
    c.tick(2);
    assert!(!c.net.in_flight().any(|m| is_kind(m, "CommitRequest")));
    c.advance(fetch_after);
    c.tick(2);
    let ask = c
        .take(|m| is_kind(m, "CommitRequest"))
        .expect("r2 asks for the missing Commit");
    match &ask.msg {
        Message::CommitRequest { instances } => assert_eq!(instances, &vec![id(0, 0)]),
        other => panic!("expected a CommitRequest, got {other:?}"),
    }
    assert_eq!(ask.to, ReplicaId(0), "first the dependency's own leader");
    c.deliver(ask);
    c.deliver_all();
    assert_eq!(c.outputs[2].executed, vec![id(0, 0), id(1, 0)]);
    assert_eq!(c.reply(1, 2).value, b("v"));
    assert_eq!(c.replicas[2].kv().digest(), c.replicas[0].kv().digest());
    c.check_invariants();
}

#[test]
fn a_retried_request_in_two_instances_executes_once_and_both_proposers_get_the_same_result() {
    let mut c = Cluster::new(3);
    // A CAS from absence: executed twice, the second would fail and report the value.
    let cas = cmd(
        7,
        1,
        Op::Cas {
            key: b("k"),
            expected: None,
            new: b("mine"),
        },
    );
    c.submit(0, 10, cas.clone());
    // The client timed out and retried the same request at r1.
    c.submit(1, 11, cas);
    c.deliver_all();
    let (first, retry) = (c.reply(0, 10).clone(), c.reply(1, 11).clone());
    assert!(first.success, "{first:?}");
    assert_eq!(first, retry);
    for r in 0..3 {
        assert_eq!(c.replicas[r].kv().executed(), 1, "r{r} executed it once");
        assert_eq!(
            c.outputs[r].executed.len(),
            2,
            "r{r} executed both instances"
        );
        assert_eq!(c.replicas[r].kv().get(b"k"), Some(&b("mine")));
    }
    c.check_invariants();
}

#[test]
fn batching_many_proposals_before_one_flush_become_one_instance() {
    let mut c = Cluster::new(3);
    let count = 10u64;
    for i in 0..count {
        c.propose(0, i, put(i, &format!("k{i}"), "v"));
    }
    assert_eq!(c.replicas[0].pending(), count as usize);
    c.flush(0);
    assert_eq!(c.outputs[0].batches, vec![count as usize]);
    c.deliver_all();
    let committed = c.committed(0, id(0, 0));
    assert_eq!(committed.commands, count as usize);
    assert_eq!(c.replicas[0].instances().count(), 1, "one instance");
    for i in 0..count {
        assert!(c.reply(0, i).success);
    }
    assert_eq!(c.replicas[2].kv().executed(), count);
}
