//! The apply journal: `<state-dir>/journal/<cluster>.jsonl`, one JSON object per line.
//!
//! It records when an apply starts, every step's outcome, and when it ends. Steps are ensures,
//! so the journal is not needed to converge; it tells the operator what happened, and lets a
//! rerun say that the previous apply was interrupted and where. Writes are appends of whole
//! lines, flushed each time; a failure to write the journal is logged, never fatal.

use std::io::Write;
use std::path::{Path, PathBuf};

use serde_json::json;
use tracing::warn;

use super::plan::{Phase, Target};
use super::report::{ApplyReport, Outcome};

#[derive(Debug, Clone)]
pub struct Journal {
    path: PathBuf,
}

fn now() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// The last byte of a file, without reading the rest.
fn last_byte(path: &Path) -> Option<u8> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(path).ok()?;
    f.seek(SeekFrom::End(-1)).ok()?;
    let mut b = [0u8; 1];
    f.read_exact(&mut b).ok()?;
    Some(b[0])
}

impl Journal {
    pub fn open(state_dir: &Path, cluster: &str) -> Journal {
        Journal {
            path: state_dir.join("journal").join(format!("{cluster}.jsonl")),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn append(&self, value: serde_json::Value) {
        let write = || -> std::io::Result<()> {
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            // A crash can leave half a line: start on a fresh one.
            let cut = last_byte(&self.path).is_some_and(|b| b != b'\n');
            let mut line = if cut { "\n".to_string() } else { String::new() };
            line.push_str(&value.to_string());
            line.push('\n');
            f.write_all(line.as_bytes())?;
            f.sync_data()
        };
        if let Err(e) = write() {
            warn!(path = %self.path.display(), error = %e, "cannot write the apply journal");
        }
    }

    pub fn record_start(&self) {
        self.append(json!({"ts": now(), "event": "apply-start"}));
    }

    pub fn record_step(&self, phase: Phase, target: &Target, step: &str, outcome: &Outcome) {
        let (status, error) = match outcome {
            Outcome::Changed => ("changed", None),
            Outcome::Unchanged => ("unchanged", None),
            Outcome::Failed(e) => ("failed", Some(e.as_str())),
        };
        self.append(json!({
            "ts": now(), "event": "step", "phase": phase.as_str(), "host": target.as_str(),
            "step": step, "status": status, "error": error,
        }));
    }

    pub fn record_end(&self, report: &ApplyReport) {
        self.append(json!({
            "ts": now(), "event": "apply-end", "changed": report.changed,
            "unchanged": report.unchanged,
        }));
    }

    /// When the last apply started and never ended: the last phase it recorded.
    pub fn interrupted_phase(&self) -> Option<String> {
        let text = std::fs::read_to_string(&self.path).ok()?;
        let mut last_phase = None;
        let mut open = false;
        for line in text.lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue; // a line cut by a crash
            };
            match v["event"].as_str() {
                Some("apply-start") => {
                    open = true;
                    last_phase = Some("start".to_string());
                }
                Some("apply-end") => open = false,
                Some("step") => last_phase = v["phase"].as_str().map(str::to_string),
                _ => {}
            }
        }
        if open {
            last_phase
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unfinished_apply_is_seen_and_a_cut_line_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let j = Journal::open(dir.path(), "c");
        assert_eq!(j.interrupted_phase(), None);
        j.record_start();
        j.record_step(
            Phase::EtcdConfig,
            &Target::Host("etcd1".into()),
            "file /etc/etcd.env",
            &Outcome::Changed,
        );
        j.record_step(
            Phase::EtcdQuorum,
            &Target::Cluster,
            "etcd quorum of 3 members",
            &Outcome::Unchanged,
        );
        // The format as it was: a cluster-wide step's host is "cluster".
        let text = std::fs::read_to_string(j.path()).unwrap();
        let steps: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .filter(|v: &serde_json::Value| v["event"] == "step")
            .collect();
        assert_eq!(steps[0]["host"], "etcd1");
        assert_eq!(steps[0]["status"], "changed");
        assert_eq!(steps[1]["host"], "cluster");
        assert_eq!(steps[1]["phase"], "etcd-quorum");
        std::fs::OpenOptions::new()
            .append(true)
            .open(j.path())
            .unwrap()
            .write_all(b"{\"ts\": \"cut")
            .unwrap();
        assert_eq!(j.interrupted_phase().as_deref(), Some("etcd-quorum"));
        j.record_end(&ApplyReport::default());
        assert_eq!(j.interrupted_phase(), None);
    }
}
