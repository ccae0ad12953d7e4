//! Registry references (`REGISTRY/REPO[:TAG][@sha256:...]`) and `resolve`,
//! the one command that turns a tag into the digest to pin. Addresses mutable
//! references: everything else demands a digest.
#![forbid(unsafe_code)]
use super::client::{connect, runtime, Options};
use super::{RegistryError, Result};
use crate::digest::Digest;
use oci_client::Reference;

/// Parses a registry reference; a bare `repo` is refused (moat does not guess a registry).
pub fn parse_reference(s: &str) -> Result<Reference> {
    let bad = |reason: &str| RegistryError::BadReference { reference: s.to_string(), reason: reason.to_string() };
    let first = s.split('/').next().unwrap_or("");
    if !s.contains('/') || !(first.contains('.') || first.contains(':') || first == "localhost") {
        return Err(bad("name the registry host explicitly, e.g. registry.example.com/repo or 127.0.0.1:5000/repo"));
    }
    let r: Reference = s.parse().map_err(|e: oci_client::ParseError| bad(&e.to_string()))?;
    if let Some(d) = r.digest() {
        Digest::parse(d).map_err(|e| bad(&e.to_string()))?;
    }
    Ok(r)
}

/// `registry/repo` without tag or digest.
pub(crate) fn repo_name(r: &Reference) -> String {
    format!("{}/{}", r.registry(), r.repository())
}

/// What `resolve` found.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// `REGISTRY/REPO@sha256:...`
    pub pinned: String,
    pub digest: Digest,
}

/// Asks the registry which manifest (or index) digest `reference` names now.
pub fn resolve(reference: &str, opts: &Options) -> Result<Resolved> {
    let r = parse_reference(reference)?;
    runtime()?.block_on(async {
        let conn = connect(&r, opts).await?;
        let got = conn.retry("resolve", || conn.client.fetch_manifest_digest(&r, &conn.auth)).await?;
        let digest = Digest::parse(&got).map_err(|e| RegistryError::Registry {
            registry: conn.registry.clone(),
            what: "resolve".into(),
            detail: e.to_string(),
        })?;
        if let Some(asked) = r.digest() {
            if asked != got {
                return Err(RegistryError::Registry {
                    registry: conn.registry.clone(),
                    what: "resolve".into(),
                    detail: format!("asked for {asked}, registry answered {got}"),
                });
            }
        }
        Ok(Resolved { pinned: format!("{}@{}", repo_name(&r), digest), digest })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn references_need_a_registry_and_a_valid_digest() {
        assert!(parse_reference("alpine:3").is_err());
        assert!(parse_reference("library/alpine").is_err());
        let r = parse_reference("127.0.0.1:5000/a/b:v1").unwrap();
        assert_eq!(r.registry(), "127.0.0.1:5000");
        assert_eq!(r.repository(), "a/b");
        assert_eq!(r.tag(), Some("v1"));
        let d = format!("sha256:{}", "a".repeat(64));
        let r = parse_reference(&format!("localhost:5000/x@{d}")).unwrap();
        assert_eq!(r.digest(), Some(d.as_str()));
        assert!(parse_reference("localhost:5000/x@sha256:abc").is_err());
    }
}
