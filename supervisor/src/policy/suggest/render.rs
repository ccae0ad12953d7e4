//! The suggested policy file: the collected traffic turned into rule sets
//! and request rules, written as TOML with a comment beside each rule
//! saying what it covers and a commented-out list of what was not
//! suggested, then read back. Guards against a file that says one thing and
//! means another: the text must parse and validate as a policy equal to
//! the one built, or nothing is written; comments are escaped so recorded
//! text cannot end a comment line and become a rule.
#![forbid(unsafe_code)]
use super::rules::{literal, path_rules};
use super::{Collector, Seen, SuggestError, Suggestion, Traffic};
use crate::policy::schema::{Access, Endpoint, NetPolicy, Protocol, Rule, RuleMatch};
use crate::policy::{Network, Policy};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// Comments attached to parts of the network section.
#[derive(Default)]
struct Notes {
    /// Above a rule set.
    policy: BTreeMap<String, Vec<String>>,
    /// Above an endpoint (rule set, endpoint index).
    endpoint: BTreeMap<(String, usize), Vec<String>>,
    /// Beside a rule (rule set, endpoint index, rule index).
    rule: BTreeMap<(String, usize, usize), String>,
}

fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// What one rule covers: count, the paths it was made from, when.
fn covers(method: &str, paths: &[String], seen: &Seen) -> String {
    let shown: Vec<&str> = paths.iter().take(4).map(String::as_str).collect();
    let more =
        if paths.len() > shown.len() { format!(" and {} more", paths.len() - shown.len()) } else { String::new() };
    let what = if paths.len() == 1 {
        String::new()
    } else {
        format!(" ({}: {}{more})", plural(paths.len() as u64, "path", "paths"), shown.join(", "))
    };
    format!("{} {method}{what}, {}", plural(seen.count, "request", "requests"), seen.when())
}

/// The rules an access level stands for (so request rules can be added).
fn access_rules(a: Access) -> Vec<Rule> {
    let methods: &[&str] = match a {
        Access::Full => &["*"],
        Access::ReadOnly => &["GET", "HEAD", "OPTIONS"],
        Access::ReadWrite => &["GET", "HEAD", "OPTIONS", "POST", "PUT", "PATCH"],
    };
    methods.iter().map(|m| Rule { allow: RuleMatch { method: m.to_string(), path: "/**".into() } }).collect()
}

/// Adds the rules for `t`'s requests to `rules` (those not there already);
/// returns (index, what it covers) of each added rule.
fn add_request_rules(rules: &mut Vec<Rule>, t: &Traffic) -> Vec<(usize, String)> {
    let mut by_method: BTreeMap<&str, BTreeMap<&str, &Seen>> = BTreeMap::new();
    for ((m, p), s) in &t.requests {
        by_method.entry(m).or_default().insert(p, s);
    }
    let mut out = Vec::new();
    for (m, paths) in by_method {
        for r in path_rules(paths.keys().copied()) {
            let mut seen = Seen::default();
            for p in &r.paths {
                if let Some(s) = paths.get(p.as_str()) {
                    seen.merge(s);
                }
            }
            let rule = Rule { allow: RuleMatch { method: m.to_string(), path: r.glob.clone() } };
            if !rules.contains(&rule) {
                rules.push(rule);
                out.push((rules.len() - 1, covers(m, &r.paths, &seen)));
            }
        }
    }
    out
}

/// Notes on traffic a group's rules may still refuse.
fn traffic_notes(t: &Traffic, max_paths: usize) -> Vec<String> {
    let mut out = Vec::new();
    if t.folded > 0 {
        out.push(format!(
            "{} stood for several refusals each, of which only the last path was recorded: \
             other paths may still be refused",
            plural(t.folded, "refusal record", "refusal records")
        ));
    }
    if t.paths_dropped > 0 {
        out.push(format!(
            "{} with paths beyond the {max_paths} distinct ones kept are not covered",
            plural(t.paths_dropped, "request", "requests")
        ));
    }
    out
}

/// A name for a new rule set not used by `taken`.
fn fresh_name(binary: &str, taken: &mut BTreeSet<String>) -> String {
    let base: String = binary
        .rsplit('/')
        .next()
        .unwrap_or("")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') { c.to_ascii_lowercase() } else { '_' })
        .take(48)
        .collect();
    let stem = format!("suggested-{}", if base.is_empty() { "binary" } else { &base });
    let mut name = stem.clone();
    let mut i = 2;
    while taken.contains(&name) {
        name = format!("{stem}-{i}");
        i += 1;
    }
    taken.insert(name.clone());
    name
}

