//! Network policy revisions and operator approvals. A revision is a numbered,
//! hashed TOML file under the sandbox's state (`network/NNNNNN.toml`),
//! written atomically, the newest one in force; pending approvals are a
//! bounded, deduplicated list. Guards against an approval that vanishes on a
//! restart or cannot be traced (every change is a durable, hashed revision),
//! against a flood of refused requests growing memory without bound, and
//! against an approval given for one program opening the way to another:
//! a pending entry carries the binary's sha256 and the chain that started
//! it, and the rule an approval writes pins that sha256.
#![forbid(unsafe_code)]
use crate::policy::network::Network;
use crate::policy::schema::{Endpoint, NetPolicy};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::VecDeque;
use std::fs;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RevisionError {
    #[error("{path}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Corrupt { path: PathBuf, message: String },
    #[error("no pending approval with id {0:?} (see `moat approvals`)")]
    UnknownApproval(String),
}

/// The durable revision history of one sandbox's network policy.
#[derive(Debug, Clone)]
pub struct RevisionStore {
    dir: Option<PathBuf>,
}

/// The TOML file body of a revision: the network section alone.
#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RevisionFile {
    network: Network,
}

impl RevisionStore {
    /// Revisions under `dir` (created 0700 on first write).
    pub fn at(dir: PathBuf) -> RevisionStore {
        RevisionStore { dir: Some(dir) }
    }

    /// No durable history (tests, `run --rm`).
    pub fn memory() -> RevisionStore {
        RevisionStore { dir: None }
    }

    /// The newest revision on disk: (number, network, sha256 of the file).
    pub fn latest(&self) -> Result<Option<(u64, Network, String)>, RevisionError> {
        let Some(dir) = &self.dir else { return Ok(None) };
        let Ok(entries) = fs::read_dir(dir) else { return Ok(None) };
        let newest =
            entries.flatten().filter_map(|e| e.file_name().to_str()?.strip_suffix(".toml")?.parse::<u64>().ok()).max();
        let Some(n) = newest else { return Ok(None) };
        let path = dir.join(file_name(n));
        let text = fs::read_to_string(&path).map_err(|source| RevisionError::Io { path: path.clone(), source })?;
        let f: RevisionFile =
            toml::from_str(&text).map_err(|e| RevisionError::Corrupt { path: path.clone(), message: e.to_string() })?;
        f.network.validate().map_err(|e| RevisionError::Corrupt { path, message: e.to_string() })?;
        Ok(Some((n, f.network, hex::encode(Sha256::digest(text.as_bytes())))))
    }

    /// Revision `n`'s file text, if kept (at most [`MAX_REVISION_TEXT`]
    /// bytes: the console shows it and a diff against the one before).
    pub fn read(&self, n: u64) -> Result<Option<String>, RevisionError> {
        use std::io::Read;
        let Some(dir) = &self.dir else { return Ok(None) };
        let path = dir.join(file_name(n));
        let f = match fs::File::open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => return Err(RevisionError::Io { path, source }),
        };
        let mut bytes = Vec::new();
        f.take(MAX_REVISION_TEXT + 1)
            .read_to_end(&mut bytes)
            .map_err(|source| RevisionError::Io { path: path.clone(), source })?;
        if bytes.len() as u64 > MAX_REVISION_TEXT {
            return Err(RevisionError::Corrupt { path, message: format!("larger than {MAX_REVISION_TEXT} bytes") });
        }
        String::from_utf8(bytes).map(Some).map_err(|_| RevisionError::Corrupt { path, message: "not UTF-8".into() })
    }

    /// Writes revision `n` durably (fsynced); returns its sha256 (of the file bytes).
    pub fn write(&self, n: u64, network: &Network, why: &str) -> Result<String, RevisionError> {
        self.write_as(n, network, why, true)
    }

    /// Writes the first revision: the policy the sandbox was created with,
    /// already durable in its record, so no fsync on the start-up path.
    pub fn write_initial(&self, network: &Network) -> Result<String, RevisionError> {
        self.write_as(1, network, "the policy the sandbox was created with", false)
    }

    fn write_as(&self, n: u64, network: &Network, why: &str, durable: bool) -> Result<String, RevisionError> {
        let body = toml::to_string(&RevisionFile { network: network.clone() })
            .map_err(|e| RevisionError::Corrupt { path: PathBuf::from(file_name(n)), message: e.to_string() })?;
        // A TOML comment may hold no control character: `why` can carry a
        // binary's path, which the sandbox chose.
        let text = format!("# moat network policy revision {n}: {}\n{body}", crate::visible::field(why));
        let hash = hex::encode(Sha256::digest(text.as_bytes()));
        if let Some(dir) = &self.dir {
            let io = |source| RevisionError::Io { path: dir.clone(), source };
            use std::os::unix::fs::DirBuilderExt;
            fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io)?;
            let write = if durable { moat_builder::fsio::write } else { moat_builder::fsio::replace };
            let path = dir.join(file_name(n));
            write(&path, text.as_bytes(), 0o600).map_err(|source| RevisionError::Io { path, source })?;
        }
        Ok(hash)
    }
}

