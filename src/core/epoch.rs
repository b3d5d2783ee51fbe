//! Epochs and configurations: which replicas are members, and so whose votes count, for the
//! instances of each epoch (issue 15; the design is `docs/membership.md`).
//!
//! An instance belongs to the epoch its leader was in when it started it, and carries it in
//! every PreAccept, Accept, Commit and Recover and in its stored record. Its quorums are
//! computed from *that* epoch's configuration, whatever epoch the replicas handling it are in
//! now: an old instance finishes (recovery included) under the old quorums, so two decisions of
//! one instance are always taken by intersecting quorums of one configuration. A replica that
//! is not a member of an instance's epoch never counts in its quorums: a vote from one is
//! impossible peer input (`Contradiction::NotMember`), never a vote.
//!
//! Ids are never reused (a replacement gets a fresh id and its own row), so a row's slots and
//! ballots never mean two replicas' votes; ids stay below [`MEMBERS_EVER_MAX`], which bounds
//! every per-row table.
//!
//! Epoch 0 is the configuration `config.json` seeds: ids `0..n`.
//!
//! Why counting by the instance's epoch is safe, in the three situations issue 15 names:
//! - *concurrent instances*: each instance's two phases and every recovery of it count
//!   members of one configuration, and any two of its quorums intersect (checked for every
//!   size below). Ordering old against new instances is the boundary's job (sealing and
//!   covering deps, `docs/membership.md`; not built yet).
//! - *recovery in flight*: a recoverer asks and counts the members of the instance's epoch,
//!   not its own current one, so a recovery that straddles a change still meets every quorum
//!   the instance may have been decided by; an answer from anyone else is refused. A recoverer
//!   that knows the instance only as a dependency does not know its epoch: it asks every epoch
//!   it may be of and counts a quorum of each until an answer reveals it
//!   (`replica::recovering`).
//! - *a crash in the middle of a change*: the epoch is in the instance's stored record, so an
//!   instance restored from the log is finished under the same quorums as before the crash.
//!   Which epoch a replica is in after a restart comes from executing its checkpoint and log
//!   again (a checkpoint keeps every epoch's members, `checkpoint::Configurations`), or from
//!   the shell's record of the decided configuration if the log ends before the change.
//!
//! A message naming an epoch above this replica's tells it that it is behind (a change
//! committed elsewhere has not executed here): it drops the message and pulls the Commits it
//! misses from the sender (`replica::reconfigure`), never counting it a contradiction.
//!
//! Changes are commands (`Op::Reconfigure`, see `replica::reconfigure`): a change interferes
//! with every command, so every replica executes it at the same point of its order and moves
//! from epoch `e` to `e + 1` at the same point of its state.

use std::fmt;

use crate::core::ids::ReplicaId;
use crate::core::limits::{ADDRESS_BYTES_MAX, MEMBERS_EVER_MAX};

/// A configuration number: 0 is the one `config.json` seeds, each executed change makes the
/// next. Ordered: a replica only moves to higher epochs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Epoch(pub u64);

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "e{}", self.0)
    }
}

/// One member: its id (never reused) and its addresses, opaque to the core. They travel in the
/// `Reconfigure` command that adds the member, so every replica learns them by executing it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Member {
    pub id: ReplicaId,
    pub peer_addr: String,
    pub client_addr: String,
}

/// One membership change, decided by consensus (`Op::Reconfigure`). Replace = add the new
/// member, then remove the old one: one change at a time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Change {
    Add(Member),
    Remove(ReplicaId),
}

impl Change {
    /// Bytes of the addresses the change carries.
    pub fn size_bytes(&self) -> usize {
        match self {
            Change::Add(m) => m.peer_addr.len() + m.client_addr.len(),
            Change::Remove(_) => 0,
        }
    }

    /// Checks the bounds: an id below [`MEMBERS_EVER_MAX`], addresses of at most
    /// [`ADDRESS_BYTES_MAX`] bytes, not empty.
    pub fn validate(&self) -> Result<(), ChangeError> {
        let id = match self {
            Change::Add(m) => {
                for addr in [&m.peer_addr, &m.client_addr] {
                    if addr.is_empty() || addr.len() > ADDRESS_BYTES_MAX {
                        return Err(ChangeError::Address(addr.len()));
                    }
                }
                m.id
            }
            Change::Remove(id) => *id,
        };
        if id.index() >= MEMBERS_EVER_MAX {
            return Err(ChangeError::IdTooLarge(id));
        }
        Ok(())
    }

