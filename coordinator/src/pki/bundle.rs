//! The etcd trust bundle: which CAs etcd's members, its clients and haop trust while one CA
//! gives way to another.
//!
//! etcd does not reload its trusted CAs while it runs, so replacing a CA without downtime is a
//! sequence of rolling restarts (the bundle protocol): first every member and client trusts
//! both CAs, then every leaf is issued by the new one, then the old one is dropped. The same
//! sequence takes over a cluster built by hand (the old CA is the seed's, `haop adopt`) and
//! rotates haop's own etcd CA (`haop certs rotate-ca --etcd`).
//!
//! `<state>/pki/etcd-trust.crt` holds what is trusted now: during a transition the bundle, the
//! CA that issues first (the agent installs a CA file only after checking that its first
//! certificate signed the leaf next to it), then the CA being replaced; afterwards the etcd CA
//! alone. haop's own etcd client ([`trust_path`]), `haop etcd env` (so an etcdctl set up once
//! keeps working through a rotation), and every CA file haop writes next to an etcd certificate
//! use it. A state dir from before any transition has no such file; the etcd CA's certificate
//! is then the whole trust.

use std::path::{Path, PathBuf};

use super::{inspect, PkiError, ETCD_CA};

/// The bundle's file name in the state dir's pki dir.
pub const TRUST_FILE: &str = "etcd-trust.crt";

fn pki(state_dir: &Path) -> PathBuf {
    crate::trust::pki_dir(state_dir)
}

/// The file haop's etcd clients trust: the bundle during a transition, the etcd CA otherwise.
pub fn trust_path(state_dir: &Path) -> PathBuf {
    let bundle = pki(state_dir).join(TRUST_FILE);
    if bundle.is_file() {
        bundle
    } else {
        pki(state_dir).join(format!("{ETCD_CA}.crt"))
    }
}

/// The PEM every etcd CA file should hold now.
pub fn trust_pem(state_dir: &Path) -> Result<String, PkiError> {
    let path = trust_path(state_dir);
    std::fs::read_to_string(&path).map_err(|source| PkiError::Io {
        op: "read",
        path,
        source,
    })
}

/// The PEM blocks of certificates in `text`, each with its markers and a final newline.
pub fn blocks(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in text.lines() {
        let line = line.trim_end();
        if line == "-----BEGIN CERTIFICATE-----" {
            cur = Some(String::new());
        }
        if let Some(c) = cur.as_mut() {
            c.push_str(line);
            c.push('\n');
        }
        if line == "-----END CERTIFICATE-----" {
            out.extend(cur.take());
        }
    }
    out
}

/// `first` followed by each certificate of `others` that is not already there. Every block
/// must be a CA certificate.
pub fn join(first: &str, others: &[&str]) -> Result<String, PkiError> {
    let mut out = String::new();
    let mut seen: Vec<(Option<String>, String)> = Vec::new();
    for pem in std::iter::once(first).chain(others.iter().copied()) {
        for block in blocks(pem) {
            for info in inspect(&block)? {
                if !info.is_ca {
                    return Err(PkiError::NotCaBundle {
                        subject: info.subject.clone(),
                    });
                }
                let key = (info.subject_key_id.clone(), info.serial_hex.clone());
                if seen.contains(&key) {
                    continue;
                }
                seen.push(key);
                out.push_str(&block);
            }
        }
    }
    Ok(out)
}

/// Makes sure the trust file exists (holding the etcd CA when it did not): what `haop init`
/// and `haop etcd env` do, so that a client set up once names the file every rotation updates.
pub fn ensure(state_dir: &Path) -> Result<PathBuf, PkiError> {
    let path = pki(state_dir).join(TRUST_FILE);
    if !path.is_file() {
        let ca = pki(state_dir).join(format!("{ETCD_CA}.crt"));
        let pem = std::fs::read(&ca).map_err(|source| PkiError::Io {
            op: "read",
            path: ca,
            source,
        })?;
        crate::fsio::write_atomic(&path, &pem, 0o644)?;
    }
    Ok(path)
}

/// What is trusted from now on: `pem` (from [`join`]).
pub fn set(state_dir: &Path, pem: &str) -> Result<(), crate::fsio::FsioError> {
    crate::fsio::write_atomic(&pki(state_dir).join(TRUST_FILE), pem.as_bytes(), 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{CertificateAuthority, KeyAlgorithm};

    fn ca(dir: &Path, name: &str) -> String {
        CertificateAuthority::create(
            dir,
            name,
            name,
            KeyAlgorithm::EcdsaP256,
            std::time::Duration::from_secs(3600 * 24),
        )
        .unwrap()
        .cert_pem()
        .to_string()
    }

    #[test]
    fn joins_cas_in_order_without_repeats() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (ca(d.path(), "a-ca"), ca(d.path(), "b-ca"));
        let both = join(&a, &[&b, &a]).unwrap();
        assert_eq!(blocks(&both).len(), 2);
        assert_eq!(blocks(&both)[0], blocks(&a)[0]);
        assert_eq!(join(&both, &[&b]).unwrap(), both);
    }

    #[test]
    fn state_dir_trust_follows_the_bundle() {
        let d = tempfile::tempdir().unwrap();
        let pki = crate::trust::pki_dir(d.path());
        std::fs::create_dir_all(&pki).unwrap();
        let a = ca(&pki, "etcd-ca");
        assert!(trust_path(d.path()).ends_with("etcd-ca.crt"));
        assert_eq!(trust_pem(d.path()).unwrap(), a);
        assert!(ensure(d.path()).unwrap().ends_with(TRUST_FILE));
        assert_eq!(trust_pem(d.path()).unwrap(), a);
        let b = ca(&pki, "next-ca");
        set(d.path(), &join(&a, &[&b]).unwrap()).unwrap();
        assert!(trust_path(d.path()).ends_with(TRUST_FILE));
        assert_eq!(blocks(&trust_pem(d.path()).unwrap()).len(), 2);
    }
}
