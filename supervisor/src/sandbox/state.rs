//! Where a sandbox's state lives and what it records: the durable record in
//! `$MOAT_HOME/sandboxes/NAME/` (state.json, policy, workspace, log) and the
//! runtime directory `/run/moat/sandboxes/NAME/` (bundle, top layer, launch
//! plan). Guards against acting on the wrong process (pids are checked with
//! their start time, so a recycled pid is never signalled), against name
//! tricks (names are a closed alphabet, never a path), and against torn
//! records: the name is taken only by a whole record (written to a temp
//! file, then linked to `state.json`, which fails if the name exists), so a
//! kill at any moment leaves a whole record or none; a record that does not
//! parse anyway (a disk fault, a hand edit) is listed as corrupt, not hidden.
#![forbid(unsafe_code)]
use serde::{Deserialize, Serialize};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("{path}")]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    BadName(#[from] moat_builder::home::BadSandboxName),
    #[error("no sandbox named {0:?} (see `moat ls`)")]
    Unknown(String),
    #[error("a sandbox named {0:?} already exists (`moat rm {0}` first)")]
    Exists(String),
    #[error("{path}: corrupt state")]
    Corrupt { path: PathBuf, source: serde_json::Error },
    #[error("{path}: corrupt state: larger than {limit} bytes")]
    TooLarge { path: PathBuf, limit: u64 },
}

impl StateError {
    /// Whether the record exists but cannot be read as one (`rm -f` removes it).
    pub fn is_corrupt(&self) -> bool {
        matches!(self, StateError::Corrupt { .. } | StateError::TooLarge { .. })
    }
}

/// A record is a few hundred bytes; anything past this is not one.
pub const MAX_RECORD: u64 = 1 << 20;

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> StateError + '_ {
    move |source| StateError::Io { path: path.to_path_buf(), source }
}

/// Root of runtime-only state (libcontainer's root, per-sandbox bundles).
pub fn run_root() -> PathBuf {
    std::env::var_os("MOAT_RUN_DIR")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/run/moat"))
}

/// Checks a sandbox name with the one rule,
/// [`moat_builder::home::check_sandbox_name`] (snapshots use it too).
pub fn check_name(name: &str) -> Result<(), StateError> {
    Ok(moat_builder::home::check_sandbox_name(name)?)
}

/// The directories of one sandbox.
#[derive(Debug, Clone)]
pub struct Paths {
    pub name: String,
    pub home: PathBuf,
    pub run: PathBuf,
}

impl Paths {
    pub fn new(name: &str) -> Result<Paths, StateError> {
        check_name(name)?;
        Ok(Paths {
            name: name.into(),
            home: moat_builder::home::moat_home().join("sandboxes").join(name),
            run: run_root().join("sandboxes").join(name),
        })
    }
    pub fn state_file(&self) -> PathBuf {
        self.home.join("state.json")
    }
    pub fn log_file(&self) -> PathBuf {
        self.home.join("log")
    }
    /// The gateway's audit log (JSON lines).
    pub fn audit_log(&self) -> PathBuf {
        self.home.join("audit.log")
    }
    /// The audit log to read: a pod container's `audit.log` is a link to
    /// its pod's, whose rotated-away part (`events::rotated_path`) lies
    /// beside the pod's log, not beside the link.
    pub fn audit_log_target(&self) -> PathBuf {
        let link = self.audit_log();
        std::fs::canonicalize(&link).unwrap_or(link)
    }
    /// The gateway's control socket (runtime; exists while the supervisor runs).
    pub fn control_socket(&self) -> PathBuf {
        self.run.join("control.sock")
    }
    pub fn policy_file(&self) -> PathBuf {
        self.home.join("policy.json")
    }
    pub fn default_workspace(&self) -> PathBuf {
        self.home.join("workspace")
    }
    /// The OCI bundle libcontainer reads (`config.json`): the run directory
    /// itself, one directory fewer to create and delete per start.
    pub fn bundle(&self) -> PathBuf {
        self.run.clone()
    }
    pub fn rootfs(&self) -> PathBuf {
        self.run.join("rootfs")
    }
    pub fn top_layer(&self) -> PathBuf {
        self.run.join("top")
    }
    pub fn launch_plan(&self) -> PathBuf {
        self.run.join("launch.json")
    }
    pub fn container_id(&self) -> String {
        format!("moat-{}", self.name)
    }
    pub fn containers_root() -> PathBuf {
        run_root().join("containers")
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Recorded, still starting (its supervisor lives).
    Created,
    Running,
    Exited,
    /// Never written: a "created" record whose supervisor is gone
    /// ([`Record::live_status`]; the reason is [`Record::dead_reason`]).
    Dead,
}

/// A process identified by pid and start time (clock ticks since boot).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcId {
    pub pid: i32,
    pub start: u64,
}

