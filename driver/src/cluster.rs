//! The driver's cluster role: Ballista's scheduler, embedded with Quiver's planner state (stores
//! and functions) and codecs. Executors register with it and pull tasks; clients submit plans.

use std::net::SocketAddr;
use std::sync::Arc;

use ballista_core::config::TaskSchedulingPolicy;
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::{create_scheduler, start_grpc_service_with_listener};
use datafusion::error::DataFusionError;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use quiver_engine::{QuiverError, Result, SessionOptions};
use quiver_sql::codec::{QuiverLogicalCodec, QuiverPhysicalCodec};

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
}

fn cluster_error(listen: SocketAddr, what: &str, e: impl std::fmt::Display) -> QuiverError {
    QuiverError::Cluster(format!("driver at {listen}: {what}: {e}"))
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
    let scheduler =
        create_scheduler::<LogicalPlanNode, PhysicalPlanNode>(cluster, Arc::new(config))
            .await
            .map_err(|e| cluster_error(listen, "scheduler", e))?;
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| cluster_error(listen, "cannot listen", e))?;
    log::info!(
        "quiver driver listening on {} (executors and clients connect to {}:{})",
        listener.local_addr()?,
        options.advertise_host,
        listen.port()
    );
    tokio::select! {
        served = start_grpc_service_with_listener(listener, scheduler) => {
            served.map_err(|e| cluster_error(listen, "service", e))
        }
        _ = crate::shutdown_signal() => {
            log::info!("quiver driver at {listen} stopping");
            Ok(())
        }
    }
}
