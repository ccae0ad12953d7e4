//! Bounds on archive inputs, checked before the `tar` and `ar` crates see
//! the bytes. Threat: a hostile tar, `.deb` or compressed stream whose sizes,
//! offsets or counts make the builder allocate, seek or unpack without limit
//! (gzip bombs, a 2^62 base-256 size, an ar name-table offset past the table),
//! or that ends early without saying so (a tar cut on a block boundary, an
//! empty ar member). `TarGuard` reads the stream's headers as they pass, with
//! the tar crate's own rules, and fails the read that completes a header
//! before the crate can act on it; `check_deb_ar` walks every ar header.
#![forbid(unsafe_code)]
use std::io::{self, Read};

/// Limits for one archive input (one tar, one `.deb` member).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Bytes of the uncompressed tar stream, headers and padding included.
    pub unpacked: u64,
    /// Headers (entries, extension records included).
    pub entries: u64,
    /// Bytes of one PAX or GNU long-name record (the tar crate reads those whole).
    pub meta: u64,
}

/// The limits every archive input gets (see docs/builder-inputs.md).
pub(crate) const LIMITS: Limits = Limits { unpacked: 2 << 30, entries: 1 << 20, meta: 1 << 20 };

const BLOCK: u64 = 512;

#[derive(Debug, thiserror::Error)]
pub(crate) enum BoundsError {
    #[error(
        "tar entry {name:?} declares {size} bytes, which would unpack past the cap of {cap} bytes for one archive"
    )]
    Cap { name: String, size: u64, cap: u64 },
    #[error("tar entry {name:?}: a {what} record of {size} bytes is over the limit of {cap} bytes")]
    Meta { name: String, what: &'static str, size: u64, cap: u64 },
    #[error("more than {cap} tar entries")]
    Entries { cap: u64 },
    #[error("tar entry {name:?}: size field {field:?} is not a number")]
    BadSize { name: String, field: String },
    #[error("tar entry {name:?}: sparse files are not allowed in images")]
    Sparse { name: String },
    #[error("tar is truncated: it ends after {entries} entries without an end-of-archive block")]
    NoEnd { entries: u64 },
    #[error("tar is truncated: entry {name:?} ends {left} bytes early")]
    ShortData { name: String, left: u64 },
    #[error("tar is truncated inside a header at byte {at}")]
    ShortHeader { at: u64 },
    #[error("not an ar archive (no !<arch> magic)")]
    ArMagic,
    #[error("ar member header at byte {at} is cut short or malformed")]
    ArHeader { at: u64 },
    #[error("ar member {name:?} at byte {at}: size field {field:?} is not a number")]
    ArSize { name: String, at: u64, field: String },
    #[error("ar member {name:?} at byte {at}: size {size} runs past the end of the file ({len} bytes)")]
    ArPastEnd { name: String, at: u64, size: u64, len: u64 },
    #[error("ar member {name:?}: extended names (GNU `/N`, BSD `#1/N`) and symbol tables have no place in a .deb")]
    ArName { name: String },
    #[error("ar member {name:?} is empty")]
    ArEmpty { name: String },
}

impl From<BoundsError> for io::Error {
    fn from(e: BoundsError) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, e)
    }
}

fn padded(size: u64) -> u64 {
    size.div_ceil(BLOCK).saturating_mul(BLOCK)
}

/// Where the stream is: inside a header block, or inside an entry's data.
enum State {
    Header,
    Data { left: u64, name: String, keep: Option<(u8, u64)> },
}

/// A reader that checks a tar stream's structure as the tar crate reads it.
pub(crate) struct TarGuard<R> {
    inner: R,
    limits: Limits,
    /// Bytes passed to the reader so far.
    pos: u64,
    state: State,
    block: Vec<u8>,
    entries: u64,
    /// A PAX (`x`) or GNU long-name (`L`) record being collected.
    record: Vec<u8>,
    /// The `size` a PAX record gave the next entry (the crate's override).
    pax_size: Option<u64>,
    /// The name a PAX `path` or GNU long-name record gave the next entry.
    next_name: Option<String>,
    ended: bool,
}

