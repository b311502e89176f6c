//! Changing one host's roles, or the etcd release, in the operator's inventory file, keeping
//! everything else.
//!
//! `haop etcd add|remove|replace` change the cluster's membership, and the inventory must say
//! so afterwards: otherwise `haop apply` would try to form the removed member again and `haop
//! status` would report it missing. The file is the operator's (comments, order, flow or block
//! style), so it is not re-serialized: [`set_roles`] edits the text of that one host's `roles`
//! (or removes the host's entry when no role is left), and [`rewrite_roles`] checks the edit by
//! parsing the new text and comparing it with the old inventory changed in memory. Anything
//! it cannot edit with certainty is an error naming the file and the host, and the file is not
//! touched; the write itself is atomic. `haop etcd upgrade` records the version and binary the
//! members run the same way ([`rewrite_etcd_release`]), so that apply and plan render what runs.

use std::path::{Path, PathBuf};

use super::{Inventory, InventoryError, Role};

/// Why the inventory file was not changed.
#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("{path}: no entry for host {host} (edit its roles by hand)")]
    NoHost { path: String, host: String },
    #[error("{path}: the entry of host {host} is written in a form haop cannot edit safely ({why}); set its roles to [{roles}] by hand")]
    Unsupported {
        path: String,
        host: String,
        why: &'static str,
        roles: String,
    },
    #[error(
        "{path}: {why}; record the etcd release by hand: under `etcd:` set `version: \"{version}\"` \
         and the `binary:` haop now runs"
    )]
    UnsupportedEtcd {
        path: String,
        why: &'static str,
        version: String,
    },
    #[error(transparent)]
    Inventory(#[from] InventoryError),
    #[error("writing {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: crate::fsio::FsioError,
    },
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

fn is_blank_or_comment(line: &str) -> bool {
    let t = line.trim_start();
    t.is_empty() || t.starts_with('#')
}

/// Whether `s` (a mapping's text from a key on) is `name: HOST` with HOST plain or quoted.
fn names_host(s: &str, host: &str) -> bool {
    let Some(rest) = s.strip_prefix("name:") else {
        return false;
    };
    let v = rest.trim_start();
    let v = v.split([',', '}', '#']).next().unwrap_or("").trim();
    v.trim_matches(|c| c == '"' || c == '\'') == host
}

fn flow_roles(roles: &[Role]) -> String {
    let names: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
    format!("[{}]", names.join(", "))
}

/// Replaces the `[...]` right after `roles:` at byte `at` of `line`.
fn replace_flow(line: &str, at: usize, roles: &[Role]) -> Option<String> {
    let after = &line[at + "roles:".len()..];
    let open = at + "roles:".len() + after.find('[')?;
    if !line[at + "roles:".len()..open].trim().is_empty() {
        return None;
    }
    let close = open + line[open..].find(']')?;
    Some(format!(
        "{}{}{}",
        &line[..open],
        flow_roles(roles),
        &line[close + 1..]
    ))
}

