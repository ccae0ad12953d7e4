//! Imports the network part of an OpenShell/NemoClaw sandbox policy (YAML)
//! as moat `[[network.policy]]` rules. Guards against an import meaning more
//! than its source: a limit moat cannot express (deny rules, query matchers,
//! endpoint paths, non-HTTP inspection, a raw TLS tunnel with method rules)
//! drops the rule or endpoint instead of widening it, every field left behind
//! is reported with its YAML path, and only rules that pass
//! `NetPolicy::validate` come out.
use crate::netpolicy::{Access, Endpoint, Enforcement, NetPolicy, Protocol, Rule, RuleMatch, Tls};
use serde::Serialize;
use serde_norway::{Mapping, Value};
use std::collections::BTreeSet;

/// The result of an import: rules that validate, and what was left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    pub network: Vec<NetPolicy>,
    /// Every field that could not be carried over, as `YAML.PATH: why`.
    pub warnings: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    #[error("{origin}:{line}:{column}: {message}")]
    Yaml { origin: String, line: usize, column: usize, message: String },
    #[error("{origin}: {message}")]
    YamlUnplaced { origin: String, message: String },
    #[error("{origin}: {path}: {message}")]
    Shape { origin: String, path: String, message: String },
}

/// Endpoint fields moat has no counterpart for; none of them narrows access
/// for the protocols moat imports, so they are reported and left out.
const UNSUPPORTED_ENDPOINT_FIELDS: &[&str] = &[
    "allow_encoded_slash",
    "websocket_credential_rewrite",
    "request_body_credential_rewrite",
    "allow_uninspected_credentials",
    "persisted_queries",
    "graphql_persisted_queries",
    "graphql_max_body_bytes",
    "credential_signing",
    "signing_service",
    "signing_region",
    "json_rpc",
    "mcp",
];

/// `allow` fields that match things moat's rules cannot (query strings,
/// GraphQL operations, MCP tools, SQL commands): a rule using them is dropped.
const UNSUPPORTED_ALLOW_FIELDS: &[&str] =
    &["query", "command", "operation_type", "operation_name", "fields", "tool", "params"];

/// Converts OpenShell/NemoClaw policy YAML (`network_policies:` and friends)
/// into moat network rules. `origin` names the input in errors and in each
/// rule's `why`.
pub fn import_yaml(text: &str, origin: &str) -> Result<Imported, ImportError> {
    let doc: Value = serde_norway::from_str(text).map_err(|e| yaml_error(&e, origin))?;
    let top = match &doc {
        Value::Mapping(m) => m,
        Value::Null => return Err(shape(origin, "(document)", "empty: expected an OpenShell policy mapping")),
        _ => return Err(shape(origin, "(document)", "expected a mapping with `network_policies`")),
    };
    let mut cx = Ctx { origin: origin.to_string(), warnings: Vec::new() };
    let mut policies_value = None;
    let mut saw_version = false;
    for (k, v) in top {
        let key = key_text(k);
        match key.as_str() {
            "version" => {
                saw_version = true;
                if v.as_u64() != Some(1) {
                    cx.warn(&key, format!("{} is not 1: converted as version 1", scalar_text(v)));
                }
            }
            "network_policies" => policies_value = Some(v),
            "filesystem_policy" => cx.warn(&key, "not carried over: write moat's [filesystem] section (read_only, read_write, each with its reason) by hand"),
            "landlock" => cx.warn(&key, "not carried over: moat's [landlock] section (compatibility) is separate"),
            "process" => cx.warn(&key, "not carried over: moat's [process] section (user, limits) is separate"),
            "network_middlewares" => cx.warn(&key, "not carried over: moat has no network middlewares"),
            "preset" => cx.warn(&key, "NemoClaw preset header not carried over: moat presets are policies/presets/NAME.toml"),
            _ => cx.warn(&key, "unknown field, not carried over"),
        }
    }
    if !saw_version {
        cx.warn("version", "absent (OpenShell requires `version: 1`): converted as version 1");
    }
    let mut network: Vec<NetPolicy> = Vec::new();
    match policies_value {
        None | Some(Value::Null) => cx.warn("network_policies", "absent: there are no network rules to import"),
        Some(Value::Mapping(m)) => {
            for (k, v) in m {
                if let Some(p) = cx.policy(&key_text(k), v) {
                    network.push(p);
                }
            }
        }
        Some(_) => return Err(shape(origin, "network_policies", "expected a mapping of policy key to policy")),
    }
    let mut names = BTreeSet::new();
    for p in &mut network {
        if names.contains(&p.name) {
            let base = p.name.clone();
            let mut n = 2;
            while names.contains(&format!("{base}-{n}")) {
                n += 1;
            }
            p.name = format!("{base}-{n}");
            cx.warnings.push(format!(
                "network_policies: two policies are named {base:?}: the later one is renamed {:?}",
                p.name
            ));
        }
        names.insert(p.name.clone());
    }
    let mut valid = Vec::new();
    for p in network {
        match p.validate() {
            Ok(()) => valid.push(p),
            Err(e) => cx.warnings.push(format!("network_policies: policy {:?} dropped: {e}", p.name)),
        }
    }
    Ok(Imported { network: valid, warnings: cx.warnings })
}

