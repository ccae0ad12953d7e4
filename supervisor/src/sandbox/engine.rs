//! What a runtime engine (containerd, through moat's shim) asks of a
//! sandbox beyond moat's own commands: supervise one whose process and root
//! filesystem the engine described (`oci`), dialling from the engine's
//! network namespace; run an engine's exec in it; freeze and thaw it; list
//! its processes; signal its init. Guards against an engine request acting
//! outside the sandbox: signals go only to the recorded init (start time
//! checked) or to members of the sandbox's own cgroups, and the freezer
//! touched is the sandbox's own.
#![forbid(unsafe_code)]
use super::state::{self, Paths, Status};
use super::{begin, launch_plan, reap, supervise, RunRequest, SandboxError};
use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::Path;

fn io(what: &str) -> impl FnOnce(std::io::Error) -> SandboxError + '_ {
    move |source| SandboxError::Io { what: what.to_string(), source }
}

fn errno(what: &str) -> impl FnOnce(nix::Error) -> SandboxError + '_ {
    move |e| SandboxError::Io { what: what.to_string(), source: e.into() }
}

/// Supervises sandbox `name` (created from an engine's spec) until it
/// exits. Call first thing in a fresh single-threaded process whose stdio
/// is the container's: the launcher inherits it, then this process's own
/// output goes to `own_log` (the engine's shim log) and its stdin is
/// closed. The gateway dials from the spec's network namespace, entered
/// before any thread exists.
pub fn supervise_for_engine(name: &str, ready: Option<File>, own_log: &File) -> Result<i32, SandboxError> {
    let paths = Paths::new(name)?;
    let req: RunRequest =
        serde_json::from_slice(&fs::read(paths.run.join("request.json")).map_err(io("request.json"))?)
            .map_err(|e| SandboxError::Refused(format!("request.json: {e}")))?;
    if let Some(ns) = req.oci.as_ref().and_then(|o| o.dial_netns.as_ref()) {
        let f = File::open(ns).map_err(io("the spec's network namespace"))?;
        nix::sched::setns(f, nix::sched::CloneFlags::CLONE_NEWNET)
            .map_err(errno("joining the spec's network namespace"))?;
    }
    let early = begin(name, &req.policy, req.oci.as_ref().and_then(|o| o.join.as_ref()))?;
    own_output_to(own_log)?;
    supervise(&paths, ready, Some(early))
}

/// Opens the supervisor's own log: `path` (a FIFO a reader holds, or a
/// file), else /dev/null. Never waits for a FIFO's reader.
pub fn open_own_log(path: &Path) -> Result<File, SandboxError> {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    use std::os::unix::fs::OpenOptionsExt;
    let out = fs::OpenOptions::new()
        .append(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .or_else(|_| File::options().write(true).open("/dev/null"))
        .map_err(io("the supervisor's log"))?;
    fcntl(out.as_raw_fd(), FcntlArg::F_SETFL(OFlag::empty())).map_err(errno("the supervisor's log"))?;
    Ok(out)
}

/// Points this process's stdout and stderr at `out` and stdin at /dev/null.
fn own_output_to(out: &File) -> Result<(), SandboxError> {
    let null = File::open("/dev/null").map_err(io("/dev/null"))?;
    nix::unistd::dup2(null.as_raw_fd(), 0).map_err(errno("stdin"))?;
    nix::unistd::dup2(out.as_raw_fd(), 1).map_err(errno("stdout"))?;
    nix::unistd::dup2(out.as_raw_fd(), 2).map_err(errno("stderr"))?;
    Ok(())
}

/// Runs an engine's exec in sandbox `name`: the spec's arguments and
/// environment (PATH is moat's: a spec's copy of it is dropped), as the
/// sandbox's user, in its working directory. Call single-threaded, with
/// the exec's stdio as this process's. Returns the exit code.
pub fn exec_for_engine(name: &str, process: &oci_spec::runtime::Process) -> Result<i32, SandboxError> {
    let paths = Paths::new(name)?;
    let plan = launch_plan(&paths)?;
    let args = process.args().clone().unwrap_or_default();
    if args.is_empty() {
        return Err(SandboxError::Refused("the exec's process has no arguments".into()));
    }
    let env: Vec<String> =
        process.env().clone().unwrap_or_default().into_iter().filter(|kv| !kv.starts_with("PATH=")).collect();
    let tty = process.terminal().unwrap_or(false);
    Ok(crate::launch::exec(&plan, args, &env, tty, true)?)
}

/// Freezes (`true`) or thaws sandbox `name`'s processes.
pub fn freeze(name: &str, frozen: bool) -> Result<(), SandboxError> {
    let dirs = reap::sandbox_cgroups(name);
    let mut done = false;
    for d in &dirs {
        let (v1, v2) = (d.join("freezer.state"), d.join("cgroup.freeze"));
        if v1.exists() {
            fs::write(&v1, if frozen { "FROZEN" } else { "THAWED" }).map_err(io("freezer.state"))?;
            done = true;
        } else if v2.exists() {
            fs::write(&v2, if frozen { "1" } else { "0" }).map_err(io("cgroup.freeze"))?;
            done = true;
        }
    }
    match done {
        true => Ok(()),
        false => Err(SandboxError::Refused(format!("sandbox {name} has no freezer cgroup (is it running?)"))),
    }
}

/// The processes of sandbox `name`'s cgroups (host pids), sorted.
pub fn pids(name: &str) -> Vec<i32> {
    let mut all: Vec<i32> = reap::sandbox_cgroups(name).iter().flat_map(|d| reap::members(d)).collect();
    all.sort_unstable();
    all.dedup();
    all
}

/// Sends `sig` to the init of sandbox `paths`, or with `all` to every
/// process of its cgroups. Ok(false): nothing ran to receive it.
pub fn signal(paths: &Paths, sig: i32, all: bool) -> Result<bool, SandboxError> {
    let rec = state::load(paths)?;
    if all {
        let mut sent = false;
        for pid in pids(&paths.name) {
            sent |= state::ProcId::of(pid).is_some_and(|p| p.signal(sig));
        }
        return Ok(sent);
    }
    if rec.live_status() != Status::Running {
        return Ok(false);
    }
    Ok(rec.init.is_some_and(|p| p.signal(sig)))
}

/// A gated sandbox (containerd's create, then start) says it is created
/// and waits for `start` on its ready channel; anything else ends it.
pub(super) fn wait_for_start(ready: &mut Option<fs::File>) -> Result<(), SandboxError> {
    let r = ready.as_mut().ok_or_else(|| SandboxError::Refused("a gated sandbox needs its ready channel".into()))?;
    std::io::Write::write_all(r, b"created\n").map_err(io("the ready channel"))?;
    let mut line = String::new();
    let mut limited = std::io::Read::take(&mut *r, 64);
    std::io::BufRead::read_line(&mut std::io::BufReader::new(&mut limited), &mut line)
        .map_err(io("the ready channel"))?;
    match line.trim() {
        "start" => Ok(()),
        _ => Err(SandboxError::Refused("the sandbox was deleted before it started".into())),
    }
}
