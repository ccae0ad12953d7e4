//! The host-side credential store (`$MOAT_HOME/credentials/NAME`, one secret
//! per file): set, get, list, remove, and the permission check run on every
//! start. Guards against secrets leaking to other local users (directory 0700,
//! files 0600, owned by the invoking user, repaired with a warning when
//! wrong), against a planted symlink redirecting a secret (refused, and every
//! open uses O_NOFOLLOW), against torn or briefly world-readable writes (temp
//! file created 0600 before the secret is written, fsync, rename), and against
//! secrets in logs (no error message carries one). Nothing here is ever
//! mounted, copied or passed into a sandbox: only the supervisor reads it.
#![forbid(unsafe_code)]
use nix::unistd::{getegid, geteuid};
use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The largest secret accepted (after the trailing newline is stripped).
pub const MAX_SECRET: usize = 64 * 1024;
/// Temporary files of an interrupted write start with this (never a valid name).
const TMP_PREFIX: &str = ".tmp-";
const DIR_MODE: u32 = 0o700;
const FILE_MODE: u32 = 0o600;
/// `inference.json` files larger than this are ignored by `list` (garbled).
const MAX_INFERENCE_JSON: u64 = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("{path}")]
    Io { path: PathBuf, source: io::Error },
    #[error("invalid credential name {0:?}: use 1-64 of a-z A-Z 0-9 _ . - (not starting with .)")]
    BadName(String),
    #[error("no credential named {0:?} (see `moat credentials ls`)")]
    Unknown(String),
    #[error("the secret is empty")]
    Empty,
    #[error("the secret is {len} bytes; at most {max} are accepted", max = MAX_SECRET)]
    TooLarge { len: usize },
    #[error("the secret is not valid UTF-8")]
    NotUtf8,
    #[error("{0}: is a symlink; refusing it (a symlink could send a secret elsewhere): remove it")]
    Symlink(PathBuf),
    #[error("{0}: not a regular file; the credentials directory holds only secrets: remove it")]
    NotRegular(PathBuf),
    #[error("{0}: not a directory")]
    NotDir(PathBuf),
    #[error("{path}: owned by uid {owner}, not by uid {euid} (run moat as that user, or as root to repair)")]
    NotOwned { path: PathBuf, owner: u32, euid: u32 },
    #[error("{path}: mode {mode:04o} is too open (any `moat credentials` command repairs it)")]
    Insecure { path: PathBuf, mode: u32 },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> CredentialError + '_ {
    move |source| CredentialError::Io { path: path.to_path_buf(), source }
}

/// One stored credential, as `list` shows it (never its value).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CredentialInfo {
    pub name: String,
    /// Last modification, RFC 3339 UTC.
    pub modified: String,
    /// Sandboxes whose `inference.json` names this credential, sorted.
    pub used_by: Vec<String>,
}

/// Checks a credential name: 1-64 of `[A-Za-z0-9_.-]`, not starting with `.`.
pub fn check_name(name: &str) -> Result<(), CredentialError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with('.')
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(CredentialError::BadName(name.into()))
    }
}

/// Overwrites a buffer that held a secret (best effort: `black_box` keeps the
/// compiler from dropping the stores; copies made earlier are not reached).
pub fn wipe(buf: &mut [u8]) {
    buf.iter_mut().for_each(|b| *b = 0);
    std::hint::black_box(buf);
}

