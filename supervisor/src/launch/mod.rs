//! The launcher: the only code that calls libcontainer. It runs in a
//! single-threaded process (forked by the supervisor before its first
//! thread, see `launch::fork`, or the `moat exec` CLI before any thread
//! starts), because libcontainer clones and then runs
//! ordinary Rust in the child: a lock held by another thread at that moment
//! deadlocks the child (FIELD-NOTES.md). Guards against that hazard by
//! refusing to run with more than one thread, and against leftovers: the
//! rootfs overlay exists only in the launcher's private mount namespace, and
//! the container (cgroups, state) is deleted when its init exits or when the
//! supervisor dies (PDEATHSIG -> SIGTERM -> kill and delete).
pub(crate) mod connect_notify;
pub(crate) mod executor;
pub(crate) mod fork;
pub(crate) mod landlock;
pub(crate) mod rootfs;
pub mod seccomp;
mod sys;
pub(crate) use sys::receive_fd;
pub(crate) mod tty;
use crate::launch::executor::{GuardPlan, MoatExecutor};
use crate::launch::seccomp::DenyList;
use crate::launch::tty::ConsoleSocket;
use libcontainer::container::builder::ContainerBuilder;
use libcontainer::container::Container;
use libcontainer::syscall::syscall::SyscallType;
use nix::poll::{ppoll, PollFd, PollFlags};
use nix::sys::signal::{kill, sigprocmask, SigSet, SigmaskHow, Signal};
use nix::sys::time::TimeSpec;
use nix::unistd::{getppid, Pid};
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    #[error("the launcher must run single-threaded (found {0} threads): libcontainer's clone is unsound otherwise")]
    Threads(usize),
    #[error(transparent)]
    Rootfs(#[from] rootfs::RootfsError),
    #[error(transparent)]
    Seccomp(#[from] crate::launch::seccomp::SeccompError),
    #[error("libcontainer")]
    Container(#[from] libcontainer::error::LibcontainerError),
    #[error("{what}")]
    Io { what: String, source: std::io::Error },
    #[error("sandbox {0} is not running")]
    NotRunning(String),
    #[error("the supervisor exited before the launcher started")]
    Orphaned,
    #[error("{0}")]
    Refused(String),
}

/// Everything the launcher needs, written by the supervisor as `launch.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LaunchPlan {
    pub container_id: String,
    /// libcontainer's state root (`/run/moat/containers`).
    pub state_root: PathBuf,
    /// Bundle directory holding config.json.
    pub bundle: PathBuf,
    /// Where the overlay is mounted (the spec's root.path).
    pub rootfs: PathBuf,
    /// The image's layer directories, topmost first.
    pub lowers: Vec<PathBuf>,
    /// Where the launcher mounts the per-sandbox top layer (a tmpfs in its
    /// own mount namespace: nothing of it is on disk) and what goes in it.
    pub top_layer: PathBuf,
    pub top: TopLayer,
    pub cache_dir: PathBuf,
    pub guard: GuardPlan,
    /// The supervisor's pid: if our parent is no longer it, it died before we armed PDEATHSIG.
    pub supervisor_pid: u32,
    /// The sandbox's runtime directory: removed by the launcher itself when
    /// the supervisor died (nobody else is left to do it).
    pub run_dir: PathBuf,
    /// Give the sandbox a pseudo-terminal (`-t`) and relay it; keep stdin (`-i`).
    pub tty: bool,
    pub interactive: bool,
    /// uid/gid/cwd for `moat exec`.
    pub uid: u32,
    pub gid: u32,
    pub cwd: String,
    /// The workspace, mounted by the launcher with its owner mapped to the
    /// sandbox's uid (absent: the spec binds the host directory as it is).
    #[serde(default)]
    pub workspace: Option<WorkspaceMap>,
}

/// An idmapped workspace: `source` on the host, mounted at `staging` (the
/// spec's bind source) with host ids `owner` shown as `sandbox` inside.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WorkspaceMap {
    pub source: PathBuf,
    pub staging: PathBuf,
    /// (uid, gid) owning the workspace on disk.
    pub owner: (u32, u32),
    /// (uid, gid) the sandbox runs as on the host.
    pub sandbox: (u32, u32),
}

