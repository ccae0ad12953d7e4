//! The launcher's process: forked from the supervisor while the supervisor
//! is still single-threaded, it prepares what needs no plan (its private
//! mount namespace, the compiled seccomp filter) and then waits for the
//! launch plan on a pipe. Guards against the libcontainer threading hazard
//! (the fork happens before any thread exists; FIELD-NOTES.md), against a
//! launcher outliving its supervisor (PDEATHSIG, checked against a race),
//! and against descriptors of the supervisor leaking towards the sandbox
//! (the child closes every one it was not given).
//!
//! A fork instead of a re-exec of moat saves the dynamic loader, the
//! relocation of a large binary and the runtime start-up on the sandbox's
//! critical path (2-3 ms on these VMs, BENCHMARKS.md).
#![forbid(unsafe_code)]
use crate::launch::{self as launcher, sys, LaunchError, LaunchPlan};
use nix::sys::signal::{kill, Signal};
use nix::unistd::{ForkResult, Pid};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};

/// The parent's handle on a forked launcher.
#[derive(Debug)]
pub(crate) struct ForkedLauncher {
    pid: i32,
    /// Write end of the plan pipe; dropping it unsent tells the child to exit.
    plan: Option<File>,
    /// Read end of the report pipe (`started PID`, then `exited CODE`).
    report: Option<File>,
    reaped: bool,
}

fn pipe() -> Result<(File, File), LaunchError> {
    // Close-on-exec: programs the supervisor runs (mkfs, cp) must not hold
    // the plan pipe open (the launcher reads the plan to its end).
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
        .map_err(|e| LaunchError::Io { what: "pipe".into(), source: e.into() })?;
    Ok((File::from(r), File::from(w)))
}

impl ForkedLauncher {
    /// Forks the launcher. Must be called before the process starts a thread.
    pub(crate) fn fork() -> Result<ForkedLauncher, LaunchError> {
        let one_thread = launcher::ensure_single_threaded()?;
        let (plan_r, plan_w) = pipe()?;
        let (report_r, report_w) = pipe()?;
        let parent = nix::unistd::getpid().as_raw();
        match sys::fork(one_thread) {
            Err(source) => Err(LaunchError::Io { what: "fork of the launcher".into(), source }),
            Ok(ForkResult::Child) => {
                drop(plan_w);
                drop(report_r);
                child_main(parent, plan_r, report_w)
            }
            Ok(ForkResult::Parent { child }) => {
                Ok(ForkedLauncher { pid: child.as_raw(), plan: Some(plan_w), report: Some(report_r), reaped: false })
            }
        }
    }

    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }

    /// Hands the plan over; the launcher starts the sandbox. Returns the
    /// pipe on which it reports `started PID` (EOF if it failed), then
    /// `exited CODE` once the sandbox's init has exited.
    pub(crate) fn start(&mut self, plan: &LaunchPlan) -> Result<File, LaunchError> {
        let json = serde_json::to_vec(plan).map_err(|e| LaunchError::Refused(format!("launch plan: {e}")))?;
        let mut w = self.plan.take().ok_or_else(|| LaunchError::Refused("the launcher was already started".into()))?;
        w.write_all(&json).map_err(|source| LaunchError::Io { what: "sending the launch plan".into(), source })?;
        drop(w);
        self.report.take().ok_or_else(|| LaunchError::Refused("the launcher's report was already taken".into()))
    }

    /// Waits for the launcher; its exit code (128+N when killed by signal N).
    pub(crate) fn wait(&mut self) -> std::io::Result<i32> {
        let code = sys::wait(self.pid)?;
        self.reaped = true;
        Ok(code)
    }
}

impl Drop for ForkedLauncher {
    /// A launcher never started exits when its plan pipe closes; a started
    /// one still running means the supervisor is failing: it is told to
    /// kill and delete its sandbox. Either way it is reaped.
    fn drop(&mut self) {
        if self.reaped {
            return;
        }
        if self.plan.take().is_none() {
            // Our own child, not yet reaped: its pid cannot be reused.
            let _ = kill(Pid::from_raw(self.pid), Signal::SIGTERM);
        }
        let _ = self.wait();
    }
}

/// The child: never returns.
fn child_main(parent: i32, plan_r: File, report_w: File) -> ! {
    let orphaned =
        nix::sys::prctl::set_pdeathsig(Signal::SIGTERM).is_err() || nix::unistd::getppid().as_raw() != parent;
    if orphaned {
        // Without running the parent's cleanup.
        sys::exit_now(1);
    }
    // A panic must not unwind out of the fork into the caller's frames (the
    // parent's code path, in this copy): it ends the child here.
    let code = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(plan_r, report_w))) {
        Ok(Ok(code)) => code,
        Ok(Err(e)) => {
            // Not eprintln!: a closed stderr must not turn the error into a panic.
            let _ = writeln!(
                std::io::stderr(),
                "{}",
                crate::secrets::redact::redact(&format!("moat: error: {}", moat_builder::errors::chain(&e)))
            );
            2
        }
        Err(_) => 101,
    };
    // stderr is unbuffered and nothing else needs flushing.
    sys::exit_now(code)
}

fn run(plan_r: File, report_w: File) -> Result<i32, LaunchError> {
    let (mut plan_r, report_w) = keep_only(plan_r, report_w)?;
    let prepared = launcher::prepare();
    let mut json = Vec::new();
    plan_r
        .read_to_end(&mut json)
        .map_err(|source| LaunchError::Io { what: "reading the launch plan".into(), source })?;
    drop(plan_r);
    if json.is_empty() {
        // The supervisor gave up before the launch (its error is reported there).
        return Ok(0);
    }
    let plan: LaunchPlan =
        serde_json::from_slice(&json).map_err(|e| LaunchError::Refused(format!("launch plan: {e}")))?;
    if !plan.interactive {
        stdin_from_dev_null()?;
    }
    launcher::launch(prepared?, &plan, Some(report_w))
}

/// Moves the two pipes to fds 3 and 4 and closes every other descriptor
/// above 2 (the supervisor's files, the detached CLI's ready pipe).
fn keep_only(plan: File, report: File) -> Result<(File, File), LaunchError> {
    let (plan, report) = sys::keep_only(OwnedFd::from(plan), OwnedFd::from(report))
        .map_err(|(what, source)| LaunchError::Io { what: what.into(), source })?;
    Ok((File::from(plan), File::from(report)))
}

fn stdin_from_dev_null() -> Result<(), LaunchError> {
    let null = File::open("/dev/null").map_err(|source| LaunchError::Io { what: "/dev/null".into(), source })?;
    // `null` stays owned and is closed on drop; fd 0 gets its own copy.
    if let Err(e) = nix::unistd::dup2(null.as_raw_fd(), 0) {
        return Err(LaunchError::Io { what: "stdin".into(), source: e.into() });
    }
    Ok(())
}