/// Renders imported rules as TOML tables for the `[network]` section of a
/// moat policy (`[[network.policy]]`), with the warnings as comments on top.
pub fn to_toml(imported: &Imported) -> String {
    let mut out = String::from(
        "# Network rules imported from an OpenShell/NemoClaw policy. Review every entry, then add\n\
         # these tables to a moat policy (they extend its [network] section).\n",
    );
    if imported.warnings.is_empty() {
        out.push_str("# Everything was carried over.\n");
    } else {
        out.push_str("# Not carried over:\n");
        for w in &imported.warnings {
            out.push_str("#   - ");
            out.push_str(&w.replace(['\n', '\r'], " "));
            out.push('\n');
        }
    }
    if imported.network.is_empty() {
        out.push_str("# No network rule could be imported.\n");
        return out;
    }
    for p in &imported.network {
        if let Err(e) = render_policy(p, &mut out) {
            out.push_str(&format!("# Policy {:?} could not be rendered as TOML: {e}\n", p.name));
        }
    }
    out
}

/// One `[[network.policy]]` with its endpoints; rules as inline tables, as
/// in the presets. Every string goes through the TOML serializer.
fn render_policy(p: &NetPolicy, out: &mut String) -> Result<(), toml::ser::Error> {
    #[derive(Serialize)]
    struct Head<'a> {
        name: &'a str,
        #[serde(skip_serializing_if = "str::is_empty")]
        why: &'a str,
        binaries: &'a [String],
    }
    let quote = |s: &str| toml::Value::String(s.to_string()).to_string();
    out.push_str("\n[[network.policy]]\n");
    out.push_str(&toml::to_string(&Head { name: &p.name, why: &p.why, binaries: &p.binaries })?);
    for e in &p.endpoints {
        out.push_str("\n[[network.policy.endpoint]]\n");
        out.push_str(&toml::to_string(&Endpoint { rules: Vec::new(), ..e.clone() })?);
        if !e.rules.is_empty() {
            out.push_str("rules = [\n");
            for r in &e.rules {
                let (m, path) = (quote(&r.allow.method), quote(&r.allow.path));
                out.push_str(&format!("  {{ allow = {{ method = {m}, path = {path} }} }},\n"));
            }
            out.push_str("]\n");
        }
    }
    Ok(())
}

struct Ctx {
    origin: String,
    warnings: Vec<String>,
}

/// Why an endpoint was left out (its warning).
type Dropped = String;

impl Ctx {
    fn warn(&mut self, path: &str, message: impl std::fmt::Display) {
        self.warnings.push(format!("{path}: {message}"));
    }

