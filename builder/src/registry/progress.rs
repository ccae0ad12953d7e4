//! Per-blob progress bars on stderr (only when stderr is a terminal and the
//! caller asked for them; otherwise hidden bars cost nothing).
#![forbid(unsafe_code)]
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::io::IsTerminal;

pub(crate) struct Progress {
    multi: Option<MultiProgress>,
}

impl Progress {
    pub(super) fn new(wanted: bool) -> Progress {
        let on = wanted && std::io::stderr().is_terminal();
        Progress { multi: on.then(MultiProgress::new) }
    }

    /// A bar for one blob of `size` bytes, labelled with a verb and the short digest.
    pub(super) fn bar(&self, label: String, size: u64) -> ProgressBar {
        let Some(m) = &self.multi else { return ProgressBar::hidden() };
        let style = ProgressStyle::with_template("{prefix:>24} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> ");
        m.add(ProgressBar::new(size).with_style(style).with_prefix(label))
    }
}
