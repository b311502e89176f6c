//! The agent's trust bundle: the CA certificates it accepts client certificates (and revocation
//! lists) from, and how it may change.
//!
//! Enrollment writes one CA, the agent CA whose hash the operator pinned, to `pki/ca.crt`.
//! Rotating the agent CA without downtime (`haop certs rotate-ca --agent`, Gardener's bundle
//! protocol) needs a bundle: old and new CA while every party moves to certificates of the new
//! one, then the new one alone. `InstallTrustBundle` replaces the bundle; [`check_install`]
//! decides whether an offered bundle may replace the one in force, [`parse_bundle`] whether it
//! is a bundle at all.
//!
//! # Who may change what the agent trusts, and why these rules
//!
//! The trust bundle is the root of everything else the agent enforces: which callers exist,
//! which revocation lists count. An `haop:admin` certificate is powerful on its host (Exec's
//! allow-list is root), but it is short-lived, revocable and can be taken away; what it must not
//! be able to do is make itself permanent or lock the legitimate coordinator out, by swapping
//! the CA. So:
//!
//! 1. **The bundle must hold the CA that issued the caller's own certificate.** A caller who
//!    could not call again after the change (the coordinator dropping the old CA before its own
//!    certificate was re-issued from the new one) is refused: no mistake in the order of a
//!    rotation can cut the coordinator off.
//! 2. **A CA the agent does not trust yet must be endorsed by one it trusts now**: the request
//!    carries, for each added CA, a certificate for that CA's key and name signed by a trusted
//!    CA's key (an X.509 cross-certificate, "new with old"). Rule 1 alone would not stop a thief
//!    of an admin key: add their own CA beside the real one (the caller still chains to the
//!    real one), get a certificate from it, then install their CA alone (now the caller chains
//!    to theirs). Rule 2 makes trust extensible only by whoever holds a trusted CA's *key*,
//!    which never leaves the coordinator's state dir; an admin certificate can at most shrink
//!    the bundle to CAs already trusted, and never below its own issuer (rule 1).
//! 3. **The bundle must still verify the revocation list the agent enforces.** A list whose
//!    signer left the bundle would be ignored at the next start, un-revoking what it listed;
//!    the coordinator installs a list signed by the new CA before it drops the old one.
//! 4. **It must be a bundle**: 1 to [`MAX_BUNDLE`] distinct certificates, each a self-signed CA
//!    (CA:TRUE, certificate signing allowed when key usages are given) valid now, and nothing
//!    else (a private key in the request is refused outright).
//!
//! Lifecycle: [`TrustBundle`] is loaded with the identity when the agent serves mTLS
//! ([`crate::tls::LiveTls`]), and replaced in memory right after `ca.crt` is rewritten, so the
//! next TLS handshake and the next call see the new bundle; [`crate::policy::Policy::admit`]
//! asks [`TrustBundle::admits`] on every call, so a connection opened under the old bundle by a
//! certificate of a CA dropped since is refused from its next call, as a revoked one is.

use std::sync::{Arc, RwLock};

use sha2::{Digest, Sha256};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;

/// Most CAs a bundle may hold: a rotation needs two; a few more leave room, a cap keeps every
/// handshake's work bounded.
pub const MAX_BUNDLE: usize = 8;

/// Why a bundle, an endorsement or a serving certificate was refused; each names the
/// certificate concerned.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("the trust bundle is empty: it needs at least one CA certificate")]
    Empty,
    #[error("the trust bundle holds {count} certificates; at most {MAX_BUNDLE} are accepted")]
    TooMany { count: usize },
    #[error("{what}: {reason}")]
    Format { what: &'static str, reason: String },
    #[error("{what} number {index} ({subject}) {reason}")]
    Unacceptable {
        what: &'static str,
        index: usize,
        subject: String,
        reason: String,
    },
    #[error(
        "the trust bundle does not hold the CA that issued the caller's certificate \
         ({caller}, issued by {issuer}): the caller could not call this agent again; re-issue \
         the caller's certificate from a CA of the new bundle first"
    )]
    LocksOutCaller { caller: String, issuer: String },
    #[error(
        "the trust bundle adds {subject} ({pin}), which this agent does not trust yet, without \
         an endorsement: a certificate for that CA's key issued by a CA this agent trusts now \
         (only the holder of a trusted CA's key can extend what the agent trusts)"
    )]
    NotEndorsed { subject: String, pin: String },
    #[error(
        "the trust bundle leaves out the CA that signed the revocation list this agent enforces \
         (number {generation}); install a list signed by a CA of the new bundle first"
    )]
    DropsRevocationSigner { generation: u64 },
}

