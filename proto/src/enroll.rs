//! The enrollment proof, shared by both ends so they cannot disagree on its bytes.
//!
//! A bootstrap token is `ID.SECRET` (6 and 16 characters of `[a-z0-9]`, as kubeadm's). The agent
//! proves it holds the token by an HMAC-SHA256 keyed with the secret over a transcript of this
//! exchange: a fixed label, both nonces and the digest of its CSR, each length-prefixed. Binding
//! the CSR means a relay cannot swap in its own key; binding the coordinator's nonce means an old
//! proof cannot be replayed.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

/// The transcript label; a new version of the exchange changes it.
pub const LABEL: &[u8] = b"haop-enroll-v1";

/// A parsed bootstrap token.
#[derive(Clone, PartialEq, Eq)]
pub struct Token {
    pub id: String,
    secret: String,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("id", &self.id)
            .field("secret", &"<redacted>")
            .finish()
    }
}

/// Why a token string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("bootstrap token must look like abcdef.0123456789abcdef (6 and 16 characters of a-z, 0-9)")]
pub struct TokenFormatError;

impl Token {
    pub fn parse(s: &str) -> Result<Token, TokenFormatError> {
        let (id, secret) = s.trim().split_once('.').ok_or(TokenFormatError)?;
        let ok = |p: &str, n: usize| {
            p.len() == n
                && p.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        };
        if !ok(id, 6) || !ok(secret, 16) {
            return Err(TokenFormatError);
        }
        Ok(Token {
            id: id.to_string(),
            secret: secret.to_string(),
        })
    }

    /// The full token text, for printing once to the operator.
    pub fn expose(&self) -> String {
        format!("{}.{}", self.id, self.secret)
    }

    /// The agent's proof over this exchange.
    pub fn proof(&self, coordinator_nonce: &[u8], agent_nonce: &[u8], csr_pem: &str) -> Vec<u8> {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.secret.as_bytes())
            .expect("HMAC takes keys of any length");
        for part in [
            LABEL,
            coordinator_nonce,
            agent_nonce,
            Sha256::digest(csr_pem.as_bytes()).as_slice(),
        ] {
            mac.update(&(part.len() as u32).to_be_bytes());
            mac.update(part);
        }
        mac.finalize().into_bytes().to_vec()
    }

    /// Checks a proof in constant time.
    pub fn verify(
        &self,
        coordinator_nonce: &[u8],
        agent_nonce: &[u8],
        csr_pem: &str,
        proof: &[u8],
    ) -> bool {
        let mut mac = Hmac::<Sha256>::new_from_slice(self.secret.as_bytes())
            .expect("HMAC takes keys of any length");
        for part in [
            LABEL,
            coordinator_nonce,
            agent_nonce,
            Sha256::digest(csr_pem.as_bytes()).as_slice(),
        ] {
            mac.update(&(part.len() as u32).to_be_bytes());
            mac.update(part);
        }
        mac.verify_slice(proof).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_format() {
        assert!(Token::parse("abcdef.0123456789abcdef").is_ok());
        for bad in [
            "",
            "abcdef",
            "abcde.0123456789abcdef",
            "ABCDEF.0123456789abcdef",
            "abcdef.0123456789abcde",
            "abc-ef.0123456789abcdef",
        ] {
            assert!(Token::parse(bad).is_err(), "{bad}");
        }
        let t = Token::parse("abcdef.0123456789abcdef").unwrap();
        assert!(!format!("{t:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn proof_binds_every_part() {
        let t = Token::parse("abcdef.0123456789abcdef").unwrap();
        let p = t.proof(b"c", b"a", "csr");
        assert!(t.verify(b"c", b"a", "csr", &p));
        assert!(!t.verify(b"x", b"a", "csr", &p));
        assert!(!t.verify(b"c", b"x", "csr", &p));
        assert!(!t.verify(b"c", b"a", "other", &p));
        let other = Token::parse("abcdef.zzzzzzzzzzzzzzzz").unwrap();
        assert!(!other.verify(b"c", b"a", "csr", &p));
    }
}
