//! What the operator decides in the console, carried out: approve (with a
//! scope, opted-in addresses, and optionally the rule written into a policy
//! file) or deny, through the sandbox's control socket, the same requests
//! `moat approve` and `moat deny` send. Guards against a decision that
//! silently did not happen: each one runs off the screen's thread and its
//! outcome, success or the supervisor's reason, comes back to the status line.
#![forbid(unsafe_code)]
use crate::feed::Board;
use crate::model::Update;
use moat_supervisor::gateway::control::{self, Request};
use moat_supervisor::gateway::scope::Scope;
use moat_supervisor::policy::append;
use moat_supervisor::policy::schema::NetPolicy;
use moat_supervisor::sandbox::state::Paths;
use std::path::PathBuf;
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    Approve { sandbox: String, id: String, scope: Scope, allowed_ips: Vec<String>, write: Option<PathBuf> },
    Deny { sandbox: String, id: String },
}

/// Carries out `action` on a thread of its own; the outcome goes to `board`.
pub fn perform(action: Action, board: Arc<Board>) {
    let spawned = std::thread::Builder::new().name("term-act".into()).spawn({
        let board = board.clone();
        let action = action.clone();
        move || board.apply(Update::Done(outcome(&action)))
    });
    if let Err(e) = spawned {
        board.apply(Update::Done(format!("not done: no thread for it: {e}")));
    }
}

fn call(sandbox: &str, req: &Request) -> Result<serde_json::Value, String> {
    let paths = Paths::new(sandbox).map_err(|e| moat_builder::errors::chain(&e))?;
    control::call(&paths.control_socket(), req).map_err(|e| moat_builder::errors::chain(&e))
}

/// What happened, as the status line says it.
pub fn outcome(action: &Action) -> String {
    // Not escaped here: the status line escapes what it shows.
    match action {
        Action::Deny { sandbox, id } => match call(sandbox, &Request::Deny { id: id.clone() }) {
            Ok(_) => format!("{sandbox}: denied {id} (it stays refused)"),
            Err(e) => format!("{sandbox}: deny {id} failed: {e}"),
        },
        Action::Approve { sandbox, id, scope, allowed_ips, write } => {
            let req = Request::Approve { id: id.clone(), allowed_ips: allowed_ips.clone(), scope: scope.clone() };
            let v = match call(sandbox, &req) {
                Ok(v) => v,
                Err(e) => return format!("{sandbox}: approve {id} failed: {e}"),
            };
            let mut msg = format!("{sandbox}: approved {id} ({}); policy revision {}", scope.describe(), v["revision"]);
            if let Some(file) = write {
                let written = serde_json::from_value::<NetPolicy>(v["rule"].clone())
                    .map_err(|e| e.to_string())
                    .and_then(|rule| append::add_rule(file, &rule).map_err(|e| moat_builder::errors::chain(&e)));
                match written {
                    Ok(_) => msg.push_str("; rule written into the policy file"),
                    Err(e) => msg.push_str(&format!("; NOT written into {}: {e}", file.display())),
                }
            }
            msg
        }
    }
}
