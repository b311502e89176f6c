//! From the file format to a validated [`Inventory`], finding every problem in one pass.
//!
//! Each field is checked on its own first, then the hosts against each other (names,
//! addresses, endpoints) and the settings against the hosts (etcd count, VIP and masters'
//! subnet, Kubernetes and masters, subnets and addresses). A field that failed its own check
//! is left out of the checks that need it, so one typo gives one problem, not a cascade. The
//! inventory is built only when no error was found; warnings come along with it.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::path::{Component, Path, PathBuf};
use std::str::FromStr;

use super::error::{Problem, Severity};
use super::model::{
    subnet_of, EtcdBinary, EtcdSettings, Host, Inventory, KubernetesSettings, PkiSettings,
    Retention, SnapshotSettings, Vip, DEFAULT_API_PORT, DEFAULT_CLIENT_PORT, DEFAULT_PEER_PORT,
    DEFAULT_ROUTER_ID, DEFAULT_VIP_INTERFACE,
};
use super::raw::{
    RawBinary, RawEtcd, RawHost, RawInventory, RawKubernetes, RawPki, RawRetention, RawSnapshots,
    RawVip,
};
use super::types::{
    max_prefix, AgentEndpoint, Cidr, ClusterName, Fqdn, HostName, InterfaceName, Lifetime, Role,
    Sha256Hex, Span, Version,
};
use crate::pki::KeyAlgorithm;

/// etcd flags that haop sets itself; `etcd.extra_flags` may not repeat or override them.
const MANAGED_ETCD_FLAGS: &[&str] = &[
    "name",
    "data-dir",
    "listen-client-urls",
    "advertise-client-urls",
    "listen-peer-urls",
    "initial-advertise-peer-urls",
    "initial-cluster",
    "initial-cluster-state",
    "initial-cluster-token",
    "cert-file",
    "key-file",
    "trusted-ca-file",
    "client-cert-auth",
    "peer-cert-file",
    "peer-key-file",
    "peer-trusted-ca-file",
    "peer-client-cert-auth",
    "auto-tls",
    "peer-auto-tls",
    "config-file",
];

const ADDRESS_HINT: &str =
    "write an IPv4 or IPv6 address, optionally with the prefix length of its network: \
     10.0.0.5 or 10.0.0.5/24";
const LABEL_HINT: &str =
    "use an RFC 1123 label: 1 to 63 lowercase letters, digits and '-', starting and ending \
     with a letter or digit (it becomes the etcd member and Kubernetes node name)";

/// Checks `raw` (read from `file`); the inventory when no problem is an error, and every
/// problem found: each field's own checks in file order, then the checks across fields.
pub(crate) fn validate(raw: RawInventory, file: &str) -> (Option<Inventory>, Vec<Problem>) {
    let mut c = Checker {
        file,
        problems: Vec::new(),
    };
    let inventory = c.inventory(raw);
    let has_errors = c.problems.iter().any(Problem::is_error);
    match inventory {
        Some(inv) if !has_errors => (Some(inv), c.problems),
        Some(_) => (None, c.problems),
        None => {
            if !has_errors {
                // Every path that leaves a value out records an error; this is a bug guard.
                c.error(
                    "(inventory)",
                    "the inventory could not be built although no error was found",
                    "this is a bug in haop; please report it with the file",
                );
            }
            (None, c.problems)
        }
    }
}

struct Checker<'a> {
    file: &'a str,
    problems: Vec<Problem>,
}

/// A host as far as its fields are valid.
struct PartHost {
    name: Option<HostName>,
    address: Option<(IpAddr, Option<u8>)>,
    roles: Vec<Role>,
    /// Every role given is known (the counts of etcd members and masters are certain).
    roles_ok: bool,
    agent: Option<AgentEndpoint>,
    fqdn: Option<Option<Fqdn>>,
}

impl PartHost {
    fn label(&self, i: usize) -> String {
        match &self.name {
            Some(n) => format!("hosts[{i}] ({n})"),
            None => format!("hosts[{i}]"),
        }
    }

    fn build(self) -> Option<Host> {
        let (address, prefix_len) = self.address?;
        Some(Host {
            name: self.name?,
            address,
            prefix_len,
            roles: self.roles,
            agent: self.agent?,
            fqdn: self.fqdn?,
        })
    }
}