/// One CA certificate of a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaCert {
    /// The certificate, DER.
    pub der: Vec<u8>,
    /// `sha256:<hex>` of its SubjectPublicKeyInfo: the enrollment pin's form.
    pub pin: String,
    /// Its subject, for messages.
    pub subject: String,
}

impl CaCert {
    fn parsed(&self) -> X509Certificate<'_> {
        x509_parser::parse_x509_certificate(&self.der)
            .expect("a CaCert is made from a certificate that parsed")
            .1
    }

    /// Whether this CA issued `cert`: its subject is `cert`'s issuer and its key verifies
    /// `cert`'s signature.
    pub fn issued(&self, cert: &X509Certificate<'_>) -> bool {
        let ca = self.parsed();
        cert.issuer().as_raw() == ca.subject().as_raw()
            && cert.verify_signature(Some(ca.public_key())).is_ok()
    }

    /// The certificate, PEM.
    pub fn pem(&self) -> String {
        let b64 = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &self.der);
        let mut out = String::from("-----BEGIN CERTIFICATE-----\n");
        for line in b64.as_bytes().chunks(64) {
            out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            out.push('\n');
        }
        out.push_str("-----END CERTIFICATE-----\n");
        out
    }
}

/// `sha256:<hex>` of a certificate's SubjectPublicKeyInfo.
pub fn pin_of(cert: &X509Certificate<'_>) -> String {
    format!(
        "sha256:{}",
        hex::encode(Sha256::digest(cert.tbs_certificate.subject_pki.raw))
    )
}

/// The certificates of `pem`, DER, in order; any block that is not a certificate (a private
/// key above all) refuses the whole text.
pub fn certificates(pem: &str, what: &'static str) -> Result<Vec<Vec<u8>>, TrustError> {
    let mut out = Vec::new();
    for block in x509_parser::pem::Pem::iter_from_buffer(pem.as_bytes()) {
        let block = block.map_err(|e| TrustError::Format {
            what,
            reason: format!("invalid PEM ({e})"),
        })?;
        if block.label != "CERTIFICATE" {
            return Err(TrustError::Format {
                what,
                reason: format!(
                    "it holds a {:?} block; only certificates are accepted",
                    block.label
                ),
            });
        }
        x509_parser::parse_x509_certificate(&block.contents).map_err(|e| TrustError::Format {
            what,
            reason: format!("certificate number {} does not parse ({e})", out.len() + 1),
        })?;
        out.push(block.contents);
    }
    Ok(out)
}

fn ca_cert(der: Vec<u8>) -> CaCert {
    let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("parsed before");
    let (pin, subject) = (pin_of(&cert), cert.subject().to_string());
    CaCert { der, pin, subject }
}

/// A bundle as stored (`pki/ca.crt`): its certificates, without the checks an offered bundle
/// gets (the file was checked when it was written; an expired CA in it simply verifies no
/// certificate).
pub fn read_bundle(pem: &str) -> Result<Vec<CaCert>, TrustError> {
    let certs = certificates(pem, "the trust bundle")?;
    if certs.is_empty() {
        return Err(TrustError::Empty);
    }
    Ok(certs.into_iter().map(ca_cert).collect())
}

/// An offered bundle, checked (rule 4 of the module doc): 1 to [`MAX_BUNDLE`] distinct
/// self-signed CA certificates, valid now.
pub fn parse_bundle(pem: &str) -> Result<Vec<CaCert>, TrustError> {
    const WHAT: &str = "certificate";
    let certs = certificates(pem, "the trust bundle")?;
    if certs.is_empty() {
        return Err(TrustError::Empty);
    }
    if certs.len() > MAX_BUNDLE {
        return Err(TrustError::TooMany { count: certs.len() });
    }
    let mut out: Vec<CaCert> = Vec::new();
    for (i, der) in certs.into_iter().enumerate() {
        let index = i + 1;
        let (_, cert) = x509_parser::parse_x509_certificate(&der).expect("parsed by certificates");
        let refuse = |reason: &str| TrustError::Unacceptable {
            what: WHAT,
            index,
            subject: cert.subject().to_string(),
            reason: reason.to_string(),
        };
        if !cert.is_ca() {
            return Err(refuse(
                "is not a CA certificate (basicConstraints CA:FALSE)",
            ));
        }
        if let Ok(Some(ku)) = cert.key_usage() {
            if !ku.value.key_cert_sign() {
                return Err(refuse("may not sign certificates (key usage)"));
            }
        }
        if cert.issuer().as_raw() != cert.subject().as_raw() || cert.verify_signature(None).is_err()
        {
            return Err(refuse(
                "is not self-signed: a trust bundle holds root CAs only",
            ));
        }
        if !cert.validity().is_valid() {
            return Err(refuse("is not valid now (expired, or not yet valid)"));
        }
        let ca = ca_cert(der.clone());
        if out.iter().any(|o| o.pin == ca.pin) {
            return Err(refuse("is in the bundle twice"));
        }
        out.push(ca);
    }
    Ok(out)
}

