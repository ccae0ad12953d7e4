//! One layer, from files to a blob and back: the in-memory tree, archives
//! read into it, the reproducible tar and gzip it is written as, the store
//! blob it becomes, the cache of finished layers, and reading layers back.
//! Guards the determinism contract (the bytes depend only on the tree and
//! the epoch) and hostile archives (paths, links and devices are checked
//! on the way in).
#![forbid(unsafe_code)]
pub(crate) mod bounds;
pub(crate) mod cache;
pub(crate) mod gz;
pub(crate) mod read;
pub(crate) mod tar_in;
pub(crate) mod tar_out;
pub mod tree;
pub(crate) mod write;

pub use tar_in::read_archive_input;
