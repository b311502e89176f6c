//! A status report in Prometheus' text exposition format (`haop status -o prometheus`).
//!
//! Why: a team's monitoring wants numbers and alerts, not a table. Written to a file that
//! node_exporter's textfile collector reads (run `haop status -o prometheus` from a timer), the
//! report becomes metrics that `monitoring/haop-alerts.yaml` alerts on. Pure: the report in,
//! the text out; every metric carries the cluster's name, and every sample is one the report
//! actually observed (a member that did not answer has no raft lag sample, not a zero).
//!
//! Format: https://prometheus.io/docs/instrumenting/exposition_formats/ (HELP and TYPE once per
//! family, label values escaped).

use std::fmt::Write;

use super::{Health, StatusReport};

/// Label values escaped as the format asks: backslash, double quote and newline.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Families and samples in the exposition format, each sample labelled with the cluster (the
/// operator's own metrics are written with it too).
pub(crate) struct Out {
    text: String,
    cluster: String,
}

impl Out {
    pub(crate) fn new(cluster: &str) -> Out {
        Out {
            text: String::new(),
            cluster: cluster.to_string(),
        }
    }

    pub(crate) fn into_text(self) -> String {
        self.text
    }

    pub(crate) fn family(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    pub(crate) fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        let mut l = format!("cluster=\"{}\"", escape(&self.cluster));
        for (k, v) in labels {
            let _ = write!(l, ",{k}=\"{}\"", escape(v));
        }
        let _ = writeln!(self.text, "{name}{{{l}}} {value}");
    }
}

pub(crate) fn flag(b: bool) -> f64 {
    if b {
        1.0
    } else {
        0.0
    }
}

