//! Policy files that hold only what they change: a file names its base
//! (`extends = "baseline"`, the default, or another file relative to it);
//! its tables merge key by key over the base's and every other value, arrays
//! included, replaces the base's. Guards against a small file changing what
//! it does not name, a typo lost in the merge (each file's keys are typed
//! against the whole schema and errors are placed at file:line:column in the
//! file that wrote them), and chains that loop or never end.
#![forbid(unsafe_code)]
use crate::policy::{placed, upstream_ca, Policy, PolicyError};
use moat_builder::textfile::{self, At, TextError};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use toml_edit::{DocumentMut, ImDocument, Item, Key, Table, Value};

/// What `extends` names when a file says nothing: the embedded baseline.
pub const BASELINE: &str = "baseline";

/// Files in one chain, the loaded one included.
pub const MAX_FILES: usize = 8;

/// A policy loaded from its file and the files it extends.
#[derive(Debug, Clone)]
pub struct Layered {
    pub policy: Policy,
    /// Sections and `section.key`s some file of the chain names (the
    /// baseline's own are not counted).
    pub named: BTreeSet<String>,
    /// The files read, the loaded one first.
    pub files: Vec<PathBuf>,
}

/// The sections fixed when a sandbox is created, and the one key of
/// `[network]` that is.
const FIXED: &[&str] = &["filesystem", "landlock", "process", "supervisor", "trust", "network.gateway_port"];

impl Layered {
    /// Keys the files name, among those fixed at creation, whose value
    /// differs from `running`'s: what a live change cannot do.
    pub fn fixed_changes(&self, running: &Policy) -> Vec<String> {
        let (new, old) = (serde_json::to_value(&self.policy), serde_json::to_value(running));
        let (Ok(new), Ok(old)) = (new, old) else { return vec!["(the policy could not be compared)".into()] };
        let at = |v: &serde_json::Value, key: &str| key.split('.').fold(v.clone(), |v, k| v[k].clone());
        self.named
            .iter()
            .filter(|k| k.contains('.') && FIXED.iter().any(|f| *k == f || k.starts_with(&format!("{f}."))))
            .filter(|k| at(&new, k) != at(&old, k))
            .cloned()
            .collect()
    }
}

/// One file of a chain, parsed (its spans point into `text`).
struct Layer {
    origin: String,
    dir: PathBuf,
    text: String,
    table: Table,
    /// What it extends, and where that is written.
    extends: Option<(String, usize)>,
}

/// Loads `path` and the chain of files it extends, innermost first over the
/// baseline. Each file, merged over its base, must be a valid policy.
pub fn load(path: &Path) -> Result<Layered, PolicyError> {
    let mut chain: Vec<Layer> = Vec::new();
    let mut seen: Vec<PathBuf> = Vec::new();
    // Bytes one chain may hold, all its files together.
    let mut budget = textfile::MAX_TEXT;
    let mut next = path.to_path_buf();
    loop {
        let real = std::fs::canonicalize(&next);
        if let Some(from) = chain.last() {
            let (name, offset) = from.extends.clone().unwrap_or_default();
            let at = |message: String| placed(At::new(&from.text, offset, &from.origin, message));
            let real = real.map_err(|e| at(format!("extends {name:?}: {}: {e}", next.display())))?;
            if seen.contains(&real) {
                let names: Vec<&str> = chain.iter().map(|l| l.origin.as_str()).collect();
                return Err(at(format!("extends cycle: {} -> {}", names.join(" -> "), next.display())));
            }
            if chain.len() == MAX_FILES {
                return Err(at(format!("extends: more than {MAX_FILES} files in one chain")));
            }
            seen.push(real);
        } else if let Ok(real) = real {
            seen.push(real);
        }
        let layer = Layer::read(&next, budget)?;
        budget -= layer.text.len() as u64;
        let base = match &layer.extends {
            Some((name, _)) if name != BASELINE => Some(layer.dir.join(name)),
            _ => None,
        };
        chain.push(layer);
        match base {
            Some(b) => next = b,
            None => break,
        }
    }
    let files = chain.iter().map(|l| PathBuf::from(&l.origin)).collect();
    let mut named = BTreeSet::new();
    let mut policy = Policy::baseline();
    for mut layer in chain.into_iter().rev() {
        names(&layer.table, &mut named);
        // Before the merge, while the values keep their places in this file.
        upstream_ca::embed(&mut layer.table, Some(&layer.dir), &layer.text, &layer.origin)?;
        policy = over(&policy, layer.table, &layer.text, &layer.origin)?;
        policy.trust.embed_keys(&layer.dir).map_err(|message| invalid(&layer.origin, message))?;
        policy.validate().map_err(|message| invalid(&layer.origin, message))?;
    }
    Ok(Layered { policy, named, files })
}

