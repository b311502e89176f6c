//! The agent's configuration: `/etc/haop/agent.toml` on a real host, flags on top.
//!
//! Everything the agent may touch is decided here, once, at start: the root host paths resolve
//! under, the managed roots inside it, the programs `Exec` may run, the service manager backend
//! and how kernel settings are applied. Requests cannot widen any of it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::paths::{default_managed_roots, HostPath};

/// Which service manager runs units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum ServiceManagerKind {
    /// systemd when PID 1 is systemd, the built-in supervisor otherwise.
    #[default]
    Auto,
    Systemd,
    Supervisor,
}

/// How kernel settings (modules, sysctls, swap) reach the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum KernelMode {
    /// A real host: load modules, write /proc/sys, swapoff.
    #[default]
    Host,
    /// A lab host sharing the machine's kernel: only settings the kernel keeps per network
    /// namespace are applied; the rest is persisted and reported as not applied.
    Lab,
}

/// The agent's settings after the file and the flags were merged.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub listen: SocketAddr,
    /// Host paths resolve under this directory ("/" on a real host).
    pub root: PathBuf,
    pub managed_roots: Vec<HostPath>,
    /// Where the agent keeps its own state (declared data dirs, supervisor state), a host path.
    pub state_dir: HostPath,
    /// Absolute program paths `Exec` may run.
    pub exec_allow: Vec<PathBuf>,
    pub service_manager: ServiceManagerKind,
    pub kernel: KernelMode,
    /// Bootstrap token for enrollment (`abcdef.0123456789abcdef`), until enrolled.
    pub enroll_token: Option<haop_proto::enroll::Token>,
    /// Pinned hash of the agent CA (`sha256:<hex>`), until enrolled.
    pub enroll_ca_hash: Option<String>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            listen: "0.0.0.0:7443".parse().expect("valid default address"),
            root: PathBuf::from("/"),
            managed_roots: default_managed_roots(),
            state_dir: HostPath::try_from("/var/lib/haop-agent").expect("valid"),
            exec_allow: default_exec_allow(),
            service_manager: ServiceManagerKind::Auto,
            kernel: KernelMode::Host,
            enroll_token: None,
            enroll_ca_hash: None,
        }
    }
}

/// Programs an agent may run when its config names none.
pub fn default_exec_allow() -> Vec<PathBuf> {
    [
        "/usr/bin/etcdctl",
        "/usr/bin/etcdutl",
        "/usr/local/bin/etcdctl",
        "/usr/local/bin/etcdutl",
        "/usr/bin/kubeadm",
        "/usr/bin/kubectl",
        "/usr/local/bin/kubeadm",
        "/usr/local/bin/kubectl",
        "/usr/bin/apt-get",
        "/usr/bin/hostname",
        "/usr/sbin/ip",
    ]
    .iter()
    .map(PathBuf::from)
    .collect()
}

/// The TOML file, every field optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    listen: Option<SocketAddr>,
    root: Option<PathBuf>,
    managed_roots: Option<Vec<String>>,
    state_dir: Option<String>,
    service_manager: Option<ServiceManagerKind>,
    kernel: Option<KernelMode>,
    exec: Option<ExecSection>,
    enroll: Option<EnrollSection>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct EnrollSection {
    token: Option<String>,
    ca_hash: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecSection {
    allow: Option<Vec<PathBuf>>,
}

/// Errors reading the configuration; each names the file or the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid")]
    Parse {
        path: String,
        #[source]
        source: toml::de::Error,
    },
    #[error("config field {field}: {reason}")]
    Field { field: String, reason: String },
}

