//! The inputs stage: every blueprint entry's source resolved to pinned bytes
//! (a scanned local tree, a downloaded or local archive) and checked against
//! its sha256 pin, then added to a layer tree. Guards against drifting
//! inputs (an archive is hashed again after it is read for the layer) and
//! entries that would be unpacked through a symlink of the same layer.
#![forbid(unsafe_code)]
use super::local;
use super::{BuildError, Options};
use crate::blueprint::{Loaded, SourceKind};
use crate::digest::Digest;
use crate::errors::chain;
use crate::fetch;
use crate::layer::tar_in::{self, Overrides};
use crate::layer::tree::Tree;
use crate::lock::LockedInput;
use std::path::PathBuf;

/// A resolved input of one blueprint entry.
pub(super) enum Resolved {
    Local(local::Scanned),
    Archive(PathBuf),
}

pub(super) struct Input {
    pub(super) locked: LockedInput,
    resolved: Resolved,
}

pub(super) fn resolve_inputs(l: &Loaded, opts: &Options) -> Result<Vec<Input>, BuildError> {
    let mut out = Vec::new();
    for (i, layer) in l.bp.layers.iter().enumerate() {
        for (j, e) in layer.get_ref().entries.iter().enumerate() {
            let spec = e.get_ref();
            let Some((kind, src)) = spec.source() else { continue };
            let at = format!("{} (layer[{i}].entry[{j}])", l.at(src.span()));
            let fail = |msg: String| BuildError::Input { at: at.clone(), msg };
            let pin = spec
                .sha256
                .as_ref()
                .map(|h| Digest::parse_hex(h.get_ref().trim_start_matches("sha256:")).map_err(|e| fail(e.to_string())))
                .transpose()?;
            let s = src.get_ref();
            let (digest, resolved) = match kind {
                SourceKind::Path => {
                    let scanned = local::scan(&l.source_path(s)).map_err(|e| fail(chain(&e)))?;
                    (scanned.digest.clone(), Resolved::Local(scanned))
                }
                SourceKind::Tar | SourceKind::Deb if crate::blueprint::is_url(s) => {
                    let pin = pin.clone().ok_or_else(|| fail("URL sources need sha256".into()))?;
                    let p = fetch::fetch(&opts.download_cache, s, &pin)?;
                    (pin, Resolved::Archive(p))
                }
                SourceKind::Tar | SourceKind::Deb => {
                    let p = l.source_path(s);
                    let f = std::fs::File::open(&p).map_err(|e| fail(format!("{}: {e}", p.display())))?;
                    let (d, _) = crate::digest::digest_reader(f).map_err(|e| fail(format!("{}: {e}", p.display())))?;
                    if let Some(pin) = &pin {
                        if pin != &d {
                            return Err(fail(format!(
                                "{s} hashes to {d}, but the blueprint pins sha256 {}",
                                pin.hex()
                            )));
                        }
                    }
                    (d, Resolved::Archive(p))
                }
            };
            let kind_s = match kind {
                SourceKind::Path => {
                    if matches!(&resolved, Resolved::Local(sc) if sc.is_file) {
                        "file"
                    } else {
                        "dir"
                    }
                }
                SourceKind::Tar => "tar",
                SourceKind::Deb => "deb",
            };
            out.push(Input {
                locked: LockedInput {
                    at: format!("layer[{i}].entry[{j}]"),
                    source: s.clone(),
                    kind: kind_s.into(),
                    sha256: digest,
                },
                resolved,
            });
        }
    }
    Ok(out)
}

pub(super) fn add_entry(tree: &mut Tree, spec: &crate::blueprint::EntrySpec, inp: &Input) -> Result<(), String> {
    let ov = Overrides {
        mode: spec.mode.as_ref().map(|m| m.get_ref().0),
        dir_mode: spec.dir_mode.as_ref().map(|m| m.get_ref().0),
        uid: spec.uid,
        gid: spec.gid,
    };
    let dest = spec.dest();
    match &inp.resolved {
        Resolved::Local(sc) => sc.add_to(tree, &dest, spec.dest_is_dir(), ov).map_err(|e| chain(&e))?,
        Resolved::Archive(p) => {
            let bytes = std::fs::read(p).map_err(|e| format!("{}: {e}", p.display()))?;
            // Verify again after reading: the file could have changed since hashing.
            if Digest::of(&bytes) != inp.locked.sha256 {
                return Err("source changed while building".into());
            }
            let tar =
                if inp.locked.kind == "deb" { tar_in::deb_data_tar(&bytes).map_err(|e| chain(&e))? } else { bytes };
            tar_in::read_tar_into(tree, &tar, &dest, ov).map_err(|e| chain(&e))?;
            tar_in::normalize_hardlinks(tree);
        }
    }
    // Refused while reading the input, at lock and at build alike.
    tree.check_symlink_parents().map_err(|e| chain(&e))
}
