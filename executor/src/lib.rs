//! The executor role of a Quiver cluster: Ballista's executor, embedded with Quiver's functions,
//! stores and codecs. It registers with the driver, pulls tasks for its slots, serves its shuffle
//! output over Arrow Flight, and heartbeats until Ctrl-C or SIGTERM.

use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Arc;

use arrow_flight::flight_service_server::FlightServiceServer;
use ballista_core::config::TaskSchedulingPolicy;
use ballista_core::error::BallistaError;
use ballista_core::extension::SessionConfigExt;
use ballista_core::utils::{GrpcServerConfig, create_grpc_server};
use ballista_executor::ArrowFlightServerProvider;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use ballista_executor::flight_service::BallistaFlightService;
use ballista_executor::shutdown::Shutdown;
use datafusion::execution::runtime_env::RuntimeEnvBuilder;
use datafusion::prelude::SessionConfig;
use quiver_engine::{QuiverError, Result, Session, SessionOptions, StoreRegistry};
use quiver_operators::experiment::LocalExecutor;
use quiver_sql::codec::{QuiverLogicalCodec, QuiverPhysicalCodec};
use quiver_sql::tls::Tls;
use tonic::transport::ServerTlsConfig;
use trainer::TrainerService;

pub mod logging;
pub mod ring;
pub mod trainer;

/// The session an executor runs tasks in: the same registrations as the driver's.
pub fn executor_session(options: SessionOptions) -> Result<Session> {
    quiver_sql::session(options)
}

/// A device an executor offers to training work.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Device {
    /// The CPU cores.
    Cpu,
    /// The CUDA device with this ordinal.
    Cuda(usize),
}

impl std::str::FromStr for Device {
    type Err = QuiverError;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "cpu" => Ok(Self::Cpu),
            _ => s
                .strip_prefix("cuda:")
                .and_then(|k| k.parse().ok())
                .map(Self::Cuda)
                .ok_or_else(|| {
                    QuiverError::Config(format!("bad --device '{s}': expected cpu or cuda:K"))
                }),
        }
    }
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda(k) => write!(f, "cuda:{k}"),
        }
    }
}

/// How to run an executor.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// The driver's address, `host:port`.
    pub driver: String,
    /// The address the executor's data service binds to.
    pub bind_host: String,
    /// The host name the driver and other executors reach this executor at.
    pub advertise_host: String,
    /// The port of the data service; a free one when 0.
    pub port: u16,
    /// Tasks run at once.
    pub slots: usize,
    /// The device offered to training work.
    pub device: Device,
    /// Where shuffle files go; a temporary folder when `None`.
    pub work_dir: Option<PathBuf>,
    /// The port of the trainer service (trials of experiments); a free one when 0.
    pub trainer_port: u16,
    /// The session every task runs in (stores, partitions).
    pub session: SessionOptions,
    /// TLS for the channel to the driver, the data service and the fetches from other
    /// executors; plain TCP when `None`.
    pub tls: Option<Tls>,
}

fn free_port(host: &str) -> Result<u16> {
    Ok(TcpListener::bind((host, 0))?.local_addr()?.port())
}

fn split_host_port(address: &str) -> Result<(String, u16)> {
    let url = quiver_sql::cluster::driver_url(address)?;
    let url = quiver_engine::url::Url::parse(&url)
        .map_err(|e| QuiverError::Config(format!("bad driver address '{address}': {e}")))?;
    match (url.host_str(), url.port()) {
        (Some(host), Some(port)) => Ok((host.to_string(), port)),
        _ => Err(QuiverError::Config(format!(
            "bad driver address '{address}': expected host:port"
        ))),
    }
}

/// Ballista's Flight data service (shuffle and result partitions) behind TLS.
fn tls_flight_service(tls: ServerTlsConfig) -> Result<Arc<ArrowFlightServerProvider>> {
    let defaults = ExecutorProcessConfig::default();
    let (encoding, decoding) = (
        defaults.grpc_max_encoding_message_size as usize,
        defaults.grpc_max_decoding_message_size as usize,
    );
    Ok(Arc::new(
        move |work_dir, address, mut shutdown: Shutdown, grpc: GrpcServerConfig| {
            let tls = tls.clone();
            tokio::spawn(async move {
                log::info!("executor data service on {address} over TLS");
                create_grpc_server(&grpc)
                    .tls_config(tls)?
                    .add_service(
                        FlightServiceServer::new(BallistaFlightService::new(work_dir))
                            .max_decoding_message_size(decoding)
                            .max_encoding_message_size(encoding),
                    )
                    .serve_with_shutdown(address, shutdown.recv())
                    .await
                    .map_err(BallistaError::TonicError)
            })
        },
    ))
}

