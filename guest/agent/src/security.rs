//! Capabilities and resource limits: translated from the spec in the
//! agent before fork (so errors reach the caller as messages), applied in
//! the child just before exec.

use caps::{CapSet, Capability, CapsHashSet};
use oci_spec::runtime::{LinuxCapabilities, PosixRlimit, PosixRlimitType};

/// Errors translating or applying capabilities and limits.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error("unknown capability {0}")]
    UnknownCapability(String),
    #[error("rlimit {0} is not supported on Linux")]
    UnsupportedRlimit(String),
    #[error("set {set:?} capabilities: {source}")]
    Caps {
        set: CapSet,
        source: caps::errors::CapsError,
    },
    #[error("setrlimit {resource}: {source}")]
    Rlimit {
        resource: String,
        source: nix::Error,
    },
}

/// The five capability sets of a process.
#[derive(Debug, Clone, Default)]
pub struct CapSets {
    pub bounding: CapsHashSet,
    pub effective: CapsHashSet,
    pub permitted: CapsHashSet,
    pub inheritable: CapsHashSet,
    pub ambient: CapsHashSet,
}

fn convert(set: &Option<oci_spec::runtime::Capabilities>) -> Result<CapsHashSet, SecurityError> {
    let mut out = CapsHashSet::new();
    for c in set.iter().flatten() {
        let name = format!("CAP_{c}");
        let cap: Capability = name
            .parse()
            .map_err(|_| SecurityError::UnknownCapability(name.clone()))?;
        out.insert(cap);
    }
    Ok(out)
}

impl CapSets {
    pub fn from_spec(c: &LinuxCapabilities) -> Result<CapSets, SecurityError> {
        Ok(CapSets {
            bounding: convert(c.bounding())?,
            effective: convert(c.effective())?,
            permitted: convert(c.permitted())?,
            inheritable: convert(c.inheritable())?,
            ambient: convert(c.ambient())?,
        })
    }

    /// Drops from the bounding set what the spec leaves out. Done before
    /// changing uid: it needs CAP_SETPCAP.
    pub fn apply_bounding(&self) -> Result<(), SecurityError> {
        for cap in caps::all() {
            if !self.bounding.contains(&cap)
                && caps::has_cap(None, CapSet::Bounding, cap).unwrap_or(false)
            {
                caps::drop(None, CapSet::Bounding, cap).map_err(|source| SecurityError::Caps {
                    set: CapSet::Bounding,
                    source,
                })?;
            }
        }
        Ok(())
    }

    /// Sets the other sets; after setuid with PR_SET_KEEPCAPS. Effective
    /// first: capset(2) refuses a permitted set smaller than the current
    /// effective one.
    pub fn apply(&self) -> Result<(), SecurityError> {
        for (set, caps) in [
            (CapSet::Effective, &self.effective),
            (CapSet::Permitted, &self.permitted),
            (CapSet::Inheritable, &self.inheritable),
            (CapSet::Ambient, &self.ambient),
        ] {
            caps::set(None, set, caps).map_err(|source| SecurityError::Caps { set, source })?;
        }
        Ok(())
    }
}

/// One limit ready for setrlimit(2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rlimit {
    pub name: String,
    pub resource: nix::sys::resource::Resource,
    pub soft: u64,
    pub hard: u64,
}

pub fn rlimits_from_spec(limits: &[PosixRlimit]) -> Result<Vec<Rlimit>, SecurityError> {
    use nix::sys::resource::Resource as R;
    limits
        .iter()
        .map(|l| {
            let resource = match l.typ() {
                PosixRlimitType::RlimitCpu => R::RLIMIT_CPU,
                PosixRlimitType::RlimitFsize => R::RLIMIT_FSIZE,
                PosixRlimitType::RlimitData => R::RLIMIT_DATA,
                PosixRlimitType::RlimitStack => R::RLIMIT_STACK,
                PosixRlimitType::RlimitCore => R::RLIMIT_CORE,
                PosixRlimitType::RlimitRss => R::RLIMIT_RSS,
                PosixRlimitType::RlimitNproc => R::RLIMIT_NPROC,
                PosixRlimitType::RlimitNofile => R::RLIMIT_NOFILE,
                PosixRlimitType::RlimitMemlock => R::RLIMIT_MEMLOCK,
                PosixRlimitType::RlimitAs => R::RLIMIT_AS,
                PosixRlimitType::RlimitLocks => R::RLIMIT_LOCKS,
                PosixRlimitType::RlimitSigpending => R::RLIMIT_SIGPENDING,
                PosixRlimitType::RlimitMsgqueue => R::RLIMIT_MSGQUEUE,
                PosixRlimitType::RlimitNice => R::RLIMIT_NICE,
                PosixRlimitType::RlimitRtprio => R::RLIMIT_RTPRIO,
                PosixRlimitType::RlimitRttime => R::RLIMIT_RTTIME,
                #[allow(unreachable_patterns)]
                other => return Err(SecurityError::UnsupportedRlimit(other.to_string())),
            };
            Ok(Rlimit {
                name: l.typ().to_string(),
                resource,
                soft: l.soft(),
                hard: l.hard(),
            })
        })
        .collect()
}

pub fn apply_rlimits(limits: &[Rlimit]) -> Result<(), SecurityError> {
    for l in limits {
        nix::sys::resource::setrlimit(l.resource, l.soft, l.hard).map_err(|source| {
            SecurityError::Rlimit {
                resource: l.name.clone(),
                source,
            }
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spec_capabilities_convert() {
        let c: LinuxCapabilities = serde_json::from_str(
            r#"{"bounding":["CAP_CHOWN","CAP_KILL"],"effective":["CAP_KILL"]}"#,
        )
        .unwrap();
        let s = CapSets::from_spec(&c).unwrap();
        assert!(s.bounding.contains(&Capability::CAP_CHOWN));
        assert!(s.effective.contains(&Capability::CAP_KILL));
        assert!(s.ambient.is_empty());
    }

    #[test]
    fn spec_rlimits_convert() {
        let l: Vec<PosixRlimit> =
            serde_json::from_str(r#"[{"type":"RLIMIT_NOFILE","soft":1024,"hard":2048}]"#).unwrap();
        let r = rlimits_from_spec(&l).unwrap();
        assert_eq!(r[0].resource, nix::sys::resource::Resource::RLIMIT_NOFILE);
        assert_eq!((r[0].soft, r[0].hard), (1024, 2048));
    }
}
