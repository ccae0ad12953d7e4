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
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Most header fields accepted in one head.
pub const MAX_HEADERS: usize = 100;
/// Bound on the whole trailer section of a chunked body.
pub const MAX_TRAILER_BYTES: usize = 16 * 1024;
/// Bulk copy buffer.
const COPY_BUF: usize = 64 * 1024;

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

fn malformed(msg: impl Into<String>) -> HttpError {
    HttpError::Malformed(msg.into())
}

fn smuggling(msg: impl Into<String>) -> HttpError {
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

fn headers_named<'a>(headers: &'a [(String, Vec<u8>)], name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers.iter().filter(move |(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_slice())
}

fn is_ows(b: u8) -> bool {
    b == b' ' || b == b'\t'
}

fn trim_ows(v: &[u8]) -> &[u8] {
    let start = v.iter().position(|b| !is_ows(*b)).unwrap_or(v.len());
    let end = v.iter().rposition(|b| !is_ows(*b)).map_or(start, |i| i + 1);
    &v[start..end]
}

/// Elements of a comma-separated list field (all occurrences), OWS-trimmed, empty elements kept.
fn list_elements<'a>(headers: &'a [(String, Vec<u8>)], name: &'a str) -> impl Iterator<Item = &'a [u8]> + 'a {
    headers_named(headers, name).flat_map(|v| v.split(|b| *b == b',')).map(trim_ows)
}

/// Lower-cased, non-empty tokens of every Connection field.
fn connection_tokens(headers: &[(String, Vec<u8>)]) -> Vec<String> {
    list_elements(headers, "connection")
        .filter(|t| !t.is_empty())
        .map(|t| String::from_utf8_lossy(t).to_ascii_lowercase())
        .collect()
}

fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn valid_field_value(v: &[u8]) -> bool {
    v.iter().all(|&b| b == b'\t' || (b' '..=b'~').contains(&b) || b >= 0x80)
}

fn valid_field_name(n: &[u8]) -> bool {
    !n.is_empty() && n.iter().all(|&b| is_tchar(b))
}

