//! A Linux tap device (Documentation/networking/tuntap.rst).
//!
//! Our own few ioctls: vmm-sys-util has no tap, and Firecracker's and
//! Cloud Hypervisor's tap modules are not published as crates. The tap
//! runs with IFF_VNET_HDR and a 12-byte virtio_net_hdr_v1 so offloads can
//! be negotiated later without reopening it; today offloads are off, so
//! the header we send is all zeros and the one we receive carries nothing
//! the guest may see (see [`super::datapath`]).

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;

use super::{NetBackend, NetError, NET_HDR_LEN};

/// An open tap. A tap this opened rather than found is not persistent:
/// the kernel deletes it when this is dropped, so an error anywhere after
/// [`Tap::open`] leaves nothing behind.
#[derive(Debug)]
pub struct Tap {
    file: File,
    name: String,
}

impl Tap {
    /// Attaches to the tap called `name`, creating it when there is none.
    /// The fd is non-blocking.
    pub fn open(name: &str) -> Result<Self, NetError> {
        let bad_name = || NetError::TapName(name.to_string());
        if name.is_empty() || name.len() >= libc::IFNAMSIZ {
            return Err(bad_name());
        }
        let c_name = CString::new(name).map_err(|_| bad_name())?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open("/dev/net/tun")
            .map_err(NetError::OpenTun)?;

        // SAFETY: ifreq is plain data; all zeros is a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, &src) in ifr.ifr_name.iter_mut().zip(c_name.as_bytes()) {
            *dst = src as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as i16;
        // SAFETY: TUNSETIFF reads and writes one ifreq, which lives on our
        // stack for the call; the fd is ours.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut ifr) };
        if rc < 0 {
            return Err(NetError::CreateTap {
                name: name.to_string(),
                source: io::Error::last_os_error(),
            });
        }
        let configure = |what, source| NetError::ConfigureTap {
            name: name.to_string(),
            what,
            source,
        };
        let hdr_len = NET_HDR_LEN as libc::c_int;
        // SAFETY: TUNSETVNETHDRSZ reads one int from the pointer.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETVNETHDRSZ, &hdr_len) };
        if rc < 0 {
            return Err(configure("TUNSETVNETHDRSZ", io::Error::last_os_error()));
        }
        // An existing tap may have offloads on from an earlier user; with
        // none, the kernel hands us only whole, checksummed frames.
        // SAFETY: TUNSETOFFLOAD takes its flags by value.
        let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETOFFLOAD, 0 as libc::c_ulong) };
        if rc < 0 {
            return Err(configure("TUNSETOFFLOAD", io::Error::last_os_error()));
        }
        tracing::debug!("tap `{name}` open");
        Ok(Self {
            file,
            name: name.to_string(),
        })
    }

    pub fn name(&self) -> &str {
        &self.name
    }
}

impl AsRawFd for Tap {
    fn as_raw_fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }
}

impl NetBackend for Tap {
    fn recv(&self, frame: &mut [u8]) -> io::Result<usize> {
        let mut hdr = [0u8; NET_HDR_LEN];
        let n =
            (&self.file).read_vectored(&mut [IoSliceMut::new(&mut hdr), IoSliceMut::new(frame)])?;
        // The kernel reports the frame's full length even when it only
        // copied what fit.
        match n.checked_sub(NET_HDR_LEN) {
            Some(len) if len <= frame.len() => Ok(len),
            _ => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("tap read of {n} bytes does not fit the frame buffer"),
            )),
        }
    }

    fn send(&self, frame: &[u8]) -> io::Result<()> {
        let hdr = [0u8; NET_HDR_LEN];
        let n = (&self.file).write_vectored(&[IoSlice::new(&hdr), IoSlice::new(frame)])?;
        if n != NET_HDR_LEN + frame.len() {
            return Err(io::Error::new(
                io::ErrorKind::WriteZero,
                format!("tap took {n} of {} bytes", NET_HDR_LEN + frame.len()),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exists(name: &str) -> bool {
        let c = CString::new(name).unwrap();
        // SAFETY: a valid C string.
        unsafe { libc::if_nametoindex(c.as_ptr()) != 0 }
    }

    #[test]
    fn rejects_bad_names() {
        assert!(matches!(Tap::open(""), Err(NetError::TapName(_))));
        assert!(matches!(
            Tap::open("a-name-that-is-too-long"),
            Err(NetError::TapName(_))
        ));
        assert!(matches!(Tap::open("a\0b"), Err(NetError::TapName(_))));
    }

    /// Needs root and /dev/net/tun; skipped (passes) where they are missing.
    #[test]
    fn creates_a_tap_that_vanishes_on_drop() {
        let name = format!("sktest{}", std::process::id() % 100_000);
        let tap = match Tap::open(&name) {
            Ok(tap) => tap,
            Err(e) => {
                eprintln!("skipped: no usable /dev/net/tun here: {e}");
                return;
            }
        };
        assert!(exists(&name));
        // A down tap has nothing to read and swallows writes.
        let mut buf = [0u8; 2048];
        let err = tap.recv(&mut buf).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        let _ = tap.send(&[0u8; 60]);
        // A second opener of a busy single-queue tap is refused.
        assert!(matches!(Tap::open(&name), Err(NetError::CreateTap { .. })));
        drop(tap);
        assert!(!exists(&name));
    }
}
