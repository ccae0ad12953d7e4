//! Network policy commands: `policy check|import|show|set|add-preset|
//! remove-preset|presets|suggest`, `approvals`, `approve`, `deny` and `events`.
//! Live changes go through the sandbox's control socket, so the running
//! gateway validates them and keeps the old policy when they are invalid.
//! Text that the sandbox can shape (binary paths, hosts, paths, reasons) is
//! printed through `visible`, so the operator sees what is true.
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use moat_supervisor::gateway::control::{self, Request};
use moat_supervisor::gateway::events::Event;
use moat_supervisor::gateway::scope::Scope;
use moat_supervisor::policy::append;
use moat_supervisor::policy::network::Network;
use moat_supervisor::policy::presets;
use moat_supervisor::policy::schema::NetPolicy;
use moat_supervisor::sandbox::state::{self, Paths, Status};
use moat_supervisor::secrets::redact::redact;
use moat_supervisor::visible;
use moat_supervisor::Policy;
use serde_json::Value;
use std::io::{BufRead, BufReader, Read, Seek, SeekFrom};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Args)]
pub struct PolicyArgs {
    #[command(subcommand)]
    cmd: PolicyCmd,
}

#[derive(Subcommand)]
enum PolicyCmd {
    /// Validate a policy file (exit 1 with file:line:column on an error).
    Check { file: PathBuf },
    /// Convert an OpenShell/NemoClaw YAML policy to moat's TOML network rules.
    Import {
        file: PathBuf,
        /// Write here instead of standard output.
        #[arg(short, long)]
        output: Option<PathBuf>,
    },
    /// List the presets and profiles shipped with moat, with their risks.
    Presets,
    /// Print the network policy revision a running sandbox enforces.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Replace a running sandbox's network policy (filesystem and process sections cannot change).
    Set { name: String, file: PathBuf },
    /// Add a preset to a running sandbox's network policy.
    AddPreset { name: String, preset: String },
    /// Remove a preset from a running sandbox's network policy.
    RemovePreset { name: String, preset: String },
    /// Propose rules for what a sandbox's audit log shows refused (or
    /// relayed by endpoints in audit mode): a whole policy file to review,
    /// check and `moat policy set`.
    Suggest {
        name: String,
        /// Only records from this time (RFC 3339) or this long ago (30s, 10m, 2h, 7d).
        #[arg(long)]
        since: Option<String>,
        /// Write the policy file here (atomically) instead of standard output.
        #[arg(long)]
        write: Option<PathBuf>,
        /// Put this CIDR in allowed_ips of every suggested endpoint (opts a
        /// private destination in, as `moat approve --allowed-ip` does).
        #[arg(long = "allowed-ip", value_name = "CIDR")]
        allowed_ips: Vec<String>,
    },
}

#[derive(Args)]
pub struct ApprovalsArgs {
    pub name: String,
    #[arg(long)]
    pub json: bool,
}

#[derive(Args)]
pub struct DecideArgs {
    pub name: String,
    /// The approval id from the refusal or `moat approvals`.
    pub id: String,
}

#[derive(Args)]
pub struct ApproveArgs {
    pub name: String,
    /// The approval id from the refusal or `moat approvals`.
    pub id: String,
    /// Opt a private destination in (CIDR); without it private, CGNAT and
    /// reserved addresses stay refused even for an approved name.
    #[arg(long = "allowed-ip", value_name = "CIDR")]
    pub allowed_ips: Vec<String>,
    /// How much it opens: auto (as the policy treats that host: inspected
    /// if a rule inspects it, else L4), exact (host:port at L4), read-only,
    /// read-write or full (every request inspected), request (one
    /// --method and --path glob).
    #[arg(long, default_value = "auto")]
    pub scope: String,
    /// With --scope request: the one method allowed.
    #[arg(long)]
    pub method: Option<String>,
    /// With --scope request: the one path glob allowed.
    #[arg(long)]
    pub path: Option<String>,
    /// Also add the rule to this policy file (created over the baseline if
    /// missing), so the next sandbox run with it has it too.
    #[arg(long, value_name = "FILE")]
    pub write: Option<std::path::PathBuf>,
}

#[derive(Args)]
pub struct EventsArgs {
    pub name: String,
    /// Keep printing new events until interrupted.
    #[arg(short, long)]
    pub follow: bool,
    /// Print the JSON lines as recorded.
    #[arg(long)]
    pub json: bool,
}

/// Adds presets and profiles' presets to a policy (deduplicated, validated).
pub fn with_presets(mut policy: Policy, presets: &[String], profiles: &[String]) -> Result<Policy> {
    policy.network.add_presets(presets, profiles)?;
    Ok(policy)
}

