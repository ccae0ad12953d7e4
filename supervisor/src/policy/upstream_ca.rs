//! An endpoint's `upstream_ca`: the CA certificates its upstream is verified
//! against, named by a PEM path relative to the policy file that writes it
//! and embedded (canonical PEM) when the file is loaded, so the revisions
//! carry the certificates and a file changed later changes nothing a sandbox
//! trusts. Guards against a private upstream CA becoming trusted by every
//! endpoint (it is trusted only where named), and against a typo'd path or a
//! file that is not certificates passing silently (refused at load, at the
//! key's file:line).
#![forbid(unsafe_code)]
use crate::policy::{placed, PolicyError};
use base64::Engine;
use moat_builder::textfile::At;
use rustls::pki_types::pem::{self, SectionKind};
use rustls::pki_types::CertificateDer;
use std::io::Read;
use std::path::Path;
use toml_edit::{Item, Table, Value};

/// The most bytes one `upstream_ca` file may hold.
pub const MAX_BYTES: u64 = 256 * 1024;
/// The most certificates one `upstream_ca` may hold.
pub const MAX_CERTS: usize = 64;

/// The certificates of a PEM text: only CERTIFICATE blocks (text around
/// them is ignored), at least one, at most `MAX_CERTS`, each a parsable
/// X.509 trust anchor.
pub fn certificates(pem_text: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    if pem_text.len() as u64 > MAX_BYTES {
        return Err(format!("larger than {MAX_BYTES} bytes"));
    }
    let mut rd = pem_text;
    let mut out = Vec::new();
    loop {
        match pem::from_buf(&mut rd) {
            Ok(None) => break,
            Ok(Some((SectionKind::Certificate, der))) => out.push(CertificateDer::from(der)),
            Ok(Some((kind, _))) => return Err(format!("a {kind:?} block: only CERTIFICATE blocks belong here")),
            Err(e) => return Err(format!("not PEM: {e:?}")),
        }
        if out.len() > MAX_CERTS {
            return Err(format!("more than {MAX_CERTS} certificates"));
        }
    }
    if out.is_empty() {
        return Err("no CERTIFICATE block (a PEM file of CA certificates is expected)".into());
    }
    let mut roots = rustls::RootCertStore::empty();
    for (i, der) in out.iter().enumerate() {
        roots.add(der.clone()).map_err(|e| format!("certificate {}: {e}", i + 1))?;
    }
    Ok(out)
}

