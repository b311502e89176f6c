//! Host paths and the agent's view of the host filesystem.
//!
//! Every path in a request is a *host path*: absolute, as it would be written on the host
//! (`/etc/etcd.env`). [`HostPath`] validates its shape (absolute, no `..`, no NUL, no empty or
//! `.` components). [`HostFs`] then maps it onto the real filesystem:
//!
//! * under the agent's root (`--root DIR`, "/" on a real host), as `systemctl --root` does;
//! * resolving symlinks itself, inside the root, as the host would see them, and refusing a
//!   path whose resolved form leaves the managed roots (a symlink escape);
//! * refusing paths outside the managed roots from the agent's config.
//!
//! The check is made against the resolved path, so `/etc/../root/.ssh` never reaches this far and
//! `/var/lib/etcd -> /root` is caught when it is used.

use std::fmt;
use std::path::{Component, Path, PathBuf};

/// Why a path was refused or could not be resolved.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    #[error("invalid path {path:?}: {reason}")]
    Invalid { path: String, reason: &'static str },
    #[error("path {path} is outside the agent's managed roots ({roots})")]
    OutsideManagedRoots { path: String, roots: String },
    #[error("path {path} leads through a symlink to {target}, outside the agent's managed roots")]
    SymlinkEscape { path: String, target: String },
    #[error("path {path} has too many levels of symlinks")]
    SymlinkLoop { path: String },
    #[error("cannot inspect {path}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// An absolute, normalized host path: no `..`, `.`, empty components or NUL bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostPath(PathBuf);

impl HostPath {
    pub fn as_path(&self) -> &Path {
        &self.0
    }

    /// The path relative to `/`, for joining onto a root.
    pub fn relative(&self) -> &Path {
        self.0.strip_prefix("/").unwrap_or(&self.0)
    }

    pub fn is_root(&self) -> bool {
        self.0 == Path::new("/")
    }

    pub fn starts_with(&self, other: &HostPath) -> bool {
        self.0.starts_with(&other.0)
    }

    pub fn parent(&self) -> Option<HostPath> {
        self.0.parent().map(|p| HostPath(p.to_path_buf()))
    }

    pub fn join(&self, name: &str) -> Result<HostPath, PathError> {
        HostPath::try_from(format!("{}/{}", self.0.display(), name).as_str())
    }

    pub fn file_name(&self) -> Option<&str> {
        self.0.file_name().and_then(|n| n.to_str())
    }
}

impl TryFrom<&str> for HostPath {
    type Error = PathError;
    fn try_from(s: &str) -> Result<Self, PathError> {
        let invalid = |reason| PathError::Invalid {
            path: s.to_string(),
            reason,
        };
        if s.is_empty() {
            return Err(invalid("is empty"));
        }
        if s.len() > 4096 {
            return Err(invalid("is longer than 4096 bytes"));
        }
        if s.contains('\0') {
            return Err(invalid("contains a NUL byte"));
        }
        if !s.starts_with('/') {
            return Err(invalid("must be absolute"));
        }
        let trimmed = if s.len() > 1 {
            s.trim_end_matches('/')
        } else {
            s
        };
        if trimmed.contains("//") {
            return Err(invalid("has an empty component"));
        }
        for c in Path::new(trimmed).components() {
            match c {
                Component::RootDir | Component::Normal(_) => {}
                Component::ParentDir => return Err(invalid("must not contain '..'")),
                Component::CurDir => return Err(invalid("must not contain '.'")),
                Component::Prefix(_) => return Err(invalid("has a prefix")),
            }
        }
        if trimmed.split('/').any(|c| c == ".") {
            return Err(invalid("must not contain '.'"));
        }
        Ok(HostPath(PathBuf::from(if trimmed.is_empty() {
            "/"
        } else {
            trimmed
        })))
    }
}

impl TryFrom<String> for HostPath {
    type Error = PathError;
    fn try_from(s: String) -> Result<Self, PathError> {
        HostPath::try_from(s.as_str())
    }
}

impl fmt::Display for HostPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.display().fmt(f)
    }
}

/// The host filesystem as the agent may touch it: a root and the managed roots under it.
#[derive(Debug, Clone)]
pub struct HostFs {
    root: PathBuf,
    managed: Vec<HostPath>,
}

impl HostFs {
    pub fn new(root: impl Into<PathBuf>, managed: Vec<HostPath>) -> Self {
        HostFs {
            root: root.into(),
            managed,
        }
    }

