//! Independent oracles for moat's signing tests (tests/signing.rs,
//! tests/signing_interop.rs): openssl (P-256 keys, ECDSA over cosign's
//! payloads and DSSE's PAE), the npm packages of this directory
//! (@sigstore/verify, @sigstore/sign, cosign's key file) installed with
//! `npm ci`, curl against the registry's HTTP API, and writers of cosign's
//! and OCI 1.1's layouts straight into a store. Threat: signing code that is
//! only ever checked against itself (a format or crypto mistake that moat's
//! signer and verifier share passes every self-test).
#![allow(dead_code)]
use moat_builder::digest::Digest;
use moat_builder::oci::{Descriptor, MEDIA_INDEX, MEDIA_MANIFEST};
use moat_builder::Store;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;

pub const MT_SIMPLESIGNING: &str = "application/vnd.dev.cosign.simplesigning.v1+json";
pub const MT_DSSE: &str = "application/vnd.dsse.envelope.v1+json";
pub const MT_BUNDLE: &str = "application/vnd.dev.sigstore.bundle.v0.3+json";
pub const MT_EMPTY: &str = "application/vnd.oci.empty.v1+json";
pub const MT_INTOTO: &str = "application/vnd.in-toto+json";
pub const ANN_SIGNATURE: &str = "dev.cosignproject.cosign/signature";
pub const PRED_SIGN: &str = "https://sigstore.dev/cosign/sign/v1";
pub const PRED_SLSA: &str = "https://slsa.dev/provenance/v1";
pub const PRED_SPDX: &str = "https://spdx.dev/Document";
pub const STATEMENT_V1: &str = "https://in-toto.io/Statement/v1";
/// The password every key of these tests is encrypted with.
pub const PASSWORD: &str = "correct horse battery staple";

/// A path as the `&str` a command line takes.
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// What moat says of a classic signature that does not verify.
pub const NOT_VERIFIED: &str =
    "the signature does not verify with a trusted key (payload or signature changed, or another key)";

/// Fails the test (never skips) when a tool is missing.
pub fn need(bin: &str) {
    let found =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file())).unwrap_or(false);
    assert!(found, "{bin} is not installed: run scripts/install-deps.sh (as root) first");
}

