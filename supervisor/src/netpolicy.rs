//! The network section of a policy: which binary may reach which host, port,
//! method and path, and how (L4 relay, L7 inspection, passthrough). Owns the
//! schema (TOML, unknown keys rejected), its validation, the embedded presets
//! and profiles, and the compiled matcher the egress gateway asks. Guards
//! against a rule meaning more than it says: host and binary globs are
//! anchored, `*` never crosses a `/` or `.` boundary it should not, and a
//! rule the gateway cannot enforce (inspection through a passthrough tunnel)
//! is an error, not a silent allow.
use globset::{GlobBuilder, GlobMatcher};
use serde::{Deserialize, Serialize};

/// The network section: the gateway's port, presets by name, own rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    pub gateway_port: u16,
    /// Presets (policies/presets/NAME.toml) composed into this policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub presets: Vec<String>,
    #[serde(default, rename = "policy", skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<NetPolicy>,
}

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
    #[serde(rename = "endpoint")]
    pub endpoints: Vec<Endpoint>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// Exact host name, IP literal, or `*.example.com` (any name below it).
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

/// A preset file: `policies/presets/NAME.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    pub version: u32,
    pub name: String,
    pub description: String,
    /// What an agent could do with this access: the reviewer's first question.
    pub risk: String,
    #[serde(rename = "policy")]
    pub policies: Vec<NetPolicy>,
}

/// A profile file: `policies/profiles/NAME.toml`, a named set of presets.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub version: u32,
    pub name: String,
    pub description: String,
    pub presets: Vec<String>,
}

macro_rules! embedded {
    ($dir:literal: $($name:literal),* $(,)?) => {
        &[$(($name, include_str!(concat!("../../policies/", $dir, "/", $name, ".toml")))),*]
    };
}

/// Every preset shipped with moat, by name.
pub const PRESETS: &[(&str, &str)] = embedded!("presets":
    "brave", "brew", "claude-code", "discord", "github", "huggingface", "jira", "local-inference",
    "npm", "outlook", "pypi", "slack", "telegram",
);

/// Every profile shipped with moat, by name.
pub const PROFILES: &[(&str, &str)] = embedded!("profiles": "locked-down", "development", "integration-testing");

#[derive(Debug, thiserror::Error)]
pub enum NetPolicyError {
    #[error("{0}")]
    Invalid(String),
    #[error("{origin}:{line}:{column}: {message}")]
    Parse { origin: String, line: usize, column: usize, message: String },
}

fn invalid(s: impl Into<String>) -> NetPolicyError {
    NetPolicyError::Invalid(s.into())
}

/// Parses TOML with errors at file:line:column.
pub fn parse_toml<T: serde::de::DeserializeOwned>(text: &str, origin: &str) -> Result<T, NetPolicyError> {
    toml::from_str(text).map_err(|e| {
        let (line, column) = e.span().map(|s| crate::policy::line_col(text, s.start)).unwrap_or((1, 1));
        NetPolicyError::Parse { origin: origin.into(), line, column, message: e.message().to_string() }
    })
}

/// Loads an embedded preset by name.
pub fn preset(name: &str) -> Result<Preset, NetPolicyError> {
    let (_, text) = PRESETS.iter().find(|(n, _)| *n == name).ok_or_else(|| {
        let names: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
        invalid(format!("unknown preset {name:?} (known: {})", names.join(", ")))
    })?;
    let p: Preset = parse_toml(text, &format!("policies/presets/{name}.toml"))?;
    for pol in &p.policies {
        pol.validate().map_err(|e| invalid(format!("preset {name}: {e}")))?;
    }
    Ok(p)
}

/// Loads an embedded profile by name.
pub fn profile(name: &str) -> Result<Profile, NetPolicyError> {
    let (_, text) = PROFILES.iter().find(|(n, _)| *n == name).ok_or_else(|| {
        let names: Vec<&str> = PROFILES.iter().map(|(n, _)| *n).collect();
        invalid(format!("unknown profile {name:?} (known: {})", names.join(", ")))
    })?;
    parse_toml(text, &format!("policies/profiles/{name}.toml"))
}

