//! Recovery (explicit prepare) of EPaxos*: the decision rules, apart from the replica's
//! bookkeeping so that they can be read, and tested, on their own.
//!
//! A replica that needs an instance (execution waits for it) which stays uncommitted past
//! `Options::recover_after` takes it over at a higher ballot (ballots are ordered by round, then
//! replica; round 0 is the original leader's). The rules are those of Ryabinin, Gotsman and
//! Sutra (OPODIS'25, Figure 5), with `n` replicas, `f = n - slow quorum` and
//! `e = n - fast quorum` (the fast path needs `n - e` matching pre-accepts, leader included):
//!
//! 1. **Recover** goes to every peer; each promises the ballot (persisted before it answers) and
//!    answers RecoverOk with its status, its *accepted* ballot, command, deps and the leader's
//!    initial deps. Promising fences the old ballots: a replica ignores PreAccepts once it
//!    promised a higher ballot, and the original leader stops leading (it never commits on the
//!    fast path after a Recover reached it, since its own promise moved on).
//! 2. With `n - f` answers `Q` ([`decide`]):
//!    - someone has it committed: commit that (a decided value is final);
//!    - among the answers with the highest accepted ballot, one accepted: Accept that value at
//!      our ballot (classic Paxos: nothing else can have been chosen at a higher ballot; the
//!      accepted ballot is kept apart from the promised one, the bug of the original EPaxos);
//!    - the original leader is in `Q`: a no-op (it answered without having committed or
//!      accepted, and after its promise it never will, so no fast path can have committed);
//!    - at least `|Q| - e` answers pre-accepted exactly the initial deps `D`: the command may
//!      have been committed on the fast path with `D`; **Validate** decides (below);
//!    - otherwise a no-op: fewer than `|Q| - e` matching pre-accepts in `Q` means fewer than
//!      `n - e` overall, so no fast quorum existed.
//! 3. **Validate**(c, D) to `Q`: each replica records c and D as what it knows of the instance
//!    and answers the interfering instances it knows that `D` does not cover and whose deps (if
//!    committed) or initial deps (if not) do not cover the recovered one. Had c been committed
//!    with `D`, Visibility would forbid a committed such instance. ([`after_validate`]):
//!    - none: Accept(c, D) (if c was committed, it was with `D`; if not, (c, D) is safe to
//!      choose: every interfering instance is ordered with it one way or the other);
//!    - one of them committed (then c cannot have been fast-committed with `D`), or only
//!      `|Q| - e` matched and one of them has a leader outside `Q` (the paper's case where the
//!      conflicting instance may have been the one to go first): a no-op;
//!    - otherwise **Waiting**: tell everyone (Waiting with the matching count) and wait until
//!      each of them commits here ([`after_waiting`]): one committed without depending on us
//!      means a no-op; all committed as no-ops or depending on us means Accept(c, D); a
//!      recoverer of one of them waiting with more than `n - f - e` matches means a no-op
//!      (that breaks waiting cycles). A late RecoverOk from outside `Q` that shows the instance
//!      committed or accepted, or comes from the original leader, settles it as in step 2.
//!
//! A no-op commits with no command and no deps; the dependency meaning (`deps`) makes it
//! break no chain. The original leader re-proposes the commands of its no-op'd instance for
//! the clients still waiting on it, and exactly-once execution (the session table) absorbs a
//! command that ends up both recovered and retried.
//!
//! A replica that lost its disk must not vote again on what it may have voted on before (it
//! may have promised what it no longer remembers): it joins again as another incarnation,
//! which its peers fence the old one against, and abstains below the horizons they report
//! (see `Replica` "rejoin" and `join`).

use crate::core::deps::Deps;
use crate::core::ids::{Ballot, InstanceId, ReplicaId};
use crate::core::instance::Status;
use crate::core::message::{Commands, RecoverReply};

/// What the RecoverOk answers decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Commit(Commands, Deps),
    Accept(Commands, Deps),
    /// Check whether the command may have been committed on the fast path; `matching` answers
    /// pre-accepted exactly the initial deps.
    Validate {
        commands: Commands,
        deps: Deps,
        matching: usize,
    },
    Nop,
}

