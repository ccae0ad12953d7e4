//! The simple index client (PEP 503 HTML and PEP 691 JSON): a project's
//! files with their sha256, Requires-Python, yank state and PEP 658
//! metadata, then metadata files and wheels, each read with a size bound
//! before anything is allocated, and wheels kept in the shared downloads
//! cache under their sha256. Guards against a hostile or broken index:
//! oversized answers are refused unread, files without a sha256 are never
//! locked, and a wheel enters the cache only after it matches its pin.
#![forbid(unsafe_code)]
use super::PypiError;
use crate::digest::Digest;
use crate::downloads::{Downloads, Failure, Pin};
use reqwest::Url;
use serde_json::Value;
use std::collections::HashMap;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

/// The index when neither `MOAT_PYPI_INDEX` nor a `pypi-index` host is set.
pub(crate) const DEFAULT_INDEX: &str = "https://pypi.org/simple";
/// Largest project page read (a much-released project's page is a few MiB).
pub(crate) const MAX_PAGE: u64 = 64 << 20;

/// The index base URL (no trailing `/`): `MOAT_PYPI_INDEX`, else
/// `https://HOST/simple` for the `pypi-index` host variable the `pypi`
/// preset uses (`[hosts]` in `$MOAT_HOME/registries.toml`, or the file
/// `MOAT_REGISTRY_HOSTS` names), else PyPI.
pub(crate) fn index_base() -> Result<String, PypiError> {
    base_from(std::env::var("MOAT_PYPI_INDEX").ok().as_deref(), &crate::registry_hosts::file())
}

fn base_from(env: Option<&str>, hosts: &Path) -> Result<String, PypiError> {
    crate::registry_hosts::base_url(env, hosts, "pypi-index", |h| format!("https://{h}/simple"), DEFAULT_INDEX)
        .map_err(|e| PypiError::Spec(crate::errors::chain(&e)))
}

/// One file of a project page.
#[derive(Debug, Clone)]
pub(crate) struct IndexFile {
    pub(crate) filename: String,
    /// Absolute, without the `#sha256=` fragment.
    pub(crate) url: String,
    pub(crate) sha256: Option<String>,
    pub(crate) requires_python: Option<String>,
    pub(crate) yanked: bool,
    /// PEP 658/714: the index serves `URL.metadata` (with its sha256, if given).
    pub(crate) metadata: Option<Option<String>>,
}

/// An index connection.
pub(crate) struct Client {
    http: reqwest::blocking::Client,
    pub(crate) base: String,
}

