//! Unit tests of the core on a few replicas wired by hand.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::core::checkpoint::Checkpoint;
use crate::core::command::{Command, OpResult};
use crate::core::deps::Deps;
use crate::core::ids::{Ballot, ClientId, InstanceId, ReplicaId, RequestId};
use crate::core::instance::Instance;
use crate::core::message::{Commands, Message};
use crate::core::testkit::Network;

use crate::core::command::Op;
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
        time_ms: 0,
        retry: false,
    }
}

/// Delivers every pending message until quiet, except those `drop` refuses.
/// In rounds on the shared in-memory network (`core::testkit`): every replica flushes and
/// sends, then everything sent is delivered in order.
pub(super) fn settle(rs: &mut [Replica], now: Time, drop: impl Fn(ReplicaId, ReplicaId) -> bool) {
    let mut net = Network::new(rs.len());
    for _ in 0..1000 {
        for r in rs.iter_mut() {
            r.flush(now);
            net.send(r.id(), r.take_ready().messages);
        }
        if net.is_empty() {
            return;
        }
        for e in net.drain() {
            // (A replica beyond `rs` is one the test simulates by hand, or none.)
            if e.to.index() < rs.len() && !drop(e.from, e.to) {
                rs[e.to.index()].handle(now, e.from, e.msg);
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
    assert_eq!(rs[2].committed_prefix.as_slice(), [1, 0, 0]);
}

#[test]
fn executed_instances_committed_everywhere_are_dropped_and_stay_executed() {
    let mut rs: Vec<Replica> = (0..3u32).map(|i| Replica::new(gc_options(i))).collect();
    rs[0].propose(1, put(1, "a")).expect("room");
    settle(&mut rs, Duration::ZERO, |_, _| false);
    let first = InstanceId::new(ReplicaId(0), 0);
    let commit = Message::Commit {
        epoch: Epoch(0),
        instance: first,
        ballot: Ballot::initial(ReplicaId(0)),
        commands: rs[0].instance(first).expect("known").commands.clone(),
        deps: Deps::new(),
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
    assert_eq!(
        rs[2].instance(second).expect("kept").deps,
        Deps::from([first])
    );
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
        let mut net = Network::new(rs.len());
        for _ in 0..100 {
            for r in rs.iter_mut() {
                r.flush(Duration::ZERO);
                let from = r.id();
                let ready = r.take_ready();
                if from == ReplicaId(0) {
                    disk.extend(ready.persist);
                }
                net.send(from, ready.messages);
            }
            if net.is_empty() {
                break;
            }
            for e in net.drain() {
                rs[e.to.index()].handle(Duration::ZERO, e.from, e.msg);
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
            epoch: Epoch(0),
            instance: InstanceId::new(r0, 4),
            ballot: b0,
            commands: commands.clone(),
            deps: Deps::new(),
        },
        Message::Accept {
            epoch: Epoch(0),
            instance: InstanceId::new(r0, 3),
            ballot: b0,
            commands: commands.clone(),
            deps: Deps::new(),
        },
        Message::Recover {
            epoch: Epoch(0),
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
            epoch: Epoch(0),
            instance: InstanceId::new(r0, 0),
            ballot: b0,
            commands: commands.clone(),
            deps: Deps::new(),
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
            epoch: Epoch(0),
            instance: InstanceId::new(r0, 5),
            ballot: b0,
            commands: Arc::new(vec![put(2, "other")]),
            deps: Deps::new(),
        },
    );
    let ready = r.take_ready();
    match &ready.messages[..] {
        [Outgoing {
            msg: Message::PreAcceptOk { deps, .. },
            ..
        }] => assert_eq!(
            deps,
            &Deps::from([InstanceId::new(r0, 4), InstanceId::new(ReplicaId(2), 2)])
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
            epoch: Epoch(0),
            instance: InstanceId::new(ReplicaId(1), 7),
            ballot: Ballot::initial(ReplicaId(1)),
            commands: Arc::new(vec![put(3, "c")]),
            deps: Deps::new(),
        },
    );
    assert_eq!(rs[0].peer_rejoined(ReplicaId(2)), vec![1, 8, 0]);
    assert!(rs[0].peer_executed[ReplicaId(2)].iter().all(|s| *s == 0));
}

/// The old incarnation of r2 answered a PreAccept with deps on its own slot 2.4, whose
/// PreAccept reached nobody: r0 knows 2.4 only as a dependency. The horizon of row 2 must
/// still pass it (see `peer_rejoined`), or the new r2 would start a command of its own in a
/// slot peers take over (a no-op) to execute what depends on it.
#[test]
fn a_slot_known_only_as_a_dependency_is_below_the_horizon() {
    let mut rs = cluster(3);
    rs[0].handle(
        Duration::ZERO,
        ReplicaId(1),
        Message::PreAccept {
            epoch: Epoch(0),
            instance: InstanceId::new(ReplicaId(1), 0),
            ballot: Ballot::initial(ReplicaId(1)),
            commands: Arc::new(vec![put(3, "c")]),
            deps: Deps::from([InstanceId::new(ReplicaId(2), 4)]),
        },
    );
    assert_eq!(rs[0].peer_rejoined(ReplicaId(2)), vec![0, 1, 5]);
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
            collected_prefix: vec![],
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
            epoch: Epoch(0),
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
        let mut net = Network::new(rs.len());
        for _ in 0..100 {
            for r in rs.iter_mut() {
                r.flush(Duration::ZERO);
                let from = r.id();
                let ready = r.take_ready();
                replies[from.index()]
                    .extend(ready.replies.into_iter().map(|x| (x.token, x.result)));
                net.send(from, ready.messages);
            }
            if net.is_empty() {
                break;
            }
            for e in net.drain() {
                rs[e.to.index()].handle(Duration::ZERO, e.from, e.msg);
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
        time_ms: 0,
        retry: false,
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
    let commit = |instance, commands: &Commands, deps: Deps| Message::Commit {
        epoch: Epoch(0),
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
                Deps::from([InstanceId::new(ReplicaId(2), 7)]),
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
            commit(InstanceId::new(ReplicaId(1), 0), &other_cmds, Deps::new()),
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
        commit(id, &other_cmds, Deps::new()),
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
        commit(id, &Commands::default(), Deps::new()),
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
            collected_prefix: vec![],
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
            collected_prefix: vec![],
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

/// A recovery in progress is of an undecided instance held at the recovery's ballot
/// (`recovery_accept` asserts it): `check_invariants`, which the simulator runs after every
/// step, catches bookkeeping that breaks it.
#[test]
fn a_recovery_in_progress_holds_its_instance_at_its_ballot() {
    let mut rs = cluster(3);
    rs[0].propose(1, put(1, "k")).expect("room");
    rs[0].flush(Duration::ZERO);
    let id = InstanceId::new(ReplicaId(0), 0);
    // r1 gets the PreAccept of 0.0; r0 then falls silent, and r1 takes 0.0 over.
    for out in rs[0].take_ready().messages {
        if out.to.contains(&ReplicaId(1)) {
            rs[1].handle(Duration::ZERO, ReplicaId(0), out.msg);
        }
    }
    for t in 1..=30 {
        rs[1].tick(Duration::from_secs(t));
        if rs[1].recovering.contains_key(&id) {
            break;
        }
    }
    let ballot = rs[1].recovering.get(&id).expect("r1 recovers 0.0").ballot;
    rs[1]
        .check_invariants()
        .expect("a recovery as the core keeps it");
    rs[1].instances.get_mut(&id).expect("known").ballot = Ballot {
        round: ballot.round + 1,
        replica: ReplicaId(2),
    };
    let broken = rs[1].check_invariants().expect_err("the promise moved on");
    assert!(broken.contains("recovering 0.0"), "{broken}");
}

/// Epoch 1 = {r0, r1} adopted by r0 and r1 only (as if a change had executed there).
fn two_member_epoch(rs: &mut [Replica]) -> Configuration {
    let e1 = Configuration::new(Epoch(1), vec![ReplicaId(0), ReplicaId(1)]).expect("valid");
    for r in rs.iter_mut().take(2) {
        assert!(r.adopt_configuration(e1.clone()), "epoch 1 follows epoch 0");
    }
    e1
}

#[test]
fn an_instance_carries_its_leaders_epoch_and_asks_only_its_members() {
    let mut rs = cluster(3);
    two_member_epoch(&mut rs);
    let t = Duration::ZERO;
    rs[0].propose(1, put(1, "a")).expect("room");
    rs[0].flush(t);
    let id = InstanceId::new(ReplicaId(0), 0);
    assert_eq!(rs[0].instance(id).expect("led").epoch, Epoch(1));
    let sent = rs[0].take_ready().messages;
    let pre_accepts: Vec<&Outgoing> = sent
        .iter()
        .filter(|o| matches!(o.msg, Message::PreAccept { .. }))
        .collect();
    assert_eq!(pre_accepts.len(), 1);
    assert_eq!(
        pre_accepts[0].to,
        vec![ReplicaId(1)],
        "r2 is no member of epoch 1"
    );
    assert_eq!(pre_accepts[0].msg.epoch(), Some(Epoch(1)));
    // r2 never learnt epoch 1: it is behind, not lied to. The message creates nothing, is
    // not counted as a contradiction, and r2 asks the sender for the Commits it misses.
    rs[2].handle(t, ReplicaId(0), pre_accepts[0].msg.clone());
    let ready = rs[2].take_ready();
    assert!(ready.refused.is_empty());
    assert!(rs[2].instance(id).is_none());
    assert!(
        ready
            .messages
            .iter()
            .any(|o| o.to == vec![ReplicaId(0)] && matches!(o.msg, Message::Watermark { .. })),
        "asks r0 to catch it up"
    );
}

#[test]
fn a_vote_from_a_replica_outside_the_instances_epoch_is_refused_not_counted() {
    let mut rs = cluster(3);
    two_member_epoch(&mut rs);
    let t = Duration::ZERO;
    rs[0].propose(1, put(1, "a")).expect("room");
    rs[0].flush(t);
    let _ = rs[0].take_ready();
    let id = InstanceId::new(ReplicaId(0), 0);
    // Epoch 1 has two members: its fast quorum is both. r2's matching answer would make two
    // with r0's own, so counting it would commit.
    let vote = Message::PreAcceptOk {
        instance: id,
        ballot: Ballot::initial(ReplicaId(0)),
        deps: Deps::new(),
    };
    rs[0].handle(t, ReplicaId(2), vote.clone());
    let ready = rs[0].take_ready();
    assert_eq!(
        ready.refused,
        vec![Refused {
            peer: ReplicaId(2),
            kind: Contradiction::NotMember
        }]
    );
    assert!(
        ready.committed.is_empty(),
        "a non-member's vote decided nothing"
    );
    assert!(!rs[0].instance(id).expect("led").status.is_decided());
    // The member's identical answer commits it (fast path, both members).
    rs[0].handle(t, ReplicaId(1), vote);
    let ready = rs[0].take_ready();
    assert_eq!(ready.committed.len(), 1);
    assert!(rs[0].instance(id).expect("led").status.is_decided());
}

#[test]
fn a_pre_accept_from_a_non_member_is_refused_and_old_instances_keep_their_epochs_quorums() {
    let mut rs = cluster(3);
    two_member_epoch(&mut rs);
    let t = Duration::ZERO;
    // r2 leading in epoch 1, of which it is no member: nobody takes it.
    let foreign = Message::PreAccept {
        instance: InstanceId::new(ReplicaId(2), 0),
        epoch: Epoch(1),
        ballot: Ballot::initial(ReplicaId(2)),
        commands: Arc::new(vec![put(9, "z")]),
        deps: Deps::new(),
    };
    rs[1].handle(t, ReplicaId(2), foreign);
    assert_eq!(
        rs[1].take_ready().refused,
        vec![Refused {
            peer: ReplicaId(2),
            kind: Contradiction::NotMember
        }]
    );
    // An epoch-0 instance of r2's, started before the change, is still voted on by r1 and
    // r2's vote counts for epoch-0 instances at r0 (it is a member of epoch 0).
    let old = InstanceId::new(ReplicaId(2), 0);
    rs[1].handle(
        t,
        ReplicaId(2),
        Message::PreAccept {
            instance: old,
            epoch: Epoch(0),
            ballot: Ballot::initial(ReplicaId(2)),
            commands: Arc::new(vec![put(9, "z")]),
            deps: Deps::new(),
        },
    );
    let ready = rs[1].take_ready();
    assert!(ready.refused.is_empty());
    assert_eq!(rs[1].instance(old).expect("pre-accepted").epoch, Epoch(0));
}

#[test]
fn rows_grow_to_an_added_members_id_and_its_instances_commit_and_execute() {
    let mut rs = cluster(3);
    let e1 = Configuration::new(Epoch(1), (0..4).map(ReplicaId).collect()).expect("valid");
    for r in rs.iter_mut() {
        assert_eq!(r.rows(), 3);
        assert!(r.adopt_configuration(e1.clone()));
        assert_eq!(r.rows(), 4, "a row for id 3");
        let Message::Watermark {
            committed_prefix, ..
        } = r.watermark()
        else {
            panic!("a watermark");
        };
        assert_eq!(committed_prefix.len(), 4, "watermarks carry the new row");
    }
    // r3 (not simulated here) leads 3.0 in epoch 1; r0 votes and later learns the commit.
    let t = Duration::ZERO;
    let id = InstanceId::new(ReplicaId(3), 0);
    let commands: Commands = Arc::new(vec![put(7, "a")]);
    rs[0].handle(
        t,
        ReplicaId(3),
        Message::PreAccept {
            instance: id,
            epoch: Epoch(1),
            ballot: Ballot::initial(ReplicaId(3)),
            commands: commands.clone(),
            deps: Deps::new(),
        },
    );
    let ready = rs[0].take_ready();
    assert!(ready.rejected.is_empty() && ready.refused.is_empty());
    assert!(ready
        .messages
        .iter()
        .any(|o| o.to == vec![ReplicaId(3)] && matches!(o.msg, Message::PreAcceptOk { .. })));
    rs[0].handle(
        t,
        ReplicaId(3),
        Message::Commit {
            instance: id,
            epoch: Epoch(1),
            ballot: Ballot::initial(ReplicaId(3)),
            commands,
            deps: Deps::new(),
        },
    );
    assert_eq!(rs[0].kv().executed(), 1, "3.0 executed at r0");
    assert_eq!(rs[0].committed_prefix.as_slice(), [0, 0, 0, 1]);
    // A write proposed at r0 afterwards depends on the new row's instance.
    rs[0].propose(1, put(1, "a")).expect("room");
    rs[0].flush(t);
    let mine = InstanceId::new(ReplicaId(0), 0);
    assert_eq!(rs[0].instance(mine).expect("led").deps, Deps::from([id]));
    // Commits and Watermarks now go to r3 too.
    assert!(rs[0].peers().contains(&ReplicaId(3)));
}

#[test]
fn a_replica_outside_an_instances_epoch_does_not_recover_it() {
    let mut rs = cluster(3);
    two_member_epoch(&mut rs);
    rs[2].adopt_configuration(
        Configuration::new(Epoch(1), vec![ReplicaId(0), ReplicaId(1)]).expect("valid"),
    );
    // r2 learns of r0's epoch-1 instance 0.1 only as a dependency of a commit, and waits. It
    // holds 0.0 of epoch 1, so 0.1 is of epoch 1 too (a row's epochs only grow with its
    // slots), though r2 was a member of epoch 0.
    let t = Duration::ZERO;
    rs[2].handle(
        t,
        ReplicaId(0),
        Message::Commit {
            instance: InstanceId::new(ReplicaId(0), 0),
            epoch: Epoch(1),
            ballot: Ballot::initial(ReplicaId(0)),
            commands: Arc::new(vec![put(3, "b")]),
            deps: Deps::new(),
        },
    );
    let stuck = InstanceId::new(ReplicaId(0), 1);
    rs[2].handle(
        t,
        ReplicaId(1),
        Message::Commit {
            instance: InstanceId::new(ReplicaId(1), 0),
            epoch: Epoch(1),
            ballot: Ballot::initial(ReplicaId(1)),
            commands: Arc::new(vec![put(1, "a")]),
            deps: Deps::from([stuck]),
        },
    );
    let _ = rs[2].take_ready();
    // Long past the recovery time: a member would have sent Recover by now.
    for ms in [1_000u64, 2_000, 4_000, 8_000] {
        rs[2].tick(Duration::from_millis(ms));
        let ready = rs[2].take_ready();
        assert!(
            !ready
                .messages
                .iter()
                .any(|o| matches!(o.msg, Message::Recover { .. })),
            "r2 is no member of epoch 1 and counts for nothing there"
        );
    }
    // r0, a member, would: the same situation at r1 (member) starts a recovery.
    rs[1].handle(
        t,
        ReplicaId(0),
        Message::PreAccept {
            instance: InstanceId::new(ReplicaId(0), 0),
            epoch: Epoch(1),
            ballot: Ballot::initial(ReplicaId(0)),
            commands: Arc::new(vec![put(3, "b")]),
            deps: Deps::new(),
        },
    );
    rs[1].handle(
        t,
        ReplicaId(0),
        Message::PreAccept {
            instance: stuck,
            epoch: Epoch(1),
            ballot: Ballot::initial(ReplicaId(0)),
            commands: Arc::new(vec![put(2, "a")]),
            deps: Deps::new(),
        },
    );
    let _ = rs[1].take_ready();
    let mut recovered = false;
    for ms in [1_000u64, 2_000, 4_000, 8_000] {
        rs[1].tick(Duration::from_millis(ms));
        recovered |= rs[1]
            .take_ready()
            .messages
            .iter()
            .any(|o| matches!(o.msg, Message::Recover { .. }));
    }
    assert!(recovered, "a member recovers the stuck instance");
}

/// The open point of `docs/membership.md` ("Recovering an instance whose epoch the recoverer
/// does not know"). Epoch 0 is {r0, r1, r2}; r1 leads `y` = 1.0 there and commits it on the
/// fast path with r2's pre-accept (r0 never hears of it, r1's Commit is lost). Then everyone
/// moves to epoch 1 = {r0 .. r4} (r3 and r4, empty, are simulated by hand) and r1 goes
/// down. r0 learns `y` only as a dependency of r3's epoch-1 Commit and recovers it, not
/// knowing `y`'s epoch; r3's and r4's answers (they hold nothing) arrive before r2's.
/// Returns how `y` ends at r0 (`None`: undecided) and whether r0 decided before r2 answered.
fn recover_an_old_instance_known_only_as_a_dependency(
    in_current_epoch: bool,
) -> (Option<Commands>, bool) {
    let mut rs = cluster(3);
    if in_current_epoch {
        #[cfg(feature = "sabotage")]
        for r in rs.iter_mut() {
            r.opts.sabotage.recover_unknown_in_current_epoch = true;
        }
    }
    let (r0, r1, r2, r3) = (ReplicaId(0), ReplicaId(1), ReplicaId(2), ReplicaId(3));
    let t = Duration::ZERO;
    let y = InstanceId::new(r1, 0);
    let command: Commands = Arc::new(vec![put(1, "k")]);
    rs[1].propose(1, command[0].clone()).expect("room");
    // r1's PreAccept reaches r2 only; r2's answer makes the fast quorum; the Commit is lost.
    rs[1].flush(t);
    for o in rs[1].take_ready().messages {
        if o.to.contains(&r2) {
            rs[2].handle(t, r1, o.msg);
        }
    }
    for o in rs[2].take_ready().messages {
        if o.to.contains(&r1) {
            rs[1].handle(t, r2, o.msg);
        }
    }
    let _ = rs[1].take_ready();
    assert_eq!(
        rs[1]
            .instance(y)
            .filter(|i| i.status.is_decided())
            .map(|i| i.commands.clone()),
        Some(command.clone()),
        "r1 committed y on the fast path"
    );
    assert_eq!(
        rs[2].instance(y).map(|i| i.status),
        Some(Status::PreAccepted)
    );
    assert!(rs[0].instance(y).is_none());
    let e1 = Configuration::new(Epoch(1), (0..5).map(ReplicaId).collect()).expect("valid");
    for r in rs.iter_mut() {
        assert!(r.adopt_configuration(e1.clone()));
        let _ = r.take_ready();
    }
    rs[0].handle(
        t,
        r3,
        Message::Commit {
            instance: InstanceId::new(r3, 0),
            epoch: Epoch(1),
            ballot: Ballot::initial(r3),
            commands: Arc::new(vec![put(2, "k")]),
            deps: Deps::from([y]),
        },
    );
    let _ = rs[0].take_ready();
    // r0's recovery of y starts once y is overdue; what goes to r2 is held back.
    let mut queue: std::collections::VecDeque<(ReplicaId, ReplicaId, Message)> =
        std::collections::VecDeque::new();
    let mut held = Vec::new();
    let mut now = t;
    while held.is_empty() {
        now += Duration::from_millis(100);
        assert!(now < Duration::from_secs(30), "r0 never recovered y");
        rs[0].tick(now);
        for o in rs[0].take_ready().messages {
            let recover = matches!(o.msg, Message::Recover { instance, .. } if instance == y);
            for to in o.to {
                if recover && to == r2 {
                    held.push((r0, to, o.msg.clone()));
                } else if recover {
                    queue.push_back((r0, to, o.msg.clone()));
                }
            }
        }
    }
    let mut decided_before_r2 = false;
    for round in 0..2 {
        if round == 1 {
            decided_before_r2 = rs[0].instance(y).is_some_and(|i| i.status.is_decided());
            queue.extend(held.drain(..));
        }
        let mut steps = 0;
        while let Some((from, to, msg)) = queue.pop_front() {
            steps += 1;
            assert!(steps < 1000, "messages kept flowing");
            let answer = match (to.0, &msg) {
                (1, _) => None, // down
                // r3 and r4 hold nothing of y: they promise, accept and find no conflict.
                (
                    3 | 4,
                    Message::Recover {
                        instance, ballot, ..
                    },
                ) => Some(Message::RecoverOk {
                    instance: *instance,
                    ballot: *ballot,
                    reply: crate::core::message::RecoverReply {
                        status: Status::Initial,
                        accepted_ballot: None,
                        commands: Commands::default(),
                        deps: Deps::new(),
                        init_deps: None,
                        epoch: None,
                    },
                }),
                (
                    3 | 4,
                    Message::Accept {
                        instance, ballot, ..
                    },
                ) => Some(Message::AcceptOk {
                    instance: *instance,
                    ballot: *ballot,
                }),
                (
                    3 | 4,
                    Message::Validate {
                        instance, ballot, ..
                    },
                ) => Some(Message::ValidateOk {
                    instance: *instance,
                    ballot: *ballot,
                    conflicts: Vec::new(),
                }),
                (3 | 4, _) => None,
                (_, _) => {
                    rs[to.index()].handle(now, from, msg);
                    for o in rs[to.index()].take_ready().messages {
                        for next in o.to {
                            queue.push_back((to, next, o.msg.clone()));
                        }
                    }
                    None
                }
            };
            if let Some(answer) = answer {
                rs[0].handle(now, to, answer);
                let ready = rs[0].take_ready();
                assert!(ready.refused.is_empty(), "{:?}", ready.refused);
                for o in ready.messages {
                    for next in o.to {
                        queue.push_back((r0, next, o.msg.clone()));
                    }
                }
            }
        }
    }
    let decided = rs[0]
        .instance(y)
        .filter(|i| i.status.is_decided())
        .map(|i| i.commands.clone());
    (decided, decided_before_r2)
}

#[test]
fn an_old_instance_known_only_as_a_dependency_is_recovered_under_its_own_epoch() {
    let (decided, early) = recover_an_old_instance_known_only_as_a_dependency(false);
    assert!(!early, "r0 waited for a quorum of epoch 0 too");
    assert_eq!(
        decided,
        Some(Arc::new(vec![put(1, "k")])),
        "r2's answer revealed epoch 0, whose quorum {{r0, r2}} finds y's command"
    );
}

#[cfg(feature = "sabotage")]
#[test]
fn sabotage_recovering_an_unknown_instance_in_the_current_epoch_loses_a_committed_command() {
    let (decided, early) = recover_an_old_instance_known_only_as_a_dependency(true);
    assert!(early, "r0 counted epoch 1's quorum {{r0, r3, r4}} alone");
    assert_eq!(
        decided,
        Some(Commands::default()),
        "y, committed with its command at r1, ends a no-op at r0 (agreement breaks)"
    );
}

/// Epoch 0 is {r0, r1, r2}, epoch 1 {r0, r1, r3} (r2 replaced). r1 leads `y` in epoch 1,
/// pre-accepted at r0; r2 knows `y` only as a dependency. `y` may be of epoch 0 as far as r2
/// knows, where r2 is a member, so it recovers it; r0's answer reveals epoch 1, where r2 cannot
/// vote: it stops, and does not try again.
#[test]
fn a_recoverer_stops_once_an_answer_reveals_an_epoch_it_is_not_a_member_of() {
    let mut rs = cluster(3);
    let (r0, r1, r2) = (ReplicaId(0), ReplicaId(1), ReplicaId(2));
    let e1 = Configuration::new(Epoch(1), vec![r0, r1, ReplicaId(3)]).expect("valid");
    for r in rs.iter_mut() {
        assert!(r.adopt_configuration(e1.clone()));
    }
    let t = Duration::ZERO;
    let y = InstanceId::new(r1, 0);
    rs[0].handle(
        t,
        r1,
        Message::PreAccept {
            instance: y,
            epoch: Epoch(1),
            ballot: Ballot::initial(r1),
            commands: Arc::new(vec![put(1, "k")]),
            deps: Deps::new(),
        },
    );
    let _ = rs[0].take_ready();
    rs[2].handle(
        t,
        r0,
        Message::Commit {
            instance: InstanceId::new(r0, 0),
            epoch: Epoch(1),
            ballot: Ballot::initial(r0),
            commands: Arc::new(vec![put(2, "k")]),
            deps: Deps::from([y]),
        },
    );
    let _ = rs[2].take_ready();
    let recovers = |out: &[Outgoing]| {
        out.iter()
            .filter(|o| matches!(o.msg, Message::Recover { instance, .. } if instance == y))
            .cloned()
            .collect::<Vec<Outgoing>>()
    };
    let mut now = t;
    let asked = loop {
        now += Duration::from_millis(100);
        assert!(now < Duration::from_secs(30), "r2 never recovered y");
        rs[2].tick(now);
        let out = recovers(&rs[2].take_ready().messages);
        if !out.is_empty() {
            break out;
        }
    };
    assert_eq!(asked.len(), 1);
    assert_eq!(
        asked[0].to,
        vec![r0, r1, ReplicaId(3)],
        "the members of epochs 0 and 1"
    );
    rs[0].handle(now, r2, asked[0].msg.clone());
    let answer = rs[0].take_ready().messages;
    assert!(matches!(
        &answer[..],
        [Outgoing { msg: Message::RecoverOk { reply, .. }, .. }] if reply.epoch == Some(Epoch(1))
    ));
    rs[2].handle(now, r0, answer[0].msg.clone());
    let ready = rs[2].take_ready();
    assert!(ready.refused.is_empty() && ready.rejected.is_empty());
    assert!(
        ready.messages.is_empty(),
        "no Validate or Accept: r2 cannot vote in epoch 1"
    );
    assert_eq!(rs[2].instance(y).map(|i| i.epoch), Some(Epoch(1)));
    for _ in 0..100 {
        now += Duration::from_millis(100);
        rs[2].tick(now);
        assert!(
            recovers(&rs[2].take_ready().messages).is_empty(),
            "r2 leaves y to epoch 1's members"
        );
    }
}
