//! `[pypi]` inputs end to end against a simple index the test serves on
//! loopback (PEP 691 JSON pages, one PEP 503 HTML page, PEP 658 metadata
//! for some files, wheels the test zips): `moat lock` resolves (a diamond,
//! markers that exclude dependencies, an extra), `moat build` lays the
//! wheels out, and the layer is compared with what the real `pip install
//! --no-deps --require-hashes --only-binary :all:` makes of the same wheels.
//! Also: platform wheels chosen for the blueprint's architecture, an
//! sdist-only package refused by name, a tampered wheel refused by name,
//! the SBOM's purls, the same digest under another umask and TZ,
//! `.data/headers` as pip installs them (prefix and venv), downloads
//! several at once (counted by the index), and the interpreter and glibc
//! taken from the image's locked Debian packages (a loopback Debian repo).
mod common;
#[path = "common/debian.rs"]
mod debian_common;
mod pypi_fixture;
use common::*;
use pypi_fixture::*;
use serde_json::Value;
use sha2::{Digest as _, Sha256};
use std::fs;
use std::path::Path;
use std::process::Command;

fn fixtures() -> Vec<(String, Vec<u8>, Vec<u8>)> {
    let x86 = "cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64";
    let arm = "cp311-cp311-manylinux_2_17_aarch64.manylinux2014_aarch64";
    vec![
        wheel(
            "fx-cli",
            "1.0",
            "py3-none-any",
            "Requires-Python: >=3.8\nRequires-Dist: left>=1\nRequires-Dist: right>=1\n\
             Requires-Dist: winonly ; sys_platform == \"win32\"\nRequires-Dist: oldpy ; python_version < \"3.8\"\n\
             Requires-Dist: colorlib>=1 ; extra == \"color\"\nRequires-Dist: docs-only ; extra == \"docs\"\nProvides-Extra: color\n",
            Some("[console_scripts]\nfx = fx_cli.main:run\n[gui_scripts]\nfx-gui = fx_cli.gui:App.start\n[other]\nnot = a:b\n"),
            &[
                ("fx_cli/__init__.py", "", false),
                ("fx_cli/main.py", "def run():\n    print('fx')\n", false),
                ("fx_cli/gui.py", "class App:\n    start = staticmethod(lambda: 0)\n", false),
                ("fx_cli/tool.sh", "#!/bin/sh\necho tool\n", true),
                ("fx_cli-1.0.data/scripts/fx-tool", "#!python\nprint('tool')\n", true),
                ("fx_cli-1.0.data/scripts/plain.sh", "#!/bin/sh\necho plain\n", false),
                ("fx_cli-1.0.data/data/share/fx/readme.txt", "readme\n", false),
                ("fx_cli-1.0.data/purelib/fx_extra_mod.py", "X = 1\n", false),
                ("fx_cli-1.0.data/headers/fx.h", "#define FX 1\n", false),
                ("fx_cli-1.0.data/headers/fx/sub.h", "#define FX_SUB 1\n", false),
            ],
        ),
        wheel("left", "1.0", "py3-none-any", "Requires-Dist: shared<3,>=1\n", None, &[("left/__init__.py", "L = 1\n", false)]),
        wheel("right", "1.0", "py3-none-any", "Requires-Dist: shared>=2\n", None, &[("right.py", "R = 1\n", false)]),
        wheel("shared", "1.0", "py3-none-any", "", None, &[("shared.py", "V = 1\n", false)]),
        wheel("shared", "2.0", "py3-none-any", "", None, &[("shared.py", "V = 2\n", false)]),
        wheel("shared", "3.0", "py3-none-any", "", None, &[("shared.py", "V = 3\n", false)]),
        wheel("colorlib", "1.2", "py3-none-any", "", None, &[("colorlib.py", "C = 1\n", false)]),
        wheel("winonly", "1.0", "py3-none-any", "", None, &[("winonly.py", "", false)]),
        wheel("oldpy", "1.0", "py3-none-any", "", None, &[("oldpy.py", "", false)]),
        wheel("docs-only", "1.0", "py3-none-any", "", None, &[("docs_only.py", "", false)]),
        wheel("native", "1.0", x86, "", None, &[("native/__init__.py", "", false), ("native/_arch.txt", "x86_64\n", false)]),
        wheel("native", "1.0", arm, "", None, &[("native/__init__.py", "", false), ("native/_arch.txt", "aarch64\n", false)]),
    ]
}

const REQUESTS: [&str; 2] = ["fx-cli[color]>=1", "native==1.0"];

