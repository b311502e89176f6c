//! Failpoints: a named place in a long operation where a test can make haop die abruptly, as a
//! coordinator killed by the operator, a crashed laptop or an OOM kill would (etcd tests its
//! own recovery the same way, with gofail).
//!
//! `HAOP_FAILPOINT=NAME` makes the process abort (SIGABRT: no destructor, no cleanup, nothing
//! flushed that was not written already) the first time it passes [`hit`]`(NAME)`. Names are
//! `recover:after-ACTION` (see [`crate::etcd::recover`]), `apply:after-etcd-restart` (an etcd
//! member just restarted by `haop apply`, before it is back and before the next one), and the
//! agent CA rotation's (see [`crate::certs::rotate_agent`]): `rotate-agent:after-phase:PHASE`
//! (the phase recorded done) and `rotate-agent:after-trust:HOST`, `...:after-reissue:HOST`,
//! `...:after-drop:HOST` (that host's step done, the next host's not begun); the etcd CA
//! rotation's `rotate-ca:after-step`; adoption's `adopt:after-step` (a migration step recorded
//! done) and `adopt:before-restart` (a member's files written, etcd not restarted). Unset, a
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

/// The environment variable that turns the failpoint of [`ENV`] into a pause of this many
/// seconds instead of an abort (for [`pass`]): a coordinator that hangs or is cut off in the
/// middle of an operation, as the operator's takeover test needs, rather than one that dies.
pub const SLEEP_ENV: &str = "HAOP_FAILPOINT_SLEEP";

/// Like [`hit`], in async code: with [`SLEEP_ENV`] set to a number of seconds, the failpoint
/// pauses this task that long (the process and its other tasks go on) instead of aborting.
pub async fn pass(name: &str) {
    if std::env::var_os(ENV).is_none_or(|v| v != name) {
        return;
    }
    match std::env::var(SLEEP_ENV)
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    {
        Some(secs) => {
            eprintln!("haop: failpoint {name}: pausing {secs} s ({SLEEP_ENV} is set)");
            tokio::time::sleep(std::time::Duration::from_secs(secs)).await;
        }
        None => hit(name),
    }
}
