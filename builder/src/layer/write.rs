//! Archives one layer: a `Tree` -> reproducible tar -> deterministic gzip ->
//! a committed store blob, with its diff_id taken from the tar stream on the
//! way. Guards the determinism contract (the bytes depend only on the tree and
//! the epoch) and refuses hardlinks that do not resolve inside the layer.
#![forbid(unsafe_code)]
use crate::digest::{Digest, HashingWriter};
use crate::layer::gz::ParGz;
use crate::layer::tree::{Tree, TreeError};
use crate::oci::{self, Descriptor};
use crate::store::{Store, StoreError};
use std::collections::BTreeMap;
use std::io::{self, Write};

#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    #[error("layer {layer}")]
    Tree { layer: String, source: TreeError },
    #[error("writing layer {layer}")]
    Io { layer: String, source: io::Error },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Archives `tree` into a gzip layer blob; returns (descriptor, diff_id).
pub(crate) fn write_layer(
    store: &Store,
    tree: &mut Tree,
    epoch: u64,
    name: &str,
) -> Result<(Descriptor, Digest), WriteError> {
    tree.add_parents();
    tree.check_hardlinks().map_err(|source| WriteError::Tree { layer: name.into(), source })?;
    let werr = |source: io::Error| WriteError::Io { layer: name.into(), source };
    let blob = store.blob_writer()?;
    let mut raw = HashingWriter::new(ParGz::new(blob));
    crate::layer::tar_out::write_tree(tree, epoch, &mut raw).map_err(werr)?;
    raw.flush().map_err(werr)?;
    let (gz, diff_id, _) = raw.finish();
    let blob = gz.finish().map_err(werr)?;
    let (digest, size) = blob.commit(None)?;
    Ok((
        Descriptor {
            media_type: oci::MEDIA_LAYER_GZIP.into(),
            digest,
            size,
            annotations: BTreeMap::new(),
            platform: None,
        },
        diff_id,
    ))
}
