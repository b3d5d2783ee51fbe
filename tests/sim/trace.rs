//! What happened in a run, kept compact: every event feeds a running hash (two runs of one seed
//! must hash alike), and the events worth showing are kept to explain a failure.

use std::fmt;
use std::time::Duration;

use epaxos_kv::core::ids::InstanceId;
use epaxos_kv::core::message::{Message, ShowDeps};

/// One thing that happened.
#[derive(Debug, Clone)]
pub enum What {
    Deliver {
        from: usize,
        to: usize,
        kind: &'static str,
        instance: Option<InstanceId>,
        deps: usize,
    },
    Drop {
        from: usize,
        to: usize,
        kind: &'static str,
        instance: Option<InstanceId>,
        why: &'static str,
    },
    Duplicate {
        from: usize,
        to: usize,
        kind: &'static str,
        instance: Option<InstanceId>,
    },
    Request {
        client: usize,
        request: u64,
        replica: usize,
        op: String,
        attempt: u32,
    },
    RequestLost {
        client: usize,
        request: u64,
        replica: usize,
    },
    Reply {
        client: usize,
        request: u64,
        result: String,
    },
    Commit {
        replica: usize,
        instance: InstanceId,
        deps: Vec<InstanceId>,
    },
    Execute {
        replica: usize,
        instance: InstanceId,
    },
    Fault(String),
}

impl What {
    /// The instance the event is about, if any.
    pub fn instance(&self) -> Option<InstanceId> {
        match self {
            What::Deliver { instance, .. }
            | What::Drop { instance, .. }
            | What::Duplicate { instance, .. } => *instance,
            What::Commit { instance, .. } | What::Execute { instance, .. } => Some(*instance),
            _ => None,
        }
    }

    /// Whether the event mentions instance `id` (as its subject or a dependency).
    pub fn mentions(&self, id: InstanceId) -> bool {
        self.instance() == Some(id)
            || matches!(self, What::Commit { deps, .. } if deps.contains(&id))
    }
}

impl fmt::Display for What {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let inst = |i: &Option<InstanceId>| i.map_or(String::new(), |i| format!(" {i}"));
        match self {
            What::Deliver {
                from,
                to,
                kind,
                instance,
                deps,
            } => write!(f, "r{from} -> r{to} {kind}{} ({deps} deps)", inst(instance)),
            What::Drop {
                from,
                to,
                kind,
                instance,
                why,
            } => write!(
                f,
                "r{from} -> r{to} {kind}{} DROPPED ({why})",
                inst(instance)
            ),
            What::Duplicate {
                from,
                to,
                kind,
                instance,
            } => write!(f, "r{from} -> r{to} {kind}{} duplicated", inst(instance)),
            What::Request {
                client,
                request,
                replica,
                op,
                attempt,
            } => write!(
                f,
                "client {client} request {request} -> r{replica} (attempt {attempt}): {op}"
            ),
            What::RequestLost {
                client,
                request,
                replica,
            } => write!(f, "client {client} request {request} to r{replica} lost"),
            What::Reply {
                client,
                request,
                result,
            } => write!(f, "client {client} request {request} answered {result}"),
            What::Commit {
                replica,
                instance,
                deps,
            } => write!(
                f,
                "r{replica} commits {instance} deps {}",
                ShowDeps(Some(deps))
            ),
            What::Execute { replica, instance } => write!(f, "r{replica} executes {instance}"),
            What::Fault(s) => write!(f, "FAULT {s}"),
        }
    }
}

/// A timestamped event.
#[derive(Debug, Clone)]
pub struct Entry {
    pub at: Duration,
    pub what: What,
}

/// The run's trace: a hash of everything, and the events themselves.
#[derive(Debug)]
pub struct Trace {
    hash: u64,
    entries: Vec<Entry>,
}

/// Most events kept: a long run keeps its hash, but stops storing events beyond this.
const ENTRIES_MAX: usize = 2_000_000;

impl Default for Trace {
    fn default() -> Self {
        Trace {
            hash: 0xcbf2_9ce4_8422_2325,
            entries: Vec::new(),
        }
    }
}

impl Trace {
    /// Mixes words into the running hash.
    pub fn mix(&mut self, words: &[u64]) {
        for w in words {
            // FNV-1a over whole words, then a final avalanche in `hash()`.
            self.hash ^= *w;
            self.hash = self.hash.wrapping_mul(0x0100_0000_01b3);
        }
    }

    /// Mixes in a message's identity: type, instance, ballot and deps.
    pub fn mix_message(&mut self, msg: &Message) {
        let kind = msg.kind().len() as u64 ^ u64::from(msg.kind().as_bytes()[0]) << 8;
        let (r, s) = msg
            .instance()
            .map_or((u64::MAX, 0), |i| (u64::from(i.replica.0), i.slot));
        let ballot = msg.ballot().map_or(u64::MAX, |b| {
            u64::from(b.round) << 32 | u64::from(b.replica.0)
        });
        self.mix(&[kind, r, s, ballot]);
        if let Some(deps) = msg.deps() {
            for d in deps {
                self.mix(&[u64::from(d.replica.0), d.slot]);
            }
        }
    }

    pub fn record(&mut self, at: Duration, what: What) {
        self.mix(&[at.as_nanos() as u64]);
        if self.entries.len() < ENTRIES_MAX {
            self.entries.push(Entry { at, what });
        }
    }

    pub fn hash(&self) -> u64 {
        let mut z = self.hash;
        z = (z ^ (z >> 33)).wrapping_mul(0xff51_afd7_ed55_8ccd);
        z ^ (z >> 33)
    }

    /// The last `count` events mentioning any of `instances` (all events if it is empty).
    pub fn tail(&self, instances: &[InstanceId], count: usize) -> Vec<&Entry> {
        let mut out: Vec<&Entry> = self
            .entries
            .iter()
            .rev()
            .filter(|e| instances.is_empty() || instances.iter().any(|i| e.what.mentions(*i)))
            .take(count)
            .collect();
        out.reverse();
        out
    }
}
