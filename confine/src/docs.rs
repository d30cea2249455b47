//! Reads the syscall tables of `docs/seccomp.md`, so that the crates that
//! define thread policies can check in their tests that the document
//! lists exactly what their tables allow.
//!
//! A table starts after a line `<!-- syscalls: NAME -->`; its rows are
//! the lines that start with "| `syscall`", up to the first line that is
//! not a table line.

use std::collections::BTreeSet;

use crate::Allowed;

/// The syscall names of table `name` in `doc`; empty if there is none.
pub fn documented(doc: &str, name: &str) -> BTreeSet<String> {
    let marker = format!("<!-- syscalls: {name} -->");
    let mut lines = doc.lines().skip_while(|l| l.trim() != marker).skip(1);
    let mut names = BTreeSet::new();
    for line in lines.by_ref().skip_while(|l| l.trim().is_empty()) {
        let Some(row) = line.trim().strip_prefix('|') else {
            break;
        };
        let first = row.split('|').next().unwrap_or_default().trim();
        if let Some(name) = first.strip_prefix('`').and_then(|n| n.strip_suffix('`')) {
            names.insert(name.to_string());
        }
    }
    names
}

/// The names `allowed` lists.
pub fn names(allowed: &[Allowed]) -> BTreeSet<String> {
    allowed.iter().map(|a| a.name.to_string()).collect()
}

/// What the document says a thread with table `name` may call: the
/// common table and its own.
pub fn documented_thread(doc: &str, name: &str) -> BTreeSet<String> {
    let mut all = documented(doc, "common");
    all.extend(documented(doc, name));
    all
}

/// What a thread under `policy` may call: its table and the handler's
/// floor, which every filter adds.
pub fn allowed_by(policy: &crate::ThreadPolicy) -> BTreeSet<String> {
    let mut all = names(&policy.allowed);
    all.extend(names(&crate::filter::handler_floor()));
    all
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = include_str!("../../docs/seccomp.md");

    #[test]
    fn tables_are_read_up_to_their_end() {
        let doc = "x\n<!-- syscalls: t -->\n\n| Syscall | Why |\n|---|---|\n| `read` | a |\n| `write` | b |\n\n| `close` | not in t |\n";
        let got = documented(doc, "t");
        assert_eq!(got, ["read", "write"].map(String::from).into());
        assert!(documented(doc, "other").is_empty());
    }

    #[test]
    fn the_common_table_is_documented() {
        let mut code = names(&crate::common::common());
        code.extend(names(&crate::filter::handler_floor()));
        assert_eq!(documented(DOC, "common"), code);
    }
}
