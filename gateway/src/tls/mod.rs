//! TLS termination (rustls, driven by our own stream in [`stream`]): certificates loaded and checked at
//! config time, an SNI resolver with exact and wildcard names and a default, and a
//! server config per worker (each with its own bounded session cache; ticket keys are
//! rotated by rustls' ticketer).
//!
//! Only TLS 1.3 and 1.2 with rustls' safe cipher suites; ALPN offers `http/1.1`.

use std::{
    collections::HashMap,
    fmt,
    path::{Path, PathBuf},
    rc::Rc,
    sync::Arc,
};

use rustls::{
    ServerConfig,
    crypto::aws_lc_rs,
    pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject},
    server::{ClientHello, ResolvesServerCert, ServerSessionMemoryCache},
    sign::CertifiedKey,
};

mod stream;

pub use stream::TlsStream;

/// What the request path keeps of a TLS session, taken once after the handshake.
#[derive(Debug, Clone, Default)]
pub struct TlsInfo {
    /// `TLSv1.3` or `TLSv1.2` (for the access log).
    pub version: &'static str,
    /// The client certificate rustls verified (mTLS), if the client sent one.
    pub client: Option<Rc<ClientIdentity>>,
}

/// The verified client certificate's identity, as forwarded to upstreams and matched by
/// routes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientIdentity {
    /// The subject distinguished name (RFC 4514 order, e.g. `CN=svc-a,O=Acme`).
    pub subject: String,
    /// The subjectAltName entries: `DNS:…`, `URI:…`, `email:…`, `IP:…`.
    pub san: Vec<String>,
}

impl ClientIdentity {
    /// The identity in a DER certificate (already verified by rustls).
    pub fn from_der(der: &[u8]) -> Option<Self> {
        use x509_parser::prelude::{FromDer as _, GeneralName, X509Certificate};
        let (_, cert) = X509Certificate::from_der(der).ok()?;
        let mut san = Vec::new();
        if let Ok(Some(ext)) = cert.subject_alternative_name() {
            for name in &ext.value.general_names {
                match name {
                    GeneralName::DNSName(dns) => san.push(format!("DNS:{dns}")),
                    GeneralName::URI(uri) => san.push(format!("URI:{uri}")),
                    GeneralName::RFC822Name(mail) => san.push(format!("email:{mail}")),
                    GeneralName::IPAddress(bytes) => {
                        let ip = match bytes.len() {
                            4 => <[u8; 4]>::try_from(*bytes).ok().map(std::net::IpAddr::from),
                            16 => <[u8; 16]>::try_from(*bytes)
                                .ok()
                                .map(std::net::IpAddr::from),
                            _ => None,
                        };
                        if let Some(ip) = ip {
                            san.push(format!("IP:{ip}"));
                        }
                    }
                    _ => {}
                }
            }
        }
        Some(Self {
            subject: cert.subject().to_string(),
            san,
        })
    }
}

impl TlsInfo {
    /// The facts of an established `session`.
    pub fn of(session: &rustls::ServerConnection) -> Self {
        Self {
            version: match session.protocol_version() {
                Some(rustls::ProtocolVersion::TLSv1_3) => "TLSv1.3",
                Some(rustls::ProtocolVersion::TLSv1_2) => "TLSv1.2",
                _ => "TLS",
            },
            client: session
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(|leaf| ClientIdentity::from_der(leaf))
                .map(Rc::new),
        }
    }
}

/// Sessions each worker remembers for resumption by session id (TLS 1.2 and 1.3
/// stateful); tickets need no server memory.
const SESSION_CACHE_PER_WORKER: usize = 4096;

/// Why a certificate or TLS setup failed.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: no PEM certificate found")]
    NoCertificate { path: PathBuf },
    #[error("{path}: no PEM private key found ({detail})")]
    NoKey { path: PathBuf, detail: String },
    #[error("{path}: the certificate cannot be parsed: {detail}")]
    BadCertificate { path: PathBuf, detail: String },
    #[error("{path}: the certificate has no DNS names in its subjectAltName")]
    NoNames { path: PathBuf },
    #[error("{key}: the private key does not fit the certificate ({detail})")]
    KeyMismatch { key: PathBuf, detail: String },
    #[error("TLS setup failed: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client certificate verification cannot be set up: {0}")]
    ClientAuth(String),
}

