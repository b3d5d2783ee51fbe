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
//! - a damaged *tail* (the last frame runs past the end of the file with no intact record after
//!   it, fails its checksum as the very last frame, or the rest of the file is zeros) is what a
//!   crash mid-append leaves: it is cut off at the last good record and reported;
//! - damage *before* the tail (a bad frame followed by more data) refuses to start: that is not
//!   a torn write, and serving from such a log could lose acknowledged data.
//!
//! Files that other files prove existed must be there, or the replica refuses to start (never
//! runs on partial state): the log starts with a header naming the generation of the checkpoint
//! it continues from (0: none), and each checkpoint records its generation. A log that names a
//! checkpoint which is not there (deleted), a checkpoint of another generation (an old copy put
//! back), or an empty or missing log beside a checkpoint or an incarnation file (the log is
//! created first, with its header, before either) is refused with what is missing and how to
//! recover (start on an empty directory: the replica rejoins from a peer's snapshot). A log
//! and a checkpoint from before generations existed still open; their next checkpoint adds them.
//!
//! Checkpoints bound the log: [`Log::checkpoint`] writes the checkpoint (temporary file, sync,
//! rename, sync of the directory) and then replaces the log by one holding only the instances
//! still in memory (same dance). A crash between the two leaves the new checkpoint with the old
//! log, whose records of checkpointed instances are skipped on replay; a crash before a rename
//! leaves the previous file in place. Either way nothing acknowledged is lost.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use prost::Message as _;

use crate::core::checkpoint::Checkpoint;
use crate::core::ids::InstanceId;
use crate::core::instance::Instance;
use crate::core::wire;
use crate::proto;

pub use crate::core::limits::{CHECKPOINT_BYTES_MAX, LOG_SEGMENT_BYTES, RECORD_BYTES_MAX};
const HEADER_BYTES: usize = 8;
const LOG_FILE: &str = "instances.log";
const CHECKPOINT_FILE: &str = "checkpoint";
/// The log starts with `LOG_MAGIC | generation: u64 LE | crc32c of both: u32 LE`: the
/// generation of the checkpoint it continues from (0: none). Read as a record length, the
/// magic is far above [`RECORD_BYTES_MAX`], so a log from before headers is told apart.
const LOG_MAGIC: [u8; 8] = *b"EPXLOG\x00\x01";
const LOG_HEADER_BYTES: usize = 20;
/// The checkpoint file is `CHECKPOINT_MAGIC | generation: u64 LE | length: u32 LE |
/// crc32c(generation | payload): u32 LE | payload`.
const CHECKPOINT_MAGIC: [u8; 8] = *b"EPXCKP\x00\x01";
const CHECKPOINT_HEADER_BYTES: usize = 24;

/// Mode of the data directory: only the replica's user may enter it (values are user data).
pub const DIR_MODE: u32 = 0o700;
/// Mode of every file the replica writes in its data directory.
pub const FILE_MODE: u32 = 0o600;
/// The files a data directory holds (temporary files are created with [`FILE_MODE`] too).
const DATA_FILES: [&str; 6] = [
    LOG_FILE,
    CHECKPOINT_FILE,
    METADATA_FILE,
    LEGACY_INCARNATION_FILE,
    LEGACY_PEERS_FILE,
    LEGACY_MEMBERSHIP_FILE,
];

/// Creates `dir` (and missing parents) with [`DIR_MODE`] if it does not exist; if it exists
/// with any access for group or others, or holds a data file that does, tightens them to
/// [`DIR_MODE`] / [`FILE_MODE`] and warns (once per path). Fixed rather than refused: data
/// directories written by earlier versions are 0755 with 0644 files, and tightening is always
/// safe; the warning tells the operator that the data may have been readable until now.
pub fn private_dir(dir: &Path) -> Result<(), StorageError> {
    let io = |source| StorageError::Io {
        path: dir.to_path_buf(),
        source,
    };
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(DIR_MODE)
        .create(dir)
        .map_err(io)?;
    tighten(dir, DIR_MODE)?;
    for name in DATA_FILES {
        match tighten(&dir.join(name), FILE_MODE) {
            Err(StorageError::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound => {}
            other => other?,
        }
    }
    Ok(())
}

/// Removes group and other access from `path` (to `mode`) if it has any.
fn tighten(path: &Path, mode: u32) -> Result<(), StorageError> {
    let io = |source| StorageError::Io {
        path: path.to_path_buf(),
        source,
    };
    let found = std::fs::metadata(path).map_err(io)?.permissions().mode() & 0o777;
    if found & 0o077 != 0 {
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(io)?;
        tracing::warn!(path = %path.display(), found = format!("{found:o}"),
            now = format!("{mode:o}"),
            "data was readable by other users; permissions tightened");
    }
    Ok(())
}

/// Opens `path` for writing, created with [`FILE_MODE`] (and truncated).
fn create_private(path: &Path) -> std::io::Result<File> {
    OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(FILE_MODE)
        .open(path)
}

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
    /// A file that the other files prove existed is gone (deleted, emptied, or replaced by
    /// another copy): running on what is left would serve partial or old state.
    #[error(
        "{dir}: {missing}, but {proof}; refusing to start on partial state. To recover, move \
         this data directory away and start the replica with an empty one: it rejoins from a \
         peer's snapshot (every peer must be up)"
    )]
    Missing {
        dir: PathBuf,
        missing: String,
        proof: String,
    },
}

impl StorageError {
    /// Whether the data directory is out of space or not writable (full disk, quota, read-only
    /// file system): a condition that may pass, during which the replica holds everything that
    /// needs a write instead of stopping.
    pub fn is_out_of_space(&self) -> bool {
        use std::io::ErrorKind;
        match self {
            StorageError::Io { source, .. } => matches!(
                source.kind(),
                ErrorKind::StorageFull | ErrorKind::QuotaExceeded | ErrorKind::ReadOnlyFilesystem
            ),
            _ => false,
        }
    }
}

/// A new log written beside the old one by [`Log::start_checkpoint`], not in place yet.
#[derive(Debug)]
pub struct PreparedLog {
    file: File,
    tmp: PathBuf,
    generation: u64,
}

/// What reading the log back found.
#[derive(Debug)]
pub struct Recovered {
    /// The last checkpoint, if one was written.
    pub checkpoint: Option<Checkpoint>,
    /// Instance states in the order they were written.
    pub records: Vec<(InstanceId, Instance)>,
    /// Bytes cut off a torn tail (0 when the log was clean).
    pub truncated_bytes: u64,
}

/// An open log: records up to `end`, then zeros up to `allocated` (written ahead by
/// [`Log::preallocate`]).
///
/// Why zeros ahead: appending past the end of a file changes its size, so every fdatasync
/// also writes the inode (a journal commit on ext4). The log writer instead writes a segment
/// of [`LOG_SEGMENT_BYTES`] zeros ahead of the records between groups (not `fallocate`: on
/// ext4 its unwritten extents are converted on the first write into them, a metadata change
/// again), and records overwrite the zeros in place, so a sync writes data blocks only. When
/// the records outrun the zeros (or a full disk refused them) they extend the file as before.
/// A crash leaves records, then possibly one torn record, then zeros: [`parse`] reads the zero
/// tail as the end of the log, not as damage.
pub struct Log {
    file: File,
    /// Where the next record goes: the end of the last record written.
    end: u64,
    /// The file's length: `end` plus the zeros preallocated after it.
    allocated: u64,
    path: PathBuf,
    dir: PathBuf,
    sync: Sync,
    buf: Vec<u8>,
    /// The generation of the newest checkpoint written with (or found beside) this log; the
    /// next checkpoint is one more.
    generation: u64,
}

