//! Rotating the agent CA on a live agent, over real sockets: the trust bundle and the serving
//! certificate change for new connections at once, without a restart; connections opened
//! before are judged by the new bundle from their next call; and the rules that keep an admin
//! certificate from swapping the CA hold.

mod common;

use common::{connect, TestAgent, TestCa};
use haop_proto::v1 as pb;
use tonic::Code;

fn pin(pem: &str) -> String {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes()).unwrap();
    let cert = block.parse_x509().unwrap();
    haop_agent::trust::pin_of(&cert)
}

#[tokio::test]
async fn the_agent_ca_is_rotated_live_and_the_old_one_refused_at_the_end() {
    let mut a = TestAgent::start().await;
    let new = TestCa::new("new agent CA");
    let old_admin = a.ca.client("haop", Some("haop:admin"));
    let new_admin = new.client("haop", Some("haop:admin"));
    let both = format!("{}{}", a.ca.cert_pem, new.cert_pem);
    let who = a
        .client
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(who.trusted_ca_pins, vec![pin(&a.ca.cert_pem)]);

    // A CA the agent does not trust yet needs an endorsement by one it trusts.
    let err = a
        .client
        .install_trust_bundle(pb::InstallTrustBundleRequest {
            bundle_pem: both.clone(),
            endorsements_pem: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    assert!(err.message().contains("endorsement"), "{}", err.message());
    // Self-endorsed is no endorsement.
    let err = a
        .client
        .install_trust_bundle(pb::InstallTrustBundleRequest {
            bundle_pem: both.clone(),
            endorsements_pem: new.endorse(&new),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    // A new-CA client is refused before the agent trusts it.
    assert!(refused(&a, &a.ca.cert_pem, &new_admin).await);

    // 1. Old and new, the new endorsed by the old.
    let r = a
        .client
        .install_trust_bundle(pb::InstallTrustBundleRequest {
            bundle_pem: both.clone(),
            endorsements_pem: a.ca.endorse(&new),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.changed);
    assert_eq!(
        r.trusted_ca_pins,
        vec![pin(&a.ca.cert_pem), pin(&new.cert_pem)]
    );
    let again = a
        .client
        .install_trust_bundle(pb::InstallTrustBundleRequest {
            bundle_pem: both.clone(),
            endorsements_pem: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!again.changed);
    // A client of the new CA gets in on a new connection, with no restart.
    let mut as_new = connect(a.addr, &a.ca.cert_pem, Some(&new_admin))
        .await
        .unwrap();
    as_new.who_am_i(pb::WhoAmIRequest {}).await.unwrap();

    // 2. A serving certificate from the new CA, for a key made on the host.
    let csr = a
        .client
        .create_serving_csr(pb::CreateServingCsrRequest {
            dns_names: vec!["localhost".into()],
            ip_addresses: vec!["127.0.0.1".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(csr.new_key);
    // Asked again before the install: the same pending key.
    let csr2 = a
        .client
        .create_serving_csr(pb::CreateServingCsrRequest {
            dns_names: vec!["localhost".into()],
            ip_addresses: vec!["127.0.0.1".into()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(!csr2.new_key);
    let old_key = std::fs::read(a.real("/var/lib/haop-agent/pki/agent.key")).unwrap();
    let cert = new.sign_csr(&csr.csr_pem);
    // From a CA the agent does not trust: refused.
    let stranger = TestCa::new("stranger");
    let err = a
        .client
        .install_serving_certificate(pb::InstallServingCertificateRequest {
            cert_pem: stranger.sign_csr(&csr.csr_pem),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied, "{}", err.message());
    let r = a
        .client
        .install_serving_certificate(pb::InstallServingCertificateRequest {
            cert_pem: cert.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.changed);
    assert_ne!(
        std::fs::read(a.real("/var/lib/haop-agent/pki/agent.key")).unwrap(),
        old_key,
        "a new key is in use"
    );
    assert!(!a.real("/var/lib/haop-agent/pki/agent.key.next").exists());
    // A client that trusts only the new CA verifies the agent on a new connection.
    let mut only_new = connect(a.addr, &new.cert_pem, Some(&new_admin))
        .await
        .unwrap();
    let who = only_new
        .who_am_i(pb::WhoAmIRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(who.serving_cert_pem, cert);

    // 3. The old admin may not drop its own CA: it would lock itself out.
    let err = a
        .client
        .install_trust_bundle(pb::InstallTrustBundleRequest {
            bundle_pem: new.cert_pem.clone(),
            endorsements_pem: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    // The new admin drops the old CA.
    let r = only_new
        .install_trust_bundle(pb::InstallTrustBundleRequest {
            bundle_pem: new.cert_pem.clone(),
            endorsements_pem: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(r.changed);
    assert_eq!(r.trusted_ca_pins, vec![pin(&new.cert_pem)]);
    // The old admin's connection, opened before, is refused from its next call...
    let err = a.client.who_am_i(pb::WhoAmIRequest {}).await.unwrap_err();
    assert_eq!(err.code(), Code::Unauthenticated, "{}", err.message());
    assert!(err.message().contains("rotated"), "{}", err.message());
    // ... and a new connection with it does not get through the handshake.
    assert!(refused(&a, &new.cert_pem, &old_admin).await);
    // The new admin goes on, and the agent came through it all without a restart.
    only_new.who_am_i(pb::WhoAmIRequest {}).await.unwrap();
    a.client = only_new;
    a.shutdown().await;
}

#[tokio::test]
async fn a_dropped_ca_must_not_take_the_revocation_list_with_it() {
    let mut a = TestAgent::start().await;
    let new = TestCa::new("new agent CA");
    let new_admin = new.client("haop", Some("haop:admin"));
    let gone = a.ca.client("gone", Some("haop:reader"));
    a.client
        .install_revocations(pb::InstallRevocationsRequest {
            crl_pem: a.ca.crl(&[&gone], 4),
        })
        .await
        .unwrap();
    a.client
        .install_trust_bundle(pb::InstallTrustBundleRequest {
            bundle_pem: format!("{}{}", a.ca.cert_pem, new.cert_pem),
            endorsements_pem: a.ca.endorse(&new),
        })
        .await
        .unwrap();
    let mut as_new = connect(a.addr, &a.ca.cert_pem, Some(&new_admin))
        .await
        .unwrap();
    let drop_old = pb::InstallTrustBundleRequest {
        bundle_pem: new.cert_pem.clone(),
        endorsements_pem: String::new(),
    };
    let err = as_new
        .install_trust_bundle(drop_old.clone())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::FailedPrecondition, "{}", err.message());
    assert!(
        err.message().contains("revocation list"),
        "{}",
        err.message()
    );
    // A list signed by the new CA, with a newer number, is taken (the agent trusts both now);
    // then the old CA can go.
    let r = as_new
        .install_revocations(pb::InstallRevocationsRequest {
            crl_pem: new.crl(&[&gone], 5),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.generation, 5);
    as_new.install_trust_bundle(drop_old).await.unwrap();
    a.client = as_new;
    a.shutdown().await;
}

/// Whether `client`, trusting `ca_pem` for the agent, cannot call it: refused at the handshake
/// or at the call.
async fn refused(a: &TestAgent, ca_pem: &str, client: &common::Leaf) -> bool {
    match connect(a.addr, ca_pem, Some(client)).await {
        Err(_) => true,
        Ok(mut c) => c.who_am_i(pb::WhoAmIRequest {}).await.is_err(),
    }
}
