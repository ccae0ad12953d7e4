//! What checking a caller's code costs (gateway/integrity.rs): reading and
//! judging the environment and executable mappings of a process with MAPPINGS
//! executable file mappings (default 500: a large program with many
//! libraries), ITER times; prints p50/p99/max in microseconds. The process
//! is a python3 that maps its own libc MAPPINGS times with PROT_EXEC (python
//! keeps this example free of unsafe code). Run by tests/bench/gateway.sh;
//! the issue's bound is 1 ms p99 for 500 mappings.
//!   cargo run --release -p moat-supervisor --example identify_cost [MAPPINGS] [ITER]
use moat_supervisor::gateway::integrity::{Integrity, Mounts};
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

const CHILD: &str = r#"
import mmap, sys, ctypes.util
n = int(sys.argv[1])
lib = "/usr/lib/x86_64-linux-gnu/libc.so.6"
import os
if not os.path.exists(lib):
    lib = "/lib/aarch64-linux-gnu/libc.so.6"
f = open(lib, "rb")
maps = [mmap.mmap(f.fileno(), 4096, prot=mmap.PROT_READ | mmap.PROT_EXEC, flags=mmap.MAP_PRIVATE) for _ in range(n)]
print("ready", flush=True)
sys.stdin.read()
"#;

fn main() {
    let mut args = std::env::args().skip(1);
    let mappings: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(500);
    let iter: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(2000);
    let mut child = Command::new("python3")
        .args(["-c", CHILD, &mappings.to_string()])
        // cargo run sets it; a tainted child would stop the check early.
        .env_remove("LD_LIBRARY_PATH")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("child ready");
    let pid = child.id() as i32;
    let exe = std::fs::read_link(format!("/proc/{pid}/exe")).expect("exe").to_string_lossy().into_owned();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).expect("maps");
    let exec = maps.lines().filter(|l| l.split(' ').nth(1).is_some_and(|p| p.as_bytes().get(2) == Some(&b'x'))).count();
    let integrity = Integrity::builtin();
    // The measured path is the whole check: the child must pass it.
    // A fresh Mounts per check, as per identification in the gateway.
    let check = || integrity.check(Path::new("/proc"), pid, &exe, &Mounts::default());
    let first = check();
    assert!(first.taint.is_none(), "the child was refused, so the check stopped early: {first:?}");
    let mut times = Vec::with_capacity(iter);
    for _ in 0..iter {
        let t = Instant::now();
        let f = check();
        times.push(t.elapsed().as_secs_f64() * 1e6);
        let _ = std::hint::black_box(f);
    }
    let _ = child.kill();
    let _ = child.wait();
    times.sort_by(f64::total_cmp);
    let q = |p: f64| times[((times.len() as f64 - 1.0) * p).round() as usize];
    println!(
        "identify_cost: {} mappings ({exec} executable), {iter} checks: p50 {:.0} us, p99 {:.0} us, max {:.0} us",
        maps.lines().count(),
        q(0.5),
        q(0.99),
        q(1.0)
    );
}
