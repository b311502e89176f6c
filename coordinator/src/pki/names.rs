//! The name check of the CSR flow: a pure function from the names a CSR asks for and the names the
//! inventory expects to the names the certificate gets, or a refusal that lists every name too
//! many.

use rcgen::SanType;

use super::{ExpectedNames, PkiError};

/// Checks that every name `requested` is among `expected` and returns the SANs to issue.
///
/// The certificate gets exactly the names the CSR asked for (never more: the coordinator does not
/// widen what a host claims), deduplicated, in the CSR's order, spelled as the inventory spells
/// them. DNS names compare without regard to ASCII case, as DNS does. Any other kind of name
/// (e-mail, URI, otherName) is never expected and is refused.
pub(crate) fn check_requested(
    host: &str,
    requested: &[SanType],
    expected: &ExpectedNames,
) -> Result<Vec<SanType>, PkiError> {
    let mut granted: Vec<SanType> = Vec::new();
    let mut unexpected: Vec<String> = Vec::new();
    for name in requested {
        let san = match name {
            SanType::DnsName(dns) => {
                let asked = dns.as_str();
                match expected.dns.iter().find(|e| e.eq_ignore_ascii_case(asked)) {
                    Some(e) => dns_san(host, e)?,
                    None => {
                        unexpected.push(format!("DNS:{asked}"));
                        continue;
                    }
                }
            }
            SanType::IpAddress(ip) if expected.ips.contains(ip) => SanType::IpAddress(*ip),
            SanType::IpAddress(ip) => {
                unexpected.push(format!("IP:{ip}"));
                continue;
            }
            SanType::Rfc822Name(mail) => {
                unexpected.push(format!("email:{}", mail.as_str()));
                continue;
            }
            SanType::URI(uri) => {
                unexpected.push(format!("URI:{}", uri.as_str()));
                continue;
            }
            other => {
                unexpected.push(format!("{other:?}"));
                continue;
            }
        };
        if !granted.contains(&san) {
            granted.push(san);
        }
    }
    if !unexpected.is_empty() {
        return Err(PkiError::UnexpectedNames {
            host: host.to_string(),
            unexpected,
            expected: expected.to_strings(),
        });
    }
    Ok(granted)
}

/// All expected names as SANs: for certificates whose key haop generates itself.
pub(crate) fn all_expected(host: &str, expected: &ExpectedNames) -> Result<Vec<SanType>, PkiError> {
    let mut sans = Vec::new();
    for dns in &expected.dns {
        sans.push(dns_san(host, dns)?);
    }
    sans.extend(expected.ips.iter().copied().map(SanType::IpAddress));
    Ok(sans)
}

fn dns_san(host: &str, name: &str) -> Result<SanType, PkiError> {
    rcgen::string::Ia5String::try_from(name.to_string())
        .map(SanType::DnsName)
        .map_err(|source| PkiError::InvalidName {
            host: host.to_string(),
            name: name.to_string(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;

    fn expected() -> ExpectedNames {
        ExpectedNames::for_host(
            "etcd1",
            Some("etcd1.lab.local"),
            &["10.77.1.11".parse().unwrap()],
        )
    }

    fn dns(s: &str) -> SanType {
        dns_san("t", s).unwrap()
    }

    fn ip(s: &str) -> SanType {
        SanType::IpAddress(s.parse::<IpAddr>().unwrap())
    }

    #[test]
    fn grants_exactly_what_was_asked_when_expected() {
        let asked = [
            dns("ETCD1"),
            ip("10.77.1.11"),
            dns("etcd1"),
            dns("localhost"),
        ];
        let granted = check_requested("etcd1", &asked, &expected()).unwrap();
        assert_eq!(granted, [dns("etcd1"), ip("10.77.1.11"), dns("localhost")]);
        assert!(check_requested("etcd1", &[], &expected())
            .unwrap()
            .is_empty());
    }

    #[test]
    fn refuses_and_lists_every_unexpected_name() {
        let asked = [
            dns("etcd1"),
            dns("etcd2"),
            ip("10.77.1.12"),
            ip("127.0.0.1"),
        ];
        let err = check_requested("etcd1", &asked, &expected()).unwrap_err();
        match &err {
            PkiError::UnexpectedNames { unexpected, .. } => {
                assert_eq!(unexpected, &["DNS:etcd2", "IP:10.77.1.12"])
            }
            other => panic!("unexpected error {other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains("etcd1") && msg.contains("DNS:etcd2"), "{msg}");
    }

    #[test]
    fn other_name_kinds_are_never_expected() {
        let mail = SanType::Rfc822Name("root@etcd1".to_string().try_into().unwrap());
        let err = check_requested("etcd1", &[mail], &expected()).unwrap_err();
        assert!(err.to_string().contains("email:root@etcd1"), "{err}");
    }
}
