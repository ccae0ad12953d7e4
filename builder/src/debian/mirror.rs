//! Where Debian files come from: the mirror for each suite (MOAT_DEBIAN_MIRROR,
//! else the host's apt configuration; no host is written into moat), the
//! one HTTP/file fetch path, and locked packages through the downloads
//! cache (`cache_dir()/debs`). Nothing fetched here is trusted: index files
//! are verified by callers against the signature, packages by the cache
//! against the lock's sha256 and size before any byte is used.
#![forbid(unsafe_code)]
use super::{DebianError, LockedPackage};
use crate::digest::Digest;
use crate::downloads::{Downloads, Failure, Pin};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// One `deb` source from the apt configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AptSource {
    pub uri: String,
    pub suites: Vec<String>,
    pub components: Vec<String>,
}

/// Parses classic one-line `sources.list` text (`deb [opts] URI SUITE COMP...`).
pub(crate) fn parse_sources_list(text: &str) -> Vec<AptSource> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut rest = match line.strip_prefix("deb ").or_else(|| line.strip_prefix("deb\t")) {
            Some(r) => r.trim(),
            None => continue,
        };
        if rest.starts_with('[') {
            match rest.find(']') {
                Some(i) => rest = rest[i + 1..].trim(),
                None => continue,
            }
        }
        let words: Vec<&str> = rest.split_whitespace().collect();
        if words.len() >= 2 {
            out.push(AptSource {
                uri: words[0].into(),
                suites: vec![words[1].into()],
                components: words[2..].iter().map(|s| s.to_string()).collect(),
            });
        }
    }
    out
}

/// Parses deb822 `.sources` text; `Enabled: no` and non-`deb` types are skipped.
pub(crate) fn parse_deb822_sources(text: &str) -> Vec<AptSource> {
    let Ok(paras) = super::control::paragraphs(text) else { return Vec::new() };
    let mut out = Vec::new();
    for p in paras {
        let types = p.get("Types").unwrap_or("");
        if !types.split_whitespace().any(|t| t == "deb")
            || p.get("Enabled").is_some_and(|e| e.eq_ignore_ascii_case("no"))
        {
            continue;
        }
        let words = |f: &str| p.get(f).unwrap_or("").split_whitespace().map(str::to_string).collect::<Vec<_>>();
        for uri in words("URIs") {
            out.push(AptSource { uri, suites: words("Suites"), components: words("Components") });
        }
    }
    out
}

/// Every `deb` source of the host's apt configuration under `etc_apt`, in
/// apt's reading order (sources.list, then sources.list.d sorted by name).
pub(crate) fn host_sources(etc_apt: &Path) -> Vec<AptSource> {
    let mut out = Vec::new();
    if let Ok(t) = std::fs::read_to_string(etc_apt.join("sources.list")) {
        out.extend(parse_sources_list(&t));
    }
    let mut names: Vec<_> =
        std::fs::read_dir(etc_apt.join("sources.list.d")).into_iter().flatten().flatten().map(|e| e.path()).collect();
    names.sort();
    for p in names {
        let Ok(t) = std::fs::read_to_string(&p) else { continue };
        match p.extension().and_then(|e| e.to_str()) {
            Some("list") => out.extend(parse_sources_list(&t)),
            Some("sources") => out.extend(parse_deb822_sources(&t)),
            _ => {}
        }
    }
    out
}

/// The mirror base URL for `suite`: `MOAT_DEBIAN_MIRROR` if set (for a
/// `-security` suite only when the apt configuration has no source for it),
/// else the apt source listing that suite, else (for the main suite) the
/// first Debian source. `None` when nothing fits.
pub(crate) fn mirror_for(suite: &str, sources: &[AptSource], env: Option<&str>) -> Option<String> {
    let listed = sources.iter().find(|s| s.suites.iter().any(|x| x == suite)).map(|s| s.uri.clone());
    let base = match env.filter(|e| !e.is_empty()) {
        Some(e) if suite.ends_with("-security") => listed.or_else(|| Some(e.to_string())),
        Some(e) => Some(e.to_string()),
        None => listed.or_else(|| {
            if suite.contains('-') {
                None
            } else {
                sources.iter().find(|s| s.uri.contains("debian")).map(|s| s.uri.clone())
            }
        }),
    };
    base.map(|b| b.trim_end_matches('/').to_string())
}

/// The mirror for `suite` from the real environment and /etc/apt.
pub(crate) fn mirror_from_host(suite: &str) -> Result<String, DebianError> {
    let env = std::env::var("MOAT_DEBIAN_MIRROR").ok();
    let sources = host_sources(Path::new("/etc/apt"));
    mirror_for(suite, &sources, env.as_deref()).ok_or_else(|| {
        DebianError::Mirror(format!(
            "no Debian mirror for suite {suite:?}: set MOAT_DEBIAN_MIRROR (for example MOAT_DEBIAN_MIRROR=http://YOUR-MIRROR/debian) or add a `deb` source for it to /etc/apt"
        ))
    })
}

/// A fetch client (plain HTTP, HTTPS or file://).
pub(crate) struct Fetcher {
    client: reqwest::blocking::Client,
}

