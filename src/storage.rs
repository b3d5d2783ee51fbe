//! The durable log: an append-only file of instance states.
//!
//! Each record is framed as `length: u32 LE | crc32c(payload): u32 LE | payload`, the payload an
//! encoded `InstanceRecord`. The event loop appends everything one iteration changed and syncs
//! once (group commit) before any message that depends on it leaves the replica.
//!
//! Hand-written rather than an embedded store: the replica only ever appends and replays in
//! order, which a file does directly; framing and torn-tail handling are a few dozen lines.
//!
//! On open the whole log is read back:
//! - a damaged *tail* (the last frame runs past the end of the file, fails its checksum as the
//!   very last frame, or the rest of the file is zeros) is what a crash mid-append leaves: it is
//!   cut off at the last good record and reported;
//! - damage *before* the tail (a bad frame followed by more data) refuses to start: that is not
//!   a torn write, and serving from such a log could lose acknowledged data.
//!
//! Not yet (a later issue): segments, checkpoints and truncation; the log grows without bound.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use prost::Message as _;

use crate::ids::InstanceId;
use crate::instance::Instance;
use crate::proto;
use crate::wire;

/// Largest record accepted when reading back (a batch of large commands fits well under it).
pub const RECORD_BYTES_MAX: usize = 64 * 1024 * 1024;
const HEADER_BYTES: usize = 8;
const LOG_FILE: &str = "instances.log";

/// Whether appends are synced to disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sync {
    /// `fdatasync` after every append: durable (the default).
    Fsync,
    /// No sync: survives a clean stop, not a crash or power loss. For experiments.
    None,
}

/// Why the log could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The file system refused.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    /// Damage before the tail: the replica must not start on this log.
    #[error("{path}: corrupt record at byte {offset} ({reason}) followed by more data; refusing to start (restore the data directory or wipe it to rejoin empty)")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
}

/// What reading the log back found.
#[derive(Debug)]
pub struct Recovered {
    /// Instance states in the order they were written.
    pub records: Vec<(InstanceId, Instance)>,
    /// Bytes cut off a torn tail (0 when the log was clean).
    pub truncated_bytes: u64,
}

/// An open log, positioned at its end.
pub struct Log {
    file: File,
    path: PathBuf,
    sync: Sync,
    buf: Vec<u8>,
}

