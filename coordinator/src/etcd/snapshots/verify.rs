//! Verification by restore: a snapshot is *good* only once a real etcd has served it.
//!
//! Why: etcd's trailing checksum proves the bytes arrived as etcd sent them, not that they
//! restore, nor that they hold what the cluster held (etcd upstream asks for exactly this check,
//! issue 21283; backup tools that skip it meet "snapshot missing hash" at restore time, when it
//! is too late). So verification does what a restore does, on the coordinator's machine, into
//! throwaway places: the snapshot is decrypted (every segment authenticated, the plaintext's
//! SHA-256 compared with the record) into a scratch directory of the state dir (0700), restored
//! there with `etcdutl snapshot restore` (etcd 3.5) or `etcdctl snapshot restore` (3.4) into a
//! scratch data dir, and served by a single-member etcd on loopback ports chosen free. That etcd
//! must answer, at the revision recorded when the snapshot was taken, the same key count and
//! the same `hashkv`, and its own revision must not be older. Anything else is a failed
//! verification, recorded with why (`haop etcd snapshot list` shows it) so that restore never
//! chooses it.
//!
//! What is an error and what is a failed verification: a snapshot that does not decrypt,
//! restore, start or compare is *failed* (recorded); missing tools or an unusable scratch
//! directory say nothing about the snapshot and are errors (nothing recorded).
//!
//! Lifecycle: [`Tools::find`] once, then [`verify`] per snapshot. The scratch directory and
//! the throwaway etcd belong to one call: the process is killed (its own process group, never
//! by name) and the directory removed when the call ends, on every path, and by `Drop` when
//! the call's future is dropped halfway.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::meta::{self, Meta, Verification};
use super::{Plaintext, SnapshotError};
use crate::etcd::api::{keyspace, scaled_timeout, Keyspace};
use crate::inventory::{EtcdBinary, Inventory};

/// Errors that say nothing about the snapshot: it was not verified, and nothing is recorded.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error(
        "verification needs etcd and etcdutl (3.5) or etcdctl (3.4) on this machine; none of \
         {} has them ({missing}). Install Debian's etcd-server and etcd-client, or put etcd \
         and etcdutl beside the etcd binary the inventory uploads",
        .searched.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", ")
    )]
    NoTools {
        searched: Vec<PathBuf>,
        missing: String,
    },
    #[error("cannot prepare the scratch directory {}", .dir.display())]
    Scratch {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot run {}", .program.display())]
    Spawn {
        program: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} has no record to compare a restore with (it was written before haop recorded snapshots); name a recorded snapshot", .path.display())]
    NoRecord { path: PathBuf },
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
}

/// How the snapshot is restored into a data dir.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RestoreTool {
    /// etcd 3.5 and later: `etcdutl snapshot restore`.
    Etcdutl(PathBuf),
    /// etcd 3.4: `ETCDCTL_API=3 etcdctl snapshot restore`.
    Etcdctl(PathBuf),
}

impl RestoreTool {
    pub fn program(&self) -> &Path {
        match self {
            RestoreTool::Etcdutl(p) | RestoreTool::Etcdctl(p) => p,
        }
    }
}

/// The etcd programs verification runs, from one directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Tools {
    pub etcd: PathBuf,
    pub restore: RestoreTool,
}

