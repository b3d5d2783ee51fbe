//! Dependency computation: which known instances a new command interferes with.
//!
//! **What a dependency means.** Deps hold at most one entry per row: `q.s` in the deps of `x`
//! means "every instance of row `q` up to slot `s`" (the downward closure of the row, as in
//! the original Go implementation). Execution orders `x` after each of those that interferes
//! with it (see `execute::Unexecuted`), and waits until all of them are committed, since only
//! then is it known which of them interfere. This meaning is exact and cheap to test
//! (`covers`), which EPaxos* recovery needs: its Validate phase asks "is `y` in `D`?" and
//! "is `x` in the deps of `y`?", and a recovered no-op must not break what depends on a slot.
//!
//! **How they are computed.** Per key and per row the index keeps the latest slot that touched
//! the key and the latest slot that wrote it. A command's deps take, per row, the highest of
//!
//! - for a write on `k`: the latest instance on `k` of that row;
//! - for a read on `k`: the latest write on `k` of that row;
//! - in the leader's own row: its previous instance on `k`, read or write.
//!
//! Only the leader adds from its own row: other replicas leave that row to the leader.
//!
//! Besides its key, every command writes a per-session pseudo-key: the commands of one client
//! session then interfere and execute in the same order everywhere, which the exactly-once
//! table (the last request of each session) needs. Without it, two requests of one session on
//! different keys could execute in different orders at two replicas, and a request could be
//! taken as stale at one of them and executed at the other.

use std::collections::HashMap;

use bytes::Bytes;

use crate::core::command::Command;
use crate::core::ids::{ClientId, InstanceId, ReplicaId};

/// Keeps the highest slot of each row, sorted by row: the one shape deps have.
pub fn normalize(deps: &mut Vec<InstanceId>) {
    deps.sort_unstable_by(|a, b| a.replica.cmp(&b.replica).then(b.slot.cmp(&a.slot)));
    deps.dedup_by_key(|d| d.replica);
}

/// The union of two deps: per row, the higher slot.
pub fn union(a: &[InstanceId], b: &[InstanceId]) -> Vec<InstanceId> {
    let mut u: Vec<InstanceId> = a.iter().chain(b).copied().collect();
    normalize(&mut u);
    u
}

/// Whether `deps` include `id`: `id`'s row has an entry at or above its slot.
pub fn covers(deps: &[InstanceId], id: InstanceId) -> bool {
    deps.iter()
        .any(|d| d.replica == id.replica && d.slot >= id.slot)
}

/// What commands conflict on: a key, or a client session (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ConflictKey {
    Key(Bytes),
    Session(ClientId),
}

/// Per-row latest slots for one key.
#[derive(Debug, Clone, Copy, Default)]
struct Latest {
    any: Option<u64>,
    write: Option<u64>,
}

/// The conflict index of one replica.
#[derive(Debug, Clone)]
pub struct ConflictIndex {
    n: usize,
    by_key: HashMap<ConflictKey, Vec<Latest>>,
}

/// The distinct conflict keys of a batch, each with whether the batch writes it.
pub fn keys_of(commands: &[Command]) -> Vec<(ConflictKey, bool)> {
    let mut keys: Vec<(ConflictKey, bool)> = Vec::with_capacity(2 * commands.len());
    // Position of each key in `keys`: a linear search would make large batches quadratic.
    let mut at: HashMap<ConflictKey, usize> = HashMap::with_capacity(2 * commands.len());
    let mut add = |key: ConflictKey, write: bool| match at.get(&key) {
        Some(&i) => keys[i].1 |= write,
        None => {
            at.insert(key.clone(), keys.len());
            keys.push((key, write));
        }
    };
    for c in commands {
        if let Some(key) = c.op.key() {
            add(ConflictKey::Key(key.clone()), c.op.is_write());
        }
        add(ConflictKey::Session(c.client), true);
    }
    keys
}

impl ConflictIndex {
    pub fn new(n: usize) -> Self {
        ConflictIndex {
            n,
            by_key: HashMap::new(),
        }
    }

