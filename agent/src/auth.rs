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

/// Whether bytes hold a PEM private key, as PEM or base64-encoded PEM (a kubeconfig's
/// `client-key-data`, as in kubeadm's admin.conf, which holds the cluster-admin key). No RPC
/// carries one, in either direction.
pub fn holds_private_key(data: &[u8]) -> bool {
    const MARK: &[u8] = b"PRIVATE KEY-----";
    data.windows(MARK.len()).any(|w| w == MARK) || holds_encoded_private_key(data)
}

/// Whether a run of base64 in `data` decodes to bytes holding a PEM private key. A run is a
/// field's value, a line of a wrapped blob, or a whole file: each starts where its encoding
/// starts, so decoding the runs as they stand finds a key wherever it sits in what they encode.
fn holds_encoded_private_key(data: &[u8]) -> bool {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    use base64::Engine;
    const MARK: &[u8] = b"PRIVATE KEY-----";
    // The shortest run that can encode "-----BEGIN PRIVATE KEY-----".
    const SHORTEST: usize = 36;
    let engine = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::RequireNone)
            .with_decode_allow_trailing_bits(true),
    );
    let is_b64 = |b: &u8| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/';
    data.split(|b| !is_b64(b))
        .filter(|run| run.len() >= SHORTEST)
        .any(|run| {
            let whole = run.len() / 4 * 4;
            engine
                .decode(&run[..whole])
                .is_ok_and(|bytes| bytes.windows(MARK.len()).any(|w| w == MARK))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_key_detection() {
        assert!(holds_private_key(
            b"x\n-----BEGIN EC PRIVATE KEY-----\nabc\n-----END EC PRIVATE KEY-----\n"
        ));
        assert!(holds_private_key(b"-----BEGIN PRIVATE KEY-----"));
        assert!(!holds_private_key(b"-----BEGIN CERTIFICATE-----"));
    }

    #[test]
    fn private_keys_in_base64_are_found_too() {
        use base64::Engine;
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let key = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIB\n-----END EC PRIVATE KEY-----\n";
        let cert = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        // kubeadm's admin.conf: the certificate may go, the key beside it may not.
        let kubeconfig = format!(
            "users:\n- name: kubernetes-admin\n  user:\n    client-certificate-data: {}\n    \
             client-key-data: {}\n",
            b64(cert),
            b64(key)
        );
        assert!(holds_private_key(kubeconfig.as_bytes()));
        assert!(holds_private_key(
            b64("-----BEGIN PRIVATE KEY-----\nMC4CAQ\n").as_bytes()
        ));
        assert!(!holds_private_key(
            format!("client-certificate-data: {}\n", b64(cert)).as_bytes()
        ));
        // A key anywhere in a blob, as in a bundle of certificate and key encoded together.
        assert!(holds_private_key(b64(&format!("{cert}{key}")).as_bytes()));
        // Ordinary text is base64 too, and no key.
        assert!(!holds_private_key(
            b"ExecStart=/usr/bin/etcd --name etcd1 --data-dir /var/lib/etcd\nKubernetesVersion\n"
        ));
    }
}