/// `text` with the roles of `host` set to `roles`; with no roles, without the host's entry.
/// `path` only names the file in errors.
pub fn set_roles(text: &str, path: &str, host: &str, roles: &[Role]) -> Result<String, EditError> {
    let unsupported = |why| EditError::Unsupported {
        path: path.into(),
        host: host.into(),
        why,
        roles: roles
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    };
    let lines: Vec<&str> = text.lines().collect();
    let trailing_newline = text.ends_with('\n');
    let join = |lines: Vec<String>| {
        let mut s = lines.join("\n");
        if trailing_newline {
            s.push('\n');
        }
        s
    };

    // A flow mapping on one line: `- {name: etcd1, address: ..., roles: [etcd]}`.
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        let Some(body) = t.strip_prefix("- {").or_else(|| t.strip_prefix('{')) else {
            continue;
        };
        let keys_named = body
            .split(',')
            .map(str::trim_start)
            .any(|k| names_host(k, host));
        if !keys_named {
            continue;
        }
        let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        if roles.is_empty() {
            out.remove(i);
        } else {
            let at = line
                .find("roles:")
                .ok_or_else(|| unsupported("no roles key"))?;
            out[i] = replace_flow(line, at, roles)
                .ok_or_else(|| unsupported("roles not a one-line [..] list"))?;
        }
        return Ok(join(out));
    }

    // A block mapping: `- name: etcd1` (or `-` then `name: etcd1`), keys indented alike.
    let Some(name_line) = lines.iter().position(|l| {
        let t = l.trim_start();
        names_host(t.strip_prefix("- ").unwrap_or(t).trim_start(), host)
    }) else {
        return Err(EditError::NoHost {
            path: path.into(),
            host: host.into(),
        });
    };
    let nl = lines[name_line];
    let (item_start, key_indent) = if nl.trim_start().starts_with("- ") {
        let dash = indent(nl);
        let key = dash + 1 + nl[dash + 1..].len() - nl[dash + 1..].trim_start().len();
        (name_line, key)
    } else {
        let key = indent(nl);
        let start = (0..name_line)
            .rev()
            .find(|&j| !is_blank_or_comment(lines[j]) && indent(lines[j]) < key)
            .filter(|&j| lines[j].trim_start().starts_with('-'))
            .ok_or_else(|| unsupported("not an item of the hosts list"))?;
        (start, key)
    };
    let dash_indent = indent(lines[item_start]);
    // The item ends before the next line at the dash's indent or less (the next host, or the
    // next top-level key).
    let item_end = (item_start + 1..lines.len())
        .find(|&j| !is_blank_or_comment(lines[j]) && indent(lines[j]) <= dash_indent)
        .unwrap_or(lines.len());
    let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
    if roles.is_empty() {
        // Trailing blank or comment lines belong to what follows.
        let mut end = item_end;
        while end > item_start + 1 && is_blank_or_comment(lines[end - 1]) {
            end -= 1;
        }
        out.drain(item_start..end);
        return Ok(join(out));
    }
    let roles_line = (item_start..item_end)
        .find(|&j| {
            let l = lines[j];
            let t = if j == item_start {
                l.trim_start().trim_start_matches('-').trim_start()
            } else {
                l.trim_start()
            };
            t.starts_with("roles:") && (j == item_start || indent(l) == key_indent)
        })
        .ok_or_else(|| unsupported("no roles key"))?;
    let l = lines[roles_line];
    let at = l.find("roles:").expect("found above");
    let value = l[at + "roles:".len()..].trim();
    if value.starts_with('[') {
        out[roles_line] = replace_flow(l, at, roles)
            .ok_or_else(|| unsupported("roles not a one-line [..] list"))?;
        return Ok(join(out));
    }
    if !(value.is_empty() || value.starts_with('#')) {
        return Err(unsupported("roles neither a [..] list nor a block list"));
    }
    // A block list: the `- role` lines under `roles:`.
    let items: Vec<usize> = (roles_line + 1..item_end)
        .take_while(|&j| {
            is_blank_or_comment(lines[j])
                || (lines[j].trim_start().starts_with('-') && indent(lines[j]) >= key_indent)
        })
        .filter(|&j| !is_blank_or_comment(lines[j]))
        .collect();
    let Some(&first) = items.first() else {
        return Err(unsupported("an empty roles list"));
    };
    let item_indent = " ".repeat(indent(lines[first]));
    let last = *items.last().expect("not empty");
    let new_items: Vec<String> = roles
        .iter()
        .map(|r| format!("{item_indent}- {}", r.as_str()))
        .collect();
    out.splice(first..=last, new_items);
    Ok(join(out))
}

/// Sets `host`'s roles in the inventory file at `path` (removing the host when `roles` is
/// empty), checked by parsing the result; the file is replaced atomically, or not at all.
pub fn rewrite_roles(path: &Path, host: &str, roles: &[Role]) -> Result<(), EditError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| InventoryError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let (mut expected, _) = Inventory::from_yaml(&text, &shown)?;
    let Some(h) = expected.hosts.iter_mut().find(|h| h.name.as_str() == host) else {
        return Err(EditError::NoHost {
            path: shown,
            host: host.into(),
        });
    };
    if h.roles == roles {
        return Ok(());
    }
    h.roles = roles.to_vec();
    expected.hosts.retain(|h| !h.roles.is_empty());
    let edited = set_roles(&text, &shown, host, roles)?;
    let check = |e: &str| EditError::Unsupported {
        path: shown.clone(),
        host: host.into(),
        why: if e.is_empty() {
            "the edit changed more than the roles"
        } else {
            "the edited file does not load"
        },
        roles: roles
            .iter()
            .map(|r| r.as_str())
            .collect::<Vec<_>>()
            .join(", "),
    };
    match Inventory::from_yaml(&edited, &shown) {
        Ok((got, _)) if got == expected => {}
        Ok(_) => return Err(check("")),
        Err(e) => return Err(check(&e.to_string())),
    }
    replace_keeping_mode(path, &edited)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BLOCK: &str = "\
# the lab
cluster: lab
hosts:
  - name: etcd1
    address: 10.0.0.11/24
    roles: [etcd]   # first
  - name: etcd2
    address: 10.0.0.12/24
    roles:
      - etcd
      - master
  # etcd3 is new
  - name: \"etcd3\"
    roles: [etcd]
    address: 10.0.0.13/24