impl Checker<'_> {
    fn push(&mut self, severity: Severity, field: &str, message: String, hint: String) {
        self.problems.push(Problem {
            severity,
            file: self.file.to_string(),
            field: field.to_string(),
            message,
            hint,
        });
    }

    fn error(&mut self, field: &str, message: impl Into<String>, hint: impl Into<String>) {
        self.push(Severity::Error, field, message.into(), hint.into());
    }

    fn warning(&mut self, field: &str, message: impl Into<String>, hint: impl Into<String>) {
        self.push(Severity::Warning, field, message.into(), hint.into());
    }

    fn inventory(&mut self, raw: RawInventory) -> Option<Inventory> {
        let cluster = self.cluster(raw.cluster.as_deref());
        if raw.hosts.is_empty() {
            self.error(
                "hosts",
                "the inventory lists no hosts",
                "add hosts with name, address and roles, e.g. \
                 `- {name: etcd1, address: 10.0.0.11, roles: [etcd]}`",
            );
        }
        let hosts: Vec<PartHost> = raw
            .hosts
            .iter()
            .enumerate()
            .map(|(i, h)| self.host(i, h))
            .collect();
        self.unique_hosts(&hosts);
        let etcd = self.etcd(&raw.etcd);
        if let Some(e) = &etcd {
            self.agent_ports(&hosts, e);
        }
        // With an unknown role reported, which hosts are etcd members or masters is not
        // known: the checks that count them would only repeat that mistake.
        let roles_known = hosts.iter().all(|h| h.roles_ok);
        if !raw.hosts.is_empty() && roles_known {
            self.etcd_count(&hosts, raw.allow_even_etcd, raw.allow_single_etcd);
        }
        let vip = raw.vip.as_ref().and_then(|v| self.vip(v, &hosts));
        if roles_known {
            self.vip_needed(raw.vip.is_some(), &hosts);
        }
        let kubernetes = self.kubernetes(&raw.kubernetes, &hosts, vip.as_ref(), roles_known);
        if let (Some(k), Some(e)) = (&kubernetes, &etcd) {
            self.api_port_free(&hosts, k, e);
        }
        let pki = self.pki(&raw.pki);

        let hosts = hosts
            .into_iter()
            .map(PartHost::build)
            .collect::<Option<Vec<Host>>>()?;
        Some(Inventory {
            cluster: cluster?,
            hosts,
            etcd: etcd?,
            vip: match raw.vip {
                Some(_) => Some(vip?),
                None => None,
            },
            kubernetes: kubernetes?,
            pki: pki?,
            allow_even_etcd: raw.allow_even_etcd,
            allow_single_etcd: raw.allow_single_etcd,
        })
    }

    fn cluster(&mut self, raw: Option<&str>) -> Option<ClusterName> {
        let Some(s) = raw else {
            self.error(
                "cluster",
                "missing: the inventory has no cluster name",
                "add `cluster: NAME` at the top, e.g. `cluster: prod`",
            );
            return None;
        };
        match ClusterName::try_from(s) {
            Ok(n) => Some(n),
            Err(reason) => {
                self.error(
                    "cluster",
                    format!("{s:?} is not a valid cluster name: it {reason}"),
                    "use an RFC 1123 label: 1 to 63 lowercase letters, digits and '-'",
                );
                None
            }
        }
    }

    fn host(&mut self, i: usize, raw: &RawHost) -> PartHost {
        let field = |f: &str| format!("hosts[{i}].{f}");
        let name = match raw.name.as_deref() {
            None => {
                self.error(
                    &field("name"),
                    "missing: every host needs a name",
                    "add `name: etcd1` (unique, an RFC 1123 label)",
                );
                None
            }
            Some(s) => match HostName::try_from(s) {
                Ok(n) => Some(n),
                Err(reason) => {
                    self.error(
                        &field("name"),
                        format!("{s:?} is not a valid host name: it {reason}"),
                        LABEL_HINT,
                    );
                    None
                }
            },
        };
        let address = match raw.address.as_deref() {
            None => {
                self.error(
                    &field("address"),
                    "missing: every host needs an address",
                    "add `address: 10.0.0.11` (the address the other hosts reach it at)",
                );
                None
            }
            Some(s) => match parse_host_address(s) {
                Ok(a) => Some(a),
                Err((reason, hint)) => {
                    self.error(&field("address"), format!("{s:?} {reason}"), hint);
                    None
                }
            },
        };
        let problems_before = self.problems.len();
        let roles = self.roles(i, &raw.roles);
        let roles_ok = !self.problems[problems_before..]
            .iter()
            .any(Problem::is_error);
        let agent = match raw.agent.as_deref() {
            None => address.map(|(a, _)| AgentEndpoint::for_address(a)),
            Some(s) => match AgentEndpoint::from_str(s) {
                Ok(e) => Some(e),
                Err(reason) => {
                    self.error(
                        &field("agent"),
                        format!("{s:?} is not a valid agent endpoint: it {reason}"),
                        "write https://ADDRESS:7443, or leave `agent` out for that default",
                    );
                    None
                }
            },
        };
        let fqdn = match raw.fqdn.as_deref() {
            None => Some(None),
            Some(s) => match Fqdn::try_from(s) {
                Ok(f) => Some(Some(f)),
                Err(reason) => {
                    self.error(
                        &field("fqdn"),
                        format!("{s:?} is not a valid FQDN: it {reason}"),
                        "write the host's full DNS name in lowercase, e.g. etcd1.example.com, \
                         or leave `fqdn` out",
                    );
                    None
                }
            },
        };
        PartHost {
            name,
            address,
            roles,
            roles_ok,
            agent,
            fqdn,
        }
    }

    fn roles(&mut self, i: usize, raw: &[String]) -> Vec<Role> {
        if raw.is_empty() {
            self.error(
                &format!("hosts[{i}].roles"),
                "the host has no roles",
                "add `roles: [etcd]`, `[master]`, `[worker]` or several, e.g. `[etcd, master]`",
            );
        }
        let mut roles = Vec::new();
        for (j, s) in raw.iter().enumerate() {
            let field = format!("hosts[{i}].roles[{j}]");
            match Role::from_str(s) {
                Ok(r) if roles.contains(&r) => self.warning(
                    &field,
                    format!("role {r} is listed twice"),
                    "list each role once",
                ),
                Ok(r) => roles.push(r),
                Err(message) => {
                    let names: Vec<&str> = Role::ALL.iter().map(|r| r.as_str()).collect();
                    let hint = match closest(&s.to_lowercase(), &names) {
                        Some(n) => format!("did you mean {n:?}?"),
                        None if matches!(s.as_str(), "control-plane" | "controlplane") => {
                            "a Kubernetes control-plane node has the role master".to_string()
                        }
                        None => "roles are etcd (an etcd member), master (a Kubernetes \
                                 control-plane node) and worker (a Kubernetes worker node)"
                            .to_string(),
                    };
                    self.error(&field, message, hint);
                }
            }
        }
        roles
    }

    fn unique_hosts(&mut self, hosts: &[PartHost]) {
        let mut names: HashMap<&str, usize> = HashMap::new();
        let mut addresses: HashMap<IpAddr, usize> = HashMap::new();
        let mut agents: HashMap<&str, usize> = HashMap::new();
        let mut fqdns: HashMap<&str, usize> = HashMap::new();
        for (i, h) in hosts.iter().enumerate() {
            if let Some(n) = &h.name {
                if let Some(first) = seen_before(&mut names, n.as_str(), i) {
                    self.error(
                        &format!("hosts[{i}].name"),
                        format!(
                            "duplicate host name {:?}: hosts[{first}] has it too",
                            n.as_str()
                        ),
                        "host names must be unique: each is an etcd member and a Kubernetes \
                         node name",
                    );
                }
            }
            let mut address_taken = false;
            if let Some((a, _)) = h.address {
                if let Some(first) = seen_before(&mut addresses, a, i) {
                    address_taken = true;
                    self.error(
                        &format!("hosts[{i}].address"),
                        format!(
                            "duplicate address {a}: it is also the address of {}",
                            hosts[first].label(first)
                        ),
                        "each host needs its own address; check for a copy-paste slip",
                    );
                }
            }
            // With a duplicate address, a duplicate (default) endpoint is the same mistake.
            if let Some(e) = h.agent.as_ref().filter(|_| !address_taken) {
                if let Some(first) = seen_before(&mut agents, e.as_str(), i) {
                    self.error(
                        &format!("hosts[{i}].agent"),
                        format!(
                            "duplicate agent endpoint {e}: it is also the endpoint of {}",
                            hosts[first].label(first)
                        ),
                        "each host has its own agent; leave `agent` out to use \
                         https://ADDRESS:7443",
                    );
                }
            }
            if let Some(Some(f)) = &h.fqdn {
                if let Some(first) = seen_before(&mut fqdns, f.as_str(), i) {
                    self.error(
                        &format!("hosts[{i}].fqdn"),
                        format!(
                            "duplicate FQDN {f}: it is also the FQDN of {}",
                            hosts[first].label(first)
                        ),
                        "each host needs its own DNS name",
                    );
                }
            }
        }
    }

    /// An agent cannot listen on a port that etcd needs on the same host.
    fn agent_ports(&mut self, hosts: &[PartHost], etcd: &EtcdSettings) {
        for (i, h) in hosts.iter().enumerate() {
            let Some(agent) = &h.agent else { continue };
            if !h.roles.contains(&Role::Etcd) {
                continue;
            }
            if [etcd.client_port, etcd.peer_port].contains(&agent.port()) {
                self.error(
                    &format!("hosts[{i}].agent"),
                    format!(
                        "agent port {} is one of etcd's ports ({} and {}) on this etcd host",
                        agent.port(),
                        etcd.client_port,
                        etcd.peer_port
                    ),
                    "let the agent listen on another port (7443 by default)",
                );
            }
        }
    }

    /// On a master, the API server's port is its own: not the agent's, and not etcd's when the
    /// master is also an etcd host.
    fn api_port_free(&mut self, hosts: &[PartHost], k: &KubernetesSettings, etcd: &EtcdSettings) {
        if !k.enabled {
            return;
        }
        let port = k.api_port;
        for (i, h) in hosts.iter().enumerate() {
            if !h.roles.contains(&Role::Master) {
                continue;
            }
            if h.agent.as_ref().is_some_and(|a| a.port() == port) {
                self.error(
                    &format!("hosts[{i}].agent"),
                    format!(
                        "agent port {port} is the API server's port (kubernetes.api_port) on \
                         this master"
                    ),
                    "let the agent listen on another port (7443 by default), or change \
                     kubernetes.api_port",
                );
            }
            if h.roles.contains(&Role::Etcd) && [etcd.client_port, etcd.peer_port].contains(&port) {
                self.error(
                    "kubernetes.api_port",
                    format!(
                        "{port} is one of etcd's ports ({} and {}) on {}, an etcd host and \
                         a master",
                        etcd.client_port,
                        etcd.peer_port,
                        h.name.as_ref().map(|n| n.as_str()).unwrap_or("a host")
                    ),
                    "the API server needs its own port (6443 by default)",
                );
            }
        }
    }

    fn etcd_count(&mut self, hosts: &[PartHost], allow_even: bool, allow_single: bool) {
        let names = |role: Role| -> Vec<String> {
            hosts
                .iter()
                .enumerate()
                .filter(|(_, h)| h.roles.contains(&role))
                .map(|(i, h)| match &h.name {
                    Some(n) => n.to_string(),
                    None => format!("hosts[{i}]"),
                })
                .collect()
        };
        let etcd = names(Role::Etcd);
        let masters = names(Role::Master);
        let n = etcd.len();
        if n == 0 {
            if masters.is_empty() {
                self.error(
                    "hosts",
                    "no host has the role etcd",
                    "add the role etcd to three hosts (or to one, with `allow_single_etcd: \
                     true`, for a test cluster)",
                );
            } else {
                self.error(
                    "hosts",
                    format!(
                        "no host has the role etcd, so the masters ({}) have no etcd endpoints \
                         to use",
                        masters.join(", ")
                    ),
                    "haop runs etcd outside Kubernetes (external etcd): add the role etcd to \
                     three hosts; they may be the masters themselves (`roles: [etcd, master]`)",
                );
            }
        } else if n == 1 && !allow_single {
            self.warning(
                "hosts",
                format!(
                    "only one etcd member ({}): losing that host loses the cluster's data and \
                     availability",
                    etcd.join(", ")
                ),
                "use three etcd hosts, or set `allow_single_etcd: true` for a test cluster",
            );
        } else if n.is_multiple_of(2) && !allow_even {
            let quorum = n / 2 + 1;
            let survives = match n - quorum {
                0 => "no failed member".to_string(),
                1 => "one failed member".to_string(),
                k => format!("{k} failed members"),
            };
            self.warning(
                "hosts",
                format!(
                    "{n} etcd members ({}): the quorum is {quorum}, so the cluster survives {} \
                     and no more than with {} {}",
                    etcd.join(", "),
                    survives,
                    n - 1,
                    if n - 1 == 1 { "member" } else { "members" }
                ),
                format!(
                    "use an odd count ({} or {}), or set `allow_even_etcd: true` (e.g. during \
                     a migration)",
                    n - 1,
                    n + 1
                ),
            );
        }
    }

    fn etcd(&mut self, raw: &RawEtcd) -> Option<EtcdSettings> {
        let binary = match &raw.binary {
            None => Some(EtcdSettings::default().binary),
            Some(b) => self.binary(b),
        };
        let data_dir = match raw.data_dir.as_deref() {
            None => Some(EtcdSettings::default().data_dir),
            Some(s) => self.host_path("etcd.data_dir", s, "a directory such as /var/lib/etcd"),
        };
        let client_port = self.port("etcd.client_port", raw.client_port, DEFAULT_CLIENT_PORT);
        let peer_port = self.port("etcd.peer_port", raw.peer_port, DEFAULT_PEER_PORT);
        if let (Some(c), Some(p)) = (client_port, peer_port) {
            if c == p {
                self.error(
                    "etcd.peer_port",
                    format!("the peer port is the client port ({p})"),
                    "etcd needs two ports; the defaults are 2379 (client) and 2380 (peer)",
                );
            }
        }
        let mut flags_ok = true;
        for (k, flag) in raw.extra_flags.iter().enumerate() {
            flags_ok &= self.extra_flag(k, flag);
        }
        let version = match raw.version.as_deref() {
            None => Some(None),
            Some(s) => match Version::from_str(s) {
                Ok(v) => Some(Some(v)),
                Err(reason) => {
                    self.error(
                        "etcd.version",
                        format!("{s:?} is not a version: {reason}"),
                        "write the etcd version you expect, e.g. \"3.5.12\", or leave it out",
                    );
                    None
                }
            },
        };
        let token = match raw.token.as_deref() {
            None => Some(None),
            Some(s) => {
                if s.is_empty()
                    || s.len() > 128
                    || s.chars().any(|c| !c.is_ascii_graphic() || c == ',')
                {
                    self.error(
                        "etcd.token",
                        format!("{s:?} is not a usable cluster token"),
                        "use 1 to 128 printable characters without spaces or commas, or leave \
                         `token` out to use CLUSTER-etcd",
                    );
                    None
                } else {
                    Some(Some(s.to_string()))
                }
            }
        };
        let extra_flags = flags_ok.then(|| raw.extra_flags.clone());
        let retention = self.retention(raw.retention.as_ref());
        let catch_up_stall = self.duration(
            "etcd.catch_up_stall",
            raw.catch_up_stall.as_deref(),
            super::model::DEFAULT_CATCH_UP_STALL,
            "how long a member catching up may show no progress, such as 2m or 10m",
            false,
        );
        let snapshots = self.snapshots(raw.snapshots.as_ref());
        Some(EtcdSettings {
            binary: binary?,
            data_dir: data_dir?,
            client_port: client_port?,
            peer_port: peer_port?,
            extra_flags: extra_flags?,
            version: version?,
            token: token?,
            retention: retention?,
            catch_up_stall: catch_up_stall?,
            snapshots: snapshots?,
        })
    }

    fn snapshots(&mut self, raw: Option<&RawSnapshots>) -> Option<SnapshotSettings> {
        let d = SnapshotSettings::default();
        let Some(raw) = raw else {
            return Some(d);
        };
        let interval = self.duration(
            "etcd.snapshots.interval",
            raw.interval.as_deref(),
            d.interval.as_str(),
            "how often `haop etcd snapshot schedule` takes one, such as 1h or 30m",
            false,
        );
        let copies = match raw.copies {
            None => Some(d.copies),
            Some(n) if (0..=100).contains(&n) => Some(n as u32),
            Some(n) => {
                self.error(
                    "etcd.snapshots.copies",
                    format!("{n} is out of range"),
                    "hosts that keep a copy of each snapshot, from 0 (none) to 100",
                );
                None
            }
        };
        let stale_after = self.duration(
            "etcd.snapshots.stale_after",
            raw.stale_after.as_deref(),
            d.stale_after.as_str(),
            "an age such as 25h after which status says the newest verified snapshot is stale \
             (0s: never)",
            true,
        );
        if let (Some(i), Some(s)) = (&interval, &stale_after) {
            if !s.duration().is_zero() && s.duration() < i.duration() {
                self.warning(
                    "etcd.snapshots.stale_after",
                    format!(
                        "{} is shorter than the interval {}: status will call every snapshot \
                         stale before the next one is taken",
                        s.as_str(),
                        i.as_str()
                    ),
                    "make stale_after longer than interval (about a day more)",
                );
            }
        }
        let reuse = self.duration(
            "etcd.snapshots.reuse_for_repairs",
            raw.reuse_for_repairs.as_deref(),
            d.reuse_for_repairs.as_str(),
            "the age up to which a repair uses the newest verified snapshot instead of taking \
             one, such as 15m (0s: always take one)",
            true,
        );
        Some(SnapshotSettings {
            interval: interval?,
            copies: copies?,
            stale_after: stale_after?,
            reuse_for_repairs: reuse?,
        })
    }

    fn retention(&mut self, raw: Option<&RawRetention>) -> Option<Retention> {
        let d = Retention::default();
        let Some(raw) = raw else {
            return Some(d);
        };
        let count =
            |v: &mut Self, field: &str, value: Option<i64>, default: u32, min: i64| match value {
                None => Some(default),
                Some(n) if n >= min && n <= 10_000 => Some(n as u32),
                Some(n) => {
                    v.error(
                        field,
                        format!("{n} is out of range"),
                        format!("a count from {min} to 10000"),
                    );
                    None
                }
            };
        let snapshots = count(
            self,
            "etcd.retention.snapshots",
            raw.snapshots,
            d.snapshots,
            1,
        );
        let wiped = count(
            self,
            "etcd.retention.wiped_data_dirs",
            raw.wiped_data_dirs,
            d.wiped_data_dirs,
            0,
        );
        let max_age = self.duration(
            "etcd.retention.snapshot_max_age",
            raw.snapshot_max_age.as_deref(),
            d.snapshot_max_age.as_str(),
            "an age such as 168h (the newest snapshot is kept whatever its age)",
            false,
        );
        let grace = self.duration(
            "etcd.retention.wiped_grace",
            raw.wiped_grace.as_deref(),
            d.wiped_grace.as_str(),
            "how long a moved-aside data dir is kept at least, such as 1h or 24h (0s: no grace)",
            true,
        );
        Some(Retention {
            snapshots: snapshots?,
            snapshot_max_age: max_age?,
            wiped_data_dirs: wiped?,
            wiped_grace: grace?,
        })
    }

    /// A span in hours, minutes and seconds (`2m`, `1h30m`, `0s`), or `default` when absent;
    /// zero is refused unless `zero_ok`.
    fn duration(
        &mut self,
        field: &str,
        value: Option<&str>,
        default: &str,
        hint: &str,
        zero_ok: bool,
    ) -> Option<Span> {
        let text = value.unwrap_or(default);
        match Span::from_str(text) {
            Ok(l) if zero_ok || !l.duration().is_zero() => Some(l),
            Ok(_) => {
                self.error(field, format!("{text:?} is zero"), hint.to_string());
                None
            }
            Err(reason) => {
                self.error(
                    field,
                    format!("{text:?} is not a duration: {reason}"),
                    hint.to_string(),
                );
                None
            }
        }
    }

    fn binary(&mut self, raw: &RawBinary) -> Option<EtcdBinary> {
        match (&raw.path, &raw.upload) {
            (Some(_), Some(_)) => {
                self.error(
                    "etcd.binary",
                    "gives both `path` and `upload`",
                    "keep one: `path` for a binary already on the etcd hosts, `upload` to copy \
                     one from this machine",
                );
                None
            }
            (None, None) => {
                self.error(
                    "etcd.binary",
                    "gives neither `path` nor `upload`",
                    "write `path: /usr/bin/etcd` for a binary on the hosts, or `upload: {file: \
                     ./etcd, sha256: ...}`; or leave `binary` out for /usr/bin/etcd",
                );
                None
            }
            (Some(p), None) => self
                .host_path(
                    "etcd.binary.path",
                    p,
                    "the etcd binary's path, e.g. /usr/bin/etcd",
                )
                .map(EtcdBinary::Path),
            (None, Some(u)) => {
                let file = match u.file.as_deref() {
                    None | Some("") => {
                        self.error(
                            "etcd.binary.upload.file",
                            "missing: which local file to upload",
                            "give the etcd binary on this machine, e.g. `file: ./etcd` \
                             (relative to the inventory file)",
                        );
                        None
                    }
                    Some(s) if s.chars().any(char::is_control) => {
                        self.error(
                            "etcd.binary.upload.file",
                            format!("{s:?} contains a control character"),
                            "give a plain file path",
                        );
                        None
                    }
                    Some(s) => Some(PathBuf::from(s)),
                };
                let sha256 = match u.sha256.as_deref() {
                    None => {
                        self.error(
                            "etcd.binary.upload.sha256",
                            "missing: the upload needs the file's SHA-256 digest",
                            "`sha256sum ./etcd` prints it; the agent refuses a file that \
                             does not match",
                        );
                        None
                    }
                    Some(s) => match Sha256Hex::try_from(s.trim().to_lowercase().as_str()) {
                        Ok(d) => Some(d),
                        Err(reason) => {
                            self.error(
                                "etcd.binary.upload.sha256",
                                format!("{s:?} is not a SHA-256 digest: it {reason}"),
                                "write the 64 hex digits that `sha256sum ./etcd` prints",
                            );
                            None
                        }
                    },
                };
                Some(EtcdBinary::Upload {
                    file: file?,
                    sha256: sha256?,
                })
            }
        }
    }

    fn extra_flag(&mut self, k: usize, flag: &str) -> bool {
        let field = format!("etcd.extra_flags[{k}]");
        let Some(body) = flag.strip_prefix("--") else {
            self.error(
                &field,
                format!("{flag:?} is not a flag"),
                "write each flag as --name=value, e.g. --quota-backend-bytes=8589934592",
            );
            return false;
        };
        let name = body.split('=').next().unwrap_or_default();
        if name.is_empty() || flag.chars().any(|c| c.is_whitespace() || c.is_control()) {
            self.error(
                &field,
                format!("{flag:?} is not a single flag"),
                "write one --name=value per list item, without spaces",
            );
            return false;
        }
        if MANAGED_ETCD_FLAGS.contains(&name) {
            self.error(
                &field,
                format!("--{name} is set by haop"),
                "remove it: haop sets names, URLs, the cluster and TLS flags itself (client \
                 and peer certificate authentication are always on)",
            );
            return false;
        }
        true
    }

    fn port(&mut self, field: &str, raw: Option<i64>, default: u16) -> Option<u16> {
        match raw {
            None => Some(default),
            Some(n) => match u16::try_from(n) {
                Ok(p) if p > 0 => Some(p),
                _ => {
                    self.error(
                        field,
                        format!("{n} is not a port"),
                        format!("use a number from 1 to 65535 (the default is {default})"),
                    );
                    None
                }
            },
        }
    }

    /// An absolute path on the hosts, normalized, not `/`.
    fn host_path(&mut self, field: &str, s: &str, what: &str) -> Option<PathBuf> {
        let p = Path::new(s);
        let reason = if !p.is_absolute() {
            Some("is not an absolute path")
        } else if s.chars().any(char::is_control) {
            Some("contains a control character")
        } else if p
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
        {
            Some("contains . or ..")
        } else if p.components().count() < 2 {
            Some("is the root directory")
        } else {
            None
        };
        match reason {
            None => Some(p.components().collect()),
            Some(r) => {
                self.error(
                    field,
                    format!("{s:?} {r}"),
                    format!("give an absolute path: {what}"),
                );
                None
            }
        }
    }

    fn vip(&mut self, raw: &RawVip, hosts: &[PartHost]) -> Option<Vip> {
        let address = match raw.address.as_deref() {
            None => {
                self.error(
                    "vip.address",
                    "missing: the VIP needs an address",
                    "add `address:` with a free address in the masters' subnet",
                );
                None
            }
            Some(s) if s.contains('/') => {
                self.error(
                    "vip.address",
                    format!("{s:?} has a prefix length"),
                    "write the address alone; the VIP takes the prefix of the masters' network",
                );
                None
            }
            Some(s) => match IpAddr::from_str(s) {
                Err(_) => {
                    self.error(
                        "vip.address",
                        format!("{s:?} is not an IP address"),
                        "write a free IPv4 or IPv6 address in the masters' subnet",
                    );
                    None
                }
                Ok(a) => match unusable_address(a) {
                    Some(r) => {
                        self.error(
                            "vip.address",
                            format!("{a} {r}"),
                            "write a free address in the masters' subnet",
                        );
                        None
                    }
                    None => Some(a),
                },
            },
        };
        if let Some(a) = address {
            self.vip_address(a, hosts);
        }
        let interface = match raw.interface.as_deref() {
            None => InterfaceName::try_from(DEFAULT_VIP_INTERFACE).ok(),
            Some(s) => match InterfaceName::try_from(s) {
                Ok(n) => Some(n),
                Err(reason) => {
                    self.error(
                        "vip.interface",
                        format!("{s:?} is not an interface name: it {reason}"),
                        "give the masters' interface on the VIP's network as `ip link` shows \
                         it, e.g. eth0",
                    );
                    None
                }
            },
        };
        let router_id = match raw.router_id {
            None => Some(DEFAULT_ROUTER_ID),
            Some(n) => match u8::try_from(n) {
                Ok(id) if id > 0 => Some(id),
                _ => {
                    self.error(
                        "vip.router_id",
                        format!("{n} is not a VRRP router id"),
                        "use a number from 1 to 255, unique on the masters' network (the \
                         default is 51)",
                    );
                    None
                }
            },
        };
        Some(Vip {
            address: address?,
            interface: interface?,
            router_id: router_id?,
        })
    }

    fn vip_address(&mut self, vip: IpAddr, hosts: &[PartHost]) {
        if let Some((i, h)) = hosts
            .iter()
            .enumerate()
            .find(|(_, h)| h.address.map(|(a, _)| a) == Some(vip))
        {
            self.error(
                "vip.address",
                format!("{vip} is also the address of {}", h.label(i)),
                "the VIP must be a free address that no host has: keepalived moves it between \
                 the masters",
            );
            return;
        }
        let mut outside = Vec::new();
        let mut assumed = Vec::new();
        for (i, h) in hosts.iter().enumerate() {
            let Some((addr, prefix)) = h.address else {
                continue;
            };
            if !h.roles.contains(&Role::Master) {
                continue;
            }
            let (subnet, was_assumed) = subnet_of(addr, prefix);
            if !subnet.contains(vip) {
                let name = h
                    .name
                    .as_ref()
                    .map_or(format!("hosts[{i}]"), |n| n.to_string());
                outside.push(format!("{name} ({subnet})"));
                if was_assumed {
                    assumed.push((name.clone(), addr));
                }
            }
        }
        if outside.is_empty() {
            return;
        }
        let mut hint = "keepalived moves the VIP between masters on one network: choose a free \
                        address in the masters' subnet"
            .to_string();
        if let Some((_, example)) = assumed.first() {
            let names: Vec<&str> = assumed.iter().map(|(n, _)| n.as_str()).collect();
            hint.push_str(&format!(
                "; no prefix length is given for {}, so /24 (IPv6: /64) was assumed: if the \
                 network is larger, write each address with its prefix length, as in \
                 `address: {example}/PREFIX`",
                names.join(", "),
            ));
        }
        self.error(
            "vip.address",
            format!(
                "{vip} is outside the subnet of master {}",
                outside.join(", ")
            ),
            hint,
        );
    }

    fn vip_needed(&mut self, has_vip: bool, hosts: &[PartHost]) {
        let masters: Vec<String> = hosts
            .iter()
            .enumerate()
            .filter(|(_, h)| h.roles.contains(&Role::Master))
            .map(|(i, h)| {
                h.name
                    .as_ref()
                    .map_or(format!("hosts[{i}]"), |n| n.to_string())
            })
            .collect();
        if !has_vip && masters.len() >= 2 {
            self.error(
                "vip",
                format!(
                    "{} masters ({}) need a VIP in front of their API servers",
                    masters.len(),
                    masters.join(", ")
                ),
                "add `vip: {address: A.B.C.D}` with a free address in the masters' subnet; \
                 keepalived keeps it on one healthy master",
            );
        }
        if has_vip && masters.is_empty() {
            self.warning(
                "vip",
                "no host has the role master, so the VIP is not used",
                "remove `vip`, or add the role master to the hosts that should hold it",
            );
        }
    }

    fn kubernetes(
        &mut self,
        raw: &RawKubernetes,
        hosts: &[PartHost],
        vip: Option<&Vip>,
        roles_known: bool,
    ) -> Option<KubernetesSettings> {
        let enabled = raw.enabled.unwrap_or(true);
        if enabled && roles_known && !hosts.iter().any(|h| h.roles.contains(&Role::Master)) {
            self.error(
                "kubernetes.enabled",
                "Kubernetes is enabled but no host has the role master",
                "add the role master to a host, or set `kubernetes.enabled: false` to set up \
                 etcd only",
            );
        }
        let version = match raw.version.as_deref() {
            None => Some(None),
            Some(s) => match Version::from_str(s) {
                Ok(v) if v.patch().is_some() => Some(Some(v)),
                Ok(_) => {
                    self.error(
                        "kubernetes.version",
                        format!("{s:?} has no patch version"),
                        "write the full version kubeadm installs, e.g. \"1.29.3\"",
                    );
                    None
                }
                Err(reason) => {
                    self.error(
                        "kubernetes.version",
                        format!("{s:?} is not a version: {reason}"),
                        "write the Kubernetes version, e.g. \"1.29.3\"",
                    );
                    None
                }
            },
        };
        let pod_subnet = match raw.pod_subnet.as_deref() {
            None => Some(KubernetesSettings::default().pod_subnet),
            Some(s) => self.network("kubernetes.pod_subnet", s),
        };
        let service_subnet = match raw.service_subnet.as_deref() {
            None => Some(None),
            Some(s) => self.network("kubernetes.service_subnet", s).map(Some),
        };
        if let (Some(p), Some(Some(s))) = (pod_subnet, service_subnet) {
            if p.overlaps(&s) {
                self.error(
                    "kubernetes.service_subnet",
                    format!("{s} overlaps the pod subnet {p}"),
                    "pods and services need separate ranges (kubeadm's default service subnet \
                     is 10.96.0.0/12)",
                );
            }
        }
        if enabled {
            let subnets = [
                ("kubernetes.pod_subnet", pod_subnet),
                ("kubernetes.service_subnet", service_subnet.flatten()),
            ];
            for (field, subnet) in subnets {
                if let Some(net) = subnet {
                    self.subnet_clear_of_hosts(field, net, hosts, vip);
                }
            }
        }
        let cni_manifest = match raw.cni_manifest.as_deref() {
            None => Some(None),
            Some(s) if s.is_empty() || s.chars().any(char::is_control) => {
                self.error(
                    "kubernetes.cni_manifest",
                    format!("{s:?} is not a file path"),
                    "give the CNI manifest on this machine, e.g. ./calico.yaml (relative to \
                     the inventory file), or leave it out",
                );
                None
            }
            Some(s) => Some(Some(PathBuf::from(s))),
        };
        let api_port = self.port("kubernetes.api_port", raw.api_port, DEFAULT_API_PORT);
        Some(KubernetesSettings {
            enabled,
            version: version?,
            pod_subnet: pod_subnet?,
            service_subnet: service_subnet?,
            cni_manifest: cni_manifest?,
            api_port: api_port?,
        })
    }

    fn network(&mut self, field: &str, s: &str) -> Option<Cidr> {
        match Cidr::from_str(s) {
            Err(reason) => {
                self.error(
                    field,
                    format!("{s:?} is not a CIDR: {reason}"),
                    "write a network as ADDRESS/PREFIX, e.g. 10.30.0.0/16",
                );
                None
            }
            Ok(c) if !c.is_network() => {
                self.error(
                    field,
                    format!("{s:?} has host bits set"),
                    format!("did you mean {}?", c.network()),
                );
                None
            }
            Ok(c) => Some(c),
        }
    }

    /// Pod and service addresses are routed inside the cluster: a host or the VIP among them
    /// becomes unreachable from pods.
    fn subnet_clear_of_hosts(
        &mut self,
        field: &str,
        net: Cidr,
        hosts: &[PartHost],
        vip: Option<&Vip>,
    ) {
        let mut inside: Vec<String> = hosts
            .iter()
            .enumerate()
            .filter_map(|(i, h)| {
                let (a, _) = h.address?;
                net.contains(a).then(|| format!("{} {a}", h.label(i)))
            })
            .collect();
        if let Some(v) = vip.filter(|v| net.contains(v.address)) {
            inside.push(format!("the VIP {}", v.address));
        }
        if !inside.is_empty() {
            self.error(
                field,
                format!("{net} contains the address of {}", inside.join(", ")),
                "choose a range that no host network uses; pods could not reach those hosts",
            );
        }
    }

    fn pki(&mut self, raw: &RawPki) -> Option<PkiSettings> {
        let key_algorithm = match raw.key_algorithm.as_deref() {
            None => Some(KeyAlgorithm::default()),
            Some(s) => match KeyAlgorithm::from_str(s) {
                Ok(a) => Some(a),
                Err(e) => {
                    self.error(
                        "pki.key_algorithm",
                        e.to_string(),
                        "ecdsa-p256 (the default) or rsa-2048",
                    );
                    None
                }
            },
        };
        let lifetime = match raw.lifetime.as_deref() {
            None => Some(Lifetime::default()),
            Some(s) => match Lifetime::from_str(s) {
                Ok(l) => Some(l),
                Err(message) => {
                    self.error(
                        "pki.lifetime",
                        message,
                        "write hours as cfssl does, e.g. 43800h (five years, the default)",
                    );
                    None
                }
            },
        };
        Some(PkiSettings {
            key_algorithm: key_algorithm?,
            lifetime: lifetime?,
        })
    }
}

