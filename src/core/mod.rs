//! The sans-IO protocol core: EPaxos* as a pure state machine.
//!
//! Messages, proposals and ticks go in with `now`; [`replica::Ready`] comes out (messages to
//! send, records to persist before they leave, replies, executed commands). No module here
//! touches a socket, a file, a clock or a random number generator.

pub mod checkpoint;
pub mod command;
pub mod deps;
pub mod epoch;
pub mod execute;
pub mod ids;
pub mod instance;
pub mod kv;
pub mod limits;
pub mod membership;
pub mod message;
pub mod node;
pub mod per_row;
pub mod quorum;
pub mod recovery;
pub mod replica;
pub mod session;
#[cfg(any(test, feature = "testkit"))]
pub mod testkit;
pub mod wire;