impl Client {
    pub(crate) fn new(base: String) -> Result<Client, PypiError> {
        if Url::parse(&base).is_err() || !(base.starts_with("https://") || base.starts_with("http://")) {
            return Err(PypiError::Spec(format!("index {base:?} is not an http(s) URL (MOAT_PYPI_INDEX)")));
        }
        // ring is the one rustls provider compiled in; installing it twice is harmless.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(20))
            .timeout(Duration::from_secs(600))
            .user_agent(concat!("moat/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| PypiError::Http { url: base.clone(), msg: e.to_string() })?;
        Ok(Client { http, base })
    }

    /// GETs `url`, refusing an answer larger than `max` before reading it;
    /// returns the body and its content type.
    pub(crate) fn get(&self, url: &str, max: u64, accept: &str) -> Result<(Vec<u8>, String), PypiError> {
        let http = |msg: String| PypiError::Http { url: url.into(), msg };
        let resp = self.http.get(url).header("accept", accept).send().map_err(|e| http(e.to_string()))?;
        if !resp.status().is_success() {
            return Err(http(format!("HTTP {}", resp.status())));
        }
        if resp.content_length().is_some_and(|n| n > max) {
            return Err(PypiError::TooLarge { url: url.into(), max });
        }
        let ctype =
            resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or_default().to_ascii_lowercase();
        let mut out = Vec::new();
        resp.take(max + 1).read_to_end(&mut out).map_err(|e| http(e.to_string()))?;
        if out.len() as u64 > max {
            return Err(PypiError::TooLarge { url: url.into(), max });
        }
        Ok((out, ctype))
    }

    /// The files of project `name` (PEP 503-normalized), JSON preferred.
    pub(crate) fn project(&self, name: &str) -> Result<Vec<IndexFile>, PypiError> {
        let url = format!("{}/{name}/", self.base);
        let accept = "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01";
        let (body, ctype) = self.get(&url, MAX_PAGE, accept)?;
        let bad = |msg: String| PypiError::Package { package: name.into(), msg: format!("index page {url}: {msg}") };
        let page = Url::parse(&url).map_err(|e| bad(e.to_string()))?;
        if ctype.contains("json") {
            from_json(&page, &body).map_err(bad)
        } else {
            let text = std::str::from_utf8(&body).map_err(|_| bad("not UTF-8".into()))?;
            from_html(&page, text).map_err(bad)
        }
    }

    /// What the lock records for a file URL: its path when it lies on the
    /// index's host (so a mirror with the same paths serves it), else the URL.
    pub(crate) fn url_path(&self, url: &str) -> String {
        match (Url::parse(&self.base), Url::parse(url)) {
            (Ok(b), Ok(u)) if b.origin() == u.origin() => u.path().to_string(),
            _ => url.into(),
        }
    }

    /// The URL of a file recorded as `path` in the lock.
    pub(crate) fn file_url(&self, path: &str) -> Result<String, PypiError> {
        if path.starts_with("https://") || path.starts_with("http://") {
            return Ok(path.into());
        }
        let bad = |e: String| PypiError::Spec(format!("lock: file {path:?}: {e}"));
        let base = Url::parse(&self.base).map_err(|e| bad(e.to_string()))?;
        base.join(path).map(String::from).map_err(|e| bad(e.to_string()))
    }
}

fn split_fragment(page: &Url, href: &str) -> Result<(String, Option<String>), String> {
    let mut u = page.join(href).map_err(|e| format!("file URL {href:?}: {e}"))?;
    let sha = u.fragment().and_then(|f| f.strip_prefix("sha256=")).map(|s| s.to_ascii_lowercase());
    u.set_fragment(None);
    if !(u.scheme() == "https" || u.scheme() == "http") {
        return Err(format!("file URL {href:?} is not http(s)"));
    }
    Ok((u.into(), sha))
}

fn hex64(s: Option<String>) -> Option<String> {
    s.filter(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A PEP 691 JSON page.
fn from_json(page: &Url, body: &[u8]) -> Result<Vec<IndexFile>, String> {
    let doc: Value = serde_json::from_slice(body).map_err(|e| e.to_string())?;
    let files = doc.get("files").and_then(Value::as_array).ok_or("no `files` array")?;
    let mut out = Vec::with_capacity(files.len());
    for f in files {
        let s = |k: &str| f.get(k).and_then(Value::as_str).map(str::to_string);
        let (Some(filename), Some(href)) = (s("filename"), s("url")) else {
            return Err("a file without filename or url".into());
        };
        let (url, frag) = split_fragment(page, &href)?;
        let sha256 = hex64(f.pointer("/hashes/sha256").and_then(Value::as_str).map(str::to_ascii_lowercase).or(frag));
        let meta = f.get("core-metadata").or_else(|| f.get("dist-info-metadata"));
        let metadata = match meta {
            None | Some(Value::Bool(false)) | Some(Value::Null) => None,
            Some(Value::Object(h)) => Some(hex64(h.get("sha256").and_then(Value::as_str).map(str::to_ascii_lowercase))),
            Some(_) => Some(None),
        };
        let yanked = match f.get("yanked") {
            None | Some(Value::Bool(false)) | Some(Value::Null) => false,
            Some(_) => true,
        };
        out.push(IndexFile { filename, url, sha256, requires_python: s("requires-python"), yanked, metadata });
    }
    Ok(out)
}

/// HTML entities a PEP 503 page uses in attribute values and text.
fn unescape(s: &str) -> String {
    s.replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&#x27;", "'")
        .replace("&amp;", "&")
}

/// The attributes of one start tag's inside (`a href="..." data-x>`).
fn attributes(tag: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let b = tag.as_bytes();
    let mut i = 0;
    while i < b.len() {
        while i < b.len() && (b[i].is_ascii_whitespace() || b[i] == b'/') {
            i += 1;
        }
        let start = i;
        while i < b.len() && !b[i].is_ascii_whitespace() && b[i] != b'=' && b[i] != b'/' {
            i += 1;
        }
        let key = tag[start..i].to_ascii_lowercase();
        let mut value = String::new();
        if i < b.len() && b[i] == b'=' {
            i += 1;
            if i < b.len() && (b[i] == b'"' || b[i] == b'\'') {
                let q = b[i];
                let vs = i + 1;
                i = vs;
                while i < b.len() && b[i] != q {
                    i += 1;
                }
                value = unescape(&tag[vs..i.min(b.len())]);
                i += 1;
            } else {
                let vs = i;
                while i < b.len() && !b[i].is_ascii_whitespace() {
                    i += 1;
                }
                value = unescape(&tag[vs..i]);
            }
        }
        if !key.is_empty() {
            out.insert(key, value);
        }
    }
    out
}

/// A PEP 503 HTML page: every `<a href=...>filename</a>`.
fn from_html(page: &Url, text: &str) -> Result<Vec<IndexFile>, String> {
    let mut out = Vec::new();
    let lower = text.to_ascii_lowercase();
    let mut at = 0;
    while let Some(i) = lower[at..].find("<a") {
        let open = at + i;
        let after = open + 2;
        if !lower[after..].starts_with(|c: char| c.is_ascii_whitespace()) {
            at = after;
            continue;
        }
        let close = lower[after..].find('>').map(|j| after + j).ok_or("an unclosed <a> tag")?;
        let end = lower[close..].find("</a").map(|j| close + j).ok_or("an <a> without </a>")?;
        let attrs = attributes(&text[after..close]);
        let filename = unescape(text[close + 1..end].trim());
        at = end;
        let Some(href) = attrs.get("href") else { continue };
        let (url, sha) = split_fragment(page, href)?;
        let meta = attrs.get("data-core-metadata").or_else(|| attrs.get("data-dist-info-metadata"));
        let metadata = match meta.map(String::as_str) {
            None | Some("false") => None,
            Some(v) => Some(hex64(v.strip_prefix("sha256=").map(str::to_ascii_lowercase))),
        };
        out.push(IndexFile {
            filename,
            url,
            sha256: hex64(sha),
            requires_python: attrs.get("data-requires-python").cloned(),
            yanked: attrs.contains_key("data-yanked"),
            metadata,
        });
    }
    Ok(out)
}

/// The downloads cache of `cache` (the directory `fetch` uses too).
pub(crate) fn downloads(cache: &Path) -> Downloads {
    Downloads::new(cache.join("downloads"))
}

/// A wheel's bytes by its pin, from the cache or the index.
pub(crate) fn wheel(client: &Client, cache: &Path, package: &str, file: &str, pin: &Pin) -> Result<Vec<u8>, PypiError> {
    let url = client.file_url(file)?;
    downloads(cache)
        .bytes(pin, |f, off| -> Result<(), PypiError> {
            let (bytes, _) = client.get(&url, super::wheel::MAX_WHEEL, "*/*")?;
            let rest = bytes.get(off as usize..).unwrap_or_default();
            f.write_all(rest).map_err(|e| PypiError::Http { url: url.clone(), msg: e.to_string() })
        })
        .map_err(|e| match e {
            Failure::Fetch(e) => e,
            Failure::Io { path, source } => {
                PypiError::Package { package: package.into(), msg: format!("{}: {source}", path.display()) }
            }
            Failure::Mismatch { actual, .. } => PypiError::Integrity {
                package: package.into(),
                file: file.rsplit('/').next().unwrap_or(file).into(),
                expected: pin.sha256.to_string(),
                got: actual.to_string(),
            },
        })
}

/// The sha256 of `bytes` as lowercase hex.
pub(crate) fn sha256_hex(bytes: &[u8]) -> String {
    Digest::of(bytes).hex().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn index_from_env_then_host_variable_then_default() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("registries.toml");
        assert_eq!(base_from(None, &f).unwrap(), DEFAULT_INDEX);
        std::fs::write(&f, "[hosts]\npypi-index = \"pypi.mirror.example\"\n").unwrap();
        assert_eq!(base_from(None, &f).unwrap(), "https://pypi.mirror.example/simple");
        assert_eq!(base_from(Some("http://127.0.0.1:1/simple/"), &f).unwrap(), "http://127.0.0.1:1/simple");
        std::fs::write(&f, "[hosts]\npypi-index = \"evil/path\"\n").unwrap();
        assert!(base_from(None, &f).unwrap_err().to_string().contains("not a host name"));
    }
    #[test]
    fn pages_in_both_forms() {
        let page = Url::parse("http://h/simple/fx/").unwrap();
        let sha = "ab".repeat(32);
        let html = format!(
            "<html><body><a href=\"../../f/fx-1.0-py3-none-any.whl#sha256={sha}\" data-requires-python=\"&gt;=3.8\" \
             data-core-metadata=\"sha256={sha}\">fx-1.0-py3-none-any.whl</a><br/>\
             <a href='fx-0.9.tar.gz' data-yanked>fx-0.9.tar.gz</a></body></html>"
        );
        let f = from_html(&page, &html).unwrap();
        assert_eq!(f.len(), 2);
        assert_eq!(f[0].url, "http://h/f/fx-1.0-py3-none-any.whl");
        assert_eq!(f[0].sha256.as_deref(), Some(sha.as_str()));
        assert_eq!(f[0].requires_python.as_deref(), Some(">=3.8"));
        assert_eq!(f[0].metadata, Some(Some(sha.clone())));
        assert!(f[1].yanked && f[1].sha256.is_none() && f[1].metadata.is_none());
        let json = serde_json::json!({"meta": {"api-version": "1.1"}, "name": "fx", "files": [
            {"filename": "fx-1.0-py3-none-any.whl", "url": "/f/fx-1.0-py3-none-any.whl", "hashes": {"sha256": sha},
             "core-metadata": true, "yanked": "broken"}]});
        let f = from_json(&page, json.to_string().as_bytes()).unwrap();
        assert_eq!(
            (f[0].url.as_str(), f[0].metadata.clone(), f[0].yanked),
            ("http://h/f/fx-1.0-py3-none-any.whl", Some(None), true)
        );
    }
}
