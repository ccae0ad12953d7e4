//! Layers moat generates over lower ones: the `[users]` accounts (appended to
//! the /etc/passwd and /etc/group the lower layers hold, so the sandbox user
//! is never root and never collides with an existing id) and whiteouts that
//! remove stripped toolchain paths from a base image.
#![forbid(unsafe_code)]
use crate::blueprint::UserSpec;
use crate::layer::read::{self as layer_read, ReadError};
use crate::layer::tree::{Entry, Tree};
use crate::oci::Descriptor;
use crate::store::Store;
use crate::strip::Stripper;
use std::collections::BTreeMap;

#[derive(Debug, thiserror::Error)]
pub enum FixupError {
    #[error(transparent)]
    Read(#[from] ReadError),
    #[error("[users] {user}: {msg}")]
    User { user: String, msg: String },
    #[error(transparent)]
    Tree(#[from] crate::layer::tree::TreeError),
}

const DEFAULT_PASSWD: &str =
    "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n";
const DEFAULT_GROUP: &str = "root:x:0:\nnogroup:x:65534:\n";

/// /etc/passwd and /etc/group (and home directories) with `users` added.
pub(super) fn users_tree(
    store: &Store,
    lower: &[Descriptor],
    users: &BTreeMap<String, toml::Spanned<UserSpec>>,
) -> Result<Tree, FixupError> {
    let want = |p: &str| p == "etc/passwd" || p == "etc/group";
    let view = layer_read::merged(store, lower, &want)?;
    let text = |p: &str, default: &str| {
        view.get(p)
            .and_then(|e| e.data.clone())
            .map(|d| String::from_utf8_lossy(&d).into_owned())
            .unwrap_or_else(|| default.to_string())
    };
    let mut passwd = parse_db(&text("etc/passwd", DEFAULT_PASSWD));
    let mut group = parse_db(&text("etc/group", DEFAULT_GROUP));
    let mut tree = Tree::new();
    // Sorted by uid so the files read well and never depend on map order.
    let mut ordered: Vec<(&String, &UserSpec)> = users.iter().map(|(n, u)| (n, u.get_ref())).collect();
    ordered.sort_by_key(|(n, u)| (u.uid, (*n).clone()));
    for (name, u) in ordered {
        let gid = u.gid.unwrap_or(u.uid);
        let err = |msg: String| FixupError::User { user: name.clone(), msg };
        if let Some((other, _)) =
            passwd.iter().find(|(n, f)| n != name && f.get(1).map(String::as_str) == Some(&u.uid.to_string()))
        {
            return Err(err(format!("uid {} is already used by {other:?} in a lower layer", u.uid)));
        }
        if let Some((other, _)) =
            group.iter().find(|(n, f)| n != name && f.get(1).map(String::as_str) == Some(&gid.to_string()))
        {
            return Err(err(format!("gid {gid} is already used by group {other:?} in a lower layer")));
        }
        let home =
            u.home.clone().unwrap_or_else(|| if name == "sandbox" { "/sandbox".into() } else { "/nonexistent".into() });
        let shell = u.shell.clone().unwrap_or_else(|| {
            if name == "sandbox" {
                "/bin/sh".into()
            } else {
                "/usr/sbin/nologin".into()
            }
        });
        passwd.retain(|(n, _)| n != name);
        passwd.push((
            name.clone(),
            vec!["x".into(), u.uid.to_string(), gid.to_string(), name.clone(), home.clone(), shell],
        ));
        group.retain(|(n, _)| n != name);
        group.push((name.clone(), vec!["x".into(), gid.to_string(), String::new()]));
        if home != "/nonexistent" {
            tree.insert(Entry::dir(&home, 0o755, u.uid, gid))?;
        }
    }
    tree.insert(Entry::file("etc/passwd", render_db(&passwd), 0o644))?;
    tree.insert(Entry::file("etc/group", render_db(&group), 0o644))?;
    Ok(tree)
}

type Db = Vec<(String, Vec<String>)>;

fn parse_db(text: &str) -> Db {
    text.lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let mut f = l.split(':').map(str::to_string);
            let name = f.next()?;
            Some((name, f.collect()))
        })
        .collect()
}

fn render_db(db: &Db) -> String {
    db.iter().map(|(n, f)| format!("{n}:{}\n", f.join(":"))).collect()
}

/// A layer of whiteouts hiding every lower path `stripper` matches; `None`
/// when nothing matches.
pub(super) fn whiteouts(store: &Store, lower: &[Descriptor], stripper: &Stripper) -> Result<Option<Tree>, FixupError> {
    let view = layer_read::merged(store, lower, &|_| false)?;
    let mut tree = Tree::new();
    let mut hidden: Vec<&String> = Vec::new();
    for path in view.keys() {
        if hidden.iter().any(|h| path.starts_with(&format!("{h}/"))) || !stripper.matches(path) {
            continue;
        }
        let (dir, base) = path.rsplit_once('/').unwrap_or(("", path.as_str()));
        let wh = if dir.is_empty() { format!(".wh.{base}") } else { format!("{dir}/.wh.{base}") };
        tree.insert(Entry::file(&wh, Vec::new(), 0o644))?;
        // Parent directories keep the lower layer's metadata.
        let mut parent = dir;
        while !parent.is_empty() {
            if let Some(p) = view.get(parent) {
                tree.insert(Entry::dir(parent, p.mode, p.uid as u32, p.gid as u32))?;
            }
            parent = parent.rsplit_once('/').map_or("", |(p, _)| p);
        }
        hidden.push(path);
    }
    Ok((!tree.is_empty()).then_some(tree))
}
