//! The guest's network as the runtime sets and sees it: devices (MTU,
//! up/down, IPv4 addresses) and the main table's IPv4 routes, through a
//! small synchronous rtnetlink socket (`netlink.rs`). Netlink rather than
//! ioctls: ioctls can neither remove an IPv4 address nor hold several
//! without alias devices, and /proc/net/route cannot tell the kernel's own
//! routes (for addresses) from the runtime's. The guest kernel has no
//! IPv6, so IPv6 addresses and routes are refused as not supported yet.

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Mutex;

use nix::errno::Errno;
use skiff_agent_protocol::agent::{Interface, IpAddress, Route};

use crate::netlink::{self, Link, NewRoute, NlError, RouteEntry, Socket};

/// Updates run one at a time: each reads the state it then changes.
static UPDATE: Mutex<()> = Mutex::new(());

/// Errors reading or changing the network.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    /// Bad input: INVALID_ARGUMENT.
    #[error("{0}")]
    Invalid(String),
    /// No such device: NOT_FOUND.
    #[error("{0}")]
    NotFound(String),
    /// The kernel refused `what`.
    #[error("{what}: {err}")]
    Kernel { what: String, err: NlError },
}

impl NetworkError {
    fn kernel(what: impl Into<String>) -> impl FnOnce(NlError) -> NetworkError {
        let what = what.into();
        move |err| NetworkError::Kernel { what, err }
    }

    /// The kernel's errno, for errors it returned.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            NetworkError::Kernel { err, .. } => Some(err.errno),
            _ => None,
        }
    }
}

fn read(err: NlError) -> NetworkError {
    NetworkError::Kernel {
        what: "read the network configuration".into(),
        err,
    }
}

/// "02:00:00:aa:bb:01" (or with '-') into its bytes.
pub fn parse_mac(s: &str) -> Result<Vec<u8>, NetworkError> {
    let bad = || NetworkError::Invalid(format!("invalid hardware address {s:?}"));
    let bytes = s
        .split([':', '-'])
        .map(|p| {
            if p.len() == 2 {
                u8::from_str_radix(p, 16).ok()
            } else {
                None
            }
        })
        .collect::<Option<Vec<u8>>>()
        .ok_or_else(bad)?;
    if bytes.len() < 6 {
        return Err(bad());
    }
    Ok(bytes)
}

/// Lower-case, colon-separated, as /sys/class/net/DEV/address shows it.
pub fn format_mac(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// An interface address: "10.0.0.2" with prefix_length 24, or
/// "10.0.0.2/24" with prefix_length 0 or 24.
pub fn parse_address(a: &IpAddress) -> Result<(Ipv4Addr, u8), NetworkError> {
    let shown = if a.prefix_length != 0 && !a.address.contains('/') {
        format!("{}/{}", a.address, a.prefix_length)
    } else {
        a.address.clone()
    };
    let bad = |why: &str| NetworkError::Invalid(format!("invalid address {shown:?}: {why}"));
    let (text, len) = match a.address.split_once('/') {
        Some((t, l)) => {
            let l: u32 = l.parse().map_err(|_| bad("bad prefix length"))?;
            if a.prefix_length != 0 && a.prefix_length != l {
                return Err(bad("prefix_length disagrees with the address"));
            }
            (t, l)
        }
        None => (a.address.as_str(), a.prefix_length),
    };
    let ip: IpAddr = text.parse().map_err(|_| bad("not an IP address"))?;
    let IpAddr::V4(ip) = ip else {
        return Err(NetworkError::Invalid(format!(
            "IPv6 addresses are not supported yet ({shown})"
        )));
    };
    if !(1..=32).contains(&len) {
        return Err(bad("prefix length must be 1 to 32"));
    }
    if ip.is_unspecified() || ip.is_broadcast() || ip.is_multicast() {
        return Err(bad("not a unicast address"));
    }
    Ok((ip, len as u8))
}

/// A route of an UpdateRoutes request, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct RouteSpec {
    pub dst: Ipv4Addr,
    pub dst_len: u8,
    pub gateway: Option<Ipv4Addr>,
    pub device: String,
}

