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
use quiver_engine::err;
use quiver_engine::{QuiverError, Result, Session, SessionOptions, StoreRegistry};
use quiver_operators::experiment::LocalTrialRunner;
use quiver_sql::codec::{QuiverLogicalCodec, QuiverPhysicalCodec};
use quiver_sql::tls::Tls;
use tonic::transport::ServerTlsConfig;
use tonic::transport::server::TcpIncoming;
use trainer::TrainerService;

pub mod ring;
pub mod trainer;

/// The session an executor runs tasks in: the same registrations as the driver's.
pub fn executor_session(options: SessionOptions) -> Result<Session> {
    quiver_sql::session(options)
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
    /// The device offered to training work: `cpu`, `cuda` (every GPU) or `cuda:K`.
    pub device: String,
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

fn split_host_port(address: &str) -> Result<(String, u16)> {
    let url = quiver_sql::cluster::driver_url(address)?;
    let url = quiver_engine::url::Url::parse(&url)
        .map_err(|e| err!(QuiverError::Config, "bad driver address '{address}': {e}"))?;
    match (url.host_str(), url.port()) {
        (Some(host), Some(port)) => Ok((host.to_string(), port)),
        _ => Err(err!(
            QuiverError::Config,
            "bad driver address '{address}': expected host:port"
        )),
    }
}

/// Ballista's Flight data service (shuffle and result partitions) on `listener`, which is bound
/// before the executor registers, so that the port it advertises is the one it serves (a port
/// picked, released and bound again could be taken in between); behind TLS when `tls` is set.
fn flight_service(
    listener: std::net::TcpListener,
    tls: Option<ServerTlsConfig>,
) -> Arc<ArrowFlightServerProvider> {
    let defaults = ExecutorProcessConfig::default();
    let (encoding, decoding) = (
        defaults.grpc_max_encoding_message_size as usize,
        defaults.grpc_max_decoding_message_size as usize,
    );
    let listener = std::sync::Mutex::new(Some(listener));
    Arc::new(
        move |work_dir, address, mut shutdown: Shutdown, grpc: GrpcServerConfig| {
            let listener = listener.lock().map(|mut l| l.take()).ok().flatten();
            let tls = tls.clone();
            tokio::spawn(async move {
                let listener = listener.ok_or_else(|| {
                    BallistaError::Internal("the executor's data service started twice".into())
                })?;
                listener.set_nonblocking(true)?;
                let incoming = TcpIncoming::from(tokio::net::TcpListener::from_std(listener)?)
                    .with_nodelay(Some(true));
                log::info!(
                    "executor data service on {address}{}",
                    if tls.is_some() { " over TLS" } else { "" }
                );
                let mut server = create_grpc_server(&grpc);
                if let Some(tls) = tls {
                    server = server.tls_config(tls)?;
                }
                server
                    .add_service(
                        FlightServiceServer::new(BallistaFlightService::new(work_dir))
                            .max_decoding_message_size(decoding)
                            .max_encoding_message_size(encoding),
                    )
                    .serve_with_incoming_shutdown(incoming, shutdown.recv())
                    .await
                    .map_err(BallistaError::TonicError)
            })
        },
    )
}

/// Starts the trainer service, training in `session`, on the executor's bind host; returns its
/// port.
async fn start_trainer(options: &ExecutorOptions, id: &str, session: Session) -> Result<u16> {
    let progress = Arc::clone(session.progress());
    let slots = LocalTrialRunner::new(session, options.slots, &options.device)?;
    let listener =
        tokio::net::TcpListener::bind((options.bind_host.as_str(), options.trainer_port))
            .await
            .map_err(|e| {
                err!(
                    QuiverError::Cluster,
                    "trainer cannot listen on {}:{}: {e}",
                    options.bind_host,
                    options.trainer_port
                )
            })?;
    let port = listener.local_addr()?.port();
    let router =
        TrainerService::new(id.to_string(), slots, progress, options.tls.clone()).router()?;
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

/// The error of `e` with its causes, `outer: inner: ...`.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.contains(&more) {
            text = format!("{text}: {more}");
        }
        source = cause.source();
    }
    text
}

/// What is likely wrong when the driver cannot be reached with `error`.
fn explain_unreachable(error: &str, tls: bool) -> String {
    let lower = error.to_lowercase();
    let certificate = [
        "certificate",
        "unknownissuer",
        "unknown ca",
        "badcertificate",
    ]
    .iter()
    .any(|w| lower.contains(w));
    if lower.contains("connection refused") {
        format!("{error} (nothing listens there: is the driver running?)")
    } else if tls && certificate {
        format!(
            "the TLS handshake failed ({error}): --tls-ca must be the CA that signed the \
             driver's certificate, and under mutual TLS --tls-cert must be signed by the \
             cluster's CA"
        )
    } else if tls {
        format!("{error} (this executor uses TLS: does the driver?)")
    } else {
        format!(
            "{error} (if the driver uses TLS, start the executor with --tls-ca, and with \
             --tls-cert and --tls-key under mutual TLS)"
        )
    }
}

