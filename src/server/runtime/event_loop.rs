//! The event loop: one task owns the `Node` (and the `Replica` in it); it drains bigChannel,
//! feeds the core, writes and syncs what the core asks to persist, and carries out its `Ready`.

use std::collections::VecDeque;

use super::links::PeerLinks;
use super::*;
use crate::core::replica::Outgoing;
use crate::server::join::KNOCK_FRESH;
use crate::server::members::{Member, Members};
use crate::server::peer_ids::PeerIds;
use crate::server::writer::Writer;

/// A checkpoint being written off the event loop.
pub(super) struct Writing {
    pub(super) job: tokio::task::JoinHandle<Result<storage::PreparedLog, StorageError>>,
    pub(super) started: Instant,
    /// Time the event loop spent encoding it.
    pub(super) encode: Duration,
    pub(super) bytes: usize,
    pub(super) live: usize,
}

/// A client waiting for its command: where the answer goes and when the proposal arrived.
pub(super) struct Waiter {
    pub(super) reply: oneshot::Sender<Result<OpResult, Status>>,
    pub(super) at: Instant,
    /// The command's session and request (what the node needs to forget it).
    pub(super) request: (ClientId, RequestId),
}

/// A Join the node answered, waiting for the record of the new incarnation to be durable.
pub(super) struct PendingJoin {
    pub(super) from: ReplicaId,
    pub(super) incarnation: Option<Incarnation>,
    pub(super) reply: oneshot::Sender<Result<proto::JoinReply, Status>>,
}

/// An answer the loop built while handling an event that reveals state whose records may
/// still be on their way to the disk: it leaves with the iteration's other outputs.
pub(super) enum Answer {
    Status(oneshot::Sender<proto::StatusReply>, proto::StatusReply),
    Snapshot(
        oneshot::Sender<Result<Vec<u8>, Status>>,
        Result<Vec<u8>, Status>,
    ),
}

/// An iteration's outputs waiting for its group of records to be durable (see
/// `server::writer`): the node's `Ready` (its early messages already sent) and the answers.
pub(super) struct Held {
    group: u64,
    ready: node::Ready,
    answers: Vec<Answer>,
}

/// What fetching a snapshot needs when peers left this replica behind (see `join::catch_up`).
#[derive(Clone)]
pub(super) struct CatchUpContext {
    pub(super) me: ReplicaId,
    pub(super) incarnation: Incarnation,
    pub(super) dialer: tls::PeerDialer,
    /// Weak: the event loop must not keep its own channel open (it ends when the channel does).
    pub(super) big: mpsc::WeakSender<Event>,
}

pub(super) struct LoopSetup {
    pub(super) catch_up: CatchUpContext,
    pub(super) tick: Duration,
    pub(super) propose_timeout: Duration,
    pub(super) log: Log,
    pub(super) metadata: storage::Metadata,
    pub(super) accepted: Arc<Vec<AtomicU64>>,
    pub(super) health: health::Publisher,
    /// Where the configuration the replica acts in is published (Status, the admin calls).
    pub(super) members: watch::Sender<Arc<Members>>,
    /// The ids the peer listener takes calls from (see `peer_ids`).
    pub(super) ids: Arc<PeerIds>,
}

/// The single-threaded event loop's state: the node and what the shell needs to carry out its
/// outputs.
pub(super) struct EventLoop {
    pub(super) node: Node,
    pub(super) me: ReplicaId,
    pub(super) start: Instant,
    /// The links to the members of `members` but this replica.
    pub(super) links: PeerLinks,
    /// The configuration this replica acts in, with its members' addresses.
    pub(super) members: Arc<Members>,
    pub(super) members_tx: watch::Sender<Arc<Members>>,
    pub(super) ids: Arc<PeerIds>,
    /// By token, which grows with arrival: the oldest first, for `forget_given_up`.
    pub(super) waiting: BTreeMap<Token, Waiter>,
    /// How long a client's call waits (after that, the service has answered it).
    pub(super) propose_timeout: Duration,
    /// Joins answered by the node, waiting for its record of the new incarnation to be durable.
    pub(super) joins: HashMap<Token, PendingJoin>,
    pub(super) next_token: Token,
    pub(super) m: LoopMetrics,
    /// The log writer thread (pipelined group commit: see `server::writer`).
    pub(super) writer: Writer,
    /// Iterations' outputs waiting for their group to be durable, oldest first.
    pub(super) held: VecDeque<Held>,
    /// Answers built while handling this iteration's events (see [`Answer`]).
    pub(super) answers: Vec<Answer>,
    pub(super) metadata: storage::Metadata,
    /// Per peer: the incarnation the node recorded, for the Dispatch readers (which close a
    /// stream from another incarnation at once).
    pub(super) accepted: Arc<Vec<AtomicU64>>,
    /// What `epaxos_abstaining` last reported.
    pub(super) abstaining: bool,
    pub(super) health: health::Publisher,
    /// Per id (every id there can be): when anything was last heard from it (start, if
    /// never).
    pub(super) heard: Vec<Instant>,
    /// PreAccepts and Accepts sent, by peer and instance, waiting for their answer: the
    /// per-peer round trip (`epaxos_peer_rtt_seconds`). Bounded; entries older than
    /// `RTT_FORGET_AFTER` are dropped at each tick.
    pub(super) rtt_sent: HashMap<(ReplicaId, InstanceId), Instant>,
    /// Fetching a snapshot after peers left this replica behind: how, and the fetch running.
    pub(super) catch_up: CatchUpContext,
    pub(super) catch_up_started: Option<tokio::task::JoinHandle<()>>,
    /// A checkpoint is being written: a snapshot to install waits in `deferred_install`.
    pub(super) checkpoint_writing: bool,
    pub(super) deferred_install: Option<Box<join::Snapshot>>,
    /// Why the replica must stop (the loop returns it once the current events are handled).
    pub(super) stop: Option<RuntimeError>,
    /// Replicas not in the configuration that asked to Join, and when they last did (a replica
    /// being added knocks this way): `MemberAdd` of an id that has not knocked lately is
    /// refused ("start replica N first"). At most one entry per id there can be.
    pub(super) knocked: HashMap<ReplicaId, Instant>,
}

