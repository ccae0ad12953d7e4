//! Image commands: lock, build, verify, lint, audit, images, inspect, gc, fsck.
use crate::Global;
use anyhow::{Context, Result};
use clap::Args;
use moat_builder::{audit, blueprint, build, home, lint, lock::Lock, verify, Store};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

#[derive(Args)]
pub struct LockArgs {
    /// Blueprint file (TOML).
    pub blueprint: PathBuf,
    /// Re-resolve pinned package sets instead of keeping the existing lock's.
    #[arg(long)]
    pub update: bool,
}
#[derive(Args)]
pub struct BuildArgs {
    /// Blueprint file (TOML); its lock must exist beside it.
    pub blueprint: PathBuf,
}
#[derive(Args)]
pub struct VerifyArgs {
    #[arg(required = true)]
    pub blueprints: Vec<PathBuf>,
    /// Also require the attested provenance (if any) to be signed by this public key.
    #[arg(long, value_name = "PUB")]
    pub key: Vec<PathBuf>,
}
#[derive(Args)]
pub struct LintArgs {
    /// Files or directories (default: blueprints/ and policies/).
    pub paths: Vec<PathBuf>,
}
#[derive(Args)]
pub struct AuditArgs {
    /// NAME, NAME@sha256:..., or sha256:...
    pub image: String,
    #[arg(long)]
    pub json: bool,
}
#[derive(Args)]
pub struct ImagesArgs {
    #[arg(long)]
    pub json: bool,
}
#[derive(Args)]
pub struct InspectArgs {
    pub image: String,
    #[arg(long)]
    pub json: bool,
}
#[derive(Args)]
pub struct GcArgs {}
#[derive(Args)]
pub struct FsckArgs {
    #[arg(long)]
    pub json: bool,
}

fn open_store(g: &Global) -> Result<Store> {
    let dir = home::store_dir(g.store.as_deref());
    Store::open(&dir).with_context(|| format!("opening image store {}", dir.display()))
}

fn options(g: &Global, store: Store) -> build::Options {
    let cache = home::cache_dir();
    build::Options { store, layer_cache: Some(cache.join("layers")), download_cache: cache, progress: !g.quiet }
}

fn load(p: &Path) -> Result<blueprint::Loaded> {
    Ok(blueprint::load(p)?)
}

pub fn lock(a: LockArgs, g: &Global) -> Result<ExitCode> {
    let l = load(&a.blueprint)?;
    let previous = match Lock::read(&l.lock_path(), &l.path) {
        Ok(p) => Some(p),
        Err(moat_builder::lock::LockError::Missing(..)) => None,
        Err(e) if a.update => {
            tracing::warn!("ignoring unreadable lock: {}", moat_builder::errors::chain(&e));
            None
        }
        Err(e) => return Err(e).context("reading the existing lock (use --update to re-resolve from scratch)"),
    };
    let store = open_store(g)?;
    let mode = build::Mode::Lock { previous: previous.as_ref(), update: a.update };
    let built = build::build(&l, &options(g, store.clone()), mode)?;
    built.lock.write(&l.lock_path()).with_context(|| format!("writing {}", l.lock_path().display()))?;
    store.set_ref(&built.lock.name, built.manifest.clone())?;
    say!("wrote {}", l.lock_path().display());
    npm_scripts(&built.lock);
    println!("{}@{}", built.lock.name, built.lock.image.manifest);
    Ok(ExitCode::SUCCESS)
}

/// Lists the locked npm packages that declare install scripts (never run).
fn npm_scripts(lock: &Lock) {
    let Some(Ok(npm)) = lock.npm.clone().map(|v| v.try_into::<moat_builder::npm::NpmLock>()) else { return };
    let listed = moat_builder::npm::with_install_scripts(&npm);
    if !listed.is_empty() {
        eprintln!("npm packages with install scripts (not run; the layer holds them as unpacked):");
        for p in listed {
            eprintln!("  {p}");
        }
    }
    for w in moat_builder::npm::engines::lock_warnings(&npm, lock.debian.as_ref()) {
        eprintln!("warning: {w}");
    }
}

