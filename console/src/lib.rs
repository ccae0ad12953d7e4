//! `moat term`: the operator's live console. Every sandbox on the host (or
//! one), its CPU and memory, its egress decisions as they happen, its
//! pending approvals (approved with a scope, or denied, from the keyboard)
//! and its policy revision with the diff from the one before. Fed by the
//! supervisors' control sockets (`feed`), drawn at most ten times a second
//! (`view`). Guards against the console becoming a way to stall or lose
//! what it shows: the supervisors never wait for it, the screen drops
//! frames and not records, and the terminal is restored on every exit.
#![forbid(unsafe_code)]
pub mod act;
pub mod feed;
pub mod model;
pub mod ui;
pub mod view;

use ratatui::crossterm::event::{self, Event, KeyEventKind};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("moat term needs a terminal on stdin and stdout")]
    NoTerminal,
    #[error("no sandbox named {0:?} (see `moat ls`)")]
    Unknown(String),
    #[error("the terminal")]
    Terminal(#[from] std::io::Error),
    #[error(transparent)]
    State(#[from] moat_supervisor::sandbox::state::StateError),
}

/// What `moat term` was asked.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Only this sandbox.
    pub only: Option<String>,
    /// Where an approval's rule is written when the operator asks.
    pub policy_file: Option<PathBuf>,
    /// Colours (off with `NO_COLOR` or `--no-color`).
    pub color: bool,
}

/// The least time between two frames.
const FRAME: Duration = Duration::from_millis(100);
/// How long the screen waits for a key before looking at the feeds.
const TICK: Duration = Duration::from_millis(25);

/// Runs the console until the operator quits.
pub fn run(opts: Options) -> Result<(), ConsoleError> {
    use std::io::IsTerminal;
    if !std::io::stdin().is_terminal() || !std::io::stdout().is_terminal() {
        return Err(ConsoleError::NoTerminal);
    }
    if let Some(name) = &opts.only {
        let paths = moat_supervisor::sandbox::state::Paths::new(name)?;
        if !paths.state_file().exists() {
            return Err(ConsoleError::Unknown(name.clone()));
        }
    }
    let board = Arc::new(feed::Board::default());
    let stop = Arc::new(AtomicBool::new(false));
    feed::start(board.clone(), opts.only.clone(), stop.clone())?;
    let mut terminal = match ratatui::try_init() {
        Ok(t) => t,
        Err(e) => {
            // Raw mode may be on already: leave the terminal as it was.
            let _ = ratatui::try_restore();
            stop.store(true, Ordering::Relaxed);
            return Err(e.into());
        }
    };
    let result = screen(&mut terminal, &opts, &board);
    stop.store(true, Ordering::Relaxed);
    let restored = ratatui::try_restore();
    result?;
    Ok(restored?)
}

fn screen(terminal: &mut ratatui::DefaultTerminal, opts: &Options, board: &Arc<feed::Board>) -> std::io::Result<()> {
    let mut u = ui::Ui::new(opts.policy_file.clone());
    let theme = view::Theme { color: opts.color };
    let mut drawn: Option<Instant> = None;
    let mut dirty = true;
    loop {
        dirty |= board.take_dirty();
        if dirty && drawn.is_none_or(|d| d.elapsed() >= FRAME) {
            // The model is locked while the frame is drawn into memory, not
            // while the terminal is written (draw's flush comes after).
            terminal.draw(|f| view::render(f, &board.lock(), &u, theme))?;
            drawn = Some(Instant::now());
            dirty = false;
        }
        if !event::poll(TICK)? {
            continue;
        }
        match event::read()? {
            Event::Key(k) if k.kind != KeyEventKind::Release => {
                let effect = u.key(k, &board.lock());
                match effect {
                    Some(ui::Effect::Quit) => return Ok(()),
                    Some(ui::Effect::Act(a)) => {
                        board.apply(model::Update::Done("working...".into()));
                        act::perform(a, board.clone());
                    }
                    None => {}
                }
                dirty = true;
                // A key is answered at once, not at the next frame.
                drawn = None;
            }
            Event::Resize(..) => {
                dirty = true;
                drawn = None;
            }
            _ => {}
        }
    }
}
