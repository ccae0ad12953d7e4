//! The console's state: what the feeds reported (sandboxes, policies,
//! pending approvals, egress records) and what the operator is looking at
//! (tab, selection, filters). Pure data, no terminal and no sockets, so it
//! is tested alone. Guards the operator's view against a flood: the egress
//! list keeps the newest [`MAX_EVENTS`] and counts what it let go, and a
//! feed's lag is shown, never hidden.
#![forbid(unsafe_code)]
use moat_supervisor::gateway::events::{Decision, Event};
use moat_supervisor::gateway::revisions::Pending;
use std::collections::{BTreeMap, VecDeque};

/// Egress records kept for display (the audit log keeps them all).
pub const MAX_EVENTS: usize = 5000;

/// One row of the sandbox table.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SandboxRow {
    pub name: String,
    pub image: String,
    pub state: String,
    pub uptime_secs: Option<u64>,
    /// Per cent of one CPU over the last sampling interval.
    pub cpu_percent: Option<f64>,
    pub memory_bytes: Option<u64>,
    pub published: Vec<String>,
}

/// A sandbox's policy revision in force, and the one before it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyView {
    pub revision: u64,
    pub sha256: String,
    pub text: String,
    pub previous: Option<String>,
    /// Names the supervisor's record numbering (a new one restarts it).
    pub feed: Option<u64>,
}

/// What a feed reports.
#[derive(Debug, Clone)]
pub enum Update {
    Sandboxes(Vec<SandboxRow>),
    Policy {
        sandbox: String,
        policy: PolicyView,
    },
    Approvals {
        sandbox: String,
        pending: Vec<Pending>,
        dropped: u64,
    },
    /// `seq`: the record's number in its supervisor's feed.
    Event {
        sandbox: String,
        seq: Option<u64>,
        event: Box<Event>,
    },
    /// A feed line this console could not read.
    Unreadable {
        sandbox: String,
        why: String,
    },
    /// The supervisor's feed dropped this many records for this console.
    Lagged {
        sandbox: String,
        missed: u64,
    },
    /// The watch connection ended (the sandbox stopped, or it failed).
    Disconnected {
        sandbox: String,
        why: String,
    },
    /// An operator action finished: what to show on the status line.
    Done(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tab {
    Sandboxes,
    Egress,
    Approvals,
    Policy,
}

impl Tab {
    pub const ALL: [Tab; 4] = [Tab::Sandboxes, Tab::Egress, Tab::Approvals, Tab::Policy];
    pub fn title(self) -> &'static str {
        match self {
            Tab::Sandboxes => "Sandboxes",
            Tab::Egress => "Egress",
            Tab::Approvals => "Approvals",
            Tab::Policy => "Policy",
        }
    }
}

/// The egress filter: a decision, and substrings of binary and host.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    pub decision: Option<Decision>,
    pub binary: String,
    pub host: String,
}

impl Filter {
    pub fn admits(&self, e: &Event) -> bool {
        self.decision.is_none_or(|d| d == e.decision)
            && (self.binary.is_empty() || e.binary.contains(&self.binary))
            && (self.host.is_empty() || e.host.contains(&self.host))
    }

    /// The next decision in the cycle all, deny, allow, audit, revoke.
    pub fn next_decision(&mut self) {
        self.decision = match self.decision {
            None => Some(Decision::Deny),
            Some(Decision::Deny) => Some(Decision::Allow),
            Some(Decision::Allow) => Some(Decision::Audit),
            Some(Decision::Audit) => Some(Decision::Revoke),
            Some(Decision::Revoke) => None,
        };
    }
}

/// One pending approval with the sandbox it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApprovalRow<'a> {
    pub sandbox: &'a str,
    pub pending: &'a Pending,
}

#[derive(Debug, Default)]
pub struct Model {
    pub sandboxes: Vec<SandboxRow>,
    pub policies: BTreeMap<String, PolicyView>,
    /// Per sandbox: its pending list and how many it dropped.
    pub approvals: BTreeMap<String, (Vec<Pending>, u64)>,
    /// (sandbox, record), oldest first.
    pub events: VecDeque<(String, Event)>,
    /// Records the supervisors' feeds dropped for this console (it fell behind).
    pub lagged: u64,
    /// Records let go past [`MAX_EVENTS`] (the audit log still has them).
    pub trimmed: u64,
    /// Feeds that are not connected, with why.
    pub disconnected: BTreeMap<String, String>,
    pub status: String,
    /// Feed lines that could not be read (the last reason is the status).
    pub unreadable: u64,
    /// Approval ids seen so far: a new one is announced on the status line.
    seen_approvals: std::collections::BTreeSet<String>,
    /// Per sandbox: its feed's name and the last record number taken, so
    /// the records replayed at a reconnect are not shown twice.
    cursors: BTreeMap<String, (Option<u64>, u64)>,
}