/// The most of a revision file [`RevisionStore::read`] returns.
pub const MAX_REVISION_TEXT: u64 = 4 << 20;

fn file_name(n: u64) -> String {
    format!("{n:06}.toml")
}

/// A refused destination waiting for an operator.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub id: String,
    pub binary: String,
    pub hash: String,
    /// The processes that started it, nearest first (inside the sandbox).
    #[serde(default)]
    pub ancestors: Vec<Ancestor>,
    pub host: String,
    pub port: u16,
    pub first_seen: String,
    pub last_seen: String,
    pub count: u64,
    /// What the agent said when it asked through `moat.local` (its own
    /// words, unverified); absent for a plain refusal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_request: Option<AgentRequest>,
}

/// An agent's request for a destination (`moat.local/v1/requests`): the
/// agent's reason, and the method and path it says it will use. Shown to
/// the operator as the agent's claim; the approval is for host and port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentRequest {
    pub reason: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// What became of an approval id (`GET moat.local/v1/requests/ID`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Pending,
    Approved,
    Denied,
    /// Evicted from a full list: the agent may ask again.
    Dropped,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Pending => "pending",
            Outcome::Approved => "approved",
            Outcome::Denied => "denied",
            Outcome::Dropped => "dropped",
        }
    }
}

/// One process of the chain that started a refused binary.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ancestor {
    pub binary: String,
    pub hash: String,
}

/// Bounded, deduplicated pending approvals (oldest dropped when full). A
/// flood of refusals can evict real entries: each eviction is counted, so
/// the operator is told how many were dropped (`moat approvals`).
#[derive(Debug, Default)]
pub struct Approvals {
    pending: Vec<Pending>,
    dropped: u64,
    /// The latest decided ids, newest last (bounded by `MAX_OUTCOMES`).
    outcomes: VecDeque<(String, Outcome)>,
}

pub const MAX_PENDING: usize = 64;
/// Decided ids remembered for agents polling them.
pub const MAX_OUTCOMES: usize = 256;

impl Approvals {
    /// Records a refusal; returns the approval id (the same for a repeat of
    /// the same binary, with the same hash, to the same destination).
    /// Records a refused destination; returns its id and whether it is new
    /// (not a repeat of a pending one).
    pub fn request(
        &mut self,
        binary: &str,
        hash: &str,
        ancestors: &[Ancestor],
        host: &str,
        port: u16,
    ) -> (String, bool) {
        let now = super::events::now_rfc3339();
        let host = host.to_ascii_lowercase();
        let same = |p: &&mut Pending| p.binary == binary && p.hash == hash && p.host == host && p.port == port;
        if let Some(p) = self.pending.iter_mut().find(same) {
            p.count += 1;
            p.last_seen = now;
            return (p.id.clone(), false);
        }
        self.make_room();
        let digest = Sha256::digest(format!("{binary}\0{hash}\0{host}\0{port}").as_bytes());
        let id = hex::encode(&digest[..4]);
        self.pending.push(Pending {
            id: id.clone(),
            binary: binary.into(),
            hash: hash.into(),
            ancestors: ancestors.to_vec(),
            host,
            port,
            first_seen: now.clone(),
            last_seen: now,
            count: 1,
            agent_request: None,
        });
        (id, true)
    }

    pub fn list(&self) -> Vec<Pending> {
        self.pending.clone()
    }

