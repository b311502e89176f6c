//! What a hand-written etcd unit configures: its `ExecStart` words, its `Environment=` and
//! `EnvironmentFile=` variables, and etcd's own `ETCD_*` variables, merged as etcd merges them
//! (a command-line flag wins over its variable). Pure: the texts in, the flags out.
//!
//! Every flag is sorted into one of three kinds, because adoption must understand all of them:
//! those haop sets itself (names, URLs, TLS files, cert auth: the migration replaces them),
//! those it carries over unchanged into the inventory's `etcd.extra_flags` (tuning such as
//! heartbeat and quotas), and everything else, which is refused by name: a cluster haop does
//! not understand is not taken over half-way.

use std::collections::BTreeMap;

/// Flags haop renders itself in `etcd.env` (see [`crate::etcd::config`]).
pub const MANAGED: &[&str] = &[
    "name",
    "data-dir",
    "listen-client-urls",
    "advertise-client-urls",
    "listen-peer-urls",
    "initial-advertise-peer-urls",
    "initial-cluster",
    "initial-cluster-token",
    "initial-cluster-state",
    "cert-file",
    "key-file",
    "trusted-ca-file",
    "client-cert-auth",
    "client-crl-file",
    "peer-cert-file",
    "peer-key-file",
    "peer-trusted-ca-file",
    "peer-client-cert-auth",
    "pre-vote",
];

/// Flags carried over as they are (`etcd.extra_flags`): tuning that haop leaves to the operator.
pub const CARRIED: &[&str] = &[
    "heartbeat-interval",
    "election-timeout",
    "snapshot-count",
    "quota-backend-bytes",
    "auto-compaction-mode",
    "auto-compaction-retention",
    "max-request-bytes",
    "max-snapshots",
    "max-wals",
    "log-level",
    "logger",
    "log-outputs",
    "listen-metrics-urls",
    "metrics",
    "grpc-keepalive-min-time",
    "grpc-keepalive-interval",
    "grpc-keepalive-timeout",
    "max-txn-ops",
    "backend-batch-interval",
    "backend-batch-limit",
    "cipher-suites",
    "tls-min-version",
    "experimental-initial-corrupt-check",
    "experimental-corrupt-check-time",
    "experimental-compact-hash-check-enabled",
    "strict-reconfig-check",
    "enable-pprof",
];

/// etcd's boolean flags: `--flag` alone means true, and they never take the next word.
const BOOLEAN: &[&str] = &[
    "client-cert-auth",
    "peer-client-cert-auth",
    "auto-tls",
    "peer-auto-tls",
    "pre-vote",
    "enable-v2",
    "strict-reconfig-check",
    "enable-pprof",
    "force-new-cluster",
    "debug",
    "experimental-initial-corrupt-check",
    "experimental-compact-hash-check-enabled",
    "enable-grpc-gateway",
];

/// A unit file's `[Service]` settings that matter here.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Unit {
    /// `ExecStart`'s words after substitution of `$VAR`/`${VAR}`, the program first.
    pub exec: Vec<String>,
    /// `EnvironmentFile=` paths (a leading `-` removed: such a file may be missing).
    pub environment_files: Vec<(String, bool)>,
    /// `Environment=` assignments.
    pub environment: BTreeMap<String, String>,
}

