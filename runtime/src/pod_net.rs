//! A pod's network carried into its VM, from discovery to teardown, as
//! Kata's "tcfilter" model does:
//! for each interface the CNI plugin put in the pod's network namespace
//! (a veth with an IP), a tap device is made in that namespace for a
//! virtio-net device with the veth's MAC, and tc redirects every frame
//! between the veth and the tap in both directions (ingress qdisc, u32
//! match-all, mirred egress redirect). The guest gets the veth's addresses
//! and routes through the agent.
//!
//! The steps, in order: [`netns_of`] and [`inspect`] (discover),
//! [`PodNetwork::vm_devices`] (the VMM's `NetConfig`s; the sandbox names
//! the namespace to the VMM, `VmmHandle::spawn_in_netns`, which makes the
//! taps there), [`connect`] (tap up and tc, once the VMM made the taps),
//! [`configure_guest`] (the guest's side, through the agent), and
//! [`disconnect`] (teardown).
//!
//! netlink through rtnetlink; it is async, so each operation runs on a
//! short-lived current-thread tokio runtime, on a thread that has entered
//! the pod's network namespace (netlink sockets and taps belong to the
//! namespace of the thread that opens them).

use std::fs::File;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use futures_util::TryStreamExt;
use nix::sched::{setns, CloneFlags};
use oci_spec::runtime::{LinuxNamespaceType, Spec};
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType,
};
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};
use serde::{Deserialize, Serialize};
use skiff_agent_protocol::agent::{Interface, IpAddress, Route, Routes};
use skiff_vmm::config::{parse_mac, DeviceConfig, NetConfig};

use crate::agent::{Agent, AgentError};

/// Tap devices are named `skiff-tap<N>` in the pod's namespace.
const TAP_PREFIX: &str = "skiff-tap";
/// tc takes the protocol in network byte order (`protocol all`).
const PROTOCOL_ALL: u16 = (libc::ETH_P_ALL as u16).to_be();

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("open network namespace {path}: {err}")]
    OpenNetns { path: PathBuf, err: std::io::Error },
    #[error("enter network namespace {path}: {err}")]
    EnterNetns { path: PathBuf, err: nix::Error },
    #[error("netlink: {0}")]
    Connect(std::io::Error),
    #[error("netlink {what}: {err}")]
    Netlink { what: String, err: rtnetlink::Error },
    #[error("network thread: {0}")]
    Thread(std::io::Error),
    #[error("tap {0} was not created in the pod's network namespace")]
    NoTap(String),
    #[error("interface {name} has a bad MAC {mac:?}")]
    BadMac { name: String, mac: String },
}

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> NetworkError {
    let what = what.into();
    move |err| NetworkError::Netlink { what, err }
}

/// An interface of the pod and the tap that carries it into the VM.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PodInterface {
    /// The CNI plugin's interface (e.g. `eth0`, a veth).
    pub name: String,
    pub mac: String,
    pub mtu: u32,
    /// `address/prefix`, IPv4 and IPv6.
    pub addresses: Vec<String>,
    /// The tap made for it in the same namespace.
    pub tap: String,
}

/// A route of the pod's namespace (main table, not the kernel's own
/// per-address routes).
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PodRoute {
    /// "default" or a CIDR.
    pub destination: String,
    pub gateway: Option<String>,
    /// The pod interface's name.
    pub device: String,
}

/// Everything needed to wire (and unwire) a pod's network.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PodNetwork {
    pub netns: PathBuf,
    pub interfaces: Vec<PodInterface>,
    pub routes: Vec<PodRoute>,
}

impl PodNetwork {
    /// One virtio-net device per interface, on its tap, with the
    /// interface's MAC (so the guest's interface answers for the pod's).
    pub fn vm_devices(&self) -> Result<Vec<DeviceConfig>, NetworkError> {
        self.interfaces
            .iter()
            .map(|iface| {
                let mac = parse_mac(&iface.mac).map_err(|_| NetworkError::BadMac {
                    name: iface.name.clone(),
                    mac: iface.mac.clone(),
                })?;
                Ok(DeviceConfig::Net(NetConfig {
                    tap: iface.tap.clone(),
                    mac: Some(mac),
                }))
            })
            .collect()
    }
}

