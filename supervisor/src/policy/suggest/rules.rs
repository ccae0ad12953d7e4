//! What `policy suggest` may propose: the one rule by which seen paths
//! become globs (exact paths; three or more siblings under one parent
//! become `parent/*`), and the binaries and destinations it never proposes
//! (interpreters and shells, cloud metadata services, private, loopback
//! and reserved addresses). Guards against a suggestion wider than the
//! traffic it was made from: a recorded path is escaped so its own `*` or
//! `[` is matched literally, and a glob never covers more than one segment
//! below a parent where several siblings were seen.
#![forbid(unsafe_code)]
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Distinct sibling paths (same parent, different last segment) from which
/// on the parent's children are suggested as `parent/*`.
pub const SIBLINGS: usize = 3;

/// One suggested path rule and the exact paths it was made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathRule {
    pub glob: String,
    pub paths: Vec<String>,
}

/// `p` as a glob that matches exactly `p` (globset's metacharacters and the
/// backslash, which escapes under Unix rules, are made literal).
pub fn literal(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    for c in p.chars() {
        match c {
            '?' | '*' | '[' | ']' | '{' | '}' => {
                out.push('[');
                out.push(c);
                out.push(']');
            }
            '\\' => out.push_str("\\\\"),
            c => out.push(c),
        }
    }
    out
}

/// The path rules for the distinct paths seen with one method: each path
/// exactly, except that when [`SIBLINGS`] or more distinct paths share a
/// parent below the root (`/a/b/1`, `/a/b/2`, `/a/b/3`), they become one
/// `parent/*` (`/a/b/*`: one more segment, never deeper). Siblings of the
/// root (`/x`, `/y`, `/z`) stay exact: `/*` would open a whole host.
pub fn path_rules<'a>(paths: impl IntoIterator<Item = &'a str>) -> Vec<PathRule> {
    let paths: BTreeSet<&str> = paths.into_iter().collect();
    let mut by_parent: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for p in &paths {
        if let Some((parent, last)) = p.rsplit_once('/') {
            if !parent.is_empty() && !last.is_empty() {
                by_parent.entry(parent).or_default().push(p);
            }
        }
    }
    let mut out = Vec::new();
    let mut covered = BTreeSet::new();
    for (parent, children) in by_parent {
        if children.len() >= SIBLINGS {
            covered.extend(children.iter().copied());
            out.push(PathRule {
                glob: format!("{}/*", literal(parent)),
                paths: children.iter().map(|s| s.to_string()).collect(),
            });
        }
    }
    for p in paths.into_iter().filter(|p| !covered.contains(p)) {
        out.push(PathRule { glob: literal(p), paths: vec![p.to_string()] });
    }
    out.sort_by(|a, b| a.glob.cmp(&b.glob));
    out
}

/// Interpreters and shells by file name (a version suffix such as
/// `python3.11` or `perl5.36` is the same program).
const INTERPRETERS: &[&str] = &[
    "sh",
    "ash",
    "bash",
    "dash",
    "zsh",
    "ksh",
    "mksh",
    "fish",
    "csh",
    "tcsh",
    "busybox",
    "python",
    "pypy",
    "node",
    "nodejs",
    "deno",
    "bun",
    "perl",
    "ruby",
    "php",
    "lua",
    "luajit",
    "tclsh",
    "wish",
    "java",
    "pwsh",
    "rscript",
    "r",
    "osascript",
    "gawk",
    "awk",
    "mawk",
];

/// The interpreter or shell `binary` is, if it is one: a rule for it would
/// cover every script it is given.
pub fn interpreter(binary: &str) -> Option<&str> {
    let base = binary.rsplit('/').next().unwrap_or(binary);
    let stem = base.trim_end_matches(|c: char| c.is_ascii_digit() || c == '.' || c == '-');
    let stem = if stem.is_empty() { base } else { stem };
    INTERPRETERS.iter().any(|i| stem.eq_ignore_ascii_case(i)).then_some(base)
}

