//! The image's own Python and glibc, read from the lock's Debian packages:
//! which locked package provides the `python` path (and so its version),
//! and libc6's version. Guards against wheels chosen for an interpreter or
//! a C library the image does not have (a cp312 wheel for a python3.11
//! image, a manylinux_2_39 wheel for glibc 2.36): `moat lock` takes these
//! from the image and refuses a blueprint that says otherwise.
#![forbid(unsafe_code)]
use super::{target, PypiSpec};

/// One package of the image's locked Debian set, as the build hands it
/// over (pypi names no Debian type: the Debian SBOM reads pypi's).
#[derive(Debug, Clone, Copy)]
pub struct ImagePackage<'a> {
    pub name: &'a str,
    pub version: &'a str,
    /// Locked packages it depends on.
    pub depends: &'a [String],
}

/// What the image decides, where it decides anything (`None`: the
/// blueprint's own setting stands). Recorded in the lock's `[pypi]` table.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct Image {
    /// `3.11.2`: the upstream version of the Debian package of `python`.
    pub(crate) python_version: Option<String>,
    /// `2.36`: libc6's upstream version, when the blueprint sets no `glibc`.
    pub(crate) glibc: Option<String>,
}

/// `1:3.11.2-6+deb12u9` -> `3.11.2` (no epoch, no revision, digits and dots).
fn upstream(version: &str) -> String {
    let v = version.split_once(':').map_or(version, |(_, v)| v);
    let v: String = v.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    v.trim_end_matches('.').to_string()
}

/// Whether the blueprint left `glibc` out (its default has no place in the file).
pub(crate) fn glibc_is_default(spec: &PypiSpec) -> bool {
    spec.glibc.span().is_empty()
}

/// `python3.N-minimal` -> N.
fn minimal_minor(name: &str) -> Option<u32> {
    let n = name.strip_prefix("python3.")?.strip_suffix("-minimal")?;
    (!n.is_empty() && n.len() <= 3 && n.bytes().all(|b| b.is_ascii_digit())).then(|| n.parse().ok()).flatten()
}

/// The file name of a `python` in `/usr/bin` (or `/bin`, the same
/// directory with merged /usr), where Debian's packages own the
/// interpreters: `python3.N` (python3.N-minimal), `python3`
/// (python3-minimal), `python` (python-is-python3).
fn in_usr_bin(python: &str) -> Option<&str> {
    python.strip_prefix("/bin/").or_else(|| python.strip_prefix("/usr/bin/"))
}

