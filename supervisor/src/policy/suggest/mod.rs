//! `moat policy suggest`: from a sandbox's audit records (refusals, and
//! what endpoints in audit mode relayed), the smallest network rules that
//! would have allowed that traffic, as a whole policy file: the sandbox's
//! policy with new rule sets per binary (an endpoint per host and port,
//! inspected method/path rules where requests were seen) and missing
//! request rules added to the endpoints that refused them. Guards against
//! an operator approving more than the agent did: binaries are pinned by
//! the hashes seen, paths become globs by one stated rule (`rules`), the
//! endpoints it learnt from leave audit mode, and interpreters, shells,
//! metadata services and private addresses are never suggested (listed
//! with the reason). Guards the CLI's memory: a line, the records read and
//! the distinct destinations and paths kept are bounded.
#![forbid(unsafe_code)]
mod render;
pub mod rules;

use crate::policy::matcher::{Compiled, Match, RequestVerdict};
use crate::policy::schema::{check_host, Enforcement, NetPolicyError};
use crate::policy::{Network, Policy};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::io::BufRead;

#[derive(Debug, thiserror::Error)]
pub enum SuggestError {
    #[error("--since {0:?}: give an RFC 3339 time (2025-01-31T12:00:00Z) or an age (30s, 10m, 2h, 7d)")]
    Since(String),
    #[error("allowed_ips {0:?} is not a CIDR")]
    AllowedIp(String),
    #[error("reading the audit log")]
    Read(#[source] std::io::Error),
    #[error("the sandbox's network policy")]
    Policy(#[source] NetPolicyError),
    #[error("the suggested policy does not read back as it was built: {0}")]
    Render(String),
}

/// One audit record as `gateway::events` writes it (fields this command
/// does not use are ignored; a missing count reads as 1).
#[derive(Debug, Clone, Deserialize)]
pub struct Record {
    pub time: String,
    pub binary: String,
    #[serde(default)]
    pub hash: String,
    pub host: String,
    pub port: u16,
    #[serde(default)]
    pub method: String,
    #[serde(default)]
    pub path: String,
    pub decision: String,
    #[serde(default)]
    pub rule: String,
    #[serde(default)]
    pub reason: String,
    #[serde(default = "one")]
    pub count: u64,
}

fn one() -> u64 {
    1
}

/// What is read and kept.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest line read (bytes); a longer one is skipped and counted.
    pub max_line: usize,
    /// Records read; the rest of the log is left unread (and said so).
    pub max_records: u64,
    /// Distinct (binary, host, port) and (rule, endpoint) groups kept.
    pub max_destinations: usize,
    /// Distinct (method, path) pairs kept per group.
    pub max_paths: usize,
    /// Distinct not-suggested entries listed one by one.
    pub max_skipped: usize,
}

impl Default for Limits {
    /// The audit log holds at most 16 MiB (two files of 8 MiB); a record
    /// line is under 8 KiB.
    fn default() -> Limits {
        Limits { max_line: 64 << 10, max_records: 500_000, max_destinations: 512, max_paths: 256, max_skipped: 256 }
    }
}

/// When something was seen: nanoseconds since the epoch when the record's
/// time reads, and the time as recorded (shown).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp {
    at: Option<i128>,
    text: String,
}

/// How often and when.
#[derive(Debug, Clone, Default)]
pub(crate) struct Seen {
    count: u64,
    first: Option<Stamp>,
    last: Option<Stamp>,
}

impl Seen {
    fn add(&mut self, n: u64, t: &Stamp) {
        self.count = self.count.saturating_add(n);
        let key = |s: &Stamp| (s.at, s.text.clone());
        if self.first.as_ref().is_none_or(|f| key(t) < key(f)) {
            self.first = Some(t.clone());
        }
        if self.last.as_ref().is_none_or(|l| key(t) > key(l)) {
            self.last = Some(t.clone());
        }
    }

    fn merge(&mut self, o: &Seen) {
        for s in o.first.iter().chain(&o.last) {
            self.add(0, s);
        }
        self.count = self.count.saturating_add(o.count);
    }