etcd:
  data_dir: /var/lib/etcd
";

    #[test]
    fn flow_roles_in_a_block_entry_keep_the_comment() {
        let out = set_roles(BLOCK, "f", "etcd1", &[Role::Etcd, Role::Master]).unwrap();
        assert!(
            out.contains("    roles: [etcd, master]   # first\n"),
            "{out}"
        );
        assert_eq!(out.lines().count(), BLOCK.lines().count());
    }

    #[test]
    fn block_roles_are_replaced_in_their_indent() {
        let out = set_roles(BLOCK, "f", "etcd2", &[Role::Master]).unwrap();
        assert!(
            out.contains("    roles:\n      - master\n  # etcd3"),
            "{out}"
        );
    }

    #[test]
    fn no_roles_left_removes_the_entry_but_not_the_next_comment() {
        let out = set_roles(BLOCK, "f", "etcd2", &[]).unwrap();
        assert!(
            !out.contains("etcd2") && !out.contains("10.0.0.12"),
            "{out}"
        );
        assert!(
            out.contains("  # etcd3 is new\n  - name: \"etcd3\""),
            "{out}"
        );
        let out = set_roles(BLOCK, "f", "etcd3", &[]).unwrap();
        assert!(
            out.ends_with("      - master\n  # etcd3 is new\netcd:\n  data_dir: /var/lib/etcd\n"),
            "{out}"
        );
    }

    #[test]
    fn quoted_names_and_roles_after_other_keys() {
        let out = set_roles(BLOCK, "f", "etcd3", &[Role::Worker]).unwrap();
        assert!(
            out.contains("  - name: \"etcd3\"\n    roles: [worker]\n"),
            "{out}"
        );
    }

    #[test]
    fn one_line_flow_mappings() {
        let text = "hosts:\n  - {name: etcd1, address: 1.2.3.4, roles: [etcd]}\n  - {name: etcd10, address: 1.2.3.5, roles: [etcd]}\n";
        let out = set_roles(text, "f", "etcd1", &[Role::Etcd, Role::Master]).unwrap();
        assert_eq!(out, "hosts:\n  - {name: etcd1, address: 1.2.3.4, roles: [etcd, master]}\n  - {name: etcd10, address: 1.2.3.5, roles: [etcd]}\n");
        let out = set_roles(text, "f", "etcd10", &[]).unwrap();
        assert_eq!(
            out,
            "hosts:\n  - {name: etcd1, address: 1.2.3.4, roles: [etcd]}\n"
        );
    }

    #[test]
    fn a_missing_host_or_an_odd_form_is_an_error_naming_both() {
        let e = set_roles(BLOCK, "cluster.yaml", "etcd9", &[Role::Etcd]).unwrap_err();
        assert!(e.to_string().contains("cluster.yaml") && e.to_string().contains("etcd9"));
        let odd = "hosts:\n  - name: a\n    roles: [etcd,\n      master]\n";
        let e = set_roles(odd, "cluster.yaml", "a", &[Role::Etcd]).unwrap_err();
        assert!(matches!(e, EditError::Unsupported { .. }), "{e}");
    }

    fn valid() -> String {
        let mut s = String::from("cluster: lab\nhosts:\n");
        for i in 1..=4 {
            s.push_str(&format!(
                "  # host {i}\n  - name: etcd{i}\n    address: 10.0.0.1{i}/24\n    roles: [etcd]\n"
            ));
        }
        s.push_str("allow_even_etcd: true\nkubernetes:\n  enabled: false\n");
        s
    }

    #[test]
    fn rewrite_checks_by_loading_and_keeps_the_rest() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.yaml");
        std::fs::write(&path, valid()).unwrap();
        rewrite_roles(&path, "etcd4", &[]).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let (inv, _) = Inventory::load(&path).unwrap();
        assert_eq!(inv.etcd_hosts().len(), 3);
        assert!(
            text.contains("# host 3") && text.contains("# host 4"),
            "{text}"
        );
        // Unchanged roles: the file is not touched at all.
        let before = std::fs::metadata(&path).unwrap().modified().unwrap();
        rewrite_roles(&path, "etcd1", &[Role::Etcd]).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().modified().unwrap(),
            before
        );
        // An unknown host: refused, the file unchanged.
        let e = rewrite_roles(&path, "nobody", &[]).unwrap_err();
        assert!(e.to_string().contains("nobody"), "{e}");
        assert_eq!(std::fs::read_to_string(&path).unwrap(), text);
    }
}