/// What the locked Debian set says about `spec`'s interpreter and glibc;
/// an error when the blueprint's settings contradict it.
/// (`debian` is empty when the image has no Debian set.)
pub(crate) fn decide(spec: &PypiSpec, debian: &[ImagePackage]) -> Result<Image, String> {
    let pkg = |name: &str| debian.iter().find(|p| p.name == name);
    let mut out = Image::default();

    // glibc: the image's libc6; a blueprint may ask for less (older
    // manylinux tags only), never for more.
    if let Some(libc) = pkg("libc6") {
        let have = upstream(libc.version);
        let parsed =
            target::parse_glibc(&have).ok_or_else(|| format!("the locked libc6 {} is not glibc 2.N", libc.version))?;
        if glibc_is_default(spec) {
            out.glibc = Some(have);
        } else if let Some(want) = target::parse_glibc(spec.glibc.get_ref()) {
            if want > parsed {
                return Err(format!(
                    "glibc = {:?}, but the image's libc6 is {} (glibc {have}): manylinux_{}_{} wheels would not \
                     load there; say {have:?} or less, or leave glibc out",
                    spec.glibc.get_ref(),
                    libc.version,
                    want.0,
                    want.1
                ));
            }
        }
    }

    // Python: only when the image has a Debian interpreter at all.
    let pythons: Vec<(u32, &ImagePackage)> =
        debian.iter().filter_map(|p| minimal_minor(p.name).map(|m| (m, p))).collect();
    if pythons.is_empty() && pkg("python3-minimal").is_none() {
        return Ok(out);
    }
    let have: Vec<String> =
        pythons.iter().map(|(m, p)| format!("python3.{m}-minimal {} (/usr/bin/python3.{m})", p.version)).collect();
    let have = if have.is_empty() { "no python3.N-minimal".to_string() } else { have.join(", ") };
    let python = spec.python.get_ref();
    let Some(file) = in_usr_bin(python) else {
        // Not a path Debian's packages own (a venv, /usr/local, a tree of
        // the blueprint's layers): moat cannot see what it runs.
        return Ok(out);
    };
    let default_minor = || -> Result<u32, String> {
        let p3 = pkg("python3-minimal").ok_or_else(|| {
            format!("python = {python:?}: no locked Debian package provides it (python3-minimal is not locked; the image has {have})")
        })?;
        let deps: Vec<u32> = p3.depends.iter().filter_map(|d| minimal_minor(d)).collect();
        match deps.as_slice() {
            [m] => Ok(*m),
            _ => {
                let v = upstream(p3.version);
                let mut it = v.split('.');
                match (it.next(), it.next().and_then(|m| m.parse().ok())) {
                    (Some("3"), Some(m)) => Ok(m),
                    _ => Err(format!("python3-minimal {} names no python3.N", p3.version)),
                }
            }
        }
    };
    let minor = match file {
        "python3" => default_minor()?,
        "python" => {
            if pkg("python-is-python3").is_none() {
                return Err(format!(
                    "python = {python:?}: no locked Debian package provides it (python-is-python3 is not locked; \
                     the image has {have})"
                ));
            }
            default_minor()?
        }
        f => match f.strip_prefix("python3.").and_then(|n| n.parse::<u32>().ok()) {
            Some(m) if pythons.iter().any(|(pm, _)| *pm == m) => m,
            _ => {
                return Err(format!("python = {python:?}: no locked Debian package provides it (the image has {have})"))
            }
        },
    };
    let (_, interp) = pythons.iter().find(|(m, _)| *m == minor).ok_or_else(|| {
        format!("python = {python:?} is python3.{minor} (python3-minimal), but python3.{minor}-minimal is not locked")
    })?;
    let full = upstream(interp.version);
    let Some(((3, m), _)) = target::parse_python_version(&full) else {
        return Err(format!("the locked {} {} is not Python 3.N", interp.name, interp.version));
    };
    let said = spec.python_version.get_ref();
    let agrees = match target::parse_python_version(said) {
        Some((py, _)) if said.split('.').count() == 2 => py == (3, m),
        Some(_) => *said == full,
        None => false,
    };
    if !agrees || m != minor {
        return Err(format!(
            "python_version = {said:?}, but {python} in the image is {} {} (Python {full}); say {:?}",
            interp.name,
            interp.version,
            format!("3.{m}")
        ));
    }
    out.python_version = Some(full);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use toml::Spanned;

    const BOOKWORM: [(&str, &str); 3] =
        [("libc6", "2.36-9+deb12u14"), ("python3-minimal", "3.11.2-1+b1"), ("python3.11-minimal", "3.11.2-6+deb12u9")];
    fn image<'a>(set: &'a [(&'a str, &'a str)], deps: &'a [String]) -> Vec<ImagePackage<'a>> {
        set.iter()
            .map(|(name, version)| ImagePackage {
                name,
                version,
                depends: if *name == "python3-minimal" { deps } else { &[] },
            })
            .collect()
    }
    fn spec(python: &str, version: &str, glibc: Option<&str>) -> PypiSpec {
        let mut s: PypiSpec = toml::from_str(&format!(
            "packages = []\npython_version = {version:?}\npython = {python:?}\n\
             target = \"/usr/local/lib/python{}/dist-packages\"\n",
            version.splitn(3, '.').take(2).collect::<Vec<_>>().join(".")
        ))
        .unwrap();
        if let Some(g) = glibc {
            s.glibc = Spanned::new(1..5, g.into());
        }
        s
    }

    #[test]
    fn the_image_decides_and_contradictions_are_refused() {
        let deps = vec!["python3.11-minimal".to_string()];
        let d = image(&BOOKWORM, &deps);
        let i = decide(&spec("/usr/bin/python3", "3.11", None), &d).unwrap();
        assert_eq!(i, Image { python_version: Some("3.11.2".into()), glibc: Some("2.36".into()) });
        let i = decide(&spec("/bin/python3.11", "3.11.2", Some("2.28")), &d).unwrap();
        assert_eq!(i, Image { python_version: Some("3.11.2".into()), glibc: None });
        for (s, want) in [
            (
                spec("/usr/bin/python3", "3.12", None),
                vec!["python_version = \"3.12\"", "python3.11-minimal", "\"3.11\""],
            ),
            (spec("/usr/bin/python3", "3.11.4", None), vec!["3.11.4", "Python 3.11.2"]),
            (spec("/usr/bin/python3.12", "3.12", None), vec!["/usr/bin/python3.12", "no locked Debian package"]),
            (spec("/usr/bin/python", "3.11", None), vec!["python-is-python3"]),
            (spec("/usr/bin/python3", "3.11", Some("2.39")), vec!["glibc = \"2.39\"", "2.36-9+deb12u14"]),
        ] {
            let e = decide(&s, &d).unwrap_err();
            for w in want {
                assert!(e.contains(w), "{e:?} lacks {w:?}");
            }
        }
        // Outside Debian's paths, and without a Debian Python: the blueprint's settings stand.
        let i = decide(&spec("/opt/venv/bin/python", "3.12", None), &d).unwrap();
        assert_eq!(i, Image { python_version: None, glibc: Some("2.36".into()) });
        let only_libc = image(&[("libc6", "2.31-13")], &[]);
        let i = decide(&spec("/usr/bin/python3", "3.12", None), &only_libc).unwrap();
        assert_eq!(i, Image { python_version: None, glibc: Some("2.31".into()) });
        assert_eq!(decide(&spec("/usr/bin/python3", "3.12", None), &[]).unwrap(), Image::default());
        // python3-minimal without the dependency recorded: its own version names the minor.
        let i = decide(&spec("/usr/bin/python3", "3.11", None), &image(&BOOKWORM, &[])).unwrap();
        assert_eq!(i.python_version.as_deref(), Some("3.11.2"));
        assert_eq!(upstream("1:2.36-9+deb12u14"), "2.36");
    }
}
