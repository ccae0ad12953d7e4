//! A sandbox's root filesystem: the image's cached layers plus a small
//! per-sandbox top layer (mount points, /etc/hosts), composed read-only with
//! overlayfs inside the launcher's private mount namespace. Guards against
//! the agent changing the image (no upper layer: the kernel refuses writes),
//! against mounts outliving the sandbox (they exist only in namespaces that
//! die with it), and against reading the host through an image's symlinks.
#![forbid(unsafe_code)]
use crate::layers::{read_no_follow, LayerCache, LayerError};
use moat_builder::oci::{ImageConfig, Manifest};
use moat_builder::store::NamedImage;
use moat_builder::{Digest, Store};
use nix::mount::{mount, MntFlags, MsFlags};
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error(transparent)]
    Layer(#[from] LayerError),
    #[error(transparent)]
    Store(#[from] moat_builder::store::StoreError),
    #[error("image {0}: the config lists {1} diff_ids for {2} layers")]
    LayerCount(String, usize, usize),
    #[error("{path}")]
    Io { path: PathBuf, source: io::Error },
    #[error("image {image}: {message}")]
    User { image: String, message: String },
    #[error("mounting overlayfs on {target} (lowerdir={lower})")]
    Mount { target: PathBuf, lower: String, source: io::Error },
    #[error("mounting {what}")]
    Workspace { what: String, source: io::Error },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RootfsError + '_ {
    move |source| RootfsError::Io { path: path.to_path_buf(), source }
}

/// An image resolved from the store with every layer unpacked in the cache,
/// or a root filesystem another runtime engine prepared (containerd's
/// snapshot: no manifest, no image config).
#[derive(Debug, Clone)]
pub struct PreparedImage {
    pub reference: String,
    pub name: String,
    /// None: not an image of moat's store.
    pub manifest_digest: Option<Digest>,
    pub config: ImageConfig,
    /// Unpacked layer directories, bottom layer first.
    pub layers: Vec<PathBuf>,
}

/// The user a sandbox runs as, from the image's /etc/passwd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SandboxUser {
    pub uid: u32,
    pub gid: u32,
    pub home: String,
}

impl PreparedImage {
    /// Resolves `reference` in the store and makes sure every layer is in the cache.
    pub fn prepare(store: &Store, reference: &str, cache: &LayerCache) -> Result<PreparedImage, RootfsError> {
        PreparedImage::prepare_named(store, reference, store.resolve(reference)?, cache)
    }

    /// [`PreparedImage::prepare`] of an image already resolved (`named`, which
    /// `reference` named): exactly that manifest, whatever the name says now.
    pub fn prepare_named(
        store: &Store,
        reference: &str,
        named: NamedImage,
        cache: &LayerCache,
    ) -> Result<PreparedImage, RootfsError> {
        let manifest: Manifest = store.manifest(&named.manifest.digest)?;
        let config = store.config(&manifest)?;
        if config.rootfs.diff_ids.len() != manifest.layers.len() {
            return Err(RootfsError::LayerCount(reference.into(), config.rootfs.diff_ids.len(), manifest.layers.len()));
        }
        let layers = manifest
            .layers
            .iter()
            .zip(&config.rootfs.diff_ids)
            .map(|(l, diff)| cache.ensure(store, l, diff))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(PreparedImage {
            reference: reference.into(),
            name: named.name,
            manifest_digest: Some(named.manifest.digest),
            config,
            layers,
        })
    }

    /// A root filesystem made of directories another engine prepared,
    /// bottom first (containerd's snapshot layers, or a `--rootfs` tree).
    /// They are only read: the sandbox's writes go to its own top layer.
    pub fn from_dirs(reference: &str, layers: Vec<PathBuf>) -> PreparedImage {
        PreparedImage {
            reference: reference.into(),
            name: reference.into(),
            manifest_digest: None,
            config: ImageConfig::default(),
            layers,
        }
    }

