//! Each channel's revocation list, kept in `<state-dir>/pki/<ca>.crl`.
//!
//! The file is a cache of what the store says (the revoked serials and the channel's number),
//! signed by the channel's CA: it is made again whenever its number differs from the store's,
//! and otherwise reused byte for byte, so that `haop plan` sees an unchanged CRL file on etcd
//! hosts as unchanged. Operators can read it with `openssl crl -in <file> -text`.

use std::path::{Path, PathBuf};

use x509_parser::prelude::FromDer;
use x509_parser::revocation_list::CertificateRevocationList;

use super::store::{ca_name, IdentityStore};
use super::{Channel, IdentityError};
use crate::pki::CertificateAuthority;
use crate::trust::pki_dir;

/// `<state-dir>/pki/agent-ca.crl` or `etcd-ca.crl`.
pub fn path(state_dir: &Path, channel: Channel) -> PathBuf {
    pki_dir(state_dir).join(format!("{}.crl", ca_name(channel)))
}

/// The CRL number of a PEM CRL, if it parses.
pub fn number_of(pem: &str) -> Option<u64> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).ok()?;
    let (_, crl) = CertificateRevocationList::from_der(&block.contents).ok()?;
    u64::try_from(crl.crl_number()?).ok()
}

/// The channel's current list, `(number, pem)`: the file when it carries the store's number,
/// else a new one signed by `ca` and written there.
pub fn current(
    state_dir: &Path,
    channel: Channel,
    ca: &CertificateAuthority,
) -> Result<(u64, String), IdentityError> {
    let store = IdentityStore::new(state_dir);
    let number = store.generation(channel)?;
    let file = path(state_dir, channel);
    if let Ok(pem) = std::fs::read_to_string(&file) {
        if number_of(&pem) == Some(number) {
            return Ok((number, pem));
        }
    }
    let pem = ca.revocation_list(&store.revoked_serials(channel)?, number)?;
    crate::fsio::write_atomic(&file, pem.as_bytes(), 0o644)?;
    Ok((number, pem))
}

/// The CA that signs `channel`'s lists now: the etcd CA; the agent CA, or during its rotation
/// the one every agent accepts lists from ([`crate::trust::rotation::crl_signer`]).
pub fn signer(state_dir: &Path, channel: Channel) -> Result<CertificateAuthority, IdentityError> {
    Ok(match channel {
        Channel::Agent => crate::trust::rotation::crl_signer(state_dir)?,
        Channel::Etcd => CertificateAuthority::load(&pki_dir(state_dir), ca_name(channel))?,
    })
}

/// Whether the list `pem` is signed by `ca`.
pub fn signed_by(pem: &str, ca: &CertificateAuthority) -> bool {
    let Ok((_, block)) = x509_parser::pem::parse_x509_pem(pem.as_bytes()) else {
        return false;
    };
    let Ok((_, crl)) = CertificateRevocationList::from_der(&block.contents) else {
        return false;
    };
    let Ok((_, ca_block)) = x509_parser::pem::parse_x509_pem(ca.cert_pem().as_bytes()) else {
        return false;
    };
    let Ok(ca_cert) = ca_block.parse_x509() else {
        return false;
    };
    crl.issuer().as_raw() == ca_cert.subject().as_raw()
        && crl.verify_signature(ca_cert.public_key()).is_ok()
}

/// The agent channel's list when anything was ever revoked on it (agents need none before).
pub fn agent_list(state_dir: &Path) -> Result<Option<(u64, String)>, IdentityError> {
    if IdentityStore::new(state_dir).generation(Channel::Agent)? == 0 {
        return Ok(None);
    }
    let ca = signer(state_dir, Channel::Agent)?;
    current(state_dir, Channel::Agent, &ca).map(Some)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::{IdentityRole, IssueRequest};
    use crate::pki::{KeyAlgorithm, ETCD_CA};
    use crate::trust::{init, InitOptions};

    #[test]
    fn the_file_follows_the_store_and_is_reused_when_current() {
        let state = tempfile::tempdir().unwrap();
        init(state.path(), InitOptions::default()).unwrap();
        let ca = CertificateAuthority::load(&pki_dir(state.path()), ETCD_CA).unwrap();
        let (n0, pem0) = current(state.path(), Channel::Etcd, &ca).unwrap();
        assert_eq!(n0, 0);
        assert_eq!(current(state.path(), Channel::Etcd, &ca).unwrap().1, pem0);
        assert!(agent_list(state.path()).unwrap().is_none());

        let out = tempfile::tempdir().unwrap();
        let store = IdentityStore::new(state.path());
        let issued = store
            .issue(&IssueRequest {
                name: "backup".into(),
                channel: Channel::Etcd,
                role: IdentityRole::Reader,
                ttl: std::time::Duration::from_secs(3600),
                out_dir: out.path().to_path_buf(),
                algorithm: KeyAlgorithm::EcdsaP256,
            })
            .unwrap();
        store.revoke("backup", None).unwrap();
        let (n1, pem1) = current(state.path(), Channel::Etcd, &ca).unwrap();
        assert_eq!(n1, 1);
        assert_ne!(pem1, pem0);
        let (_, block) = x509_parser::pem::parse_x509_pem(pem1.as_bytes()).unwrap();
        let (_, crl) = CertificateRevocationList::from_der(&block.contents).unwrap();
        let serials: Vec<String> = crl
            .iter_revoked_certificates()
            .map(|r| crate::identity::normalize_serial_hex(&hex::encode(r.raw_serial())))
            .collect();
        assert_eq!(serials, vec![issued.record.serial]);
        // Signed by the etcd CA.
        let (_, ca_block) = x509_parser::pem::parse_x509_pem(ca.cert_pem().as_bytes()).unwrap();
        let ca_cert = ca_block.parse_x509().unwrap();
        crl.verify_signature(ca_cert.public_key()).unwrap();
    }
}