/// The credential directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// `$MOAT_HOME/credentials`.
    pub fn default_location() -> Store {
        Store::at(moat_builder::home::moat_home().join("credentials"))
    }

    /// A store in `dir`; sandboxes (for `used_by`) are looked up in `dir/../sandboxes`.
    pub fn at(dir: impl Into<PathBuf>) -> Store {
        Store { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path_of(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Ensures the directory exists, is 0700 and owned by the effective user,
    /// and every file in it is a regular file 0600 owned by that user.
    /// Repairs modes (and ownership when running as root), removes leftover
    /// temporary files, and returns one warning per repair. Symlinks and
    /// other non-regular entries are refused.
    pub fn check_and_repair(&self) -> Result<Vec<String>, CredentialError> {
        let mut warnings = Vec::new();
        let dir = self.open_dir(true, Some(&mut warnings))?;
        drop(dir);
        let mut entries: Vec<_> = fs::read_dir(&self.dir)
            .map_err(io_err(&self.dir))?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()
            .map_err(io_err(&self.dir))?;
        entries.sort();
        for path in entries {
            let meta = fs::symlink_metadata(&path).map_err(io_err(&path))?;
            let ft = meta.file_type();
            if ft.is_symlink() {
                return Err(CredentialError::Symlink(path));
            }
            if !ft.is_file() {
                return Err(CredentialError::NotRegular(path));
            }
            let is_tmp = path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(TMP_PREFIX));
            if is_tmp {
                fs::remove_file(&path).map_err(io_err(&path))?;
                warnings.push(format!("{}: removed a leftover temporary file of an interrupted write", path.display()));
                continue;
            }
            let file = open_nofollow(&path)?;
            repair(&file, &path, FILE_MODE, &mut warnings)?;
        }
        Ok(warnings)
    }

    /// Stores `secret` under `name`, replacing any earlier one atomically.
    /// One trailing newline (`\n` or `\r\n`) is stripped; the rest must be
    /// non-empty UTF-8 of at most [`MAX_SECRET`] bytes.
    pub fn set(&self, name: &str, secret: &[u8]) -> Result<(), CredentialError> {
        check_name(name)?;
        let secret = strip_newline(secret);
        if secret.is_empty() {
            return Err(CredentialError::Empty);
        }
        if secret.len() > MAX_SECRET {
            return Err(CredentialError::TooLarge { len: secret.len() });
        }
        if std::str::from_utf8(secret).is_err() {
            return Err(CredentialError::NotUtf8);
        }
        let dir = self.open_dir(true, None)?;
        self.write_secret(name, secret)?;
        dir.sync_all().map_err(io_err(&self.dir))
    }

    /// Temp file created 0600 (tempfile creates it exclusively, refusing
    /// symlinks; fchmod'ed again before any byte of the secret, so a umask
    /// cannot matter), written, fsync'ed, renamed over `name`; removed if
    /// any step fails.
    fn write_secret(&self, name: &str, secret: &[u8]) -> Result<(), CredentialError> {
        let mut tmp = tempfile::Builder::new()
            .prefix(&format!("{TMP_PREFIX}{name}-"))
            .permissions(fs::Permissions::from_mode(FILE_MODE))
            .tempfile_in(&self.dir)
            .map_err(io_err(&self.dir))?;
        let tmp_path = tmp.path().to_path_buf();
        tmp.as_file().set_permissions(fs::Permissions::from_mode(FILE_MODE)).map_err(io_err(&tmp_path))?;
        tmp.write_all(secret).map_err(io_err(&tmp_path))?;
        tmp.as_file().sync_all().map_err(io_err(&tmp_path))?;
        let dest = self.path_of(name);
        tmp.persist(&dest).map_err(|e| io_err(&dest)(e.error))?;
        Ok(())
    }

    /// Reads the secret `name`. Refuses a file that is not a regular file
    /// owned by the effective user with mode 0600 (or stricter).
    pub fn get(&self, name: &str) -> Result<String, CredentialError> {
        check_name(name)?;
        let path = self.path_of(name);
        let mut file = match open_nofollow(&path) {
            Err(CredentialError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                return Err(CredentialError::Unknown(name.into()))
            }
            r => r?,
        };
        let meta = file.metadata().map_err(io_err(&path))?;
        let euid = geteuid().as_raw();
        if meta.uid() != euid {
            return Err(CredentialError::NotOwned { path, owner: meta.uid(), euid });
        }
        let mode = meta.mode() & 0o7777;
        if mode & 0o7177 != 0 {
            return Err(CredentialError::Insecure { path, mode });
        }
        let mut buf = Vec::with_capacity(meta.len().min(MAX_SECRET as u64 + 1) as usize);
        (&mut file).take(MAX_SECRET as u64 + 1).read_to_end(&mut buf).map_err(io_err(&path))?;
        if buf.len() > MAX_SECRET {
            let len = buf.len();
            wipe(&mut buf);
            return Err(CredentialError::TooLarge { len });
        }
        String::from_utf8(buf).map_err(|e| {
            let mut bytes = e.into_bytes();
            wipe(&mut bytes);
            CredentialError::NotUtf8
        })
    }

    /// Whether a credential `name` is stored (a valid name and a regular
    /// file; `get` may still refuse it if its owner or mode is wrong).
    pub fn exists(&self, name: &str) -> bool {
        check_name(name).is_ok() && fs::symlink_metadata(self.path_of(name)).is_ok_and(|m| m.file_type().is_file())
    }

    /// Removes the credential `name`.
    pub fn remove(&self, name: &str) -> Result<(), CredentialError> {
        check_name(name)?;
        let path = self.path_of(name);
        match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(CredentialError::Unknown(name.into())),
            Err(e) => return Err(CredentialError::Io { path, source: e }),
            Ok(_) => {}
        }
        fs::remove_file(&path).map_err(io_err(&path))?;
        File::open(&self.dir).and_then(|d| d.sync_all()).map_err(io_err(&self.dir))
    }

    /// The stored credentials, sorted by name, with the sandboxes using each.
    /// A missing directory is an empty store.
    pub fn list(&self) -> Result<Vec<CredentialInfo>, CredentialError> {
        let rd = match fs::read_dir(&self.dir) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            r => r.map_err(io_err(&self.dir))?,
        };
        let users = self.users();
        let mut out = Vec::new();
        for entry in rd {
            let entry = entry.map_err(io_err(&self.dir))?;
            let Some(name) = entry.file_name().to_str().map(str::to_string) else { continue };
            if check_name(&name).is_err() {
                continue;
            }
            let path = entry.path();
            let meta = fs::symlink_metadata(&path).map_err(io_err(&path))?;
            if !meta.file_type().is_file() {
                continue;
            }
            let modified = meta.modified().map(rfc3339).unwrap_or_default();
            let used_by = users.get(&name).cloned().unwrap_or_default();
            out.push(CredentialInfo { name, modified, used_by });
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Sandboxes whose `inference.json` names the credential `name`.
    pub fn used_by(&self, name: &str) -> Vec<String> {
        self.users().remove(name).unwrap_or_default()
    }

    /// Credential name -> sandboxes naming it in `sandboxes/*/inference.json`
    /// (a JSON object with `"credential": "NAME"` or null), plus `(default)`
    /// for the default route in `inference.json` beside them (no sandbox name
    /// has parentheses). Absent, oversized or garbled files are skipped: this
    /// is a display aid, not a decision.
    fn users(&self) -> BTreeMap<String, Vec<String>> {
        let mut map: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let Some(home) = self.dir.parent() else { return map };
        if let Some(cred) = inference_credential(&home.join("inference.json")) {
            map.entry(cred).or_default().push("(default)".to_string());
        }
        let Ok(rd) = fs::read_dir(home.join("sandboxes")) else { return map };
        for entry in rd.flatten() {
            let Some(sandbox) = entry.file_name().to_str().map(str::to_string) else { continue };
            let Some(cred) = inference_credential(&entry.path().join("inference.json")) else { continue };
            map.entry(cred).or_default().push(sandbox);
        }
        map.values_mut().for_each(|v| v.sort());
        map
    }

    /// Opens the directory (creating it 0700 if missing and `create`),
    /// refusing a symlink or non-directory; checks owner and mode, repairing
    /// them when `warnings` is given and failing with `Insecure` otherwise.
    fn open_dir(&self, create: bool, warnings: Option<&mut Vec<String>>) -> Result<File, CredentialError> {
        match fs::symlink_metadata(&self.dir) {
            Ok(m) if m.file_type().is_symlink() => return Err(CredentialError::Symlink(self.dir.clone())),
            Ok(m) if !m.is_dir() => return Err(CredentialError::NotDir(self.dir.clone())),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => {
                if let Some(parent) = self.dir.parent() {
                    fs::create_dir_all(parent).map_err(io_err(parent))?;
                }
                match fs::DirBuilder::new().mode(DIR_MODE).create(&self.dir) {
                    Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(io_err(&self.dir)(e)),
                    _ => {}
                }
                // A fresh directory: bring a stricter umask result up to 0700 without a warning.
                let dir = open_dir_nofollow(&self.dir)?;
                dir.set_permissions(fs::Permissions::from_mode(DIR_MODE)).map_err(io_err(&self.dir))?;
                return Ok(dir);
            }
            Err(e) => return Err(CredentialError::Io { path: self.dir.clone(), source: e }),
        }
        let dir = open_dir_nofollow(&self.dir)?;
        match warnings {
            Some(w) => repair(&dir, &self.dir, DIR_MODE, w)?,
            None => {
                let meta = dir.metadata().map_err(io_err(&self.dir))?;
                let euid = geteuid().as_raw();
                if meta.uid() != euid {
                    return Err(CredentialError::NotOwned { path: self.dir.clone(), owner: meta.uid(), euid });
                }
                if meta.mode() & 0o7777 != DIR_MODE {
                    return Err(CredentialError::Insecure { path: self.dir.clone(), mode: meta.mode() & 0o7777 });
                }
            }
        }
        Ok(dir)
    }
}

/// Brings an opened file or directory to `want` and the effective user,
/// through its descriptor (no path race), pushing a warning per change.
fn repair(f: &File, path: &Path, want: u32, warnings: &mut Vec<String>) -> Result<(), CredentialError> {
    let meta = f.metadata().map_err(io_err(path))?;
    let euid = geteuid();
    if meta.uid() != euid.as_raw() {
        if !euid.is_root() {
            return Err(CredentialError::NotOwned { path: path.to_path_buf(), owner: meta.uid(), euid: euid.as_raw() });
        }
        std::os::unix::fs::fchown(f, Some(euid.as_raw()), Some(getegid().as_raw())).map_err(io_err(path))?;
        warnings.push(format!("{} was owned by uid {}; set to uid {}", path.display(), meta.uid(), euid.as_raw()));
    }
    let mode = meta.mode() & 0o7777;
    if mode != want {
        f.set_permissions(fs::Permissions::from_mode(want)).map_err(io_err(path))?;
        warnings.push(format!("{} had mode {mode:04o}; set to {want:04o}", path.display()));
    }
    Ok(())
}

/// Opens a file read-only without following a final symlink (and without
/// blocking on a FIFO swapped in), then checks it is a regular file.
fn open_nofollow(path: &Path) -> Result<File, CredentialError> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => CredentialError::Symlink(path.to_path_buf()),
            _ => CredentialError::Io { path: path.to_path_buf(), source: e },
        })?;
    let meta = f.metadata().map_err(io_err(path))?;
    if !meta.is_file() {
        return Err(CredentialError::NotRegular(path.to_path_buf()));
    }
    Ok(f)
}