use crate::policy::metadata::{METADATA_NAMES, METADATA_V4};

/// Whether `host` (lower case) names a cloud metadata service.
pub fn metadata(host: &str) -> bool {
    if METADATA_NAMES.contains(&host) {
        return true;
    }
    match ip_literal(host) {
        Some(IpAddr::V4(v4)) => METADATA_V4.contains(&v4),
        Some(IpAddr::V6(v6)) => {
            v6 == Ipv6Addr::new(0xfd00, 0xec2, 0, 0, 0, 0, 0, 0x254)
                || v6.to_ipv4_mapped().is_some_and(|v4| METADATA_V4.contains(&v4))
        }
        None => false,
    }
}

/// `host` as an address when it is one in any spelling the C library reads
/// (`[v6]`, `127.1`, `0x7f000001`, `0177.0.0.1`): such a name is an address
/// to the gateway too.
fn ip_literal(host: &str) -> Option<IpAddr> {
    let h = host.strip_prefix('[').and_then(|h| h.strip_suffix(']')).unwrap_or(host);
    if let Ok(ip) = h.parse() {
        return Some(ip);
    }
    let part = |p: &str| -> Option<u64> {
        let (digits, radix) = match p.strip_prefix("0x").or_else(|| p.strip_prefix("0X")) {
            Some(x) => (x, 16),
            None if p.len() > 1 && p.starts_with('0') => (&p[1..], 8),
            None => (p, 10),
        };
        (!digits.is_empty() && digits.chars().all(|c| c.is_digit(radix)))
            .then(|| u64::from_str_radix(digits, radix).ok())
            .flatten()
    };
    let parts = h.split('.').map(part).collect::<Option<Vec<u64>>>()?;
    let (last, init) = parts.split_last()?;
    if init.len() > 3 || init.iter().any(|&p| p > 255) || *last >= 1u64 << (8 * (4 - init.len())) {
        return None;
    }
    let v = init.iter().enumerate().fold(*last, |acc, (i, &p)| acc | p << (24 - 8 * i));
    u32::try_from(v).ok().map(|v| IpAddr::V4(Ipv4Addr::from(v)))
}

fn v4_private(ip: Ipv4Addr) -> Option<&'static str> {
    let [a, b, c, _] = ip.octets();
    Some(match () {
        _ if ip.is_loopback() => "loopback",
        _ if ip.is_private() => "private",
        _ if ip.is_link_local() => "link-local",
        _ if ip.is_unspecified() || a == 0 => "'this network' (0.0.0.0/8)",
        _ if a == 100 && (64..128).contains(&b) => "shared CGNAT space (100.64.0.0/10)",
        _ if a == 198 && (b == 18 || b == 19) => "benchmarking (198.18.0.0/15)",
        _ if ip.is_documentation() => "documentation",
        _ if a == 192 && b == 0 && c == 0 => "IETF protocol assignments (192.0.0.0/24)",
        _ if a == 192 && b == 88 && c == 99 => "6to4 relay anycast",
        _ if ip.is_multicast() || ip.is_broadcast() || a >= 240 => "multicast or reserved",
        _ => return None,
    })
}

