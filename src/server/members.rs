//! The configuration the shell acts in: an epoch and its members with their addresses (what
//! `Status`, `client member list` and the `epaxos_epoch` / `epaxos_members` gauges show, and
//! whom the peer links dial).
//!
//! Epoch 0 is config.json's replicas. A later epoch is decided by the cluster (issue 15) and
//! kept in the metadata record with its members' addresses: at start a data directory's epoch
//! wins over config.json, and the difference is logged once with both ([`Members::at_start`]).

use std::fmt;

use crate::core::epoch::{Configuration, Epoch};
use crate::core::ids::ReplicaId;
use crate::core::limits::MEMBERS_EVER_MAX;
use crate::proto;
use crate::server::config::{Config, HostPort};

/// One member: its id and where peers and clients reach it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: ReplicaId,
    pub peer_addr: HostPort,
    pub client_addr: HostPort,
}

/// An epoch and its members, sorted by id, ids distinct, never empty.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Members {
    epoch: u64,
    members: Vec<Member>,
}

/// Why a list of members is not a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MembersError {
    #[error("epoch {0} has no members")]
    Empty(u64),
    #[error("epoch {epoch} lists replica {id} twice")]
    Duplicate { epoch: u64, id: u32 },
    #[error("epoch {epoch} lists replica {id}; ids go up to {}", MEMBERS_EVER_MAX - 1)]
    TooHigh { epoch: u64, id: u32 },
    #[error("member {id}: invalid {field} {value:?}: {why}")]
    Address {
        id: u32,
        field: &'static str,
        value: String,
        why: String,
    },
}

impl Members {
    /// `members` (any order) as the configuration of `epoch`.
    pub fn new(epoch: u64, mut members: Vec<Member>) -> Result<Members, MembersError> {
        if members.is_empty() {
            return Err(MembersError::Empty(epoch));
        }
        members.sort_by_key(|m| m.id);
        if let Some(m) = members.iter().find(|m| m.id.index() >= MEMBERS_EVER_MAX) {
            return Err(MembersError::TooHigh { epoch, id: m.id.0 });
        }
        if let Some(w) = members.windows(2).find(|w| w[0].id == w[1].id) {
            return Err(MembersError::Duplicate {
                epoch,
                id: w[0].id.0,
            });
        }
        Ok(Members { epoch, members })
    }

    /// Epoch 0: config.json's replicas.
    pub fn seed(config: &Config) -> Members {
        Members::new(
            0,
            config
                .replicas
                .iter()
                .map(|r| Member {
                    id: r.id,
                    peer_addr: r.peer_addr.clone(),
                    client_addr: r.addr.clone(),
                })
                .collect(),
        )
        .expect("a validated config has replicas with distinct ids")
    }

    /// What the replica acts in at start: the data directory's recorded configuration when it
    /// has one past epoch 0 (the cluster decided it; config.json only seeds epoch 0), else
    /// config.json's. Also returns a description of both when they differ, to log once.
    pub fn at_start(config: &Config, recorded: Option<Members>) -> (Members, Option<String>) {
        let seeded = Members::seed(config);
        match recorded {
            Some(r) if r.epoch > 0 => {
                let differs = (r.members != seeded.members)
                    .then(|| format!("data directory: {r}; config.json: {seeded}"));
                (r, differs)
            }
            _ => (seeded, None),
        }
    }

    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    pub fn members(&self) -> &[Member] {
        &self.members
    }

    pub fn get(&self, id: ReplicaId) -> Option<&Member> {
        self.members.iter().find(|m| m.id == id)
    }

    pub fn is_member(&self, id: ReplicaId) -> bool {
        self.get(id).is_some()
    }

    /// The same configuration as the core knows it: ids only.
    pub fn configuration(&self) -> Configuration {
        Configuration::new(
            Epoch(self.epoch),
            self.members.iter().map(|m| m.id).collect(),
        )
        .expect("members are distinct, non-empty and below MEMBERS_EVER_MAX (Members::new)")
    }

    /// The members as the client contract shows them.
    pub fn to_proto(&self) -> Vec<proto::Member> {
        self.members
            .iter()
            .map(|m| proto::Member {
                id: m.id.0,
                peer_addr: m.peer_addr.to_string(),
                client_addr: m.client_addr.to_string(),
            })
            .collect()
    }

