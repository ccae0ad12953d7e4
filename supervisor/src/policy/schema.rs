//! The schema of a network rule: which binaries may reach which host, port,
//! method and path, and how (L4 relay, L7 inspection, passthrough); its TOML
//! form (unknown keys rejected) and its validation. A leaf of `policy/`.
//! Guards against a rule meaning more than it says: host and binary globs
//! are anchored, `*` never crosses a `/` or `.` boundary it should not, and
//! a rule the gateway cannot enforce (inspection through a passthrough
//! tunnel) is an error, not a silent allow.
#![forbid(unsafe_code)]
use globset::{GlobBuilder, GlobMatcher};
use serde::{Deserialize, Serialize};

/// One named rule set: these binaries may reach these endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetPolicy {
    pub name: String,
    /// Why this access exists (shown in events and `moat policy check`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub why: String,
    /// Absolute paths inside the sandbox; `*` one component, `**` any depth.
    pub binaries: Vec<String>,
    /// When not empty, a listed binary matches only while its SHA-256 is one
    /// of these (lower-case hex): an approval pins the binary it was given
    /// for, so another program later put at the same path is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sha256: Vec<String>,
    /// Whether the programs a listed binary starts (and theirs) get this
    /// access too. Off by default: a rule for git does not cover the python
    /// a git alias runs. `moat policy check` names the binaries known to run
    /// other programs when it is on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub children: bool,
    /// Whether the caller may hold anonymous executable memory (a JIT: node,
    /// the JVM). On by default, which keeps node working; `jit = false` for
    /// a native program refuses a caller whose code could hide there.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub jit: bool,
    #[serde(rename = "endpoint")]
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// Exact host name, IP literal, or a wildcard: `+.example.com` (exactly
    /// one label below it), `**.example.com` or `*.example.com` (any depth
    /// below it); see [`wildcard`].
    pub host: String,
    #[serde(default = "default_port")]
    pub port: u16,
    /// Absent: L4 (the tunnel is relayed as bytes). `rest`: each HTTP request is checked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<Protocol>,
    /// For `rest`: `terminate` (default) or `passthrough` (not inspectable).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<Tls>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub access: Option<Access>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<Rule>,
    #[serde(default, skip_serializing_if = "is_enforce")]
    pub enforcement: Enforcement,
    /// CIDRs that opt private/reserved destinations of this endpoint in.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub allowed_ips: Vec<String>,
    /// For inspected endpoints: relay WebSocket upgrades (after the 101 the
    /// connection is bytes, no longer inspected). Never with `read-only`.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub upgrade: bool,
    /// For inspected endpoints: the CA certificates (PEM) the upstream's
    /// certificate is verified against, in place of the host's roots.
    /// Written as a path relative to the policy file, embedded when the file
    /// is loaded ([`crate::policy::upstream_ca`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_ca: Option<String>,
}

