//! The log writer: a dedicated thread that owns the writing and syncing of the log, so the
//! event loop goes on taking input and stepping the core while the disk syncs (pipelined
//! group commit).
//!
//! The loop hands each iteration's records over as one numbered *group* ([`Writer::submit`]:
//! the numbers grow by one) and goes on. The thread takes every group queued when it wakes,
//! writes them with one write and one fdatasync, and then publishes the highest group number it
//! made durable ([`Writer::durable`]); what the loop hands over meanwhile waits in the queue
//! and makes the next write. The log is written in the order groups were handed over, so
//! "group g is durable" means every record of groups up to g is.
//!
//! What this changes for a crash, and why nothing that matters is lost: the loop carries out an
//! iteration's outputs (the messages not marked early, replies, Join answers, Status and
//! Snapshot answers) only once its group and every earlier one are durable (see
//! `runtime::event_loop`). A crash (SIGKILL, power loss) at any moment therefore loses only
//! groups whose outputs no one outside has seen: as if it had struck, with the loop syncing
//! in place, before the events of those groups were handled. The early PreAccepts of new
//! instances leave at once, as before; the core bounds the own slots they put at stake by what
//! the loop reports durable ([`crate::core::node::Node::persisted_through`], with the
//! `slot_end` of the last `Ready` in a durable group), never by what it merely handed over.
//!
//! Bounds: at most [`WRITER_QUEUE_MAX`] groups and [`WRITER_QUEUE_BYTES_MAX`] bytes of records
//! (as framed) are handed over and not yet durable; past either, [`Writer::backlogged`] tells
//! the loop to take no events until the disk catches up (bigChannel then fills and pushes
//! back onto clients and peers).
//!
//! Disk errors: a full or read-only data directory blocks the writer (it retries every second,
//! one error line, one line when it serves again), and with it everything waiting for the
//! disk, as before; any other error stops the writer and the loop returns it (the replica
//! stops). Operations on the whole log (installing a snapshot, finishing a checkpoint) first
//! wait until every group handed over is durable ([`Writer::wait_idle`]), then run on the loop.

use std::collections::VecDeque;
use std::sync::mpsc::{self as std_mpsc, TryRecvError};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::core::ids::InstanceId;
use crate::core::instance::Instance;
use crate::core::limits::{WRITER_QUEUE_BYTES_MAX, WRITER_QUEUE_MAX};
use crate::server::storage::{Log, StorageError};

/// Records in the order the loop produced them.
pub type Records = Vec<(InstanceId, Instance)>;

/// One iteration's records, numbered.
struct Group {
    number: u64,
    records: Records,
}

/// The log and, once the thread stopped on an error, the error.
struct Shared {
    log: Log,
    failed: Option<StorageError>,
}

/// The event loop's handle on the log writer thread.
pub struct Writer {
    shared: Arc<Mutex<Shared>>,
    to_thread: Option<std_mpsc::SyncSender<Group>>,
    thread: Option<std::thread::JoinHandle<()>>,
    /// The highest group number the thread made durable (0: none yet), and whether it failed.
    progress: watch::Receiver<Progress>,
    /// The number of the last group handed over.
    submitted: u64,
    /// Groups handed over and not known durable: number and framed bytes (estimated).
    queued: VecDeque<(u64, usize)>,
    queued_bytes: usize,
}

/// What the writer thread publishes after each write.
#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    durable: u64,
    failed: bool,
}

/// Estimated framed bytes of a record: its commands' keys and values, plus a fixed overhead per
/// command, per dependency and per record (ids, ballots, framing). Cheap and never below the
/// commands' payload, which is what can be large.
fn record_bytes(inst: &Instance) -> usize {
    const RECORD_OVERHEAD: usize = 64;
    const PER_COMMAND: usize = 32;
    const PER_DEP: usize = 16;
    let deps = inst.deps.len() + inst.init_deps.as_ref().map_or(0, |d| d.len());
    RECORD_OVERHEAD
        + PER_DEP * deps
        + inst
            .commands
            .iter()
            .map(|c| PER_COMMAND + c.op.size_bytes())
            .sum::<usize>()
}

