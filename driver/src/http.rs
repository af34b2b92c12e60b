//! Serving an axum router over HTTP/1.1 and HTTP/2, with TLS (and client certificates) when
//! given: `quiver serve`'s REST port and `quiver console`.

use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::sync::watch;

use quiver_sql::tls::Tls;

/// Serves `app` on `listener` until `stop` turns true; in-flight requests get `grace` to
/// finish. Errors are the server's own (a bad TLS set-up, a failed accept loop).
pub async fn serve_router(
    app: Router,
    listener: TcpListener,
    tls: Option<Tls>,
    mut stop: watch::Receiver<bool>,
    grace: Duration,
) -> Result<(), String> {
    let app = app.into_make_service();
    let listener = listener.into_std().map_err(|e| e.to_string())?;
    let handle = axum_server::Handle::new();
    let stopper = handle.clone();
    tokio::spawn(async move {
        let _ = stop.wait_for(|s| *s).await;
        stopper.graceful_shutdown(Some(grace));
    });
    let served = match tls {
        Some(tls) => {
            let config = axum_server::tls_rustls::RustlsConfig::from_config(
                tls.server_config().map_err(|e| e.to_string())?,
            );
            axum_server::from_tcp_rustls(listener, config)
                .handle(handle)
                .serve(app)
                .await
        }
        None => {
            axum_server::from_tcp(listener)
                .handle(handle)
                .serve(app)
                .await
        }
    };
    served.map_err(|e| e.to_string())
}
