//! The wire contract between the haop coordinator and haop-agent (`haop.agent.v1`).
//!
//! [`v1`] is generated from `haop/agent/v1/agent.proto`; the proto file documents what the agent promises
//! for every RPC and field. Nothing else lives here: conversions into validated types happen at
//! the edges, in the agent and the coordinator. [`enroll`] holds the enrollment proof, which both
//! ends must compute identically.

pub mod enroll;

#[allow(missing_debug_implementations, clippy::all)]
pub mod v1 {
    tonic::include_proto!("haop.agent.v1");
}
