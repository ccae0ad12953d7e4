//! The inference gateway's state: the route `inference.local` leads to
//! (provider kind, endpoint, model rewrite, credential name, budget), held
//! per sandbox, switchable live, persisted in the sandbox's state; and the
//! usage meter. Guards against the sandbox holding a provider key: the route
//! names a credential the supervisor reads on the host for each request;
//! nothing of it enters the sandbox.
#![forbid(unsafe_code)]
pub(crate) mod relay;
mod request_body;
pub(crate) mod shapes;
pub mod usage;

/// The name the sandbox reaches its model by (its /etc/hosts points it at
/// the gateway). Every path (CONNECT, absolute-form forward, plain HTTP by
/// Host header) recognises it through `is_inference_host`.
pub const INFERENCE_HOST: &str = "inference.local";

/// Is `authority` (a host, or a Host header's `host[:port]`) inference.local?
pub fn is_inference_host(authority: &str) -> bool {
    let v = authority.trim();
    let host = match v.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => v,
    };
    host.eq_ignore_ascii_case(INFERENCE_HOST)
}

use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, RwLock};

#[derive(Debug, thiserror::Error)]
pub enum InferenceError {
    #[error("endpoint {0:?}: use http://HOST[:PORT][/PATH] or https://HOST[:PORT][/PATH]")]
    Endpoint(String),
    #[error("{path}: {message}")]
    State { path: PathBuf, message: String },
    #[error("credential {0:?} does not exist (moat credentials set {0})")]
    NoCredential(String),
    #[error("credential {name:?}: {message}")]
    Credential { name: String, message: String },
}

/// The kinds of provider; each has its own credential header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// OpenAI-compatible APIs: `Authorization: Bearer KEY`.
    Openai,
    /// Anthropic messages: `x-api-key: KEY`, `anthropic-version` added if absent.
    Anthropic,
    /// A local OpenAI-compatible server (Ollama, vLLM); the key is optional.
    Local,
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Kind, String> {
        match s {
            "openai" => Ok(Kind::Openai),
            "anthropic" => Ok(Kind::Anthropic),
            "local" => Ok(Kind::Local),
            _ => Err(format!("provider {s:?}: use openai, anthropic or local")),
        }
    }
}

/// Where `inference.local` leads.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// A label for usage accounting (default: the provider kind).
    pub name: String,
    pub provider: Kind,
    pub endpoint: String,
    /// Replaces the request's `model` when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// Name in `moat credentials`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
    #[serde(default)]
    pub budget: usage::Budget,
}

/// A parsed endpoint URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    pub tls: bool,
    pub host: String,
    pub port: u16,
    /// Path prefix without a trailing slash ("" or "/openai").
    pub base: String,
}

impl Endpoint {
    pub fn parse(url: &str) -> Result<Endpoint, InferenceError> {
        let bad = || InferenceError::Endpoint(url.to_string());
        let (tls, rest) = if let Some(r) = url.strip_prefix("https://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("http://") {
            (false, r)
        } else {
            return Err(bad());
        };
        let (authority, base) = match rest.find('/') {
            Some(i) => (&rest[..i], rest[i..].trim_end_matches('/')),
            None => (rest, ""),
        };
        if authority.is_empty() || authority.contains('@') || base.contains(['?', '#']) {
            return Err(bad());
        }
        let (host, port) =
            match authority.rsplit_once(':').filter(|(h, _)| !h.ends_with(']') || authority.starts_with('[')) {
                Some((h, p)) if !h.is_empty() && !authority.ends_with(']') => (h, p.parse().map_err(|_| bad())?),
                _ => (authority, if tls { 443 } else { 80 }),
            };
        let host = host.trim_start_matches('[').trim_end_matches(']').to_string();
        if host.is_empty() || port == 0 {
            return Err(bad());
        }
        Ok(Endpoint { tls, host, port, base: base.to_string() })
    }
}

impl Route {
    pub fn validate(&self) -> Result<Endpoint, InferenceError> {
        Endpoint::parse(&self.endpoint)
    }
}

/// The persisted form: `$MOAT_HOME/sandboxes/NAME/inference.json`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Saved {
    pub route: Option<Route>,
    /// The credential in use, for `moat credentials ls`.
    pub credential: Option<String>,
}

/// One sandbox's inference state.
#[derive(Debug)]
pub struct Inference {
    route: RwLock<Option<(Route, Endpoint)>>,
    pub meter: Mutex<usage::Meter>,
    dir: PathBuf,
    credentials: crate::secrets::credentials::Store,
    pub pool: relay::Pool,
    /// Budget of request bodies held whole (sized from the gateway's limits on first use).
    pub(crate) held: std::sync::OnceLock<tokio::sync::Semaphore>,
    unsaved: std::sync::Arc<Mutex<Option<Vec<u8>>>>,
}

