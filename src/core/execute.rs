//! Execution order: strongly connected components of the committed dependency graph.
//!
//! An instance's edges are the committed instances its deps cover that interfere with it (see
//! `deps` for what a dependency means, and [`Unexecuted::edges`] for how they are found).
//! An instance can execute once every instance reachable through its edges is committed. Tarjan's
//! algorithm emits the components of that graph dependencies first; inside a component the
//! instances run in `InstanceId` order, which every replica shares. EPaxos* needs no `seq`:
//! a client is answered only after its command executes, so any fixed order inside a component
//! stays linearizable.
//!
//! The walk runs on an explicit stack (long dependency chains would overflow a recursive one)
//! and stops at the first dependency that is not committed yet. The components emitted before
//! that point are complete (everything they reach was explored and found committed), so they
//! execute at once: a backlog drains up to the first gap instead of waiting for the whole graph.
//! That also keeps execution from livelocking on a component that keeps growing under constant
//! conflicts: whatever does not reach the growing frontier runs.

use std::collections::hash_map::Entry;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};

use crate::core::command::Command;
use crate::core::deps::{keys_of, ConflictKey, Deps};
use crate::core::ids::InstanceId;

/// What the walk needs to know about an instance.
pub enum Node {
    /// Executed already: the walk does not enter it.
    Done,
    /// Committed, not executed: these are its edges.
    Ready(Vec<InstanceId>),
    /// Unknown here, or known but not committed: whatever reaches it must wait.
    Missing,
}

/// How the walk ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Everything reachable from the root was emitted.
    Complete,
    /// The walk hit `missing`. `waiting` are the visited instances that could not be emitted:
    /// each of them reaches `missing`, so it is blocked on it too.
    Blocked {
        missing: InstanceId,
        waiting: Vec<InstanceId>,
    },
}

#[derive(Clone, Copy)]
struct Mark {
    index: u32,
    low: u32,
    on_stack: bool,
}

/// Walks the graph from `root` and appends to `out` the components that can execute, in
/// execution order, each sorted by `InstanceId`.
pub fn order(
    root: InstanceId,
    mut node: impl FnMut(InstanceId) -> Node,
    out: &mut Vec<Vec<InstanceId>>,
) -> Outcome {
    let root_deps = match node(root) {
        Node::Done => return Outcome::Complete,
        Node::Missing => {
            return Outcome::Blocked {
                missing: root,
                waiting: Vec::new(),
            }
        }
        Node::Ready(d) => d,
    };
    let mut marks: IdMap<Mark> = IdMap::default();
    let mut stack: Vec<InstanceId> = Vec::new();
    // The explicit call stack: (instance, its deps, next dep to look at).
    let mut calls: Vec<(InstanceId, Vec<InstanceId>, usize)> = Vec::new();
    let mut next_index = 0u32;

    let mut enter = |id: InstanceId,
                     deps: Vec<InstanceId>,
                     marks: &mut IdMap<Mark>,
                     stack: &mut Vec<InstanceId>,
                     calls: &mut Vec<(InstanceId, Vec<InstanceId>, usize)>| {
        marks.insert(
            id,
            Mark {
                index: next_index,
                low: next_index,
                on_stack: true,
            },
        );
        next_index += 1;
        stack.push(id);
        calls.push((id, deps, 0));
    };
    enter(root, root_deps, &mut marks, &mut stack, &mut calls);

    while let Some(top) = calls.last_mut() {
        let (v, next) = (top.0, top.2);
        if let Some(&w) = top.1.get(next) {
            top.2 += 1;
            match marks.get(&w).copied() {
                Some(mw) => {
                    if mw.on_stack {
                        let mv = marks.get_mut(&v).expect("v was marked when entered");
                        mv.low = mv.low.min(mw.index);
                    }
                }
                None => match node(w) {
                    Node::Done => {}
                    Node::Missing => {
                        return Outcome::Blocked {
                            missing: w,
                            waiting: stack,
                        }
                    }
                    Node::Ready(wd) => enter(w, wd, &mut marks, &mut stack, &mut calls),
                },
            }
            continue;
        }
        calls.pop();
        let mv = *marks.get(&v).expect("v was marked when entered");
        if mv.low == mv.index {
            let mut component = Vec::new();
            while let Some(u) = stack.pop() {
                marks.get_mut(&u).expect("stacked ids are marked").on_stack = false;
                component.push(u);
                if u == v {
                    break;
                }
            }
            component.sort_unstable();
            out.push(component);
        }
        if let Some(parent) = calls.last() {
            let mp = marks.get_mut(&parent.0).expect("parent was marked");
            mp.low = mp.low.min(mv.low);
        }
    }
    Outcome::Complete
}

