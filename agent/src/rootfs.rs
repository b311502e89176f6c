//! Entering a host root: how one machine holds many lab hosts.
//!
//! `haop-agent --root DIR` makes DIR the host's `/`. Paths in requests resolve under it
//! ([`crate::paths::HostFs`]), and so must the paths inside the unit files the agent runs: an
//! etcd started with `--data-dir /var/lib/etcd` must write to DIR/var/lib/etcd, and two lab hosts'
//! keepalived must not share `/run/keepalived.pid`. So before it starts any thread, the agent
//! moves itself into DIR for real:
//!
//! 1. a private mount namespace (unshare), with mount propagation off, so nothing below leaks to
//!    the machine and everything disappears with the agent's last process;
//! 2. the machine's `/usr` bind-mounted read-only into DIR (with the merged-usr links `bin`, `sbin`,
//!    `lib`, `lib64`), except `/usr/local`, which stays the host's own and writable (uploaded
//!    binaries go there), and `/dev`, `/proc`, `/sys` bind-mounted, so programs from Debian's
//!    packages run unchanged (on a lab host `/proc/sys/net` is the host's network namespace);
//! 3. chroot into DIR.
//!
//! From then on the agent and everything it starts see DIR as `/`, and the agent's own
//! [`crate::paths::HostFs`] root is `/`. Needs root, as the lab does.

use std::path::{Path, PathBuf};

use nix::mount::{mount, MsFlags};

/// Errors entering a root; each names the path and the step.
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error("entering root {root}: {step}")]
    Step {
        root: String,
        step: String,
        #[source]
        source: nix::Error,
    },
    #[error("entering root {root}: {step}")]
    Io {
        root: String,
        step: String,
        #[source]
        source: std::io::Error,
    },
}

const SHARED_DIRS: &[&str] = &["usr"];
const MACHINE_VIEWS: &[&str] = &["dev", "proc", "sys"];
const MERGED_USR_LINKS: &[&str] = &["bin", "sbin", "lib", "lib64", "lib32", "libx32"];

/// Makes `root` this process's `/`. Call before any thread is started.
pub fn enter(root: &Path) -> Result<(), RootError> {
    let r = root.display().to_string();
    let nix_step = |step: &str| {
        let r = r.clone();
        let step = step.to_string();
        move |source| RootError::Step {
            root: r,
            step,
            source,
        }
    };
    let io_step = |step: String| {
        let r = r.clone();
        move |source| RootError::Io {
            root: r,
            step,
            source,
        }
    };
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(nix_step("unshare a mount namespace"))?;
    mount(
        None::<&str>,
        "/",
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(nix_step("make mounts private"))?;

    for name in MERGED_USR_LINKS {
        let host = Path::new("/").join(name);
        let inside = root.join(name);
        if let Ok(target) = std::fs::read_link(&host) {
            if std::fs::symlink_metadata(&inside).is_err() {
                std::os::unix::fs::symlink(&target, &inside)
                    .map_err(io_step(format!("link {}", inside.display())))?;
            }
        } else if host.is_dir() {
            bind(&host, &inside, true, &r)?;
        }
    }
    // The host's own /usr/local (where uploaded binaries go) must stay writable and belong to
    // this host: keep a handle on the root's usr/local before the machine's /usr covers it,
    // then mount it back over the read-only /usr/local.
    let local = root.join("usr/local");
    let handle = root.join(".haop-usr-local");
    std::fs::create_dir_all(&local).map_err(io_step(format!("create {}", local.display())))?;
    bind(&local, &handle, false, &r)?;
    for name in SHARED_DIRS {
        bind(&Path::new("/").join(name), &root.join(name), true, &r)?;
    }
    bind(&handle, &local, false, &r)?;
    nix::mount::umount2(&handle, nix::mount::MntFlags::MNT_DETACH)
        .map_err(nix_step("release the usr/local handle"))?;
    let _ = std::fs::remove_dir(&handle);
    for name in MACHINE_VIEWS {
        bind(&Path::new("/").join(name), &root.join(name), false, &r)?;
    }
    for (dir, mode) in [("tmp", 0o1777), ("run", 0o755), ("var/tmp", 0o1777)] {
        let p = root.join(dir);
        std::fs::create_dir_all(&p).map_err(io_step(format!("create {}", p.display())))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode))
            .map_err(io_step(format!("set mode of {}", p.display())))?;
    }
    nix::unistd::chroot(root).map_err(nix_step("chroot"))?;
    nix::unistd::chdir("/").map_err(nix_step("chdir /"))?;
    Ok(())
}

fn bind(from: &Path, to: &PathBuf, read_only: bool, root: &str) -> Result<(), RootError> {
    std::fs::create_dir_all(to).map_err(|source| RootError::Io {
        root: root.to_string(),
        step: format!("create {}", to.display()),
        source,
    })?;
    let err = |step: String| {
        move |source| RootError::Step {
            root: root.to_string(),
            step,
            source,
        }
    };
    mount(
        Some(from),
        to,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(err(format!("bind {} on {}", from.display(), to.display())))?;
    if read_only {
        mount(
            None::<&str>,
            to,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC,
            None::<&str>,
        )
        .map_err(err(format!("make {} read-only", to.display())))?;
    }
    Ok(())
}
