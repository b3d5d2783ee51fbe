//! Transport security: what a replica serves its two listeners with, what peers and clients
//! dial with, and which replica a certificate names.
//!
//! - **Identity**: a replica's certificate carries the DNS subject alternative name
//!   `replica-<id>.<cluster_name>` ([`replica_name`]). On the peer listener that name, not a
//!   field of the message, says who is speaking ([`PeerAuth`]); dialers check the same name in
//!   the answering replica's certificate.
//! - **Peer listener**: mutual TLS, client certificates signed by the cluster CA required.
//! - **Client listener**: TLS; client certificates asked for but optional (required when
//!   `tls.client_ca` is set). The admin calls (`MemberAdd`, `MemberRemove`) need one signed by
//!   the cluster CA and naming `client.<cluster_name>` ([`AdminAuth`]).
//! - `--insecure` turns all of it off (plaintext on both listeners, no identity checks).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::pki_types::{CertificateDer, UnixTime};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};
use tonic::{Request, Status};

use crate::core::ids::ReplicaId;
use crate::server::config::{Config, TlsSettings};

/// How long a TLS handshake may take before the connection is dropped.
pub const HANDSHAKE_TIMEOUT: Duration = crate::core::limits::TLS_HANDSHAKE_TIMEOUT;

/// The DNS name a replica's certificate must carry: `replica-<id>.<cluster_name>`.
pub fn replica_name(cluster_name: &str, id: u32) -> String {
    format!("replica-{id}.{cluster_name}")
}

/// The DNS name of the generated client certificate: `client.<cluster_name>`.
pub fn client_name(cluster_name: &str) -> String {
    format!("client.{cluster_name}")
}

/// Why TLS could not be set up. Each names the file and says how to fix it.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error(
        "cannot read {what} {path}: {source} (run `replica certs --config CONFIG` to create \
             the certificates, point config.json's \"tls\" section at yours, or run every replica \
             and client with --insecure)"
    )]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {path}: {why}")]
    Invalid {
        what: &'static str,
        path: PathBuf,
        why: String,
    },
    #[error("TLS setup: {0}")]
    Setup(String),
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// The DER bytes of every certificate in a PEM file.
fn pem_certs(what: &'static str, path: &Path, pem: &[u8]) -> Result<Vec<Vec<u8>>, TlsError> {
    let invalid = |why: String| TlsError::Invalid {
        what,
        path: path.to_path_buf(),
        why,
    };
    let mut out = Vec::new();
    for item in x509_parser::pem::Pem::iter_from_buffer(pem) {
        let item = item.map_err(|e| invalid(format!("not PEM: {e}")))?;
        if item.label == "CERTIFICATE" {
            out.push(item.contents);
        }
    }
    if out.is_empty() {
        return Err(invalid("holds no certificate".into()));
    }
    Ok(out)
}

/// A certificate's expiry, in seconds since the Unix epoch.
fn not_after(what: &'static str, path: &Path, der: &[u8]) -> Result<i64, TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| TlsError::Invalid {
        what,
        path: path.to_path_buf(),
        why: format!("not an X.509 certificate: {e}"),
    })?;
    Ok(cert.validity().not_after.timestamp())
}

/// The replica ids a certificate names (DNS SANs `replica-<id>.<cluster_name>`).
pub fn named_replicas(der: &[u8], cluster_name: &str) -> Result<Vec<u32>, String> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| format!("bad certificate: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("bad subject alternative names: {e}"))?;
    let suffix = format!(".{cluster_name}");
    let mut ids = Vec::new();
    if let Some(san) = san {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                let id = dns
                    .strip_suffix(suffix.as_str())
                    .and_then(|s| s.strip_prefix("replica-"))
                    .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
                    .and_then(|s| s.parse::<u32>().ok());
                if let Some(id) = id {
                    ids.push(id);
                }
            }
        }
    }
    Ok(ids)
}

/// What a replica serves and dials with.
pub struct ReplicaTls {
    /// The client listener's configuration.
    pub client: ServerTlsConfig,
    /// The peer listener's configuration (client certificates from the cluster CA required).
    pub peer: ServerTlsConfig,
    /// How this replica dials its peers.
    pub dialer: PeerDialer,
    /// When this replica's own certificate and the cluster CA expire (Unix seconds).
    pub own_expiry: i64,
    pub ca_expiry: i64,
    /// Who may make admin calls on the client listener.
    pub admin: AdminAuth,
}