impl<R: Read> TarGuard<R> {
    pub(crate) fn new(inner: R, limits: Limits) -> TarGuard<R> {
        TarGuard {
            inner,
            limits,
            pos: 0,
            state: State::Header,
            block: Vec::with_capacity(BLOCK as usize),
            entries: 0,
            record: Vec::new(),
            pax_size: None,
            next_name: None,
            ended: false,
        }
    }

    /// Follows `bytes` (the next bytes of the stream) through the structure,
    /// advancing `pos`; a header is checked as its block completes.
    fn consume(&mut self, mut bytes: &[u8]) -> Result<(), BoundsError> {
        while !bytes.is_empty() {
            if self.ended {
                // Trailing blocks: the crate stops reading at the end block.
                self.pos += bytes.len() as u64;
                return Ok(());
            }
            match &mut self.state {
                State::Header => {
                    let take = (BLOCK as usize - self.block.len()).min(bytes.len());
                    self.block.extend_from_slice(&bytes[..take]);
                    self.pos += take as u64;
                    bytes = &bytes[take..];
                    if self.block.len() == BLOCK as usize {
                        let block = std::mem::take(&mut self.block);
                        self.header(&block)?;
                        self.block = block;
                        self.block.clear();
                    }
                }
                State::Data { left, keep, .. } => {
                    let take = (*left).min(bytes.len() as u64) as usize;
                    if let Some((_, size)) = keep {
                        let want = (*size as usize).saturating_sub(self.record.len()).min(take);
                        self.record.extend_from_slice(&bytes[..want]);
                    }
                    *left -= take as u64;
                    self.pos += take as u64;
                    bytes = &bytes[take..];
                    if *left == 0 {
                        if let State::Data { keep: Some((typ, _)), .. } =
                            std::mem::replace(&mut self.state, State::Header)
                        {
                            self.record_done(typ);
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// Checks one complete header block, as `tar::Archive` will read it.
    fn header(&mut self, h: &[u8]) -> Result<(), BoundsError> {
        let at = self.pos; // just after this block
        if h.iter().all(|b| *b == 0) {
            self.ended = true;
            return Ok(());
        }
        self.entries += 1;
        if self.entries > self.limits.entries {
            return Err(BoundsError::Entries { cap: self.limits.entries });
        }
        let typ = h[156];
        let extension = matches!(typ, b'L' | b'K' | b'x' | b'g');
        let name = if extension { header_name(h) } else { self.next_name.take().unwrap_or_else(|| header_name(h)) };
        let mut size = size_field(&h[124..136]).ok_or_else(|| BoundsError::BadSize {
            name: name.clone(),
            field: String::from_utf8_lossy(&h[124..136]).into_owned(),
        })?;
        if !extension {
            // The crate applies a PAX size to the next non-extension header only.
            if let Some(s) = self.pax_size.take() {
                size = s;
            }
        }
        if typ == b'S' {
            return Err(BoundsError::Sparse { name });
        }
        // The crate reads these records whole into memory.
        let recognized = &h[257..263] == b"ustar\0" && &h[263..265] == b"00" || &h[257..265] == b"ustar  \0";
        let keep = match typ {
            b'L' | b'K' | b'x' | b'g' => {
                let what = match typ {
                    b'x' | b'g' => "PAX",
                    _ => "GNU long name",
                };
                if size > self.limits.meta {
                    return Err(BoundsError::Meta { name, what, size, cap: self.limits.meta });
                }
                (recognized && matches!(typ, b'L' | b'x')).then_some((typ, size))
            }
            _ => None,
        };
        if at.saturating_add(padded(size)) > self.limits.unpacked {
            return Err(BoundsError::Cap { name, size, cap: self.limits.unpacked });
        }
        self.record.clear();
        let left = padded(size);
        self.state = State::Data { left, name, keep };
        if left == 0 {
            if let State::Data { keep: Some((typ, _)), .. } = std::mem::replace(&mut self.state, State::Header) {
                self.record_done(typ);
            }
        }
        Ok(())
    }

    fn record_done(&mut self, typ: u8) {
        let rec = std::mem::take(&mut self.record);
        match typ {
            b'L' => {
                let end = rec.iter().position(|b| *b == 0).unwrap_or(rec.len());
                self.next_name = Some(String::from_utf8_lossy(&rec[..end]).into_owned());
            }
            b'x' => {
                self.pax_size = pax_value(&rec, "size").and_then(|v| std::str::from_utf8(v).ok()?.parse().ok());
                if let Some(p) = pax_value(&rec, "path") {
                    self.next_name = Some(String::from_utf8_lossy(p).into_owned());
                }
            }
            _ => {}
        }
    }

    fn at_eof(&self) -> Result<(), BoundsError> {
        if self.ended {
            return Ok(());
        }
        match &self.state {
            State::Header if self.block.is_empty() => Err(BoundsError::NoEnd { entries: self.entries }),
            State::Header => Err(BoundsError::ShortHeader { at: self.pos }),
            State::Data { left, name, .. } => Err(BoundsError::ShortData { name: name.clone(), left: *left }),
        }
    }
}

impl<R: Read> Read for TarGuard<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = self.inner.read(buf)?;
        if n == 0 {
            self.at_eof()?;
            return Ok(0);
        }
        self.consume(&buf[..n])?;
        if self.pos > self.limits.unpacked {
            return Err(BoundsError::Cap {
                name: "(after the last entry)".into(),
                size: self.pos,
                cap: self.limits.unpacked,
            }
            .into());
        }
        Ok(n)
    }
}

/// The tar crate's reading of a numeric field: base-256 when the high bit
/// is set (only the last 8 bytes count), else octal up to the first NUL.
fn size_field(f: &[u8]) -> Option<u64> {
    if f[0] & 0x80 != 0 {
        let mut v: u64 = 0;
        for b in &f[f.len() - 8..] {
            v = (v << 8) | u64::from(*b);
        }
        return Some(v);
    }
    let end = f.iter().position(|b| *b == 0).unwrap_or(f.len());
    u64::from_str_radix(std::str::from_utf8(&f[..end]).ok()?.trim(), 8).ok()
}

/// The entry's name from its header (ustar prefix joined).
fn header_name(h: &[u8]) -> String {
    let field = |r: std::ops::Range<usize>| {
        let f = &h[r];
        let end = f.iter().position(|b| *b == 0).unwrap_or(f.len());
        String::from_utf8_lossy(&f[..end]).into_owned()
    };
    let name = field(0..100);
    let prefix = if &h[257..263] == b"ustar\0" { field(345..500) } else { String::new() };
    if prefix.is_empty() {
        name
    } else {
        format!("{prefix}/{name}")
    }
}

/// A PAX record's value, parsed exactly as the tar crate does (lines split on
/// `\n`, each `LEN key=value` with LEN the line's length plus one; the first
/// malformed line ends the search).
fn pax_value<'a>(rec: &'a [u8], key: &str) -> Option<&'a [u8]> {
    for line in rec.split(|b| *b == b'\n') {
        if line.is_empty() {
            return None;
        }
        let sp = line.iter().position(|b| *b == b' ')?;
        let len: usize = std::str::from_utf8(&line[..sp]).ok()?.parse().ok()?;
        if line.len() + 1 != len {
            return None;
        }
        let kv = &line[sp + 1..];
        let eq = kv.iter().position(|b| *b == b'=')?;
        if &kv[..eq] == key.as_bytes() {
            return Some(&kv[eq + 1..]);
        }
    }
    None
}

/// Walks every header of a `.deb`'s ar archive: the magic, each header's
/// size (a number, within the file), plain member names (the ar crate's
/// GNU and BSD name tables index and allocate from header fields), and no
/// empty member. Returns the member names; the ar crate is then safe to run.
pub(crate) fn check_deb_ar(deb: &[u8]) -> Result<Vec<&str>, BoundsError> {
    let body = deb.strip_prefix(b"!<arch>\n").ok_or(BoundsError::ArMagic)?;
    let len = deb.len() as u64;
    let mut at = 8usize;
    let mut rest = body;
    let mut out = Vec::new();
    while !rest.is_empty() {
        if rest.len() < 60 || &rest[58..60] != b"`\n" {
            return Err(BoundsError::ArHeader { at: at as u64 });
        }
        let raw_name = String::from_utf8_lossy(&rest[..16]).trim_end_matches(' ').to_string();
        let field = String::from_utf8_lossy(&rest[48..58]).into_owned();
        let size: u64 = field.trim_end_matches(' ').parse().map_err(|_| BoundsError::ArSize {
            name: raw_name.clone(),
            at: at as u64,
            field: field.clone(),
        })?;
        let data_at = at + 60;
        if size > len - data_at as u64 {
            return Err(BoundsError::ArPastEnd { name: raw_name, at: at as u64, size, len });
        }
        if raw_name.starts_with('/') || raw_name.starts_with("#1/") || raw_name.starts_with("__.SYMDEF") {
            return Err(BoundsError::ArName { name: raw_name });
        }
        let name = std::str::from_utf8(&rest[..16]).map_err(|_| BoundsError::ArName { name: raw_name.clone() })?;
        let name = name.trim_end_matches(' ').trim_end_matches('/');
        if size == 0 {
            return Err(BoundsError::ArEmpty { name: name.to_string() });
        }
        let size = size as usize; // <= deb.len()
        out.push(name);
        let next = 60 + size + size % 2;
        rest = rest.get(next..).unwrap_or_default();
        at = data_at + size + size % 2;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(name: &str, typ: u8, size: u64) -> Vec<u8> {
        let mut h = tar::Header::new_ustar();
        h.set_path(name).unwrap();
        h.set_size(size);
        h.set_entry_type(tar::EntryType::new(typ));
        h.set_cksum();
        h.as_bytes().to_vec()
    }

    fn drain(bytes: &[u8], limits: Limits) -> io::Result<usize> {
        let mut ar = tar::Archive::new(TarGuard::new(bytes, limits));
        let mut n = 0;
        for e in ar.entries()? {
            let mut e = e?;
            io::copy(&mut e, &mut io::sink())?;
            n += 1;
        }
        Ok(n)
    }

    const SMALL: Limits = Limits { unpacked: 1 << 20, entries: 4, meta: 1024 };

    #[test]
    fn counts_and_records_are_bounded() {
        let mut t = Vec::new();
        for i in 0..5 {
            t.extend(hdr(&format!("f{i}"), b'0', 0));
        }
        t.extend([0u8; 1024]);
        let e = drain(&t, SMALL).unwrap_err().to_string();
        assert!(e.contains("more than 4 tar entries"), "{e}");
        let mut t = hdr("././@LongLink", b'L', 4096);
        t.extend([b'a'; 4096]);
        t.extend(hdr("x", b'0', 0));
        t.extend([0u8; 1024]);
        let e = drain(&t, SMALL).unwrap_err().to_string();
        assert!(e.contains("GNU long name record of 4096 bytes"), "{e}");
        assert_eq!(drain(&t, LIMITS).unwrap(), 1);
    }

    #[test]
    fn a_pax_size_is_followed_as_the_crate_follows_it() {
        // The header says 0 bytes, the PAX record says 2 MiB: the cap must
        // judge the size the crate will use.
        let rec = b"16 size=2097152\n";
        let mut t = hdr("pax", b'x', rec.len() as u64);
        t.extend(rec);
        t.resize(1024, 0);
        t.extend(hdr("big", b'0', 0));
        let e = drain(&t, SMALL).unwrap_err().to_string();
        assert!(e.contains("\"big\" declares 2097152 bytes"), "{e}");
        // Within the cap, the guard stays in step with the crate.
        t.extend(vec![0u8; 2 << 20]);
        t.extend(hdr("after", b'0', 0));
        t.extend([0u8; 1024]);
        assert_eq!(drain(&t, Limits { unpacked: 8 << 20, ..SMALL }).unwrap(), 2);
    }

    #[test]
    fn a_well_formed_tar_reads_whole_in_any_read_sizes() {
        let mut b = tar::Builder::new(Vec::new());
        for (i, n) in [0usize, 1, 511, 512, 513, 5000].iter().enumerate() {
            let mut h = tar::Header::new_gnu();
            h.set_size(*n as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, format!("{}/{}", "d".repeat(120), i), &vec![7u8; *n][..]).unwrap();
        }
        let t = b.into_inner().unwrap();
        // One byte at a time: headers completed across many reads.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                let n = self.0.len().min(1).min(buf.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let mut ar = tar::Archive::new(TarGuard::new(Trickle(&t), LIMITS));
        assert_eq!(ar.entries().unwrap().map(|e| e.unwrap().size()).sum::<u64>(), 1 + 511 + 512 + 513 + 5000);
        assert_eq!(drain(&t, LIMITS).unwrap(), 6);
    }

    #[test]
    fn gnu_tar_archives_read_whole_in_every_format() {
        // The guard must stay in step with real tars: long names (GNU `L`,
        // PAX `path`), PAX sizes and xattrs, hard links, sizes on and off
        // block boundaries.
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("src");
        let deep = src.join("d".repeat(90)).join("e".repeat(90));
        std::fs::create_dir_all(&deep).unwrap();
        for (i, n) in [0usize, 1, 512, 4097].iter().enumerate() {
            std::fs::write(deep.join(format!("{}{i}", "f".repeat(120))), vec![b'x'; *n]).unwrap();
        }
        std::fs::hard_link(deep.join(format!("{}1", "f".repeat(120))), src.join("link")).unwrap();
        let _ = std::process::Command::new("setfattr").args(["-n", "user.k", "-v", "v"]).arg(src.join("link")).status();
        for format in ["gnu", "pax"] {
            let out = d.path().join(format!("{format}.tar"));
            let mut tar = std::process::Command::new("tar");
            if format == "pax" {
                tar.arg("--xattrs");
            }
            let st = tar.arg(format!("--format={format}")).arg("-C").arg(&src).arg("-cf").arg(&out).arg(".");
            assert!(st.status().expect("tar is installed").success(), "{format}");
            let bytes = std::fs::read(&out).unwrap();
            assert_eq!(drain(&bytes, LIMITS).unwrap(), 8, "{format}");
        }
    }
    #[test]
    fn ar_headers_are_checked() {
        let m = |name: &str, size: &str| format!("{name:<16}{:<12}{:<6}{:<6}{:<8}{size:<10}`\n", 0, 0, 0, 100644);
        let deb = format!("!<arch>\n{}2.0\n{}x\n", m("debian-binary", "4"), m("data.tar/", "1"));
        let members = check_deb_ar(deb.as_bytes()).unwrap();
        assert_eq!(members, ["debian-binary", "data.tar"]);
        let bad = format!("!<arch>\n{}2.0\n", m("debian-binary", "4x"));
        assert!(matches!(check_deb_ar(bad.as_bytes()), Err(BoundsError::ArSize { .. })));
        let bad = format!("!<arch>\n{}2.", m("debian-binary", "4"));
        assert!(matches!(check_deb_ar(bad.as_bytes()), Err(BoundsError::ArPastEnd { .. })));
        let bad = format!("!<arch>\n{}#1/20", m("#1/20", "20"));
        assert!(matches!(
            check_deb_ar(bad.as_bytes()),
            Err(BoundsError::ArPastEnd { .. } | BoundsError::ArName { .. })
        ));
        assert!(matches!(check_deb_ar(b"!<arch>\nshort"), Err(BoundsError::ArHeader { .. })));
        assert!(matches!(check_deb_ar(b"PK"), Err(BoundsError::ArMagic)));
    }
}
