//! haop's etcd API client against real etcd processes (Debian's `/usr/bin/etcd`) on 127.0.0.1,
//! with TLS and client and peer certificate auth on, certificates from a state dir made by
//! `trust::init`. Each test starts its own members on free ports; a guard SIGKILLs exactly the
//! processes it started (by pid) and removes their data dirs.

use std::net::{IpAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use haop_coordinator::etcd::api::{initial_cluster, EtcdApiError, EtcdClient};
use haop_coordinator::pki::{
    CertificateAuthority, ExpectedNames, KeyAlgorithm, Profile, SigningRequest, DEFAULT_LIFETIME,
    ETCD_CA,
};
use haop_coordinator::trust::{self, pki_dir, InitOptions};
use sha2::{Digest, Sha256};

const ETCD: &str = "/usr/bin/etcd";
const ETCDCTL: &str = "/usr/bin/etcdctl";
const TIMEOUT: Duration = Duration::from_secs(2);

/// Ports nobody listens on right now: bound together on port 0, then released.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").expect("bind a free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect()
}

fn url(port: u16) -> String {
    format!("https://127.0.0.1:{port}")
}

#[derive(Debug, Clone)]
struct MemberSpec {
    name: String,
    client_port: u16,
    peer_port: u16,
}

impl MemberSpec {
    fn client_url(&self) -> String {
        url(self.client_port)
    }
    fn peer_url(&self) -> String {
        url(self.peer_port)
    }
}

/// etcd members started by this test, killed by pid and wiped on drop.
struct EtcdGuard {
    dir: tempfile::TempDir,
    members: Vec<MemberSpec>,
    children: Vec<Option<Child>>,
}

impl EtcdGuard {
    /// A state dir (`trust::init`) and `n` members started in parallel as a new cluster.
    fn start(n: usize) -> EtcdGuard {
        let dir = tempfile::tempdir().unwrap();
        trust::init(&dir.path().join("state"), InitOptions::default()).unwrap();
        let ports = free_ports(2 * n);
        let members: Vec<MemberSpec> = (0..n)
            .map(|i| MemberSpec {
                name: format!("m{}", i + 1),
                client_port: ports[2 * i],
                peer_port: ports[2 * i + 1],
            })
            .collect();
        let cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let mut guard = EtcdGuard {
            dir,
            members: Vec::new(),
            children: Vec::new(),
        };
        for m in members {
            guard.spawn(m, &cluster, "new");
        }
        guard
    }

    fn state(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(MemberSpec::client_url).collect()
    }

    /// Issues the member's server and peer certificates from the etcd CA, then starts it.
    fn spawn(&mut self, m: MemberSpec, initial_cluster: &str, state: &str) {
        let ca = CertificateAuthority::load(&pki_dir(&self.state()), ETCD_CA).unwrap();
        let certs = self.dir.path().join("certs");
        for (suffix, profile) in [("server", Profile::Server), ("peer", Profile::Peer)] {
            ca.issue_local(
                &certs,
                &format!("{}-{suffix}", m.name),
                KeyAlgorithm::EcdsaP256,
                &SigningRequest {
                    profile,
                    lifetime: DEFAULT_LIFETIME,
                    expected: ExpectedNames::for_host(
                        "localhost",
                        None,
                        &[IpAddr::from([127, 0, 0, 1])],
                    ),
                    organization: None,
                    common_name: m.name.clone(),
                },
            )
            .unwrap();
        }
        let cert = |f: &str| certs.join(format!("{}-{f}", m.name));
        let ca_file = ca.cert_path().to_path_buf();
        let data = self.dir.path().join(format!("{}.etcd", m.name));
        let log = std::fs::File::create(self.dir.path().join(format!("{}.log", m.name))).unwrap();
        let child = Command::new(ETCD)
            .env_clear()
            .env("LC_ALL", "C.UTF-8")
            .arg(format!("--name={}", m.name))
            .arg(format!("--data-dir={}", data.display()))
            .arg(format!("--listen-client-urls={}", m.client_url()))
            .arg(format!("--advertise-client-urls={}", m.client_url()))
            .arg(format!("--listen-peer-urls={}", m.peer_url()))
            .arg(format!("--initial-advertise-peer-urls={}", m.peer_url()))
            .arg(format!("--initial-cluster={initial_cluster}"))
            .arg(format!("--initial-cluster-state={state}"))
            .arg("--initial-cluster-token=haop-etcd-api-test")
            .arg(format!("--cert-file={}", cert("server.crt").display()))
            .arg(format!("--key-file={}", cert("server.key").display()))
            .arg(format!("--trusted-ca-file={}", ca_file.display()))
            .arg("--client-cert-auth=true")
            .arg(format!("--peer-cert-file={}", cert("peer.crt").display()))
            .arg(format!("--peer-key-file={}", cert("peer.key").display()))
            .arg(format!("--peer-trusted-ca-file={}", ca_file.display()))
            .arg("--peer-client-cert-auth=true")
            .arg("--logger=zap")
            .arg("--log-outputs=stderr")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start /usr/bin/etcd");
        self.members.push(m);
        self.children.push(Some(child));
    }

