//! A wheel's zip archive read with bounds: the entry count, each entry's
//! size and the total unpacked size are checked (declared sizes first, then
//! what is actually inflated) before anything is allocated for them.
//! Guards against zip bombs and archives that lie about their sizes.
#![forbid(unsafe_code)]
use std::io::{Cursor, Read};

/// Largest wheel downloaded.
pub(crate) const MAX_WHEEL: u64 = 512 << 20;
/// Most entries in one wheel.
pub(crate) const MAX_ENTRIES: usize = 100_000;
/// Most bytes unpacked from one wheel.
pub(crate) const MAX_UNPACKED: u64 = 2 << 30;

/// One file of a wheel (directory entries are dropped, as pip drops them).
#[derive(Debug, Clone)]
pub(crate) struct Member {
    /// The name as stored in the zip (`pkg/mod.py`).
    pub(crate) name: String,
    pub(crate) data: Vec<u8>,
    /// Any executable bit in the entry's unix mode (pip makes such files 0755).
    pub(crate) exec: bool,
}

fn open(bytes: &[u8]) -> Result<zip::ZipArchive<Cursor<&[u8]>>, String> {
    let z = zip::ZipArchive::new(Cursor::new(bytes)).map_err(|e| format!("not a zip archive: {e}"))?;
    if z.len() > MAX_ENTRIES {
        return Err(format!("{} entries; at most {MAX_ENTRIES} are read", z.len()));
    }
    Ok(z)
}

fn read_entry(f: &mut zip::read::ZipFile<'_, Cursor<&[u8]>>, budget: &mut u64) -> Result<Vec<u8>, String> {
    let name = f.name().to_string();
    let declared = f.size();
    if declared > *budget {
        return Err(format!("{name:?}: unpacks to more than the {budget} bytes still allowed; not read"));
    }
    let mut data = Vec::with_capacity(declared.min(1 << 20) as usize);
    f.by_ref().take(declared + 1).read_to_end(&mut data).map_err(|e| format!("{name:?}: {e}"))?;
    if data.len() as u64 != declared {
        return Err(format!("{name:?}: unpacks to another size than its header says"));
    }
    *budget -= declared;
    Ok(data)
}

/// Every file of the wheel, in archive order.
pub(crate) fn members(bytes: &[u8]) -> Result<Vec<Member>, String> {
    let mut z = open(bytes)?;
    let mut budget = MAX_UNPACKED;
    let mut out = Vec::new();
    for i in 0..z.len() {
        let mut f = z.by_index(i).map_err(|e| format!("entry {i}: {e}"))?;
        let name = f.name().to_string();
        if name.ends_with('/') {
            continue;
        }
        let exec = f.unix_mode().is_some_and(|m| m & 0o111 != 0);
        let data = read_entry(&mut f, &mut budget)?;
        out.push(Member { name, data, exec });
    }
    Ok(out)
}

/// One file of the wheel by name (`x.dist-info/METADATA`), at most `max` bytes.
pub(crate) fn member(bytes: &[u8], name: &str, max: u64) -> Result<Option<Vec<u8>>, String> {
    let mut z = open(bytes)?;
    let Ok(mut f) = z.by_name(name) else { return Ok(None) };
    let mut budget = max;
    read_entry(&mut f, &mut budget).map(Some)
}

/// The one top-level `*.dist-info` directory of the wheel's member names.
pub(crate) fn dist_info<'a>(names: impl Iterator<Item = &'a str>) -> Result<String, String> {
    let mut dirs: Vec<&str> =
        names.filter_map(|n| n.split_once('/').map(|(d, _)| d)).filter(|d| d.ends_with(".dist-info")).collect();
    dirs.sort_unstable();
    dirs.dedup();
    match dirs.as_slice() {
        [one] => Ok(one.to_string()),
        [] => Err("no .dist-info directory".into()),
        many => Err(format!("more than one .dist-info directory: {}", many.join(", "))),
    }
}

/// The names in a zip's central directory (no data read).
pub(crate) fn names(bytes: &[u8]) -> Result<Vec<String>, String> {
    let z = open(bytes)?;
    Ok(z.file_names().map(str::to_string).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    #[test]
    fn reads_members_and_refuses_non_zips() {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let o = zip::write::SimpleFileOptions::default().unix_permissions(0o755);
        w.add_directory("a-1.dist-info/", o).unwrap();
        w.start_file("a-1.dist-info/METADATA", o).unwrap();
        w.write_all(b"Name: a\nVersion: 1\n").unwrap();
        let bytes = w.finish().unwrap().into_inner();
        let m = members(&bytes).unwrap();
        assert_eq!(m.len(), 1);
        assert!(m[0].exec);
        assert_eq!(dist_info(m.iter().map(|m| m.name.as_str())).unwrap(), "a-1.dist-info");
        assert!(member(&bytes, "a-1.dist-info/METADATA", 5).unwrap_err().contains("more than"));
        assert!(members(b"not a zip").is_err());
    }
    #[test]
    fn an_entry_that_lies_about_its_size_is_refused() {
        let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
        let o = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
        w.start_file("a.py", o).unwrap();
        w.write_all(&[b'x'; 4096]).unwrap();
        let mut bytes = w.finish().unwrap().into_inner();
        // The central directory's uncompressed size (offset 24 of its header) says 5.
        let cd = bytes.windows(4).position(|s| s == [0x50, 0x4b, 0x01, 0x02]).unwrap();
        bytes[cd + 24..cd + 28].copy_from_slice(&5u32.to_le_bytes());
        let e = members(&bytes).unwrap_err();
        assert!(e.contains("\"a.py\"") && e.contains("another size"), "{e}");
    }
}
