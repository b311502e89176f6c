//! The seed's PKI as cfssl 1.4.1 makes it, without cfssl: `cfssl gencert -initca` for the CA
//! and `cfssl gencert -ca ... -profile P` for the client, server and peer certificates, each
//! piped into `cfssljson -bare NAME` ([`Bare`]: `NAME.pem`, `NAME-key.pem`, `NAME.csr`).
//!
//! What cfssl puts in them (read from its v1.4.1 source: `initca`, `signer.FillTemplate`,
//! `signer/local`, `csr.Generate`), and so what is made here:
//! * CA (`ca-csr.json`: CN etcd, RSA 2048; the policy `initca.CAPolicy`): subject `CN=etcd`,
//!   RSA 2048 signed with SHA-256, 43800 h, basicConstraints `CA:TRUE` (critical, no path
//!   length), keyUsage certSign + cRLSign (critical), a subjectKeyIdentifier; no
//!   authorityKeyIdentifier and no extended key usage (Go leaves the AKI out of a self-signed
//!   certificate). RSA keys come from aws-lc through rcgen, already haop's PKI stack.
//! * Leaves (profiles of `ca-config.json`: "signing", "key encipherment" and the profile's
//!   auth usages): ECDSA P-256 keys, keyUsage digitalSignature + keyEncipherment (critical),
//!   the profile's extended key usages, basicConstraints `CA:FALSE` (critical), subject and
//!   authority key identifiers, the request's `hosts` as IP or DNS subject alternative names,
//!   43800 h, signed by the CA with SHA-256 and RSA.
//! * Key identifiers are SHA-1 of the subject public key's bits (RFC 5280 method 1, cfssl's
//!   `ComputeSKI`); serials are 20 random bytes with the top bit cleared; validity starts at
//!   the current minute (rounded, as Go's `time.Round`) minus 5 minutes.
//! * The CSR carries the subject and the hosts only, signed by the new key.
//! * Keys are written as cfssl writes them: `RSA PRIVATE KEY` (PKCS#1) and `EC PRIVATE KEY`
//!   (SEC 1 with the curve's OID and the public key, as Go's `MarshalECPrivateKey`), not
//!   PKCS#8, so that whatever reads a seed-built host finds the formats a real one has.

use std::fmt;
use std::net::IpAddr;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, PublicKeyData, SanType, SerialNumber,
};
use time::OffsetDateTime;

/// Every certificate of the seed lives this long (`ca-config.json`'s "43800h", five years).
pub const EXPIRY: time::Duration = time::Duration::hours(43_800);
/// cfssl's default backdate of `NotBefore`.
const BACKDATE: time::Duration = time::Duration::minutes(5);

/// A certificate, its key or its CSR that could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SeedPkiError {
    #[error("cannot make the {what} of the seed's PKI")]
    Rcgen {
        what: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("the {what} key is not the PKCS#8 {expected} it should be")]
    KeyEncoding {
        what: String,
        expected: &'static str,
    },
    #[error("no random bytes for a certificate serial")]
    Random(#[source] getrandom::Error),
}

/// What `cfssljson -bare NAME` writes: `NAME.pem` (the certificate), `NAME-key.pem` (the key)
/// and `NAME.csr` (the request). The `Debug` form leaves the key out.
#[derive(Clone, PartialEq, Eq)]
pub struct Bare {
    pub cert: String,
    pub key: String,
    pub csr: String,
}

impl fmt::Debug for Bare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Bare")
            .field("cert", &self.cert)
            .field("key", &"<hidden>")
            .field("csr", &self.csr)
            .finish()
    }
}

/// A profile of the seed's `ca-config.json`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    Client,
    Server,
    Peer,
}

impl Profile {
    fn extended_key_usages(self) -> Vec<ExtendedKeyUsagePurpose> {
        match self {
            Profile::Client => vec![ExtendedKeyUsagePurpose::ClientAuth],
            Profile::Server | Profile::Peer => vec![
                ExtendedKeyUsagePurpose::ServerAuth,
                ExtendedKeyUsagePurpose::ClientAuth,
            ],
        }
    }
}

/// The subject names of a cfssl CSR's `names` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Names {
    pub country: String,
    pub state: String,
    pub locality: String,
}

/// A cfssl CSR (`client.json`, or `config.json` from `cfssl print-defaults csr`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub cn: String,
    pub names: Option<Names>,
    /// IP addresses and DNS names, in the order of the request.
    pub hosts: Vec<String>,
}