/// How errors name a route: "default via 10.0.0.1 dev eth0".
pub fn route_text(r: &Route) -> String {
    let mut s = if r.destination.is_empty() {
        "(no destination)".to_string()
    } else {
        r.destination.clone()
    };
    if !r.gateway.is_empty() {
        s += &format!(" via {}", r.gateway);
    }
    if !r.device.is_empty() {
        s += &format!(" dev {}", r.device);
    }
    s
}

pub fn parse_route(r: &Route) -> Result<RouteSpec, NetworkError> {
    let bad = |why: &str| NetworkError::Invalid(format!("route \"{}\": {why}", route_text(r)));
    let v6 = || bad("IPv6 routes are not supported yet");
    let (dst, dst_len) = if r.destination == "default" {
        (Ipv4Addr::UNSPECIFIED, 0)
    } else {
        let (text, len) = match r.destination.split_once('/') {
            Some((t, l)) => (t, l.parse::<u8>().map_err(|_| bad("bad prefix length"))?),
            None => (r.destination.as_str(), 32),
        };
        let dst = match text.parse::<IpAddr>() {
            Ok(IpAddr::V4(a)) => a,
            Ok(IpAddr::V6(_)) => return Err(v6()),
            Err(_) => return Err(bad("destination is neither \"default\" nor an IPv4 CIDR")),
        };
        if len > 32 {
            return Err(bad("prefix length must be 0 to 32"));
        }
        let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
        if u32::from(dst) & !mask != 0 {
            return Err(bad("destination has host bits set for its prefix length"));
        }
        (dst, len)
    };
    let gateway = match r.gateway.as_str() {
        "" => None,
        g => match g.parse::<IpAddr>() {
            Ok(IpAddr::V4(a)) if !a.is_unspecified() => Some(a),
            Ok(IpAddr::V6(_)) => return Err(v6()),
            _ => return Err(bad("invalid gateway")),
        },
    };
    if r.device.is_empty() {
        return Err(bad("no device"));
    }
    Ok(RouteSpec {
        dst,
        dst_len,
        gateway,
        device: r.device.clone(),
    })
}

/// Link-scope routes first, so that the gateways of the others are
/// reachable when they are added; otherwise in request order.
pub fn order_routes<T>(mut routes: Vec<(RouteSpec, T)>) -> Vec<(RouteSpec, T)> {
    routes.sort_by_key(|(r, _)| r.gateway.is_some());
    routes
}

/// 169.254.0.0/16 and within it: left alone by UpdateRoutes.
fn is_link_local(dst: Ipv4Addr, dst_len: u8) -> bool {
    dst_len >= 16 && dst.is_link_local()
}

/// The device an UpdateInterface request means: by name, else by hardware
/// address. A device found by name whose address differs from a given one
/// is refused rather than changed.
pub fn find_link<'a>(
    links: &'a [Link],
    name: &str,
    mac: Option<&[u8]>,
) -> Result<&'a Link, NetworkError> {
    if let Some(l) = links.iter().find(|l| !name.is_empty() && l.name == name) {
        if let Some(m) = mac {
            if l.address != m {
                return Err(NetworkError::Invalid(format!(
                    "interface \"{name}\" has hardware address {}, not {}",
                    format_mac(&l.address),
                    format_mac(m)
                )));
            }
        }
        return Ok(l);
    }
    match (name.is_empty(), mac) {
        (true, None) => Err(NetworkError::Invalid(
            "interface has neither a name nor a hardware address".into(),
        )),
        (_, Some(m)) => links.iter().find(|l| l.address == m).ok_or_else(|| {
            NetworkError::NotFound(if name.is_empty() {
                format!("no interface with hardware address {}", format_mac(m))
            } else {
                format!(
                    "interface \"{name}\" not found, nor one with hardware address {}",
                    format_mac(m)
                )
            })
        }),
        (false, None) => Err(NetworkError::NotFound(format!(
            "interface \"{name}\" not found"
        ))),
    }
}

fn interfaces(nl: &mut Socket) -> Result<Vec<Interface>, NetworkError> {
    let links = nl.links().map_err(read)?;
    let addrs = nl.addrs(netlink::AF_UNSPEC).map_err(read)?;
    let mut by_name = BTreeMap::new();
    for l in links {
        let mut i = Interface::new();
        i.name = l.name.clone();
        i.up = l.flags & netlink::IFF_UP != 0;
        i.mtu = l.mtu;
        i.hardware_address = format_mac(&l.address);
        for a in addrs.iter().filter(|a| a.index == l.index) {
            let mut ip = IpAddress::new();
            ip.address = a.local.to_string();
            ip.prefix_length = a.prefix_len.into();
            i.addresses.push(ip);
        }
        by_name.insert(l.name, i);
    }
    Ok(by_name.into_values().collect())
}

