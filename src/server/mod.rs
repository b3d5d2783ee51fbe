//! The I/O shell around the core: configuration, gRPC services, the single-threaded event
//! loop, per-peer links, the durable log and metrics. It decodes, stamps the time, feeds the
//! core and carries out what the core decided; protocol decisions belong in [`crate::core`].

pub mod added;
pub mod admission;
pub mod backoff;
pub mod certs;
pub mod config;
pub mod health;
pub mod http;
pub mod incoming;
pub mod join;
pub mod members;
pub mod metadata;
pub mod metrics;
pub mod notify;
pub mod peer_ids;
pub mod queue;
pub mod record;
pub mod runtime;
pub mod storage;
pub mod tls;
pub mod transport;
pub mod writer;
