//! haop's kubeadm documents against the strict field list the kubeadm stand-in checks
//! (`tests/fixtures/kubeadm-fields.txt`, transcribed from upstream's types.go json tags), through
//! the stand-in's own `kubeadm config validate`, for kubeadm 1.30 (v1beta3) and 1.33 (v1beta4);
//! and the list's teeth: an unknown field, a misplaced one, the other version's form and an
//! apiVersion the kubeadm release does not read are all refused, naming the field.

use std::path::Path;
use std::process::Command;

use haop_coordinator::inventory::{Host, Inventory, Role, Version, Vip};
use haop_coordinator::render::kubeadm::{
    api_version_for, join_configuration, kubeadm_config, upload_certs_config, JoinCommand, JoinNode,
};

fn fixtures() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

fn inventory() -> Inventory {
    let host = |name: &str, addr: &str, role| {
        let mut h = Host::new(name.parse().unwrap(), addr.parse().unwrap(), vec![role]);
        h.prefix_len = Some(24);
        h
    };
    let hosts = vec![
        host("etcd1", "10.0.0.1", Role::Etcd),
        host("master1", "10.0.0.11", Role::Master),
        host("master2", "10.0.0.12", Role::Master),
        host("worker1", "10.0.0.21", Role::Worker),
    ];
    let mut inv = Inventory::new("prod".parse().unwrap(), hosts);
    inv.vip = Some(Vip::new("10.0.0.100".parse().unwrap()));
    inv.kubernetes.service_subnet = Some("10.96.0.0/12".parse().unwrap());
    inv
}

/// `kubeadm config validate --config` of the stand-in posing as kubeadm `version`: Ok, or
/// its error.
fn validate(version: &str, text: &str) -> Result<(), String> {
    let etc = tempfile::tempdir().unwrap();
    std::fs::copy(
        fixtures().join("kubeadm-fields.txt"),
        etc.path().join("kubeadm-fields.txt"),
    )
    .unwrap();
    std::fs::write(etc.path().join("kubeadm-version"), format!("v{version}\n")).unwrap();
    let file = etc.path().join("config.yaml");
    std::fs::write(&file, text).unwrap();
    let out = Command::new("python3")
        .arg(fixtures().join("kubeadm-standin"))
        .args(["config", "validate", "--config"])
        .arg(&file)
        .env("HAOP_STANDIN_ETC", etc.path())
        .env("HAOP_STANDIN_DIR", etc.path().join("records"))
        .output()
        .expect("python3 runs the stand-in");
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).to_string())
    }
}

fn join_command(control_plane: bool) -> JoinCommand {
    JoinCommand {
        endpoint: "10.0.0.100:6443".into(),
        token: "abcdef.0123456789abcdef".into(),
        ca_cert_hashes: vec![format!("sha256:{}", "a".repeat(64))],
        control_plane,
        certificate_key: control_plane.then(|| "b".repeat(64)),
    }
}

/// Every document haop renders for kubeadm `version`.
fn rendered(version: &str) -> Vec<(String, String)> {
    let mut inv = inventory();
    inv.kubernetes.version = Some(version.parse().unwrap());
    let kubeadm: Version = version.parse().unwrap();
    let m = inv.masters();
    let api = api_version_for(kubeadm).unwrap();
    let cp = JoinNode {
        name: "master2".into(),
        node_ip: "10.0.0.12".into(),
        control_plane: Some(("10.0.0.12".into(), 6443)),
    };
    let worker = JoinNode {
        name: "worker1".into(),
        node_ip: "10.0.0.21".into(),
        control_plane: None,
    };
    vec![
        (
            "kubeadm-config.yaml".into(),
            kubeadm_config(&inv, m[0], kubeadm).unwrap().content,
        ),
        (
            "kubeadm-upload-certs.yaml".into(),
            upload_certs_config(&inv, m[0], kubeadm).unwrap().content,
        ),
        (
            "join (control plane)".into(),
            join_configuration(api, &cp, &join_command(true)),
        ),
        (
            "join (worker)".into(),
            join_configuration(api, &worker, &join_command(false)),
        ),
    ]
}

#[test]
fn rendered_documents_pass_the_strict_field_list_for_130_and_133() {
    for version in ["1.30.2", "1.33.1"] {
        for (what, text) in rendered(version) {
            validate(version, &text)
                .unwrap_or_else(|e| panic!("kubeadm {version}, {what}: {e}\n{text}"));
        }
    }
}

#[test]
fn unknown_misplaced_and_wrong_version_fields_are_refused() {
    let (_, config) = rendered("1.30.2").remove(0);
    // The seed's top-level apiServerCertSANs (a v1alpha field).
    let seed = config.replacen(
        "kind: ClusterConfiguration\n",
        "kind: ClusterConfiguration\napiServerCertSANs:\n  - \"10.0.0.100\"\n",
        1,
    );
    let e = validate("1.30.2", &seed).unwrap_err();
    assert!(e.contains("unknown field \"apiServerCertSANs\""), "{e}");
    // A real field in the wrong place: podSubnet belongs under networking.
    let misplaced = config.replacen(
        "kind: ClusterConfiguration\n",
        "kind: ClusterConfiguration\npodSubnet: \"10.244.0.0/16\"\n",
        1,
    );
    let e = validate("1.30.2", &misplaced).unwrap_err();
    assert!(e.contains("unknown field \"podSubnet\""), "{e}");
    // v1beta3's map form of kubeletExtraArgs relabelled v1beta4: the list is expected.
    let relabelled = config.replace("kubeadm.k8s.io/v1beta3", "kubeadm.k8s.io/v1beta4");
    let e = validate("1.33.1", &relabelled).unwrap_err();
    assert!(
        e.contains("unknown field \"nodeRegistration.kubeletExtraArgs\""),
        "{e}"
    );
    // v1beta4 is unknown to kubeadm 1.30; v1beta3 is gone in 1.36.
    let (_, b4) = rendered("1.33.1").remove(0);
    let e = validate("1.30.2", &b4).unwrap_err();
    assert!(e.contains("kubeadm.k8s.io/v1beta4"), "{e}");
    let e = validate("1.36.0", &config).unwrap_err();
    assert!(e.contains("no longer supported"), "{e}");
    // A JoinConfiguration field under the wrong parent.
    let join = join_configuration(
        "kubeadm.k8s.io/v1beta4",
        &JoinNode {
            name: "w".into(),
            node_ip: "10.0.0.21".into(),
            control_plane: None,
        },
        &join_command(false),
    )
    .replace(
        "  bootstrapToken:\n",
        "  bootstrapToken:\n    certificateKey: \"x\"\n",
    );
    let e = validate("1.33.1", &join).unwrap_err();
    assert!(
        e.contains("unknown field \"discovery.bootstrapToken.certificateKey\""),
        "{e}"
    );
}
