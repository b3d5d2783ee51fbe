//! Endpoint sync: requests and admin calls go to the cluster's current members, not only to
//! the replicas the configuration file names (issue 15).
//!
//! `config.json` seeds epoch 0; after a replace or a shrink it may name replicas that are no
//! longer members (a removed one refuses clients, naming the members) and miss the added ones,
//! and it never needs editing. So, as etcd's client syncs its endpoints, the client first asks
//! the replicas it knows for their Status (epoch and members with their client addresses),
//! takes the configuration of the highest epoch it hears, asks the members it learnt of there
//! too (a later epoch may be known only to them; at most [`ROUNDS_MAX`] rounds), and then
//! talks to the members of the highest epoch heard.
//!
//! Talking to a learnt member never leaves the configured cluster: each one is reached over TLS
//! with the cluster's CA and must prove it is that replica of this cluster (see
//! `Cluster::tls`), so a stale config.json naming addresses some other cluster uses now gets
//! refused connections, not answers from the wrong cluster. (`--insecure` has no such check.)

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use epaxos_kv::proto::StatusReply;
use tokio::task::JoinSet;

use crate::cluster::Cluster;
use crate::status::{query, Row};

/// Rounds of asking the members a reported configuration names that were not asked yet.
/// Each change is one at a time, so one round normally suffices; the bound keeps a cluster
/// whose replicas keep reporting new members from holding the client.
pub const ROUNDS_MAX: usize = 3;

/// Once one replica answered, how much longer a one-shot command waits for the others before
/// going on with what it heard: a replica cut off by the network never refuses, and must not
/// cost every command a whole timeout. (A stale answer is corrected by the refusal of a
/// removed member: see `oneshot::run`.)
pub const GRACE: Duration = Duration::from_millis(300);

/// The reply of the highest epoch among `replies` (the first of them on a tie): the latest
/// configuration any replica acts in. Epochs only grow, one decided change at a time, so a
/// higher epoch is a later configuration.
pub fn latest<'a>(replies: impl IntoIterator<Item = &'a StatusReply>) -> Option<&'a StatusReply> {
    replies
        .into_iter()
        .reduce(|a, b| if b.epoch > a.epoch { b } else { a })
}

/// The answers in `rows`.
pub fn answers(rows: &[Row]) -> impl Iterator<Item = &StatusReply> {
    rows.iter().filter_map(|r| r.reply.as_ref().ok())
}

/// Asks every replica of `cluster` for its Status at once, each within `timeout`; with
/// `grace`, stops waiting that long after the first answer (the rest count as not answering).
pub async fn ask_all(
    cluster: &Arc<Cluster>,
    timeout: Duration,
    grace: Option<Duration>,
) -> Vec<Row> {
    let mut set = JoinSet::new();
    for idx in 0..cluster.n() {
        set.spawn(query(cluster.clone(), idx, timeout));
    }
    let mut rows: Vec<Row> = Vec::with_capacity(cluster.n());
    let mut until: Option<tokio::time::Instant> = None;
    loop {
        let next = match until {
            Some(t) => match tokio::time::timeout_at(t, set.join_next()).await {
                Ok(next) => next,
                Err(_) => break,
            },
            None => set.join_next().await,
        };
        let Some(joined) = next else { break };
        // A query task does not panic; one that did would only be one answer fewer.
        let Ok(row) = joined else { continue };
        if row.reply.is_ok() && until.is_none() {
            until = grace.map(|g| tokio::time::Instant::now() + g);
        }
        rows.push(row);
    }
    set.abort_all();
    for idx in 0..cluster.n() {
        let id = cluster.id(idx) as usize;
        if !rows.iter().any(|r| r.id == id) {
            rows.push(Row {
                id,
                addr: cluster.addr(idx).to_string(),
                reply: Err("no answer before another replica's".to_string()),
                rtt: Duration::ZERO,
            });
        }
    }
    rows.sort_by_key(|r| r.id);
    rows
}

/// What a sync heard: the cluster of the current members, and every Status answer (or why
/// none came) of the replicas asked on the way.
pub struct Synced {
    pub cluster: Arc<Cluster>,
    pub rows: Vec<Row>,
}

