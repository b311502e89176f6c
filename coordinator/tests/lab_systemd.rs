//! The booted lab: hosts with systemd as PID 1 (systemd-nspawn), real sshd, and haop-agent from
//! the .deb that packaging/build makes, installed over SSH by `haop hosts install`. The one path
//! that runs together what real Debian hosts run (three etcd hosts, two masters with keepalived
//! and the VIP): the agent's systemd backend, the package's maintainer scripts, etcd as
//! `Type=notify` under systemd with journald, agents killed and restarted by systemd in the
//! middle of an apply while etcd runs on, a rolling agent upgrade that keeps etcd and keepalived
//! running, a member killed and wiped and recovered under a writer with no acknowledged write
//! lost, installs through a bastion (and a missing bastion failing every host), a host whose
//! SSH key changed refused with both fingerprints and then accepted only explicitly, and
//! `dpkg -P` leaving nothing of the agent behind while etcd keeps running.
//!
//! It needs the cached Debian root (built with debootstrap on first use, minutes) and the
//! agent's .deb (`packaging/build`; `scripts/test` runs it first). It skips, saying why, only
//! when debootstrap cannot reach Debian's archive.

mod common;

use common::{assert_all_present, haop, members, require_root, text, voters_named, Writer};

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use haop_coordinator::agent::HostAgent;
use haop_coordinator::etcd::api::EtcdClient;
use haop_coordinator::lab::{booted, Lab, LabError, LabGuard};

/// The lab's hosts: three etcd members, two masters with keepalived and the VIP.
const HOSTS: [&str; 5] = ["etcd1", "etcd2", "etcd3", "master1", "master2"];

/// Runs `cmd` inside `host` of `lab`; its stdout (trimmed) and whether it exited 0.
fn exec(lab: &Lab, host: &str, cmd: &[&str]) -> (bool, String) {
    let args: Vec<OsString> = cmd.iter().map(OsString::from).collect();
    let out = lab
        .exec_command(host, &args)
        .unwrap()
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    )
}

/// The unit's main pid as systemd in the host reports it (0 when not running).
fn main_pid(lab: &Lab, host: &str, unit: &str) -> u32 {
    let (_, out) = exec(
        lab,
        host,
        &[
            "/usr/bin/systemctl",
            "show",
            "-p",
            "MainPID",
            "--value",
            unit,
        ],
    );
    out.trim().parse().unwrap_or(0)
}

/// Whether a process in network namespace `ns` has `needle` in its command line (an agent's
/// `systemctl` call in flight). Read from this machine's /proc: no tool inside the host needed.
fn in_flight(ns: &str, needle: &str) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(theirs) = std::fs::metadata(format!("/run/netns/{ns}")) else {
        return false;
    };
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .bytes()
                .all(|b| b.is_ascii_digit())
        })
        .any(|e| {
            let same_ns = std::fs::metadata(e.path().join("ns/net"))
                .is_ok_and(|m| m.dev() == theirs.dev() && m.ino() == theirs.ino());
            same_ns
                && std::fs::read(e.path().join("cmdline")).is_ok_and(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(needle)
                })
        })
}

/// A host's address, from the lab's record.
fn inventory_address(lab: &Lab, host: &str) -> String {
    lab.host(host).unwrap().address.to_string()
}

/// `ssh-keygen -lf FILE`'s fingerprint.
fn fingerprint(public_key: &Path) -> String {
    let out = Command::new("/usr/bin/ssh-keygen")
        .arg("-lf")
        .arg(public_key)
        .output()
        .unwrap();
    let t = String::from_utf8_lossy(&out.stdout);
    t.split_whitespace().nth(1).unwrap_or("").to_string()
}

