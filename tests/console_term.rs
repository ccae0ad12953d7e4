//! The operator's console (`moat term`, issue 21 part 1), driven as an
//! operator would: in a real terminal (tmux at 80x24), read with
//! `capture-pane`, keys sent with `send-keys`. Two real sandboxes of the
//! agent image; one is refused an unlisted host; the approval appears on
//! screen; the operator approves it read-only from the scope picker (with
//! the address opted in, and the rule also written into a policy file);
//! the retried GET is allowed and a POST is still refused, in that sandbox
//! only. Also: without colour (NO_COLOR) the screen carries no colour
//! codes, and the console refuses to start without a terminal. Needs root,
//! iproute2, tmux and the Debian mirror (the agent image).
#[path = "../supervisor/tests/gateway_common/mod.rs"]
mod gateway_common;

mod gateway_world;

use gateway_world::*;
use std::process::Command;
use std::time::{Duration, Instant};

/// Removes the sandboxes when the test ends, passed or failed.
struct Gone(Vec<&'static str>);

impl Drop for Gone {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = moat(&["rm", "--force", n]);
        }
    }
}

/// A tmux server of this test's own (its socket name), killed at the end.
struct Tmux(String);

impl Tmux {
    fn start(name: &str, command: &str) -> Tmux {
        let t = Tmux(format!("moat-term-test-{}-{name}", std::process::id()));
        let o = Command::new("tmux")
            .args(["-L", &t.0, "-f", "/dev/null", "new-session", "-d", "-s", "t", "-x", "80", "-y", "24", command])
            .output()
            .expect("tmux is missing (scripts/install-deps.sh installs it)");
        assert!(o.status.success(), "tmux: {}", String::from_utf8_lossy(&o.stderr));
        t
    }

    fn screen_with(&self, escapes: bool) -> String {
        let mut args = vec!["-L", self.0.as_str(), "capture-pane", "-p", "-t", "t"];
        if escapes {
            args.push("-e");
        }
        let o = Command::new("tmux").args(&args).output().expect("tmux capture-pane");
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.screen_with(false)
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["-L", self.0.as_str(), "send-keys", "-t", "t"];
        args.extend_from_slice(keys);
        let o = Command::new("tmux").args(&args).output().expect("tmux send-keys");
        assert!(o.status.success(), "send-keys {keys:?}: {}", String::from_utf8_lossy(&o.stderr));
    }

    /// Waits until the screen satisfies `ok`; fails with the last screen.
    fn wait(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let s = self.screen();
            if ok(&s) {
                return s;
            }
            assert!(Instant::now() < end, "the console never showed {what}; the screen:\n{s}");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["-L", &self.0, "kill-server"]).output();
    }
}

/// The shell command tmux runs: `moat term ARGS` with this world's home.
fn term_command(env: &str, args: &str) -> String {
    let w = world();
    format!(
        "env {env} MOAT_HOME={} MOAT_RUN_DIR={} {} term {args}",
        w.home.path().join("home").display(),
        w.home.path().join("run").display(),
        env!("CARGO_BIN_EXE_moat")
    )
}

/// `curl` in the sandbox: the HTTP status code.
fn curl(name: &str, args: &[&str]) -> String {
    let mut argv = vec!["exec", name, "--", "curl", "-s", "-o", "/dev/null", "-w", "%{http_code}"];
    argv.extend_from_slice(args);
    ok(&argv).trim().to_string()
}

fn start(name: &'static str) {
    let _ = moat(&["rm", "--force", name]);
    let p = policy(&format!("term-{name}"), "");
    ok(&["run", "-d", "--name", name, "--policy", p.to_str().unwrap(), "agent", "--", "sleep", "600"]);
}

