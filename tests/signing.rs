//! Signing refusals, reproducibility and enforcement (issue 23): tampered
//! signatures (a payload byte, the signature, an image re-pointed to another
//! digest, a wrong key) and a provenance statement about another digest are
//! refused with a message naming what failed; signing and attesting twice
//! gives the same bytes; `moat verify` catches an attested provenance that a
//! rebuild does not reproduce, even when its signature is valid; `moat run`
//! under a `[trust]` policy refuses unsigned, unknown-key, wrong-subject and
//! unattested images and runs the signed one, caching the pass privately
//! (0700/0600); a malformed referrer hides no valid signature; a `.sig` of
//! 10,000 layers or 200 referrers is read within MAX_ENTRIES and bounded
//! memory. Threat: a forged or replayed signature, or provenance copied from
//! another image, starting a sandbox; junk pushed next to a signature
//! hiding it or making a check read without end.
#[path = "sign_oracle/mod.rs"]
mod oracle;
#[path = "common/registry.rs"]
#[allow(dead_code)]
mod reg;
mod sandbox_common;

use moat_builder::digest::Digest;
use moat_builder::oci::{ANNOTATION_REF_NAME, MEDIA_MANIFEST};
use moat_builder::Store;
use oracle::*;
use serde_json::{json, Value};
use std::path::Path;

/// What moat says of a DSSE envelope (bundle or .att) that does not verify with the one key.
const ENVELOPE_NOT_VERIFIED: &str = "no signature in the envelope verifies with any of the 1 trusted key(s)";

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
    assert!(err.contains(&format!("{} layer 0: {NOT_VERIFIED}", tag_sig(d))), "payload byte: {err}");
    st.set_ref(&tag_sig(d), good.clone()).unwrap();

    // One byte of the signature.
    rewrite_classic(st, d, &|_, sig| {
        let i = sig.len() - 3;
        sig[i] ^= 0x01;
    });
    let err = verify();
    assert!(err.contains(&format!("{} layer 0: {NOT_VERIFIED}", tag_sig(d))), "signature byte: {err}");
    st.set_ref(&tag_sig(d), good.clone()).unwrap();
    moat_ok(&t.home, &t.store, &["verify-signature", "demo", "--key", s(&t.public)]);

    // A signature copied onto another image: valid, but about demo's digest.
    st.set_ref(&tag_sig(&t.other.digest), good.clone()).unwrap();
    let names_demo = format!("the signed payload names {d}, not this image");
    let err = moat_refused(&t.home, &t.store, &["verify-signature", "other", "--key", s(&t.public)]);
    assert!(err.contains(&names_demo), "re-pointed: {err}");
    // `demo` re-pointed to other's manifest: the signature (the one copied
    // there above) names the old digest.
    st.set_ref("demo", t.other.clone()).unwrap();
    let err = moat_refused(&t.home, &t.store, &["verify-signature", "demo", "--key", s(&t.public)]);
    assert!(err.contains(&names_demo) && err.contains(&t.other.digest.to_string()), "re-pointed: {err}");
    st.set_ref("demo", t.img.clone()).unwrap();

    // A wrong key.
    let (_, wrong) = openssl_keypair(&t.store.join("../wrong"), "wrong");
    let err = moat_refused(&t.home, &t.store, &["verify-signature", "demo", "--key", s(&wrong)]);
    assert!(err.contains(&format!("{} layer 0: {NOT_VERIFIED}", tag_sig(d))), "wrong key: {err}");
    // No signature at all.
    st.remove_ref(&tag_sig(d)).unwrap();
    let err = verify();
    assert!(err.contains(&format!("{d} is not signed")), "none: {err}");
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
    assert!(err.contains("referrer sha256:") && err.contains(ENVELOPE_NOT_VERIFIED), "payload byte: {err}");
    st.set_ref(&tag_referrers(d), good.clone()).unwrap();

    // One byte of the signature.
    rewrite_sign_bundles(st, d, &|b| {
        let mut sig = unb64(b["dsseEnvelope"]["signatures"][0]["sig"].as_str().unwrap());
        let i = sig.len() - 3;
        sig[i] ^= 0x01;
        b["dsseEnvelope"]["signatures"][0]["sig"] = json!(b64(&sig));
    });
    let err = verify();
    assert!(err.contains("referrer sha256:") && err.contains(ENVELOPE_NOT_VERIFIED), "signature byte: {err}");
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
        err.contains(&format!("the signed statement is about sha256:{other_hex}, not this image")),
        "statement about another digest: {err}"
    );
    st.set_ref(&tag_referrers(d), good.clone()).unwrap();
    moat_ok(&t.home, &t.store, &["verify-signature", "demo", "--key", s(&t.public)]);

    // The referrers copied onto another image.
    st.set_ref(&tag_referrers(&t.other.digest), good).unwrap();
    let err = moat_refused(&t.home, &t.store, &["verify-signature", "other", "--key", s(&t.public)]);
    assert!(err.contains(&format!("its subject is {d}, not this image")), "re-pointed: {err}");
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
        err.contains(&format!("the signed statement is about sha256:{sw}, not this image")),
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
    let said = format!("{out}{err}");
    assert!(
        said.contains("does not match what the lock gives now (first difference at /predicate/runDetails/builder/id)"),
        "{said}"
    );
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

