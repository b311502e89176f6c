//! The kubeadm phases of `haop apply` on a lab (3 etcd, 2 masters, 1 worker), through the real
//! `haop` binary, against STAND-INS: Kubernetes binaries cannot be installed on the test
//! machine, so `tests/fixtures/kubeadm-standin` and `tests/fixtures/kubectl-standin` (POSIX sh
//! scripts) are uploaded to `/usr/local/bin/kubeadm` and `/usr/local/bin/kubectl` on the lab
//! hosts. They record their arguments in `/var/lib/haop-standin/*.args` inside each host's
//! root, print kubeadm's real `init` output format, and create `admin.conf` / `kubelet.conf`
//! as kubeadm does, so haop's guards see what they would see on a real host.
//!
//! Checked: init once on the first master with the generated config (external etcd endpoints,
//! the VIP as controlPlaneEndpoint); master2 joins as a control-plane node with the token and
//! certificate key init printed, worker1 as a worker with the token and CA hash; the CNI
//! manifest uploaded and applied once; a second apply runs no kubeadm or kubectl command and
//! reports 0 changed, and `haop plan --exit-code` finds nothing to do; with the join info gone from the state dir, a new worker gets a fresh
//! token from the first master (`kubeadm token create --print-join-command`); `haop etcd add`
//! and `remove` bring the masters' etcd endpoints along (kubeadm-config.yaml, the kubeadm-config
//! ConfigMap through `kubeadm init phase upload-config`, each kube-apiserver manifest) and the
//! inventory file.

mod common;

use common::{haop, require_root, text};

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use haop_coordinator::inventory::Inventory;
use haop_coordinator::lab::{LabGuard, LabSpec};
use haop_coordinator::render::kubeadm::parse_kubeadm_init_output;
use haop_proto::v1 as pb;

