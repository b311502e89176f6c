//! The host's half of the CSR flow: keys are born here and never leave.
//!
//! haop does not copy private keys between machines (the seed scp'd its CA key to every host).
//! Instead the agent generates the host's key in place, writes it with mode 0600, and hands the
//! coordinator only a certificate signing request; the coordinator checks the names, signs, and
//! the agent installs the returned certificate after checking that it is for the key on disk.
//!
//! Lifecycle: [`generate_key_and_csr`] (idempotent: a retried enrollment reuses the key already
//! on disk unless asked to rotate), then [`install_certificate`] (an ensure: `changed` only when
//! the file differs). Nothing here returns, prints or logs a private key.

use std::fmt;
use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, SanType};
use tracing::{info, warn};

use crate::files::{self, FileError, Ownership};

/// Largest key or certificate file read back.
const MAX_PEM_FILE: u64 = 64 * 1024;

/// Errors of key generation and certificate installation; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum CsrError {
    #[error(transparent)]
    File(#[from] FileError),
    #[error("create directory {path}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("unknown key algorithm {0:?} (expected \"ecdsa-p256\" or \"rsa-2048\")")]
    UnknownAlgorithm(String),
    #[error("generating a {algo} key for {path}")]
    KeyGeneration {
        algo: KeyAlgorithm,
        path: PathBuf,
        #[source]
        source: rcgen::Error,
    },
    #[error("no usable private key at {path} (generate one with a certificate request first)")]
    NoKey { path: PathBuf },
    #[error("invalid name {name:?} for a certificate request")]
    InvalidName {
        name: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("building the certificate request for the key in {path}")]
    Request {
        path: PathBuf,
        #[source]
        source: rcgen::Error,
    },
    #[error("refusing to install {path}: {reason}")]
    InvalidCertificate { path: PathBuf, reason: String },
    #[error(
        "refusing to install {cert_path}: the certificate is for another key than the one in \
         {key_path} (request a new certificate for this key)"
    )]
    KeyMismatch {
        cert_path: PathBuf,
        key_path: PathBuf,
    },
}

/// Algorithm of a host key; the same names as the coordinator's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyAlgorithm {
    /// ECDSA P-256 with SHA-256, the default.
    #[default]
    EcdsaP256,
    /// RSA 2048 with PKCS#1 v1.5 SHA-256.
    Rsa2048,
}

impl KeyAlgorithm {
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithm::EcdsaP256 => "ecdsa-p256",
            KeyAlgorithm::Rsa2048 => "rsa-2048",
        }
    }

    fn signature_algorithm(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            KeyAlgorithm::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlgorithm::Rsa2048 => &rcgen::PKCS_RSA_SHA256,
        }
    }

    /// Whether `key` is of this algorithm (for RSA: exactly 2048 bits).
    fn matches(self, key: &KeyPair) -> bool {
        if key.algorithm() != self.signature_algorithm() {
            return false;
        }
        match self {
            KeyAlgorithm::EcdsaP256 => true,
            KeyAlgorithm::Rsa2048 => rsa_bits(key) == Some(2048),
        }
    }

    fn generate(self, path: &Path) -> Result<KeyPair, CsrError> {
        let generated = match self {
            KeyAlgorithm::EcdsaP256 => KeyPair::generate_for(self.signature_algorithm()),
            KeyAlgorithm::Rsa2048 => {
                KeyPair::generate_rsa_for(self.signature_algorithm(), rcgen::RsaKeySize::_2048)
            }
        };
        generated.map_err(|source| CsrError::KeyGeneration {
            algo: self,
            path: path.to_path_buf(),
            source,
        })
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for KeyAlgorithm {
    type Err = CsrError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ecdsa-p256" => Ok(KeyAlgorithm::EcdsaP256),
            "rsa-2048" => Ok(KeyAlgorithm::Rsa2048),
            other => Err(CsrError::UnknownAlgorithm(other.to_string())),
        }
    }
}

/// Owner of the files written here: the agent's own user (root on a host), so that a test run
/// by an unprivileged user writes files it can chown.
fn own(mode: u32) -> Ownership {
    Ownership {
        mode,
        uid: nix::unistd::geteuid().as_raw(),
        gid: nix::unistd::getegid().as_raw(),
    }
}

/// What [`generate_key_and_csr`] returns: the request, and whether the key is new.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyAndCsr {
    /// The certificate signing request, PEM.
    pub csr_pem: String,
    /// Whether a new key was generated (false when the key on disk was reused).
    pub new_key: bool,
}

