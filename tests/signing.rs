//! Signing refusals, reproducibility and enforcement (issue 23): tampered
//! signatures (a payload byte, the signature, an image re-pointed to another
//! digest, a wrong key) and a provenance statement about another digest are
//! refused with a message naming what failed; signing and attesting twice
//! gives the same bytes; `moat verify` catches an attested provenance that a
//! rebuild does not reproduce, even when its signature is valid; `moat run`
//! under a `[trust]` policy refuses unsigned, unknown-key, wrong-subject and
//! unattested images and runs the signed one. Threat: a forged or replayed
//! signature, or provenance copied from another image, starting a sandbox.
#[path = "sign_oracle/mod.rs"]
mod oracle;
#[path = "common/registry.rs"]
#[allow(dead_code)]
mod reg;
mod sandbox_common;

use moat_builder::digest::Digest;
use moat_builder::oci::MEDIA_MANIFEST;
use moat_builder::Store;
use oracle::*;
use serde_json::{json, Value};
use std::path::Path;

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Changes one byte inside the string value of `"key":"` in `bytes` (JSON
/// stays valid, so only a signature check can notice). False if absent or empty.
fn flip_in_string(bytes: &mut [u8], key: &str) -> bool {
    let pat = format!("\"{key}\":\"");
    let Some(at) = bytes.windows(pat.len()).position(|w| w == pat.as_bytes()) else { return false };
    let i = at + pat.len();
    if bytes.get(i).is_none_or(|&b| b == b'"') {
        return false;
    }
    bytes[i] = if bytes[i] == b'a' { b'b' } else { b'a' };
    true
}

/// Rewrites the classic signature image of `image` with `edit(payload, sig)`.
fn rewrite_classic(st: &Store, image: &Digest, edit: &dyn Fn(&mut Vec<u8>, &mut Vec<u8>)) {
    let d = ref_of(st, &tag_sig(image)).expect("a classic signature");
    let mut m = json_blob(st, &d.digest);
    for layer in m["layers"].as_array_mut().unwrap() {
        let mut payload = st.read_blob(&digest_of(layer)).unwrap();
        let mut sig = unb64(layer["annotations"][ANN_SIGNATURE].as_str().unwrap());
        edit(&mut payload, &mut sig);
        let nd = put(st, MT_SIMPLESIGNING, &payload);
        layer["digest"] = nd["digest"].clone();
        layer["size"] = nd["size"].clone();
        layer["annotations"][ANN_SIGNATURE] = json!(b64(&sig));
    }
    put_named(st, &tag_sig(image), MEDIA_MANIFEST, &m);
}

/// Rewrites every signature bundle (predicate cosign/sign) of `image` with `edit(bundle)`.
fn rewrite_sign_bundles(st: &Store, image: &Digest, edit: &dyn Fn(&mut Value)) -> usize {
    let idx_ref = ref_of(st, &tag_referrers(image)).expect("a referrers tag");
    let mut idx = json_blob(st, &idx_ref.digest);
    let mut n = 0;
    for entry in idx["manifests"].as_array_mut().unwrap() {
        let mut m = json_blob(st, &digest_of(entry));
        let mut bundle = json_blob(st, &digest_of(&m["layers"][0]));
        if envelope_statement(&bundle["dsseEnvelope"])["predicateType"] != PRED_SIGN {
            continue;
        }
        edit(&mut bundle);
        n += 1;
        let nd = put(st, MT_BUNDLE, &serde_json::to_vec(&bundle).unwrap());
        m["layers"][0]["digest"] = nd["digest"].clone();
        m["layers"][0]["size"] = nd["size"].clone();
        let nm = put(st, MEDIA_MANIFEST, &serde_json::to_vec(&m).unwrap());
        entry["digest"] = nm["digest"].clone();
        entry["size"] = nm["size"].clone();
    }
    put_named(st, &tag_referrers(image), moat_builder::oci::MEDIA_INDEX, &idx);
    n
}

struct Signed {
    _tmp: tempfile::TempDir,
    home: std::path::PathBuf,
    store: std::path::PathBuf,
    key_pem: std::path::PathBuf,
    public: std::path::PathBuf,
    st: Store,
    img: moat_builder::oci::Descriptor,
    other: moat_builder::oci::Descriptor,
}

/// Two images in a store; `demo` signed by moat with a key made by openssl
/// (in cosign's key file), so the test can also sign with openssl.
fn signed() -> Signed {
    let tmp = tempfile::tempdir().unwrap();
    let (home, store) = (tmp.path().join("home"), tmp.path().join("store"));
    let (key_pem, public, cosign_key) = cosign_keypair(&tmp.path().join("keys"), "k");
    let st = Store::open(&store).unwrap();
    let img = reg::make_image(&st, "demo", 21, 16 << 10, true);
    let other = reg::make_image(&st, "other", 22, 16 << 10, true);
    moat_ok(&home, &store, &["sign", "demo", "--key", s(&cosign_key)]);
    moat_ok(&home, &store, &["verify-signature", "demo", "--key", s(&public)]);
    Signed { _tmp: tmp, home, store, key_pem, public, st, img, other }
}

#[test]
fn a_tampered_classic_signature_is_refused_naming_what_failed() {
    let t = signed();
    let (st, d) = (&t.st, &t.img.digest);
    // The classic signature alone (the bundle's tag removed) is enough.
    assert!(st.remove_ref(&tag_referrers(d)).unwrap(), "moat sign wrote no referrers tag");
    moat_ok(&t.home, &t.store, &["verify-signature", "demo", "--key", s(&t.public)]);
    let good = ref_of(st, &tag_sig(d)).unwrap();
    let verify = || moat_refused(&t.home, &t.store, &["verify-signature", "demo", "--key", s(&t.public)]);

    // One byte of the payload (inside docker-reference, or the type if that is empty).
    rewrite_classic(st, d, &|p, _| {
        assert!(flip_in_string(p, "docker-reference") || flip_in_string(p, "type"), "payload: {p:?}")
    });
    let err = verify();
    assert!(err.to_lowercase().contains("signature"), "payload byte: {err}");
    st.set_ref(&tag_sig(d), good.clone()).unwrap();

    // One byte of the signature.
    rewrite_classic(st, d, &|_, sig| {
        let i = sig.len() - 3;
        sig[i] ^= 0x01;
    });
    let err = verify();
    assert!(err.to_lowercase().contains("signature"), "signature byte: {err}");
    st.set_ref(&tag_sig(d), good.clone()).unwrap();
    moat_ok(&t.home, &t.store, &["verify-signature", "demo", "--key", s(&t.public)]);

    // A signature copied onto another image: valid, but about demo's digest.
    st.set_ref(&tag_sig(&t.other.digest), good.clone()).unwrap();
    let err = moat_refused(&t.home, &t.store, &["verify-signature", "other", "--key", s(&t.public)]);
    assert!(err.contains(d.hex()) || err.to_lowercase().contains("digest"), "re-pointed: {err}");
    // `demo` re-pointed to other's manifest: the signature names the old digest.
    st.set_ref("demo", t.other.clone()).unwrap();
    let err = moat_refused(&t.home, &t.store, &["verify-signature", "demo", "--key", s(&t.public)]);
    assert!(err.to_lowercase().contains("digest") || err.to_lowercase().contains("signature"), "re-pointed: {err}");
    st.set_ref("demo", t.img.clone()).unwrap();

    // A wrong key.
    let (_, wrong) = openssl_keypair(&t.store.join("../wrong"), "wrong");
    let err = moat_refused(&t.home, &t.store, &["verify-signature", "demo", "--key", s(&wrong)]);
    assert!(err.to_lowercase().contains("signature") || err.to_lowercase().contains("key"), "wrong key: {err}");
    // No signature at all.
    st.remove_ref(&tag_sig(d)).unwrap();
    let err = verify();
    assert!(err.to_lowercase().contains("signature") || err.to_lowercase().contains("unsigned"), "none: {err}");
}

#[test]
fn a_tampered_signature_bundle_is_refused_naming_what_failed() {
    let t = signed();
    let (st, d) = (&t.st, &t.img.digest);
    // The bundle alone (the classic signature's tag removed) is enough.
    assert!(st.remove_ref(&tag_sig(d)).unwrap(), "moat sign wrote no .sig tag");
    moat_ok(&t.home, &t.store, &["verify-signature", "demo", "--key", s(&t.public)]);
    let good = ref_of(st, &tag_referrers(d)).unwrap();
    let verify = || moat_refused(&t.home, &t.store, &["verify-signature", "demo", "--key", s(&t.public)]);

    // One byte of the DSSE payload (the statement's subject name, or its predicateType).
    let n = rewrite_sign_bundles(st, d, &|b| {
        let mut p = unb64(b["dsseEnvelope"]["payload"].as_str().unwrap());
        assert!(flip_in_string(&mut p, "name") || flip_in_string(&mut p, "_type"), "statement: {p:?}");
        b["dsseEnvelope"]["payload"] = json!(b64(&p));
    });
    assert_eq!(n, 1);
    let err = verify();
    assert!(err.to_lowercase().contains("signature"), "payload byte: {err}");
    st.set_ref(&tag_referrers(d), good.clone()).unwrap();

    // One byte of the signature.
    rewrite_sign_bundles(st, d, &|b| {
        let mut sig = unb64(b["dsseEnvelope"]["signatures"][0]["sig"].as_str().unwrap());
        let i = sig.len() - 3;
        sig[i] ^= 0x01;
        b["dsseEnvelope"]["signatures"][0]["sig"] = json!(b64(&sig));
    });
    let err = verify();
    assert!(err.to_lowercase().contains("signature"), "signature byte: {err}");
    st.set_ref(&tag_referrers(d), good.clone()).unwrap();

    // A validly signed statement about another digest (re-signed by openssl with the key).
    let key = t.key_pem.clone();
    let other_hex = t.other.digest.hex().to_string();
    rewrite_sign_bundles(st, d, &|b| {
        let mut stmt = envelope_statement(&b["dsseEnvelope"]);
        stmt["subject"][0]["digest"]["sha256"] = json!(other_hex);
        b["dsseEnvelope"] = dsse_envelope(&key, &serde_json::to_vec(&stmt).unwrap(), "");
    });
    let err = verify();
    assert!(
        err.contains(&other_hex[..12]) || err.to_lowercase().contains("subject"),
        "statement about another digest: {err}"
    );
    st.set_ref(&tag_referrers(d), good.clone()).unwrap();
    moat_ok(&t.home, &t.store, &["verify-signature", "demo", "--key", s(&t.public)]);

    // The referrers copied onto another image.
    st.set_ref(&tag_referrers(&t.other.digest), good).unwrap();
    let err = moat_refused(&t.home, &t.store, &["verify-signature", "other", "--key", s(&t.public)]);
    assert!(
        err.contains(&d.hex()[..12]) || err.to_lowercase().contains("subject") || err.to_lowercase().contains("digest"),
        "re-pointed: {err}"
    );
}

/// Builds the busybox blueprint, signs and attests it with a key openssl made.
struct Attested {
    tmp: tempfile::TempDir,
    home: std::path::PathBuf,
    store: std::path::PathBuf,
    bp: std::path::PathBuf,
    key_pem: std::path::PathBuf,
    public: std::path::PathBuf,
    cosign_key: std::path::PathBuf,
    img: moat_builder::oci::Descriptor,
}

fn attested() -> Attested {
    let tmp = tempfile::tempdir().unwrap();
    let (home, store) = (tmp.path().join("home"), tmp.path().join("store"));
    let (key_pem, public, cosign_key) = cosign_keypair(&tmp.path().join("keys"), "release");
    let (bp, img) = build_busybox(&tmp.path().join("bp"), &home, &store);
    moat_ok(&home, &store, &["sign", "signed-busybox", "--key", s(&cosign_key)]);
    moat_ok(&home, &store, &["attest", "signed-busybox", "--key", s(&cosign_key), "--blueprint", s(&bp)]);
    Attested { tmp, home, store, bp, key_pem, public, cosign_key, img }
}

#[test]
fn a_provenance_about_another_digest_is_refused() {
    let a = attested();
    let st = Store::open_existing(&a.store).unwrap();
    for t in ["slsaprovenance", "spdx"] {
        moat_ok(&a.home, &a.store, &["verify-attestation", "signed-busybox", "--key", s(&a.public), "--type", t]);
    }
    let swapped = Digest::of(b"another image's manifest");
    let sw = swapped.hex().to_string();
    let n = rewrite_statements(&st, &a.img.digest, PRED_SLSA, &a.key_pem, &|stmt| {
        for subj in stmt["subject"].as_array_mut().unwrap() {
            subj["digest"]["sha256"] = json!(sw);
        }
    });
    assert!(n >= 1, "no SLSA provenance found to rewrite");
    let err = moat_refused(
        &a.home,
        &a.store,
        &["verify-attestation", "signed-busybox", "--key", s(&a.public), "--type", "slsaprovenance"],
    );
    assert!(
        err.to_lowercase().contains("subject") || err.contains(&sw[..12]) || err.contains(&a.img.digest.hex()[..12]),
        "swapped subject: {err}"
    );
    // The SBOM was left alone and still verifies: the refusal is about the provenance.
    moat_ok(&a.home, &a.store, &["verify-attestation", "signed-busybox", "--key", s(&a.public), "--type", "spdx"]);
}

#[test]
fn signing_and_attesting_twice_gives_the_same_bytes() {
    let a = attested();
    let first = store_bytes(&a.store);
    // Again in the same store: nothing changes.
    moat_ok(&a.home, &a.store, &["sign", "signed-busybox", "--key", s(&a.cosign_key)]);
    moat_ok(&a.home, &a.store, &["attest", "signed-busybox", "--key", s(&a.cosign_key), "--blueprint", s(&a.bp)]);
    let again = store_bytes(&a.store);
    assert_eq!(first.keys().collect::<Vec<_>>(), again.keys().collect::<Vec<_>>(), "blobs differ after re-signing");
    assert!(first == again, "index.json or a blob changed when signing and attesting again");

    // Elsewhere (another checkout, home and store): the same bytes.
    let b = a.tmp.path().join("elsewhere/deeper");
    let (home2, store2) = (b.join("home"), b.join("store"));
    let (bp2, img2) = build_busybox(&b.join("bp"), &home2, &store2);
    assert_eq!(img2.digest, a.img.digest, "the blueprint did not rebuild to the same image");
    moat_ok(&home2, &store2, &["sign", "signed-busybox", "--key", s(&a.cosign_key)]);
    moat_ok(&home2, &store2, &["attest", "signed-busybox", "--key", s(&a.cosign_key), "--blueprint", s(&bp2)]);
    let other = store_bytes(&store2);
    let differing: Vec<_> = first.keys().filter(|k| other.get(*k) != first.get(*k)).collect();
    let extra: Vec<_> = other.keys().filter(|k| !first.contains_key(*k)).collect();
    assert!(differing.is_empty() && extra.is_empty(), "differing: {differing:?}, only in the second store: {extra:?}");
}

#[test]
fn moat_verify_catches_an_attested_provenance_the_rebuild_does_not_reproduce() {
    let a = attested();
    let bp_dir = a.bp.parent().unwrap();
    let verify = |store: &Path| {
        let mut c = moat(&a.home, store, &["verify", "bb.toml"]);
        c.current_dir(bp_dir);
        run(c)
    };
    let (code, out, err) = verify(&a.store);
    assert_eq!(code, 0, "verify of the untouched store: {out}{err}");
    // A statement changed inside its predicate and re-signed with the key:
    // its signature and subject are fine, only a rebuild can tell.
    let st = Store::open_existing(&a.store).unwrap();
    let n = rewrite_statements(&st, &a.img.digest, PRED_SLSA, &a.key_pem, &|stmt| {
        stmt["predicate"]["runDetails"]["builder"]["id"] = json!("https://attacker.example/builder");
    });
    assert!(n >= 1, "no SLSA provenance found to rewrite");
    moat_ok(
        &a.home,
        &a.store,
        &["verify-attestation", "signed-busybox", "--key", s(&a.public), "--type", "slsaprovenance"],
    );
    let (code, out, err) = verify(&a.store);
    assert_eq!(code, 1, "moat verify accepted a provenance the rebuild does not reproduce: {out}{err}");
    assert!(format!("{out}{err}").to_lowercase().contains("provenance"), "{out}{err}");
}

// ---------------------------------------------------------------- moat run

const TRUST: &str = "\n[trust]\nkeys = [\"keys/release.pub\"]\nrequire_signature = true\n";

/// `moat run --rm --policy P IMAGE -- echo ran` in the world: (success, stdout, stderr).
fn run_in(w: &sandbox_common::World, policy: &Path, image: &str) -> (bool, String, String) {
    let o = w.run(&["run", "--rm", "--policy", s(policy), image, "--", "echo", "ran"]);
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

fn refused(r: (bool, String, String), what: &str, words: &[&str]) {
    let (ok, out, err) = r;
    assert!(!ok && !out.contains("ran"), "{what}: ran anyway\nstdout: {out}\nstderr: {err}");
    let low = err.to_lowercase();
    assert!(words.iter().any(|w| low.contains(w)), "{what}: the refusal names none of {words:?}: {err}");
    assert!(!err.contains("panicked"), "{what}: {err}");
}

#[test]
fn run_enforces_the_trust_policy() {
    let w = sandbox_common::World::new();
    let dir = w.dir.path();
    let (home, store) = (w.home(), w.store());
    let keys = |n: &str| {
        let d = dir.join(format!("keygen-{n}"));
        moat_ok(&home, &store, &["key", "generate", "--out", s(&d)]);
        d
    };
    let (release, unknown) = (keys("release"), keys("unknown"));
    std::fs::create_dir_all(dir.join("keys")).unwrap();
    std::fs::copy(release.join("cosign.pub"), dir.join("keys/release.pub")).unwrap();
    let small = std::fs::read_to_string(sandbox_common::small_policy(dir)).unwrap();
    let sig_policy = dir.join("trust-signature.toml");
    std::fs::write(&sig_policy, format!("{small}{TRUST}")).unwrap();
    let prov_policy = dir.join("trust-provenance.toml");
    std::fs::write(&prov_policy, format!("{small}{TRUST}require_provenance = true\n")).unwrap();

    let (bp, img) = build_busybox(&dir.join("bp"), &home, &store);
    let st = Store::open_existing(&store).unwrap();
    let bb = "signed-busybox";
    let key = |d: &Path| d.join("cosign.key").to_str().unwrap().to_string();

    refused(run_in(&w, &sig_policy, bb), "unsigned", &["unsigned", "signature", "not signed"]);
    moat_ok(&home, &store, &["sign", bb, "--key", &key(&unknown)]);
    refused(run_in(&w, &sig_policy, bb), "unknown key", &["key", "signature"]);
    for t in [tag_sig(&img.digest), tag_referrers(&img.digest)] {
        st.remove_ref(&t).unwrap();
    }
    moat_ok(&home, &store, &["sign", bb, "--key", &key(&release)]);
    let (ok, out, err) = run_in(&w, &sig_policy, bb);
    assert!(ok && out.contains("ran"), "the signed image did not run:\nstdout: {out}\nstderr: {err}");

    // The release key's signature of busybox, copied onto the probe image.
    let probe = st.resolve(&w.image).unwrap().manifest;
    for (from, to) in
        [(tag_sig(&img.digest), tag_sig(&probe.digest)), (tag_referrers(&img.digest), tag_referrers(&probe.digest))]
    {
        st.set_ref(&to, ref_of(&st, &from).unwrap()).unwrap();
    }
    refused(run_in(&w, &sig_policy, &w.image), "signature of another image", &["digest", "subject", "signature"]);
    for t in [tag_sig(&probe.digest), tag_referrers(&probe.digest)] {
        st.remove_ref(&t).unwrap();
    }

    // Provenance required: signed but not attested is refused; attested runs.
    refused(run_in(&w, &prov_policy, bb), "no provenance", &["provenance", "attest"]);
    moat_ok(&home, &store, &["attest", bb, "--key", &key(&release), "--blueprint", s(&bp)]);
    let (ok, out, err) = run_in(&w, &prov_policy, bb);
    assert!(ok && out.contains("ran"), "the signed, attested image did not run:\nstdout: {out}\nstderr: {err}");

    // The probe, properly signed, with busybox's provenance copied onto it
    // (the attestation image and the attestation referrers).
    moat_ok(&home, &store, &["sign", &w.image, "--key", &key(&release)]);
    let (ok, out, err) = run_in(&w, &sig_policy, &w.image);
    assert!(ok && out.contains("ran"), "the signed probe did not run:\nstdout: {out}\nstderr: {err}");
    st.set_ref(&tag_att(&probe.digest), ref_of(&st, &tag_att(&img.digest)).expect("an attestation image")).unwrap();
    refused(
        run_in(&w, &prov_policy, &w.image),
        "provenance (.att) of another image",
        &["provenance", "about", "subject"],
    );
    let mut idx = json_blob(&st, &ref_of(&st, &tag_referrers(&probe.digest)).unwrap().digest);
    for e in json_blob(&st, &ref_of(&st, &tag_referrers(&img.digest)).unwrap().digest)["manifests"].as_array().unwrap()
    {
        let m = json_blob(&st, &digest_of(e));
        let b = json_blob(&st, &digest_of(&m["layers"][0]));
        if envelope_statement(&b["dsseEnvelope"])["predicateType"] != PRED_SIGN {
            idx["manifests"].as_array_mut().unwrap().push(e.clone());
        }
    }
    put_named(&st, &tag_referrers(&probe.digest), moat_builder::oci::MEDIA_INDEX, &idx);
    refused(run_in(&w, &prov_policy, &w.image), "provenance (referrers) of another image", &["provenance", "subject"]);
    assert_eq!(w.ok(&["ls", "--json"]).trim(), "[]", "refused runs leave no record");
}

/// Anyone who can push to an image's referrers tag can add a referrer about
/// another image (or one without the predicate annotation): the image's real
/// signature must still verify, and the stray one must not count.
#[test]
fn a_stray_referrer_does_not_hide_a_valid_signature() {
    let t = signed();
    let st = &t.st;
    let d = &t.img.digest;
    // The signature bundle of `demo`, attached to `other`, then its referrer
    // entry copied into demo's referrers index.
    let bundle = {
        let r = referrers(st, d);
        let layer = &r[0]["layers"][0];
        st.read_blob(&digest_of(layer)).unwrap()
    };
    put_referrer_bundle(st, &t.other, &bundle);
    let stray = json_blob(st, &ref_of(st, &tag_referrers(&t.other.digest)).unwrap().digest)["manifests"][0].clone();
    let name = tag_referrers(d);
    let mut idx = json_blob(st, &ref_of(st, &name).unwrap().digest);
    idx["manifests"].as_array_mut().unwrap().insert(0, stray);
    put_named(st, &name, moat_builder::oci::MEDIA_INDEX, &idx);
    // The classic signature is gone: only the bundle can hold now.
    st.remove_ref(&tag_sig(d)).unwrap();
    let out = moat_ok(&t.home, &t.store, &["verify-signature", "demo", "--key", s(&t.public)]);
    assert!(out.contains("referrer"), "verified through the bundle: {out}");
    // And on `other`, the copied bundle (a statement about demo) is refused.
    let err = moat_refused(&t.home, &t.store, &["verify-signature", "other", "--key", s(&t.public)]);
    assert!(err.contains(&d.hex()[..12]) || err.contains("not this image"), "{err}");
}
