//! Shared helpers for end-to-end tests of the `moat` binary.
#![allow(dead_code)]
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};

/// The moat binary under test.
pub fn moat_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_moat"))
}

/// A `moat` command with its own MOAT_HOME (no shared caches between tests)
/// and no inherited store.
pub fn moat(home: &Path) -> Command {
    let mut c = Command::new(moat_bin());
    c.env("MOAT_HOME", home).env_remove("MOAT_STORE").env_remove("RUST_LOG");
    c
}

/// Runs a command and returns (exit code, stdout, stderr).
pub fn run(mut c: Command) -> (i32, String, String) {
    let out: Output = c.output().expect("spawn");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs with stdin and stdout empty and stderr a pipe whose reader is gone
/// before the command writes to it (`moat ... 2>&1 | head -0`); returns how
/// it exited.
pub fn status_with_stderr_gone(c: &mut Command) -> ExitStatus {
    let mut child = c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("spawn");
    drop(child.stderr.take());
    child.wait().expect("wait")
}

/// Runs and asserts success, returning stdout.
pub fn ok(c: Command) -> String {
    let dbg = format!("{c:?}");
    let (code, out, err) = run(c);
    assert_eq!(code, 0, "{dbg} failed ({code}):\nstdout:\n{out}\nstderr:\n{err}");
    out
}

/// Fails the test (never skips) when a tool the test needs is missing.
pub fn require_tool(name: &str) {
    let found =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file())).unwrap_or(false);
    assert!(found, "{name} is not installed: run scripts/install-deps.sh (as root) first");
}

/// Copies a directory tree (files, dirs, symlinks), like `cp -a`.
pub fn copy_tree(from: &Path, to: &Path) {
    let st = Command::new("cp").arg("-a").arg(from).arg(to).status().expect("cp");
    assert!(st.success(), "cp -a {} {}", from.display(), to.display());
}

/// The repository root (where Cargo.toml lives).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}
