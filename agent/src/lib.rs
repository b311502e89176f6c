//! haop-agent: the small daemon on every etcd, master and worker host.
//!
//! It executes host operations for the coordinator over gRPC (`haop.agent.v1`) and holds no
//! cluster knowledge. Requests are admitted at the edge by [`policy`] (what each role may do, per
//! RPC and per path), then validated ([`service`]) into the types of [`names`] and [`paths`];
//! side effects live behind narrow interfaces ([`units`], [`kernel`]) with a real
//! implementation for hosts and one for lab hosts that share a machine.
//!
//! Lifecycle: `main` reads [`config`], enters the host root when one is given ([`rootfs`]),
//! [`server::build`] picks the backends, [`server::serve`] serves until SIGTERM and then stops the
//! supervised units.

pub mod auth;
pub mod command;
pub mod config;
pub mod csr;
pub mod datadirs;
pub mod enroll;
pub mod error;
pub mod exec;
pub mod facts;
pub mod files;
pub mod identity;
pub mod kernel;
pub mod logging;
pub mod names;
pub mod paths;
pub mod policy;
pub mod revocation;
pub mod rootfs;
pub mod secrets;
pub mod server;
pub mod service;
pub mod tls;
pub mod trust;
pub mod units;
pub mod usage;