impl Tools {
    /// The first directory that has `etcd` and `etcdutl` or `etcdctl`, looking (in order) beside
    /// the etcd binary the inventory uploads (the cluster's own version), beside the inventory's
    /// etcd path when this machine has it too, in `PATH`, then in `/usr/local/bin` and
    /// `/usr/bin`.
    pub fn find(inventory: &Inventory) -> Result<Tools, VerifyError> {
        let mut dirs: Vec<PathBuf> = Vec::new();
        match &inventory.etcd.binary {
            EtcdBinary::Upload { file, .. } | EtcdBinary::Path(file) => {
                if let Some(d) = file.parent() {
                    dirs.push(d.to_path_buf());
                }
            }
        }
        if let Some(path) = std::env::var_os("PATH") {
            dirs.extend(std::env::split_paths(&path).filter(|d| d.is_absolute()));
        }
        dirs.extend(["/usr/local/bin", "/usr/bin"].map(PathBuf::from));
        let mut seen = Vec::new();
        for d in dirs {
            if seen.contains(&d) {
                continue;
            }
            seen.push(d.clone());
            if let Some(t) = Self::in_dir(&d) {
                return Ok(t);
            }
        }
        let any = |name: &str| seen.iter().any(|d| is_program(&d.join(name)));
        let mut missing = Vec::new();
        if !any("etcd") {
            missing.push("no etcd");
        }
        if !any("etcdutl") && !any("etcdctl") {
            missing.push("no etcdutl or etcdctl");
        }
        if missing.is_empty() {
            missing.push("not in one directory");
        }
        Err(VerifyError::NoTools {
            searched: seen,
            missing: missing.join(", "),
        })
    }

    /// `etcd` with `etcdutl` (preferred) or `etcdctl` in `dir`.
    pub fn in_dir(dir: &Path) -> Option<Tools> {
        let etcd = dir.join("etcd");
        if !is_program(&etcd) {
            return None;
        }
        let restore = if is_program(&dir.join("etcdutl")) {
            RestoreTool::Etcdutl(dir.join("etcdutl"))
        } else if is_program(&dir.join("etcdctl")) {
            RestoreTool::Etcdctl(dir.join("etcdctl"))
        } else {
            return None;
        };
        Some(Tools { etcd, restore })
    }
}

fn is_program(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// A directory of the state dir for one verification, 0700, removed with everything in it
/// when dropped.
#[derive(Debug)]
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn create(state_dir: &Path) -> Result<Scratch, VerifyError> {
        let base = state_dir.join("tmp");
        let err = |dir: &Path| {
            let dir = dir.to_path_buf();
            move |source| VerifyError::Scratch { dir, source }
        };
        crate::fsio::create_private_dir(&base).map_err(|e| VerifyError::Scratch {
            dir: base.clone(),
            source: std::io::Error::other(crate::error_chain(&e)),
        })?;
        for attempt in 0..100u32 {
            let mut nonce = [0u8; 4];
            let _ = getrandom::fill(&mut nonce);
            let dir = base.join(format!(
                "verify-{}-{}-{attempt}",
                std::process::id(),
                hex::encode(nonce)
            ));
            use std::os::unix::fs::DirBuilderExt;
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => return Ok(Scratch { dir }),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => return Err(err(&dir)(e)),
            }
        }
        Err(err(&base)(std::io::Error::other("no free scratch name")))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// What one verification found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub path: PathBuf,
    pub verification: Verification,
}

/// Verifies the recorded snapshot at `path` with `tools` in a scratch directory of
/// `state_dir`, and records the outcome in its record. A failed verification is an `Ok`
/// report with `ok: false`; see the module doc for what is an error instead.
pub async fn verify(state_dir: &Path, tools: &Tools, path: &Path) -> Result<Report, VerifyError> {
    let Some(meta) = meta::read(path).map_err(SnapshotError::from)? else {
        return Err(VerifyError::NoRecord {
            path: path.to_path_buf(),
        });
    };
    let started = Instant::now();
    let scratch = Scratch::create(state_dir)?;
    let outcome = restore_and_compare(state_dir, tools, path, &meta, &scratch).await;
    drop(scratch);
    let (ok, detail, restored, etcd_version) = match outcome {
        Ok(Compared {
            restored,
            version,
            differences,
        }) if differences.is_empty() => (
            true,
            format!(
                "restored with {} and served by etcd {version}: revision {} with {} keys and \
                 hashkv {:08x}, as recorded",
                tools.restore.program().display(),
                meta.revision,
                meta.key_count,
                meta.hash_kv
            ),
            Some(restored),
            Some(version),
        ),
        Ok(Compared {
            restored,
            version,
            differences,
        }) => (
            false,
            format!("restored, but not as recorded: {}", differences.join("; ")),
            Some(restored),
            Some(version),
        ),
        Err(Outcome::Failed(why)) => (false, why, None, None),
        Err(Outcome::Error(e)) => return Err(e),
    };
    let (at, at_unix) = meta::now();
    let verification = Verification {
        at,
        at_unix,
        ok,
        detail,
        restored,
        etcd_version,
        seconds: (started.elapsed().as_millis() as f64) / 1000.0,
    };
    meta::update(path, |m| m.verification = Some(verification.clone()))
        .map_err(SnapshotError::from)?;
    if ok {
        tracing::info!(path = %path.display(), seconds = verification.seconds, "snapshot verified");
    } else {
        tracing::warn!(path = %path.display(), why = %verification.detail, "snapshot failed verification");
    }
    Ok(Report {
        path: path.to_path_buf(),
        verification,
    })
}

