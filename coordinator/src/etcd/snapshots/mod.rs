//! Snapshots a restore can count on: taken, recorded, encrypted, verified, copied, kept.
//!
//! Every membership change is preceded by a snapshot (a rule of the quorum planner: see README
//! "Recovery"), `haop etcd snapshot save` takes one on demand and `haop etcd snapshot schedule`
//! on an interval; `restore` reads them back. They live in `<state-dir>/snapshots/<cluster>/`,
//! one file per snapshot named by time and origin so that the names sort by age
//! (`20261207T161900.123Z-etcd1.snap`), each with its record beside it (`.json`, [`meta`]).
//!
//! What makes one worth restoring, in order:
//! * [`take`]: the member's revision and key count are read, then the snapshot streams from
//!   the same member while it computes `hashkv` up to that revision; the snapshot is checked
//!   against etcd's own trailing checksum and encrypted as it arrives ([`crypt`]): no
//!   plaintext snapshot ever touches the state dir's disk. All three are recorded with it.
//! * [`verify`]: it is restored into a scratch directory and served by a throwaway etcd on
//!   loopback, whose revision, key count and `hashkv` must equal the record's. Only then is it
//!   *verified*; `restore` chooses only verified snapshots by default.
//! * [`copies`]: it is copied (still encrypted) to `etcd.snapshots.copies` hosts, so that losing
//!   the operator's machine loses no snapshot (`haop etcd restore --from-host`).
//! * [`prune`] applies `etcd.retention` (count and age), never removing the newest snapshot nor
//!   the newest verified one; [`schedule`] does all of it every `etcd.snapshots.interval`.
//!
//! Files written before haop kept records (`*.db`, plaintext) are listed as unrecorded, pruned
//! like the others, and never chosen by restore unless named with `--from`.

pub mod copies;
pub mod crypt;
pub mod meta;
pub mod schedule;
pub mod verify;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use self::crypt::{CryptError, Encryptor, SnapshotKey};
use self::meta::{Meta, MetaError, META_FORMAT};
use super::api::{EtcdApiError, EtcdClient, TempSnapshot};
use super::catchup::human_bytes;
use crate::inventory::{Inventory, Retention};

/// The extension of haop's snapshots (encrypted, with a record).
pub const SNAPSHOT_EXT: &str = "snap";
/// The extension of snapshots written before haop encrypted and recorded them.
pub const LEGACY_EXT: &str = "db";

