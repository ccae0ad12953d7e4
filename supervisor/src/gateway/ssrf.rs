//! SSRF guard for the egress gateway: which addresses it may dial for a sandbox, and the resolver producing them.
//! Threat: a sandbox using the gateway to reach host loopback services, cloud metadata (credential theft) or
//! private networks, via IPv6 embeddings of IPv4, odd IP spellings (`0x7f.1`), or DNS answers mixing public and
//! private addresses or changing between check and dial (callers dial exactly the addresses returned here),
//! or a name resolving to one of the host's own interface addresses (`own_addrs`), whatever its range.
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};

use ipnet::IpNet;

/// Env var naming a hosts-format file that answers name lookups before system DNS (tests' override).
pub const HOSTS_ENV: &str = "MOAT_GATEWAY_HOSTS";
/// Env var: `1` = names missing from the hosts override fail instead of going to system DNS.
pub const HOSTS_ONLY_ENV: &str = "MOAT_GATEWAY_HOSTS_ONLY";

/// Why the gateway will not dial an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{addr} is {reason}")]
pub struct Refusal {
    pub addr: IpAddr,
    pub reason: &'static str,
}

#[derive(Debug, thiserror::Error)]
pub enum SsrfError {
    #[error("destination refused")]
    Refused(#[from] Refusal),
    #[error("destination {0:?} is a cloud metadata endpoint and is never dialled")]
    Metadata(String),
    #[error("cannot resolve {host:?}")]
    Resolve {
        host: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{0:?} resolved to no address")]
    NoAddress(String),
    #[error("{0:?} is not a valid host name or IP literal")]
    BadHost(String),
    #[error("cannot list the host's own addresses to tell them apart")]
    OwnAddrs(#[source] std::io::Error),
    #[error("hosts file {}:{line}: {message}", path.display())]
    HostsFile { path: PathBuf, line: usize, message: String },
    #[error("cannot read hosts file {}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Cloud metadata services (one list with `policy suggest`): never
/// dialled, whatever `allowed_ips` says.
use crate::policy::metadata::{METADATA_NAMES, METADATA_V4, METADATA_V6};

/// IANA special-purpose (and other non-public) IPv4 ranges: refused unless an `allowed_ips` CIDR contains the
/// address. Loopback, link-local, multicast, broadcast and 0.0.0.0 are handled before (never opened).
const V4_SPECIAL: &[([u8; 4], u8, &str)] = &[
    ([0, 0, 0, 0], 8, "in 'this network' 0.0.0.0/8 and outside allowed_ips"),
    ([10, 0, 0, 0], 8, "private (10.0.0.0/8) and outside allowed_ips"),
    ([100, 64, 0, 0], 10, "shared CGNAT space (100.64.0.0/10) and outside allowed_ips"),
    ([172, 16, 0, 0], 12, "private (172.16.0.0/12) and outside allowed_ips"),
    ([192, 0, 0, 0], 24, "IETF protocol assignments (192.0.0.0/24) and outside allowed_ips"),
    ([192, 0, 2, 0], 24, "documentation TEST-NET-1 (192.0.2.0/24) and outside allowed_ips"),
    ([192, 88, 99, 0], 24, "deprecated 6to4 relay anycast (192.88.99.0/24) and outside allowed_ips"),
    ([192, 168, 0, 0], 16, "private (192.168.0.0/16) and outside allowed_ips"),
    ([198, 18, 0, 0], 15, "benchmarking (198.18.0.0/15) and outside allowed_ips"),
    ([198, 51, 100, 0], 24, "documentation TEST-NET-2 (198.51.100.0/24) and outside allowed_ips"),
    ([203, 0, 113, 0], 24, "documentation TEST-NET-3 (203.0.113.0/24) and outside allowed_ips"),
    ([240, 0, 0, 0], 4, "reserved (240.0.0.0/4) and outside allowed_ips"),
];

/// The same for IPv6; checked in order, then anything outside global unicast 2000::/3 except NAT64.
const V6_SPECIAL: &[(u128, u8, &str)] = &[
    (0, 96, "IPv4-compatible IPv6 (deprecated, ::/96) and outside allowed_ips"),
    (0x0064_ff9b_0001 << 80, 48, "NAT64 local-use (64:ff9b:1::/48) and outside allowed_ips"),
    (0x0100 << 112, 64, "discard-only (100::/64) and outside allowed_ips"),
    (0x2001 << 112, 23, "IETF protocol assignments incl. Teredo (2001::/23) and outside allowed_ips"),
    (0x2001_0db8 << 96, 32, "documentation (2001:db8::/32) and outside allowed_ips"),
    (0x2002 << 112, 16, "6to4 (2002::/16) and outside allowed_ips"),
    (0x3fff << 112, 20, "documentation (3fff::/20) and outside allowed_ips"),
    (0x5f00 << 112, 16, "SRv6 SIDs (5f00::/16) and outside allowed_ips"),
    (0xfc00 << 112, 7, "unique-local private (fc00::/7) and outside allowed_ips"),
    (0xfec0 << 112, 10, "deprecated site-local (fec0::/10) and outside allowed_ips"),
];

fn in_v4(ip: Ipv4Addr, base: [u8; 4], len: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    u32::from(ip) & mask == u32::from_be_bytes(base) & mask
}

fn in_v6(ip: Ipv6Addr, base: u128, len: u8) -> bool {
    let mask = u128::MAX.checked_shl(128 - u32::from(len)).unwrap_or(0);
    u128::from(ip) & mask == base & mask
}

/// `::ffff:a.b.c.d` is the IPv4 address itself (the kernel dials it as such).
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// The IPv4 address an IPv6 address carries: IPv4-compatible `::a.b.c.d`, SIIT `::ffff:0:a.b.c.d`, NAT64
/// `64:ff9b::a.b.c.d`, 6to4 `2002:AABB:CCDD::`, Teredo client (inverted low 32 bits of `2001:0::/32`).
fn embedded_v4(v6: Ipv6Addr) -> Option<Ipv4Addr> {
    let b = u128::from(v6);
    let v4 = match () {
        _ if b >> 32 == 0 && b > 1 => b as u32,
        _ if b >> 32 == 0xffff_0000 || b >> 32 == 0x0064_ff9b << 64 => b as u32,
        _ if b >> 112 == 0x2002 => (b >> 80) as u32,
        _ if b >> 96 == 0x2001_0000 => !(b as u32),
        _ => return None,
    };
    Some(Ipv4Addr::from(v4))
}

/// Never-dialled IPv4 addresses: (reason for the address, reason for an IPv6 form embedding it).
fn never_v4(ip: Ipv4Addr) -> Option<(&'static str, &'static str)> {
    Some(match () {
        _ if METADATA_V4.contains(&ip) => {
            ("a cloud metadata address (never dialled)", "an IPv6 form of a cloud metadata address (never dialled)")
        }
        _ if ip.is_loopback() => ("loopback (never dialled)", "an IPv6 form of a loopback address (never dialled)"),
        _ if ip.is_link_local() => {
            ("link-local (never dialled)", "an IPv6 form of a link-local address (never dialled)")
        }
        _ if ip.is_unspecified() => ("unspecified (never dialled)", "an IPv6 form of 0.0.0.0 (never dialled)"),
        _ if ip.is_multicast() => ("multicast (never dialled)", "an IPv6 form of a multicast address (never dialled)"),
        _ if ip.is_broadcast() => {
            ("broadcast (never dialled)", "an IPv6 form of the broadcast address (never dialled)")
        }
        _ => return None,
    })
}

/// Addresses no policy can open. `ip` is canonical.
fn never(ip: IpAddr) -> Option<&'static str> {
    let v6 = match ip {
        IpAddr::V4(v4) => return never_v4(v4).map(|r| r.0),
        IpAddr::V6(v6) => v6,
    };
    Some(match () {
        _ if v6 == METADATA_V6 => "a cloud metadata address (never dialled)",
        _ if v6.is_loopback() => "loopback (never dialled)",
        _ if v6.is_unspecified() => "unspecified (never dialled)",
        _ if v6.is_multicast() => "multicast (never dialled)",
        _ if v6.is_unicast_link_local() => "link-local (never dialled)",
        _ => embedded_v4(v6).and_then(never_v4)?.1,
    })
}

/// Non-public ranges that `allowed_ips` may open. `ip` is canonical.
fn special(ip: IpAddr) -> Option<&'static str> {
    match ip {
        IpAddr::V4(v4) => V4_SPECIAL.iter().find(|(b, l, _)| in_v4(v4, *b, *l)).map(|r| r.2),
        IpAddr::V6(v6) => {
            if let Some(r) = V6_SPECIAL.iter().find(|(b, l, _)| in_v6(v6, *b, *l)) {
                Some(r.2)
            } else if in_v6(v6, 0x0064_ff9b << 96, 96) {
                let v4 = embedded_v4(v6).unwrap_or(Ipv4Addr::UNSPECIFIED);
                special(IpAddr::V4(v4)).map(|_| "NAT64 of a non-public IPv4 address and outside allowed_ips")
            } else if !in_v6(v6, 0x2000 << 112, 3) {
                Some("outside IPv6 global unicast (2000::/3) and outside allowed_ips")
            } else {
                None
            }
        }
    }
}

/// May the gateway dial `ip` for an endpoint whose `allowed_ips` are `allowed`?
pub fn check_ip(ip: IpAddr, allowed: &[IpNet]) -> Result<(), Refusal> {
    let canon = canonical(ip);
    if let Some(reason) = never(canon) {
        return Err(Refusal { addr: ip, reason });
    }
    let Some(reason) = special(canon) else { return Ok(()) };
    let nat64 = match canon {
        IpAddr::V6(v6) if in_v6(v6, 0x0064_ff9b << 96, 96) => embedded_v4(v6).map(IpAddr::V4),
        _ => None,
    };
    let opened = allowed.iter().any(|n| n.contains(&ip) || n.contains(&canon) || nat64.is_some_and(|e| n.contains(&e)));
    if opened {
        Ok(())
    } else {
        Err(Refusal { addr: ip, reason })
    }
}

/// May the gateway dial `ip`, given the host's own addresses `own`? Only when
/// an `allowed_ips` entry names that very address (a /32 or /128): a range
/// opened for a LAN does not open the host that sits in it.
pub fn check_not_own(ip: IpAddr, own: &[IpAddr], allowed: &[IpNet]) -> Result<(), Refusal> {
    let canon = canonical(ip);
    let carried = match canon {
        IpAddr::V6(v6) => embedded_v4(v6).map(IpAddr::V4),
        IpAddr::V4(_) => None,
    };
    let Some(&hit) = own.iter().find(|o| **o == canon || Some(**o) == carried) else { return Ok(()) };
    let named = allowed.iter().any(|n| n.prefix_len() == n.max_prefix_len() && [ip, canon, hit].contains(&n.addr()));
    if named {
        Ok(())
    } else {
        Err(Refusal { addr: ip, reason: "one of the host's own addresses (allowed only where allowed_ips names it)" })
    }
}

/// Lower-case, without brackets and trailing dots: the form names are compared in.
fn normalise_name(host: &str) -> String {
    let h = host.trim().trim_end_matches('.');
    let h = h.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(h);
    h.to_ascii_lowercase()
}

/// One `inet_aton` component: decimal, `0`-prefixed octal or `0x` hex.
fn aton_part(p: &str) -> Option<u64> {
    let (digits, radix) = match p.strip_prefix("0x").or_else(|| p.strip_prefix("0X")) {
        Some(h) => (h, 16),
        None if p.len() > 1 && p.starts_with('0') => (&p[1..], 8),
        None => (p, 10),
    };
    if digits.is_empty() || !digits.chars().all(|c| c.is_digit(radix)) {
        return None;
    }
    u64::from_str_radix(digits, radix).ok()
}

/// An IP literal in any spelling the C library would accept (`[v6]`, `127.1`, `0x7f000001`, `0177.0.0.1`).
fn parse_ip_literal(host: &str) -> Option<IpAddr> {
    if let Some(inner) = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')) {
        return inner.parse::<Ipv6Addr>().ok().map(IpAddr::V6);
    }
    if let Ok(ip) = host.parse() {
        return Some(ip);
    }
    let parts = host.split('.').map(aton_part).collect::<Option<Vec<u64>>>()?;
    let (last, init) = parts.split_last()?;
    if init.len() > 3 || init.iter().any(|&p| p > 255) || *last >= 1u64 << (8 * (4 - init.len())) {
        return None;
    }
    let v = init.iter().enumerate().fold(*last, |acc, (i, &p)| acc | p << (24 - 8 * i));
    u32::try_from(v).ok().map(|v| IpAddr::V4(Ipv4Addr::from(v)))
}

fn is_metadata_ip(ip: IpAddr) -> bool {
    match canonical(ip) {
        IpAddr::V4(v4) => METADATA_V4.contains(&v4),
        IpAddr::V6(v6) => v6 == METADATA_V6 || embedded_v4(v6).is_some_and(|e| METADATA_V4.contains(&e)),
    }
}

/// Names and addresses of cloud metadata services, never dialled whatever the policy says.
pub fn is_metadata_host(host: &str) -> bool {
    let h = normalise_name(host);
    METADATA_NAMES.contains(&h.as_str()) || parse_ip_literal(&h).is_some_and(is_metadata_ip)
}

fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| !l.is_empty() && l.len() <= 63)
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
}

