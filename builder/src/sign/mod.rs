//! Signing images the way cosign does, so cosign can check moat's signatures
//! and moat can check cosign's.
pub mod keys;
