//! The upgrade's gates and order, as a pure function of what was observed.
//!
//! Sans-IO like the quorum planner: [`plan`] takes the members as etcd answered (version,
//! health, leader, learners, alarms, auth, cluster version) and the target, and answers either
//! the members to restart in order (followers first, the leader last) or a [`Refusal`] naming
//! the rule and the way out. Unknown state is a refusal: a member whose version could not be
//! read is not guessed at. The same function serves a rollback (a target below the members'
//! version): etcd's rules for going back are in [`crate::etcd::versions`].

use crate::etcd::versions::{self, EtcdVersion};

/// One member as observed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MemberView {
    pub name: String,
    pub id: u64,
    /// `None` when the member did not answer its status.
    pub version: Option<EtcdVersion>,
    pub healthy: bool,
    pub is_learner: bool,
}

/// What was observed of the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observed {
    pub members: Vec<MemberView>,
    /// How many members the inventory has.
    pub expected_members: usize,
    pub leader: Option<u64>,
    /// Active alarms, as `member: ALARM`.
    pub alarms: Vec<String>,
    /// Whether etcd auth is on; `None` when it could not be told.
    pub auth_enabled: Option<bool>,
    /// The cluster version (`major.minor`) etcd reports at `/version`, when it answered.
    pub cluster_version: Option<(u64, u64)>,
}

/// What the upgrade will do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    pub target: EtcdVersion,
    /// The version the members leave (the one that is not the target).
    pub from: Option<EtcdVersion>,
    /// Members to move, in order: followers first, the leader last.
    pub order: Vec<String>,
    /// Members already at the target (a resumed upgrade).
    pub done: Vec<String>,
    /// The target is in another minor line than `from`.
    pub crosses_minor: bool,
    /// Rules that were set aside with `--force`, said in the plan.
    pub forced: Vec<String>,
}

/// Why the upgrade does not start; each names the rule and the way out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error(
        "etcd {target} is not a version haop knows ({known}); nothing says what reaching it \
         takes. Pick a known one, or pass --force to take the risk"
    )]
    UnknownTarget { target: EtcdVersion, known: String },
    #[error(
        "{from} -> {target} skips etcd {next_major}.{next_minor}: etcd moves one minor at a time \
         (a skipped minor's storage migrations never run). Upgrade to the latest {next_major}.\
         {next_minor} patch first"
    )]
    SkippedMinor {
        from: EtcdVersion,
        target: EtcdVersion,
        next_major: u64,
        next_minor: u64,
    },
    #[error(
        "the members run {from}, and leaving {major}.{minor} needs its latest patch known to haop, \
         {latest} (late patches carry what the next minor relies on). Upgrade to {latest} first, \
         or pass --force"
    )]
    NotLatestPatch {
        from: EtcdVersion,
        major: u64,
        minor: u64,
        latest: EtcdVersion,
    },
    #[error("etcd {target} is refused as a target: {what} ({reference}). Pick a later patch, or pass --force")]
    ProblemTarget {
        target: EtcdVersion,
        what: &'static str,
        reference: &'static str,
    },
    #[error(
        "etcd auth is enabled, and a 3.4 -> 3.5 rolling upgrade with auth enabled is not \
         supported by etcd (the members disagree on auth revisions while mixed); disable auth \
         for the upgrade (etcdctl auth disable) and enable it after"
    )]
    AuthEnabled,
    #[error(
        "the cluster is not healthy: {0}. Fix it first (haop status; haop etcd heal), then \
         upgrade"
    )]
    Unhealthy(String),
    #[error(
        "etcd has an active alarm ({0}); an upgrade restarts members and must start from a clean \
         cluster: clear it first (README: \"etcd is out of space\")"
    )]
    Alarm(String),
    #[error(
        "{name} is a learner; finish or undo that membership change first (haop etcd recover \
         or haop etcd heal), then upgrade"
    )]
    Learner { name: String },
    #[error(
        "the members run {versions}: more than one version besides the target {target}. \
         Finish the earlier upgrade (or roll it back) first"
    )]
    Mixed {
        versions: String,
        target: EtcdVersion,
    },
    #[error(
        "going back from {from} to {target} is no longer possible: every member ran {from_major}.\
         {from_minor} and etcd raised the cluster version to {cluster}; a {target} member cannot \
         join it (3.4 and 3.5 have no downgrade; restore a snapshot taken before the upgrade if \
         you must)"
    )]
    ClusterVersionMoved {
        from: EtcdVersion,
        target: EtcdVersion,
        from_major: u64,
        from_minor: u64,
        cluster: String,
    },
    #[error(
        "going back from {from} to {target} needs the cluster version, which no member answered \
         (etcd's /version): check the members, then try again"
    )]
    ClusterVersionUnknown {
        from: EtcdVersion,
        target: EtcdVersion,
    },
    #[error("{from} -> {target} moves more than one minor back; etcd has no such path")]
    TooFarBack {
        from: EtcdVersion,
        target: EtcdVersion,
    },
}