    /// `first 2025-.., last 2025-..` (one time when they are the same).
    fn when(&self) -> String {
        match (&self.first, &self.last) {
            (Some(f), Some(l)) if f != l => format!("first {}, last {}", f.text, l.text),
            (Some(f), _) => format!("at {}", f.text),
            _ => String::new(),
        }
    }
}

/// The traffic of one group: tunnels whose requests were not seen, and
/// requests by (method, path).
#[derive(Debug, Default)]
pub(crate) struct Traffic {
    tunnels: Seen,
    requests: BTreeMap<(String, String), Seen>,
    /// Requests whose distinct path was over the cap (not kept).
    paths_dropped: u64,
    /// Refusal records that stand for several refusals: only their last
    /// path was recorded.
    folded: u64,
}

impl Traffic {
    fn add(&mut self, request: Option<(&str, &str)>, n: u64, t: &Stamp, max_paths: usize) {
        let Some((m, p)) = request else {
            self.tunnels.add(n, t);
            return;
        };
        let key = (m.to_string(), p.to_string());
        if let Some(s) = self.requests.get_mut(&key) {
            s.add(n, t);
        } else if self.requests.len() < max_paths {
            self.requests.entry(key).or_default().add(n, t);
        } else {
            self.paths_dropped = self.paths_dropped.saturating_add(n);
        }
    }
}

/// One binary that needs a rule set of its own.
#[derive(Debug, Default)]
pub(crate) struct NewBinary {
    hashes: BTreeSet<String>,
    /// Some record of it had no hash: it is not pinned.
    unpinned: bool,
    dests: BTreeMap<(String, u16), Traffic>,
}

/// Counts of what the reading saw.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    pub lines: u64,
    pub records: u64,
    pub unreadable: u64,
    pub too_long: u64,
    pub before_since: u64,
    /// Allowed and revoked decisions (nothing to suggest).
    pub other_decisions: u64,
    /// The record cap was reached and the rest was not read.
    pub truncated: bool,
}

/// The audit records read so far, sorted into what would be suggested and
/// what would not, against the sandbox's network policy.
pub struct Collector {
    /// The sandbox's network section with its own audit-mode endpoints enforced.
    base: Network,
    /// (policy, host, port) of the endpoints switched from audit to enforce.
    enforced: Vec<(String, String, u16)>,
    compiled: Compiled,
    since: Option<i128>,
    limits: Limits,
    new: BTreeMap<String, NewBinary>,
    /// (own rule set, endpoint index) -> requests its rules refused.
    merge: BTreeMap<(String, usize), Traffic>,
    groups: usize,
    /// (binary, host, port, why) -> when, and one example request.
    skipped: BTreeMap<(String, String, u16, String), (Seen, String)>,
    skipped_over: u64,
    /// Rule set -> records it allows now (approved or changed since).
    allowed_now: BTreeMap<String, u64>,
    stats: Stats,
}