impl Log {
    /// Opens (creating if needed) the log in `dir` for a cluster of `n` replicas and reads it
    /// back.
    pub fn open(dir: &Path, n: usize, sync: Sync) -> Result<(Log, Recovered), StorageError> {
        let path = dir.join(LOG_FILE);
        let io = |source| StorageError::Io {
            path: path.clone(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut file = OpenOptions::new()
            .read(true)
            .append(true)
            .create(true)
            .open(&path)
            .map_err(io)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        let (records, good_len) =
            parse(&bytes, n).map_err(|(offset, reason)| StorageError::Corrupt {
                path: path.clone(),
                offset,
                reason,
            })?;
        let truncated_bytes = bytes.len() as u64 - good_len;
        if truncated_bytes > 0 {
            file.set_len(good_len).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        // A new file's directory entry must be durable too.
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok((
            Log {
                file,
                path,
                sync,
                buf: Vec::new(),
            },
            Recovered {
                records,
                truncated_bytes,
            },
        ))
    }

    /// Appends instance states and, in `Sync::Fsync` mode, makes them durable: one write and
    /// one sync for the whole batch.
    pub fn append(&mut self, records: &[(InstanceId, Instance)]) -> Result<(), StorageError> {
        if records.is_empty() {
            return Ok(());
        }
        self.buf.clear();
        for (id, inst) in records {
            let payload = wire::record_to_proto(*id, inst).encode_to_vec();
            self.buf
                .extend_from_slice(&(payload.len() as u32).to_le_bytes());
            self.buf
                .extend_from_slice(&crc32c::crc32c(&payload).to_le_bytes());
            self.buf.extend_from_slice(&payload);
        }
        let io = |source| StorageError::Io {
            path: self.path.clone(),
            source,
        };
        self.file.write_all(&self.buf).map_err(io)?;
        if self.sync == Sync::Fsync {
            self.file.sync_data().map_err(io)?;
        }
        Ok(())
    }

    /// The sync mode.
    pub fn sync(&self) -> Sync {
        self.sync
    }
}

/// Parses frames. Returns the records and the length of the good prefix, or the offset and
/// reason of damage that is not a torn tail.
#[allow(clippy::type_complexity)]
fn parse(bytes: &[u8], n: usize) -> Result<(Vec<(InstanceId, Instance)>, u64), (u64, String)> {
    let mut records = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let torn_tail = || rest.iter().all(|b| *b == 0);
        if rest.len() < HEADER_BYTES {
            return Ok((records, at as u64)); // a header cut short: torn tail
        }
        let len = u32::from_le_bytes(rest[0..4].try_into().expect("4 bytes")) as usize;
        let crc = u32::from_le_bytes(rest[4..8].try_into().expect("4 bytes"));
        if len == 0 || len > RECORD_BYTES_MAX {
            if torn_tail() {
                return Ok((records, at as u64));
            }
            return Err((at as u64, format!("impossible record length {len}")));
        }
        let end = HEADER_BYTES + len;
        if rest.len() < end {
            return Ok((records, at as u64)); // the last record cut short: torn tail
        }
        let payload = &rest[HEADER_BYTES..end];
        if crc32c::crc32c(payload) != crc {
            if rest.len() == end || torn_tail() {
                return Ok((records, at as u64)); // the last record half-written
            }
            return Err((at as u64, "checksum mismatch".into()));
        }
        let record = proto::InstanceRecord::decode(payload)
            .map_err(|e| e.to_string())
            .and_then(|p| wire::record_from_proto(p, n).map_err(|e| e.to_string()))
            .map_err(|e| (at as u64, format!("undecodable record: {e}")))?;
        records.push(record);
        at += end;
    }
    Ok((records, at as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::{Command, Op};
    use crate::ids::{Ballot, ClientId, ReplicaId, RequestId};
    use crate::instance::Status;
    use bytes::Bytes;
    use std::sync::Arc;

    fn dir() -> PathBuf {
        let d = std::env::temp_dir().join(format!("epaxos-log-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&d).expect("temp dir");
        d
    }

    fn record(slot: u64, status: Status) -> (InstanceId, Instance) {
        let id = InstanceId::new(ReplicaId(1), slot);
        (
            id,
            Instance {
                status,
                ballot: Ballot::initial(ReplicaId(1)),
                accepted_ballot: (status == Status::Accepted)
                    .then(|| Ballot::initial(ReplicaId(1))),
                commands: Arc::new(vec![Command {
                    client: ClientId(7),
                    request: RequestId(slot + 1),
                    op: Op::Put {
                        key: Bytes::from(format!("k{slot}")),
                        value: Bytes::from_static(b"value"),
                    },
                }]),
                deps: vec![InstanceId::new(ReplicaId(0), slot)],
                init_deps: vec![],
            },
        )
    }

    fn ids(r: &Recovered) -> Vec<(u64, Status)> {
        r.records.iter().map(|(i, s)| (i.slot, s.status)).collect()
    }

    #[test]
    fn records_survive_reopen_in_order() {
        let d = dir();
        let (mut log, rec) = Log::open(&d, 3, Sync::Fsync).expect("open");
        assert!(rec.records.is_empty());
        log.append(&[record(0, Status::PreAccepted), record(1, Status::Accepted)])
            .expect("append");
        log.append(&[record(0, Status::Committed)]).expect("append");
        drop(log);
        let (_, rec) = Log::open(&d, 3, Sync::Fsync).expect("reopen");
        assert_eq!(
            ids(&rec),
            vec![
                (0, Status::PreAccepted),
                (1, Status::Accepted),
                (0, Status::Committed)
            ]
        );
        assert_eq!(rec.records[1].1.deps, record(1, Status::Accepted).1.deps);
        assert_eq!(rec.truncated_bytes, 0);
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn torn_tail_is_cut_and_reported() {
        for damage in ["short", "zeros", "bad_crc_last"] {
            let d = dir();
            let (mut log, _) = Log::open(&d, 3, Sync::Fsync).expect("open");
            log.append(&[record(0, Status::Committed), record(1, Status::Committed)])
                .expect("append");
            drop(log);
            let path = d.join(LOG_FILE);
            let mut bytes = std::fs::read(&path).expect("read");
            let full = bytes.len();
            match damage {
                "short" => bytes.truncate(full - 3),
                "zeros" => bytes.extend_from_slice(&[0u8; 100]),
                _ => {
                    let last = full - 1;
                    bytes[last] ^= 0xff;
                }
            }
            std::fs::write(&path, &bytes).expect("write");
            let (mut log, rec) = Log::open(&d, 3, Sync::Fsync).expect(damage);
            let expect = if damage == "zeros" { 2 } else { 1 };
            assert_eq!(rec.records.len(), expect, "{damage}");
            assert!(rec.truncated_bytes > 0, "{damage}");
            // Appending after the cut yields a clean log.
            log.append(&[record(5, Status::Committed)]).expect("append");
            drop(log);
            let (_, rec) = Log::open(&d, 3, Sync::Fsync).expect("reopen");
            assert_eq!(rec.records.len(), expect + 1, "{damage}");
            assert_eq!(rec.truncated_bytes, 0);
            let _ = std::fs::remove_dir_all(d);
        }
    }

    #[test]
    fn damage_before_the_tail_refuses_to_start() {
        let d = dir();
        let (mut log, _) = Log::open(&d, 3, Sync::Fsync).expect("open");
        log.append(&[record(0, Status::Committed), record(1, Status::Committed)])
            .expect("append");
        drop(log);
        let path = d.join(LOG_FILE);
        let mut bytes = std::fs::read(&path).expect("read");
        bytes[HEADER_BYTES + 2] ^= 0xff; // inside the first record's payload
        std::fs::write(&path, &bytes).expect("write");
        let err = Log::open(&d, 3, Sync::Fsync).err().expect("must refuse");
        let msg = err.to_string();
        assert!(msg.contains("corrupt record at byte 0"), "{msg}");
        assert!(msg.contains("checksum mismatch"), "{msg}");
        // The damaged file is left as it was for inspection.
        assert_eq!(std::fs::read(&path).expect("read"), bytes);
        let _ = std::fs::remove_dir_all(d);
    }
}
