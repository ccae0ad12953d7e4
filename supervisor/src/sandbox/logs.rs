//! A detached sandbox's log (`$MOAT_HOME/sandboxes/NAME/log`): the sandbox's
//! stdout and stderr reach the supervisor through pipes, and a thread of the
//! supervisor writes them, with its own messages, to the log. Guards the
//! host's disk against a sandbox that floods its output (the file rotates
//! to `log.1` at [`MAX_FILE`]: at most twice that on disk) and the operator
//! against a sandbox that rewrites its log (it holds no descriptor of the
//! file: no truncation, no seek) or forges the supervisor's lines (every
//! record names its source, which only the writer chooses: a sandbox's
//! newline starts a new record of its own stream).
//!
//! The format, one record a line: `SOURCE SEP TEXT`, where SOURCE is
//! `stdout`, `stderr` or `moat` (the supervisor), SEP is `|` when the
//! stream's line ended there and `+` when it was cut (longer than
//! [`MAX_RECORD`], or unfinished for a second, or at the stream's end), and
//! TEXT is the bytes as written, without the newline.
#![forbid(unsafe_code)]
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// The log becomes `log.1` (replacing it) at this size.
pub const MAX_FILE: u64 = 8 << 20;
/// The longest record: a longer line is cut into several.
pub const MAX_RECORD: usize = 16 << 10;
/// An unfinished line is written (cut) after waiting this long for its end.
const PARTIAL_WAIT: Duration = Duration::from_secs(1);
/// After the supervisor's own output ends, how long the sandbox's streams
/// may take to end (they are held by nothing once the sandbox is gone).
const DRAIN_WAIT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{what}")]
    Io { what: String, source: std::io::Error },
}

fn io(what: &str) -> impl FnOnce(std::io::Error) -> LogError + '_ {
    move |source| LogError::Io { what: what.to_string(), source }
}

fn errno(what: &str) -> impl FnOnce(nix::Error) -> LogError + '_ {
    move |e| LogError::Io { what: what.to_string(), source: e.into() }
}

/// Where a record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Stdout,
    Stderr,
    /// The supervisor itself.
    Moat,
}

impl Source {
    fn tag(self) -> &'static [u8] {
        match self {
            Source::Stdout => b"stdout",
            Source::Stderr => b"stderr",
            Source::Moat => b"moat",
        }
    }
}

/// One record of the log file, parsed.
#[derive(Debug, PartialEq, Eq)]
pub struct Record<'a> {
    /// None: not a record (a log written before records existed).
    pub source: Option<Source>,
    /// The stream's line ended here (`|`), or was cut (`+`).
    pub ended: bool,
    pub text: &'a [u8],
}

/// Parses one line of the log file (without its newline).
pub fn parse(line: &[u8]) -> Record<'_> {
    for source in [Source::Stdout, Source::Stderr, Source::Moat] {
        let tag = source.tag();
        if line.len() > tag.len() + 1 && line.starts_with(tag) && line[tag.len() + 1] == b' ' {
            match line[tag.len()] {
                b'|' => return Record { source: Some(source), ended: true, text: &line[tag.len() + 2..] },
                b'+' => return Record { source: Some(source), ended: false, text: &line[tag.len() + 2..] },
                _ => {}
            }
        }
    }
    Record { source: None, ended: true, text: line }
}

/// Appends what `moat logs` shows of one line of the log file: with `raw`,
/// the sandbox's bytes as written (moat's own lines left out); otherwise
/// the record with its source in front, the text not yet escaped (the
/// caller escapes: no newline is in it, so no line can pass for another).
pub fn render(line: &[u8], raw: bool, out: &mut Vec<u8>) {
    let r = parse(line);
    if raw {
        if r.source != Some(Source::Moat) {
            out.extend_from_slice(r.text);
            if r.ended {
                out.push(b'\n');
            }
        }
        return;
    }
    let head: &[u8] = match (r.source, r.ended) {
        (Some(Source::Stdout), true) => b"stdout| ",
        (Some(Source::Stdout), false) => b"stdout+ ",
        (Some(Source::Stderr), true) => b"stderr| ",
        (Some(Source::Stderr), false) => b"stderr+ ",
        (Some(Source::Moat), true) => b"moat  | ",
        (Some(Source::Moat), false) => b"moat  + ",
        (None, _) => b"old   | ",
    };
    out.extend_from_slice(head);
    out.extend_from_slice(r.text);
    out.push(b'\n');
}

