//! Cluster mode, the parts that the client, the driver and the executors share: a session whose
//! queries run on a cluster ([`connect`]), the codecs every role uses, and the functions that
//! the driver's planner and the executors look plans' functions up in.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use ballista_core::extension::{SessionConfigExt, SessionStateExt};
use ballista_core::planner::BallistaQueryPlanner;
use ballista_core::registry::BallistaFunctionRegistry;
use datafusion::common::internal_err;
use datafusion::common::tree_node::{Transformed, TreeNode, TreeNodeRecursion};
use datafusion::datasource::file_format::{file_type_to_format, format_as_file_type};
use datafusion::datasource::source_as_provider;
use datafusion::error::DataFusionError;
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::session_state::SessionState;
use datafusion::execution::{SessionStateBuilder, TaskContext};
use datafusion::logical_expr::LogicalPlan;
use datafusion::logical_expr::dml::CopyTo;
use datafusion::optimizer::optimizer::ApplyOrder;
use datafusion::optimizer::{OptimizerConfig, OptimizerRule};
use datafusion::physical_expr::PhysicalExpr;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use datafusion::physical_plan::{
    DisplayAs, DisplayFormatType, ExecutionPlan, PlanProperties, SendableRecordBatchStream,
};
use datafusion::prelude::SessionConfig;
use datafusion_proto::protobuf::LogicalPlanNode;
use futures::TryStreamExt;
use quiver_engine::{QuiverError, Result, Session, SessionOptions, Skipped, SkippedImage};
use quiver_operators::TfRecordFormatFactory;

use crate::codec::{QuiverLogicalCodec, QuiverPhysicalCodec};

/// Quiver's own cluster services: each executor's trainer and the driver's coordinator.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("quiver.cluster.v1");
}

impl From<Skipped> for proto::SkippedImages {
    fn from(skipped: Skipped) -> Self {
        Self {
            count: skipped.count,
            images: skipped
                .images
                .into_iter()
                .map(|i| proto::SkippedImage {
                    file: i.file,
                    reason: i.reason,
                })
                .collect(),
            missing: Vec::new(),
        }
    }
}

impl From<proto::SkippedImages> for Skipped {
    fn from(reply: proto::SkippedImages) -> Self {
        Self {
            count: reply.count,
            images: reply
                .images
                .into_iter()
                .map(|i| SkippedImage {
                    file: i.file,
                    reason: i.reason,
                })
                .collect(),
        }
    }
}
use crate::create_model::CreateModel;
use crate::tls::Tls;
use datafusion::common::exec_datafusion_err;
use quiver_engine::{bail, err};
use quiver_operators::experiment::ExperimentFile;
use quiver_operators::ml::ModelCard;
use tonic::transport::Endpoint;

/// The gRPC URL of a driver given as `host:port` or a full `http(s)://` URL.
pub fn driver_url(address: &str) -> Result<String> {
    let url = if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    };
    let parsed = quiver_engine::url::Url::parse(&url)
        .map_err(|e| err!(QuiverError::Config, "bad driver address '{address}': {e}"))?;
    match (parsed.scheme(), parsed.host_str(), parsed.port()) {
        ("http" | "https", Some(_), Some(_)) => Ok(url.trim_end_matches('/').to_string()),
        _ => Err(err!(
            QuiverError::Config,
            "bad driver address '{address}': expected host:port or http(s)://host:port"
        )),
    }
}

/// A session whose queries run on the cluster of the driver at `driver` (`host:port` or a URL);
/// DDL, the catalog and Quiver's statements stay in this process. With `tls`, every channel
/// (to the driver and to the executors that hold results) uses TLS.
pub fn connect(options: SessionOptions, driver: &str, tls: Option<&Tls>) -> Result<Session> {
    let mut url = driver_url(driver)?;
    if let (Some(tls), Some(rest)) = (tls, url.strip_prefix("http://")) {
        tls.tonic_client()?;
        url = format!("https://{rest}");
    }
    let session = Session::try_new_with(options, |state| {
        let config = state
            .config()
            .clone()
            .with_ballista_logical_extension_codec(Arc::new(QuiverLogicalCodec::default()))
            .with_ballista_physical_extension_codec(Arc::new(QuiverPhysicalCodec::default()))
            .with_ballista_job_name("quiver");
        let config = match tls {
            Some(tls) => tls.session_config(config),
            None => config,
        }
        .with_extension(Arc::new(ClusterClient {
            driver: url.clone(),
            tls: tls.cloned(),
        }));
        let ballista = BallistaQueryPlanner::with_extension(
            url.clone(),
            config.clone().upgrade_for_ballista().ballista_config(),
            Arc::new(QuiverLogicalCodec::default()),
        );
        let config = config.with_ballista_query_planner(Arc::new(ClusterPlanner {
            ballista,
            local: Arc::clone(state.query_planner()),
            driver: url.clone(),
        }));
        SessionStateBuilder::new_from_existing(state)
            .with_config(config)
            .build()
            .upgrade_for_ballista(url)
    })?;
    crate::register_all(&session)?;
    Ok(session)
}

