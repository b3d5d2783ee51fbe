//! Client sessions and the retry loop.
//!
//! The protocol allows a session (`client_id`) at most one request in flight, numbers its
//! requests 1, 2, 3, ... and makes a retry reuse the number, so that the command executes at most
//! once. A session here is owned by one task and used for one request at a time.

use epaxos_kv::server::backoff::Backoff;
use epaxos_kv::server::config::HostPort;
use std::fmt;
use std::time::{Duration, Instant};

use epaxos_kv::proto::{Operation, ProposeReply, ProposeRequest};
use rand::Rng;
use tonic::Code;

use crate::cluster::{describe_status, is_local_timeout, is_removed_refusal, Cluster, Picker};

/// One client session: a random id and the next request number.
#[derive(Debug)]
pub struct Session {
    client_id: u64,
    next_request_id: u64,
}

impl Session {
    pub fn new() -> Session {
        Session {
            client_id: fresh_client_id(),
            next_request_id: 1,
        }
    }

    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// Takes the number for a new request.
    fn take_request_id(&mut self) -> u64 {
        let id = self.next_request_id;
        self.next_request_id += 1;
        id
    }

    /// Starts over under a new id. Used after giving up on a request that may still be in
    /// flight somewhere, so that the old session never has two requests outstanding.
    fn renew(&mut self) {
        self.client_id = fresh_client_id();
        self.next_request_id = 1;
    }
}

/// A new random session id.
pub fn fresh_client_id() -> u64 {
    // 0 is a legal id, but a zero is what an uninitialised field looks like: avoid it.
    loop {
        let id: u64 = rand::random();
        if id != 0 {
            return id;
        }
    }
}

/// How long to wait for each attempt and how often to retry.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    /// Per attempt.
    pub timeout: Duration,
    /// Further attempts after the first.
    pub retries: u32,
    /// The pause before each retry of one request (it starts over for the next request).
    pub backoff: Backoff,
}

/// Before a retry: 20 ms, doubling up to 500 ms, each +-50% at random.
pub fn retry_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(20), Duration::from_millis(500)).with_jitter(0.5)
}

impl RetryPolicy {
    pub fn new(timeout: Duration, retries: u32) -> RetryPolicy {
        RetryPolicy {
            timeout,
            retries,
            backoff: retry_backoff(),
        }
    }
}

/// A request that was answered.
#[derive(Debug)]
pub struct Success {
    pub reply: ProposeReply,
    /// Attempts made, 1 when the first one succeeded.
    pub attempts: u32,
    /// The replica (index) that answered.
    #[allow(dead_code)] // read by the bench until it got its own attempt loop (bench_target)
    pub replica: usize,
}

/// Whether `status` was made here from a broken connection rather than sent by a replica: tonic
/// reports a replica that died with the request outstanding as UNKNOWN "transport error: ...
/// broken pipe" (or connection reset), with the underlying error as its source; statuses a
/// replica sends have no source. Retrying is safe: the retry has the same request id.
fn is_transport_failure(status: &tonic::Status) -> bool {
    status.code() == Code::Unknown && std::error::Error::source(status).is_some()
}

/// Whether a request that failed with `status` may succeed when sent again (with the same
/// request id, so that it executes at most once).
pub fn retryable_status(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        Code::DeadlineExceeded
            | Code::Unavailable
            | Code::ResourceExhausted
            // The connection broke with the request outstanding (the replica stopped).
            | Code::Cancelled
            | Code::Aborted
    ) || is_transport_failure(status)
}

/// Why one attempt failed.
#[derive(Debug, Clone)]
pub enum AttemptError {
    /// No answer within the per-attempt timeout.
    Timeout {
        replica: usize,
        id: u32,
        addr: HostPort,
    },
    /// The replica (or the transport) answered with an error status.
    Status {
        replica: usize,
        id: u32,
        addr: HostPort,
        status: tonic::Status,
    },
}

impl AttemptError {
    /// A short name for counting errors by kind: "Timeout" or the gRPC code.
    #[allow(dead_code)] // used by the bench until it got its own attempt loop (bench_target)
    pub fn kind(&self) -> String {
        match self {
            AttemptError::Timeout { .. } => "Timeout".to_string(),
            AttemptError::Status { status, .. } => format!("{:?}", status.code()),
        }
    }

    /// The replica (index) of the attempt.
    pub fn replica(&self) -> usize {
        match self {
            AttemptError::Timeout { replica, .. } | AttemptError::Status { replica, .. } => {
                *replica
            }
        }
    }

    /// The replica id of the attempt.
    pub fn id(&self) -> u32 {
        match self {
            AttemptError::Timeout { id, .. } | AttemptError::Status { id, .. } => *id,
        }
    }

