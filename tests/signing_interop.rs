//! Signing interop (issue 23): independent verifiers accept what moat signs
//! (openssl on the classic cosign signature pulled back from a real
//! docker-registry, @sigstore/verify on the Sigstore bundles, offline with one
//! trusted key; cosign's key file decrypted by another implementation), and
//! moat accepts what others sign (an openssl signature in cosign's layout, a
//! @sigstore/sign bundle, a cosign key file made elsewhere). Threat: a
//! signature format only moat can read, or a verifier that only accepts
//! moat's own mistakes.
#[path = "sign_oracle/mod.rs"]
mod oracle;
#[path = "common/registry.rs"]
#[allow(dead_code)]
mod reg;

use moat_builder::digest::Digest;
use moat_builder::Store;
use oracle::*;
use serde_json::Value;
use std::path::Path;

/// The oracle itself first: it accepts a bundle that neither moat nor
/// sigstore-js made (node crypto by hand) and one @sigstore/sign made, and
/// refuses a changed payload, another key, another subject and the default
/// thresholds' demand for a transparency log. Without this the oracle could
/// be the thing that always says yes.
#[test]
fn the_sigstore_oracle_verifies_offline_with_a_key_and_refuses_what_it_should() {
    let tmp = tempfile::tempdir().unwrap();
    let (key, public) = openssl_keypair(tmp.path(), "k");
    let (_, other_pub) = openssl_keypair(tmp.path(), "other");
    let subject = Digest::of(b"some image manifest");
    let st = statement("img", &subject, PRED_SIGN, serde_json::json!({}));
    for by_sigstore_sign in [false, true] {
        let bundle = sigstore_sign(by_sigstore_sign, &key, &st);
        let b: Value = serde_json::from_slice(&bundle).unwrap();
        assert_eq!(b["mediaType"], MT_BUNDLE);
        assert_eq!(b["verificationMaterial"]["publicKey"]["hint"], key_hint(&public).as_str());
        let f = tmp.path().join("bundle.json");
        std::fs::write(&f, &bundle).unwrap();
        let ok = sigstore_verify(&f, &public, Some(&subject), Some(PRED_SIGN));
        assert!(ok.is_ok(), "by_sigstore_sign={by_sigstore_sign}: {ok:?}");

        let err = sigstore_verify(&f, &other_pub, None, None).unwrap_err();
        assert!(err.contains("key not found"), "another key: {err}");
        let err = sigstore_verify(&f, &public, Some(&Digest::of(b"other")), None).unwrap_err();
        assert!(err.contains("no statement subject"), "another subject: {err}");
        let err = sigstore_verify(&f, &public, None, Some(PRED_SLSA)).unwrap_err();
        assert!(err.contains("predicateType"), "another predicate type: {err}");

        let mut t = b.clone();
        let mut p = unb64(t["dsseEnvelope"]["payload"].as_str().unwrap());
        let i = p.len() - 5;
        p[i] ^= 1;
        t["dsseEnvelope"]["payload"] = b64(&p).into();
        std::fs::write(&f, serde_json::to_vec(&t).unwrap()).unwrap();
        let err = sigstore_verify(&f, &public, None, None).unwrap_err();
        assert!(err.contains("SIGNATURE_ERROR"), "changed payload byte: {err}");
    }
    // The same verifier with @sigstore/verify's default thresholds refuses a
    // bundle without a transparency-log entry: the thresholds are what makes
    // it work offline, and they are set in verify_bundle.js.
    let js = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/sign_oracle/verify_bundle.js"))
        .unwrap();
    assert!(js.contains("tlogThreshold: 0, ctlogThreshold: 0, tsaThreshold: 0"));
    let bundle = tmp.path().join("bundle.json");
    std::fs::write(&bundle, sigstore_sign(false, &key, &st)).unwrap();
    let probe = format!(
        "const {{bundleFromJSON}}=require('@sigstore/bundle');const {{Verifier,toSignedEntity,toTrustMaterial}}=require('@sigstore/verify');\
         const c=require('crypto'),fs=require('fs');const spki=c.createPublicKey(fs.readFileSync('{}')).export({{type:'spki',format:'der'}});\
         const h=c.createHash('sha256').update(spki).digest('base64');\
         const v=new Verifier(toTrustMaterial({{certificateAuthorities:[],timestampAuthorities:[],tlogs:[],ctlogs:[]}},{{[h]:{{rawBytes:spki}}}}));\
         try{{v.verify(toSignedEntity(bundleFromJSON(JSON.parse(fs.readFileSync('{}')))));console.log('accepted')}}catch(e){{console.log(e.message)}}",
        s(&public),
        s(&bundle)
    );
    let mut c = std::process::Command::new("node");
    c.current_dir(oracle_dir()).args(["-e", &probe]);
    let (_, out, err) = run(c);
    assert!(out.contains("expected 1 tlog timestamps, got 0"), "default thresholds: {out}{err}");
}

