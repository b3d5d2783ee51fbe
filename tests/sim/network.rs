//! The simulated network between replicas: latency with a long tail (messages overtake each
//! other), loss, duplication, partitions (symmetric and one-way) and scripted drops.
//!
//! A message reaches a replica only if it is up, the link is not cut, and the sender's
//! incarnation is not fenced (a replica that lost its disk; see `cluster`). Every drop is
//! counted and traced with its reason. `Config::sabotage_garble` garbles messages, to show
//! that `Check::Invariant` fails.
//!
//! The messages and the cuts are those of `core::testkit` (`envelopes`, `Links`), the network
//! the core's unit tests and `tests/core_paths.rs` move messages on; the timing (the event
//! queue), loss and duplication are the simulator's, drawn from the run's seed.

use std::time::Duration;

use epaxos_kv::core::ids::{InstanceId, ReplicaId};
use epaxos_kv::core::message::Message;
use epaxos_kv::core::testkit::Envelope;

use super::cluster::{incarnation_of, Fault};
use super::rng::Rng;
use super::trace::What;
use super::world::{Event, Sim};

impl Sim {
    /// Partitions, one at a time, each healing before the next.
    pub(super) fn plan_partitions(&mut self, rng: &mut Rng) {
        let n = self.cfg.n;
        let chaos = self.cfg.chaos.as_millis() as u64;
        let mut t = rng.range(50, 400);
        while t < chaos {
            let (cut, what) = match rng.below(3) {
                0 => {
                    let r = rng.index(n);
                    let cut = (0..n)
                        .filter(|&o| o != r)
                        .flat_map(|o| [(r, o), (o, r)])
                        .collect();
                    (cut, format!("isolate r{r}"))
                }
                1 => {
                    let side: Vec<bool> = (0..n).map(|_| rng.chance(0.5)).collect();
                    let cut = (0..n)
                        .flat_map(|a| (0..n).map(move |b| (a, b)))
                        .filter(|&(a, b)| side[a] != side[b])
                        .collect();
                    (cut, format!("split {side:?}"))
                }
                _ => {
                    let mut cut = Vec::new();
                    for _ in 0..rng.range(1, n as u64) {
                        let a = rng.index(n);
                        let b = (a + 1 + rng.index(n - 1)) % n;
                        cut.push((a, b));
                    }
                    let what = format!("one-way cuts {cut:?}");
                    (cut, what)
                }
            };
            let dur = rng.range(30, 700);
            self.schedule_at(
                Duration::from_millis(t),
                Event::Fault(Fault::Cut(cut, what)),
            );
            let heal = (t + dur).min(chaos);
            self.schedule_at(Duration::from_millis(heal), Event::Fault(Fault::HealLinks));
            t = heal + rng.range(50, 500);
        }
    }

    pub(super) fn on_deliver(&mut self, from: usize, to: usize, msg: Message, generation: u64) {
        // What `to` receives is what the runtime's decoding makes of the bytes (a Watermark
        // from a peer that knows more rows is cut to the rows `to` knows).
        let (msg, decodes) = if self.cfg.spares > 0 && self.alive(to) {
            match self.decoded_at(to, &msg) {
                Some(decoded) => (decoded, true),
                None => (msg, false),
            }
        } else {
            (msg, true)
        };
        let why = if !self.alive(to) {
            Some("crashed")
        } else if !decodes {
            // Naming a member added by a change `to` has not executed yet: the runtime's
            // decoding refuses it (`WireError::UnknownReplica`) before the core sees it.
            Some("unknown row")
        } else if !self.nodes[to].would_hear(ReplicaId(from as u32), incarnation_of(generation)) {
            // Sent by an incarnation that lost its disk: every peer refuses it since the wipe.
            Some("old incarnation")
        } else if self.links.is_cut(from, to) {
            Some("partition")
        } else {
            None
        };
        let (kind, instance) = (msg.kind(), msg.instance());
        if let Some(why) = why {
            self.drop_message(from, to, kind, instance, why);
            if why == "unknown row" {
                // As the runtime does on that decoding error: `to` pulls what it misses.
                self.nodes[to].peer_knows_more_rows(self.now, ReplicaId(from as u32));
                self.after_input(to);
            }
            return;
        }
        self.stats.delivered += 1;
        let msg = if self.cfg.sabotage_garble && self.stats.delivered.is_multiple_of(20) {
            let nobody = ReplicaId(self.cfg.n as u32);
            Message::CommitRequest {
                instances: vec![InstanceId::new(nobody, 0)],
            }
        } else {
            msg
        };
        self.trace.mix_message(&msg);
        self.trace.record(
            self.now,
            What::Deliver {
                from,
                to,
                kind,
                instance,
                deps: msg.deps().map_or(0, |d| d.len()),
            },
        );
        let peer = ReplicaId(from as u32);
        let heard = self.nodes[to].hear(peer, incarnation_of(generation));
        assert!(heard, "would_hear said it would");
        self.nodes[to].handle(self.now, peer, msg);
        self.after_input(to);
    }

