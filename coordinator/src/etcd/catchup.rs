//! Following a member that catches up, by its progress rather than by a fixed timeout.
//!
//! A learner that receives a 0.5-2 GiB database answers nothing for minutes: etcd streams the
//! snapshot into `member/snap/` in its data dir, then opens it and rebuilds its index, and only
//! then serves its client port. That is etcd working, not failing. So a learner is judged by
//! what moves: the bytes of its data dir (asked from its host's agent), then its raft index
//! approaching the leader's. [`Tracker`] remembers, per member, the last time anything moved;
//! only when nothing has moved for the stall timeout does it say *stalled*, and the planner then
//! refuses to touch the member (it is left for a rerun), rather than removing and wiping a
//! learner that was nearly there.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// What was seen of one member in one observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sample {
    /// Its etcd process runs (the unit is active or activating).
    pub running: bool,
    /// Bytes of its data dir, when the host answered.
    pub data_bytes: Option<u64>,
    /// Its raft index, when it answered through its client port.
    pub raft_index: Option<u64>,
}

/// A member's catch-up as the tracker sums it up.
#[derive(Debug, Clone, PartialEq)]
pub struct Report {
    pub name: String,
    pub running: bool,
    pub data_bytes: Option<u64>,
    /// The leader's database size: roughly what the learner's data dir grows to.
    pub target_bytes: Option<u64>,
    pub raft_index: Option<u64>,
    pub leader_index: Option<u64>,
    /// Bytes per second over the last observations, when bytes are arriving.
    pub rate: Option<f64>,
    /// How long nothing has moved.
    pub idle_for: Duration,
    /// `idle_for` passed the stall timeout.
    pub stalled: bool,
}

impl Report {
    /// What stalled, for an error message: the last bytes and index seen and for how long.
    pub fn stall_detail(&self) -> String {
        let mut what = Vec::new();
        if let Some(b) = self.data_bytes {
            what.push(format!(
                "its data dir stayed at {}{}",
                human_bytes(b),
                self.target_bytes
                    .map(|t| format!(" of about {}", human_bytes(t)))
                    .unwrap_or_default()
            ));
        }
        match (self.raft_index, self.leader_index) {
            (Some(i), Some(l)) => what.push(format!("its raft index stayed at {i} of {l}")),
            (Some(i), None) => what.push(format!("its raft index stayed at {i}")),
            _ => what.push("it did not answer on its client port".into()),
        }
        format!(
            "{} made no progress for {} s: {}",
            self.name,
            self.idle_for.as_secs(),
            what.join(", ")
        )
    }
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.name)?;
        if !self.running {
            return write!(f, ": not running");
        }
        match (self.raft_index, self.leader_index) {
            (Some(i), Some(l)) => write!(f, ": raft index {i} of {l}")?,
            _ => {
                write!(f, ": receiving the database")?;
                if let Some(b) = self.data_bytes {
                    write!(f, ", {} on disk", human_bytes(b))?;
                    if let Some(t) = self.target_bytes {
                        write!(f, " of about {}", human_bytes(t))?;
                    }
                }
                if let Some(r) = self.rate {
                    write!(f, ", {}/s", human_bytes(r as u64))?;
                }
            }
        }
        if self.idle_for >= Duration::from_secs(5) {
            write!(f, " (no progress for {} s)", self.idle_for.as_secs())?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone)]
struct Seen {
    sample: Sample,
    moved_at: Instant,
    /// (when, bytes) of the first sample with bytes since the last reset, for the rate.
    since: Option<(Instant, u64)>,
}

/// Per-member progress memory for one operation.
#[derive(Debug)]
pub struct Tracker {
    stall: Duration,
    seen: HashMap<u64, Seen>,
}

impl Tracker {
    /// A tracker that calls a member stalled after `stall` without progress.
    pub fn new(stall: Duration) -> Tracker {
        Tracker {
            stall,
            seen: HashMap::new(),
        }
    }

    /// The stall timeout.
    pub fn stall(&self) -> Duration {
        self.stall
    }

