//! A sandbox described by another engine: an OCI runtime spec (containerd's
//! bundle `config.json`) and the root filesystem mounts its snapshotter
//! made, turned into the same [`RunRequest`] `moat run` makes, so one start
//! path serves both front doors. Guards against the spec widening the
//! sandbox: only the process (arguments, environment, working directory,
//! user) and the network namespace to dial from are taken from it; mounts,
//! capabilities, namespaces, seccomp and devices come from moat's policy, and
//! user 0 is never honoured (the policy's user runs instead).
#![forbid(unsafe_code)]
use super::publish::Publish;
use super::{RunRequest, SandboxError};
use crate::policy::Policy;
use serde::{Deserialize, Serialize};
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

/// The part of a sandbox that comes from the engine, not from moat's store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OciInput {
    /// The root filesystem's directories, bottom first; only read.
    pub lowers: Vec<PathBuf>,
    /// The working directory the spec names.
    pub cwd: String,
    /// The spec's user, unless it is root (then the policy's user).
    pub user: Option<(u32, u32)>,
    /// The network namespace the gateway dials from (a pod's, made by CNI);
    /// None: the engine asked for a new one, so the supervisor's own.
    pub dial_netns: Option<PathBuf>,
    /// The sandbox is created, then started when the engine says so.
    pub gated: bool,
    /// A running sandbox whose network this one joins (its pod's): its
    /// namespace, gateway, approvals and CA; None: a network of its own.
    #[serde(default)]
    pub join: Option<Join>,
}

/// The pod sandbox a sandbox joins: its name, and the owner its record must
/// name (a name alone could by then be another sandbox's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Join {
    pub sandbox: String,
    pub owner: String,
}

/// One root filesystem mount as the engine hands it over.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RootMount {
    pub kind: String,
    pub source: String,
    pub options: Vec<String>,
}

/// The spec's root directory, a bundle-relative path made absolute.
fn root_path(spec: &oci_spec::runtime::Spec, bundle: &Path) -> Option<PathBuf> {
    let p = spec.root().as_ref()?.path().clone();
    Some(if p.is_absolute() { p } else { bundle.join(p) })
}

/// The directories of the root filesystem, bottom first: containerd's
/// overlay snapshot (`lowerdir` top first, then `upperdir`, which holds
/// what the container wrote before, if anything), a bind-mounted tree, or
/// with no mount, the spec's root path (`ctr run --rootfs`).
pub fn lowers(
    spec: &oci_spec::runtime::Spec,
    bundle: &Path,
    mounts: &[RootMount],
) -> Result<Vec<PathBuf>, SandboxError> {
    let refuse = |m: String| SandboxError::Refused(format!("the container's root filesystem: {m}"));
    let dirs = match mounts {
        [] => vec![root_path(spec, bundle).ok_or_else(|| refuse("the spec names no root path and no mount".into()))?],
        [m] if m.kind == "overlay" => {
            let opt = |key: &str| m.options.iter().find_map(|o| o.strip_prefix(key).map(str::to_string));
            let lower = opt("lowerdir=").ok_or_else(|| refuse("an overlay mount without lowerdir".into()))?;
            let mut dirs: Vec<PathBuf> = lower.split(':').rev().map(PathBuf::from).collect();
            dirs.extend(opt("upperdir=").map(PathBuf::from));
            dirs
        }
        [m] if m.kind == "bind" || m.options.iter().any(|o| o == "bind" || o == "rbind") => {
            vec![PathBuf::from(&m.source)]
        }
        [m] => return Err(refuse(format!("mount type {:?} is not supported (overlay or bind)", m.kind))),
        _ => return Err(refuse(format!("{} mounts; one overlay or bind mount is supported", mounts.len()))),
    };
    for d in &dirs {
        if !d.is_absolute() || !d.is_dir() {
            return Err(refuse(format!("{} is not a directory", d.display())));
        }
    }
    Ok(dirs)
}

/// The network namespace path the spec joins, if it names one other than
/// this process's own (the host's): dialling from the host's is what none
/// means, and a port published there is the host's (loopback only).
fn network_path(spec: &oci_spec::runtime::Spec) -> Option<PathBuf> {
    use oci_spec::runtime::LinuxNamespaceType;
    use std::os::unix::fs::MetadataExt;
    let namespaces = spec.linux().as_ref()?.namespaces().as_ref()?;
    let path = namespaces.iter().find(|n| n.typ() == LinuxNamespaceType::Network).and_then(|n| n.path().clone())?;
    let id = |p: &Path| std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    match (id(&path), id(Path::new("/proc/self/ns/net"))) {
        (Some(theirs), Some(own)) if theirs == own => None,
        _ => Some(path),
    }
}

