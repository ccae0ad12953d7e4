//! Start-up latency, no threat: starts the kernel's wait for the cgroup
//! migration lock early, on a helper thread, so the launcher's own move into
//! the sandbox's cgroups does not wait for it on the critical path.
//!
//! The kernel guards task migration between cgroups with one global
//! reader-writer semaphore whose writer must wait for an RCU grace period
//! (10-15 ms measured on these VMs, BENCHMARKS.md) unless another writer
//! held it within the last grace period. The first `cgroup.procs` write of
//! a sandbox start is such a writer. Moving this process into the cgroup it
//! is already in takes the same lock and changes nothing, so doing that at
//! the start of `supervise` lets the wait elapse while the image is
//! resolved, the namespace made and the launcher exec'd. Normally the
//! supervisor's move into its own cgroup (`host_cgroup`) is that writer;
//! this is the fallback where it has none.
#![forbid(unsafe_code)]
use std::io::Write;
use std::path::PathBuf;

/// The `cgroup.procs` of the cgroup this process is in, in the first
/// hierarchy whose file exists. Every hierarchy shares the one lock, so any
/// will do.
fn own_procs_file() -> Option<PathBuf> {
    let pure_v2 = std::fs::exists("/sys/fs/cgroup/cgroup.controllers").unwrap_or(false);
    let cgroups = std::fs::read_to_string("/proc/self/cgroup").ok()?;
    candidates(&cgroups, pure_v2).into_iter().find(|file| file.exists())
}

/// The `cgroup.procs` files named by a `/proc/PID/cgroup` text, in its order.
fn candidates(cgroups: &str, pure_v2: bool) -> Vec<PathBuf> {
    cgroups
        .lines()
        .filter_map(|line| {
            let (_, rest) = line.split_once(':')?;
            let (controllers, path) = rest.split_once(':')?;
            let mount = match controllers {
                "" if pure_v2 => "/sys/fs/cgroup".to_string(),
                "" => "/sys/fs/cgroup/unified".to_string(),
                named => format!("/sys/fs/cgroup/{}", named.split(',').find(|c| !c.starts_with("name="))?),
            };
            Some(PathBuf::from(mount).join(path.trim_start_matches('/')).join("cgroup.procs"))
        })
        .collect()
}

/// Takes the migration lock by moving this process into the cgroup it is
/// already in: call it on a helper thread ([`host_cgroup`] does, when the
/// supervisor has no cgroup of its own to move into). Failures (no
/// cgroupfs, no permission) only lose the head start, so they are logged at
/// debug level and otherwise ignored.
///
/// [`host_cgroup`]: crate::sandbox::host_cgroup
pub(crate) fn warm() {
    let Some(file) = own_procs_file() else {
        tracing::debug!("cgroup warm-up: no cgroup.procs of our own found");
        return;
    };
    // "0" moves the writing thread's process: into the cgroup it is in.
    let result = std::fs::OpenOptions::new().write(true).open(&file).and_then(|mut f| f.write_all(b"0"));
    if let Err(e) = result {
        tracing::debug!(file = %file.display(), error = %moat_builder::errors::chain(&e), "cgroup warm-up skipped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hybrid_and_unified_layouts() {
        let hybrid = "9:name=systemd:/\n8:pids:/a/b\n2:cpu,cpuacct:/\n0::/x\n";
        assert_eq!(
            candidates(hybrid, false),
            [
                PathBuf::from("/sys/fs/cgroup/pids/a/b/cgroup.procs"),
                PathBuf::from("/sys/fs/cgroup/cpu/cgroup.procs"),
                PathBuf::from("/sys/fs/cgroup/unified/x/cgroup.procs"),
            ]
        );
        assert_eq!(candidates("0::/user.slice/s\n", true), [PathBuf::from("/sys/fs/cgroup/user.slice/s/cgroup.procs")]);
        assert!(candidates("garbage\n", true).is_empty());
    }

    #[test]
    fn finds_a_file_that_lists_this_process() {
        // Every Linux test host has cgroupfs mounted somewhere we understand.
        let file = own_procs_file().expect("no cgroup.procs of our own");
        let pids = std::fs::read_to_string(&file).unwrap();
        assert!(pids.lines().any(|p| p == std::process::id().to_string()), "{} lacks our pid", file.display());
    }
}
