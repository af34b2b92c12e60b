//! `quiver driver` and `quiver executor` options: flags, then `QUIVER_*` environment variables,
//! then the cluster file (`--config`, TOML), then defaults.
//!
//! ```toml
//! [driver]
//! listen = "0.0.0.0:50050"
//! advertise_host = "driver.example"
//!
//! [executor]
//! driver = "driver.example:50050"
//! slots = 4
//! device = "cuda:0"
//! bind = "0.0.0.0"
//! advertise_host = "worker-1.example"
//! port = 50051
//! trainer_port = 50061
//! work_dir = "/var/tmp/quiver"
//!
//! [client]
//! cluster = "driver.example:50050"
//!
//! [tls]
//! cert = "/etc/quiver/node.pem"
//! key = "/etc/quiver/node.key"
//! ca = "/etc/quiver/ca.pem"
//! mutual = true
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Args;
use quiver_driver::cluster::DriverOptions;
use quiver_engine::err;
use quiver_engine::{QuiverError, Result, SessionOptions};
use quiver_executor::ExecutorOptions;
use quiver_sql::tls::{Tls, TlsFiles};
use serde::Deserialize;

/// The default port of a driver.
pub(crate) const DEFAULT_DRIVER_PORT: u16 = 50050;

/// The cluster file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct ClusterFile {
    #[serde(default)]
    driver: DriverSection,
    #[serde(default)]
    executor: ExecutorSection,
    #[serde(default)]
    client: ClientSection,
    #[serde(default)]
    tls: TlsSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsSection {
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    ca: Option<PathBuf>,
    mutual: Option<bool>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct DriverSection {
    listen: Option<String>,
    advertise_host: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExecutorSection {
    driver: Option<String>,
    slots: Option<usize>,
    device: Option<String>,
    bind: Option<String>,
    advertise_host: Option<String>,
    port: Option<u16>,
    trainer_port: Option<u16>,
    work_dir: Option<PathBuf>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct ClientSection {
    cluster: Option<String>,
}

impl ClusterFile {
    /// Reads the file at `path`, or nothing when there is none.
    pub(crate) fn load(path: Option<&Path>) -> Result<Self> {
        let Some(path) = path else {
            return Ok(Self::default());
        };
        let text = std::fs::read_to_string(path).map_err(|e| {
            err!(
                QuiverError::Config,
                "cannot read cluster file '{}': {e}",
                path.display()
            )
        })?;
        toml::from_str(&text).map_err(|e| {
            err!(
                QuiverError::Config,
                "cluster file '{}': {e}",
                path.display()
            )
        })
    }

    /// The cluster a client connects to, from the file.
    pub(crate) fn client_cluster(&self) -> Option<&str> {
        self.client.cluster.as_deref()
    }
}

/// TLS flags of `quiver driver`, `quiver executor` and `quiver sql --cluster`.
#[derive(Debug, Args)]
pub(crate) struct TlsArgs {
    /// This process's certificate (PEM): its server identity, and its client identity under
    /// mutual TLS.
    #[arg(long = "tls-cert", env = "QUIVER_TLS_CERT")]
    cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long = "tls-key", env = "QUIVER_TLS_KEY")]
    key: Option<PathBuf>,
    /// The cluster's CA (PEM): servers' certificates must carry its signature, and clients'
    /// too under --mutual-tls.
    #[arg(long = "tls-ca", env = "QUIVER_TLS_CA")]
    ca: Option<PathBuf>,
    /// Refuse executors and clients without a certificate signed by --tls-ca.
    #[arg(long, env = "QUIVER_MUTUAL_TLS")]
    mutual_tls: bool,
}

impl TlsArgs {
    /// The TLS set-up from the flags and the file's `[tls]` section; `None` when neither names
    /// any file.
    pub(crate) fn tls(&self, file: &ClusterFile) -> Result<Option<Tls>> {
        let section = &file.tls;
        let files = TlsFiles {
            cert: self.cert.clone().or_else(|| section.cert.clone()),
            key: self.key.clone().or_else(|| section.key.clone()),
            ca: self.ca.clone().or_else(|| section.ca.clone()),
            mutual: self.mutual_tls || section.mutual.unwrap_or(false),
        };
        files.is_set().then(|| Tls::load(&files)).transpose()
    }
}

/// `quiver driver` flags for the cluster service.
#[derive(Debug, Args)]
pub(crate) struct DriverArgs {
    /// Serve the cluster on this address (`host:port`); executors and clients connect here.
    #[arg(long, env = "QUIVER_LISTEN")]
    pub(crate) listen: Option<String>,
    /// The host name executors and clients reach this driver at (default: the listen host).
    #[arg(long, env = "QUIVER_DRIVER_HOST")]
    advertise_host: Option<String>,
    #[command(flatten)]
    tls: TlsArgs,
}

impl DriverArgs {
    /// The driver's options, when it serves a cluster at all.
    pub(crate) fn options(
        &self,
        file: &ClusterFile,
        session: &SessionOptions,
    ) -> Result<Option<DriverOptions>> {
        let Some(listen) = self.listen.clone().or_else(|| file.driver.listen.clone()) else {
            return Ok(None);
        };
        let listen: SocketAddr = listen
            .parse()
            .map_err(|e| err!(QuiverError::Config, "bad --listen '{listen}': {e}"))?;
        let advertise_host = self
            .advertise_host
            .clone()
            .or_else(|| file.driver.advertise_host.clone())
            .unwrap_or_else(|| match listen.ip() {
                ip if ip.is_unspecified() => "localhost".to_string(),
                ip => ip.to_string(),
            });
        Ok(Some(DriverOptions {
            listen,
            advertise_host,
            session: session.clone(),
            tls: self.tls.tls(file)?,
        }))
    }
}

/// `quiver executor` flags.
#[derive(Debug, Args)]
pub(crate) struct ExecutorArgs {
    /// The driver to join (`host:port`).
    #[arg(long, env = "QUIVER_DRIVER")]
    driver: Option<String>,
    /// Tasks run at once (default: the number of cores).
    #[arg(long, env = "QUIVER_SLOTS")]
    slots: Option<usize>,
    /// The device offered to training: `cpu`, `cuda` (every GPU) or `cuda:K`.
    #[arg(long, env = "QUIVER_DEVICE")]
    device: Option<String>,
    /// The address the data service binds to.
    #[arg(long, env = "QUIVER_BIND")]
    bind: Option<String>,
    /// The host name the driver and other executors reach this executor at.
    #[arg(long, env = "QUIVER_EXECUTOR_HOST")]
    advertise_host: Option<String>,
    /// The port of the data service (default: a free one).
    #[arg(long, env = "QUIVER_EXECUTOR_PORT")]
    port: Option<u16>,
    /// Where shuffle files go (default: a temporary folder).
    #[arg(long, env = "QUIVER_WORK_DIR")]
    work_dir: Option<PathBuf>,
    /// The port of the trainer service, which trains experiments' trials (default: a free one).
    #[arg(long, env = "QUIVER_TRAINER_PORT")]
    trainer_port: Option<u16>,
    #[command(flatten)]
    tls: TlsArgs,
}

impl ExecutorArgs {
    /// The executor's options.
    pub(crate) fn options(
        &self,
        file: &ClusterFile,
        session: &SessionOptions,
    ) -> Result<ExecutorOptions> {
        let section = &file.executor;
        let driver = self
            .driver
            .clone()
            .or_else(|| section.driver.clone())
            .unwrap_or_else(|| format!("localhost:{DEFAULT_DRIVER_PORT}"));
        let slots = self
            .slots
            .or(section.slots)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let device = self
            .device
            .clone()
            .or_else(|| section.device.clone())
            .unwrap_or_else(|| "cpu".into());
        quiver_operators::ml::device::parse(&device)
            .map_err(|e| err!(QuiverError::Config, "--device '{device}': {e}"))?;
        let bind = self
            .bind
            .clone()
            .or_else(|| section.bind.clone())
            .unwrap_or_else(|| "127.0.0.1".into());
        let advertise_host = self
            .advertise_host
            .clone()
            .or_else(|| section.advertise_host.clone())
            .unwrap_or_else(|| match bind.as_str() {
                "0.0.0.0" | "::" => "localhost".to_string(),
                host => host.to_string(),
            });
        Ok(ExecutorOptions {
            driver,
            bind_host: bind,
            advertise_host,
            port: self.port.or(section.port).unwrap_or(0),
            slots,
            device,
            work_dir: self.work_dir.clone().or_else(|| section.work_dir.clone()),
            trainer_port: self.trainer_port.or(section.trainer_port).unwrap_or(0),
            session: session.clone(),
            tls: self.tls.tls(file)?,
        })
    }
}