/// What the restored etcd answered.
struct Compared {
    restored: Keyspace,
    version: String,
    differences: Vec<String>,
}

/// Why a verification did not get to compare.
enum Outcome {
    /// The snapshot's fault: recorded.
    Failed(String),
    /// Not the snapshot's: not recorded.
    Error(VerifyError),
}

impl From<VerifyError> for Outcome {
    fn from(e: VerifyError) -> Self {
        Outcome::Error(e)
    }
}

async fn restore_and_compare(
    state_dir: &Path,
    tools: &Tools,
    path: &Path,
    meta: &Meta,
    scratch: &Scratch,
) -> Result<Compared, Outcome> {
    // Decrypt (authenticated, checked against the record) into the scratch dir.
    let plain = match Plaintext::open(state_dir, path).await {
        Ok(p) => p,
        Err(e @ (SnapshotError::Crypt(_) | SnapshotError::NotAsRecorded { .. })) => {
            return Err(Outcome::Failed(crate::error_chain(&e)))
        }
        Err(e) => return Err(Outcome::Error(e.into())),
    };
    let db = scratch.dir.join("snapshot.db");
    {
        let plain = plain.clone();
        let db = db.clone();
        tokio::task::spawn_blocking(move || plain.write_to(&db))
            .await
            .map_err(|e| {
                Outcome::Error(VerifyError::Scratch {
                    dir: PathBuf::from("."),
                    source: std::io::Error::other(e),
                })
            })?
            .map_err(|e| Outcome::Error(e.into()))?;
    }
    let size = plain.size as i64;
    let data = scratch.dir.join("data");
    let peer_port = free_port().map_err(|source| VerifyError::Scratch {
        dir: scratch.dir.clone(),
        source,
    })?;
    let client_port = free_port().map_err(|source| VerifyError::Scratch {
        dir: scratch.dir.clone(),
        source,
    })?;
    let peer = format!("http://127.0.0.1:{peer_port}");
    let client_url = format!("http://127.0.0.1:{client_port}");
    let initial = format!("verify={peer}");

    // Restore into the scratch data dir, as restore does on a host.
    let mut cmd = hardened(tools.restore.program());
    if let RestoreTool::Etcdctl(_) = tools.restore {
        cmd.env("ETCDCTL_API", "3");
    }
    cmd.args(["snapshot", "restore"])
        .arg(&db)
        .arg("--data-dir")
        .arg(&data)
        .args(["--name", "verify", "--initial-cluster", &initial])
        .args(["--initial-advertise-peer-urls", &peer])
        .current_dir(&scratch.dir);
    let out = run(
        cmd,
        tools.restore.program(),
        scaled_timeout(Duration::from_secs(120), size),
    )
    .await?;
    if let Err(why) = out {
        return Err(Outcome::Failed(format!(
            "{} snapshot restore failed: {why}",
            tools.restore.program().display()
        )));
    }
    let _ = std::fs::remove_file(&db);

    // Serve it, alone, on loopback.
    let log = scratch.dir.join("etcd.log");
    let log_file = std::fs::File::create(&log).map_err(|source| VerifyError::Scratch {
        dir: scratch.dir.clone(),
        source,
    })?;
    let mut cmd = hardened(&tools.etcd);
    cmd.args(["--name", "verify", "--data-dir"])
        .arg(&data)
        .args(["--listen-client-urls", &client_url])
        .args(["--advertise-client-urls", &client_url])
        .args(["--listen-peer-urls", &peer])
        .args(["--initial-advertise-peer-urls", &peer])
        .args(["--initial-cluster", &initial])
        .stdout(Stdio::null())
        .stderr(Stdio::from(log_file))
        .current_dir(&scratch.dir);
    let mut etcd = Throwaway::start(cmd, &tools.etcd)?;
    let deadline = scaled_timeout(Duration::from_secs(60), size);
    let compared = etcd
        .compare(&client_url, meta, deadline)
        .await
        .map_err(|why| Outcome::Failed(format!("{why}{}", log_tail(&log))));
    etcd.stop().await;
    compared
}

