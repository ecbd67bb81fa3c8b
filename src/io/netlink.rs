//! Interface configuration through rtnetlink: what `ip link set`, `ip addr add` and
//! `ip route add` would do, without shelling out.

use std::io;
use std::net::Ipv6Addr;
use std::time::{Duration, Instant};

use futures::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use netlink_packet_route::link::{AfSpecInet6, AfSpecUnspec, In6AddrGenMode, LinkAttribute};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteHeader, RouteType};
use rtnetlink::{Handle, LinkUnspec, RouteMessageBuilder};

/// A failed interface operation, naming the interface and the step that failed.
#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    /// Display is the context only, here and in `Failed`; the OS error is the `source()`
    /// (anyhow's `{:#}` or `Debug` prints both).
    #[error("opening a netlink socket failed")]
    Socket(#[source] io::Error),
    #[error("interface {0} does not exist (was the TUN device created, and is it still open?)")]
    NotFound(String),
    #[error(
        "{op} on interface {name}: permission denied — CAP_NET_ADMIN is needed; run as root or \
         grant it (e.g. `sudo pilotd up`)"
    )]
    PermissionDenied { name: String, op: &'static str },
    #[error(
        "{op} on interface {name}: IPv6 is disabled — enable it with `sysctl -w \
         net.ipv6.conf.all.disable_ipv6=0 net.ipv6.conf.{name}.disable_ipv6=0` (and do not boot \
         with ipv6.disable=1)"
    )]
    Ipv6Disabled { name: String, op: &'static str },
    #[error("{op} on interface {name}: invalid argument: {why}")]
    InvalidArgument {
        name: String,
        op: &'static str,
        why: String,
    },
    #[error("{op} on interface {name} failed")]
    Failed {
        name: String,
        op: &'static str,
        #[source]
        source: io::Error,
    },
}

/// IPv6 refuses to run on a link with a smaller MTU (RFC 8200), and the kernel would
/// silently disable IPv6 on the interface, making the address step fail obscurely.
const IPV6_MIN_MTU: u32 = 1280;

/// Configure an existing interface: 1) IPv6 addr_gen_mode = none (IN6_ADDR_GEN_MODE_NONE,
/// via the IFLA_AF_SPEC/Inet6 AddrGenMode attribute) BEFORE link up so the kernel adds no
/// fe80:: address and sends no router solicitations into the tunnel; 2) MTU; 3) the
/// address `addr/prefix_len` with IFA_F_NODAD (usable at once, no tentative state); 4) link
/// up; 5) make sure the route for the prefix (e.g. fd70::/80) via this interface exists
/// (the kernel adds one for the address prefix; add it explicitly if absent, ignore EEXIST).
///
/// Must run inside a tokio runtime (either flavor). Idempotent: running it again on an
/// already configured interface succeeds.
pub async fn configure_interface(
    name: &str,
    addr: Ipv6Addr,
    prefix_len: u8,
    mtu: u32,
) -> Result<(), NetlinkError> {
    let invalid = |op, why: String| NetlinkError::InvalidArgument {
        name: name.into(),
        op,
        why,
    };
    if mtu < IPV6_MIN_MTU {
        return Err(invalid(
            "setting MTU",
            format!("{mtu} is below IPv6's minimum of 1280"),
        ));
    }
    if prefix_len > 128 {
        return Err(invalid(
            "adding address",
            format!("prefix length {prefix_len} > 128"),
        ));
    }
    let handle = connect()?;
    let index = link_index(&handle, name)
        .await?
        .ok_or_else(|| NetlinkError::NotFound(name.into()))?;
    let fail = |op| move |e| classify(name, op, e);

    // 1) No kernel-generated link-local address, hence no RS/DAD traffic into the tunnel.
    let gen_mode =
        LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(vec![AfSpecInet6::AddrGenMode(
            In6AddrGenMode::None,
        )])]);
    let msg = LinkUnspec::new_with_index(index)
        .append_extra_attribute(gen_mode)
        .build();
    handle
        .link()
        .change(msg)
        .execute()
        .await
        .map_err(fail("setting addrgenmode none"))?;

    // 2) MTU.
    let msg = LinkUnspec::new_with_index(index).mtu(mtu).build();
    handle
        .link()
        .change(msg)
        .execute()
        .await
        .map_err(fail("setting MTU"))?;

    // 3) Address, with NODAD so it is not "tentative": binding to it works immediately.
    // `replace` makes a second run update the entry instead of failing with EEXIST.
    let mut req = handle
        .address()
        .add(index, addr.into(), prefix_len)
        .replace();
    let msg = req.message_mut();
    msg.header.flags = AddressHeaderFlags::Nodad;
    msg.attributes
        .push(AddressAttribute::Flags(AddressFlags::Nodad));
    req.execute().await.map_err(fail("adding address"))?;

    // 4) Up.
    let msg = LinkUnspec::new_with_index(index).up().build();
    handle
        .link()
        .change(msg)
        .execute()
        .await
        .map_err(fail("bringing link up"))?;

    // 5) Prefix route.
    let net = prefix_network(addr, prefix_len);
    ensure_prefix_route(&handle, name, index, net, prefix_len).await?;

    // 6) Not part of the recipe but needed for "usable at once", see the function.
    wait_until_local(&handle, name, addr).await?;
    tracing::info!(%name, %addr, prefix_len, mtu, "interface configured");
    Ok(())
}

