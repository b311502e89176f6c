//! Identities for people and jobs: issued, listed, revoked.
//!
//! Why: haop's own admin certificate is for haop; a monitoring job needs a `haop:reader`
//! certificate, an operator on call a short-lived admin one, a backup job an etcd client
//! certificate. Each gets its own, named, with a lifetime, so that one can be taken away without
//! touching the others: `haop identity issue|list|revoke`.
//!
//! * [`store`]: `<state-dir>/identities.json`, what was issued to whom (name, channel, role,
//!   serial, expiry, revoked when). No key is kept: the key is made where the command runs and
//!   written only to the `--out` directory, for its holder.
//! * [`crl`]: one X.509 CRL per channel, signed by that channel's CA and numbered: the agent CA's
//!   goes to every agent (`InstallRevocations`; agents refuse a listed certificate from the next
//!   call, and an older list than the one they hold), the etcd CA's to every etcd member's
//!   `ETCD_CLIENT_CRL_FILE` (etcd reads it at each new client connection).
//! * [`push`]: sending the lists. `revoke` pushes at once; agents that were unreachable get it
//!   on the next `haop apply` or `haop status` run as admin, which compare the generation each
//!   agent reports with the state dir's.
//!
//! haop's own certificates (`pki/haop-admin`, `pki/etcd-client`) are listed as built-in and
//! cannot be revoked: revoking them would lock haop out of its own cluster.

pub mod crl;
pub mod push;
pub mod store;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

pub use store::{IdentityRecord, IdentityStore, IssueRequest, Issued};

/// Which CA signs an identity, and so what it can talk to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Channel {
    /// The agent CA: calls to haop-agent (`haop status --cert`, a Python client...).
    Agent,
    /// The etcd CA: an etcd client (a backup job, a metrics scrape).
    Etcd,
}

impl Channel {
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Agent => "agent",
            Channel::Etcd => "etcd",
        }
    }
}

/// What the holder may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum IdentityRole {
    /// Agents: facts, unit states, certificates, stat; never secrets or changes. etcd: meant for
    /// a read-only etcd role once etcd auth is enabled (the certificate's CN is the user).
    Reader,
    /// Agents: everything haop does. etcd: a root-equivalent client.
    Admin,
}

impl IdentityRole {
    pub fn as_str(self) -> &'static str {
        match self {
            IdentityRole::Reader => "reader",
            IdentityRole::Admin => "admin",
        }
    }
}

/// Errors of identity operations; each names the identity, file or host.
#[derive(Debug, thiserror::Error)]
pub enum IdentityError {
    #[error(transparent)]
    Trust(#[from] crate::trust::TrustError),
    #[error(transparent)]
    Pki(#[from] crate::pki::PkiError),
    #[error(transparent)]
    Write(#[from] crate::fsio::FsioError),
    #[error("cannot {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("identity store {path} is corrupt")]
    Corrupt {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "invalid identity name {name:?}: use 1 to 64 lowercase letters, digits and inner dashes \
         (it becomes the certificate's CN and its file names)"
    )]
    InvalidName { name: String },
    #[error("{name:?} is haop's own name; pick another for this identity")]
    Reserved { name: String },
    #[error(
        "identity {name} ({channel}) already exists, serial {serial}, valid until {until}; \
         revoke it first (haop identity revoke {name}) or pick another name"
    )]
    Exists {
        name: String,
        channel: &'static str,
        serial: String,
        until: String,
    },
    #[error("{path} already exists; refusing to overwrite it (pick another --out directory)")]
    FileExists { path: PathBuf },
    #[error("no identity named or numbered {0:?} (haop identity list shows them)")]
    Unknown(String),
    #[error(
        "{selector:?} names {count} identities ({which}); say which with its serial, or with \
         --etcd / --agent"
    )]
    Ambiguous {
        selector: String,
        count: usize,
        which: String,
    },
    #[error(
        "{name} is haop's own {channel} certificate; revoking it would lock haop out \
         (to replace it, re-issue with haop certs renew)"
    )]
    BuiltIn { name: String, channel: &'static str },
    #[error("invalid lifetime {value:?}: {reason}")]
    Lifetime { value: String, reason: String },
}

fn io<'a>(
    action: &'static str,
    path: &'a std::path::Path,
) -> impl FnOnce(std::io::Error) -> IdentityError + 'a {
    move |source| IdentityError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// A serial as shown and compared: lowercase hex without leading zero bytes.
pub fn normalize_serial_hex(s: &str) -> String {
    let digits: String = s
        .chars()
        .filter(|c| *c != ':')
        .flat_map(|c| c.to_lowercase())
        .collect();
    let trimmed = digits.trim_start_matches('0');
    let mut out = trimmed.to_string();
    if out.len() % 2 == 1 {
        out.insert(0, '0');
    }
    out
}
