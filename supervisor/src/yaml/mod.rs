//! Bounds on YAML input, checked before the text reaches the YAML parser
//! (`serde_norway`, libyaml underneath). Guards against input that costs
//! the operator's machine more than its size: libyaml takes time quadratic
//! in the nesting of flow collections (200 KB of `[` took 21 s), so size
//! and flow depth are refused first, with file:line:column, in linear time,
//! and so is a second document (the parser would refuse it without a place).
//! Block nesting is bounded by the parser's own recursion limit (linear).
#![deny(unsafe_code)]
#[allow(unsafe_code)]
mod sys;

/// The largest YAML input read (an OpenShell policy is a few kilobytes).
pub const MAX_BYTES: usize = 1 << 20;
/// The deepest `[`/`{` nesting accepted (real policies use two or three).
pub const MAX_FLOW_DEPTH: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum YamlLimit {
    #[error("{origin}:1:1: {len} bytes of YAML; at most {MAX_BYTES} are read")]
    TooLarge { origin: String, len: usize },
    #[error("{origin}:{line}:{column}: flow collections ([ or {{) nested deeper than {MAX_FLOW_DEPTH}")]
    TooDeep { origin: String, line: usize, column: usize },
    #[error("{origin}:{line}:{column}: a second YAML document begins here; the input is one document")]
    SecondDocument { origin: String, line: usize, column: usize },
}

/// What the parser's errors may need placed: where the first alias is
/// (an alias expansion the parser refuses names no place of its own).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Checked {
    /// Line and column of the first alias (`*name`).
    pub first_alias: Option<(usize, usize)>,
}

/// Checks `text` against [`MAX_BYTES`] and [`MAX_FLOW_DEPTH`], and that it
/// is one document.
pub fn check(text: &str, origin: &str) -> Result<Checked, YamlLimit> {
    if text.len() > MAX_BYTES {
        return Err(YamlLimit::TooLarge { origin: origin.into(), len: text.len() });
    }
    let place = |offset: usize| moat_builder::textfile::line_col(text, offset);
    let scan = sys::scan(text, MAX_FLOW_DEPTH);
    if let Some((line, column)) = scan.too_deep.map(place) {
        return Err(YamlLimit::TooDeep { origin: origin.into(), line, column });
    }
    if let Some((line, column)) = scan.second_document.map(place) {
        return Err(YamlLimit::SecondDocument { origin: origin.into(), line, column });
    }
    Ok(Checked { first_alias: scan.first_alias.map(place) })
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn deep_flow_is_refused_at_the_first_bracket_too_deep() {
        let text = format!("a: 1\nb: {}\n", "[".repeat(200_000));
        let e = check(&text, "d.yaml").unwrap_err();
        assert_eq!(e, YamlLimit::TooDeep { origin: "d.yaml".into(), line: 2, column: 4 + MAX_FLOW_DEPTH });
        let ok = format!("x: {}1{}\n", "[".repeat(MAX_FLOW_DEPTH), "]".repeat(MAX_FLOW_DEPTH));
        assert!(check(&ok, "o.yaml").is_ok());
        // Brackets in quotes, comments and block scalars are not nesting.
        let quoted = format!("a: '{0}'\nb: \"{0}\"\n# {0}\nc: |\n  {0}\n", "[".repeat(500));
        assert!(check(&quoted, "q.yaml").is_ok());
        let big = "#".repeat(MAX_BYTES + 1);
        assert!(matches!(check(&big, "b.yaml"), Err(YamlLimit::TooLarge { .. })));
    }
    #[test]
    fn scanner_errors_are_left_to_the_parser() {
        assert!(check("a: [\n\"unterminated", "e.yaml").is_ok());
        assert!(check("\t- x\n", "t.yaml").is_ok());
    }
    #[test]
    fn a_second_document_is_placed() {
        for (text, line) in [("--- 1\n--- 2\n", 2), ("a: 1\n...\nb: 2\n", 3), ("a: 1\n---\n", 2)] {
            let e = check(text, "m.yaml").unwrap_err();
            assert_eq!(e, YamlLimit::SecondDocument { origin: "m.yaml".into(), line, column: 1 }, "{text:?}");
        }
        for one in ["--- 1\n", "%YAML 1.1\n---\na: 1\n...\n", "a: 1\n...\n", "# only a comment\n", ""] {
            assert!(check(one, "o.yaml").is_ok(), "{one:?}");
        }
        let c = check("a: &x 1\nb: [*x]\n", "a.yaml").unwrap();
        assert_eq!(c.first_alias, Some((2, 5)));
    }
}