/// Turns destination names into addresses: IP literals as-is, then the hosts override, then system DNS.
#[derive(Debug, Clone, Default)]
pub struct Resolver {
    hosts: HashMap<String, Vec<IpAddr>>,
    hosts_only: bool,
}

impl Resolver {
    /// `hosts_override` answers first; `MOAT_GATEWAY_HOSTS_ONLY=1` in the environment forbids system DNS.
    pub fn new(hosts_override: Option<HashMap<String, Vec<IpAddr>>>) -> Resolver {
        let mut hosts: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for (name, ips) in hosts_override.unwrap_or_default() {
            let entry = hosts.entry(normalise_name(&name)).or_default();
            for ip in ips {
                if !entry.contains(&ip) {
                    entry.push(ip);
                }
            }
        }
        Resolver { hosts, hosts_only: std::env::var(HOSTS_ONLY_ENV).is_ok_and(|v| v == "1") }
    }

    /// Forbid (or allow) system DNS for names missing from the override, whatever the environment says.
    pub fn with_hosts_only(mut self, hosts_only: bool) -> Resolver {
        self.hosts_only = hosts_only;
        self
    }

    /// Reads an `/etc/hosts`-format file: `ADDR name [aliases...]`, `#` comments; names may repeat.
    pub fn from_hosts_file(path: &Path) -> Result<Resolver, SsrfError> {
        let text =
            std::fs::read_to_string(path).map_err(|source| SsrfError::Io { path: path.to_path_buf(), source })?;
        Self::parse_hosts(&text, path)
    }

