//! Prometheus metrics: one registry per process, with the process collector (CPU seconds,
//! resident memory, open files, start time), rendered in the text exposition format at
//! `/metrics` ([`page`]) by the servers the process runs: the driver, each executor's trainer
//! port and `quiver serve`.

use std::sync::LazyLock;

use prometheus::core::Collector;
use prometheus::{Encoder, Registry, TextEncoder};

static REGISTRY: LazyLock<Registry> = LazyLock::new(|| {
    let registry = Registry::new();
    #[cfg(target_os = "linux")]
    registry
        .register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))
        .expect("the process collector registers once");
    registry
});

/// The content type of [`render`]'s text.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Registers a metric with the process's registry and returns it; call it once per metric
/// (from a `LazyLock`).
pub fn register<M: Collector + Clone + 'static>(metric: prometheus::Result<M>) -> M {
    let metric = metric.expect("metric names, help and labels are valid");
    REGISTRY
        .register(Box::new(metric.clone()))
        .expect("each metric registers once");
    metric
}

/// Every metric of the process in Prometheus's text format.
pub fn render() -> String {
    let mut text = Vec::new();
    match TextEncoder::new().encode(&REGISTRY.gather(), &mut text) {
        Ok(()) => String::from_utf8_lossy(&text).into_owned(),
        Err(e) => format!("# cannot encode the metrics: {e}\n"),
    }
}

/// `GET /metrics` for an axum router: [`render`]'s text with its content type.
pub async fn page() -> axum::response::Response {
    use axum::response::IntoResponse;
    ([(axum::http::header::CONTENT_TYPE, CONTENT_TYPE)], render()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_registered_metrics_and_the_process() {
        let counter = register(prometheus::IntCounterVec::new(
            prometheus::Opts::new("quiver_test_things_total", "Things counted by a test"),
            &["kind"],
        ));
        counter.with_label_values(&["a"]).inc_by(3);
        let text = render();
        assert!(
            text.contains("quiver_test_things_total{kind=\"a\"} 3"),
            "{text}"
        );
        #[cfg(target_os = "linux")]
        assert!(text.contains("process_resident_memory_bytes"), "{text}");
    }
}
