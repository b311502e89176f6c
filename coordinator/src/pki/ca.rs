//! A certificate authority in the state dir: `<name>.crt` (0644) and `<name>.key` (0600).
//!
//! Created once by `haop init` ([`CertificateAuthority::create`] refuses to overwrite: a new CA
//! would orphan every certificate already issued), loaded by every later command. It signs the
//! CSRs of hosts after checking their names, and issues haop's own client certificates locally.

use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DistinguishedName,
    DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose, PublicKeyData, SerialNumber,
};
use time::OffsetDateTime;
use tracing::info;
use x509_parser::prelude::FromDer;

use crate::fsio;

use super::{check_lifetime, io_err, names, spki_pin, KeyAlgorithm, PkiError, SigningRequest};

/// Largest key or certificate file read from the state dir.
const MAX_PEM_FILE: u64 = 1024 * 1024;

/// One of haop's CAs, loaded with its key.
#[derive(Debug)]
pub struct CertificateAuthority {
    name: String,
    cert_path: PathBuf,
    key_path: PathBuf,
    cert_pem: String,
    spki_der: Vec<u8>,
    common_name: String,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
    algorithm: KeyAlgorithm,
    /// Owns the CA key; its Debug output omits the key.
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and key that haop issued for itself, written in the state dir.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalCert {
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
    pub cert_pem: String,
}

impl CertificateAuthority {
    /// Creates a CA: a new key and a self-signed certificate valid for `lifetime`, written to
    /// `<dir>/<name>.key` (0600) and `<dir>/<name>.crt` (0644). Refuses, naming the file, when
    /// either already exists.
    pub fn create(
        dir: &Path,
        name: &str,
        common_name: &str,
        algo: KeyAlgorithm,
        lifetime: Duration,
    ) -> Result<Self, PkiError> {
        check_name(name)?;
        check_lifetime(lifetime).map_err(|reason| PkiError::InvalidLifetime {
            value: format!("{lifetime:?}"),
            reason,
        })?;
        let (cert_path, key_path) = paths(dir, name);
        for path in [&key_path, &cert_path] {
            if fs::symlink_metadata(path).is_ok() {
                return Err(PkiError::AlreadyExists { path: path.clone() });
            }
        }
        fsio::create_private_dir(dir)?;

        let key = algo.generate()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(common_name, None);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = now();
        params.not_before = now - time::Duration::minutes(1);
        params.not_after = now + lifetime;
        params.serial_number = Some(random_serial()?);
        let cert = params
            .self_signed(&key)
            .map_err(|source| PkiError::Signing {
                host: common_name.to_string(),
                ca: name.to_string(),
                source,
            })?;
        let cert_pem = cert.pem();

        fsio::write_new(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
        if let Err(e) = fsio::write_new(&cert_path, cert_pem.as_bytes(), 0o644) {
            // A key without its certificate would block the next `create`; take it back.
            let _ = fs::remove_file(&key_path);
            return Err(e.into());
        }
        info!(ca = name, algorithm = %algo, cert = %cert_path.display(), "certificate authority created");
        Self::from_parts(name, cert_path, key_path, cert_pem, key)
    }

    /// Loads `<dir>/<name>.crt` and `<dir>/<name>.key`, checking that the key is the
    /// certificate's, that the certificate is a CA and that the key is not readable by others.
    pub fn load(dir: &Path, name: &str) -> Result<Self, PkiError> {
        check_name(name)?;
        let (cert_path, key_path) = paths(dir, name);
        Self::load_pair(name, cert_path, key_path)
    }

    /// [`load`](Self::load) from a certificate and a key of other names: a CA whose files are
    /// being renamed (the agent CA's rotation puts the new CA's files in place one at a time).
    pub fn load_pair(name: &str, cert_path: PathBuf, key_path: PathBuf) -> Result<Self, PkiError> {
        check_name(name)?;
        let cert_pem = read_text(&cert_path)?;
        let meta = fs::metadata(&key_path).map_err(io_err("read", &key_path))?;
        if meta.mode() & 0o077 != 0 {
            return Err(PkiError::InsecureKey {
                path: key_path,
                mode: meta.mode() & 0o7777,
            });
        }
        let key_pem = read_text(&key_path)?;
        let key = KeyPair::from_pem(&key_pem).map_err(|source| PkiError::InvalidFile {
            path: key_path.clone(),
            what: "private key",
            source,
        })?;
        Self::from_parts(name, cert_path, key_path, cert_pem, key)
    }

    fn from_parts(
        name: &str,
        cert_path: PathBuf,
        key_path: PathBuf,
        cert_pem: String,
        key: KeyPair,
    ) -> Result<Self, PkiError> {
        let bad = |reason: String| PkiError::InvalidCaCertificate {
            path: cert_path.clone(),
            reason,
        };
        let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes())
            .map_err(|e| bad(format!("not PEM ({e})")))?;
        let cert = pem
            .parse_x509()
            .map_err(|e| bad(format!("not a certificate ({e})")))?;
        if !cert.is_ca() {
            return Err(bad(
                "not a CA certificate (basicConstraints CA:FALSE)".into()
            ));
        }
        let spki = cert.public_key();
        if spki.subject_public_key.data.as_ref() != key.public_key_raw() {
            return Err(bad(format!(
                "its public key does not match the key in {}",
                key_path.display()
            )));
        }
        let algorithm = algorithm_of(&key).ok_or_else(|| {
            bad(format!(
                "the key in {} is neither ecdsa-p256 nor rsa-2048",
                key_path.display()
            ))
        })?;
        let spki_der = spki.raw.to_vec();
        let common_name = cert
            .subject()
            .iter_common_name()
            .next()
            .and_then(|cn| cn.as_str().ok())
            .unwrap_or_default()
            .to_string();
        let not_before = cert.validity().not_before.to_datetime();
        let not_after = cert.validity().not_after.to_datetime();
        let issuer =
            Issuer::from_ca_cert_der(&pem.contents.as_slice().into(), key).map_err(|source| {
                PkiError::InvalidFile {
                    path: cert_path.clone(),
                    what: "CA certificate",
                    source,
                }
            })?;
        Ok(CertificateAuthority {
            name: name.to_string(),
            cert_path,
            key_path,
            cert_pem,
            spki_der,
            common_name,
            not_before,
            not_after,
            algorithm,
            issuer,
        })
    }

