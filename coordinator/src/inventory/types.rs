//! Validated values of the inventory: names, addresses, endpoints, versions.
//!
//! Everything in an inventory that later reaches a host (a file, a unit, a certificate name, a
//! command line) is one of these types, checked once when the file is read. Each `TryFrom<&str>`
//! / `FromStr` answers a short reason on failure, without the value or the field: the validator
//! adds both, with a hint.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::str::FromStr;
use std::time::Duration;

/// The port an agent listens on when the inventory gives no endpoint.
pub const DEFAULT_AGENT_PORT: u16 = 7443;

/// Checks an RFC 1123 DNS label as Kubernetes uses it for node names: 1 to 63 characters of
/// `a-z`, `0-9` and `-`, starting and ending with a letter or digit.
fn check_label(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("is empty".to_string());
    }
    if s.len() > 63 {
        return Err(format!(
            "is {} characters long; at most 63 are allowed",
            s.len()
        ));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-'))
    {
        return Err(if c.is_ascii_uppercase() {
            "contains an uppercase letter; only lowercase letters are allowed".to_string()
        } else {
            format!("contains {c:?}; only a-z, 0-9 and '-' are allowed")
        });
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err("must start and end with a letter or a digit".to_string());
    }
    Ok(())
}

macro_rules! string_newtype {
    ($(#[$doc:meta])* $name:ident, $check:expr) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<&str> for $name {
            type Error = String;

            fn try_from(s: &str) -> Result<Self, String> {
                let check: fn(&str) -> Result<(), String> = $check;
                check(s)?;
                Ok($name(s.to_string()))
            }
        }

        impl FromStr for $name {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, String> {
                $name::try_from(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

string_newtype!(
    /// A host's name: an RFC 1123 label (`etcd1`, `master-a`). It becomes the etcd member name,
    /// the Kubernetes node name and a certificate name, hence the strict form.
    HostName,
    check_label
);

string_newtype!(
    /// The cluster's name, an RFC 1123 label; the default etcd cluster token derives from it.
    ClusterName,
    check_label
);

string_newtype!(
    /// A host's fully qualified DNS name (RFC 1123 subdomain with at least two labels), written
    /// to `/etc/hosts` and into the host's certificates.
    Fqdn,
    |s| {
        if s.len() > 253 {
            return Err(format!("is {} characters long; at most 253 are allowed", s.len()));
        }
        if !s.contains('.') {
            return Err("is a single label; a fully qualified name has a dot".to_string());
        }
        for label in s.split('.') {
            check_label(label).map_err(|e| format!("label {label:?} {e}"))?;
        }
        Ok(())
    }
);

string_newtype!(
    /// A Linux network interface name (what `ip link` shows): 1 to 15 bytes, no `/`, `:` or
    /// white space.
    InterfaceName,
    |s| {
        if s.is_empty() {
            return Err("is empty".to_string());
        }
        if s.len() > 15 {
            return Err(format!("is {} bytes long; Linux allows at most 15", s.len()));
        }
        if s == "." || s == ".." {
            return Err("is not a valid interface name".to_string());
        }
        if let Some(c) = s
            .chars()
            .find(|c| !c.is_ascii_graphic() || *c == '/' || *c == ':')
        {
            return Err(format!("contains {c:?}"));
        }
        Ok(())
    }
);

string_newtype!(
    /// A SHA-256 digest as 64 lowercase hex digits (uppercase input is refused by
    /// `TryFrom`; the validator lowercases first).
    Sha256Hex,
    |s| {
        if s.len() != 64 {
            return Err(format!("has {} characters; a SHA-256 digest has 64 hex digits", s.len()));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_digit() || ('a'..='f').contains(c)))
        {
            return Err(format!("contains {c:?}; only hex digits are allowed"));
        }
        Ok(())
    }
);

/// What a host is for. A host may have several roles (etcd and master stacked). The lab's
/// records and `haop lab hosts -o json` write it as `etcd`, `master`, `worker`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// An etcd member.
    Etcd,
    /// A Kubernetes control-plane node (API server, scheduler, controller manager; keepalived
    /// when there is a VIP).
    Master,
    /// A Kubernetes worker node.
    Worker,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Etcd, Role::Master, Role::Worker];

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Etcd => "etcd",
            Role::Master => "master",
            Role::Worker => "worker",
        }
    }
}

