//! Dependencies: what they mean, the one shape they have ([`Deps`]), and how they are computed
//! (which known instances a new command interferes with).
//!
//! **What a dependency means.** Deps hold at most one entry per row: `q.s` in the deps of `x`
//! means "every instance of row `q` up to slot `s`" (the downward closure of the row, as in
//! the original Go implementation). Execution orders `x` after each of those that interferes
//! with it (see `execute::Unexecuted`), and waits until all of them are committed, since only
//! then is it known which of them interfere. This meaning is exact and cheap to test
//! ([`Deps::covers`]), which EPaxos* recovery needs: its Validate phase asks "is `y` in `D`?" and
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
use std::fmt;

use bytes::Bytes;

use crate::core::command::Command;
use crate::core::ids::{ClientId, InstanceId, ReplicaId};

/// A dependency set in its one shape: sorted by row, at most one entry per row, that row's
/// highest slot (see the module doc for what `q.s` means). The fields are private and every
/// constructor normalizes, so the shape cannot be broken: two sets that mean the same thing are
/// equal, which is what the fast path's "answered exactly the initial deps" compares.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Deps(Vec<InstanceId>);

impl Deps {
    /// No dependency.
    pub fn new() -> Deps {
        Deps(Vec::new())
    }

    /// Adds `id`: its row then reaches at least its slot (a lower entry of the row is raised,
    /// a higher one kept).
    pub fn raise(&mut self, id: InstanceId) {
        match self.0.binary_search_by_key(&id.replica, |d| d.replica) {
            Ok(i) => self.0[i].slot = self.0[i].slot.max(id.slot),
            Err(i) => self.0.insert(i, id),
        }
    }

    /// Adds every entry of `other` (see [`Deps::union`]).
    pub fn union_with(&mut self, other: &Deps) {
        if other.0.is_empty() {
            return;
        }
        if self.0.is_empty() {
            self.0.clone_from(&other.0);
            return;
        }
        *self = self.union(other);
    }

    /// The union of two sets: per row, the higher slot.
    pub fn union(&self, other: &Deps) -> Deps {
        let (a, b) = (&self.0, &other.0);
        let mut u = Vec::with_capacity(a.len() + b.len());
        let (mut i, mut j) = (0, 0);
        while i < a.len() && j < b.len() {
            let (x, y) = (a[i], b[j]);
            match x.replica.cmp(&y.replica) {
                std::cmp::Ordering::Less => {
                    u.push(x);
                    i += 1;
                }
                std::cmp::Ordering::Greater => {
                    u.push(y);
                    j += 1;
                }
                std::cmp::Ordering::Equal => {
                    u.push(if x.slot >= y.slot { x } else { y });
                    i += 1;
                    j += 1;
                }
            }
        }
        u.extend_from_slice(&a[i..]);
        u.extend_from_slice(&b[j..]);
        Deps(u)
    }

    /// Whether the set includes `id`: `id`'s row has an entry at or above its slot.
    pub fn covers(&self, id: InstanceId) -> bool {
        self.slot(id.replica).is_some_and(|s| s >= id.slot)
    }

    /// The highest slot of `row` in the set, if the set names the row.
    pub fn slot(&self, row: ReplicaId) -> Option<u64> {
        self.0
            .binary_search_by_key(&row, |d| d.replica)
            .ok()
            .map(|i| self.0[i].slot)
    }

    /// Whether `id` is exactly one of the entries (not merely covered by one): an instance
    /// naming itself is refused this way.
    pub fn contains(&self, id: InstanceId) -> bool {
        self.slot(id.replica) == Some(id.slot)
    }

    /// The entries, by row.
    pub fn iter(&self) -> std::slice::Iter<'_, InstanceId> {
        self.0.iter()
    }

    /// The entries, by row, as a slice.
    pub fn as_slice(&self) -> &[InstanceId] {
        &self.0
    }

    /// Number of rows named.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether no row is named.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Any entries, in any order and with repeated rows: keeps the highest slot of each row.
impl FromIterator<InstanceId> for Deps {
    fn from_iter<I: IntoIterator<Item = InstanceId>>(iter: I) -> Deps {
        let mut deps: Vec<InstanceId> = iter.into_iter().collect();
        deps.sort_unstable_by(|a, b| a.replica.cmp(&b.replica).then(b.slot.cmp(&a.slot)));
        deps.dedup_by_key(|d| d.replica);
        Deps(deps)
    }
}

