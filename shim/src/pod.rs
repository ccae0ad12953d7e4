//! What containerd's CRI plugin says of a container, and what moat makes of
//! it: a pod's sandbox ("pause") container runs its one binary with read
//! and execute granted on that file alone, as nobody when its spec says
//! root; an app container's gateway dials from the pod's CNI namespace,
//! which CRI names by the pause's pid (`/proc/PID/ns/net`) and which moat's
//! pause does not live in. Guards against a pod whose agent's egress leaves
//! from a namespace with no route (every request a 502) and against a pause
//! that cannot start (the pod never ready), without widening the agent's
//! sandbox: only the pause gets the extra path.
#![forbid(unsafe_code)]
use moat_supervisor::policy::PathRule;
use moat_supervisor::sandbox::RunRequest;
use std::path::PathBuf;

/// CRI's annotation: `sandbox` (the pod's pause) or `container`.
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// CRI's annotation on every container of a pod: its sandbox container's id.
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";

/// What a container is to its pod.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Not started by CRI (`ctr`, another engine).
    Plain,
    /// The pod's sandbox container.
    PodSandbox,
    /// An app container of the pod whose sandbox container has this id.
    InPod(String),
}

/// The container's role from its spec's annotations.
pub fn role(spec: &oci_spec::runtime::Spec) -> Role {
    let Some(a) = spec.annotations().as_ref() else { return Role::Plain };
    match (a.get(CONTAINER_TYPE).map(String::as_str), a.get(SANDBOX_ID)) {
        (Some("sandbox"), _) => Role::PodSandbox,
        (Some("container"), Some(pod)) => Role::InPod(pod.clone()),
        _ => Role::Plain,
    }
}

/// The user a pause runs as when its spec says root: nobody.
const NOBODY: (u32, u32) = (65534, 65534);

/// Fits the request of a pod's sandbox container: its binary (the spec's
/// first argument, when absolute) becomes readable and executable, and a
/// root user becomes nobody (a pause image has no accounts to map).
pub fn fit_pod_sandbox(req: &mut RunRequest) {
    if let Some(bin) = req.args.first().filter(|a| a.starts_with('/') && !a.contains("/../")) {
        let rule = PathRule { path: bin.clone(), why: "the pod's sandbox (pause) binary".into() };
        req.policy.filesystem.read_only.push(rule);
    }
    if let Some(oci) = req.oci.as_mut() {
        oci.user.get_or_insert(NOBODY);
    }
}

/// Points an app container's gateway at its pod's namespace: the one its
/// pod's sandbox container dials from (`pod_dial`), if this shim has it.
pub fn dial_from_pod(req: &mut RunRequest, pod_dial: Option<PathBuf>) {
    if let (Some(oci), Some(dial)) = (req.oci.as_mut(), pod_dial) {
        oci.dial_netns = Some(dial);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(annotations: serde_json::Value) -> oci_spec::runtime::Spec {
        serde_json::from_value(serde_json::json!({"ociVersion": "1.0.2", "annotations": annotations})).expect("spec")
    }

    #[test]
    fn roles_come_from_cri_annotations() {
        assert_eq!(role(&spec(serde_json::json!({}))), Role::Plain);
        assert_eq!(role(&spec(serde_json::json!({CONTAINER_TYPE: "sandbox", SANDBOX_ID: "p"}))), Role::PodSandbox);
        let app = spec(serde_json::json!({CONTAINER_TYPE: "container", SANDBOX_ID: "p"}));
        assert_eq!(role(&app), Role::InPod("p".into()));
        assert_eq!(role(&spec(serde_json::json!({CONTAINER_TYPE: "container"}))), Role::Plain);
    }
}