    fn parse_hosts(text: &str, path: &Path) -> Result<Resolver, SsrfError> {
        let mut map: HashMap<String, Vec<IpAddr>> = HashMap::new();
        for (i, raw) in text.lines().enumerate() {
            let err = |message: String| SsrfError::HostsFile { path: path.to_path_buf(), line: i + 1, message };
            let mut fields = raw.split('#').next().unwrap_or_default().split_whitespace();
            let Some(addr) = fields.next() else { continue };
            let ip: IpAddr = addr.parse().map_err(|_| err(format!("{addr:?} is not an IP address")))?;
            let names: Vec<&str> = fields.collect();
            if names.is_empty() {
                return Err(err(format!("address {addr} has no host name")));
            }
            for name in names {
                if !valid_name(&normalise_name(name)) || name.starts_with('[') {
                    return Err(err(format!("{name:?} is not a valid host name")));
                }
                map.entry(normalise_name(name)).or_default().push(ip);
            }
        }
        Ok(Resolver::new(Some(map)))
    }

    /// `MOAT_GATEWAY_HOSTS` names a hosts-format override file; unset or empty = system DNS only.
    pub fn from_env() -> Result<Resolver, SsrfError> {
        match std::env::var_os(HOSTS_ENV) {
            Some(p) if !p.is_empty() => Self::from_hosts_file(Path::new(&p)),
            _ => Ok(Resolver::new(None)),
        }
    }