impl FromStr for Role {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Role::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| format!("unknown role {s:?}; expected etcd, master or worker"))
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An IP network in CIDR notation (`10.30.0.0/16`, `fd00::/64`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    addr: IpAddr,
    prefix: u8,
}

impl Cidr {
    /// `addr/prefix`; the prefix must fit the address family (32 or 128). Host bits may be set
    /// (`10.0.0.5/24` is a host's address with its prefix); see [`Cidr::network`].
    pub fn new(addr: IpAddr, prefix: u8) -> Result<Cidr, String> {
        let max = max_prefix(addr);
        if prefix > max {
            return Err(format!(
                "prefix length /{prefix} is longer than the {max} bits of the address"
            ));
        }
        Ok(Cidr { addr, prefix })
    }

    pub fn addr(&self) -> IpAddr {
        self.addr
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The network itself, host bits cleared: `10.0.0.5/24` -> `10.0.0.0/24`.
    pub fn network(&self) -> Cidr {
        let addr = match self.addr {
            IpAddr::V4(a) => IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask_v4(self.prefix))),
            IpAddr::V6(a) => IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask_v6(self.prefix))),
        };
        Cidr {
            addr,
            prefix: self.prefix,
        }
    }

    /// The address has no host bits set.
    pub fn is_network(&self) -> bool {
        self.network().addr == self.addr
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(n), IpAddr::V4(a)) => {
                let m = mask_v4(self.prefix);
                u32::from(n) & m == u32::from(a) & m
            }
            (IpAddr::V6(n), IpAddr::V6(a)) => {
                let m = mask_v6(self.prefix);
                u128::from(n) & m == u128::from(a) & m
            }
            _ => false,
        }
    }

    /// The two networks share at least one address.
    pub fn overlaps(&self, other: &Cidr) -> bool {
        let (wide, narrow) = if self.prefix <= other.prefix {
            (self, other)
        } else {
            (other, self)
        };
        wide.contains(narrow.addr)
    }
}

impl FromStr for Cidr {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, prefix) = s
            .split_once('/')
            .ok_or_else(|| "has no prefix length (such as /16)".to_string())?;
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("{addr:?} is not an IP address"))?;
        let prefix: u8 = prefix
            .parse()
            .map_err(|_| format!("prefix length {prefix:?} is not a number"))?;
        Cidr::new(addr, prefix)
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix)
    }
}

pub(crate) fn max_prefix(addr: IpAddr) -> u8 {
    match addr {
        IpAddr::V4(_) => 32,
        IpAddr::V6(_) => 128,
    }
}

fn mask_v4(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn mask_v6(prefix: u8) -> u128 {
    u128::MAX.checked_shl(128 - u32::from(prefix)).unwrap_or(0)
}

/// A version such as `1.29.3` or `3.5` (a leading `v` is accepted and dropped).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version {
    major: u64,
    minor: u64,
    patch: Option<u64>,
}

impl Version {
    pub fn new(major: u64, minor: u64, patch: Option<u64>) -> Version {
        Version {
            major,
            minor,
            patch,
        }
    }

    pub fn major(&self) -> u64 {
        self.major
    }

    pub fn minor(&self) -> u64 {
        self.minor
    }

    pub fn patch(&self) -> Option<u64> {
        self.patch
    }
}

impl FromStr for Version {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let bare = s.strip_prefix('v').unwrap_or(s);
        let parts: Vec<&str> = bare.split('.').collect();
        if !(2..=3).contains(&parts.len()) {
            return Err("expected MAJOR.MINOR or MAJOR.MINOR.PATCH".to_string());
        }
        let mut nums = Vec::with_capacity(3);
        for p in &parts {
            if p.is_empty() || !p.chars().all(|c| c.is_ascii_digit()) {
                return Err(format!("{p:?} is not a number"));
            }
            nums.push(
                p.parse::<u64>()
                    .map_err(|_| format!("{p:?} is too large"))?,
            );
        }
        Ok(Version {
            major: nums[0],
            minor: nums[1],
            patch: nums.get(2).copied(),
        })
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.major, self.minor)?;
        if let Some(p) = self.patch {
            write!(f, ".{p}")?;
        }
        Ok(())
    }
}

