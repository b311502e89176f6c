//! `haop certs renew` in the lab with real etcd: certificates issued with a short lifetime are
//! renewed (new keys, new serials) while a client keeps writing, members restart one at a time,
//! and every acknowledged write is readable afterwards.

mod common;

use common::{haop, text, Writer};

use std::path::{Path, PathBuf};
use std::time::Duration;

use haop_coordinator::etcd::api::EtcdClient;
use haop_coordinator::inventory::Inventory;
use haop_coordinator::lab::{LabGuard, LabSpec};

fn serial(root: &Path, file: &str) -> String {
    let pem = std::fs::read_to_string(root.join("etc/kubernetes/pki/etcd").join(file)).unwrap();
    haop_coordinator::pki::inspect(&pem).unwrap()[0]
        .serial_hex
        .clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_lived_certificates_are_renewed_under_a_writer() {
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var_os("HAOP_SKIP_LAB_TESTS").is_some(),
            "lab tests need root; set HAOP_SKIP_LAB_TESTS=1 to skip them"
        );
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let st = state.path();
    let name = format!("t{}-rn", std::process::id() % 100_000);
    let lab = LabGuard::up(st, &name, LabSpec::default())
        .await
        .expect("lab up");
    // Certificates that live one hour.
    let (mut inv, _) = Inventory::load(&lab.inventory_path()).unwrap();
    inv.pki.lifetime = "1h".parse().unwrap();
    // And RSA 2048 host keys, as the seed's cfssl config used.
    inv.pki.key_algorithm = haop_coordinator::pki::KeyAlgorithm::Rsa2048;
    let path = st.join("short.yaml");
    std::fs::write(&path, inv.to_yaml().unwrap()).unwrap();
    let p = path.display().to_string();
    let applied = haop(st, &["apply", "-f", &p]);
    assert!(applied.status.success(), "{}", text(&applied));
    // A second apply converges: a third of the lifetime is left, nothing is re-issued.
    let again = haop(st, &["plan", "-f", &p, "--exit-code"]);
    assert_eq!(again.status.code(), Some(0), "{}", text(&again));

    let roots: Vec<PathBuf> = lab.hosts().iter().map(|h| h.root_dir.clone()).collect();
    for r in &roots {
        let pem = std::fs::read_to_string(r.join("etc/kubernetes/pki/etcd/server.crt")).unwrap();
        let info = &haop_coordinator::pki::inspect(&pem).unwrap()[0];
        assert_eq!(info.key_algorithm, "rsa-2048");
        let left = info.not_after - time::OffsetDateTime::now_utc();
        assert!(
            left <= time::Duration::hours(1),
            "lifetime from the inventory: {left}"
        );
    }
    let before: Vec<String> = roots.iter().map(|r| serial(r, "server.crt")).collect();

    let endpoints = inv.etcd_client_urls();
    let writer = Writer::start(st, &endpoints, "/renew");
    tokio::time::sleep(Duration::from_millis(200)).await;
    let renewed = haop(st, &["certs", "renew", "-f", &p, "--expiring-within", "1d"]);
    let said = text(&renewed);
    assert!(renewed.status.success(), "{said}");
    assert!(
        said.contains("8 certificate(s) renewed") || said.contains("6 certificate(s) renewed"),
        "{said}"
    );
    // One member at a time: each restart is followed by its recovery before the next.
    let restarts: Vec<usize> = said.match_indices("restarting").map(|(i, _)| i).collect();
    let healthy: Vec<usize> = said
        .match_indices("healthy and caught up")
        .map(|(i, _)| i)
        .collect();
    assert_eq!(restarts.len(), 3, "{said}");
    for (r, h) in restarts.iter().zip(&healthy) {
        assert!(r < h, "{said}");
    }
    assert!(
        restarts[1] > healthy[0] && restarts[2] > healthy[1],
        "{said}"
    );
    let acked = writer
        .finish_with_at_least(21, std::time::Duration::from_secs(30))
        .await;
    assert!(acked.len() > 20, "{}", acked.len());

    let after: Vec<String> = roots.iter().map(|r| serial(r, "server.crt")).collect();
    for (b, a) in before.iter().zip(&after) {
        assert_ne!(b, a, "a certificate was not re-issued");
    }
    let client = EtcdClient::connect(st, &endpoints, Duration::from_secs(2))
        .await
        .unwrap();
    client
        .wait_for_quorum(&endpoints, 3, Duration::from_secs(30))
        .await
        .expect("healthy after renewal");
    for key in &acked {
        assert!(
            client.get(key).await.unwrap().is_some(),
            "acknowledged write {key} lost"
        );
    }
    // A snapshot into the state dir (its directory made on first use), checksummed.
    let snap = haop(st, &["etcd", "snapshot", "save", "-f", &p]);
    assert!(snap.status.success(), "{}", text(&snap));
    // The snapshot and its record (`.json`) beside it.
    let saved = haop_coordinator::etcd::snapshots::list(st, inv.cluster.as_str()).len();
    assert_eq!(saved, 1, "{}", text(&snap));
    assert!(text(&snap).contains("sha256"), "{}", text(&snap));

    // Maintenance on the same cluster: no alarms; a rolling defrag keeps it healthy.
    let alarms = haop(st, &["etcd", "alarms", "-f", &p]);
    assert!(alarms.status.success(), "{}", text(&alarms));
    assert!(
        text(&alarms).contains("no active alarms"),
        "{}",
        text(&alarms)
    );
    let defrag = haop(st, &["etcd", "defrag", "-f", &p]);
    let said = text(&defrag);
    assert!(defrag.status.success(), "{said}");
    assert_eq!(said.matches("defragmented").count(), 3, "{said}");
    client
        .wait_for_quorum(&endpoints, 3, Duration::from_secs(30))
        .await
        .expect("healthy after defrag");

    lab.down().expect("lab down");
}