/// The contents of the per-sandbox top layer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TopLayer {
    /// The workspace's path inside the sandbox (a mount point).
    pub workspace: String,
    /// The sandbox's /etc/hosts.
    pub hosts: String,
    /// `/etc/passwd` and `/etc/group` naming the sandbox's host uid (absent:
    /// the image's own).
    #[serde(default)]
    pub passwd: Option<String>,
    #[serde(default)]
    pub group: Option<String>,
    /// The gateway's CA certificate, trusted inside the sandbox.
    pub ca_pem: String,
}

pub(crate) fn ensure_single_threaded() -> Result<sys::OneThread, LaunchError> {
    sys::one_thread().map_err(LaunchError::Threads)
}

fn executor(plan: &LaunchPlan, notify: i32) -> Result<MoatExecutor, LaunchError> {
    Ok(MoatExecutor { guard: plan.guard.clone(), seccomp: DenyList::builtin()?.compile()?, notify })
}

/// What the launcher sets up before it knows the plan, while the
/// supervisor resolves the image: its private mount namespace, the
/// compiled seccomp filter and the helper that makes the user namespace of
/// the workspace's idmapped mount (a fork, kept off the start's path).
pub struct Prepared {
    seccomp: Vec<seccompiler::BpfProgram>,
    /// The user namespace helper of the workspace's idmapped mount.
    userns: std::io::Result<sys::UsernsHelper>,
}

/// Enters a private mount namespace (the rootfs overlay will exist only
/// there), compiles the seccomp deny list and forks the user namespace
/// helper (its failure is reported when the workspace is mounted).
/// Single-threaded callers only.
pub fn prepare() -> Result<Prepared, LaunchError> {
    let one = ensure_single_threaded()?;
    rootfs::private_mount_namespace()
        .map_err(|source| LaunchError::Io { what: "private mount namespace".into(), source })?;
    let sandboxes = moat_builder::home::moat_home().join("sandboxes");
    rootfs::drop_mounts_below(&sandboxes)
        .map_err(|source| LaunchError::Io { what: "other sandboxes' workspace mounts".into(), source })?;
    let seccomp = DenyList::builtin()?.compile()?;
    Ok(Prepared { seccomp, userns: sys::userns_helper(one) })
}

