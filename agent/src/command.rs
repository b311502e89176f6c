//! Running host programs, hardened.
//!
//! Every program the agent runs goes through here: an absolute path, a cleared environment
//! with `LC_ALL=C.UTF-8` and a fixed `PATH`, no shell, captured output, a timeout after which the
//! process is killed. A failure carries the program, its arguments, its exit status and its
//! stderr, so the message shown to the operator says what happened without a second look.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

/// The environment every program starts from.
pub const SAFE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Output of a finished program.
#[derive(Debug, Clone, Default)]
pub struct Output {
    /// Exit code; -1 when killed by a signal or the timeout.
    pub code: i32,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub timed_out: bool,
}

impl Output {
    pub fn success(&self) -> bool {
        self.code == 0 && !self.timed_out
    }

    /// "exited 1", "timed out", "killed by a signal".
    pub fn status_text(&self) -> String {
        if self.timed_out {
            "timed out".into()
        } else if self.code == -1 {
            "killed by a signal".into()
        } else {
            format!("exited {}", self.code)
        }
    }
}

/// Errors running a program.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    #[error("cannot run {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} {args} {status}: {stderr}")]
    Failed {
        program: String,
        args: String,
        status: String,
        stderr: String,
    },
}

/// A program invocation.
#[derive(Debug, Clone)]
pub struct Invocation {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub stdin: Vec<u8>,
    pub timeout: Duration,
    /// Output beyond this many bytes per stream is dropped.
    pub output_limit: usize,
}

impl Invocation {
    pub fn new(program: impl Into<PathBuf>, args: &[&str]) -> Self {
        Invocation {
            program: program.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: BTreeMap::new(),
            stdin: Vec::new(),
            timeout: Duration::from_secs(60),
            output_limit: 16 * 1024 * 1024,
        }
    }

    /// Runs the program and returns its output whatever its exit status.
    pub async fn output(&self) -> Result<Output, CommandError> {
        let mut cmd = tokio::process::Command::new(&self.program);
        cmd.args(&self.args)
            .env_clear()
            .env("PATH", SAFE_PATH)
            .env("LC_ALL", "C.UTF-8")
            .envs(&self.env)
            .stdin(if self.stdin.is_empty() {
                Stdio::null()
            } else {
                Stdio::piped()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|source| CommandError::Spawn {
            program: self.program.display().to_string(),
            source,
        })?;
        if let Some(mut stdin) = child.stdin.take() {
            let data = self.stdin.clone();
            tokio::spawn(async move {
                let _ = stdin.write_all(&data).await;
            });
        }
        let limit = self.output_limit;
        let stdout = child
            .stdout
            .take()
            .map(|s| tokio::spawn(read_limited(s, limit)));
        let stderr = child
            .stderr
            .take()
            .map(|s| tokio::spawn(read_limited(s, limit)));
        let (code, timed_out) = match tokio::time::timeout(self.timeout, child.wait()).await {
            Ok(Ok(status)) => (status.code().unwrap_or(-1), false),
            Ok(Err(source)) => {
                return Err(CommandError::Spawn {
                    program: self.program.display().to_string(),
                    source,
                })
            }
            Err(_) => {
                let _ = child.kill().await;
                (-1, true)
            }
        };
        let collect = |h: Option<tokio::task::JoinHandle<Vec<u8>>>| async move {
            match h {
                Some(h) => h.await.unwrap_or_default(),
                None => Vec::new(),
            }
        };
        Ok(Output {
            code,
            stdout: collect(stdout).await,
            stderr: collect(stderr).await,
            timed_out,
        })
    }

    /// Runs the program and fails unless it exits 0.
    pub async fn run(&self) -> Result<Output, CommandError> {
        let out = self.output().await?;
        if out.success() {
            Ok(out)
        } else {
            Err(CommandError::Failed {
                program: self.program.display().to_string(),
                args: self.args.join(" "),
                status: out.status_text(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            })
        }
    }
}

async fn read_limited(mut r: impl tokio::io::AsyncRead + Unpin, limit: usize) -> Vec<u8> {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let room = limit.saturating_sub(out.len());
                out.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
    out
}

/// The first of `candidates` that exists, for programs whose location differs between
/// distributions (`/usr/sbin/modprobe` or `/sbin/modprobe`).
pub fn find_program(candidates: &[&str]) -> Option<PathBuf> {
    candidates
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .map(Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn environment_is_cleared_and_errors_carry_stderr() {
        std::env::set_var("HAOP_SECRET_TEST_VAR", "leak");
        let out = Invocation::new("/usr/bin/env", &[]).run().await.unwrap();
        let env = String::from_utf8(out.stdout).unwrap();
        assert!(env.contains("LC_ALL=C.UTF-8"));
        assert!(!env.contains("HAOP_SECRET_TEST_VAR"));

        let err = Invocation::new("/bin/sh", &["-c", "echo boom >&2; exit 3"])
            .run()
            .await
            .unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("/bin/sh") && msg.contains("exited 3") && msg.contains("boom"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn timeout_kills() {
        let mut inv = Invocation::new("/bin/sleep", &["30"]);
        inv.timeout = Duration::from_millis(200);
        let out = inv.output().await.unwrap();
        assert!(out.timed_out);
        assert_eq!(out.code, -1);
    }

    #[tokio::test]
    async fn stdin_is_fed() {
        let mut inv = Invocation::new("/bin/cat", &[]);
        inv.stdin = b"hello".to_vec();
        assert_eq!(inv.run().await.unwrap().stdout, b"hello");
    }
}
