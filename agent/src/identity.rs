//! The agent's own identity: its key, its serving certificate and the CAs it trusts.
//!
//! They live in `<state_dir>/pki/` (agent.key 0600, agent.crt, ca.crt), outside the managed
//! roots, so no file RPC can overwrite the agent's trust anchor. Their presence is what
//! "enrolled" means: with them the agent serves mTLS only; without them it serves only
//! enrollment. `ca.crt` is the trust bundle ([`crate::trust`]): the pinned agent CA after
//! enrollment, old and new CA during a rotation of the agent CA.
//!
//! Rotating the serving certificate (`CreateServingCsr`, then `InstallServingCertificate`)
//! makes a new key beside the one in use, `agent.key.next` (reused until installed, so a retried
//! rotation asks for the same key), and swaps key and certificate in three steps, each a rename
//! or an atomic write: `agent.crt.next` written, `agent.key.next` renamed over `agent.key`,
//! `agent.crt.next` renamed over `agent.crt`. A crash between the two renames leaves the new key
//! beside the old certificate; [`IdentityStore::load`] finishes the swap before it reads them,
//! so the agent always starts with a matching pair.

use std::path::{Path, PathBuf};

use tracing::{info, warn};

use crate::csr::{self, CsrError};
use crate::files::{self, Ownership};
use crate::paths::{HostFs, HostPath};
use crate::trust::{self, CaCert, TrustError};

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
    /// The trust bundle: one CA certificate or more.
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
    #[error("cannot finish the serving certificate swap in {dir}")]
    Swap {
        dir: String,
        #[source]
        source: std::io::Error,
    },
}

