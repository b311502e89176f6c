//! The fault suite: real etcd in the lab, a fault injected in the middle of haop's work, and
//! every case ending the same way: the cluster healthy by `haop status` (exit 0) and every
//! write etcd acknowledged still there.
//!
//! * An agent restarted, gracefully (an upgrade) and killed (a crash): etcd keeps running under
//!   the new agent, which adopts it. And restarted in the middle of a unit operation (a restart
//!   of etcd held up because etcd is frozen): the caller gets an error naming the host, one
//!   etcd runs under the new agent (the frozen one adopted, or a fresh one when the kernel ended
//!   the frozen one: see the case), and the rerun converges.
//! * A host cut off (its veth down) during `haop apply`: apply fails naming the host instead of
//!   hanging; once the host is restored the rerun converges.
//! * A host cut off during `haop etcd recover` of a crashed and wiped member: with the
//!   recovering host cut off, recover fails naming it and quorum holds; with another member cut
//!   off (quorum lost by the fault itself), recover refuses and changes nothing; restored, the
//!   rerun converges.
//! * etcd out of space: the NOSPACE alarm (raised by etcd's backend quota, which is what raises
//!   it: a disk that really fills makes etcd exit instead, see the next case), shown by `haop
//!   status` and `haop etcd alarms`, cleared with `haop etcd compact`, `haop etcd defrag` and
//!   `haop etcd alarms --disarm` as README.md documents.
//! * A member's disk really full (its data dir a small tmpfs): that member exits, the other two
//!   keep the quorum and the writes; status names the member; the disk grown, the member comes
//!   back by itself.
//! * The coordinator killed (SIGABRT at a failpoint) in the middle of a rolling restart of the
//!   members (a changed etcd flag), with a writer running: plan shows the members left with a
//!   unit newer than their process, the rerun restarts them one at a time and converges.
//!
//! The coordinator killed during the first apply and during recover are covered by
//! `lab_apply.rs` (`apply_converges_and_survives_being_killed`: killed at three points of the
//! first apply, then three started voters, healthy, a converged plan) and
//! `lab_recover_killed.rs` (killed after each step of a recovery in turn, with every write
//! acknowledged before and between the kills read back, a quorum of three voters, a converged
//! plan).
//!
//! Every wait polls with a deadline: elections take their time on a loaded machine.

mod common;

use common::{assert_all_present, haop, haop_bin, members, require_root, text, Writer};

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use haop_coordinator::etcd::api::{EtcdApiError, EtcdClient};
use haop_coordinator::inventory::Inventory;
use haop_coordinator::lab::{AgentStop, Lab, LabGuard, LabSpec};

/// A lab name unique to this process and case.
fn lab_name(case: &str) -> String {
    format!("t{}-{case}", std::process::id() % 100_000)
}

