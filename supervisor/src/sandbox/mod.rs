//! One sandbox's life as the supervisor sees it: create (validate, reserve
//! the name, record the request), supervise (prepare the rootfs, create the
//! netns and the gateway socket, write the bundle, start the single-threaded
//! launcher, wait, record the exit), stop, remove. Guards against a sandbox
//! starting weaker than its policy (hard_requirement, require_cap_drop are
//! checked before anything runs) and against leftovers (the launcher dies
//! with the supervisor; stop/rm remove every trace but the workspace).
mod bundle;
pub(crate) mod cgroup_warm;
pub(crate) mod connect_watch;
pub mod doctor;
pub mod engine;
pub mod host_cgroup;
pub mod host_uid;
pub mod logs;
pub(crate) mod net;
mod netlink;
pub(crate) mod netns;
pub mod oci;
pub(crate) mod pod_net;
pub mod publish;
mod reap;
pub(crate) mod spec;
pub mod state;
mod sys;
pub mod trust;
pub mod usage;
pub mod workspace_limit;
mod workspace_pool;
use crate::launch::executor::GuardPlan;
use crate::launch::fork::ForkedLauncher;
use crate::launch::landlock::{kernel_abi, missing_features, LandlockPlan};
use crate::launch::rootfs::{self, PreparedImage};
use crate::launch::{LaunchPlan, TopLayer, WorkspaceMap};
use crate::layers::LayerCache;
use crate::policy::{Compatibility, Policy};
use crate::sandbox::net::{LaunchNet, NetStart};
use crate::sandbox::pod_net::{NetSide, PodNet};
use crate::sandbox::spec::SpecParams;
use crate::sandbox::state::{Paths, ProcId, Record, Status};
use crate::sandbox::workspace_limit::Durability;
pub use bundle::write_bundle;
use moat_builder::Store;
use serde::{Deserialize, Serialize};
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::DirBuilderExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};
pub use sys::{detach_with_ready_fd, ready_pipe_from_parent};