/// Asserts the run was refused and its message holds every one of `reasons`
/// (the specific reasons the check gives, not just "signature:").
fn refused(r: (bool, String, String), what: &str, reasons: &[&str]) {
    let (ok, out, err) = r;
    assert!(!ok && !out.contains("ran"), "{what}: ran anyway\nstdout: {out}\nstderr: {err}");
    assert!(err.contains("is refused by the policy's [trust] section"), "{what}: not a [trust] refusal: {err}");
    for r in reasons {
        assert!(err.contains(r), "{what}: the refusal does not say {r:?}: {err}");
    }
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

    refused(run_in(&w, &sig_policy, bb), "unsigned", &[&format!("signature: {} is not signed", img.digest)]);
    moat_ok(&home, &store, &["sign", bb, "--key", &key(&unknown)]);
    refused(
        run_in(&w, &sig_policy, bb),
        "unknown key",
        &[&format!("{} layer 0: {NOT_VERIFIED}", tag_sig(&img.digest)), ENVELOPE_NOT_VERIFIED],
    );
    for t in [tag_sig(&img.digest), tag_referrers(&img.digest)] {
        st.remove_ref(&t).unwrap();
    }
    moat_ok(&home, &store, &["sign", bb, "--key", &key(&release)]);
    let (ok, out, err) = run_in(&w, &sig_policy, bb);
    assert!(ok && out.contains("ran"), "the signed image did not run:\nstdout: {out}\nstderr: {err}");

    // The pass is cached by (check version, digest, [trust]) in a private
    // directory: 0700, its entries 0600.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o7777;
    let cache = home.join("cache/trust");
    assert_eq!(mode(&cache), 0o700, "{} mode {:o}", cache.display(), mode(&cache));
    let entries: Vec<_> = std::fs::read_dir(&cache).unwrap().map(|e| e.unwrap().path()).collect();
    assert!(!entries.is_empty(), "no pass cached in {}", cache.display());
    for e in &entries {
        assert_eq!(mode(e), 0o600, "{} mode {:o}", e.display(), mode(e));
    }
    // A cached pass is for the digest (docs/signing.md: a later start costs
    // one stat), so removing the signature artifacts afterwards does not stop it.
    let saved: Vec<_> = [tag_sig(&img.digest), tag_referrers(&img.digest)]
        .into_iter()
        .map(|t| (ref_of(&st, &t).unwrap_or_else(|| panic!("no {t}")), t))
        .collect();
    for (_, t) in &saved {
        st.remove_ref(t).unwrap();
    }
    let (ok, out, err) = run_in(&w, &sig_policy, bb);
    assert!(ok && out.contains("ran"), "a cached pass did not hold:\nstdout: {out}\nstderr: {err}");
    for (d, t) in saved {
        st.set_ref(&t, d).unwrap();
    }

    // The release key's signature of busybox, copied onto the probe image.
    let probe = st.resolve(&w.image).unwrap().manifest;
    for (from, to) in
        [(tag_sig(&img.digest), tag_sig(&probe.digest)), (tag_referrers(&img.digest), tag_referrers(&probe.digest))]
    {
        st.set_ref(&to, ref_of(&st, &from).unwrap()).unwrap();
    }
    refused(
        run_in(&w, &sig_policy, &w.image),
        "signature of another image",
        &[
            &format!("{} layer 0: the signed payload names {}, not this image", tag_sig(&probe.digest), img.digest),
            &format!("its subject is {}, not this image", img.digest),
        ],
    );
    for t in [tag_sig(&probe.digest), tag_referrers(&probe.digest)] {
        st.remove_ref(&t).unwrap();
    }

    // Provenance required: signed but not attested is refused; attested runs.
    refused(
        run_in(&w, &prov_policy, bb),
        "no provenance",
        &[&format!("provenance: {} has no {PRED_SLSA} attestation", img.digest)],
    );
    moat_ok(&home, &store, &["attest", bb, "--key", &key(&release), "--blueprint", s(&bp)]);
    let (ok, out, err) = run_in(&w, &prov_policy, bb);
    assert!(ok && out.contains("ran"), "the signed, attested image did not run:\nstdout: {out}\nstderr: {err}");

    // The probe, properly signed, with busybox's provenance copied onto it
    // (the attestation image and the attestation referrers).
    moat_ok(&home, &store, &["sign", &w.image, "--key", &key(&release)]);
    let (ok, out, err) = run_in(&w, &sig_policy, &w.image);
    assert!(ok && out.contains("ran"), "the signed probe did not run:\nstdout: {out}\nstderr: {err}");
    st.set_ref(&tag_att(&probe.digest), ref_of(&st, &tag_att(&img.digest)).expect("an attestation image")).unwrap();
    // The .att was read, its signature held, and its statement was refused
    // for its subject (not "no attestation").
    let att = json_blob(&st, &ref_of(&st, &tag_att(&img.digest)).unwrap().digest);
    let slsa_layer = att["layers"]
        .as_array()
        .unwrap()
        .iter()
        .position(|l| l["annotations"]["predicateType"] == PRED_SLSA)
        .expect("a provenance layer in the .att");
    refused(
        run_in(&w, &prov_policy, &w.image),
        "provenance (.att) of another image",
        &[&format!(
            "{} layer {slsa_layer}: the signed statement is about sha256:{}, not this image",
            tag_att(&probe.digest),
            img.digest.hex()
        )],
    );
    st.remove_ref(&tag_att(&probe.digest)).unwrap();
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
    refused(
        run_in(&w, &prov_policy, &w.image),
        "provenance (referrers) of another image",
        &[&format!("its subject is {}, not this image", img.digest)],
    );
    // busybox's provenance bundle re-attached to the probe (a referrer whose
    // OCI subject is the probe): the signed statement inside still names busybox.
    let prov_bundle = referrers(&st, &img.digest)
        .into_iter()
        .map(|m| st.read_blob(&digest_of(&m["layers"][0])).unwrap())
        .find(|b| {
            envelope_statement(&serde_json::from_slice::<Value>(b).unwrap()["dsseEnvelope"])["predicateType"]
                == PRED_SLSA
        })
        .expect("busybox's provenance bundle");
    put_referrer_bundle(&st, &probe, &prov_bundle);
    refused(
        run_in(&w, &prov_policy, &w.image),
        "provenance bundle of another image re-attached",
        &[&format!("the signed statement is about sha256:{}, not this image", img.digest.hex())],
    );
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

/// Adds to `image`'s referrers index (before what it holds) a referrer
/// whose manifest blob is not JSON, and one whose bundle layer blob is
/// missing from the store: (their manifest digests).
fn put_malformed_referrers(st: &Store, image: &moat_builder::oci::Descriptor) -> (Digest, Digest) {
    let not_json = put(st, MEDIA_MANIFEST, b"{\"schemaVersion\": 2, \"layers\": [");
    let missing = Digest::of(b"a bundle nobody stored");
    let m = json!({
        "schemaVersion": 2, "mediaType": MEDIA_MANIFEST, "artifactType": MT_BUNDLE,
        "config": put(st, MT_EMPTY, b"{}"),
        "layers": [{"mediaType": MT_BUNDLE, "digest": missing.to_string(), "size": 1234}],
        "subject": {"mediaType": image.media_type, "digest": image.digest.to_string(), "size": image.size},
        "annotations": {"dev.sigstore.bundle.predicateType": PRED_SIGN}
    });
    let no_layer = put(st, MEDIA_MANIFEST, &serde_json::to_vec(&m).unwrap());
    let name = tag_referrers(&image.digest);
    let mut idx = match ref_of(st, &name) {
        Some(d) => json_blob(st, &d.digest),
        None => json!({"schemaVersion": 2, "mediaType": moat_builder::oci::MEDIA_INDEX, "manifests": []}),
    };
    for e in [&not_json, &no_layer] {
        let mut e = e.clone();
        e["artifactType"] = json!(MT_BUNDLE);
        e["annotations"] = json!({"dev.sigstore.bundle.predicateType": PRED_SIGN});
        idx["manifests"].as_array_mut().unwrap().insert(0, e);
    }
    // The store's own set_ref refuses to name an incomplete graph, so this
    // is what a store laid out by another tool (or a damaged one) holds:
    // index.json edited directly.
    let bytes = serde_json::to_vec(&idx).unwrap();
    let d = st.put_blob(&bytes).unwrap();
    let index_json = st.root().join("index.json");
    let mut top: Value = serde_json::from_slice(&std::fs::read(&index_json).unwrap()).unwrap();
    let entries = top["manifests"].as_array_mut().unwrap();
    entries.retain(|e| e["annotations"][ANNOTATION_REF_NAME] != name.as_str());
    entries.push(json!({"mediaType": moat_builder::oci::MEDIA_INDEX, "digest": d.to_string(), "size": bytes.len(),
        "annotations": {ANNOTATION_REF_NAME: name}}));
    std::fs::write(&index_json, serde_json::to_vec(&top).unwrap()).unwrap();
    (digest_of(&not_json), digest_of(&no_layer))
}

/// Anyone who can push to the referrers tag can add a referrer that is not
/// JSON, or one whose layer blob is missing: it is skipped with a note and
/// hides neither a valid classic signature nor a valid bundle.
#[test]
fn a_malformed_referrer_hides_neither_a_classic_signature_nor_a_bundle() {
    let t = signed();
    let (st, d) = (&t.st, &t.img.digest);
    let sig = ref_of(st, &tag_sig(d)).expect("a classic signature");
    let good_referrers = ref_of(st, &tag_referrers(d)).expect("a referrers tag");
    let (not_json, no_layer) = put_malformed_referrers(st, &t.img);
    let verify = |key: &Path| moat(&t.home, &t.store, &["verify-signature", "demo", "--key", s(key)]);

    // The bundle alone, after the two malformed referrers.
    st.remove_ref(&tag_sig(d)).unwrap();
    let (code, out, err) = run(verify(&t.public));
    assert_eq!(code, 0, "a malformed referrer hid the valid bundle:\n{out}{err}");
    assert!(out.contains("(referrer sha256:"), "verified through the bundle: {out}");

    // The classic signature alone, with only the malformed referrers left.
    st.set_ref(&tag_sig(d), sig).unwrap();
    st.remove_ref(&tag_referrers(d)).unwrap();
    put_malformed_referrers(st, &t.img);
    let (code, out, err) = run(verify(&t.public));
    assert_eq!(code, 0, "a malformed referrer hid the valid classic signature:\n{out}{err}");
    assert!(out.contains(&format!("({} layer 0)", tag_sig(d))), "verified through the .sig: {out}");

    // Under a wrong key the refusal names each malformed referrer as skipped.
    let (_, wrong) = openssl_keypair(&t.store.join("../wrong"), "wrong");
    let err = moat_refused(&t.home, &t.store, &["verify-signature", "demo", "--key", s(&wrong)]);
    for m in [&not_json, &no_layer] {
        assert!(err.contains(&format!("referrer {m}: ")), "{m} not named: {err}");
    }
    assert!(err.contains(&format!("{} layer 0: {NOT_VERIFIED}", tag_sig(d))), "{err}");
    assert_eq!(err.matches("(ignored)").count(), 2, "{err}");
    st.set_ref(&tag_referrers(d), good_referrers).unwrap();
}

/// `moat ARGS` under /usr/bin/time, killed after `limit`: (exit code,
/// stdout, stderr, max RSS in KiB, seconds). Exit 137 means killed.
fn moat_timed(home: &Path, store: &Path, args: &[&str], limit: std::time::Duration) -> (i32, String, String, u64, f64) {
    need("timeout");
    assert!(
        Path::new("/usr/bin/time").is_file(),
        "missing /usr/bin/time: install the time package (scripts/install-deps.sh)"
    );
    let inner = moat(home, store, args);
    let mut c = std::process::Command::new("timeout");
    c.args(["-s", "KILL", &format!("{}", limit.as_secs())])
        .args(["/usr/bin/time", "-f", "moat-test-maxrss-kib %M"])
        .arg(inner.get_program())
        .args(inner.get_args());
    for (k, v) in inner.get_envs() {
        match v {
            Some(v) => c.env(k, v),
            None => c.env_remove(k),
        };
    }
    let start = std::time::Instant::now();
    let (code, out, err) = run(c);
    let secs = start.elapsed().as_secs_f64();
    assert_ne!(code, 137, "moat {args:?} did not finish in {limit:?}");
    let rss = err
        .lines()
        .find_map(|l| l.strip_prefix("moat-test-maxrss-kib "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no max RSS from /usr/bin/time: {err}"));
    (code, out, err, rss, secs)
}

/// What a bounded check may use: well under what reading every listed
/// entry would take (10,000 x 64 KiB = 640 MiB for the .sig below).
const MAX_RSS_KIB: u64 = 200 << 10;

/// A `.sig` listing 10,000 layers over one 64 KiB payload, and a referrers
/// index with 200 referrers: moat reads at most 64 of each (MAX_ENTRIES)
/// and a bounded number of bytes, finishes in seconds, and says why it
/// refuses; a valid signature listed beyond the bound is not reached (the
/// price of the bound: junk pushed first can deny, never forge).
#[test]
fn signature_artifacts_listing_thousands_of_entries_are_read_within_bounds() {
    let t = signed();
    let (st, d) = (&t.st, &t.img.digest);
    let limit = std::time::Duration::from_secs(30);
    let verify = |key: &Path| moat_timed(&t.home, &t.store, &["verify-signature", "demo", "--key", s(key)], limit);
    let good_referrers = ref_of(st, &tag_referrers(d)).expect("a referrers tag");
    st.remove_ref(&tag_referrers(d)).unwrap();

    // A 64 KiB payload (simple-signing JSON, then spaces), signed by openssl.
    let mut payload = simple_signing("registry.example/moat/demo", d);
    payload.resize(64 << 10, b' ');
    let sig = b64(&openssl_sign(&t.key_pem, &payload));
    let one = put(st, MT_SIMPLESIGNING, &payload);
    let layer = |annotation: &str| {
        let mut l = one.clone();
        l["annotations"] = json!({ ANN_SIGNATURE: annotation });
        l
    };
    let config = put(st, "application/vnd.oci.image.config.v1+json", b"{}");
    let sig_manifest = |layers: Vec<Value>| {
        put_named(
            st,
            &tag_sig(d),
            MEDIA_MANIFEST,
            &json!({"schemaVersion": 2, "mediaType": MEDIA_MANIFEST, "config": config, "layers": layers}),
        )
    };

    // 10,000 copies of one valid layer: passes, reading the payload once.
    sig_manifest((0..10_000).map(|_| layer(&sig)).collect());
    let (code, out, err, rss, secs) = verify(&t.public);
    assert_eq!(code, 0, "10,000 copies of a valid signature: {out}{err}");
    assert!(rss < MAX_RSS_KIB, "10,000 copies of one layer: max RSS {rss} KiB ({secs:.1} s)");

    // 9,999 distinct bad signatures, then the valid one: refused after 64,
    // each named; the 10,000th is not reached.
    let mut layers: Vec<Value> = (0..9_999).map(|i| layer(&b64(format!("not a signature {i}").as_bytes()))).collect();
    layers.push(layer(&sig));
    sig_manifest(layers);
    let (code, out, err, rss, secs) = verify(&t.public);
    assert_eq!(code, 1, "the valid signature past the bound was used, or moat failed: {out}{err}");
    assert_eq!(err.matches(NOT_VERIFIED).count(), 64, "64 layers tried and named ({} bytes of stderr)", err.len());
    assert!(
        err.contains(&format!("{} layer 63: ", tag_sig(d))) && !err.contains(&format!("{} layer 64: ", tag_sig(d)))
    );
    assert!(rss < MAX_RSS_KIB, "10,000 distinct layers: max RSS {rss} KiB ({secs:.1} s)");
    st.remove_ref(&tag_sig(d)).unwrap();

    // 200 referrers (distinct manifests) whose bundle does not verify, then
    // the valid one: refused, the bound named.
    let good = json_blob(st, &good_referrers.digest)["manifests"][0].clone();
    let good_m = json_blob(st, &digest_of(&good));
    let mut bad_bundle = json_blob(st, &digest_of(&good_m["layers"][0]));
    let mut bsig = unb64(bad_bundle["dsseEnvelope"]["signatures"][0]["sig"].as_str().unwrap());
    let i = bsig.len() - 3;
    bsig[i] ^= 1;
    bad_bundle["dsseEnvelope"]["signatures"][0]["sig"] = json!(b64(&bsig));
    let bad_layer = put(st, MT_BUNDLE, &serde_json::to_vec(&bad_bundle).unwrap());
    let mut entries: Vec<Value> = (0..200)
        .map(|i| {
            let mut m = good_m.clone();
            m["layers"][0] = bad_layer.clone();
            m["annotations"]["org.example.n"] = json!(i.to_string());
            let mut e = put(st, MEDIA_MANIFEST, &serde_json::to_vec(&m).unwrap());
            e["artifactType"] = good["artifactType"].clone();
            e["annotations"] = good["annotations"].clone();
            e
        })
        .collect();
    entries.push(good);
    put_named(
        st,
        &tag_referrers(d),
        moat_builder::oci::MEDIA_INDEX,
        &json!({"schemaVersion": 2, "mediaType": moat_builder::oci::MEDIA_INDEX, "manifests": entries}),
    );
    let (code, out, err, rss, secs) = verify(&t.public);
    assert_eq!(code, 1, "the valid bundle past the bound was used, or moat failed: {out}{err}");
    assert!(err.contains("more than 64 referrers (ignored)"), "the bound is not named: {err}");
    assert_eq!(err.matches(ENVELOPE_NOT_VERIFIED).count(), 64, "64 referrers tried and named: {err}");
    assert!(rss < MAX_RSS_KIB, "200 referrers: max RSS {rss} KiB ({secs:.1} s)");

    // The index as moat sign wrote it: passes.
    st.set_ref(&tag_referrers(d), good_referrers).unwrap();
    moat_ok(&t.home, &t.store, &["verify-signature", "demo", "--key", s(&t.public)]);
}
