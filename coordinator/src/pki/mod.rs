//! haop's two certificate authorities and the CSR flow.
//!
//! `haop init` creates two CAs in the state dir: the *agent CA* ([`AGENT_CA`]), which signs the
//! certificates of the control channel between haop and its agents, and the *etcd CA*
//! ([`ETCD_CA`]), which signs etcd's server, peer and client certificates with the profiles of
//! the seed's `ca-config.json` ([`Profile`]). CA keys are written with mode 0600 and never leave
//! the state dir.
//!
//! Why a CSR flow: private keys never travel. A host generates its own key (the agent's `csr`
//! module), sends only a certificate signing request, and gets back a certificate. The seed
//! copied the CA key to every host; we copy no key at all.
//!
//! Why the names are checked: a CSR is the host's claim, not the coordinator's. [`sign_csr`]
//! compares every name the CSR asks for with the names the inventory gives that host
//! ([`ExpectedNames`]: hostname, FQDN, addresses, `localhost`, `127.0.0.1`) and refuses the CSR
//! if it asks for anything else, so a compromised host cannot obtain a certificate for another
//! host's name or address. Everything else in the certificate (CN, O, key and extended key usages,
//! validity, CA flag) comes from the [`SigningRequest`] and the [`Profile`], never from the CSR:
//! the CSR contributes its public key and its (checked) names only.
//!
//! Lifecycle: [`CertificateAuthority::create`] once at init (it refuses to overwrite),
//! [`CertificateAuthority::load`] afterwards, [`CertificateAuthority::sign_csr`] per host and
//! certificate, [`CertificateAuthority::issue_local`] only for haop's own client certificates in
//! the state dir, [`inspect::inspect`] for `haop status` and expiry warnings.
//!
//! [`sign_csr`]: CertificateAuthority::sign_csr

pub mod bundle;
mod ca;
pub mod inspect;
mod names;

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use sha2::{Digest, Sha256};

pub use ca::{is_file_stem, CertificateAuthority, LocalCert};

pub use inspect::{inspect, CertInfo};

/// File stem of the CA of the control channel between haop and its agents.
pub const AGENT_CA: &str = "agent-ca";
/// File stem of the CA of etcd's server, peer and client certificates.
pub const ETCD_CA: &str = "etcd-ca";
/// Organization (O) of an agent-channel certificate that may mutate hosts.
pub const ROLE_ADMIN: &str = "haop:admin";
/// Organization (O) of an agent-channel certificate that may only read (status).
pub const ROLE_READER: &str = "haop:reader";
/// Default lifetime of CAs and certificates: 43800h (5 years), as in the seed's ca-config.json.
pub const DEFAULT_LIFETIME: Duration = Duration::from_secs(43_800 * 3600);
/// Longest lifetime accepted, a guard against typos (`438000h`) more than a policy.
pub const MAX_LIFETIME: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Errors of the PKI; each names the file, the CA or the host concerned.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("a trust bundle may hold only CA certificates; {subject} is not one")]
    NotCaBundle { subject: String },
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} already exists; refusing to overwrite an existing CA (remove it by hand to start over)")]
    AlreadyExists { path: PathBuf },
    #[error("invalid CA name {name:?}: expected a file stem such as \"agent-ca\" or \"etcd-ca\"")]
    InvalidCaName { name: String },
    #[error("{path} is not a valid {what}")]
    InvalidFile {
        path: PathBuf,
        what: &'static str,
        #[source]
        source: rcgen::Error,
    },
    #[error("{path} is readable by others (mode {mode:o}); a CA key must be 0600")]
    InsecureKey { path: PathBuf, mode: u32 },
    #[error("{path} is not a usable CA certificate: {reason}")]
    InvalidCaCertificate { path: PathBuf, reason: String },
    #[error("unknown key algorithm {0:?} (expected \"ecdsa-p256\" or \"rsa-2048\")")]
    UnknownAlgorithm(String),
    #[error("unknown certificate profile {0:?} (expected \"server\", \"peer\" or \"client\")")]
    UnknownProfile(String),
    #[error("invalid lifetime {value:?}: {reason}")]
    InvalidLifetime { value: String, reason: &'static str },
    #[error("generating a {algo} key")]
    KeyGeneration {
        algo: KeyAlgorithm,
        #[source]
        source: rcgen::Error,
    },
    #[error("certificate signing request for {host} cannot be used")]
    InvalidCsr {
        host: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("certificate signing request for {host} has an unacceptable key: {reason}")]
    UnacceptableKey { host: String, reason: String },
    #[error(
        "certificate signing request for {host} asks for names that are not {host}'s: {}; \
         expected only names among: {}",
        unexpected.join(", "),
        expected.join(", ")
    )]
    UnexpectedNames {
        host: String,
        unexpected: Vec<String>,
        expected: Vec<String>,
    },
    #[error("invalid name {name:?} for {host}")]
    InvalidName {
        host: String,
        name: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("a certificate from {ca} needs a common name")]
    EmptyCommonName { ca: String },
    #[error("signing a certificate for {host} with {ca}")]
    Signing {
        host: String,
        ca: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("no random numbers for a serial")]
    Random(#[source] getrandom::Error),
    #[error("no certificate in the PEM text")]
    NoCertificate,
    #[error("invalid PEM text")]
    InvalidPem(#[source] x509_parser::error::PEMError),
    #[error("invalid certificate (number {index} in the PEM text)")]
    InvalidCertificate {
        index: usize,
        #[source]
        source: x509_parser::nom::Err<x509_parser::error::X509Error>,
    },
}

/// A key or certificate that could not be written: an existing CA is refused by name.
impl From<crate::fsio::FsioError> for PkiError {
    fn from(e: crate::fsio::FsioError) -> Self {
        match e {
            crate::fsio::FsioError::Exists { path } => PkiError::AlreadyExists { path },
            crate::fsio::FsioError::Io { op, path, source } => PkiError::Io { op, path, source },
        }
    }
}

pub(crate) fn io_err<'a>(
    op: &'static str,
    path: &'a std::path::Path,
) -> impl FnOnce(std::io::Error) -> PkiError + 'a {
    move |source| PkiError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Key algorithm of a CA or of a locally issued certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyAlgorithm {
    /// ECDSA on NIST P-256 with SHA-256: small, fast, what etcd and Kubernetes default to.
    #[default]
    EcdsaP256,
    /// RSA 2048 with PKCS#1 v1.5 SHA-256, as in the seed's cfssl `ca-csr.json`.
    Rsa2048,
}

