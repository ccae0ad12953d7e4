//! The deterministic stand-ins for what maintainer scripts would have done and
//! the image needs (moat never runs package scripts, so a package cannot run
//! code at build time): dpkg status database, CA bundle, alternatives,
//! /etc/shells, base-files and base-passwd copies. Every order-dependent input
//! is sorted so the output is reproducible.
#![forbid(unsafe_code)]
use super::extract::{merge_usr, DebContents};
use super::{DebianError, LockedPackage};
use crate::layer::tree::{clean_path, Content, Entry, Kind, Tree};
use md5::{Digest as _, Md5};
use std::collections::{BTreeMap, BTreeSet};

/// Bump when the fix-up output changes for the same packages: it is part of
/// every Debian layer key.
pub(crate) const FIXUP_VERSION: &str = "moat-debian-fixups-1";

/// Path of moat's package manifest inside the image (read by `moat sbom`).
pub const SBOM_DATA: &str = "var/lib/dpkg/moat-packages.json";

/// Alternatives moat sets up (bookworm's maintainer scripts): name, link,
/// candidate targets in priority order with their priority. The first
/// candidate present wins; a link a package ships as a real file is left alone.
/// (alternative name, link, candidates (target, priority) in preference order)
type Alternative = (&'static str, &'static str, &'static [(&'static str, u32)]);
const ALTERNATIVES: &[Alternative] = &[
    ("awk", "/usr/bin/awk", &[("/usr/bin/gawk", 10), ("/usr/bin/mawk", 5), ("/usr/bin/original-awk", 0)]),
    ("nawk", "/usr/bin/nawk", &[("/usr/bin/gawk", 10), ("/usr/bin/mawk", 5), ("/usr/bin/original-awk", 0)]),
    ("which", "/usr/bin/which", &[("/usr/bin/which.debianutils", 0)]),
    ("js", "/usr/bin/js", &[("/usr/bin/nodejs", 50)]),
    ("pager", "/usr/bin/pager", &[("/usr/bin/less", 77), ("/usr/bin/more", 50)]),
    ("rmt", "/usr/sbin/rmt", &[("/usr/sbin/rmt-tar", 50)]),
    ("editor", "/usr/bin/editor", &[("/usr/bin/vim.basic", 30), ("/usr/bin/nano", 40), ("/usr/bin/vim.tiny", 15)]),
    ("vi", "/usr/bin/vi", &[("/usr/bin/vim.basic", 30), ("/usr/bin/vim.tiny", 15)]),
];

struct All<'a> {
    files: BTreeMap<&'a str, &'a Entry>,
}

impl<'a> All<'a> {
    fn bytes(&self, path: &str) -> Option<&'a [u8]> {
        match self.files.get(path).map(|e| &e.kind) {
            Some(Kind::File { content: Content::Bytes(b), .. }) => Some(b.as_slice()),
            Some(Kind::Hardlink(t)) => self.bytes(t),
            _ => None,
        }
    }
    fn has(&self, path: &str) -> bool {
        self.files.contains_key(path)
    }
}

fn gid_of(group_master: Option<&[u8]>, name: &str, fallback: u32) -> u32 {
    let text = group_master.map(String::from_utf8_lossy).unwrap_or_default();
    text.lines()
        .find_map(|l| {
            let f: Vec<&str> = l.split(':').collect();
            (f.len() >= 3 && f[0] == name).then(|| f[2].parse().ok()).flatten()
        })
        .unwrap_or(fallback)
}

fn md5_hex(b: &[u8]) -> String {
    hex::encode(Md5::digest(b))
}

/// The dpkg info name: `pkg:arch` for `Multi-Arch: same`, else `pkg`.
fn info_name(pkg: &LockedPackage, control: &str) -> String {
    let same = control
        .lines()
        .any(|l| l.split_once(':').is_some_and(|(k, v)| k.eq_ignore_ascii_case("Multi-Arch") && v.trim() == "same"));
    if same {
        format!("{}:{}", pkg.name, pkg.architecture)
    } else {
        pkg.name.clone()
    }
}