impl Writer {
    /// Starts the writer thread on `log`.
    pub fn start(log: Log) -> std::io::Result<Writer> {
        let shared = Arc::new(Mutex::new(Shared { log, failed: None }));
        // Bounded in groups here and in bytes by `backlogged`, which the loop checks before
        // it takes events (so `submit` never finds the channel full).
        let (to_thread, from_loop) = std_mpsc::sync_channel(WRITER_QUEUE_MAX);
        let (publish, progress) = watch::channel(Progress::default());
        let thread = std::thread::Builder::new()
            .name("log-writer".into())
            .spawn({
                let shared = shared.clone();
                move || write_groups(&shared, &from_loop, &publish)
            })?;
        Ok(Writer {
            shared,
            to_thread: Some(to_thread),
            thread: Some(thread),
            progress,
            submitted: 0,
            queued: VecDeque::new(),
            queued_bytes: 0,
        })
    }

    /// Hands an iteration's records to the thread; returns the group's number (the outputs
    /// that depend on them wait until [`Writer::durable`] reaches it). Without records nothing
    /// is handed over and the number is the last group's: outputs then wait for whatever is
    /// still on its way to the disk, which they may reveal.
    pub fn submit(&mut self, records: Records) -> u64 {
        if records.is_empty() {
            return self.submitted;
        }
        self.submitted += 1;
        let bytes = records.iter().map(|(_, i)| record_bytes(i)).sum::<usize>();
        self.queued.push_back((self.submitted, bytes));
        self.queued_bytes += bytes;
        let group = Group {
            number: self.submitted,
            records,
        };
        if let Some(tx) = &self.to_thread {
            // Full only if the loop took events while `backlogged`; it waits then (rare:
            // `block_in_place` hands the worker's other tasks to another thread). A closed
            // channel means the thread stopped on an error, which `changed` reports.
            if let Err(std_mpsc::TrySendError::Full(group)) = tx.try_send(group) {
                let _ = tokio::task::block_in_place(|| tx.send(group));
            }
        }
        self.submitted
    }

    /// The number of the last group handed over.
    pub fn submitted(&self) -> u64 {
        self.submitted
    }

    /// The highest group number known durable.
    pub fn durable(&self) -> u64 {
        self.progress.borrow().durable
    }

    /// Whether the loop should take no events until the disk catches up.
    pub fn backlogged(&self) -> bool {
        self.queued.len() + 1 >= WRITER_QUEUE_MAX || self.queued_bytes >= WRITER_QUEUE_BYTES_MAX
    }

    /// Waits until the thread made another group durable; returns the highest durable number,
    /// or the error that stopped the thread. Cancel-safe (a `select!` branch).
    pub async fn changed(&mut self) -> Result<u64, StorageError> {
        if self.progress.changed().await.is_err() || self.progress.borrow().failed {
            return Err(self.failure());
        }
        let durable = self.progress.borrow_and_update().durable;
        while self.queued.front().is_some_and(|(g, _)| *g <= durable) {
            let (_, bytes) = self.queued.pop_front().expect("front checked");
            self.queued_bytes -= bytes;
        }
        Ok(durable)
    }

    /// Whether every group handed over is durable.
    pub fn idle(&self) -> bool {
        self.durable() >= self.submitted
    }

    /// Waits until every group handed over is durable: then, until the next `submit`, the
    /// log holds everything and the thread writes nothing to it but zeros ahead of the records
    /// (harmless to any operation on the whole log: installing a snapshot, finishing a
    /// checkpoint, which run on the loop through [`Writer::with_log`]).
    pub async fn wait_idle(&mut self) -> Result<(), StorageError> {
        while !self.idle() {
            self.changed().await?;
        }
        Ok(())
    }

    /// Runs `f` on the log (it may wait for the thread to finish the write in progress).
    pub fn with_log<T>(&self, f: impl FnOnce(&mut Log) -> T) -> T {
        tokio::task::block_in_place(|| f(&mut self.lock().log))
    }

    /// Bytes of the log's records now (for `epaxos_log_bytes`).
    pub fn len_bytes(&self) -> u64 {
        self.lock().log.len_bytes()
    }