/// What the start of the log file says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LogHeader {
    /// An empty file (or a header cut short by a crash while the log was being created).
    Empty,
    /// Records from byte 0: a log written before headers existed.
    Legacy,
    /// A header naming the checkpoint generation the log continues from.
    Generation(u64),
}

impl Log {
    /// Opens (creating if needed) the log in `dir` for a cluster of `n` replicas and reads it
    /// back.
    pub fn open(dir: &Path, n: usize, sync: Sync) -> Result<(Log, Recovered), StorageError> {
        Log::open_rows(dir, n, n, sync)
    }

    /// As [`Log::open`], for a replica whose configurations added ids beyond epoch 0's `n`:
    /// records may be of `rows` rows, a checkpoint must have `n` at least (one taken before
    /// the change has no more).
    pub fn open_rows(
        dir: &Path,
        n: usize,
        rows: usize,
        sync: Sync,
    ) -> Result<(Log, Recovered), StorageError> {
        let path = dir.join(LOG_FILE);
        let io = |source| StorageError::Io {
            path: path.clone(),
            source,
        };
        private_dir(dir)?;
        // Not `append`: records overwrite the preallocated zeros at `end` (positional writes;
        // on Linux a positional write to an O_APPEND file appends anyway).
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(FILE_MODE)
            .open(&path)
            .map_err(io)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes).map_err(io)?;
        let corrupt = |(offset, reason)| StorageError::Corrupt {
            path: path.clone(),
            offset,
            reason,
        };
        let header = log_header(&bytes).map_err(corrupt)?;
        let start = match header {
            LogHeader::Generation(_) => LOG_HEADER_BYTES,
            _ => 0,
        };
        let (records, good_len) = if header == LogHeader::Empty {
            (Vec::new(), 0)
        } else {
            parse(&bytes, start, rows.max(n)).map_err(corrupt)?
        };
        let checkpoint = read_checkpoint(dir, n)?;
        check_complete(dir, header, checkpoint.as_ref().map(|(g, _)| *g))?;
        // Zeros after the last record are preallocated space, not a torn tail: what is cut
        // and reported is only what was written there.
        let written_end = bytes
            .iter()
            .rposition(|b| *b != 0)
            .map_or(0, |last| last as u64 + 1);
        let truncated_bytes = written_end.saturating_sub(good_len);
        let (end, allocated) = if header == LogHeader::Empty {
            // A new log (the checks above showed nothing else exists): its header first.
            file.set_len(0).map_err(io)?;
            file.write_all_at(&log_header_bytes(0), 0).map_err(io)?;
            file.sync_all().map_err(io)?;
            (LOG_HEADER_BYTES as u64, LOG_HEADER_BYTES as u64)
        } else if truncated_bytes > 0 {
            file.set_len(good_len).map_err(io)?;
            file.sync_all().map_err(io)?;
            (good_len, good_len)
        } else {
            (good_len, bytes.len() as u64)
        };
        // A new file's directory entry must be durable too.
        sync_dir(dir);
        // Leftovers of a checkpoint interrupted before its rename.
        for tmp in [LOG_FILE, CHECKPOINT_FILE] {
            let _ = std::fs::remove_file(dir.join(format!("{tmp}.tmp")));
        }
        // The next checkpoint is one generation ahead of the *log*, not of the checkpoint
        // file: after a crash between a checkpoint's rename and the log's, the checkpoint is
        // already one ahead, and numbering from it would make the next interrupted checkpoint
        // two ahead of the log, which opening refuses. Rewriting that same generation instead
        // keeps every moment of the next checkpoint a pair opening accepts.
        let generation = match header {
            LogHeader::Generation(g) => g,
            _ => 0,
        };
        Ok((
            Log {
                file,
                end,
                allocated,
                path,
                dir: dir.to_path_buf(),
                sync,
                buf: Vec::new(),
                generation,
            },
            Recovered {
                checkpoint: checkpoint.map(|(_, c)| c),
                records,
                truncated_bytes: if header == LogHeader::Empty {
                    0
                } else {
                    truncated_bytes
                },
            },
        ))
    }

    /// Makes `checkpoint` durable, then replaces the log by `live` (the instance states the
    /// checkpoint does not cover). Always synced, whatever the sync mode: a torn checkpoint
    /// would lose everything it replaced.
    pub fn checkpoint(
        &mut self,
        payload: &[u8],
        live: &[(InstanceId, Instance)],
    ) -> Result<(), StorageError> {
        let prepared = self.start_checkpoint(payload.to_vec(), live.to_vec())()?;
        self.finish_checkpoint(prepared, &[])
    }

    /// The first half of a checkpoint that leaves the event loop free: the caller runs the
    /// returned job on a blocking thread (it makes the checkpoint durable and writes the new log
    /// of `live` records to a temporary file), keeps appending to this log meanwhile, and then
    /// calls [`Log::finish_checkpoint`] with what it appended since. Until that rename the old
    /// log stays in place with everything in it, so a crash at any point loses nothing.
    pub fn start_checkpoint(
        &self,
        payload: Vec<u8>,
        live: Vec<(InstanceId, Instance)>,
    ) -> impl FnOnce() -> Result<PreparedLog, StorageError> + Send + 'static {
        let dir = self.dir.clone();
        let generation = self.generation + 1;
        move || {
            if payload.len() > CHECKPOINT_BYTES_MAX {
                return Err(StorageError::Corrupt {
                    path: dir.join(CHECKPOINT_FILE),
                    offset: 0,
                    reason: format!("checkpoint of {} bytes is too large", payload.len()),
                });
            }
            let mut framed = Vec::with_capacity(CHECKPOINT_HEADER_BYTES + payload.len());
            let gen_bytes = generation.to_le_bytes();
            framed.extend_from_slice(&CHECKPOINT_MAGIC);
            framed.extend_from_slice(&gen_bytes);
            frame(&mut framed, &gen_bytes, &payload);
            drop(payload);
            replace_file(&dir, CHECKPOINT_FILE, &framed)?;
            drop(framed);
            // The new log names the checkpoint it continues from: without it, it is partial.
            let mut buf = log_header_bytes(generation).to_vec();
            for (id, inst) in &live {
                frame_record(&mut buf, *id, inst);
            }
            let tmp = dir.join(format!("{LOG_FILE}.tmp"));
            let io = |source| StorageError::Io {
                path: tmp.clone(),
                source,
            };
            let mut file = create_private(&tmp).map_err(io)?;
            file.write_all(&buf).map_err(io)?;
            file.sync_all().map_err(io)?;
            Ok(PreparedLog {
                file,
                tmp,
                generation,
            })
        }
    }

    /// The second half of a checkpoint (see [`Log::start_checkpoint`]): appends to the new log
    /// what was appended to the old one since, syncs it, and puts it in the old one's place.
    pub fn finish_checkpoint(
        &mut self,
        prepared: PreparedLog,
        since: &[(InstanceId, Instance)],
    ) -> Result<(), StorageError> {
        let PreparedLog {
            mut file,
            tmp,
            generation,
        } = prepared;
        let io = |source| StorageError::Io {
            path: tmp.clone(),
            source,
        };
        self.buf.clear();
        for (id, inst) in since {
            frame_record(&mut self.buf, *id, inst);
        }
        file.write_all(&self.buf).map_err(io)?;
        file.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        sync_dir(&self.dir);
        self.generation = generation;
        // The renamed file, written to its end and not preallocated yet.
        let len = file.metadata().map_err(io)?.len();
        self.file = file;
        self.end = len;
        self.allocated = len;
        Ok(())
    }

    /// Gives up a checkpoint whose writing failed: removes its temporary files. The old log
    /// is still whole and in place (it is replaced only by the last step), and a checkpoint
    /// file already renamed into place is one generation ahead of it, which opening accepts.
    pub fn abandon_checkpoint(&self) {
        for tmp in [LOG_FILE, CHECKPOINT_FILE] {
            let _ = std::fs::remove_file(self.dir.join(format!("{tmp}.tmp")));
        }
    }

    /// Bytes of the log's records (and header) now; the preallocated zeros after them do not
    /// count.
    pub fn len_bytes(&self) -> u64 {
        self.end
    }

    /// Bytes the log file takes, preallocated zeros included.
    pub fn allocated_bytes(&self) -> u64 {
        self.allocated
    }

    /// Writes a segment of zeros after the records if fewer than half a segment are left
    /// ahead of them, and makes it durable (data and the new size), so that the syncs of the
    /// records that land in it write no inode. Returns whether it wrote any. The log writer
    /// calls it between groups. On failure (a full disk) the file is cut back to what it was:
    /// the records then extend the file as they would without it.
    pub fn preallocate(&mut self) -> Result<bool, StorageError> {
        let segment = LOG_SEGMENT_BYTES as u64;
        if self.allocated.saturating_sub(self.end) >= segment / 2 {
            return Ok(false);
        }
        let from = self.allocated.max(self.end);
        let zeros = vec![0u8; LOG_SEGMENT_BYTES];
        let written = self
            .file
            .write_all_at(&zeros, from)
            .and_then(|()| match self.sync {
                Sync::Fsync => self.file.sync_data(),
                Sync::None => Ok(()),
            });
        if let Err(source) = written {
            let _ = self.file.set_len(from);
            return Err(StorageError::Io {
                path: self.path.clone(),
                source,
            });
        }
        self.allocated = from + segment;
        Ok(true)
    }

    /// Appends instance states and, in `Sync::Fsync` mode, makes them durable: one write and
    /// one sync for the whole batch.
    pub fn append(&mut self, records: &[(InstanceId, Instance)]) -> Result<(), StorageError> {
        if records.is_empty() {
            return Ok(());
        }
        self.buf.clear();
        for (id, inst) in records {
            frame_record(&mut self.buf, *id, inst);
        }
        // On failure (disk full, read-only remount, I/O error) the file is cut back to the
        // last record, preallocated zeros too: a half-written batch followed later by a
        // successful retry would be damage before the tail, which refuses to start (the
        // zeros come back with the next segment). After a failed sync the kernel may have
        // dropped the pages, so the retry writes the whole batch again rather than syncing.
        let end = self.end + self.buf.len() as u64;
        let written = self
            .file
            .write_all_at(&self.buf, self.end)
            .and_then(|()| match self.sync {
                Sync::Fsync => self.file.sync_data(),
                Sync::None => Ok(()),
            });
        if let Err(source) = written {
            let _ = self.file.set_len(self.end);
            self.allocated = self.end;
            return Err(StorageError::Io {
                path: self.path.clone(),
                source,
            });
        }
        self.end = end;
        self.allocated = self.allocated.max(end);
        Ok(())
    }

    /// The sync mode.
    pub fn sync(&self) -> Sync {
        self.sync
    }
}