/// The guest's side: brings the guest's loopback up, gives the guest's
/// interfaces (found by MAC) the pod's IPv4 addresses and MTU, then the
/// pod's IPv4 routes. The guest kernel has no IPv6: the pod's IPv6
/// addresses and routes are left out (and logged).
pub fn configure_guest(
    agent: &dyn Agent,
    sandbox_id: &str,
    net: Option<&PodNetwork>,
) -> Result<(), AgentError> {
    let mut lo = Interface::new();
    lo.name = "lo".into();
    lo.up = true;
    let mut localhost = IpAddress::new();
    localhost.address = "127.0.0.1".into();
    localhost.prefix_length = 8;
    lo.addresses.push(localhost);
    agent.update_interface(lo)?;
    let Some(net) = net else { return Ok(()) };
    let mut guest_names = std::collections::HashMap::new();
    for iface in &net.interfaces {
        let mut req = Interface::new();
        req.hardware_address = iface.mac.clone();
        req.mtu = iface.mtu;
        req.up = true;
        for cidr in &iface.addresses {
            let Some((address, prefix)) = cidr.split_once('/') else {
                continue;
            };
            if address.contains(':') {
                tracing::warn!("sandbox {sandbox_id}: IPv6 address {cidr} left out");
                continue;
            }
            let mut ip = IpAddress::new();
            ip.address = address.into();
            ip.prefix_length = prefix.parse().unwrap_or(0);
            req.addresses.push(ip);
        }
        let guest = agent.update_interface(req)?;
        guest_names.insert(iface.name.clone(), guest.name);
    }
    let mut routes = Routes::new();
    for r in &net.routes {
        let Some(device) = guest_names.get(&r.device) else {
            continue;
        };
        let v6 = |a: &str| a.contains(':');
        if v6(&r.destination) || r.gateway.as_deref().is_some_and(v6) {
            continue;
        }
        let mut route = Route::new();
        route.destination = r.destination.clone();
        route.gateway = r.gateway.clone().unwrap_or_default();
        route.device = device.clone();
        routes.routes.push(route);
    }
    let count = routes.routes.len();
    if count > 0 {
        agent.update_routes(routes)?;
    }
    tracing::info!(
        "sandbox {sandbox_id}: pod network in the guest: {guest_names:?}, {count} routes"
    );
    Ok(())
}

/// The network namespace the sandbox's spec names, if any. None means the
/// pod uses the host's network: the VM then gets no network interface.
pub fn netns_of(spec: &Spec) -> Option<PathBuf> {
    spec.linux()
        .as_ref()?
        .namespaces()
        .as_ref()?
        .iter()
        .find(|n| n.typ() == LinuxNamespaceType::Network)?
        .path()
        .clone()
}

/// Runs `f` with a netlink handle on a thread inside `netns`.
pub fn in_netns<T, F, Fut>(netns: &Path, f: F) -> Result<T, NetworkError>
where
    T: Send,
    F: FnOnce(Handle) -> Fut + Send,
    Fut: std::future::Future<Output = Result<T, NetworkError>>,
{
    let ns = File::open(netns).map_err(|err| NetworkError::OpenNetns {
        path: netns.into(),
        err,
    })?;
    std::thread::scope(|scope| {
        let worker = std::thread::Builder::new()
            .name("netns".into())
            .spawn_scoped(scope, || {
                enter(&ns, netns)?;
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_io()
                    .build()
                    .map_err(NetworkError::Thread)?;
                rt.block_on(async {
                    let (connection, handle, _) =
                        rtnetlink::new_connection().map_err(NetworkError::Connect)?;
                    tokio::spawn(connection);
                    f(handle).await
                })
            })
            .map_err(NetworkError::Thread)?;
        worker
            .join()
            .unwrap_or_else(|_| Err(NetworkError::Thread(std::io::Error::other("panicked"))))
    })
}

/// Moves the calling thread (one of [`in_netns`]'s) into the network
/// namespace `ns`.
fn enter(ns: &File, path: &Path) -> Result<(), NetworkError> {
    setns(ns, CloneFlags::CLONE_NEWNET).map_err(|err| NetworkError::EnterNetns {
        path: path.into(),
        err,
    })
}

fn mac_text(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn link_name(link: &LinkMessage) -> Option<String> {
    link.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(n) => Some(n.clone()),
        _ => None,
    })
}

fn route_ip(addr: &RouteAddress) -> Option<IpAddr> {
    match addr {
        RouteAddress::Inet(v4) => Some(IpAddr::V4(*v4)),
        RouteAddress::Inet6(v6) => Some(IpAddr::V6(*v6)),
        _ => None,
    }
}

