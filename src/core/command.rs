//! Key/value commands, their results, and which commands interfere.

use bytes::Bytes;

use crate::core::epoch::{Change, ChangeError, Epoch};
use crate::core::ids::{ClientId, ReplicaId, RequestId};

pub use crate::core::limits::{KEY_BYTES_MAX, VALUE_BYTES_MAX};

/// One key/value operation.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Op {
    Get {
        key: Bytes,
    },
    Put {
        key: Bytes,
        value: Bytes,
    },
    Delete {
        key: Bytes,
    },
    /// Sets `key` to `new` if it holds `expected` (`None`: if it is absent).
    Cas {
        key: Bytes,
        expected: Option<Bytes>,
        new: Bytes,
    },
    /// Not a client request: a replica's proposal to forget the command's client session if
    /// it was last active at or before `idle_since_ms` (see `session`). Replicas propose it;
    /// the client contract cannot express it, so no client can send one.
    Expire {
        idle_since_ms: u64,
    },
    /// Not a client request: a membership change proposed (by an admin call) in `epoch`. It
    /// interferes with every command, so it executes at the same point of every replica's
    /// order; executed while `epoch` is still current it makes epoch + 1, otherwise (another
    /// change got in first) it changes nothing and answers `success: false` (see
    /// `replica::reconfigure`).
    Reconfigure {
        change: Change,
        epoch: Epoch,
    },
}

impl Op {
    /// The key the operation touches; none for [`Op::Expire`], which touches only its
    /// command's session.
    pub fn key(&self) -> Option<&Bytes> {
        match self {
            Op::Get { key } | Op::Put { key, .. } | Op::Delete { key } | Op::Cas { key, .. } => {
                Some(key)
            }
            Op::Expire { .. } | Op::Reconfigure { .. } => None,
        }
    }

    /// Whether the operation may change the key/value state. GETs commute with each other;
    /// everything else on the same key interferes with everything on that key.
    pub fn is_write(&self) -> bool {
        !matches!(self, Op::Get { .. } | Op::Expire { .. })
    }

    /// A membership change: it interferes with every command (see [`ops_interfere`]).
    pub fn is_reconfigure(&self) -> bool {
        matches!(self, Op::Reconfigure { .. })
    }

    /// Key and value bytes the operation carries.
    pub fn size_bytes(&self) -> usize {
        self.key().map_or(0, |k| k.len())
            + match self {
                Op::Get { .. } | Op::Delete { .. } | Op::Expire { .. } => 0,
                Op::Reconfigure { change, .. } => change.size_bytes(),
                Op::Put { value, .. } => value.len(),
                Op::Cas { expected, new, .. } => {
                    new.len() + expected.as_ref().map_or(0, |e| e.len())
                }
            }
    }

    /// Checks the limits on keys and values.
    pub fn validate(&self) -> Result<(), CommandError> {
        if let Op::Reconfigure { change, .. } = self {
            return change.validate().map_err(CommandError::Change);
        }
        let key_len = self.key().map_or(0, |k| k.len());
        if key_len > KEY_BYTES_MAX {
            return Err(CommandError::KeyTooLarge(key_len));
        }
        let value_len = match self {
            Op::Put { value, .. } => value.len(),
            Op::Cas { expected, new, .. } => {
                new.len().max(expected.as_ref().map_or(0, |e| e.len()))
            }
            _ => 0,
        };
        if value_len > VALUE_BYTES_MAX {
            return Err(CommandError::ValueTooLarge(value_len));
        }
        Ok(())
    }
}

/// Whether two operations interfere: they touch the same key and at least one may write, or
/// one is a membership change (it writes a cluster-wide pseudo-key every command reads: see
/// `deps::ConflictKey::Cluster`).
pub fn ops_interfere(a: &Op, b: &Op) -> bool {
    a.is_reconfigure()
        || b.is_reconfigure()
        || ((a.is_write() || b.is_write()) && a.key().is_some() && a.key() == b.key())
}

/// The one interference predicate between commands, used for dependencies (`deps`) and checked
/// by the tests: their operations interfere, or they belong to the same client session (so that
/// a session's requests execute in one order everywhere, as exactly-once needs).
pub fn interferes(a: &Command, b: &Command) -> bool {
    a.client == b.client || ops_interfere(&a.op, &b.op)
}

/// A client's command as replicated: who asked, which request, what to do, and when.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Command {
    pub client: ClientId,
    pub request: RequestId,
    pub op: Op,
    /// Wall-clock milliseconds (Unix epoch) of the replica that took the command into an
    /// instance, stamped there once: every replica then sees the same value, so session expiry
    /// can be decided from it alike everywhere (see `session`). 0 in records written before
    /// commands carried a time.
    pub time_ms: u64,
    /// The client sent this request before (an earlier attempt may have executed): a retry
    /// that finds no session must not start one (see `session`).
    pub retry: bool,
}

impl Command {
    /// A client's first attempt at a request, not stamped yet.
    pub fn new(client: ClientId, request: RequestId, op: Op) -> Command {
        Command {
            client,
            request,
            op,
            time_ms: 0,
            retry: false,
        }
    }