/// A literal list of entries, normalized like any other input.
impl<const N: usize> From<[InstanceId; N]> for Deps {
    fn from(ids: [InstanceId; N]) -> Deps {
        ids.into_iter().collect()
    }
}

impl<'a> IntoIterator for &'a Deps {
    type Item = &'a InstanceId;
    type IntoIter = std::slice::Iter<'a, InstanceId>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// As a list, like the `Vec` it wraps.
impl fmt::Debug for Deps {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(&self.0).finish()
    }
}

/// What commands conflict on: a key, or a client session (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ConflictKey {
    Key(Bytes),
    Session(ClientId),
    /// The cluster-wide pseudo-key: every instance reads it, a membership change
    /// (`Op::Reconfigure`) writes it, so a change interferes with every command and executes at
    /// the same point everywhere. Unlike a real key it makes no chain of a row's own reads (a
    /// read of it depends only on changes, in every row), and a change depends on every
    /// instance known (its deps cover each row up to its latest slot).
    Cluster,
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

/// Up to this many distinct keys, `keys_of` finds repeats by a linear scan: for the small
/// batches of light load that is several times cheaper than hashing each key (SipHash) into a
/// map built for the call. Past it, the map: a large batch stays linear, not quadratic, and
/// keys from clients still go through the DoS-resistant hasher.
const KEYS_SCANNED_MAX: usize = 16;

/// The distinct conflict keys of a batch, each with whether the batch writes it, in the order
/// the commands first name them.
pub fn keys_of(commands: &[Command]) -> Vec<(ConflictKey, bool)> {
    let mut keys: Vec<(ConflictKey, bool)> = Vec::with_capacity(2 * commands.len());
    // Position of each key in `keys`, once there are more than `KEYS_SCANNED_MAX`.
    let mut at: Option<HashMap<ConflictKey, usize>> = None;
    let mut add = |key: ConflictKey, write: bool| {
        let found = match &at {
            Some(at) => at.get(&key).copied(),
            None => keys.iter().position(|(k, _)| *k == key),
        };
        if let Some(i) = found {
            keys[i].1 |= write;
            return;
        }
        if let Some(at) = &mut at {
            at.insert(key.clone(), keys.len());
        } else if keys.len() == KEYS_SCANNED_MAX {
            let mut map = HashMap::with_capacity(2 * commands.len());
            for (i, (k, _)) in keys.iter().enumerate() {
                map.insert(k.clone(), i);
            }
            map.insert(key.clone(), keys.len());
            at = Some(map);
        }
        keys.push((key, write));
    };
    let mut reconfigures = false;
    for c in commands {
        if let Some(key) = c.op.key() {
            add(ConflictKey::Key(key.clone()), c.op.is_write());
        }
        add(ConflictKey::Session(c.client), true);
        reconfigures |= c.op.is_reconfigure();
    }
    if !commands.is_empty() {
        keys.push((ConflictKey::Cluster, reconfigures));
    }
    keys
}

/// Calls `f` with each conflict key of a batch, command by command, with whether that command
/// writes it; repeats included, the cluster-wide pseudo-key last (written if any command
/// reconfigures). For `ConflictIndex`, whose updates and lookups are per-row maxima: a repeat
/// changes nothing, and a key read by one command and written by another gives what the
/// write alone gives (the latest of any kind is at or above the latest write), so this is the
/// same as walking [`keys_of`] without building and deduplicating its list first.
fn each_key(commands: &[Command], mut f: impl FnMut(ConflictKey, bool)) {
    let mut reconfigures = false;
    for c in commands {
        if let Some(key) = c.op.key() {
            f(ConflictKey::Key(key.clone()), c.op.is_write());
        }
        f(ConflictKey::Session(c.client), true);
        reconfigures |= c.op.is_reconfigure();
    }
    if !commands.is_empty() {
        f(ConflictKey::Cluster, reconfigures);
    }
}

impl ConflictIndex {
    pub fn new(n: usize) -> Self {
        ConflictIndex {
            n,
            by_key: HashMap::new(),
        }
    }

    /// Room for `rows` rows (a configuration added ids): keys recorded before keep their
    /// shorter tables, which stand for "nothing in the new rows", and grow when the new rows
    /// record something.
    pub fn grow(&mut self, rows: usize) {
        self.n = self.n.max(rows);
    }