fn routes(nl: &mut Socket) -> Result<Vec<Route>, NetworkError> {
    let names: BTreeMap<u32, String> = nl
        .links()
        .map_err(read)?
        .into_iter()
        .map(|l| (l.index, l.name))
        .collect();
    Ok(nl
        .routes4()
        .map_err(read)?
        .into_iter()
        .filter(|e| e.table == netlink::RT_TABLE_MAIN && e.kind == netlink::RTN_UNICAST)
        .map(|e| {
            let mut r = Route::new();
            r.destination = if e.dst_len == 0 {
                "default".into()
            } else {
                format!("{}/{}", e.dst, e.dst_len)
            };
            r.gateway = e.gateway.map(|g| g.to_string()).unwrap_or_default();
            r.device = e
                .oif
                .and_then(|i| names.get(&i).cloned())
                .unwrap_or_default();
            r
        })
        .collect())
}

fn open() -> Result<Socket, NetworkError> {
    Socket::open().map_err(NetworkError::kernel("open a netlink socket"))
}

/// Every device with its addresses (IPv4 and IPv6), by name.
pub fn list_interfaces() -> Result<Vec<Interface>, NetworkError> {
    interfaces(&mut open()?)
}

/// The main table's IPv4 unicast routes.
pub fn list_routes() -> Result<Vec<Route>, NetworkError> {
    routes(&mut open()?)
}

/// UpdateInterface: MTU (when nonzero), then the IPv4 addresses (exactly
/// the given ones; IPv6 link-local ones the kernel made stay), then up or
/// down. Returns the device as ListInterfaces shows it.
pub fn update_interface(req: &Interface) -> Result<Interface, NetworkError> {
    let want: Vec<(Ipv4Addr, u8)> = req
        .addresses
        .iter()
        .map(parse_address)
        .collect::<Result<_, _>>()?;
    let mac = match req.hardware_address.as_str() {
        "" => None,
        m => Some(parse_mac(m)?),
    };
    let _guard = UPDATE.lock().unwrap_or_else(|e| e.into_inner());
    let mut nl = open()?;
    let links = nl.links().map_err(read)?;
    let link = find_link(&links, &req.name, mac.as_deref())?.clone();
    let dev = &link.name;
    if req.mtu != 0 && req.mtu != link.mtu {
        nl.set_link(link.index, Some(req.mtu), None)
            .map_err(NetworkError::kernel(format!(
                "set MTU {} on interface \"{dev}\"",
                req.mtu
            )))?;
    }
    let current = |nl: &mut Socket| -> Result<Vec<netlink::Addr>, NetworkError> {
        Ok(nl
            .addrs(netlink::AF_INET)
            .map_err(read)?
            .into_iter()
            .filter(|a| a.index == link.index)
            .collect())
    };
    for a in current(&mut nl)? {
        let keep = matches!(a.local, IpAddr::V4(v) if want.contains(&(v, a.prefix_len)));
        if !keep {
            match nl.del_addr(&a) {
                // Gone with the primary address it was secondary to.
                Err(e) if e.errno == Errno::EADDRNOTAVAIL => {}
                r => r.map_err(NetworkError::kernel(format!(
                    "remove address {}/{} from interface \"{dev}\"",
                    a.local, a.prefix_len
                )))?,
            }
        }
    }
    let have = current(&mut nl)?;
    let mut added = HashSet::new();
    for &(ip, len) in &want {
        let present = have
            .iter()
            .any(|a| a.local == IpAddr::V4(ip) && a.prefix_len == len);
        if present || !added.insert((ip, len)) {
            continue;
        }
        nl.add_addr4(link.index, ip, len)
            .map_err(NetworkError::kernel(format!(
                "add address {ip}/{len} to interface \"{dev}\""
            )))?;
    }
    if req.up != (link.flags & netlink::IFF_UP != 0) {
        nl.set_link(link.index, None, Some(req.up))
            .map_err(NetworkError::kernel(format!(
                "set interface \"{dev}\" {}",
                if req.up { "up" } else { "down" }
            )))?;
    }
    interfaces(&mut nl)?
        .into_iter()
        .find(|i| i.name == *dev)
        .ok_or_else(|| NetworkError::NotFound(format!("interface \"{dev}\" disappeared")))
}

