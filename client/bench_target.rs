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

use std::time::{Duration, Instant};

use bytes::Bytes;
use epaxos_kv::core::{command, wire};
use epaxos_kv::proto::ProposeRequest;
use epaxos_kv::server::backoff::{Avoidance, Backoff};
use rand::Rng;
use tonic::transport::Channel;
use tonic::Code;

use crate::cluster::{describe_status, is_local_timeout, is_removed_refusal, Cluster, TargetMode};
use crate::etcd::{pb as etcdpb, EtcdClient};
use crate::session::{fresh_client_id, retryable_status};

/// First avoidance of a replica that failed; doubles with each further failure in a row.
pub const AVOID_BASE: Duration = Duration::from_millis(200);
/// Longest avoidance.
pub const AVOID_MAX: Duration = Duration::from_secs(5);
/// Retries of a probe's transient failures (the probe's timeout bounds them too).
const PROBE_RETRIES: u32 = 20;

/// Before a retry: 10 ms, doubling up to 500 ms, each +-50% at random.
fn retry_backoff() -> Backoff {
    Backoff::new(Duration::from_millis(10), Duration::from_millis(500)).with_jitter(0.5)
}

/// How round-robin workers avoid `n` replicas: see the module's doc; a probe has one attempt's
/// time to answer.
pub fn avoidance(n: usize, attempt_timeout: Duration) -> Avoidance {
    Avoidance::new(n, AVOID_BASE, AVOID_MAX, attempt_timeout)
}

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
    /// A removed member's refusal is retried at the next replica too: nothing of the request
    /// entered the protocol there, so the same request id is safe.
    fn retryable(&self) -> bool {
        match self {
            AttemptError::Timeout => true,
            AttemptError::Status(s) => retryable_status(s) || is_removed_refusal(s),
        }
    }

    /// Whether the replica itself looks slow or gone (rather than the request being bad); a
    /// member removed during the run too, so that round-robin workers avoid it (the members
    /// the change added are not sent load before the next run: the bench syncs at its start).
    fn replica_unwell(&self) -> bool {
        match self {
            AttemptError::Timeout => true,
            AttemptError::Status(s) => s.code() == Code::Unavailable || is_removed_refusal(s),
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
            .find(|&r| self.avoid.usable(r))
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
                let op = match op {
                    Op::Put { key, value } => command::Op::Put {
                        key: key.clone(),
                        value: value.clone(),
                    },
                    Op::Get { key } => command::Op::Get { key: key.clone() },
                };
                // `..Default::default()`: fields that later versions of the contract add (a
                // retry flag) keep their defaults until the bench sets them.
                #[allow(clippy::needless_update)]
                let propose = ProposeRequest {
                    client_id: w.client_id,
                    request_id,
                    op: Some(wire::op_to_proto(&op)),
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
        let mut backoff = retry_backoff();
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
            tokio::time::sleep(backoff.next_delay_with(rng)).await;
            replica = self.retry_target(replica);
        }
    }

    /// Checks that replica `r` answers (a GET of `key`), within `timeout`. A transient refusal
    /// (etcd's "leader changed", a replica still starting) is retried with the usual backoff
    /// until `timeout`: one unlucky answer must not fail a whole benchmark run.
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
            retries: PROBE_RETRIES,
            avoid: avoidance(self.n(), timeout),
            avoiding: false,
        };
        let until = Instant::now() + timeout;
        let op = Op::Get { key };
        let mut rng = rand::rng();
        match tokio::time::timeout(timeout, probe.call(&mut w, &op, until, &mut rng)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(f)) => Err(f.message),
            Err(_) => Err(format!(
                "{}: no answer within {} ms",
                self.names[r],
                timeout.as_millis()
            )),
        }
    }
}