    /// Looks up `user` (a name, `uid`, or `uid:gid`) in the image; refuses root.
    pub fn user(&self, user: &str) -> Result<SandboxUser, RootfsError> {
        let err = |message: String| RootfsError::User { image: self.reference.clone(), message };
        let passwd = self.read_file("etc/passwd").map_err(|e| err(format!("/etc/passwd: {e}")))?;
        let passwd = String::from_utf8_lossy(passwd.as_deref().unwrap_or_default()).into_owned();
        let (name_part, group_part) = match user.split_once(':') {
            Some((u, g)) => (u, Some(g)),
            None => (user, None),
        };
        let entry = passwd
            .lines()
            .map(|l| l.split(':').collect::<Vec<_>>())
            .find(|f| f.len() >= 7 && (f[0] == name_part || f[2] == name_part));
        let (uid, mut gid, home) = match (entry, name_part.parse::<u32>()) {
            (Some(f), _) => {
                let uid = f[2].parse().map_err(|_| err(format!("/etc/passwd: bad uid for {name_part:?}")))?;
                let gid = f[3].parse().map_err(|_| err(format!("/etc/passwd: bad gid for {name_part:?}")))?;
                (uid, gid, f[5].to_string())
            }
            (None, Ok(uid)) => (uid, uid, "/sandbox".to_string()),
            (None, Err(_)) => {
                return Err(err(format!(
                    "user {name_part:?} is not in the image's /etc/passwd (the image must provide the sandbox user)"
                )))
            }
        };
        if let Some(g) = group_part {
            gid = g.parse().map_err(|_| err(format!("group {g:?} must be numeric")))?;
        }
        if uid == 0 {
            return Err(err(format!("user {user:?} is uid 0: sandboxes never run as root")));
        }
        Ok(SandboxUser { uid, gid, home })
    }

    /// A file from the topmost layer that has it (never following symlinks).
    pub(crate) fn read_file(&self, rel: &str) -> io::Result<Option<Vec<u8>>> {
        for layer in self.layers.iter().rev() {
            if let Some(bytes) = read_no_follow(layer, rel)? {
                return Ok(Some(bytes));
            }
        }
        Ok(None)
    }
}

/// Paths the runtime mounts over; the top layer provides them so the
/// read-only rootfs needs no writes at start.
pub(crate) const MOUNT_POINTS: &[&str] = &["proc", "dev", "sys", "tmp"];

/// Writes the per-sandbox top layer: mount points, the workspace directory,
/// `/etc/hosts` (mapping `inference.local` and `moat.local` to the gateway)
/// and `/etc/resolv.conf` (the supervisor's DNS responder, `RESOLV_CONF`).
///
/// `dir` may be a copy of an image (`moat bundle`): a symlink at any path
/// touched here is replaced, never followed, so the image cannot redirect
/// these writes to the host.
pub(crate) fn write_top_layer(
    dir: &Path,
    workspace: &str,
    hosts: &str,
    accounts: &[(&str, &str)],
) -> Result<(), RootfsError> {
    let unlink_symlink = |p: &Path| -> Result<(), RootfsError> {
        match fs::symlink_metadata(p) {
            Ok(m) if m.file_type().is_symlink() => fs::remove_file(p).map_err(io_err(p)),
            _ => Ok(()),
        }
    };
    let mk = |p: &Path, mode: u32| -> Result<(), RootfsError> {
        let mut cur = dir.to_path_buf();
        for c in p.strip_prefix(dir).unwrap_or(p).components() {
            cur.push(c);
            unlink_symlink(&cur)?;
        }
        fs::DirBuilder::new().recursive(true).mode(mode).create(p).map_err(io_err(p))?;
        fs::set_permissions(p, fs::Permissions::from_mode(mode)).map_err(io_err(p))
    };
    mk(dir, 0o755)?;
    for m in MOUNT_POINTS {
        // runc gives a tmpfs the mode of the directory it covers.
        mk(&dir.join(m), if *m == "tmp" { 0o1777 } else { 0o755 })?;
    }
    mk(&dir.join(workspace.trim_start_matches('/')), 0o755)?;
    mk(&dir.join("etc"), 0o755)?;
    let fixed = [("hosts", hosts), ("resolv.conf", RESOLV_CONF)];
    for (name, text) in fixed.into_iter().chain(accounts.iter().copied()) {
        let h = dir.join("etc").join(name);
        unlink_symlink(&h)?;
        fs::write(&h, text).map_err(io_err(&h))?;
        fs::set_permissions(&h, fs::Permissions::from_mode(0o644)).map_err(io_err(&h))?;
    }
    Ok(())
}

