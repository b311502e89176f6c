//! The join info of a kubeadm cluster, kept in the state dir between `kubeadm init` and the
//! joins: `<state>/secrets/<cluster>.join.json`, mode 0600 (a bootstrap token and the
//! certificate key are secrets).
//!
//! Lifecycle: the kubeadm-init step saves what `kubeadm init` printed ([`Stored::from_init`]).
//! Each join reads it ([`join_command`]); when it is missing (init ran from another state dir,
//! or its output could not be read) or expired (kubeadm's tokens live 24 h, uploaded
//! certificates 2 h), it is made anew on the first master: `kubeadm token create
//! --print-join-command`, and for a control-plane join `kubeadm init phase upload-certs
//! --upload-certs --config ...`. Every value read back goes through kubeadm's output parser
//! again before it reaches a command line (the file could have been edited).

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::command::{find_program, run_program, CommandError};
use super::context::RunContext;
use crate::agent::{AgentError, HostAgent};
use crate::fsio::FsioError;
use crate::render::kubeadm::{parse_kubeadm_init_output, JoinCommand, JoinInfo, ParseError};
use crate::runbook::plan::kubeadm::{ADMIN_CONF, KUBEADM_PATHS};

/// kubeadm's bootstrap tokens live 24 h; haop makes a new one after 23 h.
const TOKEN_MAX_AGE_SECS: u64 = 23 * 3600;
/// kubeadm deletes uploaded certificates after 2 h; haop uploads them again after 100 min.
const CERT_KEY_MAX_AGE_SECS: u64 = 100 * 60;

/// Errors of the join info.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("cannot read {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot create {}", .path.display())]
    CreateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Save(#[from] FsioError),
    #[error(
        "the join info {} is {why} and haop could not make it anew on {first_master}; run haop \
         apply again once {first_master} is healthy, or {manual}", .path.display()
    )]
    Refresh {
        path: PathBuf,
        why: &'static str,
        first_master: String,
        manual: String,
        #[source]
        source: Box<RefreshError>,
    },
}

/// Why the first master could not make new join info.
#[derive(Debug, thiserror::Error)]
pub enum RefreshError {
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error(
        "{ADMIN_CONF} is missing there: kubeadm init has not run (the kubeadm-init phase runs it)"
    )]
    NotInitialized,
    #[error("kubeadm's join command cannot be read")]
    Output(#[source] ParseError),
    #[error("kubeadm init phase upload-certs printed no certificate key")]
    NoCertificateKey,
    #[error("the new join info does not check")]
    Unusable,
}

/// The join info as kept in `<state>/secrets/<cluster>.join.json`.
#[derive(Clone, Serialize, Deserialize)]
pub struct Stored {
    pub endpoint: String,
    pub token: String,
    pub ca_cert_hashes: Vec<String>,
    /// When the token was made (Unix seconds).
    pub token_created_unix: u64,
    pub certificate_key: Option<String>,
    /// When the certificates were uploaded under the key (Unix seconds).
    pub certificate_key_created_unix: Option<u64>,
}

impl Stored {
    pub fn from_init(info: &JoinInfo, now: u64) -> Stored {
        let key = info
            .control_plane
            .as_ref()
            .and_then(|c| c.certificate_key.clone());
        Stored {
            endpoint: info.worker.endpoint.clone(),
            token: info.worker.token.clone(),
            ca_cert_hashes: info.worker.ca_cert_hashes.clone(),
            token_created_unix: now,
            certificate_key_created_unix: key.as_ref().map(|_| now),
            certificate_key: key,
        }
    }

