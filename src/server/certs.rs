//! `replica certs`: a local certificate authority and the certificates a cluster needs, created
//! once. Existing files are never overwritten, so running it again (as `./run.sh start` does on
//! every start) only fills in what is missing, for example a replica added to config.json.
//!
//! Files, in the configuration's `tls.cert_dir` (default `data/certs`, directory 0700, keys 0600):
//! - `ca.pem`, `ca.key`: the cluster CA (unless `tls.ca` points elsewhere: then only the
//!   certificates are made, signed by that CA if its key sits beside it as `ca.key`);
//! - `replica-<id>.pem`, `replica-<id>.key`: replica `id`, for serving and dialing (server and
//!   client usage), with DNS name `replica-<id>.<cluster_name>` (its identity) and the host
//!   names and IP addresses its `addr` and `peer_addr` advertise (so that generic tools that
//!   check the name they dialed accept it too);
//! - `client.pem`, `client.key`: a client certificate (DNS name `client.<cluster_name>`, client
//!   usage only): accepted on the client listener, refused on the peer listener.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use crate::server::config::{Config, Host, Replica};
use crate::server::tls::{client_name, replica_name};

/// Validity of the generated CA.
pub const CA_DAYS: i64 = 3650;
/// Validity of the generated replica and client certificates.
pub const LEAF_DAYS: i64 = 825;

#[derive(Debug, thiserror::Error)]
pub enum CertsError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{0}")]
    Incomplete(String),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CertsError + '_ {
    move |source| CertsError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Creates whatever certificate files are missing; returns the files it created.
pub fn ensure(config: &Config) -> Result<Vec<PathBuf>, CertsError> {
    let tls = &config.tls;
    let dir = &tls.cert_dir;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io(dir))?;
    let mut created = Vec::new();
    let ca_key_path = tls.ca.with_file_name("ca.key");
    // Both halves or neither: half a pair is a mistake to report, not to paper over.
    let pair = |cert: &Path, key: &Path| -> Result<bool, CertsError> {
        match (cert.exists(), key.exists()) {
            (true, true) => Ok(true),
            (false, false) => Ok(false),
            (c, _) => Err(CertsError::Incomplete(format!(
                "{} exists but {} does not: remove it or supply the other half",
                if c { cert.display() } else { key.display() },
                if c { key.display() } else { cert.display() }
            ))),
        }
    };
    let now = time::OffsetDateTime::now_utc();
    let ca_exists = tls.ca.exists();
    let (ca_params, ca_key) = if ca_exists {
        (None, None)
    } else {
        pair(&tls.ca, &ca_key_path)?;
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{} CA", tls.cluster_name));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(CA_DAYS);
        let cert = params.self_signed(&key)?;
        write_new(&ca_key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_new(&tls.ca, cert.pem().as_bytes(), 0o644)?;
        created.push(tls.ca.clone());
        created.push(ca_key_path.clone());
        (Some(params), Some(key))
    };
    // What each leaf needs: (cert, key, SANs, server usage too?).
    let mut wanted: Vec<(PathBuf, PathBuf, Vec<SanType>, bool)> = Vec::new();
    for r in &config.replicas {
        let sans = replica_sans(&tls.cluster_name, r)?;
        wanted.push((
            tls.replica_cert(r.id.0),
            tls.replica_key(r.id.0),
            sans,
            true,
        ));
    }
    wanted.push((
        tls.client_cert(),
        tls.client_key(),
        vec![SanType::DnsName(client_name(&tls.cluster_name).try_into()?)],
        false,
    ));
    let mut missing = Vec::new();
    for w in wanted {
        if !pair(&w.0, &w.1)? {
            missing.push(w);
        }
    }
    if missing.is_empty() {
        return Ok(created);
    }
    let issuer = match (ca_params, ca_key) {
        (Some(params), Some(key)) => Issuer::new(params, key),
        _ => {
            let key_pem = std::fs::read_to_string(&ca_key_path).map_err(|e| {
                CertsError::Incomplete(format!(
                    "cannot create {}: the CA key {} is not readable ({e}); with your own CA, \
                     put each replica's certificate and key in {} yourself",
                    missing[0].0.display(),
                    ca_key_path.display(),
                    dir.display()
                ))
            })?;
            let ca_pem = std::fs::read_to_string(&tls.ca).map_err(io(&tls.ca))?;
            Issuer::from_ca_cert_pem(&ca_pem, KeyPair::from_pem(&key_pem)?)?
        }
    };
    for (cert_path, key_path, sans, server) in missing {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        if let Some(SanType::DnsName(name)) = sans.first() {
            params
                .distinguished_name
                .push(DnType::CommonName, name.as_str());
        }
        params.subject_alt_names = sans;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = if server {
            vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ]
        } else {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        };
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(LEAF_DAYS);
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &issuer)?;
        write_new(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_new(&cert_path, cert.pem().as_bytes(), 0o644)?;
        created.push(cert_path);
        created.push(key_path);
    }
    Ok(created)
}

/// The subject alternative names of replica `r`'s certificate: its identity first (the
/// dialers check that one), then each distinct host its `addr` and `peer_addr` advertise.
pub fn replica_sans(cluster_name: &str, r: &Replica) -> Result<Vec<SanType>, CertsError> {
    let mut sans = vec![SanType::DnsName(
        replica_name(cluster_name, r.id.0).try_into()?,
    )];
    for addr in [&r.addr, &r.peer_addr] {
        let san = match addr.host() {
            Host::Ip(ip) => SanType::IpAddress(*ip),
            Host::Name(name) => SanType::DnsName(name.as_str().try_into()?),
        };
        if !sans.contains(&san) {
            sans.push(san);
        }
    }
    Ok(sans)
}

