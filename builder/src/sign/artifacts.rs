//! Where signatures and attestations live in the store, in the layouts cosign
//! and OCI 1.1 registries use, for an image whose manifest is sha256:HEX:
//! `sha256-HEX.sig` (cosign's classic signature image: simple-signing
//! payloads, the signature in a layer annotation), `sha256-HEX.att` (DSSE
//! envelopes, one layer per predicate type) and `sha256-HEX` (the OCI 1.1
//! referrers tag fallback: an index of referrer manifests, each holding one
//! Sigstore bundle and naming the image as its `subject`). All are ordinary
//! index entries, so skopeo reads them, `gc` keeps them and `push` sends
//! them. Guards against a partial write (each is named only once whole,
//! through `Store::set_ref`) and oversized artifacts (every read bounded).
#![forbid(unsafe_code)]
use super::bundle::MEDIA_BUNDLE;
use super::payload::{ANNOTATION_SIGNATURE, MEDIA_SIMPLE_SIGNING};
use crate::digest::Digest;
use crate::oci::{Descriptor, Index, Manifest, MEDIA_CONFIG, MEDIA_INDEX, MEDIA_MANIFEST};
use crate::store::{Store, StoreError};
use serde_json::json;
use std::collections::BTreeMap;

/// Media type of a DSSE envelope layer in a `.att` image.
pub const MEDIA_DSSE: &str = "application/vnd.dsse.envelope.v1+json";
/// Layer annotation of a `.att` image naming the statement's predicate type.
pub const ANNOTATION_PREDICATE: &str = "predicateType";
/// Annotation of a bundle referrer naming its statement's predicate type (cosign's).
pub const ANNOTATION_BUNDLE_PREDICATE: &str = "dev.sigstore.bundle.predicateType";
/// Annotation of a bundle referrer naming what it carries (cosign's).
pub const ANNOTATION_BUNDLE_CONTENT: &str = "dev.sigstore.bundle.content";
/// OCI 1.1 empty descriptor (the config of an artifact manifest).
pub const MEDIA_EMPTY: &str = "application/vnd.oci.empty.v1+json";
/// Largest `.sig`/`.att` manifest or referrers index read.
const MAX_MANIFEST: u64 = 4 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("image store")]
    Store(#[from] StoreError),
    #[error("{what} is {size} bytes, more than the {max} bytes moat reads")]
    TooLarge { what: String, size: u64, max: u64 },
    #[error("{what}: {msg}")]
    Malformed { what: String, msg: String },
}

type Result<T> = std::result::Result<T, ArtifactError>;

/// `sha256-HEX.sig`: the classic signature image's name.
pub fn sig_tag(d: &Digest) -> String {
    format!("sha256-{}.sig", d.hex())
}
/// `sha256-HEX.att`: the attestation image's name.
pub fn att_tag(d: &Digest) -> String {
    format!("sha256-{}.att", d.hex())
}
/// `sha256-HEX`: the referrers index's name (OCI 1.1 tag fallback).
pub fn referrers_tag(d: &Digest) -> String {
    format!("sha256-{}", d.hex())
}
/// Whether a store name is one of these artifacts rather than an image.
pub fn is_artifact_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("sha256-") else { return false };
    let hex = rest.strip_suffix(".sig").or_else(|| rest.strip_suffix(".att")).unwrap_or(rest);
    hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())
}

/// One classic signature: the payload and the raw signature annotation.
#[derive(Debug, Clone)]
pub struct ClassicSignature {
    pub layer: usize,
    pub payload: Vec<u8>,
    /// Standard base64 of the DER signature, as stored.
    pub signature: String,
}

/// One signed envelope or bundle with the predicate type its annotation names.
#[derive(Debug, Clone)]
pub struct Blob {
    pub what: String,
    pub predicate_type: String,
    pub bytes: Vec<u8>,
}

fn read_bounded(store: &Store, d: &Digest, what: &str, max: u64) -> Result<Vec<u8>> {
    let size = store.blob_size(d)?;
    if size > max {
        return Err(ArtifactError::TooLarge { what: what.into(), size, max });
    }
    Ok(store.read_blob(d)?)
}

fn read_manifest(store: &Store, name: &str) -> Result<Option<Manifest>> {
    let Some(desc) = store.get_ref(name)? else { return Ok(None) };
    let bytes = read_bounded(store, &desc.digest, name, MAX_MANIFEST)?;
    let m = serde_json::from_slice(&bytes)
        .map_err(|e| ArtifactError::Malformed { what: name.into(), msg: e.to_string() })?;
    Ok(Some(m))
}

