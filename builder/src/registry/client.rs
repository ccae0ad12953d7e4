//! One configured oci-client per registry: TLS roots (system plus
//! `--ca-file`), the plain-HTTP rule (loopback or `--insecure HOST` only, and
//! only after HTTPS failed for a reason other than an untrusted certificate),
//! credentials, retry with backoff on transient errors, and error mapping that
//! always names the registry.
#![forbid(unsafe_code)]
use super::{auth, RegistryError, Result};
use crate::errors::chain;
use oci_client::client::{Certificate, CertificateEncoding, ClientConfig, ClientProtocol};
use oci_client::errors::{OciDistributionError, OciErrorCode};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference, RegistryOperation};
use std::future::Future;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

/// How many times one request is tried before its error is reported.
const ATTEMPTS: u32 = 5;
/// First retry delay; each later one is three times longer (0.2, 0.6, 1.8, 5.4 s).
const FIRST_BACKOFF: Duration = Duration::from_millis(200);

/// Options shared by push, pull and resolve.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Extra CA certificates (PEM) trusted on top of the system roots.
    pub ca_file: Option<PathBuf>,
    /// Hosts (`host` or `host:port`) that may be reached over plain HTTP.
    pub insecure: Vec<String>,
    /// Draw per-blob progress bars on stderr.
    pub progress: bool,
    /// Name given to a pulled image in the store (default: the repository's last component).
    pub name: Option<String>,
    /// OCI architecture (`amd64`, `arm64`, ...) picked from an image index
    /// (default: this machine's).
    pub architecture: Option<String>,
}

/// A client bound to one registry with its credentials.
pub(crate) struct Conn {
    pub client: Client,
    pub auth: RegistryAuth,
    /// The registry as the user spelled it (`host[:port]`).
    pub registry: String,
    user: Option<String>,
}

/// Builds the tokio runtime registry operations run on (two workers: the
/// machine budget; network transfers are I/O bound).
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|source| RegistryError::Io { path: PathBuf::from("<tokio runtime>"), source })
}

fn config(opts: &Options, protocol: ClientProtocol) -> Result<ClientConfig> {
    let mut extra = Vec::new();
    if let Some(path) = &opts.ca_file {
        let data = std::fs::read(path).map_err(|source| RegistryError::Io { path: path.clone(), source })?;
        extra.push(Certificate { encoding: CertificateEncoding::Pem, data });
    }
    Ok(ClientConfig {
        protocol,
        extra_root_certificates: extra,
        // One PUT per blob when its size is known (chunked PATCH measured 1.6x slower).
        use_monolithic_push: true,
        platform_resolver: None,
        connect_timeout: Some(Duration::from_secs(15)),
        read_timeout: Some(Duration::from_secs(120)),
        user_agent: concat!("moat/", env!("CARGO_PKG_VERSION")),
        ..ClientConfig::default()
    })
}

