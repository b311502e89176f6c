//! The coordinator's trust material in the state dir, and how agents come to share it.
//!
//! `haop init` creates, in `<state-dir>/pki/`: the agent CA and the etcd CA (keys 0600), haop's
//! own admin certificate for the agent channel (O=`haop:admin`) and haop's own etcd client
//! certificate. These are the only private keys in the state dir; every host key is born on its
//! host (see [`crate::pki`]).
//!
//! Agents join with a bootstrap token: `haop token create` prints `ID.SECRET` with the agent CA's
//! pin and keeps only the token's verifier, expiry and uses ([`tokens`]).
//! [`crate::agent::enroll`] then runs the agent's two-step enrollment: it checks the agent's
//! signature with the token's verifier (and that the token is neither expired nor spent on
//! another host), checks the names of the agent's CSR
//! against what it expects for that host, signs it with the agent CA and hands the certificate
//! back; the agent checks it against its pin. After that every call goes over mTLS
//! ([`Trust::client_tls`]).
//!
//! The agent CA can be rotated (`haop certs rotate-ca --agent`): while that runs, [`rotation`]
//! says which files are which, [`Trust::load`] trusts both CAs for agents and presents the
//! newest matching admin identity, and what would tie a new host or identity to the CA on its
//! way out (enrollment, `haop token create`, `haop identity issue` for the agent channel) is
//! refused until the rotation is finished ([`Trust::refuse_during_rotation`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, ClientTlsConfig, Identity};
use tracing::info;

use crate::pki::{
    CertificateAuthority, ExpectedNames, KeyAlgorithm, PkiError, Profile, SigningRequest, AGENT_CA,
    DEFAULT_LIFETIME, ETCD_CA, ROLE_ADMIN,
};

/// File names under `<state-dir>/pki/`.
pub const ADMIN_CERT: &str = "haop-admin";
pub const ETCD_CLIENT_CERT: &str = "etcd-client";

pub mod rotation;
mod tokens;
pub use tokens::{TokenInfo, TokenStore, TokenUse, TokenUses};

/// Errors of trust operations; each says which file, token or host.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("the state dir {dir} is not initialized: run `haop init` first")]
    NotInitialized { dir: PathBuf },
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error(transparent)]
    Write(#[from] crate::fsio::FsioError),
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("token store {path} is corrupt")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "bootstrap token {id} is unknown to this state dir (haop token list shows the valid ones)"
    )]
    UnknownToken { id: String },
    #[error("bootstrap token {id} expired at {expired}; create a new one with haop token create")]
    ExpiredToken { id: String, expired: String },
    #[error(
        "bootstrap token {id} {} host {host} at {at}; a token enrolls one host (create one per \
         host with haop token create, or one for many with --reusable)",
        if *done { "was used by" } else { "is being used to enroll" }
    )]
    TokenUsed {
        id: String,
        host: String,
        at: String,
        done: bool,
    },
    #[error("agent at {endpoint} failed the token proof for {id}: it holds a different secret (wrong token)")]
    WrongToken { endpoint: String, id: String },
    #[error(
        "agent at {endpoint} proves its token the old way (an HMAC, which haop can only check by \
         keeping the secret); upgrade haop-agent on that host to {} or later",
        env!("CARGO_PKG_VERSION")
    )]
    OldAgent { endpoint: String },
    #[error("enrolling the agent at {endpoint}: {step}")]
    Rpc {
        endpoint: String,
        step: &'static str,
        #[source]
        source: Box<tonic::Status>,
    },
    #[error("cannot reach the agent at {endpoint} for enrollment")]
    Connect {
        endpoint: String,
        #[source]
        source: tonic::transport::Error,
    },
    #[error("no randomness available")]
    Random,
    #[error(
        "an agent CA rotation is in progress ({phase}): {what} would be tied to the CA on its \
         way out; finish the rotation first with haop certs rotate-ca --agent -f INVENTORY"
    )]
    Rotating { what: &'static str, phase: String },
    #[error("the agent CA rotation's files in {} are not as expected: {reason}", .dir.display())]
    RotationState { dir: PathBuf, reason: String },
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> TrustError + 'a {
    move |source| TrustError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Options of `haop init`.
#[derive(Debug, Clone, Copy)]
pub struct InitOptions {
    pub algorithm: KeyAlgorithm,
    pub lifetime: Duration,
}

impl Default for InitOptions {
    fn default() -> Self {
        InitOptions {
            algorithm: KeyAlgorithm::EcdsaP256,
            lifetime: DEFAULT_LIFETIME,
        }
    }
}

/// What `init` found or made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InitReport {
    pub created: bool,
    pub pki_dir: PathBuf,
    pub agent_ca_pin: String,
}

/// `<state-dir>/pki`.
pub fn pki_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("pki")
}

