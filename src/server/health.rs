//! Whether this replica can serve, and why not: what gRPC health, the metrics port's `/health`
//! and the fast refusal of proposals all report. The event loop assesses it every iteration
//! from the node (joining, abstaining, which peers were heard within the suspicion timeout) and
//! publishes changes on a `watch` channel; readers never wait on the loop.

use std::fmt;

use tokio::sync::watch;

/// What a replica can do for clients now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// Joined, voting on everything, and a majority (itself included) heard from recently.
    Serving,
    /// A new data directory waiting to join its cluster: it serves nothing.
    Joining,
    /// A replica being added: not a member of the configuration it knows, it asks the members
    /// to Join until an admin adds it (`client member add`). It serves nothing.
    NotMember,
    /// Rejoined but below its horizons somewhere: it counts as a failed replica until it has
    /// caught up (see `Replica::abstaining`).
    Abstaining,
    /// Fewer than a majority of replicas (itself included) were heard from within the
    /// suspicion timeout: nothing it proposes can commit.
    NoMajority {
        reachable: usize,
        needed: usize,
        n: usize,
    },
}

impl Health {
    /// Health from the node's state: `reachable` counts the replicas heard from within the
    /// suspicion timeout, this one included, of `n`.
    pub fn assess(joining: bool, abstaining: bool, reachable: usize, n: usize) -> Health {
        // A majority of the configuration (n - f; `slow_quorum` assumes an odd n, and a
        // configuration passing between sizes may be even).
        let needed = n - n.saturating_sub(1) / 2;
        if joining {
            Health::Joining
        } else if reachable < needed {
            Health::NoMajority {
                reachable,
                needed,
                n,
            }
        } else if abstaining {
            Health::Abstaining
        } else {
            Health::Serving
        }
    }

    pub fn can_serve(&self) -> bool {
        *self == Health::Serving
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Health::Serving => write!(f, "serving"),
            Health::Joining => write!(
                f,
                "joining: a new data directory waits to join its cluster and serves nothing yet"
            ),
            Health::NotMember => write!(
                f,
                "not a member yet: waits until an admin adds it (client member add), then joins \
                 from a member's snapshot"
            ),
            Health::Abstaining => write!(
                f,
                "abstaining: rejoined from a snapshot and not yet caught up to its horizons; it \
                 counts as a failed replica until then"
            ),
            Health::NoMajority {
                reachable,
                needed,
                n,
            } => write!(
                f,
                "no majority: {reachable} of {n} replicas (this one included) heard from within \
                 the suspicion timeout, committing needs {needed}"
            ),
        }
    }
}

/// The event loop's side: publishes a health that changed.
pub struct Publisher {
    tx: watch::Sender<Health>,
    gauge: metrics::Gauge,
}

impl Publisher {
    /// Starts as `Joining` or `Serving`: peers count as heard at start (the core's suspicion
    /// clock starts then), so a replica is not refused before it could hear anyone.
    pub fn new(initial: Health) -> (Publisher, watch::Receiver<Health>) {
        let (tx, rx) = watch::channel(initial);
        let gauge = metrics::gauge!("epaxos_serving");
        gauge.set(if initial.can_serve() { 1.0 } else { 0.0 });
        (Publisher { tx, gauge }, rx)
    }

    /// Publishes `health` if it changed, and logs the change.
    pub fn publish(&self, health: Health) {
        let changed = self.tx.send_if_modified(|h| {
            if *h == health {
                return false;
            }
            *h = health;
            true
        });
        if !changed {
            return;
        }
        self.gauge.set(if health.can_serve() { 1.0 } else { 0.0 });
        if health.can_serve() {
            tracing::info!("healthy: serving");
        } else {
            tracing::warn!(reason = %health, "unhealthy: not serving");
        }
    }
}

/// Keeps gRPC health (`""` and `epaxos.v1.Kv`) in step with `rx` until it closes.
pub async fn report_grpc(
    mut rx: watch::Receiver<Health>,
    reporter: tonic_health::server::HealthReporter,
    service: &'static str,
) {
    loop {
        let status = if rx.borrow_and_update().can_serve() {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        reporter.set_service_status("", status).await;
        reporter.set_service_status(service, status).await;
        if rx.changed().await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_majority_joined_and_caught_up_serves() {
        assert_eq!(Health::assess(false, false, 2, 3), Health::Serving);
        assert_eq!(Health::assess(false, false, 3, 5), Health::Serving);
        assert_eq!(Health::assess(false, false, 1, 1), Health::Serving);
    }

    #[test]
    fn joining_abstaining_or_alone_does_not_serve() {
        assert_eq!(Health::assess(true, false, 3, 3), Health::Joining);
        assert_eq!(Health::assess(false, true, 3, 3), Health::Abstaining);
        let h = Health::assess(false, false, 1, 3);
        assert_eq!(
            h,
            Health::NoMajority {
                reachable: 1,
                needed: 2,
                n: 3
            }
        );
        assert!(!h.can_serve());
        assert!(h.to_string().contains("1 of 3"), "{h}");
        assert_eq!(
            Health::assess(false, false, 2, 5),
            Health::NoMajority {
                reachable: 2,
                needed: 3,
                n: 5
            }
        );
    }
}
