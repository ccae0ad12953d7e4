//! What the shim reads from a containerd bundle: the OCI spec
//! (`config.json`, size-capped before it is read) and the sandbox's policy,
//! from the spec's annotations (a pod's annotations reach them through
//! containerd's `pod_annotations` allowlist). Guards against a bundle that
//! exhausts the shim (sizes bounded before allocation) and against a policy
//! that is silently not the one asked for (an annotation that does not
//! parse fails the create, naming the annotation and the place).
#![forbid(unsafe_code)]
use moat_supervisor::policy::Policy;
use std::io::Read;
use std::path::Path;

/// `config.json` larger than this is refused.
pub const MAX_SPEC: u64 = 4 << 20;
/// An inline policy annotation larger than this is refused.
pub const MAX_POLICY: usize = 64 << 10;

/// An inline TOML policy (whole, or a small one over the baseline).
pub const POLICY: &str = "moat.dev/policy";
/// Comma-separated preset names, as `moat run --preset`.
pub const PRESETS: &str = "moat.dev/presets";
/// Comma-separated profile names, as `moat run --profile`.
pub const PROFILE: &str = "moat.dev/profile";
/// Comma-separated ports the pod serves, `PORT` or `POD_PORT:SANDBOX_PORT`:
/// a listener in the pod's namespace relays each to the agent's `lo`.
pub const PUBLISH: &str = "moat.dev/publish";
/// Most ports one annotation publishes.
pub const MAX_PORTS: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum BundleError {
    #[error("{path}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}: larger than {max} bytes")]
    TooLarge { path: String, max: u64 },
    #[error("{path}: {message}")]
    Spec { path: String, message: String },
    #[error("annotation {key}: larger than {max} bytes")]
    AnnotationTooLarge { key: &'static str, max: usize },
    #[error("annotation {key}")]
    Policy { key: &'static str, source: moat_supervisor::policy::PolicyError },
    #[error("annotation {PUBLISH}: {item:?}: {why} (want PORT or POD_PORT:SANDBOX_PORT, comma-separated)")]
    Publish { item: String, why: String },
    #[error("annotation {PUBLISH}: {0} ports; at most {MAX_PORTS}")]
    TooManyPorts(usize),
    #[error("annotation {key}")]
    Presets { key: &'static str, source: moat_supervisor::policy::schema::NetPolicyError },
}

/// The bundle's OCI spec.
pub fn spec(bundle: &Path) -> Result<oci_spec::runtime::Spec, BundleError> {
    let path = bundle.join("config.json");
    let shown = path.display().to_string();
    let f = std::fs::File::open(&path).map_err(|source| BundleError::Io { path: shown.clone(), source })?;
    let mut bytes = Vec::new();
    f.take(MAX_SPEC + 1).read_to_end(&mut bytes).map_err(|source| BundleError::Io { path: shown.clone(), source })?;
    if bytes.len() as u64 > MAX_SPEC {
        return Err(BundleError::TooLarge { path: shown, max: MAX_SPEC });
    }
    serde_json::from_slice(&bytes).map_err(|e| BundleError::Spec { path: shown, message: e.to_string() })
}

fn names(v: &str) -> Vec<String> {
    v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_string).collect()
}

/// The policy the spec's annotations ask for: `moat.dev/policy` (else the
/// baseline), plus `moat.dev/presets` and `moat.dev/profile`.
pub fn policy(spec: &oci_spec::runtime::Spec) -> Result<Policy, BundleError> {
    let empty = Default::default();
    let a = spec.annotations().as_ref().unwrap_or(&empty);
    let mut policy = match a.get(POLICY) {
        Some(text) if text.len() > MAX_POLICY => {
            return Err(BundleError::AnnotationTooLarge { key: POLICY, max: MAX_POLICY })
        }
        Some(text) => Policy::parse(text, POLICY).map_err(|source| BundleError::Policy { key: POLICY, source })?,
        None => Policy::baseline(),
    };
    let (p, r) = (a.get(PRESETS).map(|v| names(v)), a.get(PROFILE).map(|v| names(v)));
    if p.is_some() || r.is_some() {
        let key = if p.is_some() { PRESETS } else { PROFILE };
        policy
            .network
            .add_presets(&p.unwrap_or_default(), &r.unwrap_or_default())
            .map_err(|source| BundleError::Presets { key, source })?;
    }
    Ok(policy)
}

/// Which shim serves container `id` of `bundle`: its pod's (the sandbox
/// id, if the spec names a well-formed one), else its own. A spec that
/// cannot be read groups by the id; `create` reports what is wrong with it.
pub fn group(bundle: &Path, id: &str) -> String {
    let named =
        spec(bundle).ok().and_then(|s| s.annotations().as_ref().and_then(|a| a.get(crate::pod::SANDBOX_ID).cloned()));
    // containerd's own rule for ids: 1-76 of [A-Za-z0-9._-].
    let well_formed =
        |g: &String| (1..=76).contains(&g.len()) && g.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    named.filter(well_formed).unwrap_or_else(|| id.to_string())
}

/// The ports `moat.dev/publish` asks for: (pod port, sandbox port) pairs;
/// the sandbox's `gateway_port` is the gateway's, never the agent's.
pub fn publish(spec: &oci_spec::runtime::Spec, gateway_port: u16) -> Result<Vec<(u16, u16)>, BundleError> {
    let Some(v) = spec.annotations().as_ref().and_then(|a| a.get(PUBLISH)) else { return Ok(Vec::new()) };
    let items = names(v);
    if items.len() > MAX_PORTS {
        return Err(BundleError::TooManyPorts(items.len()));
    }
    let port = |item: &str, s: &str| match s.trim().parse::<u16>() {
        Ok(p) if p > 0 => Ok(p),
        _ => Err(BundleError::Publish { item: item.to_string(), why: format!("{s:?} is not a port (1-65535)") }),
    };
    let mut ports: Vec<(u16, u16)> = Vec::new();
    for item in &items {
        let pair = match item.split_once(':') {
            Some((pod, sandbox)) => (port(item, pod)?, port(item, sandbox)?),
            None => port(item, item).map(|p| (p, p))?,
        };
        if pair.1 == gateway_port {
            let why = format!("sandbox port {gateway_port} is the egress gateway's, not a service of the agent");
            return Err(BundleError::Publish { item: item.clone(), why });
        }
        if ports.iter().any(|q| q.0 == pair.0) {
            return Err(BundleError::Publish { item: item.clone(), why: format!("port {} published twice", pair.0) });
        }
        ports.push(pair);
    }
    Ok(ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(annotations: serde_json::Value) -> oci_spec::runtime::Spec {
        serde_json::from_value(serde_json::json!({"ociVersion": "1.0.2", "annotations": annotations})).expect("spec")
    }

    #[test]
    fn no_annotation_is_the_baseline_and_presets_are_added() {
        assert_eq!(policy(&with(serde_json::json!({}))).expect("baseline"), Policy::baseline());
        let p = policy(&with(serde_json::json!({PRESETS: "github, slack"}))).expect("presets");
        assert_eq!(p.network.presets, vec!["github".to_string(), "slack".to_string()]);
    }

    #[test]
    fn a_bad_policy_names_its_annotation_and_place() {
        let e = policy(&with(serde_json::json!({POLICY: "version = 1\n[network\n"}))).expect_err("bad toml");
        let shown = moat_builder::errors::chain(&e);
        assert!(shown.starts_with("annotation moat.dev/policy: moat.dev/policy:2:"), "{shown}");
        let e = policy(&with(serde_json::json!({PRESETS: "no-such-preset"}))).expect_err("unknown preset");
        assert!(moat_builder::errors::chain(&e).contains("unknown preset \"no-such-preset\""), "{e}");
        let big = "#".repeat(MAX_POLICY + 1);
        assert!(matches!(policy(&with(serde_json::json!({POLICY: big}))), Err(BundleError::AnnotationTooLarge { .. })));
    }

    #[test]
    fn published_ports_parse_and_bad_ones_are_named() {
        assert_eq!(publish(&with(serde_json::json!({})), 3128).unwrap(), vec![]);
        assert_eq!(
            publish(&with(serde_json::json!({PUBLISH: "8080, 9090:80"})), 3128).unwrap(),
            vec![(8080, 8080), (9090, 80)]
        );
        for bad in ["0", "x", "80:", "70000", "1:2:3", "80, 80:81", "80:3128"] {
            let e = publish(&with(serde_json::json!({PUBLISH: bad})), 3128).expect_err(bad);
            let first_bad = bad.rsplit(',').next().unwrap_or(bad).trim();
            assert!(e.to_string().starts_with(&format!("annotation moat.dev/publish: {first_bad:?}")), "{e}");
        }
        let many = (1..=33).map(|p| p.to_string()).collect::<Vec<_>>().join(",");
        assert!(publish(&with(serde_json::json!({PUBLISH: many})), 3128).is_err());
    }
}
