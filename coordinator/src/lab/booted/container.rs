//! One booted host on this machine: its overlay root, its identity files, its nspawn process,
//! and commands run inside it. See [`super`] for why and the lifecycle.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::super::record::LabHost;
use super::super::sys::{self, ProcStat};
use super::super::LabError;
use super::{BootedHost, LabSsh};

/// systemd-nspawn (Debian's systemd-container).
pub const NSPAWN: &str = "/usr/bin/systemd-nspawn";
const MOUNT: &str = "/usr/bin/mount";
const UMOUNT: &str = "/usr/bin/umount";
const SSH_KEYGEN: &str = "/usr/bin/ssh-keygen";
const NSENTER: &str = "/usr/bin/nsenter";
const TIMEOUT: &str = "/usr/bin/timeout";
/// Units masked on every booted host (see [`write_identity`]).
const MASKED_UNITS: [&str; 1] = ["systemd-update-utmp-runlevel.service"];

fn io_err(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> LabError {
    let path = path.to_path_buf();
    move |source| LabError::Io {
        action,
        path,
        source,
    }
}

fn tool(path: &'static str, package: &'static str) -> Result<&'static Path, LabError> {
    let p = Path::new(path);
    if p.is_file() {
        Ok(p)
    } else {
        Err(LabError::ToolMissing {
            tool: package,
            tried: path.to_string(),
        })
    }
}

/// The lab's SSH client key (made once per lab); answers its public half.
pub fn client_key(ssh: &LabSsh, lab_dir: &Path) -> Result<String, LabError> {
    let dir = ssh.identity.parent().unwrap_or(lab_dir);
    fs::create_dir_all(dir).map_err(io_err("create", dir))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .map_err(io_err("set the mode of", dir))?;
    if !ssh.identity.is_file() {
        let keygen = tool(SSH_KEYGEN, "ssh-keygen (openssh-client)")?;
        let path = ssh.identity.display().to_string();
        sys::run(
            keygen,
            &[
                "-q", "-t", "ed25519", "-N", "", "-C", "haop-lab", "-f", &path,
            ],
        )?;
    }
    let public = ssh.identity.with_extension("pub");
    fs::read_to_string(&public).map_err(io_err("read", &public))
}

/// Mounts the overlay of `b` (lower: the cached root), unless it is mounted already.
pub fn mount_overlay(root: &Path, b: &BootedHost) -> Result<(), LabError> {
    for d in [&b.upper, &b.work, &b.merged] {
        fs::create_dir_all(d).map_err(io_err("create", d))?;
    }
    if is_mount_point(&b.merged) {
        return Ok(());
    }
    let options = format!(
        "lowerdir={},upperdir={},workdir={}",
        root.display(),
        b.upper.display(),
        b.work.display()
    );
    let merged = b.merged.display().to_string();
    sys::run(
        tool(MOUNT, "mount (util-linux)")?,
        &["-t", "overlay", "overlay", "-o", &options, &merged],
    )?;
    Ok(())
}

/// Unmounts the overlay of `b` when it is mounted.
pub fn unmount_overlay(b: &BootedHost) -> Result<(), LabError> {
    // nspawn may leave its own mounts below the root in this namespace; the deepest go first.
    let mut mounts = sys::mounts_under(&b.merged);
    mounts.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    for m in mounts {
        let path = m.display().to_string();
        sys::run(tool(UMOUNT, "umount (util-linux)")?, &[&path])?;
        info!(host = %b.name, mount = %path, "unmounted");
    }
    Ok(())
}

fn is_mount_point(p: &Path) -> bool {
    sys::mounts_under(p).iter().any(|m| m == p)
}

