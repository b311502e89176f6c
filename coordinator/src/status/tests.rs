//! The verdict from hand-made reports: what is healthy, degraded and down.

use super::collect::{modules_drift, swap_drift, sysctls_drift};
use super::*;

fn member(name: &str, healthy: bool, leader: bool) -> MemberStatus {
    MemberStatus {
        name: name.into(),
        in_inventory: true,
        in_member_list: true,
        id: Some(format!(
            "{:x}",
            name.len() * 7 + name.as_bytes()[name.len() - 1] as usize
        )),
        endpoint: Some(format!("https://{name}:2379")),
        healthy,
        health_latency_ms: healthy.then_some(1.5),
        error: (!healthy).then(|| "connection refused".into()),
        is_leader: leader,
        is_learner: false,
        raft_term: Some(2),
        raft_index: Some(10),
        raft_applied_index: Some(10),
        raft_lag: Some(0),
        db_size_bytes: Some(20_480),
        db_size_in_use_bytes: Some(16_384),
        db_quota_bytes: DEFAULT_DB_QUOTA_BYTES,
        version: Some("3.5.16".into()),
        alarms: vec![],
        peer_urls: vec![format!("https://{name}:2380")],
        expected_peer_url: Some(format!("https://{name}:2380")),
        peer_urls_match: true,
    }
}

fn host(name: &str) -> HostStatus {
    HostStatus {
        name: name.into(),
        roles: vec!["etcd".into()],
        agent_endpoint: format!("https://{name}:7443"),
        reachable: true,
        error: None,
        agent_version: Some("0.1.0".into()),
        uptime_seconds: Some(100),
        service_manager: Some("supervisor".into()),
        clock_skew_ms: Some(3),
        latency_ms: Some(2),
        moved_aside: Some(MovedAside {
            count: 1,
            bytes: 3 * 1024 * 1024,
        }),
        revocation_generation: Some(2),
        revocation_pushed: false,
        revocation_error: None,
    }
}

fn healthy() -> StatusReport {
    StatusReport {
        schema_version: SCHEMA_VERSION,
        cluster: "c".into(),
        generated_at: "2025-01-01T00:00:00Z".into(),
        elapsed_ms: 5,
        timeout_ms: 2000,
        revocation_generation: Some(2),
        verdict: Verdict {
            health: Health::Healthy,
            exit_code: 0,
            summary: String::new(),
        },
        problems: vec![],
        hosts: vec![host("etcd1"), host("etcd2"), host("etcd3"), host("master1")],
        etcd: EtcdSection {
            expected_members: 3,
            healthy_members: 3,
            quorum_needed: 2,
            has_quorum: true,
            answering_members: 3,
            electing: false,
            leader_id: Some("1".into()),
            leader: Some("etcd1".into()),
            member_list_error: None,
            members: vec![
                member("etcd1", true, true),
                member("etcd2", true, false),
                member("etcd3", true, false),
            ],
        },
        units: vec![],
        vip: Some(VipSection {
            address: "10.0.0.10".into(),
            interface: "eth0".into(),
            holders: vec!["master1".into()],
            holder: Some("master1".into()),
            masters: vec![VipMaster {
                host: "master1".into(),
                reachable: true,
                holds_vip: Some(true),
                keepalived: Some("active".into()),
                vrrp_state: "MASTER".into(),
            }],
        }),
        certificates: vec![],
        drift: vec![],
        kubernetes: Some(KubernetesSection {
            ca_source: Some("master1".into()),
            ca_error: None,
            endpoints: vec![
                api(ApiVia::Vip, None, true),
                api(ApiVia::Master, Some("master1"), true),
            ],
        }),
        snapshots: None,
    }
}

fn api(via: ApiVia, host: Option<&str>, ready: bool) -> ApiEndpoint {
    let addr = if host.is_some() {
        "10.0.0.21"
    } else {
        "10.0.0.10"
    };
    ApiEndpoint {
        via,
        host: host.map(str::to_string),
        url: format!("https://{addr}:6443/readyz"),
        ready,
        http_status: Some(if ready { 200 } else { 500 }),
        detail: Some(
            if ready {
                "ok"
            } else {
                "[-]etcd failed: reason withheld"
            }
            .into(),
        ),
        error: None,
        latency_ms: Some(1.2),
    }
}

