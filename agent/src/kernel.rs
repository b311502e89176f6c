//! Kernel settings: modules, sysctls, swap.
//!
//! The runbook prepares every Kubernetes node the same way (br_netfilter and overlay loaded,
//! bridge and forwarding sysctls set, swap off). Each setting has two halves: the running kernel
//! and the persisted file that re-applies it at boot. The persisted half is written by the RPC
//! layer through [`crate::files`]; this module owns the running half, behind [`Kernel`]:
//!
//! * [`HostKernel`] changes the running kernel (modprobe, /proc/sys, swapoff).
//! * [`LabKernel`] is for lab hosts, which share one kernel with the whole machine. It applies
//!   only what the kernel keeps per network namespace (`net.*` sysctls), and reports the rest as
//!   persisted only, with the reason, instead of changing the machine under every other lab.
//!
//! Both read /proc and /sys from a configurable base, so tests can point them at a directory.

use std::path::{Path, PathBuf};

use crate::command::{find_program, CommandError, Invocation};
use crate::names::{ModuleName, SysctlKey, SysctlValue};

/// Errors changing the running kernel.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("sysctl {key} does not exist in this kernel ({path} is missing)")]
    UnknownSysctl { key: String, path: String },
    #[error("cannot {op} {path}")]
    Io {
        op: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{program} is not installed (looked for {candidates})")]
    MissingProgram {
        program: &'static str,
        candidates: String,
    },
    #[error(transparent)]
    Command(#[from] CommandError),
}

/// What happened to one module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModuleOutcome {
    AlreadyLoaded,
    Loaded,
    NotLoaded(String),
}

/// What happened to one sysctl.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SysctlOutcome {
    Unchanged,
    Applied,
    PersistedOnly(String),
}

/// The running half of kernel settings.
#[tonic::async_trait]
pub trait Kernel: Send + Sync + std::fmt::Debug {
    async fn load_module(&self, module: &ModuleName) -> Result<ModuleOutcome, KernelError>;
    async fn apply_sysctl(
        &self,
        key: &SysctlKey,
        value: &SysctlValue,
    ) -> Result<SysctlOutcome, KernelError>;
    /// Active swap devices.
    fn swap_devices(&self) -> Result<Vec<String>, KernelError>;
    /// Turns every active swap device off; returns those turned off.
    async fn swap_off(&self) -> Result<Vec<String>, KernelError>;
}

/// Where the kernel's interfaces are: `/proc` and `/sys` on a host.
#[derive(Debug, Clone)]
pub struct KernelPaths {
    pub proc: PathBuf,
    pub sys: PathBuf,
}

impl Default for KernelPaths {
    fn default() -> Self {
        KernelPaths {
            proc: PathBuf::from("/proc"),
            sys: PathBuf::from("/sys"),
        }
    }
}

impl KernelPaths {
    fn module_loaded(&self, module: &ModuleName) -> bool {
        let name = module.kernel_name();
        if self.sys.join("module").join(&name).exists() {
            return true;
        }
        std::fs::read_to_string(self.proc.join("modules"))
            .map(|m| {
                m.lines()
                    .any(|l| l.split(' ').next() == Some(name.as_str()))
            })
            .unwrap_or(false)
    }

    fn sysctl_path(&self, key: &SysctlKey) -> PathBuf {
        self.proc.join("sys").join(key.proc_path())
    }

    fn read_sysctl(&self, key: &SysctlKey) -> Result<Option<String>, KernelError> {
        let path = self.sysctl_path(key);
        match std::fs::read_to_string(&path) {
            Ok(v) => Ok(Some(v)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(KernelError::Io {
                op: "read",
                path: path.display().to_string(),
                source,
            }),
        }
    }

    fn write_sysctl(
        &self,
        key: &SysctlKey,
        value: &SysctlValue,
    ) -> Result<SysctlOutcome, KernelError> {
        let path = self.sysctl_path(key);
        let Some(current) = self.read_sysctl(key)? else {
            return Err(KernelError::UnknownSysctl {
                key: key.to_string(),
                path: path.display().to_string(),
            });
        };
        if same_sysctl_value(&current, value.as_str()) {
            return Ok(SysctlOutcome::Unchanged);
        }
        std::fs::write(&path, format!("{}\n", value.as_str())).map_err(|source| {
            KernelError::Io {
                op: "write",
                path: path.display().to_string(),
                source,
            }
        })?;
        Ok(SysctlOutcome::Applied)
    }

    fn swap_devices(&self) -> Result<Vec<String>, KernelError> {
        let path = self.proc.join("swaps");
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(parse_proc_swaps(&text)),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
            Err(source) => Err(KernelError::Io {
                op: "read",
                path: path.display().to_string(),
                source,
            }),
        }
    }
}

