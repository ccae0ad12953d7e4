//! `moat backup / snapshots / restore / snapshot export|import|gc` end to end:
//! a sandbox record made through the supervisor's state API, restore into a
//! new sandbox, export/import between two MOAT_HOMEs, kill -9 in the middle of
//! a backup and of a restore, a backup of a running (write-loaded)
//! process group frozen with the real cgroup freezer, and a workspace deeper
//! than PATH_MAX holding what no snapshot can keep (refused, then `--force`).
mod common;
#[path = "common/sandbox_record.rs"]
mod sandbox_record;
#[path = "../snapshot/tests/common/mod.rs"]
mod snap;

use common::{moat, ok, run};
use moat_snapshot::Repo;
use moat_supervisor::sandbox::state::ProcId;
use sandbox_record::sandbox;
use snap::{as_restored, check_repo, data, deep_tree, describe, every_type, fd_path};
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn digest_of(out: &str) -> String {
    out.trim().strip_prefix("sha256:").unwrap_or_else(|| panic!("no digest in {out:?}")).to_string()
}

fn without_specials(
    d: (std::collections::BTreeMap<String, String>, std::collections::BTreeSet<Vec<String>>),
) -> impl PartialEq + std::fmt::Debug {
    let (mut m, l) = d;
    m.retain(|_, v| v != "special");
    (m, l)
}

#[test]
fn backup_list_restore_to_new_export_import_gc() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let ws = sandbox(&home, "agent", None);
    every_type(&ws);
    fs::write(ws.join(".env"), b"TOKEN=1\n").unwrap();
    // What a restore gives back: the tree without specials and setuid bits.
    let first_desc = without_specials(as_restored(describe(&ws)));

    let mut c = moat(&home);
    c.args(["backup", "agent", "--tag", "first"]);
    let (code, out, err) = run(c);
    assert_eq!(code, 0, "{err}");
    let first = digest_of(&out);
    assert!(err.contains("looks like a secret") && err.contains(".env"), "{err}");
    assert!(err.contains("pipe: FIFO"), "{err}");

    fs::write(ws.join("src/main.rs"), b"fn main() { changed() }\n").unwrap();
    fs::remove_file(ws.join("zero")).unwrap();
    let second = digest_of(&ok({
        let mut c = moat(&home);
        c.args(["backup", "agent", "--exclude-secrets"]);
        c
    }));
    assert_ne!(first, second);
    let list: serde_json::Value = serde_json::from_str(&ok({
        let mut c = moat(&home);
        c.args(["snapshots", "agent", "--json"]);
        c
    }))
    .unwrap();
    let list = list.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["tag"], "first");
    assert_eq!(list[1]["digest"], second.as_str());
    assert!(list[1]["skipped"].to_string().contains(".env"));
    let table = ok({
        let mut c = moat(&home);
        c.args(["snapshots", "agent"]);
        c
    });
    assert!(table.contains(&first[..12]) && table.contains("first"), "{table}");

    // Restore by tag; the previous workspace becomes an undo snapshot.
    let mut c = moat(&home);
    c.args(["restore", "agent", "first"]);
    let (code, _, err) = run(c);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("undo with: moat restore agent"), "{err}");
    assert_eq!(without_specials(describe(&ws)), first_desc);

    // Restore into a new sandbox's workspace.
    ok({
        let mut c = moat(&home);
        c.args(["restore", "agent", &first[..12], "--to", "agent2"]);
        c
    });
    assert_eq!(without_specials(describe(&home.join("sandboxes/agent2/workspace"))), first_desc);

    // Export, import into a fresh MOAT_HOME, restore there.
    let file = t.path().join("agent.snap");
    assert_eq!(
        digest_of(&ok({
            let mut c = moat(&home);
            c.args(["snapshot", "export", "agent:first", "-o"]).arg(&file);
            c
        })),
        first
    );
    let home2 = t.path().join("home2");
    assert_eq!(
        digest_of(&ok({
            let mut c = moat(&home2);
            c.args(["snapshot", "import"]).arg(&file);
            c
        })),
        first
    );
    ok({
        let mut c = moat(&home2);
        c.args(["restore", "agent", "first", "--to", "moved"]);
        c
    });
    assert_eq!(without_specials(describe(&home2.join("sandboxes/moved/workspace"))), first_desc);
    let gc = ok({
        let mut c = moat(&home);
        c.args(["snapshot", "gc"]);
        c
    });
    assert!(gc.starts_with("removed 0 chunks"), "{gc}");
    check_repo(&Repo::open(&home.join("snapshots")).unwrap());
    use std::os::unix::fs::PermissionsExt;
    for d in ["snapshots", "snapshots/packs", "snapshots/refs"] {
        assert_eq!(fs::metadata(home.join(d)).unwrap().permissions().mode() & 0o777, 0o700, "{d}");
    }
}