impl Request {
    /// The subject as Go writes a `pkix.Name`: C, ST, L, then CN.
    fn subject(&self) -> DistinguishedName {
        let mut dn = DistinguishedName::new();
        if let Some(n) = &self.names {
            dn.push(DnType::CountryName, n.country.as_str());
            dn.push(DnType::StateOrProvinceName, n.state.as_str());
            dn.push(DnType::LocalityName, n.locality.as_str());
        }
        dn.push(DnType::CommonName, self.cn.as_str());
        dn
    }

    /// `hosts` as cfssl sorts them into the CSR: an IP address, else a DNS name.
    fn sans(&self) -> Result<Vec<SanType>, SeedPkiError> {
        self.hosts
            .iter()
            .map(|h| match h.parse::<IpAddr>() {
                Ok(ip) => Ok(SanType::IpAddress(ip)),
                Err(_) => h
                    .as_str()
                    .try_into()
                    .map(SanType::DnsName)
                    .map_err(|source| rcgen_err(format!("DNS name {h:?}"), source)),
            })
            .collect()
    }
}

fn rcgen_err(what: impl Into<String>, source: rcgen::Error) -> SeedPkiError {
    SeedPkiError::Rcgen {
        what: what.into(),
        source,
    }
}

/// The seed's CA, made once on etcd1 by `cfssl gencert -initca ca-csr.json`.
pub struct SeedCa {
    bare: Bare,
    params: CertificateParams,
    key: KeyPair,
}

impl fmt::Debug for SeedCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SeedCa")
            .field("bare", &self.bare)
            .finish_non_exhaustive()
    }
}

impl SeedCa {
    /// `cfssl gencert -initca ca-csr.json`: CN etcd, RSA 2048, valid from `now` (backdated).
    pub fn init(now: OffsetDateTime) -> Result<SeedCa, SeedPkiError> {
        let key = KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
            .map_err(|e| rcgen_err("CA key", e))?;
        let request = Request {
            cn: "etcd".to_string(),
            names: None,
            hosts: Vec::new(),
        };
        let csr = csr_pem(&request, &key, "CA")?;
        let mut params = CertificateParams::default();
        params.distinguished_name = request.subject();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.key_identifier_method = KeyIdMethod::PreSpecified(key_id(&key));
        set_validity(&mut params, now)?;
        let cert = params
            .self_signed(&key)
            .map_err(|e| rcgen_err("CA certificate", e))?;
        let bare = Bare {
            cert: pem("CERTIFICATE", cert.der()),
            key: pem("RSA PRIVATE KEY", &pkcs1_rsa(&key.serialize_der(), "CA")?),
            csr,
        };
        Ok(SeedCa { bare, params, key })
    }

    /// `ca.pem`, `ca-key.pem`, `ca.csr`.
    pub fn bare(&self) -> &Bare {
        &self.bare
    }

    /// `cfssl gencert -ca=ca.pem -ca-key=ca-key.pem -config=ca-config.json -profile=PROFILE
    /// REQUEST`: a fresh ECDSA P-256 key, its CSR and the certificate the profile gives.
    pub fn gencert(
        &self,
        profile: Profile,
        request: &Request,
        now: OffsetDateTime,
    ) -> Result<Bare, SeedPkiError> {
        let what = format!("{} certificate", request.cn);
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| rcgen_err(format!("{what}'s key"), e))?;
        let csr = csr_pem(request, &key, &what)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = request.subject();
        params.subject_alt_names = request.sans()?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = profile.extended_key_usages();
        params.use_authority_key_identifier_extension = true;
        params.key_identifier_method = KeyIdMethod::PreSpecified(key_id(&key));
        set_validity(&mut params, now)?;
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params
            .signed_by(&key, &issuer)
            .map_err(|e| rcgen_err(what.clone(), e))?;
        Ok(Bare {
            cert: pem("CERTIFICATE", cert.der()),
            key: pem(
                "EC PRIVATE KEY",
                &sec1_p256(&key.serialize_der(), key.public_key_raw(), &what)?,
            ),
            csr,
        })
    }
}

/// The CSR cfssl's `csr.Generate` makes: the subject and the hosts, signed by `key`.
fn csr_pem(request: &Request, key: &KeyPair, what: &str) -> Result<String, SeedPkiError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = request.subject();
    params.subject_alt_names = request.sans()?;
    let csr = params
        .serialize_request(key)
        .map_err(|e| rcgen_err(format!("{what} CSR"), e))?;
    Ok(pem("CERTIFICATE REQUEST", csr.der()))
}

