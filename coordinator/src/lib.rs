//! haop's coordinator library: all cluster knowledge.
//!
//! The `haop` binary is a thin front over this crate. Modules: [`agent_client`] (how agents are
//! reached) and [`lab`] (hosts on this machine, in network namespaces, for trying haop and for
//! its tests).

pub mod agent_client;
pub mod certs;
pub mod etcd_api;
pub mod etcd_config;
pub mod failpoint;
pub mod inventory;
pub mod lab;
pub mod pki;
pub mod quorum;
pub mod recover;
pub mod render;
pub mod renew;
pub mod restore;
pub mod runbook;
pub mod scale;
pub mod status;
pub mod trust;

/// An error and its sources, `: `-separated, for one line of output.
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let t = s.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        source = s.source();
    }
    out
}
