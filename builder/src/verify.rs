//! `moat verify`: rebuilds a blueprint from scratch in a fresh temporary store
//! (no layer cache) and compares every digest with the committed lock — the
//! CI proof that what the lock says is what the sources make.
#![forbid(unsafe_code)]
use crate::blueprint::Loaded;
use crate::build::{self, BuildError, Options};
use crate::layer::read::{self as layer_read, Listed};
use crate::lock::{self, Difference, Lock};
use crate::oci::{Descriptor, MEDIA_LAYER_GZIP};
use crate::store::Store;
use std::collections::BTreeMap;
use std::path::PathBuf;

/// The outcome of verifying one blueprint.
#[derive(Debug)]
pub struct Outcome {
    pub name: String,
    pub manifest: String,
    pub difference: Option<Difference>,
    /// The first differing path inside the first differing layer, when the
    /// locked layer is available to compare with.
    pub path: Option<String>,
}

/// Rebuilds `l` in a temporary store and compares with its lock. `reference`
/// is a store that may hold the locked layers (to name the differing path).
pub fn verify(l: &Loaded, reference: Option<&Store>, download_cache: PathBuf) -> Result<Outcome, BuildError> {
    let locked = Lock::read(&l.lock_path(), &l.path)?;
    let tmp = tempfile::tempdir().map_err(|e| BuildError::Base(format!("temporary store: {e}")))?;
    let store = Store::open(tmp.path())?;
    let opts = Options { store: store.clone(), layer_cache: None, download_cache, progress: false };
    let built = build::build(l, &opts, build::Mode::Verify(&locked))?;
    let difference = lock::first_difference(&locked, &built.lock);
    let mut path = None;
    if difference.is_some() {
        // Find the first layer whose bytes differ and, if the locked blob is
        // at hand, the first path inside it.
        for (old, new) in locked.layers.iter().zip(&built.lock.layers) {
            if old.digest != new.digest {
                if let Some(r) = reference.filter(|r| r.has_blob(&old.digest)) {
                    path = first_differing_path(r, &desc(&old.digest, old.size), &store, &desc(&new.digest, new.size));
                }
                break;
            }
        }
    }
    Ok(Outcome { name: built.lock.name.clone(), manifest: built.lock.image.manifest.to_string(), difference, path })
}

fn desc(d: &crate::Digest, size: u64) -> Descriptor {
    Descriptor {
        media_type: MEDIA_LAYER_GZIP.into(),
        digest: d.clone(),
        size,
        annotations: Default::default(),
        platform: None,
    }
}

fn summary(e: &Listed) -> (u8, u32, u64, u64, u64, Option<String>, Option<String>) {
    (e.flag, e.mode, e.uid, e.gid, e.size, e.link.clone(), e.content.as_ref().map(|c| c.to_string()))
}

/// The first path (in archive order) whose entry differs between two layers.
pub fn first_differing_path(a_store: &Store, a: &Descriptor, b_store: &Store, b: &Descriptor) -> Option<String> {
    let none = |_: &str| false;
    let la: BTreeMap<String, _> =
        layer_read::list_layer(a_store, a, &none).ok()?.into_iter().map(|e| (e.path.clone(), summary(&e))).collect();
    let lb: BTreeMap<String, _> =
        layer_read::list_layer(b_store, b, &none).ok()?.into_iter().map(|e| (e.path.clone(), summary(&e))).collect();
    let mut keys: Vec<&String> = la.keys().chain(lb.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter().find(|k| la.get(*k) != lb.get(*k)).cloned()
}