/// Delete the link if it still exists (used on shutdown; Ok if already gone).
pub async fn delete_interface(name: &str) -> Result<(), NetlinkError> {
    let handle = connect()?;
    let Some(index) = link_index(&handle, name).await? else {
        return Ok(());
    };
    match handle.link().del(index).execute().await {
        // Gone between lookup and delete (e.g. its TUN fd was closed meanwhile).
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(()),
        other => other.map_err(|e| classify(name, "deleting link", e)),
    }
}

/// True if a link with this name exists (for tests/diagnostics).
pub async fn interface_exists(name: &str) -> Result<bool, NetlinkError> {
    let handle = connect()?;
    Ok(link_index(&handle, name).await?.is_some())
}

/// A netlink connection whose I/O task runs on the caller's runtime. The task ends by
/// itself once the returned handle (and its clones) are dropped.
fn connect() -> Result<Handle, NetlinkError> {
    let (conn, handle, _unsolicited) = rtnetlink::new_connection().map_err(NetlinkError::Socket)?;
    tokio::spawn(conn);
    Ok(handle)
}

/// The interface index, or None if there is no such link.
async fn link_index(handle: &Handle, name: &str) -> Result<Option<u32>, NetlinkError> {
    let mut links = handle.link().get().match_name(name).execute();
    match links.try_next().await {
        Ok(Some(link)) => Ok(Some(link.header.index)),
        Ok(None) => Ok(None),
        Err(e) if errno(&e) == Some(libc::ENODEV) => Ok(None),
        Err(e) => Err(classify(name, "looking up link", e)),
    }
}

/// The kernel normally adds the prefix route along with the address; check rather than
/// trust, because someone may have deleted it (the daemon may re-run configuration).
async fn ensure_prefix_route(
    handle: &Handle,
    name: &str,
    index: u32,
    net: Ipv6Addr,
    prefix_len: u8,
) -> Result<(), NetlinkError> {
    let present = has_prefix_route(handle, index, net, prefix_len).await;
    if present.map_err(|e| classify(name, "listing routes", e))? {
        return Ok(());
    }
    let route = RouteMessageBuilder::<Ipv6Addr>::new()
        .destination_prefix(net, prefix_len)
        .output_interface(index)
        .build();
    match handle.route().add(route).execute().await {
        Err(e) if errno(&e) == Some(libc::EEXIST) => Ok(()),
        other => other.map_err(|e| classify(name, "adding prefix route", e)),
    }
}

/// Even with IFA_F_NODAD the kernel finishes adding an address in its DAD work item,
/// which installs the local route only after RTM_NEWADDR has been acknowledged. Until then
/// packets to the address written into the TUN are dropped (Ip6InAddrErrors); measured:
/// about one configuration in eight lost the first packet. So wait until a route lookup
/// for the address says "local". The work item runs within microseconds, so this polls
/// without a timer (the daemon's runtime need not enable tokio's time driver).
async fn wait_until_local(handle: &Handle, name: &str, addr: Ipv6Addr) -> Result<(), NetlinkError> {
    let deadline = Instant::now() + Duration::from_secs(2);
    for attempt in 1u32.. {
        let lookup = RouteMessageBuilder::<Ipv6Addr>::new()
            .destination_prefix(addr, 128)
            .build();
        let reply = handle.route().get(lookup).execute().try_next().await;
        let local = match reply {
            Ok(route) => route.is_some_and(|r| r.header.kind == RouteType::Local),
            Err(e) if errno(&e) == Some(libc::ENETUNREACH) => false,
            Err(e) => return Err(classify(name, "looking up the local route", e)),
        };
        if local {
            tracing::debug!(%name, attempt, "address is local");
            return Ok(());
        }
        if Instant::now() >= deadline {
            break;
        }
        tokio::task::yield_now().await;
    }
    tracing::warn!(%name, %addr, "address still not local after 2 s; continuing anyway");
    Ok(())
}

