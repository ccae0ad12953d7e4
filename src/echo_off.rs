//! Terminal echo off while a secret is typed (credentials, key passwords),
//! restored on drop, also on error. Guards against a secret shown on screen.
use anyhow::{Context, Result};

pub(crate) struct EchoOff {
    saved: nix::sys::termios::Termios,
}

impl EchoOff {
    /// Turns echo off on `stdin`; `hint` says what to do where that fails.
    /// ECHONL still shows the newline that ends the hidden input.
    pub(crate) fn new(stdin: &std::io::Stdin, hint: &str) -> Result<EchoOff> {
        use nix::sys::termios::{tcgetattr, tcsetattr, LocalFlags, SetArg};
        let saved = tcgetattr(stdin).with_context(|| format!("cannot turn off echo on this terminal: {hint}"))?;
        let mut quiet = saved.clone();
        quiet.local_flags.remove(LocalFlags::ECHO);
        quiet.local_flags.insert(LocalFlags::ECHONL);
        tcsetattr(stdin, SetArg::TCSAFLUSH, &quiet).context("turning off terminal echo")?;
        Ok(EchoOff { saved })
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        let _ = nix::sys::termios::tcsetattr(std::io::stdin(), nix::sys::termios::SetArg::TCSANOW, &self.saved);
    }
}
