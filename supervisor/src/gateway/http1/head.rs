//! Reading one HTTP/1 head, strictly: CRLF only, no obs-fold, bounded size
//! and field count, a request target and authority of a closed alphabet.
//! Guards against parser differentials with the peer (the head moat checks
//! is the head the upstream reads) and against unbounded heads.
#![forbid(unsafe_code)]
use super::*;
use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// Reads one head (through the empty line) without consuming a byte past it. `Ok(None)`: EOF before any byte.
/// `skip_leading_crlf`: ignore empty lines before a request line (RFC 9112 §2.2); they count against `limit`.
pub(super) async fn read_head_bytes<R: AsyncBufRead + Unpin>(
    r: &mut R,
    limit: usize,
    skip_leading_crlf: bool,
) -> Result<Option<Vec<u8>>, HttpError> {
    let mut head: Vec<u8> = Vec::new();
    let mut skipped = 0usize;
    let mut line_start = 0usize;
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return if head.is_empty() { Ok(None) } else { Err(HttpError::UnexpectedEof) };
        }
        let mut used = 0usize;
        let mut done = false;
        for &b in buf {
            used += 1;
            head.push(b);
            if skipped + head.len() > limit {
                return Err(HttpError::HeaderTooLarge);
            }
            if b != b'\n' {
                continue;
            }
            let line = &head[line_start..];
            if line == b"\r\n" && line_start == 0 && skip_leading_crlf {
                skipped += 2;
                head.clear();
            } else if line == b"\n" || line == b"\r\n" {
                done = true;
                break;
            } else {
                line_start = head.len();
            }
        }
        r.consume(used);
        if done {
            return Ok(Some(head));
        }
    }
}

/// Refuses bare CR, bare LF and obs-fold (a line starting with SP/HT) anywhere in a head.
pub(super) fn check_head_lines(head: &[u8]) -> Result<(), HttpError> {
    for (i, &b) in head.iter().enumerate() {
        match b {
            b'\n' if i == 0 || head[i - 1] != b'\r' => return Err(malformed("bare LF line ending")),
            b'\r' if head.get(i + 1) != Some(&b'\n') => return Err(malformed("bare CR in head")),
            b'\n' if head.get(i + 1).is_some_and(|c| is_ows(*c)) => {
                return Err(malformed("obsolete line folding (obs-fold) or whitespace before a header"))
            }
            _ => {}
        }
    }
    Ok(())
}

pub(super) fn map_parse_error(e: httparse::Error) -> HttpError {
    match e {
        httparse::Error::TooManyHeaders => HttpError::TooManyHeaders,
        other => malformed(other.to_string()),
    }
}

pub(super) fn convert_headers(raw: &[httparse::Header<'_>]) -> Result<Headers, HttpError> {
    raw.iter()
        .map(|h| {
            let value = trim_ows(h.value);
            if !valid_field_name(h.name.as_bytes()) {
                return Err(malformed(format!("invalid header name {:?}", h.name)));
            }
            if !valid_field_value(value) {
                return Err(malformed(format!("control character in header {:?}", h.name)));
            }
            Ok((h.name.to_string(), value.to_vec()))
        })
        .collect()
}

/// Reads and strictly validates one request head of at most `limit` bytes; the body stays in `r`.
pub async fn read_request_head<R: AsyncBufRead + Unpin>(
    r: &mut R,
    limit: usize,
) -> Result<Option<RequestHead>, HttpError> {
    let Some(raw) = read_head_bytes(r, limit, true).await? else { return Ok(None) };
    if raw.starts_with(b"PRI * HTTP/2.0") {
        return Err(malformed("HTTP/2 connection preface on an HTTP/1 connection"));
    }
    check_head_lines(&raw)?;
    if raw.split(|b| *b == b'\r').next().is_some_and(|line| line.split(|b| *b == b' ').count() == 2) {
        return Err(malformed("HTTP/0.9-style request line without a version"));
    }
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut slots);
    match req.parse(&raw).map_err(map_parse_error)? {
        httparse::Status::Complete(n) if n == raw.len() => {}
        _ => return Err(malformed("incomplete request head")),
    }
    let (Some(method), Some(target), Some(version)) = (req.method, req.path, req.version) else {
        return Err(malformed("incomplete request line"));
    };
    let head = RequestHead {
        method: method.to_string(),
        target: target.to_string(),
        version,
        headers: convert_headers(req.headers)?,
    };
    check_target(&head.method, &head.target)?;
    let hosts = head.headers_all("host");
    if hosts.len() > 1 {
        return Err(malformed("more than one Host header"));
    }
    match hosts.first() {
        Some(h) if !valid_authority(h, false) => return Err(malformed("invalid Host header")),
        None if head.version == 1 && head.method != "CONNECT" => {
            return Err(malformed("HTTP/1.1 request without Host header"))
        }
        _ => {}
    }
    Ok(Some(head))
}

