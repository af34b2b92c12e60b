//! The driver's Prometheus metrics, at `/metrics` on the driver's port with the process's own:
//! the scheduler's jobs (Ballista reports them through its `SchedulerMetricsCollector`), the
//! pending task queue, and the tasks' outcomes and durations (counted as the executors report
//! them to the scheduler's gRPC service, which [`CountingScheduler`] wraps).

use std::sync::LazyLock;

use ballista_core::JobId;
use ballista_core::serde::protobuf::scheduler_grpc_server::SchedulerGrpc;
use ballista_core::serde::protobuf::task_status::Status as TaskState;
use ballista_core::serde::protobuf::*;
use ballista_scheduler::metrics::SchedulerMetricsCollector;
use ballista_scheduler::scheduler_server::SchedulerServer;
use datafusion_proto::protobuf::{LogicalPlanNode, PhysicalPlanNode};
use prometheus::{
    Gauge, Histogram, HistogramOpts, HistogramVec, IntCounterVec, Opts, exponential_buckets,
};
use quiver_engine::metrics::register;
use tonic::{Request, Response, Status};

/// Tasks by outcome: `succeeded` or `failed` (a failed task may run again elsewhere).
static TASKS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(IntCounterVec::new(
        Opts::new(
            "quiver_tasks_total",
            "Tasks the executors finished, by state (succeeded, failed)",
        ),
        &["state"],
    ))
});

/// Seconds a task ran on its executor.
static TASK_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    register(HistogramVec::new(
        HistogramOpts::new(
            "quiver_task_duration_seconds",
            "Seconds tasks ran on their executors, by state",
        )
        .buckets(exponential_buckets(0.001, 2.0, 18).expect("valid buckets")),
        &["state"],
    ))
});

/// Jobs by what happened to them: `submitted`, `completed`, `failed`, `cancelled`.
static JOBS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(IntCounterVec::new(
        Opts::new(
            "quiver_jobs_total",
            "Distributed query jobs by state (submitted, completed, failed, cancelled)",
        ),
        &["state"],
    ))
});

/// Seconds from a job's arrival to its completion.
static JOB_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register(Histogram::with_opts(
        HistogramOpts::new(
            "quiver_job_duration_seconds",
            "Seconds from a job's arrival to its completion",
        )
        .buckets(exponential_buckets(0.01, 2.0, 16).expect("valid buckets")),
    ))
});

/// Seconds from a job's arrival to its submission (planning).
static PLANNING_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    register(Histogram::with_opts(
        HistogramOpts::new(
            "quiver_job_planning_seconds",
            "Seconds from a job's arrival to its submission to the executors",
        )
        .buckets(exponential_buckets(0.001, 2.0, 14).expect("valid buckets")),
    ))
});

/// Tasks waiting for an executor slot.
static PENDING_TASKS: LazyLock<Gauge> = LazyLock::new(|| {
    register(Gauge::with_opts(Opts::new(
        "quiver_pending_tasks",
        "Tasks waiting for an executor slot",
    )))
});

/// Seconds between two of the scheduler's millisecond timestamps.
fn seconds(from_ms: u64, to_ms: u64) -> f64 {
    to_ms.saturating_sub(from_ms) as f64 / 1000.0
}

/// The collector handed to Ballista's scheduler; the metrics live in the process's registry.
pub(crate) struct Collector;

impl Collector {
    /// The collector, with every metric registered (so a scrape shows them before any job).
    pub(crate) fn new() -> Self {
        for state in ["submitted", "completed", "failed", "cancelled"] {
            JOBS.with_label_values(&[state]);
        }
        for state in ["succeeded", "failed"] {
            TASKS.with_label_values(&[state]);
            TASK_SECONDS.with_label_values(&[state]);
        }
        LazyLock::force(&JOB_SECONDS);
        LazyLock::force(&PLANNING_SECONDS);
        LazyLock::force(&PENDING_TASKS);
        Self
    }
}

impl SchedulerMetricsCollector for Collector {
    fn record_submitted(&self, _job: &JobId, queued_at: u64, submitted_at: u64) {
        JOBS.with_label_values(&["submitted"]).inc();
        PLANNING_SECONDS.observe(seconds(queued_at, submitted_at));
    }

    fn record_completed(&self, _job: &JobId, queued_at: u64, completed_at: u64) {
        JOBS.with_label_values(&["completed"]).inc();
        JOB_SECONDS.observe(seconds(queued_at, completed_at));
    }

    fn record_failed(&self, _job: &JobId, _queued_at: u64, _failed_at: u64) {
        JOBS.with_label_values(&["failed"]).inc();
    }

