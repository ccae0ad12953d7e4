//! moat-builder: turns a blueprint into a bit-reproducible OCI image and keeps
//! the content-addressed store it lands in.
pub mod cjson;
pub mod digest;
pub mod home;
pub mod oci;
pub mod store;
pub mod tree;

pub use digest::Digest;
pub use store::Store;
