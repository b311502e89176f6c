//! `haop lab up NAME --from-seed`: a lab whose hosts were built by the seed's runbook as
//! written, before haop came near them: the starting point of `haop adopt`.
//!
//! [`pki`] makes the seed's certificates as cfssl does; [`files`] renders the other texts the
//! runbook puts on its hosts.

pub mod files;
pub mod pki;

use std::net::Ipv4Addr;

/// An etcd host as the seed's files name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeedHost {
    pub name: String,
    pub address: Ipv4Addr,
}
