//! The operator's own config (`/etc/haop/operator.toml` in the .deb's unit): what it may do on
//! its own and how often. The cluster itself is the inventory's business; this file only says
//! how an unattended loop behaves, which differs per admin host (its name, where it serves
//! metrics) and per team (whether certificates are renewed without a person).
//!
//! Every field has a default, so an empty file (or none) runs a loop that heals, keeps the
//! snapshot schedule, defragments by the default policy, warns of expiring certificates and
//! renews none. Unknown fields are refused with their name, as the inventory's are.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::inventory::Span;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {message}", .path.display())]
    Invalid { path: PathBuf, message: String },
}

/// The whole config, defaults filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct OperatorConfig {
    /// This instance's name in the election and the action records (default: the host name).
    pub name: String,
    /// Where `/metrics` is served; none: not served.
    pub metrics_listen: Option<SocketAddr>,
    /// How often the loop looks at the cluster.
    pub interval: Duration,
    /// The election lease: a leader that stops renewing it is replaced after this long.
    pub lease_ttl: Duration,
    /// How long one look (status) may take per host.
    pub status_timeout: Duration,
    pub heal: bool,
    pub snapshots: bool,
    pub defrag: DefragPolicy,
    pub certificates: CertPolicy,
}

/// When a member is defragmented: never on an unhealthy cluster, one member per round, the
/// leader last.
#[derive(Debug, Clone, PartialEq)]
pub struct DefragPolicy {
    pub enabled: bool,
    /// Only databases at least this large (small ones gain nothing worth a pause).
    pub min_db_bytes: u64,
    /// Only when at least this share of the database is free space (size - in use).
    pub min_free_ratio: f64,
}

/// What the loop does about certificates that near their expiry.
#[derive(Debug, Clone, PartialEq)]
pub struct CertPolicy {
    /// Warn (log and metric) when a certificate has fewer days left.
    pub warn_days: i64,
    /// Renew (`haop certs renew`, rolling) certificates with fewer days left than
    /// `renew_days`; off unless asked for.
    pub renew: bool,
    pub renew_days: i64,
}

impl Default for OperatorConfig {
    fn default() -> Self {
        OperatorConfig {
            name: default_name(),
            metrics_listen: None,
            interval: Duration::from_secs(10),
            lease_ttl: Duration::from_secs(10),
            status_timeout: Duration::from_secs(2),
            heal: true,
            snapshots: true,
            defrag: DefragPolicy {
                enabled: true,
                min_db_bytes: 100 * 1024 * 1024,
                min_free_ratio: 0.5,
            },
            certificates: CertPolicy {
                warn_days: 30,
                renew: false,
                renew_days: 14,
            },
        }
    }
}

