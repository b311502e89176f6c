//! The agent's doors: mTLS with roles after enrollment, and enrollment itself. Each refusal a
//! user relies on, over real sockets.

mod common;

use std::time::Duration;

use common::{connect, TestAgent, TestCa};
use haop_proto::enroll::Token;
use haop_proto::v1 as pb;
use haop_proto::v1::enrollment_client::EnrollmentClient;
use tonic::Code;

async fn facts_with(
    agent: &TestAgent,
    client: Option<&common::Leaf>,
    ca_pem: &str,
) -> Result<pb::Facts, String> {
    let mut c = match connect(agent.addr, ca_pem, client).await {
        Ok(c) => c,
        Err(e) => return Err(format!("connect: {e}")),
    };
    c.get_facts(pb::GetFactsRequest {})
        .await
        .map(|r| r.into_inner())
        .map_err(|s| format!("{:?}: {}", s.code(), s.message()))
}

#[tokio::test]
async fn refuses_callers_without_a_valid_certificate_from_the_agent_ca() {
    let a = TestAgent::start().await;
    // No client certificate at all.
    assert!(facts_with(&a, None, &a.ca.cert_pem).await.is_err());
    // A certificate from another CA, even with the admin role.
    let other = TestCa::new("someone else's CA");
    let foreign = other.client("haop", Some("haop:admin"));
    assert!(facts_with(&a, Some(&foreign), &a.ca.cert_pem)
        .await
        .is_err());
    // An expired certificate from the right CA.
    let expired = a.ca.expired_client("haop", Some("haop:admin"));
    assert!(facts_with(&a, Some(&expired), &a.ca.cert_pem)
        .await
        .is_err());
    // The right CA but no role.
    let nobody = a.ca.client("nobody", None);
    let err = facts_with(&a, Some(&nobody), &a.ca.cert_pem)
        .await
        .unwrap_err();
    assert!(
        err.contains("Unauthenticated") && err.contains("no haop role"),
        "{err}"
    );
    // Plaintext is not served once enrolled.
    let plain = tonic::transport::Channel::from_shared(format!("http://{}", a.addr))
        .unwrap()
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await;
    if let Ok(ch) = plain {
        let mut c = pb::agent_client::AgentClient::new(ch);
        assert!(c.get_facts(pb::GetFactsRequest {}).await.is_err());
    }
    // And the admin certificate works.
    let admin = a.ca.client("haop", Some("haop:admin"));
    assert!(facts_with(&a, Some(&admin), &a.ca.cert_pem).await.is_ok());
    a.shutdown().await;
}