impl KeyAlgorithm {
    /// The name used in configuration and on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            KeyAlgorithm::EcdsaP256 => "ecdsa-p256",
            KeyAlgorithm::Rsa2048 => "rsa-2048",
        }
    }

    pub(crate) fn signature_algorithm(self) -> &'static rcgen::SignatureAlgorithm {
        match self {
            KeyAlgorithm::EcdsaP256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyAlgorithm::Rsa2048 => &rcgen::PKCS_RSA_SHA256,
        }
    }

    pub(crate) fn generate(self) -> Result<rcgen::KeyPair, PkiError> {
        let generated = match self {
            KeyAlgorithm::EcdsaP256 => rcgen::KeyPair::generate_for(self.signature_algorithm()),
            KeyAlgorithm::Rsa2048 => rcgen::KeyPair::generate_rsa_for(
                self.signature_algorithm(),
                rcgen::RsaKeySize::_2048,
            ),
        };
        generated.map_err(|source| PkiError::KeyGeneration { algo: self, source })
    }
}

impl fmt::Display for KeyAlgorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The wire name of the algorithm a host generates a key with (`CreateCsr`). This is the one
/// place the domain type meets the proto's enum.
impl From<KeyAlgorithm> for haop_proto::v1::KeyAlgorithm {
    fn from(a: KeyAlgorithm) -> Self {
        match a {
            KeyAlgorithm::EcdsaP256 => haop_proto::v1::KeyAlgorithm::EcdsaP256,
            KeyAlgorithm::Rsa2048 => haop_proto::v1::KeyAlgorithm::Rsa2048,
        }
    }
}

impl FromStr for KeyAlgorithm {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "ecdsa-p256" => Ok(KeyAlgorithm::EcdsaP256),
            "rsa-2048" => Ok(KeyAlgorithm::Rsa2048),
            other => Err(PkiError::UnknownAlgorithm(other.to_string())),
        }
    }
}

