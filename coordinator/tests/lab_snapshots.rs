//! Snapshots a restore can count on, in the lab with real etcd (Debian's 3.4), on one small
//! cluster (a few hundred keys), in order:
//!
//! * `haop status` is degraded while no snapshot is verified (etcd.snapshots.stale_after set),
//!   healthy once one is;
//! * a snapshot whose bytes were flipped fails `verify`, `list` says why, and `restore` passes
//!   over it for the older verified one (the keys written between the two are gone after);
//! * the state dir lost, but for `pki/` and `secrets/`: `restore --from-host` takes a host's
//!   encrypted copy and brings back a cluster with its data, after quorum was lost;
//! * `haop etcd snapshot schedule` with a 1 s interval, stopped by SIGTERM after several
//!   rounds, exits cleanly and leaves what the retention says, in the state dir and on the
//!   hosts, and no temp file.

mod common;

use common::{haop, members, require_root, text, voters_named, Etcd};

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use haop_coordinator::etcd::api::EtcdClient;
use haop_coordinator::etcd::snapshots;
use haop_coordinator::inventory::Inventory;
use haop_coordinator::lab::{LabGuard, LabSpec};

/// Puts `n` keys `PREFIX/i`.
async fn put_keys(client: &EtcdClient, prefix: &str, n: usize) {
    for i in 0..n {
        client
            .put(&format!("{prefix}/{i:04}"), &[b'k'; 200])
            .await
            .unwrap();
    }
}

async fn has(client: &EtcdClient, key: &str) -> bool {
    client.get(key).await.unwrap().is_some()
}

async fn healthy_client(st: &Path, endpoints: &[String]) -> EtcdClient {
    let client = EtcdClient::connect(st, endpoints, Duration::from_secs(2))
        .await
        .unwrap();
    client
        .wait_for_quorum(endpoints, 3, Duration::from_secs(30))
        .await
        .expect("a healthy cluster");
    client
}