/// Whether `host[:port]` names a loopback address.
pub(crate) fn is_loopback(registry: &str) -> bool {
    let host = host_part(registry);
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

fn host_part(registry: &str) -> &str {
    if let Some(rest) = registry.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    registry.rsplit_once(':').map_or(registry, |(h, _)| h)
}

fn plain_http_allowed(registry: &str, opts: &Options) -> bool {
    is_loopback(registry) || opts.insecure.iter().any(|h| h == registry || h == host_part(registry))
}

/// Connects to the registry of `reference`: picks the protocol and loads credentials.
pub(crate) async fn connect(reference: &Reference, opts: &Options) -> Result<Conn> {
    let creds = auth::lookup(reference.registry())?;
    connect_with(reference, opts, creds).await
}

/// `connect` with the given credentials instead of the stored ones.
pub(crate) async fn connect_with(
    reference: &Reference,
    opts: &Options,
    creds: Option<auth::Credentials>,
) -> Result<Conn> {
    // ring is the only rustls provider compiled in; a second install is a no-op error.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let registry = reference.registry().to_string();
    let user = creds.as_ref().map(|c| c.username.clone());
    let auth = creds.map_or(RegistryAuth::Anonymous, |c| RegistryAuth::Basic(c.username, c.password));
    let https = Client::new(config(opts, ClientProtocol::Https)?);
    if !plain_http_allowed(&registry, opts) {
        return Ok(Conn { client: https, auth, registry, user });
    }
    // Probe: HTTPS first; fall back to plain HTTP only when TLS itself failed
    // for a reason other than an untrusted certificate.
    let probe = https.auth(reference, &auth, RegistryOperation::Pull).await;
    match probe {
        Ok(_) => return Ok(Conn { client: https, auth, registry, user }),
        Err(e) if !is_transport(&e) => return Ok(Conn { client: https, auth, registry, user }),
        Err(e) if is_cert_error(&e) => {
            return Err(RegistryError::Tls { registry, detail: chain(&e) });
        }
        Err(_) => {}
    }
    let http = Client::new(config(opts, ClientProtocol::Http)?);
    match http.auth(reference, &auth, RegistryOperation::Pull).await {
        Ok(_) => {
            tracing::info!(registry = %registry, "registry speaks plain HTTP (loopback or --insecure)");
            Ok(Conn { client: http, auth, registry, user })
        }
        Err(e) if !is_transport(&e) => Ok(Conn { client: http, auth, registry, user }),
        Err(e) => Err(RegistryError::Registry { registry, what: "cannot connect".into(), detail: chain(&e) }),
    }
}

/// Checks `creds` against `registry` before `moat login` stores them: a token
/// registry must issue a token; a basic-auth registry must not answer 401.
pub fn check_login(registry: &str, creds: &auth::Credentials, opts: &Options) -> Result<()> {
    let empty = crate::digest::Digest::of(b"").to_string();
    let r = Reference::with_digest(registry.to_string(), "moat/login-check".into(), empty.clone());
    runtime()?.block_on(async {
        let conn = connect_with(&r, opts, Some(creds.clone())).await?;
        let token = conn.retry("log in", || conn.client.auth(&r, &conn.auth, RegistryOperation::Pull)).await?;
        if token.is_some() {
            return Ok(());
        }
        conn.retry("log in", || conn.client.blob_exists(&r, &empty)).await.map(|_| ())
    })
}

impl Conn {
    /// Runs `f` until it succeeds, retrying transient failures with backoff.
    pub(crate) async fn retry<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = std::result::Result<T, OciDistributionError>>,
    {
        let mut delay = FIRST_BACKOFF;
        let mut attempt = 1;
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(e) if attempt < ATTEMPTS && is_transient(&e) => {
                    tracing::warn!(registry = %self.registry, what, attempt, error = %chain(&e), "transient registry error; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 3;
                    attempt += 1;
                }
                Err(e) => return Err(self.error(what, e)),
            }
        }
    }

    /// Maps an oci-client error to ours, naming the registry.
    pub(crate) fn error(&self, what: &str, e: OciDistributionError) -> RegistryError {
        if is_unauthorized(&e) {
            let who = self
                .user
                .as_ref()
                .map(|u| format!(" of user {u:?}"))
                .unwrap_or_else(|| " (no credentials: anonymous access)".into());
            return RegistryError::Unauthorized { registry: self.registry.clone(), who };
        }
        if is_cert_error(&e) {
            return RegistryError::Tls { registry: self.registry.clone(), detail: chain(&e) };
        }
        RegistryError::Registry { registry: self.registry.clone(), what: what.to_string(), detail: chain(&e) }
    }
}

fn is_transport(e: &OciDistributionError) -> bool {
    matches!(e, OciDistributionError::RequestError(r) if r.status().is_none())
}

pub(crate) fn is_transient(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::RequestError(r) => match r.status() {
            Some(s) => s.is_server_error() || s.as_u16() == 429,
            None => {
                !is_cert_error(e)
                    && (r.is_connect() || r.is_timeout() || r.is_body() || r.is_request() || r.is_decode())
            }
        },
        OciDistributionError::ServerError { code, .. } => *code >= 500 || *code == 429,
        // A digest check that failed inside oci-client's stream is not transient.
        OciDistributionError::IoError(io) => !io.get_ref().is_some_and(|i| i.is::<oci_client::errors::DigestError>()),
        OciDistributionError::DigestError(_) => false,
        _ => false,
    }
}

fn is_unauthorized(e: &OciDistributionError) -> bool {
    match e {
        OciDistributionError::UnauthorizedError { .. } | OciDistributionError::AuthenticationFailure(_) => true,
        OciDistributionError::ServerError { code, .. } => *code == 401,
        OciDistributionError::RequestError(r) => r.status().is_some_and(|s| s.as_u16() == 401),
        OciDistributionError::RegistryError { envelope, .. } => {
            envelope.errors.iter().any(|x| matches!(x.code, OciErrorCode::Unauthorized))
        }
        _ => false,
    }
}

/// Whether the error chain holds a rustls certificate rejection. io::Errors
/// nest (hyper wraps rustls' io::Error in another); their `source()` skips the
/// wrapped error, so step into `get_ref()` explicitly.
pub(crate) fn is_cert_error(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(c) = cur {
        if let Some(rustls::Error::InvalidCertificate(_)) = c.downcast_ref::<rustls::Error>() {
            return true;
        }
        cur = match c.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()) {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => c.source(),
        };
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    #[test]
    fn loopback_and_insecure_rules() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost:5000"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("registry.example.com:5000"));
        assert!(!is_loopback("10.0.0.1"));
        let opts = Options { insecure: vec!["reg.lan".into()], ..Options::default() };
        assert!(plain_http_allowed("reg.lan:5000", &opts));
        assert!(!plain_http_allowed("other.lan:5000", &opts));
    }
}