/// cfssl's validity: from the current minute (rounded) minus 5 minutes, for [`EXPIRY`].
fn set_validity(params: &mut CertificateParams, now: OffsetDateTime) -> Result<(), SeedPkiError> {
    let not_before = round_to_minute(now) - BACKDATE;
    params.not_before = not_before;
    params.not_after = not_before + EXPIRY;
    params.serial_number = Some(random_serial()?);
    Ok(())
}

/// Go's `time.Round(time.Minute)`: to the nearest minute, halves up.
fn round_to_minute(t: OffsetDateTime) -> OffsetDateTime {
    let whole = t
        .replace_second(0)
        .and_then(|t| t.replace_nanosecond(0))
        .unwrap_or(t);
    if t - whole >= time::Duration::seconds(30) {
        whole + time::Duration::minutes(1)
    } else {
        whole
    }
}

/// 20 random bytes with the top bit cleared, as cfssl's local signer.
fn random_serial() -> Result<SerialNumber, SeedPkiError> {
    let mut bytes = [0u8; 20];
    getrandom::fill(&mut bytes).map_err(SeedPkiError::Random)?;
    bytes[0] &= 0x7f;
    Ok(SerialNumber::from_slice(&bytes))
}

/// SHA-1 of the subject public key's bits (cfssl's `ComputeSKI`).
fn key_id(key: &impl PublicKeyData) -> Vec<u8> {
    aws_lc_rs::digest::digest(
        &aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY,
        key.der_bytes(),
    )
    .as_ref()
    .to_vec()
}

/// PEM as Go's `pem.EncodeToMemory` writes it: 64 columns, `\n` line ends.
fn pem(tag: &str, der: &[u8]) -> String {
    pem::encode_config(
        &pem::Pem::new(tag, der),
        pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF),
    )
}

/// The `privateKey` octets of a PKCS#8 `PrivateKeyInfo` (version, algorithm, privateKey).
fn pkcs8_private_key<'a>(
    pkcs8: &'a [u8],
    what: &str,
    expected: &'static str,
) -> Result<&'a [u8], SeedPkiError> {
    use x509_parser::der_parser::ber::BerObjectContent;
    let bad = || SeedPkiError::KeyEncoding {
        what: what.to_string(),
        expected,
    };
    let (_, info) = x509_parser::der_parser::parse_der(pkcs8).map_err(|_| bad())?;
    let fields = info.as_sequence().map_err(|_| bad())?;
    match fields.get(2).map(|f| &f.content) {
        Some(BerObjectContent::OctetString(octets)) => Ok(octets),
        _ => Err(bad()),
    }
}

/// An RSA key as cfssl writes it: PKCS#1 `RSAPrivateKey`, which PKCS#8 wraps unchanged.
fn pkcs1_rsa(pkcs8: &[u8], what: &str) -> Result<Vec<u8>, SeedPkiError> {
    pkcs8_private_key(pkcs8, what, "RSA key").map(<[u8]>::to_vec)
}

/// The DER of prime256v1's OID, 1.2.840.10045.3.1.7.
const P256_OID: [u8; 10] = [0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];

