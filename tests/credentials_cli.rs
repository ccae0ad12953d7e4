//! `moat credentials set|ls|rm` end to end against the built binary with its
//! own MOAT_HOME: secrets from stdin and from an environment variable, never
//! from argv, never printed by any command; modes 0700/0600 on disk and
//! repaired (with a warning) on the next command; symlinks refused; `used_by`
//! read from sandboxes' inference.json.
mod common;

use common::moat;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

const SECRET: &str = "sk-proj-4b1d9e0c7a3f52e8-DO-NOT-PRINT";
const SECRET2: &str = "ant-key-91c0ffee7d2a44b6-ALSO-HIDDEN";

/// Runs `moat credentials ARGS` with `input` on stdin (None: empty stdin).
/// Asserts neither secret appears in stdout or stderr; returns (code, out, err).
fn creds(home: &Path, args: &[&str], input: Option<&str>, env: &[(&str, &str)]) -> (i32, String, String) {
    let mut c: Command = moat(home);
    c.arg("credentials").args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    c.stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = c.spawn().expect("spawn moat");
    if let Some(text) = input {
        // moat may stop reading early (too large, bad name): a broken pipe is its answer, not ours.
        let _ = child.stdin.take().unwrap().write_all(text.as_bytes());
    }
    let out = child.wait_with_output().unwrap();
    let (so, se) =
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    for s in [SECRET, SECRET2] {
        assert!(!so.contains(s) && !se.contains(s), "`credentials {args:?}` printed a secret:\n{so}\n{se}");
    }
    (out.status.code().unwrap_or(-1), so, se)
}

fn ok(home: &Path, args: &[&str], input: Option<&str>, env: &[(&str, &str)]) -> (String, String) {
    let (code, out, err) = creds(home, args, input, env);
    assert_eq!(code, 0, "credentials {args:?} failed:\n{out}\n{err}");
    (out, err)
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

#[test]
fn set_ls_rm_never_show_secrets_and_keep_modes() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let dir = home.join("credentials");

    // From stdin (one trailing newline stripped) and from an environment variable.
    let (out, err) = ok(&home, &["set", "openai"], Some(&format!("{SECRET}\n")), &[]);
    assert_eq!(out.trim(), "stored credential openai");
    assert_eq!(err, "", "a fresh store needs no repair");
    let (out, _) = ok(&home, &["set", "anthropic", "--from-env", "MY_KEY"], None, &[("MY_KEY", SECRET2)]);
    assert_eq!(out.trim(), "stored credential anthropic");
    assert_eq!(fs::read_to_string(dir.join("openai")).unwrap(), SECRET);
    assert_eq!(fs::read_to_string(dir.join("anthropic")).unwrap(), SECRET2);

    // On disk: 0700 directory, 0600 files, owned by us, nothing else in it.
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(mode(&dir), 0o700);
    for name in ["openai", "anthropic"] {
        assert_eq!(mode(&dir.join(name)), 0o600, "{name}");
        assert_eq!(fs::metadata(dir.join(name)).unwrap().uid(), euid);
    }
    let mut names: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert_eq!(names, ["anthropic", "openai"]);

    // ls: names and where used, never values.
    let sb = home.join("sandboxes");
    fs::create_dir_all(sb.join("agent1")).unwrap();
    fs::write(sb.join("agent1/inference.json"), r#"{"credential": "openai"}"#).unwrap();
    fs::create_dir_all(sb.join("broken")).unwrap();
    fs::write(sb.join("broken/inference.json"), "{garbled").unwrap();
    let (out, _) = ok(&home, &["ls"], None, &[]);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    assert!(lines[0].starts_with("NAME") && lines[0].contains("USED BY"), "{out}");
    assert!(lines[1].starts_with("anthropic ") && lines[1].trim_end().ends_with(" -"), "{out}");
    assert!(lines[2].starts_with("openai ") && lines[2].trim_end().ends_with(" agent1"), "{out}");
    let (out, _) = ok(&home, &["ls", "--json"], None, &[]);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let list = v.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[1]["name"], "openai");
    assert_eq!(list[1]["used_by"], serde_json::json!(["agent1"]));
    assert_eq!(list[0]["used_by"], serde_json::json!([]));
    assert!(list[0]["modified"].as_str().unwrap().ends_with('Z'), "{out}");

    // Replacing a secret keeps 0600 and the new value.
    ok(&home, &["set", "openai"], Some(&format!("{SECRET}-v2")), &[]);
    assert_eq!(fs::read_to_string(dir.join("openai")).unwrap(), format!("{SECRET}-v2"));
    assert_eq!(mode(&dir.join("openai")), 0o600);

    // Loose modes are repaired, with a warning, by the next command of any kind.
    fs::set_permissions(dir.join("openai"), fs::Permissions::from_mode(0o644)).unwrap();
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let (_, err) = ok(&home, &["ls"], None, &[]);
    assert!(err.contains("moat: warning: ") && err.contains("openai had mode 0644; set to 0600"), "{err}");
    assert!(err.contains("credentials had mode 0755; set to 0700"), "{err}");
    assert_eq!(mode(&dir.join("openai")), 0o600);
    assert_eq!(mode(&dir), 0o700);
    let (_, err) = ok(&home, &["ls"], None, &[]);
    assert_eq!(err, "", "nothing left to repair");

    // rm removes (and warns about a sandbox still naming it); a second rm fails.
    let (out, err) = ok(&home, &["rm", "openai"], None, &[]);
    assert_eq!(out.trim(), "removed credential openai");
    assert!(err.contains("agent1") && err.contains("still name credential openai"), "{err}");
    assert!(!dir.join("openai").exists());
    let (code, _, err) = creds(&home, &["rm", "openai"], None, &[]);
    assert_ne!(code, 0);
    assert!(err.contains("no credential named \"openai\""), "{err}");
    let (out, _) = ok(&home, &["ls"], None, &[]);
    assert!(!out.contains("openai") && out.contains("anthropic"), "{out}");
}

