//! The kubelet's side of CRI for tests/shim_cri.rs: the `k8s-cri` crate's
//! generated `runtime.v1` client (tonic) over containerd's unix socket,
//! each call blocking with a deadline. A hung containerd or shim fails the
//! test naming the call instead of hanging the suite.
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tonic::transport::{Channel, Endpoint, Uri};

/// How long one CRI call may take.
const LIMIT: Duration = Duration::from_secs(60);

/// NamespaceMode values (runtime.v1): the pod's, or the container's own.
pub const NS_POD: i32 = 0;
pub const NS_CONTAINER: i32 = 1;

pub struct Client {
    rt: tokio::runtime::Runtime,
    rs: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

/// A pod as the tests describe it.
pub struct PodSpec<'a> {
    pub name: &'a str,
    /// Where CRI writes the containers' output (`NAME.log` each).
    pub log_dir: PathBuf,
    pub uid: String,
    pub annotations: HashMap<String, String>,
    pub handler: &'a str,
}

impl Client {
    /// A client of the CRI service on `sock` (connects lazily).
    pub fn new(sock: &Path) -> Client {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("a tokio runtime for the CRI client");
        let path: PathBuf = sock.to_path_buf();
        let channel = rt.block_on(async move {
            Endpoint::try_from("http://[::]:50051").expect("endpoint").connect_with_connector_lazy(tower::service_fn(
                move |_: Uri| {
                    let path = path.clone();
                    async move {
                        let s = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
                    }
                },
            ))
        });
        Client { rt, rs: RuntimeServiceClient::new(channel.clone()), images: ImageServiceClient::new(channel) }
    }

    fn call<T, F>(&self, what: &str, f: impl FnOnce(RuntimeServiceClient<Channel>) -> F) -> Result<T, tonic::Status>
    where
        F: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    {
        let rs = self.rs.clone();
        let fut = f(rs);
        match self.rt.block_on(async move { tokio::time::timeout(LIMIT, fut).await }) {
            Ok(r) => r.map(tonic::Response::into_inner),
            Err(_) => Err(tonic::Status::deadline_exceeded(format!("{what} did not answer within {LIMIT:?}"))),
        }
    }

    /// The id (config digest) CRI's image store has for `image` (None: unknown).
    pub fn image_id(&self, image: &str) -> Result<Option<String>, tonic::Status> {
        let req =
            ImageStatusRequest { image: Some(ImageSpec { image: image.into(), ..Default::default() }), verbose: false };
        let mut c = self.images.clone();
        let fut = async move { c.image_status(req).await };
        match self.rt.block_on(async move { tokio::time::timeout(LIMIT, fut).await }) {
            Ok(r) => r.map(|r| r.into_inner().image.map(|i| i.id)),
            Err(_) => Err(tonic::Status::deadline_exceeded(format!("ImageStatus did not answer within {LIMIT:?}"))),
        }
    }

    pub fn version(&self) -> Result<VersionResponse, tonic::Status> {
        self.call("Version", |mut c| async move { c.version(VersionRequest { version: "v1".into() }).await })
    }

    pub fn status(&self) -> Result<StatusResponse, tonic::Status> {
        self.call("Status", |mut c| async move { c.status(StatusRequest { verbose: false }).await })
    }