/// Why a new serving certificate was refused or could not be put in use.
#[derive(Debug, thiserror::Error)]
pub enum ServingError {
    #[error("the serving certificate: {0}")]
    Invalid(String),
    #[error(
        "the serving certificate ({subject}) is not issued by a CA this agent trusts; the \
         coordinator could not verify it (install a trust bundle with its CA first)"
    )]
    NotFromBundle { subject: String },
    #[error(
        "the serving certificate is for neither the pending key ({pending}) nor the key in use \
         ({current}); ask for a new CSR with CreateServingCsr"
    )]
    KeyMismatch { pending: String, current: String },
    #[error(transparent)]
    Trust(#[from] TrustError),
    #[error(transparent)]
    Csr(#[from] CsrError),
    #[error(transparent)]
    File(#[from] files::FileError),
}

fn own(mode: u32) -> Ownership {
    Ownership {
        mode,
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
    }
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

    /// The key `CreateServingCsr` makes, until `InstallServingCertificate` puts it in use.
    pub fn pending_key_path(&self) -> PathBuf {
        self.dir.join("agent.key.next")
    }

    /// The new certificate, for the moment between its write and its rename.
    fn pending_cert_path(&self) -> PathBuf {
        self.dir.join("agent.crt.next")
    }

    /// The CA certificate is written last during enrollment: its presence is the commit point.
    pub fn is_enrolled(&self) -> bool {
        self.ca_path().exists()
    }

    /// The TLS material when enrolled, `None` when not. A serving certificate swap that a
    /// crash interrupted is finished first.
    pub fn load(&self) -> Result<Option<TlsMaterial>, IdentityError> {
        if !self.is_enrolled() {
            return Ok(None);
        }
        self.finish_swap()?;
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

    /// The trust bundle in `ca.crt`.
    pub fn bundle(&self) -> Result<Vec<CaCert>, TrustError> {
        let pem = std::fs::read_to_string(self.ca_path()).map_err(|e| TrustError::Format {
            what: "the trust bundle",
            reason: format!("cannot read {}: {e}", self.ca_path().display()),
        })?;
        trust::read_bundle(&pem)
    }

    /// Writes `cas` as the trust bundle; answers whether the file changed.
    pub fn write_bundle(&self, cas: &[CaCert]) -> Result<bool, files::FileError> {
        let pem: String = cas.iter().map(CaCert::pem).collect();
        Ok(files::ensure_file(&self.ca_path(), pem.as_bytes(), own(0o644))?.changed)
    }

    /// The public key (raw) of the key at `path`, if there is a usable one.
    fn public_key(path: &Path) -> Result<Option<Vec<u8>>, CsrError> {
        Ok(csr::existing_key(path)?.map(|(k, _)| k.public_key_raw().to_vec()))
    }

    /// When `agent.crt.next` is there and is for `agent.key`, the swap stopped between its two
    /// renames: the certificate takes its place. Otherwise a leftover is left for the next
    /// `InstallServingCertificate` (it overwrites it).
    fn finish_swap(&self) -> Result<(), IdentityError> {
        let next = self.pending_cert_path();
        let Ok(pem) = std::fs::read_to_string(&next) else {
            return Ok(());
        };
        let key = Self::public_key(&self.key_path()).ok().flatten();
        let cert_key = leaf_public_key(&pem).ok();
        if key.is_some() && key == cert_key {
            std::fs::rename(&next, self.cert_path()).map_err(|source| IdentityError::Swap {
                dir: self.dir.display().to_string(),
                source,
            })?;
            let _ = files::sync_dir(&self.cert_path());
            warn!(cert = %self.cert_path().display(), "finished a serving certificate swap that was interrupted");
        }
        Ok(())
    }

    /// Puts the serving certificate `pem` in use (see the module doc), after checking it against
    /// `bundle`. Answers whether anything changed.
    pub fn install_serving(&self, pem: &str, bundle: &[CaCert]) -> Result<bool, ServingError> {
        let certs = trust::certificates(pem, "the serving certificate")?;
        let [der] = certs.as_slice() else {
            return Err(ServingError::Invalid(format!(
                "expected one certificate, got {}",
                certs.len()
            )));
        };
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|e| ServingError::Invalid(e.to_string()))?;
        if cert.is_ca() {
            return Err(ServingError::Invalid("it is a CA certificate".into()));
        }
        if !cert.validity().is_valid() {
            return Err(ServingError::Invalid(
                "it is not valid now (check the clocks)".into(),
            ));
        }
        if let Ok(Some(eku)) = cert.extended_key_usage() {
            if !eku.value.server_auth && !eku.value.any {
                return Err(ServingError::Invalid(
                    "it is not for server authentication (extended key usage)".into(),
                ));
            }
        }
        if !bundle.iter().any(|ca| ca.issued(&cert)) {
            return Err(ServingError::NotFromBundle {
                subject: cert.subject().to_string(),
            });
        }
        let leaf_key = cert.public_key().subject_public_key.data.to_vec();
        let (key, pending) = (self.key_path(), self.pending_key_path());
        if Self::public_key(&pending)?.as_deref() == Some(leaf_key.as_slice()) {
            let next = self.pending_cert_path();
            files::write_atomic(&next, pem.as_bytes(), own(0o644))?;
            std::fs::rename(&pending, &key).map_err(files::io("rename", &pending))?;
            files::sync_dir(&key)?;
            std::fs::rename(&next, self.cert_path()).map_err(files::io("rename", &next))?;
            files::sync_dir(&key)?;
            info!(cert = %self.cert_path().display(), "serving certificate installed with a new key");
            return Ok(true);
        }
        if Self::public_key(&key)?.as_deref() == Some(leaf_key.as_slice()) {
            let written = files::ensure_file(&self.cert_path(), pem.as_bytes(), own(0o644))?;
            if written.changed {
                info!(cert = %self.cert_path().display(), "serving certificate installed");
            }
            return Ok(written.changed);
        }
        Err(ServingError::KeyMismatch {
            pending: pending.display().to_string(),
            current: key.display().to_string(),
        })
    }
}

/// The raw public key of the first certificate of `pem`.
fn leaf_public_key(pem: &str) -> Result<Vec<u8>, TrustError> {
    let certs = trust::certificates(pem, "the certificate")?;
    let der = certs.first().ok_or(TrustError::Empty)?;
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|e| TrustError::Format {
        what: "the certificate",
        reason: e.to_string(),
    })?;
    Ok(cert.public_key().subject_public_key.data.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    };

    fn store() -> (tempfile::TempDir, IdentityStore) {
        let dir = tempfile::tempdir().unwrap();
        let s = IdentityStore {
            dir: dir.path().join("pki"),
        };
        std::fs::create_dir_all(&s.dir).unwrap();
        (dir, s)
    }

    fn ca(cn: &str) -> (CertificateParams, KeyPair, Vec<CaCert>) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, cn);
        let pem = params.self_signed(&key).unwrap().pem();
        (params, key, trust::parse_bundle(&pem).unwrap())
    }

    fn serving(params: &CertificateParams, ca_key: &KeyPair, key: &KeyPair) -> String {
        let mut leaf = CertificateParams::new(vec!["etcd1".to_string()]).unwrap();
        leaf.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        leaf.signed_by(key, &Issuer::from_params(params, ca_key))
            .unwrap()
            .pem()
    }

    fn key_at(path: &Path) -> KeyPair {
        KeyPair::from_pem(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn a_new_key_and_certificate_replace_the_old_pair() {
        let (_d, s) = store();
        let (old_params, old_key, old_bundle) = ca("old");
        let (new_params, new_key, new_bundle) = ca("new");
        let key = KeyPair::generate().unwrap();
        std::fs::write(s.key_path(), key.serialize_pem()).unwrap();
        let old_cert = serving(&old_params, &old_key, &key);
        std::fs::write(s.cert_path(), &old_cert).unwrap();
        std::fs::write(s.ca_path(), old_bundle[0].pem()).unwrap();

        let names = vec!["etcd1".to_string()];
        let csr = csr::generate_key_and_csr(
            &s.pending_key_path(),
            csr::KeyAlgorithm::EcdsaP256,
            "etcd1",
            None,
            &names,
            &[],
            false,
        )
        .unwrap();
        assert!(csr.new_key);
        let pending = key_at(&s.pending_key_path());
        let new_cert = serving(&new_params, &new_key, &pending);

        // From a CA the agent does not trust: refused, nothing changed.
        let err = s.install_serving(&new_cert, &old_bundle).unwrap_err();
        assert!(matches!(err, ServingError::NotFromBundle { .. }), "{err}");
        assert_eq!(std::fs::read_to_string(s.cert_path()).unwrap(), old_cert);

        let both: Vec<CaCert> = old_bundle.iter().chain(&new_bundle).cloned().collect();
        assert!(s.install_serving(&new_cert, &both).unwrap());
        assert_eq!(std::fs::read_to_string(s.cert_path()).unwrap(), new_cert);
        assert_eq!(
            key_at(&s.key_path()).public_key_raw(),
            pending.public_key_raw()
        );
        assert!(!s.pending_key_path().exists());
        // Again: the certificate in use, nothing to do.
        assert!(!s.install_serving(&new_cert, &both).unwrap());
        let m = s.load().unwrap().unwrap();
        assert_eq!(m.cert_pem, new_cert);

        // A certificate for another key is refused.
        let other = serving(&new_params, &new_key, &KeyPair::generate().unwrap());
        let err = s.install_serving(&other, &both).unwrap_err();
        assert!(matches!(err, ServingError::KeyMismatch { .. }), "{err}");
        // A CA certificate, or a key in the text, is refused.
        let err = s
            .install_serving(&format!("{new_cert}{}", pending.serialize_pem()), &both)
            .unwrap_err();
        assert!(err.to_string().contains("only certificates"), "{err}");
    }

    #[test]
    fn a_swap_cut_between_its_renames_is_finished_at_load() {
        let (_d, s) = store();
        let (params, ca_key, bundle) = ca("ca");
        let old = KeyPair::generate().unwrap();
        std::fs::write(s.cert_path(), serving(&params, &ca_key, &old)).unwrap();
        std::fs::write(s.ca_path(), bundle[0].pem()).unwrap();
        // The new key is in place, its certificate still beside it.
        let new = KeyPair::generate().unwrap();
        std::fs::write(s.key_path(), new.serialize_pem()).unwrap();
        let new_cert = serving(&params, &ca_key, &new);
        std::fs::write(s.pending_cert_path(), &new_cert).unwrap();
        let m = s.load().unwrap().unwrap();
        assert_eq!(m.cert_pem, new_cert);
        assert!(!s.pending_cert_path().exists());

        // A leftover for another key (the swap never began) is left alone.
        let stray = serving(&params, &ca_key, &KeyPair::generate().unwrap());
        std::fs::write(s.pending_cert_path(), &stray).unwrap();
        let m = s.load().unwrap().unwrap();
        assert_eq!(m.cert_pem, new_cert);
    }
}
