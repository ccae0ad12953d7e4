//! Tests of cosign's key formats: round trips, keys cosign made (fixtures in
//! builder/tests/fixtures/cosign), openssl as an independent reader and
//! signer, and each way a hostile or broken file is refused.
use super::*;
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::Signature;
use std::fs;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn fixture(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/cosign").join(name);
    fs::read(&p).unwrap_or_else(|e| panic!("fixture {}: {e}", p.display()))
}

/// Runs openssl (failing the test, never skipping it, when it is missing).
fn openssl(args: &[&str], stdin: Option<&[u8]>) -> std::process::Output {
    let mut child = Command::new("openssl")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("openssl is not installed ({e}): run scripts/install-deps.sh (as root) first"));
    let input = stdin.unwrap_or_default().to_vec();
    let mut pipe = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let _ = pipe.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

fn openssl_ok(args: &[&str], stdin: Option<&[u8]>) -> Vec<u8> {
    let out = openssl(args, stdin);
    assert!(out.status.success(), "openssl {args:?} failed:\n{}", String::from_utf8_lossy(&out.stderr));
    out.stdout
}

/// The decoded JSON envelope of an encrypted key PEM.
fn envelope_of(pem: &str) -> serde_json::Value {
    let (label, body) = pem_block(pem.as_bytes()).unwrap();
    assert_eq!(label, SIGSTORE_PRIVATE_LABEL);
    serde_json::from_slice(&body).unwrap()
}

/// Re-wraps an edited envelope as an encrypted key PEM.
fn pem_of(envelope: &serde_json::Value) -> String {
    let json = serde_json::to_vec(envelope).unwrap();
    p256::pkcs8::der::pem::encode_string(SIGSTORE_PRIVATE_LABEL, p256::pkcs8::LineEnding::LF, &json).unwrap()
}

#[test]
fn generate_load_sign_verify_round_trip() {
    let (private, public) = generate(b"correct horse").unwrap();
    assert!(private.starts_with("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n"), "{private}");
    assert!(public.starts_with("-----BEGIN PUBLIC KEY-----\n") && public.ends_with("-----END PUBLIC KEY-----\n"));

    let signer = load_private(private.as_bytes(), b"correct horse").unwrap();
    let verifier = load_public(public.as_bytes()).unwrap();
    assert_eq!(signer.verifying_key(), &verifier);
    let sig: Signature = signer.sign(b"an image manifest");
    verifier.verify(b"an image manifest", &sig).unwrap();
    assert!(verifier.verify(b"another manifest", &sig).is_err());
    assert_eq!(public_pem(&verifier).unwrap(), public);

    // What every cosign version reads: scrypt N=2^15 r=8 p=1, 32-byte salt, 24-byte nonce.
    let e = envelope_of(&private);
    assert_eq!(e["kdf"]["name"], "scrypt");
    assert_eq!(e["kdf"]["params"], serde_json::json!({"N": 32768, "r": 8, "p": 1}));
    assert_eq!(STANDARD.decode(e["kdf"]["salt"].as_str().unwrap()).unwrap().len(), 32);
    assert_eq!(e["cipher"]["name"], "nacl/secretbox");
    assert_eq!(STANDARD.decode(e["cipher"]["nonce"].as_str().unwrap()).unwrap().len(), 24);

    // Fresh key, salt and nonce each time.
    let (private2, public2) = generate(b"correct horse").unwrap();
    assert_ne!(public, public2);
    let e2 = envelope_of(&private2);
    assert_ne!(e["kdf"]["salt"], e2["kdf"]["salt"]);
    assert_ne!(e["cipher"]["nonce"], e2["cipher"]["nonce"]);
}

