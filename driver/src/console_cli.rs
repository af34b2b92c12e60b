//! `quiver console`: the web console over the store given with `--store`.

use std::sync::Arc;
use std::time::Duration;

use quiver_driver::console::{Console, router};
use quiver_driver::http::serve_router;
use quiver_engine::err;
use quiver_engine::{QuiverError, Result, SessionOptions};
use quiver_sql::tls::Tls;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::serve_cli::ServerTlsArgs;

/// Flags of `quiver console`.
#[derive(Debug, clap::Args)]
pub(crate) struct ConsoleArgs {
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// The port (0 picks a free one; the console prints the one it bound).
    #[arg(long, default_value_t = 8080)]
    port: u16,
    #[command(flatten)]
    tls: ServerTlsArgs,
}

/// Serves the console until Ctrl-C or SIGTERM.
pub(crate) async fn console_command(options: SessionOptions, args: ConsoleArgs) -> Result<()> {
    let session = quiver_sql::session(options)?;
    let console = Console::new(&session).map_err(|e| err!(QuiverError::Config, "{e}"))?;
    let tls = args.tls.files().map(|f| Tls::load(&f)).transpose()?;
    let listener = TcpListener::bind((args.host.as_str(), args.port))
        .await
        .map_err(|e| {
            err!(
                QuiverError::Config,
                "cannot listen on {}:{}: {e}",
                args.host,
                args.port
            )
        })?;
    let address = listener
        .local_addr()
        .map_err(|e| err!(QuiverError::Config, "console listener: {e}"))?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    eprintln!(
        "quiver console on {scheme}://{address}/ for the store {} ({})",
        session.default_store(),
        match &tls {
            Some(t) if t.mutual() => "mutual TLS",
            Some(_) => "TLS",
            None => "plain TCP",
        }
    );
    let (stop, stopped) = watch::channel(false);
    tokio::spawn(async move {
        quiver_driver::shutdown_signal().await;
        let _ = stop.send(true);
    });
    serve_router(
        router(Arc::new(console)),
        listener,
        tls,
        stopped,
        Duration::from_secs(5),
    )
    .await
    .map_err(|e| err!(QuiverError::Config, "quiver console: {e}"))
}
