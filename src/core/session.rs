//! The exactly-once session table, its bound, and the rule that expires idle sessions.
//!
//! A session (`client_id`) remembers its last executed request so that a retry of it is
//! answered without executing again. Kept forever, the table grows with every client id ever
//! seen; so sessions expire, and every replica must expire the same sessions at the same point
//! of the execution order (else one replica would answer a retry from its table and another
//! would execute it again, or refuse it).
//!
//! Why this is deterministic:
//! - every command carries `time_ms`, the wall clock of the replica that took it into an
//!   instance, stamped once: a value of the command, equal on every replica;
//! - a session's `last_time_ms` is the largest `time_ms` of the commands of that session
//!   executed so far (executions, retries, stale and reused requests all count as activity);
//!   commands of one client interfere (`command::interferes`), so they execute in one order
//!   everywhere and `last_time_ms` evolves alike everywhere;
//! - expiry is itself a command, [`Op::Expire`](crate::core::command::Op::Expire), of the
//!   session's client: it interferes with every command of that session, so its place among
//!   them is the same everywhere, and executing it removes the session iff
//!   `last_time_ms <= idle_since_ms` — a function of the command and of the session's ordered
//!   history only. A replica's own clock or its local view decides only *whether to propose*
//!   an expiry (which is free to differ between replicas), never whether it takes effect.
//!
//! What a late retry gets: a command whose session is not in the table starts a session only
//! if it is request 1 and not marked a retry (sessions start at request 1, so nothing of that
//! session can have executed before). Anything else is refused as
//! [`Applied::Expired`](crate::core::kv::Applied::Expired): its outcome is unknown to the
//! replicas (an earlier attempt may have executed before the session expired), so it is neither
//! executed a second time nor answered with a made-up result.
//!
//! Clock skew between replicas cannot break this (every replica applies the same rule to the
//! same values); it only shifts when expiries take effect: a replica whose clock runs ahead by
//! more than the TTL may expire a session that is still in use, whose next request is then
//! refused (the bundled client starts a new session and sends it again).

use std::collections::{BTreeSet, HashMap};

use crate::core::command::OpResult;
use crate::core::ids::{ClientId, ReplicaId, RequestId};
use crate::core::limits::SESSION_RESULT_BYTES_MAX;

/// How a refusal as expired begins (`ReplyError::Expired`); clients recognise it by this.
pub const EXPIRED_PREFIX: &str = "session expired";

/// A client session's last executed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    pub request: RequestId,
    /// [`fingerprint`](crate::core::kv::fingerprint) of the request's operation; 0: unknown
    /// (restored from a checkpoint written before fingerprints existed), which any retry
    /// matches.
    pub fingerprint: u64,
    /// The request's result. Its value is kept only up to [`SESSION_RESULT_BYTES_MAX`]: a
    /// session per client and a 1 MiB value each would otherwise pin a copy of every value
    /// read (see `value_kept`).
    pub result: OpResult,
    /// Whether `result.value` is the whole value; if not, it is empty and a retry is answered
    /// without it (see `KvStore::apply`).
    pub value_kept: bool,
    /// The largest `time_ms` of the session's commands executed so far.
    pub last_time_ms: u64,
    /// The row (replica) that led the instance of the session's last command: that replica
    /// proposes the session's expiry (others do too once it has been idle for twice the TTL).
    pub leader: ReplicaId,
}

impl Session {
    /// A session whose last request `request` (with operation fingerprint `fingerprint`) gave
    /// `result`, at `time_ms`, led by `leader`; a large value is not kept.
    pub fn new(
        request: RequestId,
        fingerprint: u64,
        mut result: OpResult,
        time_ms: u64,
        leader: ReplicaId,
    ) -> Session {
        let value_kept = result.value.len() <= SESSION_RESULT_BYTES_MAX;
        if !value_kept {
            result.value = bytes::Bytes::new();
        }
        Session {
            request,
            fingerprint,
            result,
            value_kept,
            last_time_ms: time_ms,
            leader,
        }
    }

    /// Bytes this entry holds, table and index included (for measurements and the gauge).
    pub fn size_bytes(&self) -> usize {
        ENTRY_BYTES + self.result.value.len()
    }
}

