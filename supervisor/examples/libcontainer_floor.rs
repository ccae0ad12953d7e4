//! The floor under `moat run`: youki's libcontainer alone creating, starting,
//! waiting for and deleting a container from an OCI bundle with its default
//! executor — none of moat's own work (network namespace, gateways, CA,
//! sandbox record, Landlock, seccomp). `tests/bench/run.sh` times it on the
//! bundle runc and crun run, so the start-up figures show how much of moat's
//! time is the container library it is built on.
//!
//! Usage: libcontainer_floor BUNDLE STATE_ROOT ID   (as root)

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [bundle, root, id] = args.as_slice() else {
        eprintln!("usage: libcontainer_floor BUNDLE STATE_ROOT ID");
        return ExitCode::from(2);
    };
    match run(bundle, root, id) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("libcontainer_floor: {e}");
            ExitCode::from(125)
        }
    }
}

fn run(bundle: &str, root: &str, id: &str) -> Result<u8, Box<dyn std::error::Error>> {
    let mut container = ContainerBuilder::new(id.to_string(), SyscallType::Linux)
        .with_root_path(root)?
        .as_init(bundle)
        .with_systemd(false)
        .with_detach(false)
        .build()?;
    let started = container
        .start()
        .map_err(|e| e.to_string())
        .and_then(|()| container.pid().ok_or_else(|| "the container has no process".to_string()));
    let pid = match started {
        Ok(pid) => pid,
        Err(e) => {
            let _ = container.delete(true);
            return Err(e.into());
        }
    };
    let mut status = 0;
    // SAFETY: waits for our own child (libcontainer starts the container's
    // init as a child of this process); writes only into `status`.
    let waited = unsafe { libc::waitpid(pid.as_raw(), &mut status, 0) };
    container.delete(true)?;
    if waited < 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(match libc::WIFEXITED(status) {
        true => libc::WEXITSTATUS(status) as u8,
        false => 128 + libc::WTERMSIG(status) as u8,
    })
}
