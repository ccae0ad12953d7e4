//! The console's feeds: one thread per running sandbox holding its
//! supervisor's control socket in `watch` mode (policy, approvals, every
//! egress record as it is written: no audit file is tailed), and one that
//! lists the sandboxes and samples their cgroups once a second. They apply
//! what they read to the [`Board`] the screen draws from. Guards the supervisors against a slow
//! terminal (the feeds read their sockets whatever the screen does; a frame
//! not drawn is skipped, a record is not) and the console against a hostile
//! or broken feed (every line is bounded before it is held, and a line that
//! does not parse ends that feed with the reason shown).
#![forbid(unsafe_code)]
use crate::model::{Model, PolicyView, SandboxRow, Update};
use moat_supervisor::gateway::events::Event;
use moat_supervisor::gateway::revisions::Pending;
use moat_supervisor::sandbox::state::{self, Paths, Status};
use moat_supervisor::sandbox::{publish, usage};
use serde_json::Value;
use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The longest feed line held (a policy line carries two revision files).
pub const MAX_LINE: u64 = 16 << 20;
/// How often the sandbox table is refreshed.
pub const LIST_EVERY: Duration = Duration::from_secs(1);

/// What the feeds reported, applied as it arrives: the model itself (its
/// egress list is bounded), so a screen that cannot draw loses frames and
/// never a report. The screen holds the lock only to draw into memory,
/// never while the terminal is written.
#[derive(Debug, Default)]
pub struct Board {
    model: Mutex<Model>,
    dirty: AtomicBool,
}

impl Board {
    pub fn apply(&self, u: Update) {
        self.lock().apply(u);
        self.dirty.store(true, Ordering::Release);
    }

    pub fn lock(&self) -> std::sync::MutexGuard<'_, Model> {
        self.model.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether anything changed since the last call.
    pub fn take_dirty(&self) -> bool {
        self.dirty.swap(false, Ordering::AcqRel)
    }
}

/// Starts the lister, which starts a watcher per running sandbox (`only`:
/// that one sandbox). They end when `stop` is set.
pub fn start(board: Arc<Board>, only: Option<String>, stop: Arc<AtomicBool>) -> std::io::Result<()> {
    std::thread::Builder::new().name("term-list".into()).spawn(move || lister(&board, only.as_deref(), &stop))?;
    Ok(())
}

fn lister(board: &Arc<Board>, only: Option<&str>, stop: &AtomicBool) {
    let watching: Arc<Mutex<HashSet<String>>> = Arc::default();
    let mut cpu: HashMap<String, (u64, Instant)> = HashMap::new();
    while !stop.load(Ordering::Relaxed) {
        let entries = match state::entries() {
            Ok(e) => e,
            Err(e) => {
                board.apply(Update::Done(format!("listing sandboxes: {}", moat_builder::errors::chain(&e))));
                Vec::new()
            }
        };
        let mut rows = Vec::new();
        for (name, rec) in entries {
            if only.is_some_and(|o| o != name) {
                continue;
            }
            let Ok(rec) = rec else {
                rows.push(SandboxRow { name, state: "corrupt".into(), ..SandboxRow::default() });
                continue;
            };
            let st = rec.live_status();
            let mut row = SandboxRow {
                name: name.clone(),
                image: rec.image.clone(),
                state: format!("{st:?}").to_lowercase(),
                ..SandboxRow::default()
            };
            if st == Status::Running {
                row.uptime_secs = rec.started.map(|s| state::now().saturating_sub(s));
                if let Some(init) = rec.init {
                    let u = usage::of(init.pid);
                    row.memory_bytes = u.memory_bytes;
                    if let Some(now_ns) = u.cpu_ns {
                        let now = Instant::now();
                        if let Some((ns, at)) = cpu.insert(name.clone(), (now_ns, now)) {
                            let wall = now.duration_since(at).as_nanos() as f64;
                            if wall > 0.0 {
                                row.cpu_percent = Some(now_ns.saturating_sub(ns) as f64 * 100.0 / wall);
                            }
                        }
                    }
                }
                if let Ok(paths) = Paths::new(&name) {
                    row.published = publish::published(&paths)
                        .iter()
                        .map(|p| format!("{}->{}{}", p.host, p.sandbox_port, if p.token { " (token)" } else { "" }))
                        .collect();
                }
                let new = watching.lock().unwrap_or_else(|p| p.into_inner()).insert(name.clone());
                if new {
                    spawn_watcher(name.clone(), board.clone(), watching.clone());
                }
            }
            rows.push(row);
        }
        board.apply(Update::Sandboxes(rows));
        std::thread::sleep(LIST_EVERY);
    }
}

fn spawn_watcher(name: String, board: Arc<Board>, watching: Arc<Mutex<HashSet<String>>>) {
    let thread_name = format!("term-watch-{name}");
    let spawned = std::thread::Builder::new().name(thread_name).spawn({
        let (name, board, watching) = (name.clone(), board.clone(), watching.clone());
        move || {
            let why = watch(&name, &board);
            board.apply(Update::Disconnected { sandbox: name.clone(), why });
            // The lister starts a new watcher next round if it still runs.
            watching.lock().unwrap_or_else(|p| p.into_inner()).remove(&name);
        }
    });
    if let Err(e) = spawned {
        board.apply(Update::Done(format!("{name}: no thread to watch it: {e}")));
        watching.lock().unwrap_or_else(|p| p.into_inner()).remove(&name);
    }
}

