//! Outbound peer links: one task per peer keeps a `Dispatch` stream to that peer open, and the
//! stream's body takes batches straight from the peer's bounded queue of encoded messages. Only
//! the dialer writes; the receiver reads.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::transport::Channel;

use crate::server::config::HostPort;

use metrics::gauge;
use tokio_stream::Stream;

use crate::server::queue::ByteReceiver;

use crate::core::ids::{Incarnation, ReplicaId};
use crate::proto::peer_client::PeerClient;
use crate::proto::PeerBatch;
use crate::server::backoff::Backoff;
use crate::server::metrics::peer_label;
use crate::server::tls::PeerDialer;

use crate::core::limits::{
    PEER_GRPC_MESSAGE_BYTES_MAX, STREAM_BATCH_BYTES_MAX, STREAM_BATCH_MESSAGES_MAX,
};
/// Redialing a peer: from 50 ms, doubling up to 2 s, and from 50 ms again once connected.
const REDIAL: Backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(2));
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long one name resolution may take (a resolver that does not answer must not stall a
/// link or a join forever; the dial is retried with backoff).
pub const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);
/// Most addresses tried per dial when a name resolves to several.
const ADDRESSES_PER_DIAL_MAX: usize = 8;

/// Why an address could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum ResolveError {
    #[error("cannot resolve {addr}: {source}")]
    Lookup {
        addr: String,
        source: std::io::Error,
    },
    #[error("cannot resolve {0}: no answer within {RESOLVE_TIMEOUT:?}")]
    Timeout(String),
    #[error("cannot resolve {0}: the name has no address")]
    Empty(String),
}

/// The socket addresses of `addr` now: an IP literal as it is, a name through the system
/// resolver (/etc/hosts, DNS) on every call, so that a peer that comes back elsewhere is found
/// at its new address on the next dial.
pub async fn resolve(addr: &HostPort) -> Result<Vec<SocketAddr>, ResolveError> {
    if let Some(sa) = addr.socket_addr() {
        return Ok(vec![sa]);
    }
    let text = addr.to_string();
    let lookup = tokio::net::lookup_host(text.clone());
    let found = match tokio::time::timeout(RESOLVE_TIMEOUT, lookup).await {
        Ok(Ok(found)) => found,
        Ok(Err(source)) => return Err(ResolveError::Lookup { addr: text, source }),
        Err(_) => return Err(ResolveError::Timeout(text)),
    };
    let mut out: Vec<SocketAddr> = Vec::new();
    for sa in found {
        if !out.contains(&sa) && out.len() < ADDRESSES_PER_DIAL_MAX {
            out.push(sa);
        }
    }
    if out.is_empty() {
        return Err(ResolveError::Empty(text));
    }
    Ok(out)
}

/// Why a peer could not be dialed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    #[error("{addr} ({resolved}): {error}")]
    Connect {
        addr: String,
        resolved: SocketAddr,
        error: String,
    },
}

/// Resolves `addr` afresh and connects to the first of its addresses that answers, through
/// `dialer` (which checks that the certificate names replica `peer`, whatever address it was
/// reached at). Returns the channel and the address it reached.
pub async fn dial(
    dialer: &PeerDialer,
    peer: ReplicaId,
    addr: &HostPort,
    connect_timeout: Duration,
) -> Result<(Channel, SocketAddr), DialError> {
    let resolved = resolve(addr).await?;
    let mut last = None;
    for sa in resolved {
        let connected = match dialer.endpoint(peer, sa) {
            Ok(e) => {
                e.connect_timeout(connect_timeout)
                    .tcp_nodelay(true)
                    .http2_keep_alive_interval(Duration::from_secs(5))
                    .keep_alive_timeout(Duration::from_secs(10))
                    .connect()
                    .await
            }
            Err(e) => Err(e),
        };
        match connected {
            Ok(channel) => return Ok((channel, sa)),
            Err(e) => {
                last = Some(DialError::Connect {
                    addr: addr.to_string(),
                    resolved: sa,
                    error: error_chain(&e),
                })
            }
        }
    }
    Err(last.expect("resolve returns at least one address"))
}

