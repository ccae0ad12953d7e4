//! Fuzz target: HTTP/1 heads as the egress gateway reads them
//! (`gateway::http1::read_request_head` / `read_response_head`, then the
//! body framing decision). Threat: request smuggling and parser
//! differentials: a head that panics or hangs the gateway, or one it
//! accepts and then forwards in a form it would not accept itself.
//!
//! Input: byte 0 chooses request (even) or response (odd), bits 1-4 the
//! size of each read (1-16 bytes, or whole when 0, to cross buffer
//! boundaries) and bits 5-7 the head limit; the rest is the stream.
//! Oracle beyond "no panic": an accepted HTTP/1.1 head, written out again
//! as the gateway forwards it, reads back to the same fields and framing.
#![no_main]
use libfuzzer_sys::fuzz_target;
use moat_supervisor::gateway::http1::{
    read_request_head, read_response_head, request_framing, response_framing, write_request_head, write_response_head,
};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, BufReader, ReadBuf};

/// Hands out at most `step` bytes per read.
struct Trickle<'a> {
    data: &'a [u8],
    step: usize,
}

impl AsyncRead for Trickle<'_> {
    fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let n = self.data.len().min(self.step).min(buf.remaining());
        let (now, rest) = self.data.split_at(n);
        buf.put_slice(now);
        self.data = rest;
        Poll::Ready(Ok(()))
    }
}

fn rt() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| tokio::runtime::Builder::new_current_thread().build().expect("runtime"))
}

fn reader(data: &[u8], step: usize) -> BufReader<Trickle<'_>> {
    BufReader::with_capacity(step.max(1), Trickle { data, step })
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, stream)) = data.split_first() else { return };
    let response = ctl & 1 == 1;
    let step = match (ctl >> 1) & 0x0f {
        0 => stream.len().max(1),
        s => s as usize,
    };
    let limit = [64usize, 256, 1024, 4096, 8192, 16384, 65536, 1 << 20][(ctl >> 5) as usize];
    rt().block_on(async {
        if response {
            let Ok(Some(h)) = read_response_head(&mut reader(stream, step), limit).await else { return };
            let framing = response_framing("GET", &h);
            if h.version != 1 {
                return;
            }
            let out = write_response_head(&h);
            let back = read_response_head(&mut reader(&out, out.len()), usize::MAX)
                .await
                .unwrap_or_else(|e| panic!("written response head refused: {e}: {:?}", String::from_utf8_lossy(&out)))
                .expect("a head");
            assert_eq!((back.status, &back.headers), (h.status, &h.headers), "response head changes when written");
            assert_eq!(
                format!("{:?}", response_framing("GET", &back)),
                format!("{framing:?}"),
                "framing changes when written"
            );
        } else {
            let Ok(Some(h)) = read_request_head(&mut reader(stream, step), limit).await else { return };
            let framing = request_framing(&h);
            if h.version != 1 {
                return;
            }
            let out = write_request_head(&h, &h.target);
            let back = read_request_head(&mut reader(&out, out.len()), usize::MAX)
                .await
                .unwrap_or_else(|e| panic!("written request head refused: {e}: {:?}", String::from_utf8_lossy(&out)))
                .expect("a head");
            assert_eq!(
                (&back.method, &back.target, &back.headers),
                (&h.method, &h.target, &h.headers),
                "request head changes when written"
            );
            assert_eq!(format!("{:?}", request_framing(&back)), format!("{framing:?}"), "framing changes when written");
        }
    });
});
