//! The driver role of Quiver: the cluster's scheduler (`quiver driver --listen`), the model
//! server (`quiver serve`) with TensorFlow Serving's gRPC and REST protocols, and shutdown on
//! signals.

pub mod cluster;
pub mod coordinator;
mod scheduler_metrics;
pub mod serve;

/// `GET /metrics` on the driver's and `quiver serve`'s ports: the process's Prometheus metrics
/// in the text exposition format.
async fn metrics_page() -> axum::response::Response {
    use axum::response::IntoResponse;
    (
        [(
            axum::http::header::CONTENT_TYPE,
            quiver_engine::metrics::CONTENT_TYPE,
        )],
        quiver_engine::metrics::render(),
    )
        .into_response()
}

/// Resolves on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}
