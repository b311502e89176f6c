//! The inventory file: the examples load with their defaults, every validation error is
//! reported with the file, the field and a hint, all of a file's problems come at once, and
//! what `to_yaml` writes reads back the same.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use haop_coordinator::inventory::{
    EtcdBinary, Inventory, InventoryError, Problem, Role, Severity, DEFAULT_AGENT_PORT,
};
use haop_coordinator::pki::KeyAlgorithm;

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/inventory")
        .join(name)
}

/// Three etcd hosts in 10.0.0.0/24, two masters with a VIP, Kubernetes on: valid, no warnings.
/// Tests change one thing in it.
const BASE: &str = "\
cluster: prod
hosts:
  - {name: etcd1, address: 10.0.0.11, roles: [etcd]}
  - {name: etcd2, address: 10.0.0.12, roles: [etcd]}
  - {name: etcd3, address: 10.0.0.13, roles: [etcd]}
  - {name: master1, address: 10.0.0.21, roles: [master]}
  - {name: master2, address: 10.0.0.22, roles: [master]}
vip:
  address: 10.0.0.100
";

fn ok(text: &str) -> (Inventory, Vec<Problem>) {
    Inventory::from_yaml(text, "test.yaml").unwrap_or_else(|e| panic!("{e}\n---\n{text}"))
}

/// The problems of an invalid `text`, read as `bad.yaml`, and the rendered error.
fn invalid(text: &str) -> (Vec<Problem>, String) {
    match Inventory::from_yaml(text, "bad.yaml") {
        Ok((inv, warnings)) => panic!("accepted: {inv:?}\nwarnings: {warnings:?}\n---\n{text}"),
        Err(e @ InventoryError::Invalid { .. }) => (e.problems().to_vec(), e.to_string()),
        Err(e) => panic!("not a validation error: {e}"),
    }
}

/// Expects exactly one problem, an error at `field`, named with the file in the rendered
/// error; answers it.
fn one_error(text: &str, field: &str) -> Problem {
    let (problems, rendered) = invalid(text);
    assert_eq!(problems.len(), 1, "{rendered}");
    let p = problems[0].clone();
    assert_eq!(p.severity, Severity::Error, "{rendered}");
    assert_eq!(p.field, field, "{rendered}");
    assert_eq!(p.file, "bad.yaml");
    assert!(!p.hint.is_empty(), "{rendered}");
    assert!(
        rendered.contains(&format!("error: bad.yaml: {field}: {}", p.message)),
        "{rendered}"
    );
    assert!(
        rendered.starts_with("inventory bad.yaml is invalid: 1 error"),
        "{rendered}"
    );
    p
}

/// Expects the text to load with exactly one warning at `field`; answers it.
fn one_warning(text: &str, field: &str) -> Problem {
    let (_, warnings) = ok(text);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    let w = warnings[0].clone();
    assert_eq!(w.severity, Severity::Warning);
    assert_eq!(w.field, field);
    let shown = w.to_string();
    assert!(
        shown.starts_with(&format!("warning: test.yaml: {field}: ")),
        "{shown}"
    );
    w
}

fn replace(text: &str, from: &str, to: &str) -> String {
    assert!(text.contains(from), "{from:?} not in the text");
    text.replacen(from, to, 1)
}

#[test]
fn base_is_valid() {
    let (inv, warnings) = ok(BASE);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(inv.hosts.len(), 5);
}

