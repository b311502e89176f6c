//! etcd at real sizes in the lab (issue #13), with real etcd 3.4 and 3.5 and a writer running.
//!
//! A learner that receives a large database answers nothing for as long as the transfer takes.
//! These tests make that long without gigabytes: the database is a few hundred MiB at most and
//! the link towards the learner is throttled with tc (`haop lab throttle`), so the transfer
//! outlasts the stall timeout several times over while bytes keep arriving. Recovery must wait
//! for it, show it, and finish on the first run; a learner that truly stalls (its process
//! stopped) must be reported and left alone, and a rerun must finish the job with the same
//! learner. The state dir's room is checked before anything changes, and the retention keeps
//! the state dir and the hosts within the policy over many operations.
//!
//! etcd sends a new member a database snapshot only once its raft log has been compacted past
//! the member's index; `--snapshot-count=1000` and more than 6000 writes make sure it has (etcd
//! keeps 5000 entries after a snapshot), so the learner receives the database, not the log.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::Writer;
use common::{assert_all_present, haop, haop_bin, members, require_root, text, voters_named, Etcd};
use haop_coordinator::etcd::api::EtcdClient;
use haop_coordinator::inventory::Inventory;
use haop_coordinator::lab::{LabGuard, LabSpec};

/// Writes `count` values of `size` bytes under `/fill/`, 16 at a time; answers the keys.
async fn fill(client: Arc<EtcdClient>, count: usize, size: usize) -> Vec<String> {
    let value: Arc<Vec<u8>> = Arc::new((0..size).map(|i| (i % 251) as u8).collect());
    let mut set = tokio::task::JoinSet::new();
    for worker in 0..16 {
        let (client, value) = (client.clone(), value.clone());
        set.spawn(async move {
            let mut keys = Vec::new();
            for i in (worker..count).step_by(16) {
                let key = format!("/fill/{i:08}");
                client.put(&key, &value).await.expect("fill put");
                keys.push(key);
            }
            keys
        });
    }
    let mut keys: Vec<String> = set.join_all().await.into_iter().flatten().collect();
    keys.sort();
    keys
}

/// Keep `snapshots` snapshots and one moved-aside data dir per host, with no grace.
fn retention(snapshots: u32) -> haop_coordinator::inventory::Retention {
    haop_coordinator::inventory::Retention {
        snapshots,
        wiped_data_dirs: 1,
        wiped_grace: "0s".parse().unwrap(),
        ..Default::default()
    }
}

/// The database size etcd reports for `endpoint`.
async fn db_size(client: &EtcdClient, endpoint: &str) -> u64 {
    client.status_of(endpoint).await.unwrap().db_size as u64
}

/// The snapshot files of the cluster in the state dir.
fn snapshots(state: &Path, cluster: &str) -> Vec<PathBuf> {
    haop_coordinator::etcd::snapshots::list(state, cluster)
}

