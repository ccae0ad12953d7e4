//! `moat term`: the operator's live console (moat-console). Parses its
//! arguments and hands over; the console owns the screen and the feeds.
use anyhow::Result;
use clap::Args;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Args)]
pub struct TermArgs {
    /// Only this sandbox (default: every sandbox on the host).
    pub name: Option<String>,
    /// Where the scope picker's "also write into a policy file" writes
    /// (created over the baseline if missing; see `moat approve --write`).
    #[arg(long, value_name = "FILE")]
    pub policy_file: Option<PathBuf>,
    /// No colours (also when NO_COLOR is set).
    #[arg(long)]
    pub no_color: bool,
}

pub fn term(a: TermArgs) -> Result<ExitCode> {
    let no_color_env = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let opts = moat_console::Options { only: a.name, policy_file: a.policy_file, color: !(a.no_color || no_color_env) };
    moat_console::run(opts)?;
    Ok(ExitCode::SUCCESS)
}
