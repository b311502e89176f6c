//! Least privilege over real mTLS: a certificate of each role against every RPC and against
//! every kind of secret a host holds (agent/src/policy.rs has the table). A refusal is
//! PERMISSION_DENIED, returns nothing of the file (its marker never shows, not even in the
//! message) and changes nothing; what `haop apply`, `recover`, `renew`, `status` and `certs list`
//! ask of an agent still works for the role they use.

mod common;

use std::collections::HashMap;

use common::{connect, TestAgent};
use haop_proto::v1 as pb;
use haop_proto::v1::agent_client::AgentClient;
use tonic::transport::Channel;
use tonic::{Code, Status};

type Client = AgentClient<Channel>;

async fn clients(a: &TestAgent) -> (Client, Client) {
    let reader = a.ca.client("monitoring", Some("haop:reader"));
    let admin = a.ca.client("haop", Some("haop:admin"));
    (
        connect(a.addr, &a.ca.cert_pem, Some(&reader))
            .await
            .unwrap(),
        connect(a.addr, &a.ca.cert_pem, Some(&admin)).await.unwrap(),
    )
}

fn plant(a: &TestAgent, path: &str, content: &[u8]) {
    let real = a.real(path);
    std::fs::create_dir_all(real.parent().unwrap()).unwrap();
    std::fs::write(real, content).unwrap();
}

fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// The secret each planted file holds; no answer may carry it.
fn marker(n: usize) -> String {
    format!("SECRET-MARKER-{n:02}")
}

/// A data dir declared by a unit (as `haop apply` does for etcd with a custom data_dir).
const DECLARED: &str = "/var/lib/haop/etcd-data";

/// Every kind of secret-bearing path, planted with a marker (or a real key).
fn plant_secrets(a: &TestAgent) -> Vec<&'static str> {
    let files: &[&str] = &[
        "/var/lib/etcd/member/snap/db",
        "/var/lib/haop/etcd-data/member/snap/db",
        "/var/lib/etcd.wiped-20260101T000000Z/member/snap/db",
        "/var/lib/haop/etcd-data.wiped-20260101T000000Z/member/snap/db",
        "/var/lib/haop/restore/snapshot.db",
        "/etc/keepalived/keepalived.conf",
        "/etc/haop/agent.toml",
        "/etc/kubernetes/bootstrap-kubelet.conf",
        "/etc/containerd/config.toml",
    ];
    for (n, f) in files.iter().enumerate() {
        let text = match *f {
            "/etc/keepalived/keepalived.conf" => format!(
                "vrrp_instance VI_1 {{\n  authentication {{\n    auth_type PASS\n    \
                 auth_pass {}\n  }}\n}}\n",
                marker(n)
            ),
            "/etc/haop/agent.toml" => {
                format!("[enroll]\ntoken = \"abcdef.{}\"\n", marker(n))
            }
            // kubeadm join's kubeconfig: a bootstrap token, no PEM key anywhere.
            "/etc/kubernetes/bootstrap-kubelet.conf" => format!(
                "users:\n- name: tls-bootstrap-token-user\n  user:\n    token: abcdef.{}\n",
                marker(n)
            ),
            "/etc/containerd/config.toml" => format!(
                "[plugins.\"io.containerd.grpc.v1.cri\".registry.configs.\"r\".auth]\n\
                 password = \"{}\"\n",
                marker(n)
            ),
            _ => marker(n),
        };
        plant(a, f, text.as_bytes());
    }
    // kubeadm's admin.conf: the cluster-admin key in base64, beside the certificates.
    let kube_ca = common::TestCa::new("kubernetes");
    let kube_admin = kube_ca.client("kubernetes-admin", Some("system:masters"));
    plant(
        a,
        "/etc/kubernetes/admin.conf",
        format!(
            "clusters:\n- cluster:\n    certificate-authority-data: {}\n  name: kubernetes\n\
             users:\n- name: kubernetes-admin\n  user:\n    client-certificate-data: {}\n    \
             client-key-data: {}\n",
            b64(&kube_ca.cert_pem),
            b64(&kube_admin.cert_pem),
            b64(&kube_admin.key_pem)
        )
        .as_bytes(),
    );
    plant(
        a,
        "/etc/kubernetes/pki/etcd/server.key",
        kube_admin.key_pem.as_bytes(),
    );
    std::os::unix::fs::symlink("agent.toml", a.real("/etc/haop/innocent.conf")).unwrap();
    std::os::unix::fs::symlink(
        "/var/lib/etcd/member",
        a.real("/etc/kubernetes/member-link"),
    )
    .unwrap();
    let mut all = files.to_vec();
    all.extend([
        "/etc/kubernetes/admin.conf",
        "/etc/kubernetes/pki/etcd/server.key",
        "/etc/haop/innocent.conf",
        "/etc/kubernetes/member-link/snap/db",
        "/var/lib/haop-agent/pki/agent.key",
        "/var/lib/haop-agent/pki/ca.crt",
    ]);
    all
}

