//! Preflight: every missing prerequisite on every host, reported at once, before anything
//! changes (as kubeadm's preflight does). Each problem names the host and what to do.

use std::collections::HashMap;
use std::path::Path;

use super::plan::kubeadm::{KUBEADM_PATHS, KUBECTL_PATHS};
use crate::agent::HostAgent;
use crate::inventory::{EtcdBinary, Inventory, Role};
use crate::render::nodeprep::CONTAINERD_PATHS;

/// The problems found; empty when everything is in place.
pub async fn check(
    inv: &Inventory,
    state_dir: &Path,
    clients: &HashMap<String, HostAgent>,
) -> Vec<String> {
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
    problems.extend(release_problems(inv));
    if inv.kubernetes.enabled {
        if let Some(m) = &inv.kubernetes.cni_manifest {
            if let Err(e) = std::fs::metadata(m) {
                problems.push(format!(
                    "kubernetes.cni_manifest: cannot read {}: {e}",
                    m.display()
                ));
            }
        }
    }
    problems.extend(not_yet_members(inv, state_dir).await);
    let mut set = tokio::task::JoinSet::new();
    for h in &inv.hosts {
        let Some(c) = clients.get(h.name.as_str()).cloned() else {
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
        // Each entry: any one of these paths, or the fix.
        let mut any_of: Vec<(&'static [&'static str], String)> = Vec::new();
        if inv.kubernetes.enabled && (h.has_role(Role::Master) || h.has_role(Role::Worker)) {
            any_of.push((
                &KUBEADM_PATHS,
                "install kubeadm (kubernetes.enabled is true): the kubeadm phases run it".into(),
            ));
            any_of.push((
                &CONTAINERD_PATHS,
                "install containerd (apt-get install containerd; kubernetes.enabled is true): \
                 node preparation configures and restarts it, and kubeadm needs its CRI socket"
                    .into(),
            ));
            if inv.kubernetes.cni_manifest.is_some()
                && inv.masters().first().map(|m| m.name.as_str()) == Some(h.name.as_str())
            {
                any_of.push((
                    &KUBECTL_PATHS,
                    "install kubectl on the first master: it applies kubernetes.cni_manifest"
                        .into(),
                ));
            }
        }
        set.spawn(async move {
            let mut out = Vec::new();
            if let Err(e) = c.who_am_i().await {
                out.push(format!("{name}: the agent refuses haop: {}", e.detail()));
                return out;
            }
            for (path, fix) in wanted {
                match c.exists(&path).await {
                    Ok(true) => {}
                    Ok(false) => out.push(format!("{name}: {path} is missing: {fix}")),
                    Err(e) => out.push(format!("{name}: cannot check {path}: {}", e.detail())),
                }
            }
            for (paths, fix) in any_of {
                let mut found = false;
                for p in paths {
                    match c.exists(p).await {
                        Ok(true) => found = true,
                        Ok(false) => {}
                        Err(e) => out.push(format!("{name}: cannot check {p}: {}", e.detail())),
                    }
                }
                if !found {
                    out.push(format!(
                        "{name}: none of {} is there: {fix}",
                        paths.join(", ")
                    ));
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

/// Apply forms new clusters; it never joins a host to a running one (that needs `member add`
/// first). When the cluster answers, every inventory etcd host must already be a member.
async fn not_yet_members(inv: &Inventory, state_dir: &Path) -> Vec<String> {
    let endpoints = inv.etcd_client_urls();
    let Ok(client) = crate::etcd::api::EtcdClient::connect(
        state_dir,
        &endpoints,
        std::time::Duration::from_secs(1),
    )
    .await
    else {
        return Vec::new();
    };
    let Ok(members) = client.member_list().await else {
        return Vec::new();
    };
    inv.etcd_hosts()
        .iter()
        .filter(|h| {
            let peer = inv.etcd_peer_url(h);
            !members
                .iter()
                .any(|m| m.name == h.name.as_str() || m.peer_urls.contains(&peer))
        })
        .map(|h| {
            format!(
                "{}: not a member of the running etcd cluster; join it with `haop etcd add {} -f INVENTORY` (apply only forms new clusters)",
                h.name.as_str(),
                h.name.as_str()
            )
        })
        .collect()
}

/// The etcd release the inventory records: the uploaded binary must be that version, and
/// Kubernetes must accept it as its external etcd (kubeadm's `MinExternalEtcdVersion`).
fn release_problems(inv: &Inventory) -> Vec<String> {
    use crate::etcd::versions::{min_external_etcd_for_kubernetes, EtcdVersion};
    let mut problems = Vec::new();
    let recorded = inv
        .etcd
        .version
        .and_then(|v| v.patch().map(|p| EtcdVersion::new(v.major(), v.minor(), p)));
    if let (Some(want), EtcdBinary::Upload { file, .. }) = (recorded, &inv.etcd.binary) {
        match crate::etcd::upgrade::binary_version(file) {
            Some(got) if got == want => {}
            Some(got) => problems.push(format!(
                "etcd.version is {want}, but etcd.binary.upload {} is etcd {got}: make them agree \
                 (haop etcd upgrade records both)",
                file.display()
            )),
            None => problems.push(format!(
                "etcd.binary.upload: {} does not say its version (`--version`); is it etcd?",
                file.display()
            )),
        }
    }
    if let (true, Some(k), Some(etcd)) = (inv.kubernetes.enabled, inv.kubernetes.version, recorded)
    {
        if let Some(min) = (k.major() == 1)
            .then(|| min_external_etcd_for_kubernetes(k.minor()))
            .flatten()
        {
            if etcd < min {
                problems.push(format!(
                    "kubernetes.version {k} needs an external etcd of {min} or later (kubeadm's \
                     MinExternalEtcdVersion), and etcd.version is {etcd}: upgrade etcd first \
                     (haop etcd upgrade --to 3.5.30)"
                ));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inventory(extra: &str) -> Inventory {
        let text = format!(
            "cluster: c\nhosts:\n  - {{name: etcd1, address: 10.0.0.11, roles: [etcd]}}\n  \
             - {{name: etcd2, address: 10.0.0.12, roles: [etcd]}}\n  - {{name: etcd3, address: \
             10.0.0.13, roles: [etcd]}}\n  - {{name: m1, address: 10.0.0.21, roles: [master]}}\n{extra}"
        );
        Inventory::from_yaml(&text, "t.yaml").unwrap().0
    }

    #[test]
    fn kubernetes_refuses_an_external_etcd_older_than_kubeadm_accepts() {
        let old = inventory("etcd: {version: \"3.4.23\"}\nkubernetes: {version: \"1.33.0\"}\n");
        let p = release_problems(&old);
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(p[0].contains("3.5.24") && p[0].contains("3.4.23"), "{p:?}");
        let new = inventory("etcd: {version: \"3.5.30\"}\nkubernetes: {version: \"1.33.0\"}\n");
        assert!(release_problems(&new).is_empty());
        // Unknown etcd version or a Kubernetes haop has no rule for: nothing said.
        assert!(release_problems(&inventory("kubernetes: {version: \"1.33.0\"}\n")).is_empty());
    }
}
