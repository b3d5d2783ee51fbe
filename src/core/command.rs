//! Key/value commands, their results, and which commands interfere.

use bytes::Bytes;

use crate::core::ids::{ClientId, RequestId};

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
}

impl Op {
    /// The key the operation touches.
    pub fn key(&self) -> &Bytes {
        match self {
            Op::Get { key } | Op::Put { key, .. } | Op::Delete { key } | Op::Cas { key, .. } => key,
        }
    }

    /// Whether the operation may change the state. GETs commute with each other; everything
    /// else on the same key interferes with everything on that key.
    pub fn is_write(&self) -> bool {
        !matches!(self, Op::Get { .. })
    }

    /// Key and value bytes the operation carries.
    pub fn size_bytes(&self) -> usize {
        self.key().len()
            + match self {
                Op::Get { .. } | Op::Delete { .. } => 0,
                Op::Put { value, .. } => value.len(),
                Op::Cas { expected, new, .. } => {
                    new.len() + expected.as_ref().map_or(0, |e| e.len())
                }
            }
    }

    /// Checks the limits on keys and values.
    pub fn validate(&self) -> Result<(), CommandError> {
        if self.key().len() > KEY_BYTES_MAX {
            return Err(CommandError::KeyTooLarge(self.key().len()));
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

/// Whether two operations interfere: they touch the same key and at least one may write.
pub fn ops_interfere(a: &Op, b: &Op) -> bool {
    (a.is_write() || b.is_write()) && a.key() == b.key()
}

/// The one interference predicate between commands, used for dependencies (`deps`) and checked
/// by the tests: their operations interfere, or they belong to the same client session (so that
/// a session's requests execute in one order everywhere, as exactly-once needs).
pub fn interferes(a: &Command, b: &Command) -> bool {
    a.client == b.client || ops_interfere(&a.op, &b.op)
}

/// A client's command as replicated: who asked, which request, what to do.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Command {
    pub client: ClientId,
    pub request: RequestId,
    pub op: Op,
}

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
        ];
        for (a, b, want) in cases {
            assert_eq!(ops_interfere(&a, &b), want, "{a:?} vs {b:?}");
        }
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
