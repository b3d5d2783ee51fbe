//! Joining, the shell's part: asking every peer `Join` (with backoff, each call with a
//! timeout) and fetching a snapshot. What the answers mean, and what the replica then does,
//! is decided in the core ([`Joiner`], `Node::join_fresh`, `Node::join_from_snapshot`).
//! A joined replica that peers left behind (`Node::catching_up`) fetches a snapshot the same
//! way ([`catch_up`]) and the core installs it (`Node::install_caught_up`).

use std::time::Duration;

use crate::core::checkpoint::Checkpoint;
use crate::core::ids::{Incarnation, InstanceId, ReplicaId};
use crate::core::instance::Instance;
use crate::core::limits::PEER_GRPC_MESSAGE_BYTES_MAX;
use crate::core::membership::{JoinAnswer, JoinDecision, Joiner};
use crate::core::wire;
use crate::proto::peer_client::PeerClient;
use crate::proto::{self, JoinRequest, SnapshotRequest};
use crate::server::backoff::Backoff;
use crate::server::config::HostPort;
use crate::server::members::Members;
use crate::server::tls::PeerDialer;
use crate::server::transport;

pub use crate::core::limits::{SNAPSHOT_BYTES_MAX, SNAPSHOT_CHUNK_BYTES};
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// A snapshot transfer may take long for a big state; this bounds a stuck one.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(300);
/// Asking the peers that have not answered again: from 50 ms, doubling up to 1 s.
const ASK_AGAIN: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(1));
/// A replica being added (not a member of the configuration it knows) asks more often: its
/// Join is refused at once without walking any state (`Node::answer_join`), and the sooner
/// it asks after the change that adds it executed, the sooner it votes.
const KNOCK_AGAIN_MAX: Duration = Duration::from_millis(250);
const KNOCK_AGAIN: Backoff = Backoff::new(Duration::from_millis(50), KNOCK_AGAIN_MAX);
/// How recent a replica's Join must be for `MemberAdd` to count it live: a knocking replica
/// asks each member at least every `KNOCK_AGAIN_MAX` plus a call timeout per member it cannot
/// reach (it asks them in turn), so this covers four unreachable members.
pub const KNOCK_FRESH: Duration = Duration::from_secs(30);
const _: () =
    assert!(KNOCK_FRESH.as_millis() > 4 * CALL_TIMEOUT.as_millis() + KNOCK_AGAIN_MAX.as_millis());
/// How often the wait for peers is reported in the log.
const REPORT_EVERY: Duration = Duration::from_secs(5);

/// What joining decided.
pub enum Joined {
    /// Nobody knew this replica: it starts empty.
    Fresh,
    /// It lost its data: it starts from this snapshot and abstains below `horizons`.
    Rejoin {
        horizons: Vec<u64>,
        snapshot: Box<Snapshot>,
    },
    /// A peer acts in a later configuration than the one this join asked (config.json's is
    /// stale): the caller adopts it and joins again among its members, or refuses to start if
    /// this replica is not one of them. Nothing was decided.
    Later(Members),
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
pub async fn run(
    members: &Members,
    me: ReplicaId,
    incarnation: Incarnation,
    interrupted: bool,
    dialer: &PeerDialer,
) -> Joined {
    let configuration = members.configuration();
    let rows = configuration.rows();
    let mut joiner = Joiner::of(me, configuration, interrupted);
    let mut backoff = if members.is_member(me) {
        ASK_AGAIN
    } else {
        KNOCK_AGAIN
    };
    let mut reported = tokio::time::Instant::now();
    // The last refusal of each peer, for the periodic report (a replica being added is told
    // it is not a member until the change adding it executed).
    let mut refused: std::collections::BTreeMap<ReplicaId, String> = Default::default();
    loop {
        for peer in joiner.missing() {
            let request = JoinRequest {
                from: me.0,
                incarnation: incarnation.get(),
            };
            let Some(addr) = members.get(peer).map(|m| &m.peer_addr) else {
                continue;
            };
            let join = |mut c: PeerClient<_>| async move { c.join(request).await };
            match call(dialer, peer, addr, join).await {
                Ok(reply) => {
                    match later_configuration(members, &reply) {
                        Ok(Some(later)) => return Joined::Later(later),
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(%peer, error = %e,
                                "join answer names a malformed configuration; asking again");
                            continue;
                        }
                    }
                    let answer = JoinAnswer {
                        previous: Incarnation::new(reply.previous_incarnation),
                        row_ends: reply.row_ends,
                        executed_prefix: reply.executed_prefix,
                        joining: reply.joining,
                    };
                    let known = answer.previous.is_some();
                    match joiner.answered(peer, answer) {
                        Ok(()) => tracing::info!(%peer, known, "peer answered join"),
                        Err(e) => {
                            tracing::warn!(%peer, error = %e, "malformed join answer; asking again")
                        }
                    }
                }
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "join not answered");
                    refused.insert(peer, e);
                }
            }
        }
        match joiner.decision() {
            Some(JoinDecision::Fresh) => {
                tracing::info!("joining as a new replica");
                return Joined::Fresh;
            }
            Some(JoinDecision::Rejoin { horizons, sources }) => {
                if let Some(snapshot) =
                    fetch_best(members, me, incarnation, &sources, dialer, rows).await
                {
                    return Joined::Rejoin {
                        horizons,
                        snapshot: Box::new(snapshot),
                    };
                }
                // No snapshot could be had: ask everyone again (their state moved on anyway).
                joiner.restart();
            }
            None => {}
        }
        if reported.elapsed() >= REPORT_EVERY {
            reported = tokio::time::Instant::now();
            let missing: Vec<String> = joiner.missing().iter().map(|p| p.to_string()).collect();
            let answers: Vec<String> = refused
                .iter()
                .filter(|(p, _)| joiner.missing().contains(p))
                .map(|(p, e)| format!("{p}: {e}"))
                .collect();
            if members.is_member(me) {
                tracing::warn!(
                    missing = missing.join(","),
                    rejoin = joiner.rejoin(),
                    refused = answers.join("; "),
                    "joining: waiting for peers to answer (a replica that lost its data waits \
                     for every peer, a new one for a majority)"
                );
            } else {
                tracing::warn!(
                    configuration = %members,
                    refused = answers.join("; "),
                    "not a member yet: asking the members to Join until an admin adds this \
                     replica (client member add)"
                );
            }
        }
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// The configuration a Join's answer names, if later than `members` (the one asked in).
fn later_configuration(
    members: &Members,
    reply: &proto::JoinReply,
) -> Result<Option<Members>, crate::server::members::MembersError> {
    if reply.epoch <= members.epoch() {
        return Ok(None);
    }
    let named = reply
        .members
        .iter()
        .map(|m| Members::member_from_parts(m.id, &m.peer_addr, &m.client_addr))
        .collect::<Result<Vec<_>, _>>()?;
    Members::new(reply.epoch, named).map(Some)
}

