//! An EPaxos* replicated key/value store.
//!
//! The crate is split along the sans-IO line, and the directories show it:
//! - [`core`] is the pure protocol: the [`core::replica::Replica`] state machine and what it
//!   holds ([`core::instance`], [`core::deps`], [`core::execute`], [`core::kv`], ...). It takes
//!   messages and the time as values and returns what to send, whom to answer, what to persist
//!   and what was executed; it does no I/O, reads no clock and draws no random numbers, so the
//!   simulator in `tests/` runs exactly the code production runs.
//! - [`server`] is the I/O shell: configuration, the gRPC services and the event loop
//!   ([`server::runtime`]), the per-peer links ([`server::transport`]), the durable log
//!   ([`server::storage`]) and metrics. It only translates and carries out.
//!
//! Nothing under `core` imports tokio, tonic, sockets or files; it uses the generated protobuf
//! message types ([`proto`]) only as plain data, for the stored and wire forms of its own state.

pub mod core;
pub mod server;

/// The git commit this build was made from (`build.rs`; "unknown" outside a git checkout).
pub const GIT_COMMIT: &str = env!("EPAXOS_GIT_COMMIT");

/// What `--version` prints on both binaries: the crate version and the git commit.
pub const VERSION_LONG: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("EPAXOS_GIT_COMMIT"),
    ")"
);

/// Code generated from `proto/client.proto`, `proto/peer.proto` and `proto/storage.proto`
/// (package `epaxos.v1`).
pub mod proto {
    #![allow(clippy::all, missing_docs)]
    tonic::include_proto!("epaxos.v1");

    /// The encoded file descriptor set of the client contract (client.proto only), served by
    /// gRPC reflection on the client listener.
    pub const CLIENT_FILE_DESCRIPTOR_SET: &[u8] =
        tonic::include_file_descriptor_set!("client_descriptor");
}
