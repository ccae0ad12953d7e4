//! moat-testimage STORE NAME PROBE_BINARY [BUSYBOX [PAD_MIB]]: writes the
//! sandbox tests' image into a store (used by tests/bench/run.sh).
use std::path::Path;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() < 4 {
        eprintln!("usage: moat-testimage STORE NAME PROBE_BINARY [BUSYBOX]");
        std::process::exit(2);
    }
    let busybox = args.get(4).map(String::as_str).unwrap_or("/bin/busybox");
    let pad = args.get(5).and_then(|p| p.parse().ok()).unwrap_or(0);
    match moat_probe::testimage::build(Path::new(&args[1]), &args[2], Path::new(&args[3]), Path::new(busybox), pad) {
        Ok(r) => println!("{r}"),
        Err(e) => {
            eprintln!("moat-testimage: {e}");
            std::process::exit(1);
        }
    }
}
