//! The gateway's audit log: one JSON line per decision (time, binary, hash,
//! pid, host, port, method, path, decision, rule, reason) appended to the
//! sandbox's `audit.log` (0600) and mirrored as a structured tracing event.
//! Guards against silent egress: every relayed, audited or refused request
//! leaves a record an operator can follow (`moat events -f`). Query strings
//! are never recorded (they carry tokens).
#![forbid(unsafe_code)]
use crate::secrets::redact::redact;
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Relayed under a rule.
    Allow,
    /// Relayed although the rules refuse it: the endpoint is in audit mode.
    Audit,
    /// Refused.
    Deny,
    /// An open tunnel closed because a new policy revision no longer allows it.
    Revoke,
}

/// One audit record; the field set is fixed (consumers parse it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub time: String,
    pub binary: String,
    pub hash: String,
    pub pid: i32,
    pub host: String,
    pub port: u16,
    pub method: String,
    pub path: String,
    pub decision: Decision,
    pub rule: String,
    pub reason: String,
}

impl Event {
    /// An event stamped now; `path` loses its query and fragment.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        caller: Option<&super::identity::Proc>,
        host: &str,
        port: u16,
        method: &str,
        path: &str,
        decision: Decision,
        rule: &str,
        reason: &str,
    ) -> Event {
        Event {
            time: now_rfc3339(),
            binary: caller.map(|c| c.exe.clone()).unwrap_or_default(),
            hash: caller.map(|c| c.sha256.clone()).unwrap_or_default(),
            pid: caller.map(|c| c.pid).unwrap_or(0),
            host: redact(host).into_owned(),
            port,
            method: method.to_string(),
            path: redact(path.split(['?', '#']).next().unwrap_or("")).into_owned(),
            decision,
            rule: rule.to_string(),
            reason: redact(reason).into_owned(),
        }
    }
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

/// The append-only audit log of one sandbox.
#[derive(Debug)]
pub struct EventLog {
    file: Mutex<Option<File>>,
}

impl EventLog {
    /// Opens (creates 0600) the log at `path`.
    pub fn open(path: &Path) -> std::io::Result<EventLog> {
        let f = OpenOptions::new().create(true).append(true).mode(0o600).open(path)?;
        Ok(EventLog { file: Mutex::new(Some(f)) })
    }

    /// A log that only emits tracing events (tests, `--rm` runs without state).
    pub fn discard() -> EventLog {
        EventLog { file: Mutex::new(None) }
    }

    pub fn record(&self, e: &Event) {
        tracing::info!(
            event = "egress_decision",
            decision = ?e.decision,
            binary = %e.binary,
            hash = %e.hash,
            pid = e.pid,
            host = %e.host,
            port = e.port,
            method = %e.method,
            path = %e.path,
            rule = %e.rule,
            reason = %e.reason,
        );
        let Ok(json) = serde_json::to_string(e) else { return };
        let mut line = redact(&json).into_owned().into_bytes();
        line.push(b'\n');
        if let Some(f) = self.file.lock().unwrap_or_else(|p| p.into_inner()).as_mut() {
            // One write per line with O_APPEND: readers never see half a record.
            if let Err(err) = f.write_all(&line) {
                tracing::error!(event = "audit_log_write_failed", error = %moat_builder::errors::chain(&err), "audit log write failed");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_are_json_with_fixed_fields_and_no_query() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.log");
        let log = EventLog::open(&p).unwrap();
        let e = Event::new(None, "h", 443, "GET", "/x?token=secret", Decision::Deny, "", "unlisted");
        log.record(&e);
        log.record(&e);
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.lines().count(), 2);
        let back: Event = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(back.path, "/x");
        assert!(!text.contains("secret"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
    }
}