    /// SIGKILLs member `i` (by its pid) and reaps it.
    fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.children[i].take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The last lines of member `i`'s log, for failure messages.
    fn log(&self, i: usize) -> String {
        let path = self
            .dir
            .path()
            .join(format!("{}.log", self.members[i].name));
        let bytes = std::fs::read(path).unwrap_or_default();
        let tail = &bytes[bytes.len().saturating_sub(3000)..];
        String::from_utf8_lossy(tail).into_owned()
    }

    async fn client(&self) -> EtcdClient {
        EtcdClient::connect(&self.state(), &self.endpoints(), TIMEOUT)
            .await
            .unwrap()
    }
}

impl Drop for EtcdGuard {
    fn drop(&mut self) {
        for i in 0..self.children.len() {
            self.kill(i);
        }
    }
}

/// Retries `call` while it fails with a refusal for which etcd says "wait" (`retry_on`), every
/// 100 ms until `timeout`.
async fn retry_while<T, F, Fut>(
    what: &str,
    timeout: Duration,
    retry_on: fn(&EtcdApiError) -> bool,
    mut call: F,
) -> (Result<T, EtcdApiError>, usize)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, EtcdApiError>>,
{
    let deadline = Instant::now() + timeout;
    let mut refusals = 0;
    loop {
        match call().await {
            Err(e) if retry_on(&e) && Instant::now() < deadline => {
                refusals += 1;
                if refusals == 1 {
                    eprintln!("{what}: {e} (retrying)");
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            other => return (other, refusals),
        }
    }
}

fn sha256_file(p: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(p).unwrap()))
}

