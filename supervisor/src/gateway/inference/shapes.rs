//! The API shapes `inference.local` relays, per provider kind: reviewed data
//! (`policies/inference-api.toml`, embedded, unknown keys refused), matched
//! against each request's method and path before the key is read. Guards
//! against the relay being a general proxy that carries the operator's key:
//! file deletes, admin key listings, fine-tuning and every other account API
//! are refused, and so are paths an upstream could read another way (dot
//! segments, encoded separators, `;` parameters, `//`).
#![forbid(unsafe_code)]
use super::Kind;
use crate::gateway::path_shape;
use serde::Deserialize;
use std::sync::OnceLock;

/// The allowlist as shipped (reviewed with the code that reads it).
pub(crate) const INFERENCE_API_TOML: &str = include_str!("../../../../policies/inference-api.toml");

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    api: Vec<Shape>,
}

/// One relayed call: these provider kinds, this method, this path.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Shape {
    pub providers: Vec<Kind>,
    pub method: String,
    /// Literal segments, `*` for one segment (a model id).
    pub path: String,
    pub why: String,
}

/// Why a request is not relayed: the status and the message for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refused {
    pub status: u16,
    pub message: String,
}

/// Parses and validates an allowlist (errors at file:line:column, or naming the entry).
pub(crate) fn parse(text: &str, origin: &str) -> Result<Vec<Shape>, String> {
    let f: File = crate::policy::schema::parse_toml(text, origin).map_err(|e| e.to_string())?;
    for (i, s) in f.api.iter().enumerate() {
        let at = format!("{origin}: api[{i}] {} {}", s.method, s.path);
        if s.providers.is_empty() || s.why.trim().is_empty() {
            return Err(format!("{at}: needs providers and a why"));
        }
        if s.method.is_empty() || !s.method.bytes().all(|b| b.is_ascii_uppercase()) {
            return Err(format!("{at}: method must be one upper-case HTTP method"));
        }
        let segs_ok = s.path.strip_prefix('/').is_some_and(|p| {
            p.split('/').all(|seg| {
                seg == "*" || (!seg.is_empty() && seg.bytes().all(segment_byte) && seg != "." && seg != "..")
            })
        });
        if !segs_ok {
            return Err(format!("{at}: path must be /-separated literal segments or *"));
        }
    }
    Ok(f.api)
}

/// The shipped allowlist, parsed once. A broken one refuses every request
/// (its unit test keeps it from shipping broken).
fn shipped() -> &'static Result<Vec<Shape>, String> {
    static S: OnceLock<Result<Vec<Shape>, String>> = OnceLock::new();
    S.get_or_init(|| parse(INFERENCE_API_TOML, "policies/inference-api.toml"))
}

/// Whether `inference.local` relays `method path` (origin-form, query
/// allowed) for a route of `kind`.
pub(crate) fn check(kind: Kind, method: &str, path: &str) -> Result<(), Refused> {
    let shapes = shipped().as_ref().map_err(|e| Refused { status: 503, message: format!("allowlist: {e}") })?;
    check_in(shapes, kind, method, path)
}

fn check_in(shapes: &[Shape], kind: Kind, method: &str, path: &str) -> Result<(), Refused> {
    if !path.starts_with('/') {
        return Err(Refused { status: 400, message: "inference.local takes origin-form paths".into() });
    }
    if let Some(shape) = path_shape::refusal(path, true) {
        return Err(Refused { status: 400, message: format!("{shape} are refused by inference.local") });
    }
    let p = path_shape::strip_query(path);
    let allowed = shapes.iter().any(|s| s.method == method && s.providers.contains(&kind) && path_matches(&s.path, p));
    if allowed {
        return Ok(());
    }
    Err(Refused {
        status: 403,
        message: format!(
            "inference.local relays model calls only; {method} {p} is not one for a {kind:?} route \
             (policies/inference-api.toml)"
        ),
    })
}

