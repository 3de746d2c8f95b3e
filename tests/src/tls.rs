//! Test PKI and a real TLS client: a CA made with rcgen at test time, leaf certificates
//! issued by it into a temporary folder, and rustls client configs that trust it. No
//! private key is ever checked in.

use std::{
    io::Write,
    net::{SocketAddr, TcpStream},
    path::PathBuf,
    sync::Arc,
    time::Duration,
};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned, pki_types::ServerName};

use crate::client::{Response, read_response};

/// A throwaway certificate authority and the files it issued.
pub struct TestPki {
    pub dir: tempfile::TempDir,
    ca_params: CertificateParams,
    ca_key: KeyPair,
    ca_der: Vec<u8>,
    ca_pem: String,
}

impl Default for TestPki {
    fn default() -> Self {
        Self::new()
    }
}

impl TestPki {
    /// A new CA (ECDSA P-256).
    pub fn new() -> Self {
        let ca_key = KeyPair::generate().expect("CA key");
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
        ];
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "gateway test CA");
        let ca = ca_params.self_signed(&ca_key).expect("self-signed CA");
        Self {
            dir: tempfile::tempdir().expect("pki dir"),
            ca_params,
            ca_key,
            ca_der: ca.der().to_vec(),
            ca_pem: ca.pem(),
        }
    }

    /// Issues a certificate for `names` (ECDSA P-256) and writes `<stem>.crt` (leaf then CA)
    /// and `<stem>.key`; returns both paths.
    pub fn issue(&self, stem: &str, names: &[&str]) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().expect("leaf key");
        let mut params =
            CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
                .expect("leaf params");
        params
            .distinguished_name
            .push(DnType::CommonName, names.first().copied().unwrap_or("leaf"));
        // What a public CA issues today: a server certificate valid for 90 days.
        params.key_usages = vec![rcgen::KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .as_secs();
        let epoch = rcgen::date_time_ymd(1970, 1, 1);
        params.not_before = epoch + Duration::from_secs(now - 86_400);
        params.not_after = epoch + Duration::from_secs(now + 90 * 86_400);
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = params.signed_by(&key, &issuer).expect("sign leaf");
        let chain = format!("{}{}", cert.pem(), self.ca_pem);
        let cert_path = self.dir.path().join(format!("{stem}.crt"));
        let key_path = self.dir.path().join(format!("{stem}.key"));
        std::fs::write(&cert_path, chain).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        (cert_path, key_path)
    }

    /// A client certificate (clientAuth) for `common_name` with a `uri` subjectAltName.
    pub fn issue_client(&self, stem: &str, common_name: &str, uri: &str) -> (PathBuf, PathBuf) {
        let key = KeyPair::generate().expect("client key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("client params");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params
            .distinguished_name
            .push(DnType::OrganizationName, "Acme");
        params.subject_alt_names = vec![rcgen::SanType::URI(
            rcgen::string::Ia5String::try_from(uri).expect("URI"),
        )];
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
        let issuer = Issuer::from_params(&self.ca_params, &self.ca_key);
        let cert = params.signed_by(&key, &issuer).expect("sign client cert");
        let cert_path = self.dir.path().join(format!("{stem}.crt"));
        let key_path = self.dir.path().join(format!("{stem}.key"));
        std::fs::write(&cert_path, cert.pem()).expect("write cert");
        std::fs::write(&key_path, key.serialize_pem()).expect("write key");
        (cert_path, key_path)
    }

    /// The CA certificate as a PEM file (for `client_ca`).
    pub fn ca_file(&self) -> PathBuf {
        let path = self.dir.path().join("ca.pem");
        std::fs::write(&path, &self.ca_pem).expect("write CA");
        path
    }

    /// Like [`TestPki::client_config`], presenting the client certificate `cert`/`key`
    /// (which may come from another CA).
    pub fn client_config_with_cert(
        &self,
        cert: &std::path::Path,
        key: &std::path::Path,
    ) -> Arc<ClientConfig> {
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, pem::PemObject as _};
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(self.ca_der.clone()))
            .expect("trust CA");
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
            .expect("cert file")
            .map(|c| c.expect("cert"))
            .collect();
        let key = PrivateKeyDer::from_pem_file(key).expect("key file");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
            .expect("versions")
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .expect("client cert");
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }

    /// The CA certificate in PEM, for configs that trust it.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A rustls client trusting this CA, offering `http/1.1`, limited to `versions`.
    pub fn client_config(
        &self,
        versions: &[&'static rustls::SupportedProtocolVersion],
    ) -> Arc<ClientConfig> {
        let mut roots = RootCertStore::empty();
        roots
            .add(rustls::pki_types::CertificateDer::from(self.ca_der.clone()))
            .expect("trust CA");
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut config = ClientConfig::builder_with_provider(provider)
            .with_protocol_versions(versions)
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Arc::new(config)
    }
}

