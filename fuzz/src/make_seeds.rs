//! Not a fuzz target: writes the seed inputs that need real writers (tars in
//! every header format the tar crate writes and every compression the
//! builder detects, `.deb` packages, a snapshot export made by moat's own
//! backup and export, HTTP heads), into `$MOAT_FUZZ_SEEDS/<target>/`, then
//! exits. `scripts/fuzz.sh` runs it once before fuzzing; the project's own
//! text fixtures are copied by the script. It is built as a libFuzzer binary
//! only so that one build serves the targets and the seeds.
#![no_main]
use libfuzzer_sys::fuzz_target;
use std::io::Write;
use std::path::{Path, PathBuf};

fuzz_target!(
    init: {
        if let Some(dir) = std::env::var_os("MOAT_FUZZ_SEEDS") {
            let dir = PathBuf::from(dir);
            let n = write_all(&dir).unwrap_or_else(|e| panic!("writing seeds to {}: {e}", dir.display()));
            println!("make_seeds: {n} seeds in {}", dir.display());
            std::process::exit(0);
        }
    },
    |_data: &[u8]| {}
);

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn put(dir: &Path, target: &str, name: &str, bytes: &[u8]) -> Res<()> {
    let d = dir.join(target);
    std::fs::create_dir_all(&d)?;
    std::fs::write(d.join(name), bytes)?;
    Ok(())
}

fn write_all(dir: &Path) -> Res<usize> {
    let mut n = 0;
    for (name, bytes) in tars()? {
        put(dir, "tar_input", &name, &bytes)?;
        n += 1;
    }
    for (name, bytes) in debs()? {
        put(dir, "deb", &name, &bytes)?;
        n += 1;
    }
    for (name, bytes) in snapshot_exports()? {
        put(dir, "snapshot_import", &name, &bytes)?;
        n += 1;
    }
    for (name, bytes) in http_heads() {
        put(dir, "http1_head", &name, &bytes)?;
        n += 1;
    }
    Ok(n)
}

fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
    let mut h = match kind {
        tar::EntryType::Regular | tar::EntryType::Directory | tar::EntryType::Symlink | tar::EntryType::Link => {
            tar::Header::new_gnu()
        }
        _ => tar::Header::new_ustar(),
    };
    h.set_entry_type(kind);
    h.set_mode(mode);
    h.set_size(size);
    h.set_uid(1000);
    h.set_gid(1000);
    h.set_mtime(1_700_000_000);
    h
}

/// Appends one entry (a link when `link` is given) at `prefix` + `path`.
fn add(
    b: &mut tar::Builder<Vec<u8>>,
    (prefix, ustar): (&str, bool),
    kind: tar::EntryType,
    path: &str,
    mode: u32,
    data: &[u8],
    link: Option<&str>,
) -> Res<()> {
    let mut h = header(kind, mode, data.len() as u64);
    if ustar {
        h.as_mut_bytes()[257..265].copy_from_slice(b"ustar\x0000");
    }
    let p = format!("{prefix}{path}");
    match link {
        Some(l) => b.append_link(&mut h, &p, l)?,
        None => b.append_data(&mut h, &p, data)?,
    }
    Ok(())
}

/// A small tree: directories, files, a symlink, a hard link, a long name and
/// a pax xattr, with `prefix` before every path (`./` as dpkg writes).
fn tree_tar(prefix: &str, ustar: bool) -> Res<Vec<u8>> {
    use tar::EntryType::{Directory, Link, Regular, Symlink};
    let mut b = tar::Builder::new(Vec::new());
    let f = (prefix, ustar);
    add(&mut b, f, Directory, "usr/", 0o755, b"", None)?;
    add(&mut b, f, Directory, "usr/bin/", 0o755, b"", None)?;
    add(&mut b, f, Regular, "usr/bin/tool", 0o755, b"#!/bin/sh\necho tool\n", None)?;
    add(&mut b, f, Link, "usr/bin/tool-again", 0o755, b"", Some(&format!("{prefix}usr/bin/tool")))?;
    add(&mut b, f, Symlink, "usr/bin/t", 0o777, b"", Some("tool"))?;
    add(&mut b, f, Directory, "etc/", 0o755, b"", None)?;
    add(&mut b, f, Regular, "etc/tool.conf", 0o644, b"key = value\n", None)?;
    if !ustar {
        let long = format!("usr/share/{}/README", "long-directory-name".repeat(8));
        add(&mut b, f, Regular, &long, 0o644, b"a name past 100 bytes\n", None)?;
        b.append_pax_extensions([("SCHILY.xattr.user.note", &b"seed"[..])])?;
        add(&mut b, f, Regular, "etc/with-xattr", 0o600, b"x\n", None)?;
    }
    Ok(b.into_inner()?)
}

fn gz(b: &[u8]) -> Res<Vec<u8>> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(b)?;
    Ok(e.finish()?)
}

fn xz(b: &[u8]) -> Res<Vec<u8>> {
    let mut e = liblzma::write::XzEncoder::new(Vec::new(), 1);
    e.write_all(b)?;
    Ok(e.finish()?)
}

fn zst(b: &[u8]) -> Res<Vec<u8>> {
    Ok(zstd::encode_all(b, 1)?)
}

fn tars() -> Res<Vec<(String, Vec<u8>)>> {
    let plain = tree_tar("", false)?;
    let ustar = tree_tar("", true)?;
    let dotted = tree_tar("./", false)?;
    Ok(vec![
        ("tree.tar".into(), plain.clone()),
        ("tree-ustar.tar".into(), ustar),
        ("tree-dotted.tar".into(), dotted),
        ("tree.tar.gz".into(), gz(&plain)?),
        ("tree.tar.xz".into(), xz(&plain)?),
        ("tree.tar.zst".into(), zst(&plain)?),
    ])
}

