//! Starting a replica: listeners, the peer links, the node restored from disk, joining, and the
//! tasks that run until shutdown.

use super::links::PeerLinks;
use super::*;
use crate::server::members::Members;
use crate::server::peer_ids::PeerIds;

/// Where a listen address binds now: itself if an IP literal, else the first address its name
/// resolves to (`listen_addr`), or each in turn until one binds (`bind`).
pub(super) async fn listen_addr(addr: &HostPort) -> Result<SocketAddr, RuntimeError> {
    let found = transport::resolve(addr)
        .await
        .map_err(|e| RuntimeError::Listen(addr.to_string(), e.to_string()))?;
    Ok(found[0])
}

pub(super) async fn bind(
    addr: &HostPort,
) -> Result<(tonic::transport::server::TcpIncoming, SocketAddr), RuntimeError> {
    let found = transport::resolve(addr)
        .await
        .map_err(|e| RuntimeError::Listen(addr.to_string(), e.to_string()))?;
    let mut errors = Vec::new();
    for sa in &found {
        match tonic::transport::server::TcpIncoming::bind(*sa) {
            Ok(incoming) => return Ok((incoming, *sa)),
            Err(e) if addr.socket_addr().is_some() => return Err(RuntimeError::Bind(*sa, e)),
            Err(e) => errors.push(format!("{sa}: {e}")),
        }
    }
    Err(RuntimeError::Listen(addr.to_string(), errors.join("; ")))
}

