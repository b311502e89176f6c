//! The CSR flow end to end: the agent's key and CSR, the coordinator's checks and signature, and
//! the result judged by the real `openssl` rather than by the library that made it.

use std::fs;
use std::net::IpAddr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use haop_agent::csr as agent;
use haop_coordinator::pki::{
    inspect, is_private_key_pem, CertificateAuthority, ExpectedNames, KeyAlgorithm, PkiError,
    Profile, SigningRequest, AGENT_CA, DEFAULT_LIFETIME, ETCD_CA, ROLE_ADMIN,
};
use sha2::{Digest, Sha256};
use time::OffsetDateTime;

const OPENSSL: &str = "/usr/bin/openssl";

/// Runs openssl; returns whether it succeeded and what it printed.
fn openssl(args: &[&str]) -> (bool, String) {
    let out = Command::new(OPENSSL)
        .args(args)
        .env_clear()
        .env("LC_ALL", "C.UTF-8")
        .output()
        .expect("run /usr/bin/openssl");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn path_str(p: &Path) -> &str {
    p.to_str().unwrap()
}

fn mode(p: &Path) -> u32 {
    fs::metadata(p).unwrap().mode() & 0o7777
}

fn etcd1_names() -> (Vec<String>, Vec<IpAddr>) {
    (
        vec!["etcd1".into(), "etcd1.lab.local".into(), "localhost".into()],
        vec!["10.77.1.11".parse().unwrap(), "127.0.0.1".parse().unwrap()],
    )
}

fn etcd1_expected() -> ExpectedNames {
    ExpectedNames::for_host(
        "etcd1",
        Some("etcd1.lab.local"),
        &["10.77.1.11".parse().unwrap()],
    )
}

fn request(profile: Profile, lifetime: Duration) -> SigningRequest {
    SigningRequest {
        profile,
        lifetime,
        expected: etcd1_expected(),
        organization: None,
        common_name: "etcd1".into(),
    }
}

fn host_csr(key_path: &Path, algo: agent::KeyAlgorithm, dns: &[String], ips: &[IpAddr]) -> String {
    agent::generate_key_and_csr(key_path, algo, "etcd1", None, dns, ips, false)
        .unwrap()
        .csr_pem
}

fn write(dir: &Path, name: &str, content: &str) -> PathBuf {
    let p = dir.join(name);
    fs::write(&p, content).unwrap();
    p
}

#[test]
fn cas_are_created_once_with_private_keys() {
    for algo in [KeyAlgorithm::EcdsaP256, KeyAlgorithm::Rsa2048] {
        let state = tempfile::tempdir().unwrap();
        let dir = state.path().join("state");
        for name in [AGENT_CA, ETCD_CA] {
            let ca = CertificateAuthority::create(
                &dir,
                name,
                &format!("haop {name}"),
                algo,
                DEFAULT_LIFETIME,
            )
            .unwrap();
            assert_eq!(ca.algorithm(), algo);
            assert_eq!(ca.cert_path(), dir.join(format!("{name}.crt")));
            assert_eq!(mode(ca.key_path()), 0o600, "{name} key");
            assert_eq!(mode(ca.cert_path()), 0o644, "{name} cert");
            assert!(is_private_key_pem(&fs::read(ca.key_path()).unwrap()));
            assert!(!is_private_key_pem(&fs::read(ca.cert_path()).unwrap()));

            let (ok, text) = openssl(&["x509", "-noout", "-text", "-in", path_str(ca.cert_path())]);
            assert!(ok, "{text}");
            assert!(text.contains("CA:TRUE"), "{text}");
            assert!(text.contains("Certificate Sign"), "{text}");
            match algo {
                KeyAlgorithm::EcdsaP256 => assert!(text.contains("prime256v1"), "{text}"),
                KeyAlgorithm::Rsa2048 => assert!(text.contains("(2048 bit)"), "{text}"),
            }
            let info = &inspect(ca.cert_pem()).unwrap()[0];
            assert!(info.is_ca);
            assert_eq!(
                info.common_name.as_deref(),
                Some(format!("haop {name}").as_str())
            );
            assert_eq!(info.key_algorithm, algo.as_str());

            let err = CertificateAuthority::create(&dir, name, "again", algo, DEFAULT_LIFETIME)
                .unwrap_err();
            assert!(matches!(err, PkiError::AlreadyExists { .. }), "{err:?}");
            assert!(err.to_string().contains(&format!("{name}.key")), "{err}");
        }
        // A lone certificate blocks creation too, and nothing is written beside it.
        fs::remove_file(dir.join("etcd-ca.key")).unwrap();
        let err =
            CertificateAuthority::create(&dir, ETCD_CA, "x", algo, DEFAULT_LIFETIME).unwrap_err();
        assert!(err.to_string().contains("etcd-ca.crt"), "{err}");
        assert!(!dir.join("etcd-ca.key").exists());
        assert_eq!(mode(&dir), 0o700);
    }
}

#[test]
fn pin_is_stable_and_matches_openssl() {
    let state = tempfile::tempdir().unwrap();
    let dir = state.path();
    for (name, algo) in [
        (AGENT_CA, KeyAlgorithm::EcdsaP256),
        (ETCD_CA, KeyAlgorithm::Rsa2048),
    ] {
        let created =
            CertificateAuthority::create(dir, name, name, algo, DEFAULT_LIFETIME).unwrap();
        let loaded = CertificateAuthority::load(dir, name).unwrap();
        assert_eq!(created.sha256_pin(), loaded.sha256_pin());
        assert_eq!(created.cert_pem(), loaded.cert_pem());
        assert_eq!(loaded.algorithm(), algo);

        // openssl x509 -pubkey -noout | openssl pkey -pubin -outform der | sha256sum
        let pubkey = dir.join(format!("{name}.pub.pem"));
        let der = dir.join(format!("{name}.pub.der"));
        let (ok, text) = openssl(&[
            "x509",
            "-pubkey",
            "-noout",
            "-in",
            path_str(loaded.cert_path()),
            "-out",
            path_str(&pubkey),
        ]);
        assert!(ok, "{text}");
        let (ok, text) = openssl(&[
            "pkey",
            "-pubin",
            "-in",
            path_str(&pubkey),
            "-outform",
            "der",
            "-out",
            path_str(&der),
        ]);
        assert!(ok, "{text}");
        let expected = format!(
            "sha256:{}",
            hex::encode(Sha256::digest(fs::read(&der).unwrap()))
        );
        assert_eq!(loaded.sha256_pin(), expected);
        assert_eq!(inspect(loaded.cert_pem()).unwrap()[0].spki_sha256, expected);
    }
    // Loading refuses a key others can read.
    fs::set_permissions(
        dir.join("etcd-ca.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    let err = CertificateAuthority::load(dir, ETCD_CA).unwrap_err();
    assert!(err.to_string().contains("etcd-ca.key"), "{err}");
    // A key that is not the certificate's is refused.
    fs::copy(dir.join("agent-ca.crt"), dir.join("etcd-ca.crt")).unwrap();
    fs::set_permissions(
        dir.join("etcd-ca.key"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    let err = CertificateAuthority::load(dir, ETCD_CA).unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
}

/// Signs etcd1's CSR with each profile and has openssl judge the result.
fn full_flow(ca_algo: KeyAlgorithm, host_algo: agent::KeyAlgorithm) {
    let state = tempfile::tempdir().unwrap();
    let host = tempfile::tempdir().unwrap();
    let ca =
        CertificateAuthority::create(state.path(), ETCD_CA, "etcd-ca", ca_algo, DEFAULT_LIFETIME)
            .unwrap();
    let key_path = host.path().join("etc/etcd/pki/etcd1.key");
    let (dns, ips) = etcd1_names();
    let csr = host_csr(&key_path, host_algo, &dns, &ips);
    assert_eq!(mode(&key_path), 0o600);

    let mut serials = Vec::new();
    for profile in [Profile::Server, Profile::Peer, Profile::Client] {
        let pem = ca
            .sign_csr(&csr, &request(profile, DEFAULT_LIFETIME))
            .unwrap();
        let cert = write(host.path(), &format!("{profile}.crt"), &pem);
        let ca_file = path_str(ca.cert_path());

        let (ok, text) = openssl(&[
            "verify",
            "-CAfile",
            ca_file,
            "-purpose",
            "sslclient",
            path_str(&cert),
        ]);
        assert!(ok, "{profile} as client: {text}");
        let (ok, text) = openssl(&[
            "verify",
            "-CAfile",
            ca_file,
            "-purpose",
            "sslserver",
            path_str(&cert),
        ]);
        assert_eq!(
            ok,
            profile != Profile::Client,
            "{profile} as server: {text}"
        );

        let (ok, text) = openssl(&["x509", "-noout", "-text", "-in", path_str(&cert)]);
        assert!(ok, "{text}");
        for want in [
            "DNS:etcd1",
            "DNS:etcd1.lab.local",
            "DNS:localhost",
            "IP Address:10.77.1.11",
            "IP Address:127.0.0.1",
            "Digital Signature, Key Encipherment",
            "TLS Web Client Authentication",
            "X509v3 Authority Key Identifier",
            "X509v3 Subject Key Identifier",
            "CA:FALSE",
            "Subject: CN = etcd1",
        ] {
            assert!(text.contains(want), "{profile}: no {want:?} in\n{text}");
        }
        assert_eq!(
            text.contains("TLS Web Server Authentication"),
            profile != Profile::Client,
            "{text}"
        );

        let info = &inspect(&pem).unwrap()[0];
        assert_eq!(info.dns_names, dns);
        assert_eq!(info.ip_addresses, ["10.77.1.11", "127.0.0.1"]);
        let ekus: &[&str] = match profile {
            Profile::Server | Profile::Peer => &["server auth", "client auth"],
            Profile::Client => &["client auth"],
        };
        assert_eq!(info.extended_key_usages, ekus);
        assert_eq!(info.key_usages, ["digital signature", "key encipherment"]);
        assert!(!info.is_ca);
        assert_eq!(info.issuer, "CN=etcd-ca");
        assert_eq!(info.key_algorithm, host_algo.as_str());
        let ca_info = &inspect(ca.cert_pem()).unwrap()[0];
        assert_eq!(info.authority_key_id, ca_info.subject_key_id);
        assert!(info.subject_key_id.is_some());
        serials.push(info.serial_hex.clone());

        // The host takes it: it is for the key on disk.
        let installed = host.path().join(format!("etc/etcd/pki/{profile}.crt"));
        assert!(agent::install_certificate(&installed, &pem, &key_path).unwrap());
        assert!(!agent::install_certificate(&installed, &pem, &key_path).unwrap());
        let ca_copy = host.path().join("etc/etcd/pki/ca.crt");
        agent::install_ca_certificate(&ca_copy, ca.cert_pem(), &pem).unwrap();
    }
    serials.sort();
    serials.dedup();
    assert_eq!(serials.len(), 3, "serials repeat");
    // The host's key never reached the state dir.
    let keys: Vec<_> = fs::read_dir(state.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| is_private_key_pem(&fs::read(p).unwrap()))
        .collect();
    assert_eq!(keys, [state.path().join("etcd-ca.key")]);
}

#[test]
fn csr_flow_ecdsa() {
    full_flow(KeyAlgorithm::EcdsaP256, agent::KeyAlgorithm::EcdsaP256);
}

#[test]
fn csr_flow_rsa() {
    full_flow(KeyAlgorithm::Rsa2048, agent::KeyAlgorithm::Rsa2048);
}

#[test]
fn csr_flow_mixed_algorithms() {
    full_flow(KeyAlgorithm::Rsa2048, agent::KeyAlgorithm::EcdsaP256);
    full_flow(KeyAlgorithm::EcdsaP256, agent::KeyAlgorithm::Rsa2048);
}

#[test]
fn subset_of_the_expected_names_is_issued_as_asked() {
    let state = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::create(
        state.path(),
        ETCD_CA,
        "etcd-ca",
        KeyAlgorithm::EcdsaP256,
        DEFAULT_LIFETIME,
    )
    .unwrap();
    let csr = host_csr(
        &state.path().join("h.key"),
        agent::KeyAlgorithm::EcdsaP256,
        &["ETCD1".into()],
        &["10.77.1.11".parse().unwrap()],
    );
    let pem = ca
        .sign_csr(&csr, &request(Profile::Peer, DEFAULT_LIFETIME))
        .unwrap();
    let info = &inspect(&pem).unwrap()[0];
    assert_eq!(info.dns_names, ["etcd1"]);
    assert_eq!(info.ip_addresses, ["10.77.1.11"]);
}

#[test]
fn unexpected_names_are_refused_and_named() {
    let state = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::create(
        state.path(),
        ETCD_CA,
        "etcd-ca",
        KeyAlgorithm::EcdsaP256,
        DEFAULT_LIFETIME,
    )
    .unwrap();
    let key = state.path().join("host.key");
    let (mut dns, ips) = etcd1_names();
    dns.push("etcd2".into());
    let csr = host_csr(&key, agent::KeyAlgorithm::EcdsaP256, &dns, &ips);
    let err = ca
        .sign_csr(&csr, &request(Profile::Server, DEFAULT_LIFETIME))
        .unwrap_err();
    assert!(matches!(err, PkiError::UnexpectedNames { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(msg.contains("DNS:etcd2") && msg.contains("etcd1"), "{msg}");

    let (dns, mut ips) = etcd1_names();
    ips.push("10.77.1.12".parse().unwrap());
    let csr = host_csr(&key, agent::KeyAlgorithm::EcdsaP256, &dns, &ips);
    let err = ca
        .sign_csr(&csr, &request(Profile::Peer, DEFAULT_LIFETIME))
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("IP:10.77.1.12"), "{msg}");
    assert!(
        !msg.contains("DNS:etcd1,"),
        "only the unexpected names are listed first: {msg}"
    );

    // A client certificate expects no names at all.
    let mut req = request(Profile::Client, DEFAULT_LIFETIME);
    req.expected = ExpectedNames::none();
    let csr = host_csr(&key, agent::KeyAlgorithm::EcdsaP256, &["etcd1".into()], &[]);
    assert!(ca.sign_csr(&csr, &req).is_err());
    let csr = host_csr(&key, agent::KeyAlgorithm::EcdsaP256, &[], &[]);
    let info = &inspect(&ca.sign_csr(&csr, &req).unwrap()).unwrap()[0];
    assert!(info.dns_names.is_empty() && info.ip_addresses.is_empty());
}

#[test]
fn broken_csrs_are_refused() {
    let state = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::create(
        state.path(),
        ETCD_CA,
        "etcd-ca",
        KeyAlgorithm::EcdsaP256,
        DEFAULT_LIFETIME,
    )
    .unwrap();
    let (dns, ips) = etcd1_names();
    for algo in [agent::KeyAlgorithm::EcdsaP256, agent::KeyAlgorithm::Rsa2048] {
        let csr = host_csr(&state.path().join(format!("{algo}.key")), algo, &dns, &ips);
        let parsed = pem::parse(&csr).unwrap();
        let mut der = parsed.contents().to_vec();
        // The last byte is inside the signature: the structure still parses, the signature fails.
        *der.last_mut().unwrap() ^= 0x01;
        let broken = pem::encode(&pem::Pem::new("CERTIFICATE REQUEST", der));
        let err = ca
            .sign_csr(&broken, &request(Profile::Server, DEFAULT_LIFETIME))
            .unwrap_err();
        match &err {
            PkiError::InvalidCsr { host, source } => {
                assert_eq!(host, "etcd1");
                assert!(
                    matches!(source, rcgen::Error::InvalidCertificationRequestSignature),
                    "{source:?}"
                );
            }
            other => panic!("{algo}: unexpected error {other:?}"),
        }
    }
    let err = ca
        .sign_csr("garbage", &request(Profile::Server, DEFAULT_LIFETIME))
        .unwrap_err();
    assert!(matches!(err, PkiError::InvalidCsr { .. }), "{err:?}");
}

#[test]
fn lifetime_is_configurable_and_capped_by_the_ca() {
    let state = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::create(
        state.path(),
        ETCD_CA,
        "etcd-ca",
        KeyAlgorithm::EcdsaP256,
        DEFAULT_LIFETIME,
    )
    .unwrap();
    let csr = host_csr(
        &state.path().join("h.key"),
        agent::KeyAlgorithm::EcdsaP256,
        &[],
        &[],
    );
    let mut req = request(Profile::Client, DEFAULT_LIFETIME);
    req.expected = ExpectedNames::none();

    let now = OffsetDateTime::now_utc();
    let info = inspect(&ca.sign_csr(&csr, &req).unwrap())
        .unwrap()
        .remove(0);
    // 43800h is 1825 days; a second has passed since signing at most.
    assert!(
        (1824..=1825).contains(&info.days_left(now)),
        "{}",
        info.days_left(now)
    );
    let skew = (now - info.not_before).whole_seconds();
    assert!(
        (59..=65).contains(&skew),
        "not_before is {skew}s in the past"
    );

    req.lifetime = Duration::from_secs(3600);
    let info = inspect(&ca.sign_csr(&csr, &req).unwrap())
        .unwrap()
        .remove(0);
    let left = (info.not_after - now).whole_seconds();
    assert!((3595..=3605).contains(&left), "{left}");
    assert_eq!(info.days_left(now), 0);
    assert!(info.is_valid_at(now));
    assert!(!info.is_valid_at(now + time::Duration::hours(2)));

    // No certificate outlives its CA.
    let short = tempfile::tempdir().unwrap();
    let short_ca = CertificateAuthority::create(
        short.path(),
        ETCD_CA,
        "short",
        KeyAlgorithm::EcdsaP256,
        Duration::from_secs(7200),
    )
    .unwrap();
    req.lifetime = DEFAULT_LIFETIME;
    let info = inspect(&short_ca.sign_csr(&csr, &req).unwrap())
        .unwrap()
        .remove(0);
    assert_eq!(info.not_after, short_ca.not_after());

    req.lifetime = Duration::from_secs(1);
    assert!(matches!(
        ca.sign_csr(&csr, &req),
        Err(PkiError::InvalidLifetime { .. })
    ));
}

#[test]
fn local_admin_certificate_for_the_agent_channel() {
    let state = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::create(
        state.path(),
        AGENT_CA,
        "haop agent CA",
        KeyAlgorithm::EcdsaP256,
        DEFAULT_LIFETIME,
    )
    .unwrap();
    let req = SigningRequest {
        profile: Profile::Client,
        lifetime: DEFAULT_LIFETIME,
        expected: ExpectedNames::none(),
        organization: Some(ROLE_ADMIN.into()),
        common_name: "haop".into(),
    };
    let local = ca
        .issue_local(state.path(), "admin", KeyAlgorithm::Rsa2048, &req)
        .unwrap();
    assert_eq!(mode(&local.key_path), 0o600);
    assert_eq!(mode(&local.cert_path), 0o644);
    let (ok, text) = openssl(&[
        "verify",
        "-CAfile",
        path_str(ca.cert_path()),
        "-purpose",
        "sslclient",
        path_str(&local.cert_path),
    ]);
    assert!(ok, "{text}");
    let (ok, text) = openssl(&[
        "x509",
        "-noout",
        "-subject",
        "-in",
        path_str(&local.cert_path),
    ]);
    assert!(
        ok && (text.contains("O=haop:admin, CN=haop")
            || text.contains("O = haop:admin, CN = haop")),
        "{text}"
    );
    // The key and the certificate belong together, as openssl sees it.
    let (ok, cert_pub) = openssl(&[
        "x509",
        "-pubkey",
        "-noout",
        "-in",
        path_str(&local.cert_path),
    ]);
    assert!(ok);
    let (ok, key_pub) = openssl(&["pkey", "-pubout", "-in", path_str(&local.key_path)]);
    assert!(ok, "{key_pub}");
    assert_eq!(cert_pub, key_pub);
    let info = &inspect(&local.cert_pem).unwrap()[0];
    assert_eq!(info.organizations, [ROLE_ADMIN]);
    assert_eq!(info.extended_key_usages, ["client auth"]);
    assert_eq!(info.key_algorithm, "rsa-2048");

    // Issuing again replaces both files with a new key.
    let first_key = fs::read(&local.key_path).unwrap();
    let again = ca
        .issue_local(state.path(), "admin", KeyAlgorithm::EcdsaP256, &req)
        .unwrap();
    assert_ne!(fs::read(&again.key_path).unwrap(), first_key);
    assert_eq!(fs::read_dir(state.path()).unwrap().count(), 4);
}

#[test]
fn inspect_reads_every_certificate_of_a_bundle() {
    let state = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::create(
        state.path(),
        ETCD_CA,
        "etcd-ca",
        KeyAlgorithm::EcdsaP256,
        DEFAULT_LIFETIME,
    )
    .unwrap();
    let csr = host_csr(
        &state.path().join("h.key"),
        agent::KeyAlgorithm::EcdsaP256,
        &["etcd1".into()],
        &[],
    );
    let leaf = ca
        .sign_csr(&csr, &request(Profile::Server, DEFAULT_LIFETIME))
        .unwrap();
    let bundle = format!("{leaf}{}", ca.cert_pem());
    let infos = inspect(&bundle).unwrap();
    assert_eq!(infos.len(), 2);
    assert!(!infos[0].is_ca && infos[1].is_ca);
    assert!(matches!(
        inspect("no pem here"),
        Err(PkiError::NoCertificate)
    ));
    assert!(inspect(&fs::read_to_string(state.path().join("etcd-ca.key")).unwrap()).is_err());
}

#[test]
fn csrs_made_by_openssl_are_accepted_and_checked_alike() {
    let state = tempfile::tempdir().unwrap();
    let ca = CertificateAuthority::create(
        state.path(),
        ETCD_CA,
        "etcd-ca",
        KeyAlgorithm::EcdsaP256,
        DEFAULT_LIFETIME,
    )
    .unwrap();
    let key = state.path().join("o.key");
    let csr = state.path().join("o.csr");
    for (san, accepted) in [
        ("DNS:etcd1,DNS:localhost,IP:10.77.1.11", true),
        ("DNS:etcd1,DNS:etcd2", false),
    ] {
        let (ok, text) = openssl(&[
            "req",
            "-new",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            path_str(&key),
            "-subj",
            "/CN=etcd1",
            "-addext",
            &format!("subjectAltName={san}"),
            "-out",
            path_str(&csr),
        ]);
        assert!(ok, "{text}");
        let result = ca.sign_csr(
            &fs::read_to_string(&csr).unwrap(),
            &request(Profile::Server, DEFAULT_LIFETIME),
        );
        assert_eq!(result.is_ok(), accepted, "{san}: {result:?}");
        if let Err(e) = result {
            assert!(e.to_string().contains("DNS:etcd2"), "{e}");
        }
    }
}