/// One status stanza: the package's control fields with `Status` after
/// `Package` and `Conffiles` (with md5 of the shipped file) at the end.
fn status_stanza(c: &DebContents, all: &All) -> String {
    let mut out = String::new();
    for line in c.control.trim_end().lines() {
        out.push_str(line);
        out.push('\n');
        if line.starts_with("Package:") {
            out.push_str("Status: install ok installed\n");
        }
    }
    let conf: Vec<String> = c
        .conffiles
        .iter()
        .filter_map(|cf| {
            let p = cf.split_whitespace().next()?;
            let merged = merge_usr(&clean_path(p).ok()?);
            let md5 = all.bytes(&merged).map(md5_hex).unwrap_or_else(|| "newconffile".into());
            Some(format!(" {p} {md5}\n"))
        })
        .collect();
    if !conf.is_empty() {
        out.push_str("Conffiles:\n");
        conf.iter().for_each(|l| out.push_str(l));
    }
    out
}

/// The first paragraph `License:` of a machine-readable copyright file
/// (the `Files: *` stanza), or `None` for free-form files.
pub(crate) fn copyright_license(text: &str) -> Option<String> {
    if !text.starts_with("Format:") {
        return None;
    }
    let paras = super::control::paragraphs(text).ok()?;
    let p = paras
        .iter()
        .find(|p| p.get("Files").is_some_and(|f| f.split_whitespace().any(|x| x == "*")))
        .or_else(|| paras.iter().find(|p| p.get("Files").is_some()))?;
    p.get("License").and_then(|l| l.lines().next()).map(|l| l.trim().to_string()).filter(|l| !l.is_empty())
}

