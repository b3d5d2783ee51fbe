//! Checkpoints: the state that replaces the instances dropped from the log.
//!
//! A checkpoint holds the key/value state (with the exactly-once table) produced by executing
//! every instance below `gc_prefix` (per row) and every instance in `executed_above`, the
//! dependency index (which still names dropped instances: a dependency on one of them counts as
//! executed), and the next slot of the replica's own row. With it, the log needs to keep only
//! the instances not dropped yet.

use bytes::Bytes;

use crate::command::OpResult;
use crate::deps::{ConflictIndex, ConflictKey};
use crate::ids::{ClientId, InstanceId, ReplicaId, RequestId};
use crate::kv::KvStore;
use crate::proto;
use crate::wire::WireError;

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
    /// Converts to the stored form.
    pub fn to_proto(&self) -> proto::Checkpoint {
        let (entries, sessions, executed) = self.kv.export();
        let plus_one = |v: Option<u64>| v.map_or(0, |s| s + 1);
        proto::Checkpoint {
            entries: entries
                .map(|(k, v)| proto::KvPair {
                    key: k.clone(),
                    value: v.clone(),
                })
                .collect(),
            sessions: sessions
                .map(|(c, (r, res))| proto::SessionEntry {
                    client_id: c.0,
                    request_id: r.0,
                    result: Some(crate::wire::result_to_proto(res)),
                })
                .collect(),
            index: self
                .index
                .export()
                .map(|(k, rows)| proto::IndexEntry {
                    key: Some(match k {
                        ConflictKey::Key(b) => proto::index_entry::Key::DataKey(b.clone()),
                        ConflictKey::Session(c) => proto::index_entry::Key::Session(c.0),
                    }),
                    any_plus_one: rows.iter().map(|(a, _)| plus_one(*a)).collect(),
                    write_plus_one: rows.iter().map(|(_, w)| plus_one(*w)).collect(),
                })
                .collect(),
            gc_prefix: self.gc_prefix.clone(),
            executed_above: self
                .executed_above
                .iter()
                .map(|id| proto::InstanceId {
                    replica: id.replica.0,
                    slot: id.slot,
                })
                .collect(),
            next_slot: self.next_slot,
            executed,
        }
    }

    /// Converts and validates the stored form for a cluster of `n` replicas.
    pub fn from_proto(p: proto::Checkpoint, n: usize) -> Result<Checkpoint, WireError> {
        if p.gc_prefix.len() != n {
            return Err(WireError::Missing("gc_prefix for every replica"));
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
            if id.replica as usize >= n {
                return Err(WireError::UnknownReplica(id.replica));
            }
            executed_above.push(InstanceId::new(ReplicaId(id.replica), id.slot));
        }
        let sessions = p.sessions.into_iter().map(|s| {
            let r = s.result.unwrap_or_default();
            (
                ClientId(s.client_id),
                (
                    RequestId(s.request_id),
                    OpResult {
                        found: r.found,
                        value: Bytes::copy_from_slice(&r.value),
                        success: r.success,
                    },
                ),
            )
        });
        let entries = p.entries.into_iter().map(|e| {
            (
                Bytes::copy_from_slice(&e.key),
                Bytes::copy_from_slice(&e.value),
            )
        });
        Ok(Checkpoint {
            kv: KvStore::import(entries, sessions, p.executed),
            index: ConflictIndex::import(n, index),
            gc_prefix: p.gc_prefix,
            executed_above,
            next_slot: p.next_slot,
        })
    }
}