/// Reads and strictly validates one response head of at most `limit` bytes; the body stays in `r`.
/// A 1xx head is returned like any other: the caller reads the final response after it.
pub async fn read_response_head<R: AsyncBufRead + Unpin>(
    r: &mut R,
    limit: usize,
) -> Result<Option<ResponseHead>, HttpError> {
    let Some(raw) = read_head_bytes(r, limit, false).await? else { return Ok(None) };
    check_head_lines(&raw)?;
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut slots);
    match resp.parse(&raw).map_err(map_parse_error)? {
        httparse::Status::Complete(n) if n == raw.len() => {}
        _ => return Err(malformed("incomplete response head")),
    }
    let (Some(version), Some(status)) = (resp.version, resp.code) else {
        return Err(malformed("incomplete status line"));
    };
    if status < 100 {
        return Err(malformed(format!("invalid status code {status}")));
    }
    Ok(Some(ResponseHead {
        version,
        status,
        reason: resp.reason.unwrap_or("").to_string(),
        headers: convert_headers(resp.headers)?,
    }))
}

/// `host[:port]` or `[v6][:port]`; host names limited to letters, digits, `-`, `.`, `_`; no userinfo.
pub(super) fn valid_authority(a: &[u8], require_port: bool) -> bool {
    let (host_ok, port) = if let Some(rest) = a.strip_prefix(b"[") {
        let Some(close) = rest.iter().position(|&b| b == b']') else { return false };
        let inner = &rest[..close];
        let ok = !inner.is_empty() && inner.iter().all(|b| b.is_ascii_hexdigit() || *b == b':' || *b == b'.');
        match &rest[close + 1..] {
            [] => (ok, None),
            [b':', p @ ..] => (ok, Some(p)),
            _ => return false,
        }
    } else {
        let (host, port) = match a.iter().position(|&b| b == b':') {
            Some(i) => (&a[..i], Some(&a[i + 1..])),
            None => (a, None),
        };
        let ok = !host.is_empty() && host.iter().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(b));
        (ok, port)
    };
    let port_ok = match port {
        None => !require_port,
        Some(p) => {
            (1..=5).contains(&p.len())
                && p.iter().all(u8::is_ascii_digit)
                && std::str::from_utf8(p).ok().and_then(|s| s.parse::<u16>().ok()).is_some_and(|n| n > 0)
        }
    };
    host_ok && port_ok
}

/// Path and query: visible ASCII, no fragment/backslash/quote/angle brackets, `%` followed by two hex digits.
pub(super) fn valid_path_query(p: &[u8]) -> bool {
    p.iter().enumerate().all(|(i, &b)| match b {
        b'%' => p.get(i + 1..i + 3).is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)),
        b'#' | b'\\' | b'"' | b'<' | b'>' => false,
        _ => (b'!'..=b'~').contains(&b),
    })
}

pub(super) fn check_target(method: &str, target: &str) -> Result<(), HttpError> {
    let t = target.as_bytes();
    if method == "CONNECT" {
        return if valid_authority(t, true) { Ok(()) } else { Err(malformed("CONNECT target must be host:port")) };
    }
    if t == b"*" {
        return if method == "OPTIONS" { Ok(()) } else { Err(malformed("asterisk target is only for OPTIONS")) };
    }
    let path = if t.starts_with(b"/") {
        t
    } else if t.len() > 7 && t[..7].eq_ignore_ascii_case(b"http://") {
        let rest = &t[7..];
        let end = rest.iter().position(|&b| b == b'/' || b == b'?').unwrap_or(rest.len());
        if !valid_authority(&rest[..end], false) {
            return Err(malformed("invalid authority in absolute-form target"));
        }
        &rest[end..]
    } else {
        return Err(malformed("request target must be /path, http://host/path, host:port (CONNECT) or * (OPTIONS)"));
    };
    if valid_path_query(path) {
        Ok(())
    } else {
        Err(malformed("invalid character or percent-escape in request target"))
    }
}
