//! Which paths never reach an image: the toolchain defaults (compilers, make
//! and network probes — the seed's "build toolchain removal") plus a
//! blueprint's `[strip] paths` globs. Also used by `moat audit` to find them.
#![forbid(unsafe_code)]
use globset::{Glob, GlobSet, GlobSetBuilder};

/// Directories whose executables are on PATH (root-relative).
pub(crate) const BIN_DIRS: &[&str] = &["bin", "sbin", "usr/bin", "usr/sbin", "usr/local/bin", "usr/local/sbin"];

/// Basename patterns of toolchain binaries, each with the reason it is removed.
pub(crate) const TOOLCHAIN: &[(&str, &str)] = &[
    ("gcc", "C compiler: builds kernel exploits and custom network tools"),
    ("gcc-*", "versioned C compiler"),
    ("*-gcc", "cross/triplet C compiler"),
    ("*-gcc-*", "versioned triplet C compiler"),
    ("g++*", "C++ compiler"),
    ("*-g++*", "triplet C++ compiler"),
    ("cc", "C compiler alternative"),
    ("c++", "C++ compiler alternative"),
    ("c89*", "C compiler wrapper"),
    ("c99*", "C compiler wrapper"),
    ("cpp", "C preprocessor (gcc front end)"),
    ("cpp-*", "versioned C preprocessor"),
    ("*-cpp*", "triplet C preprocessor"),
    ("clang*", "C compiler"),
    ("tcc", "C compiler"),
    ("make", "build driver: runs arbitrary build recipes"),
    ("gmake", "build driver"),
    ("nc", "netcat: raw TCP/UDP connections around HTTP policy"),
    ("nc.*", "netcat variant (nc.openbsd, nc.traditional)"),
    ("netcat*", "netcat variant"),
    ("ncat", "nmap's netcat"),
];

/// Compiler back ends outside PATH (root-relative globs).
const TOOLCHAIN_PATHS: &[&str] =
    &["usr/lib/gcc/**/cc1*", "usr/libexec/gcc/**/cc1*", "usr/lib/gcc/**/collect2", "usr/libexec/gcc/**/collect2"];

#[derive(Debug, thiserror::Error)]
#[error("bad strip glob {glob:?}: {msg}")]
pub struct StripError {
    pub glob: String,
    pub msg: String,
}

/// Matches paths to strip.
#[derive(Debug, Clone)]
pub(crate) struct Stripper {
    user: GlobSet,
    tool_names: GlobSet,
    tool_paths: GlobSet,
    toolchain: bool,
}

fn build(globs: impl IntoIterator<Item = String>) -> Result<GlobSet, StripError> {
    let mut b = GlobSetBuilder::new();
    for g in globs {
        let glob = Glob::new(&g).map_err(|e| StripError { glob: g.clone(), msg: e.to_string() })?;
        b.add(glob);
    }
    b.build().map_err(|e| StripError { glob: String::new(), msg: e.to_string() })
}

impl Stripper {
    pub(crate) fn new(paths: &[String], toolchain: bool) -> Result<Stripper, StripError> {
        Ok(Stripper {
            user: build(paths.iter().map(|p| p.trim_start_matches('/').to_string()))?,
            tool_names: build(TOOLCHAIN.iter().map(|(p, _)| p.to_string()))?,
            tool_paths: build(TOOLCHAIN_PATHS.iter().map(|p| p.to_string()))?,
            toolchain,
        })
    }
    /// Whether a root-relative path must not be in the image.
    pub(crate) fn matches(&self, path: &str) -> bool {
        self.user.is_match(path) || (self.toolchain && is_toolchain(self, path))
    }
}

fn is_toolchain(s: &Stripper, path: &str) -> bool {
    if s.tool_paths.is_match(path) {
        return true;
    }
    let (dir, base) = path.rsplit_once('/').unwrap_or(("", path));
    BIN_DIRS.contains(&dir) && s.tool_names.is_match(base)
}

/// The toolchain reason for `path`, if it is a toolchain binary. The
/// matcher is compiled once (audit calls this for every file of an image).
pub(crate) fn toolchain_reason(path: &str) -> Option<&'static str> {
    static TOOLS: std::sync::LazyLock<Option<Stripper>> = std::sync::LazyLock::new(|| Stripper::new(&[], true).ok());
    let s = TOOLS.as_ref()?;
    if s.tool_paths.is_match(path) {
        return Some("compiler back end");
    }
    let (dir, base) = path.rsplit_once('/').unwrap_or(("", path));
    if !BIN_DIRS.contains(&dir) {
        return None;
    }
    // tool_names was built from TOOLCHAIN in order, so indices line up.
    s.tool_names.matches(base).into_iter().next().map(|i| TOOLCHAIN[i].1)
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn toolchain_defaults() {
        let s = Stripper::new(&["usr/share/doc/**".into()], true).unwrap();
        for p in [
            "usr/bin/gcc",
            "usr/bin/gcc-12",
            "usr/bin/x86_64-linux-gnu-gcc-12",
            "usr/bin/g++",
            "usr/bin/cpp-12",
            "usr/bin/make",
            "bin/nc.openbsd",
            "usr/bin/ncat",
            "usr/bin/netcat",
            "usr/lib/gcc/x86_64-linux-gnu/12/cc1",
            "usr/share/doc/x/README",
        ] {
            assert!(s.matches(p), "{p}");
        }
        for p in [
            "usr/lib/x86_64-linux-gnu/libgcc_s.so.1",
            "usr/bin/makeinfo",
            "usr/bin/ncurses6-config",
            "usr/bin/python3",
            "etc/make.conf",
        ] {
            assert!(!s.matches(p), "{p}");
        }
        assert!(toolchain_reason("usr/bin/gcc").is_some());
        assert!(toolchain_reason("usr/bin/git").is_none());
    }
}