/// Reads the interfaces (all but loopback and our own taps), addresses and
/// routes of `netns`, naming a tap for each interface.
pub fn inspect(netns: &Path) -> Result<PodNetwork, NetworkError> {
    in_netns(netns, |handle| async move {
        let links: Vec<LinkMessage> = handle
            .link()
            .get()
            .execute()
            .try_collect()
            .await
            .map_err(nl("list links"))?;
        let mut interfaces = Vec::new();
        let mut names = std::collections::HashMap::new();
        for link in &links {
            let Some(name) = link_name(link) else {
                continue;
            };
            if link.header.flags.contains(LinkFlags::Loopback) || name.starts_with(TAP_PREFIX) {
                continue;
            }
            let mut iface = PodInterface {
                name: name.clone(),
                tap: format!("{TAP_PREFIX}{}", interfaces.len()),
                ..Default::default()
            };
            for attr in &link.attributes {
                match attr {
                    LinkAttribute::Address(mac) => iface.mac = mac_text(mac),
                    LinkAttribute::Mtu(mtu) => iface.mtu = *mtu,
                    _ => {}
                }
            }
            let mut addrs = handle
                .address()
                .get()
                .set_link_index_filter(link.header.index)
                .execute();
            while let Some(msg) = addrs.try_next().await.map_err(nl("list addresses"))? {
                for attr in &msg.attributes {
                    if let AddressAttribute::Address(ip) = attr {
                        if !(ip.is_ipv6() && is_link_local(ip)) {
                            iface
                                .addresses
                                .push(format!("{ip}/{}", msg.header.prefix_len));
                        }
                    }
                }
            }
            names.insert(link.header.index, name);
            interfaces.push(iface);
        }
        let mut routes = Vec::new();
        for family in [AddressFamily::Inet, AddressFamily::Inet6] {
            let query = match family {
                AddressFamily::Inet => RouteMessageBuilder::<std::net::Ipv4Addr>::new().build(),
                _ => RouteMessageBuilder::<std::net::Ipv6Addr>::new().build(),
            };
            let mut stream = handle.route().get(query).execute();
            while let Some(msg) = stream.try_next().await.map_err(nl("list routes"))? {
                if let Some(route) = pod_route(&msg, &names) {
                    routes.push(route);
                }
            }
        }
        Ok(PodNetwork {
            netns: netns.into(),
            interfaces,
            routes,
        })
    })
}

fn is_link_local(ip: &IpAddr) -> bool {
    match ip {
        IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
        IpAddr::V4(v4) => v4.is_link_local(),
    }
}

/// The routes worth giving the guest: unicast routes of the main table
/// that the kernel did not add for an address itself.
fn pod_route(
    msg: &RouteMessage,
    names: &std::collections::HashMap<u32, String>,
) -> Option<PodRoute> {
    if msg.header.protocol == RouteProtocol::Kernel
        || msg.header.kind != RouteType::Unicast
        || msg.header.table != 254
    {
        return None;
    }
    let mut destination = None;
    let mut gateway = None;
    let mut device = None;
    for attr in &msg.attributes {
        match attr {
            RouteAttribute::Destination(d) => destination = route_ip(d),
            RouteAttribute::Gateway(g) => gateway = route_ip(g),
            RouteAttribute::Oif(index) => device = names.get(index).cloned(),
            _ => {}
        }
    }
    if gateway.as_ref().is_some_and(is_link_local) {
        return None;
    }
    let destination = match destination {
        Some(d) if msg.header.destination_prefix_length > 0 => {
            format!("{d}/{}", msg.header.destination_prefix_length)
        }
        _ => "default".to_string(),
    };
    Some(PodRoute {
        destination,
        gateway: gateway.map(|g| g.to_string()),
        device: device?,
    })
}

async fn link_index(handle: &Handle, name: &str) -> Result<Option<u32>, NetworkError> {
    let mut links = handle.link().get().match_name(name.to_string()).execute();
    match links.try_next().await {
        Ok(link) => Ok(link.map(|l| l.header.index)),
        // ENODEV: no such link.
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
        Err(err) => Err(NetworkError::Netlink {
            what: format!("find {name}"),
            err,
        }),
    }
}

