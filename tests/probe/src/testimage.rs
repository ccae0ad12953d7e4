//! The sandbox tests' image, written into a store without the builder: a static busybox, the static probe (plain and setuid-root
//! copies), a `sandbox` user, a world-writable /opt/open and a readable
//! /srv file that only Landlock refuses, in two layers (the second whites
//! out a file of the first, so overlay composition is exercised).
use moat_builder::cjson;
use moat_builder::oci::{
    Descriptor, ImageConfig, Manifest, RootFs, RunConfig, MEDIA_CONFIG, MEDIA_LAYER_GZIP, MEDIA_MANIFEST,
};
use moat_builder::{Digest, Store};
use std::io::Write;
use std::path::Path;

enum Node<'a> {
    Dir(u32),
    File(u32, &'a [u8]),
    Link(&'a str),
}

fn layer(entries: &[(&str, Node)]) -> std::io::Result<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, node) in entries {
        let mut h = tar::Header::new_ustar();
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        match node {
            Node::Dir(mode) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(*mode);
                h.set_size(0);
                h.set_path(path)?;
                h.set_cksum();
                b.append(&h, std::io::empty())?;
            }
            Node::File(mode, data) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(*mode);
                h.set_size(data.len() as u64);
                h.set_path(path)?;
                h.set_cksum();
                b.append(&h, *data)?;
            }
            Node::Link(target) => {
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_mode(0o777);
                h.set_size(0);
                h.set_path(path)?;
                h.set_link_name(target)?;
                h.set_cksum();
                b.append(&h, std::io::empty())?;
            }
        }
    }
    b.into_inner()
}

