//! Every TCP connection to 127.0.0.1 in one network namespace, whatever
//! its port, handed to one listening socket: an `sk_lookup` BPF program
//! (Linux 5.9) attached to the namespace picks that socket for each new
//! connection, and the accepted socket's local address keeps the port
//! that was dialled. The port forwarder ([`crate::port_forward`]) catches
//! CRI's PortForward dials this way (containerd connects to
//! `localhost:PORT` in the pod's namespace, for any PORT) with no NAT rule
//! and no iptables; the steering ends when [`LoopbackSteer`] is dropped or
//! the process exits, since only its link fd holds the program.
//!
//! The program is 23 instructions, assembled in [`program`]: aya and
//! libbpf-rs load ELF objects built by a BPF compiler, a build toolchain
//! for those 23 instructions. The kernel's verifier checks it at load.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

// bpf(2) commands, types and helpers (include/uapi/linux/bpf.h).
const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_MAP_TYPE_SOCKMAP: u32 = 15;
const BPF_PROG_TYPE_SK_LOOKUP: u32 = 30;
const BPF_SK_LOOKUP: u32 = 36;
const BPF_PSEUDO_MAP_FD: u8 = 1;
const HELPER_MAP_LOOKUP_ELEM: i32 = 1;
const HELPER_SK_RELEASE: i32 = 86;
const HELPER_SK_ASSIGN: i32 = 124;
const SK_PASS: i32 = 1;
// Fields of `struct bpf_sk_lookup`, the program's context.
const CTX_FAMILY: i16 = 8;
const CTX_PROTOCOL: i16 = 12;
const CTX_LOCAL_IP4: i16 = 40;
/// The verifier's log, kept for the error when a load is refused.
const LOG_BYTES: usize = 16 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum SkLookupError {
    #[error("create the BPF socket map: {0} (sk_lookup needs Linux 5.9 and CAP_BPF)")]
    Map(io::Error),
    #[error("load the sk_lookup program: {err}: {log}")]
    Load { err: io::Error, log: String },
    #[error("put the listening socket in the BPF socket map: {0}")]
    Insert(io::Error),
    #[error("attach the sk_lookup program to the network namespace: {0}")]
    Attach(io::Error),
}

/// The steering of one namespace's loopback connections; dropping it
/// detaches the program.
#[derive(Debug)]
pub struct LoopbackSteer {
    _link: OwnedFd,
}

impl LoopbackSteer {
    /// Steers every TCP connection to 127.0.0.1 in the network namespace
    /// `netns` (an open `/proc/.../ns/net` or `/var/run/netns/...`) to
    /// `listener`, a listening TCP socket of that namespace.
    pub fn attach(netns: BorrowedFd<'_>, listener: BorrowedFd<'_>) -> Result<Self, SkLookupError> {
        let map = bpf_fd(
            BPF_MAP_CREATE,
            &MapCreate {
                map_type: BPF_MAP_TYPE_SOCKMAP,
                key_size: 4,
                value_size: 8,
                max_entries: 1,
                ..Default::default()
            },
        )
        .map_err(SkLookupError::Map)?;
        let key = 0u32;
        let value = listener.as_raw_fd() as u64;
        bpf(
            BPF_MAP_UPDATE_ELEM,
            &MapUpdate {
                map_fd: map.as_raw_fd() as u32,
                key: &key as *const u32 as u64,
                value: &value as *const u64 as u64,
                ..Default::default()
            },
        )
        .map_err(SkLookupError::Insert)?;
        let program = load(&program(map.as_raw_fd()))?;
        let link = bpf_fd(
            BPF_LINK_CREATE,
            &LinkCreate {
                prog_fd: program.as_raw_fd() as u32,
                target_fd: netns.as_raw_fd() as u32,
                attach_type: BPF_SK_LOOKUP,
                flags: 0,
            },
        )
        .map_err(SkLookupError::Attach)?;
        // The link holds the program, the program its map: both fds go.
        Ok(Self { _link: link })
    }
}

/// One BPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
struct Insn {
    code: u8,
    /// dst_reg in the low nibble, src_reg in the high one (the C
    /// bitfield's layout on a little-endian machine; swapped on a
    /// big-endian one).
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    let regs = if cfg!(target_endian = "little") {
        dst | (src << 4)
    } else {
        (dst << 4) | src
    };
    Insn {
        code,
        regs,
        off,
        imm,
    }
}

// The opcodes used (class | operation | source).
const MOV64_REG: u8 = 0xbf;
const MOV64_IMM: u8 = 0xb7;
const ADD64_IMM: u8 = 0x07;
const LOAD_U32: u8 = 0x61;
const STORE_U32_IMM: u8 = 0x62;
const LOAD_IMM64: u8 = 0x18;
const JNE_IMM: u8 = 0x55;
const JEQ_IMM: u8 = 0x15;
const CALL: u8 = 0x85;
const EXIT: u8 = 0x95;
/// The instruction every "not ours" branch jumps to.
const PASS: usize = 21;