    /// The join command for a worker or a control-plane node, its values checked again by
    /// kubeadm's output parser (the file could have been edited); `None` when it holds none
    /// that is still valid at `now`.
    fn command(&self, control_plane: bool, now: u64) -> Option<JoinCommand> {
        if now.saturating_sub(self.token_created_unix) > TOKEN_MAX_AGE_SECS {
            return None;
        }
        let mut text = format!("kubeadm join {} --token {}", self.endpoint, self.token);
        for h in &self.ca_cert_hashes {
            text.push_str(&format!(" --discovery-token-ca-cert-hash {h}"));
        }
        let info = if control_plane {
            let key = self.certificate_key.as_ref()?;
            if now.saturating_sub(self.certificate_key_created_unix?) > CERT_KEY_MAX_AGE_SECS {
                return None;
            }
            parse_kubeadm_init_output(&format!(
                "{text}\n{text} --control-plane --certificate-key {key}\n"
            ))
            .ok()?
        } else {
            parse_kubeadm_init_output(&text).ok()?
        };
        if control_plane {
            info.control_plane
        } else {
            Some(info.worker)
        }
    }
}

impl std::fmt::Debug for Stored {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stored")
            .field("endpoint", &self.endpoint)
            .field("token_created_unix", &self.token_created_unix)
            .finish_non_exhaustive()
    }
}

/// `<state>/secrets/<cluster>.join.json`.
pub fn join_info_path(state_dir: &Path, cluster: &str) -> PathBuf {
    state_dir
        .join("secrets")
        .join(format!("{cluster}.join.json"))
}