/// Makes sure a private key of `algo` is at `key_path` (mode 0600, parents created with mode
/// 0700) and returns a CSR for it, PEM, with CN `common_name`, O `organization` and the given
/// DNS and IP subject alternative names.
///
/// A valid key of the requested algorithm already at `key_path` is reused, so a retried
/// enrollment asks for a certificate for the same key; `rotate` forces a new key. A key of
/// another algorithm, or a file that is not a key, is replaced.
pub fn generate_key_and_csr(
    key_path: &Path,
    algo: KeyAlgorithm,
    common_name: &str,
    organization: Option<&str>,
    dns: &[String],
    ips: &[IpAddr],
    rotate: bool,
) -> Result<KeyAndCsr, CsrError> {
    // Names first: a request that cannot be built must not touch the key.
    let params = request_params(common_name, organization, dns, ips)?;
    let (key, new_key) = ensure_key(key_path, algo, rotate)?;
    let csr_pem = params
        .serialize_request(&key)
        .and_then(|csr| csr.pem())
        .map_err(|source| CsrError::Request {
            path: key_path.to_path_buf(),
            source,
        })?;
    Ok(KeyAndCsr { csr_pem, new_key })
}

fn request_params(
    common_name: &str,
    organization: Option<&str>,
    dns: &[String],
    ips: &[IpAddr],
) -> Result<CertificateParams, CsrError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    if let Some(o) = organization {
        dn.push(DnType::OrganizationName, o);
    }
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    for name in dns {
        let ia5 = rcgen::string::Ia5String::try_from(name.as_str()).map_err(|source| {
            CsrError::InvalidName {
                name: name.clone(),
                source,
            }
        })?;
        params.subject_alt_names.push(SanType::DnsName(ia5));
    }
    params
        .subject_alt_names
        .extend(ips.iter().copied().map(SanType::IpAddress));
    Ok(params)
}

/// The key at `path`: the one there if usable and not rotating, else a new one written
/// atomically; and whether it is new.
fn ensure_key(path: &Path, algo: KeyAlgorithm, rotate: bool) -> Result<(KeyPair, bool), CsrError> {
    if !rotate {
        if let Some((key, pem)) = existing_key(path)? {
            if algo.matches(&key) {
                // Same content: only a wrong mode or owner is repaired.
                files::ensure_file(path, &pem, own(0o600))?;
                return Ok((key, false));
            }
            warn!(path = %path.display(), algorithm = %algo, "existing key is of another algorithm; generating a new one");
        }
    }
    let key = algo.generate(path)?;
    create_private_parents(path)?;
    files::write_atomic(path, key.serialize_pem().as_bytes(), own(0o600))?;
    info!(path = %path.display(), algorithm = %algo, rotate, "private key generated");
    Ok((key, true))
}

/// The key at `path` and its bytes; `None` when there is no file or it holds no usable key.
pub(crate) fn existing_key(path: &Path) -> Result<Option<(KeyPair, Vec<u8>)>, CsrError> {
    match fs::symlink_metadata(path) {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(FileError::Io {
                op: "inspect",
                path: path.display().to_string(),
                source: e,
            }
            .into())
        }
    }
    let (bytes, _mode) = files::read_capped(path, MAX_PEM_FILE)?;
    let parsed = std::str::from_utf8(&bytes)
        .ok()
        .and_then(|pem| KeyPair::from_pem(pem).ok());
    match parsed {
        Some(key) => Ok(Some((key, bytes))),
        None => {
            warn!(path = %path.display(), "existing file is not a usable private key; generating a new one");
            Ok(None)
        }
    }
}

/// Creates the missing parents of a key with mode 0700.
fn create_private_parents(path: &Path) -> Result<(), CsrError> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() && !parent.is_dir() => fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(|source| CsrError::CreateDir {
                path: parent.to_path_buf(),
                source,
            }),
        _ => Ok(()),
    }
}

