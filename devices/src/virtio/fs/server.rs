//! Serving FUSE requests from descriptor chains.
//!
//! fuse-backend-rs's `Server` parses each request and calls [`ShareFs`].
//! It trusts parts of the header: the body length of name-carrying
//! requests comes from `in_header.len`, and READDIR allocates the size the
//! guest asks for. So before handing a chain over, [`FuseServer`] checks
//! the header against the chain itself and answers EINVAL for a request
//! that claims more bytes than it carries, or asks for a reply bigger than
//! any FUSE reply. A chain too short to hold a header, or whose buffers lie
//! outside guest memory, is returned with nothing written.

use std::io::Write;
use std::mem::size_of;

use fuse_backend_rs::abi::fuse_abi::{InHeader, Opcode, OutHeader};
use fuse_backend_rs::api::server::{Server, MAX_BUFFER_SIZE};
use fuse_backend_rs::transport::{Reader, VirtioFsWriter, Writer};
use virtio_queue::{DescriptorChain, Queue};
use vm_memory::{Bytes, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

use super::{FsError, FsShare, ShareFs};
use crate::virtio::{queue, Interrupt};

/// The largest request or reply a FUSE driver sends: the biggest data
/// payload plus a page for headers.
pub const MAX_MESSAGE_SIZE: usize = MAX_BUFFER_SIZE as usize + 0x1000;

const IN_HEADER_SIZE: usize = size_of::<InHeader>();
const OUT_HEADER_SIZE: usize = size_of::<OutHeader>();

/// Serves one share's FUSE requests from the device's queues.
pub struct FuseServer {
    server: Server<ShareFs>,
}

type Chain<'a> = DescriptorChain<&'a GuestMemoryMmap>;

impl FuseServer {
    pub fn new(share: &FsShare) -> Result<Self, FsError> {
        Ok(Self {
            server: Server::new(ShareFs::new(share)?),
        })
    }

    /// A server for a thread inside the share's jail (`fs::jail`).
    pub fn jailed(share: &FsShare, fds: super::jail::JailFds) -> Self {
        Self {
            server: Server::new(ShareFs::jailed(share, fds)),
        }
    }

    /// Serves every request available on `queue` and returns whether the
    /// driver should be interrupted; a broken queue fails the device
    /// through `interrupt`, and `kick` is written when it stops at its
    /// budget ([`queue::drain`]).
    pub fn process_queue(
        &self,
        mem: &GuestMemoryMmap,
        queue: &mut Queue,
        interrupt: &Interrupt,
        kick: Option<&EventFd>,
    ) -> bool {
        queue::drain(queue, mem, interrupt, kick, |chain| self.serve(mem, chain))
    }

    /// Serves one request; returns the bytes written to the chain.
    fn serve(&self, mem: &GuestMemoryMmap, chain: Chain<'_>) -> u32 {
        let reader = match Reader::from_descriptor_chain(mem, chain.clone()) {
            Ok(r) => r,
            Err(e) => {
                tracing::debug!("virtio-fs: bad request buffers: {e}");
                return 0;
            }
        };
        let writer = match VirtioFsWriter::new(mem, chain.clone()) {
            Ok(w) => w,
            Err(e) => {
                tracing::debug!("virtio-fs: bad reply buffers: {e}");
                return 0;
            }
        };
        let Ok(header) = reader.clone().read_obj::<InHeader>() else {
            tracing::debug!("virtio-fs: request shorter than a FUSE header");
            return 0;
        };
        if let Err(errno) =
            check_request(&header, reader.available_bytes(), writer.available_bytes())
        {
            tracing::debug!(
                "virtio-fs: malformed request (opcode {}): errno {errno}",
                header.opcode
            );
            return reply_error(writer, &header, errno);
        }
        match self
            .server
            .handle_message(reader, Writer::VirtioFs(writer), None, None)
        {
            // The server writes DESTROY's reply but counts it as nothing.
            Ok(0) if header.opcode == Opcode::Destroy as u32 => {
                written_header_len(mem, &chain, &header)
            }
            Ok(written) => u32::try_from(written).unwrap_or(0),
            Err(e) => {
                tracing::debug!("virtio-fs: request (opcode {}) failed: {e}", header.opcode);
                written_header_len(mem, &chain, &header)
            }
        }
    }
}

/// The server returns "nothing written" after writing a bare reply header
/// in two cases: DESTROY, and some errors (a name without its NUL). Finds
/// such a header for this request so the used length reports it.
fn written_header_len(mem: &GuestMemoryMmap, chain: &Chain<'_>, header: &InHeader) -> u32 {
    let Some(desc) = chain.clone().writable().next() else {
        return 0;
    };
    if (desc.len() as usize) < OUT_HEADER_SIZE {
        return 0;
    }
    match mem.read_obj::<OutHeader>(desc.addr()) {
        Ok(out)
            if out.unique == header.unique
                && out.len as usize == OUT_HEADER_SIZE
                && out.error <= 0 =>
        {
            OUT_HEADER_SIZE as u32
        }
        _ => 0,
    }
}

/// Checks what the server would otherwise trust; `Err` carries the errno
/// to answer with.
fn check_request(header: &InHeader, readable: usize, writable: usize) -> Result<(), i32> {
    // Numbers that name no opcode never reach the library.
    if matches!(
        Opcode::from(header.opcode),
        Opcode::MaxOpcode | Opcode::CuseInitBswapReserved | Opcode::InitBswapReserved
    ) {
        return Err(libc::ENOSYS);
    }
    let len = header.len as usize;
    if len < IN_HEADER_SIZE || len > readable || len > MAX_MESSAGE_SIZE {
        return Err(libc::EINVAL);
    }
    if writable > MAX_MESSAGE_SIZE {
        return Err(libc::EINVAL);
    }
    Ok(())
}

/// FORGET and BATCH_FORGET never get a reply.
fn wants_reply(opcode: u32) -> bool {
    opcode != Opcode::Forget as u32 && opcode != Opcode::BatchForget as u32
}

/// Writes an error reply if the chain has room for one; returns its size.
fn reply_error(mut writer: VirtioFsWriter<'_>, header: &InHeader, errno: i32) -> u32 {
    if !wants_reply(header.opcode) || writer.available_bytes() < OUT_HEADER_SIZE {
        return 0;
    }
    let out = OutHeader {
        len: OUT_HEADER_SIZE as u32,
        error: -errno,
        unique: header.unique,
    };
    match writer.write_obj(out).and_then(|()| writer.flush()) {
        Ok(()) => OUT_HEADER_SIZE as u32,
        Err(_) => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::virtio::fs::testing::{memory, share, Buf, Driver, QSIZE};
    use fuse_backend_rs::abi::fuse_abi::{
        AttrOut, EntryOut, ForgetIn, GetattrIn, InitOut, OpenIn, OpenOut, ReadIn,
    };
    use fuse_backend_rs::api::filesystem::ROOT_ID;
    use vm_memory::{ByteValued, Bytes, GuestAddress};
    use vmm_sys_util::tempdir::TempDir;

    const HELLO: &[u8] = b"hello, virtio-fs\n";
    const ENTRY_REPLY: u32 = (OUT_HEADER_SIZE + size_of::<EntryOut>()) as u32;
    const ATTR_REPLY: u32 = (OUT_HEADER_SIZE + size_of::<AttrOut>()) as u32;

    struct Setup {
        _dir: TempDir,
        server: FuseServer,
        driver: Driver,
        queue: Queue,
        interrupt: Interrupt,
    }

    fn interrupt() -> Interrupt {
        Interrupt::new(vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).unwrap())
    }

    /// A share holding hello.txt, mounted (FUSE_INIT answered).
    fn setup() -> Setup {
        let dir = TempDir::new().unwrap();
        std::fs::write(dir.as_path().join("hello.txt"), HELLO).unwrap();
        let server = FuseServer::new(&share(dir.as_path(), false)).unwrap();
        let mut driver = Driver::new(&memory(), 0, 0x10_0000);
        let mut queue = driver.queue();
        let reply = driver.init_request();
        let interrupt = interrupt();
        server.process_queue(&driver.mem, &mut queue, &interrupt, None);
        let init_len = (OUT_HEADER_SIZE + size_of::<InitOut>()) as u32;
        assert_eq!(driver.take_used(), vec![(0, init_len)]);
        let out = driver.out_header(reply);
        assert_eq!((out.error, out.unique), (0, 1));
        assert_eq!(driver.reply_body::<InitOut>(reply).major, 7);
        Setup {
            _dir: dir,
            server,
            driver,
            queue,
            interrupt,
        }
    }

    impl Setup {
        /// Serves what is queued; returns the used lengths.
        fn run(&mut self) -> Vec<u32> {
            self.server
                .process_queue(&self.driver.mem, &mut self.queue, &self.interrupt, None);
            self.driver.take_used().into_iter().map(|u| u.len).collect()
        }

        fn getattr_root(&mut self) -> (u32, i32) {
            let reply = self.driver.request(
                Opcode::Getattr as u32,
                ROOT_ID,
                GetattrIn::default().as_slice(),
                ATTR_REPLY,
            );
            let used = self.run();
            (used[0], self.driver.out_header(reply).error)
        }

        fn error_of(&mut self, reply: u64) -> i32 {
            self.driver.out_header(reply).error
        }
    }

    #[test]
    fn serves_lookup_getattr_open_and_read() {
        let mut s = setup();
        let reply = s
            .driver
            .request(Opcode::Lookup as u32, ROOT_ID, b"hello.txt\0", ENTRY_REPLY);
        assert_eq!(s.run(), vec![ENTRY_REPLY]);
        assert_eq!(s.error_of(reply), 0);
        let entry: EntryOut = s.driver.reply_body(reply);
        assert_ne!(entry.nodeid, 0);
        assert_eq!(entry.attr.size, HELLO.len() as u64);

        let reply = s.driver.request(
            Opcode::Getattr as u32,
            entry.nodeid,
            GetattrIn::default().as_slice(),
            ATTR_REPLY,
        );
        assert_eq!(s.run(), vec![ATTR_REPLY]);
        let attr: AttrOut = s.driver.reply_body(reply);
        assert_eq!(attr.attr.ino, entry.attr.ino);
        assert_eq!(attr.attr.size, HELLO.len() as u64);

        let open = OpenIn {
            flags: libc::O_RDONLY as u32,
            fuse_flags: 0,
        };
        let len = (OUT_HEADER_SIZE + size_of::<OpenOut>()) as u32;
        let reply = s
            .driver
            .request(Opcode::Open as u32, entry.nodeid, open.as_slice(), len);
        assert_eq!(s.run(), vec![len]);
        let fh = s.driver.reply_body::<OpenOut>(reply).fh;

        // The Linux driver puts the out header and the data in separate buffers.
        let read = ReadIn {
            fh,
            size: 4096,
            ..Default::default()
        };
        let header = s
            .driver
            .header(Opcode::Read as u32, entry.nodeid, size_of::<ReadIn>());
        let mut req = header.as_slice().to_vec();
        req.extend_from_slice(read.as_slice());
        let req = s.driver.put(&req);
        let out = s.driver.alloc(OUT_HEADER_SIZE);
        let data = s.driver.alloc(4096);
        s.driver.push(&[
            Buf::readable(req, header.len),
            Buf::writable(out, OUT_HEADER_SIZE as u32),
            Buf::writable(data, 4096),
        ]);
        assert_eq!(s.run(), vec![(OUT_HEADER_SIZE + HELLO.len()) as u32]);
        assert_eq!(s.error_of(out), 0);
        let mut got = vec![0u8; HELLO.len()];
        s.driver
            .mem
            .read_slice(&mut got, GuestAddress(data))
            .unwrap();
        assert_eq!(got, HELLO);
    }

    /// Opens hello.txt with `flags`; returns the error or the handle.
    fn open_hello(s: &mut Setup, flags: u32) -> Result<(u64, u64), i32> {
        let reply = s
            .driver
            .request(Opcode::Lookup as u32, ROOT_ID, b"hello.txt\0", ENTRY_REPLY);
        s.run();
        let node = s.driver.reply_body::<EntryOut>(reply).nodeid;
        let open = OpenIn {
            flags,
            fuse_flags: 0,
        };
        let len = (OUT_HEADER_SIZE + size_of::<OpenOut>()) as u32;
        let reply = s
            .driver
            .request(Opcode::Open as u32, node, open.as_slice(), len);
        s.run();
        match s.error_of(reply) {
            0 => Ok((node, s.driver.reply_body::<OpenOut>(reply).fh)),
            e => Err(e),
        }
    }

    /// READs `size` bytes of handle `fh` with the request's `flags`.
    fn read_handle(s: &mut Setup, (node, fh): (u64, u64), flags: u32) -> (i32, Vec<u8>) {
        let read = ReadIn {
            fh,
            size: 64,
            flags,
            ..Default::default()
        };
        let reply = s.driver.request(
            Opcode::Read as u32,
            node,
            read.as_slice(),
            64 + OUT_HEADER_SIZE as u32,
        );
        let used = s.run()[0] as usize;
        let mut data = vec![0u8; used.saturating_sub(OUT_HEADER_SIZE)];
        s.driver
            .mem
            .read_slice(&mut data, GuestAddress(reply + OUT_HEADER_SIZE as u64))
            .unwrap();
        (s.error_of(reply), data)
    }

    #[test]
    fn o_path_opens_are_refused_and_reads_never_close_a_handle() {
        let mut s = setup();
        // The attack: an O_PATH handle, then a READ with other flags, made
        // the library close the handle's fd and serve the next file the
        // process opened through it.
        for flags in [
            libc::O_PATH,
            libc::O_PATH | libc::O_RDWR,
            libc::O_TMPFILE | libc::O_RDWR,
        ] {
            assert_eq!(
                open_hello(&mut s, flags as u32),
                Err(-libc::EINVAL),
                "{flags:#o}"
            );
        }
        assert_eq!(
            open_hello(&mut s, libc::O_ACCMODE as u32),
            Err(-libc::EINVAL)
        );

        // A READ's own flags never reach the open file.
        let fh = open_hello(&mut s, libc::O_RDONLY as u32).unwrap();
        for flags in [
            libc::O_PATH,
            libc::O_DIRECT,
            libc::O_APPEND | libc::O_NONBLOCK,
            -1,
        ] {
            let (err, data) = read_handle(&mut s, fh, flags as u32);
            assert_eq!((err, data.as_slice()), (0, HELLO), "{flags:#o}");
        }
        let secret = tempfile_with(b"host secret");
        let (_, data) = read_handle(&mut s, fh, libc::O_PATH as u32);
        assert_eq!(data, HELLO);
        drop(secret);
    }

    fn tempfile_with(data: &[u8]) -> std::fs::File {
        use std::io::Write as _;
        let mut f = vmm_sys_util::tempfile::TempFile::new().unwrap().into_file();
        f.write_all(data).unwrap();
        f
    }

    #[test]
    fn a_broken_avail_index_fails_the_device_instead_of_spinning() {
        let s = setup();
        // More chains "available" than the queue holds.
        s.driver
            .mem
            .write_obj(QSIZE + 7 + 1u16, GuestAddress(0x1000 + 2))
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let Setup {
            server,
            driver,
            mut queue,
            interrupt,
            _dir,
        } = s;
        std::thread::spawn(move || {
            let notify = server.process_queue(&driver.mem, &mut queue, &interrupt, None);
            let _ = tx.send((notify, interrupt.needs_reset()));
        });
        let (notify, needs_reset) = rx
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the queue was served in a loop that never ends");
        assert!(!notify);
        assert!(needs_reset);
    }

    #[test]
    fn a_reply_buffer_over_the_avail_ring_fails_the_device() {
        let mut s = setup();
        let bytes = s.driver.getattr_root_bytes();
        let req = s.driver.put(&bytes);
        s.driver.push(&[
            Buf::readable(req, bytes.len() as u32),
            Buf::writable(0x1000, ATTR_REPLY),
        ]);
        // The reply lands on the avail ring (guest memory the guest gave
        // for it) and turns its index into nonsense: the next look fails
        // the device instead of spinning on it.
        assert_eq!(s.run(), vec![ATTR_REPLY]);
        assert!(s.interrupt.needs_reset());
        // Nothing is served until the driver resets the device.
        let bytes = s.driver.getattr_root_bytes();
        let req = s.driver.put(&bytes);
        let reply = s.driver.alloc(ATTR_REPLY as usize);
        s.driver.push(&[
            Buf::readable(req, bytes.len() as u32),
            Buf::writable(reply, ATTR_REPLY),
        ]);
        assert!(s.run().is_empty());
    }

    #[test]
    fn a_second_init_over_split_buffers_reports_what_it_wrote() {
        let mut s = setup();
        let init = fuse_backend_rs::abi::fuse_abi::InitIn {
            major: 7,
            minor: 31,
            max_readahead: 0,
            flags: 0,
        };
        let header = s.driver.header(
            Opcode::Init as u32,
            0,
            size_of::<fuse_backend_rs::abi::fuse_abi::InitIn>(),
        );
        let mut req = header.as_slice().to_vec();
        req.extend_from_slice(init.as_slice());
        let req = s.driver.put(&req);
        let bufs: Vec<u64> = (0..3).map(|_| s.driver.alloc(48)).collect();
        let mut chain = vec![Buf::readable(req, header.len)];
        chain.extend(bufs.iter().map(|&addr| Buf::writable(addr, 48)));
        s.driver.push(&chain);
        let init_len = (OUT_HEADER_SIZE + size_of::<InitOut>()) as u32;
        assert_eq!(s.run(), vec![init_len]);
        assert_eq!(s.driver.out_header(bufs[0]).len, init_len);
    }

    #[test]
    fn malformed_requests_get_errors_and_serving_goes_on() {
        let mut s = setup();
        let einval = -libc::EINVAL;

        // Shorter than a FUSE header: nothing to answer to.
        let short = s.driver.put(&[0u8; 20]);
        let reply = s.driver.alloc(64);
        s.driver
            .push(&[Buf::readable(short, 20), Buf::writable(reply, 64)]);
        assert_eq!(s.run(), vec![0]);

        // A header claiming more bytes than the chain carries.
        let mut header = s.driver.header(Opcode::Lookup as u32, ROOT_ID, 4);
        header.len = 1000;
        let mut bytes = header.as_slice().to_vec();
        bytes.extend_from_slice(b"abc\0");
        let req = s.driver.put(&bytes);
        let reply = s.driver.alloc(ENTRY_REPLY as usize);
        s.driver.push(&[
            Buf::readable(req, bytes.len() as u32),
            Buf::writable(reply, ENTRY_REPLY),
        ]);
        assert_eq!(s.run(), vec![OUT_HEADER_SIZE as u32]);
        assert_eq!(s.error_of(reply), einval);
        assert_eq!(s.driver.out_header(reply).unique, header.unique);

        // A header length below the header's own size.
        let mut header = s.driver.header(Opcode::Getattr as u32, ROOT_ID, 0);
        header.len = 8;
        let req = s.driver.put(header.as_slice());
        let reply = s.driver.alloc(64);
        s.driver
            .push(&[Buf::readable(req, 40), Buf::writable(reply, 64)]);
        assert_eq!(s.run(), vec![OUT_HEADER_SIZE as u32]);
        assert_eq!(s.error_of(reply), einval);

        // Unknown opcodes, the unused numbers below the highest one
        // included (the library transmuted those into its enum).
        for opcode in [0, 7, 19, 50, 9999, u32::MAX] {
            let reply = s.driver.request(opcode, ROOT_ID, &[], 64);
            assert_eq!(s.run(), vec![OUT_HEADER_SIZE as u32], "opcode {opcode}");
            assert_eq!(s.error_of(reply), -libc::ENOSYS, "opcode {opcode}");
        }

        // Names with a slash, or without their NUL.
        let reply = s.driver.request(
            Opcode::Lookup as u32,
            ROOT_ID,
            b"../hello.txt\0",
            ENTRY_REPLY,
        );
        let reply2 = s
            .driver
            .request(Opcode::Lookup as u32, ROOT_ID, b"hello.txt", ENTRY_REPLY);
        assert_eq!(s.run(), vec![OUT_HEADER_SIZE as u32; 2]);
        assert_eq!(s.error_of(reply), einval);
        assert_eq!(s.error_of(reply2), einval);

        // A request buffer outside guest memory.
        let reply = s.driver.alloc(64);
        s.driver.push(&[
            Buf::readable(0xffff_0000_0000, 64),
            Buf::writable(reply, 64),
        ]);
        // A reply buffer outside guest memory.
        let bytes = s.driver.getattr_root_bytes();
        let req = s.driver.put(&bytes);
        s.driver
            .push(&[Buf::readable(req, 56), Buf::writable(0xffff_0000_0000, 64)]);
        assert_eq!(s.run(), vec![0, 0]);

        // Wrong directions: only device-writable buffers, or no room to reply.
        let buf = s.driver.alloc(128);
        s.driver.push(&[Buf::writable(buf, 128)]);
        let bytes = s.driver.getattr_root_bytes();
        let req = s.driver.put(&bytes);
        s.driver.push(&[Buf::readable(req, bytes.len() as u32)]);
        assert_eq!(s.run(), vec![0, 0]);

        // Zero-length descriptors around a valid request are harmless.
        let bytes = s.driver.getattr_root_bytes();
        let req = s.driver.put(&bytes);
        let reply = s.driver.alloc(ATTR_REPLY as usize);
        s.driver.push(&[
            Buf::readable(req, 0),
            Buf::readable(req, bytes.len() as u32),
            Buf::writable(reply, 0),
            Buf::writable(reply, ATTR_REPLY),
        ]);
        assert_eq!(s.run(), vec![ATTR_REPLY]);
        assert_eq!(s.error_of(reply), 0);

        // A reply buffer bigger than any FUSE reply (three views of one area).
        let bytes = s.driver.getattr_root_bytes();
        let req = s.driver.put(&bytes);
        let big = s.driver.alloc(0x8_0000);
        let chunk = 0x8_0000;
        s.driver.push(&[
            Buf::readable(req, bytes.len() as u32),
            Buf::writable(big, chunk),
            Buf::writable(big, chunk),
            Buf::writable(big, chunk),
        ]);
        assert_eq!(s.run(), vec![OUT_HEADER_SIZE as u32]);
        assert_eq!(s.error_of(big), einval);

        // A FORGET with a bad length gets no reply.
        let mut header = s
            .driver
            .header(Opcode::Forget as u32, 5, size_of::<ForgetIn>());
        header.len = 4000;
        let req = s.driver.put(header.as_slice());
        s.driver.push(&[Buf::readable(req, 40)]);
        assert_eq!(s.run(), vec![0]);

        // A descriptor that chains to itself: the chain ends at the queue size.
        let bytes = s.driver.getattr_root_bytes();
        let req = s.driver.put(&bytes);
        s.driver.write_desc(0, req, bytes.len() as u32, 1, 0);
        s.driver.offer(0);
        assert_eq!(s.run().len(), 1);

        assert_eq!(s.getattr_root(), (ATTR_REPLY, 0));
    }
}
