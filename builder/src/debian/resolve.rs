//! Dependency resolution over verified Packages indexes: Depends and
//! Pre-Depends with alternatives, version constraints, Provides, the Essential
//! set, and exclusions (the chain that needs an excluded package is shown).
//! Deterministic: the same indexes and spec give the same lock.
#![forbid(unsafe_code)]
use super::control::{compare_versions, paragraphs, parse_deps, priority_rank, Dep};
use super::{DebianError, LockedPackage};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};

/// One binary package from a Packages index.
#[derive(Debug, Clone)]
pub(crate) struct IndexPkg {
    pub name: String,
    pub version: String,
    pub arch: String,
    pub suite: String,
    pub filename: String,
    pub sha256: String,
    pub size: u64,
    pub installed_size: u64,
    pub priority: u8,
    pub essential: bool,
    pub depends: Vec<Vec<Dep>>,
    pub provides: Vec<Dep>,
}

/// Merged indexes of every suite: the highest version of each name wins.
#[derive(Debug, Default)]
pub(crate) struct Index {
    pub pkgs: BTreeMap<String, IndexPkg>,
    providers: HashMap<String, Vec<String>>,
}

impl Index {
    /// Adds one decompressed Packages file; only `arch` and `all` are kept.
    pub(crate) fn add(&mut self, text: &str, suite: &str, arch: &str, what: &str) -> Result<(), DebianError> {
        let perr = |msg: String| DebianError::Parse { what: what.to_string(), msg };
        for p in paragraphs(text).map_err(perr)? {
            let a = p.get("Architecture").unwrap_or("");
            if a != arch && a != "all" {
                continue;
            }
            let name = p.get("Package").ok_or_else(|| perr("stanza without Package".into()))?;
            let version = p.get("Version").ok_or_else(|| perr(format!("{name}: no Version")))?;
            if let Some(old) = self.pkgs.get(name) {
                if compare_versions(&old.version, version).is_ge() {
                    continue;
                }
            }
            let sha256 = p.get("SHA256").unwrap_or("").to_ascii_lowercase();
            if sha256.len() != 64 || !sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(perr(format!("{name}: missing or bad SHA256")));
            }
            let filename = p.get("Filename").ok_or_else(|| perr(format!("{name}: no Filename")))?;
            if filename.split('/').any(|c| c == ".." || c.is_empty()) || filename.starts_with('/') {
                return Err(perr(format!("{name}: bad Filename {filename:?}")));
            }
            let mut depends =
                parse_deps(p.get("Pre-Depends").unwrap_or("")).map_err(|e| perr(format!("{name}: {e}")))?;
            depends.extend(parse_deps(p.get("Depends").unwrap_or("")).map_err(|e| perr(format!("{name}: {e}")))?);
            let provides = parse_deps(p.get("Provides").unwrap_or(""))
                .map_err(|e| perr(format!("{name}: {e}")))?
                .into_iter()
                .flatten()
                .collect();
            let num = |f: &str| p.get(f).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
            let pkg = IndexPkg {
                name: name.into(),
                version: version.into(),
                arch: a.into(),
                suite: suite.into(),
                filename: filename.into(),
                sha256,
                size: num("Size"),
                installed_size: num("Installed-Size"),
                priority: priority_rank(p.get("Priority")),
                essential: p.get("Essential").is_some_and(|v| v.eq_ignore_ascii_case("yes")),
                depends,
                provides,
            };
            self.pkgs.insert(name.into(), pkg);
        }
        Ok(())
    }

    /// Builds the Provides map; call once after the last `add`.
    pub(crate) fn finish(&mut self) {
        self.providers.clear();
        for p in self.pkgs.values() {
            for v in &p.provides {
                self.providers.entry(v.name.clone()).or_default().push(p.name.clone());
            }
        }
        for v in self.providers.values_mut() {
            v.sort();
            v.dedup();
        }
    }

    /// Whether package `p` satisfies dependency `d` (by name or Provides).
    fn satisfies(&self, p: &IndexPkg, d: &Dep) -> bool {
        if p.name == d.name {
            return d.constraint.as_ref().is_none_or(|(op, v)| op.holds(&p.version, v));
        }
        p.provides.iter().any(|pv| {
            pv.name == d.name
                && match (&d.constraint, &pv.constraint) {
                    (None, _) => true,
                    (Some((op, want)), Some((_, have))) => op.holds(have, want),
                    (Some(_), None) => false,
                }
        })
    }

    /// Packages that could satisfy `d`, real package first.
    fn candidates(&self, d: &Dep) -> Vec<&IndexPkg> {
        let mut out = Vec::new();
        if let Some(p) = self.pkgs.get(&d.name) {
            if self.satisfies(p, d) {
                out.push(p);
            }
        }
        for n in self.providers.get(&d.name).into_iter().flatten() {
            if let Some(p) = self.pkgs.get(n) {
                if p.name != d.name && self.satisfies(p, d) {
                    out.push(p);
                }
            }
        }
        out
    }
}

