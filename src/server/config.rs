//! Cluster configuration (`config.json`): which replicas exist, where they are reached
//! (advertised addresses: host names or IP literals, resolved when dialed), where they listen
//! (by default where they are reached), and where the TLS certificates are.

use std::collections::HashSet;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
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
    /// An address does not parse as host:port (a host name or an IP literal, IPv6 in
    /// brackets), or is one that cannot be dialed.
    #[error(
        "replica {id}: invalid {field} {value:?}: {why} (expected host:port, e.g. \
         \"10.0.0.1:7070\", \"db1.example:7070\" or \"[2001:db8::1]:7070\")"
    )]
    BadAddr {
        id: u32,
        field: &'static str,
        value: String,
        why: String,
    },
    /// Two listeners of one replica would bind the same port.
    #[error(
        "replica {id}: listen.{a} {addr_a} and listen.{b} {addr_b} would bind the same port; \
         each listener needs its own"
    )]
    ListenClash {
        id: u32,
        a: &'static str,
        addr_a: String,
        b: &'static str,
        addr_b: String,
    },
    /// The `listen` object of a replica entry is not an object of addresses.
    #[error("replica {id}: invalid \"listen\": {why}")]
    BadListen { id: u32, why: String },
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
    /// Where clients reach its client listener (`Kv`: Propose, Status; health, reflection).
    pub addr: String,
    /// Where peers reach its peer listener (`Peer`: Dispatch, Join, Snapshot). Required: a
    /// config from before the split gets an error naming it.
    pub peer_addr: Option<String>,
    /// Where its Prometheus `/metrics` endpoint is reached.
    pub metrics_addr: String,
    /// Where it binds, when that differs from where it is reached (`0.0.0.0:7070`, an address
    /// behind NAT or in a container). Kept raw here so that its errors name the replica.
    #[serde(default)]
    pub listen: Option<serde_json::Value>,
}

/// The `listen` object: each member optional, unknown members refused (a misspelt
/// `peer-addr` must not silently bind the advertised address instead).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawListen {
    addr: Option<String>,
    peer_addr: Option<String>,
    metrics_addr: Option<String>,
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
    /// Where clients reach the client listener (advertised).
    pub addr: HostPort,
    /// Where peers reach the peer listener (advertised).
    pub peer_addr: HostPort,
    /// Where Prometheus reaches `/metrics` (advertised).
    pub metrics_addr: HostPort,
    /// Where the replica binds its listeners.
    pub listen: Listen,
}

/// Where a replica binds its three listeners. Each defaults to the advertised address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listen {
    pub addr: HostPort,
    pub peer_addr: HostPort,
    pub metrics_addr: HostPort,
}

/// A `host:port` of the configuration: an IP literal, or a DNS name that is resolved each
/// time it is used (when binding at start, and on every dial), so that a machine that comes
/// back with another address is found again.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HostPort {
    host: Host,
    port: u16,
}

/// The host part of a [`HostPort`].
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Host {
    Ip(IpAddr),
    /// A DNS name, lowercase (names are case-insensitive; certificates carry them lowercase).
    Name(String),
}

