//! The guest's network as the runtime sees it. Listing reads the kernel's
//! own views (getifaddrs, /sys/class/net, /proc/net/route): no netlink
//! crate needed for that. Changing interfaces and routes is not done yet
//! (see the report): it needs netlink or a few ioctls.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use skiff_agent_protocol::agent::{Interface, IpAddress, Route};

/// Errors reading or changing the network.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("list interfaces: {0}")]
    List(nix::Error),
    #[error("read routes: {0}")]
    Routes(std::io::Error),
    #[error("{0} is not implemented yet")]
    Unimplemented(&'static str),
}

fn prefix_len(mask: Option<nix::sys::socket::SockaddrStorage>) -> u32 {
    if let Some(m) = mask {
        if let Some(v4) = m.as_sockaddr_in() {
            return u32::from(v4.ip()).count_ones();
        }
        if let Some(v6) = m.as_sockaddr_in6() {
            return u128::from(v6.ip()).count_ones();
        }
    }
    0
}

fn sys_value(name: &str, file: &str) -> String {
    std::fs::read_to_string(format!("/sys/class/net/{name}/{file}"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

pub fn list_interfaces() -> Result<Vec<Interface>, NetworkError> {
    let mut by_name: BTreeMap<String, Interface> = BTreeMap::new();
    for a in nix::ifaddrs::getifaddrs().map_err(NetworkError::List)? {
        let entry = by_name.entry(a.interface_name.clone()).or_insert_with(|| {
            let mut i = Interface::new();
            i.name = a.interface_name.clone();
            i.up = a.flags.contains(nix::net::if_::InterfaceFlags::IFF_UP);
            i.mtu = sys_value(&a.interface_name, "mtu").parse().unwrap_or(0);
            i.hardware_address = sys_value(&a.interface_name, "address");
            i
        });
        let Some(addr) = a.address else { continue };
        let text = if let Some(v4) = addr.as_sockaddr_in() {
            v4.ip().to_string()
        } else if let Some(v6) = addr.as_sockaddr_in6() {
            v6.ip().to_string()
        } else {
            continue;
        };
        let mut ip = IpAddress::new();
        ip.address = text;
        ip.prefix_length = prefix_len(a.netmask);
        entry.addresses.push(ip);
    }
    Ok(by_name.into_values().collect())
}

/// Parses /proc/net/route (IPv4; hex, little-endian addresses).
pub fn parse_proc_routes(text: &str) -> Vec<Route> {
    let hex = |s: &str| {
        u32::from_str_radix(s, 16)
            .ok()
            .map(|v| Ipv4Addr::from(v.swap_bytes()))
    };
    text.lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            if f.len() < 8 {
                return None;
            }
            let (dest, gw, mask) = (hex(f[1])?, hex(f[2])?, hex(f[7])?);
            let mut r = Route::new();
            r.device = f[0].to_string();
            r.destination = if u32::from(mask) == 0 {
                "default".to_string()
            } else {
                format!("{dest}/{}", u32::from(mask).count_ones())
            };
            if !gw.is_unspecified() {
                r.gateway = gw.to_string();
            }
            Some(r)
        })
        .collect()
}

pub fn list_routes() -> Result<Vec<Route>, NetworkError> {
    let text = std::fs::read_to_string("/proc/net/route").map_err(NetworkError::Routes)?;
    Ok(parse_proc_routes(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_routes_parse() {
        let t =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                 eth0\t00000000\t0100A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                 eth0\t0000A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        let r = parse_proc_routes(t);
        assert_eq!(r[0].destination, "default");
        assert_eq!(r[0].gateway, "192.168.0.1");
        assert_eq!(r[1].destination, "192.168.0.0/24");
        assert_eq!(r[1].gateway, "");
    }

    #[test]
    fn loopback_is_listed() {
        let l = list_interfaces().unwrap();
        let lo = l.iter().find(|i| i.name == "lo").expect("lo");
        assert!(lo
            .addresses
            .iter()
            .any(|a| a.address == "127.0.0.1" && a.prefix_length == 8));
    }
}
