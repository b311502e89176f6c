//! Enrollment: how an agent gets its identity without any key crossing the wire.
//!
//! The operator gives the agent a bootstrap token and the agent CA's hash (`haop token create`
//! prints both). Until it is enrolled the agent serves only this service, without TLS:
//!
//! 1. `Challenge`: the coordinator sends a nonce and the names the agent's serving certificate
//!    must carry. The agent generates its key in its pki dir (0600; reused on a retry), and
//!    answers with its own nonce, a CSR, and a signature with the key derived from the token's
//!    secret over both nonces and the CSR ([`haop_proto::enroll`]): proof that it holds the
//!    token, bound to this exchange and this key, which the coordinator checks without holding
//!    the secret.
//! 2. `Complete`: the coordinator, having checked the proof and the names, sends the agent CA and
//!    the signed certificate. The agent checks that the CA's public key hashes to the pin, that
//!    the CA signed the certificate, and that the certificate is for its key: proof that the
//!    caller holds the pinned CA. It stores both (the CA last: its presence means enrolled) and
//!    the server switches to mTLS.

use std::net::IpAddr;
use std::sync::Arc;

use haop_proto::enroll::Token;
use haop_proto::v1 as pb;
use haop_proto::v1::enrollment_server::Enrollment;
use sha2::{Digest, Sha256};
use tokio::sync::{Mutex, Notify};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::csr::{self, KeyAlgorithm};
use crate::identity::IdentityStore;

/// What the operator configured for enrollment.
#[derive(Debug, Clone)]
pub struct EnrollConfig {
    pub token: Option<Token>,
    /// "sha256:<hex>" of the agent CA's SubjectPublicKeyInfo.
    pub ca_hash: Option<String>,
    pub hostname: String,
}

#[derive(Debug)]
struct Pending {
    agent_nonce: Vec<u8>,
}

/// The `haop.agent.v1.Enrollment` service.
#[derive(Debug, Clone)]
pub struct EnrollmentService {
    config: EnrollConfig,
    identity: IdentityStore,
    pending: Arc<Mutex<Option<Pending>>>,
    enrolled: Arc<Notify>,
}

/// `sha256:<hex>` of a certificate's SubjectPublicKeyInfo.
pub fn spki_pin_of(cert: &x509_parser::certificate::X509Certificate<'_>) -> String {
    format!(
        "sha256:{}",
        hex::encode(Sha256::digest(cert.tbs_certificate.subject_pki.raw))
    )
}

impl EnrollmentService {
    pub fn new(config: EnrollConfig, identity: IdentityStore, enrolled: Arc<Notify>) -> Self {
        EnrollmentService {
            config,
            identity,
            pending: Arc::new(Mutex::new(None)),
            enrolled,
        }
    }

    fn refuse_if_enrolled(&self) -> Result<(), Status> {
        if self.identity.is_enrolled() {
            return Err(Status::failed_precondition(
                "this agent is already enrolled; it serves mTLS only",
            ));
        }
        Ok(())
    }

    fn token(&self) -> Result<&Token, Status> {
        self.config.token.as_ref().ok_or_else(|| {
            Status::failed_precondition(
                "this agent has no bootstrap token: set token and ca_hash under [enroll] in its \
                 config (haop token create prints both)",
            )
        })
    }
}

fn random_nonce() -> Result<Vec<u8>, Status> {
    let mut n = vec![0u8; 32];
    getrandom::fill(&mut n).map_err(|e| Status::internal(format!("no randomness: {e}")))?;
    Ok(n)
}