/// Decides which package names may never be installed.
pub(crate) struct Excluder {
    user: globset::GlobSet,
}

impl Excluder {
    pub(crate) fn new(patterns: &[String]) -> Result<Excluder, DebianError> {
        let mut b = globset::GlobSetBuilder::new();
        for p in patterns {
            b.add(globset::Glob::new(p).map_err(|e| DebianError::Spec(format!("exclude pattern {p:?}: {e}")))?);
        }
        Ok(Excluder { user: b.build().map_err(|e| DebianError::Spec(e.to_string()))? })
    }
    pub(crate) fn excluded(&self, name: &str) -> bool {
        self.user.is_match(name) || is_toolchain(name)
    }
}

/// Toolchain and network-probe packages excluded by default: compilers
/// (gcc, g++, cpp, clang and their versioned names), make, netcat, ncat.
/// Library packages such as gcc-12-base or libgcc-s1 are not toolchains.
pub(crate) fn is_toolchain(name: &str) -> bool {
    const EXACT: &[&str] = &[
        "make",
        "make-guile",
        "ncat",
        "netcat",
        "netcat-openbsd",
        "netcat-traditional",
        "nmap",
        "socat",
        "tcc",
        "clang",
        "build-essential",
    ];
    if EXACT.contains(&name) {
        return true;
    }
    for prefix in ["gcc", "g++", "cpp", "clang", "gfortran"] {
        if let Some(rest) = name.strip_prefix(prefix) {
            let rest = rest
                .strip_suffix("-x86-64-linux-gnu")
                .or_else(|| rest.strip_suffix("-aarch64-linux-gnu"))
                .unwrap_or(rest);
            if rest.is_empty() {
                return true;
            }
            if let Some(v) = rest.strip_prefix('-') {
                if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
                    return true;
                }
            }
        }
    }
    false
}

/// Resolves `roots` (plus the Essential set when `essential`) to a closed,
/// sorted package set.
pub(crate) fn resolve(
    index: &Index,
    roots: &[String],
    essential: bool,
    ex: &Excluder,
) -> Result<Vec<LockedPackage>, DebianError> {
    let mut selected: BTreeSet<String> = BTreeSet::new();
    let mut parent: HashMap<String, (String, String)> = HashMap::new(); // child -> (parent, clause text)
    let mut queue = VecDeque::new();
    let chain = |parent: &HashMap<String, (String, String)>, from: &str| -> Vec<String> {
        let mut c = vec![from.to_string()];
        let mut cur = from.to_string();
        while let Some((p, _)) = parent.get(&cur) {
            if c.contains(p) {
                break;
            }
            c.push(p.clone());
            cur = p.clone();
        }
        c.reverse();
        c
    };
    let mut root_list: Vec<String> = roots.to_vec();
    if essential {
        root_list.extend(index.pkgs.values().filter(|p| p.essential && !ex.excluded(&p.name)).map(|p| p.name.clone()));
    }
    for r in &root_list {
        if ex.excluded(r) {
            return Err(DebianError::Excluded { package: r.clone(), chain: vec![r.clone()] });
        }
        let d = Dep { name: r.clone(), constraint: None };
        let pick = pick(index, &[d], &selected, ex)
            .map_err(|_| DebianError::Unresolvable { dep: r.clone(), chain: vec![] })?;
        if selected.insert(pick.clone()) {
            queue.push_back(pick);
        }
    }
    while let Some(name) = queue.pop_front() {
        let Some(pkg) = index.pkgs.get(&name) else { continue };
        for clause in &pkg.depends {
            if clause.iter().any(|d| selected.iter().any(|s| index.pkgs.get(s).is_some_and(|p| index.satisfies(p, d))))
            {
                continue;
            }
            let text = clause.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(" | ");
            match pick(index, clause, &selected, ex) {
                Ok(c) => {
                    parent.insert(c.clone(), (name.clone(), text));
                    selected.insert(c.clone());
                    queue.push_back(c);
                }
                Err(Some(excluded)) => {
                    let mut ch = chain(&parent, &name);
                    ch.push(excluded.clone());
                    return Err(DebianError::Excluded { package: excluded, chain: ch });
                }
                Err(None) => return Err(DebianError::Unresolvable { dep: text, chain: chain(&parent, &name) }),
            }
        }
    }
    let mut out = Vec::new();
    for name in &selected {
        let Some(p) = index.pkgs.get(name) else { continue };
        let mut deps = BTreeSet::new();
        for clause in &p.depends {
            'c: for d in clause {
                for s in &selected {
                    if s != name && index.pkgs.get(s).is_some_and(|q| index.satisfies(q, d)) {
                        deps.insert(s.clone());
                        break 'c;
                    }
                }
            }
        }
        out.push(LockedPackage {
            name: p.name.clone(),
            version: p.version.clone(),
            architecture: p.arch.clone(),
            suite: p.suite.clone(),
            path: p.filename.clone(),
            sha256: p.sha256.clone(),
            size: p.size,
            installed_size: p.installed_size,
            essential: p.essential,
            depends: deps.into_iter().collect(),
        });
    }
    Ok(out)
}

