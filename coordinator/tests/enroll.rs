//! Enrollment from the coordinator's side, against a real agent on a real socket: `haop init`,
//! a bootstrap token, the two-step exchange, then mTLS with haop's admin certificate. And the
//! refusals: an expired token, a token the state dir does not know, an agent holding another
//! secret, an agent pinned to another CA.

use std::sync::Arc;
use std::time::Duration;

use haop_agent::config::AgentConfig;
use haop_agent::kernel::LabKernel;
use haop_agent::units::supervisor::Supervisor;
use haop_coordinator::agent;
use haop_coordinator::agent::{Enrolled, ExpectedAgent};
use haop_coordinator::trust::{self, InitOptions, TokenUses, Trust, TrustError};
use haop_proto::enroll::Token;
use haop_proto::v1 as pb;

struct Agent {
    _root: tempfile::TempDir,
    endpoint: String,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

async fn agent_with(token: &str, ca_hash: &str) -> Agent {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("etc")).unwrap();
    std::fs::write(root.path().join("etc/hostname"), "etcd1\n").unwrap();
    let config = AgentConfig {
        root: root.path().to_path_buf(),
        enroll_token: Some(Token::parse(token).unwrap()),
        enroll_ca_hash: Some(ca_hash.to_string()),
        ..AgentConfig::default()
    };
    let fs = haop_agent::paths::HostFs::new(&config.root, config.managed_roots.clone());
    let units = Arc::new(Supervisor::new(fs, config.state_dir.clone()).unwrap());
    let agent = haop_agent::server::assemble(&config, units, Arc::new(LabKernel::default()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        let _ = haop_agent::server::serve(agent, listener, async {
            let _ = rx.await;
        })
        .await;
    });
    Agent {
        _root: root,
        endpoint: format!("https://{addr}"),
        stop: Some(tx),
    }
}

fn expected() -> ExpectedAgent {
    ExpectedAgent {
        hostname: "etcd1".into(),
        fqdn: None,
        addresses: vec!["127.0.0.1".parse().unwrap()],
    }
}

const T: Duration = Duration::from_secs(5);

