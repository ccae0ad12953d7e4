//! A locked npm tree as files: each tarball unpacked as pacote does it
//! (first path component stripped, links and special files dropped, modes
//! widened to 0644/0755 under umask 022, ownership ignored), placed at its
//! install path under `PREFIX/lib`, with bin links as npm's bin-links makes
//! them (global top-level packages into `PREFIX/bin`, the rest into the
//! nearest `node_modules/.bin`, bundled packages' bins into the `.bin`
//! beside them, relative symlinks, targets made 0755).
//! Guards against hostile tarballs: compressed size, unpacked bytes and
//! entry count are bounded before allocation, paths that climb out (`..`,
//! absolute) are dropped, bin names and targets cannot leave their package.
#![forbid(unsafe_code)]
use super::NpmError;
use crate::layer::bounds::{Limits, TarGuard};
use crate::layer::tree::{clean_path, Entry, Tree};
use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;

/// Most entries one tarball may hold.
pub(crate) const MAX_ENTRIES: usize = 100_000;
/// Most bytes one tarball may unpack to.
pub(crate) const MAX_UNPACKED: u64 = 1 << 30;
/// The umask npm's modes are computed under (its default, 022).
const UMASK: u32 = 0o022;

/// One unpacked file, path relative to the package directory.
#[derive(Debug, Clone)]
pub(crate) struct PkgFile {
    pub(crate) path: String,
    pub(crate) data: Vec<u8>,
    /// The mode the tarball gave it (before npm's widening).
    pub(crate) mode: u32,
}

/// An unpacked package: its files and directories, by relative path.
#[derive(Debug, Default)]
pub(crate) struct Unpacked {
    pub(crate) files: BTreeMap<String, PkgFile>,
    pub(crate) dirs: Vec<String>,
}

/// Unpacks a gzipped package tarball within the bounds.
pub(crate) fn unpack(package: &str, tgz: &[u8]) -> Result<Unpacked, NpmError> {
    let bad = |msg: String| NpmError::Package { package: package.into(), msg: format!("tarball: {msg}") };
    let gz = flate2::read::GzDecoder::new(tgz);
    // Every header is checked (sizes, PAX/long-name records, counts) before
    // the tar crate acts on it, as for every other archive input.
    let limits = Limits { unpacked: MAX_UNPACKED, entries: MAX_ENTRIES as u64, meta: 1 << 20 };
    let mut ar = tar::Archive::new(TarGuard::new(gz, limits));
    let mut out = Unpacked::default();
    let mut total = 0u64;
    let mut saw_npmignore = BTreeSet::new();
    for (n, entry) in ar.entries().map_err(|e| bad(e.to_string()))?.enumerate() {
        if n >= MAX_ENTRIES {
            return Err(bad(format!("more than {MAX_ENTRIES} entries")));
        }
        let mut entry = entry.map_err(|e| bad(e.to_string()))?;
        let raw = entry.path_bytes().into_owned();
        let Ok(raw) = String::from_utf8(raw) else { continue };
        let kind = entry.header().entry_type();
        // pacote: strip the first component; what climbs out is dropped (node-tar).
        let Some((_, rest)) = raw.trim_start_matches('/').split_once('/') else { continue };
        if rest.split('/').any(|c| c == "..") {
            tracing::warn!(event = "npm_entry_dropped", package, path = %raw, "path climbs out of the package");
            continue;
        }
        let Ok(rel) = clean_path(rest) else { continue };
        if rel.is_empty() {
            continue;
        }
        if kind.is_dir() {
            out.dirs.push(rel);
            continue;
        }
        if !(kind.is_file() || kind == tar::EntryType::Continuous) {
            continue; // links and special files: pacote drops them
        }
        let size = entry.header().size().map_err(|e| bad(e.to_string()))?;
        total = total.saturating_add(size);
        if total > MAX_UNPACKED {
            return Err(bad(format!("unpacks to more than {MAX_UNPACKED} bytes")));
        }
        let mode = entry.header().mode().unwrap_or(0o644) & 0o7777;
        let mut data = Vec::with_capacity(size.min(16 << 20) as usize);
        entry.read_to_end(&mut data).map_err(|e| bad(e.to_string()))?;
        // pacote: `.gitignore` becomes `.npmignore` unless one is there already.
        let rel = match rel.strip_suffix(".gitignore") {
            Some(dir) if rel.ends_with("/.gitignore") || rel == ".gitignore" => {
                let ni = format!("{dir}.npmignore");
                if saw_npmignore.contains(&ni) {
                    continue;
                }
                ni
            }
            _ => rel,
        };
        if rel.ends_with(".npmignore") {
            saw_npmignore.insert(rel.clone());
        }
        out.files.insert(rel.clone(), PkgFile { path: rel, data, mode });
    }
    Ok(out)
}