    /// The CA's file stem, such as `etcd-ca`.
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn cert_path(&self) -> &Path {
        &self.cert_path
    }

    pub fn key_path(&self) -> &Path {
        &self.key_path
    }

    pub fn algorithm(&self) -> KeyAlgorithm {
        self.algorithm
    }

    /// When the CA certificate became valid (a minute before it was made).
    pub fn not_before(&self) -> OffsetDateTime {
        self.not_before
    }

    /// The CA certificate's common name.
    pub fn common_name(&self) -> &str {
        &self.common_name
    }

    /// When the CA certificate expires; no certificate it issues outlives it.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }

    /// The CA certificate, PEM: what hosts trust.
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// `sha256:<hex>` of the CA certificate's SubjectPublicKeyInfo, as kubeadm's
    /// `discovery-token-ca-cert-hash`: what an enrolling agent pins.
    pub fn sha256_pin(&self) -> String {
        spki_pin(&self.spki_der)
    }

    /// Signs a host's CSR after checking it.
    ///
    /// The CSR's self-signature must verify and its key must be ECDSA P-256/P-384 or RSA of at
    /// least 2048 bits. Every name it asks for must be in `req.expected`, or the CSR is refused
    /// with the list of names too many; the certificate carries exactly the names the CSR asked
    /// for (a subset of the expected ones, never more). CN, O, usages and validity come from
    /// `req`; nothing else of the CSR is copied. Returns the certificate, PEM.
    pub fn sign_csr(&self, csr_pem: &str, req: &SigningRequest) -> Result<String, PkiError> {
        let host = req.common_name.as_str();
        let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|source| {
            PkiError::InvalidCsr {
                host: host.to_string(),
                source,
            }
        })?;
        check_csr_key(host, &csr.public_key)?;
        let sans = names::check_requested(host, &csr.params.subject_alt_names, &req.expected)?;
        let params = self.leaf_params(req, sans)?;
        let cert = params
            .signed_by(&csr.public_key, &self.issuer)
            .map_err(|source| self.signing_error(host, source))?;
        info!(
            ca = %self.name,
            host,
            profile = %req.profile,
            serial = %serial_hex(&params),
            "certificate issued for a CSR"
        );
        Ok(cert.pem())
    }