impl Model {
    /// Applies one feed report.
    pub fn apply(&mut self, u: Update) {
        match u {
            Update::Sandboxes(rows) => self.sandboxes = rows,
            Update::Policy { sandbox, policy } => {
                self.disconnected.remove(&sandbox);
                let cursor = self.cursors.entry(sandbox.clone()).or_insert((policy.feed, 0));
                if cursor.0 != policy.feed {
                    *cursor = (policy.feed, 0);
                }
                self.policies.insert(sandbox, policy);
            }
            Update::Approvals { sandbox, pending, dropped } => {
                for p in &pending {
                    if self.seen_approvals.insert(format!("{sandbox}/{}", p.id)) {
                        self.status = format!(
                            "new approval {}: {} -> {}:{} in {sandbox} (Approvals tab: 3)",
                            p.id,
                            short_binary(&p.binary),
                            p.host,
                            p.port
                        );
                    }
                }
                self.approvals.insert(sandbox, (pending, dropped));
            }
            Update::Event { sandbox, seq, event } => {
                if let (Some(seq), Some(cursor)) = (seq, self.cursors.get_mut(&sandbox)) {
                    if seq <= cursor.1 {
                        return; // shown already, before a reconnect
                    }
                    cursor.1 = seq;
                }
                if self.events.len() == MAX_EVENTS {
                    self.events.pop_front();
                    self.trimmed += 1;
                }
                self.events.push_back((sandbox, *event));
            }
            Update::Lagged { missed, .. } => self.lagged += missed,
            Update::Unreadable { sandbox, why } => {
                self.unreadable += 1;
                self.status = format!("{sandbox}: {why}");
            }
            Update::Disconnected { sandbox, why } => {
                self.approvals.remove(&sandbox);
                self.disconnected.insert(sandbox, why);
            }
            Update::Done(msg) => self.status = msg,
        }
    }

    /// Every pending approval, by sandbox then first seen.
    pub fn approval_rows(&self) -> Vec<ApprovalRow<'_>> {
        self.approvals
            .iter()
            .flat_map(|(s, (list, _))| list.iter().map(move |p| ApprovalRow { sandbox: s, pending: p }))
            .collect()
    }

    pub fn approvals_dropped(&self) -> u64 {
        self.approvals.values().map(|(_, d)| d).sum()
    }

    /// The records the filter admits, newest last.
    pub fn filtered<'a>(&'a self, f: &'a Filter) -> impl DoubleEndedIterator<Item = &'a (String, Event)> + 'a {
        self.events.iter().filter(move |(_, e)| f.admits(e))
    }

    /// The method and path of refused requests of this binary to this
    /// destination, as recorded (newest first, distinct): what a request
    /// scope can allow "as seen".
    pub fn seen_requests(&self, sandbox: &str, p: &Pending) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        for (s, e) in self.events.iter().rev() {
            let same = s == sandbox && e.binary == p.binary && e.host == p.host && e.port == p.port;
            if !same || e.method.is_empty() || e.method == "CONNECT" || !e.path.starts_with('/') {
                continue;
            }
            let r = (e.method.clone(), e.path.clone());
            if !out.contains(&r) {
                out.push(r);
            }
            if out.len() == 8 {
                break;
            }
        }
        if let Some(asked) = &p.agent_request {
            if let (Some(m), Some(path)) = (&asked.method, &asked.path) {
                let r = (m.clone(), path.clone());
                if !out.contains(&r) && path.starts_with('/') {
                    out.push(r);
                }
            }
        }
        out
    }

    /// The names of sandboxes with a policy, in order.
    pub fn policy_names(&self) -> Vec<&str> {
        self.policies.keys().map(String::as_str).collect()
    }
}

/// A binary's file name (the table is narrow; the details pane shows all).
pub fn short_binary(path: &str) -> &str {
    path.rsplit('/').next().filter(|s| !s.is_empty()).unwrap_or(path)
}

