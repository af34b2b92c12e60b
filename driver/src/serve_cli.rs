//! `quiver serve`: the command line of the model server.

use std::path::PathBuf;
use std::time::Duration;

use quiver_driver::serve::{Batching, ServeOptions, serve};
use quiver_engine::err;
use quiver_engine::{QuiverError, Result, SessionOptions};
use quiver_sql::tls::TlsFiles;

/// Flags of `quiver serve` (TensorFlow Serving's names where it has them).
#[derive(Debug, clap::Args)]
pub(crate) struct ServeArgs {
    /// A model folder in a store: `<store>/models/<name>` serves the newest version and picks
    /// up new ones; `<store>/models/<name>/<version>` pins a version. Repeat for more models.
    #[arg(long = "model", required = true)]
    models: Vec<String>,
    /// The address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// The gRPC port (0 picks a free one).
    #[arg(long, default_value_t = 8500)]
    grpc_port: u16,
    /// The REST port (0 picks a free one).
    #[arg(long, default_value_t = 8501)]
    rest_port: u16,
    #[command(flatten)]
    tls: ServerTlsArgs,
    /// Where the models run: `cpu`, or `cuda` / `cuda:N` in builds with the `cuda` feature.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Copies of each model (sharing weights) that serve requests concurrently; default: the
    /// number of cores (at most 4) without --batching, 1 with it (a batch uses all cores).
    #[arg(long)]
    replicas: Option<usize>,
    /// Merge concurrent requests into one forward pass.
    #[arg(long)]
    batching: bool,
    /// With --batching: the most examples in one forward pass.
    #[arg(long, default_value_t = 64)]
    max_batch_size: usize,
    /// With --batching: how long the first request of a batch waits for others.
    #[arg(long, default_value_t = 2000)]
    batch_timeout_micros: u64,
    /// Seconds between looks at the registry for new versions.
    #[arg(long, default_value_t = 2.0)]
    poll_seconds: f64,
    /// The largest request accepted, in bytes.
    #[arg(long, default_value_t = 64 << 20)]
    max_request_bytes: usize,
    /// Do not log predictions to `serving/<model>/logs/` in the store.
    #[arg(long)]
    no_prediction_log: bool,
    /// Seconds between writes of the prediction log.
    #[arg(long, default_value_t = 5.0)]
    log_flush_seconds: f64,
    /// Seconds in-flight requests get to finish on shutdown.
    #[arg(long, default_value_t = 30.0)]
    shutdown_grace_seconds: f64,
}

/// A server's TLS flags (`quiver serve`, `quiver console`).
#[derive(Debug, clap::Args)]
pub(crate) struct ServerTlsArgs {
    /// The server's TLS certificate chain (PEM): it serves over TLS with it.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// The server's private key (PEM).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// A CA certificate (PEM): clients must present a certificate it signed (mutual TLS).
    #[arg(long, requires = "tls_cert")]
    client_ca: Option<PathBuf>,
}

impl ServerTlsArgs {
    /// The files, when a certificate is given.
    pub(crate) fn files(self) -> Option<TlsFiles> {
        let mutual = self.client_ca.is_some();
        self.tls_cert.zip(self.tls_key).map(|(cert, key)| TlsFiles {
            cert: Some(cert),
            key: Some(key),
            mutual,
            ca: self.client_ca,
        })
    }
}

fn seconds(flag: &str, value: f64) -> Result<Duration> {
    Duration::try_from_secs_f64(value).map_err(|_| {
        err!(
            QuiverError::Config,
            "--{flag} {value} is not a number of seconds"
        )
    })
}

/// Runs the server until Ctrl-C or SIGTERM.
pub(crate) async fn serve_command(options: SessionOptions, args: ServeArgs) -> Result<()> {
    let session = quiver_sql::session(options)?;
    let options = ServeOptions {
        models: args.models,
        host: args.host,
        grpc_port: args.grpc_port,
        replicas: args.replicas.unwrap_or(if args.batching {
            1
        } else {
            std::thread::available_parallelism().map_or(1, |n| n.get().min(4))
        }),
        device: quiver_operators::ml::device::parse(&args.device)
            .map_err(|e| err!(QuiverError::Config, "--device: {e}"))?,
        rest_port: args.rest_port,
        tls: args.tls.files(),
        batching: args.batching.then(|| Batching {
            max_batch_size: args.max_batch_size.max(1),
            batch_timeout: Duration::from_micros(args.batch_timeout_micros),
        }),
        poll_interval: seconds("poll-seconds", args.poll_seconds)?,
        max_request_bytes: args.max_request_bytes,
        prediction_log: !args.no_prediction_log,
        log_flush_interval: seconds("log-flush-seconds", args.log_flush_seconds)?,
        shutdown_grace: seconds("shutdown-grace-seconds", args.shutdown_grace_seconds)?,
    };
    serve(&session, options, None)
        .await
        .map_err(|e| err!(QuiverError::Config, "quiver serve: {e}"))
}
