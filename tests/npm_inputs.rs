//! `[npm]` inputs end to end against a registry the test serves on loopback
//! (packuments incl. `@scope%2fname`, tarballs the test packs): `moat lock`
//! resolves, `moat build` lays the tree out, and the layer is compared with
//! what the real `npm install --global --ignore-scripts --omit=dev` makes of
//! the same registry. Also: platform packages chosen for the blueprint's
//! architecture, install scripts listed and never run, packages that need a
//! compiler refused, a tampered tarball refused naming its package, and the
//! same digest under another umask and TZ.
mod common;
use base64::Engine as _;
use common::*;
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
struct Pkg {
    json: Value,
    files: Vec<(&'static str, Vec<u8>, u32)>,
}

fn pkg(name: &str, version: &str, extra: Value, files: Vec<(&'static str, &str, u32)>) -> Pkg {
    let mut json = json!({"name": name, "version": version, "description": "moat test fixture", "license": "MIT"});
    if let (Value::Object(j), Value::Object(e)) = (&mut json, extra) {
        j.extend(e);
    }
    let mut files: Vec<_> = files.into_iter().map(|(p, c, m)| (p, c.as_bytes().to_vec(), m)).collect();
    files.push(("index.js", format!("module.exports = '{name}@{version}';\n").into_bytes(), 0o644));
    Pkg { json, files }
}

fn tgz(p: &Pkg) -> Vec<u8> {
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

fn sri(b: &[u8]) -> String {
    format!("sha512-{}", base64::engine::general_purpose::STANDARD.encode(Sha512::digest(b)))
}

/// The registry: URL path -> body, served from a thread on 127.0.0.1.
struct Registry {
    url: String,
    files: Arc<Mutex<HashMap<String, Vec<u8>>>>,
}

impl Registry {
    fn serve() -> Registry {
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

    fn tarball_path(name: &str, version: &str) -> String {
        let base = name.rsplit('/').next().unwrap();
        format!("/{name}/-/{base}-{version}.tgz")
    }

    /// Publishes every version of every package (latest: `latest[name]` or the last listed).
    fn publish(&self, pkgs: &[Pkg], latest: &[(&str, &str)]) {
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

    fn tamper(&self, name: &str, version: &str) {
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

fn fixtures(mark: &Path) -> Vec<Pkg> {
    let script = format!("touch {}", mark.display());
    vec![
        // A scoped top-level package with a bin (0644 in the tar: npm makes it 0755),
        // a diamond on `shared` and a peer dependency.
        pkg(
            "@fx/cli",
            "1.0.0",
            json!({"bin": {"fx": "./bin/fx.js", "fx-missing": "./bin/not-shipped.js"}, "man": ["./man/fx.1"],
            "dependencies": {"left": "^1.0.0", "right": "^1.0.0", "shared": "^2.0.0", "dirbin": "1.0.0",
                "aaa-first": "1.0.0", "zz-peerer": "1.0.0", "r-narrow": "1.0.0", "r-wide": "1.0.0"},
            "devDependencies": {"devonly": "1.0.0"},
            "peerDependencies": {"peer-thing": "^1.0.0"}}),
            vec![("bin/fx.js", "#!/usr/bin/env node\nconsole.log('fx')\n", 0o644), ("man/fx.1", ".TH FX 1\n", 0o644)],
        ),
        pkg(
            "left",
            "1.0.0",
            json!({"dependencies": {"shared": "^1.0.0"}, "peerDependencies": {"peer-nested": "^1.0.0"},
            "optionalDependencies": {"not-published": "^1.0.0"}}),
            vec![
                ("lib/run.sh", "#!/bin/sh\n", 0o755),
                ("lib/owner-only", "x", 0o600),
                ("lib/suid", "x", 0o4755),
                (".gitignore", "node_modules\n", 0o644),
            ],
        ),
        pkg("right", "1.0.0", json!({"dependencies": {"shared": "~1.1.0", "tool-b": "1", "tool-a": "1"}}), vec![]),
        // A peer placed with its dependent (zz-peerer), before the
        // dependency of an earlier sibling (aaa-first) on another version.
        pkg("aaa-first", "1.0.0", json!({"dependencies": {"pn-late": "^2.0.0"}}), vec![]),
        pkg("zz-peerer", "1.0.0", json!({"peerDependencies": {"pn-late": "^1.0.0"}}), vec![]),
        pkg("pn-late", "1.0.0", json!({}), vec![]),
        pkg("pn-late", "2.0.0", json!({}), vec![]),
        // `latest` (1.0.0) below the highest version: r-narrow takes 1.0.0,
        // then r-wide needs ^1.0.1, which also satisfies r-narrow: npm
        // replaces the placed copy instead of nesting a second one.
        pkg("r-narrow", "1.0.0", json!({"dependencies": {"dd": "~1.0.0"}}), vec![]),
        pkg("r-wide", "1.0.0", json!({"dependencies": {"dd": "^1.0.1"}}), vec![]),
        pkg("dd", "1.0.0", json!({"dependencies": {"dd-old-only": "1"}}), vec![]),
        pkg("dd", "1.0.1", json!({}), vec![]),
        pkg("dd-old-only", "1.0.0", json!({}), vec![]),
        // An optional package for another platform is placed, then removed
        // with what only it needed: its dependency took the hoisted slot,
        // so zz-user's copy stays nested.
        pkg(
            "plat",
            "1.0.0",
            json!({"dependencies": {"zz-user": "1.0.0"}, "optionalDependencies": {"@plat/arm64": "1.0.0"}}),
            vec![],
        ),
        pkg("@plat/arm64", "1.0.0", json!({"cpu": ["arm64"], "dependencies": {"shared-h": "1.0.0"}}), vec![]),
        pkg("zz-user", "1.0.0", json!({"dependencies": {"shared-h": "2.0.0"}}), vec![]),
        pkg("shared-h", "1.0.0", json!({}), vec![]),
        pkg("shared-h", "2.0.0", json!({}), vec![]),
        // Two packages with the same bin name in one node_modules/.bin.
        pkg("tool-a", "1.0.0", json!({"bin": {"tool": "a.js"}}), vec![("a.js", "a", 0o644)]),
        pkg("tool-b", "1.0.0", json!({"bin": {"tool": "b.js"}}), vec![("b.js", "b", 0o644)]),
        // `directories.bin` in the tarball; the registry's manifest has the
        // bins npm publish derived from it, and those are what npm links.
        pkg(
            "dirbin",
            "1.0.0",
            json!({"directories": {"bin": "./bin"}, "_registry": {"bin": {"dirtool": "bin/dirtool"}}}),
            vec![("bin/dirtool", "#!/bin/sh\n", 0o644)],
        ),
        pkg("shared", "1.0.0", json!({}), vec![]),
        pkg("shared", "1.1.0", json!({"bin": "tool.js"}), vec![("tool.js", "#!/usr/bin/env node\n", 0o644)]),
        pkg("shared", "2.0.0", json!({}), vec![]),
        // Above `latest`: npm takes `latest` when it satisfies the range.
        pkg("shared", "2.1.0", json!({}), vec![]),
        pkg("peer-nested", "1.0.0", json!({}), vec![]),
        // A second top-level package: its own copies, hoisted inside it;
        // a bin with a CRLF hashbang line.
        pkg(
            "other-cli",
            "1.0.0",
            json!({"bin": "./other.js", "dependencies": {"left": "^1.0.0", "shared": "^1.0.0"}}),
            vec![("other.js", "#!/usr/bin/env node\r\nconsole.log('other')\n", 0o644)],
        ),
        pkg("peer-thing", "1.0.0", json!({}), vec![]),
        pkg("peer-thing", "2.0.0", json!({}), vec![]),
        pkg("devonly", "1.0.0", json!({}), vec![]),
        // Native code shipped as prebuilt platform packages.
        pkg(
            "native",
            "1.0.0",
            json!({"scripts": {"install": "node-gyp-build"},
            "optionalDependencies": {"@native/linux-x64": "1.0.0", "@native/linux-arm64": "1.0.0"}}),
            vec![("binding.gyp", "{}", 0o644)],
        ),
        pkg(
            "@native/linux-x64",
            "1.0.0",
            json!({"os": ["linux"], "cpu": ["x64"]}),
            vec![("native.node", "ELF x64", 0o755)],
        ),
        pkg(
            "@native/linux-arm64",
            "1.0.0",
            json!({"os": ["linux"], "cpu": ["arm64"]}),
            vec![("native.node", "ELF arm64", 0o755)],
        ),
        // An install script that would leave a mark.
        pkg("scripted", "1.0.0", json!({"scripts": {"postinstall": script}}), vec![]),
        // Needs a compiler: binding.gyp, no prebuilt.
        pkg("needs-cc", "1.0.0", json!({"gypfile": true}), vec![("binding.gyp", "{}", 0o644)]),
    ]
}

const REQUESTS: [&str; 6] = ["@fx/cli@^1.0.0", "native@1.0.0", "scripted", "peer-thing@^1", "other-cli", "plat"];

fn blueprint(dir: &Path, file: &str, arch: &str, packages: &[&str]) -> std::path::PathBuf {
    let list: Vec<String> = packages.iter().map(|p| format!("{p:?}")).collect();
    let text = format!("name = \"npmtest\"\nepoch = 1700000000\narchitecture = \"{arch}\"\n[npm]\npackages = [{}]\nprefix = \"/usr/local\"\n", list.join(", "));
    let p = dir.join(file);
    fs::write(&p, text).unwrap();
    p
}

fn moat_at(home: &Path, reg: &Registry, umask: &str, tz: &str, args: &[&str]) -> Command {
    let mut c = Command::new("sh");
    c.arg("-c").arg(format!("umask {umask}; exec \"$0\" \"$@\"")).arg(moat_bin()).args(args);
    c.env("MOAT_HOME", home).env_remove("MOAT_STORE").env_remove("RUST_LOG");
    c.env("MOAT_NPM_REGISTRY", &reg.url).env("TZ", tz);
    c
}

/// path -> "dir MODE" | "file MODE sha" | "link TARGET", below `root`.
fn listing(root: &Path) -> BTreeMap<String, String> {
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

fn npm_oracle(tmp: &Path, reg: &Registry) -> std::path::PathBuf {
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
    c.args(["--registry", &reg.url, "--loglevel=error"]);
    c.arg("--prefix").arg(&prefix).arg("--cache").arg(&cache).arg("--userconfig").arg(tmp.join("npmrc"));
    c.args(REQUESTS);
    c.env("npm_config_update_notifier", "false").env("HOME", tmp);
    ok(c);
    prefix
}

#[test]
fn npm_tree_matches_npm_and_is_pinned() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let mark = t.join("install-script-ran");
    let reg = Registry::serve();
    reg.publish(&fixtures(&mark), &[("shared", "2.0.0"), ("peer-thing", "2.0.0"), ("dd", "1.0.0")]);
    let dir = t.join("bp");
    fs::create_dir_all(&dir).unwrap();
    let bp = blueprint(&dir, "app.toml", "amd64", &REQUESTS);
    let store = t.join("store");
    let s = store.to_str().unwrap();

    // lock: the tree, platform packages for amd64 only, install scripts listed.
    let (code, out, err) =
        run(moat_at(&t.join("home1"), &reg, "022", "UTC", &["lock", bp.to_str().unwrap(), "--store", s]));
    assert_eq!(code, 0, "lock failed:\n{out}\n{err}");
    let lock = fs::read_to_string(dir.join("app.lock")).unwrap();
    for want in [
        "node_modules/@fx/cli",
        "node_modules/@fx/cli/node_modules/left/node_modules/shared",
        "node_modules/@native/linux-x64",
        "integrity = \"sha512-",
    ] {
        assert!(lock.contains(want), "lock lacks {want}:\n{lock}");
    }
    assert!(!lock.contains("linux-arm64"), "an arm64 package was locked for amd64:\n{lock}");
    assert!(!lock.contains("devonly"), "a devDependency was locked:\n{lock}");
    for listed in ["scripted@1.0.0", "native@1.0.0"] {
        assert!(err.contains(listed), "`moat lock` does not list {listed}'s install script:\n{err}");
    }
    assert!(!err.contains("@fx/cli@1.0.0 ("), "a package without scripts was listed:\n{err}");

    // build from the lock alone, with an empty download cache.
    let home2 = t.join("home2");
    let (code, out1, err) = run(moat_at(&home2, &reg, "022", "UTC", &["build", bp.to_str().unwrap(), "--store", s]));
    assert_eq!(code, 0, "build failed:\n{out1}\n{err}");
    assert!(!mark.exists(), "an install script ran");

    // The layer against the real npm.
    let bundle = t.join("bundle");
    let mut c = Command::new("umoci");
    require_tool("umoci");
    c.arg("unpack").arg("--image").arg(format!("{s}:npmtest")).arg(&bundle);
    ok(c);
    let ours = listing(&bundle.join("rootfs/usr/local"));
    let prefix = npm_oracle(t, &reg);
    assert!(!mark.exists(), "npm ran an install script despite --ignore-scripts");
    let theirs = listing(&prefix);
    // A global install writes no hidden lockfile (`node_modules/.package-lock.json`).
    assert!(!theirs.contains_key("lib/node_modules/.package-lock.json"), "npm now writes a hidden lockfile globally");
    // Accepted difference (docs/npm.md): npm keeps a tarball's setuid,
    // setgid and sticky bits (root-owned setuid files, when run as root);
    // moat drops them. Compared without those bits, after checking that
    // npm had them on the fixture's file and moat has none anywhere.
    assert!(
        theirs.get("lib/node_modules/@fx/cli/node_modules/left/lib/suid").is_some_and(|v| v.starts_with("file 4755 ")),
        "npm no longer keeps setuid bits: {theirs:#?}"
    );
    let special = |v: &String| {
        v.strip_prefix("file ")
            .and_then(|r| r.split(' ').next())
            .is_some_and(|m| u32::from_str_radix(m, 8).unwrap() & 0o7000 != 0)
    };
    assert!(!ours.values().any(special), "moat kept a special mode bit: {ours:#?}");
    let theirs: BTreeMap<String, String> = theirs
        .into_iter()
        .map(|(k, v)| match v.strip_prefix("file ").and_then(|r| r.split_once(' ')) {
            Some((mode, hash)) if mode.len() == 4 => {
                let m = u32::from_str_radix(mode, 8).unwrap() & 0o777;
                (k, format!("file {m:o} {hash}"))
            }
            _ => (k, v),
        })
        .collect();
    let diff: Vec<String> = ours
        .iter()
        .filter(|(k, v)| theirs.get(*k) != Some(v))
        .map(|(k, v)| format!("moat {k}: {v} / npm: {:?}", theirs.get(k)))
        .chain(theirs.iter().filter(|(k, _)| !ours.contains_key(*k)).map(|(k, v)| format!("npm only {k}: {v}")))
        .collect();
    assert!(diff.is_empty(), "moat's layer differs from npm's install:\n{}", diff.join("\n"));
    assert!(ours.get("bin/fx").is_some_and(|v| v == "link ../lib/node_modules/@fx/cli/bin/fx.js"), "{ours:#?}");

    // The SBOM lists every locked package with its purl and hashes.
    let doc = ok({
        let mut c = moat(&home2);
        c.args(["sbom", "npmtest", "--store", s]);
        c
    });
    let doc: Value = serde_json::from_str(&doc).unwrap();
    let locked: toml::Value = toml::from_str(&lock).unwrap();
    let locked = locked["npm"]["packages"].as_array().unwrap();
    let spdx = doc["packages"].as_array().unwrap();
    assert_eq!(spdx.len(), locked.len(), "{doc:#}");
    for (l, p) in locked.iter().zip(spdx) {
        let purl = p["externalRefs"][0]["referenceLocator"].as_str().unwrap();
        let name = l["name"].as_str().unwrap().replace('@', "%40");
        assert_eq!(purl, format!("pkg:npm/{name}@{}", l["version"].as_str().unwrap()));
        assert_eq!(p["checksums"][0]["checksumValue"].as_str(), l["sha256"].as_str(), "{p:#}");
        let sha512 = base64::engine::general_purpose::STANDARD
            .decode(l["integrity"].as_str().unwrap().trim_start_matches("sha512-"))
            .unwrap();
        assert_eq!(p["checksums"][1]["checksumValue"].as_str(), Some(hex::encode(sha512).as_str()), "{p:#}");
    }
    assert!(doc.to_string().contains("pkg:npm/%40fx/cli@1.0.0"), "{doc:#}");

    // `moat audit` names the packages whose install scripts did not run.
    let report = ok({
        let mut c = moat(&home2);
        c.args(["audit", "npmtest", "--store", s]);
        c
    });
    assert!(report.contains("npm install scripts (not run): 2"), "{report}");
    for (pkg, dir) in [
        ("scripted@1.0.0", "/usr/local/lib/node_modules/scripted"),
        ("native@1.0.0", "/usr/local/lib/node_modules/native"),
    ] {
        assert!(report.contains(&format!("{dir} npm package {pkg} declares install scripts")), "{report}");
    }

    // `moat lint` flags them too, at the [npm] table (issue 24 part 4).
    let (code, lint, _) = run({
        let mut c = moat(&home2);
        c.arg("lint").arg(&bp);
        c
    });
    assert_eq!(code, 1, "{lint}");
    for pkg in ["scripted@1.0.0", "native@1.0.0"] {
        assert!(lint.contains(&format!("npm package {pkg} declares install scripts")), "{lint}");
    }
    // A lock without the npm tree its blueprint needs: lint says so, as build would.
    let bare = t.join("bare");
    fs::create_dir_all(&bare).unwrap();
    fs::copy(&bp, bare.join("app.toml")).unwrap();
    let locked = fs::read_to_string(dir.join("app.lock")).unwrap();
    let mut in_npm = false;
    let kept: Vec<&str> = locked
        .lines()
        .filter(|l| {
            if l.starts_with('[') {
                in_npm = l.starts_with("[npm") || l.starts_with("[[npm");
            }
            !in_npm
        })
        .collect();
    fs::write(bare.join("app.lock"), kept.join("\n")).unwrap();
    let (code, lint, _) = run({
        let mut c = moat(&home2);
        c.arg("lint").arg(bare.join("app.toml"));
        c
    });
    assert_eq!(code, 1, "{lint}");
    assert!(lint.contains("the lock has no [npm] package tree"), "{lint}");

    // Same digest under another umask and TZ, other home and store.
    let store2 = t.join("store2");
    let (code, out2, err) = run(moat_at(
        &t.join("home3"),
        &reg,
        "077",
        "Pacific/Kiritimati",
        &["build", bp.to_str().unwrap(), "--store", store2.to_str().unwrap()],
    ));
    assert_eq!(code, 0, "second build failed:\n{out2}\n{err}");
    assert_eq!(out1.trim(), out2.trim(), "two builds gave different digests");

    // `moat verify` rebuilds from the lock in a fresh store and agrees.
    let (code, out, err) =
        run(moat_at(&t.join("home6"), &reg, "022", "UTC", &["verify", bp.to_str().unwrap(), "--store", s]));
    assert!(code == 0 && out.starts_with("ok "), "verify:\n{out}\n{err}");

    // A lock whose sha512 no longer matches its tarball is refused, by name.
    let lock_path = dir.join("app.lock");
    let mut edited: toml::Value = toml::from_str(&lock).unwrap();
    let pkgs = edited["npm"]["packages"].as_array_mut().unwrap();
    let right = pkgs.iter_mut().find(|p| p["name"].as_str() == Some("right")).unwrap();
    right["integrity"] = toml::Value::String(sri(b"not the tarball"));
    fs::write(&lock_path, toml::to_string(&edited).unwrap()).unwrap();
    let (code, out, err) =
        run(moat_at(&t.join("home5"), &reg, "022", "UTC", &["build", bp.to_str().unwrap(), "--store", s]));
    assert_ne!(code, 0, "a tarball that does not match the locked sha512 was built:\n{out}");
    assert!(
        err.contains("right@1.0.0") && err.contains("does not match"),
        "the refusal does not name the package:\n{err}"
    );
    fs::write(&lock_path, &lock).unwrap();

    // A tarball changed on the registry after locking is refused, by name.
    reg.tamper("left", "1.0.0");
    let (code, out, err) =
        run(moat_at(&t.join("home4"), &reg, "022", "UTC", &["build", bp.to_str().unwrap(), "--store", s]));
    assert_ne!(code, 0, "a tampered tarball was built:\n{out}");
    assert!(
        err.contains("left@1.0.0") && err.contains("does not match"),
        "the refusal does not name the package:\n{err}"
    );
}

#[test]
fn platform_follows_the_blueprint_and_compilers_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let reg = Registry::serve();
    reg.publish(&fixtures(&t.join("mark")), &[]);
    let dir = t.join("bp");
    fs::create_dir_all(&dir).unwrap();
    let s = t.join("store");
    let lock_at = |bp: &Path| {
        run(moat_at(
            &t.join("home"),
            &reg,
            "022",
            "UTC",
            &["lock", bp.to_str().unwrap(), "--store", s.to_str().unwrap()],
        ))
    };
    let bp = blueprint(&dir, "arm.toml", "arm64", &["native@1.0.0"]);
    let (code, out, err) = lock_at(&bp);
    assert_eq!(code, 0, "lock failed:\n{out}\n{err}");
    let lock = fs::read_to_string(dir.join("arm.lock")).unwrap();
    assert!(
        lock.contains("@native/linux-arm64") && !lock.contains("linux-x64"),
        "arm64 blueprint, host amd64:\n{lock}"
    );
    // The same [npm] table for another architecture is resolved again, even without --update.
    let bp = blueprint(&dir, "arm.toml", "amd64", &["native@1.0.0"]);
    let (code, out, err) = lock_at(&bp);
    assert_eq!(code, 0, "lock failed:\n{out}\n{err}");
    let lock = fs::read_to_string(dir.join("arm.lock")).unwrap();
    assert!(
        lock.contains("@native/linux-x64") && !lock.contains("linux-arm64"),
        "kept the arm64 tree for amd64:\n{lock}"
    );

    let bp = blueprint(&dir, "cc.toml", "amd64", &["needs-cc@1.0.0"]);
    let (code, _, err) = lock_at(&bp);
    assert_ne!(code, 0, "a package that needs a compiler was locked");
    assert!(err.contains("needs-cc@1.0.0") && err.contains("compile"), "{err}");
    assert!(!dir.join("cc.lock").exists(), "a lock was written");
}

#[test]
fn hostile_registry_answers_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let reg = Registry::serve();
    let mut pkgs = fixtures(&t.join("mark"));
    pkgs.push(pkg("bad-dep", "1.0.0", json!({"dependencies": {"../../etc": "1"}}), vec![]));
    reg.publish(&pkgs, &[]);
    // A packument that says it is 200 MB: refused before it is read.
    reg.files
        .lock()
        .unwrap()
        .insert("/huge".into(), b"HTTP/1.1 200 OK\r\ncontent-length: 200000000\r\nconnection: close\r\n\r\n{".to_vec());
    // A tarball that does not match the registry's own integrity.
    reg.tamper("scripted", "1.0.0");
    let dir = t.join("bp");
    fs::create_dir_all(&dir).unwrap();
    let s = t.join("store");
    for (file, request, want) in [
        ("huge.toml", "huge", vec!["/huge", "larger than"]),
        (
            "bad.toml",
            "bad-dep@1.0.0",
            vec!["bad-dep@1.0.0", "dependency \"../../etc\"", "not a valid npm package name"],
        ),
        ("sri.toml", "scripted@1.0.0", vec!["scripted@1.0.0", "does not match"]),
        ("none.toml", "peer-thing@^9", vec!["peer-thing@^9", "no version"]),
    ] {
        let bp = blueprint(&dir, file, "amd64", &[request]);
        let (code, out, err) = run(moat_at(
            &t.join("home"),
            &reg,
            "022",
            "UTC",
            &["lock", bp.to_str().unwrap(), "--store", s.to_str().unwrap()],
        ));
        assert_ne!(code, 0, "{request}: locked:\n{out}");
        for w in want {
            assert!(err.contains(w), "{request}: the refusal does not say {w:?}:\n{err}");
        }
        assert!(!dir.join(file.replace("toml", "lock")).exists(), "{request}: a lock was written");
    }
}