#[test]
fn keys_cosign_made_are_read() {
    // policy-controller's example pair: cosign generate-key-pair, empty password, old label.
    let key = load_private(&fixture("policy-controller.key"), b"").unwrap();
    let public = load_public(&fixture("policy-controller.pub")).unwrap();
    assert_eq!(key.verifying_key(), &public, "derived public key differs from the fixture's cosign.pub");
    assert_eq!(public_pem(&public).unwrap().as_bytes(), fixture("policy-controller.pub"), "cosign.pub byte for byte");
    let sig: Signature = key.sign(b"payload");
    public.verify(b"payload", &sig).unwrap();

    // A newer cosign's key (SIGSTORE label, N=2^16), and cosign's own test key with a password.
    load_private(&fixture("sigstore-rs-empty-password.key"), b"").unwrap();
    let hello = load_private(&fixture("cosign-keys-test-hello.key"), b"hello").unwrap();
    let (label, _) = pem_block(&fixture("cosign-keys-test-hello.key")).unwrap();
    assert_eq!(label, SIGSTORE_PRIVATE_LABEL);
    // Its public key through openssl's eyes is the one we derive.
    let der = hello.to_pkcs8_der().unwrap();
    let openssl_pub = openssl_ok(&["pkey", "-inform", "DER", "-pubout"], Some(der.as_bytes()));
    assert_eq!(String::from_utf8(openssl_pub).unwrap(), public_pem(hello.verifying_key()).unwrap());

    assert!(matches!(load_private(&fixture("cosign-keys-test-hello.key"), b"hellO"), Err(KeyError::WrongPassword)));
    assert!(matches!(load_private(&fixture("policy-controller.key"), b"x"), Err(KeyError::WrongPassword)));
}

#[test]
fn cosigns_own_refusal_of_a_sec1_body_is_kept() {
    // cosign's test: this key decrypts, but to SEC1, not PKCS#8; cosign refuses it.
    let err = load_private(&fixture("cosign-keys-test-sec1-hello.key"), b"hello").unwrap_err();
    assert!(matches!(err, KeyError::Pkcs8), "{err:?}");
    assert!(err.to_string().contains("not a PKCS#8 private key"), "{err}");
}

/// go-securesystemslib's own test vectors for its `encrypted` package (MIT
/// licensed, encrypted/encrypted_test.go): passphrase "supersecret",
/// plaintext "reallyimportant", at each scrypt strength it writes.
#[test]
fn securesystemslib_vectors_decrypt() {
    let vectors = [
        r#"{"kdf":{"name":"scrypt","params":{"N":32768,"r":8,"p":1},"salt":"N9a7x5JFGbrtB2uBR81jPwp0eiLR4A7FV3mjVAQrg1g="},"cipher":{"name":"nacl/secretbox","nonce":"2h8HxMmgRfuYdpswZBQaU3xJ1nkA/5Ik"},"ciphertext":"SEW6sUh0jf2wfdjJGPNS9+bkk2uB+Cxamf32zR8XkQ=="}"#,
        r#"{"kdf":{"name":"scrypt","params":{"N":32768,"r":8,"p":1},"salt":"WO3mVvyTwJ9vwT5/Tk5OW5WPIBUofMjcpEfrLnfY4uA="},"cipher":{"name":"nacl/secretbox","nonce":"tCy7HcTFr4uxv4Nrg/DWmncuZ148U1MX"},"ciphertext":"08n43p5G5yviPEZpO7tPPF4aZQkWiWjkv4taFdhDBA0tamKH4nw="}"#,
        r#"{"kdf":{"name":"scrypt","params":{"N":65536,"r":8,"p":1},"salt":"FhzPOt9/bJG4PTq6lQ6ecG6GzaOuOy/ynG5+yRiFlNs="},"cipher":{"name":"nacl/secretbox","nonce":"aw1ng1jHaDz/tQ7V2gR9O2+IGQ8xJEuE"},"ciphertext":"HycvuLZL4sYH0BrYTh4E/H20VtAW6u5zL5Pr+IBjYLYnCPzDkq8="}"#,
        r#"{"kdf":{"name":"scrypt","params":{"N":131072,"r":8,"p":1},"salt":"m38E3kouJTtiheLQN22NQ8DTito5hrjpUIskqcd375k="},"cipher":{"name":"nacl/secretbox","nonce":"Y6PM13yA+o44pE/W1ZBwczeGnTV/m9Zc"},"ciphertext":"6H8sqj1K6B6yDjtH5AQ6lbFigg/C2yDDJc4rYJ79w9aVPImFIPI=","unknown":"ignored"}"#,
    ];
    let plain = |v: &str| open(v.as_bytes(), b"supersecret").map(|p| p.to_vec());
    // The first is the raw bytes; the other three were made by Marshal, which
    // encrypts the JSON of the byte string: a quoted base64 of it.
    assert_eq!(plain(vectors[0]).unwrap(), b"reallyimportant");
    let marshalled = format!("\"{}\"", STANDARD.encode(b"reallyimportant"));
    for v in &vectors[1..] {
        assert_eq!(plain(v).unwrap(), marshalled.as_bytes(), "{v}");
    }
    assert!(matches!(open(vectors[0].as_bytes(), b"supersecreT"), Err(KeyError::WrongPassword)));
    // And what seal writes, open reads.
    let sealed = seal(b"reallyimportant", b"supersecret").unwrap();
    assert_eq!(open(sealed.as_bytes(), b"supersecret").unwrap().as_slice(), b"reallyimportant");
}

