//! Blueprint parsing and validation (TOML, schema 1). Guards against
//! ambiguous or unpinned inputs reaching a build: unknown and duplicate keys,
//! references without a digest, destinations escaping the root and bad
//! modes are errors that name file:line:column.
#![forbid(unsafe_code)]
use crate::digest::Digest;
use crate::layer::tree;
use crate::textfile::{self, TextError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use toml::Spanned;

/// The one PATH every image gets (DESIGN.md; the seed's PATH hardening).
pub const FIXED_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

#[derive(Debug, thiserror::Error)]
pub enum BlueprintError {
    #[error("{path}")]
    Read { path: PathBuf, source: std::io::Error },
    /// A located error: `file:line:column: message`.
    #[error("{at}: {msg}")]
    At { at: Location, msg: String },
}

/// A position in a blueprint file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
}
impl Location {
    /// The first character of `file`.
    pub fn start(file: &Path) -> Location {
        Location { file: file.into(), line: 1, column: 1 }
    }
}
impl BlueprintError {
    fn placed(file: &Path, at: textfile::At) -> BlueprintError {
        BlueprintError::At { at: Location { file: file.into(), line: at.line, column: at.column }, msg: at.message }
    }
}
impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
    }
}

pub use crate::textfile::line_col;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Blueprint {
    #[serde(default = "one")]
    pub schema: Spanned<u32>,
    pub name: Spanned<String>,
    /// The one timestamp (seconds since 1970) every entry and history item gets.
    #[serde(default)]
    pub epoch: u64,
    #[serde(default = "amd64")]
    pub architecture: String,
    #[serde(default)]
    pub base: BaseSpec,
    /// Debian packages resolved by `moat lock` and pinned in the lock.
    #[serde(default)]
    pub debian: Option<Spanned<crate::debian::DebianSpec>>,
    /// npm packages resolved by `moat lock` and pinned in the lock (docs/npm.md).
    /// Absent, it is not serialised: a blueprint without `[npm]` keeps the
    /// digest its lock was made with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub npm: Option<Spanned<crate::npm::NpmSpec>>,
    /// PyPI wheels resolved by `moat lock` and pinned in the lock
    /// (docs/pypi.md); absent, not serialised (digests stay as they were).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pypi: Option<Spanned<crate::pypi::PypiSpec>>,
    #[serde(default, rename = "layer")]
    pub layers: Vec<Spanned<LayerSpec>>,
    #[serde(default)]
    pub users: BTreeMap<String, Spanned<UserSpec>>,
    #[serde(default)]
    pub strip: StripSpec,
    #[serde(default)]
    pub config: ConfigSpec,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

fn one() -> Spanned<u32> {
    Spanned::new(0..0, 1)
}
fn amd64() -> String {
    "amd64".into()
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BaseSpec {
    pub image: Spanned<String>,
}
impl Default for BaseSpec {
    fn default() -> Self {
        BaseSpec { image: Spanned::new(0..0, "scratch".into()) }
    }
}

/// Where the base image comes from, parsed from `[base] image`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BaseRef {
    Scratch,
    /// `oci:DIR@sha256:…` — an OCI image layout on disk (DIR relative to the blueprint).
    Layout {
        dir: String,
        digest: Digest,
    },
    /// `registry/repo@sha256:…`.
    Registry {
        repository: String,
        digest: Digest,
    },
}

impl BaseRef {
    /// Parses a base reference; a reference without `@sha256:` is refused.
    pub fn parse(s: &str) -> Result<BaseRef, String> {
        if s == "scratch" {
            return Ok(BaseRef::Scratch);
        }
        let Some((left, digest)) = s.rsplit_once('@') else {
            return Err(format!(
                "image reference {s:?} has no @sha256: digest; mutable tags are refused (pin it: `moat resolve {s}`)"
            ));
        };
        let digest = Digest::parse(digest).map_err(|e| e.to_string())?;
        if let Some(dir) = left.strip_prefix("oci:") {
            let dir = dir.split_once(':').map_or(dir, |(d, _tag)| d);
            return Ok(BaseRef::Layout { dir: dir.into(), digest });
        }
        if left.is_empty() || left.contains(char::is_whitespace) {
            return Err(format!("invalid image reference {s:?}"));
        }
        Ok(BaseRef::Registry { repository: left.into(), digest })
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LayerSpec {
    pub name: Option<String>,
    #[serde(default, rename = "entry")]
    pub entries: Vec<Spanned<EntrySpec>>,
}

/// One source placed into a layer. Exactly one of `path`, `tar`, `deb`.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EntrySpec {
    pub path: Option<Spanned<String>>,
    pub tar: Option<Spanned<String>>,
    pub deb: Option<Spanned<String>>,
    pub sha256: Option<Spanned<String>>,
    pub dest: Option<Spanned<String>>,
    pub mode: Option<Spanned<Mode>>,
    pub dir_mode: Option<Spanned<Mode>>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// A permission mode written as `"0755"` or as a TOML integer (`0o755`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Mode(pub u32);
impl<'de> Deserialize<'de> for Mode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Int(u32),
            Str(String),
        }
        let m = match Raw::deserialize(d)? {
            Raw::Int(i) => i,
            Raw::Str(s) => u32::from_str_radix(s.trim_start_matches("0o"), 8)
                .map_err(|_| serde::de::Error::custom(format!("mode {s:?} is not an octal number")))?,
        };
        if m > 0o7777 {
            return Err(serde::de::Error::custom(format!("mode {m:o} is larger than 07777")));
        }
        Ok(Mode(m))
    }
}