#[tokio::test]
async fn a_revoked_certificate_is_refused_from_the_next_call_and_lists_only_move_forward() {
    let mut a = TestAgent::start().await;
    let reader = a.ca.client("monitoring", Some("haop:reader"));
    let other_reader = a.ca.client("dashboards", Some("haop:reader"));
    assert!(facts_with(&a, Some(&reader), &a.ca.cert_pem).await.is_ok());
    let facts = a.client.get_facts(pb::GetFactsRequest {}).await.unwrap();
    assert_eq!(facts.into_inner().revocation_generation, 0);

    // Only an admin may install a list.
    let mut as_reader = connect(a.addr, &a.ca.cert_pem, Some(&reader))
        .await
        .unwrap();
    let err = as_reader
        .install_revocations(pb::InstallRevocationsRequest {
            crl_pem: a.ca.crl(&[&reader], 1),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());

    // The admin installs list 2 revoking the reader: the reader's very next call, on the
    // connection it already had, is refused; another reader is not.
    let r = a
        .client
        .install_revocations(pb::InstallRevocationsRequest {
            crl_pem: a.ca.crl(&[&reader], 2),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!((r.generation, r.changed, r.revoked), (2, true, 1));
    let err = as_reader
        .get_facts(pb::GetFactsRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{}", err.message());
    assert!(
        err.message().contains("revoked") && err.message().contains("monitoring"),
        "{}",
        err.message()
    );
    assert!(facts_with(&a, Some(&other_reader), &a.ca.cert_pem)
        .await
        .is_ok());
    let facts = a.client.get_facts(pb::GetFactsRequest {}).await.unwrap();
    assert_eq!(facts.into_inner().revocation_generation, 2);

    // The same list again changes nothing; an older one is refused and cannot un-revoke.
    let same = a
        .client
        .install_revocations(pb::InstallRevocationsRequest {
            crl_pem: a.ca.crl(&[&reader], 2),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!same.changed);
    let err = a
        .client
        .install_revocations(pb::InstallRevocationsRequest {
            crl_pem: a.ca.crl(&[], 1),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert!(err.message().contains("older"), "{}", err.message());
    // A list signed by another CA is refused.
    let stranger = TestCa::new("someone else's CA");
    let err = a
        .client
        .install_revocations(pb::InstallRevocationsRequest {
            crl_pem: stranger.crl(&[], 9),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    // Garbage is refused as such.
    let err = a
        .client
        .install_revocations(pb::InstallRevocationsRequest {
            crl_pem: "not a crl".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(facts_with(&a, Some(&reader), &a.ca.cert_pem).await.is_err());

    // What is enforced is on disk: an agent started again loads it.
    let pki = a.real("/var/lib/haop-agent/pki");
    let loaded = haop_agent::revocation::Revocations::load(&pki);
    assert_eq!(loaded.generation(), 2);
    let (_, pem) = x509_parser::pem::parse_x509_pem(reader.cert_pem.as_bytes()).unwrap();
    assert_eq!(
        loaded.revoked_by(pem.parse_x509().unwrap().raw_serial()),
        Some(2)
    );
}

#[tokio::test]
async fn reader_may_read_but_not_change() {
    let a = TestAgent::start().await;
    let reader = a.ca.client("monitoring", Some("haop:reader"));
    let mut c = connect(a.addr, &a.ca.cert_pem, Some(&reader))
        .await
        .unwrap();
    assert!(c.get_facts(pb::GetFactsRequest {}).await.is_ok());
    let who = c.who_am_i(pb::WhoAmIRequest {}).await.unwrap().into_inner();
    assert_eq!(
        (who.common_name.as_str(), who.role.as_str()),
        ("monitoring", "haop:reader")
    );
    assert!(who.enrolled);

    let err = c
        .write_file(pb::WriteFileRequest {
            path: "/etc/haop/x".into(),
            content: b"x".to_vec(),
            create_parents: true,
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert!(err.message().contains("haop:admin"), "{}", err.message());
    assert!(!a.real("/etc/haop/x").exists());
    let err = c
        .unit_action(pb::UnitActionRequest {
            name: "etcd.service".into(),
            action: pb::Action::Stop as i32,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = c
        .exec(pb::ExecRequest {
            program: "echo".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    a.shutdown().await;
}

#[tokio::test]
async fn private_keys_never_travel() {
    let mut a = TestAgent::start().await;
    let r = a
        .client
        .create_csr(pb::CreateCsrRequest {
            key_path: "/etc/kubernetes/pki/etcd/server.key".into(),
            common_name: "etcd1".into(),
            dns_names: vec!["etcd1".into()],
            ip_addresses: vec!["127.0.0.1".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.csr_pem.contains("CERTIFICATE REQUEST"));
    assert!(!r.csr_pem.contains("PRIVATE KEY"));
    let key = a.real("/etc/kubernetes/pki/etcd/server.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );

    let err = a
        .client
        .read_file(pb::ReadFileRequest {
            path: "/etc/kubernetes/pki/etcd/server.key".into(),
            max_bytes: 0,
            certificates_only: false,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    // A key is refused by its content wherever it is sent, and a key file by its name.
    for (path, code) in [
        ("/etc/kubernetes/pki/etcd/copied.pem", Code::InvalidArgument),
        (
            "/etc/kubernetes/pki/etcd/copied.key",
            Code::PermissionDenied,
        ),
    ] {
        let err = a
            .client
            .write_file(pb::WriteFileRequest {
                path: path.into(),
                content: b"-----BEGIN PRIVATE KEY-----\nMIG\n-----END PRIVATE KEY-----\n".to_vec(),
                create_parents: true,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(err.code(), code, "{path}: {}", err.message());
        assert!(!a.real(path).exists());
    }

    // The signed certificate installs; one for another key does not.
    let cert = a.ca.sign_csr(&r.csr_pem);
    let ok = a
        .client
        .install_certificate(pb::InstallCertificateRequest {
            cert_path: "/etc/kubernetes/pki/etcd/server.crt".into(),
            cert_pem: cert.clone(),
            key_path: "/etc/kubernetes/pki/etcd/server.key".into(),
            ca_path: "/etc/kubernetes/pki/etcd/ca.crt".into(),
            ca_pem: a.ca.cert_pem.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(ok.changed);
    let other = a.ca.client("x", None);
    let err = a
        .client
        .install_certificate(pb::InstallCertificateRequest {
            cert_path: "/etc/kubernetes/pki/etcd/server.crt".into(),
            cert_pem: other.cert_pem,
            key_path: "/etc/kubernetes/pki/etcd/server.key".into(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert_eq!(
        std::fs::read_to_string(a.real("/etc/kubernetes/pki/etcd/server.crt")).unwrap(),
        cert
    );
    a.shutdown().await;
}

const TOKEN: &str = "abcdef.0123456789abcdef";

fn challenge_request(nonce: &[u8]) -> pb::ChallengeRequest {
    pb::ChallengeRequest {
        coordinator_nonce: nonce.to_vec(),
        token_id: String::new(),
        dns_names: vec!["localhost".into()],
        ip_addresses: vec!["127.0.0.1".into()],
    }
}

#[tokio::test]
async fn enrollment_proves_both_sides_then_switches_to_mtls() {
    let ca = TestCa::new("the real agent CA");
    let pin = ca.pin();
    let a = TestAgent::start_unenrolled(|c| {
        c.enroll_token = Some(Token::parse(TOKEN).unwrap());
        c.enroll_ca_hash = Some(pin);
    })
    .await;
    let plain = tonic::transport::Channel::from_shared(format!("http://{}", a.addr))
        .unwrap()
        .connect()
        .await
        .unwrap();
    // Before enrollment every Agent RPC is refused.
    let err = pb::agent_client::AgentClient::new(plain.clone())
        .get_facts(pb::GetFactsRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated);
    assert!(err.message().contains("not enrolled"), "{}", err.message());

    let mut e = EnrollmentClient::new(plain);
    // A coordinator expecting another token is refused.
    let mut wrong = challenge_request(&[7u8; 32]);
    wrong.token_id = "zzzzzz".into();
    let err = e.challenge(wrong).await.unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    let nonce = [9u8; 32];
    let ch = e
        .challenge(challenge_request(&nonce))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ch.token_id, "abcdef");
    let token = Token::parse(TOKEN).unwrap();
    assert!(token
        .verifier()
        .verify(&nonce, &ch.agent_nonce, &ch.csr_pem, &ch.token_signature));
    #[allow(deprecated)]
    let legacy = &ch.token_proof;
    assert!(legacy.is_empty(), "the HMAC proof of v1 is no longer sent");
    let wrong_token = Token::parse("abcdef.zzzzzzzzzzzzzzzz").unwrap();
    assert!(!wrong_token.verifier().verify(
        &nonce,
        &ch.agent_nonce,
        &ch.csr_pem,
        &ch.token_signature
    ));

    // A coordinator whose CA does not match the pin is refused, and nothing changes.
    let impostor = TestCa::new("impostor");
    let err = e
        .complete(pb::CompleteRequest {
            ca_pem: impostor.cert_pem.clone(),
            cert_pem: impostor.sign_csr(&ch.csr_pem),
            agent_nonce: ch.agent_nonce.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    assert!(err.message().contains("pinned"), "{}", err.message());
    // The right CA with a certificate it did not sign is refused too.
    let err = e
        .complete(pb::CompleteRequest {
            ca_pem: ca.cert_pem.clone(),
            cert_pem: impostor.sign_csr(&ch.csr_pem),
            agent_nonce: ch.agent_nonce.clone(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    assert!(!a.real("/var/lib/haop-agent/pki/ca.crt").exists());

    let done = e
        .complete(pb::CompleteRequest {
            ca_pem: ca.cert_pem.clone(),
            cert_pem: ca.sign_csr(&ch.csr_pem),
            agent_nonce: ch.agent_nonce.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(done.enrolled);

    // Now mTLS with a certificate from that CA works (after the listener switches).
    let admin = ca.client("haop", Some("haop:admin"));
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match facts_with(&a, Some(&admin), &ca.cert_pem).await {
            Ok(_) => break,
            Err(e) => assert!(
                std::time::Instant::now() < deadline,
                "never served mTLS: {e}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let key = a.real("/var/lib/haop-agent/pki/agent.key");
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    a.shutdown().await;
}