fn assessed(mut r: StatusReport) -> StatusReport {
    let (problems, verdict) = assess(&r);
    r.problems = problems;
    r.verdict = verdict;
    r
}

#[test]
fn a_healthy_cluster_has_no_problems() {
    let (problems, v) = assess(&healthy());
    assert!(problems.is_empty(), "{problems:?}");
    assert_eq!((v.health, v.exit_code), (Health::Healthy, 0));
    assert!(v.summary.contains("VIP on master1"), "{}", v.summary);
}

#[test]
fn one_member_down_is_degraded_and_named() {
    let mut r = healthy();
    r.etcd.members[2] = member("etcd3", false, false);
    r.etcd.healthy_members = 2;
    let (problems, v) = assess(&r);
    assert_eq!(v.exit_code, 1, "{problems:?}");
    assert!(problems.iter().any(|p| p.host.as_deref() == Some("etcd3")));
    assert!(v.summary.contains("etcd3"), "{}", v.summary);
}

#[test]
fn lost_quorum_or_vip_is_down_and_listed_first() {
    let mut r = healthy();
    r.hosts[3].reachable = false;
    r.etcd.healthy_members = 1;
    r.etcd.has_quorum = false;
    let (problems, v) = assess(&r);
    assert_eq!(v.exit_code, 2);
    assert_eq!(problems[0].severity, Health::Down);

    let mut r = healthy();
    let vip = r.vip.as_mut().unwrap();
    vip.holders.clear();
    vip.holder = None;
    vip.masters[0].holds_vip = Some(false);
    assert_eq!(assess(&r).1.exit_code, 2);
    // A master that could not be asked may hold it: degraded, not down.
    let vip = r.vip.as_mut().unwrap();
    vip.masters[0].holds_vip = None;
    assert_eq!(assess(&r).1.exit_code, 1);
}

#[test]
fn an_election_in_progress_is_degraded_not_a_lost_quorum() {
    // Right after the leader died: the survivors answer their status, no health read
    // succeeds yet, and the leader they name does not answer.
    let mut r = healthy();
    r.etcd.healthy_members = 0;
    r.etcd.has_quorum = false;
    r.etcd.answering_members = 2;
    r.etcd.electing = true;
    let (problems, v) = assess(&r);
    assert_eq!(v.health, Health::Degraded, "{problems:?}");
    assert!(
        problems[0].message.contains("electing a leader"),
        "{problems:?}"
    );
    assert!(
        !problems.iter().any(|p| p.message.contains("no quorum")),
        "{problems:?}"
    );
    let metrics = crate::status::prometheus::render(&assessed(r));
    assert!(
        metrics.contains("haop_etcd_electing{cluster=\"c\"} 1"),
        "{metrics}"
    );
}

#[test]
fn unreachable_host_expiring_cert_skew_and_drift_degrade() {
    let mut r = healthy();
    r.hosts[0].reachable = false;
    assert_eq!(assess(&r).1.exit_code, 1);

    let mut r = healthy();
    r.hosts[1].clock_skew_ms = Some(-5000);
    assert_eq!(assess(&r).1.exit_code, 1);

    let mut r = healthy();
    r.certificates.push(CertSummary {
        location: "etcd1".into(),
        certificates: 3,
        soonest_path: Some("/etc/kubernetes/pki/etcd/peer.crt".into()),
        soonest_subject: None,
        soonest_not_after: None,
        days_left: Some(12),
        errors: vec![],
    });
    let (p, v) = assess(&r);
    assert_eq!(v.exit_code, 1);
    assert!(p[0].message.contains("expires in 12 days"), "{p:?}");
    assert!(!p[0].message.contains("kubeadm"), "{p:?}");

    // One of kubeadm's: the way to renew it is kubeadm's.
    let mut r = healthy();
    r.certificates.push(CertSummary {
        location: "master1".into(),
        certificates: 8,
        soonest_path: Some("/etc/kubernetes/pki/apiserver.crt".into()),
        soonest_subject: None,
        soonest_not_after: None,
        days_left: Some(-2),
        errors: vec![],
    });
    let (p, v) = assess(&r);
    assert_eq!(v.exit_code, 1);
    assert_eq!(
        p[0].message,
        "certificate /etc/kubernetes/pki/apiserver.crt on master1 expired 2 days ago (kubeadm's: \
         `kubeadm certs renew all` on master1, then restart the control plane's static pods)"
    );

    let mut r = healthy();
    r.drift.push(DriftRow {
        host: "master1".into(),
        item: "swap".into(),
        in_sync: Some(false),
        detail: "swap active on /dev/sda2".into(),
    });
    assert_eq!(assess(&r).1.exit_code, 1);
}

