//! What a replica keeps about itself and its cluster beside the log: its incarnation, its
//! peers' incarnations, its membership, its id and the cluster size, as one record
//! (`proto::Metadata` in `<data-dir>/metadata`: a magic, then one CRC32C frame of
//! `storage`), read once at start and replaced whole, atomically, by each change. Earlier
//! versions kept these in three text files (`incarnation`, `peers`, `membership`): they are
//! still read, and replaced by the record at the next change.

use std::path::{Path, PathBuf};

use prost::Message as _;

use crate::core::epoch::{self, Configuration, Epoch};
use crate::core::ids::{Ballot, Incarnation, ReplicaId};
use crate::core::limits::MEMBERS_EVER_MAX;
use crate::core::membership::Membership;
use crate::core::replica::{Decided, Seal};
use crate::proto;
use crate::server::members::{Member, Members};
use crate::server::storage::{frame, private_dir, replace_file, sync_dir, unframe, StorageError};

/// The file holding the [`Metadata`] record.
pub(crate) const METADATA_FILE: &str = "metadata";
/// The metadata file starts with this, then one frame (see [`frame`]) of `proto::Metadata`.
const METADATA_MAGIC: [u8; 8] = *b"EPXMETA\x01";
/// The layout of `proto::Metadata` this version writes and reads.
const METADATA_FORMAT: u32 = 1;
/// Largest metadata record read back: a few numbers per replica.
const METADATA_BYTES_MAX: usize = 64 * 1024;
/// The text files that held the metadata before the record existed: read when there is no
/// record, removed once the record that replaces them is durable.
pub(crate) const LEGACY_INCARNATION_FILE: &str = "incarnation";
pub(crate) const LEGACY_PEERS_FILE: &str = "peers";
pub(crate) const LEGACY_MEMBERSHIP_FILE: &str = "membership";

/// What a replica keeps about itself and its cluster beside the log, as one record
/// (`proto::Metadata` in `dir/metadata`), read once at start and replaced whole, atomically, by
/// each change. One record rather than a file per item: a change is one write, and a crash
/// cannot leave half of a new directory's state (an incarnation without its membership read as
/// a replica that never lost its data).
#[derive(Debug)]
pub struct Metadata {
    dir: PathBuf,
    me: ReplicaId,
    /// This replica's incarnation: drawn at random (nonzero) when the data directory is new.
    /// Peers remember it (see `Node::hear`): a replica that lost its data directory comes back
    /// as another incarnation, which they refuse.
    pub incarnation: Incarnation,
    /// Each peer's incarnation as first seen, by replica id.
    pub peers: Vec<Option<Incarnation>>,
    pub membership: Membership,
    /// The epoch of the configuration this replica acts in (0: config.json's replicas).
    pub epoch: u64,
    /// The members of `epoch` with their addresses (empty for epoch 0: config.json's).
    pub members: Vec<Member>,
    /// Every id that is or was a member (empty in earlier records: `members`' ids then).
    pub ever: Vec<ReplicaId>,
    /// The members changes added, with their addresses (the core's `Decided::members`).
    pub added: Vec<Member>,
    /// The seals of the epochs this replica left (`replica::Ready::sealed`).
    pub seals: Vec<Seal>,
    /// The text files of an earlier version are still there: removed after the next write.
    legacy: bool,
}