#[test]
fn openssl_reads_the_public_key_and_checks_our_signature() {
    let t = tempfile::tempdir().unwrap();
    let (private, public) = generate(b"pw").unwrap();
    let key = load_private(private.as_bytes(), b"pw").unwrap();
    let (pub_pem, data, sig) = (t.path().join("pub.pem"), t.path().join("data"), t.path().join("sig"));
    fs::write(&pub_pem, &public).unwrap();
    fs::write(&data, b"the bytes a signature covers").unwrap();
    let signature: Signature = key.sign(b"the bytes a signature covers");
    fs::write(&sig, signature.to_der().as_bytes()).unwrap();

    openssl_ok(&["pkey", "-pubin", "-in", pub_pem.to_str().unwrap(), "-noout"], None);
    let out = openssl_ok(
        &["dgst", "-sha256", "-verify", pub_pem.to_str().unwrap(), "-signature", sig.to_str().unwrap()],
        Some(b"the bytes a signature covers"),
    );
    assert_eq!(String::from_utf8_lossy(&out).trim(), "Verified OK");
    // A changed payload fails openssl's check (the oracle can say no).
    let bad = openssl(
        &["dgst", "-sha256", "-verify", pub_pem.to_str().unwrap(), "-signature", sig.to_str().unwrap()],
        Some(b"other bytes"),
    );
    assert!(!bad.status.success());

    // key_id: base64 of SHA-256 over the DER openssl makes of the same key.
    let der = openssl_ok(&["pkey", "-pubin", "-in", pub_pem.to_str().unwrap(), "-outform", "DER"], None);
    assert_eq!(key_id(key.verifying_key()), STANDARD.encode(Sha256::digest(&der)));
    assert_eq!(
        p256::pkcs8::EncodePublicKey::to_public_key_der(key.verifying_key()).unwrap().as_bytes(),
        der.as_slice()
    );

    // The decrypted PKCS#8 is what openssl reads as this very key.
    let (_, body) = pem_block(private.as_bytes()).unwrap();
    let pkcs8 = open(&body, b"pw").unwrap();
    let openssl_pub = openssl_ok(&["pkey", "-inform", "DER", "-pubout"], Some(&pkcs8));
    assert_eq!(String::from_utf8(openssl_pub).unwrap(), public);
}

