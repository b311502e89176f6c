//! How an error reads to a person: one renderer for every error chain haop shows.

/// An error and its sources, `: `-separated, for one line of output. A source whose text the
/// chain already holds is skipped (an error that repeats its source's message says it once).
pub fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let t = s.to_string();
        if !out.contains(&t) {
            out.push_str(": ");
            out.push_str(&t);
        }
        source = s.source();
    }
    out
}
