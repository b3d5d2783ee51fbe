//! Joining: what a replica whose data directory is new does before it takes part.
//!
//! It asks every peer `Join` (with backoff, each call with a timeout) and decides:
//! - **fresh**: no peer that answered ever knew an incarnation of this replica, and with this
//!   replica they make a majority. It starts empty (a new cluster, or a replica added before it
//!   ever spoke). A peer that did know an old incarnation but is down now still refuses this
//!   one when it comes back (the incarnation fence), so nothing it forgot is voted on.
//! - **rejoin**: some peer knew an incarnation of it (its data was lost, or an earlier join was
//!   interrupted). It waits until *every* peer answered: each answer fences the old incarnation
//!   at that peer and tells how far each row reaches there, and the horizons (the per-row
//!   maximum) bound every instance the old incarnation may have voted on only if they come from
//!   all peers. It then fetches a snapshot from the peer that executed most, and the event loop
//!   installs it (see `Replica` "rejoin" for the rules the horizons impose).

use std::time::Duration;

use tonic::transport::Endpoint;

use crate::core::checkpoint::Checkpoint;
use crate::core::ids::{InstanceId, ReplicaId};
use crate::core::instance::Instance;
use crate::core::wire;
use crate::proto::kv_client::KvClient;
use crate::proto::{self, JoinReply, JoinRequest, SnapshotRequest};
use crate::server::config::Config;
use crate::server::transport::GRPC_MESSAGE_BYTES_MAX;

/// Largest snapshot accepted (the checkpoint's own limit plus room for the records).
pub const SNAPSHOT_BYTES_MAX: usize = u32::MAX as usize;
/// Bytes per chunk of a snapshot stream.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// A snapshot transfer may take long for a big state; this bounds a stuck one.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(300);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(1);
/// How often the wait for peers is reported in the log.
const REPORT_EVERY: Duration = Duration::from_secs(5);

/// What joining decided.
pub struct Joined {
    /// Per row: below this the replica abstains (zeros when fresh).
    pub horizons: Vec<u64>,
    /// The state to start from (none when fresh).
    pub snapshot: Option<Snapshot>,
}

/// A peer's state, received.
pub struct Snapshot {
    /// The peer it came from.
    pub from: ReplicaId,
    pub checkpoint: Checkpoint,
    /// Decided instances beside the checkpoint.
    pub records: Vec<(InstanceId, Instance)>,
}