/// Errors of taking, listing and pruning snapshots.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    #[error(transparent)]
    Etcd(#[from] EtcdApiError),
    #[error(
        "{} has {} free, and the snapshot needs about {} (the database of {endpoint}); \
         nothing was written: free space there or save elsewhere with --out",
        .dir.display(), human_bytes(*.available), human_bytes(*.needed)
    )]
    NoRoom {
        dir: PathBuf,
        available: u64,
        needed: u64,
        endpoint: String,
    },
    #[error("cannot use {}", .dir.display())]
    Io {
        dir: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Crypt(#[from] CryptError),
    #[error(transparent)]
    Meta(#[from] MetaError),
    #[error("{} is not the snapshot its record describes: {detail}", .path.display())]
    NotAsRecorded { path: PathBuf, detail: String },
    #[error("the keyspace of {endpoint} could not be recorded before the snapshot")]
    Keyspace {
        endpoint: String,
        #[source]
        source: EtcdApiError,
    },
}

/// What [`save`] did.
#[derive(Debug, Clone)]
pub struct Saved {
    pub path: PathBuf,
    pub meta: Meta,
    /// Snapshots the retention removed afterwards (a save into the state dir only).
    pub removed: Vec<PathBuf>,
}

/// The member a snapshot will come from: the first that answers its status, with its
/// inventory name, database size and version.
#[derive(Debug, Clone)]
pub struct Source {
    pub endpoint: String,
    pub member: String,
    pub db_size: i64,
    pub version: String,
}

/// The first member of `inventory` that answers, in file order.
pub async fn first_answering(
    client: &EtcdClient,
    inventory: &Inventory,
) -> Result<Source, EtcdApiError> {
    let hosts = inventory.etcd_hosts();
    let endpoints = inventory.etcd_client_urls();
    let statuses = client.statuses(&endpoints).await;
    let mut first_err = None;
    for ((host, endpoint), status) in hosts.iter().zip(&endpoints).zip(statuses) {
        match status {
            Ok(s) => {
                return Ok(Source {
                    endpoint: endpoint.clone(),
                    member: host.name.as_str().to_string(),
                    db_size: s.db_size,
                    version: s.version,
                })
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    Err(first_err.unwrap_or(EtcdApiError::NoEndpoints))
}

/// `haop etcd snapshot save`: a snapshot from the first member that answers, taken by [`take`]
/// into `out` (default: a new file in the state dir), checked for room first; `progress` hears
/// the bytes received and the database's size. A snapshot saved in the state dir is followed
/// by the retention.
pub async fn save(
    state_dir: &Path,
    inventory: &Inventory,
    out: Option<PathBuf>,
    progress: &(dyn Fn(u64, Option<u64>) + Sync),
) -> Result<Saved, SnapshotError> {
    let endpoints = inventory.etcd_client_urls();
    let client = EtcdClient::connect(state_dir, &endpoints, Duration::from_secs(5)).await?;
    let source = first_answering(&client, inventory).await?;
    let key = SnapshotKey::load_or_create(state_dir)?;
    let cluster = inventory.cluster.as_str();
    let in_state_dir = out.is_none();
    let path = match out {
        Some(p) => p,
        None => {
            new_snapshot_path(state_dir, cluster, "manual").map_err(|source| SnapshotError::Io {
                dir: snapshot_dir(state_dir, cluster),
                source,
            })?
        }
    };
    check_room(&path, &source)?;
    let db = source.db_size.max(0) as u64;
    let meta = take(&client, &source, &key, cluster, &path, &|bytes| {
        progress(bytes, Some(db))
    })
    .await?;
    let removed = if in_state_dir {
        prune(state_dir, cluster, &inventory.etcd.retention)
    } else {
        Vec::new()
    };
    Ok(Saved {
        path,
        meta,
        removed,
    })
}

/// Copies the recorded snapshot at `path` to `etcd.snapshots.copies` hosts (see
/// [`copies::replicate`]), with haop's admin identity from the state dir.
pub async fn copy_to_hosts(
    state_dir: &Path,
    inventory: &Inventory,
    path: &Path,
    progress: &(dyn Fn(String) + Sync),
) -> Result<copies::Replicated, copies::CopyError> {
    let key = SnapshotKey::load(state_dir)?;
    let agents = agents(state_dir, inventory)?;
    copies::replicate(
        inventory,
        &agents,
        &key,
        path,
        inventory.etcd.snapshots.copies,
        progress,
    )
    .await
}

/// After a verification: the records of the snapshot's copies on hosts brought up to date
/// ([`copies::refresh_indexes`]); nothing to do for a snapshot without copies.
pub async fn refresh_copies(
    state_dir: &Path,
    inventory: &Inventory,
    path: &Path,
    progress: &(dyn Fn(String) + Sync),
) -> Result<(), copies::CopyError> {
    if meta::read(path)?.is_none_or(|m| m.copies.is_empty()) {
        return Ok(());
    }
    let key = SnapshotKey::load(state_dir)?;
    let agents = agents(state_dir, inventory)?;
    copies::refresh_indexes(inventory, &agents, &key, path, progress).await
}

/// `haop etcd snapshot prune`: the retention in the state dir, then on every host's copies.
/// Answers the snapshots removed here and the copies removed on hosts.
pub async fn prune_everywhere(
    state_dir: &Path,
    inventory: &Inventory,
    progress: &(dyn Fn(String) + Sync),
) -> Result<(Vec<PathBuf>, Vec<(String, String)>), copies::CopyError> {
    let retention = &inventory.etcd.retention;
    let removed = prune(state_dir, inventory.cluster.as_str(), retention);
    let key = match SnapshotKey::load(state_dir) {
        Ok(k) => k,
        // Never encrypted anything: no host holds a copy.
        Err(CryptError::KeyMissing { .. }) => return Ok((removed, Vec::new())),
        Err(e) => return Err(e.into()),
    };
    let agents = agents(state_dir, inventory)?;
    let on_hosts = copies::prune_hosts(inventory, &agents, &key, retention, progress).await;
    Ok((removed, on_hosts))
}

/// The agents of `inventory` with haop's admin identity.
fn agents(
    state_dir: &Path,
    inventory: &Inventory,
) -> Result<crate::agent::Agents, copies::CopyError> {
    let trust = crate::trust::Trust::load(state_dir)?;
    Ok(crate::agent::Agents::new(
        std::sync::Arc::new(trust),
        inventory,
    ))
}

/// Refuses before anything is written when the filesystem of `path` cannot hold a snapshot of
/// `source`'s database (with a margin).
pub fn check_room(path: &Path, source: &Source) -> Result<(), SnapshotError> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."))
        .to_path_buf();
    let available = available_bytes(&dir).map_err(|source| SnapshotError::Io {
        dir: dir.clone(),
        source,
    })?;
    let db = source.db_size.max(0) as u64;
    let needed = db + db / 10 + 16 * 1024 * 1024;
    if available < needed {
        return Err(SnapshotError::NoRoom {
            dir,
            available,
            needed,
            endpoint: source.endpoint.clone(),
        });
    }
    Ok(())
}

/// Takes a snapshot of `source` into `path`: its revision and key count recorded first, then
/// etcd's snapshot streamed (checked against its trailing SHA-256 and encrypted under `key` as
/// it arrives, into a temp file put in place only once whole) while the same member computes
/// `hashkv` up to that revision; then the record beside it. The snapshot holds that revision
/// or a later one, so a restore of it answers the same count and hash there. `progress` hears
/// the bytes received.
pub async fn take(
    client: &EtcdClient,
    source: &Source,
    key: &SnapshotKey,
    cluster: &str,
    path: &Path,
    progress: &(dyn Fn(u64) + Sync),
) -> Result<Meta, SnapshotError> {
    let keyspace_err = |e| SnapshotError::Keyspace {
        endpoint: source.endpoint.clone(),
        source: e,
    };
    let (revision, key_count) = client
        .count_keys_of(&source.endpoint)
        .await
        .map_err(keyspace_err)?;
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|source| SnapshotError::Io {
            dir: dir.to_path_buf(),
            source,
        })?;
    }
    let mut tmp = TempSnapshot::create(path)?;
    let tmp_path = tmp.path().to_path_buf();
    let what = path.display().to_string();
    let io_err = |action: &'static str| {
        let path = tmp_path.clone();
        move |e: CryptError| EtcdApiError::SnapshotIo {
            action,
            path,
            source: std::io::Error::other(crate::error_chain(&e)),
        }
    };
    let (streamed, file_sha256, file_size, (hash_kv, compact_revision)) = {
        let file = HashingWriter::new(std::io::BufWriter::new(tmp.file_mut()));
        let mut enc = Encryptor::new(key, file, &what)?;
        // The hash reads the member's whole key bucket, as the snapshot does: both at once, so
        // an operation waits for the longer of the two, not their sum.
        let mut sink = |bytes: &[u8]| enc.write(bytes).map_err(io_err("encrypt into"));
        let (streamed, hash) = tokio::join!(
            client.snapshot_into(&source.endpoint, &mut sink, progress),
            client.hash_kv_of(&source.endpoint, revision, source.db_size)
        );
        let streamed = streamed?;
        let hash = hash.map_err(keyspace_err)?;
        let hashed = enc.finish()?;
        let (buffered, sha, size) = hashed.finish();
        buffered.into_inner().map_err(|e| {
            io_err("write")(CryptError::Io {
                op: "flush",
                what: what.clone(),
                source: e.into_error(),
            })
        })?;
        (streamed, sha, size, hash)
    };
    tmp.persist(path)?;
    let (taken_at, taken_unix) = meta::now();
    let meta = Meta {
        format: META_FORMAT,
        cluster: cluster.to_string(),
        taken_at,
        taken_unix,
        member: source.member.clone(),
        endpoint: source.endpoint.clone(),
        etcd_version: Some(source.version.clone()).filter(|v| !v.is_empty()),
        revision,
        key_count,
        hash_kv,
        compact_revision,
        size: streamed.size,
        sha256: streamed.sha256,
        encrypted: true,
        key_id: Some(key.id()),
        file_size,
        file_sha256,
        copies: Vec::new(),
        verification: None,
    };
    meta::write(path, &meta)?;
    tracing::info!(
        member = %source.member,
        path = %path.display(),
        revision = meta.revision,
        keys = meta.key_count,
        size = meta.size,
        "etcd snapshot saved, encrypted"
    );
    Ok(meta)
}

/// A writer that hashes (SHA-256) and counts what passes through it.
struct HashingWriter<W: Write> {
    inner: W,
    hasher: sha2::Sha256,
    bytes: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter {
            inner,
            hasher: <sha2::Sha256 as sha2::Digest>::new(),
            bytes: 0,
        }
    }

    /// The writer, the hex SHA-256 and the count of everything written.
    fn finish(self) -> (W, String, u64) {
        (
            self.inner,
            hex::encode(sha2::Digest::finalize(self.hasher)),
            self.bytes,
        )
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        sha2::Digest::update(&mut self.hasher, &buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Where the state dir keeps a cluster's snapshots: `<state-dir>/snapshots/<cluster>/`.
pub fn snapshot_dir(state_dir: &Path, cluster: &str) -> PathBuf {
    state_dir.join("snapshots").join(cluster)
}

/// A new snapshot file in [`snapshot_dir`] (created when missing), named by time and `tag`.
pub fn new_snapshot_path(state_dir: &Path, cluster: &str, tag: &str) -> std::io::Result<PathBuf> {
    let dir = snapshot_dir(state_dir, cluster);
    std::fs::create_dir_all(&dir)?;
    let stamp = time::OffsetDateTime::now_utc()
        .format(time::macros::format_description!(
            "[year][month][day]T[hour][minute][second].[subsecond digits:3]Z"
        ))
        .unwrap_or_default();
    Ok(dir.join(format!("{stamp}-{tag}.{SNAPSHOT_EXT}")))
}

/// The snapshot files of the cluster (haop's and older plain ones), oldest first (their names
/// sort by time).
pub fn list(state_dir: &Path, cluster: &str) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(snapshot_dir(state_dir, cluster)) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| is_snapshot_file(p))
        .collect();
    files.sort();
    files
}

fn is_snapshot_file(p: &Path) -> bool {
    p.extension()
        .is_some_and(|x| x == SNAPSHOT_EXT || x == LEGACY_EXT)
        && !p
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'))
}

/// Where a snapshot stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    /// Restored and found equal to its record.
    Verified,
    /// Its latest verification failed, or the file no longer matches its record.
    Failed,
    /// Recorded, not verified yet.
    Unverified,
    /// No record: written before haop kept them, or its record is unreadable.
    Unrecorded,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Verified => "verified",
            State::Failed => "failed",
            State::Unverified => "unverified",
            State::Unrecorded => "unrecorded",
        }
    }
}

