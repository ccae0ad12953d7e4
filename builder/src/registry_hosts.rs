//! The host variables of `$MOAT_HOME/registries.toml` (`[hosts]`, or the
//! file `MOAT_REGISTRY_HOSTS` names) as the builder reads them: where
//! `[npm]` and `[pypi]` fetch from when no URL variable says otherwise, the
//! same names the `npm` and `pypi` policy presets use. Guards against a
//! hosts file that smuggles a URL, a path or a port trick into the
//! registry address: a value must be a bare host name (letters, digits,
//! `-.:[]`), the file is bounded and its unknown keys refused, and a TOML
//! error names file:line:column.
#![forbid(unsafe_code)]
use crate::textfile::{self, TextError};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum HostsError {
    #[error(transparent)]
    Read(TextError),
    #[error("{0}")]
    At(textfile::At),
    #[error("{file}: hosts.{name} {value:?} is not a host name")]
    NotAHost { file: String, name: String, value: String },
}

/// The hosts file: `MOAT_REGISTRY_HOSTS`, else `$MOAT_HOME/registries.toml`.
pub fn file() -> PathBuf {
    std::env::var_os("MOAT_REGISTRY_HOSTS")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| crate::home::moat_home().join("registries.toml"))
}

/// A registry's base URL: `env` (its URL variable, trailing `/` dropped)
/// if set, else `to_url` of the host variable `name`, else `default`.
pub fn base_url(
    env: Option<&str>,
    hosts: &Path,
    name: &str,
    to_url: impl Fn(&str) -> String,
    default: &str,
) -> Result<String, HostsError> {
    if let Some(e) = env.map(str::trim).filter(|e| !e.is_empty()) {
        return Ok(e.trim_end_matches('/').to_string());
    }
    Ok(lookup(hosts, name)?.map(|h| to_url(&h)).unwrap_or_else(|| default.to_string()))
}

/// The host `name` is set to in `hosts` (None: no file, or not set).
pub fn lookup(hosts: &Path, name: &str) -> Result<Option<String>, HostsError> {
    #[derive(serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Hosts {
        #[serde(default)]
        hosts: HashMap<String, String>,
    }
    let text = match textfile::read(hosts, textfile::MAX_TEXT) {
        Ok(t) => t,
        Err(TextError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(HostsError::Read(e)),
    };
    let f: Hosts = textfile::parse_toml(&text, &hosts.display().to_string()).map_err(HostsError::At)?;
    match f.hosts.get(name) {
        None => Ok(None),
        Some(h) if !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric() || b"-.:[]".contains(&b)) => {
            Ok(Some(h.clone()))
        }
        Some(h) => Err(HostsError::NotAHost { file: hosts.display().to_string(), name: name.into(), value: h.clone() }),
    }
}