/// The image's `/etc/passwd` or `/etc/group` with the sandbox user's (or
/// its group's) id, `image_id`, replaced by the host id it runs as, so
/// names resolve inside. Lines are matched on their id field (the third).
pub(crate) fn remap_accounts(text: &str, image_id: u32, host_id: u32) -> String {
    let mut out = String::with_capacity(text.len() + 16);
    for line in text.lines() {
        let mut f: Vec<&str> = line.split(':').collect();
        let id = host_id.to_string();
        if f.len() >= 4 && f[2] == image_id.to_string() {
            f[2] = &id;
            if f.len() >= 7 && f[3] == image_id.to_string() {
                f[3] = &id; // passwd: the primary group too
            }
            out.push_str(&f.join(":"));
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    out
}

/// Mounts the workspace `map.source` at `map.staging` (in the launcher's
/// own mount namespace) so that the files its owner owns on disk are the
/// sandbox uid's inside, and what the sandbox writes is the owner's on disk.
/// The source is taken from the mount namespace of `host_pid` (the
/// supervisor): mounts it made after the launcher's namespace was split off
/// (a size-limited workspace) are there, not here.
pub(crate) fn mount_workspace(
    map: &crate::launch::WorkspaceMap,
    host_pid: u32,
    userns: io::Result<crate::launch::sys::UsernsHelper>,
) -> Result<(), RootfsError> {
    use nix::sched::{setns, CloneFlags};
    let fail = |what: String| move |source: io::Error| RootfsError::Workspace { what, source };
    let uid_map = format!("{} {} 1\n", map.owner.0, map.sandbox.0);
    let gid_map = format!("{} {} 1\n", map.owner.1, map.sandbox.1);
    let ns = userns
        .and_then(|h| h.finish(&uid_map, &gid_map))
        .map_err(fail("a user namespace for the workspace's id mapping".into()))?;
    let own = fs::File::open("/proc/self/ns/mnt").map_err(fail("this mount namespace".into()))?;
    // setns resets the working directory to the namespace's root.
    let cwd = std::env::current_dir().map_err(fail("the working directory".into()))?;
    let host =
        fs::File::open(format!("/proc/{host_pid}/ns/mnt")).map_err(fail("the supervisor's mount namespace".into()))?;
    setns(&host, CloneFlags::CLONE_NEWNS)
        .map_err(|e| fail("entering the supervisor's mount namespace".into())(e.into()))?;
    let tree = crate::launch::sys::idmapped_clone(&map.source, std::os::fd::AsFd::as_fd(&ns));
    setns(&own, CloneFlags::CLONE_NEWNS)
        .map_err(|e| fail("returning to the launcher's mount namespace".into())(e.into()))?;
    std::env::set_current_dir(&cwd).map_err(fail(cwd.display().to_string()))?;
    let tree = tree.map_err(fail(format!(
        "{} as an idmapped mount (needs a filesystem that supports them: ext4, xfs, btrfs, tmpfs)",
        map.source.display()
    )))?;
    crate::launch::sys::attach(tree, &map.staging).map_err(fail(format!("the workspace at {}", map.staging.display())))
}

/// Where the sandbox finds the gateway's CA: alone, and appended to the
/// image's own bundle (so passthrough TLS keeps verifying real servers).
pub(crate) const CA_FILE: &str = "/etc/moat/ca.pem";
pub(crate) const CA_BUNDLE: &str = "/etc/moat/ca-bundle.pem";
/// Variables that point common TLS stacks at the bundle (NODE_EXTRA_CA_CERTS adds to Node's own).
pub(crate) const CA_ENV: &[(&str, &str)] = &[
    ("SSL_CERT_FILE", CA_BUNDLE),
    ("REQUESTS_CA_BUNDLE", CA_BUNDLE),
    ("CURL_CA_BUNDLE", CA_BUNDLE),
    ("GIT_SSL_CAINFO", CA_BUNDLE),
    ("NODE_EXTRA_CA_CERTS", CA_FILE),
];

/// Where TLS stacks look for the system's CA bundle (Go's list, plus
/// OpenSSL's default file on Debian and Fedora). Each one the image has is
/// served with the gateway's CA appended, so a client with no CA variable
/// trusts the gateway as it trusts the image's roots.
pub(crate) const SYSTEM_BUNDLES: &[&str] = &[
    "etc/ssl/certs/ca-certificates.crt",                // Debian, Ubuntu, Alpine, Arch
    "etc/pki/tls/certs/ca-bundle.crt",                  // Fedora, RHEL
    "etc/ssl/ca-bundle.pem",                            // openSUSE
    "etc/pki/tls/cacert.pem",                           // OpenELEC
    "etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem", // Fedora, RHEL (the file the others link to)
    "etc/ssl/cert.pem",                                 // Alpine, LibreSSL
    "usr/lib/ssl/cert.pem",                             // OpenSSL's default file on Debian
    "etc/pki/tls/cert.pem",                             // OpenSSL's default file on Fedora
];

/// The most bytes of one image bundle read (Debian's is about 220 KiB).
const MAX_BUNDLE: u64 = 4 << 20;

/// Writes the gateway CA into the top layer `dir`: `CA_FILE`; `CA_BUNDLE`
/// = the image's Debian bundle (if it has one) followed by the CA; and at
/// each of `SYSTEM_BUNDLES` the image has, its own bundle followed by the
/// CA. The image is read through its layers without following any link
/// out of it: links are resolved inside the image.
pub(crate) fn write_trust(dir: &Path, layers_top_first: &[PathBuf], ca_pem: &str) -> Result<(), RootfsError> {
    let image = ImageView(layers_top_first);
    let with_ca = |own: &[u8]| {
        let mut b = String::from_utf8_lossy(own).into_owned();
        if !b.is_empty() && !b.ends_with('\n') {
            b.push('\n');
        }
        b.push_str(ca_pem);
        b
    };
    // Regular files first: a link to one of them keeps leading there.
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    let mut links: Vec<(String, String, PathBuf)> = Vec::new();
    for rel in SYSTEM_BUNDLES {
        match image.lookup(rel).map_err(io_err(&dir.join(rel)))? {
            Found::File(host) => files.push((rel.to_string(), host)),
            Found::Link(_) => {
                if let Some((target, host)) = image.resolve(rel).map_err(io_err(&dir.join(rel)))? {
                    links.push((rel.to_string(), target, host));
                }
            }
            Found::Dir | Found::Absent => {}
        }
    }
    let mut serve: Vec<(String, PathBuf)> = files.clone();
    for (rel, target, host) in links {
        if !files.iter().any(|(f, _)| *f == target) {
            serve.push((rel, host)); // a link to a bundle not served: a copy hides it
        }
    }
    let mut debian = String::new();
    for (rel, host) in &serve {
        let own = read_bounded(host).map_err(io_err(host))?;
        let text = with_ca(&own);
        if rel == SYSTEM_BUNDLES[0] {
            debian = text.clone();
        }
        write_file(&dir.join(rel), &text)?;
    }
    if debian.is_empty() {
        debian = with_ca(b"");
    }
    write_file(&dir.join(CA_FILE.trim_start_matches('/')), ca_pem)?;
    write_file(&dir.join(CA_BUNDLE.trim_start_matches('/')), &debian)
}

/// Writes a 0644 file in the top layer, making its directories (0755).
fn write_file(p: &Path, text: &str) -> Result<(), RootfsError> {
    if let Some(parent) = p.parent() {
        fs::DirBuilder::new().recursive(true).mode(0o755).create(parent).map_err(io_err(parent))?;
    }
    fs::write(p, text).map_err(io_err(p))?;
    fs::set_permissions(p, fs::Permissions::from_mode(0o644)).map_err(io_err(p))
}

/// Reads at most `MAX_BUNDLE` bytes of a layer's regular file, never through a link.
fn read_bounded(p: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(p)?;
    let mut v = Vec::new();
    f.take(MAX_BUNDLE + 1).read_to_end(&mut v)?;
    if v.len() as u64 > MAX_BUNDLE {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("a CA bundle larger than {MAX_BUNDLE} bytes")));
    }
    Ok(v)
}

