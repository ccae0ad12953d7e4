//! The npm fixture registry the `[npm]` tests share: fixture packages packed
//! as tarballs, served with their packuments on loopback, the listing of an
//! install tree, and the real npm run on the same registry as the oracle.
//! Threat: a layout that drifts from npm's unnoticed.
use crate::common::*;
use base64::Engine as _;
use serde_json::{json, Value};
use sha2::{Digest as _, Sha512};
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};

/// One fixture package: its package.json and files (path, bytes, tar mode).
pub struct Pkg {
    pub json: Value,
    pub files: Vec<(&'static str, Vec<u8>, u32)>,
}

pub fn pkg(name: &str, version: &str, extra: Value, files: Vec<(&'static str, &str, u32)>) -> Pkg {
    let mut json = json!({"name": name, "version": version, "description": "moat test fixture", "license": "MIT"});
    if let (Value::Object(j), Value::Object(e)) = (&mut json, extra) {
        j.extend(e);
    }
    let mut files: Vec<_> = files.into_iter().map(|(p, c, m)| (p, c.as_bytes().to_vec(), m)).collect();
    files.push(("index.js", format!("module.exports = '{name}@{version}';\n").into_bytes(), 0o644));
    Pkg { json, files }
}

pub fn tgz(p: &Pkg) -> Vec<u8> {
    let mut b = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default()));
    let mut add = |path: &str, data: &[u8], mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_mtime(499162500);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, format!("package/{path}"), data).unwrap();
    };
    let mut json = p.json.clone();
    json.as_object_mut().unwrap().remove("_registry");
    add("package.json", serde_json::to_string_pretty(&json).unwrap().as_bytes(), 0o644);
    for (path, data, mode) in &p.files {
        add(path, data, *mode);
    }
    b.into_inner().unwrap().finish().unwrap()
}

pub fn sri(b: &[u8]) -> String {
    format!("sha512-{}", base64::engine::general_purpose::STANDARD.encode(Sha512::digest(b)))
}

/// The registry: URL path -> body, served from a thread on 127.0.0.1.
pub struct Registry {
    pub url: String,
    pub files: Arc<Mutex<HashMap<String, Vec<u8>>>>,
}

impl Registry {
    pub fn serve() -> Registry {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let files: Arc<Mutex<HashMap<String, Vec<u8>>>> = Arc::default();
        let f = files.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(mut c) = conn else { continue };
                let f = f.clone();
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
                    let path = line.split(' ').nth(1).unwrap_or("/").split('?').next().unwrap_or("/");
                    let path = path.replace("%2f", "/").replace("%2F", "/").replace("%40", "@");
                    let body = f.lock().unwrap().get(&path).cloned();
                    let resp = match body {
                        // A stored answer that is a whole HTTP response goes out as is.
                        Some(b) if b.starts_with(b"HTTP/1.1 ") => b,
                        Some(b) => {
                            let mut r =
                                format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\nconnection: close\r\n\r\n", b.len())
                                    .into_bytes();
                            r.extend(b);
                            r
                        }
                        None => b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\nconnection: close\r\n\r\n".to_vec(),
                    };
                    let _ = c.write_all(&resp);
                });
            }
        });
        Registry { url, files }
    }

    pub fn tarball_path(name: &str, version: &str) -> String {
        let base = name.rsplit('/').next().unwrap();
        format!("/{name}/-/{base}-{version}.tgz")
    }

    /// Publishes every version of every package (latest: `latest[name]` or the last listed).
    pub fn publish(&self, pkgs: &[Pkg], latest: &[(&str, &str)]) {
        let mut docs: BTreeMap<String, Value> = BTreeMap::new();
        let mut files = self.files.lock().unwrap();
        for p in pkgs {
            let name = p.json["name"].as_str().unwrap().to_string();
            let version = p.json["version"].as_str().unwrap().to_string();
            let bytes = tgz(p);
            let tpath = Self::tarball_path(&name, &version);
            let mut m = p.json.clone();
            // What `npm publish` normalizes into the registry's copy only.
            if let Some(Value::Object(extra)) = m.as_object_mut().unwrap().remove("_registry") {
                m.as_object_mut().unwrap().extend(extra);
            }
            m["_id"] = json!(format!("{name}@{version}"));
            m["dist"] = json!({"tarball": format!("{}{tpath}", self.url), "integrity": sri(&bytes)});
            files.insert(tpath, bytes);
            let doc = docs
                .entry(name.clone())
                .or_insert_with(|| json!({"_id": name, "name": name, "dist-tags": {}, "versions": {}}));
            doc["versions"][&version] = m;
            doc["dist-tags"]["latest"] = json!(version);
        }
        for (n, v) in latest {
            docs.get_mut(*n).unwrap()["dist-tags"]["latest"] = json!(v);
        }
        for (name, doc) in docs {
            files.insert(format!("/{name}"), serde_json::to_vec(&doc).unwrap());
        }
    }

    pub fn tamper(&self, name: &str, version: &str) {
        let mut files = self.files.lock().unwrap();
        let t = files.get_mut(&Self::tarball_path(name, version)).unwrap();
        let mut p = Pkg {
            json: json!({"name": name, "version": version}),
            files: vec![("index.js", b"evil()".to_vec(), 0o644)],
        };
        p.json["description"] = json!("tampered");
        *t = tgz(&p);
    }
}

pub fn blueprint(dir: &Path, file: &str, arch: &str, packages: &[&str]) -> std::path::PathBuf {
    let list: Vec<String> = packages.iter().map(|p| format!("{p:?}")).collect();
    let text = format!("name = \"npmtest\"\nepoch = 1700000000\narchitecture = \"{arch}\"\n[npm]\npackages = [{}]\nprefix = \"/usr/local\"\n", list.join(", "));
    let p = dir.join(file);
    fs::write(&p, text).unwrap();
    p
}

