//! The interpreter a `[pypi]` table installs for, as data: its version,
//! machine and glibc give the wheel tags it accepts (in pip's order of
//! preference) and the PEP 508 marker environment; `target` gives the
//! install paths (lib, bin, prefix). Guards against wheels and dependencies
//! chosen for the host instead of the image: nothing here looks at the host.
#![forbid(unsafe_code)]
use pep508_rs::{MarkerEnvironment, MarkerEnvironmentBuilder};
use std::collections::HashMap;

/// What a blueprint's `[pypi]` table says about its interpreter, checked.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    /// (3, 11)
    pub(crate) py: (u32, u32),
    /// `x86_64` | `aarch64` (Python's `platform.machine()`).
    pub(crate) machine: &'static str,
    /// Wheel tag `py-abi-plat` -> rank (0 is the most preferred).
    pub(crate) tags: HashMap<String, usize>,
    pub(crate) env: MarkerEnvironment,
    /// The interpreter path in the image (the scripts' `#!`).
    pub(crate) python: String,
    /// Root-relative, clean: `usr/local/lib/python3.11/dist-packages`.
    pub(crate) lib: String,
    /// `usr/local/bin`
    pub(crate) bin: String,
    /// `usr/local` (the `data` scheme).
    pub(crate) prefix: String,
    /// `usr/local/include/python3.11` (`PREFIX/include/site/python3.11` in a
    /// venv): the `headers` scheme, with the package's name below it.
    pub(crate) include: String,
}

/// `3.11` (or `3.11.4`) -> ((3, 11), full version).
pub(crate) fn parse_python_version(s: &str) -> Option<((u32, u32), String)> {
    let parts: Vec<&str> = s.split('.').collect();
    let num = |p: &&str| !p.is_empty() && p.len() <= 4 && p.bytes().all(|b| b.is_ascii_digit());
    if !(2..=3).contains(&parts.len()) || !parts.iter().all(num) || parts[0] != "3" {
        return None;
    }
    let minor: u32 = parts[1].parse().ok()?;
    let full = if parts.len() == 3 { s.to_string() } else { format!("{s}.0") };
    Some(((3, minor), full))
}

/// `2.36` -> (2, 36).
pub(crate) fn parse_glibc(s: &str) -> Option<(u32, u32)> {
    let (a, b) = s.split_once('.')?;
    let (a, b): (u32, u32) = (a.parse().ok()?, b.parse().ok()?);
    (a == 2 && (17..=99).contains(&b)).then_some((a, b))
}

/// The Python machine name for a blueprint architecture.
pub(crate) fn machine_of(architecture: &str) -> Option<&'static str> {
    match architecture {
        "amd64" => Some("x86_64"),
        "arm64" => Some("aarch64"),
        _ => None,
    }
}

/// `PREFIX/lib/pythonX.Y/{site,dist}-packages` -> PREFIX (root-relative,
/// clean); the version in the path must be `py`.
pub(crate) fn prefix_of(target: &str, py: (u32, u32)) -> Result<String, String> {
    let clean = crate::layer::tree::clean_path(target).map_err(|e| e.to_string())?;
    let want = format!("lib/python{}.{}/", py.0, py.1);
    let bad = || {
        format!(
            "target {target:?} must be PREFIX/{want}site-packages or PREFIX/{want}dist-packages \
             (scripts go to PREFIX/bin, as pip puts them)"
        )
    };
    if !target.starts_with('/') {
        return Err(bad());
    }
    let rest = ["site-packages", "dist-packages"]
        .iter()
        .find_map(|leaf| clean.strip_suffix(&format!("{want}{leaf}")))
        .ok_or_else(bad)?;
    if !(rest.is_empty() || rest.ends_with('/')) {
        return Err(bad());
    }
    Ok(rest.trim_end_matches('/').to_string())
}