async fn declare_data_dir(admin: &mut Client) {
    admin
        .ensure_unit(pb::EnsureUnitRequest {
            name: "etcd.service".into(),
            content: "[Service]\nExecStart=/bin/sleep 300\n".into(),
            data_dirs: vec![DECLARED.into()],
        })
        .await
        .unwrap();
}

/// What a role gets of a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Gets {
    content: bool,
    certificates: bool,
    stat: bool,
    digest: bool,
}

const NOTHING: Gets = Gets {
    content: false,
    certificates: false,
    stat: false,
    digest: false,
};
const CERTS_AND_STAT: Gets = Gets {
    content: false,
    certificates: true,
    stat: true,
    digest: false,
};
const STAT: Gets = Gets {
    content: false,
    certificates: false,
    stat: true,
    digest: false,
};
const ALL: Gets = Gets {
    content: true,
    certificates: true,
    stat: true,
    digest: true,
};

/// What each role gets of each secret-bearing path: (reader, admin).
fn expected(path: &str) -> (Gets, Gets) {
    match path {
        // The node's own configuration: an admin plans against it; a reader sees only
        // certificates (none here) and metadata.
        "/etc/containerd/config.toml" => (CERTS_AND_STAT, ALL),
        // apply writes keepalived.conf and plan diffs it: admins read it, in full only.
        "/etc/keepalived/keepalived.conf" => (
            NOTHING,
            Gets {
                certificates: false,
                ..ALL
            },
        ),
        // status and certs list read kubeconfigs' certificates, never the rest.
        "/etc/kubernetes/admin.conf" | "/etc/kubernetes/bootstrap-kubelet.conf" => {
            (CERTS_AND_STAT, CERTS_AND_STAT)
        }
        // apply checks that a key exists.
        "/etc/kubernetes/pki/etcd/server.key" => (NOTHING, STAT),
        // etcd's data and moved-aside data: an admin sees sizes (recovery follows a learner
        // by them), never content or a digest; a reader nothing.
        p if p.starts_with("/var/lib/etcd")
            || p.starts_with("/var/lib/haop/etcd-data")
            || p.starts_with("/etc/kubernetes/member-link") =>
        {
            (NOTHING, STAT)
        }
        // Snapshots, the agent's own files: nobody.
        _ => (NOTHING, NOTHING),
    }
}

async fn read(c: &mut Client, path: &str, certificates_only: bool) -> Result<Vec<u8>, Status> {
    c.read_file(pb::ReadFileRequest {
        path: path.into(),
        max_bytes: 0,
        certificates_only,
    })
    .await
    .map(|r| r.into_inner().content)
}