#[test]
fn bad_input_is_refused_clearly_and_stores_nothing() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let dir = home.join("credentials");

    // Empty stdin, or only a newline.
    for input in [None, Some("\n")] {
        let (code, out, err) = creds(&home, &["set", "k"], input, &[]);
        assert_ne!(code, 0, "{out}");
        assert!(err.contains("no secret on stdin") && err.contains("--from-env"), "{err}");
    }
    // An unset or empty variable.
    let (code, _, err) = creds(&home, &["set", "k", "--from-env", "MOAT_TEST_UNSET_VAR"], None, &[]);
    assert_ne!(code, 0);
    assert!(err.contains("environment variable MOAT_TEST_UNSET_VAR is not set"), "{err}");
    let (code, _, err) = creds(&home, &["set", "k", "--from-env", "EMPTY"], None, &[("EMPTY", "")]);
    assert_ne!(code, 0);
    assert!(err.contains("environment variable EMPTY is empty"), "{err}");
    // Bad names, before any secret is read.
    for bad in [".hidden", "a/b", "../x"] {
        let (code, _, err) = creds(&home, &["set", bad], Some(SECRET), &[]);
        assert_ne!(code, 0);
        assert!(err.contains("invalid credential name"), "{err}");
    }
    // Too large.
    let big = "x".repeat(64 * 1024 + 10);
    let (code, _, err) = creds(&home, &["set", "k"], Some(&big), &[]);
    assert_ne!(code, 0);
    assert!(err.contains("larger than 65536 bytes"), "{err}");

    // The secret cannot be given as an argument: clap rejects the extra one
    // (its usage error names it: the user put it on argv, not moat).
    let (code, _, err) = {
        let mut c = moat(&home);
        c.args(["credentials", "set", "k", "not-a-real-secret-value"]).stdin(Stdio::null());
        common::run(c)
    };
    assert_eq!(code, 2);
    assert!(err.contains("unexpected argument"), "{err}");
    for flag in ["--secret", "--value", "--password"] {
        let mut c = moat(&home);
        c.args(["credentials", "set", "k", flag, "x"]).stdin(Stdio::null());
        let (code, _, err) = common::run(c);
        assert_eq!(code, 2, "{flag}: {err}");
    }
    let stored: Vec<_> = fs::read_dir(&dir).map(|d| d.map(|e| e.unwrap().file_name()).collect()).unwrap_or_default();
    assert!(stored.is_empty(), "nothing may be stored: {stored:?}");
}