    /// Records `sample` of member `id` at `now`; answers its report. Progress is any change of
    /// the data dir's size (up while a snapshot arrives; down when etcd replaces its files), a
    /// higher raft index, or the process starting. The first sample counts as progress.
    pub fn observe(
        &mut self,
        id: u64,
        name: &str,
        sample: Sample,
        target_bytes: Option<u64>,
        leader_index: Option<u64>,
        now: Instant,
    ) -> Report {
        let seen = self.seen.entry(id).or_insert_with(|| Seen {
            sample,
            moved_at: now,
            since: sample.data_bytes.map(|b| (now, b)),
        });
        let before = seen.sample;
        let moved = (sample.data_bytes.is_some() && sample.data_bytes != before.data_bytes)
            || sample.raft_index.unwrap_or(0) > before.raft_index.unwrap_or(0)
            || (sample.running && !before.running);
        if moved {
            seen.moved_at = now;
        }
        if seen.since.is_none() {
            seen.since = sample.data_bytes.map(|b| (now, b));
        }
        // Keep the last known values when one observation misses them.
        seen.sample = Sample {
            running: sample.running,
            data_bytes: sample.data_bytes.or(before.data_bytes),
            raft_index: sample.raft_index.or(before.raft_index),
        };
        let rate = match (seen.since, seen.sample.data_bytes) {
            (Some((t0, b0)), Some(b)) if b > b0 && now > t0 => {
                Some((b - b0) as f64 / (now - t0).as_secs_f64())
            }
            _ => None,
        };
        let idle_for = now.saturating_duration_since(seen.moved_at);
        Report {
            name: name.to_string(),
            running: sample.running,
            data_bytes: seen.sample.data_bytes,
            target_bytes,
            raft_index: seen.sample.raft_index,
            leader_index,
            rate,
            idle_for,
            stalled: idle_for > self.stall,
        }
    }

    /// Forgets member `id` (removed, or caught up).
    pub fn forget(&mut self, id: u64) {
        self.seen.remove(&id);
    }
}

/// `1.5 GiB`, `312 MiB`, `20 KiB`, `512 B`.
pub fn human_bytes(b: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if b < 1024 {
        return format!("{b} B");
    }
    let mut v = b as f64 / 1024.0;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    if v >= 100.0 {
        format!("{v:.0} {}", UNITS[unit])
    } else {
        format!("{v:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(bytes: u64, index: Option<u64>) -> Sample {
        Sample {
            running: true,
            data_bytes: Some(bytes),
            raft_index: index,
        }
    }

    #[test]
    fn bytes_or_index_moving_is_progress_and_silence_is_a_stall() {
        let t0 = Instant::now();
        let s = |secs| t0 + Duration::from_secs(secs);
        let mut t = Tracker::new(Duration::from_secs(30));
        let r = t.observe(1, "etcd2", sample(0, None), Some(1000), None, s(0));
        assert!(!r.stalled && r.idle_for.is_zero());
        // Bytes arrive slowly for a long time: never stalled.
        for k in 1..20 {
            let r = t.observe(
                1,
                "etcd2",
                sample(k * 10, None),
                Some(1000),
                None,
                s(k * 20),
            );
            assert!(!r.stalled, "moving at {k}");
        }
        // Then the index moves without the bytes changing.
        let r = t.observe(1, "etcd2", sample(190, Some(5)), None, Some(50), s(400));
        assert!(!r.stalled);
        let r = t.observe(1, "etcd2", sample(190, Some(5)), None, Some(50), s(425));
        assert!(!r.stalled && r.idle_for == Duration::from_secs(25));
        let r = t.observe(1, "etcd2", sample(190, Some(5)), None, Some(50), s(431));
        assert!(r.stalled);
        assert!(
            r.stall_detail().contains("raft index stayed at 5 of 50"),
            "{}",
            r.stall_detail()
        );
        // Another member is tracked on its own.
        let r = t.observe(2, "etcd3", sample(0, None), None, None, s(431));
        assert!(!r.stalled);
        t.forget(1);
        assert!(
            !t.observe(1, "etcd2", sample(190, Some(5)), None, None, s(500))
                .stalled
        );
    }

    #[test]
    fn a_missing_answer_keeps_the_last_values() {
        let t0 = Instant::now();
        let mut t = Tracker::new(Duration::from_secs(10));
        t.observe(1, "e", sample(100, None), None, None, t0);
        let missing = Sample {
            running: true,
            data_bytes: None,
            raft_index: None,
        };
        let r = t.observe(1, "e", missing, None, None, t0 + Duration::from_secs(5));
        assert_eq!(r.data_bytes, Some(100));
        // A missing answer is no progress.
        let r = t.observe(1, "e", missing, None, None, t0 + Duration::from_secs(11));
        assert!(r.stalled);
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(20 * 1024), "20.0 KiB");
        assert_eq!(human_bytes(312 * 1024 * 1024), "312 MiB");
        assert_eq!(human_bytes(3 * 512 * 1024 * 1024), "1.5 GiB");
    }
}
