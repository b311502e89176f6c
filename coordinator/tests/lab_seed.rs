//! `haop lab up NAME --from-seed`: hosts built by the seed's runbook as written, the starting
//! point `haop adopt` takes over. Checked through the `haop` binary and from outside, as a user
//! (or adoption) meets them: the seed's etcd answers over TLS verified with the seed's `ca.pem`;
//! it refuses a client without a certificate, or with one of another CA (haop's own), because
//! etcd asks every client for one of its CA whenever `--trusted-ca-file` is set,
//! `--client-cert-auth=false` notwithstanding; it takes any certificate the seed's CA signed, a
//! member's server certificate too (that, and the CA key on every etcd host, is what is
//! insecure); its members are `master-0..2` with peer URLs `https://etcdN:2380`; `ca-key.pem`
//! is on every etcd host (0600); the certificates chain to `ca.pem` with the seed's names; the
//! running etcd has `--client-cert-auth=false`; keepalived holds the VIP on exactly one master,
//! also once the seed's check has failed long enough to count; the kube-apiserver manifest
//! names the seed's client files. A second lab runs etcd 3.5.1 through `--seed-etcd-binary`.
//!
//! Needs root, the `haop` and `haop-agent` binaries (`cargo build --workspace`) and, for the
//! second test, etcd 3.5.1 (`HAOP_ETCD35` or target/etcd-3.5.1/etcd).

mod common;

use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::{haop, require_root, text};
use etcd_client::{Certificate, ConnectOptions, Identity, TlsOptions};
use haop_coordinator::agent::HostAgent;
use haop_coordinator::lab::{Lab, LabGuard, LabHost};
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::{FromDer, X509Certificate};

const PKI: &str = "etc/kubernetes/pki/etcd";

/// A temporary state dir that removes every lab in it when dropped, whatever the test did.
struct StateDir(tempfile::TempDir);

impl Drop for StateDir {
    fn drop(&mut self) {
        if let Err(e) = Lab::down_all(self.0.path()) {
            eprintln!("cleanup of {}: {e}", self.0.path().display());
        }
    }
}

fn unique(tag: &str) -> String {
    format!("t{}-{tag}", std::process::id() % 100_000)
}

/// `haop lab up NAME --from-seed ARGS`, guarded from the moment it returns.
fn up_from_seed(st: &Path, name: &str, args: &[&str]) -> (LabGuard, String) {
    let started = Instant::now();
    let mut all = vec!["lab", "up", name, "--from-seed"];
    all.extend_from_slice(args);
    let out = haop(st, &all);
    let lab = match Lab::open(st, name) {
        Ok(l) => LabGuard::new(l),
        Err(e) => panic!("lab up failed ({e}):\n{}", text(&out)),
    };
    assert!(out.status.success(), "{}", text(&out));
    eprintln!(
        "lab {name} up from the seed in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    (lab, String::from_utf8_lossy(&out.stdout).into_owned())
}

fn pki_file(host: &LabHost, name: &str) -> PathBuf {
    host.root_dir.join(PKI).join(name)
}

fn etcd_hosts(lab: &LabGuard) -> Vec<LabHost> {
    lab.hosts()
        .iter()
        .filter(|h| h.name.starts_with("etcd"))
        .cloned()
        .collect()
}

/// TLS verified with etcd1's `ca.pem`, with the certificate and key `identity` names (a
/// host and the cfssljson base name), or none.
fn tls(lab: &LabGuard, identity: Option<(&str, &str)>) -> TlsOptions {
    let etcd1 = lab.host("etcd1").unwrap();
    let ca = fs::read(pki_file(etcd1, "ca.pem")).unwrap();
    let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(ca));
    if let Some((host, base)) = identity {
        let h = lab.host(host).unwrap();
        let cert = fs::read(pki_file(h, &format!("{base}.pem"))).unwrap();
        let key = fs::read(pki_file(h, &format!("{base}-key.pem"))).unwrap();
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    tls
}

async fn client(endpoints: &[String], tls: TlsOptions) -> etcd_client::Client {
    let options = ConnectOptions::new()
        .with_tls(tls)
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(3));
    etcd_client::Client::connect(endpoints, Some(options))
        .await
        .expect("connect")
}

/// Puts and reads back a key through `tls`.
async fn put_get(endpoints: &[String], tls: TlsOptions, key: &str) -> Result<(), String> {
    let options = ConnectOptions::new()
        .with_tls(tls)
        .with_connect_timeout(Duration::from_secs(3))
        .with_timeout(Duration::from_secs(3));
    let mut c = etcd_client::Client::connect(endpoints, Some(options))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    c.put(key, "written by lab_seed", None)
        .await
        .map_err(|e| format!("put: {e}"))?;
    let got = c.get(key, None).await.map_err(|e| format!("get: {e}"))?;
    match got.kvs().first() {
        Some(kv) if kv.value() == b"written by lab_seed" => Ok(()),
        other => Err(format!("read back {other:?}")),
    }
}

