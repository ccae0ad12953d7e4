//! Sandbox records survive crashes and races (issue 19, part 7): a record
//! that does not parse is listed as `corrupt` and removable with `rm -f`;
//! `kill -9` of `moat run -d` at any moment leaves a whole record or none;
//! `rm` of a starting sandbox refuses (naming the state) or, with -f, stops
//! supervisor, launcher, init and cgroups (a frozen freezer cgroup too) and
//! leaves no live supervisor; a supervisor killed while starting is `dead`
//! with its reason, never `created` forever; `stop` of a starting sandbox
//! stops it. Real sandboxes, real kills.
//! A sandbox is held in its start deterministically by making the image's
//! manifest blob a FIFO: the supervisor blocks opening it, as it would on a
//! store that does not answer.
mod sandbox_common;
use sandbox_common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// Every process whose command line is `... __supervise NAME` (the detached
/// supervisor and its forked launcher).
fn supervisors_of(name: &str) -> Vec<i32> {
    let Ok(rd) = std::fs::read_dir("/proc") else { return Vec::new() };
    rd.flatten()
        .filter_map(|e| {
            let pid: i32 = e.file_name().to_str()?.parse().ok()?;
            let c = std::fs::read(e.path().join("cmdline")).ok()?;
            let args: Vec<&[u8]> = c.split(|b| *b == 0).collect();
            let ours = args.windows(2).any(|w| w[0] == b"__supervise" && w[1] == name.as_bytes());
            (ours && pid_alive(pid as i64)).then_some(pid)
        })
        .collect()
}

/// Every cgroup directory sandbox `name` may have: `moat/NAME` in each v1
/// hierarchy and in the v2 one, and its supervisor's `moat-supervisors/NAME`.
fn cgroups_of(name: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut dirs = vec![root.join("moat").join(name)];
    if let Ok(rd) = std::fs::read_dir(root) {
        for e in rd.flatten() {
            dirs.push(e.path().join("moat").join(name));
            dirs.push(e.path().join("moat-supervisors").join(name));
        }
    }
    dirs.push(root.join("moat-supervisors").join(name));
    dirs.into_iter().filter(|d| d.exists()).collect()
}

/// Nothing of sandbox `name` is left: no supervisor or launcher, no cgroup,
/// no container state, no runtime directory, no record.
fn assert_nothing_left(w: &World, name: &str, what: &str) {
    assert!(
        wait_until(Duration::from_secs(10), || supervisors_of(name).is_empty()),
        "{what}: a supervisor or launcher of {name} is still alive: {:?}",
        supervisors_of(name)
    );
    assert!(
        wait_until(Duration::from_secs(5), || cgroups_of(name).is_empty()),
        "{what}: cgroups left: {:?}",
        cgroups_of(name)
    );
    let container = w.run_dir().join("containers").join(format!("moat-{name}"));
    assert!(!container.exists(), "{what}: libcontainer state left at {}", container.display());
    let run = w.run_dir().join("sandboxes").join(name);
    assert!(!run.exists(), "{what}: runtime dir left at {}", run.display());
    let state = w.home().join("sandboxes").join(name).join("state.json");
    assert!(!state.exists(), "{what}: record left at {}", state.display());
}

