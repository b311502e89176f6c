//! Preflight: every missing prerequisite on every host, reported at once, before anything
//! changes (as kubeadm's preflight does). Each problem names the host and what to do.

use std::collections::HashMap;

use haop_proto::v1 as pb;

use super::Runbook;
use crate::agent_client::Client;
use crate::inventory::{EtcdBinary, Role};

async fn exists(c: &mut Client, path: &str) -> Result<bool, String> {
    c.stat(pb::StatRequest {
        path: path.to_string(),
    })
    .await
    .map(|r| r.into_inner().exists)
    .map_err(|s| s.message().to_string())
}

/// The problems found; empty when everything is in place.
pub async fn check(rb: &Runbook, clients: &HashMap<String, Client>) -> Vec<String> {
    let inv = &rb.inventory;
    let mut problems = Vec::new();
    if let EtcdBinary::Upload { file, sha256 } = &inv.etcd.binary {
        match std::fs::read(file) {
            Ok(data) => {
                let actual = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(&data));
                if actual != sha256.as_str() {
                    problems.push(format!(
                        "etcd.binary.upload: {} has sha256 {actual}, the inventory says {}",
                        file.display(),
                        sha256.as_str()
                    ));
                }
            }
            Err(e) => problems.push(format!(
                "etcd.binary.upload: cannot read {}: {e}",
                file.display()
            )),
        }
    }
    let mut set = tokio::task::JoinSet::new();
    for h in &inv.hosts {
        let Some(mut c) = clients.get(h.name.as_str()).cloned() else {
            continue;
        };
        let name = h.name.as_str().to_string();
        let mut wanted: Vec<(String, String)> = Vec::new();
        if h.has_role(Role::Etcd) {
            if let EtcdBinary::Path(p) = &inv.etcd.binary {
                wanted.push((
                    p.display().to_string(),
                    "install etcd (Debian: apt-get install etcd-server) or set etcd.binary".into(),
                ));
            }
        }
        if h.has_role(Role::Master) && inv.vip.is_some() {
            wanted.push((
                "/usr/sbin/keepalived".into(),
                "install keepalived (apt-get install keepalived)".into(),
            ));
        }
        set.spawn(async move {
            let mut out = Vec::new();
            if let Err(s) = c.who_am_i(pb::WhoAmIRequest {}).await {
                out.push(format!("{name}: the agent refuses haop: {}", s.message()));
                return out;
            }
            for (path, fix) in wanted {
                match exists(&mut c, &path).await {
                    Ok(true) => {}
                    Ok(false) => out.push(format!("{name}: {path} is missing: {fix}")),
                    Err(e) => out.push(format!("{name}: cannot check {path}: {e}")),
                }
            }
            out
        });
    }
    for p in set.join_all().await {
        problems.extend(p);
    }
    problems.sort();
    problems
}