    /// `msg` as replica `to` decodes it (its ids within the rows `to` knows), as the runtime's
    /// `wire::decode` does; `None` if refused.
    fn decoded_at(&self, to: usize, msg: &Message) -> Option<Message> {
        use epaxos_kv::core::wire::{decode, encode};
        decode(&encode(msg), self.nodes[to].rows()).ok()
    }

    pub(super) fn latency(&mut self) -> Duration {
        let lo = self.cfg.latency_min.as_micros() as u64;
        let hi = self.cfg.latency_max.as_micros() as u64;
        let mut us = self.rng.range(lo, hi.max(lo));
        if self.rng.chance(self.cfg.tail_chance) {
            us += self.rng.range(0, self.cfg.tail_max.as_micros() as u64);
        }
        Duration::from_micros(us)
    }

    pub(super) fn client_latency(&mut self) -> Duration {
        if self.cfg.latency_min == self.cfg.latency_max {
            return self.cfg.latency_min;
        }
        Duration::from_micros(self.rng.range(200, 2_000))
    }

    /// Counts and traces a message that will not arrive.
    pub(super) fn drop_message(
        &mut self,
        from: usize,
        to: usize,
        kind: &'static str,
        instance: Option<InstanceId>,
        why: &'static str,
    ) {
        self.stats.dropped += 1;
        self.trace.record(
            self.now,
            What::Drop {
                from,
                to,
                kind,
                instance,
                why,
            },
        );
    }

    /// Puts `envelope` on its way: lost, or delivered after a latency (and maybe twice).
    pub(super) fn send(&mut self, envelope: Envelope) {
        let (from, to, msg) = (envelope.from.index(), envelope.to.index(), envelope.msg);
        let kind = msg.kind();
        let instance = msg.instance();
        if let Some(pos) = self
            .drop_next
            .iter()
            .position(|&(f, t, k)| (f, t, k) == (from, to, kind))
        {
            self.drop_next.remove(pos);
            self.drop_message(from, to, kind, instance, "scripted");
            return;
        }
        if self.rng.chance(self.loss) {
            self.drop_message(from, to, kind, instance, "loss");
            return;
        }
        if self.rng.chance(self.dup) {
            self.stats.duplicated += 1;
            self.trace.record(
                self.now,
                What::Duplicate {
                    from,
                    to,
                    kind,
                    instance,
                },
            );
            let after = self.latency();
            self.schedule(
                after,
                Event::Deliver {
                    from,
                    to,
                    msg: msg.clone(),
                    generation: self.generation[from],
                },
            );
        }
        let after = self.latency();
        let generation = self.generation[from];
        self.schedule(
            after,
            Event::Deliver {
                from,
                to,
                msg,
                generation,
            },
        );
    }

    pub(super) fn heal_links(&mut self) {
        self.links.heal();
        self.trace
            .record(self.now, What::Fault("heal links".into()));
    }
}
