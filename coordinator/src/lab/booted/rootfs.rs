//! The cached Debian root every booted lab host starts from.
//!
//! Why a cache: `debootstrap` takes minutes and downloads a few hundred MB; a lab of three hosts
//! must not do that three times, nor every time. So the root is built once, into
//! [`DEFAULT_CACHE`] (`/var/cache/haop/lab-root-bookworm`, or `$HAOP_LAB_ROOT_CACHE`), and
//! each host mounts it read-only as the lower layer of an overlayfs: a host costs only what it
//! writes. `haop lab up --systemd --refresh-root` builds it again (refused while a lab uses it).
//!
//! What is in it: Debian bookworm `minbase` with systemd as init, D-Bus, iproute2, the OpenSSH
//! server (the way `haop hosts install` reaches a host), and Debian's `etcd-server`,
//! `etcd-client` and `keepalived` (what haop runs on the hosts). Then it is made neutral: the
//! units that Debian's packages enable (etcd, keepalived) are disabled so that a booted host
//! runs nothing of haop's until haop asks, the SSH host keys and machine id that debootstrap made
//! are removed (each host gets its own), and apt's downloaded packages are dropped.
//!
//! Lifecycle of a build: debootstrap into `<cache>.new` (removed first if a build died there),
//! neutralise, write [`MARKER`], rename to `<cache>`. A cache without the marker is not used.

use std::path::{Path, PathBuf};

use tracing::info;

use super::super::sys;
use super::super::LabError;

/// Where the root is cached unless `$HAOP_LAB_ROOT_CACHE` says otherwise.
pub const DEFAULT_CACHE: &str = "/var/cache/haop/lab-root-bookworm";
pub const CACHE_ENV: &str = "HAOP_LAB_ROOT_CACHE";
/// Written last into a complete root: what it was built from.
pub const MARKER: &str = "haop-lab-root.json";
pub const SUITE: &str = "bookworm";
/// The Debian mirror debootstrap fetches from: the machine's apt source when it names one
/// (`$HAOP_LAB_MIRROR` overrides), else deb.debian.org.
pub const MIRROR_ENV: &str = "HAOP_LAB_MIRROR";
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
const DEBOOTSTRAP: &str = "/usr/sbin/debootstrap";
/// Packages of the root beyond minbase.
pub const PACKAGES: &str =
    "systemd,systemd-sysv,dbus,iproute2,openssh-server,etcd-server,etcd-client,keepalived";
/// Units Debian's packages enable that a fresh host must not run.
const DISABLED_UNITS: [&str; 2] = ["etcd.service", "keepalived.service"];

/// The cache's path.
pub fn cache_dir() -> PathBuf {
    std::env::var_os(CACHE_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CACHE))
}

/// Whether `dir` is a complete root.
pub fn is_ready(dir: &Path) -> bool {
    dir.join(MARKER).is_file() && dir.join("lib/systemd/systemd").is_file()
}

/// The cached root, built when missing (or when `refresh` asks). Blocking: minutes on a
/// first build.
pub fn ensure(refresh: bool) -> Result<PathBuf, LabError> {
    let dir = cache_dir();
    if is_ready(&dir) && !refresh {
        return Ok(dir);
    }
    if refresh && dir.exists() {
        if let Some(mount) = mounted_over(&dir) {
            return Err(LabError::RootInUse {
                root: dir,
                mount: mount.to_string(),
            });
        }
    }
    build(&dir)?;
    Ok(dir)
}

/// A mount whose options name `dir` (a lab host's overlay using it as its lower layer).
fn mounted_over(dir: &Path) -> Option<String> {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    let needle = format!("lowerdir={}", dir.display());
    mounts
        .lines()
        .find(|l| l.contains(&needle))
        .map(|l| l.split_whitespace().nth(4).unwrap_or("?").to_string())
}

fn mirror() -> String {
    if let Some(m) = std::env::var(MIRROR_ENV).ok().filter(|m| !m.is_empty()) {
        return m;
    }
    // deb822 sources of the machine: the first `URIs:` of a Debian archive.
    let text =
        std::fs::read_to_string("/etc/apt/sources.list.d/debian.sources").unwrap_or_default();
    text.lines()
        .filter_map(|l| l.strip_prefix("URIs:"))
        .map(str::trim)
        .find(|u| u.ends_with("/debian"))
        .map(str::to_string)
        .unwrap_or_else(|| DEFAULT_MIRROR.to_string())
}