impl Target {
    pub(crate) fn new(
        python_version: &str,
        architecture: &str,
        glibc: &str,
        python: &str,
        target: &str,
        venv: bool,
    ) -> Result<Target, String> {
        let (py, full) = parse_python_version(python_version)
            .ok_or_else(|| format!("python_version {python_version:?} is not 3.N or 3.N.M"))?;
        let machine = machine_of(architecture)
            .ok_or_else(|| format!("no Python platform for architecture {architecture:?} (amd64 or arm64)"))?;
        let glibc = parse_glibc(glibc).ok_or_else(|| format!("glibc {glibc:?} is not 2.N (N >= 17)"))?;
        let prefix = prefix_of(target, py)?;
        let lib = crate::layer::tree::clean_path(target).map_err(|e| e.to_string())?;
        let bin = if prefix.is_empty() { "bin".to_string() } else { format!("{prefix}/bin") };
        let pv = format!("{}.{}", py.0, py.1);
        // pip's schemes: posix_prefix's `include/pythonX.Y`, a venv's `include/site/pythonX.Y`.
        let site = if venv { "site/" } else { "" };
        let include = if prefix.is_empty() {
            format!("include/{site}python{pv}")
        } else {
            format!("{prefix}/include/{site}python{pv}")
        };
        let env = MarkerEnvironment::try_from(MarkerEnvironmentBuilder {
            implementation_name: "cpython",
            implementation_version: &full,
            os_name: "posix",
            platform_machine: machine,
            platform_python_implementation: "CPython",
            platform_release: "",
            platform_system: "Linux",
            platform_version: "",
            python_full_version: &full,
            python_version: &pv,
            sys_platform: "linux",
        })
        .map_err(|e| format!("python_version {python_version:?}: {e}"))?;
        let tags = tags(py, machine, glibc).into_iter().enumerate().map(|(i, t)| (t, i)).collect();
        Ok(Target { py, machine, tags, env, python: python.to_string(), lib, bin, prefix, include })
    }

    /// The best (lowest) rank of a wheel's tag set, `None` if it fits no tag.
    pub(crate) fn rank(&self, w: &WheelName) -> Option<usize> {
        let mut best = None;
        for p in w.py.split('.') {
            for a in w.abi.split('.') {
                for pl in w.plat.split('.') {
                    if let Some(r) = self.tags.get(&format!("{p}-{a}-{pl}")) {
                        best = Some(best.map_or(*r, |b: usize| b.min(*r)));
                    }
                }
            }
        }
        best
    }
}

/// The platform tags of a glibc Linux machine, best first (packaging's
/// `_manylinux.platform_tags`, then `linux_<arch>`).
fn platforms(machine: &str, glibc: (u32, u32)) -> Vec<String> {
    let lowest = if machine == "x86_64" { 5 } else { 17 };
    let mut out = Vec::new();
    for minor in (lowest..=glibc.1).rev() {
        out.push(format!("manylinux_2_{minor}_{machine}"));
        let legacy = match (minor, machine) {
            (17, _) => Some("manylinux2014"),
            (12, "x86_64") => Some("manylinux2010"),
            (5, "x86_64") => Some("manylinux1"),
            _ => None,
        };
        if let Some(l) = legacy {
            out.push(format!("{l}_{machine}"));
        }
    }
    out.push(format!("linux_{machine}"));
    out
}

/// Every tag CPython `py` accepts on this platform, best first, as
/// `packaging.tags.sys_tags()` orders them (cpython_tags, then compatible_tags).
fn tags(py: (u32, u32), machine: &str, glibc: (u32, u32)) -> Vec<String> {
    let plats = platforms(machine, glibc);
    let cp = format!("cp{}{}", py.0, py.1);
    let mut out = Vec::new();
    for abi in [cp.as_str(), "abi3", "none"] {
        for p in &plats {
            out.push(format!("{cp}-{abi}-{p}"));
        }
    }
    for minor in (2..py.1).rev() {
        for p in &plats {
            out.push(format!("cp{}{minor}-abi3-{p}", py.0));
        }
    }
    let mut pys = vec![format!("py{}{}", py.0, py.1), format!("py{}", py.0)];
    pys.extend((0..py.1).rev().map(|m| format!("py{}{m}", py.0)));
    for v in &pys {
        for p in &plats {
            out.push(format!("{v}-none-{p}"));
        }
    }
    out.push(format!("{cp}-none-any"));
    for v in &pys {
        out.push(format!("{v}-none-any"));
    }
    out
}