/// Runs a command: (exit code, stdout, stderr).
pub fn run(mut c: Command) -> (i32, String, String) {
    let out: Output = c.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("spawn {c:?}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn run_ok_bytes(mut c: Command) -> Vec<u8> {
    let dbg = format!("{c:?}");
    let out = c.stdin(Stdio::null()).output().unwrap_or_else(|e| panic!("spawn {dbg}: {e}"));
    assert!(out.status.success(), "{dbg} failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    out.stdout
}

// ---------------------------------------------------------------- moat

/// `moat --store STORE ARGS` with its own MOAT_HOME and the test password.
pub fn moat(home: &Path, store: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_moat"));
    c.arg("--store")
        .arg(store)
        .args(args)
        .env("MOAT_HOME", home)
        .env("HOME", home)
        .env("MOAT_KEY_PASSWORD", PASSWORD)
        .env_remove("MOAT_STORE")
        .env_remove("DOCKER_CONFIG")
        .env_remove("RUST_LOG");
    c
}

/// Runs moat and asserts exit 0; returns stdout.
pub fn moat_ok(home: &Path, store: &Path, args: &[&str]) -> String {
    let (code, out, err) = run(moat(home, store, args));
    assert_eq!(code, 0, "moat {args:?} failed ({code}):\nstdout: {out}\nstderr: {err}");
    out
}

/// Runs moat and asserts exit 1 (a refusal, not a crash); returns stderr.
pub fn moat_refused(home: &Path, store: &Path, args: &[&str]) -> String {
    let (code, out, err) = run(moat(home, store, args));
    assert_eq!(code, 1, "moat {args:?} should exit 1 (refused), got {code}:\nstdout: {out}\nstderr: {err}");
    assert!(!err.contains("panicked"), "moat {args:?} panicked: {err}");
    err
}

// ---------------------------------------------------------------- encodings

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn b64(bytes: &[u8]) -> String {
    let mut s = String::new();
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                s.push(B64[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// Decodes standard base64 (padding optional); panics on other input.
pub fn unb64(s: &str) -> Vec<u8> {
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0);
    for ch in s.bytes().filter(|&b| b != b'=') {
        let v = B64.iter().position(|&x| x == ch).unwrap_or_else(|| panic!("not base64: {s:?}")) as u32;
        acc = acc << 6 | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    out
}

pub fn sha256(bytes: &[u8]) -> Vec<u8> {
    Sha256::digest(bytes).to_vec()
}

/// DSSE v1 pre-authentication encoding.
pub fn pae(payload_type: &str, payload: &[u8]) -> Vec<u8> {
    let mut v = format!("DSSEv1 {} {} {} ", payload_type.len(), payload_type, payload.len()).into_bytes();
    v.extend_from_slice(payload);
    v
}

// ---------------------------------------------------------------- openssl

/// A P-256 key pair made by openssl: (private PKCS#8 PEM, public SPKI PEM).
pub fn openssl_keypair(dir: &Path, name: &str) -> (PathBuf, PathBuf) {
    need("openssl");
    std::fs::create_dir_all(dir).unwrap();
    let (k, p) = (dir.join(format!("{name}.pem")), dir.join(format!("{name}.pub")));
    let mut c = Command::new("openssl");
    c.args(["genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out"]).arg(&k);
    run_ok_bytes(c);
    let mut c = Command::new("openssl");
    c.args(["pkey", "-pubout", "-in"]).arg(&k).arg("-out").arg(&p);
    run_ok_bytes(c);
    (k, p)
}

/// DER ECDSA signature over SHA-256 of `data`, by openssl.
pub fn openssl_sign(key: &Path, data: &[u8]) -> Vec<u8> {
    let tmp = tempfile::tempdir().unwrap();
    let f = tmp.path().join("data");
    std::fs::write(&f, data).unwrap();
    let mut c = Command::new("openssl");
    c.args(["dgst", "-sha256", "-sign"]).arg(key).arg(&f);
    run_ok_bytes(c)
}

/// `openssl dgst -sha256 -verify PUB -signature SIG DATA`: Ok, or openssl's words.
pub fn openssl_verify(public: &Path, sig: &[u8], data: &[u8]) -> Result<(), String> {
    need("openssl");
    let tmp = tempfile::tempdir().unwrap();
    let (s, d) = (tmp.path().join("sig"), tmp.path().join("data"));
    std::fs::write(&s, sig).unwrap();
    std::fs::write(&d, data).unwrap();
    let mut c = Command::new("openssl");
    c.args(["dgst", "-sha256", "-verify"]).arg(public).arg("-signature").arg(&s).arg(&d);
    let (code, out, err) = run(c);
    if code == 0 && out.contains("Verified OK") {
        Ok(())
    } else {
        Err(format!("openssl: {out}{err}"))
    }
}

/// The public key's SPKI DER (openssl), whatever PEM form the file has.
pub fn spki_der(public: &Path) -> Vec<u8> {
    let mut c = Command::new("openssl");
    c.args(["pkey", "-pubin", "-outform", "DER", "-in"]).arg(public);
    run_ok_bytes(c)
}

/// The key hint moat writes into bundles: base64(sha256(SPKI DER)).
pub fn key_hint(public: &Path) -> String {
    b64(&sha256(&spki_der(public)))
}

// ---------------------------------------------------------------- npm oracle

#[path = "../common/npm_ci.rs"]
mod npm_ci;

/// The oracle's node_modules: `npm ci --ignore-scripts` of this directory's
/// package-lock.json into a directory of this test process (once).
pub fn oracle_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        need("node");
        need("npm");
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("sign-oracle-{}", std::process::id()));
        let files = ["package.json", "package-lock.json", "verify_bundle.js", "sign_bundle.js", "cosign_key.js"];
        npm_ci::install("sign_oracle", &files, dir)
    })
}

fn node(args: &[&str]) -> Command {
    let mut c = Command::new("node");
    c.current_dir(oracle_dir()).args(args);
    c
}

/// @sigstore/verify on a bundle with one trusted public key, offline
/// (verify_bundle.js): Ok(its report) or Err(why).
pub fn sigstore_verify(
    bundle: &Path,
    public: &Path,
    subject: Option<&Digest>,
    predicate: Option<&str>,
) -> Result<String, String> {
    let mut c = node(&["verify_bundle.js"]);
    c.arg(bundle).arg(public);
    if let Some(d) = subject {
        c.arg("--subject").arg(d.to_string());
    }
    if let Some(p) = predicate {
        c.arg("--predicate-type").arg(p);
    }
    let (code, out, err) = run(c);
    if code == 0 {
        Ok(out)
    } else {
        Err(err)
    }
}

/// A bundle v0.3 over `statement` signed with `key` (PEM): by @sigstore/sign
/// (`by_sigstore_sign`) or by node's crypto alone.
pub fn sigstore_sign(by_sigstore_sign: bool, key: &Path, statement: &[u8]) -> Vec<u8> {
    let tmp = tempfile::tempdir().unwrap();
    let st = tmp.path().join("statement.json");
    std::fs::write(&st, statement).unwrap();
    let mut c = node(&["sign_bundle.js", if by_sigstore_sign { "--sigstore-sign" } else { "--by-hand" }]);
    c.arg(key).arg(&st);
    run_ok_bytes(c)
}

/// Encrypts a PEM private key into cosign's key file (cosign_key.js).
pub fn cosign_key_from_pem(pem: &Path, out: &Path) {
    let mut c = node(&["cosign_key.js", "encrypt"]);
    c.arg(pem).env("COSIGN_PASSWORD", PASSWORD);
    std::fs::write(out, run_ok_bytes(c)).unwrap();
}

/// Decrypts cosign's key file independently: Ok({"kdf":..,"pem":..}) or Err(why).
pub fn cosign_key_decrypt(key: &Path) -> Result<Value, String> {
    let mut c = node(&["cosign_key.js", "decrypt"]);
    c.arg(key).env("COSIGN_PASSWORD", PASSWORD);
    let (code, out, err) = run(c);
    if code == 0 {
        Ok(serde_json::from_str(&out).unwrap())
    } else {
        Err(err)
    }
}

/// An openssl key pair plus the same private key in cosign's file format
/// (for moat): (private PEM, public PEM, cosign.key).
pub fn cosign_keypair(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let (k, p) = openssl_keypair(dir, name);
    let ck = dir.join(format!("{name}.key"));
    cosign_key_from_pem(&k, &ck);
    (k, p, ck)
}

// ---------------------------------------------------------------- documents

/// cosign's simple-signing payload for `digest`.
pub fn simple_signing(reference: &str, digest: &Digest) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "critical": {
            "identity": {"docker-reference": reference},
            "image": {"docker-manifest-digest": digest.to_string()},
            "type": "cosign container image signature"
        },
        "optional": null
    }))
    .unwrap()
}