/// The request a spec makes under `policy`: sandbox `name`, labelled
/// `image` in listings, whose stdio is the process's own (`interactive`:
/// the engine gave it a stdin), serving `ports` ((outer, sandbox) pairs):
/// in the pod's namespace on every address (who reaches a pod's port is
/// the cluster's NetworkPolicy's call, as for any pod), else on the
/// host's loopback.
pub fn request(
    name: &str,
    image: &str,
    spec: &oci_spec::runtime::Spec,
    lowers: Vec<PathBuf>,
    policy: Policy,
    interactive: bool,
    ports: &[(u16, u16)],
) -> Result<RunRequest, SandboxError> {
    let process = spec.process().as_ref().ok_or_else(|| SandboxError::Refused("the spec has no process".into()))?;
    let args = process.args().clone().unwrap_or_default();
    if args.is_empty() {
        return Err(SandboxError::Refused("the spec's process has no arguments".into()));
    }
    let user = (process.user().uid() != 0).then(|| (process.user().uid(), process.user().gid()));
    let tty = process.terminal().unwrap_or(false);
    let dial_netns = network_path(spec);
    let ip = if dial_netns.is_some() { Ipv4Addr::UNSPECIFIED } else { Ipv4Addr::LOCALHOST };
    let publish = ports
        .iter()
        .map(|&(outer, sandbox_port)| Publish { host: SocketAddr::from((ip, outer)), sandbox_port })
        .collect();
    Ok(RunRequest {
        name: Some(name.to_string()),
        image: image.to_string(),
        store: PathBuf::new(),
        policy,
        workspace: None,
        args,
        env: process.env().clone().unwrap_or_default(),
        interactive: interactive || tty,
        tty,
        detach: false,
        ephemeral: false,
        publish,
        publish_token: None,
        expose: Vec::new(),
        oci: Some(OciInput {
            lowers,
            cwd: process.cwd().display().to_string(),
            user,
            dial_netns,
            gated: true,
            join: None,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(json: serde_json::Value) -> oci_spec::runtime::Spec {
        serde_json::from_value(json).expect("spec")
    }

    #[test]
    fn overlay_lowers_are_bottom_first_with_the_upper_on_top() {
        let d = tempfile::tempdir().expect("tmp");
        for n in ["l1", "l2", "up"] {
            std::fs::create_dir(d.path().join(n)).expect("dir");
        }
        let p = |n: &str| d.path().join(n).display().to_string();
        let m = RootMount {
            kind: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                format!("lowerdir={}:{}", p("l2"), p("l1")),
                format!("upperdir={}", p("up")),
                "workdir=/x".into(),
            ],
        };
        let s = spec(serde_json::json!({"ociVersion": "1.0.2", "root": {"path": "rootfs"}}));
        let got = lowers(&s, d.path(), &[m]).expect("lowers");
        assert_eq!(got, vec![d.path().join("l1"), d.path().join("l2"), d.path().join("up")]);
    }

    #[test]
    fn no_mount_means_the_root_path_and_odd_mounts_are_refused() {
        let d = tempfile::tempdir().expect("tmp");
        std::fs::create_dir(d.path().join("rootfs")).expect("dir");
        let s = spec(serde_json::json!({"ociVersion": "1.0.2", "root": {"path": "rootfs"}}));
        assert_eq!(lowers(&s, d.path(), &[]).expect("root"), vec![d.path().join("rootfs")]);
        let m = RootMount { kind: "tmpfs".into(), source: "x".into(), options: vec![] };
        let e = lowers(&s, d.path(), &[m]).expect_err("tmpfs");
        assert!(e.to_string().contains("\"tmpfs\" is not supported"), "{e}");
        let missing = spec(serde_json::json!({"ociVersion": "1.0.2", "root": {"path": "/nonexistent-moat"}}));
        assert!(lowers(&missing, d.path(), &[]).is_err());
    }

    #[test]
    fn root_is_not_honoured_and_the_pod_namespace_is_kept() {
        let s = spec(serde_json::json!({
            "ociVersion": "1.0.2",
            "process": {"args": ["sh"], "cwd": "/w", "user": {"uid": 0, "gid": 0}, "env": ["A=1"]},
            "linux": {"namespaces": [{"type": "network", "path": "/var/run/netns/pod"}, {"type": "pid"}]}
        }));
        let r = request("t1", "ctr:t1", &s, vec![], Policy::baseline(), false, &[]).expect("request");
        let oci = r.oci.expect("oci");
        assert_eq!(oci.user, None);
        assert_eq!(oci.dial_netns, Some(PathBuf::from("/var/run/netns/pod")));
        assert_eq!(oci.cwd, "/w");
        assert_eq!(r.env, vec!["A=1".to_string()]);
        let s = spec(
            serde_json::json!({"ociVersion": "1.0.2", "process": {"args": ["sh"], "cwd": "/", "user": {"uid": 1000, "gid": 100}}}),
        );
        assert_eq!(
            request("t1", "x", &s, vec![], Policy::baseline(), false, &[]).expect("r").oci.expect("oci").user,
            Some((1000, 100))
        );
    }
}
