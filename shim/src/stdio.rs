//! A container process's stdio as containerd hands it over (FIFO paths,
//! or a terminal) and what the shim keeps of it: stdin copied from the
//! engine's FIFO by a thread (CloseIO ends it), an exec's output copied to
//! the engine's FIFOs until 2 s after the exec exits (as runc's shim), and
//! a terminal whose master the shim holds (ResizePty sets its size; the
//! child gets the slave as its controlling terminal). Guards against a
//! container or an engine client holding the shim up: no FIFO open waits
//! for the other side, no write waits past its deadline, and a daemon an
//! exec left keeps no client open.
#![forbid(unsafe_code)]
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::process::Stdio as ProcStdio;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
#[error("{what}")]
pub struct StdioError {
    what: String,
    source: std::io::Error,
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> StdioError {
    move |source| StdioError { what, source }
}

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
    pub fn is_set(&self) -> bool {
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

/// An output FIFO, opened read-write so the open never waits for the
/// engine's reader (what is written meanwhile waits in the pipe).
fn output(path: &str) -> Result<ProcStdio, StdioError> {
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
fn input(path: &str) -> Result<(ProcStdio, Stdin), StdioError> {
    if path.is_empty() {
        return Ok((ProcStdio::null(), Stdin::default()));
    }
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| StdioError { what: "stdin pipe".into(), source: e.into() })?;
    Ok((File::from(r).into(), feed(path, File::from(w))?))
}

/// Starts the thread that copies the engine's FIFO at `path` into
/// `writer` (a pipe's write end, or a terminal's master).
fn feed(path: &str, writer: File) -> Result<Stdin, StdioError> {
    let stdin = Stdin {
        writer: Arc::new(Mutex::new(Some(writer))),
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
    Ok(stdin)
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
fn relayed(path: &str, exited: &Exited) -> Result<ProcStdio, StdioError> {
    if path.is_empty() {
        return Ok(ProcStdio::null());
    }
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| StdioError { what: "output pipe".into(), source: e.into() })?;
    copy_out(File::from(r), path, exited)?;
    Ok(File::from(w).into())
}

/// Starts the thread that copies `from` to the engine's FIFO at `path`
/// until every writer of `from` is gone, or [`DRAIN`] after `exited`.
fn copy_out(from: File, path: &str, exited: &Exited) -> Result<(), StdioError> {
    // Non-blocking: a reader that went away (whose FIFO we also hold, so
    // writes never fail) cannot hold the copier past its deadline.
    let fifo = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(io(format!("opening {path}")))?;
    let exited = exited.clone();
    std::thread::Builder::new()
        .name("shim-output".into())
        .spawn(move || copy_until(from, fifo, &exited))
        .map_err(io("starting an output copier".into()))?;
    Ok(())
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

/// A terminal the shim made for a child: the shim holds the master.
#[derive(Debug, Clone)]
pub struct Console(Arc<OwnedFd>);

impl Console {
    /// ResizePty: the terminal's new size; its foreground process (the
    /// child's relay) gets SIGWINCH and passes it on to the container's.
    pub fn resize(&self, width: u16, height: u16) -> std::io::Result<()> {
        crate::sys::set_window_size(self.0.as_fd(), width, height)
    }
}

/// What the shim keeps of a child's stdio.
#[derive(Debug, Clone, Default)]
pub struct Kept {
    pub stdin: Stdin,
    pub console: Option<Console>,
}

/// A child's stdio, to hand to its Command, and what the shim keeps.
pub struct Wired {
    pub stdin: ProcStdio,
    pub stdout: ProcStdio,
    pub stderr: ProcStdio,
    /// The child must make its stdin its controlling terminal.
    pub terminal: bool,
    pub kept: Kept,
}

/// Wires `stdio` for a child: with a terminal, a pty whose slave is the
/// child's stdio and whose master the shim copies to and from the FIFOs;
/// else stdin through a pipe, and the outputs straight to the FIFOs (the
/// init) or through pipes the shim drains until [`DRAIN`] after `exited`
/// (an exec: `Some`).
pub fn wire(stdio: &Stdio, exited: Option<&Exited>) -> Result<Wired, StdioError> {
    if stdio.terminal {
        let (master, slave) = crate::sys::open_pty().map_err(io("a terminal".into()))?;
        let dup = |fd: &OwnedFd, what: &str| fd.try_clone().map_err(io(what.to_string()));
        let master = Arc::new(master);
        let stdin = match stdio.stdin.is_empty() {
            true => Stdin::default(),
            false => feed(&stdio.stdin, File::from(dup(&master, "the terminal")?))?,
        };
        if !stdio.stdout.is_empty() {
            copy_out(File::from(dup(&master, "the terminal")?), &stdio.stdout, exited.unwrap_or(&Exited::default()))?;
        }
        return Ok(Wired {
            stdin: dup(&slave, "the terminal")?.into(),
            stdout: dup(&slave, "the terminal")?.into(),
            stderr: slave.into(),
            terminal: true,
            kept: Kept { stdin, console: Some(Console(master)) },
        });
    }
    let (input, stdin) = input(&stdio.stdin)?;
    let (stdout, stderr) = match exited {
        Some(e) => (relayed(&stdio.stdout, e)?, relayed(&stdio.stderr, e)?),
        None => (output(&stdio.stdout)?, output(&stdio.stderr)?),
    };
    Ok(Wired { stdin: input, stdout, stderr, terminal: false, kept: Kept { stdin, console: None } })
}