/// A cluster session's way to the driver's own services (the experiment coordinator).
#[derive(Debug)]
pub struct ClusterClient {
    driver: String,
    tls: Option<Tls>,
}

/// The cluster client of a session made by [`connect`]; `None` for an embedded session.
pub fn client_of(session: &Session) -> Option<Arc<ClusterClient>> {
    session
        .context()
        .state()
        .config()
        .get_extension::<ClusterClient>()
}

impl ClusterClient {
    /// Has the driver's coordinator run (or resume) an experiment across the executors, with its
    /// live log on the session's log; returns whether the objective is maximized.
    pub async fn run_experiment(&self, session: &Session, create: &CreateModel) -> Result<bool> {
        let json = self.call(session, create, "experiment").await?;
        let file: ExperimentFile = serde_json::from_str(&json)
            .map_err(|e| err!(QuiverError::Cluster, "bad experiment.json: {e}"))?;
        Ok(file.objective.maximize)
    }

    /// Has the driver's coordinator train a data-parallel model on a gang of executors and
    /// register it, with its live log on the session's log; returns the registered card.
    pub async fn train_model(&self, session: &Session, create: &CreateModel) -> Result<ModelCard> {
        let json = self.call(session, create, "model").await?;
        serde_json::from_str(&json).map_err(|e| err!(QuiverError::Cluster, "bad model.json: {e}"))
    }

    /// Has the driver abort the TFRecord writes to `destination` (every executor stops its
    /// writers, then the staged files are removed); returns the staged objects removed.
    pub async fn abort_writes(&self, destination: &str, write_id: &str) -> Result<u64> {
        let mut client = self.coordinator().await?;
        let reply = client
            .abort_writes(proto::AbortWritesRequest {
                destination: destination.to_string(),
                write_id: write_id.to_string(),
            })
            .await
            .map_err(|e| match e.code() {
                tonic::Code::Unavailable | tonic::Code::Unknown => self.unreachable(&e),
                _ => err!(QuiverError::Cluster, "{}", e.message()),
            })?;
        Ok(reply.into_inner().files_removed)
    }

    /// Collects from the executors (through the driver) the images statement `statement_id`
    /// skipped; also names the executors that did not answer.
    pub async fn take_skipped_images(&self, statement_id: &str) -> Result<(Skipped, Vec<String>)> {
        let mut client = self.coordinator().await?;
        let reply = client
            .take_skipped_images(proto::SkippedImagesRequest {
                statement_id: statement_id.to_string(),
            })
            .await
            .map_err(|e| match e.code() {
                tonic::Code::Unavailable | tonic::Code::Unknown => self.unreachable(&e),
                _ => err!(QuiverError::Cluster, "{}", e.message()),
            })?
            .into_inner();
        let missing = reply.missing.clone();
        Ok((reply.into(), missing))
    }

    fn unreachable(&self, e: &dyn std::fmt::Display) -> QuiverError {
        err!(
            QuiverError::Cluster,
            "cannot talk to the driver at {}: {e}",
            self.driver
        )
    }

    /// A client of the driver's coordinator.
    async fn coordinator(
        &self,
    ) -> Result<proto::coordinator_client::CoordinatorClient<tonic::transport::Channel>> {
        let mut endpoint =
            Endpoint::from_shared(self.driver.clone()).map_err(|e| self.unreachable(&e))?;
        if let Some(tls) = &self.tls {
            endpoint = tls.endpoint(endpoint)?;
        }
        let channel = endpoint.connect().await.map_err(|e| self.unreachable(&e))?;
        Ok(proto::coordinator_client::CoordinatorClient::new(channel))
    }

    /// Sends `create` to the coordinator (`what` is `experiment` or `model`) and relays its
    /// log; returns the final JSON.
    async fn call(&self, session: &Session, create: &CreateModel, what: &str) -> Result<String> {
        let unreachable = |e: &dyn std::fmt::Display| self.unreachable(e);
        let request = proto::StatementRequest {
            create_json: serde_json::to_string(create)
                .map_err(|e| QuiverError::Cluster(e.to_string()))?,
        };
        let mut client = self.coordinator().await?;
        let response = match what {
            "experiment" => client.run_experiment(request).await,
            _ => client.train_model(request).await,
        };
        let mut events = response.map_err(|e| unreachable(&e))?.into_inner();
        while let Some(event) = events.message().await.map_err(|e| unreachable(&e))? {
            match event.kind {
                Some(proto::statement_event::Kind::Log(line)) => session.log(&line),
                Some(proto::statement_event::Kind::DoneJson(json)) => return Ok(json),
                Some(proto::statement_event::Kind::Error(message)) => {
                    bail!(
                        QuiverError::Cluster,
                        "{what} {} on the cluster: {message}",
                        create.name
                    );
                }
                None => {}
            }
        }
        Err(unreachable(
            &"the coordinator's stream ended without a result",
        ))
    }
}

