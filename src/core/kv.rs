//! The replicated state machine: a key/value map plus the session table that makes retried
//! requests execute exactly once (see `session` for how sessions expire). Every replica applies
//! the same commands in the same order per key and per session, so both tables, and the
//! digests, agree.

use std::collections::HashMap;

use bytes::Bytes;

use crate::core::command::{Command, Op, OpResult};
use crate::core::ids::{ClientId, ReplicaId, RequestId};
pub use crate::core::session::{Session, Sessions};

/// The key/value state machine.
#[derive(Debug, Default, Clone)]
pub struct KvStore {
    map: HashMap<Bytes, Bytes>,
    /// Per client session: the last request executed, its command's fingerprint and its
    /// (small) result, so that a retry of it is answered without executing again, and a
    /// different command reusing its request id is told so instead of getting another
    /// command's answer.
    sessions: Sessions,
    /// Order-independent digest of `map`: the wrapping sum of each entry's hash, kept up to date
    /// on every change so that `Status` costs O(1).
    digest: u64,
    executed: u64,
    /// Commands refused as [`Applied::Expired`] so far (deterministic like `executed`).
    refused_expired: u64,
}

/// A deterministic 64-bit fingerprint of an operation (never 0): equal on every replica and
/// build, so every replica tells a retry from a reused request id alike.
pub fn fingerprint(op: &Op) -> u64 {
    let mut h = Fnv::new();
    match op {
        Op::Get { key } => {
            h.field(b"get");
            h.field(key);
        }
        Op::Put { key, value } => {
            h.field(b"put");
            h.field(key);
            h.field(value);
        }
        Op::Delete { key } => {
            h.field(b"delete");
            h.field(key);
        }
        Op::Cas { key, expected, new } => {
            h.field(b"cas");
            h.field(key);
            match expected {
                Some(e) => {
                    h.field(b"some");
                    h.field(e);
                }
                None => h.field(b"none"),
            }
            h.field(new);
        }
        Op::Expire { idle_since_ms } => {
            h.field(b"expire");
            h.field(&idle_since_ms.to_le_bytes());
        }
        Op::Reconfigure { change, epoch } => {
            h.field(b"reconfigure");
            h.field(&epoch.0.to_le_bytes());
            match change {
                crate::core::epoch::Change::Add(m) => {
                    h.field(b"add");
                    h.field(&m.id.0.to_le_bytes());
                    h.field(m.peer_addr.as_bytes());
                    h.field(m.client_addr.as_bytes());
                }
                crate::core::epoch::Change::Remove(id) => {
                    h.field(b"remove");
                    h.field(&id.0.to_le_bytes());
                }
            }
        }
    }
    h.0.max(1)
}

/// FNV-1a over length-prefixed fields.
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn field(&mut self, bytes: &[u8]) {
        const PRIME: u64 = 0x0100_0000_01b3;
        let len = (bytes.len() as u64).to_le_bytes();
        for b in len.iter().chain(bytes) {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(PRIME);
        }
    }
}

/// What applying a command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// The command executed now.
    Executed(OpResult),
    /// A retry of the session's last executed request: its original result, not executed again.
    Duplicate(OpResult),
    /// Older than the session's last request: the client has moved on, nothing to do.
    Stale,
    /// The session's last executed request id, but another command than the one executed
    /// under it: not executed, and not answered with the other command's result.
    Reused,
    /// The session is not in the table and this command cannot start one (it is not request 1,
    /// or it is a retry): the session expired, and whether an earlier attempt of this request
    /// executed is unknown. Not executed.
    Expired,
    /// A retry of the session's last request, a CAS that failed, whose result (it carries the
    /// key's value then) was too large to keep: not executed again, and not answered with a
    /// made-up value.
    ResultNotKept,
    /// A session expiry ([`Op::Expire`]) executed; `removed`: the session was idle long enough
    /// and is gone. Nobody is answered.
    Expiry { removed: bool },
}

impl Applied {
    /// The result to send to a waiting client, if any.
    pub fn result(&self) -> Option<&OpResult> {
        match self {
            Applied::Executed(r) | Applied::Duplicate(r) => Some(r),
            Applied::Stale
            | Applied::Reused
            | Applied::Expired
            | Applied::ResultNotKept
            | Applied::Expiry { .. } => None,
        }
    }
}

