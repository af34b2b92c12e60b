//! The all-reduce ring of a data-parallel gang over the executors' trainer services: each worker
//! streams its messages to the next worker's trainer (`Trainer.Ring`, under the cluster's TLS),
//! whose service hands them to that worker's inbox.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use quiver_engine::{bail, err};
use quiver_operators::ml::MlError;
use quiver_operators::ml::collective::RingLink;
use quiver_sql::cluster::proto::trainer_client::TrainerClient;
use quiver_sql::cluster::proto::{Gang, RingFrame};
use quiver_sql::tls::Tls;
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::transport::Endpoint;

/// A frame, or why the previous worker's stream broke.
pub type Delivery = Result<RingFrame, String>;

/// Values per frame: 1 MiB.
const FRAME_VALUES: usize = 1 << 18;

/// HTTP/2 flow-control window of ring streams, both ways: 8 MiB.
pub const RING_WINDOW: u32 = 8 << 20;

/// The largest HTTP/2 frame a trainer accepts: 1 MiB.
pub const RING_FRAME: u32 = 1 << 20;

/// How long a worker waits for the previous one before giving up on the gang:
/// `QUIVER_RING_TIMEOUT_S` seconds, 300 by default (rank 0 validates and writes a checkpoint
/// between epochs while the others wait).
fn timeout() -> Duration {
    let seconds = std::env::var("QUIVER_RING_TIMEOUT_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    Duration::from_secs(seconds)
}

/// The inboxes of the gang workers on this executor, by gang and rank; whichever comes first,
/// the worker or its previous worker's frames, creates one.
#[derive(Clone, Default)]
pub struct RingInboxes {
    inboxes: Arc<Mutex<HashMap<(String, u32), Inbox>>>,
}

struct Inbox {
    sender: UnboundedSender<Delivery>,
    receiver: Option<UnboundedReceiver<Delivery>>,
}

impl RingInboxes {
    fn with<R>(&self, gang: &str, rank: u32, f: impl FnOnce(&mut Inbox) -> R) -> R {
        let mut inboxes = self.inboxes.lock().expect("ring inboxes");
        let inbox = inboxes.entry((gang.to_string(), rank)).or_insert_with(|| {
            let (sender, receiver) = unbounded_channel();
            Inbox {
                sender,
                receiver: Some(receiver),
            }
        });
        f(inbox)
    }

    /// Where frames for worker `rank` of `gang` go.
    pub fn sender(&self, gang: &str, rank: u32) -> UnboundedSender<Delivery> {
        self.with(gang, rank, |i| i.sender.clone())
    }

    fn take_receiver(&self, gang: &str, rank: u32) -> Option<UnboundedReceiver<Delivery>> {
        self.with(gang, rank, |i| i.receiver.take())
    }

    fn remove(&self, gang: &str, rank: u32) {
        self.inboxes
            .lock()
            .expect("ring inboxes")
            .remove(&(gang.to_string(), rank));
    }
}

/// One worker's link to its neighbours over the trainers' gRPC services.
pub struct TrainerLink {
    gang: String,
    rank: u32,
    next_rank: u32,
    out: UnboundedSender<RingFrame>,
    inbox: tokio::sync::Mutex<UnboundedReceiver<Delivery>>,
    inboxes: RingInboxes,
    next: String,
    previous: String,
    timeout: Duration,
}

impl TrainerLink {
    /// Joins `gang` as its `rank`: streams to the next worker's trainer (with `tls`) and
    /// receives from the previous one through `inboxes`.
    pub async fn connect(
        gang: &Gang,
        inboxes: &RingInboxes,
        tls: Option<&Tls>,
    ) -> Result<Self, MlError> {
        let world = gang.trainers.len() as u32;
        let (rank, next_rank) = (gang.rank, (gang.rank + 1) % world);
        let worker = |r: u32| {
            format!(
                "worker {r} (executor {})",
                gang.executors.get(r as usize).map_or("?", |s| s.as_str())
            )
        };
        let next = worker(next_rank);
        let previous = worker((rank + world - 1) % world);
        let inbox = inboxes.take_receiver(&gang.id, rank).ok_or_else(|| {
            err!(
                MlError::Training,
                "worker {rank} of gang {} started twice",
                gang.id
            )
        })?;
        let address = &gang.trainers[next_rank as usize];
        let channel = trainer_channel(address, &next, tls, |endpoint| {
            endpoint
                .initial_stream_window_size(RING_WINDOW)
                .initial_connection_window_size(2 * RING_WINDOW)
        })
        .await?;
        let (out, frames) = unbounded_channel();
        // An empty first frame tells the next trainer where this stream goes, so that it can
        // report a broken stream to the right worker even before any data moved.
        let _ = out.send(RingFrame {
            gang: gang.id.clone(),
            rank: next_rank,
            values: Vec::new(),
            last: false,
        });
        let failed = inboxes.sender(&gang.id, rank);
        let receiver = next.clone();
        tokio::spawn(async move {
            let result = TrainerClient::new(channel)
                .ring(UnboundedReceiverStream::new(frames))
                .await;
            if let Err(e) = result {
                let _ = failed.send(Err(format!(
                    "sending to {receiver} failed: {}",
                    e.message()
                )));
            }
        });
        Ok(Self {
            gang: gang.id.clone(),
            rank,
            next_rank,
            out,
            inbox: tokio::sync::Mutex::new(inbox),
            inboxes: inboxes.clone(),
            next,
            previous,
            timeout: timeout(),
        })
    }
}

impl Drop for TrainerLink {
    fn drop(&mut self) {
        self.inboxes.remove(&self.gang, self.rank);
    }
}

#[async_trait]
impl RingLink for TrainerLink {
    async fn send(&self, values: Vec<f32>) -> Result<(), MlError> {
        let count = values.len().div_ceil(FRAME_VALUES).max(1);
        for i in 0..count {
            let part = values
                .get(i * FRAME_VALUES..((i + 1) * FRAME_VALUES).min(values.len()))
                .unwrap_or(&[]);
            let mut bytes = Vec::with_capacity(part.len() * 4);
            for v in part {
                bytes.extend_from_slice(&v.to_le_bytes());
            }
            let frame = RingFrame {
                gang: self.gang.clone(),
                rank: self.next_rank,
                values: bytes,
                last: i + 1 == count,
            };
            self.out.send(frame).map_err(|_| {
                err!(
                    MlError::Training,
                    "worker {}: the stream to the next worker is closed ({} is the next worker)",
                    self.rank,
                    self.next
                )
            })?;
        }
        Ok(())
    }

    async fn recv(&self) -> Result<Vec<f32>, MlError> {
        let mut inbox = self.inbox.lock().await;
        let mut values = Vec::new();
        loop {
            let frame = match tokio::time::timeout(self.timeout, inbox.recv()).await {
                Err(_) => {
                    bail!(
                        MlError::Training,
                        "worker {}: nothing from {} for {} s",
                        self.rank,
                        self.previous,
                        self.timeout.as_secs()
                    );
                }
                Ok(None) => {
                    bail!(
                        MlError::Training,
                        "worker {}: gang {} was closed",
                        self.rank,
                        self.gang
                    );
                }
                Ok(Some(Err(why))) => {
                    bail!(
                        MlError::Training,
                        "worker {}: {why} ({} is the previous worker)",
                        self.rank,
                        self.previous
                    );
                }
                Ok(Some(Ok(frame))) => frame,
            };
            values.extend(
                frame
                    .values
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
            );
            if frame.last {
                return Ok(values);
            }
        }
    }
}

/// A channel to the trainer at `address` (`host:port`), named `what` in errors, over `tls`
/// when set; `configure` sets the endpoint's options (after TLS, which makes a new endpoint).
pub async fn trainer_channel(
    address: &str,
    what: &str,
    tls: Option<&Tls>,
    configure: impl FnOnce(Endpoint) -> Endpoint,
) -> std::result::Result<tonic::transport::Channel, MlError> {
    let mut endpoint = Endpoint::from_shared(format!("http://{address}"))
        .map_err(|e| err!(MlError::Training, "{what} at {address}: {e}"))?;
    if let Some(tls) = tls {
        endpoint = tls
            .endpoint(endpoint)
            .map_err(|e| MlError::Training(e.to_string()))?;
    }
    configure(endpoint)
        .connect()
        .await
        .map_err(|e| err!(MlError::Training, "cannot reach {what} at {address}: {e}"))
}