/// Values in /proc/sys separate fields with tabs; compare them field by field.
fn same_sysctl_value(current: &str, wanted: &str) -> bool {
    current.split_whitespace().eq(wanted.split_whitespace())
}

/// Device names from /proc/swaps (its first line is a header).
pub fn parse_proc_swaps(text: &str) -> Vec<String> {
    text.lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_string)
        .collect()
}

/// Comments out every active swap line of an fstab, as the seed's
/// `sed -i '/ swap / s/^\(.*\)$/#\1/g' /etc/fstab` does, but only on real entries (not comments,
/// not lines that merely mention swap). Returns the new text and how many lines changed.
pub fn comment_out_swap(fstab: &str) -> (String, u32) {
    let mut out = String::with_capacity(fstab.len() + 8);
    let mut count = 0;
    for line in fstab.split_inclusive('\n') {
        if is_swap_entry(line) {
            out.push('#');
            count += 1;
        }
        out.push_str(line);
    }
    (out, count)
}

/// Whether an fstab line activates swap: its third field is `swap`.
pub fn is_swap_entry(line: &str) -> bool {
    let t = line.trim_start();
    if t.starts_with('#') {
        return false;
    }
    let fields: Vec<&str> = t.split_whitespace().collect();
    fields.len() >= 3 && fields[2] == "swap"
}

/// A real host's kernel.
#[derive(Debug, Clone, Default)]
pub struct HostKernel {
    pub paths: KernelPaths,
}

#[tonic::async_trait]
impl Kernel for HostKernel {
    async fn load_module(&self, module: &ModuleName) -> Result<ModuleOutcome, KernelError> {
        if self.paths.module_loaded(module) {
            return Ok(ModuleOutcome::AlreadyLoaded);
        }
        let candidates = ["/usr/sbin/modprobe", "/sbin/modprobe"];
        let modprobe = find_program(&candidates).ok_or_else(|| KernelError::MissingProgram {
            program: "modprobe",
            candidates: candidates.join(", "),
        })?;
        let out = Invocation::new(modprobe, &["--", module.as_str()])
            .output()
            .await?;
        if out.success() {
            Ok(ModuleOutcome::Loaded)
        } else {
            Ok(ModuleOutcome::NotLoaded(
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ))
        }
    }

    async fn apply_sysctl(
        &self,
        key: &SysctlKey,
        value: &SysctlValue,
    ) -> Result<SysctlOutcome, KernelError> {
        self.paths.write_sysctl(key, value)
    }

    fn swap_devices(&self) -> Result<Vec<String>, KernelError> {
        self.paths.swap_devices()
    }

    async fn swap_off(&self) -> Result<Vec<String>, KernelError> {
        let devices = self.paths.swap_devices()?;
        if devices.is_empty() {
            return Ok(devices);
        }
        let candidates = ["/usr/sbin/swapoff", "/sbin/swapoff"];
        let swapoff = find_program(&candidates).ok_or_else(|| KernelError::MissingProgram {
            program: "swapoff",
            candidates: candidates.join(", "),
        })?;
        Invocation::new(swapoff, &["-a"]).run().await?;
        Ok(devices)
    }
}

/// A lab host's view of the shared kernel: changes only what is per network namespace.
#[derive(Debug, Clone, Default)]
pub struct LabKernel {
    pub paths: KernelPaths,
}

const LAB_MACHINE_WIDE: &str =
    "lab host: the kernel is shared with the whole machine, so this is persisted, not applied";

#[tonic::async_trait]
impl Kernel for LabKernel {
    async fn load_module(&self, module: &ModuleName) -> Result<ModuleOutcome, KernelError> {
        if self.paths.module_loaded(module) {
            Ok(ModuleOutcome::AlreadyLoaded)
        } else {
            Ok(ModuleOutcome::NotLoaded(LAB_MACHINE_WIDE.to_string()))
        }
    }

    async fn apply_sysctl(
        &self,
        key: &SysctlKey,
        value: &SysctlValue,
    ) -> Result<SysctlOutcome, KernelError> {
        if !key.is_network_namespaced() {
            return Ok(SysctlOutcome::PersistedOnly(LAB_MACHINE_WIDE.to_string()));
        }
        match self.paths.write_sysctl(key, value) {
            Err(KernelError::UnknownSysctl { path, .. }) => Ok(SysctlOutcome::PersistedOnly(
                format!("lab host: {path} does not exist in this network namespace"),
            )),
            other => other,
        }
    }

    fn swap_devices(&self) -> Result<Vec<String>, KernelError> {
        // Swap devices belong to the machine, not to a lab host.
        Ok(Vec::new())
    }

    async fn swap_off(&self) -> Result<Vec<String>, KernelError> {
        Ok(Vec::new())
    }
}

