//! Unpacks a `.deb` (ar, then control.tar and data.tar in xz/zst/gz) into
//! tree entries without running any maintainer script, rewriting paths for
//! merged /usr. Guards against archive tricks: paths are cleaned (no `..`),
//! devices/FIFOs are refused, hardlinks must point inside the package, no
//! file lies under one of its symlinks, and the ar headers, tar sizes and
//! decompressed bytes are bounded (`layer::bounds`) before any allocation.
#![forbid(unsafe_code)]
use super::DebianError;
use crate::layer::bounds::{self, TarGuard};
use crate::layer::tree::{clean_path, Content, Entry, Kind, Tree};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::sync::Arc;

/// Top-level directories that are symlinks into /usr on a merged-/usr system.
pub(crate) const MERGED: &[&str] = &["bin", "sbin", "lib", "lib32", "lib64", "libx32"];

/// What one package contributes: its files (merged-/usr paths) and the
/// control data the dpkg database needs.
#[derive(Debug, Clone, Default)]
pub(crate) struct DebContents {
    pub control: String,
    pub conffiles: Vec<String>,
    pub md5sums: Option<Vec<u8>>,
    /// Paths as the package ships them (`/bin/bash`), in archive order, for info/*.list.
    pub list: Vec<String>,
    /// Entries with merged-/usr paths, sorted by path.
    pub entries: BTreeMap<String, Entry>,
    /// Merged roots (`bin`, `lib`, ...) this package ships something under.
    pub merged_roots: BTreeSet<String>,
}

/// `bin/x` -> `usr/bin/x`; `var/run/x` -> `run/x` and `var/lock/x` ->
/// `run/lock/x` (base-files' postinst turns those two into symlinks); other
/// paths unchanged.
pub(crate) fn merge_usr(path: &str) -> String {
    let first = path.split('/').next().unwrap_or("");
    if MERGED.contains(&first) {
        return format!("usr/{path}");
    }
    for (from, to) in [("var/run/", "run/"), ("var/lock/", "run/lock/")] {
        if let Some(rest) = path.strip_prefix(from) {
            return format!("{to}{rest}");
        }
    }
    path.to_string()
}

/// The symlinks a merged-/usr Debian root has where packages ship directories.
pub(crate) const ROOT_LINKS: &[(&str, &str)] = &[
    ("bin", "usr/bin"),
    ("lib", "usr/lib"),
    ("lib32", "usr/lib32"),
    ("lib64", "usr/lib64"),
    ("libx32", "usr/libx32"),
    ("sbin", "usr/sbin"),
    ("var/lock", "/run/lock"),
    ("var/run", "/run"),
];

/// A decompressing reader for an ar member, chosen by its name.
fn decompress<'a>(name: &str, data: &'a [u8]) -> Result<Box<dyn Read + 'a>, String> {
    Ok(if name.ends_with(".xz") {
        Box::new(liblzma::read::XzDecoder::new(data))
    } else if name.ends_with(".zst") {
        Box::new(zstd::stream::read::Decoder::new(data).map_err(|e| format!("{name}: {e}"))?)
    } else if name.ends_with(".gz") {
        Box::new(flate2::read::GzDecoder::new(data))
    } else if name.ends_with(".tar") {
        Box::new(data)
    } else {
        return Err(format!("unsupported member {name}"));
    })
}

/// Root-relative parent directory of a clean path (`""` for top level).
fn parent(p: &str) -> &str {
    p.rsplit_once('/').map(|(a, _)| a).unwrap_or("")
}

/// Resolves `target` relative to directory `dir` (clamped at the root, as the
/// kernel does) into a clean root-relative path.
fn resolve_rel(dir: &str, target: &str) -> String {
    let mut parts: Vec<&str> =
        if target.starts_with('/') { Vec::new() } else { dir.split('/').filter(|s| !s.is_empty()).collect() };
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            c => parts.push(c),
        }
    }
    parts.join("/")
}

