//! `haop status`'s Kubernetes section on a lab (3 etcd, 2 masters behind the VIP), through the
//! real `haop` binary, against a STAND-IN API server: Kubernetes binaries cannot be installed
//! on the test machine, so `tests/fixtures/kube-apiserver-standin` (python3's `http.server`
//! and `ssl`) runs on each master as a unit under the agent's built-in supervisor, serving
//! `/readyz` on 6443 as kube-apiserver does, with a server certificate for the master's
//! address and the VIP signed by a test CA that the test puts where kubeadm keeps the cluster
//! CA (`/etc/kubernetes/pki/ca.crt`). `containerd.service` and `kubelet.service`, which status
//! expects on masters with Kubernetes enabled, are stand-ins too (`sleep infinity`). The
//! cluster is applied with the lab's inventory (Kubernetes off: no kubeadm to run); status
//! reads a copy with Kubernetes on.
//!
//! Checked: all ready -> ready through the VIP (answered by master1, the VIP holder) and on
//! both masters, the CA read from a master, exit 0 and no problem; master2's stand-in answering
//! 500 (kube's failure body) -> master2 named with `[-]etcd failed`, exit 1; master1's too ->
//! the VIP not ready as well, still exit 1 (degraded, not down); master2's stand-in stopped ->
//! master2 named with the connection error, exit 1. Every report validates against
//! docs/status-schema.json.

mod common;

use common::status::{wait_status, Status};
use common::{haop, require_root};

use std::time::Duration;

use haop_coordinator::inventory::Inventory;
use haop_coordinator::lab::{LabGuard, LabSpec};
use haop_coordinator::pki::{ExpectedNames, KeyAlgorithm, Profile, SigningRequest};
use haop_proto::v1 as pb;
use serde_json::Value;

const STANDIN_UNIT: &str = "kube-apiserver-standin.service";

fn standin_unit() -> String {
    "[Unit]\n\
     Description=STAND-IN for kube-apiserver's /readyz (haop lab tests only)\n\
     \n\
     [Service]\n\
     ExecStart=/usr/bin/python3 /usr/local/bin/kube-apiserver-standin\n\
     Restart=always\n\
     RestartSec=1\n"
        .to_string()
}

fn sleeper_unit(what: &str) -> String {
    format!(
        "[Unit]\n\
         Description=STAND-IN for {what} (haop lab tests only)\n\
         \n\
         [Service]\n\
         ExecStart=/usr/bin/sleep infinity\n"
    )
}

/// The row of the Kubernetes endpoint labelled `name` (`VIP` or a master).
fn api<'a>(json: &'a Value, name: &str) -> &'a Value {
    json["kubernetes"]["endpoints"]
        .as_array()
        .unwrap_or_else(|| panic!("no Kubernetes section: {json:#}"))
        .iter()
        .find(|e| match name {
            "VIP" => e["via"] == "vip",
            _ => e["host"] == name,
        })
        .unwrap_or_else(|| panic!("no endpoint {name}: {json:#}"))
}

fn ready(s: &Status, name: &str) -> bool {
    api(&s.json, name)["ready"] == true
}

fn problems(s: &Status) -> Vec<&Value> {
    s.json["problems"].as_array().unwrap().iter().collect()
}