    /// Adds to `deps` the instances that `instance` (with `commands`) must depend on, as known
    /// here. `deps` comes back sorted and without duplicates. Only the instance's own leader
    /// adds from its own row (the chain); other replicas leave that row to the leader.
    pub fn collect(
        &self,
        instance: InstanceId,
        commands: &[Command],
        own_row: bool,
        deps: &mut Vec<InstanceId>,
    ) {
        for (key, write) in keys_of(commands) {
            let Some(rows) = self.by_key.get(&key) else {
                continue;
            };
            for (row, latest) in rows.iter().enumerate() {
                let row_id = ReplicaId(row as u32);
                let slot = if row_id == instance.replica {
                    if !own_row {
                        continue;
                    }
                    latest.any
                } else if write {
                    latest.any
                } else {
                    latest.write
                };
                if let Some(slot) = slot {
                    let dep = InstanceId::new(row_id, slot);
                    if dep != instance {
                        deps.push(dep);
                    }
                }
            }
        }
        normalize(deps);
    }

    /// Records that `instance` touches the keys of `commands`.
    pub fn record(&mut self, instance: InstanceId, commands: &[Command]) {
        let n = self.n;
        for (key, write) in keys_of(commands) {
            let rows = self
                .by_key
                .entry(key)
                .or_insert_with(|| vec![Latest::default(); n]);
            let Some(latest) = rows.get_mut(instance.replica.index()) else {
                continue; // a row outside the cluster: wire validation rejects these first
            };
            latest.any = latest.any.max(Some(instance.slot));
            if write {
                latest.write = latest.write.max(Some(instance.slot));
            }
        }
    }

    /// Every entry, for a checkpoint: the key and, per row, (latest slot, latest write slot).
    #[allow(clippy::type_complexity)]
    pub fn export(
        &self,
    ) -> impl Iterator<
        Item = (
            &ConflictKey,
            impl Iterator<Item = (Option<u64>, Option<u64>)> + '_,
        ),
    > {
        self.by_key
            .iter()
            .map(|(k, rows)| (k, rows.iter().map(|l| (l.any, l.write))))
    }

    /// Rebuilds an index from a checkpoint's entries.
    pub fn import(
        n: usize,
        entries: impl IntoIterator<Item = (ConflictKey, Vec<(Option<u64>, Option<u64>)>)>,
    ) -> ConflictIndex {
        let mut ix = ConflictIndex::new(n);
        for (key, rows) in entries {
            let mut latest = vec![Latest::default(); n];
            for (l, (any, write)) in latest.iter_mut().zip(rows) {
                l.any = any;
                l.write = write;
            }
            ix.by_key.insert(key, latest);
        }
        ix
    }

    /// Number of keys indexed.
    pub fn len(&self) -> usize {
        self.by_key.len()
    }

    /// Whether nothing is indexed.
    pub fn is_empty(&self) -> bool {
        self.by_key.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::command::Op;
    use crate::core::ids::RequestId;

    /// A command of a fresh session, so that only keys conflict.
    fn cmd(op: Op) -> Command {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
        Command {
            client: ClientId(NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)),
            request: RequestId(1),
            op,
            time_ms: 0,
            retry: false,
        }
    }
    fn put(k: &'static str) -> Command {
        cmd(Op::Put {
            key: Bytes::from_static(k.as_bytes()),
            value: Bytes::from_static(b"v"),
        })
    }
    fn get(k: &'static str) -> Command {
        cmd(Op::Get {
            key: Bytes::from_static(k.as_bytes()),
        })
    }
    fn id(r: u32, s: u64) -> InstanceId {
        InstanceId::new(ReplicaId(r), s)
    }
    fn deps_of(
        ix: &ConflictIndex,
        inst: InstanceId,
        cmds: &[Command],
        own: bool,
    ) -> Vec<InstanceId> {
        let mut d = Vec::new();
        ix.collect(inst, cmds, own, &mut d);
        d
    }

