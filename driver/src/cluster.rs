//! The driver's cluster role: Ballista's scheduler, embedded with Quiver's planner state (stores
//! and functions) and codecs. Executors register with it and pull tasks; clients submit plans.
//! One port serves the scheduler's gRPC service, `GET /readyz`, `/metrics` and the web console
//! (with the driver's queries and executors), over TLS when configured.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use ballista_core::config::TaskSchedulingPolicy;
use ballista_core::extension::SessionConfigExt;
use ballista_core::serde::BallistaCodec;
use ballista_core::serde::protobuf::scheduler_grpc_server::SchedulerGrpcServer;
use ballista_core::serde::scheduler::ExecutorMetadata;
use ballista_scheduler::cluster::{BallistaCluster, JobState};
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_server::SchedulerServer;
use ballista_scheduler::state::executor_manager::ExecutorManager;
use datafusion::error::DataFusionError;
use datafusion::prelude::SessionConfig;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use futures::FutureExt;
use quiver_engine::{QuiverError, Result, SessionOptions};
use quiver_sql::cluster::proto::coordinator_server::CoordinatorServer;
use quiver_sql::codec::{QuiverLogicalCodec, QuiverPhysicalCodec};
use quiver_sql::tls::Tls;

use crate::console::{self, ClusterView, Console, Scheduler};
use crate::coordinator::{CoordinatorService, TrainerDirectory, TrainerEndpoint};
use crate::scheduler_metrics::CountingScheduler;
use quiver_engine::err;
use tonic::service::RoutesBuilder;

/// Seconds without a heartbeat after which an executor counts as lost and its tasks run
/// elsewhere.
pub const EXECUTOR_TIMEOUT_SECONDS: u64 = 20;

/// How to run a driver.
#[derive(Debug, Clone)]
pub struct DriverOptions {
    /// The address the driver's gRPC service binds to.
    pub listen: SocketAddr,
    /// The host name executors and clients reach the driver at.
    pub advertise_host: String,
    /// The session the planner resolves stores and functions in.
    pub session: SessionOptions,
    /// TLS for the port; plain TCP when `None`. Under mutual TLS, executors and clients without
    /// a certificate signed by the cluster's CA are refused.
    pub tls: Option<Tls>,
}

fn cluster_error(listen: SocketAddr, what: &str, e: impl std::fmt::Display) -> QuiverError {
    err!(QuiverError::Cluster, "driver at {listen}: {what}: {e}")
}

/// The executors that sent a heartbeat within [`EXECUTOR_TIMEOUT_SECONDS`].
async fn live_executors(executors: &ExecutorManager) -> Vec<ExecutorMetadata> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    executors
        .get_executors_state()
        .await
        .unwrap_or_default()
        .into_iter()
        .filter(|(_, beat, _)| {
            beat.is_some_and(|t| now.saturating_sub(t.as_secs()) <= EXECUTOR_TIMEOUT_SECONDS)
        })
        .map(|(meta, _, _)| meta)
        .collect()
}

/// The live executors' trainers (each advertises its trainer's port as its gRPC port).
fn trainer_directory(executors: ExecutorManager) -> TrainerDirectory {
    Arc::new(move || {
        let executors = executors.clone();
        async move {
            live_executors(&executors)
                .await
                .into_iter()
                .map(|meta| TrainerEndpoint {
                    address: format!("{}:{}", meta.host, meta.grpc_port),
                    slots: meta.specification.vcores as usize,
                    device: meta.id.rsplit('/').next().unwrap_or("cpu").to_string(),
                    id: meta.id,
                })
                .collect()
        }
        .boxed()
    })
}

/// `GET /readyz`: 200 once an executor is registered, with how many are, then one line per
/// live executor: its id (`host:port/device`) and slots.
async fn readyz(State(scheduler): State<Arc<Scheduler>>) -> (StatusCode, String) {
    let alive: Vec<String> = live_executors(&scheduler.state.executor_manager)
        .await
        .iter()
        .map(|meta| format!("{} {} slots\n", meta.id, meta.specification.vcores))
        .collect();
    let (status, state) = if scheduler.is_ready() {
        (StatusCode::OK, "ready")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready")
    };
    let lines = alive.concat();
    (
        status,
        format!("{state}: {} executors registered\n{lines}", alive.len()),
    )
}

/// `GET /sd/executors`: the live executors' metrics endpoints (their trainer ports) in
/// Prometheus's HTTP service-discovery format, one target group per executor labelled with
/// its id and device.
async fn executor_targets(
    State(scheduler): State<Arc<Scheduler>>,
) -> axum::Json<Vec<serde_json::Value>> {
    let groups = live_executors(&scheduler.state.executor_manager)
        .await
        .into_iter()
        .map(|meta| {
            serde_json::json!({
                "targets": [format!("{}:{}", meta.host, meta.grpc_port)],
                "labels": {
                    "executor": meta.id,
                    "device": meta.id.rsplit('/').next().unwrap_or("cpu"),
                },
            })
        })
        .collect();
    axum::Json(groups)
}