/// Reads `/etc/os-release`'s PRETTY_NAME from a file.
pub fn os_release(path: &Path) -> String {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("PRETTY_NAME="))
                .map(|v| v.trim_matches('"').to_string())
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_kernel() -> (tempfile::TempDir, KernelPaths) {
        let dir = tempfile::tempdir().unwrap();
        let proc = dir.path().join("proc");
        let sys = dir.path().join("sys");
        std::fs::create_dir_all(proc.join("sys/net/ipv4")).unwrap();
        std::fs::create_dir_all(proc.join("sys/vm")).unwrap();
        std::fs::create_dir_all(sys.join("module/overlay")).unwrap();
        std::fs::write(proc.join("sys/net/ipv4/ip_forward"), "0\n").unwrap();
        std::fs::write(proc.join("sys/vm/swappiness"), "60\n").unwrap();
        std::fs::write(proc.join("modules"), "br_netfilter 32768 0 - Live 0x0\n").unwrap();
        std::fs::write(
            proc.join("swaps"),
            "Filename\tType\tSize\tUsed\tPriority\n/swap.img file 1024 0 -2\n",
        )
        .unwrap();
        (dir, KernelPaths { proc, sys })
    }

    #[tokio::test]
    async fn host_kernel_sysctl_is_an_ensure() {
        let (_d, paths) = fake_kernel();
        let k = HostKernel {
            paths: paths.clone(),
        };
        let key = SysctlKey::try_from("net.ipv4.ip_forward").unwrap();
        let one = SysctlValue::try_from("1").unwrap();
        assert_eq!(
            k.apply_sysctl(&key, &one).await.unwrap(),
            SysctlOutcome::Applied
        );
        assert_eq!(
            std::fs::read_to_string(paths.proc.join("sys/net/ipv4/ip_forward")).unwrap(),
            "1\n"
        );
        assert_eq!(
            k.apply_sysctl(&key, &one).await.unwrap(),
            SysctlOutcome::Unchanged
        );
        let missing = SysctlKey::try_from("net.bridge.bridge-nf-call-iptables").unwrap();
        assert!(matches!(
            k.apply_sysctl(&missing, &one).await,
            Err(KernelError::UnknownSysctl { .. })
        ));
    }

    #[tokio::test]
    async fn lab_kernel_leaves_machine_wide_settings_alone() {
        let (_d, paths) = fake_kernel();
        let k = LabKernel {
            paths: paths.clone(),
        };
        let vm = SysctlKey::try_from("vm.swappiness").unwrap();
        let zero = SysctlValue::try_from("0").unwrap();
        assert!(matches!(
            k.apply_sysctl(&vm, &zero).await.unwrap(),
            SysctlOutcome::PersistedOnly(_)
        ));
        assert_eq!(
            std::fs::read_to_string(paths.proc.join("sys/vm/swappiness")).unwrap(),
            "60\n"
        );
        let fwd = SysctlKey::try_from("net.ipv4.ip_forward").unwrap();
        let one = SysctlValue::try_from("1").unwrap();
        assert_eq!(
            k.apply_sysctl(&fwd, &one).await.unwrap(),
            SysctlOutcome::Applied
        );
        let overlay = ModuleName::try_from("overlay").unwrap();
        let brnf = ModuleName::try_from("br_netfilter").unwrap();
        let ipvs = ModuleName::try_from("ip_vs").unwrap();
        assert_eq!(
            k.load_module(&overlay).await.unwrap(),
            ModuleOutcome::AlreadyLoaded
        );
        assert_eq!(
            k.load_module(&brnf).await.unwrap(),
            ModuleOutcome::AlreadyLoaded
        );
        assert!(matches!(
            k.load_module(&ipvs).await.unwrap(),
            ModuleOutcome::NotLoaded(_)
        ));
        assert!(k.swap_off().await.unwrap().is_empty());
    }

    #[test]
    fn swap_lines_are_commented_like_the_seed_but_only_real_entries() {
        let fstab = "UUID=1 / ext4 defaults 0 1\n/swap.img none swap sw 0 0\n# /old none swap sw 0 0\nUUID=2 /mnt/swapfiles ext4 defaults 0 2\n";
        let (out, n) = comment_out_swap(fstab);
        assert_eq!(n, 1);
        assert_eq!(
            out,
            "UUID=1 / ext4 defaults 0 1\n#/swap.img none swap sw 0 0\n# /old none swap sw 0 0\nUUID=2 /mnt/swapfiles ext4 defaults 0 2\n"
        );
        let (again, n2) = comment_out_swap(&out);
        assert_eq!((again.as_str(), n2), (out.as_str(), 0));
    }

    #[test]
    fn proc_swaps() {
        let (_d, paths) = fake_kernel();
        assert_eq!(paths.swap_devices().unwrap(), vec!["/swap.img"]);
    }
}