/// The report as Prometheus text.
pub fn render(r: &StatusReport) -> String {
    let mut o = Out::new(&r.cluster);
    o.family(
        "haop_status_health",
        "gauge",
        "The verdict of haop status: 0 healthy, 1 degraded, 2 down.",
    );
    let health = match r.verdict.health {
        Health::Healthy => 0.0,
        Health::Degraded => 1.0,
        Health::Down => 2.0,
    };
    o.sample("haop_status_health", &[], health);
    o.family(
        "haop_status_problems",
        "gauge",
        "How many problems haop status found.",
    );
    o.sample("haop_status_problems", &[], r.problems.len() as f64);

    let e = &r.etcd;
    o.family(
        "haop_etcd_members_expected",
        "gauge",
        "etcd members in the inventory.",
    );
    o.sample("haop_etcd_members_expected", &[], e.expected_members as f64);
    o.family(
        "haop_etcd_members_healthy",
        "gauge",
        "Inventory members that are voters and answered a linearizable read.",
    );
    o.sample("haop_etcd_members_healthy", &[], e.healthy_members as f64);
    o.family(
        "haop_etcd_has_quorum",
        "gauge",
        "1 when a majority of the inventory's members is healthy.",
    );
    o.sample("haop_etcd_has_quorum", &[], flag(e.has_quorum));
    o.family(
        "haop_etcd_has_leader",
        "gauge",
        "1 when the members name a leader.",
    );
    o.sample("haop_etcd_has_leader", &[], flag(e.leader_id.is_some()));
    o.family(
        "haop_etcd_electing",
        "gauge",
        "1 while a leader election is in progress (a quorum answers, none leads yet).",
    );
    o.sample("haop_etcd_electing", &[], flag(e.electing));

    o.family(
        "haop_etcd_member_healthy",
        "gauge",
        "1 when the member answered a linearizable read.",
    );
    for m in &e.members {
        o.sample(
            "haop_etcd_member_healthy",
            &[("member", &m.name)],
            flag(m.healthy),
        );
    }
    o.family(
        "haop_etcd_member_leader",
        "gauge",
        "1 for the member the others name leader.",
    );
    for m in &e.members {
        o.sample(
            "haop_etcd_member_leader",
            &[("member", &m.name)],
            flag(m.is_leader),
        );
    }
    o.family(
        "haop_etcd_member_learner",
        "gauge",
        "1 for a learner (a member being added).",
    );
    for m in &e.members {
        o.sample(
            "haop_etcd_member_learner",
            &[("member", &m.name)],
            flag(m.is_learner),
        );
    }
    o.family(
        "haop_etcd_member_raft_lag",
        "gauge",
        "The leader's raft index minus the member's.",
    );
    for m in &e.members {
        if let Some(lag) = m.raft_lag {
            o.sample(
                "haop_etcd_member_raft_lag",
                &[("member", &m.name)],
                lag as f64,
            );
        }
    }
    o.family(
        "haop_etcd_member_db_size_bytes",
        "gauge",
        "The member's database file size.",
    );
    for m in &e.members {
        if let Some(b) = m.db_size_bytes {
            o.sample(
                "haop_etcd_member_db_size_bytes",
                &[("member", &m.name)],
                b as f64,
            );
        }
    }
    o.family(
        "haop_etcd_member_db_size_in_use_bytes",
        "gauge",
        "The part of the database in use (the rest is freed by a defrag).",
    );
    for m in &e.members {
        if let Some(b) = m.db_size_in_use_bytes {
            o.sample(
                "haop_etcd_member_db_size_in_use_bytes",
                &[("member", &m.name)],
                b as f64,
            );
        }
    }
    o.family(
        "haop_etcd_member_db_quota_bytes",
        "gauge",
        "The backend quota (--quota-backend-bytes; NOSPACE past it).",
    );
    for m in &e.members {
        o.sample(
            "haop_etcd_member_db_quota_bytes",
            &[("member", &m.name)],
            m.db_quota_bytes as f64,
        );
    }
    o.family(
        "haop_etcd_member_alarm",
        "gauge",
        "1 for each active alarm of a member (NOSPACE, CORRUPT).",
    );
    for m in &e.members {
        for a in &m.alarms {
            o.sample(
                "haop_etcd_member_alarm",
                &[("member", &m.name), ("alarm", a)],
                1.0,
            );
        }
    }

    o.family(
        "haop_host_reachable",
        "gauge",
        "1 when the host's agent answered.",
    );
    for h in &r.hosts {
        o.sample(
            "haop_host_reachable",
            &[("host", &h.name)],
            flag(h.reachable),
        );
    }
    o.family(
        "haop_host_clock_skew_seconds",
        "gauge",
        "The host's clock minus the coordinator's.",
    );
    for h in &r.hosts {
        if let Some(ms) = h.clock_skew_ms {
            o.sample(
                "haop_host_clock_skew_seconds",
                &[("host", &h.name)],
                ms as f64 / 1000.0,
            );
        }
    }
    o.family(
        "haop_agent_revocation_generation",
        "gauge",
        "The revocation list number the host's agent enforces.",
    );
    for h in &r.hosts {
        if let Some(g) = h.revocation_generation {
            o.sample(
                "haop_agent_revocation_generation",
                &[("host", &h.name)],
                g as f64,
            );
        }
    }
    if let Some(g) = r.revocation_generation {
        o.family(
            "haop_revocation_generation",
            "gauge",
            "The state dir's revocation list number (every agent should enforce it).",
        );
        o.sample("haop_revocation_generation", &[], g as f64);
    }

    o.family(
        "haop_unit_active",
        "gauge",
        "1 when the unit haop expects on the host is active.",
    );
    for u in &r.units {
        o.sample(
            "haop_unit_active",
            &[("host", &u.host), ("unit", &u.unit)],
            flag(u.is_active()),
        );
    }

    o.family(
        "haop_certificate_days_left",
        "gauge",
        "Days until the soonest certificate of a place expires.",
    );
    for c in &r.certificates {
        if let Some(d) = c.days_left {
            o.sample(
                "haop_certificate_days_left",
                &[("place", &c.location)],
                d as f64,
            );
        }
    }

    if let Some(v) = &r.vip {
        o.family(
            "haop_vip_holders",
            "gauge",
            "How many masters hold the VIP (1 is right; 0 is down, 2 is split brain).",
        );
        o.sample(
            "haop_vip_holders",
            &[("address", &v.address)],
            v.holders.len() as f64,
        );
    }

    if let Some(snap) = &r.snapshots {
        o.family(
            "haop_snapshots_verified",
            "gauge",
            "Snapshots in the state dir that a restore was seen to work for.",
        );
        o.sample("haop_snapshots_verified", &[], snap.verified as f64);
        o.family(
            "haop_snapshots_failed",
            "gauge",
            "Snapshots in the state dir whose verification failed.",
        );
        o.sample("haop_snapshots_failed", &[], snap.failed as f64);
        if let Some(age) = snap.newest_verified_age_seconds {
            o.family(
                "haop_snapshot_newest_verified_age_seconds",
                "gauge",
                "How old the newest verified snapshot is (no sample: none is verified).",
            );
            o.sample("haop_snapshot_newest_verified_age_seconds", &[], age as f64);
        }
    }

    o.family(
        "haop_drift_in_sync",
        "gauge",
        "1 when a node's prepared setting is as haop wrote it.",
    );
    for d in &r.drift {
        if let Some(ok) = d.in_sync {
            o.sample(
                "haop_drift_in_sync",
                &[("host", &d.host), ("item", &d.item)],
                flag(ok),
            );
        }
    }
    o.into_text()
}