fn big_workspace(ws: &Path, seed: u64) {
    for i in 0..24u64 {
        fs::write(ws.join(format!("f{i:02}")), data(seed * 100 + i, 1 << 20)).unwrap();
    }
}

#[test]
fn kill_9_during_backup_leaves_a_valid_repository() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let ws = sandbox(&home, "k", None);
    big_workspace(&ws, 1);
    for delay in [20, 80, 250] {
        let mut c = moat(&home);
        c.args(["backup", "k"]).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        let mut child = c.spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        let _ = child.kill(); // SIGKILL
        let _ = child.wait();
        check_repo(&Repo::open(&home.join("snapshots")).unwrap());
    }
    let d = digest_of(&ok({
        let mut c = moat(&home);
        c.args(["backup", "k"]);
        c
    }));
    ok({
        let mut c = moat(&home);
        c.args(["restore", "k", &d, "--to", "k2"]);
        c
    });
    assert_eq!(describe(&home.join("sandboxes/k2/workspace")), describe(&ws));
    check_repo(&Repo::open(&home.join("snapshots")).unwrap());
}

#[test]
fn kill_9_during_restore_leaves_old_or_new_workspace() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let ws = sandbox(&home, "r", None);
    big_workspace(&ws, 2);
    let a = describe(&ws);
    let da = digest_of(&ok({
        let mut c = moat(&home);
        c.args(["backup", "r"]);
        c
    }));
    for f in fs::read_dir(&ws).unwrap() {
        fs::remove_file(f.unwrap().path()).unwrap();
    }
    big_workspace(&ws, 3);
    fs::write(ws.join("only-in-b"), b"b").unwrap();
    let b = describe(&ws);
    // Kill later and later (doubling) until a restore gets to finish: the
    // kills land in every phase (verify/build, undo snapshot, swap, cleanup).
    let (mut saw_old, mut delay) = (0, 25u64);
    loop {
        let mut c = moat(&home);
        c.args(["restore", "r", &da]).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null());
        let mut child = c.spawn().unwrap();
        std::thread::sleep(Duration::from_millis(delay));
        let _ = child.kill();
        let _ = child.wait();
        check_repo(&Repo::open(&home.join("snapshots")).unwrap());
        let now = describe(&ws);
        if now == a {
            break;
        }
        assert!(now == b, "after kill -9 at {delay} ms the workspace is neither the old nor the new tree");
        saw_old += 1;
        delay *= 2;
        assert!(delay < 60_000, "restore never finished");
    }
    assert!(saw_old >= 1, "no kill landed before the swap");
    let saw = (1, saw_old);
    eprintln!("kill -9 during restore: {} times the new tree, {} times the old", saw.0, saw.1);
    // And once more from B, uninterrupted.
    for f in fs::read_dir(&ws).unwrap() {
        fs::remove_file(f.unwrap().path()).unwrap();
    }
    big_workspace(&ws, 3);
    ok({
        let mut c = moat(&home);
        c.args(["restore", "r", &da]);
        c
    });
    assert_eq!(describe(&ws), a);
    let names: Vec<String> = fs::read_dir(home.join("sandboxes/r"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into())
        .collect();
    assert!(names.iter().all(|n| !n.contains("moat-restore")), "staging trees left: {names:?}");
}

