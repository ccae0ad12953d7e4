//! One OpenShell endpoint and its allow rules as moat endpoints: host
//! wildcards by label (`*.d` one label, `**.d` any depth), methods in any
//! case, path globs, protocols and TLS modes. Guards against an endpoint
//! meaning more than, or silently other than, its source: what moat cannot
//! say is dropped or warned at its line, never widened.
#![forbid(unsafe_code)]
use super::{is_set, key_text, list, port_number, scalar_text, string, Ctx};
use crate::policy::schema::{Access, Endpoint, Enforcement, NetPolicy, Protocol, Rule, RuleMatch, Tls};
use serde_norway::Value;
use std::collections::BTreeSet;

/// Endpoint fields moat has no counterpart for; none of them narrows access
/// for the protocols moat imports, so they are reported and left out.
#[rustfmt::skip]
pub(super) const UNSUPPORTED_ENDPOINT_FIELDS: &[&str] = &[
    "allow_encoded_slash", "websocket_credential_rewrite", "request_body_credential_rewrite",
    "allow_uninspected_credentials", "persisted_queries", "graphql_persisted_queries", "graphql_max_body_bytes",
    "credential_signing", "signing_service", "signing_region", "json_rpc", "mcp",
];

/// `allow` fields that match things moat's rules cannot (query strings,
/// GraphQL operations, MCP tools, SQL commands): a rule using them is dropped.
pub(super) const UNSUPPORTED_ALLOW_FIELDS: &[&str] =
    &["query", "command", "operation_type", "operation_name", "fields", "tool", "params"];

pub(super) const DENY_RULES: &str =
    "deny_rules cannot be carried over (moat has allow rules only), and without them the \
    endpoint would allow what they deny";
pub(super) const ENDPOINT_PATH: &str =
    "an endpoint-wide path limit cannot be carried over, and without it the endpoint \
    would allow more";
pub(super) const INFERRED_REST: &str =
    "absent: imported as protocol = \"rest\" (inspected), which is what enforces its \
    access/rules in moat";
pub(super) const OTHER_PROTOCOL: &str =
    "moat inspects HTTP (rest) only, and relaying it as bytes would drop its limits; \
    write an L4 endpoint by hand if that is acceptable";
pub(super) const TCP: &str = "tcp: OpenShell reaches it from any client through its policy DNS and \
    transparent capture; moat relays it at L4 through the gateway, which clients that ignore the proxy \
    settings do not reach";
pub(super) const PRIVATE: &str = "may be a private address: OpenShell lets an exact host reach private \
    (RFC 1918) addresses without allowed_ips, moat refuses them unless allowed_ips names them; add \
    allowed_ips with the addresses it resolves to if it is private";
pub(super) const NO_PATH: &str = "OpenShell matches rule paths with / as a separator, so a pattern that does \
    not start with / (\"**\" aside) matches no request path: rule dropped (write \"/**\" for every path)";
pub(super) const RAW_TLS_LIMITS: &str =
    "a raw TLS tunnel (tls: skip/passthrough) cannot be inspected, so its access/rules \
    could not be enforced";