#[test]
fn members_on_mixed_versions_degrade_and_say_what_to_run() {
    let mut r = healthy();
    r.etcd.members[0].version = Some("3.5.30".into());
    let r = assessed(r);
    assert_eq!(r.verdict.health, Health::Degraded);
    let p = &r.problems[0];
    assert!(
        p.message
            .contains("etcd2, etcd3 on 3.5.16; etcd1 on 3.5.30"),
        "{}",
        p.message
    );
    assert!(p.message.contains("--rollback"), "{}", p.message);
}

#[test]
fn an_agent_behind_the_state_dirs_revocation_list_degrades_and_is_named() {
    let mut r = healthy();
    r.revocation_generation = Some(3);
    for h in &mut r.hosts {
        h.revocation_generation = Some(3);
    }
    r.hosts[1].revocation_generation = Some(1);
    r.hosts[2].revocation_error = Some("Unavailable: connection reset".into());
    r.hosts[2].revocation_generation = Some(2);
    let r = assessed(r);
    assert_eq!(r.verdict.health, Health::Degraded);
    let named: Vec<&str> = r
        .problems
        .iter()
        .filter_map(|p| p.host.as_deref())
        .collect();
    assert_eq!(named, ["etcd2", "etcd3"]);
    assert!(
        r.problems[0].message.contains("revocation list 1"),
        "{}",
        r.problems[0].message
    );
    assert!(
        r.problems[1].message.contains("connection reset"),
        "{}",
        r.problems[1].message
    );
    let table = crate::status::table::render(&r, false);
    assert!(table.contains("1 < 3"), "{table}");
}

#[test]
fn a_master_whose_api_server_is_not_ready_is_named_and_degrades() {
    let mut r = healthy();
    let k = r.kubernetes.as_mut().unwrap();
    k.endpoints[1] = api(ApiVia::Master, Some("master1"), false);
    let (problems, v) = assess(&r);
    assert_eq!(
        (v.health, v.exit_code),
        (Health::Degraded, 1),
        "{problems:?}"
    );
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].section, Section::Kubernetes);
    assert_eq!(problems[0].host.as_deref(), Some("master1"));
    assert_eq!(
        problems[0].message,
        "the Kubernetes API server on master1 is not ready: HTTP 500: [-]etcd failed: reason withheld"
    );

    // No HTTP answer at all: the error is the reason.
    let k = r.kubernetes.as_mut().unwrap();
    k.endpoints[1].http_status = None;
    k.endpoints[1].detail = None;
    k.endpoints[1].error = Some("cannot connect: Connection refused (os error 111)".into());
    let (problems, _) = assess(&r);
    assert!(
        problems[0]
            .message
            .ends_with("not ready: cannot connect: Connection refused (os error 111)"),
        "{problems:?}"
    );
}

#[test]
fn the_api_not_ready_through_the_vip_degrades_and_is_not_repeated_without_a_holder() {
    let mut r = healthy();
    r.kubernetes.as_mut().unwrap().endpoints[0] = api(ApiVia::Vip, None, false);
    let (problems, v) = assess(&r);
    assert_eq!(v.exit_code, 1, "degraded, not down: {problems:?}");
    assert_eq!(problems.len(), 1);
    assert_eq!(problems[0].host, None);
    assert!(
        problems[0].message.contains("through the VIP is not ready"),
        "{problems:?}"
    );

    // Nobody holds the VIP: that is the (down) problem; the VIP's /readyz adds nothing.
    let vip = r.vip.as_mut().unwrap();
    vip.holders.clear();
    vip.holder = None;
    vip.masters[0].holds_vip = Some(false);
    let (problems, v) = assess(&r);
    assert_eq!(v.exit_code, 2);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].section, Section::Vip);
}

