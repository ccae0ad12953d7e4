//! What an approval opens: the scope the operator picks for a pending
//! destination (`moat approve --scope`, the console's scope picker). Guards
//! against an approval wider than the operator meant: the default never
//! widens a host the policy inspects to L4 (it takes that inspection), an
//! inspected scope checks every request, and a request scope allows one
//! method and path glob and nothing else.
#![forbid(unsafe_code)]
use crate::policy::schema::{Access, Enforcement, NetPolicy, Protocol, Rule, RuleMatch};
use serde::{Deserialize, Serialize};

#[derive(Debug, thiserror::Error)]
pub enum ScopeError {
    #[error("scope: the method \"{0}\" is not an HTTP method token (or `*`)")]
    Method(String),
    #[error("scope: {0:?} is not one of auto, exact, read-only, read-write, full, request")]
    Kind(String),
    #[error("scope: `request` needs a method and a path")]
    Incomplete,
    #[error("scope: the path \"{0}\" must start with `/` and hold no control character, `?` or `#`")]
    Path(String),
}

/// How much a pending approval opens.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Scope {
    /// Host and port; inspected as the policy inspects that host, if it
    /// does (never widened to L4), else relayed at L4.
    #[default]
    Auto,
    /// Exactly host and port at L4: the tunnel is relayed as bytes, even
    /// where the policy inspects that host.
    Exact,
    /// Every request checked against an access level.
    Inspected { access: Access },
    /// One method and path glob (`*` a segment, `**` any depth).
    Request { method: String, path: String },
}

impl Scope {
    /// The scope the CLI's words name (`--scope KIND [--method M --path P]`).
    pub fn parse(kind: &str, method: Option<&str>, path: Option<&str>) -> Result<Scope, ScopeError> {
        let scope = match kind {
            "auto" => Scope::Auto,
            "exact" => Scope::Exact,
            "read-only" => Scope::Inspected { access: Access::ReadOnly },
            "read-write" => Scope::Inspected { access: Access::ReadWrite },
            "full" => Scope::Inspected { access: Access::Full },
            "request" => match (method, path) {
                (Some(m), Some(p)) => Scope::Request { method: m.into(), path: p.into() },
                _ => return Err(ScopeError::Incomplete),
            },
            other => return Err(ScopeError::Kind(crate::visible::field(other).into_owned())),
        };
        scope.check()?;
        Ok(scope)
    }

    /// Words for the revision's reason and the operator's screen.
    pub fn describe(&self) -> String {
        match self {
            Scope::Auto => "as the policy treats that host".into(),
            Scope::Exact => "exact host and port (L4)".into(),
            Scope::Inspected { access } => format!("inspected, {}", access_word(*access)),
            Scope::Request { method, path } => format!("inspected, only {method} {path}"),
        }
    }

    /// Checks what the operator typed (the method and path of a request scope).
    pub fn check(&self) -> Result<(), ScopeError> {
        if let Scope::Request { method, path } = self {
            let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
            if method.is_empty() || method.len() > 32 || !method.chars().all(token) {
                return Err(ScopeError::Method(crate::visible::field(method).into_owned()));
            }
            if !path.starts_with('/')
                || path.len() > 1024
                || path.chars().any(|c| c.is_control() || c == '?' || c == '#')
            {
                return Err(ScopeError::Path(crate::visible::field(path).into_owned()));
            }
        }
        Ok(())
    }
}

fn access_word(a: Access) -> &'static str {
    match a {
        Access::Full => "full access",
        Access::ReadOnly => "read-only",
        Access::ReadWrite => "read-write",
    }
}

