//! Scaling etcd 3 -> 5 -> 3 in the lab (Debian's etcd 3.4 and 3.5.1) with a writer running: `haop etcd add` joins two hosts
//! one at a time (learner, promote), `haop apply` refuses to join a host by itself and converges
//! once it is a member, `haop etcd remove` takes them out again, `haop etcd replace` swaps a
//! member for another host; no acknowledged write is lost.

mod common;

use common::{haop, require_root, text, Etcd, Writer};

use std::time::Duration;

use haop_coordinator::etcd::api::EtcdClient;
use haop_coordinator::inventory::Inventory;
use haop_coordinator::lab::{LabGuard, LabSpec};

async fn voters(c: &EtcdClient) -> Vec<String> {
    let mut v: Vec<String> = c
        .member_list()
        .await
        .unwrap()
        .into_iter()
        .map(|m| format!("{}{}", m.name, if m.is_learner { " (learner)" } else { "" }))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_three_to_five_to_three_under_a_writer_etcd_3_4() {
    scale_three_to_five_to_three_under_a_writer(Etcd::Debian).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scale_three_to_five_to_three_under_a_writer_etcd_3_5_1() {
    scale_three_to_five_to_three_under_a_writer(Etcd::V351).await
}

async fn scale_three_to_five_to_three_under_a_writer(etcd: Etcd) {
    if !require_root() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let st = state.path();
    let name = format!("t{}-sc{}", std::process::id() % 100_000, etcd.tag());
    let spec = LabSpec {
        etcd: 5,
        masters: 0,
        workers: 0,
        from_seed: false,
    };
    let lab = LabGuard::up(st, &name, spec).await.expect("lab up");
    let (five, _) = Inventory::load(&etcd.inventory(st, &lab, |_| {})).unwrap();
    let mut three = five.clone();
    three
        .hosts
        .retain(|h| !["etcd4", "etcd5"].contains(&h.name.as_str()));
    let inv3 = st.join("three.yaml");
    let inv5 = st.join("five.yaml");
    std::fs::write(&inv3, three.to_yaml().unwrap()).unwrap();
    // The operator's file: their notes stay through haop's edits.
    let five_text = format!(
        "# operator's notes: etcd4 and etcd5 are new\n{}",
        five.to_yaml().unwrap()
    );
    std::fs::write(&inv5, &five_text).unwrap();
    let (i3, i5) = (inv3.display().to_string(), inv5.display().to_string());
    let hosts_in = |path: &std::path::Path| -> Vec<String> {
        let (inv, _) = Inventory::load(path).unwrap();
        inv.etcd_hosts()
            .iter()
            .map(|h| h.name.as_str().to_string())
            .collect()
    };

    let applied = haop(st, &["apply", "-f", &i3]);
    assert!(applied.status.success(), "{}", text(&applied));
    let all = five.etcd_client_urls();
    let client = EtcdClient::connect(st, &all, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(voters(&client).await, ["etcd1", "etcd2", "etcd3"]);

    let writer = Writer::start(st, &three.etcd_client_urls(), "/scale");

    // apply does not join hosts to a running cluster by itself; it says how.
    let refused = haop(st, &["apply", "-f", &i5]);
    let said = text(&refused);
    assert!(!refused.status.success(), "{said}");
    assert!(said.contains("haop etcd add etcd4"), "{said}");

    for host in ["etcd4", "etcd5"] {
        let out = haop(st, &["etcd", "add", host, "-f", &i5]);
        assert!(out.status.success(), "{}", text(&out));
    }
    assert_eq!(
        voters(&client).await,
        ["etcd1", "etcd2", "etcd3", "etcd4", "etcd5"]
    );
    let plan = haop(st, &["plan", "-f", &i5, "--exit-code"]);
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));

    // Adding a voter again is done already: it says so and changes nothing.
    let again = haop(st, &["etcd", "add", "etcd5", "-f", &i5]);
    assert!(again.status.success(), "{}", text(&again));
    assert!(text(&again).contains("a voter already"), "{}", text(&again));

    // Removing takes the hosts out of the inventory file too, and keeps the rest of it.
    for host in ["etcd5", "etcd4"] {
        let out = haop(st, &["etcd", "remove", host, "-f", &i5]);
        assert!(out.status.success(), "{}", text(&out));
        assert!(
            text(&out).contains(&format!("{host} taken out of the hosts")),
            "{}",
            text(&out)
        );
    }
    assert_eq!(voters(&client).await, ["etcd1", "etcd2", "etcd3"]);
    assert_eq!(hosts_in(&inv5), ["etcd1", "etcd2", "etcd3"]);
    let edited = std::fs::read_to_string(&inv5).unwrap();
    assert!(edited.starts_with("# operator's notes"), "{edited}");
    let plan = haop(st, &["plan", "-f", &i5, "--exit-code"]);
    assert_eq!(
        plan.status.code(),
        Some(2),
        "/etc/hosts still names the removed hosts: {}",
        text(&plan)
    );

    // Replacing: the operator puts the new host in the file, haop takes the old one out.
    std::fs::write(&inv5, &five_text).unwrap();
    // Replace a healthy member: etcd3 by etcd4 (etcd4 joins first, then etcd3 leaves).
    let replaced = haop(
        st,
        &["etcd", "replace", "etcd3", "--with", "etcd4", "-f", &i5],
    );
    assert!(replaced.status.success(), "{}", text(&replaced));
    assert_eq!(voters(&client).await, ["etcd1", "etcd2", "etcd4"]);
    assert_eq!(hosts_in(&inv5), ["etcd1", "etcd2", "etcd4", "etcd5"]);
    // And back: etcd4 by etcd3 (put back in the file by the operator).
    std::fs::write(&inv5, &five_text).unwrap();
    let back = haop(
        st,
        &["etcd", "replace", "etcd4", "--with", "etcd3", "-f", &i5],
    );
    assert!(back.status.success(), "{}", text(&back));
    assert_eq!(voters(&client).await, ["etcd1", "etcd2", "etcd3"]);
    assert_eq!(hosts_in(&inv5), ["etcd1", "etcd2", "etcd3", "etcd5"]);

    // Back to the three-host inventory: apply drops the removed hosts from /etc/hosts, and
    // then nothing is left to do.
    let back = haop(st, &["apply", "-f", &i3]);
    assert!(back.status.success(), "{}", text(&back));
    let plan = haop(st, &["plan", "-f", &i3, "--exit-code"]);
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));

    let acked = writer
        .finish_with_at_least(21, std::time::Duration::from_secs(30))
        .await;
    assert!(acked.len() > 20, "{}", acked.len());
    for key in &acked {
        assert!(client.get(key).await.unwrap().is_some(), "{key} lost");
    }
    lab.down().expect("lab down");
}
