//! Registry credentials: moat's own file (`MOAT_HOME/credentials/registries.json`,
//! directory 0700, file 0600, atomic writes) and, read-only, the `auths` of
//! `~/.docker/config.json` (or `$DOCKER_CONFIG/config.json`). Addresses
//! credential disclosure: nothing here prints or logs a password.
#![forbid(unsafe_code)]
use super::{RegistryError, Result};
use crate::home::moat_home;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// A user name and password for one registry.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials {{ username: {:?}, password: <redacted> }}", self.username)
    }
}

#[derive(Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    registries: BTreeMap<String, Credentials>,
}

/// `MOAT_HOME/credentials/registries.json`.
pub fn credentials_path() -> PathBuf {
    moat_home().join("credentials").join("registries.json")
}

/// The key a registry is stored under: host[:port], no scheme or path; Docker
/// Hub's aliases folded into `docker.io`.
pub fn normalize(registry: &str) -> String {
    let r = registry.trim();
    let r = r.strip_prefix("https://").or_else(|| r.strip_prefix("http://")).unwrap_or(r);
    let r = r.split('/').next().unwrap_or(r).to_ascii_lowercase();
    match r.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => "docker.io".into(),
        _ => r,
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> RegistryError + '_ {
    move |source| RegistryError::Io { path: path.to_path_buf(), source }
}

fn read_file(path: &Path) -> Result<File> {
    match fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map_err(|e| RegistryError::Credentials { path: path.to_path_buf(), detail: e.to_string() }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(File::default()),
        Err(e) => Err(RegistryError::Io { path: path.to_path_buf(), source: e }),
    }
}

fn write_file(path: &Path, file: &File) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    fs::DirBuilder::new().recursive(true).mode(0o700).create(dir).map_err(io(dir))?;
    // An existing directory may have been created looser; tighten it.
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
    let bytes = serde_json::to_vec_pretty(file)
        .map_err(|e| RegistryError::Credentials { path: path.to_path_buf(), detail: e.to_string() })?;
    // 0600 from the first byte on (the store's files are world-readable).
    crate::fsio::write(path, &bytes, 0o600).map_err(io(path))
}

/// Stores credentials for `registry` (replacing older ones).
pub fn store(registry: &str, creds: Credentials) -> Result<PathBuf> {
    let path = credentials_path();
    let mut file = read_file(&path)?;
    file.registries.insert(normalize(registry), creds);
    write_file(&path, &file)?;
    Ok(path)
}

/// Forgets moat's credentials for `registry`; returns whether there were any.
pub fn remove(registry: &str) -> Result<bool> {
    let path = credentials_path();
    let mut file = read_file(&path)?;
    let found = file.registries.remove(&normalize(registry)).is_some();
    if found {
        write_file(&path, &file)?;
    }
    Ok(found)
}

/// Credentials for `registry`: moat's file first, then Docker's config.
pub fn lookup(registry: &str) -> Result<Option<Credentials>> {
    let key = normalize(registry);
    if let Some(c) = read_file(&credentials_path())?.registries.remove(&key) {
        return Ok(Some(c));
    }
    Ok(docker_lookup(&key))
}

fn docker_config_path() -> Option<PathBuf> {
    if let Some(d) = std::env::var_os("DOCKER_CONFIG").filter(|v| !v.is_empty()) {
        return Some(PathBuf::from(d).join("config.json"));
    }
    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker").join("config.json"))
}

#[derive(Deserialize)]
struct DockerConfig {
    #[serde(default)]
    auths: BTreeMap<String, DockerAuth>,
    #[serde(default, rename = "credHelpers")]
    cred_helpers: BTreeMap<String, String>,
    #[serde(default, rename = "credsStore")]
    creds_store: Option<String>,
}
#[derive(Deserialize)]
struct DockerAuth {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

/// Reads `auths` from Docker's config. A malformed file is skipped with a
/// warning (it belongs to another tool), never an error.
fn docker_lookup(key: &str) -> Option<Credentials> {
    let path = docker_config_path()?;
    let bytes = fs::read(&path).ok()?;
    let cfg: DockerConfig = match serde_json::from_slice(&bytes) {
        Ok(c) => c,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring unreadable docker config");
            return None;
        }
    };
    // Docker's order: a per-registry helper, then inline auths, then the default store.
    if let Some(helper) = cfg.cred_helpers.iter().find(|(k, _)| normalize(k) == key).map(|(_, h)| h.clone()) {
        return run_helper(&helper, key);
    }
    let Some(entry) = cfg.auths.into_iter().find(|(k, _)| normalize(k) == key).map(|(_, v)| v) else {
        return cfg.creds_store.and_then(|h| run_helper(&h, key));
    };
    if let (Some(u), Some(p)) = (entry.username, entry.password) {
        return Some(Credentials { username: u, password: p });
    }
    let raw = base64::engine::general_purpose::STANDARD.decode(entry.auth?.trim()).ok()?;
    let text = String::from_utf8(raw).ok()?;
    let (u, p) = text.split_once(':')?;
    Some(Credentials { username: u.into(), password: p.into() })
}

/// Asks `docker-credential-HELPER get` (the Docker credential-helper
/// protocol: server on stdin, JSON on stdout) for the registry's credentials.
fn run_helper(helper: &str, registry: &str) -> Option<Credentials> {
    use std::process::{Command, Stdio};
    if helper.is_empty() || !helper.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.') {
        tracing::warn!(helper, "ignoring credential helper with an unusual name");
        return None;
    }
    let mut child = Command::new(format!("docker-credential-{helper}"))
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| tracing::warn!(helper, error = %e, "credential helper could not run"))
        .ok()?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(registry.as_bytes());
    }
    let out = child.wait_with_output().ok()?;
    if !out.status.success() {
        return None; // "credentials not found" is an ordinary answer
    }
    #[derive(Deserialize)]
    struct Answer {
        #[serde(rename = "Username")]
        username: String,
        #[serde(rename = "Secret")]
        secret: String,
    }
    let a: Answer = serde_json::from_slice(&out.stdout).ok()?;
    if a.username == "<token>" {
        tracing::warn!(helper, registry, "credential helper returned an identity token, which moat does not use");
        return None;
    }
    Some(Credentials { username: a.username, password: a.secret })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn normalizes_registry_keys() {
        assert_eq!(normalize("https://index.docker.io/v1/"), "docker.io");
        assert_eq!(normalize("127.0.0.1:5000"), "127.0.0.1:5000");
        assert_eq!(normalize("http://Reg.Example:443/x"), "reg.example:443");
    }
    #[test]
    fn debug_redacts_password() {
        let c = Credentials { username: "u".into(), password: "hunter2".into() };
        assert!(!format!("{c:?}").contains("hunter2"));
    }
}