/// Creates the state dir's CAs and haop's own certificates, or reports that they exist.
pub fn init(state_dir: &Path, opts: InitOptions) -> Result<InitReport, TrustError> {
    let dir = pki_dir(state_dir);
    if dir.join(format!("{AGENT_CA}.crt")).exists() {
        let ca = CertificateAuthority::load(&dir, AGENT_CA)?;
        return Ok(InitReport {
            created: false,
            pki_dir: dir,
            agent_ca_pin: ca.sha256_pin(),
        });
    }
    std::fs::create_dir_all(state_dir).map_err(io("create", state_dir))?;
    let agent_ca = CertificateAuthority::create(
        &dir,
        AGENT_CA,
        "haop agent CA",
        opts.algorithm,
        opts.lifetime,
    )?;
    let etcd_ca =
        CertificateAuthority::create(&dir, ETCD_CA, "etcd", opts.algorithm, opts.lifetime)?;
    agent_ca.issue_local(
        &dir,
        ADMIN_CERT,
        opts.algorithm,
        &SigningRequest {
            profile: Profile::Client,
            lifetime: opts.lifetime,
            expected: ExpectedNames::none(),
            organization: Some(ROLE_ADMIN.to_string()),
            common_name: "haop".to_string(),
        },
    )?;
    etcd_ca.issue_local(
        &dir,
        ETCD_CLIENT_CERT,
        opts.algorithm,
        &SigningRequest {
            profile: Profile::Client,
            lifetime: opts.lifetime,
            expected: ExpectedNames::none(),
            organization: None,
            common_name: "haop".to_string(),
        },
    )?;
    crate::pki::bundle::ensure(state_dir)?;
    info!(dir = %dir.display(), "state dir initialized");
    Ok(InitReport {
        created: true,
        pki_dir: dir,
        agent_ca_pin: agent_ca.sha256_pin(),
    })
}

/// The loaded trust material of a state dir.
#[derive(Debug)]
pub struct Trust {
    pub state_dir: PathBuf,
    /// The agent CA: the one enrollment pins. During a rotation, the old one until every agent
    /// dropped it, then the new one.
    pub agent_ca: CertificateAuthority,
    /// What agents' serving certificates are verified against: the agent CA, or both CAs
    /// during a rotation.
    agent_roots_pem: String,
    rotation: Option<rotation::Journal>,
    admin_cert_pem: String,
    admin_key_pem: String,
}

impl Trust {
    pub fn load(state_dir: &Path) -> Result<Trust, TrustError> {
        let dir = pki_dir(state_dir);
        if !dir.join(format!("{AGENT_CA}.crt")).exists() {
            return Err(TrustError::NotInitialized {
                dir: state_dir.to_path_buf(),
            });
        }
        let journal = rotation::Journal::load(state_dir)?;
        let agent_ca = match &journal {
            Some(j) if j.completed(rotation::Phase::Drop) => rotation::load_new_ca(state_dir, j)?,
            _ => CertificateAuthority::load(&dir, AGENT_CA)?,
        };
        let read = |p: PathBuf| {
            std::fs::read_to_string(&p).map_err(|source| TrustError::Io {
                action: "read",
                path: p,
                source,
            })
        };
        let (admin_cert, admin_key) = rotation::admin_paths(state_dir);
        Ok(Trust {
            state_dir: state_dir.to_path_buf(),
            admin_cert_pem: read(admin_cert)?,
            admin_key_pem: read(admin_key)?,
            agent_roots_pem: rotation::agent_roots_pem(state_dir)?,
            rotation: journal,
            agent_ca,
        })
    }

    /// TLS for calling agents: trust the agent CA (both CAs during a rotation), present the
    /// admin certificate.
    pub fn client_tls(&self) -> ClientTlsConfig {
        self.client_tls_trusting(&self.agent_roots_pem)
    }

    /// TLS for calling agents presenting the admin certificate, trusting only `roots_pem` for
    /// their serving certificates (to check that an agent serves a certificate of the new CA).
    pub fn client_tls_trusting(&self, roots_pem: &str) -> ClientTlsConfig {
        ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(roots_pem))
            .identity(Identity::from_pem(
                &self.admin_cert_pem,
                &self.admin_key_pem,
            ))
    }

    /// haop's admin certificate presented to agents, PEM.
    pub fn admin_cert_pem(&self) -> &str {
        &self.admin_cert_pem
    }

    /// The agent CA rotation in progress, if any.
    pub fn rotation(&self) -> Option<&rotation::Journal> {
        self.rotation.as_ref()
    }

    /// Refuses `what` (enrolling a host, a token, an agent-channel identity) while an agent CA
    /// rotation runs: it would be tied to the CA on its way out, or be unknown to the rotation.
    pub fn refuse_during_rotation(&self, what: &'static str) -> Result<(), TrustError> {
        match &self.rotation {
            Some(j) => Err(TrustError::Rotating {
                what,
                phase: j.describe(),
            }),
            None => Ok(()),
        }
    }

    pub fn tokens(&self) -> TokenStore {
        TokenStore::new(&self.state_dir)
    }
}

fn now_unix() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// RFC 3339 for a Unix time.
pub fn format_unix(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|d| {
            d.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_else(|| t.to_string())
}
