//! The dependency tree as npm 7+ builds it for `npm install --global`:
//! breadth-first by depth then path, each missing or unsatisfied edge
//! placed as shallow as it can go without conflicting with a copy already
//! there or shadowing one a deeper package relies on, but never above its
//! top-level package (npm's "shallow" global strategy). Peer dependencies
//! are placed beside their dependent; optional ones whose platform does not
//! match the blueprint's architecture are skipped. Guards against unbounded
//! trees (node count bound) and registry specs that leave the registry.
#![forbid(unsafe_code)]
use super::pick::{pick, Want};
use super::platform::Platform;
use super::registry::Client;
use super::NpmError;
use serde_json::Value;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Most packages one lock may hold.
pub(crate) const MAX_PACKAGES: usize = 20_000;

/// One placed package.
#[derive(Debug, Clone)]
pub(crate) struct Placed {
    /// Install path below `PREFIX/lib`: `node_modules/a/node_modules/@s/b`.
    pub(crate) path: String,
    pub(crate) name: String,
    pub(crate) version: String,
    pub(crate) manifest: Arc<Value>,
    /// An optional dependency of it was installed (a prebuilt platform package).
    pub(crate) has_platform_optional: bool,
}

struct Node {
    name: String,
    version: String,
    manifest: Arc<Value>,
    parent: usize,
    depth: usize,
    path: String,
    children: BTreeMap<String, usize>,
    /// Edges resolved to this node: (from, what it accepts).
    edges_in: Vec<(usize, Want)>,
    has_platform_optional: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EdgeKind {
    Prod,
    Optional,
    Peer,
}

/// The edges npm follows from a manifest with `--omit=dev`, sorted by name.
fn edges(m: &Value) -> Vec<(String, String, EdgeKind)> {
    let table = |k: &str| -> Vec<(String, String)> {
        m.get(k)
            .and_then(Value::as_object)
            .map(|o| o.iter().filter_map(|(n, v)| v.as_str().map(|v| (n.clone(), v.to_string()))).collect())
            .unwrap_or_default()
    };
    let bundled: Vec<String> = ["bundleDependencies", "bundledDependencies"]
        .iter()
        .filter_map(|k| m.get(*k).and_then(Value::as_array))
        .flatten()
        .filter_map(|v| v.as_str().map(String::from))
        .collect();
    let mut out: BTreeMap<String, (String, EdgeKind)> = BTreeMap::new();
    for (n, v) in table("peerDependencies") {
        let optional =
            m.pointer(&format!("/peerDependenciesMeta/{}/optional", n.replace('~', "~0").replace('/', "~1")));
        if optional.and_then(Value::as_bool) != Some(true) {
            out.insert(n, (v, EdgeKind::Peer));
        }
    }
    for (n, v) in table("dependencies") {
        out.insert(n, (v, EdgeKind::Prod));
    }
    for (n, v) in table("optionalDependencies") {
        out.insert(n, (v, EdgeKind::Optional));
    }
    let mut v: Vec<_> = out.into_iter().filter(|(n, _)| !bundled.contains(n)).map(|(n, (s, k))| (n, s, k)).collect();
    v.sort_by(|a, b| npm_order(&a.0, &b.0));
    v
}

/// npm sorts names and paths with `localeCompare('en')`; for package names
/// that is case-insensitive first.
fn npm_order(a: &str, b: &str) -> Ordering {
    a.to_ascii_lowercase().cmp(&b.to_ascii_lowercase()).then_with(|| a.cmp(b))
}

struct Tree {
    nodes: Vec<Node>,
}

impl Tree {
    fn resolve(&self, from: usize, name: &str) -> Option<usize> {
        let mut at = from;
        loop {
            if let Some(&c) = self.nodes[at].children.get(name) {
                return Some(c);
            }
            if at == 0 {
                return None;
            }
            at = self.nodes[at].parent;
        }
    }
    fn is_descendant(&self, mut n: usize, of: usize) -> bool {
        loop {
            if n == of {
                return true;
            }
            if n == 0 {
                return false;
            }
            n = self.nodes[n].parent;
        }
    }
    /// Where a new `name@version` goes for an edge from `from`, starting the
    /// walk at `start`: `Ok(Err(existing))` when a satisfying copy is found.
    fn target(
        &self,
        from: usize,
        start: usize,
        name: &str,
        version: &str,
        want: &Want,
    ) -> Option<Result<usize, usize>> {
        let mut best = None;
        let mut t = start;
        loop {
            if let Some(&c) = self.nodes[t].children.get(name) {
                if want.admits(&self.nodes[c].version) {
                    return Some(Err(c));
                }
                break;
            }
            if t != from {
                if let Some(cur) = self.resolve(t, name) {
                    let shadowed =
                        self.nodes[cur].edges_in.iter().any(|(f, w)| self.is_descendant(*f, t) && !w.admits(version));
                    if shadowed {
                        break;
                    }
                }
            }
            best = Some(Ok(t));
            if t == 0 || self.nodes[t].parent == 0 {
                break;
            }
            t = self.nodes[t].parent;
        }
        best
    }
}

/// Resolves `requests` (name, spec) into the placed tree, sorted by path.
pub(crate) fn resolve(
    client: &mut Client,
    requests: &[(String, String)],
    platform: &Platform,
) -> Result<Vec<Placed>, NpmError> {
    let mut root_deps = serde_json::Map::new();
    for (n, s) in requests {
        root_deps.insert(n.clone(), Value::String(s.clone()));
    }
    let root = Node {
        name: String::new(),
        version: String::new(),
        manifest: Arc::new(serde_json::json!({ "dependencies": root_deps })),
        parent: 0,
        depth: 0,
        path: String::new(),
        children: BTreeMap::new(),
        edges_in: Vec::new(),
        has_platform_optional: false,
    };
    let mut tree = Tree { nodes: vec![root] };
    let mut queue: Vec<usize> = vec![0];
    while !queue.is_empty() {
        queue.sort_by(|&a, &b| {
            let (a, b) = (&tree.nodes[a], &tree.nodes[b]);
            b.depth.cmp(&a.depth).then_with(|| npm_order(&b.path, &a.path))
        });
        let Some(n) = queue.pop() else { break };
        let who = |t: &Tree| {
            if n == 0 {
                "the blueprint".to_string()
            } else {
                format!("{}@{}", t.nodes[n].name, t.nodes[n].version)
            }
        };
        for (name, spec, kind) in edges(&tree.nodes[n].manifest.clone()) {
            let unresolvable = |t: &Tree, msg: String| NpmError::Package {
                package: who(t),
                msg: format!("dependency {name}@{spec}: {msg}"),
            };
            if !super::valid_name(&name) {
                return Err(unresolvable(&tree, "not a valid npm package name".into()));
            }
            // A range the current position already satisfies needs no packument.
            if let Ok(w @ Want::Range(_)) = Want::parse(&spec, None) {
                if let Some(c) = tree.resolve(n, &name).filter(|&c| w.admits(&tree.nodes[c].version)) {
                    tree.nodes[c].edges_in.push((n, w));
                    if kind == EdgeKind::Optional {
                        tree.nodes[n].has_platform_optional = true;
                    }
                    continue;
                }
            }
            let p = match client.packument(&name) {
                Ok(p) => p,
                Err(_) if kind == EdgeKind::Optional => continue,
                Err(e) => return Err(e),
            };
            let want = Want::parse(&spec, Some(&p)).map_err(|m| unresolvable(&tree, m))?;
            if let Some(c) = tree.resolve(n, &name).filter(|&c| want.admits(&tree.nodes[c].version)) {
                tree.nodes[c].edges_in.push((n, want));
                if kind == EdgeKind::Optional {
                    tree.nodes[n].has_platform_optional = true;
                }
                continue;
            }
            let Some((version, manifest)) = pick(&p, &spec, &want) else {
                if kind == EdgeKind::Optional {
                    continue;
                }
                return Err(unresolvable(&tree, "no version in the registry satisfies it".into()));
            };
            if !platform.admits(manifest) {
                if kind == EdgeKind::Optional {
                    continue;
                }
                return Err(unresolvable(
                    &tree,
                    format!("{name}@{version} does not support {}/{} (os/cpu/libc)", platform.os, platform.cpu),
                ));
            }
            let start = if kind == EdgeKind::Peer && n != 0 { tree.nodes[n].parent } else { n };
            let at = match tree.target(n, start, &name, version, &want) {
                Some(Err(existing)) => {
                    tree.nodes[existing].edges_in.push((n, want));
                    continue;
                }
                Some(Ok(t)) => t,
                None => return Err(unresolvable(&tree, "conflicts with the copy already placed beside it".into())),
            };
            if tree.nodes.len() > MAX_PACKAGES {
                return Err(NpmError::Spec(format!("the tree holds more than {MAX_PACKAGES} packages")));
            }
            let path = if at == 0 {
                format!("node_modules/{name}")
            } else {
                format!("{}/node_modules/{name}", tree.nodes[at].path)
            };
            let id = tree.nodes.len();
            tree.nodes.push(Node {
                name: name.clone(),
                version: version.to_string(),
                manifest: Arc::new(manifest.clone()),
                parent: at,
                depth: tree.nodes[at].depth + 1,
                path,
                children: BTreeMap::new(),
                edges_in: vec![(n, want)],
                has_platform_optional: false,
            });
            tree.nodes[at].children.insert(name, id);
            if kind == EdgeKind::Optional {
                tree.nodes[n].has_platform_optional = true;
            }
            queue.push(id);
        }
    }
    let mut out: Vec<Placed> = tree
        .nodes
        .into_iter()
        .skip(1)
        .map(|n| Placed {
            path: n.path,
            name: n.name,
            version: n.version,
            manifest: n.manifest,
            has_platform_optional: n.has_platform_optional,
        })
        .collect();
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    #[test]
    fn edges_follow_npm_omit_dev() {
        let m = json!({
            "dependencies": {"b": "^1", "a": "^2"},
            "devDependencies": {"dev": "1"},
            "optionalDependencies": {"b": "^1.1", "o": "1"},
            "peerDependencies": {"p": "1", "q": "1"},
            "peerDependenciesMeta": {"q": {"optional": true}},
            "bundleDependencies": ["a"]
        });
        let e: Vec<_> = edges(&m).into_iter().map(|(n, s, k)| format!("{n}@{s}:{k:?}")).collect();
        assert_eq!(e, ["b@^1.1:Optional", "o@1:Optional", "p@1:Peer"]);
    }
}
