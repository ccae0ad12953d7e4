//! Secrets the host holds for its sandboxes: the provider-key store
//! (`credentials`, files 0600 under a 0700 directory, never inside a
//! sandbox) and the one redactor every output goes through (`redact`).
//! Guards against a key leaking into a sandbox, a log, or a terminal.
#![forbid(unsafe_code)]
pub mod credentials;
pub mod redact;
