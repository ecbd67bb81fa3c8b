//! Nodes on networks that block UDP reach the rendezvous over a TLS stream instead (TCP, 443 by
//! default), which carries the same datagrams as UDP would, framed. The server stays sans-IO
//! and endpoint-addressed: the daemon names each stream connection by an endpoint of its own
//! in [`PREFIX`] (`100::/64`, RFC 6666's discard-only prefix) and hands its datagrams to
//! [`super::Server::handle_datagram`] with [`super::Port::Stream`]; whatever the server sends
//! to such an endpoint ([`super::Transmit`] with `Port::Stream`) goes back down that
//! connection. The registry, relay attribution, cookies and outbox work on it unchanged.
//!
//! Nothing else may use those endpoints: the server drops a datagram from one at a UDP port
//! (only a spoofer sends from a discard-only prefix) and a stream datagram from anything else,
//! and never offers one to a peer as a candidate to punch. An endpoint carries a per-process
//! salt, so a registration restored from the store after a restart never names a connection
//! of the new process: what is sent there is dropped until the node registers again over its
//! new connection (which it does within a keepalive).

use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};

use super::Port;

/// The first 64 bits of every stream endpoint: `100::/64`.
pub const PREFIX: [u16; 4] = [0x0100, 0, 0, 0];

/// The endpoint of stream connection `conn` of the daemon whose per-process salt is `salt`.
pub fn stream_endpoint(salt: u32, conn: u32) -> SocketAddr {
    let ip = Ipv6Addr::new(
        PREFIX[0],
        PREFIX[1],
        PREFIX[2],
        PREFIX[3],
        (salt >> 16) as u16,
        salt as u16,
        (conn >> 16) as u16,
        conn as u16,
    );
    SocketAddr::V6(SocketAddrV6::new(ip, 443, 0, 0))
}

/// Whether `addr` names a stream connection (any salt).
pub fn is_stream_endpoint(addr: &SocketAddr) -> bool {
    match addr {
        SocketAddr::V6(v6) => v6.ip().segments()[..4] == PREFIX,
        SocketAddr::V4(_) => false,
    }
}

/// Where what is sent to `endpoint` leaves: down its stream, or from the main port.
pub fn port_of(endpoint: &SocketAddr) -> Port {
    if is_stream_endpoint(endpoint) {
        Port::Stream
    } else {
        Port::Main
    }
}

/// The connection number of a stream endpoint made with `salt`; `None` for any other address
/// (another process' salt included).
pub fn connection_of(addr: &SocketAddr, salt: u32) -> Option<u32> {
    let SocketAddr::V6(v6) = addr else {
        return None;
    };
    let s = v6.ip().segments();
    let ours = s[..4] == PREFIX && (u32::from(s[4]) << 16 | u32::from(s[5])) == salt;
    ours.then(|| u32::from(s[6]) << 16 | u32::from(s[7]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_name_their_connection_and_salt_and_nothing_else_is_one() {
        let e = stream_endpoint(0xdead_beef, 0x0001_0002);
        assert_eq!(e.to_string(), "[100::dead:beef:1:2]:443");
        assert!(is_stream_endpoint(&e));
        assert_eq!(connection_of(&e, 0xdead_beef), Some(0x0001_0002));
        assert_eq!(connection_of(&e, 7), None, "another process' connection");
        for other in [
            "198.51.100.7:443",
            "[2001:db8::1]:443",
            "[101::1]:443",
            "[::ffff:1.2.3.4]:1",
        ] {
            let other: SocketAddr = other.parse().unwrap();
            assert!(!is_stream_endpoint(&other), "{other}");
            assert_eq!(connection_of(&other, 0), None);
        }
    }
}
