//! The clients: sessions issuing random (or scripted) operations, retries with backoff to
//! other replicas, session renewal after "session expired", late retries after a long sleep,
//! and the client-observed history the linearizability checker reads.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::Bytes;
use epaxos_kv::core::command::{Command, Op, OpResult};
use epaxos_kv::core::ids::{ClientId, RequestId};
use epaxos_kv::core::replica::{ReplyError, Token};

use super::checkers::{Check, Violation};
use super::trace::What;
use super::world::{Event, Sim};

/// A client session's request in flight.
#[derive(Debug)]
pub(super) struct Current {
    pub(super) request: u64,
    pub(super) cmd: Command,
    pub(super) hist: usize,
    pub(super) attempt: u32,
    /// The replica the last attempt went to.
    pub(super) replica: usize,
}

#[derive(Debug)]
pub(super) struct Client {
    pub(super) id: ClientId,
    pub(super) next_request: u64,
    pub(super) current: Option<Current>,
    /// The last value this client saw per key (CAS expects it).
    pub(super) last_seen: BTreeMap<Bytes, Option<Bytes>>,
    /// Results received per session and request: retries must all be answered alike.
    pub(super) answers: BTreeMap<(ClientId, u64), OpResult>,
    /// Sessions this client started (its id is derived from it).
    pub(super) sessions: u64,
    /// The last request answered, for a late retry after a sleep.
    pub(super) last_done: Option<Command>,
}

/// One operation of the client-observed history.
#[derive(Debug)]
pub(super) struct HistOp {
    pub(super) client: usize,
    pub(super) op: Op,
    pub(super) call: u64,
    pub(super) ret: Option<u64>,
    pub(super) result: Option<OpResult>,
}

/// The id of client `c`'s `session`-th session (a client starts a new one when its session
/// expired): distinct for every client and session, never 0.
pub(super) fn session_id(c: usize, session: u64) -> ClientId {
    ClientId(((c as u64 + 1) << 32) | session)
}

impl Sim {
    pub(super) fn lost_request(&mut self, replica: usize, token: Token) {
        if let Some(&(client, request, _)) = self.tokens.get(&token) {
            self.trace.record(
                self.now,
                What::RequestLost {
                    client,
                    request,
                    replica,
                },
            );
        }
    }

    pub(super) fn random_op(&mut self, c: usize) -> Op {
        let key = self.keys[self.rng.index(self.keys.len())].clone();
        let fresh = Bytes::from(format!("{}.{}", c, self.clients[c].next_request));
        match self.rng.below(100) {
            0..35 => Op::Get { key },
            35..65 => Op::Put { key, value: fresh },
            65..75 => Op::Delete { key },
            _ => {
                let expected = if self.rng.chance(0.8) {
                    self.clients[c].last_seen.get(&key).cloned().flatten()
                } else {
                    None
                };
                Op::Cas {
                    key,
                    expected,
                    new: fresh,
                }
            }
        }
    }

    pub(super) fn start_op(&mut self, c: usize, op: Op, replica: Option<usize>) {
        let client = &mut self.clients[c];
        assert!(
            client.current.is_none(),
            "client {c} has a request in flight already"
        );
        let request = client.next_request;
        client.next_request += 1;
        let cmd = Command::new(client.id, RequestId(request), op.clone());
        self.stamp += 1;
        self.history.push(HistOp {
            client: c,
            op,
            call: self.stamp,
            ret: None,
            result: None,
        });
        self.clients[c].current = Some(Current {
            request,
            cmd,
            hist: self.history.len() - 1,
            attempt: 0,
            replica: 0,
        });
        self.send_attempt(c, replica);
    }

    /// Sends the client's current request to `replica`, or for a first attempt to a random
    /// replica; a retry goes to the same replica once in a while (the first retry only), and
    /// otherwise to the next one, so that a client finds a live replica within F+1 retries.
    pub(super) fn send_attempt(&mut self, c: usize, replica: Option<usize>) {
        // Spares too: a client may ask one before it is added (refused, it retries elsewhere).
        let n = self.nodes.len();
        let token = self.next_token;
        self.next_token += 1;
        let same = self.rng.chance(0.3);
        let first = self.rng.index(n);
        let Some(cur) = self.clients[c].current.as_mut() else {
            return;
        };
        cur.replica = match (replica, cur.attempt) {
            (Some(r), _) => r,
            (None, 0) => first,
            (None, 1) if same => cur.replica,
            (None, _) => (cur.replica + 1) % n,
        };
        // Every attempt after the first may follow one that executed.
        cur.cmd.retry = cur.attempt > 0;
        cur.attempt += 1;
        let (request, attempt, cmd, replica) =
            (cur.request, cur.attempt, cur.cmd.clone(), cur.replica);
        self.tokens.insert(token, (c, request, cmd.client));
        self.trace.record(
            self.now,
            What::Request {
                client: c,
                request,
                replica,
                op: format!("{:?}", cmd.op),
                attempt,
            },
        );
        if self.rng.chance(self.loss) {
            self.trace.record(
                self.now,
                What::RequestLost {
                    client: c,
                    request,
                    replica,
                },
            );
        } else {
            let after = self.client_latency();
            self.schedule(
                after,
                Event::Request {
                    replica,
                    token,
                    cmd,
                },
            );
        }
        let backoff = self.cfg.client_timeout * (1 << (attempt - 1).min(2));
        self.schedule(
            backoff,
            Event::ClientTimeout {
                client: c,
                request,
                attempt,
            },
        );
    }

