//! haop's coordinator library: all cluster knowledge.
//!
//! The `haop` binary is a thin front over this crate. Modules: [`agent_client`] (how agents are
//! reached) and [`lab`] (hosts on this machine, in network namespaces, for trying haop and for
//! its tests).

pub mod agent_client;
pub mod etcd_config;
pub mod inventory;
pub mod lab;
pub mod pki;
pub mod trust;
