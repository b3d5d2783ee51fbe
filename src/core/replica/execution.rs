//! Execution: what execution waits for (`Waiting`), running components in order once their
//! dependencies are committed, fetching Commits it misses.

use std::collections::{BTreeMap, BTreeSet};

use super::waiting::Waiting;
use super::{Replica, Reply, ReplyError, Time};
use crate::core::command::{Op, OpResult};
use crate::core::execute::{self, Node, Outcome};
use crate::core::ids::{InstanceId, ReplicaId, RequestId};
use crate::core::instance::Status;
use crate::core::kv::{self, Applied};
use crate::core::message::Message;

impl Replica {
    pub(super) fn wait_for(&mut self, now: Time, missing: InstanceId, root: InstanceId) {
        let w = self.need(now, missing);
        w.roots.insert(root);
    }

    /// Registers that this replica needs `id` committed: it fetches its Commit after
    /// `fetch_after` and takes it over after `recover_after` (staggered by replica id, so that
    /// replicas needing the same instance do not all start at once).
    pub(super) fn need(&mut self, now: Time, id: InstanceId) -> &mut Waiting {
        let stagger = self.opts.retry * self.opts.id.0;
        let (fetch_after, recover_after) = (self.opts.fetch_after, self.opts.recover_after);
        self.waiting.entry(id).or_insert_with(|| Waiting {
            roots: BTreeSet::new(),
            next_fetch: now + fetch_after,
            backoff: fetch_after,
            fetches: 0,
            recover_at: now + recover_after + stagger,
            recover_backoff: recover_after,
        })
    }

    /// Executes what can run from `root`. Returns what blocks the rest, if anything.
    pub(super) fn try_execute(
        &mut self,
        root: InstanceId,
    ) -> Option<(InstanceId, Vec<InstanceId>)> {
        let mut components = Vec::new();
        let instances = &self.instances;
        let to_execute = &self.to_execute;
        let committed_prefix = &self.committed_prefix;
        let outcome = execute::order(
            root,
            |id| match instances.get(&id) {
                Some(i) if i.status == Status::Executed => Node::Done,
                Some(i) if i.status == Status::Committed => {
                    let mut edges = to_execute.edges(id, &i.commands, &i.deps);
                    edges.extend(execute::gaps(&i.deps, committed_prefix.as_slice()));
                    Node::Ready(edges)
                }
                None if id.slot < self.gc_prefix[id.replica] => Node::Done,
                _ => Node::Missing,
            },
            &mut components,
        );
        for mut component in components {
            if self.opts.sabotage.reverse_component_order() {
                component.reverse();
            }
            for id in component {
                self.execute_instance(id);
            }
        }
        match outcome {
            Outcome::Complete => None,
            Outcome::Blocked { missing, waiting } => Some((missing, waiting)),
        }
    }

    fn execute_instance(&mut self, id: InstanceId) {
        let inst = self
            .instances
            .get_mut(&id)
            .expect("executed instances come from the table");
        debug_assert_eq!(inst.status, Status::Committed, "{id} executes once");
        inst.status = Status::Executed;
        let commands = inst.commands.clone();
        self.to_execute.remove(id);
        for cmd in commands.iter() {
            if let Op::Reconfigure { change, epoch } = &cmd.op {
                let result = self.execute_reconfigure(change, *epoch);
                if let Some(tokens) = self.clients.remove(&(cmd.client, cmd.request)) {
                    for (token, _) in tokens {
                        self.ready.replies.push(Reply {
                            token,
                            result: Ok(result.clone()),
                        });
                    }
                }
                continue;
            }
            let applied = if self.opts.sabotage.skip_dedup() {
                self.kv.apply_without_dedup(cmd)
            } else if self.opts.sabotage.retry_starts_session() {
                self.kv.apply_trusting_retries(cmd, id.replica)
            } else {
                self.kv.apply(cmd, id.replica)
            };
            match applied {
                Applied::Expiry { removed } => {
                    self.expiring.remove(&cmd.client);
                    self.ready.sessions_expired += u64::from(removed);
                    continue;
                }
                Applied::Expired => self
                    .ready
                    .refused_expired
                    .push((id, cmd.client, cmd.request)),
                _ => {}
            }
            if let Some(tokens) = self.clients.remove(&(cmd.client, cmd.request)) {
                let print = kv::fingerprint(&cmd.op);
                let result = reply_of_applied(applied, cmd.request);
                for (token, theirs) in tokens {
                    // A client that joined this request's waiting list with another command
                    // gets what that command would get now (its retry's answer, or Reused).
                    let result = if theirs == print {
                        result.clone()
                    } else {
                        let now = self.kv.peek(cmd.client, cmd.request, theirs);
                        reply_of_applied(now, cmd.request)
                    };
                    self.ready.replies.push(Reply { token, result });
                }
            }
        }
        self.unexecuted -= 1;
        self.ready.executed.push(id);
        self.advance_executed(id);
    }

    /// Moves the executed prefix of `id`'s row forward where it can.
    pub(super) fn advance_executed(&mut self, id: InstanceId) {
        let row = id.replica;
        let mut p = self.executed_prefix[row];
        while self
            .instances
            .get(&InstanceId::new(id.replica, p))
            .is_some_and(|i| i.status == Status::Executed)
        {
            p += 1;
        }
        self.executed_prefix[row] = p;
    }

    /// Asks peers for the Commit of dependencies execution has waited on past `fetch_after`:
    /// first the dependency's own leader, then everyone, with exponential backoff.
    pub(super) fn fetch_missing(&mut self, now: Time) {
        let me = self.opts.id;
        let peers = self.peers();
        let mut asks: BTreeMap<ReplicaId, Vec<InstanceId>> = BTreeMap::new();
        for (id, w) in self.waiting.iter_mut() {
            if now < w.next_fetch || self.leading.contains_key(id) {
                continue;
            }
            if id.replica != me {
                asks.entry(id.replica).or_default().push(*id);
            }
            if w.fetches > 0 || id.replica == me {
                for p in &peers {
                    if *p != id.replica {
                        asks.entry(*p).or_default().push(*id);
                    }
                }
            }
            w.fetches += 1;
            w.backoff = (w.backoff * 2).min(self.opts.retry_max);
            w.next_fetch = now + w.backoff;
        }
        for (to, instances) in asks {
            self.send(vec![to], Message::CommitRequest { instances });
        }
    }
}

/// What a client is told about its command's application.
fn reply_of_applied(applied: Applied, request: RequestId) -> Result<OpResult, ReplyError> {
    match applied {
        Applied::Executed(r) | Applied::Duplicate(r) => Ok(r),
        Applied::Stale => Err(ReplyError::Stale),
        Applied::Reused => Err(ReplyError::Reused),
        Applied::Expired => Err(ReplyError::Expired(request.0)),
        Applied::ResultNotKept => Err(ReplyError::ResultNotKept(request.0)),
        Applied::Expiry { .. } => unreachable!("nobody waits for a session expiry"),
    }
}
