//! Outbound peer links: one task per peer drains that peer's bounded queue of encoded messages
//! onto the `Dispatch` stream this replica dialed. Only the dialer writes; the receiver reads.

use std::net::SocketAddr;
use std::time::Duration;

use metrics::gauge;
use tokio::sync::mpsc;

use crate::server::queue::ByteReceiver;
use tokio_stream::wrappers::ReceiverStream;

use crate::core::ids::{Incarnation, ReplicaId};
use crate::proto::peer_client::PeerClient;
use crate::proto::PeerBatch;
use crate::server::metrics::peer_label;
use crate::server::tls::PeerDialer;

use crate::core::limits::{
    PEER_GRPC_MESSAGE_BYTES_MAX, STREAM_BATCH_BYTES_MAX, STREAM_BATCH_MESSAGES_MAX,
};
/// Stream items buffered between the link task and the HTTP/2 stream.
const STREAM_ITEMS_MAX: usize = 16;
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_secs(2);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Runs the link to `peer` (its peer listener at `addr`, through `dialer`: mutual TLS unless
/// `--insecure`) until `queue` closes (the replica is shutting down). Dials with
/// exponential backoff, so a peer that starts later or restarts is reconnected by itself.
/// Messages handed over while the link is down wait in the queue; a message lost when a
/// stream breaks is resent by the protocol's own retransmission.
pub async fn run_link(
    me: ReplicaId,
    incarnation: Incarnation,
    peer: ReplicaId,
    addr: SocketAddr,
    dialer: PeerDialer,
    mut queue: ByteReceiver,
) {
    let connected = gauge!("epaxos_peer_connected", "peer" => peer_label(peer.0));
    let mut backoff = BACKOFF_MIN;
    // A TLS failure (certificates) does not heal by retrying: warn once until connected.
    let mut warned = false;
    loop {
        let endpoint = match dialer.endpoint(peer, addr) {
            Ok(e) => e
                .connect_timeout(CONNECT_TIMEOUT)
                .tcp_nodelay(true)
                .http2_keep_alive_interval(Duration::from_secs(5))
                .keep_alive_timeout(Duration::from_secs(10)),
            Err(e) => {
                tracing::error!(%peer, %addr, error = %e, "invalid peer address; link disabled");
                return;
            }
        };
        let channel = match endpoint.connect().await {
            Ok(c) => c,
            Err(e) => {
                let why = error_chain(&e);
                if !warned && tls_trouble(&why) {
                    warned = true;
                    tracing::warn!(%peer, %addr, error = %why,
                        "TLS handshake with peer failed (check the certificates); retrying");
                } else {
                    tracing::debug!(%peer, %addr, error = %why, ?backoff, "dial failed; retrying");
                }
                if queue.is_closed() {
                    return;
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        let mut client = PeerClient::new(channel)
            .max_decoding_message_size(PEER_GRPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(PEER_GRPC_MESSAGE_BYTES_MAX);
        let (tx, rx) = mpsc::channel::<PeerBatch>(STREAM_ITEMS_MAX);
        let mut responses = match client.dispatch(ReceiverStream::new(rx)).await {
            Ok(r) => r.into_inner(),
            Err(e) => {
                let why = error_chain(&e);
                if !warned && (tls_trouble(&why) || e.code() == tonic::Code::PermissionDenied) {
                    warned = true;
                    tracing::warn!(%peer, %addr, error = %why,
                        "peer refused this replica's certificate; retrying");
                } else {
                    tracing::debug!(%peer, error = %why, "dispatch refused; retrying");
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        tracing::info!(%peer, %addr, "connected to peer");
        warned = false;
        connected.set(1.0);
        backoff = BACKOFF_MIN;
        let closed = loop {
            let first = tokio::select! {
                m = queue.recv() => match m {
                    Some(m) => m,
                    None => break true,
                },
                // The peer never writes back; a message or end here means the stream is gone.
                r = responses.message() => {
                    if let Err(status) = r {
                        if status.code() == tonic::Code::FailedPrecondition {
                            tracing::error!(%peer, reason = status.message(),
                                "peer refuses this replica");
                        }
                        if status.code() == tonic::Code::PermissionDenied {
                            tracing::error!(%peer, reason = status.message(),
                                "peer refuses this replica's certificate");
                        }
                    }
                    break false;
                }
            };
            let mut bytes = first.len();
            let mut messages = vec![first];
            while messages.len() < STREAM_BATCH_MESSAGES_MAX && bytes < STREAM_BATCH_BYTES_MAX {
                match queue.try_recv() {
                    Some(m) => {
                        bytes += m.len();
                        messages.push(m);
                    }
                    None => break,
                }
            }
            if tx
                .send(PeerBatch {
                    from: me.0,
                    messages,
                    incarnation: incarnation.get(),
                })
                .await
                .is_err()
            {
                // The stream is gone with this batch; the protocol resends what matters.
                break false;
            }
        };
        connected.set(0.0);
        if closed {
            return;
        }
        tracing::info!(%peer, "peer stream closed; redialing");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// An error and its causes on one line.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Whether a dial error looks like a TLS (certificate) problem rather than a peer that is down.
fn tls_trouble(error: &str) -> bool {
    let e = error.to_ascii_lowercase();
    e.contains("certificate") || e.contains("tls") || e.contains("handshake")
}
