//! Identifiers that the protocol must never mix up.

use std::fmt;

/// A replica's id: its index in `config.json`, 0..N-1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ReplicaId(pub u32);

impl ReplicaId {
    /// The id as an index into per-replica tables.
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}", self.0)
    }
}

/// Names an instance: slot `slot` in the row owned by replica `replica`. Ordered by
/// (replica, slot): the fixed order in which a strongly connected component executes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct InstanceId {
    pub replica: ReplicaId,
    pub slot: u64,
}

impl InstanceId {
    pub fn new(replica: ReplicaId, slot: u64) -> Self {
        InstanceId { replica, slot }
    }
}

impl fmt::Display for InstanceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.replica.0, self.slot)
    }
}

/// A ballot, ordered by (round, replica) so that two replicas never own the same ballot.
/// Round 0 belongs to the instance's original leader; recovery (a later issue) takes higher
/// rounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ballot {
    pub round: u32,
    pub replica: ReplicaId,
}

impl Ballot {
    /// The ballot an instance's original leader starts with.
    pub fn initial(leader: ReplicaId) -> Self {
        Ballot {
            round: 0,
            replica: leader,
        }
    }
}

impl fmt::Display for Ballot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.round, self.replica.0)
    }
}

/// A client session. A session has at most one request in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientId(pub u64);

/// A request number within a client session: strictly increasing, reused by retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RequestId(pub u64);