impl HostPort {
    /// Parses `host:port`: `10.0.0.1:7070`, `[2001:db8::1]:7070`, `db1.example:7070`.
    pub fn parse(text: &str) -> Result<HostPort, String> {
        if let Ok(sa) = text.parse::<SocketAddr>() {
            if sa.port() == 0 {
                return Err("port 0 is not a port one can reach".into());
            }
            return Ok(HostPort {
                host: Host::Ip(sa.ip()),
                port: sa.port(),
            });
        }
        let Some((host, port)) = text.rsplit_once(':') else {
            return Err("no port".into());
        };
        if host.starts_with('[') || host.contains(':') {
            return Err("an IPv6 address goes in brackets, [addr]:port".into());
        }
        let port: u16 = match port.parse() {
            Ok(0) | Err(_) => return Err(format!("port {port:?} is not 1..65535")),
            Ok(p) => p,
        };
        if host.is_empty() {
            return Err("no host".into());
        }
        if host.bytes().all(|b| b.is_ascii_digit() || b == b'.') {
            return Err(format!("{host:?} is not an IPv4 address"));
        }
        let host = host.strip_suffix('.').unwrap_or(host);
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                && !l.starts_with('-')
                && !l.ends_with('-')
        };
        if host.len() > 253 || !host.split('.').all(label_ok) {
            return Err(format!(
                "{host:?} is not a host name (letters, digits and '-' in dot-separated labels \
                 of at most 63)"
            ));
        }
        Ok(HostPort {
            host: Host::Name(host.to_ascii_lowercase()),
            port,
        })
    }

    pub fn host(&self) -> &Host {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The socket address when the host is an IP literal (no resolution needed).
    pub fn socket_addr(&self) -> Option<SocketAddr> {
        match &self.host {
            Host::Ip(ip) => Some(SocketAddr::new(*ip, self.port)),
            Host::Name(_) => None,
        }
    }

    /// Whether the host is 0.0.0.0 or `::` (binds every interface, reaches none).
    pub fn is_wildcard(&self) -> bool {
        matches!(self.host, Host::Ip(ip) if ip.is_unspecified())
    }
}

