//! The shim's children: each container's supervisor and each exec run in
//! a fresh single-threaded process (the shim itself has threads; the
//! launcher must be forked from a process without them), started as
//! `containerd-shim-moat-v1 __supervise NAME LOG` or `__exec NAME FILE`
//! with the engine's stdio FIFOs as theirs. Guards against a container or
//! an engine client holding the shim up: no FIFO open waits for the other
//! side (stdin is copied into a pipe by a thread, outputs are opened
//! read-write), and against an exec's leftover child holding the engine's
//! client up: an exec's output is copied by the shim, which stops copying
//! 2 s after the exec exits, as runc's shim does.
#![forbid(unsafe_code)]
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio as ProcStdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an exec's output is still copied once the exec has exited
/// (what is already in flight arrives; a daemon it left holds nothing up).
const DRAIN: Duration = Duration::from_secs(2);

/// Set when an exec has exited: its output copiers stop after [`DRAIN`].
#[derive(Debug, Clone, Default)]
pub struct Exited(Arc<AtomicBool>);

impl Exited {
    pub fn set(&self) {
        self.0.store(true, Ordering::Release);
    }
    fn is_set(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}

/// The process's standard streams as the engine names them (FIFO paths;
/// empty: none).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stdio {
    pub stdin: String,
    pub stdout: String,
    pub stderr: String,
    pub terminal: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum ChildError {
    #[error("{what}")]
    Io { what: String, source: std::io::Error },
    #[error("the exec's process: {0}")]
    Process(String),
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> ChildError {
    move |source| ChildError::Io { what, source }
}

/// An output FIFO, opened read-write so the open never waits for the
/// engine's reader (what is written meanwhile waits in the pipe).
fn output(path: &str) -> Result<ProcStdio, ChildError> {
    if path.is_empty() {
        return Ok(ProcStdio::null());
    }
    let f = OpenOptions::new().read(true).write(true).open(path).map_err(io(format!("opening {path}")))?;
    Ok(f.into())
}

/// A process's stdin as the shim feeds it: CloseIO ends it although the
/// engine still holds its FIFO open (containerd's CRI plugin does).
#[derive(Debug, Clone, Default)]
pub struct Stdin {
    /// The pipe's write end; None once closed.
    writer: Arc<Mutex<Option<File>>>,
    closed: Arc<AtomicBool>,
    /// The engine's FIFO, and whether the copier has opened it yet.
    fifo: Arc<str>,
    opened: Arc<AtomicBool>,
}

impl Stdin {
    /// Ends the process's input: it reads end of file once what was
    /// already copied is read. If the copier is mid-write, it closes the
    /// pipe when that write returns; if it still waits in open(2) for the
    /// engine's writer (which may never come), it is let through to end.
    pub fn close(&self) {
        self.closed.store(true, Ordering::Release);
        if let Ok(mut w) = self.writer.try_lock() {
            w.take();
        }
        if !self.fifo.is_empty() && !self.opened.load(Ordering::Acquire) {
            // A writer's open completes the copier's; it then sees `closed`.
            let _ = OpenOptions::new().write(true).custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC).open(&*self.fifo);
        }
    }

    pub fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }
}

/// The input: a pipe fed from the engine's FIFO by a thread, so the open
/// never waits for the engine's writer; it ends at the engine's end of
/// file or at `Stdin::close`.
fn input(path: &str) -> Result<(ProcStdio, Stdin), ChildError> {
    if path.is_empty() {
        return Ok((ProcStdio::null(), Stdin::default()));
    }
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| ChildError::Io { what: "stdin pipe".into(), source: e.into() })?;
    let stdin = Stdin {
        writer: Arc::new(Mutex::new(Some(File::from(w)))),
        closed: Arc::default(),
        fifo: path.into(),
        opened: Arc::default(),
    };
    let (path, feed) = (path.to_string(), stdin.clone());
    std::thread::Builder::new()
        .name("shim-stdin".into())
        .spawn(move || {
            // Blocks until the engine opens its end (or `close` does).
            let fifo = OpenOptions::new().read(true).custom_flags(libc::O_CLOEXEC).open(&path);
            feed.opened.store(true, Ordering::Release);
            if let Ok(fifo) = fifo {
                copy_stdin(fifo, &feed);
            }
            feed.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
        })
        .map_err(io("starting the stdin copier".into()))?;
    Ok((File::from(r).into(), stdin))
}

/// Copies the FIFO into the pipe until end of file or `Stdin::close`.
fn copy_stdin(mut fifo: File, to: &Stdin) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut buf = vec![0u8; 64 << 10];
    while !to.closed.load(Ordering::Acquire) {
        let mut fds = [PollFd::new(fifo.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(100u16)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Err(_) => return,
            Ok(_) => {}
        }
        let n = match fifo.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        let mut w = to.writer.lock().unwrap_or_else(|p| p.into_inner());
        let written = w.as_mut().map(|f| f.write_all(&buf[..n]));
        if !matches!(written, Some(Ok(()))) {
            return;
        }
    }
}