#[test]
fn full_example_loads_with_every_field() {
    let path = fixture("full.yaml");
    let (inv, warnings) = Inventory::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(inv.cluster.as_str(), "prod");
    let names = |hosts: Vec<&haop_coordinator::inventory::Host>| -> Vec<String> {
        hosts.iter().map(|h| h.name.to_string()).collect()
    };
    assert_eq!(names(inv.etcd_hosts()), ["etcd1", "etcd2", "etcd3"]);
    assert_eq!(names(inv.masters()), ["master1", "master2"]);
    assert_eq!(names(inv.workers()), ["worker1", "worker2"]);

    let etcd1 = inv.host("etcd1").expect("etcd1");
    assert_eq!(etcd1.address, "10.0.0.11".parse::<IpAddr>().unwrap());
    assert_eq!(etcd1.prefix_len, Some(24));
    assert_eq!(etcd1.subnet().0.to_string(), "10.0.0.0/24");
    assert_eq!(
        etcd1.agent.as_str(),
        "https://10.0.0.11:7443",
        "the default"
    );
    assert_eq!(
        etcd1.fqdn.as_ref().map(|f| f.as_str()),
        Some("etcd1.prod.example.com")
    );
    assert!(inv.host("nosuch").is_none());
    assert!(inv.host("master1").unwrap().fqdn.is_none());

    assert_eq!(
        inv.etcd_client_urls(),
        [
            "https://10.0.0.11:2379",
            "https://10.0.0.12:2379",
            "https://10.0.0.13:2379"
        ]
    );
    assert_eq!(
        inv.etcd_initial_cluster(),
        "etcd1=https://10.0.0.11:2380,etcd2=https://10.0.0.12:2380,etcd3=https://10.0.0.13:2380"
    );
    assert_eq!(inv.etcd_cluster_token(), "prod-etcd-1");
    match &inv.etcd.binary {
        EtcdBinary::Upload { file, sha256 } => {
            assert_eq!(
                file,
                &fixture("./etcd"),
                "relative to the inventory's directory"
            );
            assert_eq!(
                sha256.as_str(),
                "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(inv.etcd.data_dir, Path::new("/var/lib/etcd"));
    assert_eq!(
        inv.etcd.extra_flags,
        [
            "--quota-backend-bytes=8589934592",
            "--auto-compaction-retention=1"
        ]
    );
    assert_eq!(
        inv.etcd.version.map(|v| v.to_string()).as_deref(),
        Some("3.5.12")
    );

    let vip = inv.vip.as_ref().expect("vip");
    assert_eq!(vip.address.to_string(), "10.0.0.100");
    assert_eq!(vip.interface.as_str(), "eth0");
    assert_eq!(vip.router_id, 51);

    let k = &inv.kubernetes;
    assert!(k.enabled);
    assert_eq!(k.version.map(|v| v.to_string()).as_deref(), Some("1.29.3"));
    assert_eq!(k.pod_subnet.to_string(), "10.30.0.0/16");
    assert_eq!(
        k.service_subnet.map(|s| s.to_string()).as_deref(),
        Some("10.96.0.0/12")
    );
    assert_eq!(
        k.cni_manifest.as_deref(),
        Some(fixture("./calico.yaml").as_path())
    );
    assert_eq!(k.api_port, 6443);

    assert_eq!(inv.pki.key_algorithm, KeyAlgorithm::EcdsaP256);
    assert_eq!(inv.pki.lifetime.as_str(), "43800h");
    assert_eq!(inv.pki.lifetime.duration().as_secs(), 43_800 * 3600);
}

#[test]
fn minimal_example_gets_the_defaults() {
    let (inv, warnings) = Inventory::load(&fixture("minimal.yaml")).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(inv.etcd_hosts().len(), 3);
    assert!(inv.masters().is_empty() && inv.workers().is_empty());
    assert!(!inv.kubernetes.enabled);
    assert!(inv.vip.is_none());
    let h = &inv.hosts[0];
    assert_eq!(h.roles, [Role::Etcd]);
    assert_eq!(h.prefix_len, None);
    assert_eq!(
        h.agent.as_str(),
        format!("https://192.168.10.11:{DEFAULT_AGENT_PORT}")
    );
    assert_eq!(
        inv.etcd.binary,
        EtcdBinary::Path(PathBuf::from("/usr/bin/etcd"))
    );
    assert_eq!(inv.etcd.data_dir, Path::new("/var/lib/etcd"));
    assert_eq!((inv.etcd.client_port, inv.etcd.peer_port), (2379, 2380));
    assert!(inv.etcd.extra_flags.is_empty());
    assert_eq!(inv.etcd.version, None);
    assert_eq!(inv.etcd_cluster_token(), "lab-etcd");
    assert_eq!(inv.kubernetes.pod_subnet.to_string(), "10.30.0.0/16");
    assert_eq!(inv.kubernetes.service_subnet, None);
    assert_eq!(inv.kubernetes.api_port, 6443);
    assert_eq!(inv.pki.key_algorithm, KeyAlgorithm::EcdsaP256);
    assert_eq!(inv.pki.lifetime.as_str(), "43800h");
}

#[test]
fn stacked_example_has_hosts_with_two_roles() {
    let (inv, warnings) = Inventory::load(&fixture("stacked.yaml")).unwrap();
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(inv.etcd_hosts().len(), 3);
    assert_eq!(inv.masters().len(), 3);
    assert_eq!(inv.hosts[0].roles, [Role::Etcd, Role::Master]);
    assert_eq!(inv.vip.as_ref().unwrap().router_id, 77);
    assert_eq!(inv.vip.as_ref().unwrap().interface.as_str(), "ens3");
    assert_eq!(inv.kubernetes.version.unwrap().to_string(), "1.30.1");
    assert_eq!(inv.pki.key_algorithm, KeyAlgorithm::Rsa2048);
    // The /16 of the masters' addresses holds the VIP 10.1.200.1.
    assert_eq!(
        inv.hosts[0].subnet(),
        ("10.1.0.0/16".parse().unwrap(), false)
    );
}

#[test]
fn round_trip_through_to_yaml() {
    for name in ["full.yaml", "minimal.yaml", "stacked.yaml"] {
        let text = std::fs::read_to_string(fixture(name)).unwrap();
        let (inv, _) = Inventory::from_yaml(&text, name).unwrap();
        let written = inv.to_yaml().unwrap();
        let (again, warnings) =
            Inventory::from_yaml(&written, name).unwrap_or_else(|e| panic!("{e}\n---\n{written}"));
        assert_eq!(again, inv, "{name}:\n{written}");
        assert!(warnings.is_empty());
        assert_eq!(
            again.to_yaml().unwrap(),
            written,
            "{name}: writing is stable"
        );
    }
    // Every default is written out.
    let (inv, _) = Inventory::load(&fixture("minimal.yaml")).unwrap();
    let written = inv.to_yaml().unwrap();
    for key in [
        "agent: https://192.168.10.11:7443",
        "path: /usr/bin/etcd",
        "data_dir: /var/lib/etcd",
        "client_port: 2379",
        "pod_subnet: 10.30.0.0/16",
        "key_algorithm: ecdsa-p256",
        "lifetime: 43800h",
    ] {
        assert!(written.contains(key), "{key} in\n{written}");
    }
}

#[test]
fn an_inventory_built_in_code_writes_a_valid_file() {
    use haop_coordinator::inventory::{ClusterName, Host, HostName, Vip};
    let host = |name: &str, last: u8, roles: Vec<Role>| {
        Host::new(
            HostName::try_from(name).unwrap(),
            IpAddr::from([10, 9, 0, last]),
            roles,
        )
    };
    let mut inv = Inventory::new(
        ClusterName::try_from("built").unwrap(),
        vec![
            host("a", 1, vec![Role::Etcd, Role::Master]),
            host("b", 2, vec![Role::Etcd, Role::Master]),
            host("c", 3, vec![Role::Etcd, Role::Worker]),
        ],
    );
    inv.vip = Some(Vip::new(IpAddr::from([10, 9, 0, 100])));
    let (back, warnings) = ok(&inv.to_yaml().unwrap());
    assert_eq!(back, inv);
    assert!(warnings.is_empty());
}

// ---- one test per validation rule ----

#[test]
fn duplicate_host_names() {
    let p = one_error(
        &replace(BASE, "name: etcd2", "name: etcd1"),
        "hosts[1].name",
    );
    assert_eq!(
        p.message,
        "duplicate host name \"etcd1\": hosts[0] has it too"
    );
}

#[test]
fn duplicate_addresses() {
    let p = one_error(
        &replace(BASE, "address: 10.0.0.22", "address: 10.0.0.21"),
        "hosts[4].address",
    );
    assert_eq!(
        p.message,
        "duplicate address 10.0.0.21: it is also the address of hosts[3] (master1)"
    );
}

#[test]
fn invalid_ip_addresses() {
    let p = one_error(
        &replace(BASE, "10.0.0.12", "10.0.0.300"),
        "hosts[1].address",
    );
    assert_eq!(p.message, "\"10.0.0.300\" is not an IP address");
    assert!(p.hint.contains("10.0.0.5/24"), "{}", p.hint);
    let p = one_error(
        &replace(BASE, "10.0.0.12", "10.0.0.12/40"),
        "hosts[1].address",
    );
    assert!(p.message.contains("prefix length \"40\""), "{}", p.message);
    let p = one_error(&replace(BASE, "10.0.0.12", "127.0.0.1"), "hosts[1].address");
    assert!(p.message.contains("loopback"), "{}", p.message);
    let p = one_error(
        &replace(BASE, "address: 10.0.0.12, ", ""),
        "hosts[1].address",
    );
    assert!(p.message.starts_with("missing"), "{}", p.message);
}

#[test]
fn even_etcd_count_is_a_warning_unless_allowed() {
    let four = replace(
        BASE,
        "  - {name: master1",
        "  - {name: etcd4, address: 10.0.0.14, roles: [etcd]}\n  - {name: master1",
    );
    let w = one_warning(&four, "hosts");
    assert_eq!(
        w.message,
        "4 etcd members (etcd1, etcd2, etcd3, etcd4): the quorum is 3, so the cluster survives \
         one failed member and no more than with 3 members"
    );
    assert!(w.hint.contains("allow_even_etcd: true"), "{}", w.hint);
    let (_, warnings) = ok(&format!("allow_even_etcd: true\n{four}"));
    assert!(warnings.is_empty(), "{warnings:?}");
}

#[test]
fn single_etcd_member_is_a_warning_unless_allowed() {
    let text = "\
cluster: dev
hosts:
  - {name: solo, address: 10.0.0.11, roles: [etcd, master]}
";
    let w = one_warning(text, "hosts");
    assert!(
        w.message.starts_with("only one etcd member (solo)"),
        "{}",
        w.message
    );
    assert!(w.hint.contains("allow_single_etcd: true"), "{}", w.hint);
    let (inv, warnings) = ok(&format!("allow_single_etcd: true\n{text}"));
    assert!(warnings.is_empty(), "{warnings:?}");
    assert!(inv.allow_single_etcd);
}

#[test]
fn zero_etcd_hosts() {
    let text = "\
cluster: prod
hosts:
  - {name: w1, address: 10.0.0.31, roles: [worker]}
kubernetes: {enabled: false}
";
    let p = one_error(text, "hosts");
    assert_eq!(p.message, "no host has the role etcd");
}

#[test]
fn masters_without_etcd_endpoints() {
    let text = "\
cluster: prod
hosts:
  - {name: master1, address: 10.0.0.21, roles: [master]}
";
    let p = one_error(text, "hosts");
    assert_eq!(
        p.message,
        "no host has the role etcd, so the masters (master1) have no etcd endpoints to use"
    );
    assert!(p.hint.contains("[etcd, master]"), "{}", p.hint);
}

#[test]
fn vip_outside_the_masters_subnet() {
    // Prefix given: the /24 is the masters' own.
    let text = BASE
        .replace("10.0.0.21", "10.0.0.21/24")
        .replace("10.0.0.22", "10.0.0.22/24")
        .replace("10.0.0.100", "10.0.1.100");
    let p = one_error(&text, "vip.address");
    assert_eq!(
        p.message,
        "10.0.1.100 is outside the subnet of master master1 (10.0.0.0/24), master2 (10.0.0.0/24)"
    );
    assert!(!p.hint.contains("assumed"), "{}", p.hint);
    // No prefix: /24 is assumed, and the hint says so.
    let p = one_error(&replace(BASE, "10.0.0.100", "10.0.1.100"), "vip.address");
    assert!(p.hint.contains("/24"), "{}", p.hint);
    assert!(p.hint.contains("assumed"), "{}", p.hint);
    assert!(p.hint.contains("master1, master2"), "{}", p.hint);
    // A wider prefix puts the same VIP inside.
    let wide = BASE
        .replace("10.0.0.21", "10.0.0.21/16")
        .replace("10.0.0.22", "10.0.0.22/16")
        .replace("10.0.0.100", "10.0.1.100");
    ok(&wide);
}

#[test]
fn vip_equal_to_a_host_address() {
    let p = one_error(&replace(BASE, "10.0.0.100", "10.0.0.22"), "vip.address");
    assert_eq!(
        p.message,
        "10.0.0.22 is also the address of hosts[4] (master2)"
    );
}

#[test]
fn bad_cidrs() {
    let with = |subnet: &str| format!("{BASE}kubernetes:\n  pod_subnet: {subnet}\n");
    let p = one_error(&with("10.30.0.0/33"), "kubernetes.pod_subnet");
    assert!(
        p.message.starts_with("\"10.30.0.0/33\" is not a CIDR: "),
        "{}",
        p.message
    );
    let p = one_error(&with("10.30.0.0"), "kubernetes.pod_subnet");
    assert!(p.message.contains("no prefix length"), "{}", p.message);
    let p = one_error(&with("10.30.0.1/16"), "kubernetes.pod_subnet");
    assert_eq!(p.message, "\"10.30.0.1/16\" has host bits set");
    assert_eq!(p.hint, "did you mean 10.30.0.0/16?");
    let p = one_error(
        &format!("{BASE}kubernetes:\n  service_subnet: 10.30.128.0/20\n"),
        "kubernetes.service_subnet",
    );
    assert_eq!(
        p.message,
        "10.30.128.0/20 overlaps the pod subnet 10.30.0.0/16"
    );
    let p = one_error(&with("10.0.0.0/8"), "kubernetes.pod_subnet");
    assert!(
        p.message
            .starts_with("10.0.0.0/8 contains the address of hosts[0] (etcd1) 10.0.0.11"),
        "{}",
        p.message
    );
}

#[test]
fn unknown_roles_are_named_nicely() {
    let p = one_error(
        &replace(BASE, "roles: [etcd]}", "roles: [etcdd]}"),
        "hosts[0].roles[0]",
    );
    assert_eq!(
        p.message,
        "unknown role \"etcdd\"; expected etcd, master or worker"
    );
    assert_eq!(p.hint, "did you mean \"etcd\"?");
    let (problems, rendered) = invalid(&replace(
        BASE,
        "{name: etcd2, address: 10.0.0.12, roles: [etcd]}",
        "{name: etcd2, address: 10.0.0.12, roles: [etcd, database]}",
    ));
    assert!(
        rendered.contains(
            "bad.yaml: hosts[1].roles[1]: unknown role \"database\"; expected etcd, master or worker"
        ),
        "{rendered}"
    );
    assert_eq!(problems.len(), 1);
    // A misspelt master is one problem, not also "Kubernetes without masters" and "no VIP
    // needed".
    let text = "\
cluster: prod
hosts:
  - {name: etcd1, address: 10.0.0.11, roles: [etcd, mastr]}
  - {name: etcd2, address: 10.0.0.12, roles: [etcd]}
  - {name: etcd3, address: 10.0.0.13, roles: [etcd]}
vip: {address: 10.0.0.100}
";
    let p = one_error(text, "hosts[0].roles[1]");
    assert_eq!(p.hint, "did you mean \"master\"?");
    let p = one_error(
        &replace(BASE, "roles: [etcd]}", "roles: []}"),
        "hosts[0].roles",
    );
    assert_eq!(p.message, "the host has no roles");
}

#[test]
fn kubernetes_enabled_without_masters() {
    let text = "\
cluster: prod
hosts:
  - {name: etcd1, address: 10.0.0.11, roles: [etcd]}
  - {name: etcd2, address: 10.0.0.12, roles: [etcd]}
  - {name: etcd3, address: 10.0.0.13, roles: [etcd]}
";
    let p = one_error(text, "kubernetes.enabled");
    assert_eq!(
        p.message,
        "Kubernetes is enabled but no host has the role master"
    );
    assert!(p.hint.contains("kubernetes.enabled: false"), "{}", p.hint);
}

#[test]
fn vip_required_with_two_masters() {
    let text = BASE.replace("vip:\n  address: 10.0.0.100\n", "");
    let p = one_error(&text, "vip");
    assert_eq!(
        p.message,
        "2 masters (master1, master2) need a VIP in front of their API servers"
    );
    // One master needs none.
    let one = text.replace(
        "  - {name: master2, address: 10.0.0.22, roles: [master]}\n",
        "",
    );
    ok(&one);
}

#[test]
fn invalid_host_names() {
    let p = one_error(
        &replace(BASE, "name: etcd2", "name: Etcd_2"),
        "hosts[1].name",
    );
    assert_eq!(
        p.message,
        "\"Etcd_2\" is not a valid host name: it contains an uppercase letter; only lowercase \
         letters are allowed"
    );
    assert!(p.hint.contains("RFC 1123"), "{}", p.hint);
    let p = one_error(
        &replace(BASE, "name: etcd2", "name: etcd-"),
        "hosts[1].name",
    );
    assert!(p.message.contains("start and end"), "{}", p.message);
    let p = one_error(
        &replace(BASE, "name: etcd2", "name: etcd2.example"),
        "hosts[1].name",
    );
    assert!(p.message.contains("'.'"), "{}", p.message);
}

#[test]
fn yaml_syntax_errors_have_line_and_column() {
    let path = fixture("syntax-error.yaml");
    let e = Inventory::load(&path).unwrap_err();
    let InventoryError::Parse {
        file, line, column, ..
    } = &e
    else {
        panic!("{e:?}");
    };
    assert_eq!(file, &path.display().to_string());
    assert_eq!(*line, Some(5));
    assert!(column.is_some());
    let shown = e.to_string();
    assert!(
        shown.starts_with(&format!("{}:5:", path.display())),
        "{shown}"
    );
}

#[test]
fn upload_digest_must_be_64_hex_digits() {
    let with = |sha: &str| {
        format!("{BASE}etcd:\n  binary:\n    upload:\n      file: ./etcd\n      sha256: {sha}\n")
    };
    let p = one_error(&with("abc123"), "etcd.binary.upload.sha256");
    assert_eq!(
        p.message,
        "\"abc123\" is not a SHA-256 digest: it has 6 characters; a SHA-256 digest has 64 hex \
         digits"
    );
    assert!(p.hint.contains("sha256sum"), "{}", p.hint);
    let p = one_error(&with(&"g".repeat(64)), "etcd.binary.upload.sha256");
    assert!(p.message.contains("hex"), "{}", p.message);
    // Uppercase is accepted and kept in lowercase.
    let (inv, _) = ok(&with(&"AB".repeat(32)));
    match inv.etcd.binary {
        EtcdBinary::Upload { sha256, file } => {
            assert_eq!(sha256.as_str(), "ab".repeat(32));
            assert_eq!(
                file,
                Path::new("./etcd"),
                "from_yaml keeps paths as written"
            );
        }
        other => panic!("{other:?}"),
    }
    let p = one_error(
        &format!("{BASE}etcd:\n  binary:\n    upload:\n      file: ./etcd\n"),
        "etcd.binary.upload.sha256",
    );
    assert!(p.message.starts_with("missing"), "{}", p.message);
}

// ---- further rules ----

#[test]
fn binary_source_is_path_or_upload() {
    let both = format!(
        "{BASE}etcd:\n  binary:\n    path: /usr/bin/etcd\n    upload: {{file: ./etcd, sha256: {}}}\n",
        "a".repeat(64)
    );
    let p = one_error(&both, "etcd.binary");
    assert_eq!(p.message, "gives both `path` and `upload`");
    let p = one_error(&format!("{BASE}etcd:\n  binary: {{}}\n"), "etcd.binary");
    assert_eq!(p.message, "gives neither `path` nor `upload`");
    let p = one_error(
        &format!("{BASE}etcd:\n  binary: {{path: bin/etcd}}\n"),
        "etcd.binary.path",
    );
    assert!(p.message.contains("not an absolute path"), "{}", p.message);
}

#[test]
fn etcd_settings_are_checked() {
    let p = one_error(&format!("{BASE}etcd: {{data_dir: /}}\n"), "etcd.data_dir");
    assert!(p.message.contains("root directory"), "{}", p.message);
    let p = one_error(
        &format!("{BASE}etcd: {{data_dir: /var/lib/../etc}}\n"),
        "etcd.data_dir",
    );
    assert!(p.message.contains(".."), "{}", p.message);
    let p = one_error(
        &format!("{BASE}etcd: {{client_port: 70000}}\n"),
        "etcd.client_port",
    );
    assert_eq!(p.message, "70000 is not a port");
    let p = one_error(
        &format!("{BASE}etcd: {{peer_port: 2379}}\n"),
        "etcd.peer_port",
    );
    assert_eq!(p.message, "the peer port is the client port (2379)");
    let p = one_error(
        &format!("{BASE}etcd:\n  extra_flags: [--client-cert-auth=false]\n"),
        "etcd.extra_flags[0]",
    );
    assert_eq!(p.message, "--client-cert-auth is set by haop");
    let p = one_error(
        &format!("{BASE}etcd:\n  extra_flags: [--a=1, quota]\n"),
        "etcd.extra_flags[1]",
    );
    assert_eq!(p.message, "\"quota\" is not a flag");
    let p = one_error(&format!("{BASE}etcd: {{version: three}}\n"), "etcd.version");
    assert!(
        p.message.starts_with("\"three\" is not a version"),
        "{}",
        p.message
    );
    let p = one_error(&format!("{BASE}etcd: {{token: \"a b\"}}\n"), "etcd.token");
    assert!(p.message.contains("token"), "{}", p.message);
    let p = one_error(
        &replace(
            BASE,
            "roles: [etcd]}",
            "roles: [etcd], agent: \"https://10.0.0.11:2379\"}",
        ),
        "hosts[0].agent",
    );
    assert!(p.message.contains("etcd's ports"), "{}", p.message);
}

#[test]
fn vip_settings_are_checked() {
    let text = replace(
        BASE,
        "  address: 10.0.0.100\n",
        "  address: 10.0.0.100\n  router_id: 0\n",
    );
    let p = one_error(&text, "vip.router_id");
    assert_eq!(p.message, "0 is not a VRRP router id");
    let text = replace(
        BASE,
        "  address: 10.0.0.100\n",
        "  address: 10.0.0.100\n  router_id: 256\n",
    );
    one_error(&text, "vip.router_id");
    let text = replace(
        BASE,
        "  address: 10.0.0.100\n",
        "  address: 10.0.0.100\n  interface: eth0:1\n",
    );
    one_error(&text, "vip.interface");
    let p = one_error(&replace(BASE, "10.0.0.100", "10.0.0.100/24"), "vip.address");
    assert!(p.message.contains("prefix length"), "{}", p.message);
    // A VIP without masters is unused: a warning.
    let text = "\
cluster: prod
hosts:
  - {name: etcd1, address: 10.0.0.11, roles: [etcd]}
  - {name: etcd2, address: 10.0.0.12, roles: [etcd]}
  - {name: etcd3, address: 10.0.0.13, roles: [etcd]}
vip: {address: 10.0.0.100}
kubernetes: {enabled: false}
";
    one_warning(text, "vip");
}

#[test]
fn kubernetes_and_pki_settings_are_checked() {
    let p = one_error(
        &format!("{BASE}kubernetes: {{version: \"1.29\"}}\n"),
        "kubernetes.version",
    );
    assert_eq!(p.message, "\"1.29\" has no patch version");
    let p = one_error(
        &format!("{BASE}pki: {{key_algorithm: rsa-1024}}\n"),
        "pki.key_algorithm",
    );
    assert!(p.message.contains("rsa-1024"), "{}", p.message);
    let p = one_error(&format!("{BASE}pki: {{lifetime: 5y}}\n"), "pki.lifetime");
    assert!(p.message.contains("\"5y\""), "{}", p.message);
    let p = one_error(&replace(BASE, "cluster: prod", "cluster: Prod"), "cluster");
    assert!(p.message.contains("uppercase"), "{}", p.message);
    let p = one_error(
        &replace(BASE, "roles: [etcd]}", "roles: [etcd], fqdn: etcd1}"),
        "hosts[0].fqdn",
    );
    assert!(p.message.contains("dot"), "{}", p.message);
}

#[test]
fn the_api_port_is_checked_against_the_masters_other_ports() {
    let (inv, _) = ok(&format!("{BASE}kubernetes: {{api_port: 8443}}\n"));
    assert_eq!(inv.kubernetes.api_port, 8443);
    for bad in ["0", "70000", "-1"] {
        let p = one_error(
            &format!("{BASE}kubernetes: {{api_port: {bad}}}\n"),
            "kubernetes.api_port",
        );
        assert_eq!(p.message, format!("{bad} is not a port"));
        assert!(p.hint.contains("6443"), "{}", p.hint);
    }
    // An agent on a master cannot take the API server's port.
    let p = one_error(
        &replace(
            BASE,
            "{name: master1, address: 10.0.0.21, roles: [master]}",
            "{name: master1, address: 10.0.0.21, roles: [master], agent: \"https://10.0.0.21:6443\"}",
        ),
        "hosts[3].agent",
    );
    assert!(p.message.contains("API server"), "{}", p.message);
    // Nor can etcd on a stacked master; on an etcd-only host the port is free.
    let stacked = replace(BASE, "roles: [etcd]}", "roles: [etcd, master]}");
    let p = one_error(
        &format!("{stacked}kubernetes: {{api_port: 2379}}\n"),
        "kubernetes.api_port",
    );
    assert!(
        p.message.contains("etcd1") && p.message.contains("2379"),
        "{}",
        p.message
    );
    ok(&format!("{BASE}kubernetes: {{api_port: 2379}}\n"));
    // Not checked when Kubernetes is off.
    ok(&replace(
        BASE,
        "{name: master1, address: 10.0.0.21, roles: [master]}",
        "{name: master1, address: 10.0.0.21, roles: [master], agent: \"https://10.0.0.21:6443\"}",
    )
    .replace(
        "vip:\n  address: 10.0.0.100\n",
        "vip:\n  address: 10.0.0.100\nkubernetes: {enabled: false}\n",
    ));
}

#[test]
fn all_problems_of_a_file_are_reported_together() {
    let path = fixture("many-errors.yaml");
    let e = Inventory::load(&path).unwrap_err();
    let file = path.display().to_string();
    let problems = e.problems();
    let fields: Vec<(&str, Severity)> = problems
        .iter()
        .map(|p| (p.field.as_str(), p.severity))
        .collect();
    use Severity::{Error, Warning};
    assert_eq!(
        fields,
        [
            ("hosts[2].name", Error),
            ("hosts[2].address", Error),
            ("hosts[2].roles[0]", Error),
            ("hosts[4].roles[1]", Warning),
            ("hosts[1].name", Error),
            ("hosts[3].address", Error),
            ("etcd.binary.upload.sha256", Error),
            ("vip.address", Error),
            ("vip.router_id", Error),
            ("kubernetes.pod_subnet", Error),
        ],
        "{e}"
    );
    let shown = e.to_string();
    assert!(
        shown.starts_with(&format!(
            "inventory {file} is invalid: 9 errors, 1 warning\n"
        )),
        "{shown}"
    );
    for p in problems {
        assert_eq!(p.file, file);
        assert!(
            shown.contains(&format!(
                "{}: {file}: {}: {}",
                p.severity, p.field, p.message
            )),
            "{shown}"
        );
        assert!(shown.contains(&format!("hint: {}", p.hint)), "{shown}");
    }
}

#[test]
fn structural_errors_stop_at_serde_with_a_hint() {
    let e = Inventory::from_yaml(
        &replace(BASE, "address: 10.0.0.11", "adress: 10.0.0.11"),
        "bad.yaml",
    )
    .unwrap_err();
    let shown = e.to_string();
    assert!(shown.starts_with("bad.yaml:3:"), "{shown}");
    assert!(
        shown.contains("hosts[0]: unknown field `adress`"),
        "{shown}"
    );
    assert!(shown.contains("hint: did you mean `address`?"), "{shown}");
    assert!(
        !shown.contains(" at line "),
        "the location is given once: {shown}"
    );

    let e = Inventory::from_yaml(&format!("{BASE}etcd: {{client_port: abc}}\n"), "bad.yaml")
        .unwrap_err();
    assert!(
        e.to_string().contains("etcd.client_port: invalid type"),
        "{e}"
    );

    let e = Inventory::from_yaml("# nothing here\n", "empty.yaml").unwrap_err();
    assert!(
        e.to_string().starts_with("empty.yaml: the file is empty"),
        "{e}"
    );

    let e = Inventory::load(&fixture("does-not-exist.yaml")).unwrap_err();
    assert!(matches!(e, InventoryError::Read { .. }), "{e}");
    assert!(e.to_string().contains("does-not-exist.yaml"), "{e}");
}

#[test]
fn missing_required_fields_are_all_reported() {
    let (problems, rendered) =
        invalid("hosts:\n  - {roles: [etcd]}\nkubernetes: {enabled: false}\n");
    let fields: Vec<&str> = problems.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        ["cluster", "hosts[0].name", "hosts[0].address", "hosts"],
        "{rendered}"
    );
}

#[test]
fn ipv6_hosts_work() {
    let text = "\
cluster: six
allow_single_etcd: true
hosts:
  - {name: e1, address: \"fd00::11/64\", roles: [etcd, master]}
vip: {address: \"fd00::100\"}
kubernetes: {pod_subnet: \"fd30::/56\"}
";
    let (inv, warnings) = ok(text);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(inv.etcd_client_urls(), ["https://[fd00::11]:2379"]);
    assert_eq!(inv.etcd_initial_cluster(), "e1=https://[fd00::11]:2380");
    assert_eq!(inv.hosts[0].agent.as_str(), "https://[fd00::11]:7443");
    let (back, _) = ok(&inv.to_yaml().unwrap());
    assert_eq!(back, inv);
}

#[test]
fn empty_sections_mean_their_defaults() {
    let text = "\
cluster: prod
hosts:
  - {name: etcd1, address: 10.0.0.11, roles: [etcd]}
  - {name: etcd2, address: 10.0.0.12, roles: [etcd]}
  - {name: etcd3, address: 10.0.0.13, roles: [etcd]}
etcd:
  # data_dir: /data/etcd
  extra_flags:
pki:
kubernetes:
  enabled: false
vip:
";
    let (inv, warnings) = ok(text);
    assert!(warnings.is_empty(), "{warnings:?}");
    assert_eq!(inv.etcd.data_dir, Path::new("/var/lib/etcd"));
    assert!(inv.vip.is_none());
    let p = one_error(
        &replace(BASE, "roles: [etcd]}", "roles: }"),
        "hosts[0].roles",
    );
    assert_eq!(p.message, "the host has no roles");
}

#[test]
fn wrong_kinds_of_values_are_explained_in_the_file_terms() {
    let e = Inventory::from_yaml(&format!("{BASE}etcd: /usr/bin/etcd\n"), "bad.yaml").unwrap_err();
    let shown = e.to_string();
    assert!(
        shown.contains("etcd: invalid type: string \"/usr/bin/etcd\", expected etcd settings"),
        "{shown}"
    );
    assert!(!shown.contains("Raw"), "{shown}");
    let e = Inventory::from_yaml(&format!("{BASE}etcd: {{client_port: abc}}\n"), "bad.yaml")
        .unwrap_err();
    assert!(e.to_string().contains("expected a number"), "{e}");
    assert!(!e.to_string().contains("i64"), "{e}");
}

#[test]
fn retention_and_catch_up_stall_have_defaults_and_are_checked() {
    let (inv, _) = ok(BASE);
    let r = &inv.etcd.retention;
    assert_eq!(
        (r.snapshots, r.wiped_data_dirs),
        (haop_coordinator::inventory::DEFAULT_SNAPSHOTS_KEPT, 1)
    );
    assert_eq!(r.snapshot_max_age.duration().as_secs(), 168 * 3600);
    assert_eq!(r.wiped_grace.duration().as_secs(), 3600);
    assert_eq!(inv.etcd.catch_up_stall.duration().as_secs(), 120);

    let (inv, _) = ok(&format!(
        "{BASE}etcd:\n  catch_up_stall: 45s\n  retention: {{snapshots: 2, wiped_data_dirs: 0, wiped_grace: 0s, snapshot_max_age: 1h30m}}\n"
    ));
    assert_eq!(inv.etcd.catch_up_stall.duration().as_secs(), 45);
    assert_eq!(inv.etcd.retention.snapshots, 2);
    assert_eq!(inv.etcd.retention.wiped_data_dirs, 0);
    assert!(inv.etcd.retention.wiped_grace.duration().is_zero());
    assert_eq!(
        inv.etcd.retention.snapshot_max_age.duration().as_secs(),
        5400
    );
    // What to_yaml writes loads again to the same settings.
    let (again, _) = ok(&inv.to_yaml().unwrap());
    assert_eq!(again.etcd.retention, inv.etcd.retention);
    assert_eq!(again.etcd.catch_up_stall, inv.etcd.catch_up_stall);

    let p = one_error(
        &format!("{BASE}etcd: {{retention: {{snapshots: 0}}}}\n"),
        "etcd.retention.snapshots",
    );
    assert!(p.message.contains("out of range"), "{}", p.message);
    let p = one_error(
        &format!("{BASE}etcd: {{catch_up_stall: 0s}}\n"),
        "etcd.catch_up_stall",
    );
    assert!(p.message.contains("zero"), "{}", p.message);
    let p = one_error(
        &format!("{BASE}etcd: {{retention: {{wiped_grace: 2d}}}}\n"),
        "etcd.retention.wiped_grace",
    );
    assert!(p.message.contains("unknown unit"), "{}", p.message);
    // A misspelt key is refused where it stands, with the keys allowed there.
    let e = Inventory::from_yaml(
        &format!("{BASE}etcd: {{retention: {{keep: 3}}}}\n"),
        "bad.yaml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("etcd.retention: unknown field `keep`") && e.contains("wiped_grace"),
        "{e}"
    );
}

#[test]
fn snapshot_schedule_copies_and_staleness_have_defaults_and_are_checked() {
    let (inv, _) = ok(BASE);
    let s = &inv.etcd.snapshots;
    assert_eq!(s.interval.duration().as_secs(), 3600);
    assert_eq!(s.copies, 1);
    assert_eq!(s.stale_after.duration().as_secs(), 25 * 3600);

    let (inv, warnings) = ok(&format!(
        "{BASE}etcd:\n  snapshots: {{interval: 30m, copies: 0, stale_after: 0s}}\n"
    ));
    assert!(warnings.is_empty(), "{warnings:?}");
    let s = &inv.etcd.snapshots;
    assert_eq!(
        (
            s.interval.duration().as_secs(),
            s.copies,
            s.stale_after.duration().as_secs()
        ),
        (1800, 0, 0)
    );
    let (again, _) = ok(&inv.to_yaml().unwrap());
    assert_eq!(again.etcd.snapshots, inv.etcd.snapshots);

    let (full, _) = Inventory::load(&fixture("full.yaml")).unwrap();
    assert_eq!(full.etcd.snapshots.copies, 2);

    let p = one_error(
        &format!("{BASE}etcd: {{snapshots: {{interval: 0s}}}}\n"),
        "etcd.snapshots.interval",
    );
    assert!(p.message.contains("zero"), "{}", p.message);
    let p = one_error(
        &format!("{BASE}etcd: {{snapshots: {{copies: -1}}}}\n"),
        "etcd.snapshots.copies",
    );
    assert!(p.message.contains("out of range"), "{}", p.message);
    let p = one_warning(
        &format!("{BASE}etcd: {{snapshots: {{interval: 2h, stale_after: 1h}}}}\n"),
        "etcd.snapshots.stale_after",
    );
    assert!(
        p.message.contains("shorter than the interval"),
        "{}",
        p.message
    );
    let e = Inventory::from_yaml(
        &format!("{BASE}etcd: {{snapshots: {{every: 1h}}}}\n"),
        "bad.yaml",
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("unknown field `every`") && e.contains("stale_after"),
        "{e}"
    );
}