/// A map keyed by instance id with a multiplicative hash (FxHash's) instead of SipHash: ids
/// are not chosen by clients (a row's slots are numbered by its leader, a member of the
/// configuration, which the protocol trusts anyway), so the DoS resistance SipHash buys for
/// client keys is not needed here, and ids are hashed several times per executed instance.
pub type IdMap<V> = HashMap<InstanceId, V, BuildHasherDefault<IdHasher>>;

/// The hasher of [`IdMap`]: FxHash's rotate-xor-multiply per word.
#[derive(Default, Clone, Copy)]
pub struct IdHasher(u64);

impl IdHasher {
    const K: u64 = 0xf135_7aea_2e62_a9c5;

    fn add(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(Self::K);
    }
}

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.add(u64::from_le_bytes(word));
        }
    }
    fn write_u32(&mut self, n: u32) {
        self.add(u64::from(n));
    }
    fn write_u64(&mut self, n: u64) {
        self.add(n);
    }
    fn finish(&self) -> u64 {
        // The multiply leaves the low bits (hashbrown's bucket index) the weakest: bring the
        // well-mixed high bits down.
        self.0.rotate_left(26)
    }
}

/// Ascending slots, as a deque: slots of one row are mostly committed in ascending order and
/// executed oldest first, so inserts append and removals pop the front, with no tree nodes to
/// allocate and free per instance (a key usually holds one or two unexecuted instances).
#[derive(Debug, Clone, Default)]
struct SlotSet(VecDeque<u64>);

impl SlotSet {
    fn insert(&mut self, slot: u64) {
        match self.0.back() {
            None => self.0.push_back(slot),
            Some(&last) if last < slot => self.0.push_back(slot),
            _ => {
                let at = self.0.partition_point(|&s| s < slot);
                if self.0.get(at) != Some(&slot) {
                    self.0.insert(at, slot);
                }
            }
        }
    }

    fn remove(&mut self, slot: u64) {
        if self.0.front() == Some(&slot) {
            self.0.pop_front();
        } else if let Ok(at) = self.0.binary_search(&slot) {
            self.0.remove(at);
        }
    }

    fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The slots at or below `slot`, ascending.
    fn up_to(&self, slot: u64) -> impl Iterator<Item = u64> + '_ {
        self.0
            .range(..self.0.partition_point(|&s| s <= slot))
            .copied()
    }

    /// The highest slot at or below `slot`.
    fn latest_up_to(&self, slot: u64) -> Option<u64> {
        let end = self.0.partition_point(|&s| s <= slot);
        end.checked_sub(1).and_then(|i| self.0.get(i).copied())
    }
}

/// Per row, the slots of committed instances not executed yet that touch one key.
#[derive(Debug, Clone, Default)]
struct Slots {
    any: SlotSet,
    write: SlotSet,
}

/// The committed instances not executed yet, per conflict key and row: where the walk finds an
/// instance's edges.
#[derive(Debug, Clone)]
pub struct Unexecuted {
    n: usize,
    by_key: HashMap<ConflictKey, Vec<Slots>>,
    /// Each instance's conflict keys, computed once when it commits.
    footprints: IdMap<Vec<(ConflictKey, bool)>>,
}