/// Runs the link to `peer` (its peer listener at `addr`, through `dialer`: mutual TLS unless
/// `--insecure`) until `queue` closes (the replica is shutting down). Dials with
/// exponential backoff, so a peer that starts later or restarts is reconnected by itself;
/// each dial resolves `addr` again, so a peer that comes back at another address is found.
/// Messages handed over while the link is down wait in the queue; a message lost when a
/// stream breaks is resent by the protocol's own retransmission.
pub async fn run_link(
    me: ReplicaId,
    incarnation: Incarnation,
    peer: ReplicaId,
    addr: HostPort,
    dialer: PeerDialer,
    queue: ByteReceiver,
) {
    let connected = gauge!("epaxos_peer_connected", "peer" => peer_label(peer.0));
    let queue = Arc::new(Mutex::new(queue));
    let is_closed = || {
        queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .is_closed()
    };
    let mut backoff = REDIAL;
    // A TLS failure (certificates) does not heal by retrying: warn once until connected.
    let mut warned = false;
    loop {
        let channel = match dial(&dialer, peer, &addr, CONNECT_TIMEOUT).await {
            Ok((c, reached)) => {
                tracing::debug!(%peer, %addr, %reached, "dialed peer");
                c
            }
            Err(e) => {
                let why = e.to_string();
                if !warned && tls_trouble(&why) {
                    warned = true;
                    tracing::warn!(%peer, %addr, error = %why,
                        "TLS handshake with peer failed (check the certificates); retrying");
                } else if !warned && matches!(e, DialError::Resolve(_)) {
                    // A name that does not resolve is a configuration or DNS problem worth
                    // one line; it is retried like a peer that is down.
                    warned = true;
                    tracing::warn!(%peer, error = %why, "cannot resolve peer address; retrying");
                } else {
                    tracing::debug!(%peer, %addr, error = %why, "dial failed; retrying");
                }
                if is_closed() {
                    return;
                }
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        let mut client = PeerClient::new(channel)
            .max_decoding_message_size(PEER_GRPC_MESSAGE_BYTES_MAX)
            .max_encoding_message_size(PEER_GRPC_MESSAGE_BYTES_MAX);
        let batches = Batches {
            queue: queue.clone(),
            retired: Arc::new(AtomicBool::new(false)),
            from: me.0,
            incarnation: incarnation.get(),
        };
        // Set when this stream is given up, so that a body hyper has not dropped yet takes no
        // more messages from the queue (the next stream's would be lost in it).
        let retired = RetireOnDrop(batches.retired.clone());
        let mut responses = match client.dispatch(batches).await {
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
                drop(retired);
                tokio::time::sleep(backoff.next_delay()).await;
                continue;
            }
        };
        tracing::info!(%peer, %addr, "connected to peer");
        warned = false;
        connected.set(1.0);
        backoff.reset();
        // The peer never writes back: a message or the end here means the stream is gone. The
        // body ends (and with it the peer's side, then this response stream) once the queue
        // closes, when the replica shuts down.
        if let Err(status) = responses.message().await {
            if status.code() == tonic::Code::FailedPrecondition {
                tracing::error!(%peer, reason = status.message(), "peer refuses this replica");
            }
            if status.code() == tonic::Code::PermissionDenied {
                tracing::error!(%peer, reason = status.message(),
                    "peer refuses this replica's certificate");
            }
        }
        drop(retired);
        connected.set(0.0);
        if is_closed() {
            return;
        }
        tracing::info!(%peer, "peer stream closed; redialing");
        tokio::time::sleep(backoff.next_delay()).await;
    }
}

/// The body of one `Dispatch` stream: batches taken straight from the peer's queue, up to
/// `STREAM_BATCH_MESSAGES_MAX` messages or `STREAM_BATCH_BYTES_MAX` bytes each. The HTTP/2
/// body pump polls it only while the stream has send capacity, so a slow peer leaves messages
/// in the bounded queue (which then grows the batches) and nothing is buffered in between; and
/// a message handed over wakes that pump directly, with no task relaying it (one thread
/// wake-up fewer per batch than a relay task and a channel).
struct Batches {
    /// Shared with the link task, which holds it across reconnections; locked only inside
    /// `poll_next`, never across an await.
    queue: Arc<Mutex<ByteReceiver>>,
    /// The link gave this stream up: end it, take nothing more.
    retired: Arc<AtomicBool>,
    from: u32,
    incarnation: u64,
}

impl Stream for Batches {
    type Item = PeerBatch;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<PeerBatch>> {
        if self.retired.load(Ordering::Acquire) {
            return Poll::Ready(None);
        }
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        let first = match queue.poll_recv(cx) {
            Poll::Ready(Some(m)) => m,
            // Every sender is gone: the replica is shutting down.
            Poll::Ready(None) => return Poll::Ready(None),
            Poll::Pending => return Poll::Pending,
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
        Poll::Ready(Some(PeerBatch {
            from: self.from,
            messages,
            incarnation: self.incarnation,
        }))
    }
}

/// Retires a stream's body when the link is done with it, whichever way it leaves.
struct RetireOnDrop(Arc<AtomicBool>);

impl Drop for RetireOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// An error and its causes on one line.
pub fn error_chain(e: &dyn std::error::Error) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn ip_literals_resolve_to_themselves_and_names_through_the_resolver() {
        let ip = HostPort::parse("10.1.2.3:7070").expect("addr");
        assert_eq!(
            resolve(&ip).await.expect("literal"),
            vec!["10.1.2.3:7070".parse::<SocketAddr>().expect("addr")]
        );
        // `localhost` is in every /etc/hosts; it goes through the system resolver.
        let name = HostPort::parse("localhost:7070").expect("addr");
        let found = resolve(&name).await.expect("localhost resolves");
        assert!(
            found
                .iter()
                .all(|a| a.ip().is_loopback() && a.port() == 7070),
            "{found:?}"
        );
        let nowhere = HostPort::parse("no-such-host.invalid:7070").expect("addr");
        let err = resolve(&nowhere)
            .await
            .expect_err("RFC 6761: .invalid never resolves");
        assert!(
            err.to_string()
                .starts_with("cannot resolve no-such-host.invalid:7070"),
            "{err}"
        );
    }

    /// A name is dialed at what it resolves to; a failed dial names the configured address
    /// and the resolved one. (That each dial resolves again, so that a peer found at a new
    /// address is reached there, is tested across network namespaces in tests/netns.rs.)
    #[tokio::test]
    async fn a_name_is_dialed_at_its_resolved_address() {
        let first = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = first.local_addr().expect("addr").port();
        let addr = HostPort::parse(&format!("localhost:{port}")).expect("addr");
        let dialer = PeerDialer::insecure();
        let (_, reached) = dial(&dialer, ReplicaId(1), &addr, Duration::from_secs(2))
            .await
            .expect("dial localhost");
        assert_eq!(reached.port(), port);
        assert!(reached.ip().is_loopback());
        drop(first);
        // Nothing listens now: the dial fails and says which resolved address it tried.
        let err = dial(&dialer, ReplicaId(1), &addr, Duration::from_secs(2))
            .await
            .expect_err("nothing listens");
        assert!(
            err.to_string().contains(&format!("localhost:{port}")),
            "{err}"
        );
    }
}
