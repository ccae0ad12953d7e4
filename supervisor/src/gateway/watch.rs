//! The console's live feed (`moat term`): a control connection that sent
//! `{"op":"watch"}` receives JSON lines: `policy` (revision in force, its
//! file text and the one before), `approvals` (the pending list), `event`
//! for each of the newest records (`events::RECENT`), then for every audit
//! record as it is written, a new `policy` or
//! `approvals` at each change, and `lagged` when the watcher fell behind.
//! Guards the sandbox's traffic against a slow operator terminal: nothing
//! here is ever waited on by the gateway (records go through a bounded
//! broadcast that drops the oldest for a watcher that lags, and says how
//! many), and approval snapshots are sent at most five times a second.
#![forbid(unsafe_code)]
use super::Shared;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncWriteExt, BufReader, Lines};
use tokio::net::unix::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::broadcast::error::{RecvError, TryRecvError};

/// Records gathered into one write when they arrive together.
const BATCH: usize = 256;
/// The least time between two approval snapshots (a flood of refusals
/// changes counts thousands of times a second).
const APPROVALS_EVERY: Duration = Duration::from_millis(200);

/// Serves one watcher until it hangs up or the gateway ends.
pub async fn stream(shared: Arc<Shared>, mut requests: Lines<BufReader<OwnedReadHalf>>, mut w: OwnedWriteHalf) {
    let (recent, mut events) = shared.events.watch();
    let mut approvals = shared.watch_approvals();
    let mut policy = shared.subscribe();
    approvals.borrow_and_update();
    policy.borrow_and_update();
    let s = shared.clone();
    let Ok(mut first) = tokio::task::spawn_blocking(move || policy_line(&s)).await else { return };
    first.push_str(&approvals_line(&shared));
    for (seq, r) in &recent {
        first.push_str(&event_line(*seq, r));
    }
    if w.write_all(first.as_bytes()).await.is_err() {
        return;
    }
    let mut approvals_due = tokio::time::Instant::now();
    let mut approvals_dirty = false;
    loop {
        let out = tokio::select! {
            r = events.recv() => match r {
                Ok((seq, first)) => {
                    let mut out = event_line(seq, &first);
                    for _ in 0..BATCH {
                        match events.try_recv() {
                            Ok((seq, more)) => out.push_str(&event_line(seq, &more)),
                            Err(TryRecvError::Lagged(n)) => out.push_str(&lagged_line(n)),
                            Err(_) => break,
                        }
                    }
                    out
                }
                Err(RecvError::Lagged(n)) => lagged_line(n),
                Err(RecvError::Closed) => return,
            },
            // A change only marks the list; it is sent by the arm below when
            // due, so records keep flowing while a flood changes it.
            r = approvals.changed(), if !approvals_dirty => {
                if r.is_err() {
                    return;
                }
                approvals_dirty = true;
                continue;
            }
            _ = tokio::time::sleep_until(approvals_due), if approvals_dirty => {
                approvals.borrow_and_update();
                approvals_dirty = false;
                approvals_due = tokio::time::Instant::now() + APPROVALS_EVERY;
                approvals_line(&shared)
            }
            r = policy.changed() => {
                if r.is_err() {
                    return;
                }
                policy.borrow_and_update();
                let s = shared.clone();
                // Reads two revision files: off the gateway's workers.
                match tokio::task::spawn_blocking(move || policy_line(&s)).await {
                    Ok(line) => line,
                    Err(_) => return,
                }
            }
            // The watcher sends nothing more: a line is ignored, the end is its hang-up.
            r = requests.next_line() => match r {
                Ok(Some(_)) => continue,
                _ => return,
            },
        };
        if w.write_all(out.as_bytes()).await.is_err() {
            return;
        }
    }
}

fn event_line(seq: u64, record: &str) -> String {
    // `record` is the audit line itself (JSON written by `events`).
    format!("{{\"kind\":\"event\",\"seq\":{seq},\"event\":{record}}}\n")
}

fn lagged_line(missed: u64) -> String {
    format!("{}\n", json!({"kind": "lagged", "missed": missed}))
}

fn approvals_line(shared: &Shared) -> String {
    let (pending, dropped) = shared.approvals_snapshot();
    format!("{}\n", json!({"kind": "approvals", "pending": pending, "dropped": dropped}))
}

fn policy_line(shared: &Shared) -> String {
    let c = shared.current();
    let text = |n: u64| shared.revision_text(n);
    let current = text(c.number).unwrap_or_else(|| toml::to_string(&json!({"network": c.network})).unwrap_or_default());
    let previous = c.number.checked_sub(1).filter(|n| *n > 0).and_then(text);
    format!(
        "{}\n",
        json!({"kind": "policy", "sandbox": shared.sandbox, "revision": c.number, "sha256": c.sha256,
               "text": current, "previous": previous, "feed": shared.events.feed_id()})
    )
}