impl Unexecuted {
    pub fn new(n: usize) -> Unexecuted {
        Unexecuted {
            n,
            by_key: HashMap::new(),
            footprints: IdMap::default(),
        }
    }

    /// Room for `rows` rows (see `ConflictIndex::grow`).
    pub fn grow(&mut self, rows: usize) {
        self.n = self.n.max(rows);
    }

    /// `id` (with `commands`) is committed and waits to execute.
    pub fn insert(&mut self, id: InstanceId, commands: &[Command]) {
        let n = self.n;
        let keys = keys_of(commands);
        for (key, write) in &keys {
            let write = *write;
            // Built, not cloned from one empty `Slots`: cloning an empty deque still costs
            // about a hundred instructions, and this runs for every key of every instance.
            let rows = self
                .by_key
                .entry(key.clone())
                .or_insert_with(|| std::iter::repeat_with(Slots::default).take(n).collect());
            if rows.len() < n {
                rows.resize_with(n, Slots::default);
            }
            if let Some(slots) = rows.get_mut(id.replica.index()) {
                slots.any.insert(id.slot);
                if write {
                    slots.write.insert(id.slot);
                }
            }
        }
        self.footprints.insert(id, keys);
    }

    /// `id` executed.
    pub fn remove(&mut self, id: InstanceId) {
        let Some(keys) = self.footprints.remove(&id) else {
            return;
        };
        for (key, _) in keys {
            // One hash of the key for the lookup and the removal.
            let Entry::Occupied(mut rows) = self.by_key.entry(key) else {
                continue;
            };
            if let Some(slots) = rows.get_mut().get_mut(id.replica.index()) {
                slots.any.remove(id.slot);
                slots.write.remove(id.slot);
            }
            if rows.get().iter().all(|s| s.any.is_empty()) {
                rows.remove();
            }
        }
    }

    /// The edges of `id`: for each key of its commands and each row its deps cover up to slot
    /// `s`, the latest unexecuted instance of that row at or below `s` that interferes (for a
    /// write or in the instance's own row, the latest on the key; for a read, the latest write).
    ///
    /// The latest is enough: the leader of a row puts its previous instance on a key into the
    /// initial deps of its next one, and committed deps contain the initial deps, so the
    /// interfering instances of one row on one key form a chain and the latest reaches all
    /// earlier ones. A no-op breaks no chain: it touches no key, so the walk skips it, and the
    /// next instance on the key reaches past it directly. Executed instances are gone from the
    /// index; those below them on the same key executed before them, so the chain stays whole.
    ///
    /// The caller must also make the instance wait until every slot its deps cover is
    /// committed: only then is it known which of them interfere.
    pub fn edges(&self, id: InstanceId, commands: &[Command], deps: &Deps) -> Vec<InstanceId> {
        let mut edges = Vec::new();
        let computed;
        let keys = match self.footprints.get(&id) {
            Some(k) => k,
            None => {
                computed = keys_of(commands);
                &computed
            }
        };
        for (key, write) in keys {
            let write = *write;
            let Some(rows) = self.by_key.get(key) else {
                continue;
            };
            for dep in deps {
                let Some(slots) = rows.get(dep.replica.index()) else {
                    continue;
                };
                if *key == ConflictKey::Cluster {
                    // A change: an edge to every unexecuted instance its deps cover (they
                    // need not chain on one key). A read of the cluster: to the latest change.
                    if write {
                        edges.extend(
                            slots
                                .any
                                .up_to(dep.slot)
                                .map(|s| InstanceId::new(dep.replica, s))
                                .filter(|e| *e != id),
                        );
                    } else if let Some(slot) = slots.write.latest_up_to(dep.slot) {
                        edges.push(InstanceId::new(dep.replica, slot));
                    }
                    continue;
                }
                let set = if write || dep.replica == id.replica {
                    &slots.any
                } else {
                    &slots.write
                };
                if let Some(slot) = set.latest_up_to(dep.slot) {
                    let e = InstanceId::new(dep.replica, slot);
                    if e != id {
                        edges.push(e);
                    }
                }
            }
        }
        edges.sort_unstable();
        edges.dedup();
        edges
    }