/// Step 2 of the recovery of an instance of `leader`'s row, from the answers of a quorum.
pub fn decide(leader: ReplicaId, e: usize, replies: &[(ReplicaId, RecoverReply)]) -> Decision {
    if let Some((_, r)) = replies.iter().find(|(_, r)| r.status.is_decided()) {
        return Decision::Commit(r.commands.clone(), r.deps.clone());
    }
    let top: Option<Ballot> = replies.iter().filter_map(|(_, r)| r.accepted_ballot).max();
    if let Some(top) = top {
        if let Some((_, r)) = replies
            .iter()
            .find(|(_, r)| r.accepted_ballot == Some(top) && r.status == Status::Accepted)
        {
            return Decision::Accept(r.commands.clone(), r.deps.clone());
        }
    }
    if replies.iter().any(|(q, _)| *q == leader) {
        return Decision::Nop;
    }
    let matching: Vec<&RecoverReply> = replies
        .iter()
        .map(|(_, r)| r)
        .filter(|r| r.status == Status::PreAccepted && r.init_deps.as_ref() == Some(&r.deps))
        .collect();
    if !matching.is_empty() && matching.len() + e >= replies.len() {
        let r = matching[0];
        return Decision::Validate {
            commands: r.commands.clone(),
            deps: r.deps.clone(),
            matching: matching.len(),
        };
    }
    Decision::Nop
}

/// What the ValidateOk answers decide.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterValidate {
    Accept,
    Nop,
    /// Wait for these (uncommitted where they were reported) to commit.
    Wait(Vec<InstanceId>),
}

/// Step 3: `conflicts` is the union of the ValidateOk answers of the whole quorum `quorum`.
pub fn after_validate(
    e: usize,
    quorum: &[ReplicaId],
    matching: usize,
    conflicts: &[(InstanceId, bool)],
) -> AfterValidate {
    if conflicts.is_empty() {
        return AfterValidate::Accept;
    }
    let committed = conflicts.iter().any(|(_, c)| *c);
    let outside = conflicts
        .iter()
        .any(|(id, _)| !quorum.contains(&id.replica));
    if committed || (matching + e == quorum.len() && outside) {
        return AfterValidate::Nop;
    }
    let mut ids: Vec<InstanceId> = conflicts.iter().map(|(id, _)| *id).collect();
    ids.sort_unstable();
    ids.dedup();
    AfterValidate::Wait(ids)
}

/// What one awaited instance looks like here, for [`after_waiting`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Awaited {
    /// Not committed here yet; `waiting_matching` is the highest matching count a recoverer of
    /// it announced in a Waiting message.
    Open { waiting_matching: u32 },
    /// Committed here: a no-op, or its deps cover the recovered instance.
    Harmless,
    /// Committed here, a command whose deps do not cover the recovered instance.
    Conflicting,
}