#[tonic::async_trait]
impl Enrollment for EnrollmentService {
    async fn challenge(
        &self,
        req: Request<pb::ChallengeRequest>,
    ) -> Result<Response<pb::ChallengeResponse>, Status> {
        self.refuse_if_enrolled()?;
        let token = self.token()?.clone();
        let req = req.into_inner();
        if !req.token_id.is_empty() && req.token_id != token.id {
            return Err(Status::permission_denied(format!(
                "this agent holds bootstrap token {}, not {}",
                token.id, req.token_id
            )));
        }
        if req.coordinator_nonce.len() < 16 {
            return Err(Status::invalid_argument(
                "coordinator_nonce must be at least 16 bytes",
            ));
        }
        let ips = req
            .ip_addresses
            .iter()
            .map(|a| {
                a.parse::<IpAddr>()
                    .map_err(|_| Status::invalid_argument(format!("invalid IP address {a:?}")))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let key_path = self.identity.key_path();
        let out = csr::generate_key_and_csr(
            &key_path,
            KeyAlgorithm::EcdsaP256,
            &self.config.hostname,
            None,
            &req.dns_names,
            &ips,
            false,
        )
        .map_err(|e| Status::internal(crate::error::render_chain(&e)))?;
        let agent_nonce = random_nonce()?;
        let signature = token.sign(&req.coordinator_nonce, &agent_nonce, &out.csr_pem);
        *self.pending.lock().await = Some(Pending {
            agent_nonce: agent_nonce.clone(),
        });
        info!(token = %token.id, "enrollment challenge answered");
        Ok(Response::new(pb::ChallengeResponse {
            agent_nonce,
            csr_pem: out.csr_pem,
            hostname: self.config.hostname.clone(),
            token_id: token.id.clone(),
            token_signature: signature,
            ..Default::default()
        }))
    }

    async fn complete(
        &self,
        req: Request<pb::CompleteRequest>,
    ) -> Result<Response<pb::CompleteResponse>, Status> {
        self.refuse_if_enrolled()?;
        let req = req.into_inner();
        let mut pending = self.pending.lock().await;
        match pending.as_ref() {
            Some(p) if p.agent_nonce == req.agent_nonce => {}
            _ => {
                return Err(Status::failed_precondition(
                    "no matching enrollment challenge: call Challenge first",
                ))
            }
        }
        let pin = self.config.ca_hash.as_deref().ok_or_else(|| {
            Status::failed_precondition(
                "this agent has no CA hash configured (ca_hash under [enroll])",
            )
        })?;
        let (_, ca_block) = x509_parser::pem::parse_x509_pem(req.ca_pem.as_bytes())
            .map_err(|e| Status::invalid_argument(format!("CA certificate is not PEM: {e}")))?;
        let ca = ca_block
            .parse_x509()
            .map_err(|e| Status::invalid_argument(format!("CA certificate does not parse: {e}")))?;
        let actual = spki_pin_of(&ca);
        if !actual.eq_ignore_ascii_case(pin) {
            warn!(expected = %pin, actual = %actual, "enrollment refused: CA does not match the pin");
            return Err(Status::permission_denied(format!(
                "the coordinator's CA hashes to {actual}, not to the pinned {pin}: refusing to \
                 trust it"
            )));
        }
        let (_, cert_block) = x509_parser::pem::parse_x509_pem(req.cert_pem.as_bytes())
            .map_err(|e| Status::invalid_argument(format!("certificate is not PEM: {e}")))?;
        let cert = cert_block
            .parse_x509()
            .map_err(|e| Status::invalid_argument(format!("certificate does not parse: {e}")))?;
        cert.verify_signature(Some(ca.public_key())).map_err(|_| {
            Status::permission_denied("the serving certificate is not signed by the pinned CA")
        })?;
        if !cert.validity().is_valid() {
            return Err(Status::invalid_argument(
                "the serving certificate is not valid now (check the clocks)",
            ));
        }
        let render = |e: csr::CsrError| Status::invalid_argument(crate::error::render_chain(&e));
        csr::install_certificate(
            &self.identity.cert_path(),
            &req.cert_pem,
            &self.identity.key_path(),
        )
        .map_err(render)?;
        csr::install_ca_certificate(&self.identity.ca_path(), &req.ca_pem, &req.cert_pem)
            .map_err(render)?;
        *pending = None;
        info!(pin = %pin, "agent enrolled; switching to mTLS");
        self.enrolled.notify_one();
        Ok(Response::new(pb::CompleteResponse { enrolled: true }))
    }
}