/// Fetches the snapshot a replica left behind by its peers' garbage collection needs: from
/// `source` (the peer whose Watermark said it collected past this replica), else from the
/// other peers in turn, with backoff until one gives it. Served under the incarnation fence
/// like a rejoin's: only the incarnation the peer records for this replica gets it.
pub async fn catch_up(
    members: &Members,
    me: ReplicaId,
    incarnation: Incarnation,
    source: ReplicaId,
    dialer: &PeerDialer,
    rows: usize,
) -> Snapshot {
    let mut sources = vec![source];
    sources.extend(
        members
            .members()
            .iter()
            .map(|m| m.id)
            .filter(|p| *p != me && *p != source),
    );
    let mut backoff = ASK_AGAIN;
    loop {
        if let Some(snapshot) = fetch_best(members, me, incarnation, &sources, dialer, rows).await {
            return snapshot;
        }
        tracing::warn!(%source, "left behind: no peer gave a snapshot yet; asking again");
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// Fetches a snapshot from the first of `sources` that gives one (the core ranks them: the
/// peer that executed most first, none that is joining itself), at its address in `members`
/// (a source that is not a member there is skipped). `rows`: what this replica needs of a
/// checkpoint (see `Checkpoint::decode`).
async fn fetch_best(
    members: &Members,
    me: ReplicaId,
    incarnation: Incarnation,
    sources: &[ReplicaId],
    dialer: &PeerDialer,
    rows: usize,
) -> Option<Snapshot> {
    for &peer in sources {
        let Some(addr) = members.get(peer).map(|m| &m.peer_addr) else {
            continue;
        };
        let started = tokio::time::Instant::now();
        let fetching = fetch(dialer, peer, addr, me, incarnation, rows);
        match tokio::time::timeout(SNAPSHOT_TIMEOUT, fetching).await {
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
    Connect(#[from] transport::DialError),
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
    dialer: &PeerDialer,
    peer: ReplicaId,
    addr: &HostPort,
    me: ReplicaId,
    incarnation: Incarnation,
    n: usize,
) -> Result<(Snapshot, usize), SnapshotError> {
    use prost::Message as _;
    let mut client = connect(dialer, peer, addr).await?;
    let mut stream = client
        .snapshot(SnapshotRequest {
            from: me.0,
            incarnation: incarnation.get(),
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
    // Records may be of every row the checkpoint knows (more than this replica, if the peer
    // learnt a configuration that added ids).
    let rows = checkpoint.rows().max(n);
    let mut records = Vec::with_capacity(snapshot.records.len());
    for r in snapshot.records {
        let (id, inst) = wire::record_from_proto(r, rows)?;
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

/// Resolves `addr` again (see `transport::dial`) and connects.
async fn connect(
    dialer: &PeerDialer,
    peer: ReplicaId,
    addr: &HostPort,
) -> Result<PeerClient<tonic::transport::Channel>, transport::DialError> {
    let (channel, _) = transport::dial(dialer, peer, addr, CALL_TIMEOUT).await?;
    Ok(PeerClient::new(channel)
        .max_decoding_message_size(PEER_GRPC_MESSAGE_BYTES_MAX)
        .max_encoding_message_size(PEER_GRPC_MESSAGE_BYTES_MAX))
}

/// One unary call with a fresh connection and a timeout.
async fn call<T, F, Fut>(
    dialer: &PeerDialer,
    peer: ReplicaId,
    addr: &HostPort,
    f: F,
) -> Result<T, String>
where
    F: FnOnce(PeerClient<tonic::transport::Channel>) -> Fut,
    Fut: std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let client = connect(dialer, peer, addr)
        .await
        .map_err(|e| e.to_string())?;
    match tokio::time::timeout(CALL_TIMEOUT, f(client)).await {
        Ok(Ok(r)) => Ok(r.into_inner()),
        Ok(Err(status)) => Err(status.to_string()),
        Err(_) => Err("timed out".to_string()),
    }
}
