//! Which wheel of which version each requirement gets, for the target
//! interpreter: breadth first from the blueprint's requirements, each
//! project's newest version (final releases unless a specifier names a
//! prerelease or only prereleases fit; yanked files only when pinned with
//! `==`) that admits the target's Python and has a wheel for its tags, its
//! dependencies read from the wheel's metadata with markers evaluated for
//! the target (project pages and metadata fetched several at once, ahead
//! of the loop that decides, which takes them in its own order). No
//! backtracking: a later requirement the chosen version does not satisfy
//! is an error naming both sides. Guards against host-chosen wheels,
//! sdists (build code never runs) and silent conflicts.
#![forbid(unsafe_code)]
use super::index::{Client, IndexFile};
use super::metadata::{self, Metadata};
use super::target::{Target, WheelName};
use super::PypiError;
use pep440_rs::{Operator, Version, VersionSpecifiers};
use pep508_rs::{ExtraName, PackageName, Requirement, VersionOrUrl};
use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::str::FromStr;

/// Most packages in one resolution.
const MAX_PACKAGES: usize = 5_000;

/// One chosen package.
#[derive(Debug, Clone)]
pub(crate) struct Chosen {
    pub(crate) name: PackageName,
    pub(crate) version: Version,
    pub(crate) file: IndexFile,
    /// Core metadata, if it came from the index (PEP 658); else read from the wheel.
    pub(crate) metadata: Metadata,
    pub(crate) metadata_bytes: Option<Vec<u8>>,
    /// Named by the blueprint.
    pub(crate) requested: bool,
}

struct State {
    chosen: Chosen,
    extras: BTreeSet<ExtraName>,
    /// Who asked for it, and what (for conflict messages).
    asked: Vec<(String, String)>,
}

/// Core metadata of a file: the index's `.metadata` bytes (if it came
/// from there) and the parsed fields.
pub(crate) type MetadataOf = (Option<Vec<u8>>, Metadata);

/// Gives a chosen file's metadata (the index's `.metadata` or the wheel's own).
pub(crate) type FetchMetadata<'a> = dyn Fn(&Client, &str, &IndexFile) -> Result<MetadataOf, PypiError> + Sync + 'a;

/// Most projects fetched ahead in one go (their pages, metadata and wheels held until used).
const AHEAD: usize = 32;

/// One project's page, the file `choose` takes for `spec`, and its metadata.
fn fetch_one(
    client: &Client,
    target: &Target,
    name: &PackageName,
    spec: &VersionSpecifiers,
    fetch_metadata: &FetchMetadata,
) -> Result<(IndexFile, MetadataOf), PypiError> {
    let files = client.project(name.as_ref())?;
    let file = choose(name, spec, &files, target)?;
    let meta = fetch_metadata(client, name.as_ref(), &file)?;
    Ok((file, meta))
}

/// What `fetch_one` gave for a name, and for which specifiers.
type Ahead = HashMap<PackageName, (VersionSpecifiers, Result<(IndexFile, MetadataOf), PypiError>)>;

/// Fetches `first` and the projects the queue decides next (each at its
/// first requirement whose marker holds, as the loop will meet it), several
/// at once. Results, errors too, wait in `ahead` until the loop reaches
/// them, so the outcome and the error reported are the sequential ones.
fn fetch_ahead(
    client: &Client,
    target: &Target,
    first: (&PackageName, &VersionSpecifiers),
    queue: &VecDeque<(Requirement, String)>,
    states: &BTreeMap<PackageName, State>,
    ahead: &mut Ahead,
    fetch_metadata: &FetchMetadata,
) -> Result<(), PypiError> {
    let mut batch: Vec<(PackageName, VersionSpecifiers)> = vec![(first.0.clone(), first.1.clone())];
    let mut seen: BTreeSet<PackageName> = BTreeSet::from([first.0.clone()]);
    for (r, _) in queue {
        if batch.len() >= AHEAD {
            break;
        }
        if states.contains_key(&r.name) || ahead.contains_key(&r.name) || !r.marker.evaluate(&target.env, &[]) {
            continue;
        }
        if seen.insert(r.name.clone()) {
            if let Some(VersionOrUrl::VersionSpecifier(s)) = &r.version_or_url {
                batch.push((r.name.clone(), s.clone()));
            } else if r.version_or_url.is_none() {
                batch.push((r.name.clone(), VersionSpecifiers::empty()));
            }
        }
    }
    let got = super::par_map(&batch, |(n, s)| Ok(fetch_one(client, target, n, s, fetch_metadata)))?;
    ahead.extend(batch.into_iter().zip(got).map(|((n, s), r)| (n, (s, r))));
    Ok(())
}