/// A line of the policy diff: `-` removed, `+` added, ` ` kept.
pub fn policy_diff(previous: &str, current: &str) -> Vec<(char, String)> {
    use similar::{ChangeTag, TextDiff};
    TextDiff::from_lines(previous, current)
        .iter_all_changes()
        .map(|c| {
            let tag = match c.tag() {
                ChangeTag::Delete => '-',
                ChangeTag::Insert => '+',
                ChangeTag::Equal => ' ',
            };
            (tag, c.value().trim_end_matches('\n').to_string())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(decision: Decision, binary: &str, host: &str, method: &str, path: &str) -> Event {
        let mut e = Event::new(None, host, 80, method, path, decision, "", "");
        e.binary = binary.into();
        e
    }

    fn pending(id: &str, binary: &str, host: &str) -> Pending {
        Pending {
            id: id.into(),
            binary: binary.into(),
            hash: "00".into(),
            ancestors: Vec::new(),
            host: host.into(),
            port: 80,
            first_seen: String::new(),
            last_seen: String::new(),
            count: 1,
            agent_request: None,
        }
    }

    #[test]
    fn the_egress_list_is_bounded_and_counts_what_it_let_go() {
        let mut m = Model::default();
        for i in 0..MAX_EVENTS + 3 {
            let e = event(Decision::Allow, "/usr/bin/curl", &format!("h{i}"), "GET", "/");
            m.apply(Update::Event { sandbox: "a".into(), seq: None, event: Box::new(e) });
        }
        assert_eq!((m.events.len(), m.trimmed), (MAX_EVENTS, 3));
        assert_eq!(m.events.front().map(|(_, e)| e.host.as_str()), Some("h3"));
        m.apply(Update::Lagged { sandbox: "a".into(), missed: 7 });
        assert_eq!(m.lagged, 7);
    }

    #[test]
    fn filters_by_decision_binary_and_host() {
        let mut m = Model::default();
        for (d, b, h) in [
            (Decision::Deny, "/usr/bin/curl", "a.test"),
            (Decision::Allow, "/usr/bin/curl", "b.test"),
            (Decision::Deny, "/usr/bin/python3", "b.test"),
        ] {
            m.apply(Update::Event { sandbox: "s".into(), seq: None, event: Box::new(event(d, b, h, "GET", "/")) });
        }
        let mut f = Filter::default();
        assert_eq!(m.filtered(&f).count(), 3);
        f.next_decision();
        assert_eq!(f.decision, Some(Decision::Deny));
        assert_eq!(m.filtered(&f).count(), 2);
        f.host = "b.".into();
        let got: Vec<_> = m.filtered(&f).map(|(_, e)| e.binary.as_str()).collect();
        assert_eq!(got, ["/usr/bin/python3"]);
        f.binary = "curl".into();
        assert_eq!(m.filtered(&f).count(), 0);
    }

    #[test]
    fn a_new_approval_is_announced_once() {
        let mut m = Model::default();
        let list = vec![pending("ab12", "/usr/bin/curl", "other.test")];
        m.apply(Update::Approvals { sandbox: "s".into(), pending: list.clone(), dropped: 0 });
        assert!(m.status.contains("ab12") && m.status.contains("curl -> other.test:80"), "{}", m.status);
        m.status.clear();
        m.apply(Update::Approvals { sandbox: "s".into(), pending: list, dropped: 2 });
        assert_eq!(m.status, "");
        assert_eq!((m.approval_rows().len(), m.approvals_dropped()), (1, 2));
        m.apply(Update::Disconnected { sandbox: "s".into(), why: "stopped".into() });
        assert!(m.approval_rows().is_empty(), "a gone supervisor's list is not shown as pending");
    }

    #[test]
    fn requests_as_seen_come_from_the_refusals_of_that_binary_and_host() {
        let mut m = Model::default();
        let p = pending("ab12", "/usr/bin/curl", "other.test");
        for (b, h, meth, path) in [
            ("/usr/bin/curl", "other.test", "GET", "/a"),
            ("/usr/bin/curl", "other.test", "GET", "/a"),
            ("/usr/bin/curl", "other.test", "CONNECT", ""),
            ("/usr/bin/python3", "other.test", "POST", "/b"),
            ("/usr/bin/curl", "else.test", "POST", "/c"),
            ("/usr/bin/curl", "other.test", "POST", "/d"),
        ] {
            m.apply(Update::Event {
                sandbox: "s".into(),
                seq: None,
                event: Box::new(event(Decision::Deny, b, h, meth, path)),
            });
        }
        let seen = m.seen_requests("s", &p);
        assert_eq!(seen, [("POST".to_string(), "/d".to_string()), ("GET".into(), "/a".into())]);
        assert!(m.seen_requests("t", &p).is_empty());
    }

    #[test]
    fn records_replayed_at_a_reconnect_are_shown_once_and_a_new_supervisor_starts_over() {
        let mut m = Model::default();
        let policy =
            |feed| PolicyView { revision: 1, sha256: String::new(), text: String::new(), previous: None, feed };
        let rec = |seq: u64| Update::Event {
            sandbox: "s".into(),
            seq: Some(seq),
            event: Box::new(event(Decision::Allow, "/usr/bin/curl", &format!("h{seq}"), "GET", "/")),
        };
        m.apply(Update::Policy { sandbox: "s".into(), policy: policy(Some(7)) });
        for seq in [1, 2, 3] {
            m.apply(rec(seq));
        }
        m.apply(Update::Disconnected { sandbox: "s".into(), why: "x".into() });
        m.apply(Update::Policy { sandbox: "s".into(), policy: policy(Some(7)) });
        for seq in [2, 3, 4] {
            m.apply(rec(seq));
        }
        let hosts: Vec<_> = m.events.iter().map(|(_, e)| e.host.as_str()).collect();
        assert_eq!(hosts, ["h1", "h2", "h3", "h4"]);
        m.apply(Update::Policy { sandbox: "s".into(), policy: policy(Some(8)) });
        m.apply(rec(1));
        assert_eq!(m.events.len(), 5, "a restarted supervisor numbers from 1 again");
    }

    #[test]
    fn the_policy_diff_marks_lines() {
        let d = policy_diff("a\nb\n", "a\nc\n");
        assert_eq!(d, [(' ', "a".to_string()), ('-', "b".into()), ('+', "c".into())]);
    }
}