/// Frames a record straight into `buf`: the header is written after the payload was encoded in
/// place, so the record is not encoded into a vector of its own and copied (once per record
/// appended, the writer's hot path).
fn frame_record(buf: &mut Vec<u8>, id: InstanceId, inst: &Instance) {
    let start = buf.len();
    buf.extend_from_slice(&[0; HEADER_BYTES]);
    crate::server::record::encode(buf, id, inst);
    let payload = &buf[start + HEADER_BYTES..];
    let len = u32::try_from(payload.len()).expect("records are bounded far below 4 GiB");
    let crc = checksum(&[], payload);
    buf[start..start + 4].copy_from_slice(&len.to_le_bytes());
    buf[start + 4..start + HEADER_BYTES].copy_from_slice(&crc.to_le_bytes());
}

/// Appends one frame to `out`: `length: u32 LE | crc32c(salt | payload): u32 LE | payload`.
/// The salt is checksummed but not written: bytes that stand just before the frame (a
/// checkpoint's generation), so that a frame moved under another salt fails its checksum.
/// Every CRC32C-framed thing the replica stores is written here and read by [`unframe`].
pub(crate) fn frame(out: &mut Vec<u8>, salt: &[u8], payload: &[u8]) {
    let len = u32::try_from(payload.len()).expect("callers bound payloads below 4 GiB");
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&checksum(salt, payload).to_le_bytes());
    out.extend_from_slice(payload);
}

fn checksum(salt: &[u8], payload: &[u8]) -> u32 {
    crc32c::crc32c_append(crc32c::crc32c(salt), payload)
}

/// Why the bytes at some offset are not a whole, intact frame.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum FrameError {
    /// Fewer bytes than a frame's header.
    #[error("shorter than a frame header")]
    Short,
    /// The length field is above the most the caller accepts.
    #[error("length {0} is above the most allowed")]
    TooLong(usize),
    /// The length field runs past the end of the bytes.
    #[error("length {len} but {available} bytes follow")]
    PastEnd { len: usize, available: usize },
    /// The payload is all there but its checksum is wrong.
    #[error("checksum mismatch")]
    Checksum,
}

/// The length a frame starting at `bytes` declares; `None` if the header is cut short.
fn frame_len(bytes: &[u8]) -> Option<usize> {
    let field = bytes.get(0..4)?.try_into().expect("4 bytes");
    Some(u32::from_le_bytes(field) as usize)
}

/// Reads the frame at the start of `bytes` (see [`frame`]), whose payload may be at most `max`
/// bytes: its payload and the bytes after it.
pub(crate) fn unframe<'a>(
    bytes: &'a [u8],
    salt: &[u8],
    max: usize,
) -> Result<(&'a [u8], &'a [u8]), FrameError> {
    if bytes.len() < HEADER_BYTES {
        return Err(FrameError::Short);
    }
    let len = frame_len(bytes).expect("a whole header");
    if len > max {
        return Err(FrameError::TooLong(len));
    }
    let available = bytes.len() - HEADER_BYTES;
    if available < len {
        return Err(FrameError::PastEnd { len, available });
    }
    let crc = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes"));
    let (payload, rest) = bytes[HEADER_BYTES..].split_at(len);
    if checksum(salt, payload) != crc {
        return Err(FrameError::Checksum);
    }
    Ok((payload, rest))
}

pub(crate) fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Replaces `dir/name` atomically by `bytes`: temporary file, sync, rename, sync the directory.
pub(crate) fn replace_file(dir: &Path, name: &str, bytes: &[u8]) -> Result<(), StorageError> {
    let tmp = dir.join(format!("{name}.tmp"));
    let io = |source| StorageError::Io {
        path: tmp.clone(),
        source,
    };
    let mut f = create_private(&tmp).map_err(io)?;
    f.write_all(bytes).map_err(io)?;
    f.sync_all().map_err(io)?;
    std::fs::rename(&tmp, dir.join(name)).map_err(io)?;
    sync_dir(dir);
    Ok(())
}

pub use crate::core::membership::Membership;
pub use crate::server::metadata::{
    is_new, recorded_cluster_size, recorded_size_and_epoch, Metadata,
};
use crate::server::metadata::{
    LEGACY_INCARNATION_FILE, LEGACY_MEMBERSHIP_FILE, LEGACY_PEERS_FILE, METADATA_FILE,
};

