//! A client of `quiver serve` (or any TensorFlow Serving server):
//!
//! - `accuracy`: sends a folder of labelled images (`<folder>/<label>/<image>`) to the gRPC
//!   `Predict` method in batches and prints the accuracy, like TensorFlow Serving's MNIST client.
//! - `load`: sends batch-1 requests over gRPC or REST from several concurrent connections and
//!   prints requests/second and latency percentiles as one JSON line (`benches/serving/`).
//!
//! ```text
//! cargo run --release --example serving_client -- accuracy --model fashion \
//!     --images samples/fashion/test
//! ```

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use clap::{Parser, Subcommand};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use quiver_driver::serve::proto::tensorflow::serving::PredictRequest;
use quiver_driver::serve::proto::tensorflow::serving::prediction_service_client::PredictionServiceClient;
use quiver_driver::serve::proto::tensorflow::{
    DataType, TensorProto, TensorShapeProto, tensor_shape_proto,
};
use quiver_sql::tls::{Tls, TlsFiles};
use tonic::transport::Channel;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Parser)]
#[command(about = "Send images to a TensorFlow Serving API (quiver serve)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, clap::Args)]
struct Target {
    /// The gRPC endpoint.
    #[arg(long, default_value = "http://127.0.0.1:8500")]
    grpc: String,
    /// The model name.
    #[arg(long)]
    model: String,
    /// The model's input name.
    #[arg(long, default_value = "image")]
    input: String,
    /// CA certificate (PEM) for a TLS server (use an https:// endpoint).
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Client certificate and key (PEM) for mutual TLS: `--cert client.pem --key client.key`.
    #[arg(long, requires = "key")]
    cert: Option<PathBuf>,
    /// See `--cert`.
    #[arg(long, requires = "cert")]
    key: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Classify a folder of labelled images and print the accuracy.
    Accuracy {
        #[command(flatten)]
        target: Target,
        /// `<folder>/<label>/<image>`.
        #[arg(long)]
        images: PathBuf,
        /// Images per request.
        #[arg(long, default_value_t = 100)]
        batch: usize,
    },
    /// Send batch-1 requests and print throughput and latency.
    Load {
        #[command(flatten)]
        target: Target,
        /// Send over REST to this base URL (`http://127.0.0.1:8501`) instead of gRPC.
        #[arg(long)]
        rest: Option<String>,
        /// The image each request carries.
        #[arg(long)]
        image: PathBuf,
        /// Concurrent connections, each sending one request at a time.
        #[arg(long, default_value_t = 8)]
        concurrency: usize,
        /// Requests in all.
        #[arg(long, default_value_t = 2000)]
        requests: usize,
        /// Stop after this many seconds even if requests are left.
        #[arg(long, default_value_t = 30.0)]
        seconds: f64,
    },
}

async fn connect(target: &Target) -> Result<PredictionServiceClient<Channel>, Error> {
    let mut endpoint = Channel::from_shared(target.grpc.clone())?;
    if target.ca.is_some() {
        let tls = Tls::load(&TlsFiles {
            cert: target.cert.clone(),
            key: target.key.clone(),
            ca: target.ca.clone(),
            mutual: false,
        })?;
        endpoint = endpoint.tls_config(tls.tonic_client()?)?;
    }
    Ok(PredictionServiceClient::new(endpoint.connect().await?)
        .max_decoding_message_size(256 << 20)
        .max_encoding_message_size(256 << 20))
}

fn request(target: &Target, images: Vec<Vec<u8>>) -> PredictRequest {
    let tensor = TensorProto {
        dtype: DataType::DtString as i32,
        tensor_shape: Some(TensorShapeProto {
            dim: vec![tensor_shape_proto::Dim {
                size: images.len() as i64,
                name: String::new(),
            }],
            unknown_rank: false,
        }),
        string_val: images,
        ..Default::default()
    };
    PredictRequest {
        model_spec: Some(
            quiver_driver::serve::proto::tensorflow::serving::ModelSpec {
                name: target.model.clone(),
                ..Default::default()
            },
        ),
        inputs: [(target.input.clone(), tensor)].into(),
        output_filter: vec!["label".into()],
    }
}

/// `(label, path)` of every file under `<folder>/<label>/`.
fn labelled_files(folder: &Path) -> Result<Vec<(String, PathBuf)>, Error> {
    let mut files = Vec::new();
    for dir in std::fs::read_dir(folder)? {
        let dir = dir?.path();
        if !dir.is_dir() {
            continue;
        }
        let label = dir
            .file_name()
            .unwrap_or_default()
            .to_string_lossy()
            .to_string();
        for file in std::fs::read_dir(&dir)? {
            files.push((label.clone(), file?.path()));
        }
    }
    files.sort();
    Ok(files)
}

