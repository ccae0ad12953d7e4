//! Decodes an HTTP/1.1 message body piece by piece, framing removed, for the
//! parts of the gateway that read what they relay (the inference relay counts
//! tokens and scrubs keys from it). Built on http1's chunk parsing, so a body
//! read here meets the same limits as one the proxy copies: bounded
//! chunk-size lines and trailers, no bare LF, no signed or overflowing sizes.
#![forbid(unsafe_code)]
use super::{self as http1, Framing, HttpError};
use tokio::io::AsyncBufRead;
use tokio::io::AsyncBufReadExt;

/// Longest chunk-size line accepted (size, extensions and CRLF).
const MAX_CHUNK_LINE: usize = 4096;

/// A body being read: yields what arrives, without copying it twice.
pub struct BodyDecoder {
    framing: Framing,
    /// Bytes left in the body (`Length`) or in the current chunk (`Chunked`).
    left: u64,
    started: bool,
    done: bool,
    line: Vec<u8>,
}

impl BodyDecoder {
    pub fn new(framing: Framing) -> BodyDecoder {
        let left = if let Framing::Length(n) = framing { n } else { 0 };
        BodyDecoder { framing, left, started: false, done: false, line: Vec::new() }
    }

    /// The next piece of the body, or `None` at its end.
    pub async fn next<R: AsyncBufRead + Unpin>(&mut self, r: &mut R) -> Result<Option<Vec<u8>>, HttpError> {
        if self.done {
            return Ok(None);
        }
        match self.framing {
            Framing::None => self.done = true,
            Framing::Length(_) if self.left == 0 => self.done = true,
            Framing::Chunked if self.left == 0 => {
                if self.started {
                    http1::expect_chunk_end(r).await?;
                }
                self.started = true;
                http1::read_crlf_line(r, MAX_CHUNK_LINE, "chunk-size line", &mut self.line).await?;
                self.left = http1::parse_chunk_size(&self.line)?;
                if self.left == 0 {
                    http1::read_trailers(r).await?;
                    self.done = true;
                }
            }
            _ => {}
        }
        if self.done {
            return Ok(None);
        }
        let buf = r.fill_buf().await?;
        if buf.is_empty() {
            self.done = true;
            return if self.framing == Framing::UntilClose { Ok(None) } else { Err(HttpError::UnexpectedEof) };
        }
        let n = match self.framing {
            Framing::UntilClose => buf.len(),
            _ => buf.len().min(usize::try_from(self.left).unwrap_or(usize::MAX)),
        };
        let piece = buf[..n].to_vec();
        r.consume(n);
        self.left = self.left.saturating_sub(n as u64);
        Ok(Some(piece))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn all(framing: Framing, wire: &[u8]) -> Result<Vec<u8>, HttpError> {
        let mut r = tokio::io::BufReader::with_capacity(7, wire);
        let mut d = BodyDecoder::new(framing);
        let mut out = Vec::new();
        while let Some(p) = d.next(&mut r).await? {
            out.extend(p);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn decodes_every_framing() {
        let chunked = b"5;ext=1\r\nhello\r\n7\r\n, world\r\n0\r\nX-T: 1\r\n\r\n";
        assert_eq!(all(Framing::Chunked, chunked).await.unwrap(), b"hello, world");
        assert_eq!(all(Framing::Length(5), b"hello, more").await.unwrap(), b"hello");
        assert_eq!(all(Framing::UntilClose, b"to the end").await.unwrap(), b"to the end");
        assert!(all(Framing::None, b"ignored").await.unwrap().is_empty());
        assert!(matches!(all(Framing::Length(9), b"short").await, Err(HttpError::UnexpectedEof)));
    }

    #[tokio::test]
    async fn refuses_what_the_proxy_refuses() {
        for bad in [&b"+5\r\nhello\r\n0\r\n\r\n"[..], b"5\nhello\r\n0\r\n\r\n", b"5\r\nhelloXX0\r\n\r\n"] {
            assert!(all(Framing::Chunked, bad).await.is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let endless = [b"1".repeat(10_000), b"\r\n".to_vec()].concat();
        assert!(all(Framing::Chunked, &endless).await.is_err(), "an unbounded chunk-size line");
    }
}