/// What one HTTPS exchange showed.
pub struct TlsExchange {
    pub response: Response,
    /// DER of the certificate the server presented.
    pub peer_certificate: Vec<u8>,
    pub alpn: Option<Vec<u8>>,
    pub version: Option<rustls::ProtocolVersion>,
    /// Whether the handshake resumed an earlier session.
    pub resumed: bool,
}

/// A rustls server-certificate verifier that accepts any certificate but records the
/// stapled OCSP response, for tests that check stapling.
#[derive(Debug)]
pub struct RecordOcsp(
    pub std::sync::Mutex<Vec<u8>>,
    pub gateway::tls::NoVerification,
);

impl rustls::client::danger::ServerCertVerifier for RecordOcsp {
    fn verify_server_cert(
        &self,
        end_entity: &rustls::pki_types::CertificateDer<'_>,
        intermediates: &[rustls::pki_types::CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = ocsp_response.to_vec();
        self.1
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.1.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        self.1.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.1.supported_verify_schemes()
    }
}

/// A TLS client connection to `addr` with SNI `server_name` (the handshake runs on the
/// first write), reads timing out after 10 s.
pub fn tls_client(
    addr: SocketAddr,
    server_name: &str,
    config: Arc<ClientConfig>,
) -> Result<StreamOwned<ClientConnection, TcpStream>, String> {
    let tcp = TcpStream::connect(addr).map_err(|e| e.to_string())?;
    tcp.set_read_timeout(Some(Duration::from_secs(10)))
        .map_err(|e| e.to_string())?;
    let name = ServerName::try_from(server_name.to_owned()).map_err(|e| e.to_string())?;
    let conn = ClientConnection::new(config, name).map_err(|e| e.to_string())?;
    Ok(StreamOwned::new(conn, tcp))
}

/// Connects with TLS, sends `request` (which should ask for `connection: close`) and
/// reads to the end; an error when the handshake, the write or the read fails (a
/// refused client certificate shows up as an alert on the first read in TLS 1.3).
pub fn https_request(
    addr: SocketAddr,
    server_name: &str,
    config: Arc<ClientConfig>,
    request: &str,
) -> Result<Response, String> {
    let mut tls = tls_client(addr, server_name, config)?;
    tls.write_all(request.as_bytes())
        .map_err(|e| format!("handshake or write failed: {e}"))?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut tls, &mut bytes).map_err(|e| format!("read failed: {e}"))?;
    if bytes.is_empty() {
        return Err("closed without a response".into());
    }
    Ok(read_response(&mut std::io::Cursor::new(bytes), false))
}

/// Connects to `addr` with TLS (SNI `server_name`) and sends one GET.
pub fn https_get(
    addr: SocketAddr,
    server_name: &str,
    config: Arc<ClientConfig>,
    path: &str,
) -> Result<TlsExchange, String> {
    let mut tls = tls_client(addr, server_name, config)?;
    tls.write_all(format!("GET {path} HTTP/1.1\r\nHost: {server_name}\r\n\r\n").as_bytes())
        .map_err(|e| format!("handshake or write failed: {e}"))?;
    let response = read_response(&mut tls, false);
    let peer_certificate = tls
        .conn
        .peer_certificates()
        .and_then(|c| c.first())
        .map(|c| c.as_ref().to_vec())
        .unwrap_or_default();
    let resumed = matches!(
        tls.conn.handshake_kind(),
        Some(rustls::HandshakeKind::Resumed)
    );
    Ok(TlsExchange {
        response,
        peer_certificate,
        alpn: tls.conn.alpn_protocol().map(<[u8]>::to_vec),
        version: tls.conn.protocol_version(),
        resumed,
    })
}
