//! What the operator's leader does in one round, decided from a status report alone. Pure, so
//! that every rule is a unit test: never act without quorum or during an election, heal before
//! anything else, one defragmentation per round with the leader last and never on an
//! unhealthy cluster, a snapshot when the newest verified one is older than the schedule,
//! certificate renewal only when the config asks for it.

use crate::status::{EtcdSection, StatusReport};

use super::config::OperatorConfig;

/// One round's decision.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    /// Nothing may be done, and why (said in the log and the metrics).
    Hold(String),
    /// Something to do (in this order), and certificate warnings to say.
    Act {
        steps: Vec<Step>,
        warnings: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Recover the failed members (`haop etcd heal`), naming them.
    Heal(Vec<String>),
    /// A snapshot round (save, verify, copy, prune).
    Snapshot,
    /// Defragment this member (its client endpoint).
    Defrag { member: String, endpoint: String },
    /// Renew certificates with fewer days left than this (`haop certs renew --expiring`).
    RenewCertificates { within_days: i64 },
}

/// Why the loop must not act on this cluster now, if it must not.
pub fn hold_reason(etcd: &EtcdSection) -> Option<String> {
    if etcd.expected_members == 0 {
        return Some("the inventory has no etcd member".to_string());
    }
    if etcd.electing {
        return Some(format!(
            "etcd is electing a leader ({} of {} members answer); waiting for it",
            etcd.answering_members, etcd.expected_members
        ));
    }
    if !etcd.has_quorum {
        return Some(format!(
            "etcd has no quorum ({} of {} members healthy, {} needed): the operator does not act \
             without quorum; bringing the cluster back from a snapshot is a person's decision \
             (haop etcd restore)",
            etcd.healthy_members, etcd.expected_members, etcd.quorum_needed
        ));
    }
    None
}

/// The members that are not healthy voters, in inventory order.
pub fn failed_members(etcd: &EtcdSection) -> Vec<String> {
    etcd.members
        .iter()
        .filter(|m| m.in_inventory && !(m.healthy && m.in_member_list && !m.is_learner))
        .map(|m| m.name.clone())
        .collect()
}

/// The member to defragment this round, if any: healthy cluster only, followers before the
/// leader, the one with the most free space first.
pub fn defrag_candidate(etcd: &EtcdSection, config: &OperatorConfig) -> Option<(String, String)> {
    let p = &config.defrag;
    if !p.enabled || !failed_members(etcd).is_empty() || etcd.leader.is_none() {
        return None;
    }
    let wanted = |m: &&crate::status::MemberStatus| {
        let (Some(size), Some(used)) = (m.db_size_bytes, m.db_size_in_use_bytes) else {
            return false;
        };
        let size = size.max(0) as u64;
        let free = size.saturating_sub(used.max(0) as u64);
        size >= p.min_db_bytes && size > 0 && free as f64 / size as f64 >= p.min_free_ratio
    };
    let free = |m: &crate::status::MemberStatus| {
        m.db_size_bytes.unwrap_or(0) - m.db_size_in_use_bytes.unwrap_or(0)
    };
    let pick = |leader: bool| {
        etcd.members
            .iter()
            .filter(|m| m.in_inventory && m.is_leader == leader)
            .filter(wanted)
            .max_by_key(|m| free(m))
            .and_then(|m| Some((m.name.clone(), m.endpoint.clone()?)))
    };
    pick(false).or_else(|| pick(true))
}

/// Whether the snapshot schedule wants a snapshot: the newest verified one is older than
/// `etcd.snapshots.interval`, or there is none (an interval of 0 turns the schedule off).
pub fn snapshot_due(report: &StatusReport, inventory: &crate::inventory::Inventory) -> bool {
    let every = inventory.etcd.snapshots.interval.duration();
    if every.is_zero() {
        return false;
    }
    match report
        .snapshots
        .as_ref()
        .and_then(|s| s.newest_verified_age_seconds)
    {
        Some(age) => age >= every.as_secs() as i64,
        None => true,
    }
}