/// Builds the fix-up layer from every package of the lock (in lock order).
pub(crate) fn fixup_tree(pkgs: &[(&LockedPackage, &DebContents)]) -> Result<Tree, DebianError> {
    let mut all = All { files: BTreeMap::new() };
    for (_, c) in pkgs {
        for (p, e) in &c.entries {
            all.files.insert(p.as_str(), e);
        }
    }
    let mut t = Tree::new();
    let ins = |t: &mut Tree, e: Entry| t.insert(e).map_err(DebianError::Tree);
    let file = |path: &str, body: Vec<u8>, mode: u32, uid: u32, gid: u32| {
        let mut e = Entry::file(path, body, mode);
        e.uid = uid;
        e.gid = gid;
        e
    };
    let group_master = all.bytes("usr/share/base-passwd/group.master");
    let (g_staff, g_mail, g_utmp, g_shadow) = (
        gid_of(group_master, "staff", 50),
        gid_of(group_master, "mail", 8),
        gid_of(group_master, "utmp", 43),
        gid_of(group_master, "shadow", 42),
    );

    // dpkg database.
    let mut status = String::new();
    let mut sbom = Vec::new();
    for (p, c) in pkgs {
        status.push_str(&status_stanza(c, &all));
        status.push('\n');
        let info = info_name(p, &c.control);
        let mut list = String::from("/.\n");
        for l in &c.list {
            list.push_str(l);
            list.push('\n');
        }
        ins(&mut t, Entry::file(&format!("var/lib/dpkg/info/{info}.list"), list, 0o644))?;
        if let Some(m) = &c.md5sums {
            ins(&mut t, Entry::file(&format!("var/lib/dpkg/info/{info}.md5sums"), m.clone(), 0o644))?;
        }
        if !c.conffiles.is_empty() {
            ins(
                &mut t,
                Entry::file(&format!("var/lib/dpkg/info/{info}.conffiles"), c.conffiles.join("\n") + "\n", 0o644),
            )?;
        }
        let license = all
            .bytes(&format!("usr/share/doc/{}/copyright", p.name))
            .and_then(|b| copyright_license(&String::from_utf8_lossy(b)));
        let field = |k: &str| {
            c.control.lines().find_map(|l| {
                l.split_once(':').filter(|(x, _)| x.eq_ignore_ascii_case(k)).map(|(_, v)| v.trim().to_string())
            })
        };
        sbom.push(serde_json::json!({
            "name": p.name, "version": p.version, "architecture": p.architecture, "sha256": p.sha256, "size": p.size,
            "source": field("Source").map(|s| s.split_whitespace().next().unwrap_or("").to_string()).unwrap_or_else(|| p.name.clone()),
            "maintainer": field("Maintainer"), "homepage": field("Homepage"), "license": license, "depends": p.depends,
        }));
    }
    ins(&mut t, Entry::file("var/lib/dpkg/status", status, 0o644))?;
    ins(&mut t, Entry::file("var/lib/dpkg/info/format", "1\n", 0o644))?;
    ins(&mut t, Entry::file("var/lib/dpkg/available", "", 0o644))?;
    for d in ["alternatives", "info", "parts", "triggers", "updates"] {
        ins(&mut t, Entry::dir(&format!("var/lib/dpkg/{d}"), 0o755, 0, 0))?;
    }
    let sbom_bytes = crate::cjson::to_vec(&serde_json::Value::Array(sbom))
        .map_err(|e| DebianError::Spec(format!("sbom json: {e}")))?;
    ins(&mut t, Entry::file(SBOM_DATA, sbom_bytes, 0o644))?;

    // CA bundle, as update-ca-certificates builds it (sorted).
    let certs: Vec<&str> = all
        .files
        .keys()
        .copied()
        .filter(|p| p.starts_with("usr/share/ca-certificates/") && p.ends_with(".crt"))
        .collect();
    if !certs.is_empty() {
        let mut bundle = Vec::new();
        let mut conf = String::from("# Generated by moat from the installed certificates (all enabled).\n");
        for c in &certs {
            if let Some(b) = all.bytes(c) {
                bundle.extend_from_slice(b);
                if !b.ends_with(b"\n") {
                    bundle.push(b'\n');
                }
                conf.push_str(c.trim_start_matches("usr/share/ca-certificates/"));
                conf.push('\n');
            }
        }
        ins(&mut t, Entry::file("etc/ssl/certs/ca-certificates.crt", bundle, 0o644))?;
        ins(&mut t, Entry::file("etc/ca-certificates.conf", conf, 0o644))?;
    }

    // Alternatives.
    for (name, link, cands) in ALTERNATIVES {
        let link_rel = link.trim_start_matches('/');
        if all.has(link_rel) {
            continue;
        }
        let Some((target, prio)) = cands.iter().find(|(c, _)| all.has(c.trim_start_matches('/'))) else { continue };
        ins(&mut t, Entry::symlink(link_rel, &format!("/etc/alternatives/{name}")))?;
        ins(&mut t, Entry::symlink(&format!("etc/alternatives/{name}"), target))?;
        ins(
            &mut t,
            Entry::file(
                &format!("var/lib/dpkg/alternatives/{name}"),
                format!("auto\n{link}\n\n{target}\n{prio}\n\n"),
                0o644,
            ),
        )?;
    }

    // /etc/shells: debianutils' template plus shells.d, with /usr/bin twins.
    let mut shells = BTreeSet::new();
    let shell_files: Vec<&str> = all
        .files
        .keys()
        .copied()
        .filter(|p| *p == "usr/share/debianutils/shells" || p.starts_with("usr/share/debianutils/shells.d/"))
        .collect();
    for f in shell_files {
        for l in String::from_utf8_lossy(all.bytes(f).unwrap_or_default()).lines() {
            let l = l.trim();
            if l.starts_with('/') && all.has(&merge_usr(l.trim_start_matches('/'))) {
                shells.insert(l.to_string());
                if let Some(rest) = l.strip_prefix("/bin/") {
                    shells.insert(format!("/usr/bin/{rest}"));
                }
            }
        }
    }
    if !shells.is_empty() {
        let body = std::iter::once("# /etc/shells: valid login shells".to_string())
            .chain(shells)
            .collect::<Vec<_>>()
            .join("\n")
            + "\n";
        ins(&mut t, Entry::file("etc/shells", body, 0o644))?;
    }

    // base-passwd: /etc/passwd and /etc/group from the masters; locked shadows.
    if let (Some(pw), Some(gr)) = (all.bytes("usr/share/base-passwd/passwd.master"), group_master) {
        // As pwconv/grpconv leave them: passwords live (locked) in the shadow files.
        let shadowed = |b: &[u8]| -> Vec<u8> {
            let mut out = String::new();
            for l in String::from_utf8_lossy(b).lines() {
                let mut f: Vec<&str> = l.split(':').collect();
                if f.len() > 2 {
                    f[1] = "x";
                }
                out.push_str(&f.join(":"));
                out.push('\n');
            }
            out.into_bytes()
        };
        ins(&mut t, Entry::file("etc/passwd", shadowed(pw), 0o644))?;
        ins(&mut t, Entry::file("etc/group", shadowed(gr), 0o644))?;
        let names = |b: &[u8]| {
            String::from_utf8_lossy(b)
                .lines()
                .filter_map(|l| l.split(':').next().map(str::to_string))
                .filter(|n| !n.is_empty())
                .collect::<Vec<_>>()
        };
        let shadow: String = names(pw).iter().map(|n| format!("{n}:*::0:99999:7:::\n")).collect();
        let gshadow: String = names(gr).iter().map(|n| format!("{n}:*::\n")).collect();
        ins(&mut t, file("etc/shadow", shadow.into_bytes(), 0o640, 0, g_shadow))?;
        ins(&mut t, file("etc/gshadow", gshadow.into_bytes(), 0o640, 0, g_shadow))?;
    }

    // base-files postinst.
    if all.has("usr/share/base-files/profile") {
        for (src, dst) in [
            ("dot.profile", "root/.profile"),
            ("dot.bashrc", "root/.bashrc"),
            ("profile", "etc/profile"),
            ("motd", "etc/motd"),
        ] {
            if let Some(b) = all.bytes(&format!("usr/share/base-files/{src}")) {
                if !all.has(dst) {
                    ins(&mut t, Entry::file(dst, b.to_vec(), 0o644))?;
                }
            }
        }
        for d in ["mnt", "srv", "opt", "etc/opt", "var/opt", "media"] {
            if !all.has(d) {
                ins(&mut t, Entry::dir(d, 0o755, 0, 0))?;
            }
        }
        ins(&mut t, Entry::dir("var/mail", 0o2775, 0, g_mail))?;
        ins(&mut t, Entry::symlink("var/spool/mail", "../mail"))?;
        ins(&mut t, Entry::dir("run/lock", 0o1777, 0, 0))?;
        for d in ["", "/share", "/share/man", "/bin", "/games", "/lib", "/include", "/sbin", "/src", "/etc"] {
            ins(&mut t, Entry::dir(&format!("usr/local{d}"), 0o2775, 0, g_staff))?;
        }
        ins(&mut t, Entry::symlink("usr/local/man", "share/man"))?;
        ins(&mut t, file("var/log/wtmp", Vec::new(), 0o664, 0, g_utmp))?;
        ins(&mut t, file("var/log/btmp", Vec::new(), 0o660, 0, g_utmp))?;
        ins(&mut t, file("var/log/lastlog", Vec::new(), 0o664, 0, g_utmp))?;
        if all.has("etc/dpkg/origins/debian") && !all.has("etc/dpkg/origins/default") {
            ins(&mut t, Entry::symlink("etc/dpkg/origins/default", "debian"))?;
        }
    }
    // Parents this layer needs get the metadata the packages gave them.
    add_parents_from(&mut t, &all);
    Ok(t)
}

