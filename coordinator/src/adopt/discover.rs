//! Finding out what a hand-built cluster is, through the agents and etcd, without changing
//! anything: each etcd host's unit and environment files, the certificates they name and the CA
//! those chain to, where that CA's key lies around; the members etcd lists; each master's
//! kube-apiserver etcd client files and keepalived's VIP. Everything that does not fit what haop
//! can take over is collected as a problem naming the host and file, so that one run reports
//! them all and nothing is written.

use std::collections::BTreeMap;
use std::net::IpAddr;

use super::flags::{self, Command};
use super::record::{SeedMaster, SeedMember};
use crate::agent::{Agents, HostAgent};
use crate::etcd::kube_endpoints::get_arg;
use crate::etcd::probe::{AgentEtcdctl, Probe};
use crate::inventory::{Host, Inventory};
use crate::pki::inspect;

/// Where adoption looks for a hand-written etcd unit.
pub const UNIT_PATH: &str = "/etc/systemd/system/etcd.service";
/// kubeadm's static pod manifest of the API server.
pub const APISERVER_MANIFEST: &str = "/etc/kubernetes/manifests/kube-apiserver.yaml";
pub const KEEPALIVED_CONF: &str = "/etc/keepalived/keepalived.conf";

/// One etcd host as found.
#[derive(Debug, Clone)]
pub struct FoundMember {
    pub seed: SeedMember,
    pub command: Command,
    pub client_url: String,
    pub ca_pem: String,
}

/// keepalived's VIP as found on a master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FoundVip {
    pub address: IpAddr,
    pub interface: String,
    pub router_id: u8,
}

/// Everything found, and every problem.
#[derive(Debug, Default)]
pub struct Found {
    pub members: Vec<FoundMember>,
    /// The version etcd reports.
    pub version: Option<String>,
    pub masters: Vec<SeedMaster>,
    pub vip: Option<FoundVip>,
    pub problems: Vec<String>,
}

/// The files next to a CA certificate that would hold its key, by the two common namings
/// (cfssljson's `ca.pem`/`ca-key.pem`, openssl's and kubeadm's `ca.crt`/`ca.key`).
pub fn ca_key_candidates(ca_file: &str) -> Vec<String> {
    let (dir, name) = ca_file.rsplit_once('/').unwrap_or(("", ca_file));
    let stem = name
        .strip_suffix(".pem")
        .or_else(|| name.strip_suffix(".crt"))
        .unwrap_or(name);
    vec![format!("{dir}/{stem}-key.pem"), format!("{dir}/{stem}.key")]
}

/// keepalived.conf's first VIP, its interface and router id.
pub fn parse_keepalived(text: &str) -> Option<FoundVip> {
    let mut interface = None;
    let mut router_id = None;
    let mut address = None;
    let mut in_vips = false;
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let words: Vec<&str> = line.split_whitespace().collect();
        if in_vips {
            if line.starts_with('}') {
                in_vips = false;
            } else if address.is_none() {
                if let Some(w) = words.first() {
                    address = w.split('/').next().and_then(|a| a.parse::<IpAddr>().ok());
                }
            }
            continue;
        }
        match words.as_slice() {
            ["interface", i, ..] => interface = interface.or(Some(i.to_string())),
            ["virtual_router_id", n, ..] => router_id = router_id.or(n.parse().ok()),
            ["virtual_ipaddress", "{", ..] | ["virtual_ipaddress{", ..] => in_vips = true,
            ["virtual_ipaddress"] => in_vips = true,
            _ => {}
        }
    }
    Some(FoundVip {
        address: address?,
        interface: interface?,
        router_id: router_id?,
    })
}

fn https_port(url: &str) -> Option<u16> {
    let rest = url.strip_prefix("https://")?;
    let hostport = rest.split('/').next()?;
    hostport.rsplit_once(':')?.1.parse().ok()
}

