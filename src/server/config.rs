//! Cluster configuration (`config.json`): which replicas exist and where they listen.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;

use serde::Deserialize;

use crate::core::ids::ReplicaId;

pub use crate::core::limits::REPLICAS_MAX;

/// Why a configuration was refused. Each variant names the offending value.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    /// The file is not valid JSON or lacks a required field.
    #[error("invalid config file {path}: {source}")]
    Parse {
        path: String,
        source: serde_json::Error,
    },
    /// No replicas are listed.
    #[error("config lists no replicas")]
    Empty,
    /// More replicas than we support.
    #[error("config lists {0} replicas; at most {REPLICAS_MAX} are supported")]
    TooMany(usize),
    /// Two entries share an id.
    #[error("duplicate replica id {0}")]
    DuplicateId(u32),
    /// Two entries share an address.
    #[error("duplicate address {0} (replica {1})")]
    DuplicateAddr(String, u32),
    /// An address does not parse as ip:port.
    #[error("replica {id}: invalid {field} {value:?}: expected ip:port")]
    BadAddr {
        id: u32,
        field: &'static str,
        value: String,
    },
    /// Replica ids must be 0..N-1 so that they index rows.
    #[error("replica ids must be 0..{n} (each once); found id {id}")]
    IdOutOfRange { id: u32, n: usize },
    /// `--id` names no replica of the file.
    #[error("replica id {0} is not in the config")]
    UnknownId(u32),
}

/// One replica's entry in `config.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct ReplicaEntry {
    /// The replica's id: 0..N-1.
    pub id: u32,
    /// Where its gRPC server (clients and peers) listens.
    pub addr: String,
    /// Where its Prometheus `/metrics` endpoint listens.
    pub metrics_addr: String,
}

#[derive(Debug, Deserialize)]
struct RawConfig {
    replicas: Vec<ReplicaEntry>,
}

/// A validated cluster configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Replicas ordered by id; `replicas[i].id == i`.
    pub replicas: Vec<Replica>,
}

/// One validated replica entry.
#[derive(Debug, Clone)]
pub struct Replica {
    pub id: ReplicaId,
    pub addr: SocketAddr,
    pub metrics_addr: SocketAddr,
}

impl Config {
    /// Reads and validates a config file.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Config::parse(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.display().to_string(),
                source,
            },
            other => other,
        })
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let raw: RawConfig = serde_json::from_str(text).map_err(|source| ConfigError::Parse {
            path: "<text>".into(),
            source,
        })?;
        let n = raw.replicas.len();
        if n == 0 {
            return Err(ConfigError::Empty);
        }
        if n > REPLICAS_MAX {
            return Err(ConfigError::TooMany(n));
        }
        let mut ids = HashSet::new();
        let mut addrs = HashSet::new();
        let mut replicas = Vec::with_capacity(n);
        for e in &raw.replicas {
            if !ids.insert(e.id) {
                return Err(ConfigError::DuplicateId(e.id));
            }
            if e.id as usize >= n {
                return Err(ConfigError::IdOutOfRange { id: e.id, n });
            }
            let addr = parse_addr(e.id, "addr", &e.addr)?;
            let metrics_addr = parse_addr(e.id, "metrics_addr", &e.metrics_addr)?;
            for a in [addr, metrics_addr] {
                if !addrs.insert(a) {
                    return Err(ConfigError::DuplicateAddr(a.to_string(), e.id));
                }
            }
            replicas.push(Replica {
                id: ReplicaId(e.id),
                addr,
                metrics_addr,
            });
        }
        replicas.sort_by_key(|r| r.id);
        Ok(Config { replicas })
    }

    /// Number of replicas.
    pub fn n(&self) -> usize {
        self.replicas.len()
    }

    /// The entry of replica `id`, or an error naming it.
    pub fn replica(&self, id: u32) -> Result<&Replica, ConfigError> {
        self.replicas
            .get(id as usize)
            .ok_or(ConfigError::UnknownId(id))
    }
}

fn parse_addr(id: u32, field: &'static str, value: &str) -> Result<SocketAddr, ConfigError> {
    value.parse().map_err(|_| ConfigError::BadAddr {
        id,
        field,
        value: value.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(id: u32, port: u16) -> String {
        format!(
            r#"{{"id": {id}, "addr": "127.0.0.1:{port}", "metrics_addr": "127.0.0.1:{}"}}"#,
            port + 1000
        )
    }

    #[test]
    fn accepts_three_replicas_in_any_order() {
        let text = format!(
            r#"{{"replicas": [{}, {}, {}], "extra": true}}"#,
            entry(2, 7072),
            entry(0, 7070),
            entry(1, 7071)
        );
        let c = Config::parse(&text).expect("valid config");
        assert_eq!(c.n(), 3);
        assert_eq!(c.replicas[1].id, ReplicaId(1));
        assert_eq!(c.replicas[1].addr.port(), 7071);
    }

    #[test]
    fn rejects_bad_configs_with_named_problem() {
        let cases = [
            ("not json", "invalid config"),
            (r#"{"replicas": []}"#, "no replicas"),
            (
                r#"{"replicas": [{"id": 0, "addr": "127.0.0.1:1"}]}"#,
                "metrics_addr",
            ),
            (
                &format!(
                    r#"{{"replicas": [{}, {}]}}"#,
                    entry(0, 7070),
                    entry(0, 7071)
                ),
                "duplicate replica id 0",
            ),
            (
                &format!(
                    r#"{{"replicas": [{}, {}]}}"#,
                    entry(0, 7070),
                    entry(1, 7070)
                ),
                "duplicate address 127.0.0.1:7070",
            ),
            (
                &format!(
                    r#"{{"replicas": [{}, {}]}}"#,
                    entry(0, 7070),
                    entry(5, 7071)
                ),
                "found id 5",
            ),
            (
                r#"{"replicas": [{"id": 0, "addr": "nowhere", "metrics_addr": "127.0.0.1:1"}]}"#,
                "invalid addr \"nowhere\"",
            ),
        ];
        for (text, want) in cases {
            let err = Config::parse(text).expect_err(text).to_string();
            assert!(err.contains(want), "{text}: got {err:?}, want {want:?}");
        }
    }

    #[test]
    fn unknown_id_is_named() {
        let c = Config::parse(&format!(r#"{{"replicas": [{}]}}"#, entry(0, 7070))).unwrap();
        assert_eq!(
            c.replica(3).unwrap_err().to_string(),
            "replica id 3 is not in the config"
        );
    }
}