/// An in-toto v1 statement about `digest`.
pub fn statement(name: &str, digest: &Digest, predicate_type: &str, predicate: Value) -> Vec<u8> {
    serde_json::to_vec(&json!({
        "_type": STATEMENT_V1,
        "subject": [{"name": name, "digest": {"sha256": digest.hex()}}],
        "predicateType": predicate_type,
        "predicate": predicate
    }))
    .unwrap()
}

/// A DSSE envelope (JSON) over `payload`, signed by openssl with `key`.
pub fn dsse_envelope(key: &Path, payload: &[u8], keyid: &str) -> Value {
    let sig = openssl_sign(key, &pae(MT_INTOTO, payload));
    json!({"payloadType": MT_INTOTO, "payload": b64(payload), "signatures": [{"keyid": keyid, "sig": b64(&sig)}]})
}

// ---------------------------------------------------------------- store

pub fn tag_sig(d: &Digest) -> String {
    format!("sha256-{}.sig", d.hex())
}
pub fn tag_att(d: &Digest) -> String {
    format!("sha256-{}.att", d.hex())
}
pub fn tag_referrers(d: &Digest) -> String {
    format!("sha256-{}", d.hex())
}

/// The index.json entry named `name`, if any.
pub fn ref_of(store: &Store, name: &str) -> Option<Descriptor> {
    store.images().unwrap().into_iter().find(|i| i.name == name).map(|i| i.manifest)
}