fn health(o: &Observed) -> Result<(), Refusal> {
    if let Some(l) = o.members.iter().find(|m| m.is_learner) {
        return Err(Refusal::Learner {
            name: l.name.clone(),
        });
    }
    let mut bad: Vec<String> = Vec::new();
    if o.members.len() != o.expected_members {
        bad.push(format!(
            "{} members, the inventory has {}",
            o.members.len(),
            o.expected_members
        ));
    }
    for m in &o.members {
        if !m.healthy {
            bad.push(format!("{} does not answer", m.name));
        } else if m.version.is_none() {
            bad.push(format!("{}'s version is unknown", m.name));
        }
    }
    if o.leader.is_none() {
        bad.push("no leader".into());
    }
    if !bad.is_empty() {
        return Err(Refusal::Unhealthy(bad.join("; ")));
    }
    if !o.alarms.is_empty() {
        return Err(Refusal::Alarm(o.alarms.join(", ")));
    }
    Ok(())
}

/// The members to move to `target`, in order, or why not. `force` sets aside the rules that
/// are judgement calls (an unknown target, a target with a known problem, not at the latest
/// patch); never health, order of minors, or what etcd itself refuses.
pub fn plan(o: &Observed, target: EtcdVersion, force: bool) -> Result<Plan, Refusal> {
    health(o)?;
    let mut forced = Vec::new();
    let versions: Vec<EtcdVersion> = o.members.iter().filter_map(|m| m.version).collect();
    let mut others: Vec<EtcdVersion> = versions.iter().copied().filter(|v| *v != target).collect();
    others.sort();
    others.dedup();
    if others.len() > 1 {
        return Err(Refusal::Mixed {
            versions: others
                .iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(", "),
            target,
        });
    }
    let from = others.first().copied();
    let done: Vec<String> = o
        .members
        .iter()
        .filter(|m| m.version == Some(target))
        .map(|m| m.name.clone())
        .collect();
    let Some(from) = from else {
        return Ok(Plan {
            target,
            from: None,
            order: Vec::new(),
            done,
            crosses_minor: false,
            forced,
        });
    };
    let mut gate = |refusal: Refusal, forced_ok: bool| -> Result<(), Refusal> {
        if force && forced_ok {
            forced.push(refusal.to_string());
            Ok(())
        } else {
            Err(refusal)
        }
    };
    let crosses_minor = target.minor_line() != from.minor_line();
    if target.major != from.major {
        return Err(Refusal::SkippedMinor {
            from,
            target,
            next_major: from.major,
            next_minor: from.minor + 1,
        });
    }
    if target.minor > from.minor + 1 {
        return Err(Refusal::SkippedMinor {
            from,
            target,
            next_major: from.major,
            next_minor: from.minor + 1,
        });
    }
    if versions::known(target).is_none() {
        gate(
            Refusal::UnknownTarget {
                target,
                known: versions::known_list(),
            },
            true,
        )?;
    }
    if let Some(p) = versions::problems(target)
        .into_iter()
        .find(|p| p.refuse_as_target)
    {
        gate(
            Refusal::ProblemTarget {
                target,
                what: p.what,
                reference: p.source,
            },
            true,
        )?;
    }
    if target.minor == from.minor + 1 {
        // Leaving a minor: from its latest known patch, and never 3.4 -> 3.5 with auth on.
        if let Some(latest) = versions::latest_patch(from.major, from.minor) {
            if from < latest {
                gate(
                    Refusal::NotLatestPatch {
                        from,
                        major: from.major,
                        minor: from.minor,
                        latest,
                    },
                    true,
                )?;
            }
        }
        if (from.major, from.minor) == (3, 4) && o.auth_enabled == Some(true) {
            return Err(Refusal::AuthEnabled);
        }
    }
    if target.minor + 1 == from.minor {
        // Back a minor: only while etcd has not raised the cluster version.
        match o.cluster_version {
            Some(cv) if cv == target.minor_line() => {}
            Some((ma, mi)) => {
                return Err(Refusal::ClusterVersionMoved {
                    from,
                    target,
                    from_major: from.major,
                    from_minor: from.minor,
                    cluster: format!("{ma}.{mi}"),
                })
            }
            None => return Err(Refusal::ClusterVersionUnknown { from, target }),
        }
    } else if target.minor + 1 < from.minor {
        return Err(Refusal::TooFarBack { from, target });
    }
    // Followers first, the leader last: one leader change, at the end, to an upgraded member.
    let mut order: Vec<&MemberView> = o
        .members
        .iter()
        .filter(|m| m.version != Some(target))
        .collect();
    order.sort_by_key(|m| (Some(m.id) == o.leader, m.name.clone()));
    Ok(Plan {
        target,
        from: Some(from),
        order: order.into_iter().map(|m| m.name.clone()).collect(),
        done,
        crosses_minor,
        forced,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> EtcdVersion {
        s.parse().unwrap()
    }

    fn cluster(versions: &[&str], leader: usize) -> Observed {
        Observed {
            members: versions
                .iter()
                .enumerate()
                .map(|(i, ver)| MemberView {
                    name: format!("etcd{}", i + 1),
                    id: i as u64 + 1,
                    version: Some(v(ver)),
                    healthy: true,
                    is_learner: false,
                })
                .collect(),
            expected_members: versions.len(),
            leader: Some(leader as u64 + 1),
            alarms: vec![],
            auth_enabled: Some(false),
            cluster_version: Some(v(versions[0]).minor_line()),
        }
    }

    #[test]
    fn followers_first_the_leader_last() {
        let o = cluster(&["3.4.23", "3.4.23", "3.4.23"], 0);
        let p = plan(&o, v("3.5.16"), false).unwrap();
        assert_eq!(p.order, ["etcd2", "etcd3", "etcd1"]);
        assert!(p.crosses_minor);
        assert_eq!(p.from, Some(v("3.4.23")));
        // Resumed: etcd2 done already.
        let mut o = o;
        o.members[1].version = Some(v("3.5.16"));
        let p = plan(&o, v("3.5.16"), false).unwrap();
        assert_eq!(p.order, ["etcd3", "etcd1"]);
        assert_eq!(p.done, ["etcd2"]);
        // All done: nothing to do.
        for m in &mut o.members {
            m.version = Some(v("3.5.16"));
        }
        assert!(plan(&o, v("3.5.16"), false).unwrap().order.is_empty());
    }

    #[test]
    fn each_gate_refuses_with_its_rule() {
        let o = cluster(&["3.4.23", "3.4.23", "3.4.23"], 0);
        let e = plan(&o, v("3.6.0"), true).unwrap_err();
        assert!(matches!(e, Refusal::SkippedMinor { .. }), "{e}");
        assert!(e.to_string().contains("skips etcd 3.5"), "{e}");
        let e = plan(&o, v("3.5.1"), false).unwrap_err();
        assert!(matches!(e, Refusal::ProblemTarget { .. }), "{e}");
        assert!(plan(&o, v("3.5.1"), true).unwrap().forced.len() == 1);
        let e = plan(&o, v("3.5.17"), false).unwrap_err();
        assert!(matches!(e, Refusal::UnknownTarget { .. }), "{e}");
        let old = cluster(&["3.4.20", "3.4.20", "3.4.20"], 0);
        let e = plan(&old, v("3.5.16"), false).unwrap_err();
        assert!(matches!(e, Refusal::NotLatestPatch { .. }), "{e}");
        assert!(e.to_string().contains("3.4.23"), "{e}");
        let mut auth = o.clone();
        auth.auth_enabled = Some(true);
        assert_eq!(plan(&auth, v("3.5.16"), true), Err(Refusal::AuthEnabled));
        let mut down = o.clone();
        down.members[2].healthy = false;
        let e = plan(&down, v("3.5.16"), true).unwrap_err();
        assert!(e.to_string().contains("etcd3 does not answer"), "{e}");
        let mut alarm = o.clone();
        alarm.alarms = vec!["etcd1: NOSPACE".into()];
        assert!(matches!(
            plan(&alarm, v("3.5.16"), true),
            Err(Refusal::Alarm(_))
        ));
        let mut learner = o.clone();
        learner.members[1].is_learner = true;
        assert!(matches!(
            plan(&learner, v("3.5.16"), true),
            Err(Refusal::Learner { .. })
        ));
        let mixed = cluster(&["3.4.23", "3.5.1", "3.5.16"], 0);
        assert!(matches!(
            plan(&mixed, v("3.5.30"), true),
            Err(Refusal::Mixed { .. })
        ));
    }

    #[test]
    fn going_back_only_while_the_cluster_version_has_not_moved() {
        // Half-done 3.4 -> 3.5: the cluster version is still 3.4, so 3.5 members may go back.
        let mut o = cluster(&["3.5.16", "3.4.23", "3.4.23"], 1);
        o.cluster_version = Some((3, 4));
        let p = plan(&o, v("3.4.23"), false).unwrap();
        assert_eq!(p.order, ["etcd1"]);
        // Every member on 3.5 and the cluster version raised: no way back.
        let mut all = cluster(&["3.5.16", "3.5.16", "3.5.16"], 1);
        all.cluster_version = Some((3, 5));
        let e = plan(&all, v("3.4.23"), true).unwrap_err();
        assert!(matches!(e, Refusal::ClusterVersionMoved { .. }), "{e}");
        // Within a minor, patches go both ways.
        let p = plan(&all, v("3.5.1"), true).unwrap();
        assert_eq!(p.order.len(), 3);
    }
}