/// A wheel file name's parts (PEP 427): `{name}-{ver}(-{build})?-{py}-{abi}-{plat}.whl`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct WheelName {
    pub(crate) name: String,
    pub(crate) version: String,
    /// The build tag's number (a wheel with a higher one is preferred).
    pub(crate) build: Option<(u64, String)>,
    pub(crate) py: String,
    pub(crate) abi: String,
    pub(crate) plat: String,
}

impl WheelName {
    pub(crate) fn parse(file: &str) -> Option<WheelName> {
        let stem = file.strip_suffix(".whl")?;
        let parts: Vec<&str> = stem.split('-').collect();
        let ok = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"._+!".contains(&b));
        if !parts.iter().all(|p| ok(p)) {
            return None;
        }
        let (name, version, build, rest) = match parts.as_slice() {
            [n, v, a, b, c] => (n, v, None, [a, b, c]),
            [n, v, bt, a, b, c] => {
                let digits: String = bt.chars().take_while(|c| c.is_ascii_digit()).collect();
                let num = digits.parse().ok()?;
                (n, v, Some((num, bt[digits.len()..].to_string())), [a, b, c])
            }
            _ => return None,
        };
        Some(WheelName {
            name: name.to_string(),
            version: version.to_string(),
            build,
            py: rest[0].to_string(),
            abi: rest[1].to_string(),
            plat: rest[2].to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn tags_follow_packaging_order() {
        let t =
            Target::new("3.11", "amd64", "2.36", "/usr/bin/python3", "/usr/local/lib/python3.11/dist-packages", false)
                .unwrap();
        let r = |f: &str| t.rank(&WheelName::parse(f).unwrap());
        let native = r("a-1-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl").unwrap();
        let abi3 = r("a-1-cp38-abi3-manylinux2014_x86_64.whl").unwrap();
        let pure = r("a-1-py3-none-any.whl").unwrap();
        assert!(native < abi3 && abi3 < pure, "{native} {abi3} {pure}");
        assert!(r("a-1-py2.py3-none-any.whl").is_some());
        for no in [
            "a-1-cp311-cp311-manylinux_2_17_aarch64.whl",
            "a-1-cp311-cp311-musllinux_1_1_x86_64.whl",
            "a-1-cp312-cp312-manylinux_2_17_x86_64.whl",
            "a-1-cp311-cp311-manylinux_2_38_x86_64.whl",
            "a-1-cp311-cp311-win_amd64.whl",
            "a-1-py2-none-any.whl",
        ] {
            assert_eq!(r(no), None, "{no}");
        }
        let arm = Target::new("3.11", "arm64", "2.36", "/usr/bin/python3", "/opt/v/lib/python3.11/site-packages", true)
            .unwrap();
        assert!(arm.rank(&WheelName::parse("a-1-cp311-cp311-manylinux_2_17_aarch64.whl").unwrap()).is_some());
        assert_eq!(
            (arm.bin.as_str(), arm.prefix.as_str(), arm.include.as_str()),
            ("opt/v/bin", "opt/v", "opt/v/include/site/python3.11")
        );
        assert_eq!(WheelName::parse("a-1-7b-py3-none-any.whl").unwrap().build, Some((7, "b".into())));
    }
    #[test]
    fn targets_must_be_a_scheme_lib_dir() {
        assert_eq!(prefix_of("/usr/lib/python3.11/dist-packages", (3, 11)).unwrap(), "usr");
        assert!(prefix_of("/usr/lib/python3.12/dist-packages", (3, 11)).is_err());
        assert!(prefix_of("/srv/app", (3, 11)).is_err());
        assert!(prefix_of("/usr/xlib/python3.11/dist-packages", (3, 11)).is_err());
        assert!(prefix_of("usr/lib/python3.11/dist-packages", (3, 11)).is_err());
        assert!(parse_python_version("3").is_none() && parse_python_version("3.x").is_none());
        assert_eq!(parse_python_version("3.11").unwrap().1, "3.11.0");
    }
}