fn der(path: &Path) -> Vec<u8> {
    let p = pem::parse(fs::read(path).unwrap()).unwrap();
    assert_eq!(p.tag(), "CERTIFICATE", "{}", path.display());
    p.into_contents()
}

/// The subject alternative names of `cert` as `DNS:x` and `IP:a.b.c.d`.
fn sans(cert: &X509Certificate<'_>) -> Vec<String> {
    let mut out = Vec::new();
    for ext in cert.extensions() {
        if let ParsedExtension::SubjectAlternativeName(san) = ext.parsed_extension() {
            for n in &san.general_names {
                out.push(match n {
                    GeneralName::DNSName(d) => format!("DNS:{d}"),
                    GeneralName::IPAddress(b) if b.len() == 4 => {
                        format!("IP:{}", IpAddr::from([b[0], b[1], b[2], b[3]]))
                    }
                    other => format!("{other:?}"),
                });
            }
        }
    }
    out
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p)
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
        .permissions()
        .mode()
        & 0o7777
}

/// The command line of the process running `unit` on `host`, from its agent's unit status.
async fn unit_cmdline(st: &Path, host: &LabHost, unit: &str) -> Vec<String> {
    let trust = haop_coordinator::trust::Trust::load(st).unwrap();
    let agent = HostAgent::connect(&trust, &host.name, &host.endpoint, Duration::from_secs(5))
        .await
        .unwrap();
    let status = agent.unit_status(unit).await.unwrap();
    assert_eq!(status.active_state, "active", "{}: {status:?}", host.name);
    assert!(
        status.enabled,
        "{}: {unit} is not enabled: {status:?}",
        host.name
    );
    let raw = fs::read(format!("/proc/{}/cmdline", status.main_pid)).unwrap();
    raw.split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// The masters that hold `vip` on their interface.
fn vip_holders(lab: &LabGuard, vip: &str) -> Vec<String> {
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
                .any(|w| w.split('/').next() == Some(vip))
        })
        .map(|h| h.name.clone())
        .collect()
}

