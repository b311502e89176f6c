//! [`RunContext`]: what the steps of one plan or apply share, loaded once by `Runbook::load`.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::pki::{CertificateAuthority, KeyAlgorithm};
use crate::trust::Trust;

/// What steps share during one run.
#[derive(Debug)]
pub struct RunContext {
    /// haop's identity towards the agents (steps that reach another host than their own: the
    /// VIP wait, a join asking the first master for a token).
    pub trust: Arc<Trust>,
    pub etcd_ca: CertificateAuthority,
    /// What an etcd CA file next to a certificate holds: the etcd CA, or the trust bundle
    /// while a CA is being replaced ([`crate::pki::bundle`]), the issuing CA first.
    pub etcd_trust_pem: String,
    pub state_dir: PathBuf,
    pub cert_lifetime: Duration,
    /// Certificates with less time left are issued again: 30 days, or a third of the lifetime
    /// when that is shorter (so short-lived certificates converge instead of being re-issued
    /// on every apply).
    pub renew_within: Duration,
    /// Algorithm of the keys hosts generate for their certificates (the inventory's
    /// `pki.key_algorithm`).
    pub key_algorithm: KeyAlgorithm,
    /// Held while an etcd member restarts and comes back (rolling restarts).
    pub rolling: tokio::sync::Mutex<()>,
}
