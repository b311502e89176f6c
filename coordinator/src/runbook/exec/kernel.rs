//! The kernel family of node preparation: modules, sysctls, swap.
//!
//! The agent persists each setting where the OS reads it at boot (`/etc/modules-load.d`,
//! `/etc/sysctl.d`, fstab) and applies it now, comparing first. `check` compares the persisted
//! files with the agent's own rendering of them ([`modules_file`], [`sysctl_file`]; keep these
//! in step with the agent) and asks the host's facts for swap.

use std::collections::BTreeMap;

use super::change::{file_change, Change};
use crate::agent::{AgentError, HostAgent};
use crate::runbook::plan::KernelAction;

/// What `action` would change on the host behind `c`.
pub async fn check(action: &KernelAction, c: &HostAgent) -> Result<Change, AgentError> {
    match action {
        KernelAction::Modules { name, modules } => {
            let path = format!("/etc/modules-load.d/{name}.conf");
            let current = c.read_text(&path).await?;
            Ok(file_change(&path, current, &modules_file(modules), 0o644))
        }
        KernelAction::Sysctls { name, values } => {
            let path = format!("/etc/sysctl.d/{name}.conf");
            let current = c.read_text(&path).await?;
            Ok(file_change(&path, current, &sysctl_file(values), 0o644))
        }
        KernelAction::SwapOff => {
            let swap = c.facts().await?.swap.unwrap_or_default();
            Ok(if swap.devices.is_empty() && swap.fstab_entries == 0 {
                Change::Unchanged
            } else {
                Change::Run {
                    detail: format!(
                        "swap off ({} active, {} fstab lines)",
                        swap.devices.len(),
                        swap.fstab_entries
                    ),
                }
            })
        }
    }
}

/// Makes the host match `action`; answers whether anything changed.
pub async fn run(action: &KernelAction, c: &HostAgent) -> Result<bool, AgentError> {
    match action {
        KernelAction::Modules { name, modules } => c.load_modules(name, modules).await,
        KernelAction::Sysctls { name, values } => c.apply_sysctl(name, values).await,
        KernelAction::SwapOff => c.disable_swap().await,
    }
}

/// The agent's own rendering of a modules-load.d file (LoadModules writes this).
pub fn modules_file(modules: &[String]) -> String {
    let mut s = String::from("# Managed by haop.\n");
    for m in modules {
        s.push_str(m);
        s.push('\n');
    }
    s
}

/// The agent's own rendering of a sysctl.d file (ApplySysctl writes this).
pub fn sysctl_file(values: &BTreeMap<String, String>) -> String {
    let mut s = String::from("# Managed by haop.\n");
    for (k, v) in values {
        s.push_str(&format!("{k} = {v}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_like_the_agent_renders() {
        let mut v = BTreeMap::new();
        v.insert("net.ipv4.ip_forward".to_string(), "1".to_string());
        assert_eq!(
            sysctl_file(&v),
            "# Managed by haop.\nnet.ipv4.ip_forward = 1\n"
        );
        assert_eq!(
            modules_file(&["overlay".into()]),
            "# Managed by haop.\noverlay\n"
        );
    }
}