/// Round trips measured at once, at most (beyond, a send is not timed).
pub(super) const RTT_PENDING_MAX: usize = 4096;
/// A round trip not answered within this is forgotten (the peer is down or the answer lost).
pub(super) const RTT_FORGET_AFTER: Duration = Duration::from_secs(10);

/// Runs the event loop that owns all protocol state until bigChannel closes.
pub(super) async fn run_loop(
    node: Node,
    mut big: mpsc::Receiver<Event>,
    links: PeerLinks,
    setup: LoopSetup,
) -> Result<(), RuntimeError> {
    let checkpoints = metrics::counter!("epaxos_checkpoints_total");
    let checkpoint_latency = metrics::histogram!("epaxos_checkpoint_seconds");
    let log_bytes = metrics::gauge!("epaxos_log_bytes");
    let joining_gauge = metrics::gauge!("epaxos_joining");
    let abstaining_gauge = metrics::gauge!("epaxos_abstaining");
    let catching_up_gauge = metrics::gauge!("epaxos_catching_up");
    let instances_gauge = metrics::gauge!("epaxos_instances_in_memory");
    let LoopSetup {
        tick,
        propose_timeout,
        log,
        metadata,
        accepted,
        health,
        catch_up,
        members,
        ids,
    } = setup;
    let current = members.borrow().clone();
    let mut el = EventLoop {
        catch_up,
        catch_up_started: None,
        checkpoint_writing: false,
        deferred_install: None,
        stop: None,
        knocked: HashMap::new(),
        abstaining: false,
        heard: vec![Instant::now(); limits::MEMBERS_EVER_MAX],
        rtt_sent: HashMap::new(),
        me: node.replica().id(),
        m: LoopMetrics::new(0),
        node,
        start: Instant::now(),
        links,
        members: current.clone(),
        members_tx: members,
        ids,
        waiting: BTreeMap::new(),
        propose_timeout,
        joins: HashMap::new(),
        next_token: 0,
        writer: Writer::start(log).map_err(|source| StorageError::Io {
            path: std::path::PathBuf::from("<log writer thread>"),
            source,
        })?,
        held: VecDeque::new(),
        answers: Vec::new(),
        metadata,
        accepted,
        health,
    };
    el.apply_configuration(current);
    let mut ticker = tokio::time::interval(tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // A checkpoint being written on a blocking thread (see `Log::start_checkpoint`), and the
    // records appended to the old log since it started, which the new log must get too.
    let mut writing: Option<Writing> = None;
    let mut since: Vec<(InstanceId, Instance)> = Vec::new();
    loop {
        // Past the writer's bounds, or with as many iterations' outputs held, the loop takes
        // nothing new until the disk catches up.
        let backlogged = el.backlogged();
        tokio::select! {
            durable = el.writer.changed() => {
                let durable = durable.inspect_err(|e| {
                    tracing::error!(error = %e, "cannot persist; stopping the replica");
                })?;
                el.release(durable);
            }
            done = async { (&mut writing.as_mut().expect("branch enabled only while writing").job).await },
                if writing.is_some() =>
            {
                let w = writing.take().expect("branch enabled only while writing");
                let finishing = Instant::now();
                let prepared = done.map_err(|e| RuntimeError::CheckpointTask(e.to_string()))?;
                // Everything handed to the writer is in `since` and must be in the old log
                // first: appended after `since`, an older record would supersede a newer one.
                el.writer.wait_idle().await?;
                let written = prepared
                    .and_then(|prepared| el.writer.with_log(|log| log.finish_checkpoint(prepared, &since)));
                el.node.checkpoint_written();
                if let Err(e) = written {
                    if !e.is_out_of_space() {
                        tracing::error!(error = %e, "cannot checkpoint; stopping the replica");
                        return Err(e.into());
                    }
                    // The old log is still whole and in place: go on with it, try again later.
                    el.writer.with_log(|log| log.abandon_checkpoint());
                    since = Vec::new();
                    tracing::warn!(error = %e,
                        "cannot write a checkpoint (data directory full or read-only); the log \
                         is kept as it is and the next checkpoint tries again");
                    continue;
                }
                let stall = w.encode + finishing.elapsed();
                checkpoints.increment(1);
                checkpoint_latency.record(w.started.elapsed().as_secs_f64());
                log_bytes.set(el.writer.len_bytes() as f64);
                tracing::info!(
                    bytes = w.bytes,
                    live = w.live,
                    appended_meanwhile = since.len(),
                    ms = w.started.elapsed().as_millis() as u64,
                    event_loop_ms = stall.as_millis() as u64,
                    "checkpoint written, log cut"
                );
                since = Vec::new();
            }
            ev = big.recv(), if !backlogged => match ev {
                Some(ev) => el.handle(ev),
                None => return el.finish().await,
            },
            _ = ticker.tick(), if !backlogged => {
                let now = el.start.elapsed();
                el.node.set_wall_clock_ms(wall_clock_ms());
                el.node.tick(now);
                el.forget_given_up();
                let sessions = el.node.replica().kv().sessions();
                metrics::gauge!("epaxos_sessions").set(sessions.len() as f64);
                metrics::gauge!("epaxos_session_table_bytes").set(sessions.size_bytes() as f64);
                for peer in el.links.ids() {
                    let suspected = el.node.replica().is_suspected(peer, now);
                    if let Some(g) = el.m.suspected.get(peer.index()) {
                        g.set(if suspected { 1.0 } else { 0.0 });
                    }
                    if let (Some(g), Some(h)) =
                        (el.m.last_heard.get(peer.index()), el.heard.get(peer.index()))
                    {
                        g.set(h.elapsed().as_secs_f64());
                    }
                }
                el.rtt_sent.retain(|_, sent| sent.elapsed() < RTT_FORGET_AFTER);
            }
        }
        crate::server::metrics::HIGH_WATER.observe([big.len() as u64 + 1, 0, 0, 0]);
        for _ in 0..DRAIN_MAX {
            if el.backlogged() {
                break;
            }
            match big.try_recv() {
                Ok(ev) => el.handle(ev),
                Err(_) => break,
            }
        }
        if let Some(e) = el.stop.take() {
            return Err(e);
        }
        // New instances start while the disk is idle: proposals that arrive while it syncs
        // then go out together, in fewer and larger batches (as when the loop synced in
        // place and took them in meanwhile), and every group handed over since is durable,
        // so the whole unsynced window is open to them.
        if el.writer.idle() {
            el.node.set_wall_clock_ms(wall_clock_ms());
            el.node.flush(el.start.elapsed());
        }
        let mut ready = el.node.take_ready();
        el.persist_node(&ready).await?;
        // New instances' PreAccepts leave now: the peers' syncs and the network overlap ours
        // (why that is safe: `replica::leader`, `start_instance`).
        let early: Vec<Outgoing> = ready.core.messages.drain(..ready.core.early).collect();
        el.send_messages(early);
        // Group commit, pipelined: the records go to the writer thread, and everything else of
        // this iteration waits until they (and every earlier group) are durable.
        let records = std::mem::take(&mut ready.core.persist);
        if writing.is_some() {
            since.extend(records.iter().cloned());
        }
        let group = el.writer.submit(records);
        el.hold(group, ready);
        el.ids.set_rows(el.node.rows());
        el.checkpoint_writing = writing.is_some();
        if !el.checkpoint_writing {
            if let Some(snapshot) = el.deferred_install.take() {
                el.install_caught_up(el.start.elapsed(), *snapshot);
            }
        }
        el.start_catch_up();
        joining_gauge.set(if el.node.joining() { 1.0 } else { 0.0 });
        catching_up_gauge.set(if el.node.catching_up().is_some() {
            1.0
        } else {
            0.0
        });
        instances_gauge.set(el.node.replica().instances_in_memory() as f64);
        el.report_abstaining(&abstaining_gauge);
        el.health.publish(el.health());
        if writing.is_none() {
            let started = Instant::now();
            if let Some(job) = el.node.poll_checkpoint() {
                // The node encoded it (that reads the live state, so it happens here); the
                // writing and syncing happen on a blocking thread while the loop goes on.
                let encode = started.elapsed();
                let (bytes, live) = (job.checkpoint.len(), job.records.len());
                let work = el
                    .writer
                    .with_log(|log| log.start_checkpoint(job.checkpoint, job.records));
                writing = Some(Writing {
                    job: tokio::task::spawn_blocking(work),
                    started,
                    encode,
                    bytes,
                    live,
                });
            }
        }
        el.m.big_channel.set(big.len() as f64);
        el.m.waiting.set(el.node.replica().unexecuted() as f64);
        el.m.pending.set(el.node.replica().pending() as f64);
        el.m.inflight.set(el.node.replica().inflight() as f64);
        crate::server::metrics::HIGH_WATER.observe([
            big.len() as u64,
            el.node.replica().pending() as u64,
            el.node.replica().inflight() as u64,
            el.node.replica().unexecuted(),
        ]);
    }
}

/// Runs `write` (a blocking write to the data directory; it leaves the files as they were when
/// it fails) until it succeeds. While the data directory is full or read-only the event loop
/// waits here: nothing that needs the write is acknowledged (clients and peers queue, then
/// time out), one error line says why, and one line says when the replica serves again. Any
/// other error is returned: the replica stops.
pub(super) async fn until_written<T>(
    write: impl FnMut() -> Result<T, StorageError>,
) -> Result<T, StorageError> {
    // The loop has nothing else to do meanwhile: the writer thread's retry loop, run in place.
    tokio::task::block_in_place(|| crate::server::writer::write_until(write))
}

impl EventLoop {
    pub(super) fn handle(&mut self, ev: Event) {
        let now = self.start.elapsed();
        match ev {
            Event::Propose { cmd, reply, at, .. } => {
                let token = self.next_token;
                self.next_token += 1;
                let request = (cmd.client, cmd.request);
                tracing::debug!(client = cmd.client.0, request = cmd.request.0, "proposal");
                match self.node.propose(token, cmd) {
                    Ok(()) => {
                        self.m.proposals.increment(1);
                        self.waiting.insert(token, Waiter { reply, at, request });
                    }
                    Err(e @ (Refusal::Joining | Refusal::CatchingUp)) => {
                        let _ = reply.send(Err(Status::unavailable(e.to_string())));
                    }
                    Err(Refusal::Removed { members }) => {
                        let _ = reply.send(Err(Status::failed_precondition(format!(
                            "replica {} was removed from the cluster; send requests to a \
                             member: {}",
                            self.me.0,
                            ids_text(&members)
                        ))));
                    }
                    Err(e) => {
                        self.m.rejected_overloaded.increment(1);
                        let _ = reply.send(Err(Status::resource_exhausted(e.to_string())));
                    }
                }
            }
            Event::Reconfigure { change, reply, at } => {
                if let Change::Add(m) = &change {
                    let rows = self.node.rows();
                    let ever = self.node.configuration_members().ever;
                    // An id below the rows known that was never a member (skipped by an
                    // earlier add) has a row the core answers Joins for as if it were one:
                    // ids are handed out above every row known.
                    if m.id.index() < rows && !ever.contains(&m.id) {
                        let _ = reply.send(Err(Status::invalid_argument(format!(
                            "replica {} cannot be added: ids are handed out above every id the \
                             cluster has known (pick {rows} or above); the current members are {}",
                            m.id.0,
                            ids_text(self.node.configuration().members()),
                        ))));
                        return;
                    }
                    let fresh = self
                        .knocked
                        .get(&m.id)
                        .is_some_and(|at| at.elapsed() < KNOCK_FRESH);
                    if !fresh && !self.node.configuration_members().ever.contains(&m.id) {
                        let _ = reply.send(Err(Status::failed_precondition(format!(
                            "start replica {id} first (replica --id {id} --config config.json \
                             --peer-addr {} --client-addr {} --metrics-addr HOST:PORT): no Join \
                             from it reached replica {} in the last {}s, and the new \
                             configuration counts it; the current members are {}",
                            m.peer_addr,
                            m.client_addr,
                            self.me.0,
                            KNOCK_FRESH.as_secs(),
                            ids_text(self.node.configuration().members()),
                            id = m.id.0,
                        ))));
                        return;
                    }
                }
                let token = self.next_token;
                self.next_token += 1;
                let epoch = self.node.configuration().epoch();
                let cmd = Command::reconfigure(self.me, change.clone(), epoch);
                let request = (cmd.client, cmd.request);
                tracing::info!(?change, %epoch, "membership change proposed");
                match self.node.propose_reconfigure(token, change, now) {
                    Ok(()) => {
                        self.waiting.insert(token, Waiter { reply, at, request });
                    }
                    Err(e) => {
                        let _ = reply.send(Err(reconfigure_refusal(
                            e,
                            self.node.configuration().members(),
                        )));
                    }
                }
            }
            Event::Peer {
                from,
                incarnation,
                messages,
                behind,
                ..
            } => {
                if !self.node.hear(from, incarnation) {
                    return;
                }
                if behind {
                    self.node.peer_knows_more_rows(now, from);
                }
                if let Some(h) = self.heard.get_mut(from.index()) {
                    *h = Instant::now();
                }
                for msg in messages {
                    self.m.received(from.0, &msg);
                    if let (Message::PreAcceptOk { .. } | Message::AcceptOk { .. }, Some(i)) =
                        (&msg, msg.instance())
                    {
                        if let Some(sent) = self.rtt_sent.remove(&(from, i)) {
                            if let Some(h) = self.m.rtt.get(from.index()) {
                                h.record(sent.elapsed().as_secs_f64());
                            }
                        }
                    }
                    tracing::debug!(dir = "recv", kind = msg.kind(), from = %from, to = %self.me,
                        instance = %Show(msg.instance()), ballot = %Show(msg.ballot()),
                        deps = %ShowDeps(msg.deps()));
                    self.node.handle(now, from, msg);
                }
            }
            Event::Status { reply } => {
                let core = self.node.replica();
                let status = proto::StatusReply {
                    id: self.me.0,
                    executed: core.kv().executed(),
                    digest: core.kv().digest(),
                    committed: core.committed_count(),
                    keys: core.kv().len() as u64,
                    waiting: core.unexecuted(),
                    joining: self.node.joining(),
                    abstaining: core.abstaining(),
                    peers_heard: self
                        .links
                        .ids()
                        .filter(|p| self.reachable(*p, now))
                        .map(|p| p.0)
                        .collect(),
                    peers_suspected: self
                        .links
                        .ids()
                        .filter(|p| !self.reachable(*p, now))
                        .map(|p| p.0)
                        .collect(),
                    // The service fills in what it holds (see `ClientService::status_call`).
                    ..Default::default()
                };
                self.answers.push(Answer::Status(reply, status));
            }
            Event::Join {
                from,
                incarnation,
                reply,
            } => {
                if from != self.me
                    && !self.members.is_member(from)
                    && from.index() >= self.node.rows()
                {
                    // Not a member of anything known here: a replica being added, perhaps.
                    if self.knocked.insert(from, Instant::now()).is_none() {
                        tracing::info!(peer = %from, configuration = %self.members,
                            "a replica that is not a member asks to join: it counts as live for \
                             a `client member add` of it");
                    }
                }
                let token = self.next_token;
                self.next_token += 1;
                self.joins.insert(
                    token,
                    PendingJoin {
                        from,
                        incarnation,
                        reply,
                    },
                );
                self.node.answer_join(token, from, incarnation);
            }
            Event::Snapshot {
                from,
                incarnation,
                reply,
            } => {
                let started = Instant::now();
                let result = match self.node.snapshot_for(from, incarnation) {
                    Ok(node::Image {
                        checkpoint,
                        records,
                    }) => {
                        let snapshot = proto::Snapshot {
                            checkpoint: checkpoint.into(),
                            records: records
                                .iter()
                                .map(|(id, inst)| wire::record_to_proto(*id, inst))
                                .collect(),
                        };
                        let bytes = prost::Message::encode_to_vec(&snapshot);
                        tracing::info!(peer = %from, bytes = bytes.len(), records = records.len(),
                            ms = started.elapsed().as_millis() as u64,
                            "snapshot taken for a joining peer");
                        metrics::counter!("epaxos_snapshots_sent_total").increment(1);
                        Ok(bytes)
                    }
                    Err(e @ Refusal::Joining) => Err(Status::unavailable(e.to_string())),
                    Err(e) => Err(Status::failed_precondition(e.to_string())),
                };
                self.answers.push(Answer::Snapshot(reply, result));
            }
            Event::Joined(joined) => match *joined {
                // Sent as `LaterConfiguration` by the join task; the same if it comes here.
                join::Joined::Later(later) => self.adopt_later(later),
                join::Joined::Fresh => {
                    tracing::info!("joined the cluster as a new replica");
                    self.node.join_fresh();
                }
                join::Joined::Rejoin { horizons, snapshot } => {
                    let join::Snapshot {
                        from,
                        checkpoint,
                        records,
                    } = *snapshot;
                    // The configuration the join settled on (it adopted any later one).
                    let joined_in = crate::core::epoch::Epoch(self.members.epoch());
                    self.node.join_from_snapshot(
                        now,
                        joined_in,
                        horizons.clone(),
                        checkpoint,
                        records,
                    );
                    let core = self.node.replica();
                    // An id beyond config.json's: a replica being added, now a voting member.
                    let added = self.me.index() >= core.options().n;
                    tracing::info!(%from, keys = core.kv().len(),
                    committed = core.committed_count(), executed = core.kv().executed(),
                    horizons = ?horizons, added,
                    since_start_ms = self.start.elapsed().as_millis() as u64,
                    "{}", if added {
                        "joined the cluster as an added member from a peer's snapshot: it \
                         votes from now on"
                    } else {
                        "rejoined the cluster from a peer's snapshot"
                    });
                    metrics::counter!("epaxos_rejoins_total").increment(1);
                }
            },
            Event::LaterConfiguration(later) => self.adopt_later(*later),
            Event::CaughtUp(snapshot) => {
                if self.checkpoint_writing {
                    // Installing rewrites the checkpoint and the log: after the one being
                    // written (the loop installs it then).
                    self.deferred_install = Some(snapshot);
                } else {
                    self.install_caught_up(now, *snapshot);
                }
            }
        }
    }

    /// Makes the shell act in `members` (at start, and once a decided configuration is
    /// durable): links to its members, the ids the peer listener takes, per-peer metrics, and
    /// what Status and the admin calls show. The caller persists a decided configuration
    /// first (`Metadata::store_configuration`): nothing of a new epoch may happen before.
    pub(super) fn apply_configuration(&mut self, members: Arc<Members>) {
        self.apply_configuration_keeping(members, &[]);
    }

    /// As [`Self::apply_configuration`], still linked to `kept` too: the members a change took
    /// out, which must still get the old epoch's messages (the Commit of the change itself,
    /// from which a removed replica learns it was removed), until the next change or restart.
    fn apply_configuration_keeping(&mut self, members: Arc<Members>, kept: &[Member]) {
        let mut linked = members.members().to_vec();
        linked.extend(kept.iter().filter(|m| !members.is_member(m.id)).cloned());
        let linked = Members::new(members.epoch(), linked)
            .expect("a configuration's members and others' ids: distinct, within bounds");
        let (started, ended) = self.links.apply(&linked);
        self.ids.admit(&members);
        let rows = members
            .members()
            .iter()
            .map(|m| m.id.index() + 1)
            .max()
            .unwrap_or(0)
            .max(self.node.rows());
        self.m.grow(rows);
        for id in &started {
            crate::server::metrics::register_peer(id.0);
        }
        if !started.is_empty() || !ended.is_empty() {
            let ids = |v: &[ReplicaId]| v.iter().map(|r| r.0).collect::<Vec<u32>>();
            tracing::info!(configuration = %members, started = ?ids(&started),
                ended = ?ids(&ended), "peer links follow the configuration");
        }
        crate::server::metrics::configuration(&members);
        self.members = members.clone();
        self.members_tx.send_replace(members);
    }

    /// A joining replica learnt from a peer that the cluster acts in `later`, a later
    /// configuration than the one it started with (config.json's): it adopts it, durably
    /// before anything else, or, not being a member, stops with the members in the error.
    /// Said once with both.
    pub(super) fn adopt_later(&mut self, later: Members) {
        if later.epoch() <= self.members.epoch() {
            return;
        }
        tracing::warn!(started_with = %self.members, cluster = %later,
            "config.json is older than the cluster's configuration: the cluster's rules");
        if !later.is_member(self.me) {
            self.stop = Some(RuntimeError::Members(format!(
                "replica {} is not a member of the cluster's configuration, {later}; config.json \
                 is stale ({}): start a member's id, or add this replica first (client member \
                 add)",
                self.me.0, self.members
            )));
            return;
        }
        let metadata = &mut self.metadata;
        if let Err(e) = tokio::task::block_in_place(|| metadata.store_configuration(&later)) {
            tracing::error!(error = %e, "cannot persist the configuration; stopping the replica");
            self.stop = Some(e.into());
            return;
        }
        self.apply_configuration(Arc::new(later));
    }

    /// Installs the snapshot of a replica left behind (see `Node::install_caught_up`).
    pub(super) fn install_caught_up(&mut self, now: Duration, snapshot: join::Snapshot) {
        self.catch_up_started = None;
        let join::Snapshot {
            from,
            checkpoint,
            records,
        } = snapshot;
        let collected = checkpoint.gc_prefix.clone();
        self.node.install_caught_up(now, checkpoint, records);
        let core = self.node.replica();
        tracing::info!(%from, collected = ?collected, keys = core.kv().len(),
            executed = core.kv().executed(),
            "caught up from a peer's snapshot: peers had collected instances this replica had \
             not executed while it was down or cut off");
        metrics::counter!("epaxos_catch_ups_total").increment(1);
    }

    /// Starts fetching a snapshot if the node was left behind and no fetch runs yet.
    pub(super) fn start_catch_up(&mut self) {
        let Some(source) = self.node.catching_up() else {
            return;
        };
        if self.catch_up_started.is_some() {
            return;
        }
        tracing::warn!(%source,
            "left behind: a peer collected instances this replica has not executed; fetching \
             a snapshot (no client requests meanwhile)");
        let ctx = self.catch_up.clone();
        let (members, rows) = (self.members.clone(), self.node.rows());
        let handle = tokio::spawn(async move {
            let snapshot =
                join::catch_up(&members, ctx.me, ctx.incarnation, source, &ctx.dialer, rows).await;
            if let Some(big) = ctx.big.upgrade() {
                let _ = big.send(Event::CaughtUp(Box::new(snapshot))).await;
            }
        });
        self.catch_up_started = Some(handle);
    }

    /// Makes durable what the node itself must store (see `node::Ready`: peers' incarnations,
    /// an installed snapshot, the membership), before anything of `ready` is carried out.
    pub(super) async fn persist_node(&mut self, ready: &node::Ready) -> Result<(), RuntimeError> {
        self.persist_epochs(ready).await?;
        if ready.peers.is_none() && ready.install.is_none() && ready.membership.is_none() {
            return Ok(());
        }
        if ready.install.is_some() {
            // The log is replaced: after everything handed to the writer is in it.
            self.writer.wait_idle().await?;
        }
        let (writer, metadata) = (&self.writer, &mut self.metadata);
        until_written(|| -> Result<(), StorageError> {
            if let Some(peers) = &ready.peers {
                metadata.store_peers(peers)?;
            }
            if let Some(installed) = &ready.install {
                // The records go into the current log first: a crash after the new checkpoint
                // is in place but before the log is replaced then restores the checkpoint with
                // every record beside it (the snapshot's decided instances are in no log yet).
                writer.with_log(|log| {
                    log.append(&installed.records)?;
                    log.checkpoint(&installed.checkpoint, &installed.records)
                })?;
            }
            if let Some(membership) = &ready.membership {
                metadata.store_membership(membership)?;
            }
            Ok(())
        })
        .await
        .inspect_err(|e| tracing::error!(error = %e, "cannot persist; stopping the replica"))?;
        if let Some(peers) = &ready.peers {
            for (a, p) in self.accepted.iter().zip(peers) {
                a.store(p.map_or(0, Incarnation::get), Ordering::Relaxed);
            }
        }
        Ok(())
    }

    /// A change executed (`Ready::configuration`) or an epoch was sealed (`core.sealed`):
    /// both are made durable in the metadata record, synchronously, before anything else of
    /// `ready` is carried out (its early PreAccepts included), then the shell acts in the new
    /// configuration. A replica must never act in an epoch, or vote past a seal, that a
    /// restart would not give back (`Restored::configuration`, `Restored::sealed`).
    async fn persist_epochs(&mut self, ready: &node::Ready) -> Result<(), RuntimeError> {
        if ready.configuration.is_none() && ready.core.sealed.is_none() {
            return Ok(());
        }
        let next = match &ready.configuration {
            Some(decided) => match self.members_of(decided) {
                Ok(members) => Some(members),
                Err(e) => {
                    tracing::error!(error = %e, "a decided configuration names members without \
                        addresses; stopping the replica");
                    return Err(RuntimeError::Members(e));
                }
            },
            None => None,
        };
        let metadata = &mut self.metadata;
        let decided = next.as_ref().zip(ready.configuration.as_ref());
        let seals = ready.core.sealed.as_deref();
        until_written(|| metadata.store_epochs(decided, seals))
            .await
            .inspect_err(|e| tracing::error!(error = %e, "cannot persist; stopping the replica"))?;
        if let Some(next) = next {
            tracing::info!(configuration = %next, removed = !next.is_member(self.me),
                "membership change executed: acting in the new configuration");
            let left = self.members.clone();
            self.apply_configuration_keeping(Arc::new(next), left.members());
        }
        Ok(())
    }

    /// The shell's view of a decided configuration: each member with its addresses, from the
    /// change that added it or the configuration acted in so far.
    fn members_of(&self, decided: &crate::core::replica::Decided) -> Result<Members, String> {
        let c = &decided.configuration;
        let members = c
            .members()
            .iter()
            .map(|id| {
                if let Some(m) = decided.members.iter().find(|m| m.id == *id) {
                    return Members::member_from_parts(id.0, &m.peer_addr, &m.client_addr)
                        .map_err(|e| e.to_string());
                }
                self.members
                    .get(*id)
                    .or_else(|| self.metadata.added.iter().find(|m| m.id == *id))
                    .cloned()
                    .ok_or_else(|| format!("no address known for replica {} of {c}", id.0))
            })
            .collect::<Result<Vec<_>, _>>()?;
        Members::new(c.epoch().0, members).map_err(|e| e.to_string())
    }

    /// Forgets the clients whose calls the service has given up on (their `propose_timeout`
    /// passed): nothing of them stays in this table or in the node's.
    pub(super) fn forget_given_up(&mut self) {
        while let Some(entry) = self.waiting.first_entry() {
            if entry.get().at.elapsed() < self.propose_timeout && !entry.get().reply.is_closed() {
                break;
            }
            let (token, w) = entry.remove_entry();
            self.node.forget(token, w.request);
        }
    }

    /// Whether this replica can serve now (see `server::health`): a peer counts as reachable
    /// while the core does not suspect it.
    pub(super) fn health(&self) -> Health {
        let now = self.start.elapsed();
        let core = self.node.replica();
        // Reachable members of the configuration it acts in (this replica if it is one).
        let n = self.members.members().len();
        let reachable = self
            .members
            .members()
            .iter()
            .filter(|m| m.id == self.me || self.reachable(m.id, now))
            .count();
        if self.node.joining() && !self.members.is_member(self.me) {
            return Health::NotMember;
        }
        // Catching up from a snapshot serves nothing, like joining.
        let joining = self.node.joining() || self.node.catching_up().is_some();
        Health::assess(joining, core.abstaining(), reachable, n)
    }

    /// Whether `peer` counts as reachable: the core knows its row and does not suspect it (a
    /// member whose row the core has not learnt yet was never heard).
    fn reachable(&self, peer: ReplicaId, now: Duration) -> bool {
        peer.index() < self.node.rows() && !self.node.replica().is_suspected(peer, now)
    }

    /// Logs and exports a change of `abstaining` (see `Replica::abstaining`).
    pub(super) fn report_abstaining(&mut self, gauge: &metrics::Gauge) {
        let abstaining = self.node.replica().abstaining();
        if abstaining == self.abstaining {
            return;
        }
        if abstaining {
            tracing::warn!(
                "abstaining below the rejoin horizons until every row is known committed up \
                 to them: until then this replica counts as a failure"
            );
        } else {
            tracing::info!("caught up to the rejoin horizons: votes on everything again");
        }
        self.abstaining = abstaining;
        gauge.set(if abstaining { 1.0 } else { 0.0 });
    }

    /// Holds an iteration's outputs (its early messages gone) until its group of records is
    /// durable, or carries them out at once when nothing they may reveal is still on its way
    /// to the disk. In order: outputs never overtake earlier held ones.
    ///
    /// What a crash loses, and why that is safe: the outputs of group g leave only once every
    /// group up to g is synced, so a crash before that loses records whose effects no one
    /// outside has seen (no vote, decision, reply or answer built on them), exactly as a crash
    /// before those events were handled; a crash after it loses nothing they revealed. An
    /// iteration without records waits for the last group handed over: it may reveal state
    /// (an execution, a resend, a Status digest) that earlier records hold.
    pub(super) fn hold(&mut self, group: u64, ready: node::Ready) {
        let answers = std::mem::take(&mut self.answers);
        self.held.push_back(Held {
            group,
            ready,
            answers,
        });
        self.release(self.writer.durable());
    }

    /// Whether the loop should take no events and no ticks until the disk catches up: the
    /// writer's queue is full (groups or bytes), or as many iterations' outputs wait (an
    /// iteration without records still holds its outputs while a group is on its way).
    pub(super) fn backlogged(&self) -> bool {
        self.writer.backlogged() || self.held.len() >= limits::WRITER_QUEUE_MAX
    }

    /// Carries out, oldest first, the held outputs whose group is durable, and tells the node
    /// how far its records are.
    pub(super) fn release(&mut self, durable: u64) {
        while self.held.front().is_some_and(|h| h.group <= durable) {
            let Held { ready, answers, .. } = self.held.pop_front().expect("front checked");
            self.node.persisted_through(ready.core.slot_end);
            self.carry_out(ready);
            for answer in answers {
                match answer {
                    Answer::Status(reply, status) => {
                        let _ = reply.send(status);
                    }
                    Answer::Snapshot(reply, result) => {
                        let _ = reply.send(result);
                    }
                }
            }
        }
    }

    /// bigChannel closed (the replica stops): the groups handed over are made durable and
    /// their outputs carried out, as when the loop synced in place.
    async fn finish(&mut self) -> Result<(), RuntimeError> {
        self.writer.wait_idle().await?;
        self.release(self.writer.durable());
        Ok(())
    }

    /// Carries out the node's outputs once what they depend on is durable.
    pub(super) fn carry_out(&mut self, ready: node::Ready) {
        for (token, answer) in ready.joins {
            let Some(PendingJoin {
                from,
                incarnation,
                reply,
            }) = self.joins.remove(&token)
            else {
                continue;
            };
            if let Ok(JoinAnswer {
                previous: Some(old),
                ..
            }) = &answer
            {
                if Some(*old) != incarnation {
                    tracing::warn!(peer = %from, %old, new = ?incarnation.map(Incarnation::get),
                        "peer rejoins with a new data directory: its old incarnation is refused \
                         from now on");
                    metrics::counter!("epaxos_peer_rejoined_total",
                        "peer" => crate::server::metrics::peer_label(from.0))
                    .increment(1);
                }
            }
            let members = self.members.clone();
            let _ = reply.send(
                answer
                    .map(|a| join_reply(a, &members))
                    .map_err(|e| match e {
                        Refusal::BadJoin if self.knocked.contains_key(&from) => {
                            Status::failed_precondition(format!(
                                "replica {} is not a member of the cluster's configuration, \
                                 {members}: it waits until an admin adds it (client member add \
                                 {} PEER_ADDR CLIENT_ADDR)",
                                from.0, from.0
                            ))
                        }
                        Refusal::BadJoin => Status::invalid_argument(e.to_string()),
                        _ => Status::unavailable(e.to_string()),
                    }),
            );
        }
        for r in ready.refused {
            // The Dispatch reader closes such a stream too; these were queued before it did.
            tracing::debug!(peer = %r.peer, incarnation = %r.incarnation, recorded = %r.recorded,
                "batch from a replaced incarnation refused");
        }
        self.carry_out_core(ready.core);
    }

    /// Encodes each message once and queues the bytes for every addressee.
    pub(super) fn send_messages(&mut self, messages: Vec<Outgoing>) {
        let m = &self.m;
        for out in messages {
            let bytes = wire::encode(&out.msg);
            let timed = match (&out.msg, out.msg.instance()) {
                (Message::PreAccept { .. } | Message::Accept { .. }, Some(i)) => Some(i),
                _ => None,
            };
            for to in out.to {
                m.sent(to.0, &out.msg);
                if let Some(i) = timed {
                    if self.rtt_sent.len() < RTT_PENDING_MAX {
                        self.rtt_sent.insert((to, i), Instant::now());
                    }
                }
                tracing::debug!(dir = "send", kind = out.msg.kind(), from = %self.me, to = %to,
                    instance = %Show(out.msg.instance()), ballot = %Show(out.msg.ballot()),
                    deps = %ShowDeps(out.msg.deps()));
                let Some(q) = self.links.queue(to) else {
                    continue;
                };
                if q.try_send(bytes.clone()).is_err() {
                    if let Some(d) = m.dropped.get(to.index()) {
                        d.increment(1);
                    }
                }
            }
        }
    }

    /// Carries out the protocol core's outputs (what `run_loop` left of them: the early
    /// messages went before the sync).
    pub(super) fn carry_out_core(&mut self, ready: Ready) {
        self.send_messages(ready.messages);
        let m = &self.m;
        for batch in ready.batches {
            tracing::debug!(commands = batch, "instance started (batch size)");
            m.batches.increment(1);
            m.batch_size.record(batch as f64);
        }
        m.recoveries_started.increment(ready.recoveries_started);
        ready
            .refused
            .into_iter()
            .for_each(crate::server::metrics::contradiction);
        for r in ready.rejected {
            metrics::counter!("epaxos_peer_rejected_total",
                "peer" => crate::server::metrics::peer_label(r.from.0), "reason" => r.reason.label())
            .increment(1);
            tracing::debug!(from = %r.from, kind = r.kind, reason = r.reason.label(),
                "refused a peer message naming what cannot exist");
        }
        for c in ready.committed {
            m.committed.increment(1);
            if let Some((path, latency)) = c.led {
                m.commit(path, c.commands);
                if path == Path::Recovered {
                    tracing::info!(
                        instance = %c.instance,
                        outcome = if c.commands == 0 { "nop" } else { "command" },
                        took_ms = latency.as_millis() as u64,
                        "recovered instance"
                    );
                } else if path == Path::Fast {
                    m.commit_latency_fast.record(latency.as_secs_f64());
                } else {
                    m.commit_latency_slow.record(latency.as_secs_f64());
                }
            }
        }
        m.executed_instances.increment(ready.executed.len() as u64);
        // Sessions: expired here, and commands refused because theirs had (every replica
        // counts the same refusals, whether or not the client waits here).
        m.sessions_expired.increment(ready.sessions_expired);
        m.session_expired_refusals
            .increment(ready.refused_expired.len() as u64);
        for reply in ready.replies {
            m.executed_commands.increment(1);
            if let Some(Waiter {
                reply: tx,
                at,
                request: (client, request),
            }) = self.waiting.remove(&reply.token)
            {
                m.execution_latency.record(at.elapsed().as_secs_f64());
                tracing::debug!(
                    client = client.0,
                    request = request.0,
                    us = at.elapsed().as_micros() as u64,
                    ok = reply.result.is_ok(),
                    "reply"
                );
                let _ = tx.send(reply.result.map_err(|e| match e {
                    ReplyError::Stale
                    | ReplyError::Reused
                    | ReplyError::Expired(_)
                    | ReplyError::ResultNotKept(_) => Status::failed_precondition(e.to_string()),
                }));
            }
        }
    }
}

/// `ids` as the text an error shows: `0, 1`.
pub(super) fn ids_text(ids: &[ReplicaId]) -> String {
    ids.iter()
        .map(|id| id.0.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// A refused membership change as the admin call's answer, naming the current members: a
/// change that cannot be (a wrong id, the last member) is INVALID_ARGUMENT; one that cannot be
/// now (another in progress, no live majority, this replica removed) FAILED_PRECONDITION.
pub(super) fn reconfigure_refusal(e: ReconfigureRefusal, members: &[ReplicaId]) -> Status {
    use ReconfigureRefusal as R;
    let text = format!("{e}; the current members are {}", ids_text(members));
    match e {
        R::UnknownMember(_)
        | R::DuplicateMember(_)
        | R::TooMany
        | R::LastMember
        | R::Malformed(_) => Status::invalid_argument(text),
        R::InFlight | R::NoLiveMajority { .. } | R::Removed => Status::failed_precondition(text),
        R::Joining | R::CatchingUp => Status::unavailable(text),
        R::Overloaded => Status::resource_exhausted(text),
    }
}