#[test]
fn pypi_set_matches_pip_and_is_pinned() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let idx = Index::serve();
    let wheels = fixtures();
    idx.publish(&wheels, &[]);
    let dir = t.join("bp");
    fs::create_dir_all(&dir).unwrap();
    let bp = blueprint(&dir, "app.toml", "amd64", &REQUESTS);
    let store = t.join("store");
    let s = store.to_str().unwrap();

    let (code, out, err) =
        run(moat_at(&t.join("home1"), &idx, "022", "UTC", &["lock", bp.to_str().unwrap(), "--store", s]));
    assert_eq!(code, 0, "lock failed:\n{out}\n{err}");
    let lock = fs::read_to_string(dir.join("app.lock")).unwrap();
    let locked: toml::Value = toml::from_str(&lock).unwrap();
    let pkgs = locked["pypi"]["packages"].as_array().unwrap();
    let names: Vec<String> =
        pkgs.iter().map(|p| format!("{}=={}", p["name"].as_str().unwrap(), p["version"].as_str().unwrap())).collect();
    // The diamond meets at shared 2.0 (left: <3, right: >=2); markers
    // exclude winonly and oldpy; the `color` extra brings colorlib, `docs` is not asked.
    assert_eq!(
        names,
        ["colorlib==1.2", "fx-cli==1.0", "left==1.0", "native==1.0", "right==1.0", "shared==2.0"],
        "{lock}"
    );
    assert!(lock.contains("native-1.0-cp311-cp311-manylinux_2_17_x86_64.manylinux2014_x86_64.whl"), "{lock}");
    assert!(lock.contains("url = \"/files/left-1.0-py3-none-any.whl\""), "{lock}");

    let home2 = t.join("home2");
    let (code, out1, err) = run(moat_at(&home2, &idx, "022", "UTC", &["build", bp.to_str().unwrap(), "--store", s]));
    assert_eq!(code, 0, "build failed:\n{out1}\n{err}");

    // The layer against the real pip.
    require_tool("umoci");
    let bundle = t.join("bundle");
    let mut c = Command::new("umoci");
    c.arg("unpack").arg("--image").arg(format!("{s}:pypitest")).arg(&bundle);
    ok(c);
    let root = bundle.join("rootfs/usr/local");
    let ours_lib = listing(&root.join("lib/python3.11/site-packages"));
    let ours_bin = listing(&root.join("bin"));
    let ours_data = listing(&root.join("share"));
    let ours_include = listing(&root.join("include"));

    let pip_ok = Command::new("python3").args(["-m", "pip", "--version"]).output().is_ok_and(|o| o.status.success());
    assert!(pip_ok, "the oracle needs `python3 -m pip` (Debian: python3-pip; scripts/install-deps.sh)");
    assert_eq!(std::env::consts::ARCH, "x86_64", "the pip oracle installs for the host; this test compares amd64");
    let wheel_dir = t.join("wheels");
    fs::create_dir_all(&wheel_dir).unwrap();
    for (f, b, _) in &wheels {
        fs::write(wheel_dir.join(f), b).unwrap();
    }
    let reqs: Vec<String> = pkgs
        .iter()
        .map(|p| {
            format!(
                "{}=={} --hash=sha256:{}",
                p["name"].as_str().unwrap(),
                p["version"].as_str().unwrap(),
                p["sha256"].as_str().unwrap()
            )
        })
        .collect();
    fs::write(t.join("req.txt"), reqs.join("\n") + "\n").unwrap();
    let prefix = t.join("pip-prefix");
    let mut c = Command::new("sh");
    c.arg("-c").arg("umask 022; exec python3 -m pip \"$@\"").arg("pip");
    c.args(["install", "--no-deps", "--require-hashes", "--only-binary", ":all:", "--no-index", "--no-compile"]);
    c.args(["--disable-pip-version-check", "--no-warn-script-location", "--no-cache-dir", "--find-links"]);
    c.arg(&wheel_dir).arg("--prefix").arg(&prefix).arg("-r").arg(t.join("req.txt"));
    c.env("PIP_CONFIG_FILE", "/dev/null").env("HOME", t);
    ok(c);
    let lib = find_packages_dir(&prefix).expect("pip made no site-packages/dist-packages directory");
    // pip's scheme for --prefix: P/lib/python3.11/site-packages here; Debian's
    // python3 makes it P/local/lib/python3.11/dist-packages. bin and share sit
    // beside lib either way.
    let bin = lib.join("../../../bin");
    let exe = String::from_utf8(
        Command::new("python3").args(["-c", "import sys; print(sys.executable)"]).output().unwrap().stdout,
    )
    .unwrap();
    let shebang = format!("#!{}\n", exe.trim());
    let mut theirs_lib = listing(&lib);
    let mut theirs_bin = listing(&bin);
    let theirs_data = listing(&lib.join("../../../share"));
    // `.data/headers` (pip's scheme for a prefix): PREFIX/include/python3.11/<name>/.
    let theirs_include = listing(&lib.join("../../../include"));

    // Accepted differences (docs/pypi.md), each undone on pip's side:
    // 1. scripts' `#!`: pip writes its own interpreter, moat the image's `python`.
    let mut rewritten = Vec::new();
    for (name, (_, data)) in theirs_bin.iter_mut() {
        if let Some(d) = data.as_mut().filter(|d| d.starts_with(shebang.as_bytes())) {
            *d = [b"#!/usr/bin/python3\n".as_slice(), &d[shebang.len()..]].concat();
            rewritten.push(format!("../../../bin/{name}"));
        }
    }
    assert_eq!(rewritten.len(), 3, "pip wrote the interpreter into fx, fx-gui and fx-tool: {rewritten:?}");
    let requested = ["fx_cli-1.0.dist-info", "native-1.0.dist-info"];
    let infos: Vec<String> = theirs_lib.keys().filter(|k| k.ends_with(".dist-info")).cloned().collect();
    for info in &infos {
        // 2. INSTALLER: pip writes `pip`, moat `moat`.
        let inst = theirs_lib.get_mut(&format!("{info}/INSTALLER")).unwrap();
        assert_eq!(inst.1.as_deref(), Some(b"pip\n".as_slice()));
        inst.1 = Some(b"moat\n".to_vec());
        // 3. REQUESTED: pip marks every line of a requirements file; moat the blueprint's packages.
        let had = theirs_lib.contains_key(&format!("{info}/REQUESTED"));
        assert!(had, "pip no longer writes REQUESTED for {info}");
        if !requested.contains(&info.as_str()) {
            theirs_lib.remove(&format!("{info}/REQUESTED"));
        }
        // 4. RECORD: the rows of what 1-3 changed, rehashed as pip would have.
        let rec_key = format!("{info}/RECORD");
        let text = String::from_utf8(theirs_lib[&rec_key].1.clone().unwrap()).unwrap();
        let mut out = String::new();
        for line in text.split_inclusive("\r\n") {
            let path = line.split(',').next().unwrap();
            let fixed = if path == format!("{info}/REQUESTED") && !requested.contains(&info.as_str()) {
                String::new()
            } else if path == format!("{info}/INSTALLER") {
                format!("{path},{},5\r\n", record_hash(b"moat\n"))
            } else if rewritten.iter().any(|r| r == path) {
                let d = theirs_bin[path.trim_start_matches("../../../bin/")].1.clone().unwrap();
                format!("{path},{},{}\r\n", record_hash(&d), d.len())
            } else {
                line.to_string()
            };
            out.push_str(&fixed);
        }
        theirs_lib.get_mut(&rec_key).unwrap().1 = Some(out.into_bytes());
    }
    for (what, ours, theirs) in [
        ("lib", &ours_lib, &theirs_lib),
        ("bin", &ours_bin, &theirs_bin),
        ("share", &ours_data, &theirs_data),
        ("include", &ours_include, &theirs_include),
    ] {
        let show = |v: Option<&(u32, Option<Vec<u8>>)>| {
            v.map(|(m, d)| format!("{m:o} {:?}", d.as_ref().map(|d| String::from_utf8_lossy(d).into_owned())))
        };
        let diff: Vec<String> = ours
            .iter()
            .filter(|(k, v)| theirs.get(*k) != Some(v))
            .map(|(k, v)| format!("moat {k}: {:?}\n  pip: {:?}", show(Some(v)), show(theirs.get(k))))
            .chain(
                theirs
                    .iter()
                    .filter(|(k, _)| !ours.contains_key(*k))
                    .map(|(k, v)| format!("pip only {k}: {:?}", show(Some(v)))),
            )
            .collect();
        assert!(diff.is_empty(), "moat's {what} differs from pip's install:\n{}", diff.join("\n"));
    }
    assert!(ours_bin.contains_key("fx") && ours_lib.contains_key("fx_extra_mod.py"), "{:?}", ours_bin.keys());
    assert!(ours_include.contains_key("python3.11/fx-cli/fx/sub.h"), "{:?}", ours_include.keys());
    assert!(!ours_lib.keys().any(|k| k.contains("__pycache__")), "moat wrote bytecode");

    // The SBOM lists every locked wheel with its purl and sha256.
    let doc = ok({
        let mut c = moat(&home2);
        c.args(["sbom", "pypitest", "--store", s]);
        c
    });
    let doc: Value = serde_json::from_str(&doc).unwrap();
    let spdx = doc["packages"].as_array().unwrap();
    assert_eq!(spdx.len(), pkgs.len(), "{doc:#}");
    for (l, p) in pkgs.iter().zip(spdx) {
        let purl = p["externalRefs"][0]["referenceLocator"].as_str().unwrap();
        assert_eq!(purl, format!("pkg:pypi/{}@{}", l["name"].as_str().unwrap(), l["version"].as_str().unwrap()));
        assert_eq!(p["checksums"][0]["checksumValue"].as_str(), l["sha256"].as_str(), "{p:#}");
    }

    // Same digest under another umask and TZ, other home and store.
    let store2 = t.join("store2");
    let (code, out2, err) = run(moat_at(
        &t.join("home3"),
        &idx,
        "077",
        "Pacific/Kiritimati",
        &["build", bp.to_str().unwrap(), "--store", store2.to_str().unwrap()],
    ));
    assert_eq!(code, 0, "second build failed:\n{out2}\n{err}");
    assert_eq!(out1.trim(), out2.trim(), "two builds gave different digests");

    // `moat verify` rebuilds from the lock in a fresh store and agrees.
    let (code, out, err) =
        run(moat_at(&t.join("home5"), &idx, "022", "UTC", &["verify", bp.to_str().unwrap(), "--store", s]));
    assert!(code == 0 && out.starts_with("ok "), "verify:\n{out}\n{err}");

    // A wheel changed on the index after locking is refused, by name.
    let evil = wheel("left", "1.0", "py3-none-any", "", None, &[("left/__init__.py", "evil()\n", false)]);
    idx.files
        .lock()
        .unwrap()
        .insert("/files/left-1.0-py3-none-any.whl".into(), ("application/octet-stream".into(), evil.1));
    let (code, out, err) =
        run(moat_at(&t.join("home4"), &idx, "022", "UTC", &["build", bp.to_str().unwrap(), "--store", s]));
    assert_ne!(code, 0, "a tampered wheel was built:\n{out}");
    assert!(
        err.contains("left==1.0") && err.contains("does not match"),
        "the refusal does not name the package:\n{err}"
    );

    // `moat lock` again, unchanged table: the set is kept, the index not asked.
    idx.files.lock().unwrap().clear();
    let (code, out, err) =
        run(moat_at(&t.join("home1"), &idx, "022", "UTC", &["lock", bp.to_str().unwrap(), "--store", s]));
    assert_eq!(code, 0, "a second lock asked the index:\n{out}\n{err}");
    assert_eq!(fs::read_to_string(dir.join("app.lock")).unwrap(), lock, "a second lock changed the set");
    // With --update it is resolved again, and the empty index fails it, naming a package.
    let (code, _, err) =
        run(moat_at(&t.join("home1"), &idx, "022", "UTC", &["lock", "--update", bp.to_str().unwrap(), "--store", s]));
    assert_ne!(code, 0, "--update did not ask the index");
    assert!(err.contains("fx-cli") && err.contains("404"), "{err}");
}

