//! The spec's seccomp profile as BPF, with seccompiler (pure Rust, so the
//! static agent links no libseccomp).
//!
//! seccompiler gives a filter one action for all its rules, while an OCI
//! profile gives each syscall group its own. So a profile becomes several
//! filters the kernel runs together, taking the most restrictive verdict:
//! one per non-allow action (listed syscalls -> that action, others ->
//! allow) and one for the default (listed syscalls -> allow, others -> the
//! default action). Where two groups match the same call the stricter
//! action wins rather than the first listed: the difference only shows for
//! profiles that list one call under conflicting actions.
//!
//! Syscall names go through seccompiler's JSON frontend, the only way to
//! reach its syscall tables; names it does not know (newer than its table)
//! are skipped with a warning, as libseccomp-based runtimes do.

use std::collections::BTreeMap;

use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompOperator};
use seccompiler::{BpfProgram, TargetArch};
use serde_json::{json, Value};

/// Errors translating a seccomp profile.
#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("seccomp action {0:?} is not supported")]
    UnsupportedAction(LinuxSeccompAction),
    #[error("compile seccomp profile: {0}")]
    Compile(String),
    #[error("install seccomp filter: {0}")]
    Install(String),
}

const EPERM: u32 = 1;

fn action(a: LinuxSeccompAction, errno: Option<u32>) -> Result<Value, SeccompError> {
    Ok(match a {
        LinuxSeccompAction::ScmpActAllow => json!("allow"),
        LinuxSeccompAction::ScmpActErrno => json!({ "errno": errno.unwrap_or(EPERM) }),
        LinuxSeccompAction::ScmpActKill | LinuxSeccompAction::ScmpActKillThread => {
            json!("kill_thread")
        }
        LinuxSeccompAction::ScmpActKillProcess => json!("kill_process"),
        LinuxSeccompAction::ScmpActTrap => json!("trap"),
        LinuxSeccompAction::ScmpActLog => json!("log"),
        LinuxSeccompAction::ScmpActTrace => json!({ "trace": errno.unwrap_or(0) }),
        other => return Err(SeccompError::UnsupportedAction(other)),
    })
}

fn op(o: LinuxSeccompOperator, value_two: Option<u64>) -> Value {
    match o {
        LinuxSeccompOperator::ScmpCmpNe => json!("ne"),
        LinuxSeccompOperator::ScmpCmpLt => json!("lt"),
        LinuxSeccompOperator::ScmpCmpLe => json!("le"),
        LinuxSeccompOperator::ScmpCmpEq => json!("eq"),
        LinuxSeccompOperator::ScmpCmpGe => json!("ge"),
        LinuxSeccompOperator::ScmpCmpGt => json!("gt"),
        LinuxSeccompOperator::ScmpCmpMaskedEq => json!({ "masked_eq": value_two.unwrap_or(0) }),
    }
}

/// Per syscall name: None = unconditional, else the alternative condition
/// lists (a rule matches when all its conditions hold).
type Rules = BTreeMap<String, Option<Vec<Value>>>;

fn add_rule(rules: &mut Rules, name: &str, conds: Option<Value>) {
    let entry = rules
        .entry(name.to_string())
        .or_insert_with(|| Some(Vec::new()));
    match (entry.as_mut(), conds) {
        (Some(list), Some(c)) => list.push(c),
        // An unconditional rule matches everything the others would.
        (_, None) => *entry = None,
        (None, Some(_)) => {}
    }
}

fn filter_json(rules: &Rules, skip: &[String], mismatch: &Value, matched: &Value) -> Value {
    let mut filter = Vec::new();
    for (name, conds) in rules {
        if skip.contains(name) {
            continue;
        }
        match conds {
            None => filter.push(json!({ "syscall": name })),
            Some(list) => {
                for c in list {
                    filter.push(json!({ "syscall": name, "args": c }));
                }
            }
        }
    }
    json!({ "mismatch_action": mismatch, "match_action": matched, "filter": filter })
}

