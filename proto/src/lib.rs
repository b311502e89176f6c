//! The wire contract between the haop coordinator and haop-agent (`haop.agent.v1`).
//!
//! Generated from `haop/agent/v1/agent.proto`; the proto file documents what the agent promises
//! for every RPC and field. Nothing else lives here: conversions into validated types happen at
//! the edges, in the agent and the coordinator.

#![allow(missing_debug_implementations, clippy::all)]

pub mod v1 {
    tonic::include_proto!("haop.agent.v1");
}