/// The round's decision. `snapshot_due`: the schedule says a snapshot is due (the newest
/// verified one is older than `etcd.snapshots.interval`, or there is none).
pub fn decide(report: &StatusReport, config: &OperatorConfig, snapshot_due: bool) -> Decision {
    if let Some(why) = hold_reason(&report.etcd) {
        return Decision::Hold(why);
    }
    let mut steps = Vec::new();
    let failed = failed_members(&report.etcd);
    if !failed.is_empty() {
        if config.heal {
            steps.push(Step::Heal(failed));
        }
        // Nothing else on a cluster that is not whole.
        return Decision::Act {
            steps,
            warnings: Vec::new(),
        };
    }
    if config.snapshots && snapshot_due {
        steps.push(Step::Snapshot);
    }
    if let Some((member, endpoint)) = defrag_candidate(&report.etcd, config) {
        steps.push(Step::Defrag { member, endpoint });
    }
    let mut warnings = Vec::new();
    let mut soonest: Option<i64> = None;
    for c in &report.certificates {
        let Some(days) = c.days_left else { continue };
        soonest = Some(soonest.map_or(days, |s| s.min(days)));
        if days < config.certificates.warn_days {
            warnings.push(format!(
                "a certificate in {} expires in {days} day(s): {}{}",
                c.location,
                c.soonest_path.as_deref().unwrap_or("?"),
                if config.certificates.renew {
                    String::new()
                } else {
                    " (renewal by the operator is off: haop certs renew, or certificates.renew)"
                        .to_string()
                }
            ));
        }
    }
    if config.certificates.renew && soonest.is_some_and(|d| d < config.certificates.renew_days) {
        steps.push(Step::RenewCertificates {
            within_days: config.certificates.renew_days,
        });
    }
    Decision::Act { steps, warnings }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::MemberStatus;

    fn member(name: &str, leader: bool, size: i64, used: i64) -> MemberStatus {
        MemberStatus {
            name: name.into(),
            in_inventory: true,
            in_member_list: true,
            id: Some("1".into()),
            endpoint: Some(format!("https://{name}:2379")),
            healthy: true,
            health_latency_ms: None,
            error: None,
            is_leader: leader,
            is_learner: false,
            raft_term: Some(2),
            raft_index: Some(10),
            raft_applied_index: Some(10),
            raft_lag: Some(0),
            db_size_bytes: Some(size),
            db_size_in_use_bytes: Some(used),
            db_quota_bytes: 2 << 30,
            version: Some("3.5.16".into()),
            alarms: vec![],
            peer_urls: vec![],
            expected_peer_url: None,
            peer_urls_match: true,
        }
    }

    fn section(members: Vec<MemberStatus>) -> EtcdSection {
        let n = members.len();
        EtcdSection {
            expected_members: n,
            healthy_members: members.iter().filter(|m| m.healthy).count(),
            answering_members: n,
            quorum_needed: n / 2 + 1,
            has_quorum: members.iter().filter(|m| m.healthy).count() > n / 2,
            electing: false,
            leader_id: Some("1".into()),
            leader: members.iter().find(|m| m.is_leader).map(|m| m.name.clone()),
            member_list_error: None,
            members,
        }
    }

    const MIB: i64 = 1024 * 1024;

    #[test]
    fn followers_are_defragmented_before_the_leader_and_the_freest_first() {
        let c = OperatorConfig::default();
        let e = section(vec![
            member("etcd1", true, 900 * MIB, 100 * MIB),
            member("etcd2", false, 400 * MIB, 150 * MIB),
            member("etcd3", false, 600 * MIB, 100 * MIB),
        ]);
        assert_eq!(defrag_candidate(&e, &c).unwrap().0, "etcd3");
        let e = section(vec![
            member("etcd1", true, 900 * MIB, 100 * MIB),
            member("etcd2", false, 120 * MIB, 100 * MIB),
            member("etcd3", false, 50 * MIB, 10 * MIB),
        ]);
        assert_eq!(defrag_candidate(&e, &c).unwrap().0, "etcd1", "leader last");
    }

    #[test]
    fn small_or_full_databases_are_left_alone() {
        let c = OperatorConfig::default();
        let e = section(vec![
            member("etcd1", true, 50 * MIB, MIB),
            member("etcd2", false, 800 * MIB, 700 * MIB),
        ]);
        assert_eq!(defrag_candidate(&e, &c), None);
    }

    #[test]
    fn nothing_but_healing_on_a_cluster_that_is_not_whole() {
        let c = OperatorConfig::default();
        let mut down = member("etcd3", false, 600 * MIB, 100 * MIB);
        down.healthy = false;
        let e = section(vec![
            member("etcd1", true, 900 * MIB, 100 * MIB),
            member("etcd2", false, 900 * MIB, 100 * MIB),
            down,
        ]);
        assert_eq!(defrag_candidate(&e, &c), None);
        let report = report(e);
        assert_eq!(
            decide(&report, &c, true),
            Decision::Act {
                steps: vec![Step::Heal(vec!["etcd3".into()])],
                warnings: vec![]
            }
        );
    }

    #[test]
    fn no_quorum_and_elections_hold_everything() {
        let c = OperatorConfig::default();
        let mut a = member("etcd1", false, 1, 1);
        a.healthy = false;
        let mut b = member("etcd2", false, 1, 1);
        b.healthy = false;
        let e = section(vec![a, b, member("etcd3", false, 1, 1)]);
        let Decision::Hold(why) = decide(&report(e.clone()), &c, true) else {
            panic!("acted without quorum")
        };
        assert!(
            why.contains("no quorum") && why.contains("haop etcd restore"),
            "{why}"
        );
        let mut electing = e;
        electing.electing = true;
        let Decision::Hold(why) = decide(&report(electing), &c, true) else {
            panic!("acted during an election")
        };
        assert!(why.contains("electing"), "{why}");
    }

    #[test]
    fn certificates_warn_and_renew_only_when_asked() {
        let mut c = OperatorConfig::default();
        let mut r = report(section(vec![member("etcd1", true, 1, 1)]));
        r.certificates.push(crate::status::CertSummary {
            location: "etcd1".into(),
            certificates: 3,
            soonest_path: Some("/etc/kubernetes/pki/etcd/server.crt".into()),
            soonest_subject: None,
            soonest_not_after: None,
            days_left: Some(10),
            errors: vec![],
        });
        let Decision::Act { steps, warnings } = decide(&r, &c, false) else {
            panic!()
        };
        assert!(steps.is_empty());
        assert!(warnings[0].contains("10 day(s)") && warnings[0].contains("renewal"));
        c.certificates.renew = true;
        let Decision::Act { steps, .. } = decide(&r, &c, true) else {
            panic!()
        };
        assert_eq!(
            steps,
            vec![Step::Snapshot, Step::RenewCertificates { within_days: 14 }]
        );
    }

    fn report(etcd: EtcdSection) -> StatusReport {
        StatusReport {
            schema_version: 1,
            cluster: "c".into(),
            generated_at: String::new(),
            elapsed_ms: 0,
            timeout_ms: 0,
            revocation_generation: None,
            verdict: crate::status::Verdict {
                health: crate::status::Health::Healthy,
                exit_code: 0,
                summary: String::new(),
            },
            problems: vec![],
            hosts: vec![],
            etcd,
            units: vec![],
            vip: None,
            certificates: vec![],
            drift: vec![],
            kubernetes: None,
            snapshots: None,
        }
    }
}
