//! The network section of a policy: the gateway's port, the presets it
//! composes and its own rules, and the effective rule list (own rules, then
//! every preset's, host variables resolved). The schema of one rule is in
//! `schema`, matching in `matcher`, warnings in `lint`. Guards against a
//! policy that names a preset twice or an unknown one, or whose rules would
//! silently open nothing (an unset host variable is an error).
#![forbid(unsafe_code)]
use crate::policy::presets::{preset, profile};
use crate::policy::schema::{invalid, variable, NetPolicy, NetPolicyError};
use serde::{Deserialize, Serialize};

/// The network section: the gateway's port, presets by name, own rules.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Network {
    pub gateway_port: u16,
    /// Presets (policies/presets/NAME.toml) composed into this policy.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub presets: Vec<String>,
    #[serde(default, rename = "policy", skip_serializing_if = "Vec::is_empty")]
    pub policies: Vec<NetPolicy>,
}

impl Network {
    /// Adds presets, and the presets of profiles, to this section
    /// (deduplicated), then checks the result (host variables of presets set).
    pub fn add_presets(&mut self, presets: &[String], profiles: &[String]) -> Result<(), NetPolicyError> {
        let mut names: Vec<String> = presets.to_vec();
        for p in profiles {
            names.extend(profile(p)?.presets);
        }
        for n in names {
            if !self.presets.contains(&n) {
                self.presets.push(n);
            }
        }
        self.validate()?;
        self.effective()?;
        Ok(())
    }

    /// Checks every rule and every preset name.
    pub fn validate(&self) -> Result<(), NetPolicyError> {
        if self.gateway_port == 0 {
            return Err(invalid("network.gateway_port must be 1-65535"));
        }
        let mut names = std::collections::BTreeSet::new();
        for p in &self.policies {
            p.validate()?;
            if !names.insert(p.name.as_str()) {
                return Err(invalid(format!("network.policy {:?} is defined twice", p.name)));
            }
        }
        for name in &self.presets {
            preset(name)?;
        }
        Ok(())
    }