fn assert_refused<T: std::fmt::Debug>(what: &str, r: Result<T, Status>) {
    let err = r.expect_err(what);
    assert_eq!(
        err.code(),
        Code::PermissionDenied,
        "{what}: {}",
        err.message()
    );
    assert!(
        !err.message().contains("SECRET-MARKER"),
        "{what}: {}",
        err.message()
    );
    assert!(
        !err.message().contains("PRIVATE KEY"),
        "{what}: {}",
        err.message()
    );
}

#[tokio::test]
async fn secrets_are_refused_to_each_role_and_nothing_of_them_is_returned() {
    let a = TestAgent::start().await;
    let (mut reader, mut admin) = clients(&a).await;
    declare_data_dir(&mut admin).await;
    let paths = plant_secrets(&a);
    for path in paths {
        let (r, ad) = expected(path);
        for (role, c, gets) in [("reader", &mut reader, r), ("admin", &mut admin, ad)] {
            let what = |rpc: &str| format!("{role} {rpc} {path}");
            let full = read(c, path, false).await;
            if gets.content {
                let want = std::fs::read(a.real(path)).unwrap();
                assert_eq!(full.unwrap(), want, "{}", what("ReadFile"));
            } else {
                assert_refused(&what("ReadFile"), full);
            }
            let certs = read(c, path, true).await;
            if gets.certificates {
                let got = String::from_utf8(certs.unwrap()).unwrap();
                assert!(
                    !got.contains("SECRET-MARKER"),
                    "{}: {got}",
                    what("certificates")
                );
                assert!(
                    !got.contains("PRIVATE KEY"),
                    "{}: {got}",
                    what("certificates")
                );
            } else {
                assert_refused(&what("ReadFile certificates_only"), certs);
            }
            let st = c
                .stat(pb::StatRequest {
                    path: path.into(),
                    tree: true,
                })
                .await;
            if gets.stat {
                let st = st.unwrap().into_inner();
                assert!(st.exists, "{}", what("Stat"));
                assert_eq!(
                    !st.sha256.is_empty(),
                    gets.digest,
                    "{}",
                    what("Stat sha256")
                );
            } else {
                assert_refused(&what("Stat"), st);
            }
        }
    }
    // The kubeconfig's certificates come, and only they.
    let certs = String::from_utf8(
        read(&mut reader, "/etc/kubernetes/admin.conf", true)
            .await
            .unwrap(),
    )
    .unwrap();
    assert_eq!(certs.matches("BEGIN CERTIFICATE").count(), 2, "{certs}");
    a.shutdown().await;
}