fn find_packages_dir(prefix: &Path) -> Option<std::path::PathBuf> {
    let mut stack = vec![prefix.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).ok()? {
            let p = e.ok()?.path();
            let name = p.file_name()?.to_string_lossy().into_owned();
            if name == "site-packages" || name == "dist-packages" {
                return Some(p);
            }
            if p.is_dir() {
                stack.push(p);
            }
        }
    }
    None
}

#[test]
fn architecture_picks_wheels_and_sdists_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let idx = Index::serve();
    let mut wheels = fixtures();
    wheels.push(wheel("evil", "1.0", "py3-none-any", "", None, &[("../../../../etc/evil.py", "x", false)]));
    // Headers that leave their scheme directory (`..`, an absolute path).
    wheels.push(wheel(
        "hdrevil",
        "1.0",
        "py3-none-any",
        "",
        None,
        &[("hdrevil-1.0.data/headers/../../../../../etc/x.h", "x", false)],
    ));
    wheels.push(wheel("hdrabs", "1.0", "py3-none-any", "", None, &[("hdrabs-1.0.data/headers//etc/x.h", "x", false)]));
    wheels.push(without_record(wheel("norecord", "1.0", "py3-none-any", "", None, &[("norecord.py", "", false)])));
    idx.publish(&wheels, &[("sdonly", "sdonly-1.0.tar.gz"), ("sdonly", "sdonly-0.9.tar.gz")]);
    // A project page that says it is 200 MB: refused before it is read.
    let huge =
        b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: 200000000\r\nconnection: close\r\n\r\n<a";
    idx.files.lock().unwrap().insert("/simple/huge/".into(), ("raw".into(), huge.to_vec()));
    // PEP 658 metadata that is not what the index's page says it is.
    idx.files.lock().unwrap().insert(
        "/files/shared-2.0-py3-none-any.whl.metadata".into(),
        ("application/octet-stream".into(), b"Name: shared\nVersion: 2.0\nRequires-Dist: evil\n".to_vec()),
    );
    let dir = t.join("bp");
    fs::create_dir_all(&dir).unwrap();
    let s = t.join("store");
    let lock_at = |bp: &Path| {
        run(moat_at(
            &t.join("home"),
            &idx,
            "022",
            "UTC",
            &["lock", bp.to_str().unwrap(), "--store", s.to_str().unwrap()],
        ))
    };
    let bp = blueprint(&dir, "arm.toml", "arm64", &["native==1.0"]);
    let (code, out, err) = lock_at(&bp);
    assert_eq!(code, 0, "lock failed:\n{out}\n{err}");
    let lock = fs::read_to_string(dir.join("arm.lock")).unwrap();
    assert!(
        lock.contains("manylinux2014_aarch64.whl") && !lock.contains("x86_64"),
        "arm64 blueprint, host amd64:\n{lock}"
    );
    // The same table for another architecture is resolved again, even without --update.
    let bp = blueprint(&dir, "arm.toml", "amd64", &["native==1.0"]);
    let (code, out, err) = lock_at(&bp);
    assert_eq!(code, 0, "lock failed:\n{out}\n{err}");
    let lock = fs::read_to_string(dir.join("arm.lock")).unwrap();
    assert!(
        lock.contains("manylinux2014_x86_64.whl") && !lock.contains("aarch64"),
        "kept the arm64 wheel for amd64:\n{lock}"
    );

    for (file, request, want) in [
        ("sd.toml", &["sdonly>=0.5"][..], vec!["sdonly", "sdist", "1.0"]),
        ("none.toml", &["shared>=9"], vec!["shared>=9", "no wheel"]),
        ("conflict.toml", &["shared==1.0", "right"], vec!["shared==1.0", "right==1.0 requires shared>=2"]),
        ("meta.toml", &["shared==2.0"], vec!["shared", "shared-2.0-py3-none-any.whl.metadata", "does not match"]),
        ("evil.toml", &["evil"], vec!["evil==1.0", "outside", "refused"]),
        ("hdrevil.toml", &["hdrevil"], vec!["hdrevil==1.0", "../../../../../etc/x.h", "outside", "refused"]),
        ("hdrabs.toml", &["hdrabs"], vec!["hdrabs==1.0", "/etc/x.h", "outside", "refused"]),
        ("huge.toml", &["huge"], vec!["/simple/huge/", "larger than"]),
        ("norecord.toml", &["norecord"], vec!["norecord==1.0", "RECORD is missing"]),
    ] {
        let bp = blueprint(&dir, file, "amd64", request);
        let request = request.join(", ");
        let (code, out, err) = lock_at(&bp);
        assert_ne!(code, 0, "{request}: locked:\n{out}");
        for w in want {
            assert!(err.contains(w), "{request}: the refusal does not say {w:?}:\n{err}");
        }
        assert!(!dir.join(file.replace("toml", "lock")).exists(), "{request}: a lock was written");
    }
}

