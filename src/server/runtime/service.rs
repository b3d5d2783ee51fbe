//! The gRPC services: `Kv` for clients and `Peer` for replicas. They decode and validate, push one
//! `Event` into bigChannel, and wait (with a timeout) for the answer.

use super::*;
use crate::server::members::Members;
use crate::server::peer_ids::PeerIds;

/// The client service (client listener): translates calls into events.
pub(super) struct ClientService {
    pub(super) id: ReplicaId,
    pub(super) big: mpsc::Sender<Event>,
    /// bigChannel's byte budget (see `limits::BIG_CHANNEL_BYTES_MAX`).
    pub(super) budget: Arc<Semaphore>,
    pub(super) propose_timeout: Duration,
    /// What the event loop last assessed: without a majority a proposal is refused at once
    /// (it could not commit), rather than after `propose_timeout`.
    pub(super) health: watch::Receiver<Health>,
    /// When the service started (Status: uptime).
    pub(super) started: Instant,
    pub(super) data_dir: std::path::PathBuf,
    /// Per peer: when (ms since `started`, 0: never) a stream of a replaced incarnation of it
    /// was last refused; shared with the peer service.
    pub(super) refused_at_ms: Arc<Vec<AtomicU64>>,
    /// The configuration this replica acts in (Status, the admin calls' answers).
    pub(super) members: watch::Receiver<Arc<Members>>,
    /// Who may make the admin calls (`MemberAdd`, `MemberRemove`).
    pub(super) admin: tls::AdminAuth,
}

/// A refusal of a replaced incarnation this recent shows in Status (`peers_refused`).
pub(super) const REFUSED_RECENT_MS: u64 = 60_000;

/// The peer service (peer listener): checks who is speaking, then translates calls into events.
pub(super) struct PeerService {
    /// The ids that are or were members, and the rows messages are decoded against.
    pub(super) ids: Arc<PeerIds>,
    pub(super) big: mpsc::Sender<Event>,
    /// bigChannel's byte budget (see `limits::BIG_CHANNEL_BYTES_MAX`).
    pub(super) budget: Arc<Semaphore>,
    /// The budget's size: a peer batch larger than it takes all of it (and so still passes).
    pub(super) budget_max: usize,
    /// Per peer: the incarnation its Dispatch streams must carry (0: none recorded yet); kept
    /// by the event loop, which holds the durable record.
    pub(super) accepted: Arc<Vec<AtomicU64>>,
    /// Per peer: when a replaced incarnation of it was last refused (see `ClientService`).
    pub(super) refused_at_ms: Arc<Vec<AtomicU64>>,
    pub(super) started: Instant,
    /// Who the caller's certificate names; refuses calls that claim another replica.
    pub(super) auth: Arc<tls::PeerAuth>,
    /// Joins per peer at a bounded rate, snapshots one at a time.
    pub(super) joins: Arc<admission::PerPeerRate>,
    pub(super) snapshots: admission::Snapshots,
}

#[tonic::async_trait]
impl Kv for ClientService {
    async fn propose(
        &self,
        request: Request<ProposeRequest>,
    ) -> Result<Response<ProposeReply>, Status> {
        let result = self.propose_call(request).await;
        crate::server::metrics::client_request("Propose", &result);
        result
    }

