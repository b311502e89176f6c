//! SSH to a host with the operator's OpenSSH client, driven from Rust.
//!
//! Why the `ssh` program and not a Rust SSH crate: OpenSSH is what operators already trust and
//! configure (agents, `~/.ssh/config`, hardware keys, certificates), its host-key checking is the
//! reference behaviour, and it is on every machine haop targets. A crate would be a second SSH
//! implementation to audit and would not see any of that. Everything goes through one program,
//! `/usr/bin/ssh`: a file is uploaded by streaming it to a remote `cat` on stdin, so no `scp`
//! or SFTP server is needed on the host.
//!
//! Host keys are pinned, always: every call carries `StrictHostKeyChecking=yes` (or
//! `accept-new`, only when the operator asked for unknown keys to be recorded) and
//! `UserKnownHostsFile=` the file the operator chose, and `BatchMode=yes` so that nothing ever
//! waits for a password or a yes/no at a prompt. A jump host (bastion) is reached through a
//! `ProxyCommand` that runs this same client with the same pinning, rather than `-J`, whose
//! jump-host connection would not see command-line options (ssh(1)).
//!
//! A failed call keeps ssh's stderr: [`super::hostkeys`] reads a refused host key out of it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tracing::debug;

/// The OpenSSH client, by absolute path.
pub const SSH: &str = "/usr/bin/ssh";
/// `ssh-keygen`, to read fingerprints out of a known_hosts file.
pub const SSH_KEYGEN: &str = "/usr/bin/ssh-keygen";

/// Where one host is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub user: String,
    /// An address or a name, as ssh takes it.
    pub host: String,
    pub port: u16,
}

impl Target {
    /// `user@host`.
    pub fn destination(&self) -> String {
        format!("{}@{}", self.user, self.host)
    }

    /// The name the host's key is recorded under in known_hosts: `host`, or `[host]:port` when
    /// the port is not 22 (as ssh records it).
    pub fn known_hosts_name(&self) -> String {
        if self.port == 22 {
            self.host.clone()
        } else {
            format!("[{}]:{}", self.host, self.port)
        }
    }
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.port == 22 {
            write!(f, "{}@{}", self.user, self.host)
        } else {
            write!(f, "{}@{}:{}", self.user, self.host, self.port)
        }
    }
}

/// Parses a jump host as `-J` takes it: `[user@]host[:port]`.
pub fn parse_jump(s: &str, default_user: &str) -> Result<Target, String> {
    let (user, rest) = match s.split_once('@') {
        Some((u, r)) => (u.to_string(), r),
        None => (default_user.to_string(), s),
    };
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.contains(':') => (
            h.to_string(),
            p.parse::<u16>()
                .map_err(|_| format!("jump host {s:?}: {p:?} is not a port"))?,
        ),
        _ => (rest.to_string(), 22),
    };
    let ok = |t: &str| {
        !t.is_empty()
            && !t.starts_with('-')
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-:[]".contains(c))
    };
    if !ok(&host) || !ok(&user) {
        return Err(format!(
            "jump host {s:?}: expected [user@]host[:port] with letters, digits, '.', '-', '_'"
        ));
    }
    Ok(Target { user, host, port })
}

/// How every connection is made.
#[derive(Debug, Clone)]
pub struct SshOptions {
    /// `-i FILE` (with `IdentitiesOnly=yes`); else ssh's defaults and agent.
    pub identity: Option<PathBuf>,
    /// The file host keys are pinned in.
    pub known_hosts: PathBuf,
    /// Record unknown host keys (`StrictHostKeyChecking=accept-new`). A changed key is refused
    /// all the same.
    pub accept_new_host_keys: bool,
    /// A bastion every connection goes through.
    pub jump: Option<Target>,
    pub connect_timeout: Duration,
}

/// What a remote command left.
#[derive(Debug, Clone)]
pub struct Output {
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    pub fn success(&self) -> bool {
        self.status == Some(0)
    }

    /// ssh itself failed (connection, authentication, host key): it exits 255.
    pub fn ssh_failed(&self) -> bool {
        self.status == Some(255)
    }
}

/// The OpenSSH client with fixed options.
#[derive(Debug, Clone)]
pub struct Ssh {
    program: PathBuf,
    options: SshOptions,
}

impl Ssh {
    pub fn new(options: SshOptions) -> Ssh {
        Ssh {
            program: PathBuf::from(SSH),
            options,
        }
    }

    pub fn options(&self) -> &SshOptions {
        &self.options
    }

    /// The `-o` options every connection (to a host or a jump host) carries.
    fn common_args(&self) -> Vec<String> {
        let o = &self.options;
        let strict = if o.accept_new_host_keys {
            "accept-new"
        } else {
            "yes"
        };
        let mut args = vec![
            "-o".to_string(),
            "BatchMode=yes".to_string(),
            "-o".to_string(),
            format!("StrictHostKeyChecking={strict}"),
            "-o".to_string(),
            format!("UserKnownHostsFile={}", o.known_hosts.display()),
            "-o".to_string(),
            "GlobalKnownHostsFile=/dev/null".to_string(),
            "-o".to_string(),
            // Pinned by address as written: no second record under a resolved name.
            "CheckHostIP=no".to_string(),
            "-o".to_string(),
            format!("ConnectTimeout={}", o.connect_timeout.as_secs().max(1)),
            "-o".to_string(),
            "ServerAliveInterval=10".to_string(),
            "-o".to_string(),
            "LogLevel=ERROR".to_string(),
        ];
        if let Some(id) = &o.identity {
            args.extend([
                "-i".to_string(),
                id.display().to_string(),
                "-o".to_string(),
                "IdentitiesOnly=yes".to_string(),
            ]);
        }
        args
    }