/// A copy of `deb` whose version is `VERSION+lab1`: the same agent, newer to dpkg.
fn newer_deb(deb: &Path, dir: &Path) -> (PathBuf, String) {
    let tree = dir.join("tree");
    let ok = Command::new("/usr/bin/dpkg-deb")
        .arg("-R")
        .arg(deb)
        .arg(&tree)
        .status()
        .unwrap();
    assert!(ok.success());
    let control = tree.join("DEBIAN/control");
    let text = std::fs::read_to_string(&control).unwrap();
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .unwrap()
        .to_string();
    let newer = format!("{version}+lab1");
    std::fs::write(
        &control,
        text.replace(&format!("Version: {version}"), &format!("Version: {newer}")),
    )
    .unwrap();
    let out = dir.join(format!("haop-agent_{newer}.deb"));
    let built = Command::new("/usr/bin/dpkg-deb")
        .args(["--root-owner-group", "-b"])
        .arg(&tree)
        .arg(&out)
        .output()
        .unwrap();
    assert!(built.status.success(), "{}", text_of(&built));
    (out, newer)
}

fn text_of(o: &std::process::Output) -> String {
    text(o)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn booted_hosts_with_agents_over_ssh_apply_recover_upgrade_and_purge() {
    if !require_root() {
        return;
    }
    // The cached root, built once. Only an unreachable archive is a reason to skip.
    match tokio::task::spawn_blocking(|| booted::rootfs::ensure(false))
        .await
        .unwrap()
    {
        Ok(_) => {}
        Err(LabError::RootBuild { reason, .. })
            if [
                "Failed getting release file",
                "Could not resolve",
                "Temporary failure",
            ]
            .iter()
            .any(|s| reason.contains(s)) =>
        {
            eprintln!("SKIPPED: debootstrap cannot reach Debian's archive: {reason}");
            return;
        }
        Err(e) => panic!("lab root: {}", haop_coordinator::error_chain(&e)),
    }
    let deb = booted::find_agent_deb()
        .unwrap_or_else(|e| panic!("{} (scripts/test runs packaging/build first)", e));
    let deb_arg = deb.display().to_string();

    let state = tempfile::tempdir().unwrap();
    let st = state.path();
    let name = format!("t{}-sd", std::process::id() % 100_000);

    // `haop lab up --systemd --bare`: three booted hosts with sshd and no agent.
    let started = Instant::now();
    let up = haop(
        st,
        &["lab", "up", &name, "--systemd", "--bare", "--masters", "2"],
    );
    // Owned from here on, also if `up` half-worked: the guard takes everything down on panic.
    let lab = match Lab::open(st, &name) {
        Ok(l) => LabGuard::new(l),
        Err(e) => panic!("lab up failed ({e}):\n{}", text(&up)),
    };
    assert!(up.status.success(), "{}", text(&up));
    eprintln!("booted lab up in {:.1} s", started.elapsed().as_secs_f64());
    for h in HOSTS {
        let (_, pid1) = exec(&lab, h, &["/bin/cat", "/proc/1/comm"]);
        assert_eq!(pid1, "systemd", "{h}: PID 1 is not systemd");
        let (ok, agent) = exec(&lab, h, &["/usr/bin/test", "-e", "/usr/bin/haop-agent"]);
        assert!(!ok, "{h}: a bare host has no agent yet ({agent})");
    }
    let inv = lab.inventory_path().display().to_string();
    let ssh = lab.ssh();
    let (identity, known_hosts) = (
        ssh.identity.display().to_string(),
        ssh.known_hosts.display().to_string(),
    );
    let install_args = |deb: &str| -> Vec<String> {
        [
            "hosts",
            "install",
            "-f",
            &inv,
            "--deb",
            deb,
            "--identity",
            &identity,
            "--known-hosts",
            &known_hosts,
            "--agent-setting",
            "kernel=lab",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let run = |args: &[String]| haop(st, &args.iter().map(String::as_str).collect::<Vec<_>>());

    // `haop hosts install` over SSH: the .deb installed with dpkg, enrolled with a token.
    let started = Instant::now();
    let installed = run(&install_args(&deb_arg));
    let said = text(&installed);
    assert!(installed.status.success(), "{said}");
    assert!(said.contains("5 of 5 hosts ok (5 changed)"), "{said}");
    eprintln!(
        "agents installed over ssh in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    for h in HOSTS {
        let (_, active) = exec(&lab, h, &["/usr/bin/systemctl", "is-active", "haop-agent"]);
        assert_eq!(active, "active", "{h}");
        let (_, enabled) = exec(&lab, h, &["/usr/bin/systemctl", "is-enabled", "haop-agent"]);
        assert_eq!(
            enabled, "enabled",
            "{h}: the package's postinst enables the unit"
        );
    }
    // Again, through etcd1 as a bastion (its key pinned too): every host enrolled at the same
    // version is left alone.
    let etcd1_address = inventory_address(&lab, "etcd1");
    let mut via_bastion = install_args(&deb_arg);
    via_bastion.extend(["--jump".to_string(), format!("root@{etcd1_address}")]);
    // A bastion that does not exist fails every host: connections do go through it.
    let mut via_nowhere = install_args(&deb_arg);
    let nowhere = etcd1_address
        .rsplit_once('.')
        .map(|(net, _)| format!("{net}.99"))
        .unwrap();
    via_nowhere.extend(["--jump".to_string(), format!("root@{nowhere}")]);
    let refused = run(&via_nowhere);
    let said = text(&refused);
    assert!(said.contains("0 of 5 hosts ok"), "{said}");
    let again = run(&via_bastion);
    let said = text(&again);
    assert!(again.status.success(), "{said}");
    assert!(said.contains("5 of 5 hosts ok (0 changed)"), "{said}");

    // `haop apply`, with etcd1's agent restarted by systemd once its etcd runs: the apply
    // finishes and etcd keeps its pid (units outlive the agent under systemd).
    let mut apply = Command::new(common::haop_bin())
        .env("HAOP_STATE_DIR", st)
        .env_remove("RUST_LOG")
        .args(["apply", "-f", &inv])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The moment that matters: a host's agent is inside `systemctl start etcd.service` for the
    // apply (a Type=notify start waits for etcd to join its cluster), so the apply's call is in
    // flight. Then etcd1's agent is restarted by systemd (`systemctl restart`: SIGTERM, the
    // agent drains its calls) and etcd2's crashes (`systemctl kill -s KILL`: the call breaks,
    // systemd starts the agent again). The apply finishes, and neither etcd restarted.
    let unit_prop = |host: &str, prop: &str| {
        exec(
            &lab,
            host,
            &[
                "/usr/bin/systemctl",
                "show",
                "-p",
                prop,
                "--value",
                "haop-agent",
            ],
        )
        .1
    };
    // The first host caught starting etcd gets its agent killed (its command goes out before
    // anything is read, to land in the window), the second its agent restarted.
    let mut caught: Vec<(String, u32, String)> = Vec::new(); // host, etcd pid, agent invocation
    let deadline = Instant::now() + Duration::from_secs(120);
    while caught.len() < 2 {
        assert!(
            apply.try_wait().unwrap().is_none(),
            "apply ended with {} of 2 agents caught starting etcd: {}",
            caught.len(),
            text(&apply.wait_with_output().unwrap())
        );
        assert!(Instant::now() < deadline, "the agents never started etcd");
        for host in ["etcd1", "etcd2", "etcd3"] {
            if caught.len() == 2
                || caught.iter().any(|(h, _, _)| h == host)
                || !in_flight(&format!("haop-{name}-{host}"), "start etcd.service")
            {
                continue;
            }
            if caught.is_empty() {
                let (ok, out) = exec(
                    &lab,
                    host,
                    &[
                        "/usr/bin/systemctl",
                        "kill",
                        "--kill-whom=main",
                        "-s",
                        "KILL",
                        "haop-agent",
                    ],
                );
                assert!(ok, "{host}: systemctl kill: {out}");
                let etcd = main_pid(&lab, host, "etcd.service");
                eprintln!("{host}: agent killed while it starts etcd (pid {etcd})");
                caught.push((host.to_string(), etcd, String::new()));
            } else {
                let etcd = main_pid(&lab, host, "etcd.service");
                let invocation = unit_prop(host, "InvocationID");
                let (ok, out) = exec(&lab, host, &["/usr/bin/systemctl", "restart", "haop-agent"]);
                assert!(ok, "{host}: systemctl restart: {out}");
                eprintln!("{host}: agent restarted while it starts etcd (pid {etcd})");
                caught.push((host.to_string(), etcd, invocation));
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let applied = tokio::task::spawn_blocking(move || apply.wait_with_output().unwrap())
        .await
        .unwrap();
    let said = text(&applied);
    assert!(applied.status.success(), "{said}");
    assert!(
        said.contains("running it again"),
        "the crashed agent did not interrupt a step of the apply:\n{said}"
    );
    for (host, etcd, invocation) in caught {
        let host = host.as_str();
        assert_ne!(etcd, 0, "{host}: etcd had no main pid while it started");
        if invocation.is_empty() {
            let restarts = unit_prop(host, "NRestarts");
            assert_ne!(
                restarts, "0",
                "{host}: systemd did not restart the killed agent"
            );
        } else {
            assert_ne!(
                unit_prop(host, "InvocationID"),
                invocation,
                "{host}: no restart"
            );
        }
        assert_eq!(
            main_pid(&lab, host, "etcd.service"),
            etcd,
            "{host}: etcd restarted with its agent"
        );
    }
    // etcd is systemd's: Type=notify, logging to journald.
    let (_, kind) = exec(
        &lab,
        "etcd1",
        &[
            "/usr/bin/systemctl",
            "show",
            "-p",
            "Type",
            "--value",
            "etcd",
        ],
    );
    assert_eq!(kind, "notify");
    let (_, journal) = exec(
        &lab,
        "etcd1",
        &[
            "/usr/bin/journalctl",
            "-u",
            "etcd",
            "-n",
            "20",
            "--no-pager",
            "-q",
        ],
    );
    assert!(
        journal.contains("etcd"),
        "no etcd lines in journald:\n{journal}"
    );

    // `haop status`: healthy, every agent on systemd.
    let s = common::status::status(st, &inv, &[]);
    assert_eq!(s.code, 0, "{:#}", s.json);
    let hosts = s.json["hosts"].as_array().unwrap();
    assert_eq!(hosts.len(), HOSTS.len(), "{:#}", s.json);
    for h in hosts {
        assert_eq!(h["service_manager"], "systemd", "{h:#}");
    }

    // `haop agent upgrade`: a newer .deb, one host at a time; the agent restarts, etcd and
    // keepalived do not.
    let (inventory, _) = haop_coordinator::inventory::Inventory::load(Path::new(&inv)).unwrap();
    // Each host's unit: etcd on the etcd hosts, keepalived on the masters.
    let unit_of = |h: &str| {
        if h.starts_with("etcd") {
            "etcd.service"
        } else {
            "keepalived.service"
        }
    };
    let unit_pids: Vec<u32> = HOSTS
        .iter()
        .map(|h| main_pid(&lab, h, unit_of(h)))
        .collect();
    let (newer, newer_version) = newer_deb(&deb, st);
    let mut up_args = install_args(&newer.display().to_string());
    up_args.splice(0..2, ["agent".to_string(), "upgrade".to_string()]);
    up_args.truncate(up_args.len() - 2); // no --agent-setting for an upgrade
    let upgraded = run(&up_args);
    let said = text(&upgraded);
    assert!(upgraded.status.success(), "{said}");
    assert!(said.contains("5 of 5 hosts ok (5 changed)"), "{said}");
    for (i, h) in HOSTS.iter().enumerate() {
        let (_, v) = exec(
            &lab,
            h,
            &["/usr/bin/dpkg-query", "-W", "-f=${Version}", "haop-agent"],
        );
        assert_eq!(v, newer_version, "{h}");
        assert_ne!(unit_pids[i], 0, "{h}: {} was not running", unit_of(h));
        assert_eq!(
            main_pid(&lab, h, unit_of(h)),
            unit_pids[i],
            "{h}: {} restarted with the agent's upgrade",
            unit_of(h)
        );
    }

    // A member killed and wiped, recovered under a writer: no acknowledged write lost.
    let endpoints = inventory.etcd_client_urls();
    let client = EtcdClient::connect(st, &endpoints, Duration::from_secs(2))
        .await
        .unwrap();
    let writer = Writer::start(st, &endpoints, "/writer");
    writer.wait_for(20, Duration::from_secs(30)).await;
    let crash = lab
        .crash("etcd2", "etcd.service", true)
        .await
        .expect("crash");
    assert!(!crash.wiped.is_empty(), "nothing was wiped");
    let recovered = haop(st, &["etcd", "recover", "etcd2", "-f", &inv]);
    assert!(recovered.status.success(), "{}", text(&recovered));
    let acked = writer
        .finish_with_at_least(41, Duration::from_secs(30))
        .await;
    assert!(
        acked.len() > 40,
        "the writer wrote too little: {}",
        acked.len()
    );
    assert_eq!(members(&client).await, voters_named(3));
    assert_all_present(&client, &acked).await;

    // A host whose SSH key changed is refused, naming the host and both fingerprints; the
    // others go on.
    let b = lab.booted().expect("a booted lab");
    let etcd3 = b.host("etcd3").unwrap();
    let key = etcd3.merged.join("etc/ssh/ssh_host_ed25519_key.pub");
    let pinned = fingerprint(&key);
    let (ok, out) = exec(
        &lab,
        "etcd3",
        &[
            "/bin/sh",
            "-c",
            "rm -f /etc/ssh/ssh_host_ed25519_key* && ssh-keygen -q -t ed25519 -N '' -f \
             /etc/ssh/ssh_host_ed25519_key && systemctl restart ssh",
        ],
    );
    assert!(ok, "{out}");
    let offered = fingerprint(&key);
    assert_ne!(pinned, offered);
    let refused = run(&install_args(&newer.display().to_string()));
    let said = text(&refused);
    assert_eq!(refused.status.code(), Some(1), "{said}");
    assert!(
        said.contains("4 of 5 hosts ok (0 changed), 1 failed"),
        "{said}"
    );
    let line = said
        .lines()
        .find(|l| l.contains("etcd3") && l.contains("CHANGED"))
        .unwrap_or_else(|| panic!("no changed-key error for etcd3:\n{said}"));
    assert!(
        line.contains(&pinned) && line.contains(&offered),
        "the error does not name both fingerprints ({pinned}, {offered}):\n{line}"
    );
    // The operator checks the new key and accepts it explicitly: with the old key removed, the
    // host is refused as unknown until --accept-new-host-keys records the offered key.
    let etcd3_address = inventory_address(&lab, "etcd3");
    let removed = Command::new("/usr/bin/ssh-keygen")
        .args(["-R", &etcd3_address, "-f", &known_hosts])
        .output()
        .unwrap();
    assert!(removed.status.success(), "{}", text(&removed));
    let unknown = run(&install_args(&newer.display().to_string()));
    let said = text(&unknown);
    assert_eq!(unknown.status.code(), Some(1), "{said}");
    assert!(
        said.lines()
            .any(|l| l.contains("etcd3") && l.contains("is not pinned")),
        "{said}"
    );
    let mut accept = install_args(&newer.display().to_string());
    accept.push("--accept-new-host-keys".to_string());
    let accepted = run(&accept);
    let said = text(&accepted);
    assert!(accepted.status.success(), "{said}");
    assert!(said.contains("5 of 5 hosts ok (0 changed)"), "{said}");
    let pinned_now = Command::new("/usr/bin/ssh-keygen")
        .args(["-l", "-F", &etcd3_address, "-f", &known_hosts])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&pinned_now.stdout).contains(&offered),
        "the accepted key is not pinned: {}",
        text(&pinned_now)
    );

    // `dpkg -P haop-agent`: no unit, user or file of the agent left; etcd keeps running.
    let etcd1_pid = main_pid(&lab, "etcd1", "etcd.service");
    let (ok, out) = exec(&lab, "etcd1", &["/usr/bin/dpkg", "-P", "haop-agent"]);
    assert!(ok, "{out}");
    for path in [
        "/usr/bin/haop-agent",
        "/lib/systemd/system/haop-agent.service",
        "/etc/systemd/system/multi-user.target.wants/haop-agent.service",
        "/etc/haop",
        "/var/lib/haop-agent",
    ] {
        let (exists, _) = exec(&lab, "etcd1", &["/usr/bin/test", "-e", path]);
        assert!(!exists, "etcd1: {path} is left after dpkg -P");
    }
    let (_, files) = exec(
        &lab,
        "etcd1",
        &[
            "/usr/bin/systemctl",
            "list-unit-files",
            "--no-legend",
            "haop-agent*",
        ],
    );
    assert!(files.trim().is_empty(), "etcd1: unit files left: {files}");
    // systemd may still remember the name (not-found, dead); nothing of it may load or run.
    let (_, unit) = exec(
        &lab,
        "etcd1",
        &[
            "/usr/bin/systemctl",
            "show",
            "-p",
            "LoadState,ActiveState",
            "haop-agent",
        ],
    );
    assert!(
        unit.contains("LoadState=not-found") && unit.contains("ActiveState=inactive"),
        "etcd1: the agent's unit is still there: {unit}"
    );
    let (has_user, _) = exec(&lab, "etcd1", &["/usr/bin/getent", "passwd", "haop-agent"]);
    assert!(!has_user, "etcd1: a haop-agent user is left");
    let (_, active) = exec(&lab, "etcd1", &["/usr/bin/systemctl", "is-active", "etcd"]);
    assert_eq!(active, "active");
    assert_eq!(main_pid(&lab, "etcd1", "etcd.service"), etcd1_pid);
    let health = client.health(&endpoints[0]).await;
    assert!(
        health.is_ok(),
        "etcd1 unhealthy after the purge: {health:?}"
    );
    let gone = HostAgent::connect(
        &haop_coordinator::trust::Trust::load(st).unwrap(),
        "etcd1",
        inventory.host("etcd1").unwrap().agent.as_str(),
        Duration::from_secs(2),
    )
    .await;
    let answers = match gone {
        Ok(a) => a.facts().await.is_ok(),
        Err(_) => false,
    };
    assert!(!answers, "etcd1's agent still answers after the purge");

    // `haop lab down`: containers powered off, overlays unmounted, nothing left.
    let dir = lab.dir().to_path_buf();
    let nspawns: Vec<u32> = b.hosts.iter().filter_map(|h| h.nspawn_pid).collect();
    lab.down().expect("lab down");
    assert!(!dir.exists(), "{} is left", dir.display());
    for pid in nspawns {
        // Gone, or a zombie waiting for whoever inherited it (`haop lab up` has exited).
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|r| r.split_whitespace().next());
        assert!(
            matches!(state, None | Some("Z") | Some("X")),
            "nspawn {pid} still runs: {stat}"
        );
    }
    for h in HOSTS {
        let ns = format!("/run/netns/haop-{name}-{h}");
        assert!(!Path::new(&ns).exists(), "{ns} is left");
    }
}
