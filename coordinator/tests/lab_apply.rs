//! `haop apply` end to end on a lab, through the real `haop` binary: a healthy three-member
//! etcd over TLS (checked with etcdctl through `haop etcd env`), a client without a certificate
//! refused, a second apply and a plan that find nothing to do, and an apply killed at several
//! points that converges when run again, with exactly three members; keepalived holding the
//! VIP on exactly one master and moving it when keepalived stops there; node preparation
//! persisted on masters and workers.

mod common;

use common::{haop, haop_bin, require_root};

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use haop_coordinator::lab::{LabGuard, LabSpec};

/// etcdctl with the environment `haop etcd env` prints.
fn etcdctl(state: &Path, inventory: &str, args: &[&str], with_cert: bool) -> Output {
    let env = haop(state, &["etcd", "env", "-f", inventory]);
    assert!(
        env.status.success(),
        "{}",
        String::from_utf8_lossy(&env.stderr)
    );
    let mut cmd = Command::new("/usr/bin/etcdctl");
    cmd.env_clear();
    for line in String::from_utf8_lossy(&env.stdout).lines() {
        let (k, v) = line
            .strip_prefix("export ")
            .and_then(|l| l.split_once('='))
            .expect("export K=V");
        if !with_cert && (k == "ETCDCTL_CERT" || k == "ETCDCTL_KEY") {
            continue;
        }
        cmd.env(k, v.trim_matches('\''));
    }
    cmd.args(["--command-timeout=5s", "--dial-timeout=2s"])
        .args(args)
        .output()
        .expect("run etcdctl")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_converges_and_survives_being_killed() {
    if !require_root() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let st = state.path();
    let name = format!("t{}-ap", std::process::id() % 100_000);
    let spec = LabSpec {
        etcd: 3,
        masters: 2,
        workers: 1,
        from_seed: false,
    };
    let lab = LabGuard::up(st, &name, spec).await.expect("lab up");
    let inv = lab.inventory_path().display().to_string();

    // Killed at several points, then run to the end: it converges.
    for delay_ms in [150u64, 600, 1500] {
        let mut child = Command::new(haop_bin())
            .env("HAOP_STATE_DIR", st)
            .args(["apply", "-f", &inv])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(delay_ms));
        // By pid: the coordinator we started, nothing else.
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        );
        let _ = child.wait();
    }
    let out = haop(st, &["apply", "-f", &inv]);
    assert!(
        out.status.success(),
        "apply failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    // Three healthy voters over TLS.
    let health = etcdctl(st, &inv, &["endpoint", "health"], true);
    assert!(
        health.status.success(),
        "{}",
        String::from_utf8_lossy(&health.stderr)
    );
    let members = etcdctl(st, &inv, &["member", "list"], true);
    let text = String::from_utf8_lossy(&members.stdout).to_string();
    assert_eq!(text.lines().count(), 3, "{text}");
    assert!(text.lines().all(|l| l.contains("started")), "{text}");
    assert!(etcdctl(st, &inv, &["put", "/haop/e2e", "ok"], true)
        .status
        .success());
    // Without a client certificate etcd refuses.
    assert!(!etcdctl(st, &inv, &["get", "/haop/e2e"], false)
        .status
        .success());

    // Converged: apply changes nothing, plan has nothing to do.
    let again = haop(st, &["apply", "-f", &inv]);
    let says = String::from_utf8_lossy(&again.stdout).to_string();
    assert!(
        again.status.success(),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );
    assert!(says.contains("0 changed"), "{says}");
    let plan = haop(st, &["plan", "-f", &inv, "--exit-code"]);
    assert_eq!(
        plan.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&plan.stdout),
        String::from_utf8_lossy(&plan.stderr)
    );

    // A file changed by hand shows in plan as a diff, with exit code 2, and apply repairs it.
    let env = lab.hosts()[0].root_dir.join("etc/etcd.env");
    let original = std::fs::read_to_string(&env).unwrap();
    std::fs::write(
        &env,
        original.replace("ETCD_CLIENT_CERT_AUTH=true", "ETCD_CLIENT_CERT_AUTH=false"),
    )
    .unwrap();
    let plan = haop(st, &["plan", "-f", &inv, "--exit-code"]);
    let shown = String::from_utf8_lossy(&plan.stdout).to_string();
    assert_eq!(plan.status.code(), Some(2), "{shown}");
    assert!(
        shown.contains("-ETCD_CLIENT_CERT_AUTH=false")
            && shown.contains("+ETCD_CLIENT_CERT_AUTH=true"),
        "{shown}"
    );
    let fix = haop(st, &["apply", "-f", &inv]);
    assert!(
        fix.status.success(),
        "{}",
        String::from_utf8_lossy(&fix.stderr)
    );
    assert_eq!(std::fs::read_to_string(&env).unwrap(), original);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !etcdctl(st, &inv, &["endpoint", "health"], true)
        .status
        .success()
    {
        assert!(
            Instant::now() < deadline,
            "etcd not healthy after the repair"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let get = etcdctl(st, &inv, &["get", "/haop/e2e", "--print-value-only"], true);
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "ok");

    // The VIP: on exactly one master, the first (MASTER, priority 101).
    let (inventory, _) =
        haop_coordinator::inventory::Inventory::load(&lab.inventory_path()).unwrap();
    let vip = inventory
        .vip
        .as_ref()
        .expect("a lab with two masters has a VIP")
        .address
        .to_string();
    let holders = |lab: &LabGuard| -> Vec<String> {
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
                    .any(|w| w.split('/').next() == Some(vip.as_str()))
            })
            .map(|h| h.name.clone())
            .collect()
    };
    let wait_holder = |want: &str, lab: &LabGuard| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let h = holders(lab);
            if h == [want] {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "VIP {vip} held by {h:?}, expected only {want}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let keepalived_on_master1 = |action: &str| {
        let out = haop(
            st,
            &[
                "agent",
                "--lab",
                &name,
                "--host",
                "master1",
                "unit",
                "keepalived.service",
                action,
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    wait_holder("master1", &lab);
    // keepalived stops on master1: the VIP moves to master2, and comes back when it returns.
    keepalived_on_master1("stop");
    wait_holder("master2", &lab);
    keepalived_on_master1("start");
    wait_holder("master1", &lab);

    // keepalived killed with SIGKILL, with no chance to hand over: master2 takes the VIP once
    // it misses master1's adverts. The unit is stopped right after the kill so that Restart=
    // does not bring keepalived back before the takeover (a killed keepalived also leaves its
    // address on the interface, so what counts is that master2 now holds it and announces it).
    lab.crash("master1", "keepalived.service", false)
        .await
        .expect("kill keepalived on master1");
    keepalived_on_master1("stop");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !holders(&lab).contains(&"master2".to_string()) {
        assert!(Instant::now() < deadline, "master2 never took the VIP over");
        std::thread::sleep(Duration::from_millis(100));
    }
    keepalived_on_master1("start");
    wait_holder("master1", &lab);

    // Node preparation persisted on masters and workers (a lab host loads no module into the
    // shared kernel, but the files are what a real host boots with).
    for h in lab.hosts().iter().filter(|h| !h.name.starts_with("etcd")) {
        let sysctl = std::fs::read_to_string(h.root_dir.join("etc/sysctl.d/k8s.conf")).unwrap();
        assert!(sysctl.contains("net.ipv4.ip_forward = 1"), "{sysctl}");
        let modules =
            std::fs::read_to_string(h.root_dir.join("etc/modules-load.d/k8s.conf")).unwrap();
        assert!(modules.contains("br_netfilter"), "{modules}");
        let containerd =
            std::fs::read_to_string(h.root_dir.join("etc/containerd/config.toml")).unwrap();
        assert!(containerd.contains("SystemdCgroup = true"), "{containerd}");
        let fwd = Command::new("/usr/sbin/ip")
            .args([
                "netns",
                "exec",
                &h.namespace,
                "cat",
                "/proc/sys/net/ipv4/ip_forward",
            ])
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&fwd.stdout).trim(),
            "1",
            "{}",
            h.name
        );
    }

    lab.down().expect("lab down");
}
