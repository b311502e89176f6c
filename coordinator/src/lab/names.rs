//! Lab and host names, and the addresses and interface names derived from them.
//!
//! Everything the lab hands to `ip` or to the file system is derived here from two validated
//! inputs, the lab's name and its machine-wide index, so that the limits that bite late (the
//! kernel's 15-byte interface names, a /24 per lab) are checked once, before anything is created.

use std::fmt;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::inventory::Role;

/// The port every lab agent listens on.
pub const AGENT_PORT: u16 = 7443;
/// Lab indexes are `1..=MAX_INDEX`; index `i` owns `10.77.i.0/24` and the bridge `hbr<i>`.
pub const MAX_INDEX: u8 = 250;
/// At most this many etcd hosts (addresses .11 to .39).
pub const MAX_ETCD: u8 = 29;
/// At most this many masters (addresses .41 to .69).
pub const MAX_MASTERS: u8 = 29;
/// At most this many workers (addresses .71 to .254).
pub const MAX_WORKERS: u8 = 184;

/// A lab's name: `[a-z0-9-]`, 1 to 16 characters, starting with a letter. It becomes part of
/// network namespace names and directory names, so nothing else is allowed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LabName(String);

impl LabName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for LabName {
    type Error = String;

    fn try_from(s: &str) -> Result<Self, Self::Error> {
        if s.is_empty() || s.len() > 16 {
            return Err(format!("must be 1 to 16 characters long, not {}", s.len()));
        }
        if !s.starts_with(|c: char| c.is_ascii_lowercase()) {
            return Err("must start with a lowercase letter".to_string());
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
        {
            return Err(format!("may contain only a-z, 0-9 and '-', not {c:?}"));
        }
        Ok(LabName(s.to_string()))
    }
}

impl TryFrom<String> for LabName {
    type Error = String;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        LabName::try_from(s.as_str())
    }
}

impl From<LabName> for String {
    fn from(n: LabName) -> String {
        n.0
    }
}

impl fmt::Display for LabName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Host `i` (1-based) of `role` gets `.(base + i)`.
fn address_base(role: Role) -> u8 {
    match role {
        Role::Etcd => 10,
        Role::Master => 40,
        Role::Worker => 70,
    }
}

/// How many hosts of each role a lab has, and how they start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabSpec {
    pub etcd: u8,
    pub masters: u8,
    pub workers: u8,
    /// The hosts are built by the seed's runbook as written, before the agents are installed
    /// (`haop lab up --from-seed`, see [`crate::lab::seed`]).
    #[serde(default)]
    pub from_seed: bool,
}

impl Default for LabSpec {
    /// Three etcd hosts: the smallest cluster that survives the loss of one member.
    fn default() -> Self {
        LabSpec {
            etcd: 3,
            masters: 0,
            workers: 0,
            from_seed: false,
        }
    }
}

impl LabSpec {
    /// Checks the counts against the address plan; the error says which count is wrong.
    pub fn validate(&self) -> Result<(), String> {
        if self.etcd > MAX_ETCD {
            return Err(format!("at most {MAX_ETCD} etcd hosts, not {}", self.etcd));
        }
        if self.masters > MAX_MASTERS {
            return Err(format!(
                "at most {MAX_MASTERS} masters, not {}",
                self.masters
            ));
        }
        if self.workers > MAX_WORKERS {
            return Err(format!(
                "at most {MAX_WORKERS} workers, not {}",
                self.workers
            ));
        }
        if self.etcd == 0 && self.masters == 0 && self.workers == 0 {
            return Err("a lab needs at least one host".to_string());
        }
        if self.from_seed && self.etcd == 0 {
            return Err(
                "--from-seed builds the seed's etcd cluster: it needs at least one etcd host \
                 (the seed has 3)"
                    .to_string(),
            );
        }
        Ok(())
    }

    /// The hosts in order (etcd, masters, workers), each with its role and 1-based number
    /// within the role.
    pub fn hosts(&self) -> Vec<(Role, u8)> {
        let mut out = Vec::new();
        for (role, n) in [
            (Role::Etcd, self.etcd),
            (Role::Master, self.masters),
            (Role::Worker, self.workers),
        ] {
            out.extend((1..=n).map(|i| (role, i)));
        }
        out
    }
}

/// Names and addresses of one lab, derived from its name and index.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addressing {
    index: u8,
}

impl Addressing {
    /// `index` must be in `1..=MAX_INDEX`.
    pub fn new(index: u8) -> Option<Addressing> {
        (1..=MAX_INDEX)
            .contains(&index)
            .then_some(Addressing { index })
    }

    pub fn index(&self) -> u8 {
        self.index
    }

    pub fn subnet(&self) -> String {
        format!("10.77.{}.0/24", self.index)
    }

