//! `haop adopt` and the live migration in the lab, from hosts built by the seed's runbook as
//! written (`haop lab up --from-seed`: cfssl-style CA and certificates, the CA key on every
//! etcd host, both certificate auths off), on etcd 3.4 and 3.5 with a writer throughout:
//! adopt changes nothing and refuses what it cannot take over; apply (killed after every step
//! and rerun, in the 3.5 case) ends with client and peer certificate auth on, the seed's CA
//! trusted nowhere, no CA key on any host, the API servers on haop's client certificates,
//! status healthy, and every acknowledged write on every member.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{certs_in, etcdctl, etcdctl_env, haop, text, Credentials, Etcd, Writer};
use haop_coordinator::etcd::api::EtcdClient;
use haop_coordinator::inventory::Inventory;
use haop_coordinator::lab::{Lab, LabGuard};

const PKI: &str = "etc/kubernetes/pki/etcd";

fn sha(path: &Path) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(
        std::fs::read(path).unwrap_or_default(),
    ))
}

/// Every regular file under `dir`, recursively.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                out.extend(files_under(&p));
            } else if p.is_file() {
                out.push(p);
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_built_cluster_is_adopted_and_secured_live_on_etcd_3_4() {
    adopt_and_secure(Etcd::Debian, false).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seed_built_cluster_is_secured_through_kills_after_every_step_on_etcd_3_5() {
    adopt_and_secure(Etcd::V351, true).await
}

async fn adopt_and_secure(etcd: Etcd, kill_after_every_step: bool) {
    if !common::require_root() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let st = state.path();
    let name = format!("t{}-ad{}", std::process::id() % 100_000, etcd.tag());
    let mut up = vec![
        "lab",
        "up",
        &name,
        "--etcd",
        "3",
        "--masters",
        "2",
        "--from-seed",
    ]
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>();
    if etcd == Etcd::V351 {
        up.push("--seed-etcd-binary".into());
        up.push(common::etcd351().display().to_string());
    }
    let up_args: Vec<&str> = up.iter().map(String::as_str).collect();
    let made = haop(st, &up_args);
    let lab = Lab::open(st, &name).map(LabGuard::new);
    assert!(made.status.success(), "{}", text(&made));
    let lab = lab.unwrap();
    let inv_path = lab.inventory_path();
    let inv_file = inv_path.display().to_string();
    let roots: Vec<(String, PathBuf)> = lab
        .hosts()
        .iter()
        .map(|h| (h.name.clone(), h.root_dir.clone()))
        .collect();
    let root = |host: &str| roots.iter().find(|(n, _)| n == host).unwrap().1.clone();
    let watched = |r: &Path| {
        [
            "etc/systemd/system/etcd.service",
            "etc/etcd.env",
            "etc/kubernetes/pki/etcd/ca.pem",
        ]
        .map(|f| sha(&r.join(f)))
    };
    let before: Vec<[String; 3]> = roots.iter().map(|(_, r)| watched(r)).collect();

    // A cluster with a member on a host the inventory does not list is refused, nothing written.
    let (partial, _) = Inventory::load(&inv_path).unwrap();
    let mut partial = partial;
    partial.hosts.retain(|h| h.name.as_str() != "etcd3");
    partial.allow_even_etcd = true;
    let partial_path = st.join("partial.yaml");
    std::fs::write(&partial_path, partial.to_yaml().unwrap()).unwrap();
    let refused = haop(st, &["adopt", "-f", &partial_path.display().to_string()]);
    assert!(!refused.status.success(), "{}", text(&refused));
    assert!(text(&refused).contains("master-2"), "{}", text(&refused));
    assert!(
        text(&refused).contains("runs on no host of the inventory"),
        "{}",
        text(&refused)
    );
    assert!(!st.join("adopt").exists());
    assert!(
        !haop_coordinator::trust::pki_dir(st)
            .join("etcd-trust.crt")
            .exists()
            || std::fs::read(haop_coordinator::trust::pki_dir(st).join("etcd-trust.crt")).unwrap()
                == std::fs::read(haop_coordinator::trust::pki_dir(st).join("etcd-ca.crt")).unwrap()
    );

    // adopt: the full inventory and the plan; nothing changed on the hosts.
    let adopted = haop(st, &["adopt", "-f", &inv_file]);
    let said = text(&adopted);
    assert!(adopted.status.success(), "{said}");
    assert!(said.contains("Nothing on the hosts has changed"), "{said}");
    assert!(said.contains("client cert auth OFF"), "{said}");
    assert!(said.contains("ca-key.pem"), "{said}");
    assert!(Path::new(&format!("{inv_file}.before-adopt")).exists());
    let (inv, _) = Inventory::load(&inv_path).unwrap();
    assert_eq!(inv.etcd.token.as_deref(), Some("my-etcd-token"));
    assert_eq!(inv.etcd.data_dir, Path::new("/var/lib/etcd"));
    assert!(inv.vip.is_some(), "keepalived's VIP");
    let after: Vec<[String; 3]> = roots.iter().map(|(_, r)| watched(r)).collect();
    assert_eq!(before, after, "adopt changed a host");
    let plan = haop(st, &["plan", "-f", &inv_file, "--exit-code"]);
    assert_eq!(plan.status.code(), Some(2), "{}", text(&plan));
    assert!(text(&plan).contains("etcd1=trust"), "{}", text(&plan));
    // status says why it cannot read etcd yet.
    let status = haop(st, &["status", "-f", &inv_file]);
    assert!(
        text(&status).contains("is being adopted"),
        "{}",
        text(&status)
    );
    // A second adopt says where it stands.
    let again = haop(st, &["adopt", "-f", &inv_file]);
    assert!(
        again.status.success() && text(&again).contains("Adoption of"),
        "{}",
        text(&again)
    );

    // The migration, under a writer: an application that starts with the seed's client
    // certificate and trusts both CAs, and takes haop's credentials when the seed's are refused
    // (as every client of an adopted cluster must before the seed's CA is dropped).
    let endpoints = inv.etcd_client_urls();
    let seed_pki = root("etcd1").join(PKI);
    let writer = Writer::start_with(
        &endpoints,
        "/adopt",
        vec![
            Credentials::Files {
                ca: vec![
                    seed_pki.join("ca.pem"),
                    haop_coordinator::trust::pki_dir(st).join("etcd-ca.crt"),
                ],
                cert: seed_pki.join("client.pem"),
                key: seed_pki.join("client-key.pem"),
            },
            Credentials::StateDir(st.to_path_buf()),
        ],
    );
    writer.wait_for(20, Duration::from_secs(30)).await;
    let mut runs = 0;
    let mut log = String::new();
    if !kill_after_every_step {
        // Killed inside the first step: etcd1's files written, etcd1 not restarted yet.
        let out = Command::new(common::haop_bin())
            .env("HAOP_STATE_DIR", st)
            .env("HAOP_FAILPOINT", "adopt:before-restart")
            .args(["apply", "-f", &inv_file])
            .output()
            .unwrap();
        assert!(
            !out.status.success() && text(&out).contains("failpoint"),
            "{}",
            text(&out)
        );
        let plan = haop(st, &["plan", "-f", &inv_file]);
        assert!(
            text(&plan).contains("started (runs again)"),
            "{}",
            text(&plan)
        );
        runs += 1;
    }
    loop {
        runs += 1;
        let mut cmd = Command::new(common::haop_bin());
        cmd.env("HAOP_STATE_DIR", st)
            .args(["apply", "-f", &inv_file]);
        if kill_after_every_step {
            cmd.env("HAOP_FAILPOINT", "adopt:after-step");
        }
        let out = cmd.output().unwrap();
        log.push_str(&text(&out));
        if out.status.success() {
            break;
        }
        assert!(
            kill_after_every_step && text(&out).contains("failpoint"),
            "{}",
            text(&out)
        );
        assert!(runs < 30, "the migration does not converge: {log}");
    }
    if kill_after_every_step {
        // trust x3, apiserver x2, secure x3, drop x3, apiserver-ca x2, cleanup x3, then the end.
        assert!(runs >= 16, "{runs} runs: {log}");
    }
    assert!(log.contains("Secured the adopted cluster"), "{log}");
    let (acked, gap) = writer.finish_with_gap().await;
    eprintln!(
        "adoption ({}): {} acknowledged writes, longest write gap {:.2} s, {runs} apply run(s)",
        etcd.tag(),
        acked.len(),
        gap.as_secs_f64()
    );

    // Every acknowledged write, on every member.
    let client = EtcdClient::connect(st, &endpoints, Duration::from_secs(2))
        .await
        .unwrap();
    common::assert_all_present(&client, &acked).await;
    let env = etcdctl_env(st, &inv_file);
    let last = acked.last().expect("writes were acknowledged");
    for e in &endpoints {
        let mut one = env.clone();
        one.retain(|(k, _)| k != "ETCDCTL_ENDPOINTS");
        one.push(("ETCDCTL_ENDPOINTS".into(), e.clone()));
        let got = etcdctl(
            &one,
            &["get", last, "--consistency=s", "--print-value-only"],
        );
        assert_eq!(
            String::from_utf8_lossy(&got.stdout).trim(),
            "v",
            "{e}: {}",
            text(&got)
        );
    }
    let version = client.status_of(&endpoints[0]).await.unwrap().version;
    assert!(version.starts_with(etcd.version_prefix()), "{version}");
    // Members named and addressed as haop names them.
    let mut members = client.member_list().await.unwrap();
    members.sort_by(|a, b| a.name.cmp(&b.name));
    let names: Vec<&str> = members.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["etcd1", "etcd2", "etcd3"]);
    for m in &members {
        assert!(
            m.peer_urls[0].starts_with("https://10."),
            "{:?}",
            m.peer_urls
        );
    }
    // Client certificate auth is on: no certificate, no access; the seed's client
    // certificate (its CA is gone) is refused.
    for e in &endpoints {
        let anonymous = common::put_as(e, None, "/adopt/anonymous");
        assert!(!anonymous.status.success(), "{e}: {}", text(&anonymous));
        let seed_client = common::put_as(
            e,
            Some((
                &seed_pki.join("client.pem"),
                &seed_pki.join("client-key.pem"),
            )),
            "/adopt/seed-client",
        );
        assert!(
            !seed_client.status.success(),
            "{e} accepted the seed's client: {}",
            text(&seed_client)
        );
    }
    // No certificate of the seed's CA trusted anywhere; no CA key on any host.
    let haop_ca = haop_coordinator::pki::inspect(
        &std::fs::read_to_string(haop_coordinator::trust::pki_dir(st).join("etcd-ca.crt")).unwrap(),
    )
    .unwrap()[0]
        .subject_key_id
        .clone();
    let trust = haop_coordinator::pki::bundle::trust_pem(st).unwrap();
    assert_eq!(haop_coordinator::pki::bundle::blocks(&trust).len(), 1);
    for (host, r) in &roots {
        if host.starts_with("worker") {
            continue;
        }
        let ca = certs_in(r, &format!("{PKI}/ca.crt"));
        assert_eq!(ca.len(), 1, "{host}: ca.crt holds {} CAs", ca.len());
        assert_eq!(ca[0].subject_key_id, haop_ca, "{host}");
        for f in files_under(&r.join("etc")) {
            let n = f.file_name().unwrap().to_string_lossy().to_string();
            assert!(
                n != "ca-key.pem" && n != "ca.key",
                "{host}: a CA key is left at {}",
                f.display()
            );
        }
    }
    for host in ["etcd1", "etcd2", "etcd3"] {
        let env_file = std::fs::read_to_string(root(host).join("etc/etcd.env")).unwrap();
        assert!(
            env_file.contains("ETCD_CLIENT_CERT_AUTH=true"),
            "{env_file}"
        );
        assert!(
            env_file.contains("ETCD_PEER_CLIENT_CERT_AUTH=true"),
            "{env_file}"
        );
        for f in ["server.crt", "peer.crt"] {
            let c = &certs_in(&root(host), &format!("{PKI}/{f}"))[0];
            assert_eq!(c.authority_key_id, haop_ca, "{host}: {f}");
        }
    }
    // The API servers: their manifests name haop's client certificate and CA, and those
    // files reach etcd.
    for host in ["master1", "master2"] {
        let r = root(host);
        let manifest =
            std::fs::read_to_string(r.join("etc/kubernetes/manifests/kube-apiserver.yaml"))
                .unwrap();
        for want in [
            "--etcd-cafile=/etc/kubernetes/pki/etcd/ca.crt",
            "--etcd-certfile=/etc/kubernetes/pki/apiserver-etcd-client.crt",
            "--etcd-keyfile=/etc/kubernetes/pki/apiserver-etcd-client.key",
            "haop.io/etcd-ca-sha256",
        ] {
            assert!(
                manifest.contains(want),
                "{host}: {want} missing:\n{manifest}"
            );
        }
        let o = Command::new("/usr/bin/etcdctl")
            .env_clear()
            .args(["--dial-timeout=2s", "--command-timeout=5s"])
            .arg(format!("--endpoints={}", endpoints.join(",")))
            .arg(format!("--cacert={}", r.join(PKI).join("ca.crt").display()))
            .arg(format!(
                "--cert={}",
                r.join("etc/kubernetes/pki/apiserver-etcd-client.crt")
                    .display()
            ))
            .arg(format!(
                "--key={}",
                r.join("etc/kubernetes/pki/apiserver-etcd-client.key")
                    .display()
            ))
            .args(["put", &format!("/adopt/{host}"), "apiserver"])
            .output()
            .unwrap();
        assert!(
            o.status.success(),
            "{host}'s API server files: {}",
            text(&o)
        );
    }
    let status = haop(st, &["status", "-f", &inv_file]);
    assert_eq!(status.status.code(), Some(0), "{}", text(&status));
    let plan = haop(st, &["plan", "-f", &inv_file, "--exit-code"]);
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
    lab.down().unwrap();
}