impl Metadata {
    /// Reads the metadata of replica `me` of a cluster of `n` from `dir`: the record, or the
    /// text files of an earlier version (rewritten as a record by the next change), or, in a
    /// new data directory, a new incarnation that is joining, made durable before this returns.
    /// A damaged record, or one of another replica or cluster size, is an error: never a
    /// silent fresh start.
    pub fn open(dir: &Path, me: ReplicaId, n: usize) -> Result<Metadata, StorageError> {
        let path = dir.join(METADATA_FILE);
        let legacy = LEGACY_FILES.iter().any(|f| dir.join(f).exists());
        match std::fs::read(&path) {
            Ok(bytes) => {
                let mut m = Metadata::decode(&bytes, dir, me, n).map_err(|reason| {
                    StorageError::Corrupt {
                        path: path.clone(),
                        offset: 0,
                        reason,
                    }
                })?;
                // A crash after the record was durable, before the old files went.
                m.legacy = legacy;
                m.remove_legacy();
                Ok(m)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(incarnation) = legacy_incarnation(dir)? {
                    return Ok(Metadata {
                        dir: dir.to_path_buf(),
                        me,
                        incarnation,
                        peers: legacy_peers(dir, n)?,
                        // None: a data directory from before joins existed, which never lost
                        // its data.
                        membership: legacy_membership(dir, n)?.unwrap_or(Membership::Joined {
                            horizons: vec![0; n],
                        }),
                        epoch: 0,
                        members: Vec::new(),
                        ever: Vec::new(),
                        added: Vec::new(),
                        seals: Vec::new(),
                        legacy,
                    });
                }
                let mut m = Metadata {
                    dir: dir.to_path_buf(),
                    me,
                    incarnation: Incarnation::new(rand::random::<u64>().max(1))
                        .expect("max(1) is never zero"),
                    peers: vec![None; n],
                    membership: Membership::Joining,
                    epoch: 0,
                    members: Vec::new(),
                    ever: Vec::new(),
                    added: Vec::new(),
                    seals: Vec::new(),
                    legacy,
                };
                m.store()?;
                Ok(m)
            }
            Err(source) => Err(StorageError::Io { path, source }),
        }
    }

    /// Makes the peers' incarnations durable.
    /// The record never covers fewer rows than it did (the node's table may be shorter than
    /// rows a configuration stored here added: see [`Metadata::cover_rows`]).
    pub fn store_peers(&mut self, peers: &[Option<Incarnation>]) -> Result<(), StorageError> {
        let rows = self.peers.len().max(peers.len());
        self.peers = peers.to_vec();
        self.peers.resize(rows, None);
        self.store()
    }

    /// Makes the membership durable.
    pub fn store_membership(&mut self, membership: &Membership) -> Result<(), StorageError> {
        if let Membership::Joined { horizons } = membership {
            self.cover_rows(horizons.len());
        }
        self.membership = membership.clone();
        self.store()
    }

    /// Makes the record cover `rows` rows (its cluster size: what the log and checkpoint are
    /// read against at the next start). A configuration that added ids is stored before any
    /// record of their rows can be (an added replica adopts it before it joins; a member
    /// executes the change before it leads or learns their instances), so the log never holds
    /// a row the record does not cover.
    fn cover_rows(&mut self, rows: usize) {
        let rows = rows.min(MEMBERS_EVER_MAX);
        if self.peers.len() < rows {
            self.peers.resize(rows, None);
        }
        if let Membership::Joined { horizons } = &mut self.membership {
            if horizons.len() < rows {
                horizons.resize(rows, 0);
            }
        }
    }

    /// One past the highest id of `members`.
    fn rows_of(members: &[Member]) -> usize {
        members.iter().map(|m| m.id.index() + 1).max().unwrap_or(0)
    }

    /// The configuration recorded here, if one past epoch 0 was (see `members::Members`).
    pub fn configuration(&self) -> Option<Members> {
        if self.epoch == 0 {
            return None;
        }
        Members::new(self.epoch, self.members.clone()).ok()
    }

    /// Makes a decided configuration durable: written before the replica acts in its epoch.
    pub fn store_configuration(&mut self, members: &Members) -> Result<(), StorageError> {
        self.epoch = members.epoch();
        self.members = members.members().to_vec();
        self.cover_rows(Self::rows_of(members.members()));
        self.store()
    }

    /// Makes what a `Ready` of the core decided about epochs durable, in one write: the
    /// configuration a change made (`members`: all of its members with their addresses; and
    /// the core's record of it), and the seals of the epochs left. Written before anything
    /// else of that `Ready` is carried out.
    pub fn store_epochs(
        &mut self,
        decided: Option<(&Members, &Decided)>,
        seals: Option<&[Seal]>,
    ) -> Result<(), StorageError> {
        if let Some((members, decided)) = decided {
            self.epoch = members.epoch();
            self.members = members.members().to_vec();
            self.ever = decided.ever.clone();
            self.added = decided
                .members
                .iter()
                .filter_map(|m| {
                    Members::member_from_parts(m.id.0, &m.peer_addr, &m.client_addr).ok()
                })
                .collect();
            let ever = decided.ever.iter().map(|id| id.index() + 1).max();
            self.cover_rows(Self::rows_of(members.members()).max(ever.unwrap_or(0)));
        }
        if let Some(seals) = seals {
            self.seals = seals.to_vec();
        }
        self.store()
    }

