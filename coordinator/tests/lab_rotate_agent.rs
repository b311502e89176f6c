//! `haop certs rotate-ca --agent` in the lab, with real agents and real etcd: the agent CA is
//! replaced on three etcd hosts with neither etcd nor an agent restarted, afterwards every
//! agent serves a certificate of the new CA and trusts it alone, haop's old admin certificate
//! is refused everywhere, the old CA key is gone from the state dir, status is healthy, apply
//! has nothing to do and a revocation issued afterwards takes effect. A second case kills the
//! rotation (a failpoint aborts it, as a SIGKILL would) right after the first host trusts both
//! CAs and again in the middle of the drop phase, checks that haop can still talk to every
//! agent in between, and runs it again until it converges to the same end state.

mod common;

use common::{haop, haop_bin, require_root, text};

use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use haop_coordinator::agent::{connect_with, HostAgent};
use haop_coordinator::inventory::Inventory;
use haop_coordinator::lab::LabGuard;
use haop_coordinator::pki::{cert_pin, CertificateAuthority, AGENT_CA};
use haop_coordinator::trust::{pki_dir, Trust};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

fn lab_name(case: &str) -> String {
    format!("t{}-{case}", std::process::id() % 100_000)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Kernel start time of `pid` (`/proc/PID/stat` field 22), `None` when it is gone.
fn start_time(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 2..];
    after.split(' ').nth(19)?.parse().ok()
}

/// What the test keeps from before the rotation.
struct Before {
    /// haop's admin certificate and key of the old CA, and the old CA certificate.
    old: tempfile::TempDir,
    old_pin: String,
    old_ca_key: String,
    /// Each etcd member's main pid.
    etcd_pids: Vec<(String, u32)>,
    /// Each agent's pid and start time.
    agents: Vec<(String, u32, u64)>,
}

async fn etcd_pids(st: &Path, inventory: &Inventory) -> Vec<(String, u32)> {
    let trust = Trust::load(st).unwrap();
    let mut out = Vec::new();
    for h in inventory.etcd_hosts() {
        let a = HostAgent::connect(
            &trust,
            h.name.as_str(),
            h.agent.as_str(),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
        let s = a.unit_status("etcd.service").await.unwrap();
        assert_eq!(s.active_state, "active", "{}", h.name);
        out.push((h.name.to_string(), s.main_pid));
    }
    out
}

async fn before(st: &Path, lab: &LabGuard, inventory: &Inventory) -> Before {
    let pki = pki_dir(st);
    let old = tempfile::tempdir().unwrap();
    for f in ["haop-admin.crt", "haop-admin.key", "agent-ca.crt"] {
        std::fs::copy(pki.join(f), old.path().join(f)).unwrap();
    }
    let agents = lab
        .hosts()
        .iter()
        .map(|h| {
            let pid = h.agent_pid.expect("a started agent");
            (
                h.name.clone(),
                pid,
                start_time(pid).expect("the agent runs"),
            )
        })
        .collect();
    Before {
        old_pin: cert_pin(&read(&pki.join("agent-ca.crt"))).unwrap(),
        old_ca_key: read(&pki.join("agent-ca.key")),
        old,
        etcd_pids: etcd_pids(st, inventory).await,
        agents,
    }
}

/// WhoAmI on `endpoint` over a new connection trusting `roots` for the agent and presenting
/// `cert`/`key`: the common name, or the refusal.
async fn who_am_i(
    roots: &str,
    cert: &str,
    key: &str,
    host: &str,
    endpoint: &str,
) -> Result<String, String> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(roots))
        .identity(Identity::from_pem(cert, key));
    let channel = connect_with(tls, endpoint, Duration::from_secs(3))
        .await
        .map_err(|e| format!("connect: {}", haop_coordinator::error_chain(&e)))?;
    HostAgent::new(host, channel)
        .who_am_i()
        .await
        .map(|w| w.common_name)
        .map_err(|e| haop_coordinator::error_chain(&e))
}