/// Runs the join of replica `me` (incarnation `incarnation`) until it is decided.
/// `interrupted`: an earlier join of this data directory did not finish, so it is a rejoin
/// whatever the peers answer. Retries for as long as it takes (peers may be down): the
/// replica takes part in nothing meanwhile, which is the safe way to wait.
pub async fn run(config: &Config, me: ReplicaId, incarnation: u64, interrupted: bool) -> Joined {
    let n = config.n();
    let mut answers: Vec<Option<JoinReply>> = vec![None; n];
    let mut backoff = BACKOFF_MIN;
    let mut reported = tokio::time::Instant::now();
    loop {
        for peer in &config.replicas {
            if peer.id == me || answers[peer.id.index()].is_some() {
                continue;
            }
            let request = JoinRequest {
                from: me.0,
                incarnation,
            };
            match call(peer.addr, |mut c| async move { c.join(request).await }).await {
                Ok(reply) if reply.row_ends.len() == n && reply.executed_prefix.len() == n => {
                    tracing::info!(peer = %peer.id, known = reply.previous_incarnation != 0,
                        "peer answered join");
                    answers[peer.id.index()] = Some(reply);
                }
                Ok(_) => tracing::warn!(peer = %peer.id, "malformed join answer; asking again"),
                Err(e) => tracing::debug!(peer = %peer.id, error = %e, "join not answered"),
            }
        }
        let answered: Vec<&JoinReply> = answers.iter().flatten().collect();
        let knew_me = interrupted || answered.iter().any(|a| a.previous_incarnation != 0);
        if !knew_me && answered.len() + 1 >= crate::core::quorum::slow_quorum(n) {
            tracing::info!(answered = answered.len(), "joining as a new replica");
            return Joined {
                horizons: vec![0; n],
                snapshot: None,
            };
        }
        if knew_me && answered.len() == n - 1 {
            let mut horizons = vec![0; n];
            for a in &answered {
                for (h, e) in horizons.iter_mut().zip(&a.row_ends) {
                    *h = (*h).max(*e);
                }
            }
            if let Some(snapshot) = fetch_best(config, me, incarnation, &answers).await {
                return Joined {
                    horizons,
                    snapshot: Some(snapshot),
                };
            }
            // No snapshot could be had: ask everyone again (their state moved on anyway).
            answers.iter_mut().for_each(|a| *a = None);
        }
        if reported.elapsed() >= REPORT_EVERY {
            reported = tokio::time::Instant::now();
            let missing: Vec<String> = config
                .replicas
                .iter()
                .filter(|p| p.id != me && answers[p.id.index()].is_none())
                .map(|p| p.id.to_string())
                .collect();
            tracing::warn!(
                missing = missing.join(","),
                rejoin = knew_me,
                "joining: waiting for peers to answer (a replica that lost its data waits for \
                 every peer, a new one for a majority)"
            );
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// Fetches a snapshot from the peer that executed most (then the others), skipping peers
/// that are joining themselves.
async fn fetch_best(
    config: &Config,
    me: ReplicaId,
    incarnation: u64,
    answers: &[Option<JoinReply>],
) -> Option<Snapshot> {
    let mut sources: Vec<(u64, ReplicaId)> = answers
        .iter()
        .enumerate()
        .filter_map(|(i, a)| a.as_ref().map(|a| (i, a)))
        .filter(|(_, a)| !a.joining)
        .map(|(i, a)| (a.executed_prefix.iter().sum(), ReplicaId(i as u32)))
        .collect();
    sources.sort_unstable_by(|a, b| b.cmp(a));
    for (_, peer) in sources {
        let addr = config.replicas[peer.index()].addr;
        let started = tokio::time::Instant::now();
        match tokio::time::timeout(SNAPSHOT_TIMEOUT, fetch(addr, me, incarnation, config.n())).await
        {
            Ok(Ok((mut snapshot, bytes))) => {
                tracing::info!(%peer, bytes, records = snapshot.records.len(),
                    ms = started.elapsed().as_millis() as u64, "snapshot received");
                snapshot.from = peer;
                return Some(snapshot);
            }
            Ok(Err(e)) => tracing::warn!(%peer, error = %e, "snapshot failed; trying another"),
            Err(_) => tracing::warn!(%peer, "snapshot timed out; trying another"),
        }
    }
    None
}

/// Why a snapshot could not be had.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Call(#[from] tonic::Status),
    #[error("cannot connect: {0}")]
    Connect(#[from] tonic::transport::Error),
    #[error("snapshot larger than {SNAPSHOT_BYTES_MAX} bytes")]
    TooLarge,
    #[error("bad snapshot: {0}")]
    Invalid(#[from] wire::WireError),
    #[error("bad snapshot: {0}")]
    Decode(#[from] prost::DecodeError),
    #[error("bad snapshot: {0} is not committed")]
    Undecided(InstanceId),
}

async fn fetch(
    addr: std::net::SocketAddr,
    me: ReplicaId,
    incarnation: u64,
    n: usize,
) -> Result<(Snapshot, usize), SnapshotError> {
    use prost::Message as _;
    let mut client = connect(addr).await?;
    let mut stream = client
        .snapshot(SnapshotRequest {
            from: me.0,
            incarnation,
        })
        .await?
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.message().await? {
        if bytes.len() + chunk.data.len() > SNAPSHOT_BYTES_MAX {
            return Err(SnapshotError::TooLarge);
        }
        bytes.extend_from_slice(&chunk.data);
    }
    let snapshot = proto::Snapshot::decode(bytes.as_slice())?;
    let checkpoint = Checkpoint::decode(&snapshot.checkpoint, n)?;
    let mut records = Vec::with_capacity(snapshot.records.len());
    for r in snapshot.records {
        let (id, inst) = wire::record_from_proto(r, n)?;
        if !inst.status.is_decided() {
            return Err(SnapshotError::Undecided(id));
        }
        records.push((id, inst));
    }
    let snapshot = Snapshot {
        from: me,
        checkpoint,
        records,
    };
    Ok((snapshot, bytes.len()))
}

async fn connect(
    addr: std::net::SocketAddr,
) -> Result<KvClient<tonic::transport::Channel>, tonic::transport::Error> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .expect("a socket address makes a valid URI")
        .connect_timeout(CALL_TIMEOUT)
        .connect()
        .await?;
    Ok(KvClient::new(channel)
        .max_decoding_message_size(GRPC_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(GRPC_MESSAGE_BYTES_MAX))
}

/// One unary call with a fresh connection and a timeout.
async fn call<T, F, Fut>(addr: std::net::SocketAddr, f: F) -> Result<T, String>
where
    F: FnOnce(KvClient<tonic::transport::Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let client = connect(addr).await.map_err(|e| e.to_string())?;
    match tokio::time::timeout(CALL_TIMEOUT, f(client)).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(status)) => Err(status.to_string()),
        Err(_) => Err("timed out".to_string()),
    }
}
