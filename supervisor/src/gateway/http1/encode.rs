//! Writing heads (hop-by-hop fields stripped) and the gateway's own answers
//! (refusals, errors). Guards against header injection: only validated
//! fields are written, and the gateway's bodies carry their own length.
#![forbid(unsafe_code)]
use super::*;

/// Appends `Name: value\r\n` for every field; fields with an invalid name or value (possible only after a
/// caller's `set_header`) are skipped so that nothing can inject a line.
pub(super) fn push_headers(out: &mut Vec<u8>, headers: &[(String, Vec<u8>)]) {
    for (name, value) in headers {
        if valid_field_name(name.as_bytes()) && valid_field_value(value) {
            out.extend([name.as_bytes(), b": ", value, b"\r\n"].concat());
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// Serialises a request head as HTTP/1.1 with `target` as the request target (bytes that are not visible
/// ASCII are percent-encoded; a method that is not a token is reduced to its token characters).
pub fn write_request_head(h: &RequestHead, target: &str) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend(h.method.bytes().filter(|b| is_tchar(*b)));
    out.push(b' ');
    for b in target.bytes() {
        if (b'!'..=b'~').contains(&b) {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    push_headers(&mut out, &h.headers);
    out
}

/// The reason phrase of the statuses the gateway answers with itself.
pub fn reason(status: u16) -> &'static str {
    match status {
        400 => "Bad Request",
        403 => "Forbidden",
        408 => "Request Timeout",
        413 => "Payload Too Large",
        421 => "Misdirected Request",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    }
}

pub(super) fn push_status_line(out: &mut Vec<u8>, status: u16, reason: &str) {
    out.extend_from_slice(format!("HTTP/1.1 {:03} ", status.clamp(100, 999)).as_bytes());
    out.extend(reason.bytes().filter(|b| *b == b'\t' || (b' '..=b'~').contains(b)));
    out.extend_from_slice(b"\r\n");
}

/// Serialises a response head as HTTP/1.1.
pub fn write_response_head(h: &ResponseHead) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    push_status_line(&mut out, h.status, &h.reason);
    push_headers(&mut out, &h.headers);
    out
}

/// Removes hop-by-hop fields and those the Connection header nominates, except Content-Length,
/// Transfer-Encoding and Host, which a proxy must never drop on a peer's say-so (framing would change).
/// Call it before adding the gateway's own fields.
pub fn strip_hop_by_hop(headers: &mut Vec<(String, Vec<u8>)>) {
    const FIXED: &[&str] = &[
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authorization",
        "proxy-authenticate",
        "te",
        "trailer",
        "upgrade",
    ];
    const PROTECTED: &[&str] = &["content-length", "transfer-encoding", "host"];
    let nominated = connection_tokens(headers);
    headers.retain(|(name, _)| {
        let n = name.to_ascii_lowercase();
        let nominated_here = nominated.contains(&n) && !PROTECTED.contains(&n.as_str());
        !FIXED.contains(&n.as_str()) && !nominated_here
    });
}

/// The protocol asked for (lower-cased first token of Upgrade, e.g. "websocket") when Connection has `upgrade`.
pub fn is_upgrade(h: &RequestHead) -> Option<String> {
    if !connection_tokens(&h.headers).iter().any(|t| t == "upgrade") {
        return None;
    }
    let first = list_elements(&h.headers, "upgrade").find(|t| !t.is_empty())?;
    // Only WebSocket: after a 101 the connection is relayed as bytes, so
    // other protocols (h2c, TLS upgrades) would leave inspection behind.
    let proto = String::from_utf8_lossy(first).to_ascii_lowercase();
    (proto == "websocket").then_some(proto)
}

pub(super) fn wants_close(headers: &[(String, Vec<u8>)], version: u8) -> bool {
    let tokens = connection_tokens(headers);
    tokens.iter().any(|t| t == "close") || (version == 0 && !tokens.iter().any(|t| t == "keep-alive"))
}

/// The client asked to close after this exchange (Connection: close, or HTTP/1.0 without keep-alive).
pub fn wants_close_request(h: &RequestHead) -> bool {
    wants_close(&h.headers, h.version)
}

/// The server will close after this response (Connection: close, or HTTP/1.0 without keep-alive).
pub fn wants_close_response(h: &ResponseHead) -> bool {
    wants_close(&h.headers, h.version)
}

/// A complete small plain-text response, e.g. the gateway's own refusals.
pub fn simple_response(status: u16, reason: &str, body: &str, close: bool) -> Vec<u8> {
    typed_response(status, reason, "text/plain; charset=utf-8", body, close)
}

/// A complete response with a body of `content_type`.
pub fn typed_response(status: u16, reason: &str, content_type: &str, body: &str, close: bool) -> Vec<u8> {
    response_with(status, reason, &[], content_type, body, close)
}

/// A complete response with `extra` header fields (written only if valid,
/// so nothing can inject a line) before the framing ones.
pub fn response_with(
    status: u16,
    reason: &str,
    extra: &[(&str, &str)],
    content_type: &str,
    body: &str,
    close: bool,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(128 + body.len());
    push_status_line(&mut out, status, reason);
    for (name, value) in extra {
        if valid_field_name(name.as_bytes()) && valid_field_value(value.as_bytes()) {
            out.extend([name.as_bytes(), b": ", value.as_bytes(), b"\r\n"].concat());
        }
    }
    out.extend_from_slice(format!("Content-Type: {content_type}\r\n").as_bytes());
    out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
    out
}