/// Installs the certificate `pem` at `cert_path` (mode 0644) after checking that its first
/// certificate is for the key at `key_path`; a PEM holding a private key is refused. Returns
/// whether the file changed.
pub fn install_certificate(cert_path: &Path, pem: &str, key_path: &Path) -> Result<bool, CsrError> {
    let invalid = |reason: String| CsrError::InvalidCertificate {
        path: cert_path.to_path_buf(),
        reason,
    };
    let mut leaf_key: Option<Vec<u8>> = None;
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|e| invalid(format!("invalid PEM ({e})")))?;
        if block.label != "CERTIFICATE" {
            return Err(invalid(format!(
                "the PEM holds a {:?} block; only certificates are installed",
                block.label
            )));
        }
        let cert = block
            .parse_x509()
            .map_err(|e| invalid(format!("not a certificate ({e})")))?;
        if leaf_key.is_none() {
            leaf_key = Some(cert.public_key().subject_public_key.data.to_vec());
        }
    }
    let leaf_key = leaf_key.ok_or_else(|| invalid("no certificate in the PEM".into()))?;

    let (key, _) = existing_key(key_path)?.ok_or_else(|| CsrError::NoKey {
        path: key_path.to_path_buf(),
    })?;
    if key.public_key_raw() != leaf_key.as_slice() {
        return Err(CsrError::KeyMismatch {
            cert_path: cert_path.to_path_buf(),
            key_path: key_path.to_path_buf(),
        });
    }
    files::prepare_parent(cert_path, true)?;
    let written = files::ensure_file(cert_path, pem.as_bytes(), own(0o644))?;
    if written.changed {
        info!(path = %cert_path.display(), "certificate installed");
    }
    Ok(written.changed)
}

/// Installs the CA certificate `ca_pem` at `ca_path` (mode 0644) after checking that its first
/// block is a CA certificate that signed the certificate `issued_pem` (the one just installed
/// with [`install_certificate`]), and that every further block (a trust bundle while one CA
/// replaces another) is a CA certificate too: nothing else lands in a file etcd trusts.
/// Returns whether the file changed.
pub fn install_ca_certificate(
    ca_path: &Path,
    ca_pem: &str,
    issued_pem: &str,
) -> Result<bool, CsrError> {
    let invalid = |reason: String| CsrError::InvalidCertificate {
        path: ca_path.to_path_buf(),
        reason,
    };
    let (_, ca_block) = x509_parser::pem::parse_x509_pem(ca_pem.as_bytes())
        .map_err(|e| invalid(format!("invalid PEM ({e})")))?;
    if ca_block.label != "CERTIFICATE" {
        return Err(invalid(format!(
            "a {:?} block is not a certificate",
            ca_block.label
        )));
    }
    let ca = ca_block
        .parse_x509()
        .map_err(|e| invalid(format!("not a certificate ({e})")))?;
    if !ca.is_ca() {
        return Err(invalid("not a CA certificate".into()));
    }
    for (i, block) in x509_parser::pem::Pem::iter_from_buffer(ca_pem.as_bytes()).enumerate() {
        let block = block.map_err(|e| invalid(format!("block {} is not PEM ({e})", i + 1)))?;
        let cert = (block.label == "CERTIFICATE")
            .then(|| block.parse_x509().ok())
            .flatten()
            .ok_or_else(|| invalid(format!("block {} is not a certificate", i + 1)))?;
        if !cert.is_ca() {
            return Err(invalid(format!("block {} is not a CA certificate", i + 1)));
        }
    }
    let (_, issued_block) = x509_parser::pem::parse_x509_pem(issued_pem.as_bytes())
        .map_err(|e| invalid(format!("the issued certificate is not PEM ({e})")))?;
    let issued = issued_block
        .parse_x509()
        .map_err(|e| invalid(format!("the issued certificate does not parse ({e})")))?;
    issued
        .verify_signature(Some(ca.public_key()))
        .map_err(|_| invalid("this CA did not sign the certificate it comes with".into()))?;
    files::prepare_parent(ca_path, true)?;
    let written = files::ensure_file(ca_path, ca_pem.as_bytes(), own(0o644))?;
    if written.changed {
        info!(path = %ca_path.display(), "CA certificate installed");
    }
    Ok(written.changed)
}

