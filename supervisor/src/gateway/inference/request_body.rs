//! How a request body to `inference.local` reaches the provider: streamed
//! through piece by piece, or (only when the route rewrites the model)
//! held whole under the sandbox's byte budget. Guards against the host's
//! memory being spent for the sandbox (issue 18: the supervisor runs outside
//! the sandbox's cgroup, so a body held on the host is memory the sandbox
//! does not pay for): a streamed body holds one piece at a time, held
//! bodies share one per-sandbox budget and are refused past it, every body
//! is capped (413) and must arrive before a deadline (408).
#![forbid(unsafe_code)]
use crate::gateway::http1::{BodyDecoder, Framing};
use tokio::io::{AsyncBufRead, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

/// Largest request body (prompts with images fit; a runaway upload does not).
pub(crate) const MAX_REQUEST_BODY: u64 = 32 << 20;

/// Budget is taken in steps of this many bytes (fewer semaphore calls).
const STEP: usize = 1 << 20;

/// Why a body was not relayed: the status, error type and message the
/// client gets.
#[derive(Debug)]
pub(crate) struct Refused {
    pub status: u16,
    pub kind: &'static str,
    pub message: String,
}

fn refused(status: u16, kind: &'static str, message: impl Into<String>) -> Refused {
    Refused { status, kind, message: message.into() }
}

fn too_large() -> Refused {
    refused(413, "moat_too_large", format!("request body larger than {} MiB", MAX_REQUEST_BODY >> 20))
}

fn too_slow(deadline_secs: u64) -> Refused {
    refused(408, "moat_timeout", format!("the request body did not arrive within {deadline_secs} s"))
}

/// Refuses a declared length over the cap before any byte is read.
pub(crate) fn check_declared(framing: Framing) -> Result<(), Refused> {
    match framing {
        Framing::Length(n) if n > MAX_REQUEST_BODY => Err(too_large()),
        _ => Ok(()),
    }
}

/// The framing header the provider gets for a streamed body.
pub(crate) fn streamed_framing_header(framing: Framing) -> (String, Vec<u8>) {
    match framing {
        Framing::Chunked => ("Transfer-Encoding".into(), b"chunked".to_vec()),
        Framing::Length(n) => ("Content-Length".into(), n.to_string().into_bytes()),
        Framing::None | Framing::UntilClose => ("Content-Length".into(), b"0".to_vec()),
    }
}

/// Copies the body from `client` to `up` as it arrives (chunked stays
/// chunked, a length stays that length), within the cap and the deadline.
pub(crate) async fn stream<R, W>(
    framing: Framing,
    client: &mut R,
    up: &mut W,
    deadline: Instant,
    deadline_secs: u64,
) -> Result<(), Refused>
where
    R: AsyncBufRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let copy = async {
        let mut reader = BodyDecoder::new(framing);
        let mut total = 0u64;
        let chunked = framing == Framing::Chunked;
        let upstream = |e: std::io::Error| {
            refused(502, "moat_upstream", format!("sending to the provider: {}", moat_builder::errors::chain(&e)))
        };
        while let Some(piece) = reader.next(client).await.map_err(|e| {
            refused(400, "moat_bad_request", format!("reading the request body: {}", moat_builder::errors::chain(&e)))
        })? {
            total += piece.len() as u64;
            if total > MAX_REQUEST_BODY {
                return Err(too_large());
            }
            if piece.is_empty() {
                continue;
            }
            if chunked {
                up.write_all(format!("{:x}\r\n", piece.len()).as_bytes()).await.map_err(upstream)?;
                up.write_all(&piece).await.map_err(upstream)?;
                up.write_all(b"\r\n").await.map_err(upstream)?;
            } else {
                up.write_all(&piece).await.map_err(upstream)?;
            }
        }
        if chunked {
            up.write_all(b"0\r\n\r\n").await.map_err(upstream)?;
        }
        up.flush().await.map_err(upstream)
    };
    tokio::time::timeout_at(deadline, copy).await.unwrap_or_else(|_| Err(too_slow(deadline_secs)))
}

/// A body read whole, with the share of the sandbox's budget it holds.
pub(crate) struct Held<'a> {
    pub body: Vec<u8>,
    budget: Option<SemaphorePermit<'a>>,
}

/// Reads the whole body, taking budget as it grows: 503 when the sandbox's
/// budget is spent by other held bodies, 413 past the cap, 408 past the
/// deadline.
pub(crate) async fn hold<'a, R: AsyncBufRead + Unpin>(
    framing: Framing,
    client: &mut R,
    budget: &'a Semaphore,
    deadline: Instant,
    deadline_secs: u64,
) -> Result<Held<'a>, Refused> {
    let read = async {
        let mut reader = BodyDecoder::new(framing);
        let mut held = Held { body: Vec::new(), budget: None };
        let mut granted = 0usize;
        while let Some(piece) = reader.next(client).await.map_err(|e| {
            refused(400, "moat_bad_request", format!("reading the request body: {}", moat_builder::errors::chain(&e)))
        })? {
            if (held.body.len() + piece.len()) as u64 > MAX_REQUEST_BODY {
                return Err(too_large());
            }
            while held.body.len() + piece.len() > granted {
                let more = budget.try_acquire_many(STEP as u32).map_err(|_| {
                    refused(
                        503,
                        "moat_busy",
                        "the request bodies this sandbox's gateway holds reached supervisor.body_buffer_mib: retry later",
                    )
                })?;
                match held.budget.as_mut() {
                    Some(p) => p.merge(more),
                    None => held.budget = Some(more),
                }
                granted += STEP;
            }
            held.body.extend_from_slice(&piece);
        }
        Ok(held)
    };
    tokio::time::timeout_at(deadline, read).await.unwrap_or_else(|_| Err(too_slow(deadline_secs)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::BufReader;

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap()
    }

    #[test]
    fn chunked_bodies_stream_as_chunks_and_lengths_as_is() {
        rt().block_on(async {
            let mut out = Vec::new();
            let mut src = BufReader::new(&b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"[..]);
            let far = Instant::now() + std::time::Duration::from_secs(5);
            stream(Framing::Chunked, &mut src, &mut out, far, 5).await.unwrap();
            assert_eq!(out, b"3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n");
            let mut out = Vec::new();
            let mut src = BufReader::new(&b"hello"[..]);
            stream(Framing::Length(5), &mut src, &mut out, far, 5).await.unwrap();
            assert_eq!(out, b"hello");
            assert_eq!(check_declared(Framing::Length(MAX_REQUEST_BODY + 1)).unwrap_err().status, 413);
        });
    }

    #[test]
    fn held_bodies_share_onebudget() {
        rt().block_on(async {
            let budget = Semaphore::new(2 * STEP);
            let far = Instant::now() + std::time::Duration::from_secs(5);
            let big = vec![b'x'; STEP + 1];
            let mut a = BufReader::new(&big[..]);
            let first = hold(Framing::Length(big.len() as u64), &mut a, &budget, far, 5).await.unwrap();
            assert_eq!(first.body.len(), STEP + 1);
            let mut b = BufReader::new(&big[..]);
            let refused = hold(Framing::Length(big.len() as u64), &mut b, &budget, far, 5).await.err().unwrap();
            assert_eq!(refused.status, 503);
            drop(first);
            let mut c = BufReader::new(&big[..]);
            assert!(hold(Framing::Length(big.len() as u64), &mut c, &budget, far, 5).await.is_ok());
        });
    }
}
