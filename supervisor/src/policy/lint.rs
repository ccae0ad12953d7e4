//! Warnings about network rules that are valid but wider than they look
//! (`moat policy check`): binary globs, shells and interpreters that pass
//! their access on, L4 and audit-mode endpoints, and endpoints that reach a
//! model provider around `inference.local`. Guards against an operator
//! granting more than they meant.
#![forbid(unsafe_code)]
use crate::policy::matcher::host_matches;
use crate::policy::schema::{Endpoint, Enforcement, NetPolicy};

/// Hosts of hosted model providers: reaching them directly bypasses the
/// inference gateway (and puts a key inside the sandbox).
pub const INFERENCE_HOSTS: &[&str] = &[
    "api.openai.com",
    "api.anthropic.com",
    "generativelanguage.googleapis.com",
    "api.mistral.ai",
    "api.groq.com",
    "api.together.xyz",
    "api.fireworks.ai",
    "api.cohere.com",
    "api.deepseek.com",
    "openrouter.ai",
    "integrate.api.nvidia.com",
    "api.x.ai",
];

/// Shells and interpreters: listing one extends a rule to whatever it runs.
const LAUNCHERS: &[&str] =
    &["sh", "bash", "dash", "zsh", "busybox", "env", "python", "python3", "node", "perl", "ruby"];

/// The warning for an endpoint that opens a known inference provider directly.
fn direct_inference_warning(p: &NetPolicy, e: &Endpoint) -> Option<String> {
    INFERENCE_HOSTS.iter().any(|h| host_matches(&e.host, h) || e.host.eq_ignore_ascii_case(h)).then(|| {
        format!(
            "policy {}: opens inference provider {} directly; use inference.local so the key stays on the host",
            p.name, e.host
        )
    })
}

/// The [`lint`] warnings about endpoints that reach an inference provider
/// around `inference.local` (where the key would have to be in the sandbox).
pub fn direct_inference(policies: &[NetPolicy]) -> Vec<String> {
    policies.iter().flat_map(|p| p.endpoints.iter().filter_map(move |e| direct_inference_warning(p, e))).collect()
}

/// Warnings about rules that are valid but wider than they look.
pub fn lint(policies: &[NetPolicy]) -> Vec<String> {
    let mut out = Vec::new();
    for p in policies {
        for b in &p.binaries {
            if b.contains("**") || b.ends_with("/*") {
                out.push(format!("policy {}: binary pattern {b:?} admits every program below it", p.name));
            }
            let base = b.rsplit('/').next().unwrap_or(b);
            if LAUNCHERS.iter().any(|l| base == *l || base.starts_with(&format!("{l}3")) && *l == "python") {
                out.push(format!(
                    "policy {}: {b} starts other programs, and a rule matches the caller's ancestors too: \
                     everything it runs gets this access",
                    p.name
                ));
            }
        }
        for e in &p.endpoints {
            out.extend(direct_inference_warning(p, e));
            if e.protocol.is_none() {
                out.push(format!("policy {}: {}:{} is relayed at L4 (no method/path checks)", p.name, e.host, e.port));
            }
            if e.enforcement == Enforcement::Audit {
                out.push(format!(
                    "policy {}: {}:{} is in audit mode (refusals are only logged)",
                    p.name, e.host, e.port
                ));
            }
        }
    }
    out
}