    /// The core's record of the configuration kept here (`node::Restored::configuration`), if
    /// one past epoch 0 was; an earlier record without the ids ever members gives its
    /// members' ids (the core adds what its log and checkpoint know).
    pub fn decided(&self) -> Option<Decided> {
        if self.epoch == 0 {
            return None;
        }
        let ids: Vec<ReplicaId> = self.members.iter().map(|m| m.id).collect();
        let configuration = Configuration::new(Epoch(self.epoch), ids.clone()).ok()?;
        let mut ever = self.ever.clone();
        ever.extend(ids);
        ever.sort();
        ever.dedup();
        Some(Decided {
            configuration,
            members: self
                .added
                .iter()
                .map(|m| epoch::Member {
                    id: m.id,
                    peer_addr: m.peer_addr.to_string(),
                    client_addr: m.client_addr.to_string(),
                })
                .collect(),
            ever,
        })
    }

    /// Replaces the record atomically, then removes the text files of an earlier version.
    fn store(&mut self) -> Result<(), StorageError> {
        private_dir(&self.dir)?;
        let mut bytes = METADATA_MAGIC.to_vec();
        frame(&mut bytes, &[], &self.to_proto().encode_to_vec());
        replace_file(&self.dir, METADATA_FILE, &bytes)?;
        self.remove_legacy();
        Ok(())
    }

    /// Removes the text files of an earlier version (once the record is durable).
    fn remove_legacy(&mut self) {
        if !self.legacy {
            return;
        }
        for name in LEGACY_FILES {
            let _ = std::fs::remove_file(self.dir.join(name));
        }
        sync_dir(&self.dir);
        self.legacy = false;
    }

    fn to_proto(&self) -> proto::Metadata {
        use proto::metadata::{Joined, Joining, Membership as Kind};
        proto::Metadata {
            format: METADATA_FORMAT,
            replica: self.me.0,
            cluster_size: self.peers.len() as u32,
            incarnation: self.incarnation.get(),
            peer_incarnations: self
                .peers
                .iter()
                .map(|p| p.map_or(0, Incarnation::get))
                .collect(),
            membership: Some(match &self.membership {
                Membership::Joining => Kind::Joining(Joining {}),
                Membership::Joined { horizons } => Kind::Joined(Joined {
                    horizons: horizons.clone(),
                }),
            }),
            epoch: self.epoch,
            members: self.members.iter().map(member_to_proto).collect(),
            ever: self.ever.iter().map(|id| id.0).collect(),
            added: self.added.iter().map(member_to_proto).collect(),
            seals: self.seals.iter().map(seal_to_proto).collect(),
        }
    }