/// Waits for `child` (a `moat run -d`) to exit; fails if it hangs.
fn assert_exits(child: &mut Child, what: &str) {
    let end = Instant::now() + Duration::from_secs(15);
    while Instant::now() < end {
        if child.try_wait().expect("wait for moat run -d").is_some() {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!("{what}: `moat run -d` still waits 15 s after the sandbox was removed");
}

fn kill9(pid: i32) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
}

fn spawn_detached(w: &World, name: &str) -> Child {
    w.moat()
        .args(["run", "-d", "--name", name, &w.image, "--", "sleep", "1000"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn moat run -d")
}

fn ls_entry(w: &World, name: &str) -> Option<serde_json::Value> {
    let ls: serde_json::Value = serde_json::from_str(&w.ok(&["ls", "--json"])).expect("ls --json is JSON");
    ls.as_array().expect("ls --json is a list").iter().find(|e| e["name"] == name).cloned()
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Holds every sandbox start of a world's image in its "created" state: the
/// image's manifest blob is swapped for a FIFO that the supervisor blocks
/// opening. Dropping it lets a blocked reader go (it reads end-of-file,
/// which fails verification) and puts the blob back.
struct Stall {
    fifo: PathBuf,
    real: PathBuf,
}

impl Stall {
    fn new(w: &World) -> Stall {
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(w.store().join("index.json")).expect("index.json")).unwrap();
        let digest = index["manifests"][0]["digest"].as_str().expect("a manifest digest").to_string();
        let hex = digest.strip_prefix("sha256:").expect("sha256 digest");
        let fifo = w.store().join("blobs/sha256").join(hex);
        let real = w.store().join(format!("manifest-{hex}.real"));
        std::fs::rename(&fifo, &real).expect("move the manifest aside");
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).expect("mkfifo");
        Stall { fifo, real }
    }
}

impl Drop for Stall {
    fn drop(&mut self) {
        use std::os::unix::fs::OpenOptionsExt;
        // A writer that opens and closes at once releases every blocked reader.
        let _ = std::fs::OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK).open(&self.fifo);
        let _ = std::fs::remove_file(&self.fifo);
        let _ = std::fs::rename(&self.real, &self.fifo);
    }
}

/// Starts `name` under a stall and returns the CLI and the supervisor's pid
/// once the supervisor has had time to reach the store.
fn start_stalled(w: &World, name: &str) -> (Child, i32) {
    let cli = spawn_detached(w, name);
    assert!(
        wait_until(Duration::from_secs(10), || !supervisors_of(name).is_empty()),
        "the supervisor of {name} did not start"
    );
    // The supervisor forks its launcher, then blocks on the FIFO; give it
    // time to get there (it does not get further while the stall holds).
    std::thread::sleep(Duration::from_millis(300));
    let st = w.state(name);
    assert_eq!(st["status"], "created", "held at the store, {name} cannot have started: {st}");
    // The supervisor is the one of the two whose parent is not the other.
    let pids = supervisors_of(name);
    let parent = |pid: i32| -> i32 {
        let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        s.rsplit(')').next().and_then(|r| r.split_whitespace().nth(1)).and_then(|p| p.parse().ok()).unwrap_or(0)
    };
    let sup = *pids.iter().find(|p| !pids.contains(&parent(**p))).expect("a supervisor");
    (cli, sup)
}

/// The record names the live supervisor of a starting sandbox.
fn assert_supervisor_recorded(w: &World, name: &str, sup: i32) {
    let st = w.state(name);
    assert_eq!(
        st["supervisor"]["pid"].as_i64(),
        Some(sup as i64),
        "the supervisor is not recorded while starting: {st}"
    );
}

#[test]
fn a_record_that_does_not_parse_is_listed_and_removable() {
    let w = World::new();
    let name = "recs-corrupt";
    let dir = w.home().join("sandboxes").join(name);
    // What a kill during the old reserve left (empty), a torn write, a
    // hostile file (escape codes, not JSON), and one too large to read.
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("empty", Vec::new()),
        ("torn", b"{\"name\": \"recs-corrupt\", \"ima".to_vec()),
        ("hostile", b"\x1b[2J\x1b[31mnot json".to_vec()),
        ("huge", vec![b' '; (1 << 20) + 1]),
    ];
    for (what, bytes) in cases {
        std::fs::create_dir_all(dir.join("workspace")).unwrap();
        std::fs::write(dir.join("workspace/keep"), "mine\n").unwrap();
        std::fs::write(dir.join("state.json"), &bytes).unwrap();
        let e = ls_entry(&w, name).unwrap_or_else(|| panic!("{what}: ls hides a record that does not parse"));
        assert_eq!(e["state"], "corrupt", "{what}: {e}");
        assert!(e["reason"].as_str().is_some_and(|r| !r.is_empty()), "{what}: ls gives no reason: {e}");
        let text = w.ok(&["ls"]);
        let row = text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("{what}: ls:\n{text}"));
        assert!(row.contains("corrupt"), "{what}: {row}");
        assert!(!text.contains('\x1b'), "{what}: ls prints the file's escape codes raw:\n{text}");

        let o = w.run(&["rm", name]);
        assert!(!o.status.success(), "{what}: rm without -f removed a record it cannot read");
        assert!(stderr(&o).contains("corrupt") && stderr(&o).contains("rm -f"), "{what}: {}", stderr(&o));
        w.ok(&["rm", "-f", name]);
        assert!(!dir.join("state.json").exists(), "{what}: rm -f left the record");
        assert!(dir.join("workspace/keep").exists(), "{what}: rm -f without --workspace deleted the workspace");
        assert!(ls_entry(&w, name).is_none(), "{what}: still listed after rm -f");
    }
    // The name is free again, and the kept workspace comes back.
    let out = w.ok(&["run", "--rm", "--name", name, &w.image, "--", "cat", "/sandbox/keep"]);
    assert_eq!(out, "mine\n");
    assert!(ls_entry(&w, name).is_none(), "run --rm left a record");
}

