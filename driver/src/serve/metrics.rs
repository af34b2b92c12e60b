//! `quiver serve`'s Prometheus metrics, at `/metrics` on the REST port with the process's own.

use std::collections::BTreeMap;
use std::sync::LazyLock;
use std::time::Duration;

use prometheus::core::Collector;
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, exponential_buckets};
use quiver_engine::metrics::register;

/// Prediction requests by model, version and status code (`OK` or the error's gRPC code).
static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    register(IntCounterVec::new(
        Opts::new(
            "quiver_serve_requests_total",
            "Prediction requests (REST and gRPC) by model, version and status code",
        ),
        &["model", "version", "code"],
    ))
});

/// Request latency, from the request's arrival to its answer.
static DURATION: LazyLock<HistogramVec> = LazyLock::new(|| {
    register(HistogramVec::new(
        HistogramOpts::new(
            "quiver_serve_request_duration_seconds",
            "Prediction request latency in seconds, by model and version",
        )
        .buckets(exponential_buckets(0.0005, 2.0, 16).expect("valid buckets")),
        &["model", "version"],
    ))
});

/// Rows per forward pass (a dynamic batch, or one request's pass without batching).
static BATCH_SIZE: LazyLock<HistogramVec> = LazyLock::new(|| {
    register(HistogramVec::new(
        HistogramOpts::new(
            "quiver_serve_batch_size",
            "Rows per forward pass, by model and version",
        )
        .buckets(exponential_buckets(1.0, 2.0, 10).expect("valid buckets")),
        &["model", "version"],
    ))
});

/// Registers the metrics, so that a scrape shows them before the first request.
pub(super) fn init() {
    LazyLock::force(&REQUESTS);
    LazyLock::force(&DURATION);
    LazyLock::force(&BATCH_SIZE);
}

/// Counts one request and its latency; `version` is `None` when no version answered.
pub(super) fn request(model: &str, version: Option<u64>, code: &str, latency: Duration) {
    let version = version.map(|v| v.to_string()).unwrap_or_default();
    REQUESTS.with_label_values(&[model, &version, code]).inc();
    DURATION
        .with_label_values(&[model, &version])
        .observe(latency.as_secs_f64());
}

/// Records one forward pass of `rows` rows.
pub(super) fn forward_pass(model: &str, version: u64, rows: usize) {
    BATCH_SIZE
        .with_label_values(&[model, &version.to_string()])
        .observe(rows as f64);
}

/// Forward passes of `model` since the server started and the rows they took, by version.
pub(super) fn batches(model: &str) -> BTreeMap<u64, (u64, f64)> {
    let mut passes = BTreeMap::new();
    for family in BATCH_SIZE.collect() {
        for metric in family.get_metric() {
            let label = |name: &str| {
                metric
                    .get_label()
                    .iter()
                    .find(|l| l.name() == name)
                    .map(|l| l.value().to_string())
            };
            if label("model").as_deref() == Some(model)
                && let Some(version) = label("version").and_then(|v| v.parse().ok())
            {
                let h = metric.get_histogram();
                passes.insert(version, (h.get_sample_count(), h.get_sample_sum()));
            }
        }
    }
    passes
}
