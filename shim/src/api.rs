//! The containerd shim v2 boundary: the only module that names the
//! `containerd-shim` crate (0.11, task API v2 for containerd 1.6/1.7). It
//! starts and deletes shim instances, serves the task service by
//! translating each request to [`Table`] and each answer back, and
//! publishes task events. A later task v3 build (crate 0.12) replaces this
//! file alone. Guards the engine's view: every error reaches containerd as
//! a gRPC status with the reason, and exits are reported from the kernel's
//! reaping (the crate's SIGCHLD handler), never guessed.
#![forbid(unsafe_code)]
use crate::child::Stdio;
use crate::containers::{Exit, ShimError, Status, Table};
use containerd_shim::api::{self, Empty};
use containerd_shim::monitor::{monitor_subscribe, Subject, Topic};
use containerd_shim::protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskPaused, TaskResumed, TaskStart,
};
use containerd_shim::protos::protobuf::well_known_types::any::Any;
use containerd_shim::protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim::protos::protobuf::{Message, MessageDyn};
use containerd_shim::protos::ttrpc::{self, Code};
use containerd_shim::publisher::RemotePublisher;
use containerd_shim::{Config, DeleteResponse, ExitSignal, Flags, StartOpts, TtrpcContext, TtrpcResult};
use moat_supervisor::sandbox::oci::RootMount;
use std::os::unix::fs::FileTypeExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// containerd's name for this runtime.
pub const RUNTIME: &str = "io.containerd.moat.v1";

/// Runs the shim as containerd asks (`start`, `delete`, or the server).
pub fn run() {
    containerd_shim::run::<Service>(RUNTIME, None);
}

fn rpc_status(code: Code, msg: impl ToString) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg))
}

fn status(e: ShimError) -> ttrpc::Error {
    let code = match &e {
        ShimError::NotFound(_) => Code::NOT_FOUND,
        ShimError::Precondition(_) => Code::FAILED_PRECONDITION,
        ShimError::Invalid(_) | ShimError::Bundle(_) => Code::INVALID_ARGUMENT,
        _ => Code::INTERNAL,
    };
    rpc_status(code, moat_builder::errors::chain(&e))
}

fn timestamp(t: SystemTime) -> Timestamp {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let mut ts = Timestamp::new();
    ts.seconds = i64::try_from(d.as_secs()).unwrap_or(i64::MAX);
    ts.nanos = i32::try_from(d.subsec_nanos()).unwrap_or_default();
    ts
}

fn proc_status(s: Status) -> api::Status {
    match s {
        Status::Created => api::Status::CREATED,
        Status::Running => api::Status::RUNNING,
        Status::Paused => api::Status::PAUSED,
        Status::Stopped => api::Status::STOPPED,
    }
}

/// One shim instance: its containers and where its events go.
#[derive(Clone)]
pub struct Service {
    namespace: String,
    /// The socket containerd reaches this shim on (`-socket`).
    socket: PathBuf,
    exit: Arc<ExitSignal>,
    table: Arc<Table>,
    events: Arc<Mutex<Option<RemotePublisher>>>,
}