/// Resolves `requests`; `fetch_metadata(client, name, file)` gives each
/// chosen file's metadata (the index's `.metadata` or the wheel's own).
/// Project pages and metadata are fetched several at once ([`fetch_ahead`]).
pub(crate) fn resolve(
    client: &Client,
    target: &Target,
    requests: &[Requirement],
    fetch_metadata: &FetchMetadata,
) -> Result<Vec<Chosen>, PypiError> {
    let mut ahead: Ahead = HashMap::new();
    let mut states: BTreeMap<PackageName, State> = BTreeMap::new();
    let mut queue: VecDeque<(Requirement, String)> =
        requests.iter().map(|r| (r.clone(), "the blueprint".to_string())).collect();
    while let Some((req, from)) = queue.pop_front() {
        if !req.marker.evaluate(&target.env, &[]) {
            continue;
        }
        let spec = match &req.version_or_url {
            None => VersionSpecifiers::empty(),
            Some(VersionOrUrl::VersionSpecifier(s)) => s.clone(),
            Some(VersionOrUrl::Url(u)) => {
                return Err(PypiError::Package {
                    package: req.name.to_string(),
                    msg: format!("{from} asks for it by URL ({u}); moat installs index wheels only"),
                })
            }
        };
        let said = format!("{}{}", req.name, spec);
        if let Some(st) = states.get_mut(&req.name) {
            if !spec.contains(&st.chosen.version) {
                let earlier: Vec<String> = st.asked.iter().map(|(who, what)| format!("{what} by {who}")).collect();
                return Err(PypiError::Package {
                    package: format!("{}=={}", st.chosen.name, st.chosen.version),
                    msg: format!(
                        "chosen for {}; {from} requires {said}. moat does not backtrack: pin a version \
                         both accept in the blueprint",
                        earlier.join(", ")
                    ),
                });
            }
            st.asked.push((from.clone(), said));
            let new: Vec<ExtraName> = req.extras.iter().filter(|e| !st.extras.contains(*e)).cloned().collect();
            if !new.is_empty() {
                st.extras.extend(new);
                let extras: Vec<ExtraName> = st.extras.iter().cloned().collect();
                let who = format!("{}=={}", st.chosen.name, st.chosen.version);
                for d in deps(&st.chosen.metadata, target, &extras) {
                    queue.push_back((d, who.clone()));
                }
            }
            continue;
        }
        if states.len() >= MAX_PACKAGES {
            return Err(PypiError::Spec(format!("more than {MAX_PACKAGES} packages; not resolved")));
        }
        if !ahead.contains_key(&req.name) {
            fetch_ahead(client, target, (&req.name, &spec), &queue, &states, &mut ahead, fetch_metadata)?;
        }
        let (file, (metadata_bytes, metadata)) = match ahead.remove(&req.name) {
            Some((s, got)) if s == spec => got?,
            _ => fetch_one(client, target, &req.name, &spec, fetch_metadata)?,
        };
        let wn = WheelName::parse(&file.filename).ok_or_else(|| PypiError::Package {
            package: req.name.to_string(),
            msg: format!("{:?} is not a wheel file name", file.filename),
        })?;
        let version = Version::from_str(&wn.version).map_err(|e| PypiError::Package {
            package: req.name.to_string(),
            msg: format!("{}: version {:?}: {e}", file.filename, wn.version),
        })?;
        let id = format!("{}=={}", req.name, version);
        if metadata.name != req.name || metadata.version != version {
            return Err(PypiError::Package {
                package: id,
                msg: format!("the metadata of {} says {}=={}; refused", file.filename, metadata.name, metadata.version),
            });
        }
        if let Some(rp) = &metadata.requires_python {
            if !rp.contains(&py_version(target)) {
                return Err(PypiError::Package {
                    package: id,
                    msg: format!("requires Python {rp}; the target is {}.{}", target.py.0, target.py.1),
                });
            }
        }
        let extras: Vec<ExtraName> = req.extras.clone();
        for d in deps(&metadata, target, &extras) {
            queue.push_back((d, id.clone()));
        }
        let requested = from == "the blueprint";
        states.insert(
            req.name.clone(),
            State {
                chosen: Chosen { name: req.name.clone(), version, file, metadata, metadata_bytes, requested },
                extras: extras.into_iter().collect(),
                asked: vec![(from, said)],
            },
        );
    }
    Ok(states.into_values().map(|s| s.chosen).collect())
}

