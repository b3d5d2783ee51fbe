//! Cluster configuration (`config.json`): which replicas exist, where they listen, and where
//! the TLS certificates are.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

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
    /// An even number of replicas. Quorums are sized for N = 2F+1: with N even the slow
    /// quorum F+1 is not a majority (2 replicas: each alone decides and they diverge; 4: two
    /// slow quorums of 2 need not intersect), so agreement would not hold.
    #[error(
        "config lists {0} replicas; the number of replicas must be odd (1, 3, 5, 7, ...): \
         with an even number quorums need not intersect. Add or remove one replica"
    )]
    Even(usize),
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
    /// A replica entry lacks a field that has no default.
    #[error("replica {id}: missing field \"{field}\" ({hint})")]
    MissingField {
        id: u32,
        field: &'static str,
        hint: &'static str,
    },
    /// The `tls` section is invalid.
    #[error("tls: {0}")]
    Tls(String),
}

/// One replica's entry in `config.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct ReplicaEntry {
    /// The replica's id: 0..N-1.
    pub id: u32,
    /// Where its client listener (`Kv`: Propose, Status; health, reflection) listens.
    pub addr: String,
    /// Where its peer listener (`Peer`: Dispatch, Join, Snapshot) listens. Required: a config
    /// from before the split gets an error naming it.
    pub peer_addr: Option<String>,
    /// Where its Prometheus `/metrics` endpoint listens.
    pub metrics_addr: String,
}

/// The optional `tls` section. Unknown fields are refused: a misspelt `client_ca` must not
/// silently leave clients unauthenticated.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cluster_name: Option<String>,
    cert_dir: Option<String>,
    ca: Option<String>,
    client_ca: Option<String>,
}

#[derive(Debug, Deserialize)]
struct RawConfig {
    replicas: Vec<ReplicaEntry>,
    #[serde(default)]
    tls: RawTls,
}

/// A validated cluster configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Replicas ordered by id; `replicas[i].id == i`.
    pub replicas: Vec<Replica>,
    /// Where the certificates are (paths resolved against the config file's directory).
    pub tls: TlsSettings,
}

/// One validated replica entry.
#[derive(Debug, Clone)]
pub struct Replica {
    pub id: ReplicaId,
    /// The client listener.
    pub addr: SocketAddr,
    /// The peer listener.
    pub peer_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
}

/// Default `tls.cluster_name`: replica certificates name `replica-<id>.epaxos`.
pub const DEFAULT_CLUSTER_NAME: &str = "epaxos";
/// Default `tls.cert_dir`, relative to the config file's directory.
pub const DEFAULT_CERT_DIR: &str = "data/certs";

/// The `tls` section, validated, with paths resolved.
#[derive(Debug, Clone)]
pub struct TlsSettings {
    /// The cluster's name in certificate identities (`replica-<id>.<cluster_name>`).
    pub cluster_name: String,
    /// Where `replica-<id>.pem/.key` and `client.pem/.key` are.
    pub cert_dir: PathBuf,
    /// The cluster CA certificate (default `<cert_dir>/ca.pem`): signs every replica's
    /// certificate; clients check replicas against it.
    pub ca: PathBuf,
    /// When set, the client listener requires client certificates signed by this CA.
    pub client_ca: Option<PathBuf>,
}

impl TlsSettings {
    /// Replica `id`'s certificate (PEM).
    pub fn replica_cert(&self, id: u32) -> PathBuf {
        self.cert_dir.join(format!("replica-{id}.pem"))
    }
    /// Replica `id`'s private key (PEM, PKCS#8).
    pub fn replica_key(&self, id: u32) -> PathBuf {
        self.cert_dir.join(format!("replica-{id}.key"))
    }
    /// The client certificate the bundled client presents, when present.
    pub fn client_cert(&self) -> PathBuf {
        self.cert_dir.join("client.pem")
    }
    /// Its key.
    pub fn client_key(&self) -> PathBuf {
        self.cert_dir.join("client.key")
    }

    fn parse(raw: RawTls, base: &Path) -> Result<TlsSettings, ConfigError> {
        let cluster_name = raw
            .cluster_name
            .unwrap_or_else(|| DEFAULT_CLUSTER_NAME.to_string());
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if cluster_name.len() > 200 || !cluster_name.split('.').all(label_ok) {
            return Err(ConfigError::Tls(format!(
                "cluster_name {cluster_name:?} must be a DNS name (lowercase letters, digits, \
                 '-', dot-separated labels): certificates name replicas \
                 replica-<id>.<cluster_name>"
            )));
        }
        let resolve = |p: &str| -> Result<PathBuf, ConfigError> {
            if p.is_empty() {
                return Err(ConfigError::Tls("an empty path".into()));
            }
            Ok(base.join(p))
        };
        let cert_dir = resolve(raw.cert_dir.as_deref().unwrap_or(DEFAULT_CERT_DIR))?;
        let ca = match raw.ca {
            Some(p) => resolve(&p)?,
            None => cert_dir.join("ca.pem"),
        };
        let client_ca = raw.client_ca.as_deref().map(resolve).transpose()?;
        Ok(TlsSettings {
            cluster_name,
            cert_dir,
            ca,
            client_ca,
        })
    }
}

