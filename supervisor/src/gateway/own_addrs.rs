//! The host's own addresses: every address on every interface of the
//! network namespace the gateway dials from, kept current. Guards against a
//! name that resolves to the host itself (a LAN address, a bridge gateway
//! such as docker0's, a public address on the host's uplink) opening the
//! services listening on the host to a sandbox: the SSRF guard knows address
//! ranges, this knows the host.
//!
//! Reading the addresses (getifaddrs, a netlink dump) costs tens of
//! microseconds, so the list is cached, and a netlink socket subscribed to
//! address changes says when it is stale: each check drains that socket
//! without blocking (one recv), and any message, or any error such as an
//! overrun, makes the next check read the addresses again. The kernel queues
//! the notification before `ip addr add` returns, so an address is refused
//! from the moment it exists.
#![forbid(unsafe_code)]
use nix::sys::socket::{self, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};

/// The cached addresses and the subscription that invalidates them.
struct State {
    watch: Option<OwnedFd>,
    addrs: Option<Arc<Vec<IpAddr>>>,
}

static STATE: Mutex<State> = Mutex::new(State { watch: None, addrs: None });

/// The host's addresses now. Err when they cannot be read (the caller
/// refuses the destination: it cannot tell the host apart).
pub(super) fn current() -> std::io::Result<Arc<Vec<IpAddr>>> {
    let mut st = STATE.lock().unwrap_or_else(|p| p.into_inner());
    if st.watch.is_none() {
        // Subscribe before reading, so no change can fall between the two.
        st.watch = subscribe().map_err(|e| tracing::warn!(event = "own_addrs_unwatched", error = %e, "address changes are not watched; the host's addresses are read on every check")).ok();
        st.addrs = None;
    }
    let stale = match &st.watch {
        Some(fd) => changed(fd),
        None => true,
    };
    match &st.addrs {
        Some(a) if !stale => Ok(a.clone()),
        _ => {
            let a = Arc::new(read()?);
            st.addrs = Some(a.clone());
            Ok(a)
        }
    }
}

/// A netlink socket that receives a message for every address added or removed.
fn subscribe() -> nix::Result<OwnedFd> {
    let fd = socket::socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )?;
    let groups = (libc::RTMGRP_IPV4_IFADDR | libc::RTMGRP_IPV6_IFADDR) as u32;
    socket::bind(fd.as_raw_fd(), &NetlinkAddr::new(0, groups))?;
    Ok(fd)
}

/// Drains the subscription; true when anything arrived (or it failed).
fn changed(fd: &OwnedFd) -> bool {
    let mut buf = [0u8; 4096];
    let mut any = false;
    loop {
        match socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
            Ok(0) => return true,
            Ok(_) => any = true,
            Err(nix::errno::Errno::EAGAIN) => return any,
            Err(nix::errno::Errno::EINTR) => continue,
            // ENOBUFS: the queue overran and messages were lost.
            Err(_) => return true,
        }
    }
}

/// Every address of every interface, up or down.
fn read() -> std::io::Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for ifa in nix::ifaddrs::getifaddrs()? {
        let Some(a) = ifa.address else { continue };
        let ip = match (a.as_sockaddr_in(), a.as_sockaddr_in6()) {
            (Some(v4), _) => IpAddr::V4(v4.ip()),
            (_, Some(v6)) => IpAddr::V6(v6.ip()),
            _ => continue,
        };
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_loopback_and_stays_cached_until_a_change() {
        let first = current().unwrap();
        assert!(first.contains(&IpAddr::from([127, 0, 0, 1])), "{first:?}");
        let again = current().unwrap();
        assert_eq!(first, again);
    }

    /// Measures a check (cached) against reading the addresses each time;
    /// `cargo test -p moat-supervisor --release own_addrs -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn cost_of_a_check() {
        let n = 20_000;
        current().unwrap();
        let t = std::time::Instant::now();
        for _ in 0..n {
            std::hint::black_box(current().unwrap());
        }
        let cached = t.elapsed() / n;
        let t = std::time::Instant::now();
        for _ in 0..n / 10 {
            std::hint::black_box(read().unwrap());
        }
        let fresh = t.elapsed() / (n / 10);
        println!("own_addrs: cached check {cached:?}, getifaddrs {fresh:?}");
    }
}