/// Writes a file that must not exist yet, with `mode`, and syncs it.
fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CertsError> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))?;
    f.sync_all().map_err(io(path))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::server::tls::named_replicas;

    fn der(path: &Path) -> Vec<u8> {
        let pem = std::fs::read(path).expect("read certificate");
        let (_, item) = x509_parser::pem::parse_x509_pem(&pem).expect("PEM");
        item.contents
    }

    #[test]
    fn creates_what_is_missing_once_with_private_keys_and_replica_names() {
        use std::os::unix::fs::PermissionsExt;
        let base = std::env::temp_dir().join(format!("epaxos-certs-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&base).expect("temp dir");
        let entry = |id: u32| {
            format!(
                r#"{{"id": {id}, "addr": "127.0.0.{}:7070", "peer_addr": "127.0.0.1:{}", "metrics_addr": "127.0.0.1:{}"}}"#,
                id + 1,
                7170 + id,
                9070 + id
            )
        };
        let text = format!(
            r#"{{"replicas": [{}, {}, {}], "tls": {{"cluster_name": "unit"}}}}"#,
            entry(0),
            entry(1),
            entry(2)
        );
        let config = Config::parse_in(&text, &base).expect("config");
        let created = ensure(&config).expect("create");
        assert_eq!(created.len(), 10, "{created:?}");
        let tls = &config.tls;
        for key in [
            tls.replica_key(0),
            tls.client_key(),
            tls.ca.with_file_name("ca.key"),
        ] {
            let mode = std::fs::metadata(&key).expect("key").permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", key.display());
        }
        assert_eq!(
            named_replicas(&der(&tls.replica_cert(1)), "unit").expect("parse"),
            vec![1]
        );
        assert!(named_replicas(&der(&tls.replica_cert(1)), "other")
            .expect("parse")
            .is_empty());
        assert!(named_replicas(&der(&tls.client_cert()), "unit")
            .expect("parse")
            .is_empty());
        // Idempotent: nothing is overwritten; a removed pair is made again with the same CA.
        let before = std::fs::read(tls.replica_cert(0)).expect("read");
        assert!(ensure(&config).expect("again").is_empty());
        assert_eq!(std::fs::read(tls.replica_cert(0)).expect("read"), before);
        std::fs::remove_file(tls.replica_cert(2)).expect("remove");
        let err = ensure(&config).expect_err("half a pair").to_string();
        assert!(err.contains("replica-2.key exists but"), "{err}");
        std::fs::remove_file(tls.replica_key(2)).expect("remove");
        assert_eq!(ensure(&config).expect("renew").len(), 2);
        let issuer = |p: &Path| {
            let d = der(p);
            let (_, c) = x509_parser::parse_x509_certificate(&d).expect("x509");
            c.issuer().to_string()
        };
        assert_eq!(issuer(&tls.replica_cert(2)), issuer(&tls.replica_cert(0)));
        let _ = std::fs::remove_dir_all(&base);
    }

    /// A replica certificate names the replica (identity) and every advertised host: names as
    /// DNS names, IP literals as IP addresses, each once.
    #[test]
    fn replica_certificates_carry_the_advertised_hosts() {
        let text = r#"{"replicas": [
            {"id": 0, "addr": "db0.example:7070", "peer_addr": "10.9.0.1:7170", "metrics_addr": "db0.example:9070",
             "listen": {"addr": "0.0.0.0:7070"}},
            {"id": 1, "addr": "db1.example:7070", "peer_addr": "db1.example:7170", "metrics_addr": "db1.example:9070"},
            {"id": 2, "addr": "[2001:db8::2]:7070", "peer_addr": "[2001:db8::2]:7170", "metrics_addr": "[2001:db8::2]:9070"}],
            "tls": {"cluster_name": "unit"}}"#;
        let base = std::env::temp_dir().join(format!("epaxos-sans-{}", rand::random::<u64>()));
        std::fs::create_dir_all(&base).expect("temp dir");
        let config = Config::parse_in(text, &base).expect("config");
        ensure(&config).expect("create");
        let sans = |id: u32| -> Vec<String> {
            let d = der(&config.tls.replica_cert(id));
            let (_, c) = x509_parser::parse_x509_certificate(&d).expect("x509");
            let san = c
                .subject_alternative_name()
                .expect("sans")
                .expect("has sans");
            san.value
                .general_names
                .iter()
                .map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => format!("dns:{d}"),
                    x509_parser::extensions::GeneralName::IPAddress(b) => {
                        let ip: std::net::IpAddr = match b.len() {
                            4 => <[u8; 4]>::try_from(*b).expect("v4").into(),
                            _ => <[u8; 16]>::try_from(*b).expect("v6").into(),
                        };
                        format!("ip:{ip}")
                    }
                    other => format!("{other:?}"),
                })
                .collect()
        };
        assert_eq!(
            sans(0),
            ["dns:replica-0.unit", "dns:db0.example", "ip:10.9.0.1"]
        );
        assert_eq!(sans(1), ["dns:replica-1.unit", "dns:db1.example"]);
        assert_eq!(sans(2), ["dns:replica-2.unit", "ip:2001:db8::2"]);
        let _ = std::fs::remove_dir_all(&base);
    }
}
