//! The wire contract between the haop coordinator and haop-agent (`haop.agent.v1`).
//!
//! [`v1`] is generated from `haop/agent/v1/agent.proto`; the proto file documents what the agent promises
//! for every RPC and field. Nothing else lives here: conversions into validated types happen at
//! the edges, in the agent and the coordinator. [`enroll`] holds the enrollment proof, which both
//! ends must compute identically, and [`ENCRYPTED_SNAPSHOT_MAGIC`] and [`SNAPSHOT_COPY_DIR`],
//! which both ends must agree on to tell an encrypted snapshot copy and where copies live.

pub mod enroll;

/// The first bytes of haop's encrypted snapshot format (the coordinator's
/// `etcd::snapshots::crypt`). The agent streams a snapshot copy back (DownloadFile) only when
/// it begins with them: the copy is then ciphertext under a key that never reaches the host.
pub const ENCRYPTED_SNAPSHOT_MAGIC: &[u8; 8] = b"HAOPSNAP";

/// Where the coordinator keeps encrypted snapshot copies on a host; the agent's policy classes
/// it as such (an admin writes, removes and streams back; a reader gets nothing).
pub const SNAPSHOT_COPY_DIR: &str = "/var/lib/haop/snapshot-copies";

#[allow(missing_debug_implementations, clippy::all)]
pub mod v1 {
    tonic::include_proto!("haop.agent.v1");
}