/// Why `host` (lower case) is not a public destination, if it is not: an
/// address (any spelling) outside the public Internet, or `localhost`.
pub fn private(host: &str) -> Option<&'static str> {
    if host == "localhost" || host.ends_with(".localhost") {
        return Some("loopback");
    }
    match ip_literal(host)? {
        IpAddr::V4(v4) => v4_private(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return v4_private(v4);
            }
            let seg = v6.segments()[0];
            Some(match () {
                _ if v6.is_loopback() => "loopback",
                _ if v6.is_unspecified() => "unspecified",
                _ if seg & 0xfe00 == 0xfc00 => "unique-local private (fc00::/7)",
                _ if seg & 0xffc0 == 0xfe80 => "link-local",
                _ if v6.is_multicast() => "multicast",
                _ if seg == 0x2001 && v6.segments()[1] == 0x0db8 => "documentation",
                _ if seg & 0xe000 != 0x2000 => "outside IPv6 global unicast (2000::/3)",
                _ => return None,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::schema::path_glob;

    fn globs(paths: &[&str]) -> Vec<String> {
        path_rules(paths.iter().copied()).into_iter().map(|r| r.glob).collect()
    }

    #[test]
    fn three_siblings_become_one_segment_glob_fewer_stay_exact() {
        assert_eq!(globs(&["/api/items/1", "/api/items/2"]), ["/api/items/1", "/api/items/2"]);
        let g = globs(&["/api/items/1", "/api/items/2", "/api/items/3", "/api/users"]);
        assert_eq!(g, ["/api/items/*", "/api/users"]);
        let rule = path_glob(&g[0]).unwrap();
        assert!(rule.is_match("/api/items/4"), "a sibling");
        assert!(!rule.is_match("/api/items/1/x"), "never deeper");
        assert!(!rule.is_match("/api/itemsX/1") && !rule.is_match("/api/other/1"));
        // Root siblings stay exact: `/*` would open the whole host.
        assert_eq!(globs(&["/a", "/b", "/c"]), ["/a", "/b", "/c"]);
        // Siblings counted per parent: two here and two there stay exact.
        assert_eq!(globs(&["/x/1", "/x/2", "/y/1", "/y/2"]).len(), 4);
        // A trailing slash is its own exact path; duplicates count once.
        assert_eq!(globs(&["/d/", "/d/", "/d/a", "/d/b"]), ["/d/", "/d/a", "/d/b"]);
        let r = path_rules(["/q/1", "/q/2", "/q/3"]);
        assert_eq!(r[0].paths, ["/q/1", "/q/2", "/q/3"], "what a glob was made from is kept");
    }

    #[test]
    fn recorded_metacharacters_are_matched_literally() {
        for p in ["/a*", "/a?b", "/[x]", "/{a,b}", "/a\\b", "/**"] {
            let g = globs(&[p]);
            let m = path_glob(&g[0]).unwrap();
            assert!(m.is_match(p), "{p} -> {g:?}");
            for other in ["/ab", "/axb", "/x", "/a", "/b", "/abc", "/a/b"] {
                assert!(other == p || !m.is_match(other), "{p} -> {g:?} matches {other}");
            }
        }
        let g = globs(&["/s*/1", "/s*/2", "/s*/3"]);
        assert_eq!(g, ["/s[*]/*"]);
        assert!(!path_glob(&g[0]).unwrap().is_match("/sX/1"));
    }

    #[test]
    fn interpreters_metadata_and_private_addresses() {
        for b in
            ["/bin/sh", "/usr/bin/bash", "/usr/bin/dash", "/usr/bin/python3", "/usr/bin/python3.11", "/usr/bin/node"]
        {
            assert!(interpreter(b).is_some(), "{b}");
        }
        for b in ["/usr/bin/curl", "/usr/bin/git", "/usr/lib/git-core/git-remote-https", "/usr/bin/shasum"] {
            assert_eq!(interpreter(b), None, "{b}");
        }
        for h in ["169.254.169.254", "metadata.google.internal", "[fd00:ec2::254]", "0xa9fea9fe"] {
            assert!(metadata(h), "{h}");
        }
        assert!(!metadata("example.com"));
        for h in ["10.1.2.3", "127.1", "192.168.0.1", "172.16.5.5", "100.64.1.1", "198.18.0.1", "::1", "fd12::1"] {
            assert!(private(h).is_some(), "{h}");
        }
        for h in ["localhost", "db.localhost", "[::ffff:10.0.0.1]", "0x0a000001"] {
            assert!(private(h).is_some(), "{h}");
        }
        for h in ["example.com", "1.1.1.1", "2606:4700::1111", "up.test", "0x-ample.com"] {
            assert_eq!(private(h), None, "{h}");
        }
    }
}
