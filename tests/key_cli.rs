//! `moat key generate` end to end against the built binary: the password from
//! MOAT_KEY_PASSWORD or one line of stdin (never argv, never printed); the
//! files' modes (0600 key, 0644 public key); refusal to replace an existing
//! key, a half-existing pair or a symlink unless --force; openssl reads the
//! public key, and the private key decrypts with the password.
mod common;

use common::{moat, require_tool};
use moat_builder::sign::keys;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::process::{Command, Stdio};

const PASSWORD: &str = "key-pass-3b9e41d7-NOT-SHOWN";

/// Runs `moat key generate ARGS` with the password in the environment
/// (`env`) or on stdin; asserts the password is never printed; returns
/// (code, stdout, stderr).
fn generate(home: &Path, args: &[&str], env: Option<&str>, stdin: Option<&str>) -> (i32, String, String) {
    let mut c: Command = moat(home);
    c.args(["key", "generate"]).args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    c.env_remove("MOAT_KEY_PASSWORD");
    if let Some(pw) = env {
        c.env("MOAT_KEY_PASSWORD", pw);
    }
    c.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = c.spawn().expect("spawn moat");
    if let Some(text) = stdin {
        let _ = child.stdin.take().unwrap().write_all(text.as_bytes());
    }
    let out = child.wait_with_output().unwrap();
    let (so, se) =
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    assert!(!so.contains(PASSWORD) && !se.contains(PASSWORD), "printed the password:\n{so}\n{se}");
    (out.status.code().unwrap_or(-1), so, se)
}

fn mode(p: &Path) -> u32 {
    fs::symlink_metadata(p).unwrap().mode() & 0o7777
}

/// openssl reads the public key file (and can say no: a corrupt one fails).
fn openssl_reads(public: &Path) -> bool {
    Command::new("openssl")
        .args(["pkey", "-pubin", "-noout", "-in"])
        .arg(public)
        .stderr(Stdio::null())
        .status()
        .expect("run openssl")
        .success()
}

#[test]
fn generate_writes_a_cosign_pair_with_modes_and_never_clobbers() {
    require_tool("openssl");
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let dir = t.path().join("keys/new"); // created by the command
    let (key, public) = (dir.join("cosign.key"), dir.join("cosign.pub"));

    let (code, out, err) = generate(&home, &["--out", dir.to_str().unwrap()], Some(PASSWORD), None);
    assert_eq!(code, 0, "{out}\n{err}");
    assert_eq!(out, format!("{}\n{}\n", key.display(), public.display()));
    assert_eq!(mode(&key), 0o600, "private key mode");
    assert_eq!(mode(&public), 0o644, "public key mode");
    assert!(fs::read_to_string(&key).unwrap().starts_with("-----BEGIN ENCRYPTED SIGSTORE PRIVATE KEY-----\n"));
    assert!(openssl_reads(&public), "openssl cannot read {}", public.display());
    let signer = keys::load_private(&fs::read(&key).unwrap(), PASSWORD.as_bytes()).unwrap();
    assert_eq!(signer.verifying_key(), &keys::load_public(&fs::read(&public).unwrap()).unwrap());
    assert!(matches!(keys::load_private(&fs::read(&key).unwrap(), b"guess"), Err(keys::KeyError::WrongPassword)));
    // No temp files left beside them.
    let mut names: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert_eq!(names, ["cosign.key", "cosign.pub"]);

    // A second run refuses, naming the file and --force, and changes nothing.
    let before = (fs::read(&key).unwrap(), fs::read(&public).unwrap());
    let (code, _, err) = generate(&home, &["--out", dir.to_str().unwrap()], Some(PASSWORD), None);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&key.display().to_string()) && err.contains("--force"), "{err}");
    assert_eq!(before, (fs::read(&key).unwrap(), fs::read(&public).unwrap()));

    // --force replaces both, with the same modes.
    let (code, _, err) = generate(&home, &["--out", dir.to_str().unwrap(), "--force"], Some(PASSWORD), None);
    assert_eq!(code, 0, "{err}");
    assert_ne!(before.1, fs::read(&public).unwrap(), "--force wrote a new key");
    assert_eq!((mode(&key), mode(&public)), (0o600, 0o644));
    assert!(openssl_reads(&public));
}