fn default_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "haop-operator".to_string())
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    name: Option<String>,
    metrics_listen: Option<String>,
    interval: Option<String>,
    lease_ttl: Option<String>,
    status_timeout: Option<String>,
    heal: Option<bool>,
    snapshots: Option<bool>,
    defrag: Option<RawDefrag>,
    certificates: Option<RawCerts>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefrag {
    enabled: Option<bool>,
    min_db_mib: Option<u64>,
    min_free_percent: Option<u8>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCerts {
    warn_days: Option<i64>,
    renew: Option<bool>,
    renew_days: Option<i64>,
}

impl OperatorConfig {
    /// Reads `path`; a missing file is an error (the operator was told to use it).
    pub fn load(path: &Path) -> Result<OperatorConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text).map_err(|message| ConfigError::Invalid {
            path: path.to_path_buf(),
            message,
        })
    }

    /// Parses the TOML text; the error names the field.
    pub fn parse(text: &str) -> Result<OperatorConfig, String> {
        let raw: Raw = toml::from_str(text).map_err(|e| e.message().to_string())?;
        let mut c = OperatorConfig::default();
        let span =
            |field: &str, v: Option<String>, min: Duration| -> Result<Option<Duration>, String> {
                let Some(v) = v else { return Ok(None) };
                let d = v
                    .parse::<Span>()
                    .map_err(|e| format!("{field}: {e} (got {v:?})"))?
                    .duration();
                if d < min {
                    return Err(format!("{field}: at least {} s, not {v}", min.as_secs()));
                }
                Ok(Some(d))
            };
        if let Some(n) = raw.name {
            if n.is_empty() || n.len() > 63 || n.chars().any(|ch| ch.is_control() || ch == '/') {
                return Err(format!(
                    "name: 1 to 63 characters, no '/' or control characters (got {n:?})"
                ));
            }
            c.name = n;
        }
        if let Some(a) = raw.metrics_listen {
            c.metrics_listen = Some(a.parse().map_err(|_| {
                format!("metrics_listen: expected ADDRESS:PORT such as 127.0.0.1:9469 (got {a:?})")
            })?);
        }
        if let Some(d) = span("interval", raw.interval, Duration::from_secs(1))? {
            c.interval = d;
        }
        if let Some(d) = span("lease_ttl", raw.lease_ttl, Duration::from_secs(2))? {
            c.lease_ttl = d;
        }
        if let Some(d) = span("status_timeout", raw.status_timeout, Duration::from_secs(1))? {
            c.status_timeout = d;
        }
        c.heal = raw.heal.unwrap_or(c.heal);
        c.snapshots = raw.snapshots.unwrap_or(c.snapshots);
        if let Some(d) = raw.defrag {
            c.defrag.enabled = d.enabled.unwrap_or(c.defrag.enabled);
            if let Some(m) = d.min_db_mib {
                c.defrag.min_db_bytes = m * 1024 * 1024;
            }
            if let Some(p) = d.min_free_percent {
                if !(1..=99).contains(&p) {
                    return Err(format!("defrag.min_free_percent: 1 to 99, not {p}"));
                }
                c.defrag.min_free_ratio = f64::from(p) / 100.0;
            }
        }
        if let Some(k) = raw.certificates {
            c.certificates.warn_days = k.warn_days.unwrap_or(c.certificates.warn_days);
            c.certificates.renew = k.renew.unwrap_or(c.certificates.renew);
            c.certificates.renew_days = k.renew_days.unwrap_or(c.certificates.renew_days);
            if c.certificates.renew_days < 1 || c.certificates.warn_days < 1 {
                return Err("certificates: warn_days and renew_days are at least 1".to_string());
            }
        }
        Ok(c)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_the_defaults() {
        let c = OperatorConfig::parse("").unwrap();
        assert_eq!(c.interval, Duration::from_secs(10));
        assert!(c.heal && c.snapshots && c.defrag.enabled && !c.certificates.renew);
        assert_eq!(c.metrics_listen, None);
    }

    #[test]
    fn fields_are_read_and_checked() {
        let c = OperatorConfig::parse(
            "name = \"admin-a\"\nmetrics_listen = \"10.0.0.1:9469\"\ninterval = \"30s\"\n\
             lease_ttl = \"15s\"\n[defrag]\nmin_db_mib = 500\nmin_free_percent = 40\n\
             [certificates]\nrenew = true\nrenew_days = 20\n",
        )
        .unwrap();
        assert_eq!(c.name, "admin-a");
        assert_eq!(c.metrics_listen, Some("10.0.0.1:9469".parse().unwrap()));
        assert_eq!(c.lease_ttl, Duration::from_secs(15));
        assert_eq!(c.defrag.min_db_bytes, 500 * 1024 * 1024);
        assert!((c.defrag.min_free_ratio - 0.4).abs() < 1e-9);
        assert!(c.certificates.renew);
        assert_eq!(c.certificates.renew_days, 20);
    }

    #[test]
    fn the_packaged_example_is_valid_and_says_the_defaults() {
        let text = include_str!("../../../packaging/haop/operator.toml.example");
        let mut c = OperatorConfig::parse(text).unwrap();
        c.name = OperatorConfig::default().name;
        assert_eq!(c, OperatorConfig::default());
    }

    #[test]
    fn bad_input_names_the_field() {
        for (text, field) in [
            ("intervall = \"10s\"", "intervall"),
            ("interval = \"10\"", "interval"),
            ("lease_ttl = \"1s\"", "lease_ttl"),
            ("metrics_listen = \"localhost\"", "metrics_listen"),
            ("name = \"a/b\"", "name"),
            ("[defrag]\nmin_free_percent = 100", "min_free_percent"),
        ] {
            let e = OperatorConfig::parse(text).unwrap_err();
            assert!(e.contains(field), "{text}: {e}");
        }
    }
}
