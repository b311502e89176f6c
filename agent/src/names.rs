//! Validated names for everything the agent hands to the OS.
//!
//! Requests arrive as raw strings. They are turned into these types once, at the RPC edge
//! (`TryFrom`), so that nothing deeper ever sees a unit name with a `/`, a sysctl key with `..`,
//! or a module name with a space. Each type refuses what the kernel or systemd would treat as
//! something else (a path, an option, a second entry), not merely what looks odd.

use std::fmt;

/// Why a name was refused. The message names the kind of name and the offending input.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid {kind} {value:?}: {reason}")]
pub struct NameError {
    pub kind: &'static str,
    pub value: String,
    pub reason: &'static str,
}

impl NameError {
    fn new(kind: &'static str, value: &str, reason: &'static str) -> Self {
        NameError {
            kind,
            value: value.to_string(),
            reason,
        }
    }
}

const UNIT_SUFFIXES: &[&str] = &[
    ".service", ".socket", ".timer", ".target", ".path", ".mount",
];

/// A systemd unit name such as `etcd.service`: `[A-Za-z0-9:_.@-]`, a known suffix, no leading
/// dot or dash, at most 255 bytes (systemd's own limit).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct UnitName(String);

impl UnitName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name without its suffix: `etcd` for `etcd.service`.
    pub fn stem(&self) -> &str {
        self.0.rsplit_once('.').map(|(s, _)| s).unwrap_or(&self.0)
    }
}

impl TryFrom<&str> for UnitName {
    type Error = NameError;
    fn try_from(s: &str) -> Result<Self, NameError> {
        const KIND: &str = "unit name";
        if s.is_empty() || s.len() > 255 {
            return Err(NameError::new(KIND, s, "must be 1 to 255 characters"));
        }
        if !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, ':' | '_' | '.' | '@' | '-'))
        {
            return Err(NameError::new(
                KIND,
                s,
                "may only contain letters, digits and : _ . @ -",
            ));
        }
        if s.starts_with('.') || s.starts_with('-') {
            return Err(NameError::new(KIND, s, "must not start with '.' or '-'"));
        }
        let Some(suffix) = UNIT_SUFFIXES.iter().find(|suf| s.ends_with(**suf)) else {
            return Err(NameError::new(
                KIND,
                s,
                "must end in .service, .socket, .timer, .target, .path or .mount",
            ));
        };
        if s.len() == suffix.len() {
            return Err(NameError::new(KIND, s, "has no name before its suffix"));
        }
        Ok(UnitName(s.to_string()))
    }
}

impl TryFrom<String> for UnitName {
    type Error = NameError;
    fn try_from(s: String) -> Result<Self, NameError> {
        UnitName::try_from(s.as_str())
    }
}

impl fmt::Display for UnitName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A sysctl key in dotted form, such as `net.ipv4.ip_forward`. Components are
/// `[A-Za-z0-9_-]` (interface names add `@`), never empty, never `..`; `/` is refused because
/// the key becomes a path under /proc/sys.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SysctlKey(String);

impl SysctlKey {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The relative path under /proc/sys: `net/ipv4/ip_forward`.
    pub fn proc_path(&self) -> String {
        self.0.replace('.', "/")
    }

    /// Keys that the kernel keeps per network namespace, so that changing them on a lab host
    /// changes only that host.
    pub fn is_network_namespaced(&self) -> bool {
        self.0.starts_with("net.ipv4.")
            || self.0.starts_with("net.ipv6.")
            || self.0.starts_with("net.bridge.")
            || self.0.starts_with("net.netfilter.")
            || self.0.starts_with("net.core.somaxconn")
    }
}

impl TryFrom<&str> for SysctlKey {
    type Error = NameError;
    fn try_from(s: &str) -> Result<Self, NameError> {
        const KIND: &str = "sysctl key";
        if s.is_empty() || s.len() > 200 {
            return Err(NameError::new(KIND, s, "must be 1 to 200 characters"));
        }
        if s.contains('/') {
            return Err(NameError::new(KIND, s, "must use dots, not '/'"));
        }
        for part in s.split('.') {
            if part.is_empty() {
                return Err(NameError::new(KIND, s, "has an empty component (or '..')"));
            }
            if !part
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '@'))
            {
                return Err(NameError::new(
                    KIND,
                    s,
                    "components may only contain letters, digits and _ - @",
                ));
            }
        }
        if !s.contains('.') {
            return Err(NameError::new(KIND, s, "must have at least two components"));
        }
        Ok(SysctlKey(s.to_string()))
    }
}

impl fmt::Display for SysctlKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A sysctl value: one line, printable, at most 1024 bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysctlValue(String);

