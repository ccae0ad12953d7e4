//! The default image serves the package presets (issue 20 part 8): inside
//! a real sandbox of the `agent` image, pip in a fresh venv installs a
//! wheel from a simple index, and npm (locked from the npm registry, not
//! Debian's) installs a package from a registry, both through the gateway
//! (inspected, read-only, as the `pypi` and `npm` presets allow) from an
//! upstream in a test network namespace; a write (an upload) is refused.
//! Needs root, iproute2, python3 and the Debian mirror (the agent image).
#[path = "../supervisor/tests/gateway_common/mod.rs"]
mod gateway_common;

mod gateway_world;

use base64::Engine as _;
use gateway_world::*;
use sha2::{Digest, Sha256, Sha512};
use std::io::Write;
use std::path::Path;

/// A wheel of `tinypkg` 1.0 (VALUE = 42), made here with python's zipfile.
fn wheel(dir: &Path) -> Vec<u8> {
    let whl = dir.join("tinypkg-1.0-py3-none-any.whl");
    let script = r#"
import sys, zipfile, hashlib, base64
files = {
  "tinypkg/__init__.py": b"VALUE = 42\n",
  "tinypkg-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: tinypkg\nVersion: 1.0\n",
  "tinypkg-1.0.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
}
rec = ""
for n, b in files.items():
    h = base64.urlsafe_b64encode(hashlib.sha256(b).digest()).rstrip(b"=").decode()
    rec += f"{n},sha256={h},{len(b)}\n"
rec += "tinypkg-1.0.dist-info/RECORD,,\n"
with zipfile.ZipFile(sys.argv[1], "w") as z:
    for n, b in files.items():
        z.writestr(n, b)
    z.writestr("tinypkg-1.0.dist-info/RECORD", rec)
"#;
    let o =
        std::process::Command::new("python3").args(["-c", script, whl.to_str().unwrap()]).output().expect("python3");
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    std::fs::read(&whl).unwrap()
}

/// An npm tarball of `tinynpm` 1.0.0 (module.exports = 'tiny').
fn tarball() -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    {
        let mut t = tar::Builder::new(&mut gz);
        for (name, body) in [
            ("package/package.json", &br#"{"name":"tinynpm","version":"1.0.0","main":"index.js"}"#[..]),
            ("package/index.js", b"module.exports = 'tiny';\n"),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_size(body.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            t.append_data(&mut h, name, body).unwrap();
        }
        t.finish().unwrap();
    }
    gz.flush().unwrap();
    gz.finish().unwrap()
}

#[test]
fn pip_in_a_venv_and_npm_install_through_the_gateway() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let files = world().home.path().join("files");
    // The simple index and the wheel.
    let whl = wheel(&files);
    let simple = files.join("simple/tinypkg");
    std::fs::create_dir_all(&simple).unwrap();
    let sha = hex::encode(Sha256::digest(&whl));
    std::fs::write(
        simple.join("index.html"),
        format!("<html><body><a href=\"/tinypkg-1.0-py3-none-any.whl#sha256={sha}\">tinypkg-1.0-py3-none-any.whl</a></body></html>\n"),
    )
    .unwrap();
    // The packument and the tarball.
    let tgz = tarball();
    std::fs::create_dir_all(files.join("tarballs")).unwrap();
    std::fs::write(files.join("tarballs/tinynpm-1.0.0.tgz"), &tgz).unwrap();
    let integrity = format!("sha512-{}", base64::engine::general_purpose::STANDARD.encode(Sha512::digest(&tgz)));
    let packument = serde_json::json!({
        "name": "tinynpm", "dist-tags": {"latest": "1.0.0"},
        "versions": {"1.0.0": {"name": "tinynpm", "version": "1.0.0", "main": "index.js",
            "dist": {"tarball": "https://up.test/tarballs/tinynpm-1.0.0.tgz", "integrity": integrity}}}
    });
    std::fs::write(files.join("tinynpm"), packument.to_string()).unwrap();

    // What the pypi and npm presets allow, for the test's upstream (private
    // addresses need allowed_ips, which presets cannot name).
    let rules = "[[network.policy]]\nname = \"registries\"\nbinaries = [\"/usr/bin/python3*\", \"/usr/bin/node*\"]\n\
                 [[network.policy.endpoint]]\nhost = \"up.test\"\nport = 443\nprotocol = \"rest\"\n\
                 access = \"read-only\"\nallowed_ips = [\"198.18.0.0/15\"]\n";
    let p = policy("agent-clients", rules);
    let script = r#"
cd /tmp
python3 -m venv /tmp/v >/tmp/venv.log 2>&1 && echo venv=ok || echo "venv=fail $(tail -n2 /tmp/venv.log)"
/tmp/v/bin/pip install -q --disable-pip-version-check --index-url https://up.test/simple tinypkg >/tmp/pip.log 2>&1 || tail -n3 /tmp/pip.log
/tmp/v/bin/python -c 'import tinypkg; print("pip=%d" % tinypkg.VALUE)'
npm install --registry https://up.test/ --no-audit --no-fund tinynpm >/tmp/npm.log 2>&1 || tail -n5 /tmp/npm.log
node -e 'console.log("npm=" + require("tinynpm"))'
npm publish --registry https://up.test/ --//up.test/:_authToken=t /tmp/node_modules/tinynpm >/tmp/pub.log 2>&1; grep -c '403' /tmp/pub.log | sed 's/^/publish_403=/'; tr '\n' ' ' </tmp/pub.log | sed 's/^/publog=/'; echo
"#;
    let out = ok(&["run", "--rm", "--policy", p.to_str().unwrap(), "agent", "--", "sh", "-c", script]);
    let r = kv(&out);
    assert_eq!(r.get("venv").map(String::as_str), Some("ok"), "{out}");
    assert_eq!(r.get("pip").map(String::as_str), Some("42"), "{out}");
    assert_eq!(r.get("npm").map(String::as_str), Some("tiny"), "{out}");
    assert!(r.get("publish_403").is_some_and(|n| n != "0"), "a publish (PUT) is refused on read-only: {out}");
}
