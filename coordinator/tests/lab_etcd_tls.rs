//! A real etcd cluster from Debian's package, with TLS and client and peer certificate auth on,
//! stood up through real agents in a lab: keys born on their hosts (CreateCsr), certificates
//! signed by the state dir's etcd CA and installed (InstallCertificate), units run by the agents'
//! supervisor. Then what users rely on: etcd accepts haop's client certificate and refuses a
//! client without one, certificates verify with openssl, no host key is in the state dir, a
//! SIGKILLed member comes back, the agent's fences hold, and sysctls stay in their namespace.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use haop_coordinator::agent::{self, Client};
use haop_coordinator::etcd::config::{ClusterState, Member, MemberConfig, PKI_DIR, UNIT_NAME};
use haop_coordinator::lab::{LabGuard, LabSpec};
use haop_coordinator::pki::{
    is_private_key_pem, CertificateAuthority, ExpectedNames, Profile, SigningRequest,
    DEFAULT_LIFETIME, ETCD_CA,
};
use haop_coordinator::trust::{pki_dir, Trust};
use haop_proto::v1 as pb;
use tonic::Code;

fn require_root() {
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var_os("HAOP_SKIP_LAB_TESTS").is_some(),
            "lab tests need root; set HAOP_SKIP_LAB_TESTS=1 to skip them"
        );
    }
}

fn etcdctl(
    state: &Path,
    endpoints: &str,
    with_client_cert: bool,
    args: &[&str],
) -> std::process::Output {
    let pki = pki_dir(state);
    let mut cmd = Command::new("/usr/bin/etcdctl");
    cmd.env_clear()
        .env("ETCDCTL_API", "3")
        .arg("--endpoints")
        .arg(endpoints)
        .arg("--cacert")
        .arg(pki.join("etcd-ca.crt"))
        .arg("--command-timeout=5s")
        .arg("--dial-timeout=2s");
    if with_client_cert {
        cmd.arg("--cert")
            .arg(pki.join("etcd-client.crt"))
            .arg("--key")
            .arg(pki.join("etcd-client.key"));
    }
    cmd.args(args).output().expect("run etcdctl")
}

async fn wait_for<F: FnMut() -> bool>(what: &str, timeout: Duration, mut check: F) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn issue(
    client: &mut Client,
    ca: &CertificateAuthority,
    host: &str,
    address: IpAddr,
    file: &str,
    profile: Profile,
) -> String {
    let key_path = format!("{PKI_DIR}/{file}.key");
    let csr = client
        .create_csr(pb::CreateCsrRequest {
            key_path: key_path.clone(),
            common_name: host.into(),
            dns_names: vec![host.into(), "localhost".into()],
            ip_addresses: vec![address.to_string(), "127.0.0.1".into()],
            ..Default::default()
        })
        .await
        .expect("CreateCsr")
        .into_inner();
    let cert = ca
        .sign_csr(
            &csr.csr_pem,
            &SigningRequest {
                profile,
                lifetime: DEFAULT_LIFETIME,
                expected: ExpectedNames::for_host(host, None, &[address]),
                organization: None,
                common_name: host.into(),
            },
        )
        .expect("sign");
    client
        .install_certificate(pb::InstallCertificateRequest {
            cert_path: format!("{PKI_DIR}/{file}.crt"),
            cert_pem: cert.clone(),
            key_path,
            ca_path: format!("{PKI_DIR}/ca.crt"),
            ca_pem: ca.cert_pem().to_string(),
        })
        .await
        .expect("InstallCertificate");
    cert
}

