//! The control API: a unix socket per sandbox (0600, owned by the user who
//! runs the supervisor, normally root) speaking one JSON request and one
//! JSON answer per line; the CLI's `approvals`, `approve`, `deny` and
//! `policy set/add-preset/remove-preset` go through it, and `watch` turns a
//! connection into the console's live feed (`super::watch`). Guards against the
//! sandbox changing its own policy (the socket lives outside the sandbox's
//! filesystem and network namespace, and its mode admits only its owner).
#![forbid(unsafe_code)]
use super::Shared;
use crate::policy::network::Network;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("sandbox is not running or its gateway is unreachable ({path})")]
    Connect { path: String, source: std::io::Error },
    #[error("control socket")]
    Io(#[from] std::io::Error),
    #[error("control socket answered: {0}")]
    Protocol(String),
    #[error("{0}")]
    Refused(String),
}

/// What the CLI can ask.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// The revision in force.
    Status,
    Approvals,
    /// `allowed_ips`: CIDRs the operator opts in for this destination
    /// (private addresses stay refused otherwise).
    /// `scope`: how much it opens (default: as the policy treats the host).
    Approve {
        id: String,
        #[serde(default)]
        allowed_ips: Vec<String>,
        #[serde(default)]
        scope: super::scope::Scope,
    },
    Deny {
        id: String,
    },
    /// Replace the network section (validated; the old one stays on error).
    SetNetwork {
        network: Box<Network>,
        why: String,
    },
    /// Switch where `inference.local` leads (live, persisted).
    InferenceSet {
        route: Box<crate::gateway::inference::Route>,
    },
    /// The route and today's token usage.
    InferenceShow,
    /// Publishes a port of the running sandbox on the host
    /// (`[HOST_IP:]HOST_PORT:SANDBOX_PORT`; `moat publish`).
    Publish {
        spec: String,
    },
    /// Turns the connection into a stream of JSON lines (`super::watch`):
    /// the policy, the pending approvals, then every audit record as it is
    /// written and every change of the other two. Read-only.
    Watch,
}

/// What publishes a port of the running sandbox: the sandbox side (which
/// owns the namespace and the host listeners) installs it once the sandbox
/// runs (`Shared::set_publisher`); the control socket only passes requests.
pub trait Publisher: Send + Sync {
    /// Publishes `spec`; answers what is now published, or why not.
    fn publish(&self, spec: &str) -> Result<Value, String>;
}

/// Binds the socket with mode 0600 (any stale socket is replaced).
pub fn bind(path: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    let _ = std::fs::remove_file(path);
    let l = crate::unix_addr::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

pub async fn serve(shared: Arc<Shared>, listener: std::os::unix::net::UnixListener) {
    let Ok(listener) = tokio::net::UnixListener::from_std(listener) else { return };
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let shared = shared.clone();
        tokio::spawn(async move {
            let (r, mut w) = stream.into_split();
            let mut lines = tokio::io::BufReader::new(r).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let answer = match serde_json::from_str::<Request>(&line) {
                    Ok(Request::Watch) => return super::watch::stream(shared, lines, w).await,
                    Ok(req) => {
                        let s = shared.clone();
                        tokio::task::spawn_blocking(move || answer(&s, req))
                            .await
                            .unwrap_or_else(|_| json!({"ok": false, "error": "internal error"}))
                    }
                    Err(e) => json!({"ok": false, "error": format!("bad request: {e}")}),
                };
                let mut out = answer.to_string();
                out.push('\n');
                if w.write_all(out.as_bytes()).await.is_err() {
                    return;
                }
            }
        });
    }
}

fn status(shared: &Shared) -> Value {
    let c = shared.current();
    json!({"ok": true, "revision": c.number, "sha256": c.sha256, "generation": c.generation, "network": c.network})
}

fn inference(shared: &Shared) -> Value {
    let route = shared.inference.route().map(|(r, _)| r);
    json!({"ok": true, "route": route, "usage": shared.inference.usage()})
}

fn answer(shared: &Shared, req: Request) -> Value {
    let result = match req {
        Request::Status => return status(shared),
        Request::Approvals => {
            let (pending, dropped) = shared.approvals_snapshot();
            let asks_refused = shared.asks.refused();
            return json!({"ok": true, "pending": pending, "dropped": dropped, "asks_refused": asks_refused});
        }
        Request::Approve { id, allowed_ips, scope } => match shared.approve(&id, allowed_ips, &scope) {
            Ok((_, rule)) => {
                let mut v = status(shared);
                v["rule"] = json!(rule);
                return v;
            }
            Err(e) => Err(e),
        },
        Request::Deny { id } => shared.deny(&id).map(|_| ()),
        Request::SetNetwork { network, why } => shared.set_network(*network, &why).map(|_| ()),
        Request::InferenceSet { route } => match shared.inference.set_route(*route) {
            Ok(()) => return inference(shared),
            Err(e) => return json!({"ok": false, "error": moat_builder::errors::chain(&e)}),
        },
        Request::InferenceShow => return inference(shared),
        Request::Watch => return json!({"ok": false, "error": "watch is a stream: send it first on a connection"}),
        Request::Publish { spec } => {
            return match shared.publisher.get() {
                None => {
                    json!({"ok": false, "error": "this sandbox cannot publish ports now (starting, or run without a namespace)"})
                }
                Some(p) => match p.publish(&spec) {
                    Ok(shown) => json!({"ok": true, "published": shown}),
                    Err(e) => json!({"ok": false, "error": e}),
                },
            };
        }
    };
    match result {
        Ok(()) => status(shared),
        Err(e) => json!({"ok": false, "error": moat_builder::errors::chain(&e)}),
    }
}

/// The CLI side: sends one request, returns the answer (errors as Err).
pub fn call(socket: &Path, req: &Request) -> Result<Value, ControlError> {
    let mut s = crate::unix_addr::connect(socket)
        .map_err(|source| ControlError::Connect { path: socket.display().to_string(), source })?;
    let mut line = serde_json::to_string(req).map_err(|e| ControlError::Protocol(e.to_string()))?;
    line.push('\n');
    s.write_all(line.as_bytes())?;
    let mut answer = String::new();
    BufReader::new(&s).read_line(&mut answer)?;
    let v: Value = serde_json::from_str(&answer).map_err(|e| ControlError::Protocol(e.to_string()))?;
    if v.get("ok") == Some(&Value::Bool(true)) {
        Ok(v)
    } else {
        Err(ControlError::Refused(v.get("error").and_then(Value::as_str).unwrap_or("refused").to_string()))
    }
}