/// Parses policy text with no file: over the baseline; a file it extends
/// cannot be read (and trust key paths stay paths).
pub fn parse(text: &str, origin: &str) -> Result<Policy, PolicyError> {
    let (mut table, extends) = split(text, origin)?;
    upstream_ca::embed(&mut table, None, text, origin)?;
    if let Some((name, offset)) = extends.filter(|(n, _)| n != BASELINE) {
        let message = format!("extends {name:?}: a file is read only when the policy is loaded from its own file");
        return Err(placed(At::new(text, offset, origin, message)));
    }
    let policy = over(&Policy::baseline(), table, text, origin)?;
    policy.validate().map_err(|message| invalid(origin, message))?;
    Ok(policy)
}

impl Layer {
    /// Reads at most `max` bytes (what is left of the chain's bound).
    fn read(path: &Path, max: u64) -> Result<Layer, PolicyError> {
        let origin = path.display().to_string();
        let text = textfile::read(path, max).map_err(|e| match e {
            TextError::Read { source, .. } => PolicyError::Io { path: origin.clone(), source },
            TextError::TooLarge { max, .. } if max < textfile::MAX_TEXT => invalid(
                &origin,
                format!(
                    "larger than {max} bytes, what is left of the {} one extends chain may hold; not read",
                    textfile::MAX_TEXT
                ),
            ),
            TextError::TooLarge { max, .. } => invalid(&origin, format!("larger than {max} bytes; not read")),
            TextError::At(at) => placed(at),
        })?;
        let (table, extends) = split(&text, &origin)?;
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new(".")).to_path_buf();
        Ok(Layer { origin, dir, text, table, extends })
    }
}

/// A file's table (spans into `text`) and its `extends`, taken out of it.
fn split(text: &str, origin: &str) -> Result<(Table, Option<(String, usize)>), PolicyError> {
    let doc = ImDocument::parse(text)
        .map_err(|e| placed(At::new(text, e.span().map_or(0, |s| s.start), origin, e.message().trim_end())))?;
    let mut table = doc.into_table();
    let extends = match table.remove("extends") {
        None => None,
        Some(item) => {
            let offset = item.span().map_or(0, |s| s.start);
            match item.as_str() {
                Some(s) if !s.trim().is_empty() => Some((s.to_string(), offset)),
                _ => {
                    let message = format!("extends: a string, {BASELINE:?} or a policy file relative to this one");
                    return Err(placed(At::new(text, offset, origin, message)));
                }
            }
        }
    };
    // The typed check would say this too, without naming `extends`.
    if let Some((key, _)) = table.iter().find(|(k, _)| !TOP.contains(k)) {
        let offset = table.key(key).and_then(|k| k.span()).map_or(0, |s| s.start);
        let expected: Vec<String> = TOP.iter().map(|k| format!("`{k}`")).collect();
        let message = format!("unknown field `{key}`, expected one of {}", expected.join(", "));
        return Err(placed(At::new(text, offset, origin, message)));
    }
    Ok((table, extends))
}

/// The keys of a policy file's top level: `extends` and the policy's own.
const TOP: &[&str] = &["extends", "version", "filesystem", "landlock", "process", "supervisor", "network", "trust"];

