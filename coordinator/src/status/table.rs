//! The report for a terminal: problems first, then one table per concern with its troubled
//! rows on top, the verdict line last. Colour (plain ANSI) only when the caller says the output
//! is a terminal; the text is the same without it.

use std::fmt::Write;

use super::{Health, StatusReport};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Style {
    Plain,
    Good,
    Warn,
    Bad,
    Bold,
}

impl Style {
    fn code(self) -> &'static str {
        match self {
            Style::Plain => "",
            Style::Good => "\x1b[32m",
            Style::Warn => "\x1b[33m",
            Style::Bad => "\x1b[31m",
            Style::Bold => "\x1b[1m",
        }
    }
}

fn paint(text: &str, style: Style, color: bool) -> String {
    if !color || style == Style::Plain {
        text.to_string()
    } else {
        format!("{}{text}\x1b[0m", style.code())
    }
}

/// A table whose cells carry a style; padding is computed on the plain text.
struct Table {
    header: Vec<&'static str>,
    /// `(row has a problem, cells)`.
    rows: Vec<(bool, Vec<(String, Style)>)>,
}

impl Table {
    fn new(header: Vec<&'static str>) -> Table {
        Table {
            header,
            rows: Vec::new(),
        }
    }

    fn row(&mut self, problem: bool, cells: Vec<(String, Style)>) {
        self.rows.push((problem, cells));
    }

    fn render(mut self, out: &mut String, color: bool) {
        // Problems first, otherwise in inventory order (the sort is stable).
        self.rows.sort_by_key(|(problem, _)| !*problem);
        let mut widths: Vec<usize> = self.header.iter().map(|h| h.chars().count()).collect();
        for (_, cells) in &self.rows {
            for (i, (text, _)) in cells.iter().enumerate() {
                widths[i] = widths[i].max(text.chars().count());
            }
        }
        let line = |cells: Vec<(String, Style)>, out: &mut String| {
            let n = cells.len();
            let mut s = String::new();
            for (i, (text, style)) in cells.into_iter().enumerate() {
                let pad = if i + 1 == n {
                    0
                } else {
                    widths[i] - text.chars().count() + 2
                };
                s.push_str(&paint(&text, style, color));
                s.extend(std::iter::repeat_n(' ', pad));
            }
            out.push_str(s.trim_end());
            out.push('\n');
        };
        line(
            self.header
                .iter()
                .map(|h| (h.to_string(), Style::Bold))
                .collect(),
            out,
        );
        for (_, cells) in self.rows {
            line(cells, out);
        }
    }
}

fn plain(s: impl Into<String>) -> (String, Style) {
    (s.into(), Style::Plain)
}

fn flag(ok: bool, yes: &str, no: &str) -> (String, Style) {
    if ok {
        (yes.to_string(), Style::Good)
    } else {
        (no.to_string(), Style::Bad)
    }
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map(|v| v.to_string()).unwrap_or_else(|| "-".to_string())
}

fn duration(secs: u64) -> String {
    let (d, h, m) = (secs / 86_400, secs / 3600 % 24, secs / 60 % 60);
    if d > 0 {
        format!("{d}d{h}h")
    } else if h > 0 {
        format!("{h}h{m}m")
    } else {
        format!("{m}m{}s", secs % 60)
    }
}

fn bytes(n: i64) -> String {
    let n = n.max(0) as f64;
    if n >= 1024.0 * 1024.0 * 1024.0 {
        format!("{:.1} GiB", n / (1024.0 * 1024.0 * 1024.0))
    } else if n >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", n / (1024.0 * 1024.0))
    } else {
        format!("{:.0} KiB", n / 1024.0)
    }
}

fn section(out: &mut String, title: &str, color: bool) {
    out.push('\n');
    out.push_str(&paint(title, Style::Bold, color));
    out.push('\n');
}

