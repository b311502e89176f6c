//! Fuzzes the agent's RPC edge: the validated names and paths every request is turned into
//! before anything touches the host, and the exec allow-list check.
//!
//! The input is text, one candidate per line, so that seeds read as what they test. Each line is
//! tried as every kind of name (`UnitName`, `SysctlKey`, `SysctlValue`, `ModuleName`,
//! `DropInName`), as a `HostPath`, and as a name joined onto a managed root. Two kinds of line
//! do more:
//!
//! * `ln PARENT NAME TARGET` makes the symlink `PARENT/NAME -> TARGET` in the scratch host root
//!   before any path is resolved (`PARENT` is one of the directories the target creates, so the
//!   fuzzer can never write outside the scratch dir);
//! * `exec PROGRAM ARG...` (with `env KEY=VALUE` lines) is checked against a fixed allow-list.
//!
//! Besides "no panic", it asserts what each type promises, exactly: an accepted unit name is a
//! single file name under /etc/systemd/system; an accepted sysctl key maps to a path under
//! /proc/sys with no `..`; a sysctl value is one line; a module name is one line of a
//! modules-load.d file and never an option; a drop-in name stays in its directory; a host path
//! is absolute and normalized; and a path that `HostFs::resolve` accepts lies under a managed
//! root, maps into the agent's root, and has no symlink left on its way there, so the file the
//! OS opens is the file that was checked.
#![no_main]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use haop_agent::exec::{AllowList, ExecRequest};
use haop_agent::names::{DropInName, ModuleName, SysctlKey, SysctlValue, UnitName};
use haop_agent::paths::{HostFs, HostPath, PathError};
use libfuzzer_sys::fuzz_target;

/// Real directories of the scratch host root; `ln` lines may put links only into these.
const DIRS: &[&str] = &[
    "/etc",
    "/etc/haop",
    "/etc/haop/real",
    "/etc/systemd/system",
    "/var/lib",
    "/var/lib/etcd",
    "/root",
];

/// Links every input starts with: inside, absolute inside, climbing out, escaping, looping.
const LINKS: &[(&str, &str)] = &[
    ("/etc/haop/in", "real"),
    ("/etc/haop/abs", "/etc/haop/real"),
    ("/etc/haop/up", "../../../../../../etc"),
    ("/etc/haop/dotdot", ".."),
    ("/etc/haop/loop", "loop"),
    ("/var/lib/etcd/out", "/root"),
    ("/var/lib/etcd/member", "../../../etc/haop/in"),
];

const MANAGED: &[&str] = &["/etc/haop", "/var/lib/etcd", "/etc/systemd/system"];

const ALLOWED: &[&str] = &["/bin/echo", "/usr/bin/env", "/no/such/program"];

fuzz_target!(|text: &str| {
    let lines: Vec<&str> = text.lines().collect();
    for line in &lines {
        check_names(line);
        check_host_path(line);
    }
    check_resolve(&lines);
    check_exec(&lines);
});

fn hp(s: &str) -> HostPath {
    HostPath::try_from(s).expect("a valid host path")
}