#[test]
fn keys_openssl_made_are_read_and_wrapped() {
    let t = tempfile::tempdir().unwrap();
    let key_pem = t.path().join("key.pem");
    let pkcs8 = openssl_ok(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"], None);
    fs::write(&key_pem, &pkcs8).unwrap();
    let public = openssl_ok(&["pkey", "-in", key_pem.to_str().unwrap(), "-pubout"], None);
    let verifier = load_public(&public).unwrap();

    // openssl signs, we verify.
    let sig = openssl_ok(&["dgst", "-sha256", "-sign", key_pem.to_str().unwrap()], Some(b"openssl signed this"));
    let sig = Signature::from_der(&sig).unwrap();
    verifier.verify(b"openssl signed this", &sig).unwrap();

    // openssl's PKCS#8, wrapped in cosign's envelope, loads as the same key.
    let der = openssl_ok(&["pkcs8", "-topk8", "-nocrypt", "-in", key_pem.to_str().unwrap(), "-outform", "DER"], None);
    let wrapped = encrypted_pem(&der, b"pw").unwrap();
    assert_eq!(load_private(wrapped.as_bytes(), b"pw").unwrap().verifying_key(), &verifier);
}

#[test]
fn other_algorithms_are_refused_by_name() {
    let cases = [
        (vec!["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-384"], "ECDSA on P-384"),
        (vec!["genpkey", "-algorithm", "ED25519"], "an Ed25519 key"),
        (vec!["genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"], "an RSA key"),
    ];
    for (args, name) in cases {
        let private = openssl_ok(&args, None);
        let public = openssl_ok(&["pkey", "-pubout"], Some(&private));
        let err = load_public(&public).unwrap_err();
        assert!(matches!(&err, KeyError::NotP256(n) if n == name), "{name}: {err:?}");
        assert!(err.to_string().contains("not ECDSA P-256"), "{err}");
        // The same key as cosign would wrap it (cosign can make Ed25519 and RSA keys).
        let der = openssl_ok(&["pkcs8", "-topk8", "-nocrypt", "-outform", "DER"], Some(&private));
        let err = load_private(encrypted_pem(&der, b"").unwrap().as_bytes(), b"").unwrap_err();
        assert!(matches!(&err, KeyError::NotP256(n) if n == name), "{name}: {err:?}");
    }
}

#[test]
fn wrong_password_is_a_clear_error_without_the_password() {
    let (private, _) = generate(b"right-password-7f3a").unwrap();
    let err = load_private(private.as_bytes(), b"wrong-password-9c1e").unwrap_err();
    assert!(matches!(err, KeyError::WrongPassword), "{err:?}");
    let shown = format!("{err} {err:?}");
    assert_eq!(err.to_string(), "wrong password or corrupt key");
    assert!(!shown.contains("password-7f3a") && !shown.contains("password-9c1e"), "{shown}");

    // A flipped ciphertext byte reads the same way: the box is authenticated.
    let mut e = envelope_of(&private);
    let mut ct = STANDARD.decode(e["ciphertext"].as_str().unwrap()).unwrap();
    ct[20] ^= 1;
    e["ciphertext"] = STANDARD.encode(&ct).into();
    let err = load_private(pem_of(&e).as_bytes(), b"right-password-7f3a").unwrap_err();
    assert!(matches!(err, KeyError::WrongPassword), "{err:?}");
}

#[test]
fn truncated_and_mistyped_pem_are_refused() {
    let (private, public) = generate(b"").unwrap();
    let half = &private.as_bytes()[..private.len() / 2];
    let err = load_private(half, b"").unwrap_err();
    assert!(matches!(err, KeyError::Pem(_)), "{err:?}");
    assert!(err.to_string().contains("truncated"), "{err}");

    // Lines cut out of the middle: the base64 still decodes, the JSON does not.
    let lines: Vec<&str> = private.lines().collect();
    let cut = [&lines[..2], &lines[lines.len() - 1..]].concat().join("\n");
    let err = load_private(cut.as_bytes(), b"").unwrap_err();
    assert!(matches!(err, KeyError::Malformed(_) | KeyError::Pem(_)), "{err:?}");

    let err = load_private(public.as_bytes(), b"").unwrap_err();
    assert!(matches!(&err, KeyError::WrongType { found, .. } if found == "PUBLIC KEY"), "{err:?}");
    let err = load_public(private.as_bytes()).unwrap_err();
    assert!(matches!(&err, KeyError::WrongType { expected: "PUBLIC KEY", .. }), "{err:?}");
    // An unencrypted private key is not what load_private reads.
    let plain = openssl_ok(&["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"], None);
    assert!(matches!(load_private(&plain, b""), Err(KeyError::WrongType { .. })));

    for junk in
        [&b""[..], b"no pem here", b"\xff\xfe binary", b"-----BEGIN PUBLIC KEY-----\n!!!!\n-----END PUBLIC KEY-----\n"]
    {
        assert!(matches!(load_public(junk), Err(KeyError::Pem(_))), "{junk:?}");
    }
    // Text around the block is ignored, as cosign (Go's pem.Decode) ignores it; CRLF too.
    let framed = format!("comment line\r\n{}\r\ntrailer\n", public.replace('\n', "\r\n"));
    load_public(framed.as_bytes()).unwrap();
    // A public key PEM whose body is not a SubjectPublicKeyInfo.
    let not_spki = "-----BEGIN PUBLIC KEY-----\nAAECAwQ=\n-----END PUBLIC KEY-----\n";
    assert!(matches!(load_public(not_spki.as_bytes()), Err(KeyError::Spki)));
    // A P-256 SubjectPublicKeyInfo whose point is not on the curve.
    let (_, mut der) = pem_block(public.as_bytes()).unwrap();
    *der.last_mut().unwrap() ^= 1;
    let off_curve = p256::pkcs8::der::pem::encode_string(PUBLIC_LABEL, p256::pkcs8::LineEnding::LF, &der).unwrap();
    assert!(matches!(load_public(off_curve.as_bytes()), Err(KeyError::Spki)));
}

#[test]
fn absurd_scrypt_parameters_are_refused_before_any_work() {
    let (private, _) = generate(b"").unwrap();
    let cases = [
        (1u64 << 30, 8u64, 1u64), // 128 GiB of scrypt memory
        (1 << 21, 8, 1),          // over N's bound
        (1 << 20, 16, 1),         // 2 GiB
        (1 << 20, 8, 16),         // work
        (1 << 15, 1 << 20, 1),    // r
        (1 << 15, 8, 1 << 20),    // p
        (1000, 8, 1),             // not a power of two
        (0, 8, 1),
        (1 << 15, 0, 1),
        (1 << 15, 8, 0),
        (u64::MAX, u64::MAX, u64::MAX),
    ];
    for (n, r, p) in cases {
        let mut e = envelope_of(&private);
        e["kdf"]["params"] = serde_json::json!({"N": n, "r": r, "p": p});
        let started = Instant::now();
        let err = load_private(pem_of(&e).as_bytes(), b"").unwrap_err();
        assert!(matches!(err, KeyError::ScryptBounds { .. }), "N={n} r={r} p={p}: {err:?}");
        assert!(started.elapsed() < Duration::from_secs(2), "N={n} r={r} p={p} ran scrypt before refusing");
        assert!(err.to_string().contains(&format!("N={n} r={r} p={p}")), "{err}");
    }
    // Negative or fractional numbers are malformed JSON for these fields.
    for params in [serde_json::json!({"N": -32768, "r": 8, "p": 1}), serde_json::json!({"N": 32768.5, "r": 8, "p": 1})]
    {
        let mut e = envelope_of(&private);
        e["kdf"]["params"] = params;
        assert!(matches!(load_private(pem_of(&e).as_bytes(), b""), Err(KeyError::Malformed(_))));
    }
}

#[test]
fn other_envelope_fields_are_bounded_and_checked() {
    let (private, _) = generate(b"").unwrap();
    let edit = |path: [&str; 2], value: serde_json::Value| {
        let mut e = envelope_of(&private);
        if path[1].is_empty() {
            e[path[0]] = value;
        } else {
            e[path[0]][path[1]] = value;
        }
        load_private(pem_of(&e).as_bytes(), b"").unwrap_err()
    };
    let long = STANDARD.encode(vec![7u8; 2048]);
    assert!(matches!(edit(["ciphertext", ""], long.clone().into()), KeyError::Malformed(_)));
    assert!(matches!(edit(["ciphertext", ""], "AAAA".into()), KeyError::Malformed(_)));
    assert!(matches!(edit(["ciphertext", ""], "not base64!".into()), KeyError::Malformed(_)));
    assert!(matches!(edit(["kdf", "salt"], long.into()), KeyError::Malformed(_)));
    assert!(matches!(edit(["cipher", "nonce"], STANDARD.encode([1u8; 23]).into()), KeyError::Malformed(_)));
    assert!(matches!(edit(["cipher", "nonce"], STANDARD.encode([1u8; 25]).into()), KeyError::Malformed(_)));
    assert!(matches!(edit(["kdf", "name"], "argon2".into()), KeyError::Unsupported { what: "key derivation", .. }));
    let err = edit(["cipher", "name"], "aes-gcm".into());
    assert!(matches!(err, KeyError::Unsupported { what: "cipher", .. }), "{err:?}");
    assert!(err.to_string().contains("\"aes-gcm\""), "{err}");
    assert!(matches!(edit(["kdf", ""], serde_json::Value::Null), KeyError::Malformed(_)));

    // Text over the bound is refused before it is parsed.
    let huge = format!("{private}{}", " ".repeat(MAX_KEY_FILE as usize));
    assert!(matches!(load_private(huge.as_bytes(), b""), Err(KeyError::TooLarge { .. })));
    assert!(matches!(load_public(huge.as_bytes()), Err(KeyError::TooLarge { .. })));
}

#[test]
fn key_files_are_read_with_a_bound() {
    let t = tempfile::tempdir().unwrap();
    let ok = t.path().join("cosign.pub");
    fs::write(&ok, b"small").unwrap();
    assert_eq!(read_key_file(&ok).unwrap(), b"small");

    // Sparse: 1 TiB claimed, nothing stored. Reading it whole (or sizing a
    // buffer by it) would abort the process; it must be refused unread.
    let big = t.path().join("big.key");
    fs::File::create(&big).unwrap().set_len(1 << 40).unwrap();
    let err = read_key_file(&big).unwrap_err();
    assert!(matches!(err, KeyError::FileTooLarge { size, .. } if size == 1 << 40), "{err:?}");
    let just_over = t.path().join("just-over.key");
    fs::write(&just_over, vec![b'A'; MAX_KEY_FILE as usize + 1]).unwrap();
    assert!(matches!(read_key_file(&just_over), Err(KeyError::FileTooLarge { .. })));
    let at_bound = t.path().join("at-bound.key");
    fs::write(&at_bound, vec![b'A'; MAX_KEY_FILE as usize]).unwrap();
    assert_eq!(read_key_file(&at_bound).unwrap().len(), MAX_KEY_FILE as usize);
    assert!(err.to_string().contains(&big.display().to_string()), "{err}");

    let missing = t.path().join("missing.key");
    let err = read_key_file(&missing).unwrap_err();
    assert!(matches!(err, KeyError::Read { .. }) && err.to_string().contains("missing.key"), "{err}");

    let err = read_key_file(Path::new("/dev/zero")).unwrap_err();
    assert!(matches!(err, KeyError::NotAFile { .. }), "{err:?}");
    let err = read_key_file(t.path()).unwrap_err();
    assert!(matches!(err, KeyError::NotAFile { .. } | KeyError::Read { .. }), "{err:?}");
}