/// A command by absolute path, with a cleared environment and `LC_ALL=C.UTF-8`.
fn hardened(program: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program);
    cmd.env_clear()
        .env("LC_ALL", "C.UTF-8")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .process_group(0);
    cmd
}

/// Runs `cmd` to its end within `timeout`: `Ok(Ok(()))` on success, `Ok(Err(why))` when it
/// failed (status and stderr), `Err` when it could not be run.
async fn run(
    mut cmd: tokio::process::Command,
    program: &Path,
    timeout: Duration,
) -> Result<Result<(), String>, VerifyError> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let child = cmd.spawn().map_err(|source| VerifyError::Spawn {
        program: program.to_path_buf(),
        source,
    })?;
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(out)) if out.status.success() => Ok(Ok(())),
        Ok(Ok(out)) => Ok(Err(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
        Ok(Err(source)) => Err(VerifyError::Spawn {
            program: program.to_path_buf(),
            source,
        }),
        Err(_) => Ok(Err(format!("no end within {} s", timeout.as_secs()))),
    }
}

/// A loopback port nothing listens on now.
fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}

/// The last lines of etcd's log, for a failure's detail.
fn log_tail(log: &Path) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return String::new();
    }
    let tail = &lines[lines.len().saturating_sub(3)..];
    format!(" (etcd's log ends: {})", tail.join(" | "))
}

/// The throwaway etcd: its own process group, killed when stopped or dropped.
struct Throwaway {
    child: tokio::process::Child,
}

impl Throwaway {
    fn start(mut cmd: tokio::process::Command, program: &Path) -> Result<Throwaway, VerifyError> {
        let child = cmd.spawn().map_err(|source| VerifyError::Spawn {
            program: program.to_path_buf(),
            source,
        })?;
        Ok(Throwaway { child })
    }

