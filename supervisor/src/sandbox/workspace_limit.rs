//! Bounded workspace disk: the workspace moat makes for a sandbox lives in a
//! sparse ext4 image of its own (`workspace.img` beside it, size and inode
//! count from `filesystem.workspace_size_mib` / `workspace_inodes`), loop-
//! mounted while something uses it: the supervisor while the sandbox runs,
//! `moat backup` / `moat restore` of a stopped one. Guards against a sandbox
//! filling the host's disk or inode table through its workspace (issue 18):
//! past either bound its writes fail with ENOSPC inside the image, and the
//! host gives the image at most its size. Project quotas are not used: the
//! sandbox runs in the host's user namespace and owns its files, so it could
//! move them out of any project with FS_IOC_FSSETXATTR.
//!
//! Layout in `$MOAT_HOME/sandboxes/NAME/`: `workspace.img` (the image),
//! `workspace.disk/` (where its root is mounted) and, inside the image,
//! `workspace/` (the workspace itself: a directory, not the image's root, so
//! that a restore can swap it with one rename inside the image), bound at
//! `workspace/` (the path the record and operators know) while it runs.
//!
//! A `run --rm` sandbox's image is deleted at exit, so it is made without a
//! journal and mounted without write barriers ([`Durability::Ephemeral`]):
//! nothing of it has to reach the host's disk, and the flushes the journal
//! and barriers cost (about 30 ms of every start here) are skipped. A kept
//! workspace keeps both.
#![forbid(unsafe_code)]
use crate::policy::Filesystem;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use std::fs;
use std::io;
use std::os::unix::fs::{chown, DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The image file, beside the workspace.
pub const IMAGE: &str = "workspace.img";
/// Where the image's root is mounted.
pub const DISK: &str = "workspace.disk";
/// The workspace: a directory at the image's root.
const DATA: &str = "workspace";
const LOOP_MAJOR: u64 = 7;

/// Whether a workspace image's contents must survive a host crash.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// A workspace that outlives its sandbox: ext4 with a journal, mounted
    /// with write barriers (a flush reaches the host's disk in order).
    Kept,
    /// `run --rm`: deleted when the sandbox exits. No journal, no barriers:
    /// after a host crash the image may be inconsistent, and it is garbage.
    Ephemeral,
}

#[derive(Debug, thiserror::Error)]
pub enum LimitError {
    #[error("{what}")]
    Io { what: String, source: io::Error },
    #[error("making the workspace image {path}: mkfs.ext4 failed: {stderr}")]
    Mkfs { path: PathBuf, stderr: String },
    #[error("{0}")]
    Refused(String),
}

