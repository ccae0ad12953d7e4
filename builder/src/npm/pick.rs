//! Which version of a package npm would install for a dependency spec
//! (npm-pick-manifest): a dist-tag names its version; for a range, the
//! `latest` tag when it satisfies and is not deprecated, else the highest
//! satisfying version, non-deprecated first. Ranges are node-semver's
//! (`nodejs-semver`), never parsed here. Guards against specs that would
//! fetch code from outside the registry (git, file, URL, alias): refused.
#![forbid(unsafe_code)]
use super::registry::Packument;
use nodejs_semver::{Range, Version};
use serde_json::Value;

/// What a dependency edge accepts.
#[derive(Debug, Clone)]
pub(crate) enum Want {
    Range(Range),
    /// A dist-tag, resolved to its version when the edge was read.
    Exact(String),
}

impl Want {
    /// Parses a registry spec (`^1.2`, `1.x`, `*`, `latest`); `Err` says why not.
    pub(crate) fn parse(spec: &str, p: Option<&Packument>) -> Result<Want, String> {
        let s = spec.trim();
        let foreign = ["npm:", "file:", "link:", "git", "http:", "https:", "workspace:", "github:"];
        if foreign.iter().any(|f| s.starts_with(f)) || s.contains("://") || (s.contains('/') && !s.contains(' ')) {
            return Err(format!(
                "spec {spec:?} does not name a registry version (aliases, git, file and URL specs are not supported)"
            ));
        }
        if let Some(v) = p.and_then(|p| p.dist_tags.get(s)).filter(|_| Range::parse(s).is_err()) {
            return Ok(Want::Exact(v.clone()));
        }
        let r = if s.is_empty() {
            Range::any()
        } else {
            Range::parse(s).map_err(|_| format!("spec {spec:?} is neither a semver range nor a dist-tag"))?
        };
        Ok(Want::Range(r))
    }

    /// Whether version `v` satisfies this edge.
    pub(crate) fn admits(&self, v: &str) -> bool {
        match self {
            Want::Exact(x) => x == v,
            Want::Range(r) => Version::parse(v).is_ok_and(|v| v.satisfies(r)),
        }
    }
}

fn deprecated(m: &Value) -> bool {
    match m.get("deprecated") {
        Some(Value::String(s)) => !s.is_empty(),
        Some(Value::Bool(b)) => *b,
        _ => false,
    }
}

/// The version npm picks for `spec` from `p`, or `None` when nothing fits.
pub(crate) fn pick<'p>(p: &'p Packument, spec: &str, want: &Want) -> Option<(&'p str, &'p Value)> {
    let get = |v: &str| p.versions.get_key_value(v).map(|(k, m)| (k.as_str(), m));
    if let Want::Exact(v) = want {
        return get(v);
    }
    let any = matches!(spec.trim(), "" | "*");
    if let Some((v, m)) = p.dist_tags.get("latest").and_then(|v| get(v)) {
        if (any || want.admits(v)) && !deprecated(m) {
            return Some((v, m));
        }
    }
    let mut best: Option<(bool, Version, &str, &Value)> = None;
    for (k, m) in &p.versions {
        let Ok(v) = Version::parse(k) else { continue };
        if !want.admits(k) {
            continue;
        }
        let live = !deprecated(m);
        let better = match &best {
            None => true,
            Some((bl, bv, ..)) => (live, &v) > (*bl, bv),
        };
        if better {
            best = Some((live, v, k.as_str(), m));
        }
    }
    best.map(|(_, _, k, m)| (k, m))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;
    fn pk(latest: &str, vs: &[(&str, bool)]) -> Packument {
        Packument {
            dist_tags: [("latest".to_string(), latest.to_string()), ("next".into(), "3.0.0-rc.1".into())].into(),
            versions: vs
                .iter()
                .map(|(v, d)| (v.to_string(), if *d { json!({"deprecated": "old"}) } else { json!({}) }))
                .collect(),
        }
    }
    #[test]
    fn as_npm_pick_manifest() {
        let p = pk(
            "1.2.0",
            &[("1.0.0", false), ("1.2.0", false), ("1.3.0", false), ("2.0.0", false), ("3.0.0-rc.1", false)],
        );
        let w = |s: &str| Want::parse(s, Some(&p)).unwrap();
        assert_eq!(pick(&p, "^1.0.0", &w("^1.0.0")).unwrap().0, "1.2.0", "latest wins when it satisfies");
        assert_eq!(pick(&p, "^1.3.0", &w("^1.3.0")).unwrap().0, "1.3.0");
        assert_eq!(pick(&p, ">=1", &w(">=1")).unwrap().0, "1.2.0");
        assert_eq!(pick(&p, "^2", &w("^2")).unwrap().0, "2.0.0");
        assert_eq!(pick(&p, "*", &w("*")).unwrap().0, "1.2.0");
        assert_eq!(pick(&p, "next", &w("next")).unwrap().0, "3.0.0-rc.1");
        assert!(pick(&p, "^4", &w("^4")).is_none());
        let p = pk("1.2.0", &[("1.1.0", false), ("1.2.0", true)]);
        assert_eq!(
            pick(&p, "^1", &Want::parse("^1", Some(&p)).unwrap()).unwrap().0,
            "1.1.0",
            "deprecated latest is passed over"
        );
        for bad in ["npm:other@1", "git+https://x/y", "file:../x", "user/repo"] {
            assert!(Want::parse(bad, None).is_err(), "{bad}");
        }
    }
}