#[test]
fn kill_9_of_run_detached_leaves_a_whole_record_or_none() {
    let w = World::new();
    // Kills at 0..18 ms after the start, two rounds: the window in which
    // the old reserve left an empty state.json.
    for i in 0..20u64 {
        let name = format!("recs-kill-{i}");
        let delay = Duration::from_millis((i % 10) * 2);
        let mut cli = spawn_detached(&w, &name);
        std::thread::sleep(delay);
        kill9(cli.id() as i32);
        let _ = cli.wait();
        let what = format!("kill -9 after {delay:?}");
        let state = w.home().join("sandboxes").join(&name).join("state.json");
        if state.exists() {
            let bytes = std::fs::read(&state).unwrap();
            let rec: serde_json::Value = serde_json::from_slice(&bytes)
                .unwrap_or_else(|e| panic!("{what}: torn record ({e}): {:?}", String::from_utf8_lossy(&bytes)));
            assert_eq!(rec["name"], name.as_str(), "{what}");
            let e = ls_entry(&w, &name).unwrap_or_else(|| panic!("{what}: ls hides {name}"));
            assert_ne!(e["state"], "corrupt", "{what}: {e}");
        }
        let o = w.run(&["rm", "-f", "--workspace", &name]);
        assert!(
            o.status.success() || (!state.exists() && stderr(&o).contains("no sandbox named")),
            "{what}: rm -f failed: {}",
            stderr(&o)
        );
        assert_nothing_left(&w, &name, &what);
    }
    // A name used above is free again.
    w.ok(&["run", "--rm", "--name", "recs-kill-3", &w.image, "--", "true"]);
}

#[test]
fn rm_of_a_starting_sandbox_refuses_and_rm_force_stops_everything() {
    let w = World::new();
    let name = "recs-starting";
    let stall = Stall::new(&w);
    let (mut cli, sup) = start_stalled(&w, name);
    let e = ls_entry(&w, name).expect("listed while starting");
    assert_eq!(e["state"], "created", "{e}");

    let o = w.run(&["rm", name]);
    assert!(!o.status.success(), "rm without -f removed a sandbox that is still starting");
    assert!(stderr(&o).contains("starting"), "rm should name the state: {}", stderr(&o));
    assert!(pid_alive(sup as i64), "a refused rm stopped the supervisor");
    assert!(w.home().join("sandboxes").join(name).join("state.json").exists(), "a refused rm removed the record");
    assert_supervisor_recorded(&w, name, sup);

    w.ok(&["rm", "-f", "--workspace", name]);
    assert!(!pid_alive(sup as i64), "rm -f returned while the supervisor {sup} lives");
    assert_exits(&mut cli, "rm -f while starting");
    assert_nothing_left(&w, name, "rm -f while starting");
    drop(stall);
    // The image still runs (the stall is gone) and the name is free.
    w.ok(&["run", "--rm", "--name", name, &w.image, "--", "true"]);
}