/// Sets each tap up with its interface's MTU and redirects all traffic
/// between the interface and its tap, both ways. The taps must exist (the
/// VMM made them when the VM started).
pub fn connect(net: &PodNetwork) -> Result<(), NetworkError> {
    let net = net.clone();
    in_netns(&net.netns.clone(), |handle| async move {
        for iface in &net.interfaces {
            let veth = link_index(&handle, &iface.name)
                .await?
                .ok_or_else(|| NetworkError::NoTap(iface.name.clone()))?;
            let tap = link_index(&handle, &iface.tap)
                .await?
                .ok_or_else(|| NetworkError::NoTap(iface.tap.clone()))?;
            let mut up = LinkUnspec::new_with_index(tap).up();
            if iface.mtu > 0 {
                up = up.mtu(iface.mtu);
            }
            handle
                .link()
                .set(up.build())
                .execute()
                .await
                .map_err(nl(format!("set {} up", iface.tap)))?;
            for (from, to, what) in [(veth, tap, &iface.name), (tap, veth, &iface.tap)] {
                handle
                    .qdisc()
                    .add(from as i32)
                    .ingress()
                    .execute()
                    .await
                    .map_err(nl(format!("add ingress qdisc to {what}")))?;
                handle
                    .traffic_filter(from as i32)
                    .add()
                    .parent(0xffff_0000)
                    .protocol(PROTOCOL_ALL)
                    .redirect(to)
                    .map_err(nl(format!("build redirect filter on {what}")))?
                    .execute()
                    .await
                    .map_err(nl(format!("add redirect filter on {what}")))?;
            }
        }
        Ok(())
    })
}

/// Removes what [`connect`] and the VMM added: the ingress qdiscs (and
/// their filters) and the taps. Missing pieces (the namespace itself gone
/// with the pod, a tap gone with the VM) are fine.
pub fn disconnect(net: &PodNetwork) -> Result<(), NetworkError> {
    if !net.netns.exists() {
        return Ok(());
    }
    let net = net.clone();
    in_netns(&net.netns.clone(), |handle| async move {
        for iface in &net.interfaces {
            if let Some(veth) = link_index(&handle, &iface.name).await? {
                let mut del = handle.qdisc().del(veth as i32);
                del.message_mut().header.parent = 0xffff_fff1u32.into();
                // No ingress qdisc (never connected): nothing to remove.
                let _ = del.execute().await;
            }
            if let Some(tap) = link_index(&handle, &iface.tap).await? {
                handle
                    .link()
                    .del(tap)
                    .execute()
                    .await
                    .map_err(nl(format!("delete {}", iface.tap)))?;
            }
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use rtnetlink::packet_route::route::RouteHeader;

    #[test]
    fn mac_is_written_the_usual_way() {
        assert_eq!(
            mac_text(&[0x0a, 0x58, 0, 1, 0xfe, 0x10]),
            "0a:58:00:01:fe:10"
        );
    }

    #[test]
    fn netns_comes_from_the_spec() {
        let spec: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "linux": {"namespaces": [{"type": "pid"}, {"type": "network", "path": "/var/run/netns/cni-1"}]}
        }))
        .unwrap();
        assert_eq!(netns_of(&spec), Some(PathBuf::from("/var/run/netns/cni-1")));
        let host: Spec = serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "root": {"path": "rootfs"},
            "linux": {"namespaces": [{"type": "pid"}]}
        }))
        .unwrap();
        assert_eq!(netns_of(&host), None);
    }

    fn route(protocol: RouteProtocol, dst: Option<(&str, u8)>, gw: Option<&str>) -> RouteMessage {
        let mut msg = RouteMessage::default();
        msg.header = RouteHeader {
            address_family: AddressFamily::Inet,
            table: 254,
            protocol,
            kind: RouteType::Unicast,
            destination_prefix_length: dst.map_or(0, |d| d.1),
            ..Default::default()
        };
        if let Some((d, _)) = dst {
            msg.attributes
                .push(RouteAttribute::Destination(RouteAddress::Inet(
                    d.parse().unwrap(),
                )));
        }
        if let Some(g) = gw {
            msg.attributes
                .push(RouteAttribute::Gateway(RouteAddress::Inet(
                    g.parse().unwrap(),
                )));
        }
        msg.attributes.push(RouteAttribute::Oif(2));
        msg
    }

    #[test]
    fn kernel_routes_are_left_to_the_guest_and_others_kept() {
        let names = [(2, "eth0".to_string())].into_iter().collect();
        let default = route(RouteProtocol::Boot, None, Some("10.88.0.1"));
        assert_eq!(
            pod_route(&default, &names),
            Some(PodRoute {
                destination: "default".into(),
                gateway: Some("10.88.0.1".into()),
                device: "eth0".into()
            })
        );
        let subnet = route(RouteProtocol::Boot, Some(("10.0.0.0", 8)), None);
        assert_eq!(
            pod_route(&subnet, &names).unwrap().destination,
            "10.0.0.0/8"
        );
        let kernel = route(RouteProtocol::Kernel, Some(("10.88.0.0", 16)), None);
        assert_eq!(pod_route(&kernel, &names), None);
    }
}