/// Nanoseconds since the epoch of an RFC 3339 time (`Z` or `±HH:MM`).
pub fn instant(s: &str) -> Option<i128> {
    let b = s.as_bytes();
    let num = |r: std::ops::Range<usize>| -> Option<u32> {
        let d = s.get(r)?;
        (!d.is_empty() && d.bytes().all(|c| c.is_ascii_digit())).then(|| d.parse().ok()).flatten()
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || !matches!(b[10], b'T' | b't' | b' ') {
        return None;
    }
    if b[13] != b':' || b[16] != b':' {
        return None;
    }
    let month = time::Month::try_from(u8::try_from(num(5..7)?).ok()?).ok()?;
    let date =
        time::Date::from_calendar_date(i32::try_from(num(0..4)?).ok()?, month, u8::try_from(num(8..10)?).ok()?).ok()?;
    let (mut i, mut nanos) = (19, 0u32);
    if b[i] == b'.' {
        let digits = b[i + 1..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return None;
        }
        let frac = &s[i + 1..i + 1 + digits.min(9)];
        nanos = frac.parse::<u32>().ok()? * 10u32.pow(9 - frac.len() as u32);
        i += 1 + digits;
    }
    let offset = match s.get(i..)? {
        "Z" | "z" => 0,
        o if o.len() == 6 && matches!(&o[..1], "+" | "-") && &o[3..4] == ":" => {
            let secs = i32::try_from(num(i + 1..i + 3)? * 3600 + num(i + 4..i + 6)? * 60).ok()?;
            if o.starts_with('-') {
                -secs
            } else {
                secs
            }
        }
        _ => return None,
    };
    let t = time::Time::from_hms_nano(
        u8::try_from(num(11..13)?).ok()?,
        u8::try_from(num(14..16)?).ok()?,
        u8::try_from(num(17..19)?).ok()?,
        nanos,
    )
    .ok()?;
    let off = time::UtcOffset::from_whole_seconds(offset).ok()?;
    Some(time::PrimitiveDateTime::new(date, t).assume_offset(off).unix_timestamp_nanos())
}

/// `--since`: an RFC 3339 time, or an age (`30s`, `10m`, `2h`, `7d`)
/// before `now` (nanoseconds since the epoch).
pub fn since(arg: &str, now: i128) -> Result<i128, SuggestError> {
    let bad = || SuggestError::Since(arg.to_string());
    if let Some(unit) = arg.chars().last().filter(|c| matches!(c, 's' | 'm' | 'h' | 'd')) {
        let n: u64 = arg[..arg.len() - 1].parse().map_err(|_| bad())?;
        let secs = match unit {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            _ => 86400,
        };
        return Ok(now - i128::from(n).saturating_mul(secs * 1_000_000_000));
    }
    instant(arg).ok_or_else(bad)
}

/// A recorded reason that says the destination has no rule for this
/// binary (the gateway's own wording in `gateway::decide`).
fn unlisted(reason: &str) -> bool {
    reason.contains("no policy lists ") || reason.contains("is allowed only for other binaries")
}

/// A recorded reason that says a request is outside its endpoint's rules.
fn request_refused(reason: &str) -> bool {
    reason.starts_with("no rule allows ")
        || (reason.starts_with("method ") && reason.contains(" is not allowed by access"))
}

const AUDIT_UNLISTED: &str = "binary not listed (audit mode)";

impl Collector {
    /// A collector judging records against `network` (the sandbox's
    /// network section, as in force) with its own audit-mode endpoints set
    /// to enforce; records before `since` (nanoseconds) are passed over.
    pub fn new(network: &Network, since: Option<i128>, limits: Limits) -> Result<Collector, SuggestError> {
        let mut base = network.clone();
        let mut enforced = Vec::new();
        for p in &mut base.policies {
            for e in &mut p.endpoints {
                if e.enforcement == Enforcement::Audit {
                    e.enforcement = Enforcement::Enforce;
                    enforced.push((p.name.clone(), e.host.clone(), e.port));
                }
            }
        }
        let compiled = Compiled::new(base.effective().map_err(SuggestError::Policy)?).map_err(SuggestError::Policy)?;
        Ok(Collector {
            base,
            enforced,
            compiled,
            since,
            limits,
            new: BTreeMap::new(),
            merge: BTreeMap::new(),
            groups: 0,
            skipped: BTreeMap::new(),
            skipped_over: 0,
            allowed_now: BTreeMap::new(),
            stats: Stats::default(),
        })
    }

    /// Reads JSON lines from `r` (one audit log file), each bounded by
    /// `max_line`; stops at `max_records`.
    pub fn read(&mut self, mut r: impl BufRead) -> Result<(), SuggestError> {
        let mut buf = Vec::new();
        loop {
            if self.stats.records >= self.limits.max_records {
                self.stats.truncated = true;
                return Ok(());
            }
            buf.clear();
            let cap = self.limits.max_line as u64 + 1;
            let n = std::io::Read::take(r.by_ref(), cap).read_until(b'\n', &mut buf).map_err(SuggestError::Read)?;
            if n == 0 {
                return Ok(());
            }
            if buf.last() != Some(&b'\n') && buf.len() > self.limits.max_line {
                self.stats.too_long += 1;
                skip_line(&mut r).map_err(SuggestError::Read)?;
                continue;
            }
            self.stats.lines += 1;
            let line = std::str::from_utf8(&buf).unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            match serde_json::from_str::<Record>(line) {
                Ok(rec) => self.add(&rec),
                Err(_) => self.stats.unreadable += 1,
            }
        }
    }

    /// Why the record's traffic is not suggested, if it is not.
    fn refusal_to_suggest(r: &Record, host: &str, request: Option<(&str, &str)>) -> Option<String> {
        let reason = r.reason.as_str();
        if r.binary.is_empty() {
            return Some("the caller was not identified: there is no binary to name".into());
        }
        if r.binary == "*" || host == "*" || r.port == 0 && host != "inference.local" {
            return Some("a rate-limit summary: the fields its refusals did not share were not recorded".into());
        }
        if rules::metadata(host) || reason.contains("cloud metadata") {
            return Some(
                "a cloud metadata service: never reachable whatever a policy says (it hands out the host's \
                 credentials)"
                    .into(),
            );
        }
        if host == "inference.local" {
            return Some("inference.local is routed by `moat inference`, not by network rules".into());
        }
        if let Some(kind) = rules::private(host) {
            return Some(format!(
                "a {kind} address: not suggested (a rule for it would reach into the host's networks; \
                 write it by hand with allowed_ips if it is meant)"
            ));
        }
        // Only a literal name or address: `*.d`, `+.d`, `**.d` and `{var}`
        // are patterns to the matcher, wider than the one host recorded.
        let literal = host.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
        if !literal || check_host(host).is_err() || r.port == 0 {
            return Some("not a host name or address a rule can name".into());
        }
        if reason.contains("allowed_ips") || reason.contains("never dialled") {
            return Some(format!(
                "its address is private or reserved ({reason}): opening it takes allowed_ips, which this \
                 command does not guess"
            ));
        }
        if let Some(base) = rules::interpreter(&r.binary) {
            return Some(format!(
                "{base} is an interpreter or shell: a rule for it covers every script it runs (give the \
                 program that needs this a binary and a rule of its own)"
            ));
        }
        let ours = if r.rule.is_empty() {
            unlisted(reason)
        } else {
            request_refused(reason) || (r.decision == "audit" && reason == AUDIT_UNLISTED)
        };
        if !ours {
            return Some(format!("refused for another reason than a missing rule: {reason}"));
        }
        if r.binary.chars().any(char::is_control) {
            return Some("the binary's path has control characters: not a path a rule should name".into());
        }
        if r.binary.ends_with(" (deleted)") || !r.binary.starts_with('/') {
            return Some("the binary's path is not one a rule can name (deleted or relative)".into());
        }
        if let Some((m, p)) = request {
            let whole = p.starts_with('/')
                && !p.contains(" bytes cut]")
                && !p.contains(crate::secrets::redact::MASK)
                && !p.chars().any(|c| c.is_whitespace() || c.is_control());
            if !whole {
                return Some("the request's path was not recorded whole (cut, masked or not a path)".into());
            }
            if m.is_empty() || !m.bytes().all(|b| b.is_ascii_uppercase()) {
                return Some(format!("method {m:?} is not one a rule can name"));
            }
        }
        None
    }

    /// Sorts one record.
    pub fn add(&mut self, r: &Record) {
        self.stats.records += 1;
        let at = instant(&r.time);
        if let Some(since) = self.since {
            if at.is_none_or(|t| t < since) {
                self.stats.before_since += 1;
                return;
            }
        }
        if !matches!(r.decision.as_str(), "deny" | "audit") {
            self.stats.other_decisions += 1;
            return;
        }
        let t = Stamp { at, text: r.time.clone() };
        let n = r.count.max(1);
        let host = r.host.trim_end_matches('.').to_ascii_lowercase();
        let request = (!r.path.is_empty() && r.method != "CONNECT").then_some((r.method.as_str(), r.path.as_str()));
        if let Some(why) = Self::refusal_to_suggest(r, &host, request) {
            return self.skip(r, &host, why, n, &t);
        }
        let hash = (!r.hash.is_empty()).then_some(r.hash.as_str());
        match self.compiled.match_destination_pinned(&r.binary, hash, &host, r.port) {
            Match::Allowed { policy, endpoint, audit: false } => {
                let Some((m, p)) = request.filter(|_| endpoint.inspected()) else {
                    return self.allowed(&policy, n);
                };
                if self.compiled.check_request(&policy, &endpoint, m, p) == RequestVerdict::Allow {
                    return self.allowed(&policy, n);
                }
                let own = self.base.policies.iter().find(|x| x.name == policy);
                let Some(i) = own.and_then(|x| x.endpoints.iter().position(|e| *e == endpoint)) else {
                    let why = format!(
                        "refused by the rules of {policy}, which is a preset: presets are not changed here \
                         (write an own rule set for this binary and host by hand)"
                    );
                    return self.skip(r, &host, why, n, &t);
                };
                let key = (policy, i);
                if !self.merge.contains_key(&key) && !self.room() {
                    return self.skip(r, &host, self.cap_reason(), n, &t);
                }
                let max = self.limits.max_paths;
                let traffic = self.merge.entry(key).or_default();
                traffic.add(request, n, &t, max);
                if n > 1 && r.decision == "deny" {
                    traffic.folded += 1;
                }
            }
            _ => {
                let dest = (host.clone(), r.port);
                let known = self.new.get(&r.binary).is_some_and(|b| b.dests.contains_key(&dest));
                if !known && !self.room() {
                    return self.skip(r, &host, self.cap_reason(), n, &t);
                }
                let max = self.limits.max_paths;
                let b = self.new.entry(r.binary.clone()).or_default();
                match hash {
                    Some(h) if b.hashes.len() < 8 => {
                        b.hashes.insert(h.to_string());
                    }
                    Some(h) if b.hashes.contains(h) => {}
                    _ => b.unpinned = true,
                }
                let traffic = b.dests.entry(dest).or_default();
                traffic.add(request, n, &t, max);
                if n > 1 && r.decision == "deny" && request.is_some() {
                    traffic.folded += 1;
                }
            }
        }
    }

    /// Whether one more group may be kept (and counts it).
    fn room(&mut self) -> bool {
        if self.groups >= self.limits.max_destinations {
            return false;
        }
        self.groups += 1;
        true
    }

    fn cap_reason(&self) -> String {
        format!("beyond the {} distinct destinations one suggestion keeps (run it again with --since)", self.groups)
    }

    fn allowed(&mut self, policy: &str, n: u64) {
        let c = self.allowed_now.entry(policy.to_string()).or_default();
        *c = c.saturating_add(n);
    }

    fn skip(&mut self, r: &Record, host: &str, why: String, n: u64, t: &Stamp) {
        let key = (r.binary.clone(), host.to_string(), r.port, why);
        if !self.skipped.contains_key(&key) && self.skipped.len() >= self.limits.max_skipped {
            self.skipped_over = self.skipped_over.saturating_add(n);
            return;
        }
        let example = if r.path.is_empty() { r.method.clone() } else { format!("{} {}", r.method, r.path) };
        let e = self.skipped.entry(key).or_insert_with(|| (Seen::default(), example));
        e.0.add(n, t);
    }

    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// The suggestion: `policy` (the sandbox's, for its other sections)
    /// with the network section judged here, new rule sets named after the
    /// sandbox `sandbox`, and `allowed_ips` on every new endpoint.
    pub fn finish(self, sandbox: &str, policy: &Policy, allowed_ips: &[String]) -> Result<Suggestion, SuggestError> {
        for c in allowed_ips {
            let ok = c.parse::<ipnet::IpNet>().is_ok() || c.parse::<std::net::IpAddr>().is_ok();
            if !ok {
                return Err(SuggestError::AllowedIp(c.clone()));
            }
        }
        render::build(self, sandbox, policy, allowed_ips)
    }
}

/// Consumes the rest of a line that was too long to keep.
fn skip_line(r: &mut impl BufRead) -> std::io::Result<()> {
    loop {
        let buf = r.fill_buf()?;
        if buf.is_empty() {
            return Ok(());
        }
        if let Some(i) = buf.iter().position(|&b| b == b'\n') {
            r.consume(i + 1);
            return Ok(());
        }
        let n = buf.len();
        r.consume(n);
    }
}

/// A suggested policy file and what was left out.
#[derive(Debug)]
pub struct Suggestion {
    /// The policy the text reads back as.
    pub policy: Policy,
    /// The policy file (TOML with a comment beside each suggested rule and
    /// a commented-out list of what was not suggested).
    pub text: String,
    /// Rules and endpoints suggested.
    pub suggested: usize,
    /// One line per destination not suggested, with why.
    pub not_suggested: Vec<String>,
    pub stats: Stats,
}

#[cfg(test)]
mod tests;