impl Inference {
    /// Loads the saved route and today's usage from `dir` (the sandbox's
    /// state), or the default route `$MOAT_HOME/inference.json`.
    pub fn load(dir: PathBuf, credentials: crate::secrets::credentials::Store) -> Inference {
        let read = |p: &Path| -> Option<Saved> { serde_json::from_slice(&std::fs::read(p).ok()?).ok() };
        let saved = read(&dir.join("inference.json"))
            .or_else(|| read(&default_route_file()))
            .and_then(|s| s.route)
            .and_then(|r| r.validate().ok().map(|e| (r, e)));
        let usage = std::fs::read(dir.join("usage.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        Inference {
            route: RwLock::new(saved),
            meter: Mutex::new(usage::Meter::new(usage)),
            dir,
            credentials,
            pool: relay::Pool::default(),
            held: std::sync::OnceLock::new(),
            unsaved: Default::default(),
        }
    }

    pub fn route(&self) -> Option<(Route, Endpoint)> {
        self.route.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Switches the route (live) and persists it.
    pub fn set_route(&self, route: Route) -> Result<(), InferenceError> {
        let ep = route.validate()?;
        if let Some(c) = &route.credential {
            self.credential(c)?;
        }
        save_route(&self.dir.join("inference.json"), &route)?;
        tracing::info!(event = "inference_route", provider = ?route.provider, endpoint = %route.endpoint, "inference route set");
        *self.route.write().unwrap_or_else(|p| p.into_inner()) = Some((route, ep));
        Ok(())
    }

    /// The credential's value for a request (read on the host, per request,
    /// so a rotated key takes effect at once).
    pub fn credential(&self, name: &str) -> Result<String, InferenceError> {
        let key = self.credentials.get(name).map_err(|e| match e {
            crate::secrets::credentials::CredentialError::Unknown(_) => InferenceError::NoCredential(name.to_string()),
            other => {
                InferenceError::Credential { name: name.to_string(), message: moat_builder::errors::chain(&other) }
            }
        })?;
        // It goes into an HTTP header: a line break would inject headers.
        if key.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
            return Err(InferenceError::Credential {
                name: name.to_string(),
                message: "contains a line break or NUL; store it as one line".into(),
            });
        }
        Ok(key)
    }

    pub fn usage(&self) -> usage::Usage {
        self.meter.lock().unwrap_or_else(|p| p.into_inner()).usage.clone()
    }

    /// Persists today's usage (atomic; best effort) off the request path.
    pub fn save_usage(&self) {
        let Ok(bytes) = serde_json::to_vec_pretty(&self.usage()) else { return };
        *self.unsaved.lock().unwrap_or_else(|p| p.into_inner()) = Some(bytes);
        let path = self.dir.join("usage.json");
        let unsaved = self.unsaved.clone();
        // Whoever holds the lock writes the newest counts: files never go back in time.
        let write = move || {
            let mut pending = unsaved.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(b) = pending.take() {
                let _ = moat_builder::fsio::replace(&path, &b, 0o600);
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(h) => drop(h.spawn_blocking(write)),
            Err(_) => write(),
        }
    }
}

/// The route new sandboxes start with (`moat inference set --default`).
pub fn default_route_file() -> PathBuf {
    moat_builder::home::moat_home().join("inference.json")
}

/// Writes a route file atomically.
pub fn save_route(path: &Path, route: &Route) -> Result<(), InferenceError> {
    let saved = Saved { route: Some(route.clone()), credential: route.credential.clone() };
    let bytes = serde_json::to_vec_pretty(&saved)
        .map_err(|e| InferenceError::State { path: path.to_path_buf(), message: e.to_string() })?;
    moat_builder::fsio::write(path, &bytes, 0o600)
        .map_err(|e| InferenceError::State { path: path.to_path_buf(), message: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_strictly() {
        let e = Endpoint::parse("https://api.openai.com").unwrap();
        assert_eq!((e.tls, e.host.as_str(), e.port, e.base.as_str()), (true, "api.openai.com", 443, ""));
        let e = Endpoint::parse("http://10.0.0.5:11434/ollama/").unwrap();
        assert_eq!((e.tls, e.host.as_str(), e.port, e.base.as_str()), (false, "10.0.0.5", 11434, "/ollama"));
        let e = Endpoint::parse("http://[::1]:8000").unwrap();
        assert_eq!((e.host.as_str(), e.port), ("::1", 8000));
        for bad in ["ftp://x", "https://", "https://u:p@h", "http://h:0", "http://h:x", "https://h/p?q"] {
            assert!(Endpoint::parse(bad).is_err(), "{bad}");
        }
    }
}
