//! Execution order: strongly connected components of the committed dependency graph.
//!
//! An instance can execute once every instance reachable through its deps is committed. Tarjan's
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

use std::collections::HashMap;

use crate::ids::InstanceId;

/// What the walk needs to know about an instance.
pub enum Node<'a> {
    /// Executed already: the walk does not enter it.
    Done,
    /// Committed, not executed: these are its deps.
    Ready(&'a [InstanceId]),
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
pub fn order<'a>(
    root: InstanceId,
    node: impl Fn(InstanceId) -> Node<'a>,
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
    let mut marks: HashMap<InstanceId, Mark> = HashMap::new();
    let mut stack: Vec<InstanceId> = Vec::new();
    // The explicit call stack: (instance, its deps, next dep to look at).
    let mut calls: Vec<(InstanceId, &'a [InstanceId], usize)> = Vec::new();
    let mut next_index = 0u32;

    let mut enter = |id: InstanceId,
                     deps: &'a [InstanceId],
                     marks: &mut HashMap<InstanceId, Mark>,
                     stack: &mut Vec<InstanceId>,
                     calls: &mut Vec<(InstanceId, &'a [InstanceId], usize)>| {
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
        let (v, deps, next) = (top.0, top.1, top.2);
        if let Some(&w) = deps.get(next) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::ReplicaId;
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
                        Some(Some(d)) => Node::Ready(d),
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
            |i| Node::Ready(&deps[i.slot as usize]),
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
        order(id(0, 0), |i| Node::Ready(&deps[i.slot as usize]), &mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].len(), LEN as usize);
        assert!(out[0].windows(2).all(|w| w[0] < w[1]));
    }
}
