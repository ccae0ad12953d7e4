//! The agent image with a real npm-distributed agent CLI and a PyPI tool
//! (issue 24 part 5): `blueprints/agent-node.toml` is the default agent plus
//! Claude Code from the npm registry and `llm` from PyPI, each pinned with
//! its dependencies in the committed lock.
//! The image builds from the lock alone, `moat verify` reproduces it, and
//! the CLI starts inside a sandbox under the baseline policy (no network:
//! `--version` needs none). Needs root, the Debian mirror, the npm registry
//! and PyPI (the download cache is shared with the other image tests).
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tmp() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).to_path_buf()
}

fn moat(args: &[&str], home: &Path, store: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moat"))
        .args(args)
        .env("MOAT_HOME", home)
        .env("MOAT_STORE", store)
        .env("MOAT_RUN_DIR", tmp().join("agent-node-run"))
        .env_remove("MOAT_NPM_REGISTRY")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run moat")
}

fn ok(o: &Output, what: &str) -> String {
    assert!(
        o.status.success(),
        "{what}: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn the_agent_cli_from_the_npm_registry_is_a_locked_input_and_starts_in_a_sandbox() {
    // The download cache of the Debian mirror tests (MOAT_HOME's cache).
    let cache_home = tmp().join("debian-mirror-home");
    let store = tmp().join("agent-node-store");
    ok(&moat(&["build", "--quiet", "blueprints/agent-node.toml"], &cache_home, &store), "build from the lock");
    ok(&moat(&["verify", "blueprints/agent-node.toml"], &cache_home, &store), "verify");
    let lock = std::fs::read_to_string("blueprints/agent-node.lock").unwrap();
    let lock: toml::Value = toml::from_str(&lock).unwrap();
    let cli = lock["npm"]["packages"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"].as_str() == Some("@anthropic-ai/claude-code")))
        .expect("the CLI is in the lock");
    let version = cli["version"].as_str().unwrap();
    assert!(cli["integrity"].as_str().unwrap().starts_with("sha512-"), "{cli}");

    let home = tmp().join("agent-node-home");
    let _ = std::fs::remove_dir_all(&home);
    let out = ok(&moat(&["run", "--rm", "agent-node", "--", "claude", "--version"], &home, &store), "claude --version");
    assert_eq!(out.trim(), format!("{version} (Claude Code)"));
    let llm = lock["pypi"]["packages"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["name"].as_str() == Some("llm")))
        .expect("llm is in the lock");
    let llm_version = llm["version"].as_str().unwrap();
    let out = ok(&moat(&["run", "--rm", "agent-node", "--", "llm", "--version"], &home, &store), "llm --version");
    assert_eq!(out.trim(), format!("llm, version {llm_version}"));
    let audit = ok(&moat(&["audit", "agent-node"], &home, &store), "audit");
    assert!(audit.contains("npm install scripts (not run): 0"), "{audit}");
}
