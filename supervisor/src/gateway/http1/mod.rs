//! HTTP/1.x framing for the egress gateway: strict head parsing, body-length decisions and streaming body copies.
//! Threat: request smuggling and parser differentials between moat and the peer (CL/TE conflicts, obs-fold, bare
//! LF, chunk-size tricks, header injection), and memory exhaustion from unbounded heads, lines or bodies.
//!
//! Decisions (strict on purpose; the sandbox's clients are ordinary tools that never need the lenient forms):
//! - Line endings must be CRLF everywhere (heads, chunk lines, trailers); a bare CR or LF is refused.
//! - `Transfer-Encoding` must be exactly one `chunked` token (case-insensitive). Optional whitespace (SP/HT)
//!   around the token, as in `Transfer-Encoding:  chunked `, is the grammar's OWS and is accepted; every peer
//!   trims it too and the stored value is the trimmed one. Anything else (`chunked, identity`, `xchunked`,
//!   `chunked;x=1`, an empty list element) is refused, as is TE together with Content-Length or on HTTP/1.0.
//! - Chunk extensions are accepted (bounded by the line limit) but dropped: the chunk-size line is re-emitted
//!   normalised as lower-case hex without leading zeros, so the next hop never parses our peer's extensions.
//! - Trailers are validated and forwarded, except framing/routing fields, which are dropped (RFC 9110 §6.5.1).
//! - A `Connection` header cannot nominate Content-Length, Transfer-Encoding or Host for removal.
//! - The request target must be plain ASCII without fragment, backslash, quotes or angle brackets, and `%` must
//!   start a valid escape; authorities carry no userinfo (`@`).
//! - [`HttpError::status`] answers from the view of a client request; for errors reading an upstream response
//!   the caller answers 502 itself.
//!
//! Rooms: `head` reads and validates heads, `decode` decides and copies bodies
//! (and `body` decodes them for relays that read them), `encode` writes heads
//! and the gateway's own answers. This file holds the types and field rules
//! they share.
#![forbid(unsafe_code)]
mod body;
mod decode;
mod encode;
mod head;

pub use body::BodyDecoder;
pub use decode::{copy_body, request_framing, response_framing, Framing};
pub(crate) use decode::{expect_chunk_end, parse_chunk_size, read_crlf_line, read_trailers};
pub use encode::{
    is_upgrade, reason, response_with, simple_response, strip_hop_by_hop, typed_response, wants_close_request,
    wants_close_response, write_request_head, write_response_head,
};
pub use head::{read_request_head, read_response_head};

/// Most header fields accepted in one head.
pub const MAX_HEADERS: usize = 100;
/// Bound on the whole trailer section of a chunked body.
pub const MAX_TRAILER_BYTES: usize = 16 * 1024;
/// Header fields in order; names as received, values with surrounding SP/HT removed.
pub type Headers = Vec<(String, Vec<u8>)>;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("i/o error")]
    Io(#[source] std::io::Error),
    #[error("message head larger than the limit")]
    HeaderTooLarge,
    #[error("more than {MAX_HEADERS} header fields")]
    TooManyHeaders,
    #[error("malformed HTTP message: {0}")]
    Malformed(String),
    #[error("ambiguous message framing refused: {0}")]
    Smuggling(String),
    #[error("connection closed in the middle of a message")]
    UnexpectedEof,
}

impl From<std::io::Error> for HttpError {
    fn from(e: std::io::Error) -> Self {
        if e.kind() == std::io::ErrorKind::UnexpectedEof {
            HttpError::UnexpectedEof
        } else {
            HttpError::Io(e)
        }
    }
}

impl HttpError {
    /// The status to answer a client whose request caused this error.
    pub fn status(&self) -> u16 {
        match self {
            HttpError::HeaderTooLarge | HttpError::TooManyHeaders => 431,
            HttpError::Malformed(_) | HttpError::Smuggling(_) => 400,
            HttpError::Io(_) | HttpError::UnexpectedEof => 502,
        }
    }
}

pub(super) fn malformed(msg: impl Into<String>) -> HttpError {
    HttpError::Malformed(msg.into())
}

pub(super) fn smuggling(msg: impl Into<String>) -> HttpError {
    HttpError::Smuggling(msg.into())
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestHead {
    pub method: String,
    pub target: String,
    /// Minor version: 0 or 1 for HTTP/1.x.
    pub version: u8,
    pub headers: Headers,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseHead {
    /// Minor version: 0 or 1 for HTTP/1.x.
    pub version: u8,
    pub status: u16,
    pub reason: String,
    pub headers: Headers,
}

macro_rules! header_methods {
    ($t:ty) => {
        impl $t {
            /// The first value of `name` (case-insensitive).
            pub fn header(&self, name: &str) -> Option<&[u8]> {
                self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice())
            }
            /// Every value of `name` (case-insensitive), in order.
            pub fn headers_all(&self, name: &str) -> Vec<&[u8]> {
                self.headers.iter().filter(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice()).collect()
            }
            /// Replaces every `name` field by one with `value` (kept at the first one's place).
            pub fn set_header(&mut self, name: &str, value: impl Into<Vec<u8>>) {
                let value = value.into();
                match self.headers.iter().position(|(n, _)| n.eq_ignore_ascii_case(name)) {
                    Some(i) => {
                        self.headers[i].1 = value;
                        let mut seen = 0usize;
                        self.headers.retain(|(n, _)| {
                            let same = n.eq_ignore_ascii_case(name);
                            seen += usize::from(same);
                            !same || seen == 1
                        });
                    }
                    None => self.headers.push((name.to_string(), value)),
                }
            }
            /// Removes every `name` field.
            pub fn remove_header(&mut self, name: &str) {
                self.headers.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
            }
        }
    };
}
header_methods!(RequestHead);
header_methods!(ResponseHead);

pub(super) fn headers_named<'a>(
    headers: &'a [(String, Vec<u8>)],
    name: &'a str,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers.iter().filter(move |(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice())
}

pub(super) fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

pub(super) fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !is_ows(*b)).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !is_ows(*b)).map_or(start, |i| i + 1);
    &v[start..end]
}

/// Elements of a comma-separated list field (all occurrences), OWS-trimmed, empty elements kept.
pub(super) fn list_elements<'a>(
    headers: &'a [(String, Vec<u8>)],
    name: &'a str,
) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers_named(headers, name).flat_map(|v| v.split(|b| *b == b',')).map(trim_ows)
}

/// Lower-cased, non-empty tokens of every Connection field.
pub(super) fn connection_tokens(headers: &[(String, Vec<u8>)]) -> Vec<String> {
    list_elements(headers, "connection")
        .filter(|t| !t.is_empty())
        .map(|t| String::from_utf8_lossy(t).to_ascii_lowercase())
        .collect()
}

pub(super) fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

pub(super) fn valid_field_value(v: &[u8]) -> bool {
    v.iter().all(|&b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80)
}

pub(super) fn valid_field_name(n: &[u8]) -> bool {
    !n.is_empty() && n.iter().all(|&b| is_tchar(b))
}

#[cfg(test)]
mod tests;