/// Reads one etcd host; problems are pushed, not returned.
async fn member(agent: &HostAgent, h: &Host, problems: &mut Vec<String>) -> Option<FoundMember> {
    let host = h.name.as_str();
    let mut problem = |p: String| problems.push(format!("{host}: {p}"));
    let unit_text = match agent.read_text(UNIT_PATH).await {
        Ok(Some((t, _))) => t,
        Ok(None) => {
            problem(format!(
                "no {UNIT_PATH}: haop adopts etcd run by a systemd unit there"
            ));
            return None;
        }
        Err(e) => {
            problem(format!(
                "cannot read {UNIT_PATH}: {}",
                crate::error::short_error(&e)
            ));
            return None;
        }
    };
    let unit = match flags::parse_unit(&unit_text) {
        Ok(u) => u,
        Err(e) => {
            problem(format!("{UNIT_PATH}: {e}"));
            return None;
        }
    };
    let mut env = BTreeMap::new();
    let mut env_files = Vec::new();
    for (path, optional) in &unit.environment_files {
        match agent.read_text(path).await {
            Ok(Some((t, _))) => {
                env.extend(flags::parse_env(&t));
                env_files.push(path.clone());
            }
            Ok(None) if *optional => {}
            Ok(None) => problem(format!("{UNIT_PATH} names {path}, which does not exist")),
            Err(e) => problem(format!(
                "cannot read {path}: {}",
                crate::error::short_error(&e)
            )),
        }
    }
    let cmd = match flags::command(&unit, &env) {
        Ok(c) => c,
        Err(e) => {
            problem(format!("{UNIT_PATH}: {e}"));
            return None;
        }
    };
    let unknown = flags::unknown(&cmd);
    if !unknown.is_empty() {
        problem(format!(
            "etcd runs with flags haop does not know how to carry over: {} (remove them from {UNIT_PATH}, or adopt by hand)",
            unknown.join(", ")
        ));
    }
    let flag = |name: &str| cmd.flags.get(name).cloned().unwrap_or_default();
    let mut missing = Vec::new();
    for f in [
        "name",
        "data-dir",
        "advertise-client-urls",
        "cert-file",
        "key-file",
        "trusted-ca-file",
        "peer-cert-file",
        "peer-key-file",
        "peer-trusted-ca-file",
    ] {
        if flag(f).is_empty() {
            missing.push(format!("--{f}"));
        }
    }
    if !missing.is_empty() {
        problem(format!(
            "etcd runs without {} : haop adopts clusters that already use TLS between members and for clients",
            missing.join(", ")
        ));
        return None;
    }
    for f in [
        "listen-client-urls",
        "advertise-client-urls",
        "listen-peer-urls",
        "initial-advertise-peer-urls",
    ] {
        if let Some(v) = cmd.flags.get(f) {
            let plain: Vec<&str> = v.split(',').filter(|u| u.starts_with("http://")).collect();
            if !plain.is_empty() {
                problem(format!(
                    "--{f} has plain-HTTP URLs ({}): haop adopts TLS clusters only",
                    plain.join(", ")
                ));
            }
        }
    }
    // The certificates, and the CA they chain to.
    let read_pem = |path: String| async move {
        match crate::certs::read_certificates(agent, &path).await {
            Ok(Some(p)) if !p.trim().is_empty() => Ok(p),
            Ok(_) => Err(format!("{path} holds no certificate or does not exist")),
            Err(e) => Err(format!(
                "cannot read {path}: {}",
                crate::error::short_error(&e)
            )),
        }
    };
    let ca_pem = match read_pem(flag("trusted-ca-file")).await {
        Ok(p) => p,
        Err(e) => {
            problem(e);
            return None;
        }
    };
    match read_pem(flag("peer-trusted-ca-file")).await {
        Ok(p) if p == ca_pem => {}
        Ok(_) => problem(format!(
            "--peer-trusted-ca-file {} and --trusted-ca-file {} hold different CAs: haop adopts clusters with one etcd CA",
            flag("peer-trusted-ca-file"),
            flag("trusted-ca-file")
        )),
        Err(e) => problem(e),
    }
    let ca_skis: Vec<Option<String>> = inspect(&ca_pem)
        .map(|v| v.into_iter().map(|c| c.subject_key_id).collect())
        .unwrap_or_default();
    for f in ["cert-file", "peer-cert-file"] {
        match read_pem(flag(f)).await {
            Ok(p) => match inspect(&p).ok().and_then(|v| v.into_iter().next()) {
                Some(c)
                    if c.authority_key_id.is_some() && ca_skis.contains(&c.authority_key_id) => {}
                Some(_) => problem(format!(
                    "--{f} {} is not signed by the CA of --trusted-ca-file {}",
                    flag(f),
                    flag("trusted-ca-file")
                )),
                None => problem(format!("--{f} {} does not parse", flag(f))),
            },
            Err(e) => problem(e),
        }
    }
    let mut ca_keys = Vec::new();
    for candidate in ca_key_candidates(&flag("trusted-ca-file")) {
        if agent.exists(&candidate).await.unwrap_or(false) {
            ca_keys.push(candidate);
        }
    }
    let client_url = flag("advertise-client-urls")
        .split(',')
        .next()
        .unwrap_or_default()
        .to_string();
    Some(FoundMember {
        seed: SeedMember {
            host: host.to_string(),
            member_id: 0,
            name: flag("name"),
            peer_urls: Vec::new(),
            unit_path: UNIT_PATH.into(),
            environment_files: env_files,
            cert_file: flag("cert-file"),
            key_file: flag("key-file"),
            peer_cert_file: flag("peer-cert-file"),
            peer_key_file: flag("peer-key-file"),
            trusted_ca_file: flag("trusted-ca-file"),
            peer_trusted_ca_file: flag("peer-trusted-ca-file"),
            client_cert_auth: flags::is_on(&cmd, "client-cert-auth"),
            peer_client_cert_auth: flags::is_on(&cmd, "peer-client-cert-auth"),
            ca_keys,
        },
        command: cmd,
        client_url,
        ca_pem,
    })
}

