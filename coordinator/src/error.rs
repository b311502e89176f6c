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

/// An error for one table cell: its own message and its root cause, without the layers of
/// transport wrappers in between (tonic's are long and repeat each other).
pub fn short_error(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cause = None;
    let mut next = e.source();
    while let Some(s) = next {
        if let Some(io) = s.downcast_ref::<std::io::Error>() {
            cause = Some(io.to_string());
            break;
        }
        if let Some(etcd_client::Error::GRpcStatus(status)) = s.downcast_ref::<etcd_client::Error>()
        {
            cause = Some(status.message().to_string());
            next = std::error::Error::source(status);
            continue;
        }
        if let Some(status) = s.downcast_ref::<tonic::Status>() {
            cause = Some(status.message().to_string());
        } else if s.source().is_none() {
            cause = Some(s.to_string());
        }
        next = s.source();
    }
    match cause {
        Some(c) if !e.to_string().contains(&c) => format!("{e}: {c}"),
        _ => e.to_string(),
    }
}
