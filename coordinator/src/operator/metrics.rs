//! The operator's `/metrics`: the last status report in Prometheus' text format (the same
//! families as `haop status -o prometheus`) and the operator's own: whether this instance
//! leads, what it did, what failed, and why it holds back.
//!
//! Every instance serves metrics, leader or not, so a scrape of any of them tells the
//! cluster's state, and `sum(haop_operator_leader)` tells whether exactly one leads. Served
//! with hyper's http1 server (already in the tree through tonic), GET only; the text is
//! rendered once per round, not per scrape.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use tokio::net::TcpListener;

use crate::status::prometheus::{flag, Out};

/// What the loop tells the metrics.
#[derive(Debug, Default, Clone)]
pub struct OperatorStats {
    pub instance: String,
    pub cluster: String,
    pub leader: bool,
    /// Actions taken, by kind (heal, snapshot, defrag, renew).
    pub actions: BTreeMap<String, u64>,
    /// Rounds in which an action failed.
    pub failures: u64,
    /// Why the loop holds back (`no-quorum`, `electing`), when it does.
    pub holding: Option<&'static str>,
    pub certificate_warnings: usize,
    pub last_round_unix: i64,
    pub rounds: u64,
}

/// The text a scrape gets, shared between the loop and the server.
#[derive(Debug, Default)]
pub struct Exposition {
    text: Mutex<String>,
}

impl Exposition {
    pub fn set(&self, status: Option<&str>, stats: &OperatorStats) {
        let mut text = render(stats);
        if let Some(s) = status {
            text.push_str(s);
        }
        *self.text.lock().unwrap_or_else(|e| e.into_inner()) = text;
    }

    pub fn get(&self) -> String {
        self.text.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// The operator's own families, labelled `operator` (Prometheus keeps `instance` for the scrape target).
pub fn render(s: &OperatorStats) -> String {
    let mut o = Out::new(&s.cluster);
    let me = [("operator", s.instance.as_str())];
    o.family(
        "haop_operator_leader",
        "gauge",
        "1 when this operator instance holds the election (only the leader acts).",
    );
    o.sample("haop_operator_leader", &me, flag(s.leader));
    o.family(
        "haop_operator_actions_total",
        "counter",
        "Actions this instance took as leader, by kind.",
    );
    for kind in ["heal", "snapshot", "defrag", "renew"] {
        let n = s.actions.get(kind).copied().unwrap_or(0);
        o.sample(
            "haop_operator_actions_total",
            &[("operator", s.instance.as_str()), ("kind", kind)],
            n as f64,
        );
    }
    o.family(
        "haop_operator_action_failures_total",
        "counter",
        "Actions of this instance that failed (the log says why).",
    );
    o.sample(
        "haop_operator_action_failures_total",
        &me,
        s.failures as f64,
    );
    o.family(
        "haop_operator_holding",
        "gauge",
        "1 when the operator does not act because etcd has no quorum or is electing a leader.",
    );
    for reason in ["no-quorum", "electing"] {
        o.sample(
            "haop_operator_holding",
            &[("operator", s.instance.as_str()), ("reason", reason)],
            flag(s.holding == Some(reason)),
        );
    }
    o.family(
        "haop_operator_certificate_warnings",
        "gauge",
        "Places with a certificate closer to expiry than the operator's warn_days.",
    );
    o.sample(
        "haop_operator_certificate_warnings",
        &me,
        s.certificate_warnings as f64,
    );
    o.family(
        "haop_operator_last_round_timestamp_seconds",
        "gauge",
        "When this instance last looked at the cluster (Unix time).",
    );
    o.sample(
        "haop_operator_last_round_timestamp_seconds",
        &me,
        s.last_round_unix as f64,
    );
    o.family(
        "haop_operator_rounds_total",
        "counter",
        "Rounds this instance ran.",
    );
    o.sample("haop_operator_rounds_total", &me, s.rounds as f64);
    o.into_text()
}

/// Binds `addr` (an error names it), then serves `exposition` until the task is dropped.
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await.map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot serve metrics on {addr} (metrics_listen): {e}"),
        )
    })
}

/// Serves `GET /metrics` from `exposition` on `listener`, forever.
pub async fn serve(listener: TcpListener, exposition: Arc<Exposition>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            continue;
        };
        let exposition = exposition.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let exposition = exposition.clone();
                async move { Ok::<_, Infallible>(answer(&req, &exposition)) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                .await;
        });
    }
}

fn answer<B>(req: &Request<B>, exposition: &Exposition) -> Response<Full<Bytes>> {
    let (status, kind, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (
            StatusCode::OK,
            "text/plain; version=0.0.4; charset=utf-8",
            exposition.get(),
        ),
        (&Method::GET, "/") => (
            StatusCode::OK,
            "text/plain; charset=utf-8",
            "haop operator: metrics at /metrics\n".to_string(),
        ),
        (&Method::GET, _) => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: the metrics are at /metrics\n".to_string(),
        ),
        _ => (
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain; charset=utf-8",
            "only GET\n".to_string(),
        ),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(kind),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_operator_families_carry_the_operator_and_cluster() {
        let mut s = OperatorStats {
            instance: "admin-a".into(),
            cluster: "prod".into(),
            leader: true,
            holding: Some("no-quorum"),
            ..Default::default()
        };
        s.actions.insert("heal".into(), 2);
        let t = render(&s);
        assert!(
            t.contains("haop_operator_leader{cluster=\"prod\",operator=\"admin-a\"} 1"),
            "{t}"
        );
        assert!(t.contains(
            "haop_operator_actions_total{cluster=\"prod\",operator=\"admin-a\",kind=\"heal\"} 2"
        ));
        assert!(t.contains(
            "haop_operator_holding{cluster=\"prod\",operator=\"admin-a\",reason=\"no-quorum\"} 1"
        ));
        assert!(t.contains(
            "haop_operator_holding{cluster=\"prod\",operator=\"admin-a\",reason=\"electing\"} 0"
        ));
    }

    #[tokio::test]
    async fn metrics_are_served_over_http() {
        let e = Arc::new(Exposition::default());
        e.set(
            Some("haop_etcd_has_quorum{cluster=\"c\"} 1\n"),
            &OperatorStats {
                instance: "i".into(),
                cluster: "c".into(),
                ..Default::default()
            },
        );
        let l = bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(serve(l, e));
        let get = |path: &'static str| async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
            s.write_all(
                format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
            )
            .await
            .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).await.unwrap();
            out
        };
        let ok = get("/metrics").await;
        assert!(ok.starts_with("HTTP/1.1 200"), "{ok}");
        assert!(ok.contains("text/plain; version=0.0.4"));
        assert!(ok.contains("haop_etcd_has_quorum{cluster=\"c\"} 1"));
        assert!(ok.contains("haop_operator_leader{cluster=\"c\",operator=\"i\"} 0"));
        assert!(get("/nope").await.starts_with("HTTP/1.1 404"));
        server.abort();
    }
}
