//! Fuzz target: `.deb` files, both ways the builder reads them: a mirror
//! package (`moat_builder::debian::unpack_check`: ar, control.tar,
//! data.tar, merged /usr) and a blueprint's `deb` input (its data member,
//! `read_archive_input`). Threat: a hostile package that panics (the ar
//! crate), aborts (huge allocations), hangs or escapes the image root.
#![no_main]
use libfuzzer_sys::fuzz_target;
use moat_builder::layer::{read_archive_input, tree};

fuzz_target!(|data: &[u8]| {
    let _ = moat_builder::debian::unpack_check(data);
    if let Ok(t) = read_archive_input(data, true) {
        for e in t.iter() {
            assert_eq!(tree::clean_path(&e.path).ok().as_deref(), Some(e.path.as_str()), "unclean path in the tree");
        }
    }
});