    /// Issues a certificate for a key generated here, with all of `req.expected` as names,
    /// written to `<dir>/<name>.key` (0600) and `<dir>/<name>.crt` (0644), replacing what is
    /// there.
    ///
    /// Only for haop's own client certificates in the state dir (its etcd client certificate,
    /// its agent-channel admin certificate): a host's key is always generated on the host.
    pub fn issue_local(
        &self,
        dir: &Path,
        name: &str,
        algo: KeyAlgorithm,
        req: &SigningRequest,
    ) -> Result<LocalCert, PkiError> {
        check_name(name)?;
        let host = req.common_name.as_str();
        let sans = names::all_expected(host, &req.expected)?;
        let params = self.leaf_params(req, sans)?;
        let key = algo.generate()?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| self.signing_error(host, source))?;
        let (cert_path, key_path) = paths(dir, name);
        fsio::create_private_dir(dir)?;
        fsio::write_atomic(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
        let cert_pem = cert.pem();
        fsio::write_atomic(&cert_path, cert_pem.as_bytes(), 0o644)?;
        info!(
            ca = %self.name,
            host,
            profile = %req.profile,
            serial = %serial_hex(&params),
            cert = %cert_path.display(),
            "local certificate issued"
        );
        Ok(LocalCert {
            cert_path,
            key_path,
            cert_pem,
        })
    }

    /// Whether this CA issued the first certificate of `cert_pem` (its key verifies the
    /// signature and its subject is the issuer).
    pub fn issued(&self, cert_pem: &str) -> bool {
        let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()) else {
            return false;
        };
        let Ok(cert) = pem.parse_x509() else {
            return false;
        };
        let Ok((_, ca)) = x509_parser::pem::parse_x509_pem(self.cert_pem.as_bytes()) else {
            return false;
        };
        let Ok(ca) = ca.parse_x509() else {
            return false;
        };
        cert.issuer().as_raw() == ca.subject().as_raw()
            && cert.verify_signature(Some(ca.public_key())).is_ok()
    }

    /// An endorsement of `other` by this CA: a CA certificate with `other`'s name and public key,
    /// signed by this CA, valid for `lifetime` (an X.509 cross-certificate, "new with old").
    /// Agents that trust this CA accept `other` into their trust bundle only with it, so only
    /// the holder of a CA key they trust can extend what they trust (see the agent's `trust`
    /// module). PEM.
    pub fn endorse(
        &self,
        other: &CertificateAuthority,
        lifetime: Duration,
    ) -> Result<String, PkiError> {
        let mut params = CertificateParams::default();
        params.distinguished_name = distinguished_name(&other.common_name, None);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = now();
        params.not_before = now - time::Duration::minutes(1);
        params.not_after = (now + lifetime).min(self.not_after).min(other.not_after);
        params.serial_number = Some(random_serial()?);
        let cert = params
            .signed_by(other.issuer.key(), &self.issuer)
            .map_err(|source| self.signing_error(&other.name, source))?;
        info!(ca = %self.name, endorsed = %other.name, "CA endorsed");
        Ok(cert.pem())
    }

    /// A certificate revocation list numbered `number`, listing `revoked` (serial bytes and when
    /// each was revoked), signed by this CA, in PEM. It is valid until the CA expires: haop
    /// issues a new one whenever the list changes, and agents order lists by their number.
    pub fn revocation_list(
        &self,
        revoked: &[(Vec<u8>, OffsetDateTime)],
        number: u64,
    ) -> Result<String, PkiError> {
        let now = now();
        let params = rcgen::CertificateRevocationListParams {
            this_update: now - time::Duration::minutes(1),
            next_update: self.not_after.max(now + time::Duration::days(1)),
            crl_number: SerialNumber::from_slice(&number.to_be_bytes()),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|(serial, at)| rcgen::RevokedCertParams {
                    serial_number: SerialNumber::from_slice(serial),
                    revocation_time: at.replace_nanosecond(0).unwrap_or(*at),
                    reason_code: None,
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: rcgen::KeyIdMethod::Sha256,
        };
        let crl = params
            .signed_by(&self.issuer)
            .map_err(|source| self.signing_error("the revocation list", source))?;
        crl.pem()
            .map_err(|source| self.signing_error("the revocation list", source))
    }

    fn leaf_params(
        &self,
        req: &SigningRequest,
        sans: Vec<rcgen::SanType>,
    ) -> Result<CertificateParams, PkiError> {
        check_lifetime(req.lifetime).map_err(|reason| PkiError::InvalidLifetime {
            value: format!("{:?}", req.lifetime),
            reason,
        })?;
        if req.common_name.trim().is_empty() {
            return Err(PkiError::EmptyCommonName {
                ca: self.name.clone(),
            });
        }
        let mut params = CertificateParams::default();
        params.distinguished_name =
            distinguished_name(&req.common_name, req.organization.as_deref());
        params.subject_alt_names = sans;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = req.profile.key_usages();
        params.extended_key_usages = req.profile.extended_key_usages();
        params.use_authority_key_identifier_extension = true;
        let now = now();
        params.not_before = now - time::Duration::minutes(1);
        params.not_after = (now + req.lifetime).min(self.not_after);
        params.serial_number = Some(random_serial()?);
        Ok(params)
    }

    fn signing_error(&self, host: &str, source: rcgen::Error) -> PkiError {
        PkiError::Signing {
            host: host.to_string(),
            ca: self.name.clone(),
            source,
        }
    }
}

