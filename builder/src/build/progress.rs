//! Build progress on stderr (only when asked and stderr is a terminal; no
//! threat: it never reaches the image or the lock).
#![forbid(unsafe_code)]
use std::io;

/// Progress on stderr while building (only when asked and stderr is a terminal).
pub(super) struct Progress(Option<indicatif::ProgressBar>);
impl Progress {
    pub(super) fn new(enabled: bool, name: &str) -> Progress {
        use std::io::IsTerminal;
        if !enabled || !io::stderr().is_terminal() {
            return Progress(None);
        }
        let pb = indicatif::ProgressBar::new_spinner();
        pb.set_prefix(name.to_string());
        pb.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {prefix}: {msg} [{elapsed}]")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        pb.enable_steady_tick(std::time::Duration::from_millis(120));
        Progress(Some(pb))
    }
    pub(super) fn step(&self, msg: &str) {
        if let Some(pb) = &self.0 {
            pb.set_message(msg.to_string());
        }
    }
    pub(super) fn done(&self) {
        if let Some(pb) = &self.0 {
            pb.finish_and_clear();
        }
    }
}