/// The target's full Python version.
fn py_version(target: &Target) -> Version {
    Version::from_str(target.env.python_full_version().to_string().as_str())
        .unwrap_or_else(|_| Version::new([u64::from(target.py.0), u64::from(target.py.1)]))
}

/// The dependencies of `m` whose markers hold for the target with `extras`
/// (their markers, now evaluated, are dropped: `extra == "x"` names the
/// parent's extras, which the queue does not carry).
fn deps(m: &Metadata, target: &Target, extras: &[ExtraName]) -> Vec<Requirement> {
    m.requires_dist
        .iter()
        .filter(|r| r.marker.evaluate(&target.env, extras))
        .map(|r| Requirement { marker: pep508_rs::MarkerTree::TRUE, ..r.clone() })
        .collect()
}

/// Whether the specifiers name a prerelease (then prereleases are candidates).
fn allows_pre(spec: &VersionSpecifiers) -> bool {
    spec.iter().any(|s| s.version().any_prerelease())
}

/// Whether the specifiers pin exactly (`==V`, `===V`): yanked files qualify.
fn pinned(spec: &VersionSpecifiers) -> bool {
    spec.iter().any(|s| matches!(s.operator(), Operator::Equal | Operator::ExactEqual))
}

/// The wheel pip would take: the newest acceptable version with a wheel
/// for the target, its best-ranked tag, then the highest build number.
fn choose(
    name: &PackageName,
    spec: &VersionSpecifiers,
    files: &[IndexFile],
    target: &Target,
) -> Result<IndexFile, PypiError> {
    let py = py_version(target);
    let pre = allows_pre(spec);
    let mut wheels: Vec<(Version, usize, u64, &IndexFile)> = Vec::new();
    let mut sdists = BTreeSet::new();
    let mut other_wheels = 0usize;
    for f in files {
        if f.yanked && !pinned(spec) {
            continue;
        }
        if let Some(rp) = f.requires_python.as_deref().and_then(|s| VersionSpecifiers::from_str(s).ok()) {
            if !rp.contains(&py) {
                continue;
            }
        }
        let Some(wn) = WheelName::parse(&f.filename) else {
            if let Some(v) = sdist_version(name, &f.filename) {
                if spec.contains(&v) {
                    sdists.insert(v);
                }
            }
            continue;
        };
        let Ok(v) = Version::from_str(&wn.version) else { continue };
        if PackageName::from_str(&wn.name).ok().as_ref() != Some(name) || !spec.contains(&v) {
            continue;
        }
        match target.rank(&wn) {
            Some(r) => wheels.push((v, r, wn.build.map_or(0, |b| b.0), f)),
            None => other_wheels += 1,
        }
    }
    // Prereleases only when a specifier names one, or when nothing else fits
    // (packaging's `SpecifierSet.filter`, which pip applies to the wheels that fit).
    if !pre && wheels.iter().any(|w| !w.0.any_prerelease()) {
        wheels.retain(|w| !w.0.any_prerelease());
    }
    if !pre && sdists.iter().any(|v| !v.any_prerelease()) {
        sdists.retain(|v| !v.any_prerelease());
    }
    wheels.sort_by(|a, b| b.0.cmp(&a.0).then(a.1.cmp(&b.1)).then(b.2.cmp(&a.2)).then(a.3.filename.cmp(&b.3.filename)));
    if let Some((v, _, _, f)) = wheels.first() {
        if f.sha256.is_none() {
            return Err(PypiError::Package {
                package: format!("{name}=={v}"),
                msg: format!("the index gives no sha256 for {}; it cannot be pinned", f.filename),
            });
        }
        return Ok((*f).clone());
    }
    let what = format!("{name}{spec}");
    if other_wheels == 0 && !sdists.is_empty() {
        let versions: Vec<String> = sdists.iter().rev().take(3).map(ToString::to_string).collect();
        return Err(PypiError::SdistOnly { package: what, versions: versions.join(", ") });
    }
    Err(PypiError::Package {
        package: what,
        msg: format!(
            "no wheel for CPython {}.{} on linux {} (glibc) among {} files; moat installs wheels only",
            target.py.0,
            target.py.1,
            target.machine,
            files.len()
        ),
    })
}

