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

/// No row ever reaches this slot: 2^48 instances, nine years of a million instances a second
/// in one row. A peer message naming a slot at or above it is refused (slot arithmetic such as
/// `slot + 1` then never comes near overflowing).
pub const SLOT_LIMIT: u64 = 1 << 48;

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
/// Round 0 belongs to the instance's original leader; recovery takes higher rounds.
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

/// One life of a replica's data directory: a random nonzero number drawn when the directory
/// is created. A replica that lost its data comes back as another incarnation, which its
/// peers tell apart from the old one (see `node`). Zero is not an incarnation, so "none" is
/// `Option<Incarnation>`, never a magic value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Incarnation(std::num::NonZeroU64);

impl Incarnation {
    /// The incarnation `n`, or `None` for 0 (what the wire sends when it has none).
    pub fn new(n: u64) -> Option<Incarnation> {
        std::num::NonZeroU64::new(n).map(Incarnation)
    }

    /// The number as it goes on the wire and to disk.
    pub fn get(self) -> u64 {
        self.0.get()
    }
}

impl fmt::Display for Incarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}
