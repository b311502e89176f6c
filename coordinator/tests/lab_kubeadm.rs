//! The kubeadm phases of `haop apply` on a lab (4 etcd, 2 masters, 1 worker), through the real
//! `haop` binary, against STAND-INS: Kubernetes binaries cannot be installed on the test
//! machine, so `tests/fixtures/kubeadm-standin` (Python, strict about every config field, see
//! its header) and `tests/fixtures/kubectl-standin` are put at `/usr/local/bin/kubeadm` and
//! `/usr/local/bin/kubectl` on the lab hosts, with the field list, the kubeadm version the test
//! chooses, and the URL of the cluster store ([`common::kube_store`]) that joins download from.
//!
//! Run twice: kubeadm 1.30 with no pinned version (v1beta3, the version taken from the host's
//! kubeadm) and 1.31 with `kubernetes.version` pinned (v1beta4, kubeadm-config.yaml a plain
//! file step). Checked: init once on the first master with the generated config and no
//! `--upload-certs`; the certificates uploaded with the configuration that names no etcd file,
//! so master2's control-plane join downloads the cluster CA but keeps its own etcd client key
//! and certificate (CN naming master2); each join through its own JoinConfiguration (node
//! name, node-ip, CRI socket, master2's advertise address), removed after the join; no
//! `stable-1` lookup; the CNI manifest applied once; a second apply runs no kubeadm or kubectl
//! command; with the join info gone, a new worker gets a fresh token; `haop etcd add` and
//! `remove` bring the masters' etcd endpoints along (kubeadm-config.yaml, the kubeadm-config
//! ConfigMap, each kube-apiserver manifest) and the inventory file.

mod common;

use common::{haop, require_root, text};

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use haop_coordinator::inventory::{Inventory, Version};
use haop_coordinator::lab::{LabGuard, LabSpec};
use haop_coordinator::render::kubeadm::parse_kubeadm_init_output;

fn fixture(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Puts the stand-ins, the field list, the kubeadm version and the store's URL into a host's
/// root.
fn install(root: &Path, kubeadm_version: &str, store: &str, kubectl: bool) {
    let put = |rel: &str, data: &[u8], mode: u32| {
        let p = root.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, data).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
    };
    put("usr/local/bin/kubeadm", &fixture("kubeadm-standin"), 0o755);
    if kubectl {
        put("usr/local/bin/kubectl", &fixture("kubectl-standin"), 0o755);
    }
    put(
        "etc/haop-standin/kubeadm-fields.txt",
        &fixture("kubeadm-fields.txt"),
        0o644,
    );
    put(
        "etc/haop-standin/kubeadm-version",
        format!("{kubeadm_version}\n").as_bytes(),
        0o644,
    );
    put("etc/haop-standin/api", store.as_bytes(), 0o644);
}

/// The lines of a stand-in's record on a host (empty when it never ran).
fn record(root: &Path, file: &str) -> Vec<String> {
    std::fs::read_to_string(root.join("var/lib/haop-standin").join(file))
        .map(|t| t.lines().map(str::to_string).collect())
        .unwrap_or_default()
}

