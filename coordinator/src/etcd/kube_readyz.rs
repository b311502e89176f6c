//! Waiting for one master's kube-apiserver after the endpoint sync changed its manifest.
//!
//! Why: the kubelet replaces a static pod when its manifest changes, so rewriting the
//! `--etcd-servers` of every master back to back takes every API server down at once. Upstream
//! kubeadm changes control-plane nodes one at a time; [`after_manifest_change`] is what makes
//! [`super::kube_endpoints::sync`] do the same: it holds the sync until the rewritten master's
//! API server answers `/readyz` with 200 again, and a master that does not come back stops the
//! sync before the next master is touched.
//!
//! How: the question `haop status` asks (`status::kube`): HTTPS to the master's address on
//! `kubernetes.api_port`, verified against the cluster CA kubeadm wrote to the master's
//! `/etc/kubernetes/pki/ca.crt` (read through its agent; a certificate, no key). Polled every
//! [`POLL`], never slept on, in two parts: first until the old API server stops answering ready
//! (the kubelet noticed the change: at once through inotify, at the latest on its 20 s file
//! check), at most [`RESTART_SEEN_WITHIN`]; then until it is ready, at most `ready_within` from
//! the write. Without the first part the old process, still up for a moment, would pass for
//! the new one. An API server never seen going down is not an error (it may have restarted
//! between two polls; it is ready, which is what the next master needs), only logged.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::time::Instant;

use crate::agent::{AgentError, HostAgent};
use crate::status::kube::{client_config, detail, readyz, Answer, CA_PATH};

/// How long an API server may take to come back after its manifest changed, unless the
/// command says otherwise (`--api-server-timeout`): kube-apiserver opens its etcd connections
/// and runs its post-start hooks before `/readyz` answers 200, usually well within a minute.
pub const READY_WITHIN: Duration = Duration::from_secs(120);
/// How long the old API server may go on answering before the wait stops looking for its
/// restart (the kubelet's periodic manifest check is every 20 s).
pub const RESTART_SEEN_WITHIN: Duration = Duration::from_secs(30);
/// Between two questions.
pub const POLL: Duration = Duration::from_millis(100);
/// The longest one question may take.
const ASK_WITHIN: Duration = Duration::from_secs(2);

/// Why the sync stops at a master; each names it.
#[derive(Debug, thiserror::Error)]
pub enum ReadyError {
    #[error("{host}: cannot read the cluster CA {CA_PATH} to verify its API server")]
    ReadCa {
        host: String,
        #[source]
        source: AgentError,
    },
    #[error(
        "{host}: {CA_PATH} does not exist, so its API server cannot be verified; has kubeadm \
         init or join run there?"
    )]
    NoCa { host: String },
    #[error("{host}: {CA_PATH} is not a usable CA: {reason}")]
    BadCa { host: String, reason: String },
    #[error(
        "{host}: its kube-apiserver did not answer https://{addr}/readyz with 200 within {} s of \
         its manifest changing (last answer: {last}); the masters after it were not touched: \
         bring it back (journalctl -u kubelet and crictl ps on {host}) and run the same command \
         again", .waited.as_secs()
    )]
    NotBack {
        host: String,
        addr: SocketAddr,
        waited: Duration,
        last: String,
    },
}

/// Waits until the API server of `host` (its agent `c`, its API at `addr`) has restarted and
/// answers `/readyz` with 200, at most `ready_within`; answers how long that took.
pub async fn after_manifest_change(
    c: &HostAgent,
    host: &str,
    addr: SocketAddr,
    ready_within: Duration,
) -> Result<Duration, ReadyError> {
    let started = Instant::now();
    let pem = c
        .read_text(CA_PATH)
        .await
        .map_err(|source| ReadyError::ReadCa {
            host: host.to_string(),
            source,
        })?
        .ok_or_else(|| ReadyError::NoCa {
            host: host.to_string(),
        })?
        .0;
    let config = client_config(&pem).map_err(|reason| ReadyError::BadCa {
        host: host.to_string(),
        reason,
    })?;
    let deadline = started + ready_within;
    let seen_until = started + RESTART_SEEN_WITHIN.min(ready_within);
    let mut restarted = false;
    let mut last = "not asked yet".to_string();
    loop {
        let asked = Instant::now();
        let answer = readyz(config.clone(), addr, (asked + ASK_WITHIN).min(deadline)).await;
        let ready = is_ready(&answer);
        last = describe(answer).unwrap_or(last);
        if !ready && !restarted {
            restarted = true;
            tracing::info!(host = %host, answer = %last, "kube-apiserver restarting");
        } else if ready && (restarted || Instant::now() >= seen_until) {
            if !restarted {
                tracing::warn!(
                    host = %host,
                    waited_s = RESTART_SEEN_WITHIN.min(ready_within).as_secs(),
                    "kube-apiserver never seen restarting after its manifest changed"
                );
            }
            return Ok(started.elapsed());
        }
        if Instant::now() >= deadline {
            return Err(ReadyError::NotBack {
                host: host.to_string(),
                addr,
                waited: ready_within,
                last,
            });
        }
        tokio::time::sleep_until((asked + POLL).min(deadline)).await;
    }
}

fn is_ready(answer: &Answer) -> bool {
    matches!(answer.0, Ok((200, _)))
}

/// One line for an answer: `ready`, `HTTP 500: [-]etcd failed: ...`, or the connection's
/// error. None for a question cut short by the overall deadline (the answer before it says
/// more).
fn describe(answer: Answer) -> Option<String> {
    Some(match answer.0 {
        Ok((200, _)) => "ready".to_string(),
        Ok((status, body)) => match detail(&body) {
            Some(d) => format!("HTTP {status}: {d}"),
            None => format!("HTTP {status}"),
        },
        Err(e) if e == crate::status::LATE => return None,
        Err(e) => e,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_read_as_one_line() {
        let ms = Duration::from_millis(1);
        assert_eq!(describe((Ok((200, "ok".into())), ms)).unwrap(), "ready");
        assert_eq!(
            describe((
                Ok((500, "[+]ping ok\n[-]etcd failed: reason withheld\n".into())),
                ms
            ))
            .unwrap(),
            "HTTP 500: [-]etcd failed: reason withheld"
        );
        assert_eq!(
            describe((Err("cannot connect: refused".into()), ms)).unwrap(),
            "cannot connect: refused"
        );
        assert_eq!(describe((Err(crate::status::LATE.into()), ms)), None);
        assert!(!is_ready(&(Ok((500, String::new())), ms)));
    }
}
