//! The sandbox policy (filesystem, landlock, process and network sections of
//! the policy TOML) as one typed value. Guards against a typo or a bad value
//! silently weakening the sandbox: unknown keys are rejected, every value is
//! checked, and errors name file:line:column.
#![forbid(unsafe_code)]
pub mod append;
pub mod extends;
pub(crate) mod host_vars;
pub mod import;
pub mod lint;
pub(crate) mod matcher;
pub mod metadata;
pub mod network;
pub mod presets;
pub mod schema;
pub mod suggest;
pub mod trust;
pub mod upstream_ca;
use moat_builder::textfile;
use serde::{Deserialize, Serialize};
use std::path::{Component, Path};

/// The default policy, embedded so `moat` works from any directory.
pub const BASELINE_TOML: &str = include_str!("../../../policies/baseline.toml");

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("{origin}:{line}:{column}: {message}")]
    Parse { origin: String, line: usize, column: usize, message: String },
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
    #[error("{path}")]
    Io { path: String, source: std::io::Error },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    pub version: u32,
    pub filesystem: Filesystem,
    pub landlock: LandlockSection,
    pub process: Process,
    /// Bounds on the work the sandbox's supervisor does on its behalf
    /// (absent in policies written before it existed: the defaults apply).
    #[serde(default)]
    pub supervisor: Supervisor,
    pub network: Network,
    /// Which signatures and provenance an image needs before it runs
    /// (absent: none, as in the baseline).
    #[serde(default, skip_serializing_if = "trust::Trust::is_default")]
    pub trust: trust::Trust,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Filesystem {
    pub workspace: String,
    pub tmp_size_mib: u64,
    /// Size of the workspace moat makes (MiB): its image's size, the most
    /// host disk it can take (absent in older policies: the default).
    #[serde(default = "default_workspace_size_mib")]
    pub workspace_size_mib: u64,
    /// Files, directories and links the workspace can hold (its inodes).
    #[serde(default = "default_workspace_inodes")]
    pub workspace_inodes: u64,
    pub read_only: Vec<PathRule>,
    /// Directory listing only (Landlock READ_DIR), inherited below.
    pub list_dirs: Vec<PathRule>,
    pub read_write: Vec<PathRule>,
}

fn default_workspace_size_mib() -> u64 {
    10240
}

fn default_workspace_inodes() -> u64 {
    1_000_000
}

/// One Landlock path rule with the reason it exists.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathRule {
    pub path: String,
    pub why: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Compatibility {
    /// Apply what the kernel supports; log what it could not.
    BestEffort,
    /// Refuse to start unless everything is enforced.
    HardRequirement,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LandlockSection {
    pub compatibility: Compatibility,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Process {
    pub user: String,
    pub keep_capabilities: Vec<String>,
    pub require_cap_drop: bool,
    pub rlimit_nproc: u64,
    pub rlimit_nofile: u64,
    pub rlimit_core: u64,
    pub pids_max: i64,
    pub memory_max_mib: i64,
    /// CPU time the whole sandbox may use, in cores (0.5: half of one core);
    /// absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_max: Option<Cores>,
}

/// A CPU share in thousandths of a core, written in the policy as a number
/// of cores (`1`, `0.5`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cores(pub u32);

impl Serialize for Cores {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(f64::from(self.0) / 1000.0)
    }
}

impl<'de> Deserialize<'de> for Cores {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Cores, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Number {
            Int(i64),
            Float(f64),
        }
        let cores = match Number::deserialize(d)? {
            Number::Int(i) => i as f64,
            Number::Float(f) => f,
        };
        if !(0.01..=1024.0).contains(&cores) {
            return Err(serde::de::Error::custom(format!("{cores} cores: use a number from 0.01 to 1024")));
        }
        Ok(Cores((cores * 1000.0).round() as u32))
    }
}

/// The supervisor's own work for one sandbox: it runs outside the sandbox's
/// cgroup (it holds the gateways), so it gets bounds of its own.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Supervisor {
    /// Memory limit of the supervisor's own cgroup (MiB).
    pub memory_max_mib: u64,
    /// Seconds a client has to send one whole request body to
    /// `inference.local`; past it the request is answered 408.
    pub request_body_timeout_secs: u64,
    /// Bytes of request bodies (MiB) the inference gateway may hold at once
    /// for this sandbox (only bodies it must rewrite whole are held).
    pub body_buffer_mib: u64,
    /// Seconds a kept-alive client connection may sit idle between requests
    /// on an inspected or forward path before the gateway closes it.
    pub keepalive_idle_secs: u64,
}

