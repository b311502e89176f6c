//! The lab's inventory file, so that `haop plan|apply|status -f` work on a lab like on real
//! hosts. It is written with the inventory model ([`crate::inventory`]) and is valid under it:
//! etcd hosts have the role etcd, masters master, workers worker; addresses and agent endpoints
//! are the lab's record's.
//!
//! Choices for the lab. Kubernetes is disabled (`kubernetes.enabled: false`): its binaries are
//! not installable on the lab machine, so `apply` stops after etcd, keepalived and node
//! preparation (a test of the kubeadm phase can set it to true, with a stand-in kubeadm on the
//! hosts). With two or more masters the lab gets a VIP on `eth0` at `.10` of its /24: the
//! address plan keeps `.2` to `.10` free (the bridge is `.1`, etcd hosts start at `.11`), so it
//! never collides with a host. `etcd.snapshots.stale_after` is `0s`: a lab lives for minutes,
//! and `haop status` would otherwise call it degraded until a snapshot is verified. The lab's
//! size is the user's choice, so the file sets
//! `allow_single_etcd` / `allow_even_etcd` when the lab has one or an even number of etcd hosts.
//! A lab without etcd hosts gets an inventory that validation refuses, as it should.

use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use super::record::LabRecord;
use super::LabError;
use crate::inventory::{self, AgentEndpoint, ClusterName, HostName, Inventory, Vip};

/// The inventory's file name inside the lab's directory.
pub const INVENTORY_FILE: &str = "inventory.yaml";

/// The last octet of a lab's VIP in its /24.
const VIP_OCTET: u8 = 10;

/// The inventory text for `lab`.
pub fn render(lab: &LabRecord) -> Result<String, serde_yaml_ng::Error> {
    let inv = model(lab).map_err(|reason| {
        <serde_yaml_ng::Error as serde::ser::Error>::custom(format!(
            "lab {} cannot be described as an inventory: {reason}",
            lab.name
        ))
    })?;
    let body = inv.to_yaml()?;
    Ok(format!(
        "# Written by `haop lab up {}`. Kubernetes is disabled in the lab: its binaries are not\n\
         # installed there.\n{body}",
        lab.name
    ))
}

/// The lab as an inventory.
fn model(lab: &LabRecord) -> Result<Inventory, String> {
    let cluster = ClusterName::try_from(lab.name.as_str())?;
    let mut hosts = Vec::with_capacity(lab.hosts.len());
    for h in &lab.hosts {
        let roles = h.roles.clone();
        let mut host = inventory::Host::new(
            HostName::try_from(h.name.as_str())?,
            IpAddr::V4(h.address),
            roles,
        );
        host.agent = h
            .endpoint
            .parse::<AgentEndpoint>()
            .map_err(|e| format!("agent endpoint of {}: {e}", h.name))?;
        hosts.push(host);
    }
    let mut inv = Inventory::new(cluster, hosts);
    inv.kubernetes.enabled = false;
    // A lab is a rehearsal of minutes, not a cluster to back up: status does not call it
    // degraded for want of a verified snapshot (a test of that check sets it).
    inv.etcd.snapshots.stale_after = "0s".parse().expect("a valid duration");
    let etcd = inv.etcd_hosts().len();
    inv.allow_single_etcd = etcd == 1;
    inv.allow_even_etcd = etcd > 0 && etcd.is_multiple_of(2);
    inv.vip = vip(lab).map(|v| Vip::new(IpAddr::V4(v)));
    Ok(inv)
}

/// The lab's VIP: `.10` of its /24 when it has two or more masters.
pub(super) fn vip(lab: &LabRecord) -> Option<Ipv4Addr> {
    let masters = lab
        .hosts
        .iter()
        .filter(|h| h.roles.contains(&crate::inventory::Role::Master))
        .count();
    (masters >= 2).then(|| {
        let [a, b, c, _] = lab.gateway.octets();
        Ipv4Addr::new(a, b, c, VIP_OCTET)
    })
}

