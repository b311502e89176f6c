//! `haop certs rotate-ca --etcd` in the lab with real etcd: a new etcd CA without downtime.
//! A writer runs throughout and an etcdctl set up once with `haop etcd env` is used before,
//! during and after; afterwards no certificate of the old CA is left or trusted anywhere, a
//! client still holding the old CA's certificate is refused by every member, and every
//! acknowledged write is there. The rotation killed after a step continues when run again.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{certs_in, etcdctl, etcdctl_env, haop, text, Etcd, Writer};
use haop_coordinator::etcd::api::EtcdClient;
use haop_coordinator::inventory::Inventory;
use haop_coordinator::lab::{LabGuard, LabSpec};

const PKI: &str = "etc/kubernetes/pki/etcd";

fn ski(pem_path: &Path) -> Option<String> {
    let pem = std::fs::read_to_string(pem_path).unwrap();
    haop_coordinator::pki::inspect(&pem).unwrap()[0]
        .subject_key_id
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_etcd_ca_is_rotated_under_a_writer_on_etcd_3_4() {
    rotate_under_a_writer(Etcd::Debian).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_etcd_ca_is_rotated_under_a_writer_on_etcd_3_5() {
    rotate_under_a_writer(Etcd::V351).await
}

async fn rotate_under_a_writer(etcd: Etcd) {
    if !common::require_root() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let st = state.path();
    let name = format!("t{}-rc{}", std::process::id() % 100_000, etcd.tag());
    let lab = LabGuard::up(
        st,
        &name,
        LabSpec {
            etcd: 3,
            masters: 1,
            ..LabSpec::default()
        },
    )
    .await
    .expect("lab up");
    let inv_path = etcd.inventory(st, &lab, |_| {}).display().to_string();
    let applied = haop(st, &["apply", "-f", &inv_path]);
    assert!(applied.status.success(), "{}", text(&applied));
    let (inv, _) = Inventory::load(Path::new(&inv_path)).unwrap();
    let endpoints = inv.etcd_client_urls();
    let pki = haop_coordinator::trust::pki_dir(st);
    let old_ski = ski(&pki.join("etcd-ca.crt"));
    // The old CA's client credentials, kept to show they are refused afterwards.
    let old = tempfile::tempdir().unwrap();
    for f in ["etcd-ca.crt", "etcd-client.crt", "etcd-client.key"] {
        std::fs::copy(pki.join(f), old.path().join(f)).unwrap();
    }
    // etcdctl set up once, before.
    let env = etcdctl_env(st, &inv_path);
    let put = etcdctl(&env, &["put", "/rotate/before", "1"]);
    assert!(put.status.success(), "{}", text(&put));

    if etcd == Etcd::Debian {
        // An identity of the etcd channel would stop working: refused without --yes, named.
        let out = st.join("backup-identity");
        let issued = haop(
            st,
            &[
                "identity",
                "issue",
                "backup",
                "--role",
                "reader",
                "--etcd",
                "--out",
                &out.display().to_string(),
            ],
        );
        assert!(issued.status.success(), "{}", text(&issued));
        let refused = haop(st, &["certs", "rotate-ca", "--etcd", "-f", &inv_path]);
        assert!(!refused.status.success(), "{}", text(&refused));
        assert!(
            text(&refused).contains("backup") && text(&refused).contains("--yes"),
            "{}",
            text(&refused)
        );
        assert!(
            !haop_coordinator::certs::rotate_etcd::journal_path(st, inv.cluster.as_str()).exists()
        );
        // With a member down, no member is restarted: the rotation refuses and says why.
        let ca1 = std::fs::read(lab.hosts()[0].root_dir.join(PKI).join("ca.crt")).unwrap();
        let stop = haop(
            st,
            &[
                "agent", "--lab", &name, "--host", "etcd3", "unit", "etcd", "stop",
            ],
        );
        assert!(stop.status.success(), "{}", text(&stop));
        let probe = EtcdClient::connect(st, &endpoints, Duration::from_secs(1))
            .await
            .unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while probe.health(&endpoints[2]).await.is_ok() {
            assert!(std::time::Instant::now() < deadline, "etcd3 does not stop");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let refused = haop(
            st,
            &["certs", "rotate-ca", "--etcd", "--yes", "-f", &inv_path],
        );
        assert!(!refused.status.success(), "{}", text(&refused));
        assert!(text(&refused).contains("not whole"), "{}", text(&refused));
        assert_eq!(
            std::fs::read(lab.hosts()[0].root_dir.join(PKI).join("ca.crt")).unwrap(),
            ca1
        );
        let start = haop(
            st,
            &[
                "agent", "--lab", &name, "--host", "etcd3", "unit", "etcd", "start",
            ],
        );
        assert!(start.status.success(), "{}", text(&start));
        EtcdClient::connect(st, &endpoints, Duration::from_secs(2))
            .await
            .unwrap()
            .wait_for_quorum(&endpoints, 3, Duration::from_secs(30))
            .await
            .unwrap();
    }
    let writer = Writer::start(st, &endpoints, "/rotate");
    writer.wait_for(20, Duration::from_secs(30)).await;
    // Killed right after its first member took both CAs; run again, it continues.
    let killed = Command::new(common::haop_bin())
        .env("HAOP_STATE_DIR", st)
        .env("HAOP_FAILPOINT", "rotate-ca:after-step")
        .args(["certs", "rotate-ca", "--etcd", "--yes", "-f", &inv_path])
        .output()
        .unwrap();
    assert!(!killed.status.success(), "{}", text(&killed));
    assert!(text(&killed).contains("failpoint"), "{}", text(&killed));
    // (On 3.4 the refused run above made the new CA already: this run continued it.)

    // The rest, with etcdctl used all the while.
    let mut child = Command::new(common::haop_bin())
        .env("HAOP_STATE_DIR", st)
        .args(["certs", "rotate-ca", "--etcd", "--yes", "-f", &inv_path])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let mut during = 0;
    let mut failures = Vec::new();
    while child.try_wait().unwrap().is_none() {
        let key = format!("/rotate/etcdctl/{during:04}");
        let o = etcdctl(&env, &["put", &key, "x"]);
        if !o.status.success() {
            failures.push(text(&o));
        }
        during += 1;
        assert!(
            started.elapsed() < Duration::from_secs(300),
            "rotation hangs"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let out = child.wait_with_output().unwrap();
    let said = text(&out);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("continuing the rotation"), "{said}");
    assert!(said.contains("etcd CA rotated"), "{said}");
    assert!(during > 3, "etcdctl ran {during} times during the rotation");
    assert!(
        failures.is_empty(),
        "etcdctl failed {} of {during} times during the rotation: {failures:?}",
        failures.len()
    );
    let (acked, gap) = writer.finish_with_gap().await;
    eprintln!(
        "rotation: {} acknowledged writes, longest gap {:.2} s; {said}",
        acked.len(),
        gap.as_secs_f64()
    );
    // After: etcdctl with the same environment; every acknowledged write on every member.
    let get = etcdctl(&env, &["get", "/rotate/before", "--print-value-only"]);
    assert_eq!(
        String::from_utf8_lossy(&get.stdout).trim(),
        "1",
        "{}",
        text(&get)
    );
    let client = EtcdClient::connect(st, &endpoints, Duration::from_secs(2))
        .await
        .unwrap();
    common::assert_all_present(&client, &acked).await;
    for e in &endpoints {
        let env1: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| {
                if k == "ETCDCTL_ENDPOINTS" {
                    (k.clone(), e.clone())
                } else {
                    (k.clone(), v.clone())
                }
            })
            .collect();
        // The member's own view (serializable): the last acknowledged write is there.
        let last = acked.last().expect("writes were acknowledged");
        let got = etcdctl(
            &env1,
            &["get", last, "--consistency=s", "--print-value-only"],
        );
        assert_eq!(
            String::from_utf8_lossy(&got.stdout).trim(),
            "v",
            "{e}: {}",
            text(&got)
        );
    }
    // No certificate of the old CA left or trusted anywhere; the old key is gone.
    let new_ski = ski(&pki.join("etcd-ca.crt"));
    assert_ne!(new_ski, old_ski);
    assert!(!pki.join("etcd-ca-old.key").exists());
    assert!(!pki.join("etcd-ca-next.key").exists());
    assert!(!std::fs::read_dir(&pki).unwrap().flatten().any(|e| e
        .file_name()
        .to_string_lossy()
        .ends_with(".key")
        && std::fs::read(e.path()).ok() == std::fs::read(old.path().join("etcd-ca.key")).ok()));
    for h in lab.hosts() {
        let root: PathBuf = h.root_dir.clone();
        let ca = certs_in(&root, &format!("{PKI}/ca.crt"));
        assert_eq!(ca.len(), 1, "{}: ca.crt holds {} CAs", h.name, ca.len());
        assert_eq!(ca[0].subject_key_id, new_ski, "{}", h.name);
        let leaves: Vec<String> = if h.name.starts_with("etcd") {
            vec![format!("{PKI}/server.crt"), format!("{PKI}/peer.crt")]
        } else {
            vec!["etc/kubernetes/pki/apiserver-etcd-client.crt".into()]
        };
        for l in leaves {
            let c = &certs_in(&root, &l)[0];
            assert_eq!(
                c.authority_key_id, new_ski,
                "{}: {l} is not the new CA's",
                h.name
            );
        }
    }
    // A client still holding the old CA's certificate is refused, by every member (the server
    // side checked alone: the client skips verifying the server).
    for e in &endpoints {
        let o = common::put_as(
            e,
            Some((
                &old.path().join("etcd-client.crt"),
                &old.path().join("etcd-client.key"),
            )),
            "/rotate/old-ca",
        );
        assert!(
            !o.status.success(),
            "{e} accepted the old CA's client: {}",
            text(&o)
        );
    }
    let version = client.status_of(&endpoints[0]).await.unwrap().version;
    assert!(version.starts_with(etcd.version_prefix()), "{version}");
    let status = haop(st, &["status", "-f", &inv_path]);
    assert_eq!(status.status.code(), Some(0), "{}", text(&status));
    let plan = haop(st, &["plan", "-f", &inv_path, "--exit-code"]);
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
    lab.down().unwrap();
}
