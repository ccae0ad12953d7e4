//! Whether all the code in a process came from its image: every executable
//! file mapping in `/proc/PID/maps` must lie on the sandbox's root mount (the
//! read-only image; the workspace, /tmp, /dev/shm, memfds and deleted files
//! are other mounts or no file at all), and the environment the process was
//! started with must hold none of the loader-redirecting variables in
//! `policies/loader-env.toml`. Guards against an agent borrowing an allowed
//! binary's network rights by running its own code inside it (LD_PRELOAD,
//! LD_AUDIT, an OpenSSL engine). What it does not see: code written into
//! anonymous executable memory (a JIT's, or an injected library that copied
//! itself there and unloaded) is reported, not judged here; a rule decides
//! (`jit`). The executable itself may live outside the image when a rule
//! names it by path: its hash is pinned on first use by `identity`.
#![forbid(unsafe_code)]
use serde::Deserialize;
use std::fs;
use std::io::Read;
use std::path::Path;

/// The reviewed list of loader-redirecting variables.
pub const LOADER_ENV_TOML: &str = include_str!("../../../policies/loader-env.toml");

/// Most bytes of /proc/PID/maps read (about 40,000 mappings); a process
/// with more is not judged and gets no rights.
const MAX_MAPS: u64 = 4 << 20;
/// Most bytes of /proc/PID/environ read (the kernel's own argument+env
/// limit is a quarter of the stack limit; 1 MiB is far beyond real use).
const MAX_ENVIRON: u64 = 1 << 20;
/// Most bytes of /proc/PID/mountinfo read.
const MAX_MOUNTINFO: u64 = 1 << 20;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    version: u32,
    var: Vec<Var>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Var {
    name: String,
    #[allow(dead_code)] // the reason is for the reviewer of the TOML
    why: String,
}

/// What is wrong with a process's code, in words for the refusal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Taint {
    /// A variable of the list is set in its environment.
    LoaderEnv(String),
    /// An executable mapping of a file outside the image.
    ForeignCode(String),
    /// Its maps or environment could not be read or were too large.
    Unreadable(String),
    /// Not checked: an ancestor while no rule passes access to children.
    Unchecked,
}

impl std::fmt::Display for Taint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Taint::LoaderEnv(v) => write!(f, "it was started with {v} set, which loads code from outside the image"),
            Taint::ForeignCode(p) => write!(f, "it runs code from outside the image ({p})"),
            Taint::Unreadable(w) => write!(f, "its code cannot be checked ({w})"),
            Taint::Unchecked => write!(f, "its code was not checked"),
        }
    }
}

/// The checks, with the variable list parsed once.
#[derive(Debug)]
pub struct Integrity {
    vars: Vec<String>,
    /// Off only for in-process tests: cargo runs test binaries with
    /// LD_LIBRARY_PATH set.
    check_env: bool,
}

/// The mount points of a sandbox's mount namespace, read at most once per
/// identification and only when a check needs them (kernels without
/// PROCMAP_QUERY).
#[derive(Debug, Default)]
pub struct Mounts(std::cell::OnceCell<Result<Vec<String>, Taint>>);

/// What the checks found in one process.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Findings {
    pub taint: Option<Taint>,
    /// It has anonymous executable memory (a JIT, or code that hid itself).
    pub anonymous_exec: bool,
}

impl Integrity {
    /// The embedded list; a defect in it is a build defect (a unit test parses it).
    pub fn builtin() -> Integrity {
        let vars = toml::from_str::<File>(LOADER_ENV_TOML)
            .map(|f| {
                debug_assert_eq!(f.version, 1);
                f.var.into_iter().map(|v| v.name).collect()
            })
            .unwrap_or_else(|e| {
                tracing::error!(event = "loader_env_invalid", error = %e, "policies/loader-env.toml does not parse");
                // Fail closed on the variables that matter most.
                ["LD_PRELOAD", "LD_LIBRARY_PATH", "LD_AUDIT", "OPENSSL_CONF"].map(String::from).to_vec()
            });
        Integrity { vars, check_env: true }
    }

    /// For clients in the test process itself (see `check_env`).
    pub fn without_env_check(mut self) -> Integrity {
        self.check_env = false;
        self
    }

    /// The mount points of `pid`'s mount namespace (every process of a
    /// sandbox shares it).
    fn mounts(&self, proc_root: &Path, pid: i32) -> Result<Vec<String>, Taint> {
        read_bounded(&proc_root.join(pid.to_string()).join("mountinfo"), MAX_MOUNTINFO)
            .map(|m| mount_points(&String::from_utf8_lossy(&m)))
            .map_err(|e| Taint::Unreadable(format!("mountinfo: {e}")))
    }

