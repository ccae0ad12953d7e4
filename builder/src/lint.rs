//! `moat lint`: finds what makes a build or a policy not reproducible or not
//! reviewable — mutable image references (a tag without a digest), unpinned
//! remote sources, unknown keys, unlocked blueprints — each with file:line.
#![forbid(unsafe_code)]
use crate::blueprint;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    /// `file:line:column`
    pub at: String,
    pub msg: String,
}

/// Lints every `.toml` under `paths` (files or directories, recursively).
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
        let text = match std::fs::read_to_string(&f) {
            Ok(t) => t,
            Err(e) => {
                out.push(Finding { at: f.display().to_string(), msg: e.to_string() });
                continue;
            }
        };
        if is_blueprint(&f, &text) {
            match blueprint::parse(&f, text.clone()) {
                Ok(l) => {
                    if !l.lock_path().exists() {
                        out.push(Finding {
                            at: format!("{}:1:1", f.display()),
                            msg: format!("not locked: run `moat lock {}`", f.display()),
                        });
                    }
                }
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

/// A blueprint is a TOML file with a top-level `name` and a `[base]`,
/// `[[layer]]` or `[debian]` table, or any file under a `blueprints/` folder.
fn is_blueprint(p: &Path, text: &str) -> bool {
    if p.components().any(|c| c.as_os_str() == "blueprints") {
        return true;
    }
    let Ok(v) = text.parse::<toml::Table>() else { return false };
    v.contains_key("name") && (v.contains_key("base") || v.contains_key("layer") || v.contains_key("debian"))
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