/// Writes a cosign-style image (`.sig` or `.att`) of `layers` and names it.
/// Layers are sorted, so the same set gives the same bytes in any order.
fn put_image(store: &Store, name: &str, layers: Vec<Descriptor>) -> Result<Descriptor> {
    let m = image_manifest(store, layers)?;
    put_named(store, name, &m, MEDIA_MANIFEST)
}

/// The manifest of a cosign-style image of `layers` (sorted, each once),
/// its config written to the store.
fn image_manifest(store: &Store, mut layers: Vec<Descriptor>) -> Result<Manifest> {
    layers.sort_by(|a, b| (&a.digest, &a.annotations).cmp(&(&b.digest, &b.annotations)));
    layers.dedup();
    let diff_ids: Vec<String> = layers.iter().map(|l| l.digest.to_string()).collect();
    let config = json!({
        "architecture": "",
        "config": {},
        "os": "",
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    });
    let config = crate::cjson::to_vec(&config).map_err(StoreError::BadIndex)?;
    let config = layer(store, MEDIA_CONFIG, &config, BTreeMap::new())?;
    Ok(Manifest {
        schema_version: 2,
        media_type: Some(MEDIA_MANIFEST.into()),
        artifact_type: None,
        config,
        layers,
        annotations: BTreeMap::new(),
    })
}

/// The `.sig` or `.att` image holding the layers of both `ours` and
/// `theirs` (a registry's, with other signers' signatures): what a push
/// sends, so it adds to the registry's signatures instead of replacing
/// them (as cosign does). At most [`MAX_ENTRIES`] of theirs are kept.
/// Returns the manifest's bytes; its config is written to the store.
pub fn merged_image(store: &Store, ours: &[u8], theirs: &[u8]) -> Result<Vec<u8>> {
    let parse = |b: &[u8], what: &str| {
        serde_json::from_slice::<Manifest>(b)
            .map_err(|e| ArtifactError::Malformed { what: what.into(), msg: e.to_string() })
    };
    let (ours, theirs) =
        (parse(ours, "the store's signature image")?, parse(theirs, "the registry's signature image")?);
    let mut layers = ours.layers;
    layers.extend(theirs.layers.into_iter().take(MAX_ENTRIES));
    let m = image_manifest(store, layers)?;
    Ok(crate::cjson::to_vec(&m).map_err(StoreError::BadIndex)?)
}

fn put_named<T: serde::Serialize>(store: &Store, name: &str, doc: &T, media_type: &str) -> Result<Descriptor> {
    let bytes = crate::cjson::to_vec(doc).map_err(StoreError::BadIndex)?;
    let desc = layer(store, media_type, &bytes, BTreeMap::new())?;
    store.set_ref(name, desc.clone())?;
    Ok(desc)
}

/// Writes `bytes` as a blob; its descriptor.
fn layer(store: &Store, media_type: &str, bytes: &[u8], annotations: BTreeMap<String, String>) -> Result<Descriptor> {
    let mut d = Descriptor::new(media_type, store.put_blob(bytes)?, bytes.len() as u64);
    d.annotations = annotations;
    Ok(d)
}

/// Adds a classic signature of `subject` (kept beside the ones already there).
pub fn add_signature(store: &Store, subject: &Digest, payload: &[u8], signature: &str) -> Result<Descriptor> {
    let name = sig_tag(subject);
    let mut layers = read_manifest(store, &name)?.map(|m| m.layers).unwrap_or_default();
    let ann = BTreeMap::from([(ANNOTATION_SIGNATURE.to_string(), signature.to_string())]);
    layers.push(layer(store, MEDIA_SIMPLE_SIGNING, payload, ann)?);
    put_image(store, &name, layers)
}

/// Adds a DSSE envelope to `subject`'s attestations, replacing an older one
/// of the same predicate type.
pub fn add_attestation(store: &Store, subject: &Digest, envelope: &[u8], predicate_type: &str) -> Result<Descriptor> {
    let name = att_tag(subject);
    let mut layers = read_manifest(store, &name)?.map(|m| m.layers).unwrap_or_default();
    layers.retain(|l| l.annotations.get(ANNOTATION_PREDICATE).map(String::as_str) != Some(predicate_type));
    let ann = BTreeMap::from([(ANNOTATION_PREDICATE.to_string(), predicate_type.to_string())]);
    layers.push(layer(store, MEDIA_DSSE, envelope, ann)?);
    put_image(store, &name, layers)
}

