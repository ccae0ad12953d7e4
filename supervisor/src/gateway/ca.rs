//! The per-sandbox certificate authority for L7 inspection: made when the
//! sandbox starts (never written to the host's trust store, its key never
//! leaves the supervisor's memory), leaf certificates cached per host, and
//! the upstream TLS clients: the system roots, or an endpoint's own
//! `upstream_ca`. Guards against a sandbox being able to mint certificates
//! (it sees only the CA certificate), against an inspected connection
//! downgrading to HTTP/2 or unverified TLS upstream, and against a private
//! upstream CA being trusted beyond the endpoint that names it.
#![forbid(unsafe_code)]
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use time::{Duration, OffsetDateTime};

#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("making the sandbox CA")]
    Rcgen(#[from] rcgen::Error),
    #[error("TLS configuration")]
    Tls(#[from] rustls::Error),
    #[error("{0}: not a valid TLS server name")]
    Name(String),
    #[error("reading CA file {path}: {message}")]
    File { path: String, message: String },
}

/// Leaf certificates cached per host (bounded: an agent could ask for many names).
const LEAF_CACHE: usize = 1024;

pub struct Ca {
    cert: rcgen::Certificate,
    key: KeyPair,
    /// One key for every leaf of this CA: generating keys per host is slow
    /// and gains nothing (all leaves live in this process only). Made at
    /// the first leaf: a sandbox that never has TLS inspected never pays
    /// for it, and its start does not wait for it.
    leaf_key: std::sync::OnceLock<KeyPair>,
    leaves: Mutex<HashMap<String, Arc<rustls::ServerConfig>>>,
}

impl std::fmt::Debug for Ca {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ca").finish_non_exhaustive()
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Ca {
    /// A fresh CA named after the sandbox, valid from a day ago for a year.
    pub fn new(sandbox: &str) -> Result<Ca, CaError> {
        let key = KeyPair::generate()?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("moat sandbox CA ({sandbox})"));
        dn.push(DnType::OrganizationName, "moat");
        params.distinguished_name = dn;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages =
            vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::days(1);
        params.not_after = now + Duration::days(365);
        let cert = params.self_signed(&key)?;
        Ok(Ca { cert, key, leaf_key: std::sync::OnceLock::new(), leaves: Mutex::default() })
    }

    /// The CA certificate (PEM) that the sandbox trusts.
    pub fn cert_pem(&self) -> String {
        self.cert.pem()
    }

    /// A TLS server configuration presenting a leaf certificate for `host`.
    pub fn server_config(&self, host: &str, h2: bool) -> Result<Arc<rustls::ServerConfig>, CaError> {
        let config = self.server_config_h1(host)?;
        if !h2 {
            return Ok(config);
        }
        // The same leaf, offering h2 alone (`super::h2`): not cached, these
        // connections are few.
        let mut c = (*config).clone();
        c.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(c))
    }

    fn server_config_h1(&self, host: &str) -> Result<Arc<rustls::ServerConfig>, CaError> {
        let host = host.to_ascii_lowercase();
        // Only valid names are ever cached.
        if let Some(c) = self.leaves.lock().unwrap_or_else(|p| p.into_inner()).get(&host) {
            return Ok(c.clone());
        }
        server_name(&host)?; // a valid DNS name or IP address, nothing else
        let mut params = CertificateParams::default();
        params.distinguished_name.push(DnType::CommonName, host.clone());
        params.subject_alt_names = vec![match host.parse::<std::net::IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(host.clone().try_into().map_err(|_| CaError::Name(host.clone()))?),
        }];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - Duration::hours(1);
        params.not_after = now + Duration::days(30);
        let leaf_key = match self.leaf_key.get() {
            Some(k) => k,
            None => {
                let made = KeyPair::generate()?;
                self.leaf_key.get_or_init(|| made)
            }
        };
        let leaf = params.signed_by(leaf_key, &self.cert, &self.key)?;
        let chain = vec![leaf.der().clone(), self.cert.der().clone()];
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let mut config = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_single_cert(chain, key)?;
        // HTTP/1.1: the inspector parses HTTP/1 requests; `server_config(_, true)`
        // offers h2 alone to clients that offer nothing else.
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        let config = Arc::new(config);
        let mut leaves = self.leaves.lock().unwrap_or_else(|p| p.into_inner());
        if leaves.len() >= LEAF_CACHE {
            leaves.clear();
        }
        leaves.insert(host, config.clone());
        Ok(config)
    }
}