/// Step 3, waiting: `None` while it must go on waiting.
pub fn after_waiting(n: usize, f: usize, e: usize, awaited: &[Awaited]) -> Option<Decision> {
    if awaited.contains(&Awaited::Conflicting) {
        return Some(Decision::Nop);
    }
    if awaited.iter().all(|a| *a == Awaited::Harmless) {
        return Some(Decision::Accept(Commands::default(), Deps::new()));
    }
    let threshold = n.saturating_sub(f + e) as u32;
    let cycle = awaited
        .iter()
        .any(|a| matches!(a, Awaited::Open { waiting_matching } if *waiting_matching > threshold));
    cycle.then_some(Decision::Nop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::command::{Command, Op};
    use crate::core::ids::{ClientId, RequestId};
    use std::sync::Arc;

    fn id(r: u32, s: u64) -> InstanceId {
        InstanceId::new(ReplicaId(r), s)
    }
    fn cmd() -> Commands {
        Arc::new(vec![Command {
            client: ClientId(1),
            request: RequestId(1),
            op: Op::Get {
                key: bytes::Bytes::from_static(b"k"),
            },
            time_ms: 0,
            retry: false,
        }])
    }
    fn reply(status: Status, ab: Option<u32>, deps: &[InstanceId], init: bool) -> RecoverReply {
        let deps: Deps = deps.iter().copied().collect();
        RecoverReply {
            status,
            accepted_ballot: ab.map(|round| Ballot {
                round,
                replica: ReplicaId(round % 3),
            }),
            commands: if status == Status::Initial {
                Commands::default()
            } else {
                cmd()
            },
            deps,
            init_deps: init.then(|| Deps::from([id(1, 1)])),
            epoch: None,
        }
    }
    const R0: ReplicaId = ReplicaId(0);
    const R1: ReplicaId = ReplicaId(1);
    const R2: ReplicaId = ReplicaId(2);

    #[test]
    fn committed_wins_then_highest_accepted_ballot() {
        let d = [id(1, 1)];
        let replies = [
            (R1, reply(Status::Accepted, Some(1), &[id(1, 5)], true)),
            (R2, reply(Status::Committed, Some(0), &d, true)),
        ];
        assert_eq!(
            decide(R0, 1, &replies),
            Decision::Commit(cmd(), Deps::from(d))
        );
        // Highest accepted ballot, not highest promise: a stale accept at round 0 loses.
        let replies = [
            (R1, reply(Status::Accepted, Some(0), &[id(1, 9)], true)),
            (R2, reply(Status::Accepted, Some(2), &[id(1, 5)], true)),
        ];
        assert_eq!(
            decide(R0, 1, &replies),
            Decision::Accept(cmd(), Deps::from([id(1, 5)]))
        );
    }

    #[test]
    fn leader_in_quorum_or_too_few_matches_means_nop() {
        let d = [id(1, 1)];
        let replies = [
            (R0, reply(Status::PreAccepted, None, &d, true)),
            (R1, reply(Status::PreAccepted, None, &d, true)),
        ];
        assert_eq!(decide(R0, 1, &replies), Decision::Nop);
        // n = 5: e = 2, |Q| = 3; one matching answer is below |Q| - e... no, equal: validate.
        let replies = [
            (R1, reply(Status::PreAccepted, None, &d, true)),
            (R2, reply(Status::Initial, None, &[], false)),
            (
                ReplicaId(3),
                reply(Status::PreAccepted, None, &[id(2, 4)], true),
            ),
        ];
        assert!(matches!(
            decide(R0, 2, &replies),
            Decision::Validate { matching: 1, .. }
        ));
        // n = 3: e = 1, |Q| = 2 and no matching answer: nothing can have been fast-committed.
        let replies = [
            (R1, reply(Status::Initial, None, &[], false)),
            (R2, reply(Status::PreAccepted, None, &[id(2, 4)], true)),
        ];
        assert_eq!(decide(R0, 1, &replies), Decision::Nop);
    }

    #[test]
    fn validate_outcomes() {
        let q = [R1, R2];
        assert_eq!(after_validate(1, &q, 2, &[]), AfterValidate::Accept);
        assert_eq!(
            after_validate(1, &q, 2, &[(id(1, 3), true)]),
            AfterValidate::Nop
        );
        // Only |Q| - e matched and the conflict's leader is outside Q.
        assert_eq!(
            after_validate(1, &q, 1, &[(id(0, 3), false)]),
            AfterValidate::Nop
        );
        assert_eq!(
            after_validate(1, &q, 2, &[(id(0, 3), false), (id(0, 3), false)]),
            AfterValidate::Wait(vec![id(0, 3)])
        );
    }

    #[test]
    fn waiting_outcomes() {
        let open = |m| Awaited::Open {
            waiting_matching: m,
        };
        assert_eq!(after_waiting(3, 1, 1, &[open(0)]), None);
        assert_eq!(
            after_waiting(3, 1, 1, &[open(0), Awaited::Conflicting]),
            Some(Decision::Nop)
        );
        assert!(matches!(
            after_waiting(3, 1, 1, &[Awaited::Harmless]),
            Some(Decision::Accept(..))
        ));
        // n - f - e = 1: a recoverer of the awaited instance with 2 matches breaks the wait.
        assert_eq!(after_waiting(3, 1, 1, &[open(1)]), None);
        assert_eq!(after_waiting(3, 1, 1, &[open(2)]), Some(Decision::Nop));
    }
}