/// What one entry costs besides its result's value: the map slot (key, session, hash-table
/// control byte) and the index entry (a B-tree element, with node overhead).
const ENTRY_BYTES: usize = std::mem::size_of::<(ClientId, Session)>()
    + 1
    + 2 * std::mem::size_of::<(ReplicaId, u64, ClientId)>();

/// The session table with an index of idle sessions by leader and time.
#[derive(Debug, Default, Clone)]
pub struct Sessions {
    table: HashMap<ClientId, Session>,
    /// Every session by (leader, last_time_ms, client): a replica finds the sessions it led
    /// that have been idle longest, and those of each other row idle for long, with a range
    /// scan each, never a scan of the whole table.
    by_leader: BTreeSet<(ReplicaId, u64, ClientId)>,
    /// Value bytes kept in the table's results.
    value_bytes: usize,
}

impl Sessions {
    pub fn get(&self, client: &ClientId) -> Option<&Session> {
        self.table.get(client)
    }

    pub fn len(&self) -> usize {
        self.table.len()
    }

    pub fn is_empty(&self) -> bool {
        self.table.is_empty()
    }

    /// Bytes the table and its index hold (an estimate from the entries' sizes).
    pub fn size_bytes(&self) -> usize {
        self.table.len() * ENTRY_BYTES + self.value_bytes
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ClientId, &Session)> {
        self.table.iter()
    }

    /// Sets `client`'s session.
    pub fn insert(&mut self, client: ClientId, session: Session) {
        // The old entry leaves the index first: the new one may have the same index key.
        if let Some(old) = self.table.remove(&client) {
            self.unindex(client, &old);
        }
        self.by_leader
            .insert((session.leader, session.last_time_ms, client));
        self.value_bytes += session.result.value.len();
        self.table.insert(client, session);
    }

    /// Activity of `client`'s session: a command of it stamped `time_ms`, led by `leader`,
    /// executed (whatever it did). No-op for an unknown session.
    pub fn touch(&mut self, client: ClientId, time_ms: u64, leader: ReplicaId) {
        let Some(s) = self.table.get_mut(&client) else {
            return;
        };
        let time_ms = time_ms.max(s.last_time_ms);
        if (s.leader, s.last_time_ms) == (leader, time_ms) {
            return;
        }
        self.by_leader.remove(&(s.leader, s.last_time_ms, client));
        s.leader = leader;
        s.last_time_ms = time_ms;
        self.by_leader.insert((leader, time_ms, client));
    }

    /// The expiry rule: removes `client`'s session iff it was last active at or before
    /// `idle_since_ms`. Returns whether it did.
    pub fn expire(&mut self, client: ClientId, idle_since_ms: u64) -> bool {
        match self.table.get(&client) {
            Some(s) if s.last_time_ms <= idle_since_ms => {
                let s = self.table.remove(&client).expect("just found");
                self.unindex(client, &s);
                true
            }
            _ => false,
        }
    }

    /// Removes a session without the rule: `Sabotage::expire_locally` only.
    pub fn remove(&mut self, client: ClientId) {
        if let Some(s) = self.table.remove(&client) {
            self.unindex(client, &s);
        }
    }

    fn unindex(&mut self, client: ClientId, s: &Session) {
        self.by_leader.remove(&(s.leader, s.last_time_ms, client));
        self.value_bytes -= s.result.value.len();
    }

    /// Sessions idle enough for replica `me` (of `n`) to propose their expiry, oldest first,
    /// at most `max` of them, skipping those `skip` says: the sessions `me` led last that were
    /// last active at or before `own_since_ms`, then those any row led last active at or
    /// before `any_since_ms` (their leader may be gone). Cost: the range scans, bounded by
    /// `max` plus the skipped ones.
    pub fn idle(
        &self,
        me: ReplicaId,
        n: usize,
        own_since_ms: u64,
        any_since_ms: u64,
        max: usize,
        skip: impl Fn(ClientId) -> bool,
    ) -> Vec<ClientId> {
        let mut out = Vec::new();
        let scan = |row: ReplicaId, since: u64, out: &mut Vec<ClientId>| {
            let range = (row, 0, ClientId(0))..=(row, since, ClientId(u64::MAX));
            for (_, _, client) in self.by_leader.range(range) {
                if out.len() >= max {
                    return;
                }
                if !skip(*client) {
                    out.push(*client);
                }
            }
        };
        scan(me, own_since_ms, &mut out);
        for row in (0..n as u32).map(ReplicaId).filter(|r| *r != me) {
            scan(row, any_since_ms, &mut out);
        }
        out
    }

