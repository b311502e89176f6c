//! keepalived's API server check with four masters, on a lab, with Debian's real keepalived:
//! the VIP leaves every master whose check fails, whichever master it is.
//!
//! Why four: a failed check subtracts the number of masters from the master's priority
//! (`render::keepalived`), which must drop it below every healthy master for any number of
//! masters; with two the arithmetic hides mistakes that four show (master1 failing must fall
//! below master4, 3 below it).
//!
//! The cluster is applied with Kubernetes off (no kubeadm here), then each master gets the
//! keepalived.conf and check script haop renders with Kubernetes on, with one change for speed:
//! the check runs every second and one result counts (`interval 1`, `fall 1`, `rise 1` instead
//! of 3 s and 10 failures), so that a move takes seconds. The API server is a STAND-IN
//! (`tests/fixtures/kube-apiserver-standin`, answering /readyz 500 while its `readyz-fail` file
//! exists) under the agent's supervisor; the check script is haop's, run by keepalived with
//! curl. Checked: all healthy -> master1; master1 failing -> master2; 1 and 2 -> master3; 1, 2
//! and 3 -> master4; all four failing -> master1 again (every priority lowered alike): the VIP
//! left each master in turn the moment its check failed.

mod common;

use common::apiserver::put;
use common::{haop, require_root, text};

use std::process::Command;
use std::time::{Duration, Instant};

use haop_coordinator::agent::HostAgent;
use haop_coordinator::inventory::Inventory;
use haop_coordinator::lab::{LabGuard, LabSpec};
use haop_coordinator::render::keepalived::{
    check_apiserver_script, keepalived_conf, VrrpPassword, UNIT_NAME,
};
use haop_proto::v1 as pb;

const STANDIN_UNIT: &str = "kube-apiserver-standin.service";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vip_leaves_each_of_four_masters_whose_api_check_fails() {
    if !require_root() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let st = state.path();
    let name = format!("t{}-k4", std::process::id() % 100_000);
    let spec = LabSpec {
        etcd: 1,
        masters: 4,
        workers: 0,
        from_seed: false,
    };
    let lab = LabGuard::up(st, &name, spec).await.expect("lab up");
    let inv_path = lab.inventory_path().display().to_string();
    let out = haop(st, &["apply", "-f", &inv_path]);
    assert!(out.status.success(), "apply failed:\n{}", text(&out));

    let (mut inventory, _) = Inventory::load(&lab.inventory_path()).unwrap();
    inventory.kubernetes.enabled = true;
    let vip = inventory.vip.as_ref().unwrap().address;
    let password =
        haop_coordinator::runbook::vrrp_password(st, inventory.cluster.as_str()).unwrap();
    let password = VrrpPassword::try_from(password.as_str()).unwrap();
    let script = check_apiserver_script(&inventory).unwrap();
    let ca = common::apiserver::StandinCa::create(st);
    let trust = haop_coordinator::trust::Trust::load(st).unwrap();
    let masters: Vec<String> = (1..=4).map(|i| format!("master{i}")).collect();
    let mut agents = Vec::new();
    for m in &masters {
        let host = lab.host(m).unwrap();
        ca.install(host, vip);
        let r = &host.root_dir;
        let h = inventory.host(m).unwrap();
        let conf = keepalived_conf(&inventory, h, &password).unwrap();
        let fast = conf
            .content
            .replace("interval 3\n", "interval 1\n")
            .replace("fall 10\n", "fall 1\n")
            .replace("rise 2\n", "rise 1\n");
        assert_ne!(
            fast, conf.content,
            "the check's timing is no longer where it was"
        );
        put(
            r,
            conf.path.trim_start_matches('/'),
            fast.as_bytes(),
            conf.mode,
        );
        put(
            r,
            script.path.trim_start_matches('/'),
            script.content.as_bytes(),
            script.mode,
        );
        let c = HostAgent::connect(&trust, m, &host.endpoint, Duration::from_secs(5))
            .await
            .unwrap();
        c.ensure_unit(
            STANDIN_UNIT,
            "[Unit]\nDescription=STAND-IN for kube-apiserver's /readyz (haop lab tests only)\n\n\
             [Service]\nExecStart=/usr/bin/python3 /usr/local/bin/kube-apiserver-standin\n\
             Restart=always\nRestartSec=200ms\n",
            &[],
        )
        .await
        .unwrap();
        c.unit_action(STANDIN_UNIT, pb::Action::Start)
            .await
            .unwrap();
        agents.push(c);
    }
    for c in &agents {
        c.unit_action(UNIT_NAME, pb::Action::Restart).await.unwrap();
    }

    let holders = || -> Vec<String> {
        lab.hosts()
            .iter()
            .filter(|h| h.name.starts_with("master"))
            .filter(|h| {
                let out = Command::new("/usr/sbin/ip")
                    .args(["-n", &h.namespace, "-o", "addr", "show"])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .any(|w| w.split('/').next() == Some(vip.to_string().as_str()))
            })
            .map(|h| h.name.clone())
            .collect()
    };
    let wait_holder = |want: &str, why: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let h = holders();
            if h == [want] {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{why}: VIP {vip} held by {h:?}, expected only {want}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let fail = |m: &str| {
        let r = &lab.host(m).unwrap().root_dir;
        std::fs::write(r.join("var/lib/haop-standin/readyz-fail"), b"").unwrap();
    };

    wait_holder("master1", "all healthy");
    for (i, m) in masters.iter().enumerate() {
        fail(m);
        let next = masters.get(i + 1).map_or("master1", String::as_str);
        let started = Instant::now();
        wait_holder(next, &format!("{m}'s API check failing"));
        eprintln!(
            "{m} failing: the VIP moved to {next} in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }

    lab.down().expect("lab down");
}