#[test]
fn without_the_cluster_ca_one_problem_says_so() {
    let mut r = healthy();
    let k = r.kubernetes.as_mut().unwrap();
    k.ca_source = None;
    k.ca_error = Some("no master gave the cluster CA: master1: refused".into());
    for e in &mut k.endpoints {
        *e = api(e.via, e.host.as_deref(), false);
        e.http_status = None;
        e.detail = None;
        e.error = Some("not asked: no Kubernetes CA to verify it with".into());
    }
    let (problems, v) = assess(&r);
    assert_eq!(v.exit_code, 1);
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert!(
        problems[0].message.contains("master1: refused"),
        "{problems:?}"
    );
    // Kubernetes disabled: no section, nothing to say.
    let mut r = healthy();
    r.kubernetes = None;
    let (problems, v) = assess(&r);
    assert!(problems.is_empty());
    assert!(!v.summary.contains("Kubernetes"), "{}", v.summary);
}

#[test]
fn the_kubernetes_table_puts_the_master_not_ready_first() {
    let mut r = healthy();
    let k = r.kubernetes.as_mut().unwrap();
    k.endpoints
        .push(api(ApiVia::Master, Some("master2"), false));
    let text = table::render(&assessed(r), false);
    let kube = &text[text.find("KUBERNETES").unwrap()..text.find("CERTIFICATES").unwrap()];
    assert!(
        kube.starts_with("KUBERNETES  API /readyz: 2/3 ready (verified with the CA from master1)"),
        "{kube}"
    );
    let rows: Vec<&str> = kube.lines().skip(2).filter(|l| !l.is_empty()).collect();
    assert!(
        rows[0].starts_with("master2") && rows[0].contains("not ready"),
        "{kube}"
    );
    assert!(
        rows[0].ends_with("HTTP 500: [-]etcd failed: reason withheld"),
        "{kube}"
    );
    assert!(
        rows[1].starts_with("VIP") && rows[1].contains("HTTP 200: ok"),
        "{kube}"
    );
    assert!(text.contains("the Kubernetes API server on master2 is not ready"));
    assert!(assessed(healthy())
        .verdict
        .summary
        .ends_with(", Kubernetes API ready"));
}

#[test]
fn drift_parsing_follows_what_apply_writes() {
    let modules = "# Managed by haop.\nbr_netfilter\noverlay\nip_vs\nip_vs_rr\nip_vs_wrr\nip_vs_sh\nnf_conntrack\n";
    assert_eq!(modules_drift(&Ok(Some(modules.into()))).0, Some(true));
    let (ok, why) = modules_drift(&Ok(Some("overlay\n".into())));
    assert_eq!(ok, Some(false));
    assert!(why.contains("br_netfilter"), "{why}");
    assert_eq!(modules_drift(&Ok(None)).0, Some(false));
    assert_eq!(modules_drift(&Err("denied".into())).0, None);

    let sysctls = "# Managed by haop.\nnet.bridge.bridge-nf-call-ip6tables = 1\n\
                   net.bridge.bridge-nf-call-iptables = 1\nnet.ipv4.ip_forward = 1\n";
    assert_eq!(sysctls_drift(&Ok(Some(sysctls.into()))).0, Some(true));
    let (ok, why) = sysctls_drift(&Ok(Some(sysctls.replace("ip_forward = 1", "ip_forward=0"))));
    assert_eq!(ok, Some(false));
    assert!(why.contains("net.ipv4.ip_forward = 0"), "{why}");

    let mut swap = haop_proto::v1::Swap::default();
    assert_eq!(swap_drift(Some(&swap)).0, Some(true));
    swap.fstab_entries = 1;
    assert_eq!(swap_drift(Some(&swap)).0, Some(false));
}

#[test]
fn quota_comes_from_extra_flags() {
    assert_eq!(db_quota_bytes(&[]), DEFAULT_DB_QUOTA_BYTES);
    assert_eq!(
        db_quota_bytes(&["--quota-backend-bytes=8589934592".into()]),
        8_589_934_592
    );
}

#[test]
fn the_table_puts_problems_first_and_the_verdict_last() {
    let mut r = healthy();
    r.etcd.members[2] = member("etcd3", false, false);
    let (problems, verdict) = assess(&r);
    r.problems = problems;
    r.verdict = verdict;
    let text = table::render(&r, false);
    assert!(!text.contains('\x1b'));
    let problems_at = text.find("PROBLEMS").unwrap();
    assert!(problems_at < text.find("HOSTS").unwrap());
    assert!(text
        .trim_end()
        .lines()
        .last()
        .unwrap()
        .starts_with("verdict: degraded"));
    // In the etcd table, etcd3 comes before the healthy members.
    let etcd = &text[text.find("MEMBER").unwrap()..];
    assert!(
        etcd.find("etcd3").unwrap() < etcd.find("etcd1").unwrap(),
        "{etcd}"
    );
    assert!(table::render(&r, true).contains("\x1b[31m"));
    // What recoveries moved aside on each etcd host, and its space.
    assert!(text.contains("MOVED ASIDE"), "{text}");
    assert!(text.contains("1 (3.0 MiB)"), "{text}");
}