/// The version of an sdist file name (`name-1.0.tar.gz`, `.zip`), if it is one of `name`'s.
fn sdist_version(name: &PackageName, file: &str) -> Option<Version> {
    let stem = file.strip_suffix(".tar.gz").or_else(|| file.strip_suffix(".zip"))?;
    let (n, v) = stem.rsplit_once('-')?;
    (PackageName::from_str(n).ok().as_ref() == Some(name)).then(|| Version::from_str(v).ok()).flatten()
}

/// Core metadata of `file`: the index's PEP 658 file when offered (checked
/// against its sha256 when given), else `None` (read from the wheel).
pub(crate) fn index_metadata(
    client: &Client,
    package: &str,
    file: &IndexFile,
) -> Result<Option<(Vec<u8>, Metadata)>, PypiError> {
    let Some(want) = &file.metadata else { return Ok(None) };
    let url = format!("{}.metadata", file.url);
    let (bytes, _) = client.get(&url, metadata::MAX_METADATA, "*/*")?;
    if let Some(want) = want {
        let got = super::index::sha256_hex(&bytes);
        if &got != want {
            return Err(PypiError::Package {
                package: package.into(),
                msg: format!("{url} does not match the index's sha256 (expected {want}, got {got}); refused"),
            });
        }
    }
    let m = metadata::parse(&bytes)
        .map_err(|msg| PypiError::Package { package: package.into(), msg: format!("{url}: {msg}") })?;
    Ok(Some((bytes, m)))
}

#[cfg(test)]
mod tests {
    use super::*;
    fn f(name: &str) -> IndexFile {
        IndexFile {
            filename: name.into(),
            url: format!("http://h/{name}"),
            sha256: Some("a".repeat(64)),
            requires_python: None,
            yanked: false,
            metadata: None,
        }
    }
    #[test]
    fn picks_as_pip_does() {
        let t =
            Target::new("3.11", "amd64", "2.36", "/usr/bin/python3", "/usr/local/lib/python3.11/dist-packages", false)
                .unwrap();
        let n = PackageName::from_str("Fx_Lib").unwrap();
        let any = VersionSpecifiers::empty();
        let files = vec![
            f("fx_lib-1.0-py3-none-any.whl"),
            f("fx_lib-1.0-cp311-cp311-manylinux_2_17_x86_64.whl"),
            f("fx_lib-2.0b1-py3-none-any.whl"),
            f("fx_lib-1.1.tar.gz"),
            IndexFile { yanked: true, ..f("fx_lib-1.5-py3-none-any.whl") },
            IndexFile { requires_python: Some(">=3.12".into()), ..f("fx_lib-1.4-py3-none-any.whl") },
        ];
        assert_eq!(choose(&n, &any, &files, &t).unwrap().filename, "fx_lib-1.0-cp311-cp311-manylinux_2_17_x86_64.whl");
        let pre = VersionSpecifiers::from_str(">=2.0b1").unwrap();
        assert_eq!(choose(&n, &pre, &files, &t).unwrap().filename, "fx_lib-2.0b1-py3-none-any.whl");
        let yanked = VersionSpecifiers::from_str("==1.5").unwrap();
        assert_eq!(choose(&n, &yanked, &files, &t).unwrap().filename, "fx_lib-1.5-py3-none-any.whl");
        let e = choose(&n, &VersionSpecifiers::from_str("==1.1").unwrap(), &files, &t).unwrap_err().to_string();
        assert!(e.contains("fx-lib==1.1") && e.contains("sdist"), "{e}");
        // Only prereleases have wheels: pip (packaging's filter) takes them.
        let only_pre =
            vec![f("fx_lib-2.0b1-py3-none-any.whl"), f("fx_lib-2.0b2-py3-none-any.whl"), f("fx_lib-1.0.tar.gz")];
        assert_eq!(choose(&n, &any, &only_pre, &t).unwrap().filename, "fx_lib-2.0b2-py3-none-any.whl");
    }
    #[test]
    fn an_extra_brings_its_dependencies() {
        let t =
            Target::new("3.11", "amd64", "2.36", "/usr/bin/python3", "/usr/local/lib/python3.11/dist-packages", false)
                .unwrap();
        let m = metadata::parse(
            b"Name: a\nVersion: 1\nRequires-Dist: c ; extra == 'color'\nRequires-Dist: w ; sys_platform == 'win32'\n",
        )
        .unwrap();
        let r: Requirement = Requirement::from_str("a[color]").unwrap();
        let d = deps(&m, &t, &r.extras);
        assert_eq!(d.len(), 1);
        // The queue evaluates a dependency's marker again, without the parent's extras.
        assert!(d[0].marker.evaluate(&t.env, &[]), "{d:?}");
    }
}