    /// Number of keys with unexecuted instances.
    pub fn keys(&self) -> usize {
        self.by_key.len()
    }
}

/// Rows of `deps` whose covered slots are not all committed: the first uncommitted slot of each,
/// given per row the first slot not known to be committed.
pub fn gaps<'a>(
    deps: &'a Deps,
    committed_prefix: &'a [u64],
) -> impl Iterator<Item = InstanceId> + 'a {
    deps.iter().filter_map(move |d| {
        let p = *committed_prefix.get(d.replica.index())?;
        (p <= d.slot).then_some(InstanceId::new(d.replica, p))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::ids::ReplicaId;
    use std::collections::BTreeMap;

    fn id(r: u32, s: u64) -> InstanceId {
        InstanceId::new(ReplicaId(r), s)
    }

    /// A test graph: Some(deps) = committed, None = known but uncommitted; absent = unknown.
    struct G {
        nodes: BTreeMap<InstanceId, Option<Vec<InstanceId>>>,
        done: Vec<InstanceId>,
    }
    impl G {
        fn new(edges: &[(InstanceId, &[InstanceId])]) -> G {
            G {
                nodes: edges.iter().map(|(a, d)| (*a, Some(d.to_vec()))).collect(),
                done: vec![],
            }
        }
        fn run(&self, root: InstanceId) -> (Vec<Vec<InstanceId>>, Outcome) {
            let mut out = vec![];
            let o = order(
                root,
                |i| {
                    if self.done.contains(&i) {
                        return Node::Done;
                    }
                    match self.nodes.get(&i) {
                        Some(Some(d)) => Node::Ready(d.clone()),
                        _ => Node::Missing,
                    }
                },
                &mut out,
            );
            (out, o)
        }
    }

    #[test]
    fn chain_executes_dependencies_first() {
        let g = G::new(&[
            (id(0, 3), &[id(1, 2)]),
            (id(1, 2), &[id(0, 1)]),
            (id(0, 1), &[]),
        ]);
        let (out, o) = g.run(id(0, 3));
        assert_eq!(o, Outcome::Complete);
        assert_eq!(out, vec![vec![id(0, 1)], vec![id(1, 2)], vec![id(0, 3)]]);
    }

    #[test]
    fn cycle_is_one_component_in_id_order() {
        // 2.1 -> 0.1 -> 1.1 -> 2.1, plus 0.1 -> 0.0 outside the cycle.
        let g = G::new(&[
            (id(2, 1), &[id(0, 1)]),
            (id(0, 1), &[id(1, 1), id(0, 0)]),
            (id(1, 1), &[id(2, 1)]),
            (id(0, 0), &[]),
        ]);
        for root in [id(2, 1), id(0, 1), id(1, 1)] {
            let (out, o) = g.run(root);
            assert_eq!(o, Outcome::Complete);
            assert_eq!(
                out,
                vec![vec![id(0, 0)], vec![id(0, 1), id(1, 1), id(2, 1)]]
            );
        }
    }

    #[test]
    fn executed_deps_are_skipped() {
        let mut g = G::new(&[(id(0, 2), &[id(0, 1)]), (id(0, 1), &[])]);
        g.done.push(id(0, 1));
        let (out, _) = g.run(id(0, 2));
        assert_eq!(out, vec![vec![id(0, 2)]]);
    }

    #[test]
    fn blocked_walk_emits_complete_components_and_names_the_waiting() {
        // 0.3 -> {0.1, 1.1}; 1.1 -> 2.9 which is not committed; 0.1 is independent.
        let mut g = G::new(&[
            (id(0, 3), &[id(0, 1), id(1, 1)]),
            (id(0, 1), &[]),
            (id(1, 1), &[id(2, 9)]),
        ]);
        g.nodes.insert(id(2, 9), None);
        let (out, o) = g.run(id(0, 3));
        assert_eq!(out, vec![vec![id(0, 1)]]);
        match o {
            Outcome::Blocked {
                missing,
                mut waiting,
            } => {
                assert_eq!(missing, id(2, 9));
                waiting.sort();
                assert_eq!(waiting, vec![id(0, 3), id(1, 1)]);
            }
            Outcome::Complete => panic!("must block on 2.9"),
        }
    }

    #[test]
    fn long_chain_does_not_overflow_the_stack() {
        const LEN: u64 = 200_000;
        let deps: Vec<Vec<InstanceId>> = (0..LEN)
            .map(|s| if s == 0 { vec![] } else { vec![id(0, s - 1)] })
            .collect();
        let mut out = vec![];
        let o = order(
            id(0, LEN - 1),
            |i| Node::Ready(deps[i.slot as usize].clone()),
            &mut out,
        );
        assert_eq!(o, Outcome::Complete);
        assert_eq!(out.len(), LEN as usize);
        assert_eq!(out[0], vec![id(0, 0)]);
        assert_eq!(out[LEN as usize - 1], vec![id(0, LEN - 1)]);
    }

    #[test]
    fn long_cycle_is_one_component() {
        const LEN: u64 = 50_000;
        // 0 -> 1 -> ... -> LEN-1 -> 0
        let deps: Vec<Vec<InstanceId>> = (0..LEN).map(|s| vec![id(0, (s + 1) % LEN)]).collect();
        let mut out = vec![];
        order(
            id(0, 0),
            |i| Node::Ready(deps[i.slot as usize].clone()),
            &mut out,
        );
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].len(), LEN as usize);
        assert!(out[0].windows(2).all(|w| w[0] < w[1]));
    }

    mod unexecuted {
        use super::*;
        use crate::core::command::{Command, Op};
        use crate::core::ids::{ClientId, RequestId};
        use bytes::Bytes;

        fn cmd(client: u64, key: &'static str, write: bool) -> Command {
            let key = Bytes::from_static(key.as_bytes());
            Command {
                client: ClientId(client),
                request: RequestId(1),
                op: if write {
                    Op::Put {
                        key,
                        value: Bytes::from_static(b"v"),
                    }
                } else {
                    Op::Get { key }
                },
                time_ms: 0,
                retry: false,
            }
        }

        #[test]
        fn edges_go_to_the_latest_interfering_covered_instance_of_each_row() {
            let mut u = Unexecuted::new(3);
            u.insert(id(0, 1), &[cmd(1, "a", true)]);
            u.insert(id(0, 2), &[cmd(2, "b", true)]);
            u.insert(id(0, 3), &[cmd(3, "a", false)]);
            u.insert(id(1, 5), &[cmd(4, "a", true)]);
            // A write on a covering row 0 up to 3 and row 1 up to 5: the latest on a of each.
            let e = u.edges(
                id(2, 0),
                &[cmd(9, "a", true)],
                &Deps::from([id(0, 3), id(1, 5)]),
            );
            assert_eq!(e, vec![id(0, 3), id(1, 5)]);
            // A read skips reads of other rows: the latest write on a in row 0 is 0.1.
            let e = u.edges(id(2, 0), &[cmd(9, "a", false)], &Deps::from([id(0, 3)]));
            assert_eq!(e, vec![id(0, 1)]);
            // Slots above the dep's are not covered; other keys do not interfere.
            let e = u.edges(id(2, 0), &[cmd(9, "a", true)], &Deps::from([id(0, 2)]));
            assert_eq!(e, vec![id(0, 1)]);
            let e = u.edges(
                id(2, 0),
                &[cmd(9, "c", true)],
                &Deps::from([id(0, 3), id(1, 5)]),
            );
            assert!(e.is_empty());
            // Executed instances leave the index.
            u.remove(id(0, 3));
            u.remove(id(0, 1));
            let e = u.edges(id(2, 0), &[cmd(9, "a", true)], &Deps::from([id(0, 3)]));
            assert!(e.is_empty());
        }

        /// A change gets an edge to every unexecuted instance its deps cover (they need not
        /// chain), and an instance that covers a change gets an edge to it.
        #[test]
        fn a_change_has_edges_to_everything_it_covers() {
            let mut u = Unexecuted::new(2);
            let (a, b) = (cmd(1, "a", true), cmd(2, "b", false));
            u.insert(id(0, 1), std::slice::from_ref(&a));
            u.insert(id(0, 2), std::slice::from_ref(&b));
            let change = Command::reconfigure(
                crate::core::ids::ReplicaId(1),
                crate::core::epoch::Change::Remove(crate::core::ids::ReplicaId(0)),
                crate::core::epoch::Epoch(0),
            );
            let deps: Deps = [id(0, 2)].into();
            assert_eq!(
                u.edges(id(1, 0), std::slice::from_ref(&change), &deps),
                vec![id(0, 1), id(0, 2)]
            );
            u.insert(id(1, 0), std::slice::from_ref(&change));
            let later = cmd(3, "z", false);
            let deps: Deps = [id(1, 0)].into();
            assert_eq!(u.edges(id(0, 3), &[later], &deps), vec![id(1, 0)]);
            let no_cover: Deps = [id(0, 2)].into();
            assert!(
                u.edges(id(0, 3), &[cmd(3, "z", false)], &no_cover)
                    .is_empty(),
                "reads of the cluster do not chain"
            );
        }

        proptest::proptest! {
            /// The deque of slots answers like an ordered set under any order of inserts
            /// (ascending, out of order, repeated) and removals (oldest, middle, absent).
            #[test]
            fn slot_set_is_an_ordered_set(
                ops in proptest::collection::vec((proptest::bool::weighted(0.6), 0u64..24), 0..80),
                probes in proptest::collection::vec(0u64..26, 1..6),
            ) {
                let (mut set, mut model) = (SlotSet::default(), std::collections::BTreeSet::new());
                for (insert, slot) in ops {
                    if insert {
                        set.insert(slot);
                        model.insert(slot);
                    } else {
                        set.remove(slot);
                        model.remove(&slot);
                    }
                    proptest::prop_assert_eq!(set.is_empty(), model.is_empty());
                    for &p in &probes {
                        proptest::prop_assert_eq!(
                            set.up_to(p).collect::<Vec<_>>(),
                            model.range(..=p).copied().collect::<Vec<_>>()
                        );
                        proptest::prop_assert_eq!(
                            set.latest_up_to(p),
                            model.range(..=p).next_back().copied()
                        );
                    }
                }
            }
        }

        /// Ids spread over the buckets: sequential slots of a few rows hash to distinct
        /// values whose low bits (the bucket index) differ too.
        #[test]
        fn id_hashes_of_sequential_slots_spread() {
            use std::hash::BuildHasher;
            let build = BuildHasherDefault::<IdHasher>::default();
            let mut low: std::collections::HashSet<u64> = std::collections::HashSet::new();
            for r in 0..3 {
                for s in 0..1024u64 {
                    low.insert(build.hash_one(id(r, s)) & 4095);
                }
            }
            // 3072 ids into 4096 buckets: a uniform hash leaves about 2,300 distinct.
            assert!(low.len() > 2000, "{} distinct low bits", low.len());
        }

        #[test]
        fn uncommitted_covered_slots_are_gaps() {
            let prefix = [4, 0, 9];
            let g: Vec<_> = gaps(&Deps::from([id(0, 3), id(1, 0), id(2, 9)]), &prefix).collect();
            assert_eq!(g, vec![id(1, 0), id(2, 9)]);
        }
    }
}