pub(super) fn build(
    c: Collector,
    sandbox: &str,
    policy: &Policy,
    allowed_ips: &[String],
) -> Result<Suggestion, SuggestError> {
    let mut network: Network = c.base.clone();
    let mut notes = Notes::default();
    let mut not_suggested = Vec::new();
    let mut suggested = 0usize;
    let max_paths = c.limits.max_paths;
    for ((name, i), t) in &c.merge {
        let Some(p) = network.policies.iter_mut().find(|p| &p.name == name) else { continue };
        let Some(e) = p.endpoints.get_mut(*i) else { continue };
        let mut lines = Vec::new();
        if let Some(a) = e.access.take() {
            e.rules = access_rules(a);
            lines.push(format!("suggest: was access = {:?}, written as the rules it stands for", access_name(a)));
        }
        for (r, note) in add_request_rules(&mut e.rules, t) {
            notes.rule.insert((name.clone(), *i, r), format!("suggested: {note}"));
            suggested += 1;
        }
        lines.extend(traffic_notes(t, max_paths).into_iter().map(|l| format!("suggest: {l}")));
        notes.endpoint.entry((name.clone(), *i)).or_default().extend(lines);
    }
    for (name, host, port) in &c.enforced {
        let Some(p) = network.policies.iter().find(|p| &p.name == name) else { continue };
        for (i, _) in p.endpoints.iter().enumerate().filter(|(_, e)| &e.host == host && e.port == *port) {
            notes.endpoint.entry((name.clone(), i)).or_default().push(
                "suggest: was enforcement = \"audit\" (relayed what its rules refused); enforced now: what it \
                 relayed is covered by the suggestions in this file or listed as not suggested"
                    .into(),
            );
        }
    }
    let mut taken: BTreeSet<String> = network.policies.iter().map(|p| p.name.clone()).collect();
    for (binary, b) in &c.new {
        let name = fresh_name(binary, &mut taken);
        let mut endpoints = Vec::new();
        let mut ep_notes = Vec::new();
        let mut rule_notes = Vec::new();
        for ((host, port), t) in &b.dests {
            let mut e = Endpoint { allowed_ips: allowed_ips.to_vec(), ..Endpoint::l4(host.clone(), *port) };
            let mut lines = Vec::new();
            if t.requests.is_empty() {
                lines.push(format!(
                    "suggested: {} (CONNECT), {}; the requests inside were not seen, so this relays any \
                     request (L4)",
                    plural(t.tunnels.count, "tunnel", "tunnels"),
                    t.tunnels.when()
                ));
            } else {
                e.protocol = Some(Protocol::Rest);
                for (r, note) in add_request_rules(&mut e.rules, t) {
                    rule_notes.push((endpoints.len(), r, format!("suggested: {note}")));
                }
                if t.tunnels.count > 0 {
                    lines.push(format!(
                        "suggest: also {} whose requests were not seen; they are held to these rules",
                        plural(t.tunnels.count, "tunnel", "tunnels")
                    ));
                }
            }
            lines.extend(traffic_notes(t, max_paths).into_iter().map(|l| format!("suggest: {l}")));
            suggested += e.rules.len().max(1);
            ep_notes.push(lines);
            endpoints.push(e);
        }
        let pinned = !b.unpinned && !b.hashes.is_empty();
        let p = NetPolicy {
            name: name.clone(),
            why: format!("suggested by `moat policy suggest` from the audit log of sandbox {sandbox}"),
            binaries: vec![literal(binary)],
            sha256: if pinned { b.hashes.iter().cloned().collect() } else { Vec::new() },
            children: false,
            jit: true,
            endpoints,
        };
        if let Err(e) = p.validate() {
            taken.remove(&name);
            not_suggested.push(format!("{binary}: {}", moat_builder::errors::chain(&e)));
            continue;
        }
        let mut head = vec![format!("suggest: a rule set for {binary}")];
        if pinned {
            head.push("suggest: sha256 pins the build(s) seen; another program at this path is refused".into());
        } else {
            head.push("suggest: not pinned (a record had no hash)".into());
        }
        notes.policy.insert(name.clone(), head);
        for (i, lines) in ep_notes.into_iter().enumerate() {
            notes.endpoint.insert((name.clone(), i), lines);
        }
        for (i, r, note) in rule_notes {
            notes.rule.insert((name.clone(), i, r), note);
        }
        network.policies.push(p);
    }
    for ((binary, host, port, why), (seen, example)) in &c.skipped {
        not_suggested.push(format!(
            "{binary} -> {host}:{port} {example} ({}, {}): {why}",
            plural(seen.count, "time", "times"),
            seen.when()
        ));
    }
    if c.skipped_over > 0 {
        not_suggested.push(format!(
            "{} more not listed one by one (over {} distinct entries)",
            plural(c.skipped_over, "decision", "decisions"),
            c.limits.max_skipped
        ));
    }
    let mut out = Policy { network, ..policy.clone() };
    let text = render(&c, sandbox, &out, &notes, &not_suggested)?;
    let back = Policy::parse(&text, "the suggested policy").map_err(|e| SuggestError::Render(chain(&e)))?;
    back.network.effective().map_err(|e| SuggestError::Render(chain(&e)))?;
    if back != out {
        return Err(SuggestError::Render("it parses as another policy than the one built".into()));
    }
    out = back;
    Ok(Suggestion { policy: out, text, suggested, not_suggested, stats: c.stats.clone() })
}