#[test]
fn password_from_stdin_one_line() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    // "\r\n" and "\n" end the line; what follows the first line is not the password.
    for (i, input) in
        [format!("{PASSWORD}\n"), format!("{PASSWORD}\r\nsecond line\n"), PASSWORD.to_string()].iter().enumerate()
    {
        let dir = t.path().join(format!("k{i}"));
        let (code, out, err) = generate(&home, &["--out", dir.to_str().unwrap()], None, Some(input));
        assert_eq!(code, 0, "{out}\n{err}");
        assert_eq!(err, "", "no warning for a real password");
        let pem = fs::read(dir.join("cosign.key")).unwrap();
        keys::load_private(&pem, PASSWORD.as_bytes()).unwrap_or_else(|e| panic!("input {i}: {e}"));
    }

    // Nothing on stdin is refused (a forgotten pipe must not mean "no password").
    let dir = t.path().join("none");
    let (code, _, err) = generate(&home, &["--out", dir.to_str().unwrap()], None, None);
    assert_eq!(code, 2);
    assert!(err.contains("no password on stdin") && err.contains("MOAT_KEY_PASSWORD"), "{err}");
    assert!(!dir.join("cosign.key").exists() && !dir.join("cosign.pub").exists());

    // An explicit empty password works, with a warning; a huge one is refused.
    let (code, _, err) = generate(&home, &["--out", dir.to_str().unwrap()], Some(""), None);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("warning: empty password"), "{err}");
    keys::load_private(&fs::read(dir.join("cosign.key")).unwrap(), b"").unwrap();
    let big = t.path().join("big");
    let (code, _, err) = generate(&home, &["--out", big.to_str().unwrap()], None, Some(&"x".repeat(10_000)));
    assert_eq!(code, 2);
    assert!(err.contains("longer than 4096 bytes"), "{err}");
    assert!(!big.join("cosign.key").exists());
}

#[test]
fn half_pairs_and_symlinks_are_not_replaced_without_force() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");

    // Only cosign.pub there: refused, and no cosign.key left behind.
    let dir = t.path().join("half");
    fs::create_dir(&dir).unwrap();
    fs::write(dir.join("cosign.pub"), b"someone's public key").unwrap();
    let (code, _, err) = generate(&home, &["--out", dir.to_str().unwrap()], Some(PASSWORD), None);
    assert_eq!(code, 2);
    assert!(err.contains("cosign.pub exists"), "{err}");
    assert!(!dir.join("cosign.key").exists(), "left a cosign.key behind");
    assert_eq!(fs::read(dir.join("cosign.pub")).unwrap(), b"someone's public key");

    // cosign.key a symlink (dangling or not): refused, its target untouched.
    let dir = t.path().join("link");
    fs::create_dir(&dir).unwrap();
    let target = t.path().join("precious");
    fs::write(&target, b"precious").unwrap();
    fs::set_permissions(&target, fs::Permissions::from_mode(0o644)).unwrap();
    std::os::unix::fs::symlink(&target, dir.join("cosign.key")).unwrap();
    let (code, _, err) = generate(&home, &["--out", dir.to_str().unwrap()], Some(PASSWORD), None);
    assert_eq!(code, 2, "{err}");
    assert_eq!(fs::read(&target).unwrap(), b"precious");
    assert!(!dir.join("cosign.pub").exists());

    // --force replaces the link itself, never writing through it.
    let (code, _, err) = generate(&home, &["--out", dir.to_str().unwrap(), "--force"], Some(PASSWORD), None);
    assert_eq!(code, 0, "{err}");
    assert_eq!(fs::read(&target).unwrap(), b"precious");
    assert!(fs::symlink_metadata(dir.join("cosign.key")).unwrap().is_file());
    assert_eq!(mode(&dir.join("cosign.key")), 0o600);
}