/// Waits until the driver answers (through the executor's TLS), so that a wrong address or
/// TLS setting is reported once, with its likely cause, and retried with a growing delay.
async fn reach_driver(options: &ExecutorOptions, who: &str) -> Result<()> {
    use quiver_sql::cluster::proto::{HelloRequest, coordinator_client::CoordinatorClient};
    let mut url = quiver_sql::cluster::driver_url(&options.driver)?;
    if let (Some(_), Some(rest)) = (&options.tls, url.strip_prefix("http://")) {
        url = format!("https://{rest}");
    }
    let mut endpoint = tonic::transport::Endpoint::from_shared(url.clone())
        .map_err(|e| err!(QuiverError::Config, "bad driver address '{url}': {e}"))?
        .connect_timeout(std::time::Duration::from_secs(10));
    if let Some(tls) = &options.tls {
        endpoint = tls.endpoint(endpoint)?;
    }
    let mut delay = std::time::Duration::from_millis(250);
    let mut said: Option<String> = None;
    let mut attempts = 0u64;
    loop {
        attempts += 1;
        let answer = async {
            let channel = endpoint.connect().await.map_err(|e| error_chain(&e))?;
            CoordinatorClient::new(channel)
                .hello(HelloRequest {
                    who: who.to_string(),
                })
                .await
                .map_err(|e| error_chain(&e))
        }
        .await;
        let why = match answer {
            Ok(_) => return Ok(()),
            Err(e) => explain_unreachable(&e, options.tls.is_some()),
        };
        if said.as_deref() != Some(why.as_str()) {
            log::warn!(
                "cannot reach the driver at {url}: {why}; retrying in {:.1}s, then less and \
                 less often",
                delay.as_secs_f64()
            );
            said = Some(why);
        } else if attempts.is_power_of_two() {
            log::warn!(
                "still cannot reach the driver at {url} after {attempts} attempts; retrying in \
                 {:.0}s",
                delay.as_secs_f64()
            );
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = tokio::signal::ctrl_c() => {
                return Err(QuiverError::Cancelled("stopped before it reached the driver".into()));
            }
        }
        delay = (delay * 2).min(std::time::Duration::from_secs(30));
    }
}

/// Runs an executor until Ctrl-C or SIGTERM, or until the driver tells it to stop.
pub async fn run_executor(options: ExecutorOptions) -> Result<()> {
    if options.slots == 0 {
        return Err(QuiverError::Config("--slots must be at least 1".into()));
    }
    let (scheduler_host, scheduler_port) = split_host_port(&options.driver)?;
    let data_listener =
        TcpListener::bind((options.bind_host.as_str(), options.port)).map_err(|e| {
            err!(
                QuiverError::Cluster,
                "executor data service cannot listen on {}:{}: {e}",
                options.bind_host,
                options.port
            )
        })?;
    let port = data_listener.local_addr()?.port();
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
    let flight_tls = options.tls.as_ref().map(Tls::tonic_server).transpose()?;
    let flight_service = flight_service(data_listener, flight_tls);
    // Unique per process start: an executor restarted on the same port is a new executor.
    let executor_id = format!(
        "{}:{port}-{}/{}",
        options.advertise_host,
        &uuid::Uuid::new_v4().simple().to_string()[..8],
        options.device
    );
    reach_driver(&options, &format!("executor {executor_id}")).await?;
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
            let config =
                quiver_engine::session::with_quiver_config(SessionConfig::new_with_ballista())
                    .with_information_schema(true);
            match &tls {
                Some(tls) => tls.session_config(config),
                None => config,
            }
        })),
        override_create_grpc_client_endpoint: options.tls.as_ref().map(Tls::endpoint_override),
        override_arrow_flight_service: Some(flight_service),
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
    start_executor_process(Arc::new(config)).await.map_err(|e| {
        err!(
            QuiverError::Cluster,
            "executor {}: {e}",
            options.advertise_host
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unreachable_drivers_are_explained_by_their_likely_cause() {
        let plain = explain_unreachable("transport error: connection reset by peer", false);
        assert!(
            plain.contains("--tls-ca") && plain.contains("TLS"),
            "{plain}"
        );
        let foreign = explain_unreachable(
            "transport error: invalid peer certificate: UnknownIssuer",
            true,
        );
        assert!(foreign.contains("--tls-ca must be the CA"), "{foreign}");
        let down =
            explain_unreachable("tcp connect error: Connection refused (os error 111)", true);
        assert!(down.contains("is the driver running?"), "{down}");
    }

    #[test]
    fn error_chains_keep_every_cause_once() {
        #[derive(Debug)]
        struct Outer(std::io::Error);
        impl std::fmt::Display for Outer {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("transport error")
            }
        }
        impl std::error::Error for Outer {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let e = Outer(std::io::Error::other("connection refused"));
        assert_eq!(error_chain(&e), "transport error: connection refused");
    }
}