/// The program, with the socket map `map_fd`:
///
/// ```text
/// if ctx.protocol == TCP && ctx.family == AF_INET && ctx.local_ip4 == 127.0.0.1 {
///     if let Some(sk) = map_lookup_elem(map, 0) {
///         sk_assign(ctx, sk, 0);   // refused only for a wrong socket type
///         sk_release(sk);
///     }
/// }
/// return SK_PASS;                  // the lookup goes on as usual otherwise
/// ```
fn program(map_fd: RawFd) -> [Insn; 23] {
    // A branch from instruction `at` to PASS.
    let to_pass = |at: usize| (PASS - at - 1) as i16;
    // 127.0.0.1 as the 32-bit load of the network-order field reads it.
    let loopback = i32::from_ne_bytes([127, 0, 0, 1]);
    [
        insn(MOV64_REG, 6, 1, 0, 0), // r6 = ctx
        insn(LOAD_U32, 2, 6, CTX_PROTOCOL, 0),
        insn(JNE_IMM, 2, 0, to_pass(2), libc::IPPROTO_TCP),
        insn(LOAD_U32, 2, 6, CTX_FAMILY, 0),
        insn(JNE_IMM, 2, 0, to_pass(4), libc::AF_INET),
        insn(LOAD_U32, 2, 6, CTX_LOCAL_IP4, 0),
        insn(JNE_IMM, 2, 0, to_pass(6), loopback),
        insn(STORE_U32_IMM, 10, 0, -4, 0), // key = 0, on the stack
        insn(MOV64_REG, 2, 10, 0, 0),
        insn(ADD64_IMM, 2, 0, 0, -4), // r2 = &key
        insn(LOAD_IMM64, 1, BPF_PSEUDO_MAP_FD, 0, map_fd),
        insn(0, 0, 0, 0, 0), // the 64-bit load's upper half
        insn(CALL, 0, 0, 0, HELPER_MAP_LOOKUP_ELEM),
        insn(JEQ_IMM, 0, 0, to_pass(13), 0),
        insn(MOV64_REG, 7, 0, 0, 0), // r7 = sk (held: released below)
        insn(MOV64_REG, 1, 6, 0, 0),
        insn(MOV64_REG, 2, 7, 0, 0),
        insn(MOV64_IMM, 3, 0, 0, 0),
        insn(CALL, 0, 0, 0, HELPER_SK_ASSIGN),
        insn(MOV64_REG, 1, 7, 0, 0),
        insn(CALL, 0, 0, 0, HELPER_SK_RELEASE),
        insn(MOV64_IMM, 0, 0, 0, SK_PASS), // PASS
        insn(EXIT, 0, 0, 0, 0),
    ]
}

fn load(program: &[Insn]) -> Result<OwnedFd, SkLookupError> {
    let license = c"Apache-2.0";
    let mut log = vec![0u8; LOG_BYTES];
    let attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_SK_LOOKUP,
        insn_cnt: program.len() as u32,
        insns: program.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        prog_name: *b"skiff_loopback\0\0",
        expected_attach_type: BPF_SK_LOOKUP,
        ..Default::default()
    };
    bpf_fd(BPF_PROG_LOAD, &attr).map_err(|err| {
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        SkLookupError::Load {
            err,
            log: String::from_utf8_lossy(&log[..end]).trim().to_string(),
        }
    })
}

// The parts of `union bpf_attr` each command reads; the kernel takes the
// size given and treats the rest as zero.
#[repr(C)]
#[derive(Default)]
struct MapCreate {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct MapUpdate {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct LinkCreate {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
}

fn bpf<T>(cmd: libc::c_long, attr: &T) -> io::Result<libc::c_long> {
    // SAFETY: `attr` is a repr(C) prefix of `union bpf_attr` for `cmd`,
    // valid for its size; every pointer in it outlives the call.
    let ret = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *const T,
            std::mem::size_of::<T>(),
        )
    };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A bpf(2) command that returns a new fd.
fn bpf_fd<T>(cmd: libc::c_long, attr: &T) -> io::Result<OwnedFd> {
    let fd = bpf(cmd, attr)?;
    // SAFETY: the kernel returned a new fd that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_branch_lands_on_the_pass_instruction() {
        let program = program(3);
        for (at, i) in program.iter().enumerate() {
            if i.code == JNE_IMM || i.code == JEQ_IMM {
                let target = at as i64 + 1 + i.off as i64;
                assert_eq!(target, PASS as i64, "branch at {at}");
            }
        }
        assert_eq!(program[PASS], insn(MOV64_IMM, 0, 0, 0, SK_PASS));
        assert_eq!(program[PASS + 1].code, EXIT);
        assert_eq!(program[10].imm, 3, "the map's fd");
    }

    #[test]
    fn the_attr_prefixes_match_the_kernels_layout() {
        assert_eq!(std::mem::size_of::<Insn>(), 8);
        assert_eq!(std::mem::offset_of!(ProgLoad, log_buf), 32);
        assert_eq!(std::mem::offset_of!(ProgLoad, prog_name), 48);
        assert_eq!(std::mem::offset_of!(ProgLoad, expected_attach_type), 68);
        assert_eq!(std::mem::offset_of!(MapUpdate, flags), 24);
        assert_eq!(std::mem::offset_of!(LinkCreate, attach_type), 8);
    }
}
