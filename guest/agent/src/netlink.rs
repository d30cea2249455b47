//! A tiny synchronous rtnetlink client: one NETLINK_ROUTE socket, one
//! request at a time, answered by an ack or a dump. Just what the agent's
//! network calls need (links, IPv4 addresses and routes), without an async
//! runtime or a netlink crate in the static guest binary. Values are in
//! host byte order, addresses in network order, as the kernel wants them
//! (include/uapi/linux/{netlink,rtnetlink,if_link,if_addr}.h).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sys::socket::{
    bind, recv, sendto, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol,
    SockType,
};

// netlink.h
const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_MULTI: u16 = 0x2;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_CAPPED: u16 = 0x100;
const NLM_F_ACK_TLVS: u16 = 0x200;
const NLMSGERR_ATTR_MSG: u16 = 1;
const NETLINK_CAP_ACK: libc::c_int = 10;
const NETLINK_EXT_ACK: libc::c_int = 11;
/// Nested/byte-order flags in an attribute's type.
const NLA_TYPE_MASK: u16 = 0x3fff;

// rtnetlink.h
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_GETADDR: u16 = 22;
const RTM_NEWROUTE: u16 = 24;
const RTM_DELROUTE: u16 = 25;
const RTM_GETROUTE: u16 = 26;
pub const RT_TABLE_MAIN: u32 = 254;
pub const RTPROT_KERNEL: u8 = 2;
const RTPROT_BOOT: u8 = 3;
pub const RTN_UNICAST: u8 = 1;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RT_SCOPE_LINK: u8 = 253;
const RT_SCOPE_HOST: u8 = 254;
const RT_SCOPE_NOWHERE: u8 = 255;
const RTA_DST: u16 = 1;
const RTA_OIF: u16 = 4;
const RTA_GATEWAY: u16 = 5;
const RTA_PRIORITY: u16 = 6;
const RTA_PREFSRC: u16 = 7;
const RTA_TABLE: u16 = 15;
// if_link.h
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
// if_addr.h
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_BROADCAST: u16 = 4;

pub const AF_INET: u8 = libc::AF_INET as u8;
pub const AF_UNSPEC: u8 = libc::AF_UNSPEC as u8;
pub const IFF_UP: u32 = libc::IFF_UP as u32;

/// A failed netlink request: the errno and, where the kernel gave one, its
/// extended-ack message ("Nexthop has invalid gateway").
#[derive(Debug, Clone, PartialEq)]
pub struct NlError {
    pub errno: Errno,
    pub message: Option<String>,
}

impl std::fmt::Display for NlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.errno.desc())?;
        if let Some(m) = &self.message {
            write!(f, " ({m})")?;
        }
        Ok(())
    }
}

impl std::error::Error for NlError {}

impl From<Errno> for NlError {
    fn from(errno: Errno) -> Self {
        NlError {
            errno,
            message: None,
        }
    }
}

pub type Result<T> = std::result::Result<T, NlError>;

/// A request body: a fixed header (ifinfomsg, ifaddrmsg, rtmsg) followed
/// by attributes, each padded to 4 bytes.
pub struct Body(Vec<u8>);

fn pad4(n: usize) -> usize {
    (n + 3) & !3
}

impl Body {
    pub fn new(header: &[u8]) -> Body {
        let mut v = header.to_vec();
        v.resize(pad4(v.len()), 0);
        Body(v)
    }

    pub fn attr(mut self, ty: u16, data: &[u8]) -> Body {
        let len = 4 + data.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&ty.to_ne_bytes());
        self.0.extend_from_slice(data);
        self.0.resize(pad4(self.0.len()), 0);
        self
    }

    pub fn attr_u32(self, ty: u16, v: u32) -> Body {
        self.attr(ty, &v.to_ne_bytes())
    }
}

/// The attributes in `buf` (after a fixed header): (type, payload) pairs;
/// stops at the first malformed one.
pub fn attrs(mut buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if buf.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([buf[0], buf[1]]) as usize;
        let ty = u16::from_ne_bytes([buf[2], buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > buf.len() {
            buf = &[];
            return None;
        }
        let data = &buf[4..len];
        buf = &buf[pad4(len).min(buf.len())..];
        Some((ty, data))
    })
}

