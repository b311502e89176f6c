//! Bootstrap tokens: `<state-dir>/tokens.json` (0600), which holds no secret.
//!
//! Why: the token is the one credential that lets a machine become a trusted host, and the state
//! dir is copied into backups and onto operators' laptops. So the store keeps only each token's
//! verifier (the public half of the key derived from the secret, [`haop_proto::enroll`]), its
//! expiry and its uses; `haop token create` prints the secret once and forgets it.
//!
//! A token enrolls one host unless it was created reusable on purpose. Enrollment first
//! *claims* the token for its host (after the agent's signature checked, before the certificate
//! goes out), then marks it *used* when the agent has its certificate. A claimed token can finish
//! enrolling the same host (an interrupted enrollment is rerun with the same token) and is refused
//! to every other host; a used one is refused to all, with who used it and when. Claim and use
//! are read-modify-writes under [`crate::fsio::FileLock`], so two enrollments racing for one
//! token cannot both win.
//!
//! Stores written before tokens were hashed (`"token": "ID.SECRET"`) are converted on first
//! load: the verifier is derived and the secret dropped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use haop_proto::enroll::{Token, Verifier};
use serde::{Deserialize, Serialize};
use tracing::info;

use super::{format_unix, now_unix, TrustError};
use crate::fsio::FileLock;

const TOKENS_FILE: &str = "tokens.json";
const LOCK_FILE: &str = "tokens.lock";
/// Expired tokens are kept this long (for `haop token list`), then dropped.
const KEEP_EXPIRED: i64 = 7 * 24 * 3600;

/// How often a token may enroll.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenUses {
    /// One host (the default).
    #[default]
    Once,
    /// Any number of hosts until it expires: for an image baked with one token, on purpose.
    Many,
}

/// One enrollment made with a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUse {
    pub host: String,
    pub at_unix: i64,
    /// False while claimed (the certificate not yet handed over), true once enrolled.
    pub done: bool,
}

/// A stored token: what checks it, when it stops working, and its uses.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StoredToken {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    verifier: String,
    /// Only in stores written before tokens were hashed; converted on load.
    #[serde(default, skip_serializing)]
    token: Option<String>,
    expires_unix: i64,
    #[serde(default)]
    uses: TokenUses,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    used_by: Vec<TokenUse>,
}

/// A token as listed (without anything secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TokenInfo {
    pub id: String,
    pub expires_unix: i64,
    pub expired: bool,
    pub uses: TokenUses,
    pub used_by: Vec<TokenUse>,
}

impl TokenInfo {
    /// One word for `haop token list`: valid, expired, claimed, used.
    pub fn state(&self) -> &'static str {
        if self.uses == TokenUses::Once {
            if self.used_by.iter().any(|u| u.done) {
                return "used";
            }
            if !self.used_by.is_empty() && !self.expired {
                return "claimed";
            }
        }
        if self.expired {
            "expired"
        } else {
            "valid"
        }
    }
}

/// Bootstrap tokens in `<state-dir>/tokens.json`.
#[derive(Debug, Clone)]
pub struct TokenStore {
    path: PathBuf,
    lock: PathBuf,
}

impl TokenStore {
    pub fn new(state_dir: &Path) -> Self {
        TokenStore {
            path: state_dir.join(TOKENS_FILE),
            lock: state_dir.join(LOCK_FILE),
        }
    }