/// One snapshot of the state dir with its record.
#[derive(Debug, Clone, Serialize)]
pub struct Entry {
    /// The file's name.
    pub name: String,
    pub path: PathBuf,
    /// Its size on disk now.
    pub file_size: u64,
    pub modified_unix: i64,
    pub state: State,
    /// Why it failed, or why it has no record.
    pub why: Option<String>,
    pub meta: Option<Meta>,
}

impl Entry {
    /// Reads the record of the snapshot at `path` and judges it.
    pub fn read(path: &Path) -> Entry {
        let md = std::fs::metadata(path).ok();
        let file_size = md.as_ref().map(|m| m.len()).unwrap_or_default();
        let modified_unix = md
            .and_then(|m| m.modified().ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs() as i64)
            .unwrap_or_default();
        let (meta, mut why) = match meta::read(path) {
            Ok(m) => (m, None),
            Err(e) => (None, Some(crate::error_chain(&e))),
        };
        let state = match &meta {
            None => {
                why.get_or_insert_with(|| {
                    "no record: taken before haop recorded and encrypted snapshots".into()
                });
                State::Unrecorded
            }
            Some(m) if m.file_size != file_size => {
                why = Some(format!(
                    "the file is {file_size} bytes, its record says {}: changed since it was saved",
                    m.file_size
                ));
                State::Failed
            }
            Some(m) => match &m.verification {
                Some(v) if v.ok => State::Verified,
                Some(v) => {
                    why = Some(v.detail.clone());
                    State::Failed
                }
                None => State::Unverified,
            },
        };
        Entry {
            name: path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            path: path.to_path_buf(),
            file_size,
            modified_unix,
            state,
            why,
            meta,
        }
    }

