//! `moat audit`: inspects an image's final filesystem (all layers, whiteouts
//! applied) for what the seed forbids or flags: toolchain binaries
//! (compilers, make, netcat) in any directory and toolchains' library
//! directories, setuid/setgid files and world-writable paths. Guards
//! against a compiler hidden where the build's strip does not look
//! (`/opt/cc/bin/gcc`, `~/.local/bin/tcc`, `/usr/lib/*/gcc`). Also names
//! the npm packages that declare install scripts moat did not run.
#![forbid(unsafe_code)]
use crate::layer::read::{self as layer_read, ReadError};
use crate::store::Store;
use crate::strip;
use globset::{Glob, GlobSet, GlobSetBuilder};
use serde::Serialize;

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub image: String,
    pub toolchain: Vec<Finding>,
    pub setuid: Vec<Finding>,
    pub world_writable: Vec<Finding>,
    /// npm packages that declare install scripts (never run; reported, not failed).
    #[serde(default)]
    pub install_scripts: Vec<Finding>,
}

#[derive(Debug, Serialize)]
pub struct Finding {
    pub path: String,
    pub mode: String,
    pub why: String,
}

/// Audits the image `reference` in `store`.
pub fn audit(store: &Store, reference: &str) -> Result<Report, ReadError> {
    let img = store.resolve(reference)?;
    let manifest = store.manifest(&img.manifest.digest)?;
    let npm = crate::npm::sbom::SBOM_DATA;
    let view = layer_read::merged(store, &manifest.layers, &|p| p == npm)?;
    let mut r = Report { image: format!("{}@{}", img.name, img.manifest.digest), ..Default::default() };
    for (path, e) in &view {
        let mode = format!("{:04o}", e.mode);
        let abs = format!("/{path}");
        if let Some(why) = toolchain(path, e.flag, e.mode) {
            r.toolchain.push(Finding { path: abs.clone(), mode: mode.clone(), why });
        }
        if (e.flag == b'0' || e.flag == b'1') && e.mode & 0o6000 != 0 {
            let why = match (e.mode & 0o4000 != 0, e.mode & 0o2000 != 0) {
                (true, true) => "setuid and setgid",
                (true, false) => "setuid",
                _ => "setgid",
            };
            r.setuid.push(Finding {
                path: abs.clone(),
                mode: mode.clone(),
                why: format!("{why} (owner {}:{})", e.uid, e.gid),
            });
        }
        if e.flag != b'2' && e.mode & 0o002 != 0 {
            let why = if e.flag == b'5' && e.mode & 0o1000 != 0 {
                "world-writable directory (sticky)"
            } else {
                "world-writable"
            };
            r.world_writable.push(Finding { path: abs, mode, why: why.into() });
        }
    }
    if let Some(data) = view.get(npm).and_then(|e| e.data.as_ref()) {
        r.install_scripts = crate::npm::sbom::install_scripts(data)
            .into_iter()
            .map(|(path, why)| Finding { path, mode: String::new(), why })
            .collect();
    }
    Ok(r)
}

/// Directories only a compiler installs (its back ends, specs, crt files and
/// headers), at any prefix: `usr/lib/gcc`, `usr/lib/x86_64-linux-gnu/gcc`,
/// `usr/libexec/gcc`, `opt/cc/lib/gcc-cross`, tcc's `lib/tcc`. Runtime
/// libraries (`libgcc_s.so.1`) are files in `lib/TRIPLET/`, never these.
const TOOLCHAIN_DIRS: &[&str] = &[
    "**/lib/gcc",
    "**/lib/gcc-*",
    "**/lib/*/gcc",
    "**/lib/*/gcc-*",
    "**/libexec/gcc",
    "**/libexec/gcc-*",
    "**/lib/tcc",
    "**/lib/*/tcc",
];

/// Why `path` (root-relative, tar type `flag`, permission bits `mode`) is a
/// toolchain, if it is one: a toolchain name in a PATH directory or a back
/// end (what the build strips), a toolchain name on an executable or a
/// symlink in any other directory, or a toolchain's library directory.
fn toolchain(path: &str, flag: u8, mode: u32) -> Option<String> {
    static MATCH: std::sync::LazyLock<Option<(GlobSet, GlobSet)>> = std::sync::LazyLock::new(|| {
        let set = |globs: &mut dyn Iterator<Item = &str>| {
            let mut b = GlobSetBuilder::new();
            for g in globs {
                b.add(Glob::new(g).ok()?);
            }
            b.build().ok()
        };
        Some((set(&mut strip::TOOLCHAIN.iter().map(|(g, _)| *g))?, set(&mut TOOLCHAIN_DIRS.iter().copied())?))
    });
    let (names, dirs) = MATCH.as_ref()?;
    match flag {
        b'0' | b'1' | b'2' => {
            if let Some(why) = strip::toolchain_reason(path) {
                return Some(why.into());
            }
            let base = path.rsplit_once('/').map_or(path, |(_, b)| b);
            let runnable = flag == b'2' || mode & 0o111 != 0;
            let i = names.matches(base).into_iter().next().filter(|_| runnable)?;
            let (_, why) = strip::TOOLCHAIN.get(i)?;
            let kind = if flag == b'2' { "symlink" } else { "executable" };
            Some(format!("{why} ({kind} outside PATH's directories: runnable by its path or a PATH the agent sets)"))
        }
        b'5' if dirs.is_match(path.trim_end_matches('/')) => {
            Some("a toolchain's library directory (back ends, crt files, specs)".into())
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::toolchain;
    #[test]
    fn toolchains_are_found_in_any_directory() {
        for (p, flag, mode) in [
            ("usr/bin/gcc", b'0', 0o644),
            ("opt/cc/bin/gcc", b'0', 0o755),
            ("sandbox/.local/bin/tcc", b'0', 0o700),
            ("srv/tools/x86_64-linux-gnu-gcc-12", b'2', 0o777),
            ("usr/lib/gcc/x86_64-linux-gnu/12/cc1", b'0', 0o755),
        ] {
            assert!(toolchain(p, flag, mode).is_some(), "{p}");
        }
        for p in
            ["usr/lib/x86_64-linux-gnu/gcc", "usr/lib/gcc", "usr/lib/gcc-cross", "usr/libexec/gcc", "opt/cc/lib/gcc"]
        {
            assert!(toolchain(p, b'5', 0o755).is_some(), "{p}");
        }
        for (p, flag, mode) in [
            ("usr/share/doc/make", b'0', 0o644),
            ("var/lib/dpkg/info/gcc-12-base:amd64.list", b'0', 0o644),
            ("usr/lib/x86_64-linux-gnu/libgcc_s.so.1", b'0', 0o644),
            ("usr/share/doc/gcc-12-base", b'5', 0o755),
            ("usr/lib/python3/gccish", b'5', 0o755),
            ("opt/app/bin/maker", b'0', 0o755),
        ] {
            assert!(toolchain(p, flag, mode).is_none(), "{p}");
        }
    }
}