/// Follows one sandbox's feed until it ends; returns why it ended.
fn watch(name: &str, board: &Board) -> String {
    let socket = match Paths::new(name) {
        Ok(p) => p.control_socket(),
        Err(e) => return moat_builder::errors::chain(&e),
    };
    let mut s = match std::os::unix::net::UnixStream::connect(&socket) {
        Ok(s) => s,
        Err(e) => return format!("its supervisor's control socket {}: {e}", socket.display()),
    };
    if let Err(e) = s.write_all(b"{\"op\":\"watch\"}\n") {
        return format!("asking for the feed: {e}");
    }
    let mut r = BufReader::new(s);
    let mut line = Vec::new();
    loop {
        line.clear();
        match r.by_ref().take(MAX_LINE).read_until(b'\n', &mut line) {
            Ok(0) => return "the feed ended (the sandbox stopped)".into(),
            Ok(_) if line.last() != Some(&b'\n') => {
                return format!("a feed line longer than {MAX_LINE} bytes (or cut short)");
            }
            Ok(_) => {}
            Err(e) => return format!("reading the feed: {e}"),
        }
        match parse(name, &line) {
            Ok(u) => board.apply(u),
            Err(why) => return why,
        }
    }
}

const REFUSED: &str = "the supervisor refused the feed";

/// The fast path: an event line read straight into its record (thousands
/// a second; no intermediate JSON value).
#[derive(serde::Deserialize)]
struct EventLine {
    kind: String,
    seq: Option<u64>,
    event: Event,
}

/// One feed line as a report.
pub fn parse(sandbox: &str, line: &[u8]) -> Result<Update, String> {
    if let Ok(l) = serde_json::from_slice::<EventLine>(line) {
        if l.kind == "event" {
            return Ok(Update::Event { sandbox: sandbox.to_string(), seq: l.seq, event: Box::new(l.event) });
        }
    }
    let v: Value = serde_json::from_slice(line).map_err(|e| format!("a feed line is not JSON: {e}"))?;
    let sandbox = sandbox.to_string();
    let field = |k: &str| v.get(k).cloned().unwrap_or(Value::Null);
    let bad = |what: &str, e: serde_json::Error| format!("a feed {what} line: {e}");
    Ok(match v.get("kind").and_then(Value::as_str) {
        Some("event") => {
            let event: Event = serde_json::from_value(field("event")).map_err(|e| bad("event", e))?;
            Update::Event { sandbox, seq: v["seq"].as_u64(), event: Box::new(event) }
        }
        Some("approvals") => {
            let pending: Vec<Pending> = serde_json::from_value(field("pending")).map_err(|e| bad("approvals", e))?;
            Update::Approvals { sandbox, pending, dropped: v["dropped"].as_u64().unwrap_or(0) }
        }
        Some("policy") => {
            let text = |k: &str| v.get(k).and_then(Value::as_str).map(str::to_string);
            let policy = PolicyView {
                revision: v["revision"].as_u64().ok_or("a feed policy line without a revision")?,
                sha256: text("sha256").unwrap_or_default(),
                text: text("text").unwrap_or_default(),
                previous: text("previous"),
                feed: v["feed"].as_u64(),
            };
            Update::Policy { sandbox, policy }
        }
        Some("lagged") => Update::Lagged { sandbox, missed: v["missed"].as_u64().unwrap_or(0) },
        Some(other) => return Err(format!("a feed line of unknown kind {:?}", moat_supervisor::visible::field(other))),
        None => match v.get("error").and_then(Value::as_str) {
            Some(e) => return Err(format!("{REFUSED}: {}", moat_supervisor::visible::field(e))),
            None => return Err("a feed line without a kind".into()),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn feed_lines_become_reports() {
        let e =
            Event::new(None, "h.test", 443, "GET", "/x", moat_supervisor::gateway::events::Decision::Deny, "", "no");
        let line = format!("{{\"kind\":\"event\",\"seq\":4,\"event\":{}}}", serde_json::to_string(&e).unwrap());
        assert!(matches!(parse("s", line.as_bytes()), Ok(Update::Event { event, seq: Some(4), .. }) if *event == e));
        let line = br#"{"kind":"policy","revision":3,"sha256":"ab","text":"t","previous":null}"#;
        match parse("s", line) {
            Ok(Update::Policy { policy, .. }) => assert_eq!((policy.revision, policy.previous), (3, None)),
            other => panic!("{other:?}"),
        }
        assert!(matches!(parse("s", br#"{"kind":"lagged","missed":9}"#), Ok(Update::Lagged { missed: 9, .. })));
        assert!(matches!(
            parse("s", br#"{"kind":"approvals","pending":[],"dropped":1}"#),
            Ok(Update::Approvals { dropped: 1, .. })
        ));
    }

    #[test]
    fn bad_lines_end_the_feed_with_a_reason() {
        for (line, want) in [
            (&b"not json"[..], "not JSON"),
            (br#"{"kind":"weird\u001b"}"#, "unknown kind"),
            (br#"{"ok":false,"error":"no"}"#, "refused the feed: no"),
            (br#"{"kind":"event","event":{"x":1}}"#, "event line"),
        ] {
            let e = parse("s", line).unwrap_err();
            assert!(e.contains(want) && !e.contains('\x1b'), "{e}");
        }
    }
}
