//! The streaming replies of the cluster's gRPC services (the driver's coordinator, the
//! executors' trainers): the events a piece of work sends while it runs, then its last event.

use std::future::Future;
use std::pin::Pin;

use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tokio_stream::wrappers::UnboundedReceiverStream;
use tonic::{Response, Status};

/// A server-streaming reply of `T` events.
pub type EventStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// Runs `work` in its own task and replies with the events sent on `events` (which `work` may
/// clone to send its log) followed by the event `work` ends with. The stream ends when the last
/// sender is gone.
pub fn stream_reply<T: Send + 'static>(
    events: mpsc::UnboundedSender<T>,
    receiver: mpsc::UnboundedReceiver<T>,
    work: impl Future<Output = T> + Send + 'static,
) -> Response<EventStream<T>> {
    tokio::spawn(async move {
        let last = work.await;
        let _ = events.send(last);
    });
    Response::new(Box::pin(UnboundedReceiverStream::new(receiver).map(Ok)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_log_comes_first_and_the_last_event_ends_the_stream() {
        let (events, receiver) = mpsc::unbounded_channel();
        let log = events.clone();
        let reply = stream_reply(events, receiver, async move {
            log.send("epoch 1").unwrap();
            log.send("epoch 2").unwrap();
            drop(log);
            "done"
        });
        let got: Vec<_> = reply
            .into_inner()
            .map(|event| event.unwrap())
            .collect()
            .await;
        assert_eq!(got, ["epoch 1", "epoch 2", "done"]);
    }
}