/// UpdateRoutes: the IPv4 routes of the devices the request names become
/// the given ones, besides the kernel's routes for their addresses and
/// link-local (169.254.0.0/16) ones. Routes of other devices are left
/// alone. If adding one fails, the routes removed are put back (best
/// effort) and the error names the route. Returns ListRoutes.
pub fn update_routes(req: &[Route]) -> Result<Vec<Route>, NetworkError> {
    let specs: Vec<(RouteSpec, String)> = req
        .iter()
        .map(|r| parse_route(r).map(|s| (s, route_text(r))))
        .collect::<Result<_, _>>()?;
    let _guard = UPDATE.lock().unwrap_or_else(|e| e.into_inner());
    let mut nl = open()?;
    let links = nl.links().map_err(read)?;
    let mut wanted = Vec::new();
    for (s, text) in order_routes(specs) {
        let Some(l) = links.iter().find(|l| l.name == s.device) else {
            return Err(NetworkError::NotFound(format!(
                "route \"{text}\": device \"{}\" not found",
                s.device
            )));
        };
        let new = NewRoute {
            dst: s.dst,
            dst_len: s.dst_len,
            gateway: s.gateway,
            oif: l.index,
        };
        if !wanted.iter().any(|(w, _)| *w == new) {
            wanted.push((new, text));
        }
    }
    let devices: HashSet<u32> = wanted.iter().map(|(w, _)| w.oif).collect();
    let is_wanted = |e: &RouteEntry| {
        wanted.iter().any(|(w, _)| {
            e.dst == w.dst
                && e.dst_len == w.dst_len
                && e.gateway == w.gateway
                && e.oif == Some(w.oif)
        })
    };
    // Remove the devices' other routes; keep the ones asked for again.
    let mut removed = Vec::new();
    for e in nl.routes4().map_err(read)? {
        let stale = e.table == netlink::RT_TABLE_MAIN
            && e.oif.is_some_and(|o| devices.contains(&o))
            && e.protocol != netlink::RTPROT_KERNEL
            && !is_link_local(e.dst, e.dst_len)
            && !is_wanted(&e);
        if !stale {
            continue;
        }
        match nl.del_route4(&e) {
            Ok(()) => removed.push(e),
            Err(err) if err.errno == Errno::ESRCH => {}
            Err(err) => {
                restore(&mut nl, &[], &removed);
                return Err(NetworkError::Kernel {
                    what: format!("remove route {}/{}", e.dst, e.dst_len),
                    err,
                });
            }
        }
    }
    // Add the new ones; a gateway reachable only through another gateway
    // route waits for a later pass.
    let mut added: Vec<NewRoute> = Vec::new();
    let mut pending = wanted;
    while !pending.is_empty() {
        let mut later = Vec::new();
        let mut first_err = None;
        let before = pending.len();
        for (w, text) in pending {
            match nl.add_route4(&w) {
                Ok(()) => added.push(w),
                Err(e) if e.errno == Errno::EEXIST && exists(&mut nl, &w).unwrap_or(false) => {}
                Err(e) if e.errno == Errno::ENETUNREACH && w.gateway.is_some() => {
                    first_err.get_or_insert(NetworkError::Kernel {
                        what: format!("add route \"{text}\""),
                        err: e,
                    });
                    later.push((w, text));
                }
                Err(e) => {
                    restore(&mut nl, &added, &removed);
                    return Err(NetworkError::Kernel {
                        what: format!("add route \"{text}\""),
                        err: e,
                    });
                }
            }
        }
        if later.len() == before {
            restore(&mut nl, &added, &removed);
            return Err(first_err.expect("a failed route"));
        }
        pending = later;
    }
    routes(&mut nl)
}

/// Whether the main table has this route already (as the kernel's own
/// route for an address, or from an earlier update).
fn exists(nl: &mut Socket, w: &NewRoute) -> Result<bool, NetworkError> {
    Ok(nl.routes4().map_err(read)?.iter().any(|e| {
        e.table == netlink::RT_TABLE_MAIN
            && e.dst == w.dst
            && e.dst_len == w.dst_len
            && e.gateway == w.gateway
            && e.oif == Some(w.oif)
    }))
}

