//! A deterministic simulator for the EPaxos* core (issue 4): N replicas of the real
//! `Replica` in one thread, a network and clients driven by one seeded generator, and checks
//! of every run. See `tests/simulation.rs` for how to run and replay it.
//!
//! Laid out like TigerBeetle's VOPR: `config` (what a seed chooses), `network`, `disk`,
//! `cluster` (the replicas and their lifecycle), `workload` (the clients), `checkers` (every
//! check, with `observer` and `linearizability`), and `world` (the event loop that drives
//! them); `rng` and `trace` serve them all.

pub mod checkers;
pub mod cluster;
pub mod config;
pub mod disk;
pub mod network;
pub mod rng;
pub mod trace;
pub mod workload;
pub mod world;

pub use checkers::{Check, Violation};
pub use config::{Action, Config};
pub use world::{Outcome, Sim};
