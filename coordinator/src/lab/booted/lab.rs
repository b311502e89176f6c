//! `Lab` for booted hosts: `up --systemd`, and the agents put onto them over SSH.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tracing::{info, warn};

use super::super::{blocking, inventory, validate, Lab, LabError, LabSpec};
use super::{rootfs, BootedRecord, LabSsh};
use crate::hosts::{self, AgentDeb, HostOutcome, InstallOptions, SshOptions};

/// Names the agent's .deb for booted labs explicitly.
pub const AGENT_DEB_ENV: &str = "HAOP_AGENT_DEB";

/// How `up --systemd` makes its hosts.
#[derive(Debug, Clone, Default)]
pub struct BootedOptions {
    /// Build the cached root again first.
    pub refresh_root: bool,
    /// Install the agent from this .deb over SSH once the hosts run; `None` leaves the hosts
    /// bare (sshd only), for `haop hosts install`.
    pub agent_deb: Option<PathBuf>,
}

/// The agent settings a booted lab host needs beyond the defaults: its kernel is the machine's,
/// shared with every other lab host, so kernel settings are applied per network namespace only.
pub const LAB_AGENT_SETTINGS: &str = "kernel = \"lab\"\n";

/// Finds the agent's .deb that `packaging/build` made: `$HAOP_AGENT_DEB` when set (and nothing
/// else then), else the newest `haop-agent_*.deb` in `debian/` of the cargo target dir this
/// program was built in (one or two directories up from the executable).
pub fn find_agent_deb() -> Result<PathBuf, LabError> {
    if let Some(p) = std::env::var_os(AGENT_DEB_ENV) {
        let p = PathBuf::from(p);
        return if p.is_file() {
            Ok(p)
        } else {
            Err(LabError::NoAgentDeb {
                tried: format!("${AGENT_DEB_ENV}={}", p.display()),
            })
        };
    }
    let mut tried = Vec::new();
    let exe = std::env::current_exe().ok();
    let dirs = exe
        .iter()
        .flat_map(|e| e.ancestors().skip(1).take(3))
        .map(|d| d.join("debian"));
    for dir in dirs {
        let newest = std::fs::read_dir(&dir)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.starts_with("haop-agent_") && n.ends_with(".deb")
            })
            .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok());
        if let Some(e) = newest {
            return Ok(e.path());
        }
        tried.push(dir.display().to_string());
    }
    Err(LabError::NoAgentDeb {
        tried: tried.join(", "),
    })
}

impl Lab {
    /// Creates the lab `name` with booted hosts (see [`super`]): network as for any lab, each
    /// host a systemd container on an overlay of the cached root, running with sshd; then, with
    /// an agent package, installs and enrolls the agents over SSH as `haop hosts install`
    /// does. On failure, what was made is removed again.
    pub async fn up_booted(
        state_dir: &Path,
        name: &str,
        spec: LabSpec,
        options: BootedOptions,
        progress: hosts::Progress,
    ) -> Result<Lab, LabError> {
        validate(name, spec)?;
        if spec.from_seed {
            return Err(LabError::InvalidSpec {
                reason: "--from-seed builds namespace hosts whose agents run the seed's units \
                         under their supervisor; it cannot be combined with --systemd"
                    .to_string(),
            });
        }
        super::super::sys::require_root()?;
        if !Path::new(super::NSPAWN).is_file() {
            return Err(LabError::ToolMissing {
                tool: "systemd-nspawn (apt-get install systemd-container)",
                tried: super::NSPAWN.to_string(),
            });
        }
        // Everything that can be checked before anything is made.
        let deb = match &options.agent_deb {
            Some(p) => Some(AgentDeb::read(p).await?),
            None => None,
        };
        let refresh = options.refresh_root;
        let root = blocking(move || rootfs::ensure(refresh)).await?;
        let (sd, n) = (state_dir.to_path_buf(), name.to_string());
        let lab = blocking(move || Lab::create(&sd, &n, spec)).await?;
        let made = async {
            let (dir, hosts) = (lab.dir.clone(), lab.record.hosts.clone());
            blocking(move || super::start(&dir, &root, &hosts)).await?;
            inventory::write(&lab.record, &lab.inventory_path())?;
            crate::trust::init(&lab.state_dir(), crate::trust::InitOptions::default())?;
            if let Some(deb) = &deb {
                lab.install_agents(deb, progress).await?;
            }
            Ok::<(), LabError>(())
        }
        .await;
        match made {
            Ok(()) => {
                info!(lab = %name, hosts = lab.record.hosts.len(), "booted lab is up");
                Ok(lab)
            }
            Err(e) => {
                let cleanup = lab.clone();
                if let Err(te) = blocking(move || cleanup.down()).await {
                    warn!(error = %crate::error_chain(&te), "cleanup after a failed up failed");
                }
                Err(e)
            }
        }
    }

    /// The booted part of the lab's record; `None` for a namespace lab.
    pub fn booted(&self) -> Option<BootedRecord> {
        BootedRecord::read(&self.dir).ok().flatten()
    }

    /// The lab's SSH key and known_hosts (booted labs).
    pub fn ssh(&self) -> LabSsh {
        LabSsh::of(&self.dir)
    }

    /// How `haop hosts install` reaches this lab's hosts: root with the lab's key, host keys
    /// pinned in the lab's known_hosts.
    pub fn install_options(&self) -> InstallOptions {
        let ssh = self.ssh();
        InstallOptions {
            ssh: SshOptions {
                identity: Some(ssh.identity),
                known_hosts: ssh.known_hosts,
                accept_new_host_keys: false,
                jump: None,
                connect_timeout: Duration::from_secs(10),
            },
            user: "root".to_string(),
            port: 22,
            extra_config: LAB_AGENT_SETTINGS.to_string(),
            token_ttl: Duration::from_secs(3600),
        }
    }

    /// Installs and enrolls the agents of every host over SSH from `deb`.
    pub async fn install_agents(
        &self,
        deb: &AgentDeb,
        progress: hosts::Progress,
    ) -> Result<Vec<HostOutcome>, LabError> {
        let (inv, _) = crate::inventory::Inventory::load(&self.inventory_path()).map_err(|e| {
            LabError::Install {
                errors: crate::error_chain(&e),
            }
        })?;
        let outcomes = hosts::install(
            &self.state_dir(),
            &inv,
            deb,
            &self.install_options(),
            progress,
        )
        .await?;
        let errors: Vec<String> = outcomes
            .iter()
            .filter_map(|o| o.result.as_ref().err().map(|e| crate::error_chain(e)))
            .collect();
        if errors.is_empty() {
            Ok(outcomes)
        } else {
            Err(LabError::Install {
                errors: errors.join("; "),
            })
        }
    }
}

/// A progress sink that writes nothing.
pub fn quiet() -> hosts::Progress {
    Arc::new(|_: &str, _: &str| {})
}