/// `table` (one file's, spans into `text`) over `base`, typed: an error in
/// the file's keys or values is placed in `text`. The base goes in without
/// spans (re-serialized from its typed form), so no error is placed in a
/// file that did not write it.
fn over(base: &Policy, table: Table, text: &str, origin: &str) -> Result<Policy, PolicyError> {
    let internal = |e: &dyn std::fmt::Display| invalid(origin, format!("its base policy: {e}"));
    let base_text = toml::to_string(base).map_err(|e| internal(&e))?;
    let base_doc: DocumentMut = base_text.parse().map_err(|e| internal(&e))?;
    let Item::Table(merged) = merge(Item::Table(base_doc.into_table()), Item::Table(table)) else {
        return Err(internal(&"not a table"));
    };
    toml_edit::de::from_document(DocumentMut::from(merged)).map_err(|e| match e.span() {
        Some(s) => placed(At::new(text, s.start, origin, e.message().trim_end())),
        None => invalid(origin, e.message().trim_end().to_string()),
    })
}

fn invalid(origin: &str, message: String) -> PolicyError {
    PolicyError::Invalid { origin: origin.into(), message }
}

/// Records `section` and `section.key` for each key `table` names.
fn names(table: &Table, out: &mut BTreeSet<String>) {
    for (k, item) in table.iter() {
        out.insert(k.to_string());
        let inner: Vec<String> = match item {
            Item::Table(t) => t.iter().map(|(k, _)| k.to_string()).collect(),
            Item::Value(Value::InlineTable(t)) => t.iter().map(|(k, _)| k.to_string()).collect(),
            _ => Vec::new(),
        };
        out.extend(inner.into_iter().map(|i| format!("{k}.{i}")));
    }
}

/// `new` over `old`: two tables merge key by key (`new`'s keys, with their
/// places in its file, win); anything else is `new` whole.
fn merge(old: Item, new: Item) -> Item {
    match new {
        Item::Table(mut t) => {
            for (key, item) in entries(old) {
                match t.remove_entry(key.get()) {
                    Some((k, n)) => t.insert_formatted(&k, merge(item, n)),
                    None => t.insert_formatted(&key, item),
                };
            }
            Item::Table(t)
        }
        Item::Value(Value::InlineTable(mut t)) => {
            for (key, item) in entries(old) {
                let (k, merged) = match t.remove_entry(key.get()) {
                    Some((k, n)) => (k, merge(item, Item::Value(n))),
                    None => (key, item),
                };
                if let Ok(v) = merged.into_value() {
                    t.insert_formatted(&k, v);
                }
            }
            Item::Value(Value::InlineTable(t))
        }
        other => other,
    }
}

