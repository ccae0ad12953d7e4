//! The one decision pipeline CONNECT tunnels and plain-HTTP forward requests
//! share: caller identity, metadata names, policy match, operator approval
//! for unlisted destinations, then resolution with every address checked by
//! the SSRF guard. Guards against any path out that skips a check: the only
//! way to get addresses to dial is a `Relay` from here, and each outcome is
//! an audit event.
#![forbid(unsafe_code)]
use super::events::{Decision, Event};
use super::http1::{self, RequestHead};
use super::identity::{Caller, IdentityError};
use super::Shared;
use super::{path_shape, ssrf};
use crate::policy::matcher::{Match, RequestVerdict};
use crate::policy::schema::{Endpoint, Enforcement};
use std::net::SocketAddr;

/// A permitted destination: the rule that allowed it and the validated addresses.
#[derive(Debug, Clone)]
pub(crate) struct Relay {
    pub policy: String,
    pub endpoint: Endpoint,
    /// Allowed only because the endpoint is in audit mode.
    pub audit: bool,
    pub addrs: Vec<SocketAddr>,
    pub generation: u64,
}

/// A refusal: the status and body the client gets, and for policy
/// refusals a one-line summary (`moat denied BINARY -> HOST:PORT (why)`)
/// sent as the reason phrase and the `X-Moat-Denied` header, which clients
/// print where they print no body (python's failed tunnel, `curl -v`).
#[derive(Debug, Clone)]
pub(crate) struct Refusal {
    pub status: u16,
    pub body: String,
    pub summary: Option<String>,
}

impl Refusal {
    pub(crate) fn plain(status: u16, body: String) -> Refusal {
        Refusal { status, body, summary: None }
    }
}

/// What the connection knows about its caller (identified once).
pub(super) type Identified = Result<Caller, IdentityError>;

/// Decides whether the caller may reach `host:port`; `method` is `CONNECT`
/// for tunnels. Records the event.
pub(super) async fn destination(
    shared: &Shared,
    caller: &Identified,
    host: &str,
    port: u16,
    method: &str,
    path: &str,
) -> Result<Relay, Refusal> {
    let proc_ = caller.as_ref().ok().map(|c| &c.process);
    let who = proc_.map_or("an unidentified caller", |p| p.exe.as_str());
    let deny_as = |rule: &str, reason: String, body: String, status: u16, why: &str| {
        shared.events.record(&Event::new(proc_, host, port, method, path, Decision::Deny, rule, &reason));
        let summary = format!("moat denied {who} -> {host}:{port} ({why})");
        Refusal { status, body, summary: Some(crate::visible::field(&summary).into_owned()) }
    };
    let deny = |rule: &str, reason: String, body: String, status: u16| {
        let why = if rule.is_empty() { reason.clone() } else { format!("policy {rule}: {reason}") };
        deny_as(rule, reason, body, status, &why)
    };
    let caller = match caller {
        Ok(c) => c,
        Err(e) => {
            let reason = format!("caller not identified: {}", moat_builder::errors::chain(&e));
            return Err(deny("", reason.clone(), format!("moat: egress denied: {reason}\n"), 403));
        }
    };
    let bin = &caller.process.exe;
    if ssrf::is_metadata_host(host) {
        let reason = "cloud metadata endpoints are never reachable".to_string();
        return Err(deny("", reason.clone(), format!("moat: egress denied: {host}: {reason}\n"), 403));
    }
    let cur = shared.current();
    let host_lc = host.trim_end_matches('.').to_ascii_lowercase();
    let (policy, endpoint, audit) = match match_caller(&cur.compiled, caller, &host_lc, port) {
        Match::Allowed { policy, endpoint, audit } => (policy, endpoint, audit),
        other => {
            let why = match other {
                Match::WrongBinary { policies } => {
                    format!("{host}:{port} is allowed only for other binaries (policy {})", policies.join(", "))
                }
                _ => format!("no policy lists {host}:{port}"),
            };
            let id = shared.request_approval(caller, &host_lc, port);
            let body = format!(
                "moat: egress denied: binary {bin} may not reach {host}:{port}: {why}.\n\
                 approval id: {id} (an operator can allow it with `moat approve {} {id}`)\n",
                shared.sandbox
            );
            return Err(deny_as("", format!("{why}; pending approval {id}"), body, 403, &format!("approval {id}")));
        }
    };
    if caller.process.anonymous_exec && !cur.compiled.allows_jit(&policy) {
        let reason = format!("{bin} holds anonymous executable memory and policy {policy} says jit = false");
        return Err(deny(&policy, reason.clone(), format!("moat: egress denied: {reason}\n"), 403));
    }
    let nets = endpoint.allowed_nets();
    let addrs = match ssrf::resolve_checked(&shared.resolver, &host_lc, port, &nets).await {
        Ok(a) => a,
        Err(e) => {
            let status =
                if matches!(e, ssrf::SsrfError::Resolve { .. } | ssrf::SsrfError::NoAddress(..)) { 502 } else { 403 };
            let e = moat_builder::errors::chain(&e);
            return Err(deny(&policy, e.clone(), format!("moat: egress denied: {e}\n"), status));
        }
    };
    // Inspected endpoints record one event per request (`request`); the rest one here.
    if !endpoint.inspected() {
        let (d, reason) =
            if audit { (Decision::Audit, "binary not listed (audit mode)") } else { (Decision::Allow, "") };
        shared.events.record(&Event::new(Some(&caller.process), host, port, method, path, d, &policy, reason));
    }
    Ok(Relay { policy, endpoint, audit, addrs, generation: cur.generation })
}