/// A relative symlink target from directory `from` to path `to`.
fn relative(from: &str, to: &str) -> String {
    let f: Vec<&str> = from.split('/').filter(|s| !s.is_empty()).collect();
    let t: Vec<&str> = to.split('/').filter(|s| !s.is_empty()).collect();
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut out: Vec<&str> = vec![".."; f.len() - common];
    out.extend(&t[common..]);
    if out.is_empty() {
        ".".into()
    } else {
        out.join("/")
    }
}

/// Runs `f` on every entry of the tar in `r`, each header checked against
/// `bounds::LIMITS` before the tar crate reads it.
fn tar_entries<R: Read>(
    r: R,
    what: &str,
    mut f: impl FnMut(String, &mut tar::Entry<TarGuard<R>>) -> Result<(), String>,
) -> Result<(), String> {
    let mut ar = tar::Archive::new(TarGuard::new(r, bounds::LIMITS));
    for e in ar.entries().map_err(|e| format!("{what}: {e}"))? {
        let mut e = e.map_err(|e| format!("{what}: {e}"))?;
        let raw = e.path_bytes();
        let p = std::str::from_utf8(&raw).map_err(|_| format!("{what}: non-UTF-8 path"))?.to_string();
        f(p, &mut e).map_err(|e| format!("{what}: {e}"))?;
    }
    Ok(())
}

/// Unpacks a `.deb` in memory as the build unpacks a mirror package and
/// keeps nothing; returns how many entries it ships. The package parser's
/// public entry point (used by `fuzz/`).
pub fn unpack_check(deb: &[u8]) -> Result<usize, DebianError> {
    Ok(extract("input", deb)?.entries.len())
}