/// Certificate profiles, as in the seed's cfssl `ca-config.json`. All have the key usages
/// digitalSignature and keyEncipherment; they differ in their extended key usages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// etcd's client-facing server certificate: server auth + client auth.
    Server,
    /// etcd's peer certificate (each member is server and client of the others): server auth +
    /// client auth.
    Peer,
    /// A client certificate (haop's own, kube-apiserver's, an agent-channel admin): client auth.
    Client,
}

impl Profile {
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Server => "server",
            Profile::Peer => "peer",
            Profile::Client => "client",
        }
    }

    /// The extended key usages this profile puts in a certificate.
    pub fn extended_key_usages(self) -> Vec<rcgen::ExtendedKeyUsagePurpose> {
        use rcgen::ExtendedKeyUsagePurpose::{ClientAuth, ServerAuth};
        match self {
            Profile::Server | Profile::Peer => vec![ServerAuth, ClientAuth],
            Profile::Client => vec![ClientAuth],
        }
    }

    /// The key usages of every profile: digitalSignature and keyEncipherment.
    pub fn key_usages(self) -> Vec<rcgen::KeyUsagePurpose> {
        vec![
            rcgen::KeyUsagePurpose::DigitalSignature,
            rcgen::KeyUsagePurpose::KeyEncipherment,
        ]
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Profile {
    type Err = PkiError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "server" => Ok(Profile::Server),
            "peer" => Ok(Profile::Peer),
            "client" => Ok(Profile::Client),
            other => Err(PkiError::UnknownProfile(other.to_string())),
        }
    }
}

/// The subject alternative names a host may have, from the inventory.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExpectedNames {
    pub dns: Vec<String>,
    pub ips: Vec<IpAddr>,
}

impl ExpectedNames {
    /// The names of an inventory host: its hostname, its FQDN when it has one, its addresses,
    /// `localhost` and `127.0.0.1` (etcd and its local clients talk over loopback).
    pub fn for_host(hostname: &str, fqdn: Option<&str>, addresses: &[IpAddr]) -> Self {
        let mut names = ExpectedNames::default();
        for dns in [Some(hostname), fqdn, Some("localhost")]
            .into_iter()
            .flatten()
        {
            if !dns.is_empty() && !names.dns.iter().any(|d| d.eq_ignore_ascii_case(dns)) {
                names.dns.push(dns.to_string());
            }
        }
        for ip in addresses
            .iter()
            .copied()
            .chain([IpAddr::from([127, 0, 0, 1])])
        {
            if !names.ips.contains(&ip) {
                names.ips.push(ip);
            }
        }
        names
    }

    /// No names at all: for client certificates that identify by CN and O only.
    pub fn none() -> Self {
        ExpectedNames::default()
    }

    /// All names, DNS first, as they appear in error messages.
    pub fn to_strings(&self) -> Vec<String> {
        self.dns
            .iter()
            .cloned()
            .chain(self.ips.iter().map(IpAddr::to_string))
            .collect()
    }
}

/// What the coordinator wants in a certificate; the CSR contributes only its key and names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigningRequest {
    pub profile: Profile,
    /// Validity from now; capped at the CA's own expiry.
    pub lifetime: Duration,
    /// The names the inventory gives the host: a CSR asking for any other is refused.
    pub expected: ExpectedNames,
    /// The certificate's O: a role (`haop:admin`, `haop:reader`) on the agent channel.
    pub organization: Option<String>,
    /// The certificate's CN, usually the host name; also names the host in errors.
    pub common_name: String,
}

/// `"sha256:"` and the hex SHA-256 of a SubjectPublicKeyInfo in DER, the pin format of
/// kubeadm's `discovery-token-ca-cert-hash`.
pub fn spki_pin(spki_der: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(spki_der)))
}

/// Whether the PEM private key `key_pem` is the key of the first certificate of `cert_pem`
/// (both must parse): a pair whose halves are renamed into place one at a time is usable only
/// when they match.
pub fn key_matches_cert(key_pem: &str, cert_pem: &str) -> bool {
    let Ok(key) = rcgen::KeyPair::from_pem(key_pem) else {
        return false;
    };
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()) else {
        return false;
    };
    let Ok(cert) = pem.parse_x509() else {
        return false;
    };
    cert.public_key().subject_public_key.data.as_ref() == key.public_key_raw()
}

/// `sha256:<hex>` of the SubjectPublicKeyInfo of the first certificate of `cert_pem`.
pub fn cert_pin(cert_pem: &str) -> Option<String> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(cert_pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    Some(spki_pin(cert.public_key().raw))
}

