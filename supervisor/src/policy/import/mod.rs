//! Imports the network part of an OpenShell/NemoClaw sandbox policy (YAML)
//! as moat `[[network.policy]]` rules. Guards against an import meaning more
//! than its source: a limit moat cannot express (deny rules, query matchers,
//! endpoint paths, non-HTTP inspection, a raw TLS tunnel with method rules)
//! drops the rule or endpoint instead of widening it; every field left behind,
//! and every difference in meaning the import cannot carry, is reported with
//! its YAML path and line; and only rules that pass `NetPolicy::validate`
//! come out. Endpoints and rules are `endpoint`'s.
#![forbid(unsafe_code)]
mod endpoint;

use crate::policy::schema::{Endpoint, NetPolicy};
use endpoint::{check, l4};
use serde::Serialize;
use serde_norway::Value;
use std::collections::BTreeSet;

/// The result of an import: rules that validate, and what was left behind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    pub network: Vec<NetPolicy>,
    /// Every field that could not be carried over, and every difference in
    /// meaning, as `ORIGIN:LINE: YAML.PATH: why`.
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
    /// Too large or too deeply nested to hand to the parser.
    #[error(transparent)]
    Limit(#[from] crate::yaml::YamlLimit),
}

const NO_BINARIES: &str = "policy dropped: no usable binaries. OpenShell allows nothing there either (a policy \
    gives its endpoints to the programs it lists), so no access is lost; add `binaries` to grant some";

/// Top-level sections moat keeps elsewhere, and what to do about them.
const OTHER_SECTIONS: &[(&str, &str)] = &[
    ("filesystem_policy", "not carried over: write moat's [filesystem] section (read_only, read_write) by hand"),
    ("landlock", "not carried over: moat's [landlock] section (compatibility) is separate"),
    ("process", "not carried over: moat's [process] section (user, limits) is separate"),
    ("network_middlewares", "not carried over: moat has no network middlewares"),
    ("preset", "not carried over (a NemoClaw preset header): moat presets are policies/presets/NAME.toml"),
];

/// Converts OpenShell/NemoClaw policy YAML (`network_policies:` and friends)
/// into moat network rules. `origin` names the input in errors and in each
/// rule's `why`.
pub fn import_yaml(text: &str, origin: &str) -> Result<Imported, ImportError> {
    let checked = crate::yaml::check(text, origin)?;
    let doc: Value = serde_norway::from_str(text).map_err(|e| yaml_error(&e, text, origin, checked))?;
    let top = match &doc {
        Value::Mapping(m) => m,
        Value::Null => return Err(shape(origin, "(document)", "empty: expected an OpenShell policy mapping")),
        _ => return Err(shape(origin, "(document)", "expected a mapping with `network_policies`")),
    };
    let places = crate::yaml::Places::of(text);
    let mut cx = Ctx { origin: origin.to_string(), places, warnings: Vec::new() };
    let (mut policies, mut version) = (None, None);
    for (k, v) in top {
        let key = key_text(k);
        match key.as_str() {
            "version" => version = Some(v),
            "network_policies" => policies = Some(v),
            _ => match OTHER_SECTIONS.iter().find(|(name, _)| *name == key) {
                Some((_, note)) => cx.warn(&key, note),
                None => cx.warn(&key, "unknown field, not carried over"),
            },
        }
    }
    match version {
        None => cx.warn("version", "absent (OpenShell requires `version: 1`): converted as version 1"),
        Some(v) if v.as_u64() != Some(1) => {
            cx.warn("version", format!("{} is not 1: converted anyway", scalar_text(v)))
        }
        Some(_) => {}
    }
    let mut network: Vec<NetPolicy> = Vec::new();
    match policies {
        None | Some(Value::Null) => cx.warn("network_policies", "absent: there are no network rules to import"),
        Some(Value::Mapping(m)) => network.extend(m.iter().filter_map(|(k, v)| cx.policy(&key_text(k), v))),
        Some(_) => return Err(shape(origin, "network_policies", "expected a mapping of policy key to policy")),
    }
    let mut names = BTreeSet::new();
    let mut valid = Vec::new();
    for mut p in network {
        if names.contains(&p.name) {
            let base = p.name.clone();
            let n = (2..).find(|n| !names.contains(&format!("{base}-{n}"))).unwrap_or(2);
            p.name = format!("{base}-{n}");
            cx.warn("network_policies", format!("two policies are named {base:?}: the later one is now {:?}", p.name));
        }
        match p.validate() {
            Ok(()) => {
                names.insert(p.name.clone());
                valid.push(p);
            }
            Err(e) => cx.warn("network_policies", format!("policy {:?} dropped: {e}", p.name)),
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
            // Escaped: a control character from the input would show in a
            // terminal and make the comment invalid TOML (fuzz/openshell_import).
            out.push_str(&format!("#   - {}\n", crate::visible::field(w)));
        }
    }
    if imported.network.is_empty() {
        out.push_str("# No network rule could be imported.\n");
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
    /// Where each YAML node is, so a warning names its line.
    places: crate::yaml::Places,
    warnings: Vec<String>,
}

impl Ctx {
    /// Records `origin:line: path: message` (the line of `path`, or of what
    /// holds it when it is absent; no line for an empty document).
    fn warn(&mut self, path: &str, message: impl std::fmt::Display) {
        let origin = &self.origin;
        self.warnings.push(match self.places.find(path) {
            Some((line, _)) => format!("{origin}:{line}: {path}: {message}"),
            None => format!("{origin}: {path}: {message}"),
        });
    }

    /// One `network_policies.KEY` entry, or `None` (with a warning) when
    /// nothing usable is left of it.
    fn policy(&mut self, key: &str, v: &Value) -> Option<NetPolicy> {
        let at = format!("network_policies.{key}");
        let Value::Mapping(m) = v else {
            self.warn(&at, "policy dropped: expected a mapping with name, endpoints, binaries");
            return None;
        };
        let (mut name, mut endpoints, mut binaries) = (key.to_string(), Vec::new(), Vec::<String>::new());
        for (k, v) in m {
            let field = key_text(k);
            let path = format!("{at}.{field}");
            match (field.as_str(), v) {
                ("name", Value::String(s)) if !s.is_empty() => name = s.clone(),
                ("name", Value::String(_) | Value::Null) | ("endpoints" | "binaries", Value::Null) => {}
                ("name", _) => self.warn(&path, "not a string: the policy key is used as its name"),
                ("endpoints", Value::Sequence(seq)) => {
                    for (i, e) in seq.iter().enumerate() {
                        match self.endpoint(&format!("{path}[{i}]"), e) {
                            Ok(eps) => endpoints.extend(eps),
                            Err(why) => self.warn(&format!("{path}[{i}]"), format!("endpoint dropped: {why}")),
                        }
                    }
                }
                ("binaries", Value::Sequence(seq)) => {
                    for (i, b) in seq.iter().enumerate() {
                        match self.binary(&format!("{path}[{i}]"), b) {
                            Some(b) if !binaries.contains(&b) => binaries.push(b),
                            _ => {}
                        }
                    }
                }
                ("endpoints" | "binaries", _) => self.warn(&path, "not a list: nothing imported from it"),
                _ => self.warn(&path, "unknown field, not carried over"),
            }
        }
        if name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            let fixed: String =
                name.chars().map(|c| if c.is_whitespace() || c.is_control() { '-' } else { c }).collect();
            self.warn(&format!("{at}.name"), format!("{name:?} has spaces: renamed {fixed:?}"));
            name = fixed;
        }
        if binaries.is_empty() {
            self.warn(&at, NO_BINARIES);
            return None;
        }
        if endpoints.is_empty() {
            self.warn(&at, "policy dropped: no endpoint could be carried over");
            return None;
        }
        let why = format!("imported from {} ({at})", self.origin);
        Some(NetPolicy { name, why, binaries, sha256: Vec::new(), children: false, jit: true, endpoints })
    }

    /// One `binaries[i]` entry: `{ path: ... }` (or a bare string).
    fn binary(&mut self, at: &str, v: &Value) -> Option<String> {
        let mut path = v.as_str().map(str::to_string);
        for (k, v) in v.as_mapping().into_iter().flatten() {
            match (key_text(k).as_str(), v) {
                ("path", Value::String(s)) => path = Some(s.clone()),
                ("path", _) => {}
                ("harness", _) => {
                    self.warn(&format!("{at}.harness"), "deprecated and ignored by OpenShell: not carried over")
                }
                (f, _) => self.warn(&format!("{at}.{f}"), "unknown field, not carried over"),
            }
        }
        let Some(path) = path else {
            self.warn(at, "binary dropped: expected `{ path: /absolute/path }`");
            return None;
        };
        match check(path.clone(), l4("example.com".into(), 443)) {
            Ok(()) => Some(path),
            Err(e) => {
                self.warn(at, format!("binary dropped: {e}"));
                None
            }
        }
    }
}