    /// When it was taken (its record's time, else the file's).
    pub fn taken_unix(&self) -> i64 {
        self.meta
            .as_ref()
            .map(|m| m.taken_unix)
            .unwrap_or(self.modified_unix)
    }
}

/// Every snapshot of the cluster with its record, oldest first.
pub fn entries(state_dir: &Path, cluster: &str) -> Vec<Entry> {
    list(state_dir, cluster)
        .iter()
        .map(|p| Entry::read(p))
        .collect()
}

/// The newest verified snapshot of the cluster.
pub fn newest_verified(state_dir: &Path, cluster: &str) -> Option<Entry> {
    entries(state_dir, cluster)
        .into_iter()
        .rev()
        .find(|e| e.state == State::Verified)
}

/// Which of `entries` (oldest first) the retention removes: beyond the newest `snapshots`, and
/// older than `snapshot_max_age`; never the newest, never the newest verified. Pure.
pub fn to_prune(entries: &[Entry], retention: &Retention, now_unix: i64) -> Vec<usize> {
    let items: Vec<(i64, bool)> = entries
        .iter()
        .map(|e| (e.taken_unix(), e.state == State::Verified))
        .collect();
    to_prune_by(&items, retention, now_unix)
}

/// [`to_prune`] over `(taken_unix, verified)` items, oldest first (also a host's copies).
pub fn to_prune_by(items: &[(i64, bool)], retention: &Retention, now_unix: i64) -> Vec<usize> {
    let keep = retention.snapshots.max(1) as usize;
    let max_age = retention.snapshot_max_age.duration().as_secs() as i64;
    let newest_verified = items.iter().rposition(|(_, verified)| *verified);
    let n = items.len();
    (0..n)
        .filter(|&i| {
            let rank = n - 1 - i;
            let too_many = rank >= keep;
            let too_old = rank > 0 && now_unix - items[i].0 > max_age;
            (too_many || too_old) && Some(i) != newest_verified
        })
        .collect()
}

