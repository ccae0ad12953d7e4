//! Message bodies: the framing a head declares (every ambiguous CL/TE form
//! refused) and the streaming copy of exactly one body, chunked bodies
//! re-emitted normalised with their trailers filtered. Guards against request
//! smuggling and against unbounded chunk lines and trailers.
#![forbid(unsafe_code)]
use super::*;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bulk copy buffer.
pub(super) const COPY_BUF: usize = 64 * 1024;

/// How a message body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    None,
    Length(u64),
    Chunked,
    UntilClose,
}

/// The framing the headers declare (`Ok(None)`: neither CL nor TE), refusing every ambiguous form.
pub(super) fn declared_framing(headers: &[(String, Vec<u8>)], version: u8) -> Result<Option<Framing>, HttpError> {
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

pub(super) async fn copy_exact<R: AsyncBufRead + Unpin, W: AsyncWrite + Unpin>(
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
pub(super) const FORBIDDEN_TRAILERS: &[&str] =
    &["content-length", "transfer-encoding", "host", "connection", "trailer", "te", "keep-alive", "upgrade"];

pub(super) async fn copy_chunked<R: AsyncBufRead + Unpin, W: AsyncWrite + Unpin>(
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