    /// The configuration after this change to `current`, or why it cannot apply. `ever`: every
    /// id that is or was a member (ids are never reused).
    pub fn apply(
        &self,
        current: &Configuration,
        ever: &std::collections::BTreeSet<ReplicaId>,
    ) -> Result<Configuration, ChangeError> {
        self.validate()?;
        let mut members = current.members().to_vec();
        match self {
            Change::Add(m) if ever.contains(&m.id) || current.is_member(m.id) => {
                return Err(ChangeError::Duplicate(m.id))
            }
            Change::Add(m) => members.push(m.id),
            Change::Remove(id) if !current.is_member(*id) => {
                return Err(ChangeError::NotMember(*id))
            }
            Change::Remove(_) if current.len() == 1 => return Err(ChangeError::LastMember),
            Change::Remove(id) => members.retain(|m| m != id),
        }
        Configuration::new(Epoch(current.epoch().0 + 1), members).map_err(|_| ChangeError::Invalid)
    }
}

/// Why a change cannot apply to a configuration (or is malformed).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    #[error("an address is {0} bytes: it must be 1 to {ADDRESS_BYTES_MAX}")]
    Address(usize),
    #[error("member id {0} is not below the most ids ever handed out ({MEMBERS_EVER_MAX})")]
    IdTooLarge(ReplicaId),
    #[error("id {0} is or was a member: ids are never reused")]
    Duplicate(ReplicaId),
    #[error("{0} is not a member")]
    NotMember(ReplicaId),
    #[error("removing the last member would leave no configuration")]
    LastMember,
    #[error("not a configuration")]
    Invalid,
}

/// Why a list of members is not a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigurationError {
    #[error("a configuration needs at least one member")]
    Empty,
    #[error("member {0} is listed twice")]
    Duplicate(ReplicaId),
    #[error("member id {0} is not below the most ids ever handed out ({MEMBERS_EVER_MAX})")]
    IdTooLarge(ReplicaId),
}

/// An epoch and its members: sorted by id, not empty, no id twice, every id below
/// [`MEMBERS_EVER_MAX`]. Only [`Configuration::new`] and [`Configuration::initial`] build one,
/// so every configuration in the core has that shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Configuration {
    epoch: Epoch,
    members: Vec<ReplicaId>,
}

impl Configuration {
    /// `members` (in any order) as the configuration of `epoch`.
    pub fn new(
        epoch: Epoch,
        mut members: Vec<ReplicaId>,
    ) -> Result<Configuration, ConfigurationError> {
        members.sort_unstable();
        if members.is_empty() {
            return Err(ConfigurationError::Empty);
        }
        if let Some(w) = members.windows(2).find(|w| w[0] == w[1]) {
            return Err(ConfigurationError::Duplicate(w[0]));
        }
        if let Some(&too_large) = members.iter().find(|m| m.index() >= MEMBERS_EVER_MAX) {
            return Err(ConfigurationError::IdTooLarge(too_large));
        }
        Ok(Configuration { epoch, members })
    }

    /// Epoch 0 of a cluster of `n` (at least one, below [`MEMBERS_EVER_MAX`]): ids `0..n`.
    pub fn initial(n: usize) -> Configuration {
        let members = (0..n.max(1) as u32).map(ReplicaId).collect();
        Configuration::new(Epoch(0), members)
            .expect("n is below MEMBERS_EVER_MAX: Options::validate checks it")
    }

    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    /// The members, sorted by id.
    pub fn members(&self) -> &[ReplicaId] {
        &self.members
    }

