//! Fuzz target: lock files (`moat_builder::lock::Lock::read`), read from a
//! file as `moat build` and `moat verify` read them. Threat: a lock that
//! panics or hangs the builder instead of being refused. Oracle beyond "no
//! panic": a lock that reads also writes (`to_text`) and reads back equal.
#![no_main]
use libfuzzer_sys::fuzz_target;
use moat_builder::lock::Lock;
use std::path::PathBuf;
use std::sync::OnceLock;

/// One directory per process, in tmpfs when there is one.
fn dir() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let shm = std::path::Path::new("/dev/shm");
        let base = if shm.is_dir() { shm.to_path_buf() } else { std::env::temp_dir() };
        tempfile::Builder::new().prefix("moat-fuzz-lock").tempdir_in(base).expect("temp dir")
    })
}

fuzz_target!(|data: &[u8]| {
    let path: PathBuf = dir().path().join("fuzz.lock");
    let blueprint = dir().path().join("fuzz.toml");
    std::fs::write(&path, data).expect("write input");
    match Lock::read(&path, &blueprint) {
        Ok(lock) => {
            let again = dir().path().join("again.lock");
            std::fs::write(&again, lock.to_text()).expect("write again");
            let back = Lock::read(&again, &blueprint)
                .unwrap_or_else(|e| panic!("a lock moat reads does not read back after to_text: {e:?}"));
            assert_eq!(back, lock, "lock changes through to_text");
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
});