    /// One `network_policies.KEY` entry, or `None` (with a warning) when
    /// nothing usable is left of it.
    fn policy(&mut self, key: &str, v: &Value) -> Option<NetPolicy> {
        let at = format!("network_policies.{key}");
        let Value::Mapping(m) = v else {
            self.warn(&at, "policy dropped: expected a mapping with name, endpoints, binaries");
            return None;
        };
        let mut name = None;
        let mut endpoints = Vec::new();
        let mut binaries = Vec::new();
        for (k, v) in m {
            let field = key_text(k);
            let path = format!("{at}.{field}");
            match field.as_str() {
                "name" => match v {
                    Value::String(s) if !s.is_empty() => name = Some(s.clone()),
                    Value::String(_) | Value::Null => {}
                    _ => self.warn(&path, "not a string: the policy key is used as its name"),
                },
                "endpoints" => match v {
                    Value::Sequence(seq) => {
                        for (i, e) in seq.iter().enumerate() {
                            let epath = format!("{path}[{i}]");
                            match self.endpoint(&epath, e) {
                                Ok(mut eps) => endpoints.append(&mut eps),
                                Err(why) => self.warn(&epath, format!("endpoint dropped: {why}")),
                            }
                        }
                    }
                    Value::Null => {}
                    _ => self.warn(&path, "not a list: no endpoint imported"),
                },
                "binaries" => match v {
                    Value::Sequence(seq) => {
                        for (i, b) in seq.iter().enumerate() {
                            if let Some(b) = self.binary(&format!("{path}[{i}]"), b) {
                                if !binaries.contains(&b) {
                                    binaries.push(b);
                                }
                            }
                        }
                    }
                    Value::Null => {}
                    _ => self.warn(&path, "not a list: no binary imported"),
                },
                _ => self.warn(&path, "unknown field, not carried over"),
            }
        }
        let mut name = name.unwrap_or_else(|| key.to_string());
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            let fixed: String =
                name.chars().map(|c| if c.is_whitespace() || c.is_control() { '-' } else { c }).collect();
            let fixed = if fixed.is_empty() { "imported".to_string() } else { fixed };
            self.warn(&format!("{at}.name"), format!("{name:?} has spaces: renamed {fixed:?}"));
            name = fixed;
        }
        if binaries.is_empty() {
            self.warn(
                &at,
                "policy dropped: no usable binaries (OpenShell then lets every program use the endpoints; \
                 moat requires naming the programs: add `binaries` and import again)",
            );
            return None;
        }
        if endpoints.is_empty() {
            self.warn(&at, "policy dropped: no endpoint could be carried over");
            return None;
        }
        let why = format!("imported from {} ({at})", self.origin);
        Some(NetPolicy { name, why, binaries, endpoints })
    }

    /// One `binaries[i]` entry: `{ path: ... }` (or a bare string).
    fn binary(&mut self, at: &str, v: &Value) -> Option<String> {
        let path = match v {
            Value::String(s) => Some(s.clone()),
            Value::Mapping(m) => {
                let mut path = None;
                for (k, v) in m {
                    let field = key_text(k);
                    match (field.as_str(), v) {
                        ("path", Value::String(s)) => path = Some(s.clone()),
                        ("harness", _) => self.warn(
                            &format!("{at}.harness"),
                            "deprecated in OpenShell and ignored there; not carried over",
                        ),
                        ("path", _) => {}
                        _ => self.warn(&format!("{at}.{field}"), "unknown field, not carried over"),
                    }
                }
                path
            }
            _ => None,
        };
        let Some(path) = path else {
            self.warn(at, "binary dropped: expected `{ path: /absolute/path }`");
            return None;
        };
        let probe = NetPolicy {
            name: "probe".into(),
            why: String::new(),
            binaries: vec![path.clone()],
            endpoints: vec![probe_endpoint()],
        };
        match probe.validate() {
            Ok(()) => Some(path),
            Err(e) => {
                self.warn(
                    at,
                    format!("binary dropped: {}", e.to_string().trim_start_matches("network.policy \"probe\": ")),
                );
                None
            }
        }
    }

    /// One `endpoints[i]` entry, as one moat endpoint per port.
    fn endpoint(&mut self, at: &str, v: &Value) -> Result<Vec<Endpoint>, Dropped> {
        let Value::Mapping(m) = v else {
            return Err("expected a mapping with host, port, ...".into());
        };
        let mut host = None;
        let mut port = None;
        let mut ports = Vec::new();
        let (mut protocol, mut tls, mut enforcement, mut access) =
            (String::new(), String::new(), String::new(), String::new());
        let mut rules: Option<Vec<Rule>> = None;
        let mut allowed_ips = Vec::new();
        for (k, v) in m {
            let field = key_text(k);
            let path = format!("{at}.{field}");
            match field.as_str() {
                "host" => host = Some(string(v).ok_or("host is not a string")?),
                "port" => match v {
                    Value::Null => {}
                    _ => port = Some(port_number(v).ok_or_else(|| format!("port {} is not 1-65535", scalar_text(v)))?),
                },
                "ports" => {
                    for p in list(v).ok_or("ports is not a list")? {
                        ports.push(port_number(p).ok_or_else(|| format!("port {} is not 1-65535", scalar_text(p)))?);
                    }
                }
                "protocol" => protocol = string(v).ok_or("protocol is not a string")?.to_ascii_lowercase(),
                "tls" => tls = string(v).ok_or("tls is not a string")?.to_ascii_lowercase(),
                "enforcement" => enforcement = string(v).ok_or("enforcement is not a string")?.to_ascii_lowercase(),
                "access" => access = string(v).ok_or("access is not a string")?.to_ascii_lowercase(),
                "allowed_ips" => {
                    for ip in list(v).ok_or("allowed_ips is not a list")? {
                        allowed_ips.push(string(ip).ok_or("allowed_ips holds a non-string")?);
                    }
                }
                "rules" => {
                    let given = list(v).ok_or("rules is not a list")?;
                    let kept = self.rules(&path, given);
                    if !given.is_empty() && kept.is_empty() {
                        return Err(
                            "none of its rules could be carried over, and without rules it would allow every request"
                                .into(),
                        );
                    }
                    rules = Some(kept);
                }
                "deny_rules" if is_set(v) => {
                    return Err("deny_rules cannot be carried over (moat has allow rules only), and without them the endpoint would allow what they deny".into());
                }
                "path" if is_set(v) => {
                    return Err(format!("path {} (an endpoint-wide path limit) cannot be carried over, and without it the endpoint would allow more", scalar_text(v)));
                }
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
                self.warn(&format!("{at}.protocol"), "absent: imported as protocol = \"rest\" (inspected), which is what enforces its access/rules in moat");
                true
            }
            "" => false,
            "tcp" if limits || access.is_some() => return Err("protocol tcp cannot carry access or rules".into()),
            "tcp" => false,
            other => {
                return Err(format!(
                "protocol {other:?}: moat inspects HTTP (rest) only, and relaying it as bytes would drop its limits; \
                     write an L4 endpoint by hand if that is acceptable"
            ))
            }
        };
        let mut tls = match tls.as_str() {
            "" => None,
            "terminate" => Some(Tls::Terminate),
            "skip" | "passthrough" => Some(Tls::Passthrough),
            other => return Err(format!("tls {other:?} is not terminate, passthrough or skip")),
        };
        if tls == Some(Tls::Passthrough) {
            if limits {
                return Err("a raw TLS tunnel (tls: skip/passthrough) cannot be inspected, so its access/rules could not be enforced".into());
            }
            (rest, tls) = (false, None); // an uninspected tunnel: moat's L4 relay
        }
        if rest && access.is_none() && rules.is_empty() {
            return Err(
                "protocol rest without access or rules (OpenShell rejects it; say `access: full` to allow everything)"
                    .into(),
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
        if ports.is_empty() {
            return Err("no port".into());
        }
        let template = Endpoint {
            host,
            port: ports[0],
            protocol: rest.then_some(Protocol::Rest),
            tls: if rest { tls } else { None },
            access: if rest { access } else { None },
            rules: if rest { rules } else { Vec::new() },
            enforcement,
            allowed_ips,
        };
        let probe = NetPolicy {
            name: "probe".into(),
            why: String::new(),
            binaries: vec!["/probe".into()],
            endpoints: vec![template.clone()],
        };
        if let Err(e) = probe.validate() {
            return Err(e.to_string().trim_start_matches("network.policy \"probe\": ").to_string());
        }
        let mut seen = BTreeSet::new();
        Ok(ports.into_iter().filter(|p| seen.insert(*p)).map(|port| Endpoint { port, ..template.clone() }).collect())
    }

    /// The `rules` list: `- allow: { method, path }`. A rule moat cannot
    /// express is dropped (that narrows the endpoint, never widens it).
    fn rules(&mut self, at: &str, given: &[Value]) -> Vec<Rule> {
        let mut kept = Vec::new();
        'rules: for (i, r) in given.iter().enumerate() {
            let rpath = format!("{at}[{i}]");
            let Value::Mapping(rm) = r else {
                self.warn(&rpath, "rule dropped: expected `allow: { method, path }`");
                continue;
            };
            let mut allow = None;
            for (k, v) in rm {
                match (key_text(k).as_str(), v) {
                    ("allow", Value::Mapping(a)) => allow = Some(a),
                    (f, _) => {
                        self.warn(
                            &format!("{rpath}.{f}"),
                            "rule dropped: only `allow: { method, path }` rules are understood",
                        );
                        continue 'rules;
                    }
                }
            }
            let Some(a) = allow else {
                self.warn(&rpath, "rule dropped: no `allow`");
                continue;
            };
            let (mut method, mut path) = (None, None);
            for (k, v) in a {
                let f = key_text(k);
                match f.as_str() {
                    "method" => method = string(v),
                    "path" => path = string(v),
                    _ if !is_set(v) => {}
                    f if UNSUPPORTED_ALLOW_FIELDS.contains(&f) => {
                        self.warn(&format!("{rpath}.allow.{f}"), "rule dropped: moat rules match method and path only");
                        continue 'rules;
                    }
                    _ => {
                        self.warn(&format!("{rpath}.allow.{f}"), "rule dropped: unknown field");
                        continue 'rules;
                    }
                }
            }
            match (method, path) {
                (Some(method), Some(path)) if !method.is_empty() && !path.is_empty() => {
                    kept.push(Rule { allow: RuleMatch { method, path } });
                }
                _ => {
                    self.warn(&rpath, "rule dropped: it needs both a method and a path (use \"*\" and \"/**\" for any)")
                }
            }
        }
        kept
    }
}