impl Network {
    /// Checks every rule and every preset name.
    pub fn validate(&self) -> Result<(), NetPolicyError> {
        if self.gateway_port == 0 {
            return Err(invalid("network.gateway_port must be 1-65535"));
        }
        let mut names = std::collections::BTreeSet::new();
        for p in &self.policies {
            p.validate()?;
            if !names.insert(p.name.as_str()) {
                return Err(invalid(format!("network.policy {:?} is defined twice", p.name)));
            }
        }
        for name in &self.presets {
            preset(name)?;
        }
        Ok(())
    }

    /// Own rules followed by every preset's (named `preset/POLICY`).
    /// Host variables (`{name}`) are resolved from `registries.toml`.
    pub fn effective(&self) -> Result<Vec<NetPolicy>, NetPolicyError> {
        let mut out = self.policies.clone();
        for name in &self.presets {
            for mut p in preset(name)?.policies {
                p.name = format!("{name}/{}", p.name);
                out.push(p);
            }
        }
        let uses_variables =
            out.iter().flat_map(|p| &p.endpoints).any(|e| crate::host_vars::variable(&e.host).is_some());
        if !uses_variables {
            return Ok(out);
        }
        crate::host_vars::expand(out, &crate::host_vars::load()?)
    }
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
    if crate::host_vars::variable(h).is_some() {
        return Ok(()); // `{name}`: resolved by `effective()`, checked then
    }
    check_host(h)
}

/// A host name, an IP literal or `*.domain`.
pub(crate) fn check_host(h: &str) -> Result<(), String> {
    let name = h.strip_prefix("*.").unwrap_or(h);
    if name.parse::<std::net::IpAddr>().is_ok() && !h.starts_with("*.") {
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
        Err(format!("host {h:?}: use a host name, an IP address or *.domain"))
    }
}

fn binary_glob(p: &str) -> Result<GlobMatcher, globset::Error> {
    Ok(GlobBuilder::new(p).literal_separator(true).build()?.compile_matcher())
}

fn path_glob(p: &str) -> Result<GlobMatcher, globset::Error> {
    Ok(GlobBuilder::new(p).literal_separator(true).build()?.compile_matcher())
}

/// Does `host` (lower-cased by the caller) fall under `pattern`?
pub fn host_matches(pattern: &str, host: &str) -> bool {
    let host = host.trim_end_matches('.');
    match pattern.strip_prefix("*.") {
        Some(suffix) => {
            host.len() > suffix.len() + 1
                && host[host.len() - suffix.len()..].eq_ignore_ascii_case(suffix)
                && host.as_bytes()[host.len() - suffix.len() - 1] == b'.'
        }
        None => pattern.eq_ignore_ascii_case(host),
    }
}