#[test]
fn a_symlink_in_the_store_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let dir = home.join("credentials");
    ok(&home, &["set", "k"], Some(SECRET), &[]);
    let elsewhere = t.path().join("elsewhere");
    fs::write(&elsewhere, "").unwrap();
    std::os::unix::fs::symlink(&elsewhere, dir.join("planted")).unwrap();
    for args in [&["ls"][..], &["set", "planted"], &["rm", "k"]] {
        let input = if args[0] == "set" { Some(SECRET2) } else { None };
        let (code, _, err) = creds(&home, args, input, &[]);
        assert_ne!(code, 0, "{args:?}");
        assert!(err.contains("planted") && err.contains("symlink"), "{args:?}: {err}");
    }
    assert_eq!(fs::read_to_string(&elsewhere).unwrap(), "", "the symlink's target was written");
    assert!(dir.join("k").exists(), "rm acted despite the refusal");
}

#[test]
fn on_a_terminal_the_secret_is_read_without_echo() {
    use nix::sys::termios::{tcgetattr, LocalFlags};
    use std::io::Read;
    use std::time::{Duration, Instant};
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let pty = nix::pty::openpty(None, None).expect("openpty (is /dev/pts mounted?)");
    let mut c = moat(&home);
    c.args(["credentials", "set", "tty"]).stdout(Stdio::piped()).stderr(Stdio::piped());
    c.stdin(Stdio::from(pty.slave));
    let child = c.spawn().expect("spawn moat");
    drop(c); // the parent's copy of the slave: the master reads EOF once moat exits
    let mut master = fs::File::from(pty.master);
    // Type only once echo is off (moat flushes input typed before that).
    let deadline = Instant::now() + Duration::from_secs(20);
    while tcgetattr(&master).unwrap().local_flags.contains(LocalFlags::ECHO) {
        assert!(Instant::now() < deadline, "moat never turned terminal echo off");
        std::thread::sleep(Duration::from_millis(10));
    }
    master.write_all(format!("{SECRET}\n").as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let (so, se) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{so}\n{se}");
    assert_eq!(so.trim(), "stored credential tty");
    assert!(se.contains("input hidden") && !se.contains(SECRET), "{se}");
    // What the terminal showed: the newline (ECHONL), never the secret.
    let mut shown = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n @ 1..) = master.read(&mut buf) {
        shown.extend_from_slice(&buf[..n]);
    }
    assert_eq!(String::from_utf8_lossy(&shown), "\r\n", "the terminal echoed the input");
    assert!(tcgetattr(&master).unwrap().local_flags.contains(LocalFlags::ECHO), "echo was not restored");
    assert_eq!(fs::read_to_string(home.join("credentials/tty")).unwrap(), SECRET);
}

#[test]
fn as_root_a_file_of_another_owner_is_taken_back_with_a_warning() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "this test needs root (CI runs as root): it chowns a file to another user");
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let dir = home.join("credentials");
    ok(&home, &["set", "k"], Some(SECRET), &[]);
    std::os::unix::fs::chown(dir.join("k"), Some(65534), Some(65534)).unwrap();
    std::os::unix::fs::chown(&dir, Some(65534), None).unwrap();
    let (_, err) = ok(&home, &["ls"], None, &[]);
    assert!(err.contains("credentials/k was owned by uid 65534; set to uid 0"), "{err}");
    assert!(err.contains("credentials was owned by uid 65534; set to uid 0"), "{err}");
    assert_eq!(fs::metadata(dir.join("k")).unwrap().uid(), 0);
    assert_eq!(fs::metadata(&dir).unwrap().uid(), 0);
    assert_eq!(mode(&dir.join("k")), 0o600);
}

#[test]
fn a_closed_stderr_does_not_stop_a_command() {
    // `moat credentials rm x 2>&1 | head -0`: the reader of stderr is gone
    // before moat warns about loose modes. The warning is lost; the repair
    // and the removal still happen and the exit code is 0 (an `eprintln!`
    // there panicked with 101 after the repair, before the removal).
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let dir = home.join("credentials");
    ok(&home, &["set", "openai"], Some(SECRET), &[]);
    fs::set_permissions(&dir, fs::Permissions::from_mode(0o755)).unwrap();
    let status = common::status_with_stderr_gone(moat(&home).args(["credentials", "rm", "openai"]));
    assert_eq!(status.code(), Some(0), "moat credentials rm with a closed stderr");
    assert_eq!(mode(&dir), 0o700, "the store's mode was not repaired");
    assert!(!dir.join("openai").exists(), "the credential was not removed");
}