    /// How many entries were evicted to make room since the sandbox started.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    /// Evicts the oldest entry when full, counting it (logged at the first
    /// eviction and at every power of two, not once per eviction of a flood).
    fn make_room(&mut self) {
        if self.pending.len() < MAX_PENDING {
            return;
        }
        let old = self.pending.remove(0);
        self.dropped += 1;
        self.record(&old.id, Outcome::Dropped);
        if self.dropped.is_power_of_two() {
            tracing::warn!(
                event = "approval_dropped",
                dropped = self.dropped,
                host = %crate::visible::field(&old.host),
                port = old.port,
                "pending approvals full: the oldest were dropped"
            );
        }
    }

    /// Attaches an agent's request to a pending entry (the latest wins).
    pub fn set_agent_request(&mut self, id: &str, asked: AgentRequest) {
        if let Some(p) = self.pending.iter_mut().find(|p| p.id == id) {
            p.agent_request = Some(asked);
        }
    }

    /// Remembers what became of `id` (bounded: the oldest are forgotten).
    pub fn record(&mut self, id: &str, outcome: Outcome) {
        self.outcomes.retain(|(i, _)| i != id);
        if self.outcomes.len() >= MAX_OUTCOMES {
            self.outcomes.pop_front();
        }
        self.outcomes.push_back((id.to_string(), outcome));
    }

    /// The state of `id`: pending, else its latest recorded outcome.
    pub fn status(&self, id: &str) -> Option<Outcome> {
        if self.pending.iter().any(|p| p.id == id) {
            return Some(Outcome::Pending);
        }
        self.outcomes.iter().rev().find(|(i, _)| i == id).map(|(_, o)| *o)
    }

    /// Puts back an entry taken for an approval that failed.
    pub fn restore(&mut self, p: Pending) {
        self.make_room();
        self.pending.push(p);
    }

    /// Removes and returns a pending entry.
    pub fn take(&mut self, id: &str) -> Result<Pending, RevisionError> {
        let i =
            self.pending.iter().position(|p| p.id == id).ok_or_else(|| RevisionError::UnknownApproval(id.into()))?;
        Ok(self.pending.remove(i))
    }
}

/// The policy entry an approval adds: exactly this binary (its path, glob
/// characters escaped, and its sha256) to exactly this host and port,
/// relayed at L4.
pub fn approval_policy(p: &Pending) -> NetPolicy {
    NetPolicy {
        name: format!("approved-{}", p.id),
        why: format!(
            "approved by the operator at {} for the binary with sha256 {}",
            super::events::now_rfc3339(),
            p.hash
        ),
        binaries: vec![glob_literal(&p.binary)],
        sha256: vec![p.hash.clone()],
        children: false,
        jit: true,
        endpoints: vec![Endpoint::l4(p.host.clone(), p.port)],
    }
}

/// Gives an approval rule the inspection of the first inspected endpoint
/// of `policies` that covers its destination (host pattern and port):
/// approving a refused binary for a host the policy inspects must not open
/// that host at L4 for it. Returns the name of the policy it came from.
pub fn inherit_inspection(rule: &mut NetPolicy, policies: &[NetPolicy]) -> Option<String> {
    let ep = rule.endpoints.first_mut()?;
    let (name, from) = policies.iter().find_map(|p| {
        p.endpoints
            .iter()
            .find(|e| e.port == ep.port && e.inspected() && crate::policy::matcher::host_matches(&e.host, &ep.host))
            .map(|e| (p.name.clone(), e))
    })?;
    ep.protocol = from.protocol;
    ep.tls = from.tls;
    ep.access = from.access;
    ep.rules = from.rules.clone();
    ep.enforcement = from.enforcement;
    ep.upgrade = from.upgrade;
    ep.upstream_ca = from.upstream_ca.clone();
    // The addresses the covering rule opts in, unless the operator named some.
    if ep.allowed_ips.is_empty() {
        ep.allowed_ips = from.allowed_ips.clone();
    }
    Some(name)
}

/// A glob matching exactly `path`: globset's escape brackets `*?[]{}` but
/// leaves `\\`, an escape character in globs, so it is doubled too.
pub fn glob_literal(path: &str) -> String {
    globset::escape(path).replace('\\', "\\\\")
}