/// One valid request of every RPC, each naming a path a reader may read.
async fn call_every_rpc(c: &mut Client) -> Vec<(&'static str, Result<(), Status>)> {
    let upload = vec![pb::UploadChunk {
        header: Some(pb::UploadHeader {
            path: "/usr/local/bin/etcd".into(),
            mode: 0o755,
            sha256: haop_agent::files::sha256_hex(b"etcd"),
            size: 4,
            create_parents: true,
        }),
        data: b"etcd".to_vec(),
    }];
    let sysctls: HashMap<String, String> = [("net.ipv4.ip_forward".into(), "1".into())].into();
    vec![
        (
            "GetFacts",
            c.get_facts(pb::GetFactsRequest {}).await.map(drop),
        ),
        (
            "WriteFile",
            c.write_file(pb::WriteFileRequest {
                path: "/etc/haop/new.conf".into(),
                content: b"x".to_vec(),
                create_parents: true,
                ..Default::default()
            })
            .await
            .map(drop),
        ),
        (
            "ReadFile",
            c.read_file(pb::ReadFileRequest {
                path: "/etc/modules-load.d/haop.conf".into(),
                max_bytes: 0,
                certificates_only: false,
            })
            .await
            .map(drop),
        ),
        (
            "RemoveFile",
            c.remove_file(pb::RemoveFileRequest {
                path: "/etc/modules-load.d/haop.conf".into(),
            })
            .await
            .map(drop),
        ),
        (
            "Stat",
            c.stat(pb::StatRequest {
                path: "/etc/modules-load.d/haop.conf".into(),
                ..Default::default()
            })
            .await
            .map(drop),
        ),
        (
            "UploadFile",
            c.upload_file(tokio_stream::iter(upload)).await.map(drop),
        ),
        (
            "EnsureUnit",
            c.ensure_unit(pb::EnsureUnitRequest {
                name: "other.service".into(),
                content: "[Service]\nExecStart=/bin/sleep 300\n".into(),
                data_dirs: vec![],
            })
            .await
            .map(drop),
        ),
        (
            "UnitAction",
            c.unit_action(pb::UnitActionRequest {
                name: "etcd.service".into(),
                action: pb::Action::Enable as i32,
            })
            .await
            .map(drop),
        ),
        (
            "UnitStatus",
            c.unit_status(pb::UnitStatusRequest {
                name: "etcd.service".into(),
            })
            .await
            .map(drop),
        ),
        (
            "LoadModules",
            c.load_modules(pb::LoadModulesRequest {
                name: "k8s".into(),
                modules: vec!["overlay".into()],
            })
            .await
            .map(drop),
        ),
        (
            "ApplySysctl",
            c.apply_sysctl(pb::ApplySysctlRequest {
                name: "k8s".into(),
                values: sysctls,
            })
            .await
            .map(drop),
        ),
        (
            "DisableSwap",
            c.disable_swap(pb::DisableSwapRequest {}).await.map(drop),
        ),
        (
            "WipeDataDir",
            c.wipe_data_dir(pb::WipeDataDirRequest {
                unit: "etcd.service".into(),
                path: DECLARED.into(),
                delete: false,
            })
            .await
            .map(drop),
        ),
        (
            "Exec",
            c.exec(pb::ExecRequest {
                program: "echo".into(),
                args: vec!["hi".into()],
                ..Default::default()
            })
            .await
            .map(drop),
        ),
        (
            "CreateCsr",
            c.create_csr(pb::CreateCsrRequest {
                key_path: "/etc/kubernetes/pki/etcd/peer.key".into(),
                common_name: "etcd1".into(),
                ..Default::default()
            })
            .await
            .map(drop),
        ),
        (
            "InstallCertificate",
            c.install_certificate(pb::InstallCertificateRequest {
                cert_path: "/etc/kubernetes/pki/etcd/peer.crt".into(),
                cert_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
                key_path: "/etc/kubernetes/pki/etcd/peer.key".into(),
                ..Default::default()
            })
            .await
            .map(drop),
        ),
        (
            "ListWipedDataDirs",
            c.list_wiped_data_dirs(pb::WipedDataDirsRequest {
                unit: "etcd.service".into(),
            })
            .await
            .map(drop),
        ),
        (
            "PruneWipedDataDirs",
            c.prune_wiped_data_dirs(pb::PruneWipedDataDirsRequest {
                unit: "etcd.service".into(),
                keep: 1,
                min_age_seconds: 3600,
            })
            .await
            .map(drop),
        ),
        ("WhoAmI", c.who_am_i(pb::WhoAmIRequest {}).await.map(drop)),
        (
            "DownloadFile",
            c.download_file(pb::DownloadFileRequest {
                path: "/var/lib/haop/snapshot-copies/c/x.snap".into(),
            })
            .await
            .map(drop),
        ),
        (
            "InstallRevocations",
            c.install_revocations(pb::InstallRevocationsRequest {
                crl_pem: "-----BEGIN X509 CRL-----\nMIIB\n-----END X509 CRL-----\n".into(),
            })
            .await
            .map(drop),
        ),
        (
            "InstallTrustBundle",
            c.install_trust_bundle(pb::InstallTrustBundleRequest {
                bundle_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
                endorsements_pem: String::new(),
            })
            .await
            .map(drop),
        ),
        (
            "CreateServingCsr",
            c.create_serving_csr(pb::CreateServingCsrRequest {
                dns_names: vec!["etcd1".into()],
                ip_addresses: vec!["127.0.0.1".into()],
                ..Default::default()
            })
            .await
            .map(drop),
        ),
        (
            "InstallServingCertificate",
            c.install_serving_certificate(pb::InstallServingCertificateRequest {
                cert_pem: "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n".into(),
            })
            .await
            .map(drop),
        ),
    ]
}

