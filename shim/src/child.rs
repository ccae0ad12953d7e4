//! The shim's children: each container's supervisor and each exec run in
//! a fresh single-threaded process (the shim itself has threads; the
//! launcher must be forked from a process without them), started as
//! `containerd-shim-moat-v1 __supervise NAME LOG` or `__exec NAME FILE`
//! with their stdio wired by `stdio`. Guards against a child that outlives
//! the shim (PDEATHSIG, armed on one long-lived spawner thread) and
//! against the launcher being forked from a process with threads.
#![forbid(unsafe_code)]
pub use crate::stdio::{Exited, Kept, Stdio};
use std::fs::File;
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::sync::{mpsc, Mutex, OnceLock};

#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    #[error("{what}")]
    Io { what: String, source: std::io::Error },
    #[error("the exec's process: {0}")]
    Process(String),
    #[error(transparent)]
    Stdio(#[from] crate::stdio::StdioError),
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> ChildError {
    move |source| ChildError::Io { what, source }
}

/// `/proc/self/exe` with the child's stdio wired (an exec's outputs
/// drained until [`Exited`]); whether it needs a controlling terminal.
fn command(stdio: &Stdio, exited: Option<&Exited>) -> Result<(Command, Kept, bool), ChildError> {
    let w = crate::stdio::wire(stdio, exited)?;
    let mut cmd = Command::new("/proc/self/exe");
    cmd.stdin(w.stdin).stdout(w.stdout).stderr(w.stderr);
    Ok((cmd, w.kept, w.terminal))
}

/// Spawns `cmd` on the one thread that forks the shim's children, which
/// lives as long as the shim: PDEATHSIG fires when the forking thread
/// ends, and the task service's threads come and go. Returns the pid (the
/// child is reaped by the shim's SIGCHLD handler, never waited here).
fn spawn(cmd: Command) -> std::io::Result<u32> {
    type Job = (Command, mpsc::Sender<std::io::Result<u32>>);
    static SPAWNER: OnceLock<Mutex<mpsc::Sender<Job>>> = OnceLock::new();
    let sender = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        let started = std::thread::Builder::new().name("shim-spawner".into()).spawn(move || {
            for (mut cmd, answer) in rx {
                let _ = answer.send(cmd.spawn().map(|c| c.id()));
            }
        });
        if let Err(e) = started {
            tracing::error!(error = %e, "starting the shim's spawner thread");
        }
        Mutex::new(tx)
    });
    let (tx, rx) = mpsc::channel();
    let sent = sender.lock().unwrap_or_else(|p| p.into_inner()).send((cmd, tx));
    sent.map_err(|_| std::io::Error::other("the shim's spawner thread is gone"))?;
    rx.recv().map_err(|_| std::io::Error::other("the shim's spawner thread is gone"))?
}

/// Starts sandbox `name`'s supervisor; returns its pid, the ready channel
/// and what the shim keeps of its stdio.
pub fn spawn_supervisor(name: &str, bundle: &Path, stdio: &Stdio) -> Result<(u32, UnixStream, Kept), ChildError> {
    let (ours, theirs) = UnixStream::pair().map_err(io("the ready channel".into()))?;
    let (mut cmd, kept, terminal) = command(stdio, None)?;
    cmd.arg("__supervise").arg(name).arg(bundle.join("log")).env("MOAT_READY_FD", "3");
    // The shim's death stops the sandbox as a SIGTERM to `moat run` does
    // (the supervisor stops its launcher, which stops the sandbox); what
    // is left, containerd's `delete` removes.
    crate::sys::arm(&mut cmd, libc::SIGTERM, Some(theirs.as_raw_fd()), terminal);
    let child = spawn(cmd).map_err(io(format!("starting the supervisor of {name}")))?;
    Ok((child, ours, kept))
}

/// Starts an exec of `process` in sandbox `name`; returns its pid and what
/// the shim keeps of its stdio. Its output stops being copied 2 s after
/// `exited` is set.
pub fn spawn_exec(
    name: &str,
    process: &oci_spec::runtime::Process,
    stdio: &Stdio,
    exited: &Exited,
) -> Result<(u32, Kept), ChildError> {
    // The child removes the file once it has read it.
    let path = tempfile_for(process)?
        .into_temp_path()
        .keep()
        .map_err(|e| ChildError::Io { what: "the exec's process file".into(), source: e.error })?;
    let (mut cmd, kept, terminal) = command(stdio, Some(exited))?;
    cmd.arg("__exec").arg(name).arg(&path);
    crate::sys::arm(&mut cmd, libc::SIGKILL, None, terminal);
    match spawn(cmd) {
        Ok(child) => Ok((child, kept)),
        Err(e) => {
            let _ = std::fs::remove_file(&path);
            Err(io(format!("starting an exec in {name}"))(e))
        }
    }
}

fn tempfile_for(process: &oci_spec::runtime::Process) -> Result<tempfile::NamedTempFile, ChildError> {
    let json = serde_json::to_vec(process).map_err(|e| ChildError::Process(e.to_string()))?;
    let mut f = tempfile::Builder::new()
        .prefix("moat-exec-")
        .tempfile_in(moat_supervisor::sandbox::state::run_root())
        .map_err(io("the exec's process file".into()))?;
    std::io::Write::write_all(&mut f, &json).map_err(io("the exec's process file".into()))?;
    Ok(f)
}

/// Sends `signal` to child `pid` of this shim.
pub fn signal(pid: u32, signal: i32) -> std::io::Result<()> {
    let sig = nix::sys::signal::Signal::try_from(signal).map_err(std::io::Error::from)?;
    let pid = i32::try_from(pid).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).map_err(std::io::Error::from)
}

/// `__supervise NAME LOG`: the supervisor of one container.
pub fn supervise_main(name: &str, log: &Path) -> i32 {
    use moat_supervisor::sandbox::engine;
    let ready = moat_supervisor::sandbox::ready_pipe_from_parent();
    // The log first: the launcher, forked next, logs there too, not into
    // the container's stderr.
    let log = match engine::open_own_log(log) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("moat shim: sandbox {name}: {}", moat_builder::errors::chain(&e));
            return 125;
        }
    };
    moat_supervisor::logging::init(false, log.try_clone().ok());
    match engine::supervise_for_engine(name, ready, &log) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("moat shim: sandbox {name}: {}", moat_builder::errors::chain(&e));
            125
        }
    }
}

/// The largest exec process file read.
const MAX_PROCESS: u64 = 1 << 20;

/// `__exec NAME FILE`: one exec; FILE (the process JSON) is removed once read.
pub fn exec_main(name: &str, file: &Path) -> i32 {
    let read = (|| -> Result<oci_spec::runtime::Process, String> {
        let mut bytes = Vec::new();
        let f = File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
        let _ = std::fs::remove_file(file);
        f.take(MAX_PROCESS).read_to_end(&mut bytes).map_err(|e| format!("{}: {e}", file.display()))?;
        serde_json::from_slice(&bytes).map_err(|e| format!("the exec's process: {e}"))
    })();
    let result = read.and_then(|p| {
        moat_supervisor::sandbox::engine::exec_for_engine(name, &p).map_err(|e| moat_builder::errors::chain(&e))
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("moat shim: exec in {name}: {e}");
            126
        }
    }
}
