//! Deterministic, parallel gzip for layers. One pinned backend (zlib-rs
//! through flate2, exact versions in Cargo.toml), fixed level, header mtime 0,
//! fixed OS byte, and fixed 1 MiB input blocks compressed independently and
//! joined pigz-style (sync flush between blocks) into one gzip member — so
//! the bytes depend only on the input, never on write chunking or core count.
#![forbid(unsafe_code)]
use flate2::{Compress, Compression, FlushCompress, Status};
use std::collections::BTreeMap;
use std::io::{self, Write};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

/// Input bytes per independently compressed block.
pub(crate) const BLOCK_SIZE: usize = 1 << 20;
/// Compression level (1 = fastest). Part of the output contract: changing it
/// changes every layer digest.
pub(crate) const LEVEL: u32 = 1;
const HEADER: [u8; 10] = [0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];

type Compressed = io::Result<(Vec<u8>, crc32fast::Hasher)>;

struct Job {
    seq: u64,
    block: Vec<u8>,
    last: bool,
}

/// A `Write` that gzips into `inner`. Full blocks go to compression threads
/// while the caller keeps producing input (the tar writer and the deflate
/// work overlap); compressed blocks are written to `inner` in input order.
pub(crate) struct ParGz<W: Write> {
    inner: W,
    current: Vec<u8>,
    crc: crc32fast::Hasher,
    total: u64,
    jobs: Option<mpsc::Sender<Job>>,
    done: mpsc::Receiver<(u64, Compressed)>,
    workers: Vec<std::thread::JoinHandle<()>>,
    /// Blocks sent, and the next one to write.
    sent: u64,
    written: u64,
    ready: BTreeMap<u64, Compressed>,
}

impl<W: Write> ParGz<W> {
    pub(crate) fn new(inner: W) -> Self {
        let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).min(8);
        let (jobs, queue) = mpsc::channel::<Job>();
        let (results, done) = mpsc::channel();
        let queue = Arc::new(Mutex::new(queue));
        let workers = (0..threads)
            .map(|_| {
                let (queue, results) = (queue.clone(), results.clone());
                std::thread::spawn(move || {
                    // One compressor per thread, reset per block: blocks stay
                    // independent without allocating the window every time.
                    let mut c = Compress::new(Compression::new(LEVEL), false);
                    loop {
                        let job = match queue.lock() {
                            Ok(q) => q.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = job else { return };
                        c.reset();
                        if results.send((job.seq, deflate_block(&mut c, &job.block, job.last))).is_err() {
                            return;
                        }
                    }
                })
            })
            .collect();
        ParGz {
            inner,
            current: Vec::with_capacity(BLOCK_SIZE),
            crc: crc32fast::Hasher::new(),
            total: 0,
            jobs: Some(jobs),
            done,
            workers,
            sent: 0,
            written: 0,
            ready: BTreeMap::new(),
        }
    }

    fn send(&mut self, block: Vec<u8>, last: bool) -> io::Result<()> {
        if self.sent == 0 {
            self.inner.write_all(&HEADER)?;
        }
        let job = Job { seq: self.sent, block, last };
        self.jobs
            .as_ref()
            .and_then(|j| j.send(job).ok())
            .ok_or_else(|| io::Error::other("compression threads are gone"))?;
        self.sent += 1;
        Ok(())
    }

    /// Writes finished blocks in order, waiting until at most `in_flight`
    /// remain unwritten.
    fn drain_to(&mut self, in_flight: u64) -> io::Result<()> {
        loop {
            while let Some(r) = self.ready.remove(&self.written) {
                let (bytes, crc) = r?;
                self.crc.combine(&crc);
                self.inner.write_all(&bytes)?;
                self.written += 1;
            }
            if self.sent - self.written <= in_flight {
                return Ok(());
            }
            let (seq, r) = self.done.recv().map_err(|_| io::Error::other("a compression thread stopped"))?;
            self.ready.insert(seq, r);
        }
    }