#[test]
fn reports_follow_the_documented_schema() {
    let schema: serde_json::Value =
        serde_json::from_str(include_str!("../../../docs/status-schema.json")).unwrap();
    let validator = jsonschema::validator_for(&schema).expect("the schema compiles");
    let mut down = healthy();
    down.vip = None;
    down.etcd.members[1] = member("etcd2", false, false);
    down.etcd.members[2].in_inventory = false;
    down.hosts[0].reachable = false;
    down.hosts[0].error = Some("refused".into());
    let k = down.kubernetes.as_mut().unwrap();
    k.ca_source = None;
    k.ca_error = Some("no master gave the cluster CA".into());
    k.endpoints[1].http_status = None;
    k.endpoints[1].error = Some("not asked".into());
    k.endpoints[1].latency_ms = None;
    let mut disabled = healthy();
    disabled.kubernetes = None;
    let mut one_not_ready = healthy();
    one_not_ready.kubernetes.as_mut().unwrap().endpoints[1] =
        api(ApiVia::Master, Some("master1"), false);
    let mut with_snapshots = healthy();
    with_snapshots.snapshots = Some(SnapshotsSection {
        total: 2,
        verified: 1,
        failed: 1,
        newest_verified: Some("20261207T000000.000Z-etcd1.snap".into()),
        newest_verified_at: Some("2026-12-07T00:00:00Z".into()),
        newest_verified_age_seconds: Some(90_000),
        newest_verified_copies: vec!["etcd2".into()],
        stale_after_seconds: 3600,
    });
    let mut none_verified = healthy();
    none_verified.snapshots = Some(SnapshotsSection {
        total: 0,
        verified: 0,
        failed: 0,
        newest_verified: None,
        newest_verified_at: None,
        newest_verified_age_seconds: None,
        newest_verified_copies: Vec::new(),
        stale_after_seconds: 0,
    });
    for mut r in [
        healthy(),
        down,
        disabled,
        one_not_ready,
        with_snapshots,
        none_verified,
    ] {
        let (problems, verdict) = assess(&r);
        r.problems = problems;
        r.verdict = verdict;
        let value = serde_json::to_value(&r).unwrap();
        let errors: Vec<String> = validator
            .iter_errors(&value)
            .map(|e| format!("{} at {}", e, e.instance_path()))
            .collect();
        assert!(errors.is_empty(), "{errors:#?}");
    }
    // An undocumented field is refused: the schema lists every field.
    let mut value = serde_json::to_value(healthy()).unwrap();
    value["surprise"] = serde_json::json!(1);
    assert!(!validator.is_valid(&value));
}