    fn lock(&self) -> MutexGuard<'_, Shared> {
        self.shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// The error that stopped the thread.
    fn failure(&self) -> StorageError {
        self.lock()
            .failed
            .take()
            .unwrap_or_else(|| StorageError::Io {
                path: std::path::PathBuf::from("<log writer>"),
                source: std::io::Error::other("the log writer thread stopped"),
            })
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        // Closing the channel ends the thread once it wrote what was handed over.
        self.to_thread = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The writer thread: takes every group queued, writes and syncs them at once, publishes the
/// last number; then, between groups, keeps zeros written ahead of the records (see `Log`).
fn write_groups(
    shared: &Mutex<Shared>,
    from_loop: &std_mpsc::Receiver<Group>,
    publish: &watch::Sender<Progress>,
) {
    let fsync_latency = metrics::histogram!("epaxos_fsync_seconds");
    let persisted = metrics::counter!("epaxos_persisted_records_total");
    let log_bytes = metrics::gauge!("epaxos_log_bytes");
    let lock = || {
        shared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    };
    let mut next: Option<Group> = None;
    // Zeros are not tried again before the log grows past this after a full disk refused them.
    let mut zeros_after: u64 = 0;
    loop {
        let first = match next.take() {
            Some(g) => g,
            None => match from_loop.recv() {
                Ok(g) => g,
                Err(_) => return, // the loop ended
            },
        };
        let mut number = first.number;
        let mut records = first.records;
        let mut bytes = 0usize;
        while bytes < WRITER_QUEUE_BYTES_MAX {
            match from_loop.try_recv() {
                Ok(g) => {
                    number = g.number;
                    bytes += g
                        .records
                        .iter()
                        .map(|(_, i)| record_bytes(i))
                        .sum::<usize>();
                    records.extend(g.records);
                }
                Err(_) => break,
            }
        }
        let started = Instant::now();
        match write_until(|| lock().log.append(&records)) {
            Ok(()) => {}
            Err(e) => {
                tracing::error!(error = %e, "cannot persist; stopping the replica");
                lock().failed = Some(e);
                publish.send_modify(|p| p.failed = true);
                return;
            }
        }
        fsync_latency.record(started.elapsed().as_secs_f64());
        persisted.increment(records.len() as u64);
        publish.send_modify(|p| p.durable = number);
        drop(records);
        // Off the critical path of the group just reported: its outputs are on their way.
        let mut log = lock();
        log_bytes.set(log.log.len_bytes() as f64);
        if log.log.len_bytes() >= zeros_after {
            if let Err(e) = log.log.preallocate() {
                zeros_after = log.log.len_bytes() + crate::core::limits::LOG_SEGMENT_BYTES as u64;
                tracing::debug!(error = %e, "cannot write zeros ahead of the log's records");
            }
        }
        drop(log);
        match from_loop.try_recv() {
            Ok(g) => next = Some(g),
            Err(TryRecvError::Empty) => {}
            Err(TryRecvError::Disconnected) => return,
        }
    }
}

/// Runs `write` (a blocking write to the data directory; it leaves the files as they were when
/// it fails) until it succeeds. While the data directory is full or read-only it waits here:
/// nothing that needs the write is acknowledged (clients and peers queue, then time out), one
/// error line says why, and one line says when the replica serves again. Any other error is
/// returned: the replica stops.
pub fn write_until<T>(
    mut write: impl FnMut() -> Result<T, StorageError>,
) -> Result<T, StorageError> {
    let mut blocked_since: Option<Instant> = None;
    loop {
        match write() {
            Ok(v) => {
                if let Some(since) = blocked_since {
                    metrics::gauge!("epaxos_storage_blocked").set(0.0);
                    tracing::info!(
                        blocked_ms = since.elapsed().as_millis() as u64,
                        "data directory writable again: serving"
                    );
                }
                return Ok(v);
            }
            Err(e) if e.is_out_of_space() => {
                if blocked_since.is_none() {
                    blocked_since = Some(Instant::now());
                    metrics::gauge!("epaxos_storage_blocked").set(1.0);
                    tracing::error!(error = %e,
                        "cannot write the data directory (full or read-only): acknowledging \
                         nothing that needs a write until it can; retrying every second");
                }
                std::thread::sleep(STORAGE_RETRY);
            }
            Err(e) => return Err(e),
        }
    }
}

/// How often a write the data directory refused for lack of space (or a read-only remount) is
/// tried again.
const STORAGE_RETRY: Duration = Duration::from_secs(1);