    /// Writes the final block and trailer; returns the inner writer.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        let cur = std::mem::take(&mut self.current);
        self.send(cur, true)?;
        self.drain_to(0)?;
        self.jobs = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
        let crc = self.crc.clone().finalize();
        self.inner.write_all(&crc.to_le_bytes())?;
        self.inner.write_all(&(self.total as u32).to_le_bytes())?;
        Ok(self.inner)
    }
}

fn deflate_block(c: &mut Compress, input: &[u8], last: bool) -> io::Result<(Vec<u8>, crc32fast::Hasher)> {
    let mut crc = crc32fast::Hasher::new();
    crc.update(input);
    // Room for the worst case (stored blocks cost 5 bytes per 64 KiB) plus a
    // wide margin, so one call consumes everything and completes the flush:
    // a flush is only known complete when the call returns with space left.
    let mut out = Vec::with_capacity(input.len() + input.len() / 8 + (64 << 10));
    let flush = if last { FlushCompress::Finish } else { FlushCompress::Sync };
    loop {
        let consumed = c.total_in() as usize;
        let status = c.compress_vec(&input[consumed..], &mut out, flush).map_err(io::Error::other)?;
        let done_in = c.total_in() as usize == input.len();
        let room = out.capacity() - out.len();
        match status {
            Status::StreamEnd => break,
            Status::Ok | Status::BufError if !last && done_in && room >= (32 << 10) => break,
            _ => out.reserve(out.capacity()),
        }
    }
    Ok((out, crc))
}

impl<W: Write> Write for ParGz<W> {
    fn write(&mut self, mut buf: &[u8]) -> io::Result<usize> {
        let n = buf.len();
        self.total += n as u64;
        while !buf.is_empty() {
            let take = (BLOCK_SIZE - self.current.len()).min(buf.len());
            self.current.extend_from_slice(&buf[..take]);
            buf = &buf[take..];
            if self.current.len() == BLOCK_SIZE {
                let full = std::mem::replace(&mut self.current, Vec::with_capacity(BLOCK_SIZE));
                self.send(full, false)?;
                // Two blocks per thread in flight keep every thread busy.
                self.drain_to(self.workers.len() as u64 * 2)?;
            }
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn sample(len: usize) -> Vec<u8> {
        // Deterministic, partly compressible data.
        let mut x: u32 = 12345;
        (0..len)
            .map(|i| {
                x = x.wrapping_mul(1103515245).wrapping_add(12345);
                if i % 7 == 0 {
                    (x >> 16) as u8
                } else {
                    b"moat layer "[i % 11]
                }
            })
            .collect()
    }

    fn gz(data: &[u8], chunk: usize) -> Vec<u8> {
        let mut g = ParGz::new(Vec::new());
        for c in data.chunks(chunk.max(1)) {
            g.write_all(c).unwrap();
        }
        g.finish().unwrap()
    }

    #[test]
    fn incompressible_input_round_trips() {
        let mut x: u64 = 99;
        let data: Vec<u8> = (0..BLOCK_SIZE * 9 + 5)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let a = gz(&data, 1 << 20);
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&a[..]).read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
    }

    #[test]
    fn round_trips_and_ignores_write_chunking() {
        let data = sample(BLOCK_SIZE * 3 + 777);
        let a = gz(&data, 1 << 16);
        let b = gz(&data, 4093);
        assert_eq!(a, b);
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&a[..]).read_to_end(&mut out).unwrap();
        assert_eq!(out, data);
        let empty = gz(&[], 1);
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(&empty[..]).read_to_end(&mut out).unwrap();
        assert!(out.is_empty());
    }

    /// Golden bytes: if this changes, every layer digest moat has ever
    /// produced changes. Update only with a deliberate format bump.
    #[test]
    fn golden_bytes() {
        let data = sample(BLOCK_SIZE * 2 + 12345);
        let out = gz(&data, 8192);
        assert_eq!(crate::Digest::of(&out).to_string(), GOLDEN);
    }
    const GOLDEN: &str = "sha256:b3f5d4c54409a48a000860b5c901c26d73aa35cbad99d24454bd8909571e6a6d";
}