/// Learns the current members from the replicas of `cluster` (see the module's doc) and
/// returns the cluster of the members of the highest epoch heard. Fails, naming every replica
/// asked and why it did not answer, when none answered: then the configuration names no
/// reachable member.
pub async fn sync(
    cluster: Arc<Cluster>,
    timeout: Duration,
    grace: Option<Duration>,
) -> Result<Synced> {
    let mut rows = ask_all(&cluster, timeout, grace).await;
    for _ in 0..ROUNDS_MAX {
        let Some(best) = latest(answers(&rows)) else {
            break;
        };
        let unasked: Vec<_> = best
            .members
            .iter()
            .filter(|m| !rows.iter().any(|r| r.id == m.id as usize))
            .cloned()
            .collect();
        if unasked.is_empty() {
            break;
        }
        let more = Arc::new(cluster.with_members(&unasked)?);
        rows.extend(ask_all(&more, timeout, grace).await);
    }
    let Some(best) = latest(answers(&rows)) else {
        let why: Vec<String> = rows
            .iter()
            .filter_map(|r| {
                r.reply
                    .as_ref()
                    .err()
                    .map(|e| format!("replica {} at {} ({e})", r.id, r.addr))
            })
            .collect();
        bail!(
            "no replica answered, so no current member is known: asked {}; are they running? \
             if the cluster's members changed since the configuration file was written, name \
             a current member with --endpoints host:port",
            why.join(", ")
        );
    };
    // A replica too old to report its members leaves the cluster as configured.
    let members_known = !best.members.is_empty();
    let same = best.members.len() == cluster.n()
        && best
            .members
            .iter()
            .all(|m| cluster.index_of(m.id).is_some());
    let cluster = if members_known && !same {
        Arc::new(cluster.with_members(&best.members)?)
    } else {
        cluster
    };
    Ok(Synced { cluster, rows })
}

#[cfg(test)]
mod tests {
    use super::*;
    use epaxos_kv::proto::Member;

    fn reply(id: u32, epoch: u64, members: &[u32]) -> StatusReply {
        StatusReply {
            id,
            epoch,
            members: members
                .iter()
                .map(|&m| Member {
                    id: m,
                    peer_addr: format!("p{m}:1"),
                    client_addr: format!("c{m}:1"),
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn the_highest_epoch_heard_wins_whoever_reports_it() {
        // A removed member (0) still reports the epoch that removed it; the members have moved
        // on twice since. The answer order does not matter, only the epoch.
        let removed = reply(0, 3, &[1, 2, 3, 4]);
        let stale = reply(1, 4, &[2, 3, 4]);
        let current = reply(3, 5, &[2, 3, 5]);
        for order in [
            [&removed, &stale, &current],
            [&current, &removed, &stale],
            [&stale, &current, &removed],
        ] {
            let best = latest(order).expect("answers");
            assert_eq!((best.id, best.epoch), (3, 5));
        }
        // A tie keeps the first heard (replicas of one epoch report the same members).
        let twin = reply(2, 5, &[2, 3, 5]);
        assert_eq!(latest([&twin, &current]).expect("answers").id, 2);
        assert!(latest(std::iter::empty()).is_none(), "nobody answered");
    }

    fn cluster() -> Cluster {
        let text = r#"{"replicas": [
            {"id": 0, "addr": "127.0.0.1:1", "peer_addr": "127.0.0.1:7", "metrics_addr": "127.0.0.1:2"},
            {"id": 1, "addr": "127.0.0.1:3", "peer_addr": "127.0.0.1:8", "metrics_addr": "127.0.0.1:4"},
            {"id": 2, "addr": "127.0.0.1:5", "peer_addr": "127.0.0.1:9", "metrics_addr": "127.0.0.1:6"}]}"#;
        let config = epaxos_kv::server::config::Config::parse(text).expect("valid config");
        Cluster::new(&config, Duration::from_secs(1), true).expect("cluster")
    }

    #[tokio::test]
    async fn the_members_replace_the_configured_replicas_keeping_known_addresses() {
        let c = cluster();
        let members = reply(1, 2, &[3, 1, 0]).members;
        let m = c.with_members(&members).expect("members");
        let ids: Vec<u32> = (0..m.n()).map(|i| m.id(i)).collect();
        assert_eq!(ids, [0, 1, 3], "in id order");
        assert_eq!(
            m.addr(0).to_string(),
            "127.0.0.1:1",
            "config's address kept"
        );
        assert_eq!(
            m.addr(2).to_string(),
            "c3:1",
            "an added member at its recorded address"
        );
        assert!(m.check_replica(2).is_err(), "2 is no longer a member");
        assert_eq!(m.check_replica(3).expect("a member"), 2);
    }
}
