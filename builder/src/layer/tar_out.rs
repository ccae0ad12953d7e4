//! Writes a `Tree` as a reproducible tar stream: entries in byte-wise path
//! order, ustar headers (PAX only for long paths, big numbers or allowed
//! xattrs), one mtime (the blueprint epoch), empty uname/gname, no sparse
//! entries. Hand-written because the tar crate's builder emits GNU long-name
//! records and host metadata; the contract (DESIGN.md) needs byte control.
#![forbid(unsafe_code)]
use crate::layer::tree::{Content, Kind, Tree};
use std::fs::File;
use std::io::{self, Read, Write};

const BLOCK: usize = 512;

/// Writes every entry of `tree` (which must already hold its parents) and the
/// end-of-archive marker.
pub(crate) fn write_tree<W: Write>(tree: &Tree, epoch: u64, out: &mut W) -> io::Result<()> {
    for e in tree.iter() {
        let (flag, size, link) = match &e.kind {
            Kind::Dir => (b'5', 0, None),
            Kind::File { size, .. } => (b'0', *size, None),
            Kind::Symlink(t) => (b'2', 0, Some(t.as_str())),
            Kind::Hardlink(t) => (b'1', 0, Some(t.as_str())),
        };
        let name = if e.is_dir() { format!("{}/", e.path) } else { e.path.clone() };
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        let split = split_ustar_name(&name);
        if split.is_none() {
            pax.push(("path".into(), name.clone().into_bytes()));
        }
        if link.is_some_and(|l| l.len() > 100) {
            pax.push(("linkpath".into(), link.unwrap_or_default().as_bytes().to_vec()));
        }
        if size > 0o77777777777 {
            pax.push(("size".into(), size.to_string().into_bytes()));
        }
        if u64::from(e.uid) > 0o7777777 {
            pax.push(("uid".into(), e.uid.to_string().into_bytes()));
        }
        if u64::from(e.gid) > 0o7777777 {
            pax.push(("gid".into(), e.gid.to_string().into_bytes()));
        }
        for (k, v) in &e.xattrs {
            pax.push((format!("SCHILY.xattr.{k}"), v.clone()));
        }
        if !pax.is_empty() {
            let body = pax_body(&pax);
            let h = header(&ustar_fallback_name(&name), "", 0o644, 0, 0, body.len() as u64, epoch, b'x');
            out.write_all(&h)?;
            out.write_all(&body)?;
            pad(out, body.len() as u64)?;
        }
        let (prefix, short) = split.unwrap_or(("", ""));
        let short = if short.is_empty() && prefix.is_empty() { ustar_fallback_name(&name) } else { short.to_string() };
        let mut h = header(&short, prefix, e.mode & 0o7777, e.uid, e.gid, size, epoch, flag);
        if let Some(l) = link {
            let l = l.as_bytes();
            h[157..157 + l.len().min(100)].copy_from_slice(&l[..l.len().min(100)]);
            set_checksum(&mut h);
        }
        out.write_all(&h)?;
        if let Kind::File { content, size } = &e.kind {
            copy_content(content, *size, &e.path, out)?;
            pad(out, *size)?;
        }
    }
    out.write_all(&[0u8; BLOCK * 2])
}

fn copy_content<W: Write>(content: &Content, size: u64, path: &str, out: &mut W) -> io::Result<()> {
    let n = match content {
        Content::Bytes(b) => {
            out.write_all(b)?;
            b.len() as u64
        }
        Content::Path(p) => {
            let f = File::open(p).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", p.display())))?;
            io::copy(&mut f.take(size), out)?
        }
    };
    if n != size {
        return Err(io::Error::other(format!(
            "{path}: source changed while building (expected {size} bytes, read {n})"
        )));
    }
    Ok(())
}

fn pad<W: Write>(out: &mut W, size: u64) -> io::Result<()> {
    let rem = (size % BLOCK as u64) as usize;
    if rem != 0 {
        out.write_all(&[0u8; BLOCK][..BLOCK - rem])?;
    }
    Ok(())
}

/// Splits a path into ustar (prefix, name) if it fits: name <= 100 bytes,
/// prefix <= 155 bytes, split at a `/`.
fn split_ustar_name(path: &str) -> Option<(&str, &str)> {
    if path.len() <= 100 {
        return Some(("", path));
    }
    let bytes = path.as_bytes();
    // The last '/' such that the remainder fits in 100 bytes and the prefix in 155.
    let trimmed = path.trim_end_matches('/');
    for (i, &b) in bytes.iter().enumerate().take(trimmed.len()) {
        if b == b'/' && i <= 155 && path.len() - i - 1 <= 100 && i > 0 {
            return Some((&path[..i], &path[i + 1..]));
        }
    }
    None
}

