//! The certificate family: a key born on the host and a certificate for it from haop's CA.
//!
//! `check` reads the certificate in place (never the key: the agent refuses to answer keys) and
//! says why it must be issued again, if it must ([`Reissue`]): missing, its key missing, not
//! signed by haop's CA, another common name or other names than the inventory gives the host,
//! close to expiry, or haop's CA missing from the CA file next to it. The common name matters
//! as much as the names: one master's etcd client certificate copied onto another (as kubeadm's
//! `--upload-certs` does with external etcd files) is signed by haop's CA and has no names at
//! all, and only its CN says it is another host's.
//! `run` issues it through the CSR flow ([`issue_certificate`]): the host makes the key and a
//! CSR (`CreateCsr`, which keeps an existing key unless asked to rotate), haop's CA checks the
//! CSR's names and signs, and the host installs the certificate and the CA next to the key
//! (`InstallCertificate`, which refuses a certificate that does not match the key). No private
//! key travels.
//!
//! Stopped midway, the flow leaves a key on the host and the old certificate (or none) in place,
//! or (the agent installs the certificate, then the CA) a certificate without its CA file.
//! Apply's own issuance keeps an existing key, so its rerun simply issues for it. A renewal that
//! rotated the key and stopped before the install leaves a new key under an old, still valid
//! certificate: `check` cannot see that (it does not touch the host, and the key never leaves
//! it), so `run` asks the host for a CSR of the key in place (`CreateCsr` without rotating:
//! nothing changes on the host) and issues again when its public key is not the certificate's.
//!
//! `haop certs renew` uses [`issue_certificate`] with `rotate` to get a new key as well.

use haop_proto::v1 as pb;
use tracing::info;

use super::change::Change;
use super::context::RunContext;
use crate::agent::{AgentError, HostAgent};
use crate::pki::inspect::csr_spki_sha256;
use crate::pki::{inspect, ExpectedNames, KeyAlgorithm, PkiError, SigningRequest};
use crate::runbook::plan::{CertificateSpec, Issuer};

/// Errors of the certificate family.
#[derive(Debug, thiserror::Error)]
pub enum CertificateError {
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// haop's CA refused the host's CSR, or its own certificate does not parse.
    #[error("certificate {cert_path}")]
    Pki {
        cert_path: String,
        #[source]
        source: PkiError,
    },
}

/// Why a certificate in place is not one haop would issue now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reissue {
    Missing,
    KeyMissing {
        key_path: String,
    },
    Unparsable,
    NoCertificate,
    ForeignIssuer,
    /// The subject's CN is not the one the spec wants (another host's certificate).
    CommonNameDiffers {
        have: Option<String>,
        want: String,
    },
    NamesDiffer {
        have: Vec<String>,
        want: Vec<String>,
    },
    Expiring {
        hours_left: i64,
    },
    /// The CA file next to the certificate is missing or does not hold haop's CA.
    CaMissing {
        ca_path: String,
    },
}

impl Reissue {
    /// The reason as `haop plan` says it, about the certificate at `cert_path`.
    pub fn describe(&self, cert_path: &str) -> String {
        match self {
            Reissue::Missing => format!("create {cert_path}"),
            Reissue::KeyMissing { key_path } => format!("{key_path} is missing"),
            Reissue::Unparsable => format!("{cert_path} does not parse"),
            Reissue::NoCertificate => format!("{cert_path} holds no certificate"),
            Reissue::ForeignIssuer => format!("{cert_path} is not signed by haop's CA"),
            Reissue::CommonNameDiffers { have, want } => format!(
                "{cert_path} is for CN {}, not {want}",
                have.as_deref().unwrap_or("(none)")
            ),
            Reissue::NamesDiffer { have, want } => format!(
                "{cert_path} names [{}] differ from [{}]",
                have.join(", "),
                want.join(", ")
            ),
            Reissue::Expiring { hours_left } => {
                format!("{cert_path} expires in {hours_left} hours")
            }
            Reissue::CaMissing { ca_path } => format!("{ca_path} does not hold haop's CA"),
        }
    }
}