impl KvStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Applies one command of an instance led by `leader`, at most once per (client, request).
    pub fn apply(&mut self, cmd: &Command, leader: ReplicaId) -> Applied {
        self.apply_with(cmd, leader, false)
    }

    /// Applies a command, but lets a retry without a session start one: the exactly-once bug
    /// that `Sabotage::retry_starts_session` plants for tests (a late retry of an expired
    /// session executes a second time).
    pub fn apply_trusting_retries(&mut self, cmd: &Command, leader: ReplicaId) -> Applied {
        self.apply_with(cmd, leader, true)
    }

    fn apply_with(&mut self, cmd: &Command, leader: ReplicaId, trust_retries: bool) -> Applied {
        if let Op::Expire { idle_since_ms } = cmd.op {
            let removed = self.sessions.expire(cmd.client, idle_since_ms);
            return Applied::Expiry { removed };
        }
        if cmd.op.is_reconfigure() {
            // The replica applies membership changes itself (`replica::reconfigure`); one
            // reaching the key/value state changes nothing and opens no session.
            return Applied::Executed(OpResult::default());
        }
        let print = fingerprint(&cmd.op);
        if let Some(last) = self.sessions.get(&cmd.client) {
            let (request, last_print) = (last.request, last.fingerprint);
            // Whatever it does, a command of the session is activity that keeps it alive.
            self.sessions.touch(cmd.client, cmd.time_ms, leader);
            if cmd.request == request {
                if last_print != 0 && last_print != print {
                    return Applied::Reused;
                }
                return self.answer_again(cmd);
            }
            if cmd.request < request {
                return Applied::Stale;
            }
        } else if (cmd.request != RequestId(1) || cmd.retry) && !trust_retries {
            // Sessions start at request 1: a later request, or a retry of request 1, without a
            // session may come after an expiry that removed what it would be checked against.
            self.refused_expired += 1;
            return Applied::Expired;
        }
        let result = self.execute(&cmd.op);
        self.executed += 1;
        self.sessions.insert(
            cmd.client,
            Session::new(cmd.request, print, result.clone(), cmd.time_ms, leader),
        );
        Applied::Executed(result)
    }

    /// The answer to a retry of the session's last request (the session exists, the
    /// fingerprints match): its result, or what can stand for it when its value was not kept.
    fn answer_again(&self, cmd: &Command) -> Applied {
        let last = self
            .sessions
            .get(&cmd.client)
            .expect("answer_again is asked for a session in the table");
        if last.value_kept {
            return Applied::Duplicate(last.result.clone());
        }
        match &cmd.op {
            // A read has no effect, so reading again is as good as the first read: and it is
            // linearizable, because the retry executes inside the request's interval (after the
            // client sent it, before the answer reaches it), at its place in the key's order.
            Op::Get { key } => Applied::Duplicate(self.read(key)),
            // A CAS that succeeded found exactly `expected`, which the retry carries.
            Op::Cas { expected, .. } if last.result.success => Applied::Duplicate(OpResult {
                found: expected.is_some(),
                value: expected.clone().unwrap_or_default(),
                success: true,
            }),
            // A failed CAS found another value, which is gone: say so rather than make one up.
            // (PUT and DELETE results carry no value: always kept.)
            _ => Applied::ResultNotKept,
        }
    }

    /// What applying a command of `client`'s `request` with operation fingerprint `print`
    /// would give now without executing it: `Duplicate`, `Reused` or `Stale`; `Executed` with
    /// an empty result if it would execute (callers only ask after the request ran).
    pub fn peek(&self, client: ClientId, request: RequestId, print: u64) -> Applied {
        match self.sessions.get(&client) {
            Some(last) if request == last.request => {
                if last.fingerprint != 0 && last.fingerprint != print {
                    Applied::Reused
                } else if last.value_kept {
                    Applied::Duplicate(last.result.clone())
                } else {
                    Applied::ResultNotKept
                }
            }
            Some(last) if request < last.request => Applied::Stale,
            Some(_) => Applied::Executed(OpResult::default()),
            None => Applied::Expired,
        }
    }

    /// Applies a command even if it already executed: the exactly-once bug that
    /// `Sabotage::skip_dedup` plants for tests.
    pub fn apply_without_dedup(&mut self, cmd: &Command) -> Applied {
        if let Op::Expire { .. } = cmd.op {
            return Applied::Expiry { removed: false };
        }
        if cmd.op.is_reconfigure() {
            return Applied::Executed(OpResult::default());
        }
        let result = self.execute(&cmd.op);
        self.executed += 1;
        Applied::Executed(result)
    }

    /// The sessions table (read-only: it changes only by applying commands).
    pub fn sessions(&self) -> &Sessions {
        &self.sessions
    }

    /// Drops a session outside the execution order: the bug `Sabotage::expire_locally` plants
    /// (each replica forgetting sessions on its own clock).
    pub fn forget_session_locally(&mut self, client: ClientId) {
        self.sessions.remove(client);
    }

    fn read(&self, key: &Bytes) -> OpResult {
        match self.map.get(key) {
            Some(v) => OpResult {
                found: true,
                value: v.clone(),
                success: true,
            },
            None => OpResult::default(),
        }
    }

    fn execute(&mut self, op: &Op) -> OpResult {
        match op {
            Op::Get { key } => self.read(key),
            Op::Put { key, value } => {
                let old = self.set(key, Some(value.clone()));
                OpResult {
                    found: old.is_some(),
                    value: Bytes::new(),
                    success: true,
                }
            }
            Op::Delete { key } => {
                let old = self.set(key, None);
                OpResult {
                    found: old.is_some(),
                    value: Bytes::new(),
                    success: old.is_some(),
                }
            }
            Op::Cas { key, expected, new } => {
                let current = self.map.get(key).cloned();
                let success = current.as_ref() == expected.as_ref();
                if success {
                    self.set(key, Some(new.clone()));
                }
                OpResult {
                    found: current.is_some(),
                    value: current.unwrap_or_default(),
                    success,
                }
            }
            Op::Expire { .. } => unreachable!("apply_with handles expiries before executing"),
            Op::Reconfigure { .. } => {
                unreachable!("apply_with handles membership changes before executing")
            }
        }
    }

    /// Sets or removes a key, keeping the digest current. Returns the old value.
    fn set(&mut self, key: &Bytes, value: Option<Bytes>) -> Option<Bytes> {
        let old = match value {
            Some(v) => {
                self.digest = self.digest.wrapping_add(entry_hash(key, &v));
                self.map.insert(key.clone(), v)
            }
            None => self.map.remove(key),
        };
        if let Some(o) = &old {
            self.digest = self.digest.wrapping_sub(entry_hash(key, o));
        }
        old
    }

    /// The whole state, for a checkpoint: entries, sessions, executed count, refused count.
    #[allow(clippy::type_complexity)]
    pub fn export(
        &self,
    ) -> (
        impl Iterator<Item = (&Bytes, &Bytes)>,
        impl Iterator<Item = (&ClientId, &Session)>,
        u64,
        u64,
    ) {
        (
            self.map.iter(),
            self.sessions.iter(),
            self.executed,
            self.refused_expired,
        )
    }

    /// Rebuilds a state from a checkpoint's parts.
    pub fn import(
        entries: impl IntoIterator<Item = (Bytes, Bytes)>,
        sessions: impl IntoIterator<Item = (ClientId, Session)>,
        executed: u64,
        refused_expired: u64,
    ) -> KvStore {
        let mut kv = KvStore {
            sessions: sessions.into_iter().collect(),
            executed,
            refused_expired,
            ..KvStore::default()
        };
        for (k, v) in entries {
            kv.set(&k, Some(v));
        }
        kv
    }

    /// Reads a key without going through consensus (tests and checks only).
    pub fn get(&self, key: &[u8]) -> Option<&Bytes> {
        self.map.get(key)
    }

    /// Digest of the key/value map; equal maps have equal digests.
    pub fn digest(&self) -> u64 {
        self.digest
    }

    /// Commands executed (duplicates and stale requests excluded).
    pub fn executed(&self) -> u64 {
        self.executed
    }

    /// Commands refused as [`Applied::Expired`] (their session was not in the table).
    pub fn refused_expired(&self) -> u64 {
        self.refused_expired
    }

    /// Number of keys stored.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Whether no key is stored.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }
}