    /// The pod's config as a kubelet writes it (own pid namespace per
    /// container, the pod's network and IPC).
    pub fn pod_config(p: &PodSpec) -> PodSandboxConfig {
        PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: p.name.into(),
                uid: p.uid.clone(),
                namespace: "default".into(),
                attempt: 0,
            }),
            hostname: p.name.into(),
            log_directory: p.log_dir.display().to_string(),
            annotations: p.annotations.clone(),
            labels: HashMap::from([("app".to_string(), p.name.to_string())]),
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: NS_POD,
                        pid: NS_CONTAINER,
                        ipc: NS_POD,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    pub fn run_pod(&self, p: &PodSpec) -> Result<String, tonic::Status> {
        let req = RunPodSandboxRequest { config: Some(Self::pod_config(p)), runtime_handler: p.handler.into() };
        self.call("RunPodSandbox", |mut c| async move { c.run_pod_sandbox(req).await }).map(|r| r.pod_sandbox_id)
    }

    /// Creates container `name` of `pod` from `image` running `command`.
    pub fn create_container(
        &self,
        pod: &str,
        p: &PodSpec,
        name: &str,
        image: &str,
        command: &[&str],
    ) -> Result<String, tonic::Status> {
        let config = ContainerConfig {
            metadata: Some(ContainerMetadata { name: name.into(), attempt: 0 }),
            image: Some(ImageSpec { image: image.into(), ..Default::default() }),
            command: command.iter().map(|s| s.to_string()).collect(),
            log_path: format!("{name}.log"),
            envs: vec![KeyValue { key: "PATH".into(), value: "/bin:/usr/bin:/usr/local/bin".into() }],
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: Some(NamespaceOption {
                        network: NS_POD,
                        pid: NS_CONTAINER,
                        ipc: NS_POD,
                        ..Default::default()
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let req = CreateContainerRequest {
            pod_sandbox_id: pod.into(),
            config: Some(config),
            sandbox_config: Some(Self::pod_config(p)),
        };
        self.call("CreateContainer", |mut c| async move { c.create_container(req).await }).map(|r| r.container_id)
    }

    pub fn start_container(&self, id: &str) -> Result<(), tonic::Status> {
        let req = StartContainerRequest { container_id: id.into() };
        self.call("StartContainer", |mut c| async move { c.start_container(req).await }).map(|_| ())
    }

    /// Runs `cmd` in container `id`: (exit code, stdout, stderr).
    pub fn exec_sync(&self, id: &str, cmd: &[&str]) -> Result<(i32, String, String), tonic::Status> {
        let req =
            ExecSyncRequest { container_id: id.into(), cmd: cmd.iter().map(|s| s.to_string()).collect(), timeout: 30 };
        self.call("ExecSync", |mut c| async move { c.exec_sync(req).await }).map(|r| {
            (
                r.exit_code,
                String::from_utf8_lossy(&r.stdout).into_owned(),
                String::from_utf8_lossy(&r.stderr).into_owned(),
            )
        })
    }

    pub fn container_status(&self, id: &str) -> Result<ContainerStatus, tonic::Status> {
        let req = ContainerStatusRequest { container_id: id.into(), verbose: false };
        self.call("ContainerStatus", |mut c| async move { c.container_status(req).await })
            .and_then(|r| r.status.ok_or_else(|| tonic::Status::not_found("no status")))
    }

    pub fn stop_container(&self, id: &str, timeout: i64) -> Result<(), tonic::Status> {
        let req = StopContainerRequest { container_id: id.into(), timeout };
        self.call("StopContainer", |mut c| async move { c.stop_container(req).await }).map(|_| ())
    }

    pub fn remove_container(&self, id: &str) -> Result<(), tonic::Status> {
        let req = RemoveContainerRequest { container_id: id.into() };
        self.call("RemoveContainer", |mut c| async move { c.remove_container(req).await }).map(|_| ())
    }

    pub fn stop_pod(&self, id: &str) -> Result<(), tonic::Status> {
        let req = StopPodSandboxRequest { pod_sandbox_id: id.into() };
        self.call("StopPodSandbox", |mut c| async move { c.stop_pod_sandbox(req).await }).map(|_| ())
    }

    pub fn remove_pod(&self, id: &str) -> Result<(), tonic::Status> {
        let req = RemovePodSandboxRequest { pod_sandbox_id: id.into() };
        self.call("RemovePodSandbox", |mut c| async move { c.remove_pod_sandbox(req).await }).map(|_| ())
    }

    /// Every pod containerd's CRI plugin knows.
    pub fn list_pods(&self) -> Result<Vec<PodSandbox>, tonic::Status> {
        let req = ListPodSandboxRequest { filter: None };
        self.call("ListPodSandbox", |mut c| async move { c.list_pod_sandbox(req).await }).map(|r| r.items)
    }

    pub fn pod_status(&self, id: &str) -> Result<PodSandboxStatus, tonic::Status> {
        let req = PodSandboxStatusRequest { pod_sandbox_id: id.into(), verbose: false };
        self.call("PodSandboxStatus", |mut c| async move { c.pod_sandbox_status(req).await })
            .and_then(|r| r.status.ok_or_else(|| tonic::Status::not_found("no status")))
    }
}
