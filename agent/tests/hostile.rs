//! Hostile inputs through the real gRPC API (mTLS, admin certificate): each is refused with a
//! clear status and nothing is written. Path traversal, symlink escapes, huge files, oversized
//! messages, unit text that tries to smuggle a second unit, sysctl keys with `/` or `..`, keys
//! hidden in base64.

mod common;

use common::TestAgent;
use haop_proto::v1 as pb;
use tonic::Code;

fn nothing_under(dir: &std::path::Path) -> bool {
    !dir.exists() || std::fs::read_dir(dir).unwrap().next().is_none()
}

#[tokio::test]
async fn oversized_and_huge_inputs_are_refused() {
    let mut a = TestAgent::start().await;
    // A message larger than the agent decodes.
    let err = a
        .client
        .write_file(pb::WriteFileRequest {
            path: "/etc/haop/big".into(),
            content: vec![b'x'; 9 * 1024 * 1024],
            create_parents: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert!(
        matches!(err.code(), Code::ResourceExhausted | Code::OutOfRange),
        "{:?}: {}",
        err.code(),
        err.message()
    );
    assert!(!a.real("/etc/haop/big").exists());

    // A file larger than ReadFile returns is refused, not cut.
    std::fs::create_dir_all(a.real("/etc/haop")).unwrap();
    std::fs::write(a.real("/etc/haop/huge"), vec![b'y'; 5 * 1024 * 1024]).unwrap();
    let err = a
        .client
        .read_file(pb::ReadFileRequest {
            path: "/etc/haop/huge".into(),
            max_bytes: 0,
            certificates_only: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{}", err.message());
    assert!(
        err.message().contains("/etc/haop/huge"),
        "{}",
        err.message()
    );

    // An upload that sends more than its header announced stops, leaving nothing.
    let msgs = vec![
        pb::UploadChunk {
            header: Some(pb::UploadHeader {
                path: "/usr/local/bin/liar".into(),
                mode: 0o755,
                sha256: "0".repeat(64),
                size: 10,
                create_parents: true,
            }),
            data: vec![1; 8],
        },
        pb::UploadChunk {
            header: None,
            data: vec![1; 8],
        },
    ];
    let err = a
        .client
        .upload_file(tokio_stream::iter(msgs))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{}", err.message());
    assert!(nothing_under(&a.real("/usr/local/bin")));

    // A second header in the stream is refused.
    let msgs = vec![
        pb::UploadChunk {
            header: Some(pb::UploadHeader {
                path: "/usr/local/bin/two".into(),
                mode: 0o755,
                sha256: "0".repeat(64),
                size: 0,
                create_parents: true,
            }),
            data: vec![],
        },
        pb::UploadChunk {
            header: Some(pb::UploadHeader {
                path: "/etc/haop/evil".into(),
                ..Default::default()
            }),
            data: vec![],
        },
    ];
    let err = a
        .client
        .upload_file(tokio_stream::iter(msgs))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(!a.real("/etc/haop/evil").exists());
    a.shutdown().await;
}

#[tokio::test]
async fn smuggled_units_and_traversing_names_are_refused() {
    let mut a = TestAgent::start().await;
    let units = a.real("/etc/systemd/system");
    for (name, content) in [
        // A second unit's header inside the text cannot name another unit, but a NUL, a name
        // with a path, or a "name\n[Service]" trick must be refused outright.
        (
            "etcd.service",
            "[Service]\nExecStart=/bin/true\n\0[Unit]\nDescription=other\n",
        ),
        (
            "../../etc/cron.d/evil.service",
            "[Service]\nExecStart=/bin/true\n",
        ),
        ("evil.service/x.service", "[Service]\nExecStart=/bin/true\n"),
        ("ok.service", "[Service]\nExecStart=bin/sh -c id\n"),
        ("ok.service", "ExecStart=/bin/true\n[Service]\n"),
    ] {
        let err = a
            .client
            .ensure_unit(pb::EnsureUnitRequest {
                name: name.into(),
                content: content.into(),
                data_dirs: vec![],
            })
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "{name:?}: {}",
            err.message()
        );
    }
    assert!(nothing_under(&units));
    // A data dir outside the managed roots cannot be declared (and so never wiped).
    let err = a
        .client
        .ensure_unit(pb::EnsureUnitRequest {
            name: "ok.service".into(),
            content: "[Service]\nExecStart=/bin/true\n".into(),
            data_dirs: vec!["/home".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    assert!(nothing_under(&units));

    for key in [
        "net/ipv4/ip_forward",
        "net.ipv4..ip_forward",
        "../../../etc/passwd",
        "kernel.core_pattern\n",
    ] {
        let mut values = std::collections::HashMap::new();
        values.insert(key.to_string(), "1".to_string());
        let err = a
            .client
            .apply_sysctl(pb::ApplySysctlRequest {
                name: "k8s".into(),
                values,
            })
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Code::InvalidArgument,
            "{key:?}: {}",
            err.message()
        );
    }
    for name in ["../k8s", "a/b"] {
        let err = a
            .client
            .load_modules(pb::LoadModulesRequest {
                name: name.into(),
                modules: vec!["overlay".into()],
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{name:?}");
    }
    let err = a
        .client
        .load_modules(pb::LoadModulesRequest {
            name: "k8s".into(),
            modules: vec!["-r".into()],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert!(nothing_under(&a.real("/etc/sysctl.d")));
    assert!(nothing_under(&a.real("/etc/modules-load.d")));
    a.shutdown().await;
}

/// kubeadm's admin.conf holds the cluster-admin key as base64 (`client-key-data`), where no
/// PEM marker shows. The policy refuses a kubeconfig's content by its path, but answers its
/// certificates alone when asked for certificates only; the content check behind it refuses the
/// same text anywhere else, and WriteFile refuses a key sent that way.
#[tokio::test]
async fn keys_in_base64_never_leave_the_host() {
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let ca = common::TestCa::new("kubernetes");
    let admin = ca.client("kubernetes-admin", Some("system:masters"));
    let kubeconfig = format!(
        "apiVersion: v1\nclusters:\n- cluster:\n    certificate-authority-data: {}\n    \
         server: https://10.0.0.10:6443\n  name: kubernetes\nkind: Config\nusers:\n- name: \
         kubernetes-admin\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n",
        b64(&ca.cert_pem),
        b64(&admin.cert_pem),
        b64(&admin.key_pem),
    );
    assert!(!kubeconfig.contains("PRIVATE KEY"));
    let mut a = TestAgent::start().await;
    std::fs::create_dir_all(a.real("/etc/kubernetes")).unwrap();
    std::fs::write(a.real("/etc/kubernetes/admin.conf"), &kubeconfig).unwrap();
    let err = a
        .client
        .read_file(pb::ReadFileRequest {
            path: "/etc/kubernetes/admin.conf".into(),
            max_bytes: 0,
            certificates_only: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    assert!(
        err.message().contains("kubeconfig") && err.message().contains("certificates_only"),
        "{}",
        err.message()
    );
    // Behind the policy, the content check finds the key in the same text under any name.
    std::fs::create_dir_all(a.real("/etc/haop")).unwrap();
    std::fs::write(a.real("/etc/haop/copy.yaml"), &kubeconfig).unwrap();
    let err = a
        .client
        .read_file(pb::ReadFileRequest {
            path: "/etc/haop/copy.yaml".into(),
            max_bytes: 0,
            certificates_only: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    assert_eq!(
        err.message(),
        "/etc/haop/copy.yaml holds a private key; private keys never leave their host"
    );

    // Its certificates can be read all the same, and only they come.
    let r = a
        .client
        .read_file(pb::ReadFileRequest {
            path: "/etc/kubernetes/admin.conf".into(),
            max_bytes: 0,
            certificates_only: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        String::from_utf8(r.content).unwrap(),
        format!(
            "{}\n{}\n",
            ca.cert_pem.trim_end(),
            admin.cert_pem.trim_end()
        )
    );

    let err = a
        .client
        .write_file(pb::WriteFileRequest {
            path: "/etc/haop/stolen.yaml".into(),
            content: kubeconfig.clone().into_bytes(),
            mode: 0o600,
            create_parents: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(
        err.message().contains("private keys never travel"),
        "{}",
        err.message()
    );
    assert!(!a.real("/etc/haop/stolen.yaml").exists());

    // A kubeconfig that names its key file holds no key, yet its content is refused all the
    // same: the policy judges by what a file is, not by what it holds today.
    let by_file = "users:\n- name: default-auth\n  user:\n    client-certificate: \
                   /var/lib/kubelet/pki/kubelet-client-current.pem\n    client-key: \
                   /var/lib/kubelet/pki/kubelet-client-current.pem\n";
    std::fs::write(a.real("/etc/kubernetes/kubelet.conf"), by_file).unwrap();
    let read = |certificates_only| pb::ReadFileRequest {
        path: "/etc/kubernetes/kubelet.conf".into(),
        max_bytes: 0,
        certificates_only,
    };
    let err = a.client.read_file(read(false)).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    let r = a.client.read_file(read(true)).await.unwrap().into_inner();
    assert!(r.content.is_empty());
    a.shutdown().await;
}
