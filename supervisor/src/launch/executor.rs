//! The libcontainer `Executor` that runs inside the sandbox after pivot_root,
//! setuid and the capability drop, just before exec: it ties the process's
//! life to its launcher, verifies the capability drop (fail closed), lowers
//! the rlimits (again, for `exec`'d processes that did not inherit them),
//! applies Landlock, then installs the seccomp filters last (the connect
//! notification, whose listener goes to the supervisor, then the deny list). Guards against a
//! sandbox that starts with capabilities the policy did not keep, or without
//! the Landlock and seccomp layers. Its inputs travel inside the value (the
//! executor does not see the supervisor's environment).
#![forbid(unsafe_code)]
use crate::launch::landlock::LandlockPlan;
use crate::policy::DANGEROUS_CAPS;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use nix::sys::resource::{getrlimit, setrlimit, Resource};
use nix::sys::signal::Signal;
use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};
use std::ffi::CString;

/// What the executor enforces, decided as root by the supervisor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardPlan {
    pub landlock: LandlockPlan,
    pub require_cap_drop: bool,
    pub rlimit_nproc: u64,
    pub rlimit_nofile: u64,
    pub rlimit_core: u64,
}

/// The executor value libcontainer clones into the container's init.
#[derive(Clone)]
pub(crate) struct MoatExecutor {
    pub guard: GuardPlan,
    pub seccomp: Vec<seccompiler::BpfProgram>,
    /// Inherited connection to the supervisor's notify.sock, on which the
    /// connect listener is handed over (`connect_notify`).
    pub notify: i32,
}

/// A line on the sandbox's stderr, where the user looks (libcontainer's log
/// may not be). Not eprintln!: a closed stderr must not become a panic.
fn say(line: &str) {
    use std::io::Write;
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn fail(msg: String) -> ExecutorError {
    say(&format!("moat: sandbox refused to start: {msg}"));
    ExecutorError::Other(msg)
}

impl Executor for MoatExecutor {
    fn validate(&self, _spec: &Spec) -> Result<(), ExecutorValidationError> {
        Ok(())
    }

    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        let args = spec
            .process()
            .as_ref()
            .and_then(|p| p.args().as_ref())
            .filter(|a| !a.is_empty())
            .ok_or(ExecutorError::InvalidArg)?;
        // 1. Die with the launcher. Credentials changed before this point,
        // which clears an earlier setting, so it is set here; seccomp below
        // keeps the agent from clearing it.
        if let Err(e) = nix::sys::prctl::set_pdeathsig(Signal::SIGKILL) {
            return Err(fail(format!("PR_SET_PDEATHSIG: {}", std::io::Error::from(e))));
        }
        // 2. Fail closed on capabilities.
        if self.guard.require_cap_drop {
            verify_caps_dropped().map_err(fail)?;
        }
        // 3. rlimits. Lowering needs no privilege; a policy value above the
        // caller's hard limit is clamped to it (raising would need
        // CAP_SYS_RESOURCE, which the sandbox never has).
        for (res, v) in [
            (Resource::RLIMIT_NPROC, self.guard.rlimit_nproc),
            (Resource::RLIMIT_NOFILE, self.guard.rlimit_nofile),
            (Resource::RLIMIT_CORE, self.guard.rlimit_core),
        ] {
            let v = getrlimit(res).map_or(v, |(_, max)| v.min(max));
            if let Err(e) = setrlimit(res, v, v) {
                let e = std::io::Error::from(e);
                return Err(fail(format!("setrlimit({}, {v}): {e}", res as libc::c_int)));
            }
        }
        // 4. Landlock.
        match self.guard.landlock.enforce() {
            Ok(e) => {
                if !e.fully {
                    say("moat: warning: Landlock is only partially enforced on this kernel (compatibility = best_effort); see `moat doctor`");
                }
            }
            Err(e) => return Err(fail(moat_builder::errors::chain(&e))),
        }
        // 5. seccomp, last: the connect notification, then the deny list
        // (which refuses seccomp() itself).
        crate::launch::connect_notify::hand_over(self.notify).map_err(fail)?;
        crate::launch::seccomp::install(&self.seccomp).map_err(|e| fail(e.to_string()))?;
        let c_args: Vec<CString> = args
            .iter()
            .map(|a| CString::new(a.as_bytes()))
            .collect::<Result<_, _>>()
            .map_err(|_| ExecutorError::InvalidArg)?;
        let err = nix::unistd::execvp(&c_args[0], &c_args).unwrap_err();
        say(&format!("moat: cannot execute {:?}: {err}", args[0]));
        // 127 like a shell's "command not found"; the sandbox init exits with it.
        std::process::exit(if err == nix::errno::Errno::ENOENT { 127 } else { 126 });
    }
}

/// Capability numbers of the names in `DANGEROUS_CAPS`.
fn cap_number(name: &str) -> Option<u32> {
    const NAMES: &[&str] = &[
        "CHOWN",
        "DAC_OVERRIDE",
        "DAC_READ_SEARCH",
        "FOWNER",
        "FSETID",
        "KILL",
        "SETGID",
        "SETUID",
        "SETPCAP",
        "LINUX_IMMUTABLE",
        "NET_BIND_SERVICE",
        "NET_BROADCAST",
        "NET_ADMIN",
        "NET_RAW",
        "IPC_LOCK",
        "IPC_OWNER",
        "SYS_MODULE",
        "SYS_RAWIO",
        "SYS_CHROOT",
        "SYS_PTRACE",
        "SYS_PACCT",
        "SYS_ADMIN",
        "SYS_BOOT",
        "SYS_NICE",
        "SYS_RESOURCE",
        "SYS_TIME",
        "SYS_TTY_CONFIG",
        "MKNOD",
        "LEASE",
        "AUDIT_WRITE",
        "AUDIT_CONTROL",
        "SETFCAP",
        "MAC_OVERRIDE",
        "MAC_ADMIN",
        "SYSLOG",
        "WAKE_ALARM",
        "BLOCK_SUSPEND",
        "AUDIT_READ",
        "PERFMON",
        "BPF",
        "CHECKPOINT_RESTORE",
    ];
    let short = name.strip_prefix("CAP_")?;
    NAMES.iter().position(|n| *n == short).map(|i| i as u32)
}

/// Reads this process's capability sets and refuses any dangerous one.
fn verify_caps_dropped() -> Result<(), String> {
    let status = std::fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("cannot verify capabilities (/proc/self/status: {e})"))?;
    let mask: u64 = DANGEROUS_CAPS.iter().filter_map(|c| cap_number(c)).fold(0, |m, n| m | (1u64 << n));
    for set in ["CapBnd", "CapEff", "CapPrm", "CapAmb", "CapInh"] {
        let line = status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{set}:")))
            .ok_or(format!("cannot verify capabilities: no {set}"))?;
        let v = u64::from_str_radix(line.trim(), 16)
            .map_err(|_| format!("cannot verify capabilities: bad {set} {line:?}"))?;
        if v & mask != 0 {
            let held: Vec<&str> =
                DANGEROUS_CAPS.iter().copied().filter(|c| cap_number(c).is_some_and(|n| v & (1 << n) != 0)).collect();
            return Err(format!("require_cap_drop: {set} still holds {}", held.join(", ")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn every_dangerous_cap_has_a_number() {
        for c in DANGEROUS_CAPS {
            assert!(cap_number(c).is_some(), "{c}");
        }
        assert_eq!(cap_number("CAP_SYS_ADMIN"), Some(21));
        assert_eq!(cap_number("CAP_BPF"), Some(39));
    }
}