/// Bits of an RSA key's modulus.
fn rsa_bits(key: &KeyPair) -> Option<usize> {
    use rcgen::PublicKeyData;
    use x509_parser::prelude::FromDer;
    let spki_der = key.subject_public_key_info();
    let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&spki_der).ok()?;
    match spki.parsed().ok()? {
        x509_parser::public_key::PublicKey::RSA(rsa) => {
            let m = rsa.modulus;
            let start = m.iter().position(|b| *b != 0)?;
            Some((m.len() - start) * 8 - m[start].leading_zeros() as usize)
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use x509_parser::prelude::FromDer;

    use super::*;

    fn names() -> (Vec<String>, Vec<IpAddr>) {
        (
            vec!["etcd1".into(), "etcd1.lab.local".into(), "localhost".into()],
            vec!["10.77.1.11".parse().unwrap(), "127.0.0.1".parse().unwrap()],
        )
    }

    fn csr_for(key_path: &Path, algo: KeyAlgorithm, rotate: bool) -> String {
        let (dns, ips) = names();
        generate_key_and_csr(key_path, algo, "etcd1", None, &dns, &ips, rotate)
            .unwrap()
            .csr_pem
    }

    /// The public key a CSR is for, raw.
    fn csr_key(csr_pem: &str) -> Vec<u8> {
        let (_, pem) = x509_parser::pem::parse_x509_pem(csr_pem.as_bytes()).unwrap();
        let (_, csr) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&pem.contents)
                .unwrap();
        csr.certification_request_info
            .subject_pki
            .subject_public_key
            .data
            .to_vec()
    }

    fn mode(p: &Path) -> u32 {
        fs::metadata(p).unwrap().mode() & 0o7777
    }

    fn self_signed_for(key: &KeyPair) -> String {
        CertificateParams::new(vec!["etcd1".to_string()])
            .unwrap()
            .self_signed(key)
            .unwrap()
            .pem()
    }

    #[test]
    fn key_is_private_and_reused_until_rotated() {
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join("pki/etcd/server.key");
        let (dns, ips) = names();
        let generate = |rotate| {
            generate_key_and_csr(
                &key_path,
                KeyAlgorithm::EcdsaP256,
                "etcd1",
                None,
                &dns,
                &ips,
                rotate,
            )
            .unwrap()
        };
        let first_csr = generate(false);
        assert!(first_csr.new_key);
        let csr = first_csr.csr_pem;
        assert!(csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
        assert!(!csr.contains("PRIVATE KEY"));
        assert_eq!(mode(&key_path), 0o600);
        assert_eq!(mode(&dir.path().join("pki")), 0o700);
        assert_eq!(mode(&dir.path().join("pki/etcd")), 0o700);
        let first = fs::read(&key_path).unwrap();

        // A retried enrollment asks for the same key, and repairs a loosened mode.
        fs::set_permissions(&key_path, fs::Permissions::from_mode(0o644)).unwrap();
        let again = generate(false);
        assert!(!again.new_key);
        assert_eq!(fs::read(&key_path).unwrap(), first);
        assert_eq!(csr_key(&again.csr_pem), csr_key(&csr));
        assert_eq!(mode(&key_path), 0o600);

        let rotated = generate(true);
        assert!(rotated.new_key);
        let rotated = rotated.csr_pem;
        assert_ne!(fs::read(&key_path).unwrap(), first);
        assert_ne!(csr_key(&rotated), csr_key(&csr));
        // No temp files are left behind.
        assert_eq!(fs::read_dir(key_path.parent().unwrap()).unwrap().count(), 1);
    }

    #[test]
    fn another_algorithm_or_garbage_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join("peer.key");
        let ec = csr_for(&key_path, KeyAlgorithm::EcdsaP256, false);
        let rsa = csr_for(&key_path, KeyAlgorithm::Rsa2048, false);
        assert_ne!(csr_key(&ec), csr_key(&rsa));
        let pem = fs::read_to_string(&key_path).unwrap();
        let key = KeyPair::from_pem(&pem).unwrap();
        assert!(KeyAlgorithm::Rsa2048.matches(&key));
        assert!(!KeyAlgorithm::EcdsaP256.matches(&key));

        fs::write(&key_path, b"not a key").unwrap();
        csr_for(&key_path, KeyAlgorithm::EcdsaP256, false);
        let key = KeyPair::from_pem(&fs::read_to_string(&key_path).unwrap()).unwrap();
        assert!(KeyAlgorithm::EcdsaP256.matches(&key));
    }

    #[test]
    fn a_bad_name_touches_no_key() {
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join("k.key");
        let err = generate_key_and_csr(
            &key_path,
            KeyAlgorithm::EcdsaP256,
            "etcd1",
            None,
            &["étcd1".to_string()],
            &[],
            false,
        )
        .unwrap_err();
        assert!(matches!(err, CsrError::InvalidName { .. }), "{err:?}");
        assert!(!key_path.exists());
    }

    #[test]
    fn csr_carries_the_names_and_organization() {
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join("admin.key");
        let (dns, ips) = names();
        let csr = generate_key_and_csr(
            &key_path,
            KeyAlgorithm::EcdsaP256,
            "haop",
            Some("haop:admin"),
            &dns,
            &ips,
            false,
        )
        .unwrap()
        .csr_pem;
        let parsed = rcgen::CertificateSigningRequestParams::from_pem(&csr).unwrap();
        let subject: Vec<_> = parsed.params.distinguished_name.iter().collect();
        assert_eq!(subject.len(), 2);
        assert_eq!(parsed.params.subject_alt_names.len(), 5);
    }

    #[test]
    fn install_checks_the_key_and_is_an_ensure() {
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join("server.key");
        let cert_path = dir.path().join("certs/server.crt");
        csr_for(&key_path, KeyAlgorithm::EcdsaP256, false);
        let key = KeyPair::from_pem(&fs::read_to_string(&key_path).unwrap()).unwrap();
        let good = self_signed_for(&key);
        assert!(install_certificate(&cert_path, &good, &key_path).unwrap());
        assert_eq!(mode(&cert_path), 0o644);
        assert!(!install_certificate(&cert_path, &good, &key_path).unwrap());

        let other = KeyPair::generate().unwrap();
        let err = install_certificate(&cert_path, &self_signed_for(&other), &key_path).unwrap_err();
        assert!(matches!(err, CsrError::KeyMismatch { .. }), "{err:?}");
        assert!(err.to_string().contains("server.key"), "{err}");
        assert_eq!(fs::read_to_string(&cert_path).unwrap(), good);

        let with_key = format!("{good}{}", key.serialize_pem());
        let err = install_certificate(&cert_path, &with_key, &key_path).unwrap_err();
        assert!(
            matches!(err, CsrError::InvalidCertificate { .. }),
            "{err:?}"
        );
        let err = install_certificate(&cert_path, "nothing", &key_path).unwrap_err();
        assert!(
            matches!(err, CsrError::InvalidCertificate { .. }),
            "{err:?}"
        );
        let err =
            install_certificate(&cert_path, &good, &dir.path().join("missing.key")).unwrap_err();
        assert!(matches!(err, CsrError::NoKey { .. }), "{err:?}");
    }

    fn ca(cn: &str) -> (KeyPair, CertificateParams, String) {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let pem = params.self_signed(&key).unwrap().pem();
        (key, params, pem)
    }

    #[test]
    fn ca_certificate_is_installed_only_with_what_it_signed() {
        let dir = tempfile::tempdir().unwrap();
        let key_path = dir.path().join("server.key");
        let ca_path = dir.path().join("ca.crt");
        csr_for(&key_path, KeyAlgorithm::EcdsaP256, false);
        let host_key = KeyPair::from_pem(&fs::read_to_string(&key_path).unwrap()).unwrap();
        let (ca_key, ca_params, ca_pem) = ca("etcd-ca");
        let issuer = rcgen::Issuer::from_params(&ca_params, &ca_key);
        let leaf = CertificateParams::new(vec!["etcd1".to_string()])
            .unwrap()
            .signed_by(&host_key, &issuer)
            .unwrap()
            .pem();
        assert!(install_certificate(&dir.path().join("server.crt"), &leaf, &key_path).unwrap());
        assert!(install_ca_certificate(&ca_path, &ca_pem, &leaf).unwrap());
        assert!(!install_ca_certificate(&ca_path, &ca_pem, &leaf).unwrap());
        // A bundle: the issuing CA first, then another CA; never a leaf among them.
        let (_, _, other_ca) = ca("other-ca");
        let bundle = format!("{ca_pem}{other_ca}");
        assert!(install_ca_certificate(&ca_path, &bundle, &leaf).unwrap());
        let e = install_ca_certificate(&ca_path, &format!("{ca_pem}{leaf}"), &leaf).unwrap_err();
        assert!(e.to_string().contains("block 2"), "{e}");
        assert!(install_ca_certificate(&ca_path, &ca_pem, &leaf).unwrap());
        assert_eq!(mode(&ca_path), 0o644);

        let (_, _, other_ca) = ca("other-ca");
        let err = install_ca_certificate(&ca_path, &other_ca, &leaf).unwrap_err();
        assert!(err.to_string().contains("did not sign"), "{err}");
        let err = install_ca_certificate(&ca_path, &leaf, &leaf).unwrap_err();
        assert!(err.to_string().contains("not a CA"), "{err}");
        assert_eq!(fs::read_to_string(&ca_path).unwrap(), ca_pem);
    }
}