/// The moved-aside copies of etcd's data dir on a lab host.
fn wiped_copies(lab: &LabGuard, host: &str) -> Vec<PathBuf> {
    let root = lab.host(host).unwrap().root_dir.join("var/lib");
    let mut v: Vec<PathBuf> = std::fs::read_dir(root)
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| p.to_string_lossy().contains("etcd.wiped-"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The cluster's members as (name, id, is learner).
async fn member_ids(client: &EtcdClient) -> Vec<(String, u64, bool)> {
    let mut v: Vec<(String, u64, bool)> = client
        .member_list()
        .await
        .unwrap()
        .into_iter()
        .map(|m| (m.name, m.id, m.is_learner))
        .collect();
    v.sort();
    v
}

/// Waits until every member answers healthy.
async fn wait_all_healthy(state: &Path, inventory: &Inventory) {
    let endpoints = inventory.etcd_client_urls();
    let deadline = Instant::now() + Duration::from_secs(60);
    for ep in &endpoints {
        let one = EtcdClient::connect(state, std::slice::from_ref(ep), Duration::from_secs(2))
            .await
            .unwrap();
        while one.health(ep).await.is_err() {
            assert!(Instant::now() < deadline, "{ep} never became healthy");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// A lab of three etcd members on `etcd`, applied, with the settings these tests need.
async fn lab_with(
    st: &Path,
    name: &str,
    etcd: Etcd,
    edit: impl FnOnce(&mut Inventory),
) -> (LabGuard, PathBuf, Inventory, Arc<EtcdClient>) {
    let lab = LabGuard::up(st, name, LabSpec::default())
        .await
        .expect("lab up");
    let path = etcd.inventory(st, &lab, |inv| {
        inv.etcd.extra_flags.push("--snapshot-count=1000".into());
        edit(inv);
    });
    let (inventory, _) = Inventory::load(&path).unwrap();
    let applied = haop(st, &["apply", "-f", &path.display().to_string()]);
    assert!(applied.status.success(), "{}", text(&applied));
    let client = Arc::new(
        EtcdClient::connect(st, &inventory.etcd_client_urls(), Duration::from_secs(5))
            .await
            .unwrap(),
    );
    (lab, path, inventory, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_member_is_recovered_on_the_first_run_through_a_slow_link_etcd_3_4() {
    large_member_recovered(Etcd::Debian).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_member_is_recovered_on_the_first_run_through_a_slow_link_etcd_3_5_1() {
    large_member_recovered(Etcd::V351).await
}

/// At least 500 MiB in the cluster, the link towards the recovered member throttled so that its
/// catch-up takes several stall timeouts: recovery succeeds on the first run, shows the bytes
/// arriving, adds the learner once, takes one snapshot, and no acknowledged write is lost.
async fn large_member_recovered(etcd: Etcd) {
    if !require_root() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let st = state.path();
    let name = format!("t{}-sz{}", std::process::id() % 100_000, etcd.tag());
    let (lab, path, inventory, client) = lab_with(st, &name, etcd, |inv| {
        inv.etcd.catch_up_stall = "10s".parse().unwrap();
        inv.etcd.retention = retention(3);
    })
    .await;
    let inv = path.display().to_string();
    let endpoints = inventory.etcd_client_urls();
    // 8000 values of 64 KiB: 500 MiB, and more writes than etcd keeps in its log.
    let t = Instant::now();
    let filled = fill(client.clone(), 8000, 64 * 1024).await;
    eprintln!("filled 500 MiB in {:.1} s", t.elapsed().as_secs_f64());
    let size = db_size(&client, &endpoints[0]).await;
    assert!(size >= 500 * 1024 * 1024, "the database holds {size} bytes");

    let writer = Writer::start(st, &endpoints, "/writer");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let cluster = inventory.cluster.as_str();
    let snapshots_before = snapshots(st, cluster).len();
    let state_before = dir_bytes(st);

    lab.crash("etcd2", "etcd.service", true)
        .await
        .expect("crash");
    // About 16 MB/s towards etcd2: the database takes over 30 s to arrive, twice the stall
    // timeout, while bytes keep arriving all along.
    let throttled = haop(
        st,
        &["lab", "throttle", &name, "etcd2", "--rate", "128mbit"],
    );
    assert!(throttled.status.success(), "{}", text(&throttled));
    let started = Instant::now();
    let recovered = haop(st, &["etcd", "recover", "etcd2", "-f", &inv]);
    let took = started.elapsed();
    let said = text(&recovered);
    eprintln!("recovered etcd2 ({size} bytes) through the throttled link in {took:?}");
    assert!(
        recovered.status.success(),
        "recovery failed on its first run:\n{said}"
    );
    assert!(
        took > Duration::from_secs(10),
        "the throttled catch-up took only {took:?}: the test did not exercise a long wait\n{said}"
    );
    assert!(
        said.contains("etcd2: receiving the database") || said.contains("etcd2: raft index"),
        "recovery did not show the catch-up:\n{said}"
    );
    assert_eq!(
        said.matches("add etcd2 as a learner").count(),
        1,
        "the learner was added more than once:\n{said}"
    );
    assert!(!said.contains("made no progress"), "{said}");
    let unthrottled = haop(st, &["lab", "throttle", &name, "etcd2", "--off"]);
    assert!(unthrottled.status.success(), "{}", text(&unthrottled));

    // One snapshot for the whole operation, and the state dir grew by about one database.
    let after = snapshots(st, cluster);
    assert_eq!(
        after.len(),
        snapshots_before + 1,
        "snapshots taken: {after:?}\n{said}"
    );
    let growth = dir_bytes(st).saturating_sub(state_before);
    assert!(
        growth < size + size / 4,
        "the state dir grew by {growth} bytes for a {size}-byte database"
    );
    // No moved-aside copy beyond the policy on the recovered host.
    assert!(wiped_copies(&lab, "etcd2").len() <= 1);

    tokio::time::sleep(Duration::from_millis(300)).await;
    let acked = writer
        .finish_with_at_least(21, std::time::Duration::from_secs(30))
        .await;
    assert!(
        acked.len() > 20,
        "the writer wrote too little: {}",
        acked.len()
    );
    assert_eq!(members(&client).await, voters_named(3));
    wait_all_healthy(st, &inventory).await;
    // Every acknowledged write on every member, etcd2 included.
    let ep2 = inventory.etcd_client_url(inventory.host("etcd2").unwrap());
    let only2 = EtcdClient::connect(st, std::slice::from_ref(&ep2), Duration::from_secs(5))
        .await
        .unwrap();
    assert_all_present(&only2, &acked).await;
    assert_all_present(&client, &acked).await;
    for key in [
        &filled[0],
        &filled[filled.len() / 2],
        &filled[filled.len() - 1],
    ] {
        assert!(
            only2.get(key).await.unwrap().is_some(),
            "{key} missing on etcd2"
        );
    }
    lab.down().expect("lab down");
}

/// Bytes of the regular files under `dir` (lab hosts' roots excluded: only the coordinator's
/// own state).
fn dir_bytes(dir: &Path) -> u64 {
    let mut total = 0;
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.ends_with("labs") {
                continue;
            }
            let Ok(m) = std::fs::symlink_metadata(&p) else {
                continue;
            };
            if m.is_dir() {
                todo.push(p);
            } else if m.is_file() {
                total += m.len();
            }
        }
    }
    total
}

/// A learner whose process stops making progress is reported with what stalled and left as it
/// is (not removed, not wiped); once it runs again, a rerun finishes with the same learner.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_learner_is_reported_and_left_and_a_rerun_finishes() {
    if !require_root() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let st = state.path();
    let name = format!("t{}-stall", std::process::id() % 100_000);
    let (lab, path, inventory, client) = lab_with(st, &name, Etcd::Debian, |_| {}).await;
    let inv = path.display().to_string();
    // 7000 values of 8 KiB: 55 MiB, past etcd's log.
    fill(client.clone(), 7000, 8 * 1024).await;
    let writer = Writer::start(st, &inventory.etcd_client_urls(), "/writer");

    lab.crash("etcd2", "etcd.service", true)
        .await
        .expect("crash");
    // So slow that the learner is still receiving when it is stopped.
    let throttled = haop(st, &["lab", "throttle", &name, "etcd2", "--rate", "4mbit"]);
    assert!(throttled.status.success(), "{}", text(&throttled));
    let run = Command::new(haop_bin())
        .env("HAOP_STATE_DIR", st)
        .args([
            "etcd",
            "recover",
            "etcd2",
            "-f",
            &inv,
            "--stall-timeout",
            "8",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Once the learner runs, stop its process (by its pid, as the agent reports it).
    let deadline = Instant::now() + Duration::from_secs(60);
    let (learner_id, pid) = loop {
        assert!(Instant::now() < deadline, "the learner never started");
        let learner = member_ids(&client).await.into_iter().find(|m| m.2);
        let status = haop(
            st,
            &[
                "agent", "--lab", &name, "--host", "etcd2", "-o", "json", "unit",
                "etcd", // as systemctl takes it: etcd.service
                "status",
            ],
        );
        let pid = serde_json::from_slice::<serde_json::Value>(&status.stdout)
            .ok()
            .and_then(|v| v["main_pid"].as_u64())
            .unwrap_or(0);
        if let (Some(l), true) = (learner, pid > 0) {
            break (l.1, pid as i32);
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let stopped = nix::unistd::Pid::from_raw(pid);
    nix::sys::signal::kill(stopped, nix::sys::signal::Signal::SIGSTOP).unwrap();
    let out = tokio::task::spawn_blocking(move || run.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let said = text(&out);
    nix::sys::signal::kill(stopped, nix::sys::signal::Signal::SIGCONT).unwrap();
    assert!(
        !out.status.success(),
        "recovery did not notice the stall:\n{said}"
    );
    assert!(said.contains("made no progress"), "{said}");
    assert!(said.contains("etcd2"), "{said}");
    assert!(said.contains("run the command again"), "{said}");
    // Left as it is: still the same learner, never removed.
    assert!(
        member_ids(&client)
            .await
            .iter()
            .any(|m| m.1 == learner_id && m.2),
        "the stalled learner was removed"
    );
    assert!(!said.contains("remove member etcd2 (") || said.matches("remove member").count() == 1);

    let lifted = haop(st, &["lab", "throttle", &name, "etcd2", "--off"]);
    assert!(lifted.status.success(), "{}", text(&lifted));
    let rerun = haop(st, &["etcd", "recover", "etcd2", "-f", &inv]);
    let said = text(&rerun);
    assert!(rerun.status.success(), "{said}");
    assert!(
        !said.contains("as a learner"),
        "the rerun added a new learner:\n{said}"
    );
    let now = member_ids(&client).await;
    assert!(
        now.iter().any(|m| m.1 == learner_id && !m.2),
        "the same member was not promoted: {now:?}"
    );
    let acked = writer
        .finish_with_at_least(21, std::time::Duration::from_secs(30))
        .await;
    assert_eq!(members(&client).await, voters_named(3));
    assert_all_present(&client, &acked).await;
    lab.down().expect("lab down");
}

/// A state dir without room for the operation's snapshot: a clear error naming both sizes before
/// any membership change; with room again, recovery finishes. Then the retention, over many
/// operations, keeps the state dir and the hosts within the policy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_is_checked_first_and_the_retention_holds_over_many_operations() {
    if !require_root() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let st = state.path();
    let name = format!("t{}-room", std::process::id() % 100_000);
    let (lab, path, inventory, client) = lab_with(st, &name, Etcd::Debian, |inv| {
        inv.etcd.retention = retention(2);
    })
    .await;
    let inv = path.display().to_string();
    fill(client.clone(), 400, 32 * 1024).await;
    let cluster = inventory.cluster.as_str().to_string();

    // The snapshots dir on a 4 MiB tmpfs: no room for a 13 MiB database.
    let snaps = haop_coordinator::etcd::snapshots::snapshot_dir(st, &cluster);
    std::fs::create_dir_all(&snaps).unwrap();
    let tiny = Mount::tmpfs(&snaps, "4m");
    let before = member_ids(&client).await;
    lab.crash("etcd2", "etcd.service", true)
        .await
        .expect("crash");
    let refused = haop(st, &["etcd", "recover", "etcd2", "-f", &inv]);
    let said = text(&refused);
    assert!(!refused.status.success(), "{said}");
    assert!(
        said.contains("the state dir has") && said.contains("the next snapshot needs"),
        "{said}"
    );
    assert!(said.contains(&snaps.display().to_string()), "{said}");
    assert_eq!(member_ids(&client).await, before, "the membership changed");
    // `haop etcd snapshot save` checks the same way, and writes nothing.
    let save = haop(st, &["etcd", "snapshot", "save", "-f", &inv]);
    let said = text(&save);
    assert!(!save.status.success(), "{said}");
    assert!(said.contains("nothing was written"), "{said}");
    assert!(
        snapshots(st, &cluster).is_empty(),
        "a partial snapshot was left"
    );
    drop(tiny);
    let recovered = haop(st, &["etcd", "recover", "etcd2", "-f", &inv]);
    assert!(recovered.status.success(), "{}", text(&recovered));

    // Many operations: each takes a snapshot, and each moves the member's data dir aside (the
    // member is stopped, not wiped, so its data dir is still there when recovery wipes it).
    let mut said = text(&recovered);
    for round in 0..3 {
        let stopped = haop(
            st,
            &[
                "agent",
                "--lab",
                &name,
                "--host",
                "etcd2",
                "unit",
                "etcd.service",
                "stop",
            ],
        );
        assert!(stopped.status.success(), "{}", text(&stopped));
        let out = haop(st, &["etcd", "recover", "etcd2", "-f", &inv]);
        assert!(
            out.status.success(),
            "round {round} recover: {}",
            text(&out)
        );
        said.push_str(&text(&out));
    }
    assert!(
        said.contains("moved to"),
        "no data dir was moved aside:\n{said}"
    );
    assert!(
        said.contains("moved aside earlier (etcd.retention)"),
        "the retention deleted no moved-aside data dir:\n{said}"
    );
    assert!(
        said.contains("(etcd.retention)") && said.contains("deleted snapshot"),
        "the retention deleted no snapshot:\n{said}"
    );
    let kept = snapshots(st, &cluster);
    assert!(kept.len() <= 2, "the state dir keeps {kept:?}");
    let copies = wiped_copies(&lab, "etcd2");
    assert!(copies.len() <= 1, "etcd2 keeps {copies:?}");
    assert_eq!(members(&client).await, voters_named(3));
    lab.down().expect("lab down");
}

/// A tmpfs mounted for a test, unmounted on drop (also when the test fails).
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, size: &str) -> Mount {
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(at)
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount tmpfs at {}", at.display());
        Mount(at.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}
