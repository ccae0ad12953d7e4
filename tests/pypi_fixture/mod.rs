//! Fixtures for the `[pypi]` tests: wheels zipped here (RECORD with real
//! hashes), a PEP 691/503 simple index on 127.0.0.1 that can slow its
//! answers and counts requests in flight, blueprints, and listings of
//! trees. Test-only: the index serves what the test puts in it, nothing else.
#![allow(dead_code)]
use super::common::*;
use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

pub fn record_hash(b: &[u8]) -> String {
    format!("sha256={}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(Sha256::digest(b)))
}

/// A wheel: (file name, bytes, METADATA bytes).
pub fn wheel(
    name: &str,
    version: &str,
    tag: &str,
    meta: &str,
    eps: Option<&str>,
    files: &[(&str, &str, bool)],
) -> (String, Vec<u8>, Vec<u8>) {
    let dist = name.replace('-', "_");
    let info = format!("{dist}-{version}.dist-info");
    let metadata = format!("Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n{meta}\nA long description.\n");
    let mut all: Vec<(String, Vec<u8>, bool)> =
        files.iter().map(|(p, c, x)| (p.to_string(), c.as_bytes().to_vec(), *x)).collect();
    all.push((format!("{info}/METADATA"), metadata.clone().into_bytes(), false));
    all.push((
        format!("{info}/WHEEL"),
        format!("Wheel-Version: 1.0\nGenerator: moat-test\nRoot-Is-Purelib: true\nTag: {tag}\n").into_bytes(),
        false,
    ));
    if let Some(e) = eps {
        all.push((format!("{info}/entry_points.txt"), e.as_bytes().to_vec(), false));
    }
    let mut record = String::new();
    for (p, c, _) in &all {
        record.push_str(&format!("{p},{},{}\n", record_hash(c), c.len()));
    }
    record.push_str(&format!("{info}/RECORD,,\n"));
    all.push((format!("{info}/RECORD"), record.into_bytes(), false));
    let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for (p, c, x) in &all {
        let o = zip::write::SimpleFileOptions::default()
            .compression_method(zip::CompressionMethod::Deflated)
            .unix_permissions(if *x { 0o755 } else { 0o644 });
        w.start_file(p.as_str(), o).unwrap();
        w.write_all(c).unwrap();
    }
    let bytes = w.finish().unwrap().into_inner();
    (format!("{dist}-{version}-{tag}.whl"), bytes, metadata.into_bytes())
}

/// The same wheel without its RECORD (pip cannot install it).
pub fn without_record(w: (String, Vec<u8>, Vec<u8>)) -> (String, Vec<u8>, Vec<u8>) {
    let mut r = zip::ZipArchive::new(std::io::Cursor::new(w.1)).unwrap();
    let mut out = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    for i in 0..r.len() {
        let f = r.by_index(i).unwrap();
        if !f.name().ends_with("/RECORD") {
            out.raw_copy_file(f).unwrap();
        }
    }
    (w.0, out.finish().unwrap().into_inner(), w.2)
}

/// URL path -> (content type, body).
pub type Served = Arc<Mutex<HashMap<String, (String, Vec<u8>)>>>;

/// The index: what it serves, from a thread on 127.0.0.1.
pub struct Index {
    pub url: String,
    pub files: Served,
    /// Each answer waits this long (ms) before it is written.
    pub delay_ms: Arc<std::sync::atomic::AtomicU64>,
    /// Requests in flight: "pages" (/simple/) and "files" (/files/) -> (now, most ever).
    inflight: Arc<Mutex<HashMap<&'static str, (usize, usize)>>>,
}

impl Index {
    pub fn serve() -> Index {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let files: Served = Arc::default();
        let f = files.clone();
        let delay_ms: Arc<std::sync::atomic::AtomicU64> = Arc::default();
        let inflight: Arc<Mutex<HashMap<&'static str, (usize, usize)>>> = Arc::default();
        let (d, inf) = (delay_ms.clone(), inflight.clone());
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut c) = conn else { continue };
                let f = f.clone();
                let (d, inf) = (d.clone(), inf.clone());
                std::thread::spawn(move || {
                    let mut req = Vec::new();
                    let mut buf = [0u8; 4096];
                    while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 65536 {
                        match c.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => req.extend_from_slice(&buf[..n]),
                        }
                    }
                    let line = String::from_utf8_lossy(&req).lines().next().unwrap_or_default().to_string();
                    let path = line.split(' ').nth(1).unwrap_or("/").to_string();
                    let resp = match f.lock().unwrap().get(&path).cloned() {
                        // A stored answer of type "raw" is a whole HTTP response.
                        Some((ctype, b)) if ctype == "raw" => b,
                        Some((ctype, b)) => {
                            let mut r = format!(
                                "HTTP/1.1 200 OK\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
                                b.len()
                            )
                            .into_bytes();
                            r.extend(b);
                            r
                        }
                        None => b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_vec(),
                    };
                    let class = if path.starts_with("/simple/") { "pages" } else { "files" };
                    {
                        let mut m = inf.lock().unwrap();
                        let e = m.entry(class).or_default();
                        e.0 += 1;
                        e.1 = e.1.max(e.0);
                    }
                    std::thread::sleep(std::time::Duration::from_millis(d.load(std::sync::atomic::Ordering::SeqCst)));
                    let _ = c.write_all(&resp);
                    inf.lock().unwrap().entry(class).or_default().0 -= 1;
                });
            }
        });
        Index { url, files, delay_ms, inflight }
    }

    /// The most requests of `class` ever in flight at once since the last call (then reset).
    pub fn most_at_once(&self, class: &'static str) -> usize {
        let mut m = self.inflight.lock().unwrap();
        let e = m.entry(class).or_default();
        std::mem::replace(&mut e.1, e.0)
    }

    /// Publishes the wheels (and sdist file names): JSON pages, `right` as
    /// HTML, PEP 658 metadata for `left` and `shared`.
    pub fn publish(&self, wheels: &[(String, Vec<u8>, Vec<u8>)], sdists: &[(&str, &str)]) {
        let mut pages: BTreeMap<String, Vec<Value>> = BTreeMap::new();
        let mut files = self.files.lock().unwrap();
        for (file, bytes, meta) in wheels {
            let project = file.split('-').next().unwrap().replace('_', "-");
            let mut f = json!({"filename": file, "url": format!("/files/{file}"), "hashes": {"sha256": hex::encode(Sha256::digest(bytes))}});
            if project == "left" || project == "shared" {
                f["core-metadata"] = json!({"sha256": hex::encode(Sha256::digest(meta))});
                files.insert(format!("/files/{file}.metadata"), ("application/octet-stream".into(), meta.clone()));
            }
            files.insert(format!("/files/{file}"), ("application/octet-stream".into(), bytes.clone()));
            pages.entry(project).or_default().push(f);
        }
        for (project, file) in sdists {
            files.insert(format!("/files/{file}"), ("application/octet-stream".into(), b"not built".to_vec()));
            pages.entry(project.to_string()).or_default().push(
                json!({"filename": file, "url": format!("/files/{file}"), "hashes": {"sha256": hex::encode(Sha256::digest(b"not built"))}}),
            );
        }
        for (project, list) in pages {
            let body = if project == "right" {
                let links: Vec<String> = list
                    .iter()
                    .map(|f| {
                        format!(
                            "<a href=\"{}#sha256={}\">{}</a><br/>",
                            f["url"].as_str().unwrap(),
                            f["hashes"]["sha256"].as_str().unwrap(),
                            f["filename"].as_str().unwrap()
                        )
                    })
                    .collect();
                (
                    "text/html".to_string(),
                    format!("<!DOCTYPE html><html><body>{}</body></html>", links.join("\n")).into_bytes(),
                )
            } else {
                let doc = json!({"meta": {"api-version": "1.1"}, "name": project, "files": list});
                ("application/vnd.pypi.simple.v1+json".to_string(), serde_json::to_vec(&doc).unwrap())
            };
            files.insert(format!("/simple/{project}/"), body);
        }
    }
}