/// Parses the `[Service]` section of a unit file: continuation lines joined, the last
/// `ExecStart=` taken (an empty one resets, as in systemd).
pub fn parse_unit(text: &str) -> Result<Unit, String> {
    let mut joined = String::new();
    for line in text.lines() {
        if let Some(body) = line.strip_suffix('\\') {
            joined.push_str(body);
            joined.push(' ');
        } else {
            joined.push_str(line);
            joined.push('\n');
        }
    }
    let mut unit = Unit::default();
    let mut section = String::new();
    let mut exec: Option<String> = None;
    for line in joined.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if line.starts_with('[') {
            section = line.to_string();
            continue;
        }
        if section != "[Service]" {
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let value = value.trim();
        match key.trim() {
            "ExecStart" => exec = (!value.is_empty()).then(|| value.to_string()),
            "EnvironmentFile" => {
                let optional = value.starts_with('-');
                unit.environment_files
                    .push((value.trim_start_matches('-').to_string(), optional));
            }
            "Environment" => {
                for word in shlex::split(value)
                    .ok_or_else(|| format!("Environment= has unbalanced quotes: {value}"))?
                {
                    if let Some((k, v)) = word.split_once('=') {
                        unit.environment.insert(k.to_string(), v.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    let exec = exec.ok_or("the unit has no ExecStart= in [Service]")?;
    let exec = exec.trim_start_matches(['-', '@', ':', '+', '!']);
    unit.exec =
        shlex::split(exec).ok_or_else(|| format!("ExecStart= has unbalanced quotes: {exec}"))?;
    if unit.exec.is_empty() {
        return Err("ExecStart= is empty".into());
    }
    Ok(unit)
}

/// `KEY=VALUE` lines of an environment file (comments, blank lines and `export ` skipped,
/// one level of quotes removed).
pub fn parse_env(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        if let Some((k, v)) = line.split_once('=') {
            let v = v.trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            out.insert(k.trim().to_string(), v.to_string());
        }
    }
    out
}

/// `$VAR` and `${VAR}` in `word` replaced from `env` (an unknown variable becomes empty, as
/// systemd does).
fn substitute(word: &str, env: &BTreeMap<String, String>) -> String {
    let mut out = String::new();
    let chars: Vec<char> = word.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        if chars[i] == '$' && i + 1 < chars.len() {
            let (name, next) = if chars[i + 1] == '{' {
                match chars[i + 2..].iter().position(|c| *c == '}') {
                    Some(end) => (
                        chars[i + 2..i + 2 + end].iter().collect::<String>(),
                        i + 3 + end,
                    ),
                    None => (String::new(), i),
                }
            } else {
                let end = chars[i + 1..]
                    .iter()
                    .position(|c| !(c.is_ascii_alphanumeric() || *c == '_'))
                    .map_or(chars.len(), |p| i + 1 + p);
                (chars[i + 1..end].iter().collect(), end)
            };
            if !name.is_empty() {
                out.push_str(env.get(&name).map(String::as_str).unwrap_or(""));
                i = next;
                continue;
            }
        }
        out.push(chars[i]);
        i += 1;
    }
    out
}

/// The etcd command of a unit, with its environment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub program: String,
    /// Flag name (without dashes) to value; booleans as `true`/`false`.
    pub flags: BTreeMap<String, String>,
}

/// The command `unit` runs, its flags merged with etcd's `ETCD_*` variables from `env` (the
/// environment files' and `Environment=` assignments, later ones winning).
pub fn command(unit: &Unit, env: &BTreeMap<String, String>) -> Result<Command, String> {
    let mut vars = env.clone();
    vars.extend(unit.environment.clone());
    let words: Vec<String> = unit.exec.iter().map(|w| substitute(w, &vars)).collect();
    let program = words[0].clone();
    let mut flags = BTreeMap::new();
    for (k, v) in &vars {
        if let Some(name) = k.strip_prefix("ETCD_") {
            if name.is_empty() || name.starts_with("UNSUPPORTED") {
                continue;
            }
            flags.insert(name.to_ascii_lowercase().replace('_', "-"), v.clone());
        }
    }
    let mut i = 1;
    while i < words.len() {
        let w = &words[i];
        let Some(body) = w.strip_prefix("--").or_else(|| w.strip_prefix('-')) else {
            return Err(format!(
                "ExecStart: {w:?} is not a flag (etcd takes no arguments)"
            ));
        };
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n.to_string(), v.to_string()),
            None if BOOLEAN.contains(&body) => (body.to_string(), "true".to_string()),
            None => {
                i += 1;
                let v = words
                    .get(i)
                    .ok_or_else(|| format!("ExecStart: --{body} has no value"))?;
                (body.to_string(), v.clone())
            }
        };
        flags.insert(name, value);
        i += 1;
    }
    Ok(Command { program, flags })
}

/// The flags of `cmd` that haop neither sets nor carries: what adoption refuses.
pub fn unknown(cmd: &Command) -> Vec<String> {
    cmd.flags
        .keys()
        .filter(|k| !MANAGED.contains(&k.as_str()) && !CARRIED.contains(&k.as_str()))
        .map(|k| format!("--{k}"))
        .collect()
}

/// The carried flags as `--flag=value`, for `etcd.extra_flags`.
pub fn carried(cmd: &Command) -> Vec<String> {
    cmd.flags
        .iter()
        .filter(|(k, _)| CARRIED.contains(&k.as_str()))
        .map(|(k, v)| format!("--{k}={v}"))
        .collect()
}

/// A boolean flag's value (absent: false).
pub fn is_on(cmd: &Command, flag: &str) -> bool {
    cmd.flags
        .get(flag)
        .is_some_and(|v| v.eq_ignore_ascii_case("true") || v == "1")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEED: &str = "[Unit]\nDescription=etcd\nConflicts=etcd.service\n\n[Service]\nEnvironmentFile=/etc/etcd.env\nType=notify\nRestart=always\nExecStart=/bin/etcd --name master-0  --data-dir /var/lib/etcd --listen-client-urls https://10.0.0.1:2379,https://127.0.0.1:2379 --cert-file=/etc/kubernetes/pki/etcd/server.pem --initial-cluster-token my-etcd-token --initial-cluster-state new --client-cert-auth=false --peer-client-cert-auth=false\n\n[Install]\nWantedBy=multi-user.target\n";

    #[test]
    fn reads_the_seeds_unit() {
        let unit = parse_unit(SEED).unwrap();
        assert_eq!(
            unit.environment_files,
            [("/etc/etcd.env".to_string(), false)]
        );
        let env = parse_env("PEER_NAME=etcd1\nPRIVATE_IP=10.0.0.1\n");
        let cmd = command(&unit, &env).unwrap();
        assert_eq!(cmd.program, "/bin/etcd");
        assert_eq!(cmd.flags["name"], "master-0");
        assert_eq!(cmd.flags["data-dir"], "/var/lib/etcd");
        assert_eq!(
            cmd.flags["cert-file"],
            "/etc/kubernetes/pki/etcd/server.pem"
        );
        assert!(!is_on(&cmd, "client-cert-auth"));
        assert!(unknown(&cmd).is_empty());
    }

    #[test]
    fn flags_win_over_variables_and_variables_are_substituted() {
        let unit = parse_unit(
            "[Service]\nEnvironment=\"B=2\"\nExecStart=/usr/bin/etcd \\\n  --name ${NAME} \\\n  --client-cert-auth --heartbeat-interval=$HB\n",
        )
        .unwrap();
        let env =
            parse_env("# x\nNAME=etcd2\nHB=250\nETCD_NAME=ignored\nETCD_SNAPSHOT_COUNT='5000'\n");
        let cmd = command(&unit, &env).unwrap();
        assert_eq!(cmd.flags["name"], "etcd2");
        assert!(is_on(&cmd, "client-cert-auth"));
        assert_eq!(
            carried(&cmd),
            ["--heartbeat-interval=250", "--snapshot-count=5000"]
        );
    }

    #[test]
    fn unknown_flags_are_named() {
        let unit = parse_unit("[Service]\nExecStart=/bin/etcd --auto-tls --discovery=https://x\n")
            .unwrap();
        let cmd = command(&unit, &BTreeMap::new()).unwrap();
        assert_eq!(unknown(&cmd), ["--auto-tls", "--discovery"]);
        assert!(parse_unit("[Service]\nType=notify\n").is_err());
        assert!(command(
            &parse_unit("[Service]\nExecStart=/bin/etcd stray\n").unwrap(),
            &BTreeMap::new()
        )
        .is_err());
    }
}