fn paths(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    (
        dir.join(format!("{name}.crt")),
        dir.join(format!("{name}.key")),
    )
}

/// Whether `name` can be a file name in the state dir: 1 to 64 lowercase letters, digits and
/// inner dashes.
pub fn is_file_stem(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('-')
        && !name.ends_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

/// A name becomes a file name in the state dir: see [`is_file_stem`].
fn check_name(name: &str) -> Result<(), PkiError> {
    if is_file_stem(name) {
        Ok(())
    } else {
        Err(PkiError::InvalidCaName {
            name: name.to_string(),
        })
    }
}

fn read_text(path: &Path) -> Result<String, PkiError> {
    let meta = fs::metadata(path).map_err(io_err("read", path))?;
    if meta.len() > MAX_PEM_FILE {
        return Err(io_err("read", path)(std::io::Error::other(
            "file too large for a PEM key or certificate",
        )));
    }
    fs::read_to_string(path).map_err(io_err("read", path))
}

fn distinguished_name(common_name: &str, organization: Option<&str>) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    if let Some(o) = organization {
        dn.push(DnType::OrganizationName, o);
    }
    dn.push(DnType::CommonName, common_name);
    dn
}

/// Now, to the second: certificate times carry no fractions.
fn now() -> OffsetDateTime {
    let now = OffsetDateTime::now_utc();
    now.replace_nanosecond(0).unwrap_or(now)
}

/// 128 random bits, positive and non-zero, as RFC 5280 asks (at most 20 octets).
fn random_serial() -> Result<SerialNumber, PkiError> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(PkiError::Random)?;
    bytes[0] = (bytes[0] & 0x7f).max(1);
    Ok(SerialNumber::from_slice(&bytes))
}

fn serial_hex(params: &CertificateParams) -> String {
    params
        .serial_number
        .as_ref()
        .map(|s| hex::encode(s.as_ref()))
        .unwrap_or_default()
}

fn algorithm_of(key: &KeyPair) -> Option<KeyAlgorithm> {
    let alg = key.algorithm();
    if alg == &rcgen::PKCS_ECDSA_P256_SHA256 {
        Some(KeyAlgorithm::EcdsaP256)
    } else if alg == &rcgen::PKCS_RSA_SHA256 && public_key_bits(key) == Some(2048) {
        Some(KeyAlgorithm::Rsa2048)
    } else {
        None
    }
}

/// Size of the public key in bits, read back from its SubjectPublicKeyInfo.
pub(crate) fn public_key_bits(key: &impl PublicKeyData) -> Option<usize> {
    let spki_der = key.subject_public_key_info();
    let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&spki_der).ok()?;
    match spki.parsed().ok()? {
        x509_parser::public_key::PublicKey::RSA(rsa) => {
            let modulus = rsa.modulus;
            let start = modulus.iter().position(|b| *b != 0)?;
            Some((modulus.len() - start) * 8 - modulus[start].leading_zeros() as usize)
        }
        x509_parser::public_key::PublicKey::EC(point) => Some(point.key_size()),
        _ => None,
    }
}

/// Accepts ECDSA P-256 and P-384 keys, and RSA keys of 2048 to 8192 bits.
fn check_csr_key(host: &str, key: &rcgen::PublicKey) -> Result<(), PkiError> {
    let alg = key.algorithm();
    let bits = public_key_bits(key);
    let ok = if alg == &rcgen::PKCS_ECDSA_P256_SHA256 {
        bits == Some(256)
    } else if alg == &rcgen::PKCS_ECDSA_P384_SHA384 {
        bits == Some(384)
    } else if alg == &rcgen::PKCS_RSA_SHA256
        || alg == &rcgen::PKCS_RSA_SHA384
        || alg == &rcgen::PKCS_RSA_SHA512
    {
        bits.is_some_and(|b| (2048..=8192).contains(&b))
    } else {
        false
    };
    if ok {
        Ok(())
    } else {
        Err(PkiError::UnacceptableKey {
            host: host.to_string(),
            reason: format!(
                "{alg:?} key of {} bits (expected ECDSA P-256/P-384 or RSA 2048-8192)",
                bits.unwrap_or(0)
            ),
        })
    }
}