/// `log` -> `log.1`.
pub fn rotated_path(path: &Path) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(".1");
    PathBuf::from(s)
}

/// The log file, rotated at `max` bytes.
struct LogFile {
    path: PathBuf,
    file: File,
    size: u64,
    max: u64,
    buf: Vec<u8>,
}

fn open_append(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().create(true).append(true).mode(0o600).open(path)
}

impl LogFile {
    fn open(path: &Path, max: u64) -> std::io::Result<LogFile> {
        let file = open_append(path)?;
        let size = file.metadata()?.len();
        Ok(LogFile { path: path.to_path_buf(), file, size, max, buf: Vec::new() })
    }

    fn record(&mut self, source: Source, ended: bool, text: &[u8]) {
        let len = source.tag().len() + 3 + text.len();
        let held = self.size + self.buf.len() as u64;
        if held > 0 && held + len as u64 > self.max {
            self.rotate();
        }
        self.buf.extend_from_slice(source.tag());
        self.buf.push(if ended { b'|' } else { b'+' });
        self.buf.push(b' ');
        self.buf.extend_from_slice(text);
        self.buf.push(b'\n');
    }

    fn rotate(&mut self) {
        self.flush();
        let moved = std::fs::rename(&self.path, rotated_path(&self.path)).and_then(|()| open_append(&self.path));
        match moved {
            Ok(f) => {
                self.file = f;
                self.size = 0;
                self.record(Source::Moat, true, b"log rotated: the output before this line is in log.1");
            }
            // Keep writing where we are rather than lose the sandbox's output.
            Err(_) => self.size = 0,
        }
    }

    /// Writes the held records; a failed write (disk full) drops them: the
    /// sandbox's output must never wait for the disk.
    fn flush(&mut self) {
        if self.buf.is_empty() {
            return;
        }
        if self.file.write_all(&self.buf).is_ok() {
            self.size += self.buf.len() as u64;
        }
        self.buf.clear();
    }
}

/// One stream read by the writer: its unfinished line and since when.
struct Stream {
    fd: Option<OwnedFd>,
    source: Source,
    pending: Vec<u8>,
    since: Option<Instant>,
}

impl Stream {
    fn new(fd: OwnedFd, source: Source) -> Stream {
        Stream { fd: Some(fd), source, pending: Vec::new(), since: None }
    }

    /// Turns what `pending` holds into records: each finished line, then
    /// pieces of MAX_RECORD; with `all`, the unfinished rest too.
    fn emit(&mut self, log: &mut LogFile, all: bool) {
        let mut start = 0;
        while let Some(nl) = self.pending[start..].iter().position(|b| *b == b'\n') {
            let end = start + nl;
            for piece in self.pending[start..end].chunks(MAX_RECORD) {
                let last = piece.as_ptr_range().end == self.pending[..end].as_ptr_range().end;
                log.record(self.source, last, piece);
            }
            if start == end {
                log.record(self.source, true, b"");
            }
            start = end + 1;
        }
        while self.pending.len() - start >= MAX_RECORD || (all && start < self.pending.len()) {
            let end = (start + MAX_RECORD).min(self.pending.len());
            log.record(self.source, false, &self.pending[start..end]);
            start = end;
        }
        self.pending.drain(..start);
        self.since = match self.pending.is_empty() {
            true => None,
            false => self.since.or(Some(Instant::now())),
        };
    }
}

/// The read ends of the sandbox's stdout and stderr, made before the
/// launcher is forked.
pub(crate) struct SandboxPipes {
    stdout: OwnedFd,
    stderr: OwnedFd,
}