    async fn status(
        &self,
        request: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusReply>, Status> {
        let result = self.status_call(request).await;
        crate::server::metrics::client_request("Status", &result);
        result
    }

    async fn member_add(
        &self,
        request: Request<proto::MemberAddRequest>,
    ) -> Result<Response<proto::MemberChangeReply>, Status> {
        let result = self.member_add_call(request).await;
        crate::server::metrics::client_request("MemberAdd", &result);
        result
    }

    async fn member_remove(
        &self,
        request: Request<proto::MemberRemoveRequest>,
    ) -> Result<Response<proto::MemberChangeReply>, Status> {
        let result = self.member_remove_call(request).await;
        crate::server::metrics::client_request("MemberRemove", &result);
        result
    }
}

impl ClientService {
    pub(super) async fn propose_call(
        &self,
        request: Request<ProposeRequest>,
    ) -> Result<Response<ProposeReply>, Status> {
        let cmd = wire::command_from_request(request.into_inner())
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        // A replica outside the configuration it acts in (removed) serves no client.
        let members = self.members.borrow().clone();
        if !members.is_member(self.id) {
            return Err(Status::failed_precondition(format!(
                "replica {} is not a member of the cluster's configuration; send requests to \
                 a member: {members}",
                self.id.0
            )));
        }
        let health = *self.health.borrow();
        if let Health::NoMajority { .. } = health {
            return Err(Status::unavailable(format!(
                "replica {} cannot serve: {health}; try a replica in the majority",
                self.id.0
            )));
        }
        // A full replica says so at once rather than queueing the caller.
        let overloaded = || {
            metrics::counter!("epaxos_proposals_rejected_total", "reason" => "overloaded")
                .increment(1);
            Status::resource_exhausted("replica overloaded; retry later")
        };
        let size = u32::try_from(cmd.op.size_bytes()).map_err(|_| overloaded())?;
        let budget = self
            .budget
            .clone()
            .try_acquire_many_owned(size.max(1))
            .map_err(|_| overloaded())?;
        let (tx, rx) = oneshot::channel();
        let event = Event::Propose {
            cmd,
            reply: tx,
            at: Instant::now(),
            budget,
        };
        let deadline = tokio::time::Instant::now() + self.propose_timeout;
        match self.big.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => return Err(overloaded()),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(Status::unavailable("replica is shutting down"))
            }
        }
        match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(Ok(result))) => Ok(Response::new(ProposeReply {
                result: Some(wire::result_to_proto(&result)),
                replica: self.id.0,
            })),
            Ok(Ok(Err(status))) => Err(status),
            // The event loop dropped the waiter while it runs: it forgot the client once the
            // propose timeout passed (`forget_given_up`), just before this timer fired.
            Ok(Err(_)) if !self.big.is_closed() => Err(Status::deadline_exceeded(
                "command did not execute in time; retry with the same client_id and request_id",
            )),
            // The replica stopped with the command in progress: ABORTED, not UNAVAILABLE,
            // which a client may take as "never executed" (see client.proto).
            Ok(Err(_)) => Err(Status::aborted(
                "replica stopped while the command was in progress; its outcome is unknown: \
                 retry with the same client_id and request_id",
            )),
            Err(_) => Err(Status::deadline_exceeded(
                "command did not execute in time; retry with the same client_id and request_id",
            )),
        }
    }

    pub(super) async fn status_call(
        &self,
        _request: Request<proto::StatusRequest>,
    ) -> Result<Response<proto::StatusReply>, Status> {
        let (tx, rx) = oneshot::channel();
        self.big
            .send(Event::Status { reply: tx })
            .await
            .map_err(|_| Status::unavailable("replica is shutting down"))?;
        let mut s = match tokio::time::timeout(Duration::from_secs(5), rx).await {
            Ok(Ok(s)) => s,
            _ => return Err(Status::unavailable("replica did not answer in time")),
        };
        let health = *self.health.borrow();
        s.serving = health.can_serve();
        s.health = health.to_string();
        s.version = crate::VERSION_LONG.to_string();
        s.uptime_ms = self.started.elapsed().as_millis() as u64;
        let dir = self.data_dir.clone();
        s.data_bytes = tokio::task::spawn_blocking(move || dir_bytes(&dir))
            .await
            .unwrap_or(0);
        let members = self.members.borrow().clone();
        s.epoch = members.epoch();
        s.members = members.to_proto();
        s.peers_refused = (0..self.refused_at_ms.len())
            .filter(|p| {
                let at = self.refused_at_ms[*p].load(Ordering::Relaxed);
                at != 0 && self.started.elapsed().as_millis() as u64 <= at + REFUSED_RECENT_MS
            })
            .map(|p| p as u32)
            .collect();
        Ok(Response::new(s))
    }
}

impl ClientService {
    /// `MemberAdd`: an admin's request to add a member, checked here (who asks, what it
    /// names), then proposed to the core like a removal (see [`Self::member_remove_call`]).
    /// The new replica must have been started first: the event loop refuses an id whose Join
    /// has not reached it lately (FAILED_PRECONDITION "start replica N first").
    pub(super) async fn member_add_call(
        &self,
        request: Request<proto::MemberAddRequest>,
    ) -> Result<Response<proto::MemberChangeReply>, Status> {
        self.admin.check(&request, "MemberAdd")?;
        let m = request
            .into_inner()
            .member
            .ok_or_else(|| Status::invalid_argument("MemberAdd: no member given"))?;
        let member = Members::member_from_parts(m.id, &m.peer_addr, &m.client_addr)
            .map_err(|e| Status::invalid_argument(format!("MemberAdd: {e}")))?;
        let what = format!(
            "add replica {} (peer {}, client {})",
            member.id.0, member.peer_addr, member.client_addr
        );
        let change = Change::Add(crate::core::epoch::Member {
            id: member.id,
            peer_addr: member.peer_addr.to_string(),
            client_addr: member.client_addr.to_string(),
        });
        self.change_membership(change, &what).await
    }

    /// `MemberRemove`: proposed to the core as a membership change (`Node::propose_reconfigure`
    /// through the event loop); answered once it executed here with the new epoch and members,
    /// or with the core's refusal naming the current members.
    pub(super) async fn member_remove_call(
        &self,
        request: Request<proto::MemberRemoveRequest>,
    ) -> Result<Response<proto::MemberChangeReply>, Status> {
        self.admin.check(&request, "MemberRemove")?;
        let id = ReplicaId(request.into_inner().id);
        self.change_membership(Change::Remove(id), &format!("remove replica {}", id.0))
            .await
    }

