//! Golden test: the fixture blueprint builds to the committed manifest digest,
//! on any machine, from a fresh checkout. If this fails after a deliberate
//! format change, bump `lock::FORMAT` and re-lock the fixture.
mod common;
use common::*;

const GOLDEN_MANIFEST: &str = "sha256:c587416ab2da0bcb5863c0f240246eff9e8a293456820d58648608b614fd639d";

#[test]
fn golden_fixture_builds_to_the_committed_digest() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("golden");
    copy_tree(&repo().join("tests/fixtures/golden"), &work);
    let lock = std::fs::read_to_string(work.join("golden.lock")).unwrap();
    assert!(lock.contains(GOLDEN_MANIFEST), "committed lock does not carry the golden digest");
    let mut c = moat(&tmp.path().join("home"));
    c.current_dir(&work).args(["build", "golden.toml", "--store"]).arg(tmp.path().join("store"));
    let out = ok(c);
    assert_eq!(out.trim(), format!("golden@{GOLDEN_MANIFEST}"));
    // And verify (fresh store, no cache) agrees.
    let mut c = moat(&tmp.path().join("home2"));
    c.current_dir(&work).args(["verify", "golden.toml"]);
    let out = ok(c);
    assert!(out.starts_with("ok "), "{out}");
}