fn chain(e: &dyn std::error::Error) -> String {
    moat_builder::errors::chain(e)
}

fn access_name(a: Access) -> &'static str {
    match a {
        Access::Full => "full",
        Access::ReadOnly => "read-only",
        Access::ReadWrite => "read-write",
    }
}

/// `# text` with anything a comment line cannot hold (line ends, control
/// and invisible characters) escaped.
fn comment(out: &mut String, indent: &str, text: &str) {
    let _ = writeln!(out, "{indent}# {}", crate::visible::field(text).replace(['\n', '\r'], " "));
}

fn key(k: &str) -> String {
    if !k.is_empty() && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') {
        k.to_string()
    } else {
        toml::Value::String(k.to_string()).to_string()
    }
}

/// Writes `t`'s keys: those in `first` in that order, then the rest
/// (sorted) but `skip`.
fn keys(out: &mut String, t: &toml::Table, first: &[&str], skip: &[&str]) {
    let rest = t.keys().filter(|k| !first.contains(&k.as_str()) && !skip.contains(&k.as_str()));
    for k in first.iter().copied().filter(|k| t.contains_key(*k)).chain(rest.map(String::as_str)) {
        let _ = writeln!(out, "{} = {}", key(k), t[k]);
    }
}

fn render(c: &Collector, sandbox: &str, p: &Policy, notes: &Notes, skipped: &[String]) -> Result<String, SuggestError> {
    let bad = |e: &dyn std::error::Error| SuggestError::Render(chain(e));
    let mut out = String::new();
    let s = &c.stats;
    comment(&mut out, "", &format!("Suggested by `moat policy suggest {sandbox}` from its audit log"));
    comment(
        &mut out,
        "",
        &format!(
            "({} read{}{}). Review it before `moat policy set`: each suggested rule says what it covers.",
            plural(s.records, "record", "records"),
            if s.before_since > 0 { format!(", {} before --since", s.before_since) } else { String::new() },
            if s.truncated { ", the rest of the log not read (record cap)".to_string() } else { String::new() },
        ),
    );
    comment(
        &mut out,
        "",
        &format!(
            "Paths are exact, or parent/* where {} or more sibling paths were seen (docs/egress.md).",
            super::rules::SIBLINGS
        ),
    );
    for (policy, n) in &c.allowed_now {
        comment(&mut out, "", &format!("{} allowed now by {policy} (nothing to add)", plural(*n, "record", "records")));
    }
    let mut rest = p.clone();
    rest.network.policies.clear();
    out.push('\n');
    out.push_str(&toml::to_string(&rest).map_err(|e| bad(&e))?);
    for np in &p.network.policies {
        let toml::Value::Table(t) = toml::Value::try_from(np).map_err(|e| bad(&e))? else {
            return Err(SuggestError::Render("a rule set is not a table".into()));
        };
        out.push('\n');
        for l in notes.policy.get(&np.name).into_iter().flatten() {
            comment(&mut out, "", l);
        }
        out.push_str("[[network.policy]]\n");
        keys(&mut out, &t, &["name", "why", "binaries", "sha256", "children", "jit"], &["endpoint"]);
        let endpoints = t.get("endpoint").and_then(|v| v.as_array()).cloned().unwrap_or_default();
        for (i, ep) in endpoints.iter().enumerate() {
            let Some(et) = ep.as_table() else { continue };
            for l in notes.endpoint.get(&(np.name.clone(), i)).into_iter().flatten() {
                comment(&mut out, "", l);
            }
            out.push_str("[[network.policy.endpoint]]\n");
            let first = ["host", "port", "protocol", "tls", "access", "enforcement", "allowed_ips", "upgrade"];
            keys(&mut out, et, &first, &["rules"]);
            let Some(rules) = et.get("rules").and_then(|v| v.as_array()) else { continue };
            out.push_str("rules = [\n");
            for (r, rule) in rules.iter().enumerate() {
                let _ = write!(out, "    {rule},");
                match notes.rule.get(&(np.name.clone(), i, r)) {
                    Some(n) => comment(&mut out, " ", n),
                    None => out.push('\n'),
                }
            }
            out.push_str("]\n");
        }
    }
    if !skipped.is_empty() {
        out.push('\n');
        comment(&mut out, "", "Not suggested, and why:");
        for l in skipped {
            comment(&mut out, "", &format!("  {l}"));
        }
    }
    Ok(out)
}
