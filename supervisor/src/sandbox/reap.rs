//! Stopping whatever is left of a sandbox, whatever its record says, for
//! `stop` and `rm`: the process tree of its supervisor (the supervisor, its
//! launcher, libcontainer's processes, the sandbox init), then every task
//! still in its cgroups (a frozen freezer cgroup is thawed, or its tasks
//! could never die), then the cgroups and libcontainer's state. Guards
//! against a half-started sandbox outliving its record (a live supervisor,
//! a frozen init in D state, a `run -d` waiting forever) and against
//! signalling the wrong process: pids are checked with their start time,
//! and moat never signals itself.
#![forbid(unsafe_code)]
use crate::sandbox::state::{self, Paths, ProcId, Record, Status};
use crate::sandbox::{host_cgroup, SandboxError};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long `rm` waits for the processes it killed to be gone.
const KILL_WAIT: Duration = Duration::from_secs(10);
/// How long a detached supervisor may take to record itself after the
/// `run -d` that recorded the sandbox died (see [`quiesce`]).
const CLAIM_WAIT: Duration = Duration::from_millis(500);
/// How long an exited sandbox's supervisor may take to finish its cleanup.
const EXIT_WAIT: Duration = Duration::from_secs(2);

fn me() -> i32 {
    std::process::id() as i32
}

/// Makes sure nothing of the sandbox runs before its record is removed.
/// `rec` is `None` for a record that does not parse (then only its cgroups
/// say what runs). Without `force`, a running or starting sandbox is
/// refused, naming its state; with it, it is stopped. Processes left by a
/// dead supervisor (a launcher still cleaning up, a task in its cgroups)
/// are killed either way: nothing may outlive the record.
pub(super) fn quiesce(paths: &Paths, rec: Option<&Record>, force: bool) -> Result<(), SandboxError> {
    let mut rec = rec.cloned();
    if let Some(r) = rec.as_mut() {
        if r.live_status() == Status::Dead && r.detached {
            // `run -d` records itself, and its supervisor replaces it a few
            // ms later: if `run -d` was killed in between, the supervisor
            // may still be about to; give it a moment to show up.
            let end = Instant::now() + CLAIM_WAIT;
            while Instant::now() < end {
                std::thread::sleep(Duration::from_millis(20));
                if let Ok(now) = state::load(paths) {
                    if now.supervisor != r.supervisor {
                        *r = now;
                        break;
                    }
                }
            }
        }
        match r.live_status() {
            Status::Running if !force => return Err(SandboxError::Running(paths.name.clone())),
            Status::Created if !force => return Err(SandboxError::Starting(paths.name.clone())),
            Status::Running => {
                super::stop(paths, Duration::ZERO)?;
            }
            Status::Exited => {
                // Recorded its exit and still cleaning up: let it finish.
                if let Some(s) = r.supervisor.filter(|s| s.pid != me()) {
                    let end = Instant::now() + EXIT_WAIT;
                    while s.alive() && Instant::now() < end {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                }
            }
            _ => {}
        }
    }
    let roots: Vec<ProcId> = rec.iter().flat_map(|r| [r.supervisor, r.init]).flatten().collect();
    stop_all(&paths.name, &roots).map_err(|left| {
        SandboxError::Refused(format!(
            "sandbox {}: processes {left:?} did not exit within {} s after SIGKILL; nothing was removed",
            paths.name,
            KILL_WAIT.as_secs()
        ))
    })
}

/// Stops a sandbox that is still starting (`moat stop`): everything is
/// killed as for `rm -f`, and the record says it exited.
pub(super) fn stop_starting(paths: &Paths, rec: &Record) -> Result<(), SandboxError> {
    quiesce(paths, Some(rec), true)?;
    let _ = state::update(paths, |r| {
        if r.status == Status::Created {
            r.status = Status::Exited;
        }
    });
    Ok(())
}

/// Kills the trees of `roots` and every task in the sandbox's cgroups and
/// its supervisor's, then waits until all are gone. Returns the pids still
/// alive after [`KILL_WAIT`].
fn stop_all(name: &str, roots: &[ProcId]) -> Result<(), Vec<i32>> {
    let mut killed = Vec::new();
    for r in roots.iter().filter(|r| r.pid != me() && r.alive()) {
        killed.extend(kill_tree(*r));
    }
    let end = Instant::now() + KILL_WAIT;
    loop {
        let mut left: Vec<i32> = kill_cgroup_tasks(name);
        left.extend(killed.iter().filter(|p| p.alive()).map(|p| p.pid));
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() > end {
            left.sort_unstable();
            left.dedup();
            return Err(left);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// SIGSTOPs `root`, then each of its descendants, top-down (a stopped
/// process forks no more, so the walk sees the whole tree), then SIGKILLs
/// them all. Returns the processes signalled.
fn kill_tree(root: ProcId) -> Vec<ProcId> {
    let mut found: Vec<ProcId> = Vec::new();
    let mut todo = vec![root];
    while let Some(p) = todo.pop() {
        if p.pid == me() || found.iter().any(|f| f.pid == p.pid) || !p.signal(libc::SIGSTOP) {
            continue;
        }
        found.push(p);
        // A process in D state (a frozen cgroup, a blocked filesystem
        // call) stops only later: it cannot fork before then either.
        let end = Instant::now() + Duration::from_millis(100);
        while !state::stopped_or_gone(p.pid) && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(1));
        }
        todo.extend(children(p.pid).into_iter().filter_map(ProcId::of));
    }
    for p in &found {
        p.signal(libc::SIGKILL);
    }
    found
}

/// The children of every thread of `pid`.
fn children(pid: i32) -> Vec<i32> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return Vec::new() };
    let mut out = Vec::new();
    for t in tasks.flatten() {
        let Ok(list) = std::fs::read_to_string(t.path().join("children")) else { continue };
        out.extend(list.split_whitespace().filter_map(|c| c.parse::<i32>().ok()));
    }
    out
}