    /// Checks process `pid` (under `proc_root`) whose executable is `exe`
    /// (the path as the process's mount namespace sees it). `mounts` holds
    /// the namespace's mount points once read: only the text path needs them.
    pub fn check(&self, proc_root: &Path, pid: i32, exe: &str, mounts: &Mounts) -> Findings {
        let dir = proc_root.join(pid.to_string());
        let mut out = Findings::default();
        if self.check_env {
            match read_bounded(&dir.join("environ"), MAX_ENVIRON) {
                Ok(env) => out.taint = self.loader_var(&env).map(Taint::LoaderEnv),
                Err(e) => out.taint = Some(Taint::Unreadable(format!("environ: {e}"))),
            }
            if out.taint.is_some() {
                return out;
            }
        }
        match judge_vmas(&dir, &mut out) {
            Ok(()) => return out,
            // Kernels before 6.11 have no PROCMAP_QUERY: read the text.
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTTY | libc::EINVAL)) => {}
            Err(e) => {
                out.taint = Some(Taint::Unreadable(format!("maps: {e}")));
                return out;
            }
        }
        let mounts = match mounts.0.get_or_init(|| self.mounts(proc_root, pid)) {
            Ok(m) => m,
            Err(t) => {
                out.taint = Some(t.clone());
                return out;
            }
        };
        match read_bounded(&dir.join("maps"), MAX_MAPS) {
            Ok(m) => judge_maps(&String::from_utf8_lossy(&m), mounts, exe, &mut out),
            Err(e) => out.taint = Some(Taint::Unreadable(format!("maps: {e}"))),
        }
        out
    }

    /// The first listed variable set in a NUL-separated environment block.
    fn loader_var(&self, env: &[u8]) -> Option<String> {
        env.split(|&b| b == 0).find_map(|kv| {
            let name = kv.split(|&b| b == b'=').next()?;
            self.vars.iter().find(|v| v.as_bytes() == name).cloned()
        })
    }
}

/// Reads at most `max` bytes; more is an error, never a truncated verdict.
fn read_bounded(path: &Path, max: u64) -> std::io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    fs::File::open(path)?.take(max + 1).read_to_end(&mut buf)?;
    if buf.len() as u64 > max {
        return Err(std::io::Error::other(format!("larger than {max} bytes")));
    }
    Ok(buf)
}

/// Mount points (field 5 of each mountinfo line), unescaped.
fn mount_points(mountinfo: &str) -> Vec<String> {
    mountinfo.lines().filter_map(|l| l.split(' ').nth(4)).map(unescape).collect()
}

/// The kernel writes space, tab, newline and backslash in paths as `\ooo`.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c)) {
            out.push((b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount point a path lies under (the longest matching prefix).
fn mount_of<'a>(path: &str, mounts: &'a [String]) -> Option<&'a str> {
    mounts
        .iter()
        .filter(|m| {
            m.as_str() == "/"
                || path.strip_prefix(m.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
        })
        .max_by_key(|m| m.len())
        .map(String::as_str)
}

/// The kernel's own executable mappings (inode 0, no file); any other
/// nameless or `[anon:...]`-named executable mapping is anonymous memory.
const KERNEL_VMAS: &[&str] = &["[vdso]", "[vsyscall]", "[uprobes]", "[vectors]", "[sigpage]"];

/// Most executable mappings judged (the kernel's default max_map_count is
/// 65,530 mappings of any kind); a process with more gets no rights.
const MAX_EXEC_VMAS: usize = 65_536;

/// The same judgement as [`judge_maps`], from PROCMAP_QUERY: a file mapping
/// must be on the device of the process's root (the image's overlay), or be
/// its executable itself (same device and inode); paths are asked for only
/// to name a foreign mapping or tell the kernel's own from anonymous ones.
/// Reading the text of /proc/PID/maps makes the kernel build every path,
/// which is most of an identification's cost (BENCHMARKS.md).
fn judge_vmas(dir: &Path, out: &mut Findings) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    let maps = fs::File::open(dir.join("maps"))?;
    let vmas = crate::sys::exec_vmas(&maps, MAX_EXEC_VMAS)?;
    let root = fs::metadata(dir.join("root"))?.dev();
    let exe = fs::metadata(dir.join("exe"))?;
    for v in vmas {
        if v.inode == 0 && v.dev == (0, 0) {
            if out.anonymous_exec {
                continue; // already known: its name changes nothing
            }
            let name = crate::sys::vma_name(&maps, v.start)?;
            if !KERNEL_VMAS.contains(&name.as_str()) {
                out.anonymous_exec = true;
            }
            continue;
        }
        let dev = libc::makedev(v.dev.0, v.dev.1);
        if dev == root || (dev == exe.dev() && v.inode == exe.ino()) {
            continue;
        }
        let name =
            crate::sys::vma_name(&maps, v.start).unwrap_or_else(|e| format!("a mapping at {:#x} ({e})", v.start));
        out.taint = Some(Taint::ForeignCode(name));
        return Ok(());
    }
    Ok(())
}

