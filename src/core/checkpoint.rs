//! Checkpoints: the state that replaces the instances dropped from the log.
//!
//! A checkpoint holds the key/value state (with the exactly-once table) produced by executing
//! every instance below `gc_prefix` (per row) and every instance in `executed_above`, the
//! dependency index (which still names dropped instances: a dependency on one of them counts as
//! executed), and the next slot of the replica's own row. With it, the log needs to keep only
//! the instances not dropped yet.

use bytes::Bytes;

use crate::core::command::OpResult;
use crate::core::deps::{ConflictIndex, ConflictKey};
use crate::core::ids::{ClientId, InstanceId, ReplicaId, RequestId, SLOT_LIMIT};
use crate::core::kv::{KvStore, Session};
use crate::core::wire::WireError;
use crate::proto;

/// A replica's checkpoint (see the module doc).
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub kv: KvStore,
    pub index: ConflictIndex,
    pub gc_prefix: Vec<u64>,
    pub executed_above: Vec<InstanceId>,
    pub next_slot: u64,
}

impl Checkpoint {
    /// The stored form (an encoded `proto::Checkpoint`).
    pub fn encode(&self) -> Vec<u8> {
        encode(
            &self.kv,
            &self.index,
            &self.gc_prefix,
            &self.executed_above,
            self.next_slot,
        )
    }

    /// Decodes and validates the stored form for a cluster of `n` replicas.
    pub fn decode(bytes: &[u8], n: usize) -> Result<Checkpoint, WireError> {
        use prost::Message as _;
        Checkpoint::from_proto(proto::Checkpoint::decode(bytes)?, n)
    }

    /// Converts and validates the stored form for a cluster of `n` replicas.
    fn from_proto(p: proto::Checkpoint, n: usize) -> Result<Checkpoint, WireError> {
        if p.gc_prefix.len() != n {
            return Err(WireError::Missing("gc_prefix for every replica"));
        }
        // Prefixes and next slots are one past a slot; no slot reaches `SLOT_LIMIT`.
        if p.gc_prefix.iter().any(|g| *g > SLOT_LIMIT) || p.next_slot > SLOT_LIMIT {
            return Err(WireError::Impossible("a prefix beyond any row"));
        }
        let minus_one = |v: u64| v.checked_sub(1);
        let mut index = Vec::with_capacity(p.index.len());
        for e in p.index {
            let key = match e.key.ok_or(WireError::Missing("index key"))? {
                proto::index_entry::Key::DataKey(b) => ConflictKey::Key(Bytes::copy_from_slice(&b)),
                proto::index_entry::Key::Session(c) => ConflictKey::Session(ClientId(c)),
            };
            if e.any_plus_one.len() != n || e.write_plus_one.len() != n {
                return Err(WireError::Missing("index rows for every replica"));
            }
            if e.any_plus_one
                .iter()
                .chain(&e.write_plus_one)
                .any(|s| *s > SLOT_LIMIT)
            {
                return Err(WireError::Impossible("an index slot beyond any row"));
            }
            let rows = e
                .any_plus_one
                .iter()
                .zip(&e.write_plus_one)
                .map(|(a, w)| (minus_one(*a), minus_one(*w)))
                .collect();
            index.push((key, rows));
        }
        let mut executed_above = Vec::with_capacity(p.executed_above.len());
        for id in p.executed_above {
            let replica = replica_of(id.replica, n)?;
            if id.slot >= SLOT_LIMIT {
                return Err(WireError::Impossible("a slot beyond any row"));
            }
            executed_above.push(InstanceId::new(replica, id.slot));
        }
        let mut sessions = Vec::with_capacity(p.sessions.len());
        for s in p.sessions {
            let r = s.result.unwrap_or_default();
            // Missing fields of an older checkpoint read as 0: idle since the epoch (expired
            // at the next expiry proposed for it), led by replica 0.
            let leader = replica_of(s.leader, n)?;
            // An older checkpoint kept every value whole; `Session::new` applies today's bound,
            // alike on every replica that restores it.
            let mut session = Session::new(
                RequestId(s.request_id),
                s.fingerprint,
                OpResult {
                    found: r.found,
                    value: Bytes::copy_from_slice(&r.value),
                    success: r.success,
                },
                s.last_time_ms,
                leader,
            );
            if s.value_dropped {
                session.value_kept = false;
                session.result.value = Bytes::new();
            }
            sessions.push((ClientId(s.client_id), session));
        }
        let entries = p.entries.into_iter().map(|e| {
            (
                Bytes::copy_from_slice(&e.key),
                Bytes::copy_from_slice(&e.value),
            )
        });
        Ok(Checkpoint {
            kv: KvStore::import(entries, sessions, p.executed, p.refused_expired),
            index: ConflictIndex::import(n, index),
            gc_prefix: p.gc_prefix,
            executed_above,
            next_slot: p.next_slot,
        })
    }
}