    /// The bridge's own address, `.1`, through which this machine reaches the lab's agents.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.index, 1)
    }

    pub fn bridge(&self) -> String {
        bridge_name(self.index)
    }

    /// The host-side end of the `ordinal`-th host's veth pair (1-based over the whole lab).
    pub fn veth(&self, ordinal: usize) -> String {
        format!("hv{}x{}", self.index, ordinal)
    }

    pub fn address(&self, role: Role, number: u8) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.index, address_base(role) + number)
    }
}

/// The bridge of lab index `index`.
pub fn bridge_name(index: u8) -> String {
    format!("hbr{index}")
}

/// `etcd1`, `master2`, `worker3`.
pub fn host_name(role: Role, number: u8) -> String {
    format!("{}{}", role.as_str(), number)
}

/// The network namespace of a lab host.
pub fn namespace(lab: &LabName, host: &str) -> String {
    format!("haop-{lab}-{host}")
}

/// `https://ADDRESS:7443` (mTLS once the agent is enrolled).
pub fn agent_endpoint(address: Ipv4Addr) -> String {
    format!("https://{address}:{AGENT_PORT}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lab_names() {
        for ok in ["a", "lab1", "t-123-x", "abcdefghijklmnop"] {
            assert!(LabName::try_from(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1lab",
            "-lab",
            "Lab",
            "la_b",
            "la.b",
            "la/b",
            "abcdefghijklmnopq",
            "lab\0",
            "..",
        ] {
            assert!(LabName::try_from(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn lab_name_serde_validates() {
        assert!(serde_json::from_str::<LabName>("\"Bad\"").is_err());
        assert_eq!(
            serde_json::from_str::<LabName>("\"good\"")
                .unwrap()
                .as_str(),
            "good"
        );
    }

    #[test]
    fn interface_names_fit_the_kernel_limit() {
        let a = Addressing::new(MAX_INDEX).unwrap();
        let spec = LabSpec {
            etcd: MAX_ETCD,
            masters: MAX_MASTERS,
            workers: MAX_WORKERS,
            from_seed: false,
        };
        spec.validate().unwrap();
        let hosts = spec.hosts();
        assert!(a.bridge().len() <= 15);
        assert!(a.veth(hosts.len()).len() <= 15, "{}", a.veth(hosts.len()));
    }

    #[test]
    fn addresses_follow_the_plan() {
        let a = Addressing::new(3).unwrap();
        assert_eq!(a.subnet(), "10.77.3.0/24");
        assert_eq!(a.gateway().to_string(), "10.77.3.1");
        assert_eq!(a.address(Role::Etcd, 1).to_string(), "10.77.3.11");
        assert_eq!(a.address(Role::Master, 2).to_string(), "10.77.3.42");
        assert_eq!(a.address(Role::Worker, 3).to_string(), "10.77.3.73");
        assert_eq!(
            a.address(Role::Worker, MAX_WORKERS).to_string(),
            "10.77.3.254"
        );
        assert_eq!(a.address(Role::Etcd, MAX_ETCD).to_string(), "10.77.3.39");
        assert_eq!(
            a.address(Role::Master, MAX_MASTERS).to_string(),
            "10.77.3.69"
        );
        assert_eq!(
            agent_endpoint(a.address(Role::Etcd, 1)),
            "https://10.77.3.11:7443"
        );
        assert_eq!(a.bridge(), "hbr3");
        assert_eq!(a.veth(2), "hv3x2");
        assert!(Addressing::new(0).is_none());
        assert!(Addressing::new(251).is_none());
    }

    #[test]
    fn spec_limits() {
        assert!(LabSpec::default().validate().is_ok());
        assert!(LabSpec {
            etcd: 0,
            masters: 0,
            workers: 0,
            from_seed: false,
        }
        .validate()
        .is_err());
        assert!(LabSpec {
            etcd: 30,
            masters: 0,
            workers: 0,
            from_seed: false,
        }
        .validate()
        .is_err());
        assert!(LabSpec {
            etcd: 1,
            masters: 30,
            workers: 0,
            from_seed: false,
        }
        .validate()
        .is_err());
        assert!(LabSpec {
            etcd: 1,
            masters: 0,
            workers: 185,
            from_seed: false,
        }
        .validate()
        .is_err());
        let hosts = LabSpec {
            etcd: 2,
            masters: 1,
            workers: 1,
            from_seed: false,
        }
        .hosts();
        let names: Vec<String> = hosts.iter().map(|(r, n)| host_name(*r, *n)).collect();
        assert_eq!(names, ["etcd1", "etcd2", "master1", "worker1"]);
        // The seed's runbook builds an etcd cluster: --from-seed needs an etcd host.
        let seed = |etcd| LabSpec {
            etcd,
            masters: 2,
            workers: 0,
            from_seed: true,
        };
        assert!(seed(3).validate().is_ok());
        let e = seed(0).validate().unwrap_err();
        assert!(e.contains("--from-seed"), "{e}");
    }

    #[test]
    fn namespace_names() {
        let lab = LabName::try_from("t1").unwrap();
        assert_eq!(namespace(&lab, "etcd1"), "haop-t1-etcd1");
    }
}