    /// Waits (within `deadline`) until it answers, then compares its keyspace at the recorded
    /// revision with the record.
    async fn compare(
        &mut self,
        url: &str,
        meta: &Meta,
        deadline: Duration,
    ) -> Result<Compared, String> {
        let started = Instant::now();
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(10).max(deadline));
        let mut last = String::from("it did not answer");
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Err(format!("the restored etcd exited ({status})"));
            }
            if started.elapsed() > deadline {
                return Err(format!(
                    "the restored etcd did not answer within {} s: {last}",
                    deadline.as_secs()
                ));
            }
            let attempt = async {
                let mut c = etcd_client::Client::connect([url], Some(options.clone())).await?;
                let status = c.status().await?;
                let current = keyspace(&mut c, None).await?;
                let at = keyspace(&mut c, Some(meta.revision)).await;
                Ok::<_, etcd_client::Error>((status.version().to_string(), current, at))
            };
            match tokio::time::timeout(Duration::from_secs(10), attempt).await {
                Ok(Ok((version, current, at))) => {
                    let mut differences = Vec::new();
                    if current.revision < meta.revision {
                        differences.push(format!(
                            "its revision is {}, older than the recorded {}",
                            current.revision, meta.revision
                        ));
                    }
                    let restored = match at {
                        Ok(k) => k,
                        Err(e) => {
                            differences.push(format!(
                                "it cannot answer at revision {}: {e}",
                                meta.revision
                            ));
                            current
                        }
                    };
                    if differences.is_empty() {
                        if restored.key_count != meta.key_count {
                            differences.push(format!(
                                "{} keys at revision {}, recorded {}",
                                restored.key_count, meta.revision, meta.key_count
                            ));
                        }
                        if restored.hash_kv != meta.hash_kv {
                            differences.push(format!(
                                "hashkv {:08x} at revision {}, recorded {:08x}",
                                restored.hash_kv, meta.revision, meta.hash_kv
                            ));
                        }
                    }
                    return Ok(Compared {
                        restored,
                        version,
                        differences,
                    });
                }
                Ok(Err(e)) => last = e.to_string(),
                Err(_) => last = "a request took more than 10 s".into(),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills it and waits for it to be gone.
    async fn stop(&mut self) {
        let _ = self.child.kill().await;
    }
}

impl Drop for Throwaway {
    fn drop(&mut self) {
        // `kill_on_drop` sends SIGKILL; this covers the group, should etcd have forked.
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_program(dir: &Path, name: &str) {
        use std::os::unix::fs::PermissionsExt;
        let p = dir.join(name);
        std::fs::write(&p, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn tools_come_from_one_directory_preferring_etcdutl() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(Tools::in_dir(dir.path()), None);
        fake_program(dir.path(), "etcd");
        assert_eq!(Tools::in_dir(dir.path()), None);
        fake_program(dir.path(), "etcdctl");
        assert_eq!(
            Tools::in_dir(dir.path()).unwrap().restore,
            RestoreTool::Etcdctl(dir.path().join("etcdctl"))
        );
        fake_program(dir.path(), "etcdutl");
        let t = Tools::in_dir(dir.path()).unwrap();
        assert_eq!(t.restore, RestoreTool::Etcdutl(dir.path().join("etcdutl")));
        assert_eq!(t.etcd, dir.path().join("etcd"));
    }

    #[test]
    fn tools_beside_the_uploaded_binary_come_first() {
        let dir = tempfile::tempdir().unwrap();
        for p in ["etcd", "etcdutl"] {
            fake_program(dir.path(), p);
        }
        let mut inv = crate::inventory::Inventory::new("c".try_into().unwrap(), Vec::new());
        inv.etcd.binary = EtcdBinary::Upload {
            file: dir.path().join("etcd"),
            sha256: crate::inventory::Sha256Hex::try_from("ab".repeat(32).as_str()).unwrap(),
        };
        let t = Tools::find(&inv).unwrap();
        assert_eq!(t.etcd, dir.path().join("etcd"));
        inv.etcd.binary = EtcdBinary::Path(PathBuf::from("/nonexistent/etcd"));
        // Elsewhere: whatever this machine has, or an error that says what is missing where.
        match Tools::find(&inv) {
            Ok(t) => assert!(t.etcd.is_absolute()),
            Err(e) => assert!(e.to_string().contains("/usr/bin"), "{e}"),
        }
    }

    #[test]
    fn scratch_dirs_are_private_and_removed() {
        use std::os::unix::fs::PermissionsExt;
        let state = tempfile::tempdir().unwrap();
        let s = Scratch::create(state.path()).unwrap();
        let dir = s.dir.clone();
        std::fs::write(dir.join("snapshot.db"), b"x").unwrap();
        assert_eq!(
            std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777,
            0o700
        );
        drop(s);
        assert!(!dir.exists());
    }
}