fn apply(state: &Path, inv: &str) -> String {
    let out = haop(state, &["apply", "-f", inv]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "apply failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The certificate at `rel` in `root`: its CN and the sha256 of the key next to it.
fn own_cert(root: &Path) -> (String, Vec<u8>) {
    let pem =
        std::fs::read_to_string(root.join("etc/kubernetes/pki/apiserver-etcd-client.crt")).unwrap();
    let cn = haop_coordinator::pki::inspect(&pem).unwrap()[0]
        .common_name
        .clone()
        .unwrap();
    let key = std::fs::read(root.join("etc/kubernetes/pki/apiserver-etcd-client.key")).unwrap();
    (cn, key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubeadm_130_unpinned_v1beta3() {
    kubeadm_phases("v1.30.2", None, "ka").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubeadm_131_pinned_v1beta4() {
    kubeadm_phases("v1.31.4", Some("1.31.4"), "kb").await;
}

async fn kubeadm_phases(kubeadm_version: &str, pinned: Option<&str>, tag: &str) {
    if !require_root() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let st = state.path();
    let name = format!("t{}-{tag}", std::process::id() % 100_000);
    let spec = LabSpec {
        etcd: 4,
        masters: 2,
        workers: 1,
    };
    let lab = LabGuard::up(st, &name, spec).await.expect("lab up");

    // The lab's inventory with Kubernetes on and a CNI manifest.
    let manifest = st.join("cni.yaml");
    std::fs::write(&manifest, "# stand-in CNI manifest\nkind: DaemonSet\n").unwrap();
    let (mut with_etcd4, _) = Inventory::load(&lab.inventory_path()).unwrap();
    with_etcd4.kubernetes.enabled = true;
    with_etcd4.kubernetes.cni_manifest = Some(manifest.clone());
    with_etcd4.kubernetes.version = pinned.map(|v| v.parse::<Version>().unwrap());
    // etcd4 waits outside the inventory until the membership part at the end.
    let mut inventory = with_etcd4.clone();
    inventory.hosts.retain(|h| h.name.as_str() != "etcd4");
    let inv_path = st.join("kubeadm-inventory.yaml");
    std::fs::write(&inv_path, inventory.to_yaml().unwrap()).unwrap();
    let inv = inv_path.display().to_string();

    let store = common::kube_store::KubeStore::start(lab.record().gateway.into()).await;
    for h in lab.hosts().iter().filter(|h| !h.name.starts_with("etcd")) {
        install(
            &h.root_dir,
            kubeadm_version,
            &store.url,
            h.name == "master1",
        );
    }
    let root = |n: &str| lab.host(n).unwrap().root_dir.clone();
    let (m1, m2, w1) = (root("master1"), root("master2"), root("worker1"));

    apply(st, &inv);

    // init exactly once on the first master, with the generated config.
    // init without --upload-certs, then the certificates uploaded with the configuration that
    // names no etcd file (for master2's control-plane join).
    assert_eq!(
        record(&m1, "kubeadm.args"),
        [
            "init --config /etc/kubernetes/kubeadm-config.yaml",
            "token create --print-join-command",
            "init phase upload-certs --upload-certs --config /etc/kubernetes/kubeadm-upload-certs.yaml",
        ]
    );
    // Unpinned, the host's kubeadm says which rendering (and which version) is written.
    assert_eq!(
        record(&m1, "kubeadm.queries").contains(&"version -o short".to_string()),
        pinned.is_none(),
    );
    assert!(
        record(&m1, "network-lookups").is_empty(),
        "kubeadm looked up a version on the network: {:?}",
        record(&m1, "network-lookups")
    );
    let config_path = m1.join("etc/kubernetes/kubeadm-config.yaml");
    let config = std::fs::read_to_string(&config_path).unwrap();
    let mode = std::fs::metadata(&config_path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    let api_version = if pinned.is_some() {
        "kubeadm.k8s.io/v1beta4"
    } else {
        "kubeadm.k8s.io/v1beta3"
    };
    assert!(
        config.contains(&format!("apiVersion: {api_version}")),
        "{config}"
    );
    assert!(
        config.contains(&format!("kubernetesVersion: \"{kubeadm_version}\"")),
        "{config}"
    );
    let vip = inventory.vip.as_ref().unwrap().address.to_string();
    let endpoint = format!("{vip}:6443");
    assert!(
        config.contains(&format!("controlPlaneEndpoint: \"{endpoint}\"")),
        "{config}"
    );
    for url in inventory.etcd_client_urls() {
        assert!(config.contains(&format!("- \"{url}\"")), "{url}: {config}");
    }

    // What init printed (the stand-in keeps a copy), in kubeadm's template: no certificate
    // key (nothing was uploaded by init).
    let printed =
        std::fs::read_to_string(m1.join("var/lib/haop-standin/kubeadm-init.out")).unwrap();
    let info = parse_kubeadm_init_output(&printed).unwrap();
    assert_eq!(info.control_plane.unwrap().certificate_key, None);
    let hash = &info.worker.ca_cert_hashes[0];
    let join_file = st.join(format!("secrets/{}.join.json", inventory.cluster.as_str()));
    let mode = std::fs::metadata(&join_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // master2 joined as a control-plane node, worker1 as a worker, each with its own
    // JoinConfiguration (kept by the stand-in; gone from the hosts).
    let addr = |n: &str| inventory.host(n).unwrap().address.to_string();
    for (root, host, control_plane) in [(&m2, "master2", true), (&w1, "worker1", false)] {
        assert_eq!(
            record(root, "kubeadm.args"),
            ["join --config /etc/kubernetes/kubeadm-join.yaml"],
            "{host}"
        );
        assert!(
            !root.join("etc/kubernetes/kubeadm-join.yaml").exists(),
            "{host}"
        );
        let j =
            std::fs::read_to_string(root.join("var/lib/haop-standin/kubeadm-join.yaml")).unwrap();
        let doc: serde_yaml_ng::Value =
            serde_yaml_ng::from_str(j.split("---\n").nth(1).unwrap()).unwrap();
        assert_eq!(doc["apiVersion"].as_str(), Some(api_version), "{j}");
        let bt = &doc["discovery"]["bootstrapToken"];
        assert_eq!(
            bt["apiServerEndpoint"].as_str(),
            Some(endpoint.as_str()),
            "{j}"
        );
        assert_eq!(bt["caCertHashes"][0].as_str(), Some(hash.as_str()), "{j}");
        let reg = &doc["nodeRegistration"];
        assert_eq!(reg["name"].as_str(), Some(host), "{j}");
        assert_eq!(
            reg["criSocket"].as_str(),
            Some("unix:///run/containerd/containerd.sock"),
            "{j}"
        );
        let node_ip = if pinned.is_some() {
            reg["kubeletExtraArgs"][0]["value"].as_str()
        } else {
            reg["kubeletExtraArgs"]["node-ip"].as_str()
        };
        assert_eq!(node_ip, Some(addr(host).as_str()), "{j}");
        let cp = &doc["controlPlane"];
        if control_plane {
            assert_eq!(
                cp["localAPIEndpoint"]["advertiseAddress"].as_str(),
                Some(addr(host).as_str()),
                "{j}"
            );
            assert_eq!(
                cp["localAPIEndpoint"]["bindPort"].as_u64(),
                Some(6443),
                "{j}"
            );
            assert_eq!(cp["certificateKey"].as_str().map(str::len), Some(64), "{j}");
        } else {
            assert!(cp.is_null(), "{j}");
        }
    }
    // The control-plane join downloaded the cluster's shared CAs and keys, and none of the
    // external etcd files: master2 keeps the etcd client key it made, under a certificate
    // naming it.
    let downloaded = record(&m2, "downloaded-certs");
    assert!(
        downloaded.contains(&"/etc/kubernetes/pki/ca.key".to_string()),
        "{downloaded:?}"
    );
    assert!(
        downloaded.iter().all(|p| !p.contains("etcd")),
        "the join wrote etcd files: {downloaded:?}"
    );
    let (cn1, key1) = own_cert(&m1);
    let (cn2, key2) = own_cert(&m2);
    assert_eq!(
        (cn1.as_str(), cn2.as_str()),
        (
            "kube-apiserver-etcd-client-master1",
            "kube-apiserver-etcd-client-master2"
        )
    );
    assert_ne!(key1, key2, "master1's etcd client key reached master2");
    let secret = store.get("secrets/kubeadm-certs").unwrap();
    let secret: serde_json::Value = serde_json::from_str(&secret).unwrap();
    for name in [
        "external-etcd.key",
        "external-etcd.crt",
        "external-etcd-ca.crt",
    ] {
        assert_eq!(secret["data"][name], "", "{name} was uploaded");
    }
    for h in lab.hosts().iter().filter(|h| h.name.starts_with("etcd")) {
        assert!(record(&h.root_dir, "kubeadm.args").is_empty(), "{}", h.name);
    }

    // The CNI manifest, uploaded and applied once.
    assert_eq!(
        std::fs::read(m1.join("etc/kubernetes/cni.yaml")).unwrap(),
        std::fs::read(&manifest).unwrap()
    );
    assert_eq!(
        record(&m1, "kubectl.args"),
        ["--kubeconfig /etc/kubernetes/admin.conf apply -f /etc/kubernetes/cni.yaml"]
    );

    // A second apply runs no kubeadm or kubectl command and changes nothing.
    let before: Vec<Vec<String>> = [&m1, &m2, &w1]
        .iter()
        .flat_map(|r| [record(r, "kubeadm.args"), record(r, "kubectl.args")])
        .collect();
    let says = apply(st, &inv);
    assert!(says.contains("0 changed"), "{says}");
    let after: Vec<Vec<String>> = [&m1, &m2, &w1]
        .iter()
        .flat_map(|r| [record(r, "kubeadm.args"), record(r, "kubectl.args")])
        .collect();
    assert_eq!(before, after);
    let plan = haop(st, &["plan", "-f", &inv, "--exit-code"]);
    assert_eq!(
        plan.status.code(),
        Some(0),
        "{}{}",
        String::from_utf8_lossy(&plan.stdout),
        String::from_utf8_lossy(&plan.stderr)
    );

    // The join info gone and worker1 to join again (as a new worker would): a fresh token
    // from the first master, no certificate upload (a worker needs none).
    std::fs::remove_file(&join_file).unwrap();
    std::fs::remove_file(w1.join("etc/kubernetes/kubelet.conf")).unwrap();
    let m1_before = record(&m1, "kubeadm.args");
    let m2_args = record(&m2, "kubeadm.args");
    apply(st, &inv);
    let m1_args = record(&m1, "kubeadm.args");
    assert_eq!(
        m1_args[m1_before.len()..],
        ["token create --print-join-command".to_string()],
        "{m1_args:?}"
    );
    let w1_args = record(&w1, "kubeadm.args");
    assert_eq!(
        w1_args, ["join --config /etc/kubernetes/kubeadm-join.yaml"; 2],
        "{w1_args:?}"
    );
    let rejoin =
        std::fs::read_to_string(w1.join("var/lib/haop-standin/kubeadm-join.yaml")).unwrap();
    assert!(
        !rejoin.contains(&info.worker.token),
        "a new token: {rejoin}"
    );
    assert!(rejoin.contains(hash.as_str()), "{rejoin}");
    assert!(join_file.exists());
    assert_eq!(record(&m2, "kubeadm.args"), m2_args);

    // The masters follow etcd's membership: kubeadm-config.yaml, the kubeadm-config ConfigMap
    // (`upload-config`) and each kube-apiserver manifest (init wrote master1's, the
    // control-plane join master2's, from the ClusterConfiguration in the store).
    let manifest_rel = "etc/kubernetes/manifests/kube-apiserver.yaml";
    let urls = |names: &[&str]| -> String {
        names
            .iter()
            .map(|n| with_etcd4.etcd_client_url(with_etcd4.host(n).unwrap()))
            .collect::<Vec<_>>()
            .join(",")
    };
    let servers = |root: &Path| -> String {
        let m = std::fs::read_to_string(root.join(manifest_rel)).unwrap();
        m.lines()
            .find_map(|l| l.trim().strip_prefix("- --etcd-servers="))
            .unwrap_or_else(|| panic!("no --etcd-servers in {m}"))
            .to_string()
    };
    let configured = || -> String {
        let c = std::fs::read_to_string(&config_path).unwrap();
        c.lines()
            .filter_map(|l| l.trim().strip_prefix("- \""))
            .map(|u| u.trim_end_matches('"').to_string())
            .filter(|u| u.ends_with(":2379"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let three = urls(&["etcd1", "etcd2", "etcd3"]);
    assert_eq!((servers(&m1), servers(&m2)), (three.clone(), three.clone()));

    // The operator puts etcd4 in the inventory; `haop etcd add` joins it, then the masters
    // use it.
    std::fs::write(&inv_path, with_etcd4.to_yaml().unwrap()).unwrap();
    let added = haop(st, &["etcd", "add", "etcd4", "-f", &inv]);
    assert!(added.status.success(), "{}", text(&added));
    let four = urls(&["etcd1", "etcd2", "etcd3", "etcd4"]);
    assert_eq!((servers(&m1), servers(&m2)), (four.clone(), four.clone()));
    assert_eq!(configured(), four);
    let upload = "init phase upload-config kubeadm --config /etc/kubernetes/kubeadm-config.yaml";
    assert_eq!(record(&m1, "kubeadm.args").last().unwrap(), upload);
    assert_eq!(record(&m1, "kubeadm-config.endpoints"), [four.as_str()]);
    assert!(
        record(&m2, "kubeadm.args")
            .iter()
            .all(|a| !a.contains("upload-config")),
        "the ConfigMap is uploaded once, from the first master"
    );

    // `haop etcd remove etcd1`: the masters stop using it, the inventory file loses it.
    let removed = haop(st, &["etcd", "remove", "etcd1", "-f", &inv]);
    assert!(removed.status.success(), "{}", text(&removed));
    let later = urls(&["etcd2", "etcd3", "etcd4"]);
    assert_eq!((servers(&m1), servers(&m2)), (later.clone(), later.clone()));
    assert_eq!(configured(), later);
    assert_eq!(record(&m1, "kubeadm-config.endpoints"), [later.as_str()]);
    let (now, _) = Inventory::load(&inv_path).unwrap();
    assert!(
        now.host("etcd1").is_none(),
        "etcd1 is still in the inventory"
    );
    let mode = std::fs::metadata(m2.join(manifest_rel))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    // apply takes etcd1 out of /etc/hosts and runs no kubeadm command; then nothing is left.
    let kubeadm_before = record(&m1, "kubeadm.args");
    apply(st, &inv);
    assert_eq!(record(&m1, "kubeadm.args"), kubeadm_before);
    let plan = haop(st, &["plan", "-f", &inv, "--exit-code"]);
    assert_eq!(plan.status.code(), Some(0), "{}", text(&plan));

    lab.down().expect("lab down");
}
