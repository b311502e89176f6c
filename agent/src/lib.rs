//! haop-agent: the small daemon on every etcd, master and worker host.
//!
//! It executes host operations for the coordinator over gRPC (`haop.agent.v1`) and holds no
//! cluster knowledge. Requests are validated at the edge ([`service`]) into the types of
//! [`names`] and [`paths`]; side effects live behind narrow interfaces ([`units`], [`kernel`])
//! with a real implementation for hosts and one for lab hosts that share a machine.

pub mod config;
pub mod names;
pub mod paths;
pub mod units;
