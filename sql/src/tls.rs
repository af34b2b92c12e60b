//! TLS with rustls for Quiver's servers and clients: `quiver serve`, and every channel of a
//! cluster (client to driver, executor to driver, executor to executor and client to executor
//! for shuffle and result data). A process has a certificate and key (its server identity, and
//! its client identity under mutual TLS) and trusts one CA. Under mutual TLS its servers refuse
//! any client whose certificate that CA did not sign.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use ballista_core::extension::{EndpointOverrideFn, SessionConfigExt};
use ballista_core::utils::{GrpcClientConfig, create_grpc_client_endpoint};
use datafusion::prelude::SessionConfig;
use quiver_engine::err;
use quiver_engine::{QuiverError, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity, ServerTlsConfig};

/// The PEM files of a process's TLS set-up, as named on its command line or cluster file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsFiles {
    /// This process's certificate chain.
    pub cert: Option<PathBuf>,
    /// This process's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<PathBuf>,
    /// The CA whose signature servers' certificates (and, under mutual TLS, clients') carry.
    pub ca: Option<PathBuf>,
    /// Whether this process's servers refuse clients without a certificate signed by `ca`.
    pub mutual: bool,
}

impl TlsFiles {
    /// Whether any TLS file is named, that is whether TLS is wanted.
    pub fn is_set(&self) -> bool {
        self.cert.is_some() || self.key.is_some() || self.ca.is_some() || self.mutual
    }
}

/// Loaded and checked TLS files.
#[derive(Debug, Clone)]
pub struct Tls {
    identity: Option<(Vec<u8>, Vec<u8>)>,
    ca: Option<Vec<u8>>,
    server: Option<Arc<rustls::ServerConfig>>,
    mutual: bool,
}

fn read(what: &str, path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| {
        err!(
            QuiverError::Config,
            "cannot read the {what} {}: {e}",
            path.display()
        )
    })
}

fn certificates(what: &str, path: &Path, pem: &[u8]) -> Result<Vec<CertificateDer<'static>>> {
    let bad = |e: String| err!(QuiverError::Config, "the {what} {}: {e}", path.display());
    let certs: Vec<_> = CertificateDer::pem_slice_iter(pem)
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| bad(e.to_string()))?;
    if certs.is_empty() {
        return Err(bad("no PEM certificate in it".into()));
    }
    Ok(certs)
}

impl Tls {
    /// Reads and checks the files: a certificate needs its key, mutual TLS needs a CA, and every
    /// file must parse. Errors name the file.
    pub fn load(files: &TlsFiles) -> Result<Self> {
        let identity = match (&files.cert, &files.key) {
            (Some(cert), Some(key)) => Some((cert, key)),
            (None, None) => None,
            (Some(_), None) => {
                return Err(QuiverError::Config("--tls-cert needs --tls-key".into()));
            }
            (None, Some(_)) => {
                return Err(QuiverError::Config("--tls-key needs --tls-cert".into()));
            }
        };
        if files.mutual && files.ca.is_none() {
            return Err(QuiverError::Config(
                "mutual TLS needs the CA that signs the clients' certificates".into(),
            ));
        }
        let ca = match &files.ca {
            Some(path) => {
                let pem = read("CA certificate", path)?;
                certificates("CA certificate", path, &pem)?;
                Some((path, pem))
            }
            None => None,
        };
        let server = match identity {
            Some((cert_path, key_path)) => {
                let cert = read("TLS certificate", cert_path)?;
                let key = read("TLS key", key_path)?;
                let config = server_config(
                    certificates("TLS certificate", cert_path, &cert)?,
                    PrivateKeyDer::from_pem_slice(&key).map_err(|e| {
                        err!(
                            QuiverError::Config,
                            "the TLS key {}: {e}",
                            key_path.display()
                        )
                    })?,
                    ca.as_ref().filter(|_| files.mutual),
                )
                .map_err(|e| {
                    err!(
                        QuiverError::Config,
                        "the TLS certificate {} and key {}: {e}",
                        cert_path.display(),
                        key_path.display()
                    )
                })?;
                Some((cert, key, Arc::new(config)))
            }
            None => None,
        };
        Ok(Self {
            identity: server.as_ref().map(|(c, k, _)| (c.clone(), k.clone())),
            server: server.map(|(_, _, config)| config),
            ca: ca.map(|(_, pem)| pem),
            mutual: files.mutual,
        })
    }

    /// Whether servers refuse clients without a certificate signed by the CA.
    pub fn mutual(&self) -> bool {
        self.mutual
    }

