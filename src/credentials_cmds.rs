//! `moat credentials set|ls|rm`: provider credentials kept on the host, in
//! `$MOAT_HOME/credentials` (`moat_supervisor::secrets::credentials`). Guards against
//! a secret showing up where other users or logs can see it: it is read from
//! stdin (without echo on a terminal) or from an environment variable, never
//! from argv (readable in /proc), and no command prints a value. Every command
//! first checks and repairs the store's permissions, warning about each repair.
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use moat_supervisor::secrets::credentials::{self, CredentialError, Store, MAX_SECRET};
use std::io::{BufRead, IsTerminal, Read, Write};
use std::process::ExitCode;

#[derive(Args)]
pub struct CredentialsArgs {
    #[command(subcommand)]
    pub cmd: CredentialsCmd,
}

#[derive(Subcommand)]
pub enum CredentialsCmd {
    /// Store a secret under NAME, read from stdin (hidden on a terminal) or --from-env; never from an argument.
    Set {
        /// 1-64 of a-z A-Z 0-9 _ . - (not starting with .).
        name: String,
        /// Read the secret from this environment variable instead of stdin.
        #[arg(long, value_name = "VAR")]
        from_env: Option<String>,
    },
    /// List stored credentials and the sandboxes using them (never their values).
    Ls {
        #[arg(long)]
        json: bool,
    },
    /// Remove a stored credential.
    Rm { name: String },
}

pub fn credentials(a: CredentialsArgs) -> Result<ExitCode> {
    let store = Store::default_location();
    let warnings =
        store.check_and_repair().with_context(|| format!("checking the credential store {}", store.dir().display()))?;
    for w in warnings {
        say!("moat: warning: {w}");
    }
    match a.cmd {
        CredentialsCmd::Set { name, from_env } => set(&store, &name, from_env.as_deref()),
        CredentialsCmd::Ls { json } => ls(&store, json),
        CredentialsCmd::Rm { name } => rm(&store, &name),
    }
}

fn set(store: &Store, name: &str, from_env: Option<&str>) -> Result<ExitCode> {
    // Check the name before asking for a secret that would then be refused.
    credentials::check_name(name)?;
    let (mut secret, source) = match from_env {
        Some(var) => {
            let v = std::env::var_os(var).with_context(|| format!("environment variable {var} is not set"))?;
            (std::os::unix::ffi::OsStringExt::into_vec(v), format!("environment variable {var}"))
        }
        None => (read_stdin(name)?, "stdin".to_string()),
    };
    let result = store.set(name, &secret);
    credentials::wipe(&mut secret);
    match result {
        Err(CredentialError::Empty) if from_env.is_some() => bail!("{source} is empty: no secret to store"),
        Err(CredentialError::Empty) => {
            bail!("no secret on stdin: {}", PIPE_HINT.replace("NAME", name))
        }
        r => r.with_context(|| format!("storing credential {name} from {source}"))?,
    }
    println!("stored credential {name}");
    Ok(ExitCode::SUCCESS)
}

const PIPE_HINT: &str = "pipe it in (`printf %s \"$KEY\" | moat credentials set NAME`) or use --from-env VAR";

/// The secret from stdin: one line read without echo on a terminal, else
/// everything up to EOF (bounded).
fn read_stdin(name: &str) -> Result<Vec<u8>> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        let _echo_off = crate::echo_off::EchoOff::new(&stdin, PIPE_HINT)?;
        eprint!("secret for {name} (input hidden): ");
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        // ECHONL (set by EchoOff) shows the newline that ends the hidden input.
        stdin.lock().read_line(&mut line).context("reading the secret from the terminal")?;
        return Ok(line.into_bytes());
    }
    let mut buf = Vec::new();
    // Room for the limit plus a trailing "\r\n", and one byte to notice more.
    stdin.lock().take(MAX_SECRET as u64 + 3).read_to_end(&mut buf).context("reading the secret from stdin")?;
    if buf.len() > MAX_SECRET + 2 {
        credentials::wipe(&mut buf);
        bail!("the secret on stdin is larger than {MAX_SECRET} bytes");
    }
    Ok(buf)
}

fn ls(store: &Store, json: bool) -> Result<ExitCode> {
    let list = store.list().with_context(|| format!("listing {}", store.dir().display()))?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(ExitCode::SUCCESS);
    }
    if list.is_empty() {
        say!("no credentials stored (add one with `moat credentials set NAME`)");
        return Ok(ExitCode::SUCCESS);
    }
    let width = list.iter().map(|c| c.name.len()).max().unwrap_or(0).max("NAME".len());
    println!("{:width$}  {:20}  USED BY", "NAME", "MODIFIED");
    for c in &list {
        let used = if c.used_by.is_empty() { "-".to_string() } else { c.used_by.join(",") };
        println!("{:width$}  {:20}  {used}", c.name, c.modified);
    }
    Ok(ExitCode::SUCCESS)
}

fn rm(store: &Store, name: &str) -> Result<ExitCode> {
    let users = store.used_by(name);
    store.remove(name).with_context(|| format!("removing credential {name}"))?;
    println!("removed credential {name}");
    if !users.is_empty() {
        say!(
            "moat: warning: sandbox(es) {} still name credential {name}; \
             their inference requests fail until it is set again",
            users.join(", ")
        );
    }
    Ok(ExitCode::SUCCESS)
}
