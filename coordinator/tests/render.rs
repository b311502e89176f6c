//! The renderers of `haop plan` / `haop apply` checked the way their consumers read them:
//! containerd's config as TOML, kubeadm's as YAML documents, keepalived's unit through the
//! agent's own unit parser, the health check through `sh -n`, and the join commands from a
//! verbatim `kubeadm init` output.

use haop_coordinator::inventory::{Host, Inventory, Role, Version, Vip};
use haop_coordinator::render::hosts::{hosts_block, merge_hosts_block};
use haop_coordinator::render::keepalived::{
    check_apiserver_script, keepalived_conf, keepalived_unit, VrrpPassword,
};
use haop_coordinator::render::kubeadm::{
    kubeadm_config, parse_kubeadm_init_output, KubeadmError, ParseError,
};
use haop_coordinator::render::nodeprep::containerd_config;
use proptest::prelude::*;
use serde::Deserialize;
use serde_yaml_ng::Value;

fn host(name: &str, addr: &str, roles: &[Role]) -> Host {
    let mut h = Host::new(name.parse().unwrap(), addr.parse().unwrap(), roles.to_vec());
    h.prefix_len = Some(24);
    h
}

/// Three etcd hosts, three masters, one worker, a VIP: the seed's shape.
fn inventory() -> Inventory {
    let hosts = vec![
        host("etcd1", "10.0.0.1", &[Role::Etcd]),
        host("etcd2", "10.0.0.2", &[Role::Etcd]),
        host("etcd3", "10.0.0.3", &[Role::Etcd]),
        host("master1", "10.0.0.11", &[Role::Master]),
        host("master2", "10.0.0.12", &[Role::Master]),
        host("master3", "10.0.0.13", &[Role::Master]),
        host("worker1", "10.0.0.21", &[Role::Worker]),
    ];
    let mut inv = Inventory::new("prod".parse().unwrap(), hosts);
    inv.vip = Some(Vip::new("10.0.0.100".parse().unwrap()));
    inv.kubernetes.version = Some("1.30.2".parse().unwrap());
    inv.kubernetes.service_subnet = Some("10.96.0.0/12".parse().unwrap());
    inv
}

fn v(s: &str) -> Version {
    s.parse().unwrap()
}

// ---------------------------------------------------------------------------------------------
// containerd

#[test]
fn containerd_config_is_toml_with_systemd_cgroup() {
    let f = containerd_config();
    let doc: toml::Table = toml::from_str(&f.content).expect("valid TOML");
    assert_eq!(doc["version"].as_integer(), Some(2));
    let runc = &doc["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"]["runc"];
    assert_eq!(runc["runtime_type"].as_str(), Some("io.containerd.runc.v2"));
    assert_eq!(runc["options"]["SystemdCgroup"].as_bool(), Some(true));
    assert!(doc.get("disabled_plugins").is_none());
}

// ---------------------------------------------------------------------------------------------
// kubeadm-config.yaml

fn documents(text: &str) -> Vec<Value> {
    serde_yaml_ng::Deserializer::from_str(text)
        .map(|d| Value::deserialize(d).expect("valid YAML document"))
        .collect()
}

fn s<'a>(v: &'a Value, path: &[&str]) -> &'a str {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_str()
        .unwrap_or_else(|| panic!("{path:?} is not a string: {cur:?}"))
}

