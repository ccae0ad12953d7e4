//! Writes one approved rule set into a policy file, so an approval made for
//! one sandbox becomes a durable rule for the next (`moat approve --write`,
//! the console's scope picker). Guards against a write that changes more
//! than that rule: the file keeps its comments and every other key (edited
//! with toml_edit, not rewritten), the result must load as a policy whose
//! network rules are exactly the old ones plus this one (a file whose rules
//! come from the file it extends would otherwise drop them), and the file is
//! replaced atomically, or not at all.
#![forbid(unsafe_code)]
use crate::policy::schema::NetPolicy;
use crate::policy::{Policy, PolicyError};
use moat_builder::textfile::{self, TextError};
use std::path::Path;
use toml_edit::{DocumentMut, Item};

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error(transparent)]
    Read(#[from] TextError),
    #[error("{path}: not a TOML document")]
    Toml { path: String, source: toml_edit::TomlError },
    #[error("{path}: cannot add a rule to a policy that does not load")]
    Load { path: String, source: PolicyError },
    #[error("{path}: the rule would not be added as it is")]
    Changed { path: String, source: PolicyError },
    #[error(
        "{path}: its [[network.policy]] rules come from the file it extends; adding one here would replace them: add the rule to {base}"
    )]
    Inherited { path: String, base: String },
    #[error("{path}")]
    Write { path: String, source: std::io::Error },
    #[error("the rule")]
    Serialize(#[from] toml::ser::Error),
}

/// What a new file says about itself.
const HEADER: &str = "# moat policy: rules approved by the operator (`moat approve --write`, `moat term`).\n\
# Over the baseline; use it with `moat run --policy FILE` or extend it.\n";

/// Adds `rule` to the `[[network.policy]]` rules of the policy file at
/// `path` (created over the baseline if missing); a rule set of the same
/// name is replaced.
pub fn add_rule(path: &Path, rule: &NetPolicy) -> Result<(), AppendError> {
    let shown = path.display().to_string();
    // Two approvals written at once (two consoles, or `moat approve
    // --write` beside one) each read, check and replace the file: one at a
    // time, or the second would drop the first's rule.
    let _held = lock_beside(path).map_err(|source| AppendError::Write { path: shown.clone(), source })?;
    let (text, before) = match path.exists() {
        true => {
            let text = textfile::read(path, textfile::MAX_TEXT)?;
            let layered = crate::policy::extends::load(path)
                .map_err(|source| AppendError::Load { path: shown.clone(), source })?;
            (text, Some(layered))
        }
        false => (HEADER.to_string(), None),
    };
    let mut doc: DocumentMut = text.parse().map_err(|source| AppendError::Toml { path: shown.clone(), source })?;
    let own_rules = doc.get("network").and_then(|n| n.get("policy")).is_some();
    if let Some(l) = &before {
        let inherited = !own_rules && !l.policy.network.policies.is_empty();
        if inherited {
            let base = l.files.get(1).map(|p| p.display().to_string()).unwrap_or_else(|| "its base".into());
            return Err(AppendError::Inherited { path: shown, base });
        }
    }
    let old = doc.get_mut("network").and_then(|n| n.get_mut("policy"));
    if let Some(rules) = old.and_then(Item::as_array_of_tables_mut) {
        let same_name = rules.iter().position(|t| t.get("name").and_then(Item::as_str) == Some(rule.name.as_str()));
        if let Some(i) = same_name {
            rules.remove(i);
        }
    }
    // Appended as text: a `[[network.policy]]` table may follow anything,
    // and the file's own tables keep their order and comments.
    let mut new_text = doc.to_string();
    if !new_text.is_empty() && !new_text.ends_with('\n') {
        new_text.push('\n');
    }
    new_text.push_str(&rule_text(rule)?);
    // The text must say what was meant: the old rules (minus a replaced
    // one) plus this one, everything else as before.
    let after = load_text(path, &new_text).map_err(|source| AppendError::Changed { path: shown.clone(), source })?;
    let mut expected = before.as_ref().map(|l| l.policy.clone()).unwrap_or_else(Policy::baseline);
    expected.network.policies.retain(|p| p.name != rule.name);
    expected.network.policies.push(after.network.policies.last().cloned().unwrap_or_else(|| rule.clone()));
    if after != expected || after.network.policies.last() != Some(rule) {
        let message = "the file read back differs from the policy meant (a key it extends changed)".to_string();
        return Err(AppendError::Changed {
            path: shown.clone(),
            source: PolicyError::Invalid { origin: shown, message },
        });
    }
    moat_builder::fsio::write(path, new_text.as_bytes(), 0o644)
        .map_err(|source| AppendError::Write { path: shown, source })
}