/// Runs replica `me` (config.json's entry, or that of a replica being added: see
/// `server::added`) of the cluster `config` seeds, until `shutdown` completes.
pub async fn serve(
    config: Config,
    me: crate::server::config::Replica,
    opts: RuntimeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RuntimeError> {
    opts.validate()?;
    let new_dir = storage::is_new(&opts.data_dir);
    let id = me.id;
    // Certificates first: a replica that cannot serve securely says so before anything else.
    let security = if opts.insecure {
        None
    } else {
        Some(tls::load_replica(&config, id)?)
    };
    // A listen address that is a name binds where it resolves now (the first that binds).
    let metrics_at = listen_addr(&me.listen.metrics_addr).await?;
    let metrics_handle = crate::server::metrics::install()
        .map_err(|e| RuntimeError::Metrics(metrics_at, e.to_string()))?;
    crate::server::metrics::register_all();
    let metrics_listener = std::net::TcpListener::bind(metrics_at)
        .and_then(|l| {
            l.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(l)
        })
        .map_err(|e| RuntimeError::Metrics(metrics_at, e.to_string()))?;
    match &security {
        None => {
            tracing::warn!(
                "--insecure: plaintext listeners and peer links, nobody is authenticated; \
                 anyone who reaches the peer address can speak as any replica"
            );
            metrics::gauge!("epaxos_insecure").set(1.0);
        }
        Some(t) => {
            metrics::gauge!("epaxos_insecure").set(0.0);
            tls::export_expiry(t.own_expiry, t.ca_expiry);
        }
    }
    let dialer = security
        .as_ref()
        .map_or_else(tls::PeerDialer::insecure, |t| t.dialer.clone());
    // Bound before anything dials out: the addresses are ours (or the start fails clearly)
    // before the peer links and the join take ephemeral ports of their own.
    let (client_incoming, client_at) = bind(&me.listen.addr).await?;
    let client_incoming = client_incoming.with_nodelay(Some(true));
    let (peer_incoming, peer_at) = bind(&me.listen.peer_addr).await?;
    let peer_incoming = peer_incoming.with_nodelay(Some(true));
    // Rows: config.json's n, or more if decided configurations added ids.
    let rows = check_cluster_size(&opts.data_dir, config.n())?;
    let (log, recovered) = Log::open_rows(&opts.data_dir, config.n(), rows, opts.sync)?;
    if recovered.truncated_bytes > 0 {
        tracing::warn!(dir = %opts.data_dir.display(), bytes = recovered.truncated_bytes,
            "cut a torn tail off the log (a crash interrupted the last append)");
    }
    let durable = opts.sync == Sync::Fsync;
    metrics::gauge!("epaxos_durable").set(if durable { 1.0 } else { 0.0 });
    let restored = recovered.records.len();
    let metadata = storage::Metadata::open(&opts.data_dir, id, rows)?;
    let (incarnation, peers) = (metadata.incarnation, metadata.peers.clone());
    // What each peer's Dispatch streams are checked against (0: none recorded yet), for every
    // id there can be; the event loop updates it from what the node records.
    let accepted: Arc<Vec<AtomicU64>> = Arc::new(
        (0..limits::MEMBERS_EVER_MAX)
            .map(|i| AtomicU64::new(peers.get(i).copied().flatten().map_or(0, Incarnation::get)))
            .collect(),
    );
    let membership = metadata.membership.clone();
    // The configuration it acts in: the data directory's when it recorded a later epoch than
    // config.json seeds (the cluster decided it), said once when the two differ.
    let (members, differs) = Members::at_start(&config, metadata.configuration());
    if let Some(both) = differs {
        tracing::warn!(%both, "the data directory's configuration wins over config.json's");
    }
    if !members.is_member(id) && membership == Membership::Joining {
        tracing::warn!(replica = %id, configuration = %members,
            "this replica is not a member of the configuration it knows: it asks the members to \
             Join until an admin adds it (client member add {} {} {})",
            id.0, me.peer_addr, me.addr);
    }
    let members = Arc::new(members);
    let (members_tx, members_rx) = watch::channel(members.clone());

    let (health, health_rx) = health::Publisher::new(if membership == Membership::Joining {
        Health::Joining
    } else {
        Health::Serving
    });
    tokio::spawn(crate::server::http::serve(
        metrics_listener,
        metrics_handle,
        health_rx.clone(),
    ));
    let (big_tx, big_rx) = mpsc::channel::<Event>(opts.big_channel_max);
    // The peer links follow the configuration: the event loop applies it first thing.
    let links = PeerLinks::new(
        id,
        incarnation,
        dialer.clone(),
        opts.peer_queue_max,
        opts.peer_queue_bytes_max,
    );

    if membership == Membership::Joining {
        // Whatever an interrupted join left is replaced by the snapshot it takes now.
        let interrupted = !new_dir;
        tracing::info!(interrupted, "new data directory: joining the cluster first");
        let mut members = Members::clone(&members);
        let big = big_tx.clone();
        let dialer = dialer.clone();
        tokio::spawn(async move {
            loop {
                match join::run(&members, id, incarnation, interrupted, &dialer).await {
                    // config.json was stale: the event loop adopts the cluster's (or stops the
                    // replica, not a member of it); the join starts over among its members.
                    join::Joined::Later(later) => {
                        let member = later.is_member(id);
                        members = later.clone();
                        if big
                            .send(Event::LaterConfiguration(Box::new(later)))
                            .await
                            .is_err()
                            || !member
                        {
                            return;
                        }
                    }
                    joined => {
                        let _ = big.send(Event::Joined(Box::new(joined))).await;
                        return;
                    }
                }
            }
        });
    }
    let mut node = Node::new(
        opts.core.clone(),
        opts.checkpoint_every,
        Duration::ZERO,
        Restored {
            membership,
            configuration: metadata.decided(),
            peers,
            checkpoint: recovered.checkpoint,
            records: recovered.records,
            sealed: metadata.seals.clone(),
        },
    );
    if !new_dir {
        node.restarted(Duration::ZERO);
    }
    if !node.joining() {
        tracing::info!(
            records = restored,
            committed = node.replica().committed_count(),
            executed = node.replica().kv().executed(),
            "restored from the log"
        );
    }
    let ids = Arc::new(PeerIds::new(&members, node.rows()));
    let mut event_loop = tokio::spawn(run_loop(
        node,
        big_rx,
        links,
        LoopSetup {
            members: members_tx,
            ids: ids.clone(),
            tick: opts.tick,
            propose_timeout: opts.propose_timeout,
            log,
            metadata,
            accepted: accepted.clone(),
            health,
            catch_up: CatchUpContext {
                me: id,
                incarnation,
                dialer: dialer.clone(),
                big: big_tx.downgrade(),
            },
        },
    ));

    let budget = Arc::new(Semaphore::new(opts.big_channel_bytes_max));
    let started = Instant::now();
    let refused_at_ms: Arc<Vec<AtomicU64>> = Arc::new(
        (0..limits::MEMBERS_EVER_MAX)
            .map(|_| AtomicU64::new(0))
            .collect(),
    );
    let client_service = ClientService {
        id,
        big: big_tx.clone(),
        budget: budget.clone(),
        propose_timeout: opts.propose_timeout,
        health: health_rx.clone(),
        started,
        data_dir: opts.data_dir.clone(),
        refused_at_ms: refused_at_ms.clone(),
        members: members_rx,
        admin: security
            .as_ref()
            .map_or_else(tls::AdminAuth::insecure, |t| t.admin.clone()),
    };
    let cluster_name = security.as_ref().map(|_| config.tls.cluster_name.clone());
    let peer_service = PeerService {
        ids: ids.clone(),
        big: big_tx,
        budget,
        budget_max: opts.big_channel_bytes_max,
        accepted,
        refused_at_ms,
        started,
        auth: Arc::new(tls::PeerAuth::new(cluster_name, ids)),
        joins: Arc::new(admission::PerPeerRate::new(
            limits::MEMBERS_EVER_MAX,
            limits::JOIN_INTERVAL_MIN,
        )),
        snapshots: admission::Snapshots::new(limits::SNAPSHOTS_IN_FLIGHT_MAX),
    };
    let (health_reporter, health_service) = tonic_health::server::health_reporter();
    // gRPC health follows what the event loop assesses (see `server::health`).
    tokio::spawn(health::report_grpc(
        health_rx,
        health_reporter,
        <KvServer<ClientService> as tonic::server::NamedService>::NAME,
    ));
    // Reflection describes the client contract only (client.proto and health).
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::CLIENT_FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| RuntimeError::Reflection(e.to_string()))?;
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::CLIENT_FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .map_err(|e| RuntimeError::Reflection(e.to_string()))?;

    tracing::info!(replica = %id, addr = %me.addr, peer_addr = %me.peer_addr,
        metrics = %me.metrics_addr, listen = %client_at, listen_peer = %peer_at,
        listen_metrics = %metrics_at, n = config.n(), thrifty = opts.core.thrifty, durable,
        tls = security.is_some(), "replica serving");
    // Listeners are bound: under systemd (Type=notify) `systemctl start` returns now.
    crate::server::notify::ready(&format!("replica {} serving on {}", id.0, me.addr));
    // Peers keep their Dispatch streams open forever, so a graceful stop waits at most
    // SHUTDOWN_GRACE for in-flight calls and then ends the servers.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown.await;
        let _ = stop_tx.send(true);
    });
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        // An error means the sender is gone, which only happens after it sent.
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let client_incoming =
        incoming::Capped::new(client_incoming, opts.client_connections_max, "client");
    let mut client_server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .max_concurrent_streams(limits::CLIENT_STREAMS_PER_CONNECTION_MAX)
        .initial_connection_window_size(limits::CLIENT_CONNECTION_WINDOW_BYTES)
        .initial_stream_window_size(limits::CLIENT_STREAM_WINDOW_BYTES)
        .concurrency_limit_per_connection(limits::CLIENT_STREAMS_PER_CONNECTION_MAX as usize)
        .http2_keepalive_interval(Some(limits::CLIENT_KEEPALIVE))
        .http2_keepalive_timeout(Some(limits::CLIENT_KEEPALIVE_TIMEOUT));
    let mut peer_server = tonic::transport::Server::builder().tcp_nodelay(true);
    if let Some(t) = security {
        client_server = client_server
            .tls_config(t.client)
            .map_err(|e| RuntimeError::TlsConfig("client", e))?;
        peer_server = peer_server
            .tls_config(t.peer)
            .map_err(|e| RuntimeError::TlsConfig("peer", e))?;
    }
    let client_server = client_server
        .layer(admission::RequestBytesLayer::new(opts.request_bytes_max))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            KvServer::new(client_service)
                .max_decoding_message_size(limits::CLIENT_GRPC_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(limits::CLIENT_GRPC_MESSAGE_BYTES_MAX),
        )
        .serve_with_incoming_shutdown(client_incoming, stopped(stop_rx.clone()));
    let peer_server = peer_server
        .add_service(
            PeerServer::new(peer_service)
                .max_decoding_message_size(limits::PEER_GRPC_MESSAGE_BYTES_MAX)
                .max_encoding_message_size(limits::PEER_GRPC_MESSAGE_BYTES_MAX),
        )
        .serve_with_incoming_shutdown(peer_incoming, stopped(stop_rx.clone()));
    let result = tokio::select! {
        r = client_server => r.map_err(|e| RuntimeError::Server(client_at, e)),
        r = peer_server => r.map_err(|e| RuntimeError::Server(peer_at, e)),
        r = &mut event_loop => match r {
            Ok(Err(e)) => Err(e),
            _ => Ok(()),
        },
        _ = async {
            stopped(stop_rx.clone()).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => Ok(()),
    };
    event_loop.abort();
    result
}