/// The index that had `key` first, when that was not `i`; records `i` otherwise.
fn seen_before<K: Hash + Eq>(seen: &mut HashMap<K, usize>, key: K, i: usize) -> Option<usize> {
    let first = *seen.entry(key).or_insert(i);
    (first != i).then_some(first)
}

/// `10.0.0.5` or `10.0.0.5/24`; on failure, the reason (to follow the quoted value) and a hint.
fn parse_host_address(s: &str) -> Result<(IpAddr, Option<u8>), (String, String)> {
    let (addr_text, prefix_text) = match s.split_once('/') {
        Some((a, p)) => (a, Some(p)),
        None => (s, None),
    };
    let addr = IpAddr::from_str(addr_text.trim())
        .map_err(|_| ("is not an IP address".to_string(), ADDRESS_HINT.to_string()))?;
    if let Some(r) = unusable_address(addr) {
        return Err((
            r.to_string(),
            "give the address the other hosts reach this host at".to_string(),
        ));
    }
    let prefix = match prefix_text {
        None => None,
        Some(p) => {
            let max = max_prefix(addr);
            match p.parse::<u8>() {
                Ok(n) if (1..=max).contains(&n) => Some(n),
                _ => {
                    return Err((
                        format!("has an invalid prefix length {p:?}"),
                        format!("the prefix length is a number from 1 to {max}, e.g. /24"),
                    ))
                }
            }
        }
    };
    Ok((addr, prefix))
}