fn check_names(s: &str) {
    if let Ok(unit) = UnitName::try_from(s) {
        assert_eq!(unit.as_str(), s);
        assert!(!s.is_empty() && s.len() <= 255, "unit {s:?}");
        assert!(!s.contains(['/', '\0', '\n']), "unit {s:?}");
        assert!(
            !s.starts_with(['.', '-']),
            "unit {s:?} reads as hidden or as an option"
        );
        assert!(!unit.stem().is_empty(), "unit {s:?} has no stem");
        // EnsureUnit writes the file here: it must be one file directly in the unit dir.
        let path = hp(&format!("/etc/systemd/system/{unit}"));
        assert_eq!(path.parent(), Some(hp("/etc/systemd/system")), "unit {s:?}");
        assert_eq!(path.file_name(), Some(s), "unit {s:?}");
    }
    if let Ok(key) = SysctlKey::try_from(s) {
        assert_eq!(key.as_str(), s);
        assert!(!s.contains(['/', '\0', '\n', ' ', '=']), "sysctl key {s:?}");
        assert!(!s.contains(".."), "sysctl key {s:?}");
        let parts: Vec<&str> = s.split('.').collect();
        assert!(parts.len() >= 2, "sysctl key {s:?}");
        assert!(parts.iter().all(|p| !p.is_empty()), "sysctl key {s:?}");
        // The agent writes /proc/sys/<proc_path>: it must stay there, one level per part.
        let proc = HostPath::try_from(format!("/proc/sys/{}", key.proc_path()))
            .unwrap_or_else(|e| panic!("sysctl key {s:?} gives a bad path: {e}"));
        assert!(proc.starts_with(&hp("/proc/sys")), "sysctl key {s:?}");
        assert_eq!(
            proc.as_path().components().count(),
            parts.len() + 3,
            "sysctl key {s:?}"
        );
    }
    if let Ok(value) = SysctlValue::try_from(s) {
        let v = value.as_str();
        assert!(!v.is_empty() && v.len() <= 1024, "sysctl value {s:?}");
        assert_eq!(v, v.trim(), "sysctl value {s:?}");
        // It is written as `key = value` on one line of a sysctl.d file.
        assert!(!v.contains(['\n', '\r', '\0']), "sysctl value {s:?}");
    }
    if let Ok(module) = ModuleName::try_from(s) {
        assert_eq!(module.as_str(), s);
        assert!(!s.is_empty() && s.len() <= 55, "module {s:?}");
        assert!(
            !s.starts_with('-'),
            "module {s:?} reads as an option to modprobe"
        );
        assert!(
            s.chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-')),
            "module {s:?}"
        );
        assert!(!module.kernel_name().contains('-'), "module {s:?}");
    }
    if let Ok(name) = DropInName::try_from(s) {
        assert_eq!(name.as_str(), s);
        for dir in ["/etc/sysctl.d", "/etc/modules-load.d"] {
            let path = HostPath::try_from(format!("{dir}/{s}.conf"))
                .unwrap_or_else(|e| panic!("drop-in {s:?} gives a bad path: {e}"));
            assert_eq!(path.parent(), Some(hp(dir)), "drop-in {s:?}");
        }
    }
}

/// The shape every accepted `HostPath` has.
fn assert_normalized(p: &HostPath, input: &str) {
    let s = p.as_path().to_str().expect("host paths are UTF-8");
    assert!(s.starts_with('/'), "{input:?} gave {s:?}");
    assert!(s.len() <= 4096, "{input:?} gave {s:?}");
    assert!(!s.contains('\0'), "{input:?} gave {s:?}");
    if s != "/" {
        assert!(!s.ends_with('/'), "{input:?} gave {s:?}");
        for part in s[1..].split('/') {
            assert!(
                !matches!(part, "" | "." | ".."),
                "{input:?} gave {s:?}, which has component {part:?}"
            );
        }
    }
}

fn check_host_path(s: &str) {
    if let Ok(p) = HostPath::try_from(s) {
        assert_normalized(&p, s);
        assert_eq!(HostPath::try_from(p.to_string()).ok().as_ref(), Some(&p));
        assert_eq!(p.is_root(), p.as_path() == Path::new("/"));
        assert!(!p.relative().is_absolute(), "{s:?}");
        if let Some(parent) = p.parent() {
            assert_normalized(&parent, s);
            assert!(p.starts_with(&parent), "{s:?}");
        }
    }
    // Names joined onto a managed root (how the agent builds paths from request names) stay
    // under it.
    let base = hp("/etc/haop");
    if let Ok(joined) = base.join(s) {
        assert_normalized(&joined, s);
        assert!(
            joined.starts_with(&base),
            "{s:?} joined onto /etc/haop gave {joined}"
        );
    }
}

/// The scratch host root with `DIRS` and `LINKS` only, made once: most inputs add no link, and
/// making a tree per input would cut the rate of inputs several times. (It stays behind when the
/// fuzzer exits; scripts/fuzz points TMPDIR at a directory it removes.)
fn shared_root() -> &'static Path {
    static ROOT: OnceLock<tempfile::TempDir> = OnceLock::new();
    ROOT.get_or_init(|| scratch_root(&[])).path()
}

