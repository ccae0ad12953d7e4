//! The network rules compiled for matching: which rule, if any, lets a
//! binary reach a host and port, and whether one request (method, path) on
//! an inspected endpoint is allowed. What the egress gateway asks on every
//! connection and request. Guards against a match wider than the rule: hosts
//! compare case-insensitively, a wildcard never matches its domain itself or
//! a look-alike suffix, `+.domain` never more than one label below it; paths
//! are matched without their query.
#![forbid(unsafe_code)]
use crate::policy::schema::{
    binary_glob, invalid, path_glob, wildcard, Access, Depth, Endpoint, Enforcement, NetPolicy, NetPolicyError,
};
use globset::GlobMatcher;

/// Does `host` fall under `pattern` (exact, `+.d`, `**.d` or `*.d`; any case)?
pub(crate) fn host_matches(pattern: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.');
    match wildcard(pattern) {
        Some((depth, suffix)) => {
            let Some(below) = host.len().checked_sub(suffix.len() + 1).filter(|n| *n > 0) else {
                return false;
            };
            // Bytes, not str slices: a host from the sandbox may hold any UTF-8.
            let (left, dot, right) = (&host.as_bytes()[..below], host.as_bytes()[below], &host.as_bytes()[below + 1..]);
            // The labels left of the domain: one for `+.`, one or more otherwise; none empty.
            dot == b'.'
                && right.eq_ignore_ascii_case(suffix.as_bytes())
                && !left.split(|b| *b == b'.').any(<[u8]>::is_empty)
                && (depth == Depth::AnyDepth || !left.contains(&b'.'))
        }
        None => pattern.eq_ignore_ascii_case(host),
    }
}

/// Methods an access level allows.
pub(crate) fn access_allows(access: Access, method: &str) -> bool {
    match access {
        Access::Full => true,
        Access::ReadOnly => matches!(method, "GET" | "HEAD" | "OPTIONS"),
        Access::ReadWrite => matches!(method, "GET" | "HEAD" | "OPTIONS" | "POST" | "PUT" | "PATCH"),
    }
}

/// The network rules compiled for fast matching; one per policy revision.
#[derive(Debug)]
pub struct Compiled {
    entries: Vec<CompiledPolicy>,
}

#[derive(Debug)]
struct CompiledPolicy {
    policy: NetPolicy,
    binaries: Vec<GlobMatcher>,
    paths: Vec<Vec<GlobMatcher>>,
}

impl CompiledPolicy {
    /// Whether the rule names `binary`, and, when it pins hashes, `sha256`
    /// is one of them (an unknown hash never matches a pin).
    fn covers(&self, binary: &str, sha256: Option<&str>) -> bool {
        let pinned = &self.policy.sha256;
        self.binaries.iter().any(|g| g.is_match(binary))
            && (pinned.is_empty() || sha256.is_some_and(|h| pinned.iter().any(|p| p == h)))
    }
}

/// The outcome of matching a destination for one binary.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    /// A rule covers binary, host and port (`audit` when only an audit-mode
    /// endpoint covers the host and the binary is not listed).
    Allowed { policy: String, endpoint: Endpoint, audit: bool },
    /// Host and port are known to some rule, but not for this binary.
    WrongBinary { policies: Vec<String> },
    /// No rule names this host and port.
    Unlisted,
}

/// Result of checking one request on an inspected endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RequestVerdict {
    Allow,
    /// Refused by the rules but relayed: the endpoint is in audit mode.
    Audit(String),
    Deny(String),
}

impl Compiled {
    pub fn new(policies: Vec<NetPolicy>) -> Result<Compiled, NetPolicyError> {
        let mut entries = Vec::new();
        for p in policies {
            p.validate()?;
            let binaries = p.binaries.iter().map(|b| binary_glob(b)).collect::<Result<_, _>>().map_err(|e| {
                invalid(format!("{}: {e}", p.name)) // validated above; kept for completeness
            })?;
            let paths = p
                .endpoints
                .iter()
                .map(|e| e.rules.iter().map(|r| path_glob(&r.allow.path)).collect::<Result<Vec<_>, _>>())
                .collect::<Result<_, _>>()
                .map_err(|e| invalid(format!("{}: {e}", p.name)))?;
            entries.push(CompiledPolicy { policy: p, binaries, paths });
        }
        Ok(Compiled { entries })
    }

