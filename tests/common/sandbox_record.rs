//! Records a sandbox in a test's MOAT_HOME without running it, for the
//! scenario tests of commands that read a sandbox's state (snapshots).
//! Guards those tests against depending on a real sandbox where none is
//! needed: the record is what `moat run` writes, through the supervisor's
//! own `state::save`.
use std::fs;
use std::path::{Path, PathBuf};

/// Records a sandbox NAME in `home` (stopped, or running as `running`) with
/// its moat-owned workspace; returns the workspace path.
pub fn sandbox(home: &Path, name: &str, running: Option<moat_supervisor::sandbox::state::ProcId>) -> PathBuf {
    use moat_supervisor::sandbox::state::{self, Paths, Record, Status};
    let paths = Paths { name: name.into(), home: home.join("sandboxes").join(name), run: home.join("run").join(name) };
    fs::create_dir_all(&paths.home).unwrap();
    let ws = paths.default_workspace();
    fs::create_dir_all(&ws).unwrap();
    let rec = Record {
        name: name.into(),
        image: "probe".into(),
        image_digest: String::new(),
        command: vec![],
        workspace: ws.clone(),
        workspace_owned: true,
        created: state::now(),
        status: if running.is_some() { Status::Running } else { Status::Exited },
        detached: true,
        supervisor: running,
        init: running,
        started: None,
        exit_code: None,
    };
    state::save(&paths, &rec).unwrap();
    ws
}
