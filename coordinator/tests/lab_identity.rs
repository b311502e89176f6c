//! Identities in the lab, with real agents and real etcd over TLS: `haop identity issue` gives a
//! monitoring job a reader and a backup job an etcd client certificate; `haop identity revoke`
//! takes each away at once on every host it reaches, and a host that was cut off during the
//! revoke refuses the certificate as soon as `haop status` (as admin) has run after it is back.

mod common;

use common::{haop, require_root, text};

use std::path::Path;
use std::time::Duration;

use haop_coordinator::agent::{connect_with, HostAgent};
use tonic::transport::{Certificate, ClientTlsConfig, Identity};

fn lab_name(case: &str) -> String {
    format!("t{}-{case}", std::process::id() % 100_000)
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// The agent of `endpoint` called as the identity in `dir` (NAME.crt/.key, agent-ca.crt):
/// `Ok(common name)` from WhoAmI, or the refusal's code and message.
async fn who_am_i(dir: &Path, name: &str, host: &str, endpoint: &str) -> Result<String, String> {
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(&dir.join("agent-ca.crt"))))
        .identity(Identity::from_pem(
            read(&dir.join(format!("{name}.crt"))),
            read(&dir.join(format!("{name}.key"))),
        ));
    let channel = connect_with(tls, endpoint, Duration::from_secs(3))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    HostAgent::new(host, channel)
        .who_am_i()
        .await
        .map(|w| w.common_name)
        .map_err(|e| haop_coordinator::error_chain(&e))
}

