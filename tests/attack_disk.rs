//! The host's disk through the workspace (issue 18, part 2), from inside a
//! real sandbox: with `filesystem.workspace_size_mib = 64` and
//! `workspace_inodes = 2000`, `fallocate` and `dd` past the size and
//! creating files past the inode count fail with ENOSPC inside, the
//! sandbox keeps running, and the host holds no more than the limit for
//! that workspace; a backup + restore round trip of the limited workspace
//! (the sandbox stopped) gives the files back, still under the limit.
//! Needs root, busybox-static and e2fsprogs.
#[path = "sandbox_common/mod.rs"]
mod sandbox_common;

use sandbox_common::{small_policy, World, LIMIT_MIB};
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Bytes allocated on the host under `dir` (what the sandbox's files cost
/// the host's disk, holes not counted), without crossing into other mounts.
fn allocated(dir: &Path) -> u64 {
    let dev = fs::symlink_metadata(dir).unwrap().dev();
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().flatten() {
            let m = e.metadata().unwrap();
            if m.dev() != dev {
                continue;
            }
            total += m.blocks() * 512;
            if m.is_dir() {
                stack.push(e.path());
            }
        }
    }
    total
}

/// Writes past the size (fallocate, then dd), then past the inode count;
/// prints `key=value` lines, and last `alive=yes` if the shell lives on.
const FILL: &str = "cd /sandbox || exit 9; echo keep > keep.txt
fallocate -l 128M big 2>/tmp/e; echo fallocate_rc=$?; echo \"fallocate_err=$(cat /tmp/e)\"; rm -f big
dd if=/dev/zero of=fill bs=1M count=128 2>/tmp/e; echo dd_rc=$?; echo \"dd_err=$(grep -i -m1 space /tmp/e)\"
echo dd_size=$(stat -c %s fill); rm -f fill
mkdir many; i=0; while [ $i -lt 3000 ]; do echo -n 2>/tmp/e > many/f$i || break; i=$((i+1)); done
echo files=$i; echo \"files_err=$(cat /tmp/e)\"; rm -rf many
echo alive=yes";

#[test]
fn writes_past_the_workspace_limits_fail_with_enospc_inside_and_cost_the_host_nothing_more() {
    let w = World::new();
    let policy = small_policy(w.dir.path());
    let out = w.ok(&["run", "--name", "disk", "--policy", policy.to_str().unwrap(), &w.image, "--", "sh", "-c", FILL]);
    let r = sandbox_common::parse(&out);
    let get = |k: &str| r.get(k).map(String::as_str).unwrap_or_else(|| panic!("no {k} in:\n{out}"));
    assert_ne!(get("fallocate_rc"), "0", "fallocate of 128 MiB succeeded under a 64 MiB limit:\n{out}");
    assert!(get("fallocate_err").contains("No space left"), "fallocate: {out}");
    assert_ne!(get("dd_rc"), "0", "dd of 128 MiB succeeded under a 64 MiB limit:\n{out}");
    assert!(get("dd_err").contains("No space left"), "dd: {out}");
    let written: u64 = get("dd_size").parse().unwrap();
    assert!(written > 32 << 20 && written <= LIMIT_MIB << 20, "dd wrote {written} bytes before ENOSPC:\n{out}");
    let files: u64 = get("files").parse().unwrap();
    assert!((1500..2000).contains(&files), "{files} files made under a 2000-inode limit:\n{out}");
    assert!(get("files_err").contains("No space left"), "files: {out}");
    assert_eq!(get("alive"), "yes", "the sandbox died at the limit:\n{out}");
    assert_eq!(w.state("disk")["exit_code"], 0);

    // The host: everything of this sandbox fits in the limit (the image is
    // sparse; the filler files were removed inside, and discard gives their
    // blocks back). Before, the workspace was a directory of the host's disk.
    let home = w.home().join("sandboxes/disk");
    let used = allocated(&home);
    assert!(used <= (LIMIT_MIB + 2) << 20, "the sandbox holds {used} bytes of the host's disk");
    let ws = std::path::PathBuf::from(w.state("disk")["workspace"].as_str().unwrap());
    assert!(!ws.join("keep.txt").exists(), "the workspace is still mounted on the host after the sandbox exited");

    // Backup and restore of the stopped, limited workspace: in place (the
    // image is mounted for the restore), then into a new sandbox, which
    // sees the files and is limited too.
    let digest = w.ok(&["backup", "disk"]).trim().to_string();
    assert!(digest.starts_with("sha256:"), "{digest}");
    w.ok(&["restore", "disk", &digest]);
    assert_eq!(w.ok(&["backup", "disk"]).trim(), digest, "restore in place changed the workspace");
    w.ok(&["restore", "disk", &digest, "--to", "disk2"]);
    let check = "cat /sandbox/keep.txt; dd if=/dev/zero of=/sandbox/x bs=1M count=100 2>/dev/null; echo dd_rc=$?";
    let out =
        w.ok(&["run", "--name", "disk2", "--policy", policy.to_str().unwrap(), &w.image, "--", "sh", "-c", check]);
    assert!(out.starts_with("keep\n"), "restored workspace: {out}");
    assert!(out.contains("dd_rc=1"), "the restored workspace is not limited: {out}");
    w.ok(&["rm", "--workspace", "disk"]);
    w.ok(&["rm", "--workspace", "disk2"]);
    assert!(!w.home().join("sandboxes/disk").exists());
}
