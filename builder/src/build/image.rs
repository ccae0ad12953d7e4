//! The image stage: the config (the base's, with the blueprint's settings,
//! the fixed PATH and one history entry per layer) and the manifest, both as
//! canonical JSON in the store. Guards the determinism contract: the only
//! time written is the blueprint's epoch, and map order cannot reach a digest.
#![forbid(unsafe_code)]
use super::{BuildError, Layer};
use crate::blueprint::{Loaded, FIXED_PATH};
use crate::cjson;
use crate::lock::LockedBase;
use crate::oci::{self, Descriptor, History, ImageConfig, Manifest, RootFs};
use crate::store::Store;
use std::collections::BTreeMap;

pub(super) fn write_image(
    l: &Loaded,
    store: &Store,
    layers: &[Layer],
    base: Option<ImageConfig>,
    locked_base: Option<&LockedBase>,
) -> Result<(Descriptor, Descriptor), BuildError> {
    let bp = &l.bp;
    let created = rfc3339(bp.epoch);
    let mut cfg = base.unwrap_or_else(|| ImageConfig {
        architecture: bp.architecture.clone(),
        os: "linux".into(),
        ..Default::default()
    });
    cfg.created = Some(created.clone());
    cfg.architecture = bp.architecture.clone();
    let rc = &mut cfg.config;
    let mut env: BTreeMap<String, String> =
        rc.env.iter().filter_map(|kv| kv.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect();
    for (k, v) in &bp.config.env {
        env.insert(k.clone(), v.get_ref().clone());
    }
    env.remove("PATH");
    rc.env = std::iter::once(format!("PATH={FIXED_PATH}")).chain(env.iter().map(|(k, v)| format!("{k}={v}"))).collect();
    if let Some(ep) = &bp.config.entrypoint {
        rc.entrypoint = Some(ep.clone());
        rc.cmd = bp.config.cmd.clone();
    } else if let Some(cmd) = &bp.config.cmd {
        rc.cmd = Some(cmd.clone());
    }
    rc.working_dir = Some(bp.config.workdir.clone().unwrap_or_else(|| "/sandbox".into()));
    if let Some(u) = &bp.config.user {
        rc.user = Some(u.clone());
    } else if bp.users.contains_key("sandbox") {
        rc.user = Some("sandbox".into());
    }
    rc.labels.extend(bp.config.labels.clone());
    if let Some(s) = &bp.config.stop_signal {
        rc.stop_signal = Some(s.clone());
    }
    let base_count = cfg.rootfs.diff_ids.len();
    cfg.rootfs = RootFs { kind: "layers".into(), diff_ids: layers.iter().map(|x| x.diff_id.clone()).collect() };
    for x in &layers[base_count.min(layers.len())..] {
        cfg.history.push(History {
            created: Some(created.clone()),
            created_by: Some(x.created_by.clone()),
            comment: None,
            empty_layer: false,
        });
    }
    let config_bytes = cjson::to_vec(&cfg).map_err(|e| BuildError::Base(e.to_string()))?;
    let config_digest = store.put_blob(&config_bytes)?;
    let config_desc = Descriptor {
        media_type: oci::MEDIA_CONFIG.into(),
        digest: config_digest,
        size: config_bytes.len() as u64,
        annotations: BTreeMap::new(),
        platform: None,
    };
    let mut annotations = bp.annotations.clone();
    if let Some(b) = locked_base {
        annotations.insert("org.opencontainers.image.base.digest".into(), b.manifest.to_string());
    }
    let manifest = Manifest {
        schema_version: 2,
        artifact_type: None,
        media_type: Some(oci::MEDIA_MANIFEST.into()),
        config: config_desc.clone(),
        layers: layers.iter().map(|x| x.desc.clone()).collect(),
        annotations,
    };
    let mbytes = cjson::to_vec(&manifest).map_err(|e| BuildError::Base(e.to_string()))?;
    let mdigest = store.put_blob(&mbytes)?;
    let platform = Some(oci::Platform { architecture: cfg.architecture.clone(), os: cfg.os.clone() });
    Ok((
        config_desc,
        Descriptor {
            media_type: oci::MEDIA_MANIFEST.into(),
            digest: mdigest,
            size: mbytes.len() as u64,
            annotations: BTreeMap::new(),
            platform,
        },
    ))
}

/// RFC 3339 UTC time of a Unix epoch second.
pub fn rfc3339(epoch: u64) -> String {
    let t = time::OffsetDateTime::from_unix_timestamp(epoch as i64).unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
    t.format(&time::format_description::well_known::Rfc3339).unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}