/// Reads one head (through the empty line) without consuming a byte past it. `Ok(None)`: EOF before any byte.
/// `skip_leading_crlf`: ignore empty lines before a request line (RFC 9112 §2.2); they count against `limit`.
async fn read_head_bytes<R: AsyncBufRead + Unpin>(
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
fn check_head_lines(head: &[u8]) -> Result<(), HttpError> {
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

fn map_parse_error(e: httparse::Error) -> HttpError {
    match e {
        httparse::Error::TooManyHeaders => HttpError::TooManyHeaders,
        other => malformed(other.to_string()),
    }
}

fn convert_headers(raw: &[httparse::Header<'_>]) -> Result<Headers, HttpError> {
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
fn valid_authority(a: &[u8], require_port: bool) -> bool {
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
fn valid_path_query(p: &[u8]) -> bool {
    p.iter().enumerate().all(|(i, &b)| match b {
        b'%' => p.get(i + 1..i + 3).is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)),
        b'#' | b'\\' | b'"' | b'<' | b'>' => false,
        _ => (b'!'..=b'~').contains(&b),
    })
}

fn check_target(method: &str, target: &str) -> Result<(), HttpError> {
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

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// The framing the headers declare (`Ok(None)`: neither CL nor TE), refusing every ambiguous form.
fn declared_framing(headers: &[(String, Vec<u8>)], version: u8) -> Result<Option<Framing>, HttpError> {
    let has_te = headers_named(headers, "transfer-encoding").next().is_some();
    let has_cl = headers_named(headers, "content-length").next().is_some();
    if has_te && has_cl {
        return Err(smuggling("both Content-Length and Transfer-Encoding"));
    }
    if has_te {
        if version == 0 {
            return Err(smuggling("Transfer-Encoding on HTTP/1.0"));
        }
        let codings: Vec<&[u8]> = list_elements(headers, "transfer-encoding").collect();
        return match codings.as_slice() {
            [one] if one.eq_ignore_ascii_case(b"chunked") => Ok(Some(Framing::Chunked)),
            _ => {
                let shown: Vec<String> = codings.iter().map(|c| String::from_utf8_lossy(c).into_owned()).collect();
                Err(smuggling(format!("Transfer-Encoding must be exactly \"chunked\", got {shown:?}")))
            }
        };
    }
    let mut length: Option<u64> = None;
    for element in list_elements(headers, "content-length") {
        if element.is_empty() || !element.iter().all(u8::is_ascii_digit) {
            return Err(smuggling(format!("invalid Content-Length {:?}", String::from_utf8_lossy(element))));
        }
        let n = std::str::from_utf8(element)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .filter(|n| i64::try_from(*n).is_ok())
            .ok_or_else(|| smuggling("Content-Length too large"))?;
        match length {
            Some(prev) if prev != n => return Err(smuggling("conflicting Content-Length values")),
            _ => length = Some(n),
        }
    }
    Ok(length.map(Framing::Length))
}

/// The body framing of a request; no CL and no TE means no body.
pub fn request_framing(h: &RequestHead) -> Result<Framing, HttpError> {
    Ok(declared_framing(&h.headers, h.version)?.unwrap_or(Framing::None))
}

/// The body framing of a response to a `req_method` request (RFC 9112 §6.3). The headers are checked for
/// conflicts even when the status says there is no body.
pub fn response_framing(req_method: &str, h: &ResponseHead) -> Result<Framing, HttpError> {
    let declared = declared_framing(&h.headers, h.version)?;
    let no_body = req_method == "HEAD"
        || (100..200).contains(&h.status)
        || h.status == 204
        || h.status == 304
        || (req_method == "CONNECT" && (200..300).contains(&h.status));
    Ok(if no_body { Framing::None } else { declared.unwrap_or(Framing::UntilClose) })
}

/// Streams exactly one body from `r` to `w` and returns the body bytes copied (chunk data only for chunked).
/// Chunked bodies are validated and re-emitted normalised; `max_chunk_line` bounds each chunk-size line.
/// The writer is flushed after every piece so that streamed responses (server-sent events) pass promptly.
pub async fn copy_body<R: AsyncBufRead + Unpin, W: AsyncWrite + Unpin>(
    framing: &Framing,
    r: &mut R,
    w: &mut W,
    max_chunk_line: usize,
) -> Result<u64, HttpError> {
    match *framing {
        Framing::None => Ok(0),
        Framing::Length(n) => {
            let mut buf = vec![0u8; usize::try_from(n).unwrap_or(COPY_BUF).clamp(1, COPY_BUF)];
            copy_exact(r, w, n, &mut buf).await?;
            Ok(n)
        }
        Framing::UntilClose => {
            let mut buf = vec![0u8; COPY_BUF];
            let mut total = 0u64;
            loop {
                let got = r.read(&mut buf).await?;
                if got == 0 {
                    return Ok(total);
                }
                w.write_all(&buf[..got]).await?;
                w.flush().await?;
                total += got as u64;
            }
        }
        Framing::Chunked => copy_chunked(r, w, max_chunk_line).await,
    }
}

async fn copy_exact<R: AsyncBufRead + Unpin, W: AsyncWrite + Unpin>(
    r: &mut R,
    w: &mut W,
    mut remaining: u64,
    buf: &mut [u8],
) -> Result<(), HttpError> {
    while remaining > 0 {
        let want = usize::try_from(remaining).unwrap_or(buf.len()).min(buf.len());
        let got = r.read(&mut buf[..want]).await?;
        if got == 0 {
            return Err(HttpError::UnexpectedEof);
        }
        w.write_all(&buf[..got]).await?;
        w.flush().await?;
        remaining -= got as u64;
    }
    Ok(())
}

/// Reads one CRLF-terminated line of at most `max` bytes (terminator included) into `out`, without it.
pub(crate) async fn read_crlf_line<R: AsyncBufRead + Unpin>(
    r: &mut R,
    max: usize,
    what: &str,
    out: &mut Vec<u8>,
) -> Result<(), HttpError> {
    out.clear();
    loop {
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            return Err(HttpError::UnexpectedEof);
        }
        let (take, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (buf.len(), false),
        };
        if out.len() + take > max {
            return Err(malformed(format!("{what} longer than {max} bytes")));
        }
        out.extend_from_slice(&buf[..take]);
        r.consume(take);
        if done {
            break;
        }
    }
    out.pop();
    if out.pop() != Some(b'\r') {
        return Err(malformed(format!("{what} ends with a bare LF")));
    }
    if out.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(malformed(format!("{what} contains CR, LF or NUL")));
    }
    Ok(())
}

/// `chunk-size [ ";" extensions ]`: hex digits only (no sign, space or prefix), at most 2^63 - 1.
pub(crate) fn parse_chunk_size(line: &[u8]) -> Result<u64, HttpError> {
    let (size, ext) = match line.iter().position(|&b| b == b';') {
        Some(i) => (&line[..i], &line[i..]),
        None => (line, &line[line.len()..]),
    };
    if size.is_empty() || !size.iter().all(u8::is_ascii_hexdigit) {
        return Err(malformed(format!("invalid chunk size {:?}", String::from_utf8_lossy(size))));
    }
    if !ext.iter().all(|&b| b == b'\t' || (b' '..=b'~').contains(&b)) {
        return Err(malformed("invalid byte in chunk extension"));
    }
    let mut n: u64 = 0;
    for &d in size {
        let digit = u64::from(char::from(d).to_digit(16).unwrap_or(0));
        n = n
            .checked_mul(16)
            .and_then(|n| n.checked_add(digit))
            .filter(|n| i64::try_from(*n).is_ok())
            .ok_or_else(|| smuggling("chunk size overflow"))?;
    }
    Ok(n)
}

/// Trailer fields that must not be forwarded (framing, routing, hop-by-hop).
const FORBIDDEN_TRAILERS: &[&str] =
    &["content-length", "transfer-encoding", "host", "connection", "trailer", "te", "keep-alive", "upgrade"];

async fn copy_chunked<R: AsyncBufRead + Unpin, W: AsyncWrite + Unpin>(
    r: &mut R,
    w: &mut W,
    max_chunk_line: usize,
) -> Result<u64, HttpError> {
    let mut line = Vec::new();
    let mut buf = vec![0u8; COPY_BUF];
    let mut total = 0u64;
    loop {
        read_crlf_line(r, max_chunk_line, "chunk-size line", &mut line).await?;
        let size = parse_chunk_size(&line)?;
        if size == 0 {
            break;
        }
        w.write_all(format!("{size:x}\r\n").as_bytes()).await?;
        copy_exact(r, w, size, &mut buf).await?;
        expect_chunk_end(r).await?;
        w.write_all(b"\r\n").await?;
        w.flush().await?;
        total = total.checked_add(size).ok_or_else(|| smuggling("chunked body too large"))?;
    }
    w.write_all(b"0\r\n").await?;
    for (name, value) in read_trailers(r).await? {
        w.write_all(&[&name[..], b": ", &value, b"\r\n"].concat()).await?;
    }
    w.write_all(b"\r\n").await?;
    w.flush().await?;
    Ok(total)
}

/// The CRLF that must follow a chunk's data.
pub(crate) async fn expect_chunk_end<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<(), HttpError> {
    let mut crlf = [0u8; 2];
    r.read_exact(&mut crlf).await?;
    if &crlf != b"\r\n" {
        return Err(smuggling("chunk data not followed by CRLF"));
    }
    Ok(())
}

/// Reads the trailer section (up to and including its blank line, at most
/// `MAX_TRAILER_BYTES`); returns the fields that may be forwarded, value trimmed.
pub(crate) async fn read_trailers<R: AsyncBufRead + Unpin>(r: &mut R) -> Result<Vec<(Vec<u8>, Vec<u8>)>, HttpError> {
    let (mut line, mut fields, mut trailer_bytes) = (Vec::new(), Vec::new(), 0usize);
    loop {
        let budget = MAX_TRAILER_BYTES.saturating_sub(trailer_bytes);
        read_crlf_line(r, budget, "trailer section", &mut line).await?;
        trailer_bytes += line.len() + 2;
        if line.is_empty() {
            return Ok(fields);
        }
        if line.first().is_some_and(|b| is_ows(*b)) {
            return Err(malformed("obsolete line folding (obs-fold) in trailers"));
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return Err(malformed("trailer line without colon"));
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        if !valid_field_name(name) || !valid_field_value(value) {
            return Err(malformed("invalid trailer field (or obs-fold)"));
        }
        if !FORBIDDEN_TRAILERS.iter().any(|f| f.as_bytes().eq_ignore_ascii_case(name)) {
            fields.push((name.to_vec(), trim_ows(value).to_vec()));
        }
    }
}

/// Appends `Name: value\r\n` for every field; fields with an invalid name or value (possible only after a
/// caller's `set_header`) are skipped so that nothing can inject a line.
fn push_headers(out: &mut Vec<u8>, headers: &[(String, Vec<u8>)]) {
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

fn push_status_line(out: &mut Vec<u8>, status: u16, reason: &str) {
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

fn wants_close(headers: &[(String, Vec<u8>)], version: u8) -> bool {
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
    let mut out = Vec::with_capacity(128 + body.len());
    push_status_line(&mut out, status, reason);
    out.extend_from_slice(format!("Content-Type: {content_type}\r\n").as_bytes());
    out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    if close {
        out.extend_from_slice(b"Connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
    out
}

#[cfg(test)]
#[path = "http1_tests.rs"]
mod tests;