/// Starts the trainer service, training in `session`, on the executor's bind host; returns its
/// port.
async fn start_trainer(options: &ExecutorOptions, id: &str, session: Session) -> Result<u16> {
    let slots = LocalExecutor::new(session, options.slots, &options.device.to_string())?;
    let listener =
        tokio::net::TcpListener::bind((options.bind_host.as_str(), options.trainer_port))
            .await
            .map_err(|e| {
                QuiverError::Cluster(format!(
                    "trainer cannot listen on {}:{}: {e}",
                    options.bind_host, options.trainer_port
                ))
            })?;
    let port = listener.local_addr()?.port();
    let router = TrainerService::new(id.to_string(), slots, options.tls.clone()).router()?;
    let id = id.to_string();
    tokio::spawn(async move {
        if let Err(e) = router
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
        {
            log::error!("trainer of executor {id} stopped: {e}");
        }
    });
    log::info!("executor trainer on {}:{port}", options.bind_host);
    Ok(port)
}

/// Runs an executor until Ctrl-C or SIGTERM, or until the driver tells it to stop.
pub async fn run_executor(options: ExecutorOptions) -> Result<()> {
    if options.slots == 0 {
        return Err(QuiverError::Config("--slots must be at least 1".into()));
    }
    let (scheduler_host, scheduler_port) = split_host_port(&options.driver)?;
    let port = match options.port {
        0 => free_port(&options.bind_host)?,
        port => port,
    };
    let work_dir = match &options.work_dir {
        Some(dir) => {
            std::fs::create_dir_all(dir)?;
            Some(dir.display().to_string())
        }
        None => None,
    };
    let session = executor_session(options.session.clone())?;
    let registry = quiver_sql::cluster::function_registry(&session);
    let stores = Arc::new(StoreRegistry::new(options.session.s3.clone()));
    let temp = work_dir
        .clone()
        .unwrap_or_else(|| std::env::temp_dir().display().to_string());
    let runtime = Arc::new(
        RuntimeEnvBuilder::new()
            .with_object_store_registry(stores)
            .with_temp_file_path(temp)
            .build()?,
    );
    let flight_service = options
        .tls
        .as_ref()
        .map(|tls| tls_flight_service(tls.tonic_server()?))
        .transpose()?;
    let executor_id = format!("{}:{port}/{}", options.advertise_host, options.device);
    let trainer_port = start_trainer(&options, &executor_id, session).await?;
    let tls = options.tls.clone();
    let config = ExecutorProcessConfig {
        executor_id,
        bind_host: options.bind_host.clone(),
        external_host: Some(options.advertise_host.clone()),
        port,
        // Ballista's pull-based executors serve no gRPC of their own: the port advertised in
        // the registration is the trainer's.
        grpc_port: trainer_port,
        scheduler_host,
        scheduler_port,
        scheduler_connect_timeout_seconds: 30,
        vcores: options.slots,
        task_scheduling_policy: TaskSchedulingPolicy::PullStaged,
        work_dir,
        print_thread_info: false,
        job_data_clean_up_interval_seconds: 600,
        job_data_ttl_seconds: 3600,
        executor_heartbeat_interval_seconds: 5,
        override_function_registry: Some(Arc::new(registry)),
        override_runtime_producer: Some(Arc::new(move |_| Ok(Arc::clone(&runtime)))),
        override_config_producer: Some(Arc::new(move || {
            let config = SessionConfig::new_with_ballista().with_information_schema(true);
            match &tls {
                Some(tls) => tls.session_config(config),
                None => config,
            }
        })),
        override_create_grpc_client_endpoint: options.tls.as_ref().map(Tls::endpoint_override),
        override_arrow_flight_service: flight_service,
        override_logical_codec: Some(Arc::new(QuiverLogicalCodec::default())),
        override_physical_codec: Some(Arc::new(QuiverPhysicalCodec::default())),
        ..Default::default()
    };
    log::info!(
        "quiver executor {} ({} slots, device {}) joining the driver at {}{}",
        config.executor_id,
        options.slots,
        options.device,
        options.driver,
        match &options.tls {
            Some(tls) if tls.mutual() => " over mutual TLS",
            Some(_) => " over TLS",
            None => "",
        }
    );
    start_executor_process(Arc::new(config))
        .await
        .map_err(|e| QuiverError::Cluster(format!("executor {}: {e}", options.advertise_host)))
}
