//! TLS for both servers: a certificate and key, and optionally a client CA whose signature
//! every client certificate must carry (mutual TLS).

use std::path::PathBuf;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::ServeError;

/// The PEM files named on the command line.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// The server's certificate chain.
    pub cert: PathBuf,
    /// The server's private key.
    pub key: PathBuf,
    /// The CA that signs client certificates; clients need one when it is given.
    pub client_ca: Option<PathBuf>,
}

/// The loaded PEM files.
#[derive(Debug, Clone)]
pub struct TlsConfig {
    files: TlsFiles,
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    client_ca_pem: Option<Vec<u8>>,
    /// Whether clients must present a certificate signed by the client CA.
    pub client_auth: bool,
}

fn read(what: &str, path: &PathBuf) -> Result<Vec<u8>, ServeError> {
    std::fs::read(path).map_err(|e| {
        ServeError::InvalidArgument(format!("cannot read the {what} {}: {e}", path.display()))
    })
}

impl TlsConfig {
    /// Reads and checks the files.
    pub fn load(files: &TlsFiles) -> Result<Self, ServeError> {
        let config = Self {
            files: files.clone(),
            cert_pem: read("--tls-cert", &files.cert)?,
            key_pem: read("--tls-key", &files.key)?,
            client_ca_pem: files
                .client_ca
                .as_ref()
                .map(|p| read("--client-ca", p))
                .transpose()?,
            client_auth: files.client_ca.is_some(),
        };
        // Fail at start-up, naming the file, rather than on the first connection.
        config.rest()?;
        Ok(config)
    }

    /// The certificate and key for tonic.
    pub fn tonic(&self) -> tonic::transport::ServerTlsConfig {
        let mut tls = tonic::transport::ServerTlsConfig::new().identity(
            tonic::transport::Identity::from_pem(&self.cert_pem, &self.key_pem),
        );
        if let Some(ca) = &self.client_ca_pem {
            tls = tls
                .client_ca_root(tonic::transport::Certificate::from_pem(ca))
                .client_auth_optional(false);
        }
        tls
    }

    /// The rustls configuration for the REST server.
    pub fn rest(&self) -> Result<rustls::ServerConfig, ServeError> {
        let (cert_path, key_path) = (&self.files.cert, &self.files.key);
        let bad = |what: &str, path: &PathBuf, e: String| {
            ServeError::InvalidArgument(format!("{what} {}: {e}", path.display()))
        };
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&self.cert_pem)
            .collect::<Result<_, _>>()
            .map_err(|e| bad("--tls-cert", cert_path, e.to_string()))?;
        if certs.is_empty() {
            return Err(bad("--tls-cert", cert_path, "no certificate in it".into()));
        }
        let key = PrivateKeyDer::from_pem_slice(&self.key_pem)
            .map_err(|e| bad("--tls-key", key_path, e.to_string()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
            .with_safe_default_protocol_versions()
            .map_err(|e| ServeError::Internal(e.to_string()))?;
        let builder = match &self.client_ca_pem {
            Some(ca) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(ca) {
                    let cert =
                        cert.map_err(|e| ServeError::InvalidArgument(format!("--client-ca: {e}")))?;
                    roots
                        .add(cert)
                        .map_err(|e| ServeError::InvalidArgument(format!("--client-ca: {e}")))?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .map_err(|e| ServeError::InvalidArgument(format!("--client-ca: {e}")))?;
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder
            .with_single_cert(certs, key)
            .map_err(|e| bad("--tls-cert/--tls-key", cert_path, e.to_string()))?;
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        Ok(config)
    }
}