impl ProcId {
    /// Identifies a live process now.
    pub fn of(pid: i32) -> Option<ProcId> {
        start_time(pid).map(|start| ProcId { pid, start })
    }
    /// Whether this very process still exists (not a recycled pid).
    pub fn alive(&self) -> bool {
        start_time(self.pid) == Some(self.start) && !is_zombie(self.pid)
    }
    /// Sends `sig` if the process is still the same one.
    pub fn signal(&self, sig: i32) -> bool {
        // The start-time check makes a recycled pid unlikely to be hit (a
        // pidfd would close the gap fully).
        let Ok(sig) = nix::sys::signal::Signal::try_from(sig) else { return false };
        self.alive() && nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid), sig).is_ok()
    }
}

fn stat_fields(pid: i32) -> Option<Vec<String>> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: split after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    Some(rest.split_whitespace().map(str::to_string).collect())
}
fn start_time(pid: i32) -> Option<u64> {
    // Field 22 overall = index 19 after pid and comm.
    stat_fields(pid)?.get(19)?.parse().ok()
}
fn is_zombie(pid: i32) -> bool {
    stat_fields(pid).and_then(|f| f.first().cloned()).is_some_and(|s| s == "Z" || s == "X")
}
/// Whether `pid` is stopped (SIGSTOP), a zombie, or gone.
pub(crate) fn stopped_or_gone(pid: i32) -> bool {
    stat_fields(pid).and_then(|f| f.first().cloned()).is_none_or(|s| matches!(s.as_str(), "T" | "t" | "Z" | "X"))
}

/// The durable record of a sandbox (`state.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub name: String,
    pub image: String,
    pub image_digest: String,
    pub command: Vec<String>,
    pub workspace: PathBuf,
    /// Whether moat made the workspace (and `rm --workspace` may delete it).
    pub workspace_owned: bool,
    pub created: u64,
    pub status: Status,
    pub detached: bool,
    pub supervisor: Option<ProcId>,
    pub init: Option<ProcId>,
    pub started: Option<u64>,
    pub exit_code: Option<i32>,
}

impl Record {
    /// The status as seen now: a "running" record whose supervisor is gone
    /// is "exited"; a "created" one is "dead" (it never ran).
    pub fn live_status(&self) -> Status {
        let alive = self.supervisor.is_some_and(|s| s.alive());
        match self.status {
            Status::Running if !alive => Status::Exited,
            Status::Created if !alive => Status::Dead,
            s => s,
        }
    }
    /// Why [`Record::live_status`] says "dead".
    pub fn dead_reason(&self) -> Option<&'static str> {
        (self.live_status() == Status::Dead).then_some(match self.supervisor {
            Some(_) => "supervisor exited while starting",
            None => "no supervisor was recorded",
        })
    }
}

pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// Reserves the name by creating its whole record: `rec` goes to a temp
/// file in the sandbox's directory (fsynced if `durable`), which is then
/// hard-linked to `state.json`; the link fails if the name is taken. So
/// the name is held only by a complete record, whatever moment the process
/// is killed at (a temp file may be left: it holds no name, and `rm`
/// removes it with the directory). A workspace kept by `rm` does not hold
/// the name; a new sandbox of that name reuses it.
pub fn reserve(paths: &Paths, rec: &Record, durable: bool) -> Result<(), StateError> {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;
    let dest = paths.state_file();
    let bytes = serde_json::to_vec_pretty(rec).map_err(|source| StateError::Corrupt { path: dest.clone(), source })?;
    fs::create_dir_all(&paths.home).map_err(io_err(&paths.home))?;
    let mut tmp =
        tempfile::Builder::new().prefix(".state.json.").tempfile_in(&paths.home).map_err(io_err(&paths.home))?;
    tmp.as_file().set_permissions(fs::Permissions::from_mode(0o600)).map_err(io_err(tmp.path()))?;
    tmp.write_all(&bytes).map_err(io_err(tmp.path()))?;
    if durable {
        tmp.as_file().sync_all().map_err(io_err(tmp.path()))?;
    }
    match fs::hard_link(tmp.path(), &dest) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Err(StateError::Exists(paths.name.clone())),
        Err(e) => return Err(StateError::Io { path: dest, source: e }),
    }
    drop(tmp); // removes the temp name; the record stays at `state.json`
    if durable {
        moat_builder::fsio::sync_dir(&paths.home);
    }
    Ok(())
}

pub fn save(paths: &Paths, rec: &Record) -> Result<(), StateError> {
    let bytes =
        serde_json::to_vec_pretty(rec).map_err(|source| StateError::Corrupt { path: paths.state_file(), source })?;
    write_atomic(&paths.state_file(), &bytes)
}

/// Reads the record (at most [`MAX_RECORD`] bytes).
pub fn load(paths: &Paths) -> Result<Record, StateError> {
    use std::io::Read;
    let p = paths.state_file();
    let f = match fs::File::open(&p) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(StateError::Unknown(paths.name.clone())),
        Err(e) => return Err(StateError::Io { path: p, source: e }),
    };
    let mut bytes = Vec::new();
    f.take(MAX_RECORD + 1).read_to_end(&mut bytes).map_err(io_err(&p))?;
    if bytes.len() as u64 > MAX_RECORD {
        return Err(StateError::TooLarge { path: p, limit: MAX_RECORD });
    }
    serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt { path: p, source })
}

/// Applies `f` to the record on disk (read, change, atomic rename). Not
/// fsynced: these are status transitions on the start-up path, and status
/// is re-derived from process liveness anyway (`Record::live_status`); the
/// durable facts (name, image, workspace, policy) were fsynced at creation.
pub fn update(paths: &Paths, f: impl FnOnce(&mut Record)) -> Result<Record, StateError> {
    let mut r = load(paths)?;
    f(&mut r);
    let bytes =
        serde_json::to_vec_pretty(&r).map_err(|source| StateError::Corrupt { path: paths.state_file(), source })?;
    write_replace(&paths.state_file(), &bytes, false)?;
    Ok(r)
}

/// Every sandbox with a readable record, sorted by name.
pub fn list() -> Result<Vec<Record>, StateError> {
    Ok(entries()?.into_iter().filter_map(|(_, r)| r.ok()).collect())
}

/// A sandbox's name and its record, or why the record cannot be read.
pub type Entry = (String, Result<Record, StateError>);

