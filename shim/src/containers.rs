//! The containers one shim serves and their processes (the init, which is
//! a moat supervisor, and execs), in plain types: the task API's meaning
//! without the containerd crate (`api.rs` translates). Guards the engine's
//! view against lies and leaks: a process's exit is recorded once, from the
//! kernel's reaping, and a container is removed only with everything moat
//! made for it (`sandbox::remove`: processes, cgroups, mounts, record).
#![forbid(unsafe_code)]
use crate::bundle;
use crate::child::{self, Stdio};
use crate::names;
use crate::pod;
use moat_supervisor::sandbox::{self, engine, oci, state::Paths};
use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

#[derive(Debug, thiserror::Error)]
pub enum ShimError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Precondition(String),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Sandbox(#[from] sandbox::SandboxError),
    #[error(transparent)]
    State(#[from] sandbox::state::StateError),
    #[error(transparent)]
    Bundle(#[from] bundle::BundleError),
    #[error(transparent)]
    Child(#[from] child::ChildError),
    #[error("{what}")]
    Io { what: String, source: std::io::Error },
}

fn io(what: &str) -> impl FnOnce(std::io::Error) -> ShimError + '_ {
    move |source| ShimError::Io { what: what.to_string(), source }
}

/// A process's state as the engine sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Created,
    Running,
    Paused,
    Stopped,
}

#[derive(Debug, Clone, Copy)]
pub struct Exit {
    pub code: u32,
    pub at: SystemTime,
}

/// What the engine is told of one process.
#[derive(Debug, Clone)]
pub struct ProcState {
    pub pid: u32,
    pub status: Status,
    pub exit: Option<Exit>,
    pub stdio: Stdio,
    pub bundle: PathBuf,
}

/// An exit to report (the task API's TaskExit event).
#[derive(Debug, Clone)]
pub struct ExitReport {
    pub container: String,
    pub exec: String,
    pub pid: u32,
    pub exit: Exit,
}

struct Proc {
    /// The pid the engine knows: the sandbox's init once started, else the child's.
    pid: u32,
    /// Our child (the supervisor, or the exec's launcher), whose exit is this process's.
    child: u32,
    status: Status,
    exit: Option<Exit>,
    stdio: Stdio,
    /// What CloseIO closes.
    kept: child::Kept,
}

struct Exec {
    proc: Proc,
    process: oci_spec::runtime::Process,
    /// Told when the exec exits: its output copiers wind down.
    exited: child::Exited,
}

struct Container {
    /// The sandbox's name (`names::sandbox_name`) and its record's owner.
    name: String,
    owner: String,
    /// The namespace its gateway dials from (a pod's app containers use
    /// their pod sandbox container's).
    dial: Option<PathBuf>,
    bundle: PathBuf,
    /// The supervisor's ready channel: `created`, then `start`, then `ok`.
    ready: Option<UnixStream>,
    init: Proc,
    execs: HashMap<String, Exec>,
}

#[derive(Default)]
struct Inner {
    containers: HashMap<String, Container>,
    /// Exits of children not (yet) known: a child can end before it is
    /// recorded. Bounded: orphans the shim reaps as subreaper land here
    /// too; kept for a short while only, so a reused pid never inherits one.
    unclaimed: VecDeque<(u32, i32, Instant)>,
    /// Containers being created: their ids are taken, and the shim is not
    /// idle (Shutdown must not end it under them).
    creating: HashSet<String>,
}

const UNCLAIMED_MAX: usize = 1024;
/// An exit not claimed within this long was no child the shim recorded
/// (a child is recorded within milliseconds of its start).
const UNCLAIMED_FOR: Duration = Duration::from_secs(30);

/// The shim's containers.
#[derive(Default)]
pub struct Table {
    inner: Mutex<Inner>,
    changed: Condvar,
}

fn code_of(status: i32) -> u32 {
    u32::try_from(status).unwrap_or(255)
}

impl Table {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn with<T>(&self, id: &str, f: impl FnOnce(&mut Container) -> Result<T, ShimError>) -> Result<T, ShimError> {
        let mut g = self.lock();
        let c = g.containers.get_mut(id).ok_or_else(|| ShimError::NotFound(format!("container {id} not found")))?;
        f(c)
    }

    /// Creates container `id` from `bundle`: the sandbox is recorded and
    /// its supervisor prepares everything, then waits for `start`.
    pub fn create(
        &self,
        namespace: &str,
        id: &str,
        bundle_dir: PathBuf,
        mounts: &[oci::RootMount],
        stdio: Stdio,
    ) -> Result<u32, ShimError> {
        {
            let mut g = self.lock();
            if g.containers.contains_key(id) || !g.creating.insert(id.to_string()) {
                return Err(ShimError::Precondition(format!("container {id} already exists")));
            }
        }
        let made = self.create_taken(namespace, id, bundle_dir, mounts, stdio);
        self.lock().creating.remove(id);
        made
    }

    fn create_taken(
        &self,
        namespace: &str,
        id: &str,
        bundle_dir: PathBuf,
        mounts: &[oci::RootMount],
        stdio: Stdio,
    ) -> Result<u32, ShimError> {
        let spec = bundle::spec(&bundle_dir)?;
        let policy = bundle::policy(&spec)?;
        let ports = bundle::publish(&spec, policy.network.gateway_port)?;
        let lowers = oci::lowers(&spec, &bundle_dir, mounts)?;
        let role = pod::role(&spec);
        // An app container's pod: its sandbox container, served by this shim.
        let pod = match &role {
            pod::Role::InPod(sandbox) => {
                let g = self.lock();
                let c = g.containers.get(sandbox);
                c.map(|c| (oci::Join { sandbox: c.name.clone(), owner: c.owner.clone() }, c.dial.clone()))
            }
            _ => None,
        };
        let preferred = pod::preferred_names(&spec, &role, pod.as_ref().map(|p| p.0.sandbox.as_str()));
        let (name, owner) = (names::choose(&preferred, id), names::owner(namespace, id));
        let mut req = oci::request(&name, &owner, &spec, lowers, policy, !stdio.stdin.is_empty(), &ports)?;
        match (&role, pod) {
            (pod::Role::PodSandbox, _) => pod::fit_pod_sandbox(&mut req),
            (pod::Role::InPod(_), Some((join, dial))) => pod::join(&mut req, join, dial),
            // A pod whose sandbox container this shim does not serve: the
            // container has a network and gateway of its own.
            (pod::Role::InPod(sandbox), None) => {
                tracing::warn!(container = id, pod = %sandbox, "the pod's sandbox container is not this shim's: a gateway of its own")
            }
            (pod::Role::Plain, _) => {}
        }
        let dial = req.oci.as_ref().and_then(|o| o.dial_netns.clone());
        let paths = sandbox::create(&req)?;
        let started = child::spawn_supervisor(&name, &bundle_dir, &stdio).map_err(ShimError::from).and_then(
            |(pid, ready, kept)| {
                let line = read_line(&ready).map_err(io("the supervisor's ready channel"))?;
                match line.as_str() {
                    "created" => Ok((pid, ready, kept)),
                    msg => Err(ShimError::Invalid(failure(msg))),
                }
            },
        );
        let (pid, ready, kept) = match started {
            Ok(v) => v,
            Err(e) => {
                let _ = sandbox::remove(&paths, true, true);
                return Err(e);
            }
        };
        let init = Proc { pid, child: pid, status: Status::Created, exit: None, stdio, kept };
        let mut g = self.lock();
        let mut c =
            Container { name, owner, dial, bundle: bundle_dir, ready: Some(ready), init, execs: HashMap::new() };
        claim(&mut g.unclaimed, &mut c.init);
        g.containers.insert(id.to_string(), c);
        Ok(pid)
    }

    /// Starts the init (the sandbox runs) or an exec; returns its pid.
    pub fn start(&self, id: &str, exec: &str) -> Result<u32, ShimError> {
        if !exec.is_empty() {
            let (name, process, stdio, exited) = self.with(id, |c| {
                let e = c.execs.get(exec).ok_or_else(|| ShimError::NotFound(format!("exec {exec} not found")))?;
                if e.proc.status != Status::Created {
                    return Err(ShimError::Precondition(format!("exec {exec} was already started")));
                }
                Ok((c.name.clone(), e.process.clone(), e.proc.stdio.clone(), e.exited.clone()))
            })?;
            let (pid, kept) = child::spawn_exec(&name, &process, &stdio, &exited)?;
            let mut g = self.lock();
            let Inner { containers, unclaimed, .. } = &mut *g;
            let e = containers.get_mut(id).and_then(|c| c.execs.get_mut(exec));
            let e = e.ok_or_else(|| ShimError::NotFound(format!("exec {exec} was deleted")))?;
            e.proc.pid = pid;
            e.proc.child = pid;
            // A CloseIO between the exec's add and its start still counts.
            if e.proc.kept.stdin.is_closed() {
                kept.stdin.close();
            }
            e.proc.kept = kept;
            e.proc.status = Status::Running;
            claim(unclaimed, &mut e.proc);
            if e.proc.exit.is_some() {
                e.exited.set();
            }
            return Ok(pid);
        }
        let (name, ready) = self.with(id, |c| {
            if c.init.status != Status::Created {
                return Err(ShimError::Precondition(format!("container {id} was already started")));
            }
            let r = c.ready.take().ok_or_else(|| ShimError::Precondition(format!("container {id} is starting")))?;
            Ok((c.name.clone(), r))
        })?;
        (&ready).write_all(b"start\n").map_err(io("the supervisor's ready channel"))?;
        let line = read_line(&ready).map_err(io("the supervisor's ready channel"))?;
        if line != "ok" {
            return Err(ShimError::Invalid(failure(&line)));
        }
        let rec = sandbox::state::load(&Paths::new(&name)?)?;
        let pid = rec.init.map(|p| p.pid as u32).unwrap_or_default();
        self.with(id, |c| {
            if c.init.exit.is_none() {
                c.init.status = Status::Running;
                c.init.pid = pid;
            }
            Ok(pid)
        })
    }

    /// Records exec `exec` of container `id`; it runs at `start`.
    pub fn add_exec(
        &self,
        id: &str,
        exec: &str,
        process: oci_spec::runtime::Process,
        stdio: Stdio,
    ) -> Result<(), ShimError> {
        self.with(id, |c| {
            if c.init.status != Status::Running {
                return Err(ShimError::Precondition(format!("container {id} is not running")));
            }
            if c.execs.contains_key(exec) {
                return Err(ShimError::Precondition(format!("exec {exec} already exists")));
            }
            let proc = Proc { pid: 0, child: 0, status: Status::Created, exit: None, stdio, kept: Default::default() };
            c.execs.insert(exec.to_string(), Exec { proc, process, exited: child::Exited::default() });
            Ok(())
        })
    }

    /// ResizePty: the new size of the terminal of the init or an exec.
    pub fn resize(&self, id: &str, exec: &str, width: u16, height: u16) -> Result<(), ShimError> {
        let console = self.with(id, |c| Ok(proc_of(c, exec)?.kept.console.clone()))?;
        let console = console.ok_or_else(|| ShimError::Precondition(format!("{id} {exec} has no terminal")))?;
        console.resize(width, height).map_err(io("setting the terminal's size"))
    }

    /// CloseIO: ends the stdin of the init or an exec (containerd's
    /// clients send it once the task or exec exists).
    pub fn close_stdin(&self, id: &str, exec: &str) -> Result<(), ShimError> {
        self.with(id, |c| {
            proc_of(c, exec)?.kept.stdin.close();
            Ok(())
        })
    }

    pub fn state(&self, id: &str, exec: &str) -> Result<ProcState, ShimError> {
        self.with(id, |c| {
            let p = proc_of(c, exec)?;
            Ok(ProcState {
                pid: p.pid,
                status: p.status,
                exit: p.exit,
                stdio: p.stdio.clone(),
                bundle: c.bundle.clone(),
            })
        })
    }

    /// Sends `signal` to the init (`all`: every process of the sandbox) or
    /// to an exec.
    pub fn kill(&self, id: &str, exec: &str, signal: i32, all: bool) -> Result<(), ShimError> {
        let (name, target, status, paused) = self.with(id, |c| {
            let p = proc_of(c, exec)?;
            Ok((c.name.clone(), p.child, p.status, c.init.status == Status::Paused))
        })?;
        Self::signal(id, exec, &name, (target, status), signal, all)?;
        // A frozen process dies of SIGKILL only once thawed (runc thaws too).
        if paused && signal == libc::SIGKILL {
            engine::freeze(&name, false)?;
            self.with(id, |c| {
                if c.init.status == Status::Paused {
                    c.init.status = Status::Running;
                }
                Ok(())
            })?;
        }
        Ok(())
    }

    fn signal(
        id: &str,
        exec: &str,
        name: &str,
        (target, status): (u32, Status),
        signal: i32,
        all: bool,
    ) -> Result<(), ShimError> {
        let finished = || ShimError::NotFound(format!("process of {id} already finished"));
        match (exec.is_empty(), status) {
            (_, Status::Stopped) => Err(finished()),
            // Not started: the supervisor waits at the gate; ending it ends the sandbox.
            (true, Status::Created) => child::signal(target, signal).map_err(io("signalling the supervisor")),
            (true, _) => match engine::signal(&Paths::new(name)?, signal, all)? {
                true => Ok(()),
                false => Err(finished()),
            },
            (false, Status::Created) => Err(ShimError::Precondition(format!("exec {exec} is not started"))),
            (false, _) => child::signal(target, signal).map_err(io("signalling the exec")),
        }
    }

    /// Blocks until the process exits.
    pub fn wait(&self, id: &str, exec: &str) -> Result<Exit, ShimError> {
        let mut g = self.lock();
        loop {
            let c = g.containers.get(id).ok_or_else(|| ShimError::NotFound(format!("container {id} not found")))?;
            if let Some(exit) = proc_of(c, exec)?.exit {
                return Ok(exit);
            }
            g = self.changed.wait(g).unwrap_or_else(|p| p.into_inner());
        }
    }

    /// Deletes an exec, or the container with everything of its sandbox.
    pub fn delete(&self, id: &str, exec: &str) -> Result<(u32, Exit), ShimError> {
        if !exec.is_empty() {
            return self
                .with(id, |c| {
                    let p = &proc_of(c, exec)?;
                    if p.status == Status::Running {
                        return Err(ShimError::Precondition(format!("exec {exec} is running")));
                    }
                    let (pid, exit) = (p.pid, p.exit.unwrap_or(Exit { code: 0, at: SystemTime::now() }));
                    c.execs.remove(exec);
                    Ok((pid, exit))
                })
                .inspect(|_| self.changed.notify_all());
        }
        let (name, owner, status, child_pid) =
            self.with(id, |c| Ok((c.name.clone(), c.owner.clone(), c.init.status, c.init.child)))?;
        match status {
            Status::Running | Status::Paused => {
                return Err(ShimError::Precondition(format!("container {id} is running")))
            }
            // Never started: the supervisor at its gate ends when told anything but `start`.
            Status::Created => {
                self.with(id, |c| {
                    c.ready = None;
                    Ok(())
                })?;
                if self.wait_timeout(id, Duration::from_secs(10)).is_none() {
                    let _ = child::signal(child_pid, libc::SIGKILL);
                }
            }
            Status::Stopped => {}
        }
        // Removed by hand already (`moat rm`) is removed.
        names::remove_if_owned(&name, &owner)?;
        let mut g = self.lock();
        let c = g.containers.remove(id).ok_or_else(|| ShimError::NotFound(format!("container {id} not found")))?;
        drop(g);
        // Waiters on a deleted process learn it is gone.
        self.changed.notify_all();
        Ok((c.init.pid, c.init.exit.unwrap_or(Exit { code: 137, at: SystemTime::now() })))
    }

    fn wait_timeout(&self, id: &str, limit: Duration) -> Option<Exit> {
        let deadline = std::time::Instant::now() + limit;
        let mut g = self.lock();
        loop {
            if let Some(e) = g.containers.get(id).and_then(|c| c.init.exit) {
                return Some(e);
            }
            let left = deadline.checked_duration_since(std::time::Instant::now())?;
            g = self.changed.wait_timeout(g, left).unwrap_or_else(|p| p.into_inner()).0;
        }
    }

    pub fn pids(&self, id: &str) -> Result<Vec<u32>, ShimError> {
        let name = self.with(id, |c| Ok(c.name.clone()))?;
        Ok(engine::pids(&name).into_iter().filter_map(|p| u32::try_from(p).ok()).collect())
    }

    /// Pauses (`true`) or resumes the container's processes.
    pub fn pause(&self, id: &str, paused: bool) -> Result<(), ShimError> {
        let (name, status) = self.with(id, |c| Ok((c.name.clone(), c.init.status)))?;
        let want = if paused { Status::Running } else { Status::Paused };
        if status != want {
            return Err(ShimError::Precondition(format!("container {id} is {status:?}")));
        }
        engine::freeze(&name, paused)?;
        self.with(id, |c| {
            c.init.status = if paused { Status::Paused } else { Status::Running };
            Ok(())
        })
    }

    /// CPU and memory of the container's cgroup.
    pub fn usage(&self, id: &str) -> Result<sandbox::usage::Usage, ShimError> {
        let pid = self.with(id, |c| Ok(c.init.pid))?;
        Ok(sandbox::usage::of(pid as i32))
    }

    /// The sandbox init's pid (0 before start), for Connect.
    pub fn init_pid(&self, id: &str) -> u32 {
        self.lock().containers.get(id).map(|c| c.init.pid).unwrap_or_default()
    }

    /// No container, none being created: Shutdown may end the shim.
    pub fn is_idle(&self) -> bool {
        let g = self.lock();
        g.containers.is_empty() && g.creating.is_empty()
    }

    /// Records that child `pid` ended with `status`; returns what to report.
    pub fn exited(&self, pid: u32, status: i32) -> Option<ExitReport> {
        let mut g = self.lock();
        let Inner { containers, unclaimed, .. } = &mut *g;
        let exit = Exit { code: code_of(status), at: SystemTime::now() };
        let mut report = None;
        for (id, c) in containers.iter_mut() {
            let procs = std::iter::once((String::new(), &mut c.init, None))
                .chain(c.execs.iter_mut().map(|(k, e)| (k.clone(), &mut e.proc, Some(&e.exited))));
            for (exec, p, output) in procs {
                if p.child == pid && p.child != 0 && p.exit.is_none() {
                    output.inspect(|o| o.set());
                    // Its input has nowhere to go (and a copier waiting for
                    // the engine's writer is let go).
                    p.kept.stdin.close();
                    p.exit = Some(exit);
                    p.status = Status::Stopped;
                    report = Some(ExitReport { container: id.clone(), exec, pid: p.pid, exit });
                }
            }
        }
        if report.is_none() {
            let now = Instant::now();
            while unclaimed.len() >= UNCLAIMED_MAX
                || unclaimed.front().is_some_and(|e| now.duration_since(e.2) > UNCLAIMED_FOR)
            {
                unclaimed.pop_front();
            }
            unclaimed.push_back((pid, status, now));
        }
        drop(g);
        self.changed.notify_all();
        report
    }
}

/// Takes an exit that arrived before its process was recorded.
fn claim(unclaimed: &mut VecDeque<(u32, i32, Instant)>, p: &mut Proc) {
    let fresh = |at: &Instant| at.elapsed() <= UNCLAIMED_FOR;
    if let Some(i) = unclaimed.iter().position(|(pid, _, at)| *pid == p.child && fresh(at)) {
        if let Some((_, status, _)) = unclaimed.remove(i) {
            p.exit = Some(Exit { code: code_of(status), at: SystemTime::now() });
            p.status = Status::Stopped;
        }
    }
}

fn proc_of<'a>(c: &'a Container, exec: &str) -> Result<&'a Proc, ShimError> {
    if exec.is_empty() {
        return Ok(&c.init);
    }
    c.execs.get(exec).map(|e| &e.proc).ok_or_else(|| ShimError::NotFound(format!("exec {exec} not found")))
}