#[test]
fn a_supervisor_killed_while_starting_is_dead_not_created() {
    let w = World::new();
    let name = "recs-dead";
    let stall = Stall::new(&w);
    let (mut cli, sup) = start_stalled(&w, name);
    kill9(sup);
    assert_exits(&mut cli, "supervisor killed");
    let e = ls_entry(&w, name).expect("listed after its supervisor died");
    assert_eq!(e["state"], "dead", "{e}");
    assert!(
        e["reason"].as_str().is_some_and(|r| r.contains("supervisor exited while starting")),
        "ls should say why: {e}"
    );
    let text = w.ok(&["ls"]);
    let row = text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("ls:\n{text}"));
    assert!(row.contains("dead") && row.contains("supervisor exited while starting"), "{row}");
    // Nothing runs: rm needs no -f.
    w.ok(&["rm", "--workspace", name]);
    assert_nothing_left(&w, name, "rm of a dead sandbox");
    drop(stall);
}

#[test]
fn stop_of_a_starting_sandbox_stops_it() {
    let w = World::new();
    let name = "recs-stop";
    let stall = Stall::new(&w);
    let (mut cli, sup) = start_stalled(&w, name);
    w.ok(&["stop", name]);
    assert!(!pid_alive(sup as i64), "stop returned while the supervisor {sup} lives");
    assert_exits(&mut cli, "stop while starting");
    let e = ls_entry(&w, name).expect("listed after stop");
    assert_eq!(e["state"], "exited", "{e}");
    w.ok(&["rm", "--workspace", name]);
    assert_nothing_left(&w, name, "stop, then rm");
    drop(stall);
}

#[test]
fn rm_at_any_moment_of_a_start_never_leaves_a_live_supervisor() {
    let w = World::new();
    // 5..47 ms after `run -d` (the window where rm used to return 0 and
    // leave the freezer cgroup frozen), then rm -f at 0..27 ms.
    for i in 0..24u64 {
        let name = format!("recs-race-{i}");
        let (force, delay) = if i < 14 { (false, 5 + i * 3) } else { (true, (i - 14) * 3) };
        let what = format!("rm{} after {delay} ms", if force { " -f" } else { "" });
        let mut cli = spawn_detached(&w, &name);
        std::thread::sleep(Duration::from_millis(delay));
        if !force {
            let o = w.run(&["rm", &name]);
            let err = stderr(&o);
            assert!(!o.status.success(), "{what}: rm without -f removed a sandbox that was starting or running");
            assert!(
                err.contains("starting") || err.contains("running") || err.contains("no sandbox named"),
                "{what}: rm should name the state: {err}"
            );
        }
        // The record may not exist yet at 0 ms: retry until it does.
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            let o = w.run(&["rm", "-f", "--workspace", &name]);
            if o.status.success() {
                break;
            }
            assert!(
                stderr(&o).contains("no sandbox named") && Instant::now() < end,
                "{what}: rm -f failed: {}",
                stderr(&o)
            );
            std::thread::sleep(Duration::from_millis(2));
        }
        assert_exits(&mut cli, &what);
        assert_nothing_left(&w, &name, &what);
    }
}

#[test]
fn rm_force_of_a_frozen_sandbox_thaws_and_removes_it() {
    let w = World::new();
    let name = "recs-frozen";
    w.ok(&["run", "-d", "--name", name, &w.image, "--", "sleep", "1000"]);
    let init = w.state(name)["init"]["pid"].as_i64().expect("init pid");
    let v1 = Path::new("/sys/fs/cgroup/freezer/moat").join(name).join("freezer.state");
    let v2 = Path::new("/sys/fs/cgroup/moat").join(name).join("cgroup.freeze");
    let (control, frozen) = if v1.exists() { (v1, "FROZEN") } else { (v2, "1") };
    std::fs::write(&control, frozen).unwrap_or_else(|e| panic!("freeze {}: {e}", control.display()));
    let started = Instant::now();
    w.ok(&["rm", "-f", "--workspace", name]);
    assert!(!pid_alive(init), "rm -f returned while the frozen init {init} lives");
    assert_nothing_left(&w, name, "rm -f of a frozen sandbox");
    eprintln!("rm -f of a frozen sandbox took {:?}", started.elapsed());
}