pub(super) fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The stored join info; `None` when there is none or it does not parse.
pub fn load_join(state_dir: &Path, cluster: &str) -> Result<Option<Stored>, JoinError> {
    let path = join_info_path(state_dir, cluster);
    match std::fs::read(&path) {
        Ok(b) => Ok(serde_json::from_slice(&b).ok()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(JoinError::Read { path, source }),
    }
}

pub fn save_join(state_dir: &Path, cluster: &str, s: &Stored) -> Result<(), JoinError> {
    let path = join_info_path(state_dir, cluster);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| JoinError::CreateDir {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    let json = serde_json::to_vec_pretty(s).expect("join info serializes");
    crate::fsio::write_private(&path, &json)?;
    Ok(())
}

/// One refresh at a time: parallel worker joins share the new token.
static JOIN_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// The join command for this node: from the state dir, or made anew on the first master when
/// missing or expired.
pub async fn join_command(
    ctx: &RunContext,
    cluster: &str,
    control_plane: bool,
    first_master: &str,
    first_master_endpoint: &str,
    config_path: &str,
) -> Result<JoinCommand, JoinError> {
    let _guard = JOIN_LOCK.lock().await;
    let stored = load_join(&ctx.state_dir, cluster)?;
    if let Some(cmd) = stored
        .as_ref()
        .and_then(|s| s.command(control_plane, now()))
    {
        return Ok(cmd);
    }
    let fail = |source: RefreshError| JoinError::Refresh {
        path: join_info_path(&ctx.state_dir, cluster),
        why: if stored.is_some() {
            "expired"
        } else {
            "missing"
        },
        first_master: first_master.to_string(),
        manual: if control_plane {
            format!(
                "on {first_master} run `kubeadm token create --print-join-command` and `kubeadm \
                 init phase upload-certs --upload-certs --config {config_path}`, and join with \
                 the printed command plus --control-plane --certificate-key KEY"
            )
        } else {
            format!(
                "on {first_master} run `kubeadm token create --print-join-command` and join \
                 with the printed command"
            )
        },
        source: Box::new(source),
    };
    let new = refresh(
        ctx,
        stored.as_ref(),
        control_plane,
        first_master,
        first_master_endpoint,
        config_path,
    )
    .await
    .map_err(fail)?;
    save_join(&ctx.state_dir, cluster, &new)?;
    new.command(control_plane, now())
        .ok_or_else(|| fail(RefreshError::Unusable))
}

/// New join info made on the first master, keeping a certificate key of `stored` that is still
/// valid; a new one is uploaded only when a control-plane node needs one.
async fn refresh(
    ctx: &RunContext,
    stored: Option<&Stored>,
    control_plane: bool,
    first_master: &str,
    first_master_endpoint: &str,
    config_path: &str,
) -> Result<Stored, RefreshError> {
    let fm = HostAgent::connect(
        &ctx.trust,
        first_master,
        first_master_endpoint,
        std::time::Duration::from_secs(5),
    )
    .await?;
    if !fm.exists(ADMIN_CONF).await? {
        return Err(RefreshError::NotInitialized);
    }
    let kubeadm = find_program(&fm, &KUBEADM_PATHS, "install kubeadm").await?;
    let t = now();
    let out = run_program(
        &fm,
        &kubeadm,
        vec![
            "token".into(),
            "create".into(),
            "--print-join-command".into(),
        ],
        60,
        "kubeadm token create",
        "is the API server up?",
    )
    .await?;
    let info = parse_kubeadm_init_output(&out).map_err(RefreshError::Output)?;
    let mut new = Stored::from_init(&info, t);
    if let Some(old) = stored {
        if let (Some(k), Some(at)) = (&old.certificate_key, old.certificate_key_created_unix) {
            if t.saturating_sub(at) <= CERT_KEY_MAX_AGE_SECS {
                new.certificate_key = Some(k.clone());
                new.certificate_key_created_unix = Some(at);
            }
        }
    }
    if control_plane && new.certificate_key.is_none() {
        let out = run_program(
            &fm,
            &kubeadm,
            vec![
                "init".into(),
                "phase".into(),
                "upload-certs".into(),
                "--upload-certs".into(),
                "--config".into(),
                config_path.to_string(),
            ],
            120,
            "kubeadm init phase upload-certs",
            "is the API server up?",
        )
        .await?;
        new.certificate_key =
            Some(parse_certificate_key(&out).ok_or(RefreshError::NoCertificateKey)?);
        new.certificate_key_created_unix = Some(t);
    }
    Ok(new)
}

/// The certificate key that `kubeadm init phase upload-certs --upload-certs` prints on its
/// last line (`[upload-certs] Using certificate key:` and then the key).
pub fn parse_certificate_key(out: &str) -> Option<String> {
    out.lines()
        .map(str::trim)
        .rfind(|l| l.len() == 64 && l.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HASH: &str = "sha256:7c2e69131a36ae2a042a339b33381c6d0d43887e2de83720eff5359e26aec866";
    const KEY: &str = "f8902e114ef118304e561c3ecd4d0b543adc226b7a07f675f56564185ffe0c07";

    fn stored(now: u64) -> Stored {
        Stored {
            endpoint: "10.0.0.100:6443".into(),
            token: "abcdef.0123456789abcdef".into(),
            ca_cert_hashes: vec![HASH.into()],
            token_created_unix: now,
            certificate_key: Some(KEY.into()),
            certificate_key_created_unix: Some(now),
        }
    }

    #[test]
    fn stored_join_commands_and_expiry() {
        let s = stored(1_000_000);
        let w = s.command(false, 1_000_000).unwrap();
        assert!(!w.control_plane && w.certificate_key.is_none());
        let cp = s.command(true, 1_000_000).unwrap();
        assert!(cp.control_plane);
        assert_eq!(cp.certificate_key.as_deref(), Some(KEY));
        // The certificate key expires first, then the token.
        let later = 1_000_000 + 3 * 3600;
        assert!(s.command(true, later).is_none());
        assert!(s.command(false, later).is_some());
        assert!(s.command(false, 1_000_000 + 24 * 3600).is_none());
        // An edited file does not reach a command line.
        let mut bad = stored(1_000_000);
        bad.token = "abcdef.0123; rm -rf /".into();
        assert!(bad.command(false, 1_000_000).is_none());
    }

    #[test]
    fn certificate_key_from_upload_certs() {
        let out = format!(
            "[upload-certs] Storing the certificates in Secret \"kubeadm-certs\" in the \
             \"kube-system\" Namespace\n[upload-certs] Using certificate key:\n{KEY}\n"
        );
        assert_eq!(parse_certificate_key(&out).as_deref(), Some(KEY));
        assert_eq!(parse_certificate_key("nothing\n"), None);
    }

    #[test]
    fn debug_hides_the_secrets() {
        let d = format!("{:?}", stored(1));
        assert!(!d.contains("0123456789abcdef") && !d.contains(KEY), "{d}");
    }
}