/// Writes what makes the host itself into its (mounted) root: hostname, hosts, machine id,
/// its own SSH host key and sshd settings, and the lab's key as root's authorized key. Answers
/// the host's public key line (`ssh-ed25519 AAAA...`).
pub fn write_identity(
    host: &LabHost,
    b: &BootedHost,
    client_pub: &str,
) -> Result<String, LabError> {
    let r = &b.merged;
    let write = |rel: &str, text: &str, mode: u32| -> Result<(), LabError> {
        let p = r.join(rel);
        if let Some(d) = p.parent() {
            fs::create_dir_all(d).map_err(io_err("create", d))?;
        }
        Ok(crate::fsio::write_atomic(&p, text.as_bytes(), mode)?)
    };
    write("etc/hostname", &format!("{}\n", host.name), 0o644)?;
    write(
        "etc/hosts",
        &format!(
            "# Written by `haop lab up --systemd`.\n127.0.0.1\tlocalhost\n::1\tlocalhost \
             ip6-localhost ip6-loopback\n{}\t{}\n",
            host.address, host.name
        ),
        0o644,
    )?;
    let mut id = [0u8; 16];
    getrandom::fill(&mut id).map_err(|_| LabError::Io {
        action: "draw a machine id for",
        path: r.join("etc/machine-id"),
        source: std::io::Error::other("no randomness"),
    })?;
    write("etc/machine-id", &format!("{}\n", hex::encode(id)), 0o444)?;
    write(
        "etc/ssh/sshd_config.d/haop-lab.conf",
        "# Written by `haop lab up --systemd`: one host key, keys only.\n\
         HostKey /etc/ssh/ssh_host_ed25519_key\nPasswordAuthentication no\n\
         PermitRootLogin prohibit-password\n",
        0o644,
    )?;
    // Masked: it records the runlevel in utmp, which no lab host needs, and on a loaded machine
    // it sometimes fails in a container (seen here once in four boots), leaving systemd
    // `degraded` for no reason that concerns haop.
    for unit in MASKED_UNITS {
        let link = r.join("etc/systemd/system").join(unit);
        if fs::symlink_metadata(&link).is_err() {
            std::os::unix::fs::symlink("/dev/null", &link).map_err(io_err("mask", &link))?;
        }
    }
    let key = r.join("etc/ssh/ssh_host_ed25519_key");
    if !key.is_file() {
        let path = key.display().to_string();
        let comment = format!("root@{}", host.name);
        sys::run(
            tool(SSH_KEYGEN, "ssh-keygen (openssh-client)")?,
            &["-q", "-t", "ed25519", "-N", "", "-C", &comment, "-f", &path],
        )?;
    }
    let ssh_dir = r.join("root/.ssh");
    fs::create_dir_all(&ssh_dir).map_err(io_err("create", &ssh_dir))?;
    fs::set_permissions(&ssh_dir, fs::Permissions::from_mode(0o700))
        .map_err(io_err("set the mode of", &ssh_dir))?;
    write("root/.ssh/authorized_keys", client_pub, 0o600)?;
    let public = key.with_extension("pub");
    let line = fs::read_to_string(&public).map_err(io_err("read", &public))?;
    // `ssh-ed25519 AAAA... comment` -> without the comment.
    Ok(line
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" "))
}

/// Starts `b`'s container in `host`'s namespace, detached (own process group, output to the
/// console log). Answers nspawn's pid and start time.
pub fn spawn(host: &LabHost, b: &BootedHost) -> Result<(u32, Option<u64>), LabError> {
    let nspawn = tool(NSPAWN, "systemd-nspawn (apt-get install systemd-container)")?;
    if let Some(d) = b.console_log.parent() {
        fs::create_dir_all(d).map_err(io_err("create", d))?;
    }
    let log = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&b.console_log)
        .map_err(io_err("open", &b.console_log))?;
    let log_err = log.try_clone().map_err(io_err("open", &b.console_log))?;
    let mut cmd = sys::hardened(nspawn);
    cmd.arg("--quiet")
        .arg(format!("--directory={}", b.merged.display()))
        .arg("--boot")
        .arg("--register=no")
        .arg("--keep-unit")
        .arg(format!(
            "--network-namespace-path=/run/netns/{}",
            host.namespace
        ))
        .arg(format!("--machine={}", b.machine))
        .arg(format!("--hostname={}", host.name))
        // The namespace is the host's own: keepalived there adds and removes the VIP, which
        // nspawn's default capability set (no CAP_NET_ADMIN) would refuse.
        .arg("--capability=CAP_NET_ADMIN")
        .arg("--link-journal=no")
        .arg("--console=read-only")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .process_group(0);
    let child = cmd.spawn().map_err(|source| LabError::Spawn {
        program: NSPAWN.to_string(),
        source,
    })?;
    let pid = child.id();
    let start_time = ProcStat::read(pid).map(|s| s.start_time);
    super::super::agents::detach(child);
    info!(host = %host.name, pid, machine = %b.machine, "container started");
    Ok((pid, start_time))
}

