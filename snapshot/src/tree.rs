//! Trees handled through directory descriptors, never through whole paths:
//! walking one (holding one directory open at a time, climbing back by `..`
//! checked against the inode it came from), opening the parent of a path
//! beneath a root ([`Cursor`]) and removing a tree. Addresses workspaces
//! deeper than PATH_MAX (4096 bytes of path), which a backup or a restore
//! through `std::fs` paths cannot read, build or remove, and a directory
//! swapped for a symlink under a walk (no component is resolved through a
//! symlink, and a directory that moved is an error, not a new place to read).
#![forbid(unsafe_code)]
use crate::sys;
use std::ffi::{OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

/// Splits a manifest path into its parent ("." for the root) and its name.
pub(crate) fn split(rel: &str) -> (&str, &OsStr) {
    match rel.rsplit_once('/') {
        Some((p, n)) => (p, OsStr::new(n)),
        None => (".", OsStr::new(rel)),
    }
}

fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

fn same(a: &libc::stat, b: &libc::stat) -> bool {
    a.st_dev == b.st_dev && a.st_ino == b.st_ino
}

fn moved(what: &str) -> io::Error {
    io::Error::other(format!("{what} was moved while it was being read"))
}

/// What a walk does with a directory it found.
pub(crate) enum Descend {
    /// Walk into it; the relative path its entries are reported under.
    Into(String),
    Skip,
}

/// One directory on the walk's stack: its entries still to visit.
struct Frame {
    rel: String,
    st: libc::stat,
    names: std::vec::IntoIter<OsString>,
}

/// Walks the tree under `root` depth first. `visit(dir, parent_rel, name,
/// stat)` is called for every entry (`stat` is an `lstat`); for a directory
/// it says whether to walk into it. Only one directory is open at a time, so
/// neither the depth nor the length of a path is bounded. An entry that
/// vanishes between listing and `lstat` is passed over.
pub(crate) fn walk(
    root: BorrowedFd<'_>,
    visit: &mut dyn FnMut(BorrowedFd<'_>, &str, &OsStr, &libc::stat) -> io::Result<Descend>,
) -> io::Result<()> {
    let root_st = sys::stat_fd(root)?;
    let mut cur: OwnedFd = root.try_clone_to_owned()?;
    let mut stack = vec![Frame { rel: ".".into(), st: root_st, names: sys::read_names(root)?.into_iter() }];
    while let Some(top) = stack.last_mut() {
        let Some(name) = top.names.next() else {
            // Done here: climb back to the parent through "..", checking it
            // is the directory we came from.
            let done = stack.pop();
            if let (Some(done), Some(parent)) = (done, stack.last()) {
                let up = sys::open_dir_at(cur.as_fd(), OsStr::new(".."))?;
                if !same(&sys::stat_fd(up.as_fd())?, &parent.st) {
                    return Err(moved(&done.rel));
                }
                cur = up;
            }
            continue;
        };
        let st = match sys::stat_at(cur.as_fd(), &name) {
            Ok(st) => st,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        let parent_rel = top.rel.clone();
        if let Descend::Into(rel) = visit(cur.as_fd(), &parent_rel, &name, &st)? {
            if !is_dir(&st) {
                continue;
            }
            let child = match sys::open_dir_at(cur.as_fd(), &name) {
                Ok(c) => c,
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let child_st = sys::stat_fd(child.as_fd())?;
            if !same(&child_st, &st) {
                return Err(moved(&rel));
            }
            let names = sys::read_names(child.as_fd())?.into_iter();
            stack.push(Frame { rel, st: child_st, names });
            cur = child;
        }
    }
    Ok(())
}

/// Removes `name` in `parent` and, if it is a directory, everything under
/// it, holding one directory open at a time (any depth).
pub(crate) fn remove_tree(parent: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let st = sys::stat_at(parent, name)?;
    if !is_dir(&st) {
        return sys::unlink_at(parent, name, false);
    }
    struct Level {
        name: OsString,
        st: libc::stat,
        subdirs: Vec<OsString>,
    }
    // Empties `dir` of everything but directories; returns those.
    fn clear(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
        let mut subdirs = Vec::new();
        for n in sys::read_names(dir)? {
            match sys::stat_at(dir, &n) {
                Ok(st) if is_dir(&st) => subdirs.push(n),
                Ok(_) => match sys::unlink_at(dir, &n, false) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                },
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        Ok(subdirs)
    }
    let parent_st = sys::stat_fd(parent)?;
    let mut cur = sys::open_dir_at(parent, name)?;
    let mut stack = vec![Level { name: name.to_os_string(), st, subdirs: clear(cur.as_fd())? }];
    while let Some(top) = stack.last_mut() {
        if let Some(sub) = top.subdirs.pop() {
            let child = sys::open_dir_at(cur.as_fd(), &sub)?;
            let st = sys::stat_fd(child.as_fd())?;
            let subdirs = clear(child.as_fd())?;
            stack.push(Level { name: sub, st, subdirs });
            cur = child;
            continue;
        }
        // Empty now: climb to its parent (checked) and remove it there.
        let Some(done) = stack.pop() else { break };
        let want_up = stack.last().map_or(&parent_st, |l| &l.st);
        let up = sys::open_dir_at(cur.as_fd(), OsStr::new(".."))?;
        if !same(&sys::stat_fd(up.as_fd())?, want_up) {
            return Err(moved(&done.name.to_string_lossy()));
        }
        sys::unlink_at(up.as_fd(), &done.name, true)?;
        cur = up;
    }
    Ok(())
}

/// Opens directories beneath a root by relative path, keeping the last one
/// open: consecutive paths of a sorted manifest mostly share a parent, or
/// are a child of the last directory opened.
pub(crate) struct Cursor<'a> {
    root: BorrowedFd<'a>,
    last: Option<(String, OwnedFd)>,
}

impl<'a> Cursor<'a> {
    pub(crate) fn new(root: BorrowedFd<'a>) -> Cursor<'a> {
        Cursor { root, last: None }
    }

    /// The directory `rel` ("." is the root).
    pub(crate) fn dir(&mut self, rel: &str) -> io::Result<BorrowedFd<'_>> {
        if rel == "." {
            return Ok(self.root);
        }
        let hit = matches!(&self.last, Some((r, _)) if r == rel);
        if !hit {
            let dir_flags = nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_DIRECTORY;
            let below = match &self.last {
                Some((r, fd)) => rel.strip_prefix(r.as_str()).and_then(|s| s.strip_prefix('/')).map(|s| (s, fd)),
                None => None,
            };
            let fd = match below {
                Some((rest, fd)) => sys::open_beneath(fd.as_fd(), rest, dir_flags, 0)?,
                None => sys::open_beneath(self.root, rel, dir_flags, 0)?,
            };
            self.last = Some((rel.to_string(), fd));
        }
        match &self.last {
            Some((_, fd)) => Ok(fd.as_fd()),
            None => Ok(self.root),
        }
    }
}
