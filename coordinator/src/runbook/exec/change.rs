//! What a step would change, as `haop plan` shows it (and `-o json` serializes it).
//!
//! Every family's `check` answers a [`Change`]; files answer it through [`file_change`], with a
//! unified diff, so that a plan of a file reads the same whichever family writes it. A file that
//! does not exist yet is shown whole, as a diff from nothing (`--- /dev/null`), since the files an
//! operator most wants to read before a first apply are exactly the new ones. Secrets that haop
//! renders into files (keepalived's VRRP password, kubeadm's tokens and certificate key) are
//! masked in every diff: a plan is read, pasted and kept in CI logs.

/// What a step would change.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Change {
    Unchanged,
    /// Something new: a file, a certificate, a unit. `diff` shows a new file whole (from
    /// `/dev/null`); empty when there is no text to show (a certificate, an upload).
    Create {
        detail: String,
        #[serde(default)]
        diff: String,
    },
    /// A file that differs: its unified diff.
    Update {
        detail: String,
        diff: String,
    },
    /// Something to do that is not a file: start a unit, apply kernel settings, wait.
    Run {
        detail: String,
    },
}

impl Change {
    pub fn is_change(&self) -> bool {
        !matches!(self, Change::Unchanged)
    }
}

/// A unified diff of two texts, labelled with the path, secrets masked.
pub fn unified_diff(path: &str, old: &str, new: &str) -> String {
    mask_secrets(
        &similar::TextDiff::from_lines(old, new)
            .unified_diff()
            .context_radius(3)
            .header(path, path)
            .to_string(),
    )
}

/// A new file as a diff from nothing (`--- /dev/null`, `+++ PATH`, every line added), secrets
/// masked.
pub fn creation_diff(path: &str, content: &str) -> String {
    mask_secrets(
        &similar::TextDiff::from_lines("", content)
            .unified_diff()
            .context_radius(3)
            .header("/dev/null", path)
            .to_string(),
    )
}

/// What a masked secret reads as.
pub const MASK: &str = "********";

/// The keys whose values are secrets in the files haop renders: keepalived's `auth_pass`,
/// kubeadm's bootstrap `token` and `certificateKey`, and their command-line and kubeconfig forms.
const SECRET_KEYS: &[&str] = &[
    "auth_pass",
    "token",
    "certificateKey",
    "certificate-key",
    "password",
    "client-key-data",
];

/// `text` (a diff, or a file) with the value of every secret key replaced by [`MASK`]: `KEY
/// value`, `KEY: value`, `KEY=value`, with any indentation and a diff's leading `+`, `-` or space.
pub fn mask_secrets(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.split_inclusive('\n') {
        let body = line.trim_end_matches(['\n', '\r']);
        let ending = &line[body.len()..];
        out.push_str(&mask_line(body));
        out.push_str(ending);
    }
    out
}

fn mask_line(line: &str) -> String {
    // A diff's marker, then indentation.
    let (marker, rest) = match line.chars().next() {
        Some(c @ ('+' | '-' | ' ')) if !line.starts_with("+++") && !line.starts_with("---") => {
            (&line[..c.len_utf8()], &line[c.len_utf8()..])
        }
        _ => ("", line),
    };
    let trimmed = rest.trim_start();
    let indent = &rest[..rest.len() - trimmed.len()];
    // A YAML list item (`- token: ...`) or a command-line flag (`--certificate-key=...`).
    let unlisted = trimmed.trim_start_matches("- ").trim_start_matches('-');
    let list = &trimmed[..trimmed.len() - unlisted.len()];
    for key in SECRET_KEYS {
        let Some(after) = unlisted.strip_prefix(key) else {
            continue;
        };
        let sep_len = after.len() - after.trim_start_matches([' ', ':', '=', '\t']).len();
        if sep_len == 0 || after[sep_len..].is_empty() {
            continue;
        }
        let value = &after[sep_len..];
        // Keep a value's quotes, so that the line still reads as what it is.
        let quote = value.chars().next().filter(|c| *c == '"' || *c == '\'');
        let masked = match quote {
            Some(q) => format!("{q}{MASK}{q}"),
            None => MASK.to_string(),
        };
        return format!("{marker}{indent}{list}{key}{}{masked}", &after[..sep_len]);
    }
    line.to_string()
}

/// The change from `current` (text and mode, `None` when missing) to `wanted` with `mode`.
pub fn file_change(path: &str, current: Option<(String, u32)>, wanted: &str, mode: u32) -> Change {
    match current {
        None => Change::Create {
            detail: format!("create {path} (mode {mode:04o}, owner root:root)"),
            diff: creation_diff(path, wanted),
        },
        Some((text, m)) if text == wanted => {
            if m == mode {
                Change::Unchanged
            } else {
                Change::Update {
                    detail: format!("mode of {path} {m:04o} -> {mode:04o}"),
                    diff: String::new(),
                }
            }
        }
        Some((text, _)) => Change::Update {
            detail: format!("update {path}"),
            diff: unified_diff(path, &text, wanted),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_changes() {
        assert_eq!(
            file_change("/x", Some(("a\n".into(), 0o644)), "a\n", 0o644),
            Change::Unchanged
        );
        let Change::Create { detail, diff } = file_change("/x", None, "a\nb\n", 0o644) else {
            panic!("expected a creation");
        };
        assert_eq!(detail, "create /x (mode 0644, owner root:root)");
        assert!(
            diff.starts_with("--- /dev/null\n+++ /x\n") && diff.contains("+a\n+b\n"),
            "{diff}"
        );
        assert!(matches!(
            file_change("/x", Some(("a\n".into(), 0o600)), "a\n", 0o644),
            Change::Update { ref diff, .. } if diff.is_empty()
        ));
        let Change::Update { diff, .. } =
            file_change("/x", Some(("a\nb\n".into(), 0o644)), "a\nc\n", 0o644)
        else {
            panic!("expected an update");
        };
        assert!(diff.contains("-b\n") && diff.contains("+c\n"), "{diff}");
        assert!(diff.starts_with("--- /x\n+++ /x\n"), "{diff}");
    }

    #[test]
    fn secrets_are_masked_in_every_form() {
        let text = "\
 vrrp_instance VI_1 {
+    auth_pass s3cr3tpw
-    auth_pass oldpass1
+  - token: \"abcdef.0123456789abcdef\"
+certificateKey: 0123abcd
+ETCD_NAME=etcd1
   --certificate-key=deadbeef
+    client-key-data: QUJD
+    auth_pass
+++ /etc/keepalived/keepalived.conf
";
        let masked = mask_secrets(text);
        for secret in [
            "s3cr3tpw",
            "oldpass1",
            "abcdef.0123",
            "0123abcd",
            "deadbeef",
            "QUJD",
        ] {
            assert!(!masked.contains(secret), "{secret} left in:\n{masked}");
        }
        assert!(masked.contains("+    auth_pass ********\n"), "{masked}");
        assert!(masked.contains("+  - token: \"********\"\n"), "{masked}");
        assert!(masked.contains("--certificate-key=********"), "{masked}");
        // What is not a secret, a key without a value and a diff header stay as they are.
        assert!(masked.contains("+ETCD_NAME=etcd1\n"));
        assert!(masked.contains("+    auth_pass\n"));
        assert!(masked.contains("+++ /etc/keepalived/keepalived.conf\n"));
        assert!(masked.starts_with("vrrp_instance VI_1 {\n"));
    }
}
