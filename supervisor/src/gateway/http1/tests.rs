//! Tests for http1/: strict head parsing, framing decisions and body streaming against smuggling vectors.
#![forbid(unsafe_code)]
use super::*;
use tokio::io::{AsyncReadExt, BufReader};

async fn req(raw: &[u8]) -> Result<Option<RequestHead>, HttpError> {
    let mut r = BufReader::new(raw);
    read_request_head(&mut r, 8192).await
}

async fn req_ok(raw: &[u8]) -> RequestHead {
    req(raw).await.unwrap().unwrap()
}

async fn req_err(raw: &[u8]) -> HttpError {
    match req(raw).await {
        Err(e) => e,
        Ok(h) => panic!("expected an error for {:?}, got {h:?}", String::from_utf8_lossy(raw)),
    }
}

async fn resp(raw: &[u8]) -> Result<Option<ResponseHead>, HttpError> {
    let mut r = BufReader::new(raw);
    read_response_head(&mut r, 8192).await
}

async fn copy(framing: Framing, input: &[u8]) -> Result<(u64, Vec<u8>, Vec<u8>), HttpError> {
    let mut r = BufReader::with_capacity(7, input); // tiny buffer: exercises splits across reads
    let mut out = Vec::new();
    let n = copy_body(&framing, &mut r, &mut out, 64).await?;
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).await?;
    Ok((n, out, rest))
}

fn head_with(version: u8, headers: &[(&str, &str)]) -> RequestHead {
    RequestHead {
        method: "POST".into(),
        target: "/".into(),
        version,
        headers: headers.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect(),
    }
}

fn response(status: u16, headers: &[(&str, &str)]) -> ResponseHead {
    ResponseHead {
        version: 1,
        status,
        reason: "X".into(),
        headers: headers.iter().map(|(n, v)| (n.to_string(), v.as_bytes().to_vec())).collect(),
    }
}

#[tokio::test]
async fn get_parses_and_leaves_next_request_in_reader() {
    let raw = b"GET /a?b=1 HTTP/1.1\r\nHost: example.com\r\nX-A: 1\r\nx-a:  2 \r\n\r\nGET /next";
    let mut r = BufReader::with_capacity(5, &raw[..]);
    let h = read_request_head(&mut r, 8192).await.unwrap().unwrap();
    assert_eq!((h.method.as_str(), h.target.as_str(), h.version), ("GET", "/a?b=1", 1));
    assert_eq!(h.header("HOST"), Some(&b"example.com"[..]));
    assert_eq!(h.headers_all("x-a"), vec![&b"1"[..], &b"2"[..]]);
    assert_eq!(request_framing(&h).unwrap(), Framing::None);
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b"GET /next");
}

#[tokio::test]
async fn post_with_content_length_streams_exact_body() {
    let raw = b"POST /up HTTP/1.1\r\nHost: h:8080\r\nContent-Length: 5\r\n\r\nhelloEXTRA";
    let mut r = BufReader::new(&raw[..]);
    let h = read_request_head(&mut r, 8192).await.unwrap().unwrap();
    let f = request_framing(&h).unwrap();
    assert_eq!(f, Framing::Length(5));
    let mut out = Vec::new();
    assert_eq!(copy_body(&f, &mut r, &mut out, 64).await.unwrap(), 5);
    assert_eq!(out, b"hello");
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).await.unwrap();
    assert_eq!(rest, b"EXTRA");
}

#[tokio::test]
async fn eof_handling() {
    assert!(req(b"").await.unwrap().is_none());
    assert!(req(b"\r\n").await.unwrap().is_none());
    assert!(matches!(req_err(b"GET / HTTP/1.1\r\nHost: a\r\n").await, HttpError::UnexpectedEof));
    // Leading empty lines before a request line are ignored (RFC 9112 2.2).
    assert_eq!(req_ok(b"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n").await.target, "/");
}