#[tokio::test(flavor = "multi_thread")]
async fn single_member_answers_put_get_health_and_writes_a_snapshot_etcdctl_accepts() {
    let etcd = EtcdGuard::start(1);
    let client = etcd.client().await;
    let report = client
        .wait_for_quorum(&etcd.endpoints(), 1, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", etcd.log(0)));
    assert_ne!(report.leader_id, 0);
    assert_eq!(report.members.len(), 1);
    assert_eq!(report.members[0].name, "m1");
    assert_eq!(report.members[0].client_urls, etcd.endpoints());

    assert_eq!(client.get("haop/test").await.unwrap(), None);
    let rev = client.put("haop/test", b"hello").await.unwrap();
    assert!(rev > 1, "revision {rev}");
    assert_eq!(
        client.get("haop/test").await.unwrap().as_deref(),
        Some(&b"hello"[..])
    );

    let latency = client.health(&etcd.endpoints()[0]).await.unwrap();
    assert!(latency > Duration::ZERO && latency < TIMEOUT, "{latency:?}");

    let status = client.status_of(&etcd.endpoints()[0]).await.unwrap();
    assert_eq!(status.member_id, report.members[0].id);
    assert_eq!(status.leader_id, status.member_id);
    assert!(status.version.starts_with("3."), "{}", status.version);
    assert!(status.db_size > 0 && !status.is_learner && status.errors.is_empty());

    for i in 0..50 {
        client
            .put(&format!("haop/bulk/{i}"), &[b'x'; 1024])
            .await
            .unwrap();
    }
    let path = etcd.dir.path().join("snapshots").join("etcd.db");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let info = client.snapshot(&path).await.unwrap();
    eprintln!("{info:?}");
    assert_eq!(info.path, path);
    assert_eq!(info.endpoint, etcd.endpoints()[0]);
    assert_eq!(info.size, std::fs::metadata(&path).unwrap().len());
    assert_eq!(info.sha256, sha256_file(&path));
    // The whole keyspace, every secret in it: readable by its owner alone.
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 1, "temp files left: {leftovers:?}");

    let out = Command::new(ETCDCTL)
        .env_clear()
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "status", "-w", "json"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "etcdctl snapshot status: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(status["totalKey"].as_u64().unwrap() >= 51, "{status}");
    if let Some(rev) = info.revision {
        assert_eq!(status["revision"].as_i64(), Some(rev), "{status}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn three_members_form_quorum_and_a_killed_member_fails_only_its_own_status() {
    let mut etcd = EtcdGuard::start(3);
    let endpoints = etcd.endpoints();
    let client = etcd.client().await;
    let report = client
        .wait_for_quorum(&endpoints, 3, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", etcd.log(0)));
    eprintln!("quorum after {:?}", report.elapsed);
    assert_ne!(report.leader_id, 0);
    assert!(report.members.iter().any(|m| m.id == report.leader_id));

    let members = client.member_list().await.unwrap();
    assert_eq!(members.len(), 3);
    let mut names: Vec<_> = members.iter().map(|m| m.name.as_str()).collect();
    names.sort();
    assert_eq!(names, ["m1", "m2", "m3"]);
    assert!(members.iter().all(|m| !m.is_learner));

    client.put("k", b"v").await.unwrap();
    let statuses: Vec<_> = client
        .statuses(&endpoints)
        .await
        .into_iter()
        .map(|s| s.unwrap())
        .collect();
    for (s, endpoint) in statuses.iter().zip(&endpoints) {
        assert_eq!(&s.endpoint, endpoint);
        assert_eq!(s.leader_id, report.leader_id, "{s:?}");
        assert!(s.raft_term >= 1 && s.raft_index > 0 && s.raft_applied_index > 0);
        assert!(members.iter().any(|m| m.id == s.member_id));
    }
    for endpoint in &endpoints {
        let latency = client.health(endpoint).await.unwrap();
        assert!(latency < TIMEOUT);
    }

    // Kill a follower: its status fails fast, the others answer with the same leader.
    let victim = statuses
        .iter()
        .position(|s| s.member_id != s.leader_id)
        .unwrap();
    etcd.kill(victim);
    let started = Instant::now();
    let after = client.statuses(&endpoints).await;
    let took = started.elapsed();
    assert!(took < TIMEOUT + Duration::from_millis(500), "{took:?}");
    for (i, s) in after.iter().enumerate() {
        if i == victim {
            let e = s.as_ref().unwrap_err();
            assert!(
                matches!(
                    e,
                    EtcdApiError::Unreachable { .. }
                        | EtcdApiError::ConnectionLost { .. }
                        | EtcdApiError::Timeout { .. }
                ),
                "{e:?}"
            );
            assert!(e.to_string().contains(&endpoints[victim]), "{e}");
        } else {
            let s = s.as_ref().unwrap();
            assert_eq!(s.leader_id, report.leader_id);
        }
    }
    assert!(client.health(&endpoints[victim]).await.is_err());
    // Cluster-wide calls move past the dead endpoint.
    assert_eq!(client.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
    assert_eq!(client.member_list().await.unwrap().len(), 3);
    let report = client
        .wait_for_quorum(&endpoints, 3, Duration::from_secs(5))
        .await
        .unwrap();
    assert_ne!(report.leader_id, 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn learner_is_added_refused_as_second_learner_then_started_caught_up_and_promoted() {
    let mut etcd = EtcdGuard::start(3);
    let client = etcd.client().await;
    client
        .wait_for_quorum(&etcd.endpoints(), 3, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", etcd.log(0)));
    for i in 0..20 {
        client.put(&format!("before/{i}"), b"x").await.unwrap();
    }

    let ports = free_ports(3);
    let new = MemberSpec {
        name: "m4".into(),
        client_port: ports[0],
        peer_port: ports[1],
    };
    // etcd's strict reconfig check refuses until every voter has been connected for 5 s.
    let peer_urls = vec![new.peer_url()];
    let (added, refusals) = retry_while(
        "member add",
        Duration::from_secs(10),
        |e| matches!(e, EtcdApiError::UnhealthyCluster { .. }),
        || client.member_add_as_learner(&peer_urls),
    )
    .await;
    let (id, members) = added.unwrap();
    eprintln!("learner added after {refusals} unhealthy-cluster refusals");
    assert_eq!(members.len(), 4);
    let learner = members.iter().find(|m| m.id == id).unwrap();
    assert!(learner.is_learner && learner.name.is_empty());
    assert_eq!(learner.peer_urls, [new.peer_url()]);

    // One learner at a time.
    let e = client
        .member_add_as_learner(&[url(ports[2])])
        .await
        .unwrap_err();
    assert!(matches!(e, EtcdApiError::TooManyLearners { .. }), "{e:?}");
    // A learner that has not started is not in sync.
    let e = client.member_promote(id).await.unwrap_err();
    assert!(
        matches!(e, EtcdApiError::LearnerNotReady { id: got, .. } if got == id),
        "{e:?}"
    );
    assert!(e.to_string().contains(&format!("{id:x}")), "{e}");
    // Removing a member that is not there.
    let e = client.member_remove(id ^ 1).await.unwrap_err();
    assert!(matches!(e, EtcdApiError::MemberNotFound { .. }), "{e:?}");

    let cluster = initial_cluster(&members, id, &new.name);
    etcd.spawn(new.clone(), &cluster, "existing");
    let (promoted, waits) = retry_while(
        "member promote",
        Duration::from_secs(10),
        |e| matches!(e, EtcdApiError::LearnerNotReady { .. }),
        || client.member_promote(id),
    )
    .await;
    let members = promoted.unwrap_or_else(|e| panic!("{e}\n{}", etcd.log(3)));
    eprintln!("learner promoted after {waits} not-ready refusals");
    assert_eq!(members.len(), 4);
    assert!(members.iter().all(|m| !m.is_learner));

    let report = client
        .wait_for_quorum(&etcd.endpoints(), 4, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", etcd.log(3)));
    assert_eq!(report.members.len(), 4);
    let status = client.status_of(&new.client_url()).await.unwrap();
    assert_eq!(status.member_id, id);
    assert!(!status.is_learner);

    let (removed, _) = retry_while(
        "member remove",
        Duration::from_secs(10),
        |e| matches!(e, EtcdApiError::UnhealthyCluster { .. }),
        || client.member_remove(id),
    )
    .await;
    let members = removed.unwrap();
    assert_eq!(members.len(), 3);
    assert!(members.iter().all(|m| m.id != id));
    etcd.kill(3);
}

#[tokio::test(flavor = "multi_thread")]
async fn quorum_timeout_names_every_endpoint_and_why() {
    let dir = tempfile::tempdir().unwrap();
    trust::init(dir.path(), InitOptions::default()).unwrap();
    let endpoints: Vec<String> = free_ports(2).into_iter().map(url).collect();
    let client = EtcdClient::connect(dir.path(), &endpoints, TIMEOUT)
        .await
        .unwrap();
    let started = Instant::now();
    let e = client
        .wait_for_quorum(&endpoints, 2, Duration::from_millis(600))
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert!(matches!(e, EtcdApiError::QuorumTimeout { .. }), "{e:?}");
    let text = e.to_string();
    for endpoint in &endpoints {
        assert!(text.contains(endpoint), "{text}");
    }
    assert!(
        text.contains("no leader") && text.contains("0/2 endpoints healthy"),
        "{text}"
    );
}

#[tokio::test]
async fn connect_without_credentials_names_the_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let e = EtcdClient::connect(dir.path(), &[url(2379)], TIMEOUT)
        .await
        .unwrap_err();
    assert!(e.to_string().contains("etcd-ca.crt"), "{e}");
    let e = EtcdClient::connect(dir.path(), &[], TIMEOUT)
        .await
        .unwrap_err();
    assert!(matches!(e, EtcdApiError::NoEndpoints));
}

/// A snapshot taken by haop (keyspace recorded, encrypted as it streams) is verified by a real
/// restore into a throwaway etcd; a record that does not match what it restores to, and a file
/// with flipped bytes, fail verification and say why; restore's plaintext is etcd's own
/// snapshot (etcdctl accepts it).
#[tokio::test(flavor = "multi_thread")]
async fn a_snapshot_is_verified_by_a_real_restore_and_a_wrong_one_fails_with_why() {
    use haop_coordinator::etcd::snapshots::{self, crypt::SnapshotKey, meta, verify, State};
    let etcd = EtcdGuard::start(1);
    let client = etcd.client().await;
    client
        .wait_for_quorum(&etcd.endpoints(), 1, Duration::from_secs(20))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", etcd.log(0)));
    for i in 0..40 {
        client
            .put(&format!("haop/verify/{i}"), &[b'v'; 512])
            .await
            .unwrap();
    }
    let state = etcd.state();
    let key = SnapshotKey::load_or_create(&state).unwrap();
    let status = client.status_of(&etcd.endpoints()[0]).await.unwrap();
    let source = snapshots::Source {
        endpoint: etcd.endpoints()[0].clone(),
        member: "m1".into(),
        db_size: status.db_size,
        version: status.version.clone(),
    };
    let path = snapshots::new_snapshot_path(&state, "c", "m1").unwrap();
    let m = snapshots::take(&client, &source, &key, "c", &path, &|_| {})
        .await
        .unwrap();
    assert!(
        m.encrypted && m.key_count >= 40 && m.revision >= 41,
        "{m:?}"
    );
    assert!(snapshots::crypt::is_encrypted(&path));
    assert_eq!(snapshots::Entry::read(&path).state, State::Unverified);

    let tools = verify::Tools::in_dir(Path::new("/usr/bin")).expect("etcd and etcdctl in /usr/bin");
    let report = verify::verify(&state, &tools, &path).await.unwrap();
    assert!(report.verification.ok, "{report:?}");
    let restored = report.verification.restored.unwrap();
    assert_eq!(
        (restored.key_count, restored.hash_kv),
        (m.key_count, m.hash_kv)
    );
    assert_eq!(snapshots::Entry::read(&path).state, State::Verified);
    // Nothing of the throwaway etcd is left in the state dir.
    let leftovers: Vec<_> = std::fs::read_dir(state.join("tmp")).unwrap().collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Restore's plaintext is etcd's own snapshot.
    let plain = snapshots::Plaintext::open(&state, &path).await.unwrap();
    assert_eq!(
        (plain.size, plain.sha256.clone()),
        (m.size, m.sha256.clone())
    );
    let db = etcd.dir.path().join("plain.db");
    plain.write_to(&db).unwrap();
    let out = Command::new(ETCDCTL)
        .env_clear()
        .env("ETCDCTL_API", "3")
        .args(["snapshot", "status", "-w", "json"])
        .arg(&db)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A record that the restore does not reproduce fails, and says what differs.
    meta::update(&path, |m| m.hash_kv ^= 1).unwrap();
    let report = verify::verify(&state, &tools, &path).await.unwrap();
    assert!(!report.verification.ok);
    assert!(report.verification.detail.contains("hashkv"), "{report:?}");
    let e = snapshots::Entry::read(&path);
    assert_eq!(e.state, State::Failed);
    assert!(e.why.unwrap().contains("not as recorded"));
    meta::update(&path, |m| m.hash_kv ^= 1).unwrap();

    // Flipped bytes never decrypt: failed, with where.
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&path, &bytes).unwrap();
    let report = verify::verify(&state, &tools, &path).await.unwrap();
    assert!(!report.verification.ok);
    assert!(report.verification.detail.contains("corrupt"), "{report:?}");
    assert!(snapshots::newest_verified(&state, "c").is_none());
}