/// What `spec` would change on the host behind `c`.
pub async fn check(
    spec: &CertificateSpec,
    c: &HostAgent,
    ctx: &RunContext,
) -> Result<Change, CertificateError> {
    Ok(match problem(spec, c, ctx).await? {
        None => Change::Unchanged,
        Some(why) => Change::Create {
            detail: format!(
                "issue {}: {}",
                spec.cert_path,
                why.describe(&spec.cert_path)
            ),
            diff: String::new(),
        },
    })
}

/// Issues the certificate of `spec` unless the one in place will do, for the key in place;
/// answers whether it did.
pub async fn run(
    spec: &CertificateSpec,
    c: &HostAgent,
    ctx: &RunContext,
) -> Result<bool, CertificateError> {
    let (key_algorithm, spki_sha256) = match in_place(spec, c, ctx).await? {
        InPlace::Reissue(_) => {
            issue_certificate(c, ctx, spec, false).await?;
            return Ok(true);
        }
        InPlace::Fine {
            key_algorithm,
            spki_sha256,
        } => (key_algorithm, spki_sha256),
    };
    // The certificate will do; is it still for the key on the host? Asked for the algorithm of
    // the certificate, so a key of that algorithm is kept as it is.
    let algorithm = key_algorithm.parse().unwrap_or(ctx.key_algorithm);
    let csr = create_csr(c, spec, algorithm, false).await?;
    let key = csr_spki_sha256(c.host(), &csr).map_err(pki_err(spec))?;
    if key == spki_sha256 {
        return Ok(false);
    }
    info!(host = c.host(), cert = %spec.cert_path, "the certificate in place is not for the key in place; issuing again");
    sign_and_install(c, ctx, spec, &csr).await?;
    Ok(true)
}

/// The certificate in place, or why it must be issued again.
enum InPlace {
    /// It will do, if it is for the key in place: its key's algorithm and `sha256:` pin.
    Fine {
        key_algorithm: String,
        spki_sha256: String,
    },
    Reissue(Reissue),
}

/// Why the certificate at `spec.cert_path` is not one haop would issue now (signed by haop's
/// CA, the expected names, far from expiry); `None` when it will do.
pub async fn problem(
    spec: &CertificateSpec,
    c: &HostAgent,
    ctx: &RunContext,
) -> Result<Option<Reissue>, CertificateError> {
    Ok(match in_place(spec, c, ctx).await? {
        InPlace::Fine { .. } => None,
        InPlace::Reissue(why) => Some(why),
    })
}

async fn in_place(
    spec: &CertificateSpec,
    c: &HostAgent,
    ctx: &RunContext,
) -> Result<InPlace, CertificateError> {
    let Some((pem, _)) = c.read_text(&spec.cert_path).await? else {
        return Ok(InPlace::Reissue(Reissue::Missing));
    };
    if !c.exists(&spec.key_path).await? {
        return Ok(InPlace::Reissue(Reissue::KeyMissing {
            key_path: spec.key_path.clone(),
        }));
    }
    let Ok(infos) = inspect(&pem) else {
        return Ok(InPlace::Reissue(Reissue::Unparsable));
    };
    let Some(info) = infos.into_iter().next() else {
        return Ok(InPlace::Reissue(Reissue::NoCertificate));
    };
    let ca = inspect(ca_of(spec, ctx).cert_pem()).map_err(pki_err(spec))?;
    let ca_ski = ca.first().and_then(|c| c.subject_key_id.clone());
    if info.authority_key_id.is_none() || info.authority_key_id != ca_ski {
        return Ok(InPlace::Reissue(Reissue::ForeignIssuer));
    }
    if info.common_name.as_deref() != Some(spec.common_name.as_str()) {
        return Ok(InPlace::Reissue(Reissue::CommonNameDiffers {
            have: info.common_name.clone(),
            want: spec.common_name.clone(),
        }));
    }
    let mut have: Vec<String> = info.dns_names.clone();
    have.extend(info.ip_addresses.iter().cloned());
    let mut want = spec.names.to_strings();
    have.sort();
    want.sort();
    if have != want {
        return Ok(InPlace::Reissue(Reissue::NamesDiffer { have, want }));
    }
    let left = info.not_after - time::OffsetDateTime::now_utc();
    if left < ctx.renew_within {
        return Ok(InPlace::Reissue(Reissue::Expiring {
            hours_left: left.whole_hours(),
        }));
    }
    // The CA file may hold more than haop's CA (a bundle); haop's must be among them.
    let ca_in_place = c.read_text(&spec.ca_path).await?.is_some_and(|(pem, _)| {
        inspect(&pem).is_ok_and(|certs| {
            certs
                .iter()
                .any(|c| c.subject_key_id.is_some() && c.subject_key_id == ca_ski)
        })
    });
    if !ca_in_place {
        return Ok(InPlace::Reissue(Reissue::CaMissing {
            ca_path: spec.ca_path.clone(),
        }));
    }
    Ok(InPlace::Fine {
        key_algorithm: info.key_algorithm,
        spki_sha256: info.spki_sha256,
    })
}

