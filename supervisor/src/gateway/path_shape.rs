//! Paths as the upstream will read them: which request paths an inspected
//! endpoint (and the inference relay) refuses before any rule is matched.
//! Guards against a path that matches a rule as written but names another
//! resource once an upstream decodes `%2F`/`%5C`, resolves dot segments
//! (literal, percent-encoded, or hidden behind a `;` parameter as in
//! `..;/`), strips `;` parameters or merges `//`.
//!
//! Decisions (refuse, never normalise: a normalised path is one more reading
//! that may differ from the upstream's, and the tools agents use never send
//! these shapes by accident, except `%2F`, see below):
//! - Everywhere inspected: a `.` or `..` segment in any spelling (`%2e`,
//!   either case), where segments are also cut at encoded separators
//!   (`%2F`, `%5C`) and a segment ends at a `;` or `%3B` parameter. So
//!   `..%2f`, `..;/` and `..;jsessionid=x/` are dot segments.
//! - Where the endpoint matches paths (`rules`): also `%2F` and `%5C` (an
//!   upstream that decodes them sees more segments than the glob did), `//`
//!   (an empty segment lets `*` match nothing, and upstreams that merge
//!   slashes then read another route), `;` and `%3B` (Tomcat, Jetty and
//!   Spring drop `;params`, so `/files/x.db;.txt` matches `*.txt` but serves
//!   `x.db`), and `%00` (C-string upstreams cut the path there).
//! - Where the endpoint does not match paths (`access` levels): `%2F`, `//`
//!   and `;` pass. No rule reads the path, so none can be fooled, and npm
//!   asks for scoped packages as `/@scope%2fname`.
#![forbid(unsafe_code)]

/// Why `path` (origin-form; a query is not examined) is refused; `rules`:
/// the endpoint matches paths with globs. None when it may be matched.
pub(crate) fn refusal(path: &str, rules: bool) -> Option<&'static str> {
    let p = strip_query(path).as_bytes();
    if segments(p).any(is_dot_segment) {
        return Some("dot segments (. or .., also percent-encoded, after an encoded separator or before a ;parameter)");
    }
    if !rules {
        return None;
    }
    for (i, &b) in p.iter().enumerate() {
        let escape = |hi: u8, lo: u8| escape_at(p, i, hi, lo);
        if escape(b'2', b'f') || escape(b'5', b'c') {
            return Some("encoded path separators (%2F, %5C)");
        }
        if b == b';' || escape(b'3', b'b') {
            return Some("path parameters (;)");
        }
        if b == b'/' && p.get(i + 1) == Some(&b'/') {
            return Some("empty path segments (//)");
        }
        if escape(b'0', b'0') {
            return Some("encoded NUL (%00)");
        }
    }
    None
}

/// The path's segments as an upstream that decodes separators reads them,
/// each cut at its first `;`/`%3B` parameter.
fn segments(p: &[u8]) -> impl Iterator<Item = &[u8]> {
    let mut rest = p;
    let mut done = false;
    std::iter::from_fn(move || {
        if done {
            return None;
        }
        let (seg, next) = match (0..rest.len()).find_map(|i| separator_at(rest, i).map(|n| (i, n))) {
            Some((i, n)) => (&rest[..i], &rest[i + n..]),
            None => {
                done = true;
                (rest, &rest[rest.len()..])
            }
        };
        rest = next;
        let param = (0..seg.len()).find(|&i| seg[i] == b';' || escape_at(seg, i, b'3', b'b'));
        Some(param.map_or(seg, |i| &seg[..i]))
    })
}

/// The length of a separator (`/`, `\`, `%2F`, `%5C`) starting at `i`.
fn separator_at(p: &[u8], i: usize) -> Option<usize> {
    match p[i] {
        b'/' | b'\\' => Some(1),
        _ if escape_at(p, i, b'2', b'f') || escape_at(p, i, b'5', b'c') => Some(3),
        _ => None,
    }
}

/// `%` `hi` `lo` at `i` (`lo` in either case).
fn escape_at(p: &[u8], i: usize, hi: u8, lo: u8) -> bool {
    p.get(i) == Some(&b'%') && p.get(i + 1) == Some(&hi) && p.get(i + 2).is_some_and(|c| c.eq_ignore_ascii_case(&lo))
}

/// `.` or `..`, each dot possibly written `%2e`/`%2E` (checked per request,
/// so without allocating).
fn is_dot_segment(seg: &[u8]) -> bool {
    let (mut rest, mut dots) = (seg, 0);
    while !rest.is_empty() {
        rest = match rest {
            [b'.', tail @ ..] => tail,
            [b'%', b'2', e, tail @ ..] if e.eq_ignore_ascii_case(&b'e') => tail,
            _ => return false,
        };
        dots += 1;
    }
    dots == 1 || dots == 2
}

/// The path without its query (and fragment, which http1 refuses anyway).
pub(crate) fn strip_query(p: &str) -> &str {
    p.split(['?', '#']).next().unwrap_or(p)
}

#[cfg(test)]
mod tests {
    use super::refusal;

    #[test]
    fn dot_segments_in_any_spelling_are_refused_everywhere() {
        for p in [
            "/a/../b",
            "/./x",
            "/a/%2e%2e/b",
            "/a/%2E%2e",
            "/a/.%2e/b",
            "/..",
            "/a/..?q",
            "/public/..%2fprivate/secret",
            "/public/..%2Fprivate",
            "/public/..%5cprivate",
            "/public/%2e%2e%5Cprivate",
            "/public/..;/private",
            "/public/..;jsessionid=1/private",
            "/public/..%3bx/private",
            "/public/.\\x",
        ] {
            assert!(refusal(p, false).is_some_and(|r| r.starts_with("dot")), "{p}");
            assert!(refusal(p, true).is_some_and(|r| r.starts_with("dot")), "{p}");
        }
        for p in ["/a/b", "/a/..b/c", "/a/.well-known/x", "/a?x=/../", "/%2e%2ex", "/@types%2fnode", "/a//b", "/a;v=1"]
        {
            assert_eq!(refusal(p, false), None, "{p}");
        }
    }

    #[test]
    fn shapes_that_fool_a_path_glob_are_refused_where_rules_match_paths() {
        for (p, why) in [
            ("/@types%2fnode", "encoded path separators"),
            ("/a%2Fb", "encoded path separators"),
            ("/a%5cb", "encoded path separators"),
            ("/users//profile", "empty path segments"),
            ("//x", "empty path segments"),
            ("/files/x.db;.txt", "path parameters"),
            ("/files/x.db%3B.txt", "path parameters"),
            ("/files/x%00.txt", "encoded NUL"),
        ] {
            assert!(refusal(p, true).is_some_and(|r| r.starts_with(why)), "{p}: {:?}", refusal(p, true));
        }
        for p in ["/public/x", "/public/x?a=b;c//d%2f", "/a/%252f", "/", "/a/b/"] {
            assert_eq!(refusal(p, true), None, "{p}");
        }
    }
}