/// Where a sandbox keeps its revisions.
pub fn revisions_dir(home: &Path) -> PathBuf {
    home.join("network")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revisions_round_trip_and_latest_wins() {
        let dir = tempfile::tempdir().unwrap();
        let s = RevisionStore::at(dir.path().join("network"));
        assert!(s.latest().unwrap().is_none());
        let mut n = crate::Policy::baseline().network;
        let h1 = s.write(1, &n, "start").unwrap();
        n.presets.push("github".into());
        let h2 = s.write(2, &n, "add preset").unwrap();
        assert_ne!(h1, h2);
        let (num, back, hash) = s.latest().unwrap().unwrap();
        assert_eq!(num, 2);
        assert_eq!(hash, h2);
        assert_eq!(back, n);
    }

    #[test]
    fn approvals_dedupe_and_stay_bounded() {
        let h = "a".repeat(64);
        let mut a = Approvals::default();
        let (id, new) = a.request("/usr/bin/curl", &h, &[], "Example.com", 443);
        assert!(new);
        assert_eq!(a.request("/usr/bin/curl", &h, &[], "example.com", 443), (id.clone(), false), "a repeat is not new");
        assert_eq!(a.list().len(), 1);
        assert_eq!(a.list()[0].count, 2);
        assert_ne!(a.request("/usr/bin/curl", &"b".repeat(64), &[], "example.com", 443).0, id, "another hash");
        for i in 0..200 {
            a.request("/usr/bin/curl", &h, &[], &format!("h{i}.example"), 443);
        }
        assert_eq!(a.list().len(), MAX_PENDING);
        assert_eq!(a.dropped(), 202 - MAX_PENDING as u64, "every eviction is counted");
        assert!(a.take("nope").is_err());
        let p = a.take(&a.list()[0].id.clone()).unwrap();
        let pol = approval_policy(&p);
        pol.validate().unwrap();
    }

    #[test]
    fn outcomes_are_remembered_and_bounded() {
        let h = "a".repeat(64);
        let mut a = Approvals::default();
        let (id, _) = a.request("/usr/bin/curl", &h, &[], "x.test", 443);
        a.set_agent_request(&id, AgentRequest { reason: "r".into(), method: None, path: None });
        assert_eq!(a.list()[0].agent_request.as_ref().map(|r| r.reason.as_str()), Some("r"));
        assert_eq!(a.status(&id), Some(Outcome::Pending));
        a.take(&id).unwrap();
        a.record(&id, Outcome::Approved);
        assert_eq!(a.status(&id), Some(Outcome::Approved));
        for i in 0..(MAX_PENDING + MAX_OUTCOMES + 10) {
            a.request("/usr/bin/curl", &h, &[], &format!("h{i}.test"), 443);
        }
        assert_eq!(a.outcomes.len(), MAX_OUTCOMES, "decided ids are bounded");
        assert_eq!(a.status(&id), None, "the oldest are forgotten");
        assert_eq!(a.status(&a.outcomes[0].0.clone()), Some(Outcome::Dropped));
    }

    #[test]
    fn an_approval_pins_the_binary_and_its_exact_path() {
        use crate::policy::matcher::{Compiled, Match};
        let (h, other) = ("c".repeat(64), "d".repeat(64));
        let mut a = Approvals::default();
        let chain = [Ancestor { binary: "/usr/bin/dash".into(), hash: "e".repeat(64) }];
        let path = "/tmp/\x08\x08/a\\*b/[x]/git";
        let (id, _) = a.request(path, &h, &chain, "up.test", 443);
        let p = a.take(&id).unwrap();
        assert_eq!(p.ancestors, chain);
        let c = Compiled::new(vec![approval_policy(&p)]).unwrap();
        let allowed = |bin: &str, hash: Option<&str>| {
            matches!(c.match_destination_pinned(bin, hash, "up.test", 443), Match::Allowed { .. })
        };
        assert!(allowed(path, Some(&h)));
        assert!(!allowed(path, Some(&other)), "another program at the same path");
        assert!(!allowed(path, None), "a binary whose hash is unknown");
        assert!(!allowed("/tmp/\x08\x08/a\\zzb/[x]/git", Some(&h)), "the path is literal, never a glob");
        assert!(!allowed("/tmp/\x08\x08/a\\*b/x/git", Some(&h)));
    }

    #[test]
    fn a_why_with_control_characters_still_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let s = RevisionStore::at(dir.path().join("network"));
        let n = crate::Policy::baseline().network;
        s.write(2, &n, "approved /tmp/\x08\x08\r\u{1b}[2K/usr/bin/git -> up.test:443").unwrap();
        let (num, back, _) = s.latest().unwrap().unwrap();
        assert_eq!((num, back), (2, n));
    }
}
