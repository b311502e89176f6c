//! The systemd units the packages ship, read by the agent's own unit-file parser (the one its
//! built-in supervisor runs units with): they parse, and they run what the README says.

use haop_agent::units::unitfile::{self, RestartPolicy, ServiceSpec};

const SNAPSHOTS: &str = include_str!("../../haop/haop-snapshots@.service");
const OPERATOR: &str = include_str!("../../haop/haop-operator@.service");
const AGENT: &str = include_str!("../../haop-agent/haop-agent.service");

fn spec(text: &str) -> ServiceSpec {
    let unit = unitfile::parse(text).unwrap_or_else(|e| panic!("{e}"));
    ServiceSpec::from_unit(&unit).unwrap_or_else(|e| panic!("{e}"))
}

/// The template as systemd instantiates it for `haop-snapshots@prod` (the parser takes no
/// specifiers: it runs the agent's own units).
fn instance(name: &str) -> String {
    SNAPSHOTS.replace("%i", name)
}

#[test]
fn the_snapshot_schedule_unit_runs_haop_etcd_snapshot_schedule_on_the_instances_inventory() {
    let s = spec(&instance("prod"));
    assert_eq!(s.exec_start.program, "/usr/bin/haop");
    assert_eq!(
        s.exec_start.args,
        ["etcd", "snapshot", "schedule", "-f", "/etc/haop/prod.yaml"]
    );
    // A failed round is retried by haop itself; systemd restarts only a haop that exited on
    // an error, and stops it with SIGTERM, which haop ends on cleanly.
    assert_eq!(s.restart, RestartPolicy::OnFailure);
    let default = spec("[Service]\nExecStart=/bin/true\n").kill_signal;
    assert_eq!(s.kill_signal, default, "SIGTERM, systemd's default");
    let unit = unitfile::parse(&instance("prod")).unwrap();
    let install = unit.section("Install").expect("[Install]");
    assert_eq!(
        install.get("WantedBy").map(|e| e.value.as_str()),
        Some("multi-user.target")
    );
    let service = unit.section("Service").unwrap();
    assert_eq!(
        service.get("ReadWritePaths").map(|e| e.value.as_str()),
        Some("/var/lib/haop"),
        "the state dir is the one place it writes"
    );
}

#[test]
fn the_operator_unit_runs_haop_operator_run_with_the_instances_files() {
    let s = spec(&OPERATOR.replace("%i", "prod"));
    assert_eq!(s.exec_start.program, "/usr/bin/haop");
    assert_eq!(
        s.exec_start.args,
        [
            "operator",
            "run",
            "-f",
            "/etc/haop/prod.yaml",
            "--config",
            "/etc/haop/prod.operator.toml"
        ]
    );
    assert_eq!(s.restart, RestartPolicy::OnFailure);
}

#[test]
fn the_agent_unit_still_parses() {
    let s = spec(AGENT);
    assert_eq!(s.exec_start.program, "/usr/bin/haop-agent");
}
