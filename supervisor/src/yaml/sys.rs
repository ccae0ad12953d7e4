//! The YAML scanner's token stream, read through libyaml's own C-shaped API
//! (the `unsafe-libyaml-norway` crate `serde_norway` parses with), the only
//! `unsafe` of `yaml/`. Guards against a bound that disagrees with the
//! parser: depth, documents and aliases are counted on the very tokens the
//! parser would see.
use unsafe_libyaml_norway as unsafe_y;

/// What a scan of the token stream found, as byte offsets.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Scan {
    /// The first flow collection (`[`/`{`) opened below `max` levels; the
    /// scan stops there.
    pub(super) too_deep: Option<usize>,
    /// Where a second document begins (`---` after content, or content
    /// after `...`).
    pub(super) second_document: Option<usize>,
    /// The first alias (`*name`).
    pub(super) first_alias: Option<usize>,
}

/// Scans `text` with libyaml's scanner (the parser's own tokens, so quotes,
/// comments and block scalars are what the parser takes them for) up to the
/// end, the first flow collection nested deeper than `max`, or the first
/// scanner error (the parser then reports that error, in linear time).
///
/// libyaml's scanner checks every open flow level at each token, which is
/// quadratic in the depth; stopping at `max` keeps this scan linear.
pub(super) fn scan(text: &str, max: usize) -> Scan {
    let mut parser = std::mem::MaybeUninit::<unsafe_y::yaml_parser_t>::zeroed();
    // SAFETY: `parser` is writable memory of the parser's size; initialize
    // sets every field it needs. A failed allocation is reported, not used.
    if !unsafe { unsafe_y::yaml_parser_initialize(parser.as_mut_ptr()) }.ok {
        return Scan::default();
    }
    let p = parser.as_mut_ptr();
    // SAFETY: `p` was initialized above; `text` outlives the parser, which is
    // deleted before this function returns.
    unsafe { unsafe_y::yaml_parser_set_input_string(p, text.as_ptr(), text.len() as u64) };
    let (mut depth, mut found) = (0usize, Scan::default());
    // Any token but the stream start and directives; a document has ended.
    let (mut begun, mut ended) = (false, false);
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
        let at = usize::try_from(at).ok();
        match kind {
            unsafe_y::YAML_STREAM_START_TOKEN
            | unsafe_y::YAML_VERSION_DIRECTIVE_TOKEN
            | unsafe_y::YAML_TAG_DIRECTIVE_TOKEN => {}
            // NO_TOKEN: the scanner stopped on an error (it answers that from then on).
            unsafe_y::YAML_STREAM_END_TOKEN | unsafe_y::YAML_NO_TOKEN => break,
            unsafe_y::YAML_DOCUMENT_END_TOKEN => (begun, ended) = (true, true),
            unsafe_y::YAML_DOCUMENT_START_TOKEN if !begun => begun = true,
            _ if kind == unsafe_y::YAML_DOCUMENT_START_TOKEN || ended => {
                found.second_document = found.second_document.or(at);
                (begun, ended) = (true, false);
            }
            _ => begun = true,
        }
        match kind {
            unsafe_y::YAML_FLOW_SEQUENCE_START_TOKEN | unsafe_y::YAML_FLOW_MAPPING_START_TOKEN => {
                depth += 1;
                if depth > max {
                    found.too_deep = at;
                    break;
                }
            }
            unsafe_y::YAML_FLOW_SEQUENCE_END_TOKEN | unsafe_y::YAML_FLOW_MAPPING_END_TOKEN => {
                depth = depth.saturating_sub(1)
            }
            unsafe_y::YAML_ALIAS_TOKEN => found.first_alias = found.first_alias.or(at),
            _ => {}
        }
    }
    // SAFETY: `p` is initialized and deleted once; no token refers to it.
    unsafe { unsafe_y::yaml_parser_delete(p) };
    found
}

/// One parser event, as [`events`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Event {
    MappingStart,
    SequenceStart,
    /// The end of a mapping or a sequence.
    End,
    /// A scalar (its value, lossily UTF-8) or an alias (`None`): a leaf.
    Leaf(Option<String>),
}

/// The parser's events for `text` (the document structure, as `serde_norway`
/// sees it), each with the byte offset where its node starts. Stops at the
/// first parse error; the caller has bounded size and flow depth first
/// (`check`), so this is linear and at most a few events per input byte.
pub(super) fn events(text: &str) -> Vec<(Event, usize)> {
    let mut out = Vec::new();
    let mut parser = std::mem::MaybeUninit::<unsafe_y::yaml_parser_t>::zeroed();
    // SAFETY: as in `scan`: writable memory of the parser's size, initialized here.
    if !unsafe { unsafe_y::yaml_parser_initialize(parser.as_mut_ptr()) }.ok {
        return out;
    }
    let p = parser.as_mut_ptr();
    // SAFETY: `p` was initialized above; `text` outlives the parser, which is
    // deleted before this function returns.
    unsafe { unsafe_y::yaml_parser_set_input_string(p, text.as_ptr(), text.len() as u64) };
    loop {
        let mut event = std::mem::MaybeUninit::<unsafe_y::yaml_event_t>::zeroed();
        // SAFETY: `p` is an initialized parser with input set; `event` is
        // writable memory of an event's size (parse zeroes it first).
        let ok = unsafe { unsafe_y::yaml_parser_parse(p, event.as_mut_ptr()) }.ok;
        // SAFETY: parse wrote a whole event (zeroed on an error). The scalar
        // union member is read only for a scalar event, whose value points
        // at `length` bytes the event owns until it is deleted below.
        let (kind, at) = unsafe {
            let e = event.assume_init_ref();
            let kind = match e.type_ {
                unsafe_y::YAML_MAPPING_START_EVENT => Some(Event::MappingStart),
                unsafe_y::YAML_SEQUENCE_START_EVENT => Some(Event::SequenceStart),
                unsafe_y::YAML_MAPPING_END_EVENT | unsafe_y::YAML_SEQUENCE_END_EVENT => Some(Event::End),
                unsafe_y::YAML_ALIAS_EVENT => Some(Event::Leaf(None)),
                unsafe_y::YAML_SCALAR_EVENT => {
                    let s = e.data.scalar;
                    let bytes = match usize::try_from(s.length) {
                        Ok(n) if !s.value.is_null() => std::slice::from_raw_parts(s.value, n),
                        _ => &[],
                    };
                    Some(Event::Leaf(Some(String::from_utf8_lossy(bytes).into_owned())))
                }
                // Stream and document starts and ends: no node.
                _ => None,
            };
            (kind, (e.type_, e.start_mark.index))
        };
        // SAFETY: the event came from parse; delete frees what it owns once.
        unsafe { unsafe_y::yaml_event_delete(event.as_mut_ptr()) };
        let (ty, index) = at;
        if !ok || matches!(ty, unsafe_y::YAML_STREAM_END_EVENT | unsafe_y::YAML_NO_EVENT) {
            break;
        }
        if let (Some(kind), Ok(at)) = (kind, usize::try_from(index)) {
            out.push((kind, at));
        }
    }
    // SAFETY: `p` is initialized and deleted once; no event refers to it.
    unsafe { unsafe_y::yaml_parser_delete(p) };
    out
}