fn probe_endpoint() -> Endpoint {
    Endpoint {
        host: "example.com".into(),
        port: 443,
        protocol: None,
        tls: None,
        access: None,
        rules: Vec::new(),
        enforcement: Enforcement::Enforce,
        allowed_ips: Vec::new(),
    }
}

fn yaml_error(e: &serde_norway::Error, origin: &str) -> ImportError {
    let message = e.to_string();
    match e.location() {
        Some(loc) => {
            let (line, column) = (loc.line(), loc.column());
            let message = message.replace(&format!(" at line {line} column {column}"), "");
            ImportError::Yaml { origin: origin.into(), line, column, message }
        }
        None => ImportError::YamlUnplaced { origin: origin.into(), message },
    }
}

fn shape(origin: &str, path: &str, message: &str) -> ImportError {
    ImportError::Shape { origin: origin.into(), path: path.into(), message: message.into() }
}

fn key_text(k: &Value) -> String {
    match k {
        Value::String(s) => s.clone(),
        other => scalar_text(other),
    }
}

fn scalar_text(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => format!("{s:?}"),
        Value::Sequence(_) => "a list".into(),
        Value::Mapping(_) => "a mapping".into(),
        Value::Tagged(t) => format!("a value tagged {}", t.tag),
    }
}