/// What a path is in the image (its layers merged, topmost first).
#[derive(Debug, PartialEq)]
enum Found {
    /// A regular file, at this path on the host (inside a layer).
    File(PathBuf),
    /// A symbolic link, with its target.
    Link(PathBuf),
    Dir,
    /// Not there (or deleted by a whiteout, or under something not a directory).
    Absent,
}

/// An image's layers, read as the sandbox sees them, without following links.
struct ImageView<'a>(&'a [PathBuf]);

impl ImageView<'_> {
    /// What `rel` (no `.`, `..` or links among its parents) is in the image.
    fn lookup(&self, rel: &str) -> io::Result<Found> {
        let comps: Vec<&str> = rel.split('/').filter(|c| !c.is_empty()).collect();
        for layer in self.0 {
            let mut cur = layer.clone();
            for (i, c) in comps.iter().enumerate() {
                cur.push(c);
                let m = match fs::symlink_metadata(&cur) {
                    Ok(m) => m,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => break, // maybe in a lower layer
                    Err(e) => return Err(e),
                };
                let last = i + 1 == comps.len();
                let t = m.file_type();
                if last {
                    return Ok(if t.is_file() {
                        Found::File(cur)
                    } else if t.is_symlink() {
                        Found::Link(fs::read_link(&cur)?)
                    } else if t.is_dir() {
                        Found::Dir
                    } else {
                        Found::Absent // a whiteout (0/0 device) or something no bundle is
                    });
                }
                if !t.is_dir() {
                    // A parent that is a link or a file here hides lower layers'.
                    return Ok(Found::Absent);
                }
            }
        }
        Ok(Found::Absent)
    }

    /// Follows `rel` through links inside the image (at most 16): the path
    /// it ends at and that regular file's place on the host.
    fn resolve(&self, rel: &str) -> io::Result<Option<(String, PathBuf)>> {
        let mut todo: std::collections::VecDeque<String> =
            rel.split('/').filter(|c| !c.is_empty()).map(str::to_string).collect();
        let mut done: Vec<String> = Vec::new();
        let mut hops = 0;
        while let Some(c) = todo.pop_front() {
            match c.as_str() {
                "." => continue,
                ".." => {
                    done.pop();
                    continue;
                }
                _ => done.push(c),
            }
            let path = done.join("/");
            match self.lookup(&path)? {
                Found::Absent => return Ok(None),
                Found::Dir if !todo.is_empty() => {}
                Found::File(host) if todo.is_empty() => return Ok(Some((path, host))),
                Found::Dir | Found::File(_) => return Ok(None),
                Found::Link(target) => {
                    hops += 1;
                    if hops > 16 {
                        return Ok(None);
                    }
                    done.pop();
                    if target.is_absolute() {
                        done.clear();
                    }
                    let t = target.to_string_lossy().into_owned();
                    for part in t.split('/').filter(|p| !p.is_empty()).rev() {
                        todo.push_front(part.to_string());
                    }
                }
            }
        }
        Ok(None)
    }
}