    /// A member from the client contract or the metadata record, its addresses checked.
    pub fn member_from_parts(
        id: u32,
        peer_addr: &str,
        client_addr: &str,
    ) -> Result<Member, MembersError> {
        let parse = |field: &'static str, value: &str| {
            HostPort::parse(value).map_err(|why| MembersError::Address {
                id,
                field,
                value: value.to_string(),
                why,
            })
        };
        Ok(Member {
            id: ReplicaId(id),
            peer_addr: parse("peer_addr", peer_addr)?,
            client_addr: parse("client_addr", client_addr)?,
        })
    }
}

/// `epoch 3: 0 (peer 10.0.0.1:7170, client 10.0.0.1:7070), 1 (...)`: what an error naming the
/// current members says.
impl fmt::Display for Members {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "epoch {}:", self.epoch)?;
        for (i, m) in self.members.iter().enumerate() {
            let sep = if i == 0 { " " } else { ", " };
            write!(
                f,
                "{sep}{} (peer {}, client {})",
                m.id.0, m.peer_addr, m.client_addr
            )?;
        }
        Ok(())
    }
}

/// A config.json of three local replicas (replica i at client port 7070 + i, peer port
/// 7170 + i, metrics port 9070 + i), for the tests here and in `added`.
#[cfg(test)]
pub(crate) fn three_local_replicas() -> Config {
    Config::parse(
        r#"{"replicas": [
          {"id": 0, "addr": "127.0.0.1:7070", "peer_addr": "127.0.0.1:7170", "metrics_addr": "127.0.0.1:9070"},
          {"id": 1, "addr": "127.0.0.1:7071", "peer_addr": "127.0.0.1:7171", "metrics_addr": "127.0.0.1:9071"},
          {"id": 2, "addr": "127.0.0.1:7072", "peer_addr": "127.0.0.1:7172", "metrics_addr": "127.0.0.1:9072"}
        ]}"#,
    )
    .expect("valid config")
}

#[cfg(test)]
mod tests {
    use super::three_local_replicas as config;
    use super::*;

    fn member(id: u32) -> Member {
        Members::member_from_parts(
            id,
            &format!("127.0.0.1:{}", 7170 + id),
            &format!("127.0.0.1:{}", 7070 + id),
        )
        .expect("valid addresses")
    }

    #[test]
    fn epoch_zero_is_the_config() {
        let m = Members::seed(&config());
        assert_eq!(m.epoch(), 0);
        assert_eq!(m.members(), &[member(0), member(1), member(2)]);
        assert_eq!(m.to_proto()[1].client_addr, "127.0.0.1:7071");
        assert_eq!(
            m.to_string(),
            "epoch 0: 0 (peer 127.0.0.1:7170, client 127.0.0.1:7070), 1 (peer \
             127.0.0.1:7171, client 127.0.0.1:7071), 2 (peer 127.0.0.1:7172, client \
             127.0.0.1:7072)"
        );
    }

    #[test]
    fn a_recorded_later_epoch_wins_over_the_config_and_the_difference_is_told() {
        let recorded = Members::new(2, vec![member(3), member(0), member(1)]).expect("valid");
        let (m, differs) = Members::at_start(&config(), Some(recorded.clone()));
        assert_eq!(m, recorded);
        assert_eq!(m.members()[2].id, ReplicaId(3), "sorted by id");
        let said = differs.expect("told");
        assert!(said.contains("data directory: epoch 2") && said.contains("config.json: epoch 0"));
        // Epoch 0 recorded (every data directory before a change): the config rules.
        let zero = Members::new(0, vec![member(0)]).expect("valid");
        let (m, differs) = Members::at_start(&config(), Some(zero));
        assert_eq!(m, Members::seed(&config()));
        assert!(differs.is_none());
        // The same members in a later epoch: nothing to tell.
        let same = Members::new(1, vec![member(0), member(1), member(2)]).expect("valid");
        assert!(Members::at_start(&config(), Some(same)).1.is_none());
    }

    #[test]
    fn nonsense_is_refused() {
        assert_eq!(Members::new(1, vec![]), Err(MembersError::Empty(1)));
        assert_eq!(
            Members::new(1, vec![member(1), member(1)]),
            Err(MembersError::Duplicate { epoch: 1, id: 1 })
        );
        let bad = Members::member_from_parts(4, "db4", "127.0.0.1:7074");
        assert!(
            matches!(
                bad,
                Err(MembersError::Address {
                    field: "peer_addr",
                    ..
                })
            ),
            "{bad:?}"
        );
    }
}