/// Starts the sandbox described by `plan`, reports `started PID` on
/// `report`, waits for its init, reports `exited CODE` (its workspace
/// mount let go) and removes the container. Returns the
/// init's exit code (128+N when killed by signal N).
pub fn launch(prepared: Prepared, plan: &LaunchPlan, mut report: Option<std::fs::File>) -> Result<i32, LaunchError> {
    ensure_single_threaded()?;
    if getppid().as_raw() as u32 != plan.supervisor_pid {
        return Err(LaunchError::Orphaned);
    }
    sys::catch_stop_signals();
    rootfs::mount_top_layer(&plan.top_layer)?;
    let accounts: Vec<(&str, &str)> = [("passwd", &plan.top.passwd), ("group", &plan.top.group)]
        .into_iter()
        .filter_map(|(n, t)| Some((n, t.as_deref()?)))
        .collect();
    rootfs::write_top_layer(&plan.top_layer, &plan.top.workspace, &plan.top.hosts, &accounts)?;
    let Prepared { seccomp, userns } = prepared;
    if let Some(map) = &plan.workspace {
        rootfs::mount_workspace(map, plan.supervisor_pid, userns)?;
    }
    rootfs::write_trust(&plan.top_layer, &plan.lowers, &plan.top.ca_pem)?;
    let lowers: Vec<PathBuf> = std::iter::once(plan.top_layer.clone()).chain(plan.lowers.iter().cloned()).collect();
    rootfs::mount_overlay(&plan.rootfs, &lowers, &plan.cache_dir)?;
    // Held until the container is built: its init inherits it and hands the
    // connect listener over on it.
    let notify = connect_notify::connect(&plan.run_dir)
        .map_err(|source| LaunchError::Io { what: "connecting to the supervisor's notify.sock".into(), source })?;
    let exec = MoatExecutor { guard: plan.guard.clone(), seccomp, notify: notify.as_raw_fd() };
    let console = match plan.tty {
        true => Some(
            ConsoleSocket::bind(&plan.run_dir.join("console.sock"))
                .map_err(|source| LaunchError::Io { what: "console socket".into(), source })?,
        ),
        false => None,
    };
    // libcontainer wants `detach` exactly when a console socket is given.
    let built = ContainerBuilder::new(plan.container_id.clone(), SyscallType::Linux)
        .with_executor(exec)
        .with_console_socket(console.as_ref().map(|c| c.path.clone()))
        .with_root_path(&plan.state_root)
        .and_then(|b| b.as_init(&plan.bundle).with_systemd(false).with_detach(console.is_some()).build());
    let mut container = match built {
        Ok(c) => c,
        Err(e) => {
            remove_container(plan);
            return Err(e.into());
        }
    };
    // The init holds its own copy of the notify connection since `build`.
    drop(notify);
    if let Err(e) = container.start() {
        let _ = container.delete(true);
        return Err(e.into());
    }
    let Some(pid) = container.pid() else {
        let _ = container.delete(true);
        return Err(LaunchError::NotRunning(plan.container_id.clone()));
    };
    if let Some(r) = report.as_mut() {
        let _ = writeln!(r, "started {pid}");
    }
    let code = match &console {
        Some(c) => match c.receive_master() {
            Ok(master) => {
                let signalled = || sys::stop_signal() != 0;
                let mut kill = || kill_all(&mut container, pid.as_raw());
                tty::relay(master, pid.as_raw(), plan.interactive, &signalled, &mut kill)
            }
            Err(e) => {
                tracing::error!(error = %moat_builder::errors::chain(&e), "receiving the sandbox's terminal");
                kill_all(&mut container, pid.as_raw());
                wait_for(pid.as_raw(), &mut container)
            }
        },
        None => wait_for(pid.as_raw(), &mut container),
    };
    // The supervisor unmounts the workspace on `exited` while the container
    // is removed: this namespace's mount of it goes first.
    if let Some(m) = &plan.workspace {
        rootfs::unmount(&m.staging);
    }
    if let Some(r) = report.as_mut() {
        let _ = writeln!(r, "exited {code}");
    }
    drop(report);
    if let Err(e) = container.delete(true) {
        tracing::warn!(container = %plan.container_id, error = %moat_builder::errors::chain(&e), "removing the finished container");
    }
    if getppid().as_raw() as u32 != plan.supervisor_pid {
        rootfs::unmount(&plan.rootfs);
        rootfs::unmount(&plan.top_layer);
        if let Some(m) = &plan.workspace {
            rootfs::unmount(&m.staging);
        }
        let _ = std::fs::remove_dir_all(&plan.run_dir);
    }
    Ok(code)
}

/// Waits for the init; on SIGTERM/SIGINT/SIGHUP kills the whole sandbox.
/// The signals stay blocked except inside `ppoll`, so one that arrives at
/// any moment is seen (a plain blocking waitpid could miss it and wait
/// forever on a sandbox that nobody will stop).
fn wait_for(pid: i32, container: &mut Container) -> i32 {
    let mut set = SigSet::empty();
    for s in [Signal::SIGTERM, Signal::SIGINT, Signal::SIGHUP] {
        set.add(s);
    }
    let mut unblocked = SigSet::empty();
    let _ = sigprocmask(SigmaskHow::SIG_BLOCK, Some(&set), Some(&mut unblocked));
    let pidfd = sys::pidfd_open(pid).ok();
    let mut killed = false;
    let code = loop {
        if sys::stop_signal() != 0 && !killed {
            killed = true;
            kill_all(container, pid);
        }
        match sys::try_wait(pid) {
            Ok(Some(code)) => break code,
            Ok(None) => {}
            Err(e) => {
                tracing::error!(error = %e, "waiting for the sandbox init");
                break 255;
            }
        }
        // Readable when the init exits; without a pidfd (old kernel), re-check every 50 ms.
        let _ = match &pidfd {
            Some(fd) => ppoll(&mut [PollFd::new(fd.as_fd(), PollFlags::POLLIN)], None, Some(unblocked)),
            None => ppoll(&mut [], Some(TimeSpec::new(0, 50_000_000)), Some(unblocked)),
        };
    };
    drop(pidfd);
    let _ = sigprocmask(SigmaskHow::SIG_SETMASK, Some(&unblocked), None);
    code
}