/// Why other hosts could not use `a`, if so.
fn unusable_address(a: IpAddr) -> Option<&'static str> {
    if a.is_unspecified() {
        Some("is the unspecified address")
    } else if a.is_loopback() {
        Some("is a loopback address that other hosts cannot reach")
    } else if a.is_multicast() {
        Some("is a multicast address")
    } else if a == IpAddr::from([255, 255, 255, 255]) {
        Some("is the broadcast address")
    } else {
        None
    }
}

/// The candidate nearest to `word` when it is a plausible typo (edit distance at most 2).
pub(crate) fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(d, c)| *d <= 2 && *d < c.len())
        .min_by_key(|(d, _)| *d)
        .map(|(_, c)| c)
}

fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut cur = vec![i + 1];
        for (j, cb) in b.iter().enumerate() {
            let cost = usize::from(ca != *cb);
            cur.push((prev[j] + cost).min(prev[j + 1] + 1).min(cur[j] + 1));
        }
        prev = cur;
    }
    prev[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typos_find_their_word() {
        let roles = ["etcd", "master", "worker"];
        assert_eq!(closest("etcdd", &roles), Some("etcd"));
        assert_eq!(closest("mastr", &roles), Some("master"));
        assert_eq!(closest("wroker", &roles), Some("worker"));
        assert_eq!(closest("database", &roles), None);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("kitten", "sitting"), 3);
    }

    #[test]
    fn host_addresses() {
        assert_eq!(
            parse_host_address("10.0.0.5/24").unwrap(),
            ("10.0.0.5".parse().unwrap(), Some(24))
        );
        assert_eq!(
            parse_host_address("fd00::5").unwrap(),
            ("fd00::5".parse().unwrap(), None)
        );
        for bad in [
            "10.0.0.300",
            "10.0.0.5/33",
            "10.0.0.5/0",
            "127.0.0.1",
            "0.0.0.0",
            "",
        ] {
            assert!(parse_host_address(bad).is_err(), "{bad}");
        }
    }
}