    /// An order-independent digest of the table (replicas that executed the same commands
    /// hold the same table): for checks that sessions evolve alike everywhere.
    pub fn digest(&self) -> u64 {
        self.table.iter().fold(0u64, |acc, (c, s)| {
            let mut h = 0xcbf2_9ce4_8422_2325u64;
            for word in [
                c.0,
                s.request.0,
                s.fingerprint,
                s.last_time_ms,
                u64::from(s.leader.0),
                u64::from(s.value_kept),
                u64::from(s.result.found) | u64::from(s.result.success) << 1,
            ]
            .iter()
            .flat_map(|w| w.to_le_bytes())
            .chain(s.result.value.iter().copied())
            {
                h ^= u64::from(word);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
            acc.wrapping_add(h)
        })
    }

    /// Checks that the index names exactly the table's sessions.
    pub fn check(&self) -> Result<(), String> {
        if self.by_leader.len() != self.table.len() {
            return Err(format!(
                "session index has {} entries for {} sessions",
                self.by_leader.len(),
                self.table.len()
            ));
        }
        for (c, s) in &self.table {
            if !self.by_leader.contains(&(s.leader, s.last_time_ms, *c)) {
                return Err(format!("session {c:?} missing from the index"));
            }
        }
        Ok(())
    }
}

impl FromIterator<(ClientId, Session)> for Sessions {
    fn from_iter<I: IntoIterator<Item = (ClientId, Session)>>(iter: I) -> Self {
        let mut s = Sessions::default();
        for (c, session) in iter {
            s.insert(c, session);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn session(time_ms: u64, leader: u32) -> Session {
        Session::new(
            RequestId(1),
            1,
            OpResult::default(),
            time_ms,
            ReplicaId(leader),
        )
    }

    #[test]
    fn expiry_removes_only_sessions_idle_long_enough() {
        let mut t = Sessions::default();
        t.insert(ClientId(1), session(100, 0));
        t.insert(ClientId(2), session(200, 0));
        assert!(!t.expire(ClientId(2), 199), "active after the cut-off");
        assert!(t.expire(ClientId(1), 100), "last active at the cut-off");
        assert!(!t.expire(ClientId(1), 100), "already gone");
        t.insert(ClientId(2), session(200, 0)); // the same index key again
        t.check().expect("index");
        t.touch(ClientId(2), 50, ReplicaId(1));
        assert_eq!(t.get(&ClientId(2)).map(|s| s.last_time_ms), Some(200));
        assert!(!t.expire(ClientId(2), 150), "time never goes back");
        t.check().expect("index");
    }

    #[test]
    fn idle_finds_own_sessions_first_and_others_only_when_long_idle() {
        let mut t = Sessions::default();
        for (c, time, leader) in [(1, 10, 0), (2, 20, 1), (3, 30, 0), (4, 5, 2), (5, 500, 0)] {
            t.insert(ClientId(c), session(time, leader));
        }
        let idle = |own, any, max| t.idle(ReplicaId(0), 3, own, any, max, |_| false);
        assert_eq!(idle(30, 0, 10), vec![ClientId(1), ClientId(3)]);
        assert_eq!(
            idle(30, 20, 10),
            vec![ClientId(1), ClientId(3), ClientId(2), ClientId(4)]
        );
        assert_eq!(idle(30, 20, 1), vec![ClientId(1)], "bounded");
        let skipped = t.idle(ReplicaId(0), 3, 30, 0, 10, |c| c == ClientId(1));
        assert_eq!(skipped, vec![ClientId(3)]);
    }

    #[test]
    fn large_results_are_not_kept() {
        let big = OpResult {
            found: true,
            value: Bytes::from(vec![7u8; SESSION_RESULT_BYTES_MAX + 1]),
            success: true,
        };
        let s = Session::new(RequestId(1), 1, big, 0, ReplicaId(0));
        assert!(!s.value_kept);
        assert!(s.result.value.is_empty());
        assert!(s.result.found, "the flags are kept");
        let mut t = Sessions::default();
        t.insert(ClientId(1), s);
        assert!(t.size_bytes() < 1024, "{}", t.size_bytes());
    }
}
