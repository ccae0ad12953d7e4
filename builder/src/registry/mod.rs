//! Registries: push and pull images by digest over the OCI distribution API
//! (oci-client). Addresses tampering in transit and at the registry (every
//! pulled byte is checked against the digest the user pinned before it enters
//! the store), mutable references (tags are refused where content is chosen),
//! credential leaks (0600 files, never echoed) and downgrade to plain HTTP
//! (only loopback registries or hosts named with `--insecure`).
#![forbid(unsafe_code)]
pub mod auth;
pub(crate) mod client;
mod progress;
pub(crate) mod pull;
pub(crate) mod push;
pub(crate) mod reference;
pub mod signatures;

pub use client::{check_login, Options};
pub use pull::{pull, pull_image, PullReport};
pub use push::{push, PushReport};
pub use reference::{parse_reference, resolve, Resolved};

use crate::digest::Digest;
use crate::store::StoreError;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("{reference:?} is not a registry reference (REGISTRY/REPO[:TAG][@sha256:...]): {reason}")]
    BadReference { reference: String, reason: String },
    #[error(
        "{reference} names no digest and moat pulls by digest only (a tag can move). \
         Run `moat resolve {reference}` to print its digest, then use REGISTRY/REPO@sha256:..."
    )]
    TagOnly { reference: String },
    #[error(
        "registry {registry} rejected the credentials{who}: check the user and password (`moat login {registry}`)"
    )]
    Unauthorized { registry: String, who: String },
    #[error("registry {registry}: {what}: {detail}")]
    Registry { registry: String, what: String, detail: String },
    #[error("registry {registry}: TLS certificate of {registry} not trusted ({detail}); pass --ca-file with the CA that signed it")]
    Tls { registry: String, detail: String },
    #[error("registry {registry} served {what} {expected} whose content hashes to {actual}: refused, nothing unverified was stored")]
    DigestMismatch { registry: String, what: String, expected: Digest, actual: Digest },
    #[error("registry {registry} served {what} {digest} with {got} bytes, its descriptor says {want}")]
    SizeMismatch { registry: String, what: String, digest: Digest, got: u64, want: u64 },
    #[error("{0}")]
    Unsupported(String),
    #[error("credentials file {path}: {detail}")]
    Credentials { path: PathBuf, detail: String },
    #[error("{path}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Annotation (in the store's index.json) naming the `REGISTRY/REPO` an image was pulled from.
pub const ANNOTATION_SOURCE: &str = "dev.moat.registry.source";

pub type Result<T> = std::result::Result<T, RegistryError>;
