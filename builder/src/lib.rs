//! moat-builder: turns a blueprint into a bit-reproducible OCI image and keeps
//! the content-addressed store it lands in.
//!
//! `unsafe` lives only in `sys.rs` (raw calls `nix` does not wrap, each with
//! its SAFETY comment); every other module file forbids it.
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(unreachable_pub)]
#![deny(clippy::undocumented_unsafe_blocks)]
pub mod audit;
pub mod blueprint;
pub mod build;
pub mod cjson;
pub mod debian;
pub mod digest;
pub(crate) mod downloads;
pub mod errors;
pub(crate) mod fetch;
pub mod fsio;
pub mod home;
pub mod layer;
pub mod lint;
pub mod lock;
pub(crate) mod malloc;
pub mod npm;
pub mod oci;
pub mod pypi;
pub mod registry;
pub mod registry_hosts;
pub mod sign;
pub mod store;
pub(crate) mod strip;
mod sys;
pub mod textfile;
pub mod verify;

pub use digest::Digest;
pub use store::Store;