/// Loads replica `id`'s certificate and key and the cluster CA (and the client CA, if any).
pub fn load_replica(config: &Config, id: ReplicaId) -> Result<ReplicaTls, TlsError> {
    let tls = &config.tls;
    let ca_path = tls.ca.clone();
    let ca_pem = read("the cluster CA certificate", &ca_path)?;
    let ca_der = pem_certs("the cluster CA certificate", &ca_path, &ca_pem)?;
    let ca_expiry = not_after("the cluster CA certificate", &ca_path, &ca_der[0])?;
    let cert_path = tls.replica_cert(id.0);
    let key_path = tls.replica_key(id.0);
    let cert_pem = read("this replica's certificate", &cert_path)?;
    let key_pem = read("this replica's key", &key_path)?;
    let own = pem_certs("this replica's certificate", &cert_path, &cert_pem)?;
    let own_expiry = not_after("this replica's certificate", &cert_path, &own[0])?;
    let named = named_replicas(&own[0], &tls.cluster_name).map_err(|why| TlsError::Invalid {
        what: "this replica's certificate",
        path: cert_path.clone(),
        why,
    })?;
    if !named.contains(&id.0) {
        return Err(TlsError::Invalid {
            what: "this replica's certificate",
            path: cert_path,
            why: format!(
                "does not name {} (a DNS subject alternative name); it names replicas {named:?}",
                replica_name(&tls.cluster_name, id.0)
            ),
        });
    }
    let identity = Identity::from_pem(&cert_pem, &key_pem);
    let ca = Certificate::from_pem(&ca_pem);
    // Client certificates are asked for, so that an admin can present one (see
    // `AdminAuth`); optional unless the operator set a client CA. With one, both CAs are
    // trusted: the client CA's certificates for data, the cluster CA's for admin calls.
    let mut client = ServerTlsConfig::new()
        .identity(identity.clone())
        .timeout(HANDSHAKE_TIMEOUT);
    if let Some(path) = &tls.client_ca {
        let mut pem = read("the client CA certificate", path)?;
        pem_certs("the client CA certificate", path, &pem)?;
        pem.push(b'\n');
        pem.extend_from_slice(&ca_pem);
        client = client.client_ca_root(Certificate::from_pem(pem));
    } else {
        client = client.client_ca_root(ca.clone()).client_auth_optional(true);
    }
    let admin = AdminAuth::new(&ca_der, &tls.cluster_name).map_err(|why| TlsError::Invalid {
        what: "the cluster CA certificate",
        path: ca_path.clone(),
        why,
    })?;
    let peer = ServerTlsConfig::new()
        .identity(identity.clone())
        .client_ca_root(ca.clone())
        .timeout(HANDSHAKE_TIMEOUT);
    let dial = ClientTlsConfig::new()
        .ca_certificate(ca)
        .identity(identity)
        .timeout(HANDSHAKE_TIMEOUT);
    Ok(ReplicaTls {
        client,
        peer,
        dialer: PeerDialer {
            tls: Some((dial, tls.cluster_name.clone())),
        },
        own_expiry,
        ca_expiry,
        admin,
    })
}

/// Who may call the admin RPCs (`MemberAdd`, `MemberRemove`) on the client listener: a caller
/// whose TLS client certificate chains to the cluster CA (checked again here, whatever CA the
/// listener also trusts) and names `client.<cluster_name>` (the one `replica certs` makes), or
/// anyone with `--insecure`.
#[derive(Clone)]
pub struct AdminAuth {
    /// None with `--insecure`.
    check: Option<(Arc<dyn rustls::server::danger::ClientCertVerifier>, String)>,
}

impl AdminAuth {
    /// `--insecure`: every caller is an admin.
    pub fn insecure() -> AdminAuth {
        AdminAuth { check: None }
    }

