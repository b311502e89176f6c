//! Recovery interrupted (Debian's etcd 3.4 and 3.5.1): `haop etcd recover` of a killed and
//! wiped member dies right after each of its steps in turn (stop the unit, snapshot, remove,
//! wipe, add the learner, start it, promote it; a failpoint aborts the process there, see
//! `haop_coordinator::failpoint`), and is run again each time; writes keep working in between,
//! and the last run converges to three started voters with every acknowledged write.

mod common;

use common::{haop, haop_bin, members, require_root, text, voters_named, Etcd};

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::Duration;

use haop_coordinator::etcd::api::EtcdClient;
use haop_coordinator::lab::{LabGuard, LabSpec};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_killed_after_each_step_converges_when_rerun_etcd_3_4() {
    recovery_killed_after_each_step_converges_when_rerun(Etcd::Debian).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recovery_killed_after_each_step_converges_when_rerun_etcd_3_5_1() {
    recovery_killed_after_each_step_converges_when_rerun(Etcd::V351).await
}

async fn recovery_killed_after_each_step_converges_when_rerun(etcd: Etcd) {
    if !require_root() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let st = state.path();
    let name = format!("t{}-rk{}", std::process::id() % 100_000, etcd.tag());
    let lab = LabGuard::up(st, &name, LabSpec::default())
        .await
        .expect("lab up");
    let inv_path = etcd.inventory(st, &lab, |_| {});
    let inv = inv_path.display().to_string();
    let applied = haop(st, &["apply", "-f", &inv]);
    assert!(applied.status.success(), "{}", text(&applied));
    let (inventory, _) = haop_coordinator::inventory::Inventory::load(&inv_path).unwrap();
    let endpoints = inventory.etcd_client_urls();
    let client = EtcdClient::connect(st, &endpoints, Duration::from_secs(2))
        .await
        .unwrap();
    let mut written = Vec::new();
    for i in 0..50 {
        let key = format!("/before/{i:03}");
        client.put(&key, b"v").await.unwrap();
        written.push(key);
    }

    lab.crash("etcd2", "etcd.service", true)
        .await
        .expect("crash");
    // Killed after each step in turn (a failpoint aborts the process right after the step, as
    // a SIGKILL would), each run continuing from where the last one left the cluster.
    for step in [
        "stop-unit",
        "snapshot",
        "remove",
        "wipe",
        "add-learner",
        "start-existing",
        "promote",
    ] {
        let failpoint = format!("recover:after-{step}");
        let out = Command::new(haop_bin())
            .env("HAOP_STATE_DIR", st)
            .env(haop_coordinator::failpoint::ENV, &failpoint)
            .args(["etcd", "recover", "etcd2", "-f", &inv])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let said = text(&out);
        assert_eq!(
            out.status.signal(),
            Some(nix::sys::signal::Signal::SIGABRT as i32),
            "recover was to die right after {step}:\n{said}"
        );
        assert!(said.contains(&format!("failpoint {failpoint}")), "{said}");
        // Writes keep working in between, whatever state the recovery was left in (a write may
        // time out during a leader election; it must succeed soon after).
        let key = format!("/between/{step}");
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            match client.put(&key, b"v").await {
                Ok(_) => break,
                Err(e) => assert!(
                    std::time::Instant::now() < deadline,
                    "no write succeeds after the kill after {step}: {e}"
                ),
            }
        }
        written.push(key);
    }
    let last = haop(st, &["etcd", "recover", "etcd2", "-f", &inv]);
    assert!(last.status.success(), "{}", text(&last));

    assert_eq!(members(&client).await, voters_named(3));
    client
        .wait_for_quorum(&endpoints, 3, Duration::from_secs(30))
        .await
        .expect("healthy");
    for key in &written {
        assert!(client.get(key).await.unwrap().is_some(), "{key} lost");
    }
    let plan = haop(st, &["plan", "-f", &inv, "--exit-code"]);
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
    lab.down().expect("lab down");
}
