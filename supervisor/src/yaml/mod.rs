//! Bounds on YAML input, checked before the text reaches the YAML parser
//! (`serde_norway`, libyaml underneath). Guards against input that costs
//! the operator's machine more than its size: libyaml takes time quadratic
//! in the nesting of flow collections (200 KB of `[` took 21 s), so size
//! and flow depth are refused first, with file:line:column, in linear time.
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
}

/// Checks `text` against [`MAX_BYTES`] and [`MAX_FLOW_DEPTH`].
pub fn check(text: &str, origin: &str) -> Result<(), YamlLimit> {
    if text.len() > MAX_BYTES {
        return Err(YamlLimit::TooLarge { origin: origin.into(), len: text.len() });
    }
    match sys::first_too_deep(text, MAX_FLOW_DEPTH) {
        None => Ok(()),
        Some(offset) => {
            let (line, column) = moat_builder::textfile::line_col(text, offset);
            Err(YamlLimit::TooDeep { origin: origin.into(), line, column })
        }
    }
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
        assert_eq!(check(&ok, "o.yaml"), Ok(()));
        // Brackets in quotes, comments and block scalars are not nesting.
        let quoted = format!("a: '{0}'\nb: \"{0}\"\n# {0}\nc: |\n  {0}\n", "[".repeat(500));
        assert_eq!(check(&quoted, "q.yaml"), Ok(()));
        let big = "#".repeat(MAX_BYTES + 1);
        assert!(matches!(check(&big, "b.yaml"), Err(YamlLimit::TooLarge { .. })));
    }
    #[test]
    fn scanner_errors_are_left_to_the_parser() {
        assert_eq!(check("a: [\n\"unterminated", "e.yaml"), Ok(()));
        assert_eq!(check("\t- x\n", "t.yaml"), Ok(()));
    }
}