/// Every (name, blob bytes) of the store: index.json plus each blob.
pub fn store_bytes(root: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut m = BTreeMap::new();
    m.insert("index.json".into(), std::fs::read(root.join("index.json")).unwrap());
    for e in std::fs::read_dir(root.join("blobs/sha256")).unwrap() {
        let e = e.unwrap();
        m.insert(e.file_name().into_string().unwrap(), std::fs::read(e.path()).unwrap());
    }
    m
}

pub fn json_blob(store: &Store, d: &Digest) -> Value {
    serde_json::from_slice(&store.read_blob(d).unwrap()).unwrap()
}

pub fn digest_of(v: &Value) -> Digest {
    Digest::parse(v["digest"].as_str().unwrap_or_else(|| panic!("no digest in {v}"))).unwrap()
}

/// Stores `bytes`; returns a descriptor JSON for it.
pub fn put(store: &Store, media_type: &str, bytes: &[u8]) -> Value {
    let d = store.put_blob(bytes).unwrap();
    json!({"mediaType": media_type, "digest": d.to_string(), "size": bytes.len()})
}

/// Stores a manifest or index (JSON) and names it `name` in index.json.
pub fn put_named(store: &Store, name: &str, media_type: &str, doc: &Value) -> Descriptor {
    let bytes = serde_json::to_vec(doc).unwrap();
    let d = store.put_blob(&bytes).unwrap();
    let desc = Descriptor {
        media_type: media_type.into(),
        digest: d,
        size: bytes.len() as u64,
        annotations: BTreeMap::new(),
        platform: None,
    };
    store.set_ref(name, desc.clone()).unwrap();
    desc
}

/// Writes a classic cosign signature image for `image` (`sha256-HEX.sig`):
/// one simple-signing layer carrying `sig` in its annotation.
pub fn put_classic_sig(store: &Store, image: &Digest, payload: &[u8], sig: &[u8]) -> Descriptor {
    let mut layer = put(store, MT_SIMPLESIGNING, payload);
    layer["annotations"] = json!({ ANN_SIGNATURE: b64(sig) });
    // The config cosign writes: its rootfs names the layer.
    let config = json!({
        "architecture": "", "os": "", "created": "0001-01-01T00:00:00Z",
        "history": [{"created": "0001-01-01T00:00:00Z"}],
        "rootfs": {"type": "layers", "diff_ids": [layer["digest"].clone()]},
        "config": {}
    });
    let config = put(store, "application/vnd.oci.image.config.v1+json", &serde_json::to_vec(&config).unwrap());
    let m = json!({"schemaVersion": 2, "mediaType": MEDIA_MANIFEST, "config": config, "layers": [layer]});
    put_named(store, &tag_sig(image), MEDIA_MANIFEST, &m)
}

