//! Host variables in network rules: an endpoint may name its host as
//! `{name}` (the presets do for package registries), resolved from
//! `$MOAT_HOME/registries.toml` (`[hosts]`, or the file `MOAT_REGISTRY_HOSTS`
//! names). Lets one preset serve the public registry or an organisation's
//! mirror, and guards against a rule silently opening nothing or the wrong
//! host: an unset variable is an error naming the file and the key to set.
#![forbid(unsafe_code)]
use crate::policy::schema::{check_host, parse_toml, variable, NetPolicy, NetPolicyError};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    #[serde(default)]
    hosts: BTreeMap<String, String>,
}

/// Where the values live.
pub(crate) fn file() -> PathBuf {
    std::env::var_os("MOAT_REGISTRY_HOSTS")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| moat_builder::home::moat_home().join("registries.toml"))
}

/// Reads the values (an absent file means none are set).
pub(crate) fn load() -> Result<BTreeMap<String, String>, NetPolicyError> {
    let path = file();
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
        Err(e) => return Err(NetPolicyError::Invalid(format!("{}: {e}", path.display()))),
    };
    let f: File = parse_toml(&text, &path.display().to_string())?;
    for (k, v) in &f.hosts {
        check_host(v).map_err(|e| NetPolicyError::Invalid(format!("{}: hosts.{k}: {e}", path.display())))?;
    }
    Ok(f.hosts)
}

/// Replaces every `{name}` host in `policies` with its value.
pub(crate) fn expand(
    mut policies: Vec<NetPolicy>,
    values: &BTreeMap<String, String>,
) -> Result<Vec<NetPolicy>, NetPolicyError> {
    for p in &mut policies {
        for e in &mut p.endpoints {
            let Some(name) = variable(&e.host) else { continue };
            let Some(v) = values.get(name) else {
                return Err(NetPolicyError::Invalid(format!(
                    "policy {}: host {{{name}}} is not set: add `{name} = \"HOST\"` under [hosts] in {} \
                     (the public service's host or your mirror's)",
                    p.name,
                    file().display()
                )));
            };
            e.host = v.clone();
        }
    }
    Ok(policies)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_expand_or_name_the_missing_key() {
        assert_eq!(variable("{npm-registry}"), Some("npm-registry"));
        assert_eq!(variable("{Bad}"), None);
        assert_eq!(variable("a.b"), None);
        let p = crate::policy::presets::preset("npm").unwrap().policies;
        let err = expand(p.clone(), &BTreeMap::new()).unwrap_err().to_string();
        assert!(err.contains("npm-registry = \"HOST\""), "{err}");
        let values = BTreeMap::from([("npm-registry".to_string(), "registry.example.test".to_string())]);
        let out = expand(p, &values).unwrap();
        assert!(out.iter().flat_map(|p| &p.endpoints).all(|e| e.host == "registry.example.test"));
    }
}