fn u32_of(d: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(d.get(..4)?.try_into().ok()?))
}

fn ip_of(d: &[u8]) -> Option<IpAddr> {
    match d.len() {
        4 => Some(IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(d).ok()?))),
        16 => Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(d).ok()?))),
        _ => None,
    }
}

fn ipv4_of(d: &[u8]) -> Option<Ipv4Addr> {
    match ip_of(d)? {
        IpAddr::V4(a) => Some(a),
        IpAddr::V6(_) => None,
    }
}

/// A network device (RTM_GETLINK).
#[derive(Debug, Clone, PartialEq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub flags: u32,
    pub mtu: u32,
    pub address: Vec<u8>,
}

/// An address of a device (RTM_GETADDR).
#[derive(Debug, Clone, PartialEq)]
pub struct Addr {
    pub family: u8,
    pub index: u32,
    pub prefix_len: u8,
    /// IFA_LOCAL where there is one (IPv4), else IFA_ADDRESS.
    pub local: IpAddr,
    /// IFA_ADDRESS (the peer's on point-to-point links).
    pub address: Option<IpAddr>,
}

/// An IPv4 route (RTM_GETROUTE).
#[derive(Debug, Clone, PartialEq)]
pub struct RouteEntry {
    pub table: u32,
    pub protocol: u8,
    pub scope: u8,
    pub kind: u8,
    pub tos: u8,
    pub dst: Ipv4Addr,
    pub dst_len: u8,
    pub gateway: Option<Ipv4Addr>,
    pub oif: Option<u32>,
    pub priority: Option<u32>,
    pub prefsrc: Option<Ipv4Addr>,
}

/// An IPv4 unicast route to add to the main table.
#[derive(Debug, Clone, PartialEq)]
pub struct NewRoute {
    pub dst: Ipv4Addr,
    pub dst_len: u8,
    pub gateway: Option<Ipv4Addr>,
    pub oif: u32,
}

pub fn parse_link(b: &[u8]) -> Option<Link> {
    // ifinfomsg: family, pad, type u16, index i32, flags u32, change u32.
    let hdr = b.get(..16)?;
    let mut l = Link {
        index: u32_of(&hdr[4..8])?,
        flags: u32_of(&hdr[8..12])?,
        name: String::new(),
        mtu: 0,
        address: Vec::new(),
    };
    for (ty, d) in attrs(&b[16..]) {
        match ty {
            IFLA_IFNAME => {
                l.name = String::from_utf8_lossy(d.split(|&c| c == 0).next().unwrap_or(d)).into()
            }
            IFLA_MTU => l.mtu = u32_of(d)?,
            IFLA_ADDRESS => l.address = d.to_vec(),
            _ => {}
        }
    }
    Some(l)
}

pub fn parse_addr(b: &[u8]) -> Option<Addr> {
    // ifaddrmsg: family, prefixlen, flags, scope, index u32.
    let hdr = b.get(..8)?;
    let (mut local, mut address) = (None, None);
    for (ty, d) in attrs(&b[8..]) {
        match ty {
            IFA_LOCAL => local = ip_of(d),
            IFA_ADDRESS => address = ip_of(d),
            _ => {}
        }
    }
    Some(Addr {
        family: hdr[0],
        prefix_len: hdr[1],
        index: u32_of(&hdr[4..8])?,
        local: local.or(address)?,
        address,
    })
}

