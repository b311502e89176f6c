//! Node preparation for Kubernetes: kernel modules, sysctls and containerd's configuration.
//!
//! Replaces the seed's `modprobe`, `sysctl`, `cat <<EOF >/etc/modules-load.d/k8s.conf`,
//! `cat <<EOF >/etc/sysctl.d/k8s.conf` and `containerd config default > config.toml` on
//! masters and workers. Modules and sysctls are data here: the agent's `LoadModules` and
//! `ApplySysctl` RPCs write `/etc/modules-load.d/k8s.conf` and `/etc/sysctl.d/k8s.conf`
//! themselves and load/apply the values now, so a reboot and the running kernel agree.
//!
//! Fixed from the seed:
//! * `nf_conntrack_ipv4` was merged into `nf_conntrack` in Linux 4.19 and no longer exists
//!   (every supported Ubuntu and Debian kernel is newer), so `systemd-modules-load` fails on
//!   it; haop loads `nf_conntrack`. `overlay`, which the seed only `modprobe`s and never
//!   persists, is persisted too.
//! * The seed's `containerd config default` leaves runc on the cgroupfs driver while the
//!   kubelet is told `cgroupDriver: systemd`; two cgroup managers on one host make pods
//!   unstable. haop writes a minimal config that sets `SystemdCgroup = true` for the CRI
//!   plugin's runc runtime and leaves everything else at containerd's defaults, which also
//!   drops a `disabled_plugins = ["cri"]` that some containerd packages ship.
//! * The seed writes the config and never restarts containerd, so the packaged config (the CRI
//!   plugin disabled, runc on cgroupfs) stays live until the next reboot and kubeadm's
//!   preflight fails on the CRI socket. With Kubernetes enabled the runbook keeps
//!   [`CONTAINERD_UNIT`] running and restarts it when [`CONTAINERD_CONFIG_PATH`] changes.

use std::collections::BTreeMap;

use super::RenderedFile;

/// The name of the persisted files: `/etc/modules-load.d/k8s.conf`, `/etc/sysctl.d/k8s.conf`
/// (the seed's names).
pub const FILE_NAME: &str = "k8s";

/// Kernel modules for Kubernetes networking: bridge netfilter and overlayfs for containers,
/// IPVS for kube-proxy's ipvs mode, conntrack for both proxy modes.
pub const MODULES: [&str; 7] = [
    "br_netfilter",
    "overlay",
    "ip_vs",
    "ip_vs_rr",
    "ip_vs_wrr",
    "ip_vs_sh",
    "nf_conntrack",
];

/// The sysctls as key/value pairs, as the seed's `/etc/sysctl.d/k8s.conf` sets them.
pub const SYSCTLS: [(&str, &str); 3] = [
    ("net.bridge.bridge-nf-call-ip6tables", "1"),
    ("net.bridge.bridge-nf-call-iptables", "1"),
    ("net.ipv4.ip_forward", "1"),
];

pub const CONTAINERD_CONFIG_PATH: &str = "/etc/containerd/config.toml";

/// containerd's unit, as its packages name it (Debian's, Ubuntu's and containerd.io's).
pub const CONTAINERD_UNIT: &str = "containerd.service";

/// Where containerd may be installed: the distributions' package (`/usr/bin`) or the upstream
/// release tarball (`/usr/local/bin`).
pub const CONTAINERD_PATHS: [&str; 2] = ["/usr/bin/containerd", "/usr/local/bin/containerd"];

/// [`MODULES`] for the agent's `LoadModules`, in load order (`br_netfilter` first: the bridge
/// sysctls exist only once it is loaded).
pub fn modules() -> Vec<String> {
    MODULES.iter().map(|m| m.to_string()).collect()
}

/// [`SYSCTLS`] for the agent's `ApplySysctl`.
pub fn sysctls() -> BTreeMap<String, String> {
    SYSCTLS
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `/etc/containerd/config.toml` (config format version 2, which containerd 1.x reads and
/// containerd 2.x migrates on load): only the runc runtime with the systemd cgroup driver.
pub fn containerd_config() -> RenderedFile {
    let content = "\
# Managed by haop: containerd for kubeadm. Only what differs from containerd's defaults:
# runc uses the systemd cgroup driver, as the kubelet does (cgroupDriver: systemd).
version = 2

[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]
  runtime_type = \"io.containerd.runc.v2\"

[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]
  SystemdCgroup = true
"
    .to_string();
    RenderedFile::new(CONTAINERD_CONFIG_PATH, content, 0o644)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_replace_the_gone_nf_conntrack_ipv4() {
        let m = modules();
        assert_eq!(m[0], "br_netfilter");
        for want in [
            "overlay",
            "ip_vs",
            "ip_vs_rr",
            "ip_vs_wrr",
            "ip_vs_sh",
            "nf_conntrack",
        ] {
            assert!(m.iter().any(|x| x == want), "{want}");
        }
        assert!(!m.iter().any(|x| x == "nf_conntrack_ipv4"));
    }

    #[test]
    fn sysctls_are_the_seeds() {
        let s = sysctls();
        assert_eq!(s.len(), 3);
        assert_eq!(s["net.bridge.bridge-nf-call-iptables"], "1");
        assert_eq!(s["net.bridge.bridge-nf-call-ip6tables"], "1");
        assert_eq!(s["net.ipv4.ip_forward"], "1");
    }

    #[test]
    fn containerd_config_sets_systemd_cgroup() {
        let f = containerd_config();
        assert_eq!(f.path, "/etc/containerd/config.toml");
        assert_eq!(f.mode, 0o644);
        assert!(f.content.contains("version = 2\n"));
        assert!(f.content.contains("  SystemdCgroup = true\n"));
    }
}
