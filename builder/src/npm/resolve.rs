//! The dependency tree as npm 7+ builds it for `npm install --global`:
//! breadth-first by depth then path, each missing or unsatisfied edge
//! placed as shallow as it can go without conflicting with a copy already
//! there or shadowing one a deeper package relies on, but never above its
//! top-level package (npm's "shallow" global strategy); an older copy in
//! the way that the new version can stand in for is replaced. Peer
//! dependencies are placed together with their dependent; optional ones
//! whose platform does not match the blueprint's architecture (never the
//! host's) are placed, then removed with what only they needed. Guards
//! against unbounded trees (node count, peer depth) and registry specs or
//! names that leave the registry or the install directory.
#![forbid(unsafe_code)]
use super::pick::{pick, Want};
use super::platform::Platform;
use super::registry::Client;
use super::NpmError;
use nodejs_semver::Version;
use serde_json::Value;
use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Deepest chain of peers placed with their dependent (peers of peers...).
pub(crate) const MAX_PEER_DEPTH: usize = 64;
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

/// Where an edge's package goes.
enum Place {
    /// A copy on the way satisfies it.
    Keep(usize),
    /// A new node under this one.
    Under(usize),
    /// This copy is replaced by the new version, which satisfies all that
    /// rely on it (arborist's REPLACE).
    Replace(usize),
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
    /// Pruned: nothing relies on it any more.
    removed: bool,
    /// An optional package for another platform: placed as npm places it
    /// (it can take a slot), removed at the end with what only it needed.
    inert: bool,
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
    /// Where a new `name@version` (with `manifest`, whose peers are picked
    /// in `set`) goes for an edge from `from`, starting the walk at `start`;
    /// `Err` says why not even the first place fits.
    #[allow(clippy::too_many_arguments)]
    fn target(
        &self,
        from: usize,
        start: usize,
        name: &str,
        version: &str,
        want: &Want,
        manifest: &Value,
        set: &PeerSet,
    ) -> Result<Place, String> {
        let mut best: Result<Place, String> = Err(String::new());
        let mut t = start;
        loop {
            // Its peers (and theirs) go beside it: a place where one of the
            // set does not fit is ruled out (arborist's canPlacePeers).
            let fits = |t: usize| self.peers_fit(t, from, manifest, set, &mut vec![name.to_string()]);
            if let Some(&c) = self.nodes[t].children.get(name) {
                if want.admits(&self.nodes[c].version) {
                    return Ok(Place::Keep(c));
                }
                let newer = match (Version::parse(version), Version::parse(&self.nodes[c].version)) {
                    (Ok(new), Ok(cur)) => new >= cur,
                    _ => false,
                };
                if newer && self.nodes[c].edges_in.iter().all(|(_, w)| w.admits(version)) {
                    match fits(t) {
                        Ok(()) => return Ok(Place::Replace(c)),
                        Err(e) => return best.or(Err(e)),
                    }
                }
                let at = &self.nodes[c];
                return best.or(Err(format!("conflicts with {name}@{} at {}", at.version, at.path)));
            }
            if let Err(e) = fits(t) {
                return best.or(Err(e));
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
            best = Ok(Place::Under(t));
            if t == 0 || self.nodes[t].parent == 0 {
                break;
            }
            t = self.nodes[t].parent;
        }
        best
    }

    /// arborist's canPlacePeers: whether the peers of `manifest` (and
    /// theirs, as picked in `set`) fit beside it under `t`: a copy there
    /// keeps a peer it satisfies, or is replaced by a newer one all its
    /// dependents accept; otherwise the peer must not clash with `t`'s own
    /// dependency nor shadow a copy a package below `t` relies on. `path`
    /// holds the names on the way (peer cycles end there). `Err` names the
    /// chain to the clash.
    fn peers_fit(
        &self,
        t: usize,
        from: usize,
        manifest: &Value,
        set: &PeerSet,
        path: &mut Vec<String>,
    ) -> Result<(), String> {
        if t == 0 {
            return Ok(()); // a requested package's peers go inside it (npm loads no peer set for a global top)
        }
        for (pn, spec, pw) in peers_of(manifest) {
            if path.contains(&pn) {
                continue;
            }
            let picked = set.get(&pn);
            let clash = |msg: String| Err(format!("peer {pn}@{} {msg}", spec.escape_debug()));
            if let Some(&c) = self.nodes[t].children.get(&pn) {
                let cur = &self.nodes[c];
                if pw.admits(&cur.version) {
                    continue;
                }
                let replaces = picked.is_some_and(|(v, _)| {
                    let newer = matches!((Version::parse(v), Version::parse(&cur.version)), (Ok(n), Ok(o)) if n >= o);
                    newer && pw.admits(v) && cur.edges_in.iter().all(|(_, w)| w.admits(v))
                });
                if !replaces {
                    return clash(format!("conflicts with {pn}@{} at {}", cur.version, cur.path));
                }
            }
            let Some((v, m)) = picked else { continue };
            if !pw.admits(v) {
                return clash(format!("is not met by {pn}@{v}, which another peer of the set asked for"));
            }
            if !self.nodes[t].children.contains_key(&pn) {
                let own = edges(&self.nodes[t].manifest).into_iter().find(|(n, ..)| *n == pn);
                if let Some((_, own_spec, _)) = own.filter(|(_, s, _)| Want::parse(s, None).is_ok_and(|w| !w.admits(v)))
                {
                    let by = format!("{}@{}", self.nodes[t].name, self.nodes[t].version);
                    return clash(format!(
                        "({pn}@{v}) conflicts with {by}'s dependency {pn}@{}",
                        own_spec.escape_debug()
                    ));
                }
                if t != from {
                    if let Some(cur) = self.resolve(t, &pn) {
                        let shadowed =
                            self.nodes[cur].edges_in.iter().any(|(f, w)| self.is_descendant(*f, t) && !w.admits(v));
                        if shadowed {
                            let at = &self.nodes[cur];
                            return clash(format!("({pn}@{v}) would shadow {pn}@{} at {}", at.version, at.path));
                        }
                    }
                }
            }
            path.push(pn.clone());
            let deeper = self.peers_fit(t, from, m, set, path);
            path.pop();
            if let Err(e) = deeper {
                return clash(format!("({pn}@{v}) -> {e}"));
            }
        }
        Ok(())
    }

    /// arborist's deepestNestingTarget: where a peer edge of `from` starts
    /// looking, above every package that has `name` as a peer, never above a
    /// requested package.
    fn nest_start(&self, from: usize, name: &str) -> usize {
        let mut t = from;
        loop {
            if t == 0 || self.nodes[t].parent == 0 {
                return t;
            }
            let peer = edges(&self.nodes[t].manifest).into_iter().any(|(n, _, k)| n == name && k == EdgeKind::Peer);
            if !peer {
                return t;
            }
            t = self.nodes[t].parent;
        }
    }
}

/// A package's peer set (npm's virtual root): one picked version per name.
type PeerSet = BTreeMap<String, (String, Arc<Value>)>;
/// Most packages one peer set may hold.
const MAX_PEER_SET: usize = 1000;

/// The peers a manifest requires, as (name, spec, what it accepts) for ranges.
fn peers_of(m: &Value) -> Vec<(String, String, Want)> {
    edges(m)
        .into_iter()
        .filter(|(_, _, k)| *k == EdgeKind::Peer)
        .filter_map(|(n, s, _)| Want::parse(&s, None).ok().map(|w| (n, s, w)))
        .collect()
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
        removed: false,
        inert: false,
    };
    let mut r = Resolver { tree: Tree { nodes: vec![root] }, client, platform, queue: vec![0] };
    while !r.queue.is_empty() {
        let nodes = &r.tree.nodes;
        r.queue.sort_by(|&a, &b| {
            let (a, b) = (&nodes[a], &nodes[b]);
            b.depth.cmp(&a.depth).then_with(|| npm_order(&b.path, &a.path))
        });
        let Some(n) = r.queue.pop() else { break };
        let edges = edges(&r.tree.nodes[n].manifest.clone());
        // The packuments this node will ask for, fetched together.
        let wanted: Vec<String> = edges
            .iter()
            .filter(|(name, spec, _)| {
                let satisfied = Want::parse(spec, None)
                    .is_ok_and(|w| r.tree.resolve(n, name).is_some_and(|c| w.admits(&r.tree.nodes[c].version)));
                super::valid_name(name) && !satisfied
            })
            .map(|(name, ..)| name.clone())
            .collect();
        r.client.prefetch(&wanted);
        for (name, spec, kind) in edges {
            r.edge(n, &name, &spec, kind, 0)?;
        }
    }
    for node in &mut r.tree.nodes {
        if node.inert {
            node.edges_in.clear();
        }
    }
    r.prune();
    let mut out: Vec<Placed> = r
        .tree
        .nodes
        .into_iter()
        .skip(1)
        .filter(|n| !n.removed)
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

struct Resolver<'a> {
    tree: Tree,
    client: &'a mut Client,
    platform: &'a Platform,
    /// Placed packages whose own edges are still to be read.
    queue: Vec<usize>,
}