/// The sandbox's /etc/resolv.conf: the supervisor's DNS responder inside
/// the netns (`gateway::dns`), which answers every name from the reserved
/// range and asks no one else. No search domains: a name means itself.
pub(crate) const RESOLV_CONF: &str = "nameserver 127.0.0.53\noptions edns0\n";

/// The sandbox's /etc/hosts: the gateway listens on 127.0.0.1 inside the netns.
pub(crate) fn hosts_file(hostname: &str) -> String {
    format!("127.0.0.1\tlocalhost {hostname}\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.0.1\tinference.local moat.local\n")
}

/// Mounts the tmpfs that holds the per-sandbox top layer on `target`. Call
/// only in a private mount namespace (the launcher's): the layer then exists
/// nowhere else and vanishes with the sandbox, leaving nothing to delete.
pub(crate) fn mount_top_layer(target: &Path) -> Result<(), RootfsError> {
    let mount_err =
        |source| RootfsError::Mount { target: target.to_path_buf(), lower: "tmpfs (top layer)".into(), source };
    // Room for a large CA bundle; the sandbox cannot write here (read-only overlay).
    let opts = "size=16m,nr_inodes=4096,mode=0755";
    let flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
    mount(Some("moat-top"), target, Some("tmpfs"), flags, Some(opts)).map_err(|e| mount_err(e.into()))
}