    /// The rustls configuration of a server (HTTP/2 and HTTP/1.1), with client verification
    /// under mutual TLS.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>> {
        self.server.clone().ok_or_else(|| {
            QuiverError::Config("a TLS server needs --tls-cert and --tls-key".into())
        })
    }

    /// The same for a tonic server.
    pub fn tonic_server(&self) -> Result<ServerTlsConfig> {
        let (cert, key) = self.identity.as_ref().ok_or_else(|| {
            QuiverError::Config("a TLS server needs --tls-cert and --tls-key".into())
        })?;
        let mut tls = ServerTlsConfig::new().identity(Identity::from_pem(cert, key));
        if let (true, Some(ca)) = (self.mutual, &self.ca) {
            tls = tls
                .client_ca_root(Certificate::from_pem(ca))
                .client_auth_optional(false);
        }
        Ok(tls)
    }

    /// A tonic client's configuration: it trusts the CA and presents this process's certificate
    /// when it has one.
    pub fn tonic_client(&self) -> Result<ClientTlsConfig> {
        let ca = self.ca.as_ref().ok_or_else(|| {
            QuiverError::Config(
                "a TLS client needs the CA that signed the servers' certificates (--tls-ca)".into(),
            )
        })?;
        let mut tls = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(ca));
        if let Some((cert, key)) = &self.identity {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        Ok(tls)
    }

    /// Turns an endpoint into a TLS one: `http://` becomes `https://` (Ballista builds some
    /// endpoints with a fixed `http://`), then the client configuration applies.
    pub fn endpoint(&self, endpoint: Endpoint) -> Result<Endpoint> {
        let uri = endpoint.uri().clone();
        let endpoint = match uri.scheme_str() {
            Some("http") => {
                let authority = uri.authority().map_or("", |a| a.as_str());
                let path = uri.path_and_query().map_or("", |p| p.as_str());
                create_grpc_client_endpoint(
                    format!("https://{authority}{path}"),
                    Some(&GrpcClientConfig::default()),
                )
                .map_err(|e| err!(QuiverError::Cluster, "endpoint {uri}: {e}"))?
            }
            _ => endpoint,
        };
        endpoint
            .tls_config(self.tonic_client()?)
            .map_err(|e| err!(QuiverError::Cluster, "TLS for {uri}: {e}"))
    }

    /// [`Tls::endpoint`] as the override Ballista applies to every gRPC client it creates.
    pub fn endpoint_override(&self) -> EndpointOverrideFn {
        let tls = self.clone();
        Arc::new(move |endpoint| tls.endpoint(endpoint).map_err(Into::into))
    }

    /// A session configuration whose Ballista clients (to the driver, and to executors for
    /// shuffle and result data) use TLS.
    pub fn session_config(&self, config: SessionConfig) -> SessionConfig {
        config
            .with_ballista_use_tls(true)
            .with_ballista_override_create_grpc_client_endpoint(self.endpoint_override())
    }
}

fn server_config(
    certs: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
    client_ca: Option<&(&PathBuf, Vec<u8>)>,
) -> std::result::Result<rustls::ServerConfig, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?;
    let builder = match client_ca {
        Some((path, pem)) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates("CA certificate", path, pem).map_err(|e| e.to_string())? {
                roots.add(cert).map_err(|e| e.to_string())?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| e.to_string())?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_incomplete_or_unreadable_files() {
        let err = |files: TlsFiles| Tls::load(&files).unwrap_err().to_string();
        assert!(
            err(TlsFiles {
                cert: Some("c.pem".into()),
                ..Default::default()
            })
            .contains("--tls-cert needs --tls-key")
        );
        assert!(
            err(TlsFiles {
                mutual: true,
                ..Default::default()
            })
            .contains("mutual TLS needs the CA")
        );
        let missing = err(TlsFiles {
            ca: Some("/nonexistent/ca.pem".into()),
            ..Default::default()
        });
        assert!(missing.contains("/nonexistent/ca.pem"), "{missing}");
        let dir = std::env::temp_dir().join(format!("quiver-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let not_pem = dir.join("ca.pem");
        std::fs::write(&not_pem, "not a certificate").unwrap();
        let bad = err(TlsFiles {
            ca: Some(not_pem.clone()),
            ..Default::default()
        });
        assert!(
            bad.contains("no PEM certificate") && bad.contains("ca.pem"),
            "{bad}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_client_without_a_ca_or_a_server_without_a_key_is_refused() {
        let tls = Tls {
            identity: None,
            ca: None,
            server: None,
            mutual: false,
        };
        assert!(
            tls.tonic_client()
                .unwrap_err()
                .to_string()
                .contains("--tls-ca")
        );
        assert!(
            tls.server_config()
                .unwrap_err()
                .to_string()
                .contains("--tls-key")
        );
    }
}