    /// The arguments of a connection to `target` running `remote` (a shell command line).
    pub fn args(&self, target: &Target, remote: &str) -> Vec<String> {
        let mut args = self.common_args();
        if let Some(jump) = &self.options.jump {
            // ssh runs ProxyCommand through the user's shell: quote every word.
            let mut proxy = vec![self.program.display().to_string()];
            proxy.extend(self.common_args());
            proxy.extend([
                "-p".to_string(),
                jump.port.to_string(),
                "-W".to_string(),
                "%h:%p".to_string(),
                jump.destination(),
            ]);
            let line = proxy
                .iter()
                .map(|w| {
                    if w == "%h:%p" {
                        w.clone()
                    } else {
                        shell_quote(w)
                    }
                })
                .collect::<Vec<_>>()
                .join(" ");
            args.extend(["-o".to_string(), format!("ProxyCommand={line}")]);
        }
        args.extend([
            "-p".to_string(),
            target.port.to_string(),
            "-T".to_string(),
            target.destination(),
            "--".to_string(),
            remote.to_string(),
        ]);
        args
    }

    /// Runs `remote` on `target`, feeding `stdin` to it, within `timeout`.
    pub async fn run(
        &self,
        target: &Target,
        remote: &str,
        stdin: Option<&[u8]>,
        timeout: Duration,
    ) -> Result<Output, std::io::Error> {
        debug!(target = %target, remote, "ssh");
        let mut cmd = Command::new(&self.program);
        cmd.args(self.args(target, remote))
            .env_clear()
            .env("LC_ALL", "C.UTF-8")
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        // ssh-agent stays usable, and HOME lets ssh find the user's config and keys.
        for var in ["HOME", "SSH_AUTH_SOCK", "USER"] {
            if let Some(v) = std::env::var_os(var) {
                cmd.env(var, v);
            }
        }
        let mut child = cmd.spawn()?;
        let feed = async {
            if let (Some(data), Some(mut pipe)) = (stdin, child.stdin.take()) {
                // A remote end that stops reading shows as the command's failure.
                let _ = pipe.write_all(data).await;
                let _ = pipe.shutdown().await;
            }
            child.wait_with_output().await
        };
        let out = tokio::time::timeout(timeout, feed).await.map_err(|_| {
            std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {} s", timeout.as_secs()),
            )
        })??;
        Ok(Output {
            status: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// `s` as one word of a POSIX shell command line.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-=:,@+%".contains(c))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The default known_hosts file of a state dir: `<state-dir>/ssh/known_hosts`. Host keys are
/// pinned with the cluster's other trust material, not in the operator's own file.
pub fn default_known_hosts(state_dir: &Path) -> PathBuf {
    state_dir.join("ssh").join("known_hosts")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ssh(jump: Option<Target>) -> Ssh {
        Ssh::new(SshOptions {
            identity: Some("/k/id".into()),
            known_hosts: "/s/known hosts".into(),
            accept_new_host_keys: false,
            jump,
            connect_timeout: Duration::from_secs(5),
        })
    }

    fn target(port: u16) -> Target {
        Target {
            user: "root".into(),
            host: "10.0.0.5".into(),
            port,
        }
    }

    #[test]
    fn every_call_pins_host_keys_and_never_prompts() {
        let args = ssh(None).args(&target(22), "true");
        let joined = args.join(" ");
        for o in [
            "BatchMode=yes",
            "StrictHostKeyChecking=yes",
            "UserKnownHostsFile=/s/known hosts",
            "IdentitiesOnly=yes",
        ] {
            assert!(joined.contains(o), "{o} missing: {joined}");
        }
        assert_eq!(&args[args.len() - 3..], ["root@10.0.0.5", "--", "true"]);
    }

    #[test]
    fn accepting_new_keys_is_explicit() {
        let mut s = ssh(None);
        s.options.accept_new_host_keys = true;
        let joined = s.args(&target(22), "true").join(" ");
        assert!(
            joined.contains("StrictHostKeyChecking=accept-new"),
            "{joined}"
        );
        assert!(!joined.contains("StrictHostKeyChecking=no"), "{joined}");
    }

    #[test]
    fn a_jump_host_is_pinned_too() {
        let jump = parse_jump("ops@bastion.example:2222", "root").unwrap();
        let args = ssh(Some(jump)).args(&target(22), "true");
        let proxy = args
            .iter()
            .find(|a| a.starts_with("ProxyCommand="))
            .expect("a ProxyCommand");
        assert!(
            proxy.contains("'StrictHostKeyChecking=yes'")
                || proxy.contains("StrictHostKeyChecking=yes")
        );
        assert!(
            proxy.contains("'UserKnownHostsFile=/s/known hosts'"),
            "{proxy}"
        );
        assert!(proxy.contains("-W %h:%p"), "{proxy}");
        assert!(proxy.ends_with("ops@bastion.example"), "{proxy}");
        assert!(proxy.contains("-p 2222"), "{proxy}");
    }

    #[test]
    fn jump_hosts_parse_as_ssh_takes_them() {
        assert_eq!(
            parse_jump("b1", "root").unwrap(),
            Target {
                user: "root".into(),
                host: "b1".into(),
                port: 22
            }
        );
        assert_eq!(parse_jump("u@b1:2200", "root").unwrap().port, 2200);
        for bad in ["", "u@", "b1:x", "-oProxyCommand=x", "a b"] {
            assert!(parse_jump(bad, "root").is_err(), "{bad:?}");
        }
    }

    #[test]
    fn known_hosts_names_carry_odd_ports() {
        assert_eq!(target(22).known_hosts_name(), "10.0.0.5");
        assert_eq!(target(2222).known_hosts_name(), "[10.0.0.5]:2222");
    }

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("/usr/bin/ssh"), "/usr/bin/ssh");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
