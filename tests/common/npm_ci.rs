//! Installs a test's host-side node oracle (a directory of tests/ with
//! package.json and package-lock.json): its files copied into a directory
//! of this test process, then `npm ci --ignore-scripts` from the npm
//! registry. Guards the oracles against drifting: the lock pins every
//! package by integrity.
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Copies `files` of `tests/NAME` into `dir` (made afresh) and runs `npm
/// ci` there; returns `dir`. Fails the test, naming NAME, when npm does.
pub fn install(name: &str, files: &[&str], dir: PathBuf) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests").join(name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in files {
        std::fs::copy(src.join(f), dir.join(f)).unwrap_or_else(|e| panic!("copy {f}: {e}"));
    }
    let out = Command::new("npm")
        .args(["ci", "--ignore-scripts", "--no-audit", "--no-fund", "--loglevel=error"])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .output()
        .expect("run npm ci");
    assert!(
        out.status.success(),
        "npm ci of tests/{name} failed (the npm registry must be reachable): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}