/// Attaches `bundle` to `image` as an OCI 1.1 referrer and adds it to the
/// referrers tag fallback (`sha256-HEX`), keeping what the tag held.
pub fn put_referrer_bundle(store: &Store, image: &Descriptor, bundle: &[u8]) {
    let empty = put(store, MT_EMPTY, b"{}");
    let layer = put(store, MT_BUNDLE, bundle);
    // The annotations cosign (and actions/attest) put on a bundle referrer.
    let b: Value = serde_json::from_slice(bundle).unwrap();
    let annotations = json!({
        "dev.sigstore.bundle.content": "dsse-envelope",
        "dev.sigstore.bundle.predicateType": envelope_statement(&b["dsseEnvelope"])["predicateType"].clone()
    });
    let m = json!({
        "schemaVersion": 2, "mediaType": MEDIA_MANIFEST, "artifactType": MT_BUNDLE,
        "config": empty, "layers": [layer],
        "subject": {"mediaType": image.media_type, "digest": image.digest.to_string(), "size": image.size},
        "annotations": annotations
    });
    let bytes = serde_json::to_vec(&m).unwrap();
    let mut entry = put(store, MEDIA_MANIFEST, &bytes);
    entry["artifactType"] = json!(MT_BUNDLE);
    entry["annotations"] = annotations;
    let name = tag_referrers(&image.digest);
    let mut idx = match ref_of(store, &name) {
        Some(d) => json_blob(store, &d.digest),
        None => json!({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": []}),
    };
    idx["manifests"].as_array_mut().unwrap().push(entry);
    put_named(store, &name, MEDIA_INDEX, &idx);
}

/// The referrer manifests (JSON) the referrers tag of `image` lists.
pub fn referrers(store: &Store, image: &Digest) -> Vec<Value> {
    let Some(idx) = ref_of(store, &tag_referrers(image)) else { return Vec::new() };
    json_blob(store, &idx.digest)["manifests"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| json_blob(store, &digest_of(m)))
        .collect()
}

/// The statement inside a DSSE envelope (JSON).
pub fn envelope_statement(env: &Value) -> Value {
    serde_json::from_slice(&unb64(env["payload"].as_str().unwrap())).unwrap()
}

/// Rewrites every attested statement of `image` whose predicateType is
/// `predicate_type`, in the attestation image (`sha256-HEX.att`) and in the
/// referrer bundles: `edit` changes the statement, which is re-signed with
/// `key` (so every signature stays valid). Returns how many it rewrote.
pub fn rewrite_statements(
    store: &Store,
    image: &Digest,
    predicate_type: &str,
    key: &Path,
    edit: &dyn Fn(&mut Value),
) -> usize {
    let mut n = 0;
    let mut resign = |env: &Value| -> Option<Value> {
        let mut st = envelope_statement(env);
        if st["predicateType"] != predicate_type {
            return None;
        }
        edit(&mut st);
        n += 1;
        let keyid = env["signatures"][0]["keyid"].as_str().unwrap_or("").to_string();
        Some(dsse_envelope(key, &serde_json::to_vec(&st).unwrap(), &keyid))
    };
    // The attestation image.
    if let Some(att) = ref_of(store, &tag_att(image)) {
        let mut m = json_blob(store, &att.digest);
        let mut replaced = Vec::new();
        for layer in m["layers"].as_array_mut().unwrap() {
            let env: Value = json_blob(store, &digest_of(layer));
            if let Some(new) = resign(&env) {
                let d = put(store, MT_DSSE, &serde_json::to_vec(&new).unwrap());
                replaced
                    .push((layer["digest"].as_str().unwrap().to_string(), d["digest"].as_str().unwrap().to_string()));
                layer["digest"] = d["digest"].clone();
                layer["size"] = d["size"].clone();
            }
        }
        // cosign's config names the layers in rootfs.diff_ids.
        let cfg = String::from_utf8(store.read_blob(&digest_of(&m["config"])).unwrap()).unwrap();
        let cfg = replaced.iter().fold(cfg, |c, (old, new)| c.replace(old, new));
        let mt = m["config"]["mediaType"].as_str().unwrap().to_string();
        m["config"] = put(store, &mt, cfg.as_bytes());
        put_named(store, &tag_att(image), &att.media_type, &m);
    }
    // The referrer bundles.
    if let Some(idx_ref) = ref_of(store, &tag_referrers(image)) {
        let mut idx = json_blob(store, &idx_ref.digest);
        for entry in idx["manifests"].as_array_mut().unwrap() {
            let mut m = json_blob(store, &digest_of(entry));
            let mut changed = false;
            for layer in m["layers"].as_array_mut().unwrap() {
                let mut bundle = json_blob(store, &digest_of(layer));
                if let Some(new) = resign(&bundle["dsseEnvelope"]) {
                    bundle["dsseEnvelope"] = new;
                    let d = put(store, MT_BUNDLE, &serde_json::to_vec(&bundle).unwrap());
                    layer["digest"] = d["digest"].clone();
                    layer["size"] = d["size"].clone();
                    changed = true;
                }
            }
            if changed {
                let d = put(store, MEDIA_MANIFEST, &serde_json::to_vec(&m).unwrap());
                entry["digest"] = d["digest"].clone();
                entry["size"] = d["size"].clone();
            }
        }
        put_named(store, &tag_referrers(image), MEDIA_INDEX, &idx);
    }
    n
}

// ---------------------------------------------------------------- registry

/// GET http://ADDR/v2/REPO/{manifests|blobs}/REF with curl (the plain HTTP API).
pub fn curl_get(addr: &str, repo: &str, kind: &str, reference: &str, accept: &str) -> Vec<u8> {
    need("curl");
    let mut c = Command::new("curl");
    c.args(["-sSfL", "-H"]).arg(format!("Accept: {accept}")).arg(format!("http://{addr}/v2/{repo}/{kind}/{reference}"));
    run_ok_bytes(c)
}

// ---------------------------------------------------------------- blueprint

/// A blueprint whose image runs (static busybox, passwd) and builds offline
/// in a fraction of a second: writes DIR/bb.toml and its tree; returns the path.
pub fn busybox_blueprint(dir: &Path) -> PathBuf {
    assert!(
        Path::new("/bin/busybox").is_file(),
        "missing /bin/busybox: install busybox-static (scripts/install-deps.sh)"
    );
    let root = dir.join("root");
    for d in ["bin", "etc", "sandbox", "tmp"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    std::fs::copy("/bin/busybox", root.join("bin/busybox")).unwrap();
    for a in ["sh", "echo", "true", "cat"] {
        std::os::unix::fs::symlink("busybox", root.join("bin").join(a)).unwrap();
    }
    std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\nsandbox:x:1000:1000::/sandbox:/bin/sh\n")
        .unwrap();
    std::fs::write(root.join("etc/group"), "root:x:0:\nsandbox:x:1000:\n").unwrap();
    let bp = dir.join("bb.toml");
    std::fs::write(
        &bp,
        "name = \"signed-busybox\"\nepoch = 1700000000\n[[layer]]\nname = \"root\"\n[[layer.entry]]\npath = \"root\"\ndest = \"/\"\n[users]\nsandbox = { uid = 1000 }\n[config]\ncmd = [\"/bin/sh\"]\n",
    )
    .unwrap();
    bp
}

/// Locks and builds the busybox blueprint in DIR into `store`: (blueprint, image descriptor).
pub fn build_busybox(dir: &Path, home: &Path, store: &Path) -> (PathBuf, Descriptor) {
    let bp = busybox_blueprint(dir);
    let out = moat_ok(home, store, &["lock", bp.to_str().unwrap()]);
    assert!(out.trim().starts_with("signed-busybox@sha256:"), "{out}");
    let s = Store::open_existing(store).unwrap();
    let img = s.resolve("signed-busybox").unwrap().manifest;
    (bp, img)
}