/// A certificate chain with its key, ready to serve, and the names it is valid for.
#[derive(Clone)]
pub struct LoadedCertificate {
    pub key: Arc<CertifiedKey>,
    /// Lower-case DNS names from the end-entity certificate's subjectAltName
    /// (`*.example.com` for wildcards).
    pub names: Vec<String>,
    pub cert_path: PathBuf,
}

impl fmt::Debug for LoadedCertificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LoadedCertificate")
            .field("names", &self.names)
            .field("cert_path", &self.cert_path)
            .finish()
    }
}

impl LoadedCertificate {
    /// Staples a DER OCSP response to this certificate.
    pub fn staple_ocsp(&mut self, response: Vec<u8>) {
        let mut key = (*self.key).clone();
        key.ocsp = Some(response);
        self.key = Arc::new(key);
    }
}

/// Loads a PEM chain (end-entity first) and its PEM private key, checks that they
/// belong together, and reads the names the certificate covers.
pub fn load_certificate(cert_path: &Path, key_path: &Path) -> Result<LoadedCertificate, TlsError> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| TlsError::Read {
            path: path.to_owned(),
            source,
        })
    };
    let cert_pem = read(cert_path)?;
    let key_pem = read(key_path)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::BadCertificate {
            path: cert_path.to_owned(),
            detail: e.to_string(),
        })?;
    let Some(end_entity) = chain.first() else {
        return Err(TlsError::NoCertificate {
            path: cert_path.to_owned(),
        });
    };
    let names = certificate_names(end_entity).map_err(|detail| TlsError::BadCertificate {
        path: cert_path.to_owned(),
        detail,
    })?;
    if names.is_empty() {
        return Err(TlsError::NoNames {
            path: cert_path.to_owned(),
        });
    }
    let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::NoKey {
        path: key_path.to_owned(),
        detail: e.to_string(),
    })?;
    let provider = aws_lc_rs::default_provider();
    let certified =
        CertifiedKey::from_der(chain, key, &provider).map_err(|e| TlsError::KeyMismatch {
            key: key_path.to_owned(),
            detail: e.to_string(),
        })?;
    Ok(LoadedCertificate {
        key: Arc::new(certified),
        names,
        cert_path: cert_path.to_owned(),
    })
}

/// DNS names of a certificate's subjectAltName, lower-cased.
fn certificate_names(der: &CertificateDer<'_>) -> Result<Vec<String>, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| e.to_string())?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            if let x509_parser::extensions::GeneralName::DNSName(dns) = name {
                names.push(dns.to_ascii_lowercase());
            }
        }
    }
    Ok(names)
}

/// Picks the certificate for a ClientHello's SNI: an exact name, then a wildcard one
/// label deep (`*.example.com` covers `a.example.com`, not `example.com` or
/// `a.b.example.com`), then the default (the first certificate) unless SNI is required.
#[derive(Debug)]
pub struct SniResolver {
    exact: HashMap<String, Arc<CertifiedKey>>,
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl SniResolver {
    /// A resolver over `certificates`; the first is the default when `default_for_unknown`.
    pub fn new(certificates: &[LoadedCertificate], default_for_unknown: bool) -> Self {
        let mut exact = HashMap::new();
        let mut wildcard = HashMap::new();
        for cert in certificates {
            for name in &cert.names {
                match name.strip_prefix("*.") {
                    Some(parent) => wildcard
                        .entry(parent.to_owned())
                        .or_insert_with(|| cert.key.clone()),
                    None => exact
                        .entry(name.clone())
                        .or_insert_with(|| cert.key.clone()),
                };
            }
        }
        let default = certificates
            .first()
            .filter(|_| default_for_unknown)
            .map(|c| c.key.clone());
        Self {
            exact,
            wildcard,
            default,
        }
    }

    /// The certificate for `server_name` (`None`: no SNI sent).
    pub fn pick(&self, server_name: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let Some(name) = server_name else {
            return self.default.clone();
        };
        let name = name.to_ascii_lowercase();
        if let Some(key) = self.exact.get(&name) {
            return Some(key.clone());
        }
        if let Some(key) = name
            .split_once('.')
            .and_then(|(_, parent)| self.wildcard.get(parent))
        {
            return Some(key.clone());
        }
        self.default.clone()
    }
}

impl ResolvesServerCert for SniResolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.pick(hello.server_name())
    }
}