/// A snapshot of everything under the root: path, and content for files.
fn tree(root: &std::path::Path) -> Vec<(String, Option<Vec<u8>>)> {
    let mut out = Vec::new();
    let mut todo = vec![root.to_path_buf()];
    while let Some(dir) = todo.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            let content = meta.is_file().then(|| std::fs::read(&p).unwrap());
            if meta.is_dir() {
                todo.push(p.clone());
            }
            out.push((p.display().to_string(), content));
        }
    }
    out.sort();
    out
}

#[tokio::test]
async fn a_reader_may_call_only_what_status_and_certs_list_use_and_changes_nothing() {
    let a = TestAgent::start().await;
    let (mut reader, mut admin) = clients(&a).await;
    declare_data_dir(&mut admin).await;
    plant(&a, "/etc/modules-load.d/haop.conf", b"overlay\n");
    plant(&a, "/var/lib/haop/etcd-data/member/snap/db", b"data");
    let before = tree(a.root.path());
    let reads = [
        "GetFacts",
        "ReadFile",
        "Stat",
        "UnitStatus",
        "ListWipedDataDirs",
        "WhoAmI",
    ];
    let results = call_every_rpc(&mut reader).await;
    assert_eq!(results.len(), haop_agent::policy::Rpc::ALL.len());
    for (rpc, r) in results {
        if reads.contains(&rpc) {
            r.unwrap_or_else(|e| panic!("reader {rpc}: {e:?}"));
        } else {
            let err = r.expect_err(rpc);
            assert_eq!(
                err.code(),
                Code::PermissionDenied,
                "{rpc}: {}",
                err.message()
            );
            assert!(
                err.message().contains("haop:admin"),
                "{rpc}: {}",
                err.message()
            );
        }
    }
    assert_eq!(tree(a.root.path()), before, "a reader changed the host");
    assert_eq!(
        std::fs::read_to_string(a.kernel_dir.path().join("proc/sys/net/ipv4/ip_forward")).unwrap(),
        "0\n"
    );

    // The same requests with an admin certificate are all allowed.
    for (rpc, r) in call_every_rpc(&mut admin).await {
        match r {
            Ok(()) => {}
            // Refused by the host's state or by validation, never by the policy.
            Err(e) => assert!(
                matches!(e.code(), Code::InvalidArgument | Code::NotFound),
                "admin {rpc}: {e:?}"
            ),
        }
    }
    a.shutdown().await;
}