/// Encodes a checkpoint straight from the live state, field by field into one buffer, without
/// copying the key/value map or the index first: a checkpoint of 100,000 keys then costs one
/// large buffer (which the allocator hands back to the system when freed) instead of hundreds of
/// thousands of small allocations that fragment the heap and keep the process's memory growing.
pub fn encode(
    kv: &KvStore,
    index: &ConflictIndex,
    gc_prefix: &[u64],
    executed_above: &[InstanceId],
    next_slot: u64,
) -> Vec<u8> {
    use prost::encoding::{message, uint64};
    let (entries, sessions, executed, refused_expired) = kv.export();
    let mut buf = Vec::with_capacity(64 * (kv.len() + index.len()) + 1024);
    for (k, v) in entries {
        let pair = proto::KvPair {
            key: k.clone(),
            value: v.clone(),
        };
        message::encode(1, &pair, &mut buf);
    }
    for (c, session) in sessions {
        let entry = proto::SessionEntry {
            client_id: c.0,
            request_id: session.request.0,
            result: Some(crate::core::wire::result_to_proto(&session.result)),
            fingerprint: session.fingerprint,
            last_time_ms: session.last_time_ms,
            leader: session.leader.0,
            value_dropped: !session.value_kept,
        };
        message::encode(2, &entry, &mut buf);
    }
    // One entry reused for every key: its two vectors keep their allocation.
    let mut entry = proto::IndexEntry::default();
    for (k, rows) in index.export() {
        entry.key = Some(match k {
            ConflictKey::Key(b) => proto::index_entry::Key::DataKey(b.clone()),
            ConflictKey::Session(c) => proto::index_entry::Key::Session(c.0),
        });
        entry.any_plus_one.clear();
        entry.write_plus_one.clear();
        for (any, write) in rows {
            entry.any_plus_one.push(any.map_or(0, |s| s + 1));
            entry.write_plus_one.push(write.map_or(0, |s| s + 1));
        }
        message::encode(3, &entry, &mut buf);
    }
    uint64::encode_packed(4, gc_prefix, &mut buf);
    for id in executed_above {
        let id = proto::InstanceId {
            replica: id.replica.0,
            slot: id.slot,
        };
        message::encode(5, &id, &mut buf);
    }
    uint64::encode(6, &next_slot, &mut buf);
    uint64::encode(7, &executed, &mut buf);
    uint64::encode(8, &refused_expired, &mut buf);
    buf
}