/// Writes the inventory of `lab` to `path` atomically.
pub fn write(lab: &LabRecord, path: &Path) -> Result<(), LabError> {
    let text = render(lab).map_err(|source| LabError::Inventory {
        path: path.to_path_buf(),
        source,
    })?;
    Ok(crate::fsio::write_atomic(path, text.as_bytes(), 0o644)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::names::{agent_endpoint, host_name, Addressing, LabName, LabSpec};
    use crate::lab::record::{LabHost, FORMAT_VERSION};

    /// A lab record as `plan` makes it, without touching the machine.
    fn lab(spec: LabSpec) -> LabRecord {
        let a = Addressing::new(3).unwrap();
        let hosts = spec
            .hosts()
            .into_iter()
            .enumerate()
            .map(|(i, (role, n))| {
                let name = host_name(role, n);
                let address = a.address(role, n);
                LabHost {
                    name: name.clone(),
                    roles: vec![role],
                    namespace: format!("haop-t1-{name}"),
                    veth: a.veth(i + 1),
                    address,
                    endpoint: agent_endpoint(address),
                    agent_pid: None,
                    agent_start_time: None,
                    root_dir: "/r".into(),
                    log_path: "/l".into(),
                }
            })
            .collect();
        LabRecord {
            format_version: FORMAT_VERSION,
            name: LabName::try_from("t1").unwrap(),
            index: 3,
            subnet: a.subnet(),
            bridge: a.bridge(),
            bridge_mac: "02:00:00:00:00:01".into(),
            gateway: a.gateway(),
            created_unix_ms: 0,
            hosts,
        }
    }

    fn spec(etcd: u8, masters: u8, workers: u8) -> LabSpec {
        LabSpec {
            etcd,
            masters,
            workers,
            from_seed: false,
        }
    }

    #[test]
    fn shape() {
        let text = render(&lab(spec(1, 1, 0))).unwrap();
        assert!(text.starts_with("# Written by `haop lab up t1`."), "{text}");
        let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(v["cluster"].as_str(), Some("t1"));
        assert_eq!(v["hosts"][0]["name"].as_str(), Some("etcd1"));
        assert_eq!(v["hosts"][0]["address"].as_str(), Some("10.77.3.11"));
        assert_eq!(v["hosts"][0]["roles"][0].as_str(), Some("etcd"));
        assert_eq!(
            v["hosts"][0]["agent"].as_str(),
            Some(agent_endpoint(Ipv4Addr::new(10, 77, 3, 11)).as_str())
        );
        assert_eq!(v["hosts"][1]["roles"][0].as_str(), Some("master"));
        assert_eq!(v["kubernetes"]["enabled"].as_bool(), Some(false));
    }

    #[test]
    fn the_written_inventory_is_valid_without_warnings() {
        let dir = tempfile::tempdir().unwrap();
        for (e, m, w) in [(3, 0, 0), (3, 2, 2), (1, 1, 0), (2, 0, 1), (5, 3, 1)] {
            let record = lab(spec(e, m, w));
            let path = dir.path().join(format!("inv-{e}-{m}-{w}.yaml"));
            write(&record, &path).unwrap();
            let (inv, warnings) =
                Inventory::load(&path).unwrap_or_else(|err| panic!("lab {e}/{m}/{w}: {err}"));
            assert!(warnings.is_empty(), "lab {e}/{m}/{w}: {warnings:?}");
            assert_eq!(inv.cluster.as_str(), "t1");
            assert_eq!(inv.hosts.len(), record.hosts.len());
            assert_eq!(inv.etcd_hosts().len(), usize::from(e));
            assert_eq!(inv.masters().len(), usize::from(m));
            assert_eq!(inv.workers().len(), usize::from(w));
            assert!(!inv.kubernetes.enabled);
            for (h, r) in inv.hosts.iter().zip(&record.hosts) {
                assert_eq!(h.name.as_str(), r.name);
                assert_eq!(h.address, IpAddr::V4(r.address));
                assert_eq!(h.agent.as_str(), r.endpoint);
            }
            match &inv.vip {
                Some(vip) => {
                    assert!(m >= 2);
                    assert_eq!(vip.address.to_string(), "10.77.3.10");
                    assert_eq!(vip.interface.as_str(), "eth0");
                    assert!(record
                        .hosts
                        .iter()
                        .all(|h| IpAddr::V4(h.address) != vip.address));
                }
                None => assert!(m < 2, "lab {e}/{m}/{w} needs a VIP"),
            }
        }
    }

    #[test]
    fn etcd_urls_follow_the_lab_addresses() {
        let text = render(&lab(spec(3, 0, 0))).unwrap();
        let (inv, _) = Inventory::from_yaml(&text, "inventory.yaml").unwrap();
        assert_eq!(
            inv.etcd_initial_cluster(),
            "etcd1=https://10.77.3.11:2380,etcd2=https://10.77.3.12:2380,\
             etcd3=https://10.77.3.13:2380"
        );
    }
}