pub fn parse_route(b: &[u8]) -> Option<RouteEntry> {
    // rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type,
    // flags u32.
    let hdr = b.get(..12)?;
    if hdr[0] != AF_INET {
        return None;
    }
    let mut r = RouteEntry {
        table: hdr[4] as u32,
        protocol: hdr[5],
        scope: hdr[6],
        kind: hdr[7],
        tos: hdr[3],
        dst: Ipv4Addr::UNSPECIFIED,
        dst_len: hdr[1],
        gateway: None,
        oif: None,
        priority: None,
        prefsrc: None,
    };
    for (ty, d) in attrs(&b[12..]) {
        match ty {
            RTA_DST => r.dst = ipv4_of(d)?,
            RTA_GATEWAY => r.gateway = ipv4_of(d),
            RTA_OIF => r.oif = u32_of(d),
            RTA_PRIORITY => r.priority = u32_of(d),
            RTA_PREFSRC => r.prefsrc = ipv4_of(d),
            RTA_TABLE => r.table = u32_of(d)?,
            _ => {}
        }
    }
    Some(r)
}

/// The extended-ack message in an NLMSG_ERROR payload, if any.
fn ext_ack_message(payload: &[u8], flags: u16) -> Option<String> {
    if flags & NLM_F_ACK_TLVS == 0 {
        return None;
    }
    // nlmsgerr: error i32, then the request's header (CAPPED) or the whole
    // request.
    let skip = if flags & NLM_F_CAPPED != 0 {
        4 + NLMSG_HDRLEN
    } else {
        4 + u32_of(payload.get(4..8)?)? as usize
    };
    attrs(payload.get(pad4(skip)..)?)
        .find(|(ty, _)| *ty == NLMSGERR_ATTR_MSG)
        .map(|(_, d)| {
            String::from_utf8_lossy(d.split(|&c| c == 0).next().unwrap_or(d)).into_owned()
        })
}

/// A NETLINK_ROUTE socket in the calling thread's network namespace.
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

