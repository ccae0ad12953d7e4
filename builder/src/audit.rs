//! `moat audit`: inspects an image's final filesystem (all layers, whiteouts
//! applied) for what the seed forbids or flags: toolchain binaries
//! (compilers, make, netcat), setuid/setgid files and world-writable paths.
#![forbid(unsafe_code)]
use crate::layer::read::{self as layer_read, ReadError};
use crate::store::Store;
use crate::strip;
use serde::Serialize;

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub image: String,
    pub toolchain: Vec<Finding>,
    pub setuid: Vec<Finding>,
    pub world_writable: Vec<Finding>,
}

#[derive(Debug, Serialize)]
pub struct Finding {
    pub path: String,
    pub mode: String,
    pub why: String,
}

/// Audits the image `reference` in `store`.
pub fn audit(store: &Store, reference: &str) -> Result<Report, ReadError> {
    let img = store.resolve(reference)?;
    let manifest = store.manifest(&img.manifest.digest)?;
    let view = layer_read::merged(store, &manifest.layers, &|_| false)?;
    let mut r = Report { image: format!("{}@{}", img.name, img.manifest.digest), ..Default::default() };
    for (path, e) in &view {
        let mode = format!("{:04o}", e.mode);
        let abs = format!("/{path}");
        if e.flag == b'0' || e.flag == b'1' || e.flag == b'2' {
            if let Some(why) = strip::toolchain_reason(path) {
                r.toolchain.push(Finding { path: abs.clone(), mode: mode.clone(), why: why.into() });
            }
        }
        if (e.flag == b'0' || e.flag == b'1') && e.mode & 0o6000 != 0 {
            let why = match (e.mode & 0o4000 != 0, e.mode & 0o2000 != 0) {
                (true, true) => "setuid and setgid",
                (true, false) => "setuid",
                _ => "setgid",
            };
            r.setuid.push(Finding {
                path: abs.clone(),
                mode: mode.clone(),
                why: format!("{why} (owner {}:{})", e.uid, e.gid),
            });
        }
        if e.flag != b'2' && e.mode & 0o002 != 0 {
            let why = if e.flag == b'5' && e.mode & 0o1000 != 0 {
                "world-writable directory (sticky)"
            } else {
                "world-writable"
            };
            r.world_writable.push(Finding { path: abs, mode, why: why.into() });
        }
    }
    Ok(r)
}
