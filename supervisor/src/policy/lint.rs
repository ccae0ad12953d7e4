//! Warnings about network rules that are valid but wider than they look
//! (`moat policy check`): binary globs, shells and interpreters that pass
//! their access on, L4 and audit-mode endpoints, `*.domain` hosts (any depth
//! in moat, one label in OpenShell and TLS), and endpoints that reach a
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

/// Shells and interpreters: a rule for one covers every script it is given.
const INTERPRETERS: &[&str] = &["sh", "bash", "dash", "zsh", "busybox", "python", "python3", "node", "perl", "ruby"];

/// Programs known to start other programs, with how: under `children =
/// true` everything they start gets the rule's access.
const SPAWNERS: &[(&str, &str)] = &[
    ("git", "aliases (`!cmd`), hooks, core.sshCommand, credential helpers and editors"),
    ("npm", "package install scripts and `npm exec`"),
    ("npx", "whatever package it is asked to run"),
    ("yarn", "package scripts"),
    ("pip", "build backends of source packages"),
    ("pip3", "build backends of source packages"),
    ("make", "every recipe line"),
    ("env", "the command it is given"),
    ("xargs", "the command it is given"),
    ("find", "-exec commands"),
    ("ssh", "ProxyCommand and the remote command's local side"),
    ("sudo", "the command it is given"),
    ("timeout", "the command it is given"),
    ("nohup", "the command it is given"),
    ("sh", "any command"),
    ("bash", "any command"),
    ("dash", "any command"),
    ("zsh", "any command"),
    ("busybox", "any applet and command"),
    ("python", "any program (subprocess)"),
    ("python3", "any program (subprocess)"),
    ("node", "any program (child_process)"),
    ("perl", "any program"),
    ("ruby", "any program"),
];

/// Clients whose ordinary reads need a write method, what it is, and the
/// rules that allow it: `access = "read-only"` refuses them with nothing
/// in their own error to say why. An endpoint takes `access` or `rules`,
/// never both, so the rules replace the access and allow the reads too.
const READS_WITH_WRITES: &[(&str, &str, &str)] = &[
    (
        "git",
        "git clone and fetch over HTTPS POST to .../git-upload-pack",
        r#"rules = [{ allow = { method = "GET", path = "/**" } }, { allow = { method = "POST", path = "/**/git-upload-pack" } }] in place of access = "read-only""#,
    ),
    (
        "git-remote-http",
        "git clone and fetch over HTTPS POST to .../git-upload-pack",
        r#"rules = [{ allow = { method = "GET", path = "/**" } }, { allow = { method = "POST", path = "/**/git-upload-pack" } }] in place of access = "read-only""#,
    ),
    (
        "git-remote-https",
        "git clone and fetch over HTTPS POST to .../git-upload-pack",
        r#"rules = [{ allow = { method = "GET", path = "/**" } }, { allow = { method = "POST", path = "/**/git-upload-pack" } }] in place of access = "read-only""#,
    ),
    (
        "npm",
        "npm install and npm audit POST the audit report to /-/npm/v1/security/...",
        r#"rules = [{ allow = { method = "GET", path = "/**" } }, { allow = { method = "POST", path = "/-/npm/v1/security/**" } }] in place of access = "read-only", or run npm with --no-audit"#,
    ),
];

/// The file name of a binary pattern, with python3.N read as python3.
fn base_name(b: &str) -> &str {
    let base = b.rsplit('/').next().unwrap_or(b);
    if base.starts_with("python3") {
        "python3"
    } else {
        base
    }
}