/// Takes the lock file beside `path` (`.NAME.lock`), held until dropped.
fn lock_beside(path: &Path) -> std::io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let f =
        std::fs::OpenOptions::new().create(true).append(true).mode(0o600).open(dir.join(format!(".{name}.lock")))?;
    f.lock()?;
    Ok(f)
}

/// The rule as `[[network.policy]]` text, its reason as a comment above.
fn rule_text(rule: &NetPolicy) -> Result<String, AppendError> {
    #[derive(serde::Serialize)]
    struct Wrap<'a> {
        network: Net<'a>,
    }
    #[derive(serde::Serialize)]
    struct Net<'a> {
        policy: [&'a NetPolicy; 1],
    }
    let body = toml::to_string(&Wrap { network: Net { policy: [rule] } })?;
    Ok(format!("\n# {}\n{body}", crate::visible::field(&rule.why.replace(['\n', '\r'], " "))))
}

/// Loads `text` as if it were the file at `path` (relative `extends` and
/// CA paths resolve from its directory): a temp file beside it.
fn load_text(path: &Path, text: &str) -> Result<Policy, PolicyError> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let io = |source| PolicyError::Io { path: dir.display().to_string(), source };
    let tmp = tempfile::Builder::new().prefix(".moat-policy.").suffix(".toml").tempfile_in(dir).map_err(io)?;
    std::fs::write(tmp.path(), text).map_err(io)?;
    Policy::load(tmp.path())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::schema::Endpoint;

    fn rule(name: &str, host: &str) -> NetPolicy {
        NetPolicy {
            name: name.into(),
            why: "approved by the operator\nfor a test".into(),
            binaries: vec!["/usr/bin/curl".into()],
            sha256: vec!["ab".repeat(32)],
            children: false,
            jit: true,
            endpoints: vec![Endpoint::l4(host, 443)],
        }
    }

    #[test]
    fn a_new_file_holds_the_rule_over_the_baseline() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("approved.toml");
        add_rule(&p, &rule("approved-1", "a.example.com")).unwrap();
        let got = Policy::load(&p).unwrap();
        let mut want = Policy::baseline();
        want.network.policies.push(rule("approved-1", "a.example.com"));
        assert_eq!(got, want);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.starts_with("# moat policy") && text.contains("# approved by the operator for a test"), "{text}");
    }

    #[test]
    fn comments_and_other_keys_stay_and_a_same_name_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.toml");
        std::fs::write(&p, "# mine\n[process]\nrlimit_nproc = 99 # kept\n").unwrap();
        add_rule(&p, &rule("approved-1", "a.example.com")).unwrap();
        add_rule(&p, &rule("approved-2", "b.example.com")).unwrap();
        add_rule(&p, &rule("approved-1", "c.example.com")).unwrap();
        let got = Policy::load(&p).unwrap();
        let hosts: Vec<_> = got.network.policies.iter().map(|r| r.endpoints[0].host.as_str()).collect();
        assert_eq!(hosts, ["b.example.com", "c.example.com"]);
        assert_eq!(got.process.rlimit_nproc, 99);
        let text = std::fs::read_to_string(&p).unwrap();
        assert!(text.contains("# mine") && text.contains("# kept"), "{text}");
    }

    #[test]
    fn rules_from_a_base_file_are_not_silently_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("base.toml");
        let mut text = String::from("[[network.policy]]\nname = \"base\"\nbinaries = [\"/usr/bin/git\"]\n");
        text.push_str("[[network.policy.endpoint]]\nhost = \"github.com\"\n");
        std::fs::write(&base, text).unwrap();
        let p = dir.path().join("p.toml");
        std::fs::write(&p, "extends = \"base.toml\"\n").unwrap();
        let e = add_rule(&p, &rule("approved-1", "a.example.com")).unwrap_err();
        assert!(matches!(e, AppendError::Inherited { .. }), "{e}");
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "extends = \"base.toml\"\n", "nothing written");
    }

    #[test]
    fn rules_written_at_once_are_all_kept() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.toml");
        std::thread::scope(|s| {
            for i in 0..8 {
                let p = &p;
                s.spawn(move || add_rule(p, &rule(&format!("approved-{i}"), &format!("h{i}.example.com"))).unwrap());
            }
        });
        assert_eq!(Policy::load(&p).unwrap().network.policies.len(), 8);
    }

    #[test]
    fn a_broken_file_is_refused_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("p.toml");
        std::fs::write(&p, "[network\n").unwrap();
        assert!(add_rule(&p, &rule("approved-1", "a.example.com")).is_err());
        assert_eq!(std::fs::read_to_string(&p).unwrap(), "[network\n");
    }
}