/// A get over a new connection to `endpoint` as the etcd identity in `dir`.
async fn etcd_get(dir: &Path, name: &str, endpoint: &str) -> Result<(), String> {
    let tls = etcd_client::TlsOptions::new()
        .ca_certificate(etcd_client::Certificate::from_pem(read(
            &dir.join("etcd-ca.crt"),
        )))
        .identity(etcd_client::Identity::from_pem(
            read(&dir.join(format!("{name}.crt"))),
            read(&dir.join(format!("{name}.key"))),
        ));
    let options = etcd_client::ConnectOptions::new()
        .with_tls(tls)
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(3));
    let attempt = async {
        let mut c = etcd_client::Client::connect([endpoint], Some(options))
            .await
            .map_err(|e| e.to_string())?;
        c.get("/registry/probe", None)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    tokio::time::timeout(Duration::from_secs(8), attempt)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

#[tokio::test]
async fn identities_are_issued_and_revoked_on_every_host_even_one_cut_off() {
    if !require_root() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let st = state.path();
    let (lab, inv, inventory) = common::applied_lab(st, &lab_name("id")).await;
    let agents: Vec<(String, String)> = inventory
        .hosts
        .iter()
        .map(|h| (h.name.to_string(), h.agent.as_str().to_string()))
        .collect();

    // A reader for monitoring and an etcd client for backups, issued into a directory of their
    // own; neither key is kept in the state dir.
    let out = tempfile::tempdir().unwrap();
    let dir = out.path();
    for args in [
        vec!["identity", "issue", "mon", "--role", "reader"],
        vec!["identity", "issue", "backup", "--role", "reader", "--etcd"],
    ] {
        let mut args = args;
        let o = dir.display().to_string();
        args.extend(["--out", &o]);
        let issued = haop(st, &args);
        assert!(issued.status.success(), "{}", text(&issued));
    }
    let mon_key = read(&dir.join("mon.key"));
    for entry in walk(st) {
        let bytes = std::fs::read(&entry).unwrap_or_default();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(mon_key.trim()),
            "{} holds the issued key",
            entry.display()
        );
    }
    for (host, endpoint) in &agents {
        assert_eq!(
            who_am_i(dir, "mon", host, endpoint).await.as_deref(),
            Ok("mon"),
            "{host}"
        );
    }
    let endpoints = inventory.etcd_client_urls();
    for e in &endpoints {
        etcd_get(dir, "backup", e).await.expect("backup reads etcd");
    }
    // The same name again is refused while it is valid, naming it.
    let again = haop(
        st,
        &[
            "identity",
            "issue",
            "mon",
            "--role",
            "reader",
            "--out",
            &dir.display().to_string(),
        ],
    );
    assert!(!again.status.success());
    assert!(
        text(&again).contains("identity mon (agent) already exists"),
        "{}",
        text(&again)
    );

    // etcd3 is cut off, then the reader is revoked: every reachable agent refuses it at once.
    assert!(lab.cut("etcd3").unwrap());
    let revoked = haop(st, &["identity", "revoke", "mon", "-f", &inv]);
    let said = text(&revoked);
    assert_eq!(
        revoked.status.code(),
        Some(1),
        "one host missed it:\n{said}"
    );
    assert!(
        said.contains("etcd3") && said.contains("NOT REACHED"),
        "{said}"
    );
    for (host, endpoint) in agents.iter().filter(|(h, _)| h != "etcd3") {
        let err = who_am_i(dir, "mon", host, endpoint).await.unwrap_err();
        assert!(
            err.contains("Unauthenticated") && err.contains("revoked"),
            "{host}: {err}"
        );
    }
    // Back, etcd3 still takes the certificate: it missed the list.
    assert!(lab.restore("etcd3").unwrap());
    let etcd3 = &agents.iter().find(|(h, _)| h == "etcd3").unwrap().1;
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        match who_am_i(dir, "mon", "etcd3", etcd3).await {
            Ok(_) => break,
            Err(e) if std::time::Instant::now() < deadline => {
                eprintln!("etcd3 not back yet: {e}");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            Err(e) => panic!("etcd3 did not come back: {e}"),
        }
    }
    // A status as haop's admin pushes the list; from then on etcd3 refuses too.
    let s = common::status::status(st, &inv, &[]);
    let hosts = s.json["hosts"].as_array().unwrap();
    let h3 = hosts.iter().find(|h| h["name"] == "etcd3").unwrap();
    assert_eq!(h3["revocation_pushed"], true, "{:#}", s.json);
    assert_eq!(h3["revocation_generation"], 1, "{:#}", s.json);
    assert_eq!(s.json["revocation_generation"], 1, "{:#}", s.json);
    let err = who_am_i(dir, "mon", "etcd3", etcd3).await.unwrap_err();
    assert!(err.contains("revoked"), "{err}");
    let s = common::status::status(st, &inv, &[]);
    assert!(
        s.json["hosts"]
            .as_array()
            .unwrap()
            .iter()
            .all(|h| h["revocation_generation"] == 1 && h["revocation_pushed"] == false),
        "{:#}",
        s.json
    );

    // The etcd identity revoked: every member refuses new connections with it, at once and
    // without a restart; haop's own client still works.
    let revoked = haop(st, &["identity", "revoke", "backup", "-f", &inv]);
    assert!(revoked.status.success(), "{}", text(&revoked));
    for e in &endpoints {
        let err = etcd_get(dir, "backup", e).await.unwrap_err();
        eprintln!("backup at {e} after the revoke: {err}");
    }
    let st_ok = haop(st, &["etcd", "members", "-f", &inv]);
    assert!(st_ok.status.success(), "{}", text(&st_ok));

    // haop's own certificates cannot be revoked; the list shows everything with its state.
    let own = haop(st, &["identity", "revoke", "haop", "-f", &inv]);
    assert!(!own.status.success());
    assert!(text(&own).contains("lock haop out"), "{}", text(&own));
    let listed = haop(st, &["identity", "list", "-o", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&listed.stdout).unwrap();
    assert_eq!(json["revocation_generation"]["agent"], 1);
    assert_eq!(json["revocation_generation"]["etcd"], 1);
    let ids = json["identities"].as_array().unwrap();
    assert_eq!(
        ids.iter().filter(|i| i["revoked_unix"].is_number()).count(),
        2
    );
    assert_eq!(ids.iter().filter(|i| i["built_in"] == true).count(), 2);
    // A converged plan after all this: the CRL file on the members is the current one.
    let plan = haop(st, &["plan", "-f", &inv, "--exit-code"]);
    assert!(plan.status.success(), "{}", text(&plan));
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() && !p.is_symlink() {
                out.extend(walk(&p));
            } else {
                out.push(p);
            }
        }
    }
    out
}