impl Default for Supervisor {
    fn default() -> Supervisor {
        Supervisor {
            memory_max_mib: 256,
            request_body_timeout_secs: 120,
            body_buffer_mib: 64,
            keepalive_idle_secs: 300,
        }
    }
}

pub use crate::policy::network::Network;

/// Capabilities that `require_cap_drop` refuses to see in the bounding set
/// (each one is a known container escape or host-wide power).
pub const DANGEROUS_CAPS: &[&str] = &[
    "CAP_SYS_ADMIN",
    "CAP_SYS_PTRACE",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_BOOT",
    "CAP_SYS_TIME",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_SETUID",
    "CAP_SETGID",
    "CAP_SETFCAP",
    "CAP_MKNOD",
    "CAP_BPF",
    "CAP_PERFMON",
    "CAP_SYS_CHROOT",
    "CAP_MAC_ADMIN",
    "CAP_MAC_OVERRIDE",
    "CAP_LINUX_IMMUTABLE",
    "CAP_CHOWN",
    "CAP_FOWNER",
];

impl Policy {
    /// The embedded baseline policy.
    pub fn baseline() -> Policy {
        // The embedded file is checked by a unit test; failing here is a build defect.
        // It is complete by itself: the base every other policy file extends.
        let policy: Policy =
            textfile::parse_toml(BASELINE_TOML, "policies/baseline.toml").expect("embedded baseline policy parses");
        policy.validate().expect("embedded baseline policy is valid");
        policy
    }

    /// Reads and validates a policy file over what it extends (the baseline
    /// unless it says otherwise: `extends`).
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        extends::load(path).map(|l| l.policy)
    }

    /// Parses and validates policy TOML over the baseline; `origin` names it
    /// in errors. The TOML is read by the parse `moat lint` and blueprints
    /// use too.
    pub fn parse(text: &str, origin: &str) -> Result<Policy, PolicyError> {
        extends::parse(text, origin)
    }

    fn validate(&self) -> Result<(), String> {
        if self.version != 1 {
            return Err(format!("version {} is not supported (expected 1)", self.version));
        }
        let fs = &self.filesystem;
        check_sandbox_path(&fs.workspace, "filesystem.workspace")?;
        if fs.workspace == "/" {
            return Err("filesystem.workspace must not be /".into());
        }
        if fs.tmp_size_mib == 0 {
            return Err("filesystem.tmp_size_mib must be at least 1".into());
        }
        if !(16..=16 << 20).contains(&fs.workspace_size_mib) {
            return Err("filesystem.workspace_size_mib must be from 16 (MiB) to 16777216 (16 TiB)".into());
        }
        if !(256..=1 << 30).contains(&fs.workspace_inodes) {
            return Err("filesystem.workspace_inodes must be from 256 to 1073741824".into());
        }
        for (list, name) in [(&fs.read_only, "read_only"), (&fs.list_dirs, "list_dirs"), (&fs.read_write, "read_write")]
        {
            for r in list.iter() {
                check_sandbox_path(&r.path, &format!("filesystem.{name} path {:?}", r.path))?;
                if r.why.trim().is_empty() {
                    return Err(format!("filesystem.{name} path {:?} has no `why`", r.path));
                }
            }
        }
        let p = &self.process;
        if p.user.is_empty() || p.user == "root" || p.user == "0" || p.user.starts_with("0:") {
            return Err(format!("process.user {:?}: sandboxes never run as root", p.user));
        }
        for c in &p.keep_capabilities {
            if !c.starts_with("CAP_") || c.len() < 5 || !c[4..].bytes().all(|b| b.is_ascii_uppercase() || b == b'_') {
                return Err(format!("process.keep_capabilities: {c:?} is not a capability name (CAP_...)"));
            }
        }
        if p.rlimit_nproc == 0 || p.rlimit_nofile < 16 {
            return Err("process.rlimit_nproc must be >= 1 and rlimit_nofile >= 16".into());
        }
        if p.pids_max < 1 || p.memory_max_mib < 16 {
            return Err("process.pids_max must be >= 1 and memory_max_mib >= 16".into());
        }
        let sup = &self.supervisor;
        if sup.memory_max_mib < 32 || sup.request_body_timeout_secs == 0 || sup.body_buffer_mib == 0 {
            return Err(
                "supervisor.memory_max_mib must be >= 32, request_body_timeout_secs and body_buffer_mib >= 1".into()
            );
        }
        if !(1..=86_400).contains(&sup.keepalive_idle_secs) {
            return Err("supervisor.keepalive_idle_secs must be from 1 to 86400 (a day)".into());
        }
        if sup.body_buffer_mib >= sup.memory_max_mib {
            return Err("supervisor.body_buffer_mib must be below supervisor.memory_max_mib".into());
        }
        self.trust.validate()?;
        self.network.validate().map_err(|e| e.to_string())
    }

    /// Capabilities that `require_cap_drop` would refuse but the policy keeps.
    pub fn kept_dangerous_caps(&self) -> Vec<String> {
        self.process.keep_capabilities.iter().filter(|c| DANGEROUS_CAPS.contains(&c.as_str())).cloned().collect()
    }
}

