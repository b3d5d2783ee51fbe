//! The runtime: the thin async shell around the protocol core.
//!
//! - gRPC handlers decode and validate, then push one [`Event`] into `bigChannel` (bounded).
//! - One event loop task owns the [`Replica`] and nothing else touches it: it takes an event,
//!   drains whatever else is already queued (up to [`DRAIN_MAX`]), stamps `now`, feeds the core,
//!   calls `flush` (which is what batches the drained proposals into one instance) and then
//!   carries out the core's [`Ready`] in order: encode each message once and hand the bytes to
//!   each addressee's bounded queue, answer clients, update metrics.
//! - One link task per peer (see `transport`) writes that peer's queue onto its stream.
//!
//! No locks guard protocol state: it lives on one task.
//!
//! Files: `serve` (starting a replica and the tasks that run until shutdown), `event_loop` (the
//! loop and how it carries out the core's output), `service` (the `Kv` and `Peer` gRPC
//! services), `options` (the shell's options, validated together with the core's); here, the
//! [`Event`]s that go through bigChannel and the errors that stop a replica.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit, Semaphore};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};

use crate::core::command::{Command, OpResult};
use crate::core::epoch::Change;
use crate::core::ids::{ClientId, Incarnation, InstanceId, ReplicaId, RequestId};
use crate::core::instance::Instance;
use crate::core::membership::{JoinAnswer, Membership};
use crate::core::message::{Message, Show, ShowDeps};
use crate::core::node::{self, Node, Refusal, Restored};
use crate::core::replica::{Options, Path, Ready, ReconfigureRefusal, ReplyError, Token};
use crate::core::wire;
use crate::proto::kv_server::{Kv, KvServer};
use crate::proto::peer_server::{Peer, PeerServer};
use crate::proto::{self, DispatchAck, PeerBatch, ProposeReply, ProposeRequest};
use crate::server::config::{Config, HostPort};
use crate::server::health::{self, Health};
use crate::server::metrics::LoopMetrics;
use crate::server::queue::{byte_queue, ByteSender};
use crate::server::storage::{self, Log, StorageError, Sync};
use crate::server::{admission, incoming, join, tls, transport};

/// How long a stopping replica waits for in-flight calls.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(500);

use crate::core::limits::{self, DRAIN_MAX};

mod event_loop;
mod links;
mod options;
mod serve;
mod service;

use event_loop::*;
pub use options::{RuntimeOptions, RuntimeOptionsError};
pub use serve::serve;
use service::*;

/// Why the replica could not run.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The data directory was written by a cluster of another size than the config's.
    #[error(
        "{dir}: this data directory belongs to a cluster of {recorded} replicas, but the \
         configuration lists {configured}; the cluster size cannot change on existing data \
         (use the old configuration, or start every replica on an empty data directory)"
    )]
    ClusterSize {
        dir: String,
        recorded: usize,
        configured: usize,
    },
    /// The configuration the data directory recorded cannot run here.
    #[error("{0}")]
    Members(String),
    /// The metrics endpoint could not start (address in use?).
    #[error("cannot start metrics endpoint on {0}: {1}")]
    Metrics(SocketAddr, String),
    /// The gRPC server's address could not be bound (in use?).
    #[error("cannot listen on {0}: {1}")]
    Bind(SocketAddr, std::io::Error),
    /// A listen address (a host name) could not be resolved, or bound at none of its
    /// addresses.
    #[error("cannot listen on {0}: {1}")]
    Listen(String, String),
    /// The gRPC server failed.
    #[error("gRPC server on {0}: {1}")]
    Server(SocketAddr, tonic::transport::Error),
    /// The reflection service could not be built.
    #[error("reflection: {0}")]
    Reflection(String),
    /// Certificates missing or unusable.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// tonic refused the TLS settings.
    #[error("TLS settings of the {0} listener: {1}")]
    TlsConfig(&'static str, tonic::transport::Error),
    /// Invalid options.
    #[error(transparent)]
    Options(#[from] RuntimeOptionsError),
    /// The durable log could not be opened or written.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// The thread writing a checkpoint failed.
    #[error("checkpoint writer failed: {0}")]
    CheckpointTask(String),
}

/// What the handlers put into bigChannel.
pub enum Event {
    /// A client's command and where its answer goes.
    Propose {
        cmd: Command,
        reply: oneshot::Sender<Result<OpResult, Status>>,
        at: Instant,
        /// Its share of bigChannel's byte budget, returned once the event is handled.
        budget: OwnedSemaphorePermit,
    },
    /// An admin's membership change (`MemberRemove`); answered like a client's command, with
    /// the new epoch in `OpResult::value` once it executed.
    Reconfigure {
        change: Change,
        reply: oneshot::Sender<Result<OpResult, Status>>,
        at: Instant,
    },
    /// Messages from one peer (sent by its incarnation `incarnation`), decoded and validated.
    Peer {
        from: ReplicaId,
        incarnation: Incarnation,
        messages: Vec<Message>,
        /// Some of its messages named a row this replica does not know (dropped): the peer
        /// executed a change adding an id that this replica has not executed yet.
        behind: bool,
        /// Its share of bigChannel's byte budget, returned once the event is handled.
        budget: OwnedSemaphorePermit,
    },
    /// A status query.
    Status {
        reply: oneshot::Sender<proto::StatusReply>,
    },
    /// A peer with a new data directory announces itself (see `join`).
    Join {
        from: ReplicaId,
        incarnation: Option<Incarnation>,
        reply: oneshot::Sender<Result<proto::JoinReply, Status>>,
    },
    /// A joining peer asks for a snapshot: the encoded `proto::Snapshot`.
    Snapshot {
        from: ReplicaId,
        incarnation: Option<Incarnation>,
        reply: oneshot::Sender<Result<Vec<u8>, Status>>,
    },
    /// This replica's own join is decided.
    Joined(Box<join::Joined>),
    /// A peer answered this replica's Join from a later configuration than config.json's: the
    /// event loop adopts it (made durable first), or stops the replica if it is not a member.
    LaterConfiguration(Box<crate::server::members::Members>),
    /// The snapshot this replica, left behind by its peers' collection, fetched.
    CaughtUp(Box<join::Snapshot>),
}

/// The rows the data directory's log and metadata are read with: config.json's `n`, or more
/// where the cluster's decided configurations added ids (a replica restarted after a grow
/// starts with its config.json unchanged). Refuses a data directory whose metadata records
/// another number of replicas that no decided configuration explains: fewer than `n`, or more
/// while still in epoch 0 (the log and checkpoint would otherwise be reported as corrupt, or
/// read as another cluster's).
fn check_cluster_size(dir: &std::path::Path, n: usize) -> Result<usize, RuntimeError> {
    match storage::recorded_size_and_epoch(dir)? {
        Some((recorded, epoch))
            if recorded > n && epoch > 0 && recorded <= limits::MEMBERS_EVER_MAX =>
        {
            Ok(recorded)
        }
        Some((recorded, _)) if recorded != n => Err(RuntimeError::ClusterSize {
            dir: dir.display().to_string(),
            recorded,
            configured: n,
        }),
        _ => Ok(n),
    }
}

/// Bytes in the files of `dir` and its subdirectories (0 for what cannot be read).
fn dir_bytes(dir: &std::path::Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.metadata() {
            Ok(m) if m.is_dir() => dir_bytes(&e.path()),
            Ok(m) => m.len(),
            Err(_) => 0,
        })
        .sum()
}

