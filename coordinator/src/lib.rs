//! haop's coordinator library: all cluster knowledge.
//!
//! The `haop` binary is a thin front over this crate; `docs/ARCHITECTURE.md` shows how the
//! modules fit and how data flows through plan/apply and recovery.
//!
//! * [`inventory`]: the one input file, parsed and validated (every problem at once).
//! * [`pki`] and [`trust`]: the two CAs, CSR signing, haop's own certificates, tokens.
//! * [`fsio`]: the one way the coordinator writes its own files (atomic, durable).
//! * [`agent`]: how the coordinator talks to a host: connections, enrollment, and the
//!   [`agent::HostAgent`] facade with one error type.
//! * [`render`]: pure renderers of every file haop writes to a host.
//! * [`runbook`]: `haop plan` and `haop apply` (pure plan, executor, journal).
//! * [`etcd`]: the etcd lifecycle (API, quorum planner, recover, scale, restore, maintenance).
//! * [`certs`]: certificates in place (list) and their rolling renewal.
//! * [`adopt`]: taking over a cluster built by hand and securing it live.
//! * [`status`]: cluster-wide health.
//! * [`hosts`]: agents onto bare hosts over SSH (install, enroll, rolling upgrade).
//! * [`lab`]: hosts on this machine, in network namespaces, for trying haop and for its tests.

pub mod adopt;
pub mod agent;
pub mod certs;
pub mod error;
pub mod etcd;
pub mod failpoint;
pub mod fsio;
pub mod hosts;
pub mod https;
pub mod identity;
pub mod inventory;
pub mod lab;
pub mod operator;
pub mod pki;
pub mod render;
pub mod runbook;
pub mod status;
pub mod trust;

pub use error::error_chain;