/// What [`check_install`] is given about the request and the agent.
#[derive(Debug)]
pub struct Offer<'a> {
    /// The bundle in force.
    pub current: &'a [CaCert],
    /// The bundle offered, as [`parse_bundle`] read it.
    pub offered: &'a [CaCert],
    /// The request's endorsements, PEM.
    pub endorsements_pem: &'a str,
    /// The caller's client certificate, DER.
    pub caller_der: &'a [u8],
    /// The revocation list the agent enforces, when it holds one, with its number.
    pub held_crl: Option<(&'a str, u64)>,
}

/// Whether `offer.offered` may replace `offer.current` (rules 1 to 3 of the module doc).
pub fn check_install(offer: &Offer<'_>) -> Result<(), TrustError> {
    // 1. The caller keeps its access.
    let (_, caller) =
        x509_parser::parse_x509_certificate(offer.caller_der).map_err(|e| TrustError::Format {
            what: "the caller's certificate",
            reason: e.to_string(),
        })?;
    if !offer.offered.iter().any(|ca| ca.issued(&caller)) {
        return Err(TrustError::LocksOutCaller {
            caller: caller.subject().to_string(),
            issuer: caller.issuer().to_string(),
        });
    }
    // 2. Whatever is new comes endorsed by what is trusted.
    let endorsements = certificates(offer.endorsements_pem, "the endorsements")?;
    for ca in offer.offered {
        if offer.current.iter().any(|c| c.pin == ca.pin) {
            continue;
        }
        let endorsed = endorsements.iter().any(|der| {
            let Ok((_, e)) = x509_parser::parse_x509_certificate(der) else {
                return false;
            };
            let target = ca.parsed();
            e.is_ca()
                && e.validity().is_valid()
                && e.tbs_certificate.subject_pki.raw == target.tbs_certificate.subject_pki.raw
                && e.subject().as_raw() == target.subject().as_raw()
                && offer.current.iter().any(|c| c.issued(&e))
        });
        if !endorsed {
            return Err(TrustError::NotEndorsed {
                subject: ca.subject.clone(),
                pin: ca.pin.clone(),
            });
        }
    }
    // 3. The revocation list in force still verifies.
    if let Some((crl, generation)) = offer.held_crl {
        let bundle: String = offer.offered.iter().map(CaCert::pem).collect();
        if crate::revocation::parse_checked(crl, &bundle).is_err() {
            return Err(TrustError::DropsRevocationSigner { generation });
        }
    }
    Ok(())
}

/// The bundle in force, shared by the TLS acceptor's reloads and every call's admission.
#[derive(Debug, Clone, Default)]
pub struct TrustBundle {
    inner: Arc<RwLock<Vec<CaCert>>>,
}

impl TrustBundle {
    /// The CAs in force.
    pub fn get(&self) -> Vec<CaCert> {
        self.inner.read().expect("trust bundle lock").clone()
    }

    /// Puts `cas` in force.
    pub fn set(&self, cas: Vec<CaCert>) {
        *self.inner.write().expect("trust bundle lock") = cas;
    }

    /// Pins of the CAs in force, in order.
    pub fn pins(&self) -> Vec<String> {
        self.get().into_iter().map(|c| c.pin).collect()
    }

