//! Setuid files in the workspace, from inside a real sandbox: a setuid-root
//! program placed in the workspace gives a sandbox process no privileges
//! (the workspace is mounted `nosuid`; the sandbox also runs with
//! no_new_privs), and a backup of that workspace restored to the host comes
//! back without the setuid bit. Addresses privilege escalation through the
//! workspace, the one directory both the agent and the host write. The
//! program is a small static C file built with the system compiler
//! (gcc, libc6-dev); the test first proves it does raise privileges where
//! nothing stops it (uid 1000 on the host). Needs root and busybox-static.
#[path = "sandbox_common/mod.rs"]
mod sandbox_common;

use sandbox_common::World;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const WHO_C: &str = "#include <stdio.h>\n#include <unistd.h>\n\
int main(void) { printf(\"euid=%d\\n\", (int)geteuid()); return 0; }\n";

/// Builds the static probe `who` (prints its effective uid) in `dir`.
fn build_who(dir: &Path) -> PathBuf {
    let (src, bin) = (dir.join("who.c"), dir.join("who"));
    fs::write(&src, WHO_C).unwrap();
    let o = Command::new("cc")
        .args(["-static", "-O2", "-o"])
        .arg(&bin)
        .arg(&src)
        .output()
        .expect("run cc (install gcc and libc6-dev: scripts/install-deps.sh)");
    assert!(o.status.success(), "cc -static: {}", String::from_utf8_lossy(&o.stderr));
    bin
}

fn setuid_root(p: &Path) {
    std::os::unix::fs::chown(p, Some(0), Some(0)).unwrap();
    fs::set_permissions(p, fs::Permissions::from_mode(0o4755)).unwrap();
}

#[test]
fn a_setuid_root_file_in_the_workspace_gives_no_privileges_and_loses_the_bit_on_restore() {
    let w = World::new();
    let host = tempfile::Builder::new().prefix("moat-suid-").tempdir().unwrap();
    fs::set_permissions(host.path(), fs::Permissions::from_mode(0o755)).unwrap();
    let who = build_who(host.path());
    setuid_root(&who);
    // Control: where nothing stops it, the program raises uid 1000 to root.
    let o = Command::new(&who).uid(1000).gid(1000).output().expect("run who as uid 1000");
    assert_eq!(String::from_utf8_lossy(&o.stdout).trim(), "euid=0", "the setuid probe does not work on the host");

    let ws = host.path().join("ws");
    fs::create_dir(&ws).unwrap();
    fs::copy(&who, ws.join("who")).unwrap();
    setuid_root(&ws.join("who"));
    let out = w.ok(&[
        "run",
        "--name",
        "suid",
        "--workspace",
        ws.to_str().unwrap(),
        &w.image,
        "--",
        "sh",
        "-c",
        "echo \"uid=$(id -u)\"; /sandbox/who; grep ' /sandbox ' /proc/self/mountinfo",
    ]);
    let uid = out.lines().find_map(|l| l.strip_prefix("uid=")).unwrap_or_else(|| panic!("no uid line: {out}"));
    assert!(uid != "0" && !uid.is_empty(), "the sandbox runs as root: {out}");
    assert!(out.contains(&format!("euid={uid}")), "the setuid-root file raised privileges in the sandbox: {out}");
    let line = out.lines().find(|l| l.contains(" /sandbox ")).unwrap_or_else(|| panic!("no /sandbox mount: {out}"));
    let opts = line.split(' ').nth(5).unwrap_or("");
    assert!(opts.split(',').any(|o| o == "nosuid"), "the workspace is mounted without nosuid: {line}");

    // Through a snapshot back to the host: the bit is gone, the owner kept.
    w.ok(&["backup", "suid"]);
    w.ok(&["restore", "suid", "--to", "suid2"]);
    let m = fs::metadata(w.home().join("sandboxes/suid2/workspace/who")).unwrap();
    assert_eq!((m.mode() & 0o7777, m.uid()), (0o755, 0), "restored: mode {:o}", m.mode() & 0o7777);
    w.ok(&["rm", "suid"]);
}