fn private_keys_under(dir: &Path, skip: &Path, found: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let p = entry.path();
        if p == skip {
            continue;
        }
        let meta = std::fs::symlink_metadata(&p).unwrap();
        if meta.is_dir() {
            private_keys_under(&p, skip, found);
        } else if meta.is_file() && is_private_key_pem(&std::fs::read(&p).unwrap()) {
            found.push(p);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_etcd_cluster_through_agents() {
    require_root();
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let name = format!("t{}-tls", std::process::id() % 100_000);
    let lab = LabGuard::up(state.path(), &name, LabSpec::default())
        .await
        .expect("lab up");
    let trust = Trust::load(state.path()).unwrap();
    let etcd_ca = CertificateAuthority::load(&pki_dir(state.path()), ETCD_CA).unwrap();
    let (_, crl) = haop_coordinator::identity::crl::current(
        state.path(),
        haop_coordinator::identity::Channel::Etcd,
        &etcd_ca,
    )
    .unwrap();
    let members: Vec<Member> = lab
        .hosts()
        .iter()
        .map(|h| Member {
            name: h.name.clone(),
            address: IpAddr::V4(h.address),
        })
        .collect();

    let mut clients = Vec::new();
    for (h, m) in lab.hosts().iter().zip(&members) {
        let mut c = agent::connect(&trust, &h.endpoint, Duration::from_secs(5))
            .await
            .expect("agent over mTLS");
        let server = issue(
            &mut c,
            &etcd_ca,
            &h.name,
            m.address,
            "server",
            Profile::Server,
        )
        .await;
        issue(&mut c, &etcd_ca, &h.name, m.address, "peer", Profile::Peer).await;
        // openssl agrees: the CA verifies it, for server use, with the host's names.
        let crt = h.root_dir.join("etc/kubernetes/pki/etcd/server.crt");
        let out = Command::new("/usr/bin/openssl")
            .args(["verify", "-purpose", "sslserver", "-CAfile"])
            .arg(etcd_ca.cert_path())
            .arg(&crt)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let info = &haop_coordinator::pki::inspect(&server).unwrap()[0];
        assert!(info.ip_addresses.contains(&m.address.to_string()));
        assert!(info.extended_key_usages.iter().any(|u| u == "server auth"));
        let key_mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(h.root_dir.join("etc/kubernetes/pki/etcd/server.key"))
                .unwrap()
                .permissions(),
        );
        assert_eq!(key_mode & 0o777, 0o600);

        let cfg = MemberConfig {
            member: m.clone(),
            initial_cluster: members.clone(),
            state: ClusterState::New,
            cluster_token: name.clone(),
            data_dir: "/var/lib/etcd".into(),
            client_port: 2379,
            peer_port: 2380,
            binary: "/usr/bin/etcd".into(),
            extra_flags: vec![],
        };
        // etcd.env names the etcd CA's revocation list, which must be there (apply writes it
        // first too): without it etcd refuses every client.
        c.write_file(pb::WriteFileRequest {
            path: haop_coordinator::etcd::config::client_crl_path(),
            content: crl.clone().into_bytes(),
            mode: 0o644,
            ..Default::default()
        })
        .await
        .expect("client-crl.pem");
        c.write_file(pb::WriteFileRequest {
            path: "/etc/etcd.env".into(),
            content: cfg.env_file().into_bytes(),
            mode: 0o640,
            ..Default::default()
        })
        .await
        .expect("etcd.env");
        c.write_file(pb::WriteFileRequest {
            path: "/etc/etcd.bootstrap.env".into(),
            content: cfg.bootstrap_env_file(None).into_bytes(),
            mode: 0o640,
            ..Default::default()
        })
        .await
        .expect("etcd.bootstrap.env");
        c.ensure_unit(pb::EnsureUnitRequest {
            name: UNIT_NAME.into(),
            content: cfg.unit_file(),
            data_dirs: vec!["/var/lib/etcd".into()],
        })
        .await
        .expect("EnsureUnit");
        clients.push(c);
    }
    // The files landed under each host's root with their modes.
    let env = lab.hosts()[0].root_dir.join("etc/etcd.env");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&env).unwrap().permissions())
            & 0o777,
        0o640
    );
    // All three start in parallel, as they must to form a quorum.
    let starts = clients.iter().cloned().map(|mut c| async move {
        c.unit_action(pb::UnitActionRequest {
            name: UNIT_NAME.into(),
            action: pb::Action::Start as i32,
        })
        .await
        .expect("start etcd")
        .into_inner()
    });
    for r in futures_util::future::join_all(starts).await {
        assert!(r.changed);
    }

    let endpoints: String = members
        .iter()
        .map(|m| m.client_url(2379))
        .collect::<Vec<_>>()
        .join(",");
    let st = state.path().to_path_buf();
    wait_for("a healthy TLS quorum", Duration::from_secs(60), || {
        etcdctl(&st, &endpoints, true, &["endpoint", "health"])
            .status
            .success()
    })
    .await;
    let put = etcdctl(&st, &endpoints, true, &["put", "/haop/tls", "yes"]);
    assert!(
        put.status.success(),
        "{}",
        String::from_utf8_lossy(&put.stderr)
    );
    let list = etcdctl(&st, &endpoints, true, &["member", "list"]);
    let text = String::from_utf8_lossy(&list.stdout);
    assert_eq!(text.lines().count(), 3, "{text}");

    // Without a client certificate etcd refuses.
    let anon = etcdctl(
        &st,
        &members[0].client_url(2379),
        false,
        &["get", "/haop/tls"],
    );
    assert!(
        !anon.status.success(),
        "etcd answered a client without a certificate"
    );

    // The only private keys in the state dir are the CAs' and haop's own client keys.
    let mut keys = Vec::new();
    private_keys_under(state.path(), &state.path().join("labs"), &mut keys);
    let mut names: Vec<String> = keys
        .iter()
        .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    names.sort();
    assert_eq!(
        names,
        [
            "agent-ca.key",
            "etcd-ca.key",
            "etcd-client.key",
            "haop-admin.key"
        ]
    );

    // The fence: a running member's data dir cannot be wiped.
    let err = clients[0]
        .wipe_data_dir(pb::WipeDataDirRequest {
            unit: UNIT_NAME.into(),
            path: "/var/lib/etcd".into(),
            delete: true,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert!(lab.hosts()[0].root_dir.join("var/lib/etcd/member").exists());

    // Exec allows only its allow-list, with no shell.
    let err = clients[0]
        .exec(pb::ExecRequest {
            program: "/bin/sh".into(),
            args: vec!["-c".into(), "id".into()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    // A per-namespace sysctl changes the host's namespace, not the machine.
    let machine_before = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
    let wanted = if machine_before.trim() == "1" {
        "0"
    } else {
        "1"
    };
    let mut values = std::collections::HashMap::new();
    values.insert("net.ipv4.ip_forward".to_string(), wanted.to_string());
    let r = clients[1]
        .apply_sysctl(pb::ApplySysctlRequest {
            name: "k8s".into(),
            values,
        })
        .await
        .expect("ApplySysctl")
        .into_inner();
    assert_eq!(r.applied, vec!["net.ipv4.ip_forward"]);
    let inside = Command::new("/usr/sbin/ip")
        .args([
            "netns",
            "exec",
            &lab.hosts()[1].namespace,
            "cat",
            "/proc/sys/net/ipv4/ip_forward",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&inside.stdout).trim(), wanted);
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        machine_before
    );

    // A member killed with SIGKILL is restarted by its agent and rejoins with its data.
    let report = lab.crash("etcd2", UNIT_NAME, false).await.expect("crash");
    let mut c2 = clients[1].clone();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let s = c2
            .unit_status(pb::UnitStatusRequest {
                name: UNIT_NAME.into(),
            })
            .await
            .unwrap()
            .into_inner();
        if s.active_state == "active" && s.main_pid != report.pid && s.main_pid != 0 {
            assert!(s.restart_count >= 1);
            break;
        }
        assert!(Instant::now() < deadline, "etcd2 did not come back: {s:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let ep2 = members[1].client_url(2379);
    wait_for("etcd2 healthy again", Duration::from_secs(30), || {
        etcdctl(&st, &ep2, true, &["endpoint", "health"])
            .status
            .success()
    })
    .await;
    let get = etcdctl(&st, &ep2, true, &["get", "/haop/tls", "--print-value-only"]);
    assert_eq!(String::from_utf8_lossy(&get.stdout).trim(), "yes");

    // `haop certs list`: every certificate, from the state dir and every host, soonest first.
    let (inv, _) =
        haop_coordinator::inventory::Inventory::load(&lab.inventory_path()).expect("inventory");
    let rows = haop_coordinator::certs::list(state.path(), &inv, Duration::from_secs(5))
        .await
        .expect("certs list");
    assert!(rows.iter().all(|r| r.error.is_none()), "{rows:#?}");
    for h in lab.hosts() {
        for path in [
            "/etc/kubernetes/pki/etcd/server.crt",
            "/etc/kubernetes/pki/etcd/peer.crt",
            "/etc/kubernetes/pki/etcd/ca.crt",
            "agent serving certificate",
        ] {
            assert!(
                rows.iter().any(|r| r.location == h.name && r.path == path),
                "{} {path} missing",
                h.name
            );
        }
    }
    assert!(rows
        .iter()
        .any(|r| r.location == "state-dir" && r.path.ends_with("etcd-ca.crt")));
    assert!(rows.windows(2).all(|w| w[0].days_left <= w[1].days_left));
    assert!(
        rows.iter().all(|r| r.days_left > 1000),
        "default lifetime is 43800h"
    );

    lab.down().expect("lab down");
}
