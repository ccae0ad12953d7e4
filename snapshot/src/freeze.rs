//! Freezes a running sandbox's cgroup for the moment of a backup so the copy
//! is consistent (no file torn by a concurrent write), and always thaws it
//! again (on drop, so also on error or panic). The cgroup is the one the
//! launcher asks for: `/moat/NAME` under the v2 root or the v1 freezer.
#![forbid(unsafe_code)]
use crate::SnapshotError;
use std::fs;
use std::path::PathBuf;
use std::time::{Duration, Instant};

/// A frozen cgroup; thawed when dropped.
pub struct Frozen {
    control: PathBuf,
    v2: bool,
}

fn err(path: &std::path::Path, reason: impl Into<String>) -> SnapshotError {
    SnapshotError::Freeze { path: path.to_path_buf(), reason: reason.into() }
}

/// The freezer control file of sandbox `name`, if its cgroup exists.
pub(crate) fn control_file(name: &str) -> Option<(PathBuf, bool)> {
    let v2 = PathBuf::from(format!("/sys/fs/cgroup/moat/{name}/cgroup.freeze"));
    if v2.exists() {
        return Some((v2, true));
    }
    let v1 = PathBuf::from(format!("/sys/fs/cgroup/freezer/moat/{name}/freezer.state"));
    v1.exists().then_some((v1, false))
}

/// Freezes sandbox `name` and waits until every task is frozen.
pub fn freeze(name: &str) -> Result<Frozen, SnapshotError> {
    moat_builder::home::check_sandbox_name(name)?;
    let (control, v2) = control_file(name)
        .ok_or_else(|| err(&PathBuf::from(format!("/sys/fs/cgroup/moat/{name}")), "no cgroup for this sandbox"))?;
    fs::write(&control, if v2 { "1" } else { "FROZEN" }).map_err(|e| err(&control, e.to_string()))?;
    let frozen = Frozen { control, v2 };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if frozen.is_frozen() {
            tracing::info!(event = "snapshot_freeze", sandbox = name, "sandbox frozen for backup");
            return Ok(frozen);
        }
        if Instant::now() > deadline {
            return Err(err(&frozen.control, "tasks did not freeze within 10 s"));
            // drop thaws
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl Frozen {
    pub(crate) fn is_frozen(&self) -> bool {
        if self.v2 {
            let events = self.control.with_file_name("cgroup.events");
            fs::read_to_string(events).is_ok_and(|s| s.lines().any(|l| l.trim() == "frozen 1"))
        } else {
            fs::read_to_string(&self.control).is_ok_and(|s| s.trim() == "FROZEN")
        }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let r = fs::write(&self.control, if self.v2 { "0" } else { "THAWED" });
        if let Err(e) = r {
            tracing::error!(event = "snapshot_thaw_failed", path = %self.control.display(), error = %e);
        }
    }
}
