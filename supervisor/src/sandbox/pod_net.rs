//! A sandbox's network side: its own (a namespace with only `lo`, its
//! gateway, its connect watch: `net::NetStart`) or its pod's, for the app
//! containers of a Kubernetes pod (the shim's `join`): they run in the pod
//! sandbox's namespace, where the pod's one gateway, DNS responder,
//! approvals queue and audit log serve them, their connects are judged by
//! the pod's connect watch (their `notify.sock` leads to the pod's), and
//! they trust the pod's CA. Guards against a pod container with a way out
//! of its own: it has no gateway and no other interface, only the pod's,
//! whose gateway identifies each connecting process by its own binary, in
//! its own root filesystem, as for the pod's other processes.
#![forbid(unsafe_code)]
use super::net::{LaunchNet, NetStart};
use super::netns::Netns;
use super::oci::Join;
use super::state::{self, Paths, Status};
use super::SandboxError;
use crate::gateway::{self, connects::Connects};
use crate::policy::Network;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::Arc;

/// Whose network a sandbox uses.
pub(crate) enum NetSide {
    Own(NetStart),
    Pod(PodNet),
}

/// The pod sandbox's namespace (held open while the sandbox starts: the
/// launcher opens it by number) and what its gateway's clients need.
pub(crate) struct PodNet {
    pod: Paths,
    ns: File,
    ca_pem: String,
}

impl PodNet {
    /// Joins running sandbox `join.sandbox`, if its record names
    /// `join.owner`: its init's namespace (opened, then the init checked to
    /// be the same process) and its CA.
    pub(crate) fn open(join: &Join) -> Result<PodNet, SandboxError> {
        let refuse = |why: String| SandboxError::Refused(format!("the pod's sandbox {}: {why}", join.sandbox));
        let pod = Paths::new(&join.sandbox)?;
        let rec = state::load(&pod)?;
        if rec.image != join.owner {
            return Err(refuse(format!("it is {}'s, not the pod's ({})", rec.image, join.owner)));
        }
        let init = match (rec.live_status(), rec.init) {
            (Status::Running, Some(init)) => init,
            (s, _) => return Err(refuse(format!("it is {s:?}, not running"))),
        };
        let path = format!("/proc/{}/ns/net", init.pid);
        let ns = File::open(&path).map_err(|e| refuse(format!("{path}: {e}")))?;
        if !init.alive() {
            return Err(refuse("its init exited".into()));
        }
        // Its record was read and found running above.
        let ca_pem = super::read_launch_plan(&pod)?.top.ca_pem;
        Ok(PodNet { pod, ns, ca_pem })
    }
}

impl NetSide {
    /// Lets the sandbox's own gateway start (a pod's runs already).
    pub(crate) fn start_gateway(
        &mut self,
        paths: &Paths,
        network: &Network,
        limits: gateway::Limits,
        connects: Arc<Connects>,
        transparent: Vec<u16>,
    ) {
        if let NetSide::Own(n) = self {
            n.start_gateway(paths, network, limits, connects, transparent);
        }
    }

    /// Serves the sandbox's connect notifications at its `notify.sock`:
    /// its own watch, or a link to its pod's (with its control socket and
    /// audit log: `moat approvals POD.CONTAINER` is the pod's queue).
    pub(crate) fn watch_connects(
        &self,
        paths: &Paths,
        connects: Arc<Connects>,
        judged: Vec<u16>,
    ) -> Result<(), SandboxError> {
        let socket = paths.run.join(crate::launch::connect_notify::SOCKET);
        let io = |e| SandboxError::Io { what: "the connect watch's notify.sock".into(), source: e };
        match self {
            NetSide::Own(_) => super::connect_watch::start(&socket, connects, judged).map_err(io),
            NetSide::Pod(p) => {
                let links = [
                    (p.pod.run.join(crate::launch::connect_notify::SOCKET), socket),
                    (p.pod.control_socket(), paths.control_socket()),
                    (p.pod.audit_log(), paths.audit_log()),
                ];
                for (target, link) in links {
                    let _ = std::fs::remove_file(&link);
                    std::os::unix::fs::symlink(target, &link).map_err(io)?;
                }
                Ok(())
            }
        }
    }

    /// The namespace and CA for the launch.
    pub(crate) fn ready(&mut self) -> Result<LaunchNet, SandboxError> {
        match self {
            NetSide::Own(n) => n.ready(),
            NetSide::Pod(p) => Ok(LaunchNet {
                netns_path: format!("/proc/{}/fd/{}", std::process::id(), p.ns.as_raw_fd()),
                ca_pem: p.ca_pem.clone(),
            }),
        }
    }

    /// The sandbox's own namespace and running gateway (None: the pod's).
    pub(crate) fn finish(self) -> Result<Option<(Netns, Arc<gateway::Shared>)>, SandboxError> {
        match self {
            NetSide::Own(n) => n.finish().map(Some),
            NetSide::Pod(_) => Ok(None),
        }
    }
}
