//! The operator's terminal: a foreground `moat run` writes one line to its
//! stderr for each new pending approval (sandbox, binary, destination and
//! the exact `moat approve` command), so the person in the loop sees a
//! refusal when it happens instead of polling `moat approvals`. Guards
//! against a sandbox flooding that terminal (at most `BURST` lines, then one
//! a `REFILL`, with a count of what was not shown) and against it writing
//! control sequences there (every field is escaped by `visible::field`).
#![forbid(unsafe_code)]
use crate::visible::field;
use std::io::Write;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines written at once before the rate applies.
const BURST: u32 = 8;
/// One more line allowed per this interval.
const REFILL: Duration = Duration::from_secs(5);

#[derive(Debug)]
struct Bucket {
    tokens: u32,
    last: Instant,
    /// New approvals not shown since the last line.
    unshown: u64,
}

/// Where new-approval lines go; stderr of the supervisor process (the
/// operator's terminal in the foreground, /dev/null when detached).
#[derive(Debug)]
pub struct Terminal {
    bucket: Mutex<Bucket>,
}

impl Default for Terminal {
    fn default() -> Self {
        Terminal { bucket: Mutex::new(Bucket { tokens: BURST, last: Instant::now(), unshown: 0 }) }
    }
}

impl Terminal {
    /// Tells the operator of a new pending approval (rate-bounded).
    pub fn tell_new_approval(&self, sandbox: &str, binary: &str, host: &str, port: u16, id: &str) {
        self.tell(|more| line(sandbox, binary, host, port, id, more));
    }

    /// Tells the operator of an agent's new request through `moat.local`,
    /// with its reason quoted as the agent's words (rate-bounded with the
    /// refusals: one bucket for both).
    pub fn tell_agent_request(&self, sandbox: &str, binary: &str, host: &str, port: u16, id: &str, reason: &str) {
        self.tell(|more| asked_line(sandbox, binary, host, port, id, reason, more));
    }

    fn tell(&self, make: impl FnOnce(u64) -> String) {
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let refills = (b.last.elapsed().as_secs_f64() / REFILL.as_secs_f64()) as u32;
        if refills > 0 {
            b.tokens = (b.tokens + refills).min(BURST);
            b.last = Instant::now();
        }
        if b.tokens == 0 {
            b.unshown += 1;
            return;
        }
        b.tokens -= 1;
        let more = std::mem::take(&mut b.unshown);
        drop(b);
        let line = make(more);
        // A closed or full stderr must never stop the gateway.
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

fn line(sandbox: &str, binary: &str, host: &str, port: u16, id: &str, more: u64) -> String {
    let (sandbox, binary, host) = (field(sandbox), field(binary), field(host));
    let more =
        if more > 0 { format!(" ({more} more were not shown: `moat approvals {sandbox}`)") } else { String::new() };
    format!(
        "moat: {sandbox}: {binary} was refused {host}:{port}; allow it with `moat approve {sandbox} {id}` \
         (or `moat deny {sandbox} {id}`){more}\n"
    )
}

/// Longest part of an agent's reason written on the operator's terminal
/// (`moat approvals` shows it whole).
const REASON_ON_TERMINAL: usize = 160;

fn asked_line(sandbox: &str, binary: &str, host: &str, port: u16, id: &str, reason: &str, more: u64) -> String {
    let short: String = reason.chars().take(REASON_ON_TERMINAL).collect();
    let cut = if short.len() < reason.len() { "..." } else { "" };
    let (sandbox, binary, host) = (field(sandbox), field(binary), field(host));
    let more =
        if more > 0 { format!(" ({more} more were not shown: `moat approvals {sandbox}`)") } else { String::new() };
    format!(
        "moat: {sandbox}: {binary} asks for {host}:{port}; allow it with `moat approve {sandbox} {id}` \
         (or `moat deny {sandbox} {id}`){more}\n  the agent's own words (unverified): \"{}{cut}\"\n",
        field(&short)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_escaped_and_the_command_is_exact() {
        let l = line("agent-1", "/tmp/\x1b[2Jx", "evil\x07.test", 443, "ab12cd34", 0);
        assert!(!l.contains('\x1b') && !l.contains('\x07'), "{l:?}");
        assert!(l.contains("`moat approve agent-1 ab12cd34`"), "{l}");
        assert!(line("a", "b", "c", 1, "d", 3).contains("3 more were not shown"));
        let asked = asked_line("agent-1", "/usr/bin/curl", "up.test", 443, "ab12cd34", "need it\x1b[2J\r", 0);
        assert!(!asked.contains('\x1b') && !asked.contains('\r'), "{asked:?}");
        assert!(asked.contains("asks for up.test:443") && asked.contains("the agent's own words"), "{asked}");
        assert!(asked_line("a", "b", "c", 1, "d", &"x".repeat(1000), 0).len() < 400, "the reason is cut");
    }

    #[test]
    fn a_flood_is_bounded() {
        let t = Terminal::default();
        for i in 0..100 {
            t.tell_new_approval("s", "/bin/x", &format!("h{i}"), 1, "id");
        }
        let b = t.bucket.lock().unwrap();
        assert_eq!((b.tokens, b.unshown), (0, 100 - u64::from(BURST)));
    }
}