#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error(transparent)]
    Rootfs(#[from] rootfs::RootfsError),
    #[error(transparent)]
    Store(#[from] moat_builder::store::StoreError),
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
    #[error(transparent)]
    Netns(#[from] crate::sandbox::netns::NetnsError),
    #[error(transparent)]
    Launch(#[from] crate::launch::LaunchError),
    #[error("{what}")]
    Io { what: String, source: std::io::Error },
    #[error("{0}")]
    Refused(String),
    #[error("sandbox {0} is running: stop it first (or use --force)")]
    Running(String),
    #[error("sandbox {0} is starting: wait for it to run, or `moat rm -f {0}` to stop and remove it")]
    Starting(String),
    #[error("the record of sandbox {name} does not parse (`moat rm -f {name}` removes it)")]
    Corrupt { name: String, source: state::StateError },
    #[error("sandbox {0} is not running")]
    NotRunning(String),
    #[error(transparent)]
    Workspace(#[from] workspace_limit::LimitError),
    #[error(transparent)]
    Publish(#[from] publish::PublishError),
}

pub(crate) fn gateway_err(e: impl std::error::Error) -> SandboxError {
    SandboxError::Refused(format!("egress gateway: {}", moat_builder::errors::chain(&e)))
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SandboxError {
    let what = what.into();
    move |source| SandboxError::Io { what, source }
}

/// What `moat run` asked for, kept in the runtime directory for the supervisor.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunRequest {
    pub name: Option<String>,
    pub image: String,
    pub store: PathBuf,
    pub policy: Policy,
    pub workspace: Option<PathBuf>,
    /// Empty: the image's entrypoint and command.
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub interactive: bool,
    pub tty: bool,
    pub detach: bool,
    /// `run --rm`: the record is deleted at exit, so it is not fsynced.
    #[serde(default)]
    pub ephemeral: bool,
    /// `run -p`: host ports relayed into the sandbox (none unless asked).
    #[serde(default)]
    pub publish: Vec<publish::Publish>,
    /// `run --publish-token`: the bearer token every published port requires.
    #[serde(default)]
    pub publish_token: Option<String>,
    /// `run --expose`: ports the agent may bind, to be published later
    /// (`moat publish`); Landlock rights cannot be added to a running sandbox.
    #[serde(default)]
    pub expose: Vec<u16>,
    /// A sandbox another engine describes (containerd: the root filesystem
    /// it prepared, the spec's process): None for an image of moat's store.
    #[serde(default)]
    pub oci: Option<oci::OciInput>,
}

/// Refuses policies the kernel or the policy itself cannot honour; logs
/// every degraded feature under best_effort (one structured event each).
pub fn check_enforceable(policy: &Policy) -> Result<(), SandboxError> {
    if !nix::unistd::geteuid().is_root() {
        return Err(SandboxError::Refused(
            "sandboxes need root for now (namespaces, overlayfs, cgroups; rootless mode is not implemented): run moat as root".into(),
        ));
    }
    if policy.process.require_cap_drop {
        let kept = policy.kept_dangerous_caps();
        if !kept.is_empty() {
            return Err(SandboxError::Refused(format!(
                "require_cap_drop = true but the policy keeps {}",
                kept.join(", ")
            )));
        }
    }
    let missing = missing_features(kernel_abi());
    if missing.is_empty() {
        return Ok(());
    }
    if policy.landlock.compatibility == Compatibility::HardRequirement {
        return Err(SandboxError::Refused(format!(
            "landlock compatibility = hard_requirement, but this kernel lacks:\n  {}",
            missing.join("\n  ")
        )));
    }
    for m in missing {
        tracing::warn!(event = "landlock_degraded", feature = m, "best_effort: not enforced");
    }
    Ok(())
}

/// Validates the request and reserves the name by writing its whole record
/// (`state::reserve`: nothing holds the name but a complete record). The
/// record names this process as the supervisor: a foreground `run` is it,
/// a detached one is replaced by its supervisor when that starts
/// (`claim`), so a dead starter is seen as dead from the first moment.
/// Returns the paths.
pub fn create(req: &RunRequest) -> Result<Paths, SandboxError> {
    check_enforceable(&req.policy)?;
    // A pod's ports listen in the pod's namespace: the cluster decides who
    // reaches them, so they go off loopback without a token.
    let in_pod = req.oci.as_ref().is_some_and(|o| o.dial_netns.is_some()) && !req.publish.is_empty();
    publish::check(&req.publish, &req.expose, req.publish_token.is_some() || in_pod, req.policy.network.gateway_port)?;
    let name = name_for(req);
    let paths = Paths::new(&name)?;
    if let Some(w) = &req.workspace {
        if !w.is_dir() {
            return Err(SandboxError::Refused(format!("--workspace {}: not a directory", w.display())));
        }
    }
    let rec = Record {
        name: name.clone(),
        image: req.image.clone(),
        image_digest: String::new(),
        command: req.args.clone(),
        workspace: req.workspace.clone().unwrap_or_else(|| paths.default_workspace()),
        workspace_owned: req.workspace.is_none(),
        created: state::now(),
        status: Status::Created,
        detached: req.detach,
        supervisor: ProcId::of(std::process::id() as i32),
        init: None,
        started: None,
        exit_code: None,
    };
    state::reserve(&paths, &rec, !req.ephemeral)?;
    let result = (|| -> Result<(), SandboxError> {
        let policy_json = serde_json::to_vec_pretty(&req.policy).map_err(|e| SandboxError::Refused(e.to_string()))?;
        let write = if req.ephemeral { state::write_runtime } else { state::write_atomic };
        write(&paths.policy_file(), &policy_json)?;
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&paths.run)
            .map_err(io(paths.run.display().to_string()))?;
        let req_json = serde_json::to_vec(req).map_err(|e| SandboxError::Refused(e.to_string()))?;
        state::write_runtime(&paths.run.join("request.json"), &req_json)?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(paths.state_file());
        let _ = fs::remove_file(paths.policy_file());
        let _ = fs::remove_dir(&paths.home); // only if nothing (no kept workspace) is in it
        let _ = fs::remove_dir_all(&paths.run);
        return Err(e);
    }
    Ok(paths)
}

fn generated_name(image: &str) -> String {
    let base: String = image
        .split(['@', ':'])
        .next()
        .unwrap_or("sandbox")
        .rsplit('/')
        .next()
        .unwrap_or("sandbox")
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
        .take(40)
        .collect();
    let base = if base.is_empty() { "sandbox".to_string() } else { base };
    let mut rnd = [0u8; 3];
    sys::random_bytes(&mut rnd);
    format!("{base}-{}", hex::encode(rnd))
}

/// The image-derived part of a sandbox, shared by `run` and `bundle`.
pub struct Resolved {
    pub image: PreparedImage,
    pub user: rootfs::SandboxUser,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
}

pub fn resolve(
    store: &Store,
    image: &str,
    policy: &Policy,
    args: &[String],
    env: &[String],
) -> Result<Resolved, SandboxError> {
    // The digest checked is the digest prepared: a name moved meanwhile (a
    // concurrent pull or build) cannot slip another image past `[trust]`.
    let checked = trust::check(store, image, &policy.trust)?;
    let prepared = PreparedImage::prepare_named(store, image, checked, &LayerCache::default_location())?;
    let user = prepared.user(&policy.process.user)?;
    let rc = &prepared.config.config;
    let args = if args.is_empty() {
        let mut a = rc.entrypoint.clone().unwrap_or_default();
        a.extend(rc.cmd.clone().unwrap_or_default());
        a
    } else {
        args.to_vec()
    };
    if args.is_empty() {
        return Err(SandboxError::Refused(format!("image {image} names no command: give one after `--`")));
    }
    let env = spec::environment(&rc.env, env, &user.home, policy.network.gateway_port)?;
    let cwd = rc.working_dir.clone().filter(|w| !w.is_empty()).unwrap_or_else(|| policy.filesystem.workspace.clone());
    Ok(Resolved { image: prepared, user, args, env, cwd })
}

/// `resolve` for a root filesystem another engine prepared: the process
/// is the spec's, the user the spec's unless root (then the policy's).
pub fn resolve_oci(
    oci: &oci::OciInput,
    image: &str,
    policy: &Policy,
    args: &[String],
    env: &[String],
) -> Result<Resolved, SandboxError> {
    if policy.trust.enforced() {
        return Err(SandboxError::Refused(
            "the policy's [trust] section checks images of moat's store; a root filesystem the engine prepared carries no signature moat can check".into(),
        ));
    }
    let prepared = PreparedImage::from_dirs(image, oci.lowers.clone());
    let user = match oci.user {
        Some((uid, gid)) => prepared.user(&format!("{uid}:{gid}"))?,
        None => prepared.user(&policy.process.user)?,
    };
    let env = spec::environment(env, &[], &user.home, policy.network.gateway_port)?;
    let cwd = Some(oci.cwd.clone()).filter(|c| !c.is_empty()).unwrap_or_else(|| policy.filesystem.workspace.clone());
    Ok(Resolved { image: prepared, user, args: args.to_vec(), env, cwd })
}

/// What a sandbox start begins before anything else, so that it runs while
/// the sandbox is recorded and its image resolved.
pub struct Early {
    launcher: ForkedLauncher,
    cgroup_warm: std::thread::JoinHandle<()>,
    net: NetSide,
}

/// Forks the launcher (first: the process must still be single-threaded;
/// it prepares itself and waits for its plan), moves both into the
/// supervisor's own memory cgroup (which also starts the cgroup lock's
/// grace period the launcher's first cgroup write would wait for) and
/// the network namespace with the gateway's socket and the CA of sandbox
/// `name` (or, with `pod`, that running sandbox's namespace and CA).
/// Nothing is written to any sandbox's state.
pub fn begin(name: &str, policy: &Policy, pod: Option<&oci::Join>) -> Result<Early, SandboxError> {
    // The pod first (it starts no thread): a refusal must not leave a forked
    // launcher holding the caller's descriptors (its ready channel).
    let pod = pod.map(PodNet::open).transpose()?;
    Ok(begin_after(ForkedLauncher::fork()?, name, policy, pod))
}

/// The rest of `begin`, once the launcher is forked.
fn begin_after(launcher: ForkedLauncher, name: &str, policy: &Policy, pod: Option<PodNet>) -> Early {
    let net = match pod {
        Some(pod) => NetSide::Pod(pod),
        None => NetSide::Own(NetStart::spawn(
            name,
            policy.network.gateway_port,
            net::transparent_ports(&policy.network, &[]),
        )),
    };
    let cgroup_warm = host_cgroup::start(name, policy.supervisor.memory_max_mib, launcher.pid());
    Early { launcher, cgroup_warm, net }
}

/// `supervise` for a detached sandbox: its stdout and stderr go through
/// pipes to the log the supervisor writes (`logs`), with the supervisor's
/// own lines marked as its. Call single-threaded (it forks the launcher).
pub fn supervise_detached(paths: &Paths, ready: Option<fs::File>) -> Result<i32, SandboxError> {
    let mut log = None;
    let begun = (|| {
        let req: RunRequest =
            serde_json::from_slice(&fs::read(paths.run.join("request.json")).map_err(io("request.json"))?)
                .map_err(|e| SandboxError::Refused(format!("request.json: {e}")))?;
        let refused = |e: logs::LogError| SandboxError::Refused(moat_builder::errors::chain(&e));
        let pipes = logs::SandboxPipes::install().map_err(refused)?;
        let launcher = ForkedLauncher::fork();
        log = Some(pipes.start(&paths.log_file()).map_err(refused)?);
        let pod = req.oci.as_ref().and_then(|o| o.join.as_ref()).map(PodNet::open).transpose()?;
        Ok(begin_after(launcher?, &paths.name, &req.policy, pod))
    })();
    let result = match begun {
        Ok(early) => supervise(paths, ready, Some(early)),
        Err(e) => {
            let mut ready = ready;
            failed(paths, &mut ready, &e);
            let _ = fs::remove_dir_all(&paths.run);
            Err(e)
        }
    };
    // The supervisor's last lines, on its own (marked) stream.
    let mut own = std::io::stderr();
    let _ = match &result {
        Ok(code) => writeln!(own, "sandbox exited with code {code}"),
        Err(e) => writeln!(own, "error: {}", crate::visible::field(&moat_builder::errors::chain(e))),
    };
    if let Some(log) = log {
        log.finish();
    }
    result
}

/// The name a sandbox gets: the requested one, or one made from the image.
pub fn name_for(req: &RunRequest) -> String {
    req.name.clone().unwrap_or_else(|| generated_name(&req.image))
}

/// Runs the sandbox recorded under `paths` until it exits; returns its exit
/// code. `ready` (the detached CLI's pipe) receives `ok` once it runs, or the
/// error. `early`: what `begin` started for this sandbox, if the caller did.
pub fn supervise(paths: &Paths, ready: Option<fs::File>, early: Option<Early>) -> Result<i32, SandboxError> {
    let mut ready = ready;
    let result = supervise_inner(paths, &mut ready, early);
    if let Err(e) = &result {
        failed(paths, &mut ready, e);
    }
    let _ = fs::remove_dir_all(&paths.run);
    result
}

/// A sandbox that could not run: the waiting CLI is told why, the record says exited.
fn failed(paths: &Paths, ready: &mut Option<fs::File>, e: &SandboxError) {
    if let Some(r) = ready.as_mut() {
        let _ = writeln!(r, "error: {}", moat_builder::errors::chain(e));
    }
    let _ = state::update(paths, |r| {
        r.status = Status::Exited;
        r.exit_code.get_or_insert(125);
    });
}

/// Records this process as the sandbox's supervisor, if it is not already
/// (a detached sandbox was recorded by its `run -d`).
fn claim(paths: &Paths) -> Result<(), SandboxError> {
    let me = ProcId::of(std::process::id() as i32);
    if state::load(paths)?.supervisor != me {
        state::update(paths, |r| r.supervisor = me)?;
    }
    Ok(())
}

fn supervise_inner(paths: &Paths, ready: &mut Option<fs::File>, early: Option<Early>) -> Result<i32, SandboxError> {
    claim(paths)?;
    let req: RunRequest =
        serde_json::from_slice(&fs::read(paths.run.join("request.json")).map_err(io("request.json"))?)
            .map_err(|e| SandboxError::Refused(format!("request.json: {e}")))?;
    let Early { mut launcher, cgroup_warm, mut net } = match early {
        Some(e) => e,
        None => begin(&paths.name, &req.policy, req.oci.as_ref().and_then(|o| o.join.as_ref()))?,
    };
    let policy = &req.policy;
    let rec = state::load(paths)?;
    // The sandbox's own host uid, on a thread of its own: its check that no
    // host account has it is a name-service lookup (up to 1.5 ms of CPU, `host_uid`).
    let host_id = {
        let paths = paths.clone();
        std::thread::spawn(move || host_uid::claim(&paths))
    };
    // Workspace: moat's own, in an image of the policy's size (a `--rm`
    // sandbox's is not durable), mounted while the image is resolved and
    // the spec and plan are written, then given to the image's user.
    let durability = if req.ephemeral { Durability::Ephemeral } else { Durability::Kept };
    let (home, fsp, owned) = (&paths.home, &policy.filesystem, rec.workspace_owned);
    let workspace = workspace_limit::Preparing::start(&paths.name, home, &rec.workspace, owned, fsp, durability);
    // Who connected each socket, judged while the caller waits in connect(2):
    // the watch must listen before the launcher hands it the sandbox's filter.
    let connects = std::sync::Arc::new(crate::gateway::connects::Connects::default());
    // Transparent egress: the ports it takes, none the sandbox may bind.
    let transparent = net::transparent_ports(&policy.network, &publish::sandbox_ports(&req.publish, &req.expose));
    net.start_gateway(
        paths,
        &policy.network,
        gateway_limits(&policy.supervisor),
        connects.clone(),
        transparent.clone(),
    );
    let judged: Vec<u16> = std::iter::once(policy.network.gateway_port).chain(transparent.iter().copied()).collect();
    net.watch_connects(paths, connects, judged)?;
    let prepared = match &req.oci {
        Some(oci) => resolve_oci(oci, &req.image, policy, &req.args, &req.env),
        None => Store::open_existing(&req.store)
            .map_err(SandboxError::from)
            .and_then(|s| resolve(&s, &req.image, policy, &req.args, &req.env)),
    };
    let launch_net = net.ready();
    let r = prepared?;
    let LaunchNet { netns_path, ca_pem } = launch_net?;
    let mut env = r.env.clone();
    for (k, v) in rootfs::CA_ENV {
        if !env.iter().any(|kv| kv.split_once('=').is_some_and(|(key, _)| key == *k)) {
            env.push(format!("{k}={v}"));
        }
    }
    fs::create_dir_all(paths.rootfs()).map_err(io("rootfs mount point"))?;
    fs::create_dir_all(paths.top_layer()).map_err(io("top layer mount point"))?;
    // The sandbox runs as a host uid of its own; its workspace keeps its
    // owner on disk and is shown to the sandbox as its own (idmapped).
    // Published ports listen on the host before the sandbox starts (a port
    // in use fails the run); they relay once the gateway runs.
    let published = publish::Listeners::bind(&req.publish, req.publish_token.as_deref())?;
    let host_id = host_id
        .join()
        .map_err(|_| SandboxError::Refused("claiming a host uid for the sandbox: the thread panicked".into()))?
        .map_err(io("claiming a host uid for the sandbox"))?;
    let owner = workspace_owner(&rec, &r.user)?;
    let staging = paths.run.join("workspace");
    fs::create_dir_all(&staging).map_err(io("workspace mount point"))?;
    let user = rootfs::SandboxUser { uid: host_id, gid: host_id, home: r.user.home.clone() };
    let accounts = |file: &str, image_id: u32| -> Option<String> {
        let text = r.image.read_file(file).ok().flatten()?;
        Some(rootfs::remap_accounts(&String::from_utf8_lossy(&text), image_id, host_id))
    };
    let params = SpecParams {
        rootfs: paths.rootfs().display().to_string(),
        args: r.args.clone(),
        env,
        cwd: r.cwd.clone(),
        user: user.clone(),
        hostname: paths.name.clone(),
        workspace_host: staging.clone(),
        netns_path: Some(netns_path),
        cgroups_path: Some(format!("/moat/{}", paths.name)),
        terminal: req.tty,
        seccomp: None,
    };
    let spec = spec::build(policy, &params)?;
    let spec_json = serde_json::to_vec_pretty(&spec).map_err(|e| SandboxError::Refused(e.to_string()))?;
    state::write_runtime(&paths.bundle().join("config.json"), &spec_json)?;
    let plan = LaunchPlan {
        container_id: paths.container_id(),
        state_root: Paths::containers_root(),
        bundle: paths.bundle(),
        rootfs: paths.rootfs(),
        lowers: r.image.layers.iter().rev().cloned().collect(),
        top_layer: paths.top_layer(),
        top: TopLayer {
            workspace: policy.filesystem.workspace.clone(),
            hosts: rootfs::hosts_file(&paths.name),
            ca_pem,
            passwd: accounts("etc/passwd", r.user.uid),
            group: accounts("etc/group", r.user.gid),
        },
        cache_dir: LayerCache::default_location().dir().to_path_buf(),
        guard: GuardPlan {
            landlock: LandlockPlan {
                bind_ports: publish::sandbox_ports(&req.publish, &req.expose),
                // DNS over TCP, and the transparent ports.
                transparent_ports: std::iter::once(53).chain(transparent.iter().copied()).collect(),
                ..guard_plan(policy).landlock
            },
            ..guard_plan(policy)
        },
        supervisor_pid: std::process::id(),
        run_dir: paths.run.clone(),
        tty: req.tty,
        interactive: req.interactive,
        uid: user.uid,
        gid: user.gid,
        cwd: r.cwd.clone(),
        workspace: Some(WorkspaceMap { source: rec.workspace.clone(), staging, owner, sandbox: (user.uid, user.gid) }),
    };
    let plan_json = serde_json::to_vec_pretty(&plan).map_err(|e| SandboxError::Refused(e.to_string()))?;
    state::write_runtime(&paths.launch_plan(), &plan_json)?;
    fs::create_dir_all(Paths::containers_root()).map_err(io("containers root"))?;

    // The workspace's image was mounted meanwhile on its own thread: waited
    // for only now, so the spec and plan above overlap it.
    let disk = workspace.finish((r.user.uid, r.user.gid))?;
    if req.oci.as_ref().is_some_and(|o| o.gated) {
        engine::wait_for_start(ready)?;
    }
    let report = launcher.start(&plan)?;
    sys::forward_stop_signals(launcher.pid());
    let mut report = BufReader::new(report);
    let mut line = String::new();
    let _ = report.read_line(&mut line);
    // No gateway: the sandbox could reach nothing. Dropping the launcher
    // stops it rather than reporting it running.
    let own = net.finish()?;
    let relay = match &own {
        Some((netns, gateway)) => Some(publish::serve_ports(netns, gateway, published, &req, paths)?),
        None => None,
    };
    if let Some(pid) = line.trim().strip_prefix("started ").and_then(|p| p.parse::<i32>().ok()) {
        state::update(paths, |rec| {
            rec.status = Status::Running;
            rec.image_digest = r.image.manifest_digest.as_ref().map(|d| d.to_string()).unwrap_or_default();
            rec.supervisor = ProcId::of(std::process::id() as i32);
            rec.init = ProcId::of(pid);
            rec.started = Some(state::now());
        })?;
        tracing::info!(event = "sandbox_started", sandbox = %paths.name, pid, "sandbox running");
        if let Some(r) = ready.as_mut() {
            let _ = writeln!(r, "ok");
        }
        *ready = None;
    }
    let _ = cgroup_warm.join();
    // `exited CODE`: the sandbox's init is gone and the launcher has let go
    // of the workspace. The exit is recorded (nothing reads the workspace as
    // a running sandbox's any more) and the workspace unmounted (a `--rm`
    // one's image deleted) while the launcher removes the container.
    // Without that line (the launcher died), only once it is reaped.
    let mut exited = String::new();
    let _ = report.read_line(&mut exited);
    let early_code = exited.trim().strip_prefix("exited ").and_then(|c| c.parse::<i32>().ok());
    let disk = match early_code {
        Some(code) if !line.is_empty() => {
            record_exit(paths, code)?;
            if req.ephemeral && disk.is_some() {
                let _ = fs::remove_file(workspace_limit::Disk::of(&paths.home).image());
            }
            drop(disk);
            None
        }
        _ => disk,
    };
    let code = launcher.wait().map_err(io("waiting for the launcher"))?;
    sys::stop_forwarding();
    drop(disk); // unmounted on the host: the sandbox is gone
    if line.is_empty() {
        return Err(SandboxError::Refused(format!(
            "the sandbox failed to start (launcher exit code {code}); see the messages above"
        )));
    }
    drop(relay);
    drop(own);
    if early_code != Some(code) {
        record_exit(paths, code)?;
    }
    tracing::info!(event = "sandbox_exited", sandbox = %paths.name, code, "sandbox exited");
    Ok(code)
}

/// Records that the sandbox exited with `code`.
fn record_exit(paths: &Paths, code: i32) -> Result<(), SandboxError> {
    state::update(paths, |rec| {
        rec.status = Status::Exited;
        rec.exit_code = Some(code);
    })?;
    Ok(())
}

/// Who owns the workspace on disk, and so whose files the sandbox sees as
/// its own: moat's workspace belongs to the image's user (as before
/// sandboxes had uids of their own), an operator's `--workspace DIR` to
/// DIR's owner, unless that is root (the sandbox never acts as root on the
/// host: then the image's user, whose files DIR's modes govern).
fn workspace_owner(rec: &Record, image_user: &rootfs::SandboxUser) -> Result<(u32, u32), SandboxError> {
    use std::os::unix::fs::MetadataExt;
    if rec.workspace_owned {
        return Ok((image_user.uid, image_user.gid));
    }
    let m = fs::metadata(&rec.workspace).map_err(io(rec.workspace.display().to_string()))?;
    Ok(if m.uid() == 0 { (image_user.uid, image_user.gid) } else { (m.uid(), m.gid()) })
}

/// The gateway's bounds from the policy's `[supervisor]` section.
fn gateway_limits(s: &crate::policy::Supervisor) -> crate::gateway::Limits {
    crate::gateway::Limits {
        body_timeout: Duration::from_secs(s.request_body_timeout_secs),
        body_buffer: usize::try_from(s.body_buffer_mib << 20).unwrap_or(usize::MAX),
        idle_timeout: Duration::from_secs(s.keepalive_idle_secs),
        ..Default::default()
    }
}

pub fn guard_plan(policy: &Policy) -> GuardPlan {
    GuardPlan {
        landlock: LandlockPlan::from_policy(policy),
        require_cap_drop: policy.process.require_cap_drop,
        rlimit_nproc: policy.process.rlimit_nproc,
        rlimit_nofile: policy.process.rlimit_nofile,
        rlimit_core: policy.process.rlimit_core,
    }
}

/// Reads the launch plan of a running sandbox (for `exec`).
pub fn launch_plan(paths: &Paths) -> Result<LaunchPlan, SandboxError> {
    let rec = state::load(paths)?;
    if rec.live_status() != Status::Running {
        return Err(SandboxError::NotRunning(paths.name.clone()));
    }
    read_launch_plan(paths)
}

/// The launch plan in the runtime directory, for a caller that has checked
/// the sandbox runs.
pub(crate) fn read_launch_plan(paths: &Paths) -> Result<LaunchPlan, SandboxError> {
    let bytes = fs::read(paths.launch_plan()).map_err(io(paths.launch_plan().display().to_string()))?;
    serde_json::from_slice(&bytes).map_err(|e| SandboxError::Refused(format!("launch.json: {e}")))
}

/// SIGTERM to the sandbox, SIGKILL after `grace`; waits for the supervisor
/// to finish. A sandbox still starting is killed outright (supervisor,
/// launcher and what it made so far) and recorded as exited.
pub fn stop(paths: &Paths, grace: Duration) -> Result<bool, SandboxError> {
    let rec = state::load(paths)?;
    match rec.live_status() {
        Status::Running => {}
        Status::Created => return reap::stop_starting(paths, &rec).map(|()| true),
        _ => return Ok(false),
    }
    // A frozen task acts on no signal until it is thawed.
    reap::thaw(&paths.name);
    let gone = || !rec.supervisor.is_some_and(|s| s.alive());
    if let Some(init) = rec.init {
        init.signal(libc::SIGTERM);
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline && init.alive() {
            std::thread::sleep(Duration::from_millis(20));
        }
        init.signal(libc::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && !gone() {
        std::thread::sleep(Duration::from_millis(20));
    }
    if !gone() {
        if let Some(s) = rec.supervisor {
            s.signal(libc::SIGTERM);
        }
    }
    Ok(true)
}

/// Removes a sandbox's state; the workspace stays unless `workspace`. A
/// running or starting sandbox is refused, naming its state, unless
/// `force`, which stops it first (`reap::quiesce`: nothing of it, its
/// supervisor included, outlives the record). A record that does not
/// parse is removed only with `force`; moat's own workspace is then the
/// one in the sandbox's directory.
pub fn remove(paths: &Paths, force: bool, workspace: bool) -> Result<(), SandboxError> {
    let rec = match state::load(paths) {
        Ok(r) => Some(r),
        Err(e) if e.is_corrupt() && force => None,
        Err(e) if e.is_corrupt() => return Err(SandboxError::Corrupt { name: paths.name.clone(), source: e }),
        Err(e) => return Err(e.into()),
    };
    reap::quiesce(paths, rec.as_ref(), force)?;
    reap::remove_runtime(paths);
    host_uid::release(paths);
    let _ = fs::remove_dir_all(&paths.run);
    let (ws, owned) = match &rec {
        Some(r) => (r.workspace.clone(), r.workspace_owned),
        None => (paths.default_workspace(), true),
    };
    workspace_limit::release(&paths.home, &ws);
    let keep = owned && !workspace;
    // The record goes last: a remove cut short leaves it, so it can be run again.
    let state_file = paths.state_file();
    for e in fs::read_dir(&paths.home).map_err(io(paths.home.display().to_string()))?.flatten() {
        let p = e.path();
        if p == state_file || (keep && (p == ws || workspace_limit::is_image_part(&p))) {
            continue;
        }
        let res = if p.is_dir() && !p.is_symlink() { fs::remove_dir_all(&p) } else { fs::remove_file(&p) };
        res.map_err(io(p.display().to_string()))?;
    }
    match fs::remove_file(&state_file) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(SandboxError::Io { what: state_file.display().to_string(), source: e })
        }
        _ => {}
    }
    if !keep {
        fs::remove_dir(&paths.home).map_err(io(paths.home.display().to_string()))?;
    }
    Ok(())
}