    /// Whether the same request may succeed when sent again.
    pub fn retryable(&self) -> bool {
        match self {
            AttemptError::Timeout { .. } => true,
            AttemptError::Status { status, .. } => retryable_status(status),
        }
    }
}

impl fmt::Display for AttemptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AttemptError::Timeout { id, addr, .. } => {
                write!(f, "replica {id} at {addr}: no answer in time")
            }
            AttemptError::Status {
                id, addr, status, ..
            } => write!(f, "replica {id} at {addr}: {}", describe_status(status)),
        }
    }
}

/// A request given up on.
#[derive(Debug)]
pub struct Failure {
    pub attempts: u32,
    pub last: AttemptError,
    /// Whether a retry was still allowed but was not made because `stop_retrying_at` passed.
    #[allow(dead_code)] // read by the bench until it got its own attempt loop (bench_target)
    pub stopped: bool,
    /// Whether an attempt may have executed a command that changes state: sending it again
    /// under a new session could execute it twice.
    pub may_have_executed: bool,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.attempts == 1 {
            write!(f, "{}", self.last)
        } else {
            write!(
                f,
                "gave up after {} attempts; last error: {}",
                self.attempts, self.last
            )
        }
    }
}

impl std::error::Error for Failure {}

/// Whether a replica refused the request because its session expired (idle longer than the
/// replicas' session TTL): nothing was executed for this attempt.
pub fn is_session_expired(status: &tonic::Status) -> bool {
    status.code() == Code::FailedPrecondition
        && status
            .message()
            .starts_with(epaxos_kv::core::session::EXPIRED_PREFIX)
}

/// Whether an attempt that failed so may have executed: anything but a refusal before the
/// command entered the protocol. Those are RESOURCE_EXHAUSTED (a full replica or session
/// table), UNAVAILABLE sent by a replica (shutting down, joining, no majority: see
/// client.proto), a removed member's FAILED_PRECONDITION, and a connection that could not be
/// made (nothing was sent). A retry after
/// those is still a first attempt, so a session's first request survives a dead replica.
fn may_have_executed(err: &AttemptError) -> bool {
    let AttemptError::Status { status, .. } = err else {
        return true;
    };
    match status.code() {
        Code::ResourceExhausted => false,
        // A removed member serves no client: refused before the protocol.
        Code::FailedPrecondition if is_removed_refusal(status) => false,
        Code::Unavailable => {
            std::error::Error::source(status).is_some() && !failed_to_connect(status)
        }
        _ => true,
    }
}

/// Whether tonic made `status` because the connection could not be established.
fn failed_to_connect(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(e) = source {
        if e.is::<tonic::ConnectError>() {
            return true;
        }
        source = e.source();
    }
    false
}

