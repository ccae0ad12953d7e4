//! The gateway's audit log: one JSON line per decision (time, binary, hash,
//! pid, host, port, method, path, decision, rule, reason, count) appended to
//! the sandbox's `audit.log` (0600) and mirrored as a structured tracing
//! event. Guards against silent egress: every relayed, audited or refused
//! request leaves a record an operator can follow (`moat events -f`). Query
//! strings are never recorded (they carry tokens). Guards the host's disk
//! against a sandbox that floods refusals: repeats of one refusal within a
//! window are folded into one event with a count, at most
//! `max_distinct` refusals a window are written one by one (the rest are
//! counted together), every field is bounded, and the file rotates to
//! `audit.log.1` at `max_file` bytes.
#![forbid(unsafe_code)]
use crate::secrets::redact::redact;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
    /// How many decisions this record stands for: 1, or the repeats of a
    /// refusal folded into it (the record shows the last of them). Records
    /// written before counting existed have none: 1.
    #[serde(default = "one")]
    pub count: u64,
}

fn one() -> u64 {
    1
}

/// The longest a text field is recorded (bytes; longer ones are cut and
/// marked): a sandbox chooses paths, hosts and reasons.
pub const MAX_FIELD: usize = 512;

/// `s` cut to at most `max` bytes at a character boundary, marked when cut.
fn bounded(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...[{} bytes cut]", &s[..end], s.len() - end)
}

impl Event {
    /// An event stamped now; `path` loses its query and fragment; every
    /// text field is bounded by [`MAX_FIELD`] (the binary's path by 4 KiB).
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
            binary: bounded(&caller.map(|c| c.exe.clone()).unwrap_or_default(), 4096),
            hash: caller.map(|c| c.sha256.clone()).unwrap_or_default(),
            pid: caller.map(|c| c.pid).unwrap_or(0),
            host: bounded(&redact(host), MAX_FIELD),
            port,
            method: bounded(method, 64),
            path: bounded(&redact(path.split(['?', '#']).next().unwrap_or("")), MAX_FIELD),
            decision,
            rule: bounded(rule, MAX_FIELD),
            reason: bounded(&redact(reason), MAX_FIELD),
            count: 1,
        }
    }
}

pub fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

/// The bounds of one sandbox's audit log.
#[derive(Debug, Clone, Copy)]
pub struct AuditLimits {
    /// Repeats of one refusal within this long are folded into one event.
    pub window: Duration,
    /// Distinct refusals written one by one in a window; beyond them the
    /// window's refusals are counted in one event.
    pub max_distinct: usize,
    /// `audit.log` becomes `audit.log.1` (replacing it) at this size.
    pub max_file: u64,
}

impl Default for AuditLimits {
    /// At most ~20 records a second from refusals, 16 MiB on disk.
    fn default() -> AuditLimits {
        AuditLimits { window: Duration::from_secs(5), max_distinct: 50, max_file: 8 << 20 }
    }
}

/// What makes two refusals "the same": everything but time, pid and path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    binary: String,
    hash: String,
    host: String,
    port: u16,
    method: String,
    rule: String,
    reason: String,
}

impl Key {
    fn of(e: &Event) -> Key {
        Key {
            binary: e.binary.clone(),
            hash: e.hash.clone(),
            host: e.host.clone(),
            port: e.port,
            method: e.method.clone(),
            rule: e.rule.clone(),
            reason: e.reason.clone(),
        }
    }
}

/// The audit file, rotated at a size.
#[derive(Debug)]
struct Rotating {
    path: PathBuf,
    file: File,
    size: u64,
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).mode(0o600).open(path)
}

/// `audit.log` -> `audit.log.1`.
pub fn rotated_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".1");
    PathBuf::from(s)
}

impl Rotating {
    fn write(&mut self, line: &[u8], max_file: u64) -> std::io::Result<()> {
        if self.size > 0 && self.size + line.len() as u64 > max_file {
            std::fs::rename(&self.path, rotated_path(&self.path))?;
            self.file = open_append(&self.path)?;
            self.size = 0;
        }
        // One write per line with O_APPEND: readers never see half a record.
        self.file.write_all(line)?;
        self.size += line.len() as u64;
        Ok(())
    }
}