/// Serves the scheduler's gRPC service, the experiment coordinator, `/readyz` and `/metrics` on
/// `listener` until it fails.
async fn serve(
    listener: tokio::net::TcpListener,
    scheduler: Scheduler,
    (console, jobs): (Console, Arc<dyn JobState>),
    options: &DriverOptions,
) -> std::io::Result<()> {
    let tls = options.tls.as_ref();
    let config = Arc::clone(&scheduler.state.config);
    let mut grpc = RoutesBuilder::default();
    grpc.add_service(
        SchedulerGrpcServer::new(CountingScheduler(scheduler.clone()))
            .max_encoding_message_size(config.grpc_server_max_encoding_message_size as usize)
            .max_decoding_message_size(config.grpc_server_max_decoding_message_size as usize),
    );
    grpc.add_service(CoordinatorServer::new(CoordinatorService::new(
        options.session.clone(),
        trainer_directory(scheduler.state.executor_manager.clone()),
        options.tls.clone(),
    )));
    let scheduler = Arc::new(scheduler);
    let view = ClusterView::new(Arc::clone(&scheduler), jobs, EXECUTOR_TIMEOUT_SECONDS);
    let app = axum::Router::new()
        .route("/readyz", axum::routing::get(readyz))
        .route("/metrics", axum::routing::get(quiver_engine::metrics::page))
        .route("/sd/executors", axum::routing::get(executor_targets))
        .route(
            "/",
            axum::routing::get(|| async { axum::response::Redirect::to("/queries") }),
        )
        .with_state(scheduler)
        .merge(console::pages(Arc::new(console.with_cluster(view))))
        .merge(grpc.routes().into_axum_router())
        .into_make_service_with_connect_info::<SocketAddr>();
    let listener = listener.into_std()?;
    match tls {
        Some(tls) => {
            let config = axum_server::tls_rustls::RustlsConfig::from_config(
                tls.server_config().map_err(std::io::Error::other)?,
            );
            axum_server::from_tcp_rustls(listener, config)
                .serve(app)
                .await
        }
        None => axum_server::from_tcp(listener).serve(app).await,
    }
}

/// Runs the driver's cluster service until Ctrl-C or SIGTERM.
pub async fn run_driver(options: DriverOptions) -> Result<()> {
    let listen = options.listen;
    let session = options.session.clone();
    // The planner state is built once per client session; check now that it can be.
    quiver_sql::cluster::planner_state(&session, Default::default())?;
    let config = SchedulerConfig {
        bind_host: listen.ip().to_string(),
        bind_port: listen.port(),
        external_host: options.advertise_host.clone(),
        scheduling_policy: TaskSchedulingPolicy::PullStaged,
        executor_timeout_seconds: EXECUTOR_TIMEOUT_SECONDS,
        expire_dead_executor_interval_seconds: 5,
        no_executors_grace_period_seconds: EXECUTOR_TIMEOUT_SECONDS,
        // Quiver's `quiver.*` settings pass from a client's session to its tasks.
        override_config_producer: Some(Arc::new(|| {
            quiver_engine::session::with_quiver_config(SessionConfig::new_with_ballista())
        })),
        override_session_builder: Some(Arc::new(move |config| {
            quiver_sql::cluster::planner_state(&session, config).map_err(DataFusionError::from)
        })),
        override_logical_codec: Some(Arc::new(QuiverLogicalCodec::default())),
        override_physical_codec: Some(Arc::new(QuiverPhysicalCodec::default())),
        ..Default::default()
    };
    let cluster = BallistaCluster::new_from_config(&config)
        .await
        .map_err(|e| cluster_error(listen, "cluster state", e))?;
    let jobs = cluster.job_state();
    // Ballista's `create_scheduler`, with Quiver's metrics collector in place of its default.
    let codec = BallistaCodec::new(
        Arc::new(QuiverLogicalCodec::default()),
        Arc::new(QuiverPhysicalCodec::default()),
    );
    let config = Arc::new(config);
    let mut scheduler = SchedulerServer::<LogicalPlanNode, PhysicalPlanNode>::new(
        config.scheduler_endpoint(),
        cluster,
        codec,
        Arc::clone(&config),
        Arc::new(crate::scheduler_metrics::Collector::new()),
    );
    scheduler
        .init()
        .await
        .map_err(|e| cluster_error(listen, "scheduler", e))?;
    let console = Console::new(&quiver_sql::session(options.session.clone())?)
        .map_err(|e| cluster_error(listen, "console", e))?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| cluster_error(listen, "cannot listen", e))?;
    let bound = listener.local_addr()?;
    // The first line on stdout says where the driver listens (`--listen host:0` picks a port):
    // scripts and tests read it instead of guessing a free port.
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        writeln!(out, "quiver driver listening on {bound}").and_then(|()| out.flush())?;
    }
    log::info!(
        "quiver driver listening on {bound} (executors and clients connect to {}:{}{})",
        options.advertise_host,
        bound.port(),
        match &options.tls {
            Some(tls) if tls.mutual() => " over mutual TLS",
            Some(_) => " over TLS",
            None => "",
        }
    );
    tokio::select! {
        served = serve(listener, scheduler, (console, jobs), &options) => {
            served.map_err(|e| cluster_error(listen, "service", e))
        }
        _ = crate::shutdown_signal() => {
            log::info!("quiver driver at {listen} stopping");
            Ok(())
        }
    }
}