    /// Addresses for `host` (a name, an IP literal or `[v6]`), deduplicated, in answer order.
    pub async fn resolve(&self, host: &str, port: u16) -> Result<Vec<SocketAddr>, SsrfError> {
        let name = normalise_name(host);
        let bracketed = host.trim().starts_with('[');
        if let Some(ip) = parse_ip_literal(if bracketed { host.trim() } else { &name }) {
            return Ok(vec![SocketAddr::new(ip, port)]);
        }
        if bracketed || !valid_name(&name) {
            return Err(SsrfError::BadHost(host.to_string()));
        }
        if let Some(ips) = self.hosts.get(&name) {
            return Ok(ips.iter().map(|ip| SocketAddr::new(*ip, port)).collect());
        }
        if self.hosts_only {
            let why = format!("not in the hosts override and {HOSTS_ONLY_ENV}=1 forbids system DNS");
            let source = std::io::Error::new(std::io::ErrorKind::NotFound, why);
            return Err(SsrfError::Resolve { host: host.to_string(), source });
        }
        let answers = tokio::net::lookup_host((name.as_str(), port))
            .await
            .map_err(|source| SsrfError::Resolve { host: host.to_string(), source })?;
        let mut out: Vec<SocketAddr> = Vec::new();
        for a in answers {
            if !out.contains(&a) {
                out.push(a);
            }
        }
        Ok(out)
    }
}

