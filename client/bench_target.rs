//! Where `client bench` requests go and how a worker sends one: to our replicas (`Kv.Propose`,
//! one session per worker, a retry reusing the request id so that the command executes once) or
//! to etcd (`KV.Put`, linearizable `KV.Range`). Both go through the same attempt loop, so the two
//! systems see the same load.
//!
//! Round-robin workers avoid a replica whose attempt timed out or that answered UNAVAILABLE: it
//! is skipped for a while that doubles with each further failure (`AVOID_BASE` up to
//! `AVOID_MAX`), and when that while is over one worker alone tries it again (the probe), the
//! others keep skipping it until the probe answers. Without this a paused replica (SIGSTOP)
//! holds a third of all requests for a full timeout each, and throughput falls to almost 0
//! while the other replicas could serve.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use epaxos_kv::proto::{operation, Get, Operation, ProposeRequest, Put};
use rand::Rng;
use tonic::transport::Channel;
use tonic::Code;

use crate::cluster::{describe_status, is_local_timeout, Cluster, TargetMode};
use crate::etcd::{pb as etcdpb, EtcdClient};

/// First avoidance of a replica that failed; doubles with each further failure in a row.
pub const AVOID_BASE: Duration = Duration::from_millis(200);
/// Longest avoidance.
pub const AVOID_MAX: Duration = Duration::from_secs(5);
/// Backoff before the first retry of a request; doubles up to `RETRY_BACKOFF_MAX`, with jitter.
const RETRY_BACKOFF_BASE: Duration = Duration::from_millis(10);
const RETRY_BACKOFF_MAX: Duration = Duration::from_millis(500);

/// One benchmark operation.
#[derive(Debug, Clone)]
pub enum Op {
    Put { key: Bytes, value: Bytes },
    Get { key: Bytes },
}

/// The system under load.
pub enum Backend {
    /// Our replicas, through the cluster's channels (TLS or not, as configured).
    Ours(std::sync::Arc<Cluster>),
    /// etcd members, one channel each.
    Etcd(Vec<EtcdClient<Channel>>),
}

/// Per replica: until when round-robin workers skip it, and how many failures in a row it had.
pub struct Avoidance {
    epoch: Instant,
    until_ms: Vec<AtomicU64>,
    strikes: Vec<AtomicU32>,
}

impl Avoidance {
    pub fn new(n: usize) -> Avoidance {
        Avoidance {
            epoch: Instant::now(),
            until_ms: (0..n).map(|_| AtomicU64::new(0)).collect(),
            strikes: (0..n).map(|_| AtomicU32::new(0)).collect(),
        }
    }

    fn now_ms(&self) -> u64 {
        self.epoch
            .elapsed()
            .as_millis()
            .try_into()
            .unwrap_or(u64::MAX)
    }