/// The recorded nspawn pid of `b`, when it still is that nspawn.
pub fn nspawn_process(b: &BootedHost) -> Option<u32> {
    let pid = b.nspawn_pid?;
    let stat = ProcStat::read(pid)?;
    if stat.exited() || b.nspawn_start_time.is_some_and(|t| t != stat.start_time) {
        return None;
    }
    let want = format!("--directory={}", b.merged.display());
    sys::cmdline(pid)?.contains(&want).then_some(pid)
}

/// PID 1 of `b`'s container, as a pid of this machine: the child of nspawn that is pid 1 in
/// its own pid namespace.
pub fn leader(b: &BootedHost) -> Option<u32> {
    let nspawn = nspawn_process(b)?;
    children(nspawn)
        .into_iter()
        .find(|c| ns_pids(*c).is_some_and(|p| p.len() >= 2 && p.last() == Some(&1)))
}

fn children(pid: u32) -> Vec<u32> {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|t| fs::read_to_string(t.path().join("children")).ok())
        .flat_map(|s| {
            s.split_whitespace()
                .filter_map(|p| p.parse().ok())
                .collect::<Vec<u32>>()
        })
        .collect()
}

/// The `NSpid` line of `/proc/PID/status`: the pid in each nested pid namespace.
fn ns_pids(pid: u32) -> Option<Vec<u32>> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_ns_pids(&status)
}

fn parse_ns_pids(status: &str) -> Option<Vec<u32>> {
    let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
    line["NSpid:".len()..]
        .split_whitespace()
        .map(|p| p.parse().ok())
        .collect()
}

/// The pid on this machine of the process that is `inner` inside the container whose PID 1 is
/// `leader` (systemd reports main pids as its container sees them).
pub fn machine_pid(leader: u32, inner: u32) -> Option<u32> {
    let their_ns = fs::metadata(format!("/proc/{leader}/ns/pid")).ok()?;
    for e in fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let same_ns = fs::metadata(format!("/proc/{pid}/ns/pid"))
            .is_ok_and(|m| m.dev() == their_ns.dev() && m.ino() == their_ns.ino());
        if same_ns && ns_pids(pid).is_some_and(|p| p.last() == Some(&inner)) {
            return Some(pid);
        }
    }
    None
}

/// A command that runs `command` inside the container of `b` (all its namespaces, through
/// nsenter), with a plain environment.
pub fn exec_command(
    b: &BootedHost,
    command: &[std::ffi::OsString],
) -> Result<std::process::Command, LabError> {
    let leader = leader(b).ok_or_else(|| LabError::AgentNotRunning {
        host: b.name.clone(),
    })?;
    let mut cmd = sys::hardened(tool(NSENTER, "nsenter (util-linux)")?);
    cmd.env("HOME", "/root")
        .arg("--target")
        .arg(leader.to_string())
        .args([
            "--mount", "--uts", "--ipc", "--net", "--pid", "--cgroup", "--root", "--wd", "--",
        ])
        .args(command);
    Ok(cmd)
}