/// Reads one master.
async fn master(
    agent: &HostAgent,
    h: &Host,
    problems: &mut Vec<String>,
) -> (SeedMaster, Option<FoundVip>) {
    let host = h.name.as_str();
    let mut m = SeedMaster {
        host: host.to_string(),
        manifest: None,
        etcd_cafile: None,
        etcd_certfile: None,
        etcd_keyfile: None,
        ca_keys: Vec::new(),
    };
    match agent.read_text(APISERVER_MANIFEST).await {
        Ok(Some((text, _))) => {
            m.manifest = Some(APISERVER_MANIFEST.into());
            m.etcd_cafile = get_arg(&text, "etcd-cafile");
            m.etcd_certfile = get_arg(&text, "etcd-certfile");
            m.etcd_keyfile = get_arg(&text, "etcd-keyfile");
            if m.etcd_cafile.is_none() || m.etcd_certfile.is_none() || m.etcd_keyfile.is_none() {
                problems.push(format!(
                    "{host}: {APISERVER_MANIFEST} has no --etcd-cafile/--etcd-certfile/--etcd-keyfile: its API server does not use an external etcd with client certificates"
                ));
            }
        }
        Ok(None) => {}
        Err(e) => problems.push(format!(
            "{host}: cannot read {APISERVER_MANIFEST}: {}",
            crate::error::short_error(&e)
        )),
    }
    if let Some(ca) = &m.etcd_cafile {
        for candidate in ca_key_candidates(ca) {
            if agent.exists(&candidate).await.unwrap_or(false) {
                m.ca_keys.push(candidate);
            }
        }
    }
    let vip = match agent.read_text(KEEPALIVED_CONF).await {
        Ok(Some((text, _))) => parse_keepalived(&text),
        _ => None,
    };
    (m, vip)
}

