//! Data-parallel training's collective operations: a ring all-reduce over any transport.
//!
//! Each of N workers holds a buffer of the same length. The ring cuts it into N chunks; in N-1
//! reduce-scatter steps every worker sends one chunk to the next worker and adds the chunk it
//! receives from the previous one, after which each worker holds one fully summed chunk; in N-1
//! all-gather steps the summed chunks go round the ring. Every worker sends and receives
//! 2(N-1)/N of the buffer, whatever N is, and every worker ends with bitwise the same sums
//! (each chunk is summed once, on one worker, and copied).
//!
//! The transport is a [`RingLink`]: the cluster's executors link over their trainers' gRPC
//! services (with the cluster's TLS); tests link in memory.

use async_trait::async_trait;

use super::MlError;
use quiver_engine::bail;

/// A worker's two neighbours on the ring.
#[async_trait]
pub trait RingLink: Send + Sync {
    /// Sends `values` to the next worker; does not wait for it to receive them.
    async fn send(&self, values: Vec<f32>) -> Result<(), MlError>;
    /// The previous worker's next message; fails (naming the worker) when it went away.
    async fn recv(&self) -> Result<Vec<f32>, MlError>;
}

/// One worker's place on a ring of `world` workers.
pub struct Ring {
    rank: usize,
    world: usize,
    link: Box<dyn RingLink>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Ring(rank {} of {})", self.rank, self.world)
    }
}

impl Ring {
    /// Worker `rank` (0-based) of `world`, reaching its neighbours through `link`.
    pub fn new(rank: usize, world: usize, link: Box<dyn RingLink>) -> Self {
        Self { rank, world, link }
    }

    /// This worker's rank; rank 0 writes checkpoints, metrics and the model.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// How many workers train together.
    pub fn world(&self) -> usize {
        self.world
    }

    /// Replaces `data` with the element-wise sum of every worker's `data`.
    pub async fn all_reduce_sum(&self, data: &mut [f32]) -> Result<(), MlError> {
        let n = self.world;
        if n == 1 {
            return Ok(());
        }
        let len = data.len();
        let chunk = |i: usize| (i * len / n)..((i + 1) * len / n);
        let r = self.rank;
        for step in 0..n - 1 {
            let out = chunk((r + n - step) % n);
            self.link.send(data[out].to_vec()).await?;
            let into = chunk((r + 2 * n - step - 1) % n);
            let got = self.receive(into.len()).await?;
            for (d, g) in data[into].iter_mut().zip(got) {
                *d += g;
            }
        }
        for step in 0..n - 1 {
            let out = chunk((r + 1 + n - step) % n);
            self.link.send(data[out].to_vec()).await?;
            let into = chunk((r + n - step) % n);
            let got = self.receive(into.len()).await?;
            data[into].copy_from_slice(&got);
        }
        Ok(())
    }

    /// Replaces every worker's `data` with rank 0's.
    pub async fn broadcast(&self, data: &mut [f32]) -> Result<(), MlError> {
        if self.rank != 0 {
            data.fill(0.0);
        }
        self.all_reduce_sum(data).await
    }

    async fn receive(&self, expected: usize) -> Result<Vec<f32>, MlError> {
        let got = self.link.recv().await?;
        if got.len() != expected {
            bail!(
                MlError::Training,
                "worker {} of {}: the previous worker sent {} values where {expected} were due \
                 (the workers train different models)",
                self.rank,
                self.world,
                got.len()
            );
        }
        Ok(got)
    }
}

/// Rings linked in memory, for tests.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;
    use tokio::sync::{Mutex, mpsc};

    struct Memory {
        next: mpsc::UnboundedSender<Vec<f32>>,
        previous: Mutex<mpsc::UnboundedReceiver<Vec<f32>>>,
    }

    #[async_trait]
    impl RingLink for Memory {
        async fn send(&self, values: Vec<f32>) -> Result<(), MlError> {
            self.next
                .send(values)
                .map_err(|_| MlError::Training("next worker gone".into()))
        }
        async fn recv(&self) -> Result<Vec<f32>, MlError> {
            self.previous
                .lock()
                .await
                .recv()
                .await
                .ok_or_else(|| MlError::Training("previous worker gone".into()))
        }
    }

    /// The `world` workers of one ring.
    pub(crate) fn rings(world: usize) -> Vec<Ring> {
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..world).map(|_| mpsc::unbounded_channel()).unzip();
        let mut receivers: Vec<_> = receivers.into_iter().map(Some).collect();
        (0..world)
            .map(|rank| {
                let link = Memory {
                    next: senders[(rank + 1) % world].clone(),
                    previous: Mutex::new(receivers[rank].take().expect("once")),
                };
                Ring::new(rank, world, Box::new(link))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::testing::rings;

    #[tokio::test]
    async fn every_worker_gets_the_sum_and_rank_zeros_broadcast() {
        for world in [1, 2, 3, 4] {
            // Lengths that do not divide evenly, and shorter than the ring.
            for len in [1, 2, 7, 1000] {
                let inputs: Vec<Vec<f32>> = (0..world)
                    .map(|w| (0..len).map(|i| (i * 10 + w) as f32).collect())
                    .collect();
                let expected: Vec<f32> = (0..len)
                    .map(|i| inputs.iter().map(|v| v[i]).sum())
                    .collect();
                let tasks: Vec<_> = rings(world)
                    .into_iter()
                    .zip(inputs.clone())
                    .map(|(ring, mut data)| {
                        tokio::spawn(async move {
                            ring.all_reduce_sum(&mut data).await.unwrap();
                            let mut root = data
                                .iter()
                                .map(|v| v + ring.rank() as f32)
                                .collect::<Vec<_>>();
                            ring.broadcast(&mut root).await.unwrap();
                            (data, root)
                        })
                    })
                    .collect();
                for task in tasks {
                    let (sum, root) = task.await.unwrap();
                    assert_eq!(sum, expected, "world {world}, len {len}");
                    assert_eq!(root, expected, "rank 0's values, world {world}, len {len}");
                }
            }
        }
    }

    #[tokio::test]
    async fn a_vanished_neighbour_fails_the_step() {
        let mut rings = rings(2);
        drop(rings.pop());
        let mut data = vec![1.0; 8];
        let error = rings[0].all_reduce_sum(&mut data).await.unwrap_err();
        assert!(error.to_string().contains("gone"), "{error}");
    }
}