impl Ctx {
    /// One `endpoints[i]` entry, as one moat endpoint per port; `Err` says
    /// why it is dropped.
    pub(super) fn endpoint(&mut self, at: &str, v: &Value) -> Result<Vec<Endpoint>, String> {
        let m = v.as_mapping().ok_or("expected a mapping with host, port, ...")?;
        let (mut host, mut port, mut ports, mut allowed_ips, mut rules) = (None, None, Vec::new(), Vec::new(), None);
        let (mut protocol, mut tls, mut enforcement, mut access) = <(String, String, String, String)>::default();
        for (k, v) in m {
            let field = key_text(k);
            let path = format!("{at}.{field}");
            let text = || string(v).map(|s| s.to_ascii_lowercase()).ok_or(format!("{field} is not a string"));
            match field.as_str() {
                "host" => host = Some(host_pattern(&string(v).ok_or("host is not a string")?)?),
                "port" if v.is_null() => {}
                "port" => port = Some(port_number(v)?),
                "ports" => ports = list(v, "ports")?.iter().map(port_number).collect::<Result<_, _>>()?,
                "protocol" => protocol = text()?,
                "tls" => tls = text()?,
                "enforcement" => enforcement = text()?,
                "access" => access = text()?,
                "allowed_ips" => {
                    for ip in list(v, "allowed_ips")? {
                        allowed_ips.push(string(ip).ok_or("allowed_ips holds a non-string")?);
                    }
                }
                "rules" => {
                    let given = list(v, "rules")?;
                    let kept = self.rules(&path, given);
                    if !given.is_empty() && kept.is_empty() {
                        return Err(
                            "none of its rules could be carried over; without rules it allows everything".into()
                        );
                    }
                    rules = Some(kept);
                }
                "deny_rules" if is_set(v) => return Err(DENY_RULES.into()),
                "path" if is_set(v) => return Err(format!("path {}: {ENDPOINT_PATH}", scalar_text(v))),
                "deny_rules" | "path" => {}
                f if UNSUPPORTED_ENDPOINT_FIELDS.contains(&f) => {
                    if is_set(v) {
                        self.warn(&path, "not carried over (moat has no equivalent)");
                    }
                }
                _ => self.warn(&path, "unknown field, not carried over"),
            }
        }
        let host = host.ok_or("no host")?;
        if allowed_ips.is_empty() && may_be_private(&host) {
            self.warn(&format!("{at}.host"), format!("{host}: {PRIVATE}"));
        }
        let rules = rules.unwrap_or_default();
        let access = match access.as_str() {
            "" => None,
            "full" => Some(Access::Full),
            "read-only" => Some(Access::ReadOnly),
            "read-write" => Some(Access::ReadWrite),
            other => return Err(format!("access {other:?} is not full, read-only or read-write")),
        };
        if access.is_some() && !rules.is_empty() {
            return Err("access and rules are mutually exclusive".into());
        }
        let limits = !rules.is_empty() || access.is_some_and(|a| a != Access::Full);
        let mut rest = match protocol.as_str() {
            "rest" => true,
            "" if limits => {
                self.warn(&format!("{at}.protocol"), INFERRED_REST);
                true
            }
            "" => false,
            "tcp" if access.is_some() || !rules.is_empty() => return Err("tcp cannot carry access or rules".into()),
            "tcp" => {
                self.warn(&format!("{at}.protocol"), TCP);
                false
            }
            other => return Err(format!("protocol {other:?}: {OTHER_PROTOCOL}")),
        };
        let mut tls = match tls.as_str() {
            "" => None,
            "terminate" => Some(Tls::Terminate),
            "skip" | "passthrough" => Some(Tls::Passthrough),
            other => return Err(format!("tls {other:?} is not terminate, passthrough or skip")),
        };
        if tls == Some(Tls::Passthrough) {
            if limits {
                return Err(RAW_TLS_LIMITS.into());
            }
            (rest, tls) = (false, None); // an uninspected tunnel: moat's L4 relay
        }
        if rest && access.is_none() && rules.is_empty() {
            return Err(
                "protocol rest without access or rules (OpenShell rejects it; `access: full` allows everything)".into(),
            );
        }
        if !rest && tls == Some(Tls::Terminate) {
            self.warn(&format!("{at}.tls"), "terminate on an uninspected endpoint: moat relays it as bytes (L4)");
            tls = None;
        }
        let enforcement = match enforcement.as_str() {
            "" | "enforce" => Enforcement::Enforce,
            "audit" => Enforcement::Audit,
            other => return Err(format!("enforcement {other:?} is not enforce or audit")),
        };
        if ports.is_empty() {
            ports.extend(port);
        } else if port.is_some_and(|p| !ports.contains(&p)) {
            self.warn(&format!("{at}.port"), "ignored: `ports` is given and takes precedence");
        }
        let first = *ports.first().ok_or("no port")?;
        let template = match rest {
            true => Endpoint {
                protocol: Some(Protocol::Rest),
                tls,
                access,
                rules,
                enforcement,
                allowed_ips,
                ..l4(host, first)
            },
            false => Endpoint { enforcement, allowed_ips, ..l4(host, first) },
        };
        check("/probe".into(), template.clone())?;
        let mut seen = BTreeSet::new();
        Ok(ports.into_iter().filter(|p| seen.insert(*p)).map(|port| Endpoint { port, ..template.clone() }).collect())
    }

    /// The `rules` list: `- allow: { method, path }`. A rule moat cannot
    /// express is dropped (that narrows the endpoint, never widens it).
    fn rules(&mut self, at: &str, given: &[Value]) -> Vec<Rule> {
        let mut kept: Vec<Rule> = Vec::new();
        for (i, r) in given.iter().enumerate() {
            match rule(r) {
                Ok(rules) => kept.extend(rules.into_iter().filter(|r| !kept.contains(r)).collect::<Vec<_>>()),
                Err((field, why)) => self.warn(&format!("{at}[{i}]{field}"), format!("rule dropped: {why}")),
            }
        }
        kept
    }
}

