//! Test support for moat's sandbox tests: the image they run (feature `image`).
//! The probe itself is the `moat-probe` binary (src/main.rs).
#[cfg(feature = "image")]
pub mod testimage;
