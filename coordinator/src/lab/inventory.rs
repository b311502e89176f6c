//! The lab's inventory file, so that `haop plan|apply|status -f` work on a lab like on real
//! hosts. One small writer: the inventory model proper lives elsewhere and will replace it.

use std::path::Path;

use serde::Serialize;

use super::names::Role;
use super::record::{write_atomic, LabRecord};
use super::LabError;

/// The inventory's file name inside the lab's directory.
pub const INVENTORY_FILE: &str = "inventory.yaml";

#[derive(Debug, Serialize)]
struct Inventory<'a> {
    cluster: &'a str,
    hosts: Vec<InventoryHost<'a>>,
}

#[derive(Debug, Serialize)]
struct InventoryHost<'a> {
    name: &'a str,
    address: String,
    roles: &'a [Role],
    agent: &'a str,
}

/// The inventory text for `lab`.
pub fn render(lab: &LabRecord) -> Result<String, serde_yaml_ng::Error> {
    let inv = Inventory {
        cluster: lab.name.as_str(),
        hosts: lab
            .hosts
            .iter()
            .map(|h| InventoryHost {
                name: &h.name,
                address: h.address.to_string(),
                roles: &h.roles,
                agent: &h.endpoint,
            })
            .collect(),
    };
    let body = serde_yaml_ng::to_string(&inv)?;
    Ok(format!("# Written by `haop lab up {}`.\n{body}", lab.name))
}

/// Writes the inventory of `lab` to `path` atomically.
pub fn write(lab: &LabRecord, path: &Path) -> Result<(), LabError> {
    let text = render(lab).map_err(|source| LabError::Inventory {
        path: path.to_path_buf(),
        source,
    })?;
    write_atomic(path, text.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::names::LabName;
    use crate::lab::record::{LabHost, FORMAT_VERSION};
    use std::net::Ipv4Addr;

    #[test]
    fn shape() {
        let host = |name: &str, role, last| LabHost {
            name: name.into(),
            roles: vec![role],
            namespace: format!("haop-t1-{name}"),
            veth: "hv3x1".into(),
            address: Ipv4Addr::new(10, 77, 3, last),
            endpoint: format!("http://10.77.3.{last}:7443"),
            agent_pid: None,
            agent_start_time: None,
            root_dir: "/r".into(),
            log_path: "/l".into(),
        };
        let lab = LabRecord {
            format_version: FORMAT_VERSION,
            name: LabName::try_from("t1").unwrap(),
            index: 3,
            subnet: "10.77.3.0/24".into(),
            bridge: "hbr3".into(),
            bridge_mac: "02:00:00:00:00:01".into(),
            gateway: Ipv4Addr::new(10, 77, 3, 1),
            created_unix_ms: 0,
            hosts: vec![
                host("etcd1", Role::Etcd, 11),
                host("master1", Role::Master, 41),
            ],
        };
        let text = render(&lab).unwrap();
        assert!(
            text.starts_with("# Written by `haop lab up t1`.\n"),
            "{text}"
        );
        let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(v["cluster"].as_str(), Some("t1"));
        assert_eq!(v["hosts"][0]["name"].as_str(), Some("etcd1"));
        assert_eq!(v["hosts"][0]["address"].as_str(), Some("10.77.3.11"));
        assert_eq!(v["hosts"][0]["roles"][0].as_str(), Some("etcd"));
        assert_eq!(
            v["hosts"][0]["agent"].as_str(),
            Some("http://10.77.3.11:7443")
        );
        assert_eq!(v["hosts"][1]["roles"][0].as_str(), Some("master"));
    }
}