/// Refusals of the current window.
#[derive(Debug)]
struct Inner {
    file: Option<Rotating>,
    limits: AuditLimits,
    window_start: Instant,
    /// Refusals written in this window, with the repeats since (and the last of them).
    folded: HashMap<Key, (u64, Event)>,
    /// Refusals beyond `max_distinct`: how many, and one event whose fields
    /// are those all of them share (`*` / 0 where they differ).
    overflow: Option<(u64, Event)>,
    /// Distinct destinations among the overflow (counted up to a bound).
    overflow_hosts: std::collections::HashSet<String>,
    /// Each written record, as its JSON line (no newline), for the
    /// operator's console (`moat term`): sent only while one watches, and
    /// never waited on (a watcher that falls behind loses the oldest and is
    /// told how many).
    feed: tokio::sync::broadcast::Sender<Fed>,
    /// The newest records (at most [`RECENT`]): what a console that
    /// starts watching is shown first.
    recent: std::collections::VecDeque<Fed>,
    /// The number of the last record written (1, 2, ...): a console that
    /// reconnects tells the records it has from those it has not.
    seq: u64,
}

/// A record as the feed carries it: its number and its JSON line.
pub type Fed = (u64, Arc<str>);

impl Inner {
    fn write(&mut self, e: &Event) {
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
            count = e.count,
        );
        let Ok(json) = serde_json::to_string(e) else { return };
        let json = redact(&json);
        self.seq += 1;
        let shared: Fed = (self.seq, Arc::from(&*json));
        if self.recent.len() == RECENT {
            self.recent.pop_front();
        }
        self.recent.push_back(shared.clone());
        if self.feed.receiver_count() > 0 {
            // Err only when the last watcher left in between: nothing to tell.
            let _ = self.feed.send(shared);
        }
        let mut line = json.into_owned().into_bytes();
        line.push(b'\n');
        let max = self.limits.max_file;
        if let Some(f) = self.file.as_mut() {
            if let Err(err) = f.write(&line, max) {
                tracing::error!(event = "audit_log_write_failed", error = %moat_builder::errors::chain(&err), "audit log write failed");
            }
        }
    }

    /// Writes the window's folded repeats and overflow; starts a new window
    /// if this one is over (or `all`).
    fn close_window(&mut self, now: Instant, all: bool) {
        if !all && now.duration_since(self.window_start) < self.limits.window {
            return;
        }
        let folded = std::mem::take(&mut self.folded);
        let mut repeats: Vec<Event> = folded
            .into_values()
            .filter(|(n, _)| *n > 0)
            .map(|(n, mut e)| {
                e.count = n;
                e
            })
            .collect();
        repeats.sort_by(|a, b| a.time.cmp(&b.time));
        for e in &repeats {
            self.write(e);
        }
        if let Some((n, mut e)) = self.overflow.take() {
            let hosts = self.overflow_hosts.len();
            e.count = n;
            e.reason = format!(
                "{n} refusals to {hosts}{} destinations beyond the {} recorded one by one in {} s (rate limit); \
                 fields they do not share are shown as * or 0",
                if hosts >= OVERFLOW_HOSTS { "+" } else { "" },
                self.limits.max_distinct,
                self.limits.window.as_secs_f64()
            );
            self.write(&e);
        }
        self.overflow_hosts.clear();
        self.window_start = now;
    }

    fn refuse(&mut self, e: &Event, now: Instant) {
        self.close_window(now, false);
        let key = Key::of(e);
        if let Some((n, last)) = self.folded.get_mut(&key) {
            *n += 1;
            *last = e.clone();
            return;
        }
        if self.folded.len() < self.limits.max_distinct {
            self.folded.insert(key, (0, e.clone()));
            self.write(e);
            return;
        }
        if self.overflow_hosts.len() < OVERFLOW_HOSTS {
            self.overflow_hosts.insert(format!("{}:{}", e.host, e.port));
        }
        match self.overflow.as_mut() {
            None => self.overflow = Some((1, e.clone())),
            Some((n, shared)) => {
                *n += 1;
                shared.time = e.time.clone();
                let keep = |a: &mut String, b: &str| {
                    if a != b {
                        *a = "*".into();
                    }
                };
                keep(&mut shared.binary, &e.binary);
                keep(&mut shared.hash, &e.hash);
                keep(&mut shared.host, &e.host);
                keep(&mut shared.method, &e.method);
                keep(&mut shared.path, &e.path);
                keep(&mut shared.rule, &e.rule);
                if shared.pid != e.pid {
                    shared.pid = 0;
                }
                if shared.port != e.port {
                    shared.port = 0;
                }
            }
        }
    }
}

/// Records a watcher may fall behind by before it loses the oldest: a
/// second of a busy gateway's decisions (the feed holds one `Arc` each).
pub const FEED_CAPACITY: usize = 4096;

/// Records kept for a console that starts watching.
pub const RECENT: usize = 256;

/// How many distinct destinations of the overflow are told apart.
const OVERFLOW_HOSTS: usize = 1024;