/// `binary:` as the inventory writes it, indented by `pad`.
fn binary_lines(binary: &super::EtcdBinary, pad: &str) -> Vec<String> {
    let quote = |s: &str| serde_json::to_string(s).expect("a string serializes");
    match binary {
        super::EtcdBinary::Path(p) => vec![
            format!("{pad}binary:"),
            format!("{pad}{pad}path: {}", quote(&p.display().to_string())),
        ],
        super::EtcdBinary::Upload { file, sha256 } => vec![
            format!("{pad}binary:"),
            format!("{pad}{pad}upload:"),
            format!(
                "{pad}{pad}{pad}file: {}",
                quote(&file.display().to_string())
            ),
            format!("{pad}{pad}{pad}sha256: {}", sha256.as_str()),
        ],
    }
}

/// Sets `etcd.version` and `etcd.binary` in the inventory's text, keeping everything else: the
/// two keys' old lines (and a key's nested lines) are replaced at the top of the `etcd:` block,
/// which is created at the end when there is none. A flow-style `etcd: {...}` is not edited.
pub fn set_etcd_release(
    text: &str,
    path: &str,
    version: &str,
    binary: &super::EtcdBinary,
) -> Result<String, EditError> {
    let unsupported = |why| EditError::UnsupportedEtcd {
        path: path.to_string(),
        why,
        version: version.to_string(),
    };
    let lines: Vec<&str> = text.lines().collect();
    let join = |lines: Vec<String>| {
        let mut s = lines.join("\n");
        if text.ends_with('\n') {
            s.push('\n');
        }
        s
    };
    let top = |l: &str| !is_blank_or_comment(l) && indent(l) == 0;
    let Some(start) = lines.iter().position(|l| top(l) && l.starts_with("etcd:")) else {
        let mut out: Vec<String> = lines.iter().map(|l| l.to_string()).collect();
        out.push("etcd:".into());
        out.push(format!("  version: \"{version}\""));
        out.extend(binary_lines(binary, "  "));
        return Ok(join(out));
    };
    let rest = lines[start]["etcd:".len()..].trim();
    if !rest.is_empty() && !rest.starts_with('#') {
        return Err(unsupported("`etcd:` is written in flow style"));
    }
    let end = (start + 1..lines.len())
        .find(|&i| top(lines[i]))
        .unwrap_or(lines.len());
    let child = (start + 1..end)
        .find(|&i| !is_blank_or_comment(lines[i]))
        .map(|i| indent(lines[i]))
        .unwrap_or(2);
    let pad = " ".repeat(child);
    let mut kept: Vec<String> = Vec::new();
    let mut skipping = false;
    for line in &lines[start + 1..end] {
        if !is_blank_or_comment(line) && indent(line) == child {
            let key = line.trim_start();
            skipping = key.starts_with("version:") || key.starts_with("binary:");
            if skipping {
                continue;
            }
        } else if skipping && (is_blank_or_comment(line) || indent(line) > child) {
            if is_blank_or_comment(line) {
                skipping = false;
                kept.push(line.to_string());
            }
            continue;
        } else if indent(line) < child && !is_blank_or_comment(line) {
            return Err(unsupported("the `etcd:` block's indentation is irregular"));
        }
        kept.push(line.to_string());
    }
    let mut out: Vec<String> = lines[..=start].iter().map(|l| l.to_string()).collect();
    out.push(format!("{pad}version: \"{version}\""));
    out.extend(binary_lines(binary, &pad));
    out.extend(kept);
    out.extend(lines[end..].iter().map(|l| l.to_string()));
    Ok(join(out))
}