pub fn build(a: BuildArgs, g: &Global) -> Result<ExitCode> {
    let l = load(&a.blueprint)?;
    let locked = Lock::read(&l.lock_path(), &l.path)?;
    let store = open_store(g)?;
    let built = build::build(&l, &options(g, store), build::Mode::Build(&locked))
        .with_context(|| format!("building {}", a.blueprint.display()))?;
    println!("{}@{}", built.lock.name, built.manifest.digest);
    Ok(ExitCode::SUCCESS)
}

pub fn verify(a: VerifyArgs, g: &Global) -> Result<ExitCode> {
    let reference = Store::open_existing(&home::store_dir(g.store.as_deref())).ok();
    let mut failed = false;
    for bp in &a.blueprints {
        let l = load(bp)?;
        let out = verify::verify(&l, reference.as_ref(), home::cache_dir())
            .with_context(|| format!("verifying {}", bp.display()))?;
        match out.difference {
            None => match check_provenance(&l, &a.key, reference.as_ref())? {
                Some(problem) => {
                    failed = true;
                    println!("FAIL {}: {problem}", bp.display());
                }
                None => println!("ok {} {}@{}", bp.display(), out.name, out.manifest),
            },
            Some(d) => {
                failed = true;
                let at = out.path.map(|p| format!(" (first differing path: /{p})")).unwrap_or_default();
                println!("FAIL {}: {d}{at}", bp.display());
            }
        }
    }
    Ok(if failed { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// Compares the provenance attested in the store for the image `l`'s lock
/// pins with the statement the lock gives now, byte for byte (and, with
/// keys, checks who signed it). Some(problem) when they differ.
fn check_provenance(l: &blueprint::Loaded, keys: &[PathBuf], store: Option<&Store>) -> Result<Option<String>> {
    use moat_builder::sign::{check, provenance};
    let Some(store) = store else { return Ok(None) };
    let lock_path = l.lock_path();
    let lock = Lock::read(&lock_path, &l.path)?;
    let lock_bytes = moat_builder::textfile::read(&lock_path, moat_builder::textfile::MAX_TEXT)?.into_bytes();
    let want = match provenance::statement(&lock, &lock_bytes, &crate::sign_cmds::blueprint_path(&l.path)) {
        Ok(w) => w,
        Err(e) => return Ok(Some(format!("{}: {e}", lock_path.display()))),
    };
    let digest = &lock.image.manifest;
    let attested: Vec<(String, Vec<u8>)> = if keys.is_empty() {
        check::attested_provenance(store, digest)?
    } else {
        let keys = crate::key_cmds::public_keys(keys)?;
        match check::attestations(store, digest, &keys, Some(provenance::PREDICATE_SLSA)) {
            Ok(good) => good.into_iter().map(|g| (g.via, g.payload)).collect(),
            Err(e) => return Ok(Some(moat_builder::errors::chain(&e))),
        }
    };
    let want_bytes = want.to_bytes();
    for (via, got) in attested {
        if got == want_bytes {
            continue;
        }
        let at = match serde_json::from_slice::<serde_json::Value>(&got) {
            Ok(v) => provenance::first_difference(&v, &serde_json::to_value(&want)?).unwrap_or_else(|| "/".into()),
            Err(_) => "the statement is not JSON".into(),
        };
        return Ok(Some(format!(
            "the provenance attested in {via} does not match what the lock gives now (first difference at {at})"
        )));
    }
    Ok(None)
}

pub fn lint(a: LintArgs, _g: &Global) -> Result<ExitCode> {
    let paths = if a.paths.is_empty() { vec![PathBuf::from("blueprints"), PathBuf::from("policies")] } else { a.paths };
    let findings = lint::lint(&paths, &check_policy);
    for f in &findings {
        println!("{}: {}", f.at, f.msg);
    }
    // Warnings are printed but do not fail the check.
    let errors = findings.iter().filter(|f| !f.msg.starts_with("warning: ")).count();
    Ok(if errors == 0 { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

/// Validates a non-blueprint TOML file as the policy kind it looks like
/// (sandbox policy or seccomp deny list), so unknown keys are caught in review.
fn check_policy(path: &Path, text: &str) -> Vec<lint::Finding> {
    let at = |msg: String| vec![lint::Finding { at: format!("{}:1:1", path.display()), msg }];
    // The parse `policy check` and `lint` share: the parser's reason, placed.
    let table = match moat_builder::textfile::parse_toml::<toml::Table>(text, &path.display().to_string()) {
        Ok(t) => t,
        Err(e) => return vec![lint::Finding { at: format!("{}:{}:{}", e.origin, e.line, e.column), msg: e.message }],
    };
    if path.file_name().is_some_and(|n| n == "seccomp.toml") {
        return match moat_supervisor::launch::seccomp::DenyList::parse(text) {
            Ok(_) => Vec::new(),
            Err(e) => at(e.to_string()),
        };
    }
    let origin = path.display().to_string();
    let direct_inference = |rules: &[moat_supervisor::policy::schema::NetPolicy]| -> Vec<lint::Finding> {
        moat_supervisor::policy::lint::direct_inference(rules)
            .into_iter()
            .map(|w| lint::Finding { at: format!("{origin}:1:1"), msg: format!("warning: {w}") })
            .collect()
    };
    if table.contains_key("risk") && table.contains_key("policy") {
        return match moat_supervisor::policy::schema::parse_toml::<moat_supervisor::policy::presets::Preset>(
            text, &origin,
        ) {
            Ok(p) => match p.policies.iter().try_for_each(|r| r.validate()) {
                Ok(()) => direct_inference(&p.policies),
                Err(e) => at(e.to_string()),
            },
            Err(moat_supervisor::policy::schema::NetPolicyError::Parse { origin, line, column, message }) => {
                vec![lint::Finding { at: format!("{origin}:{line}:{column}"), msg: message }]
            }
            Err(e) => at(e.to_string()),
        };
    }
    if ["filesystem", "landlock", "process"].iter().any(|k| table.contains_key(*k)) {
        return match moat_supervisor::policy::Policy::parse(text, &origin) {
            Ok(p) => p.network.effective().map(|r| direct_inference(&r)).unwrap_or_default(),
            Err(moat_supervisor::policy::PolicyError::Parse { origin, line, column, message }) => {
                vec![lint::Finding { at: format!("{origin}:{line}:{column}"), msg: message }]
            }
            // A value out of range has no span: the file, as `policy check` says it.
            Err(moat_supervisor::policy::PolicyError::Invalid { origin, message }) => {
                vec![lint::Finding { at: origin, msg: message }]
            }
            Err(e) => at(e.to_string()),
        };
    }
    Vec::new()
}

pub fn audit(a: AuditArgs, g: &Global) -> Result<ExitCode> {
    let store = open_store(g)?;
    let r = audit::audit(&store, &a.image)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        println!("image {}", r.image);
        for (title, list) in [
            ("toolchain binaries", &r.toolchain),
            ("setuid/setgid files", &r.setuid),
            ("world-writable paths", &r.world_writable),
            ("npm install scripts (not run)", &r.install_scripts),
        ] {
            println!("{title}: {}", list.len());
            for f in list {
                println!("  {} {} {}", f.mode, f.path, f.why);
            }
        }
    }
    Ok(if r.toolchain.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

pub fn images(a: ImagesArgs, g: &Global) -> Result<ExitCode> {
    let store = open_store(g)?;
    let mut rows = Vec::new();
    // Signatures and attestations (`sha256-HEX.sig`, ...) are not images.
    for img in store.images()?.into_iter().filter(|i| !moat_builder::sign::artifacts::is_artifact_name(&i.name)) {
        let m = store.manifest(&img.manifest.digest)?;
        let size: u64 = m.layers.iter().map(|l| l.size).sum::<u64>() + m.config.size;
        rows.push(serde_json::json!({"name": img.name, "digest": img.manifest.digest.to_string(), "layers": m.layers.len(), "size": size}));
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        println!("{:<24} {:<20} {:>6} {:>12}", "NAME", "DIGEST", "LAYERS", "SIZE");
        for r in rows {
            println!(
                "{:<24} {:<20} {:>6} {:>12}",
                r["name"].as_str().unwrap_or(""),
                &r["digest"].as_str().unwrap_or("")[..19.min(r["digest"].as_str().unwrap_or("").len())],
                r["layers"],
                human(r["size"].as_u64().unwrap_or(0))
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

pub fn inspect(a: InspectArgs, g: &Global) -> Result<ExitCode> {
    let store = open_store(g)?;
    let img = store.resolve(&a.image)?;
    let m = store.manifest(&img.manifest.digest)?;
    let c = store.config(&m)?;
    if a.json {
        let v = serde_json::json!({"name": img.name, "digest": img.manifest.digest, "manifest": m, "config": c});
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!("name:     {}", img.name);
    println!("digest:   {}", img.manifest.digest);
    println!("platform: {}/{}", c.os, c.architecture);
    println!("created:  {}", c.created.as_deref().unwrap_or("-"));
    println!("user:     {}", c.config.user.as_deref().unwrap_or("-"));
    println!("workdir:  {}", c.config.working_dir.as_deref().unwrap_or("-"));
    println!(
        "entrypoint: {:?}  cmd: {:?}",
        c.config.entrypoint.clone().unwrap_or_default(),
        c.config.cmd.clone().unwrap_or_default()
    );
    println!("env:");
    for e in &c.config.env {
        println!("  {e}");
    }
    println!("layers:");
    let history: Vec<_> = c.history.iter().filter(|h| !h.empty_layer).collect();
    let offset = m.layers.len().saturating_sub(history.len());
    for (i, (l, diff)) in m.layers.iter().zip(&c.rootfs.diff_ids).enumerate() {
        let by = i
            .checked_sub(offset)
            .and_then(|j| history.get(j))
            .and_then(|h| h.created_by.clone())
            .unwrap_or_else(|| "base".into());
        println!("  {i:>2} {} {:>10}  diff {}  {by}", l.digest, human(l.size), diff.short());
    }
    Ok(ExitCode::SUCCESS)
}

pub fn gc(_a: GcArgs, g: &Global) -> Result<ExitCode> {
    let store = open_store(g)?;
    let r = store.gc()?;
    println!("removed {} blobs ({}), {} temp files", r.removed.len(), human(r.freed_bytes), r.temp_files);
    Ok(ExitCode::SUCCESS)
}

/// Hashes every blob of the real store and names each corrupt, unreadable or
/// missing one with the images that need it; exit 1 if there is any.
pub fn fsck(a: FsckArgs, g: &Global) -> Result<ExitCode> {
    use moat_builder::store::FsckProblem;
    let dir = home::store_dir(g.store.as_deref());
    let store = Store::open_existing(&dir).with_context(|| format!("opening image store {}", dir.display()))?;
    let r = store.fsck().with_context(|| format!("checking image store {}", dir.display()))?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
    } else {
        let users = |u: &[String]| if u.is_empty() { String::new() } else { format!(" ({})", u.join(", ")) };
        for p in &r.problems {
            match p {
                FsckProblem::Corrupt { digest, actual, used_by } => {
                    println!("corrupt {digest}: its content hashes to {actual}{}", users(used_by))
                }
                FsckProblem::Unreadable { digest, error, used_by } => {
                    println!("unreadable {digest}: {error}{}", users(used_by))
                }
                FsckProblem::Missing { digest, used_by } => println!("missing {digest}{}", users(used_by)),
            }
        }
        for s in &r.stray {
            println!("stray file blobs/sha256/{} (not a digest; not checked)", moat_supervisor::visible::field(s));
        }
        println!("checked {} blobs ({}): {} corrupt, {} missing", r.blobs, human(r.bytes), r.corrupt(), r.missing());
    }
    Ok(if r.problems.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn human(n: u64) -> String {
    const U: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut i = 0;
    while v >= 1024.0 && i < U.len() - 1 {
        v /= 1024.0;
        i += 1;
    }
    if i == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", U[i])
    }
}