/// The cgroup directories of sandbox `name`: `moat/NAME` in the v2
/// hierarchy and in every v1 one (the freezer's among them).
pub(super) fn sandbox_cgroups(name: &str) -> Vec<PathBuf> {
    let root = Path::new("/sys/fs/cgroup");
    let mut dirs = vec![root.join("moat").join(name)];
    if let Ok(rd) = std::fs::read_dir(root) {
        dirs.extend(rd.flatten().map(|e| e.path().join("moat").join(name)));
    }
    dirs.retain(|d| d.is_dir());
    dirs
}

pub(super) fn members(dir: &Path) -> Vec<i32> {
    std::fs::read_to_string(dir.join("cgroup.procs"))
        .map(|s| s.split_whitespace().filter_map(|p| p.parse().ok()).collect())
        .unwrap_or_default()
}

/// Writes `value` to a cgroup control file if it exists.
fn control(dir: &Path, file: &str, value: &str) {
    let p = dir.join(file);
    if p.exists() {
        if let Err(e) = std::fs::write(&p, value) {
            tracing::warn!(file = %p.display(), error = %e, "writing a cgroup control file");
        }
    }
}

/// Thaws sandbox `name`'s freezer cgroup: a frozen task acts on no
/// signal, SIGKILL included, until it is thawed.
pub(super) fn thaw(name: &str) {
    for d in sandbox_cgroups(name) {
        control(&d, "freezer.state", "THAWED");
        control(&d, "cgroup.freeze", "0");
    }
}

/// SIGKILLs every live task of the sandbox's cgroups and of its
/// supervisor's (but this process), thaws the freezer so they can die,
/// and returns those still alive.
fn kill_cgroup_tasks(name: &str) -> Vec<i32> {
    let mut dirs = sandbox_cgroups(name);
    dirs.extend(host_cgroup::dir_of(name).filter(|d| d.is_dir()));
    let mut left = Vec::new();
    for d in &dirs {
        control(d, "cgroup.kill", "1");
        for pid in members(d) {
            if pid == me() {
                continue;
            }
            if let Some(p) = ProcId::of(pid).filter(|p| p.alive()) {
                p.signal(libc::SIGKILL);
                left.push(pid);
            }
        }
    }
    if !left.is_empty() {
        thaw(name);
    }
    left
}

/// Removes what a sandbox leaves outside its record once nothing of it
/// runs: libcontainer's state, the sandbox's cgroups (thawed first) and
/// its supervisor's memory cgroup.
pub(super) fn remove_runtime(paths: &Paths) {
    let containers = Paths::containers_root();
    crate::launch::remove_leftovers(&containers, &paths.container_id());
    // A container libcontainer could not delete (it was never whole).
    let _ = std::fs::remove_dir_all(containers.join(paths.container_id()));
    thaw(&paths.name);
    for d in sandbox_cgroups(&paths.name) {
        remove_cgroup(&d);
    }
    host_cgroup::remove(&paths.name);
}

/// Removes a cgroup directory (and any below it), waiting a moment for
/// tasks that are still exiting.
fn remove_cgroup(dir: &Path) {
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                remove_cgroup(&e.path());
            }
        }
    }
    for _ in 0..100 {
        match std::fs::remove_dir(dir) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                tracing::warn!(cgroup = %dir.display(), error = %e, "removing the sandbox's cgroup");
                return;
            }
            _ => return,
        }
    }
}