fn put_layer(store: &Store, tar: &[u8]) -> std::io::Result<(Descriptor, Digest)> {
    let diff_id = Digest::of(tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(tar)?;
    let gz = gz.finish()?;
    let d = store.put_blob(&gz).map_err(|e| std::io::Error::other(e.to_string()))?;
    Ok((
        Descriptor {
            media_type: MEDIA_LAYER_GZIP.into(),
            digest: d,
            size: gz.len() as u64,
            annotations: Default::default(),
            platform: None,
        },
        diff_id,
    ))
}

/// Writes the test image as `name` into the store at `store_dir`; returns
/// `NAME@DIGEST`. `pad_mib` adds that much incompressible data in 100 KiB
/// files under /usr/share/pad (for cold-cache benchmarks).
pub fn build(store_dir: &Path, name: &str, probe: &Path, busybox: &Path, pad_mib: u64) -> std::io::Result<String> {
    let fail = |e: &dyn std::fmt::Display| std::io::Error::other(e.to_string());
    let store = Store::open(store_dir).map_err(|e| fail(&e))?;
    let probe = std::fs::read(probe)?;
    let busybox = std::fs::read(busybox)?;
    let passwd = b"root:x:0:0:root:/root:/bin/sh\nsandbox:x:1000:1000:sandbox:/sandbox:/bin/sh\n";
    let group = b"root:x:0:\nsandbox:x:1000:\n";
    let mut base: Vec<(&str, Node)> = vec![
        ("bin", Node::Dir(0o755)),
        ("bin/busybox", Node::File(0o755, &busybox)),
        ("etc", Node::Dir(0o755)),
        ("etc/passwd", Node::File(0o644, passwd)),
        ("etc/group", Node::File(0o644, group)),
        ("etc/removed-by-layer2", Node::File(0o644, b"gone\n")),
        ("opt", Node::Dir(0o755)),
        ("opt/open", Node::Dir(0o777)),
        ("srv", Node::Dir(0o755)),
        ("srv/readable.txt", Node::File(0o644, b"only landlock stops this read\n")),
        ("sandbox", Node::Dir(0o755)),
        ("tmp", Node::Dir(0o1777)),
        ("usr", Node::Dir(0o755)),
        ("usr/bin", Node::Dir(0o755)),
        ("usr/local", Node::Dir(0o755)),
        ("usr/local/bin", Node::Dir(0o755)),
        ("var", Node::Dir(0o755)),
        ("var/log", Node::Dir(0o755)),
    ];
    const APPLETS: &[&str] = &[
        "sh", "ls", "cat", "id", "echo", "true", "false", "sleep", "touch", "mkdir", "rm", "ps", "kill", "test", "env",
        "head", "wc", "grep", "ip", "nproc",
    ];
    let links: Vec<String> = APPLETS.iter().map(|a| format!("bin/{a}")).collect();
    for l in &links {
        base.push((l, Node::Link("busybox")));
    }
    let top: Vec<(&str, Node)> = vec![
        ("etc", Node::Dir(0o755)),
        ("etc/.wh.removed-by-layer2", Node::File(0o644, b"")),
        ("usr", Node::Dir(0o755)),
        ("usr/bin", Node::Dir(0o755)),
        ("usr/bin/suid-probe", Node::File(0o4755, &probe)),
        ("usr/local", Node::Dir(0o755)),
        ("usr/local/bin", Node::Dir(0o755)),
        ("usr/local/bin/moat-probe", Node::File(0o755, &probe)),
    ];
    let pad = padding(pad_mib);
    let pad_names: Vec<String> = (0..pad.len()).map(|i| format!("usr/share/pad/{i:05}")).collect();
    if !pad.is_empty() {
        base.push(("usr/share", Node::Dir(0o755)));
        base.push(("usr/share/pad", Node::Dir(0o755)));
        for (n, data) in pad_names.iter().zip(&pad) {
            base.push((n, Node::File(0o644, data)));
        }
    }
    let (l1, d1) = put_layer(&store, &layer(&base)?)?;
    let (l2, d2) = put_layer(&store, &layer(&top)?)?;
    let config = ImageConfig {
        created: Some("1970-01-01T00:00:00Z".into()),
        architecture: "amd64".into(),
        os: "linux".into(),
        config: RunConfig {
            user: Some("sandbox".into()),
            env: vec!["PATH=/evil/bin".into(), "PROBE_IMAGE=1".into()],
            cmd: Some(vec!["/bin/sh".into()]),
            working_dir: Some("/sandbox".into()),
            ..Default::default()
        },
        rootfs: RootFs { kind: "layers".into(), diff_ids: vec![d1, d2] },
        history: vec![],
    };
    let cbytes = cjson::to_vec(&config).map_err(|e| fail(&e))?;
    let cd = store.put_blob(&cbytes).map_err(|e| fail(&e))?;
    let manifest = Manifest {
        schema_version: 2,
        artifact_type: None,
        media_type: Some(MEDIA_MANIFEST.into()),
        config: Descriptor {
            media_type: MEDIA_CONFIG.into(),
            digest: cd,
            size: cbytes.len() as u64,
            annotations: Default::default(),
            platform: None,
        },
        layers: vec![l1, l2],
        annotations: Default::default(),
    };
    let mbytes = cjson::to_vec(&manifest).map_err(|e| fail(&e))?;
    let md = store.put_blob(&mbytes).map_err(|e| fail(&e))?;
    store
        .set_ref(
            name,
            Descriptor {
                media_type: MEDIA_MANIFEST.into(),
                digest: md.clone(),
                size: mbytes.len() as u64,
                annotations: Default::default(),
                platform: None,
            },
        )
        .map_err(|e| fail(&e))?;
    Ok(format!("{name}@{md}"))
}

/// `mib` MiB of xorshift bytes in 100 KiB chunks (gzip cannot shrink them).
fn padding(mib: u64) -> Vec<Vec<u8>> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let chunks = mib * 1024 / 100;
    (0..chunks)
        .map(|_| {
            (0..100 * 1024 / 8)
                .flat_map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x.to_le_bytes()
                })
                .collect()
        })
        .collect()
}