    /// Reads a metadata file's bytes; a damaged or foreign record is the reason why not.
    fn decode(bytes: &[u8], dir: &Path, me: ReplicaId, n: usize) -> Result<Metadata, String> {
        use proto::metadata::Membership as Kind;
        let framed = bytes
            .strip_prefix(&METADATA_MAGIC)
            .ok_or("does not start with the metadata magic")?;
        let payload = match unframe(framed, &[], METADATA_BYTES_MAX) {
            Ok((payload, [])) => payload,
            Ok((_, rest)) => return Err(format!("{} bytes after the record", rest.len())),
            Err(e) => return Err(format!("damaged record: {e}")),
        };
        let p = proto::Metadata::decode(payload).map_err(|e| format!("undecodable: {e}"))?;
        if p.format != METADATA_FORMAT {
            return Err(format!(
                "record format {} (this version reads {METADATA_FORMAT})",
                p.format
            ));
        }
        if p.replica != me.0 {
            return Err(format!(
                "the data directory of replica {}, not of replica {}",
                p.replica, me.0
            ));
        }
        if p.cluster_size as usize != n || p.peer_incarnations.len() != n {
            return Err(format!(
                "a cluster of {} replicas ({} peer incarnations), not {n}",
                p.cluster_size,
                p.peer_incarnations.len()
            ));
        }
        let membership = match p.membership.ok_or("no membership")? {
            Kind::Joining(_) => Membership::Joining,
            Kind::Joined(j) if j.horizons.len() == n => Membership::Joined {
                horizons: j.horizons,
            },
            Kind::Joined(j) => return Err(format!("{} horizons, not {n}", j.horizons.len())),
        };
        let parse = |list: &[proto::metadata::Member]| {
            list.iter()
                .map(|m| Members::member_from_parts(m.id, &m.peer_addr, &m.client_addr))
                .collect::<Result<Vec<Member>, _>>()
                .map_err(|e| e.to_string())
        };
        let members = parse(&p.members)?;
        let added = parse(&p.added)?;
        if p.epoch > 0 {
            Members::new(p.epoch, members.clone()).map_err(|e| e.to_string())?;
        }
        Ok(Metadata {
            dir: dir.to_path_buf(),
            me,
            incarnation: Incarnation::new(p.incarnation).ok_or("incarnation 0")?,
            peers: p
                .peer_incarnations
                .into_iter()
                .map(Incarnation::new)
                .collect(),
            membership,
            epoch: p.epoch,
            members,
            ever: p.ever.into_iter().map(ReplicaId).collect(),
            added,
            seals: p.seals.into_iter().map(seal_from_proto).collect(),
            legacy: false,
        })
    }
}

fn member_to_proto(m: &Member) -> proto::metadata::Member {
    proto::metadata::Member {
        id: m.id.0,
        peer_addr: m.peer_addr.to_string(),
        client_addr: m.client_addr.to_string(),
    }
}

const LEGACY_FILES: [&str; 3] = [
    LEGACY_INCARNATION_FILE,
    LEGACY_PEERS_FILE,
    LEGACY_MEMBERSHIP_FILE,
];

/// Whether `dir` holds no replica state yet (no incarnation was ever drawn there): a replica
/// starting on it must join before it takes part (see `runtime`).
pub fn is_new(dir: &Path) -> bool {
    !dir.join(METADATA_FILE).exists() && !dir.join(LEGACY_INCARNATION_FILE).exists()
}

/// The cluster size the data in `dir` was written for, if it says: the metadata record's, or
/// the number of horizons in an earlier version's `membership` file. Read before the log
/// (whose records are checked against the size), so that a changed configuration is named as
/// such rather than as a corrupt log.
pub fn recorded_cluster_size(dir: &Path) -> Result<Option<usize>, StorageError> {
    Ok(recorded_size_and_epoch(dir)?.map(|(n, _)| n))
}

/// The cluster size the data in `dir` was written for (see [`recorded_cluster_size`]) and the
/// epoch of the configuration it recorded (0 for an earlier version's files): a size beyond
/// config.json's is that of a cluster whose decided configurations added ids.
pub fn recorded_size_and_epoch(dir: &Path) -> Result<Option<(usize, u64)>, StorageError> {
    let path = dir.join(METADATA_FILE);
    match std::fs::read(&path) {
        Ok(bytes) => {
            let corrupt = |reason: String| StorageError::Corrupt {
                path: path.clone(),
                offset: 0,
                reason,
            };
            let framed = bytes
                .strip_prefix(&METADATA_MAGIC)
                .ok_or_else(|| corrupt("does not start with the metadata magic".into()))?;
            let (payload, _) = unframe(framed, &[], METADATA_BYTES_MAX)
                .map_err(|e| corrupt(format!("damaged record: {e}")))?;
            let p = proto::Metadata::decode(payload)
                .map_err(|e| corrupt(format!("undecodable: {e}")))?;
            Ok(Some((p.cluster_size as usize, p.epoch)))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // An earlier version's membership file: `joined` and one horizon per replica.
            let Ok(text) = std::fs::read_to_string(dir.join(LEGACY_MEMBERSHIP_FILE)) else {
                return Ok(None); // none, or unreadable: `Metadata::open` says which
            };
            let mut words = text.split_whitespace();
            Ok((words.next() == Some("joined")).then(|| (words.count(), 0)))
        }
        Err(source) => Err(StorageError::Io { path, source }),
    }
}