    #[test]
    fn write_depends_on_latest_of_each_row_read_only_on_writes() {
        let mut ix = ConflictIndex::new(3);
        ix.record(id(0, 1), &[put("a")]);
        ix.record(id(1, 1), &[put("a")]);
        ix.record(id(1, 2), &[get("a")]);
        ix.record(id(2, 5), &[put("b")]);
        // A write on a depends on the latest op on a of rows 0 and 1, not on row 2 (other key).
        assert_eq!(
            deps_of(&ix, id(2, 6), &[put("a")], true),
            vec![id(0, 1), id(1, 2)]
        );
        // A read on a depends only on the latest writes.
        assert_eq!(
            deps_of(&ix, id(2, 6), &[get("a")], true),
            vec![id(0, 1), id(1, 1)]
        );
        // Reads of different keys or reads alone conflict with nothing.
        assert!(deps_of(&ix, id(2, 6), &[get("c")], true).is_empty());
    }

    #[test]
    fn own_row_chain_only_at_the_leader() {
        let mut ix = ConflictIndex::new(3);
        ix.record(id(0, 1), &[get("a")]);
        // The leader of row 0 chains its next read to its previous read...
        assert_eq!(deps_of(&ix, id(0, 2), &[get("a")], true), vec![id(0, 1)]);
        // ...other replicas leave row 0 to its leader.
        assert!(deps_of(&ix, id(0, 2), &[get("a")], false).is_empty());
    }

    #[test]
    fn batch_unions_keys_and_never_depends_on_itself() {
        let mut ix = ConflictIndex::new(2);
        ix.record(id(0, 3), &[put("a"), get("b")]);
        ix.record(id(1, 1), &[put("b")]);
        assert_eq!(
            deps_of(&ix, id(0, 3), &[put("a"), put("b")], true),
            vec![id(1, 1)]
        );
        assert_eq!(
            deps_of(&ix, id(1, 2), &[get("a"), put("b")], true),
            vec![id(0, 3), id(1, 1)]
        );
    }

    #[test]
    fn commands_of_one_session_conflict_whatever_their_keys() {
        let mut ix = ConflictIndex::new(2);
        let mut a = get("a");
        a.client = ClientId(42);
        let mut b = get("b");
        b.client = ClientId(42);
        ix.record(id(0, 1), &[a]);
        assert_eq!(deps_of(&ix, id(1, 1), &[b], true), vec![id(0, 1)]);
        assert!(deps_of(&ix, id(1, 1), &[get("b")], true).is_empty());
    }

    #[test]
    fn out_of_order_records_keep_the_latest() {
        let mut ix = ConflictIndex::new(2);
        ix.record(id(0, 7), &[put("a")]);
        ix.record(id(0, 5), &[put("a")]);
        assert_eq!(deps_of(&ix, id(1, 1), &[put("a")], true), vec![id(0, 7)]);
    }

    #[test]
    fn deps_keep_the_highest_slot_per_row_and_cover_below_it() {
        let mut d = vec![id(1, 2), id(0, 4), id(1, 9), id(0, 1)];
        normalize(&mut d);
        assert_eq!(d, vec![id(0, 4), id(1, 9)]);
        assert_eq!(
            union(&d, &[id(0, 7), id(2, 0)]),
            vec![id(0, 7), id(1, 9), id(2, 0)]
        );
        assert!(covers(&d, id(0, 4)) && covers(&d, id(0, 0)) && covers(&d, id(1, 3)));
        assert!(!covers(&d, id(0, 5)) && !covers(&d, id(2, 0)));
    }

    #[test]
    fn a_batch_touching_two_keys_of_one_row_gets_one_entry() {
        let mut ix = ConflictIndex::new(2);
        ix.record(id(0, 3), &[put("a")]);
        ix.record(id(0, 8), &[put("b")]);
        assert_eq!(
            deps_of(&ix, id(1, 1), &[put("a"), put("b")], true),
            vec![id(0, 8)]
        );
    }
}