/// The test hook naming a PEM file of extra upstream roots (tests' private
/// upstream CA): read only by debug builds, the ones tests run. A release
/// build ignores it; policy names a private CA per endpoint (`upstream_ca`).
pub const UPSTREAM_CA_HOOK: &str = "MOAT_GATEWAY_UPSTREAM_CA";

/// The upstream TLS client: the host's system roots (plus, in debug builds,
/// the file named by [`UPSTREAM_CA_HOOK`]).
pub fn upstream_client() -> Result<Arc<rustls::ClientConfig>, CaError> {
    let mut roots = rustls::RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::warn!(event = "system_roots", error = %moat_builder::errors::chain(&e), "some system root certificates could not be read");
    }
    let (added, _ignored) = roots.add_parsable_certificates(native.certs);
    let hook = std::env::var_os(UPSTREAM_CA_HOOK).filter(|p| !p.is_empty());
    match hook {
        Some(path) if cfg!(debug_assertions) => {
            let bad = |message: String| CaError::File { path: path.to_string_lossy().into_owned(), message };
            let pem = std::fs::read(&path).map_err(|e| bad(e.to_string()))?;
            for der in pem_certificates(&pem).map_err(bad)? {
                roots.add(der).map_err(CaError::Tls)?;
            }
        }
        Some(_) => {
            tracing::warn!(event = "system_roots", "{UPSTREAM_CA_HOOK} is a test hook, ignored by release builds: name the CA with upstream_ca in the endpoint")
        }
        None if added == 0 => {
            tracing::warn!(event = "system_roots", "no system root certificates: upstream TLS will fail")
        }
        None => {}
    }
    client(roots)
}

/// The upstream TLS client of an endpoint that names its upstream's CA
/// (`upstream_ca`, PEM embedded in the policy): those roots only, in place
/// of the system's. Built once per distinct PEM (cached by its SHA-256,
/// bounded) for the life of the process.
pub fn pinned_client(pem: &str) -> Result<Arc<rustls::ClientConfig>, CaError> {
    use sha2::Digest;
    static CACHE: Mutex<Option<HashMap<[u8; 32], Arc<rustls::ClientConfig>>>> = Mutex::new(None);
    let key: [u8; 32] = sha2::Sha256::digest(pem.as_bytes()).into();
    if let Some(c) = CACHE.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert_with(HashMap::new).get(&key) {
        return Ok(c.clone());
    }
    let bad = |message: String| CaError::File { path: "upstream_ca".into(), message };
    let mut roots = rustls::RootCertStore::empty();
    for der in crate::policy::upstream_ca::certificates(pem.as_bytes()).map_err(bad)? {
        roots.add(der).map_err(CaError::Tls)?;
    }
    let config = client(roots)?;
    let mut cache = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    let cache = cache.get_or_insert_with(HashMap::new);
    if cache.len() >= PINNED_CACHE {
        cache.clear();
    }
    cache.insert(key, config.clone());
    Ok(config)
}

/// Distinct `upstream_ca` client configurations kept (a policy names few).
const PINNED_CACHE: usize = 64;

/// A TLS client trusting `roots`.
fn client(roots: rustls::RootCertStore) -> Result<Arc<rustls::ClientConfig>, CaError> {
    let mut config = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// `config` offering h2 first, then HTTP/1.1 (the upstream of an HTTP/2
/// client: gRPC needs h2 end to end).
pub fn offering_h2(config: &Arc<rustls::ClientConfig>) -> Arc<rustls::ClientConfig> {
    let mut c = (**config).clone();
    c.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Arc::new(c)
}

/// The TLS name for an upstream host (DNS name or IP literal).
pub fn server_name(host: &str) -> Result<ServerName<'static>, CaError> {
    ServerName::try_from(host.to_string()).map_err(|_| CaError::Name(host.into()))
}

/// Every CERTIFICATE block of a PEM file, decoded.
fn pem_certificates(pem: &[u8]) -> Result<Vec<CertificateDer<'static>>, String> {
    let out: Vec<_> = CertificateDer::pem_slice_iter(pem).collect::<Result<_, _>>().map_err(|e| e.to_string())?;
    if out.is_empty() {
        return Err("no CERTIFICATE block".into());
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leaves_chain_to_the_ca_and_are_cached() {
        let ca = Ca::new("t").unwrap();
        assert!(ca.cert_pem().starts_with("-----BEGIN CERTIFICATE-----"));
        let a = ca.server_config("api.example.com", false).unwrap();
        let b = ca.server_config("API.example.com", false).unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        ca.server_config("198.18.0.2", false).unwrap();
        assert!(ca.server_config("bad name!", false).is_err());
        let ders = pem_certificates(ca.cert_pem().as_bytes()).unwrap();
        assert_eq!(ders.len(), 1);
    }
}
