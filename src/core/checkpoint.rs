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
use crate::core::epoch::{Change, Configuration, Epoch, Member};
use crate::core::ids::{ClientId, InstanceId, ReplicaId, RequestId, SLOT_LIMIT};
use crate::core::kv::{KvStore, Session};
use crate::core::limits::MEMBERS_EVER_MAX;
use crate::core::wire::WireError;
use crate::proto;

/// The configurations a checkpoint's state went through (membership changes it executed):
/// a restore or a snapshot install gives them back, since the changes are collected with the
/// instances that carried them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Configurations {
    /// Every epoch's configuration, epoch 0 first; empty: epoch 0 only (`Options::n`'s ids).
    pub epochs: Vec<Configuration>,
    /// Every id that is or was a member.
    pub ever: Vec<ReplicaId>,
    /// The addresses of the members changes added.
    pub addresses: Vec<Member>,
}

/// A replica's checkpoint (see the module doc).
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub configurations: Configurations,
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
            &self.configurations,
        )
    }

    /// Decodes and validates the stored form for a replica whose configuration needs `rows`
    /// rows (epoch 0's `n` today). A checkpoint taken after a configuration added ids has more
    /// rows, and restoring it grows the tables to them (`Checkpoint::rows`); one with fewer
    /// cannot hold this replica's epoch and is refused (`WireError::TooFewRows`).
    pub fn decode(bytes: &[u8], rows: usize) -> Result<Checkpoint, WireError> {
        use prost::Message as _;
        Checkpoint::from_proto(proto::Checkpoint::decode(bytes)?, rows)
    }

    /// How many rows the checkpoint holds (one past the highest id it knew).
    pub fn rows(&self) -> usize {
        self.gc_prefix.len()
    }

    /// Converts and validates the stored form (see [`Checkpoint::decode`]). Every per-row
    /// vector in it has the checkpoint's own row count, the length of `gc_prefix`.
    fn from_proto(p: proto::Checkpoint, needed: usize) -> Result<Checkpoint, WireError> {
        let n = p.gc_prefix.len();
        if n < needed {
            return Err(WireError::TooFewRows { rows: n, needed });
        }
        if n > MEMBERS_EVER_MAX {
            return Err(WireError::ImpossibleReplica(
                u32::try_from(n - 1).unwrap_or(u32::MAX),
            ));
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
                proto::index_entry::Key::Cluster(_) => ConflictKey::Cluster,
            };
            // A key recorded before a configuration added ids keeps its shorter table
            // ("nothing in the new rows", see `ConflictIndex::grow`); never longer than the
            // checkpoint's rows.
            if e.any_plus_one.len() != e.write_plus_one.len() || e.any_plus_one.len() > n {
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
        let mut epochs = Vec::with_capacity(p.epochs.len());
        for (e, members) in p.epochs.into_iter().enumerate() {
            let members = members
                .members
                .into_iter()
                .map(|m| replica_of(m, n))
                .collect::<Result<Vec<_>, _>>()?;
            let c = Configuration::new(Epoch(e as u64), members)
                .map_err(|_| WireError::Impossible("an epoch that is no configuration"))?;
            epochs.push(c);
        }
        let ever = p
            .members_ever
            .into_iter()
            .map(|m| replica_of(m, n))
            .collect::<Result<Vec<_>, _>>()?;
        let mut addresses = Vec::with_capacity(p.addresses.len());
        for m in p.addresses {
            let m = Member {
                id: replica_of(m.id, n)?,
                peer_addr: m.peer_addr,
                client_addr: m.client_addr,
            };
            Change::Add(m.clone())
                .validate()
                .map_err(|_| WireError::Impossible("an address beyond its bound"))?;
            addresses.push(m);
        }
        Ok(Checkpoint {
            configurations: Configurations {
                epochs,
                ever,
                addresses,
            },
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
    configurations: &Configurations,
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
            ConflictKey::Cluster => proto::index_entry::Key::Cluster(true),
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
    for c in &configurations.epochs {
        let epoch = proto::CheckpointEpoch {
            members: c.members().iter().map(|m| m.0).collect(),
        };
        message::encode(9, &epoch, &mut buf);
    }
    let ever: Vec<u32> = configurations.ever.iter().map(|m| m.0).collect();
    prost::encoding::uint32::encode_packed(10, &ever, &mut buf);
    for m in &configurations.addresses {
        let m = proto::ReconfigureMember {
            id: m.id.0,
            peer_addr: m.peer_addr.clone(),
            client_addr: m.client_addr.clone(),
        };
        message::encode(11, &m, &mut buf);
    }
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
    use crate::core::deps::Deps;
    use crate::core::epoch::{Configuration, Epoch};
    use crate::core::kv::Applied;
    use crate::core::replica::{Options, Replica};
    use prost::Message as _;
    use std::sync::Arc;
    use std::time::Duration;

    fn put(client: u64, key: &'static str) -> Command {
        Command::new(
            ClientId(client),
            RequestId(1),
            Op::Put {
                key: Bytes::from_static(key.as_bytes()),
                value: Bytes::from_static(b"v"),
            },
        )
    }

    /// Delivers every message among `rs` (replicas 0..rs.len()) until quiet; messages to ids
    /// not simulated are lost.
    fn settle(rs: &mut [Replica], now: Duration) {
        for _ in 0..1000 {
            let mut sent = Vec::new();
            for r in rs.iter_mut() {
                r.flush(now);
                let from = r.id();
                for out in r.take_ready().messages {
                    for to in out.to {
                        sent.push((from, to, out.msg.clone()));
                    }
                }
            }
            if sent.is_empty() {
                return;
            }
            for (from, to, msg) in sent {
                if let Some(r) = rs.get_mut(to.index()) {
                    r.handle(now, from, msg);
                }
            }
        }
        panic!("messages kept flowing");
    }

    /// A checkpoint taken after a configuration added id 3 (a snapshot a new or lagging
    /// replica may be sent) restores into a fresh replica of epoch 0's three: its tables grow
    /// to four rows, it holds row 3's instance, and its state is the one checkpointed.
    #[test]
    fn a_checkpoint_with_an_added_row_restores_into_a_fresh_replica() {
        let opts = |i: u32| {
            let mut o = Options::new(ReplicaId(i), 3);
            o.gc_executed = true;
            o
        };
        let mut rs: Vec<Replica> = (0..3).map(|i| Replica::new(opts(i))).collect();
        for k in 0..6u64 {
            rs[(k % 3) as usize]
                .propose(k, put(k + 1, ["a", "b"][k as usize % 2]))
                .expect("room");
            settle(&mut rs, Duration::ZERO);
        }
        for round in 1..=3u64 {
            let t = Duration::from_secs(round);
            rs.iter_mut().for_each(|r| r.tick(t));
            settle(&mut rs, t);
        }
        assert!(rs[0].collected() > 0, "some instances were collected");
        let e1 = Configuration::new(Epoch(1), (0..4).map(ReplicaId).collect()).expect("valid");
        let added = InstanceId::new(ReplicaId(3), 0);
        let now = Duration::from_secs(4);
        for r in rs.iter_mut() {
            assert!(r.adopt_configuration(e1.clone()));
            // Replica 3 (not simulated) led 3.0 in epoch 1 and committed it.
            r.handle(
                now,
                ReplicaId(3),
                crate::core::message::Message::Commit {
                    instance: added,
                    epoch: Epoch(1),
                    ballot: crate::core::ids::Ballot::initial(ReplicaId(3)),
                    commands: Arc::new(vec![put(40, "a")]),
                    deps: Deps::new(),
                },
            );
        }
        settle(&mut rs, now);
        assert_eq!(rs[0].kv().executed(), 7, "row 3's write executed");
        let (encoded, live) = rs[0].checkpoint();
        let cp = Checkpoint::decode(&encoded, 3).expect("more rows than epoch 0 needs");
        assert_eq!(cp.rows(), 4);
        let mut back = Replica::restore_from(opts(0), now, Some(cp), live);
        let _ = back.take_ready();
        assert_eq!(back.rows(), 4, "the tables grew to the checkpoint's rows");
        assert!(back.instance(added).is_some(), "row 3's instance is kept");
        assert_eq!(back.kv().digest(), rs[0].kv().digest());
        assert_eq!(back.kv().executed(), 7, "nothing executed twice");
        back.check_invariants().expect("invariants");
        // Restored from the checkpoint alone too (the decided instances beside it dropped).
        let cp = Checkpoint::decode(&encoded, 3).expect("decodes");
        let bare = Replica::restore_from(opts(0), now, Some(cp), Vec::new());
        assert_eq!(bare.rows(), 4);
        bare.check_invariants().expect("invariants");
    }

    /// A checkpoint with fewer rows than the replica's configuration needs is refused, naming
    /// both counts.
    #[test]
    fn a_checkpoint_with_fewer_rows_than_the_epoch_is_refused() {
        let two = proto::Checkpoint {
            gc_prefix: vec![0; 2],
            ..Default::default()
        };
        let err = Checkpoint::decode(&two.encode_to_vec(), 3).expect_err("too few rows");
        assert!(matches!(err, WireError::TooFewRows { rows: 2, needed: 3 }));
        assert!(
            err.to_string().contains("2 rows, fewer than the 3"),
            "{err}"
        );
        let too_many = proto::Checkpoint {
            gc_prefix: vec![0; MEMBERS_EVER_MAX + 1],
            ..Default::default()
        };
        assert!(matches!(
            Checkpoint::decode(&too_many.encode_to_vec(), 3),
            Err(WireError::ImpossibleReplica(_))
        ));
        // An index entry or a session leader of a row the checkpoint does not have.
        let mut ghost = proto::Checkpoint {
            gc_prefix: vec![0; 4],
            ..Default::default()
        };
        ghost.executed_above = vec![proto::InstanceId {
            replica: 4,
            slot: 0,
        }];
        assert!(matches!(
            Checkpoint::decode(&ghost.encode_to_vec(), 3),
            Err(WireError::UnknownReplica { id: 4, rows: 4 })
        ));
    }

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
            configurations: Default::default(),
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
            configurations: Default::default(),
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
