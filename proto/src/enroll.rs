//! The enrollment proof, shared by both ends so they cannot disagree on its bytes.
//!
//! A bootstrap token is `ID.SECRET` (6 and 16 characters of `[a-z0-9]`, as kubeadm's). The
//! secret is never stored by the coordinator: from it both ends derive an Ed25519 key pair
//! ([`Token::verifier`] is its public half, which is all `tokens.json` keeps), and the agent
//! proves it holds the token by signing a transcript of this exchange: a fixed label, the token
//! id, both nonces and the digest of its CSR, each length-prefixed. A copy of the coordinator's
//! token store therefore enrolls nothing. Binding the CSR means a relay cannot swap in its own
//! key; binding the coordinator's nonce means an old proof cannot be replayed.
//!
//! Why a signature and not a MAC (version 1 of this exchange used HMAC-SHA256 keyed with the
//! secret): a MAC can only be checked by someone who holds the secret, so the coordinator had to
//! keep every token in clear. The secret has about 82 bits of entropy, so a fast derivation
//! (SHA-256 with a label) is enough; no password hashing is needed.

use aws_lc_rs::signature::{self, Ed25519KeyPair, KeyPair, UnparsedPublicKey};
use sha2::{Digest, Sha256};

/// The transcript label; a new version of the exchange changes it.
pub const LABEL: &[u8] = b"haop-enroll-v2";
/// The label of the key derivation.
const KEY_LABEL: &[u8] = b"haop-enroll-v2-key";
/// The prefix of a verifier's text form.
const VERIFIER_PREFIX: &str = "ed25519:";

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

/// Why a verifier string was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("token verifier must look like ed25519:<64 hex digits>, not {0:?}")]
pub struct VerifierFormatError(String);

fn transcript(id: &str, coordinator_nonce: &[u8], agent_nonce: &[u8], csr_pem: &str) -> Vec<u8> {
    let mut out = Vec::new();
    for part in [
        LABEL,
        id.as_bytes(),
        coordinator_nonce,
        agent_nonce,
        Sha256::digest(csr_pem.as_bytes()).as_slice(),
    ] {
        out.extend_from_slice(&(part.len() as u32).to_be_bytes());
        out.extend_from_slice(part);
    }
    out
}

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

    fn key_pair(&self) -> Ed25519KeyPair {
        let mut h = Sha256::new();
        for part in [KEY_LABEL, self.id.as_bytes(), self.secret.as_bytes()] {
            h.update((part.len() as u32).to_be_bytes());
            h.update(part);
        }
        Ed25519KeyPair::from_seed_unchecked(h.finalize().as_slice())
            .expect("any 32 bytes are an Ed25519 seed")
    }

    /// What the coordinator keeps of this token: the public half of its key.
    pub fn verifier(&self) -> Verifier {
        let public = self.key_pair().public_key().as_ref().to_vec();
        Verifier {
            id: self.id.clone(),
            public,
        }
    }

    /// The agent's signature over this exchange.
    pub fn sign(&self, coordinator_nonce: &[u8], agent_nonce: &[u8], csr_pem: &str) -> Vec<u8> {
        let msg = transcript(&self.id, coordinator_nonce, agent_nonce, csr_pem);
        self.key_pair().sign(&msg).as_ref().to_vec()
    }
}

/// The public half of a token's key: checks proofs, and cannot make them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verifier {
    pub id: String,
    public: Vec<u8>,
}

impl Verifier {
    /// Reads `ed25519:<hex>` for token `id`.
    pub fn parse(id: &str, text: &str) -> Result<Verifier, VerifierFormatError> {
        let bad = || VerifierFormatError(text.to_string());
        let hex = text.strip_prefix(VERIFIER_PREFIX).ok_or_else(bad)?;
        let public = hex::decode(hex).map_err(|_| bad())?;
        if public.len() != 32 {
            return Err(bad());
        }
        Ok(Verifier {
            id: id.to_string(),
            public,
        })
    }

    /// `ed25519:<hex>`, as stored.
    pub fn text(&self) -> String {
        format!("{VERIFIER_PREFIX}{}", hex::encode(&self.public))
    }

    /// Whether `signature` is the token's over this exchange.
    pub fn verify(
        &self,
        coordinator_nonce: &[u8],
        agent_nonce: &[u8],
        csr_pem: &str,
        signature: &[u8],
    ) -> bool {
        let msg = transcript(&self.id, coordinator_nonce, agent_nonce, csr_pem);
        UnparsedPublicKey::new(&signature::ED25519, &self.public)
            .verify(&msg, signature)
            .is_ok()
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
    fn signature_binds_every_part_and_the_verifier_holds_no_secret() {
        let t = Token::parse("abcdef.0123456789abcdef").unwrap();
        let v = t.verifier();
        assert!(!v.text().contains("0123456789abcdef"));
        assert_eq!(Verifier::parse("abcdef", &v.text()).unwrap(), v);
        let s = t.sign(b"c", b"a", "csr");
        assert!(v.verify(b"c", b"a", "csr", &s));
        assert!(!v.verify(b"x", b"a", "csr", &s));
        assert!(!v.verify(b"c", b"x", "csr", &s));
        assert!(!v.verify(b"c", b"a", "other", &s));
        // Another id with the same signature: the id is in the transcript.
        let mut other_id = v.clone();
        other_id.id = "zzzzzz".into();
        assert!(!other_id.verify(b"c", b"a", "csr", &s));
        let other = Token::parse("abcdef.zzzzzzzzzzzzzzzz").unwrap();
        assert!(!other.verifier().verify(b"c", b"a", "csr", &s));
        assert!(Verifier::parse("abcdef", "ed25519:00").is_err());
        assert!(Verifier::parse("abcdef", &"a".repeat(64)).is_err());
    }
}
