//! The YAML scanner's token stream, read through libyaml's own C-shaped API
//! (the `unsafe-libyaml-norway` crate `serde_norway` parses with), the only
//! `unsafe` of `yaml/`. Guards against a nesting bound that disagrees with
//! the parser: the depth is counted on the very tokens the parser would see.
use unsafe_libyaml_norway as unsafe_y;

/// The flow depth (`[`/`{` nesting) of `text` as libyaml scans it, up to
/// `max`: `Some(byte offset)` of the first flow collection opened below
/// `max` levels, `None` when the text stays within it or the scanner stops
/// on an error first (the parser then reports that error, in linear time).
///
/// libyaml's scanner checks every open flow level at each token, which is
/// quadratic in the depth; stopping at `max` keeps this scan linear.
pub(super) fn first_too_deep(text: &str, max: usize) -> Option<usize> {
    let mut parser = std::mem::MaybeUninit::<unsafe_y::yaml_parser_t>::zeroed();
    // SAFETY: `parser` is writable memory of the parser's size; initialize
    // sets every field it needs. A failed allocation is reported, not used.
    if !unsafe { unsafe_y::yaml_parser_initialize(parser.as_mut_ptr()) }.ok {
        return None;
    }
    let p = parser.as_mut_ptr();
    // SAFETY: `p` was initialized above; `text` outlives the parser, which is
    // deleted before this function returns.
    unsafe { unsafe_y::yaml_parser_set_input_string(p, text.as_ptr(), text.len() as u64) };
    let (mut depth, mut found) = (0usize, None);
    loop {
        let mut token = std::mem::MaybeUninit::<unsafe_y::yaml_token_t>::zeroed();
        // SAFETY: `p` is an initialized parser with input set; `token` is
        // writable memory of a token's size (scan zeroes it first).
        let ok = unsafe { unsafe_y::yaml_parser_scan(p, token.as_mut_ptr()) }.ok;
        // SAFETY: scan wrote a whole token (zeroed, or dequeued) in both outcomes.
        let (kind, at) = unsafe {
            let t = token.assume_init_ref();
            (t.type_, t.start_mark.index)
        };
        // SAFETY: the token came from scan; delete frees what it owns once.
        unsafe { unsafe_y::yaml_token_delete(token.as_mut_ptr()) };
        if !ok {
            break;
        }
        match kind {
            unsafe_y::YAML_FLOW_SEQUENCE_START_TOKEN | unsafe_y::YAML_FLOW_MAPPING_START_TOKEN => {
                depth += 1;
                if depth > max {
                    found = usize::try_from(at).ok();
                    break;
                }
            }
            unsafe_y::YAML_FLOW_SEQUENCE_END_TOKEN | unsafe_y::YAML_FLOW_MAPPING_END_TOKEN => {
                depth = depth.saturating_sub(1)
            }
            // NO_TOKEN: the scanner stopped on an error (it answers that from then on).
            unsafe_y::YAML_STREAM_END_TOKEN | unsafe_y::YAML_NO_TOKEN => break,
            _ => {}
        }
    }
    // SAFETY: `p` is initialized and deleted once; no token refers to it.
    unsafe { unsafe_y::yaml_parser_delete(p) };
    found
}
