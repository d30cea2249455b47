//! A thread's seccomp filter, from a table of the syscalls it may make.
//!
//! The tables name each syscall with its number (so reports and
//! docs/seccomp.md can name it too) and, where the arguments matter, the
//! argument values it is allowed with (an ioctl request, a socket family,
//! an fcntl command). Everything else gets the mode's action: a trap in
//! `enforce`, a kernel log line in `log`.

use std::collections::BTreeMap;

use seccompiler::{
    BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
    SeccompRule, TargetArch,
};

use crate::SeccompMode;

/// A condition on one argument, compared on its low 32 bits (ints, fds,
/// ioctl requests, flags: what the kernel itself reads as 32 bits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Argument `index` equals the value.
    Eq(u8, u32),
    /// Argument `index` masked with the first value equals the second.
    MaskedEq(u8, u32, u32),
}

/// One syscall a thread may make, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowed {
    pub nr: i64,
    pub name: &'static str,
    /// Allowed if all checks of any one entry hold; always if empty.
    pub any_of: Vec<Vec<Check>>,
}

impl Allowed {
    /// `name` with any arguments.
    pub fn always(nr: i64, name: &'static str) -> Self {
        Self {
            nr,
            name,
            any_of: Vec::new(),
        }
    }

    /// `name` only with arguments that pass one of `any_of`.
    pub fn when(nr: i64, name: &'static str, any_of: Vec<Vec<Check>>) -> Self {
        Self { nr, name, any_of }
    }
}

/// Syscalls every filter allows: what the SIGSYS handler itself calls
/// (a forbidden call inside the handler, with SIGSYS blocked, would make
/// the kernel kill the whole process).
pub fn handler_floor() -> Vec<Allowed> {
    vec![
        Allowed::always(libc::SYS_write, "write"),
        Allowed::always(libc::SYS_futex, "futex"),
        Allowed::always(libc::SYS_rt_sigreturn, "rt_sigreturn"),
    ]
}

/// Errors building or installing a filter.
#[derive(Debug, thiserror::Error)]
pub enum FilterError {
    #[error("syscall {0} is listed twice in one filter")]
    Duplicate(&'static str),
    #[error("syscall {name}: {err}")]
    Rule { name: &'static str, err: String },
    #[error("build the seccomp filter: {0}")]
    Build(String),
    #[error("this architecture ({0}) has no seccomp filters here")]
    Arch(&'static str),
    #[error("install the SIGSYS handler: {0}")]
    Handler(std::io::Error),
    #[error("install the seccomp filter: {0}")]
    Install(String),
}

fn condition(check: Check) -> Result<SeccompCondition, seccompiler::BackendError> {
    let (index, op, value) = match check {
        Check::Eq(i, v) => (i, SeccompCmpOp::Eq, v),
        Check::MaskedEq(i, mask, v) => (i, SeccompCmpOp::MaskedEq(mask.into()), v),
    };
    SeccompCondition::new(index, SeccompCmpArgLen::Dword, op, value.into())
}

/// The BPF program allowing `allowed` (plus [`handler_floor`]) in `mode`.
/// `Off` has no program: callers install nothing.
pub fn build(allowed: &[Allowed], mode: SeccompMode) -> Result<BpfProgram, FilterError> {
    let mismatch = match mode {
        SeccompMode::Enforce => SeccompAction::Trap,
        SeccompMode::Log => SeccompAction::Log,
        SeccompMode::Off => SeccompAction::Allow,
    };
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|_| FilterError::Arch(std::env::consts::ARCH))?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    let floor = handler_floor();
    for a in allowed {
        if rules.contains_key(&a.nr) {
            return Err(FilterError::Duplicate(a.name));
        }
        rules.insert(a.nr, rules_of(a)?);
    }
    for a in floor {
        // The floor allows these with any arguments, over a narrower entry.
        rules.insert(a.nr, Vec::new());
    }
    let filter = SeccompFilter::new(rules, mismatch, SeccompAction::Allow, arch)
        .map_err(|e| FilterError::Build(e.to_string()))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| FilterError::Build(e.to_string()))
}

/// A filter that answers the calls in `denied` (as their checks select
/// them) with `errno` and allows everything else: stacked on a thread's
/// main filter, the kernel takes the stricter answer, so a call both allow
/// and this one matches fails with `errno` instead of trapping.
pub fn build_deny(denied: &[Allowed], errno: u32) -> Result<BpfProgram, FilterError> {
    let arch = TargetArch::try_from(std::env::consts::ARCH)
        .map_err(|_| FilterError::Arch(std::env::consts::ARCH))?;
    let mut rules: BTreeMap<i64, Vec<SeccompRule>> = BTreeMap::new();
    for a in denied {
        rules.insert(a.nr, rules_of(a)?);
    }
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Allow,
        SeccompAction::Errno(errno),
        arch,
    )
    .map_err(|e| FilterError::Build(e.to_string()))?;
    filter
        .try_into()
        .map_err(|e: seccompiler::BackendError| FilterError::Build(e.to_string()))
}

fn rules_of(a: &Allowed) -> Result<Vec<SeccompRule>, FilterError> {
    a.any_of
        .iter()
        .map(|checks| {
            checks
                .iter()
                .map(|c| condition(*c))
                .collect::<Result<Vec<_>, _>>()
                .and_then(SeccompRule::new)
                .map_err(|e| FilterError::Rule {
                    name: a.name,
                    err: e.to_string(),
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn duplicates_are_refused_and_the_floor_is_added() {
        let twice = [
            Allowed::always(libc::SYS_read, "read"),
            Allowed::always(libc::SYS_read, "read"),
        ];
        assert!(matches!(
            build(&twice, SeccompMode::Enforce),
            Err(FilterError::Duplicate("read"))
        ));
        let one = build(
            &[Allowed::always(libc::SYS_read, "read")],
            SeccompMode::Enforce,
        )
        .unwrap();
        let none = build(&[], SeccompMode::Enforce).unwrap();
        assert!(one.len() > none.len());
        assert!(!none.is_empty(), "the handler floor is always there");
    }
}
