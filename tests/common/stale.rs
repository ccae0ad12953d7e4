//! Removes the sandboxes an earlier, killed run of a test binary left in
//! its test home, before that home is deleted: a detached sandbox that was
//! never removed keeps its workspace mounted and locked, so deleting the
//! home under it leaves the old home half alive and the next `run -d` of
//! the same name waits forever on the lock.
use std::path::Path;
use std::process::{Command, Stdio};

/// `moat rm --force` of every sandbox recorded under `home/home` (MOAT_HOME)
/// with `home/run` as the runtime directory.
pub fn remove_stale_sandboxes(home: &Path) {
    let Ok(rd) = std::fs::read_dir(home.join("home/sandboxes")) else { return };
    for e in rd.flatten() {
        let _ = Command::new(env!("CARGO_BIN_EXE_moat"))
            .args(["rm", "--force"])
            .arg(e.file_name())
            .env("MOAT_HOME", home.join("home"))
            .env("MOAT_RUN_DIR", home.join("run"))
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .output();
    }
}
