//! `haop etcd upgrade` with real binaries: Debian's 3.4.23 -> 3.5.16 (trixie) -> 3.5.30 (sid) on a
//! three-member lab under a writer. Every acknowledged write is there afterwards, the longest
//! write gap is reported, each member reports the new version, etcd's cluster version moves
//! only after the last member, and the inventory records what runs. The first upgrade is killed
//! after each member and run again; the second is killed after its first member and rolled
//! back, then finished. The gates refuse with their messages: a skipped minor, a 3.5.1 target
//! without --force, a cluster with a member cut off.

mod common;

use common::{assert_all_present, etcd_release, haop, require_root, text, Writer};

use std::path::Path;
use std::time::Duration;

use haop_coordinator::etcd::api::EtcdClient;
use haop_coordinator::etcd::upgrade::observe::versions_of;
use haop_coordinator::inventory::Inventory;

fn lab_name(case: &str) -> String {
    format!("t{}-{case}", std::process::id() % 100_000)
}

/// Every member's version, as etcd's status answers it, in inventory order (asked again for a
/// while when a member does not answer: one restarted a moment ago breaks the old connection).
async fn versions(client: &EtcdClient, endpoints: &[String]) -> Vec<String> {
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    loop {
        let got: Vec<String> = client
            .statuses(endpoints)
            .await
            .into_iter()
            .map(|s| {
                s.map(|s| s.version)
                    .unwrap_or_else(|e| format!("error: {e}"))
            })
            .collect();
        if !got.iter().any(|v| v.starts_with("error")) || std::time::Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn upgrade(st: &Path, inv: &str, version: &str, failpoint: Option<&str>) -> std::process::Output {
    let (bin, sha) = etcd_release(version);
    let mut cmd = std::process::Command::new(common::haop_bin());
    cmd.env("HAOP_STATE_DIR", st).args([
        "etcd",
        "upgrade",
        "-f",
        inv,
        "--to",
        version,
        "--binary",
        &bin.display().to_string(),
        "--sha256",
        &sha,
    ]);
    if let Some(f) = failpoint {
        cmd.env(haop_coordinator::failpoint::ENV, f);
    }
    let out = cmd.output().unwrap();
    eprintln!("haop etcd upgrade --to {version}:\n{}", text(&out));
    out
}

#[tokio::test]
async fn upgrade_34_to_3516_to_3530_under_a_writer_killed_rolled_back_and_gated() {
    if !require_root() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let st = state.path();
    let (lab, inv, inventory) = common::applied_lab(st, &lab_name("up")).await;
    let endpoints = inventory.etcd_client_urls();
    let client = EtcdClient::connect(st, &endpoints, Duration::from_secs(2))
        .await
        .unwrap();
    assert!(versions(&client, &endpoints)
        .await
        .iter()
        .all(|v| v == "3.4.23"));

    // The gates, each with its rule, before anything changes.
    for (args, says) in [
        (vec!["--to", "3.6.0"], "skips etcd 3.5"),
        (vec!["--to", "3.5.1"], "refused as a target"),
    ] {
        let mut a = vec!["etcd", "upgrade", "-f", &inv, "--dry-run"];
        a.extend(args);
        let out = haop(st, &a);
        assert!(!out.status.success(), "{}", text(&out));
        assert!(text(&out).contains(says), "{}", text(&out));
    }
    assert!(lab.cut("etcd3").unwrap());
    let out = upgrade(st, &inv, "3.5.16", None);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("not healthy: etcd3 does not answer."),
        "{}",
        text(&out)
    );
    assert!(lab.restore("etcd3").unwrap());
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while client.health(&endpoints[2]).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "etcd3 did not come back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(versions(&client, &endpoints)
        .await
        .iter()
        .all(|v| v == "3.4.23"));

    let writer = Writer::start(st, &endpoints, "/writer");
    tokio::time::sleep(Duration::from_millis(300)).await;

    // 3.4.23 -> 3.5.16, killed after each member in turn: each run moves one more member, the
    // cluster version stays 3.4 until the last, and one snapshot serves the whole upgrade.
    // Snapshot files, not their records (NAME.json beside each).
    let snapshots = || {
        std::fs::read_dir(st.join("snapshots").join(inventory.cluster.as_str()))
            .map(|d| {
                d.flatten()
                    .filter(|e| !e.file_name().to_string_lossy().ends_with(".json"))
                    .count()
            })
            .unwrap_or(0)
    };
    for done in 1..=2 {
        let out = upgrade(st, &inv, "3.5.16", Some("upgrade:after-member"));
        assert!(
            !out.status.success(),
            "the failpoint aborts:\n{}",
            text(&out)
        );
        let v = versions(&client, &endpoints).await;
        assert_eq!(v.iter().filter(|v| *v == "3.5.16").count(), done, "{v:?}");
        let (_, cluster) = versions_of(st, &endpoints[0]).await.unwrap();
        assert_eq!(
            cluster,
            (3, 4),
            "the cluster version moves only after the last member"
        );
        assert_eq!(snapshots(), 1);
        // The inventory names the target from the start: plan shows the members left to move.
        let (recorded, _) = Inventory::load(Path::new(&inv)).unwrap();
        assert_eq!(recorded.etcd.version.unwrap().to_string(), "3.5.16");
        let plan = haop(st, &["plan", "-f", &inv, "--exit-code"]);
        assert!(!plan.status.success(), "{}", text(&plan));
    }
    let out = upgrade(st, &inv, "3.5.16", None);
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("cluster version 3.5"), "{}", text(&out));
    assert!(versions(&client, &endpoints)
        .await
        .iter()
        .all(|v| v == "3.5.16"));
    assert_eq!(snapshots(), 1);
    let (recorded, _) = Inventory::load(Path::new(&inv)).unwrap();
    assert_eq!(recorded.etcd.version.unwrap().to_string(), "3.5.16");
    let plan = haop(st, &["plan", "-f", &inv, "--exit-code"]);
    assert!(
        plan.status.success(),
        "apply would change nothing:\n{}",
        text(&plan)
    );

    // Back a minor is no longer possible: the cluster version moved.
    let out = haop(
        st,
        &["etcd", "upgrade", "-f", &inv, "--to", "3.4.23", "--dry-run"],
    );
    assert!(!out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("cluster version"), "{}", text(&out));

    // 3.5.16 -> 3.5.30, killed after its first member, rolled back, then done for good.
    let out = upgrade(st, &inv, "3.5.30", Some("upgrade:after-member"));
    assert!(!out.status.success());
    let v = versions(&client, &endpoints).await;
    assert_eq!(v.iter().filter(|v| *v == "3.5.30").count(), 1, "{v:?}");
    let back = haop(st, &["etcd", "upgrade", "-f", &inv, "--rollback"]);
    assert!(back.status.success(), "{}", text(&back));
    assert!(versions(&client, &endpoints)
        .await
        .iter()
        .all(|v| v == "3.5.16"));
    let (recorded, _) = Inventory::load(Path::new(&inv)).unwrap();
    assert_eq!(recorded.etcd.version.unwrap().to_string(), "3.5.16");
    let out = upgrade(st, &inv, "3.5.30", None);
    assert!(out.status.success(), "{}", text(&out));
    assert!(versions(&client, &endpoints)
        .await
        .iter()
        .all(|v| v == "3.5.30"));
    let plan = haop(st, &["plan", "-f", &inv, "--exit-code"]);
    assert!(plan.status.success(), "{}", text(&plan));

    writer.wait_for(101, Duration::from_secs(30)).await;
    let (acked, gap) = writer.finish_with_gap().await;
    eprintln!(
        "writer: {} acknowledged writes, longest gap between two {:.2} s",
        acked.len(),
        gap.as_secs_f64()
    );
    assert!(
        acked.len() > 100,
        "the writer wrote too little: {}",
        acked.len()
    );
    assert_all_present(&client, &acked).await;
    // The quorum held: writes never stopped for long. (A gap is a restarted member's broken
    // connection plus an election, a few seconds on a loaded machine; a lost quorum would stall
    // the writer for as long as the rest of the upgrade.)
    assert!(gap < Duration::from_secs(15), "writes stalled for {gap:?}");
}