/// `moat key generate` writes cosign's formats: the private key decrypts with
/// an independent implementation to the P-256 key whose public half is
/// cosign.pub, and the file is 0600.
#[test]
fn a_generated_key_is_cosigns_format() {
    let tmp = tempfile::tempdir().unwrap();
    let (home, store, keys) = (tmp.path().join("home"), tmp.path().join("store"), tmp.path().join("keys"));
    moat_ok(&home, &store, &["key", "generate", "--out", s(&keys)]);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(keys.join("cosign.key")).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "cosign.key mode {mode:o}");
    let text = std::fs::read_to_string(keys.join("cosign.key")).unwrap();
    assert!(text.starts_with("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n"), "{text}");
    let dec = cosign_key_decrypt(&keys.join("cosign.key")).unwrap_or_else(|e| panic!("independent decrypt: {e}"));
    let pem = tmp.path().join("dec.pem");
    std::fs::write(&pem, dec["pem"].as_str().unwrap()).unwrap();
    let pub_from_private = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-outform", "DER", "-in"])
        .arg(&pem)
        .output()
        .unwrap()
        .stdout;
    assert!(!pub_from_private.is_empty(), "openssl could not read the decrypted key");
    assert_eq!(pub_from_private, spki_der(&keys.join("cosign.pub")), "cosign.pub is not the private key's public half");
    let pub_text = std::fs::read_to_string(keys.join("cosign.pub")).unwrap();
    assert!(pub_text.starts_with("-----BEGIN PUBLIC KEY-----\n"), "{pub_text}");
    // A wrong password is refused, naming the password (not a crash).
    let st = Store::open(&store).unwrap();
    reg::make_image(&st, "demo", 3, 4096, false);
    let (code, _, err) = run({
        let mut c = moat(&home, &store, &["sign", "demo", "--key", s(&keys.join("cosign.key"))]);
        c.env("MOAT_KEY_PASSWORD", "wrong");
        c
    });
    assert_ne!(code, 0, "signing with a wrong password succeeded");
    let low = err.to_lowercase();
    assert!(!err.contains("panicked") && (low.contains("password") || low.contains("decrypt")), "{err}");
    assert!(ref_of(&st, &tag_sig(&st.resolve("demo").unwrap().manifest.digest)).is_none(), "signed anyway");
}