fn yaml_error(e: &serde_norway::Error, text: &str, origin: &str, checked: crate::yaml::Checked) -> ImportError {
    let message = e.to_string();
    match e.location() {
        Some(loc) => {
            let message = message.replace(&format!(" at line {} column {}", loc.line(), loc.column()), "");
            // libyaml places an error at the end of input one line past the
            // last one when the text does not end in a newline: the place is
            // taken from the byte offset, kept inside the text.
            let (line, column) = moat_builder::textfile::line_col(text, loc.index().min(text.len()));
            ImportError::Yaml { origin: origin.into(), line, column, message }
        }
        // The parser's alias expansion bound names no place: the first alias.
        None => match checked.first_alias.filter(|_| message.contains("repetition limit")) {
            Some((line, column)) => ImportError::Yaml {
                origin: origin.into(),
                line,
                column,
                message: format!("{message} (aliases expand to too much; the first alias is here)"),
            },
            None => ImportError::YamlUnplaced { origin: origin.into(), message },
        },
    }
}

fn shape(origin: &str, path: &str, message: &str) -> ImportError {
    ImportError::Shape { origin: origin.into(), path: path.into(), message: message.into() }
}

fn key_text(k: &Value) -> String {
    k.as_str().map_or_else(|| scalar_text(k), str::to_string)
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

fn list<'a>(v: &'a Value, field: &str) -> Result<&'a [Value], String> {
    match v {
        Value::Sequence(s) => Ok(s),
        Value::Null => Ok(&[]),
        _ => Err(format!("{field} is not a list")),
    }
}

fn port_number(v: &Value) -> Result<u16, String> {
    let port = v.as_u64().and_then(|p| u16::try_from(p).ok()).filter(|p| *p != 0);
    port.ok_or_else(|| format!("port {} is not 1-65535", scalar_text(v)))
}

/// Is a value anything but its default (null, false, 0, "", [], {})?
fn is_set(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64() != Some(0.0),
        Value::String(s) => !s.is_empty(),
        Value::Sequence(s) => !s.is_empty(),
        Value::Mapping(m) => !m.is_empty(),
        Value::Tagged(_) => true,
    }
}

#[cfg(test)]
mod tests;
