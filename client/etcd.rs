//! The etcd target of `client bench --system etcd`: tonic over the vendored subset of etcd's v3
//! KV API (`proto/etcd/rpc.proto`), plaintext, one HTTP/2 channel per endpoint, so that both
//! systems are driven by the same load generator, the same way.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use tonic::transport::{Channel, Endpoint};

/// Code generated from `proto/etcd/rpc.proto` (package `etcdserverpb`).
#[allow(clippy::all, dead_code, missing_docs)]
pub mod pb {
    tonic::include_proto!("etcdserverpb");
}

pub use pb::kv_client::KvClient as EtcdClient;

/// Parses `host:port,host:port,...` (an `http://` prefix is accepted) and prepares, without
/// dialing, a channel to each.
pub fn connect(
    endpoints: &str,
    connect_timeout: Duration,
) -> Result<Vec<(String, EtcdClient<Channel>)>> {
    let mut out = Vec::new();
    for e in endpoints
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        let hostport = e.strip_prefix("http://").unwrap_or(e);
        if hostport.starts_with("https://") {
            bail!("endpoint {e}: only plaintext etcd endpoints are supported");
        }
        let endpoint = Endpoint::from_shared(format!("http://{hostport}"))
            .with_context(|| format!("bad etcd endpoint {e}"))?
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true);
        out.push((
            hostport.to_string(),
            EtcdClient::new(endpoint.connect_lazy()),
        ));
    }
    if out.is_empty() {
        bail!("--system etcd needs --endpoints host:port[,host:port...]");
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn endpoints_are_parsed() {
        let got = connect(
            "127.0.0.1:2379, http://127.0.0.1:22379,",
            Duration::from_secs(1),
        )
        .expect("valid endpoints");
        let names: Vec<&str> = got.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(names, ["127.0.0.1:2379", "127.0.0.1:22379"]);
        assert!(connect("", Duration::from_secs(1)).is_err());
        assert!(connect("https://x:1", Duration::from_secs(1)).is_err());
    }
}
