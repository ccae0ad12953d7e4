//! `moat doctor`: probes the kernel features the sandbox relies on (Landlock
//! ABI, seccomp, namespaces, cgroup layout, overlayfs) and says, for each one
//! missing, what protection it costs and how to get it back. Guards against a
//! silently weaker sandbox: what best_effort would drop is shown up front.
#![forbid(unsafe_code)]
use serde::Serialize;
use std::fs;
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    /// Works, with less protection.
    Degraded,
    /// `moat run` cannot work.
    Missing,
}

#[derive(Debug, Clone, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub level: Level,
    pub detail: String,
    /// What the gap costs and how to close it (empty when ok).
    pub fix: String,
}

fn check(name: &'static str, level: Level, detail: impl Into<String>, fix: impl Into<String>) -> Check {
    Check { name, level, detail: detail.into(), fix: fix.into() }
}

/// Runs every probe.
pub fn run() -> Vec<Check> {
    vec![
        root(),
        landlock(),
        seccomp(),
        caller_identity(),
        namespaces(),
        cgroups(),
        supervisor_memory(),
        overlayfs(),
        workspace_limits(),
        runtimes(),
    ]
}

fn root() -> Check {
    if nix::unistd::geteuid().is_root() {
        check("privileges", Level::Ok, "running as root", "")
    } else {
        check(
            "privileges",
            Level::Missing,
            "not root",
            "moat run creates namespaces and mounts overlayfs: run it as root (rootless mode is not implemented yet)",
        )
    }
}

fn landlock() -> Check {
    let abi = crate::launch::landlock::kernel_abi();
    let missing = crate::launch::landlock::missing_features(abi);
    match (abi, missing.is_empty()) {
        (_, true) => check("landlock", Level::Ok, format!("ABI {abi}: filesystem rules, TCP connect rules, abstract-socket and signal scopes"), ""),
        (0, _) => check(
            "landlock",
            Level::Degraded,
            "not available",
            format!("{}. Fix: boot Linux >= 6.12 with `lsm=landlock,...` on the kernel command line. Policies with compatibility = \"hard_requirement\" refuse to start.", missing.join("; ")),
        ),
        _ => check("landlock", Level::Degraded, format!("ABI {abi}"), format!("{}. Fix: Linux >= 6.12 gives every feature moat uses.", missing.join("; "))),
    }
}

fn seccomp() -> Check {
    let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
    let has_field = status.lines().any(|l| l.starts_with("Seccomp:"));
    let compiled = crate::launch::seccomp::DenyList::builtin().and_then(|l| l.compile());
    match (has_field, compiled) {
        (true, Ok(f)) => check("seccomp", Level::Ok, format!("filter mode available; moat's deny list compiles to {} programs", f.len()), ""),
        (false, _) => check("seccomp", Level::Missing, "the kernel has no seccomp", "without it ptrace, mount, bpf, io_uring and user namespaces stay open to the agent. Fix: a kernel built with CONFIG_SECCOMP_FILTER"),
        (true, Err(e)) => check("seccomp", Level::Missing, format!("the deny list does not compile: {e}"), "a build defect: report it"),
    }
}

/// What the gateway's judgement of callers needs: seccomp user notification
/// with CONTINUE (Linux 5.5) to learn who called connect(2), and
/// PROCMAP_QUERY (Linux 6.11) to list a process's code without its paths.
fn caller_identity() -> Check {
    let release = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    let mut v = release.split(['.', '-']).map(|p| p.parse::<u32>().unwrap_or(0));
    let (major, minor) = (v.next().unwrap_or(0), v.next().unwrap_or(0));
    let fast = fs::File::open("/proc/self/maps").is_ok_and(|f| crate::sys::exec_vmas(&f, 65_536).is_ok());
    match ((major, minor) >= (5, 5), fast) {
        (true, true) => check("caller identity", Level::Ok, format!("Linux {release}: connect(2) notification and PROCMAP_QUERY"), ""),
        (true, false) => check(
            "caller identity",
            Level::Degraded,
            format!("Linux {release}: no PROCMAP_QUERY"),
            "each connection's code check reads /proc/PID/maps as text, about 4x slower for a process with hundreds of libraries. Fix: Linux >= 6.11",
        ),
        (false, _) => check(
            "caller identity",
            Level::Missing,
            format!("Linux {release}: no seccomp user notification with CONTINUE"),
            "sandboxes cannot start: the gateway must learn which program called connect(2). Fix: Linux >= 5.5",
        ),
    }
}

fn namespaces() -> Check {
    let wanted = ["pid", "ipc", "uts", "mnt", "net", "cgroup"];
    let absent: Vec<&str> =
        wanted.iter().copied().filter(|n| !Path::new(&format!("/proc/self/ns/{n}")).exists()).collect();
    if absent.is_empty() {
        check("namespaces", Level::Ok, "pid ipc uts mount net cgroup", "")
    } else {
        check("namespaces", Level::Missing, format!("missing: {}", absent.join(" ")), "each missing namespace shares that part of the host with the sandbox. Fix: a kernel with CONFIG_NAMESPACES and the matching CONFIG_*_NS")
    }
}