/// Whether the main table has `net/prefix_len` routed out of `index`.
async fn has_prefix_route(
    handle: &Handle,
    index: u32,
    net: Ipv6Addr,
    prefix_len: u8,
) -> Result<bool, rtnetlink::Error> {
    // No destination attribute means a dump of all IPv6 routes; filter here because the
    // kernel only filters dumps when strict checking is enabled.
    let mut routes = handle
        .route()
        .get(RouteMessageBuilder::<Ipv6Addr>::new().build())
        .execute();
    while let Some(route) = routes.try_next().await? {
        let attrs = &route.attributes;
        let table = attrs.iter().find_map(|a| match a {
            RouteAttribute::Table(t) => Some(*t),
            _ => None,
        });
        let in_main =
            table.unwrap_or(u32::from(route.header.table)) == u32::from(RouteHeader::RT_TABLE_MAIN);
        let matches = in_main
            && route.header.destination_prefix_length == prefix_len
            && attrs.contains(&RouteAttribute::Destination(RouteAddress::Inet6(net)))
            && attrs.contains(&RouteAttribute::Oif(index));
        if matches {
            return Ok(true);
        }
    }
    Ok(false)
}

/// `addr` with the host bits cleared.
fn prefix_network(addr: Ipv6Addr, prefix_len: u8) -> Ipv6Addr {
    let mask = u128::MAX
        .checked_shl(128 - u32::from(prefix_len))
        .unwrap_or(0);
    Ipv6Addr::from(u128::from(addr) & mask)
}

/// The errno carried by a kernel NACK, if that is what `e` is.
fn errno(e: &rtnetlink::Error) -> Option<i32> {
    match e {
        rtnetlink::Error::NetlinkError(msg) => Some(msg.raw_code().abs()),
        _ => None,
    }
}

