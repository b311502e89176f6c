//! `/etc/hosts`: one line per inventory host inside a block that haop owns.
//!
//! Replaces the seed's "Configure /etc/hosts" step (`vim /etc/hosts` on every etcd host, with
//! only the etcd hosts listed). haop lists every host of the inventory (`ADDRESS [FQDN] NAME`,
//! the canonical name first as hosts(5) wants) between `# BEGIN haop CLUSTER` and
//! `# END haop CLUSTER`, and [`merge_hosts_block`] replaces that block in place or appends it,
//! leaving every other line of the file byte for byte as it was. Merging is idempotent, so a
//! converged host shows no diff in `haop plan`.

use super::RenderedFile;
use crate::inventory::Inventory;

/// The file the block lives in.
pub const HOSTS_PATH: &str = "/etc/hosts";
/// The mode of `/etc/hosts` when haop creates it (an existing file keeps its own).
pub const HOSTS_MODE: u32 = 0o644;

/// The first line of the block of `cluster`.
pub fn begin_marker(cluster: &str) -> String {
    format!("# BEGIN haop {cluster}")
}

/// The last line of the block of `cluster`.
pub fn end_marker(cluster: &str) -> String {
    format!("# END haop {cluster}")
}

/// haop's block for every host of `inv`, in file order, newline-terminated.
pub fn hosts_block(inv: &Inventory) -> String {
    let cluster = inv.cluster.as_str();
    let mut out = begin_marker(cluster);
    out.push('\n');
    for h in &inv.hosts {
        out.push_str(&h.address.to_string());
        if let Some(f) = &h.fqdn {
            out.push(' ');
            out.push_str(f.as_str());
        }
        out.push(' ');
        out.push_str(h.name.as_str());
        out.push('\n');
    }
    out.push_str(&end_marker(cluster));
    out.push('\n');
    out
}

/// Replaces the block in `existing` that has `block`'s first and last lines as markers, or
/// appends `block` when there is none. Every other line is kept as it is. A BEGIN marker
/// without an END after it is an ordinary line (nothing below it is ever dropped); a block
/// that appears twice is kept once, where it first was. Idempotent:
/// `merge(merge(x, b), b) == merge(x, b)`.
pub fn merge_hosts_block(existing: &str, block: &str) -> String {
    // Removing a block can pair a stray BEGIN above it with a stray END below it into a new
    // block (nested markers): merge until nothing changes. Each pass removes a block or stops.
    let mut out = merge_once(existing, block);
    for _ in 0..existing.lines().count() {
        let next = merge_once(&out, block);
        if next == out {
            break;
        }
        out = next;
    }
    out
}

fn merge_once(existing: &str, block: &str) -> String {
    let mut block = block.to_string();
    if !block.is_empty() && !block.ends_with('\n') {
        block.push('\n');
    }
    let mut marker_lines = block.lines();
    let begin = marker_lines.next().unwrap_or("").trim_end().to_string();
    let end = marker_lines
        .next_back()
        .unwrap_or("")
        .trim_end()
        .to_string();
    if begin.is_empty() || end.is_empty() {
        return existing.to_string();
    }

    let lines: Vec<&str> = existing.split_inclusive('\n').collect();
    // Complete blocks: each END paired with the nearest BEGIN above it.
    let mut spans = Vec::new();
    let mut open = None;
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_end();
        if t == begin {
            open = Some(i);
        } else if t == end {
            if let Some(start) = open.take() {
                spans.push((start, i));
            }
        }
    }

    let mut out = String::with_capacity(existing.len() + block.len());
    if spans.is_empty() {
        out.push_str(existing);
        if !out.is_empty() && !out.ends_with('\n') {
            out.push('\n');
        }
        out.push_str(&block);
        return out;
    }
    let mut spans = spans.into_iter().peekable();
    let mut first = true;
    let mut i = 0;
    while i < lines.len() {
        match spans.peek() {
            Some(&(start, stop)) if start == i => {
                if first {
                    out.push_str(&block);
                    first = false;
                }
                spans.next();
                i = stop + 1;
            }
            _ => {
                out.push_str(lines[i]);
                i += 1;
            }
        }
    }
    out
}

/// `/etc/hosts` as it should be, given what it is now (`existing`, empty when absent).
pub fn hosts_file(inv: &Inventory, existing: &str) -> RenderedFile {
    RenderedFile::new(
        HOSTS_PATH,
        merge_hosts_block(existing, &hosts_block(inv)),
        HOSTS_MODE,
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::{Host, Role};

    fn inv() -> Inventory {
        let mut e1 = Host::new(
            "etcd1".parse().unwrap(),
            "10.0.0.1".parse().unwrap(),
            vec![Role::Etcd],
        );
        e1.fqdn = Some("etcd1.example.local".parse().unwrap());
        let m1 = Host::new(
            "master1".parse().unwrap(),
            "fd00::5".parse().unwrap(),
            vec![Role::Master],
        );
        Inventory::new("prod".parse().unwrap(), vec![e1, m1])
    }

    const BLOCK: &str = "# BEGIN haop prod\n\
                         10.0.0.1 etcd1.example.local etcd1\n\
                         fd00::5 master1\n\
                         # END haop prod\n";

    #[test]
    fn block_lists_every_host_canonical_name_first() {
        assert_eq!(hosts_block(&inv()), BLOCK);
    }

    #[test]
    fn appends_then_replaces_in_place_and_is_idempotent() {
        let base = "127.0.0.1 localhost\n::1 localhost ip6-localhost\n";
        let once = merge_hosts_block(base, BLOCK);
        assert_eq!(once, format!("{base}{BLOCK}"));
        assert_eq!(merge_hosts_block(&once, BLOCK), once);

        let with_tail = format!("{once}# mine\n10.9.9.9 other\n");
        let newer = "# BEGIN haop prod\n10.0.0.2 etcd2\n# END haop prod\n";
        assert_eq!(
            merge_hosts_block(&with_tail, newer),
            format!("{base}{newer}# mine\n10.9.9.9 other\n")
        );
    }

    #[test]
    fn keeps_other_clusters_and_files_without_final_newline() {
        let other = "# BEGIN haop dev\n10.1.0.1 dev1\n# END haop dev\n";
        let merged = merge_hosts_block(other, BLOCK);
        assert_eq!(merged, format!("{other}{BLOCK}"));
        assert_eq!(
            merge_hosts_block("127.0.0.1 localhost", BLOCK),
            format!("127.0.0.1 localhost\n{BLOCK}")
        );
        assert_eq!(merge_hosts_block("", BLOCK), BLOCK);
    }

    #[test]
    fn dangling_begin_drops_nothing_and_duplicates_collapse() {
        let dangling = "# BEGIN haop prod\n10.5.5.5 keep-me\n";
        let once = merge_hosts_block(dangling, BLOCK);
        assert_eq!(once, format!("{dangling}{BLOCK}"));
        assert_eq!(merge_hosts_block(&once, BLOCK), once);

        let twice = format!("a\n{BLOCK}b\n{BLOCK}c\n");
        assert_eq!(
            merge_hosts_block(&twice, BLOCK),
            format!("a\n{BLOCK}b\nc\n")
        );
    }

    #[test]
    fn hosts_file_has_path_and_mode() {
        let f = hosts_file(&inv(), "127.0.0.1 localhost\n");
        assert_eq!(f.path, "/etc/hosts");
        assert_eq!(f.mode, 0o644);
        assert!(f.content.ends_with(BLOCK));
    }
}