fn io_err(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> LimitError {
    let what = what.to_string();
    move |source| LimitError::Io { what, source }
}

/// The image-backed workspace of one sandbox home.
pub struct Disk {
    home: PathBuf,
}

impl Disk {
    pub fn of(home: &Path) -> Disk {
        Disk { home: home.to_path_buf() }
    }
    pub fn image(&self) -> PathBuf {
        self.home.join(IMAGE)
    }
    /// The mount point of the image's root.
    pub fn root(&self) -> PathBuf {
        self.home.join(DISK)
    }
    /// The workspace inside the mounted image.
    pub fn data(&self) -> PathBuf {
        self.root().join(DATA)
    }
    pub fn exists(&self) -> bool {
        self.image().is_file()
    }

    /// Makes the image: a ready copy of the empty template for `size_mib`
    /// and `inodes` (`workspace_pool`), else a sparse copy of the template
    /// (made once, see [`template`]). Written under a
    /// temporary name and renamed, so a crash never leaves a half-made
    /// image in use. The workspace directory in it belongs to root until
    /// [`prepare`] gives it to the sandbox's user.
    pub fn create(&self, size_mib: u64, inodes: u64, durability: Durability) -> Result<(), LimitError> {
        let tmpl = template(size_mib, inodes, durability)?;
        let image = self.image();
        if super::workspace_pool::take(&tmpl, &image) {
            return Ok(());
        }
        let tmp = self.home.join(format!(".{IMAGE}.{}", std::process::id()));
        let copied =
            copy_sparse(&tmpl, &tmp).map_err(io_err(format!("copying {} to {}", tmpl.display(), tmp.display())));
        let result = copied.and_then(|()| fs::rename(&tmp, &image).map_err(io_err(image.display())));
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    /// Mounts the image's root at [`Disk::root`] (nosuid, nodev; freed
    /// blocks are given back to the host), or takes the mount that is there.
    /// The image is locked (flock) until the returned value is dropped, so
    /// two users never attach it twice.
    pub fn mount(&self) -> Result<Mounted, LimitError> {
        self.mount_as(Durability::Kept)
    }

    /// [`Disk::mount`], without write barriers for an ephemeral image.
    pub fn mount_as(&self, durability: Durability) -> Result<Mounted, LimitError> {
        let image = self.image();
        let file = fs::OpenOptions::new().read(true).write(true).open(&image).map_err(io_err(image.display()))?;
        file.lock().map_err(io_err(format!("locking {}", image.display())))?;
        let root = self.root();
        match fs::DirBuilder::new().mode(0o700).create(&root) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(io_err(root.display())(e)),
        }
        if mounted_device(&root)?.is_some() {
            return Ok(Mounted { _lock: file, root, owned: false, view: None });
        }
        let (device, dev) = super::sys::loop_attach(&file)
            .map_err(io_err(format!("attaching {} to a loop device", image.display())))?;
        mount(
            Some(device.as_path()),
            &root,
            Some("ext4"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOATIME,
            Some(match durability {
                Durability::Kept => "discard",
                Durability::Ephemeral => "discard,nobarrier",
            }),
        )
        .map_err(|e| io_err(format!("mounting {} at {}", image.display(), root.display()))(e.into()))?;
        // The mount holds the device now; with autoclear it detaches when
        // the last mount of it is gone.
        drop(dev);
        let data = root.join(DATA);
        if !data.is_dir() {
            let _ = umount2(&root, MntFlags::MNT_DETACH);
            return Err(LimitError::Refused(format!("{}: the image holds no workspace directory", image.display())));
        }
        Ok(Mounted { _lock: file, root, owned: true, view: None })
    }
}

/// The empty image for `size_mib` and `inodes` in moat's cache, made
/// once: a sparse file formatted as ext4 with that many inodes and no
/// reserved blocks, holding an empty `workspace/`, with a journal unless it
/// is for ephemeral images (mkfs.ext4 at each start took 40-100 ms here).
/// No resize inode either (an image is never grown): its reserved blocks
/// were 4 MiB of the template's data, which every start copied and the
/// loop device's attach then wrote to the host's disk; now an empty 10 GiB
/// image holds about 240 KiB. An ephemeral image also has no backup
/// superblocks and one flex group for all its metadata: its data is then
/// three extents, and deleting it at exit frees three (on a host mounted
/// with `discard`, each is a discard the unlink waits for: 15 extents took
/// 20-40 ms here). Images made from one template share its filesystem UUID.
fn template(size_mib: u64, inodes: u64, durability: Durability) -> Result<PathBuf, LimitError> {
    let dir = moat_builder::home::cache_dir().join("workspace-images");
    let kind = match durability {
        Durability::Kept => "j",
        Durability::Ephemeral => "e",
    };
    let path = dir.join(format!("{size_mib}m-{inodes}i-{kind}.img"));
    if path.is_file() {
        return Ok(path);
    }
    // The template of earlier versions (with a resize inode); images made
    // from it keep working.
    let _ = fs::remove_file(dir.join(format!("{size_mib}m-{inodes}i.img")));
    fs::DirBuilder::new().recursive(true).mode(0o700).create(&dir).map_err(io_err(dir.display()))?;
    let tmp = dir.join(format!(".{size_mib}m-{inodes}i-{kind}.img.{}", std::process::id()));
    let seed = dir.join(format!(".seed.{}", std::process::id()));
    let result = (|| {
        let f = fs::File::create(&tmp).map_err(io_err(tmp.display()))?;
        f.set_len(size_mib << 20).map_err(io_err(tmp.display()))?;
        drop(f);
        // mkfs.ext4 -d copies this tree into the new filesystem: no mount
        // is needed to make the workspace directory.
        let ws = seed.join(DATA);
        fs::DirBuilder::new().recursive(true).mode(0o700).create(&ws).map_err(io_err(ws.display()))?;
        let out = Command::new("mkfs.ext4")
            .args(["-q", "-F", "-b", "4096", "-m", "0", "-L", "moat-workspace"])
            .arg("-N")
            .arg(inodes.to_string())
            .args(match durability {
                Durability::Kept => vec!["-O".to_string(), "^resize_inode".into()],
                Durability::Ephemeral => vec![
                    "-O".to_string(),
                    "^resize_inode,^has_journal,sparse_super2".into(),
                    "-G".into(),
                    (size_mib / 128).clamp(16, 1 << 12).next_power_of_two().to_string(),
                ],
            })
            // The new file is all holes, which read as zeros: neither the
            // inode tables nor the journal need writing (mke2fs punches the
            // file and marks the tables zeroed, so the kernel does not zero
            // them later either). An empty 10 GiB image holds about 240 KiB
            // (an ephemeral one 124 KiB). One -E only: mke2fs keeps the last.
            .arg("-E")
            .arg(match durability {
                Durability::Kept => "root_owner=0:0,lazy_itable_init=1,lazy_journal_init=1",
                Durability::Ephemeral => "root_owner=0:0,lazy_itable_init=1,lazy_journal_init=1,num_backup_sb=0",
            })
            .arg("-d")
            .arg(&seed)
            .arg(&tmp)
            .env("PATH", "/usr/sbin:/sbin:/usr/bin:/bin")
            .output()
            .map_err(io_err("running mkfs.ext4 (install e2fsprogs)"))?;
        if !out.status.success() {
            return Err(LimitError::Mkfs {
                path: path.clone(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        fs::rename(&tmp, &path).map_err(io_err(path.display()))
    })();
    let _ = fs::remove_dir_all(&seed);
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.map(|()| path)
}

/// Copies `from` to a new file `to` of the same length, writing only the
/// data ranges (SEEK_DATA/SEEK_HOLE): the holes stay holes.
fn copy_sparse(from: &Path, to: &Path) -> io::Result<()> {
    use nix::unistd::{lseek, Whence};
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::FileExt;
    let src = fs::File::open(from)?;
    let len = src.metadata()?.len();
    let dst = fs::OpenOptions::new().write(true).create_new(true).open(to)?;
    dst.set_len(len)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut pos = 0i64;
    let end = i64::try_from(len).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    while pos < end {
        let data = match lseek(src.as_raw_fd(), pos, Whence::SeekData) {
            Ok(d) => d,
            Err(nix::errno::Errno::ENXIO) => break, // only a hole is left
            Err(e) => return Err(e.into()),
        };
        let hole = lseek(src.as_raw_fd(), data, Whence::SeekHole)?.min(end);
        let mut at = data;
        while at < hole {
            let want = usize::try_from(hole - at).unwrap_or(buf.len()).min(buf.len());
            let n = src.read_at(&mut buf[..want], at as u64)?;
            if n == 0 {
                return Err(io::Error::from(io::ErrorKind::UnexpectedEof));
            }
            dst.write_all_at(&buf[..n], at as u64)?;
            at += n as i64;
        }
        pos = hole;
    }
    Ok(())
}

/// The loop device mounted at `root`, if `root` is a mount point.
fn mounted_device(root: &Path) -> Result<Option<PathBuf>, LimitError> {
    let parent = root.parent().unwrap_or(Path::new("/"));
    let (m, p) =
        (fs::metadata(root).map_err(io_err(root.display()))?, fs::metadata(parent).map_err(io_err(parent.display()))?);
    if m.dev() == p.dev() {
        return Ok(None);
    }
    let (major, minor) = (nix::sys::stat::major(m.dev()), nix::sys::stat::minor(m.dev()));
    if major != LOOP_MAJOR {
        return Err(LimitError::Refused(format!(
            "{}: something other than a workspace image is mounted there",
            root.display()
        )));
    }
    Ok(Some(PathBuf::from(format!("/dev/loop{minor}"))))
}

/// A mounted workspace image, unmounted on drop when this value mounted it.
pub struct Mounted {
    _lock: fs::File,
    root: PathBuf,
    owned: bool,
    view: Option<PathBuf>,
}

impl Mounted {
    /// The mount point of the image's root.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// The workspace inside the image.
    pub fn data(&self) -> PathBuf {
        self.root.join(DATA)
    }
    /// Binds the workspace at `view` too (the path operators and `moat
    /// backup` of a running sandbox read), until drop.
    pub fn bind_view(&mut self, view: &Path) -> Result<(), LimitError> {
        let data = self.data();
        mount(Some(data.as_path()), view, None::<&str>, MsFlags::MS_BIND, None::<&str>)
            .map_err(|e| io_err(format!("binding {} at {}", data.display(), view.display()))(e.into()))?;
        self.view = Some(view.to_path_buf());
        Ok(())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(v) = &self.view {
            let _ = umount2(v, MntFlags::MNT_DETACH);
        }
        if self.owned {
            let _ = umount2(&self.root, MntFlags::MNT_DETACH);
        }
    }
}

/// Gets the workspace of a starting sandbox ready while its image is
/// resolved: [`Preparing::start`] makes (on first use) and mounts moat's own
/// on a thread of its own (the copy, the loop device's attach and the mount
/// wait on the host's disk, not on the CPU), [`Preparing::finish`] gives it
/// to the sandbox user once that is known and binds it at `workspace`. No
/// limit applies to an operator's `--workspace DIR`, said by a warning
/// event. A plain directory with files (made before limits existed, or by
/// `moat restore --to`) is moved into a new image first; one that does not
/// fit stays a plain directory, unbounded, with a warning event. An image
/// made ephemeral (left by a `run --rm` that was killed) gets a journal
/// before a sandbox that keeps it mounts it.
pub struct Preparing {
    name: String,
    workspace: PathBuf,
    /// The staging thread's result (it goes on to refill the ready images,
    /// which nothing waits for). Received on drop: a mount made meanwhile
    /// is unmounted then.
    staged: Option<std::sync::mpsc::Receiver<Result<Staged, LimitError>>>,
}

/// The image mounted, not yet given to the sandbox's user nor bound.
struct Staged {
    m: Mounted,
    disk: Disk,
    /// The workspace was a plain directory with files: they move in.
    plain: bool,
}

impl Preparing {
    pub fn start(
        name: &str,
        home: &Path,
        workspace: &Path,
        owned: bool,
        fs_policy: &Filesystem,
        durability: Durability,
    ) -> Preparing {
        let (n, h, w) = (name.to_string(), home.to_path_buf(), workspace.to_path_buf());
        let (size, inodes) = (fs_policy.workspace_size_mib, fs_policy.workspace_inodes);
        let staged = owned.then(|| {
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::spawn(move || {
                let staged = stage(&n, &h, &w, size, inodes, durability);
                let made = staged.is_ok();
                let _ = tx.send(staged);
                // After the start has its image: ready images for the next
                // starts (a process that exits first cuts this short, which
                // leaves nothing half-made). A failed stage may have failed
                // making the template itself: not tried again here.
                if let Some(Ok(tmpl)) = made.then(|| template(size, inodes, durability)) {
                    if let Err(e) = super::workspace_pool::refill(&tmpl, copy_sparse) {
                        tracing::debug!(event = "workspace_pool_refill_failed", error = %e);
                    }
                }
            });
            rx
        });
        if !owned {
            tracing::warn!(event = "workspace_unlimited", sandbox = %name, path = %workspace.display(),
                reason = "operator directory (--workspace)", "the workspace has no size or inode limit");
        }
        Preparing { name: name.to_string(), workspace: workspace.to_path_buf(), staged }
    }

    /// Waits for the mount, gives the workspace to `uid`:`gid` and binds it;
    /// `None` where no limit applies.
    pub fn finish(mut self, (uid, gid): (u32, u32)) -> Result<Option<Mounted>, LimitError> {
        let Some(staged) = self.staged.take() else { return Ok(None) };
        let received = staged
            .recv()
            .map_err(|_| LimitError::Refused("preparing the workspace image: the thread panicked".into()))?;
        let Staged { mut m, disk, plain } = received?;
        let (name, workspace) = (&self.name, &self.workspace);
        chown(workspace, Some(uid), Some(gid)).map_err(io_err("chown workspace"))?;
        if plain {
            if let Err(why) = copy_tree(workspace, &m.data()) {
                drop(m);
                let _ = fs::remove_file(disk.image());
                tracing::warn!(event = "workspace_unlimited", sandbox = %name, path = %workspace.display(),
                    reason = %format!("a plain directory that does not fit the policy's image: {why}"),
                    "the workspace has no size or inode limit");
                return Ok(None);
            }
            discard_plain(workspace, uid, gid)?;
            tracing::info!(event = "workspace_moved", sandbox = %name, image = %disk.image().display(),
                "a plain workspace directory was moved into an image");
        }
        chown(m.data(), Some(uid), Some(gid)).map_err(io_err("chown workspace"))?;
        m.bind_view(workspace)?;
        Ok(Some(m))
    }
}

impl Drop for Preparing {
    fn drop(&mut self) {
        if let Some(staged) = self.staged.take() {
            let _ = staged.recv();
        }
    }
}

/// The first half of a start, on its own thread: the workspace directory,
/// the image (made if missing, a journal added if it is kept now) and its
/// mount.
fn stage(
    name: &str,
    home: &Path,
    workspace: &Path,
    size_mib: u64,
    inodes: u64,
    durability: Durability,
) -> Result<Staged, LimitError> {
    fs::DirBuilder::new().recursive(true).mode(0o700).create(workspace).map_err(io_err(workspace.display()))?;
    let disk = Disk::of(home);
    let mut plain = false;
    if !disk.exists() {
        plain = fs::read_dir(workspace).map_err(io_err(workspace.display()))?.next().is_some();
        disk.create(size_mib, inodes, durability)?;
    } else if durability == Durability::Kept && !has_journal(&disk.image())? {
        add_journal(&disk.image())?;
        tracing::info!(event = "workspace_journal_added", sandbox = %name, image = %disk.image().display(),
            "an image made for a --rm sandbox is kept now: it got a journal");
    }
    let size = fs::metadata(disk.image()).map_err(io_err(disk.image().display()))?.len();
    if size != size_mib << 20 {
        tracing::warn!(event = "workspace_limit_kept", sandbox = %name, image_mib = size >> 20,
            policy_mib = size_mib, "the workspace image keeps the size it was made with");
    }
    let m = disk.mount_as(durability)?;
    Ok(Staged { m, disk, plain })
}

/// Whether the ext4 image at `image` has a journal (superblock at 1024,
/// `s_feature_compat` at 0x5C, HAS_JOURNAL = 4; magic 0xEF53 at 0x38).
fn has_journal(image: &Path) -> Result<bool, LimitError> {
    use std::os::unix::fs::FileExt;
    let f = fs::File::open(image).map_err(io_err(image.display()))?;
    let mut sb = [0u8; 0x60];
    f.read_exact_at(&mut sb, 1024).map_err(io_err(format!("reading the superblock of {}", image.display())))?;
    if sb[0x38..0x3A] != [0x53, 0xEF] {
        return Err(LimitError::Refused(format!("{}: not an ext4 image", image.display())));
    }
    Ok(u32::from_le_bytes([sb[0x5C], sb[0x5D], sb[0x5E], sb[0x5F]]) & 4 != 0)
}

/// Adds a journal to the unmounted image (tune2fs writes it: the size
/// mke2fs would have chosen, 64 MiB for the default 10 GiB).
fn add_journal(image: &Path) -> Result<(), LimitError> {
    let out = Command::new("tune2fs")
        .args(["-O", "has_journal"])
        .arg(image)
        .env("PATH", "/usr/sbin:/sbin:/usr/bin:/bin")
        .output()
        .map_err(io_err("running tune2fs (install e2fsprogs)"))?;
    if out.status.success() {
        return Ok(());
    }
    Err(LimitError::Refused(format!(
        "adding a journal to {}: tune2fs failed: {}",
        image.display(),
        String::from_utf8_lossy(&out.stderr).trim()
    )))
}

/// Copies the tree under `from` into the directory `to` (owners, modes,
/// times, links, extended attributes and holes kept); on failure, the
/// copier's words.
fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    let out = Command::new("cp")
        .args(["-a", "--sparse=always", "--no-target-directory"])
        .arg(from.join("."))
        .arg(to)
        .env("PATH", "/usr/bin:/bin")
        .output()
        .map_err(|e| format!("running cp: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).lines().take(3).collect::<Vec<_>>().join("; "))
    }
}

/// Replaces the plain directory `workspace`, whose files are in the image
/// now, with an empty one (the mount point of the image's workspace).
fn discard_plain(workspace: &Path, uid: u32, gid: u32) -> Result<(), LimitError> {
    let old = workspace.with_file_name(format!(".workspace.moved.{}", std::process::id()));
    fs::rename(workspace, &old).map_err(io_err(workspace.display()))?;
    fs::DirBuilder::new().mode(0o700).create(workspace).map_err(io_err(workspace.display()))?;
    chown(workspace, Some(uid), Some(gid)).map_err(io_err("chown workspace"))?;
    fs::remove_dir_all(&old).map_err(io_err(old.display()))
}

/// Unmounts what a supervisor that died left mounted (before `moat rm`).
pub fn release(home: &Path, workspace: &Path) {
    let root = Disk::of(home).root();
    if matches!(mounted_device(&root), Ok(Some(_))) {
        let _ = umount2(workspace, MntFlags::MNT_DETACH);
        let _ = umount2(&root, MntFlags::MNT_DETACH);
    }
}

/// Whether `p` (an entry of a sandbox home) belongs to the workspace's image.
pub fn is_image_part(p: &Path) -> bool {
    p.file_name().is_some_and(|n| n == IMAGE || n == DISK)
}
