//! The driver role of Quiver: the cluster's scheduler (`quiver driver --listen`), the model
//! server (`quiver serve`) with TensorFlow Serving's gRPC and REST protocols, and shutdown on
//! signals.

pub mod cluster;
pub mod console;
pub mod coordinator;
pub mod http;
mod scheduler_metrics;
pub mod serve;

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
