//! Fuzz target: a blueprint's `tar` input (`moat_builder::layer::read_archive_input`:
//! gzip/xz/zstd detection, the bounded tar reader, hard-link normalisation,
//! the symlink-parent check). Threat: a hostile archive that panics, aborts
//! (huge allocations), hangs, or gets a path out of the image root.
//! Oracle beyond "no panic": every path in the tree read is clean.
#![no_main]
use libfuzzer_sys::fuzz_target;
use moat_builder::layer::{read_archive_input, tree};

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = read_archive_input(data, false) {
        for e in t.iter() {
            assert_eq!(tree::clean_path(&e.path).ok().as_deref(), Some(e.path.as_str()), "unclean path in the tree");
        }
    }
});
