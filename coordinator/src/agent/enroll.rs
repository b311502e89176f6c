//! Enrollment: how an agent that was installed with a bootstrap token gets its identity.
//!
//! Both sides prove themselves (the agent answers a challenge with a signature, by the key its
//! token derives, over both nonces and its CSR, which the coordinator checks with the token's
//! verifier; the token is then spent on that host; the coordinator answers with a certificate from the CA the agent has
//! pinned), and the agent's key never leaves the host. It lives with the connections because it
//! is the first conversation with an agent; the CA material comes from [`Trust`].

use std::net::IpAddr;
use std::time::Duration;

use haop_proto::v1 as pb;
use haop_proto::v1::enrollment_client::EnrollmentClient;
use tonic::transport::Endpoint;
use tracing::info;

use crate::pki::{ExpectedNames, Profile, SigningRequest, DEFAULT_LIFETIME};
use crate::trust::{Trust, TrustError};

/// Who the coordinator expects at an endpoint: the names its serving certificate may carry.
#[derive(Debug, Clone)]
pub struct ExpectedAgent {
    pub hostname: String,
    pub fqdn: Option<String>,
    pub addresses: Vec<IpAddr>,
}

/// What enrollment did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enrolled {
    /// The agent was enrolled now.
    Now { token_id: String },
    /// It already was (it refused enrollment as already enrolled).
    Already,
}

/// The plaintext endpoint an unenrolled agent serves enrollment on: `https://A:P` -> `http://A:P`.
pub fn bootstrap_endpoint(endpoint: &str) -> String {
    endpoint
        .strip_prefix("https://")
        .map(|rest| format!("http://{rest}"))
        .unwrap_or_else(|| endpoint.to_string())
}

/// Enrolls the agent at `endpoint` (its https endpoint), or finds it already enrolled.
pub async fn enroll(
    trust: &Trust,
    endpoint: &str,
    expected: &ExpectedAgent,
    timeout: Duration,
) -> Result<Enrolled, TrustError> {
    // An enrolled agent speaks mTLS only: try that first, so re-running is harmless.
    if let Ok(mut c) = super::connect(trust, endpoint, timeout).await {
        if c.who_am_i(pb::WhoAmIRequest {}).await.is_ok() {
            return Ok(Enrolled::Already);
        }
    }
    // A new agent would pin the CA on its way out.
    trust.refuse_during_rotation("enrolling a new agent")?;
    let plain = bootstrap_endpoint(endpoint);
    let rpc = |step: &'static str| {
        let endpoint = endpoint.to_string();
        move |s: tonic::Status| TrustError::Rpc {
            endpoint,
            step,
            source: Box::new(s),
        }
    };
    let channel = Endpoint::from_shared(plain.clone())
        .map_err(|source| TrustError::Connect {
            endpoint: plain.clone(),
            source,
        })?
        .connect_timeout(timeout)
        .timeout(timeout)
        .connect()
        .await
        .map_err(|source| TrustError::Connect {
            endpoint: plain.clone(),
            source,
        })?;
    let mut client = EnrollmentClient::new(channel);
    let mut nonce = vec![0u8; 32];
    getrandom::fill(&mut nonce).map_err(|_| TrustError::Random)?;
    let names = ExpectedNames::for_host(
        &expected.hostname,
        expected.fqdn.as_deref(),
        &expected.addresses,
    );
    let challenge = match client
        .challenge(pb::ChallengeRequest {
            coordinator_nonce: nonce.clone(),
            token_id: String::new(),
            dns_names: names.dns.clone(),
            ip_addresses: names.ips.iter().map(|i| i.to_string()).collect(),
        })
        .await
    {
        Ok(r) => r.into_inner(),
        Err(s)
            if s.code() == tonic::Code::FailedPrecondition
                && s.message().contains("already enrolled") =>
        {
            return Ok(Enrolled::Already)
        }
        Err(s) => return Err(rpc("challenge")(s)),
    };
    let tokens = trust.tokens();
    let host = expected.hostname.as_str();
    let verifier = tokens.verifier_for(&challenge.token_id, host)?;
    #[allow(deprecated)]
    let old_agent = challenge.token_signature.is_empty() && !challenge.token_proof.is_empty();
    if old_agent {
        return Err(TrustError::OldAgent {
            endpoint: endpoint.to_string(),
        });
    }
    if !verifier.verify(
        &nonce,
        &challenge.agent_nonce,
        &challenge.csr_pem,
        &challenge.token_signature,
    ) {
        return Err(TrustError::WrongToken {
            endpoint: endpoint.to_string(),
            id: challenge.token_id,
        });
    }
    // Claimed before the certificate goes out: a second host presenting the same token is
    // refused from here on, even if this enrollment is interrupted.
    tokens.claim(&verifier.id, host)?;
    let cert_pem = trust.agent_ca.sign_csr(
        &challenge.csr_pem,
        &SigningRequest {
            profile: Profile::Server,
            lifetime: DEFAULT_LIFETIME,
            expected: names,
            organization: None,
            common_name: expected.hostname.clone(),
        },
    )?;
    client
        .complete(pb::CompleteRequest {
            ca_pem: trust.agent_ca.cert_pem().to_string(),
            cert_pem,
            agent_nonce: challenge.agent_nonce,
        })
        .await
        .map_err(rpc("complete"))?;
    tokens.mark_used(&verifier.id, host)?;
    info!(endpoint = %endpoint, host, token = %verifier.id, "agent enrolled");
    Ok(Enrolled::Now {
        token_id: verifier.id,
    })
}