/// A deterministic placeholder name for headers whose real name is in PAX.
fn ustar_fallback_name(path: &str) -> String {
    let mut cut = path.len().min(99);
    while !path.is_char_boundary(cut) {
        cut -= 1;
    }
    path[..cut].to_string()
}

fn pax_body(records: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (k, v) in records {
        // "LEN KEY=VALUE\n" where LEN counts itself.
        let rest = k.len() + v.len() + 3; // ' ', '=', '\n'
        let mut len = rest + 1;
        while len != rest + len.to_string().len() {
            len = rest + len.to_string().len();
        }
        body.extend_from_slice(format!("{len} {k}=").as_bytes());
        body.extend_from_slice(v);
        body.push(b'\n');
    }
    body
}

#[allow(clippy::too_many_arguments)]
fn header(name: &str, prefix: &str, mode: u32, uid: u32, gid: u32, size: u64, mtime: u64, flag: u8) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    let n = name.as_bytes();
    h[..n.len().min(100)].copy_from_slice(&n[..n.len().min(100)]);
    octal(&mut h[100..108], u64::from(mode));
    octal(&mut h[108..116], u64::from(uid).min(0o7777777));
    octal(&mut h[116..124], u64::from(gid).min(0o7777777));
    octal(&mut h[124..136], size.min(0o77777777777));
    octal(&mut h[136..148], mtime.min(0o77777777777));
    h[156] = flag;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    octal(&mut h[329..337], 0);
    octal(&mut h[337..345], 0);
    let p = prefix.as_bytes();
    h[345..345 + p.len().min(155)].copy_from_slice(&p[..p.len().min(155)]);
    set_checksum(&mut h);
    h
}

/// Zero-padded octal with a trailing NUL, as ustar writes numbers.
fn octal(field: &mut [u8], v: u64) {
    let digits = field.len() - 1;
    let s = format!("{v:0digits$o}");
    field[..digits].copy_from_slice(&s.as_bytes()[s.len() - digits..]);
    field[digits] = 0;
}

fn set_checksum(h: &mut [u8; BLOCK]) {
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|&b| u32::from(b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer::tree::Entry;

    fn roundtrip(tree: &Tree) -> Vec<(String, u8, Vec<u8>, Option<String>)> {
        let mut buf = Vec::new();
        write_tree(tree, 7, &mut buf).unwrap();
        let mut ar = tar::Archive::new(&buf[..]);
        ar.entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let path = e.path().unwrap().to_string_lossy().into_owned();
                let link = e.link_name().unwrap().map(|l| l.to_string_lossy().into_owned());
                let flag = e.header().entry_type().as_byte();
                assert_eq!(e.header().mtime().unwrap(), 7);
                let mut data = Vec::new();
                e.read_to_end(&mut data).unwrap();
                (path, flag, data, link)
            })
            .collect()
    }

    #[test]
    fn long_names_links_and_order_survive_a_standard_reader() {
        let long = format!("d/{}/{}", "a".repeat(120), "b".repeat(90));
        let very_long = format!("d/{}", "c".repeat(300));
        let mut t = Tree::new();
        t.insert(Entry::file(&long, "x", 0o644)).unwrap();
        t.insert(Entry::file(&very_long, "yy", 0o755)).unwrap();
        t.insert(Entry::symlink("d/link", &"t".repeat(150))).unwrap();
        t.insert(Entry { kind: Kind::Hardlink(long.clone()), ..Entry::file("d/zz", "", 0o644) }).unwrap();
        t.add_parents();
        let got = roundtrip(&t);
        let paths: Vec<_> = got.iter().map(|g| g.0.trim_end_matches('/').to_string()).collect();
        let mut sorted = paths.clone();
        sorted.sort();
        assert_eq!(paths, sorted);
        assert!(got.iter().any(|g| g.0 == long && g.2 == b"x"));
        assert!(got.iter().any(|g| g.0 == very_long && g.2 == b"yy"));
        assert!(got.iter().any(|g| g.0 == "d/link" && g.3.as_deref() == Some(&*"t".repeat(150))));
        assert!(got.iter().any(|g| g.0 == "d/zz" && g.1 == b'1' && g.3.as_deref() == Some(long.as_str())));
    }

    #[test]
    fn pax_length_counts_itself() {
        let b = pax_body(&[("path".into(), vec![b'a'; 5])]);
        let s = String::from_utf8(b).unwrap();
        let (len, _) = s.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), s.len());
    }
}
