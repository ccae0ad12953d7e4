//! The sandbox's network side as the supervisor starts it, on one helper
//! thread: first what the launch needs (the namespace with only `lo`, the
//! gateway's sockets bound inside it: its proxy port, transparent egress's
//! DNS responder and ports, the sandbox's CA for the trust bundle),
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
use crate::sandbox::netns::{self, Netns, NetnsError};
use crate::sandbox::state::Paths;
use crate::sandbox::SandboxError;
use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;

/// The most ports transparent egress listens on (80 and 443, then the
/// policy's other endpoint ports, lowest first).
pub(crate) const MAX_TRANSPARENT_PORTS: usize = 32;

/// The ports transparent egress takes connections on: 80, 443 and every
/// port an endpoint of `network` names, but never the gateway's proxy
/// port, DNS's 53, or a port the sandbox may bind itself (`bindable`:
/// published or exposed). Landlock lets the sandbox connect to these.
pub(crate) fn transparent_ports(network: &Network, bindable: &[u16]) -> Vec<u16> {
    let named = network.effective().unwrap_or_default();
    let mut rest: Vec<u16> = named.iter().flat_map(|p| p.endpoints.iter().map(|e| e.port)).collect();
    rest.sort_unstable();
    let mut out: Vec<u16> = Vec::new();
    for p in [80, 443].into_iter().chain(rest) {
        if p != 0 && p != network.gateway_port && p != 53 && !bindable.contains(&p) && !out.contains(&p) {
            out.push(p);
        }
    }
    out.truncate(MAX_TRANSPARENT_PORTS);
    out
}

/// What the launch needs from the network side.
pub(crate) struct LaunchNet {
    /// `/proc/PID/fd/N` of the namespace, for the spec.
    pub netns_path: String,
    /// The CA certificate (PEM) the sandbox trusts.
    pub ca_pem: String,
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
    /// Told once the transparent ports the sandbox may bind are closed
    /// (right after `start_gateway`'s arguments arrive).
    trimmed: mpsc::Receiver<()>,
    gateway_asked: bool,
}

/// The namespace, and the gateway started in it (or why not).
type Started = (Netns, Result<Arc<gateway::Shared>, SandboxError>);

/// What the gateway is started with, once the sandbox exists, and the
/// transparent ports it serves.
type GatewayArgs = (Paths, Network, gateway::Limits, Arc<Connects>, Vec<u16>);

impl NetStart {
    /// Makes the namespace, binds the gateway's `port` in it and the CA of
    /// sandbox `name` now; the gateway itself waits for `start_gateway`. The
    /// name need not be reserved yet: nothing is written until then.
    /// `transparent` are the ports transparent egress may listen on; those
    /// `start_gateway` does not keep are closed before `ready` returns.
    pub(crate) fn spawn(name: &str, port: u16, transparent: Vec<u16>) -> NetStart {
        let (tx, ready) = mpsc::channel();
        let (go, go_rx) = mpsc::channel::<GatewayArgs>();
        let (trimmed_tx, trimmed) = mpsc::channel();
        let name = name.to_string();
        let thread = std::thread::spawn(move || {
            // The namespace and its sockets are made on one helper thread
            // while this one makes the CA.
            let creating = Netns::create_then(move || {
                let listener = netns::listen_local(port)?;
                let sockets = transparent_sockets(&transparent)?;
                Ok((listener, sockets, gateway::sock_diag::SockDiag::new().ok()))
            });
            let ca = Ca::new(&name).map_err(crate::sandbox::gateway_err);
            let (ns, (listener, mut sockets, diag)) = creating.join()?;
            let ca = Arc::new(ca?);
            // The receiver may be gone (the supervisor failed meanwhile).
            let _ = tx.send(LaunchNet { netns_path: ns.proc_path(), ca_pem: ca.cert_pem() });
            let gateway = match go_rx.recv() {
                Ok((paths, network, limits, connects, keep)) => {
                    sockets.listeners.retain(|l| l.local_addr().is_ok_and(|a| keep.contains(&a.port())));
                    let _ = trimmed_tx.send(());
                    gateway_for(&paths, &network, limits, connects, (&ns, diag), listener, ca, sockets)
                        .map_err(crate::sandbox::gateway_err)
                }
                Err(_) => Err(SandboxError::Refused("the gateway was not started".into())),
            };
            Ok((ns, gateway))
        });
        NetStart { ready, go: Some(go), thread: Some(thread), trimmed, gateway_asked: false }
    }

    /// Lets the gateway start, once the sandbox's name is reserved and its
    /// state directory exists; `connects` are the verdicts of the sandbox's
    /// connect watch, `transparent` the ports transparent egress keeps.
    pub(crate) fn start_gateway(
        &mut self,
        paths: &Paths,
        network: &Network,
        limits: gateway::Limits,
        connects: Arc<Connects>,
        transparent: Vec<u16>,
    ) {
        if let Some(go) = self.go.take() {
            self.gateway_asked = true;
            // A send error means the thread already failed: `ready`/`finish` report it.
            let _ = go.send((paths.clone(), network.clone(), limits, connects, transparent));
        }
    }

    /// Waits for the namespace, the sockets and the CA (and, once the
    /// gateway was asked to start, for the ports it does not keep to be
    /// closed, so the sandbox can bind them).
    pub(crate) fn ready(&mut self) -> Result<LaunchNet, SandboxError> {
        match self.ready.recv() {
            Ok(net) => {
                if self.gateway_asked {
                    // An error: the thread ended; `finish` says why.
                    let _ = self.trimmed.recv();
                }
                Ok(net)
            }
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

/// Binds transparent egress's sockets in the calling thread's namespace
/// (inside `Netns::create_then`): the DNS responder on 127.0.0.53:53 (UDP
/// and TCP) and `0.0.0.0:PORT` for each of `ports`.
fn transparent_sockets(ports: &[u16]) -> Result<gateway::Transparent, NetnsError> {
    use std::net::{Ipv4Addr, SocketAddr};
    let dns = SocketAddr::from((gateway::dns::ADDRESS, 53));
    let listeners = ports
        .iter()
        .map(|p| netns::listen_on(SocketAddr::from((Ipv4Addr::UNSPECIFIED, *p))))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(gateway::Transparent { dns_udp: netns::bind_udp(dns)?, dns_tcp: netns::listen_on(dns)?, listeners })
}

/// Starts the gateway of the sandbox at `paths` on `listener` and the
/// transparent egress `sockets` (inside its namespace `netns`): its CA,
/// audit log, revisions, control socket and inference route. Returns the
/// CA, whose certificate the sandbox trusts.
#[allow(clippy::too_many_arguments)]
fn gateway_for(
    paths: &Paths,
    network: &Network,
    limits: gateway::Limits,
    connects: Arc<Connects>,
    (netns, sock_diag): (&Netns, Option<gateway::sock_diag::SockDiag>),
    listener: std::net::TcpListener,
    ca: Arc<Ca>,
    sockets: gateway::Transparent,
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
        identity: gateway::identity::Identity::for_netns_fd(netns.raw_fd(), connects, sock_diag)
            .map_err(|source| gateway::GatewayError::Io { what: "sandbox netns".into(), source })?,
        resolver: gateway::ssrf::Resolver::from_env()?,
        ca,
        control_socket: Some(paths.control_socket()),
        limits,
        inference: Arc::new(crate::gateway::inference::Inference::load(paths.home.clone(), credentials)),
    };
    Ok(gateway::start_with(config, listener, Some(sockets))?.shared)
}