fn open_dir_nofollow(path: &Path) -> Result<File, CredentialError> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => CredentialError::Symlink(path.to_path_buf()),
            Some(libc::ENOTDIR) => CredentialError::NotDir(path.to_path_buf()),
            _ => CredentialError::Io { path: path.to_path_buf(), source: e },
        })
}

fn strip_newline(s: &[u8]) -> &[u8] {
    match s.strip_suffix(b"\n") {
        Some(rest) => rest.strip_suffix(b"\r").unwrap_or(rest),
        None => s,
    }
}

/// The `credential` field of one sandbox's `inference.json`, if it names one.
fn inference_credential(path: &Path) -> Option<String> {
    let file = File::open(path).ok()?;
    let mut bytes = Vec::new();
    file.take(MAX_INFERENCE_JSON + 1).read_to_end(&mut bytes).ok()?;
    if bytes.len() as u64 > MAX_INFERENCE_JSON {
        return None;
    }
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    let name = v.get("credential")?.as_str()?;
    check_name(name).ok()?;
    Some(name.to_string())
}

fn rfc3339(t: std::time::SystemTime) -> String {
    moat_builder::build::rfc3339(t.duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const SECRET: &str = "sk-test-7f3a9c1e5b2d4f60-NEVER-PRINT";

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().mode() & 0o7777
    }

    fn store() -> (tempfile::TempDir, Store) {
        let t = tempfile::tempdir().unwrap();
        let s = Store::at(t.path().join("credentials"));
        (t, s)
    }

    #[test]
    fn round_trip_set_get_list_remove() {
        let (_t, s) = store();
        assert_eq!(s.check_and_repair().unwrap(), Vec::<String>::new());
        assert!(s.list().unwrap().is_empty());
        s.set("openai", format!("{SECRET}\n").as_bytes()).unwrap();
        s.set("anthropic.main", b"second\r\n").unwrap();
        assert_eq!(s.get("openai").unwrap(), SECRET);
        assert_eq!(s.get("anthropic.main").unwrap(), "second");
        assert!(s.exists("openai") && !s.exists("absent") && !s.exists("../credentials"));
        // Replacing keeps one file and the new value; only one newline is stripped.
        s.set("openai", b"new\n\n").unwrap();
        assert_eq!(s.get("openai").unwrap(), "new\n");
        let names: Vec<_> = s.list().unwrap().into_iter().map(|c| c.name).collect();
        assert_eq!(names, ["anthropic.main", "openai"]);
        let listed = format!("{:?}", s.list().unwrap());
        assert!(!listed.contains("new") && !listed.contains("second"), "{listed}");
        assert!(s.list().unwrap()[0].modified.ends_with('Z'), "{:?}", s.list().unwrap());
        s.remove("openai").unwrap();
        assert!(matches!(s.get("openai"), Err(CredentialError::Unknown(_))));
        assert!(matches!(s.remove("openai"), Err(CredentialError::Unknown(_))));
        assert_eq!(s.list().unwrap().len(), 1);
        // No temporary file is left behind.
        let all: Vec<_> = fs::read_dir(s.dir()).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(all, ["anthropic.main"]);
    }

    #[test]
    fn modes_after_set_are_0700_and_0600() {
        let (t, s) = store();
        s.set("k", SECRET.as_bytes()).unwrap();
        assert_eq!(mode(s.dir()), 0o700);
        assert_eq!(mode(&s.dir().join("k")), 0o600);
        assert_eq!(fs::metadata(s.dir().join("k")).unwrap().uid(), geteuid().as_raw());
        assert!(t.path().join("credentials").is_dir());
        assert_eq!(s.check_and_repair().unwrap(), Vec::<String>::new());
    }

    #[test]
    fn loose_modes_are_repaired_with_warnings() {
        let (_t, s) = store();
        s.set("a", b"one").unwrap();
        s.set("b", b"two").unwrap();
        fs::set_permissions(s.dir().join("a"), fs::Permissions::from_mode(0o644)).unwrap();
        fs::set_permissions(s.dir(), fs::Permissions::from_mode(0o755)).unwrap();
        // A reader refuses the loose file and does not repair it silently.
        assert!(matches!(s.get("a"), Err(CredentialError::Insecure { mode: 0o644, .. })));
        assert!(matches!(s.set("c", b"x"), Err(CredentialError::Insecure { mode: 0o755, .. })));
        let w = s.check_and_repair().unwrap();
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(w[0].ends_with("credentials had mode 0755; set to 0700"), "{w:?}");
        assert!(w[1].ends_with("credentials/a had mode 0644; set to 0600"), "{w:?}");
        assert_eq!(mode(s.dir()), 0o700);
        assert_eq!(mode(&s.dir().join("a")), 0o600);
        assert_eq!(mode(&s.dir().join("b")), 0o600);
        assert_eq!(s.get("a").unwrap(), "one");
        assert!(s.check_and_repair().unwrap().is_empty());
    }

    #[test]
    fn leftover_temporary_file_is_removed_with_a_warning() {
        let (_t, s) = store();
        s.check_and_repair().unwrap();
        fs::write(s.dir().join(".tmp-k-1-2-0"), "partial").unwrap();
        let w = s.check_and_repair().unwrap();
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].contains("leftover temporary file"), "{w:?}");
        assert_eq!(fs::read_dir(s.dir()).unwrap().count(), 0);
    }

    #[test]
    fn symlinks_are_refused() {
        let (t, s) = store();
        s.set("real", b"x").unwrap();
        let outside = t.path().join("outside");
        fs::write(&outside, "elsewhere").unwrap();
        symlink(&outside, s.dir().join("evil")).unwrap();
        let e = s.check_and_repair().unwrap_err();
        assert!(matches!(&e, CredentialError::Symlink(p) if p.ends_with("evil")), "{e}");
        assert!(e.to_string().contains("symlink"), "{e}");
        assert!(matches!(s.get("evil"), Err(CredentialError::Symlink(_))));
        // A symlink as the directory itself is refused too.
        let s2 = Store::at(t.path().join("linked"));
        symlink(s.dir(), s2.dir()).unwrap();
        assert!(matches!(s2.check_and_repair(), Err(CredentialError::Symlink(_))));
        assert!(matches!(s2.set("k", b"v"), Err(CredentialError::Symlink(_))));
        // A directory inside is not a secret either.
        fs::remove_file(s.dir().join("evil")).unwrap();
        fs::create_dir(s.dir().join("sub")).unwrap();
        assert!(matches!(s.check_and_repair(), Err(CredentialError::NotRegular(_))));
    }

    #[test]
    fn bad_names_are_refused() {
        let (_t, s) = store();
        let long = "a".repeat(65);
        for bad in ["", ".hidden", "a/b", "..", "a b", "ü", "x\n", long.as_str(), ".tmp-x"] {
            assert!(matches!(s.set(bad, b"v"), Err(CredentialError::BadName(_))), "{bad:?}");
            assert!(matches!(s.get(bad), Err(CredentialError::BadName(_))), "{bad:?}");
            assert!(matches!(s.remove(bad), Err(CredentialError::BadName(_))), "{bad:?}");
        }
        for good in ["a", "A-b_c.d", "-x", "x.", &"z".repeat(64)] {
            check_name(good).unwrap();
        }
    }

    #[test]
    fn bad_secrets_are_refused_and_no_error_shows_the_secret() {
        let (t, s) = store();
        let mut errors = vec![
            s.set("k", b"").unwrap_err(),
            s.set("k", b"\n").unwrap_err(),
            s.set("k", b"\r\n").unwrap_err(),
            s.set("k", SECRET.repeat(MAX_SECRET / SECRET.len() + 1).as_bytes()).unwrap_err(),
            s.set("k", [SECRET.as_bytes(), &[0xff, 0xfe]].concat().as_slice()).unwrap_err(),
        ];
        assert!(matches!(errors[0], CredentialError::Empty));
        assert!(matches!(errors[1], CredentialError::Empty));
        assert!(matches!(errors[3], CredentialError::TooLarge { .. }));
        assert!(matches!(errors[4], CredentialError::NotUtf8));
        s.set("exact", "x".repeat(MAX_SECRET).as_bytes()).unwrap();
        // Errors while reading a stored secret.
        s.set("k", SECRET.as_bytes()).unwrap();
        fs::set_permissions(s.dir().join("k"), fs::Permissions::from_mode(0o640)).unwrap();
        errors.push(s.get("k").unwrap_err());
        fs::write(s.dir().join("big"), SECRET.repeat(MAX_SECRET / SECRET.len() + 1)).unwrap();
        fs::set_permissions(s.dir().join("big"), fs::Permissions::from_mode(0o600)).unwrap();
        errors.push(s.get("big").unwrap_err());
        fs::write(s.dir().join("bin"), [SECRET.as_bytes(), &[0xff]].concat()).unwrap();
        fs::set_permissions(s.dir().join("bin"), fs::Permissions::from_mode(0o600)).unwrap();
        errors.push(s.get("bin").unwrap_err());
        // Errors of a write into an unusable place.
        let blocked = Store::at(t.path().join("file-not-dir"));
        fs::write(blocked.dir(), "").unwrap();
        errors.push(blocked.set("k", SECRET.as_bytes()).unwrap_err());
        assert_eq!(errors.len(), 9);
        for e in &errors {
            let shown = format!("{e} / {e:?}");
            assert!(!shown.contains(SECRET) && !shown.contains("NEVER-PRINT"), "secret in error: {shown}");
        }
    }

    #[test]
    fn used_by_comes_from_sandbox_inference_files() {
        let t = tempfile::tempdir().unwrap();
        let s = Store::at(t.path().join("credentials"));
        s.set("openai", b"v").unwrap();
        s.set("spare", b"v").unwrap();
        let sb = t.path().join("sandboxes");
        for (name, body) in [
            ("zeta", Some(r#"{"credential": "openai", "provider": "x"}"#)),
            ("alpha", Some(r#"{"credential": "openai"}"#)),
            ("nulled", Some(r#"{"credential": null}"#)),
            ("garbled", Some("{not json")),
            ("array", Some(r#"["openai"]"#)),
            ("pathy", Some(r#"{"credential": "../openai"}"#)),
            ("absent", None),
        ] {
            fs::create_dir_all(sb.join(name)).unwrap();
            if let Some(body) = body {
                fs::write(sb.join(name).join("inference.json"), body).unwrap();
            }
        }
        fs::write(sb.join("stray-file"), "").unwrap();
        fs::write(t.path().join("inference.json"), r#"{"route": {}, "credential": "openai"}"#).unwrap();
        let list = s.list().unwrap();
        assert_eq!(list[0].name, "openai");
        assert_eq!(list[0].used_by, ["(default)", "alpha", "zeta"]);
        assert_eq!(list[1].name, "spare");
        assert!(list[1].used_by.is_empty());
        assert_eq!(s.used_by("openai"), ["(default)", "alpha", "zeta"]);
        fs::remove_file(t.path().join("inference.json")).unwrap();
        assert_eq!(s.used_by("openai"), ["alpha", "zeta"]);
        // No sandboxes directory at all is fine.
        fs::remove_dir_all(&sb).unwrap();
        assert!(s.list().unwrap().iter().all(|c| c.used_by.is_empty()));
    }
}