/// Attaches a bundle to `subject` as an OCI 1.1 referrer and lists it in the
/// referrers index, replacing an older bundle of the same predicate type.
pub fn add_bundle(store: &Store, subject: &Descriptor, bundle: &[u8], predicate_type: &str) -> Result<Descriptor> {
    let empty = layer(store, MEDIA_EMPTY, b"{}", BTreeMap::new())?;
    let layer = layer(store, MEDIA_BUNDLE, bundle, BTreeMap::new())?;
    let annotations = json!({
        ANNOTATION_BUNDLE_CONTENT: "dsse-envelope",
        ANNOTATION_BUNDLE_PREDICATE: predicate_type,
    });
    let subject = json!({"mediaType": subject.media_type, "digest": subject.digest, "size": subject.size});
    let referrer = json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "artifactType": MEDIA_BUNDLE,
        "config": empty,
        "layers": [layer],
        "subject": subject,
        "annotations": annotations,
    });
    let bytes = crate::cjson::to_vec(&referrer).map_err(StoreError::BadIndex)?;
    let digest = store.put_blob(&bytes)?;
    let entry_json = json!({
        "mediaType": MEDIA_MANIFEST,
        "digest": digest,
        "size": bytes.len(),
        "artifactType": MEDIA_BUNDLE,
        "annotations": annotations,
    });
    let subject_digest = Digest::parse(subject["digest"].as_str().unwrap_or_default())
        .map_err(|e| ArtifactError::Malformed { what: "subject".into(), msg: e.to_string() })?;
    let name = referrers_tag(&subject_digest);
    let mut entries: Vec<serde_json::Value> = match store.get_ref(&name)? {
        Some(d) => {
            let raw = read_bounded(store, &d.digest, &name, MAX_MANIFEST)?;
            let v: serde_json::Value = serde_json::from_slice(&raw)
                .map_err(|e| ArtifactError::Malformed { what: name.clone(), msg: e.to_string() })?;
            v.get("manifests").and_then(|m| m.as_array()).cloned().unwrap_or_default()
        }
        None => Vec::new(),
    };
    entries.retain(|e| {
        e.pointer(&format!("/annotations/{}", ANNOTATION_BUNDLE_PREDICATE.replace('/', "~1"))).and_then(|v| v.as_str())
            != Some(predicate_type)
    });
    entries.push(entry_json);
    entries.sort_by(|a, b| a["digest"].as_str().cmp(&b["digest"].as_str()));
    entries.dedup();
    let index = json!({"schemaVersion": 2, "mediaType": MEDIA_INDEX, "manifests": entries});
    put_named(store, &name, &index, MEDIA_INDEX)?;
    Ok(Descriptor::new(MEDIA_MANIFEST, digest, bytes.len() as u64))
}

/// Signatures, envelopes or referrers read for one image at most (more are
/// ignored, with a note): a registry cannot make a check read without end.
pub const MAX_ENTRIES: usize = 64;
/// Bytes of signature data read for one image at most, all kinds together.
pub const MAX_TOTAL: u64 = 64 << 20;

/// Counts what one check reads against [`MAX_TOTAL`].
struct Budget(u64);

impl Budget {
    fn read(&mut self, store: &Store, d: &Digest, what: &str, max: u64) -> Result<Vec<u8>> {
        let bytes = read_bounded(store, d, what, max.min(MAX_TOTAL.saturating_sub(self.0)))?;
        self.0 += bytes.len() as u64;
        Ok(bytes)
    }
}

/// The layers of a cosign-style image of `media_type`, each digest once, at
/// most [`MAX_ENTRIES`].
fn layers_of(m: &Manifest, media_type: &str) -> Vec<(usize, Descriptor)> {
    let mut seen = std::collections::BTreeSet::new();
    m.layers
        .iter()
        .enumerate()
        .filter(|(_, l)| l.media_type == media_type && seen.insert((l.digest.clone(), l.annotations.clone())))
        .take(MAX_ENTRIES)
        .map(|(i, l)| (i, l.clone()))
        .collect()
}

