//! Fuzz target: snapshot export files (`moat_snapshot::archive::import`
//! into a fresh repository per input: tar members, record, manifest,
//! chunk codecs and digests). Threat: a tampered or hostile export that
//! panics, aborts or hangs the import instead of being refused.
#![no_main]
use libfuzzer_sys::fuzz_target;
use moat_snapshot::{archive, Repo};

fuzz_target!(|data: &[u8]| {
    let shm = std::path::Path::new("/dev/shm");
    let base = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
    let dir = tempfile::Builder::new().prefix("moat-fuzz-snap").tempdir_in(base).expect("temp dir");
    let file = dir.path().join("export.tar");
    std::fs::write(&file, data).expect("write input");
    let repo = Repo::open(&dir.path().join("repo")).expect("repo");
    if let Err(e) = archive::import(&repo, &file) {
        let _ = e.to_string();
    }
});