/// The state dir's snapshots, as `haop etcd snapshot list -o json` prints them.
fn listed(st: &Path, inv: &str) -> Vec<serde_json::Value> {
    let out = haop(st, &["etcd", "snapshot", "list", "-f", inv, "-o", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn status_json(st: &Path, inv: &str) -> (Option<i32>, serde_json::Value) {
    let out = haop(st, &["status", "-f", inv, "-o", "json"]);
    (
        out.status.code(),
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(&out))),
    )
}

/// A copy of `st` with only what an operator must back up: `pki/` and `secrets/`.
fn salvaged(st: &Path) -> tempfile::TempDir {
    let lost = tempfile::tempdir().unwrap();
    for d in ["pki", "secrets"] {
        let out = std::process::Command::new("cp")
            .arg("-a")
            .arg(st.join(d))
            .arg(lost.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "cp {d}");
    }
    lost
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_verified_kept_off_the_coordinator_and_pruned_etcd_3_4() {
    if !require_root() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let st = state.path();
    let name = format!("t{}-snap", std::process::id() % 100_000);
    let lab = LabGuard::up(st, &name, LabSpec::default())
        .await
        .expect("lab up");
    let inv_path = Etcd::Debian.inventory(st, &lab, |inv| {
        inv.etcd.snapshots.copies = 1;
        inv.etcd.snapshots.stale_after = "1h".parse().unwrap();
        inv.etcd.retention.snapshots = 3;
    });
    let inv = inv_path.display().to_string();
    let applied = haop(st, &["apply", "-f", &inv]);
    assert!(applied.status.success(), "{}", text(&applied));
    let (inventory, _) = Inventory::load(&inv_path).unwrap();
    let endpoints = inventory.etcd_client_urls();
    let client = healthy_client(st, &endpoints).await;

    // No verified snapshot yet: status says so and is degraded.
    let (code, report) = status_json(st, &inv);
    assert_eq!(code, Some(1), "{report:#}");
    let problems = report["problems"].as_array().unwrap();
    assert_eq!(problems.len(), 1, "{report:#}");
    assert_eq!(problems[0]["section"], "snapshots");
    assert!(
        problems[0]["message"]
            .as_str()
            .unwrap()
            .contains("no verified etcd snapshot"),
        "{report:#}"
    );

    // A: saved (encrypted, recorded, copied to a host that is not its member), verified.
    put_keys(&client, "/pre", 200).await;
    let saved = haop(st, &["etcd", "snapshot", "save", "-f", &inv]);
    let said = text(&saved);
    assert!(saved.status.success(), "{said}");
    assert!(
        said.contains("encrypted") && said.contains("copied to etcd2"),
        "{said}"
    );
    let verified = haop(st, &["etcd", "snapshot", "verify", "-f", &inv]);
    assert!(verified.status.success(), "{}", text(&verified));
    assert!(
        text(&verified).contains(": verified in"),
        "{}",
        text(&verified)
    );
    let a = listed(st, &inv);
    assert_eq!(a.len(), 1);
    let a_path = PathBuf::from(a[0]["path"].as_str().unwrap());
    assert_eq!(a[0]["state"], "verified", "{a:#?}");
    assert_eq!(a[0]["meta"]["copies"][0]["host"], "etcd2");
    let (code, report) = status_json(st, &inv);
    assert_eq!(code, Some(0), "{report:#}");
    assert_eq!(
        report["snapshots"]["newest_verified"].as_str(),
        a_path.file_name().unwrap().to_str()
    );

    // B: later data, then bytes flipped in the file: verify fails and list says why.
    put_keys(&client, "/mid", 50).await;
    let saved = haop(st, &["etcd", "snapshot", "save", "-f", &inv]);
    assert!(saved.status.success(), "{}", text(&saved));
    let b = listed(st, &inv);
    let b_path = PathBuf::from(b[1]["path"].as_str().unwrap());
    let mut bytes = std::fs::read(&b_path).unwrap();
    let mid = bytes.len() / 2;
    for x in &mut bytes[mid..mid + 16] {
        *x ^= 0x5a;
    }
    std::fs::write(&b_path, &bytes).unwrap();
    let b_name = b_path.file_name().unwrap().to_str().unwrap();
    let failed = haop(st, &["etcd", "snapshot", "verify", "-f", &inv, b_name]);
    assert_eq!(failed.status.code(), Some(1), "{}", text(&failed));
    assert!(text(&failed).contains("FAILED"), "{}", text(&failed));
    let list = haop(st, &["etcd", "snapshot", "list", "-f", &inv]);
    let row = String::from_utf8_lossy(&list.stdout)
        .lines()
        .find(|l| l.starts_with(b_name))
        .map(str::to_string)
        .unwrap_or_default();
    assert!(
        row.contains("failed:") && row.contains("corrupt"),
        "list does not say why {b_name} failed: {row:?}\n{}",
        text(&list)
    );

    // Restore passes over B (newer, failed) for A (older, verified): /mid is gone after.
    let restored = haop(st, &["etcd", "restore", "-f", &inv, "--yes"]);
    let said = text(&restored);
    assert!(restored.status.success(), "{said}");
    assert!(
        said.contains(&format!("chosen: {}", a_path.display())),
        "restore did not choose the verified snapshot:\n{said}"
    );
    assert!(
        said.contains("revisions written since would be lost"),
        "{said}"
    );
    let client = healthy_client(st, &endpoints).await;
    assert!(has(&client, "/pre/0199").await, "A's data is back");
    assert!(!has(&client, "/mid/0000").await, "B was restored");

    // The operator's state dir is lost but for pki/ and secrets/, and so is quorum: a host's
    // copy of A brings the cluster back with A's data.
    put_keys(&client, "/post", 20).await;
    let lost = salvaged(st);
    for h in ["etcd2", "etcd3"] {
        lab.crash(h, "etcd.service", true).await.expect("crash");
    }
    let restored = haop(
        lost.path(),
        &[
            "etcd",
            "restore",
            "-f",
            &inv,
            "--from-host",
            "etcd2",
            "--yes",
        ],
    );
    let said = text(&restored);
    assert!(restored.status.success(), "{said}");
    assert!(said.contains("fetched etcd2's copy"), "{said}");
    let client = healthy_client(lost.path(), &endpoints).await;
    assert_eq!(members(&client).await, voters_named(3));
    assert!(has(&client, "/pre/0000").await && has(&client, "/pre/0199").await);
    assert!(!has(&client, "/post/0000").await);
    drop(client);

    // The schedule: several rounds at a 1 s interval, then SIGTERM.
    let mut child = std::process::Command::new(common::haop_bin())
        .env("HAOP_STATE_DIR", st)
        .env_remove("RUST_LOG")
        .args([
            "etcd",
            "snapshot",
            "schedule",
            "-f",
            &inv,
            "--interval",
            "1s",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let log = st.join("schedule.log");
    let mut stderr = child.stderr.take().unwrap();
    let collect = std::thread::spawn({
        let log = log.clone();
        move || {
            let mut f = std::fs::File::create(&log).unwrap();
            std::io::copy(&mut stderr, &mut f).unwrap();
        }
    });
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let said = std::fs::read_to_string(&log).unwrap_or_default();
        // Each round's verification logs `<time> verified <path>: ...`.
        if said.lines().filter(|l| l.contains("Z verified /")).count() >= 5 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the schedule exited:\n{said}"
        );
        assert!(Instant::now() < deadline, "too few rounds:\n{said}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = child.wait().unwrap();
    collect.join().unwrap();
    let said = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "exit {status:?}:\n{said}");
    assert!(said.contains("stopping"), "{said}");
    assert!(!said.contains("round failed"), "{said}");
    assert!(said.contains("deleted snapshot"), "{said}");

    // The retention (3): the three newest, all verified, in the state dir; at most three
    // copies on each host; no temp file or scratch directory left behind.
    let kept = snapshots::entries(st, &name);
    assert_eq!(kept.len(), 3, "{kept:#?}");
    assert!(
        kept.iter().all(|e| e.state == snapshots::State::Verified),
        "{kept:#?}"
    );
    assert!(!kept.iter().any(|e| e.path == a_path || e.path == b_path));
    let files: Vec<String> = std::fs::read_dir(snapshots::snapshot_dir(st, &name))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(files.len(), 6, "a snapshot and its record each: {files:?}");
    let scratch: Vec<_> = std::fs::read_dir(st.join("tmp")).unwrap().collect();
    assert!(scratch.is_empty(), "{scratch:?}");
    for h in ["etcd1", "etcd2", "etcd3"] {
        let index = snapshots::copies::host_copies(st, &inventory, h)
            .await
            .unwrap();
        assert!(index.copies.len() <= 3, "{h}: {:#?}", index.copies);
    }
    let on_etcd2 = snapshots::copies::host_copies(st, &inventory, "etcd2")
        .await
        .unwrap();
    assert!(
        on_etcd2.copies.len() >= 2,
        "the rounds' copies went to etcd2: {:#?}",
        on_etcd2.copies
    );

    lab.down().expect("lab down");
}

/// `etcd.snapshots.reuse_for_repairs`: a recovery within that age of a verified snapshot uses it
/// as its safety net and takes none (the state dir does not grow); one past it takes its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_repair_reuses_a_fresh_verified_snapshot_when_the_inventory_allows_it() {
    if !require_root() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let st = state.path();
    let name = format!("t{}-ru", std::process::id() % 100_000);
    let lab = LabGuard::up(st, &name, LabSpec::default())
        .await
        .expect("lab up");
    let inv_path = Etcd::Debian.inventory(st, &lab, |inv| {
        inv.etcd.snapshots.reuse_for_repairs = "10m".parse().unwrap();
    });
    let inv = inv_path.display().to_string();
    let applied = haop(st, &["apply", "-f", &inv]);
    assert!(applied.status.success(), "{}", text(&applied));
    let (inventory, _) = Inventory::load(&inv_path).unwrap();
    let endpoints = inventory.etcd_client_urls();
    let client = healthy_client(st, &endpoints).await;
    put_keys(&client, "/reuse", 50).await;
    for args in [
        &["etcd", "snapshot", "save", "-f", &inv][..],
        &["etcd", "snapshot", "verify", "-f", &inv][..],
    ] {
        let o = haop(st, args);
        assert!(o.status.success(), "{}", text(&o));
    }
    let cluster = inventory.cluster.as_str();
    let before = snapshots::list(st, cluster).len();

    lab.crash("etcd2", "etcd.service", true)
        .await
        .expect("crash");
    let o = haop(st, &["etcd", "recover", "etcd2", "-f", &inv]);
    assert!(o.status.success(), "{}", text(&o));
    let out = text(&o);
    assert!(out.contains("reusing"), "{out}");
    assert_eq!(snapshots::list(st, cluster).len(), before, "{out}");
    assert_eq!(members(&client).await, voters_named(3));
    assert!(has(&client, "/reuse/0049").await);

    // Past the allowed age (the inventory says 0s now: never), a repair takes its own.
    let inv_path = Etcd::Debian.inventory(st, &lab, |_| {});
    let inv = inv_path.display().to_string();
    lab.crash("etcd3", "etcd.service", true)
        .await
        .expect("crash");
    let o = haop(st, &["etcd", "recover", "etcd3", "-f", &inv]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(!text(&o).contains("reusing"), "{}", text(&o));
    assert_eq!(snapshots::list(st, cluster).len(), before + 1);
    assert_eq!(members(&client).await, voters_named(3));
    lab.down().unwrap();
}