/// The classic signatures of `subject` in the store.
pub fn signatures(store: &Store, subject: &Digest) -> Result<Vec<ClassicSignature>> {
    let Some(m) = read_manifest(store, &sig_tag(subject))? else { return Ok(Vec::new()) };
    let mut budget = Budget(0);
    let mut out = Vec::new();
    for (i, l) in layers_of(&m, MEDIA_SIMPLE_SIGNING) {
        let what = format!("{} layer {i}", sig_tag(subject));
        let payload = budget.read(store, &l.digest, &what, super::payload::MAX_PAYLOAD)?;
        let signature = l.annotations.get(ANNOTATION_SIGNATURE).cloned().unwrap_or_default();
        out.push(ClassicSignature { layer: i, payload, signature });
    }
    Ok(out)
}

/// The DSSE envelopes of `subject`'s `.att` image.
pub fn attestations(store: &Store, subject: &Digest) -> Result<Vec<Blob>> {
    let Some(m) = read_manifest(store, &att_tag(subject))? else { return Ok(Vec::new()) };
    let mut budget = Budget(0);
    let mut out = Vec::new();
    for (i, l) in layers_of(&m, MEDIA_DSSE) {
        let what = format!("{} layer {i}", att_tag(subject));
        let bytes = budget.read(store, &l.digest, &what, super::envelope::MAX_ENVELOPE)?;
        let predicate_type = l.annotations.get(ANNOTATION_PREDICATE).cloned().unwrap_or_default();
        out.push(Blob { what, predicate_type, bytes });
    }
    Ok(out)
}

/// The Sigstore bundles that refer to `subject`, from its referrers index,
/// and a note for each referrer that was not read (another subject,
/// malformed, missing, over the bounds): one bad referrer, which anyone who
/// can push to the tag can add, never hides the others.
pub fn bundles(store: &Store, subject: &Digest) -> Result<(Vec<Blob>, Vec<String>)> {
    let name = referrers_tag(subject);
    let Some(d) = store.get_ref(&name)? else { return Ok((Vec::new(), Vec::new())) };
    let raw = read_bounded(store, &d.digest, &name, MAX_MANIFEST)?;
    let index: Index = serde_json::from_slice(&raw)
        .map_err(|e| ArtifactError::Malformed { what: name.clone(), msg: e.to_string() })?;
    let (mut out, mut notes) = (Vec::new(), Vec::new());
    let mut budget = Budget(0);
    let mut seen = std::collections::BTreeSet::new();
    for r in &index.manifests {
        if !seen.insert(r.digest.clone()) {
            continue;
        }
        let what = format!("referrer {}", r.digest);
        if seen.len() > MAX_ENTRIES {
            notes.push(format!("{what}: more than {MAX_ENTRIES} referrers (ignored)"));
            break;
        }
        match referrer(store, subject, &r.digest, &what, &mut budget) {
            Ok(Some(blobs)) => out.extend(blobs),
            Ok(None) => {}
            Err(e) => notes.push(format!("{what}: {} (ignored)", crate::errors::chain(&e))),
        }
    }
    Ok((out, notes))
}

/// One referrer's bundles; None when it is another kind of artifact.
fn referrer(store: &Store, subject: &Digest, d: &Digest, what: &str, budget: &mut Budget) -> Result<Option<Vec<Blob>>> {
    let malformed = |msg: String| ArtifactError::Malformed { what: what.into(), msg };
    let raw = budget.read(store, d, what, MAX_MANIFEST)?;
    let v: serde_json::Value = serde_json::from_slice(&raw).map_err(|e| malformed(e.to_string()))?;
    if v.get("artifactType").and_then(|t| t.as_str()) != Some(MEDIA_BUNDLE) {
        return Ok(None);
    }
    if v.pointer("/subject/digest").and_then(|t| t.as_str()) != Some(&subject.to_string()) {
        let other = v.pointer("/subject/digest").and_then(|t| t.as_str()).unwrap_or("none");
        return Err(malformed(format!("its subject is {other}, not this image")));
    }
    let m: Manifest = serde_json::from_value(v).map_err(|e| malformed(e.to_string()))?;
    let predicate_type = m.annotations.get(ANNOTATION_BUNDLE_PREDICATE).cloned().unwrap_or_default();
    let mut out = Vec::new();
    for (_, l) in layers_of(&m, MEDIA_BUNDLE) {
        let bytes = budget.read(store, &l.digest, what, super::bundle::MAX_BUNDLE)?;
        out.push(Blob { what: what.into(), predicate_type: predicate_type.clone(), bytes });
    }
    Ok(Some(out))
}