impl SandboxPipes {
    /// Makes the two pipes and puts their write ends on this process's fd 1
    /// and 2, for the launcher forked next to inherit (and hand to the
    /// sandbox): nothing else holds them. Call single-threaded, right
    /// before the fork; [`SandboxPipes::start`] right after it.
    pub(crate) fn install() -> Result<SandboxPipes, LogError> {
        let (out_r, out_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(errno("pipe for stdout"))?;
        let (err_r, err_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(errno("pipe for stderr"))?;
        nix::unistd::dup2(out_w.as_raw_fd(), 1).map_err(errno("stdout to its pipe"))?;
        nix::unistd::dup2(err_w.as_raw_fd(), 2).map_err(errno("stderr to its pipe"))?;
        Ok(SandboxPipes { stdout: out_r, stderr: err_r })
    }

    /// Gives this process's own stdout and stderr a pipe of their own (the
    /// sandbox's pipes are then held by the launcher alone) and starts the
    /// thread writing all three to the log at `path`.
    pub(crate) fn start(self, path: &Path) -> Result<LogWriter, LogError> {
        let log = LogFile::open(path, MAX_FILE).map_err(io("opening the sandbox's log"))?;
        let (own_r, own_w) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(errno("pipe for the supervisor"))?;
        nix::unistd::dup2(own_w.as_raw_fd(), 1).map_err(errno("stdout to the supervisor's pipe"))?;
        nix::unistd::dup2(own_w.as_raw_fd(), 2).map_err(errno("stderr to the supervisor's pipe"))?;
        drop(own_w);
        let streams = vec![
            Stream::new(self.stdout, Source::Stdout),
            Stream::new(self.stderr, Source::Stderr),
            Stream::new(own_r, Source::Moat),
        ];
        let thread = std::thread::Builder::new()
            .name("sandbox-log".into())
            .spawn(move || write_log(streams, log))
            .map_err(io("starting the log writer"))?;
        Ok(LogWriter { thread: Some(thread) })
    }
}

/// The running log writer.
pub(crate) struct LogWriter {
    thread: Option<std::thread::JoinHandle<()>>,
}

impl LogWriter {
    /// Ends the supervisor's own output (fd 1 and 2 become /dev/null) and
    /// waits until the writer has written everything. Call after the
    /// sandbox is gone.
    pub(crate) fn finish(mut self) {
        if let Ok(null) = File::options().write(true).open("/dev/null") {
            let _ = nix::unistd::dup2(null.as_raw_fd(), 1);
            let _ = nix::unistd::dup2(null.as_raw_fd(), 2);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The writer thread: reads the streams until the supervisor's own ends
/// (and the sandbox's, or DRAIN_WAIT after it).
fn write_log(mut streams: Vec<Stream>, mut log: LogFile) {
    let mut buf = vec![0u8; 64 << 10];
    let mut own_ended: Option<Instant> = None;
    loop {
        let open: Vec<usize> = (0..streams.len()).filter(|i| streams[*i].fd.is_some()).collect();
        if open.is_empty() || own_ended.is_some_and(|t| t.elapsed() >= DRAIN_WAIT) {
            break;
        }
        let ready: Vec<bool> = {
            let mut fds: Vec<PollFd> = open
                .iter()
                .filter_map(|i| streams[*i].fd.as_ref().map(|fd| PollFd::new(fd.as_fd(), PollFlags::POLLIN)))
                .collect();
            match nix::poll::poll(&mut fds, PollTimeout::from(250u16)) {
                Err(nix::errno::Errno::EINTR) => continue,
                Err(_) => break,
                Ok(_) => fds.iter().map(|f| f.revents().is_some_and(|r| !r.is_empty())).collect(),
            }
        };
        for (k, i) in open.iter().enumerate() {
            let s = &mut streams[*i];
            if !ready[k] {
                continue;
            }
            let Some(fd) = s.fd.as_ref() else { continue };
            match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
                Ok(0) | Err(nix::errno::Errno::EBADF) => {
                    s.emit(&mut log, true);
                    s.fd = None;
                    if s.source == Source::Moat {
                        own_ended = Some(Instant::now());
                    }
                }
                Ok(n) => {
                    s.pending.extend_from_slice(&buf[..n]);
                    s.emit(&mut log, false);
                }
                Err(nix::errno::Errno::EINTR | nix::errno::Errno::EAGAIN) => {}
                Err(_) => {
                    s.emit(&mut log, true);
                    s.fd = None;
                }
            }
        }
        for s in streams.iter_mut() {
            if s.since.is_some_and(|t| t.elapsed() >= PARTIAL_WAIT) {
                s.emit(&mut log, true);
            }
        }
        log.flush();
    }
    for s in streams.iter_mut() {
        s.emit(&mut log, true);
    }
    log.flush();
}

/// A writer for the supervisor's log lines (tracing's) that keeps each
/// write on one line: a newline inside it (from a field a sandbox chose, a
/// host or a path) is written `\n`, a carriage return `\r`. Only the final
/// newline of a write ends a line, so the log's `moat` records are each one
/// event of the supervisor.
pub struct OneLine<W: Write>(pub W);

impl<W: Write> Write for OneLine<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let body = buf.strip_suffix(b"\n").unwrap_or(buf);
        if !body.iter().any(|b| *b == b'\n' || *b == b'\r') {
            self.0.write_all(buf)?;
            return Ok(buf.len());
        }
        let mut out = Vec::with_capacity(buf.len() + 16);
        for b in body {
            match b {
                b'\n' => out.extend_from_slice(b"\\n"),
                b'\r' => out.extend_from_slice(b"\\r"),
                b => out.push(*b),
            }
        }
        if body.len() < buf.len() {
            out.push(b'\n');
        }
        self.0.write_all(&out)?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.0.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(path: &Path) -> Vec<Vec<u8>> {
        let mut all = std::fs::read(rotated_path(path)).unwrap_or_default();
        all.extend(std::fs::read(path).unwrap());
        all.split(|b| *b == b'\n').filter(|l| !l.is_empty()).map(<[u8]>::to_vec).collect()
    }

    #[test]
    fn a_stream_becomes_records_that_name_it_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        let mut log = LogFile::open(&p, 1 << 20).unwrap();
        let (r, _w) = nix::unistd::pipe().unwrap();
        let mut s = Stream::new(r, Source::Stdout);
        let long = vec![b'x'; MAX_RECORD + 10];
        let mut written = b"one\n\nmoat| forged\x1b[2K\r\n".to_vec();
        written.extend_from_slice(&long);
        written.extend_from_slice(b"\ntail");
        s.pending.extend_from_slice(&written);
        s.emit(&mut log, false);
        assert_eq!(s.pending, b"tail", "an unfinished line waits");
        s.emit(&mut log, true);
        log.flush();
        let got = lines(&p);
        assert_eq!(got[0], b"stdout| one");
        assert_eq!(got[1], b"stdout| ");
        assert_eq!(got[2], b"stdout| moat| forged\x1b[2K\r");
        assert!(got[3].starts_with(b"stdout+ xxx") && got[4].starts_with(b"stdout| xxx"));
        assert_eq!(got[5], b"stdout+ tail");
        let mut raw = Vec::new();
        for l in &got {
            assert_eq!(parse(l).source, Some(Source::Stdout));
            render(l, true, &mut raw);
        }
        assert_eq!(raw, written, "--raw gives back the bytes as written");
        let mut shown = Vec::new();
        render(&got[2], false, &mut shown);
        assert_eq!(shown, b"stdout| moat| forged\x1b[2K\r\n");
        let mut own = Vec::new();
        render(b"moat| sandbox exited", true, &mut own);
        assert!(own.is_empty(), "--raw leaves moat's lines out");
        assert_eq!(parse(b"moat|x").source, None, "not a record without the space");
    }

    #[test]
    fn the_file_rotates_at_its_cap() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("log");
        let mut log = LogFile::open(&p, 4096).unwrap();
        for i in 0..1000 {
            log.record(Source::Stderr, true, format!("line {i}").as_bytes());
            if i % 7 == 0 {
                log.flush();
            }
        }
        log.flush();
        let (cur, old) = (std::fs::metadata(&p).unwrap().len(), std::fs::metadata(rotated_path(&p)).unwrap().len());
        assert!(cur <= 4096 && old <= 4096, "{cur} {old}");
        assert_eq!(lines(&p).last().unwrap(), b"stderr| line 999");
    }

    #[test]
    fn one_line_escapes_newlines_inside_a_write() {
        let mut w = OneLine(Vec::new());
        w.write_all(b"WARN host=a\nmoat| forged\rx\n").unwrap();
        w.write_all(b"plain\n").unwrap();
        assert_eq!(w.0, b"WARN host=a\\nmoat| forged\\rx\nplain\n");
    }
}
