//! How moat's processes log (the CLI, a supervisor, the shim's children):
//! one filter and one writer for all. Guards the operator's logs against
//! secrets (every line goes through the redactor), against forged lines
//! (a newline in a field a sandbox chose never starts a line of its own:
//! `sandbox::logs::OneLine`), and a supervisor against dying halfway
//! through a clean-up because its log output closed.
#![forbid(unsafe_code)]
use crate::sandbox::logs::OneLine;
use crate::secrets::redact::RedactingWriter;
use std::io::Write;
use std::sync::Arc;

/// Starts logging to `out` (a file or FIFO), or to stderr when None.
/// `quiet`: errors only. `RUST_LOG` overrides the filter.
pub fn init(quiet: bool, out: Option<std::fs::File>) {
    // libcontainer warns about every absent cgroup v1 controller on hybrid
    // hosts (FIELD-NOTES.md); only its errors are worth the user's attention.
    let default = if quiet { "error" } else { "warn,libcontainer=error,libcgroups=error,rustls_platform_verifier=off" };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let out = out.map(Arc::new);
    // Colours only on a terminal: not in a log or a pipe.
    let ansi = out.is_none() && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let writer = move || RedactingWriter::new(OneLine(Lossy(out.clone())));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi).with_writer(writer).try_init();
}

/// A log output that drops a line it cannot write. tracing-subscriber
/// reports a failed write with `eprintln!`, which panics on a closed stderr
/// (`moat run ... 2>&1 | head`): that would stop a supervisor or launcher
/// halfway through removing its sandbox.
struct Lossy(Option<Arc<std::fs::File>>);

impl Write for Lossy {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = match &self.0 {
            Some(f) => (&**f).write_all(buf),
            None => std::io::stderr().write_all(buf),
        };
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = match &self.0 {
            Some(f) => (&**f).flush(),
            None => std::io::stderr().flush(),
        };
        Ok(())
    }
}
