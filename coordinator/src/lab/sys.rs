//! The machine side of the lab: `ip`, `/proc`, `/sys`, the machine-wide lock, safe removal.
//!
//! Every command runs by absolute path with a cleared environment and `LC_ALL=C.UTF-8`, and its
//! error carries the program, arguments, exit status and stderr. Reads of kernel state go to
//! `/sys/class/net`, `/run/netns` and `/proc` directly rather than parsing command output.
//! Removal of lab directories refuses to cross a mount point: an agent bind-mounts `/usr`,
//! `/dev`, `/proc` and `/sys` into its host root, and a recursive delete that followed such a
//! mount (should one ever leak into this mount namespace) would delete the machine's files.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::fcntl::{Flock, FlockArg};

use super::LabError;

/// Where `ip netns add` keeps namespaces.
pub const NETNS_DIR: &str = "/run/netns";
/// Serializes lab index allocation across every haop process on the machine.
pub const MACHINE_LOCK: &str = "/run/haop-lab.lock";
const IP_CANDIDATES: [&str; 2] = ["/usr/sbin/ip", "/sbin/ip"];
const SAFE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Fails with [`LabError::NotRoot`] unless the effective user is root.
pub fn require_root() -> Result<(), LabError> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(LabError::NotRoot)
    }
}

/// A command with the hardened environment: cleared, plus `LC_ALL` and a fixed `PATH`.
pub fn hardened(program: &Path) -> Command {
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("LC_ALL", "C.UTF-8")
        .env("PATH", SAFE_PATH);
    cmd
}