/// A replica id as stored: one of the checkpoint's `rows`.
fn replica_of(id: u32, rows: usize) -> Result<ReplicaId, WireError> {
    crate::core::wire::replica(id, rows)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::command::{Command, Op};
    use crate::core::kv::Applied;
    use prost::Message as _;

    /// The session table's fingerprints survive a checkpoint: a replica restored from one
    /// still refuses a reused request id like the others (the answer must not depend on which
    /// replica restored from what).
    #[test]
    fn session_fingerprints_survive_a_checkpoint() {
        let mut kv = KvStore::new();
        let get = Command::new(
            ClientId(3),
            RequestId(1),
            Op::Get {
                key: Bytes::from_static(b"k"),
            },
        );
        kv.apply(&get, ReplicaId(2));
        let cp = Checkpoint {
            kv,
            index: ConflictIndex::new(3),
            gc_prefix: vec![0; 3],
            executed_above: vec![],
            next_slot: 0,
        };
        let mut back = Checkpoint::decode(&cp.encode(), 3).expect("decode").kv;
        let reuse = Command {
            op: Op::Delete {
                key: Bytes::from_static(b"k"),
            },
            ..get.clone()
        };
        assert_eq!(back.apply(&reuse, ReplicaId(0)), Applied::Reused);
        assert!(matches!(
            back.apply(&get, ReplicaId(0)),
            Applied::Duplicate(_)
        ));
    }

    /// A session's time, leader and whether its value was kept survive a checkpoint (every
    /// replica must expire it alike, restored or not); a checkpoint written before sessions
    /// expired loads, its sessions idle since the epoch.
    #[test]
    fn session_times_survive_a_checkpoint_and_old_ones_load() {
        let mut kv = KvStore::new();
        let big = Bytes::from(vec![1u8; crate::core::limits::SESSION_RESULT_BYTES_MAX + 1]);
        let mut put = Command::new(
            ClientId(4),
            RequestId(1),
            Op::Put {
                key: Bytes::from_static(b"k"),
                value: big,
            },
        );
        put.time_ms = 1_000;
        kv.apply(&put, ReplicaId(1));
        let mut get = Command::new(
            ClientId(5),
            RequestId(1),
            Op::Get {
                key: Bytes::from_static(b"k"),
            },
        );
        get.time_ms = 2_000;
        kv.apply(&get, ReplicaId(2));
        let cp = Checkpoint {
            kv: kv.clone(),
            index: ConflictIndex::new(3),
            gc_prefix: vec![0; 3],
            executed_above: vec![],
            next_slot: 0,
        };
        let back = Checkpoint::decode(&cp.encode(), 3).expect("decode").kv;
        assert_eq!(back.sessions().digest(), kv.sessions().digest());
        let s = back.sessions().get(&ClientId(5)).expect("kept");
        assert_eq!(
            (s.last_time_ms, s.leader, s.value_kept),
            (2_000, ReplicaId(2), false)
        );
        // An older checkpoint: no time, no leader, the whole value.
        let old = proto::Checkpoint {
            gc_prefix: vec![0; 3],
            sessions: vec![proto::SessionEntry {
                client_id: 6,
                request_id: 3,
                result: Some(proto::OpResult {
                    found: true,
                    value: Bytes::from_static(b"small"),
                    success: true,
                }),
                fingerprint: 0,
                ..Default::default()
            }],
            ..Default::default()
        };
        let back = Checkpoint::decode(&old.encode_to_vec(), 3)
            .expect("decode")
            .kv;
        let s = back.sessions().get(&ClientId(6)).expect("loaded");
        assert_eq!(
            (s.last_time_ms, s.leader, s.value_kept),
            (0, ReplicaId(0), true)
        );
        assert_eq!(s.result.value, Bytes::from_static(b"small"));
    }

    /// Found by fuzzing (`storage`): a checkpoint claiming rows collected up to `u64::MAX`
    /// decoded, and replaying it overflowed the sum of the prefixes (a panic in debug builds, a
    /// wrong commit count in release ones). Prefixes, next slots and slots beyond any row are
    /// refused, so the data directory refuses to start.
    #[test]
    fn a_checkpoint_beyond_any_row_is_refused() {
        let ok = proto::Checkpoint {
            gc_prefix: vec![3, 0, SLOT_LIMIT],
            next_slot: 3,
            ..Default::default()
        };
        assert!(Checkpoint::decode(&ok.encode_to_vec(), 3).is_ok());
        let bad = [
            proto::Checkpoint {
                gc_prefix: vec![u64::MAX, u64::MAX, 0],
                ..Default::default()
            },
            proto::Checkpoint {
                gc_prefix: vec![0; 3],
                next_slot: u64::MAX,
                ..Default::default()
            },
            proto::Checkpoint {
                gc_prefix: vec![0; 3],
                executed_above: vec![proto::InstanceId {
                    replica: 1,
                    slot: SLOT_LIMIT,
                }],
                ..Default::default()
            },
        ];
        for c in bad {
            assert!(matches!(
                Checkpoint::decode(&c.encode_to_vec(), 3),
                Err(WireError::Impossible(_))
            ));
        }
    }
}
