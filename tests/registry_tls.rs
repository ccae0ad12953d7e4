//! Registry scenarios over TLS (a test CA plus a separate server certificate)
//! with htpasswd basic auth, against a real Debian docker-registry on
//! loopback: untrusted certificate refused, wrong password named clearly,
//! login/logout with 0600 credentials, Docker's config.json auths honoured.
#[path = "common/registry.rs"]
#[allow(dead_code)] // each test file uses part of the helpers
mod reg;

use moat_builder::Store;
use reg::{make_image, moat, moat_err, moat_ok, Registry, PASS, USER};
use std::os::unix::fs::PermissionsExt;

#[test]
fn tls_with_basic_auth_login_push_pull_logout() {
    let r = Registry::tls_auth();
    let ca = r.ca.clone().unwrap();
    let ca = ca.to_str().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let home = tmp.path().join("home");
    let src = tmp.path().join("src");
    let src_s = src.to_str().unwrap();
    let s = Store::open(&src).unwrap();
    let img = make_image(&s, "demo", 11, 1 << 20, true);
    let target = format!("{}/moat/tls", r.addr);

    // Without the CA the certificate is not trusted, and moat does not fall back to HTTP.
    let err = moat_err(&home, &["--store", src_s, "push", "demo", &target], None);
    assert!(err.contains(&r.addr) && err.contains("--ca-file"), "untrusted-cert message: {err}");

    // Trusted, but no credentials.
    let err = moat_err(&home, &["--store", src_s, "push", "demo", &target, "--ca-file", ca], None);
    assert!(err.contains(&r.addr) && err.contains("rejected the credentials"), "anonymous message: {err}");

    // Wrong password: login refuses and stores nothing.
    let err = moat_err(&home, &["login", &r.addr, "-u", USER, "--ca-file", ca], Some("not-the-password\n"));
    assert!(
        err.contains(&r.addr) && err.contains("rejected the credentials") && err.contains(USER),
        "wrong-password message: {err}"
    );
    assert!(!err.contains("not-the-password"), "password echoed: {err}");
    let creds = home.join("credentials/registries.json");
    assert!(!creds.exists(), "credentials stored despite a failed login");

    let out = moat(&home, &["login", &r.addr, "-u", USER, "--ca-file", ca], Some(&format!("{PASS}\n")));
    assert!(out.status.success(), "login failed: {}", String::from_utf8_lossy(&out.stderr));
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&creds), 0o600);
    assert_eq!(mode(creds.parent().unwrap()), 0o700);

    let pinned = moat_ok(&home, &["-q", "--store", src_s, "push", "demo", &target, "--ca-file", ca]);
    assert_eq!(pinned, format!("{target}@{}", img.digest));
    let dst = tmp.path().join("dst");
    let dst_s = dst.to_str().unwrap();
    moat_ok(&home, &["-q", "--store", dst_s, "pull", &pinned, "--ca-file", ca]);
    let d = Store::open_existing(&dst).unwrap();
    assert_eq!(d.resolve("tls").unwrap().manifest.digest, img.digest);
    let layer = s.manifest(&img.digest).unwrap().layers[0].digest.clone();
    assert_eq!(std::fs::read(s.blob_path(&layer)).unwrap(), std::fs::read(d.blob_path(&layer)).unwrap());

    // Logout forgets; a pull is then anonymous and refused with the registry named.
    moat_ok(&home, &["logout", &r.addr]);
    let dst2 = tmp.path().join("dst2");
    let err = moat_err(&home, &["--store", dst2.to_str().unwrap(), "pull", &pinned, "--ca-file", ca], None);
    assert!(err.contains(&r.addr) && err.contains("rejected the credentials"), "after logout: {err}");

    // Docker's config.json auths are read (HOME is the test home).
    let auth = base64_encode(format!("{USER}:{PASS}").as_bytes());
    std::fs::create_dir_all(home.join(".docker")).unwrap();
    std::fs::write(
        home.join(".docker/config.json"),
        format!(r#"{{"auths":{{"https://{}":{{"auth":"{auth}"}}}}}}"#, r.addr),
    )
    .unwrap();
    moat_ok(&home, &["-q", "--store", dst2.to_str().unwrap(), "pull", &pinned, "--ca-file", ca]);

    // A Docker credential helper named in credHelpers is asked (protocol:
    // `docker-credential-NAME get`, server on stdin, JSON on stdout).
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let helper = bin.join("docker-credential-moattest");
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 1\nread -r server\n[ \"$server\" = \"{}\" ] || exit 1\nprintf '{{\"ServerURL\":\"%s\",\"Username\":\"{USER}\",\"Secret\":\"{PASS}\"}}' \"$server\"\n",
            r.addr
        ),
    )
    .unwrap();
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(home.join(".docker/config.json"), format!(r#"{{"credHelpers":{{"{}":"moattest"}}}}"#, r.addr))
        .unwrap();
    let dst3 = tmp.path().join("dst3");
    let path = format!("{}:{}", bin.display(), std::env::var("PATH").unwrap_or_default());
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_moat"))
        .args(["-q", "--store", dst3.to_str().unwrap(), "pull", &pinned, "--ca-file", ca])
        .env("MOAT_HOME", &home)
        .env("HOME", &home)
        .env("PATH", path)
        .output()
        .unwrap();
    assert!(out.status.success(), "pull with a credential helper: {}", String::from_utf8_lossy(&out.stderr));
}

fn base64_encode(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::new();
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16 | (*c.get(1).unwrap_or(&0) as u32) << 8 | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                s.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}