/// The filters for `profile`, in the order to install them.
pub fn compile(profile: &LinuxSeccomp) -> Result<Vec<BpfProgram>, SeccompError> {
    let default = action(profile.default_action(), profile.default_errno_ret())?;
    let allow = json!("allow");
    // Group rules by action (its JSON as the key keeps errno variants apart).
    let mut groups: BTreeMap<String, (Value, Rules)> = BTreeMap::new();
    let mut all = Rules::new();
    for sc in profile.syscalls().iter().flatten() {
        let act = action(sc.action(), sc.errno_ret())?;
        let conds = sc.args().as_ref().filter(|a| !a.is_empty()).map(|args| {
            Value::Array(
                args.iter()
                    .map(|a| {
                        let masked = a.op() == LinuxSeccompOperator::ScmpCmpMaskedEq;
                        json!({
                            "index": a.index(),
                            "type": "qword",
                            "op": op(a.op(), Some(a.value())),
                            "val": if masked { a.value_two().unwrap_or(0) } else { a.value() },
                        })
                    })
                    .collect(),
            )
        });
        let group = groups
            .entry(act.to_string())
            .or_insert_with(|| (act.clone(), Rules::new()));
        for name in sc.names() {
            add_rule(&mut group.1, name, conds.clone());
            add_rule(&mut all, name, conds.clone());
        }
    }
    let mut skip: Vec<String> = Vec::new();
    loop {
        let mut doc = serde_json::Map::new();
        let mut order = Vec::new();
        for (i, (act, rules)) in groups.values().enumerate() {
            if *act != allow {
                let name = format!("g{i:03}");
                doc.insert(name.clone(), filter_json(rules, &skip, &allow, act));
                order.push(name);
            }
        }
        if default != allow {
            doc.insert(
                "zdefault".into(),
                filter_json(&all, &skip, &default, &allow),
            );
            order.push("zdefault".into());
        }
        let text = Value::Object(doc).to_string();
        match seccompiler::compile_from_json(text.as_bytes(), TargetArch::x86_64) {
            Ok(mut map) => return Ok(order.iter().filter_map(|n| map.remove(n)).collect()),
            Err(e) => {
                let msg = e.to_string();
                // "Invalid syscall name: NAME for given arch: ..."
                let unknown = msg
                    .split("Invalid syscall name: ")
                    .nth(1)
                    .and_then(|r| r.split(" for given arch").next())
                    .map(str::to_string);
                match unknown {
                    Some(name) if !skip.contains(&name) => {
                        tracing::warn!("seccomp: skipping unknown syscall {name}");
                        skip.push(name);
                    }
                    _ => return Err(SeccompError::Compile(msg)),
                }
            }
        }
    }
}

/// Installs the filters on the calling thread (in the container's child
/// process, just before exec).
pub fn install(filters: &[BpfProgram]) -> Result<(), SeccompError> {
    for f in filters {
        seccompiler::apply_filter(f).map_err(|e| SeccompError::Install(e.to_string()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The shim advertises these to containerd as supported.
    #[test]
    fn every_advertised_action_and_operator_compiles() {
        use skiff_agent_protocol::support::{SECCOMP_ACTIONS, SECCOMP_OPERATORS};
        for name in SECCOMP_ACTIONS {
            let a: LinuxSeccompAction = serde_json::from_value(json!(name)).unwrap();
            assert!(action(a, None).is_ok(), "{name}");
        }
        for name in SECCOMP_OPERATORS {
            let o: LinuxSeccompOperator = serde_json::from_value(json!(name)).unwrap();
            op(o, None);
        }
    }

    fn profile(json: &str) -> LinuxSeccomp {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn allowlist_profile_compiles_to_one_default_filter() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ERRNO","syscalls":[
                {"names":["read","write","exit_group","not_a_syscall_xyz"],"action":"SCMP_ACT_ALLOW"},
                {"names":["personality"],"action":"SCMP_ACT_ALLOW",
                 "args":[{"index":0,"value":0,"op":"SCMP_CMP_EQ"}]}]}"#,
        );
        let f = compile(&p).unwrap();
        assert_eq!(f.len(), 1);
        assert!(!f[0].is_empty());
    }

    #[test]
    fn denylist_profile_has_one_filter_per_action() {
        let p = profile(
            r#"{"defaultAction":"SCMP_ACT_ALLOW","syscalls":[
                {"names":["mkdir"],"action":"SCMP_ACT_ERRNO","errnoRet":13},
                {"names":["reboot"],"action":"SCMP_ACT_KILL_PROCESS"},
                {"names":["chmod"],"action":"SCMP_ACT_ERRNO",
                 "args":[{"index":1,"value":2048,"valueTwo":2048,"op":"SCMP_CMP_MASKED_EQ"}]}]}"#,
        );
        // ERRNO(13), ERRNO(EPERM) and KILL_PROCESS: three groups.
        assert_eq!(compile(&p).unwrap().len(), 3);
    }

    #[test]
    fn unconditional_rule_wins_over_conditional_ones() {
        let mut r = Rules::new();
        add_rule(&mut r, "x", Some(json!([1])));
        add_rule(&mut r, "x", None);
        add_rule(&mut r, "x", Some(json!([2])));
        assert_eq!(r["x"], None);
    }

    #[test]
    fn notify_is_refused() {
        let p = profile(r#"{"defaultAction":"SCMP_ACT_NOTIFY"}"#);
        assert!(matches!(
            compile(&p),
            Err(SeccompError::UnsupportedAction(_))
        ));
    }
}