impl Resolver<'_> {
    fn who(&self, n: usize) -> String {
        if n == 0 {
            "the blueprint".to_string()
        } else {
            format!("{}@{}", self.tree.nodes[n].name, self.tree.nodes[n].version.escape_debug())
        }
    }

    /// Records that `n`'s edge resolves to `c`.
    fn keep(&mut self, n: usize, c: usize, want: Want, kind: EdgeKind) -> Result<(), NpmError> {
        let (from_inert, to_inert) = (self.tree.nodes[n].inert, self.tree.nodes[c].inert);
        if to_inert && kind != EdgeKind::Optional && !from_inert {
            let (os, cpu) = (self.platform.os, self.platform.cpu);
            let (name, version) = (&self.tree.nodes[c].name, &self.tree.nodes[c].version);
            return Err(NpmError::Package {
                package: self.who(n),
                msg: format!("dependency {name}@{version} does not support {os}/{cpu} (os/cpu/libc)"),
            });
        }
        self.tree.nodes[c].edges_in.push((n, want));
        if kind == EdgeKind::Optional && !to_inert {
            self.tree.nodes[n].has_platform_optional = true;
        }
        Ok(())
    }

    /// Satisfies one edge of `n`: keeps what its position already resolves
    /// to, or picks a version and places it, then places its peers with it
    /// (npm's peer sets).
    fn edge(&mut self, n: usize, name: &str, spec: &str, kind: EdgeKind, peer_depth: usize) -> Result<(), NpmError> {
        let who = self.who(n);
        let unresolvable = |msg: String| NpmError::Package {
            package: who.clone(),
            msg: format!("dependency {name}@{}: {msg}", spec.escape_debug()),
        };
        if !super::valid_name(name) {
            // Registry text, shown escaped: it may hold anything.
            let msg = format!("dependency {name:?}: not a valid npm package name");
            return Err(NpmError::Package { package: who, msg });
        }
        if peer_depth > MAX_PEER_DEPTH {
            return Err(unresolvable(format!("peers of peers nest deeper than {MAX_PEER_DEPTH}")));
        }
        // A range the current position already satisfies needs no packument.
        if let Ok(w @ Want::Range(_)) = Want::parse(spec, None) {
            if let Some(c) = self.tree.resolve(n, name).filter(|&c| w.admits(&self.tree.nodes[c].version)) {
                return self.keep(n, c, w, kind);
            }
        }
        let p = match self.client.packument(name) {
            Ok(p) => p,
            Err(_) if kind == EdgeKind::Optional => return Ok(()),
            Err(e) => return Err(e),
        };
        let want = Want::parse(spec, Some(&p)).map_err(&unresolvable)?;
        if let Some(c) = self.tree.resolve(n, name).filter(|&c| want.admits(&self.tree.nodes[c].version)) {
            return self.keep(n, c, want, kind);
        }
        let Some((version, manifest)) = pick(&p, spec, &want) else {
            if kind == EdgeKind::Optional {
                return Ok(());
            }
            return Err(unresolvable("no version in the registry satisfies it".into()));
        };
        // Only reachable through optional edges: placed, removed at the end.
        let optional = kind == EdgeKind::Optional || self.tree.nodes[n].inert;
        let inert = !self.platform.admits(manifest);
        if inert && !optional {
            let (os, cpu) = (self.platform.os, self.platform.cpu);
            return Err(unresolvable(format!("{name}@{version} does not support {os}/{cpu} (os/cpu/libc)")));
        }
        let start = if kind == EdgeKind::Peer { self.tree.nest_start(n, name) } else { n };
        let manifest = manifest.clone();
        let set = if n == 0 { PeerSet::new() } else { self.peer_set(name, &manifest)? };
        let at = match self.tree.target(n, start, name, version, &want, &manifest, &set) {
            Ok(Place::Keep(existing)) => {
                return self.keep(n, existing, want, kind);
            }
            Ok(Place::Replace(c)) => {
                // The old version's own edges go; what only they needed is pruned at the end.
                for node in &mut self.tree.nodes {
                    node.edges_in.retain(|(f, _)| *f != c);
                }
                let node = &mut self.tree.nodes[c];
                node.version = version.to_string();
                node.manifest = Arc::new(manifest);
                node.has_platform_optional = false;
                node.inert = inert;
                self.keep(n, c, want, kind)?;
                self.queue.push(c);
                return self.place_peers(c, peer_depth);
            }
            Ok(Place::Under(t)) => t,
            Err(why) => {
                return Err(unresolvable(format!(
                    "{name}@{version} cannot be placed: {why} (npm warns ERESOLVE and installs it with the peer unmet, or moves another copy deeper; moat does neither)"
                )))
            }
        };
        if self.tree.nodes.len() > MAX_PACKAGES {
            return Err(NpmError::Spec(format!("the tree holds more than {MAX_PACKAGES} packages")));
        }
        let path = if at == 0 {
            format!("node_modules/{name}")
        } else {
            format!("{}/node_modules/{name}", self.tree.nodes[at].path)
        };
        let id = self.tree.nodes.len();
        let manifest = Arc::new(manifest);
        self.tree.nodes.push(Node {
            name: name.to_string(),
            version: version.to_string(),
            manifest: manifest.clone(),
            parent: at,
            depth: self.tree.nodes[at].depth + 1,
            path,
            children: BTreeMap::new(),
            edges_in: Vec::new(),
            has_platform_optional: false,
            removed: false,
            inert,
        });
        self.tree.nodes[at].children.insert(name.to_string(), id);
        self.keep(n, id, want, kind)?;
        self.queue.push(id);
        self.place_peers(id, peer_depth)
    }

    /// Picks the peer set of `name` (with `manifest`): its peers, theirs,
    /// and so on, one version per name, as npm loads them into a virtual
    /// root before placing any. A peer the registry cannot give is left out
    /// (placing it reports that).
    fn peer_set(&mut self, name: &str, manifest: &Value) -> Result<PeerSet, NpmError> {
        let mut set = PeerSet::new();
        let mut todo: Vec<Arc<Value>> = vec![Arc::new(manifest.clone())];
        while let Some(m) = todo.pop() {
            for (pn, spec, _) in peers_of(&m) {
                if pn == name || set.contains_key(&pn) || !super::valid_name(&pn) {
                    continue;
                }
                let Ok(p) = self.client.packument(&pn) else { continue };
                let Ok(want) = Want::parse(&spec, Some(&p)) else { continue };
                let Some((v, pm)) = pick(&p, &spec, &want) else { continue };
                let pm = Arc::new(pm.clone());
                set.insert(pn, (v.to_string(), pm.clone()));
                todo.push(pm);
                if set.len() > MAX_PEER_SET {
                    let msg = format!("its peer set holds more than {MAX_PEER_SET} packages");
                    return Err(NpmError::Package { package: name.to_string(), msg });
                }
            }
        }
        Ok(set)
    }

    /// Places the peers of `id` right after it (npm's peer set); a
    /// requested package's peers wait for its own turn and go inside it.
    fn place_peers(&mut self, id: usize, peer_depth: usize) -> Result<(), NpmError> {
        if self.tree.nodes[id].parent == 0 {
            return Ok(());
        }
        for (pname, pspec, pkind) in edges(&self.tree.nodes[id].manifest.clone()) {
            if pkind == EdgeKind::Peer {
                self.edge(id, &pname, &pspec, pkind, peer_depth + 1)?;
            }
        }
        Ok(())
    }

    /// Removes what nothing relies on any more (left behind by a replaced
    /// copy), with everything below it.
    fn prune(&mut self) {
        loop {
            let Some(dead) = (1..self.tree.nodes.len())
                .find(|&i| !self.tree.nodes[i].removed && self.tree.nodes[i].edges_in.is_empty())
            else {
                return;
            };
            let gone: Vec<usize> = (1..self.tree.nodes.len())
                .filter(|&i| !self.tree.nodes[i].removed && self.tree.is_descendant(i, dead))
                .collect();
            let parent = self.tree.nodes[dead].parent;
            let name = self.tree.nodes[dead].name.clone();
            self.tree.nodes[parent].children.remove(&name);
            for &g in &gone {
                self.tree.nodes[g].removed = true;
            }
            for node in &mut self.tree.nodes {
                node.edges_in.retain(|(f, _)| !gone.contains(f));
            }
        }
    }
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
