//! The one change moat makes to a sandbox namespace's routing: the reserved
//! name range (`gateway::names::RANGE`) as an address of `lo`, which makes
//! the whole range local (the kernel adds a `local` route for a loopback
//! address's prefix). Guards against transparent egress needing any route
//! out: every address the sandbox's DNS hands out ends on `lo`, where only
//! the supervisor's sockets listen. One RTM_NEWADDR over rtnetlink, built
//! with netlink-packet-route, acknowledged or failed.
#![forbid(unsafe_code)]
use netlink_packet_core::{NetlinkMessage, NetlinkPayload, NLM_F_ACK, NLM_F_CREATE, NLM_F_EXCL, NLM_F_REQUEST};
use netlink_packet_route::address::{AddressAttribute, AddressMessage, AddressScope};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use nix::sys::socket::{recv, sendto, socket, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType};
use std::io;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

/// Adds `addr/prefix` to `lo` in the calling thread's network namespace.
pub(super) fn add_loopback_range(addr: Ipv4Addr, prefix: u8) -> io::Result<()> {
    let index = nix::net::if_::if_nametoindex("lo").map_err(io::Error::from)?;
    let mut msg = AddressMessage::default();
    msg.header.family = AddressFamily::Inet;
    msg.header.prefix_len = prefix;
    msg.header.scope = AddressScope::Host;
    msg.header.index = index;
    msg.attributes.push(AddressAttribute::Local(IpAddr::V4(addr)));
    msg.attributes.push(AddressAttribute::Address(IpAddr::V4(addr)));
    let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewAddress(msg));
    req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL;
    req.header.sequence_number = 1;
    req.finalize();
    let mut out = vec![0u8; req.buffer_len()];
    req.serialize(&mut out);
    let sock = socket(
        nix::sys::socket::AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )?;
    sendto(sock.as_raw_fd(), &out, &NetlinkAddr::new(0, 0), MsgFlags::empty())?;
    // The acknowledgement: an error message whose code is 0 (or the errno).
    let mut buf = [0u8; 4096];
    let n = recv(sock.as_raw_fd(), &mut buf, MsgFlags::empty())?;
    let bad = |what: String| io::Error::new(io::ErrorKind::InvalidData, what);
    let ack = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&buf[..n])
        .map_err(|e| bad(format!("rtnetlink answer: {e}")))?;
    match ack.payload {
        NetlinkPayload::Error(e) if e.code.is_none() => Ok(()),
        NetlinkPayload::Error(e) => Err(e.to_io()),
        _ => Err(bad("rtnetlink answered RTM_NEWADDR with no acknowledgement".into())),
    }
}