    /// Admins are the holders of a certificate of the CA `ca_der` naming
    /// `client.<cluster_name>`.
    pub fn new(ca_der: &[Vec<u8>], cluster_name: &str) -> Result<AdminAuth, String> {
        let mut roots = rustls::RootCertStore::empty();
        for der in ca_der {
            roots
                .add(CertificateDer::from(der.clone()))
                .map_err(|e| format!("not a usable CA certificate: {e}"))?;
        }
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            Arc::new(rustls::crypto::ring::default_provider()),
        )
        .build()
        .map_err(|e| format!("cannot check client certificates against it: {e}"))?;
        Ok(AdminAuth {
            check: Some((verifier, client_name(cluster_name))),
        })
    }

    /// Whether the caller of `call` may make it; PERMISSION_DENIED saying why not (and counted
    /// in `epaxos_admin_refused_total`).
    pub fn check<T>(&self, req: &Request<T>, call: &str) -> Result<(), Status> {
        let Some((verifier, name)) = &self.check else {
            return Ok(());
        };
        let refuse = |why: String| {
            metrics::counter!("epaxos_admin_refused_total").increment(1);
            tracing::warn!(remote = ?req.remote_addr(), call, reason = %why, "admin call refused");
            Status::permission_denied(format!(
                "{call} is an admin call: {why}; present the cluster's client certificate \
                 (client.pem and client.key in the certificate directory, made by `replica \
                 certs`, signed by the cluster CA and naming {name})"
            ))
        };
        let certs = req.peer_certs();
        let Some((leaf, intermediates)) = certs.as_ref().and_then(|c| c.split_first()) else {
            return Err(refuse("no client certificate was presented".into()));
        };
        let leaf = CertificateDer::from(leaf.as_ref().to_vec());
        let intermediates: Vec<CertificateDer<'static>> = intermediates
            .iter()
            .map(|c| CertificateDer::from(c.as_ref().to_vec()))
            .collect();
        verifier
            .verify_client_cert(&leaf, &intermediates, UnixTime::now())
            .map_err(|e| {
                refuse(format!(
                    "the client certificate is not the cluster CA's: {e}"
                ))
            })?;
        if !dns_names(leaf.as_ref())
            .map_err(&refuse)?
            .iter()
            .any(|n| n == name)
        {
            return Err(refuse(format!(
                "the client certificate does not name {name}"
            )));
        }
        Ok(())
    }
}

/// The DNS subject alternative names of a certificate.
fn dns_names(der: &[u8]) -> Result<Vec<String>, String> {
    let (_, cert) =
        x509_parser::parse_x509_certificate(der).map_err(|e| format!("bad certificate: {e}"))?;
    let san = cert
        .subject_alternative_name()
        .map_err(|e| format!("bad subject alternative names: {e}"))?;
    Ok(san
        .into_iter()
        .flat_map(|s| s.value.general_names.iter())
        .filter_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
            _ => None,
        })
        .collect())
}

/// How a replica dials its peers' `peer_addr`: mutual TLS checking that the answering replica's
/// certificate names the replica dialed, or plaintext with `--insecure`.
#[derive(Clone)]
pub struct PeerDialer {
    tls: Option<(ClientTlsConfig, String)>,
}

impl PeerDialer {
    /// Plaintext (`--insecure`).
    pub fn insecure() -> PeerDialer {
        PeerDialer { tls: None }
    }

    /// An endpoint for replica `peer` at `addr` (not connected yet).
    pub fn endpoint(
        &self,
        peer: ReplicaId,
        addr: SocketAddr,
    ) -> Result<Endpoint, tonic::transport::Error> {
        match &self.tls {
            None => Endpoint::from_shared(format!("http://{addr}")),
            Some((tls, cluster)) => Endpoint::from_shared(format!("https://{addr}"))?
                .tls_config(tls.clone().domain_name(replica_name(cluster, peer.0))),
        }
    }
}

/// What a client dials replica `id` with: TLS checking the replica's name, presenting the
/// client certificate when the certificate directory holds one (`client.pem`, `client.key`).
pub fn client_config(tls: &TlsSettings) -> Result<ClientTlsConfig, TlsError> {
    let ca_pem = read("the cluster CA certificate", &tls.ca)?;
    pem_certs("the cluster CA certificate", &tls.ca, &ca_pem)?;
    let mut config = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(ca_pem))
        .timeout(HANDSHAKE_TIMEOUT);
    let (cert, key) = (tls.client_cert(), tls.client_key());
    if cert.exists() && key.exists() {
        let cert_pem = read("the client certificate", &cert)?;
        let key_pem = read("the client key", &key)?;
        config = config.identity(Identity::from_pem(cert_pem, key_pem));
    }
    Ok(config)
}

/// The peer listener's check of who is speaking.
pub struct PeerAuth {
    /// None with `--insecure`: every call is taken at its word.
    cluster_name: Option<String>,
    /// The ids that are or were members: a certificate naming another is refused.
    ids: std::sync::Arc<crate::server::peer_ids::PeerIds>,
    /// Connections (remote addresses) already logged as refused: one line per connection.
    logged: Mutex<HashSet<SocketAddr>>,
}

/// Most refused connections remembered for logging once each; then the set starts over.
const LOGGED_MAX: usize = 4096;