    /// Loads the store, converting tokens kept in clear by an older haop (and saving that).
    fn load(&self) -> Result<BTreeMap<String, StoredToken>, TrustError> {
        let mut all: BTreeMap<String, StoredToken> = match std::fs::read(&self.path) {
            Ok(d) => serde_json::from_slice(&d).map_err(|source| TrustError::Corrupt {
                path: self.path.clone(),
                source,
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(e) => return Err(super::io("read", &self.path)(e)),
        };
        let mut converted = false;
        for (id, t) in all.iter_mut() {
            if let Some(clear) = t.token.take() {
                let token = Token::parse(&clear).map_err(|_| TrustError::Corrupt {
                    path: self.path.clone(),
                    source: serde::de::Error::custom(format!("token {id} is malformed")),
                })?;
                t.verifier = token.verifier().text();
                converted = true;
            }
        }
        if converted {
            self.save(&all)?;
            info!(path = %self.path.display(), "token store converted: secrets replaced by verifiers");
        }
        Ok(all)
    }

    fn save(&self, all: &BTreeMap<String, StoredToken>) -> Result<(), TrustError> {
        let data = serde_json::to_vec_pretty(all).expect("tokens serialize");
        crate::fsio::write_private(&self.path, &data).map_err(TrustError::from)
    }

    fn locked(&self) -> Result<FileLock, TrustError> {
        Ok(FileLock::exclusive(&self.lock)?)
    }

    /// Creates a token valid for `ttl`; drops tokens that expired long ago. The returned token
    /// is the only copy of its secret.
    pub fn create(&self, ttl: Duration, uses: TokenUses) -> Result<(Token, i64), TrustError> {
        let alphabet = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let mut raw = [0u8; 22];
        getrandom::fill(&mut raw).map_err(|_| TrustError::Random)?;
        let chars: String = raw
            .iter()
            .map(|b| alphabet[(*b as usize) % alphabet.len()] as char)
            .collect();
        let token = Token::parse(&format!("{}.{}", &chars[..6], &chars[6..]))
            .expect("generated tokens have the right shape");
        let now = now_unix();
        let expires = now + ttl.as_secs() as i64;
        let _lock = self.locked()?;
        let mut all = self.load()?;
        all.retain(|_, t| t.expires_unix > now - KEEP_EXPIRED);
        all.insert(
            token.id.clone(),
            StoredToken {
                verifier: token.verifier().text(),
                token: None,
                expires_unix: expires,
                uses,
                used_by: Vec::new(),
            },
        );
        self.save(&all)?;
        Ok((token, expires))
    }

    fn check_usable(id: &str, t: &StoredToken, host: &str) -> Result<Verifier, TrustError> {
        if t.expires_unix <= now_unix() {
            return Err(TrustError::ExpiredToken {
                id: id.into(),
                expired: format_unix(t.expires_unix),
            });
        }
        if t.uses == TokenUses::Once {
            if let Some(u) = t.used_by.iter().find(|u| u.done || u.host != host) {
                return Err(TrustError::TokenUsed {
                    id: id.into(),
                    host: u.host.clone(),
                    at: format_unix(u.at_unix),
                    done: u.done,
                });
            }
        }
        Verifier::parse(id, &t.verifier).map_err(|e| TrustError::Corrupt {
            path: PathBuf::from(TOKENS_FILE),
            source: serde::de::Error::custom(e.to_string()),
        })
    }

    /// The verifier of token `id` if it may enroll `host`: unknown, expired and spent tokens are
    /// refused with their reason.
    pub fn verifier_for(&self, id: &str, host: &str) -> Result<Verifier, TrustError> {
        let all = self.load()?;
        let stored = all
            .get(id)
            .ok_or_else(|| TrustError::UnknownToken { id: id.into() })?;
        Self::check_usable(id, stored, host)
    }

    /// Claims token `id` for `host` (checked again under the lock: a racing enrollment of
    /// another host loses here).
    pub fn claim(&self, id: &str, host: &str) -> Result<(), TrustError> {
        self.record(id, host, false)
    }

    /// Marks token `id` used by `host`: the certificate was handed over.
    pub fn mark_used(&self, id: &str, host: &str) -> Result<(), TrustError> {
        self.record(id, host, true)
    }

    fn record(&self, id: &str, host: &str, done: bool) -> Result<(), TrustError> {
        let _lock = self.locked()?;
        let mut all = self.load()?;
        let stored = all
            .get_mut(id)
            .ok_or_else(|| TrustError::UnknownToken { id: id.into() })?;
        if !done {
            Self::check_usable(id, stored, host)?;
        }
        let at_unix = now_unix();
        match stored
            .used_by
            .iter_mut()
            .find(|u| u.host == host && !u.done)
        {
            Some(u) => {
                u.done = done;
                u.at_unix = at_unix;
            }
            None => stored.used_by.push(TokenUse {
                host: host.to_string(),
                at_unix,
                done,
            }),
        }
        self.save(&all)
    }

    pub fn list(&self) -> Result<Vec<TokenInfo>, TrustError> {
        let now = now_unix();
        Ok(self
            .load()?
            .into_iter()
            .map(|(id, t)| TokenInfo {
                id,
                expires_unix: t.expires_unix,
                expired: t.expires_unix <= now,
                uses: t.uses,
                used_by: t.used_by,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HOUR: Duration = Duration::from_secs(3600);

    #[test]
    fn the_store_holds_no_secret() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::new(dir.path());
        let (token, _) = store.create(HOUR, TokenUses::Once).unwrap();
        let text = std::fs::read_to_string(dir.path().join(TOKENS_FILE)).unwrap();
        let secret = token.expose();
        let secret = secret.split_once('.').unwrap().1;
        assert!(!text.contains(secret), "{text}");
        assert!(text.contains(&token.verifier().text()));
        assert_eq!(
            store.verifier_for(&token.id, "etcd1").unwrap(),
            token.verifier()
        );
    }

    #[test]
    fn a_single_use_token_enrolls_one_host() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::new(dir.path());
        let (token, _) = store.create(HOUR, TokenUses::Once).unwrap();
        store.claim(&token.id, "etcd1").unwrap();
        // Claimed: another host is refused, the same host may finish.
        let err = store.claim(&token.id, "etcd2").unwrap_err();
        assert!(err.to_string().contains("etcd1"), "{err}");
        store.claim(&token.id, "etcd1").unwrap();
        store.mark_used(&token.id, "etcd1").unwrap();
        for host in ["etcd1", "etcd2"] {
            let err = store.verifier_for(&token.id, host).unwrap_err();
            assert!(
                matches!(err, TrustError::TokenUsed { done: true, .. }),
                "{err}"
            );
        }
        let listed = store.list().unwrap();
        assert_eq!(listed[0].state(), "used");
    }

    #[test]
    fn a_reusable_token_enrolls_many() {
        let dir = tempfile::tempdir().unwrap();
        let store = TokenStore::new(dir.path());
        let (token, _) = store.create(HOUR, TokenUses::Many).unwrap();
        for host in ["a", "b", "c"] {
            store.claim(&token.id, host).unwrap();
            store.mark_used(&token.id, host).unwrap();
        }
        let listed = store.list().unwrap();
        assert_eq!(listed[0].used_by.len(), 3);
        assert_eq!(listed[0].state(), "valid");
    }

    #[test]
    fn a_store_with_secrets_in_clear_is_converted() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TOKENS_FILE);
        std::fs::write(
            &path,
            r#"{"abcdef":{"token":"abcdef.0123456789abcdef","expires_unix":99999999999}}"#,
        )
        .unwrap();
        let store = TokenStore::new(dir.path());
        let token = Token::parse("abcdef.0123456789abcdef").unwrap();
        assert_eq!(store.verifier_for("abcdef", "h").unwrap(), token.verifier());
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(!text.contains("0123456789abcdef"), "{text}");
    }
}
