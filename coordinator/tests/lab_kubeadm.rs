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
//!
//! containerd: `tests/fixtures/containerd-standin` runs as containerd.service on the masters
//! and the worker (STAND-IN: records each start and the config it read), started before apply
//! with a packaged config that disables the CRI plugin. Checked: apply writes haop's config and
//! restarts containerd, which then runs with `SystemdCgroup = true`; applies that leave the
//! config unchanged do not restart it.
//!
//! The endpoint sync, one master at a time: `tests/fixtures/kube-apiserver-standin` runs on
//! each master (certificates from a test CA that the test puts where kubeadm keeps the cluster
//! CA), exiting when its manifest changes as the kubelet would replace it. Checked: master2's
//! manifest is rewritten only after master1's new API server started; a ConfigMap upload that
//! failed (the kubeadm stand-in told to fail it) stops the sync before any manifest and is
//! retried by the next sync (`haop etcd add` of the same host again); master1's API server
//! answering 500 after its rewrite stops `haop etcd remove` with an error naming it, before
//! master2's manifest is touched and before the member goes, and the same command run again
//! finishes.

mod common;

use common::apiserver::{fixture, put};
use common::{haop, require_root, text};

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use std::time::{Duration, Instant};

use haop_coordinator::agent::HostAgent;
use haop_coordinator::inventory::{Inventory, Version};
use haop_coordinator::lab::{LabGuard, LabSpec};
use haop_coordinator::render::kubeadm::parse_kubeadm_init_output;
use haop_coordinator::render::nodeprep::containerd_config;
use haop_proto::v1 as pb;

/// A config as some containerd packages ship it: the CRI plugin off (kubeadm's preflight fails
/// on the CRI socket), runc on cgroupfs.
const PACKAGED_CONTAINERD_CONFIG: &str = "disabled_plugins = [\"cri\"]\n";

const CONTAINERD_UNIT: &str = "[Unit]\n\
    Description=STAND-IN for containerd (haop lab tests only)\n\
    \n\
    [Service]\n\
    ExecStart=/usr/local/bin/containerd\n";

const APISERVER_UNIT: &str = "kube-apiserver-standin.service";

fn apiserver_unit() -> String {
    "[Unit]\n\
     Description=STAND-IN for kube-apiserver and the kubelet's restarts of it (haop lab tests only)\n\
     \n\
     [Service]\n\
     ExecStart=/usr/bin/python3 /usr/local/bin/kube-apiserver-standin\n\
     Restart=always\n\
     RestartSec=200ms\n"
        .to_string()
}

/// Polls `what` every 100 ms until it holds, at most `within`.
async fn wait_until(within: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !f() {
        assert!(Instant::now() < deadline, "{what} within {within:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs `action` on `unit` of `host` through its agent.
async fn unit_action(st: &Path, lab: &LabGuard, host: &str, unit: &str, action: pb::Action) {
    let trust = haop_coordinator::trust::Trust::load(st).unwrap();
    let h = lab.host(host).unwrap();
    let c = HostAgent::connect(&trust, host, &h.endpoint, Duration::from_secs(5))
        .await
        .unwrap();
    c.unit_action(unit, action)
        .await
        .unwrap_or_else(|e| panic!("{action:?} {unit} on {host}: {e}"));
}

/// The containerd stand-in's starts on a host: (sha256 of the config read, its SystemdCgroup).
fn containerd_starts(root: &Path) -> Vec<(String, String)> {
    record(root, "containerd.starts")
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f[1].to_string(), f[2].to_string())
        })
        .collect()
}

fn sha256(data: &[u8]) -> String {
    hex::encode(<sha2::Sha256 as sha2::Digest>::digest(data))
}

/// The kube-apiserver stand-in's starts on a master: (unix time, --etcd-servers read).
fn apiserver_starts(root: &Path) -> Vec<(f64, String)> {
    record(root, "apiserver.starts")
        .iter()
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f[1].parse().unwrap(), f[2].to_string())
        })
        .collect()
}