/// Reads the checkpoint, if any, with its generation (`None`: written before generations
/// existed). A checkpoint is replaced whole by rename, so any damage is real corruption: refuse
/// to start.
fn read_checkpoint(
    dir: &Path,
    n: usize,
) -> Result<Option<(Option<u64>, Checkpoint)>, StorageError> {
    let path = dir.join(CHECKPOINT_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StorageError::Io { path, source }),
    };
    let corrupt = |reason: String| StorageError::Corrupt {
        path: path.clone(),
        offset: 0,
        reason,
    };
    let (generation, rest) = if bytes.starts_with(&CHECKPOINT_MAGIC) {
        if bytes.len() < CHECKPOINT_HEADER_BYTES {
            return Err(corrupt("shorter than its header".into()));
        }
        let g = u64::from_le_bytes(bytes[8..16].try_into().expect("8 bytes"));
        (Some(g), &bytes[16..])
    } else {
        (None, &bytes[..])
    };
    let salt = generation.map(u64::to_le_bytes);
    let salt = salt.as_ref().map_or(&[][..], |s| &s[..]);
    // The frame is the rest of the file, exactly.
    let payload = match unframe(rest, salt, CHECKPOINT_BYTES_MAX) {
        Ok((payload, [])) => payload,
        Err(FrameError::PastEnd { len, available }) => {
            return Err(corrupt(format!(
                "length {len} but {available} bytes follow"
            )));
        }
        Ok(_) | Err(FrameError::TooLong(_)) => {
            let len = frame_len(rest).expect("a whole header");
            return Err(corrupt(format!(
                "length {len} but {} bytes follow",
                rest.len() - HEADER_BYTES
            )));
        }
        Err(FrameError::Short) => return Err(corrupt("shorter than its header".into())),
        Err(FrameError::Checksum) => return Err(corrupt("checksum mismatch".into())),
    };
    Checkpoint::decode(payload, n)
        .map(|c| Some((generation, c)))
        .map_err(|e| corrupt(e.to_string()))
}

/// The log header for `generation`.
fn log_header_bytes(generation: u64) -> [u8; LOG_HEADER_BYTES] {
    let mut h = [0u8; LOG_HEADER_BYTES];
    h[..8].copy_from_slice(&LOG_MAGIC);
    h[8..16].copy_from_slice(&generation.to_le_bytes());
    let crc = crc32c::crc32c(&h[..16]);
    h[16..].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Reads the log header (see [`LOG_MAGIC`]); a damaged one is an offset and a reason.
fn log_header(bytes: &[u8]) -> Result<LogHeader, (u64, String)> {
    if bytes.len() < LOG_HEADER_BYTES {
        // The header is written and synced alone when the log is created: anything shorter
        // that is a start of it (or zeros) is that write cut short by a crash.
        let magic_prefix = bytes.len().min(8);
        if bytes[..magic_prefix] == LOG_MAGIC[..magic_prefix] || bytes.iter().all(|b| *b == 0) {
            return Ok(LogHeader::Empty);
        }
        return Ok(LogHeader::Legacy);
    }
    if bytes[..8] != LOG_MAGIC {
        return Ok(LogHeader::Legacy);
    }
    let crc = u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes"));
    if crc32c::crc32c(&bytes[..16]) != crc {
        return Err((0, "log header checksum mismatch".into()));
    }
    Ok(LogHeader::Generation(u64::from_le_bytes(
        bytes[8..16].try_into().expect("8 bytes"),
    )))
}

/// Refuses to start when one file proves that another one existed that is not there (or not
/// the right one). `checkpoint`: `None` if there is no checkpoint file, `Some(None)` if it has
/// no generation (written before generations existed).
fn check_complete(
    dir: &Path,
    log: LogHeader,
    checkpoint: Option<Option<u64>>,
) -> Result<(), StorageError> {
    let missing = |missing: String, proof: String| {
        Err(StorageError::Missing {
            dir: dir.to_path_buf(),
            missing,
            proof,
        })
    };
    let no_log = format!("{LOG_FILE} is missing or empty");
    match (log, checkpoint) {
        (LogHeader::Empty, Some(g)) => missing(
            no_log,
            format!(
                "a checkpoint{} exists, and a log is always written with it",
                g.map(|g| format!(" (generation {g})")).unwrap_or_default()
            ),
        ),
        (LogHeader::Empty, None) if !is_new(dir) => missing(
            no_log,
            "the metadata (incarnation) file shows this directory was in use, and its log is \
             created first"
                .into(),
        ),
        (LogHeader::Generation(g), None) if g > 0 => missing(
            format!("{CHECKPOINT_FILE} is missing"),
            format!("{LOG_FILE} continues from checkpoint generation {g}"),
        ),
        // The checkpoint is the log's own, or the next one (a crash between writing it and
        // cutting the log leaves the old log beside it, which is harmless).
        (LogHeader::Generation(g), Some(Some(c))) if c != g && c != g + 1 => missing(
            format!("{CHECKPOINT_FILE} is generation {c}, not {g} or {}", g + 1),
            format!(
                "{LOG_FILE} continues from generation {g} (one of the two was replaced by \
                 another copy)"
            ),
        ),
        _ => Ok(()),
    }
}

/// Parses frames. Returns the records and the length of the good prefix, or the offset and
/// reason of damage that is not a torn tail.
///
/// A crash mid-append can only leave the *end* of the file unfinished: a header cut short, a
/// last frame whose length runs past the end, a last frame whose checksum fails, or zeros
/// where the file grew but the data never landed. Anything else is damage. In particular a
/// length that runs past the end is what a flipped bit in a length field looks like too (the
/// rest of the log then seems to be one long record): it counts as torn only if no intact
/// record starts anywhere after it (see [`intact_frame_after`]); otherwise cutting there would
/// silently drop every later record.
#[allow(clippy::type_complexity)]
fn parse(
    bytes: &[u8],
    start: usize,
    n: usize,
) -> Result<(Vec<(InstanceId, Instance)>, u64), (u64, String)> {
    let mut records = Vec::new();
    let mut at = start;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let torn_tail = || rest.iter().all(|b| *b == 0);
        if rest.len() < HEADER_BYTES {
            return Ok((records, at as u64)); // a header cut short: torn tail
        }
        let len = frame_len(rest).expect("a whole header");
        if len == 0 || len > RECORD_BYTES_MAX {
            if torn_tail() {
                return Ok((records, at as u64));
            }
            // Zeros where a header should be, then written bytes: in a preallocated log (see
            // `Log`) that is a last group whose earlier pages never landed; torn unless an
            // intact record follows.
            if len == 0 && intact_frame_after(bytes, at, n).is_none() {
                return Ok((records, at as u64));
            }
            return Err((at as u64, format!("impossible record length {len}")));
        }
        let payload = match unframe(rest, &[], RECORD_BYTES_MAX) {
            Ok((payload, _)) => payload,
            Err(e @ (FrameError::Short | FrameError::TooLong(_))) => {
                unreachable!("header and length checked above: {e:?}")
            }
            // The last record cut short, or a damaged length field with more records after it.
            Err(FrameError::PastEnd { .. }) => {
                return match intact_frame_after(bytes, at, n) {
                    None => Ok((records, at as u64)),
                    Some(Ok(next)) => Err((
                        at as u64,
                        format!(
                            "record length {len} runs past the end of the file, but an intact \
                             record follows at byte {next} (a damaged length field, not a torn \
                             tail)"
                        ),
                    )),
                    Some(Err(())) => Err((
                        at as u64,
                        format!(
                            "record length {len} runs past the end of the file and the {} bytes \
                             after it are too many to check for intact records",
                            rest.len()
                        ),
                    )),
                };
            }
            Err(FrameError::Checksum) => {
                if rest.len() == HEADER_BYTES + len || torn_tail() {
                    return Ok((records, at as u64)); // the last record half-written
                }
                // The last record half-written, then the preallocated zeros (see `Log`): torn,
                // unless an intact record follows (then the bad frame is damage, as above).
                if rest[HEADER_BYTES + len..].iter().all(|b| *b == 0)
                    && intact_frame_after(bytes, at, n).is_none()
                {
                    return Ok((records, at as u64));
                }
                return Err((at as u64, "checksum mismatch".into()));
            }
        };
        let record = decode_record(payload, n)
            .map_err(|e| (at as u64, format!("undecodable record: {e}")))?;
        records.push(record);
        at += HEADER_BYTES + payload.len();
    }
    Ok((records, at as u64))
}