    /// Adds to `deps` the instances that `instance` (with `commands`) must depend on, as known
    /// here. Only the instance's own leader adds from its own row (the chain); other replicas
    /// leave that row to the leader.
    pub fn collect(
        &self,
        instance: InstanceId,
        commands: &[Command],
        own_row: bool,
        deps: &mut Deps,
    ) {
        each_key(commands, |key, write| {
            let Some(rows) = self.by_key.get(&key) else {
                return;
            };
            for (row, latest) in rows.iter().enumerate() {
                let row_id = ReplicaId(row as u32);
                let slot = if key == ConflictKey::Cluster {
                    // A change depends on everything, a read of the cluster only on changes,
                    // its own row's included (see `ConflictKey::Cluster`).
                    if row_id == instance.replica && !own_row {
                        continue;
                    }
                    if write {
                        latest.any
                    } else {
                        latest.write
                    }
                } else if row_id == instance.replica {
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
                        deps.raise(dep);
                    }
                }
            }
        });
    }

    /// Records that `instance` touches the keys of `commands`.
    pub fn record(&mut self, instance: InstanceId, commands: &[Command]) {
        let n = self.n;
        each_key(commands, |key, write| {
            let rows = self
                .by_key
                .entry(key)
                .or_insert_with(|| vec![Latest::default(); n]);
            if rows.len() < n {
                rows.resize(n, Latest::default());
            }
            let Some(latest) = rows.get_mut(instance.replica.index()) else {
                return; // a row outside the cluster: wire validation rejects these first
            };
            latest.any = latest.any.max(Some(instance.slot));
            if write {
                latest.write = latest.write.max(Some(instance.slot));
            }
        });
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
        let mut d = Deps::new();
        ix.collect(inst, cmds, own, &mut d);
        d.as_slice().to_vec()
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

    fn change() -> Command {
        Command::reconfigure(
            ReplicaId(0),
            crate::core::epoch::Change::Remove(ReplicaId(2)),
            crate::core::epoch::Epoch(0),
        )
    }

    /// A membership change depends on the latest instance of every row whatever its keys, and
    /// every instance depends on the latest change, its own row's included; instances that
    /// share no key still do not depend on each other (no chain through the pseudo-key).
    #[test]
    fn a_change_interferes_with_everything_and_reads_do_not_chain() {
        let mut ix = ConflictIndex::new(3);
        ix.record(id(0, 4), &[put("a")]);
        ix.record(id(1, 7), &[get("b")]);
        ix.record(id(0, 5), &[get("c")]);
        assert!(
            deps_of(&ix, id(0, 6), &[get("z")], true).is_empty(),
            "no change yet: an unrelated read depends on nothing, not even its own row"
        );
        assert_eq!(
            deps_of(&ix, id(2, 0), &[change()], true),
            vec![id(0, 5), id(1, 7)]
        );
        assert_eq!(
            deps_of(&ix, id(0, 6), &[change()], true),
            vec![id(0, 5), id(1, 7)],
            "its own row at its leader"
        );
        ix.record(id(2, 0), &[change()]);
        assert_eq!(deps_of(&ix, id(1, 8), &[get("z")], false), vec![id(2, 0)]);
        assert_eq!(deps_of(&ix, id(2, 1), &[get("z")], true), vec![id(2, 0)]);
        assert!(crate::core::command::interferes(&change(), &get("q")));
        assert!(crate::core::command::interferes(&get("q"), &change()));
    }

    #[test]
    fn out_of_order_records_keep_the_latest() {
        let mut ix = ConflictIndex::new(2);
        ix.record(id(0, 7), &[put("a")]);
        ix.record(id(0, 5), &[put("a")]);
        assert_eq!(deps_of(&ix, id(1, 1), &[put("a")], true), vec![id(0, 7)]);
    }

    fn deps(ids: &[InstanceId]) -> Deps {
        ids.iter().copied().collect()
    }

    #[test]
    fn deps_keep_the_highest_slot_per_row_and_cover_below_it() {
        let d = deps(&[id(1, 2), id(0, 4), id(1, 9), id(0, 1)]);
        assert_eq!(d.as_slice(), [id(0, 4), id(1, 9)]);
        assert_eq!(
            d.union(&deps(&[id(0, 7), id(2, 0)])).as_slice(),
            [id(0, 7), id(1, 9), id(2, 0)]
        );
        assert!(d.covers(id(0, 4)) && d.covers(id(0, 0)) && d.covers(id(1, 3)));
        assert!(!d.covers(id(0, 5)) && !d.covers(id(2, 0)));
        assert!(d.contains(id(1, 9)) && !d.contains(id(1, 2)));
        let mut r = d.clone();
        r.raise(id(1, 3));
        assert_eq!(r, d, "a lower slot of a named row changes nothing");
        r.raise(id(2, 5));
        r.raise(id(0, 6));
        assert_eq!(r.as_slice(), [id(0, 6), id(1, 9), id(2, 5)]);
        assert_eq!(format!("{d:?}"), format!("{:?}", [id(0, 4), id(1, 9)]));
    }

    /// The fast path compares sets with `==`: two sets that cover the same instances are equal
    /// whatever order and repetitions they were built from.
    #[test]
    fn equal_meaning_is_equal_value() {
        let a = deps(&[id(2, 1), id(0, 3), id(0, 1)]);
        let b = deps(&[id(0, 3), id(2, 0), id(2, 1)]);
        assert_eq!(a, b);
        assert_ne!(a, deps(&[id(0, 3), id(2, 2)]));
    }

    proptest::proptest! {
        /// Any input comes out sorted by row with one entry per row, that row's highest slot;
        /// `covers`, `union` and `raise` agree with the naive reading of the raw entries.
        #[test]
        fn any_input_normalizes_and_agrees_with_a_naive_model(
            a in proptest::collection::vec((0u32..5, 0u64..8), 0..12),
            b in proptest::collection::vec((0u32..5, 0u64..8), 0..12),
            probe in (0u32..6, 0u64..9),
        ) {
            let ids = |v: &[(u32, u64)]| -> Vec<InstanceId> {
                v.iter().map(|(r, s)| id(*r, *s)).collect()
            };
            let (ra, rb, probe) = (ids(&a), ids(&b), id(probe.0, probe.1));
            // The naive model: "is x in the set built from these raw entries?"
            let naive = |raw: &[InstanceId], x: InstanceId| {
                raw.iter().any(|d| d.replica == x.replica && d.slot >= x.slot)
            };
            let (da, db) = (deps(&ra), deps(&rb));
            for d in [&da, &db] {
                let s = d.as_slice();
                proptest::prop_assert!(s.windows(2).all(|w| w[0].replica < w[1].replica));
            }
            for row in 0..6 {
                let highest = ra.iter().filter(|d| d.replica.0 == row).map(|d| d.slot).max();
                proptest::prop_assert_eq!(da.slot(ReplicaId(row)), highest);
            }
            proptest::prop_assert_eq!(da.len(), da.iter().count());
            proptest::prop_assert_eq!(da.covers(probe), naive(&ra, probe));
            let u = da.union(&db);
            let both: Vec<InstanceId> = ra.iter().chain(&rb).copied().collect();
            proptest::prop_assert_eq!(&u, &deps(&both));
            proptest::prop_assert_eq!(u.covers(probe), naive(&ra, probe) || naive(&rb, probe));
            let mut w = da.clone();
            w.union_with(&db);
            proptest::prop_assert_eq!(&w, &u);
            let mut r = da.clone();
            for x in &rb {
                r.raise(*x);
            }
            proptest::prop_assert_eq!(&r, &u);
        }
    }

    /// Small batches scan, large ones hash: both give each key once, in first-named order,
    /// written if any command of the batch writes it.
    #[test]
    fn keys_of_is_the_same_below_and_above_the_scan_limit() {
        for commands in [3usize, KEYS_SCANNED_MAX, 5 * KEYS_SCANNED_MAX] {
            let batch: Vec<Command> = (0..commands)
                .map(|i| Command {
                    client: ClientId(i as u64 % 4),
                    request: RequestId(i as u64 + 1),
                    op: if i % 3 == 0 {
                        Op::Get {
                            key: Bytes::from(format!("k{}", i % 40)),
                        }
                    } else {
                        Op::Put {
                            key: Bytes::from(format!("k{}", i % 40)),
                            value: Bytes::new(),
                        }
                    },
                    time_ms: 0,
                    retry: false,
                })
                .collect();
            let mut expected: Vec<(ConflictKey, bool)> = Vec::new();
            for c in &batch {
                let mut named = vec![(ConflictKey::Session(c.client), true)];
                if let Some(k) = c.op.key() {
                    named.insert(0, (ConflictKey::Key(k.clone()), c.op.is_write()));
                }
                for (k, w) in named {
                    match expected.iter_mut().find(|(e, _)| *e == k) {
                        Some(e) => e.1 |= w,
                        None => expected.push((k, w)),
                    }
                }
            }
            // Every batch reads the cluster-wide pseudo-key, last (see `ConflictKey::Cluster`).
            if !batch.is_empty() {
                expected.push((ConflictKey::Cluster, false));
            }
            assert_eq!(keys_of(&batch), expected, "{commands} commands");
        }
    }

    /// `record` and `collect` as they were before `each_key`: over `keys_of`, each key once.
    fn record_by_keys_of(ix: &mut ConflictIndex, instance: InstanceId, commands: &[Command]) {
        let n = ix.n;
        for (key, write) in keys_of(commands) {
            let rows = ix
                .by_key
                .entry(key)
                .or_insert_with(|| vec![Latest::default(); n]);
            let latest = &mut rows[instance.replica.index()];
            latest.any = latest.any.max(Some(instance.slot));
            if write {
                latest.write = latest.write.max(Some(instance.slot));
            }
        }
    }
    fn collect_by_keys_of(
        ix: &ConflictIndex,
        instance: InstanceId,
        commands: &[Command],
        own_row: bool,
    ) -> Deps {
        let mut deps = Deps::new();
        for (key, write) in keys_of(commands) {
            let Some(rows) = ix.by_key.get(&key) else {
                continue;
            };
            for (row, latest) in rows.iter().enumerate() {
                let row_id = ReplicaId(row as u32);
                let slot = if key == ConflictKey::Cluster {
                    if row_id == instance.replica && !own_row {
                        continue;
                    }
                    if write {
                        latest.any
                    } else {
                        latest.write
                    }
                } else if row_id == instance.replica {
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
                        deps.raise(dep);
                    }
                }
            }
        }
        deps
    }

    proptest::proptest! {
        /// Walking a batch's keys command by command, repeats included (`each_key`), records
        /// and collects exactly what walking its deduplicated `keys_of` did: batches with
        /// repeated keys, reads and writes of one key, shared sessions and changes.
        #[test]
        fn each_key_records_and_collects_what_keys_of_did(
            batches in proptest::collection::vec(
                (0u32..3, 0u64..6, proptest::collection::vec((0u8..4, 0u64..3, 0u8..8), 1..6)),
                1..12,
            ),
            probe in (0u32..3, 0u64..8, proptest::collection::vec((0u8..4, 0u64..3, 0u8..8), 1..6)),
            own in proptest::bool::ANY,
        ) {
            let batch = |ops: &[(u8, u64, u8)]| -> Vec<Command> {
                ops.iter()
                    .map(|&(k, client, kind)| {
                        let key = Bytes::from(vec![b'k', k]);
                        let op = match kind {
                            0..=2 => Op::Get { key },
                            7 => return Command { client: ClientId(client), ..change() },
                            _ => Op::Put { key, value: Bytes::new() },
                        };
                        Command { client: ClientId(client), request: RequestId(1), op, time_ms: 0, retry: false }
                    })
                    .collect()
            };
            let (mut new, mut old) = (ConflictIndex::new(3), ConflictIndex::new(3));
            for (row, slot, ops) in &batches {
                let cmds = batch(ops);
                new.record(id(*row, *slot), &cmds);
                record_by_keys_of(&mut old, id(*row, *slot), &cmds);
            }
            let mut keys: Vec<_> = new.export().map(|(k, r)| (format!("{k:?}"), r.collect::<Vec<_>>())).collect();
            let mut old_keys: Vec<_> = old.export().map(|(k, r)| (format!("{k:?}"), r.collect::<Vec<_>>())).collect();
            keys.sort();
            old_keys.sort();
            proptest::prop_assert_eq!(keys, old_keys);
            let cmds = batch(&probe.2);
            let inst = id(probe.0, probe.1);
            let mut got = Deps::new();
            new.collect(inst, &cmds, own, &mut got);
            proptest::prop_assert_eq!(got, collect_by_keys_of(&old, inst, &cmds, own));
        }
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
