//! The seccomp deny list (`policies/seccomp.toml`) as data, compiled two ways
//! from the one source: a seccompiler BPF program that our executor installs
//! last before exec, and the OCI `linux.seccomp` section `moat bundle` writes
//! for runc. Guards against the kernel attack surface and escape primitives
//! each entry names (ptrace, mount, user namespaces, io_uring, ...).
#![forbid(unsafe_code)]
use oci_spec::runtime::{LinuxSeccomp, LinuxSeccompAction, LinuxSeccompArgBuilder, LinuxSeccompOperator, LinuxSyscall};
use serde::Deserialize;
use std::collections::BTreeMap;

/// The deny list shipped with moat.
pub const SECCOMP_TOML: &str = include_str!("../../../policies/seccomp.toml");

#[derive(Debug, thiserror::Error)]
pub enum SeccompError {
    #[error("policies/seccomp.toml:{line}:{column}: {message}")]
    Parse { line: usize, column: usize, message: String },
    #[error("policies/seccomp.toml: {0}")]
    Invalid(String),
    #[error("compiling the seccomp filter: {0}")]
    Compile(String),
    #[error("installing the seccomp filter: {0}")]
    Install(String),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: u32,
    deny: Vec<Deny>,
}

/// One denied syscall (optionally only with some argument values).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Deny {
    pub syscall: String,
    pub why: String,
    #[serde(default)]
    pub args: Vec<ArgMatch>,
    #[serde(default)]
    pub errno: Errno,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub enum Errno {
    #[default]
    EPERM,
    ENOSYS,
}

