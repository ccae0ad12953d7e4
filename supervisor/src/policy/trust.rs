//! The policy's `[trust]` section: which keys an image must be signed by
//! before a sandbox starts from it, and whether its SLSA provenance must be
//! attested too. Key files are named relative to the policy file and read
//! when the policy is loaded, so the PEM travels inside the policy (and its
//! revisions): a key file changed or removed later does not change what a
//! sandbox trusted. Guards against running an image that did not come out
//! of the signer's pipeline (enforced in `sandbox::trust`).
#![forbid(unsafe_code)]
use moat_builder::sign::keys;
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Trust {
    /// Public keys (PEM): a path relative to the policy file when written by
    /// hand, the PEM itself once loaded.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub keys: Vec<String>,
    /// Refuse an image without a signature by one of `keys`.
    #[serde(default)]
    pub require_signature: bool,
    /// Refuse an image without SLSA provenance, signed by one of `keys`,
    /// whose subject is the image's own digest.
    #[serde(default)]
    pub require_provenance: bool,
}

impl Trust {
    pub fn is_default(&self) -> bool {
        *self == Trust::default()
    }

    /// Whether anything must be checked before a start.
    pub fn enforced(&self) -> bool {
        self.require_signature || self.require_provenance
    }

    /// Replaces each key path with the PEM it names (relative to `dir`),
    /// parsed and written back in canonical form: a file with text around
    /// its key, or a key that is not P-256, is an error here, at load.
    pub(crate) fn embed_keys(&mut self, dir: &Path) -> Result<(), String> {
        for k in &mut self.keys {
            let (pem, named) = if is_pem(k) {
                (k.as_bytes().to_vec(), "an inline key".to_string())
            } else {
                let path = dir.join(&*k);
                let bytes = keys::read_key_file(&path)
                    .map_err(|e| format!("trust.keys {k:?}: {}", moat_builder::errors::chain(&e)))?;
                (bytes, format!("{k:?} ({})", path.display()))
            };
            let key = keys::load_public(&pem)
                .map_err(|e| format!("trust.keys {named}: {}", moat_builder::errors::chain(&e)))?;
            *k = keys::public_pem(&key)
                .map_err(|e| format!("trust.keys {named}: {}", moat_builder::errors::chain(&e)))?;
        }
        Ok(())
    }

    /// The trusted keys; an entry that is still a path (a policy parsed
    /// without its file) or not a P-256 public key is an error.
    pub fn verifying_keys(&self) -> Result<Vec<keys::VerifyingKey>, String> {
        self.keys
            .iter()
            .map(|k| {
                if !is_pem(k) {
                    return Err(format!(
                        "trust.keys {k:?}: a key path is only read when the policy is loaded from its file"
                    ));
                }
                keys::load_public(k.as_bytes()).map_err(|e| format!("trust.keys: {}", moat_builder::errors::chain(&e)))
            })
            .collect()
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.enforced() && self.keys.is_empty() {
            return Err("trust: require_signature or require_provenance needs at least one key in trust.keys".into());
        }
        for k in self.keys.iter().filter(|k| is_pem(k)) {
            keys::load_public(k.as_bytes()).map_err(|e| format!("trust.keys: {}", moat_builder::errors::chain(&e)))?;
        }
        Ok(())
    }
}

fn is_pem(s: &str) -> bool {
    s.trim_start().starts_with("-----BEGIN ")
}