/// A segment byte a `*` may match: a model id's letters, digits and `. _ : @ + -`.
fn segment_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"._:@+-".contains(&b)
}

fn path_matches(pattern: &str, path: &str) -> bool {
    let (mut pat, mut got) = (pattern.split('/'), path.split('/'));
    loop {
        match (pat.next(), got.next()) {
            (None, None) => return true,
            (Some("*"), Some(seg)) => {
                if seg.is_empty() || seg == "." || seg == ".." || !seg.bytes().all(segment_byte) {
                    return false;
                }
            }
            (Some(want), Some(seg)) if want == seg => {}
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_allowlist_parses_and_every_entry_says_why() {
        let shapes = parse(INFERENCE_API_TOML, "inference-api.toml").unwrap();
        assert!(shapes.len() >= 8);
        assert!(parse("[[api]]\nproviders=[\"openai\"]\nmethod=\"GET\"\npath=\"/x\"\nwhy=\"y\"\nextra=1", "t")
            .unwrap_err()
            .contains("t:6:1"));
        assert!(parse("[[api]]\nproviders=[\"openai\"]\nmethod=\"GET\"\npath=\"/x\"\nwhy=\" \"", "t").is_err());
        assert!(parse("[[api]]\nproviders=[\"openai\"]\nmethod=\"get\"\npath=\"/x\"\nwhy=\"y\"", "t").is_err());
        assert!(parse("[[api]]\nproviders=[\"openai\"]\nmethod=\"GET\"\npath=\"/a/../x\"\nwhy=\"y\"", "t").is_err());
        assert!(parse("[[api]]\nproviders=[\"azure\"]\nmethod=\"GET\"\npath=\"/x\"\nwhy=\"y\"", "t").is_err());
    }

    #[test]
    fn model_calls_pass_and_account_apis_do_not() {
        let ok = |k, m, p| check(k, m, p).is_ok();
        assert!(ok(Kind::Openai, "POST", "/v1/chat/completions"));
        assert!(ok(Kind::Local, "POST", "/v1/embeddings"));
        assert!(ok(Kind::Openai, "GET", "/v1/models/gpt-4o-mini"));
        assert!(ok(Kind::Local, "GET", "/v1/models/llama3:8b"));
        assert!(ok(Kind::Anthropic, "POST", "/v1/messages?beta=true"));
        assert!(ok(Kind::Anthropic, "POST", "/v1/messages/count_tokens"));
        let status = |k, m, p| check(k, m, p).err().map(|r| r.status);
        assert_eq!(status(Kind::Openai, "DELETE", "/v1/files/file-1"), Some(403));
        assert_eq!(status(Kind::Openai, "POST", "/v1/fine_tuning/jobs"), Some(403));
        assert_eq!(status(Kind::Openai, "GET", "/v1/organization/admin_api_keys"), Some(403));
        assert_eq!(status(Kind::Openai, "DELETE", "/v1/chat/completions"), Some(403));
        assert_eq!(status(Kind::Openai, "POST", "/v1/messages"), Some(403), "per provider kind");
        assert_eq!(status(Kind::Anthropic, "POST", "/v1/chat/completions"), Some(403));
        assert_eq!(status(Kind::Openai, "GET", "/v1/models/a/b"), Some(403));
        assert_eq!(status(Kind::Openai, "GET", "/v1/models/a%2Fb"), Some(400));
        assert_eq!(status(Kind::Openai, "GET", "/v1/models/../files"), Some(400));
        assert_eq!(status(Kind::Openai, "GET", "/v1/models/%2e%2e/files"), Some(400));
        assert_eq!(status(Kind::Openai, "POST", "/v1//chat/completions"), Some(400));
        assert_eq!(status(Kind::Openai, "POST", "/v1/chat/completions;x"), Some(400));
        assert_eq!(status(Kind::Openai, "GET", "/v1/models/"), Some(403));
        assert_eq!(status(Kind::Openai, "GET", "*"), Some(400));
    }
}
