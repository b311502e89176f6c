//! Programs run on a host through the agent's allow-listed `Exec` (no shell): finding one of a
//! few install locations, and running it with an error that says what failed and what to do.
//!
//! Used by the kubeadm family and by `etcd::kube_endpoints` (which re-uploads kubeadm's
//! ClusterConfiguration after a membership change).

use haop_proto::v1 as pb;

use crate::agent::{AgentError, HostAgent};

/// Why a program could not be run, or did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("none of {} is installed: {install}", .candidates.join(", "))]
    NotInstalled {
        candidates: Vec<String>,
        install: String,
    },
    /// The program ran and failed; `stderr_tail` is the end of what it said.
    #[error(
        "{what} {how}: {}; {hint}",
        if .stderr_tail.is_empty() { "no error output" } else { .stderr_tail.as_str() }
    )]
    Failed {
        what: String,
        how: String,
        stderr_tail: String,
        hint: String,
    },
}

/// The first of `candidates` installed on the host; `install` says how to get one.
pub async fn find_program(
    c: &HostAgent,
    candidates: &[&str],
    install: &str,
) -> Result<String, CommandError> {
    for p in candidates {
        if c.exists(p).await? {
            return Ok((*p).to_string());
        }
    }
    Err(CommandError::NotInstalled {
        candidates: candidates.iter().map(|c| c.to_string()).collect(),
        install: install.to_string(),
    })
}

/// Runs `program args` through the agent; answers stdout, or an error with the exit code and
/// the end of stderr. `what` names the command in the error (never with its secret arguments);
/// `hint` says what to do when it fails.
pub async fn run_program(
    c: &HostAgent,
    program: &str,
    args: Vec<String>,
    timeout_seconds: u32,
    what: &str,
    hint: &str,
) -> Result<String, CommandError> {
    let r = c
        .exec(pb::ExecRequest {
            program: program.to_string(),
            args,
            timeout_seconds,
            ..Default::default()
        })
        .await?;
    if r.exit_code == 0 && !r.timed_out {
        return Ok(String::from_utf8_lossy(&r.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&r.stderr);
    let tail: Vec<&str> = stderr.lines().rev().take(5).collect();
    let tail: Vec<&str> = tail.into_iter().rev().collect();
    Err(CommandError::Failed {
        what: what.to_string(),
        how: if r.timed_out {
            format!("timed out after {timeout_seconds} s")
        } else {
            format!("exited with code {}", r.exit_code)
        },
        stderr_tail: tail.join(" | "),
        hint: hint.to_string(),
    })
}