/// Unpacks one verified `.deb`.
pub(crate) fn extract(pkg: &str, deb: &[u8]) -> Result<DebContents, DebianError> {
    let err = |msg: String| DebianError::Deb { package: pkg.to_string(), msg };
    // Every ar header is checked before the ar crate parses one.
    bounds::check_deb_ar(deb).map_err(|e| err(format!("ar: {e}")))?;
    let mut control_tar = None;
    let mut data_tar = None;
    let mut ar = ar::Archive::new(deb);
    while let Some(m) = ar.next_entry() {
        let mut m = m.map_err(|e| err(format!("ar: {e}")))?;
        let name = String::from_utf8_lossy(m.header().identifier()).trim_end_matches('/').to_string();
        let mut buf = Vec::new();
        // At most the .deb's own size: check_deb_ar bounded every member.
        m.read_to_end(&mut buf).map_err(|e| err(format!("ar member {name}: {e}")))?;
        if name.starts_with("control.tar") {
            control_tar = Some((name, buf));
        } else if name.starts_with("data.tar") {
            data_tar = Some((name, buf));
        }
    }
    let (control_name, control_tar) = control_tar.ok_or_else(|| err("no control.tar member".into()))?;
    let (data_name, data_tar) = data_tar.ok_or_else(|| err("no data.tar member".into()))?;
    let mut out = DebContents::default();
    tar_entries(decompress(&control_name, &control_tar).map_err(err)?, &control_name, |p, e| {
        let mut b = Vec::new();
        e.read_to_end(&mut b).map_err(|x| x.to_string())?;
        match clean_path(&p).unwrap_or_default().as_str() {
            "control" => out.control = String::from_utf8(b).map_err(|_| "control is not UTF-8".to_string())?,
            "conffiles" => {
                out.conffiles = String::from_utf8_lossy(&b)
                    .lines()
                    .map(|l| l.trim().to_string())
                    .filter(|l| !l.is_empty())
                    .collect()
            }
            "md5sums" => out.md5sums = Some(b),
            _ => {}
        }
        Ok(())
    })
    .map_err(err)?;
    if out.control.is_empty() {
        return Err(err("control.tar has no control file".into()));
    }
    let mut links: Vec<(String, String)> = Vec::new();
    tar_entries(decompress(&data_name, &data_tar).map_err(err)?, &data_name, |p, e| {
        let orig = clean_path(&p).map_err(|x| x.to_string())?;
        if orig.is_empty() {
            return Ok(());
        }
        out.list.push(format!("/{orig}"));
        for (l, _) in ROOT_LINKS {
            if orig == *l || orig.strip_prefix(l).is_some_and(|r| r.starts_with('/')) {
                out.merged_roots.insert(l.to_string());
            }
        }
        let path = merge_usr(&orig);
        let h = e.header();
        let mode = h.mode().map_err(|x| x.to_string())? & 0o7777;
        let uid = h.uid().map_err(|x| x.to_string())? as u32;
        let gid = h.gid().map_err(|x| x.to_string())? as u32;
        let link = || -> Result<String, String> {
            let l = e.link_name_bytes().ok_or_else(|| format!("{orig}: link without a target"))?;
            Ok(std::str::from_utf8(&l).map_err(|_| format!("{orig}: non-UTF-8 link"))?.to_string())
        };
        if ROOT_LINKS.iter().any(|(l, _)| *l == orig) {
            // The directory itself becomes a symlink (emitted by the layer).
            return Ok(());
        }
        let kind = match h.entry_type() {
            tar::EntryType::Directory => Kind::Dir,
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let mut b = Vec::new();
                e.read_to_end(&mut b).map_err(|x| x.to_string())?;
                Kind::File { size: b.len() as u64, content: Content::Bytes(Arc::new(b)) }
            }
            tar::EntryType::Symlink => {
                let t = link()?;
                if !t.starts_with('/') && path != orig {
                    // Moved by merged /usr: keep a relative target pointing where it did.
                    let abs = merge_usr(&resolve_rel(parent(&orig), &t));
                    Kind::Symlink(relative(parent(&path), &abs))
                } else {
                    Kind::Symlink(t)
                }
            }
            tar::EntryType::Link => {
                let t = merge_usr(&clean_path(&link()?).map_err(|x| x.to_string())?);
                links.push((path.clone(), t.clone()));
                Kind::Hardlink(t)
            }
            other => return Err(format!("{orig}: unsupported entry type {other:?} (devices and FIFOs are refused)")),
        };
        let entry = Entry { path: path.clone(), kind, mode, uid, gid, xattrs: BTreeMap::new() };
        match out.entries.get(&path) {
            // /bin/x and /usr/bin/x in one package: keep the real file, drop the symlink.
            Some(old) if matches!(old.kind, Kind::File { .. }) && matches!(entry.kind, Kind::Symlink(_)) => {}
            _ => {
                out.entries.insert(path, entry);
            }
        }
        Ok(())
    })
    .map_err(err)?;
    fix_hardlinks(&mut out.entries, &links).map_err(err)?;
    let mut tree = Tree::new();
    for e in out.entries.values() {
        tree.insert(e.clone()).map_err(|e| err(e.to_string()))?;
    }
    tree.check_symlink_parents().map_err(|e| err(e.to_string()))?;
    Ok(out)
}

