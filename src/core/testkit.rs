//! The in-memory network that every test of the core moves messages on: the core's unit tests
//! (`core::replica::tests`), the scenario tests (`tests/core_paths.rs`) and the simulator
//! (`tests/sim`). What a replica sends fans out into one [`Envelope`] per addressee, in the
//! order the core produced them; [`Links`] says which links are cut; [`Network`] holds what is
//! in flight, in FIFO order, for tests that deliver, drop or reorder by hand. The simulator
//! keeps its own clock and event queue (delays, loss, duplication) and uses the envelopes and
//! links.
//!
//! It lives in the library, not in `tests/`, because the core's unit tests are inside the
//! library and cannot include a file of `tests/`; it is compiled only for those unit tests
//! and with the `testkit` feature (which `cargo test` turns on, see `Cargo.toml`), never into
//! the release binaries. It is pure like the rest of the core: no clock, no randomness.

use std::collections::VecDeque;

use crate::core::ids::ReplicaId;
use crate::core::message::Message;
use crate::core::replica::Outgoing;

/// A message on its way from one replica to another.
#[derive(Debug, Clone)]
pub struct Envelope {
    pub from: ReplicaId,
    pub to: ReplicaId,
    pub msg: Message,
}

/// One envelope per addressee of each of `messages` (sent by `from`), in the order the core
/// produced them: what the runtime's per-peer queues receive.
pub fn envelopes(from: ReplicaId, messages: Vec<Outgoing>) -> impl Iterator<Item = Envelope> {
    messages.into_iter().flat_map(move |out| {
        let msg = out.msg;
        out.to.into_iter().map(move |to| Envelope {
            from,
            to,
            msg: msg.clone(),
        })
    })
}

/// Which links between `n` replicas are cut, each one way.
#[derive(Debug, Clone)]
pub struct Links {
    /// `cut[from][to]`.
    cut: Vec<Vec<bool>>,
}

impl Links {
    /// `n` replicas, every link up.
    pub fn new(n: usize) -> Links {
        Links {
            cut: vec![vec![false; n]; n],
        }
    }

    /// Cuts the link from `from` to `to` (only that way).
    pub fn cut(&mut self, from: usize, to: usize) {
        self.cut[from][to] = true;
    }

    /// Cuts every link between replicas of different `groups`, both ways (the replicas in no
    /// group form one more group).
    pub fn partition(&mut self, groups: &[Vec<usize>]) {
        let n = self.cut.len();
        let group_of = |r: usize| groups.iter().position(|g| g.contains(&r));
        for a in 0..n {
            for b in 0..n {
                if group_of(a) != group_of(b) {
                    self.cut(a, b);
                }
            }
        }
    }

    /// Restores every link.
    pub fn heal(&mut self) {
        for row in &mut self.cut {
            row.fill(false);
        }
    }

    /// Whether the link from `from` to `to` is cut.
    pub fn is_cut(&self, from: usize, to: usize) -> bool {
        // A replica beyond the links (one a test simulates by hand) is not cut off.
        self.cut
            .get(from)
            .and_then(|row| row.get(to))
            .copied()
            .unwrap_or(false)
    }
}

/// What is in flight, in FIFO order: nothing moves unless the test says so. Messages sent on
/// a cut link are lost at once.
#[derive(Debug)]
pub struct Network {
    in_flight: VecDeque<Envelope>,
    pub links: Links,
}

impl Network {
    /// A network between `n` replicas, every link up, nothing in flight.
    pub fn new(n: usize) -> Network {
        Network {
            in_flight: VecDeque::new(),
            links: Links::new(n),
        }
    }

    /// Puts what `from` sends in flight (see [`envelopes`]), but for what goes over a cut link.
    pub fn send(&mut self, from: ReplicaId, messages: Vec<Outgoing>) {
        for e in envelopes(from, messages) {
            if !self.links.is_cut(e.from.index(), e.to.index()) {
                self.in_flight.push_back(e);
            }
        }
    }

    /// The oldest message in flight.
    pub fn pop(&mut self) -> Option<Envelope> {
        self.in_flight.pop_front()
    }

    /// Removes and returns the oldest message in flight matching `pick`.
    pub fn take(&mut self, pick: impl Fn(&Envelope) -> bool) -> Option<Envelope> {
        let pos = self.in_flight.iter().position(pick)?;
        self.in_flight.remove(pos)
    }

    /// Drops every message in flight matching `pick`; returns how many.
    pub fn drop_where(&mut self, pick: impl Fn(&Envelope) -> bool) -> usize {
        let before = self.in_flight.len();
        self.in_flight.retain(|e| !pick(e));
        before - self.in_flight.len()
    }

    /// Removes and returns everything in flight, oldest first.
    pub fn drain(&mut self) -> Vec<Envelope> {
        self.in_flight.drain(..).collect()
    }

    /// What is in flight, oldest first.
    pub fn in_flight(&self) -> impl Iterator<Item = &Envelope> {
        self.in_flight.iter()
    }

    pub fn len(&self) -> usize {
        self.in_flight.len()
    }

    pub fn is_empty(&self) -> bool {
        self.in_flight.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ids::InstanceId;

    /// A small message that names one slot of row `from`, to tell messages apart.
    fn nack(from: u32, slot: u64) -> Message {
        Message::CommitRequest {
            instances: vec![InstanceId::new(ReplicaId(from), slot)],
        }
    }

    fn slot(msg: &Message) -> u64 {
        match msg {
            Message::CommitRequest { instances } => instances[0].slot,
            other => panic!("not a test message: {other:?}"),
        }
    }

    #[test]
    fn a_message_fans_out_in_order_and_cut_links_lose_it() {
        let mut net = Network::new(3);
        net.links.cut(0, 2);
        net.send(
            ReplicaId(0),
            vec![
                Outgoing {
                    to: vec![ReplicaId(1), ReplicaId(2)],
                    msg: nack(0, 1),
                },
                Outgoing {
                    to: vec![ReplicaId(2), ReplicaId(1)],
                    msg: nack(0, 2),
                },
            ],
        );
        let got: Vec<(usize, u64)> = net
            .in_flight()
            .map(|e| (e.to.index(), slot(&e.msg)))
            .collect();
        assert_eq!(got, vec![(1, 1), (1, 2)], "r0 -> r2 is cut");
        // One way only: r2 still reaches r0.
        net.send(
            ReplicaId(2),
            vec![Outgoing {
                to: vec![ReplicaId(0)],
                msg: nack(2, 1),
            }],
        );
        assert_eq!(net.len(), 3);
        let taken = net.take(|e| e.from == ReplicaId(2)).expect("in flight");
        assert_eq!(taken.to, ReplicaId(0));
        assert_eq!(net.drop_where(|e| e.to == ReplicaId(1)), 2);
        assert!(net.is_empty());
    }

    #[test]
    fn a_partition_cuts_between_groups_both_ways_and_heals() {
        let mut links = Links::new(5);
        links.partition(&[vec![0, 1], vec![2, 3]]);
        assert!(!links.is_cut(0, 1) && !links.is_cut(3, 2));
        assert!(links.is_cut(0, 2) && links.is_cut(2, 0));
        assert!(
            links.is_cut(4, 0) && links.is_cut(3, 4),
            "r4, in no group, is cut off"
        );
        links.heal();
        assert!((0..5).all(|a| (0..5).all(|b| !links.is_cut(a, b))));
    }
}
