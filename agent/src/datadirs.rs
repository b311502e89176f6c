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

/// A moved-aside copy of a declared data directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WipedCopy {
    pub path: HostPath,
    pub data_dir: String,
    pub bytes: u64,
    pub moved_unix_ms: i64,
    /// Where it is on the real filesystem (beside the declared directory, as WipeDataDir put
    /// it).
    real: PathBuf,
}

/// The moved-aside copies (`PATH.wiped-*`) of every data directory declared for `unit`,
/// newest first.
pub fn wiped_copies(
    fs: &HostFs,
    declared: &DeclaredDirs,
    unit: &UnitName,
) -> Result<Vec<WipedCopy>, WipeError> {
    let mut out = Vec::new();
    for dir in declared.of(unit)? {
        let path = HostPath::try_from(dir.clone())?;
        let real = fs.real(&path);
        let (Some(parent), Some(name)) = (real.parent(), real.file_name()) else {
            continue;
        };
        let prefix = format!("{}.wiped-", name.to_string_lossy());
        let entries = match std::fs::read_dir(parent) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(files::io("list", parent)(e).into()),
        };
        for entry in entries.flatten() {
            let file_name = entry.file_name().to_string_lossy().into_owned();
            let Some(stamp) = file_name.strip_prefix(&prefix) else {
                continue;
            };
            let Ok(meta) = entry.path().symlink_metadata() else {
                continue;
            };
            if !meta.is_dir() {
                continue;
            }
            let copy = HostPath::try_from(format!("{dir}.wiped-{stamp}"))?;
            out.push(WipedCopy {
                bytes: crate::usage::tree_bytes(&entry.path()).unwrap_or(0),
                moved_unix_ms: stamp_unix_ms(stamp).unwrap_or_else(|| {
                    use std::os::unix::fs::MetadataExt;
                    meta.mtime() * 1000
                }),
                path: copy,
                data_dir: dir.clone(),
                real: entry.path(),
            });
        }
    }
    out.sort_by(|a, b| {
        (b.moved_unix_ms, b.path.to_string()).cmp(&(a.moved_unix_ms, a.path.to_string()))
    });
    Ok(out)
}

/// Deletes the copies of `unit`'s data directories beyond the newest `keep` of each directory
/// that were moved aside at least `min_age_ms` before `now_ms`; answers (present, removed).
pub fn prune_wiped(
    fs: &HostFs,
    declared: &DeclaredDirs,
    unit: &UnitName,
    keep: usize,
    min_age_ms: i64,
    now_ms: i64,
) -> Result<(Vec<WipedCopy>, Vec<WipedCopy>), WipeError> {
    let mut present = Vec::new();
    let mut removed = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for copy in wiped_copies(fs, declared, unit)? {
        let rank = seen.entry(copy.data_dir.clone()).or_default();
        *rank += 1;
        if *rank <= keep || now_ms - copy.moved_unix_ms < min_age_ms {
            present.push(copy);
            continue;
        }
        // A directory, never a link someone put in place of a copy (remove_dir_all does not
        // follow the links inside it).
        if !std::fs::symlink_metadata(&copy.real).is_ok_and(|m| m.is_dir()) {
            present.push(copy);
            continue;
        }
        std::fs::remove_dir_all(&copy.real).map_err(files::io("delete", &copy.real))?;
        removed.push(copy);
    }
    if let Some(first) = removed.first() {
        files::sync_dir(&first.real)?;
    }
    Ok((present, removed))
}

/// The time in a copy's name (`YYYYMMDDTHHMMSSZ`, maybe followed by `.N`), Unix ms.
fn stamp_unix_ms(stamp: &str) -> Option<i64> {
    let stamp = stamp.split('.').next()?;
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    let t = time::PrimitiveDateTime::parse(stamp, format).ok()?;
    Some((t.assume_utc().unix_timestamp_nanos() / 1_000_000) as i64)
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

    #[test]
    fn wiped_copies_are_listed_newest_first_and_pruned_by_count_and_age() {
        let (_dir, fs, declared, unit) = setup();
        declared.declare(&unit, &[hp("/var/lib/etcd")]).unwrap();
        let stamps = ["20261201T000000Z", "20261203T000000Z", "20261202T000000Z"];
        for s in stamps {
            let p = fs.real(&hp(&format!("/var/lib/etcd.wiped-{s}")));
            std::fs::create_dir_all(p.join("member")).unwrap();
            std::fs::write(p.join("member/db"), vec![0u8; 100]).unwrap();
        }
        // Not a copy: another name, and a file.
        std::fs::create_dir_all(fs.real(&hp("/var/lib/etcdX.wiped-20261201T000000Z"))).unwrap();
        let list = wiped_copies(&fs, &declared, &unit).unwrap();
        let names: Vec<String> = list.iter().map(|c| c.path.to_string()).collect();
        assert_eq!(
            names,
            [
                "/var/lib/etcd.wiped-20261203T000000Z",
                "/var/lib/etcd.wiped-20261202T000000Z",
                "/var/lib/etcd.wiped-20261201T000000Z"
            ]
        );
        assert!(list.iter().all(|c| c.bytes == 100));
        let dec3 = stamp_unix_ms("20261203T000000Z").unwrap();
        // Keep one; the copy of Dec 2 is younger than two days on Dec 3 and stays.
        let (present, removed) =
            prune_wiped(&fs, &declared, &unit, 1, 2 * 86_400_000, dec3 + 1).unwrap();
        assert_eq!(present.len(), 2);
        assert_eq!(removed.len(), 1);
        assert_eq!(
            removed[0].path.to_string(),
            "/var/lib/etcd.wiped-20261201T000000Z"
        );
        assert!(!fs.real(&removed[0].path).exists());
        assert!(fs
            .real(&hp("/var/lib/etcdX.wiped-20261201T000000Z"))
            .exists());
        let (present, _) = prune_wiped(&fs, &declared, &unit, 0, 0, dec3 + 1).unwrap();
        assert!(present.is_empty());
    }
}