fn socket(name: &str) -> Result<PathBuf> {
    let paths = Paths::new(name)?;
    let rec = state::load(&paths)?;
    if rec.live_status() != Status::Running {
        bail!("sandbox {name} is not running: its network policy can only change while it runs");
    }
    Ok(paths.control_socket())
}

fn call(name: &str, req: &Request) -> Result<Value> {
    Ok(control::call(&socket(name)?, req)?)
}

fn current_network(name: &str) -> Result<Network> {
    let v = call(name, &Request::Status)?;
    serde_json::from_value(v["network"].clone()).context("control socket: network section")
}

fn set_network(name: &str, network: Network, why: &str) -> Result<ExitCode> {
    let v = call(name, &Request::SetNetwork { network: Box::new(network), why: why.into() })?;
    let sha = visible::field(v["sha256"].as_str().unwrap_or("")).into_owned();
    println!("{name}: network policy revision {} (sha256 {sha})", v["revision"]);
    Ok(ExitCode::SUCCESS)
}

pub fn policy(a: PolicyArgs) -> Result<ExitCode> {
    match a.cmd {
        PolicyCmd::Check { file } => {
            let layered = moat_supervisor::policy::extends::load(&file)?;
            let p = layered.policy;
            let rules = p.network.effective()?;
            println!(
                "{}: valid (network: {} rule sets, presets: {})",
                file.display(),
                rules.len(),
                if p.network.presets.is_empty() { "none".into() } else { p.network.presets.join(", ") }
            );
            // What the sections it does not name come from.
            let mut chain: Vec<String> = layered.files.iter().skip(1).map(|f| f.display().to_string()).collect();
            chain.push("baseline".into());
            println!("extends: {}", visible::field(&chain.join(" -> ")));
            for w in moat_supervisor::policy::lint::lint(&rules) {
                println!("warning: {}", visible::lines(&w));
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCmd::Import { file, output } => {
            // Bounded and UTF-8 checked with the error placed, before the YAML bounds.
            let text = moat_builder::textfile::read(&file, moat_supervisor::yaml::MAX_BYTES as u64)?;
            let imported = moat_supervisor::policy::import::import_yaml(&text, &file.display().to_string())?;
            for w in &imported.warnings {
                say!("moat: not carried over: {}", visible::lines(w));
            }
            let toml = moat_supervisor::policy::import::to_toml(&imported);
            match output {
                Some(o) => moat_supervisor::sandbox::state::write_atomic(&o, toml.as_bytes())?,
                None => print!("{toml}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCmd::Presets => {
            for (name, _) in presets::PRESETS {
                let p = presets::preset(name)?;
                println!("{name:<16} {}\n{:<16} risk: {}", p.description, "", p.risk.trim());
            }
            for (name, _) in presets::PROFILES {
                let p = presets::profile(name)?;
                println!("profile {name:<16} [{}] {}", p.presets.join(", "), p.description);
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCmd::Show { name, json } => {
            let v = call(&name, &Request::Status)?;
            if json {
                println!("{}", visible::json(&v.to_string()));
            } else {
                let network: Network = serde_json::from_value(v["network"].clone())?;
                println!("# revision {} sha256 {}", v["revision"], visible::field(v["sha256"].as_str().unwrap_or("")));
                print!("{}", visible::lines(&toml::to_string(&Wrap { network })?));
            }
            Ok(ExitCode::SUCCESS)
        }
        PolicyCmd::Set { name, file } => {
            let new = moat_supervisor::policy::extends::load(&file)?;
            let paths = Paths::new(&name)?;
            let running: Policy = serde_json::from_slice(
                &std::fs::read(paths.policy_file()).with_context(|| paths.policy_file().display().to_string())?,
            )?;
            // Only what the files name is compared: a section they leave to
            // the baseline keeps the running sandbox's value.
            let fixed = new.fixed_changes(&running);
            if !fixed.is_empty() {
                bail!(
                    "{}: {} cannot change on a live sandbox (filesystem, landlock and process are enforced \
                     by the kernel from creation, supervisor and trust apply at start); recreate the sandbox \
                     to change them",
                    file.display(),
                    fixed.join(", ")
                );
            }
            let mut network = new.policy.network;
            network.gateway_port = running.network.gateway_port;
            set_network(&name, network, &format!("moat policy set {}", file.display()))
        }
        PolicyCmd::AddPreset { name, preset } => {
            presets::preset(&preset)?;
            let mut n = current_network(&name)?;
            if n.presets.contains(&preset) {
                bail!("sandbox {name} already has preset {preset}");
            }
            n.presets.push(preset.clone());
            set_network(&name, n, &format!("moat policy add-preset {preset}"))
        }
        PolicyCmd::RemovePreset { name, preset } => {
            let mut n = current_network(&name)?;
            if !n.presets.contains(&preset) {
                bail!("sandbox {name} has no preset {preset} (it has: {})", n.presets.join(", "));
            }
            n.presets.retain(|p| *p != preset);
            set_network(&name, n, &format!("moat policy remove-preset {preset}"))
        }
        PolicyCmd::Suggest { name, since, write, allowed_ips } => {
            suggest(&name, since.as_deref(), write.as_deref(), &allowed_ips)
        }
    }
}

#[derive(serde::Serialize)]
struct Wrap {
    network: Network,
}

pub fn approvals(a: ApprovalsArgs) -> Result<ExitCode> {
    let v = call(&a.name, &Request::Approvals)?;
    if a.json {
        println!("{}", visible::json(&v["pending"].to_string()));
        return Ok(ExitCode::SUCCESS);
    }
    let text = |p: &Value, k: &str| visible::field(p[k].as_str().unwrap_or("")).into_owned();
    println!("{:<10} {:<32} {:<30} {:>6} LAST SEEN", "ID", "BINARY", "DESTINATION", "COUNT");
    for p in v["pending"].as_array().into_iter().flatten() {
        println!(
            "{:<10} {:<32} {:<30} {:>6} {}",
            text(p, "id"),
            text(p, "binary"),
            format!("{}:{}", text(p, "host"), p["port"]),
            p["count"],
            text(p, "last_seen")
        );
        // What an approval would pin, and who started the binary.
        println!("{:<10} sha256 {}", "", text(p, "hash"));
        for a in p["ancestors"].as_array().into_iter().flatten() {
            println!("{:<10} started by {} (sha256 {})", "", text(a, "binary"), text(a, "hash"));
        }
        // Asked through moat.local: the agent's words, never moat's.
        let asked = &p["agent_request"];
        if asked.is_object() {
            println!(
                "{:<10} the agent asked; in the agent's own words (unverified): \"{}\"",
                "",
                text(asked, "reason")
            );
            if asked["method"].is_string() || asked["path"].is_string() {
                println!("{:<10} it says it will send {} {}", "", text(asked, "method"), text(asked, "path"));
            }
        }
    }
    // Evicted to make room (oldest first): an operator must not mistake the
    // list for everything that was refused.
    let dropped = v["dropped"].as_u64().unwrap_or(0);
    if dropped > 0 {
        println!(
            "{dropped} more were dropped (the oldest go when the list is full); their refusals are in `moat events {}`",
            visible::field(&a.name)
        );
    }
    let limited = v["asks_refused"].as_u64().unwrap_or(0);
    if limited > 0 {
        println!("{limited} agent requests were refused by the rate limit (moat.local answered them 429)");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn approve(a: ApproveArgs) -> Result<ExitCode> {
    let scope = Scope::parse(&a.scope, a.method.as_deref(), a.path.as_deref())?;
    let v = call(&a.name, &Request::Approve { id: a.id.clone(), allowed_ips: a.allowed_ips, scope: scope.clone() })?;
    println!(
        "{}: approved {} ({}); network policy revision {}",
        a.name,
        visible::field(&a.id),
        scope.describe(),
        v["revision"]
    );
    if let Some(file) = &a.write {
        let rule: NetPolicy = serde_json::from_value(v["rule"].clone()).context("the approved rule")?;
        append::add_rule(file, &rule).with_context(|| format!("writing the rule into {}", file.display()))?;
        println!("rule {} written into {}", rule.name, file.display());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn deny(a: DecideArgs) -> Result<ExitCode> {
    call(&a.name, &Request::Deny { id: a.id.clone() })?;
    println!("{}: denied {} (it stays refused)", a.name, visible::field(&a.id));
    Ok(ExitCode::SUCCESS)
}

/// Prints the audit log (the rotated-away `audit.log.1` first); with
/// `follow`, keeps reading as it grows and across rotations.
pub fn events(a: EventsArgs) -> Result<ExitCode> {
    use std::os::unix::fs::MetadataExt;
    let paths = Paths::new(&a.name)?;
    state::load(&paths)?;
    let path = paths.audit_log_target();
    let open = |p: &std::path::Path| std::fs::File::open(p).map(BufReader::new);
    let mut f = match open(&path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !a.follow => return Ok(ExitCode::SUCCESS),
        Err(e) => return Err(e).with_context(|| path.display().to_string()),
    };
    let ino = |f: &BufReader<std::fs::File>| f.get_ref().metadata().map(|m| m.ino()).ok();
    if let Ok(mut old) = open(&moat_supervisor::gateway::events::rotated_path(&path)) {
        // Unless it is the file just opened, rotated away in between.
        if ino(&old) != ino(&f) {
            print_events(&mut old, &a, false)?;
        }
    }
    loop {
        print_events(&mut f, &a, a.follow)?;
        if !a.follow {
            return Ok(ExitCode::SUCCESS);
        }
        std::thread::sleep(Duration::from_millis(200));
        // Rotated: finish the old file, then read the new one from its start.
        let now = std::fs::metadata(&path).map(|m| m.ino()).ok();
        if now.is_some() && now != ino(&f) {
            print_events(&mut f, &a, false)?;
            if let Ok(next) = open(&path) {
                f = next;
            }
        }
    }
}

/// The longest audit line read whole (records are bounded by the gateway's
/// head limits, a few KiB).
const MAX_EVENT_LINE: u64 = 1 << 20;

/// Prints the complete lines `f` holds from where it is; a partial last
/// line is left for the next call when `wait` (a follower).
fn print_events(f: &mut BufReader<std::fs::File>, a: &EventsArgs, wait: bool) -> Result<()> {
    let mut raw = Vec::new();
    loop {
        raw.clear();
        // Bytes, not read_line: a line that is not UTF-8 (a record torn by
        // a full disk, the 1 MiB cut inside a character) must not stop the
        // reader and hide the records after it.
        let n = f.by_ref().take(MAX_EVENT_LINE).read_until(b'\n', &mut raw)?;
        if n == 0 {
            return Ok(());
        }
        if n as u64 == MAX_EVENT_LINE && !raw.ends_with(b"\n") {
            // No record the gateway writes is this long: skipped, not held.
            f.skip_until(b'\n')?;
            say!("moat: skipped an audit line longer than {} KiB", MAX_EVENT_LINE >> 10);
            continue;
        }
        if !raw.ends_with(b"\n") && wait {
            // A partial line: rewind and wait for the rest.
            f.seek(SeekFrom::Current(-(n as i64)))?;
            return Ok(());
        }
        // Not UTF-8: shown with U+FFFD by --json; no record parses from it.
        let line = String::from_utf8_lossy(&raw);
        if a.json {
            print!("{}", visible::json(&redact(&line)));
        } else if let Ok(e) = serde_json::from_str::<Event>(&line) {
            let text = format!(
                "{} {:<6} {} {}:{} {} {} rule={} {}{}",
                e.time,
                format!("{:?}", e.decision).to_lowercase(),
                e.binary,
                e.host,
                e.port,
                e.method,
                e.path,
                if e.rule.is_empty() { "-" } else { &e.rule },
                e.reason,
                if e.count > 1 { format!(" (x{})", e.count) } else { String::new() }
            );
            println!("{}", visible::field(&redact(&text)));
        }
    }
}

/// `moat policy suggest`: reads the audit log (the rotated-away part
/// first) against the network policy in force (the live revision while the
/// sandbox runs, else the one it was created with) and prints or writes
/// the suggested policy; what is not suggested goes to stderr with why.
fn suggest(
    name: &str,
    since: Option<&str>,
    write: Option<&std::path::Path>,
    allowed_ips: &[String],
) -> Result<ExitCode> {
    use moat_supervisor::policy::suggest::{self, Collector, Limits};
    use std::os::unix::fs::MetadataExt;
    let paths = Paths::new(name)?;
    let rec = state::load(&paths)?;
    let file = paths.policy_file();
    let policy: Policy = serde_json::from_str(&moat_builder::textfile::read(&file, moat_builder::textfile::MAX_TEXT)?)
        .with_context(|| file.display().to_string())?;
    let network = if rec.live_status() == Status::Running { current_network(name)? } else { policy.network.clone() };
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let since = since.map(|s| suggest::since(s, i128::try_from(now).unwrap_or(i128::MAX))).transpose()?;
    let mut c = Collector::new(&network, since, Limits::default())?;
    let log = paths.audit_log_target();
    let open = |p: &std::path::Path| match std::fs::File::open(p) {
        Ok(f) => Ok(Some(f)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| p.display().to_string()),
    };
    let current = open(&log)?;
    let rotated = open(&moat_supervisor::gateway::events::rotated_path(&log))?;
    let ino = |f: &std::fs::File| f.metadata().map(|m| m.ino()).ok();
    for f in [rotated.filter(|r| current.as_ref().is_none_or(|c| ino(c) != ino(r))), current].into_iter().flatten() {
        c.read(BufReader::new(f)).with_context(|| log.display().to_string())?;
    }
    let s = c.finish(name, &policy, allowed_ips)?;
    for l in &s.not_suggested {
        say!("moat: not suggested: {}", visible::field(l));
    }
    match write {
        Some(w) => {
            state::write_atomic(w, s.text.as_bytes())?;
            println!(
                "{}: {} suggested from {} records ({} not suggested); check it, then `moat policy set {name} {}`",
                w.display(),
                s.suggested,
                s.stats.records,
                s.not_suggested.len(),
                w.display()
            );
        }
        None => print!("{}", visible::lines(&s.text)),
    }
    Ok(ExitCode::SUCCESS)
}
