//! What a sandbox uses now, read from its cgroup: CPU time and memory (the
//! console's sandbox table). Guards the operator against a wrong figure
//! rather than none: the cgroup is the one `/proc/PID/cgroup` names for the
//! sandbox's init (never a path guessed from its name), on cgroup v1
//! (hybrid hosts) and v2 alike, and every file read is bounded.
#![forbid(unsafe_code)]
use std::io::Read;
use std::path::{Path, PathBuf};

/// CPU time and memory of one cgroup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// CPU time used since the cgroup was made, in nanoseconds.
    pub cpu_ns: Option<u64>,
    /// Memory charged now, in bytes.
    pub memory_bytes: Option<u64>,
}

const MAX_FILE: u64 = 64 << 10;

fn read(path: &Path) -> Option<String> {
    let mut s = String::new();
    std::fs::File::open(path).ok()?.take(MAX_FILE).read_to_string(&mut s).ok()?;
    Some(s)
}

fn number(path: &Path) -> Option<u64> {
    read(path)?.trim().parse().ok()
}

/// The cgroup directories of `pid` for CPU accounting and memory.
fn dirs(pid: i32, root: &Path) -> (Option<PathBuf>, Option<PathBuf>) {
    match read(&PathBuf::from(format!("/proc/{pid}/cgroup"))) {
        Some(text) => dirs_in(&text, root),
        None => (None, None),
    }
}

/// The directories a `/proc/PID/cgroup` text names under `root`.
fn dirs_in(text: &str, root: &Path) -> (Option<PathBuf>, Option<PathBuf>) {
    let (mut cpu, mut mem) = (None, None);
    for line in text.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(_), Some(controllers), Some(path)) = (f.next(), f.next(), f.next()) else { continue };
        let rel = path.trim_start_matches('/');
        if controllers.is_empty() {
            // v2 (or the unified hierarchy of a hybrid host): only where
            // the controllers are (a pure v2 host).
            let d = root.join(rel);
            if d.join("cpu.stat").exists() && cpu.is_none() {
                cpu = Some(d.clone());
            }
            if d.join("memory.current").exists() && mem.is_none() {
                mem = Some(d);
            }
            continue;
        }
        let names: Vec<&str> = controllers.split(',').collect();
        if names.contains(&"cpuacct") {
            cpu = Some(root.join(controllers).join(rel));
        }
        if names.contains(&"memory") {
            mem = Some(root.join(controllers).join(rel));
        }
    }
    (cpu, mem)
}

/// The usage of the cgroup `pid` is in (what is unreadable is `None`).
pub fn of(pid: i32) -> Usage {
    of_under(pid, Path::new("/sys/fs/cgroup"))
}

fn of_under(pid: i32, root: &Path) -> Usage {
    let (cpu, mem) = dirs(pid, root);
    let cpu_ns = cpu.and_then(|d| {
        number(&d.join("cpuacct.usage")).or_else(|| {
            let stat = read(&d.join("cpu.stat"))?;
            let usec = stat.lines().find_map(|l| l.strip_prefix("usage_usec "))?.trim().parse::<u64>().ok()?;
            usec.checked_mul(1000)
        })
    });
    let memory_bytes =
        mem.and_then(|d| number(&d.join("memory.usage_in_bytes")).or_else(|| number(&d.join("memory.current"))));
    Usage { cpu_ns, memory_bytes }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_has_a_cgroup_with_figures() {
        // Every process is in some cgroup; on these hosts both figures read.
        let u = of(std::process::id() as i32);
        assert!(u.memory_bytes.is_some_and(|m| m > 0), "{u:?}");
        assert!(u.cpu_ns.is_some(), "{u:?}");
    }

    /// A cgroup tree under a temp root: `files` (path, content).
    fn tree(files: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().unwrap();
        for (p, text) in files {
            let p = d.path().join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, text).unwrap();
        }
        d
    }

    #[test]
    fn v1_hybrid_and_v2_layouts_are_read() {
        let v1 = tree(&[
            ("cpu,cpuacct/moat/s/cpuacct.usage", "1500\n"),
            ("memory/moat/s/memory.usage_in_bytes", "4096\n"),
            // The unified hierarchy of a hybrid host has no controllers here.
            ("unified/moat/s/cgroup.procs", ""),
        ]);
        let text = "12:memory:/moat/s\n4:cpu,cpuacct:/moat/s\n0::/moat/s\n";
        let (cpu, mem) = dirs_in(text, v1.path());
        assert_eq!(cpu, Some(v1.path().join("cpu,cpuacct/moat/s")));
        assert_eq!(mem, Some(v1.path().join("memory/moat/s")));
        assert_eq!(number(&cpu.unwrap().join("cpuacct.usage")), Some(1500));

        let v2 = tree(&[("moat/s/cpu.stat", "usage_usec 7\nuser_usec 5\n"), ("moat/s/memory.current", "8192\n")]);
        let (cpu, mem) = dirs_in("0::/moat/s\n", v2.path());
        assert_eq!(
            (cpu.as_deref(), mem.as_deref()),
            (Some(&*v2.path().join("moat/s")), Some(&*v2.path().join("moat/s")))
        );
    }

    #[test]
    fn a_process_that_is_not_there_has_none() {
        assert_eq!(of_under(i32::MAX, Path::new("/nonexistent")), Usage::default());
    }
}
