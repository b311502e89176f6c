//! Units that outlive their agent: recognising a unit's process left by an earlier agent, so
//! that the new agent adopts it instead of starting (or killing) it again.
//!
//! On a real host systemd runs the units and an agent restart (an upgrade, a crash) does not
//! touch etcd. The built-in supervisor must behave the same, or restarting the agents of a
//! cluster would restart every member at once. So the supervisor's children live in their own
//! process groups and are not stopped when the agent exits, and the supervisor records each
//! unit's main process in `<state_dir>/supervisor/<unit>.proc` as `PID START_TIME SINCE_MS`,
//! the start time being the kernel's (clock ticks since boot, `/proc/PID/stat` field 22) and
//! `SINCE_MS` the wall-clock time of the launch in Unix milliseconds, next to the plain
//! `<unit>.pid` that outside tools read. The launch time survives adoption so that the unit's
//! "active since" stays the time its process started and read its configuration: haop restarts
//! a unit whose configuration changed after that time (a change an interrupted apply wrote but
//! did not act on), and an agent restart must not hide such a change.
//!
//! A pid with its start time names one process for the life of the machine, so a recycled pid,
//! even one running the same program for another lab host, is never mistaken for the unit's.
//! Older agents wrote only the pid file; for that the process must also run the unit's program
//! (compared by device and inode, which works across the mount namespaces of lab hosts).
//!
//! Either way the process must be a live process group leader in the agent's own network
//! namespace. An adopted process is not the agent's child, so its end is noticed by polling
//! `/proc` and its exit status is unknown; the supervisor treats that end as a failure for
//! `Restart=`.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

/// How often an adopted process is checked for having ended.
pub const POLL: Duration = Duration::from_millis(100);

/// A process as `/proc/PID/stat` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    state: char,
    pgrp: u32,
    start_time: u64,
}

fn stat(pid: u32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_stat(&text)
}

/// Fields after the command name in parentheses (which may hold spaces and parentheses):
/// state (3), ppid, pgrp (5), ..., starttime (22).
fn parse_stat(text: &str) -> Option<Stat> {
    let rest = text.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(Stat {
        state: fields.first()?.chars().next()?,
        pgrp: fields.get(2)?.parse().ok()?,
        start_time: fields.get(19)?.parse().ok()?,
    })
}

/// The kernel's start time of `pid`, when it is a process that has not ended.
pub fn start_time(pid: u32) -> Option<u64> {
    stat(pid)
        .filter(|s| !matches!(s.state, 'Z' | 'X'))
        .map(|s| s.start_time)
}

/// A unit's process that an earlier agent started and that still runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Orphan {
    pub pid: u32,
    pub start_time: u64,
    /// When the earlier agent launched it (Unix ms); `None` from an agent that did not record
    /// it.
    pub since_unix_ms: Option<i64>,
}

impl Orphan {
    /// Whether the process still runs (the same process: same pid and start time).
    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start_time)
    }

    /// Waits until the process has ended.
    pub async fn ended(&self) {
        while self.alive() {
            tokio::time::sleep(POLL).await;
        }
    }
}

/// The `.proc` file's text for a process launched at `since_unix_ms`.
pub fn proc_file_text(pid: u32, start_time: u64, since_unix_ms: i64) -> String {
    format!("{pid} {start_time} {since_unix_ms}\n")
}

/// What a `.proc` or pid file records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Recorded {
    pid: u32,
    /// Absent from a pid file.
    start_time: Option<u64>,
    /// Absent from a pid file and from an older agent's `.proc` file.
    since_unix_ms: Option<i64>,
}

/// A `.proc` file's text (`PID START [SINCE_MS]`) or a pid file's (`PID`).
fn parse_pid_file(text: &str) -> Option<Recorded> {
    let mut words = text.split_whitespace();
    let pid: u32 = words.next()?.parse().ok()?;
    let start_time = match words.next() {
        Some(w) => Some(w.parse().ok()?),
        None => None,
    };
    let since_unix_ms = match words.next() {
        Some(w) => Some(w.parse().ok()?),
        None => None,
    };
    (pid > 1).then_some(Recorded {
        pid,
        start_time,
        since_unix_ms,
    })
}

/// The unit's process an earlier agent left running, if any: the one `proc_file` names when
/// it is still that process (a live group leader in this process's network namespace, with the
/// recorded start time); without a `proc_file` (an older agent), the one `pid_file` names when
/// it is such a group leader running `program`.
pub fn find(proc_file: &Path, pid_file: &Path, program: &str) -> Option<Orphan> {
    let text = match std::fs::read_to_string(proc_file) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let old = std::fs::read_to_string(pid_file).ok()?;
            // Only the pid counts in a pid file, whatever else it holds.
            old.split_whitespace().next()?.to_string()
        }
        Err(_) => return None,
    };
    let recorded = parse_pid_file(&text)?;
    let pid = recorded.pid;
    let s = stat(pid)?;
    if matches!(s.state, 'Z' | 'X') || s.pgrp != pid || !same_net_namespace(pid) {
        return None;
    }
    match recorded.start_time {
        Some(t) if t == s.start_time => {}
        Some(_) => return None,
        None if runs_program(pid, program) => {}
        None => return None,
    }
    Some(Orphan {
        pid,
        start_time: s.start_time,
        since_unix_ms: recorded.since_unix_ms,
    })
}