    /// Whether a worker may send to replica `i` now: it is healthy, or its avoidance is over and
    /// this caller won the right to probe it (for `probe_for`; the others skip it meanwhile).
    pub fn usable(&self, i: usize, probe_for: Duration) -> bool {
        if self.strikes[i].load(Ordering::Relaxed) == 0 {
            return true;
        }
        let now = self.now_ms();
        let until = self.until_ms[i].load(Ordering::Relaxed);
        if now < until {
            return false;
        }
        let probe_until = now.saturating_add(probe_for.as_millis() as u64);
        self.until_ms[i]
            .compare_exchange(until, probe_until, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// Replica `i` timed out or was unavailable: avoid it for longer each time in a row.
    pub fn failed(&self, i: usize) {
        let strikes = self.strikes[i]
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        let wait = AVOID_BASE
            .saturating_mul(1u32 << strikes.saturating_sub(1).min(16))
            .min(AVOID_MAX);
        let until = self.now_ms().saturating_add(wait.as_millis() as u64);
        self.until_ms[i].store(until, Ordering::Relaxed);
    }

    /// Replica `i` answered: it is healthy again.
    pub fn succeeded(&self, i: usize) {
        // Read first: a store on every answer would bounce the cache line between workers.
        if self.strikes[i].load(Ordering::Relaxed) != 0 {
            self.strikes[i].store(0, Ordering::Relaxed);
        }
    }
}

/// The targets of a benchmark and how to send to them.
pub struct Targets {
    pub backend: Backend,
    /// Addresses, for messages.
    pub names: Vec<String>,
    pub mode: TargetMode,
    /// Single mode: the replica every request goes to.
    pub single: usize,
    pub attempt_timeout: Duration,
    pub retries: u32,
    pub avoid: Avoidance,
    /// Whether round-robin workers avoid a replica that failed (off only to show its effect).
    pub avoiding: bool,
}

/// A worker's session and its place in the round-robin rotation.
pub struct Worker {
    client_id: u64,
    next_request_id: u64,
    next: usize,
}

impl Worker {
    pub fn new(start: usize) -> Worker {
        Worker {
            client_id: fresh_client_id(),
            next_request_id: 1,
            next: start,
        }
    }

    /// A request given up on may still execute somewhere: continue under a new session, so that
    /// a session never has two requests in flight.
    fn renew(&mut self) {
        self.client_id = fresh_client_id();
        self.next_request_id = 1;
    }
}

fn fresh_client_id() -> u64 {
    loop {
        let id: u64 = rand::random();
        if id != 0 {
            return id;
        }
    }
}

/// A request that was answered.
pub struct Answered {
    pub attempts: u32,
    pub replica: usize,
}

/// A request given up on.
pub struct Failed {
    pub attempts: u32,
    /// "Timeout" or the gRPC code.
    pub kind: String,
    pub message: String,
    /// A retry was allowed but not made because the run's deadline had passed.
    pub stopped: bool,
}

/// Why one attempt failed.
enum AttemptError {
    Timeout,
    Status(tonic::Status),
}

impl AttemptError {
    fn retryable(&self) -> bool {
        match self {
            AttemptError::Timeout => true,
            AttemptError::Status(s) => {
                matches!(
                    s.code(),
                    Code::DeadlineExceeded
                        | Code::Unavailable
                        | Code::ResourceExhausted
                        | Code::Cancelled
                        | Code::Aborted
                ) || (s.code() == Code::Unknown && std::error::Error::source(s).is_some())
            }
        }
    }

    /// Whether the replica itself looks slow or gone (rather than the request being bad).
    fn replica_unwell(&self) -> bool {
        match self {
            AttemptError::Timeout => true,
            AttemptError::Status(s) => s.code() == Code::Unavailable,
        }
    }

    fn kind(&self) -> String {
        match self {
            AttemptError::Timeout => "Timeout".to_string(),
            AttemptError::Status(s) => format!("{:?}", s.code()),
        }
    }
}

impl Targets {
    pub fn n(&self) -> usize {
        self.names.len()
    }

    /// The replica for a new request of worker `w`: in round-robin mode the next one in its
    /// rotation that is not avoided (if all are, the next one anyway).
    fn first(&self, w: &mut Worker) -> usize {
        match self.mode {
            TargetMode::Single => self.single,
            TargetMode::RoundRobin => {
                let r = self.usable_from(w.next);
                w.next = (w.next + 1) % self.n();
                r
            }
        }
    }

    fn retry_target(&self, prev: usize) -> usize {
        match self.mode {
            TargetMode::Single => prev,
            TargetMode::RoundRobin => self.usable_from((prev + 1) % self.n()),
        }
    }

    fn usable_from(&self, start: usize) -> usize {
        let n = self.n();
        (0..n)
            .map(|i| (start + i) % n)
            .find(|&r| self.avoid.usable(r, self.attempt_timeout))
            .unwrap_or(start % n)
    }

    /// One attempt of `op` at replica `r`.
    async fn attempt(
        &self,
        r: usize,
        w: &Worker,
        request_id: u64,
        op: &Op,
    ) -> Result<(), AttemptError> {
        let t = self.attempt_timeout;
        let result = match &self.backend {
            Backend::Ours(cluster) => {
                let kind = match op {
                    Op::Put { key, value } => operation::Kind::Put(Put {
                        key: key.clone(),
                        value: value.clone(),
                    }),
                    Op::Get { key } => operation::Kind::Get(Get { key: key.clone() }),
                };
                // `..Default::default()`: fields that later versions of the contract add (a
                // retry flag) keep their defaults until the bench sets them.
                #[allow(clippy::needless_update)]
                let propose = ProposeRequest {
                    client_id: w.client_id,
                    request_id,
                    op: Some(Operation { kind: Some(kind) }),
                    ..Default::default()
                };
                let mut req = tonic::Request::new(propose);
                req.set_timeout(t);
                let mut client = cluster.client(r);
                tokio::time::timeout(t, async move { client.propose(req).await.map(|_| ()) }).await
            }
            Backend::Etcd(clients) => {
                let mut client = clients[r].clone();
                tokio::time::timeout(t, async move {
                    match op {
                        Op::Put { key, value } => {
                            let mut req = tonic::Request::new(etcdpb::PutRequest {
                                key: key.clone(),
                                value: value.clone(),
                                ..Default::default()
                            });
                            req.set_timeout(t);
                            client.put(req).await.map(|_| ())
                        }
                        Op::Get { key } => {
                            // serializable = false: linearizable, through the leader.
                            let mut req = tonic::Request::new(etcdpb::RangeRequest {
                                key: key.clone(),
                                ..Default::default()
                            });
                            req.set_timeout(t);
                            client.range(req).await.map(|_| ())
                        }
                    }
                })
                .await
            }
        };
        match result {
            Ok(Ok(())) => Ok(()),
            Ok(Err(s)) if is_local_timeout(&s) => Err(AttemptError::Timeout),
            Ok(Err(s)) => Err(AttemptError::Status(s)),
            Err(_) => Err(AttemptError::Timeout),
        }
    }

    /// Sends `op` as worker `w`'s next request, retrying transient failures (with the same
    /// request id, after a backoff; at the next usable replica in round-robin mode) up to
    /// `retries` times; no retry starts after `stop_retrying_at`.
    pub async fn call(
        &self,
        w: &mut Worker,
        op: &Op,
        stop_retrying_at: Instant,
        rng: &mut impl Rng,
    ) -> Result<Answered, Failed> {
        let request_id = w.next_request_id;
        w.next_request_id += 1;
        let mut replica = self.first(w);
        let mut attempts: u32 = 0;
        loop {
            attempts += 1;
            let err = match self.attempt(replica, w, request_id, op).await {
                Ok(()) => {
                    self.avoid.succeeded(replica);
                    return Ok(Answered { attempts, replica });
                }
                Err(e) => e,
            };
            if self.mode == TargetMode::RoundRobin && self.avoiding && err.replica_unwell() {
                self.avoid.failed(replica);
            }
            let may_retry = err.retryable() && attempts <= self.retries;
            let stopped = may_retry && Instant::now() >= stop_retrying_at;
            if !may_retry || stopped {
                w.renew();
                let message = match &err {
                    AttemptError::Timeout => format!(
                        "{}: no answer within {} ms",
                        self.names[replica],
                        self.attempt_timeout.as_millis()
                    ),
                    AttemptError::Status(s) => {
                        format!("{}: {}", self.names[replica], describe_status(s))
                    }
                };
                return Err(Failed {
                    attempts,
                    kind: err.kind(),
                    message,
                    stopped,
                });
            }
            let backoff = RETRY_BACKOFF_BASE
                .saturating_mul(1u32 << (attempts - 1).min(16))
                .min(RETRY_BACKOFF_MAX)
                .mul_f64(rng.random_range(0.5..1.5));
            tokio::time::sleep(backoff).await;
            replica = self.retry_target(replica);
        }
    }

    /// Checks that replica `r` answers (a GET of `key`), within `timeout`.
    pub async fn probe(&self, r: usize, key: Bytes, timeout: Duration) -> Result<(), String> {
        let mut w = Worker::new(r);
        let probe = Targets {
            backend: match &self.backend {
                Backend::Ours(c) => Backend::Ours(c.clone()),
                Backend::Etcd(c) => Backend::Etcd(c.clone()),
            },
            names: self.names.clone(),
            mode: TargetMode::Single,
            single: r,
            attempt_timeout: timeout,
            retries: 0,
            avoid: Avoidance::new(self.n()),
            avoiding: false,
        };
        match probe
            .call(&mut w, &Op::Get { key }, Instant::now(), &mut rand::rng())
            .await
        {
            Ok(_) => Ok(()),
            Err(f) => Err(f.message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_replica_is_avoided_then_probed_by_one_worker() {
        let a = Avoidance::new(3);
        assert!(a.usable(1, Duration::from_secs(1)));
        a.failed(1);
        assert!(
            !a.usable(1, Duration::from_secs(1)),
            "avoided after a failure"
        );
        assert!(a.usable(0, Duration::from_secs(1)), "the others are not");
        // Pretend the avoidance is over: exactly one caller gets to probe.
        a.until_ms[1].store(0, Ordering::Relaxed);
        assert!(a.usable(1, Duration::from_secs(60)));
        assert!(!a.usable(1, Duration::from_secs(60)), "one probe at a time");
        a.succeeded(1);
        assert!(
            a.usable(1, Duration::from_secs(1)),
            "healthy after an answer"
        );
    }

    #[test]
    fn avoidance_grows_and_is_capped() {
        let a = Avoidance::new(1);
        let mut last = 0;
        for _ in 0..20 {
            a.failed(0);
            let wait = a.until_ms[0].load(Ordering::Relaxed) - a.now_ms();
            assert!(
                wait + 5 >= last.min(AVOID_MAX.as_millis() as u64 - 5),
                "{wait} < {last}"
            );
            assert!(wait <= AVOID_MAX.as_millis() as u64);
            last = wait;
        }
        assert!(last + 50 >= AVOID_MAX.as_millis() as u64);
    }
}