/// One line from the supervisor (at most 64 KiB), without its newline.
fn read_line(s: &UnixStream) -> std::io::Result<String> {
    let mut line = String::new();
    BufReader::new(std::io::Read::take(s, 64 << 10)).read_line(&mut line)?;
    Ok(line.trim_end().to_string())
}

fn failure(line: &str) -> String {
    match line.strip_prefix("error: ") {
        Some(msg) => msg.to_string(),
        None if line.is_empty() => "the sandbox's supervisor exited before the sandbox started".into(),
        None => format!("the sandbox's supervisor said {line:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc_with_child(child: u32) -> Proc {
        let (stdio, kept) = (Stdio::default(), child::Kept::default());
        Proc { pid: child, child, status: Status::Created, exit: None, stdio, kept }
    }

    #[test]
    fn an_exit_is_claimed_while_fresh_and_never_by_a_reused_pid_later() {
        let mut unclaimed = VecDeque::new();
        unclaimed.push_back((41, 0, Instant::now()));
        let mut p = proc_with_child(41);
        claim(&mut unclaimed, &mut p);
        assert_eq!((p.status, p.exit.map(|e| e.code)), (Status::Stopped, Some(0)));
        assert!(unclaimed.is_empty());

        // The same pid, reused long after an exit nobody claimed.
        let old = Instant::now().checked_sub(UNCLAIMED_FOR + Duration::from_secs(1)).expect("up for over 31 s");
        unclaimed.push_back((42, 9, old));
        let mut p = proc_with_child(42);
        claim(&mut unclaimed, &mut p);
        assert_eq!((p.status, p.exit.map(|e| e.code)), (Status::Created, None));
    }

    #[test]
    fn a_table_with_a_create_in_flight_is_not_idle() {
        let t = Table::default();
        assert!(t.is_idle());
        t.lock().creating.insert("c1".into());
        assert!(!t.is_idle());
    }
}
