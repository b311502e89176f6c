//! The inventory: one YAML file, written by hand, that describes a whole cluster.
//!
//! Every runbook command (`haop plan|apply|status|etcd|certs -f FILE`) starts here. The file
//! names the cluster, its hosts (name, address, roles `etcd` / `master` / `worker`, agent
//! endpoint, optional FQDN) and the settings of etcd (binary source, data dir, ports, extra
//! flags), of the VIP (address, interface, VRRP router id; the VRRP password is generated and
//! kept in the state dir, never written here), of Kubernetes (enabled, version, subnets, CNI
//! manifest) and of the PKI (key algorithm, lifetime). Everything but the cluster name and the
//! hosts has a default; `tests/fixtures/inventory/full.yaml` shows every field.
//!
//! Lifecycle: [`Inventory::load`] (or [`Inventory::from_yaml`]) reads the file in two stages.
//! serde reads it into a loose form (`raw`) with unknown keys refused; a YAML or structural
//! error stops there, with its line and column. Then `validate` checks every field and the
//! fields against each other and reports *every* problem at once, each with the file, the field
//! path (`hosts[2].address`), a message and a hint. Errors refuse the file
//! ([`InventoryError::Invalid`]); warnings (an even or single etcd count, unless allowed) come
//! back with the inventory. The validated [`Inventory`] holds checked types only, with the
//! defaults filled in; [`Inventory::to_yaml`] writes it back with every default spelled out.
//!
//! Validation is pure: it reads no other file and asks no host. Whether the upload file or CNI
//! manifest exists, or whether the hosts really have these addresses, is for preflight.

pub mod edit;
mod error;
mod model;
mod raw;
mod types;
mod validate;

use std::path::Path;

pub use error::{InventoryError, Problem, Severity};
pub use model::{
    EtcdBinary, EtcdSettings, Host, Inventory, KubernetesSettings, PkiSettings, Retention,
    SnapshotSettings, Vip, DEFAULT_API_PORT, DEFAULT_CATCH_UP_STALL, DEFAULT_CLIENT_PORT,
    DEFAULT_DATA_DIR, DEFAULT_ETCD_BINARY, DEFAULT_PEER_PORT, DEFAULT_POD_SUBNET,
    DEFAULT_ROUTER_ID, DEFAULT_SNAPSHOTS_KEPT, DEFAULT_VIP_INTERFACE,
};
pub use types::{
    AgentEndpoint, Cidr, ClusterName, Fqdn, HostName, InterfaceName, Lifetime, Role, Sha256Hex,
    Span, Version, DEFAULT_AGENT_PORT,
};

use raw::RawInventory;

impl Inventory {
    /// Reads and validates the inventory file at `path`. Relative local paths in it (the
    /// uploaded etcd binary, the CNI manifest) are made relative to the file's directory.
    /// Answers the inventory and its warnings; any error refuses the file with every problem.
    pub fn load(path: &Path) -> Result<(Inventory, Vec<Problem>), InventoryError> {
        let text = std::fs::read_to_string(path).map_err(|source| InventoryError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let (mut inventory, warnings) = Inventory::from_yaml(&text, &path.display().to_string())?;
        let dir = path.parent().unwrap_or(Path::new(""));
        if !dir.as_os_str().is_empty() {
            inventory.resolve_local_paths(dir);
        }
        Ok((inventory, warnings))
    }

    /// Parses and validates inventory `text`; `source_name` (usually the file's path) names
    /// it in every message. Local paths stay as written.
    pub fn from_yaml(
        text: &str,
        source_name: &str,
    ) -> Result<(Inventory, Vec<Problem>), InventoryError> {
        let raw = parse(text, source_name)?;
        match validate::validate(raw, source_name) {
            (Some(inventory), warnings) => Ok((inventory, warnings)),
            (None, problems) => Err(InventoryError::Invalid {
                file: source_name.to_string(),
                problems,
            }),
        }
    }
}

fn parse(text: &str, file: &str) -> Result<RawInventory, InventoryError> {
    let has_content = text.lines().any(|l| {
        let l = l.trim();
        !l.is_empty() && !l.starts_with('#') && l != "---"
    });
    if !has_content {
        return Err(InventoryError::Parse {
            file: file.to_string(),
            line: None,
            column: None,
            message: "the file is empty".to_string(),
            hint: Some(
                "an inventory needs at least `cluster: NAME` and `hosts:`; see haop's example \
                 inventory"
                    .to_string(),
            ),
        });
    }
    serde_yaml_ng::from_str(text).map_err(|e| {
        let location = e.location();
        let (line, column) = (
            location.as_ref().map(|l| l.line()),
            location.as_ref().map(|l| l.column()),
        );
        let mut message = e.to_string();
        if let (Some(l), Some(c)) = (line, column) {
            // serde_yaml_ng appends the location; it is in front of the message already.
            for suffix in [
                format!(" at line {l} column {c}"),
                format!(" at position {l}:{c}"),
            ] {
                if let Some(m) = message.strip_suffix(&suffix) {
                    message = m.to_string();
                }
            }
        }
        // The raw form reads numbers as i64; the reader knows them as numbers.
        let message = message.replace("expected i64", "expected a number");
        let hint = parse_hint(&message);
        InventoryError::Parse {
            file: file.to_string(),
            line,
            column,
            message,
            hint,
        }
    })
}

/// A hint for the serde errors people make most: a misspelt key, a value of the wrong kind.
fn parse_hint(message: &str) -> Option<String> {
    if let Some(rest) = message.split_once("unknown field `").map(|(_, rest)| rest) {
        let unknown = rest.split('`').next().unwrap_or_default();
        let expected: Vec<&str> = rest
            .split_once("expected")
            .map(|(_, list)| list.split('`').skip(1).step_by(2).collect())
            .unwrap_or_default();
        return Some(match validate::closest(unknown, &expected) {
            Some(k) => format!("did you mean `{k}`?"),
            None if expected.is_empty() => "remove the key".to_string(),
            None => format!("the keys allowed here are: {}", expected.join(", ")),
        });
    }
    if message.contains("invalid type") {
        return Some(
            "check the value's kind: roles and extra_flags are lists (`[etcd, master]`), \
             etcd, vip, kubernetes and pki are maps, ports and router_id are numbers"
                .to_string(),
        );
    }
    None
}
