//! Failpoints: a named place in a long operation where a test can make haop die abruptly, as a
//! coordinator killed by the operator, a crashed laptop or an OOM kill would (etcd tests its
//! own recovery the same way, with gofail).
//!
//! `HAOP_FAILPOINT=NAME` makes the process abort (SIGABRT: no destructor, no cleanup, nothing
//! flushed that was not written already) the first time it passes [`hit`]`(NAME)`. Names are
//! `recover:after-ACTION` (see [`crate::etcd::recover`]) and `apply:after-etcd-restart` (an etcd
//! member just restarted by `haop apply`, before it is back and before the next one). Unset, a
//! failpoint costs one environment lookup per pass. Only tests set it; the variable is
//! documented so that nobody sets it by accident without knowing what it does.

/// The environment variable naming the failpoint to trip.
pub const ENV: &str = "HAOP_FAILPOINT";

/// Aborts the process when `name` is the failpoint named by [`ENV`].
pub fn hit(name: &str) {
    if std::env::var_os(ENV).is_some_and(|v| v == name) {
        eprintln!("haop: failpoint {name}: aborting ({ENV} is set)");
        std::process::abort();
    }
}