/// "v2", "hybrid" or "v1", from the mount at /sys/fs/cgroup.
pub fn cgroup_layout() -> &'static str {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let fstype = |mp: &str| {
        mounts.lines().find_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() > 2 && f[1] == mp).then(|| f[2].to_string())
        })
    };
    match fstype("/sys/fs/cgroup").as_deref() {
        Some("cgroup2") => "v2",
        _ if fstype("/sys/fs/cgroup/unified").as_deref() == Some("cgroup2") => "hybrid",
        _ => "v1",
    }
}

fn cgroups() -> Check {
    match cgroup_layout() {
        "v2" => check("cgroups", Level::Ok, "cgroup v2", ""),
        layout => check(
            "cgroups",
            Level::Ok,
            format!("cgroup {layout} (libcontainer uses its v1 manager; pids and memory limits apply)"),
            if layout == "hybrid" {
                "crun refuses this layout (\"cgroups in hybrid mode not supported\"); moat and runc work"
            } else {
                ""
            },
        ),
    }
}

fn supervisor_memory() -> Check {
    let where_ = crate::sandbox::host_cgroup::describe();
    if crate::sandbox::host_cgroup::available() {
        check("supervisor memory", Level::Ok, format!("bounded per sandbox in {where_}"), "")
    } else {
        check(
            "supervisor memory",
            Level::Degraded,
            where_,
            "the gateways run outside the sandbox's cgroup: without a memory controller what a sandbox makes them \
             hold is the host's. Fix: enable the memory controller (cgroup_enable=memory)",
        )
    }
}

fn overlayfs() -> Check {
    let fss = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    if fss.lines().any(|l| l.split_whitespace().last() == Some("overlay")) {
        check("overlayfs", Level::Ok, "available", "")
    } else {
        check(
            "overlayfs",
            Level::Missing,
            "not in /proc/filesystems",
            "the read-only rootfs is composed with overlayfs. Fix: `modprobe overlay` (CONFIG_OVERLAY_FS)",
        )
    }
}

/// Which bound applies to workspaces: a loop-mounted ext4 image per
/// workspace moat makes (needs loop devices, ext4 and mkfs.ext4); an
/// operator's `--workspace DIR` is never bounded. Project quotas are named
/// when the filesystem has them, and why moat does not rely on them.
fn workspace_limits() -> Check {
    let home = moat_builder::home::moat_home();
    let fss = fs::read_to_string("/proc/filesystems").unwrap_or_default();
    let mut missing = Vec::new();
    if !Path::new("/dev/loop-control").exists() {
        missing.push("loop devices (/dev/loop-control; CONFIG_BLK_DEV_LOOP, `modprobe loop`)");
    }
    if !fss.lines().any(|l| l.split_whitespace().last() == Some("ext4")) {
        missing.push("ext4 (CONFIG_EXT4_FS)");
    }
    if !["/usr/sbin/mkfs.ext4", "/sbin/mkfs.ext4"].iter().any(|p| Path::new(p).is_file()) {
        missing.push("mkfs.ext4 (install e2fsprogs)");
    }
    let quota = if project_quota(&home) {
        "; the filesystem of MOAT_HOME has project quotas, which moat does not use (the sandbox owns its files \
         in the host's user namespace and could move them out of a project)"
    } else {
        ""
    };
    let operator = "an operator's --workspace DIR is not bounded (a warning event says so at each start)";
    if missing.is_empty() {
        check(
            "workspace limits",
            Level::Ok,
            format!(
                "size and inode limits from policy: a loop-mounted ext4 image per workspace in {}; {operator}{quota}",
                home.display()
            ),
            "",
        )
    } else {
        check(
            "workspace limits",
            Level::Missing,
            format!("missing: {}", missing.join(", ")),
            format!("without them a sandbox cannot start with a bounded workspace; {operator}"),
        )
    }
}

/// Whether the filesystem holding `dir` (or its nearest existing parent)
/// is mounted with project quotas (ext4 `prjquota`, xfs `prjquota`/`pquota`).
fn project_quota(dir: &Path) -> bool {
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut best: Option<(usize, bool)> = None;
    let dir = dir.ancestors().find(|p| p.exists()).and_then(|p| p.canonicalize().ok()).unwrap_or_default();
    for l in info.lines() {
        let f: Vec<&str> = l.split(' ').collect();
        let Some(sep) = f.iter().position(|x| *x == "-") else { continue };
        let (Some(mp), Some(opts)) = (f.get(4), f.get(sep + 3)) else { continue };
        if dir.starts_with(mp) && best.is_none_or(|(n, _)| mp.len() >= n) {
            let q = opts.split(',').any(|o| matches!(o, "prjquota" | "pquota" | "prjjquota"));
            best = Some((mp.len(), q));
        }
    }
    best.is_some_and(|(_, q)| q)
}

fn runtimes() -> Check {
    let found: Vec<&str> = ["runc", "crun"].into_iter().filter(|r| which(r)).collect();
    if found.is_empty() {
        check("oci runtimes", Level::Ok, "none (optional: `moat bundle` output runs under runc)", "")
    } else {
        check("oci runtimes", Level::Ok, format!("{} (optional, for `moat bundle`)", found.join(", ")), "")
    }
}

fn which(bin: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_check_reports_and_gaps_say_how_to_fix() {
        let checks = super::run();
        assert_eq!(checks.len(), 10);
        for c in &checks {
            assert!(!c.detail.is_empty(), "{}", c.name);
            if c.level != super::Level::Ok {
                assert!(!c.fix.is_empty(), "{} has no fix", c.name);
            }
        }
    }
}
