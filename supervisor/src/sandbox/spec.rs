//! The OCI runtime spec (config.json) of a sandbox: the one description both
//! moat's launcher and runc run. Guards against a sandbox starting with more
//! than the policy grants: every capability set empty unless kept, no new
//! privileges, rlimits, all namespaces but user new, /proc masked, rootfs
//! read-only, PATH fixed, and a user other than root.
#![forbid(unsafe_code)]
use crate::launch::rootfs::SandboxUser;
use crate::policy::Policy;
use oci_spec::runtime::{LinuxSeccomp, Spec};
use serde_json::{json, Value};
use std::path::PathBuf;

/// PATH inside every sandbox: the system directories only, never the image's
/// or the caller's (a writable directory on PATH is a hijack waiting).
pub(crate) const SANDBOX_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("building the runtime spec")]
    Build(#[from] serde_json::Error),
    #[error("environment: {0}")]
    Env(String),
}

/// The CFS period the CPU quota is measured over (µs).
const CPU_PERIOD_US: u64 = 100_000;

/// Everything a spec depends on besides the policy.
#[derive(Debug, Clone)]
pub(crate) struct SpecParams {
    /// Root filesystem path (absolute, or relative to the bundle).
    pub rootfs: String,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: SandboxUser,
    pub hostname: String,
    /// Host directory bound at the policy's workspace path.
    pub workspace_host: PathBuf,
    /// Join this network namespace instead of creating one (the supervisor's).
    pub netns_path: Option<String>,
    /// cgroup path (relative to the cgroup roots); None: the runtime's default.
    pub cgroups_path: Option<String>,
    pub terminal: bool,
    /// Written into the spec for runtimes that install it themselves (runc);
    /// moat's launcher installs the same list from its executor instead.
    pub seccomp: Option<LinuxSeccomp>,
}

/// Masked like runc and containerd do: kernel memory, keys, timers, firmware.
const MASKED: &[&str] = &[
    "/proc/acpi",
    "/proc/asound",
    "/proc/kcore",
    "/proc/keys",
    "/proc/latency_stats",
    "/proc/timer_list",
    "/proc/timer_stats",
    "/proc/sched_debug",
    "/proc/scsi",
    "/proc/sysrq-trigger",
    "/sys/firmware",
    "/sys/devices/virtual/powercap",
];
const READONLY: &[&str] = &["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys"];

/// The sandbox environment: the image's variables, then the caller's `-e`,
/// with PATH fixed and proxies pointing at the gateway.
pub(crate) fn environment(
    image_env: &[String],
    extra: &[String],
    home: &str,
    gateway_port: u16,
) -> Result<Vec<String>, SpecError> {
    let proxy = format!("http://127.0.0.1:{gateway_port}");
    let mut vars: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: &str| {
        vars.retain(|(key, _)| key != k);
        vars.push((k.to_string(), v.to_string()));
    };
    for kv in image_env {
        if let Some((k, v)) = kv.split_once('=') {
            if k != "PATH" {
                set(k, v);
            }
        }
    }
    set("HOME", home);
    for p in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"] {
        set(p, &proxy);
    }
    for p in ["NO_PROXY", "no_proxy"] {
        set(p, "localhost,127.0.0.1,::1");
    }
    for kv in extra {
        let (k, v) = kv.split_once('=').ok_or_else(|| SpecError::Env(format!("{kv:?} is not KEY=VALUE")))?;
        if k.is_empty() || k.contains('\0') || v.contains('\0') {
            return Err(SpecError::Env(format!("{kv:?} is not a valid variable")));
        }
        if k == "PATH" {
            return Err(SpecError::Env("PATH is fixed by moat to the system directories".into()));
        }
        set(k, v);
    }
    set("PATH", SANDBOX_PATH);
    Ok(vars.into_iter().map(|(k, v)| format!("{k}={v}")).collect())
}

