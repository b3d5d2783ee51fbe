//! A deterministic simulator for the EPaxos* core (issue 4): N replicas of the real
//! `Replica` in one thread, a network and clients driven by one seeded generator, and checks
//! of every run. See `tests/simulation.rs` for how to run and replay it.

pub mod linearizability;
pub mod observer;
pub mod rng;
pub mod trace;
pub mod world;

use std::fmt;

use epaxos_kv::core::ids::InstanceId;

pub use world::{Action, Config, Outcome, Sim};

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