/// The state the driver's planner uses for a client's session with `config`: Quiver's stores
/// and functions.
pub fn planner_state(options: &SessionOptions, config: SessionConfig) -> Result<SessionState> {
    let session = crate::session(options.clone())?;
    Ok(
        SessionStateBuilder::new_from_existing(session.context().state())
            .with_config(config)
            .build(),
    )
}

/// Every function of a Quiver session, for an executor's registry.
pub fn function_registry(session: &Session) -> BallistaFunctionRegistry {
    let state = session.context().state();
    BallistaFunctionRegistry {
        scalar_functions: state.scalar_functions().clone(),
        aggregate_functions: state.aggregate_functions().clone(),
        window_functions: state.window_functions().clone(),
        ..Default::default()
    }
}

/// Moves the options of a `COPY ... STORED AS TFRECORD` into its format, which is what a plan
/// sent to a cluster carries (DataFusion's plan encoding drops a COPY's own options).
#[derive(Debug)]
pub struct CopyOptionsInFormat;

impl OptimizerRule for CopyOptionsInFormat {
    fn name(&self) -> &str {
        "quiver_copy_options_in_format"
    }

    fn apply_order(&self) -> Option<ApplyOrder> {
        Some(ApplyOrder::TopDown)
    }

    fn supports_rewrite(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        plan: LogicalPlan,
        _config: &dyn OptimizerConfig,
    ) -> datafusion::error::Result<Transformed<LogicalPlan>> {
        let LogicalPlan::Copy(copy) = plan else {
            return Ok(Transformed::no(plan));
        };
        let format = file_type_to_format(&copy.file_type)?;
        let Some(factory) = format.downcast_ref::<TfRecordFormatFactory>() else {
            return Ok(Transformed::no(LogicalPlan::Copy(copy)));
        };
        if copy.options.is_empty() {
            return Ok(Transformed::no(LogicalPlan::Copy(copy)));
        }
        let mut options = factory.options().clone();
        options.extend(copy.options.clone());
        let file_type = format_as_file_type(Arc::new(TfRecordFormatFactory::with_options(options)));
        Ok(Transformed::yes(LogicalPlan::Copy(CopyTo::new(
            copy.input,
            copy.output_url,
            copy.partition_by,
            file_type,
            HashMap::new(),
        ))))
    }
}

/// Ballista's planner, with the errors of distributed jobs made readable.
#[derive(Debug)]
struct ClusterPlanner {
    ballista: BallistaQueryPlanner<LogicalPlanNode>,
    /// The embedded engine's planner, for queries over the store's catalog tables.
    local: Arc<dyn QueryPlanner + Send + Sync>,
    driver: String,
}

/// Whether `plan` reads a table computed from the store when scanned (`models()`,
/// `experiment_trials(...)`, `job_runs(...)`, `ml_evaluate(...)`, `feature_stats(...)`): such
/// queries run in the client, which reaches the same store, since those tables are computed in
/// the session that scans them.
fn reads_computed_tables(plan: &LogicalPlan) -> bool {
    plan.exists(|node| {
        Ok(match node {
            LogicalPlan::TableScan(scan) => source_as_provider(&scan.source)
                .is_ok_and(|provider| quiver_engine::computed::is_computed(provider.as_ref())),
            _ => false,
        })
    })
    .unwrap_or(false)
}

#[async_trait]
impl QueryPlanner for ClusterPlanner {
    async fn create_physical_plan(
        &self,
        plan: &LogicalPlan,
        state: &dyn datafusion::catalog::Session,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        if reads_computed_tables(plan) {
            return self.local.create_physical_plan(plan, state).await;
        }
        let plan = self.ballista.create_physical_plan(plan, state).await?;
        Ok(Arc::new(ReadableErrorsExec {
            input: plan,
            driver: self.driver.clone(),
        }))
    }
}

/// Passes its input through, rewriting Ballista's errors with [`readable_error`].
#[derive(Debug)]
struct ReadableErrorsExec {
    input: Arc<dyn ExecutionPlan>,
    driver: String,
}

impl DisplayAs for ReadableErrorsExec {
    fn fmt_as(&self, _t: DisplayFormatType, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        write!(f, "ClusterQueryExec")
    }
}

impl ExecutionPlan for ReadableErrorsExec {
    fn name(&self) -> &str {
        "ClusterQueryExec"
    }

    fn properties(&self) -> &Arc<PlanProperties> {
        self.input.properties()
    }

