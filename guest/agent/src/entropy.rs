//! Host entropy into the guest's random number generator. A VM restored
//! from a template starts with the template's CRNG state, so two pods
//! would draw the same "random" bytes (keys, UUIDs, TCP sequence numbers)
//! until something reseeds it: the runtime sends fresh bytes from the
//! host before any container starts, and this mixes them into the input
//! pool, credits them and forces the CRNG to reseed from it at once
//! (`RNDADDENTROPY`, then `RNDRESEEDCRNG`; random(4)).

use std::os::fd::AsRawFd;

/// The most bytes one request may carry: the size of the kernel's input
/// pool (4096 bits); more adds nothing.
pub const MAX_BYTES: usize = 512;
/// The fewest bytes worth a reseed: 256 bits, the CRNG's key size.
pub const MIN_BYTES: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum EntropyError {
    #[error("{len} bytes of entropy: expected {MIN_BYTES} to {MAX_BYTES}")]
    Size { len: usize },
    #[error("open /dev/random: {0}")]
    Open(std::io::Error),
    #[error("RNDADDENTROPY: {0}")]
    Add(nix::Error),
    #[error("RNDRESEEDCRNG: {0}")]
    Reseed(nix::Error),
}

/// `struct rand_pool_info` (linux/random.h), with a buffer of our size.
#[repr(C)]
pub struct RandPoolInfo {
    entropy_count: libc::c_int,
    buf_size: libc::c_int,
    buf: [u8; MAX_BYTES],
}

// The kernel encodes RNDADDENTROPY with the size of the header alone
// (`_IOW('R', 0x03, int[2])`); the buffer follows it.
nix::ioctl_write_ptr_bad!(
    rnd_add_entropy,
    nix::request_code_write!(b'R', 0x03, std::mem::size_of::<[libc::c_int; 2]>()),
    RandPoolInfo
);
nix::ioctl_none!(rnd_reseed_crng, b'R', 0x07);

/// Mixes `data` into the guest's input pool, credited in full, and
/// reseeds the CRNG from it.
pub fn reseed(data: &[u8]) -> Result<(), EntropyError> {
    let info = pool_info(data)?;
    let random = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/random")
        .map_err(EntropyError::Open)?;
    // SAFETY: `info` is a rand_pool_info whose buf_size bytes lie within
    // it; the kernel only reads them.
    unsafe { rnd_add_entropy(random.as_raw_fd(), &info) }.map_err(EntropyError::Add)?;
    // SAFETY: an ioctl without argument on our own fd.
    unsafe { rnd_reseed_crng(random.as_raw_fd()) }.map_err(EntropyError::Reseed)?;
    Ok(())
}

fn pool_info(data: &[u8]) -> Result<RandPoolInfo, EntropyError> {
    if !(MIN_BYTES..=MAX_BYTES).contains(&data.len()) {
        return Err(EntropyError::Size { len: data.len() });
    }
    let mut info = RandPoolInfo {
        entropy_count: (data.len() * 8) as libc::c_int,
        buf_size: data.len() as libc::c_int,
        buf: [0; MAX_BYTES],
    };
    info.buf[..data.len()].copy_from_slice(data);
    Ok(info)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_request_is_bounded_and_credited_in_bits() {
        for len in [0, MIN_BYTES - 1, MAX_BYTES + 1] {
            let err = pool_info(&vec![7; len]).err().unwrap();
            assert!(
                err.to_string().starts_with(&format!("{len} bytes")),
                "{err}"
            );
        }
        let info = pool_info(&[7; 64]).unwrap();
        assert_eq!((info.entropy_count, info.buf_size), (512, 64));
        assert_eq!(&info.buf[..64], &[7; 64]);
        assert!(info.buf[64..].iter().all(|&b| b == 0));
    }

    #[test]
    fn the_ioctl_numbers_are_the_kernels() {
        // linux/random.h: RNDADDENTROPY _IOW('R', 0x03, int[2]),
        // RNDRESEEDCRNG _IO('R', 0x07).
        assert_eq!(
            nix::request_code_write!(b'R', 0x03, std::mem::size_of::<[libc::c_int; 2]>()),
            0x4008_5203
        );
        assert_eq!(nix::request_code_none!(b'R', 0x07), 0x5207);
    }
}