/// An earlier version's `incarnation` file: one nonzero number.
fn legacy_incarnation(dir: &Path) -> Result<Option<Incarnation>, StorageError> {
    let path = dir.join(LEGACY_INCARNATION_FILE);
    match std::fs::read_to_string(&path) {
        Ok(text) => text
            .trim()
            .parse::<u64>()
            .ok()
            .and_then(Incarnation::new)
            .map(Some)
            .ok_or(StorageError::Corrupt {
                path,
                offset: 0,
                reason: "incarnation file does not hold a nonzero number".to_string(),
            }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StorageError::Io { path, source }),
    }
}

/// An earlier version's `membership` file: `joining`, or `joined` and the horizons; `None` if
/// there is none (a data directory from before joins existed).
fn legacy_membership(dir: &Path, n: usize) -> Result<Option<Membership>, StorageError> {
    let path = dir.join(LEGACY_MEMBERSHIP_FILE);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StorageError::Io { path, source }),
    };
    let corrupt = |reason: &str| StorageError::Corrupt {
        path: path.clone(),
        offset: 0,
        reason: reason.to_string(),
    };
    let mut words = text.split_whitespace();
    match words.next() {
        Some("joining") => Ok(Some(Membership::Joining)),
        Some("joined") => {
            let horizons = words
                .map(|w| w.parse::<u64>())
                .collect::<Result<Vec<u64>, _>>()
                .map_err(|_| corrupt("membership horizons are not numbers"))?;
            if horizons.len() != n {
                return Err(corrupt(
                    "membership holds horizons for another cluster size",
                ));
            }
            Ok(Some(Membership::Joined { horizons }))
        }
        _ => Err(corrupt(
            "membership file is neither `joining` nor `joined ...`",
        )),
    }
}