fn control_tar() -> Res<Vec<u8>> {
    let mut b = tar::Builder::new(Vec::new());
    let files: [(&str, &[u8]); 3] = [
        ("./control", b"Package: seed\nVersion: 1.0\nArchitecture: amd64\nMaintainer: moat <moat@example.org>\nDescription: a fuzz seed\n"),
        ("./md5sums", b"d41d8cd98f00b204e9800998ecf8427e  usr/bin/tool\n"),
        ("./conffiles", b"/etc/tool.conf\n"),
    ];
    for (p, data) in files {
        let mut h = header(tar::EntryType::Regular, 0o644, data.len() as u64);
        b.append_data(&mut h, p, data)?;
    }
    Ok(b.into_inner()?)
}

fn deb(control: (&str, Vec<u8>), data: (&str, Vec<u8>)) -> Res<Vec<u8>> {
    let mut b = ar::Builder::new(Vec::new());
    for (name, bytes) in [("debian-binary", b"2.0\n".to_vec()), (control.0, control.1), (data.0, data.1)] {
        let mut h = ar::Header::new(name.as_bytes().to_vec(), bytes.len() as u64);
        h.set_mode(0o100644);
        h.set_mtime(1_700_000_000);
        b.append(&h, &bytes[..])?;
    }
    Ok(b.into_inner()?)
}

fn debs() -> Res<Vec<(String, Vec<u8>)>> {
    let control = control_tar()?;
    let data = tree_tar("./", false)?;
    Ok(vec![
        ("seed-xz.deb".into(), deb(("control.tar.gz", gz(&control)?), ("data.tar.xz", xz(&data)?))?),
        ("seed-zst.deb".into(), deb(("control.tar.zst", zst(&control)?), ("data.tar.zst", zst(&data)?))?),
        ("seed-gz.deb".into(), deb(("control.tar.xz", xz(&control)?), ("data.tar.gz", gz(&data)?))?),
        ("seed-plain.deb".into(), deb(("control.tar", control.clone()), ("data.tar", data.clone()))?),
    ])
}

/// Exports of a small workspace made by moat's own backup and export: one
/// with its record, one without.
fn snapshot_exports() -> Res<Vec<(String, Vec<u8>)>> {
    let tmp = tempfile::tempdir()?;
    let ws = tmp.path().join("ws");
    std::fs::create_dir_all(ws.join("src/deep"))?;
    std::fs::write(ws.join("README.md"), "hello\n".repeat(200))?;
    std::fs::write(ws.join("src/main.rs"), "fn main() {}\n")?;
    let noise: Vec<u8> = (0u32..3000).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::fs::write(ws.join("src/deep/blob.bin"), noise)?;
    std::fs::write(ws.join("empty"), "")?;
    std::os::unix::fs::symlink("src/main.rs", ws.join("main"))?;
    std::fs::hard_link(ws.join("src/main.rs"), ws.join("main-again.rs"))?;
    let repo = moat_snapshot::Repo::open(&tmp.path().join("repo"))?;
    let opts = moat_snapshot::BackupOptions {
        sandbox: "seed".into(),
        tag: Some("v1".into()),
        exclude: vec![],
        exclude_secrets: false,
    };
    let r = moat_snapshot::backup_dir(&repo, &ws, &opts)?;
    let with = tmp.path().join("with-record.tar");
    let without = tmp.path().join("without-record.tar");
    moat_snapshot::archive::export(&repo, &r.digest, Some(&r.record), &with)?;
    moat_snapshot::archive::export(&repo, &r.digest, None, &without)?;
    Ok(vec![("with-record.tar".into(), std::fs::read(with)?), ("without-record.tar".into(), std::fs::read(without)?)])
}

/// Byte 0 of an http1_head input: bit 0 response, bits 1-4 read size, bits 5-7 limit.
fn http_heads() -> Vec<(String, Vec<u8>)> {
    const WHOLE_8K: u8 = 4 << 5; // whole reads, limit 8192
    const TRICKLE_3_8K: u8 = (4 << 5) | (3 << 1); // 3-byte reads, limit 8192
    let requests: [&[u8]; 6] = [
        b"GET /v1/models?x=1 HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: curl/8\r\nAccept: */*\r\n\r\n",
        b"POST /upload HTTP/1.1\r\nHost: example.com:8443\r\nContent-Length: 5\r\nContent-Type: text/plain\r\n\r\nhello",
        b"POST /c HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
        b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n",
        b"\r\nGET / HTTP/1.0\r\n\r\n",
        b"GET http://example.com/a%20b HTTP/1.1\r\nHost: example.com\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\n\r\n",
    ];
    let responses: [&[u8]; 5] = [
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Type: text/plain\r\n\r\nok",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        b"HTTP/1.1 204 No Content\r\nServer: x\r\n\r\n",
        b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nConnection: close\r\n\r\nbody until close",
    ];
    let mut out = Vec::new();
    for (i, r) in requests.iter().enumerate() {
        for (tag, ctl) in [("whole", WHOLE_8K), ("trickle", TRICKLE_3_8K)] {
            out.push((format!("request-{i}-{tag}"), [&[ctl][..], r].concat()));
        }
    }
    for (i, r) in responses.iter().enumerate() {
        for (tag, ctl) in [("whole", WHOLE_8K | 1), ("trickle", TRICKLE_3_8K | 1)] {
            out.push((format!("response-{i}-{tag}"), [&[ctl][..], r].concat()));
        }
    }
    out
}
