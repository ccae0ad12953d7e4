//! Landlock for the sandboxed process: the filesystem rules of the policy,
//! TCP connect only to the gateway port, TCP bind only to the published
//! ports, abstract-unix-socket and signal scoping. Guards against an agent
//! reading or writing outside the paths the policy names even where file
//! modes would allow it, reaching any local TCP service but the gateway,
//! serving on a port nobody published, and signalling or connecting to processes outside
//! its Landlock domain. Planned as root (`LandlockPlan`), enforced by the
//! executor inside the sandbox just before seccomp and exec.
#![forbid(unsafe_code)]
use crate::policy::{Compatibility, Policy};
use landlock::{
    Access, AccessFs, AccessNet, BitFlags, CompatLevel, Compatible, NetPort, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};
use serde::{Deserialize, Serialize};

/// The newest ABI moat asks for (filesystem, TCP, scopes: ABI 6; 7 adds audit flags).
const WANTED: ABI = ABI::V7;

#[derive(Debug, thiserror::Error)]
pub enum LandlockError {
    #[error("landlock")]
    Ruleset(#[from] landlock::RulesetError),
    #[error("landlock (hard_requirement): {0}")]
    NotEnforced(String),
}

/// What Landlock will enforce in a sandbox, computed from the policy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LandlockPlan {
    pub read_only: Vec<String>,
    pub list_dirs: Vec<String>,
    pub read_write: Vec<String>,
    pub connect_port: u16,
    /// The other TCP ports it may connect to: DNS over TCP and those
    /// transparent egress listens on (the gateway's sockets on `lo`).
    #[serde(default)]
    pub transparent_ports: Vec<u16>,
    /// The only TCP ports the sandbox may bind: those `moat run -p` published.
    #[serde(default)]
    pub bind_ports: Vec<u16>,
    pub compatibility: Compatibility,
}

/// What one enforcement achieved (reported by the executor on stderr when partial).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enforced {
    pub fully: bool,
    pub skipped_paths: Vec<String>,
}

impl LandlockPlan {
    pub fn from_policy(p: &Policy) -> LandlockPlan {
        LandlockPlan {
            read_only: p.filesystem.read_only.iter().map(|r| r.path.clone()).collect(),
            list_dirs: p.filesystem.list_dirs.iter().map(|r| r.path.clone()).collect(),
            read_write: p.filesystem.read_write.iter().map(|r| r.path.clone()).collect(),
            connect_port: p.network.gateway_port,
            transparent_ports: Vec::new(),
            bind_ports: Vec::new(),
            compatibility: p.landlock.compatibility,
        }
    }

    /// Restricts the calling thread (and what it executes) for good. Paths
    /// are resolved in the caller's root: call after pivot_root. A path that
    /// does not exist grants nothing and is reported in `skipped_paths`.
    pub fn enforce(&self) -> Result<Enforced, LandlockError> {
        let level = match self.compatibility {
            Compatibility::BestEffort => CompatLevel::BestEffort,
            Compatibility::HardRequirement => CompatLevel::HardRequirement,
        };
        let mut skipped = Vec::new();
        let mut created = Ruleset::default()
            .set_compatibility(level)
            .handle_access(AccessFs::from_all(WANTED))?
            .handle_access(AccessNet::ConnectTcp | AccessNet::BindTcp)?
            .scope(Scope::AbstractUnixSocket | Scope::Signal)?
            .create()?;
        let read = AccessFs::from_read(WANTED);
        let list = BitFlags::from(AccessFs::ReadDir);
        let all = AccessFs::from_all(WANTED);
        for (paths, wanted) in [(&self.read_only, read), (&self.list_dirs, list), (&self.read_write, all)] {
            for p in paths {
                let Ok(fd) = PathFd::new(p) else {
                    skipped.push(p.clone());
                    continue;
                };
                let is_dir = std::fs::metadata(p).map(|m| m.is_dir()).unwrap_or(false);
                let access = if is_dir { wanted } else { wanted & AccessFs::from_file(WANTED) };
                if access.is_empty() {
                    skipped.push(p.clone());
                    continue;
                }
                created = created.add_rule(PathBeneath::new(fd, access))?;
            }
        }
        created = created.add_rule(NetPort::new(self.connect_port, AccessNet::ConnectTcp))?;
        for port in &self.transparent_ports {
            created = created.add_rule(NetPort::new(*port, AccessNet::ConnectTcp))?;
        }
        for port in &self.bind_ports {
            created = created.add_rule(NetPort::new(*port, AccessNet::BindTcp))?;
        }
        let status = created.restrict_self()?;
        let fully = status.ruleset == RulesetStatus::FullyEnforced;
        if status.ruleset == RulesetStatus::NotEnforced && self.compatibility == Compatibility::HardRequirement {
            return Err(LandlockError::NotEnforced("the kernel enforces no Landlock rule".into()));
        }
        Ok(Enforced { fully, skipped_paths: skipped })
    }
}

/// The running kernel's Landlock ABI (0: absent or disabled).
pub(crate) fn kernel_abi() -> i32 {
    crate::launch::sys::landlock_abi()
}

/// What moat's Landlock plan loses on a kernel with `abi`, one line each with its cost.
pub(crate) fn missing_features(abi: i32) -> Vec<&'static str> {
    let mut m = Vec::new();
    if abi < 1 {
        m.push("Landlock filesystem rules (needs Linux 5.13+ with landlock in the lsm= boot list): the sandbox can read any file its uid may");
        return m;
    }
    if abi < 2 {
        m.push("Landlock REFER (ABI 2, Linux 5.19): renames across directories are refused entirely");
    }
    if abi < 3 {
        m.push("Landlock TRUNCATE (ABI 3, Linux 6.2): truncate() of read-only files is not blocked");
    }
    if abi < 4 {
        m.push(
            "Landlock TCP rules (ABI 4, Linux 6.7): connections to any local port, and binding any port, are possible",
        );
    }
    if abi < 5 {
        m.push("Landlock IOCTL_DEV (ABI 5, Linux 6.10): device ioctls are not restricted");
    }
    if abi < 6 {
        m.push(
            "Landlock scopes (ABI 6, Linux 6.12): abstract unix sockets and signals outside the sandbox are not scoped",
        );
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_follows_policy() {
        let p = Policy::baseline();
        let plan = LandlockPlan::from_policy(&p);
        assert!(plan.read_write.contains(&"/sandbox".to_string()));
        assert!(plan.read_only.contains(&"/usr".to_string()));
        assert_eq!(plan.connect_port, p.network.gateway_port);
    }

    #[test]
    fn missing_features_shrink_with_abi() {
        assert_eq!(missing_features(7), Vec::<&str>::new());
        assert!(missing_features(3).iter().any(|m| m.contains("TCP")));
        assert_eq!(missing_features(0).len(), 1);
    }
}