/// Waits until systemd in `b`'s container finished booting and runs with no failed unit.
pub fn wait_running(b: &BootedHost, timeout: Duration) -> Result<(), LabError> {
    let deadline = Instant::now() + timeout;
    let leader = loop {
        if let Some(l) = leader(b) {
            break l;
        }
        if nspawn_process(b).is_none() {
            return Err(boot_failed(b, "nspawn exited"));
        }
        if Instant::now() >= deadline {
            return Err(boot_failed(b, "no PID 1 yet"));
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let mut retried = false;
    // Poll: right after the leader appears, systemd may not have exec'd or opened its bus yet,
    // and `is-system-running` then fails or says "offline"; "starting" means not yet either.
    loop {
        let out = sys::hardened(tool(TIMEOUT, "timeout (coreutils)")?)
            .args(["10", NSENTER, "--target"])
            .arg(leader.to_string())
            .args(["--all", "/usr/bin/systemctl", "is-system-running"])
            .stdin(Stdio::null())
            .output()
            .map_err(|source| LabError::Spawn {
                program: NSENTER.to_string(),
                source,
            })?;
        let state = String::from_utf8_lossy(&out.stdout).trim().to_string();
        match state.as_str() {
            "running" => {
                info!(host = %b.name, "systemd is running");
                return Ok(());
            }
            "degraded" | "maintenance" | "stopping" => {
                let failed = in_container(leader, &["--failed", "--no-legend", "--plain"]);
                let units: Vec<&str> = failed
                    .lines()
                    .filter_map(|l| l.split_whitespace().next())
                    .collect();
                // A boot unit that lost a race on a loaded machine (seen here: the utmp
                // record, static device nodes) gets one more start, as an operator would give it.
                if !retried && state == "degraded" && !units.is_empty() {
                    retried = true;
                    warn!(host = %b.name, units = ?units, "units failed at boot; starting them once more");
                    let mut args = vec!["restart"];
                    args.extend(units.iter().copied());
                    in_container(leader, &args);
                    continue;
                }
                return Err(boot_failed(
                    b,
                    &format!("systemd is {state}; failed units: {failed}"),
                ));
            }
            _ => {}
        }
        if nspawn_process(b).is_none() {
            return Err(boot_failed(b, "nspawn exited"));
        }
        if Instant::now() >= deadline {
            let last = format!(
                "not running in time: systemd is {state:?} ({})",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return Err(boot_failed(b, &last));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Makes `/proc/sys/net` writable inside `b`'s container (nspawn mounts `/proc/sys` read-only
/// when it did not make the network namespace itself). Those sysctls belong to the host's own
/// network namespace, which is what the agent's lab kernel mode applies (forwarding, bridge
/// settings); the rest of `/proc/sys` stays read-only: it is the machine's kernel.
pub fn writable_net_sysctls(b: &BootedHost) -> Result<(), LabError> {
    let leader = leader(b).ok_or_else(|| LabError::AgentNotRunning {
        host: b.name.clone(),
    })?;
    let nsenter = tool(NSENTER, "nsenter (util-linux)")?;
    let target = leader.to_string();
    for args in [
        ["--bind", "/proc/sys/net", "/proc/sys/net"].as_slice(),
        ["-o", "remount,bind,rw", "/proc/sys/net"].as_slice(),
    ] {
        let mut all = vec!["--target", target.as_str(), "--mount", MOUNT];
        all.extend_from_slice(args);
        sys::run(nsenter, &all)?;
    }
    Ok(())
}

/// Runs `systemctl ARGS` in the container whose PID 1 is `leader`; its stdout (empty when it
/// could not run).
fn in_container(leader: u32, args: &[&str]) -> String {
    sys::hardened(Path::new(NSENTER))
        .arg("--target")
        .arg(leader.to_string())
        .args(["--all", "/usr/bin/systemctl"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

fn boot_failed(b: &BootedHost, state: &str) -> LabError {
    LabError::BootFailed {
        host: b.name.clone(),
        state: state.to_string(),
        log: Box::new(super::super::LogTail {
            path: b.console_log.clone(),
            tail: super::super::agents::log_tail(&b.console_log, 20),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nspid_lines() {
        let status = "Name:\tsystemd\nPid:\t13363\nNSpid:\t13363\t1\nNStgid:\t13363\t1\n";
        assert_eq!(parse_ns_pids(status), Some(vec![13363, 1]));
        assert_eq!(parse_ns_pids("Name:\tx\n"), None);
    }

    #[test]
    fn this_process_is_found_by_its_own_pid() {
        // In this process's own pid namespace, its inner pid is its pid.
        let me = std::process::id();
        assert_eq!(machine_pid(me, me), Some(me));
    }
}
