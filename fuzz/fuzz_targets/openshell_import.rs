//! Fuzz target: OpenShell/NemoClaw policy YAML (`policy::import::import_yaml`),
//! input written by someone else. Threat: YAML that panics, aborts or stalls
//! the import (deep nesting, aliases) instead of being refused.
//! Oracles beyond "no panic": a located error points inside the text
//! (lines counted as YAML counts them: LF, CRLF, a lone CR, NEL, LS and PS
//! each end a line; with LF only, a file with bare CRs would fail it), and
//! what is imported renders (`to_toml`) as `[network]` TOML that reads back
//! to the same rules and validates, as `moat policy import` promises.
#![no_main]
use libfuzzer_sys::fuzz_target;
use moat_supervisor::policy::import::{import_yaml, to_toml, ImportError};
use moat_supervisor::policy::network::Network;

#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Doc {
    network: Network,
}

/// Lines of `text` as a YAML parser numbers them.
fn yaml_lines(text: &str) -> usize {
    let breaks = text
        .replace("\r\n", "\n")
        .chars()
        .filter(|c| matches!(c, '\n' | '\r' | '\u{85}' | '\u{2028}' | '\u{2029}'))
        .count();
    breaks + 1
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let lines = yaml_lines(&text);
    match import_yaml(&text, "fuzz.yaml") {
        Ok(imported) => {
            let out = to_toml(&imported);
            let doc: Doc = toml::from_str(&format!("[network]\ngateway_port = 3128\n{out}"))
                .unwrap_or_else(|e| panic!("imported rules do not read back: {e}\n{out}"));
            assert_eq!(doc.network.policies, imported.network, "imported rules change on the way through TOML");
            if let Err(e) = doc.network.validate() {
                panic!("imported rules do not validate: {e}\n{out}");
            }
        }
        Err(e) => {
            if let ImportError::Yaml { line, column, .. } = &e {
                assert!(*line >= 1 && *line <= lines && *column >= 1, "location {line}:{column} outside the text: {e}");
            }
            let _ = e.to_string();
        }
    }
});
