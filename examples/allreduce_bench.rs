//! Measures the data-parallel ring all-reduce: N trainers (each the gRPC service an executor
//! runs) on 127.0.0.1 in this process, one worker per trainer, summing buffers of model size
//! through the same ring, framing and (optionally) TLS that `CREATE MODEL ... workers = N` uses.
//! Prints one JSON line per (workers, size) and the loopback link's single-stream limit,
//! measured in the same run with a plain TCP socket (`benches/cluster/allreduce.sh`).
//!
//! ```text
//! cargo run --example allreduce_bench -- --workers 2,3,4 --sizes-mb 1,10,100
//! ```

use std::sync::Arc;
use std::time::Instant;

use clap::Parser;
use quiver_engine::SessionOptions;
use quiver_executor::ring::TrainerLink;
use quiver_executor::trainer::TrainerService;
use quiver_operators::experiment::LocalTrialRunner;
use quiver_operators::ml::collective::Ring;
use quiver_sql::cluster::proto::Gang;
use quiver_sql::tls::{Tls, TlsFiles};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Debug, Parser)]
#[command(about = "Ring all-reduce throughput over the trainers' gRPC services on loopback")]
struct Cli {
    /// Gang sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "2,3,4")]
    workers: Vec<usize>,
    /// Buffer sizes in MB (10^6 bytes of f32), comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
    sizes_mb: Vec<usize>,
    /// Timed all-reduces per size (after one warm-up).
    #[arg(long, default_value_t = 5)]
    repeats: usize,
    /// The trainers' certificate (scripts/certs.sh's server.pem), for the ring under TLS.
    #[arg(long, requires_all = ["tls_key", "tls_ca"])]
    tls_cert: Option<std::path::PathBuf>,
    /// Its key.
    #[arg(long)]
    tls_key: Option<std::path::PathBuf>,
    /// The CA that signed it.
    #[arg(long)]
    tls_ca: Option<std::path::PathBuf>,
}

/// Single-stream TCP throughput over 127.0.0.1 in bytes/second: 2 GiB in 1 MiB writes.
async fn loopback_limit() -> Result<f64, Error> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    const TOTAL: usize = 2 << 30;
    let reader = tokio::spawn(async move {
        let (mut socket, _) = listener.accept().await?;
        let mut buffer = vec![0u8; 1 << 20];
        let mut read = 0;
        while read < TOTAL {
            let n = socket.read(&mut buffer).await?;
            if n == 0 {
                break;
            }
            read += n;
        }
        Ok::<_, std::io::Error>(read)
    });
    let mut socket = tokio::net::TcpStream::connect(address).await?;
    let block = vec![7u8; 1 << 20];
    let started = Instant::now();
    for _ in 0..TOTAL / block.len() {
        socket.write_all(&block).await?;
    }
    socket.shutdown().await?;
    let read = reader.await??;
    Ok(read as f64 / started.elapsed().as_secs_f64())
}

/// Starts `n` trainers on free loopback ports; returns their addresses and the services'
/// ring inboxes.
async fn trainers(
    n: usize,
    tls: Option<&Tls>,
) -> Result<Vec<(String, quiver_executor::ring::RingInboxes)>, Error> {
    let mut out = Vec::new();
    for i in 0..n {
        let session = quiver_sql::session(SessionOptions::default())?;
        let progress = std::sync::Arc::clone(session.progress());
        let service = TrainerService::new(
            format!("bench{i}"),
            LocalTrialRunner::new(session, 1, "cpu")?,
            progress,
            tls.cloned(),
        );
        let inboxes = service.inboxes();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?.to_string();
        let router = service.router()?;
        tokio::spawn(
            router.serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
        );
        out.push((address, inboxes));
    }
    Ok(out)
}

#[tokio::main]
async fn main() -> Result<(), Error> {
    let cli = Cli::parse();
    let tls = match &cli.tls_cert {
        Some(_) => Some(Tls::load(&TlsFiles {
            cert: cli.tls_cert.clone(),
            key: cli.tls_key.clone(),
            ca: cli.tls_ca.clone(),
            mutual: true,
        })?),
        None => None,
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let loopback = loopback_limit().await?;
    println!(
        "{{\"loopback_bytes_per_s\": {loopback:.0}, \"cores\": {cores}, \"tls\": {}}}",
        tls.is_some()
    );
    for &n in &cli.workers {
        let nodes = trainers(n, tls.as_ref()).await?;
        for &mb in &cli.sizes_mb {
            let values = mb * 1_000_000 / 4;
            let gang_id = format!("bench-{n}-{mb}");
            let addresses: Vec<String> = nodes.iter().map(|(a, _)| a.clone()).collect();
            let tasks: Vec<_> = nodes
                .iter()
                .enumerate()
                .map(|(rank, (_, inboxes))| {
                    let gang = Gang {
                        id: gang_id.clone(),
                        rank: rank as u32,
                        trainers: addresses.clone(),
                        executors: addresses.clone(),
                    };
                    let (inboxes, tls, repeats) = (inboxes.clone(), tls.clone(), cli.repeats);
                    tokio::spawn(async move {
                        let link = TrainerLink::connect(&gang, &inboxes, tls.as_ref()).await?;
                        let ring = Arc::new(Ring::new(rank, n, Box::new(link)));
                        let mut data = vec![rank as f32; values];
                        ring.all_reduce_sum(&mut data).await?;
                        let started = Instant::now();
                        for _ in 0..repeats {
                            ring.all_reduce_sum(&mut data).await?;
                        }
                        Ok::<_, Error>(started.elapsed().as_secs_f64() / repeats as f64)
                    })
                })
                .collect();
            let mut seconds: f64 = 0.0;
            for task in futures::future::join_all(tasks).await {
                seconds = seconds.max(task??);
            }
            let bytes = (values * 4) as f64;
            // What each worker sends (and receives) per all-reduce: 2(N-1)/N of the buffer.
            let per_link = bytes * 2.0 * (n - 1) as f64 / n as f64;
            println!(
                "{{\"workers\": {n}, \"mb\": {mb}, \"seconds\": {seconds:.4}, \
                 \"algbw_mb_per_s\": {:.1}, \"busbw_mb_per_s\": {:.1}, \
                 \"busbw_over_loopback\": {:.3}}}",
                bytes / seconds / 1e6,
                per_link / seconds / 1e6,
                per_link / seconds / loopback
            );
        }
    }
    Ok(())
}