    fn children(&self) -> Vec<&Arc<dyn ExecutionPlan>> {
        vec![&self.input]
    }

    fn with_new_children(
        self: Arc<Self>,
        children: Vec<Arc<dyn ExecutionPlan>>,
    ) -> datafusion::error::Result<Arc<dyn ExecutionPlan>> {
        match children.as_slice() {
            [input] => Ok(Arc::new(Self {
                input: Arc::clone(input),
                driver: self.driver.clone(),
            })),
            _ => internal_err!("ClusterQueryExec takes one child"),
        }
    }

    fn apply_expressions(
        &self,
        _f: &mut dyn FnMut(&Arc<dyn PhysicalExpr>) -> datafusion::error::Result<TreeNodeRecursion>,
    ) -> datafusion::error::Result<TreeNodeRecursion> {
        Ok(TreeNodeRecursion::Continue)
    }

    fn execute(
        &self,
        partition: usize,
        context: Arc<TaskContext>,
    ) -> datafusion::error::Result<SendableRecordBatchStream> {
        let stream = self.input.execute(partition, context)?;
        let schema = stream.schema();
        let driver = self.driver.clone();
        Ok(Box::pin(RecordBatchStreamAdapter::new(
            schema,
            stream.map_err(move |e| readable_error(e, &driver)),
        )))
    }
}

/// Ballista's errors, readable: `job J, stage S: <message>` for a failed job (Ballista reports
/// the task's error in Rust's debug notation), and the driver's address with the likely cause
/// for a connection to the driver (`driver`, its URL) that failed; other errors unchanged.
pub fn readable_error(error: DataFusionError, driver: &str) -> DataFusionError {
    let text = error.to_string();
    if text.contains("tonic::transport::Error") {
        let cause = text
            .split_once("error: \"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map_or("the connection was closed", |(cause, _)| cause);
        let hint = if driver.starts_with("https://") {
            "the TLS handshake failed: --tls-ca must have signed the driver's certificate, \
             and under mutual TLS this client's --tls-cert too"
        } else {
            "the driver may want TLS: pass --tls-ca (and --tls-cert, --tls-key under mutual TLS)"
        };
        return exec_datafusion_err!("cannot talk to the driver at {driver} ({cause}): {hint}");
    }
    let Some((head, task)) = text.split_once("Task failed due to runtime execution error: ") else {
        return error;
    };
    let Some(start) = task.find("(\"") else {
        return error;
    };
    let quoted = task[start + 2..].trim_end().trim_end_matches(')');
    let Some(quoted) = quoted.strip_suffix('"') else {
        return error;
    };
    let job = head
        .split_once("Job ")
        .and_then(|(_, rest)| rest.split_once(' '))
        .map(|(id, _)| id)
        .unwrap_or("?");
    let stage = head
        .split_once("stage ")
        .and_then(|(_, rest)| rest.split_once(' '))
        .map(|(id, _)| id)
        .unwrap_or("?");
    exec_datafusion_err!("job {job}, stage {stage}: {}", unescape(quoted))
}

/// Undoes Rust's debug escaping of a string.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('n') => out.push('\n'),
            Some('t') => out.push('\t'),
            Some('r') => out.push('\r'),
            Some('0') => out.push('\0'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failed_jobs_read_like_local_errors() {
        let ballista = DataFusionError::Execution(
            "Job 038GW failed: Job failed due to stage 0 failed: Task failed due to runtime \
             execution error: DataFusionError(Shared(External(DataFusionError(Execution(\
             \"cannot decode image (24 bytes, starts with \\\"hello\\\")\\nskip it\")))))\n"
                .into(),
        );
        let driver = "http://127.0.0.1:50050";
        assert_eq!(
            readable_error(ballista, driver).to_string(),
            "Execution error: job 038GW, stage 0: cannot decode image (24 bytes, starts with \
             \"hello\")\nskip it"
        );
        let other = DataFusionError::Plan("no such table".into());
        assert_eq!(
            readable_error(other, driver).to_string(),
            "Error during planning: no such table"
        );
        assert_eq!(
            driver_url("127.0.0.1:50050").unwrap(),
            "http://127.0.0.1:50050"
        );
        assert!(driver_url("nohost").is_err());
        let refused = DataFusionError::Execution(
            "Status { code: Unknown, message: \"transport error\", source: Some(tonic::transport::\
             Error(Transport, hyper::Error(Io, Custom { kind: InvalidData, error: \"received \
             fatal alert: DecryptError\" }))) }"
                .into(),
        );
        let text = readable_error(refused, "https://10.0.0.1:50050").to_string();
        assert!(
            text.contains("driver at https://10.0.0.1:50050 (received fatal alert: DecryptError)")
                && text.contains("--tls-cert"),
            "{text}"
        );
    }
}
