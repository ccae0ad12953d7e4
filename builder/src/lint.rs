//! `moat lint`: finds what makes a build or a policy not reproducible or not
//! reviewable — mutable image references (a tag without a digest), unpinned
//! remote sources, unknown keys, unlocked blueprints or ones changed since
//! their lock, a lock without the npm tree its blueprint needs, npm packages
//! pinned with install scripts (never run), text that is not UTF-8 or not
//! TOML — each with file:line:column.
#![forbid(unsafe_code)]
use crate::blueprint;
use crate::textfile::{self, TextError};
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// `file:line:column`
    pub at: String,
    pub msg: String,
}

/// Lints every `.toml` under `paths` (files or directories, recursively).
/// Every file is read and parsed the way the command that uses it reads it:
/// a blueprint through [`blueprint::load`]'s path (as `moat lock` does), so
/// lint and lock accept and refuse the same files with the same error.
/// `check_other` validates TOML files that are not blueprints (for example
/// policies); it returns located findings.
pub fn lint(paths: &[PathBuf], check_other: &dyn Fn(&Path, &str) -> Vec<Finding>) -> Vec<Finding> {
    let mut files = Vec::new();
    for p in paths {
        collect(p, &mut files);
    }
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = match textfile::read(&f, textfile::MAX_TEXT) {
            Ok(t) => t,
            Err(TextError::At(at)) => {
                out.push(Finding { at: format!("{}:{}:{}", at.origin, at.line, at.column), msg: at.message });
                continue;
            }
            Err(e) => {
                out.push(Finding { at: f.display().to_string(), msg: crate::errors::chain(&e) });
                continue;
            }
        };
        let table = match textfile::parse_toml::<toml::Table>(&text, &f.display().to_string()) {
            Ok(t) => t,
            Err(at) => {
                out.push(Finding { at: format!("{}:{}:{}", at.origin, at.line, at.column), msg: at.message });
                continue;
            }
        };
        if is_blueprint(&f, &table) {
            match blueprint::parse(&f, text) {
                Ok(l) => out.extend(lock_findings(&f, &l)),
                Err(blueprint::BlueprintError::At { at, msg }) => out.push(Finding { at: at.to_string(), msg }),
                Err(e) => out.push(Finding { at: f.display().to_string(), msg: crate::errors::chain(&e) }),
            }
        } else {
            out.extend(mutable_refs(&f, &text));
            out.extend(check_other(&f, &text));
        }
    }
    out
}

/// What the lock says about a blueprint: missing, made for another version
/// of it (a range or a package added since is not pinned), or pinning npm
/// packages that declare install scripts (they never run: the image holds
/// them unbuilt, and whatever the script would have made is missing).
fn lock_findings(f: &Path, l: &blueprint::Loaded) -> Vec<Finding> {
    let at = |span: Option<std::ops::Range<usize>>| match span {
        Some(s) => l.at(s).to_string(),
        None => format!("{}:1:1", f.display()),
    };
    if !l.lock_path().exists() {
        return vec![Finding { at: at(None), msg: format!("not locked: run `moat lock {}`", f.display()) }];
    }
    let lock = match crate::lock::Lock::read(&l.lock_path(), f) {
        Ok(lock) => lock,
        Err(e) => return vec![Finding { at: l.lock_path().display().to_string(), msg: crate::errors::chain(&e) }],
    };
    if lock.blueprint != l.digest() {
        let msg =
            format!("changed since it was locked: what it asks for is not pinned; run `moat lock {}`", f.display());
        return vec![Finding { at: at(None), msg }];
    }
    let Some(spec) = &l.bp.npm else { return Vec::new() };
    // What `moat build` would refuse, said here first.
    let Some(npm) = &lock.npm else {
        let msg = format!("the lock has no [npm] package tree: run `moat lock {}`", f.display());
        return vec![Finding { at: at(Some(spec.span())), msg }];
    };
    let npm: crate::npm::NpmLock = match npm.clone().try_into() {
        Ok(n) => n,
        Err(e) => {
            let e: toml::de::Error = e;
            return vec![Finding { at: l.lock_path().display().to_string(), msg: format!("lock [npm]: {e}") }];
        }
    };
    let mut out: Vec<Finding> = crate::npm::install_script_packages(&npm)
        .into_iter()
        .map(|(id, _)| Finding {
            at: at(Some(spec.span())),
            msg: format!(
                "npm package {id} declares install scripts: they never run here (the package is laid out unbuilt; `moat audit` lists it)"
            ),
        })
        .collect();
    let msgs = crate::npm::engines::lock_warnings(&npm, lock.debian.as_ref());
    out.extend(msgs.into_iter().map(|msg| Finding { at: at(Some(spec.span())), msg }));
    out
}

fn collect(p: &Path, out: &mut Vec<PathBuf>) {
    if p.is_dir() {
        if let Ok(rd) = std::fs::read_dir(p) {
            for e in rd.flatten() {
                collect(&e.path(), out);
            }
        }
    } else if p.extension().is_some_and(|e| e == "toml") {
        out.push(p.to_path_buf());
    }
}

/// Keys only a blueprint has at its top level (`layers` and `schema` too:
/// a misspelt or mistaken blueprint is still linted as one).
const BLUEPRINT_KEYS: &[&str] =
    &["name", "schema", "base", "layer", "layers", "debian", "npm", "pypi", "strip", "users", "config"];

/// A blueprint is any file under a `blueprints/` folder, or a TOML file
/// with a blueprint key and no `version` (policies, presets and profiles
/// always have `version`; a blueprint never does).
fn is_blueprint(p: &Path, table: &toml::Table) -> bool {
    if p.components().any(|c| c.as_os_str() == "blueprints") {
        return true;
    }
    !table.contains_key("version") && BLUEPRINT_KEYS.iter().any(|k| table.contains_key(*k))
}

/// Any `image`-like value (`image = "..."`, `*_image = "..."`) without a digest.
fn mutable_refs(p: &Path, text: &str) -> Vec<Finding> {
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        let Some((k, v)) = l.split_once('=') else { continue };
        let k = k.trim();
        if !(k == "image" || k.ends_with("_image")) {
            continue;
        }
        let v = v.trim().trim_matches('"');
        if v != "scratch" && !v.contains("@sha256:") {
            let col = line.find(v).map_or(1, |c| c + 1);
            out.push(Finding {
                at: format!("{}:{}:{col}", p.display(), i + 1),
                msg: format!("mutable image reference {v:?}: pin it with @sha256:"),
            });
        }
    }
    out
}
