//! Where moat keeps state (DESIGN.md "Where state lives"): the image store and
//! MOAT_HOME. One place decides, so no command can write somewhere surprising.
#![forbid(unsafe_code)]
use std::env;
use std::path::{Path, PathBuf};

/// `MOAT_HOME`, else `/var/lib/moat` for root, else `$XDG_STATE_HOME/moat`
/// (default `~/.local/state/moat`).
pub fn moat_home() -> PathBuf {
    if let Some(h) = env::var_os("MOAT_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(h);
    }
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/moat");
    }
    if let Some(x) = env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("moat");
    }
    let home = env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join(".local/state/moat")
}

/// Content-addressed download and layer caches.
pub fn cache_dir() -> PathBuf {
    moat_home().join("cache")
}

/// `explicit` (`--store`), else `MOAT_STORE`, else the `images/` folder of the
/// enclosing moat project (nearest parent of the current directory holding
/// `blueprints/`), else `$MOAT_HOME/images`.
pub fn store_dir(explicit: Option<&Path>) -> PathBuf {
    if let Some(p) = explicit {
        return p.to_path_buf();
    }
    if let Some(s) = env::var_os("MOAT_STORE").filter(|v| !v.is_empty()) {
        return PathBuf::from(s);
    }
    if let Ok(cwd) = env::current_dir() {
        if let Some(project) = project_root(&cwd) {
            return project.join("images");
        }
    }
    moat_home().join("images")
}

/// The nearest ancestor of `start` (inclusive) that holds a `blueprints/` directory.
pub fn project_root(start: &Path) -> Option<PathBuf> {
    start.ancestors().find(|p| p.join("blueprints").is_dir()).map(Path::to_path_buf)
}

/// A name that breaks the sandbox-name rule of [`check_sandbox_name`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid sandbox name {0:?}: use 1-63 of a-z A-Z 0-9 _ . - (not starting with . or -)")]
pub struct BadSandboxName(pub String);

/// The one sandbox-name rule. A sandbox name becomes one path component
/// under MOAT_HOME (`sandboxes/NAME`, `snapshots/refs/NAME`) and a cgroup
/// (`/moat/NAME`), so it is a closed alphabet, never a path: 1-63 of
/// `a-z A-Z 0-9 _ . -`, not starting with `.` or `-`. The supervisor's
/// sandbox state and the snapshot repository both check names with it.
pub fn check_sandbox_name(name: &str) -> Result<(), BadSandboxName> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && !name.starts_with(['.', '-'])
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(BadSandboxName(name.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sandbox_names_are_a_closed_alphabet() {
        for ok in ["a", "agent-1", "A_b.c", &"x".repeat(63)] {
            assert!(check_sandbox_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", ".hidden", "-x", "a/b", "../x", "a b", "ü", &"x".repeat(64)] {
            assert_eq!(check_sandbox_name(bad), Err(BadSandboxName(bad.into())), "{bad}");
        }
    }
}