pub fn blueprint(dir: &Path, file: &str, arch: &str, packages: &[&str]) -> std::path::PathBuf {
    let list: Vec<String> = packages.iter().map(|p| format!("{p:?}")).collect();
    let text = format!(
        "name = \"pypitest\"\nepoch = 1700000000\narchitecture = \"{arch}\"\n[pypi]\npackages = [{}]\n\
         python_version = \"3.11\"\npython = \"/usr/bin/python3\"\ntarget = \"/usr/local/lib/python3.11/site-packages\"\n",
        list.join(", ")
    );
    let p = dir.join(file);
    fs::write(&p, text).unwrap();
    p
}

pub fn moat_at(home: &Path, idx: &Index, umask: &str, tz: &str, args: &[&str]) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c").arg(format!("umask {umask}; exec \"$0\" \"$@\"")).arg(moat_bin()).args(args);
    c.env("MOAT_HOME", home).env_remove("MOAT_STORE").env_remove("RUST_LOG");
    c.env("MOAT_PYPI_INDEX", format!("{}/simple", idx.url)).env("TZ", tz);
    c
}

/// path -> (mode, bytes) of the files below `root`, and dirs as mode only.
pub fn listing(root: &Path) -> BTreeMap<String, (u32, Option<Vec<u8>>)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let md = fs::symlink_metadata(&p).unwrap();
            if md.is_dir() {
                stack.push(p.clone());
                out.insert(rel, (md.mode() & 0o7777, None));
            } else {
                out.insert(rel, (md.mode() & 0o7777, Some(fs::read(&p).unwrap())));
            }
        }
    }
    out
}

/// Every file below `dir` whose parent is named `parent`, as (name, bytes).
pub fn files_in(dir: &Path, parent: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else if d.file_name().is_some_and(|n| n == parent) {
                out.push((p.file_name().unwrap().to_string_lossy().into_owned(), fs::read(&p).unwrap()));
            }
        }
    }
    out
}
