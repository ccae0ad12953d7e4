//! Signing and attestations (issue 23): cosign-compatible keys, classic
//! signatures, DSSE/in-toto attestations (SLSA provenance, SPDX), Sigstore
//! bundles attached as OCI 1.1 referrers, and checking them against trusted
//! keys. Offline and deterministic: no transparency log, RFC 6979 nonces.
//! Guards a host against running an image that did not come out of the
//! signer's pipeline (see docs/signing.md for what it does and does not say).
pub mod artifacts;
pub mod bundle;
pub mod check;
pub mod envelope;
pub mod image;
pub mod keys;
pub mod payload;
pub mod provenance;