/// Checks one request on an inspected endpoint; records the event. `path`
/// is the origin-form target (with its query). Beside the rule's method and
/// path: the path's shape (`path_shape`), the method-override headers
/// (checked as methods too) and upgrades (only where the rule says
/// `upgrade = true`).
pub(super) fn request(
    shared: &Shared,
    caller: &Caller,
    relay: &Relay,
    host: &str,
    port: u16,
    head: &RequestHead,
    path: &str,
) -> Result<(), Refusal> {
    let method = head.method.as_str();
    let record = |decision: Decision, reason: &str| {
        let e = Event::new(Some(&caller.process), host, port, method, path, decision, &relay.policy, reason);
        shared.events.record(&e);
    };
    let malformed = |reason: String| {
        record(Decision::Deny, &reason);
        Err(Refusal::plain(400, format!("moat: {reason}\n")))
    };
    if let Some(shape) = path_shape::refusal(path, !relay.endpoint.rules.is_empty()) {
        return malformed(format!(
            "{shape} are refused in inspected requests: the upstream could read another path than the rule matched"
        ));
    }
    let overrides = match method_overrides(head) {
        Ok(m) => m,
        Err(reason) => return malformed(reason),
    };
    let cur = shared.current();
    let mut verdict = cur.compiled.check_request(&relay.policy, &relay.endpoint, method, path);
    for (name, m) in &overrides {
        let v = match cur.compiled.check_request(&relay.policy, &relay.endpoint, m, path) {
            RequestVerdict::Allow => continue,
            RequestVerdict::Audit(r) => RequestVerdict::Audit(format!("{name}: {m}: {r}")),
            RequestVerdict::Deny(r) => RequestVerdict::Deny(format!("{name}: {m}: {r}")),
        };
        verdict = stricter(verdict, v);
    }
    if http1::is_upgrade(head).is_some() && !relay.endpoint.upgrade {
        let r = "an upgrade (WebSocket) is not allowed: the endpoint does not say upgrade = true".to_string();
        let v = match relay.endpoint.enforcement {
            Enforcement::Audit => RequestVerdict::Audit(r),
            Enforcement::Enforce => RequestVerdict::Deny(r),
        };
        verdict = stricter(verdict, v);
    }
    let verdict = match verdict {
        RequestVerdict::Allow if relay.audit => RequestVerdict::Audit("binary not listed (audit mode)".into()),
        v => v,
    };
    match &verdict {
        RequestVerdict::Allow => record(Decision::Allow, ""),
        RequestVerdict::Audit(r) => record(Decision::Audit, r),
        RequestVerdict::Deny(r) => record(Decision::Deny, r),
    }
    match verdict {
        RequestVerdict::Deny(r) => {
            let target = path_shape::strip_query(path);
            let summary =
                format!("moat denied {} {method} {host}{target} (policy {})", caller.process.exe, relay.policy);
            Err(Refusal {
                status: 403,
                body: format!("moat: request denied: {method} {target} on {host}: {r} (policy {})\n", relay.policy),
                summary: Some(crate::visible::field(&summary).into_owned()),
            })
        }
        _ => Ok(()),
    }
}