/// A process in the sandbox's freezer cgroup rewrites a 4 MiB file with one
/// write(2) of all-'A' then all-'B'; every backup taken through the freezer
/// holds a uniform file, and the process runs on afterwards (thawed).
#[test]
fn backup_of_a_running_sandbox_under_write_load_is_consistent() {
    let cg = PathBuf::from("/sys/fs/cgroup/freezer");
    let cg2 = PathBuf::from("/sys/fs/cgroup/cgroup.freeze");
    let name = format!("snaptest-{}", std::process::id());
    let dir = if cg.join("freezer.state").exists() || cg.join("cgroup.procs").exists() {
        cg.join("moat").join(&name)
    } else {
        assert!(
            cg2.exists() || Path::new("/sys/fs/cgroup/cgroup.controllers").exists(),
            "no cgroup freezer (v1 freezer or v2) on this machine"
        );
        PathBuf::from("/sys/fs/cgroup/moat").join(&name)
    };
    fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("creating {}: {e} (the test runs as root)", dir.display()));
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    fs::create_dir_all(&home).unwrap();
    let ws_probe = home.join("sandboxes").join(&name).join("workspace");
    fs::create_dir_all(&ws_probe).unwrap();
    let target = ws_probe.join("data");
    let mut writer = std::process::Command::new("perl")
        .arg("-e")
        .arg(
            r#"open(my $f, "+>", $ARGV[0]) or die; my @b = ("A" x 4194304, "B" x 4194304); my $i = 0;
               while (1) { sysseek($f, 0, 0); syswrite($f, $b[$i++ % 2]) == 4194304 or die "short write"; }"#,
        )
        .arg(&target)
        .spawn()
        .expect("perl (perl-base) to drive the write load");
    fs::write(dir.join("cgroup.procs"), writer.id().to_string()).unwrap();
    while fs::metadata(&target).map(|m| m.len()).unwrap_or(0) < 4 << 20 {
        std::thread::sleep(Duration::from_millis(5));
    }
    let ws = sandbox(&home, &name, ProcId::of(writer.id() as i32));
    assert_eq!(ws, ws_probe);
    let repo_root = home.join("snapshots");
    let mut result = Ok(());
    for _ in 0..5 {
        let mut c = moat(&home);
        c.args(["backup", &name]);
        let (code, out, err) = run(c);
        if code != 0 {
            result = Err(format!("backup failed: {err}"));
            break;
        }
        let repo = Repo::open(&repo_root).unwrap();
        let m = repo.manifest(&digest_of(&out)).unwrap();
        let e = m.entries.iter().find(|e| e.path == "data").unwrap();
        let mut bytes = Vec::new();
        for c in &e.chunks {
            bytes.extend(repo.chunks().read_chunk(c).unwrap());
        }
        if bytes.len() != 4 << 20 || !(bytes.iter().all(|b| *b == b'A') || bytes.iter().all(|b| *b == b'B')) {
            result = Err(format!("torn file in the snapshot ({} bytes, mixed content)", bytes.len()));
            break;
        }
    }
    let state_file =
        if dir.join("freezer.state").exists() { dir.join("freezer.state") } else { dir.join("cgroup.freeze") };
    let thawed = fs::read_to_string(&state_file).unwrap();
    let before = fs::metadata(&target).unwrap().modified().unwrap();
    std::thread::sleep(Duration::from_millis(100));
    let after = fs::metadata(&target).unwrap().modified().unwrap();
    let _ = writer.kill();
    let _ = writer.wait();
    let _ = fs::remove_dir(&dir);
    result.unwrap();
    assert!(thawed.trim() == "THAWED" || thawed.trim() == "0", "left frozen: {thawed}");
    assert_ne!(before, after, "the writer did not run on after the backups");
}