/// An OpenShell host as a moat host: `*.d` (`*` is one label there) is
/// moat's one-label `+.d`, `**.d` stays any depth; a `*` elsewhere (inside a
/// label, past the first) has no moat form and drops the endpoint.
fn host_pattern(h: &str) -> Result<String, String> {
    let (first, rest) = h.split_once('.').unwrap_or((h, ""));
    if !h.contains('*') {
        return Ok(h.to_string());
    }
    match first {
        "*" if !rest.contains('*') && !rest.is_empty() => Ok(format!("+.{rest}")),
        "**" if !rest.contains('*') && !rest.is_empty() => Ok(format!("**.{rest}")),
        _ => Err(format!(
            "host {h:?}: moat has wildcards for whole labels below a domain only (OpenShell *.d is moat's +.d, \
             one label; **.d any depth)"
        )),
    }
}

/// Whether an exact host may stand for a private address: a private IP
/// literal, a single label, or a name under a suffix used inside networks.
fn may_be_private(host: &str) -> bool {
    const INTERNAL: &[&str] = &[".internal", ".local", ".localdomain", ".lan", ".home.arpa", ".corp", ".intranet"];
    if crate::policy::schema::wildcard(host).is_some() {
        return false; // OpenShell needs allowed_ips for these too
    }
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(a)) => a.is_private() || (a.octets()[0] == 100 && a.octets()[1] & 0xc0 == 64),
        Ok(std::net::IpAddr::V6(a)) => a.segments()[0] & 0xfe00 == 0xfc00,
        Err(_) => {
            let h = host.trim_end_matches('.').to_ascii_lowercase();
            !h.contains('.') || INTERNAL.iter().any(|s| h.ends_with(s))
        }
    }
}

/// One `- allow: { method, path }` rule as moat rules (a GET rule also
/// allows HEAD, as in OpenShell); `Err((.FIELD, why))` otherwise.
fn rule(r: &Value) -> Result<Vec<Rule>, (String, String)> {
    let whole = |why: &str| (String::new(), why.to_string());
    let at = |f: &str, why: &str| (format!(".{f}"), why.to_string());
    let m = r.as_mapping().ok_or(whole("expected `allow: { method, path }`"))?;
    let (mut method, mut path, mut allow) = (None, None, None);
    for (k, v) in m {
        match (key_text(k).as_str(), v) {
            ("allow", Value::Mapping(a)) => allow = Some(a),
            (f, _) => return Err(at(f, "only `allow: { method, path }` rules are understood")),
        }
    }
    for (k, v) in allow.ok_or(whole("no `allow`"))? {
        match key_text(k).as_str() {
            "method" => method = string(v),
            "path" => path = string(v),
            _ if !is_set(v) => {}
            f if UNSUPPORTED_ALLOW_FIELDS.contains(&f) => {
                return Err(at(&format!("allow.{f}"), "moat rules match method and path only"))
            }
            f => return Err(at(&format!("allow.{f}"), "unknown field")),
        }
    }
    let (Some(method), Some(path)) = (method, path) else {
        return Err(whole("it needs both a method and a path (use \"*\" and \"/**\" for any)"));
    };
    // OpenShell compares methods in upper case.
    let method = method.to_ascii_uppercase();
    if method != "*" && (method.is_empty() || !method.bytes().all(|b| b.is_ascii_uppercase())) {
        return Err(at("allow.method", &format!("{method:?}: moat rules name a method in letters, or *")));
    }
    let path = match path.as_str() {
        "**" => "/**".to_string(), // OpenShell's "every path"
        p if p.starts_with('/') => path,
        p => return Err(at("allow.path", &format!("{p:?}: {NO_PATH}"))),
    };
    let mut out = vec![Rule { allow: RuleMatch { method: method.clone(), path: path.clone() } }];
    if method == "GET" {
        out.push(Rule { allow: RuleMatch { method: "HEAD".into(), path } });
    }
    Ok(out)
}

/// An endpoint relayed as bytes, the base every import starts from.
pub(super) fn l4(host: String, port: u16) -> Endpoint {
    Endpoint::l4(host, port)
}

/// Checks one binary and one endpoint with `NetPolicy::validate`, moat's one
/// source of truth for what a rule may say.
pub(super) fn check(binary: String, endpoint: Endpoint) -> Result<(), String> {
    let probe = NetPolicy {
        name: "probe".into(),
        why: String::new(),
        binaries: vec![binary],
        sha256: Vec::new(),
        children: false,
        jit: true,
        endpoints: vec![endpoint],
    };
    probe.validate().map_err(|e| e.to_string().trim_start_matches("network.policy \"probe\": ").to_string())
}
