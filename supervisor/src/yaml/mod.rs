//! Bounds on YAML input, checked before the text reaches the YAML parser
//! (`serde_norway`, libyaml underneath). Guards against input that costs
//! the operator's machine more than its size: libyaml takes time quadratic
//! in the nesting of flow collections (200 KB of `[` took 21 s), so size
//! and flow depth are refused first, with file:line:column, in linear time,
//! and so is a second document (the parser would refuse it without a place).
//! Block nesting is bounded by the parser's own recursion limit (linear).
//! Also places each node by its path (`places`), so what a reader of the
//! YAML is told about a field names its line.
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

/// Where each node of a YAML document is, by its path: `a.b[2].c` (mapping
/// keys joined with `.`, sequence items as `[i]`, keys as their scalar
/// text). A mapping entry is placed at its key, a sequence item at its
/// start. Built from the parser's own events; a node under a key that is
/// not a scalar has no path and is not placed.
#[derive(Debug, Default, Clone)]
pub struct Places {
    at: std::collections::HashMap<String, (usize, usize)>,
}

impl Places {
    /// The places of `text`, which [`check`] accepted (so parsing is linear).
    pub fn of(text: &str) -> Places {
        enum Frame {
            /// In a mapping: the path of the key whose value comes next
            /// (`None` while a key is awaited, or under a non-scalar key).
            Map {
                base: Option<String>,
                key: Option<Option<String>>,
            },
            Seq {
                base: Option<String>,
                next: usize,
            },
            /// A collection used as a mapping key (`? [a]`): nothing in it has a path.
            Key(Box<Frame>),
        }
        impl Frame {
            fn is_key(&self) -> bool {
                matches!(self, Frame::Key(_))
            }
        }
        fn top(stack: &mut [Frame]) -> Option<&mut Frame> {
            match stack.last_mut()? {
                Frame::Key(inner) => Some(&mut **inner),
                f => Some(f),
            }
        }
        let mut at = std::collections::HashMap::new();
        let mut stack: Vec<Frame> = Vec::new();
        // Events come in text order: each place counts on from the last.
        let mut cols = moat_builder::textfile::LineCols::new(text);
        let mut place = |offset: usize| cols.place(offset);
        for (event, offset) in sys::events(text) {
            if event == sys::Event::End {
                // After a value a key comes next; after a collection used as
                // a key, its value (already marked as having no path).
                if stack.pop().is_some_and(|f| !f.is_key()) {
                    if let Some(Frame::Map { key, .. }) = top(&mut stack) {
                        *key = None;
                    }
                }
                continue;
            }
            // The path of the node this event starts (None: no path), and
            // whether it is a mapping key.
            let (path, is_key) = match top(&mut stack) {
                None => (Some(String::new()), false),
                Some(Frame::Seq { base, next }) => {
                    let p = base.as_ref().map(|b| format!("{b}[{next}]"));
                    *next += 1;
                    (p, false)
                }
                Some(Frame::Map { key: None, .. }) => (None, true),
                Some(Frame::Map { key: Some(k), .. }) => (k.take(), false),
                Some(Frame::Key(_)) => (None, false), // `top` unwraps these
            };
            if is_key {
                let Some(Frame::Map { base, key }) = top(&mut stack) else { continue };
                let p = match (&event, base.as_deref()) {
                    (sys::Event::Leaf(Some(k)), Some("")) => Some(k.clone()),
                    (sys::Event::Leaf(Some(k)), Some(b)) => Some(format!("{b}.{k}")),
                    _ => None,
                };
                if let Some(p) = &p {
                    at.entry(p.clone()).or_insert_with(|| place(offset));
                }
                *key = Some(p);
                if matches!(event, sys::Event::Leaf(_)) {
                    continue;
                }
                // A collection as a key: its contents have no path.
                *key = Some(None);
                stack.push(Frame::Key(Box::new(match event {
                    sys::Event::MappingStart => Frame::Map { base: None, key: None },
                    _ => Frame::Seq { base: None, next: 0 },
                })));
                continue;
            }
            if let Some(p) = &path {
                if !matches!(top(&mut stack), Some(Frame::Map { .. })) {
                    at.entry(p.clone()).or_insert_with(|| place(offset));
                }
            }
            match event {
                sys::Event::MappingStart => stack.push(Frame::Map { base: path, key: None }),
                sys::Event::SequenceStart => stack.push(Frame::Seq { base: path, next: 0 }),
                sys::Event::End | sys::Event::Leaf(_) => {
                    if let Some(Frame::Map { key, .. }) = top(&mut stack) {
                        *key = None;
                    }
                }
            }
        }
        Places { at }
    }

    /// Line and column of `path`, or of its nearest ancestor that is in the
    /// document (a field that is absent is placed at what holds it).
    pub fn find(&self, path: &str) -> Option<(usize, usize)> {
        let mut p = path;
        loop {
            if let Some(at) = self.at.get(p) {
                return Some(*at);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_name_keys_and_items() {
        let text = "version: 1\nnet:\n  p:\n    list:\n      - { host: a, port: 1 }\n      - host: b\n        port: 2\n    x: [1, {y: 2}]\n? [c]\n: 3\nz: &a 1\nw: *a\n";
        let p = Places::of(text);
        assert_eq!(p.find("version"), Some((1, 1)));
        assert_eq!(p.find("net.p"), Some((3, 3)));
        assert_eq!(p.find("net.p.list[0]"), Some((5, 9)));
        assert_eq!(p.find("net.p.list[0].port"), Some((5, 20)));
        assert_eq!(p.find("net.p.list[1].port"), Some((7, 9)));
        assert_eq!(p.find("net.p.x[1].y"), Some((8, 13)));
        assert_eq!(p.find("net.p.list[1].absent"), Some((6, 9)), "placed at what holds it");
        assert_eq!(p.find("z"), Some((11, 1)));
        assert_eq!(p.find("w"), Some((12, 1)));
        assert_eq!(p.find("nothing"), None);
        assert_eq!(Places::of("").find("a"), None);
    }
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
