//! What a step would change, as `haop plan` shows it (and `-o json` serializes it).
//!
//! Every family's `check` answers a [`Change`]; files answer it through [`file_change`], with a
//! unified diff, so that a plan of a file reads the same whichever family writes it.

/// What a step would change.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Change {
    Unchanged,
    /// Something new: a file, a certificate, a unit.
    Create {
        detail: String,
    },
    /// A file that differs: its unified diff.
    Update {
        detail: String,
        diff: String,
    },
    /// Something to do that is not a file: start a unit, apply kernel settings, wait.
    Run {
        detail: String,
    },
}

impl Change {
    pub fn is_change(&self) -> bool {
        !matches!(self, Change::Unchanged)
    }
}

/// A unified diff of two texts, labelled with the path.
pub fn unified_diff(path: &str, old: &str, new: &str) -> String {
    similar::TextDiff::from_lines(old, new)
        .unified_diff()
        .context_radius(3)
        .header(path, path)
        .to_string()
}

/// The change from `current` (text and mode, `None` when missing) to `wanted` with `mode`.
pub fn file_change(path: &str, current: Option<(String, u32)>, wanted: &str, mode: u32) -> Change {
    match current {
        None => Change::Create {
            detail: format!("create {path} (mode {mode:04o})"),
        },
        Some((text, m)) if text == wanted => {
            if m == mode {
                Change::Unchanged
            } else {
                Change::Update {
                    detail: format!("mode of {path} {m:04o} -> {mode:04o}"),
                    diff: String::new(),
                }
            }
        }
        Some((text, _)) => Change::Update {
            detail: format!("update {path}"),
            diff: unified_diff(path, &text, wanted),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_changes() {
        assert_eq!(
            file_change("/x", Some(("a\n".into(), 0o644)), "a\n", 0o644),
            Change::Unchanged
        );
        assert!(matches!(
            file_change("/x", None, "a\n", 0o644),
            Change::Create { .. }
        ));
        assert!(matches!(
            file_change("/x", Some(("a\n".into(), 0o600)), "a\n", 0o644),
            Change::Update { ref diff, .. } if diff.is_empty()
        ));
        let Change::Update { diff, .. } =
            file_change("/x", Some(("a\nb\n".into(), 0o644)), "a\nc\n", 0o644)
        else {
            panic!("expected an update");
        };
        assert!(diff.contains("-b\n") && diff.contains("+c\n"), "{diff}");
        assert!(diff.starts_with("--- /x\n+++ /x\n"), "{diff}");
    }
}
