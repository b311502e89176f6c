//! What of a file's bytes may leave the host: never a private key, in any encoding.
//!
//! Keys are generated on their host and never leave it (README.md, "The agent": no RPC carries
//! a private key, in either direction), so every RPC that carries file content checks it with
//! [`holds_private_key`]. A key hides in two ways: as PEM, and as base64 of PEM, which is how
//! kubeconfigs embed it (kubeadm's admin.conf holds the cluster-admin key as `client-key-data`).
//! [`certificates_in`] is the way to read the certificates of such a file: only the certificate
//! blocks come out.

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine;

const KEY_MARK: &[u8] = b"PRIVATE KEY-----";
const CERT_BEGIN: &[u8] = b"-----BEGIN CERTIFICATE-----";
const CERT_END: &[u8] = b"-----END CERTIFICATE-----";

/// The shortest base64 run that can encode a PEM header ("-----BEGIN PRIVATE KEY-----").
const SHORTEST_RUN: usize = 36;

/// Whether bytes hold a PEM private key, as PEM or base64-encoded PEM.
pub fn holds_private_key(data: &[u8]) -> bool {
    contains(data, KEY_MARK) || decoded_runs(data).any(|bytes| contains(&bytes, KEY_MARK))
}

/// The certificates `data` holds, as PEM blocks one after another: those written as PEM, then
/// those base64-encoded in it (a kubeconfig's `client-certificate-data` and
/// `certificate-authority-data`). Nothing else comes out; empty when there is none.
pub fn certificates_in(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    pem_certificates(data, &mut out);
    for bytes in decoded_runs(data) {
        pem_certificates(&bytes, &mut out);
    }
    out
}

fn contains(data: &[u8], needle: &[u8]) -> bool {
    data.windows(needle.len()).any(|w| w == needle)
}

/// Appends each whole `CERTIFICATE` block of `data` to `out`, ending it with a newline.
fn pem_certificates(data: &[u8], out: &mut Vec<u8>) {
    let mut rest = data;
    while let Some(begin) = rest.windows(CERT_BEGIN.len()).position(|w| w == CERT_BEGIN) {
        let block = &rest[begin..];
        let Some(end) = block.windows(CERT_END.len()).position(|w| w == CERT_END) else {
            return;
        };
        let block = &block[..end + CERT_END.len()];
        // A block is base64 between its lines; anything else in it is not a certificate's.
        let body = &block[CERT_BEGIN.len()..end];
        if body.iter().all(|b| is_base64(b) || b"=\r\n".contains(b)) {
            out.extend_from_slice(block);
            out.push(b'\n');
        }
        rest = &rest[begin + block.len()..];
    }
}

fn is_base64(b: &u8) -> bool {
    b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/'
}

/// Each run of base64 in `data` long enough to encode a PEM header, decoded. A run is a field's
/// value, a line of a wrapped blob or a whole file: each starts where its encoding starts, so
/// decoding the runs as they stand finds a PEM block wherever it sits in what they encode.
fn decoded_runs(data: &[u8]) -> impl Iterator<Item = Vec<u8>> + '_ {
    let engine = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::RequireNone)
            .with_decode_allow_trailing_bits(true),
    );
    data.split(|b| !is_base64(b))
        .filter(|run| run.len() >= SHORTEST_RUN)
        // A run ends at its padding (or at what follows it); one character over a whole
        // group cannot be base64, and is dropped.
        .filter_map(move |run| {
            let usable = run.len() - usize::from(run.len() % 4 == 1);
            engine.decode(&run[..usable]).ok()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    const KEY: &str = "-----BEGIN EC PRIVATE KEY-----\nMHcCAQEEIB\n-----END EC PRIVATE KEY-----\n";
    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    const CA: &str = "-----BEGIN CERTIFICATE-----\nMIIC\n-----END CERTIFICATE-----\n";

    /// kubeadm's admin.conf, trimmed: the CA and client certificates may go, the key may not.
    fn kubeconfig() -> String {
        format!(
            "clusters:\n- cluster:\n    certificate-authority-data: {}\n  name: kubernetes\n\
             users:\n- name: kubernetes-admin\n  user:\n    client-certificate-data: {}\n    \
             client-key-data: {}\n",
            b64(CA),
            b64(CERT),
            b64(KEY)
        )
    }

    #[test]
    fn pem_keys_are_found() {
        assert!(holds_private_key(KEY.as_bytes()));
        assert!(holds_private_key(b"-----BEGIN PRIVATE KEY-----"));
        assert!(!holds_private_key(CERT.as_bytes()));
    }

    #[test]
    fn keys_in_base64_are_found_too() {
        assert!(holds_private_key(kubeconfig().as_bytes()));
        assert!(holds_private_key(
            b64("-----BEGIN PRIVATE KEY-----\nMC4CAQ\n").as_bytes()
        ));
        assert!(!holds_private_key(
            format!("client-certificate-data: {}\n", b64(CERT)).as_bytes()
        ));
        // A key anywhere in a blob, as in a bundle of certificate and key encoded together.
        assert!(holds_private_key(b64(&format!("{CERT}{KEY}")).as_bytes()));
        // Ordinary text is base64 too, and no key.
        assert!(!holds_private_key(
            b"ExecStart=/usr/bin/etcd --name etcd1 --data-dir /var/lib/etcd\nKubernetesVersion\n"
        ));
    }

    #[test]
    fn only_certificates_come_out() {
        let got = certificates_in(kubeconfig().as_bytes());
        assert_eq!(
            String::from_utf8(got.clone()).unwrap(),
            format!("{CA}{CERT}")
        );
        assert!(!holds_private_key(&got));

        let bundle = format!("{CERT}{KEY}");
        assert_eq!(certificates_in(bundle.as_bytes()), CERT.as_bytes());
        assert_eq!(
            certificates_in(b64(&bundle).as_bytes()),
            CERT.as_bytes(),
            "a bundle in base64"
        );
        assert!(certificates_in(b"stand-in admin.conf\n").is_empty());
        // A block that does not end, or carries more than base64, is not passed on.
        assert!(certificates_in(b"-----BEGIN CERTIFICATE-----\nMIIB\n").is_empty());
        let smuggled = format!("-----BEGIN CERTIFICATE-----\n{KEY}-----END CERTIFICATE-----\n");
        assert!(!holds_private_key(&certificates_in(smuggled.as_bytes())));
    }
}
