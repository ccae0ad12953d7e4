//! The egress gateway: the sandbox's only way out (DESIGN.md). Owns the
//! gateway's shared state (the network policy revision in force and its
//! generation, identity, resolver, CA, audit log, approvals) and starts the
//! tokio runtime that serves the proxy and the control socket. Guards
//! against a policy change leaving stale permissions behind: every change is
//! a validated, durable revision, and the generation counter makes open
//! tunnels re-check themselves.
#![forbid(unsafe_code)]
pub mod asks;
pub mod ca;
pub mod connects;
pub mod control;
mod decide;
pub mod dns;
pub mod events;
mod git_rpc;
mod h2;
pub mod http1;
pub mod identity;
pub mod inference;
pub(crate) mod inspect;
pub mod integrity;
pub mod names;
pub mod operator;
mod own_addrs;
pub(crate) mod path_shape;
pub(crate) mod process;
mod proxy;
mod refused_tunnel;
pub mod revisions;
pub mod scope;
pub mod sock_diag;
pub mod splice;
pub mod ssrf;
mod transparent;
pub(crate) mod upstream;
pub mod watch;

use crate::policy::matcher::Compiled;
use crate::policy::network::Network;
use crate::policy::schema::NetPolicy;
use events::EventLog;
use revisions::{Approvals, Pending, RevisionStore};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("invalid network policy")]
    Policy(#[from] crate::policy::schema::NetPolicyError),
    #[error(transparent)]
    Revision(#[from] revisions::RevisionError),
    #[error(transparent)]
    Ca(#[from] ca::CaError),
    #[error(transparent)]
    Ssrf(#[from] ssrf::SsrfError),
    #[error("{what}")]
    Io { what: String, source: std::io::Error },
    #[error("not approved: {0}")]
    NotApproved(String),
    #[error(transparent)]
    Scope(#[from] scope::ScopeError),
}

fn io(what: &str) -> impl FnOnce(std::io::Error) -> GatewayError {
    let what = what.to_string();
    move |source| GatewayError::Io { what, source }
}

/// Limits that bound what one client can hold (documented in docs/egress.md).
#[derive(Debug, Clone)]
pub struct Limits {
    /// Largest request or response head.
    pub max_head: usize,
    /// Time to send a complete request head (slowloris bound).
    pub head_timeout: Duration,
    /// Idle time allowed between requests on a kept-alive connection.
    pub idle_timeout: Duration,
    /// Time to connect to an upstream.
    pub connect_timeout: Duration,
    /// Concurrent client connections; more are answered 503. With
    /// `max_head` this bounds the heads held at once (32 MiB).
    pub max_connections: usize,
    /// Time a client has to send one whole request body that the gateway
    /// reads itself (inference.local); 408 after.
    pub body_timeout: Duration,
    /// Bytes of request bodies held whole at once, for the whole sandbox.
    pub body_buffer: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            max_head: 32 * 1024,
            head_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
            connect_timeout: Duration::from_secs(10),
            max_connections: 1024,
            body_timeout: Duration::from_secs(120),
            body_buffer: 64 << 20,
        }
    }
}

/// Everything the gateway needs, prepared by the supervisor.
pub struct Config {
    pub sandbox: String,
    /// The network section the sandbox was created with (revision 1 unless
    /// the sandbox's state already holds newer revisions).
    pub network: Network,
    pub revisions: RevisionStore,
    pub events: EventLog,
    pub identity: identity::Identity,
    pub resolver: ssrf::Resolver,
    pub ca: Arc<ca::Ca>,
    /// Unix socket for the CLI (`moat approvals`, `policy set`, ...).
    pub control_socket: Option<PathBuf>,
    pub limits: Limits,
    /// Where `inference.local` leads (issue: inference gateway).
    pub inference: Arc<crate::gateway::inference::Inference>,
}

/// The revision in force.
#[derive(Debug)]
pub struct Current {
    pub number: u64,
    pub sha256: String,
    pub generation: u64,
    pub network: Network,
    pub compiled: Compiled,
}

/// State shared by every connection.
pub struct Shared {
    pub sandbox: String,
    current: RwLock<Arc<Current>>,
    generation: tokio::sync::watch::Sender<u64>,
    pub identity: identity::Identity,
    pub resolver: ssrf::Resolver,
    pub ca: Arc<ca::Ca>,
    /// Upstream TLS client (system roots): loaded on first use, off the
    /// sandbox's start-up path (reading the roots takes milliseconds).
    upstream_tls: std::sync::OnceLock<Result<Arc<rustls::ClientConfig>, String>>,
    pub events: EventLog,
    approvals: Mutex<Approvals>,
    revisions: RevisionStore,
    /// Serialises policy changes (number allocation and the file write).
    change: Mutex<()>,
    pub limits: Limits,
    pub inference: Arc<crate::gateway::inference::Inference>,
    /// The operator's terminal (a foreground `moat run`'s stderr): told of
    /// each new pending approval, at a bounded rate.
    operator: operator::Terminal,
    /// Agents' requests through `moat.local` (their rate limit).
    pub asks: asks::Asks,
    /// Bumped at every change of the pending approvals (the console's feed).
    approvals_changed: tokio::sync::watch::Sender<u64>,
    /// Publishes ports live (`moat publish`), once the sandbox runs.
    pub publisher: std::sync::OnceLock<Box<dyn control::Publisher>>,
    /// HTTP/2 streams being checked or relayed, sandbox-wide (`h2`).
    h2_streams: tokio::sync::Semaphore,
    /// The names the sandbox's DNS gave out (transparent egress).
    pub names: Arc<names::Names>,
}

/// The sockets of transparent egress, bound inside the sandbox's namespace:
/// the DNS responder's (UDP and TCP on `dns::ADDRESS`:53) and one listener
/// on every port connections to the reserved range are taken on.
pub struct Transparent {
    pub dns_udp: std::net::UdpSocket,
    pub dns_tcp: std::net::TcpListener,
    pub listeners: Vec<std::net::TcpListener>,
}

impl Shared {
    pub fn current(&self) -> Arc<Current> {
        self.current.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The upstream TLS client configuration, built on first use. Building
    /// it reads the system roots (blocking), so only that first call moves
    /// off the async worker; every later one is a plain read. Call it from
    /// the gateway's (multi-threaded) runtime.
    pub fn upstream_tls(&self) -> std::io::Result<Arc<rustls::ClientConfig>> {
        let built = match self.upstream_tls.get() {
            Some(built) => built,
            None => tokio::task::block_in_place(|| {
                self.upstream_tls.get_or_init(|| ca::upstream_client().map_err(|e| moat_builder::errors::chain(&e)))
            }),
        };
        built.clone().map_err(std::io::Error::other)
    }

    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Validates `network` and makes it the new revision in force.
    pub fn set_network(&self, network: Network, why: &str) -> Result<Arc<Current>, GatewayError> {
        let _guard = self.change.lock().unwrap_or_else(|p| p.into_inner());
        network.validate()?;
        let compiled = Compiled::new(network.effective()?)?;
        let prev = self.current();
        let number = prev.number + 1;
        let sha256 = self.revisions.write(number, &network, why)?;
        let generation = prev.generation + 1;
        let cur = Arc::new(Current { number, sha256, generation, network, compiled });
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = cur.clone();
        self.generation.send_replace(generation);
        tracing::info!(event = "policy_revision", sandbox = %self.sandbox, revision = number, sha256 = %cur.sha256, why, "network policy changed");
        Ok(cur)
    }

    pub fn pending(&self) -> Vec<Pending> {
        self.approvals.lock().unwrap_or_else(|p| p.into_inner()).list()
    }

    /// The pending list and how many entries were evicted from it.
    pub fn approvals_snapshot(&self) -> (Vec<Pending>, u64) {
        let a = self.approvals.lock().unwrap_or_else(|p| p.into_inner());
        (a.list(), a.dropped())
    }

    /// Wakes whenever the pending approvals change.
    pub fn watch_approvals(&self) -> tokio::sync::watch::Receiver<u64> {
        self.approvals_changed.subscribe()
    }

    fn approvals_changed(&self) {
        self.approvals_changed.send_modify(|n| *n += 1);
    }

    /// A revision's file text (`None`: no such revision kept).
    pub fn revision_text(&self, number: u64) -> Option<String> {
        self.revisions.read(number).ok().flatten()
    }

    /// Records a refused destination for the operator; returns its id.
    /// The entry shows the caller's binary, its hash and its ancestors.
    pub fn request_approval(&self, caller: &identity::Caller, host: &str, port: u16) -> String {
        let chain = ancestors(caller);
        let p = &caller.process;
        let (id, new) =
            self.approvals.lock().unwrap_or_else(|p| p.into_inner()).request(&p.exe, &p.sha256, &chain, host, port);
        if new {
            self.operator.tell_new_approval(&self.sandbox, &p.exe, host, port, &id);
        }
        self.approvals_changed();
        id
    }

    /// Records an agent's request (`moat.local`) as a pending approval for
    /// the calling binary, with the agent's words; returns its id and
    /// whether it is new. A repeat updates the words.
    pub fn ask_approval(
        &self,
        caller: &identity::Caller,
        host: &str,
        port: u16,
        asked: revisions::AgentRequest,
    ) -> (String, bool) {
        let chain = ancestors(caller);
        let p = &caller.process;
        let reason = asked.reason.clone();
        let (id, new) = {
            let mut a = self.approvals.lock().unwrap_or_else(|p| p.into_inner());
            let (id, new) = a.request(&p.exe, &p.sha256, &chain, host, port);
            a.set_agent_request(&id, asked);
            (id, new)
        };
        if new {
            self.operator.tell_agent_request(&self.sandbox, &p.exe, host, port, &id, &reason);
        }
        self.approvals_changed();
        (id, new)
    }

    /// What became of an approval id (pending, approved, denied, dropped).
    pub fn approval_status(&self, id: &str) -> Option<revisions::Outcome> {
        self.approvals.lock().unwrap_or_else(|p| p.into_inner()).status(id)
    }

    /// Remembers a decision for agents polling the id.
    fn record_outcome(&self, id: &str, outcome: revisions::Outcome) {
        self.approvals.lock().unwrap_or_else(|p| p.into_inner()).record(id, outcome);
    }

    /// Approves a pending entry: a new revision allowing exactly it, as
    /// wide as `scope` says. By default, where an inspected rule already
    /// covers the destination, the approval takes its inspection (protocol,
    /// access, rules), so it never widens that host to L4. The destination is resolved first: an address the SSRF guard
    /// would refuse (private, loopback, ...) needs `allowed_ips` naming it,
    /// or the approval is refused and stays pending, instead of one that
    /// reports success and then refuses every retry.
    pub fn approve(
        &self,
        id: &str,
        allowed_ips: Vec<String>,
        scope: &scope::Scope,
    ) -> Result<(Arc<Current>, NetPolicy), GatewayError> {
        let p = self.approvals.lock().unwrap_or_else(|p| p.into_inner()).take(id)?;
        let restore = |p: Pending| {
            self.approvals.lock().unwrap_or_else(|p| p.into_inner()).restore(p);
            self.approvals_changed();
        };
        let mut network = self.current().network.clone();
        let mut rule = revisions::approval_policy(&p);
        rule.endpoints[0].allowed_ips = allowed_ips;
        let policies = network.effective().unwrap_or_default();
        let inherited = match scope::apply(&mut rule, scope, &policies) {
            Ok(from) => from,
            Err(e) => {
                restore(p);
                return Err(e.into());
            }
        };
        if let Err(e) = self.check_reachable(&rule.endpoints[0]) {
            restore(p);
            return Err(e);
        }
        network.policies.push(rule.clone());
        let mut why = format!(
            "approved {} (sha256 {}) -> {}:{}, {}",
            crate::visible::field(&p.binary),
            p.hash,
            p.host,
            p.port,
            scope.describe()
        );
        if let Some(from) = inherited {
            why.push_str(&format!(", inspected as policy {from} inspects it"));
        }
        match self.set_network(network, &why) {
            Ok(c) => {
                self.record_outcome(&p.id, revisions::Outcome::Approved);
                self.approvals_changed();
                Ok((c, rule))
            }
            Err(e) => {
                restore(p);
                Err(e)
            }
        }
    }

    /// Resolves an approval's destination and checks its addresses as a
    /// connection would be checked (blocking: called off the runtime).
    fn check_reachable(&self, ep: &crate::policy::schema::Endpoint) -> Result<(), GatewayError> {
        let nets = ep.allowed_nets();
        let check = ssrf::resolve_checked(&self.resolver, &ep.host, ep.port, &nets);
        let result = match tokio::runtime::Handle::try_current() {
            Ok(h) => h.block_on(check),
            Err(_) => return Ok(()),
        };
        match result {
            Ok(_) => Ok(()),
            Err(e @ ssrf::SsrfError::Refused(_)) => Err(GatewayError::NotApproved(format!(
                "{}:{}: {}; the approval stays pending: approve it with --allowed-ip CIDR naming that address if the sandbox should reach it",
                ep.host,
                ep.port,
                moat_builder::errors::chain(&e)
            ))),
            // A name that does not resolve now may later; the connection is checked then.
            Err(_) => Ok(()),
        }
    }

    /// Denies (drops) a pending entry.
    pub fn deny(&self, id: &str) -> Result<Pending, GatewayError> {
        let mut a = self.approvals.lock().unwrap_or_else(|p| p.into_inner());
        let p = a.take(id)?;
        a.record(id, revisions::Outcome::Denied);
        drop(a);
        self.approvals_changed();
        Ok(p)
    }
}

/// The chain that started a caller, as a pending approval shows it.
fn ancestors(caller: &identity::Caller) -> Vec<revisions::Ancestor> {
    caller.ancestors.iter().map(|a| revisions::Ancestor { binary: a.exe.clone(), hash: a.sha256.clone() }).collect()
}

/// A running gateway; dropping it does not stop it (it lives as long as
/// the supervisor process).
pub struct Handle {
    pub shared: Arc<Shared>,
    pub port: u16,
}

/// Loads the revision in force, then serves `listener` (and the control
/// socket) on a dedicated runtime thread.
pub fn start(config: Config, listener: std::net::TcpListener) -> Result<Handle, GatewayError> {
    start_with(config, listener, None)
}

/// `start`, serving transparent egress on `transparent`'s sockets too.
pub fn start_with(
    config: Config,
    listener: std::net::TcpListener,
    transparent: Option<Transparent>,
) -> Result<Handle, GatewayError> {
    let port = listener.local_addr().map_err(io("gateway socket"))?.port();
    let (number, network, sha256) = match config.revisions.latest()? {
        Some(found) => found,
        None => (1, config.network.clone(), config.revisions.write_initial(&config.network)?),
    };
    network.validate()?;
    let compiled = Compiled::new(network.effective()?)?;
    let current = Arc::new(Current { number, sha256, generation: 1, network, compiled });
    let shared = Arc::new(Shared {
        sandbox: config.sandbox,
        current: RwLock::new(current),
        generation: tokio::sync::watch::Sender::new(1),
        identity: config.identity,
        resolver: config.resolver,
        ca: config.ca,
        upstream_tls: std::sync::OnceLock::new(),
        events: config.events,
        approvals: Mutex::default(),
        revisions: config.revisions,
        change: Mutex::new(()),
        limits: config.limits,
        inference: config.inference,
        operator: operator::Terminal::default(),
        asks: asks::Asks::default(),
        approvals_changed: tokio::sync::watch::Sender::new(0),
        publisher: std::sync::OnceLock::new(),
        h2_streams: tokio::sync::Semaphore::new(h2::MAX_SANDBOX_STREAMS),
        names: Arc::new(names::Names::default()),
    });
    raise_nofile();
    // A deeper accept queue than std's 128: a burst of connections from the
    // sandbox waits in the kernel instead of being dropped and retried.
    // listen(2) on a socket that is already listening only changes its
    // backlog: SOMAXCONN (4096 with glibc; the kernel caps it at
    // net.core.somaxconn).
    let _ = nix::sys::socket::listen(&listener, nix::sys::socket::Backlog::MAXCONN);
    listener.set_nonblocking(true).map_err(io("gateway socket"))?;
    let control = match &config.control_socket {
        Some(path) => Some(control::bind(path).map_err(io(&path.display().to_string()))?),
        None => None,
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name("moat-gateway")
        .enable_all()
        .build()
        .map_err(io("gateway runtime"))?;
    if let Some(t) = &transparent {
        t.dns_udp.set_nonblocking(true).map_err(io("DNS socket"))?;
        t.dns_tcp.set_nonblocking(true).map_err(io("DNS socket"))?;
        for l in &t.listeners {
            l.set_nonblocking(true).map_err(io("transparent egress socket"))?;
        }
    }
    let s = shared.clone();
    std::thread::Builder::new()
        .name("moat-gateway".into())
        .spawn(move || {
            rt.block_on(async move {
                let listener = match tokio::net::TcpListener::from_std(listener) {
                    Ok(l) => l,
                    Err(e) => {
                        tracing::error!(event = "gateway_failed", error = %moat_builder::errors::chain(&e), "gateway socket");
                        return;
                    }
                };
                if let Some(c) = control {
                    tokio::spawn(control::serve(s.clone(), c));
                }
                let slots = Arc::new(tokio::sync::Semaphore::new(s.limits.max_connections));
                if let Some(t) = transparent {
                    serve_transparent(&s, t, &slots);
                }
                proxy::serve(s, listener, slots).await;
            })
        })
        .map_err(io("gateway thread"))?;
    Ok(Handle { shared, port })
}

/// Starts the DNS responder and the transparent ports' accept loops on
/// the current runtime; a socket the runtime refuses is logged and left out.
fn serve_transparent(s: &Arc<Shared>, t: Transparent, slots: &Arc<tokio::sync::Semaphore>) {
    let fail = |e: std::io::Error| {
        tracing::error!(event = "gateway_failed", error = %moat_builder::errors::chain(&e), "transparent egress socket");
    };
    match tokio::net::UdpSocket::from_std(t.dns_udp) {
        Ok(u) => drop(tokio::spawn(dns::serve_udp(s.names.clone(), u))),
        Err(e) => fail(e),
    }
    match tokio::net::TcpListener::from_std(t.dns_tcp) {
        Ok(l) => drop(tokio::spawn(dns::serve_tcp(s.names.clone(), l))),
        Err(e) => fail(e),
    }
    for l in t.listeners {
        match tokio::net::TcpListener::from_std(l) {
            Ok(l) => drop(tokio::spawn(transparent::serve(s.clone(), l, slots.clone()))),
            Err(e) => fail(e),
        }
    }
}

/// Each relayed connection holds two descriptors: lift the soft limit to
/// the hard one so a thousand clients do not exhaust the default 1024.
fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((cur, max)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if cur < max {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, max, max);
        }
    }
}
