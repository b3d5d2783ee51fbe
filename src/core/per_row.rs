//! One value per replica row: the watermarks, frontiers and horizons the core keeps for every
//! row (or every peer), indexed by [`ReplicaId`], so that no raw index can slip in. A table
//! starts at the cluster's size (epoch 0's ids) and only grows, to one past the highest id of
//! any configuration the replica learns (ids are never reused, see `epoch`).

use std::ops::{Index, IndexMut};

use crate::core::ids::ReplicaId;

/// A value for each of the `n` rows of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PerRow<T>(Vec<T>);

impl<T: Clone> PerRow<T> {
    /// `value` for each of `n` rows.
    pub fn new(n: usize, value: T) -> PerRow<T> {
        PerRow(vec![value; n])
    }

    /// At least `rows` rows, the new ones holding `value`; never shrinks (an id once handed
    /// out keeps its row).
    pub fn grow(&mut self, rows: usize, value: T) {
        if self.0.len() < rows {
            self.0.resize(rows, value);
        }
    }
}

impl<T> PerRow<T> {
    /// How many rows.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none (never, in the core: a cluster has a member).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<T> PerRow<T> {
    /// `values` as one per row of a cluster of `n`, or `None` if there are not exactly `n`.
    pub fn from_vec(values: Vec<T>, n: usize) -> Option<PerRow<T>> {
        (values.len() == n).then_some(PerRow(values))
    }

    /// The rows with their values, in id order.
    pub fn rows(&self) -> impl Iterator<Item = (ReplicaId, &T)> {
        self.0
            .iter()
            .enumerate()
            .map(|(row, v)| (ReplicaId(row as u32), v))
    }

    /// The values, in id order.
    pub fn iter(&self) -> std::slice::Iter<'_, T> {
        self.0.iter()
    }

    /// The values, in id order, to change.
    pub fn iter_mut(&mut self) -> std::slice::IterMut<'_, T> {
        self.0.iter_mut()
    }

    /// The value of `row`, or `None` for a row outside the cluster (from unchecked input).
    pub fn get(&self, row: ReplicaId) -> Option<&T> {
        self.0.get(row.index())
    }

    /// The value of `row` to change, or `None` for a row outside the cluster.
    pub fn get_mut(&mut self, row: ReplicaId) -> Option<&mut T> {
        self.0.get_mut(row.index())
    }

    /// The values as they go on the wire and to disk (in id order).
    pub fn as_slice(&self) -> &[T] {
        &self.0
    }

    /// The values, in id order.
    pub fn into_vec(self) -> Vec<T> {
        self.0
    }
}

/// Panics on a row outside the cluster: every id the core indexes with was checked on input.
impl<T> Index<ReplicaId> for PerRow<T> {
    type Output = T;
    fn index(&self, row: ReplicaId) -> &T {
        &self.0[row.index()]
    }
}

impl<T> IndexMut<ReplicaId> for PerRow<T> {
    fn index_mut(&mut self, row: ReplicaId) -> &mut T {
        &mut self.0[row.index()]
    }
}

impl<'a, T> IntoIterator for &'a PerRow<T> {
    type Item = &'a T;
    type IntoIter = std::slice::Iter<'a, T>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_value_per_row_indexed_by_replica() {
        let mut p = PerRow::new(3, 0u64);
        p[ReplicaId(2)] = 7;
        assert_eq!(p.as_slice(), [0, 0, 7]);
        assert_eq!(p.get(ReplicaId(3)), None, "a row outside the cluster");
        let rows: Vec<(ReplicaId, u64)> = p.rows().map(|(r, v)| (r, *v)).collect();
        assert_eq!(rows[2], (ReplicaId(2), 7));
        assert!(PerRow::from_vec(vec![1, 2], 3).is_none(), "one value short");
        assert_eq!(
            PerRow::from_vec(vec![1, 2, 3], 3).map(|p| p[ReplicaId(1)]),
            Some(2)
        );
        p.grow(5, 9);
        assert_eq!(p.as_slice(), [0, 0, 7, 9, 9], "new rows take the value");
        p.grow(2, 1);
        assert_eq!(p.len(), 5, "never shrinks");
    }
}