/// The report as text; `color` adds ANSI colours.
pub fn render(r: &StatusReport, color: bool) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} {} ({} ms, timeout {} ms)",
        paint("cluster", Style::Bold, color),
        r.cluster,
        r.elapsed_ms,
        r.timeout_ms
    );
    if !r.problems.is_empty() {
        section(&mut out, "PROBLEMS", color);
        for p in &r.problems {
            let style = if p.severity == Health::Down {
                Style::Bad
            } else {
                Style::Warn
            };
            let _ = writeln!(
                out,
                "  {}  {}",
                paint(&format!("{:<8}", p.severity.as_str()), style, color),
                p.message
            );
        }
    }

    section(&mut out, "HOSTS", color);
    let mut t = Table::new(vec![
        "HOST",
        "AGENT",
        "VERSION",
        "UPTIME",
        "BACKEND",
        "SKEW",
        "ROLES",
        "MOVED ASIDE",
        "CRL",
    ]);
    let wanted_crl = r.revocation_generation.unwrap_or(0);
    for h in &r.hosts {
        let skew_bad = h
            .clock_skew_ms
            .is_some_and(|s| s.abs() > super::MAX_CLOCK_SKEW_MS);
        let crl_behind = h.revocation_generation.is_some_and(|g| g < wanted_crl);
        let crl = match h.revocation_generation {
            None => plain("-".to_string()),
            Some(g) if g < wanted_crl => (format!("{g} < {wanted_crl}"), Style::Warn),
            Some(g) if h.revocation_pushed => plain(format!("{g} (pushed now)")),
            Some(g) => plain(g.to_string()),
        };
        let agent = if h.reachable {
            flag(true, "reachable", "")
        } else {
            (
                format!("unreachable: {}", opt(h.error.as_deref())),
                Style::Bad,
            )
        };
        t.row(
            !h.reachable || skew_bad || crl_behind,
            vec![
                plain(&h.name),
                agent,
                plain(opt(h.agent_version.as_deref())),
                plain(h.uptime_seconds.map(duration).unwrap_or("-".into())),
                plain(opt(h.service_manager.as_deref())),
                (
                    opt(h.clock_skew_ms.map(|s| format!("{s:+} ms"))),
                    if skew_bad { Style::Warn } else { Style::Plain },
                ),
                plain(h.roles.join(",")),
                plain(match &h.moved_aside {
                    Some(m) if m.count > 0 => format!(
                        "{} ({})",
                        m.count,
                        crate::etcd::catchup::human_bytes(m.bytes)
                    ),
                    Some(_) => "none".into(),
                    None => "-".into(),
                }),
                crl,
            ],
        );
    }
    t.render(&mut out, color);

    let e = &r.etcd;
    section(
        &mut out,
        &format!(
            "ETCD  {}/{} healthy, quorum needs {}, leader {}",
            e.healthy_members,
            e.expected_members,
            e.quorum_needed,
            opt(e.leader.as_deref())
        ),
        color,
    );
    let mut t = Table::new(vec![
        "MEMBER",
        "ID",
        "HEALTH",
        "LATENCY",
        "ROLE",
        "TERM",
        "INDEX",
        "LAG",
        "DB",
        "ALARMS",
        "PEER URLS",
    ]);
    for m in &e.members {
        let problem = !m.healthy
            || m.is_learner
            || !m.alarms.is_empty()
            || !m.peer_urls_match
            || !m.in_inventory;
        let health = if m.healthy {
            flag(true, "healthy", "")
        } else {
            (
                format!("unhealthy: {}", opt(m.error.as_deref())),
                Style::Bad,
            )
        };
        let role = if m.is_leader {
            "leader"
        } else if m.is_learner {
            "learner"
        } else if m.in_member_list {
            "follower"
        } else {
            "not a member"
        };
        let db = m
            .db_size_bytes
            .map(|s| {
                format!(
                    "{} ({}%)",
                    bytes(s),
                    (s.max(0) as u64 * 100) / (m.db_quota_bytes.max(1) as u64)
                )
            })
            .unwrap_or("-".into());
        let peers = if m.peer_urls.is_empty() {
            "-".to_string()
        } else {
            m.peer_urls.join(",")
        };
        let peer_cell = if m.peer_urls_match {
            (peers, Style::Plain)
        } else {
            (
                format!(
                    "{peers} (inventory: {})",
                    opt(m.expected_peer_url.as_deref())
                ),
                Style::Warn,
            )
        };
        t.row(
            problem,
            vec![
                plain(&m.name),
                plain(opt(m.id.as_deref())),
                health,
                plain(opt(m.health_latency_ms.map(|l| format!("{l:.1} ms")))),
                plain(role),
                plain(opt(m.raft_term)),
                plain(opt(m.raft_index)),
                plain(opt(m.raft_lag)),
                plain(db),
                if m.alarms.is_empty() {
                    plain("-")
                } else {
                    (m.alarms.join("; "), Style::Bad)
                },
                peer_cell,
            ],
        );
    }
    t.render(&mut out, color);
    if let Some(err) = &e.member_list_error {
        let _ = writeln!(out, "member list: {}", paint(err, Style::Bad, color));
    }

    section(&mut out, "UNITS", color);
    let mut t = Table::new(vec![
        "HOST",
        "UNIT",
        "STATE",
        "RESTARTS",
        "PID",
        "LAST EXIT",
    ]);
    for u in &r.units {
        let state = match (&u.error, &u.active_state) {
            (Some(e), _) => (e.clone(), Style::Bad),
            (None, Some(a)) => (
                format!("{a}/{}", opt(u.sub_state.as_deref())),
                if u.is_active() {
                    Style::Good
                } else {
                    Style::Bad
                },
            ),
            (None, None) => plain("-"),
        };
        let restarts = u.restart_count.unwrap_or(0);
        t.row(
            !u.is_active(),
            vec![
                plain(&u.host),
                plain(&u.unit),
                state,
                (
                    opt(u.restart_count),
                    if restarts > 0 {
                        Style::Warn
                    } else {
                        Style::Plain
                    },
                ),
                plain(opt(u.main_pid.filter(|p| *p != 0))),
                plain(opt(u.last_exit.as_deref())),
            ],
        );
    }
    t.render(&mut out, color);

    if let Some(v) = &r.vip {
        let held = match v.holders.len() {
            0 => paint("held by no master", Style::Bad, color),
            1 => paint(&format!("held by {}", v.holders[0]), Style::Good, color),
            _ => paint(
                &format!("held by several: {}", v.holders.join(", ")),
                Style::Bad,
                color,
            ),
        };
        section(
            &mut out,
            &format!("VIP  {} on {}: {held}", v.address, v.interface),
            color,
        );
        let mut t = Table::new(vec!["MASTER", "HOLDS VIP", "KEEPALIVED", "VRRP"]);
        for m in &v.masters {
            let ka_ok = m.keepalived.as_deref() == Some("active");
            t.row(
                !ka_ok || m.holds_vip.is_none(),
                vec![
                    plain(&m.host),
                    plain(match m.holds_vip {
                        Some(true) => "yes",
                        Some(false) => "no",
                        None => "unknown",
                    }),
                    (
                        opt(m.keepalived.as_deref()),
                        if ka_ok { Style::Good } else { Style::Bad },
                    ),
                    plain(&m.vrrp_state),
                ],
            );
        }
        t.render(&mut out, color);
    }

    if let Some(k) = &r.kubernetes {
        let ready = k.endpoints.iter().filter(|e| e.ready).count();
        let title = match (&k.ca_source, &k.ca_error) {
            (_, Some(e)) => format!("KUBERNETES  API /readyz: {}", paint(e, Style::Bad, color)),
            (source, None) => format!(
                "KUBERNETES  API /readyz: {ready}/{} ready (verified with the CA from {})",
                k.endpoints.len(),
                opt(source.as_deref())
            ),
        };
        section(&mut out, &title, color);
        let mut t = Table::new(vec!["ENDPOINT", "URL", "READY", "LATENCY", "ANSWER"]);
        for e in &k.endpoints {
            t.row(
                !e.ready,
                vec![
                    plain(e.label()),
                    plain(&e.url),
                    flag(e.ready, "ready", "not ready"),
                    plain(opt(e.latency_ms.map(|l| format!("{l:.1} ms")))),
                    (e.outcome(), if e.ready { Style::Plain } else { Style::Bad }),
                ],
            );
        }
        t.render(&mut out, color);
    }

    if let Some(snaps) = &r.snapshots {
        let title = match (&snaps.newest_verified, snaps.newest_verified_age_seconds) {
            (Some(name), Some(age)) => {
                let text = format!(
                    "newest verified {name}, {} old{}",
                    super::human_span(age),
                    if snaps.newest_verified_copies.is_empty() {
                        ", no copy on a host".to_string()
                    } else {
                        format!(", copies on {}", snaps.newest_verified_copies.join(", "))
                    }
                );
                let style = if snaps.problem().is_some() {
                    Style::Bad
                } else {
                    Style::Good
                };
                paint(&text, style, color)
            }
            _ => paint(
                "none verified",
                if snaps.problem().is_some() {
                    Style::Bad
                } else {
                    Style::Plain
                },
                color,
            ),
        };
        section(
            &mut out,
            &format!(
                "SNAPSHOTS  {title} ({} in the state dir, {} verified, {} failed; stale after {})",
                snaps.total,
                snaps.verified,
                snaps.failed,
                if snaps.stale_after_seconds == 0 {
                    "never".to_string()
                } else {
                    super::human_span(snaps.stale_after_seconds as i64)
                }
            ),
            color,
        );
    }

    section(&mut out, "CERTIFICATES (soonest expiry)", color);
    let mut t = Table::new(vec!["WHERE", "DAYS LEFT", "NOT AFTER", "PATH", "ERRORS"]);
    for c in &r.certificates {
        let soon = c.days_left.is_some_and(|d| d < super::CERT_WARN_DAYS);
        t.row(
            soon || !c.errors.is_empty(),
            vec![
                plain(&c.location),
                (
                    opt(c.days_left),
                    if soon { Style::Bad } else { Style::Plain },
                ),
                plain(opt(c.soonest_not_after.as_deref())),
                plain(opt(c.soonest_path.as_deref())),
                if c.errors.is_empty() {
                    plain("-")
                } else {
                    (c.errors.join("; "), Style::Bad)
                },
            ],
        );
    }
    t.render(&mut out, color);

    if !r.drift.is_empty() {
        section(&mut out, "DRIFT (against what apply set)", color);
        let mut t = Table::new(vec!["HOST", "ITEM", "STATE", "DETAIL"]);
        for d in &r.drift {
            let state = match d.in_sync {
                Some(true) => flag(true, "in sync", ""),
                Some(false) => ("drifted".to_string(), Style::Warn),
                None => ("unknown".to_string(), Style::Warn),
            };
            t.row(
                d.in_sync != Some(true),
                vec![plain(&d.host), plain(&d.item), state, plain(&d.detail)],
            );
        }
        t.render(&mut out, color);
    }

    let style = match r.verdict.health {
        Health::Healthy => Style::Good,
        Health::Degraded => Style::Warn,
        Health::Down => Style::Bad,
    };
    out.push('\n');
    let _ = writeln!(
        out,
        "{}",
        paint(&format!("verdict: {}", r.verdict.summary), style, color)
    );
    out
}