fn fixture(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Uploads a stand-in to `path` on the host behind `endpoint` with the agent's UploadFile.
async fn install(state: &Path, endpoint: &str, path: &str, data: &[u8]) {
    let trust = haop_coordinator::trust::Trust::load(state).unwrap();
    let mut c = haop_coordinator::agent::connect(&trust, endpoint, Duration::from_secs(5))
        .await
        .unwrap();
    let sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(data));
    let msgs = vec![
        pb::UploadChunk {
            header: Some(pb::UploadHeader {
                path: path.into(),
                mode: 0o755,
                sha256: sha,
                size: data.len() as u64,
                create_parents: true,
            }),
            data: Vec::new(),
        },
        pb::UploadChunk {
            header: None,
            data: data.to_vec(),
        },
    ];
    c.upload_file(tokio_stream::iter(msgs)).await.unwrap();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubeadm_phases_against_standins() {
    if !require_root() {
        return;
    }
    let state = tempfile::tempdir().unwrap();
    let st = state.path();
    let name = format!("t{}-ka", std::process::id() % 100_000);
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
    // etcd4 waits outside the inventory until the membership part at the end.
    let mut inventory = with_etcd4.clone();
    inventory.hosts.retain(|h| h.name.as_str() != "etcd4");
    let inv_path = st.join("kubeadm-inventory.yaml");
    std::fs::write(&inv_path, inventory.to_yaml().unwrap()).unwrap();
    let inv = inv_path.display().to_string();

    let kubeadm = fixture("kubeadm-standin");
    let kubectl = fixture("kubectl-standin");
    for h in lab.hosts().iter().filter(|h| !h.name.starts_with("etcd")) {
        install(st, &h.endpoint, "/usr/local/bin/kubeadm", &kubeadm).await;
        if h.name == "master1" {
            install(st, &h.endpoint, "/usr/local/bin/kubectl", &kubectl).await;
        }
    }
    let root = |n: &str| lab.host(n).unwrap().root_dir.clone();
    let (m1, m2, w1) = (root("master1"), root("master2"), root("worker1"));

    apply(st, &inv);

    // init exactly once on the first master, with the generated config.
    assert_eq!(
        record(&m1, "kubeadm.args"),
        ["init --config /etc/kubernetes/kubeadm-config.yaml --upload-certs"]
    );
    assert!(
        record(&m1, "kubeadm.queries").contains(&"version -o short".to_string()),
        "the kubeadm version is asked on the host"
    );
    let config_path = m1.join("etc/kubernetes/kubeadm-config.yaml");
    let config = std::fs::read_to_string(&config_path).unwrap();
    let mode = std::fs::metadata(&config_path)
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
    assert!(
        config.contains("apiVersion: kubeadm.k8s.io/v1beta3"),
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

    // What init printed (the stand-in keeps a copy): its token and certificate key.
    let printed =
        std::fs::read_to_string(m1.join("var/lib/haop-standin/kubeadm-init.out")).unwrap();
    let info = parse_kubeadm_init_output(&printed).unwrap();
    let cp = info.control_plane.unwrap();
    let key = cp.certificate_key.clone().unwrap();
    let hash = &info.worker.ca_cert_hashes[0];
    let join_file = st.join(format!("secrets/{}.join.json", inventory.cluster.as_str()));
    let mode = std::fs::metadata(&join_file).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // master2 joined as a control-plane node, worker1 as a worker.
    let m2_args = record(&m2, "kubeadm.args");
    assert_eq!(m2_args.len(), 1, "{m2_args:?}");
    let j = &m2_args[0];
    assert!(
        j.starts_with(&format!("join {endpoint} --token {} ", cp.token)),
        "{j}"
    );
    assert!(
        j.contains(&format!("--discovery-token-ca-cert-hash {hash}")),
        "{j}"
    );
    assert!(
        j.contains(&format!("--control-plane --certificate-key {key}")),
        "{j}"
    );
    // Its API server listens where the inventory says (kubeadm's default port here).
    assert!(j.contains("--apiserver-bind-port 6443"), "{j}");
    let w1_args = record(&w1, "kubeadm.args");
    assert_eq!(w1_args.len(), 1, "{w1_args:?}");
    let j = &w1_args[0];
    assert!(
        j.starts_with(&format!(
            "join {endpoint} --token {} --discovery-token-ca-cert-hash {hash}",
            info.worker.token
        )),
        "{j}"
    );
    assert!(
        !j.contains("--control-plane")
            && !j.contains("--certificate-key")
            && !j.contains("--apiserver-bind-port"),
        "{j}"
    );
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
    apply(st, &inv);
    let m1_args = record(&m1, "kubeadm.args");
    assert_eq!(
        m1_args[1..],
        ["token create --print-join-command".to_string()],
        "{m1_args:?}"
    );
    let w1_args = record(&w1, "kubeadm.args");
    assert_eq!(w1_args.len(), 2, "{w1_args:?}");
    assert!(
        w1_args[1].starts_with(&format!("join {endpoint} --token ")),
        "{w1_args:?}"
    );
    assert!(
        !w1_args[1].contains(&info.worker.token),
        "a new token: {w1_args:?}"
    );
    assert!(w1_args[1].contains(hash.as_str()), "{w1_args:?}");
    assert!(join_file.exists());
    assert_eq!(record(&m2, "kubeadm.args"), m2_args);

    // The masters follow etcd's membership: kubeadm-config.yaml, the kubeadm-config ConfigMap
    // (`upload-config`) and each kube-apiserver manifest. init wrote master1's manifest; a
    // real control-plane join writes master2's from the ClusterConfiguration, which the
    // stand-in cannot download, so it gets master1's.
    let manifest_rel = "etc/kubernetes/manifests/kube-apiserver.yaml";
    std::fs::create_dir_all(m2.join("etc/kubernetes/manifests")).unwrap();
    std::fs::copy(m1.join(manifest_rel), m2.join(manifest_rel)).unwrap();
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