fn modified_unix(p: &Path) -> f64 {
    std::fs::metadata(p)
        .unwrap()
        .modified()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
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
    put(
        "usr/local/bin/containerd",
        &fixture("containerd-standin"),
        0o755,
    );
    put(
        "etc/systemd/system/containerd.service",
        CONTAINERD_UNIT.as_bytes(),
        0o644,
    );
    put(
        "etc/containerd/config.toml",
        PACKAGED_CONTAINERD_CONFIG.as_bytes(),
        0o644,
    );
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
        from_seed: false,
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

    // The kube-apiserver stand-in's files on the masters: the test CA where kubeadm keeps the
    // cluster CA (init keeps one that exists), a server certificate for the master and the VIP.
    let ca = common::apiserver::StandinCa::create(st);
    let vip_addr = inventory.vip.as_ref().unwrap().address;
    for m in ["master1", "master2"] {
        let host = lab.host(m).unwrap();
        ca.install(host, vip_addr);
        let r = &host.root_dir;
        put(
            r,
            &format!("etc/systemd/system/{APISERVER_UNIT}"),
            apiserver_unit().as_bytes(),
            0o644,
        );
    }

    // containerd runs before apply, with the packaged config.
    for h in ["master1", "master2", "worker1"] {
        unit_action(st, &lab, h, "containerd.service", pb::Action::Start).await;
        let r = root(h);
        wait_until(Duration::from_secs(10), "containerd started", || {
            !containerd_starts(&r).is_empty()
        })
        .await;
    }
    let packaged = sha256(PACKAGED_CONTAINERD_CONFIG.as_bytes());
    let haops = containerd_config();
    let ours = sha256(haops.content.as_bytes());

    apply(st, &inv);

    // containerd restarted with haop's config: runc on the systemd cgroup driver.
    for r in [&m1, &m2, &w1] {
        assert_eq!(
            containerd_starts(r),
            [
                (packaged.clone(), "-".to_string()),
                (ours.clone(), "SystemdCgroup=true".to_string())
            ],
            "{}",
            r.display()
        );
        assert_eq!(
            std::fs::read_to_string(r.join("var/lib/haop-standin/containerd.config-read")).unwrap(),
            haops.content
        );
    }

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
    for r in [&m1, &m2, &w1] {
        assert_eq!(
            containerd_starts(r).len(),
            2,
            "containerd restarted with its config unchanged: {}",
            r.display()
        );
    }
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

    // The masters' API servers (stand-ins) run, each having read its manifest.
    for (m, r) in [("master1", &m1), ("master2", &m2)] {
        unit_action(st, &lab, m, APISERVER_UNIT, pb::Action::Start).await;
        wait_until(
            Duration::from_secs(10),
            "the API server stand-in started",
            || apiserver_starts(r).last().map(|s| s.1.as_str()) == Some(three.as_str()),
        )
        .await;
    }

    // The operator puts etcd4 in the inventory; `haop etcd add` joins it, then the masters
    // would use it, but the ConfigMap upload fails on master1: the sync stops there, before
    // any manifest.
    std::fs::write(&inv_path, with_etcd4.to_yaml().unwrap()).unwrap();
    let fail_upload = m1.join("etc/haop-standin/fail-upload-config");
    std::fs::write(&fail_upload, b"").unwrap();
    let added = haop(st, &["etcd", "add", "etcd4", "-f", &inv]);
    let said = text(&added);
    assert!(!added.status.success(), "{said}");
    assert!(
        said.contains("master1: uploading the kubeadm ClusterConfiguration"),
        "{said}"
    );
    let four = urls(&["etcd1", "etcd2", "etcd3", "etcd4"]);
    assert_eq!(configured(), four);
    assert_eq!((servers(&m1), servers(&m2)), (three.clone(), three.clone()));
    assert_eq!(record(&m1, "kubeadm-config.endpoints"), [three.as_str()]);
    // The next sync (the same command again: etcd4 is a voter already) retries the upload,
    // although kubeadm-config.yaml no longer changes.
    std::fs::remove_file(&fail_upload).unwrap();
    let added = haop(st, &["etcd", "add", "etcd4", "-f", &inv]);
    assert!(added.status.success(), "{}", text(&added));
    assert_eq!((servers(&m1), servers(&m2)), (four.clone(), four.clone()));
    assert_eq!(configured(), four);
    let upload = "init phase upload-config kubeadm --config /etc/kubernetes/kubeadm-config.yaml";
    assert_eq!(record(&m1, "kubeadm.args").last().unwrap(), upload);
    let uploads = record(&m1, "kubeadm.args")
        .iter()
        .filter(|a| *a == upload)
        .count();
    assert_eq!(uploads, 2, "the failed upload and its retry");
    assert_eq!(record(&m1, "kubeadm-config.endpoints"), [four.as_str()]);
    // One master at a time: master2's manifest was rewritten only after master1's new API
    // server (reading the four endpoints) had started; each came back with the new list.
    let m1_new = apiserver_starts(&m1)
        .into_iter()
        .find(|s| s.1 == four)
        .expect("master1's API server restarted with four endpoints");
    assert!(
        modified_unix(&m2.join(manifest_rel)) >= m1_new.0,
        "master2's manifest was rewritten before master1's API server came back"
    );
    for r in [&m1, &m2] {
        let starts = apiserver_starts(r);
        assert_eq!(starts.len(), 2, "{starts:?}");
        assert_eq!(starts[1].1, four);
    }
    assert!(
        record(&m2, "kubeadm.args")
            .iter()
            .all(|a| !a.contains("upload-config")),
        "the ConfigMap is uploaded once, from the first master"
    );

    // `haop etcd remove etcd1` while master1's API server does not come back after its
    // rewrite (answering 500): the sync stops at master1, names it, and master2's manifest and
    // the member are left as they were.
    let later = urls(&["etcd2", "etcd3", "etcd4"]);
    let readyz_fail = m1.join("var/lib/haop-standin/readyz-fail");
    std::fs::write(&readyz_fail, b"").unwrap();
    let removed = haop(
        st,
        &[
            "etcd",
            "remove",
            "etcd1",
            "-f",
            &inv,
            "--api-server-timeout",
            "3",
        ],
    );
    let said = text(&removed);
    assert!(!removed.status.success(), "{said}");
    assert!(
        said.contains("master1: its kube-apiserver did not answer")
            && said.contains("[-]etcd failed")
            && said.contains("the masters after it were not touched"),
        "{said}"
    );
    assert_eq!((servers(&m1), servers(&m2)), (later.clone(), four.clone()));
    let (still, _) = Inventory::load(&inv_path).unwrap();
    assert!(still.host("etcd1").is_some(), "etcd1 left the inventory");
    // master1 answers again; the same command finishes: master2 now, then the member.
    std::fs::remove_file(&readyz_fail).unwrap();
    let removed = haop(st, &["etcd", "remove", "etcd1", "-f", &inv]);
    assert!(removed.status.success(), "{}", text(&removed));
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
    for r in [&m1, &m2, &w1] {
        assert_eq!(containerd_starts(r).len(), 2, "{}", r.display());
    }

    lab.down().expect("lab down");
}
