//! What a certificate says, for `haop status`, expiry warnings and tests.
//!
//! Parsing only: nothing here verifies a chain (TLS does that where it matters). The fields are
//! plain strings and times so that callers can print and compare them without x509 types.

use std::net::IpAddr;

use time::OffsetDateTime;
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::pem::Pem;
use x509_parser::public_key::PublicKey;

use super::{spki_pin, PkiError};

/// The facts of one certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// Subject as `O=haop:admin, CN=haop`.
    pub subject: String,
    pub issuer: String,
    pub common_name: Option<String>,
    /// Every O of the subject; roles of the agent channel ride here.
    pub organizations: Vec<String>,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<String>,
    /// `"server auth"`, `"client auth"`, other usages by name, unknown ones by OID.
    pub extended_key_usages: Vec<String>,
    /// `"digital signature"`, `"key encipherment"`, `"certificate sign"`, `"crl sign"`...
    pub key_usages: Vec<String>,
    /// Lowercase hex of the serial number's bytes.
    pub serial_hex: String,
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
    pub is_ca: bool,
    /// `ecdsa-p256`, `ecdsa-p384`, `rsa-2048`..., or `unknown`.
    pub key_algorithm: String,
    /// `sha256:<hex>` of the SubjectPublicKeyInfo, comparable with
    /// [`CertificateAuthority::sha256_pin`](super::CertificateAuthority::sha256_pin).
    pub spki_sha256: String,
    pub subject_key_id: Option<String>,
    pub authority_key_id: Option<String>,
}

impl CertInfo {
    /// Parses one certificate in DER.
    pub fn from_der(der: &[u8]) -> Result<Self, PkiError> {
        let (_, cert) = x509_parser::parse_x509_certificate(der)
            .map_err(|source| PkiError::InvalidCertificate { index: 0, source })?;
        Ok(Self::from_x509(&cert))
    }

    fn from_x509(cert: &X509Certificate<'_>) -> Self {
        let subject = cert.subject();
        let strings =
            |it: &mut dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>>| {
                it.filter_map(|a| a.as_str().ok().map(str::to_string))
                    .collect::<Vec<_>>()
            };
        let mut info = CertInfo {
            subject: subject.to_string(),
            issuer: cert.issuer().to_string(),
            common_name: strings(&mut subject.iter_common_name()).into_iter().next(),
            organizations: strings(&mut subject.iter_organization()),
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
            extended_key_usages: Vec::new(),
            key_usages: Vec::new(),
            serial_hex: hex::encode(cert.raw_serial()),
            not_before: cert.validity().not_before.to_datetime(),
            not_after: cert.validity().not_after.to_datetime(),
            is_ca: cert.is_ca(),
            key_algorithm: key_algorithm(cert),
            spki_sha256: spki_pin(cert.public_key().raw),
            subject_key_id: None,
            authority_key_id: None,
        };
        for ext in cert.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::SubjectAlternativeName(san) => {
                    for name in &san.general_names {
                        match name {
                            GeneralName::DNSName(d) => info.dns_names.push(d.to_string()),
                            GeneralName::IPAddress(bytes) => {
                                info.ip_addresses.push(ip_string(bytes))
                            }
                            _ => {}
                        }
                    }
                }
                ParsedExtension::ExtendedKeyUsage(eku) => {
                    let named = [
                        (eku.server_auth, "server auth"),
                        (eku.client_auth, "client auth"),
                        (eku.code_signing, "code signing"),
                        (eku.email_protection, "email protection"),
                        (eku.time_stamping, "time stamping"),
                        (eku.ocsp_signing, "ocsp signing"),
                        (eku.any, "any"),
                    ];
                    info.extended_key_usages.extend(
                        named
                            .iter()
                            .filter(|(set, _)| *set)
                            .map(|(_, n)| n.to_string()),
                    );
                    info.extended_key_usages
                        .extend(eku.other.iter().map(|oid| oid.to_id_string()));
                }
                ParsedExtension::KeyUsage(ku) => {
                    let named = [
                        (ku.digital_signature(), "digital signature"),
                        (ku.non_repudiation(), "non repudiation"),
                        (ku.key_encipherment(), "key encipherment"),
                        (ku.data_encipherment(), "data encipherment"),
                        (ku.key_agreement(), "key agreement"),
                        (ku.key_cert_sign(), "certificate sign"),
                        (ku.crl_sign(), "crl sign"),
                    ];
                    info.key_usages = named
                        .iter()
                        .filter(|(set, _)| *set)
                        .map(|(_, n)| n.to_string())
                        .collect();
                }
                ParsedExtension::SubjectKeyIdentifier(ski) => {
                    info.subject_key_id = Some(hex::encode(ski.0));
                }
                ParsedExtension::AuthorityKeyIdentifier(aki) => {
                    info.authority_key_id = aki.key_identifier.as_ref().map(|k| hex::encode(k.0));
                }
                _ => {}
            }
        }
        info
    }

    /// Whole days from `now` to expiry, rounded down; negative once expired.
    pub fn days_left(&self, now: OffsetDateTime) -> i64 {
        (self.not_after - now).whole_days()
    }

    /// Whether `now` is within the validity period.
    pub fn is_valid_at(&self, now: OffsetDateTime) -> bool {
        self.not_before <= now && now <= self.not_after
    }
}

/// Every certificate of a PEM text, in order; other blocks (keys, CSRs) are skipped.
pub fn inspect(pem: &str) -> Result<Vec<CertInfo>, PkiError> {
    let mut infos = Vec::new();
    for block in Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(PkiError::InvalidPem)?;
        if block.label != "CERTIFICATE" {
            continue;
        }
        let cert = block
            .parse_x509()
            .map_err(|source| PkiError::InvalidCertificate {
                index: infos.len(),
                source,
            })?;
        infos.push(CertInfo::from_x509(&cert));
    }
    if infos.is_empty() {
        return Err(PkiError::NoCertificate);
    }
    Ok(infos)
}

/// `sha256:<hex>` of the public key `host`'s CSR asks a certificate for (its self-signature
/// checked), comparable with [`CertInfo::spki_sha256`]: whether a certificate in place is for the
/// key a host holds, asked without the key ever leaving the host.
pub fn csr_spki_sha256(host: &str, csr_pem: &str) -> Result<String, PkiError> {
    use rcgen::PublicKeyData;
    let csr = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).map_err(|source| {
        PkiError::InvalidCsr {
            host: host.to_string(),
            source,
        }
    })?;
    Ok(spki_pin(&csr.public_key.subject_public_key_info()))
}

fn ip_string(bytes: &[u8]) -> String {
    match bytes.len() {
        4 => IpAddr::from(<[u8; 4]>::try_from(bytes).expect("4 bytes")).to_string(),
        16 => IpAddr::from(<[u8; 16]>::try_from(bytes).expect("16 bytes")).to_string(),
        _ => format!("invalid:{}", hex::encode(bytes)),
    }
}

fn key_algorithm(cert: &X509Certificate<'_>) -> String {
    match cert.public_key().parsed() {
        Ok(PublicKey::EC(point)) => format!("ecdsa-p{}", point.key_size()),
        Ok(PublicKey::RSA(rsa)) => {
            let m = rsa.modulus;
            match m.iter().position(|b| *b != 0) {
                Some(start) => format!(
                    "rsa-{}",
                    (m.len() - start) * 8 - m[start].leading_zeros() as usize
                ),
                None => "unknown".to_string(),
            }
        }
        _ => "unknown".to_string(),
    }
}
