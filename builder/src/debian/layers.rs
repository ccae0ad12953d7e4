//! Nix-style grouping of locked packages into a bounded number of layers:
//! stable (depends only on the lock), popularity- and size-aware (large
//! packages many others depend on get a layer of their own), and sharing-
//! friendly (the Essential set is one layer; the rest is bucketed by a hash
//! of the package name, so one added package changes one bucket).
#![forbid(unsafe_code)]
use super::{DebianLock, LockedPackage};
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, BTreeSet};

/// Default bound on Debian layers (fix-up layer included).
pub(crate) const DEFAULT_MAX_LAYERS: usize = 10;
/// Packages smaller than this (installed KiB) never get a layer of their own.
const SOLO_MIN_KIB: u64 = 2048;

/// One planned group: layer name and package names (sorted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Group {
    pub name: String,
    pub packages: Vec<String>,
}

/// Popularity: how many locked packages (itself included) reach `p` through
/// their dependencies.
pub(crate) fn popularity(pkgs: &[LockedPackage]) -> BTreeMap<String, usize> {
    let by: BTreeMap<&str, &LockedPackage> = pkgs.iter().map(|p| (p.name.as_str(), p)).collect();
    let mut pop: BTreeMap<String, usize> = BTreeMap::new();
    for p in pkgs {
        let mut seen = BTreeSet::new();
        let mut stack = vec![p.name.as_str()];
        while let Some(n) = stack.pop() {
            if !seen.insert(n) {
                continue;
            }
            if let Some(q) = by.get(n) {
                stack.extend(q.depends.iter().map(String::as_str));
            }
        }
        for n in seen {
            *pop.entry(n.to_string()).or_default() += 1;
        }
    }
    pop
}

fn bucket_of(name: &str, n: usize) -> usize {
    let h = Sha256::digest(name.as_bytes());
    let v = u64::from_be_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]]);
    (v % n.max(1) as u64) as usize
}

/// Groups the lock's packages into at most `max_layers - 1` package layers
/// (the last layer is the fix-ups).
pub(crate) fn group(lock: &DebianLock, max_layers: usize) -> Vec<Group> {
    let budget = max_layers.max(3) - 1;
    let pop = popularity(&lock.packages);
    let essential: BTreeSet<&str> = lock.packages.iter().filter(|p| p.essential).map(|p| p.name.as_str()).collect();
    let mut ranked: Vec<&LockedPackage> = lock.packages.iter().filter(|p| p.installed_size >= SOLO_MIN_KIB).collect();
    let score = |p: &LockedPackage| pop.get(&p.name).copied().unwrap_or(1) as u128 * p.installed_size as u128;
    ranked.sort_by(|a, b| score(b).cmp(&score(a)).then_with(|| a.name.cmp(&b.name)));
    let solo_n = (budget / 2).min(ranked.len());
    let solo: Vec<&str> = ranked[..solo_n].iter().map(|p| p.name.as_str()).collect();
    let mut out = Vec::new();
    let ess: Vec<String> = essential.iter().filter(|n| !solo.contains(n)).map(|n| n.to_string()).collect();
    let has_ess = !ess.is_empty();
    if has_ess {
        out.push(Group { name: "debian-essential".into(), packages: ess });
    }
    for s in &solo {
        out.push(Group { name: format!("debian-{s}"), packages: vec![s.to_string()] });
    }
    let nb = budget.saturating_sub(solo_n + usize::from(has_ess)).max(1);
    let mut buckets: Vec<Vec<String>> = vec![Vec::new(); nb];
    for p in &lock.packages {
        if !essential.contains(p.name.as_str()) && !solo.contains(&p.name.as_str()) {
            buckets[bucket_of(&p.name, nb)].push(p.name.clone());
        }
    }
    for (i, b) in buckets.into_iter().enumerate() {
        if !b.is_empty() {
            out.push(Group { name: format!("debian-group-{}of{nb}", i + 1), packages: b });
        }
    }
    for g in &mut out {
        g.packages.sort();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    fn pkg(name: &str, size: u64, ess: bool, deps: &[&str]) -> LockedPackage {
        LockedPackage {
            name: name.into(),
            version: "1".into(),
            architecture: "amd64".into(),
            suite: "s".into(),
            path: format!("pool/{name}.deb"),
            sha256: "0".repeat(64),
            size: 1,
            installed_size: size,
            essential: ess,
            depends: deps.iter().map(|s| s.to_string()).collect(),
        }
    }
    #[test]
    fn bounded_stable_popular() {
        let mut pkgs = vec![
            pkg("libc6", 13000, false, &[]),
            pkg("dash", 200, true, &["libc6"]),
            pkg("python3.11", 20000, false, &["libc6"]),
            pkg("git", 40000, false, &["libc6", "perl"]),
            pkg("perl", 30000, false, &["libc6"]),
        ];
        for i in 0..40 {
            pkgs.push(pkg(&format!("lib{i}"), 100, false, &["libc6"]));
        }
        pkgs.sort_by(|a, b| a.name.cmp(&b.name));
        let lock = DebianLock { suites: vec![], packages: pkgs };
        let g = group(&lock, 8);
        assert!(g.len() <= 7, "{g:?}");
        let total: usize = g.iter().map(|x| x.packages.len()).sum();
        assert_eq!(total, lock.packages.len());
        assert_eq!(g[0].packages, ["dash"]);
        // libc6 is depended on by everyone: it gets its own layer first among solos.
        assert_eq!(g[1].packages, ["libc6"]);
        assert_eq!(group(&lock, 8), g);
        assert_eq!(popularity(&lock.packages)["libc6"], lock.packages.len());
    }
}