#[test]
fn kubeadm_v1beta3_documents_and_fields() {
    let inv = inventory();
    let master = inv.masters()[0];
    let f = kubeadm_config(&inv, master, v("1.30.2")).unwrap();
    assert_eq!(f.path, "/etc/kubernetes/kubeadm-config.yaml");
    assert!(f.content.contains("\n---\n"));
    let docs = documents(&f.content);
    assert_eq!(docs.len(), 3, "{}", f.content);

    let cluster = &docs[0];
    assert_eq!(s(cluster, &["apiVersion"]), "kubeadm.k8s.io/v1beta3");
    assert_eq!(s(cluster, &["kind"]), "ClusterConfiguration");
    assert_eq!(s(cluster, &["controlPlaneEndpoint"]), "10.0.0.100:6443");
    assert_eq!(s(cluster, &["kubernetesVersion"]), "v1.30.2");
    assert_eq!(s(cluster, &["networking", "podSubnet"]), "10.30.0.0/16");
    assert_eq!(s(cluster, &["networking", "serviceSubnet"]), "10.96.0.0/12");
    assert_eq!(
        cluster["apiServer"]["certSANs"][0].as_str(),
        Some("10.0.0.100")
    );
    let ext = &cluster["etcd"]["external"];
    let endpoints: Vec<&str> = ext["endpoints"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert_eq!(
        endpoints,
        [
            "https://10.0.0.1:2379",
            "https://10.0.0.2:2379",
            "https://10.0.0.3:2379"
        ]
    );
    assert_eq!(s(ext, &["caFile"]), "/etc/kubernetes/pki/etcd/ca.crt");
    assert_eq!(
        s(ext, &["certFile"]),
        "/etc/kubernetes/pki/apiserver-etcd-client.crt"
    );
    assert_eq!(
        s(ext, &["keyFile"]),
        "/etc/kubernetes/pki/apiserver-etcd-client.key"
    );
    assert!(cluster.get("apiServerCertSANs").is_none());

    let init = &docs[1];
    assert_eq!(s(init, &["apiVersion"]), "kubeadm.k8s.io/v1beta3");
    assert_eq!(s(init, &["kind"]), "InitConfiguration");
    assert_eq!(
        s(init, &["localAPIEndpoint", "advertiseAddress"]),
        "10.0.0.11"
    );
    assert_eq!(init["localAPIEndpoint"]["bindPort"].as_u64(), Some(6443));
    let reg = &init["nodeRegistration"];
    assert_eq!(
        s(reg, &["criSocket"]),
        "unix:///run/containerd/containerd.sock"
    );
    assert_eq!(s(reg, &["name"]), "master1");
    // v1beta3: a map.
    assert_eq!(s(reg, &["kubeletExtraArgs", "node-ip"]), "10.0.0.11");

    let kubelet = &docs[2];
    assert_eq!(s(kubelet, &["apiVersion"]), "kubelet.config.k8s.io/v1beta1");
    assert_eq!(s(kubelet, &["kind"]), "KubeletConfiguration");
    assert_eq!(s(kubelet, &["cgroupDriver"]), "systemd");
}

#[test]
fn kubeadm_v1beta4_uses_name_value_extra_args() {
    let inv = inventory();
    let f = kubeadm_config(&inv, inv.masters()[1], v("1.31.0")).unwrap();
    let docs = documents(&f.content);
    assert_eq!(docs.len(), 3);
    assert_eq!(s(&docs[0], &["apiVersion"]), "kubeadm.k8s.io/v1beta4");
    assert_eq!(s(&docs[1], &["apiVersion"]), "kubeadm.k8s.io/v1beta4");
    assert_eq!(
        s(&docs[1], &["localAPIEndpoint", "advertiseAddress"]),
        "10.0.0.12"
    );
    let args = docs[1]["nodeRegistration"]["kubeletExtraArgs"]
        .as_sequence()
        .expect("v1beta4 extra args are a list");
    assert_eq!(args.len(), 1);
    assert_eq!(s(&args[0], &["name"]), "node-ip");
    assert_eq!(s(&args[0], &["value"]), "10.0.0.12");
}

#[test]
fn kubeadm_optional_fields_and_ipv6() {
    let mut inv = inventory();
    inv.kubernetes.version = None;
    inv.kubernetes.service_subnet = None;
    inv.vip = Some(Vip::new("fd00::100".parse().unwrap()));
    let docs = documents(
        &kubeadm_config(&inv, inv.masters()[0], v("1.29.0"))
            .unwrap()
            .content,
    );
    assert!(docs[0].get("kubernetesVersion").is_none());
    assert!(docs[0]["networking"].get("serviceSubnet").is_none());
    assert_eq!(s(&docs[0], &["controlPlaneEndpoint"]), "[fd00::100]:6443");

    // One master, no VIP: the master is the endpoint.
    let mut single = inventory();
    single.vip = None;
    let docs = documents(
        &kubeadm_config(&single, single.masters()[0], v("1.29.0"))
            .unwrap()
            .content,
    );
    assert_eq!(s(&docs[0], &["controlPlaneEndpoint"]), "10.0.0.11:6443");
}

#[test]
fn another_api_port_reaches_every_place_that_names_it() {
    let mut inv = inventory();
    inv.kubernetes.api_port = 8443;
    let docs = documents(
        &kubeadm_config(&inv, inv.masters()[0], v("1.30.2"))
            .unwrap()
            .content,
    );
    assert_eq!(s(&docs[0], &["controlPlaneEndpoint"]), "10.0.0.100:8443");
    assert_eq!(docs[1]["localAPIEndpoint"]["bindPort"].as_u64(), Some(8443));
    let script = check_apiserver_script(&inv).unwrap().content;
    assert!(
        script.contains("https://localhost:8443/readyz")
            && script.contains("https://10.0.0.100:8443/readyz")
            && !script.contains("6443"),
        "{script}"
    );
}

#[test]
fn kubeadm_refusals() {
    let inv = inventory();
    let m = inv.masters()[0];
    let e = kubeadm_config(&inv, m, v("1.21.3")).unwrap_err();
    assert!(matches!(e, KubeadmError::KubeadmTooOld { .. }));
    assert!(e.to_string().contains("kubeadm 1.21.3 is too old"), "{e}");

    let worker = inv.workers()[0];
    assert!(matches!(
        kubeadm_config(&inv, worker, v("1.30.0")),
        Err(KubeadmError::NotAMaster { .. })
    ));

    let mut no_patch = inventory();
    no_patch.kubernetes.version = Some(v("1.30"));
    let e = kubeadm_config(&no_patch, no_patch.masters()[0], v("1.30.0")).unwrap_err();
    assert!(e.to_string().contains("1.30.0"), "{e}");

    let mut no_etcd = inventory();
    no_etcd.hosts.retain(|h| !h.has_role(Role::Etcd));
    assert_eq!(
        kubeadm_config(&no_etcd, no_etcd.masters()[0], v("1.30.0")).unwrap_err(),
        KubeadmError::NoEtcd
    );
}

// ---------------------------------------------------------------------------------------------
// kubeadm init output

const HASH: &str = "sha256:7c2e69131a36ae2a042a339b33381c6d0d43887e2de83720eff5359e26aec866";
const CERT_KEY: &str = "f8902e114ef118304e561c3ecd4d0b543adc226b7a07f675f56564185ffe0c07";

/// The tail of `kubeadm init --upload-certs` (v1.29), verbatim but for the values: kubeadm's
/// join template indents continuation lines with a tab and leaves a space before the final
/// newline of the worker command.
fn init_output_upload_certs() -> String {
    format!(
        "[addons] Applied essential addon: CoreDNS\n\
[addons] Applied essential addon: kube-proxy\n\
\n\
Your Kubernetes control-plane has initialized successfully!\n\
\n\
To start using your cluster, you need to run the following as a regular user:\n\
\n\
  mkdir -p $HOME/.kube\n\
  sudo cp -i /etc/kubernetes/admin.conf $HOME/.kube/config\n\
  sudo chown $(id -u):$(id -g) $HOME/.kube/config\n\
\n\
Alternatively, if you are the root user, you can run:\n\
\n\
  export KUBECONFIG=/etc/kubernetes/admin.conf\n\
\n\
You should now deploy a pod network to the cluster.\n\
Run \"kubectl apply -f [podnetwork].yaml\" with one of the options listed at:\n\
  https://kubernetes.io/docs/concepts/cluster-administration/addons/\n\
\n\
You can now join any number of the control-plane node running the following command on each as root:\n\
\n\
  kubeadm join 10.0.0.100:6443 --token abcdef.0123456789abcdef \\\n\
\t--discovery-token-ca-cert-hash {HASH} \\\n\
\t--control-plane --certificate-key {CERT_KEY}\n\
\n\
Please note that the certificate-key gives access to cluster sensitive data, keep it secret!\n\
As a safeguard, uploaded-certs will be deleted in two hours; If necessary, you can use\n\
\"kubeadm init phase upload-certs --upload-certs\" to reload certs afterward.\n\
\n\
Then you can join any number of worker nodes by running the following on each as root:\n\
\n\
kubeadm join 10.0.0.100:6443 --token abcdef.0123456789abcdef \\\n\
\t--discovery-token-ca-cert-hash {HASH} \n"
    )
}

/// Without `--upload-certs`: `--control-plane` alone, and kubeadm's older wording.
fn init_output_without_upload() -> String {
    format!(
        "Your Kubernetes control-plane has initialized successfully!\n\
\n\
You can now join any number of control-plane nodes by copying certificate authorities\n\
and service account keys on each node and then running the following as root:\n\
\n\
  kubeadm join 10.0.0.100:6443 --token abcdef.0123456789abcdef \\\n\
\t--discovery-token-ca-cert-hash {HASH} \\\n\
\t--control-plane \n\
\n\
Then you can join any number of worker nodes by running the following on each as root:\n\
\n\
kubeadm join 10.0.0.100:6443 --token abcdef.0123456789abcdef \\\n\
\t--discovery-token-ca-cert-hash {HASH} \n"
    )
}

#[test]
fn parses_both_join_commands_with_certificate_key() {
    let info = parse_kubeadm_init_output(&init_output_upload_certs()).unwrap();
    let cp = info.control_plane.expect("a control-plane join");
    assert_eq!(cp.endpoint, "10.0.0.100:6443");
    assert_eq!(cp.token, "abcdef.0123456789abcdef");
    assert_eq!(cp.ca_cert_hashes, [HASH]);
    assert!(cp.control_plane);
    assert_eq!(cp.certificate_key.as_deref(), Some(CERT_KEY));
    assert_eq!(
        cp.args(),
        [
            "join",
            "10.0.0.100:6443",
            "--token",
            "abcdef.0123456789abcdef",
            "--discovery-token-ca-cert-hash",
            HASH,
            "--control-plane",
            "--certificate-key",
            CERT_KEY
        ]
    );
    let w = info.worker;
    assert!(!w.control_plane);
    assert_eq!(w.certificate_key, None);
    assert_eq!(
        w.args(),
        [
            "join",
            "10.0.0.100:6443",
            "--token",
            "abcdef.0123456789abcdef",
            "--discovery-token-ca-cert-hash",
            HASH
        ]
    );
}

#[test]
fn parses_control_plane_join_without_certificate_key() {
    let info = parse_kubeadm_init_output(&init_output_without_upload()).unwrap();
    let cp = info.control_plane.unwrap();
    assert!(cp.control_plane);
    assert_eq!(cp.certificate_key, None);
    assert_eq!(info.worker.ca_cert_hashes, [HASH]);
}

#[test]
fn parses_single_master_output_and_crlf() {
    let single = format!(
        "Then you can join any number of worker nodes by running the following on each as root:\n\
         \n\
         kubeadm join 10.0.0.11:6443 --token abcdef.0123456789abcdef \\\n\
         \t--discovery-token-ca-cert-hash {HASH} \n"
    );
    let info = parse_kubeadm_init_output(&single).unwrap();
    assert!(info.control_plane.is_none());
    assert_eq!(info.worker.endpoint, "10.0.0.11:6443");
    let crlf = init_output_upload_certs().replace('\n', "\r\n");
    assert!(parse_kubeadm_init_output(&crlf).is_ok());
}

#[test]
fn refuses_malformed_output() {
    assert_eq!(
        parse_kubeadm_init_output("[init] Using Kubernetes version: v1.29.0\n"),
        Err(ParseError::NoWorkerJoin)
    );
    let bad_token = init_output_upload_certs().replace("abcdef.0123456789abcdef", "ABC;rm -rf");
    assert!(matches!(
        parse_kubeadm_init_output(&bad_token),
        Err(ParseError::Malformed {
            what: "--token",
            ..
        })
    ));
    let bad_hash = init_output_upload_certs().replace(HASH, "sha256:xyz");
    assert!(matches!(
        parse_kubeadm_init_output(&bad_hash),
        Err(ParseError::Malformed { .. })
    ));
    let no_hash = "kubeadm join 10.0.0.1:6443 --token abcdef.0123456789abcdef\n";
    assert_eq!(
        parse_kubeadm_init_output(no_hash),
        Err(ParseError::Missing {
            what: "--discovery-token-ca-cert-hash"
        })
    );
    let extra = init_output_upload_certs().replace("--control-plane", "--control-plane --evil");
    assert!(matches!(
        parse_kubeadm_init_output(&extra),
        Err(ParseError::Unexpected { .. })
    ));
    let other_token = init_output_upload_certs().replacen(
        "abcdef.0123456789abcdef",
        "zzzzzz.0123456789abcdef",
        1,
    );
    assert_eq!(
        parse_kubeadm_init_output(&other_token),
        Err(ParseError::Inconsistent { what: "token" })
    );
}

// ---------------------------------------------------------------------------------------------
// keepalived

#[test]
fn exactly_one_vrrp_master_and_a_failed_check_moves_the_vip() {
    let inv = inventory();
    let pw = VrrpPassword::try_from("Ab3dE6gH").unwrap();
    let mut priorities = Vec::new();
    let mut masters = 0;
    for m in inv.masters() {
        let c = keepalived_conf(&inv, m, &pw).unwrap().content;
        masters += c.matches("    state MASTER\n").count();
        assert!(c.contains("    virtual_router_id 51\n"));
        assert!(c.contains("    interface eth0\n"));
        assert!(c.contains("        auth_pass Ab3dE6gH\n"));
        assert!(c.contains("        10.0.0.100/24\n"));
        assert!(c.contains("    weight -3\n"));
        let p: i32 = c
            .lines()
            .find_map(|l| l.trim().strip_prefix("priority "))
            .unwrap()
            .parse()
            .unwrap();
        priorities.push(p);
    }
    assert_eq!(masters, 1);
    assert_eq!(priorities, [101, 100, 99]);
    // The holder's priority minus the check's weight falls below every other master's.
    assert!(priorities[0] - 3 < priorities[2]);
}

/// `n` masters behind one VIP.
fn masters_inventory(n: usize) -> Inventory {
    let mut hosts = vec![host("etcd1", "10.0.0.1", &[Role::Etcd])];
    for i in 0..n {
        hosts.push(host(
            &format!("master{}", i + 1),
            &format!("10.0.1.{}", i + 1),
            &[Role::Master],
        ));
    }
    let mut inv = Inventory::new("prod".parse().unwrap(), hosts);
    inv.vip = Some(Vip::new("10.0.1.250".parse().unwrap()));
    inv
}

/// (priority, weight) of every master's keepalived.conf.
fn priorities_and_weight(inv: &Inventory) -> Vec<(i32, i32)> {
    let pw = VrrpPassword::try_from("Ab3dE6gH").unwrap();
    let num = |c: &str, key: &str| -> i32 {
        c.lines()
            .find_map(|l| l.trim().strip_prefix(key))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    };
    inv.masters()
        .iter()
        .map(|m| {
            let c = keepalived_conf(inv, m, &pw).unwrap().content;
            (num(&c, "priority "), num(&c, "weight "))
        })
        .collect()
}

#[test]
fn a_failed_check_drops_any_master_below_every_healthy_one() {
    use haop_coordinator::render::keepalived::MAX_MASTERS;
    for n in 1..=MAX_MASTERS {
        let p = priorities_and_weight(&masters_inventory(n));
        for (i, (failing, weight)) in p.iter().enumerate() {
            assert!(*weight < 0, "{n} masters: {p:?}");
            assert!(failing + weight >= 1, "{n} masters: {p:?}");
            for (j, (healthy, _)) in p.iter().enumerate() {
                if i != j {
                    assert!(
                        failing + weight < *healthy,
                        "{n} masters: master{} failing ({failing}{weight}) still outranks \
                         healthy master{} ({healthy})",
                        i + 1,
                        j + 1
                    );
                }
            }
        }
    }
    let too_many = masters_inventory(MAX_MASTERS + 1);
    let pw = VrrpPassword::try_from("Ab3dE6gH").unwrap();
    let e = keepalived_conf(&too_many, too_many.masters()[0], &pw).unwrap_err();
    assert!(e.to_string().contains(&MAX_MASTERS.to_string()), "{e}");
}

/// Debian's keepalived reads every rendered keepalived.conf without a complaint
/// (`keepalived --config-test`), with the check script at a path keepalived's script security
/// accepts (root-owned directories) standing in for /etc/keepalived/check_apiserver.sh.
#[test]
fn keepalived_config_test_accepts_every_rendered_config() {
    use haop_coordinator::render::keepalived::CHECK_SCRIPT_PATH;
    let keepalived = std::path::Path::new("/usr/sbin/keepalived");
    assert!(
        keepalived.exists(),
        "Debian's keepalived is not installed (scripts/setup installs it)"
    );
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let pw = VrrpPassword::try_from("Ab3dE6gH").unwrap();
    for n in [1, 2, 4, 7] {
        let mut inv = masters_inventory(n);
        inv.kubernetes.enabled = true;
        let script = dir.path().join(format!("check-{n}.sh"));
        std::fs::write(&script, check_apiserver_script(&inv).unwrap().content).unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        for m in inv.masters() {
            let conf = keepalived_conf(&inv, m, &pw)
                .unwrap()
                .content
                .replace(CHECK_SCRIPT_PATH, &script.display().to_string());
            let file = dir.path().join(format!("{n}-{}.conf", m.name));
            std::fs::write(&file, &conf).unwrap();
            let out = std::process::Command::new(keepalived)
                .arg("--config-test")
                .arg("-f")
                .arg(&file)
                .output()
                .unwrap();
            let said = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(
                out.status.success() && said.trim().is_empty(),
                "{n} masters, {}: keepalived --config-test: {:?} {said}\n{conf}",
                m.name,
                out.status
            );
        }
    }
}

#[test]
fn keepalived_unit_is_read_by_the_agents_supervisor() {
    use haop_agent::units::unitfile::{parse, ServiceSpec};
    let u = keepalived_unit();
    let spec = ServiceSpec::from_unit(&parse(&u.content).unwrap()).unwrap();
    assert_eq!(spec.exec_start.program, "/usr/sbin/keepalived");
    assert_eq!(
        spec.exec_start.args,
        [
            "--dont-fork",
            "--log-console",
            "--pid=/run/keepalived.pid",
            "-f",
            "/etc/keepalived/keepalived.conf"
        ]
    );
    assert!(spec.ignored_keys.is_empty(), "{:?}", spec.ignored_keys);
}

#[test]
fn check_script_is_valid_posix_sh() {
    let f = check_apiserver_script(&inventory()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("check_apiserver.sh");
    std::fs::write(&path, &f.content).unwrap();
    let out = std::process::Command::new("/bin/sh")
        .arg("-n")
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

// ---------------------------------------------------------------------------------------------
// /etc/hosts

#[test]
fn hosts_block_lists_the_seed_hosts() {
    let b = hosts_block(&inventory());
    assert!(b.starts_with("# BEGIN haop prod\n10.0.0.1 etcd1\n"));
    assert!(b.ends_with("10.0.0.21 worker1\n# END haop prod\n"));
    assert_eq!(b.lines().count(), 9);
}

proptest! {
    /// Whatever the file holds, merging is idempotent, keeps the block once, keeps every line
    /// above the first BEGIN marker as it is, and only appends when there is no complete block.
    #[test]
    fn merge_is_idempotent_and_keeps_other_lines(
        lines in proptest::collection::vec(
            prop_oneof![
                Just("127.0.0.1 localhost".to_string()),
                Just("# BEGIN haop prod".to_string()),
                Just("# END haop prod".to_string()),
                Just("# BEGIN haop dev".to_string()),
                Just("10.0.0.1 etcd1".to_string()),
                "[a-z0-9 .#]{0,12}",
            ],
            0..12,
        ),
        final_newline in any::<bool>(),
    ) {
        let mut existing = lines.join("\n");
        if final_newline && !existing.is_empty() {
            existing.push('\n');
        }
        let block = hosts_block(&inventory());
        let once = merge_hosts_block(&existing, &block);
        prop_assert_eq!(merge_hosts_block(&once, &block), once.clone());
        prop_assert_eq!(once.matches(block.as_str()).count(), 1);
        let prefix = match existing.find("# BEGIN haop prod") {
            Some(i) => &existing[..i],
            None => existing.as_str(),
        };
        prop_assert!(once.starts_with(prefix.trim_end_matches(|c| c != '\n')));
        if !existing.contains("# END haop prod") {
            let mut appended = existing.clone();
            if !appended.is_empty() && !appended.ends_with('\n') {
                appended.push('\n');
            }
            appended.push_str(&block);
            prop_assert_eq!(once, appended);
        }
    }
}