/// Makes the first path (in sort order) of each hardlink group the regular
/// file and points the others at it, as archive readers need.
fn fix_hardlinks(entries: &mut BTreeMap<String, Entry>, links: &[(String, String)]) -> Result<(), String> {
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (p, t) in links {
        groups.entry(t.clone()).or_default().push(p.clone());
    }
    for (target, mut members) in groups {
        let file = entries
            .get(&target)
            .cloned()
            .ok_or_else(|| format!("hardlink to {target}, which the package does not ship"))?;
        if !matches!(file.kind, Kind::File { .. }) {
            return Err(format!("hardlink to {target}, which is not a regular file"));
        }
        members.push(target.clone());
        members.sort();
        members.dedup();
        let first = members[0].clone();
        for m in &members {
            let mut e = file.clone();
            e.path = m.clone();
            if *m != first {
                e.kind = Kind::Hardlink(first.clone());
            }
            entries.insert(m.clone(), e);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn merged_usr_paths() {
        assert_eq!(merge_usr("bin/bash"), "usr/bin/bash");
        assert_eq!(merge_usr("lib64/ld.so"), "usr/lib64/ld.so");
        assert_eq!(merge_usr("binx/y"), "binx/y");
        assert_eq!(merge_usr("usr/bin/x"), "usr/bin/x");
        assert_eq!(merge_usr("var/run/x"), "run/x");
        assert_eq!(merge_usr("var/runx"), "var/runx");
        // bin/foo -> ../usr/bin/foo moved to usr/bin/foo must still reach usr/bin/foo
        let abs = merge_usr(&resolve_rel("bin", "../usr/bin/foo"));
        assert_eq!(relative("usr/bin", &abs), "foo");
        let abs = merge_usr(&resolve_rel("lib/x86_64-linux-gnu", "libz.so.1.2"));
        assert_eq!(relative("usr/lib/x86_64-linux-gnu", &abs), "libz.so.1.2");
        assert_eq!(relative("usr/sbin", "usr/bin/x"), "../bin/x");
        assert_eq!(resolve_rel("a", "../../../x"), "x");
    }
    #[test]
    fn hostile_ar_headers_are_refused_before_the_ar_crate() {
        let member = |name: &str, data: &[u8]| {
            let mut v = format!("{name:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n", 0, 0, 0, 100644, data.len()).into_bytes();
            v.extend_from_slice(data);
            v
        };
        let deb = |members: &[Vec<u8>]| [b"!<arch>\n".to_vec(), members.concat()].concat();
        // A GNU name-table offset past a table that is not there (the ar
        // crate indexes with it and panics).
        let e = extract("p", &deb(&[member("debian-binary", b"2.0\n"), member("/9999", b"xx")])).unwrap_err();
        assert!(e.to_string().contains("\"/9999\""), "{e}");
        // An empty data member.
        let e = extract("p", &deb(&[member("debian-binary", b"2.0\n"), member("data.tar.xz", b"")])).unwrap_err();
        assert!(e.to_string().contains("\"data.tar.xz\" is empty"), "{e}");
    }
    #[test]
    fn mutated_ar_headers_are_refused_or_read_never_panic() {
        let tar = |name: &str, body: &[u8]| {
            let mut b = tar::Builder::new(Vec::new());
            let mut h = tar::Header::new_ustar();
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            h.set_uid(0);
            h.set_gid(0);
            h.set_mtime(0);
            b.append_data(&mut h, name, body).unwrap();
            b.into_inner().unwrap()
        };
        let member = |name: &str, data: &[u8]| {
            let mut v = format!("{name:<16}{:<12}{:<6}{:<6}{:<8}{:<10}`\n", 0, 0, 0, 100644, data.len()).into_bytes();
            v.extend_from_slice(data);
            if data.len() % 2 == 1 {
                v.push(b'\n');
            }
            v
        };
        let members = [
            member("debian-binary", b"2.0\n"),
            member("control.tar", &tar("control", b"Package: p\n")),
            member("data.tar", &tar("usr/share/p", b"p\n")),
        ];
        let offsets: Vec<usize> = members.iter().scan(8, |at, m| Some(std::mem::replace(at, *at + m.len()))).collect();
        let base = [b"!<arch>\n".to_vec(), members.concat()].concat();
        extract("p", &base).unwrap();
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut rng = |n: usize| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % n as u64) as usize
        };
        for _ in 0..3000 {
            let mut m = base.clone();
            let at = offsets[rng(offsets.len())];
            match rng(4) {
                // A GNU or BSD extended name with a random offset or length.
                0 => {
                    let name = format!("{}{}", ["/", "#1/", "//"][rng(3)], rng(100_000));
                    m[at..at + 16].copy_from_slice(format!("{name:<16}").as_bytes());
                }
                // A random size.
                1 => m[at + 48..at + 58].copy_from_slice(format!("{:<10}", rng(10_000_000_000)).as_bytes()),
                2 => m.truncate(rng(m.len())),
                _ => {
                    let i = rng(m.len());
                    m[i] = [0, b'/', b' ', b'9', b'`', b'\n'][rng(6)];
                }
            }
            let _ = extract("p", &m);
            let _ = crate::layer::tar_in::deb_data_tar(&m);
        }
    }
}