/// Mounts the read-only overlay of `lowers` (topmost first) on `target`.
/// Call only in a private mount namespace (the launcher's). Paths under
/// `cache_dir` are passed relative to it to keep the option string short
/// (an engine's snapshot dirs are not under it, and it may not exist).
pub(crate) fn mount_overlay(target: &Path, lowers: &[PathBuf], cache_dir: &Path) -> Result<(), RootfsError> {
    let cached = lowers.iter().any(|l| l.starts_with(cache_dir));
    let rel: Vec<String> = lowers
        .iter()
        .map(|l| l.strip_prefix(cache_dir).map(|r| r.display().to_string()).unwrap_or_else(|_| l.display().to_string()))
        .collect();
    let lower = rel.join(":");
    let mount_err = |source| RootfsError::Mount { target: target.to_path_buf(), lower: lower.clone(), source };
    if cached {
        std::env::set_current_dir(cache_dir).map_err(io_err(cache_dir))?;
    }
    let none = None::<&str>;
    if lowers.len() == 1 {
        // overlayfs needs two lowers without an upper; one layer is a read-only bind.
        mount(Some(&lowers[0]), target, none, MsFlags::MS_BIND, none).map_err(|e| mount_err(e.into()))?;
        let flags = MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY;
        mount(none, target, none, flags, none).map_err(|e| mount_err(e.into()))?;
    } else {
        let opts = format!("lowerdir={lower}");
        mount(Some("overlay"), target, Some("overlay"), MsFlags::MS_RDONLY, Some(opts.as_str()))
            .map_err(|e| mount_err(e.into()))?;
    }
    let _ = std::env::set_current_dir("/");
    Ok(())
}

/// Enters a new mount namespace in which nothing propagates back to the host.
/// The calling process must be single-threaded.
pub(crate) fn private_mount_namespace() -> io::Result<()> {
    // Affects only this (single-threaded) process.
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)?;
    let none = None::<&str>;
    mount(none, "/", none, MsFlags::MS_REC | MsFlags::MS_PRIVATE, none)?;
    Ok(())
}

/// Detaches, in this (private) mount namespace, every mount at or below
/// `dir`: the copies of other sandboxes' workspace mounts the namespace
/// took from the host when it was made. Kept, a copy holds that
/// workspace's loop device, and with it the image's lock, for as long as
/// this launcher lives: the other sandbox's restart and `moat backup` then
/// wait for this one to end. The launcher reaches its own workspace through
/// the supervisor's namespace (`mount_workspace`), never through these.
pub(crate) fn drop_mounts_below(dir: &Path) -> io::Result<()> {
    let info = fs::read_to_string("/proc/self/mountinfo")?;
    let mut points: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape_mountinfo(p)))
        .filter(|p| p.starts_with(dir))
        .collect();
    // Deepest first: a bind below a mount goes before the mount.
    points.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    points.dedup();
    for p in points {
        let _ = nix::mount::umount2(&p, MntFlags::MNT_DETACH);
    }
    Ok(())
}

/// A mountinfo path field: spaces, tabs, newlines and `\` are written as
/// `\040`-style octal escapes.
fn unescape_mountinfo(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            let v = u32::from(b[i + 1] - b'0') * 64 + u32::from(b[i + 2] - b'0') * 8 + u32::from(b[i + 3] - b'0');
            out.push((v & 0xff) as u8);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
#[test]
fn mountinfo_escapes_are_read() {
    assert_eq!(unescape_mountinfo(r"/a\040b/c\134d\011"), "/a b/c\\d\t");
    assert_eq!(unescape_mountinfo(r"/x\7"), r"/x\7");
}

/// Unmounts `target` (detaching it if busy).
pub(crate) fn unmount(target: &Path) {
    let _ = nix::mount::umount2(target, MntFlags::MNT_DETACH);
}