impl SysctlValue {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for SysctlValue {
    type Error = NameError;
    fn try_from(s: &str) -> Result<Self, NameError> {
        const KIND: &str = "sysctl value";
        let t = s.trim();
        if t.is_empty() || t.len() > 1024 {
            return Err(NameError::new(KIND, s, "must be 1 to 1024 characters"));
        }
        if t.chars().any(|c| c.is_control() && c != '\t') {
            return Err(NameError::new(KIND, s, "must be a single printable line"));
        }
        Ok(SysctlValue(t.to_string()))
    }
}

/// A kernel module name such as `br_netfilter`: `[A-Za-z0-9_-]`, at most 55 bytes (the kernel's
/// MODULE_NAME_LEN less one).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ModuleName(String);

impl ModuleName {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The name as the kernel lists it in /sys/module: dashes become underscores.
    pub fn kernel_name(&self) -> String {
        self.0.replace('-', "_")
    }
}

impl TryFrom<&str> for ModuleName {
    type Error = NameError;
    fn try_from(s: &str) -> Result<Self, NameError> {
        const KIND: &str = "module name";
        if s.is_empty() || s.len() > 55 {
            return Err(NameError::new(KIND, s, "must be 1 to 55 characters"));
        }
        if s.starts_with('-') {
            return Err(NameError::new(KIND, s, "must not start with '-'"));
        }
        if !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-'))
        {
            return Err(NameError::new(
                KIND,
                s,
                "may only contain letters, digits, _ and -",
            ));
        }
        Ok(ModuleName(s.to_string()))
    }
}

impl fmt::Display for ModuleName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The NAME of a drop-in file such as /etc/sysctl.d/NAME.conf: `[A-Za-z0-9_.-]`, no leading dot,
/// at most 64 bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct DropInName(String);

impl DropInName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl TryFrom<&str> for DropInName {
    type Error = NameError;
    fn try_from(s: &str) -> Result<Self, NameError> {
        const KIND: &str = "drop-in name";
        if s.is_empty() || s.len() > 64 {
            return Err(NameError::new(KIND, s, "must be 1 to 64 characters"));
        }
        if s.starts_with('.') || s.starts_with('-') {
            return Err(NameError::new(KIND, s, "must not start with '.' or '-'"));
        }
        if !s
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            return Err(NameError::new(
                KIND,
                s,
                "may only contain letters, digits and _ - .",
            ));
        }
        Ok(DropInName(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_names() {
        for ok in [
            "etcd.service",
            "kube-apiserver.service",
            "getty@tty1.service",
            "a.timer",
        ] {
            assert!(UnitName::try_from(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "etcd",
            ".service",
            "../etcd.service",
            "etc/d.service",
            "etcd.service\n[Service]",
            "-etcd.service",
            "et cd.service",
            "etcd\0.service",
        ] {
            assert!(UnitName::try_from(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(UnitName::try_from("etcd.service").unwrap().stem(), "etcd");
    }

    #[test]
    fn sysctl_keys_no_traversal() {
        for ok in [
            "net.ipv4.ip_forward",
            "net.bridge.bridge-nf-call-iptables",
            "vm.swappiness",
        ] {
            assert!(SysctlKey::try_from(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "net/ipv4/ip_forward",
            "net..ipv4",
            "..",
            ".net.ipv4",
            "net.ipv4.",
            "net.ipv4.ip forward",
            "kernel",
            "net.ipv4.\0",
            "../../etc/passwd",
        ] {
            assert!(SysctlKey::try_from(bad).is_err(), "{bad:?} accepted");
        }
        let k = SysctlKey::try_from("net.ipv4.ip_forward").unwrap();
        assert_eq!(k.proc_path(), "net/ipv4/ip_forward");
        assert!(k.is_network_namespaced());
        assert!(!SysctlKey::try_from("vm.swappiness")
            .unwrap()
            .is_network_namespaced());
    }

    #[test]
    fn sysctl_values() {
        assert_eq!(SysctlValue::try_from(" 1 ").unwrap().as_str(), "1");
        assert!(SysctlValue::try_from("1\nnet.ipv4.x = 2").is_err());
        assert!(SysctlValue::try_from("").is_err());
    }

    #[test]
    fn module_names() {
        for ok in ["br_netfilter", "overlay", "ip_vs_rr", "nf-conntrack"] {
            assert!(ModuleName::try_from(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-v", "a b", "../x", "x/y", "a;b", "mod\n"] {
            assert!(ModuleName::try_from(bad).is_err(), "{bad:?} accepted");
        }
        assert_eq!(
            ModuleName::try_from("nf-conntrack").unwrap().kernel_name(),
            "nf_conntrack"
        );
    }

    #[test]
    fn drop_in_names() {
        assert!(DropInName::try_from("k8s").is_ok());
        assert!(DropInName::try_from("99-haop.k8s").is_ok());
        for bad in ["", "../k8s", "a/b", ".hidden", "k 8s"] {
            assert!(DropInName::try_from(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn error_names_the_input() {
        let e = UnitName::try_from("../x.service").unwrap_err();
        assert!(e.to_string().contains("unit name"));
        assert!(e.to_string().contains("../x.service"));
    }
}