fn namespaces() -> String {
    let out = Command::new("/usr/sbin/ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Takes the lab down and checks that none of its namespaces is left.
fn down(lab: LabGuard) {
    let spaces: Vec<String> = lab.hosts().iter().map(|h| h.namespace.clone()).collect();
    lab.down().expect("lab down");
    let left = namespaces();
    for ns in spaces {
        assert!(
            !left
                .lines()
                .any(|l| l.split_whitespace().next() == Some(ns.as_str())),
            "namespace {ns} is left: {left}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seeds_hosts_as_written() {
    if !require_root() {
        return;
    }
    let state = StateDir(tempfile::tempdir().unwrap());
    let st = state.0.path();
    let name = unique("seed");
    let started = Instant::now();
    let (lab, stdout) = up_from_seed(st, &name, &["--etcd", "3", "--masters", "2"]);
    assert!(
        stdout.contains("built by the seed's runbook")
            && stdout.contains("--client-cert-auth=false"),
        "{stdout}"
    );
    let etcd = etcd_hosts(&lab);
    assert_eq!(etcd.len(), 3);
    let endpoints: Vec<String> = etcd
        .iter()
        .map(|h| format!("https://{}:2379", h.address))
        .collect();

    // TLS verified with the seed's CA. A client without a certificate is refused at the
    // handshake; any certificate of the seed's CA is a full client: the masters' client
    // certificate, and a member's own server certificate.
    let no_cert = put_get(&endpoints, tls(&lab, None), "/seed/anonymous").await;
    assert!(
        no_cert.is_err(),
        "a client without a certificate was served"
    );
    put_get(
        &endpoints,
        tls(&lab, Some(("master1", "client"))),
        "/seed/client",
    )
    .await
    .expect("the seed's client certificate");
    put_get(
        &endpoints,
        tls(&lab, Some(("etcd3", "server"))),
        "/seed/server",
    )
    .await
    .expect("etcd3's server certificate as a client");
    // A certificate of another CA is refused as well: haop's own etcd client certificate (from
    // `haop init`, which `lab up` ran) does not reach the seed's etcd until a CA file of the
    // members trusts haop's CA.
    let seed_ca = fs::read(pki_file(lab.host("etcd1").unwrap(), "ca.pem")).unwrap();
    let haop_client = haop_coordinator::etcd::api::EtcdClient::connect_trusting(
        st,
        &endpoints,
        Duration::from_secs(2),
        seed_ca,
    )
    .await;
    if let Ok(c) = haop_client {
        let put = c.put("/seed/haop", b"x").await;
        assert!(
            put.is_err(),
            "haop's client certificate was served: {put:?}"
        );
    }

    // The members as the seed names them, peers on the short names, clients on the IPs.
    let mut c = client(&endpoints, tls(&lab, Some(("etcd1", "client")))).await;
    let list = c.member_list().await.unwrap();
    let mut members: Vec<(String, Vec<String>, Vec<String>)> = list
        .members()
        .iter()
        .map(|m| {
            assert!(!m.is_learner());
            (
                m.name().to_string(),
                m.peer_urls().to_vec(),
                m.client_urls().to_vec(),
            )
        })
        .collect();
    members.sort();
    let expected: Vec<(String, Vec<String>, Vec<String>)> = etcd
        .iter()
        .enumerate()
        .map(|(i, h)| {
            (
                format!("master-{i}"),
                vec![format!("https://etcd{}:2380", i + 1)],
                vec![format!("https://{}:2379", h.address)],
            )
        })
        .collect();
    assert_eq!(members, expected);
    let status = c.status().await.unwrap();
    assert!(
        status.version().starts_with("3.4."),
        "Debian's etcd, not {}",
        status.version()
    );

    // The PKI: the CA key on every etcd host (the seed's scp), 0600; the certificates chain to
    // ca.pem with the seed's names.
    let etcd1 = lab.host("etcd1").unwrap();
    let ca_der = der(&pki_file(etcd1, "ca.pem"));
    let (_, ca) = X509Certificate::from_der(&ca_der).unwrap();
    assert_eq!(ca.subject().to_string(), "CN=etcd");
    assert!(ca.is_ca());
    ca.verify_signature(None).unwrap();
    let ca_key = fs::read(pki_file(etcd1, "ca-key.pem")).unwrap();
    for h in &etcd {
        let key = pki_file(h, "ca-key.pem");
        assert_eq!(mode(&key), 0o600, "{}", key.display());
        assert_eq!(
            fs::read(&key).unwrap(),
            ca_key,
            "{}: another CA key",
            h.name
        );
        assert_eq!(der(&pki_file(h, "ca.pem")), ca_der);
        for base in ["server", "peer"] {
            assert_eq!(mode(&pki_file(h, &format!("{base}-key.pem"))), 0o600);
            assert_eq!(mode(&pki_file(h, &format!("{base}.pem"))), 0o644);
            let d = der(&pki_file(h, &format!("{base}.pem")));
            let (_, cert) = X509Certificate::from_der(&d).unwrap();
            cert.verify_signature(Some(ca.public_key()))
                .unwrap_or_else(|e| {
                    panic!("{}'s {base}.pem does not chain to ca.pem: {e}", h.name)
                });
            assert_eq!(
                cert.subject().to_string(),
                format!("C=US, ST=CA, L=San Francisco, CN={}", h.name)
            );
            assert_eq!(
                sans(&cert),
                [format!("DNS:{}", h.name), format!("IP:{}", h.address)]
            );
            let eku = cert.extended_key_usage().unwrap().unwrap().value;
            assert!(eku.server_auth && eku.client_auth, "{}: {base}", h.name);
        }
    }
    let d = der(&pki_file(etcd1, "client.pem"));
    let (_, client_cert) = X509Certificate::from_der(&d).unwrap();
    client_cert.verify_signature(Some(ca.public_key())).unwrap();
    assert_eq!(client_cert.subject().to_string(), "CN=client");
    let eku = client_cert.extended_key_usage().unwrap().unwrap().value;
    assert!(eku.client_auth && !eku.server_auth);

    // The running etcd is the seed's command line: cert auth off, peers on the short names.
    for (i, h) in etcd.iter().enumerate() {
        let args = unit_cmdline(st, h, "etcd.service").await;
        assert_eq!(args[0], "/bin/etcd", "{}: {args:?}", h.name);
        for want in [
            "--client-cert-auth=false",
            "--peer-client-cert-auth=false",
            "--initial-cluster-token",
            "my-etcd-token",
            &format!("master-{i}"),
            &format!("https://{}:2380", h.address),
            "master-0=https://etcd1:2380,master-1=https://etcd2:2380,master-2=https://etcd3:2380",
        ] {
            assert!(
                args.iter().any(|a| a == want),
                "{}: {want} missing from {args:?}",
                h.name
            );
        }
    }

    // keepalived: the VIP on exactly one master (master1, MASTER with priority 101), with the
    // seed's check script failing everywhere (no API server) and its weight -2.
    let (inv, _) =
        haop_coordinator::inventory::Inventory::load(&lab.inventory_path()).expect("inventory");
    let vip = inv
        .vip
        .as_ref()
        .expect("a lab with two masters has a VIP")
        .address
        .to_string();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let holders = vip_holders(&lab, &vip);
        if holders == ["master1"] {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "VIP {vip} held by {holders:?}, expected master1 alone"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for m in ["master1", "master2"] {
        let h = lab.host(m).unwrap();
        let args = unit_cmdline(st, h, "keepalived.service").await;
        assert_eq!(args[..2], ["/usr/sbin/keepalived", "--dont-fork"], "{m}");

        // kube-apiserver's manifest names the seed's client files, present on the master.
        let manifest = fs::read_to_string(
            h.root_dir
                .join("etc/kubernetes/manifests/kube-apiserver.yaml"),
        )
        .unwrap();
        for (flag, file) in [
            ("--etcd-cafile", "ca.pem"),
            ("--etcd-certfile", "client.pem"),
            ("--etcd-keyfile", "client-key.pem"),
        ] {
            let line = format!("    - {flag}=/etc/kubernetes/pki/etcd/{file}\n");
            assert!(
                manifest.contains(&line),
                "{m}: {line:?} missing:\n{manifest}"
            );
            assert!(pki_file(h, file).is_file(), "{m}: {file} missing");
        }
        assert!(manifest.contains(
            "    - --etcd-servers=https://etcd1:2379,https://etcd2:2379,https://etcd3:2379\n"
        ));
        assert_eq!(mode(&pki_file(h, "client-key.pem")), 0o600);
        assert!(
            !pki_file(h, "ca-key.pem").exists(),
            "{m}: the seed copies no CA key to masters"
        );
    }
    // The seed's check asks for an API server that is not there: it fails on every master,
    // and after `fall 10` at `interval 3` (30 s) keepalived takes its weight off both
    // priorities (101 -> 99, 100 -> 98). master1 still holds the VIP, alone.
    let check = haop(
        st,
        &[
            "lab",
            "exec",
            &name,
            "master1",
            "--",
            "/etc/keepalived/check_apiserver.sh",
        ],
    );
    assert_eq!(check.status.code(), Some(1), "{}", text(&check));
    assert!(
        String::from_utf8_lossy(&check.stderr).contains("*** Error GET https://localhost:6443/"),
        "{}",
        text(&check)
    );
    let checks_failed = Duration::from_secs(36);
    let mut odd = Vec::new();
    while started.elapsed() < checks_failed {
        let holders = vip_holders(&lab, &vip);
        if holders != ["master1"] {
            odd.push(format!(
                "{:.1} s: {holders:?}",
                started.elapsed().as_secs_f64()
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    for _ in 0..4 {
        assert_eq!(
            vip_holders(&lab, &vip),
            ["master1"],
            "with the checks failing (before: {odd:?})"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if !odd.is_empty() {
        eprintln!("VIP {vip} was not held by master1 alone at: {odd:?}");
    }

    // The lab's inventory is the normal lab inventory.
    assert_eq!(inv.etcd_hosts().len(), 3);
    assert_eq!(inv.masters().len(), 2);
    down(lab);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_with_another_etcd_release() {
    if !require_root() {
        return;
    }
    let release = common::etcd351();
    let state = StateDir(tempfile::tempdir().unwrap());
    let st = state.0.path();
    let name = unique("s35");
    let release_arg = release.display().to_string();
    let (lab, _) = up_from_seed(
        st,
        &name,
        &["--etcd", "3", "--seed-etcd-binary", &release_arg],
    );
    let etcd = etcd_hosts(&lab);
    for h in &etcd {
        let endpoint = [format!("https://{}:2379", h.address)];
        let mut c = client(&endpoint, tls(&lab, Some(("etcd1", "client")))).await;
        let status = c.status().await.unwrap();
        assert_eq!(status.version(), "3.5.1", "{}", h.name);
        let args = unit_cmdline(st, h, "etcd.service").await;
        assert_eq!(args[0], "/usr/local/bin/etcd", "{}: {args:?}", h.name);
        assert!(args.iter().any(|a| a == "--client-cert-auth=false"));
        let copied = h.root_dir.join("usr/local/bin/etcd");
        assert_eq!(mode(&copied), 0o755);
        assert_eq!(fs::read(&copied).unwrap(), fs::read(&release).unwrap());
    }
    let endpoints: Vec<String> = etcd
        .iter()
        .map(|h| format!("https://{}:2379", h.address))
        .collect();
    put_get(&endpoints, tls(&lab, Some(("etcd2", "client"))), "/seed/35")
        .await
        .expect("put and get on 3.5.1");
    down(lab);
}
