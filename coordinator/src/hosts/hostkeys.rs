//! Host keys: reading a refused key out of ssh's failure, and the pinned key's fingerprint.
//!
//! ssh already does the checking (see [`super::ssh`]); what it does not do is say it in a way
//! that an operator of many hosts can act on at once. So when a connection fails with exit 255,
//! its stderr is classified: an unknown key ("No ED25519 host key is known for ...") or a
//! changed one ("REMOTE HOST IDENTIFICATION HAS CHANGED", with "The fingerprint for the ED25519
//! key sent by the remote host is SHA256:..."). For a changed key the pinned fingerprint is read
//! from the known_hosts file with `ssh-keygen -l -F`, so that the error names the host and both
//! fingerprints. ssh prints the offered fingerprint itself, also through a jump host, so no
//! second connection (ssh-keyscan) is made to learn it.
//!
//! Parsing is pure ([`classify`]) and tested on ssh's own texts.

use std::path::Path;
use std::process::Stdio;

use super::ssh::SSH_KEYGEN;

/// Why ssh refused a host's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// The known_hosts file has no key for the host.
    Unknown { key_type: String },
    /// The host offered another key than the pinned one.
    Changed {
        key_type: String,
        offered: String,
        /// `file:line` of the pinned key, as ssh names it.
        pinned_at: Option<String>,
    },
}

/// Reads a host key refusal out of ssh's stderr; `None` when the failure is something else.
pub fn classify(stderr: &str) -> Option<Refusal> {
    if stderr.contains("REMOTE HOST IDENTIFICATION HAS CHANGED")
        || stderr.contains("has changed and you have requested strict checking")
    {
        let mut key_type = String::new();
        let mut offered = String::new();
        let mut pinned_at = None;
        let lines: Vec<&str> = stderr.lines().map(str::trim).collect();
        for (i, line) in lines.iter().enumerate() {
            if let Some(rest) = line.strip_prefix("The fingerprint for the ") {
                key_type = rest.split_whitespace().next().unwrap_or("").to_string();
                // The fingerprint is on the next line, with a full stop.
                if let Some(next) = lines.get(i + 1) {
                    offered = next.trim_end_matches('.').to_string();
                }
            }
            if let Some(rest) = line.strip_prefix("Offending ") {
                // "Offending ED25519 key in /path/known_hosts:3"
                pinned_at = rest.split(" key in ").nth(1).map(str::to_string);
            }
        }
        return Some(Refusal::Changed {
            key_type,
            offered,
            pinned_at,
        });
    }
    for line in stderr.lines() {
        // "No ED25519 host key is known for 10.0.0.5 and you have requested strict checking."
        if let Some(rest) = line.trim().strip_prefix("No ") {
            if let Some((key_type, _)) = rest.split_once(" host key is known for ") {
                return Some(Refusal::Unknown {
                    key_type: key_type.to_string(),
                });
            }
        }
    }
    None
}

/// The fingerprints `ssh-keygen -l -F NAME` prints for `name` in `known_hosts`, as
/// `(key type, fingerprint)`.
pub fn parse_keygen_lines(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let _name = f.next()?;
            let key_type = f.next()?;
            let fp = f.next()?;
            fp.starts_with("SHA256:")
                .then(|| (key_type.to_string(), fp.to_string()))
        })
        .collect()
}

/// The pinned fingerprint of `name`'s key of `key_type` (any type when empty) in
/// `known_hosts`, from `ssh-keygen -l -F`. `None` when none is found or ssh-keygen fails.
pub async fn pinned_fingerprint(known_hosts: &Path, name: &str, key_type: &str) -> Option<String> {
    let out = tokio::process::Command::new(SSH_KEYGEN)
        .args(["-l", "-F", name, "-f"])
        .arg(known_hosts)
        .env_clear()
        .env("LC_ALL", "C.UTF-8")
        .stdin(Stdio::null())
        .output()
        .await
        .ok()?;
    let keys = parse_keygen_lines(&String::from_utf8_lossy(&out.stdout));
    keys.iter()
        .find(|(t, _)| key_type.is_empty() || t.eq_ignore_ascii_case(key_type))
        .or(keys.first())
        .map(|(_, fp)| fp.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    const CHANGED: &str = "\
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @
@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@
IT IS POSSIBLE THAT SOMEONE IS DOING SOMETHING NASTY!
Someone could be eavesdropping on you right now (man-in-the-middle attack)!
It is also possible that a host key has just been changed.
The fingerprint for the ED25519 key sent by the remote host is
SHA256:Nf3kq2mZ1nY0xK7mG2kq0e8m5s7Zl4m8vQm1bq7yS1w.
Please contact your system administrator.
Add correct host key in /s/ssh/known_hosts to get rid of this message.
Offending ED25519 key in /s/ssh/known_hosts:3
Host key for 10.77.3.13 has changed and you have requested strict checking.
Host key verification failed.";

    #[test]
    fn a_changed_key_is_read_with_the_offered_fingerprint() {
        assert_eq!(
            classify(CHANGED),
            Some(Refusal::Changed {
                key_type: "ED25519".into(),
                offered: "SHA256:Nf3kq2mZ1nY0xK7mG2kq0e8m5s7Zl4m8vQm1bq7yS1w".into(),
                pinned_at: Some("/s/ssh/known_hosts:3".into()),
            })
        );
    }

    #[test]
    fn an_unknown_key_is_told_apart() {
        let text = "No ED25519 host key is known for 10.77.3.11 and you have requested strict \
                    checking.\r\nHost key verification failed.";
        assert_eq!(
            classify(text),
            Some(Refusal::Unknown {
                key_type: "ED25519".into()
            })
        );
    }

    #[test]
    fn other_failures_are_not_key_refusals() {
        for text in [
            "ssh: connect to host 10.0.0.9 port 22: Connection refused",
            "root@10.0.0.9: Permission denied (publickey).",
            "",
        ] {
            assert_eq!(classify(text), None, "{text}");
        }
    }

    #[test]
    fn keygen_output_is_parsed() {
        let text = "# Host 10.77.3.13 found: line 3 \n\
                    10.77.3.13 ED25519 SHA256:abc\n\
                    10.77.3.13 RSA SHA256:def\n";
        assert_eq!(
            parse_keygen_lines(text),
            [
                ("ED25519".to_string(), "SHA256:abc".to_string()),
                ("RSA".to_string(), "SHA256:def".to_string())
            ]
        );
    }
}
