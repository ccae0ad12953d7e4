//! moat-builder: turns a blueprint into a bit-reproducible OCI image and keeps
//! the content-addressed store it lands in.
pub mod audit;
pub mod blueprint;
pub mod build;
pub mod cjson;
pub mod debian;
pub mod digest;
pub mod downloads;
pub mod errors;
pub mod fetch;
pub mod fsio;
pub mod home;
pub mod layer;
pub mod lint;
pub mod lock;
pub mod malloc;
pub mod oci;
pub mod registry;
pub mod store;
pub mod strip;
pub mod verify;

pub use digest::Digest;
pub use store::Store;
