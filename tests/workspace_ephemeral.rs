//! A `run --rm` sandbox's workspace (issue 18, start-up time): its image is
//! deleted when the sandbox exits, so it is made without a journal and
//! mounted without write barriers (nothing of it has to reach the host's
//! disk), yet its size and inode bounds hold as a kept workspace's do
//! (a hostile agent in a `--rm` sandbox can fill a disk as well); the run
//! leaves no mount, loop device or file behind, and the same name runs
//! again at once. A kept sandbox's image keeps its journal and barriers,
//! and an image a killed `run --rm` left behind gets a journal before a
//! sandbox that keeps it mounts it. Needs root, busybox-static and
//! e2fsprogs (dumpe2fs).
#[path = "sandbox_common/mod.rs"]
mod sandbox_common;

use sandbox_common::{small_policy, wait_until, World, LIMIT_MIB};
use std::fs;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

/// Writes past the size, then past the inode count, and prints the
/// workspace's line of the sandbox's mountinfo (its ext4 options).
const FILL: &str = "cd /sandbox || exit 9
dd if=/dev/zero of=fill bs=1M count=128 2>/tmp/e; echo dd_rc=$?; echo \"dd_err=$(grep -i -m1 space /tmp/e)\"
echo dd_size=$(stat -c %s fill); rm -f fill
mkdir many; i=0; while [ $i -lt 3000 ]; do echo -n 2>/tmp/e > many/f$i || break; i=$((i+1)); done
echo files=$i; echo \"files_err=$(cat /tmp/e)\"; rm -rf many
echo \"mount=$(grep ' /sandbox ' /proc/self/mountinfo)\"";

/// The "Filesystem features" line of an ext4 image.
fn features(image: &Path) -> String {
    let out = Command::new("dumpe2fs").arg("-h").arg(image).output().expect("run dumpe2fs (install e2fsprogs)");
    assert!(out.status.success(), "dumpe2fs {}: {}", image.display(), String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find(|l| l.starts_with("Filesystem features:"))
        .unwrap_or_else(|| panic!("no features in:\n{text}"))
        .into()
}

/// Mounts and loop devices on the host that belong to this test's world.
fn leftovers(w: &World) -> Vec<String> {
    let dir = w.dir.path().to_string_lossy().into_owned();
    let mut left: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&dir))
        .map(|l| format!("mount: {l}"))
        .collect();
    for e in fs::read_dir("/sys/block").unwrap().flatten() {
        if let Ok(b) = fs::read_to_string(e.path().join("loop/backing_file")) {
            if b.contains(&dir) {
                left.push(format!("loop device {:?} on {}", e.file_name(), b.trim()));
            }
        }
    }
    left
}

#[test]
fn a_rm_workspace_is_bounded_not_durable_and_leaves_nothing() {
    let w = World::new();
    let policy = small_policy(w.dir.path());
    let p = policy.to_str().unwrap();
    let out = w.ok(&["run", "--rm", "--name", "eph", "--policy", p, &w.image, "--", "sh", "-c", FILL]);
    let r = sandbox_common::parse(&out);
    let get = |k: &str| r.get(k).map(String::as_str).unwrap_or_else(|| panic!("no {k} in:\n{out}"));
    // The bounds hold in an image without a journal.
    assert_ne!(get("dd_rc"), "0", "dd of 128 MiB succeeded under a 64 MiB limit:\n{out}");
    assert!(get("dd_err").contains("No space left"), "dd: {out}");
    let written: u64 = get("dd_size").parse().unwrap();
    assert!(written > 32 << 20 && written <= LIMIT_MIB << 20, "dd wrote {written} bytes before ENOSPC:\n{out}");
    let files: u64 = get("files").parse().unwrap();
    assert!((1500..2000).contains(&files), "{files} files made under a 2000-inode limit:\n{out}");
    assert!(get("files_err").contains("No space left"), "files: {out}");
    // Not durable: no write barriers (the image has no journal: below).
    let mount = get("mount");
    assert!(mount.contains(" ext4 "), "the workspace is not the ext4 image: {mount}");
    assert!(mount.contains("nobarrier"), "a --rm workspace is mounted with write barriers: {mount}");

    // Nothing is left, and the name is free at once.
    assert!(!w.home().join("sandboxes/eph").exists(), "run --rm left its directory");
    assert_eq!(leftovers(&w), Vec::<String>::new(), "run --rm left mounts or loop devices");
    let again = w.ok(&[
        "run",
        "--rm",
        "--name",
        "eph",
        "--policy",
        p,
        &w.image,
        "--",
        "sh",
        "-c",
        "echo x > /sandbox/y && cat /sandbox/y",
    ]);
    assert_eq!(again, "x\n");
    assert!(!w.home().join("sandboxes/eph").exists() && leftovers(&w).is_empty(), "{:?}", leftovers(&w));

    // A kept sandbox's workspace keeps its journal and barriers.
    let out = w.ok(&[
        "run",
        "--name",
        "kept",
        "--policy",
        p,
        &w.image,
        "--",
        "sh",
        "-c",
        "grep ' /sandbox ' /proc/self/mountinfo",
    ]);
    assert!(out.contains(" ext4 ") && !out.contains("nobarrier"), "a kept workspace is not durable: {out}");
    let image = w.home().join("sandboxes/kept/workspace.img");
    assert!(features(&image).contains("has_journal"), "a kept image has no journal: {}", features(&image));
    w.ok(&["rm", "--workspace", "kept"]);
    assert_eq!(leftovers(&w), Vec::<String>::new());
}