/// Picks the preferred installable candidate for a clause. Preference, as
/// debootstrap does: higher Priority first (awk -> mawk), then the candidate
/// with the fewest dependencies not yet met (usrmerge | usr-is-merged ->
/// usr-is-merged, which needs nothing), then the clause's order, then name.
/// `Err(Some(name))`: only excluded candidates exist; `Err(None)`: none at all.
fn pick(index: &Index, clause: &[Dep], selected: &BTreeSet<String>, ex: &Excluder) -> Result<String, Option<String>> {
    /// (priority, unmet dependencies, alternative index, virtual, name)
    type Pref = (u8, usize, usize, bool, String);
    let mut best: Option<(Pref, String)> = None;
    let mut excluded = None;
    for (i, d) in clause.iter().enumerate() {
        for c in index.candidates(d) {
            if ex.excluded(&c.name) {
                excluded.get_or_insert_with(|| c.name.clone());
                continue;
            }
            let unmet = c
                .depends
                .iter()
                .filter(|cl| {
                    !cl.iter()
                        .any(|d| selected.iter().any(|s| index.pkgs.get(s).is_some_and(|p| index.satisfies(p, d))))
                })
                .count();
            let key = (c.priority, unmet, i, c.name != d.name, c.name.clone());
            if best.as_ref().is_none_or(|(k, _)| key < *k) {
                best = Some((key, c.name.clone()));
            }
        }
    }
    best.map(|(_, n)| n).ok_or(excluded)
}

#[cfg(test)]
mod tests {
    use super::*;
    fn stanza(name: &str, extra: &str) -> String {
        format!("Package: {name}\nVersion: 1.0\nArchitecture: amd64\nFilename: pool/{name}.deb\nSize: 10\nSHA256: {}\n{extra}\n\n", "a".repeat(64))
    }
    fn index() -> Index {
        let mut t = String::new();
        t += &stanza("app", "Depends: libc6 (>= 0.5), awk, usrmerge | usr-is-merged\nPriority: optional");
        t += &stanza("libc6", "Priority: required");
        t += &stanza("mawk", "Provides: awk\nPriority: required\nDepends: libc6");
        t += &stanza("gawk", "Provides: awk\nPriority: optional");
        t += &stanza("usrmerge", "Depends: perl\nPriority: optional");
        t += &stanza("usr-is-merged", "Priority: optional");
        t += &stanza("perl", "Priority: standard");
        t += &stanza("bad", "Depends: mid");
        t += &stanza("mid", "Depends: gcc-12");
        t += &stanza("gcc-12", "");
        t += &stanza("dash", "Essential: yes\nPriority: required");
        let mut i = Index::default();
        i.add(&t, "s", "amd64", "test").unwrap();
        i.finish();
        i
    }
    #[test]
    fn alternatives_provides_and_essential() {
        let i = index();
        let ex = Excluder::new(&[]).unwrap();
        let r = resolve(&i, &["app".into()], true, &ex).unwrap();
        let names: Vec<_> = r.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["app", "dash", "libc6", "mawk", "usr-is-merged"]);
        assert_eq!(r[0].depends, ["libc6", "mawk", "usr-is-merged"]);
    }
    #[test]
    fn exclusion_shows_chain() {
        let i = index();
        let ex = Excluder::new(&[]).unwrap();
        match resolve(&i, &["bad".into()], false, &ex) {
            Err(DebianError::Excluded { package, chain }) => {
                assert_eq!(package, "gcc-12");
                assert_eq!(chain, ["bad", "mid", "gcc-12"]);
            }
            other => panic!("expected exclusion error, got {other:?}"),
        }
        let ex = Excluder::new(&["mawk".into()]).unwrap();
        let r = resolve(&i, &["app".into()], false, &ex).unwrap();
        assert!(r.iter().any(|p| p.name == "gawk"));
    }
    #[test]
    fn toolchain_names() {
        for n in ["gcc", "gcc-12", "g++-12", "cpp-12", "make", "netcat-openbsd", "ncat", "gcc-12-x86-64-linux-gnu"] {
            assert!(is_toolchain(n), "{n}");
        }
        for n in ["gcc-12-base", "libgcc-s1", "cpp-doc", "makedev", "libstdc++6"] {
            assert!(!is_toolchain(n), "{n}");
        }
    }
}