/// Closes a stream whose batches carry no incarnation, or another one than the node recorded
/// for their sender. The node decides (`Node::hear`, in order with Joins, recording a first
/// one); this is its decision mirrored, so that a replaced incarnation learns at once that it
/// is refused.
fn check_incarnation(
    accepted: &[AtomicU64],
    from: ReplicaId,
    incarnation: u64,
) -> Result<Incarnation, Status> {
    let refuse = |why: String| {
        metrics::counter!("epaxos_peer_refused_total", "peer" => crate::server::metrics::peer_label(from.0))
            .increment(1);
        Err(Status::failed_precondition(why))
    };
    let Some(incarnation) = Incarnation::new(incarnation) else {
        metrics::counter!("epaxos_wire_errors_total", "peer" => crate::server::metrics::peer_label(from.0))
            .increment(1);
        tracing::warn!(%from, "peer batch without an incarnation; closing stream");
        return refuse("batch without an incarnation".to_string());
    };
    let recorded = accepted
        .get(from.index())
        .map_or(0, |a| a.load(Ordering::Relaxed));
    if recorded != 0 && recorded != incarnation.get() {
        tracing::error!(%from, %incarnation, recorded,
            "batch from a replaced incarnation of a peer (it lost its data and another \
             incarnation joined in its place): refused");
        return refuse(format!(
            "{from} is incarnation {incarnation} but {recorded} joined in its place: an \
             incarnation that lost its data directory may have forgotten promises; restart the \
             replica on an empty data directory to join again"
        ));
    }
    Ok(incarnation)
}

/// A Join's answer on the wire, with the configuration this replica acts in (a joiner with a
/// stale config.json learns the current one from it).
fn join_reply(a: JoinAnswer, members: &crate::server::members::Members) -> proto::JoinReply {
    proto::JoinReply {
        previous_incarnation: a.previous.map_or(0, Incarnation::get),
        row_ends: a.row_ends,
        executed_prefix: a.executed_prefix,
        joining: a.joining,
        epoch: members.epoch(),
        members: members.to_proto(),
    }
}

/// The wall clock in Unix milliseconds, for the core (which reads no clock): commands are
/// stamped with it and sessions expire by it (see `core::session`). A clock before the epoch
/// reads as 0, which the core takes for "no clock" and then proposes no expiry.
fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::members::Members;

    /// The rows a data directory is opened with: config.json's n, or the recorded size where a
    /// decided configuration (epoch > 0) added ids; any other difference is refused.
    #[test]
    fn a_data_directory_has_more_rows_than_config_json_only_after_a_decided_change() {
        let d = std::env::temp_dir().join(format!("epaxos-rows-{}", rand::random::<u64>()));
        assert_eq!(check_cluster_size(&d, 3).expect("new"), 3);
        // Written for 4 rows in epoch 0: config.json's 3 is another cluster.
        let mut m = storage::Metadata::open(&d, ReplicaId(0), 4).expect("open");
        let refused = check_cluster_size(&d, 3).expect_err("4 rows in epoch 0");
        assert!(
            matches!(
                refused,
                RuntimeError::ClusterSize {
                    recorded: 4,
                    configured: 3,
                    ..
                }
            ),
            "{refused}"
        );
        // Epoch 1 added replica 3: 4 rows, with config.json's 3 unchanged.
        let member = |id: u32| {
            Members::member_from_parts(id, &format!("127.0.0.1:{}", 7170 + id), "127.0.0.1:1")
                .expect("valid")
        };
        let grown = Members::new(1, (0..4).map(member).collect()).expect("valid");
        m.store_configuration(&grown).expect("store");
        assert_eq!(check_cluster_size(&d, 3).expect("grown"), 4);
        // Fewer recorded rows than config.json lists is refused still.
        assert!(check_cluster_size(&d, 5).is_err());
        let _ = std::fs::remove_dir_all(&d);
    }
}