impl AgentConfig {
    /// Reads a TOML config file over the defaults.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_toml(&text).map_err(|e| match e {
            ConfigError::Parse { source, .. } => ConfigError::Parse {
                path: path.display().to_string(),
                source,
            },
            other => other,
        })
    }

    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let file: ConfigFile = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: "<inline>".into(),
            source,
        })?;
        let mut cfg = AgentConfig::default();
        if let Some(l) = file.listen {
            cfg.listen = l;
        }
        if let Some(r) = file.root {
            cfg.root = r;
        }
        if let Some(roots) = file.managed_roots {
            cfg.managed_roots = roots
                .iter()
                .enumerate()
                .map(|(i, r)| {
                    let p = HostPath::try_from(r.as_str()).map_err(|e| ConfigError::Field {
                        field: format!("managed_roots[{i}]"),
                        reason: e.to_string(),
                    })?;
                    if p.is_root() {
                        return Err(ConfigError::Field {
                            field: format!("managed_roots[{i}]"),
                            reason: "\"/\" cannot be a managed root: it would let requests write anywhere".into(),
                        });
                    }
                    Ok(p)
                })
                .collect::<Result<_, _>>()?;
        }
        if let Some(s) = file.state_dir {
            cfg.state_dir = HostPath::try_from(s.as_str()).map_err(|e| ConfigError::Field {
                field: "state_dir".into(),
                reason: e.to_string(),
            })?;
        }
        if let Some(s) = file.service_manager {
            cfg.service_manager = s;
        }
        if let Some(k) = file.kernel {
            cfg.kernel = k;
        }
        if let Some(e) = file.enroll {
            if let Some(t) = e.token {
                cfg.enroll_token = Some(parse_token(&t, "enroll.token")?);
            }
            if let Some(h) = e.ca_hash {
                cfg.enroll_ca_hash = Some(parse_ca_hash(&h, "enroll.ca_hash")?);
            }
        }
        if let Some(allow) = file.exec.and_then(|e| e.allow) {
            for (i, p) in allow.iter().enumerate() {
                if !p.is_absolute() {
                    return Err(ConfigError::Field {
                        field: format!("exec.allow[{i}]"),
                        reason: format!("{} is not an absolute path", p.display()),
                    });
                }
            }
            cfg.exec_allow = allow;
        }
        Ok(cfg)
    }

    /// Refuses settings that would be unsafe together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.root.is_absolute() {
            return Err(ConfigError::Field {
                field: "root".into(),
                reason: format!("{} is not an absolute path", self.root.display()),
            });
        }
        Ok(())
    }
}

/// Parses a bootstrap token, naming the field on error.
pub fn parse_token(text: &str, field: &str) -> Result<haop_proto::enroll::Token, ConfigError> {
    haop_proto::enroll::Token::parse(text).map_err(|e| ConfigError::Field {
        field: field.into(),
        reason: e.to_string(),
    })
}

/// Checks a CA hash (`sha256:` and 64 hex digits), naming the field on error.
pub fn parse_ca_hash(text: &str, field: &str) -> Result<String, ConfigError> {
    let t = text.trim().to_ascii_lowercase();
    let ok = t
        .strip_prefix("sha256:")
        .is_some_and(|h| h.len() == 64 && h.chars().all(|c| c.is_ascii_hexdigit()));
    if !ok {
        return Err(ConfigError::Field {
            field: field.into(),
            reason: format!("{text:?} is not sha256:<64 hex digits> (haop token create prints it)"),
        });
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_gives_defaults() {
        let c = AgentConfig::from_toml("").unwrap();
        assert_eq!(c.root, PathBuf::from("/"));
        assert!(!c.managed_roots.is_empty());
    }

    #[test]
    fn fields_are_read() {
        let c = AgentConfig::from_toml(
            r#"
            listen = "127.0.0.1:9000"
            root = "/srv/lab"
            managed_roots = ["/etc/haop"]
            service_manager = "supervisor"
            kernel = "lab"
            [exec]
            allow = ["/usr/bin/etcdctl"]
            "#,
        )
        .unwrap();
        assert_eq!(c.listen.port(), 9000);
        assert_eq!(c.service_manager, ServiceManagerKind::Supervisor);
        assert_eq!(c.kernel, KernelMode::Lab);
        assert_eq!(c.exec_allow, vec![PathBuf::from("/usr/bin/etcdctl")]);
    }

    #[test]
    fn bad_fields_are_named() {
        let e = AgentConfig::from_toml("managed_roots = [\"/\"]").unwrap_err();
        assert!(e.to_string().contains("managed_roots[0]"), "{e}");
        let e = AgentConfig::from_toml("[exec]\nallow = [\"etcdctl\"]").unwrap_err();
        assert!(e.to_string().contains("exec.allow[0]"), "{e}");
        let e = AgentConfig::from_toml("colour = 1").unwrap_err();
        assert!(matches!(e, ConfigError::Parse { .. }));
    }

    #[test]
    fn enroll_section_is_checked() {
        let c = AgentConfig::from_toml(&format!(
            "[enroll]\ntoken = \"abcdef.0123456789abcdef\"\nca_hash = \"sha256:{}\"\n",
            "ab".repeat(32)
        ))
        .unwrap();
        assert_eq!(c.enroll_token.unwrap().id, "abcdef");
        let e = AgentConfig::from_toml("[enroll]\ntoken = \"nope\"\n").unwrap_err();
        assert!(e.to_string().contains("enroll.token"), "{e}");
        let e = AgentConfig::from_toml("[enroll]\nca_hash = \"md5:00\"\n").unwrap_err();
        assert!(e.to_string().contains("enroll.ca_hash"), "{e}");
    }
}
