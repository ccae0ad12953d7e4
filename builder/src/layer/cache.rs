//! The layer cache: maps a layer's input key (every input digest, the spec
//! and the format) to the blob it produced, so a rebuild with nothing changed
//! does no archive work. A hit is used only if the blob is in the store and
//! hashes to its name (a corrupt blob is archived again, which replaces it);
//! entries are written atomically and a bad entry is ignored, never trusted
//! over the inputs.
#![forbid(unsafe_code)]
use crate::digest::Digest;
use crate::layer::tree::Tree;
use crate::layer::write::{write_layer, WriteError};
use crate::oci::Descriptor;
use crate::store::Store;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Serialize, Deserialize)]
struct Entry {
    /// `None`: the layer turned out empty and is omitted.
    layer: Option<(Descriptor, Digest)>,
}

pub(crate) struct LayerCache<'a> {
    dir: Option<PathBuf>,
    store: &'a Store,
}

impl<'a> LayerCache<'a> {
    pub(crate) fn new(dir: Option<PathBuf>, store: &'a Store) -> Self {
        LayerCache { dir, store }
    }

    fn lookup(&self, key: &Digest) -> Option<Entry> {
        let p = self.dir.as_ref()?.join(key.hex());
        let e: Entry = serde_json::from_slice(&std::fs::read(p).ok()?).ok()?;
        match &e.layer {
            // An error reading the blob is a miss: archiving again reports
            // what is wrong with the store, or repairs it.
            Some((desc, _)) if !self.store.reuse_blob(&desc.digest).unwrap_or(false) => None,
            _ => Some(e),
        }
    }

    fn record(&self, key: &Digest, e: &Entry) {
        // A cache that cannot be written costs speed, never correctness.
        if let (Some(dir), Ok(bytes)) = (&self.dir, serde_json::to_vec(e)) {
            let _ = crate::fsio::write_via(dir, &dir.join(key.hex()), &bytes, 0o644);
        }
    }

    /// The layer for `key`: from the cache, or made by `make` and archived.
    pub(crate) fn get_or_build<E: From<WriteError>>(
        &self,
        key: &Digest,
        make: impl FnOnce() -> Result<Option<Tree>, E>,
        epoch: u64,
        name: &str,
    ) -> Result<Option<(Descriptor, Digest)>, E> {
        if let Some(e) = self.lookup(key) {
            tracing::debug!(layer = name, key = %key, "layer cache hit");
            return Ok(e.layer);
        }
        tracing::debug!(layer = name, key = %key, "archiving layer");
        let layer = match make()? {
            Some(mut tree) => {
                let layer = write_layer(self.store, &mut tree, epoch, name)?;
                crate::malloc::drop_later(tree);
                Some(layer)
            }
            None => None,
        };
        self.record(key, &Entry { layer: layer.clone() });
        Ok(layer)
    }
}