/// Builds the runtime spec for `p` under `policy`.
pub(crate) fn build(policy: &Policy, p: &SpecParams) -> Result<Spec, SpecError> {
    let proc_ = &policy.process;
    let caps: Vec<Value> = proc_.keep_capabilities.iter().map(|c| json!(c)).collect();
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
        json!({"type": "cgroup"}),
    ];
    namespaces.push(match &p.netns_path {
        Some(path) => json!({"type": "network", "path": path}),
        None => json!({"type": "network"}),
    });
    let tmp_opts = format!("size={}m", policy.filesystem.tmp_size_mib);
    let spec = json!({
        "ociVersion": "1.0.2",
        "hostname": p.hostname,
        "root": {"path": p.rootfs, "readonly": true},
        "process": {
            "terminal": p.terminal,
            "user": {"uid": p.user.uid, "gid": p.user.gid, "additionalGids": [p.user.gid]},
            "args": p.args,
            "env": p.env,
            "cwd": p.cwd,
            "noNewPrivileges": true,
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps, "inheritable": [], "ambient": []},
            "rlimits": [
                {"type": "RLIMIT_NPROC", "hard": proc_.rlimit_nproc, "soft": proc_.rlimit_nproc},
                {"type": "RLIMIT_NOFILE", "hard": proc_.rlimit_nofile, "soft": proc_.rlimit_nofile},
                {"type": "RLIMIT_CORE", "hard": proc_.rlimit_core, "soft": proc_.rlimit_core},
            ],
        },
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
            {"destination": "/tmp", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "nodev", "mode=1777", tmp_opts]},
            {"destination": policy.filesystem.workspace, "type": "bind", "source": p.workspace_host, "options": ["rbind", "rw", "nosuid", "nodev"]},
        ],
        "linux": {
            "namespaces": namespaces,
            "resources": {
                "pids": {"limit": proc_.pids_max},
                "memory": {"limit": proc_.memory_max_mib * 1024 * 1024},
                "devices": [{"allow": false, "access": "rwm"}],
            },
            "maskedPaths": MASKED,
            "readonlyPaths": READONLY,
            "rootfsPropagation": "private",
        },
    });
    let mut spec = spec;
    if let Some(cores) = proc_.cpu_max {
        // quota/period = cores; a 100 ms period, the kernel's default.
        spec["linux"]["resources"]["cpu"] = json!({"quota": i64::from(cores.0) * 100, "period": CPU_PERIOD_US});
    }
    if let Some(cg) = &p.cgroups_path {
        spec["linux"]["cgroupsPath"] = json!(cg);
    }
    let mut spec: Spec = serde_json::from_value(spec)?;
    if let (Some(sc), Some(linux)) = (&p.seccomp, spec.linux_mut()) {
        linux.set_seccomp(Some(sc.clone()));
    }
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> SpecParams {
        SpecParams {
            rootfs: "rootfs".into(),
            args: vec!["/bin/true".into()],
            env: vec![],
            cwd: "/sandbox".into(),
            user: SandboxUser { uid: 1000, gid: 1000, home: "/sandbox".into() },
            hostname: "s".into(),
            workspace_host: "/w".into(),
            netns_path: None,
            cgroups_path: Some("/moat/s".into()),
            terminal: false,
            seccomp: None,
        }
    }

    #[test]
    fn spec_drops_everything_by_default() {
        let s = build(&Policy::baseline(), &params()).unwrap();
        let pr = s.process().as_ref().unwrap();
        assert_eq!(pr.no_new_privileges(), Some(true));
        let caps = pr.capabilities().as_ref().unwrap();
        assert!(caps.bounding().as_ref().unwrap().is_empty() && caps.effective().as_ref().unwrap().is_empty());
        assert_eq!(pr.user().uid(), 1000);
        assert_eq!(s.root().as_ref().unwrap().readonly(), Some(true));
        let ns = s.linux().as_ref().unwrap().namespaces().as_ref().unwrap();
        assert_eq!(ns.len(), 6, "pid ipc uts mount cgroup net; never user");
        assert!(s.linux().as_ref().unwrap().masked_paths().as_ref().unwrap().contains(&"/proc/kcore".to_string()));
    }

    #[test]
    fn env_fixes_path_and_refuses_overrides() {
        let e = environment(&["PATH=/evil".into(), "LANG=C".into()], &["A=b".into()], "/sandbox", 3128).unwrap();
        assert!(e.contains(&format!("PATH={SANDBOX_PATH}")));
        assert!(e.contains(&"LANG=C".to_string()) && e.contains(&"A=b".to_string()));
        assert!(e.contains(&"HTTPS_PROXY=http://127.0.0.1:3128".to_string()));
        assert!(!e.iter().any(|v| v == "PATH=/evil"));
        assert!(environment(&[], &["PATH=/tmp".into()], "/", 1).is_err());
        assert!(environment(&[], &["NOEQUALS".into()], "/", 1).is_err());
    }
}
