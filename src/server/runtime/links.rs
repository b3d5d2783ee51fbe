//! The outbound peer links, keyed by replica id: one bounded queue and one dialing task (see
//! `transport::run_link`) per member of the configuration this replica acts in, but itself.
//! Applying a configuration starts a link for a member that appeared (at its address from the
//! configuration, not config.json's) and ends the link of one that is gone, so that nothing
//! keeps dialing a removed replica.

use super::*;
use crate::server::members::{Member, Members};

/// One peer's link: its queue, where it dials, and the task doing it.
struct Link {
    queue: ByteSender,
    addr: HostPort,
    task: tokio::task::JoinHandle<()>,
}

/// The links to the members of the current configuration.
pub(super) struct PeerLinks {
    me: ReplicaId,
    incarnation: Incarnation,
    dialer: tls::PeerDialer,
    queue_max: usize,
    queue_bytes_max: usize,
    links: BTreeMap<ReplicaId, Link>,
}

impl PeerLinks {
    pub(super) fn new(
        me: ReplicaId,
        incarnation: Incarnation,
        dialer: tls::PeerDialer,
        queue_max: usize,
        queue_bytes_max: usize,
    ) -> PeerLinks {
        PeerLinks {
            me,
            incarnation,
            dialer,
            queue_max,
            queue_bytes_max,
            links: BTreeMap::new(),
        }
    }

    /// Makes the links those of `members`: starts the missing ones (a member whose address
    /// changed is dialed anew), ends those of replicas no longer members. Returns the ids of
    /// the links started and ended.
    pub(super) fn apply(&mut self, members: &Members) -> (Vec<ReplicaId>, Vec<ReplicaId>) {
        let mut ended = Vec::new();
        self.links.retain(|id, link| {
            let keep = members
                .get(*id)
                .is_some_and(|m| m.peer_addr == link.addr && *id != self.me);
            if !keep {
                // Dropping the queue ends a connected stream's body; aborting ends the dialing.
                link.task.abort();
                metrics::gauge!("epaxos_peer_connected",
                    "peer" => crate::server::metrics::peer_label(id.0))
                .set(0.0);
                ended.push(*id);
            }
            keep
        });
        let mut started = Vec::new();
        for m in members.members() {
            if m.id == self.me || self.links.contains_key(&m.id) {
                continue;
            }
            self.start(m);
            started.push(m.id);
        }
        (started, ended)
    }

    fn start(&mut self, member: &Member) {
        let (queue, rx) = byte_queue(self.queue_max, self.queue_bytes_max);
        let task = tokio::spawn(transport::run_link(
            self.me,
            self.incarnation,
            member.id,
            member.peer_addr.clone(),
            self.dialer.clone(),
            rx,
        ));
        self.links.insert(
            member.id,
            Link {
                queue,
                addr: member.peer_addr.clone(),
                task,
            },
        );
    }

    /// The queue of the link to `peer`, if it is a member linked to.
    pub(super) fn queue(&self, peer: ReplicaId) -> Option<&ByteSender> {
        self.links.get(&peer).map(|l| &l.queue)
    }

    /// The ids linked to, in order.
    pub(super) fn ids(&self) -> impl Iterator<Item = ReplicaId> + '_ {
        self.links.keys().copied()
    }
}

impl Drop for PeerLinks {
    fn drop(&mut self) {
        for link in self.links.values() {
            link.task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn members(epoch: u64, ids: &[u32]) -> Members {
        // Port 9 (discard) on loopback: nothing answers, the links keep redialing.
        Members::new(
            epoch,
            ids.iter()
                .map(|id| {
                    Members::member_from_parts(*id, &format!("127.0.0.1:{}", 9), "127.0.0.1:1")
                        .expect("valid")
                })
                .collect(),
        )
        .expect("valid")
    }

    #[tokio::test]
    async fn links_follow_the_configuration() {
        let me = ReplicaId(0);
        let incarnation = Incarnation::new(7).expect("nonzero");
        let mut links = PeerLinks::new(me, incarnation, tls::PeerDialer::insecure(), 4, 1024);
        let (started, ended) = links.apply(&members(0, &[0, 1, 2]));
        assert_eq!((started, ended), (vec![ReplicaId(1), ReplicaId(2)], vec![]));
        assert!(links.queue(me).is_none(), "no link to itself");
        // 2 replaced by 3: 3's link starts, 2's ends, 1's stays.
        let (started, ended) = links.apply(&members(1, &[0, 1, 3]));
        assert_eq!((started, ended), (vec![ReplicaId(3)], vec![ReplicaId(2)]));
        assert_eq!(
            links.ids().collect::<Vec<_>>(),
            [ReplicaId(1), ReplicaId(3)]
        );
        assert!(links.queue(ReplicaId(2)).is_none());
        // The same configuration again changes nothing.
        assert_eq!(links.apply(&members(1, &[0, 1, 3])), (vec![], vec![]));
        // A removed replica: its link ends.
        let (started, ended) = links.apply(&members(2, &[1, 3]));
        assert_eq!((started, ended), (vec![], vec![]));
        assert_eq!(
            links.ids().collect::<Vec<_>>(),
            [ReplicaId(1), ReplicaId(3)]
        );
    }
}