/// A venv target (`venv = true`): a wheel's `.data/headers` go to
/// VENV/include/site/python3.11/<name>/, as pip installs them into a venv;
/// the tree and the RECORD rows are compared with pip's install into a real venv.
#[test]
fn venv_headers_match_pip() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let idx = Index::serve();
    let files = [
        ("hdr_lib.py", "H = 1\n", false),
        ("hdr_lib-2.0.data/headers/hdr.h", "#define HDR 2\n", false),
        ("hdr_lib-2.0.data/headers/inner/more.h", "#define MORE 1\n", false),
    ];
    let w = wheel("hdr-lib", "2.0", "py3-none-any", "", None, &files);
    idx.publish(std::slice::from_ref(&w), &[]);
    let dir = t.join("bp");
    fs::create_dir_all(&dir).unwrap();
    let bp = dir.join("venv.toml");
    fs::write(
        &bp,
        "name = \"pypivenv\"\nepoch = 1700000000\narchitecture = \"amd64\"\n[pypi]\npackages = [\"hdr-lib==2.0\"]\n\
         python_version = \"3.11\"\npython = \"/opt/venv/bin/python\"\nvenv = true\n\
         target = \"/opt/venv/lib/python3.11/site-packages\"\n",
    )
    .unwrap();
    let s = t.join("store");
    let s = s.to_str().unwrap();
    for cmd in ["lock", "build"] {
        let (code, out, err) =
            run(moat_at(&t.join("home"), &idx, "022", "UTC", &[cmd, bp.to_str().unwrap(), "--store", s]));
        assert_eq!(code, 0, "{cmd} failed:\n{out}\n{err}");
    }
    require_tool("umoci");
    let bundle = t.join("bundle");
    let mut c = Command::new("umoci");
    c.arg("unpack").arg("--image").arg(format!("{s}:pypivenv")).arg(&bundle);
    ok(c);
    let ours = bundle.join("rootfs/opt/venv");

    let venv = t.join("venv");
    let mut c = Command::new("python3");
    c.args(["-m", "venv", "--without-pip"]).arg(&venv);
    ok(c);
    let wheel_dir = t.join("wheels");
    fs::create_dir_all(&wheel_dir).unwrap();
    fs::write(wheel_dir.join(&w.0), &w.1).unwrap();
    fs::write(t.join("req.txt"), format!("hdr-lib==2.0 --hash=sha256:{}\n", hex::encode(Sha256::digest(&w.1))))
        .unwrap();
    let mut c = Command::new("sh");
    c.arg("-c").arg("umask 022; exec python3 -m pip \"$@\"").arg("pip");
    c.arg("--python").arg(venv.join("bin/python"));
    c.args(["install", "--no-deps", "--require-hashes", "--only-binary", ":all:", "--no-index", "--no-compile"]);
    c.args(["--disable-pip-version-check", "--no-cache-dir", "--find-links"]);
    c.arg(&wheel_dir).arg("-r").arg(t.join("req.txt"));
    c.env("PIP_CONFIG_FILE", "/dev/null").env("HOME", t);
    ok(c);
    // (`python3 -m venv` itself makes an empty include/python3.11: not pip's.)
    let theirs_include = listing(&venv.join("include/site"));
    assert!(theirs_include.contains_key("python3.11/hdr-lib/inner/more.h"), "pip's venv: {:?}", theirs_include.keys());
    assert_eq!(listing(&ours.join("include")).len(), theirs_include.len() + 1, "moat wrote more than include/site");
    assert_eq!(listing(&ours.join("include/site")), theirs_include, "moat's venv include/site differs from pip's");
    let rows = |root: &Path| -> Vec<String> {
        let rec = fs::read_to_string(root.join("lib/python3.11/site-packages/hdr_lib-2.0.dist-info/RECORD")).unwrap();
        rec.lines().filter(|l| l.contains("include/")).map(str::to_string).collect()
    };
    let theirs = rows(&venv);
    assert_eq!(theirs.len(), 2, "pip's RECORD rows for headers: {theirs:?}");
    assert_eq!(rows(&ours), theirs, "moat's RECORD rows for headers differ from pip's");
}