/// Whether binary pattern `b` names program `name`: its file name is
/// `name`, or a glob that matches it (`git-remote-http*`).
fn names(b: &str, name: &str) -> bool {
    let base = base_name(b);
    base == name
        || (base.contains(['*', '?', '[']) && crate::policy::schema::binary_glob(base).is_ok_and(|g| g.is_match(name)))
}

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
            let base = base_name(b);
            if INTERPRETERS.contains(&base) {
                out.push(format!(
                    "policy {}: {b} runs whatever script or command it is given: any code written for it gets this access",
                    p.name
                ));
            }
            if p.children {
                let how = SPAWNERS.iter().find(|(n, _)| *n == base).map(|(_, how)| *how);
                out.push(match how {
                    Some(how) => format!(
                        "policy {}: children = true: every program {b} starts gets this access, and it starts \
                         programs through {how}",
                        p.name
                    ),
                    None => format!("policy {}: children = true: every program {b} starts gets this access", p.name),
                });
            }
        }
        for e in &p.endpoints {
            out.extend(direct_inference_warning(p, e));
            if let Some(domain) = e.host.strip_prefix("*.") {
                out.push(format!(
                    "policy {}: host {} matches names at any depth below {domain} (a.{domain}, a.b.{domain}), \
                     where OpenShell and TLS certificates mean one label: write +.{domain} for exactly one \
                     label, or **.{domain} to say any depth",
                    p.name, e.host
                ));
            }
            if e.protocol.is_none() {
                out.push(format!("policy {}: {}:{} is relayed at L4 (no method/path checks)", p.name, e.host, e.port));
            }
            // (An endpoint with `access` has no `rules`: nothing else can allow the POST.)
            if e.access == Some(crate::policy::schema::Access::ReadOnly) {
                for b in &p.binaries {
                    if let Some((_, why, fix)) = READS_WITH_WRITES.iter().find(|(n, ..)| names(b, n)) {
                        out.push(format!(
                            "policy {}: {b} cannot work with read-only access to {}:{}: {why}; add {fix}",
                            p.name, e.host, e.port
                        ));
                    }
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::schema::parse_toml;

    fn policies(text: &str) -> Vec<NetPolicy> {
        #[derive(serde::Deserialize)]
        struct F {
            policy: Vec<NetPolicy>,
        }
        parse_toml::<F>(text, "test").unwrap().policy
    }

    const GIT: &str = r#"
[[policy]]
name = "git"
binaries = ["/usr/bin/git", "/usr/bin/python3.11"]
CHILDREN
[[policy.endpoint]]
host = "github.com"
protocol = "rest"
access = "read-only"
"#;

    #[test]
    fn a_star_wildcard_is_explained_and_the_explicit_forms_are_not() {
        let with = |host: &str| lint(&policies(&GIT.replace("CHILDREN", "").replace("github.com", host)));
        let w = with("*.example.com");
        let star: Vec<_> = w.iter().filter(|w| w.contains("host *.example.com")).collect();
        assert_eq!(star.len(), 1, "{w:?}");
        assert!(star[0].contains("any depth") && star[0].contains("+.example.com"), "{star:?}");
        for explicit in ["+.example.com", "**.example.com", "example.com"] {
            assert!(with(explicit).iter().all(|w| !w.contains("depth")), "{explicit}: {:?}", with(explicit));
        }
    }

    #[test]
    fn git_and_npm_under_read_only_are_told_what_they_need() {
        let w = lint(&policies(&GIT.replace("CHILDREN", "")));
        let git: Vec<_> = w.iter().filter(|w| w.contains("git-upload-pack")).collect();
        assert_eq!(git.len(), 1, "{w:?}");
        assert!(git[0].contains("/usr/bin/git") && git[0].contains("github.com:443"), "{git:?}");
        let npm = lint(&policies(&GIT.replace("CHILDREN", "").replace("/usr/bin/git", "/usr/bin/npm")));
        assert!(npm.iter().any(|w| w.contains("--no-audit")), "{npm:?}");
        // The advice, taken: its rules in place of the access line make a
        // valid endpoint that reads, fetches (or audits) and writes nothing else.
        for (bin, warning, posts) in [
            ("/usr/bin/git", git[0], "/o/r.git/git-upload-pack"),
            ("/usr/bin/npm", npm.iter().find(|w| w.contains("--no-audit")).unwrap(), "/-/npm/v1/security/audits/quick"),
        ] {
            let start = warning.find("rules = [").unwrap();
            let rules = &warning[start..start + warning[start..].find("}]").unwrap() + 2];
            let fixed =
                GIT.replace("CHILDREN", "").replace("/usr/bin/git", bin).replace("access = \"read-only\"", rules);
            let ps = policies(&fixed);
            ps.iter().for_each(|p| p.validate().unwrap_or_else(|e| panic!("{bin}: {e}: {fixed}")));
            let quiet = lint(&ps);
            assert!(quiet.iter().all(|w| !w.contains("read-only")), "{quiet:?}");
            let c = crate::policy::matcher::Compiled::new(ps.clone()).unwrap();
            let check = |m: &str, path: &str| c.check_request("git", &ps[0].endpoints[0], m, path);
            assert_eq!(check("GET", "/o/r.git/info/refs"), crate::policy::matcher::RequestVerdict::Allow, "{bin}");
            assert_eq!(check("POST", posts), crate::policy::matcher::RequestVerdict::Allow, "{bin}");
            assert_ne!(check("POST", "/o/r.git/git-receive-pack"), crate::policy::matcher::RequestVerdict::Allow);
            assert_ne!(check("PUT", "/x"), crate::policy::matcher::RequestVerdict::Allow, "{bin}");
        }
    }

    #[test]
    fn a_binary_glob_naming_git_is_told_too() {
        let glob = GIT.replace("CHILDREN", "").replace("\"/usr/bin/git\"", "\"/usr/lib/git-core/git-remote-http*\"");
        let w = lint(&policies(&glob));
        assert!(w.iter().any(|w| w.contains("git-remote-http*") && w.contains("git-upload-pack")), "{w:?}");
    }

    #[test]
    fn children_name_what_each_spawner_runs() {
        let quiet = lint(&policies(&GIT.replace("CHILDREN", "")));
        assert!(quiet.iter().all(|w| !w.contains("children")), "{quiet:?}");
        assert!(quiet.iter().any(|w| w.contains("/usr/bin/python3.11 runs whatever script")), "{quiet:?}");
        let loud = lint(&policies(&GIT.replace("CHILDREN", "children = true")));
        assert!(
            loud.iter().any(|w| w.contains("every program /usr/bin/git starts") && w.contains("aliases")),
            "{loud:?}"
        );
        assert!(loud.iter().any(|w| w.contains("every program /usr/bin/python3.11 starts")), "{loud:?}");
    }
}