/// A package's bins as npm-normalize-package-bin reads them: name -> target
/// relative to the package (names and targets cleaned, unsafe ones dropped).
pub(crate) fn bins(name: &str, pkg: &Value) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let raw: Vec<(String, String)> = match pkg.get("bin") {
        Some(Value::String(t)) => vec![(name.rsplit('/').next().unwrap_or(name).to_string(), t.clone())],
        Some(Value::Object(o)) => {
            o.iter().filter_map(|(k, v)| v.as_str().map(|v| (k.clone(), v.to_string()))).collect()
        }
        Some(Value::Array(a)) => a
            .iter()
            .filter_map(Value::as_str)
            .map(|v| (v.replace('\\', "/").rsplit('/').next().unwrap_or_default().to_string(), v.to_string()))
            .collect(),
        _ => Vec::new(),
    };
    for (k, v) in raw {
        let k = k.replace(['\\', ':'], "/");
        let base = k.rsplit('/').next().unwrap_or_default().to_string();
        if base.is_empty() || base == "." || base == ".." {
            continue;
        }
        let target = inside(&v.replace('\\', "/"));
        if !target.is_empty() {
            out.insert(base, target);
        }
    }
    out
}

/// One package inside a tarball's `node_modules` (a bundled dependency or
/// one of its own dependencies), as npm's loadActual finds it there.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Inside {
    /// Relative to the package directory: `node_modules/a/node_modules/@s/b`.
    pub(crate) path: String,
    pub(crate) name: String,
    pub(crate) manifest: Value,
}

/// Largest bundled `package.json` read.
const MAX_INSIDE_MANIFEST: usize = 1 << 20;

/// The packages a tarball ships in its own `node_modules`: every
/// `node_modules/NAME/package.json` (`@scope/NAME` too, at any depth) that
/// parses as a JSON object; the directory names the package, as in npm.
pub(crate) fn bundled_packages(u: &Unpacked) -> Vec<Inside> {
    let mut out = Vec::new();
    for (path, f) in &u.files {
        let Some(dir) = path.strip_suffix("/package.json") else { continue };
        let parts: Vec<&str> = dir.split('/').collect();
        let mut i = 0;
        let mut name = None;
        while i < parts.len() {
            if parts[i] != "node_modules" {
                name = None;
                break;
            }
            let (n, step) = match parts.get(i + 1) {
                Some(s) if s.starts_with('@') => match parts.get(i + 2) {
                    Some(b) => (format!("{s}/{b}"), 3),
                    None => break,
                },
                Some(b) => ((*b).to_string(), 2),
                None => break,
            };
            name = Some(n);
            i += step;
        }
        let Some(name) = name.filter(|n| i == parts.len() && super::valid_name(n)) else { continue };
        if f.data.len() > MAX_INSIDE_MANIFEST {
            continue;
        }
        let Ok(manifest @ Value::Object(_)) = serde_json::from_slice::<Value>(&f.data) else { continue };
        out.push(Inside { path: dir.to_string(), name, manifest });
    }
    out
}

/// The mode a file gets: pacote widens it to rw for all, then umask 022,
/// owner rw; bin-links' fixBin makes a linked bin 0755. Setuid, setgid and
/// sticky bits are dropped (npm keeps them: a root-owned setuid file).
pub(crate) fn file_mode(tar_mode: u32, is_bin: bool) -> u32 {
    let m = ((tar_mode | 0o666) & !UMASK & 0o777) | 0o600;
    if is_bin {
        0o777 & !UMASK
    } else {
        m
    }
}

/// bin-links' `fixBin`: a bin whose hashbang line (found in its first 2048
/// bytes) ends in CRLF is rewritten, as UTF-8, with that line ending in LF.
pub(crate) fn unix_hashbang(data: &[u8]) -> Vec<u8> {
    let head = &data[..data.len().min(2048)];
    let crlf = head.starts_with(b"#!")
        && head.iter().position(|&b| b == b'\n').is_some_and(|nl| nl > 3 && head[nl - 1] == b'\r');
    if !crlf {
        return data.to_vec();
    }
    let text = String::from_utf8_lossy(data);
    let Some(nl) = text.find('\n').filter(|&n| n > 0 && text.as_bytes()[n - 1] == b'\r') else {
        return data.to_vec();
    };
    let mut out = String::with_capacity(text.len());
    out.push_str(&text[..nl - 1]);
    out.push_str(&text[nl..]);
    out.into_bytes()
}