pub fn moat_at(home: &Path, reg: &Registry, umask: &str, tz: &str, args: &[&str]) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c").arg(format!("umask {umask}; exec \"$0\" \"$@\"")).arg(moat_bin()).args(args);
    c.env("MOAT_HOME", home).env_remove("MOAT_STORE").env_remove("RUST_LOG");
    c.env("MOAT_NPM_REGISTRY", &reg.url).env("TZ", tz);
    c
}

/// path -> "dir MODE" | "file MODE sha" | "link TARGET", below `root`.
pub fn listing(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let md = fs::symlink_metadata(&p).unwrap();
            let v = if md.file_type().is_symlink() {
                format!("link {}", fs::read_link(&p).unwrap().display())
            } else if md.is_dir() {
                stack.push(p.clone());
                format!("dir {:o}", md.mode() & 0o7777)
            } else {
                format!("file {:o} {}", md.mode() & 0o7777, hex::encode(sha2::Sha256::digest(fs::read(&p).unwrap())))
            };
            out.insert(rel, v);
        }
    }
    out
}

/// The real npm's global install of `requests` under `tmp/npm-prefix`, with its stderr.
pub fn npm_oracle(tmp: &Path, reg: &Registry, requests: &[&str]) -> (std::path::PathBuf, String) {
    require_tool("npm");
    let prefix = tmp.join("npm-prefix");
    let cache = tmp.join("npm-cache");
    fs::create_dir_all(&prefix).unwrap();
    fs::write(tmp.join("npmrc"), "").unwrap();
    let mut c = Command::new("sh");
    c.arg("-c").arg("umask 022; exec npm \"$@\"").arg("npm");
    c.args(["install", "--global", "--ignore-scripts", "--omit=dev", "--prefer-online", "--no-audit", "--no-fund"]);
    // npm >= 11 has --os/--cpu/--libc (added in 10.x); an older npm picks
    // platform packages for the host, which matches only on x86_64.
    let version = Command::new("npm").arg("--version").output().expect("npm --version");
    let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
    let major: u32 = version.split('.').next().and_then(|m| m.parse().ok()).unwrap_or(0);
    if major >= 11 {
        c.args(["--os=linux", "--cpu=x64", "--libc=glibc"]);
    } else {
        assert_eq!(
            std::env::consts::ARCH,
            "x86_64",
            "npm {version} cannot install for x64 on this host: use npm >= 11"
        );
    }
    c.args(["--registry", &reg.url, "--loglevel=warn"]);
    c.arg("--prefix").arg(&prefix).arg("--cache").arg(&cache).arg("--userconfig").arg(tmp.join("npmrc"));
    c.args(requests);
    c.env("npm_config_update_notifier", "false").env("HOME", tmp);
    let (code, out, err) = run(c);
    assert_eq!(code, 0, "npm install {requests:?} failed:\n{out}\n{err}");
    (prefix, err)
}

/// Differences between moat's listing and npm's, npm's setuid, setgid and
/// sticky bits set aside (the one accepted difference, docs/npm.md).
pub fn differences(ours: &BTreeMap<String, String>, theirs: &BTreeMap<String, String>) -> Vec<String> {
    let theirs: BTreeMap<String, String> = theirs
        .iter()
        .map(|(k, v)| match v.strip_prefix("file ").and_then(|r| r.split_once(' ')) {
            Some((mode, hash)) if mode.len() == 4 => {
                let m = u32::from_str_radix(mode, 8).unwrap() & 0o777;
                (k.clone(), format!("file {m:o} {hash}"))
            }
            _ => (k.clone(), v.clone()),
        })
        .collect();
    ours.iter()
        .filter(|(k, v)| theirs.get(*k) != Some(v))
        .map(|(k, v)| format!("moat {k}: {v} / npm: {:?}", theirs.get(k)))
        .chain(theirs.iter().filter(|(k, _)| !ours.contains_key(*k)).map(|(k, v)| format!("npm only {k}: {v}")))
        .collect()
}

/// `moat lock` then `moat build` of `packages` (amd64) in `dir`, the image
/// unpacked: the listing of its `/usr/local`, and `moat lock`'s stderr.
pub fn moat_layer(t: &Path, reg: &Registry, name: &str, packages: &[&str]) -> (BTreeMap<String, String>, String) {
    let dir = t.join(format!("bp-{name}"));
    fs::create_dir_all(&dir).unwrap();
    let bp = blueprint(&dir, "app.toml", "amd64", packages);
    let store = t.join(format!("store-{name}"));
    let s = store.to_str().unwrap();
    let home = t.join(format!("home-{name}"));
    let (code, out, lock_err) = run(moat_at(&home, reg, "022", "UTC", &["lock", bp.to_str().unwrap(), "--store", s]));
    assert_eq!(code, 0, "{name}: lock failed:\n{out}\n{lock_err}");
    let (code, out, err) = run(moat_at(&home, reg, "022", "UTC", &["build", bp.to_str().unwrap(), "--store", s]));
    assert_eq!(code, 0, "{name}: build failed:\n{out}\n{err}");
    require_tool("umoci");
    let bundle = t.join(format!("bundle-{name}"));
    let mut c = Command::new("umoci");
    c.arg("unpack").arg("--image").arg(format!("{s}:npmtest")).arg(&bundle);
    ok(c);
    (listing(&bundle.join("rootfs/usr/local")), lock_err)
}