impl fmt::Display for HostPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.host {
            Host::Ip(ip) => write!(f, "{}", SocketAddr::new(*ip, self.port)),
            Host::Name(name) => write!(f, "{name}:{}", self.port),
        }
    }
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

    /// The settings of a config without a `tls` section, paths taken from the current
    /// directory.
    pub fn defaults() -> TlsSettings {
        TlsSettings::parse(RawTls::default(), Path::new("."))
            .expect("the default cluster name and paths are valid")
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
            let addr = parse_dialable(e.id, "addr", &e.addr)?;
            let Some(peer_addr) = &e.peer_addr else {
                return Err(ConfigError::MissingField {
                    id: e.id,
                    field: "peer_addr",
                    hint: "the address its peer listener binds and other replicas dial, apart \
                           from the client address \"addr\"; e.g. \"peer_addr\": \
                           \"127.0.0.1:7170\"",
                });
            };
            let peer_addr = parse_dialable(e.id, "peer_addr", peer_addr)?;
            // Only scraped, never dialed by the cluster: a wildcard here (listen everywhere)
            // is what configs did before `listen` existed, and keeps working.
            let metrics_addr = parse_addr(e.id, "metrics_addr", &e.metrics_addr)?;
            for a in [&addr, &peer_addr, &metrics_addr] {
                if !addrs.insert(a.clone()) {
                    return Err(ConfigError::DuplicateAddr(a.to_string(), e.id));
                }
            }
            let listen = parse_listen(e, &addr, &peer_addr, &metrics_addr)?;
            replicas.push(Replica {
                id: ReplicaId(e.id),
                addr,
                peer_addr,
                metrics_addr,
                listen,
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

    /// A client's view of a cluster whose replicas it names itself (`client --endpoints`):
    /// replica i's client listener at `addrs[i]`, with `tls` (a config file's, or
    /// [`TlsSettings::defaults`]). The peer and metrics addresses, which a client never dials,
    /// are the client address.
    pub fn for_client(addrs: Vec<HostPort>, tls: TlsSettings) -> Config {
        let replicas = addrs
            .into_iter()
            .enumerate()
            .map(|(i, addr)| Replica {
                id: ReplicaId(i as u32),
                peer_addr: addr.clone(),
                metrics_addr: addr.clone(),
                listen: Listen {
                    addr: addr.clone(),
                    peer_addr: addr.clone(),
                    metrics_addr: addr.clone(),
                },
                addr,
            })
            .collect();
        Config { replicas, tls }
    }

    /// The entry of replica `id`, or an error naming it.
    pub fn replica(&self, id: u32) -> Result<&Replica, ConfigError> {
        self.replicas
            .get(id as usize)
            .ok_or(ConfigError::UnknownId(id))
    }
}

fn parse_addr(id: u32, field: &'static str, value: &str) -> Result<HostPort, ConfigError> {
    HostPort::parse(value).map_err(|why| ConfigError::BadAddr {
        id,
        field,
        value: value.to_string(),
        why,
    })
}

/// An address others dial: not a wildcard.
fn parse_dialable(id: u32, field: &'static str, value: &str) -> Result<HostPort, ConfigError> {
    let a = parse_addr(id, field, value)?;
    if a.is_wildcard() {
        return Err(ConfigError::BadAddr {
            id,
            field,
            value: value.to_string(),
            why: format!(
                "a wildcard address binds every interface but reaches none: advertise the \
                 address others dial here, and bind the wildcard with \"listen\": \
                 {{\"{field}\": \"{value}\"}}"
            ),
        });
    }
    Ok(a)
}

/// The `listen` object of `e`, each member defaulting to the advertised address.
fn parse_listen(
    e: &ReplicaEntry,
    addr: &HostPort,
    peer_addr: &HostPort,
    metrics_addr: &HostPort,
) -> Result<Listen, ConfigError> {
    let raw: RawListen = match &e.listen {
        None => RawListen::default(),
        Some(v) => RawListen::deserialize(v).map_err(|err| ConfigError::BadListen {
            id: e.id,
            why: format!(
                "{err}; expected an object like {{\"addr\": \"0.0.0.0:7070\", \
                 \"peer_addr\": \"0.0.0.0:7170\", \"metrics_addr\": \"0.0.0.0:9070\"}}, \
                 each member optional"
            ),
        })?,
    };
    let one = |field: &'static str, value: &Option<String>, default: &HostPort| match value {
        None => Ok(default.clone()),
        Some(v) => parse_addr(e.id, field, v),
    };
    let listen = Listen {
        addr: one("listen.addr", &raw.addr, addr)?,
        peer_addr: one("listen.peer_addr", &raw.peer_addr, peer_addr)?,
        metrics_addr: one("listen.metrics_addr", &raw.metrics_addr, metrics_addr)?,
    };
    let named = [
        ("addr", &listen.addr),
        ("peer_addr", &listen.peer_addr),
        ("metrics_addr", &listen.metrics_addr),
    ];
    for (i, (a, x)) in named.iter().enumerate() {
        for (b, y) in &named[i + 1..] {
            let overlap = x.host == y.host || x.is_wildcard() || y.is_wildcard();
            if x.port == y.port && overlap {
                return Err(ConfigError::ListenClash {
                    id: e.id,
                    a,
                    addr_a: x.to_string(),
                    b,
                    addr_b: y.to_string(),
                });
            }
        }
    }
    Ok(listen)
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

    fn with(id: u32, extra: &str) -> String {
        format!(
            r#"{{"replicas": [{{"id": {id}, "addr": "db0.example:7070", "peer_addr": "db0.example:7170", "metrics_addr": "db0.example:9070"{extra}}}]}}"#
        )
    }

    #[test]
    fn host_names_and_ip_literals_are_accepted() {
        let text = r#"{"replicas": [
            {"id": 0, "addr": "DB0.Example.:7070", "peer_addr": "10.0.0.1:7170", "metrics_addr": "0.0.0.0:9070"},
            {"id": 1, "addr": "[2001:db8::1]:7070", "peer_addr": "db1:7170", "metrics_addr": "db1:9070"},
            {"id": 2, "addr": "127.0.0.1:7072", "peer_addr": "127.0.0.1:7172", "metrics_addr": "127.0.0.1:9072"}]}"#;
        let c = Config::parse(text).expect("valid");
        let r0 = &c.replicas[0];
        assert_eq!(r0.addr.host(), &Host::Name("db0.example".into()));
        assert_eq!(r0.addr.to_string(), "db0.example:7070");
        assert_eq!(r0.addr.socket_addr(), None);
        assert_eq!(
            r0.peer_addr.socket_addr(),
            Some("10.0.0.1:7170".parse().expect("addr"))
        );
        assert!(r0.metrics_addr.is_wildcard());
        assert_eq!(c.replicas[1].addr.to_string(), "[2001:db8::1]:7070");
        // No listen object: every listener binds where it is advertised (today's configs).
        assert_eq!(r0.listen.addr, r0.addr);
        assert_eq!(r0.listen.peer_addr, r0.peer_addr);
        assert_eq!(r0.listen.metrics_addr, r0.metrics_addr);
    }

    #[test]
    fn listen_addresses_default_member_by_member() {
        let c = Config::parse(&with(
            0,
            r#", "listen": {"addr": "0.0.0.0:7070", "peer_addr": "[::]:7170"}"#,
        ))
        .expect("valid");
        let r = &c.replicas[0];
        assert_eq!(r.listen.addr.to_string(), "0.0.0.0:7070");
        assert_eq!(r.listen.peer_addr.to_string(), "[::]:7170");
        assert_eq!(r.listen.metrics_addr, r.metrics_addr);
        assert_eq!(r.addr.to_string(), "db0.example:7070");
    }

    /// Each malformed address or listen entry is refused with a message naming the replica,
    /// the field, the value and what is wrong with it.
    #[test]
    fn malformed_addresses_are_named() {
        let addr = |a: &str| {
            format!(
                r#"{{"replicas": [{{"id": 0, "addr": "{a}", "peer_addr": "h:2", "metrics_addr": "h:3"}}]}}"#
            )
        };
        let cases = [
            (addr("db1.example"), "invalid addr \"db1.example\": no port"),
            (addr("db1:"), "port \"\" is not 1..65535"),
            (addr("db1:70000"), "port \"70000\" is not 1..65535"),
            (addr("db1:0"), "port \"0\" is not 1..65535"),
            (addr("10.0.0.1:0"), "port 0 is not a port one can reach"),
            (addr(":7070"), "no host"),
            (addr("::1:7070"), "an IPv6 address goes in brackets"),
            (addr("[::1:7070"), "an IPv6 address goes in brackets"),
            (addr("300.1.2.3:7070"), "\"300.1.2.3\" is not an IPv4 address"),
            (addr("db_1:7070"), "\"db_1\" is not a host name"),
            (addr("-db:7070"), "\"-db\" is not a host name"),
            (addr("a..b:7070"), "\"a..b\" is not a host name"),
            (addr("0.0.0.0:7070"), "a wildcard address binds every interface"),
            (
                r#"{"replicas": [{"id": 0, "addr": "h:1", "peer_addr": "[::]:2", "metrics_addr": "h:3"}]}"#
                    .to_string(),
                "invalid peer_addr \"[::]:2\": a wildcard",
            ),
            (
                with(0, r#", "listen": "0.0.0.0""#),
                "replica 0: invalid \"listen\": invalid type: string",
            ),
            (
                with(0, r#", "listen": {"peer-addr": "0.0.0.0:7170"}"#),
                "replica 0: invalid \"listen\": unknown field `peer-addr`",
            ),
            (
                with(0, r#", "listen": {"addr": "0.0.0.0"}"#),
                "replica 0: invalid listen.addr \"0.0.0.0\": no port",
            ),
            (
                with(0, r#", "listen": {"addr": "0.0.0.0:7170"}"#),
                "listen.addr 0.0.0.0:7170 and listen.peer_addr db0.example:7170 would bind the same port",
            ),
            (
                with(
                    0,
                    r#", "listen": {"addr": "10.0.0.1:9000", "metrics_addr": "10.0.0.1:9000"}"#,
                ),
                "listen.addr 10.0.0.1:9000 and listen.metrics_addr 10.0.0.1:9000",
            ),
            (
                r#"{"replicas": [{"id": 0, "addr": "db:1", "peer_addr": "DB:1", "metrics_addr": "h:3"}]}"#
                    .to_string(),
                "duplicate address db:1",
            ),
        ];
        for (text, want) in cases {
            let err = Config::parse(&text).expect_err(&text).to_string();
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