impl Socket {
    pub fn open() -> Result<Socket> {
        let fd = socket(
            AddressFamily::Netlink,
            SockType::Raw,
            SockFlag::SOCK_CLOEXEC,
            SockProtocol::NetlinkRoute,
        )?;
        bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
        for opt in [NETLINK_EXT_ACK, NETLINK_CAP_ACK] {
            let one: libc::c_int = 1;
            // SAFETY: setsockopt reads one c_int from a live local; older
            // kernels refusing these options only lose error detail.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_NETLINK,
                    opt,
                    (&one as *const libc::c_int).cast(),
                    std::mem::size_of::<libc::c_int>() as libc::socklen_t,
                )
            };
        }
        Ok(Socket {
            fd,
            seq: 0,
            buf: vec![0; 64 * 1024],
        })
    }

    /// Sends one request; returns the payloads of the replies (a dump's
    /// entries), after the ack or NLMSG_DONE that ends them.
    fn request(&mut self, ty: u16, flags: u16, body: &Body) -> Result<Vec<Vec<u8>>> {
        self.seq = self.seq.wrapping_add(1);
        let seq = self.seq;
        let mut msg = Vec::with_capacity(NLMSG_HDRLEN + body.0.len());
        msg.extend_from_slice(&((NLMSG_HDRLEN + body.0.len()) as u32).to_ne_bytes());
        msg.extend_from_slice(&ty.to_ne_bytes());
        msg.extend_from_slice(&(flags | NLM_F_REQUEST).to_ne_bytes());
        msg.extend_from_slice(&seq.to_ne_bytes());
        msg.extend_from_slice(&0u32.to_ne_bytes());
        msg.extend_from_slice(&body.0);
        sendto(
            self.fd.as_raw_fd(),
            &msg,
            &NetlinkAddr::new(0, 0),
            MsgFlags::empty(),
        )?;
        let mut out = Vec::new();
        loop {
            let n = loop {
                match recv(self.fd.as_raw_fd(), &mut self.buf, MsgFlags::empty()) {
                    Err(Errno::EINTR) => continue,
                    r => break r?,
                }
            };
            let mut rest = &self.buf[..n];
            while rest.len() >= NLMSG_HDRLEN {
                let len = u32_of(&rest[0..4]).unwrap_or(0) as usize;
                if len < NLMSG_HDRLEN || len > rest.len() {
                    return Err(Errno::EBADMSG.into());
                }
                let mty = u16::from_ne_bytes([rest[4], rest[5]]);
                let mflags = u16::from_ne_bytes([rest[6], rest[7]]);
                let mseq = u32_of(&rest[8..12]).unwrap_or(0);
                let payload = &rest[NLMSG_HDRLEN..len];
                rest = &rest[pad4(len).min(rest.len())..];
                if mseq != seq {
                    continue;
                }
                match mty {
                    NLMSG_ERROR => {
                        let code = payload
                            .get(..4)
                            .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
                            .unwrap_or(-libc::EBADMSG);
                        if code == 0 {
                            return Ok(out);
                        }
                        return Err(NlError {
                            errno: Errno::from_raw(-code),
                            message: ext_ack_message(payload, mflags),
                        });
                    }
                    NLMSG_DONE => {
                        let code = payload
                            .get(..4)
                            .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
                            .unwrap_or(0);
                        if code < 0 {
                            return Err(Errno::from_raw(-code).into());
                        }
                        return Ok(out);
                    }
                    _ => {
                        out.push(payload.to_vec());
                        if mflags & NLM_F_MULTI == 0 && flags & NLM_F_ACK == 0 {
                            return Ok(out);
                        }
                    }
                }
            }
        }
    }

    fn ack(&mut self, ty: u16, flags: u16, body: Body) -> Result<()> {
        self.request(ty, flags | NLM_F_ACK, &body).map(|_| ())
    }

    fn dump(&mut self, ty: u16, header: &[u8]) -> Result<Vec<Vec<u8>>> {
        self.request(ty, NLM_F_DUMP, &Body::new(header))
    }

    pub fn links(&mut self) -> Result<Vec<Link>> {
        let replies = self.dump(RTM_GETLINK, &[AF_UNSPEC; 16])?;
        Ok(replies.iter().filter_map(|b| parse_link(b)).collect())
    }

    /// Addresses of every device; `family` AF_UNSPEC for all families.
    pub fn addrs(&mut self, family: u8) -> Result<Vec<Addr>> {
        let replies = self.dump(RTM_GETADDR, &[family, 0, 0, 0, 0, 0, 0, 0])?;
        Ok(replies
            .iter()
            .filter_map(|b| parse_addr(b))
            .filter(|a| family == AF_UNSPEC || a.family == family)
            .collect())
    }

    /// IPv4 routes of every table.
    pub fn routes4(&mut self) -> Result<Vec<RouteEntry>> {
        let mut hdr = [0u8; 12];
        hdr[0] = AF_INET;
        let replies = self.dump(RTM_GETROUTE, &hdr)?;
        Ok(replies.iter().filter_map(|b| parse_route(b)).collect())
    }

    /// Sets a device's MTU and/or brings it up or down.
    pub fn set_link(&mut self, index: u32, mtu: Option<u32>, up: Option<bool>) -> Result<()> {
        let mut hdr = [0u8; 16];
        hdr[4..8].copy_from_slice(&index.to_ne_bytes());
        if let Some(up) = up {
            hdr[8..12].copy_from_slice(&(if up { IFF_UP } else { 0 }).to_ne_bytes());
            hdr[12..16].copy_from_slice(&IFF_UP.to_ne_bytes());
        }
        let mut body = Body::new(&hdr);
        if let Some(mtu) = mtu {
            body = body.attr_u32(IFLA_MTU, mtu);
        }
        self.ack(RTM_NEWLINK, 0, body)
    }

    pub fn add_addr4(&mut self, index: u32, addr: Ipv4Addr, prefix_len: u8) -> Result<()> {
        let scope = if addr.is_loopback() {
            RT_SCOPE_HOST
        } else {
            RT_SCOPE_UNIVERSE
        };
        let mut hdr = [AF_INET, prefix_len, 0, scope, 0, 0, 0, 0];
        hdr[4..8].copy_from_slice(&index.to_ne_bytes());
        let mut body = Body::new(&hdr)
            .attr(IFA_LOCAL, &addr.octets())
            .attr(IFA_ADDRESS, &addr.octets());
        if prefix_len < 31 {
            let host_mask = u32::MAX >> prefix_len;
            let brd = Ipv4Addr::from(u32::from(addr) | host_mask);
            body = body.attr(IFA_BROADCAST, &brd.octets());
        }
        self.ack(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, body)
    }

    pub fn del_addr(&mut self, a: &Addr) -> Result<()> {
        let mut hdr = [a.family, a.prefix_len, 0, 0, 0, 0, 0, 0];
        hdr[4..8].copy_from_slice(&a.index.to_ne_bytes());
        let octets = |ip: IpAddr| match ip {
            IpAddr::V4(v) => v.octets().to_vec(),
            IpAddr::V6(v) => v.octets().to_vec(),
        };
        let mut body = Body::new(&hdr);
        if a.family == AF_INET {
            body = body.attr(IFA_LOCAL, &octets(a.local));
        }
        if let Some(p) = a.address {
            body = body.attr(IFA_ADDRESS, &octets(p));
        }
        self.ack(RTM_DELADDR, 0, body)
    }

    pub fn add_route4(&mut self, r: &NewRoute) -> Result<()> {
        let scope = if r.gateway.is_some() {
            RT_SCOPE_UNIVERSE
        } else {
            RT_SCOPE_LINK
        };
        let hdr = [
            AF_INET,
            r.dst_len,
            0,
            0,
            RT_TABLE_MAIN as u8,
            RTPROT_BOOT,
            scope,
            RTN_UNICAST,
            0,
            0,
            0,
            0,
        ];
        let mut body = Body::new(&hdr);
        if r.dst_len > 0 {
            body = body.attr(RTA_DST, &r.dst.octets());
        }
        if let Some(gw) = r.gateway {
            body = body.attr(RTA_GATEWAY, &gw.octets());
        }
        body = body.attr_u32(RTA_OIF, r.oif);
        self.ack(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, body)
    }

    /// Puts back a route as it was listed (after a failed update).
    pub fn restore_route4(&mut self, r: &RouteEntry) -> Result<()> {
        let body = Self::route_body(r, r.protocol, r.scope);
        let body = match r.prefsrc {
            Some(src) => body.attr(RTA_PREFSRC, &src.octets()),
            None => body,
        };
        self.ack(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, body)
    }

    pub fn del_route4(&mut self, r: &RouteEntry) -> Result<()> {
        // Protocol 0 and scope NOWHERE match any.
        let body = Self::route_body(r, 0, RT_SCOPE_NOWHERE);
        self.ack(RTM_DELROUTE, 0, body)
    }

    fn route_body(r: &RouteEntry, protocol: u8, scope: u8) -> Body {
        let table8 = if r.table < 256 { r.table as u8 } else { 0 };
        let hdr = [
            AF_INET, r.dst_len, 0, r.tos, table8, protocol, scope, r.kind, 0, 0, 0, 0,
        ];
        let mut body = Body::new(&hdr).attr_u32(RTA_TABLE, r.table);
        if r.dst_len > 0 {
            body = body.attr(RTA_DST, &r.dst.octets());
        }
        if let Some(gw) = r.gateway {
            body = body.attr(RTA_GATEWAY, &gw.octets());
        }
        if let Some(oif) = r.oif {
            body = body.attr_u32(RTA_OIF, oif);
        }
        if let Some(p) = r.priority {
            body = body.attr_u32(RTA_PRIORITY, p);
        }
        body
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attributes_are_padded_and_parse_back() {
        let b = Body::new(&[1, 2, 3])
            .attr(IFLA_IFNAME, b"eth0\0")
            .attr_u32(IFLA_MTU, 1400)
            .attr(IFLA_ADDRESS, &[2, 0, 0, 0xaa, 0xbb, 1]);
        assert_eq!(b.0.len() % 4, 0);
        assert_eq!(&b.0[..4], &[1, 2, 3, 0]);
        let got: Vec<(u16, Vec<u8>)> = attrs(&b.0[4..]).map(|(t, d)| (t, d.to_vec())).collect();
        assert_eq!(
            got,
            vec![
                (IFLA_IFNAME, b"eth0\0".to_vec()),
                (IFLA_MTU, 1400u32.to_ne_bytes().to_vec()),
                (IFLA_ADDRESS, vec![2, 0, 0, 0xaa, 0xbb, 1]),
            ]
        );
        // A truncated attribute ends the walk instead of reading past it.
        let mut bad = b.0[4..].to_vec();
        bad[0] = 200;
        assert_eq!(attrs(&bad).count(), 0);
    }

    #[test]
    fn link_addr_and_route_messages_parse() {
        let mut hdr = [0u8; 16];
        hdr[4..8].copy_from_slice(&7u32.to_ne_bytes());
        hdr[8..12].copy_from_slice(&(IFF_UP | 0x40).to_ne_bytes());
        let l = Body::new(&hdr)
            .attr(IFLA_IFNAME, b"eth0\0")
            .attr_u32(IFLA_MTU, 1500)
            .attr(IFLA_ADDRESS, &[2, 0, 0, 0, 0, 9]);
        let l = parse_link(&l.0).unwrap();
        assert_eq!((l.index, l.name.as_str(), l.mtu), (7, "eth0", 1500));
        assert_eq!(l.flags & IFF_UP, IFF_UP);
        assert_eq!(l.address, [2, 0, 0, 0, 0, 9]);

        let mut hdr = [AF_INET, 24, 0, 0, 0, 0, 0, 0];
        hdr[4..8].copy_from_slice(&7u32.to_ne_bytes());
        let a = Body::new(&hdr)
            .attr(IFA_ADDRESS, &[10, 0, 0, 2])
            .attr(IFA_LOCAL, &[10, 0, 0, 2]);
        let a = parse_addr(&a.0).unwrap();
        assert_eq!((a.index, a.prefix_len), (7, 24));
        assert_eq!(a.local, "10.0.0.2".parse::<IpAddr>().unwrap());

        let hdr = [
            AF_INET,
            0,
            0,
            0,
            254,
            RTPROT_BOOT,
            0,
            RTN_UNICAST,
            0,
            0,
            0,
            0,
        ];
        let r = Body::new(&hdr)
            .attr_u32(RTA_TABLE, RT_TABLE_MAIN)
            .attr(RTA_GATEWAY, &[10, 0, 0, 1])
            .attr_u32(RTA_OIF, 7);
        let r = parse_route(&r.0).unwrap();
        assert_eq!(r.dst_len, 0);
        assert_eq!(r.gateway, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!((r.oif, r.table), (Some(7), RT_TABLE_MAIN));
        // IPv6 routes are not IPv4 routes.
        assert!(parse_route(&[libc::AF_INET6 as u8, 0, 0, 0, 254, 0, 0, 1, 0, 0, 0, 0]).is_none());
    }

    #[test]
    fn error_messages_come_from_the_ext_ack() {
        // nlmsgerr (capped): error, request header; then NLMSGERR_ATTR_MSG.
        let mut p = (-libc::ENETUNREACH).to_ne_bytes().to_vec();
        p.extend_from_slice(&[0u8; NLMSG_HDRLEN]);
        let tail = Body::new(&[]).attr(NLMSGERR_ATTR_MSG, b"Nexthop has invalid gateway\0");
        p.extend_from_slice(&tail.0);
        assert_eq!(
            ext_ack_message(&p, NLM_F_CAPPED | NLM_F_ACK_TLVS).as_deref(),
            Some("Nexthop has invalid gateway")
        );
        assert_eq!(ext_ack_message(&p, NLM_F_CAPPED), None);
        let e = NlError {
            errno: Errno::ENETUNREACH,
            message: Some("Nexthop has invalid gateway".into()),
        };
        assert_eq!(
            e.to_string(),
            "Network is unreachable (Nexthop has invalid gateway)"
        );
    }

    #[test]
    fn dumps_the_loopback_device() {
        let mut s = Socket::open().unwrap();
        let links = s.links().unwrap();
        let lo = links.iter().find(|l| l.name == "lo").expect("lo");
        assert!(lo.mtu > 0);
        s.addrs(AF_UNSPEC).unwrap();
        s.routes4().unwrap();
    }
}