impl Service {
    fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        let g = self.events.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = g.as_ref() {
            if let Err(e) = p.publish(ttrpc::context::with_timeout(0), topic, &self.namespace, event) {
                tracing::warn!(topic, error = %e, "publishing a task event to containerd");
            }
        }
    }

    /// Reports each exit of a child the crate's SIGCHLD handler reaps.
    fn watch_exits(&self) {
        let Ok(sub) = monitor_subscribe(Topic::Pid) else {
            tracing::error!("subscribing to child exits failed: exits will not be reported");
            return;
        };
        let me = self.clone();
        let spawned = std::thread::Builder::new().name("shim-exits".into()).spawn(move || {
            for ev in sub.rx.iter() {
                let Subject::Pid(pid) = ev.subject else { continue };
                let Ok(pid) = u32::try_from(pid) else { continue };
                if let Some(r) = me.table.exited(pid, ev.exit_code) {
                    let e = TaskExit {
                        container_id: r.container.clone(),
                        id: if r.exec.is_empty() { r.container } else { r.exec },
                        pid: r.pid,
                        exit_status: r.exit.code,
                        exited_at: Some(timestamp(r.exit.at)).into(),
                        ..Default::default()
                    };
                    me.publish("/tasks/exit", Box::new(e));
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "starting the exit watcher failed: exits will not be reported");
        }
    }
}

impl containerd_shim::Shim for Service {
    type T = Service;

    fn new(_runtime_id: &str, args: &Flags, _config: &mut Config) -> Self {
        Service {
            namespace: args.namespace.clone(),
            socket: PathBuf::from(args.socket.strip_prefix("unix://").unwrap_or(&args.socket)),
            exit: Arc::new(ExitSignal::default()),
            table: Arc::new(Table::default()),
            events: Arc::new(Mutex::new(None)),
        }
    }

    /// One shim per pod: the containers of a pod (CRI's sandbox-id
    /// annotation) share the shim the pod's sandbox container started.
    fn start_shim(&mut self, opts: StartOpts) -> Result<String, containerd_shim::Error> {
        let bundle = std::env::current_dir().map_err(|e| containerd_shim::Error::Other(e.to_string()))?;
        let grouping = crate::bundle::group(&bundle, &opts.id);
        let (_pid, address) = containerd_shim::spawn(opts, &grouping, Vec::new())?;
        // A restarted containerd reconnects through the bundle's `address`
        // file; without it, it takes the shim for dead and cleans up
        // (removes) every running sandbox.
        containerd_shim::util::write_address(&address)?;
        Ok(address)
    }

    /// containerd's clean-up after a shim that died: whatever is left of
    /// the sandbox (cwd is the bundle, the id the container's) is removed.
    fn delete_shim(&mut self) -> Result<DeleteResponse, containerd_shim::Error> {
        let id = containerd_shim::parse(&std::env::args_os().skip(1).collect::<Vec<_>>())?.id;
        crate::cleanup(&self.namespace, &id)
            .map_err(|e| containerd_shim::Error::Other(moat_builder::errors::chain(&e)))?;
        Ok(DeleteResponse {
            exit_status: 137,
            exited_at: Some(timestamp(SystemTime::now())).into(),
            ..Default::default()
        })
    }

    fn wait(&mut self) {
        self.exit.wait();
    }

    fn create_task_service(&self, publisher: RemotePublisher) -> Self::T {
        *self.events.lock().unwrap_or_else(|p| p.into_inner()) = Some(publisher);
        self.watch_exits();
        self.clone()
    }
}

fn stdio(stdin: &str, stdout: &str, stderr: &str, terminal: bool) -> Stdio {
    Stdio { stdin: stdin.into(), stdout: stdout.into(), stderr: stderr.into(), terminal }
}

fn exit_fields(e: Exit) -> (u32, Timestamp) {
    (e.code, timestamp(e.at))
}

impl containerd_shim::Task for Service {
    fn create(&self, _ctx: &TtrpcContext, req: api::CreateTaskRequest) -> TtrpcResult<api::CreateTaskResponse> {
        let mounts: Vec<RootMount> = req
            .rootfs
            .iter()
            .map(|m| RootMount { kind: m.type_.clone(), source: m.source.clone(), options: m.options.clone() })
            .collect();
        let io = stdio(&req.stdin, &req.stdout, &req.stderr, req.terminal);
        let pid =
            self.table.create(&self.namespace, &req.id, PathBuf::from(&req.bundle), &mounts, io).map_err(status)?;
        let ev = TaskCreate { container_id: req.id.clone(), bundle: req.bundle.clone(), pid, ..Default::default() };
        self.publish("/tasks/create", Box::new(ev));
        Ok(api::CreateTaskResponse { pid, ..Default::default() })
    }

    fn start(&self, _ctx: &TtrpcContext, req: api::StartRequest) -> TtrpcResult<api::StartResponse> {
        let pid = self.table.start(&req.id, &req.exec_id).map_err(status)?;
        if req.exec_id.is_empty() {
            self.publish(
                "/tasks/start",
                Box::new(TaskStart { container_id: req.id.clone(), pid, ..Default::default() }),
            );
        } else {
            let ev = TaskExecStarted {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                pid,
                ..Default::default()
            };
            self.publish("/tasks/exec-started", Box::new(ev));
        }
        Ok(api::StartResponse { pid, ..Default::default() })
    }

    fn state(&self, _ctx: &TtrpcContext, req: api::StateRequest) -> TtrpcResult<api::StateResponse> {
        let s = self.table.state(&req.id, &req.exec_id).map_err(status)?;
        let (exit_status, exited_at) = s.exit.map(exit_fields).unzip();
        Ok(api::StateResponse {
            id: req.id,
            bundle: s.bundle.display().to_string(),
            pid: s.pid,
            status: proc_status(s.status).into(),
            stdin: s.stdio.stdin,
            stdout: s.stdio.stdout,
            stderr: s.stdio.stderr,
            terminal: s.stdio.terminal,
            exit_status: exit_status.unwrap_or_default(),
            exited_at: exited_at.into(),
            exec_id: req.exec_id,
            ..Default::default()
        })
    }

    fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<Empty> {
        let sig = i32::try_from(req.signal).map_err(|_| rpc_status(Code::INVALID_ARGUMENT, "bad signal"))?;
        self.table.kill(&req.id, &req.exec_id, sig, req.all).map_err(status)?;
        Ok(Empty::new())
    }

    fn wait(&self, _ctx: &TtrpcContext, req: api::WaitRequest) -> TtrpcResult<api::WaitResponse> {
        let (exit_status, at) = exit_fields(self.table.wait(&req.id, &req.exec_id).map_err(status)?);
        Ok(api::WaitResponse { exit_status, exited_at: Some(at).into(), ..Default::default() })
    }

    fn delete(&self, _ctx: &TtrpcContext, req: api::DeleteRequest) -> TtrpcResult<api::DeleteResponse> {
        let (pid, exit) = self.table.delete(&req.id, &req.exec_id).map_err(status)?;
        let (exit_status, at) = exit_fields(exit);
        if req.exec_id.is_empty() {
            let ev = TaskDelete {
                container_id: req.id.clone(),
                pid,
                exit_status,
                exited_at: Some(at.clone()).into(),
                ..Default::default()
            };
            self.publish("/tasks/delete", Box::new(ev));
        }
        Ok(api::DeleteResponse { pid, exit_status, exited_at: Some(at).into(), ..Default::default() })
    }

    fn exec(&self, _ctx: &TtrpcContext, req: api::ExecProcessRequest) -> TtrpcResult<Empty> {
        let spec: &Any = req.spec.as_ref().ok_or_else(|| rpc_status(Code::INVALID_ARGUMENT, "no process spec"))?;
        let process: oci_spec::runtime::Process = serde_json::from_slice(&spec.value)
            .map_err(|e| rpc_status(Code::INVALID_ARGUMENT, format!("the exec's process spec: {e}")))?;
        let io = stdio(&req.stdin, &req.stdout, &req.stderr, req.terminal);
        self.table.add_exec(&req.id, &req.exec_id, process, io).map_err(status)?;
        let ev = TaskExecAdded { container_id: req.id.clone(), exec_id: req.exec_id.clone(), ..Default::default() };
        self.publish("/tasks/exec-added", Box::new(ev));
        Ok(Empty::new())
    }

    fn pids(&self, _ctx: &TtrpcContext, req: api::PidsRequest) -> TtrpcResult<api::PidsResponse> {
        let processes = self
            .table
            .pids(&req.id)
            .map_err(status)?
            .into_iter()
            .map(|pid| containerd_shim::protos::api::ProcessInfo { pid, ..Default::default() })
            .collect();
        Ok(api::PidsResponse { processes, ..Default::default() })
    }

    fn pause(&self, _ctx: &TtrpcContext, req: api::PauseRequest) -> TtrpcResult<Empty> {
        self.table.pause(&req.id, true).map_err(status)?;
        self.publish("/tasks/paused", Box::new(TaskPaused { container_id: req.id.clone(), ..Default::default() }));
        Ok(Empty::new())
    }

    fn resume(&self, _ctx: &TtrpcContext, req: api::ResumeRequest) -> TtrpcResult<Empty> {
        self.table.pause(&req.id, false).map_err(status)?;
        self.publish("/tasks/resumed", Box::new(TaskResumed { container_id: req.id.clone(), ..Default::default() }));
        Ok(Empty::new())
    }

    fn resize_pty(&self, _ctx: &TtrpcContext, req: api::ResizePtyRequest) -> TtrpcResult<Empty> {
        let size =
            |v: u32| u16::try_from(v).map_err(|_| rpc_status(Code::INVALID_ARGUMENT, "terminal size out of range"));
        self.table.resize(&req.id, &req.exec_id, size(req.width)?, size(req.height)?).map_err(status)?;
        Ok(Empty::new())
    }

    /// Stdin ends at the engine's end of file on its FIFO, or here: CRI
    /// keeps the FIFO open for attach and closes stdin with CloseIO.
    fn close_io(&self, _ctx: &TtrpcContext, req: api::CloseIORequest) -> TtrpcResult<Empty> {
        if req.stdin {
            tracing::debug!(container = %req.id, exec = %req.exec_id, "CloseIO: stdin closed");
            self.table.close_stdin(&req.id, &req.exec_id).map_err(status)?;
        }
        Ok(Empty::new())
    }

    fn stats(&self, _ctx: &TtrpcContext, req: api::StatsRequest) -> TtrpcResult<api::StatsResponse> {
        use containerd_shim::protos::cgroups::metrics::{CPUStat, CPUUsage, MemoryEntry, MemoryStat, Metrics};
        let u = self.table.usage(&req.id).map_err(status)?;
        let cpu = CPUStat {
            usage: Some(CPUUsage { total: u.cpu_ns.unwrap_or_default(), ..Default::default() }).into(),
            ..Default::default()
        };
        let memory = MemoryStat {
            usage: Some(MemoryEntry { usage: u.memory_bytes.unwrap_or_default(), ..Default::default() }).into(),
            ..Default::default()
        };
        let m = Metrics { cpu: Some(cpu).into(), memory: Some(memory).into(), ..Default::default() };
        let value = m.write_to_bytes().map_err(|e| rpc_status(Code::INTERNAL, e.to_string()))?;
        let any = Any { type_url: "io.containerd.cgroups.v1.Metrics".into(), value, ..Default::default() };
        Ok(api::StatsResponse { stats: Some(any).into(), ..Default::default() })
    }

    fn connect(&self, _ctx: &TtrpcContext, req: api::ConnectRequest) -> TtrpcResult<api::ConnectResponse> {
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: self.table.init_pid(&req.id),
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }

    fn shutdown(&self, _ctx: &TtrpcContext, req: api::ShutdownRequest) -> TtrpcResult<Empty> {
        // `now` or not: a pod's shim ends only with its last container
        // (runc's shim ignores `now` likewise).
        let _ = req.now;
        if self.table.is_idle() {
            // The socket goes first: a container of the same id started
            // while this shim winds down gets a shim of its own at once
            // (containerd-shim's start would otherwise wait up to 1 s on a
            // socket that is still there, or hand it this dying one).
            if self.socket.metadata().is_ok_and(|m| m.file_type().is_socket()) {
                let _ = std::fs::remove_file(&self.socket);
            }
            // containerd-shim removes the socket `address` names when the
            // shim exits: by then it may be a new shim's of the same id.
            let _ = std::fs::remove_file("address");
            self.exit.signal();
        }
        Ok(Empty::new())
    }
}