/// The audit log of one sandbox.
#[derive(Debug)]
pub struct EventLog {
    inner: Arc<Mutex<Inner>>,
    /// The window closer starts with the first refusal (none at start-up).
    closer: std::sync::Once,
    /// Names this log's numbering (see `Inner::seq`).
    feed_id: u64,
}

impl EventLog {
    /// Opens (creates 0600) the log at `path` with the default limits.
    pub fn open(path: &Path) -> std::io::Result<EventLog> {
        EventLog::open_with(path, AuditLimits::default())
    }

    pub fn open_with(path: &Path, limits: AuditLimits) -> std::io::Result<EventLog> {
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(EventLog::with(Some(Rotating { path: path.to_path_buf(), file, size }), limits))
    }

    /// A log that only emits tracing events (tests, `--rm` runs without state).
    pub fn discard() -> EventLog {
        EventLog::with(None, AuditLimits::default())
    }

    fn with(file: Option<Rotating>, limits: AuditLimits) -> EventLog {
        let inner = Arc::new(Mutex::new(Inner {
            file,
            limits,
            window_start: Instant::now(),
            folded: HashMap::new(),
            overflow: None,
            overflow_hosts: Default::default(),
            feed: tokio::sync::broadcast::Sender::new(FEED_CAPACITY),
            recent: std::collections::VecDeque::with_capacity(RECENT),
            seq: 0,
        }));
        // Tells this log's record numbers from those of an earlier
        // supervisor of the same sandbox (they start at 1 again).
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let feed_id = (now.as_nanos() as u64) ^ (u64::from(std::process::id()) << 40);
        EventLog { inner, closer: std::sync::Once::new(), feed_id }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records one decision. Refusals are folded and rate-limited (see the
    /// module); every other decision is written as it comes.
    pub fn record(&self, e: &Event) {
        let mut inner = self.lock();
        match e.decision {
            Decision::Deny => {
                self.closer.call_once(|| closer(Arc::downgrade(&self.inner), inner.limits.window));
                inner.refuse(e, Instant::now())
            }
            _ => inner.write(e),
        }
    }

    /// The newest records written so far and those written from now on,
    /// as JSON lines (see `Inner::feed`): taken under one lock, so none is
    /// missed or told twice between the two.
    pub fn watch(&self) -> (Vec<Fed>, tokio::sync::broadcast::Receiver<Fed>) {
        let inner = self.lock();
        (inner.recent.iter().cloned().collect(), inner.feed.subscribe())
    }

    /// What names this log's record numbering (it differs per supervisor).
    pub fn feed_id(&self) -> u64 {
        self.feed_id
    }

    /// Writes what the current window holds back (its folded repeats).
    pub fn flush(&self) {
        self.lock().close_window(Instant::now(), true);
    }
}

impl Drop for EventLog {
    fn drop(&mut self) {
        self.flush();
    }
}

/// A thread that closes each window when it is over, so a flood's last
/// count is written even when nothing follows it. It ends with the log.
fn closer(inner: Weak<Mutex<Inner>>, window: Duration) {
    let tick = (window / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
    let spawned = std::thread::Builder::new().name("audit-window".into()).spawn(move || loop {
        std::thread::sleep(tick);
        let Some(inner) = inner.upgrade() else { return };
        inner.lock().unwrap_or_else(|p| p.into_inner()).close_window(Instant::now(), false);
    });
    if let Err(e) = spawned {
        // Counts are still written at the next refusal or when the log is dropped.
        tracing::warn!(event = "audit_window_thread", error = %e, "no thread to close audit windows");
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
        log.flush();
        let text = std::fs::read_to_string(&p).unwrap();
        assert_eq!(text.lines().count(), 2, "the refusal, then its repeat folded: {text}");
        let back: Event = serde_json::from_str(text.lines().next().unwrap()).unwrap();
        assert_eq!(back.path, "/x");
        assert!(!text.contains("secret"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
    }

    fn events(p: &Path) -> Vec<Event> {
        let mut out = Vec::new();
        for f in [rotated_path(p), p.to_path_buf()] {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            out.extend(text.lines().map(|l| serde_json::from_str::<Event>(l).unwrap()));
        }
        out
    }

    fn deny(host: &str, path: &str) -> Event {
        Event::new(None, host, 80, "GET", path, Decision::Deny, "", "no policy lists it")
    }

    #[test]
    fn repeated_refusals_are_one_event_with_their_count() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.log");
        let limits = AuditLimits { window: Duration::from_millis(1000), max_distinct: 4, max_file: 1 << 20 };
        let log = EventLog::open_with(&p, limits).unwrap();
        for i in 0..200 {
            log.record(&deny("a.test", &format!("/{i}/{}", "x".repeat(3000))));
        }
        // Allowed decisions are written as they come.
        log.record(&Event::new(None, "a.test", 80, "GET", "/", Decision::Allow, "r", ""));
        let early = events(&p);
        // The first refusal and the allow; the repeats held back (a slow
        // machine may have seen one window close during the loop).
        assert!(early.len() <= 3, "{early:?}");
        assert!(early[0].path.len() < MAX_FIELD + 32, "a long path is cut: {}", early[0].path.len());
        // The window closes by itself (nothing else is recorded).
        std::thread::sleep(Duration::from_millis(1800));
        let all = events(&p);
        let denied: Vec<&Event> = all.iter().filter(|e| e.decision == Decision::Deny).collect();
        assert!(denied.len() <= 4, "{all:?}");
        assert_eq!(denied.iter().map(|e| e.count).sum::<u64>(), 200);
        assert!(denied.last().unwrap().path.starts_with("/199/"), "the folded record shows the last repeat");
    }

    #[test]
    fn many_distinct_refusals_are_rate_limited_and_still_counted() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.log");
        let limits = AuditLimits { window: Duration::from_secs(3600), max_distinct: 10, max_file: 1 << 20 };
        let log = EventLog::open_with(&p, limits).unwrap();
        for i in 0..500 {
            log.record(&deny(&format!("h{i}.test"), "/"));
        }
        log.flush();
        let all = events(&p);
        assert_eq!(all.len(), 11, "10 one by one, the rest in one: {all:?}");
        assert_eq!(all.iter().map(|e| e.count).sum::<u64>(), 500);
        let rest = &all[10];
        assert_eq!((rest.host.as_str(), rest.port, rest.count), ("*", 80, 490), "{rest:?}");
        assert!(rest.reason.contains("490 refusals to 490 destinations"), "{}", rest.reason);
    }

    #[test]
    fn the_file_rotates_at_its_cap() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("audit.log");
        let limits = AuditLimits { window: Duration::from_secs(3600), max_distinct: 10, max_file: 4096 };
        let log = EventLog::open_with(&p, limits).unwrap();
        for i in 0..200 {
            log.record(&Event::new(None, "a.test", 80, "GET", &format!("/{i}"), Decision::Allow, "r", ""));
        }
        let (cur, old) = (std::fs::metadata(&p).unwrap().len(), std::fs::metadata(rotated_path(&p)).unwrap().len());
        assert!(cur <= 4096 && old <= 4096, "{cur} {old}");
        let kept = events(&p);
        assert_eq!(kept.last().unwrap().path, "/199", "the newest records are kept");
        assert!(kept.len() < 200, "the oldest were rotated away");
    }

    #[test]
    fn records_without_a_count_read_as_one() {
        let old = r#"{"time":"t","binary":"b","hash":"h","pid":1,"host":"h","port":1,"method":"GET","path":"/","decision":"deny","rule":"","reason":""}"#;
        assert_eq!(serde_json::from_str::<Event>(old).unwrap().count, 1);
    }

    #[test]
    fn a_watcher_that_never_reads_costs_the_log_nothing_and_is_told_what_it_missed() {
        let log = EventLog::discard();
        let allow = |i: usize| Event::new(None, &format!("h{i}"), 443, "GET", "/", Decision::Allow, "r", "");
        for i in 0..3 {
            log.record(&allow(i));
        }
        let (recent, mut rx) = log.watch();
        assert_eq!(recent.iter().map(|r| r.0).collect::<Vec<_>>(), [1, 2, 3], "what was written before, numbered");
        // Past the feed's capacity, with nobody reading: record() never waits.
        let n = FEED_CAPACITY + 100;
        for i in 3..3 + n {
            log.record(&allow(i));
        }
        match rx.try_recv() {
            Err(tokio::sync::broadcast::error::TryRecvError::Lagged(missed)) => assert_eq!(missed, 100),
            other => panic!("expected a lag of 100, got {other:?}"),
        }
        let (seq, line) = rx.try_recv().unwrap();
        let next: Event = serde_json::from_str(&line).unwrap();
        assert_eq!((seq, next.host.as_str()), (104, "h103"), "the oldest were dropped, the newest kept in order");
        let (recent, _) = log.watch();
        assert_eq!(recent.len(), RECENT, "the recent ring is bounded");
        let last: Event = serde_json::from_str(&recent.last().unwrap().1).unwrap();
        assert_eq!(last.host, format!("h{}", 2 + n));
    }
}
