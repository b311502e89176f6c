//! The agent's logs: one level for everything, to standard error (the journal on a real host).
//!
//! The agent takes a plain level (`--log-level`, else `RUST_LOG` when it names one, else
//! `info`) rather than `tracing-subscriber`'s per-target `EnvFilter`: that filter parses its
//! directives with `regex`, and the regex engine was a sizeable share of the resident memory
//! of an idle agent, for no use on a host. `haop` keeps the full filter.

use tracing_subscriber::filter::LevelFilter;

/// The level when neither `--log-level` nor `RUST_LOG` names one.
pub const DEFAULT_LEVEL: LevelFilter = LevelFilter::INFO;

/// The level to log at, from `--log-level` (`flag`) and then `RUST_LOG` (`env`), and the value
/// of `RUST_LOG` when it was set but ignored because it is not a plain level (such as
/// `haop_agent=debug`), so that the caller can say so once logging is up.
pub fn choose_level(flag: Option<LevelFilter>, env: Option<&str>) -> (LevelFilter, Option<String>) {
    if let Some(level) = flag {
        return (level, None);
    }
    match env.map(str::trim).filter(|v| !v.is_empty()) {
        None => (DEFAULT_LEVEL, None),
        Some(v) => match v.parse::<LevelFilter>() {
            Ok(level) => (level, None),
            Err(_) => (DEFAULT_LEVEL, Some(v.to_string())),
        },
    }
}

/// Installs the global subscriber: `level` for every target, no target names in the lines,
/// to standard error, with colours only when that is a terminal (not in the journal).
pub fn init(level: LevelFilter) {
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_target(false)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_flag_wins_over_rust_log() {
        assert_eq!(
            choose_level(Some(LevelFilter::DEBUG), Some("warn")),
            (LevelFilter::DEBUG, None)
        );
    }

    #[test]
    fn rust_log_with_a_plain_level_is_taken() {
        assert_eq!(choose_level(None, Some("warn")), (LevelFilter::WARN, None));
        assert_eq!(
            choose_level(None, Some(" TRACE ")),
            (LevelFilter::TRACE, None)
        );
        assert_eq!(choose_level(None, Some("off")), (LevelFilter::OFF, None));
    }

    #[test]
    fn info_without_a_level() {
        assert_eq!(choose_level(None, None), (LevelFilter::INFO, None));
        assert_eq!(choose_level(None, Some("")), (LevelFilter::INFO, None));
    }

    #[test]
    fn rust_log_directives_are_reported_and_ignored() {
        assert_eq!(
            choose_level(None, Some("haop_agent=debug,h2=info")),
            (
                LevelFilter::INFO,
                Some("haop_agent=debug,h2=info".to_string())
            )
        );
    }
}
