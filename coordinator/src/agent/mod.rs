//! How the coordinator talks to a host: every agent call goes through here.
//!
//! * [`connect`]: one way to reach an agent (mTLS with haop's admin identity, a connect
//!   timeout, HTTP/2 keepalive so a host cut off mid-RPC fails fast).
//! * [`HostAgent`]: the facade the rest of the coordinator uses: a connected agent that knows
//!   its host's name, with one method per thing the coordinator does to a host (read a text,
//!   check a path, write a file, drive a unit, wipe a data dir, issue a certificate...). Every
//!   method fails with one error type, [`AgentError`], which names the host, the RPC, the gRPC
//!   code and the agent's detail, and tells an answer from a connection that broke before one
//!   (the outcome is then unknown). Callers branch on [`AgentError::code`] or
//!   [`AgentError::outcome_unknown`], never on message text.
//! * [`Agents`]: a pool that connects each host of the inventory once and hands out clones
//!   (tonic channels are cheap to clone and multiplex).
//! * [`enroll`]: the first conversation with a new agent.
//!
//! The facade is what the executors are tested against: the same `HostAgent` connects to a real
//! agent served in-process on a loopback port (no root, no lab), so a step can be run twice or
//! failed midway in an ordinary unit test.

mod connect;
mod enroll;
mod error;
mod host;
mod pool;

pub use connect::{
    connect, connect_with, Client, ConnectError, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT,
};
pub use enroll::{bootstrap_endpoint, enroll, Enrolled, ExpectedAgent};
pub use error::AgentError;
pub use host::{upload_chunks, HostAgent};
pub use pool::Agents;