/// An earlier version's `peers` file: one `id incarnation` line per peer seen. Unreadable
/// lines are an error (the file was replaced whole, so damage is real corruption).
fn legacy_peers(dir: &Path, n: usize) -> Result<Vec<Option<Incarnation>>, StorageError> {
    let path = dir.join(LEGACY_PEERS_FILE);
    let mut known = vec![None; n];
    match std::fs::read_to_string(&path) {
        Ok(text) => {
            for line in text.lines().filter(|l| !l.trim().is_empty()) {
                let mut parts = line.split_whitespace();
                let parsed = (|| {
                    let id: usize = parts.next()?.parse().ok()?;
                    let inc = Incarnation::new(parts.next()?.parse().ok()?)?;
                    Some((id, inc))
                })();
                match parsed {
                    Some((id, inc)) if id < n => known[id] = Some(inc),
                    _ => {
                        return Err(StorageError::Corrupt {
                            path,
                            offset: 0,
                            reason: "peers file holds a line that is not `id incarnation`"
                                .to_string(),
                        })
                    }
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => return Err(StorageError::Io { path, source }),
    }
    Ok(known)
}

/// A seal as stored: its ends and the replica's acceptor state for the epoch's boundary.
fn seal_to_proto(s: &Seal) -> proto::metadata::Seal {
    let ballot = |b: Ballot| proto::Ballot {
        round: b.round,
        replica: b.replica.0,
    };
    proto::metadata::Seal {
        epoch: s.epoch.0,
        ends: s.ends.clone(),
        promised: s.promised.map(ballot),
        accepted_ballot: s.accepted.as_ref().map(|(b, _)| ballot(*b)),
        accepted_ends: s
            .accepted
            .as_ref()
            .map(|(_, e)| e.clone())
            .unwrap_or_default(),
        decided: s
            .decided
            .as_ref()
            .map(|ends| proto::metadata::Boundary { ends: ends.clone() }),
    }
}

/// A stored seal; an earlier version's holds no acceptor state (nothing promised, accepted or
/// known decided: the boundary is decided again).
fn seal_from_proto(s: proto::metadata::Seal) -> Seal {
    let ballot = |b: proto::Ballot| Ballot {
        round: b.round,
        replica: ReplicaId(b.replica),
    };
    Seal {
        epoch: Epoch(s.epoch),
        ends: s.ends,
        promised: s.promised.map(ballot),
        accepted: s.accepted_ballot.map(|b| (ballot(b), s.accepted_ends)),
        decided: s.decided.map(|d| d.ends),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("epaxos-meta-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    }

    /// An added replica (id 3 of a config.json of 3) adopts a configuration with its id, then
    /// joins with 4 horizons while the node's incarnation table still has 3 entries: the record
    /// covers 4 rows throughout, so a restart reads its log (rows of replica 3) with 4.
    #[test]
    fn the_record_covers_the_rows_of_the_configurations_it_stored() {
        let d = dir();
        let mut m = Metadata::open(&d, ReplicaId(3), 3).expect("new");
        let member = |id: u32| {
            Members::member_from_parts(id, &format!("127.0.0.1:{}", 7170 + id), "127.0.0.1:1")
                .expect("valid")
        };
        let grown = Members::new(1, (0..4).map(member).collect()).expect("valid");
        m.store_configuration(&grown).expect("store");
        assert_eq!(recorded_size_and_epoch(&d).expect("read"), Some((4, 1)));
        m.store_peers(&[Incarnation::new(7), None, None])
            .expect("a shorter table");
        assert_eq!(m.peers.len(), 4, "never fewer rows");
        m.store_membership(&Membership::Joined {
            horizons: vec![0; 4],
        })
        .expect("joined");
        let again = Metadata::open(&d, ReplicaId(3), 4).expect("read with 4 rows");
        assert_eq!(again.peers[0], Incarnation::new(7));
        let _ = std::fs::remove_dir_all(&d);
    }

    #[test]
    fn metadata_is_drawn_once_then_each_change_is_durable() {
        let d = dir();
        assert!(is_new(&d));
        let mut m = Metadata::open(&d, ReplicaId(1), 3).expect("new");
        assert!(!is_new(&d), "durable before open returns");
        assert_eq!(
            m.membership,
            Membership::Joining,
            "a new directory joins first"
        );
        assert_eq!(m.peers, vec![None; 3]);
        let again = Metadata::open(&d, ReplicaId(1), 3).expect("read");
        assert_eq!(again.incarnation, m.incarnation, "kept across restarts");
        let known = vec![Incarnation::new(77), None, Incarnation::new(5)];
        m.store_peers(&known).expect("peers");
        let joined = Membership::Joined {
            horizons: vec![4, 0, 17],
        };
        m.store_membership(&joined).expect("membership");
        let again = Metadata::open(&d, ReplicaId(1), 3).expect("read");
        assert_eq!(
            (
                again.incarnation,
                again.peers,
                again.membership,
                again.epoch
            ),
            (m.incarnation, known, joined, 0)
        );
        assert_eq!(recorded_cluster_size(&d).expect("size"), Some(3));
        for name in LEGACY_FILES {
            assert!(!d.join(name).exists(), "no {name} file is written");
        }
        std::fs::remove_dir_all(&d).expect("clean up");
    }

    /// A data directory of an earlier version (the three text files, written here by hand)
    /// loads as it was, and is rewritten as one record by the next change; the old files go
    /// only once the record is durable.
    #[test]
    fn an_earlier_versions_text_files_load_and_are_replaced_by_the_next_write() {
        let d = dir();
        std::fs::create_dir_all(&d).expect("mkdir");
        std::fs::write(d.join("incarnation"), "1234\n").expect("write");
        std::fs::write(d.join("peers"), "0 99\n2 7\n").expect("write");
        std::fs::write(d.join("membership"), "joined 4 0 17\n").expect("write");
        assert!(!is_new(&d));
        assert_eq!(recorded_cluster_size(&d).expect("size"), Some(3));
        assert_eq!(recorded_cluster_size(&d).expect("size"), Some(3));
        let mut m = Metadata::open(&d, ReplicaId(1), 3).expect("legacy");
        let joined = Membership::Joined {
            horizons: vec![4, 0, 17],
        };
        let peers = vec![Incarnation::new(99), None, Incarnation::new(7)];
        assert_eq!(m.incarnation, Incarnation::new(1234).expect("nonzero"));
        assert_eq!((&m.peers, &m.membership), (&peers, &joined));
        assert!(d.join("incarnation").exists(), "reading changes nothing");
        assert!(!d.join(METADATA_FILE).exists());
        m.store_peers(&peers).expect("the next write");
        assert!(d.join(METADATA_FILE).exists());
        for name in LEGACY_FILES {
            assert!(!d.join(name).exists(), "{name} removed");
        }
        let again = Metadata::open(&d, ReplicaId(1), 3).expect("the record");
        assert_eq!(again.incarnation, m.incarnation);
        assert_eq!((again.peers, again.membership), (peers, joined));

        // Without a membership file (from before joins existed): joined, never lost data. A
        // crash after the record was written but before the old files went: they go at open.
        let d2 = dir();
        std::fs::create_dir_all(&d2).expect("mkdir");
        std::fs::write(d2.join("incarnation"), "5\n").expect("write");
        let m = Metadata::open(&d2, ReplicaId(0), 3).expect("legacy");
        assert_eq!(
            m.membership,
            Membership::Joined {
                horizons: vec![0; 3]
            }
        );
        std::fs::copy(d.join(METADATA_FILE), d2.join(METADATA_FILE)).expect("copy");
        let m = Metadata::open(&d2, ReplicaId(1), 3).expect("record wins");
        assert_eq!(m.incarnation, Incarnation::new(1234).expect("nonzero"));
        assert!(!d2.join("incarnation").exists(), "leftover removed");

        // Damaged old files are still refused.
        for (name, text) in [
            ("membership", "joined 1 x 3\n"),
            ("membership", "joined 1 2\n"),
            ("peers", "1 garbage\n"),
            ("peers", "1 0\n"),
            ("incarnation", "0\n"),
        ] {
            let d3 = dir();
            std::fs::create_dir_all(&d3).expect("mkdir");
            std::fs::write(d3.join("incarnation"), "5\n").expect("write");
            std::fs::write(d3.join(name), text).expect("damage");
            assert!(
                Metadata::open(&d3, ReplicaId(0), 3).is_err(),
                "{name}: {text}"
            );
            std::fs::remove_dir_all(&d3).expect("clean up");
        }
        std::fs::remove_dir_all(&d).expect("clean up");
        std::fs::remove_dir_all(&d2).expect("clean up");
    }

    #[test]
    fn a_damaged_or_foreign_metadata_record_refuses_to_start() {
        let d = dir();
        Metadata::open(&d, ReplicaId(1), 3).expect("new");
        let good = std::fs::read(d.join(METADATA_FILE)).expect("read");
        let refusal = |bytes: &[u8], me: u32, n: usize| {
            std::fs::write(d.join(METADATA_FILE), bytes).expect("write");
            let err = Metadata::open(&d, ReplicaId(me), n).expect_err("refused");
            let msg = err.to_string();
            assert!(msg.contains("metadata"), "names the file: {msg}");
            msg
        };
        let mut flipped = good.clone();
        *flipped.last_mut().expect("not empty") ^= 1;
        assert!(refusal(&flipped, 1, 3).contains("checksum mismatch"));
        assert!(refusal(&good[..good.len() - 1], 1, 3).contains("bytes follow"));
        assert!(refusal(&good[..5], 1, 3).contains("magic"));
        assert!(refusal(b"", 1, 3).contains("magic"));
        assert!(refusal(&good, 2, 3).contains("of replica 1, not of replica 2"));
        assert!(refusal(&good, 1, 5).contains("cluster of 3"));
        let kept = std::fs::read(d.join(METADATA_FILE)).expect("read");
        assert_eq!(kept, good, "a refusal overwrites nothing");
        Metadata::open(&d, ReplicaId(1), 3).expect("the right replica and size open it");
        std::fs::remove_dir_all(&d).expect("clean up");
    }

    #[test]
    fn a_decided_configuration_is_kept_with_its_addresses() {
        let d = dir();
        let mut m = Metadata::open(&d, ReplicaId(1), 3).expect("new");
        assert_eq!(m.configuration(), None, "epoch 0: config.json's");
        let member = |id: u32| {
            Members::member_from_parts(id, &format!("db{id}.example:7170"), "10.0.0.9:7070")
                .expect("valid")
        };
        let decided = Members::new(2, vec![member(3), member(1), member(0)]).expect("valid");
        m.store_configuration(&decided).expect("stored");
        // It added replica 3: the record covers its row.
        let again = Metadata::open(&d, ReplicaId(1), 4).expect("read");
        assert_eq!(again.configuration(), Some(decided));
        assert_eq!(again.epoch, 2);
        // A later epoch without its members is damage, not a configuration.
        let mut broken = again;
        broken.members.clear();
        broken.store().expect("written");
        let err = Metadata::open(&d, ReplicaId(1), 4).expect_err("refused");
        assert!(err.to_string().contains("epoch 2 has no members"), "{err}");
        std::fs::remove_dir_all(&d).expect("clean up");
    }

    /// A seal stored by a version before the boundary was decided by Paxos holds no acceptor
    /// state: it loads with nothing promised, accepted or known decided.
    #[test]
    fn an_earlier_versions_seal_loads_without_acceptor_state() {
        let earlier = proto::metadata::Seal {
            epoch: 1,
            ends: vec![3, 0],
            ..Default::default()
        };
        assert_eq!(seal_from_proto(earlier), Seal::new(Epoch(1), vec![3, 0]));
    }

    /// What the core decided about epochs (a change, seals) comes back as it gave it; a record
    /// written before seals and `ever` existed loads with none and its members as `ever`.
    #[test]
    fn a_change_and_seals_come_back_for_the_core() {
        let d = dir();
        let mut m = Metadata::open(&d, ReplicaId(0), 3).expect("new");
        assert_eq!(
            (m.decided(), m.seals.len()),
            (None, 0),
            "epoch 0, nothing sealed"
        );
        let member = |id: u32| {
            Members::member_from_parts(id, &format!("db{id}.example:7170"), "10.0.0.9:7070")
                .expect("valid")
        };
        // An earlier record: epoch 1 without `ever` or seals.
        let earlier = Members::new(1, vec![member(0), member(1)]).expect("valid");
        m.store_configuration(&earlier).expect("stored");
        let again = Metadata::open(&d, ReplicaId(0), 3).expect("read");
        let decided = again.decided().expect("epoch 1");
        assert_eq!(
            decided.configuration.members(),
            &[ReplicaId(0), ReplicaId(1)]
        );
        assert_eq!(decided.ever, vec![ReplicaId(0), ReplicaId(1)]);
        assert!(again.seals.is_empty());

        let next = Members::new(2, vec![member(0)]).expect("valid");
        let decided = Decided {
            configuration: next.configuration(),
            members: vec![epoch::Member {
                id: ReplicaId(3),
                peer_addr: "db3.example:7170".into(),
                client_addr: "10.0.0.3:7070".into(),
            }],
            ever: vec![ReplicaId(0), ReplicaId(1), ReplicaId(2), ReplicaId(3)],
        };
        let promised = Ballot {
            round: 3,
            replica: ReplicaId(1),
        };
        let seals = vec![
            Seal {
                promised: Some(promised),
                accepted: Some((promised, vec![6, 0, 9])),
                decided: Some(vec![6, 0, 9]),
                ..Seal::new(Epoch(0), vec![5, 0, 9])
            },
            Seal {
                promised: Some(promised),
                ..Seal::new(Epoch(1), vec![7, 2])
            },
        ];
        m.store_epochs(Some((&next, &decided)), Some(&seals))
            .expect("stored");
        // Replica 3 was a member: the record covers its row.
        let again = Metadata::open(&d, ReplicaId(0), 4).expect("read");
        assert_eq!(again.configuration(), Some(next));
        assert_eq!(again.decided(), Some(decided));
        assert_eq!(again.seals, seals);
        // Seals alone keep the configuration.
        let mut again = again;
        again.store_epochs(None, Some(&seals[1..])).expect("stored");
        let last = Metadata::open(&d, ReplicaId(0), 4).expect("read");
        assert_eq!((last.epoch, &last.seals[..]), (2, &seals[1..]));
        std::fs::remove_dir_all(&d).expect("clean up");
    }
}
