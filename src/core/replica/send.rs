//! Message builders and small helpers: every message leaves through `send`, every durable
//! change through `save`.

use super::{Contradiction, Outgoing, Refused, Replica};
use crate::core::ids::{Ballot, InstanceId, ReplicaId};
use crate::core::message::Message;

impl Replica {
    pub(super) fn send_commit(&mut self, to: ReplicaId, id: InstanceId) {
        let inst = &self.instances[&id];
        let msg = Message::Commit {
            instance: id,
            epoch: inst.epoch,
            ballot: inst.ballot,
            commands: inst.commands.clone(),
            deps: inst.deps.clone(),
        };
        self.send(vec![to], msg);
    }

    /// What this replica reports of its rows: committed, executed and collected prefixes.
    pub(super) fn watermark(&self) -> Message {
        Message::Watermark {
            committed_prefix: self.committed_prefix.as_slice().to_vec(),
            executed_prefix: self.executed_prefix.as_slice().to_vec(),
            collected_prefix: self.gc_prefix.as_slice().to_vec(),
        }
    }

    pub(super) fn send_commit_to_all(&mut self, id: InstanceId) {
        for peer in self.peers() {
            self.send_commit(peer, id);
        }
    }

    /// Queues the current state of `id` for the durable log.
    pub(super) fn save(&mut self, id: InstanceId) {
        if let Some(inst) = self.instances.get(&id) {
            self.ready.persist.push((id, inst.clone()));
        }
    }

    /// Every other replica of any configuration known here (the members of epoch 0, then
    /// those added since): whom Commits, Watermarks and other news go to.
    pub(super) fn peers(&self) -> Vec<ReplicaId> {
        let mut peers: Vec<ReplicaId> = self
            .configurations
            .iter()
            .flat_map(|c| c.members().iter().copied())
            .filter(|r| *r != self.opts.id)
            .collect();
        peers.sort_unstable();
        peers.dedup();
        peers
    }

    /// Tells `to` that this replica promised `promised` for `id`, above its message's ballot.
    /// Counts a refused peer message (see [`Refused`]).
    pub(super) fn refuse(&mut self, peer: ReplicaId, kind: Contradiction) {
        self.ready.refused.push(Refused { peer, kind });
    }

    pub(super) fn nack(&mut self, to: ReplicaId, id: InstanceId, promised: Ballot) {
        self.send(
            vec![to],
            Message::Nack {
                instance: id,
                promised,
            },
        );
    }

    /// Like `send`, for a message that may leave before the records of this `Ready` are
    /// durable (see `Ready::early`): only a new instance's first PreAccept (see `leader`).
    pub(super) fn send_early(&mut self, to: Vec<ReplicaId>, msg: Message) {
        if !to.is_empty() {
            self.early.push(Outgoing { to, msg });
        }
    }

    pub(super) fn send(&mut self, to: Vec<ReplicaId>, msg: Message) {
        let msg = match msg {
            Message::Watermark { .. } if self.opts.sabotage.forge_watermarks() => {
                // Far beyond anything proposed, yet below `SLOT_LIMIT` (which `check_input`
                // rejects as impossible before any comparison): a lie only a replica that
                // knows the row can catch.
                let everything = vec![crate::core::ids::SLOT_LIMIT - 1; self.rows()];
                Message::Watermark {
                    committed_prefix: everything.clone(),
                    executed_prefix: everything,
                    collected_prefix: vec![0; self.rows()],
                }
            }
            msg => msg,
        };
        if !to.is_empty() {
            self.ready.messages.push(Outgoing { to, msg });
        }
    }
}