fn check_sandbox_path(p: &str, what: &str) -> Result<(), String> {
    let path = Path::new(p);
    if !path.is_absolute() {
        return Err(format!("{what}: must be an absolute path inside the sandbox"));
    }
    if path.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err(format!("{what}: must not contain `..`"));
    }
    Ok(())
}

fn placed(at: textfile::At) -> PolicyError {
    PolicyError::Parse { origin: at.origin, line: at.line, column: at.column, message: at.message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baseline_parses_and_is_strict() {
        let p = Policy::baseline();
        assert_eq!(p.process.rlimit_nproc, 512);
        assert_eq!(p.process.rlimit_core, 0);
        assert!(p.process.keep_capabilities.is_empty());
        assert!(p.process.require_cap_drop);
        assert!(p.filesystem.read_write.iter().any(|r| r.path == "/sandbox"));
    }

    #[test]
    fn unknown_key_is_rejected_with_position() {
        let text = BASELINE_TOML.replace("rlimit_core = 0", "rlimit_core = 0\nrlimit_cores = 1");
        let err = Policy::parse(&text, "p.toml").unwrap_err().to_string();
        let line = text.lines().position(|l| l.starts_with("rlimit_cores")).unwrap() + 1;
        assert!(err.starts_with(&format!("p.toml:{line}:1: ")), "{err}");
        assert!(err.contains("rlimit_cores"), "{err}");
    }

    #[test]
    fn root_user_and_relative_paths_are_refused() {
        let root = BASELINE_TOML.replace("user = \"sandbox\"", "user = \"root\"");
        assert!(Policy::parse(&root, "p").unwrap_err().to_string().contains("never run as root"));
        let rel = BASELINE_TOML.replace("path = \"/app\"", "path = \"app\"");
        assert!(Policy::parse(&rel, "p").unwrap_err().to_string().contains("absolute"));
        let dots = BASELINE_TOML.replace("path = \"/app\"", "path = \"/app/../etc\"");
        assert!(Policy::parse(&dots, "p").unwrap_err().to_string().contains(".."));
    }

    #[test]
    fn workspace_limits_default_when_absent_and_are_bounded() {
        let old: String = BASELINE_TOML.lines().filter(|l| !l.starts_with("workspace_")).collect::<Vec<_>>().join("\n");
        let p = Policy::parse(&old, "old.toml").unwrap();
        assert_eq!((p.filesystem.workspace_size_mib, p.filesystem.workspace_inodes), (10240, 1_000_000));
        let tiny = BASELINE_TOML.replace("workspace_size_mib = 10240", "workspace_size_mib = 1");
        assert!(Policy::parse(&tiny, "p").unwrap_err().to_string().contains("workspace_size_mib"));
    }

    #[test]
    fn network_table_is_closed_too() {
        let text = BASELINE_TOML.replace("gateway_port = 3128", "gateway_port = 3128\nallow_all = true");
        assert!(Policy::parse(&text, "p").is_err());
    }
}