fn string(v: &Value) -> Option<String> {
    v.as_str().map(str::to_string)
}

fn list(v: &Value) -> Option<&[Value]> {
    match v {
        Value::Sequence(s) => Some(s),
        Value::Null => Some(&[]),
        _ => None,
    }
}

fn port_number(v: &Value) -> Option<u16> {
    v.as_u64().and_then(|p| u16::try_from(p).ok()).filter(|p| *p != 0)
}

/// Is a value anything but its default (null, false, 0, "", [], {})?
fn is_set(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Sequence(s) => !s.is_empty(),
        Value::Mapping(m) => !Mapping::is_empty(m),
        Value::Tagged(_) => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netpolicy::{Compiled, Match, RequestVerdict};

    const FIXTURE: &str = include_str!("../../tests/fixtures/openshell-policy.yaml");

    fn by_name<'a>(i: &'a Imported, name: &str) -> &'a NetPolicy {
        i.network.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("no policy {name}: {:?}", i.network))
    }

    fn warned(i: &Imported, path: &str, words: &str) -> bool {
        i.warnings.iter().any(|w| w.starts_with(&format!("{path}:")) && w.contains(words))
    }

    fn policy_yaml(endpoints: &str) -> String {
        format!("version: 1\nnetwork_policies:\n  p:\n    name: p\n    binaries: [{{ path: /usr/bin/node }}]\n    endpoints:\n{endpoints}")
    }

    #[test]
    fn converts_the_fixture() {
        let i = import_yaml(FIXTURE, "openshell-policy.yaml").unwrap();
        let names: Vec<&str> = i.network.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["github-git", "github_api", "npm_registry", "brave", "local_inference", "atlassian"]);
        for p in &i.network {
            p.validate().unwrap();
        }

        let git = by_name(&i, "github-git");
        assert_eq!(git.binaries, ["/usr/bin/git", "/usr/lib/git-core/git-remote-https"]);
        assert!(git.why.contains("openshell-policy.yaml") && git.why.contains("network_policies.github_git"));
        let e = &git.endpoints[0];
        assert_eq!(
            (e.host.as_str(), e.port, e.protocol, e.tls),
            ("github.com", 443, Some(Protocol::Rest), Some(Tls::Terminate))
        );
        assert_eq!(e.rules.len(), 2);
        assert_eq!(e.rules[1].allow, RuleMatch { method: "POST".into(), path: "/**/git-upload-pack".into() });

        let api = &by_name(&i, "github_api").endpoints[0];
        assert_eq!((api.protocol, api.access), (Some(Protocol::Rest), Some(Access::ReadOnly)));
        // access: full without a protocol is an L4 relay; nothing is lost.
        let npm = &by_name(&i, "npm_registry").endpoints[0];
        assert_eq!((npm.protocol, npm.access, npm.tls), (None, None, None));
        // rules without a protocol become inspected, with a note.
        assert_eq!(by_name(&i, "brave").endpoints[0].protocol, Some(Protocol::Rest));
        assert!(warned(&i, "network_policies.brave.endpoints[0].protocol", "imported as protocol"));
        // ports: one endpoint per port, audit and allowed_ips carried.
        let li = &by_name(&i, "local_inference").endpoints;
        assert_eq!(li.iter().map(|e| e.port).collect::<Vec<_>>(), [11434, 8000]);
        assert!(li
            .iter()
            .all(|e| e.enforcement == Enforcement::Audit && e.allowed_ips == ["10.0.0.0/8", "192.168.0.0/16"]));
        // tls: skip with access: full is a raw tunnel: L4. A policy without `name` uses its key.
        let at = by_name(&i, "atlassian");
        assert_eq!((at.endpoints[0].host.as_str(), at.endpoints[0].protocol), ("*.atlassian.net", None));
        assert_eq!(at.binaries, ["/usr/local/bin/*"]);

        // The converted rules behave as the source meant.
        let c = Compiled::new(i.network.clone()).unwrap();
        let Match::Allowed { policy, endpoint, .. } =
            c.match_destination("/usr/lib/git-core/git-remote-https", "github.com", 443)
        else {
            panic!("git-remote-https should reach github.com")
        };
        assert_eq!(c.check_request(&policy, &endpoint, "POST", "/a/b.git/git-upload-pack"), RequestVerdict::Allow);
        assert!(matches!(
            c.check_request(&policy, &endpoint, "POST", "/a/b.git/git-receive-pack"),
            RequestVerdict::Deny(_)
        ));
        assert_eq!(
            c.match_destination("/usr/bin/curl", "api.search.brave.com", 443),
            Match::WrongBinary { policies: vec!["brave".into()] }
        );

        // Only the non-network sections were left behind.
        for section in ["filesystem_policy", "landlock", "process"] {
            assert!(warned(&i, section, "not carried over"), "{section}: {:?}", i.warnings);
        }
        assert_eq!(i.warnings.len(), 4, "{:?}", i.warnings);
    }

    #[test]
    fn toml_output_round_trips() {
        // A quote and a newline in the origin end up in every `why`: they must be escaped.
        let i = import_yaml(FIXTURE, "dir/we\"ird\n.yaml").unwrap();
        let text = to_toml(&i);
        assert!(text.contains("rules = [\n  { allow = { method = \"GET\", path = \"/res/v1/**\" } },\n]"), "{text}");
        assert!(text.contains("#   - filesystem_policy: not carried over"), "{text}");
        assert!(!text.contains("\n[network]\n"), "{text}");
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Doc {
            network: crate::netpolicy::Network,
        }
        let doc: Doc = toml::from_str(&format!("[network]\ngateway_port = 3128\n{text}")).unwrap();
        doc.network.validate().unwrap();
        assert_eq!(doc.network.policies, i.network);
        assert!(to_toml(&Imported { network: vec![], warnings: vec![] }).contains("No network rule"));
    }

    #[test]
    fn unknown_fields_are_warned_not_dropped_silently() {
        let text = "version: 1\nbogus: 1\nnetwork_policies:\n  p:\n    colour: blue\n    binaries:\n      - { path: /usr/bin/node, sha: abc, harness: true }\n    endpoints:\n      - { host: a.example.com, port: 443, frobnicate: 1, websocket_credential_rewrite: true, allow_encoded_slash: false }\n";
        let i = import_yaml(text, "t").unwrap();
        assert_eq!(i.network.len(), 1);
        assert!(warned(&i, "bogus", "unknown field"), "{:?}", i.warnings);
        assert!(warned(&i, "network_policies.p.colour", "unknown field"));
        assert!(warned(&i, "network_policies.p.binaries[0].sha", "unknown field"));
        assert!(warned(&i, "network_policies.p.binaries[0].harness", "deprecated"));
        assert!(warned(&i, "network_policies.p.endpoints[0].frobnicate", "unknown field"));
        assert!(warned(&i, "network_policies.p.endpoints[0].websocket_credential_rewrite", "not carried over"));
        // A field at its default carries nothing, so it is not reported.
        assert!(!i.warnings.iter().any(|w| w.contains("allow_encoded_slash")));
        assert_eq!(i.warnings.len(), 6, "{:?}", i.warnings);
    }

    #[test]
    fn filesystem_and_process_sections_are_warned() {
        let text =
            "version: 1\nfilesystem_policy:\n  read_write: [/]\nprocess:\n  run_as_user: root\npreset:\n  name: x\n";
        let i = import_yaml(text, "t").unwrap();
        assert!(i.network.is_empty());
        assert!(warned(&i, "filesystem_policy", "[filesystem]"), "{:?}", i.warnings);
        assert!(warned(&i, "process", "[process]"));
        assert!(warned(&i, "preset", "not carried over"));
        assert!(warned(&i, "network_policies", "absent"));
    }

    #[test]
    fn bad_endpoints_are_dropped_with_a_warning() {
        let text = policy_yaml(concat!(
            "      - { host: \"a b\", port: 443 }\n",
            "      - { host: ok.example.com, port: 443, protocol: rest, access: read-only }\n",
            "      - { host: c.example.com, port: 443, protocol: rest, rules: [{ allow: { method: get, path: / } }] }\n",
            "      - { host: d.example.com, port: 443, protocol: rest, access: full, deny_rules: [{ method: DELETE, path: /** }] }\n",
            "      - { host: e.example.com, port: 443, protocol: rest, rules: [{ allow: { method: GET, path: /x, query: { q: a } } }] }\n",
            "      - { host: f.example.com, port: 443, tls: skip, rules: [{ allow: { method: GET, path: /** } }] }\n",
            "      - { host: g.example.com, port: 443, protocol: websocket, access: full }\n",
            "      - { host: h.example.com, port: 70000 }\n",
            "      - { host: i.example.com, port: 443, allowed_ips: [10.0.0.0/33] }\n",
        ));
        let i = import_yaml(&text, "t").unwrap();
        let p = by_name(&i, "p");
        assert_eq!(p.endpoints.iter().map(|e| e.host.as_str()).collect::<Vec<_>>(), ["ok.example.com"]);
        let at = |n: usize| format!("network_policies.p.endpoints[{n}]");
        assert!(warned(&i, &at(0), "host"), "{:?}", i.warnings);
        assert!(warned(&i, &at(2), "method"));
        assert!(warned(&i, &at(3), "deny_rules"));
        // Its only rule used a query matcher: dropping the rule would have left an allow-all endpoint.
        assert!(warned(&i, &format!("{}.rules[0].allow.query", at(4)), "rule dropped"));
        assert!(warned(&i, &at(4), "would allow every request"));
        assert!(warned(&i, &at(5), "cannot be inspected"));
        assert!(warned(&i, &at(6), "websocket"));
        assert!(warned(&i, &at(7), "70000"));
        assert!(warned(&i, &at(8), "CIDR"));
        assert!(i.warnings.iter().all(|w| !w.contains(&at(1))), "{:?}", i.warnings);
    }

    #[test]
    fn policies_without_binaries_or_endpoints_are_dropped() {
        let text = "version: 1\nnetwork_policies:\n  any:\n    endpoints: [{ host: a.example.com, port: 443 }]\n  rel:\n    binaries: [{ path: bin/git }]\n    endpoints: [{ host: a.example.com, port: 443 }]\n  none:\n    binaries: [{ path: /usr/bin/git }]\n    endpoints: [{ host: \"-\", port: 443, protocol: rest, access: weird }]\n";
        let i = import_yaml(text, "t").unwrap();
        assert!(i.network.is_empty(), "{:?}", i.network);
        assert!(warned(&i, "network_policies.any", "no usable binaries"), "{:?}", i.warnings);
        assert!(warned(&i, "network_policies.rel.binaries[0]", "absolute"));
        assert!(warned(&i, "network_policies.none.endpoints[0]", "weird"));
        assert!(warned(&i, "network_policies.none", "no endpoint"));
    }

    #[test]
    fn duplicate_and_spaced_names_are_fixed_with_a_warning() {
        let text = "version: 1\nnetwork_policies:\n  a:\n    name: same\n    binaries: [/usr/bin/git]\n    endpoints: [{ host: a.example.com, port: 443 }]\n  b:\n    name: same\n    binaries: [/usr/bin/git]\n    endpoints: [{ host: b.example.com, port: 443 }]\n  c:\n    name: has space\n    binaries: [/usr/bin/git]\n    endpoints: [{ host: c.example.com, port: 443 }]\n";
        let i = import_yaml(text, "t").unwrap();
        let names: Vec<&str> = i.network.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["same", "same-2", "has-space"]);
        assert_eq!(i.warnings.len(), 2, "{:?}", i.warnings);
    }

    #[test]
    fn yaml_errors_have_line_and_column() {
        let e = import_yaml("version: 1\nnetwork_policies:\n  p: [\n", "bad.yaml").unwrap_err();
        let ImportError::Yaml { line, .. } = &e else { panic!("{e:?}") };
        assert!(*line >= 3, "{e}");
        assert!(e.to_string().starts_with("bad.yaml:"), "{e}");
        assert!(matches!(import_yaml("", "e.yaml"), Err(ImportError::Shape { .. })));
        assert!(matches!(import_yaml("- a\n", "e.yaml"), Err(ImportError::Shape { .. })));
        assert!(matches!(import_yaml("network_policies: [1]\n", "e.yaml"), Err(ImportError::Shape { .. })));
    }
}