/// Client certificates a listener asks for (mTLS).
#[derive(Debug, Clone)]
pub struct ClientAuth {
    /// `required`: a handshake without a valid certificate fails; `optional`: one is
    /// asked for and verified when sent.
    pub required: bool,
    /// The CAs client certificates must chain to.
    pub roots: Arc<rustls::RootCertStore>,
}

/// A worker's server config for a listener: its own session cache, shared resolver,
/// and a client-certificate verifier when the listener asks for one.
pub fn server_config(
    resolver: Arc<SniResolver>,
    client_auth: Option<&ClientAuth>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = Arc::new(aws_lc_rs::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let builder = match client_auth {
        None => builder.with_no_client_auth(),
        Some(auth) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                auth.roots.clone(),
                provider,
            );
            let verifier = if auth.required {
                verifier
            } else {
                verifier.allow_unauthenticated()
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|e| TlsError::ClientAuth(e.to_string()))?,
            )
        }
    };
    let mut config = builder.with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE_PER_WORKER);
    config.ticketer = aws_lc_rs::Ticketer::new()?;
    // Plain HTTP has no use for early data; refusing it avoids replay questions.
    config.max_early_data_size = 0;
    Ok(Arc::new(config))
}

/// TLS towards a backend: the client config (roots, versions) and the SNI to send.
#[derive(Clone)]
pub struct UpstreamTls {
    pub config: Arc<rustls::ClientConfig>,
    /// SNI and the name verified; `None`: the target's IP address is verified instead.
    pub server_name: Option<rustls::pki_types::ServerName<'static>>,
    /// Certificates are not verified (labs only).
    pub insecure_skip_verify: bool,
}

impl fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

/// The certificates of a PEM bundle as trust anchors; an empty or broken bundle is an
/// error naming the file.
pub fn load_roots(path: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(path).map_err(|source| TlsError::Read {
        path: path.to_owned(),
        source,
    })?;
    for cert in CertificateDer::pem_slice_iter(&pem) {
        let cert = cert.map_err(|e| TlsError::BadCertificate {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
        roots.add(cert).map_err(|e| TlsError::BadCertificate {
            path: path.to_owned(),
            detail: e.to_string(),
        })?;
    }
    if roots.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(roots)
}

/// A client config trusting `ca_file` (PEM bundle), or the system roots without one;
/// `insecure_skip_verify` accepts any certificate (labs only; the caller logs it loudly).
pub fn client_config(
    ca_file: Option<&Path>,
    insecure_skip_verify: bool,
) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let provider = Arc::new(aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let mut config = if insecure_skip_verify {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth()
    } else {
        let mut roots = rustls::RootCertStore::empty();
        match ca_file {
            Some(path) => roots = load_roots(path)?,
            None => {
                for cert in rustls_native_certs::load_native_certs().certs {
                    // A broken system certificate is skipped, not fatal.
                    let _ = roots.add(cert);
                }
            }
        }
        builder.with_root_certificates(roots).with_no_client_auth()
    };
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Accepts every server certificate (`insecure_skip_verify`), still checking that the
/// handshake signatures are made by the presented key. Public so tools and tests that
/// inspect a server (OCSP staples, say) can build on it.
#[derive(Debug)]
pub struct NoVerification(pub Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
