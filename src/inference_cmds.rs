//! `moat inference set|show|usage`: where a sandbox's `inference.local`
//! leads, switched live through the control socket, and its token usage.
//! The credential is named, never given: its value stays in `moat credentials`.
use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use moat_supervisor::gateway::control::{self, Request};
use moat_supervisor::gateway::inference::{self, usage::Budget, Kind, Route};
use moat_supervisor::sandbox::state::{self, Paths, Status};
use serde_json::Value;
use std::process::ExitCode;

#[derive(Args)]
pub struct InferenceArgs {
    #[command(subcommand)]
    cmd: InferenceCmd,
}

#[derive(Subcommand)]
enum InferenceCmd {
    /// Route a sandbox's inference.local (live if it runs), or set the default for new sandboxes.
    Set(SetArgs),
    /// Print the route a sandbox uses.
    Show {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Print today's token usage per provider (UTC day).
    Usage {
        name: String,
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
struct SetArgs {
    /// The sandbox (omit with --default).
    #[arg(required_unless_present = "default")]
    name: Option<String>,
    /// Set the route new sandboxes start with instead.
    #[arg(long, conflicts_with = "name")]
    default: bool,
    /// openai, anthropic or local.
    #[arg(long)]
    provider: Kind,
    /// Base URL, e.g. https://api.openai.com or http://127.0.0.1:11434.
    #[arg(long)]
    endpoint: String,
    /// Replace the model the sandbox asks for.
    #[arg(long)]
    model: Option<String>,
    /// Name of a credential stored with `moat credentials set`.
    #[arg(long)]
    credential: Option<String>,
    /// Label for usage accounting (default: the provider kind).
    #[arg(long)]
    label: Option<String>,
    #[arg(long)]
    max_tokens_per_day: Option<u64>,
    #[arg(long)]
    max_requests_per_minute: Option<u32>,
}

fn running(name: &str) -> Result<Option<std::path::PathBuf>> {
    let paths = Paths::new(name)?;
    let rec = state::load(&paths)?;
    Ok((rec.live_status() == Status::Running).then(|| paths.control_socket()))
}

pub fn inference(a: InferenceArgs) -> Result<ExitCode> {
    match a.cmd {
        InferenceCmd::Set(s) => set(s),
        InferenceCmd::Show { name, json } => {
            let v = show(&name)?;
            if json {
                println!("{v}");
            } else {
                match serde_json::from_value::<Route>(v["route"].clone()) {
                    Ok(r) => println!(
                        "{name}: {:?} {} model={} credential={} budget: tokens/day={} requests/min={}",
                        r.provider,
                        r.endpoint,
                        r.model.as_deref().unwrap_or("(as asked)"),
                        r.credential.as_deref().unwrap_or("(none)"),
                        r.budget.max_tokens_per_day.map_or("-".into(), |n| n.to_string()),
                        r.budget.max_requests_per_minute.map_or("-".into(), |n| n.to_string()),
                    ),
                    Err(_) => println!("{name}: no inference route (moat inference set {name} ...)"),
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        InferenceCmd::Usage { name, json } => {
            let v = show(&name)?;
            if json {
                println!("{}", v["usage"]);
                return Ok(ExitCode::SUCCESS);
            }
            println!(
                "{:<16} {:>9} {:>13} {:>13}  (UTC day {})",
                "PROVIDER",
                "REQUESTS",
                "INPUT",
                "OUTPUT",
                v["usage"]["day"].as_str().unwrap_or("-")
            );
            for (p, c) in v["usage"]["providers"].as_object().into_iter().flatten() {
                println!("{p:<16} {:>9} {:>13} {:>13}", c["requests"], c["input_tokens"], c["output_tokens"]);
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn show(name: &str) -> Result<Value> {
    if let Some(sock) = running(name)? {
        return Ok(control::call(&sock, &Request::InferenceShow)?);
    }
    let paths = Paths::new(name)?;
    let read = |f: &str| -> Value {
        std::fs::read(paths.home.join(f)).ok().and_then(|b| serde_json::from_slice(&b).ok()).unwrap_or(Value::Null)
    };
    Ok(serde_json::json!({"route": read("inference.json")["route"], "usage": read("usage.json")}))
}

fn set(s: SetArgs) -> Result<ExitCode> {
    let route = Route {
        name: s.label.unwrap_or_else(|| format!("{:?}", s.provider).to_lowercase()),
        provider: s.provider,
        endpoint: s.endpoint,
        model: s.model,
        credential: s.credential,
        budget: Budget { max_tokens_per_day: s.max_tokens_per_day, max_requests_per_minute: s.max_requests_per_minute },
    };
    route.validate()?;
    if let Some(c) = &route.credential {
        moat_supervisor::secrets::credentials::Store::default_location()
            .get(c)
            .with_context(|| format!("credential {c} (store it with `moat credentials set {c}`)"))?;
    }
    let Some(name) = s.name else {
        inference::save_route(&inference::default_route_file(), &route)?;
        println!("default inference route: {:?} {}", route.provider, route.endpoint);
        return Ok(ExitCode::SUCCESS);
    };
    match running(&name)? {
        Some(sock) => {
            control::call(&sock, &Request::InferenceSet { route: Box::new(route.clone()) })?;
            println!("{name}: inference.local now leads to {:?} {} (live)", route.provider, route.endpoint);
        }
        None => {
            let paths = Paths::new(&name)?;
            if !paths.home.is_dir() {
                bail!("no sandbox named {name}");
            }
            inference::save_route(&paths.home.join("inference.json"), &route)?;
            println!("{name}: inference route saved; it applies when the sandbox runs");
        }
    }
    Ok(ExitCode::SUCCESS)
}