/// Whether `bytes` hold a PEM private key block (`PRIVATE KEY`, `EC PRIVATE KEY`,
/// `RSA PRIVATE KEY`, `ENCRYPTED PRIVATE KEY`...): tests scan directories with it to prove that no
/// host key ever reaches the coordinator's state dir.
pub fn is_private_key_pem(bytes: &[u8]) -> bool {
    let text = String::from_utf8_lossy(bytes);
    text.lines().any(|line| {
        let line = line.trim();
        line.strip_prefix("-----BEGIN ")
            .and_then(|rest| rest.strip_suffix("-----"))
            .is_some_and(|label| label.ends_with("PRIVATE KEY"))
    })
}

/// Parses a lifetime as cfssl writes it (Go durations: `43800h`, `1h30m`, `90m`, `3600s`).
pub fn parse_lifetime(s: &str) -> Result<Duration, PkiError> {
    let invalid = |reason| PkiError::InvalidLifetime {
        value: s.to_string(),
        reason,
    };
    let mut total: u64 = 0;
    let mut rest = s.trim();
    if rest.is_empty() {
        return Err(invalid("empty"));
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(invalid("expected a number such as 43800h"));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| invalid("number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let secs = match &rest[..unit_len] {
            "h" => 3600,
            "m" => 60,
            "s" => 1,
            "" => return Err(invalid("missing unit (h, m or s)")),
            _ => return Err(invalid("unknown unit (expected h, m or s)")),
        };
        rest = &rest[unit_len..];
        total = n
            .checked_mul(secs)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| invalid("too long"))?;
    }
    let lifetime = Duration::from_secs(total);
    check_lifetime(lifetime).map_err(invalid)?;
    Ok(lifetime)
}

pub fn check_lifetime(lifetime: Duration) -> Result<(), &'static str> {
    if lifetime < Duration::from_secs(60) {
        return Err("shorter than a minute");
    }
    if lifetime > MAX_LIFETIME {
        return Err("longer than 100 years");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_both_ways() {
        for algo in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::Rsa2048] {
            assert_eq!(algo.as_str().parse::<KeyAlgorithm>().unwrap(), algo);
        }
        for p in [Profile::Server, Profile::Peer, Profile::Client] {
            assert_eq!(p.as_str().parse::<Profile>().unwrap(), p);
        }
        let e = "rsa-1024".parse::<KeyAlgorithm>().unwrap_err().to_string();
        assert!(e.contains("rsa-1024"), "{e}");
        assert!("admin".parse::<Profile>().is_err());
    }

    #[test]
    fn lifetimes_parse_as_cfssl_writes_them() {
        assert_eq!(parse_lifetime("43800h").unwrap(), DEFAULT_LIFETIME);
        assert_eq!(parse_lifetime("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_lifetime("120s").unwrap(), Duration::from_secs(120));
        for bad in ["", "h", "10", "10d", "5s", "99999999h", "1h-2m"] {
            assert!(parse_lifetime(bad).is_err(), "{bad:?} was accepted");
        }
    }

    #[test]
    fn expected_names_of_a_host() {
        let ip: IpAddr = "10.77.1.11".parse().unwrap();
        let e = ExpectedNames::for_host("etcd1", Some("etcd1.lab.local"), &[ip]);
        assert_eq!(e.dns, ["etcd1", "etcd1.lab.local", "localhost"]);
        assert_eq!(e.ips, [ip, IpAddr::from([127, 0, 0, 1])]);
        let again = ExpectedNames::for_host("localhost", None, &[IpAddr::from([127, 0, 0, 1])]);
        assert_eq!(again.dns, ["localhost"]);
        assert_eq!(again.ips.len(), 1);
    }

    #[test]
    fn private_key_blocks_are_recognised() {
        assert!(is_private_key_pem(
            b"junk\n-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n"
        ));
        assert!(is_private_key_pem(b"-----BEGIN EC PRIVATE KEY-----\r\n"));
        assert!(is_private_key_pem(b"-----BEGIN RSA PRIVATE KEY-----"));
        assert!(!is_private_key_pem(b"-----BEGIN CERTIFICATE-----\nAAAA\n"));
        assert!(!is_private_key_pem(b"-----BEGIN PUBLIC KEY-----\n"));
        assert!(!is_private_key_pem(b"PRIVATE KEY"));
    }
}
