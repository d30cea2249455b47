//! The seccomp mode a VMM's threads run in (`hypervisor.seccomp`, vm-run
//! `--seccomp`).

use std::fmt;
use std::str::FromStr;

/// What a thread's filter does with a syscall it does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SeccompMode {
    /// The call traps; the thread is stopped and the VM ends, reported.
    #[default]
    Enforce,
    /// The call proceeds and the kernel logs it (audit type 1326): for
    /// finding what a thread needs.
    Log,
    /// No filter.
    Off,
}

/// An unknown mode name.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("unknown seccomp mode {0:?}: use \"enforce\", \"log\" or \"off\"")]
pub struct UnknownMode(pub String);

impl FromStr for SeccompMode {
    type Err = UnknownMode;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "enforce" => Ok(Self::Enforce),
            "log" => Ok(Self::Log),
            "off" => Ok(Self::Off),
            other => Err(UnknownMode(other.to_string())),
        }
    }
}

impl fmt::Display for SeccompMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Enforce => "enforce",
            Self::Log => "log",
            Self::Off => "off",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_ones_are_named() {
        for m in [SeccompMode::Enforce, SeccompMode::Log, SeccompMode::Off] {
            assert_eq!(m.to_string().parse::<SeccompMode>(), Ok(m));
        }
        assert_eq!(SeccompMode::default(), SeccompMode::Enforce);
        let e = "strict".parse::<SeccompMode>().unwrap_err();
        assert!(e.to_string().contains("\"strict\""), "{e}");
    }
}