/// Undoes a failed UpdateRoutes as far as it can.
fn restore(nl: &mut Socket, added: &[NewRoute], removed: &[RouteEntry]) {
    if let Ok(now) = nl.routes4() {
        for a in added {
            for e in now.iter().filter(|e| {
                e.table == netlink::RT_TABLE_MAIN
                    && e.dst == a.dst
                    && e.dst_len == a.dst_len
                    && e.gateway == a.gateway
                    && e.oif == Some(a.oif)
            }) {
                let _ = nl.del_route4(e);
            }
        }
    }
    // Link routes before gateway routes, as they were added.
    let mut removed = removed.to_vec();
    removed.sort_by_key(|e| e.gateway.is_some());
    for e in &removed {
        if let Err(err) = nl.restore_route4(e) {
            tracing::warn!("could not restore route {}/{}: {err}", e.dst, e.dst_len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(a: &str, len: u32) -> IpAddress {
        let mut i = IpAddress::new();
        i.address = a.into();
        i.prefix_length = len;
        i
    }

    fn route(d: &str, g: &str, dev: &str) -> Route {
        let mut r = Route::new();
        r.destination = d.into();
        r.gateway = g.into();
        r.device = dev.into();
        r
    }

    fn invalid(r: Result<impl std::fmt::Debug, NetworkError>) -> String {
        match r {
            Err(NetworkError::Invalid(m)) => m,
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[test]
    fn addresses_parse() {
        let v4 = Ipv4Addr::new(10, 0, 0, 2);
        assert_eq!(parse_address(&addr("10.0.0.2", 24)).unwrap(), (v4, 24));
        assert_eq!(parse_address(&addr("10.0.0.2/24", 0)).unwrap(), (v4, 24));
        assert_eq!(parse_address(&addr("10.0.0.2/24", 24)).unwrap(), (v4, 24));
        assert_eq!(parse_address(&addr("10.0.0.2", 32)).unwrap(), (v4, 32));
        let m = invalid(parse_address(&addr("10.0.0.300", 24)));
        assert_eq!(m, "invalid address \"10.0.0.300/24\": not an IP address");
        assert!(invalid(parse_address(&addr("10.0.0.2", 0))).contains("prefix length"));
        assert!(invalid(parse_address(&addr("10.0.0.2", 33))).contains("prefix length"));
        assert!(invalid(parse_address(&addr("10.0.0.2/16", 24))).contains("disagrees"));
        assert!(invalid(parse_address(&addr("10.0.0.2/x", 0))).contains("10.0.0.2/x"));
        assert!(invalid(parse_address(&addr("", 24))).contains("not an IP address"));
        assert!(invalid(parse_address(&addr("224.0.0.1", 4))).contains("unicast"));
        assert_eq!(
            invalid(parse_address(&addr("fd00::2", 64))),
            "IPv6 addresses are not supported yet (fd00::2/64)"
        );
    }

    #[test]
    fn hardware_addresses_parse() {
        assert_eq!(
            parse_mac("02:00:00:AA:bb:01").unwrap(),
            [2, 0, 0, 0xaa, 0xbb, 1]
        );
        assert_eq!(
            parse_mac("02-00-00-aa-bb-01").unwrap(),
            [2, 0, 0, 0xaa, 0xbb, 1]
        );
        assert_eq!(format_mac(&[2, 0, 0, 0xaa, 0xbb, 1]), "02:00:00:aa:bb:01");
        for bad in [
            "",
            "02:00:00:aa:bb",
            "02:00:00:aa:bb:1g",
            "0200.00aa.bb01",
            "2:0:0:a:b:1",
        ] {
            assert!(
                invalid(parse_mac(bad)).contains("invalid hardware address"),
                "{bad}"
            );
        }
    }

    #[test]
    fn routes_parse() {
        let r = parse_route(&route("default", "10.0.0.1", "eth0")).unwrap();
        assert_eq!(
            (r.dst, r.dst_len, r.gateway),
            (Ipv4Addr::UNSPECIFIED, 0, Some(Ipv4Addr::new(10, 0, 0, 1)))
        );
        let r = parse_route(&route("10.1.0.0/16", "", "eth0")).unwrap();
        assert_eq!(
            (r.dst, r.dst_len, r.gateway),
            (Ipv4Addr::new(10, 1, 0, 0), 16, None)
        );
        let r = parse_route(&route("169.254.1.1", "", "eth0")).unwrap();
        assert_eq!(r.dst_len, 32);
        assert_eq!(
            parse_route(&route("0.0.0.0/0", "", "eth0"))
                .unwrap()
                .dst_len,
            0
        );
        assert_eq!(
            invalid(parse_route(&route("10.0.0.0/33", "", "eth0"))),
            "route \"10.0.0.0/33 dev eth0\": prefix length must be 0 to 32"
        );
        assert!(invalid(parse_route(&route("10.0.0.1/24", "", "eth0"))).contains("host bits"));
        assert!(
            invalid(parse_route(&route("nowhere", "", "eth0"))).contains("\"nowhere dev eth0\"")
        );
        assert!(invalid(parse_route(&route("", "", "eth0")))
            .contains("route \"(no destination) dev eth0\""));
        assert!(
            invalid(parse_route(&route("default", "10.0.0", "eth0"))).contains("invalid gateway")
        );
        assert_eq!(
            invalid(parse_route(&route("default", "10.0.0.1", ""))),
            "route \"default via 10.0.0.1\": no device"
        );
        assert!(invalid(parse_route(&route("fd00::/64", "", "eth0")))
            .contains("IPv6 routes are not supported yet"));
        assert!(invalid(parse_route(&route("default", "fd00::1", "eth0"))).contains("IPv6"));
    }

    #[test]
    fn link_routes_come_first() {
        let specs: Vec<(RouteSpec, usize)> = [
            route("default", "10.0.0.1", "eth0"),
            route("10.0.0.0/24", "", "eth0"),
            route("10.2.0.0/16", "10.0.0.254", "eth0"),
            route("169.254.1.1", "", "eth0"),
        ]
        .iter()
        .enumerate()
        .map(|(i, r)| (parse_route(r).unwrap(), i))
        .collect();
        let order: Vec<usize> = order_routes(specs).into_iter().map(|(_, i)| i).collect();
        assert_eq!(order, [1, 3, 0, 2]);
        assert!(is_link_local(Ipv4Addr::new(169, 254, 1, 1), 32));
        assert!(!is_link_local(Ipv4Addr::new(169, 0, 0, 0), 8));
        assert!(!is_link_local(Ipv4Addr::UNSPECIFIED, 0));
    }

    #[test]
    fn devices_are_found_by_name_then_hardware_address() {
        let link = |index, name: &str, mac: [u8; 6]| Link {
            index,
            name: name.into(),
            flags: 0,
            mtu: 1500,
            address: mac.to_vec(),
        };
        let links = [
            link(1, "lo", [0; 6]),
            link(2, "eth0", [2, 0, 0, 0, 0, 1]),
            link(3, "eth1", [2, 0, 0, 0, 0, 2]),
        ];
        let m2 = [2, 0, 0, 0, 0, 2];
        assert_eq!(find_link(&links, "eth0", None).unwrap().index, 2);
        assert_eq!(find_link(&links, "", Some(&m2)).unwrap().index, 3);
        assert_eq!(find_link(&links, "net0", Some(&m2)).unwrap().index, 3);
        assert_eq!(
            invalid(find_link(&links, "eth0", Some(&m2))),
            "interface \"eth0\" has hardware address 02:00:00:00:00:01, not 02:00:00:00:00:02"
        );
        assert!(invalid(find_link(&links, "", None)).contains("neither"));
        match find_link(&links, "net0", None) {
            Err(NetworkError::NotFound(m)) => assert_eq!(m, "interface \"net0\" not found"),
            other => panic!("{other:?}"),
        }
        match find_link(&links, "", Some(&[2, 0, 0, 0, 0, 9])) {
            Err(NetworkError::NotFound(m)) => {
                assert_eq!(m, "no interface with hardware address 02:00:00:00:00:09")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn loopback_is_listed() {
        let l = list_interfaces().unwrap();
        let lo = l.iter().find(|i| i.name == "lo").expect("lo");
        assert!(lo
            .addresses
            .iter()
            .any(|a| a.address == "127.0.0.1" && a.prefix_length == 8));
        assert_eq!(lo.hardware_address, "00:00:00:00:00:00");
        assert!(lo.mtu > 0);
        list_routes().unwrap();
    }
}
