//! Declared data directories, and the fenced wipe that only they allow.
//!
//! Wiping an etcd member's data is the most dangerous thing the agent does: done to the wrong
//! directory, or to a member that is still running, it loses a cluster's data. So the agent wipes
//! only a directory that the coordinator declared for a unit (`EnsureUnit.data_dirs`), only while
//! that unit is stopped, and never `/` or anything a symlink leads to
//! outside the managed roots. Declarations persist in `<state_dir>/declared.json`
//! (`{"etcd.service": ["/var/lib/etcd"]}`), so they survive an agent restart; `haop lab crash`
//! reads the same file.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::files::{self, FileError, Ownership};
use crate::names::UnitName;
use crate::paths::{HostFs, HostPath, PathError};

/// Why a wipe was refused or failed.
#[derive(Debug, thiserror::Error)]
pub enum WipeError {
    #[error("{path} is not a data directory declared for {unit} (declared: {declared})")]
    NotDeclared {
        unit: String,
        path: String,
        declared: String,
    },
    #[error("unit {unit} is {state}; stop it before wiping {path}")]
    UnitRunning {
        unit: String,
        path: String,
        state: String,
    },
    #[error("refusing to wipe {path}: {reason}")]
    Forbidden { path: String, reason: &'static str },
    #[error(transparent)]
    Path(#[from] PathError),
    #[error(transparent)]
    File(#[from] FileError),
    #[error("declared data dirs in {path} are unreadable")]
    Corrupt {
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

/// The persisted map from unit to its data directories.
#[derive(Debug)]
pub struct DeclaredDirs {
    file: PathBuf,
}

impl DeclaredDirs {
    pub fn new(fs: &HostFs, state_dir: &HostPath) -> Self {
        DeclaredDirs {
            file: fs.real(state_dir).join("declared.json"),
        }
    }

    pub fn load(&self) -> Result<BTreeMap<String, Vec<String>>, WipeError> {
        match std::fs::read(&self.file) {
            Ok(data) => serde_json::from_slice(&data).map_err(|source| WipeError::Corrupt {
                path: self.file.display().to_string(),
                source,
            }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
            Err(e) => Err(files::io("read", &self.file)(e).into()),
        }
    }

    /// Records `dirs` as the unit's data directories; answers whether that changed anything.
    pub fn declare(&self, unit: &UnitName, dirs: &[HostPath]) -> Result<bool, WipeError> {
        let mut all = self.load()?;
        let wanted: Vec<String> = dirs.iter().map(|d| d.to_string()).collect();
        let current = all.get(unit.as_str()).cloned().unwrap_or_default();
        if current == wanted {
            return Ok(false);
        }
        if wanted.is_empty() {
            all.remove(unit.as_str());
        } else {
            all.insert(unit.to_string(), wanted);
        }
        files::prepare_parent(&self.file, true)?;
        let json = serde_json::to_vec_pretty(&all).expect("a map of strings serializes");
        files::write_atomic(
            &self.file,
            &json,
            Ownership {
                mode: 0o600,
                uid: 0,
                gid: 0,
            },
        )?;
        Ok(true)
    }

    pub fn of(&self, unit: &UnitName) -> Result<Vec<String>, WipeError> {
        Ok(self.load()?.remove(unit.as_str()).unwrap_or_default())
    }
}

/// What a wipe did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wiped {
    pub changed: bool,
    pub moved_to: Option<HostPath>,
}

/// Checks every fence, then moves `path` aside (or deletes it). `unit_running` is the unit's
/// state as the service manager reports it, `None` when stopped.
pub fn wipe(
    fs: &HostFs,
    declared: &DeclaredDirs,
    unit: &UnitName,
    path: &HostPath,
    unit_running: Option<String>,
    delete: bool,
    now: time::OffsetDateTime,
) -> Result<Wiped, WipeError> {
    if path.is_root() {
        return Err(WipeError::Forbidden {
            path: path.to_string(),
            reason: "it is the root directory",
        });
    }
    let dirs = declared.of(unit)?;
    if !dirs.iter().any(|d| d == &path.to_string()) {
        return Err(WipeError::NotDeclared {
            unit: unit.to_string(),
            path: path.to_string(),
            declared: if dirs.is_empty() {
                "none".into()
            } else {
                dirs.join(", ")
            },
        });
    }
    if let Some(state) = unit_running {
        return Err(WipeError::UnitRunning {
            unit: unit.to_string(),
            path: path.to_string(),
            state,
        });
    }
    let (resolved, real) = fs.resolve(path)?;
    if resolved != *path {
        return Err(WipeError::Forbidden {
            path: path.to_string(),
            reason: "it is or passes through a symlink; wipe the real directory",
        });
    }
    match std::fs::symlink_metadata(&real) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Wiped {
                changed: false,
                moved_to: None,
            })
        }
        Err(e) => return Err(files::io("inspect", &real)(e).into()),
        Ok(m) if !m.is_dir() => {
            return Err(WipeError::Forbidden {
                path: path.to_string(),
                reason: "it is not a directory",
            })
        }
        Ok(_) => {}
    }
    if delete {
        std::fs::remove_dir_all(&real).map_err(files::io("delete", &real))?;
        files::sync_dir(&real)?;
        return Ok(Wiped {
            changed: true,
            moved_to: None,
        });
    }
    let stamp = now
        .format(time::macros::format_description!(
            "[year][month][day]T[hour][minute][second]Z"
        ))
        .unwrap_or_else(|_| now.unix_timestamp().to_string());
    let mut target = HostPath::try_from(format!("{path}.wiped-{stamp}"))?;
    let mut n = 1;
    while fs.real(&target).exists() {
        target = HostPath::try_from(format!("{path}.wiped-{stamp}.{n}"))?;
        n += 1;
    }
    let real_target = fs.real(&target);
    std::fs::rename(&real, &real_target).map_err(files::io("move aside", &real))?;
    files::sync_dir(&real)?;
    Ok(Wiped {
        changed: true,
        moved_to: Some(target),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hp(s: &str) -> HostPath {
        HostPath::try_from(s).unwrap()
    }

    fn setup() -> (tempfile::TempDir, HostFs, DeclaredDirs, UnitName) {
        let dir = tempfile::tempdir().unwrap();
        let fs = HostFs::new(
            dir.path(),
            vec![
                hp("/var/lib/etcd"),
                hp("/var/lib/haop-agent"),
                hp("/etc/haop"),
            ],
        );
        let declared = DeclaredDirs::new(&fs, &hp("/var/lib/haop-agent"));
        let unit = UnitName::try_from("etcd.service").unwrap();
        std::fs::create_dir_all(dir.path().join("var/lib/etcd/member")).unwrap();
        (dir, fs, declared, unit)
    }

    #[test]
    fn only_declared_dirs_of_stopped_units_are_moved_aside() {
        let (dir, fs, declared, unit) = setup();
        let now = time::OffsetDateTime::UNIX_EPOCH;
        let p = hp("/var/lib/etcd");
        let e = wipe(&fs, &declared, &unit, &p, None, false, now).unwrap_err();
        assert!(matches!(e, WipeError::NotDeclared { .. }), "{e}");

        assert!(declared.declare(&unit, std::slice::from_ref(&p)).unwrap());
        assert!(!declared.declare(&unit, std::slice::from_ref(&p)).unwrap());

        let e = wipe(&fs, &declared, &unit, &p, Some("active".into()), false, now).unwrap_err();
        assert!(e.to_string().contains("stop it"), "{e}");
        assert!(dir.path().join("var/lib/etcd/member").exists());

        let w = wipe(&fs, &declared, &unit, &p, None, false, now).unwrap();
        assert!(w.changed);
        assert_eq!(
            w.moved_to.unwrap().to_string(),
            "/var/lib/etcd.wiped-19700101T000000Z"
        );
        assert!(!dir.path().join("var/lib/etcd").exists());
        assert!(dir
            .path()
            .join("var/lib/etcd.wiped-19700101T000000Z/member")
            .exists());
        // Again: nothing to do.
        assert!(
            !wipe(&fs, &declared, &unit, &p, None, false, now)
                .unwrap()
                .changed
        );
    }

    #[test]
    fn symlink_escape_and_root_are_refused() {
        let (dir, fs, declared, unit) = setup();
        let now = time::OffsetDateTime::UNIX_EPOCH;
        std::fs::remove_dir_all(dir.path().join("var/lib/etcd")).unwrap();
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("precious"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("var/lib/etcd")).unwrap();
        declared.declare(&unit, &[hp("/var/lib/etcd")]).unwrap();
        assert!(wipe(&fs, &declared, &unit, &hp("/var/lib/etcd"), None, true, now).is_err());
        assert!(outside.path().join("precious").exists());

        declared.declare(&unit, &[hp("/")]).unwrap();
        let e = wipe(&fs, &declared, &unit, &hp("/"), None, true, now).unwrap_err();
        assert!(e.to_string().contains("root directory"), "{e}");
    }

    #[test]
    fn delete_removes() {
        let (dir, fs, declared, unit) = setup();
        declared.declare(&unit, &[hp("/var/lib/etcd")]).unwrap();
        let w = wipe(
            &fs,
            &declared,
            &unit,
            &hp("/var/lib/etcd"),
            None,
            true,
            time::OffsetDateTime::UNIX_EPOCH,
        )
        .unwrap();
        assert!(w.changed && w.moved_to.is_none());
        assert_eq!(
            std::fs::read_dir(dir.path().join("var/lib"))
                .unwrap()
                .count(),
            1
        );
    }
}