    /// The directory host paths are resolved under.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn managed_roots(&self) -> &[HostPath] {
        &self.managed
    }

    /// Where a host path lives on the real filesystem, without any check. For the agent's own
    /// files (its state), never for request paths.
    pub fn real(&self, path: &HostPath) -> PathBuf {
        self.root.join(path.relative())
    }

    /// Resolves a request path: follows symlinks inside the root and checks that the result
    /// stays under a managed root. Returns the resolved host path and its real location.
    pub fn resolve(&self, path: &HostPath) -> Result<(HostPath, PathBuf), PathError> {
        self.check_managed(path)?;
        let resolved = self.follow_symlinks(path)?;
        if !self.is_managed(&resolved) {
            return Err(PathError::SymlinkEscape {
                path: path.to_string(),
                target: resolved.to_string(),
            });
        }
        let real = self.real(&resolved);
        Ok((resolved, real))
    }

    /// Whether `path` lies under (or is) a managed root, by its shape alone.
    pub fn is_managed(&self, path: &HostPath) -> bool {
        self.managed.iter().any(|m| path.starts_with(m))
    }

    /// Whether `path` is one of the managed roots itself.
    pub fn is_managed_root(&self, path: &HostPath) -> bool {
        self.managed.iter().any(|m| m == path)
    }

    fn check_managed(&self, path: &HostPath) -> Result<(), PathError> {
        if self.is_managed(path) {
            Ok(())
        } else {
            Err(PathError::OutsideManagedRoots {
                path: path.to_string(),
                roots: self
                    .managed
                    .iter()
                    .map(|m| m.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            })
        }
    }

    /// Resolves every symlink along `path` the way the host would, with the root as `/`.
    /// Components that do not exist yet are kept as they are.
    fn follow_symlinks(&self, path: &HostPath) -> Result<HostPath, PathError> {
        let mut hops = 0;
        let mut done = PathBuf::from("/");
        let mut todo: Vec<String> = path
            .relative()
            .components()
            .rev()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        while let Some(part) = todo.pop() {
            if part == ".." {
                done.pop();
                continue;
            }
            if part == "." || part.is_empty() {
                continue;
            }
            let candidate = done.join(&part);
            let real = self
                .root
                .join(candidate.strip_prefix("/").unwrap_or(&candidate));
            match std::fs::symlink_metadata(&real) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    hops += 1;
                    if hops > 40 {
                        return Err(PathError::SymlinkLoop {
                            path: path.to_string(),
                        });
                    }
                    let target = std::fs::read_link(&real).map_err(|source| PathError::Io {
                        path: path.to_string(),
                        source,
                    })?;
                    if target.is_absolute() {
                        done = PathBuf::from("/");
                    }
                    for c in target.components().rev() {
                        match c {
                            Component::RootDir | Component::Prefix(_) => {}
                            other => todo.push(other.as_os_str().to_string_lossy().into_owned()),
                        }
                    }
                }
                Ok(_) => done = candidate,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => done = candidate,
                Err(source) => {
                    return Err(PathError::Io {
                        path: path.to_string(),
                        source,
                    })
                }
            }
        }
        HostPath::try_from(done.to_string_lossy().as_ref())
    }
}

/// The managed roots a new agent gets when its config names none: where the runbook writes.
pub fn default_managed_roots() -> Vec<HostPath> {
    [
        "/etc/hosts",
        "/etc/haop",
        "/etc/etcd",
        "/etc/etcd.env",
        "/etc/etcd.bootstrap.env",
        "/etc/kubernetes",
        "/etc/keepalived",
        "/etc/containerd",
        "/etc/systemd/system",
        "/etc/modules-load.d",
        "/etc/sysctl.d",
        "/etc/fstab",
        "/etc/cni",
        "/opt/cni",
        "/usr/local/bin",
        "/var/lib/etcd",
        "/var/lib/haop",
        "/var/lib/kubelet",
        "/run/haop",
    ]
    .iter()
    .map(|p| HostPath::try_from(*p).expect("default managed roots are valid"))
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(s: &str) -> HostPath {
        HostPath::try_from(s).unwrap()
    }

    #[test]
    fn host_path_shape() {
        assert_eq!(hp("/etc/etcd.env").to_string(), "/etc/etcd.env");
        assert_eq!(hp("/var/lib/etcd/").to_string(), "/var/lib/etcd");
        assert!(hp("/").is_root());
        for bad in [
            "",
            "etc/passwd",
            "/etc/../root",
            "/etc/./x",
            "/etc//x",
            "/etc/\0x",
            "..",
            "/..",
        ] {
            assert!(HostPath::try_from(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn no_traversal_outside_managed_roots() {
        let dir = tempfile::tempdir().unwrap();
        let fs = HostFs::new(dir.path(), vec![hp("/etc/haop"), hp("/var/lib/etcd")]);
        assert!(fs.resolve(&hp("/etc/haop/a.conf")).is_ok());
        assert!(matches!(
            fs.resolve(&hp("/etc/passwd")),
            Err(PathError::OutsideManagedRoots { .. })
        ));
        // A sibling that shares a prefix is not inside.
        assert!(fs.resolve(&hp("/etc/haopx/a")).is_err());
        assert!(fs.resolve(&hp("/")).is_err());
    }

    #[test]
    fn symlink_escape_is_refused_and_inside_link_is_followed() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("var/lib")).unwrap();
        std::fs::create_dir_all(root.join("etc/haop/real")).unwrap();
        std::os::unix::fs::symlink("/root", root.join("var/lib/etcd")).unwrap();
        std::os::unix::fs::symlink("real", root.join("etc/haop/link")).unwrap();
        std::os::unix::fs::symlink("../../../../../../etc", root.join("etc/haop/up")).unwrap();
        let fs = HostFs::new(root, vec![hp("/etc/haop"), hp("/var/lib/etcd")]);

        let err = fs.resolve(&hp("/var/lib/etcd/member")).unwrap_err();
        assert!(matches!(err, PathError::SymlinkEscape { .. }), "{err}");
        assert!(err.to_string().contains("/root/member"));

        let (resolved, real) = fs.resolve(&hp("/etc/haop/link/x")).unwrap();
        assert_eq!(resolved, hp("/etc/haop/real/x"));
        assert_eq!(real, root.join("etc/haop/real/x"));

        // `..` in a link target cannot climb above the root, and still lands outside.
        assert!(matches!(
            fs.resolve(&hp("/etc/haop/up/shadow")),
            Err(PathError::SymlinkEscape { .. })
        ));
    }

    #[test]
    fn symlink_loops_end() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("etc/haop")).unwrap();
        std::os::unix::fs::symlink("b", root.join("etc/haop/a")).unwrap();
        std::os::unix::fs::symlink("a", root.join("etc/haop/b")).unwrap();
        let fs = HostFs::new(root, vec![hp("/etc/haop")]);
        assert!(matches!(
            fs.resolve(&hp("/etc/haop/a")),
            Err(PathError::SymlinkLoop { .. })
        ));
    }
}