/// Polls `check` every 100 ms until it answers `Ok`, or panics after `limit` with the last
/// `Err`.
fn wait_until<T>(what: &str, limit: Duration, mut check: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match check() {
            Ok(v) => return v,
            Err(last) => {
                assert!(
                    Instant::now() < deadline,
                    "timed out after {limit:?} waiting for {what}; last: {last}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

/// `haop status` until it says healthy (exit 0); answers its output.
fn wait_healthy(st: &Path, inv: &str, limit: Duration) -> String {
    wait_until("haop status to say healthy", limit, || {
        let out = haop(st, &["status", "-f", inv]);
        if out.status.code() == Some(0) {
            Ok(text(&out))
        } else {
            Err(format!("exit {:?}: {}", out.status.code(), verdict(&out)))
        }
    })
}

/// The verdict line of `haop status`, for messages.
fn verdict(out: &std::process::Output) -> String {
    let all = text(out);
    all.lines()
        .find(|l| l.starts_with("verdict"))
        .unwrap_or(&all)
        .to_string()
}

/// The unit's state as the host's agent reports it (`haop agent ... -o json unit U status`).
fn unit_status(st: &Path, lab: &str, host: &str, unit: &str) -> serde_json::Value {
    let out = haop(
        st,
        &[
            "agent", "--lab", lab, "--host", host, "-o", "json", "unit", unit, "status",
        ],
    );
    assert!(out.status.success(), "{}", text(&out));
    serde_json::from_slice(&out.stdout).expect("unit status as JSON")
}

fn main_pid(status: &serde_json::Value) -> u32 {
    status["main_pid"].as_u64().unwrap_or(0) as u32
}

/// Signals `pid`, after checking that it lives in the lab host's network namespace (pids are
/// shared with the machine; never signal one that is not the host's).
fn signal_in_host(lab: &Lab, host: &str, pid: u32, signal: nix::sys::signal::Signal) {
    let ns = &lab.host(host).unwrap().namespace;
    let theirs = std::fs::metadata(format!("/proc/{pid}/ns/net")).map(|m| m.ino());
    let host_ns = std::fs::metadata(Path::new("/run/netns").join(ns)).map(|m| m.ino());
    assert!(
        matches!((&theirs, &host_ns), (Ok(a), Ok(b)) if a == b),
        "pid {pid} is not in {ns}"
    );
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), signal).unwrap();
}

/// Pids of the etcd processes in the host's network namespace (`ip netns pids`, then each
/// process's executable name).
fn etcd_pids(lab: &Lab, host: &str) -> Vec<u32> {
    let ns = &lab.host(host).unwrap().namespace;
    let out = Command::new("/usr/sbin/ip")
        .args(["netns", "pids", ns])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
        .filter(|p| {
            std::fs::read_to_string(format!("/proc/{p}/comm")).is_ok_and(|c| c.trim() == "etcd")
        })
        .collect()
}

/// Waits for `child` to exit within `limit`; kills it (by pid, ours) and panics otherwise.
fn wait_child(child: &mut Child, what: &str, limit: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} still ran after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

struct Cluster {
    lab: LabGuard,
    inv: String,
    inventory: Inventory,
    endpoints: Vec<String>,
    client: EtcdClient,
}

/// A lab of three etcd hosts, applied, with a client.
async fn cluster(st: &Path, case: &str) -> Cluster {
    let lab = LabGuard::up(st, &lab_name(case), LabSpec::default())
        .await
        .expect("lab up");
    let inv = lab.inventory_path().display().to_string();
    let applied = haop(st, &["apply", "-f", &inv]);
    assert!(applied.status.success(), "{}", text(&applied));
    connect(st, lab, inv).await
}

async fn connect(st: &Path, lab: LabGuard, inv: String) -> Cluster {
    let (inventory, _) = Inventory::load(Path::new(&inv)).unwrap();
    let endpoints = inventory.etcd_client_urls();
    let client = EtcdClient::connect(st, &endpoints, Duration::from_secs(2))
        .await
        .unwrap();
    Cluster {
        lab,
        inv,
        inventory,
        endpoints,
        client,
    }
}

impl Cluster {
    fn endpoint(&self, host: &str) -> String {
        self.inventory
            .etcd_client_url(self.inventory.host(host).unwrap())
    }
}

/// The end of every case: the writer stops, it wrote enough to mean something, and every write
/// etcd acknowledged is there.
async fn no_write_lost(c: &Cluster, writer: Writer) {
    let acked = writer
        .finish_with_at_least(21, Duration::from_secs(30))
        .await;
    assert!(
        acked.len() > 20,
        "the writer wrote too little: {}",
        acked.len()
    );
    assert_all_present(&c.client, &acked).await;
}

/// `haop plan --exit-code` finds nothing to do.
fn plan_converged(st: &Path, c: &Cluster) {
    let plan = haop(st, &["plan", "-f", &c.inv, "--exit-code"]);
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_restarted_during_a_unit_operation() {
    if !require_root() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let st = state.path();
    let mut c = cluster(st, "fa").await;
    let name = c.lab.name().to_string();
    let writer = Writer::start(st, &c.endpoints, "/writer");

    // An upgrade (SIGTERM) and a crash (SIGKILL) of etcd2's agent: etcd2 keeps running, the
    // same process, under the new agent.
    for how in [AgentStop::Term, AgentStop::Kill] {
        let before = unit_status(st, &name, "etcd2", "etcd.service");
        let pid = main_pid(&before);
        assert!(pid > 0, "{before}");
        let r = c.lab.restart_agent("etcd2", how).await.expect("restart");
        assert!(r.old_pid.is_some(), "{r:?}");
        let after = unit_status(st, &name, "etcd2", "etcd.service");
        assert_eq!(after["active_state"], "active", "{how:?}: {after}");
        assert_eq!(
            main_pid(&after),
            pid,
            "{how:?}: etcd was restarted: {after}"
        );
        assert_eq!(etcd_pids(&c.lab, "etcd2"), [pid], "{how:?}: a second etcd");
        wait_healthy(st, &c.inv, Duration::from_secs(30));
    }

    // A restart of etcd2 held up in its stop (etcd frozen, so SIGTERM does not end it), and the
    // agent restarted meanwhile.
    for how in [AgentStop::Kill, AgentStop::Term] {
        let frozen = main_pid(&unit_status(st, &name, "etcd2", "etcd.service"));
        signal_in_host(&c.lab, "etcd2", frozen, nix::sys::signal::Signal::SIGSTOP);
        let mut op = Command::new(haop_bin())
            .env("HAOP_STATE_DIR", st)
            .args(["agent", "--lab", &name, "--host", "etcd2"])
            .args(["unit", "etcd.service", "restart"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_until("the stop to be under way", Duration::from_secs(20), || {
            let s = unit_status(st, &name, "etcd2", "etcd.service");
            if s["active_state"] == "deactivating" {
                Ok(())
            } else {
                Err(s.to_string())
            }
        });
        let started = Instant::now();
        c.lab.restart_agent("etcd2", how).await.expect("restart");
        let status = wait_child(
            &mut op,
            "the interrupted unit restart",
            Duration::from_secs(30),
        );
        let out = op.wait_with_output().unwrap();
        let said = text(&out);
        assert!(
            !status.success(),
            "{how:?}: the interrupted restart succeeded: {said}"
        );
        assert!(
            said.contains("10.77.") || said.contains("etcd2"),
            "{how:?}: the error does not name the host: {said}"
        );
        eprintln!(
            "{how:?}: the caller got its error {} ms after the agent restart began: {}",
            started.elapsed().as_millis(),
            said.trim()
        );
        // One etcd runs on etcd2 and the new agent supervises it: the frozen one, adopted, or,
        // when the kernel ended it (a stopped process whose process group is orphaned by its
        // parent's exit gets SIGHUP and SIGCONT), a new one the new agent started.
        let s = wait_until(
            "one supervised etcd on etcd2",
            Duration::from_secs(20),
            || {
                let s = unit_status(st, &name, "etcd2", "etcd.service");
                let running = etcd_pids(&c.lab, "etcd2");
                if s["active_state"] == "active" && running == [main_pid(&s)] {
                    Ok(s)
                } else {
                    Err(format!("{s}; etcd processes {running:?}"))
                }
            },
        );
        eprintln!(
            "{how:?}: after the agent restart etcd2 runs {} (frozen: {frozen})",
            main_pid(&s)
        );
        if main_pid(&s) == frozen {
            // Thawed, it handles the SIGTERM it was sent; Restart=always brings it back.
            signal_in_host(&c.lab, "etcd2", frozen, nix::sys::signal::Signal::SIGCONT);
        }
        // The operation run again converges.
        let again = haop(
            st,
            &[
                "agent",
                "--lab",
                &name,
                "--host",
                "etcd2",
                "unit",
                "etcd.service",
                "restart",
            ],
        );
        assert!(again.status.success(), "{how:?}: {}", text(&again));
        let s = unit_status(st, &name, "etcd2", "etcd.service");
        assert_eq!(s["active_state"], "active", "{s}");
        assert_ne!(main_pid(&s), frozen, "{s}");
        assert_eq!(etcd_pids(&c.lab, "etcd2"), [main_pid(&s)], "{s}");
        wait_healthy(st, &c.inv, Duration::from_secs(30));
    }

    no_write_lost(&c, writer).await;
    plan_converged(st, &c);
    c.lab.down().expect("lab down");
}

/// The command line of `pid`, its arguments joined by spaces.
fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|raw| String::from_utf8_lossy(&raw).replace('\0', " "))
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coordinator_killed_during_a_rolling_restart() {
    if !require_root() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let st = state.path();
    let c = cluster(st, "fk").await;
    let writer = Writer::start(st, &c.endpoints, "/writer");
    let hosts = ["etcd1", "etcd2", "etcd3"];
    let flag = "--snapshot-count=20000";

    // A changed flag: every member's unit file is rewritten, then the members are restarted
    // one at a time. The coordinator dies (SIGABRT, the failpoint) right after the first
    // restart: one member restarting, two running with a unit file newer than their process.
    with_extra_flags(&c.inv, &[flag]);
    let killed = Command::new(haop_bin())
        .env("HAOP_STATE_DIR", st)
        .env("HAOP_FAILPOINT", "apply:after-etcd-restart")
        .args(["apply", "-f", &c.inv])
        .output()
        .unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&killed.status),
        Some(nix::sys::signal::Signal::SIGABRT as i32),
        "apply was not killed at the failpoint:\n{}",
        text(&killed)
    );
    let restarted: Vec<&str> = hosts
        .iter()
        .copied()
        .filter(|h| {
            etcd_pids(&c.lab, h)
                .iter()
                .any(|p| cmdline(*p).contains(flag))
        })
        .collect();
    assert!(
        restarted.len() < hosts.len(),
        "every member was restarted before the kill: {restarted:?}"
    );

    // The members left behind are what plan shows: their unit changed after they started.
    let plan = haop(st, &["plan", "-f", &c.inv, "--exit-code"]);
    let shown = text(&plan);
    assert_eq!(plan.status.code(), Some(2), "{shown}");
    assert!(
        shown.contains("changed after it started"),
        "plan does not say why a member needs a restart:\n{shown}"
    );

    // The rerun restarts them (one at a time, the writer keeps writing) and converges: every
    // member runs the new flag, a third apply has nothing to do.
    let again = haop(st, &["apply", "-f", &c.inv]);
    assert!(again.status.success(), "{}", text(&again));
    for h in hosts {
        let pids = etcd_pids(&c.lab, h);
        assert_eq!(pids.len(), 1, "{h}: {pids:?}");
        assert!(
            cmdline(pids[0]).contains(flag),
            "{h} still runs its old command line: {}",
            cmdline(pids[0])
        );
    }
    wait_healthy(st, &c.inv, Duration::from_secs(30));
    let third = haop(st, &["apply", "-f", &c.inv]);
    assert!(
        third.status.success() && text(&third).contains("0 changed"),
        "{}",
        text(&third)
    );
    plan_converged(st, &c);
    no_write_lost(&c, writer).await;
    c.lab.down().expect("lab down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_cut_off_during_apply_then_restored() {
    if !require_root() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let st = state.path();
    let lab = LabGuard::up(st, &lab_name("fc"), LabSpec::default())
        .await
        .expect("lab up");
    let inv = lab.inventory_path().display().to_string();

    // etcd3 is cut off once apply has begun to configure etcd (apply shows its progress on
    // stderr).
    let mut apply = Command::new(haop_bin())
        .env("HAOP_STATE_DIR", st)
        .args(["apply", "-f", &inv])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let progress = apply.stderr.take().unwrap();
    let mut shown = String::new();
    let mut lines = BufReader::new(progress).lines();
    for line in lines.by_ref() {
        let line = line.unwrap();
        shown.push_str(&line);
        shown.push('\n');
        if line.starts_with("== etcd-config") {
            assert!(lab.cut("etcd3").unwrap());
            break;
        }
    }
    assert!(lab.is_cut("etcd3").unwrap(), "apply ended early:\n{shown}");
    let cut_at = Instant::now();
    let rest = std::thread::spawn(move || {
        lines
            .map(|l| l.unwrap_or_default())
            .collect::<Vec<_>>()
            .join("\n")
    });
    let status = wait_child(
        &mut apply,
        "apply with etcd3 cut off",
        Duration::from_secs(120),
    );
    let mut stdout = String::new();
    std::io::Read::read_to_string(&mut apply.stdout.take().unwrap(), &mut stdout).unwrap();
    let said = format!("{shown}{}\n{stdout}", rest.join().unwrap());
    eprintln!(
        "apply with etcd3 cut off ended after {} ms:\n{said}",
        cut_at.elapsed().as_millis()
    );
    assert!(
        !status.success(),
        "apply succeeded with etcd3 cut off:\n{said}"
    );
    assert!(
        said.contains("etcd3"),
        "the failure does not name etcd3:\n{said}"
    );

    // Meanwhile the two members left may have formed a quorum: a writer starts now and keeps
    // going through the restore and the rerun.
    let c = connect(st, lab, inv).await;
    let writer = Writer::start(st, &c.endpoints, "/writer");
    assert!(c.lab.restore("etcd3").unwrap());
    let again = haop(st, &["apply", "-f", &c.inv]);
    assert!(again.status.success(), "{}", text(&again));
    wait_healthy(st, &c.inv, Duration::from_secs(30));
    tokio::time::sleep(Duration::from_millis(300)).await;
    no_write_lost(&c, writer).await;
    plan_converged(st, &c);
    c.lab.down().expect("lab down");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_cut_off_during_recover_then_restored() {
    if !require_root() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let st = state.path();
    let c = cluster(st, "fr").await;
    let writer = Writer::start(st, &c.endpoints, "/writer");
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The recovering host itself cut off: recover cannot finish, says which host, and the two
    // members left keep the quorum.
    c.lab
        .crash("etcd2", "etcd.service", true)
        .await
        .expect("crash");
    assert!(c.lab.cut("etcd2").unwrap());
    let started = Instant::now();
    let refused = haop(
        st,
        &["etcd", "recover", "etcd2", "-f", &c.inv, "--timeout", "20"],
    );
    let said = text(&refused);
    eprintln!(
        "recover with etcd2 cut off ended after {} ms:\n{said}",
        started.elapsed().as_millis()
    );
    assert!(!refused.status.success(), "{said}");
    assert!(said.contains("etcd2"), "{said}");
    put_soon(&c.client, "/between/self-cut").await;
    assert!(c.lab.restore("etcd2").unwrap());
    let recovered = haop(st, &["etcd", "recover", "etcd2", "-f", &c.inv]);
    assert!(recovered.status.success(), "{}", text(&recovered));
    wait_healthy(st, &c.inv, Duration::from_secs(30));

    // Another member cut off while etcd2 is down: one member of three is left, the quorum is
    // lost by the fault itself; recover refuses and changes nothing.
    c.lab
        .crash("etcd2", "etcd.service", true)
        .await
        .expect("crash");
    let members_before = members(&c.client).await;
    assert!(c.lab.cut("etcd3").unwrap());
    let started = Instant::now();
    let refused = haop(
        st,
        &["etcd", "recover", "etcd2", "-f", &c.inv, "--timeout", "15"],
    );
    let said = text(&refused);
    eprintln!(
        "recover with etcd3 cut off ended after {} ms:\n{said}",
        started.elapsed().as_millis()
    );
    assert!(!refused.status.success(), "{said}");
    assert!(said.to_lowercase().contains("quorum"), "{said}");
    assert!(c.lab.restore("etcd3").unwrap());
    let c1 = EtcdClient::connect(st, &[c.endpoint("etcd1")], Duration::from_secs(2))
        .await
        .unwrap();
    let after = wait_for_members(&c1).await;
    assert_eq!(
        after, members_before,
        "recover changed the membership while refusing"
    );
    let recovered = haop(st, &["etcd", "recover", "etcd2", "-f", &c.inv]);
    assert!(recovered.status.success(), "{}", text(&recovered));
    wait_healthy(st, &c.inv, Duration::from_secs(30));

    tokio::time::sleep(Duration::from_millis(300)).await;
    no_write_lost(&c, writer).await;
    assert_all_present(&c.client, &["/between/self-cut".to_string()]).await;
    plan_converged(st, &c);
    c.lab.down().expect("lab down");
}

/// A write that must succeed within 20 s (a leader election may make one attempt time out).
async fn put_soon(client: &EtcdClient, key: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        match client.put(key, b"v").await {
            Ok(_) => return,
            Err(e) => assert!(Instant::now() < deadline, "no write succeeds: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The member list once a member answers it again (after a quorum came back).
async fn wait_for_members(client: &EtcdClient) -> Vec<(String, bool)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(m) = client.member_list().await {
            let mut v: Vec<(String, bool)> =
                m.into_iter().map(|m| (m.name, m.is_learner)).collect();
            v.sort();
            return v;
        }
        assert!(Instant::now() < deadline, "no member list within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Adds `flags` to the inventory's etcd extra flags.
fn with_extra_flags(inv: &str, flags: &[&str]) {
    let text = std::fs::read_to_string(inv).unwrap();
    let list = flags
        .iter()
        .map(|f| format!("  - {f}\n"))
        .collect::<String>();
    let text = text.replacen("etcd:\n", &format!("etcd:\n  extra_flags:\n{list}"), 1);
    std::fs::write(inv, text).unwrap();
}

/// Panics unless the runaway key holds the last value etcd acknowledged (if any) or a later one. A
/// write answered with an error may still have been applied: a timed-out put can commit after
/// its answer, and etcd's quota applier applies the put that crosses the quota and then answers
/// NOSPACE for it. Values start with their index (`00000028...`), so "later" is a larger index.
async fn assert_not_older(client: &EtcdClient, key: &str, last_acked: &[u8]) {
    let got = client
        .get(key)
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("{key} is gone"));
    let index = |v: &[u8]| -> u64 {
        std::str::from_utf8(&v[..8.min(v.len())])
            .ok()
            .and_then(|t| t.parse().ok())
            .unwrap_or_else(|| panic!("{key} holds a value haop's test did not write"))
    };
    if last_acked.is_empty() {
        return;
    }
    assert!(
        index(&got) >= index(last_acked),
        "{key} went back to write {} after write {} was acknowledged",
        index(&got),
        index(last_acked)
    );
}

/// Overwrites one key with `size`-byte values until etcd refuses a write; answers the last
/// value acknowledged and the error.
async fn fill(client: &EtcdClient, key: &str, size: usize, max: usize) -> (Vec<u8>, EtcdApiError) {
    let mut last = Vec::new();
    for i in 0..max {
        let mut value = format!("{i:08}").into_bytes();
        value.resize(size, b'x' + (i % 3) as u8);
        match client.put(key, &value).await {
            Ok(_) => last = value,
            Err(e) => return (last, e),
        }
    }
    panic!("{max} writes of {size} bytes and etcd still accepts them");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nospace_alarm_is_shown_and_cleared() {
    if !require_root() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let st = state.path();
    let lab = LabGuard::up(st, &lab_name("fn"), LabSpec::default())
        .await
        .expect("lab up");
    let inv = lab.inventory_path().display().to_string();
    // A 16 MiB backend quota: etcd raises NOSPACE once a member's database grows past it.
    with_extra_flags(&inv, &["--quota-backend-bytes=16777216"]);
    let applied = haop(st, &["apply", "-f", &inv]);
    assert!(applied.status.success(), "{}", text(&applied));
    let c = connect(st, lab, inv).await;
    let writer = Writer::start(st, &c.endpoints, "/writer");

    // A runaway client rewrites one big key: its history fills the quota.
    let (last, refused) = fill(&c.client, "/runaway", 512 * 1024, 200).await;
    assert!(
        matches!(refused, EtcdApiError::NoSpace { .. }),
        "{}",
        haop_coordinator::error_chain(&refused)
    );
    let shown = haop(st, &["status", "-f", &c.inv]);
    let said = text(&shown);
    assert_eq!(shown.status.code(), Some(1), "{said}");
    assert!(
        said.contains("NOSPACE") && said.contains("haop etcd compact"),
        "{said}"
    );
    assert!(
        ["etcd1", "etcd2", "etcd3"]
            .iter()
            .any(|m| verdict(&shown).contains(&format!("etcd member {m}"))),
        "{said}"
    );
    eprintln!("haop status during NOSPACE: {}", verdict(&shown));
    let alarms = haop(st, &["etcd", "alarms", "-f", &c.inv]);
    assert_eq!(alarms.status.code(), Some(1), "{}", text(&alarms));
    assert!(
        text(&alarms).contains("NOSPACE on member etcd"),
        "{}",
        text(&alarms)
    );

    // The documented way out: compact, defrag, disarm.
    for step in [
        &["etcd", "compact", "-f", &c.inv][..],
        &["etcd", "defrag", "-f", &c.inv],
        &["etcd", "alarms", "--disarm", "-f", &c.inv],
    ] {
        let out = haop(st, step);
        assert!(out.status.success(), "{step:?}: {}", text(&out));
        eprintln!("{step:?}:\n{}", text(&out));
    }
    let alarms = haop(st, &["etcd", "alarms", "-f", &c.inv]);
    assert_eq!(alarms.status.code(), Some(0), "{}", text(&alarms));
    put_soon(&c.client, "/after/nospace").await;
    wait_healthy(st, &c.inv, Duration::from_secs(30));

    tokio::time::sleep(Duration::from_millis(300)).await;
    no_write_lost(&c, writer).await;
    assert_not_older(&c.client, "/runaway", &last).await;
    c.lab.down().expect("lab down");
}

/// Runs `args` inside etcd2 (its mount namespace: the agent's, where etcd runs).
fn in_etcd2(lab: &Lab, args: &[&str]) {
    let command: Vec<std::ffi::OsString> = args.iter().map(Into::into).collect();
    let out = lab
        .exec_command("etcd2", &command)
        .unwrap()
        .output()
        .unwrap();
    assert!(out.status.success(), "{args:?}: {}", text(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_disk_full_then_grown() {
    if !require_root() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let st = state.path();
    let lab = LabGuard::up(st, &lab_name("fd"), LabSpec::default())
        .await
        .expect("lab up");
    // etcd2's data dir is a 100 MiB tmpfs (etcd preallocates a 64 MB WAL segment), mounted in
    // the host's mount namespace before apply starts etcd there.
    in_etcd2(&lab, &["/usr/bin/mkdir", "-p", "/var/lib/etcd"]);
    in_etcd2(
        &lab,
        &[
            "/usr/bin/mount",
            "-t",
            "tmpfs",
            "-o",
            "size=100m,mode=0700",
            "tmpfs",
            "/var/lib/etcd",
        ],
    );
    let inv = lab.inventory_path().display().to_string();
    let applied = haop(st, &["apply", "-f", &inv]);
    assert!(applied.status.success(), "{}", text(&applied));
    let c = connect(st, lab, inv).await;
    let name = c.lab.name().to_string();
    let writer = Writer::start(st, &c.endpoints, "/writer");

    // The runaway client fills etcd2's disk: etcd2 exits (etcd cannot commit to a full disk),
    // the other two keep the quorum and accept the writes.
    let etcd2 = main_pid(&unit_status(st, &name, "etcd2", "etcd.service"));
    let mut last = Vec::new();
    for i in 0..400 {
        let mut value = format!("{i:08}").into_bytes();
        value.resize(512 * 1024, b'x');
        if c.client.put("/runaway", &value).await.is_ok() {
            last = value;
        }
        let s = unit_status(st, &name, "etcd2", "etcd.service");
        if main_pid(&s) != etcd2 {
            break;
        }
        assert!(i < 399, "etcd2 still runs after 400 writes of 512 KiB: {s}");
    }
    let log = std::fs::read_to_string(
        c.lab
            .host("etcd2")
            .unwrap()
            .root_dir
            .join("var/lib/haop-agent/logs/etcd.service.log"),
    )
    .unwrap();
    // etcd's own words for the full disk (not its warning at start that it could not
    // preallocate a second WAL segment, which it survives).
    assert!(
        log.lines().any(|l| l.contains("no space left on device")
            && !l.contains("failed to allocate space when creating new wal file")),
        "{log}"
    );
    put_soon(&c.client, "/during/disk-full").await;
    let shown = haop(st, &["status", "-f", &c.inv]);
    assert_ne!(shown.status.code(), Some(0), "{}", text(&shown));
    assert!(verdict(&shown).contains("etcd2"), "{}", text(&shown));

    // The disk grown: the supervisor's restarts bring etcd2 back by itself.
    in_etcd2(
        &c.lab,
        &[
            "/usr/bin/mount",
            "-o",
            "remount,size=512m",
            "tmpfs",
            "/var/lib/etcd",
        ],
    );
    wait_healthy(st, &c.inv, Duration::from_secs(60));

    tokio::time::sleep(Duration::from_millis(300)).await;
    no_write_lost(&c, writer).await;
    assert_all_present(&c.client, &["/during/disk-full".to_string()]).await;
    assert_not_older(&c.client, "/runaway", &last).await;
    c.lab.down().expect("lab down");
}
