//! The sandbox's network side as the supervisor starts it, on one helper
//! thread: first what the launch needs (the namespace with only `lo`, the
//! gateway's socket bound inside it, the sandbox's CA for the trust bundle),
//! made while the CLI records the sandbox and resolves its image; then, once
//! the sandbox's state exists, the gateway itself (policy revision, audit
//! log, control socket, runtime), which runs while the launcher builds the
//! sandbox. Guards
//! against a sandbox reported running without its gateway: `finish` joins
//! the gateway's start, and the caller kills the sandbox if it failed. Until
//! the gateway accepts, the sandbox's connections wait in the socket's
//! backlog; no packet has any other way out.
#![forbid(unsafe_code)]
use crate::gateway::{self, ca::Ca, connects::Connects};
use crate::policy::Network;
use crate::sandbox::netns::{Netns, NetnsError};
use crate::sandbox::state::Paths;
use crate::sandbox::SandboxError;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

/// What the launch needs from the network side.
pub(crate) struct LaunchNet {
    /// `/proc/PID/fd/N` of the namespace, for the spec.
    pub netns_path: String,
    pub ca: Arc<Ca>,
}

/// The helper thread; joined by `finish`, or on drop (it writes into the
/// sandbox's state, which an error path may be about to remove).
pub(crate) struct NetStart {
    ready: mpsc::Receiver<LaunchNet>,
    /// Starts the gateway for the sandbox created at these paths. Dropped
    /// unsent, the thread ends without touching any sandbox's state.
    go: Option<mpsc::Sender<GatewayArgs>>,
    /// The outer error: no namespace or socket (nothing was sent); the inner
    /// one: the gateway failed (or was never asked) to start. The namespace
    /// is returned either way, so its descriptor stays open until `finish`
    /// (the launcher opens it by number).
    thread: Option<JoinHandle<Result<Started, SandboxError>>>,
}

/// The namespace, and the gateway started in it (or why not).
type Started = (Netns, Result<Arc<gateway::Shared>, SandboxError>);

/// What the gateway is started with, once the sandbox exists.
type GatewayArgs = (Paths, Network, gateway::Limits, Arc<Connects>);

impl NetStart {
    /// Makes the namespace, binds the gateway's `port` in it and the CA of
    /// sandbox `name` now; the gateway itself waits for `start_gateway`. The
    /// name need not be reserved yet: nothing is written until then.
    pub(crate) fn spawn(name: &str, port: u16) -> NetStart {
        let (tx, ready) = mpsc::channel();
        let (go, go_rx) = mpsc::channel::<GatewayArgs>();
        let name = name.to_string();
        let thread = std::thread::spawn(move || {
            let ns = Netns::create()?;
            let listener = ns.listen(port)?;
            let ca = Arc::new(Ca::new(&name).map_err(crate::sandbox::gateway_err)?);
            // The receiver may be gone (the supervisor failed meanwhile).
            let _ = tx.send(LaunchNet { netns_path: ns.proc_path(), ca: ca.clone() });
            let gateway = match go_rx.recv() {
                Ok((paths, network, limits, connects)) => {
                    gateway_for(&paths, &network, limits, connects, &ns, listener, ca)
                        .map_err(crate::sandbox::gateway_err)
                }
                Err(_) => Err(SandboxError::Refused("the gateway was not started".into())),
            };
            Ok((ns, gateway))
        });
        NetStart { ready, go: Some(go), thread: Some(thread) }
    }

    /// Lets the gateway start, once the sandbox's name is reserved and its
    /// state directory exists; `connects` are the verdicts of the sandbox's
    /// connect watch.
    pub(crate) fn start_gateway(
        &mut self,
        paths: &Paths,
        network: &Network,
        limits: gateway::Limits,
        connects: Arc<Connects>,
    ) {
        if let Some(go) = self.go.take() {
            // A send error means the thread already failed: `ready`/`finish` report it.
            let _ = go.send((paths.clone(), network.clone(), limits, connects));
        }
    }

    /// Waits for the namespace, the socket and the CA.
    pub(crate) fn ready(&mut self) -> Result<LaunchNet, SandboxError> {
        match self.ready.recv() {
            Ok(net) => Ok(net),
            // The thread failed before sending: its error says why.
            Err(_) => Err(self.join().err().unwrap_or(SandboxError::Netns(NetnsError::Thread))),
        }
    }

    /// Waits for the gateway to run; returns the namespace, to be held as
    /// long as the sandbox lives, and the gateway's state.
    pub(crate) fn finish(mut self) -> Result<(Netns, Arc<gateway::Shared>), SandboxError> {
        let (ns, gateway) = self.join()?;
        gateway.map(|g| (ns, g))
    }

    fn join(&mut self) -> Result<Started, SandboxError> {
        self.go.take();
        match self.thread.take() {
            Some(t) => t.join().map_err(|_| SandboxError::Netns(NetnsError::Thread))?,
            None => Err(SandboxError::Netns(NetnsError::Thread)),
        }
    }
}

impl Drop for NetStart {
    fn drop(&mut self) {
        self.go.take();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the gateway of the sandbox at `paths` on `listener` (inside its
/// namespace `netns`): its CA, audit log, revisions, control socket and
/// inference route. Returns the CA, whose certificate the sandbox trusts.
fn gateway_for(
    paths: &Paths,
    network: &Network,
    limits: gateway::Limits,
    connects: Arc<Connects>,
    netns: &Netns,
    listener: std::net::TcpListener,
    ca: Arc<Ca>,
) -> Result<Arc<gateway::Shared>, gateway::GatewayError> {
    // Credentials stay on the host; their permissions are re-checked (and
    // repaired, loudly) on every start.
    let credentials = crate::secrets::credentials::Store::default_location();
    match credentials.check_and_repair() {
        Ok(warnings) => {
            for w in warnings {
                tracing::warn!(event = "credentials_repaired", "{w}");
            }
        }
        Err(e) => {
            tracing::warn!(event = "credentials_unusable", error = %moat_builder::errors::chain(&e), "credential store check failed")
        }
    }
    let config = gateway::Config {
        sandbox: paths.name.clone(),
        network: network.clone(),
        revisions: gateway::revisions::RevisionStore::at(gateway::revisions::revisions_dir(&paths.home)),
        events: gateway::events::EventLog::open(&paths.audit_log())
            .map_err(|source| gateway::GatewayError::Io { what: "audit log".into(), source })?,
        identity: gateway::identity::Identity::for_netns_fd(netns.raw_fd(), connects, netns.sock_diag())
            .map_err(|source| gateway::GatewayError::Io { what: "sandbox netns".into(), source })?,
        resolver: gateway::ssrf::Resolver::from_env()?,
        ca,
        control_socket: Some(paths.control_socket()),
        limits,
        inference: Arc::new(crate::gateway::inference::Inference::load(paths.home.clone(), credentials)),
    };
    Ok(gateway::start(config, listener)?.shared)
}
