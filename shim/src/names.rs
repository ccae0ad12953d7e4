//! Which moat sandbox a containerd container is, and whether it is ours to
//! remove. Threat: containerd's clean-up (`shim delete` after a refused
//! create, a task delete after `moat rm`) removing a sandbox it does not
//! own: one started by `moat run`, or a same-named container of another
//! containerd namespace.
use moat_builder::digest::Digest;
use moat_builder::home::check_sandbox_name;
use moat_supervisor::sandbox::state::{self, Paths, StateError};
use moat_supervisor::sandbox::{self, SandboxError};

/// Longest kept prefix of an id that is not a sandbox name as it is:
/// 46 + '-' + 16 hex of its digest = 63, the most a sandbox name may be.
const PREFIX: usize = 46;

/// The sandbox name of container `id`: the id itself when moat allows it
/// as a name (1-63 of `[A-Za-z0-9_.-]`), else a readable prefix of it and
/// 16 hex digits of its sha256 (containerd allows 76 characters, and the
/// CRI plugin names every container by 64 hex digits). The same id always
/// gives the same name, so a new shim process (`shim delete`) finds it.
pub fn sandbox_name(id: &str) -> String {
    if check_sandbox_name(id).is_ok() {
        return id.to_string();
    }
    let prefix: String = id
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-' { c } else { '_' })
        .skip_while(|c| *c == '.' || *c == '-')
        .take(PREFIX)
        .collect();
    let hash = Digest::of(id.as_bytes());
    let hash = &hash.hex()[..16];
    if prefix.is_empty() {
        format!("c{hash}")
    } else {
        format!("{prefix}-{hash}")
    }
}

/// What the shim writes as the record's image: who owns the sandbox.
pub fn owner(namespace: &str, id: &str) -> String {
    format!("containerd:{namespace}/{id}")
}

/// The name for container `id`: the first of `preferred` (a pod's name,
/// what an operator types) that is a valid sandbox name no sandbox has
/// yet, else the one its id gives.
pub fn choose(preferred: &[String], id: &str) -> String {
    let free = |n: &String| check_sandbox_name(n).is_ok() && Paths::new(n).is_ok_and(|p| !p.state_file().exists());
    preferred.iter().find(|n| free(n)).cloned().unwrap_or_else(|| sandbox_name(id))
}

/// The sandbox `owner` owns, if any: the one its id names, else (a pod's
/// name was chosen) the one whose record names it.
pub fn owned_by(id: &str, owner: &str) -> Option<String> {
    let by_id = sandbox_name(id);
    let owns = |name: &str| Paths::new(name).ok().and_then(|p| state::load(&p).ok()).is_some_and(|r| r.image == owner);
    if owns(&by_id) {
        return Some(by_id);
    }
    state::list().ok()?.into_iter().find(|r| r.image == owner).map(|r| r.name)
}

/// Removes sandbox `name` with everything it has, if its record says it
/// is `owner`'s (found by [`owned_by`] after a crash). A sandbox already gone (`moat rm`) counts as removed; one
/// that belongs to someone else is left alone (logged), and so is a record
/// that cannot be read (it cannot say whose it is).
pub fn remove_if_owned(name: &str, owner: &str) -> Result<(), SandboxError> {
    let paths = Paths::new(name)?;
    let rec = match state::load(&paths) {
        Ok(r) => r,
        Err(StateError::Unknown(_)) => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    if rec.image != owner {
        tracing::warn!(sandbox = name, owner = %rec.image, wanted = owner, "not removing a sandbox the container does not own");
        return Ok(());
    }
    match sandbox::remove(&paths, true, true) {
        Err(SandboxError::State(StateError::Unknown(_))) => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn valid_names_stay_and_others_map_to_valid_distinct_names() {
        assert_eq!(sandbox_name("agent-1"), "agent-1");
        let a = format!("{:064x}", 1);
        let b = format!("{:064x}", 2);
        let (na, nb) = (sandbox_name(&a), sandbox_name(&b));
        assert_ne!(na, nb);
        for (id, n) in [(&a, &na), (&b, &nb)] {
            assert!(check_sandbox_name(n).is_ok(), "{n}");
            assert!(n.starts_with(&id[..PREFIX]), "{n}");
            assert_eq!(&sandbox_name(id), n, "stable");
        }
        for odd in ["-x", ".hidden", "a/b", &"y".repeat(76), "---"] {
            let n = sandbox_name(odd);
            assert!(check_sandbox_name(&n).is_ok(), "{odd:?} -> {n:?}");
        }
    }
}