async fn unit(c: &mut haop_coordinator::agent::Client, name: &str, action: pb::Action) {
    c.unit_action(pb::UnitActionRequest {
        name: name.into(),
        action: action as i32,
    })
    .await
    .unwrap_or_else(|e| panic!("{action:?} {name}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_asks_the_api_servers_readyz_through_the_vip_and_on_each_master() {
    if !require_root() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let st = state.path();
    let name = format!("t{}-sk", std::process::id() % 100_000);
    let spec = LabSpec {
        etcd: 3,
        masters: 2,
        workers: 0,
        from_seed: false,
    };
    let lab = LabGuard::up(st, &name, spec).await.expect("lab up");
    let out = haop(
        st,
        &["apply", "-f", &lab.inventory_path().display().to_string()],
    );
    assert!(
        out.status.success(),
        "apply failed:\n{}",
        common::text(&out)
    );

    let (mut inventory, _) = Inventory::load(&lab.inventory_path()).unwrap();
    inventory.kubernetes.enabled = true;
    let inv_path = st.join("kube-inventory.yaml");
    std::fs::write(&inv_path, inventory.to_yaml().unwrap()).unwrap();
    let inv = inv_path.display().to_string();
    let vip = inventory
        .vip
        .as_ref()
        .expect("a lab with 2 masters has a VIP")
        .address;

    // The test CA, and on each master: the CA where kubeadm keeps it, a server certificate for
    // the master's address and the VIP, the stand-in and its units, started.
    // Status reads the CA's expiry too (kubeadm's CA lasts ten years): a long-lived one here.
    let standin = common::apiserver::StandinCa::create(st);
    let ca = &standin.ca;
    let trust = haop_coordinator::trust::Trust::load(st).unwrap();
    let mut clients = Vec::new();
    for m in ["master1", "master2"] {
        let host = lab.host(m).unwrap();
        standin.install(host, vip);

        let mut c =
            haop_coordinator::agent::connect(&trust, &host.endpoint, Duration::from_secs(5))
                .await
                .unwrap();
        for (unit_name, content) in [
            (STANDIN_UNIT, standin_unit()),
            ("containerd.service", sleeper_unit("containerd")),
            ("kubelet.service", sleeper_unit("the kubelet")),
        ] {
            c.ensure_unit(pb::EnsureUnitRequest {
                name: unit_name.into(),
                content,
                data_dirs: vec![],
            })
            .await
            .unwrap_or_else(|e| panic!("EnsureUnit {unit_name} on {m}: {e}"));
            unit(&mut c, unit_name, pb::Action::Start).await;
        }
        clients.push(c);
    }
    let root = |m: &str| lab.host(m).unwrap().root_dir.clone();
    let fail_flag = |m: &str| root(m).join("var/lib/haop-standin/readyz-fail");

    // All ready (keepalived's election and python's start polled for, not slept on).
    let s = wait_status(st, &inv, Duration::from_secs(20), "all ready", |s| {
        s.code == 0 && ["VIP", "master1", "master2"].iter().all(|n| ready(s, n))
    });
    let k = &s.json["kubernetes"];
    assert!(k["ca_error"].is_null(), "{k:#}");
    assert!(
        ["master1", "master2"].contains(&k["ca_source"].as_str().unwrap()),
        "{k:#}"
    );
    assert_eq!(k["endpoints"].as_array().unwrap().len(), 3);
    let through_vip = api(&s.json, "VIP");
    assert_eq!(through_vip["url"], format!("https://{vip}:6443/readyz"));
    assert_eq!(
        (
            through_vip["http_status"].as_u64(),
            through_vip["detail"].as_str()
        ),
        (Some(200), Some("ok"))
    );
    assert!(through_vip["latency_ms"].as_f64().is_some());
    assert_eq!(s.json["vip"]["holder"], "master1");
    assert!(problems(&s).is_empty(), "{:#}", s.json);
    // The VIP's request reached master1's stand-in, named by the VIP.
    let log =
        std::fs::read_to_string(root("master1").join("var/lib/haop-standin/readyz.log")).unwrap();
    assert!(log.contains(&format!("GET /readyz {vip}:6443")), "{log}");
    // The table shows the section.
    let table = haop(st, &["status", "-f", &inv]);
    let text = String::from_utf8_lossy(&table.stdout).to_string();
    assert!(
        text.contains("KUBERNETES  API /readyz: 3/3 ready"),
        "{text}"
    );

    // master2's API server not ready: named, degraded; the VIP (on master1) still ready.
    std::fs::write(fail_flag("master2"), b"").unwrap();
    let s = wait_status(
        st,
        &inv,
        Duration::from_secs(10),
        "master2 not ready",
        |s| !ready(s, "master2"),
    );
    assert_eq!(s.code, 1, "{:#}", s.json);
    assert!(ready(&s, "VIP") && ready(&s, "master1"), "{:#}", s.json);
    assert_eq!(api(&s.json, "master2")["http_status"], 500);
    let p = problems(&s);
    assert_eq!(p.len(), 1, "{p:#?}");
    assert_eq!(
        (p[0]["section"].as_str(), p[0]["host"].as_str()),
        (Some("kubernetes"), Some("master2"))
    );
    assert_eq!(
        p[0]["message"],
        "the Kubernetes API server on master2 is not ready: HTTP 500: [-]etcd failed: reason withheld"
    );
    let table = haop(st, &["status", "-f", &inv]);
    assert_eq!(table.status.code(), Some(1));
    let text = String::from_utf8_lossy(&table.stdout).to_string();
    let kube = &text[text.find("KUBERNETES").unwrap()..];
    let first_row = kube.lines().nth(2).unwrap();
    assert!(
        first_row.starts_with("master2") && first_row.contains("not ready"),
        "{text}"
    );

    // master1's too: through the VIP not ready either, still degraded (not down).
    std::fs::write(fail_flag("master1"), b"").unwrap();
    let s = wait_status(st, &inv, Duration::from_secs(10), "VIP not ready", |s| {
        !ready(s, "VIP") && !ready(s, "master1")
    });
    assert_eq!(s.code, 1, "{:#}", s.json);
    let p = problems(&s);
    assert_eq!(p.len(), 3, "{p:#?}");
    assert!(p
        .iter()
        .all(|p| p["severity"] == "degraded" && p["section"] == "kubernetes"));
    assert!(
        p.iter()
            .any(|p| p["host"].is_null()
                && p["message"].as_str().unwrap().contains("through the VIP"))
    );

    // Both answer again; then master2's stand-in is stopped: a connection error, named.
    std::fs::remove_file(fail_flag("master1")).unwrap();
    std::fs::remove_file(fail_flag("master2")).unwrap();
    wait_status(st, &inv, Duration::from_secs(10), "ready again", |s| {
        s.code == 0
    });
    unit(&mut clients[1], STANDIN_UNIT, pb::Action::Stop).await;
    let s = wait_status(st, &inv, Duration::from_secs(10), "master2 stopped", |s| {
        !ready(s, "master2")
    });
    assert_eq!(s.code, 1, "{:#}", s.json);
    let m2 = api(&s.json, "master2");
    assert!(m2["http_status"].is_null(), "{m2:#}");
    assert!(
        m2["error"]
            .as_str()
            .unwrap()
            .starts_with("cannot connect: "),
        "{m2:#}"
    );
    let p = problems(&s);
    assert_eq!(p.len(), 1, "{p:#?}");
    assert_eq!(
        (p[0]["section"].as_str(), p[0]["host"].as_str()),
        (Some("kubernetes"), Some("master2"))
    );
    assert!(ready(&s, "VIP") && ready(&s, "master1"), "{:#}", s.json);

    // kubeadm's certificates are read beside haop's: an API server certificate five days from
    // expiry on master1 is the soonest there, and the way out named is kubeadm's.
    let master1 = lab.host("master1").unwrap();
    let short = ca
        .issue_local(
            &st.join("kube-standin-pki"),
            "apiserver-short",
            KeyAlgorithm::EcdsaP256,
            &SigningRequest {
                profile: Profile::Server,
                lifetime: Duration::from_secs(5 * 86_400),
                expected: ExpectedNames {
                    dns: vec!["kubernetes".into()],
                    ips: vec![master1.address.into()],
                },
                organization: None,
                common_name: "kube-apiserver".into(),
            },
        )
        .unwrap();
    std::fs::write(
        master1.root_dir.join("etc/kubernetes/pki/apiserver.crt"),
        short.cert_pem.as_bytes(),
    )
    .unwrap();
    let s = wait_status(
        st,
        &inv,
        Duration::from_secs(10),
        "apiserver.crt seen",
        |s| problems(s).iter().any(|p| p["section"] == "certificates"),
    );
    let c = s.json["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["location"] == "master1")
        .expect("master1's certificates");
    assert_eq!(
        c["soonest_path"], "/etc/kubernetes/pki/apiserver.crt",
        "{c:#}"
    );
    // The agent's, the etcd CA, kube-apiserver's etcd client certificate, kubeadm's CA and
    // the API server's.
    assert_eq!(c["certificates"], 5, "{c:#}");
    let p: Vec<&Value> = problems(&s)
        .into_iter()
        .filter(|p| p["section"] == "certificates")
        .collect();
    assert_eq!(p.len(), 1, "{p:#?}");
    assert_eq!(p[0]["host"], "master1");
    let said = p[0]["message"].as_str().unwrap();
    assert!(
        said.starts_with(
            "certificate /etc/kubernetes/pki/apiserver.crt on master1 expires in 4 days"
        ) && said.contains("kubeadm certs renew all"),
        "{said}"
    );

    // kubeadm's kubeconfigs embed client certificates beside their keys. The stand-in's
    // admin.conf names none and was passed over; a real one, its client certificate two days
    // from expiry, is read for its certificates alone (the key stays on master1).
    use base64::Engine;
    let b64 = |data: &[u8]| base64::engine::general_purpose::STANDARD.encode(data);
    let admin = ca
        .issue_local(
            &st.join("kube-standin-pki"),
            "kubernetes-admin",
            KeyAlgorithm::EcdsaP256,
            &SigningRequest {
                profile: Profile::Client,
                lifetime: Duration::from_secs(2 * 86_400 + 3600),
                expected: ExpectedNames::default(),
                organization: Some("kubeadm:cluster-admins".into()),
                common_name: "kubernetes-admin".into(),
            },
        )
        .unwrap();
    let admin_key = std::fs::read(&admin.key_path).unwrap();
    let kubeconfig = format!(
        "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    \
         server: https://{vip}:6443\n  name: kubernetes\ncontexts:\n- context:\n    cluster: \
         kubernetes\n    user: kubernetes-admin\n  name: kubernetes-admin@kubernetes\n\
         current-context: kubernetes-admin@kubernetes\nkind: Config\nusers:\n- name: \
         kubernetes-admin\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
        b64(ca.cert_pem().as_bytes()),
        b64(admin.cert_pem.as_bytes()),
        b64(&admin_key),
    );
    std::fs::write(
        master1.root_dir.join("etc/kubernetes/admin.conf"),
        kubeconfig,
    )
    .unwrap();
    let s = wait_status(
        st,
        &inv,
        Duration::from_secs(10),
        "admin.conf's certificate seen",
        |s| {
            s.json["certificates"].as_array().unwrap().iter().any(|c| {
                c["location"] == "master1" && c["soonest_path"] == "/etc/kubernetes/admin.conf"
            })
        },
    );
    let c = s.json["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["location"] == "master1")
        .unwrap();
    // The five before, and admin.conf's CA and client certificates.
    assert_eq!(c["certificates"], 7, "{c:#}");
    assert_eq!(c["errors"], serde_json::json!([]), "{c:#}");
    let said: Vec<&str> = problems(&s)
        .into_iter()
        .filter(|p| p["section"] == "certificates")
        .map(|p| p["message"].as_str().unwrap())
        .collect();
    assert_eq!(said.len(), 1, "{said:#?}");
    assert!(
        said[0].starts_with("certificate /etc/kubernetes/admin.conf on master1 expires in 2 days")
            && said[0].contains("kubeadm certs renew all"),
        "{said:?}"
    );

    lab.down().expect("lab down");
}