#[test]
fn the_operator_approves_read_only_from_the_console() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _gone = Gone(vec!["term-a", "term-b"]);
    start("term-a");
    start("term-b");
    let file = world().home.path().join("term-approved.toml");
    let _ = std::fs::remove_file(&file);
    let tmux = Tmux::start("main", &term_command("", &format!("--policy-file {}", file.display())));
    tmux.keys(&["?"]);
    tmux.wait("the help", |s| s.contains("quit (sandboxes keep running)"));
    tmux.keys(&["Escape"]);
    let s = tmux.wait("both sandboxes running", |s| {
        s.lines().filter(|l| (l.contains("term-a") || l.contains("term-b")) && l.contains("running")).count() == 2
    });
    assert!(s.contains("1 Sandboxes (2)") && s.contains("? help"), "{s}");
    assert!(s.lines().count() <= 24 && s.lines().all(|l| l.chars().count() <= 80), "fits 80x24:\n{s}");

    // Refused, and the approval appears without the operator asking.
    assert_eq!(curl("term-a", &["http://other.test/page"]), "403");
    tmux.wait("the new approval", |s| s.contains("3 Approvals (1)") && s.contains("new approval"));
    tmux.keys(&["3"]);
    let s = tmux.wait("the approval's row", |s| s.contains("COUNT") && s.contains("details"));
    assert!(s.contains("term-a") && s.contains("/usr/bin/curl") && s.contains("sha256"), "{s}");
    assert!(s.contains("GET /page"), "the refused request is shown: {s}");

    // The scope picker: read-only first; the address opted in; also kept in the file.
    tmux.keys(&["a"]);
    let s = tmux.wait("the scope picker", |s| s.contains("inspected, read-only"));
    assert!(s.contains("only GET /page (as seen)") && s.contains("exact host and port"), "{s}");
    tmux.keys(&["i"]);
    tmux.keys(&["-l", "198.18.0.0/15"]);
    tmux.keys(&["Enter", "w"]);
    tmux.wait("the typed address and the file box", |s| s.contains("198.18.0.0/15") && s.contains("[x] also write"));
    tmux.keys(&["Enter"]);
    let s = tmux.wait("the approval's outcome", |s| s.contains("approved") && s.contains("written"));
    assert!(s.contains("3 Approvals (0)"), "{s}");

    // Read-only, in this sandbox only.
    assert_eq!(curl("term-a", &["http://other.test/page"]), "200", "the retried GET");
    assert_eq!(curl("term-a", &["-X", "POST", "-d", "x", "http://other.test/page"]), "403", "a write");
    assert_eq!(curl("term-b", &["http://other.test/page"]), "403", "the other sandbox");

    // Denied from the console, after a confirmation naming it.
    tmux.wait("term-b's approval", |s| s.contains("3 Approvals (1)"));
    tmux.keys(&["d"]);
    let s = tmux.wait("the deny confirmation", |s| s.contains("y: deny"));
    assert!(s.contains("term-b -> other.test:80"), "{s}");
    tmux.keys(&["y"]);
    tmux.wait("the denial", |s| s.contains("term-b: denied") && s.contains("3 Approvals (0)"));
    assert_eq!(curl("term-b", &["http://other.test/page"]), "403", "denied stays refused");

    // The egress tab shows the decisions as they came.
    tmux.keys(&["2"]);
    let s = tmux.wait("the allowed GET", |s| s.lines().any(|l| l.contains("allow") && l.contains("GET /page")));
    assert!(s.lines().any(|l| l.contains("DENY") && l.contains("POST /page")), "{s}");
    tmux.keys(&["f"]);
    let s = tmux.wait("the deny filter", |s| s.contains("decision=DENY"));
    assert!(!s.lines().any(|l| l.contains("allow ")), "only refusals: {s}");

    // The policy tab: the new revision against the one before.
    tmux.keys(&["4"]);
    let s = tmux.wait("the policy diff", |s| s.contains("revision 2 in force"));
    assert!(s.contains("+ access = \"read-only\""), "the rule's own line, added: {s}");

    // The rule in the file loads as a policy.
    let check = moat(&["policy", "check", file.to_str().unwrap()]);
    assert!(check.status.success(), "{}", String::from_utf8_lossy(&check.stderr));
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.contains("access = \"read-only\"") && text.contains("other.test"), "{text}");

    tmux.keys(&["q"]);
    let end = Instant::now() + Duration::from_secs(10);
    while tmux_alive(&tmux) {
        assert!(Instant::now() < end, "q did not quit: {}", tmux.screen());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn tmux_alive(t: &Tmux) -> bool {
    Command::new("tmux").args(["-L", &t.0, "has-session", "-t", "t"]).output().is_ok_and(|o| o.status.success())
}

#[test]
fn without_colour_the_screen_has_no_colour_codes() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _gone = Gone(vec!["term-c"]);
    start("term-c");
    assert_eq!(curl("term-c", &["http://other.test/nc"]), "403");
    // An SGR with a colour parameter: 30-38, 40-48, 90-97, 100-107 (39 and
    // 49 are "the default colour", which any reset writes).
    let coloured = |s: &str| {
        s.split("\x1b[").skip(1).any(|rest| {
            let params = rest.split('m').next().unwrap_or("");
            params.split(';').any(|p| matches!(p.parse::<u32>(), Ok(30..=38 | 40..=48 | 90..=97 | 100..=107)))
        })
    };
    for (env, want) in [("NO_COLOR=", true), ("NO_COLOR=1", false)] {
        let tmux = Tmux::start(if want { "colour" } else { "plain" }, &term_command(env, "term-c"));
        tmux.wait("the sandbox", |s| s.contains("term-c") && s.contains("running"));
        tmux.keys(&["2"]);
        tmux.wait("the refusal", |s| s.contains("DENY"));
        let s = tmux.screen_with(true);
        assert_eq!(coloured(&s), want, "{env}: {s:?}");
        assert!(s.contains("\x1b[7m") || s.contains(";7m"), "the tab is marked in reverse video either way: {s:?}");
    }
}

#[test]
fn without_a_terminal_it_says_so() {
    let o = moat(&["term"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("needs a terminal"), "{}", String::from_utf8_lossy(&o.stderr));
}

/// The agent chooses the path it asks for; picking "as seen" in the console
/// must allow that path only, not the glob it spells: an agent that asks
/// for `/**` gets `/**` and nothing else.
#[test]
fn a_path_the_agent_asked_for_is_allowed_literally() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let _gone = Gone(vec!["term-d"]);
    start("term-d");
    let body = r#"{"host":"other.test","port":80,"method":"GET","path":"/**","reason":"everything"}"#;
    let asked = ok(&["exec", "term-d", "--", "curl", "-s", "--data-binary", body, "http://moat.local/v1/requests"]);
    assert!(asked.contains("pending"), "{asked}");
    let tmux = Tmux::start("literal", &term_command("", "term-d"));
    tmux.wait("the request", |s| s.contains("1 Sandboxes (1)") && s.contains("3 Approvals (1)"));
    tmux.keys(&["3", "a"]);
    let s = tmux.wait("the picker", |s| s.contains("only GET /** (as seen)"));
    let n = s.lines().find(|l| l.contains("only GET /** (as seen)")).and_then(|l| l.split_whitespace().nth(1)).unwrap();
    tmux.keys(&[n, "i"]);
    tmux.keys(&["-l", "198.18.0.0/15"]);
    tmux.keys(&["Enter", "Enter"]);
    tmux.wait("the approval", |s| s.contains("approved"));
    assert_eq!(curl("term-d", &["http://other.test/other"]), "403", "another path");
    assert_eq!(curl("term-d", &["http://other.test/**"]), "200", "the path asked for");
}
