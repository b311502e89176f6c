//! Who may call what: roles from the client certificate.
//!
//! After enrollment the agent serves mTLS only, and rustls accepts only client certificates that
//! chain to the agent CA and are within their validity. The role rides in the certificate's
//! Organization: `haop:admin` may do everything, `haop:reader` only the read-only RPCs (facts,
//! stat, unit status, reading non-secret files, whoami). Every RPC states what it needs with
//! [`authorize`] before it looks at its request; a caller without a certificate (an agent not
//! enrolled yet) is refused with UNAUTHENTICATED.

use tonic::{Request, Status};

/// Organization of an admin certificate.
pub const ROLE_ADMIN: &str = "haop:admin";
/// Organization of a read-only certificate.
pub const ROLE_READER: &str = "haop:reader";

/// What an RPC needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Mutate,
}

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
}

/// Checks the caller's certificate against what the RPC needs.
pub fn authorize<T>(req: &Request<T>, rpc: &'static str, access: Access) -> Result<Caller, Status> {
    let certs = req.peer_certs().ok_or_else(|| {
        Status::unauthenticated(format!(
            "{rpc}: this agent is not enrolled yet, or the call carried no client certificate; \
             enroll the agent with haop (bootstrap token and CA hash) and call it over mTLS"
        ))
    })?;
    let leaf = certs
        .first()
        .ok_or_else(|| Status::unauthenticated(format!("{rpc}: no client certificate")))?;
    let caller = caller_from_der(leaf.as_ref())
        .map_err(|why| Status::unauthenticated(format!("{rpc}: {why}")))?;
    if access == Access::Mutate && caller.role != Role::Admin {
        return Err(Status::permission_denied(format!(
            "{rpc} changes the host and needs a {ROLE_ADMIN} certificate; {} has {}",
            caller.common_name,
            caller.role.as_str()
        )));
    }
    Ok(caller)
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
    Ok(Caller { common_name, role })
}