/// Executes `op` as the session's next request: sends it to the replica `picker` chooses and,
/// when an attempt times out or fails with a transient error (DEADLINE_EXCEEDED, UNAVAILABLE,
/// RESOURCE_EXHAUSTED), sends it again with the same `(client_id, request_id)` after a backoff:
/// to the next replica in round-robin mode, to the same one in single mode. No retry starts
/// after `stop_retrying_at`.
///
/// Attempts after one that may have executed are marked `retry`. A session that expired while
/// idle refuses the request ("session expired"): if no attempt may have executed, the request
/// goes again, once, as request 1 of a new session; otherwise its outcome is unknown and the
/// refusal is the failure reported (never a second execution).
pub async fn execute(
    cluster: &Cluster,
    session: &mut Session,
    picker: &mut Picker,
    op: Operation,
    policy: &RetryPolicy,
    stop_retrying_at: Option<Instant>,
    rng: &mut impl Rng,
) -> Result<Success, Failure> {
    let mut request_id = session.take_request_id();
    let mut replica = picker.first(cluster);
    let mut attempt: u32 = 0;
    let mut backoff = policy.backoff.clone();
    // Whether an earlier attempt of this request may have executed (the next is a retry).
    let mut sent_before = false;
    let mut renewed = false;
    // A read changes nothing, so executing it twice is harmless: its retries are sent as first
    // attempts, and an expired session's read simply goes again in a new session.
    let read_only = matches!(op.kind, Some(epaxos_kv::proto::operation::Kind::Get(_)));
    loop {
        attempt += 1;
        let mut req = tonic::Request::new(ProposeRequest {
            client_id: session.client_id(),
            request_id,
            op: Some(op.clone()),
            retry: sent_before && !read_only,
        });
        // Tells the replica how long we wait (grpc-timeout); we also enforce it ourselves.
        req.set_timeout(policy.timeout);
        let mut client = cluster.client(replica);
        let addr = cluster.addr(replica).clone();
        let id = cluster.id(replica);
        let err = match tokio::time::timeout(policy.timeout, client.propose(req)).await {
            Ok(Ok(reply)) => {
                cluster.mark_up(replica);
                return Ok(Success {
                    reply: reply.into_inner(),
                    attempts: attempt,
                    replica,
                });
            }
            Ok(Err(status)) if is_local_timeout(&status) => {
                AttemptError::Timeout { replica, id, addr }
            }
            Ok(Err(status)) => AttemptError::Status {
                replica,
                id,
                addr,
                status,
            },
            Err(_) => AttemptError::Timeout { replica, id, addr },
        };
        match &err {
            AttemptError::Status { status, .. } if status.code() == Code::Unavailable => {
                cluster.mark_down(replica)
            }
            // No answer in time: cut off by the network (no refusal ever comes), or still
            // catching up after a partition healed. Round-robin traffic avoids it for a while
            // instead of spending a timeout on it every n-th request.
            AttemptError::Timeout { .. } => cluster.mark_down(replica),
            AttemptError::Status { .. } => {}
        }
        if let AttemptError::Status { status, .. } = &err {
            if is_session_expired(status) && (!sent_before || read_only) && !renewed {
                // Nothing of this request executed (or it is a read, which may run twice):
                // send it as a new session's first request.
                session.renew();
                request_id = session.take_request_id();
                renewed = true;
                continue;
            }
        }
        sent_before |= may_have_executed(&err);
        let may_retry = err.retryable() && attempt <= policy.retries;
        let stopped = may_retry && stop_retrying_at.is_some_and(|t| Instant::now() >= t);
        if !may_retry || stopped {
            // The request may still be in flight at some replica: continue under a new id.
            session.renew();
            return Err(Failure {
                attempts: attempt,
                last: err,
                stopped,
                may_have_executed: sent_before && !read_only,
            });
        }
        tokio::time::sleep(backoff.next_delay_with(rng)).await;
        replica = picker.retry(replica, cluster);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_increase_from_one_and_restart_on_renew() {
        let mut s = Session::new();
        assert_eq!([s.take_request_id(), s.take_request_id()], [1, 2]);
        let old = s.client_id();
        s.renew();
        assert_ne!(s.client_id(), old);
        assert_eq!(s.take_request_id(), 1);
    }

    #[test]
    fn a_broken_connection_is_retried_but_a_replica_error_is_not() {
        let addr = HostPort::parse("127.0.0.1:1").expect("addr");
        let err = |status| AttemptError::Status {
            replica: 0,
            id: 0,
            addr: addr.clone(),
            status,
        };
        let io = std::io::Error::new(std::io::ErrorKind::BrokenPipe, "broken pipe");
        let broken = tonic::Status::from_error(Box::new(io));
        assert_eq!(broken.code(), Code::Unknown);
        assert!(err(broken).retryable());
        assert!(!err(tonic::Status::unknown("from the replica")).retryable());
        assert!(!err(tonic::Status::invalid_argument("bad key")).retryable());
        assert!(err(tonic::Status::unavailable("down")).retryable());
    }

    #[test]
    fn an_expired_session_is_recognised_and_overload_never_executed() {
        let addr = HostPort::parse("127.0.0.1:1").expect("addr");
        let expired = tonic::Status::failed_precondition(format!(
            "{}: the outcome of request 3 is unknown",
            epaxos_kv::core::session::EXPIRED_PREFIX
        ));
        assert!(is_session_expired(&expired));
        assert!(!is_session_expired(&tonic::Status::failed_precondition(
            "request id already used"
        )));
        let err = |status| AttemptError::Status {
            replica: 0,
            id: 0,
            addr: addr.clone(),
            status,
        };
        assert!(!may_have_executed(&err(tonic::Status::resource_exhausted(
            "full"
        ))));
        // UNAVAILABLE from a replica is a refusal before the command entered the protocol.
        assert!(!may_have_executed(&err(tonic::Status::unavailable("down"))));
        // So is a removed member's refusal (worded by runtime/service.rs).
        assert!(!may_have_executed(&err(
            tonic::Status::failed_precondition(
                "replica 2 is not a member of the cluster's configuration; send requests to a \
             member: epoch 1: 0 (peer a:1, client a:2)"
            )
        )));
        assert!(may_have_executed(&err(tonic::Status::failed_precondition(
            "request id already used"
        ))));
        assert!(may_have_executed(&err(tonic::Status::aborted(
            "replica stopped while the command was in progress"
        ))));
        assert!(may_have_executed(&AttemptError::Timeout {
            replica: 0,
            id: 0,
            addr: addr.clone()
        }));
    }
}