/// Downloads run several at once and at most 8: project pages and wheels at
/// `moat lock`, wheels at a cold `moat build` (the index answers each
/// request after 150 ms and counts how many are in flight). A wheel that
/// fails its pin fails the build naming its package, and leaves no
/// half-written file in the downloads cache or the store.
#[test]
fn downloads_run_at_once_bounded_and_fail_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let idx = Index::serve();
    let names: Vec<String> = (0..12).map(|i| format!("p{i:02}")).collect();
    let wheels: Vec<_> = names
        .iter()
        .map(|n| wheel(n, "1.0", "py3-none-any", "", None, &[(&format!("{n}.py"), &format!("N = {n:?}\n"), false)]))
        .collect();
    idx.publish(&wheels, &[]);
    let dir = t.join("bp");
    fs::create_dir_all(&dir).unwrap();
    let requests: Vec<&str> = names.iter().map(String::as_str).collect();
    let bp = blueprint(&dir, "par.toml", "amd64", &requests);
    let bp = bp.to_str().unwrap();
    let s = t.join("store");
    let s = s.to_str().unwrap();
    idx.delay_ms.store(150, std::sync::atomic::Ordering::SeqCst);

    let (code, out, err) = run(moat_at(&t.join("home1"), &idx, "022", "UTC", &["lock", bp, "--store", s]));
    assert_eq!(code, 0, "lock failed:\n{out}\n{err}");
    let (pages, files) = (idx.most_at_once("pages"), idx.most_at_once("files"));
    assert!((2..=8).contains(&pages), "moat lock had {pages} project pages in flight at most (want 2..=8)");
    assert!((2..=8).contains(&files), "moat lock had {files} wheels in flight at most (want 2..=8)");

    let (code, out, err) = run(moat_at(&t.join("home2"), &idx, "022", "UTC", &["build", bp, "--store", s]));
    assert_eq!(code, 0, "build failed:\n{out}\n{err}");
    let files = idx.most_at_once("files");
    assert!((2..=8).contains(&files), "a cold moat build had {files} wheels in flight at most (want 2..=8)");
    assert_eq!(idx.most_at_once("pages"), 0, "moat build asked for a project page");

    // p07 changed on the index: a cold build into a fresh store fails naming it.
    let evil = wheel("p07", "1.0", "py3-none-any", "", None, &[("p07.py", "evil()\n", false)]);
    idx.files.lock().unwrap().insert(format!("/files/{}", evil.0), ("application/octet-stream".into(), evil.1));
    let home3 = t.join("home3");
    let s3 = t.join("store3");
    let (code, out, err) = run(moat_at(&home3, &idx, "022", "UTC", &["build", bp, "--store", s3.to_str().unwrap()]));
    assert_ne!(code, 0, "a tampered wheel was built:\n{out}");
    assert!(err.contains("p07==1.0") && err.contains("does not match"), "the refusal does not name p07:\n{err}");
    let cached = files_in(&home3, "downloads");
    assert!(!cached.is_empty(), "no wheel reached the downloads cache of {}", home3.display());
    for (name, bytes) in cached.iter().chain(&files_in(&s3, "sha256")) {
        assert_eq!(name, &hex::encode(Sha256::digest(bytes)), "a half-written or wrong file {name} was left behind");
    }
}