/// Applies `retention` to the cluster's snapshots ([`to_prune`]): removes each file and its
/// record. Answers what it removed.
pub fn prune(state_dir: &Path, cluster: &str, retention: &Retention) -> Vec<PathBuf> {
    let all = entries(state_dir, cluster);
    let now = meta::now().1;
    let mut removed = Vec::new();
    for i in to_prune(&all, retention, now) {
        let path = &all[i].path;
        if std::fs::remove_file(path).is_ok() {
            let _ = std::fs::remove_file(meta::meta_path(path));
            removed.push(path.clone());
        }
    }
    removed
}

/// A snapshot as restore and verification use it: etcd's own snapshot (plaintext), with its
/// SHA-256 and size, streamed from the file (decrypted on the way when it is haop's format).
#[derive(Debug, Clone)]
pub struct Plaintext {
    pub path: PathBuf,
    pub sha256: String,
    pub size: u64,
    /// The key it is decrypted with; `None` for a plain file.
    key: Option<SnapshotKey>,
}

impl Plaintext {
    /// Opens `path`. haop's format is decrypted with the state dir's key and checked whole
    /// here, once (every segment authenticated, and the plaintext's SHA-256 compared with the
    /// record when there is one), so nothing downstream starts on a snapshot that cannot be
    /// read to its end. Any other file is taken as etcd's own snapshot, as given.
    pub async fn open(state_dir: &Path, path: &Path) -> Result<Plaintext, SnapshotError> {
        let state_dir = state_dir.to_path_buf();
        let path = path.to_path_buf();
        tokio::task::spawn_blocking(move || Self::open_blocking(&state_dir, &path))
            .await
            .map_err(|e| SnapshotError::Io {
                dir: PathBuf::from("."),
                source: std::io::Error::other(e),
            })?
    }

    fn open_blocking(state_dir: &Path, path: &Path) -> Result<Plaintext, SnapshotError> {
        let read_err = |source| SnapshotError::Io {
            dir: path.to_path_buf(),
            source,
        };
        std::fs::metadata(path).map_err(read_err)?;
        if !crypt::is_encrypted(path) {
            let mut file = std::fs::File::open(path).map_err(read_err)?;
            let mut hasher = <sha2::Sha256 as sha2::Digest>::new();
            let size = std::io::copy(&mut file, &mut hasher).map_err(read_err)?;
            return Ok(Plaintext {
                path: path.to_path_buf(),
                sha256: hex::encode(sha2::Digest::finalize(hasher)),
                size,
                key: None,
            });
        }
        let key = SnapshotKey::load(state_dir)?;
        let (sha256, size) = crypt::check(&key, path)?;
        if let Some(m) = meta::read(path)? {
            if m.sha256 != sha256 || m.size != size {
                return Err(SnapshotError::NotAsRecorded {
                    path: path.to_path_buf(),
                    detail: format!(
                        "it decrypts to {size} bytes with sha256 {sha256}, its record says {}                          bytes with sha256 {}",
                        m.size, m.sha256
                    ),
                });
            }
        }
        Ok(Plaintext {
            path: path.to_path_buf(),
            sha256,
            size,
            key: Some(key),
        })
    }