/// Headers by which a client asks the upstream to treat a request as
/// another method (Express, Rails, Laravel, Google APIs and others honour one
/// of them). They are checked as the method, so a rule holds whichever
/// method the upstream acts on; stripping them would turn a client's
/// override DELETE into the POST it was carried by, a different action.
const METHOD_OVERRIDES: [&str; 3] = ["X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override"];

/// (header, method upper-cased as the frameworks read it) for each override
/// header; Err when one names anything but a single method.
fn method_overrides(head: &RequestHead) -> Result<Vec<(&'static str, String)>, String> {
    // One pass over the head; nothing is allocated for the usual request
    // that carries none of them.
    let mut out = Vec::new();
    for (n, v) in &head.headers {
        let Some(name) = METHOD_OVERRIDES.into_iter().find(|o| n.eq_ignore_ascii_case(o)) else { continue };
        if v.is_empty() || !v.iter().all(u8::is_ascii_alphabetic) {
            return Err(format!("{name} must name exactly one method"));
        }
        out.push((name, String::from_utf8_lossy(v).to_ascii_uppercase()));
    }
    Ok(out)
}

/// The stricter of two verdicts (deny, then audit, then allow).
fn stricter(a: RequestVerdict, b: RequestVerdict) -> RequestVerdict {
    match (&a, &b) {
        (RequestVerdict::Deny(_), _) => a,
        (_, RequestVerdict::Deny(_)) => b,
        (RequestVerdict::Audit(_), _) => a,
        _ => b,
    }
}

/// Whether a relay decided under an older generation still holds; a new
/// `Relay` when it does (the rule may have changed), else the reason.
pub(super) fn recheck(shared: &Shared, caller: &Caller, relay: &Relay, host: &str, port: u16) -> Result<Relay, String> {
    let cur = shared.current();
    if cur.generation == relay.generation {
        return Ok(relay.clone());
    }
    match match_caller(&cur.compiled, caller, &host.to_ascii_lowercase(), port) {
        Match::Allowed { policy, endpoint, audit } if endpoint.inspected() == relay.endpoint.inspected() => {
            Ok(Relay { policy, endpoint, audit, addrs: relay.addrs.clone(), generation: cur.generation })
        }
        Match::Allowed { .. } => Err(format!("revision {} changes how {host}:{port} is inspected", cur.number)),
        _ => Err(format!("revision {} no longer allows {host}:{port}", cur.number)),
    }
}

/// Matches the calling binary; failing that, each ancestor inside the
/// sandbox (nearest first) whose rule says `children = true` and whose own
/// code is all from the image. A rule for `/usr/bin/git` alone does not
/// cover the python a git alias starts; git's https helper needs its own
/// entry (the presets list it).
pub(super) fn match_caller(
    compiled: &crate::policy::matcher::Compiled,
    caller: &Caller,
    host: &str,
    port: u16,
) -> Match {
    let own = compiled.match_destination_pinned(&caller.process.exe, Some(&caller.process.sha256), host, port);
    if matches!(own, Match::Allowed { audit: false, .. }) {
        return own;
    }
    caller
        .ancestors
        .iter()
        .filter(|a| a.taint.is_none())
        .find_map(|a| compiled.match_inherited_pinned(&a.exe, Some(&a.sha256), host, port))
        .unwrap_or(own)
}