    /// A replica's proposal to expire `client`'s session if it has been idle since
    /// `idle_since_ms` or longer. Request 0 is no client's (client requests start at 1).
    pub fn expire(client: ClientId, idle_since_ms: u64) -> Command {
        Command::new(client, RequestId(0), Op::Expire { idle_since_ms })
    }

    /// Replica `proposer`'s membership change proposed in `epoch`. It belongs to no client
    /// session: its client is [`RECONFIGURE_CLIENT`] and its request names the proposer and
    /// the epoch (one change at a time per replica, so the pair is unique while it waits).
    pub fn reconfigure(proposer: ReplicaId, change: Change, epoch: Epoch) -> Command {
        let request = epoch
            .0
            .saturating_mul(crate::core::limits::MEMBERS_EVER_MAX as u64)
            .saturating_add(u64::from(proposer.0))
            .saturating_add(1);
        Command::new(
            RECONFIGURE_CLIENT,
            RequestId(request),
            Op::Reconfigure { change, epoch },
        )
    }
}

/// The client id of every membership change (no client session: the change never enters the
/// session table). A client using this id only shares the changes' interference.
pub const RECONFIGURE_CLIENT: ClientId = ClientId(u64::MAX);

/// The outcome of an executed command (see `OpResult` in the proto for each field's meaning).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct OpResult {
    pub found: bool,
    pub value: Bytes,
    pub success: bool,
}

/// Why a command was refused before it entered the protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The request carried no operation.
    #[error("request has no operation")]
    Missing,
    /// The key exceeds [`KEY_BYTES_MAX`].
    #[error("key is {0} bytes; at most {KEY_BYTES_MAX} are allowed")]
    KeyTooLarge(usize),
    /// A value exceeds [`VALUE_BYTES_MAX`].
    #[error("value is {0} bytes; at most {VALUE_BYTES_MAX} are allowed")]
    ValueTooLarge(usize),
    /// Request numbers start at 1.
    #[error("request_id must be at least 1")]
    ZeroRequestId,
    /// A session expiry from a peer with a client's request id, or a client request with
    /// request 0: one is a replica's, the other a client's, never mixed.
    #[error("a session expiry must carry request 0, and only a session expiry may")]
    MisplacedExpiry,
    /// A client request with the client id of membership changes.
    #[error("client_id 18446744073709551615 is reserved (membership changes)")]
    ReservedClient,
    /// A membership change out of bounds.
    #[error("membership change: {0}")]
    Change(ChangeError),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get(k: &str) -> Op {
        Op::Get {
            key: Bytes::copy_from_slice(k.as_bytes()),
        }
    }
    fn put(k: &str) -> Op {
        Op::Put {
            key: Bytes::copy_from_slice(k.as_bytes()),
            value: Bytes::from_static(b"v"),
        }
    }
    fn del(k: &str) -> Op {
        Op::Delete {
            key: Bytes::copy_from_slice(k.as_bytes()),
        }
    }
    fn cas(k: &str) -> Op {
        Op::Cas {
            key: Bytes::copy_from_slice(k.as_bytes()),
            expected: None,
            new: Bytes::from_static(b"n"),
        }
    }

    #[test]
    fn interference_table() {
        let cases = [
            (get("a"), get("a"), false),
            (get("a"), put("a"), true),
            (put("a"), get("a"), true),
            (get("a"), del("a"), true),
            (get("a"), cas("a"), true),
            (put("a"), put("a"), true),
            (put("a"), put("b"), false),
            (cas("a"), del("b"), false),
            (del("a"), cas("a"), true),
            (expire(), put("a"), false),
            (expire(), expire(), false),
        ];
        for (a, b, want) in cases {
            assert_eq!(ops_interfere(&a, &b), want, "{a:?} vs {b:?}");
        }
        // An expiry interferes with everything of its session, nothing else.
        let own = Command::new(ClientId(1), RequestId(4), get("a"));
        let other = Command::new(ClientId(2), RequestId(4), put("a"));
        assert!(interferes(&Command::expire(ClientId(1), 5), &own));
        assert!(!interferes(&Command::expire(ClientId(1), 5), &other));
    }

    fn expire() -> Op {
        Op::Expire { idle_since_ms: 7 }
    }

    #[test]
    fn limits() {
        let big = Bytes::from(vec![0u8; KEY_BYTES_MAX + 1]);
        assert_eq!(
            Op::Get { key: big.clone() }.validate(),
            Err(CommandError::KeyTooLarge(KEY_BYTES_MAX + 1))
        );
        let huge = Bytes::from(vec![0u8; VALUE_BYTES_MAX + 1]);
        assert_eq!(
            Op::Put {
                key: Bytes::from_static(b"k"),
                value: huge
            }
            .validate(),
            Err(CommandError::ValueTooLarge(VALUE_BYTES_MAX + 1))
        );
        assert!(put("k").validate().is_ok());
    }
}