    /// Whether a CA in force issued the certificate `der` (a caller whose CA was dropped since
    /// its connection was opened is not admitted). An empty bundle admits nobody.
    pub fn admits(&self, der: &[u8]) -> bool {
        let Ok((_, cert)) = X509Certificate::from_der(der) else {
            return false;
        };
        self.inner
            .read()
            .expect("trust bundle lock")
            .iter()
            .any(|ca| ca.issued(&cert))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    use time::{Duration, OffsetDateTime};

    struct Ca {
        pem: String,
        params: CertificateParams,
        key: KeyPair,
    }

    fn ca_params(cn: &str) -> CertificateParams {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.distinguished_name.push(DnType::CommonName, cn);
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(30);
        params
    }

    fn ca(cn: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let params = ca_params(cn);
        let pem = params.self_signed(&key).unwrap().pem();
        Ca { pem, params, key }
    }

    impl Ca {
        fn issuer(&self) -> Issuer<'_, &KeyPair> {
            Issuer::from_params(&self.params, &self.key)
        }

        fn client(&self, cn: &str) -> Vec<u8> {
            let key = KeyPair::generate().unwrap();
            let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
            params.distinguished_name.push(DnType::CommonName, cn);
            params
                .distinguished_name
                .push(DnType::OrganizationName, "haop:admin");
            params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
            params
                .signed_by(&key, &self.issuer())
                .unwrap()
                .der()
                .to_vec()
        }

        /// `other`'s key and name, signed by this CA: an endorsement of `other`.
        fn endorse(&self, other: &Ca) -> String {
            ca_params_like(other)
                .signed_by(&other.key, &self.issuer())
                .unwrap()
                .pem()
        }

        fn bundle(&self) -> Vec<CaCert> {
            parse_bundle(&self.pem).unwrap()
        }
    }

    fn ca_params_like(other: &Ca) -> CertificateParams {
        let mut p = other.params.clone();
        p.serial_number = Some(rcgen::SerialNumber::from_slice(&[7]));
        p
    }

    fn both(a: &Ca, b: &Ca) -> Vec<CaCert> {
        parse_bundle(&format!("{}{}", a.pem, b.pem)).unwrap()
    }

    #[test]
    fn a_bundle_is_distinct_self_signed_cas_valid_now() {
        let (old, new) = (ca("old"), ca("new"));
        let two = both(&old, &new);
        assert_eq!(two.len(), 2);
        assert!(two[0].pin.starts_with("sha256:") && two[0].pin != two[1].pin);
        // The PEM written back reads as the same certificate.
        assert_eq!(parse_bundle(&two[1].pem()).unwrap(), vec![two[1].clone()]);

        let err = |pem: &str| parse_bundle(pem).unwrap_err().to_string();
        assert!(err("").contains("empty"));
        assert!(err(&format!("{}{}", old.pem, old.pem)).contains("twice"));
        assert!(err(&old.pem.repeat(9)).contains("at most 8"));
        // A private key, anywhere, refuses the whole text.
        let with_key = format!("{}{}", old.pem, old.key.serialize_pem());
        assert!(
            err(&with_key).contains("only certificates"),
            "{}",
            err(&with_key)
        );
        // A leaf is not a CA.
        let leaf = rcgen::CertificateParams::new(vec!["x".to_string()])
            .unwrap()
            .signed_by(&KeyPair::generate().unwrap(), &old.issuer())
            .unwrap()
            .pem();
        assert!(err(&leaf).contains("not a CA"), "{}", err(&leaf));
        // A CA signed by another is not a root.
        assert!(err(&old.endorse(&new)).contains("self-signed"));
        // An expired CA.
        let key = KeyPair::generate().unwrap();
        let mut p = ca_params("expired");
        p.not_after = OffsetDateTime::now_utc() - Duration::days(1);
        p.not_before = OffsetDateTime::now_utc() - Duration::days(3);
        let expired = p.self_signed(&key).unwrap().pem();
        assert!(err(&expired).contains("not valid now"), "{}", err(&expired));
        // A CA that may not sign certificates.
        let mut p = ca_params("crl only");
        p.key_usages = vec![KeyUsagePurpose::CrlSign];
        let crl_only = p.self_signed(&KeyPair::generate().unwrap()).unwrap().pem();
        assert!(
            err(&crl_only).contains("may not sign"),
            "{}",
            err(&crl_only)
        );
    }

