//! The presets and profiles shipped with moat (`policies/presets/*.toml`,
//! `policies/profiles/*.toml`), embedded in the binary and validated like
//! any rule. Guards against a preset that opens more than its file says: each
//! one is parsed with unknown keys rejected and every rule validated.
#![forbid(unsafe_code)]
use crate::policy::schema::{invalid, parse_toml, NetPolicy, NetPolicyError};
use serde::{Deserialize, Serialize};

/// A preset file: `policies/presets/NAME.toml`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    pub version: u32,
    pub name: String,
    pub description: String,
    /// What an agent could do with this access: the reviewer's first question.
    pub risk: String,
    #[serde(rename = "policy")]
    pub policies: Vec<NetPolicy>,
}

/// A profile file: `policies/profiles/NAME.toml`, a named set of presets.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Profile {
    pub version: u32,
    pub name: String,
    pub description: String,
    pub presets: Vec<String>,
}

macro_rules! embedded {
    ($dir:literal: $($name:literal),* $(,)?) => {
        &[$(($name, include_str!(concat!("../../../policies/", $dir, "/", $name, ".toml")))),*]
    };
}

/// Every preset shipped with moat, by name.
pub const PRESETS: &[(&str, &str)] = embedded!("presets":
    "brave", "brew", "claude-code", "discord", "github", "huggingface", "jira", "local-inference",
    "npm", "outlook", "pypi", "slack", "telegram",
);

/// Every profile shipped with moat, by name.
pub const PROFILES: &[(&str, &str)] = embedded!("profiles": "locked-down", "development", "integration-testing");

/// Loads an embedded preset by name.
pub fn preset(name: &str) -> Result<Preset, NetPolicyError> {
    let (_, text) = PRESETS.iter().find(|(n, _)| *n == name).ok_or_else(|| {
        let names: Vec<&str> = PRESETS.iter().map(|(n, _)| *n).collect();
        invalid(format!("unknown preset {name:?} (known: {})", names.join(", ")))
    })?;
    let p: Preset = parse_toml(text, &format!("policies/presets/{name}.toml"))?;
    for pol in &p.policies {
        pol.validate().map_err(|e| invalid(format!("preset {name}: {e}")))?;
    }
    Ok(p)
}

/// Loads an embedded profile by name.
pub fn profile(name: &str) -> Result<Profile, NetPolicyError> {
    let (_, text) = PROFILES.iter().find(|(n, _)| *n == name).ok_or_else(|| {
        let names: Vec<&str> = PROFILES.iter().map(|(n, _)| *n).collect();
        invalid(format!("unknown profile {name:?} (known: {})", names.join(", ")))
    })?;
    parse_toml(text, &format!("policies/profiles/{name}.toml"))
}