#[test]
fn an_image_a_killed_rm_run_left_gets_a_journal_when_it_is_kept() {
    let w = World::new();
    let mut child = w
        .moat()
        .args(["run", "--rm", "--name", "left", &w.image, "--", "sh", "-c", "echo data > /sandbox/f; sleep 60"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start moat run");
    let ws = w.home().join("sandboxes/left/workspace");
    let wrote = wait_until(Duration::from_secs(20), || ws.join("f").is_file());
    // The supervisor of a foreground run is the `moat run` itself.
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(wrote, "the sandbox never wrote its file");
    w.ok(&["rm", "left"]); // keeps the workspace
    let image = w.home().join("sandboxes/left/workspace.img");
    assert!(!features(&image).contains("has_journal"), "a --rm image has a journal: {}", features(&image));
    assert_eq!(leftovers(&w), Vec::<String>::new(), "rm left mounts or loop devices");

    let out = w.ok(&[
        "run",
        "--name",
        "left",
        &w.image,
        "--",
        "sh",
        "-c",
        "cat /sandbox/f; grep ' /sandbox ' /proc/self/mountinfo",
    ]);
    assert!(out.starts_with("data\n"), "the kept workspace lost its file: {out}");
    assert!(!out.contains("nobarrier"), "a kept workspace is mounted without barriers: {out}");
    assert!(features(&image).contains("has_journal"), "the kept image got no journal: {}", features(&image));
    w.ok(&["rm", "--workspace", "left"]);
}

/// A sandbox started while another runs must not pin the other's
/// workspace image: its launcher's private mount namespace copies every
/// host mount, and a copy of the other's workspace mount kept the loop
/// device (and with it the image's lock) alive after the other stopped, so
/// `moat backup` of the stopped one (and its restart) waited forever while
/// the second one ran. Seen hanging before the fix.
#[test]
fn a_running_sandbox_does_not_pin_another_ones_stopped_workspace() {
    let w = World::new();
    let policy = small_policy(w.dir.path());
    let p = policy.to_str().unwrap();
    w.ok(&["run", "-d", "--name", "first", "--policy", p, &w.image, "--", "sleep", "300"]);
    w.ok(&["run", "-d", "--name", "second", "--policy", p, &w.image, "--", "sleep", "300"]);
    w.ok(&["stop", "first"]);
    let mut backup = w
        .moat()
        .args(["backup", "first"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run moat backup");
    let done = wait_until(Duration::from_secs(30), || matches!(backup.try_wait(), Ok(Some(_))));
    if !done {
        let _ = backup.kill();
    }
    let out = backup.wait_with_output().expect("wait for moat backup");
    assert!(done, "moat backup of the stopped sandbox hung while another sandbox ran");
    assert!(out.status.success(), "backup: {}", String::from_utf8_lossy(&out.stderr));
    w.ok(&["rm", "--force", "--workspace", "first"]);
    w.ok(&["rm", "--force", "--workspace", "second"]);
}

/// The inode numbers of the ready images in moat's cache.
fn ready_images(w: &World) -> Vec<u64> {
    use std::os::unix::fs::MetadataExt;
    let dir = w.home().join("cache/workspace-images/ready");
    let Ok(rd) = fs::read_dir(&dir) else { return Vec::new() };
    rd.flatten()
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| e.metadata().ok().map(|m| m.ino()))
        .collect()
}

/// Start-up takes a ready image (a synced copy of the empty template) with
/// a rename instead of copying the template on its path; each ready image
/// goes to one sandbox, and the start makes new ones for the next.
#[test]
fn starts_take_ready_images_one_each_and_make_new_ones() {
    use std::os::unix::fs::MetadataExt;
    let w = World::new();
    let policy = small_policy(w.dir.path());
    let p = policy.to_str().unwrap();
    let image_ino =
        |name: &str| fs::metadata(w.home().join("sandboxes").join(name).join("workspace.img")).unwrap().ino();
    w.ok(&["run", "-d", "--name", "a", "--policy", p, &w.image, "--", "sleep", "300"]);
    assert!(wait_until(Duration::from_secs(20), || ready_images(&w).len() == 2), "no ready images after a start");
    let ready = ready_images(&w);
    w.ok(&["run", "-d", "--name", "b", "--policy", p, &w.image, "--", "sh", "-c", "echo b > /sandbox/f; sleep 300"]);
    let b = image_ino("b");
    assert!(ready.contains(&b), "b's image {b} is not one of the ready ones {ready:?}");
    assert_ne!(image_ino("a"), b);
    assert!(
        wait_until(Duration::from_secs(20), || { ready_images(&w).len() == 2 && !ready_images(&w).contains(&b) }),
        "the ready images were not made again, or b's is still offered: {:?}",
        ready_images(&w)
    );
    // The workspace is b's own, bounded as any.
    let out = w.ok(&[
        "exec",
        "b",
        "--",
        "sh",
        "-c",
        "cat /sandbox/f; grep ' /sandbox ' /proc/self/mountinfo | grep -c ' ext4 '",
    ]);
    assert_eq!(out, "b\n1\n");
    w.ok(&["rm", "--force", "--workspace", "a"]);
    w.ok(&["rm", "--force", "--workspace", "b"]);
}