/// What kind of source an entry names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    Path,
    Tar,
    Deb,
}

impl EntrySpec {
    /// The source kind and its location string.
    pub fn source(&self) -> Option<(SourceKind, &Spanned<String>)> {
        match (&self.path, &self.tar, &self.deb) {
            (Some(p), None, None) => Some((SourceKind::Path, p)),
            (None, Some(t), None) => Some((SourceKind::Tar, t)),
            (None, None, Some(d)) => Some((SourceKind::Deb, d)),
            _ => None,
        }
    }
    /// Root-relative destination (validated at load).
    pub fn dest(&self) -> String {
        self.dest.as_ref().and_then(|d| tree::clean_path(d.get_ref()).ok()).unwrap_or_default()
    }
    /// Whether `dest` was written with a trailing `/` (a file source goes inside it).
    pub fn dest_is_dir(&self) -> bool {
        self.dest.as_ref().is_none_or(|d| d.get_ref().ends_with('/'))
    }
}

pub fn is_url(s: &str) -> bool {
    s.starts_with("https://") || s.starts_with("http://")
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UserSpec {
    pub uid: u32,
    pub gid: Option<u32>,
    pub home: Option<String>,
    pub shell: Option<String>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StripSpec {
    #[serde(default)]
    pub paths: Vec<Spanned<String>>,
    /// Strip compilers, make and network probes (default true).
    #[serde(default = "yes")]
    pub toolchain: bool,
}
fn yes() -> bool {
    true
}
impl Default for StripSpec {
    fn default() -> Self {
        StripSpec { paths: Vec::new(), toolchain: true }
    }
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigSpec {
    pub entrypoint: Option<Vec<String>>,
    pub cmd: Option<Vec<String>>,
    #[serde(default)]
    pub env: BTreeMap<String, Spanned<String>>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    pub stop_signal: Option<String>,
}

/// A parsed, validated blueprint and where it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub path: PathBuf,
    pub dir: PathBuf,
    pub text: String,
    pub bp: Blueprint,
    pub base: BaseRef,
}

impl Loaded {
    /// `file:line:column` of a byte span.
    pub fn at(&self, span: std::ops::Range<usize>) -> Location {
        let (line, column) = line_col(&self.text, span.start);
        Location { file: self.path.clone(), line, column }
    }
    pub fn err(&self, span: std::ops::Range<usize>, msg: impl Into<String>) -> BlueprintError {
        BlueprintError::At { at: self.at(span), msg: msg.into() }
    }
    /// Path of the lock file beside the blueprint (`x.toml` -> `x.lock`).
    pub fn lock_path(&self) -> PathBuf {
        self.path.with_extension("lock")
    }
    /// Resolves a local source path against the blueprint's directory.
    pub fn source_path(&self, s: &str) -> PathBuf {
        self.dir.join(s)
    }
    /// The digest of the blueprint's meaning (comments and layout do not count).
    pub fn digest(&self) -> Digest {
        let bytes = crate::cjson::to_vec(&self.bp).unwrap_or_default();
        Digest::of(&bytes)
    }
}

/// Reads and validates a blueprint file: the one path `lock`, `build`,
/// `verify` and `lint` take (bounded read, UTF-8 and TOML errors placed).
pub fn load(path: &Path) -> Result<Loaded, BlueprintError> {
    let text = textfile::read(path, textfile::MAX_TEXT).map_err(|e| match e {
        TextError::Read { path, source } => BlueprintError::Read { path, source },
        TextError::TooLarge { path, max } => {
            BlueprintError::At { at: Location::start(&path), msg: format!("larger than {max} bytes; not read") }
        }
        TextError::At(at) => BlueprintError::placed(path, at),
    })?;
    parse(path, text)
}

/// Parses and validates blueprint text read from `path`.
pub fn parse(path: &Path, text: String) -> Result<Loaded, BlueprintError> {
    let origin = path.display().to_string();
    let bp: Blueprint = textfile::parse_toml(&text, &origin).map_err(|at| BlueprintError::placed(path, at))?;
    let dir = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let dir = if dir.as_os_str().is_empty() { PathBuf::from(".") } else { dir };
    let mut loaded = Loaded { path: path.into(), dir, text, bp, base: BaseRef::Scratch };
    loaded.base = validate(&loaded)?;
    Ok(loaded)
}

fn validate(l: &Loaded) -> Result<BaseRef, BlueprintError> {
    let bp = &l.bp;
    if *bp.schema.get_ref() != 1 {
        return Err(
            l.err(bp.schema.span(), format!("unsupported schema {}; this moat reads schema 1", bp.schema.get_ref()))
        );
    }
    let name = bp.name.get_ref();
    let name_ok = !name.is_empty()
        && name.len() <= 128
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if !name_ok {
        return Err(l.err(
            bp.name.span(),
            format!(
                "name {name:?} must be lowercase letters, digits, '.', '_' or '-', starting with a letter or digit"
            ),
        ));
    }
    let base = BaseRef::parse(bp.base.image.get_ref()).map_err(|m| l.err(bp.base.image.span(), m))?;
    if let Some(npm) = &bp.npm {
        validate_npm(l, npm)?;
    }
    if let Some(pypi) = &bp.pypi {
        if pypi.get_ref().packages.is_empty() {
            return Err(l.err(pypi.span(), "[pypi] packages is empty"));
        }
        crate::pypi::check(pypi.get_ref(), &bp.architecture).map_err(|(span, m)| l.err(span, m))?;
    }
    for layer in &bp.layers {
        if layer.get_ref().entries.is_empty() {
            return Err(l.err(layer.span(), "layer has no [[layer.entry]]"));
        }
        for e in &layer.get_ref().entries {
            validate_entry(l, e)?;
        }
    }
    for (uname, u) in &bp.users {
        let ok = !uname.is_empty()
            && uname.len() <= 32
            && uname.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-".contains(&b))
            && !uname.as_bytes()[0].is_ascii_digit();
        if !ok {
            return Err(l.err(u.span(), format!("user name {uname:?} is not a valid login name")));
        }
        if u.get_ref().uid == 0 || u.get_ref().gid == Some(0) {
            return Err(l.err(u.span(), format!("user {uname:?}: uid/gid 0 is root; sandbox users must not be root")));
        }
    }
    for p in &bp.strip.paths {
        globset::Glob::new(p.get_ref().trim_start_matches('/'))
            .map_err(|e| l.err(p.span(), format!("bad glob: {e}")))?;
    }
    for (k, v) in &bp.config.env {
        if k == "PATH" && v.get_ref() != FIXED_PATH {
            return Err(l.err(
                v.span(),
                format!("PATH is fixed to {FIXED_PATH} (PATH hardening); remove it from [config.env]"),
            ));
        }
        if k.is_empty() || k.contains('=') {
            return Err(l.err(v.span(), format!("invalid environment variable name {k:?}")));
        }
    }
    Ok(base)
}

fn validate_npm(l: &Loaded, npm: &Spanned<crate::npm::NpmSpec>) -> Result<(), BlueprintError> {
    let spec = npm.get_ref();
    if spec.packages.is_empty() {
        return Err(l.err(npm.span(), "[npm] packages is empty"));
    }
    for p in &spec.packages {
        crate::npm::parse_request(p.get_ref()).map_err(|m| l.err(p.span(), m))?;
    }
    let prefix = &spec.prefix;
    if !prefix.get_ref().starts_with('/') || tree::clean_path(prefix.get_ref()).is_err() {
        return Err(l.err(prefix.span(), format!("prefix {:?} must be a clean absolute path", prefix.get_ref())));
    }
    Ok(())
}

fn validate_entry(l: &Loaded, e: &Spanned<EntrySpec>) -> Result<(), BlueprintError> {
    let spec = e.get_ref();
    let Some((kind, src)) = spec.source() else {
        return Err(l.err(e.span(), "an entry needs exactly one of `path`, `tar` or `deb`"));
    };
    if let Some(d) = &spec.dest {
        if !d.get_ref().starts_with('/') {
            return Err(l.err(d.span(), format!("dest {:?} must be an absolute path in the image", d.get_ref())));
        }
        tree::clean_path(d.get_ref())
            .map_err(|_| l.err(d.span(), format!("dest {:?} escapes the image root", d.get_ref())))?;
    }
    let s = src.get_ref();
    if is_url(s) {
        if kind == SourceKind::Path {
            return Err(l.err(src.span(), "`path` must be a local file or directory; use `tar` or `deb` for URLs"));
        }
        if !s.starts_with("https://") {
            return Err(l.err(
                src.span(),
                "only https:// URLs are fetched (the sha256 pin protects content, TLS protects the request)",
            ));
        }
        if spec.sha256.is_none() {
            return Err(l.err(src.span(), format!("{s} is not pinned: add sha256 = \"<hex>\"")));
        }
    }
    if let Some(h) = &spec.sha256 {
        Digest::parse_hex(h.get_ref().trim_start_matches("sha256:"))
            .map_err(|_| l.err(h.span(), "sha256 must be 64 lowercase hex characters"))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    fn p(text: &str) -> Result<Loaded, BlueprintError> {
        parse(Path::new("bp.toml"), text.into())
    }
    #[test]
    fn minimal_and_defaults() {
        let l = p("name = \"x\"\n").unwrap();
        assert_eq!(l.base, BaseRef::Scratch);
        assert!(l.bp.strip.toolchain);
        assert_eq!(l.lock_path(), Path::new("bp.lock"));
    }
    #[test]
    fn errors_carry_line_and_column() {
        let e = p("name = \"x\"\n\n[base]\nimage = \"debian:bookworm\"\n").unwrap_err().to_string();
        assert!(e.starts_with("bp.toml:4:9: "), "{e}");
        assert!(e.contains("no @sha256"), "{e}");
        let e = p("name = \"x\"\nbogus = 1\n").unwrap_err().to_string();
        assert!(e.starts_with("bp.toml:2:1: "), "{e}");
        let e = p("name = \"x\"\nname = \"y\"\n").unwrap_err().to_string();
        assert!(e.starts_with("bp.toml:2:"), "{e}");
        let e =
            p("name = \"x\"\n[[layer]]\n[[layer.entry]]\npath = \"a\"\ndest = \"/../etc\"\n").unwrap_err().to_string();
        assert!(e.starts_with("bp.toml:5:8: ") && e.contains("escapes"), "{e}");
        let e = p("name = \"x\"\n[[layer]]\n[[layer.entry]]\ntar = \"https://example.invalid/a.tar\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("not pinned"), "{e}");
        let e = p("name = \"x\"\n[config.env]\nPATH = \"/sandbox/bin\"\n").unwrap_err().to_string();
        assert!(e.contains("PATH is fixed"), "{e}");
        let e = p("name = \"x\"\n[[layer]]\n[[layer.entry]]\npath = \"a\"\nmode = \"0999\"\n").unwrap_err().to_string();
        assert!(e.starts_with("bp.toml:5:"), "{e}");
    }
    #[test]
    fn npm_table_errors_are_placed() {
        let plain = p("name = \"x\"\n").unwrap();
        let text = String::from_utf8(crate::cjson::to_vec(&plain.bp).unwrap()).unwrap();
        assert!(!text.contains("npm"), "an absent [npm] changes every blueprint digest: {text}");
        let l = p("name = \"x\"\n[npm]\npackages = [\"@s/a@^1\", \"b\"]\n").unwrap();
        assert_eq!(l.bp.npm.unwrap().get_ref().prefix.get_ref(), "/usr/local");
        let e = p("name = \"x\"\n[npm]\npackages = [\"a@1\", \"a@git+https://h/r\"]\n").unwrap_err().to_string();
        assert!(e.starts_with("bp.toml:3:20: ") && e.contains("registry version"), "{e}");
        let e = p("name = \"x\"\n[npm]\npackages = [\"a\"]\nregistry = \"h\"\n").unwrap_err().to_string();
        assert!(e.starts_with("bp.toml:4:1: ") && e.contains("unknown field"), "{e}");
        let e = p("name = \"x\"\n[npm]\npackages = [\"a\"]\nprefix = \"usr\"\n").unwrap_err().to_string();
        assert!(e.starts_with("bp.toml:4:10: "), "{e}");
    }
    #[test]
    fn pypi_table_errors_are_placed() {
        let plain = p("name = \"x\"\n").unwrap();
        let text = String::from_utf8(crate::cjson::to_vec(&plain.bp).unwrap()).unwrap();
        assert!(!text.contains("pypi"), "an absent [pypi] changes every blueprint digest: {text}");
        let head =
            "name = \"x\"\n[pypi]\npython_version = \"3.11\"\ntarget = \"/usr/local/lib/python3.11/dist-packages\"\n";
        let l =
            p(&format!("{head}packages = [\"attrs==23.2.0\", \"rich[jupyter]>=13,<14 ; python_version >= '3.8'\"]\n"))
                .unwrap();
        assert_eq!(l.bp.pypi.unwrap().get_ref().python.get_ref(), "/usr/bin/python3");
        let e = p(&format!("{head}packages = [\"a==1\", \"b @ https://h/b.whl\"]\n")).unwrap_err().to_string();
        assert!(e.starts_with("bp.toml:5:21: ") && e.contains("URL"), "{e}");
        let e = p(&format!("{head}packages = [\"a\"]\nindex = \"h\"\n")).unwrap_err().to_string();
        assert!(e.starts_with("bp.toml:6:1: ") && e.contains("unknown field"), "{e}");
        let e = p("name = \"x\"\n[pypi]\npackages = [\"a\"]\npython_version = \"3.11\"\ntarget = \"/usr/local/lib/python3.12/dist-packages\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("bp.toml:5:10: ") && e.contains("python3.11"), "{e}");
        let e = p("name = \"x\"\n[pypi]\npackages = [\"a\"]\npython_version = \"three\"\ntarget = \"/t\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("bp.toml:4:18: "), "{e}");
    }
    #[test]
    fn base_refs() {
        let d = "sha256:".to_string() + &"a".repeat(64);
        assert!(matches!(BaseRef::parse(&format!("oci:img@{d}")).unwrap(), BaseRef::Layout { .. }));
        assert!(matches!(BaseRef::parse(&format!("localhost:5000/x@{d}")).unwrap(), BaseRef::Registry { .. }));
        assert!(BaseRef::parse("debian:latest").is_err());
    }
}