/// Methods an access level allows.
pub fn access_allows(access: Access, method: &str) -> bool {
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

    /// Which rule, if any, lets `binary` reach `host:port`.
    pub fn match_destination(&self, binary: &str, host: &str, port: u16) -> Match {
        let mut wrong = Vec::new();
        let mut audit: Option<Match> = None;
        for c in &self.entries {
            let bin_ok = c.binaries.iter().any(|g| g.is_match(binary));
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
                RequestVerdict::Deny(format!("method {method} is not allowed by access = {access:?}"))
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

/// Hosts of hosted model providers: reaching them directly bypasses the
/// inference gateway (and puts a key inside the sandbox).
pub const INFERENCE_HOSTS: &[&str] = &[
    "api.openai.com",
    "api.anthropic.com",
    "generativelanguage.googleapis.com",
    "api.mistral.ai",
    "api.groq.com",
    "api.together.xyz",
    "api.fireworks.ai",
    "api.cohere.com",
    "api.deepseek.com",
    "openrouter.ai",
    "integrate.api.nvidia.com",
    "api.x.ai",
];

/// Shells and interpreters: listing one extends a rule to whatever it runs.
const LAUNCHERS: &[&str] =
    &["sh", "bash", "dash", "zsh", "busybox", "env", "python", "python3", "node", "perl", "ruby"];

/// The warning for an endpoint that opens a known inference provider directly.
fn direct_inference_warning(p: &NetPolicy, e: &Endpoint) -> Option<String> {
    INFERENCE_HOSTS.iter().any(|h| host_matches(&e.host, h) || e.host.eq_ignore_ascii_case(h)).then(|| {
        format!(
            "policy {}: opens inference provider {} directly; use inference.local so the key stays on the host",
            p.name, e.host
        )
    })
}

/// The [`lint`] warnings about endpoints that reach an inference provider
/// around `inference.local` (where the key would have to be in the sandbox).
pub fn direct_inference(policies: &[NetPolicy]) -> Vec<String> {
    policies.iter().flat_map(|p| p.endpoints.iter().filter_map(move |e| direct_inference_warning(p, e))).collect()
}

/// Warnings about rules that are valid but wider than they look.
pub fn lint(policies: &[NetPolicy]) -> Vec<String> {
    let mut out = Vec::new();
    for p in policies {
        for b in &p.binaries {
            if b.contains("**") || b.ends_with("/*") {
                out.push(format!("policy {}: binary pattern {b:?} admits every program below it", p.name));
            }
            let base = b.rsplit('/').next().unwrap_or(b);
            if LAUNCHERS.iter().any(|l| base == *l || base.starts_with(&format!("{l}3")) && *l == "python") {
                out.push(format!(
                    "policy {}: {b} starts other programs, and a rule matches the caller's ancestors too: \
                     everything it runs gets this access",
                    p.name
                ));
            }
        }
        for e in &p.endpoints {
            out.extend(direct_inference_warning(p, e));
            if e.protocol.is_none() {
                out.push(format!("policy {}: {}:{} is relayed at L4 (no method/path checks)", p.name, e.host, e.port));
            }
            if e.enforcement == Enforcement::Audit {
                out.push(format!(
                    "policy {}: {}:{} is in audit mode (refusals are only logged)",
                    p.name, e.host, e.port
                ));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(text: &str) -> Network {
        let n: Network = toml::from_str(text).unwrap();
        n.validate().unwrap();
        n
    }

    const GIT: &str = r#"
gateway_port = 3128
[[policy]]
name = "gh"
binaries = ["/usr/bin/git", "/usr/lib/git-core/*"]
[[policy.endpoint]]
host = "github.com"
port = 443
protocol = "rest"
access = "read-only"
[[policy.endpoint]]
host = "*.githubusercontent.com"
[[policy.endpoint]]
host = "api.github.com"
protocol = "rest"
rules = [{ allow = { method = "GET", path = "/repos/*/issues/**" } }]
enforcement = "audit"
"#;

    #[test]
    fn binaries_hosts_and_ports_match_exactly() {
        let c = Compiled::new(net(GIT).effective().unwrap()).unwrap();
        assert!(matches!(c.match_destination("/usr/bin/git", "github.com", 443), Match::Allowed { audit: false, .. }));
        assert!(matches!(c.match_destination("/usr/bin/git", "GitHub.com", 443), Match::Allowed { .. }));
        assert!(matches!(
            c.match_destination("/usr/lib/git-core/git-remote-https", "github.com", 443),
            Match::Allowed { .. }
        ));
        assert_eq!(
            c.match_destination("/usr/bin/curl", "github.com", 443),
            Match::WrongBinary { policies: vec!["gh".into()] }
        );
        assert_eq!(
            c.match_destination("/sandbox/git", "github.com", 443),
            Match::WrongBinary { policies: vec!["gh".into()] }
        );
        assert_eq!(
            c.match_destination("/usr/lib/git-core/sub/x", "github.com", 443),
            Match::WrongBinary { policies: vec!["gh".into()] }
        );
        assert_eq!(c.match_destination("/usr/bin/git", "github.com", 80), Match::Unlisted);
        assert_eq!(c.match_destination("/usr/bin/git", "evilgithub.com", 443), Match::Unlisted);
        assert!(matches!(c.match_destination("/usr/bin/git", "raw.githubusercontent.com", 443), Match::Allowed { .. }));
        assert_eq!(c.match_destination("/usr/bin/git", "githubusercontent.com", 443), Match::Unlisted);
        assert_eq!(c.match_destination("/usr/bin/git", "x.githubusercontent.com.evil", 443), Match::Unlisted);
        // audit-mode endpoint: an unlisted binary passes, flagged.
        assert!(matches!(
            c.match_destination("/usr/bin/curl", "api.github.com", 443),
            Match::Allowed { audit: true, .. }
        ));
    }

    #[test]
    fn access_levels_and_rules() {
        let c = Compiled::new(net(GIT).effective().unwrap()).unwrap();
        let Match::Allowed { policy, endpoint, .. } = c.match_destination("/usr/bin/git", "github.com", 443) else {
            panic!()
        };
        assert_eq!(c.check_request(&policy, &endpoint, "GET", "/a/b"), RequestVerdict::Allow);
        assert!(matches!(c.check_request(&policy, &endpoint, "POST", "/a/b"), RequestVerdict::Deny(_)));
        assert!(access_allows(Access::ReadWrite, "PATCH"));
        assert!(!access_allows(Access::ReadWrite, "DELETE"));
        let Match::Allowed { policy, endpoint, .. } = c.match_destination("/usr/bin/git", "api.github.com", 443) else {
            panic!()
        };
        assert_eq!(c.check_request(&policy, &endpoint, "GET", "/repos/a/issues/1/comments?x=1"), RequestVerdict::Allow);
        assert!(matches!(c.check_request(&policy, &endpoint, "GET", "/repos/a/b/issues"), RequestVerdict::Audit(_)));
    }

    #[test]
    fn unenforceable_or_malformed_rules_are_errors() {
        for (bad, want) in [
            ("host = \"a.com\"\naccess = \"read-only\"", "need protocol"),
            ("host = \"a.com\"\nprotocol = \"rest\"\ntls = \"passthrough\"\naccess = \"read-only\"", "passthrough"),
            ("host = \"a b\"", "host"),
            ("host = \"a.com\"\nallowed_ips = [\"10.0.0.0/33\"]", "CIDR"),
            (
                "host = \"a.com\"\nprotocol = \"rest\"\nrules = [{ allow = { method = \"get\", path = \"/\" } }]",
                "method",
            ),
        ] {
            let text = format!(
                "gateway_port = 1\n[[policy]]\nname = \"p\"\nbinaries = [\"/x\"]\n[[policy.endpoint]]\n{bad}\n"
            );
            let n: Network = toml::from_str(&text).unwrap();
            let e = n.validate().unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
        let text = "gateway_port = 1\n[[policy]]\nname = \"p\"\nbinaries = [\"/x\"]\n[[policy.endpoint]]\nhost = \"a\"\nallow = 1\n";
        assert!(toml::from_str::<Network>(text).is_err());
    }

    #[test]
    fn lint_flags_direct_inference_and_wide_rules() {
        let text = "gateway_port = 1\n[[policy]]\nname = \"p\"\nbinaries = [\"/usr/**\"]\n[[policy.endpoint]]\nhost = \"api.openai.com\"\n";
        let w = lint(&net(text).policies);
        assert!(w.iter().any(|w| w.contains("inference provider")), "{w:?}");
        assert!(w.iter().any(|w| w.contains("every program")), "{w:?}");
        assert!(lint(&net(GIT).policies).iter().all(|w| !w.contains("inference")));
    }

    #[test]
    fn every_preset_and_profile_loads() {
        for (name, _) in PRESETS {
            let p = preset(name).unwrap();
            assert_eq!(&p.name, name);
            assert!(!p.risk.trim().is_empty(), "{name} has no risk");
        }
        for (name, _) in PROFILES {
            let p = profile(name).unwrap();
            for pre in &p.presets {
                preset(pre).unwrap();
            }
        }
    }
}
