//! Per-thread capabilities. Linux keeps the capability sets per thread, so
//! a VMM thread can give up what the shim's other threads still need. The
//! drop is for good: bounding set first (while CAP_SETPCAP is still
//! effective), then ambient, effective, permitted (never below effective)
//! and inheritable, and no-new-privs so an exec could not win them back.

use caps::{CapSet, Capability, CapsHashSet};

/// Errors dropping capabilities.
#[derive(Debug, thiserror::Error)]
pub enum CapsError {
    #[error("drop capabilities of this thread: {0}")]
    Caps(#[from] caps::errors::CapsError),
    #[error("set no-new-privs on this thread: {0}")]
    NoNewPrivs(std::io::Error),
}

/// Leaves the calling thread with exactly `keep` (effective and
/// permitted), an empty bounding set but for `keep`, and no-new-privs.
pub fn keep_only(keep: &[Capability]) -> Result<(), CapsError> {
    let keep: CapsHashSet = keep.iter().copied().collect();
    // Shrinking the bounding set takes CAP_SETPCAP; a thread without it
    // (vm-run as a user in the kvm group) has nothing to bound, and
    // no-new-privs below keeps it from gaining anything.
    if caps::has_cap(None, CapSet::Effective, Capability::CAP_SETPCAP)? {
        for cap in caps::read(None, CapSet::Bounding)? {
            if !keep.contains(&cap) {
                caps::drop(None, CapSet::Bounding, cap)?;
            }
        }
    }
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    let effective: CapsHashSet = caps::read(None, CapSet::Effective)?
        .intersection(&keep)
        .copied()
        .collect();
    caps::set(None, CapSet::Effective, &effective)?;
    caps::set(None, CapSet::Permitted, &effective)?;
    // SAFETY: prctl with integer arguments on the calling thread.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(CapsError::NoNewPrivs(std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_keeps_only_what_it_asks_for() {
        std::thread::spawn(|| {
            let had = caps::read(None, CapSet::Effective).unwrap();
            keep_only(&[Capability::CAP_CHOWN]).unwrap();
            let now = caps::read(None, CapSet::Effective).unwrap();
            let want: CapsHashSet = had
                .intersection(&[Capability::CAP_CHOWN].into_iter().collect())
                .copied()
                .collect();
            assert_eq!(now, want);
            assert_eq!(caps::read(None, CapSet::Permitted).unwrap(), want);
            assert!(caps::read(None, CapSet::Bounding)
                .unwrap()
                .iter()
                .all(|c| *c == Capability::CAP_CHOWN));
        })
        .join()
        .unwrap();
        // Other threads keep theirs.
        if caps::has_cap(None, CapSet::Effective, Capability::CAP_SYS_ADMIN).unwrap_or(false) {
            assert!(caps::has_cap(None, CapSet::Permitted, Capability::CAP_SYS_ADMIN).unwrap());
        }
    }
}