/// Relative path from directory `from_dir` to `to` (both root-relative, clean).
pub(crate) fn relative(from_dir: &str, to: &str) -> String {
    let a: Vec<&str> = from_dir.split('/').filter(|s| !s.is_empty()).collect();
    let b: Vec<&str> = to.split('/').filter(|s| !s.is_empty()).collect();
    let common = a.iter().zip(&b).take_while(|(x, y)| x == y).count();
    let mut parts: Vec<&str> = vec![".."; a.len() - common];
    parts.extend(&b[common..]);
    parts.join("/")
}

/// `join('/', p).slice(1)`: a path resolved inside the package (`..`
/// cannot climb above it), without a leading `/`.
fn inside(p: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for c in p.split('/') {
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

/// A package's man pages as bin-links' `linkMans` reads them: (section,
/// path inside the package); an entry without a `.N` or `.N.gz` suffix is
/// an error (npm's EBADMAN), as npm fails the install on it.
pub(crate) fn mans(pkg: &Value) -> Result<Vec<(String, String)>, String> {
    let mut out = Vec::new();
    let Some(list) = pkg.get("man").and_then(Value::as_array) else { return Ok(out) };
    for m in list.iter().filter_map(Value::as_str).filter(|m| !m.is_empty()) {
        let rel = inside(&m.replace(['\\', ':'], "/"));
        let stem = rel.strip_suffix(".gz").unwrap_or(&rel);
        let section: String = stem.rsplit('.').next().unwrap_or_default().to_string();
        if rel.is_empty() || !stem.contains('.') || section.is_empty() || !section.bytes().all(|b| b.is_ascii_digit()) {
            return Err(format!("invalid man entry {m:?}: man files must end with a number, and optionally .gz"));
        }
        if !out.iter().any(|(_, r)| r == &rel) {
            out.push((section, rel));
        }
    }
    Ok(out)
}

/// Where one package's links go, and which link paths are taken already
/// (bin-links never links over a link it made: the first package wins).
pub(crate) struct Links {
    /// `PREFIX/bin` for top-level packages, else `.../node_modules/.bin`.
    pub(crate) bin_dir: String,
    /// `PREFIX/share/man` for top-level packages (global installs only).
    pub(crate) man_dir: Option<String>,
}

/// Places one unpacked package at `dir` (root-relative) in `tree` with its
/// bin links (`bins`: name -> target), the bins of the packages it bundles
/// (`bundled`: path in the package -> its bins, linked into the
/// `node_modules/.bin` beside them, as npm links them) and, for a top-level
/// package, man links.
#[allow(clippy::too_many_arguments)]
pub(crate) fn place(
    tree: &mut Tree,
    dir: &str,
    u: &Unpacked,
    bins: &BTreeMap<String, String>,
    bundled: &[(&str, &BTreeMap<String, String>)],
    mans: &[(String, String)],
    links: &Links,
    taken: &mut BTreeSet<String>,
) -> Result<(), NpmError> {
    tree.insert(Entry::dir(dir, 0o755, 0, 0))?;
    for d in &u.dirs {
        tree.insert(Entry::dir(&format!("{dir}/{d}"), 0o755, 0, 0))?;
    }
    let mut linked = BTreeSet::new();
    for (bin, target) in bins {
        let link = format!("{}/{bin}", links.bin_dir);
        // A missing target is skipped, as npm skips it (no dangling link).
        if u.files.contains_key(target) && taken.insert(link.clone()) {
            tree.insert(Entry::symlink(&link, &relative(&links.bin_dir, &format!("{dir}/{target}"))))?;
            linked.insert(target.clone());
        }
    }
    for (path, bins) in bundled {
        let Some(parent_nm) = path.rfind("node_modules/").map(|i| &path[..i + "node_modules".len()]) else {
            continue;
        };
        let bin_dir = format!("{dir}/{parent_nm}/.bin");
        for (bin, target) in bins.iter() {
            let target = format!("{path}/{target}");
            let link = format!("{bin_dir}/{bin}");
            if u.files.contains_key(&target) && taken.insert(link.clone()) {
                tree.insert(Entry::symlink(&link, &relative(&bin_dir, &format!("{dir}/{target}"))))?;
                linked.insert(target);
            }
        }
    }
    for f in u.files.values() {
        // fixBin (0755, LF hashbang) runs on the bins it linked, and only
        // those: a bin that lost its link to another package's keeps its mode.
        let is_bin = linked.contains(&f.path);
        let data = if is_bin { unix_hashbang(&f.data) } else { f.data.clone() };
        tree.insert(Entry::file(&format!("{dir}/{}", f.path), data, file_mode(f.mode, is_bin)))?;
    }
    if let Some(man_dir) = &links.man_dir {
        for (section, rel) in mans {
            let base = rel.rsplit('/').next().unwrap_or(rel);
            let to_dir = format!("{man_dir}/man{section}");
            let link = format!("{to_dir}/{base}");
            if u.files.contains_key(rel) && taken.insert(link.clone()) {
                tree.insert(Entry::symlink(&link, &relative(&to_dir, &format!("{dir}/{rel}"))))?;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    fn tgz(entries: &[(&str, tar::EntryType, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
        for (path, kind, data) in entries {
            let mut h = tar::Header::new_old();
            h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_entry_type(*kind);
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            if *kind == tar::EntryType::Symlink {
                h.set_link_name("/etc/shadow").unwrap();
            }
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap()
    }

    #[test]
    fn hostile_entries_are_dropped_as_pacote_drops_them() {
        let reg = tar::EntryType::Regular;
        let t = tgz(&[
            ("package/package.json", reg, b"{}"),
            ("package/../../evil", reg, b"x"),
            ("package/a/../../../evil2", reg, b"x"),
            ("package/link", tar::EntryType::Symlink, b""),
            ("package/.gitignore", reg, b"node_modules"),
            ("top-level-only", reg, b"x"),
            ("/package/abs", reg, b"x"),
        ]);
        let u = unpack("p@1", &t).unwrap();
        let names: Vec<&str> = u.files.keys().map(String::as_str).collect();
        assert_eq!(names, [".npmignore", "abs", "package.json"]);
        // A long-name record past the 1 MiB bound is refused before the tar crate reads it.
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
        let mut h = tar::Header::new_gnu();
        h.set_size(1);
        h.set_mode(0o644);
        b.append_data(&mut h, format!("package/{}", "a/".repeat(600_000)), &b"x"[..]).unwrap();
        let r = unpack("p@1", &b.into_inner().unwrap().finish().unwrap());
        assert!(matches!(&r, Err(e) if e.to_string().contains("over the limit")), "a 1.2 MB long name was read");
        let e = unpack("p@1", b"not gzip").unwrap_err().to_string();
        assert!(e.starts_with("package p@1: tarball"), "{e}");
    }

    #[test]
    fn bins_and_modes_as_npm() {
        let b = bins("@s/tool", &json!({"bin": "./cli.js"}));
        assert_eq!(b, BTreeMap::from([("tool".to_string(), "cli.js".to_string())]));
        let b = bins("x", &json!({"bin": {"../evil": "../../etc/passwd", "ok": "./bin/../bin/ok.js"}}));
        assert_eq!(b.get("evil").map(String::as_str), Some("etc/passwd"));
        assert_eq!(b.get("ok").map(String::as_str), Some("bin/ok.js"));
        assert_eq!(bins("x", &json!({"bin": ["./a/run", "b"]})).get("run").map(String::as_str), Some("a/run"));
        assert_eq!(
            mans(&json!({"man": ["./man/x.1", "doc/y.5.gz"]})).unwrap(),
            [("1".into(), "man/x.1".into()), ("5".into(), "doc/y.5.gz".into())]
        );
        assert!(mans(&json!({"man": ["README.md"]})).is_err());
        assert_eq!(file_mode(0o644, false), 0o644);
        assert_eq!(file_mode(0o600, false), 0o644);
        assert_eq!(file_mode(0o744, false), 0o744);
        assert_eq!(file_mode(0o4755, false), 0o755, "no setuid file from a tarball");
        assert_eq!(file_mode(0o644, true), 0o755);
        assert_eq!(unix_hashbang(b"#!/bin/sh\r\necho\r\n"), b"#!/bin/sh\necho\r\n");
        assert_eq!(unix_hashbang(b"#!\r\n"), b"#!\r\n");
        assert_eq!(unix_hashbang(b"echo\r\n"), b"echo\r\n");
        assert_eq!(relative("usr/local/bin", "usr/local/lib/node_modules/a/cli.js"), "../lib/node_modules/a/cli.js");
        assert_eq!(relative("p/node_modules/.bin", "p/node_modules/@s/b/x.js"), "../@s/b/x.js");
    }
}