    /// The plaintext in chunks of about 1 MiB, read (and decrypted) on a blocking thread; an
    /// error ends the stream. Dropping the receiver stops the reading.
    pub fn chunks(&self) -> tokio::sync::mpsc::Receiver<std::io::Result<Vec<u8>>> {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        let path = self.path.clone();
        let key = self.key.clone();
        tokio::task::spawn_blocking(move || {
            let send = |c| tx.blocking_send(c).is_ok();
            let file = match std::fs::File::open(&path) {
                Ok(f) => std::io::BufReader::new(f),
                Err(e) => {
                    send(Err(e));
                    return;
                }
            };
            match key {
                Some(key) => {
                    let what = path.display().to_string();
                    let mut d = match crypt::Decryptor::new(&key, file, &what) {
                        Ok(d) => d,
                        Err(e) => {
                            send(Err(std::io::Error::other(crate::error_chain(&e))));
                            return;
                        }
                    };
                    loop {
                        match d.next_segment() {
                            Ok(Some(seg)) => {
                                if !send(Ok(seg.to_vec())) {
                                    return;
                                }
                            }
                            Ok(None) => return,
                            Err(e) => {
                                send(Err(std::io::Error::other(crate::error_chain(&e))));
                                return;
                            }
                        }
                    }
                }
                None => {
                    use std::io::Read;
                    let mut file = file;
                    loop {
                        let mut buf = vec![0u8; crypt::SEGMENT];
                        match file.read(&mut buf) {
                            Ok(0) => return,
                            Ok(n) => {
                                buf.truncate(n);
                                if !send(Ok(buf)) {
                                    return;
                                }
                            }
                            Err(e) => {
                                send(Err(e));
                                return;
                            }
                        }
                    }
                }
            }
        });
        rx
    }

    /// Writes the plaintext to `to` (a scratch file, for tools that read a path), 0600.
    pub fn write_to(&self, to: &Path) -> Result<(), SnapshotError> {
        use std::os::unix::fs::OpenOptionsExt;
        let err = |source| SnapshotError::Io {
            dir: to.to_path_buf(),
            source,
        };
        let mut out = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(to)
            .map_err(err)?;
        match &self.key {
            Some(key) => {
                let mut w = std::io::BufWriter::new(&mut out);
                crypt::decrypt_to(key, &self.path, &mut w)?;
                w.flush().map_err(err)?;
            }
            None => {
                let mut src = std::fs::File::open(&self.path).map_err(err)?;
                std::io::copy(&mut src, &mut out).map_err(err)?;
            }
        }
        out.sync_all().map_err(err)
    }
}