fn decode_record(payload: &[u8], n: usize) -> Result<(InstanceId, Instance), String> {
    proto::InstanceRecord::decode(payload)
        .map_err(|e| e.to_string())
        .and_then(|p| wire::record_from_proto(p, n).map_err(|e| e.to_string()))
}

/// Bytes checksummed at most while looking for an intact record after a suspect frame. A
/// real torn tail is at most one group commit; beyond the budget the log is not cut (the
/// replica refuses to start and says so), never cut on a guess.
const INTACT_SCAN_BYTES_MAX: usize = 1 << 30;

/// Where the first intact record (length in range and inside the file, checksum right,
/// decodable) starting after byte `at` begins: `None` if there is none, `Some(Err(()))` if the
/// search ran out of budget. A record embedded in a torn record's payload (a value that holds
/// a framed record) also counts: the replica then refuses rather than cuts, the safe side.
fn intact_frame_after(bytes: &[u8], at: usize, n: usize) -> Option<Result<usize, ()>> {
    let mut budget = INTACT_SCAN_BYTES_MAX;
    for start in at + 1..bytes.len().saturating_sub(HEADER_BYTES) {
        let rest = &bytes[start..];
        let len = frame_len(rest).expect("the scan stops a header short of the end");
        if len == 0 || len > RECORD_BYTES_MAX || rest.len() < HEADER_BYTES + len {
            continue;
        }
        let Some(left) = budget.checked_sub(len) else {
            return Some(Err(()));
        };
        budget = left;
        if let Ok((payload, _)) = unframe(rest, &[], RECORD_BYTES_MAX) {
            if decode_record(payload, n).is_ok() {
                return Some(Ok(start));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::command::{Command, Op};
    use crate::core::epoch::Epoch;
    use crate::core::ids::{Ballot, ClientId, Incarnation, ReplicaId, RequestId};
    use crate::core::instance::Status;
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
                epoch: Epoch(0),
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
                    time_ms: 0,
                    retry: false,
                }]),
                deps: crate::core::deps::Deps::from([InstanceId::new(ReplicaId(0), slot)]),
                init_deps: None,
            },
        )
    }

    fn ids(r: &Recovered) -> Vec<(u64, Status)> {
        r.records.iter().map(|(i, s)| (i.slot, s.status)).collect()
    }

    #[test]
    fn a_frame_reads_back_and_any_damage_is_named() {
        let mut buf = Vec::new();
        frame(&mut buf, b"salt", b"payload");
        frame(&mut buf, &[], b"");
        let (p, rest) = unframe(&buf, b"salt", 64).expect("intact");
        assert_eq!(p, b"payload");
        let (p, rest) = unframe(rest, &[], 64).expect("an empty payload is a frame");
        assert_eq!((p, rest), (&b""[..], &b""[..]));
        assert_eq!(
            unframe(&buf, b"other", 64),
            Err(FrameError::Checksum),
            "salted"
        );
        assert_eq!(unframe(&buf[..7], b"salt", 64), Err(FrameError::Short));
        assert_eq!(unframe(&buf, b"salt", 6), Err(FrameError::TooLong(7)));
        assert_eq!(
            unframe(&buf[..12], b"salt", 64),
            Err(FrameError::PastEnd {
                len: 7,
                available: 4
            })
        );
        let mut flipped = buf.clone();
        flipped[HEADER_BYTES] ^= 1;
        assert_eq!(unframe(&flipped, b"salt", 64), Err(FrameError::Checksum));
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
            let full = log.len_bytes() as usize;
            drop(log);
            let path = d.join(LOG_FILE);
            let mut bytes = std::fs::read(&path).expect("read");
            // A log as written before preallocation (see `a_preallocated_zero_tail_...`).
            bytes.truncate(full);
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
            // Zeros after the last record are what preallocation leaves: nothing is cut.
            assert_eq!(rec.truncated_bytes > 0, damage != "zeros", "{damage}");
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
    fn checkpoint_cuts_the_log_and_comes_back() {
        use crate::core::checkpoint::Checkpoint;
        use crate::core::deps::ConflictIndex;
        use crate::core::kv::KvStore;
        let d = dir();
        let (mut log, _) = Log::open(&d, 3, Sync::Fsync).expect("open");
        let many: Vec<_> = (0..50).map(|s| record(s, Status::Committed)).collect();
        log.append(&many).expect("append");
        let before = log.len_bytes();
        let mut kv = KvStore::new();
        kv.apply(&record(0, Status::Committed).1.commands[0], ReplicaId(0));
        let mut index = ConflictIndex::new(3);
        index.record(
            record(0, Status::Committed).0,
            &record(0, Status::Committed).1.commands,
        );
        let cp = Checkpoint {
            configurations: Default::default(),
            kv,
            index,
            gc_prefix: vec![0, 49, 0],
            executed_above: vec![InstanceId::new(ReplicaId(1), 49)],
            next_slot: 3,
        };
        log.checkpoint(&cp.encode(), &[record(49, Status::Committed)])
            .expect("checkpoint");
        assert!(log.len_bytes() < before / 10, "the log was cut");
        log.append(&[record(50, Status::PreAccepted)])
            .expect("append after cut");
        drop(log);
        let (_, rec) = Log::open(&d, 3, Sync::Fsync).expect("reopen");
        let back = rec.checkpoint.clone().expect("checkpoint read back");
        assert_eq!(back.gc_prefix, vec![0, 49, 0]);
        assert_eq!(back.executed_above, cp.executed_above);
        assert_eq!(back.next_slot, 3);
        assert_eq!(back.kv.digest(), cp.kv.digest());
        assert_eq!(back.kv.executed(), 1);
        assert_eq!(
            ids(&rec),
            vec![(49, Status::Committed), (50, Status::PreAccepted)]
        );
        // A damaged checkpoint refuses to start.
        let path = d.join(CHECKPOINT_FILE);
        let mut bytes = std::fs::read(&path).expect("read");
        let last = bytes.len() - 1;
        bytes[last] ^= 0x55;
        std::fs::write(&path, &bytes).expect("write");
        let err = Log::open(&d, 3, Sync::Fsync).err().expect("must refuse");
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn damage_before_the_tail_refuses_to_start() {
        let d = dir();
        let (mut log, _) = Log::open(&d, 3, Sync::Fsync).expect("open");
        log.append(&[record(0, Status::Committed), record(1, Status::Committed)])
            .expect("append");
        assert!(log.preallocate().expect("zeros ahead"));
        drop(log);
        let path = d.join(LOG_FILE);
        let mut bytes = std::fs::read(&path).expect("read");
        assert!(bytes.len() >= LOG_SEGMENT_BYTES, "preallocated");
        bytes[LOG_HEADER_BYTES + HEADER_BYTES + 2] ^= 0xff; // inside the first record's payload
        std::fs::write(&path, &bytes).expect("write");
        let err = Log::open(&d, 3, Sync::Fsync).err().expect("must refuse");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("corrupt record at byte {LOG_HEADER_BYTES}")),
            "{msg}"
        );
        assert!(msg.contains("checksum mismatch"), "{msg}");
        // The damaged file is left as it was for inspection.
        assert_eq!(std::fs::read(&path).expect("read"), bytes);
        let _ = std::fs::remove_dir_all(d);
    }

    /// Byte offsets at which each record of the log in `d` starts.
    fn frame_offsets(bytes: &[u8]) -> Vec<usize> {
        let mut at = LOG_HEADER_BYTES;
        let mut out = Vec::new();
        while at + HEADER_BYTES <= bytes.len() {
            let len = u32::from_le_bytes(bytes[at..at + 4].try_into().expect("4 bytes"));
            if len == 0 {
                break; // the preallocated zeros
            }
            out.push(at);
            at += HEADER_BYTES + len as usize;
        }
        out
    }

    /// A log of 50 records with `damage` applied to its bytes (given the record offsets), and
    /// what opening it gives. `zero_tail`: keep the preallocated zeros after the records (else
    /// the file ends at the last record, as logs were written before preallocation).
    fn open_damaged_tail(
        zero_tail: bool,
        damage: impl FnOnce(&mut Vec<u8>, &[usize]),
    ) -> (PathBuf, Vec<u8>, Result<(Log, Recovered), StorageError>) {
        let d = dir();
        let (mut log, _) = Log::open(&d, 3, Sync::Fsync).expect("open");
        let many: Vec<_> = (0..50).map(|s| record(s, Status::Committed)).collect();
        log.append(&many).expect("append");
        assert!(log.preallocate().expect("zeros ahead"));
        let end = log.len_bytes() as usize;
        drop(log);
        let path = d.join(LOG_FILE);
        let mut bytes = std::fs::read(&path).expect("read");
        assert!(bytes.len() > end, "preallocated");
        assert!(bytes[end..].iter().all(|b| *b == 0), "with zeros");
        if !zero_tail {
            bytes.truncate(end);
        }
        let offsets = frame_offsets(&bytes);
        assert_eq!(offsets.len(), 50);
        damage(&mut bytes, &offsets);
        std::fs::write(&path, &bytes).expect("write");
        let opened = Log::open(&d, 3, Sync::Fsync);
        (d, bytes, opened)
    }

    fn open_damaged(
        damage: impl FnOnce(&mut Vec<u8>, &[usize]),
    ) -> (PathBuf, Vec<u8>, Result<(Log, Recovered), StorageError>) {
        open_damaged_tail(false, damage)
    }

    /// Zeros ahead of the records: `preallocate` writes a segment when less than half of one
    /// is left (and not otherwise), records land in it without growing the file, records that
    /// outrun it grow the file as without zeros, and every record reads back after a restart
    /// (which keeps the zeros and appends into them).
    #[test]
    fn segments_of_zeros_are_written_ahead_and_records_outrun_them_safely() {
        let d = dir();
        let seg = LOG_SEGMENT_BYTES as u64;
        let (mut log, _) = Log::open(&d, 3, Sync::None).expect("open");
        let header = log.len_bytes();
        assert!(log.preallocate().expect("zeros"), "nothing ahead yet");
        assert_eq!(log.allocated_bytes(), header + seg);
        assert!(!log.preallocate().expect("zeros"), "a segment is ahead");
        let file_len = |d: &Path| std::fs::metadata(d.join(LOG_FILE)).expect("stat").len();
        assert_eq!(file_len(&d), header + seg);
        // Records into the zeros: the file keeps its length.
        let mut slot = 0;
        while log.len_bytes() < header + seg / 2 {
            log.append(&[record(slot, Status::Committed)])
                .expect("append");
            slot += 1;
        }
        assert_eq!(file_len(&d), header + seg, "written in place");
        // Less than half a segment left: the next one goes after the current zeros.
        assert!(log.preallocate().expect("zeros"));
        assert_eq!(log.allocated_bytes(), header + 2 * seg);
        // Records outrunning every zero (nothing preallocated meanwhile) grow the file.
        let many: Vec<_> = (slot..slot + 40_000)
            .map(|s| record(s, Status::Committed))
            .collect();
        slot += 40_000;
        log.append(&many).expect("append past the zeros");
        assert!(log.len_bytes() > header + 2 * seg, "past the zeros");
        assert_eq!(log.allocated_bytes(), log.len_bytes());
        assert_eq!(file_len(&d), log.len_bytes());
        assert!(log.preallocate().expect("zeros"));
        drop(log);
        let (mut log, rec) = Log::open(&d, 3, Sync::None).expect("reopen");
        assert_eq!(rec.records.len() as u64, slot);
        assert_eq!(rec.truncated_bytes, 0);
        // The restart keeps the zeros and appends into them.
        let (end, allocated) = (log.len_bytes(), log.allocated_bytes());
        assert_eq!(allocated, end + seg);
        log.append(&[record(slot, Status::Committed)])
            .expect("append");
        assert_eq!(log.allocated_bytes(), allocated);
        drop(log);
        let (_, rec) = Log::open(&d, 3, Sync::None).expect("reopen");
        assert_eq!(rec.records.len() as u64, slot + 1);
        let _ = std::fs::remove_dir_all(d);
    }

    /// The log grows by zero-filled segments (so a sync writes no inode): a clean zero tail
    /// reads back as the end of the log, nothing cut; a last record half-written into it (its
    /// header and part of its payload, or a damaged byte) is a torn tail, cut and reported;
    /// damage with intact records after it still refuses to start, zeros or not.
    #[test]
    fn a_preallocated_zero_tail_is_the_end_and_a_torn_record_in_it_is_cut() {
        // Clean: every record back, nothing reported, the preallocation kept.
        let (d, bytes, opened) = open_damaged_tail(true, |_, _| {});
        let (mut log, rec) = opened.expect("a clean preallocated log opens");
        assert_eq!(rec.records.len(), 50);
        assert_eq!(rec.truncated_bytes, 0);
        assert_eq!(log.allocated_bytes(), bytes.len() as u64);
        // Appending goes after the last record, into the zeros, not after them.
        let end = log.len_bytes();
        log.append(&[record(50, Status::Committed)])
            .expect("append");
        assert!(log.len_bytes() > end);
        assert_eq!(log.allocated_bytes(), bytes.len() as u64, "no new segment");
        drop(log);
        let (_, rec) = Log::open(&d, 3, Sync::Fsync).expect("reopen");
        assert_eq!(rec.records.len(), 51);
        assert_eq!(rec.truncated_bytes, 0);
        let _ = std::fs::remove_dir_all(d);

        // Torn: the last record's frame cut short by zeros (its later pages never landed), its
        // start still zeros (an earlier page never landed), or one of its bytes damaged; the
        // zero tail after it.
        for torn in ["cut_short", "damaged_byte", "earlier_page_missing"] {
            let (d, _, opened) = open_damaged_tail(true, |b, offsets| {
                let last = offsets[49];
                let len = u32::from_le_bytes(b[last..last + 4].try_into().expect("4")) as usize;
                let frame_end = last + HEADER_BYTES + len;
                match torn {
                    "cut_short" => b[last + HEADER_BYTES + 2..frame_end].fill(0),
                    "earlier_page_missing" => b[last..last + HEADER_BYTES + 2].fill(0),
                    _ => b[frame_end - 1] ^= 0x40,
                }
            });
            let (mut log, rec) = opened.expect(torn);
            assert_eq!(rec.records.len(), 49, "{torn}");
            assert!(rec.truncated_bytes > 0, "{torn}");
            log.append(&[record(60, Status::Committed)])
                .expect("append");
            drop(log);
            let (_, rec) = Log::open(&d, 3, Sync::Fsync).expect("reopen");
            assert_eq!(rec.records.len(), 50, "{torn}");
            assert_eq!(rec.truncated_bytes, 0, "{torn}");
            let _ = std::fs::remove_dir_all(d);
        }

        // Damage mid-file: a length now running into the zeros, a checksum flipped. Records
        // follow intact, so neither is a torn tail.
        for damage in ["length", "crc"] {
            let mut at = 0;
            let (d, bytes, opened) = open_damaged_tail(true, |b, offsets| {
                at = offsets[10];
                match damage {
                    "length" => b[at + 2] ^= 0x10, // +1 MiB: into the zero tail
                    _ => b[at + 5] ^= 0x01,
                }
            });
            let msg = opened.err().expect(damage).to_string();
            assert!(
                msg.contains(&format!("corrupt record at byte {at}")),
                "{msg}"
            );
            assert_eq!(std::fs::read(d.join(LOG_FILE)).expect("read"), bytes);
            let _ = std::fs::remove_dir_all(d);
        }
    }

    #[test]
    fn a_truncated_last_record_is_cut() {
        let (d, bytes, opened) = open_damaged(|b, offsets| {
            let last = offsets[49];
            b.truncate(last + HEADER_BYTES + 3);
        });
        let (_, rec) = opened.expect("a torn tail is cut, not refused");
        assert_eq!(rec.records.len(), 49);
        assert_eq!(rec.truncated_bytes, HEADER_BYTES as u64 + 3);
        assert!(std::fs::read(d.join(LOG_FILE)).expect("read").len() < bytes.len());
        let _ = std::fs::remove_dir_all(d);
    }

    /// One flipped bit in a length field mid-file once made the rest of the log look like one
    /// record running past the end: it was cut as a torn tail, silently dropping 39 records.
    #[test]
    fn a_flipped_length_bit_mid_file_refuses_to_start() {
        let mut at = 0;
        let (d, bytes, opened) = open_damaged(|b, offsets| {
            at = offsets[10];
            b[at + 2] ^= 0x10; // +1 MiB: the record now runs past the end of the file
        });
        let err = opened.err().expect("must refuse, not cut");
        let msg = err.to_string();
        assert!(
            msg.contains(&format!("corrupt record at byte {at}")),
            "{msg}"
        );
        assert!(msg.contains(LOG_FILE), "names the file: {msg}");
        assert!(msg.contains("runs past the end"), "{msg}");
        assert_eq!(
            std::fs::read(d.join(LOG_FILE)).expect("read"),
            bytes,
            "the log is left as it was"
        );
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_flipped_crc_mid_file_refuses_to_start() {
        let mut at = 0;
        let (d, bytes, opened) = open_damaged(|b, offsets| {
            at = offsets[25];
            b[at + 5] ^= 0x01;
        });
        let msg = opened.err().expect("must refuse").to_string();
        assert!(
            msg.contains(&format!("corrupt record at byte {at}")),
            "{msg}"
        );
        assert!(msg.contains("checksum mismatch"), "{msg}");
        assert_eq!(std::fs::read(d.join(LOG_FILE)).expect("read"), bytes);
        let _ = std::fs::remove_dir_all(d);
    }

    #[test]
    fn a_checkpoint_written_off_the_loop_keeps_what_was_appended_meanwhile() {
        use crate::core::checkpoint::Checkpoint;
        use crate::core::deps::ConflictIndex;
        use crate::core::kv::KvStore;
        let cp = Checkpoint {
            configurations: Default::default(),
            kv: KvStore::new(),
            index: ConflictIndex::new(3),
            gc_prefix: vec![0, 40, 0],
            executed_above: vec![],
            next_slot: 0,
        };
        for finish in [true, false] {
            let d = dir();
            let (mut log, _) = Log::open(&d, 3, Sync::Fsync).expect("open");
            let many: Vec<_> = (0..45).map(|s| record(s, Status::Committed)).collect();
            log.append(&many).expect("append");
            let live: Vec<_> = (40..45).map(|s| record(s, Status::Committed)).collect();
            let job = log.start_checkpoint(cp.encode(), live);
            // The event loop goes on appending while the job runs.
            let meanwhile = [
                record(45, Status::PreAccepted),
                record(46, Status::Committed),
            ];
            log.append(&meanwhile).expect("append meanwhile");
            let prepared = job().expect("checkpoint job");
            if finish {
                log.finish_checkpoint(prepared, &meanwhile).expect("finish");
                log.append(&[record(45, Status::Committed)])
                    .expect("append after");
            }
            // else: a crash between the job and the cut (the new log never took the old one's
            // place): the old log is still whole beside the new checkpoint.
            drop(log);
            let (_, rec) = Log::open(&d, 3, Sync::Fsync).expect("reopen");
            assert_eq!(
                rec.checkpoint.as_ref().expect("checkpoint").gc_prefix,
                vec![0, 40, 0]
            );
            let mut expected: Vec<(u64, Status)> = if finish {
                (40..45).map(|s| (s, Status::Committed)).collect()
            } else {
                (0..45).map(|s| (s, Status::Committed)).collect()
            };
            expected.push((45, Status::PreAccepted));
            expected.push((46, Status::Committed));
            if finish {
                expected.push((45, Status::Committed));
            }
            assert_eq!(ids(&rec), expected, "finish={finish}");
            assert!(
                !d.join("instances.log.tmp").exists(),
                "leftover removed at open"
            );
            let _ = std::fs::remove_dir_all(d);
        }
    }

    fn empty_checkpoint() -> Vec<u8> {
        use crate::core::checkpoint::Checkpoint;
        use crate::core::deps::ConflictIndex;
        use crate::core::kv::KvStore;
        Checkpoint {
            configurations: Default::default(),
            kv: KvStore::new(),
            index: ConflictIndex::new(3),
            gc_prefix: vec![0, 3, 0],
            executed_above: vec![],
            next_slot: 0,
        }
        .encode()
    }

    /// A data directory with a checkpoint and records after it.
    fn checkpointed_dir() -> PathBuf {
        let d = dir();
        let (mut log, _) = Log::open(&d, 3, Sync::Fsync).expect("open");
        log.append(&[record(0, Status::Committed), record(1, Status::Committed)])
            .expect("append");
        log.checkpoint(&empty_checkpoint(), &[record(2, Status::Committed)])
            .expect("checkpoint");
        log.append(&[record(3, Status::Committed)]).expect("append");
        Metadata::open(&d, ReplicaId(0), 3).expect("metadata");
        d
    }

    fn refusal(d: &Path) -> String {
        match Log::open(d, 3, Sync::Fsync) {
            Ok(_) => panic!("started on partial state"),
            Err(e) => e.to_string(),
        }
    }

    /// A deleted checkpoint (log kept) once started with an empty key/value state, silently.
    #[test]
    fn a_deleted_checkpoint_refuses_to_start() {
        let d = checkpointed_dir();
        let (_, rec) = Log::open(&d, 3, Sync::Fsync).expect("complete directory");
        assert!(rec.checkpoint.is_some());
        std::fs::remove_file(d.join(CHECKPOINT_FILE)).expect("delete checkpoint");
        let msg = refusal(&d);
        assert!(msg.contains("checkpoint is missing"), "{msg}");
        assert!(msg.contains("generation 1"), "{msg}");
        assert!(
            msg.contains("rejoins from a peer"),
            "says how to recover: {msg}"
        );
        let _ = std::fs::remove_dir_all(d);
    }

    /// An emptied or deleted log (checkpoint kept) once started behind, silently; so did a
    /// deleted log with no checkpoint yet.
    #[test]
    fn an_emptied_or_deleted_log_refuses_to_start() {
        for how in ["emptied", "deleted"] {
            let d = checkpointed_dir();
            let log = d.join(LOG_FILE);
            match how {
                "emptied" => std::fs::write(&log, b"").expect("empty"),
                _ => std::fs::remove_file(&log).expect("delete"),
            }
            let msg = refusal(&d);
            assert!(
                msg.contains("instances.log is missing or empty"),
                "{how}: {msg}"
            );
            assert!(
                msg.contains("checkpoint (generation 1) exists"),
                "{how}: {msg}"
            );
            // Refusing changed nothing: it refuses again.
            assert!(refusal(&d).contains("missing or empty"));
            let _ = std::fs::remove_dir_all(d);
        }
        let d = dir();
        let (mut log, _) = Log::open(&d, 3, Sync::Fsync).expect("open");
        log.append(&[record(0, Status::Committed)]).expect("append");
        Metadata::open(&d, ReplicaId(0), 3).expect("metadata");
        drop(log);
        std::fs::remove_file(d.join(LOG_FILE)).expect("delete");
        let msg = refusal(&d);
        assert!(msg.contains("(incarnation) file shows"), "{msg}");
        let _ = std::fs::remove_dir_all(d);
    }

    /// Two crashes in a row, each between a checkpoint's rename and the log's: the second
    /// checkpoint rewrites the generation the first left one ahead of the log, so the
    /// directory opens after each (it once numbered from the checkpoint and refused).
    #[test]
    fn checkpoints_interrupted_twice_before_the_log_cut_still_open() {
        let d = checkpointed_dir();
        for round in 0..3 {
            let (log, rec) = Log::open(&d, 3, Sync::Fsync).expect("interrupted checkpoint opens");
            assert!(rec.checkpoint.is_some(), "round {round}");
            // The job renames the checkpoint into place and writes the new log beside the old
            // one; dropping it without `finish_checkpoint` is the crash before the log's rename.
            let job = log.start_checkpoint(empty_checkpoint(), Vec::new());
            let prepared = job().expect("checkpoint written");
            drop(prepared);
            drop(log);
        }
        let (mut log, rec) = Log::open(&d, 3, Sync::Fsync).expect("opens");
        assert!(
            rec.records.iter().any(|(id, _)| id.slot == 3),
            "the old log's records are all still there"
        );
        log.checkpoint(&empty_checkpoint(), &[])
            .expect("a whole checkpoint");
        drop(log);
        Log::open(&d, 3, Sync::Fsync).expect("opens after a whole one");
        let _ = std::fs::remove_dir_all(d);
    }

    /// A checkpoint from another generation than the log's (an old copy put back).
    #[test]
    fn a_checkpoint_of_another_generation_refuses_to_start() {
        let d = checkpointed_dir();
        let old = std::fs::read(d.join(CHECKPOINT_FILE)).expect("read");
        let (mut log, _) = Log::open(&d, 3, Sync::Fsync).expect("open");
        for _ in 0..2 {
            log.checkpoint(&empty_checkpoint(), &[])
                .expect("checkpoint");
        }
        drop(log);
        std::fs::write(d.join(CHECKPOINT_FILE), old).expect("put the old one back");
        let msg = refusal(&d);
        assert!(
            msg.contains("checkpoint is generation 1, not 3 or 4"),
            "{msg}"
        );
        let _ = std::fs::remove_dir_all(d);
    }

    /// A log and a checkpoint written before headers and generations existed still open.
    #[test]
    fn a_log_and_checkpoint_from_before_generations_still_open() {
        let d = checkpointed_dir();
        let bytes = std::fs::read(d.join(LOG_FILE)).expect("read");
        std::fs::write(d.join(LOG_FILE), &bytes[LOG_HEADER_BYTES..]).expect("legacy log");
        let ck = std::fs::read(d.join(CHECKPOINT_FILE)).expect("read");
        let payload = &ck[CHECKPOINT_HEADER_BYTES..];
        let mut legacy = (payload.len() as u32).to_le_bytes().to_vec();
        legacy.extend_from_slice(&crc32c::crc32c(payload).to_le_bytes());
        legacy.extend_from_slice(payload);
        std::fs::write(d.join(CHECKPOINT_FILE), legacy).expect("legacy checkpoint");
        let (mut log, rec) = Log::open(&d, 3, Sync::Fsync).expect("legacy opens");
        assert!(rec.checkpoint.is_some());
        assert_eq!(
            ids(&rec),
            vec![(2, Status::Committed), (3, Status::Committed)]
        );
        // The next checkpoint writes both with a generation.
        log.checkpoint(&empty_checkpoint(), &[])
            .expect("checkpoint");
        drop(log);
        std::fs::remove_file(d.join(CHECKPOINT_FILE)).expect("delete");
        assert!(refusal(&d).contains("checkpoint is missing"));
        let _ = std::fs::remove_dir_all(d);
    }

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path)
            .expect("metadata")
            .permissions()
            .mode()
            & 0o777
    }

    /// Values are user data: no other local user may read them (files were 0644 in 0755).
    #[test]
    fn the_data_directory_is_private_and_every_file_0600() {
        use crate::core::checkpoint::Checkpoint;
        use crate::core::deps::ConflictIndex;
        use crate::core::kv::KvStore;
        let parent = dir();
        let d = parent.join("replica-0");
        let (mut log, _) = Log::open(&d, 3, Sync::Fsync).expect("open");
        log.append(&[record(0, Status::Committed)]).expect("append");
        let cp = Checkpoint {
            configurations: Default::default(),
            kv: KvStore::new(),
            index: ConflictIndex::new(3),
            gc_prefix: vec![0, 1, 0],
            executed_above: vec![],
            next_slot: 0,
        };
        let prepared = log.start_checkpoint(cp.encode(), vec![])().expect("prepare");
        assert_eq!(mode(&d.join("instances.log.tmp")), 0o600, "temporary log");
        log.finish_checkpoint(prepared, &[]).expect("finish");
        Metadata::open(&d, ReplicaId(0), 3)
            .expect("metadata")
            .store_peers(&[None, Incarnation::new(9), None])
            .expect("peers");
        assert_eq!(mode(&d), 0o700, "data directory");
        let written = [LOG_FILE, CHECKPOINT_FILE, METADATA_FILE];
        for name in written {
            assert_eq!(mode(&d.join(name)), 0o600, "{name}");
        }
        // A directory left wide open (by an earlier version, or by hand) is tightened at open.
        drop(log);
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        for name in written {
            std::fs::set_permissions(d.join(name), std::fs::Permissions::from_mode(0o644))
                .expect("chmod");
        }
        Log::open(&d, 3, Sync::Fsync).expect("reopen");
        assert_eq!(mode(&d), 0o700, "data directory tightened");
        for name in written {
            assert_eq!(mode(&d.join(name)), 0o600, "{name} tightened");
        }
        let _ = std::fs::remove_dir_all(parent);
    }
}
