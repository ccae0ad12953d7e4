//! The facts of the snapshot format that several files share: how files are
//! cut into chunks and how chunks and manifests are named. A leaf (it imports
//! nothing of the crate), so the chunker, the chunk store and the repository
//! read one definition. Addresses drift between writer and reader: a chunk
//! is named by the sha256 of its plain bytes everywhere, and no stored chunk
//! is ever larger than the chunker's maximum (the decoder's bound).
#![forbid(unsafe_code)]
use sha2::{Digest as _, Sha256};

/// FastCDC (2020) minimum, average and maximum chunk sizes; recorded in every
/// manifest as [`crate::manifest::CHUNKING`].
pub(crate) const MIN_CHUNK: u32 = 16 * 1024;
pub(crate) const AVG_CHUNK: u32 = 64 * 1024;
pub(crate) const MAX_CHUNK: u32 = 256 * 1024;

/// The shortest hole of a sparse file a manifest records; shorter holes are
/// stored as the zeros they read as (a file with many small holes keeps a
/// small manifest).
pub(crate) const MIN_HOLE: u64 = 64 * 1024;

/// The id of a chunk or a manifest: sha256 (lowercase hex) of its bytes.
pub fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifests_record_the_chunking_in_use() {
        let want = format!("fastcdc-v2020 min={MIN_CHUNK} avg={AVG_CHUNK} max={MAX_CHUNK};");
        assert!(crate::manifest::CHUNKING.starts_with(&want), "{}", crate::manifest::CHUNKING);
    }
}