    /// How many members.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Never true (a configuration has a member); for clippy's sake.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    pub fn is_member(&self, id: ReplicaId) -> bool {
        self.members.binary_search(&id).is_ok()
    }

    /// One past the highest member id: how many rows a per-row table needs for this epoch.
    pub fn rows(&self) -> usize {
        self.members.last().map_or(0, |m| m.index() + 1)
    }

    /// Failures this epoch tolerates: `f = floor((n-1)/2)`.
    pub fn max_failures(&self) -> usize {
        (self.len() - 1) / 2
    }

    /// Members (the leader included) that must accept for the slow path of this epoch's
    /// instances: `n - f`, a majority. Not `quorum::slow_quorum` (F+1), which assumes
    /// `n = 2F+1`: a configuration may have an even size (4 on the way from 3 to 5), where
    /// F+1 = 2 of 4 would let two quorums miss each other.
    pub fn slow_quorum(&self) -> usize {
        self.len() - self.max_failures()
    }

    /// Members (the leader included) that must report the initial deps for the fast path of
    /// this epoch's instances: `n - e` with EPaxos*'s `e = ceil((f+1)/2)` (OPODIS'25, section
    /// 4; `n >= max(2e+f-1, 2f+1)` holds for every n), and `e = 0` when `f = 0` (one or two
    /// members: every member must answer, or two leaders alone could each decide without
    /// seeing the other). Equal to `quorum::fast_quorum` for every odd n.
    pub fn fast_quorum(&self) -> usize {
        let f = self.max_failures();
        let e = if f == 0 { 0 } else { (f + 1).div_ceil(2) };
        self.len() - e
    }
}

impl fmt::Display for Configuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {{", self.epoch)?;
        for (i, m) in self.members.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            m.fmt(f)?;
        }
        f.write_str("}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::quorum;

    fn ids(v: &[u32]) -> Vec<ReplicaId> {
        v.iter().copied().map(ReplicaId).collect()
    }

    #[test]
    fn a_configuration_is_sorted_non_empty_without_duplicates_and_bounded() {
        let c = Configuration::new(Epoch(3), ids(&[4, 0, 2])).expect("valid");
        assert_eq!(c.members(), ids(&[0, 2, 4]).as_slice());
        assert_eq!(c.epoch(), Epoch(3));
        assert_eq!(c.rows(), 5, "rows reach the highest id, not the count");
        assert!(c.is_member(ReplicaId(2)) && !c.is_member(ReplicaId(1)));
        assert_eq!(
            Configuration::new(Epoch(0), vec![]),
            Err(ConfigurationError::Empty)
        );
        assert_eq!(
            Configuration::new(Epoch(0), ids(&[1, 3, 1])),
            Err(ConfigurationError::Duplicate(ReplicaId(1)))
        );
        let too_large = ReplicaId(MEMBERS_EVER_MAX as u32);
        assert_eq!(
            Configuration::new(Epoch(0), vec![ReplicaId(0), too_large]),
            Err(ConfigurationError::IdTooLarge(too_large))
        );
    }

    #[test]
    fn quorums_count_members_not_ids() {
        // {0, 1, 3} after replacing 2 by 3: three members, whatever their ids.
        let c = Configuration::new(Epoch(1), ids(&[0, 1, 3])).expect("valid");
        assert_eq!(
            (c.slow_quorum(), c.fast_quorum(), c.max_failures()),
            (2, 2, 1)
        );
        let five = Configuration::new(Epoch(2), ids(&[0, 1, 3, 5, 6])).expect("valid");
        assert_eq!((five.slow_quorum(), five.fast_quorum()), (3, 3));
    }

    #[test]
    fn quorums_intersect_for_every_size_and_match_the_odd_table() {
        for n in 1..=MEMBERS_EVER_MAX {
            let c = Configuration::new(Epoch(0), (0..n as u32).map(ReplicaId).collect())
                .expect("valid");
            let (f, slow, fast) = (c.max_failures(), c.slow_quorum(), c.fast_quorum());
            assert!(2 * slow > n, "two slow quorums of {n} intersect");
            assert!(fast + slow > n, "a fast and a slow quorum of {n} intersect");
            assert!(2 * fast > n, "two fast quorums of {n} intersect");
            assert!(slow <= fast && fast <= n, "n = {n}");
            // Recovery needs n - f answers and tolerates f silent members.
            assert_eq!(slow + f, n);
            if n % 2 == 1 {
                assert_eq!(slow, quorum::slow_quorum(n), "n = {n}");
                assert_eq!(fast, quorum::fast_quorum(n), "n = {n}");
            }
        }
        let four = Configuration::new(Epoch(1), ids(&[0, 1, 2, 3])).expect("valid");
        assert_eq!((four.slow_quorum(), four.fast_quorum()), (3, 3));
    }

    #[test]
    fn epoch_zero_is_the_seed_ids() {
        let c = Configuration::initial(3);
        assert_eq!(c.epoch(), Epoch(0));
        assert_eq!(c.members(), ids(&[0, 1, 2]).as_slice());
        assert_eq!(c.to_string(), "e0 {r0,r1,r2}");
    }
}