/// FNV-1a over the key's length, the key and the value. Hand-written: it is ten lines, and the
/// digest must be stable across builds and platforms, which std's `DefaultHasher` does not
/// promise.
fn entry_hash(key: &[u8], value: &[u8]) -> u64 {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;
    let mut h = OFFSET;
    let len = (key.len() as u64).to_le_bytes();
    for b in len.iter().chain(key).chain(value) {
        h ^= u64::from(*b);
        h = h.wrapping_mul(PRIME);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    const R0: ReplicaId = ReplicaId(0);

    fn cmd(client: u64, request: u64, op: Op) -> Command {
        Command::new(ClientId(client), RequestId(request), op)
    }
    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    #[test]
    fn get_put_delete_cas() {
        let mut kv = KvStore::new();
        let r = kv.apply(&cmd(1, 1, Op::Get { key: b("k") }), R0);
        assert_eq!(r, Applied::Executed(OpResult::default()));
        kv.apply(
            &cmd(
                1,
                2,
                Op::Put {
                    key: b("k"),
                    value: b("v1"),
                },
            ),
            R0,
        );
        let r = kv.apply(&cmd(1, 3, Op::Get { key: b("k") }), R0);
        assert_eq!(r.result().unwrap().value, b("v1"));
        // CAS with the wrong expectation fails and reports the current value.
        let r = kv.apply(
            &cmd(
                1,
                4,
                Op::Cas {
                    key: b("k"),
                    expected: Some(b("x")),
                    new: b("v2"),
                },
            ),
            R0,
        );
        let r = r.result().unwrap();
        assert!(!r.success);
        assert_eq!(r.value, b("v1"));
        // CAS expecting absence fails on a present key, succeeds after delete.
        let r = kv.apply(
            &cmd(
                1,
                5,
                Op::Cas {
                    key: b("k"),
                    expected: None,
                    new: b("v2"),
                },
            ),
            R0,
        );
        assert!(!r.result().unwrap().success);
        let r = kv.apply(&cmd(1, 6, Op::Delete { key: b("k") }), R0);
        assert!(r.result().unwrap().found);
        let r = kv.apply(
            &cmd(
                1,
                7,
                Op::Cas {
                    key: b("k"),
                    expected: None,
                    new: b("v3"),
                },
            ),
            R0,
        );
        assert!(r.result().unwrap().success);
        let r = kv.apply(
            &cmd(
                1,
                8,
                Op::Cas {
                    key: b("k"),
                    expected: Some(b("v3")),
                    new: b("v4"),
                },
            ),
            R0,
        );
        assert!(r.result().unwrap().success);
        assert_eq!(kv.get(b"k"), Some(&b("v4")));
    }

    #[test]
    fn retry_executes_once_and_gets_same_answer() {
        let mut kv = KvStore::new();
        let put = cmd(
            7,
            1,
            Op::Cas {
                key: b("k"),
                expected: None,
                new: b("v"),
            },
        );
        let first = kv.apply(&put, R0);
        let again = kv.apply(&put, R0);
        assert_eq!(first.result(), again.result());
        assert!(matches!(again, Applied::Duplicate(_)));
        assert_eq!(kv.executed(), 1);
        kv.apply(&cmd(7, 2, Op::Get { key: b("k") }), R0);
        assert_eq!(kv.apply(&put, R0), Applied::Stale);
        assert_eq!(kv.executed(), 2);
    }

    /// A PUT reusing the request id of an executed GET once got the GET's answer and was never
    /// applied, silently.
    #[test]
    fn a_reused_request_id_with_another_command_is_refused() {
        let mut kv = KvStore::new();
        let get = cmd(7, 1, Op::Get { key: b("k") });
        let put = cmd(
            7,
            1,
            Op::Put {
                key: b("k"),
                value: b("v"),
            },
        );
        assert!(matches!(kv.apply(&get, R0), Applied::Executed(_)));
        let digest = kv.digest();
        assert_eq!(kv.apply(&put, R0), Applied::Reused);
        assert_eq!(kv.digest(), digest, "the data is left alone");
        assert_eq!(kv.executed(), 1);
        // The real retry still gets its answer; the next request id works.
        assert!(matches!(kv.apply(&get, R0), Applied::Duplicate(_)));
        let put2 = cmd(7, 2, put.op.clone());
        assert!(matches!(kv.apply(&put2, R0), Applied::Executed(_)));
        assert_eq!(kv.get(b"k"), Some(&b("v")));
        // Every field of an operation counts.
        let ops = [
            Op::Put {
                key: b("k"),
                value: b("w"),
            },
            Op::Put {
                key: b("j"),
                value: b("v"),
            },
            Op::Cas {
                key: b("k"),
                expected: None,
                new: b("v"),
            },
            Op::Cas {
                key: b("k"),
                expected: Some(b("")),
                new: b("v"),
            },
            Op::Delete { key: b("k") },
        ];
        for op in ops {
            assert_ne!(fingerprint(&op), fingerprint(&put2.op), "{op:?}");
            assert_eq!(kv.apply(&cmd(7, 2, op), R0), Applied::Reused);
        }
        // A session restored without a fingerprint (an older checkpoint) accepts any retry.
        let (_, sessions, executed, refused) = kv.export();
        let sessions: Vec<(ClientId, Session)> = sessions
            .map(|(c, s)| {
                (
                    *c,
                    Session {
                        fingerprint: 0,
                        ..s.clone()
                    },
                )
            })
            .collect();
        let mut old = KvStore::import(Vec::new(), sessions, executed, refused);
        assert!(matches!(
            old.apply(&cmd(7, 2, Op::Delete { key: b("k") }), R0),
            Applied::Duplicate(_)
        ));
    }

    fn at(mut c: Command, time_ms: u64) -> Command {
        c.time_ms = time_ms;
        c
    }

    /// The session rules of `session`: activity keeps a session alive, an expiry removes it
    /// only if it was idle since the cut-off, and then only a first attempt of request 1 starts
    /// a session; a late retry, or a later request, is refused and never executed.
    #[test]
    fn sessions_expire_only_when_idle_and_late_retries_are_refused() {
        let mut kv = KvStore::new();
        let put = |req, v: &str| {
            cmd(
                7,
                req,
                Op::Put {
                    key: b("k"),
                    value: b(v),
                },
            )
        };
        assert!(matches!(
            kv.apply(&at(put(1, "a"), 1_000), R0),
            Applied::Executed(_)
        ));
        // A retry at 5,000 is activity: an expiry of what was idle since 4,000 finds it active.
        let retry = Command {
            retry: true,
            ..at(put(1, "a"), 5_000)
        };
        assert!(matches!(
            kv.apply(&retry, ReplicaId(2)),
            Applied::Duplicate(_)
        ));
        let s = kv.sessions().get(&ClientId(7)).expect("session");
        assert_eq!((s.last_time_ms, s.leader), (5_000, ReplicaId(2)));
        let expire = |since| Command::expire(ClientId(7), since);
        assert_eq!(
            kv.apply(&expire(4_000), R0),
            Applied::Expiry { removed: false }
        );
        assert_eq!(
            kv.apply(&expire(5_000), R0),
            Applied::Expiry { removed: true }
        );
        assert!(kv.sessions().is_empty());
        let (executed, digest) = (kv.executed(), kv.digest());
        // A late retry of request 1, and the next request: refused, nothing executed.
        assert_eq!(kv.apply(&retry, R0), Applied::Expired);
        assert_eq!(kv.apply(&put(2, "b"), R0), Applied::Expired);
        assert_eq!((kv.executed(), kv.digest()), (executed, digest));
        assert_eq!(kv.refused_expired(), 2);
        assert!(kv.sessions().is_empty(), "a refusal starts no session");
        // A first attempt of request 1 starts a session; an expiry of an absent one is a no-op.
        assert!(matches!(kv.apply(&put(1, "c"), R0), Applied::Executed(_)));
        assert_eq!(kv.get(b"k"), Some(&b("c")));
        assert_eq!(
            kv.apply(&Command::expire(ClientId(8), u64::MAX), R0),
            Applied::Expiry { removed: false }
        );
        // The sabotage: the late retry executes again.
        let mut bad = KvStore::new();
        bad.apply(&put(1, "a"), R0);
        bad.apply(&expire(u64::MAX), R0);
        assert!(matches!(
            bad.apply_trusting_retries(&retry, R0),
            Applied::Executed(_)
        ));
        assert_eq!(bad.executed(), 2, "executed twice");
    }

    /// Large results are not kept: a retried GET reads again, a retried successful CAS answers
    /// from its expected value, a retried failed CAS is told its value is gone.
    #[test]
    fn large_results_are_not_kept_and_retries_still_get_true_answers() {
        let big = Bytes::from(vec![
            b'x';
            crate::core::limits::SESSION_RESULT_BYTES_MAX + 1
        ]);
        let mut kv = KvStore::new();
        kv.apply(
            &cmd(
                1,
                1,
                Op::Put {
                    key: b("k"),
                    value: big.clone(),
                },
            ),
            R0,
        );
        let get = cmd(2, 1, Op::Get { key: b("k") });
        assert_eq!(
            kv.apply(&get, R0).result().map(|r| r.value.clone()),
            Some(big.clone())
        );
        assert!(kv.sessions().size_bytes() < 1024, "the value is not kept");
        assert_eq!(
            kv.apply(&get, R0).result().map(|r| r.value.clone()),
            Some(big.clone())
        );
        let cas = |req, expected: Option<Bytes>| {
            cmd(
                3,
                req,
                Op::Cas {
                    key: b("k"),
                    expected,
                    new: b("small"),
                },
            )
        };
        let failed = cas(1, None);
        assert!(!kv.apply(&failed, R0).result().expect("ran").success);
        assert_eq!(kv.apply(&failed, R0), Applied::ResultNotKept);
        let won = cas(2, Some(big.clone()));
        let first = kv.apply(&won, R0);
        assert_eq!(kv.apply(&won, R0).result(), first.result());
        assert_eq!(first.result().map(|r| r.value.clone()), Some(big));
    }

    /// The session table's size, before and after the bound on kept results and expiry (the
    /// figures of issue 12: 50,000 one-request sessions, 100 sessions each reading 1 MiB).
    #[test]
    fn session_table_stays_small() {
        let mut kv = KvStore::new();
        for c in 0..50_000u64 {
            kv.apply(&at(cmd(c + 1, 1, Op::Get { key: b("k") }), 1_000), R0);
        }
        let many = kv.sessions().size_bytes();
        let mut big = KvStore::new();
        let mib = Bytes::from(vec![0u8; 1024 * 1024]);
        big.apply(
            &cmd(
                1_000_000,
                1,
                Op::Put {
                    key: b("k"),
                    value: mib,
                },
            ),
            R0,
        );
        for c in 0..100u64 {
            big.apply(&at(cmd(c + 1, 1, Op::Get { key: b("k") }), 1_000), R0);
        }
        let readers = big.sessions().size_bytes();
        println!(
            "session table: 50,000 one-request sessions {many} bytes ({} per session); 101 \
             sessions of which 100 read a 1 MiB value {readers} bytes",
            many / 50_000
        );
        assert!(many < 50_000 * 256, "{many}");
        assert!(readers < 101 * 256, "{readers}");
        // Expired, they are gone.
        for c in 0..50_000u64 {
            kv.apply(&Command::expire(ClientId(c + 1), 1_000), R0);
        }
        assert_eq!(kv.sessions().size_bytes(), 0);
    }

    #[test]
    fn digest_depends_on_content_not_history() {
        let mut a = KvStore::new();
        let mut b_ = KvStore::new();
        a.apply(
            &cmd(
                1,
                1,
                Op::Put {
                    key: b("x"),
                    value: b("1"),
                },
            ),
            R0,
        );
        a.apply(
            &cmd(
                1,
                2,
                Op::Put {
                    key: b("y"),
                    value: b("2"),
                },
            ),
            R0,
        );
        b_.apply(
            &cmd(
                2,
                1,
                Op::Put {
                    key: b("y"),
                    value: b("0"),
                },
            ),
            R0,
        );
        b_.apply(
            &cmd(
                2,
                2,
                Op::Put {
                    key: b("x"),
                    value: b("1"),
                },
            ),
            R0,
        );
        assert_ne!(a.digest(), b_.digest());
        b_.apply(
            &cmd(
                2,
                3,
                Op::Put {
                    key: b("y"),
                    value: b("2"),
                },
            ),
            R0,
        );
        assert_eq!(a.digest(), b_.digest());
        a.apply(&cmd(1, 3, Op::Delete { key: b("x") }), R0);
        a.apply(&cmd(1, 4, Op::Delete { key: b("y") }), R0);
        assert_eq!(a.digest(), KvStore::new().digest());
    }
}