    pub(super) fn on_response(
        &mut self,
        c: usize,
        session: ClientId,
        request: u64,
        result: Result<OpResult, ReplyError>,
    ) {
        let is_current = self.clients[c].id == session
            && self.clients[c]
                .current
                .as_ref()
                .is_some_and(|cur| cur.request == request);
        let result = match result {
            Ok(r) => r,
            Err(ReplyError::Expired(_)) => {
                // The session expired: whether the request executed is unknown (an earlier
                // attempt may have, before the expiry), like a request never answered. The
                // history keeps it open; the client goes on in a new session.
                self.stats.expired_answers += 1;
                self.trace.record(
                    self.now,
                    What::Reply {
                        client: c,
                        request,
                        result: "session expired".into(),
                    },
                );
                if is_current {
                    let client = &mut self.clients[c];
                    client.current = None;
                    client.sessions += 1;
                    client.id = session_id(c, client.sessions);
                    client.next_request = 1;
                    client.last_done = None;
                    self.schedule_next_op(c);
                }
                return;
            }
            Err(ReplyError::ResultNotKept(_)) => {
                // Simulated values are far below the bound: every result is kept.
                self.violations.push(Violation {
                    check: Check::ExactlyOnce,
                    detail: format!(
                        "client {c}'s request {request} was answered ResultNotKept, but every \
                         simulated result is small enough to keep"
                    ),
                    instances: Vec::new(),
                });
                return;
            }
            Err(ReplyError::Stale) => {
                // Only a request older than the session's last executed one is stale; a
                // session never moves past its current request.
                if is_current {
                    self.violations.push(Violation {
                        check: Check::ExactlyOnce,
                        detail: format!(
                            "client {c}'s current request {request} was answered Stale"
                        ),
                        instances: Vec::new(),
                    });
                }
                return;
            }
            Err(ReplyError::Reused) => {
                // Simulated clients send one command per request id (retries included).
                self.violations.push(Violation {
                    check: Check::ExactlyOnce,
                    detail: format!(
                        "client {c}'s request {request} was answered Reused, but the client \
                         never reused it"
                    ),
                    instances: Vec::new(),
                });
                return;
            }
        };
        self.trace.record(
            self.now,
            What::Reply {
                client: c,
                request,
                result: format!("{result:?}"),
            },
        );
        let client = &mut self.clients[c];
        if let Some(before) = client.answers.get(&(session, request)) {
            if *before != result {
                let detail =
                    format!("client {c} request {request} answered {before:?} and {result:?}");
                self.violations.push(Violation {
                    check: Check::ExactlyOnce,
                    detail,
                    instances: Vec::new(),
                });
            }
        } else {
            client.answers.insert((session, request), result.clone());
        }
        if !is_current {
            return;
        }
        let Some(cur) = client.current.take() else {
            return;
        };
        let key = cur.cmd.op.key().cloned().unwrap_or_default();
        let seen = match &cur.cmd.op {
            Op::Get { .. } => result.found.then(|| result.value.clone()),
            Op::Put { value, .. } => Some(value.clone()),
            Op::Delete { .. } => None,
            Op::Cas { new, .. } if result.success => Some(new.clone()),
            Op::Cas { .. } => result.found.then(|| result.value.clone()),
            Op::Expire { .. } | Op::Reconfigure { .. } => None,
        };
        client.last_seen.insert(key, seen);
        self.stamp += 1;
        client.last_done = Some(cur.cmd.clone());
        let h = &mut self.history[cur.hist];
        h.ret = Some(self.stamp);
        h.result = Some(result);
        self.stats.ops_done += 1;
        self.schedule_next_op(c);
    }

    /// A random client's next operation after a pause: usually a short think, sometimes a
    /// sleep long enough for its session to expire (see `Config::sleep_chance`).
    pub(super) fn schedule_next_op(&mut self, c: usize) {
        if !self.cfg.random_ops || self.settling || c >= self.cfg.clients {
            return;
        }
        if self.rng.chance(self.cfg.sleep_chance) {
            let ttl = self.cfg.session_ttl.as_micros() as u64;
            let skew = self.cfg.skew_max.as_micros() as u64;
            let sleep = self.rng.range(2 * ttl, 3 * ttl) + 2 * skew;
            self.schedule(Duration::from_micros(sleep), Event::ClientWake(c));
            return;
        }
        let think = self.rng.range(0, self.cfg.think_max.as_micros() as u64);
        self.schedule(Duration::from_micros(think), Event::ClientNext(c));
    }

    /// A client wakes after a sleep: it sends a late retry of its last answered request (the
    /// same command, marked a retry) to a random replica, then goes on with its next request.
    /// The retry must get the original answer or "session expired", never execute again.
    pub(super) fn on_wake(&mut self, c: usize) {
        if let Some(cmd) = self.clients[c].last_done.clone() {
            let cmd = Command { retry: true, ..cmd };
            let replica = self.rng.index(self.nodes.len());
            let token = self.next_token;
            self.next_token += 1;
            self.tokens.insert(token, (c, cmd.request.0, cmd.client));
            self.stats.late_retries += 1;
            self.trace.record(
                self.now,
                What::Request {
                    client: c,
                    request: cmd.request.0,
                    replica,
                    op: format!("late retry {:?}", cmd.op),
                    attempt: 0,
                },
            );
            let after = self.client_latency();
            self.schedule(
                after,
                Event::Request {
                    replica,
                    token,
                    cmd,
                },
            );
        }
        let think = self.rng.range(0, 5_000);
        self.schedule(Duration::from_micros(think), Event::ClientNext(c));
    }
}
