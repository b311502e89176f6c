//! Host facts: what the coordinator needs to know before it plans anything.
//!
//! Collected fresh on every call (cheap: a few /proc reads and one getifaddrs), so the answer
//! is never stale. Interfaces are those of the agent's network namespace, which on a lab host is
//! the host's own.

use std::collections::BTreeMap;

use haop_proto::v1 as pb;
use sysinfo::{CpuRefreshKind, Disks, MemoryRefreshKind, RefreshKind, System};

use crate::kernel::{is_swap_entry, os_release, Kernel};
use crate::paths::{HostFs, HostPath};

/// The host's name: `/etc/hostname` under the root when present, else the kernel's.
pub fn hostname(fs: &HostFs) -> String {
    let etc = HostPath::try_from("/etc/hostname").expect("valid");
    std::fs::read_to_string(fs.real(&etc))
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| {
            nix::unistd::gethostname()
                .map(|h| h.to_string_lossy().into_owned())
                .unwrap_or_default()
        })
}

/// Interfaces of this network namespace with their addresses in CIDR form.
pub fn interfaces() -> Vec<pb::Interface> {
    let mut by_name: BTreeMap<String, pb::Interface> = BTreeMap::new();
    let Ok(addrs) = nix::ifaddrs::getifaddrs() else {
        return Vec::new();
    };
    for ifa in addrs {
        let entry = by_name
            .entry(ifa.interface_name.clone())
            .or_insert_with(|| pb::Interface {
                name: ifa.interface_name.clone(),
                addresses: Vec::new(),
                up: false,
            });
        entry.up |= ifa.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP);
        let Some(addr) = ifa.address else { continue };
        if let Some(v4) = addr.as_sockaddr_in() {
            let bits = ifa
                .netmask
                .as_ref()
                .and_then(|m| m.as_sockaddr_in())
                .map(|m| u32::from(m.ip()).count_ones())
                .unwrap_or(32);
            entry.addresses.push(format!("{}/{}", v4.ip(), bits));
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            let bits = ifa
                .netmask
                .as_ref()
                .and_then(|m| m.as_sockaddr_in6())
                .map(|m| u128::from(m.ip()).count_ones())
                .unwrap_or(128);
            entry.addresses.push(format!("{}/{}", v6.ip(), bits));
        }
    }
    by_name.into_values().collect()
}

/// Everything in `Facts`.
pub fn collect(fs: &HostFs, kernel: &dyn Kernel, service_manager: &str) -> pb::Facts {
    let sys = System::new_with_specifics(
        RefreshKind::nothing()
            .with_cpu(CpuRefreshKind::nothing())
            .with_memory(MemoryRefreshKind::everything()),
    );
    let disks = Disks::new_with_refreshed_list()
        .list()
        .iter()
        .map(|d| pb::Disk {
            mount_point: d.mount_point().display().to_string(),
            file_system: d.file_system().to_string_lossy().into_owned(),
            total_bytes: d.total_space(),
            available_bytes: d.available_space(),
        })
        .collect();
    let fstab = HostPath::try_from("/etc/fstab").expect("valid");
    let fstab_entries = std::fs::read_to_string(fs.real(&fstab))
        .map(|t| t.lines().filter(|l| is_swap_entry(l)).count() as u32)
        .unwrap_or(0);
    let mut os = os_release(std::path::Path::new("/etc/os-release"));
    if os.is_empty() {
        os = os_release(std::path::Path::new("/usr/lib/os-release"));
    }
    pb::Facts {
        hostname: hostname(fs),
        interfaces: interfaces(),
        os_release: os,
        kernel: System::kernel_version().unwrap_or_default(),
        cpus: sys.cpus().len() as u32,
        memory_total_bytes: sys.total_memory(),
        memory_available_bytes: sys.available_memory(),
        disks,
        swap: Some(pb::Swap {
            total_bytes: sys.total_swap(),
            used_bytes: sys.used_swap(),
            devices: kernel.swap_devices().unwrap_or_default(),
            fstab_entries,
        }),
        service_manager: service_manager.to_string(),
        agent_version: env!("CARGO_PKG_VERSION").to_string(),
        uptime_seconds: System::uptime(),
        now_unix_ms: now_unix_ms(),
        root: fs.root().display().to_string(),
        // The service knows the revocation list; it fills this in.
        revocation_generation: 0,
    }
}

pub fn now_unix_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn facts_describe_this_machine() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("etc")).unwrap();
        std::fs::write(dir.path().join("etc/hostname"), "etcd1\n").unwrap();
        std::fs::write(
            dir.path().join("etc/fstab"),
            "/swap.img none swap sw 0 0\n#/x none swap sw 0 0\n",
        )
        .unwrap();
        let fs = HostFs::new(dir.path(), vec![]);
        let f = collect(&fs, &crate::kernel::LabKernel::default(), "supervisor");
        assert_eq!(f.hostname, "etcd1");
        assert!(f.cpus >= 1);
        assert!(f.memory_total_bytes > 0);
        assert!(f
            .interfaces
            .iter()
            .any(|i| i.name == "lo" && i.addresses.iter().any(|a| a == "127.0.0.1/8")));
        assert_eq!(f.swap.unwrap().fstab_entries, 1);
        assert_eq!(f.service_manager, "supervisor");
        assert!(!f.kernel.is_empty());
    }
}