#[tokio::test]
async fn enrolls_then_speaks_mtls_with_the_admin_certificate() {
    let state = tempfile::tempdir().unwrap();
    let report = trust::init(state.path(), InitOptions::default()).unwrap();
    assert!(report.created);
    assert!(
        !trust::init(state.path(), InitOptions::default())
            .unwrap()
            .created
    );
    let trust = Trust::load(state.path()).unwrap();
    let (token, _) = trust
        .tokens()
        .create(Duration::from_secs(600), TokenUses::Once)
        .unwrap();
    let agent = agent_with(&token.expose(), &report.agent_ca_pin).await;

    let done = agent::enroll(&trust, &agent.endpoint, &expected(), T)
        .await
        .unwrap();
    assert_eq!(
        done,
        Enrolled::Now {
            token_id: token.id.clone()
        }
    );

    let deadline = std::time::Instant::now() + T;
    let mut client = loop {
        match agent::connect(&trust, &agent.endpoint, T).await {
            Ok(c) => break c,
            Err(e) => assert!(std::time::Instant::now() < deadline, "{e}"),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let who = client
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(who.role, "haop:admin");
    assert_eq!(who.hostname, "etcd1");
    // A second enrollment finds it enrolled and changes nothing.
    assert_eq!(
        agent::enroll(&trust, &agent.endpoint, &expected(), T)
            .await
            .unwrap(),
        Enrolled::Already
    );
}

#[tokio::test]
async fn expired_unknown_and_wrong_tokens_are_refused() {
    let state = tempfile::tempdir().unwrap();
    let report = trust::init(state.path(), InitOptions::default()).unwrap();
    let trust = Trust::load(state.path()).unwrap();

    // Expired.
    let (expired, _) = trust
        .tokens()
        .create(Duration::from_secs(0), TokenUses::Once)
        .unwrap();
    let agent = agent_with(&expired.expose(), &report.agent_ca_pin).await;
    let err = agent::enroll(&trust, &agent.endpoint, &expected(), T)
        .await
        .unwrap_err();
    assert!(matches!(err, TrustError::ExpiredToken { .. }), "{err}");
    assert!(err.to_string().contains("expired"), "{err}");

    // Unknown to this state dir.
    let stranger = agent_with("zzzzzz.0123456789abcdef", &report.agent_ca_pin).await;
    let err = agent::enroll(&trust, &stranger.endpoint, &expected(), T)
        .await
        .unwrap_err();
    assert!(matches!(err, TrustError::UnknownToken { .. }), "{err}");

    // The right id with another secret.
    let (good, _) = trust
        .tokens()
        .create(Duration::from_secs(600), TokenUses::Once)
        .unwrap();
    let forged = format!("{}.zzzzzzzzzzzzzzzz", good.id);
    let impostor = agent_with(&forged, &report.agent_ca_pin).await;
    let err = agent::enroll(&trust, &impostor.endpoint, &expected(), T)
        .await
        .unwrap_err();
    assert!(matches!(err, TrustError::WrongToken { .. }), "{err}");

    // An agent pinned to another CA refuses this coordinator.
    let other_pin = format!("sha256:{}", "00".repeat(32));
    let wary = agent_with(&good.expose(), &other_pin).await;
    let err = agent::enroll(&trust, &wary.endpoint, &expected(), T)
        .await
        .unwrap_err();
    let text = format!("{err}: {:?}", std::error::Error::source(&err));
    assert!(text.contains("pinned"), "{text}");

    // None of them was enrolled: they still refuse mTLS callers.
    for a in [&agent, &stranger, &impostor, &wary] {
        assert!(
            agent::connect(&trust, &a.endpoint, T).await.is_err()
                || agent::connect(&trust, &a.endpoint, T)
                    .await
                    .unwrap()
                    .get_facts(pb::GetFactsRequest {})
                    .await
                    .is_err()
        );
    }
}

#[tokio::test]
async fn a_token_enrolls_one_host_and_the_state_dir_keeps_no_secret() {
    let state = tempfile::tempdir().unwrap();
    let report = trust::init(state.path(), InitOptions::default()).unwrap();
    let trust = Trust::load(state.path()).unwrap();
    let (token, _) = trust
        .tokens()
        .create(Duration::from_secs(600), TokenUses::Once)
        .unwrap();
    let secret = token.expose().split_once('.').unwrap().1.to_string();
    let first = agent_with(&token.expose(), &report.agent_ca_pin).await;
    agent::enroll(&trust, &first.endpoint, &expected(), T)
        .await
        .unwrap();

    // A second machine configured with the same token is refused, saying who used it.
    let second = agent_with(&token.expose(), &report.agent_ca_pin).await;
    let etcd2 = ExpectedAgent {
        hostname: "etcd2".into(),
        ..expected()
    };
    let err = agent::enroll(&trust, &second.endpoint, &etcd2, T)
        .await
        .unwrap_err();
    assert!(
        matches!(err, TrustError::TokenUsed { done: true, .. }),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains(&token.id) && text.contains("was used by host etcd1"),
        "{text}"
    );
    // ... and stays unenrolled.
    assert!(
        agent::connect(&trust, &second.endpoint, T)
            .await
            .map(|_| ())
            .is_err()
            || agent::connect(&trust, &second.endpoint, T)
                .await
                .unwrap()
                .who_am_i(pb::WhoAmIRequest {})
                .await
                .is_err()
    );

    // Nothing in the state dir holds the secret, in clear or as a MAC key.
    for entry in walk(state.path()) {
        let bytes = std::fs::read(&entry).unwrap();
        assert!(
            !String::from_utf8_lossy(&bytes).contains(&secret),
            "{} holds the token's secret",
            entry.display()
        );
    }
    let listed = trust.tokens().list().unwrap();
    assert_eq!(listed[0].state(), "used");
    assert_eq!(listed[0].used_by[0].host, "etcd1");

    // A reusable token, made on purpose, enrolls both.
    let (many, _) = trust
        .tokens()
        .create(Duration::from_secs(600), TokenUses::Many)
        .unwrap();
    for host in ["etcd3", "etcd4"] {
        let a = agent_with(&many.expose(), &report.agent_ca_pin).await;
        let e = ExpectedAgent {
            hostname: host.into(),
            ..expected()
        };
        agent::enroll(&trust, &a.endpoint, &e, T).await.unwrap();
    }
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}

#[tokio::test]
async fn names_outside_what_is_expected_are_not_signed() {
    let state = tempfile::tempdir().unwrap();
    let report = trust::init(state.path(), InitOptions::default()).unwrap();
    let trust = Trust::load(state.path()).unwrap();
    let (token, _) = trust
        .tokens()
        .create(Duration::from_secs(600), TokenUses::Once)
        .unwrap();
    let agent = agent_with(&token.expose(), &report.agent_ca_pin).await;
    // The coordinator expects etcd1 at 127.0.0.1 but the agent is asked (by a confused or
    // hostile coordinator config) for another name: the CSR carries it and signing refuses.
    let mut channel = haop_proto::v1::enrollment_client::EnrollmentClient::connect(
        agent::bootstrap_endpoint(&agent.endpoint),
    )
    .await
    .unwrap();
    let ch = channel
        .challenge(pb::ChallengeRequest {
            coordinator_nonce: vec![1; 32],
            token_id: String::new(),
            dns_names: vec!["etcd2".into()],
            ip_addresses: vec!["127.0.0.1".into()],
        })
        .await
        .unwrap()
        .into_inner();
    let err = trust
        .agent_ca
        .sign_csr(
            &ch.csr_pem,
            &haop_coordinator::pki::SigningRequest {
                profile: haop_coordinator::pki::Profile::Server,
                lifetime: Duration::from_secs(3600),
                expected: haop_coordinator::pki::ExpectedNames::for_host(
                    "etcd1",
                    None,
                    &["127.0.0.1".parse().unwrap()],
                ),
                organization: None,
                common_name: "etcd1".into(),
            },
        )
        .unwrap_err();
    assert!(err.to_string().contains("etcd2"), "{err}");
}
