//! One wheel laid out as `pip install --no-deps --no-compile` lays it out
//! (pip's `_install_wheel`): the root and `.data/purelib|platlib` into the
//! target, `.data/scripts` (their `#!python` line rewritten) into PREFIX/bin,
//! `.data/data` into PREFIX, `.data/headers` into the include directory
//! of the package's name, console and GUI entry points as pip's
//! script template, then INSTALLER, REQUESTED and RECORD rewritten as pip
//! rewrites it. Guards against wheel paths that leave their scheme
//! directory (refused, naming the package) and host-dependent bytes (modes
//! from the executable bit only, no bytecode, no timestamps).
#![forbid(unsafe_code)]
use super::target::Target;
use super::wheel::Member;
use super::PypiError;
use crate::layer::tree::{clean_path, Entry, Tree};
use base64::Engine as _;
use sha2::Digest as _;
use std::collections::{BTreeMap, BTreeSet};
use std::str::FromStr;

/// What moat writes to each dist-info's INSTALLER (pip writes `pip`).
pub(crate) const INSTALLER: &[u8] = b"moat\n";

/// distlib's script template, as pip 23 writes console and GUI scripts.
fn script(python: &str, value: &str) -> Result<Vec<u8>, String> {
    let value = value.split('[').next().unwrap_or_default().trim();
    let (module, attr) = value.split_once(':').ok_or_else(|| format!("entry point {value:?} is not MODULE:ATTR"))?;
    let (module, attr) = (module.trim(), attr.trim());
    let ident = |s: &str| {
        !s.is_empty() && s.split('.').all(|p| !p.is_empty() && p.chars().all(|c| c.is_alphanumeric() || c == '_'))
    };
    if !ident(module) || !ident(attr) {
        return Err(format!("entry point {value:?} is not MODULE:ATTR"));
    }
    let import = attr.split('.').next().unwrap_or(attr);
    Ok(format!(
        "#!{python}\n# -*- coding: utf-8 -*-\nimport re\nimport sys\nfrom {module} import {import}\n\
         if __name__ == '__main__':\n    sys.argv[0] = re.sub(r'(-script\\.pyw|\\.exe)?$', '', sys.argv[0])\n    \
         sys.exit({attr}())\n"
    )
    .into_bytes())
}

/// `console_scripts` and `gui_scripts` of an entry_points.txt, as
/// importlib.metadata reads it (`name = value` lines under `[group]`).
pub(crate) fn entry_points(text: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut group = String::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(g) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            group = g.trim().to_string();
            continue;
        }
        if group == "console_scripts" || group == "gui_scripts" {
            if let Some((k, v)) = line.split_once('=') {
                out.insert(k.trim().to_string(), v.trim().to_string());
            }
        }
    }
    out
}