#[tokio::test]
async fn an_admin_cannot_change_the_agents_own_files_or_etcds_data() {
    let a = TestAgent::start().await;
    let (_, mut admin) = clients(&a).await;
    declare_data_dir(&mut admin).await;
    plant_secrets(&a);
    let before = tree(a.root.path());
    let write = |path: &str| pb::WriteFileRequest {
        path: path.into(),
        content: b"[exec]\nallow = [\"/bin/sh\"]\n".to_vec(),
        create_parents: true,
        ..Default::default()
    };
    for path in [
        "/etc/haop/agent.toml",
        "/etc/haop/innocent.conf",
        "/var/lib/haop-agent/pki/ca.crt",
        "/var/lib/etcd/member/snap/db",
        "/var/lib/haop/etcd-data/member/new",
        "/etc/kubernetes/member-link/snap/db",
        "/etc/kubernetes/pki/etcd/server.key",
        "/etc/kubernetes/admin.conf",
    ] {
        assert_refused(
            &format!("WriteFile {path}"),
            admin.write_file(write(path)).await,
        );
        // A private key may be removed (adoption takes away the CA key a hand-built cluster
        // copied around), never written.
        if path.ends_with(".key") {
            continue;
        }
        assert_refused(
            &format!("RemoveFile {path}"),
            admin
                .remove_file(pb::RemoveFileRequest { path: path.into() })
                .await,
        );
    }
    let config = b"managed_roots = [\"/root\"]\n";
    let upload = vec![pb::UploadChunk {
        header: Some(pb::UploadHeader {
            path: "/etc/haop/agent.toml".into(),
            mode: 0o600,
            sha256: haop_agent::files::sha256_hex(config),
            size: config.len() as u64,
            create_parents: true,
        }),
        data: config.to_vec(),
    }];
    assert_refused(
        "UploadFile agent.toml",
        admin.upload_file(tokio_stream::iter(upload)).await,
    );
    assert_refused(
        "CreateCsr over the agent's key",
        admin
            .create_csr(pb::CreateCsrRequest {
                key_path: "/var/lib/haop-agent/pki/agent.key".into(),
                common_name: "agent".into(),
                rotate: true,
                ..Default::default()
            })
            .await,
    );
    assert_refused(
        "InstallCertificate over the agent CA",
        admin
            .install_certificate(pb::InstallCertificateRequest {
                cert_path: "/etc/kubernetes/pki/etcd/server.crt".into(),
                cert_pem: a.ca.client("x", None).cert_pem,
                key_path: "/etc/kubernetes/pki/etcd/server.key".into(),
                ca_path: "/var/lib/haop-agent/pki/ca.crt".into(),
                ca_pem: common::TestCa::new("impostor").cert_pem,
            })
            .await,
    );
    // A data dir that holds the agent's own files can be neither declared nor wiped.
    for dir in ["/etc/haop", "/var/lib"] {
        assert_refused(
            &format!("EnsureUnit data_dirs {dir}"),
            admin
                .ensure_unit(pb::EnsureUnitRequest {
                    name: "grab.service".into(),
                    content: "[Service]\nExecStart=/bin/sleep 300\n".into(),
                    data_dirs: vec![dir.into()],
                })
                .await,
        );
        assert_refused(
            &format!("WipeDataDir {dir}"),
            admin
                .wipe_data_dir(pb::WipeDataDirRequest {
                    unit: "etcd.service".into(),
                    path: dir.into(),
                    delete: true,
                })
                .await,
        );
    }
    assert_eq!(
        tree(a.root.path()),
        before,
        "a refused request changed the host"
    );
    a.shutdown().await;
}