/// An exec's output: a pipe whose other end a thread copies to the
/// engine's FIFO until every writer is gone, or [`DRAIN`] after `exited`.
fn relayed(path: &str, exited: &Exited) -> Result<ProcStdio, ChildError> {
    if path.is_empty() {
        return Ok(ProcStdio::null());
    }
    // Non-blocking: a reader that went away (whose FIFO we also hold, so
    // writes never fail) cannot hold the copier past its deadline.
    let fifo = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(io(format!("opening {path}")))?;
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| ChildError::Io { what: "output pipe".into(), source: e.into() })?;
    let (r, exited) = (File::from(r), exited.clone());
    std::thread::Builder::new()
        .name("shim-output".into())
        .spawn(move || copy_until(r, fifo, &exited))
        .map_err(io("starting an output copier".into()))?;
    Ok(File::from(w).into())
}

fn copy_until(mut from: File, mut to: File, exited: &Exited) {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    let mut buf = vec![0u8; 64 << 10];
    let mut deadline = None;
    let mut over = || exited.is_set() && Instant::now() >= *deadline.get_or_insert_with(|| Instant::now() + DRAIN);
    loop {
        let mut fds = [PollFd::new(from.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(100u16)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => {}
            Err(_) => return,
            Ok(_) => match from.read(&mut buf) {
                Ok(0) => return,
                Ok(n) if !write_until(&mut to, &buf[..n], &mut over) => return,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return,
            },
        }
        if over() {
            return;
        }
    }
}

/// Writes all of `data` to the non-blocking `to`, waiting while it is
/// full until `over`; whether all was written.
fn write_until(to: &mut File, mut data: &[u8], over: &mut impl FnMut() -> bool) -> bool {
    use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
    while !data.is_empty() {
        match to.write(data) {
            Ok(0) => return false,
            Ok(n) => data = &data[n..],
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if over() {
                    return false;
                }
                let mut fds = [PollFd::new(to.as_fd(), PollFlags::POLLOUT)];
                let _ = poll(&mut fds, PollTimeout::from(100u16));
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(_) => return false,
        }
    }
    true
}

fn command(stdio: &Stdio) -> Result<(Command, Stdin), ChildError> {
    let mut cmd = Command::new("/proc/self/exe");
    let (input, stdin) = input(&stdio.stdin)?;
    cmd.stdin(input).stdout(output(&stdio.stdout)?).stderr(output(&stdio.stderr)?);
    Ok((cmd, stdin))
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
/// and its stdin.
pub fn spawn_supervisor(name: &str, bundle: &Path, stdio: &Stdio) -> Result<(u32, UnixStream, Stdin), ChildError> {
    let (ours, theirs) = UnixStream::pair().map_err(io("the ready channel".into()))?;
    let (mut cmd, stdin) = command(stdio)?;
    cmd.arg("__supervise").arg(name).arg(bundle.join("log")).env("MOAT_READY_FD", "3");
    // The shim's death stops the sandbox as a SIGTERM to `moat run` does
    // (the supervisor stops its launcher, which stops the sandbox); what
    // is left, containerd's `delete` removes.
    crate::sys::arm(&mut cmd, libc::SIGTERM, Some(theirs.as_raw_fd()));
    let child = spawn(cmd).map_err(io(format!("starting the supervisor of {name}")))?;
    Ok((child, ours, stdin))
}

/// Starts an exec of `process` in sandbox `name`; returns its pid and its
/// stdin. Its output stops being copied [`DRAIN`] after `exited` is set.
pub fn spawn_exec(
    name: &str,
    process: &oci_spec::runtime::Process,
    stdio: &Stdio,
    exited: &Exited,
) -> Result<(u32, Stdin), ChildError> {
    // The child removes the file once it has read it.
    let path = tempfile_for(process)?
        .into_temp_path()
        .keep()
        .map_err(|e| ChildError::Io { what: "the exec's process file".into(), source: e.error })?;
    let mut cmd = Command::new("/proc/self/exe");
    let (input, stdin) = input(&stdio.stdin)?;
    cmd.stdin(input).stdout(relayed(&stdio.stdout, exited)?).stderr(relayed(&stdio.stderr, exited)?);
    cmd.arg("__exec").arg(name).arg(&path);
    crate::sys::arm(&mut cmd, libc::SIGKILL, None);
    match spawn(cmd) {
        Ok(child) => Ok((child, stdin)),
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
