//! Who the caller is: the role in its client certificate.
//!
//! After enrollment the agent serves mTLS only, and rustls accepts only client certificates that
//! chain to a CA of the agent's trust bundle and are within their validity. The role rides in the certificate's
//! Organization (`haop:admin` or `haop:reader`); [`authenticate`] reads it, and
//! [`crate::policy`] decides what the role may do with each RPC and each path. A caller without
//! a certificate (an agent not enrolled yet), without a role, or whose certificate the CA revoked
//! ([`crate::revocation`]) is refused with UNAUTHENTICATED, and so is one whose CA left the
//! agent's trust bundle since its connection was opened ([`crate::trust`]).

use tonic::Request;

/// Organization of an admin certificate.
pub const ROLE_ADMIN: &str = "haop:admin";
/// Organization of a read-only certificate.
pub const ROLE_READER: &str = "haop:reader";

/// The caller's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Admin,
    Reader,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => ROLE_ADMIN,
            Role::Reader => ROLE_READER,
        }
    }
}

/// The authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caller {
    pub common_name: String,
    pub role: Role,
    /// The certificate's serial number as encoded (big-endian, maybe with a leading zero).
    pub serial: Vec<u8>,
}

impl Caller {
    /// The serial in lowercase hex, without leading zeros, as `haop identity list` shows it.
    pub fn serial_hex(&self) -> String {
        hex::encode(crate::revocation::normalize_serial(&self.serial))
    }
}

/// Why a caller could not be told apart: no certificate, or one without a haop role.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error(
        "{rpc}: this agent is not enrolled yet, or the call carried no client certificate; \
         enroll the agent with haop (bootstrap token and CA hash) and call it over mTLS"
    )]
    NoCertificate { rpc: &'static str },
    #[error("{rpc}: {reason}")]
    BadCertificate { rpc: &'static str, reason: String },
    #[error(
        "{rpc}: client certificate {common_name:?} is not issued by a CA this agent trusts any \
         more (the agent CA was rotated); ask for a new identity with haop identity issue"
    )]
    NotTrusted {
        rpc: &'static str,
        common_name: String,
    },
    #[error(
        "{rpc}: client certificate {common_name:?} (serial {serial}) is revoked (revocation list \
         {generation}); ask for a new identity with haop identity issue"
    )]
    Revoked {
        rpc: &'static str,
        common_name: String,
        serial: String,
        generation: u64,
    },
}

/// The caller of `req`, from the client certificate the TLS handshake verified.
pub fn authenticate<T>(req: &Request<T>, rpc: &'static str) -> Result<Caller, AuthError> {
    let certs = req.peer_certs().ok_or(AuthError::NoCertificate { rpc })?;
    let leaf = certs.first().ok_or(AuthError::NoCertificate { rpc })?;
    caller_from_der(leaf.as_ref()).map_err(|reason| AuthError::BadCertificate { rpc, reason })
}

/// Reads CN and role from a certificate.
pub fn caller_from_der(der: &[u8]) -> Result<Caller, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("client certificate does not parse: {e}"))?;
    let subject = cert.subject();
    let common_name = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or("")
        .to_string();
    let orgs: Vec<&str> = subject
        .iter_organization()
        .filter_map(|o| o.as_str().ok())
        .collect();
    let role = if orgs.contains(&ROLE_ADMIN) {
        Role::Admin
    } else if orgs.contains(&ROLE_READER) {
        Role::Reader
    } else {
        return Err(format!(
            "client certificate {common_name:?} carries no haop role (organization {ROLE_ADMIN} \
             or {ROLE_READER})"
        ));
    };
    Ok(Caller {
        common_name,
        role,
        serial: cert.raw_serial().to_vec(),
    })
}