impl Errno {
    pub fn value(self) -> u32 {
        match self {
            Errno::EPERM => libc::EPERM as u32,
            Errno::ENOSYS => libc::ENOSYS as u32,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArgMatch {
    pub index: u8,
    pub op: ArgOp,
    pub value: u64,
    #[serde(default)]
    pub mask: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ArgOp {
    Eq,
    MaskedEq,
}

/// The parsed, validated deny list.
#[derive(Debug, Clone)]
pub struct DenyList {
    pub entries: Vec<Deny>,
}

impl DenyList {
    /// The embedded list (checked by a unit test).
    pub fn builtin() -> Result<DenyList, SeccompError> {
        DenyList::parse(SECCOMP_TOML)
    }

    pub fn parse(text: &str) -> Result<DenyList, SeccompError> {
        let f: File = toml::from_str(text).map_err(|e| {
            let off = e.span().map(|s| s.start).unwrap_or(0);
            let before = &text[..off.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.rsplit('\n').next().map(str::len).unwrap_or(0) + 1;
            SeccompError::Parse { line, column, message: e.message().to_string() }
        })?;
        if f.version != 1 {
            return Err(SeccompError::Invalid(format!("version {} is not supported", f.version)));
        }
        for d in &f.deny {
            if syscall_number(&d.syscall).is_none() && !KNOWN_ABSENT.contains(&d.syscall.as_str()) {
                return Err(SeccompError::Invalid(format!("unknown syscall {:?}", d.syscall)));
            }
            if d.why.trim().is_empty() {
                return Err(SeccompError::Invalid(format!("{}: no `why`", d.syscall)));
            }
            for a in &d.args {
                if a.index > 5 {
                    return Err(SeccompError::Invalid(format!("{}: argument index {} > 5", d.syscall, a.index)));
                }
                if (a.op == ArgOp::MaskedEq) != a.mask.is_some() {
                    return Err(SeccompError::Invalid(format!(
                        "{}: `mask` goes with op = \"masked_eq\" only",
                        d.syscall
                    )));
                }
            }
        }
        Ok(DenyList { entries: f.deny })
    }

    /// Entries this architecture has a syscall number for.
    fn present(&self) -> impl Iterator<Item = (&Deny, i64)> {
        self.entries.iter().filter_map(|d| syscall_number(&d.syscall).map(|n| (d, n)))
    }

    /// Compiles one BPF program per errno (the kernel runs all installed
    /// filters and takes the strictest answer; each syscall is in one only),
    /// in the order they must be installed.
    pub fn compile(&self) -> Result<Vec<seccompiler::BpfProgram>, SeccompError> {
        use seccompiler::{
            SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter, SeccompRule,
        };
        let arch: seccompiler::TargetArch =
            std::env::consts::ARCH.try_into().map_err(|e| SeccompError::Compile(format!("{e:?}")))?;
        let mut by_errno: BTreeMap<u32, BTreeMap<i64, Vec<SeccompRule>>> = BTreeMap::new();
        // Calls denied whatever their arguments: an empty rule list means that
        // to seccompiler, so conditional rules must not be added to them.
        let unconditional: std::collections::BTreeSet<i64> =
            self.present().filter(|(d, _)| d.args.is_empty()).map(|(_, n)| n).collect();
        for (d, nr) in self.present() {
            let rules = by_errno.entry(d.errno.value()).or_default().entry(nr).or_default();
            if unconditional.contains(&nr) {
                continue;
            }
            let conds = d
                .args
                .iter()
                .map(|a| {
                    // Dword: the kernel reads these arguments as 32-bit ints,
                    // so only the low half may decide.
                    let op = match a.op {
                        ArgOp::Eq => SeccompCmpOp::Eq,
                        ArgOp::MaskedEq => SeccompCmpOp::MaskedEq(a.mask.unwrap_or(u64::MAX)),
                    };
                    SeccompCondition::new(a.index, SeccompCmpArgLen::Dword, op, a.value)
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| SeccompError::Compile(e.to_string()))?;
            rules.push(SeccompRule::new(conds).map_err(|e| SeccompError::Compile(e.to_string()))?);
        }
        // The filter that denies seccomp() itself must be installed last, or
        // it would refuse the filters after it.
        let mut ordered: Vec<_> = by_errno.into_iter().collect();
        ordered.sort_by_key(|(_, rules)| rules.contains_key(&libc::SYS_seccomp));
        ordered
            .into_iter()
            .map(|(errno, rules)| {
                let f = SeccompFilter::new(rules, SeccompAction::Allow, SeccompAction::Errno(errno), arch)
                    .map_err(|e| SeccompError::Compile(e.to_string()))?;
                f.try_into().map_err(|e: seccompiler::BackendError| SeccompError::Compile(e.to_string()))
            })
            .collect()
    }

    /// The same list as an OCI runtime-spec seccomp section (for runc).
    pub fn to_oci(&self) -> LinuxSeccomp {
        let syscalls: Vec<LinuxSyscall> = self
            .present()
            .map(|(d, _)| {
                let mut s = LinuxSyscall::default();
                s.set_names(vec![d.syscall.clone()]);
                s.set_action(LinuxSeccompAction::ScmpActErrno);
                s.set_errno_ret(Some(d.errno.value()));
                if !d.args.is_empty() {
                    let args = d
                        .args
                        .iter()
                        .map(|a| {
                            let b = LinuxSeccompArgBuilder::default().index(a.index as usize);
                            let b = match a.op {
                                ArgOp::Eq => b.value(a.value).op(LinuxSeccompOperator::ScmpCmpEq),
                                // OCI/libseccomp: `value` is the mask, `valueTwo` the datum.
                                ArgOp::MaskedEq => b
                                    .value(a.mask.unwrap_or(u64::MAX))
                                    .value_two(a.value)
                                    .op(LinuxSeccompOperator::ScmpCmpMaskedEq),
                            };
                            b.build().expect("every field of a seccomp argument is set")
                        })
                        .collect();
                    s.set_args(Some(args));
                }
                s
            })
            .collect();
        let mut sc = LinuxSeccomp::default();
        sc.set_default_action(LinuxSeccompAction::ScmpActAllow);
        sc.set_syscalls(Some(syscalls));
        sc
    }
}

/// Installs compiled filters on the calling thread (needs no_new_privs or CAP_SYS_ADMIN).
pub fn install(filters: &[seccompiler::BpfProgram]) -> Result<(), SeccompError> {
    for f in filters {
        seccompiler::apply_filter(f).map_err(|e| SeccompError::Install(e.to_string()))?;
    }
    Ok(())
}

/// Syscalls listed in the data that some architectures lack.
const KNOWN_ABSENT: &[&str] = &["chroot"];

/// The syscall number of `name` on this architecture.
pub fn syscall_number(name: &str) -> Option<i64> {
    use libc::*;
    let n = match name {
        "ptrace" => SYS_ptrace,
        "process_vm_readv" => SYS_process_vm_readv,
        "process_vm_writev" => SYS_process_vm_writev,
        "kcmp" => SYS_kcmp,
        "pidfd_getfd" => SYS_pidfd_getfd,
        "pidfd_open" => SYS_pidfd_open,
        "bpf" => SYS_bpf,
        "io_uring_setup" => SYS_io_uring_setup,
        "io_uring_enter" => SYS_io_uring_enter,
        "io_uring_register" => SYS_io_uring_register,
        "userfaultfd" => SYS_userfaultfd,
        "perf_event_open" => SYS_perf_event_open,
        "keyctl" => SYS_keyctl,
        "add_key" => SYS_add_key,
        "request_key" => SYS_request_key,
        "mount" => SYS_mount,
        "umount2" => SYS_umount2,
        "pivot_root" => SYS_pivot_root,
        "chroot" => SYS_chroot,
        "open_tree" => SYS_open_tree,
        "move_mount" => SYS_move_mount,
        "fsopen" => SYS_fsopen,
        "fsconfig" => SYS_fsconfig,
        "fsmount" => SYS_fsmount,
        "fspick" => SYS_fspick,
        "mount_setattr" => SYS_mount_setattr,
        "setns" => SYS_setns,
        "unshare" => SYS_unshare,
        "clone" => SYS_clone,
        "clone3" => SYS_clone3,
        "open_by_handle_at" => SYS_open_by_handle_at,
        "name_to_handle_at" => SYS_name_to_handle_at,
        "kexec_load" => SYS_kexec_load,
        "kexec_file_load" => SYS_kexec_file_load,
        "init_module" => SYS_init_module,
        "finit_module" => SYS_finit_module,
        "delete_module" => SYS_delete_module,
        "reboot" => SYS_reboot,
        "swapon" => SYS_swapon,
        "swapoff" => SYS_swapoff,
        "acct" => SYS_acct,
        "syslog" => SYS_syslog,
        "settimeofday" => SYS_settimeofday,
        "clock_settime" => SYS_clock_settime,
        "clock_adjtime" => SYS_clock_adjtime,
        "quotactl" => SYS_quotactl,
        "socket" => SYS_socket,
        "sendto" => SYS_sendto,
        "sendmsg" => SYS_sendmsg,
        "sendmmsg" => SYS_sendmmsg,
        "seccomp" => SYS_seccomp,
        "prctl" => SYS_prctl,
        "ioctl" => SYS_ioctl,
        "memfd_create" => SYS_memfd_create,
        _ => return None,
    };
    Some(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builtin_list_parses_and_covers_the_issue() {
        let l = DenyList::builtin().unwrap();
        for must in [
            "ptrace",
            "process_vm_readv",
            "process_vm_writev",
            "bpf",
            "io_uring_setup",
            "mount",
            "move_mount",
            "fsopen",
            "umount2",
            "pivot_root",
            "setns",
            "unshare",
            "clone",
            "userfaultfd",
            "perf_event_open",
            "kexec_load",
            "init_module",
            "finit_module",
            "seccomp",
        ] {
            assert!(l.entries.iter().any(|d| d.syscall == must), "{must} missing");
        }
        assert!(!l.entries.iter().any(|d| d.syscall == "memfd_create"), "memfd_create is deliberately allowed");
        assert!(l.entries.iter().all(|d| !d.why.is_empty()));
    }

    #[test]
    fn compiles_to_one_filter_per_errno_and_renders_oci() {
        let l = DenyList::builtin().unwrap();
        let progs = l.compile().unwrap();
        assert_eq!(progs.len(), 2, "EPERM and ENOSYS filters");
        let oci = l.to_oci();
        let n = oci.syscalls().as_ref().unwrap().len();
        assert_eq!(n, l.present().count());
        let unshare =
            oci.syscalls().as_ref().unwrap().iter().find(|s| s.names() == &vec!["unshare".to_string()]).unwrap();
        let a = &unshare.args().as_ref().unwrap()[0];
        assert_eq!((a.value(), a.value_two()), (0x1000_0000, Some(0x1000_0000)));
    }

    #[test]
    fn bad_entries_are_rejected() {
        assert!(DenyList::parse("version = 1\n[[deny]]\nsyscall = \"nosuchcall\"\nwhy = \"x\"\n").is_err());
        assert!(DenyList::parse("version = 1\n[[deny]]\nsyscall = \"ptrace\"\nwhy = \"\"\n").is_err());
        let e = DenyList::parse("version = 1\n[[deny]]\nsyscall = \"ptrace\"\nwhy = \"x\"\nwhat = 1\n").unwrap_err();
        assert!(e.to_string().contains(":5:"), "{e}");
    }
}