fn yes() -> bool {
    true
}
fn is_true(b: &bool) -> bool {
    *b
}
fn default_port() -> u16 {
    443
}
fn is_enforce(e: &Enforcement) -> bool {
    *e == Enforcement::Enforce
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Rest,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tls {
    Terminate,
    Passthrough,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Access {
    Full,
    ReadOnly,
    ReadWrite,
}

impl std::fmt::Display for Access {
    /// As a policy file spells it (`read-only`), for messages that quote it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Access::Full => "full",
            Access::ReadOnly => "read-only",
            Access::ReadWrite => "read-write",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Enforcement {
    #[default]
    Enforce,
    /// Requests that would be refused are relayed and logged as `audit`.
    Audit,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub allow: RuleMatch,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuleMatch {
    /// An HTTP method, or `*`.
    pub method: String,
    /// A path glob (`*` one segment, `**` any depth); the query is not matched.
    pub path: String,
}

#[derive(Debug, thiserror::Error)]
pub enum NetPolicyError {
    #[error("{0}")]
    Invalid(String),
    #[error("{origin}:{line}:{column}: {message}")]
    Parse { origin: String, line: usize, column: usize, message: String },
}

pub(crate) fn invalid(s: impl Into<String>) -> NetPolicyError {
    NetPolicyError::Invalid(s.into())
}

/// Parses TOML with errors at file:line:column.
pub fn parse_toml<T: serde::de::DeserializeOwned>(text: &str, origin: &str) -> Result<T, NetPolicyError> {
    moat_builder::textfile::parse_toml(text, origin).map_err(|at| NetPolicyError::Parse {
        origin: at.origin,
        line: at.line,
        column: at.column,
        message: at.message,
    })
}

impl NetPolicy {
    pub fn validate(&self) -> Result<(), NetPolicyError> {
        let at = format!("network.policy {:?}", self.name);
        if self.name.is_empty() || self.name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(invalid(format!("{at}: name must be non-empty without spaces")));
        }
        if self.binaries.is_empty() {
            return Err(invalid(format!("{at}: binaries is empty (name the programs that need this access)")));
        }
        for b in &self.binaries {
            if !b.starts_with('/') || b.split('/').any(|c| c == "..") {
                return Err(invalid(format!("{at}: binary {b:?} must be an absolute path without `..`")));
            }
            binary_glob(b).map_err(|e| invalid(format!("{at}: binary {b:?}: {e}")))?;
        }
        if let Some(h) =
            self.sha256.iter().find(|h| h.len() != 64 || !h.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')))
        {
            return Err(invalid(format!("{at}: sha256 {h:?} is not 64 lower-case hex digits")));
        }
        if self.endpoints.is_empty() {
            return Err(invalid(format!("{at}: no [[network.policy.endpoint]]")));
        }
        for e in &self.endpoints {
            e.validate().map_err(|m| invalid(format!("{at}: endpoint {}:{}: {m}", e.host, e.port)))?;
        }
        Ok(())
    }
}

impl Endpoint {
    /// `host:port` relayed as bytes (L4), nothing else set: the base an
    /// approval, an import and a suggestion start from.
    pub fn l4(host: impl Into<String>, port: u16) -> Endpoint {
        Endpoint {
            host: host.into(),
            port,
            protocol: None,
            tls: None,
            access: None,
            rules: Vec::new(),
            enforcement: Enforcement::Enforce,
            allowed_ips: Vec::new(),
            upgrade: false,
            upstream_ca: None,
        }
    }

    fn validate(&self) -> Result<(), String> {
        check_host_pattern(&self.host)?;
        if self.port == 0 {
            return Err("port must be 1-65535".into());
        }
        let inspects = self.access.is_some_and(|a| a != Access::Full) || !self.rules.is_empty();
        if self.protocol.is_none() && (self.access.is_some() || !self.rules.is_empty() || self.tls.is_some()) {
            return Err("access, rules and tls need protocol = \"rest\" (L4 endpoints are relayed as bytes)".into());
        }
        if self.access.is_some() && !self.rules.is_empty() {
            return Err("give either access or rules, not both".into());
        }
        if self.upgrade && !self.inspected() {
            return Err("upgrade = true needs protocol = \"rest\" with tls = \"terminate\" \
                        (uninspected endpoints relay bytes already)"
                .into());
        }
        if self.upgrade && self.access == Some(Access::ReadOnly) {
            return Err("upgrade = true with access = \"read-only\": an upgraded connection carries \
                        uninspected writes"
                .into());
        }
        if let Some(ca) = &self.upstream_ca {
            if !self.inspected() {
                return Err("upstream_ca needs protocol = \"rest\" with tls = \"terminate\" (elsewhere the \
                            client verifies the upstream itself)"
                    .into());
            }
            crate::policy::upstream_ca::validate(ca)?;
        }
        if self.tls == Some(Tls::Passthrough) && inspects {
            return Err("tls = \"passthrough\" cannot be inspected: method/path limits need tls = \"terminate\"".into());
        }
        for r in &self.rules {
            let m = &r.allow.method;
            if m != "*" && (m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase())) {
                return Err(format!("rule method {m:?}: use an upper-case HTTP method or *"));
            }
            if !r.allow.path.starts_with('/') {
                return Err(format!("rule path {:?} must start with /", r.allow.path));
            }
            path_glob(&r.allow.path).map_err(|e| format!("rule path {:?}: {e}", r.allow.path))?;
        }
        for c in &self.allowed_ips {
            c.parse::<ipnet::IpNet>()
                .or_else(|_| c.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
                .map_err(|_| format!("allowed_ips: {c:?} is not a CIDR"))?;
        }
        Ok(())
    }

    /// True when requests through this endpoint are parsed and checked.
    pub fn inspected(&self) -> bool {
        self.protocol == Some(Protocol::Rest) && self.tls != Some(Tls::Passthrough)
    }

    /// The parsed `allowed_ips`.
    pub fn allowed_nets(&self) -> Vec<ipnet::IpNet> {
        self.allowed_ips
            .iter()
            .filter_map(|c| c.parse().ok().or_else(|| c.parse::<std::net::IpAddr>().ok().map(ipnet::IpNet::from)))
            .collect()
    }
}

fn check_host_pattern(h: &str) -> Result<(), String> {
    if variable(h).is_some() {
        return Ok(()); // `{name}`: resolved by `effective()`, checked then
    }
    check_host(h)
}

/// How many labels a wildcard host stands for below its domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Depth {
    /// `+.domain`: exactly one label (`a.domain`, not `a.b.domain`), what
    /// OpenShell and TLS certificates mean by `*.domain`.
    OneLabel,
    /// `**.domain`, and moat's `*.domain`: one label or more.
    AnyDepth,
}

/// The depth and domain of a wildcard host (`+.d`, `**.d`, `*.d`), or
/// `None` for an exact host. `*.d` stays any depth, as it always was in
/// moat, so no existing policy changes meaning; `+.d` is the one-label form.
pub fn wildcard(host: &str) -> Option<(Depth, &str)> {
    if let Some(d) = host.strip_prefix("+.") {
        return Some((Depth::OneLabel, d));
    }
    host.strip_prefix("**.").or_else(|| host.strip_prefix("*.")).map(|d| (Depth::AnyDepth, d))
}

/// A host name, an IP literal or a wildcard (`+.domain`, `**.domain`, `*.domain`).
pub(crate) fn check_host(h: &str) -> Result<(), String> {
    let name = wildcard(h).map_or(h, |(_, d)| d);
    if name.parse::<std::net::IpAddr>().is_ok() && wildcard(h).is_none() {
        return Ok(());
    }
    let ok = !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|l| {
            !l.is_empty() && l.len() <= 63 && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "host {h:?}: use a host name, an IP address, +.domain (one label below it) or **.domain (any depth)"
        ))
    }
}

pub(crate) fn binary_glob(p: &str) -> Result<GlobMatcher, globset::Error> {
    Ok(GlobBuilder::new(p).literal_separator(true).build()?.compile_matcher())
}

pub(crate) fn path_glob(p: &str) -> Result<GlobMatcher, globset::Error> {
    Ok(GlobBuilder::new(p).literal_separator(true).build()?.compile_matcher())
}

/// The variable name of a `{name}` host, if it is one (`policy::host_vars`
/// resolves them).
pub fn variable(host: &str) -> Option<&str> {
    let name = host.strip_prefix('{')?.strip_suffix('}')?;
    let ok = !name.is_empty() && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    ok.then_some(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint(extra: &str) -> Result<Endpoint, String> {
        let e: Endpoint = toml::from_str(&format!("host = \"a.example\"\n{extra}")).map_err(|e| e.to_string())?;
        e.validate().map(|()| e)
    }

    #[test]
    fn upgrades_are_opt_in_and_never_read_only() {
        assert!(!endpoint("protocol = \"rest\"").unwrap().upgrade);
        assert!(endpoint("protocol = \"rest\"\naccess = \"read-write\"\nupgrade = true").unwrap().upgrade);
        assert!(endpoint(
            "protocol = \"rest\"\nrules = [{ allow = { method = \"GET\", path = \"/ws\" } }]\nupgrade = true"
        )
        .is_ok());
        let e = endpoint("protocol = \"rest\"\naccess = \"read-only\"\nupgrade = true").unwrap_err();
        assert!(e.contains("read-only"), "{e}");
        assert!(endpoint("upgrade = true").unwrap_err().contains("needs protocol"));
        assert!(endpoint("protocol = \"rest\"\ntls = \"passthrough\"\nupgrade = true").is_err());
        assert!(endpoint("protocol = \"rest\"\nupgrade = \"yes\"").is_err(), "a boolean");
        assert!(endpoint("protocol = \"rest\"\nupgrades = true").unwrap_err().contains("unknown field"));
    }
}