/// Shapes an approval's rule (one endpoint, L4 as written by
/// `revisions::approval_policy`, with the addresses the operator opted in)
/// to `scope`. `policies` are the rules in force: an inspected endpoint
/// covering the destination lends its upstream CA to an inspected scope
/// (its opted-in addresses only to `Auto`). Returns the name of the
/// rule set whose inspection was taken, if any.
pub fn apply(rule: &mut NetPolicy, scope: &Scope, policies: &[NetPolicy]) -> Result<Option<String>, ScopeError> {
    scope.check()?;
    if *scope == Scope::Exact {
        return Ok(None);
    }
    let typed = rule.endpoints.first().map(|e| e.allowed_ips.clone()).unwrap_or_default();
    let inherited = super::revisions::inherit_inspection(rule, policies);
    let Some(ep) = rule.endpoints.first_mut() else { return Ok(inherited) };
    let (access, rules) = match scope {
        Scope::Auto | Scope::Exact => return Ok(inherited),
        Scope::Inspected { access } => (Some(*access), Vec::new()),
        Scope::Request { method, path } => {
            (None, vec![Rule { allow: RuleMatch { method: method.to_ascii_uppercase(), path: path.clone() } }])
        }
    };
    ep.protocol = Some(Protocol::Rest);
    // Terminated (the default): a passthrough endpoint cannot be inspected.
    ep.tls = None;
    ep.access = access;
    ep.rules = rules;
    ep.enforcement = Enforcement::Enforce;
    ep.upgrade = false;
    // Private addresses only as the operator typed them: the picker says
    // none are opted in unless named.
    ep.allowed_ips = typed;
    Ok(inherited)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::schema::Endpoint;

    fn rule(host: &str, port: u16) -> NetPolicy {
        NetPolicy {
            name: "approved-x".into(),
            why: "t".into(),
            binaries: vec!["/usr/bin/curl".into()],
            sha256: vec!["00".repeat(32)],
            children: false,
            jit: true,
            endpoints: vec![endpoint(host, port)],
        }
    }

    fn endpoint(host: &str, port: u16) -> Endpoint {
        Endpoint::l4(host, port)
    }

    fn inspected_policy() -> Vec<NetPolicy> {
        let mut p = rule("*.example.com", 443);
        p.name = "registry".into();
        let ep = &mut p.endpoints[0];
        ep.protocol = Some(Protocol::Rest);
        ep.access = Some(Access::Full);
        ep.allowed_ips = vec!["198.18.0.0/15".into()];
        ep.upgrade = true;
        vec![p]
    }

    #[test]
    fn auto_takes_the_inspection_exact_stays_l4() {
        let mut r = rule("a.example.com", 443);
        apply(&mut r, &Scope::Auto, &inspected_policy()).unwrap();
        assert_eq!(r.endpoints[0].protocol, Some(Protocol::Rest));
        let mut r = rule("a.example.com", 443);
        assert_eq!(apply(&mut r, &Scope::Exact, &inspected_policy()).unwrap(), None);
        assert_eq!(r.endpoints[0], endpoint("a.example.com", 443));
    }

    #[test]
    fn inspected_and_request_scopes_check_every_request() {
        let mut r = rule("a.example.com", 443);
        let from = apply(&mut r, &Scope::Inspected { access: Access::ReadOnly }, &inspected_policy()).unwrap();
        assert_eq!(from.as_deref(), Some("registry"));
        let ep = &r.endpoints[0];
        assert!(ep.inspected(), "{ep:?}");
        assert_eq!((ep.access, ep.upgrade), (Some(Access::ReadOnly), false));
        assert!(ep.allowed_ips.is_empty(), "only typed addresses: {ep:?}");

        let mut r = rule("other.test", 80);
        let scope = Scope::Request { method: "post".into(), path: "/api/*".into() };
        assert_eq!(apply(&mut r, &scope, &[]).unwrap(), None);
        let ep = &r.endpoints[0];
        assert_eq!((ep.protocol, ep.access), (Some(Protocol::Rest), None));
        assert_eq!(ep.rules, [Rule { allow: RuleMatch { method: "POST".into(), path: "/api/*".into() } }]);
    }

    #[test]
    fn typed_methods_and_paths_are_checked() {
        for bad in [
            Scope::Request { method: "GE T".into(), path: "/".into() },
            Scope::Request { method: String::new(), path: "/".into() },
            Scope::Request { method: "GET".into(), path: "x".into() },
            Scope::Request { method: "GET".into(), path: "/a?b".into() },
            Scope::Request { method: "GET".into(), path: "/a\n".into() },
        ] {
            assert!(apply(&mut rule("h", 443), &bad, &[]).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn words_name_scopes() {
        assert_eq!(Scope::parse("read-only", None, None).unwrap(), Scope::Inspected { access: Access::ReadOnly });
        assert_eq!(
            Scope::parse("request", Some("GET"), Some("/a/**")).unwrap(),
            Scope::Request { method: "GET".into(), path: "/a/**".into() }
        );
        assert!(matches!(Scope::parse("request", Some("GET"), None), Err(ScopeError::Incomplete)));
        assert!(matches!(Scope::parse("wide", None, None), Err(ScopeError::Kind(_))));
    }

    #[test]
    fn scopes_read_as_the_control_api_writes_them() {
        let s: Scope = serde_json::from_str(r#"{"kind":"inspected","access":"read-only"}"#).unwrap();
        assert_eq!(s, Scope::Inspected { access: Access::ReadOnly });
        assert!(serde_json::from_str::<Scope>(r#"{"kind":"wide"}"#).is_err());
        let s: Scope =
            serde_json::from_str(r#"{"kind":"inspected","access":"read-only","x":1}"#).unwrap_or(Scope::Exact);
        assert_eq!(s, Scope::Exact, "an unknown field of a scope is refused");
    }
}