/// A P-256 key as Go's `x509.MarshalECPrivateKey` writes it (SEC 1, RFC 5915): version 1, the
/// 32-byte private scalar, the curve's OID, the uncompressed public point. PKCS#8 carries the
/// same `ECPrivateKey` without the curve (it is in the algorithm), which Go refuses alone.
fn sec1_p256(pkcs8: &[u8], public_point: &[u8], what: &str) -> Result<Vec<u8>, SeedPkiError> {
    use x509_parser::der_parser::ber::BerObjectContent;
    let expected = "P-256 key";
    let bad = || SeedPkiError::KeyEncoding {
        what: what.to_string(),
        expected,
    };
    let inner = pkcs8_private_key(pkcs8, what, expected)?;
    let (_, ec) = x509_parser::der_parser::parse_der(inner).map_err(|_| bad())?;
    let fields = ec.as_sequence().map_err(|_| bad())?;
    let scalar = match fields.get(1).map(|f| &f.content) {
        Some(BerObjectContent::OctetString(s)) if s.len() <= 32 => *s,
        _ => return Err(bad()),
    };
    if public_point.len() != 65 || public_point[0] != 0x04 {
        return Err(bad());
    }
    let mut d = [0u8; 32];
    d[32 - scalar.len()..].copy_from_slice(scalar);
    let mut body = vec![0x02, 0x01, 0x01, 0x04, 0x20];
    body.extend_from_slice(&d);
    body.extend_from_slice(&[0xa0, P256_OID.len() as u8]);
    body.extend_from_slice(&P256_OID);
    body.extend_from_slice(&[0xa1, 0x44, 0x03, 0x42, 0x00]);
    body.extend_from_slice(public_point);
    let mut out = vec![0x30, body.len() as u8];
    out.extend_from_slice(&body);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::extensions::{GeneralName, ParsedExtension};
    use x509_parser::prelude::{FromDer, X509Certificate};

    fn der_of(pem_text: &str, tag: &str) -> Vec<u8> {
        let p = pem::parse(pem_text).unwrap();
        assert_eq!(p.tag(), tag);
        p.into_contents()
    }

    fn now() -> OffsetDateTime {
        time::macros::datetime!(2024-05-01 12:34:56 UTC)
    }

    fn server_request() -> Request {
        Request {
            cn: "etcd2".into(),
            names: Some(Names {
                country: "US".into(),
                state: "CA".into(),
                locality: "San Francisco".into(),
            }),
            hosts: vec!["etcd2".into(), "10.77.3.12".into()],
        }
    }

    #[test]
    fn the_ca_is_what_cfssl_initca_makes() {
        let ca = SeedCa::init(now()).unwrap();
        let der = der_of(&ca.bare().cert, "CERTIFICATE");
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert_eq!(cert.subject().to_string(), "CN=etcd");
        assert_eq!(cert.issuer().to_string(), "CN=etcd");
        cert.verify_signature(None).unwrap();
        let v = cert.validity();
        assert_eq!(
            v.not_before.to_datetime(),
            time::macros::datetime!(2024-05-01 12:30:00 UTC)
        );
        assert_eq!(
            v.not_after.to_datetime() - v.not_before.to_datetime(),
            EXPIRY
        );
        assert_eq!(
            cert.public_key().algorithm.algorithm.to_id_string(),
            "1.2.840.113549.1.1.1"
        );
        assert_eq!(
            cert.signature_algorithm.algorithm.to_id_string(),
            "1.2.840.113549.1.1.11"
        );
        let serial = cert.raw_serial();
        assert!(serial.len() <= 20 && serial[0] & 0x80 == 0);

        let mut seen = Vec::new();
        for ext in cert.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::BasicConstraints(bc) => {
                    assert!(ext.critical && bc.ca && bc.path_len_constraint.is_none());
                }
                ParsedExtension::KeyUsage(ku) => {
                    assert!(ext.critical);
                    assert!(ku.key_cert_sign() && ku.crl_sign());
                    assert!(!ku.digital_signature() && !ku.key_encipherment());
                }
                ParsedExtension::SubjectKeyIdentifier(ski) => {
                    assert!(!ext.critical);
                    let bits = &cert.public_key().subject_public_key.data;
                    assert_eq!(ski.0, key_id_of_bits(bits).as_slice());
                }
                other => panic!("cfssl's CA has no {other:?}"),
            }
            seen.push(ext.oid.to_id_string());
        }
        assert_eq!(seen.len(), 3, "{seen:?}");

        let key = der_of(&ca.bare().key, "RSA PRIVATE KEY");
        let rsa = aws_lc_rs::rsa::KeyPair::from_der(&key).expect("PKCS#1 RSA key");
        assert_eq!(rsa.public_modulus_len(), 256);
        let csr = der_of(&ca.bare().csr, "CERTIFICATE REQUEST");
        let (_, req) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&csr).unwrap();
        assert_eq!(
            req.certification_request_info.subject.to_string(),
            "CN=etcd"
        );
        assert!(req
            .requested_extensions()
            .is_none_or(|mut e| e.next().is_none()));
    }

    fn key_id_of_bits(bits: &[u8]) -> Vec<u8> {
        aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA1_FOR_LEGACY_USE_ONLY, bits)
            .as_ref()
            .to_vec()
    }

    #[test]
    fn server_and_client_certificates_follow_their_profiles() {
        let ca = SeedCa::init(now()).unwrap();
        let ca_der = der_of(&ca.bare().cert, "CERTIFICATE");
        let (_, ca_cert) = X509Certificate::from_der(&ca_der).unwrap();
        let ca_ski = key_id_of_bits(&ca_cert.public_key().subject_public_key.data);

        let server = ca
            .gencert(Profile::Server, &server_request(), now())
            .unwrap();
        let der = der_of(&server.cert, "CERTIFICATE");
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert_eq!(
            cert.subject().to_string(),
            "C=US, ST=CA, L=San Francisco, CN=etcd2"
        );
        assert_eq!(cert.issuer().to_string(), "CN=etcd");
        cert.verify_signature(Some(ca_cert.public_key())).unwrap();
        assert_eq!(
            cert.public_key().algorithm.algorithm.to_id_string(),
            "1.2.840.10045.2.1"
        );
        let mut sans = Vec::new();
        for ext in cert.extensions() {
            match ext.parsed_extension() {
                ParsedExtension::BasicConstraints(bc) => assert!(ext.critical && !bc.ca),
                ParsedExtension::KeyUsage(ku) => {
                    assert!(ext.critical && ku.digital_signature() && ku.key_encipherment());
                    assert!(!ku.key_cert_sign());
                }
                ParsedExtension::ExtendedKeyUsage(eku) => {
                    assert!(eku.server_auth && eku.client_auth && !eku.any);
                }
                ParsedExtension::SubjectKeyIdentifier(ski) => {
                    let bits = &cert.public_key().subject_public_key.data;
                    assert_eq!(ski.0, key_id_of_bits(bits).as_slice());
                }
                ParsedExtension::AuthorityKeyIdentifier(aki) => {
                    assert_eq!(aki.key_identifier.as_ref().unwrap().0, ca_ski.as_slice());
                }
                ParsedExtension::SubjectAlternativeName(san) => {
                    for n in &san.general_names {
                        sans.push(match n {
                            GeneralName::DNSName(d) => format!("DNS:{d}"),
                            GeneralName::IPAddress(ip) => format!("IP:{ip:?}"),
                            other => panic!("unexpected name {other:?}"),
                        });
                    }
                }
                other => panic!("unexpected extension {other:?}"),
            }
        }
        assert_eq!(sans, ["DNS:etcd2", "IP:[10, 77, 3, 12]"]);

        // The key is SEC 1 with the curve, as Go writes it, and matches the certificate.
        let key = der_of(&server.key, "EC PRIVATE KEY");
        assert_eq!(key.len(), 121);
        let pair = aws_lc_rs::signature::EcdsaKeyPair::from_private_key_der(
            &aws_lc_rs::signature::ECDSA_P256_SHA256_ASN1_SIGNING,
            &key,
        )
        .expect("SEC 1 P-256 key");
        use aws_lc_rs::signature::KeyPair as _;
        assert_eq!(
            pair.public_key().as_ref(),
            cert.public_key().subject_public_key.data.as_ref()
        );
        assert_eq!(key[39..41], [0xa0, 0x0a]);
        assert_eq!(key[41..51], P256_OID);

        let csr = der_of(&server.csr, "CERTIFICATE REQUEST");
        let (_, req) =
            x509_parser::certification_request::X509CertificationRequest::from_der(&csr).unwrap();
        req.verify_signature().unwrap();
        assert_eq!(
            req.certification_request_info.subject.to_string(),
            "C=US, ST=CA, L=San Francisco, CN=etcd2"
        );

        let client = ca
            .gencert(
                Profile::Client,
                &Request {
                    cn: "client".into(),
                    names: None,
                    hosts: Vec::new(),
                },
                now(),
            )
            .unwrap();
        let der = der_of(&client.cert, "CERTIFICATE");
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        assert_eq!(cert.subject().to_string(), "CN=client");
        cert.verify_signature(Some(ca_cert.public_key())).unwrap();
        let eku = cert.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.client_auth && !eku.server_auth);
        assert!(cert.subject_alternative_name().unwrap().is_none());
        // Two requests make two keys (the seed's server and peer certificates differ).
        let peer = ca.gencert(Profile::Peer, &server_request(), now()).unwrap();
        assert_ne!(peer.key, server.key);
        assert!(!format!("{peer:?}").contains("PRIVATE"));
    }

    #[test]
    fn validity_rounds_like_go() {
        let t =
            |s| OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339).unwrap();
        assert_eq!(
            round_to_minute(t("2024-05-01T12:34:29Z")),
            t("2024-05-01T12:34:00Z")
        );
        assert_eq!(
            round_to_minute(t("2024-05-01T12:34:30Z")),
            t("2024-05-01T12:35:00Z")
        );
        assert_eq!(
            round_to_minute(t("2024-05-01T23:59:45Z")),
            t("2024-05-02T00:00:00Z")
        );
    }
}