/// Adds missing parent directories, copying mode/owner from the packages'
/// entry when one exists (never resetting /tmp-like modes to 0755).
pub(crate) fn add_parents_from(t: &mut Tree, all_dirs: &dyn DirMeta) {
    let mut missing = BTreeSet::new();
    for p in t.paths() {
        let mut p = p.as_str();
        while let Some((parent, _)) = p.rsplit_once('/') {
            if t.get(parent).is_none() {
                missing.insert(parent.to_string());
            }
            p = parent;
        }
    }
    for m in missing {
        let (mode, uid, gid) = all_dirs.dir_meta(&m).unwrap_or((0o755, 0, 0));
        let _ = t.insert(Entry::dir(&m, mode, uid, gid));
    }
}

/// Directory metadata as the packages ship it.
pub(crate) trait DirMeta {
    fn dir_meta(&self, path: &str) -> Option<(u32, u32, u32)>;
}

impl DirMeta for All<'_> {
    fn dir_meta(&self, path: &str) -> Option<(u32, u32, u32)> {
        self.files.get(path).filter(|e| e.is_dir()).map(|e| (e.mode, e.uid, e.gid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn dep5_license() {
        let t = "Format: machine-readable copyright 1.0\nUpstream-Name: x\n\nFiles: *\nCopyright: me\nLicense: GPL-2+\n long text\n\nFiles: debian/*\nLicense: MIT\n";
        assert_eq!(copyright_license(t).as_deref(), Some("GPL-2+"));
        assert_eq!(copyright_license("This is free-form"), None);
    }
}