/// The certificates written back as PEM, one block each, nothing else.
pub fn canonical(certs: &[CertificateDer<'_>]) -> String {
    let mut s = String::new();
    for c in certs {
        s.push_str("-----BEGIN CERTIFICATE-----\n");
        let b64 = base64::engine::general_purpose::STANDARD.encode(c.as_ref());
        for line in b64.as_bytes().chunks(64) {
            s.push_str(&String::from_utf8_lossy(line));
            s.push('\n');
        }
        s.push_str("-----END CERTIFICATE-----\n");
    }
    s
}

/// Whether a value is PEM text already (embedded), not a path.
pub fn is_pem(s: &str) -> bool {
    s.trim_start().starts_with("-----BEGIN ")
}

/// Checks an embedded value (a revision, a live change): PEM certificates.
pub(crate) fn validate(value: &str) -> Result<(), String> {
    if !is_pem(value) {
        return Err(format!("upstream_ca {value:?}: a path is read only when the policy is loaded from its own file"));
    }
    certificates(value.as_bytes()).map(|_| ()).map_err(|e| format!("upstream_ca: {e}"))
}

/// Replaces each `network.policy[].endpoint[].upstream_ca` of one file's
/// table (spans into `text`) with the canonical PEM it names: a path read
/// relative to `dir` (`None`: text with no file, where only PEM is taken).
/// An error is placed at the value in `text`.
pub(crate) fn embed(table: &mut Table, dir: Option<&Path>, text: &str, origin: &str) -> Result<(), PolicyError> {
    // TableLike::get_mut, never Item's index (which inserts what it misses).
    let network = table.get_mut("network").and_then(|n| n.as_table_like_mut());
    let Some(policies) = network.and_then(|n| n.get_mut("policy")) else { return Ok(()) };
    for policy in tables(policies) {
        let Some(endpoints) = policy.get_mut("endpoint") else { continue };
        for ep in tables(endpoints) {
            let Some(item) = ep.get_mut("upstream_ca") else { continue };
            let Some(value) = item.as_str().map(str::to_string) else { continue }; // the typed check places it
            let offset = item.span().map_or(0, |s| s.start);
            let at = |message: String| placed(At::new(text, offset, origin, message));
            let pem = read(&value, dir).map_err(|m| at(format!("upstream_ca {value:?}: {m}")))?;
            let certs = certificates(&pem).map_err(|m| at(format!("upstream_ca {value:?}: {m}")))?;
            *item = toml_edit::value(canonical(&certs));
        }
    }
    Ok(())
}

/// The PEM a value stands for: itself, or the file it names.
fn read(value: &str, dir: Option<&Path>) -> Result<Vec<u8>, String> {
    if is_pem(value) {
        return Ok(value.as_bytes().to_vec());
    }
    let Some(dir) = dir else {
        return Err("a path is read only when the policy is loaded from its own file".into());
    };
    if value.trim().is_empty() {
        return Err("empty: name a PEM file of CA certificates relative to the policy file".into());
    }
    let path = dir.join(value);
    let f = std::fs::File::open(&path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut v = Vec::new();
    f.take(MAX_BYTES + 1).read_to_end(&mut v).map_err(|e| format!("{}: {e}", path.display()))?;
    if v.len() as u64 > MAX_BYTES {
        return Err(format!("{}: larger than {MAX_BYTES} bytes", path.display()));
    }
    Ok(v)
}

/// The tables of an array of tables, or of an array of inline tables.
fn tables(item: &mut Item) -> Vec<&mut dyn toml_edit::TableLike> {
    match item {
        Item::ArrayOfTables(a) => a.iter_mut().map(|t| t as &mut dyn toml_edit::TableLike).collect(),
        Item::Value(Value::Array(a)) => a
            .iter_mut()
            .filter_map(|v| match v {
                Value::InlineTable(t) => Some(t as &mut dyn toml_edit::TableLike),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::extends;

    fn ca_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        p.self_signed(&key).unwrap().pem()
    }

    const RULE: &str = "[[network.policy]]\nname = \"p\"\nbinaries = [\"/usr/bin/git\"]\n\
                        [[network.policy.endpoint]]\nhost = \"git.internal\"\nprotocol = \"rest\"\n";

    #[test]
    fn a_path_is_embedded_relative_to_the_file_that_names_it() {
        let d = tempfile::tempdir().unwrap();
        let pem = ca_pem();
        std::fs::create_dir_all(d.path().join("team/certs")).unwrap();
        std::fs::write(d.path().join("team/certs/internal.pem"), format!("a comment\n{pem}trailing\n")).unwrap();
        std::fs::write(d.path().join("team/base.toml"), format!("{RULE}upstream_ca = \"certs/internal.pem\"\n"))
            .unwrap();
        std::fs::write(d.path().join("top.toml"), "extends = \"team/base.toml\"\n").unwrap();
        let p = extends::load(&d.path().join("top.toml")).unwrap().policy;
        let got = p.network.policies[0].endpoints[0].upstream_ca.clone().unwrap();
        assert_eq!(got, pem, "canonical PEM, the text around dropped");
        // The embedded form reads back as it is (a revision, `policy show` then `policy set`).
        let again = crate::policy::Policy::parse(&toml::to_string(&p).unwrap(), "rt.toml").unwrap();
        assert_eq!(again, p);
    }

    #[test]
    fn bad_values_are_refused_at_the_key() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("not.pem"), "hello\n").unwrap();
        std::fs::write(d.path().join("key.pem"), "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n")
            .unwrap();
        std::fs::write(d.path().join("big.pem"), vec![b'x'; MAX_BYTES as usize + 1]).unwrap();
        let line = RULE.lines().count() + 1;
        for (file, says) in [
            ("gone.pem", "No such file"),
            ("not.pem", "no CERTIFICATE block"),
            ("key.pem", "only CERTIFICATE blocks"),
            ("big.pem", "larger than"),
            ("", "empty"),
        ] {
            let p = d.path().join("p.toml");
            std::fs::write(&p, format!("{RULE}upstream_ca = {file:?}\n")).unwrap();
            let e = extends::load(&p).unwrap_err().to_string();
            assert!(e.starts_with(&format!("{}:{line}:15: upstream_ca {file:?}: ", p.display())), "{e}");
            assert!(e.contains(says), "{file}: {e}");
        }
        // Text with no file: a path cannot be read; PEM can.
        let e = crate::policy::Policy::parse(&format!("{RULE}upstream_ca = \"x.pem\"\n"), "t.toml").unwrap_err();
        assert!(e.to_string().starts_with(&format!("t.toml:{line}:15: ")) && e.to_string().contains("own file"));
        let inline = format!("{RULE}upstream_ca = '''\n{}'''\n", ca_pem());
        assert!(crate::policy::Policy::parse(&inline, "t.toml").is_ok());
        // Only where the gateway verifies upstream TLS itself.
        let l4 = RULE.replace("protocol = \"rest\"\n", "") + &format!("upstream_ca = '''\n{}'''\n", ca_pem());
        let e = crate::policy::Policy::parse(&l4, "t.toml").unwrap_err().to_string();
        assert!(e.contains("upstream_ca needs protocol"), "{e}");
    }
}
