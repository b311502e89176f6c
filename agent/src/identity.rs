//! The agent's own identity: its key, its serving certificate and the agent CA it trusts.
//!
//! They live in `<state_dir>/pki/` (agent.key 0600, agent.crt, ca.crt), outside the managed
//! roots, so no RPC can overwrite the agent's trust anchor. Their presence is what "enrolled"
//! means: with them the agent serves mTLS only; without them it serves only enrollment.

use std::path::PathBuf;

use crate::paths::{HostFs, HostPath};

/// Paths of the identity files.
#[derive(Debug, Clone)]
pub struct IdentityStore {
    pub dir: PathBuf,
}

/// What the TLS server needs.
#[derive(Debug, Clone)]
pub struct TlsMaterial {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pem: String,
}

/// Errors reading the identity; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error("agent identity in {dir} is incomplete: {missing} is missing (remove the directory and enroll again)")]
    Incomplete { dir: String, missing: String },
    #[error("cannot read {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl IdentityStore {
    pub fn new(fs: &HostFs, state_dir: &HostPath) -> Self {
        IdentityStore {
            dir: fs.real(state_dir).join("pki"),
        }
    }

    pub fn key_path(&self) -> PathBuf {
        self.dir.join("agent.key")
    }

    pub fn cert_path(&self) -> PathBuf {
        self.dir.join("agent.crt")
    }

    pub fn ca_path(&self) -> PathBuf {
        self.dir.join("ca.crt")
    }

    /// The CA certificate is written last during enrollment: its presence is the commit point.
    pub fn is_enrolled(&self) -> bool {
        self.ca_path().exists()
    }

    /// The TLS material when enrolled, `None` when not.
    pub fn load(&self) -> Result<Option<TlsMaterial>, IdentityError> {
        if !self.is_enrolled() {
            return Ok(None);
        }
        let read = |p: PathBuf| {
            std::fs::read_to_string(&p).map_err(|source| {
                if source.kind() == std::io::ErrorKind::NotFound {
                    IdentityError::Incomplete {
                        dir: self.dir.display().to_string(),
                        missing: p.display().to_string(),
                    }
                } else {
                    IdentityError::Read {
                        path: p.display().to_string(),
                        source,
                    }
                }
            })
        };
        Ok(Some(TlsMaterial {
            cert_pem: read(self.cert_path())?,
            key_pem: read(self.key_path())?,
            ca_pem: read(self.ca_path())?,
        }))
    }
}