/// A workspace deeper than PATH_MAX backs up and is replaced by a restore;
/// one holding a file whose name no snapshot can keep is not (the refusal
/// names it and the workspace is untouched) unless `--force` is given.
#[test]
fn deep_workspace_restores_and_what_cannot_be_kept_needs_force() {
    use std::os::unix::ffi::OsStrExt;
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let ws = sandbox(&home, "deep", None);
    fs::write(ws.join("top"), b"top\n").unwrap();
    let small = digest_of(&ok({
        let mut c = moat(&home);
        c.args(["backup", "deep", "--tag", "small"]);
        c
    }));
    let inner = deep_tree(&ws, 250, &"d".repeat(40));
    fs::write(fd_path(&inner).join("bottom"), data(9, 50_000)).unwrap();
    drop(inner);
    let deep_desc = describe(&ws);
    let deep = digest_of(&ok({
        let mut c = moat(&home);
        c.args(["backup", "deep"]);
        c
    }));
    let mut c = moat(&home);
    c.args(["restore", "deep", "small"]);
    let (code, _, err) = run(c);
    assert_eq!(code, 0, "restoring over a deep workspace: {err}");
    assert!(err.contains(&format!("undo with: moat restore deep {deep}")), "the undo snapshot is the deep tree: {err}");
    ok({
        let mut c = moat(&home);
        c.args(["restore", "deep", &deep]);
        c
    });
    assert_eq!(describe(&ws), deep_desc);

    let odd = ws.join(std::ffi::OsStr::from_bytes(b"notes-\xff"));
    fs::write(&odd, b"unsaved work\n").unwrap();
    let before = describe(&ws);
    let mut c = moat(&home);
    c.args(["restore", "deep", &small]);
    let (code, _, err) = run(c);
    assert_ne!(code, 0, "a restore that would lose notes-\\xff went ahead");
    assert!(err.contains("notes-") && err.contains("not UTF-8") && err.contains("--force"), "{err}");
    assert_eq!(describe(&ws), before, "the workspace is untouched");
    let mut c = moat(&home);
    c.args(["restore", "deep", &small, "--force"]);
    let (code, _, err) = run(c);
    assert_eq!(code, 0, "{err}");
    assert!(err.contains("replaced without a snapshot") && err.contains("notes-"), "{err}");
    assert!(fs::symlink_metadata(&odd).is_err());
    assert_eq!(fs::read(ws.join("top")).unwrap(), b"top\n");
}

/// A tag with an escape sequence is refused by `moat backup`; one already in
/// a repository (written by a moat from before tags were checked) is shown
/// escaped by `moat snapshots`, never acted on by the terminal.
#[test]
fn tags_with_escape_codes_are_refused_and_never_printed_raw() {
    let t = tempfile::tempdir().unwrap();
    let home = t.path().join("home");
    let ws = sandbox(&home, "tagged", None);
    fs::write(ws.join("f"), b"f\n").unwrap();
    let mut c = moat(&home);
    c.args(["backup", "tagged", "--tag", "\x1b[2J\x1b[31mrelease"]);
    let (code, out, err) = run(c);
    assert_ne!(code, 0, "a tag with escape codes was accepted: {out}");
    assert!(err.contains("tag") && !err.contains('\x1b'), "{err:?}");
    ok({
        let mut c = moat(&home);
        c.args(["backup", "tagged", "--tag", "plain"]);
        c
    });
    // Plant the escape codes in the stored record, as an older moat wrote them.
    let refs: Vec<PathBuf> = walk(&home).into_iter().filter(|p| p.to_string_lossy().contains("refs/tagged/")).collect();
    assert_eq!(refs.len(), 1, "{refs:?}");
    let text = fs::read_to_string(&refs[0]).unwrap();
    assert!(text.contains("\"plain\""), "{text}");
    fs::write(&refs[0], text.replace("\"plain\"", "\"\\u001b]0;owned\\u0007\\u001b[31mred\"")).unwrap();
    let out = ok({
        let mut c = moat(&home);
        c.args(["snapshots", "tagged"]);
        c
    });
    assert!(!out.contains('\x1b') && !out.contains('\x07'), "raw escape codes in: {out:?}");
    assert!(out.contains("red"), "{out}");
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            out.extend(walk(&p));
        } else {
            out.push(p);
        }
    }
    out
}