    #[test]
    fn old_and_new_then_new_alone_is_the_rotation() {
        let (old, new) = (ca("old"), ca("new"));
        let endorsement = old.endorse(&new);
        let current = old.bundle();
        let two = both(&old, &new);
        let admin_old = old.client("haop");
        let admin_new = new.client("haop");
        // Step 1: old + new, the new one endorsed by the old.
        check_install(&Offer {
            current: &current,
            offered: &two,
            endorsements_pem: &endorsement,
            caller_der: &admin_old,
            held_crl: None,
        })
        .unwrap();
        // Step 3: new alone, by a caller of the new CA: no endorsement needed, it is trusted.
        check_install(&Offer {
            current: &two,
            offered: &new.bundle(),
            endorsements_pem: "",
            caller_der: &admin_new,
            held_crl: None,
        })
        .unwrap();
        // The same bundle again is allowed (it changes nothing).
        check_install(&Offer {
            current: &current,
            offered: &current,
            endorsements_pem: "",
            caller_der: &admin_old,
            held_crl: None,
        })
        .unwrap();
    }

    #[test]
    fn a_caller_cannot_lock_itself_out() {
        let (old, new) = (ca("old"), ca("new"));
        let two = both(&old, &new);
        let admin_old = old.client("haop");
        let err = check_install(&Offer {
            current: &two,
            offered: &new.bundle(),
            endorsements_pem: "",
            caller_der: &admin_old,
            held_crl: None,
        })
        .unwrap_err();
        assert!(matches!(err, TrustError::LocksOutCaller { .. }), "{err}");
        assert!(err.to_string().contains("CN=haop"), "{err}");
    }

    #[test]
    fn an_admin_certificate_alone_cannot_add_a_ca() {
        // A thief with an admin certificate of the real CA, and a CA of their own.
        let (real, theirs) = (ca("real"), ca("thief"));
        let current = real.bundle();
        let stolen = real.client("haop");
        let two = both(&real, &theirs);
        let offer = |endorsements: &str| {
            check_install(&Offer {
                current: &current,
                offered: &two,
                endorsements_pem: endorsements,
                caller_der: &stolen,
                held_crl: None,
            })
        };
        let err = offer("").unwrap_err();
        assert!(matches!(err, TrustError::NotEndorsed { .. }), "{err}");
        assert!(err.to_string().contains("CN=thief"), "{err}");
        // Endorsed by itself, or by another untrusted CA: still refused.
        assert!(offer(&theirs.endorse(&theirs)).is_err());
        assert!(offer(&ca("other").endorse(&theirs)).is_err());
        // An endorsement of another key under the right name does not count either.
        let impostor = Ca {
            key: KeyPair::generate().unwrap(),
            ..ca("thief")
        };
        assert!(offer(&real.endorse(&impostor)).is_err());
        // Only the real CA's key can vouch for it.
        offer(&real.endorse(&theirs)).unwrap();
    }

    #[test]
    fn the_revocation_list_in_force_must_still_verify() {
        let (old, new) = (ca("old"), ca("new"));
        let two = both(&old, &new);
        let crl = |ca: &Ca| {
            rcgen::CertificateRevocationListParams {
                this_update: OffsetDateTime::now_utc() - Duration::minutes(1),
                next_update: OffsetDateTime::now_utc() + Duration::days(1),
                crl_number: rcgen::SerialNumber::from_slice(&[3]),
                issuing_distribution_point: None,
                revoked_certs: vec![],
                key_identifier_method: rcgen::KeyIdMethod::Sha256,
            }
            .signed_by(&ca.issuer())
            .unwrap()
            .pem()
            .unwrap()
        };
        let admin_new = new.client("haop");
        let drop_old = |held: &str| {
            check_install(&Offer {
                current: &two,
                offered: &new.bundle(),
                endorsements_pem: "",
                caller_der: &admin_new,
                held_crl: Some((held, 3)),
            })
        };
        let err = drop_old(&crl(&old)).unwrap_err();
        assert!(
            matches!(err, TrustError::DropsRevocationSigner { generation: 3 }),
            "{err}"
        );
        drop_old(&crl(&new)).unwrap();
    }

    #[test]
    fn the_bundle_in_force_admits_what_its_cas_issued() {
        let (old, new) = (ca("old"), ca("new"));
        let bundle = TrustBundle::default();
        assert!(!bundle.admits(&old.client("a")), "empty admits nobody");
        bundle.set(both(&old, &new));
        assert!(bundle.admits(&old.client("a")) && bundle.admits(&new.client("b")));
        bundle.set(new.bundle());
        assert!(!bundle.admits(&old.client("a")));
        assert!(bundle.admits(&new.client("b")));
        assert_eq!(bundle.pins(), vec![new.bundle()[0].pin.clone()]);
        assert!(!bundle.admits(b"garbage"));
    }
}