fn classify(name: &str, op: &'static str, e: rtnetlink::Error) -> NetlinkError {
    let name = name.to_owned();
    match errno(&e) {
        // Netlink reports a missing CAP_NET_ADMIN as EPERM. EACCES is what adding an IPv6
        // address to an interface with disable_ipv6=1 gives (root or not), and
        // EAFNOSUPPORT what IPv6 requests give when IPv6 is off altogether.
        Some(libc::EPERM) => NetlinkError::PermissionDenied { name, op },
        Some(libc::EACCES | libc::EAFNOSUPPORT) => NetlinkError::Ipv6Disabled { name, op },
        Some(libc::ENODEV) => NetlinkError::NotFound(name),
        Some(code) => NetlinkError::Failed {
            name,
            op,
            source: io::Error::from_raw_os_error(code),
        },
        None => NetlinkError::Failed {
            name,
            op,
            source: io::Error::other(e),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::io::test_support::{
        in_new_netns, ip_here, privileged_or_skip, run_here, unique_ifname,
    };
    use crate::io::tun::TunDevice;

    #[test]
    fn prefix_network_clears_host_bits() {
        let a: Ipv6Addr = "fd70:1:2:3:4:5:6:7".parse().unwrap();
        assert_eq!(
            prefix_network(a, 80),
            "fd70:1:2:3:4::".parse::<Ipv6Addr>().unwrap()
        );
        assert_eq!(prefix_network(a, 128), a);
        assert_eq!(prefix_network(a, 0), Ipv6Addr::UNSPECIFIED);
    }

    #[test]
    fn too_small_mtu_is_refused_with_a_reason() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let err = rt
            .block_on(configure_interface("pilot0", Ipv6Addr::LOCALHOST, 80, 1200))
            .unwrap_err();
        assert!(err.to_string().contains("1280"), "{err}");
    }

    fn current_thread_runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn configure_sets_address_mtu_route_and_no_link_local() {
        if !privileged_or_skip("configure_sets_address_mtu_route_and_no_link_local") {
            return;
        }
        in_new_netns(|| {
            let rt = current_thread_runtime();
            let name = unique_ifname();
            let tun = TunDevice::create(&name).expect("create TUN");
            let addr: Ipv6Addr = "fd70::1:2:3".parse().unwrap();
            rt.block_on(configure_interface(&name, addr, 80, 1420))
                .expect("configure");
            // Idempotent: the daemon may re-run it after a partial failure.
            rt.block_on(configure_interface(&name, addr, 80, 1420))
                .expect("configure again");

            let addrs = ip_here(&["-6", "addr", "show", "dev", &name]);
            assert!(addrs.contains("inet6 fd70::1:2:3/80"), "{addrs}");
            assert!(!addrs.contains("fe80"), "no link-local expected: {addrs}");
            assert!(!addrs.contains("tentative"), "{addrs}");
            assert_eq!(addrs.matches("inet6").count(), 1, "{addrs}");
            let link = ip_here(&["link", "show", "dev", &name]);
            assert!(link.contains("mtu 1420") && link.contains(",UP"), "{link}");
            let routes = ip_here(&["-6", "route", "show", "dev", &name]);
            assert!(routes.contains("fd70::/80"), "{routes}");

            // The explicit route step on its own restores a deleted prefix route.
            ip_here(&["-6", "route", "del", "fd70::/80", "dev", &name]);
            rt.block_on(async {
                let handle = connect().unwrap();
                let index = link_index(&handle, &name).await.unwrap().unwrap();
                let net = prefix_network(addr, 80);
                assert!(!has_prefix_route(&handle, index, net, 80).await.unwrap());
                ensure_prefix_route(&handle, &name, index, net, 80)
                    .await
                    .unwrap();
                assert!(has_prefix_route(&handle, index, net, 80).await.unwrap());
                ensure_prefix_route(&handle, &name, index, net, 80)
                    .await
                    .unwrap();
            });
            let routes = ip_here(&["-6", "route", "show", "dev", &name]);
            assert_eq!(routes.matches("fd70::/80").count(), 1, "{routes}");

            // NODAD: binding to the address works at once (a tentative one gives EADDRNOTAVAIL).
            std::net::UdpSocket::bind((addr, 0)).expect("bind to configured address");

            // Nothing may come out of the TUN unprompted: above all no router solicitation.
            std::thread::sleep(std::time::Duration::from_secs(3));
            let mut buf = [0u8; 2048];
            while let Ok(n) = tun.recv(&mut buf) {
                let icmp6_type = (n > 40 && buf[0] >> 4 == 6 && buf[6] == 58).then(|| buf[40]);
                assert_ne!(
                    icmp6_type,
                    Some(133),
                    "router solicitation sent into the TUN"
                );
                eprintln!(
                    "note: unprompted packet from TUN: {:02x?}",
                    &buf[..n.min(48)]
                );
            }

            assert!(rt.block_on(interface_exists(&name)).unwrap());
            rt.block_on(delete_interface(&name)).expect("delete");
            assert!(!rt.block_on(interface_exists(&name)).unwrap());
            // Already gone is fine (shutdown after the TUN fd was closed).
            rt.block_on(delete_interface(&name)).expect("delete again");
            drop(tun);
        });
    }

    #[test]
    fn configuring_a_missing_interface_names_it() {
        if !privileged_or_skip("configuring_a_missing_interface_names_it") {
            return;
        }
        in_new_netns(|| {
            let rt = current_thread_runtime();
            let err = rt
                .block_on(configure_interface(
                    "ptnosuch0",
                    Ipv6Addr::LOCALHOST,
                    80,
                    1420,
                ))
                .unwrap_err();
            assert!(
                matches!(&err, NetlinkError::NotFound(n) if n == "ptnosuch0"),
                "{err:?}"
            );
        });
    }

    #[test]
    fn disabled_ipv6_is_named_as_the_cause() {
        if !privileged_or_skip("disabled_ipv6_is_named_as_the_cause") {
            return;
        }
        in_new_netns(|| {
            let rt = current_thread_runtime();
            let name = unique_ifname();
            let _tun = TunDevice::create(&name).expect("create TUN");
            let key = format!("net.ipv6.conf.{name}.disable_ipv6=1");
            run_here("sysctl", &["-qw", &key]);
            let err = rt
                .block_on(configure_interface(
                    &name,
                    "fd70::1".parse().unwrap(),
                    80,
                    1420,
                ))
                .unwrap_err();
            assert!(matches!(err, NetlinkError::Ipv6Disabled { .. }), "{err:?}");
            assert!(err.to_string().contains("disable_ipv6=0"), "{err}");
        });
    }

    #[test]
    fn without_cap_net_admin_it_says_so() {
        if !privileged_or_skip("netlink without_cap_net_admin_it_says_so") {
            return;
        }
        in_new_netns(|| {
            let rt = current_thread_runtime();
            let name = unique_ifname();
            let _tun = TunDevice::create(&name).expect("create TUN");
            // Drop root for this thread only (see the same trick in tun.rs).
            // SAFETY: plain syscall; the thread exits after the check.
            let rc = unsafe { libc::syscall(libc::SYS_setresuid, 65534, 65534, 65534) };
            assert_eq!(rc, 0);
            let err = rt
                .block_on(configure_interface(
                    &name,
                    "fd70::1".parse().unwrap(),
                    80,
                    1420,
                ))
                .unwrap_err();
            assert!(
                matches!(err, NetlinkError::PermissionDenied { .. }),
                "{err:?}"
            );
            let msg = err.to_string();
            assert!(
                msg.contains(&name) && msg.contains("CAP_NET_ADMIN"),
                "{msg}"
            );
        });
    }
}