/// Builds a scratch host root with `DIRS`, `LINKS` and the input's `ln` lines.
fn scratch_root(lines: &[&str]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a scratch dir");
    let real = |p: &str| dir.path().join(p.trim_start_matches('/'));
    for d in DIRS {
        std::fs::create_dir_all(real(d)).expect("scratch dirs");
    }
    for (link, target) in LINKS {
        std::os::unix::fs::symlink(target, real(link)).expect("scratch links");
    }
    for line in lines {
        let Some(rest) = line.strip_prefix("ln ") else {
            continue;
        };
        let mut words = rest.splitn(3, ' ');
        let (Some(parent), Some(name), Some(target)) = (words.next(), words.next(), words.next())
        else {
            continue;
        };
        let single = !name.is_empty() && !matches!(name, "." | "..") && !name.contains('/');
        if DIRS.contains(&parent) && single && !target.is_empty() && !target.contains('\0') {
            // An existing name (a fixed dir or link) stays as it is.
            let _ = std::os::unix::fs::symlink(target, real(parent).join(name));
        }
    }
    dir
}

fn check_resolve(lines: &[&str]) {
    let paths: Vec<HostPath> = lines
        .iter()
        .filter_map(|l| HostPath::try_from(*l).ok())
        .collect();
    if paths.is_empty() {
        return;
    }
    let own = lines
        .iter()
        .any(|l| l.starts_with("ln "))
        .then(|| scratch_root(lines));
    let root = match &own {
        Some(dir) => dir.path(),
        None => shared_root(),
    };
    let fs = HostFs::new(root, MANAGED.iter().map(|m| hp(m)).collect());
    for path in &paths {
        match fs.resolve(path) {
            Ok((resolved, real)) => {
                assert_normalized(&resolved, &path.to_string());
                assert!(
                    fs.is_managed(&resolved),
                    "{path} resolved to {resolved}, outside the managed roots"
                );
                assert_eq!(real, root.join(resolved.relative()), "{path}");
                assert!(real.starts_with(root), "{path} maps to {}", real.display());
                assert_no_symlink_left(root, &resolved, path);
            }
            Err(PathError::OutsideManagedRoots { .. }) => {
                assert!(
                    !fs.is_managed(path),
                    "{path} is managed but was refused as outside"
                );
            }
            Err(_) => {}
        }
    }
}

/// Walks the resolved path from the root: no existing component may be a symlink, or the OS
/// would follow it somewhere the check never saw.
fn assert_no_symlink_left(root: &Path, resolved: &HostPath, asked: &HostPath) {
    let mut cur = PathBuf::from(root);
    for part in resolved.relative().components() {
        cur.push(part);
        match std::fs::symlink_metadata(&cur) {
            Ok(meta) => assert!(
                !meta.file_type().is_symlink(),
                "{asked} resolved to {resolved}, but {} is still a symlink",
                cur.display()
            ),
            Err(_) => break,
        }
    }
}

fn check_exec(lines: &[&str]) {
    let allow = AllowList::new(ALLOWED.iter().map(PathBuf::from).collect());
    let env: BTreeMap<String, String> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("env "))
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    for line in lines {
        let Some(rest) = line.strip_prefix("exec ") else {
            continue;
        };
        let mut words = rest.split(' ');
        let program = words.next().unwrap_or_default();
        let args: Vec<String> = words.map(str::to_string).collect();
        let Ok(req) = ExecRequest::validate(&allow, program, args, env.clone(), Vec::new(), 0)
        else {
            continue;
        };
        assert!(
            ALLOWED.iter().any(|a| Path::new(a) == req.program),
            "{program:?} ran as {}",
            req.program.display()
        );
        assert!(req.program.is_absolute() && req.program.is_file());
        assert!(req.args.iter().all(|a| !a.contains('\0')));
        for key in req.env.keys() {
            assert!(!key.is_empty() && !key.contains(['=', '\0']), "env {key:?}");
            assert!(
                !matches!(key.as_str(), "LD_PRELOAD" | "LD_LIBRARY_PATH" | "PATH"),
                "env {key:?}"
            );
        }
    }
}