/// Kills every process of the sandbox (the supervisor asked, or died).
fn kill_all(container: &mut Container, pid: i32) {
    tracing::info!(signal = sys::stop_signal(), "supervisor signalled: killing the sandbox");
    if container.kill(Signal::SIGKILL, true).is_err() {
        // pid is our child (the sandbox init).
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// Deletes a half-created container's state, if any.
fn remove_container(plan: &LaunchPlan) {
    if let Ok(mut c) = Container::load(plan.state_root.join(&plan.container_id)) {
        let _ = c.delete(true);
    }
}

/// Runs `args` inside the running sandbox of `plan` (same namespaces, cgroup,
/// user, capabilities, rlimits, Landlock, seccomp) and waits for it. The
/// process is the sandbox spec's own process with `args`, `env` (KEY=VALUE
/// overrides, PATH excluded) and `tty` swapped in. Call before any thread starts.
pub fn exec(
    plan: &LaunchPlan,
    args: Vec<String>,
    env: &[String],
    tty: bool,
    interactive: bool,
) -> Result<i32, LaunchError> {
    ensure_single_threaded()?;
    let io = |what: &str| {
        let what = what.to_string();
        move |source| LaunchError::Io { what, source }
    };
    let spec = oci_spec::runtime::Spec::load(plan.bundle.join("config.json"))
        .map_err(|e| LaunchError::Refused(format!("the sandbox's config.json: {e}")))?;
    let mut process = spec.process().clone().unwrap_or_default();
    let mut vars: Vec<String> = process.env().clone().unwrap_or_default();
    for kv in env {
        let Some((k, _)) = kv.split_once('=') else { continue };
        if k == "PATH" {
            return Err(LaunchError::Refused("PATH is fixed by moat to the system directories".into()));
        }
        vars.retain(|v| v.split_once('=').map(|(vk, _)| vk) != Some(k));
        vars.push(kv.clone());
    }
    process.set_args(Some(args)).set_env(Some(vars)).set_terminal(Some(tty));
    let process_file = plan.run_dir.join(format!("exec-{}.json", std::process::id()));
    let json = serde_json::to_vec(&process).map_err(|e| LaunchError::Refused(format!("process.json: {e}")))?;
    std::fs::write(&process_file, json).map_err(io("writing process.json"))?;
    let console = match tty {
        true => Some(
            ConsoleSocket::bind(&plan.run_dir.join(format!("exec-{}.sock", std::process::id())))
                .map_err(io("console socket"))?,
        ),
        false => None,
    };
    let notify = connect_notify::connect(&plan.run_dir).map_err(io("connecting to the supervisor's notify.sock"))?;
    let built = ContainerBuilder::new(plan.container_id.clone(), SyscallType::Linux)
        .with_executor(executor(plan, notify.as_raw_fd())?)
        .with_console_socket(console.as_ref().map(|c| c.path.clone()))
        .with_root_path(&plan.state_root)
        .and_then(|b| b.as_tenant().with_process(Some(&process_file)).with_detach(console.is_some()).build());
    let _ = std::fs::remove_file(&process_file);
    // The exec'd process holds its own copy of the notify connection.
    drop(notify);
    let pid = built?;
    // A signal for the exec (an engine's kill of it) is the process's.
    sys::forward_signals_to(pid.as_raw());
    let code = match &console {
        Some(c) => c
            .receive_master()
            .map(|master| tty::relay(master, pid.as_raw(), interactive, &|| false, &mut || {}))
            .map_err(io("receiving the terminal")),
        None => sys::wait(pid.as_raw())
            .map_err(|source| LaunchError::Io { what: "waiting for the exec'd process".into(), source }),
    };
    sys::stop_forwarding_signals();
    code
}

/// Deletes what a crashed launcher may have left of a container (its
/// cgroups and libcontainer state), killing any process still in it.
pub fn remove_leftovers(state_root: &std::path::Path, container_id: &str) {
    let dir = state_root.join(container_id);
    if !dir.exists() {
        return;
    }
    match Container::load(dir.clone()) {
        Ok(mut c) => {
            let _ = c.kill(nix::sys::signal::Signal::SIGKILL, true);
            if let Err(e) = c.delete(true) {
                tracing::warn!(container = container_id, error = %moat_builder::errors::chain(&e), "removing leftover container state");
            }
        }
        Err(_) => {
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}