    fn record_cancelled(&self, _job: &JobId) {
        JOBS.with_label_values(&["cancelled"]).inc();
    }

    fn set_pending_tasks_queue_size(&self, value: u64) {
        PENDING_TASKS.set(value as f64);
    }

    fn gather_metrics(&self) -> ballista_core::error::Result<Option<(Vec<u8>, String)>> {
        Ok(Some((
            quiver_engine::metrics::render().into_bytes(),
            quiver_engine::metrics::CONTENT_TYPE.to_string(),
        )))
    }
}

/// The scheduler as Quiver's driver runs it.
type Scheduler = SchedulerServer<LogicalPlanNode, PhysicalPlanNode>;

/// Ballista's scheduler service, counting the finished tasks that executors report (in
/// `poll_work`, as Quiver's pull-based executors do, or in `update_task_status`); every call
/// goes on to the scheduler unchanged.
#[derive(Clone)]
pub(crate) struct CountingScheduler(pub(crate) Scheduler);

fn count_tasks(statuses: &[TaskStatus]) {
    for status in statuses {
        let state = match status.status {
            Some(TaskState::Successful(_)) => "succeeded",
            Some(TaskState::Failed(_)) => "failed",
            Some(TaskState::Running(_)) | None => continue,
        };
        TASKS.with_label_values(&[state]).inc();
        TASK_SECONDS
            .with_label_values(&[state])
            .observe(seconds(status.start_exec_time, status.end_exec_time));
    }
}

type Reply<T> = Result<Response<T>, Status>;

#[tonic::async_trait]
impl SchedulerGrpc for CountingScheduler {
    type ExecuteQueryPushStream = <Scheduler as SchedulerGrpc>::ExecuteQueryPushStream;

    async fn poll_work(&self, request: Request<PollWorkParams>) -> Reply<PollWorkResult> {
        count_tasks(&request.get_ref().task_status);
        SchedulerGrpc::poll_work(&self.0, request).await
    }

    async fn update_task_status(
        &self,
        request: Request<UpdateTaskStatusParams>,
    ) -> Reply<UpdateTaskStatusResult> {
        count_tasks(&request.get_ref().task_status);
        SchedulerGrpc::update_task_status(&self.0, request).await
    }

    async fn register_executor(
        &self,
        request: Request<RegisterExecutorParams>,
    ) -> Reply<RegisterExecutorResult> {
        SchedulerGrpc::register_executor(&self.0, request).await
    }

    async fn heart_beat_from_executor(
        &self,
        request: Request<HeartBeatParams>,
    ) -> Reply<HeartBeatResult> {
        SchedulerGrpc::heart_beat_from_executor(&self.0, request).await
    }

    async fn create_update_session(
        &self,
        request: Request<CreateUpdateSessionParams>,
    ) -> Reply<CreateUpdateSessionResult> {
        SchedulerGrpc::create_update_session(&self.0, request).await
    }

    async fn remove_session(
        &self,
        request: Request<RemoveSessionParams>,
    ) -> Reply<RemoveSessionResult> {
        SchedulerGrpc::remove_session(&self.0, request).await
    }

    async fn execute_query_push(
        &self,
        request: Request<ExecuteQueryParams>,
    ) -> Reply<Self::ExecuteQueryPushStream> {
        SchedulerGrpc::execute_query_push(&self.0, request).await
    }

    async fn execute_query(
        &self,
        request: Request<ExecuteQueryParams>,
    ) -> Reply<ExecuteQueryResult> {
        SchedulerGrpc::execute_query(&self.0, request).await
    }

    async fn get_job_status(
        &self,
        request: Request<GetJobStatusParams>,
    ) -> Reply<GetJobStatusResult> {
        SchedulerGrpc::get_job_status(&self.0, request).await
    }

    async fn get_job_metrics(
        &self,
        request: Request<GetJobMetricsParams>,
    ) -> Reply<GetJobMetricsResult> {
        SchedulerGrpc::get_job_metrics(&self.0, request).await
    }

    async fn executor_stopped(
        &self,
        request: Request<ExecutorStoppedParams>,
    ) -> Reply<ExecutorStoppedResult> {
        SchedulerGrpc::executor_stopped(&self.0, request).await
    }

    async fn cancel_job(&self, request: Request<CancelJobParams>) -> Reply<CancelJobResult> {
        SchedulerGrpc::cancel_job(&self.0, request).await
    }

    async fn clean_job_data(
        &self,
        request: Request<CleanJobDataParams>,
    ) -> Reply<CleanJobDataResult> {
        SchedulerGrpc::clean_job_data(&self.0, request).await
    }
}