    /// Own rules followed by every preset's (named `preset/POLICY`).
    /// Host variables (`{name}`) are resolved from `registries.toml`.
    pub fn effective(&self) -> Result<Vec<NetPolicy>, NetPolicyError> {
        let mut out = self.policies.clone();
        for name in &self.presets {
            for mut p in preset(name)?.policies {
                p.name = format!("{name}/{}", p.name);
                out.push(p);
            }
        }
        let uses_variables = out.iter().flat_map(|p| &p.endpoints).any(|e| variable(&e.host).is_some());
        if !uses_variables {
            return Ok(out);
        }
        crate::policy::host_vars::expand(out, &crate::policy::host_vars::load()?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::lint::*;
    use crate::policy::matcher::*;
    use crate::policy::presets::*;
    use crate::policy::schema::*;

    fn net(text: &str) -> Network {
        let n: Network = toml::from_str(text).unwrap();
        n.validate().unwrap();
        n
    }

    const GIT: &str = r#"
gateway_port = 3128
[[policy]]
name = "gh"
binaries = ["/usr/bin/git", "/usr/lib/git-core/*"]
[[policy.endpoint]]
host = "github.com"
port = 443
protocol = "rest"
access = "read-only"
[[policy.endpoint]]
host = "*.githubusercontent.com"
[[policy.endpoint]]
host = "api.github.com"
protocol = "rest"
rules = [{ allow = { method = "GET", path = "/repos/*/issues/**" } }]
enforcement = "audit"
"#;

    #[test]
    fn binaries_hosts_and_ports_match_exactly() {
        let c = Compiled::new(net(GIT).effective().unwrap()).unwrap();
        assert!(matches!(c.match_destination("/usr/bin/git", "github.com", 443), Match::Allowed { audit: false, .. }));
        assert!(matches!(c.match_destination("/usr/bin/git", "GitHub.com", 443), Match::Allowed { .. }));
        assert!(matches!(
            c.match_destination("/usr/lib/git-core/git-remote-https", "github.com", 443),
            Match::Allowed { .. }
        ));
        assert_eq!(
            c.match_destination("/usr/bin/curl", "github.com", 443),
            Match::WrongBinary { policies: vec!["gh".into()] }
        );
        assert_eq!(
            c.match_destination("/sandbox/git", "github.com", 443),
            Match::WrongBinary { policies: vec!["gh".into()] }
        );
        assert_eq!(
            c.match_destination("/usr/lib/git-core/sub/x", "github.com", 443),
            Match::WrongBinary { policies: vec!["gh".into()] }
        );
        assert_eq!(c.match_destination("/usr/bin/git", "github.com", 80), Match::Unlisted);
        assert_eq!(c.match_destination("/usr/bin/git", "evilgithub.com", 443), Match::Unlisted);
        assert!(matches!(c.match_destination("/usr/bin/git", "raw.githubusercontent.com", 443), Match::Allowed { .. }));
        assert_eq!(c.match_destination("/usr/bin/git", "githubusercontent.com", 443), Match::Unlisted);
        assert_eq!(c.match_destination("/usr/bin/git", "x.githubusercontent.com.evil", 443), Match::Unlisted);
        // audit-mode endpoint: an unlisted binary passes, flagged.
        assert!(matches!(
            c.match_destination("/usr/bin/curl", "api.github.com", 443),
            Match::Allowed { audit: true, .. }
        ));
    }

    #[test]
    fn access_levels_and_rules() {
        let c = Compiled::new(net(GIT).effective().unwrap()).unwrap();
        let Match::Allowed { policy, endpoint, .. } = c.match_destination("/usr/bin/git", "github.com", 443) else {
            panic!()
        };
        assert_eq!(c.check_request(&policy, &endpoint, "GET", "/a/b"), RequestVerdict::Allow);
        assert!(matches!(c.check_request(&policy, &endpoint, "POST", "/a/b"), RequestVerdict::Deny(_)));
        assert!(access_allows(Access::ReadWrite, "PATCH"));
        assert!(!access_allows(Access::ReadWrite, "DELETE"));
        let Match::Allowed { policy, endpoint, .. } = c.match_destination("/usr/bin/git", "api.github.com", 443) else {
            panic!()
        };
        assert_eq!(c.check_request(&policy, &endpoint, "GET", "/repos/a/issues/1/comments?x=1"), RequestVerdict::Allow);
        assert!(matches!(c.check_request(&policy, &endpoint, "GET", "/repos/a/b/issues"), RequestVerdict::Audit(_)));
    }

    #[test]
    fn unenforceable_or_malformed_rules_are_errors() {
        for (bad, want) in [
            ("host = \"a.com\"\naccess = \"read-only\"", "need protocol"),
            ("host = \"a.com\"\nprotocol = \"rest\"\ntls = \"passthrough\"\naccess = \"read-only\"", "passthrough"),
            ("host = \"a b\"", "host"),
            ("host = \"a.com\"\nallowed_ips = [\"10.0.0.0/33\"]", "CIDR"),
            (
                "host = \"a.com\"\nprotocol = \"rest\"\nrules = [{ allow = { method = \"get\", path = \"/\" } }]",
                "method",
            ),
        ] {
            let text = format!(
                "gateway_port = 1\n[[policy]]\nname = \"p\"\nbinaries = [\"/x\"]\n[[policy.endpoint]]\n{bad}\n"
            );
            let n: Network = toml::from_str(&text).unwrap();
            let e = n.validate().unwrap_err().to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
        let text = "gateway_port = 1\n[[policy]]\nname = \"p\"\nbinaries = [\"/x\"]\n[[policy.endpoint]]\nhost = \"a\"\nallow = 1\n";
        assert!(toml::from_str::<Network>(text).is_err());
    }

    #[test]
    fn lint_flags_direct_inference_and_wide_rules() {
        let text = "gateway_port = 1\n[[policy]]\nname = \"p\"\nbinaries = [\"/usr/**\"]\n[[policy.endpoint]]\nhost = \"api.openai.com\"\n";
        let w = lint(&net(text).policies);
        assert!(w.iter().any(|w| w.contains("inference provider")), "{w:?}");
        assert!(w.iter().any(|w| w.contains("every program")), "{w:?}");
        assert!(lint(&net(GIT).policies).iter().all(|w| !w.contains("inference")));
    }

    #[test]
    fn every_preset_and_profile_loads() {
        for (name, _) in PRESETS {
            let p = preset(name).unwrap();
            assert_eq!(&p.name, name);
            assert!(!p.risk.trim().is_empty(), "{name} has no risk");
        }
        for (name, _) in PROFILES {
            let p = profile(name).unwrap();
            for pre in &p.presets {
                preset(pre).unwrap();
            }
        }
    }
}