/// The entries of a table (none for anything else).
fn entries(item: Item) -> Vec<(Key, Item)> {
    match item {
        Item::Table(mut t) => {
            let keys: Vec<String> = t.iter().map(|(k, _)| k.to_string()).collect();
            keys.iter().filter_map(|k| t.remove_entry(k)).collect()
        }
        Item::Value(Value::InlineTable(mut t)) => {
            let keys: Vec<String> = t.iter().map(|(k, _)| k.to_string()).collect();
            keys.iter().filter_map(|k| t.remove_entry(k)).map(|(k, v)| (k, Item::Value(v))).collect()
        }
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, text).unwrap();
        p
    }

    fn err(r: Result<impl std::fmt::Debug, PolicyError>) -> String {
        r.unwrap_err().to_string()
    }

    #[test]
    fn a_small_text_changes_what_it_names_and_nothing_else() {
        let p = Policy::parse("[process]\nrlimit_nproc = 64\n", "small.toml").unwrap();
        let mut want = Policy::baseline();
        want.process.rlimit_nproc = 64;
        assert_eq!(p, want);
        assert_eq!(Policy::parse("", "empty.toml").unwrap(), Policy::baseline());
        assert_eq!(Policy::parse("extends = \"baseline\"\nversion = 1\n", "e.toml").unwrap(), Policy::baseline());
        assert!(err(Policy::parse("version = 2", "v.toml")).contains("version 2"));
    }

    #[test]
    fn arrays_replace_tables_merge() {
        let text = "[filesystem]\nread_only = [{ path = \"/usr\", why = \"x\" }]\n[network]\npresets = [\"github\"]\n";
        let p = Policy::parse(text, "a.toml").unwrap();
        let base = Policy::baseline();
        assert_eq!(p.filesystem.read_only.len(), 1);
        assert_eq!(p.filesystem.read_write, base.filesystem.read_write);
        assert_eq!(p.filesystem.tmp_size_mib, base.filesystem.tmp_size_mib);
        assert_eq!((p.network.gateway_port, p.network.presets.clone()), (3128, vec!["github".to_string()]));
        // Inline and dotted forms merge the same way.
        let p = Policy::parse("process = { rlimit_nproc = 7 }\nnetwork.gateway_port = 9\n", "i.toml").unwrap();
        assert_eq!((p.process.rlimit_nproc, p.process.user.as_str(), p.network.gateway_port), (7, "sandbox", 9));
        // A table where the base has one replaced by a value: a type error, placed.
        assert!(err(Policy::parse("\nprocess = 5\n", "t.toml")).starts_with("t.toml:2:11: "));
    }

    #[test]
    fn errors_are_placed_in_the_small_text() {
        let e = err(Policy::parse("# c\n[process]\nrlimit_nproc = 64\nrlimit_nprocs = 1\n", "p.toml"));
        assert!(e.starts_with("p.toml:4:1: ") && e.contains("rlimit_nprocs"), "{e}");
        let e = err(Policy::parse("[filesystem]\ntmp_size_mib = \"big\"\n", "p.toml"));
        assert!(e.starts_with("p.toml:2:16: "), "{e}");
        let rule = "[[network.policy]]\nname = \"p\"\nbinaries = [\"/x\"]\n[[network.policy.endpoint]]\nhost = \"a\"\n  hots = 1\n";
        let e = err(Policy::parse(rule, "p.toml"));
        assert!(e.starts_with("p.toml:6:3: ") && e.contains("hots"), "{e}");
        let e = err(Policy::parse("[[network.policy]]\nname = \"p\"\n", "p.toml"));
        assert!(e.starts_with("p.toml:1:") && e.contains("binaries"), "{e}");
        let e = err(Policy::parse("extends = 3\n", "p.toml"));
        assert!(e.starts_with("p.toml:1:11: ") && e.contains("extends"), "{e}");
        let e = err(Policy::parse("extends = \"team.toml\"\n", "p.toml"));
        assert!(e.starts_with("p.toml:1:11: ") && e.contains("own file"), "{e}");
        let e = err(Policy::parse("[process]\nuser = \"root\"\n", "p.toml"));
        assert_eq!(e, "p.toml: process.user \"root\": sandboxes never run as root");
    }

    #[test]
    fn chains_load_innermost_first_and_name_what_they_set() {
        let d = tempfile::tempdir().unwrap();
        write(d.path(), "team/base.toml", "[process]\nrlimit_nproc = 300\nrlimit_nofile = 100\n");
        write(d.path(), "mid.toml", "extends = \"team/base.toml\"\n[filesystem]\ntmp_size_mib = 64\n");
        let top = write(d.path(), "p/top.toml", "extends = \"../mid.toml\"\n[process]\nrlimit_nofile = 4096\n");
        let l = load(&top).unwrap();
        assert_eq!((l.policy.process.rlimit_nproc, l.policy.process.rlimit_nofile), (300, 4096));
        assert_eq!(l.policy.filesystem.tmp_size_mib, 64);
        assert_eq!(l.policy.filesystem.read_only, Policy::baseline().filesystem.read_only);
        assert_eq!(l.files.len(), 3);
        let named: Vec<&str> = l.named.iter().map(String::as_str).collect();
        assert_eq!(
            named,
            ["filesystem", "filesystem.tmp_size_mib", "process", "process.rlimit_nofile", "process.rlimit_nproc"]
        );
        let mut running = l.policy.clone();
        assert!(l.fixed_changes(&running).is_empty());
        running.process.rlimit_nproc = 1;
        running.process.pids_max = 1;
        running.network.gateway_port = 1;
        assert_eq!(l.fixed_changes(&running), ["process.rlimit_nproc"]);
        // An error in a base is placed in the base, named by the path that reached it.
        write(d.path(), "team/base.toml", "[process]\nrlimit_nproc = 300\n\nrlimit_nofiles = 100\n");
        let e = err(load(&top));
        assert!(e.starts_with(&format!("{}:4:1: ", d.path().join("p/../team/base.toml").display())), "{e}");
    }

    #[test]
    fn cycles_long_chains_and_missing_bases_are_refused_where_they_are_named() {
        let d = tempfile::tempdir().unwrap();
        let a = write(d.path(), "a.toml", "extends = \"b.toml\"\n");
        write(d.path(), "b.toml", "# b\nextends = \"./a.toml\"\n");
        let e = err(load(&a));
        assert!(e.contains("b.toml:2:11: extends cycle: ") && e.contains("a.toml"), "{e}");
        let me = write(d.path(), "me.toml", "extends = \"me.toml\"\n");
        assert!(err(load(&me)).contains("me.toml:1:11: extends cycle"));
        for i in 0..MAX_FILES {
            write(d.path(), &format!("l{i}.toml"), &format!("extends = \"l{}.toml\"\n", i + 1));
        }
        write(d.path(), &format!("l{MAX_FILES}.toml"), "");
        let e = err(load(&d.path().join("l0.toml")));
        assert!(e.contains(&format!("l{}.toml:1:11: ", MAX_FILES - 1)) && e.contains("more than 8"), "{e}");
        assert!(load(&d.path().join("l1.toml")).is_ok(), "eight files are allowed");
        // All files of a chain together are bounded like one file.
        let half = format!("# {}\n", "x".repeat(textfile::MAX_TEXT as usize / 2));
        write(d.path(), "big1.toml", &format!("extends = \"big2.toml\"\n{half}"));
        write(d.path(), "big2.toml", &half);
        let e = err(load(&d.path().join("big1.toml")));
        assert!(e.contains("big2.toml: larger than") && e.contains("extends chain"), "{e}");
        assert!(load(&d.path().join("big2.toml")).is_ok());
        let gone = write(d.path(), "gone.toml", "\nextends = \"nowhere.toml\"\n");
        let e = err(load(&gone));
        assert!(e.contains("gone.toml:2:11: extends \"nowhere.toml\"") && e.contains("nowhere.toml"), "{e}");
    }

    #[test]
    fn trust_keys_are_read_relative_to_the_file_that_names_them() {
        let d = tempfile::tempdir().unwrap();
        let (_, public) = moat_builder::sign::keys::generate(b"pw").unwrap();
        write(d.path(), "team/k.pub", &public);
        write(d.path(), "team/base.toml", "[trust]\nkeys = [\"k.pub\"]\nrequire_signature = true\n");
        let top = write(d.path(), "top.toml", "extends = \"team/base.toml\"\n[process]\nrlimit_nproc = 9\n");
        let p = load(&top).unwrap().policy;
        assert_eq!(p.trust.keys, std::slice::from_ref(&public));
        assert!(p.trust.require_signature);
        // Named again in the top file: relative to the top file.
        let own = write(d.path(), "own.toml", "extends = \"team/base.toml\"\n[trust]\nkeys = [\"team/k.pub\"]\n");
        assert_eq!(load(&own).unwrap().policy.trust.keys, [public]);
        let wrong = write(d.path(), "wrong.toml", "extends = \"team/base.toml\"\n[trust]\nkeys = [\"k.pub\"]\n");
        let e = err(load(&wrong));
        assert!(e.starts_with(&format!("{}: trust.keys \"k.pub\"", wrong.display())), "{e}");
    }

    #[test]
    fn a_misspelt_extends_is_answered_with_the_keys_a_file_may_have() {
        let e = err(Policy::parse("# c\nextend = \"team.toml\"\n", "p.toml"));
        assert!(e.starts_with("p.toml:2:1: unknown field `extend`, expected one of `extends`, `version`"), "{e}");
        // The list is the policy's own fields, as its typed check says them.
        let typed = toml::from_str::<Policy>("zz = 1").unwrap_err().to_string();
        let own: Vec<String> = TOP[1..].iter().map(|k| format!("`{k}`")).collect();
        assert!(typed.contains(&format!("expected one of {}\n", own.join(", "))), "{typed}");
    }

    #[test]
    fn the_baseline_round_trips_through_its_serialized_form() {
        // The base of every merge is the typed policy written back as TOML.
        let base = Policy::baseline();
        assert_eq!(Policy::parse(&toml::to_string(&base).unwrap(), "rt.toml").unwrap(), base);
    }
}
