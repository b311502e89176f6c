//! What is wrong with an inventory file, said so that a person can fix it in one pass.

use std::fmt;
use std::path::PathBuf;

/// How bad a [`Problem`] is: errors refuse the file, warnings are reported and accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Severity {
    Error,
    Warning,
}

impl fmt::Display for Severity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Severity::Error => "error",
            Severity::Warning => "warning",
        })
    }
}

/// One finding of validation, with where it is and what to do about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub severity: Severity,
    /// The inventory file, as it was named to the loader.
    pub file: String,
    /// The field path: `hosts[2].address`, `vip.router_id`, `hosts` for the whole list.
    pub field: String,
    pub message: String,
    /// What to change.
    pub hint: String,
}

impl Problem {
    pub fn is_error(&self) -> bool {
        self.severity == Severity::Error
    }
}

impl fmt::Display for Problem {
    /// `error: inv.yaml: hosts[2].address: MESSAGE` and the hint on an indented second line.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}: {}: {}",
            self.severity, self.file, self.field, self.message
        )?;
        if !self.hint.is_empty() {
            write!(f, "\n  hint: {}", self.hint)?;
        }
        Ok(())
    }
}

/// Why an inventory could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum InventoryError {
    #[error("cannot read inventory {}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not YAML, or its structure is not an inventory's (an unknown key, a list
    /// where a map belongs). Only the first such error is known: serde stops there.
    #[error("{}{}{}", location(file, *line, *column), message, hint_suffix(hint))]
    Parse {
        file: String,
        /// 1-based, when known.
        line: Option<usize>,
        /// 1-based, when known.
        column: Option<usize>,
        message: String,
        hint: Option<String>,
    },
    /// At least one error; every problem found, warnings included, each field's own checks in file order, then the checks across fields.
    #[error("{}", render_invalid(file, problems))]
    Invalid {
        file: String,
        problems: Vec<Problem>,
    },
}

impl InventoryError {
    /// The problems of an [`InventoryError::Invalid`]; empty for the other kinds.
    pub fn problems(&self) -> &[Problem] {
        match self {
            InventoryError::Invalid { problems, .. } => problems,
            InventoryError::Read { .. } | InventoryError::Parse { .. } => &[],
        }
    }
}

fn location(file: &str, line: Option<usize>, column: Option<usize>) -> String {
    match (line, column) {
        (Some(l), Some(c)) => format!("{file}:{l}:{c}: "),
        (Some(l), None) => format!("{file}:{l}: "),
        _ => format!("{file}: "),
    }
}

fn hint_suffix(hint: &Option<String>) -> String {
    match hint {
        Some(h) => format!("\n  hint: {h}"),
        None => String::new(),
    }
}

fn render_invalid(file: &str, problems: &[Problem]) -> String {
    let errors = problems.iter().filter(|p| p.is_error()).count();
    let warnings = problems.len() - errors;
    let plural = |n: usize, word: &str| {
        if n == 1 {
            format!("{n} {word}")
        } else {
            format!("{n} {word}s")
        }
    };
    let mut out = format!("inventory {file} is invalid: {}", plural(errors, "error"));
    if warnings > 0 {
        out.push_str(&format!(", {}", plural(warnings, "warning")));
    }
    for p in problems {
        out.push_str("\n- ");
        out.push_str(&p.to_string().replace('\n', "\n  "));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn invalid_lists_every_problem() {
        let p = |severity, field: &str| Problem {
            severity,
            file: "inv.yaml".into(),
            field: field.into(),
            message: "bad".into(),
            hint: "fix it".into(),
        };
        let e = InventoryError::Invalid {
            file: "inv.yaml".into(),
            problems: vec![
                p(Severity::Error, "hosts[0].name"),
                p(Severity::Warning, "hosts"),
            ],
        };
        assert_eq!(
            e.to_string(),
            "inventory inv.yaml is invalid: 1 error, 1 warning\n\
             - error: inv.yaml: hosts[0].name: bad\n    hint: fix it\n\
             - warning: inv.yaml: hosts: bad\n    hint: fix it"
        );
        assert_eq!(e.problems().len(), 2);
    }

    #[test]
    fn parse_errors_name_the_place() {
        let e = InventoryError::Parse {
            file: "inv.yaml".into(),
            line: Some(3),
            column: Some(7),
            message: "did not find expected key".into(),
            hint: None,
        };
        assert_eq!(e.to_string(), "inv.yaml:3:7: did not find expected key");
    }
}