impl Config {
    /// Reads and validates a config file. Relative paths in it (the `tls` section) are taken
    /// from the file's directory.
    pub fn load(path: impl AsRef<Path>) -> Result<Config, ConfigError> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let base = match path.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        Config::parse_in(&text, base).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.display().to_string(),
                source,
            },
            other => other,
        })
    }

    /// Parses and validates config text; relative paths are taken from the current directory.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse_in(text, Path::new("."))
    }

    /// Parses and validates config text; relative paths are taken from `base`.
    pub fn parse_in(text: &str, base: &Path) -> Result<Config, ConfigError> {
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
            let Some(peer_addr) = &e.peer_addr else {
                return Err(ConfigError::MissingField {
                    id: e.id,
                    field: "peer_addr",
                    hint: "the address its peer listener binds and other replicas dial, apart \
                           from the client address \"addr\"; e.g. \"peer_addr\": \
                           \"127.0.0.1:7170\"",
                });
            };
            let peer_addr = parse_addr(e.id, "peer_addr", peer_addr)?;
            let metrics_addr = parse_addr(e.id, "metrics_addr", &e.metrics_addr)?;
            for a in [addr, peer_addr, metrics_addr] {
                if !addrs.insert(a) {
                    return Err(ConfigError::DuplicateAddr(a.to_string(), e.id));
                }
            }
            replicas.push(Replica {
                id: ReplicaId(e.id),
                addr,
                peer_addr,
                metrics_addr,
            });
        }
        // After the per-entry checks, so that a malformed entry is named first.
        if n.is_multiple_of(2) {
            return Err(ConfigError::Even(n));
        }
        replicas.sort_by_key(|r| r.id);
        let tls = TlsSettings::parse(raw.tls, base)?;
        Ok(Config { replicas, tls })
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
            r#"{{"id": {id}, "addr": "127.0.0.1:{port}", "peer_addr": "127.0.0.1:{}", "metrics_addr": "127.0.0.1:{}"}}"#,
            port + 100,
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
                r#"{"replicas": [{"id": 0, "addr": "127.0.0.1:1", "peer_addr": "127.0.0.1:3"}]}"#,
                "metrics_addr",
            ),
            (
                r#"{"replicas": [{"id": 0, "addr": "127.0.0.1:1", "metrics_addr": "127.0.0.1:2"}]}"#,
                "replica 0: missing field \"peer_addr\"",
            ),
            (
                r#"{"replicas": [{"id": 0, "addr": "127.0.0.1:1", "peer_addr": "127.0.0.1:1", "metrics_addr": "127.0.0.1:2"}]}"#,
                "duplicate address 127.0.0.1:1",
            ),
            (
                &format!(
                    r#"{{"replicas": [{}], "tls": {{"client-ca": "x"}}}}"#,
                    entry(0, 7070)
                ),
                "unknown field `client-ca`",
            ),
            (
                &format!(
                    r#"{{"replicas": [{}], "tls": {{"cluster_name": "Bad Name"}}}}"#,
                    entry(0, 7070)
                ),
                "cluster_name \"Bad Name\" must be a DNS name",
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
    fn tls_paths_default_under_the_config_directory() {
        let text = format!(r#"{{"replicas": [{}]}}"#, entry(0, 7070));
        let c = Config::parse_in(&text, Path::new("/etc/kv")).expect("valid");
        assert_eq!(c.tls.cluster_name, "epaxos");
        assert_eq!(c.tls.ca, Path::new("/etc/kv/data/certs/ca.pem"));
        assert_eq!(
            c.tls.replica_key(0),
            Path::new("/etc/kv/data/certs/replica-0.key")
        );
        assert!(c.tls.client_ca.is_none());
        let text = format!(
            r#"{{"replicas": [{}], "tls": {{"cluster_name": "prod.kv", "cert_dir": "/pki", "ca": "root.pem", "client_ca": "/pki/clients.pem"}}}}"#,
            entry(0, 7070)
        );
        let c = Config::parse_in(&text, Path::new("/etc/kv")).expect("valid");
        assert_eq!(c.tls.cluster_name, "prod.kv");
        assert_eq!(c.tls.replica_cert(0), Path::new("/pki/replica-0.pem"));
        assert_eq!(c.tls.ca, Path::new("/etc/kv/root.pem"));
        assert_eq!(
            c.tls.client_ca.as_deref(),
            Some(Path::new("/pki/clients.pem"))
        );
    }

    #[test]
    fn even_cluster_sizes_are_refused() {
        for n in [2u32, 4] {
            let entries: Vec<String> = (0..n).map(|i| entry(i, 7070 + i as u16)).collect();
            let text = format!(r#"{{"replicas": [{}]}}"#, entries.join(", "));
            let err = Config::parse(&text).expect_err("even size").to_string();
            assert!(
                err.contains(&format!("lists {n} replicas")) && err.contains("must be odd"),
                "N={n}: got {err:?}"
            );
        }
        for n in [1u32, 3, 5] {
            let entries: Vec<String> = (0..n).map(|i| entry(i, 7070 + i as u16)).collect();
            let text = format!(r#"{{"replicas": [{}]}}"#, entries.join(", "));
            assert_eq!(Config::parse(&text).expect("odd size").n(), n as usize);
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
