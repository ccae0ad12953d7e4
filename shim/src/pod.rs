//! What containerd's CRI plugin says of a container, and what moat makes of
//! it: a pod's sandbox ("pause") container is the pod's moat sandbox, named
//! after the pod, whose gateway dials from the pod's CNI namespace; it runs
//! its one binary with read and execute granted on that file alone, as
//! nobody when its spec says root. An app container joins it: the pod's
//! namespace (containers of a pod share `lo`), its one gateway, approvals
//! queue and audit log (`moat approvals POD`), its published ports; it is
//! named POD.CONTAINER. Guards against a pod whose agent's egress leaves
//! from a namespace with no route or with a gateway of its own the
//! operator does not watch, and against a pause that cannot start, without
//! widening an agent's sandbox: only the pause gets the extra path.
#![forbid(unsafe_code)]
use moat_supervisor::policy::PathRule;
use moat_supervisor::sandbox::oci::Join;
use moat_supervisor::sandbox::RunRequest;
use std::path::PathBuf;

/// CRI's annotation: `sandbox` (the pod's pause) or `container`.
pub const CONTAINER_TYPE: &str = "io.kubernetes.cri.container-type";
/// CRI's annotation on every container of a pod: its sandbox container's id.
pub const SANDBOX_ID: &str = "io.kubernetes.cri.sandbox-id";
/// CRI's annotations: the pod's name and Kubernetes namespace, the
/// container's name in the pod.
pub const SANDBOX_NAME: &str = "io.kubernetes.cri.sandbox-name";
pub const SANDBOX_NAMESPACE: &str = "io.kubernetes.cri.sandbox-namespace";
pub const CONTAINER_NAME: &str = "io.kubernetes.cri.container-name";

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

/// The sandbox name an operator would type for the container: the pod's
/// for its sandbox container (`POD` in Kubernetes' `default` namespace,
/// `POD_NAMESPACE` in any other: Kubernetes names have no `_`, so a pod
/// of one namespace never takes another's name), `SANDBOX.CONTAINER` for
/// an app container of pod sandbox `pod`. Taken already: the id's name.
pub fn preferred_names(spec: &oci_spec::runtime::Spec, role: &Role, pod: Option<&str>) -> Vec<String> {
    let empty = Default::default();
    let a = spec.annotations().as_ref().unwrap_or(&empty);
    let get = |k: &str| a.get(k).filter(|v| !v.is_empty()).cloned();
    match (role, get(SANDBOX_NAME), get(CONTAINER_NAME)) {
        (Role::PodSandbox, Some(name), _) => match get(SANDBOX_NAMESPACE) {
            Some(ns) if ns != "default" => vec![format!("{name}_{ns}")],
            _ => vec![name],
        },
        (Role::InPod(_), _, Some(container)) => pod.map(|p| vec![format!("{p}.{container}")]).unwrap_or_default(),
        _ => Vec::new(),
    }
}

/// Makes an app container join its pod's sandbox `pod` (a running moat
/// sandbox of this shim): its network, gateway and CA. The pod's ports are
/// published by the pod's sandbox; the agent may bind them (Landlock).
pub fn join(req: &mut RunRequest, pod: Join, pod_dial: Option<PathBuf>) {
    if let Some(oci) = req.oci.as_mut() {
        oci.join = Some(pod);
        oci.dial_netns = pod_dial;
    }
    let published: Vec<u16> = req.publish.drain(..).map(|p| p.sandbox_port).collect();
    req.expose.extend(published);
    req.publish_token = None;
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