/// A certificate lifetime as cfssl writes it (`43800h`), with its parsed duration.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Lifetime {
    text: String,
    duration: Duration,
}

impl Lifetime {
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn duration(&self) -> Duration {
        self.duration
    }
}

impl FromStr for Lifetime {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let duration = crate::pki::parse_lifetime(s).map_err(|e| e.to_string())?;
        Ok(Lifetime {
            text: s.trim().to_string(),
            duration,
        })
    }
}

impl Default for Lifetime {
    /// 43800h (five years), as in the seed's `ca-config.json`.
    fn default() -> Self {
        Lifetime {
            text: "43800h".to_string(),
            duration: crate::pki::DEFAULT_LIFETIME,
        }
    }
}

impl fmt::Display for Lifetime {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// A span of time written in hours, minutes and seconds (`2m`, `1h30m`, `45s`, `0s`), with its
/// parsed duration: waits and retention ages in the inventory.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Span {
    text: String,
    duration: Duration,
}

impl Span {
    pub fn as_str(&self) -> &str {
        &self.text
    }

    pub fn duration(&self) -> Duration {
        self.duration
    }
}

impl FromStr for Span {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let text = s.trim();
        if text.is_empty() {
            return Err("empty".into());
        }
        let mut total: u64 = 0;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !c.is_ascii_digit())
                .unwrap_or(rest.len());
            if digits == 0 {
                return Err("expected a number such as 90s, 2m or 1h".into());
            }
            let n: u64 = rest[..digits]
                .parse()
                .map_err(|_| "number too large".to_string())?;
            rest = &rest[digits..];
            let unit = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let secs = match &rest[..unit] {
                "h" => 3600,
                "m" => 60,
                "s" => 1,
                "" => return Err("missing unit (h, m or s)".into()),
                _ => return Err("unknown unit (expected h, m or s)".into()),
            };
            total = n
                .checked_mul(secs)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(|| "too long".to_string())?;
            rest = &rest[unit..];
        }
        Ok(Span {
            text: text.to_string(),
            duration: Duration::from_secs(total),
        })
    }
}

impl fmt::Display for Span {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Where a host's agent listens: `https://HOST:PORT` (or `http://` for a lab or a development
/// agent), without path. HOST is an address (IPv6 in brackets) or a DNS name.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AgentEndpoint {
    url: String,
    tls: bool,
    port: u16,
}

impl AgentEndpoint {
    /// The default endpoint of a host: `https://ADDRESS:7443`.
    pub fn for_address(address: IpAddr) -> AgentEndpoint {
        AgentEndpoint {
            url: format!("https://{}", SocketAddr::new(address, DEFAULT_AGENT_PORT)),
            tls: true,
            port: DEFAULT_AGENT_PORT,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.url
    }

    /// `https` (as opposed to plain `http`).
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    /// The port, explicit or the scheme's default.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl FromStr for AgentEndpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let (scheme, authority) = s
            .split_once("://")
            .ok_or_else(|| "has no scheme; expected https://HOST:PORT".to_string())?;
        let tls = match scheme {
            "https" => true,
            "http" => false,
            other => return Err(format!("scheme {other:?} is not http or https")),
        };
        if let Some(c) = authority
            .chars()
            .find(|c| matches!(c, '/' | '?' | '#' | '@') || c.is_whitespace() || c.is_control())
        {
            return Err(format!(
                "contains {c:?} after the scheme; expected only HOST:PORT"
            ));
        }
        let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
            let (v6, after) = rest
                .split_once(']')
                .ok_or_else(|| "has an unclosed '['".to_string())?;
            v6.parse::<Ipv6Addr>()
                .map_err(|_| format!("{v6:?} is not an IPv6 address"))?;
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| format!("unexpected {p:?} after the address"))?,
                ),
            };
            (v6, port)
        } else {
            match authority.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (authority, None),
            }
        };
        if host.is_empty() {
            return Err("has no host".to_string());
        }
        let port = match port {
            None => {
                if tls {
                    443
                } else {
                    80
                }
            }
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n > 0 => n,
                _ => return Err(format!("port {p:?} is not a number from 1 to 65535")),
            },
        };
        Ok(AgentEndpoint {
            url: s.to_string(),
            tls,
            port,
        })
    }
}

