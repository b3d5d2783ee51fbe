//! Admission of the membership calls (Join, Snapshot), which cost the event loop a walk of
//! every instance, or a whole encoded state in memory: even an authenticated peer gets them
//! only at a bounded rate, and one snapshot at a time.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Per peer: at most one call per `interval`.
#[derive(Debug)]
pub struct PerPeerRate {
    interval: Duration,
    /// When each peer was last admitted. A plain mutex: held for a comparison, never across
    /// an await, and not protocol state.
    last: Mutex<Vec<Option<Instant>>>,
}

impl PerPeerRate {
    pub fn new(n: usize, interval: Duration) -> PerPeerRate {
        PerPeerRate {
            interval,
            last: Mutex::new(vec![None; n]),
        }
    }

    /// Whether `peer` may call now (and if so, counts this call).
    pub fn admit(&self, peer: usize, now: Instant) -> bool {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let Some(slot) = last.get_mut(peer) else {
            return false;
        };
        if slot.is_some_and(|t| now.duration_since(t) < self.interval) {
            return false;
        }
        *slot = Some(now);
        true
    }
}

/// At most `max` snapshots taken and streamed at once.
#[derive(Debug, Clone)]
pub struct Snapshots(Arc<Semaphore>);

impl Snapshots {
    pub fn new(max: usize) -> Snapshots {
        Snapshots(Arc::new(Semaphore::new(max)))
    }

    /// A slot, held until the snapshot's stream ends; `None` when all are taken.
    pub fn try_start(&self) -> Option<OwnedSemaphorePermit> {
        self.0.clone().try_acquire_owned().ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_peer_is_admitted_once_per_interval() {
        let rate = PerPeerRate::new(3, Duration::from_millis(100));
        let t = Instant::now();
        assert!(rate.admit(1, t));
        assert!(!rate.admit(1, t + Duration::from_millis(50)), "too soon");
        assert!(rate.admit(2, t + Duration::from_millis(50)), "another peer");
        assert!(rate.admit(1, t + Duration::from_millis(100)));
        assert!(!rate.admit(7, t), "no such peer");
    }

    #[test]
    fn one_snapshot_at_a_time_until_its_stream_ends() {
        let s = Snapshots::new(1);
        let first = s.try_start().expect("free");
        assert!(s.try_start().is_none(), "one at a time");
        drop(first);
        assert!(s.try_start().is_some(), "free again once the stream ended");
    }
}