/// A blueprint with a `[debian]` set from the loopback repository and a `[pypi]` table.
fn image_blueprint(dir: &Path, file: &str, keyring_sha: &str, debs: &[&str], pypi: &str) -> String {
    let q = |l: &[&str]| l.iter().map(|p| format!("{p:?}")).collect::<Vec<_>>().join(", ");
    let text = format!(
        "name = \"pyimage\"\nepoch = 1700000000\narchitecture = \"amd64\"\n[debian]\nsuite = \"moat-test\"\n\
         suites = [\"moat-test\"]\npackages = [{}]\nessential = false\n\
         keyring = {{ path = \"keyring.gpg\", sha256 = \"{keyring_sha}\" }}\n[pypi]\n{pypi}\n",
        q(debs)
    );
    fs::write(dir.join(file), text).unwrap();
    dir.join(file).to_str().unwrap().to_string()
}

/// The image's locked Debian packages decide the interpreter and glibc the
/// wheels are chosen for: python3.11 and glibc 2.31 here, so no cp312 and
/// no manylinux_2_34 wheel, and `python_full_version` markers see 3.11.2.
/// Settings that contradict the image are refused by name; without a Debian
/// Python the blueprint's own `python_version` stands.
#[test]
fn the_images_debian_python_and_glibc_decide_the_wheels() {
    let tmp = tempfile::tempdir().unwrap();
    let t = tmp.path();
    let mut r = debian_common::Repo::new(&t.join("deb"), "moat-test");
    let pkg = |name, version, fields, files, symlinks| debian_common::Pkg { name, version, fields, files, symlinks };
    r.add(&pkg(
        "libc6",
        "2.31-13+deb11u11",
        "",
        vec![("usr/lib/x86_64-linux-gnu/libc.so.6", b"ELF".to_vec(), 0o644)],
        vec![],
    ));
    r.add(&pkg(
        "python3.11-minimal",
        "3.11.2-6+deb12u9",
        "Depends: libc6\n",
        vec![("usr/bin/python3.11", b"ELF".to_vec(), 0o755)],
        vec![],
    ));
    r.add(&pkg(
        "python3-minimal",
        "3.11.2-1+b1",
        "Depends: python3.11-minimal\n",
        vec![("usr/share/doc/python3-minimal/README", b"x".to_vec(), 0o644)],
        vec![("usr/bin/python3", "python3.11")],
    ));
    r.publish();
    let mirror = debian_common::serve(&r.root);
    let idx = Index::serve();
    let (c311, c334, c312) =
        ("cp311-cp311-manylinux_2_17_x86_64", "cp311-cp311-manylinux_2_34_x86_64", "cp312-cp312-manylinux_2_17_x86_64");
    idx.publish(
        &[
            wheel(
                "cext",
                "1.0",
                c311,
                "Requires-Dist: patchdep ; python_full_version >= \"3.11.1\"\n",
                None,
                &[("cext.py", "", false)],
            ),
            wheel("cext", "2.0", c334, "", None, &[("cext.py", "", false)]),
            wheel("cext", "2.0", c312, "", None, &[("cext.py", "", false)]),
            wheel("patchdep", "1.0", "py3-none-any", "", None, &[("patchdep.py", "", false)]),
            wheel("pure", "1.0", "py3-none-any", "", None, &[("pure.py", "", false)]),
        ],
        &[],
    );
    let dir = t.join("bp");
    fs::create_dir_all(&dir).unwrap();
    fs::copy(&r.keyring, dir.join("keyring.gpg")).unwrap();
    let sha = r.keyring_sha256();
    let s = t.join("store");
    let moat_img = |args: &[&str]| {
        let mut c = moat_at(&t.join("home"), &idx, "022", "UTC", args);
        c.env("MOAT_DEBIAN_MIRROR", &mirror);
        run(c)
    };
    let s = s.to_str().unwrap();
    let py311 = "python_version = \"3.11\"\ntarget = \"/usr/local/lib/python3.11/dist-packages\"";
    let py312 = "python_version = \"3.12\"\ntarget = \"/usr/local/lib/python3.12/dist-packages\"";

    let bp = image_blueprint(&dir, "ok.toml", &sha, &["python3-minimal"], &format!("packages = [\"cext\"]\n{py311}"));
    let (code, out, err) = moat_img(&["lock", &bp, "--store", s]);
    assert_eq!(code, 0, "lock failed:\n{out}\n{err}");
    let lock = fs::read_to_string(dir.join("ok.lock")).unwrap();
    let v: toml::Value = toml::from_str(&lock).unwrap();
    assert!(lock.contains(&format!("cext-1.0-{c311}.whl")), "not the manylinux_2_17 cext for glibc 2.31:\n{lock}");
    assert!(!lock.contains("manylinux_2_34") && !lock.contains("cp312"), "{lock}");
    assert!(lock.contains("name = \"patchdep\""), "python_full_version is not the image's 3.11.2:\n{lock}");
    assert_eq!(v["pypi"]["python_version"].as_str(), Some("3.11.2"), "{lock}");
    assert_eq!(v["pypi"]["glibc"].as_str(), Some("2.31"), "{lock}");
    let (code, out, err) = moat_img(&["build", &bp, "--store", s]);
    assert_eq!(code, 0, "build failed:\n{out}\n{err}");
    let (code, out, err) = moat_img(&["lock", &bp, "--store", s]);
    assert_eq!(code, 0, "second lock failed:\n{out}\n{err}");
    assert_eq!(fs::read_to_string(dir.join("ok.lock")).unwrap(), lock, "a second lock changed the set");

    for (file, pypi, want) in [
        (
            "py312.toml",
            format!("packages = [\"pure\"]\n{py312}"),
            vec!["python_version = \"3.12\"", "python3.11-minimal", "3.11.2"],
        ),
        (
            "glibc.toml",
            format!("packages = [\"pure\"]\nglibc = \"2.34\"\n{py311}"),
            vec!["glibc = \"2.34\"", "libc6", "2.31-13"],
        ),
        (
            "nopy.toml",
            format!("packages = [\"pure\"]\npython = \"/usr/bin/python3.12\"\n{py311}"),
            vec!["/usr/bin/python3.12", "no locked Debian package provides it", "python3.11-minimal"],
        ),
    ] {
        let bp = image_blueprint(&dir, file, &sha, &["python3-minimal"], &pypi);
        let (code, out, err) = moat_img(&["lock", &bp, "--store", s]);
        assert_ne!(code, 0, "{file}: locked against the image:\n{out}");
        for w in want {
            assert!(err.contains(w), "{file}: the refusal does not say {w:?}:\n{err}");
        }
        assert!(!dir.join(file.replace("toml", "lock")).exists(), "{file}: a lock was written");
    }

    // No Debian Python in the image: the blueprint's python_version stands; glibc is still the image's.
    let bp = image_blueprint(&dir, "libc.toml", &sha, &["libc6"], &format!("packages = [\"pure\"]\n{py312}"));
    let (code, out, err) = moat_img(&["lock", &bp, "--store", s]);
    assert_eq!(code, 0, "lock without a Debian Python failed:\n{out}\n{err}");
    let v: toml::Value = toml::from_str(&fs::read_to_string(dir.join("libc.lock")).unwrap()).unwrap();
    assert_eq!(v["pypi"].get("python_version"), None, "{v:#?}");
    assert_eq!(v["pypi"]["glibc"].as_str(), Some("2.31"), "{v:#?}");
}