/// `sha256=<urlsafe base64, unpadded>` and the size, as RECORD has them.
fn rehash(data: &[u8]) -> (String, String) {
    let d = sha2::Sha256::digest(data);
    (format!("sha256={}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(d)), data.len().to_string())
}

/// `to` (root-relative) relative to the directory `from`, '/'-separated.
fn relpath(to: &str, from: &str) -> String {
    let t: Vec<&str> = to.split('/').collect();
    let f: Vec<&str> = if from.is_empty() { Vec::new() } else { from.split('/').collect() };
    let common = t.iter().zip(&f).take_while(|(a, b)| a == b).count();
    let mut parts: Vec<&str> = std::iter::repeat_n("..", f.len() - common).collect();
    parts.extend(&t[common..]);
    parts.join("/")
}

/// RECORD's rows (csv: commas, `"` quoting with `""` inside).
pub(crate) fn csv_rows(text: &str) -> Vec<Vec<String>> {
    let mut rows = Vec::new();
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        let mut row = Vec::new();
        let mut cur = String::new();
        let mut quoted = false;
        let mut chars = line.chars().peekable();
        while let Some(c) = chars.next() {
            match (c, quoted) {
                ('"', true) if chars.peek() == Some(&'"') => {
                    cur.push('"');
                    chars.next();
                }
                ('"', q) => quoted = !q,
                (',', false) => row.push(std::mem::take(&mut cur)),
                (c, _) => cur.push(c),
            }
        }
        row.push(cur);
        rows.push(row);
    }
    rows
}

/// One csv field as Python's csv module (QUOTE_MINIMAL) writes it.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// Lays `members` of the wheel of `id` out into `tree` for `t`.
pub(crate) fn install(
    tree: &mut Tree,
    t: &Target,
    id: &str,
    members: &[Member],
    requested: bool,
) -> Result<(), PypiError> {
    let err = |msg: String| PypiError::Package { package: id.into(), msg };
    let info = super::wheel::dist_info(members.iter().map(|m| m.name.as_str())).map_err(err)?;
    // As pip checks it: the .dist-info must be this package's (`NAME-VERSION.dist-info`).
    let own = id.split_once("==").map(|(n, _)| n).unwrap_or(id);
    let named = info.split_once('-').and_then(|(n, _)| pep508_rs::PackageName::from_str(n).ok());
    if named.as_ref().map(|n| n.as_ref()) != Some(own) {
        return Err(err(format!("{info} is not the .dist-info of {own}; refused")));
    }
    let read = |name: &str| members.iter().find(|m| m.name == format!("{info}/{name}")).map(|m| &m.data);
    let wheel_meta = read("WHEEL").ok_or_else(|| err(format!("{info}/WHEEL is missing")))?;
    let wheel_meta = String::from_utf8_lossy(wheel_meta);
    let wv = wheel_meta.lines().find_map(|l| l.strip_prefix("Wheel-Version:")).map(str::trim).unwrap_or_default();
    if !wv.starts_with("1.") {
        return Err(err(format!("Wheel-Version {wv:?} is not 1.x")));
    }
    let eps = read("entry_points.txt").map(|d| entry_points(&String::from_utf8_lossy(d))).unwrap_or_default();
    // Scripts a setuptools wheel ships for its own entry points: pip skips them.
    let is_wrapper = |file: &str| {
        let lower = file.to_ascii_lowercase();
        let stem = [".exe", "-script.py", ".pya"]
            .iter()
            .find_map(|s| lower.ends_with(s).then(|| &file[..file.len() - s.len()]))
            .unwrap_or(file);
        eps.contains_key(stem)
    };
    // (wheel record path -> installed record path), files rewritten, files generated.
    let mut installed: BTreeMap<String, String> = BTreeMap::new();
    let mut changed: BTreeSet<String> = BTreeSet::new();
    let mut contents: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut put = |tree: &mut Tree, dest: &str, data: Vec<u8>, mode: u32| -> Result<(), PypiError> {
        contents.insert(relpath(dest, &t.lib), data.clone());
        tree.insert(Entry::file(dest, data, mode))?;
        Ok(())
    };
    let inside = |dir: &str, rel: &str| -> Result<String, PypiError> {
        let ok = !rel.starts_with('/') && !rel.contains('\\') && !rel.split('/').any(|c| c == "..");
        match clean_path(rel) {
            Ok(r) if ok && !r.is_empty() => Ok(if dir.is_empty() { r } else { format!("{dir}/{r}") }),
            _ => Err(err(format!(
                "the wheel has a file {rel:?} that would install outside {:?}; refused",
                format!("/{dir}")
            ))),
        }
    };
    for m in members {
        let mode = if m.exec { 0o755 } else { 0o644 };
        let (top, rest) = m.name.split_once('/').unwrap_or((&m.name, ""));
        if !top.ends_with(".data") {
            let dest = inside(&t.lib, &m.name)?;
            put(tree, &dest, m.data.clone(), mode)?;
            installed.insert(m.name.clone(), relpath(&dest, &t.lib));
            continue;
        }
        let (key, sub) = rest
            .split_once('/')
            .ok_or_else(|| err(format!("{:?}: .data contents must be named <scheme>/<path>", m.name)))?;
        let dir = match key {
            "purelib" | "platlib" => t.lib.clone(),
            "scripts" => t.bin.clone(),
            "data" => t.prefix.clone(),
            // pip's scheme: the package's own directory below include/ (the name as the lock has it).
            "headers" => format!("{}/{own}", t.include),
            other => return Err(err(format!("{:?}: the {other:?} scheme is not installed by moat", m.name))),
        };
        let dest = inside(&dir, sub)?;
        if key == "scripts" {
            if is_wrapper(sub.rsplit('/').next().unwrap_or(sub)) {
                continue;
            }
            let mut data = m.data.clone();
            if data.starts_with(b"#!python") {
                let nl = data.iter().position(|b| *b == b'\n').map_or(data.len(), |i| i + 1);
                let mut fixed = format!("#!{}\n", t.python).into_bytes();
                fixed.extend_from_slice(&data[nl..]);
                data = fixed;
                changed.insert(relpath(&dest, &t.lib));
            }
            put(tree, &dest, data, mode)?;
        } else {
            put(tree, &dest, m.data.clone(), mode)?;
        }
        installed.insert(m.name.clone(), relpath(&dest, &t.lib));
    }
    let mut generated: Vec<String> = Vec::new();
    for (name, value) in &eps {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(err(format!("entry point name {name:?} is not a file name")));
        }
        let dest = format!("{}/{name}", t.bin);
        let body = script(&t.python, value).map_err(err)?;
        put(tree, &dest, body, 0o755)?;
        generated.push(dest);
    }
    let info_dir = format!("{}/{info}", t.lib);
    put(tree, &format!("{info_dir}/INSTALLER"), INSTALLER.to_vec(), 0o644)?;
    generated.push(format!("{info_dir}/INSTALLER"));
    if requested {
        put(tree, &format!("{info_dir}/REQUESTED"), Vec::new(), 0o644)?;
        generated.push(format!("{info_dir}/REQUESTED"));
    }
    let old = read("RECORD").ok_or_else(|| err(format!("{info}/RECORD is missing (PEP 427 requires it)")))?;
    let old = String::from_utf8_lossy(old).into_owned();
    let mut rows: Vec<(String, String, String)> = Vec::new();
    for row in csv_rows(&old) {
        let path = row.first().cloned().unwrap_or_default();
        let new = installed.remove(&path).unwrap_or(path);
        let (h, s) = if changed.contains(&new) {
            rehash(contents.get(&new).map(Vec::as_slice).unwrap_or_default())
        } else {
            (row.get(1).cloned().unwrap_or_default(), row.get(2).cloned().unwrap_or_default())
        };
        rows.push((new, h, s));
    }
    for g in &generated {
        let rel = relpath(g, &t.lib);
        let (h, s) = rehash(contents.get(&rel).map(Vec::as_slice).unwrap_or_default());
        rows.push((rel, h, s));
    }
    rows.extend(installed.into_values().map(|p| (p, String::new(), String::new())));
    rows.sort();
    let mut record = String::new();
    for (p, h, s) in rows {
        record.push_str(&format!("{},{},{}\r\n", csv_field(&p), csv_field(&h), csv_field(&s)));
    }
    tree.insert(Entry::file(&format!("{info_dir}/RECORD"), record.into_bytes(), 0o644))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn record_paths_and_csv() {
        assert_eq!(relpath("usr/local/bin/x", "usr/local/lib/python3.11/site-packages"), "../../../bin/x");
        assert_eq!(
            relpath("usr/local/lib/python3.11/site-packages/a/b.py", "usr/local/lib/python3.11/site-packages"),
            "a/b.py"
        );
        assert_eq!(csv_rows("a,b,1\n\"x,y\",\"q\"\"\",\n"), vec![vec!["a", "b", "1"], vec!["x,y", "q\"", ""]]);
        assert_eq!(csv_field("x,y"), "\"x,y\"");
        let eps = entry_points(
            "[console_scripts]\nfx = fx.cli:main [color]\n# c\n[other]\nno = a:b\n[gui_scripts]\ng=fx.gui:App.run\n",
        );
        assert_eq!(eps.len(), 2);
        let s = String::from_utf8(script("/usr/bin/python3", &eps["g"]).unwrap()).unwrap();
        assert!(
            s.starts_with("#!/usr/bin/python3\n")
                && s.contains("from fx.gui import App\n")
                && s.contains("sys.exit(App.run())"),
            "{s}"
        );
        assert!(script("/p", "os; rm -rf /:x").is_err());
    }
    #[test]
    fn the_dist_info_must_be_the_packages() {
        let t = Target::new("3.11", "amd64", "2.36", "/usr/bin/python3", "/usr/lib/python3.11/dist-packages", false)
            .unwrap();
        let m = |n: &str, d: &str| Member { name: n.into(), data: d.as_bytes().to_vec(), exec: false };
        let wheel = |info: &str| {
            vec![
                m("a.py", ""),
                m(&format!("{info}/WHEEL"), "Wheel-Version: 1.0\n"),
                m(&format!("{info}/RECORD"), "a.py,,\n"),
            ]
        };
        let mut tree = Tree::new();
        install(&mut tree, &t, "fx-lib==1.0", &wheel("Fx_Lib-1.0.dist-info"), false).unwrap();
        let e = install(&mut tree, &t, "fx-lib==1.0", &wheel("other-1.0.dist-info"), false).unwrap_err().to_string();
        assert!(e.contains("fx-lib==1.0") && e.contains("other-1.0.dist-info"), "{e}");
    }
}