#[test]
fn the_report_as_prometheus_metrics_follows_the_format_and_carries_every_member() {
    let mut r = assessed(healthy());
    r.etcd.members[2].healthy = false;
    r.etcd.members[2].raft_lag = None;
    r.etcd.members[1].alarms = vec!["NOSPACE".into()];
    r.etcd.members[0].db_size_bytes = Some(1_000);
    let text = crate::status::prometheus::render(&r);
    assert!(
        text.contains("haop_etcd_member_healthy{cluster=\"c\",member=\"etcd3\"} 0\n"),
        "{text}"
    );
    assert!(
        text.contains("haop_etcd_member_healthy{cluster=\"c\",member=\"etcd1\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains(
            "haop_etcd_member_alarm{cluster=\"c\",member=\"etcd2\",alarm=\"NOSPACE\"} 1\n"
        ),
        "{text}"
    );
    assert!(
        text.contains("haop_etcd_member_db_size_bytes{cluster=\"c\",member=\"etcd1\"} 1000\n"),
        "{text}"
    );
    // A member that did not answer has no lag sample, rather than a made-up zero.
    assert!(
        !text.contains("haop_etcd_member_raft_lag{cluster=\"c\",member=\"etcd3\"}"),
        "{text}"
    );
    assert!(
        text.contains("haop_vip_holders{cluster=\"c\",address=\"10.0.0.10\"} 1\n"),
        "{text}"
    );
    // HELP and TYPE once per family.
    let types: Vec<&str> = text.lines().filter(|l| l.starts_with("# TYPE ")).collect();
    let mut unique = types.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(types.len(), unique.len(), "{text}");
    // The reference parser and linter agrees (promtool from Debian's prometheus, which
    // scripts/setup installs).
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (apt-get install prometheus; scripts/setup does)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn label_values_are_escaped() {
    let mut r = healthy();
    r.cluster = "a\"b\\c".into();
    let text = crate::status::prometheus::render(&r);
    assert!(text.contains("cluster=\"a\\\"b\\\\c\""), "{text}");
}

#[test]
fn snapshots_degrade_when_none_is_verified_or_the_newest_verified_is_stale() {
    let section = |age: Option<i64>, stale_after: u64| SnapshotsSection {
        total: 3,
        verified: u32::from(age.is_some()) as usize,
        failed: 1,
        newest_verified: age.map(|_| "20261207T000000.000Z-etcd1.snap".into()),
        newest_verified_at: age.map(|_| "2026-12-07T00:00:00Z".into()),
        newest_verified_age_seconds: age,
        newest_verified_copies: vec!["etcd2".into()],
        stale_after_seconds: stale_after,
    };
    let day: u64 = 86_400;
    let mut r = healthy();
    r.snapshots = Some(section(Some(3600), day));
    assert_eq!(assessed(r.clone()).verdict.health, Health::Healthy);
    r.snapshots = Some(section(Some(day as i64 + 1), day));
    let a = assessed(r.clone());
    assert_eq!(a.verdict.health, Health::Degraded);
    assert_eq!(a.problems[0].section, Section::Snapshots);
    assert!(
        a.problems[0].message.contains("1d 0h old")
            && a.problems[0].message.contains("stale_after"),
        "{}",
        a.problems[0].message
    );
    r.snapshots = Some(section(None, day));
    let a = assessed(r.clone());
    assert_eq!(a.verdict.health, Health::Degraded);
    assert!(a.problems[0].message.contains("no verified etcd snapshot"));
    // Off: no snapshot at all is no problem.
    r.snapshots = Some(section(None, 0));
    assert_eq!(assessed(r.clone()).verdict.health, Health::Healthy);
    // The table says it either way.
    r.snapshots = Some(section(Some(7300), day));
    let text = crate::status::table::render(&assessed(r), false);
    assert!(
        text.contains(
            "newest verified 20261207T000000.000Z-etcd1.snap, 2h 1m old, copies on etcd2"
        ),
        "{text}"
    );
}

#[test]
fn the_snapshots_section_reads_the_state_dir() {
    use crate::etcd::snapshots::{meta, snapshot_dir};
    let dir = tempfile::tempdir().unwrap();
    let snaps = snapshot_dir(dir.path(), "c");
    std::fs::create_dir_all(&snaps).unwrap();
    let now = 1_900_000_000;
    for (name, age, ok) in [
        ("a", 7200, Some(true)),
        ("b", 3600, Some(false)),
        ("c", 60, None),
    ] {
        let path = snaps.join(format!("2030010{}T000000.000Z-{name}.snap", 3 - age / 3600));
        std::fs::write(&path, vec![0u8; 10]).unwrap();
        let mut m = meta::sample("c", now - age);
        m.file_size = 10;
        m.copies = vec![meta::CopyRecord {
            host: "etcd3".into(),
            path: "/x".into(),
            at: String::new(),
        }];
        m.verification = ok.map(|ok| meta::Verification {
            at: String::new(),
            at_unix: now,
            ok,
            detail: String::new(),
            restored: None,
            etcd_version: None,
            seconds: 0.0,
        });
        meta::write(&path, &m).unwrap();
    }
    let s = SnapshotsSection::read(dir.path(), "c", std::time::Duration::from_secs(3600), now);
    assert_eq!((s.total, s.verified, s.failed), (3, 1, 1));
    assert_eq!(s.newest_verified_age_seconds, Some(7200));
    assert!(s.newest_verified.unwrap().ends_with("-a.snap"));
    assert_eq!(s.newest_verified_copies, ["etcd3"]);
}