impl PeerAuth {
    pub fn new(
        cluster_name: Option<String>,
        ids: std::sync::Arc<crate::server::peer_ids::PeerIds>,
    ) -> PeerAuth {
        PeerAuth {
            cluster_name,
            ids,
            logged: Mutex::new(HashSet::new()),
        }
    }

    /// The replica the caller's certificate names (None with `--insecure`). A certificate that
    /// names no replica that is or was a member (a client's, another cluster's), or several, is
    /// refused.
    pub fn identify<T>(&self, req: &Request<T>, call: &str) -> Result<Option<ReplicaId>, Status> {
        self.identify_among(req, call, |id| self.ids.was_member(id))
    }

    /// As [`identify`](Self::identify), for a Join: the certificate may name any id there can
    /// be, a member or not (a replica being added asks to Join before it is one; the cluster
    /// CA signed its certificate, which the handshake checked).
    pub fn identify_joiner<T>(
        &self,
        req: &Request<T>,
        call: &str,
    ) -> Result<Option<ReplicaId>, Status> {
        self.identify_among(req, call, |id| {
            (id as usize) < crate::core::limits::MEMBERS_EVER_MAX
        })
    }

    fn identify_among<T>(
        &self,
        req: &Request<T>,
        call: &str,
        known: impl Fn(u32) -> bool,
    ) -> Result<Option<ReplicaId>, Status> {
        let Some(cluster) = &self.cluster_name else {
            return Ok(None);
        };
        let remote = req.remote_addr();
        let Some(certs) = req.peer_certs() else {
            return Err(self.refuse(remote, call, "no client certificate".into()));
        };
        let Some(leaf) = certs.first() else {
            return Err(self.refuse(remote, call, "no client certificate".into()));
        };
        let named =
            named_replicas(leaf.as_ref(), cluster).map_err(|e| self.refuse(remote, call, e))?;
        let mut ids: Vec<u32> = named.into_iter().filter(|id| known(*id)).collect();
        ids.sort_unstable();
        ids.dedup();
        match ids[..] {
            [id] => Ok(Some(ReplicaId(id))),
            [] => Err(self.refuse(
                remote,
                call,
                format!(
                    "the certificate names no replica of this cluster (wanted a DNS name \
                     replica-<id>.{cluster})"
                ),
            )),
            // One certificate per replica: one naming several could speak as any of them.
            _ => Err(self.refuse(
                remote,
                call,
                format!("the certificate names several replicas ({ids:?}); one per replica"),
            )),
        }
    }

    /// Checks that a call from `identity` (see [`identify`](Self::identify)) claiming to come
    /// from replica `claimed` really does.
    pub fn check(
        &self,
        identity: Option<ReplicaId>,
        claimed: u32,
        remote: Option<SocketAddr>,
        call: &str,
    ) -> Result<(), Status> {
        match identity {
            Some(id) if id.0 != claimed => Err(self.refuse(
                remote,
                call,
                format!(
                    "the certificate of replica {} cannot speak as replica {claimed}",
                    id.0
                ),
            )),
            _ => Ok(()),
        }
    }

    /// Counts a refusal, logs it once per connection, and makes the PERMISSION_DENIED answer.
    fn refuse(&self, remote: Option<SocketAddr>, call: &str, why: String) -> Status {
        metrics::counter!("epaxos_peer_identity_refused_total").increment(1);
        let first = match (remote, self.logged.lock()) {
            (Some(addr), Ok(mut logged)) => {
                if logged.len() >= LOGGED_MAX {
                    logged.clear();
                }
                logged.insert(addr)
            }
            _ => true,
        };
        if first {
            tracing::warn!(remote = ?remote, call, reason = %why,
                "peer call refused: identity does not match its certificate (logged once per \
                 connection)");
        }
        Status::permission_denied(format!("{call}: {why}"))
    }
}

/// Exports the seconds left before this replica's certificate and the CA expire
/// (`epaxos_tls_cert_expiry_seconds{cert="replica"|"ca"}`; seconds, Prometheus' base unit),
/// refreshed every minute.
pub fn export_expiry(own_expiry: i64, ca_expiry: i64) {
    let own = metrics::gauge!("epaxos_tls_cert_expiry_seconds", "cert" => "replica");
    let ca = metrics::gauge!("epaxos_tls_cert_expiry_seconds", "cert" => "ca");
    let left = |at: i64| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        (at - now) as f64
    };
    own.set(left(own_expiry));
    ca.set(left(ca_expiry));
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(60));
        loop {
            every.tick().await;
            own.set(left(own_expiry));
            ca.set(left(ca_expiry));
        }
    });
}