async fn accuracy(target: Target, images: PathBuf, batch: usize) -> Result<(), Error> {
    let files = labelled_files(&images)?;
    if files.is_empty() {
        return Err(format!("no images under {}/<label>/", images.display()).into());
    }
    let mut client = connect(&target).await?;
    let progress = std::io::stderr().is_terminal();
    let started = Instant::now();
    let mut correct = 0usize;
    for (i, chunk) in files.chunks(batch.max(1)).enumerate() {
        let bytes = chunk
            .iter()
            .map(|(_, p)| std::fs::read(p))
            .collect::<Result<Vec<_>, _>>()?;
        let response = client.predict(request(&target, bytes)).await?.into_inner();
        let labels = &response
            .outputs
            .get("label")
            .ok_or("the response has no 'label' output")?
            .string_val;
        correct += chunk
            .iter()
            .zip(labels)
            .filter(|((truth, _), got)| truth.as_bytes() == got.as_slice())
            .count();
        let done = (i * batch + chunk.len()).min(files.len());
        if progress {
            eprint!(
                "\r{done}/{} images, accuracy so far {:.4}",
                files.len(),
                correct as f64 / done as f64
            );
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    if progress {
        eprintln!();
    }
    println!(
        "accuracy {:.4} on {} images ({correct} correct) in {seconds:.2} s, {:.0} images/s",
        correct as f64 / files.len() as f64,
        files.len(),
        files.len() as f64 / seconds
    );
    Ok(())
}

/// One REST connection (HTTP/1.1, kept alive).
async fn rest_sender(
    base: &str,
) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>, Error> {
    let uri: hyper::Uri = base.parse()?;
    let host = uri.host().ok_or("--rest needs a host")?.to_string();
    let port = uri.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host.as_str(), port)).await?;
    stream.set_nodelay(true)?;
    let (sender, connection) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

async fn load(
    target: Target,
    rest: Option<String>,
    image: PathBuf,
    concurrency: usize,
    requests: usize,
    seconds: f64,
) -> Result<(), Error> {
    let bytes = std::fs::read(&image)?;
    let body = Bytes::from(
        format!(
            "{{\"instances\": [{{\"b64\": \"{}\"}}]}}",
            base64::engine::general_purpose::STANDARD.encode(&bytes)
        )
        .into_bytes(),
    );
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let started = Instant::now();
    let mut workers = Vec::new();
    for _ in 0..concurrency.max(1) {
        let next = std::sync::Arc::clone(&next);
        let (grpc, rest, body, bytes) = (
            if rest.is_none() {
                Some(connect(&target).await?)
            } else {
                None
            },
            rest.clone(),
            body.clone(),
            bytes.clone(),
        );
        let predict = request(&target, vec![bytes]);
        let path = format!(
            "{}/v1/models/{}:predict",
            rest.as_deref().unwrap_or(""),
            target.model
        );
        workers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut errors = 0usize;
            let mut grpc = grpc;
            let mut sender = match &rest {
                Some(base) => Some(rest_sender(base).await?),
                None => None,
            };
            while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < requests
                && Instant::now() < deadline
            {
                let t = Instant::now();
                let ok = match (&mut grpc, &mut sender) {
                    (Some(client), _) => client.predict(predict.clone()).await.is_ok(),
                    (None, Some(sender)) => {
                        let req = hyper::Request::post(path.as_str())
                            .header("content-type", "application/json")
                            .header("host", "localhost")
                            .body(Full::new(body.clone()))?;
                        let response = sender.send_request(req).await?;
                        let ok = response.status().is_success();
                        response.into_body().collect().await?;
                        ok
                    }
                    (None, None) => unreachable!("one protocol"),
                };
                if ok {
                    latencies.push(t.elapsed().as_secs_f64() * 1000.0);
                } else {
                    errors += 1;
                }
            }
            Ok::<_, Error>((latencies, errors))
        }));
    }
    let mut latencies = Vec::new();
    let mut errors = 0;
    for w in workers {
        let (l, e) = w.await??;
        latencies.extend(l);
        errors += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 - 1.0) * p).round() as usize)
            .copied()
            .unwrap_or(f64::NAN)
    };
    println!(
        "{{\"protocol\": \"{}\", \"concurrency\": {concurrency}, \"requests\": {}, \"errors\": {errors}, \
         \"seconds\": {elapsed:.3}, \"rps\": {:.1}, \"p50_ms\": {:.3}, \"p99_ms\": {:.3}}}",
        if rest.is_some() { "rest" } else { "grpc" },
        latencies.len(),
        latencies.len() as f64 / elapsed,
        pct(0.5),
        pct(0.99)
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    match Cli::parse().command {
        Command::Accuracy {
            target,
            images,
            batch,
        } => accuracy(target, images, batch).await,
        Command::Load {
            target,
            rest,
            image,
            concurrency,
            requests,
            seconds,
        } => load(target, rest, image, concurrency, requests, seconds).await,
    }
}