/// Every sandbox that has a record, sorted by name: the record, or why it
/// cannot be read (it is still listed: `rm -f` removes it). A directory
/// without `state.json` (a workspace kept by `rm`) is not a sandbox.
pub fn entries() -> Result<Vec<Entry>, StateError> {
    let dir = moat_builder::home::moat_home().join("sandboxes");
    let rd = match fs::read_dir(&dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StateError::Io { path: dir, source: e }),
    };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let Some(name) = e.file_name().to_str().map(str::to_string) else { continue };
        let Ok(paths) = Paths::new(&name) else { continue };
        match load(&paths) {
            Err(StateError::Unknown(_)) => {}
            r => out.push((name, r)),
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// Temp file + fsync + rename in the destination's directory.
pub fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<(), StateError> {
    write_replace(dest, bytes, true)
}

/// Temp file + rename without fsync: for runtime files under the run
/// directory, which mean nothing after a reboot (and /run is a tmpfs).
pub fn write_runtime(dest: &Path, bytes: &[u8]) -> Result<(), StateError> {
    write_replace(dest, bytes, false)
}

fn write_replace(dest: &Path, bytes: &[u8], durable: bool) -> Result<(), StateError> {
    let write = if durable { moat_builder::fsio::write } else { moat_builder::fsio::replace };
    write(dest, bytes, 0o600).map_err(io_err(dest))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_a_closed_alphabet() {
        for ok in ["a", "agent-1", "A.b_c"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "../x", "a/b", ".hidden", "-x", &"x".repeat(64), "a b"] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    fn record(name: &str) -> Record {
        Record {
            name: name.into(),
            image: "probe".into(),
            image_digest: String::new(),
            command: vec![],
            workspace: PathBuf::from("/nowhere"),
            workspace_owned: true,
            created: 1,
            status: Status::Created,
            detached: true,
            supervisor: None,
            init: None,
            started: None,
            exit_code: None,
        }
    }

    fn paths_in(dir: &Path, name: &str) -> Paths {
        Paths { name: name.into(), home: dir.join(name), run: dir.join("run").join(name) }
    }

    #[test]
    fn the_name_is_taken_only_by_a_whole_record() {
        let dir = tempfile::tempdir().unwrap();
        let paths = paths_in(dir.path(), "x");
        let first = record("x");
        reserve(&paths, &first, true).unwrap();
        assert_eq!(load(&paths).unwrap(), first);
        let second = Record { image: "other".into(), ..record("x") };
        assert!(matches!(reserve(&paths, &second, false), Err(StateError::Exists(_))));
        assert_eq!(load(&paths).unwrap(), first, "a refused reserve leaves the record");
        let names: Vec<_> = fs::read_dir(&paths.home).unwrap().flatten().map(|e| e.file_name()).collect();
        assert_eq!(names, ["state.json"], "no temp file is left");
    }

    #[test]
    fn records_that_do_not_parse_or_are_too_large_are_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let paths = paths_in(dir.path(), "x");
        fs::create_dir_all(&paths.home).unwrap();
        for bytes in [Vec::new(), b"{\"name\":".to_vec(), vec![b' '; MAX_RECORD as usize + 1]] {
            fs::write(paths.state_file(), &bytes).unwrap();
            let e = load(&paths).unwrap_err();
            assert!(e.is_corrupt(), "{e}");
        }
        assert!(matches!(load(&paths), Err(StateError::TooLarge { .. })));
        fs::remove_file(paths.state_file()).unwrap();
        assert!(!load(&paths).unwrap_err().is_corrupt(), "a missing record is unknown, not corrupt");
    }

    #[test]
    fn a_starting_record_whose_supervisor_died_is_dead() {
        let me = ProcId::of(std::process::id() as i32).unwrap();
        let gone = ProcId { pid: me.pid, start: me.start + 1 };
        let mut rec = Record { supervisor: Some(me), ..record("x") };
        assert_eq!((rec.live_status(), rec.dead_reason()), (Status::Created, None));
        rec.supervisor = Some(gone);
        assert_eq!((rec.live_status(), rec.dead_reason()), (Status::Dead, Some("supervisor exited while starting")));
        rec.supervisor = None;
        assert_eq!(rec.dead_reason(), Some("no supervisor was recorded"));
        rec.status = Status::Running;
        assert_eq!((rec.live_status(), rec.dead_reason()), (Status::Exited, None));
    }

    #[test]
    fn proc_identity_includes_start_time() {
        let me = ProcId::of(std::process::id() as i32).unwrap();
        assert!(me.alive());
        let recycled = ProcId { pid: me.pid, start: me.start + 1 };
        assert!(!recycled.alive());
    }
}
