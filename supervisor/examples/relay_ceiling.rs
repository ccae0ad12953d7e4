//! The ceiling of any user-space relay on this machine: a bulk TCP download
//! over loopback, direct and through the gateway's own L4 relay
//! (`gateway::splice::relay`, the code every allowed CONNECT tunnel runs,
//! here without sandbox, policy or identity checks), medians and their
//! ratio. `tests/bench/gateway.sh` prints it next to the end-to-end figures,
//! so the L4 throughput target can be read against what a relay can do at
//! all: every relayed byte crosses a second TCP connection.
//!
//! Usage: relay_ceiling [MIB [RUNS]]   (default: 1024 MiB, 5 runs)

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::ExitCode;
use std::time::Instant;

fn main() -> ExitCode {
    let arg = |i: usize, default: u64| std::env::args().nth(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let (mib, runs) = (arg(1, 1024).max(1), arg(2, 5).max(1));
    match measure(mib << 20, runs) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("relay_ceiling: {e}");
            ExitCode::FAILURE
        }
    }
}

fn measure(bytes: u64, runs: u64) -> std::io::Result<()> {
    let upstream = serve(bytes)?;
    let relay = relay_to(upstream)?;
    let (mut direct, mut relayed) = (Vec::new(), Vec::new());
    for _ in 0..runs {
        direct.push(download(upstream, bytes)?);
        relayed.push(download(relay, bytes)?);
    }
    let (d, r) = (median(&mut direct), median(&mut relayed));
    println!("loopback bulk {} MiB, median of {runs} (MiB/s):", bytes >> 20);
    println!("  direct                    {d:.1}");
    println!("  through the gateway relay {r:.1}   ({:.2}x direct)", r / d);
    Ok(())
}

/// An upstream that sends `bytes` to each client after its first byte.
fn serve(bytes: u64) -> std::io::Result<SocketAddr> {
    let l = TcpListener::bind("127.0.0.1:0")?;
    let addr = l.local_addr()?;
    std::thread::spawn(move || {
        let buf = vec![0x5au8; 256 * 1024];
        for mut c in l.incoming().flatten() {
            let mut go = [0u8; 1];
            if c.read_exact(&mut go).is_err() {
                continue;
            }
            let mut left = bytes;
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                if c.write_all(&buf[..n]).is_err() {
                    break;
                }
                left -= n as u64;
            }
        }
    });
    Ok(addr)
}

/// A listener whose every connection is relayed to `upstream` by the
/// gateway's relay, on a runtime shaped like the gateway's.
fn relay_to(upstream: SocketAddr) -> std::io::Result<SocketAddr> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let l = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let addr = l.local_addr()?;
    std::thread::spawn(move || {
        rt.block_on(async move {
            while let Ok((client, _)) = l.accept().await {
                tokio::spawn(async move {
                    if let Ok(up) = tokio::net::TcpStream::connect(upstream).await {
                        let _ = moat_supervisor::gateway::splice::relay(&client, &up).await;
                    }
                });
            }
        })
    });
    Ok(addr)
}

/// Downloads from `addr`; returns MiB/s. Fails unless exactly `bytes` arrive.
fn download(addr: SocketAddr, bytes: u64) -> std::io::Result<f64> {
    let mut c = TcpStream::connect(addr)?;
    let start = Instant::now();
    c.write_all(b"g")?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut got = 0u64;
    while got < bytes {
        match c.read(&mut buf)? {
            0 => break,
            n => got += n as u64,
        }
    }
    if got != bytes {
        return Err(std::io::Error::other(format!("{addr}: {got} of {bytes} bytes arrived")));
    }
    Ok(bytes as f64 / 1048576.0 / start.elapsed().as_secs_f64())
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
