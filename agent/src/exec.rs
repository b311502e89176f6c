//! `Exec`: allow-listed programs, never a shell.
//!
//! Some runbook steps are programs (kubeadm init, etcdutl snapshot restore). The agent runs only
//! programs named in its config's allow-list, by absolute path, through the hardened runner in
//! [`crate::command`]. A request names the program by its absolute path or its file name; either
//! must match an allow-list entry exactly.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use crate::command::{CommandError, Invocation, Output};

/// Why an exec request was refused.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("program {program:?} is not on the agent's exec allow-list ({allowed})")]
    NotAllowed { program: String, allowed: String },
    #[error("program {program} is on the allow-list but not installed on this host")]
    NotInstalled { program: String },
    #[error("invalid exec request: {reason}")]
    Invalid { reason: String },
    #[error(transparent)]
    Command(#[from] CommandError),
}

/// The allow-list from the agent's config.
#[derive(Debug, Clone)]
pub struct AllowList(Vec<PathBuf>);

impl AllowList {
    pub fn new(programs: Vec<PathBuf>) -> Self {
        AllowList(programs)
    }

    /// The allowed absolute path for `program`, which is an absolute path or a file name.
    pub fn resolve(&self, program: &str) -> Result<PathBuf, ExecError> {
        let not_allowed = || ExecError::NotAllowed {
            program: program.to_string(),
            allowed: self
                .0
                .iter()
                .map(|p| p.display().to_string())
                .collect::<Vec<_>>()
                .join(", "),
        };
        let candidates: Vec<&PathBuf> = if program.starts_with('/') {
            self.0.iter().filter(|p| p.as_os_str() == program).collect()
        } else {
            if program.is_empty() || program.contains('/') {
                return Err(not_allowed());
            }
            self.0
                .iter()
                .filter(|p| p.file_name().is_some_and(|n| n == program))
                .collect()
        };
        if candidates.is_empty() {
            return Err(not_allowed());
        }
        candidates
            .into_iter()
            .find(|p| p.is_file())
            .cloned()
            .ok_or_else(|| ExecError::NotInstalled {
                program: program.to_string(),
            })
    }
}

/// A validated exec request.
#[derive(Debug, Clone)]
pub struct ExecRequest {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub stdin: Vec<u8>,
    pub timeout: Duration,
}

impl ExecRequest {
    pub fn validate(
        allow: &AllowList,
        program: &str,
        args: Vec<String>,
        env: BTreeMap<String, String>,
        stdin: Vec<u8>,
        timeout_seconds: u32,
    ) -> Result<Self, ExecError> {
        let program = allow.resolve(program)?;
        if args.iter().any(|a| a.contains('\0')) {
            return Err(ExecError::Invalid {
                reason: "an argument contains a NUL byte".into(),
            });
        }
        for k in env.keys() {
            if k.is_empty()
                || k.contains('=')
                || k.contains('\0')
                || matches!(k.as_str(), "LD_PRELOAD" | "LD_LIBRARY_PATH" | "PATH")
            {
                return Err(ExecError::Invalid {
                    reason: format!("environment variable {k:?} is not allowed"),
                });
            }
        }
        let secs = match timeout_seconds {
            0 => 60,
            s => s.min(3600),
        };
        Ok(ExecRequest {
            program,
            args,
            env,
            stdin,
            timeout: Duration::from_secs(u64::from(secs)),
        })
    }

    pub async fn run(&self) -> Result<Output, ExecError> {
        let mut inv = Invocation::new(&self.program, &[]);
        inv.args = self.args.clone();
        inv.env = self.env.clone();
        inv.stdin = self.stdin.clone();
        inv.timeout = self.timeout;
        Ok(inv.output().await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_allowed_programs_resolve() {
        let allow = AllowList::new(vec![PathBuf::from("/bin/echo"), PathBuf::from("/no/such")]);
        assert_eq!(allow.resolve("echo").unwrap(), PathBuf::from("/bin/echo"));
        assert_eq!(
            allow.resolve("/bin/echo").unwrap(),
            PathBuf::from("/bin/echo")
        );
        for bad in [
            "sh",
            "/bin/sh",
            "../bin/echo",
            "/bin/../bin/echo",
            "",
            "bin/echo",
        ] {
            let e = allow.resolve(bad).unwrap_err();
            assert!(matches!(e, ExecError::NotAllowed { .. }), "{bad}: {e}");
        }
        assert!(matches!(
            allow.resolve("such"),
            Err(ExecError::NotInstalled { .. })
        ));
    }

    #[tokio::test]
    async fn runs_with_args_and_env_but_refuses_loader_variables() {
        let allow = AllowList::new(vec![PathBuf::from("/usr/bin/env")]);
        let mut env = BTreeMap::new();
        env.insert("ETCDCTL_API".to_string(), "3".to_string());
        let req = ExecRequest::validate(&allow, "env", vec![], env, vec![], 5).unwrap();
        let out = req.run().await.unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).contains("ETCDCTL_API=3"));

        let mut env = BTreeMap::new();
        env.insert("LD_PRELOAD".to_string(), "/tmp/x.so".to_string());
        assert!(ExecRequest::validate(&allow, "env", vec![], env, vec![], 5).is_err());
    }
}
