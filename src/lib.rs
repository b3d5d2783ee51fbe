//! An EPaxos* replicated key/value store.
//!
//! The crate is split along the sans-IO line:
//! - the pure protocol core ([`replica::Replica`] and what it holds: [`instance`], [`deps`],
//!   [`execute`], [`kv`]) takes messages and the time as values and returns what to send,
//!   whom to answer and what was executed; it does no I/O, reads no clock and draws no
//!   random numbers;
//! - the runtime ([`runtime`], [`transport`]) is the thin async shell that feeds it from the
//!   network and carries out its outputs.

pub mod checkpoint;
pub mod command;
pub mod config;
pub mod deps;
pub mod execute;
pub mod ids;
pub mod instance;
pub mod join;
pub mod kv;
pub mod message;
pub mod metrics;
pub mod quorum;
pub mod recovery;
pub mod replica;
pub mod runtime;
pub mod storage;
pub mod transport;
pub mod wire;

/// Code generated from `proto/epaxos.proto`.
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("epaxos.v1");

    /// The encoded file descriptor set, served by gRPC reflection.
    pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("epaxos_descriptor");
}