impl Fetcher {
    pub(crate) fn new() -> Result<Fetcher, DebianError> {
        // ring is the one rustls provider compiled in (shared with the registry client).
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::blocking::Client::builder()
            .connect_timeout(Duration::from_secs(20))
            .timeout(Duration::from_secs(600))
            .user_agent(concat!("moat/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| DebianError::Http { url: String::new(), msg: e.to_string() })?;
        Ok(Fetcher { client })
    }

    /// Fetches a whole (small) file. `Ok(None)` on 404.
    pub(crate) fn get(&self, url: &str) -> Result<Option<Vec<u8>>, DebianError> {
        if let Some(p) = url.strip_prefix("file://") {
            return match std::fs::read(p) {
                Ok(b) => Ok(Some(b)),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(DebianError::Http { url: url.into(), msg: e.to_string() }),
            };
        }
        let err = |e: reqwest::Error| DebianError::Http { url: url.into(), msg: e.to_string() };
        let resp = self.client.get(url).send().map_err(err)?;
        if resp.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !resp.status().is_success() {
            return Err(DebianError::Http { url: url.into(), msg: format!("HTTP status {}", resp.status()) });
        }
        Ok(Some(resp.bytes().map_err(err)?.to_vec()))
    }

    /// Appends `url`'s bytes from `offset` on to `out` (resume with a Range
    /// request). Returns the number of bytes now in `out` from offset 0.
    pub(crate) fn get_into(&self, url: &str, offset: u64, out: &mut std::fs::File) -> Result<u64, DebianError> {
        use std::io::{Seek, SeekFrom, Write};
        let ioerr = |e: std::io::Error| DebianError::Http { url: url.into(), msg: e.to_string() };
        if let Some(p) = url.strip_prefix("file://") {
            let mut src = std::fs::File::open(p).map_err(ioerr)?;
            src.seek(SeekFrom::Start(offset)).map_err(ioerr)?;
            out.seek(SeekFrom::Start(offset)).map_err(ioerr)?;
            let n = std::io::copy(&mut src, out).map_err(ioerr)?;
            return Ok(offset + n);
        }
        let err = |e: reqwest::Error| DebianError::Http { url: url.into(), msg: e.to_string() };
        let mut req = self.client.get(url);
        if offset > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={offset}-"));
        }
        let mut resp = req.send().map_err(err)?;
        let start = match resp.status() {
            reqwest::StatusCode::PARTIAL_CONTENT => offset,
            s if s.is_success() => 0,
            s => return Err(DebianError::Http { url: url.into(), msg: format!("HTTP status {s}") }),
        };
        out.set_len(start).map_err(ioerr)?;
        out.seek(SeekFrom::Start(start)).map_err(ioerr)?;
        let n = resp.copy_to(out).map_err(err)?;
        out.flush().map_err(ioerr)?;
        Ok(start + n)
    }
}

/// The Debian packages' directory of the downloads cache.
pub(crate) fn debs_dir() -> PathBuf {
    crate::home::cache_dir().join("debs")
}

/// Returns the verified bytes of a locked package, downloading it into the
/// cache if needed (from the mirror of the package's suite; a partial
/// download resumes).
pub(crate) fn load(p: &LockedPackage, fetcher: &mut Option<Fetcher>) -> Result<Vec<u8>, DebianError> {
    let sha256 = Digest::parse_hex(&p.sha256)
        .map_err(|_| DebianError::Spec(format!("lock entry {}: bad sha256 {:?}", p.name, p.sha256)))?;
    let pin = Pin { sha256, size: Some(p.size) };
    let fetch = |file: &mut std::fs::File, offset: u64| {
        let url = format!("{}/{}", mirror_from_host(&p.suite)?, p.path);
        let f = match fetcher {
            Some(f) => f,
            None => fetcher.insert(Fetcher::new()?),
        };
        f.get_into(&url, offset, file).map(drop)
    };
    Downloads::new(debs_dir()).bytes(&pin, fetch).map_err(|e| match e {
        Failure::Fetch(e) => e,
        Failure::Io { path, source } => DebianError::Io { path: path.display().to_string(), msg: source.to_string() },
        Failure::Mismatch { actual, size } => DebianError::HashMismatch {
            what: format!("{} {} ({})", p.name, p.version, p.path),
            expected: format!("sha256:{} ({} bytes)", p.sha256, p.size),
            got: format!("{actual} ({size} bytes)"),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn apt_config_parses() {
        let l = parse_sources_list("# x\ndeb [arch=amd64 signed-by=/k] http://m/debian bookworm main contrib\ndeb-src http://m/debian bookworm main\n");
        assert_eq!(
            l,
            vec![AptSource {
                uri: "http://m/debian".into(),
                suites: vec!["bookworm".into()],
                components: vec!["main".into(), "contrib".into()]
            }]
        );
        let s = parse_deb822_sources("Types: deb\nURIs: http://a/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: http://a/debian-security\nSuites: bookworm-security\nComponents: main\n\nTypes: deb\nEnabled: no\nURIs: http://off\nSuites: x\n");
        assert_eq!(s.len(), 2);
        assert_eq!(mirror_for("bookworm", &s, None).as_deref(), Some("http://a/debian"));
        assert_eq!(mirror_for("bookworm-security", &s, None).as_deref(), Some("http://a/debian-security"));
        assert_eq!(
            mirror_for("bookworm-security", &s, Some("http://env/")).as_deref(),
            Some("http://a/debian-security")
        );
        assert_eq!(mirror_for("bookworm", &s, Some("http://env/")).as_deref(), Some("http://env"));
        assert_eq!(mirror_for("trixie-updates", &[], None), None);
        assert_eq!(mirror_for("trixie", &[], None), None);
    }
}
