//! The supervisor's own memory cgroup: the supervisor of a sandbox (its
//! gateways, relays and TLS) and its launcher run in
//! `moat-supervisors/NAME`, limited by `supervisor.memory_max_mib`.
//! Addresses the host's memory being spent for the sandbox (issue 18): the
//! supervisor works for the sandbox but outside its cgroup, so without a
//! bound of its own whatever the sandbox makes it hold is the host's. Past
//! the limit the kernel stops this supervisor (and with it its sandbox),
//! never the host.
//!
//! The move is also the start-up's cgroup warm-up ([`cgroup_warm`]): the
//! first migration of a start waits for an RCU grace period, and making it
//! this one, on a helper thread, takes the wait off the critical path. An
//! empty directory of a supervisor that has exited (a foreground run cannot
//! remove the cgroup it is in) is removed by `moat rm` and by the next start.
//!
//! [`cgroup_warm`]: crate::sandbox::cgroup_warm
#![forbid(unsafe_code)]
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// The folder, in the memory hierarchy, holding one cgroup per supervisor.
const PARENT: &str = "moat-supervisors";

/// Where the memory controller is: a v1 hierarchy of its own (hybrid
/// hosts, like these) or the unified v2 hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Layout {
    V1,
    V2,
}

fn layout() -> Option<Layout> {
    if Path::new("/sys/fs/cgroup/memory/cgroup.procs").exists() {
        Some(Layout::V1)
    } else if std::fs::read_to_string("/sys/fs/cgroup/cgroup.controllers").is_ok_and(|c| has_memory(&c)) {
        Some(Layout::V2)
    } else {
        None
    }
}

fn has_memory(controllers: &str) -> bool {
    controllers.split_whitespace().any(|c| c == "memory")
}

fn parent_dir(layout: Layout) -> PathBuf {
    match layout {
        Layout::V1 => Path::new("/sys/fs/cgroup/memory").join(PARENT),
        Layout::V2 => Path::new("/sys/fs/cgroup").join(PARENT),
    }
}

/// The cgroup directory of sandbox `name`'s supervisor, if the host has a
/// memory controller.
pub(crate) fn dir_of(name: &str) -> Option<PathBuf> {
    layout().map(|l| parent_dir(l).join(name))
}

/// Whether the host has a memory controller to bound supervisors with.
pub(crate) fn available() -> bool {
    layout().is_some()
}

/// Where the supervisor's memory is bounded, for `moat doctor`.
pub fn describe() -> String {
    match layout() {
        Some(l) => format!("{} ({})", parent_dir(l).display(), if l == Layout::V1 { "cgroup v1" } else { "cgroup v2" }),
        None => "no memory controller: the supervisor's memory is not bounded".into(),
    }
}

fn write(path: &Path, value: &str) -> io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|mut f| f.write_all(value.as_bytes()))
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

/// Creates the cgroup, sets its limit and moves this process and `others`
/// (the launcher) into it.
fn enter(name: &str, limit_bytes: u64, others: &[i32]) -> io::Result<PathBuf> {
    let layout = layout().ok_or_else(|| io::Error::new(io::ErrorKind::Unsupported, "no memory controller"))?;
    let parent = parent_dir(layout);
    sweep(&parent);
    let dir = parent.join(name);
    match layout {
        Layout::V1 => {
            std::fs::create_dir_all(&dir)?;
            write(&dir.join("memory.limit_in_bytes"), &limit_bytes.to_string())?;
        }
        Layout::V2 => {
            // The controller must be enabled on the way down (the root and
            // our folder hold no processes, as v2 requires).
            write(Path::new("/sys/fs/cgroup/cgroup.subtree_control"), "+memory")?;
            std::fs::create_dir_all(&dir)?;
            write(&parent.join("cgroup.subtree_control"), "+memory")?;
            write(&dir.join("memory.max"), &limit_bytes.to_string())?;
            write(&dir.join("memory.swap.max"), "0").ok();
        }
    }
    // "0": the writer's own process (every thread of it).
    write(&dir.join("cgroup.procs"), "0")?;
    for pid in others {
        write(&dir.join("cgroup.procs"), &pid.to_string())?;
    }
    Ok(dir)
}

/// Removes the empty cgroups of supervisors that have exited; a live one
/// is busy and stays.
fn sweep(parent: &Path) {
    let Ok(entries) = std::fs::read_dir(parent) else { return };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            let _ = std::fs::remove_dir(e.path());
        }
    }
}

/// Removes sandbox `name`'s supervisor cgroup, waiting a moment for the
/// supervisor to have left it (it is busy while the process exits).
pub(crate) fn remove(name: &str) {
    let Some(dir) = dir_of(name) else { return };
    // A foreground `run --rm` removes its sandbox from inside that cgroup:
    // it stays busy until this process exits (the next start sweeps it).
    let own = std::fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    if own.lines().any(|l| l.ends_with(&format!("/{PARENT}/{name}"))) {
        return;
    }
    for _ in 0..100 {
        match std::fs::remove_dir(&dir) {
            Err(e) if e.raw_os_error() == Some(nix::errno::Errno::EBUSY as i32) => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            _ => return,
        }
    }
}

/// Moves the supervisor and `launcher` into their cgroup on a helper
/// thread and returns at once; when there is no memory controller or the
/// move fails, says so and only warms the migration lock up. Join the
/// handle once the sandbox has started.
pub(crate) fn start(name: &str, limit_mib: u64, launcher: i32) -> std::thread::JoinHandle<()> {
    let name = name.to_string();
    std::thread::spawn(move || match enter(&name, limit_mib << 20, &[launcher]) {
        Ok(dir) => tracing::debug!(cgroup = %dir.display(), "supervisor cgroup entered"),
        Err(e) => {
            tracing::warn!(event = "supervisor_unbounded", sandbox = %name, error = %e, "the supervisor's memory is not bounded");
            crate::sandbox::cgroup_warm::warm();
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_memory_controller_is_found_in_either_layout() {
        assert!(has_memory("cpuset cpu io memory pids"));
        assert!(!has_memory("cpuset cpu io pids"));
        assert_eq!(parent_dir(Layout::V1), Path::new("/sys/fs/cgroup/memory/moat-supervisors"));
        assert_eq!(parent_dir(Layout::V2), Path::new("/sys/fs/cgroup/moat-supervisors"));
    }
}