    /// Which rule, if any, lets `binary` reach `host:port` (its hash
    /// unknown: rules that pin hashes do not match).
    pub fn match_destination(&self, binary: &str, host: &str, port: u16) -> Match {
        self.match_destination_pinned(binary, None, host, port)
    }

    /// Which rule, if any, lets `binary` whose SHA-256 is `sha256` reach
    /// `host:port`; a rule with `sha256` pins matches only those hashes.
    pub fn match_destination_pinned(&self, binary: &str, sha256: Option<&str>, host: &str, port: u16) -> Match {
        let mut wrong = Vec::new();
        let mut audit: Option<Match> = None;
        for c in &self.entries {
            let bin_ok = c.covers(binary, sha256);
            for e in &c.policy.endpoints {
                if e.port != port || !host_matches(&e.host, host) {
                    continue;
                }
                if bin_ok {
                    return Match::Allowed { policy: c.policy.name.clone(), endpoint: e.clone(), audit: false };
                }
                if e.enforcement == Enforcement::Audit && audit.is_none() {
                    audit = Some(Match::Allowed { policy: c.policy.name.clone(), endpoint: e.clone(), audit: true });
                }
                wrong.push(c.policy.name.clone());
            }
        }
        if let Some(a) = audit {
            return a;
        }
        if wrong.is_empty() {
            Match::Unlisted
        } else {
            wrong.dedup();
            Match::WrongBinary { policies: wrong }
        }
    }

    /// Whether rule `policy` lets a caller hold anonymous executable memory
    /// (`jit`; an unknown name, after a revision, is judged by the caller's
    /// next match instead).
    pub fn allows_jit(&self, policy: &str) -> bool {
        self.entries.iter().find(|c| c.policy.name == policy).is_none_or(|c| c.policy.jit)
    }

    /// Whether any rule says `children = true` (only then do a caller's
    /// ancestors matter, and their code is checked).
    pub fn passes_to_children(&self) -> bool {
        self.entries.iter().any(|c| c.policy.children)
    }

    /// The rule, if any, that lets a program started by `ancestor` reach
    /// `host:port`: only rules that say `children = true` pass access down.
    pub fn match_inherited(&self, ancestor: &str, host: &str, port: u16) -> Option<Match> {
        self.match_inherited_pinned(ancestor, None, host, port)
    }

    /// `match_inherited` for an ancestor whose SHA-256 is `sha256`.
    pub fn match_inherited_pinned(&self, ancestor: &str, sha256: Option<&str>, host: &str, port: u16) -> Option<Match> {
        self.entries.iter().filter(|c| c.policy.children && c.covers(ancestor, sha256)).find_map(|c| {
            let e = c.policy.endpoints.iter().find(|e| e.port == port && host_matches(&e.host, host))?;
            Some(Match::Allowed { policy: c.policy.name.clone(), endpoint: e.clone(), audit: false })
        })
    }

    /// Checks one request (method, path without query) against the endpoint
    /// a destination matched.
    pub fn check_request(&self, policy: &str, endpoint: &Endpoint, method: &str, path: &str) -> RequestVerdict {
        let verdict = self.rule_verdict(policy, endpoint, method, path);
        match verdict {
            RequestVerdict::Deny(reason) if endpoint.enforcement == Enforcement::Audit => RequestVerdict::Audit(reason),
            v => v,
        }
    }

    fn rule_verdict(&self, policy: &str, endpoint: &Endpoint, method: &str, path: &str) -> RequestVerdict {
        if let Some(access) = endpoint.access {
            return if access_allows(access, method) {
                RequestVerdict::Allow
            } else {
                RequestVerdict::Deny(format!("method {method} is not allowed by access = {access}"))
            };
        }
        if endpoint.rules.is_empty() {
            return RequestVerdict::Allow;
        }
        let Some(c) = self.entries.iter().find(|c| c.policy.name == policy) else {
            return RequestVerdict::Deny("the policy changed".into());
        };
        let Some(i) = c.policy.endpoints.iter().position(|e| e == endpoint) else {
            return RequestVerdict::Deny("the policy changed".into());
        };
        let path = path.split(['?', '#']).next().unwrap_or(path);
        for (r, g) in endpoint.rules.iter().zip(&c.paths[i]) {
            if (r.allow.method == "*" || r.allow.method == method) && g.is_match(path) {
                return RequestVerdict::Allow;
            }
        }
        RequestVerdict::Deny(format!("no rule allows {method} {path}"))
    }
}