/// Walks the executable mappings. A file mapping must lie on the root mount
/// (or be the executable itself, which a rule named); `[vdso]` and its kin
/// are the kernel's; anonymous ones are only reported.
fn judge_maps(maps: &str, mounts: &[String], exe: &str, out: &mut Findings) {
    // A library's mappings are consecutive lines: judge each path once.
    let mut last_ok: &str = "";
    for line in maps.lines() {
        // address perms offset dev inode [path]; the path may hold spaces.
        let mut f = line.splitn(6, ' ');
        let (Some(_), Some(perms), Some(_), Some(_), Some(inode)) = (f.next(), f.next(), f.next(), f.next(), f.next())
        else {
            continue;
        };
        if perms.as_bytes().get(2) != Some(&b'x') {
            continue;
        }
        let path = f.next().unwrap_or("").trim_start();
        if path.is_empty() {
            out.anonymous_exec = true;
            continue;
        }
        if inode == "0" && KERNEL_VMAS.contains(&path) {
            continue; // the kernel's own code
        }
        if inode == "0" && path.starts_with('[') {
            out.anonymous_exec = true; // [heap], [stack], [anon:NAME] made executable
            continue;
        }
        if path == last_ok {
            continue;
        }
        let raw = path;
        let path = if path.contains('\\') { unescape(path) } else { path.to_string() };
        let foreign = if path.ends_with(" (deleted)") || !path.starts_with('/') || path.starts_with("/memfd:") {
            true
        } else {
            path != exe && mount_of(&path, mounts) != Some("/")
        };
        if foreign {
            out.taint = Some(Taint::ForeignCode(path));
            return;
        }
        last_ok = raw;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mounts() -> Vec<String> {
        mount_points(
            "23 1 0:40 / / ro,relatime - overlay overlay ro\n\
             24 23 254:1 /ws /sandbox rw - ext4 /dev/vda rw\n\
             25 23 0:41 / /tmp rw - tmpfs tmpfs rw\n\
             26 23 0:42 / /dev/shm rw - tmpfs tmpfs rw\n\
             27 23 0:43 / /odd\\040dir rw - tmpfs tmpfs rw\n",
        )
    }

    fn judge(maps: &str) -> Findings {
        let mut f = Findings::default();
        judge_maps(maps, &mounts(), "/usr/bin/curl", &mut f);
        f
    }

    #[test]
    fn the_embedded_list_parses() {
        let f: File = toml::from_str(LOADER_ENV_TOML).unwrap();
        assert!(f.var.iter().any(|v| v.name == "LD_PRELOAD"));
        assert!(f.var.iter().all(|v| !v.why.is_empty()));
        let i = Integrity::builtin();
        assert_eq!(i.loader_var(b"HOME=/sandbox\0LD_PRELOAD=/x.so\0"), Some("LD_PRELOAD".into()));
        assert_eq!(i.loader_var(b"HOME=/sandbox\0XLD_PRELOAD=/x.so\0LD_PRELOADX=1\0"), None);
        assert_eq!(i.loader_var(b"OPENSSL_CONF=/sandbox/e.cnf"), Some("OPENSSL_CONF".into()));
    }

    #[test]
    fn image_code_passes_and_foreign_code_is_named() {
        let image = "5555-5556 r-xp 00000000 00:28 12 /usr/bin/curl\n\
                     7f00-7f01 r-xp 00000000 00:28 13 /usr/lib/x86_64-linux-gnu/libc.so.6\n\
                     7f01-7f02 rw-p 00000000 00:00 0 \n\
                     7ffd-7ffe r-xp 00000000 00:00 0                          [vdso]\n";
        assert_eq!(judge(image), Findings::default());
        for (bad, named) in [
            ("7f-80 r-xp 00000000 fe:01 99 /sandbox/evil.so", "/sandbox/evil.so"),
            ("7f-80 r-xp 00000000 00:29 99 /tmp/evil.so", "/tmp/evil.so"),
            ("7f-80 r-xp 00000000 00:2a 99 /dev/shm/x", "/dev/shm/x"),
            ("7f-80 r-xp 00000000 00:01 99 /memfd:x (deleted)", "/memfd:x (deleted)"),
            ("7f-80 r-xp 00000000 00:28 99 /usr/lib/gone.so (deleted)", "/usr/lib/gone.so (deleted)"),
            ("7f-80 r-xp 00000000 00:2b 99 /odd\\040dir/x.so", "/odd dir/x.so"),
            ("7f-80 r-xp 00000000 00:29 99 [fake]", "[fake]"),
        ] {
            let f = judge(&format!("{image}{bad}\n"));
            assert_eq!(f.taint, Some(Taint::ForeignCode(named.into())), "{bad}");
        }
        // A writable or data-only mapping of a workspace file is not code.
        assert_eq!(judge("7f-80 rw-p 00000000 fe:01 99 /sandbox/data.bin\n").taint, None);
        // The executable itself may be outside the image (a rule named it).
        let mut f = Findings::default();
        judge_maps("7f-80 r-xp 00000000 fe:01 99 /sandbox/bin/tool\n", &mounts(), "/sandbox/bin/tool", &mut f);
        assert_eq!(f.taint, None);
        // Anonymous executable memory is reported, not refused here, even
        // when it is named to look like the kernel's.
        for anon in [
            "7f-80 rwxp 00000000 00:00 0 \n",
            "7f-80 r-xp 00000000 00:00 0 [anon:vdso]\n",
            "7f-80 rwxp 00000000 00:00 0 [heap]\n",
        ] {
            let f = judge(anon);
            assert!(f.anonymous_exec && f.taint.is_none(), "{anon}");
        }
    }

    /// A python that maps a memfd, then anonymous memory, executable, and
    /// is judged at each step (through PROCMAP_QUERY where the kernel has it).
    #[test]
    fn a_live_process_with_foreign_and_anonymous_code_is_judged() {
        use std::io::{BufRead, BufReader, Write};
        let py = "import mmap, os, sys\n\
                  print('clean', flush=True); sys.stdin.readline()\n\
                  a = mmap.mmap(-1, 4096, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)\n\
                  print('anon', flush=True); sys.stdin.readline()\n\
                  fd = os.memfd_create('evil'); os.write(fd, b'\\xc3' * 4096)\n\
                  m = mmap.mmap(fd, 4096, prot=mmap.PROT_READ | mmap.PROT_EXEC, flags=mmap.MAP_PRIVATE)\n\
                  print('memfd', flush=True); sys.stdin.readline()\n";
        let mut child = std::process::Command::new("python3")
            .args(["-c", py])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut stdin = child.stdin.take().unwrap();
        let i = Integrity::builtin().without_env_check();
        let pid = child.id() as i32;
        let judge = || {
            let exe = fs::read_link(format!("/proc/{pid}/exe")).unwrap();
            i.check(Path::new("/proc"), pid, &exe.to_string_lossy(), &Mounts::default())
        };
        // python runs (its exec is done) once it has printed its first line:
        // opening its maps before that raced the exec under load.
        assert_eq!(lines.next().unwrap().unwrap(), "clean");
        // The kernel here answers PROCMAP_QUERY: the fast path is the one judged.
        let maps = fs::File::open(format!("/proc/{pid}/maps")).unwrap();
        let vmas = crate::sys::exec_vmas(&maps, MAX_EXEC_VMAS).expect("PROCMAP_QUERY (Linux 6.11+)");
        assert!(vmas.iter().any(|v| v.inode != 0), "{vmas:?}");
        let clean = judge();
        writeln!(stdin).unwrap();
        let mut step = |want: &str| {
            assert_eq!(lines.next().unwrap().unwrap(), want);
            let f = judge();
            writeln!(stdin).unwrap();
            f
        };
        assert_eq!(clean.taint, None, "{clean:?}");
        let anon = step("anon");
        assert!(anon.anonymous_exec && anon.taint.is_none(), "{anon:?}");
        let memfd = step("memfd");
        assert!(matches!(&memfd.taint, Some(Taint::ForeignCode(p)) if p.starts_with("/memfd:evil")), "{memfd:?}");
        let _ = child.wait();
    }

    #[test]
    fn this_process_is_judged_by_its_own_maps() {
        let me = fs::read_link("/proc/self/exe").unwrap();
        let (i, pid) = (Integrity::builtin().without_env_check(), std::process::id() as i32);
        let f = i.check(Path::new("/proc"), pid, &me.to_string_lossy(), &Mounts::default());
        assert!(!matches!(f.taint, Some(Taint::Unreadable(_))), "{f:?}");
    }
}