fn pki_err(spec: &CertificateSpec) -> impl FnOnce(PkiError) -> CertificateError + '_ {
    move |source| CertificateError::Pki {
        cert_path: spec.cert_path.clone(),
        source,
    }
}

fn ca_of<'a>(spec: &CertificateSpec, ctx: &'a RunContext) -> &'a crate::pki::CertificateAuthority {
    match spec.issuer {
        Issuer::Etcd => &ctx.etcd_ca,
    }
}

/// Issues the certificate of `spec` through the CSR flow: the host makes the key (a new one
/// when `rotate`) and a CSR, haop's CA signs it, the host installs it.
pub async fn issue_certificate(
    c: &HostAgent,
    ctx: &RunContext,
    spec: &CertificateSpec,
    rotate: bool,
) -> Result<(), CertificateError> {
    let csr = create_csr(c, spec, ctx.key_algorithm, rotate).await?;
    sign_and_install(c, ctx, spec, &csr).await
}

/// The host's CSR for the key at `spec.key_path` (made first when missing, of another
/// algorithm than `algorithm`, or when `rotate`).
async fn create_csr(
    c: &HostAgent,
    spec: &CertificateSpec,
    algorithm: KeyAlgorithm,
    rotate: bool,
) -> Result<String, CertificateError> {
    let names: &ExpectedNames = &spec.names;
    Ok(c.create_csr(pb::CreateCsrRequest {
        key_path: spec.key_path.clone(),
        common_name: spec.common_name.clone(),
        dns_names: names.dns.clone(),
        ip_addresses: names.ips.iter().map(|i| i.to_string()).collect(),
        rotate,
        algorithm: pb::KeyAlgorithm::from(algorithm) as i32,
        ..Default::default()
    })
    .await?
    .csr_pem)
}

/// The second half of issuance: haop's CA checks the CSR's names and signs; the host installs
/// the certificate (after checking it is for its key) and the CA.
async fn sign_and_install(
    c: &HostAgent,
    ctx: &RunContext,
    spec: &CertificateSpec,
    csr_pem: &str,
) -> Result<(), CertificateError> {
    let ca = ca_of(spec, ctx);
    let cert = ca
        .sign_csr(
            csr_pem,
            &SigningRequest {
                profile: spec.profile,
                lifetime: ctx.cert_lifetime,
                expected: spec.names.clone(),
                organization: None,
                common_name: spec.common_name.clone(),
            },
        )
        .map_err(pki_err(spec))?;
    c.install_certificate(pb::InstallCertificateRequest {
        cert_path: spec.cert_path.clone(),
        cert_pem: cert,
        key_path: spec.key_path.clone(),
        ca_path: spec.ca_path.clone(),
        ca_pem: match spec.issuer {
            Issuer::Etcd => ctx.etcd_trust_pem.clone(),
        },
    })
    .await?;
    Ok(())
}