/// moat sign + push; the classic signature fetched back from the registry
/// with curl verifies with openssl, and the referrer bundle fetched the
/// same way verifies with @sigstore/verify.
#[test]
fn openssl_and_sigstore_verify_accept_what_moat_signed_and_pushed() {
    let r = reg::Registry::plain();
    let tmp = tempfile::tempdir().unwrap();
    let (home, store, keys) = (tmp.path().join("home"), tmp.path().join("store"), tmp.path().join("keys"));
    let st = Store::open(&store).unwrap();
    let img = reg::make_image(&st, "demo", 7, 64 << 10, true);
    moat_ok(&home, &store, &["key", "generate", "--out", s(&keys)]);
    let public = keys.join("cosign.pub");
    moat_ok(&home, &store, &["sign", "demo", "--key", s(&keys.join("cosign.key"))]);
    moat_ok(&home, &store, &["verify-signature", "demo", "--key", s(&public)]);
    let target = format!("{}/moat/demo:v1", r.addr);
    moat_ok(&home, &store, &["push", "demo", &target]);

    // The classic signature, as cosign would fetch it.
    let m: Value = serde_json::from_slice(&curl_get(
        &r.addr,
        "moat/demo",
        "manifests",
        &tag_sig(&img.digest),
        "application/vnd.oci.image.manifest.v1+json",
    ))
    .unwrap();
    let layers = m["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 1, "{m}");
    assert_eq!(layers[0]["mediaType"], MT_SIMPLESIGNING, "{m}");
    let payload = curl_get(&r.addr, "moat/demo", "blobs", layers[0]["digest"].as_str().unwrap(), "*/*");
    let sig = unb64(layers[0]["annotations"][ANN_SIGNATURE].as_str().unwrap_or_else(|| panic!("no signature: {m}")));
    openssl_verify(&public, &sig, &payload).unwrap_or_else(|e| panic!("openssl refused moat's signature: {e}"));
    let p: Value = serde_json::from_slice(&payload).unwrap();
    assert_eq!(p["critical"]["image"]["docker-manifest-digest"], img.digest.to_string(), "{p}");
    assert_eq!(p["critical"]["type"], "cosign container image signature", "{p}");

    // The referrers tag fallback and its bundle.
    let idx: Value = serde_json::from_slice(&curl_get(
        &r.addr,
        "moat/demo",
        "manifests",
        &tag_referrers(&img.digest),
        "application/vnd.oci.image.index.v1+json",
    ))
    .unwrap();
    let entries = idx["manifests"].as_array().unwrap();
    assert!(!entries.is_empty(), "empty referrers index: {idx}");
    let mut verified = 0;
    for e in entries {
        assert_eq!(e["artifactType"], MT_BUNDLE, "{idx}");
        let rm: Value = serde_json::from_slice(&curl_get(
            &r.addr,
            "moat/demo",
            "manifests",
            e["digest"].as_str().unwrap(),
            "application/vnd.oci.image.manifest.v1+json",
        ))
        .unwrap();
        assert_eq!(rm["subject"]["digest"], img.digest.to_string(), "{rm}");
        assert_eq!(rm["config"]["mediaType"], MT_EMPTY, "{rm}");
        assert_eq!(rm["artifactType"], MT_BUNDLE, "{rm}");
        let layer = &rm["layers"][0];
        assert_eq!(layer["mediaType"], MT_BUNDLE, "{rm}");
        let bundle = curl_get(&r.addr, "moat/demo", "blobs", layer["digest"].as_str().unwrap(), "*/*");
        let f = tmp.path().join("bundle.json");
        std::fs::write(&f, &bundle).unwrap();
        let out = sigstore_verify(&f, &public, Some(&img.digest), Some(PRED_SIGN))
            .unwrap_or_else(|e| panic!("@sigstore/verify refused moat's bundle: {e}"));
        assert!(out.contains("\"ok\":true"), "{out}");
        verified += 1;
    }
    assert_eq!(verified, 1, "one signature bundle expected among the referrers");

    // moat verifies against the registry, and at pull time.
    let pinned = format!("{}/moat/demo@{}", r.addr, img.digest);
    moat_ok(&home, &store, &["verify-signature", &pinned, "--key", s(&public)]);
    let fresh = tmp.path().join("fresh");
    moat_ok(&home, &fresh, &["pull", &pinned, "--verify-key", s(&public)]);
    let (_, other) = openssl_keypair(tmp.path(), "other");
    let err = moat_refused(&home, &store, &["verify-signature", &pinned, "--key", s(&other)]);
    assert!(err.contains(&format!("{} layer 0: {NOT_VERIFIED}", tag_sig(&img.digest))), "{err}");

    // A pull under another key is refused and changes nothing in the store:
    // no image, no signature artifacts, index.json and blobs as they were.
    let fresh2 = tmp.path().join("fresh2");
    let st2 = Store::open(&fresh2).unwrap();
    reg::make_image(&st2, "unrelated", 41, 4096, false);
    let before = store_bytes(&fresh2);
    let err = moat_refused(&home, &fresh2, &["pull", &pinned, "--verify-key", s(&other)]);
    assert!(err.contains(&format!("moat: pull {pinned}: ")) && err.contains("(nothing was pulled)"), "{err}");
    assert!(err.contains(NOT_VERIFIED), "{err}");
    let st2 = Store::open_existing(&fresh2).unwrap();
    let names: Vec<String> = st2.images().unwrap().into_iter().map(|i| i.name).collect();
    assert_eq!(names, ["unrelated"], "the refused pull named something");
    assert!(st2.resolve(&img.digest.to_string()).is_err(), "the refused image is in the store");
    let after = store_bytes(&fresh2);
    assert!(before == after, "the refused pull changed the store: {:?} -> {:?}", before.keys(), after.keys());
}

/// moat attest with a cosign key file made by the independent
/// implementation: the attestation image's DSSE envelopes verify with
/// openssl over DSSE's PAE, the bundles with @sigstore/verify, each naming
/// the image digest, for SLSA provenance and SPDX.
#[test]
fn moat_attests_with_a_foreign_cosign_key_and_others_verify_the_attestations() {
    let r = reg::Registry::plain();
    let tmp = tempfile::tempdir().unwrap();
    let (home, store) = (tmp.path().join("home"), tmp.path().join("store"));
    let (key_pem, public, cosign_key) = cosign_keypair(&tmp.path().join("keys"), "release");
    let (bp, img) = build_busybox(&tmp.path().join("bp"), &home, &store);
    moat_ok(&home, &store, &["sign", "signed-busybox", "--key", s(&cosign_key)]);
    moat_ok(&home, &store, &["attest", "signed-busybox", "--key", s(&cosign_key), "--blueprint", s(&bp)]);
    for t in ["slsaprovenance", "spdx"] {
        moat_ok(&home, &store, &["verify-attestation", "signed-busybox", "--key", s(&public), "--type", t]);
    }
    let _ = key_pem;
    moat_ok(&home, &store, &["push", "signed-busybox", &format!("{}/moat/bb:v1", r.addr)]);

    let m: Value = serde_json::from_slice(&curl_get(
        &r.addr,
        "moat/bb",
        "manifests",
        &tag_att(&img.digest),
        "application/vnd.oci.image.manifest.v1+json",
    ))
    .unwrap();
    let mut seen = Vec::new();
    for layer in m["layers"].as_array().unwrap() {
        assert_eq!(layer["mediaType"], MT_DSSE, "{m}");
        let env: Value =
            serde_json::from_slice(&curl_get(&r.addr, "moat/bb", "blobs", layer["digest"].as_str().unwrap(), "*/*"))
                .unwrap();
        assert_eq!(env["payloadType"], MT_INTOTO, "{env}");
        let payload = unb64(env["payload"].as_str().unwrap());
        let sigs = env["signatures"].as_array().unwrap();
        assert_eq!(sigs.len(), 1, "{env}");
        openssl_verify(&public, &unb64(sigs[0]["sig"].as_str().unwrap()), &pae(MT_INTOTO, &payload))
            .unwrap_or_else(|e| panic!("openssl refused the DSSE signature: {e}"));
        let st: Value = serde_json::from_slice(&payload).unwrap();
        assert_eq!(st["_type"], STATEMENT_V1, "{st}");
        assert_eq!(layer["annotations"]["predicateType"], st["predicateType"], "{m}");
        assert!(
            st["subject"].as_array().unwrap().iter().any(|s| s["digest"]["sha256"] == img.digest.hex()),
            "statement does not name the image: {st}"
        );
        seen.push(st["predicateType"].as_str().unwrap().to_string());
    }
    seen.sort();
    assert_eq!(seen, [PRED_SLSA, PRED_SPDX], "{m}");

    // The bundles: signature, provenance, SBOM, each verified by @sigstore/verify.
    let s2 = Store::open_existing(&store).unwrap();
    let mut kinds = Vec::new();
    for rm in referrers(&s2, &img.digest) {
        let bundle = s2.read_blob(&digest_of(&rm["layers"][0])).unwrap();
        let f = tmp.path().join("b.json");
        std::fs::write(&f, &bundle).unwrap();
        let b: Value = serde_json::from_slice(&bundle).unwrap();
        let pt = envelope_statement(&b["dsseEnvelope"])["predicateType"].as_str().unwrap().to_string();
        sigstore_verify(&f, &public, Some(&img.digest), Some(&pt))
            .unwrap_or_else(|e| panic!("@sigstore/verify refused moat's {pt} bundle: {e}"));
        kinds.push(pt);
    }
    kinds.sort();
    assert_eq!(kinds, [PRED_SIGN, PRED_SLSA, PRED_SPDX]);
    // Against the registry too.
    let pinned = format!("{}/moat/bb@{}", r.addr, img.digest);
    moat_ok(&home, &store, &["verify-attestation", &pinned, "--key", s(&public), "--type", "slsaprovenance"]);
}

/// A classic signature made by openssl in cosign's layout passes `moat
/// verify-signature`; so does a bundle @sigstore/sign made; neither passes
/// with another key.
#[test]
fn moat_verifies_signatures_others_made() {
    let tmp = tempfile::tempdir().unwrap();
    let (home, store) = (tmp.path().join("home"), tmp.path().join("store"));
    let (key, public) = openssl_keypair(&tmp.path().join("keys"), "k");
    let (_, other) = openssl_keypair(&tmp.path().join("keys"), "other");
    let st = Store::open(&store).unwrap();

    let a = reg::make_image(&st, "by-openssl", 11, 32 << 10, true);
    let payload = simple_signing("registry.example/moat/by-openssl", &a.digest);
    put_classic_sig(&st, &a.digest, &payload, &openssl_sign(&key, &payload));
    moat_ok(&home, &store, &["verify-signature", "by-openssl", "--key", s(&public)]);
    let err = moat_refused(&home, &store, &["verify-signature", "by-openssl", "--key", s(&other)]);
    assert!(err.contains(&format!("{} layer 0: {NOT_VERIFIED}", tag_sig(&a.digest))), "{err}");

    // @sigstore/sign can make a key-signed bundle offline: DSSEBundleBuilder
    // with our own Signer and no witnesses (sign_bundle.js).
    let b = reg::make_image(&st, "by-sigstore-js", 12, 32 << 10, true);
    let stmt = statement("by-sigstore-js", &b.digest, PRED_SIGN, serde_json::json!({}));
    put_referrer_bundle(&st, &b, &sigstore_sign(true, &key, &stmt));
    moat_ok(&home, &store, &["verify-signature", "by-sigstore-js", "--key", s(&public)]);
    let err = moat_refused(&home, &store, &["verify-signature", "by-sigstore-js", "--key", s(&other)]);
    assert!(
        err.contains("referrer sha256:")
            && err.contains("no signature in the envelope verifies with any of the 1 trusted key(s)"),
        "{err}"
    );

    // And one assembled by hand with node's crypto (keyid empty, tlogEntries []).
    let c = reg::make_image(&st, "by-hand", 13, 32 << 10, true);
    let stmt = statement("by-hand", &c.digest, PRED_SIGN, serde_json::json!({}));
    put_referrer_bundle(&st, &c, &sigstore_sign(false, &key, &stmt));
    moat_ok(&home, &store, &["verify-signature", "by-hand", "--key", s(&public)]);
}

/// A cosign key file made by another implementation, under both PEM headers
/// cosign has written ("ENCRYPTED SIGSTORE PRIVATE KEY", and cosign 1.x's
/// "ENCRYPTED COSIGN PRIVATE KEY"), signs with moat; openssl verifies the
/// result with the public key openssl derived.
#[test]
fn moat_signs_with_cosign_key_files_made_elsewhere() {
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let (_, public, sigstore_key) = cosign_keypair(&tmp.path().join("keys"), "k");
    let legacy = tmp.path().join("keys/legacy.key");
    std::fs::write(&legacy, std::fs::read_to_string(&sigstore_key).unwrap().replace("SIGSTORE", "COSIGN")).unwrap();
    for (i, key) in [&sigstore_key, &legacy].into_iter().enumerate() {
        let store = tmp.path().join(format!("store{i}"));
        let st = Store::open(&store).unwrap();
        let img = reg::make_image(&st, "demo", 40, 8 << 10, true);
        moat_ok(&home, &store, &["sign", "demo", "--key", s(key)]);
        let m = json_blob(&st, &ref_of(&st, &tag_sig(&img.digest)).expect("no .sig written").digest);
        let layer = &m["layers"][0];
        let payload = st.read_blob(&digest_of(layer)).unwrap();
        let sig = unb64(layer["annotations"][ANN_SIGNATURE].as_str().unwrap());
        openssl_verify(&public, &sig, &payload).unwrap_or_else(|e| panic!("{}: {e}", key.display()));
    }
}

/// Two signers push signatures of one image to one repository: the second
/// push adds to the registry's `.sig` (as cosign does), so both classic
/// signatures stay there, each verifiable by openssl alone.
#[test]
fn a_second_signer_adds_to_the_registrys_signatures_instead_of_replacing_them() {
    let r = reg::Registry::plain();
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let target = format!("{}/moat/shared:v1", r.addr);
    let mut publics = Vec::new();
    for who in ["alice", "bob"] {
        let (store, keys) = (tmp.path().join(format!("store-{who}")), tmp.path().join(format!("keys-{who}")));
        let st = Store::open(&store).unwrap();
        reg::make_image(&st, "shared", 9, 32 << 10, true);
        moat_ok(&home, &store, &["key", "generate", "--out", s(&keys)]);
        moat_ok(&home, &store, &["sign", "shared", "--key", s(&keys.join("cosign.key"))]);
        moat_ok(&home, &store, &["push", "shared", &target]);
        publics.push(keys.join("cosign.pub"));
    }
    let digest = {
        let st = Store::open(&tmp.path().join("store-alice")).unwrap();
        st.resolve("shared").unwrap().manifest.digest
    };
    let m: Value = serde_json::from_slice(&curl_get(
        &r.addr,
        "moat/shared",
        "manifests",
        &format!("sha256-{}.sig", digest.hex()),
        "application/vnd.oci.image.manifest.v1+json",
    ))
    .unwrap();
    let layers = m["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2, "both signers' signatures are in the registry: {m}");
    for public in &publics {
        let held = layers.iter().any(|l| {
            let sig = unb64(l["annotations"]["dev.cosignproject.cosign/signature"].as_str().unwrap());
            let payload = curl_get(&r.addr, "moat/shared", "blobs", l["digest"].as_str().unwrap(), "*/*");
            openssl_verify(public, &sig, &payload).is_ok()
        });
        assert!(held, "no classic signature in the registry verifies with {}", public.display());
    }
}
