//! The npm registry client: packuments and tarballs over HTTP(S), each read
//! with a size bound before anything is allocated for it, and tarballs kept
//! in the shared downloads cache under their sha256. Guards against a
//! hostile or broken registry: oversized answers are refused unread,
//! malformed JSON is an error naming the package, and a tarball enters the
//! cache only after it matches its pin.
#![forbid(unsafe_code)]
use super::NpmError;
use crate::digest::Digest;
use crate::downloads::{Downloads, Failure, Pin};
use serde_json::Value;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// The registry when `MOAT_NPM_REGISTRY` is unset.
pub(crate) const DEFAULT_REGISTRY: &str = "https://registry.npmjs.org";
/// Largest packument read (the full document of a much-published package is tens of MiB).
pub(crate) const MAX_PACKUMENT: u64 = 96 << 20;
/// Largest tarball read.
pub(crate) const MAX_TARBALL: u64 = 256 << 20;

/// The registry base URL (no trailing `/`): `MOAT_NPM_REGISTRY`, else
/// `https://HOST` for the `npm-registry` host variable the presets use
/// (`[hosts]` in `$MOAT_HOME/registries.toml`, or the file
/// `MOAT_REGISTRY_HOSTS` names), else the public registry.
pub(crate) fn registry_base() -> Result<String, NpmError> {
    base_from(std::env::var("MOAT_NPM_REGISTRY").ok().as_deref(), &crate::registry_hosts::file())
}

fn base_from(env: Option<&str>, hosts: &Path) -> Result<String, NpmError> {
    crate::registry_hosts::base_url(env, hosts, "npm-registry", |h| format!("https://{h}"), DEFAULT_REGISTRY)
        .map_err(|e| NpmError::Spec(crate::errors::chain(&e)))
}

/// A package's packument: its dist-tags and one manifest per version.
#[derive(Debug)]
pub(crate) struct Packument {
    pub(crate) dist_tags: HashMap<String, String>,
    pub(crate) versions: HashMap<String, Value>,
}

/// A registry connection with a packument memo (one fetch per name per lock).
pub(crate) struct Client {
    http: reqwest::blocking::Client,
    pub(crate) base: String,
    memo: HashMap<String, Arc<Packument>>,
}