/// Bytes available in the filesystem holding `dir` (or its nearest existing parent).
pub fn available_bytes(dir: &Path) -> std::io::Result<u64> {
    let mut p = dir;
    loop {
        match nix::sys::statvfs::statvfs(p) {
            Ok(s) => return Ok(s.blocks_available().saturating_mul(s.fragment_size())),
            Err(nix::errno::Errno::ENOENT) => match p.parent() {
                Some(parent) => p = parent,
                None => return Err(std::io::Error::from(std::io::ErrorKind::NotFound)),
            },
            Err(e) => return Err(std::io::Error::from(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retention_keeps_the_newest_by_count_and_age() {
        let dir = tempfile::tempdir().unwrap();
        let snaps = snapshot_dir(dir.path(), "c");
        std::fs::create_dir_all(&snaps).unwrap();
        for i in 0..7 {
            std::fs::write(snaps.join(format!("2026120{i}T000000.000Z-etcd1.db")), b"x").unwrap();
        }
        std::fs::write(snaps.join("notes.txt"), b"kept").unwrap();
        let retention = Retention {
            snapshots: 3,
            ..Retention::default()
        };
        let removed = prune(dir.path(), "c", &retention);
        assert_eq!(removed.len(), 4);
        let left: Vec<String> = list(dir.path(), "c")
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            left,
            [
                "20261204T000000.000Z-etcd1.db",
                "20261205T000000.000Z-etcd1.db",
                "20261206T000000.000Z-etcd1.db"
            ]
        );
        assert!(snaps.join("notes.txt").exists());
        // Everything older than a minute, but the newest is never removed.
        let old = Retention {
            snapshots: 10,
            snapshot_max_age: "1m".parse().unwrap(),
            ..Retention::default()
        };
        let two_minutes_ago = std::time::SystemTime::now() - std::time::Duration::from_secs(120);
        for p in list(dir.path(), "c") {
            std::fs::File::options()
                .write(true)
                .open(&p)
                .unwrap()
                .set_modified(two_minutes_ago)
                .unwrap();
        }
        prune(dir.path(), "c", &old);
        assert_eq!(list(dir.path(), "c").len(), 1);
    }

    /// A recorded snapshot taken `age` seconds before `now`, verified or not.
    fn recorded(dir: &Path, now: i64, age: i64, verified: Option<bool>) -> PathBuf {
        let snaps = snapshot_dir(dir, "c");
        std::fs::create_dir_all(&snaps).unwrap();
        let path = snaps.join(format!("{}-etcd1.snap", now - age + 10_000_000_000));
        std::fs::write(&path, vec![0u8; 100]).unwrap();
        let mut m = meta::sample("c", now - age);
        m.file_size = 100;
        m.verification = verified.map(|ok| meta::Verification {
            at: meta::rfc3339(now),
            at_unix: now,
            ok,
            detail: if ok {
                "equal".into()
            } else {
                "hashkv differs".into()
            },
            restored: None,
            etcd_version: None,
            seconds: 1.0,
        });
        meta::write(&path, &m).unwrap();
        path
    }

    #[test]
    fn retention_never_removes_the_newest_verified_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let now = meta::now().1;
        let good = recorded(dir.path(), now, 5000, Some(true));
        let bad = recorded(dir.path(), now, 4000, Some(false));
        let unverified: Vec<PathBuf> = (0..3)
            .map(|i| recorded(dir.path(), now, 3000 - i * 100, None))
            .collect();
        let all = entries(dir.path(), "c");
        assert_eq!(
            all.iter().map(|e| e.state).collect::<Vec<_>>(),
            [
                State::Verified,
                State::Failed,
                State::Unverified,
                State::Unverified,
                State::Unverified
            ]
        );
        assert_eq!(all[1].why.as_deref(), Some("hashkv differs"));
        // Keep 2: the two newest stay, and the verified one although it is the oldest.
        let keep_two = Retention {
            snapshots: 2,
            ..Retention::default()
        };
        assert_eq!(to_prune(&all, &keep_two, now), [1, 2]);
        let removed = prune(dir.path(), "c", &keep_two);
        assert_eq!(removed, [bad.clone(), unverified[0].clone()]);
        assert!(!meta::meta_path(&bad).exists(), "the record goes with it");
        assert!(good.exists() && meta::meta_path(&good).exists());
        // Too old: everything but the newest and the newest verified.
        let young = Retention {
            snapshots: 10,
            snapshot_max_age: "10m".parse().unwrap(),
            ..Retention::default()
        };
        let left = entries(dir.path(), "c");
        assert_eq!(to_prune(&left, &young, now), [1]);
        prune(dir.path(), "c", &young);
        let names: Vec<PathBuf> = list(dir.path(), "c");
        assert_eq!(names, [good.clone(), unverified[2].clone()]);
        assert_eq!(newest_verified(dir.path(), "c").unwrap().path, good);
        // A file that no longer matches its record fails, and is not the newest verified.
        std::fs::write(&good, b"short").unwrap();
        let e = Entry::read(&good);
        assert_eq!(e.state, State::Failed);
        assert!(e.why.unwrap().contains("changed since it was saved"));
        assert!(newest_verified(dir.path(), "c").is_none());
    }

    #[test]
    fn available_bytes_of_a_path_not_made_yet() {
        let dir = tempfile::tempdir().unwrap();
        assert!(available_bytes(&dir.path().join("snapshots/c")).unwrap() > 0);
    }
}