/// Every file under `dir` (the labs' host roots left out: they are the hosts').
fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.file_name().is_some_and(|n| n == "labs") {
            continue;
        }
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// The end state of a rotation, whatever way it got there.
async fn assert_rotated(
    st: &Path,
    lab: &LabGuard,
    inv: &str,
    inventory: &Inventory,
    before: &Before,
) {
    let pki = pki_dir(st);
    // The state dir: the new CA under its usual name, the old one's key gone, its certificate
    // retired, no rotation file or next-files left.
    let new_ca = CertificateAuthority::load(&pki, AGENT_CA).unwrap();
    let new_pin = new_ca.sha256_pin();
    assert_ne!(new_pin, before.old_pin);
    for gone in [
        "agent-ca-next.crt",
        "agent-ca-next.key",
        "haop-admin-next.crt",
        "haop-admin-next.key",
        "agent-ca-rotation.json",
    ] {
        assert!(!pki.join(gone).exists(), "{gone} is left");
    }
    let mut files = Vec::new();
    walk(st, &mut files);
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap_or_default();
        assert!(
            !text.contains(before.old_ca_key.trim()),
            "{} holds the old CA key",
            f.display()
        );
    }
    let retired: Vec<&PathBuf> = files
        .iter()
        .filter(|f| f.starts_with(pki.join("retired")))
        .collect();
    assert_eq!(retired.len(), 1, "{retired:?}");
    assert_eq!(
        read(retired[0]),
        read(&before.old.path().join("agent-ca.crt"))
    );
    let trust = Trust::load(st).unwrap();
    assert!(trust.rotation().is_none());
    assert!(new_ca.issued(trust.admin_cert_pem()));

    // Every agent serves a certificate of the new CA, on disk and on the wire, and trusts the
    // new CA alone.
    for h in lab.hosts() {
        let on_disk = read(&h.root_dir.join("var/lib/haop-agent/pki/agent.crt"));
        assert!(new_ca.issued(&on_disk), "{}: {on_disk}", h.name);
        let bundle = read(&h.root_dir.join("var/lib/haop-agent/pki/ca.crt"));
        assert_eq!(cert_pin(&bundle).as_deref(), Some(new_pin.as_str()));
        assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 1, "{}", h.name);
    }
    let old = before.old.path();
    let (old_cert, old_key) = (
        read(&old.join("haop-admin.crt")),
        read(&old.join("haop-admin.key")),
    );
    for h in &inventory.hosts {
        let (name, endpoint) = (h.name.as_str(), h.agent.as_str());
        let a = HostAgent::connect(&trust, name, endpoint, Duration::from_secs(5))
            .await
            .unwrap();
        let who = a.who_am_i().await.unwrap();
        assert!(new_ca.issued(&who.serving_cert_pem), "{name}");
        assert_eq!(who.trusted_ca_pins, vec![new_pin.clone()], "{name}");
        // haop's old admin certificate is refused, on a new connection that trusts the agent.
        let refused = who_am_i(new_ca.cert_pem(), &old_cert, &old_key, name, endpoint).await;
        assert!(refused.is_err(), "{name} took the old admin certificate");
        // And a client that knows only the old CA cannot verify the agent any more.
        let stale = who_am_i(
            &read(&old.join("agent-ca.crt")),
            &old_cert,
            &old_key,
            name,
            endpoint,
        )
        .await;
        assert!(stale.is_err(), "{name}");
    }

    // Nothing restarted: etcd and the agents run with the pids they had.
    assert_eq!(etcd_pids(st, inventory).await, before.etcd_pids);
    for (host, pid, started) in &before.agents {
        assert_eq!(
            start_time(*pid),
            Some(*started),
            "the agent of {host} was restarted"
        );
    }

    // The cluster is healthy and converged.
    let status = haop(st, &["status", "-f", inv]);
    assert_eq!(status.status.code(), Some(0), "{}", text(&status));
    let apply = haop(st, &["apply", "-f", inv]);
    assert!(apply.status.success(), "{}", text(&apply));
    assert!(text(&apply).contains("0 changed"), "{}", text(&apply));
    let plan = haop(st, &["plan", "-f", inv, "--exit-code"]);
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));

    // New agents enroll with the new CA's pin.
    let token = haop(st, &["token", "create", "--ttl", "10m"]);
    assert!(token.status.success(), "{}", text(&token));
    assert!(
        text(&token).contains(&format!("ca_hash:  {new_pin}")),
        "{}",
        text(&token)
    );

    // Revocation works under the new CA: an identity issued now is taken by every agent, and
    // refused by every agent once revoked.
    let out = tempfile::tempdir().unwrap();
    let o = out.path().display().to_string();
    let name = format!("mon{}", std::process::id() % 1000);
    let issued = haop(
        st,
        &["identity", "issue", &name, "--role", "reader", "--out", &o],
    );
    assert!(issued.status.success(), "{}", text(&issued));
    let (cert, key) = (
        read(&out.path().join(format!("{name}.crt"))),
        read(&out.path().join(format!("{name}.key"))),
    );
    let roots = read(&out.path().join("agent-ca.crt"));
    assert_eq!(cert_pin(&roots).as_deref(), Some(new_pin.as_str()));
    for h in &inventory.hosts {
        let (host, endpoint) = (h.name.as_str(), h.agent.as_str());
        assert_eq!(
            who_am_i(&roots, &cert, &key, host, endpoint).await,
            Ok(name.clone()),
            "{host}"
        );
    }
    let revoked = haop(st, &["identity", "revoke", &name, "-f", inv]);
    assert!(revoked.status.success(), "{}", text(&revoked));
    for h in &inventory.hosts {
        let (host, endpoint) = (h.name.as_str(), h.agent.as_str());
        let err = who_am_i(&roots, &cert, &key, host, endpoint)
            .await
            .unwrap_err();
        assert!(err.contains("revoked"), "{host}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_agent_ca_is_rotated_without_restarting_etcd_or_agents() {
    if !require_root() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let st = state.path();
    let (lab, inv, inventory) = common::applied_lab(st, &lab_name("ra")).await;

    // A reader identity issued by the old CA: the rotation says it will stop working and wants
    // --yes, changing nothing before it has it.
    let ids = tempfile::tempdir().unwrap();
    let o = ids.path().display().to_string();
    let issued = haop(
        st,
        &[
            "identity", "issue", "grafana", "--role", "reader", "--out", &o,
        ],
    );
    assert!(issued.status.success(), "{}", text(&issued));
    // A revocation before the rotation: its list is re-signed by the new CA on the way.
    let gone = haop(
        st,
        &["identity", "issue", "gone", "--role", "reader", "--out", &o],
    );
    assert!(gone.status.success(), "{}", text(&gone));
    let revoked = haop(st, &["identity", "revoke", "gone", "-f", &inv]);
    assert!(revoked.status.success(), "{}", text(&revoked));

    let before = before(st, &lab, &inventory).await;
    let refused = haop(st, &["certs", "rotate-ca", "--agent", "-f", &inv]);
    let said = text(&refused);
    assert_eq!(refused.status.code(), Some(1), "{said}");
    assert!(said.contains("grafana") && said.contains("--yes"), "{said}");
    assert!(!pki_dir(st).join("agent-ca-next.crt").exists(), "{said}");

    let started = std::time::Instant::now();
    let rotated = haop(
        st,
        &[
            "certs",
            "rotate-ca",
            "--agent",
            "-f",
            &inv,
            "--yes",
            "-o",
            "json",
        ],
    );
    let elapsed = started.elapsed();
    let said = text(&rotated);
    assert!(rotated.status.success(), "{said}");
    eprintln!(
        "rotate-ca --agent over 3 hosts took {:.1} s",
        elapsed.as_secs_f64()
    );
    let report: serde_json::Value = serde_json::from_slice(&rotated.stdout).unwrap();
    assert_eq!(report["old_ca_pin"], before.old_pin.as_str());
    let reissue: Vec<&str> = report["identities_to_reissue"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    assert_eq!(reissue, ["grafana"], "{said}");
    assert!(
        report["revocation_generation"].as_u64().unwrap() >= 2,
        "{said}"
    );
    // A progress line per host and phase, the phases in order, each host in turn.
    for phase in ["trust", "reissue", "drop"] {
        for h in ["etcd1", "etcd2", "etcd3"] {
            assert!(
                said.contains(&format!("{phase:<7} {h}: ")),
                "{phase} {h}:\n{said}"
            );
        }
    }
    let at = |s: &str| said.find(s).unwrap_or_else(|| panic!("{s}:\n{said}"));
    assert!(at("trust   etcd3") < at("reissue etcd1") && at("reissue etcd3") < at("drop    etcd1"));
    let new_pin = report["new_ca_pin"].as_str().unwrap();
    // The identity of the old CA is refused now, as announced.
    let g = (
        read(&ids.path().join("grafana.crt")),
        read(&ids.path().join("grafana.key")),
    );
    let h = &inventory.hosts[0];
    let new_roots = read(&pki_dir(st).join("agent-ca.crt"));
    assert_eq!(cert_pin(&new_roots).as_deref(), Some(new_pin));
    assert!(
        who_am_i(&new_roots, &g.0, &g.1, h.name.as_str(), h.agent.as_str())
            .await
            .is_err()
    );

    let listed = haop(st, &["identity", "list"]);
    let line = text(&listed)
        .lines()
        .find(|l| l.starts_with("grafana"))
        .map(str::to_string)
        .unwrap_or_default();
    assert!(line.contains("its CA was rotated"), "{}", text(&listed));

    assert_rotated(st, &lab, &inv, &inventory, &before).await;
    lab.down().expect("lab down");
}

/// `haop certs rotate-ca --agent` with a failpoint that aborts it: it must die there.
fn killed_at(st: &Path, inv: &str, failpoint: &str) {
    let out = Command::new(haop_bin())
        .env("HAOP_STATE_DIR", st)
        .env(haop_coordinator::failpoint::ENV, failpoint)
        .args(["certs", "rotate-ca", "--agent", "-f", inv])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let said = text(&out);
    assert_eq!(
        out.status.signal(),
        Some(nix::sys::signal::Signal::SIGABRT as i32),
        "the rotation was to die at {failpoint}:\n{said}"
    );
    assert!(said.contains(&format!("failpoint {failpoint}")), "{said}");
}

/// How many CAs each host's agent trusts, from its trust bundle on disk.
fn bundle_sizes(lab: &LabGuard) -> Vec<usize> {
    lab.hosts()
        .iter()
        .map(|h| {
            read(&h.root_dir.join("var/lib/haop-agent/pki/ca.crt"))
                .matches("BEGIN CERTIFICATE")
                .count()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotation_killed_in_the_middle_converges_when_run_again() {
    if !require_root() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let st = state.path();
    let (lab, inv, inventory) = common::applied_lab(st, &lab_name("rk")).await;
    let before = before(st, &lab, &inventory).await;

    // Killed right after the first host trusts both CAs: the other two still trust the old
    // one alone, and haop still reaches every agent (it trusts both CAs and presents the old
    // admin certificate, which every agent takes).
    killed_at(st, &inv, "rotate-agent:after-trust:etcd1");
    assert_eq!(bundle_sizes(&lab), [2, 1, 1]);
    let journal = read(&pki_dir(st).join("agent-ca-rotation.json"));
    assert!(
        journal.contains("\"prepare\"") && !journal.contains("\"trust\""),
        "{journal}"
    );
    let status = haop(st, &["status", "-f", &inv]);
    assert_eq!(status.status.code(), Some(0), "{}", text(&status));
    // Nothing that would pin the CA on its way out is allowed meanwhile.
    let token = haop(st, &["token", "create"]);
    assert!(!token.status.success());
    assert!(
        text(&token).contains("rotation is in progress"),
        "{}",
        text(&token)
    );

    // Killed again in the middle of the drop phase: etcd1 trusts the new CA alone, the others
    // both; haop presents its new admin certificate and still reaches every agent.
    killed_at(st, &inv, "rotate-agent:after-drop:etcd1");
    assert_eq!(bundle_sizes(&lab), [1, 2, 2]);
    let status = haop(st, &["status", "-f", &inv]);
    assert_eq!(status.status.code(), Some(0), "{}", text(&status));

    // Run again: it continues and finishes.
    let last = haop(st, &["certs", "rotate-ca", "--agent", "-f", &inv]);
    let said = text(&last);
    assert!(last.status.success(), "{said}");
    assert!(said.contains("continuing the rotation"), "{said}");
    assert!(said.contains("trusts the new CA alone already"), "{said}");
    assert!(said.contains("enrollment pin"), "{said}");
    assert_rotated(st, &lab, &inv, &inventory, &before).await;
    lab.down().expect("lab down");
}
