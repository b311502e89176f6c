//! Revoked client certificates: the agent CA's CRL, checked on every call.
//!
//! Why a CRL: `haop identity revoke` must take a lost certificate away at once, and an X.509 CRL
//! is the standard, signed form of "these serials are revoked, as of number N": the agent can
//! check that its own CA signed it (so only the coordinator, which holds the CA key, can revoke),
//! an operator can read it with `openssl crl -text`, and its CRL number orders the lists, so an
//! old list replayed by anyone cannot un-revoke a certificate.
//!
//! The list is kept in `<state_dir>/pki/revoked.crl`, beside the agent's identity and outside
//! the managed roots, and loaded at start; [`crate::policy::Policy::admit`] asks
//! [`Revocations::check`] for every call's client certificate, before the role is looked at.
//! A list that does not parse, is not signed by the agent CA or is older than the one held is
//! refused and changes nothing.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tracing::{info, warn};
use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use crate::files::{self, FileError, Ownership};

/// What the agent enforces: the CRL number and the revoked serials (big-endian bytes, without
/// leading zeros).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevokedSet {
    pub generation: u64,
    pub serials: BTreeSet<Vec<u8>>,
}

/// Why a revocation list was refused; each names what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    #[error("the revocation list is not a PEM X509 CRL: {0}")]
    Format(String),
    #[error("the revocation list is not signed by this agent's CA ({0})")]
    Signature(String),
    #[error("the revocation list carries no CRL number (haop numbers every list it issues)")]
    NoNumber,
    #[error(
        "the revocation list is number {offered}, older than number {held} that this agent \
         enforces: an old list cannot take a revocation back"
    )]
    Older { offered: u64, held: u64 },
    #[error("this agent is not enrolled: it has no CA to check a revocation list against")]
    NotEnrolled,
    #[error(transparent)]
    File(#[from] FileError),
}

/// Serial bytes as compared: without the DER sign byte or other leading zeros.
pub fn normalize_serial(raw: &[u8]) -> Vec<u8> {
    let start = raw.iter().position(|b| *b != 0).unwrap_or(raw.len());
    raw[start..].to_vec()
}

/// Parses `crl_pem` and checks that a CA certificate of `ca_pem` (the agent's trust bundle:
/// one CA, or old and new during a rotation) signed it.
pub fn parse_checked(crl_pem: &str, ca_pem: &str) -> Result<RevokedSet, RevocationError> {
    let (_, block) = x509_parser::pem::parse_x509_pem(crl_pem.as_bytes())
        .map_err(|e| RevocationError::Format(e.to_string()))?;
    if block.label != "X509 CRL" {
        return Err(RevocationError::Format(format!(
            "a {:?} block is not a CRL",
            block.label
        )));
    }
    let (_, crl) = CertificateRevocationList::from_der(&block.contents)
        .map_err(|e| RevocationError::Format(e.to_string()))?;
    let cas = crate::trust::certificates(ca_pem, "the CA certificate")
        .map_err(|e| RevocationError::Signature(e.to_string()))?;
    let mut subjects = Vec::new();
    let mut signed = false;
    for der in &cas {
        let (_, ca) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| RevocationError::Signature(format!("the CA certificate: {e}")))?;
        if crl.issuer().as_raw() == ca.subject().as_raw()
            && crl.verify_signature(ca.public_key()).is_ok()
        {
            signed = true;
            break;
        }
        subjects.push(ca.subject().to_string());
    }
    if !signed {
        return Err(RevocationError::Signature(format!(
            "issued by {}, the CA is {}",
            crl.issuer(),
            if subjects.is_empty() {
                "missing".to_string()
            } else {
                subjects.join(" or ")
            }
        )));
    }
    let generation = crl
        .crl_number()
        .and_then(|n| u64::try_from(n).ok())
        .ok_or(RevocationError::NoNumber)?;
    let serials = crl
        .iter_revoked_certificates()
        .map(|r| normalize_serial(r.raw_serial()))
        .collect();
    Ok(RevokedSet {
        generation,
        serials,
    })
}

/// The revocation list this agent enforces, shared by every RPC.
#[derive(Debug, Clone)]
pub struct Revocations {
    path: PathBuf,
    ca_path: PathBuf,
    held: Arc<RwLock<RevokedSet>>,
}

impl Revocations {
    /// Loads `<pki_dir>/revoked.crl` when there is one. A list on disk that no longer checks
    /// (a CA replaced by hand) is logged and ignored rather than stopping the agent; the
    /// coordinator pushes a fresh one.
    pub fn load(pki_dir: &Path) -> Revocations {
        let path = pki_dir.join("revoked.crl");
        let ca_path = pki_dir.join("ca.crt");
        let held = match (
            std::fs::read_to_string(&path),
            std::fs::read_to_string(&ca_path),
        ) {
            (Ok(crl), Ok(ca)) => match parse_checked(&crl, &ca) {
                Ok(set) => {
                    info!(
                        generation = set.generation,
                        revoked = set.serials.len(),
                        "revocation list loaded"
                    );
                    set
                }
                Err(e) => {
                    warn!(path = %path.display(), error = %e, "ignoring the stored revocation list");
                    RevokedSet::default()
                }
            },
            _ => RevokedSet::default(),
        };
        Revocations {
            path,
            ca_path,
            held: Arc::new(RwLock::new(held)),
        }
    }

    /// The list enforced now, PEM, with its number; `None` when the agent holds none.
    pub fn held(&self) -> Option<(String, u64)> {
        let generation = self.generation();
        if generation == 0 {
            return None;
        }
        std::fs::read_to_string(&self.path)
            .ok()
            .map(|pem| (pem, generation))
    }

    /// The CRL number enforced now (0: none).
    pub fn generation(&self) -> u64 {
        self.held.read().expect("revocations lock").generation
    }

    /// The generation that revokes `serial`, if any.
    pub fn revoked_by(&self, raw_serial: &[u8]) -> Option<u64> {
        let held = self.held.read().expect("revocations lock");
        held.serials
            .contains(&normalize_serial(raw_serial))
            .then_some(held.generation)
    }

    /// Checks and installs `crl_pem`: answers the generation enforced after the call, whether it
    /// changed, and how many serials it revokes. The file is written before memory changes, so
    /// what is enforced survives a restart.
    pub fn install(&self, crl_pem: &str) -> Result<(u64, bool, usize), RevocationError> {
        let ca = std::fs::read_to_string(&self.ca_path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                RevocationError::NotEnrolled
            } else {
                files::io("read", &self.ca_path)(e).into()
            }
        })?;
        let offered = parse_checked(crl_pem, &ca)?;
        let mut held = self.held.write().expect("revocations lock");
        if offered.generation < held.generation {
            return Err(RevocationError::Older {
                offered: offered.generation,
                held: held.generation,
            });
        }
        if offered.generation == held.generation && held.generation != 0 {
            return Ok((held.generation, false, held.serials.len()));
        }
        let own = Ownership {
            mode: 0o644,
            uid: nix::unistd::geteuid().as_raw(),
            gid: nix::unistd::getegid().as_raw(),
        };
        files::write_atomic(&self.path, crl_pem.as_bytes(), own)?;
        info!(
            generation = offered.generation,
            revoked = offered.serials.len(),
            "revocation list installed"
        );
        let count = offered.serials.len();
        *held = offered;
        Ok((held.generation, true, count))
    }
}