impl Client {
    pub(crate) fn new(base: String) -> Result<Client, NpmError> {
        if !(base.starts_with("https://") || base.starts_with("http://")) {
            return Err(NpmError::Spec(format!("registry {base:?} is not an http(s) URL (MOAT_NPM_REGISTRY)")));
        }
        // ring is the one rustls provider compiled in; installing it twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(20))
            .timeout(Duration::from_secs(600))
            .user_agent(concat!("moat/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| NpmError::Http { url: base.clone(), msg: e.to_string() })?;
        Ok(Client { http, base, memo: HashMap::new() })
    }

    /// The packument of `name` (`@scope/name` is asked for as `@scope%2fname`).
    pub(crate) fn packument(&mut self, name: &str) -> Result<Arc<Packument>, NpmError> {
        if let Some(p) = self.memo.get(name) {
            return Ok(p.clone());
        }
        let p = Arc::new(self.fetch_packument(name)?);
        self.memo.insert(name.into(), p.clone());
        Ok(p)
    }

    /// Fetches the packuments of `names` not yet memoized, several at once;
    /// failures are left for [`Client::packument`] to meet and report.
    pub(crate) fn prefetch(&mut self, names: &[String]) {
        let mut todo: Vec<&String> = names.iter().filter(|n| !self.memo.contains_key(*n)).collect();
        todo.sort();
        todo.dedup();
        if todo.len() < 2 {
            return;
        }
        let this = &*self;
        let got = super::parallel::par_map(&todo, |n| Ok(this.fetch_packument(n).ok().map(|p| ((*n).clone(), p))));
        for (n, p) in got.into_iter().flatten().flatten() {
            self.memo.insert(n, Arc::new(p));
        }
    }

    fn fetch_packument(&self, name: &str) -> Result<Packument, NpmError> {
        let url = format!("{}/{}", self.base, name.replacen('/', "%2f", 1));
        let bytes = self.get(&url, MAX_PACKUMENT, "application/json")?;
        let bad = |msg: String| NpmError::Package { package: name.into(), msg: format!("packument {url}: {msg}") };
        let doc: Value = serde_json::from_slice(&bytes).map_err(|e| bad(e.to_string()))?;
        drop(bytes);
        let Value::Object(mut doc) = doc else { return Err(bad("not a JSON object".into())) };
        let dist_tags = match doc.remove("dist-tags") {
            Some(Value::Object(m)) => {
                m.into_iter().filter_map(|(k, v)| v.as_str().map(|v| (k, v.to_string()))).collect()
            }
            _ => HashMap::new(),
        };
        let versions = match doc.remove("versions") {
            Some(Value::Object(m)) => m.into_iter().collect(),
            _ => return Err(bad("no `versions` object".into())),
        };
        Ok(Packument { dist_tags, versions })
    }

    /// GETs `url`, refusing an answer larger than `max` before reading it.
    pub(crate) fn get(&self, url: &str, max: u64, accept: &str) -> Result<Vec<u8>, NpmError> {
        let http = |msg: String| NpmError::Http { url: url.into(), msg };
        let resp = self.http.get(url).header("accept", accept).send().map_err(|e| http(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(http(format!("HTTP {}", resp.status())));
        }
        if resp.content_length().is_some_and(|n| n > max) {
            return Err(NpmError::TooLarge { url: url.into(), max });
        }
        let mut out = Vec::new();
        resp.take(max + 1).read_to_end(&mut out).map_err(|e| http(e.to_string()))?;
        if out.len() as u64 > max {
            return Err(NpmError::TooLarge { url: url.into(), max });
        }
        Ok(out)
    }

    /// The URL of a tarball recorded as `tarball` in the lock: a path below
    /// the registry, or (when the registry named another host) a full URL.
    pub(crate) fn tarball_url(&self, tarball: &str) -> String {
        if tarball.starts_with("https://") || tarball.starts_with("http://") {
            tarball.into()
        } else {
            format!("{}/{}", self.base, tarball.trim_start_matches('/'))
        }
    }

    /// What the lock records for a tarball URL: its path below the registry
    /// when it lies there (so a mirror serves it), else the URL itself.
    pub(crate) fn tarball_path(&self, url: &str) -> String {
        match url.strip_prefix(&self.base) {
            Some(rest) if rest.starts_with('/') => rest.trim_start_matches('/').into(),
            _ => url.into(),
        }
    }
}

/// The downloads cache of `cache` (the directory `fetch` uses too).
pub(crate) fn downloads(cache: &Path) -> Downloads {
    Downloads::new(cache.join("downloads"))
}

/// Puts bytes already checked into the downloads cache under their sha256.
pub(crate) fn remember(cache: &Path, package: &str, bytes: &[u8]) -> Result<Digest, NpmError> {
    let d = Digest::of(bytes);
    let pin = Pin { sha256: d.clone(), size: Some(bytes.len() as u64) };
    downloads(cache)
        .file(&pin, |f, off| {
            let rest = bytes.get(off as usize..).unwrap_or_default();
            f.write_all(rest)
                .map_err(|e| NpmError::Package { package: package.into(), msg: format!("download cache: {e}") })
        })
        .map_err(|e| cache_error(package, e, &d))?;
    Ok(d)
}

/// A tarball's bytes by its pin, from the cache or the registry.
pub(crate) fn tarball(
    client: &Client,
    cache: &Path,
    package: &str,
    tarball: &str,
    pin: &Pin,
) -> Result<Vec<u8>, NpmError> {
    let url = client.tarball_url(tarball);
    downloads(cache)
        .bytes(pin, |f, off| -> Result<(), NpmError> {
            let bytes = client.get(&url, MAX_TARBALL, "*/*")?;
            let rest = bytes.get(off as usize..).unwrap_or_default();
            f.write_all(rest).map_err(|e| NpmError::Http { url: url.clone(), msg: e.to_string() })
        })
        .map_err(|e| cache_error(package, e, &pin.sha256))
}

fn cache_error(package: &str, e: Failure<impl Into<NpmError>>, want: &Digest) -> NpmError {
    match e {
        Failure::Fetch(e) => e.into(),
        Failure::Io { path, source } => {
            NpmError::Package { package: package.into(), msg: format!("{}: {source}", path.display()) }
        }
        Failure::Mismatch { actual, .. } => {
            NpmError::Integrity { package: package.into(), expected: want.to_string(), got: actual.to_string() }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn registry_from_env_then_host_variable_then_default() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("registries.toml");
        assert_eq!(base_from(None, &f).unwrap(), DEFAULT_REGISTRY);
        std::fs::write(&f, "[hosts]\nnpm-registry = \"npm.mirror.example\"\npypi = \"x\"\n").unwrap();
        assert_eq!(base_from(None, &f).unwrap(), "https://npm.mirror.example");
        assert_eq!(base_from(Some("http://127.0.0.1:4873/"), &f).unwrap(), "http://127.0.0.1:4873");
        std::fs::write(&f, "[hosts]\nnpm-registry = \"evil/path\"\n").unwrap();
        assert!(base_from(None, &f).unwrap_err().to_string().contains("not a host name"));
        std::fs::write(&f, "[hostz]\n").unwrap();
        assert!(base_from(None, &f).unwrap_err().to_string().contains("registries.toml:1:"));
    }
}