#[tokio::test]
async fn head_limits() {
    let mut raw = b"GET / HTTP/1.1\r\nHost: a\r\nX: ".to_vec();
    raw.extend(std::iter::repeat_n(b'a', 9000));
    raw.extend_from_slice(b"\r\n\r\n");
    let e = req_err(&raw).await;
    assert!(matches!(e, HttpError::HeaderTooLarge), "{e}");
    assert_eq!(e.status(), 431);
    // An endless stream of empty lines also hits the limit.
    assert!(matches!(req_err(&b"\r\n".repeat(5000)).await, HttpError::HeaderTooLarge));
    let mut many = b"GET / HTTP/1.1\r\nHost: a\r\n".to_vec();
    for i in 0..MAX_HEADERS {
        many.extend_from_slice(format!("X-{i}: v\r\n").as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert!(matches!(req_err(&many).await, HttpError::TooManyHeaders));
}

#[tokio::test]
async fn malformed_heads_are_refused() {
    let cases: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n b\r\n\r\n",  // obs-fold
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\r\n\tb\r\n\r\n", // obs-fold with tab
        b"GET / HTTP/1.1\r\n Host: a\r\n\r\n",               // whitespace before first header
        b"GET / HTTP/1.1\nHost: a\n\n",                      // bare LF
        b"GET / HTTP/1.1\r\nHost: a\nX: b\r\n\r\n",          // one bare LF
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n",     // bare CR in value
        b"GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n",     // NUL in value
        b"GET / HTTP/1.1\r\nHost: a\r\nX Y: b\r\n\r\n",      // space in name
        b"GET / HTTP/1.1\r\nHost: a\r\nX : b\r\n\r\n",       // space before colon
        b"GET / HTTP/1.1\r\nHost: a\r\n: b\r\n\r\n",         // empty name
        b"GET / HTTP/1.1\r\nHost: a\r\nX\x01: b\r\n\r\n",    // control in name
        b"GET /\r\n\r\n",                                    // HTTP/0.9
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",                 // HTTP/2 preface
        b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",                // wrong version
        b"GET / HTTP/1.1\r\n\r\n",                           // no Host
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",     // two Hosts
        b"GET / HTTP/1.1\r\nHost: a@b\r\n\r\n",              // userinfo in Host
        b"GET / HTTP/1.1\r\nHost: a:99999\r\n\r\n",          // bad port
        b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",               // double space
        b"GET a/b HTTP/1.1\r\nHost: a\r\n\r\n",              // not origin-form
        b"GET https://a/ HTTP/1.1\r\nHost: a\r\n\r\n",       // only http:// absolute-form
        b"GET http://u@a/ HTTP/1.1\r\nHost: a\r\n\r\n",      // userinfo
        b"GET http:/// HTTP/1.1\r\nHost: a\r\n\r\n",         // empty authority
        b"GET /a#frag HTTP/1.1\r\nHost: a\r\n\r\n",          // fragment
        b"GET /a\\..\\b HTTP/1.1\r\nHost: a\r\n\r\n",        // backslash
        b"GET /%zz HTTP/1.1\r\nHost: a\r\n\r\n",             // bad escape
        b"GET /%4 HTTP/1.1\r\nHost: a\r\n\r\n",              // truncated escape
        b"GET /\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n",        // raw non-ASCII
        b"GET a:443 HTTP/1.1\r\nHost: a\r\n\r\n",            // authority-form without CONNECT
        b"GET * HTTP/1.1\r\nHost: a\r\n\r\n",                // asterisk without OPTIONS
        b"CONNECT /x HTTP/1.1\r\nHost: a\r\n\r\n",           // CONNECT needs authority
        b"CONNECT a HTTP/1.1\r\nHost: a\r\n\r\n",            // CONNECT needs a port
        b"CONNECT a:0 HTTP/1.1\r\n\r\n",                     // port zero
        b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n",                // method not a token
    ];
    for raw in cases {
        let e = req_err(raw).await;
        assert!(matches!(e, HttpError::Malformed(_)), "{:?}: {e:?}", String::from_utf8_lossy(raw));
        assert_eq!(e.status(), 400);
    }
}

#[tokio::test]
async fn accepted_target_forms() {
    let c = req_ok(b"CONNECT example.com:443 HTTP/1.1\r\n\r\n").await;
    assert_eq!((c.method.as_str(), c.target.as_str()), ("CONNECT", "example.com:443"));
    req_ok(b"CONNECT [2001:db8::1]:443 HTTP/1.1\r\nHost: [2001:db8::1]:443\r\n\r\n").await;
    req_ok(b"GET http://example.com:8080/p?q=%20 HTTP/1.1\r\nHost: example.com:8080\r\n\r\n").await;
    req_ok(b"GET HTTP://example.com HTTP/1.1\r\nHost: example.com\r\n\r\n").await;
    req_ok(b"OPTIONS * HTTP/1.1\r\nHost: a\r\n\r\n").await;
    let old = req_ok(b"GET / HTTP/1.0\r\n\r\n").await; // HTTP/1.0 needs no Host
    assert_eq!(old.version, 0);
    assert!(wants_close_request(&old));
}

#[tokio::test]
async fn request_framing_refuses_ambiguity() {
    let smuggles = [
        head_with(1, &[("Content-Length", "5"), ("Transfer-Encoding", "chunked")]),
        head_with(1, &[("Content-Length", "5"), ("Content-Length", "6")]),
        head_with(1, &[("Content-Length", "5, 6")]),
        head_with(1, &[("Content-Length", "-5")]),
        head_with(1, &[("Content-Length", "+5")]),
        head_with(1, &[("Content-Length", "0x5")]),
        head_with(1, &[("Content-Length", "5 5")]),
        head_with(1, &[("Content-Length", "")]),
        head_with(1, &[("Content-Length", "5,")]),
        head_with(1, &[("Content-Length", "99999999999999999999999")]),
        head_with(1, &[("Content-Length", "9223372036854775808")]), // 2^63
        head_with(1, &[("Transfer-Encoding", "chunked, identity")]),
        head_with(1, &[("Transfer-Encoding", "identity, chunked")]),
        head_with(1, &[("Transfer-Encoding", "gzip, chunked")]),
        head_with(1, &[("Transfer-Encoding", "chunked"), ("Transfer-Encoding", "chunked")]),
        head_with(1, &[("Transfer-Encoding", "xchunked")]),
        head_with(1, &[("Transfer-Encoding", "chunked;q=1")]),
        head_with(1, &[("Transfer-Encoding", "chunked,")]),
        head_with(1, &[("Transfer-Encoding", "\x0bchunked")]),
        head_with(0, &[("Transfer-Encoding", "chunked")]),
    ];
    for h in &smuggles {
        let e = request_framing(h).unwrap_err();
        assert!(matches!(e, HttpError::Smuggling(_)), "{:?}: {e:?}", h.headers);
        assert_eq!(e.status(), 400);
    }
    let ok = |hs: &[(&str, &str)]| request_framing(&head_with(1, hs)).unwrap();
    assert_eq!(ok(&[("Content-Length", "5"), ("content-length", "5")]), Framing::Length(5));
    assert_eq!(ok(&[("Content-Length", "5, 5")]), Framing::Length(5));
    assert_eq!(ok(&[("Content-Length", "0")]), Framing::Length(0));
    assert_eq!(ok(&[("Transfer-Encoding", "CHUNKED")]), Framing::Chunked);
    assert_eq!(ok(&[]), Framing::None);
}

#[tokio::test]
async fn space_padded_transfer_encoding_is_ows_and_accepted() {
    // OWS around the token is the field grammar; the parser stores the trimmed value.
    let h = req_ok(b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:   chunked \t\r\n\r\n").await;
    assert_eq!(h.header("transfer-encoding"), Some(&b"chunked"[..]));
    assert_eq!(request_framing(&h).unwrap(), Framing::Chunked);
    assert_eq!(request_framing(&head_with(1, &[("Transfer-Encoding", " chunked ")])).unwrap(), Framing::Chunked);
}

#[tokio::test]
async fn chunked_round_trip_with_extensions_and_trailers() {
    let input = b"5;name=\"v\"\r\nhello\r\n00A\r\n0123456789\r\n0;last\r\nX-Sum: abc\r\nContent-Length: 9\r\n\r\nNEXT";
    let (n, out, rest) = copy(Framing::Chunked, input).await.unwrap();
    assert_eq!(n, 15);
    assert_eq!(out, b"5\r\nhello\r\na\r\n0123456789\r\n0\r\nX-Sum: abc\r\n\r\n");
    assert_eq!(rest, b"NEXT");
    // The output is itself valid chunked framing that decodes to the same body.
    let (n2, out2, _) = copy(Framing::Chunked, &out).await.unwrap();
    assert_eq!((n2, out2), (15, out));
}

#[tokio::test]
async fn chunked_refusals() {
    let long_ext = format!("1;{}\r\na\r\n0\r\n\r\n", "x".repeat(100));
    let cases: Vec<&[u8]> = vec![
        b"ffffffffffffffffff\r\n",       // overflow
        b"8000000000000000\r\n",         // 2^63
        b"-5\r\nhello\r\n0\r\n\r\n",     // sign
        b"+5\r\nhello\r\n0\r\n\r\n",     // sign
        b" 5\r\nhello\r\n0\r\n\r\n",     // leading space
        b"5 \r\nhello\r\n0\r\n\r\n",     // trailing space
        b"0x5\r\nhello\r\n0\r\n\r\n",    // prefix
        b"\r\nhello\r\n0\r\n\r\n",       // empty size
        b"5\nhello\r\n0\r\n\r\n",        // bare LF after size
        b"5;a\nb\r\nhello\r\n0\r\n\r\n", // bare LF inside extension
        b"5;a\rb\r\nhello\r\n0\r\n\r\n", // bare CR inside extension
        b"5\r\nhelloXX0\r\n\r\n",        // no CRLF after data
        b"5\r\nhello\n0\r\n\r\n",        // LF only after data
        b"0\r\nX: a\r\n b\r\n\r\n",      // obs-fold in trailers
        b"0\r\nno colon\r\n\r\n",        // bad trailer
        b"0\r\nX: a\nY: b\r\n\r\n",      // bare LF in trailers
        long_ext.as_bytes(),             // line over max_chunk_line (64)
    ];
    for input in cases {
        let e = copy(Framing::Chunked, input).await.unwrap_err();
        assert!(
            matches!(e, HttpError::Malformed(_) | HttpError::Smuggling(_)),
            "{:?}: {e:?}",
            String::from_utf8_lossy(input)
        );
    }
    let big_trailer = format!("0\r\n{}\r\n\r\n", "X: y\r\n".repeat(MAX_TRAILER_BYTES / 6 + 1));
    assert!(matches!(copy(Framing::Chunked, big_trailer.as_bytes()).await, Err(HttpError::Malformed(_))));
    for truncated in [&b"5\r\nhel"[..], b"5\r\nhello\r\n", b"5\r\nhello\r\n0\r\n", b"5"] {
        assert!(matches!(copy(Framing::Chunked, truncated).await, Err(HttpError::UnexpectedEof)), "{truncated:?}");
    }
}

#[tokio::test]
async fn length_and_until_close_bodies() {
    assert!(matches!(copy(Framing::Length(10), b"short").await, Err(HttpError::UnexpectedEof)));
    let big: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let (n, out, rest) = copy(Framing::Length(150_000), &big).await.unwrap();
    assert_eq!((n, &out[..], &rest[..]), (150_000, &big[..150_000], &big[150_000..]));
    let (n, out, _) = copy(Framing::UntilClose, &big).await.unwrap();
    assert_eq!((n, out), (200_000, big));
    let (n, out, rest) = copy(Framing::None, b"abc").await.unwrap();
    assert_eq!((n, out, rest), (0, vec![], b"abc".to_vec()));
}

#[tokio::test]
async fn response_parsing_and_framing_table() {
    let r = resp(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi").await.unwrap().unwrap();
    assert_eq!((r.version, r.status, r.reason.as_str()), (1, 200, "OK"));
    assert!(resp(b"").await.unwrap().is_none());
    for bad in [
        &b"HTTP/1.1 200 OK\nContent-Length: 2\n\n"[..],
        b"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 099 X\r\n\r\n",
        b"\r\nHTTP/1.1 200 OK\r\n\r\n",
    ] {
        assert!(matches!(resp(bad).await, Err(HttpError::Malformed(_))), "{:?}", String::from_utf8_lossy(bad));
    }
    let mut huge = b"HTTP/1.1 200 OK\r\n".to_vec();
    huge.extend(std::iter::repeat_n(b'a', 9000));
    assert!(matches!(resp(&huge).await, Err(HttpError::HeaderTooLarge)));

    let cl = [("Content-Length", "7")];
    let te = [("Transfer-Encoding", "chunked")];
    type Row<'a> = (&'a str, u16, &'a [(&'a str, &'a str)], Framing);
    let table: &[Row] = &[
        ("HEAD", 200, &cl, Framing::None),
        ("GET", 100, &[], Framing::None),
        ("GET", 101, &[], Framing::None),
        ("GET", 204, &[], Framing::None),
        ("GET", 304, &cl, Framing::None),
        ("CONNECT", 200, &[], Framing::None),
        ("CONNECT", 407, &cl, Framing::Length(7)),
        ("GET", 200, &cl, Framing::Length(7)),
        ("GET", 200, &te, Framing::Chunked),
        ("GET", 200, &[], Framing::UntilClose),
        ("POST", 500, &[], Framing::UntilClose),
    ];
    for (method, status, headers, want) in table {
        assert_eq!(response_framing(method, &response(*status, headers)).unwrap(), *want, "{method} {status}");
    }
    let both = response(200, &[("Content-Length", "7"), ("Transfer-Encoding", "chunked")]);
    assert!(matches!(response_framing("GET", &both), Err(HttpError::Smuggling(_))));
    assert!(matches!(response_framing("HEAD", &both), Err(HttpError::Smuggling(_))));
    let mut old = response(200, &te);
    old.version = 0;
    assert!(matches!(response_framing("GET", &old), Err(HttpError::Smuggling(_))));
}

#[tokio::test]
async fn serialisation_and_hop_by_hop() {
    let mut h = req_ok(
        b"GET http://a.example/x HTTP/1.1\r\nHost: a.example\r\nConnection: keep-alive, X-Secret, Content-Length\r\n\
          X-Secret: s\r\nProxy-Authorization: Basic x\r\nKeep-Alive: 5\r\nTE: trailers\r\nContent-Length: 0\r\n\
          Transfer-Encoding: chunked\r\nAccept: */*\r\n\r\n",
    )
    .await;
    strip_hop_by_hop(&mut h.headers);
    let names: Vec<&str> = h.headers.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["Host", "Content-Length", "Transfer-Encoding", "Accept"]);
    h.remove_header("transfer-encoding");
    h.set_header("accept", "text/plain");
    h.set_header("X-Injected", "a\r\nEvil: 1"); // invalid value: never serialised
    assert_eq!(
        write_request_head(&h, "/x y"),
        b"GET /x%20y HTTP/1.1\r\nHost: a.example\r\nContent-Length: 0\r\nAccept: text/plain\r\n\r\n"
    );
    let r = response(404, &[("Content-Length", "0"), ("Connection", "close")]);
    assert_eq!(write_response_head(&r), b"HTTP/1.1 404 X\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
    assert!(wants_close_response(&r));
    assert!(!wants_close_response(&response(200, &[])));
    let mut old = response(200, &[("Connection", "Keep-Alive")]);
    old.version = 0;
    assert!(!wants_close_response(&old));
    assert_eq!(
        simple_response(403, "Forbidden", "no\n", true),
        b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 3\r\n\
          Connection: close\r\n\r\nno\n"
    );
    assert!(!simple_response(502, "Bad\r\nGateway", "", false).windows(2).any(|w| w == b"\r\nG"));
}

#[tokio::test]
async fn upgrade_detection() {
    let ws = head_with(1, &[("Connection", "keep-alive, Upgrade"), ("Upgrade", "WebSocket")]);
    assert_eq!(is_upgrade(&ws).as_deref(), Some("websocket"));
    assert_eq!(is_upgrade(&head_with(1, &[("Upgrade", "websocket")])), None);
    assert_eq!(is_upgrade(&head_with(1, &[("Connection", "upgrade")])), None);
    assert!(wants_close_request(&head_with(1, &[("Connection", "Close")])));
    assert!(!wants_close_request(&head_with(1, &[])));
}