/// What the coordinator asks, by the role it uses: apply, recover, renew and restore with
/// haop's admin certificate (paths from coordinator/src: runbook, render, etcd_config,
/// restore), status and certs list with a reader's (status/collect.rs, status/kube.rs,
/// certs.rs).
#[tokio::test]
async fn what_the_coordinator_asks_is_still_allowed() {
    let a = TestAgent::start().await;
    let (mut reader, mut admin) = clients(&a).await;

    // apply: every file it writes, it reads back in full to plan.
    for path in [
        "/etc/hosts",
        "/etc/etcd.env",
        "/etc/etcd.bootstrap.env",
        "/etc/keepalived/keepalived.conf",
        "/etc/keepalived/check_apiserver.sh",
        "/etc/containerd/config.toml",
        "/etc/modules-load.d/haop.conf",
        "/etc/sysctl.d/haop.conf",
        "/etc/kubernetes/kubeadm-config.yaml",
        "/etc/kubernetes/cni.yaml",
        "/etc/kubernetes/cni.yaml.applied-sha256",
        "/etc/kubernetes/manifests/kube-apiserver.yaml",
    ] {
        let content = format!("content of {path}\n").into_bytes();
        admin
            .write_file(pb::WriteFileRequest {
                path: path.into(),
                content: content.clone(),
                create_parents: true,
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("WriteFile {path}: {e:?}"));
        assert_eq!(
            read(&mut admin, path, false).await.unwrap(),
            content,
            "{path}"
        );
        let st = admin
            .stat(pb::StatRequest {
                path: path.into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(st.sha256, haop_agent::files::sha256_hex(&content), "{path}");
    }
    // apply: units with their data dir; the certificates through a CSR, checked by reading the
    // certificate and stating the key.
    admin
        .ensure_unit(pb::EnsureUnitRequest {
            name: "etcd.service".into(),
            content: "[Service]\nExecStart=/bin/sleep 300\n".into(),
            data_dirs: vec!["/var/lib/etcd".into()],
        })
        .await
        .unwrap();
    let csr = admin
        .create_csr(pb::CreateCsrRequest {
            key_path: "/etc/kubernetes/pki/etcd/server.key".into(),
            common_name: "etcd1".into(),
            dns_names: vec!["etcd1".into()],
            ip_addresses: vec!["127.0.0.1".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let cert = a.ca.sign_csr(&csr.csr_pem);
    admin
        .install_certificate(pb::InstallCertificateRequest {
            cert_path: "/etc/kubernetes/pki/etcd/server.crt".into(),
            cert_pem: cert.clone(),
            key_path: "/etc/kubernetes/pki/etcd/server.key".into(),
            ca_path: "/etc/kubernetes/pki/etcd/ca.crt".into(),
            ca_pem: a.ca.cert_pem.clone(),
        })
        .await
        .unwrap();
    assert_eq!(
        read(&mut admin, "/etc/kubernetes/pki/etcd/server.crt", false)
            .await
            .unwrap(),
        cert.as_bytes()
    );
    let key = admin
        .stat(pb::StatRequest {
            path: "/etc/kubernetes/pki/etcd/server.key".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(key.exists && key.sha256.is_empty());
    // apply with Kubernetes: whether kubeadm has run.
    plant(&a, "/etc/kubernetes/admin.conf", b"apiVersion: v1\n");
    assert!(
        admin
            .stat(pb::StatRequest {
                path: "/etc/kubernetes/admin.conf".into(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .exists
    );
    // recover and restore: the data dir moved aside (the unit was never started), a snapshot
    // uploaded for etcdctl.
    plant(&a, "/var/lib/etcd/member/snap/db", b"data");
    let wiped = admin
        .wipe_data_dir(pb::WipeDataDirRequest {
            unit: "etcd.service".into(),
            path: "/var/lib/etcd".into(),
            delete: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(wiped.changed && wiped.moved_to.starts_with("/var/lib/etcd.wiped-"));
    let snapshot = b"a snapshot".to_vec();
    admin
        .upload_file(tokio_stream::iter(vec![pb::UploadChunk {
            header: Some(pb::UploadHeader {
                path: "/var/lib/haop/restore/snapshot.db".into(),
                mode: 0o600,
                sha256: haop_agent::files::sha256_hex(&snapshot),
                size: snapshot.len() as u64,
                create_parents: true,
            }),
            data: snapshot,
        }]))
        .await
        .unwrap();

    // status and certs list, with a reader: facts, units, whoami, the node-preparation files
    // and the cluster CA in full, every certificate (kubeconfigs' too) alone.
    reader.get_facts(pb::GetFactsRequest {}).await.unwrap();
    reader
        .unit_status(pb::UnitStatusRequest {
            name: "etcd.service".into(),
        })
        .await
        .unwrap();
    let who = reader
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(who.serving_cert_pem.contains("BEGIN CERTIFICATE"));
    plant(&a, "/etc/kubernetes/pki/ca.crt", a.ca.cert_pem.as_bytes());
    for path in [
        "/etc/modules-load.d/haop.conf",
        "/etc/sysctl.d/haop.conf",
        "/etc/kubernetes/pki/ca.crt",
    ] {
        assert_eq!(
            read(&mut reader, path, false).await.unwrap(),
            std::fs::read(a.real(path)).unwrap(),
            "{path}"
        );
    }
    plant(
        &a,
        "/etc/kubernetes/controller-manager.conf",
        format!(
            "users:\n- user:\n    client-certificate-data: {}\n",
            b64(&cert)
        )
        .as_bytes(),
    );
    for (path, certs) in [
        ("/etc/kubernetes/pki/etcd/server.crt", 1),
        ("/etc/kubernetes/pki/etcd/ca.crt", 1),
        ("/etc/kubernetes/controller-manager.conf", 1),
        ("/etc/kubernetes/admin.conf", 0),
    ] {
        let got = String::from_utf8(read(&mut reader, path, true).await.unwrap()).unwrap();
        assert_eq!(
            got.matches("BEGIN CERTIFICATE").count(),
            certs,
            "{path}: {got}"
        );
    }
    a.shutdown().await;
}

/// Collects a DownloadFile stream: the bytes, and the last message's sha256 and size.
async fn download(c: &mut Client, path: &str) -> Result<(Vec<u8>, String, u64), Status> {
    let mut stream = c
        .download_file(pb::DownloadFileRequest { path: path.into() })
        .await?
        .into_inner();
    let mut data = Vec::new();
    while let Some(chunk) = stream.message().await? {
        if chunk.last {
            return Ok((data, chunk.sha256, chunk.size));
        }
        data.extend_from_slice(&chunk.data);
    }
    panic!("the stream of {path} ended without its last message");
}

#[tokio::test]
async fn only_an_admin_streams_back_and_only_encrypted_snapshot_copies() {
    let a = TestAgent::start().await;
    let (mut reader, mut admin) = clients(&a).await;
    declare_data_dir(&mut admin).await;
    plant_secrets(&a);
    // An encrypted copy: the format's magic, then ciphertext (2.5 MiB: several messages).
    let mut copy = haop_proto::ENCRYPTED_SNAPSHOT_MAGIC.to_vec();
    copy.extend((0..(5 << 19)).map(|i: u32| (i % 253) as u8));
    let path = "/var/lib/haop/snapshot-copies/c/20260101T000000.000Z-etcd1.snap";
    plant(&a, path, &copy);
    let (data, sha, size) = download(&mut admin, path).await.unwrap();
    assert_eq!(data, copy);
    assert_eq!(sha, haop_agent::files::sha256_hex(&copy));
    assert_eq!(size, copy.len() as u64);
    // Not to a reader, and never as ReadFile content or a digest, even to an admin.
    assert_refused("reader DownloadFile", download(&mut reader, path).await);
    assert_refused(
        "admin ReadFile of a copy",
        read(&mut admin, path, false).await,
    );
    let stat = admin
        .stat(pb::StatRequest {
            path: path.into(),
            tree: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert!(stat.exists && stat.sha256.is_empty(), "{stat:?}");
    // A plaintext file in the copies' directory is not streamed back.
    let plain = "/var/lib/haop/snapshot-copies/c/plain.snap";
    plant(&a, plain, format!("bolt db {}", marker(99)).as_bytes());
    let err = download(&mut admin, plain).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    assert!(err.message().contains("encrypted"), "{}", err.message());
    assert_refused("plaintext copy", download(&mut admin, plain).await);
    // Nor anything outside it, whatever it begins with: etcd's data, a snapshot for restore,
    // configuration, a key.
    for p in [
        "/var/lib/etcd/member/snap/db",
        "/var/lib/haop/restore/snapshot.db",
        "/etc/containerd/config.toml",
        "/etc/kubernetes/pki/etcd/server.key",
    ] {
        assert_refused(&format!("DownloadFile {p}"), download(&mut admin, p).await);
    }
    plant(&a, "/etc/haop/looks-encrypted.conf", &copy);
    assert_refused(
        "DownloadFile of config that begins with the magic",
        download(&mut admin, "/etc/haop/looks-encrypted.conf").await,
    );
    a.shutdown().await;
}