    /// Hands `change` to the event loop and waits (at most `propose_timeout`) until it executed
    /// here and the shell acts in the configuration it made.
    async fn change_membership(
        &self,
        change: Change,
        what: &str,
    ) -> Result<Response<proto::MemberChangeReply>, Status> {
        let deadline = tokio::time::Instant::now() + self.propose_timeout;
        let (tx, rx) = oneshot::channel();
        let event = Event::Reconfigure {
            change,
            reply: tx,
            at: Instant::now(),
        };
        match self.big.try_send(event) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(_)) => {
                return Err(Status::resource_exhausted(
                    "replica overloaded; retry later",
                ))
            }
            Err(mpsc::error::TrySendError::Closed(_)) => {
                return Err(Status::unavailable("replica is shutting down"))
            }
        }
        let undecided = |why: &str| {
            Status::deadline_exceeded(format!(
                "{what}: {why}; it may still execute: see `client member list` before retrying"
            ))
        };
        let result = match tokio::time::timeout_at(deadline, rx).await {
            Ok(Ok(Ok(result))) => result,
            Ok(Ok(Err(status))) => {
                return Err(Status::new(
                    status.code(),
                    format!("cannot {what}: {}", status.message()),
                ))
            }
            Ok(Err(_)) | Err(_) => return Err(undecided("did not execute in time")),
        };
        let mut members = self.members.clone();
        let epoch = match crate::core::replica::epoch_of_result(&result) {
            Some(epoch) if result.success => epoch.0,
            _ => {
                let now = members.borrow().clone();
                return Err(Status::failed_precondition(format!(
                    "cannot {what}: another membership change executed first; the configuration \
                     is now {now}; retry if the change is still wanted"
                )));
            }
        };
        // The event loop made the configuration durable and acts in it before it releases the
        // answer: this finds it at once.
        let acting = tokio::time::timeout_at(deadline, members.wait_for(|m| m.epoch() >= epoch))
            .await
            .ok()
            .and_then(|r| r.ok().map(|m| Arc::clone(&m)));
        match acting {
            Some(now) => Ok(Response::new(proto::MemberChangeReply {
                epoch,
                members: now.to_proto(),
            })),
            None => Err(undecided(
                "executed, but this replica does not act in it yet",
            )),
        }
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn join(
        &self,
        request: Request<proto::JoinRequest>,
    ) -> Result<Response<proto::JoinReply>, Status> {
        // A replica not yet a member asks too (it is being added): it is let through, only
        // here, so that the node records it knocking (see `Node::answer_join`).
        let identity = self.auth.identify_joiner(&request, "Join")?;
        let remote = request.remote_addr();
        let req = request.into_inner();
        self.auth.check(identity, req.from, remote, "Join")?;
        if req.from as usize >= limits::MEMBERS_EVER_MAX {
            return Err(Status::invalid_argument(format!(
                "replica {}: ids go up to {}",
                req.from,
                limits::MEMBERS_EVER_MAX - 1
            )));
        }
        if !self.joins.admit(req.from as usize, Instant::now()) {
            metrics::counter!("epaxos_membership_calls_refused_total", "call" => "join")
                .increment(1);
            return Err(Status::resource_exhausted(
                "joins from this replica come too often; retry later",
            ));
        }
        let (tx, rx) = oneshot::channel();
        self.big
            .send(Event::Join {
                from: ReplicaId(req.from),
                incarnation: Incarnation::new(req.incarnation),
                reply: tx,
            })
            .await
            .map_err(|_| Status::unavailable("replica is shutting down"))?;
        match tokio::time::timeout(Duration::from_secs(5), rx).await {
            Ok(Ok(r)) => r.map(Response::new),
            _ => Err(Status::unavailable("replica did not answer in time")),
        }
    }

    type SnapshotStream = ReceiverStream<Result<proto::SnapshotChunk, Status>>;

    async fn snapshot(
        &self,
        request: Request<proto::SnapshotRequest>,
    ) -> Result<Response<Self::SnapshotStream>, Status> {
        let identity = self.auth.identify(&request, "Snapshot")?;
        let remote = request.remote_addr();
        let req = request.into_inner();
        self.auth.check(identity, req.from, remote, "Snapshot")?;
        let Some(slot) = self.snapshots.try_start() else {
            metrics::counter!("epaxos_membership_calls_refused_total", "call" => "snapshot")
                .increment(1);
            return Err(Status::resource_exhausted(
                "a snapshot is being sent already; retry later",
            ));
        };
        let (tx, rx) = oneshot::channel();
        // The node gives it only to a peer that joined as this incarnation.
        self.big
            .send(Event::Snapshot {
                from: ReplicaId(req.from),
                incarnation: Incarnation::new(req.incarnation),
                reply: tx,
            })
            .await
            .map_err(|_| Status::unavailable("replica is shutting down"))?;
        let bytes = match tokio::time::timeout(Duration::from_secs(60), rx).await {
            Ok(Ok(r)) => r?,
            _ => return Err(Status::unavailable("replica did not answer in time")),
        };
        // Bounded: the sender waits for the joiner to take each chunk.
        let (chunks, out) = mpsc::channel(4);
        let bytes = Bytes::from(bytes);
        tokio::spawn(async move {
            // The slot (and the encoded state) is held until the stream ends or its reader
            // stalls: then it is abandoned.
            let _slot = slot;
            let mut at = 0;
            while at < bytes.len() {
                let end = (at + limits::SNAPSHOT_CHUNK_BYTES).min(bytes.len());
                let chunk = proto::SnapshotChunk {
                    data: bytes.slice(at..end),
                };
                at = end;
                match tokio::time::timeout(limits::SNAPSHOT_CHUNK_TIMEOUT, chunks.send(Ok(chunk)))
                    .await
                {
                    Ok(Ok(())) => {}
                    Ok(Err(_)) => break,
                    Err(_) => {
                        tracing::warn!("snapshot reader stalled; abandoning the stream");
                        break;
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(out)))
    }

    type DispatchStream = ReceiverStream<Result<DispatchAck, Status>>;

    async fn dispatch(
        &self,
        request: Request<tonic::Streaming<PeerBatch>>,
    ) -> Result<Response<Self::DispatchStream>, Status> {
        // Who may write this stream is settled once, from the certificate.
        let identity = self.auth.identify(&request, "Dispatch")?;
        let remote = request.remote_addr();
        let mut inbound = request.into_inner();
        // The response stream stays open (and empty) while `keep_open` lives in the reader.
        let (keep_open, rx) = mpsc::channel(1);
        let big = self.big.clone();
        let ids = self.ids.clone();
        let accepted = self.accepted.clone();
        let (refused_at_ms, started) = (self.refused_at_ms.clone(), self.started);
        let budget = self.budget.clone();
        let budget_max = self.budget_max;
        let auth = self.auth.clone();
        tokio::spawn(async move {
            loop {
                let batch = match inbound.message().await {
                    Ok(Some(b)) => b,
                    Ok(None) => break,
                    Err(e) => {
                        tracing::debug!(error = %e, "peer stream ended");
                        break;
                    }
                };
                // A batch claiming another replica than the certificate names changes nothing
                // and ends the stream.
                if let Err(status) = auth.check(identity, batch.from, remote, "Dispatch") {
                    let _ = keep_open.send(Err(status)).await;
                    break;
                }
                if !ids.was_member(batch.from) {
                    tracing::warn!(
                        from = batch.from,
                        "batch from a replica not in the config; closing stream"
                    );
                    break;
                }
                let from = ReplicaId(batch.from);
                let incarnation = match check_incarnation(&accepted, from, batch.incarnation) {
                    Ok(i) => i,
                    Err(status) => {
                        if let Some(at) = refused_at_ms.get(from.index()) {
                            at.store(started.elapsed().as_millis() as u64 + 1, Ordering::Relaxed);
                        }
                        let _ = keep_open.send(Err(status)).await;
                        break;
                    }
                };
                let mut messages = Vec::with_capacity(batch.messages.len());
                let mut behind = false;
                for bytes in &batch.messages {
                    match wire::decode(bytes, ids.rows()) {
                        Ok(m) => messages.push(m),
                        Err(e) => {
                            metrics::counter!("epaxos_wire_errors_total",
                                "peer" => crate::server::metrics::peer_label(from.0))
                            .increment(1);
                            if let wire::WireError::UnknownReplica { .. } = e {
                                // Expected behind an add: the core pulls the change's Commit.
                                behind = true;
                                tracing::debug!(%from, error = %e,
                                    "dropping a peer message naming a row not known yet");
                            } else {
                                tracing::warn!(%from, error = %e,
                                    "dropping malformed peer message");
                            }
                        }
                    }
                }
                // Backpressure: a full bigChannel (in events or in bytes) slows the peer's
                // stream down.
                let size: usize = batch.messages.iter().map(|m| m.len()).sum();
                let size = u32::try_from(size.clamp(1, budget_max))
                    .expect("the byte budget fits a u32 (checked by RuntimeOptions::validate)");
                let Ok(budget) = budget.clone().acquire_many_owned(size).await else {
                    break;
                };
                let event = Event::Peer {
                    from,
                    incarnation,
                    messages,
                    behind,
                    budget,
                };
                if big.send(event).await.is_err() {
                    break;
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}