/// Resolves `host` and vets every answer; the caller dials exactly these addresses (no re-resolution).
pub async fn resolve_checked(
    r: &Resolver,
    host: &str,
    port: u16,
    allowed: &[IpNet],
) -> Result<Vec<SocketAddr>, SsrfError> {
    if is_metadata_host(host) {
        tracing::warn!(host, port, reason = "cloud metadata host", "gateway destination refused");
        return Err(SsrfError::Metadata(host.to_string()));
    }
    let addrs = r.resolve(host, port).await?;
    if addrs.is_empty() {
        return Err(SsrfError::NoAddress(host.to_string()));
    }
    let own = super::own_addrs::current().map_err(SsrfError::OwnAddrs)?;
    for a in &addrs {
        if let Err(refusal) = check_ip(a.ip(), allowed).and_then(|()| check_not_own(a.ip(), &own, allowed)) {
            tracing::warn!(host, port, addr = %refusal.addr, reason = refusal.reason, "gateway destination refused");
            return Err(refusal.into());
        }
    }
    Ok(addrs)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }
    fn nets(v: &[&str]) -> Vec<IpNet> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn address_table_without_allowed_ips() {
        let allowed = ["172.32.0.1", "8.8.8.8", "2606:4700::1111", "64:ff9b::808:808", "1.1.1.1"];
        let refused = concat!(
            "127.0.0.1 127.1.2.3 ::1 0.0.0.0 :: 169.254.169.254 169.254.1.1 fe80::1 10.1.2.3 172.16.0.1 ",
            "192.168.1.1 100.64.0.1 198.18.0.5 ::ffff:127.0.0.1 ::ffff:10.0.0.1 ::ffff:169.254.169.254 ",
            "64:ff9b::7f00:1 fc00::1 224.0.0.1 255.255.255.255 0.1.2.3 192.0.2.1 198.51.100.7 203.0.113.9 ",
            "240.0.0.1 2001:db8::1 fec0::1 fd00:ec2::254 2002:7f00:1::1 2001:0:4136:e378:8000:63bf:80ff:fffe ",
            "::127.0.0.1 ::ffff:0:7f00:1 ff02::1 100::1 3fff::1 64:ff9b::a00:1 100.100.100.200 ",
        )
        .split_whitespace();
        for a in allowed {
            assert_eq!(check_ip(ip(a), &[]), Ok(()), "{a} should be allowed");
        }
        for a in refused {
            let r = check_ip(ip(a), &[]).expect_err(a);
            assert_eq!(r.addr, ip(a));
        }
    }

    #[test]
    fn allowed_ips_open_only_special_purpose_ranges() {
        let wide = nets(&["0.0.0.0/0", "::/0"]);
        for (a, cidr) in [
            ("198.18.0.5", "198.18.0.0/15"),
            ("10.1.2.3", "10.0.0.0/8"),
            ("::ffff:10.0.0.1", "10.0.0.0/8"),
            ("64:ff9b::a00:1", "10.0.0.0/8"),
            ("fc00::1", "fc00::/7"),
            ("192.168.1.1", "192.168.1.1/32"),
        ] {
            assert_eq!(check_ip(ip(a), &nets(&[cidr])), Ok(()), "{a} with {cidr}");
            assert!(check_ip(ip(a), &nets(&["8.8.8.0/24"])).is_err(), "{a} without {cidr}");
        }
        for (a, cidr) in [
            ("127.0.0.1", "127.0.0.0/8"),
            ("127.9.9.9", "127.0.0.0/8"),
            ("169.254.169.254", "169.254.0.0/16"),
            ("169.254.1.1", "169.254.0.0/16"),
            ("::ffff:127.0.0.1", "127.0.0.0/8"),
            ("64:ff9b::a9fe:a9fe", "64:ff9b::/96"),
            ("fd00:ec2::254", "fc00::/7"),
            ("fe80::1", "fe80::/10"),
            ("100.100.100.200", "100.64.0.0/10"),
            ("2001:0:4136:e378:8000:63bf:80ff:fffe", "2001::/23"),
            ("2002:7f00:1::1", "2002::/16"),
            ("::127.0.0.1", "::/96"),
        ] {
            assert!(check_ip(ip(a), &nets(&[cidr])).is_err(), "{a} must stay refused with {cidr}");
            assert!(check_ip(ip(a), &wide).is_err(), "{a} must stay refused with 0/0");
        }
        assert!(check_ip(ip("10.0.0.1"), &nets(&["10.0.0.0/24"])).is_ok());
        assert!(check_ip(ip("10.0.1.1"), &nets(&["10.0.0.0/24"])).is_err());
    }

    #[test]
    fn the_hosts_own_addresses_only_where_allowed_ips_names_them() {
        let own = [ip("10.0.0.5"), ip("203.0.113.7"), ip("2606:4700::5")];
        for a in ["10.0.0.5", "::ffff:10.0.0.5", "64:ff9b::a00:5", "203.0.113.7", "2606:4700::5"] {
            let r = check_not_own(ip(a), &own, &nets(&["10.0.0.0/8", "203.0.113.0/24", "::/0"])).expect_err(a);
            assert!(r.to_string().contains("host's own"), "{r}");
        }
        assert_eq!(check_not_own(ip("10.0.0.6"), &own, &[]), Ok(()), "a neighbour is not the host");
        assert_eq!(check_not_own(ip("8.8.8.8"), &own, &[]), Ok(()));
        for (a, named) in
            [("10.0.0.5", "10.0.0.5/32"), ("::ffff:10.0.0.5", "10.0.0.5/32"), ("2606:4700::5", "2606:4700::5/128")]
        {
            assert_eq!(check_not_own(ip(a), &own, &nets(&[named])), Ok(()), "{a} named by {named}");
        }
    }

    #[test]
    fn refusal_says_what_and_why() {
        let r = check_ip(ip("10.1.2.3"), &[]).unwrap_err();
        assert_eq!(r.to_string(), "10.1.2.3 is private (10.0.0.0/8) and outside allowed_ips");
        let r = check_ip(ip("::ffff:127.0.0.1"), &[]).unwrap_err();
        assert_eq!(r.to_string(), "::ffff:127.0.0.1 is loopback (never dialled)");
        let r = check_ip(ip("2002:a9fe:a9fe::"), &[]).unwrap_err();
        assert_eq!(r.reason, "an IPv6 form of a cloud metadata address (never dialled)");
    }

    #[test]
    fn metadata_hosts_in_any_spelling() {
        for h in concat!(
            "metadata.google.internal METADATA.Google.Internal. metadata metadata.goog instance-data ",
            "instance-data.ec2.internal metadata.azure.com 169.254.169.254 169.254.169.254. 2852039166 ",
            "0xa9fea9fe 0251.0376.0251.0376 169.254.43518 0xa9.0xfe.0xa9.0xfe [::ffff:a9fe:a9fe] ",
            "::ffff:169.254.169.254 [fd00:ec2::254] 64:ff9b::a9fe:a9fe ",
        )
        .split_whitespace()
        {
            assert!(is_metadata_host(h), "{h}");
        }
        for h in ["example.com", "metadata.example.com", "8.8.8.8", "169.254.169.253", "", "[fd00:ec2::255]"] {
            assert!(!is_metadata_host(h), "{h}");
        }
    }

    #[test]
    fn ip_literals_in_c_library_spellings() {
        for (s, want) in
            [("127.1", "127.0.0.1"), ("0x7f000001", "127.0.0.1"), ("0177.0.0.1", "127.0.0.1"), ("[::1]", "::1")]
        {
            assert_eq!(parse_ip_literal(s), Some(ip(want)), "{s}");
        }
        for s in ["256.1.1.1", "1.2.3.4.5", "08.1.1.1", "example.com", "1.2.16777216", "0x", "+1.2.3.4", "[1.2.3.4]"] {
            assert_eq!(parse_ip_literal(s), None, "{s}");
        }
    }

    #[test]
    fn hosts_file_parsing() {
        let text = "# test hosts\n\n10.0.0.1 Svc.Test svc-alias # comment\n8.8.8.8 svc.test\n::1 v6.test\n";
        let r = Resolver::parse_hosts(text, Path::new("h")).unwrap();
        assert_eq!(r.hosts["svc.test"], vec![ip("10.0.0.1"), ip("8.8.8.8")]);
        assert_eq!(r.hosts["svc-alias"], vec![ip("10.0.0.1")]);
        assert_eq!(r.hosts["v6.test"], vec![ip("::1")]);
        for (text, want) in [
            ("1.2.3.4 ok\n\nnot-an-ip name\n", "hosts file h:3: \"not-an-ip\" is not an IP address"),
            ("# c\n10.0.0.1   # only a comment\n", "hosts file h:2: address 10.0.0.1 has no host name"),
            ("1.2.3.4 bad$name\n", "hosts file h:1: \"bad$name\" is not a valid host name"),
        ] {
            let e = Resolver::parse_hosts(text, Path::new("h")).unwrap_err();
            assert_eq!(e.to_string(), want);
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hosts");
        std::fs::write(&path, "192.0.2.7 doc.test\n").unwrap();
        assert_eq!(Resolver::from_hosts_file(&path).unwrap().hosts["doc.test"], vec![ip("192.0.2.7")]);
        let missing = Resolver::from_hosts_file(&dir.path().join("absent")).unwrap_err();
        assert!(matches!(missing, SsrfError::Io { .. }), "{missing}");
    }

    fn resolver(entries: &[(&str, &[&str])]) -> Resolver {
        let map = entries.iter().map(|(n, ips)| (n.to_string(), ips.iter().map(|s| ip(s)).collect())).collect();
        Resolver::new(Some(map)).with_hosts_only(true)
    }

    #[tokio::test]
    async fn resolve_literals_and_overrides() {
        let r = resolver(&[("Pub.Test", &["8.8.8.8", "2606:4700::1111"])]);
        let sa = |s: &str| s.parse::<SocketAddr>().unwrap();
        assert_eq!(r.resolve("127.0.0.1", 80).await.unwrap(), vec![sa("127.0.0.1:80")]);
        assert_eq!(r.resolve("[::1]", 443).await.unwrap(), vec![sa("[::1]:443")]);
        assert_eq!(r.resolve("::1", 443).await.unwrap(), vec![sa("[::1]:443")]);
        assert_eq!(r.resolve("0x7f.1", 8).await.unwrap(), vec![sa("127.0.0.1:8")]);
        let want = vec![sa("8.8.8.8:443"), sa("[2606:4700::1111]:443")];
        assert_eq!(r.resolve("pub.test.", 443).await.unwrap(), want);
        let e = r.resolve("unknown.test", 443).await.unwrap_err();
        assert!(matches!(e, SsrfError::Resolve { .. }), "{e}");
        assert!(moat_builder::errors::chain(&e).contains("MOAT_GATEWAY_HOSTS_ONLY=1 forbids system DNS"), "{e}");
        assert!(matches!(r.resolve("[not-v6]", 443).await, Err(SsrfError::BadHost(_))));
        assert!(matches!(r.resolve("bad name", 443).await, Err(SsrfError::BadHost(_))));
        assert!(matches!(r.resolve("", 443).await, Err(SsrfError::BadHost(_))));
    }

    #[tokio::test]
    async fn resolve_checked_vets_every_answer() {
        let r = resolver(&[
            ("mixed.test", &["8.8.8.8", "10.0.0.1"]),
            ("pub.test", &["8.8.8.8"]),
            ("meta.test", &["169.254.169.254"]),
            ("empty.test", &[]),
        ]);
        let e = resolve_checked(&r, "mixed.test", 443, &[]).await.unwrap_err();
        match e {
            SsrfError::Refused(ref refusal) => assert_eq!(refusal.addr, ip("10.0.0.1")),
            ref other => panic!("expected a refusal, got {other}"),
        }
        let ok = resolve_checked(&r, "mixed.test", 443, &nets(&["10.0.0.0/8"])).await.unwrap();
        assert_eq!(ok.len(), 2);
        assert_eq!(resolve_checked(&r, "pub.test", 443, &[]).await.unwrap().len(), 1);
        let e = resolve_checked(&r, "meta.test", 80, &nets(&["0.0.0.0/0"])).await.unwrap_err();
        assert!(matches!(e, SsrfError::Refused(_)), "{e}");
        let e = resolve_checked(&r, "Metadata.Google.Internal.", 80, &[]).await.unwrap_err();
        assert!(matches!(e, SsrfError::Metadata(_)), "{e}");
        let e = resolve_checked(&r, "empty.test", 443, &[]).await.unwrap_err();
        assert!(matches!(e, SsrfError::NoAddress(_)), "{e}");
        let e = resolve_checked(&r, "127.0.0.1", 22, &nets(&["127.0.0.0/8"])).await.unwrap_err();
        assert!(matches!(e, SsrfError::Refused(_)), "{e}");
    }
}
