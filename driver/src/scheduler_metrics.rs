//! The driver's Prometheus metrics: the scheduler's jobs (Ballista reports them through its
//! `SchedulerMetricsCollector`) and the pending task queue, at `/metrics` on the driver's port
//! with the process's own.

use std::sync::LazyLock;

use ballista_core::JobId;
use ballista_scheduler::metrics::SchedulerMetricsCollector;
use prometheus::{Gauge, Histogram, HistogramOpts, IntCounterVec, Opts, exponential_buckets};
use quiver_engine::metrics::register;

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
