//! Fuzz target: blueprint TOML (`moat_builder::blueprint::parse`), the file
//! every build starts from. Threat: a hostile or broken blueprint that
//! panics, aborts or hangs the parser instead of getting a located error.
//! Oracle beyond "no panic": a located error points inside the text.
#![no_main]
use libfuzzer_sys::fuzz_target;
use moat_builder::blueprint::{self, BlueprintError};
use std::path::Path;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data).into_owned();
    let lines = text.split('\n').count();
    match blueprint::parse(Path::new("fuzz/blueprint.toml"), text) {
        Ok(l) => {
            let _ = l.digest();
            let _ = l.lock_path();
        }
        Err(e) => {
            if let BlueprintError::At { at, .. } = &e {
                assert!(at.line >= 1 && at.line <= lines && at.column >= 1, "location {at} outside the text: {e}");
            }
            let _ = e.to_string();
        }
    }
});
