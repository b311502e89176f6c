//! How long etcd operations show their progress: a bar on a terminal, a line every few
//! seconds in a log.
//!
//! A learner receiving a 2 GiB database, or a snapshot streaming to the state dir, takes
//! minutes. On a terminal each gets an indicatif bar (bytes of the total, rate, time left; then
//! the raft index of the leader's); elsewhere (systemd, CI, a pipe) one line every
//! [`LINE_EVERY`], so a log shows that work goes on without being flooded.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use haop_coordinator::etcd::catchup::human_bytes;
use haop_coordinator::etcd::recover::Progress;
use indicatif::{ProgressBar, ProgressStyle};

/// How often a long wait writes a line when stderr is not a terminal.
pub const LINE_EVERY: Duration = Duration::from_secs(5);

/// Shows [`Progress`] on stderr.
#[derive(Debug)]
pub struct View {
    terminal: bool,
    state: Mutex<State>,
    /// What `Done` says, after the elapsed time.
    done: String,
}

#[derive(Debug, Default)]
struct State {
    bar: Option<(String, ProgressBar)>,
    last_line: Option<Instant>,
}

impl View {
    /// A view that ends with "`done` (1.23 s)".
    pub fn new(done: impl Into<String>) -> View {
        View {
            terminal: std::io::stderr().is_terminal(),
            state: Mutex::new(State::default()),
            done: done.into(),
        }
    }

    /// Shows one event.
    pub fn show(&self, p: Progress) {
        let mut st = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match p {
            Progress::Action(a) => line(&mut st, &format!("  {a}")),
            Progress::Waiting(w) => line(&mut st, &format!("  … {w}")),
            Progress::Done { elapsed } => {
                finish(&mut st);
                eprintln!("  {} ({:.2} s)", self.done, elapsed.as_secs_f64());
            }
            Progress::Transfer { what, bytes, total } => {
                if self.terminal {
                    let bar = bar_for(&mut st, &what, total.unwrap_or(0).max(bytes), true);
                    bar.set_length(total.unwrap_or(0).max(bytes));
                    bar.set_position(bytes);
                } else if due(&mut st) {
                    eprintln!(
                        "  … {what}: {}{}",
                        human_bytes(bytes),
                        total
                            .map(|t| format!(" of about {}", human_bytes(t)))
                            .unwrap_or_default()
                    );
                }
            }
            Progress::CatchUp(r) => {
                if self.terminal {
                    match (r.raft_index, r.leader_index, r.data_bytes) {
                        (Some(i), Some(l), _) => {
                            let key = format!("{} applying entries", r.name);
                            let bar = bar_for(&mut st, &key, l, false);
                            bar.set_length(l.max(i));
                            bar.set_position(i);
                        }
                        (_, _, Some(b)) => {
                            let key = format!("{} receiving the database", r.name);
                            let total = r.target_bytes.unwrap_or(0).max(b);
                            let bar = bar_for(&mut st, &key, total, true);
                            bar.set_length(total);
                            bar.set_position(b);
                        }
                        _ => line(&mut st, &format!("  … {r}")),
                    }
                } else if due(&mut st) {
                    eprintln!("  … {r}");
                }
            }
        }
    }
}

impl View {
    /// Clears a bar that is still shown (an operation that ends without `Done`).
    pub fn finish(&self) {
        finish(&mut self.state.lock().unwrap_or_else(|e| e.into_inner()));
    }
}

fn due(st: &mut State) -> bool {
    let now = Instant::now();
    if st.last_line.is_some_and(|t| now - t < LINE_EVERY) {
        return false;
    }
    st.last_line = Some(now);
    true
}

fn line(st: &mut State, text: &str) {
    match &st.bar {
        Some((_, bar)) => bar.println(text),
        None => eprintln!("{text}"),
    }
}

fn finish(st: &mut State) {
    if let Some((_, bar)) = st.bar.take() {
        bar.finish_and_clear();
    }
}

/// The bar for `key`, a new one when the key changed.
fn bar_for<'a>(st: &'a mut State, key: &str, len: u64, bytes: bool) -> &'a ProgressBar {
    if st.bar.as_ref().is_none_or(|(k, _)| k != key) {
        finish(st);
        let bar = ProgressBar::new(len);
        let template = if bytes {
            "  {msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}"
        } else {
            "  {msg} [{bar:30}] {pos}/{len} eta {eta}"
        };
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(key.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        st.bar = Some((key.to_string(), bar));
    }
    &st.bar.as_ref().expect("set above").1
}