/// Records the etcd version and binary a cluster runs in the inventory file at `path`, checked
/// by parsing the result (nothing else may change); atomic, or not at all.
pub fn rewrite_etcd_release(
    path: &Path,
    version: &str,
    binary: &super::EtcdBinary,
) -> Result<(), EditError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| InventoryError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let (mut expected, _) = Inventory::from_yaml(&text, &shown)?;
    let parsed_version: super::Version =
        version.parse().map_err(|_| EditError::UnsupportedEtcd {
            path: shown.clone(),
            why: "the version does not parse",
            version: version.to_string(),
        })?;
    expected.etcd.version = Some(parsed_version);
    expected.etcd.binary = binary.clone();
    let edited = set_etcd_release(&text, &shown, version, binary)?;
    match Inventory::from_yaml(&edited, &shown) {
        Ok((got, _)) if got == expected => {}
        _ => {
            return Err(EditError::UnsupportedEtcd {
                path: shown,
                why: "the edit did not give the expected inventory",
                version: version.to_string(),
            })
        }
    }
    replace_keeping_mode(path, &edited)
}

/// Replaces the inventory file at `path` with `edited`, atomically, keeping its mode.
fn replace_keeping_mode(path: &Path, edited: &str) -> Result<(), EditError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o644);
    crate::fsio::write_atomic(path, edited.as_bytes(), mode).map_err(|source| EditError::Write {
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod etcd_release_tests {
    use super::*;
    use crate::inventory::{EtcdBinary, Sha256Hex};

    const HOSTS: &str =
        "cluster: c\nkubernetes: {enabled: false}\nhosts:\n  - {name: etcd1, address: 10.0.0.11, roles: [etcd]}\n  - {name: etcd2, address: 10.0.0.12, roles: [etcd]}\n  - {name: etcd3, address: 10.0.0.13, roles: [etcd]}\n";

    fn upload() -> EtcdBinary {
        EtcdBinary::Upload {
            file: "/srv/etcd-3.5.16/etcd".into(),
            sha256: Sha256Hex::try_from("ab".repeat(32).as_str()).unwrap(),
        }
    }

    #[test]
    fn replaces_version_and_binary_and_keeps_the_rest() {
        let text = format!(
            "{HOSTS}etcd:\n  # the data\n  data_dir: /var/lib/etcd\n  binary:\n    path: /usr/bin/etcd\n  version: \"3.4\"\n  extra_flags: [--quota-backend-bytes=8589934592]\npki: {{lifetime: 8760h}}\n"
        );
        let out = set_etcd_release(&text, "inv.yaml", "3.5.16", &upload()).unwrap();
        let (inv, _) = Inventory::from_yaml(&out, "inv.yaml").unwrap();
        assert_eq!(inv.etcd.version.unwrap().to_string(), "3.5.16");
        assert_eq!(inv.etcd.binary, upload());
        assert!(
            out.contains("  # the data\n  data_dir: /var/lib/etcd\n"),
            "{out}"
        );
        assert!(
            out.contains("extra_flags: [--quota-backend-bytes=8589934592]"),
            "{out}"
        );
        assert!(out.ends_with("pki: {lifetime: 8760h}\n"), "{out}");
        assert!(!out.contains("/usr/bin/etcd"), "{out}");
        // Again: the same text.
        assert_eq!(
            set_etcd_release(&out, "inv.yaml", "3.5.16", &upload()).unwrap(),
            out
        );
    }

    #[test]
    fn adds_the_block_when_there_is_none_and_refuses_flow_style() {
        let out = set_etcd_release(
            HOSTS,
            "inv.yaml",
            "3.4.23",
            &EtcdBinary::Path("/usr/bin/etcd".into()),
        )
        .unwrap();
        let (inv, _) = Inventory::from_yaml(&out, "inv.yaml").unwrap();
        assert_eq!(inv.etcd.version.unwrap().to_string(), "3.4.23");
        let flow = format!("{HOSTS}etcd: {{data_dir: /var/lib/etcd}}\n");
        let e = set_etcd_release(&flow, "inv.yaml", "3.5.16", &upload()).unwrap_err();
        assert!(e.to_string().contains("flow style"), "{e}");
        assert!(e.to_string().contains("version: \"3.5.16\""), "{e}");
    }
}