/// Reads every host of `inv` (all agents must answer) and asks etcd for its members.
pub async fn discover(inv: &Inventory, agents: &Agents) -> Found {
    let mut found = Found::default();
    let mut connected = Vec::new();
    for h in &inv.hosts {
        match agents.get(h.name.as_str()).await {
            Ok(a) => connected.push((h, a)),
            Err(e) => found.problems.push(format!(
                "{}: its agent at {} does not answer: {}",
                h.name,
                h.agent,
                crate::error::short_error(&e)
            )),
        }
    }
    for (h, a) in &connected {
        if h.has_role(crate::inventory::Role::Etcd) {
            if let Some(m) = member(a, h, &mut found.problems).await {
                found.members.push(m);
            }
        }
        if h.has_role(crate::inventory::Role::Master) {
            let (m, vip) = master(a, h, &mut found.problems).await;
            found.masters.push(m);
            if found.vip.is_none() {
                found.vip = vip;
            }
        }
    }
    if found.members.is_empty() || !found.problems.is_empty() {
        return found;
    }
    // One CA for the whole cluster.
    let first = found.members[0].ca_pem.clone();
    for m in &found.members[1..] {
        if m.ca_pem != first {
            found.problems.push(format!(
                "{}: its --trusted-ca-file holds another CA than {}'s: haop adopts clusters with one etcd CA",
                m.seed.host, found.members[0].seed.host
            ));
        }
    }
    // etcd itself, asked through the first member's agent with that host's own certificate:
    // the cluster verifies every client against its CA, of which haop holds no certificate.
    let urls: Vec<String> = found.members.iter().map(|m| m.client_url.clone()).collect();
    let first_host = found.members[0].seed.host.clone();
    let Some((_, agent)) = connected
        .iter()
        .find(|(h, _)| h.name.as_str() == first_host)
    else {
        return found;
    };
    let probe = AgentEtcdctl {
        agent: agent.clone(),
        endpoints: urls.clone(),
        cacert: found.members[0].seed.trusted_ca_file.clone(),
        cert: found.members[0].seed.cert_file.clone(),
        key: found.members[0].seed.key_file.clone(),
    };
    let list = match probe.members().await {
        Ok(l) => l,
        Err(e) => {
            found.problems.push(format!(
                "etcd cannot be asked for its members from {first_host} with its own certificate ({}): {}",
                found.members[0].seed.cert_file,
                crate::error_chain(&e)
            ));
            return found;
        }
    };
    for m in &found.members {
        if let Err(e) = probe.healthy(&m.client_url).await {
            found.problems.push(format!(
                "{}: etcd at {} does not answer ({}): haop adopts a healthy cluster; repair it first",
                m.seed.host,
                m.client_url,
                crate::error::short_error(&e)
            ));
        }
    }
    if let Some(m) = found.members.first() {
        found.version = probe.status_of(&m.client_url).await.ok().map(|s| s.version);
    }
    for m in &list {
        if m.is_learner {
            found.problems.push(format!(
                "etcd member {} ({:x}) is a learner: finish or undo its addition first",
                m.name, m.id
            ));
        }
        match found.members.iter_mut().find(|f| f.seed.name == m.name) {
            Some(f) => {
                f.seed.member_id = m.id;
                f.seed.peer_urls = m.peer_urls.clone();
            }
            None => found.problems.push(format!(
                "etcd member {} ({:x}, {}) runs on no host of the inventory: add its host, or remove the member first",
                m.name,
                m.id,
                m.peer_urls.join(",")
            )),
        }
    }
    for f in &found.members {
        if f.seed.member_id == 0 {
            found.problems.push(format!(
                "{}: etcd lists no member named {} (its --name)",
                f.seed.host, f.seed.name
            ));
        }
    }
    // One data dir, ports and binary for all (the inventory has one of each).
    for (what, get) in [("--data-dir", "data-dir"), ("the etcd binary", "")] {
        let values: Vec<String> = found
            .members
            .iter()
            .map(|m| {
                if get.is_empty() {
                    m.command.program.clone()
                } else {
                    m.command.flags.get(get).cloned().unwrap_or_default()
                }
            })
            .collect();
        if values.iter().any(|v| *v != values[0]) {
            found.problems.push(format!(
                "{what} differs between members ({}): haop's inventory has one",
                values.join(", ")
            ));
        }
    }
    for f in &found.members {
        if https_port(&f.client_url).is_none() {
            found.problems.push(format!(
                "{}: --advertise-client-urls {} has no https port",
                f.seed.host, f.client_url
            ));
        }
    }
    found
}

/// The client and peer ports of a found member.
pub fn ports(m: &FoundMember) -> (u16, u16) {
    let client = https_port(&m.client_url).unwrap_or(crate::inventory::DEFAULT_CLIENT_PORT);
    let peer = m
        .command
        .flags
        .get("listen-peer-urls")
        .and_then(|v| v.split(',').find_map(https_port))
        .unwrap_or(crate::inventory::DEFAULT_PEER_PORT);
    (client, peer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_keys_next_to_a_ca() {
        assert_eq!(
            ca_key_candidates("/etc/kubernetes/pki/etcd/ca.pem"),
            [
                "/etc/kubernetes/pki/etcd/ca-key.pem",
                "/etc/kubernetes/pki/etcd/ca.key"
            ]
        );
    }

    #[test]
    fn reads_the_seeds_keepalived_conf() {
        let conf = "global_defs {\n  router_id LVS_DEVEL\n}\nvrrp_instance VI_1 {\n    state MASTER\n    interface eth0\n    virtual_router_id 51\n    priority 101\n    virtual_ipaddress {\n        10.77.3.10\n    }\n}\n";
        assert_eq!(
            parse_keepalived(conf),
            Some(FoundVip {
                address: "10.77.3.10".parse().unwrap(),
                interface: "eth0".into(),
                router_id: 51
            })
        );
        assert_eq!(parse_keepalived("vrrp_instance VI_1 {\n}\n"), None);
        assert_eq!(https_port("https://10.0.0.1:2379"), Some(2379));
    }
}