impl fmt::Display for AgentEndpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.url)
    }
}

/// `scheme://ADDRESS:PORT`, with IPv6 addresses in brackets.
pub(crate) fn url(scheme: &str, address: IpAddr, port: u16) -> String {
    format!("{scheme}://{}", SocketAddr::new(address, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels() {
        for ok in ["a", "etcd1", "master-a", "0node", &"a".repeat(63)] {
            assert!(HostName::try_from(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "a-", "Etcd1", "a_b", "a.b", &"a".repeat(64), "é"] {
            assert!(HostName::try_from(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn fqdns() {
        assert!(Fqdn::try_from("etcd1.example.com").is_ok());
        for bad in ["etcd1", "a..b", "a.-b", ".a.b", "A.b"] {
            assert!(Fqdn::try_from(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn cidrs() {
        let c: Cidr = "10.0.0.5/24".parse().unwrap();
        assert!(!c.is_network());
        assert_eq!(c.network().to_string(), "10.0.0.0/24");
        assert!(c.contains("10.0.0.200".parse().unwrap()));
        assert!(!c.contains("10.0.1.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("192.0.2.1".parse().unwrap()));
        let v6: Cidr = "fd00::1/64".parse().unwrap();
        assert_eq!(v6.network().to_string(), "fd00::/64");
        assert!(v6.contains("fd00::ffff".parse().unwrap()));
        let a: Cidr = "10.30.0.0/16".parse().unwrap();
        let b: Cidr = "10.30.5.0/24".parse().unwrap();
        let d: Cidr = "10.31.0.0/16".parse().unwrap();
        assert!(a.overlaps(&b) && b.overlaps(&a));
        assert!(!a.overlaps(&d));
        for bad in ["10.0.0.0", "10.0.0.0/33", "10.0.0/8", "x/8", "10.0.0.0/x"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn versions() {
        assert_eq!("v1.29.3".parse::<Version>().unwrap().to_string(), "1.29.3");
        assert_eq!("3.5".parse::<Version>().unwrap().patch(), None);
        for bad in ["1", "1.x", "1.2.3.4", "", "1..2", "1.2-rc1"] {
            assert!(bad.parse::<Version>().is_err(), "{bad}");
        }
    }

    #[test]
    fn endpoints() {
        let e: AgentEndpoint = "https://10.0.0.1:7443".parse().unwrap();
        assert!(e.is_tls());
        assert_eq!(e.port(), 7443);
        assert_eq!(
            "http://h.example".parse::<AgentEndpoint>().unwrap().port(),
            80
        );
        assert_eq!(
            "https://[fd00::1]:9"
                .parse::<AgentEndpoint>()
                .unwrap()
                .port(),
            9
        );
        assert_eq!(
            AgentEndpoint::for_address("fd00::1".parse().unwrap()).as_str(),
            "https://[fd00::1]:7443"
        );
        for bad in [
            "10.0.0.1:7443",
            "ftp://h:1",
            "https://",
            "https://h:0",
            "https://h:x",
            "https://h:1/path",
            "https://[fd00::1",
            "https://u@h:1",
        ] {
            assert!(bad.parse::<AgentEndpoint>().is_err(), "{bad}");
        }
    }

    #[test]
    fn roles() {
        assert_eq!("master".parse::<Role>().unwrap(), Role::Master);
        let e = "etcdd".parse::<Role>().unwrap_err();
        assert_eq!(e, "unknown role \"etcdd\"; expected etcd, master or worker");
    }

    #[test]
    fn digests_and_interfaces() {
        assert!(Sha256Hex::try_from("ab".repeat(32).as_str()).is_ok());
        assert!(Sha256Hex::try_from("AB".repeat(32).as_str()).is_err());
        assert!(Sha256Hex::try_from("ab").is_err());
        assert!(InterfaceName::try_from("eth0").is_ok());
        assert!(InterfaceName::try_from("bond0.100").is_ok());
        for bad in ["", "a/b", "eth0:1", "a b", "averyveryverylongname"] {
            assert!(InterfaceName::try_from(bad).is_err(), "{bad:?}");
        }
    }
}