fn same_net_namespace(pid: u32) -> bool {
    let theirs = std::fs::read_link(format!("/proc/{pid}/ns/net"));
    let ours = std::fs::read_link("/proc/self/ns/net");
    matches!((theirs, ours), (Ok(a), Ok(b)) if a == b)
}

/// Whether `pid` runs the file `program` names (same device and inode: the path a process in
/// another mount namespace shows for its executable may differ from ours).
fn runs_program(pid: u32, program: &str) -> bool {
    let exe = std::fs::metadata(format!("/proc/{pid}/exe"));
    let wanted = std::fs::metadata(program);
    matches!((exe, wanted), (Ok(a), Ok(b)) if a.dev() == b.dev() && a.ino() == b.ino())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::CommandExt;

    #[test]
    fn stat_fields_survive_odd_command_names() {
        let line = "42 (a) b (c) S 1 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 123456 0 0";
        assert_eq!(
            parse_stat(line),
            Some(Stat {
                state: 'S',
                pgrp: 42,
                start_time: 123456
            })
        );
        assert_eq!(parse_stat("42 (x"), None);
    }

    #[test]
    fn pid_files_old_and_new() {
        let rec = |pid, start_time, since_unix_ms| {
            Some(Recorded {
                pid,
                start_time,
                since_unix_ms,
            })
        };
        assert_eq!(parse_pid_file("42\n"), rec(42, None, None));
        assert_eq!(parse_pid_file("42 9000\n"), rec(42, Some(9000), None));
        assert_eq!(
            parse_pid_file(&proc_file_text(42, 9000, 1_700_000_000_123)),
            rec(42, Some(9000), Some(1_700_000_000_123))
        );
        assert_eq!(parse_pid_file("42 9000 soon\n"), None);
        assert_eq!(parse_pid_file("1\n"), None);
        assert_eq!(parse_pid_file("x\n"), None);
        assert_eq!(parse_pid_file("42 x\n"), None);
        assert_eq!(
            parse_pid_file(&proc_file_text(42, 7, 8)),
            rec(42, Some(7), Some(8))
        );
    }

    #[test]
    fn a_live_group_leader_is_found_only_with_its_start_time_or_program() {
        let dir = tempfile::tempdir().unwrap();
        let (proc_file, pid_file) = (dir.path().join("u.proc"), dir.path().join("u.pid"));
        let mut child = std::process::Command::new("/bin/sleep")
            .arg("30")
            .process_group(0)
            .spawn()
            .unwrap();
        let pid = child.id();
        let start = start_time(pid).unwrap();
        std::fs::write(&pid_file, format!("{pid}\n")).unwrap();

        std::fs::write(&proc_file, proc_file_text(pid, start, 1_700_000_000_123)).unwrap();
        let found = find(&proc_file, &pid_file, "/no/such/program").expect("by start time");
        assert_eq!(
            found,
            Orphan {
                pid,
                start_time: start,
                since_unix_ms: Some(1_700_000_000_123),
            }
        );
        assert!(found.alive());
        // Another start time: a recycled pid, not the unit's process.
        std::fs::write(&proc_file, proc_file_text(pid, start + 1, 0)).unwrap();
        assert_eq!(find(&proc_file, &pid_file, "/bin/sleep"), None);
        // An older agent's pid file alone: the program decides.
        std::fs::remove_file(&proc_file).unwrap();
        assert!(find(&proc_file, &pid_file, "/bin/sleep").is_some());
        assert_eq!(find(&proc_file, &pid_file, "/bin/cat"), None);

        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!found.alive());
        std::fs::write(&proc_file, proc_file_text(pid, start, 0)).unwrap();
        assert_eq!(find(&proc_file, &pid_file, "/bin/sleep"), None);
    }

    #[test]
    fn a_process_that_leads_no_group_is_not_found() {
        let dir = tempfile::tempdir().unwrap();
        let (proc_file, pid_file) = (dir.path().join("u.proc"), dir.path().join("u.pid"));
        let mut child = std::process::Command::new("/bin/sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = child.id();
        std::fs::write(&proc_file, proc_file_text(pid, start_time(pid).unwrap(), 0)).unwrap();
        assert_eq!(find(&proc_file, &pid_file, "/bin/sleep"), None);
        child.kill().unwrap();
        child.wait().unwrap();
    }
}