/// Runs `program args` to completion; stdout on success, a [`LabError::Command`] otherwise.
pub fn run(program: &Path, args: &[&str]) -> Result<String, LabError> {
    let out = hardened(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| LabError::Spawn {
            program: program.display().to_string(),
            source,
        })?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(LabError::Command {
            program: program.display().to_string(),
            args: args.join(" "),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// iproute2's `ip`, found by absolute path.
#[derive(Debug, Clone)]
pub struct Ip {
    program: PathBuf,
}

impl Ip {
    pub fn find() -> Result<Ip, LabError> {
        find_tool(&IP_CANDIDATES, "ip (iproute2)").map(|program| Ip { program })
    }

    pub fn program(&self) -> &Path {
        &self.program
    }

    pub fn run(&self, args: &[&str]) -> Result<String, LabError> {
        run(&self.program, args)
    }

    /// Pids of the processes in network namespace `ns` (`ip netns pids`).
    pub fn netns_pids(&self, ns: &str) -> Result<Vec<u32>, LabError> {
        let out = self.run(&["netns", "pids", ns])?;
        Ok(out
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect())
    }
}

const TC_CANDIDATES: [&str; 2] = ["/usr/sbin/tc", "/sbin/tc"];

/// The first of `candidates` that is a file: programs run by absolute path only.
fn find_tool(candidates: &[&str], tool: &'static str) -> Result<PathBuf, LabError> {
    candidates
        .iter()
        .map(Path::new)
        .find(|p| p.is_file())
        .map(Path::to_path_buf)
        .ok_or(LabError::ToolMissing {
            tool,
            tried: candidates.join(", "),
        })
}

/// iproute2's `tc`, by its absolute path.
#[derive(Debug)]
pub struct Tc {
    program: PathBuf,
}

impl Tc {
    pub fn find() -> Result<Tc, LabError> {
        find_tool(&TC_CANDIDATES, "tc (iproute2)").map(|program| Tc { program })
    }

    pub fn run(&self, args: &[&str]) -> Result<String, LabError> {
        run(&self.program, args)
    }
}

pub fn netns_exists(ns: &str) -> bool {
    Path::new(NETNS_DIR).join(ns).exists()
}

pub fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// The MAC address of link `name`, lowercase, when it exists.
pub fn link_mac(name: &str) -> Option<String> {
    fs::read_to_string(Path::new("/sys/class/net").join(name).join("address"))
        .ok()
        .map(|s| s.trim().to_ascii_lowercase())
}

/// Whether link `name` is administratively up (`IFF_UP` in its flags).
pub fn link_is_up(name: &str) -> bool {
    fs::read_to_string(Path::new("/sys/class/net").join(name).join("flags"))
        .ok()
        .and_then(|f| u32::from_str_radix(f.trim().trim_start_matches("0x"), 16).ok())
        .is_some_and(|flags| flags & 0x1 != 0)
}

/// The bridge link `name` is enslaved to, when any.
pub fn link_master(name: &str) -> Option<String> {
    fs::read_link(Path::new("/sys/class/net").join(name).join("master"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
}

/// Names of the links in this network namespace that start with `prefix`.
pub fn links_with_prefix(prefix: &str) -> Vec<String> {
    fs::read_dir("/sys/class/net")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// An exclusive `flock` on [`MACHINE_LOCK`], held until dropped.
#[derive(Debug)]
pub struct MachineLock {
    _lock: Flock<File>,
}

impl MachineLock {
    pub fn acquire() -> Result<MachineLock, LabError> {
        let path = Path::new(MACHINE_LOCK);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(path)
            .map_err(|source| LabError::Io {
                action: "open lock file",
                path: path.to_path_buf(),
                source,
            })?;
        let lock =
            Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, source)| LabError::Lock {
                path: path.to_path_buf(),
                source,
            })?;
        Ok(MachineLock { _lock: lock })
    }
}

/// What `/proc/PID/stat` says about a process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// `R`, `S`, `Z`...
    pub state: char,
    /// Clock ticks after boot at which the process started (field 22).
    pub start_time: u64,
}

impl ProcStat {
    pub fn read(pid: u32) -> Option<ProcStat> {
        parse_stat(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }

    /// A zombie or dead process has exited; only its parent's wait is missing.
    pub fn exited(&self) -> bool {
        matches!(self.state, 'Z' | 'X' | 'x')
    }
}

fn parse_stat(text: &str) -> Option<ProcStat> {
    // The command name (field 2) may contain spaces and parentheses; it ends at the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(ProcStat {
        state: fields.first()?.chars().next()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// Whether `pid` no longer runs (no such process, or a zombie).
pub fn process_gone(pid: u32) -> bool {
    ProcStat::read(pid).is_none_or(|s| s.exited())
}

/// The arguments of `pid`, from `/proc/PID/cmdline`.
pub fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|b| *b == 0)
            .filter(|a| !a.is_empty())
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .collect(),
    )
}

/// Whether `pid` lives in network namespace `ns` (same nsfs inode).
pub fn in_netns(pid: u32, ns: &str) -> bool {
    let theirs = fs::metadata(format!("/proc/{pid}/ns/net"));
    let ours = fs::metadata(Path::new(NETNS_DIR).join(ns));
    match (theirs, ours) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Mount points of this mount namespace at or below `path`.
pub fn mounts_under(path: &Path) -> Vec<PathBuf> {
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    parse_mount_points(&text)
        .into_iter()
        .filter(|m| m.starts_with(path))
        .collect()
}

fn parse_mount_points(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_octal(m)))
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = i + 3 < b.len()
            && b[i] == b'\\'
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c));
        let value = octal.then(|| {
            b[i + 1..i + 4]
                .iter()
                .fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'))
        });
        if let Some(v) = value.and_then(|v| u8::try_from(v).ok()) {
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Removes the directory tree at `path` (a missing one is fine), refusing when anything is
/// mounted at or below it.
pub fn remove_tree(path: &Path) -> Result<(), LabError> {
    if let Some(m) = mounts_under(path).first() {
        return Err(LabError::UnsafeRemove {
            path: path.to_path_buf(),
            reason: format!("{} is a mount point", m.display()),
        });
    }
    match fs::remove_dir_all(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(LabError::Io {
            action: "remove",
            path: path.to_path_buf(),
            source,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_with_odd_command_names() {
        let line = "1234 (a b) c)) S 1 1234 1234 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 \
                    1000 10 18446744073709551615 0 0 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0";
        assert_eq!(
            parse_stat(line),
            Some(ProcStat {
                state: 'S',
                start_time: 987654
            })
        );
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn own_process_is_visible() {
        let me = std::process::id();
        let s = ProcStat::read(me).unwrap();
        assert!(!s.exited());
        assert!(!process_gone(me));
        assert!(cmdline(me).is_some_and(|c| !c.is_empty()));
    }

    #[test]
    fn mountinfo_escapes() {
        let text = "36 35 98:0 /mnt1 /mnt/a\\040b rw,noatime master:1 - ext3 /dev/root rw\n\
                    37 35 98:0 / /proc rw - proc proc rw\n";
        assert_eq!(
            parse_mount_points(text),
            [PathBuf::from("/mnt/a b"), PathBuf::from("/proc")]
        );
        assert_eq!(unescape_octal("a\\134b\\011"), "a\\b\t");
        assert_eq!(unescape_octal("trailing\\04"), "trailing\\04");
    }

    #[test]
    fn remove_tree_refuses_mount_points() {
        // /proc is mounted on every Linux machine: removal of / must be refused.
        let e = remove_tree(Path::new("/")).unwrap_err();
        assert!(matches!(e, LabError::UnsafeRemove { .. }), "{e}");
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("a/b")).unwrap();
        remove_tree(&dir.path().join("a")).unwrap();
        assert!(!dir.path().join("a").exists());
        remove_tree(&dir.path().join("a")).unwrap();
    }

    #[test]
    fn failing_command_reports_everything() {
        let e = run(Path::new("/bin/sh"), &["-c", "echo oops >&2; exit 3"]).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("/bin/sh") && msg.contains("oops") && msg.contains('3'),
            "{msg}"
        );
    }
}
