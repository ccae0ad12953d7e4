//! The gateway's own refusal of a git smart-HTTP call (a POST to
//! `.../git-upload-pack` or `.../git-receive-pack`), written in git's
//! protocol. Threat: a refusal nobody can read. git drops the body of an
//! HTTP error on these calls and prints only `RPC failed; HTTP 403`, so a
//! refused push or fetch did not say it was moat, which rule, or why.
//! It stays a refusal: decided and audited before it is written, nothing
//! is sent upstream, and the answer says the call failed (git exits
//! non-zero).
#![forbid(unsafe_code)]
use super::decide::Refusal;
use super::http1::{self, RequestHead};

/// The git service a request calls, told by the Content-Type git sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Service {
    UploadPack,
    ReceivePack,
}

impl Service {
    fn name(self) -> &'static str {
        match self {
            Service::UploadPack => "git-upload-pack",
            Service::ReceivePack => "git-receive-pack",
        }
    }
}

/// Which service `head` calls, if it is git's call (its Content-Type is
/// `application/x-git-SERVICE-request`).
pub(crate) fn service(head: &RequestHead) -> Option<Service> {
    let ct = head.header("content-type")?;
    [Service::UploadPack, Service::ReceivePack]
        .into_iter()
        .find(|s| ct.eq_ignore_ascii_case(format!("application/x-{}-request", s.name()).as_bytes()))
}

/// Longest line of text sent (a pkt-line holds 65516 bytes).
const MAX_LINE: usize = 1000;

/// Appends one pkt-line: four hex digits of length (their own included), then `data`.
fn pkt(out: &mut String, data: &str) {
    out.push_str(&format!("{:04x}{data}", data.len() + 4));
}

/// `r` as git reads it: `200`, `application/x-git-SERVICE-result`, the
/// `X-Moat-Denied` field as on every refusal, and a body git prints:
///
/// - upload-pack (clone, fetch; protocol v2 and v0): an `ERR` pkt-line,
///   which git prints as `fatal: remote error: TEXT`;
/// - receive-pack (push, whose answer git reads through side-band-64k,
///   which every common server offers): the refusal's lines on band 2,
///   printed as `remote: TEXT` lines, then its summary on band 3 (a fatal
///   error: `remote: TEXT`, and the push fails). A client that did not ask
///   for the side band prints the text as an unparsable status line.
pub(crate) fn refusal_response(r: &Refusal, s: Service) -> Vec<u8> {
    let bounded = |l: &str| -> String { l.trim().chars().take(MAX_LINE).collect() };
    let lines: Vec<String> = r.body.lines().map(bounded).filter(|l| !l.is_empty()).collect();
    let summary = r.summary.as_deref().map(bounded);
    let mut body = String::new();
    match s {
        Service::UploadPack => pkt(&mut body, &format!("ERR {}\n", bounded(&lines.join(" ")))),
        Service::ReceivePack => {
            for l in &lines {
                pkt(&mut body, &format!("\u{2}{l}\n"));
            }
            let last = summary.clone().or_else(|| lines.last().cloned()).unwrap_or_else(|| "moat: refused".into());
            pkt(&mut body, &format!("\u{3}{last}\n"));
            body.push_str("0000");
        }
    }
    let mut extra = vec![("Cache-Control", "no-cache")];
    if let Some(s) = &summary {
        extra.push(("X-Moat-Denied", s));
    }
    let content_type = format!("application/x-{}-result", s.name());
    http1::response_with(200, "OK", &extra, &content_type, &body, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(content_type: &str) -> RequestHead {
        RequestHead {
            method: "POST".into(),
            target: "/r.git/x".into(),
            version: 1,
            headers: vec![("Content-Type".into(), content_type.as_bytes().to_vec())],
        }
    }

    /// The pkt-lines of `body`: (length-prefixed data, or None for a flush).
    fn pkts(mut body: &[u8]) -> Vec<Option<Vec<u8>>> {
        let mut out = Vec::new();
        while body.len() >= 4 {
            let n = usize::from_str_radix(std::str::from_utf8(&body[..4]).unwrap(), 16).unwrap();
            if n == 0 {
                out.push(None);
                body = &body[4..];
                continue;
            }
            out.push(Some(body[4..n].to_vec()));
            body = &body[n..];
        }
        assert!(body.is_empty(), "a partial pkt-line: {body:?}");
        out
    }

    fn split(resp: &[u8]) -> (String, Vec<u8>) {
        let end = resp.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        (String::from_utf8(resp[..end].to_vec()).unwrap(), resp[end + 4..].to_vec())
    }

    fn refusal() -> Refusal {
        Refusal {
            status: 403,
            body: "moat: request denied: POST /r.git/git-receive-pack on h: no rule allows it (policy git)\n".into(),
            summary: Some("moat denied /usr/bin/git POST h/r.git/git-receive-pack (policy git)".into()),
        }
    }

    #[test]
    fn git_calls_are_told_by_their_content_type() {
        assert_eq!(service(&head("application/x-git-upload-pack-request")), Some(Service::UploadPack));
        assert_eq!(service(&head("Application/X-Git-Receive-Pack-Request")), Some(Service::ReceivePack));
        for other in ["application/x-git-upload-pack-result", "text/plain", "application/json"] {
            assert_eq!(service(&head(other)), None, "{other}");
        }
    }

    #[test]
    fn a_refused_push_is_side_band_text_then_a_fatal_error() {
        let (head, body) = split(&refusal_response(&refusal(), Service::ReceivePack));
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains("Content-Type: application/x-git-receive-pack-result\r\n"), "{head}");
        assert!(head.contains("X-Moat-Denied: moat denied /usr/bin/git POST"), "{head}");
        assert!(head.contains("Connection: close"), "{head}");
        let p = pkts(&body);
        assert_eq!(p.len(), 3, "{p:?}");
        assert_eq!(
            p[0].as_deref(),
            Some(&b"\x02moat: request denied: POST /r.git/git-receive-pack on h: no rule allows it (policy git)\n"[..])
        );
        assert_eq!(
            p[1].as_deref(),
            Some(&b"\x03moat denied /usr/bin/git POST h/r.git/git-receive-pack (policy git)\n"[..])
        );
        assert_eq!(p[2], None);
    }

    #[test]
    fn a_refused_fetch_is_one_err_line_bounded() {
        let mut r = refusal();
        r.body = format!("moat: {}\nsecond line\n", "x".repeat(5000));
        let (head, body) = split(&refusal_response(&r, Service::UploadPack));
        assert!(head.contains("Content-Type: application/x-git-upload-pack-result\r\n"), "{head}");
        let p = pkts(&body);
        assert_eq!(p.len(), 1, "{p:?}");
        let line = String::from_utf8(p[0].clone().unwrap()).unwrap();
        assert!(line.starts_with("ERR moat: xxx") && line.ends_with('\n'), "{line}");
        assert_eq!(line.len(), "ERR \n".len() + MAX_LINE, "{line}");
    }
}
