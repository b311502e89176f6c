//! The file family: whole files, files written only when missing, haop's block in /etc/hosts,
//! and binaries uploaded from the operator's machine.
//!
//! `check` reads what the host has and answers a [`Change`] (a unified diff for text); `run`
//! writes through the agent's ensure RPCs, which compare before they write and answer whether
//! anything changed. Every write is the agent's atomic, durable one (temp file, fsync, rename),
//! so a run killed mid-step leaves the old file or the new one, and the rerun compares again.

use std::path::{Path, PathBuf};

use super::change::{creation_diff, file_change, unified_diff, Change};
use crate::agent::{upload_chunks, AgentError, HostAgent};
use crate::render::hosts::merge_hosts_block;
use crate::runbook::plan::{FileAction, HOSTS_FILE};

/// Errors of the file family.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    #[error(transparent)]
    Agent(#[from] AgentError),
    /// A local file to upload (the operator's machine).
    #[error("cannot read {}", .path.display())]
    Local {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What `action` would change on the host behind `c`.
pub async fn check(action: &FileAction, c: &HostAgent) -> Result<Change, FileError> {
    match action {
        FileAction::Content {
            path,
            content,
            mode,
        } => {
            let current = c.read_text(path).await?;
            Ok(file_change(
                path,
                current,
                &String::from_utf8_lossy(content),
                *mode,
            ))
        }
        FileAction::IfAbsent {
            path,
            content,
            mode,
        } => Ok(if c.exists(path).await? {
            Change::Unchanged
        } else {
            Change::Create {
                detail: format!("create {path} (mode {mode:04o}, owner root:root)"),
                diff: creation_diff(path, &String::from_utf8_lossy(content)),
            }
        }),
        FileAction::HostsBlock { block } => {
            let old = c
                .read_text(HOSTS_FILE)
                .await?
                .map(|(t, _)| t)
                .unwrap_or_default();
            let new = merge_hosts_block(&old, block);
            Ok(if old == new {
                Change::Unchanged
            } else {
                Change::Update {
                    detail: format!("update {HOSTS_FILE}"),
                    diff: unified_diff(HOSTS_FILE, &old, &new),
                }
            })
        }
        FileAction::Upload { path, sha256, .. } => {
            let st = c.stat(path).await?;
            Ok(if st.exists && st.sha256 == *sha256 {
                Change::Unchanged
            } else {
                Change::Create {
                    detail: format!("upload {path} (sha256 {})", &sha256[..12.min(sha256.len())]),
                    diff: String::new(),
                }
            })
        }
    }
}

/// Makes the host match `action`; answers whether anything changed.
pub async fn run(action: &FileAction, c: &HostAgent) -> Result<bool, FileError> {
    match action {
        FileAction::Content {
            path,
            content,
            mode,
        } => Ok(c.write_file(path, content.clone(), *mode).await?),
        FileAction::IfAbsent {
            path,
            content,
            mode,
        } => {
            if c.exists(path).await? {
                return Ok(false);
            }
            Ok(c.write_file(path, content.clone(), *mode).await?)
        }
        FileAction::HostsBlock { block } => {
            let (old, mode) = c
                .read_text(HOSTS_FILE)
                .await?
                .unwrap_or((String::new(), 0o644));
            let new = merge_hosts_block(&old, block);
            if new == old {
                return Ok(false);
            }
            Ok(c.write_file(HOSTS_FILE, new, mode).await?)
        }
        FileAction::Upload {
            path,
            local,
            sha256,
            mode,
        } => upload(c, path, local, sha256, *mode).await,
    }
}

/// Uploads `local` to `path`, declaring the inventory's `sha256`: the agent refuses content
/// that does not match it, so a local file changed since preflight never takes the binary's
/// place.
async fn upload(
    c: &HostAgent,
    path: &str,
    local: &Path,
    sha256: &str,
    mode: u32,
) -> Result<bool, FileError> {
    let data = std::fs::read(local).map_err(|source| FileError::Local {
        path: local.to_path_buf(),
        source,
    })?;
    let msgs = upload_chunks(path, mode, sha256, &data);
    Ok(c.call("UploadFile", |mut c| async move {
        c.upload_file(tokio_stream::iter(msgs)).await
    })
    .await?
    .changed)
}