fn build(dir: &Path) -> Result<(), LabError> {
    if !Path::new(DEBOOTSTRAP).is_file() {
        return Err(LabError::ToolMissing {
            tool: "debootstrap (apt-get install debootstrap)",
            tried: DEBOOTSTRAP.to_string(),
        });
    }
    let new = dir.with_extension("new");
    if new.exists() {
        sys::remove_tree(&new)?;
    }
    if let Some(parent) = dir.parent() {
        std::fs::create_dir_all(parent).map_err(|source| LabError::Io {
            action: "create",
            path: parent.to_path_buf(),
            source,
        })?;
    }
    let mirror = mirror();
    let started = std::time::Instant::now();
    info!(root = %dir.display(), %mirror, "building the lab's Debian root with debootstrap (minutes, once)");
    let include = format!("--include={PACKAGES}");
    let target = new.display().to_string();
    sys::run(
        Path::new(DEBOOTSTRAP),
        &["--variant=minbase", &include, SUITE, &target, &mirror],
    )
    .map_err(|e| {
        // debootstrap says little on stderr; its log in the target says why.
        let log = new.join("debootstrap/debootstrap.log");
        LabError::RootBuild {
            root: dir.to_path_buf(),
            reason: format!(
                "{}; last lines of {}:\n{}",
                crate::error_chain(&e),
                log.display(),
                super::super::agents::log_tail(&log, 8)
            ),
        }
    })?;
    neutralise(&new)?;
    let marker = serde_json::json!({
        "suite": SUITE,
        "mirror": mirror,
        "packages": PACKAGES,
        "built_unix": std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0),
    });
    crate::fsio::write_atomic(&new.join(MARKER), marker.to_string().as_bytes(), 0o644)?;
    if dir.exists() {
        let old = dir.with_extension("old");
        if old.exists() {
            sys::remove_tree(&old)?;
        }
        rename(dir, &old)?;
        sys::remove_tree(&old)?;
    }
    rename(&new, dir)?;
    info!(root = %dir.display(), seconds = started.elapsed().as_secs(), "lab root built");
    Ok(())
}

fn rename(from: &Path, to: &Path) -> Result<(), LabError> {
    std::fs::rename(from, to).map_err(|source| LabError::Io {
        action: "rename",
        path: from.to_path_buf(),
        source,
    })
}

/// Makes a freshly bootstrapped root neutral (see the module doc).
pub fn neutralise(root: &Path) -> Result<(), LabError> {
    let remove = |p: PathBuf| match std::fs::remove_file(&p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(LabError::Io {
            action: "remove",
            path: p,
            source,
        }),
    };
    for unit in DISABLED_UNITS {
        remove(
            root.join("etc/systemd/system/multi-user.target.wants")
                .join(unit),
        )?;
    }
    let ssh = root.join("etc/ssh");
    if let Ok(entries) = std::fs::read_dir(&ssh) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with("ssh_host_") {
                remove(e.path())?;
            }
        }
    }
    // Empty: each host's boot writes its own (or the lab writes one).
    crate::fsio::write_atomic(&root.join("etc/machine-id"), b"", 0o444)?;
    let archives = root.join("var/cache/apt/archives");
    if let Ok(entries) = std::fs::read_dir(&archives) {
        for e in entries.flatten() {
            if e.path().extension().is_some_and(|x| x == "deb") {
                remove(e.path())?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn neutralising_disables_units_and_drops_host_identity() {
        let dir = tempfile::tempdir().unwrap();
        let r = dir.path();
        let wants = r.join("etc/systemd/system/multi-user.target.wants");
        std::fs::create_dir_all(&wants).unwrap();
        std::fs::create_dir_all(r.join("etc/ssh")).unwrap();
        std::fs::create_dir_all(r.join("var/cache/apt/archives")).unwrap();
        for f in ["etcd.service", "keepalived.service", "ssh.service"] {
            std::os::unix::fs::symlink("/lib/systemd/system/x", wants.join(f)).unwrap();
        }
        for f in [
            "ssh_host_ed25519_key",
            "ssh_host_ed25519_key.pub",
            "sshd_config",
        ] {
            std::fs::write(r.join("etc/ssh").join(f), "x").unwrap();
        }
        std::fs::write(
            r.join("etc/machine-id"),
            "b693e3d032074973ad8bc964783d4caa\n",
        )
        .unwrap();
        std::fs::write(r.join("var/cache/apt/archives/etcd.deb"), "x").unwrap();
        neutralise(r).unwrap();
        assert!(!wants.join("etcd.service").exists());
        assert!(!wants.join("keepalived.service").exists());
        assert!(std::fs::symlink_metadata(wants.join("ssh.service")).is_ok());
        assert!(!r.join("etc/ssh/ssh_host_ed25519_key").exists());
        assert!(r.join("etc/ssh/sshd_config").exists());
        assert_eq!(std::fs::read(r.join("etc/machine-id")).unwrap(), b"");
        assert!(!r.join("var/cache/apt/archives/etcd.deb").exists());
        // Again: nothing left to do, no error.
        neutralise(r).unwrap();
    }
}
