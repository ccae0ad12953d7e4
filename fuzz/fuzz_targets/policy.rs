//! Fuzz target: policy TOML (`Policy::parse`, then the effective network
//! rules and their lint, as `moat policy check` does). Threat: a policy file
//! that panics or hangs the supervisor instead of being refused with a
//! located error. Oracle beyond "no panic": a parse error points inside the text.
#![no_main]
use libfuzzer_sys::fuzz_target;
use moat_supervisor::policy::{lint, Policy, PolicyError};

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let lines = text.split('\n').count();
    match Policy::parse(&text, "fuzz.toml") {
        Ok(p) => {
            if let Ok(rules) = p.network.effective() {
                let _ = lint::lint(&rules);
            }
            let _ = p.kept_dangerous_caps();
        }
        Err(e) => {
            if let PolicyError::Parse { line, column, .. } = &e {
                assert!(*line >= 1 && *line <= lines && *column >= 1, "location {line}:{column} outside the text: {e}");
            }
            let _ = e.to_string();
        }
    }
});
